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
#define BNE_CUDA_ABI 3                  /* bumped when a kernel's parameters or the plan layout change */
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
BNE_KERNEL void bne_decode_step(const uint64_t *plan);
BNE_KERNEL void bne_rope_attention(const float *qkv, int heads, int kv_heads, int head_dim, const int32_t *pos0,
                                   const float *cos_t, const float *sin_t, float *k_cache, float *v_cache,
                                   int capacity, float scale, float *out);
BNE_KERNEL void bne_norm_gemv(const uint8_t *w, int n, int nb, int ternary, const float *x, const float *x2, int k,
                              int act, const float *norm, float eps, const float *wscale, const float *add, float *y,
                              int32_t *flag, uint64_t *key);
BNE_KERNEL void bne_head_argmax(const uint8_t *w, int n, int nb, int ternary, const int8_t *xq, const int32_t *xsum,
                                const float *s, const float *wscale, float *y, uint64_t *key);
/* BNE_KERNELS_END */

/* Launch geometry the host must use.  The fatbin also exports it (extern "C" __device__ int
 * bne_cuda_info[9] = {ABI, BLOCK, GEMV_WARPS, GEMV_ROWS, GEMM_BM, GEMM_BN, NORM_THREADS, ATTN_THREADS,
 * DECODE_THREADS}),
 * with bne_cuda_version (char[16]) and bne_cuda_arch (__CUDA_ARCH__ of the image that loaded), and
 * the loader reads them from there rather than from this file. */
#define BNE_GEMV_WARPS 4   /* warps per block of the GEMV kernels (blockDim.x = 128) */
#define BNE_GEMV_ROWS 4    /* rows per warp */
#define BNE_GEMM_BM 32     /* activation rows (tokens) per GEMM block */
#define BNE_GEMM_BN 128    /* weight rows per GEMM block (blockDim.x = 128, 4 warps x 32 rows) */
#define BNE_NORM_THREADS 1024
#define BNE_ATTN_THREADS 1024
#define BNE_TRACE_MAX 1024      /* trace stamps a block */
#define BNE_DECODE_THREADS 1024 /* the persistent decode kernel's block: equal to NORM and ATTN threads,
                                   so its float sums run in their order (same bits) */

/* bne_decode_step's plan (docs/adr/0009-cuda-kernels.md): 64-bit words in device memory, pointers as
 * device addresses, integers as values, floats as their bits.  Header words: */
#define BNE_PLAN_X 0             /* float (hidden): the embedding row in, the residual stream */
#define BNE_PLAN_QKV 1           /* float (q_dim + 2 kv_dim) */
#define BNE_PLAN_ATTN 2          /* float (q_dim) */
#define BNE_PLAN_GU 3            /* float (2 inter): gate | up */
#define BNE_PLAN_POS 4           /* int32: the token's position */
#define BNE_PLAN_COS 5           /* float (capacity, head_dim) RoPE tables */
#define BNE_PLAN_SIN 6
#define BNE_PLAN_LOGITS 7        /* float (vocab) out */
#define BNE_PLAN_NORM 8          /* float (hidden): final norm weight */
#define BNE_PLAN_HEAD_W 9        /* LM head weights (ternary or int8 device format) */
#define BNE_PLAN_HEAD_SCALE 10   /* float (vocab) */
#define BNE_PLAN_BARRIER 11      /* uint32, zeroed before every launch */
#define BNE_PLAN_FLAG 12         /* int32 status, zeroed before every launch: |= 1 an activation was NaN or
                                    infinite, |= 2 a grid barrier timed out (the step's results are void) */
#define BNE_PLAN_ARGMAX 13       /* int32 (2 grid + 2): per block (value bits, index), then the argmax of
                                    the logits and the step's final status */
#define BNE_PLAN_LAYERS 16
#define BNE_PLAN_HIDDEN 17
#define BNE_PLAN_INTER 18
#define BNE_PLAN_HEADS 19
#define BNE_PLAN_KV_HEADS 20
#define BNE_PLAN_HEAD_DIM 21
#define BNE_PLAN_CAPACITY 22
#define BNE_PLAN_VOCAB 23
#define BNE_PLAN_ACT 24          /* 0 none, 1 relu2, 2 silu */
#define BNE_PLAN_HEAD_TERNARY 25 /* 1: ternary LM head, 0: int8 */
#define BNE_PLAN_EPS 26          /* float bits */
#define BNE_PLAN_SCALE 27        /* float bits: attention scale */
#define BNE_PLAN_PF 28           /* 16-byte weight units per thread prefetched into shared memory */
#define BNE_PLAN_SMEM_XQ 29      /* byte offsets into dynamic shared memory (the prefetch buffer at 0) */
#define BNE_PLAN_SMEM_ACC 30
#define BNE_PLAN_SMEM_REGION 31
#define BNE_PLAN_ACC_ROWS 32     /* int32 row accumulators in shared memory (LM head chunk rows) */
#define BNE_PLAN_REGION_FLOATS 33 /* floats of the norm-cache / attention region */
#define BNE_PLAN_HEAD_L2 34      /* bytes of each block's LM-head rows prefetched into L2 in the last layer */
#define BNE_PLAN_TRACE 35        /* 0, or uint64 (2, BNE_TRACE_MAX, 2): blocks 0 and grid-1 stamp (globaltimer ns,
                                    clock64) at each phase boundary (benchmarks/cuda.py --profile) */
#define BNE_PLAN_OPTS 36         /* bit 0: no L2 weight prefetch during attention; bit 1: no KV-cache prefetch */
#define BNE_PLAN_HEADER 40
/* then BNE_PLAN_LAYER words per layer (a norm weight of 0 = no such norm): */
#define BNE_PLAN_L_IN_NORM 0
#define BNE_PLAN_L_POST_NORM 1
#define BNE_PLAN_L_ATTN_SUB 2
#define BNE_PLAN_L_FFN_SUB 3
#define BNE_PLAN_L_QKV 4
#define BNE_PLAN_L_QKV_SCALE 5
#define BNE_PLAN_L_O 6
#define BNE_PLAN_L_O_SCALE 7
#define BNE_PLAN_L_GATE_UP 8
#define BNE_PLAN_L_GATE_UP_SCALE 9
#define BNE_PLAN_L_DOWN 10
#define BNE_PLAN_L_DOWN_SCALE 11
#define BNE_PLAN_L_K_CACHE 12    /* float (kv_heads, capacity, head_dim) */
#define BNE_PLAN_L_V_CACHE 13
#define BNE_PLAN_L_TERNARY 14    /* bit 0 qkv, 1 o, 2 gate/up, 3 down: ternary (else int8) */
#define BNE_PLAN_LAYER 16

#endif
