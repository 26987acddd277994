/* bne_internal.h - what the per-ISA kernel files share with the dispatcher.
 *
 * Every variant implements the same three kernel signatures (bne_kernels).
 * A kernel computes output columns [n0, n1) for all m activation rows; the
 * worker pool splits n across threads, so each output element is produced by
 * exactly one thread in one fixed order: results do not depend on the thread
 * count.
 */
#ifndef BNE_INTERNAL_H
#define BNE_INTERNAL_H

#include "bitnet_edge.h"

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(BNE_TERNARY_BLOCK == 4 * BNE_TERNARY_BLOCK_BYTES, "4 codes per byte");
_Static_assert(BNE_TERNARY_BLOCK_BYTES == 32, "the SIMD kernels assume 32-byte blocks");
#endif

typedef struct {
    /* weights */
    const uint8_t *w;     /* ternary: (n, row_bytes) packed; int8: (n, ldw) int8 */
    size_t ldw;           /* bytes per weight row */
    const int32_t *wsum;  /* int8 only: (n,) row sums of W */
    size_t n, k;
    /* activations */
    const int8_t *x;      /* (m, ldx) int8 */
    size_t ldx, m;
    const int32_t *xsum;  /* ternary only: (m,) row sums of x over all k */
    /* epilogue: exactly one of yi / yf is set */
    int32_t *yi;          /* (m, ldy) int32 */
    float *yf;            /* (m, ldy) float32 */
    size_t ldy;
    const float *wscale;  /* ternary: 1 value; int8: n values */
    int wscale_per_row;
    const float *xscale;  /* (m,) activation scales s: y = acc * wscale / s */
} bne_gemm_args;

typedef void (*bne_gemm_kernel)(const bne_gemm_args *a, size_t n0, size_t n1);
/* x (m, k) float -> xq (m, k) int8 + scales (m,); returns BNE_OK or BNE_ERR_NONFINITE */
typedef int (*bne_quant_kernel)(const float *x, size_t m, size_t k, size_t ldx,
                                int8_t *xq, size_t ldq, float *scales);

struct bne_kernels_s;
/* The decoder forward pass of a variant (decoder_impl.h), called by decoder.c after its checks. */
typedef int (*bne_decoder_fn)(const struct bne_kernels_s *kt, const bne_decoder *d, void *cache, size_t capacity,
                              size_t pos0, const float *x, size_t n, void *work, int all_logits, float *logits,
                              float *hidden);

typedef struct bne_kernels_s {
    bne_gemm_kernel ternary_gemm;
    bne_gemm_kernel int8_gemm;
    bne_quant_kernel quantize;
    /* Optional (NULL: the dispatcher uses the ref variant's): */
    bne_gemm_kernel ternary3_gemm; /* base-3 format (BNE_W_TERNARY3) */
    bne_decoder_fn decoder;        /* decoder_impl.h compiled with the variant's flags */
} bne_kernels;

/* One table per variant; a variant not compiled for this target is absent. */
extern const bne_kernels bne_kernels_ref;
#if defined(__x86_64__) || defined(_M_X64)
#define BNE_HAVE_X86 1
extern const bne_kernels bne_kernels_avx2;
extern const bne_kernels bne_kernels_avx512;
/* avx2.c's decoder and base-3 kernel, shared by the avx512 variant. */
int bne_decoder_forward_avx2(const struct bne_kernels_s *kt, const bne_decoder *d, void *cache, size_t capacity,
                             size_t pos0, const float *x, size_t n, void *work, int all_logits, float *logits,
                             float *hidden);
void bne_ternary3_gemm_avx2(const bne_gemm_args *a, size_t n0, size_t n1);
/* avx2.c's prefill panel unpack, shared by the avx512 panel GEMM: columns [j, j + nc) (nc <= 16) of a
 * ternary W (base3: the base-3 layout) -> panel[k/4][16][4] codes (0..2), zero past nc; the last
 * k % 4 codes of each column -> tailc; codes: scratch of 8 x round_up(k, 32) bytes. */
void bne_panel_fill_avx2(const bne_gemm_args *a, size_t j, size_t nc, int base3, uint8_t *panel, uint8_t *codes,
                         uint8_t tailc[16][4]);
/* the k % 4 tail of a panel's columns (tailc from bne_panel_fill_avx2) -> ad[m][16], less sum(x) */
void bne_panel_tail_avx2(const bne_gemm_args *a, uint8_t tailc[16][4], int32_t *ad);
#endif
#if defined(__aarch64__)
#define BNE_HAVE_ARM 1
extern const bne_kernels bne_kernels_neon;
extern const bne_kernels bne_kernels_neon_dotprod;
/* neon.c's decoder and base-3 kernel, shared by the dotprod variant. */
int bne_decoder_forward_neon(const struct bne_kernels_s *kt, const bne_decoder *d, void *cache, size_t capacity,
                             size_t pos0, const float *x, size_t n, void *work, int all_logits, float *logits,
                             float *hidden);
/* The NEON quantizer (neon.c), shared by the dotprod variant. */
int bne_quantize_rows_neon(const float *x, size_t m, size_t k, size_t ldx, int8_t *xq,
                           size_t ldq, float *scales);
#endif
#if defined(__arm__)
#define BNE_HAVE_ARM32 1
extern const bne_kernels bne_kernels_neon; /* arch/arm32/neon.c: ARMv7-A NEON, no SDOT */
#endif
#if defined(__riscv) && __riscv_xlen == 64
#define BNE_HAVE_RISCV 1
extern const bne_kernels bne_kernels_rvv; /* arch/riscv/rvv.c: RVV 1.0, any VLEN */
#endif

/* Shared epilogue: write one output element. */
static inline void bne_store(const bne_gemm_args *a, size_t i, size_t j, int32_t acc) {
    if (a->yi) {
        a->yi[i * a->ldy + j] = acc;
    } else {
        float ws = a->wscale[a->wscale_per_row ? j : 0];
        a->yf[i * a->ldy + j] = ((float)acc * ws) / a->xscale[i];
    }
}

/* Shared scalar tail: sum over t < cnt of code(blk, t) * x[t], where blk is one
 * packed 32-byte block and code is the stored w + 1 in {0,1,2}. */
static inline int32_t bne_tail_codes_dot(const uint8_t *blk, const int8_t *x, size_t cnt) {
    int32_t s = 0;
    for (size_t t = 0; t < cnt; ++t) {
        int c = (blk[t & 31] >> (2 * (t >> 5))) & 3;
        s += c * (int32_t)x[t];
    }
    return s;
}

/* Byte copy / zero without libc (the freestanding macOS build has no string.h). */
static inline void bne_copy(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    for (size_t i = 0; i < n; ++i) d[i] = s[i];
}
static inline void bne_zero(void *dst, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    for (size_t i = 0; i < n; ++i) d[i] = 0;
}

/* Round half to even without libm: valid for |v| < 2^22, which holds since
 * |x * s| <= 127 (plus rounding) for every finite input.  Needs IEEE float32
 * evaluation (FLT_EVAL_METHOD 0) and no -ffast-math, which the build ensures. */
static inline int32_t bne_round_half_even(float v) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float t = v + magic;
    return (int32_t)(t - magic);
}

/* The quantized value of v for scale s: clip(rint(v * s), -128, 127). */
static inline int8_t bne_quant1(float v, float s) {
    int32_t r = bne_round_half_even(v * s);
    return (int8_t)(r < -128 ? -128 : (r > 127 ? 127 : r));
}

/* GEMV software prefetch: how far ahead (in bytes, whole rows of at least 4)
 * the kernels ask for weights while they stream them from DRAM.  A GEMV tile
 * covers 4 rows, so 4 rows ahead is the next tile. */
#ifndef BNE_PF_BYTES
#define BNE_PF_BYTES 10240
#endif
static inline size_t bne_prefetch_offset(size_t ldw) {
    size_t rows = BNE_PF_BYTES / ldw;
    return (rows < 4 ? 4 : rows) * ldw;
}

/* The first bytes of a GEMV's rows [n0, n1), up to the prefetch distance: the kernels prefetch pf
 * bytes ahead of where they read, so without this the start of every pool chunk is read cold. */
static inline void bne_gemv_prefetch_start(const bne_gemm_args *a, size_t n0, size_t n1, size_t pf) {
    const uint8_t *p = a->w + n0 * a->ldw;
    size_t len = (n1 - n0) * a->ldw;
    if (len > pf) len = pf;
    for (size_t o = 0; o < len; o += 64) __builtin_prefetch(p + o, 0, 3);
}

/* Resolve a backend id (AUTO included) to a kernel table, or an error status (api.c). */
int bne_resolve_backend(int backend, const bne_kernels **out);

/* Scalar float -> int8 row quantizer shared by the variants' tails. */
int bne_quantize_rows_scalar(const float *x, size_t m, size_t k, size_t ldx,
                             int8_t *xq, size_t ldq, float *scales);

/* Worker pool (pool.c): run fn over [0, n) split in contiguous chunks. */
typedef void (*bne_range_fn)(void *ctx, size_t begin, size_t end);
void bne_pool_run(bne_range_fn fn, void *ctx, size_t n, size_t grain);
/* The same, and once the caller's thread finds no chunk left it asks for the lines of [pf, pf + pf_bytes)
 * (into L2) while the other threads finish: data the caller needs next, fetched in time it would wait.
 * (Chunks that shrink toward the end of a job, so that the threads finish closer together, made the
 * decoder's GEMVs ~5% slower here: shorter weight streams.) */
void bne_pool_run_pf(bne_range_fn fn, void *ctx, size_t n, size_t grain, const void *pf, size_t pf_bytes);

/* Base-3 compute format (bne_ternary3_*): 64-byte blocks of 320 weights; byte j of a block holds the
 * codes c = w + 1 of weights j, j+64, j+128, j+192, j+256 as v = 81 c0 + 27 c1 + 9 c2 + 3 c3 + c4,
 * stored as b = ceil(v * 256 / 243).  Digit i is recovered as t_i >= 86 ? (t_i >= 171 ? 2 : 1) : 0
 * with t_0 = b, t_{i+1} = 3 t_i mod 256 (exact for every v in 0..242).  Rows padded with code 1. */
#define BNE_TERNARY3_BLOCK 320
#define BNE_TERNARY3_BLOCK_BYTES 64
static inline int bne_trit(uint8_t t) { return (t >= 86) + (t >= 171); }

/* Workspace layout of one decoder forward pass (decoder.c computes it, decoder_impl.h uses it):
 * byte offsets into the caller's buffer, each 64-byte aligned. */
typedef struct {
    size_t x, h, qkv, att, gu, yo, xq, xs, xsum, part, left, total;
    size_t qd, kvd, qkvd;   /* heads * head_dim, kv_heads * head_dim, qd + 2 kvd */
    size_t kv_row, kv_plane, kv_layer; /* cache: bytes of one (kv head, position) row (no scale),
                                          of one (K or V) plane, of one layer */
    size_t kv_cap;          /* cache rows per kv head: the capacity rounded up to 8 */
} bne_dec_layout;
int bne_dec_layout_of(const bne_decoder *d, size_t n, size_t capacity, bne_dec_layout *out);
/* The ref variant's decoder and base-3 kernel, the fallback of variants without their own. */
int bne_decoder_forward_ref(const struct bne_kernels_s *kt, const bne_decoder *d, void *cache, size_t capacity,
                            size_t pos0, const float *x, size_t n, void *work, int all_logits, float *logits,
                            float *hidden);

/* Monotonic clock in ns for the decoder's optional profile (pool.c; 0 without threads/libc). */
uint64_t bne_now_ns(void);

/* Which features the CPU has (cpu.c). */
uint32_t bne_detect_cpu(void);

#endif
