/*
 * bne_cuda.h - launch ABI of the bitnet-edge CUDA kernels (native/cuda/*.cu).
 *
 * The kernels are built by nvcc into one fatbin (SASS for sm_87, sm_90, sm_110 + compute_80 PTX)
 * and loaded on the device with the CUDA driver API (cuModuleLoadData) from Python through cffi
 * in ABI mode: no CUDA toolkit at run time.  The region between BNE_KERNELS_BEGIN and
 * BNE_KERNELS_END is parsed by bitnet_edge.sdk.cuda to learn every kernel's parameter list, and
 * the .cu files include this header, so a definition that drifts from its declaration does not
 * compile.  Parameters are device pointers (T *), int (int32) or float (float32) only.
 *
 * Device formats (docs/adr/0009-cuda-kernels.md):
 *   ternary W (n, k): the 2-bit compute layout of ADR 0002, rows of nb*32 bytes, nb = ceil(k/128)
 *   int8 W (n, k):    rows of kp = nb*128 bytes, zero-padded past k
 *   xq (m, k):        rows of kp int8, zero-padded past k; s (m,) float32; xsum (m,) int32 = sum(xq)
 *   wscale (n,):      per-row float32 scale (a ternary matrix repeats its absmean scale)
 * Epilogue (ADR 0003): y = ((float)acc * wscale[j]) / s[i], round-to-nearest, no contraction;
 * with `add` != NULL, y = add + that (the residual), also rounded once.
 */
#ifndef BNE_CUDA_H
#define BNE_CUDA_H

#define BNE_CUDA_VERSION_STRING "0.1.0" /* must equal bitnet_edge.__version__ */
#define BNE_CUDA_ABI 1                  /* bumped when a kernel's parameters change */
#define BNE_CUDA_BLOCK 128              /* weights per ternary block */

#ifdef __CUDACC__
#include <stdint.h>
#define BNE_KERNEL extern "C" __global__
#else
#define BNE_KERNEL
#endif

/* BNE_KERNELS_BEGIN */
BNE_KERNEL void bne_norm_quant(const float *x, const float *x2, int ldx, int m, int k, int act,
                               const float *w, float eps, int8_t *xq, int kp, float *s, int32_t *xsum,
                               int32_t *flag);
BNE_KERNEL void bne_ternary_gemv(const uint8_t *w, int n, int nb, const int8_t *xq, const int32_t *xsum,
                                 const float *s, const float *wscale, const float *add, int32_t *yi,
                                 float *y);
BNE_KERNEL void bne_int8_gemv(const int8_t *w, int n, int nb, const int8_t *xq, const float *s,
                              const float *wscale, const float *add, int32_t *yi, float *y);
BNE_KERNEL void bne_ternary_gemm(const uint8_t *w, int n, int nb, const int8_t *xq, int m,
                                 const int32_t *xsum, const float *s, const float *wscale, const float *add,
                                 int32_t *yi, float *y);
BNE_KERNEL void bne_int8_gemm(const int8_t *w, int n, int nb, const int8_t *xq, int m, const float *s,
                              const float *wscale, const float *add, int32_t *yi, float *y);
BNE_KERNEL void bne_rope_kv(const float *qkv, int m, int heads, int kv_heads, int head_dim, const int32_t *pos0,
                            const float *cos_t, const float *sin_t, float *q_out, float *k_cache,
                            float *v_cache, int capacity);
BNE_KERNEL void bne_attention(const float *q, int m, int heads, int kv_heads, int head_dim, const int32_t *pos0,
                              const float *k_cache, const float *v_cache, int capacity, float scale,
                              float *out);
/* BNE_KERNELS_END */

/* Launch geometry the host must use.  The fatbin also exports it (extern "C" __device__ int
 * bne_cuda_info[8] = {ABI, BLOCK, GEMV_WARPS, GEMV_ROWS, GEMM_BM, GEMM_BN, NORM_THREADS, ATTN_THREADS}),
 * with bne_cuda_version (char[16]) and bne_cuda_arch (__CUDA_ARCH__ of the image that loaded), and
 * the loader reads them from there rather than from this file. */
#define BNE_GEMV_WARPS 4   /* warps per block of the GEMV kernels (blockDim.x = 128) */
#define BNE_GEMV_ROWS 4    /* rows per warp */
#define BNE_GEMM_BM 32     /* activation rows (tokens) per GEMM block */
#define BNE_GEMM_BN 128    /* weight rows per GEMM block (blockDim.x = 128, 4 warps x 32 rows) */
#define BNE_NORM_THREADS 1024
#define BNE_ATTN_THREADS 1024

#endif
