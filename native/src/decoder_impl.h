/* decoder_impl.h - the decoder forward pass (bne_decoder_forward), compiled once per variant.
 *
 * A variant's file defines BNE_DEC_FN (the function's name) and includes this file last, so the
 * float glue below is compiled with the variant's flags (the reductions are written as 16
 * independent lanes, which compilers vectorize at any width with the same result: no FMA
 * contraction, no reassociation, so every variant computes the same floats).  Linears go through
 * the kernel table `kt` it is called with.  No allocation and no libm: exp is a polynomial,
 * sqrt the instruction, RoPE angles come from the caller's tables.
 *
 * Work of one layer, n tokens (m rows), 2 threads or more:
 *   [main] h = in_norm(x), quantized once for q, k, v     (one pass: norm, absmax, round)
 *   [pool] q | k | v: one job over the three matrices' rows
 *   [main] RoPE on q and k, k and v written to the cache
 *   [pool] attention: (token, kv head) units, or (kv head, 64 positions) for one token (scores,
 *          softmax, weighted values of the query heads sharing the kv head; see "attention")
 *   [main] attn_sub_norm + quantize;  [pool] o rows + the residual add of those columns
 *   [main] post_norm + quantize;      [pool] gate and up rows + act(gate) * up of those columns
 *   [main] ffn_sub_norm + quantize;   [pool] down rows + the residual add
 */
#ifndef BNE_DEC_FN
#error "define BNE_DEC_FN before including decoder_impl.h"
#endif

#define DEC_L 16 /* float lanes of the reductions */
/* Attention below this many multiply-adds (scores) runs on the caller's thread (a decode step at a
 * context below ~26 for the 2B shape): a pool job costs a hand-over.  Above, kv heads x chunks of
 * positions are split over the threads, which also read the cache from DRAM in parallel. */
#define DEC_ATTN_POOL_MACS ((size_t)1 << 16)
#define DEC_INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
DEC_INLINE float dec_sqrtf(float v) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(v))); }
#elif defined(__aarch64__)
#include <arm_neon.h>
DEC_INLINE float dec_sqrtf(float v) { return vget_lane_f32(vsqrt_f32(vdup_n_f32(v)), 0); }
#else
DEC_INLINE float dec_sqrtf(float v) { return __builtin_sqrtf(v); }
#endif

DEC_INLINE uint32_t dec_bits(float f) {
    union { float f; uint32_t u; } v = {f};
    return v.u;
}
DEC_INLINE float dec_float(uint32_t u) {
    union { uint32_t u; float f; } v = {u};
    return v.f;
}

/* e^x for x in [-87, 88] (clamped outside: softmax and SiLU need no more), about 1 ulp. */
DEC_INLINE float dec_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    float r = x - kf * 0.693145751953125f;                          /* ln 2, high bits (exact product) */
    r = r - kf * 1.42860682030941723e-06f;                          /* ln 2, the rest */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * dec_float((uint32_t)((int32_t)kf + 127) << 23);
}

/* IEEE half <-> float, round to nearest even (finite values only: the cache never holds others). */
DEC_INLINE uint16_t dec_f2h(float f) {
    uint32_t x = dec_bits(f), sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x47800000u) return (uint16_t)(sign | 0x7c00u); /* >= 65536: infinity */
    if (x < 0x38800000u) {                                   /* half subnormal or zero: let the FPU round */
        float t = dec_float(x) + 0.5f;
        return (uint16_t)(sign | (dec_bits(t) - 0x3f000000u));
    }
    x += 0xc8000fffu + ((x >> 13) & 1u); /* rebias the exponent (-112), round the 13 dropped bits */
    return (uint16_t)(sign | (x >> 13));
}
DEC_INLINE float dec_h2f(uint16_t h) {
    return dec_float(((uint32_t)(h & 0x8000u) << 16) | dec_bits(dec_float((uint32_t)(h & 0x7fffu) << 13) * 0x1p112f));
}

/* Sum of the 16 lanes as a fixed tree (8 + 4 + 2 + 1 element-wise adds: vectorizable, short chains). */
DEC_INLINE float dec_lanes_sum(float *acc) {
    for (int l = 0; l < 8; ++l) acc[l] = acc[l] + acc[l + 8];
    for (int l = 0; l < 4; ++l) acc[l] = acc[l] + acc[l + 4];
    for (int l = 0; l < 2; ++l) acc[l] = acc[l] + acc[l + 2];
    return acc[0] + acc[1];
}

/* The target's float vector (GCC/clang vector extension): 8 floats with AVX, else 4 (SSE2, NEON).
 * + and * stay separate IEEE operations (-ffp-contract=off), and lane l of a 16-lane sum is always
 * element l mod 16, whatever the width: every variant computes the same bits. */
#if defined(__AVX__)
#define DEC_VW 8
#else
#define DEC_VW 4
#endif
typedef float dec_vf __attribute__((vector_size(DEC_VW * 4)));
#define DEC_NV (DEC_L / DEC_VW) /* vectors of 16 lanes */
/* (macros, not functions: a vector argument draws GCC ABI notes on some builds) */
#define dec_ld(p) __extension__({ dec_vf v_; __builtin_memcpy(&v_, (p), sizeof v_); v_; })
#define dec_st(p, v) do { dec_vf w_ = (v); __builtin_memcpy((p), &w_, sizeof w_); } while (0)

/* acc[0 .. 16) = the 16 lanes in v, plus the tail products. */
#define DEC_LANES(acc, v, tail, nt)                                              \
    do {                                                                         \
        for (int k_ = 0; k_ < DEC_NV; ++k_) dec_st(acc + k_ * DEC_VW, (v)[k_]);   \
        for (size_t l_ = 0; l_ < (nt); ++l_) acc[l_] = acc[l_] + (tail)[l_];     \
    } while (0)

typedef int32_t dec_vi __attribute__((vector_size(DEC_VW * 4)));

/* dec_expf on every lane (the same operations, so the same bits) */
DEC_INLINE dec_vf dec_expv(dec_vf x) {
    const dec_vf lo = (dec_vf){0} - 87.0f, hi = (dec_vf){0} + 88.0f;
    dec_vi m = x < lo;
    x = (dec_vf)((m & (dec_vi)lo) | (~m & (dec_vi)x));
    m = x > hi;
    x = (dec_vf)((m & (dec_vi)hi) | (~m & (dec_vi)x));
    dec_vf kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    dec_vf r = x - kf * 0.693145751953125f;
    r = r - kf * 1.42860682030941723e-06f;
    dec_vf p = (dec_vf){0} + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * (dec_vf)((__builtin_convertvector(kf, dec_vi) + 127) << 23);
}

static float dec_dot(const float *a, const float *b, size_t n) {
    dec_vf v[DEC_NV];
    for (int k = 0; k < DEC_NV; ++k) v[k] = (dec_vf){0};
    size_t i = 0;
    for (; i + DEC_L <= n; i += DEC_L)
        for (int k = 0; k < DEC_NV; ++k) v[k] = v[k] + dec_ld(a + i + k * DEC_VW) * dec_ld(b + i + k * DEC_VW);
    float t[DEC_L], acc[DEC_L];
    for (size_t l = 0; i + l < n; ++l) t[l] = a[i + l] * b[i + l];
    DEC_LANES(acc, v, t, n - i);
    return dec_lanes_sum(acc);
}

/* y = x * (1 / sqrt(mean(x^2) + eps)) * w  (w NULL: no weight) */
static void dec_rmsnorm(const float *x, const float *w, size_t n, float eps, float *y) {
    dec_vf v[DEC_NV];
    for (int k = 0; k < DEC_NV; ++k) v[k] = (dec_vf){0};
    size_t i = 0;
    for (; i + DEC_L <= n; i += DEC_L) {
        /* w is not in any cache (the linears' weights streamed through since the last token): ask
         * for its line while summing x's, and x's lines some way ahead (half were written by the
         * other core) */
        __builtin_prefetch(w + i, 0, 3);
        __builtin_prefetch(x + i + 8 * DEC_L, 0, 3);
        for (int k = 0; k < DEC_NV; ++k) v[k] = v[k] + dec_ld(x + i + k * DEC_VW) * dec_ld(x + i + k * DEC_VW);
    }
    float t[DEC_L], acc[DEC_L];
    for (size_t l = 0; i + l < n; ++l) t[l] = x[i + l] * x[i + l];
    DEC_LANES(acc, v, t, n - i);
    float ss = dec_lanes_sum(acc);
    float inv = 1.0f / dec_sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; ++i) y[i] = (x[i] * inv) * w[i];
}

/* ---- linears ---------------------------------------------------------------------------------- */

typedef struct {
    const bne_kernels *kt;
    const bne_linear *lin;
    const int8_t *xq;      /* (m, ldq) quantized input */
    const float *xs;       /* (m,) its scales */
    const int32_t *xsum;   /* (m,) its row sums */
    const float *xf;       /* (m, ldf) the float input (f32 weights) */
    size_t m, ldq, ldf;
    float *y;              /* (m, ldy) */
    size_t ldy;
} dec_lin;

/* Output columns [n0, n1) of one linear, all m rows. */
static void dec_linear_cols(const dec_lin *a, size_t n0, size_t n1) {
    const bne_linear *L = a->lin;
    if (L->format == BNE_W_F32) {
        const float *w = (const float *)L->w;
        for (size_t i = 0; i < a->m; ++i)
            for (size_t j = n0; j < n1; ++j) a->y[i * a->ldy + j] = dec_dot(w + j * L->k, a->xf + i * a->ldf, L->k);
        return;
    }
    bne_gemm_args g;
    bne_zero(&g, sizeof g);
    g.w = (const uint8_t *)L->w;
    g.n = L->n;
    g.k = L->k;
    g.x = a->xq;
    g.ldx = a->ldq;
    g.m = a->m;
    g.xsum = a->xsum;
    g.yf = a->y;
    g.ldy = a->ldy;
    g.xscale = a->xs;
    if (L->format == BNE_W_INT8) {
        g.ldw = L->k;
        g.wsum = L->wsum;
        g.wscale = L->scales;
        g.wscale_per_row = 1;
        a->kt->int8_gemm(&g, n0, n1);
    } else if (L->format == BNE_W_TERNARY2) {
        g.ldw = bne_ternary_row_bytes(L->k);
        g.wscale = &L->scale;
        a->kt->ternary_gemm(&g, n0, n1);
    } else {
        g.ldw = bne_ternary3_row_bytes(L->k);
        g.wscale = &L->scale;
        (a->kt->ternary3_gemm ? a->kt->ternary3_gemm : bne_kernels_ref.ternary3_gemm)(&g, n0, n1);
    }
}

/* Rows of a pool chunk: 4 chunks a thread (a job ends when its last chunk does, so a thread waits
 * for at most one chunk of the other's; fewer, longer chunks keep the GEMVs' weight streams long:
 * 2, 4 and 8 a thread were the same within noise here), at most 1024 rows (the LM head: 2.6 MB a
 * chunk instead of 41 MB, ~1.5 ms of waiting at worst), a multiple of 16 (whole 16-column prefill
 * panels). */
static size_t dec_grain(size_t n) {
    size_t t = (size_t)bne_get_threads();
    size_t g = n / (t * 4);
    g = (g + 15) & ~(size_t)15;
    return g < 16 ? 16 : (g > 1024 ? 1024 : g);
}

/* Several linears of one input as one job over their concatenated rows. */
typedef struct {
    dec_lin seg[3];
    size_t start[4]; /* segment s covers rows [start[s], start[s+1]) */
    int nseg;
} dec_multi;

static void dec_multi_range(void *ctx, size_t b, size_t e) {
    const dec_multi *mj = (const dec_multi *)ctx;
    for (int s = 0; s < mj->nseg; ++s) {
        size_t lo = b > mj->start[s] ? b : mj->start[s], hi = e < mj->start[s + 1] ? e : mj->start[s + 1];
        if (lo < hi) dec_linear_cols(&mj->seg[s], lo - mj->start[s], hi - mj->start[s]);
    }
}

/* One linear whose output columns are added to a residual stream x (m, ldx). */
typedef struct {
    dec_lin lin;
    float *x;
    size_t ldx;
} dec_resid;

static void dec_resid_range(void *ctx, size_t b, size_t e) {
    const dec_resid *rj = (const dec_resid *)ctx;
    dec_linear_cols(&rj->lin, b, e);
    for (size_t i = 0; i < rj->lin.m; ++i) {
        float *x = rj->x + i * rj->ldx;
        const float *y = rj->lin.y + i * rj->lin.ldy;
        for (size_t j = b; j < e; ++j) x[j] = x[j] + y[j];
    }
}

/* gate and up of one input; gate's columns become act(gate) * up. */
typedef struct {
    dec_lin gate, up;
    int act;
} dec_gateup;

static void dec_gateup_range(void *ctx, size_t b, size_t e) {
    const dec_gateup *gj = (const dec_gateup *)ctx;
    dec_linear_cols(&gj->gate, b, e);
    dec_linear_cols(&gj->up, b, e);
    for (size_t i = 0; i < gj->gate.m; ++i) {
        float *g = gj->gate.y + i * gj->gate.ldy;
        const float *u = gj->up.y + i * gj->up.ldy;
        size_t j = b;
        if (gj->act == BNE_ACT_RELU2) { /* (vectors: compilers kept the select scalar) */
            for (; j + DEC_VW <= e; j += DEC_VW) {
                const dec_vf v = dec_ld(g + j);
                const dec_vf r = (dec_vf)((dec_vi)(v > (dec_vf){0}) & (dec_vi)v);
                dec_st(g + j, (r * r) * dec_ld(u + j));
            }
            for (; j < e; ++j) {
                float r = g[j] > 0.0f ? g[j] : 0.0f;
                g[j] = (r * r) * u[j];
            }
        } else {
            for (; j + DEC_VW <= e; j += DEC_VW) {
                const dec_vf v = dec_ld(g + j);
                dec_st(g + j, (v / (1.0f + dec_expv(-v))) * dec_ld(u + j));
            }
            for (; j < e; ++j) g[j] = (g[j] / (1.0f + dec_expf(-g[j]))) * u[j];
        }
    }
}

/* ---- attention -------------------------------------------------------------------------------- */

/* Cache layout (per layer, per kv head g, rows padded to lo->kv_cap, a multiple of DEC_KT):
 *   K plane: tiles of DEC_KT positions, element (position t, column c) at tile t / DEC_KT, offset
 *            c * DEC_KT + t % DEC_KT: a query's scores for 8 positions are 8 lanes of one vector
 *            (no horizontal sums), each summed over c in order;
 *   V plane: row-major (position, column): the weighted values are 16 columns in registers per head.
 *   int8: a float scale per (g, position) after each plane's elements.
 * Attention of one query token against kv head g works through chunks of DEC_PC positions; chunk j
 * gives per query head its max m_j, l_j = sum exp(s - m_j) and o_j = sum exp(s - m_j) V, and the
 * chunks are folded left to right (M = max, L = L a + l_j b, O = O a + o_j b with a = exp(M_old - M),
 * b = exp(m_j - M)), then O / L.  A unit of work is (token, kv head) for a prompt, which folds as
 * it goes, or (kv head, chunk) for one token, whose partials the caller's thread folds afterwards
 * in the same order: the same operations either way, whatever the thread count or vector width. */
#define DEC_KT 8                  /* positions per K tile */
#define DEC_TV (DEC_KT / DEC_VW)  /* vectors per K tile column */
#define DEC_PC 64                 /* positions per chunk */
#define DEC_HB 4                  /* query heads whose scores / values share each loaded K / V vector */

typedef uint32_t dec_vu __attribute__((vector_size(DEC_VW * 4)));
typedef uint16_t dec_vh __attribute__((vector_size(DEC_VW * 2)));
typedef int8_t dec_vb __attribute__((vector_size(DEC_VW)));

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__F16C__) && DEC_VW == 8
#define dec_ld_h(p) ((dec_vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p))))
#elif defined(__aarch64__) && DEC_VW == 4
#define dec_ld_h(p) ((dec_vf)vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)(p)))))
#else
/* IEEE half -> float in integer operations, exact (dec_h2f on DEC_VW lanes) */
#define dec_ld_h(p) __extension__({                                                          \
        dec_vh h_;                                                                           \
        __builtin_memcpy(&h_, (p), sizeof h_);                                               \
        dec_vu u_ = __builtin_convertvector(h_, dec_vu);                                     \
        dec_vf m_ = (dec_vf)((u_ & 0x7fffu) << 13) * 0x1p112f;                               \
        (dec_vf)(((u_ & 0x8000u) << 16) | (dec_vu)m_);                                       \
    })
#endif
/* float -> IEEE half, round to nearest even (dec_f2h on DEC_VW lanes: the same bits) */
#if defined(__F16C__) && DEC_VW == 8
#define dec_st_h(p, v) _mm_storeu_si128((__m128i *)(void *)(p), _mm256_cvtps_ph((__m256)(v), _MM_FROUND_TO_NEAREST_INT))
#elif defined(__aarch64__) && DEC_VW == 4
#define dec_st_h(p, v) vst1_u16((uint16_t *)(p), vreinterpret_u16_f16(vcvt_f16_f32((float32x4_t)(v))))
#else
#define dec_st_h(p, v)                                                                       \
    do {                                                                                     \
        float f_[DEC_VW];                                                                    \
        dec_st(f_, (v));                                                                     \
        for (int l_ = 0; l_ < DEC_VW; ++l_) (p)[l_] = dec_f2h(f_[l_]);                       \
    } while (0)
#endif
/* DEC_VW int8 -> float */
#if defined(__AVX2__) && DEC_VW == 8
#define dec_ld_b(p) \
    ((dec_vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))))
#elif defined(__aarch64__) && DEC_VW == 4
#define dec_ld_b(p) __extension__({                                                          \
        int32_t w_;                                                                          \
        __builtin_memcpy(&w_, (p), 4);                                                       \
        int8x8_t b_ = vreinterpret_s8_s32(vdup_n_s32(w_));                                   \
        (dec_vf)vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b_))));                        \
    })
#else
#define dec_ld_b(p) __extension__({                                                          \
        dec_vb b_;                                                                           \
        __builtin_memcpy(&b_, (p), sizeof b_);                                               \
        __builtin_convertvector(__builtin_convertvector(b_, dec_vi), dec_vf);                \
    })
#endif
/* DEC_VW cache elements from element index i of base, as floats (int8: unscaled) */
#define dec_ld_kv(kvt, base, i)                                                              \
    ((kvt) == BNE_KV_F32 ? dec_ld((const float *)(base) + (i))                               \
     : (kvt) == BNE_KV_F16 ? dec_ld_h((const uint16_t *)(base) + (i))                        \
                           : dec_ld_b((const int8_t *)(base) + (i)))

typedef struct {
    const bne_decoder *d;
    const bne_dec_layout *lo;
    const float *qkv;     /* (n, qkvd), q already rotated */
    uint8_t *kv;          /* this layer's cache */
    size_t pos0, n;
    float *part;          /* one token: (heads, chunks, head_dim + 2) o_j, m_j, l_j */
    float *out;           /* (n, qd) */
    uint32_t *left;       /* one token: chunks of kv head g still to do (the thread that does the last folds g) */
} dec_attn;

/* Raw scores (before the scale) of hb heads q[h * hd ..] against nt K tiles from `tiles`:
 * s[h * DEC_PC + j * DEC_KT + lane], each the sum over c of q[c] k[c] in order. */
DEC_INLINE void dec_scores_tiles(int kvt, int hb, int nt, const float *q, size_t hd, const uint8_t *tiles,
                                 size_t tile_bytes, float *s, const uint8_t *pf_a, const uint8_t *pf_b,
                                 size_t pf_step) {
    dec_vf a[DEC_HB][2][DEC_TV];
    for (int h = 0; h < hb; ++h)
        for (int j = 0; j < nt; ++j)
            for (int v = 0; v < DEC_TV; ++v) a[h][j][v] = (dec_vf){0};
    for (size_t c = 0; c < hd; ++c) {
        /* spread over the columns: the next tiles' K and these positions' V (hd * pf_step bytes each) */
        __builtin_prefetch(pf_a + c * pf_step, 0, 3);
        __builtin_prefetch(pf_b + c * pf_step, 0, 3);
        dec_vf k[2][DEC_TV];
        for (int j = 0; j < nt; ++j)
            for (int v = 0; v < DEC_TV; ++v) k[j][v] = dec_ld_kv(kvt, tiles + j * tile_bytes, c * DEC_KT + v * DEC_VW);
        for (int h = 0; h < hb; ++h) {
            const dec_vf qb = q[h * hd + c] - (dec_vf){0};
            for (int j = 0; j < nt; ++j)
                for (int v = 0; v < DEC_TV; ++v) a[h][j][v] = a[h][j][v] + qb * k[j][v];
        }
    }
    for (int h = 0; h < hb; ++h)
        for (int j = 0; j < nt; ++j)
            for (int v = 0; v < DEC_TV; ++v) dec_st(s + h * DEC_PC + j * DEC_KT + v * DEC_VW, a[h][j][v]);
}

/* Sum over t < tl of w[h * DEC_PC + t] * V_t[c0 .. c0 + 16) for hb heads, positions in order; into
 * o[h * ldo ..] (fold: o = o * fa[h] + sum * fb[h]; first chunk: o = sum; store: o = sum). */
DEC_INLINE void dec_values16(int kvt, int hb, const float *w, size_t tl, const uint8_t *v0, size_t ldv_elems,
                             size_t c0, float *o, size_t ldo, int mode, const float *fa, const float *fb) {
    dec_vf a[DEC_HB][DEC_NV];
    for (int h = 0; h < hb; ++h)
        for (int k = 0; k < DEC_NV; ++k) a[h][k] = (dec_vf){0};
    for (size_t t = 0; t < tl; ++t) {
        dec_vf v[DEC_NV];
        for (int k = 0; k < DEC_NV; ++k) v[k] = dec_ld_kv(kvt, v0, t * ldv_elems + c0 + k * DEC_VW);
        for (int h = 0; h < hb; ++h) {
            const dec_vf wb = w[h * DEC_PC + t] - (dec_vf){0};
            for (int k = 0; k < DEC_NV; ++k) a[h][k] = a[h][k] + wb * v[k];
        }
    }
    for (int h = 0; h < hb; ++h)
        for (int k = 0; k < DEC_NV; ++k) {
            float *p = o + h * ldo + c0 + k * DEC_VW;
            dec_st(p, mode == 1 ? dec_ld(p) * fa[h] + a[h][k] * fb[h] : a[h][k]);
        }
}

/* The same for one column c (head_dim not a multiple of 16): the same operations per lane. */
DEC_INLINE void dec_values1(int kvt, int hb, const float *w, size_t tl, const uint8_t *v0, size_t ldv_elems,
                            size_t c, float *o, size_t ldo, int mode, const float *fa, const float *fb) {
    for (int h = 0; h < hb; ++h) {
        float a = 0.0f;
        for (size_t t = 0; t < tl; ++t) {
            const size_t e = t * ldv_elems + c;
            const float v = kvt == BNE_KV_F32 ? ((const float *)v0)[e]
                            : kvt == BNE_KV_F16 ? dec_h2f(((const uint16_t *)v0)[e])
                                                : (float)((const int8_t *)v0)[e];
            a = a + w[h * DEC_PC + t] * v;
        }
        float *p = o + h * ldo + c;
        *p = mode == 1 ? *p * fa[h] + a * fb[h] : a;
    }
}

/* One chunk of positions [t0, t0 + tl) of kv head g for hb query heads q (hd apart):
 * m[h], l[h] and the weighted values into o (mode 0 first chunk / 2 store: o = o_j; 1: fold into o,
 * whose running max / sum are m[h], l[h]). */
DEC_INLINE void dec_chunk(const dec_attn *A, int kvt, int hb, size_t g, size_t t0, size_t tl, const float *q,
                          float *o, size_t ldo, int mode, float *m, float *l) {
    const bne_decoder *d = A->d;
    const bne_dec_layout *lo = A->lo;
    const size_t hd = d->head_dim, elem = lo->kv_row / hd, tile_bytes = DEC_KT * lo->kv_row;
    const uint8_t *kplane = A->kv, *vplane = A->kv + lo->kv_plane;
    const size_t rows = d->kv_heads * lo->kv_cap, r0 = g * lo->kv_cap + t0; /* first cache row */
    const size_t scale_off = (rows * lo->kv_row + 63) & ~(size_t)63;
    float s[DEC_HB * DEC_PC];
    const size_t ntiles = (tl + DEC_KT - 1) / DEC_KT, padded = (tl + DEC_L - 1) / DEC_L * DEC_L;
    const uint8_t *k0 = kplane + r0 * lo->kv_row, *v0 = vplane + r0 * lo->kv_row;
    /* Memory: the first two K tiles now; then, while two tiles' scores are computed, the next two
     * tiles' K and the V rows of these 16 positions (each 2 tile_bytes, spread over the columns). */
    const size_t pf_step = 2 * tile_bytes / hd, pair = 2 * tile_bytes;
    for (size_t b = 0; b < (tl < 2 * DEC_KT ? tl : 2 * DEC_KT) * lo->kv_row; b += 64) __builtin_prefetch(k0 + b, 0, 3);
    size_t j = 0;
    for (; j + 2 <= ntiles; j += 2)
        dec_scores_tiles(kvt, hb, 2, q, hd, k0 + j * tile_bytes, tile_bytes, s + j * DEC_KT, k0 + (j + 2) * tile_bytes,
                         v0 + j * tile_bytes, pf_step);
    if (j < ntiles)
        dec_scores_tiles(kvt, hb, 1, q, hd, k0 + j * tile_bytes, tile_bytes, s + j * DEC_KT, v0 + j * tile_bytes,
                         v0 + j * tile_bytes + pair / 2, pf_step / 2);
    (void)pair;
    const float *ks = (const float *)(kplane + scale_off) + r0, *vs = (const float *)(vplane + scale_off) + r0;
    float fa[DEC_HB] = {0}, fb[DEC_HB] = {0};
    for (int h = 0; h < hb; ++h) { /* scale, max, exp, sum */
        float *sh = s + h * DEC_PC;
        if (kvt == BNE_KV_I8)
            for (size_t t = 0; t < tl; ++t) sh[t] = (sh[t] * ks[t]) * d->attn_scale;
        else
            for (size_t t = 0; t < tl; ++t) sh[t] = sh[t] * d->attn_scale;
        float mx = sh[0];
        for (size_t t = 1; t < tl; ++t) mx = sh[t] > mx ? sh[t] : mx; /* exact in any order */
        for (size_t t = tl; t < padded; ++t) sh[t] = mx;            /* exp(0) = 1, zeroed below */
        const dec_vf mv = mx - (dec_vf){0};
        for (size_t t = 0; t < padded; t += DEC_VW) dec_st(sh + t, dec_expv(dec_ld(sh + t) - mv));
        for (size_t t = tl; t < padded; ++t) sh[t] = 0.0f;
        dec_vf acc[DEC_NV];
        for (int k = 0; k < DEC_NV; ++k) acc[k] = (dec_vf){0};
        for (size_t t = 0; t < padded; t += DEC_L)
            for (int k = 0; k < DEC_NV; ++k) acc[k] = acc[k] + dec_ld(sh + t + k * DEC_VW);
        float lanes[DEC_L];
        for (int k = 0; k < DEC_NV; ++k) dec_st(lanes + k * DEC_VW, acc[k]);
        const float lj = dec_lanes_sum(lanes);
        if (mode == 1) { /* fold: new max, rescale factors */
            const float M = m[h] > mx ? m[h] : mx;
            fa[h] = dec_expf(m[h] - M);
            fb[h] = dec_expf(mx - M);
            l[h] = l[h] * fa[h] + lj * fb[h];
            m[h] = M;
        } else {
            m[h] = mx;
            l[h] = lj;
        }
        if (kvt == BNE_KV_I8)
            for (size_t t = 0; t < tl; ++t) sh[t] = sh[t] * vs[t];
    }
    size_t c = 0;
    if (hd % DEC_L == 0)
        for (; c < hd; c += DEC_L) dec_values16(kvt, hb, s, tl, v0, hd, c, o, ldo, mode, fa, fb);
    for (; c < hd; ++c) dec_values1(kvt, hb, s, tl, v0, hd, c, o, ldo, mode, fa, fb);
    (void)elem;
}

/* All chunks of hb heads of token i against kv head g (folding), or only chunk jc (jc != -1:
 * o_j, m_j, l_j into A->part). */
DEC_INLINE void dec_attn_heads(const dec_attn *A, int kvt, int hb, size_t i, size_t g, size_t h0, size_t jc) {
    const bne_decoder *d = A->d;
    const size_t hd = d->head_dim, len = A->pos0 + i + 1;
    const float *q = A->qkv + i * A->lo->qkvd + h0 * hd;
    float m[DEC_HB] = {0}, l[DEC_HB] = {0};
    if (jc != (size_t)-1) {
        const size_t nch = (len + DEC_PC - 1) / DEC_PC, t0 = jc * DEC_PC, tl = len - t0 < DEC_PC ? len - t0 : DEC_PC;
        float *p = A->part + (h0 * nch + jc) * (hd + 2); /* head h at + h * nch * (hd + 2) */
        const size_t ldp = nch * (hd + 2);
        dec_chunk(A, kvt, hb, g, t0, tl, q, p, ldp, 2, m, l);
        for (int h = 0; h < hb; ++h) {
            p[h * ldp + hd] = m[h];
            p[h * ldp + hd + 1] = l[h];
        }
        return;
    }
    float *o = A->out + i * A->lo->qd + h0 * hd;
    for (size_t t0 = 0; t0 < len; t0 += DEC_PC)
        dec_chunk(A, kvt, hb, g, t0, len - t0 < DEC_PC ? len - t0 : DEC_PC, q, o, hd, t0 ? 1 : 0, m, l);
    for (int h = 0; h < hb; ++h) {
        const float inv = 1.0f / l[h];
        for (size_t c = 0; c < hd; ++c) o[h * hd + c] = o[h * hd + c] * inv;
    }
}

/* Query heads h0 .. h0 + nh of kv head g, in blocks of up to DEC_HB (constants for the compiler). */
static void dec_attn_group(const dec_attn *A, size_t i, size_t g, size_t jc) {
    const bne_decoder *d = A->d;
    const size_t G = d->heads / d->kv_heads;
    const int kvt = d->kv_type;
    for (size_t h = 0; h < G; h += DEC_HB) {
        const size_t hb = G - h < DEC_HB ? G - h : DEC_HB, h0 = g * G + h;
#define DEC_ATTN_CASE(K, B) \
    case (K) * 8 + (B): dec_attn_heads(A, K, B, i, g, h0, jc); break;
        switch (kvt * 8 + (int)hb) {
            DEC_ATTN_CASE(BNE_KV_F32, 1) DEC_ATTN_CASE(BNE_KV_F32, 2) DEC_ATTN_CASE(BNE_KV_F32, 3)
            DEC_ATTN_CASE(BNE_KV_F32, 4) DEC_ATTN_CASE(BNE_KV_F16, 1) DEC_ATTN_CASE(BNE_KV_F16, 2)
            DEC_ATTN_CASE(BNE_KV_F16, 3) DEC_ATTN_CASE(BNE_KV_F16, 4) DEC_ATTN_CASE(BNE_KV_I8, 1)
            DEC_ATTN_CASE(BNE_KV_I8, 2) DEC_ATTN_CASE(BNE_KV_I8, 3) DEC_ATTN_CASE(BNE_KV_I8, 4)
        default: break;
        }
#undef DEC_ATTN_CASE
    }
}

/* Units of a prompt: u = i * kv_heads + g, every chunk, folded as they come. */
static void dec_attn_tokens(void *ctx, size_t u0, size_t u1) {
    const dec_attn *A = (const dec_attn *)ctx;
    for (size_t u = u0; u < u1; ++u) dec_attn_group(A, u / A->d->kv_heads, u % A->d->kv_heads, (size_t)-1);
}

/* Units of one token: u = g * chunks + j. */
static void dec_cache_put(const bne_decoder *d, const bne_dec_layout *lo, uint8_t *plane, int is_k, size_t g,
                          size_t t, const float *src);

static void dec_attn_fold(const dec_attn *A, size_t g);

/* Units of one token: every kv head's full chunks first (u = g * (chunks - 1) + j), then each kv
 * head's last chunk, which may be short (u = full + g): the longest work is handed out first, so
 * the threads finish together.  The unit of a last chunk, the only one that reads position pos0,
 * first writes the token's (rotated) key and value of kv head g to the cache: the writes are
 * spread over the threads and their misses overlap the scores of the other units.  The thread that
 * finishes a kv head's last outstanding chunk folds that head's partials: the folds are spread over
 * the threads too, and each is the same sequence of operations whichever thread runs it. */
static void dec_attn_chunks(void *ctx, size_t u0, size_t u1) {
    const dec_attn *A = (const dec_attn *)ctx;
    const bne_dec_layout *lo = A->lo;
    const size_t nch = (A->pos0 + DEC_PC) / DEC_PC, hd = A->d->head_dim, full = A->d->kv_heads * (nch - 1);
    for (size_t u = u0; u < u1; ++u) {
        const size_t g = u < full ? u / (nch - 1) : u - full, j = u < full ? u % (nch - 1) : nch - 1;
        if (j == nch - 1) {
            dec_cache_put(A->d, lo, A->kv, 1, g, A->pos0, A->qkv + lo->qd + g * hd);
            dec_cache_put(A->d, lo, A->kv + lo->kv_plane, 0, g, A->pos0, A->qkv + lo->qd + lo->kvd + g * hd);
        }
        dec_attn_group(A, 0, g, j);
        if (__atomic_sub_fetch(&A->left[g], 1u, __ATOMIC_ACQ_REL) == 0) dec_attn_fold(A, g);
    }
}

/* After every chunk of kv head g: fold each of its query heads' chunks in order into the attention
 * output (the same operations as dec_chunk's fold). */
static void dec_attn_fold(const dec_attn *A, size_t g) {
    const size_t hd = A->d->head_dim, nch = (A->pos0 + DEC_PC) / DEC_PC, G = A->d->heads / A->d->kv_heads;
    for (size_t h = g * G; h < (g + 1) * G; ++h) {
        const float *p = A->part + h * nch * (hd + 2);
        float *o = A->out + h * hd;
        float m = p[hd], l = p[hd + 1];
        const size_t cv = hd / DEC_VW * DEC_VW; /* vectors, then the tail: the same operations */
        for (size_t c = 0; c < hd; ++c) o[c] = p[c];
        for (size_t j = 1; j < nch; ++j) {
            const float *pj = p + j * (hd + 2), mj = pj[hd];
            const float M = m > mj ? m : mj, fa = dec_expf(m - M), fb = dec_expf(mj - M);
            l = l * fa + pj[hd + 1] * fb;
            m = M;
            for (size_t c = 0; c < cv; c += DEC_VW) dec_st(o + c, dec_ld(o + c) * fa + dec_ld(pj + c) * fb);
            for (size_t c = cv; c < hd; ++c) o[c] = o[c] * fa + pj[c] * fb;
        }
        const float inv = 1.0f / l;
        for (size_t c = 0; c < cv; c += DEC_VW) dec_st(o + c, dec_ld(o + c) * inv);
        for (size_t c = cv; c < hd; ++c) o[c] = o[c] * inv;
    }
}

/* Write one rotated key / value (hd floats) of kv head g at position t to a layer's cache. */
static void dec_cache_put(const bne_decoder *d, const bne_dec_layout *lo, uint8_t *plane, int is_k, size_t g,
                          size_t t, const float *src) {
    const size_t hd = d->head_dim, r = g * lo->kv_cap + t;
    /* element c at dst[c * step] */
    uint8_t *dst = is_k ? plane + (r - t % DEC_KT) * lo->kv_row : plane + r * lo->kv_row;
    const size_t step = is_k ? DEC_KT : 1, off = is_k ? t % DEC_KT : 0;
    if (d->kv_type == BNE_KV_F32) {
        float *f = (float *)dst + off;
        for (size_t c = 0; c < hd; ++c) f[c * step] = src[c];
    } else if (d->kv_type == BNE_KV_F16) {
        uint16_t *h = (uint16_t *)dst + off, tmp[DEC_VW];
        size_t c = 0;
        for (; c + DEC_VW <= hd; c += DEC_VW) {
            dec_st_h(tmp, dec_ld(src + c));
            for (int l = 0; l < DEC_VW; ++l) h[(c + l) * step] = tmp[l];
        }
        for (; c < hd; ++c) h[c * step] = dec_f2h(src[c]);
    } else {
        float amax = 0.0f;
        for (size_t c = 0; c < hd; ++c) {
            float a = src[c] < 0.0f ? -src[c] : src[c];
            amax = a > amax ? a : amax;
        }
        if (amax < 1e-5f) amax = 1e-5f;
        const float s = 127.0f / amax;
        int8_t *q = (int8_t *)dst + off;
        for (size_t c = 0; c < hd; ++c) q[c * step] = bne_quant1(src[c], s);
        const size_t scale_off = (d->kv_heads * lo->kv_cap * lo->kv_row + 63) & ~(size_t)63;
        ((float *)(plane + scale_off))[r] = 1.0f / s;
    }
}

/* x (n, hd) in place: rotate-half RoPE at positions pos0 .. pos0+n-1 of `heads` heads of a row. */
static void dec_rope(const bne_decoder *d, float *row, size_t heads, size_t pos) {
    const size_t hd = d->head_dim, half = hd / 2;
    const float *c = d->rope_cos + pos * half, *s = d->rope_sin + pos * half;
    for (size_t h = 0; h < heads; ++h) {
        float *x = row + h * hd;
        for (size_t i = 0; i < half; ++i) {
            float a = x[i], b = x[i + half];
            x[i] = a * c[i] - b * s[i];
            x[i + half] = b * c[i] + a * s[i];
        }
    }
}

/* ---- the pass --------------------------------------------------------------------------------- */

/* Bytes of the norm weights (n floats) the caller's thread asks for at the end of the job before the
 * norm (bne_pool_run_pf): they are in no cache (every layer's linears streamed through since the last
 * token), and the norm would otherwise wait on DRAM latency line by line. */
#define DEC_NORM_BYTES(n, w) ((w) ? (n) * sizeof(float) : 0)

/* Rows [r0, r1) of dec_norm_quant's work (any split of the rows gives the same bits: all row-wise). */
typedef struct {
    const bne_kernels *kt;
    const float *src;
    size_t k;
    const float *w;
    float eps;
    float *dst;
    int8_t *xq;
    float *xs;
    int32_t *xsum;
    int rc; /* the first failure's status (written with an atomic store), else BNE_OK */
} dec_nq;

static void dec_nq_rows(void *ctx, size_t r0, size_t r1) {
    dec_nq *j = (dec_nq *)ctx;
    const size_t k = j->k;
    const float *src = j->src + r0 * k;
    if (!j->w)
        for (size_t b = 0; b < (r1 - r0) * k && b < 256; b += 16) __builtin_prefetch(src + b, 0, 3);
    if (j->w) {
        for (size_t i = r0; i < r1; ++i) dec_rmsnorm(j->src + i * k, j->w, k, j->eps, j->dst + i * k);
        src = j->dst + r0 * k;
    }
    int rc = j->kt->quantize(src, r1 - r0, k, k, j->xq + r0 * k, k, j->xs + r0);
    if (rc) {
        __atomic_store_n(&j->rc, rc, __ATOMIC_RELAXED);
        return;
    }
    for (size_t i = r0; i < r1; ++i) {
        const int8_t *q = j->xq + i * k;
        int32_t acc[DEC_L] = {0};
        size_t t = 0;
        for (; t + DEC_L <= k; t += DEC_L)
            for (int l = 0; l < DEC_L; ++l) acc[l] += q[t + l];
        int32_t sum = 0;
        for (int l = 0; l < DEC_L; ++l) sum += acc[l];
        for (; t < k; ++t) sum += q[t];
        j->xsum[i] = sum;
    }
}

/* Rows of a prompt from which the norms and the quantizer run as a pool job (a decode step's single
 * row stays on the caller's thread: a job hand-over costs more than one row). */
#define DEC_NQ_POOL_ROWS 4

/* rows (m, k) of src: optional RMSNorm with w (into dst; NULL w: dst = src), then quantized into
 * xq/xs with row sums xsum. */
static int dec_norm_quant(const bne_kernels *kt, const float *src, size_t m, size_t k, const float *w, float eps,
                          float *dst, int8_t *xq, float *xs, int32_t *xsum) {
    dec_nq j = {kt, src, k, w, eps, dst, xq, xs, xsum, BNE_OK};
    if (m < DEC_NQ_POOL_ROWS) dec_nq_rows(&j, 0, m);
    else bne_pool_run(dec_nq_rows, &j, m, 1);
    return __atomic_load_n(&j.rc, __ATOMIC_RELAXED);
}

static dec_lin dec_lin_of(const bne_kernels *kt, const bne_linear *L, size_t m, const int8_t *xq, const float *xs,
                          const int32_t *xsum, const float *xf, float *y, size_t ldy) {
    dec_lin a;
    a.kt = kt;
    a.lin = L;
    a.xq = xq;
    a.xs = xs;
    a.xsum = xsum;
    a.xf = xf;
    a.m = m;
    a.ldq = L->k;
    a.ldf = L->k;
    a.y = y;
    a.ldy = ldy;
    return a;
}

/* Profile: add the time since *t to counter c and restart *t (no-op without a profile buffer). */
DEC_INLINE void dec_tick(const bne_decoder *d, uint64_t *t, int c) {
    if (d->profile_ns) {
        uint64_t now = bne_now_ns();
        d->profile_ns[c] += now - *t;
        *t = now;
    }
}

/* Rows [i0, i1) of a pass's tokens after q|k|v: RoPE on their q and k heads, and (a prompt) their key
 * and value rows into the cache; one token writes its rows in dec_attn_chunks.  Row-wise: any split of
 * the rows gives the same bits. */
typedef struct {
    const bne_decoder *d;
    const bne_dec_layout *lo;
    float *qkv;
    uint8_t *kv;
    size_t pos0, n;
} dec_rope_put;

static void dec_rope_put_rows(void *ctx, size_t i0, size_t i1) {
    const dec_rope_put *j = (const dec_rope_put *)ctx;
    const bne_decoder *d = j->d;
    const bne_dec_layout *lo = j->lo;
    const size_t hd = d->head_dim;
    for (size_t i = i0; i < i1; ++i) {
        float *row = j->qkv + i * lo->qkvd;
        dec_rope(d, row + lo->qd, d->kv_heads, j->pos0 + i);
        dec_rope(d, row, d->heads, j->pos0 + i);
        for (size_t g = 0; g < d->kv_heads && j->n > 1; ++g) {
            dec_cache_put(d, lo, j->kv, 1, g, j->pos0 + i, row + lo->qd + g * hd);
            dec_cache_put(d, lo, j->kv + lo->kv_plane, 0, g, j->pos0 + i, row + lo->qd + lo->kvd + g * hd);
        }
    }
}

int BNE_DEC_FN(const bne_kernels *kt, const bne_decoder *d, void *cache, size_t capacity, size_t pos0,
               const float *xin, size_t n, void *work, int all_logits, float *logits, float *hidden) {
    bne_dec_layout lo;
    int rc = bne_dec_layout_of(d, n, capacity, &lo);
    if (rc) return rc;
    uint8_t *W = (uint8_t *)work;
    float *x = (float *)(W + lo.x), *h = (float *)(W + lo.h), *qkv = (float *)(W + lo.qkv);
    float *att = (float *)(W + lo.att), *gate = (float *)(W + lo.gu), *up = gate + n * d->ffn;
    float *yo = (float *)(W + lo.yo), *xs = (float *)(W + lo.xs), *part = (float *)(W + lo.part);
    int8_t *xq = (int8_t *)(W + lo.xq);
    int32_t *xsum = (int32_t *)(W + lo.xsum);
    const size_t H = d->hidden, F = d->ffn;
    bne_copy(x, xin, n * H * sizeof(float));
    uint64_t t = d->profile_ns ? bne_now_ns() : 0;

    for (size_t li = 0; li < d->layers; ++li) {
        const bne_decoder_layer *L = &d->layer[li];
        uint8_t *kv = (uint8_t *)cache + li * lo.kv_layer;

        /* attention block */
        if ((rc = dec_norm_quant(kt, x, n, H, L->in_norm, d->eps, h, xq, xs, xsum))) return rc;
        dec_multi mj;
        mj.nseg = 3;
        mj.seg[0] = dec_lin_of(kt, &L->q, n, xq, xs, xsum, h, qkv, lo.qkvd);
        mj.seg[1] = dec_lin_of(kt, &L->k, n, xq, xs, xsum, h, qkv + lo.qd, lo.qkvd);
        mj.seg[2] = dec_lin_of(kt, &L->v, n, xq, xs, xsum, h, qkv + lo.qd + lo.kvd, lo.qkvd);
        mj.start[0] = 0;
        mj.start[1] = lo.qd;
        mj.start[2] = lo.qd + lo.kvd;
        mj.start[3] = lo.qkvd;
        dec_tick(d, &t, 0);
        bne_pool_run(dec_multi_range, &mj, lo.qkvd, dec_grain(lo.qkvd));
        dec_tick(d, &t, 2);
        dec_rope_put rp = {d, &lo, qkv, kv, pos0, n};
        if (n < DEC_NQ_POOL_ROWS) dec_rope_put_rows(&rp, 0, n);
        else bne_pool_run(dec_rope_put_rows, &rp, n, 8); /* 8 rows: a K tile's positions */
        uint32_t *left = (uint32_t *)(W + lo.left);
        dec_attn aj = {d, &lo, qkv, kv, pos0, n, part, att, left};
        dec_tick(d, &t, 0);
        const int inline_attn = (pos0 + n) * n * lo.qd < DEC_ATTN_POOL_MACS; /* not worth a job */
        if (n == 1) {
            const size_t nch = (pos0 + DEC_PC) / DEC_PC, units = d->kv_heads * nch;
            for (size_t g = 0; g < d->kv_heads; ++g) left[g] = (uint32_t)nch; /* (published with the job) */
            if (inline_attn) dec_attn_chunks(&aj, 0, units);
            else bne_pool_run_pf(dec_attn_chunks, &aj, units, 1, L->attn_sub_norm,
                                 DEC_NORM_BYTES(lo.qd, L->attn_sub_norm));
        } else if (inline_attn) {
            dec_attn_tokens(&aj, 0, n * d->kv_heads);
        } else {
            bne_pool_run_pf(dec_attn_tokens, &aj, n * d->kv_heads, 1, L->attn_sub_norm,
                            DEC_NORM_BYTES(lo.qd, L->attn_sub_norm));
        }
        dec_tick(d, &t, 1);
        if ((rc = dec_norm_quant(kt, att, n, lo.qd, L->attn_sub_norm, d->eps, att, xq, xs, xsum))) return rc;
        dec_resid rj = {dec_lin_of(kt, &L->o, n, xq, xs, xsum, att, yo, H), x, H};
        dec_tick(d, &t, 0);
        bne_pool_run_pf(dec_resid_range, &rj, H, dec_grain(H), L->post_norm,
                        DEC_NORM_BYTES(H, L->post_norm));
        dec_tick(d, &t, 2);

        /* feed-forward block */
        if ((rc = dec_norm_quant(kt, x, n, H, L->post_norm, d->eps, h, xq, xs, xsum))) return rc;
        dec_gateup gj = {dec_lin_of(kt, &L->gate, n, xq, xs, xsum, h, gate, F),
                         dec_lin_of(kt, &L->up, n, xq, xs, xsum, h, up, F), d->act};
        dec_tick(d, &t, 0);
        bne_pool_run_pf(dec_gateup_range, &gj, F, dec_grain(F), L->ffn_sub_norm,
                        DEC_NORM_BYTES(F, L->ffn_sub_norm));
        dec_tick(d, &t, 2);
        if ((rc = dec_norm_quant(kt, gate, n, F, L->ffn_sub_norm, d->eps, gate, xq, xs, xsum))) return rc;
        dec_resid dj = {dec_lin_of(kt, &L->down, n, xq, xs, xsum, gate, yo, H), x, H};
        dec_tick(d, &t, 0);
        const float *next = li + 1 < d->layers ? d->layer[li + 1].in_norm : d->final_norm;
        bne_pool_run_pf(dec_resid_range, &dj, H, dec_grain(H), next, DEC_NORM_BYTES(H, next));
        dec_tick(d, &t, 2);
    }
    if (hidden) bne_copy(hidden, x, n * H * sizeof(float));

    const size_t first = all_logits ? 0 : n - 1, rows = n - first;
    if ((rc = dec_norm_quant(kt, x + first * H, rows, H, d->final_norm, d->eps, h, xq, xs, xsum))) return rc;
    dec_multi hj;
    hj.nseg = 1;
    hj.seg[0] = dec_lin_of(kt, &d->head, rows, xq, xs, xsum, h, logits, d->vocab);
    hj.start[0] = 0;
    hj.start[1] = d->vocab;
    bne_pool_run(dec_multi_range, &hj, d->vocab, dec_grain(d->vocab));
    dec_tick(d, &t, 3);
    return BNE_OK;
}

#undef DEC_L
#undef DEC_INLINE
