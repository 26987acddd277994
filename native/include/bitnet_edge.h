/*
 * bitnet_edge.h - public C API of the bitnet-edge kernel library.
 *
 * Every function returns a status code (enum bne_status) or a plain value;
 * nothing here prints, exits or allocates in a hot loop.  The region between
 * BNE_CDEF_BEGIN and BNE_CDEF_END is read by the Python loader to generate
 * the cffi cdef, so it must stay plain C declarations (no macros inside).
 *
 * Shapes follow the math:  W (n, k) @ x (k,) -> y (n,)  for GEMV and
 * x (m, k) @ W(n, k)^T -> y (m, n)  for GEMM (m activation rows, n outputs).
 *
 * Ternary "2-bit compute format" (docs/adr/0002-ternary-packing.md):
 *   each weight row of k values is split in blocks of 128 weights; a block
 *   is 32 bytes; byte j of a block holds the codes (w + 1) of weights
 *   j, j+32, j+64, j+96 in bits 0-1, 2-3, 4-5, 6-7.  The last block of a
 *   row is padded with code 1 (weight 0).  Row stride = ceil(k/128) * 32.
 *   The layout is the same on every architecture.
 */
#ifndef BITNET_EDGE_H
#define BITNET_EDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BNE_API __declspec(dllexport)
#else
#define BNE_API __attribute__((visibility("default")))
#endif

#define BNE_VERSION_STRING "0.1.0"
#define BNE_TERNARY_BLOCK 128 /* weights per block */
#define BNE_TERNARY_BLOCK_BYTES 32 /* bytes per block */
#define BNE_MAX_K 65536 /* largest reduction length with a no-overflow guarantee */

/* BNE_CDEF_BEGIN */
enum bne_status {
    BNE_OK = 0,
    BNE_ERR_NULL = 1,          /* a required pointer was NULL */
    BNE_ERR_SHAPE = 2,         /* a dimension is 0, too large, or strides do not fit */
    BNE_ERR_BACKEND = 3,       /* unknown backend id */
    BNE_ERR_UNSUPPORTED = 4,   /* backend not compiled in or the CPU lacks the feature */
    BNE_ERR_VALUE = 5,         /* a value out of its domain (e.g. a ternary weight not in {-1,0,1}) */
    BNE_ERR_NONFINITE = 6,     /* NaN or infinity in a float input */
    BNE_ERR_THREADS = 7        /* the worker pool could not be (re)started */
};

enum bne_backend {
    BNE_BACKEND_AUTO = 0,
    BNE_BACKEND_REF = 1,          /* portable scalar C, the reference */
    BNE_BACKEND_AVX2 = 2,         /* x86-64 AVX2 */
    BNE_BACKEND_AVX512 = 3,       /* x86-64 AVX-512 F/BW/VL + VNNI */
    BNE_BACKEND_NEON = 4,         /* Advanced SIMD: aarch64, or 32-bit ARMv7-A NEON (no SDOT) */
    BNE_BACKEND_NEON_DOTPROD = 5, /* aarch64 Advanced SIMD + SDOT (ARMv8.2 dotprod) */
    BNE_BACKEND_RVV = 6,          /* RISC-V Vector 1.0, vector-length agnostic (any VLEN >= 128) */
    BNE_BACKEND_COUNT = 7
};

enum bne_cpu_feature {
    BNE_CPU_AVX2 = 1,
    BNE_CPU_FMA = 2,
    BNE_CPU_AVX512F = 4,
    BNE_CPU_AVX512BW = 8,
    BNE_CPU_AVX512VL = 16,
    BNE_CPU_AVX512VNNI = 32,
    BNE_CPU_NEON = 64,
    BNE_CPU_DOTPROD = 128,
    BNE_CPU_RVV = 256           /* RISC-V "V" (vector 1.0), enabled by the kernel */
};

/* Library identity. */
BNE_API const char *bne_version(void);
BNE_API const char *bne_target(void);            /* e.g. "x86_64-linux", "aarch64-linux", "armv7-linux" */
BNE_API uint32_t bne_cpu_features(void);         /* bitmask of enum bne_cpu_feature */
BNE_API int bne_backend_compiled(int backend);   /* 1 if the variant is in this library */
BNE_API int bne_backend_supported(int backend);  /* 1 if compiled in and the CPU can run it */
BNE_API int bne_backend_best(void);              /* the id AUTO resolves to */
BNE_API const char *bne_backend_name(int backend); /* "ref", "avx2", ...; "" if unknown */
BNE_API size_t bne_ternary_row_bytes(size_t k);  /* bytes of one packed 2-bit row */
BNE_API size_t bne_ternary_block(void);          /* BNE_TERNARY_BLOCK */

/* Worker pool: n >= 1 threads in total (the caller's thread included).
 * Results are identical for every thread count. */
BNE_API int bne_set_threads(int n);
BNE_API int bne_get_threads(void);

/* q (n, k) int8 in {-1,0,1}, row stride ldq elements -> out (n, row_bytes) packed 2-bit. */
BNE_API int bne_ternary_pack(const int8_t *q, size_t n, size_t k, size_t ldq,
                             uint8_t *out, size_t out_len);
/* packed (n, row_bytes) -> q (n, k) int8 in {-1,0,1}, row stride ldq. */
BNE_API int bne_ternary_unpack(const uint8_t *packed, size_t n, size_t k,
                               int8_t *q, size_t ldq);

/* Per-row absmax int8 quantization of activations:
 * x (m, k) float32, row stride ldx -> xq (m, k) int8 (row stride ldq), scales (m,) float32
 * s = 127 / max(max|x_row|, 1e-5);  xq = clip(rint(x * s), -128, 127)  (round half to even)
 * A NaN or infinity anywhere gives BNE_ERR_NONFINITE. */
BNE_API int bne_quantize_act(int backend, const float *x, size_t m, size_t k, size_t ldx,
                             int8_t *xq, size_t ldq, float *scales);

/* Ternary GEMM, int32 result:
 * W (n, k) packed 2-bit, x (m, k) int8 (row stride ldx) -> y (m, n) int32 (row stride ldy)
 * y[i][j] = sum_t W[j][t] * x[i][t].  Exact for every int8 x and k <= BNE_MAX_K. */
BNE_API int bne_ternary_gemm_i32(int backend, const uint8_t *w, size_t n, size_t k,
                                 const int8_t *x, size_t m, size_t ldx,
                                 int32_t *y, size_t ldy);
/* Same product with the float epilogue:  y[i][j] = ((float)acc * wscale) / xscale[i]. */
BNE_API int bne_ternary_gemm_f32(int backend, const uint8_t *w, size_t n, size_t k, float wscale,
                                 const int8_t *x, size_t m, size_t ldx, const float *xscale,
                                 float *y, size_t ldy);
/* GEMV: W (n, k) packed @ x (k,) int8 -> y (n,) int32 (m = 1 of the GEMM). */
BNE_API int bne_ternary_gemv_i32(int backend, const uint8_t *w, size_t n, size_t k,
                                 const int8_t *x, int32_t *y);

/* Ternary "base-3 compute format" (1.6 bits/weight, docs/adr/0002-ternary-packing.md): blocks of
 * 320 weights in 64 bytes; byte j of a block holds the codes c = w + 1 of weights j, j+64, j+128,
 * j+192, j+256 as v = 81 c0 + 27 c1 + 9 c2 + 3 c3 + c4, stored as ceil(v * 256 / 243), so the kernels
 * peel one digit per step with byte adds and compares.  The last block of a row is padded with
 * code 1; row stride = ceil(k/320) * 64.  Same products as the 2-bit format, 20% fewer bytes. */
BNE_API size_t bne_ternary3_row_bytes(size_t k);
BNE_API int bne_ternary3_pack(const int8_t *q, size_t n, size_t k, size_t ldq, uint8_t *out, size_t out_len);
/* BNE_ERR_VALUE for a byte that is not ceil(v * 256 / 243) of a v in 0..242. */
BNE_API int bne_ternary3_unpack(const uint8_t *packed, size_t n, size_t k, int8_t *q, size_t ldq);
BNE_API int bne_ternary3_gemm_i32(int backend, const uint8_t *w, size_t n, size_t k,
                                  const int8_t *x, size_t m, size_t ldx, int32_t *y, size_t ldy);
BNE_API int bne_ternary3_gemm_f32(int backend, const uint8_t *w, size_t n, size_t k, float wscale,
                                  const int8_t *x, size_t m, size_t ldx, const float *xscale,
                                  float *y, size_t ldy);

/* int8 weights W (n, k) in [-127, 127] (row stride ldw bytes) with wsum[j] = sum_t W[j][t]
 * (bne_int8_rowsum computes it and returns BNE_ERR_VALUE for a -128 weight, which the
 * SIMD kernels cannot multiply exactly), x (m, k) int8 -> y (m, n) int32.
 * On any error status the contents of the outputs are unspecified. */
BNE_API int bne_int8_rowsum(const int8_t *w, size_t n, size_t k, size_t ldw, int32_t *wsum);
BNE_API int bne_int8_gemm_i32(int backend, const int8_t *w, size_t n, size_t k, size_t ldw,
                              const int32_t *wsum, const int8_t *x, size_t m, size_t ldx,
                              int32_t *y, size_t ldy);
/* Float epilogue with a per-output-channel weight scale: y = ((float)acc * wscale[j]) / xscale[i]. */
BNE_API int bne_int8_gemm_f32(int backend, const int8_t *w, size_t n, size_t k, size_t ldw,
                              const int32_t *wsum, const float *wscale,
                              const int8_t *x, size_t m, size_t ldx, const float *xscale,
                              float *y, size_t ldy);
BNE_API int bne_int8_gemv_i32(int backend, const int8_t *w, size_t n, size_t k, size_t ldw,
                              const int32_t *wsum, const int8_t *x, int32_t *y);
/* Depthwise 2-D convolution, NHWC (native/src/conv.c).
 * x (n, h, w, c) @ taps (kh, kw, c) -> y (n, oh, ow, c) float32; output pixel (i, j) reads rows
 * i*stride_h - pad_top + p*dil_h and columns j*stride_w - pad_left + q*dil_w; taps outside the
 * image are skipped (zero padding).  Then bias (c,) or NULL is added and y is clamped to [lo, hi].
 * int8:    x int8 with one scale per image xscale (n,), taps int8 with per-channel wscale (c,):
 *          y = ((float)acc * wscale[ch]) / xscale[b] (+ bias), acc int32 (exact).
 * float32: acc float32 summed in tap order (p, q), then + bias.  Results do not depend on threads. */
typedef struct {
    size_t n, h, w, c;
    size_t kh, kw;
    size_t stride_h, stride_w;
    size_t dil_h, dil_w;
    size_t pad_top, pad_left;
    size_t oh, ow;
} bne_dwconv_shape;
BNE_API int bne_dwconv_i8(int backend, const bne_dwconv_shape *s, const int8_t *x, const float *xscale,
                          const int8_t *taps, const float *wscale, const float *bias, float lo, float hi,
                          float *y);
BNE_API int bne_dwconv_f32(int backend, const bne_dwconv_shape *s, const float *x, const float *taps,
                           const float *bias, float lo, float hi, float *y);
/* Conv GEMM (many rows, few columns: the im2col rows of a convolution), native/src/conv.c:
 * x (m, k) int8 (row stride ldx) with per-row scales xscale (m,); weights W (n, k) int8 in
 * [-127, 127] (ternary: {-1, 0, 1}) interleaved by 4 along k, w4 (ceil(k/4), n, 4) with
 * w4[(t4*n + j)*4 + r] = W[j][4*t4 + r] (0 past k), their row sums wsum (n,) and per-row scales
 * wscale (n,) -> y (m, n) float32 (row stride ldy):
 *   y[i][j] = min(max(((float)acc * wscale[j]) / xscale[i] (+ bias[j]), lo), hi),
 *   acc = sum_t x[i][t] * W[j][t] int32 (exact for k <= BNE_MAX_K)
 * The numbers of bne_int8_gemm_f32 / bne_ternary_gemm_f32 (+ bias, clamp); rows split over threads. */
BNE_API int bne_conv_gemm_f32(int backend, const int8_t *w4, const int32_t *wsum, size_t k, size_t n,
                              const float *wscale, const int8_t *x, size_t m, size_t ldx, const float *xscale,
                              const float *bias, float lo, float hi, float *y, size_t ldy);
/* Decoder forward pass (native/src/decoder.c, decoder_impl.h): a whole BitNet / LLaMA-layout
 * decoder step in C - RMSNorm, the linears, RoPE, grouped-query attention over a KV cache, the
 * gated FFN, residuals - with the caller's memory only (no allocation, no libm).  The caller fills
 * a bne_decoder with pointers to weights it keeps alive, and passes a cache and a workspace buffer
 * sized by the two _bytes functions.  Per layer:
 *   x += o(attn_sub_norm(attention(rope(q(h)), rope(k(h)), v(h))))   h = in_norm(x)
 *   x += down(ffn_sub_norm(act(gate(h)) * up(h)))                     h = post_norm(x)
 * then logits = head(final_norm(x)).  Linears quantize their input per row (bne_quantize_act) and
 * use the kernels of `backend`; float glue is IEEE float32 in a fixed order (results do not depend
 * on the thread count or the backend's vector width).  Sub norms may be NULL (LLaMA layout). */
enum bne_wformat {
    BNE_W_TERNARY2 = 1,  /* 2-bit compute format, one float scale */
    BNE_W_TERNARY3 = 2,  /* base-3 compute format (bne_ternary3_*), one float scale */
    BNE_W_INT8 = 3,      /* int8 in [-127, 127], per-row scales and row sums */
    BNE_W_F32 = 4        /* float32, no input quantization */
};
enum bne_kv_type { BNE_KV_F32 = 0, BNE_KV_F16 = 1, BNE_KV_I8 = 2 };
enum bne_act { BNE_ACT_RELU2 = 0, BNE_ACT_SILU = 1 };

typedef struct {
    int format;           /* enum bne_wformat */
    const void *w;        /* (n, row bytes of the format) */
    size_t n, k;          /* outputs, inputs */
    float scale;          /* ternary: the tensor's scale */
    const float *scales;  /* int8: (n,) */
    const int32_t *wsum;  /* int8: (n,) row sums */
} bne_linear;

typedef struct {
    const float *in_norm, *post_norm;  /* (hidden,) */
    const float *attn_sub_norm;        /* (heads * head_dim,) or NULL */
    const float *ffn_sub_norm;         /* (ffn,) or NULL */
    bne_linear q, k, v, o, gate, up, down;
} bne_decoder_layer;

typedef struct {
    size_t hidden, ffn, layers, heads, kv_heads, head_dim, vocab, max_positions;
    float eps;                         /* RMSNorm epsilon */
    float attn_scale;                  /* score scale, usually head_dim ** -0.5 */
    int act;                           /* enum bne_act */
    int kv_type;                       /* enum bne_kv_type: the cache's element type */
    const bne_decoder_layer *layer;    /* (layers,) */
    const float *final_norm;           /* (hidden,) */
    bne_linear head;                   /* (vocab, hidden) */
    const float *rope_cos, *rope_sin;  /* (max_positions, head_dim / 2): rotate-half RoPE tables */
    uint64_t *profile_ns;              /* NULL, or 4 counters the pass adds its wall time to (ns):
                                          [0] serial glue (norms, quantization, RoPE, cache writes),
                                          [1] attention, [2] the layers' linears (+ the fused activation
                                          and residual adds), [3] final norm + head.  Builds without
                                          threads (freestanding) add nothing. */
} bne_decoder;

/* Cache for `capacity` positions: per layer K and V, (kv_heads, capacity, head_dim) of kv_type
 * (int8 adds a float scale per (kv head, position) after each).  0 for an invalid decoder. */
BNE_API size_t bne_decoder_cache_bytes(const bne_decoder *d, size_t capacity);
/* Workspace of a forward pass over n tokens with that capacity.  0 for an invalid decoder. */
BNE_API size_t bne_decoder_workspace_bytes(const bne_decoder *d, size_t n, size_t capacity);
/* Tokens x (n, hidden) float32 (embedded), at positions pos0 .. pos0+n-1, after the pos0 positions
 * the cache holds.  logits: (n, vocab) when all_logits, else (vocab,) of the last token.  hidden:
 * NULL or (n, hidden), the residual stream after the last layer (before the final norm).
 * cache, work: 64-byte aligned.  Errors: BNE_ERR_SHAPE (inconsistent decoder, pos0 + n beyond
 * capacity or max_positions, small workspace), BNE_ERR_NULL, BNE_ERR_VALUE (unknown format, act or
 * kv type), BNE_ERR_NONFINITE (an activation became NaN/inf; the cache rows of this call are then
 * unspecified). */
BNE_API int bne_decoder_forward(int backend, const bne_decoder *d, void *cache, size_t capacity, size_t pos0,
                                const float *x, size_t n, void *work, size_t work_bytes, int all_logits,
                                float *logits, float *hidden);
/* BNE_CDEF_END */

#ifdef __cplusplus
}
#endif
#endif /* BITNET_EDGE_H */
