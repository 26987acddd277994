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
 *   [pool] attention, one head per chunk (scores, softmax, weighted values)
 *   [main] attn_sub_norm + quantize;  [pool] o rows + the residual add of those columns
 *   [main] post_norm + quantize;      [pool] gate and up rows + act(gate) * up of those columns
 *   [main] ffn_sub_norm + quantize;   [pool] down rows + the residual add
 */
#ifndef BNE_DEC_FN
#error "define BNE_DEC_FN before including decoder_impl.h"
#endif

#define DEC_L 16 /* float lanes of the reductions */
/* Attention below this many multiply-adds (scores) runs on the caller's thread (a decode step at a
 * context below ~100 for the 2B shape): a pool job costs a wake-up.  Above, the heads are split
 * over the threads, which also read the cache from DRAM in parallel. */
#define DEC_ATTN_POOL_MACS ((size_t)1 << 18)
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

/* dec_dot of two vectors a0, a1 against one b, interleaved (twice the independent chains); each
 * result has the bits dec_dot gives. */
DEC_INLINE void dec_dot2(const float *a0, const float *a1, const float *b, size_t n, float *r0, float *r1) {
    dec_vf v0[DEC_NV], v1[DEC_NV];
    for (int k = 0; k < DEC_NV; ++k) v0[k] = v1[k] = (dec_vf){0};
    size_t i = 0;
    for (; i + DEC_L <= n; i += DEC_L)
        for (int k = 0; k < DEC_NV; ++k) {
            const dec_vf bk = dec_ld(b + i + k * DEC_VW);
            v0[k] = v0[k] + dec_ld(a0 + i + k * DEC_VW) * bk;
            v1[k] = v1[k] + dec_ld(a1 + i + k * DEC_VW) * bk;
        }
    float t0[DEC_L], t1[DEC_L], acc[DEC_L];
    for (size_t l = 0; i + l < n; ++l) {
        t0[l] = a0[i + l] * b[i + l];
        t1[l] = a1[i + l] * b[i + l];
    }
    DEC_LANES(acc, v0, t0, n - i);
    *r0 = dec_lanes_sum(acc);
    DEC_LANES(acc, v1, t1, n - i);
    *r1 = dec_lanes_sum(acc);
}

static float dec_dot_h(const float *a, const uint16_t *b, size_t n) {
    float acc[DEC_L] = {0};
    size_t i = 0;
    for (; i + DEC_L <= n; i += DEC_L)
        for (int l = 0; l < DEC_L; ++l) acc[l] += a[i + l] * dec_h2f(b[i + l]);
    for (int l = 0; i + (size_t)l < n; ++l) acc[l] += a[i + l] * dec_h2f(b[i + l]);
    return dec_lanes_sum(acc);
}

static float dec_dot_i8(const float *a, const int8_t *b, size_t n) {
    float acc[DEC_L] = {0};
    size_t i = 0;
    for (; i + DEC_L <= n; i += DEC_L)
        for (int l = 0; l < DEC_L; ++l) acc[l] += a[i + l] * (float)b[i + l];
    for (int l = 0; i + (size_t)l < n; ++l) acc[l] += a[i + l] * (float)b[i + l];
    return dec_lanes_sum(acc);
}

/* y = x * (1 / sqrt(mean(x^2) + eps)) * w  (w NULL: no weight) */
static void dec_rmsnorm(const float *x, const float *w, size_t n, float eps, float *y) {
    float acc[DEC_L] = {0};
    size_t i = 0;
    for (; i + DEC_L <= n; i += DEC_L)
        for (int l = 0; l < DEC_L; ++l) acc[l] += x[i + l] * x[i + l];
    for (int l = 0; i + (size_t)l < n; ++l) acc[l] += x[i + l] * x[i + l];
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
        if (gj->act == BNE_ACT_RELU2) {
            for (size_t j = b; j < e; ++j) {
                float r = g[j] > 0.0f ? g[j] : 0.0f;
                g[j] = (r * r) * u[j];
            }
        } else {
            for (size_t j = b; j < e; ++j) g[j] = (g[j] / (1.0f + dec_expf(-g[j]))) * u[j];
        }
    }
}

/* ---- attention -------------------------------------------------------------------------------- */

typedef struct {
    const bne_decoder *d;
    const bne_dec_layout *lo;
    const float *qkv;     /* (n, qkvd), q already rotated */
    uint8_t *kv;          /* this layer's cache */
    size_t capacity, pos0, n;
    float *scores;        /* (heads, capacity) */
    float *out;           /* (n, qd) */
} dec_attn;

/* A K or V row as floats: f16 converted, int8 times its scale (f32 rows are used in place). */
DEC_INLINE void dec_kv_row(int kvt, const uint8_t *r, float scale, size_t n, float *dst) {
    if (kvt == BNE_KV_F16) {
        const uint16_t *h = (const uint16_t *)r;
        for (size_t c = 0; c < n; ++c) dst[c] = dec_h2f(h[c]);
    } else {
        const int8_t *q = (const int8_t *)r;
        for (size_t c = 0; c < n; ++c) dst[c] = (float)q[c] * scale;
    }
}

#define DEC_VB 32                       /* output floats of a head kept in registers over positions */
#define DEC_CHUNK_FLOATS 8192           /* converted value rows at a time (32 KB of stack) */

/* o[c0 .. c0+32) += sum over t < tl of p[t] * V_t[c0 ..), positions in order (the 32 floats stay
 * in registers over all positions). */
DEC_INLINE void dec_values_block(const float *p, size_t tl, const float *v0, size_t ldv, float *o) {
    dec_vf a[DEC_VB / DEC_VW];
    for (int k = 0; k < DEC_VB / DEC_VW; ++k) a[k] = dec_ld(o + k * DEC_VW);
    for (size_t t = 0; t < tl; ++t) {
        const dec_vf pt = (dec_vf){0} + p[t];
        const float *v = v0 + t * ldv;
        __builtin_prefetch(v + 8 * ldv);
        for (int k = 0; k < DEC_VB / DEC_VW; ++k) a[k] = a[k] + pt * dec_ld(v + k * DEC_VW);
    }
    for (int k = 0; k < DEC_VB / DEC_VW; ++k) dec_st(o + k * DEC_VW, a[k]);
}

/* Query heads per attention work unit: pairs when a kv head serves an even number of them (a decode
 * step of the 2B shape then has 10 units, which 2 threads share evenly), else one. */
static size_t dec_attn_hb(const bne_decoder *d) { return (d->heads / d->kv_heads) % 2 == 0 ? 2 : 1; }

/* Work units u in [u0, u1): u = (i * kv_heads + g) * (groups / hb) + b, query token i against kv head
 * g, for hb of the query heads sharing it (block b).  Each cached row is read (and converted) once
 * for them; per head the operations and their order do not depend on the grouping, thread count
 * or vector width. */
static void dec_attn_range(void *ctx, size_t u0, size_t u1) {
    const dec_attn *A = (const dec_attn *)ctx;
    const bne_decoder *d = A->d;
    const size_t hd = d->head_dim, hb = dec_attn_hb(d), nblk = d->heads / d->kv_heads / hb, cap = A->capacity,
                 row = A->lo->kv_row;
    const size_t groups = hb; /* the heads of one unit */
    const int kvt = d->kv_type;
    const int vec = hd % DEC_VB == 0 && hd <= DEC_CHUNK_FLOATS / 16; /* the blocked value path */
    const size_t chunk = vec ? DEC_CHUNK_FLOATS / hd : 0;
    const uint8_t *kplane = A->kv, *vplane = A->kv + A->lo->kv_plane;
    const size_t scale_off = (d->kv_heads * cap * row + 63) & ~(size_t)63;
    float buf[DEC_CHUNK_FLOATS];
    for (size_t u = u0; u < u1; ++u) {
        const size_t ig = u / nblk, i = ig / d->kv_heads, g = ig % d->kv_heads, h0 = g * nblk * hb + (u % nblk) * hb;
        const size_t row0 = g * cap; /* first cache row of this kv head */
        const float *kscale = (const float *)(kplane + scale_off) + row0;
        const float *vscale = (const float *)(vplane + scale_off) + row0;
        const size_t len = A->pos0 + i + 1; /* causal: positions 0 .. pos0 + i */
        const float *q0 = A->qkv + i * A->lo->qkvd + h0 * hd;
        for (size_t t = 0; t < len; ++t) { /* scores of every head of the group */
            const uint8_t *kr = kplane + (row0 + t) * row;
            __builtin_prefetch(kr + 8 * row);
            const float *k = (const float *)kr;
            if (kvt != BNE_KV_F32 && hd <= DEC_CHUNK_FLOATS) {
                dec_kv_row(kvt, kr, kvt == BNE_KV_I8 ? kscale[t] : 1.0f, hd, buf);
                k = buf;
            }
            if (groups == 2 && (kvt == BNE_KV_F32 || hd <= DEC_CHUNK_FLOATS)) {
                float r0, r1;
                dec_dot2(q0, q0 + hd, k, hd, &r0, &r1);
                A->scores[h0 * cap + t] = r0 * d->attn_scale;
                A->scores[(h0 + 1) * cap + t] = r1 * d->attn_scale;
                continue;
            }
            for (size_t h = 0; h < groups; ++h) {
                float dot;
                if (kvt == BNE_KV_F32 || hd <= DEC_CHUNK_FLOATS) dot = dec_dot(q0 + h * hd, k, hd);
                else if (kvt == BNE_KV_F16) dot = dec_dot_h(q0 + h * hd, (const uint16_t *)kr, hd);
                else dot = dec_dot_i8(q0 + h * hd, (const int8_t *)kr, hd) * kscale[t];
                A->scores[(h0 + h) * cap + t] = dot * d->attn_scale;
            }
        }
        for (size_t h = 0; h < groups; ++h) { /* softmax of each head's scores, in place */
            float *s = A->scores + (h0 + h) * cap;
            float mx = s[0];
            for (size_t t = 1; t < len; ++t) mx = s[t] > mx ? s[t] : mx; /* exact in any order */
            for (size_t t = 0; t < len; ++t) s[t] = dec_expf(s[t] - mx);
            float acc[DEC_L] = {0};
            size_t t = 0;
            for (; t + DEC_L <= len; t += DEC_L)
                for (int l = 0; l < DEC_L; ++l) acc[l] += s[t + l];
            for (int l = 0; t + (size_t)l < len; ++l) acc[l] += s[t + l];
            const float inv = 1.0f / dec_lanes_sum(acc);
            for (t = 0; t < len; ++t) s[t] = s[t] * inv;
            float *o = A->out + i * A->lo->qd + (h0 + h) * hd;
            for (size_t c = 0; c < hd; ++c) o[c] = 0.0f;
        }
        const uint8_t *vbase = vplane + row0 * row;
        if (vec) { /* positions in chunks (converted once for the group), 32 output floats at a time */
            for (size_t t0 = 0; t0 < len; t0 += chunk) {
                const size_t tl = len - t0 < chunk ? len - t0 : chunk;
                const float *v0 = (const float *)(vbase + t0 * row);
                size_t ldv = row / 4;
                if (kvt != BNE_KV_F32) {
                    for (size_t t = 0; t < tl; ++t)
                        dec_kv_row(kvt, vbase + (t0 + t) * row, kvt == BNE_KV_I8 ? vscale[t0 + t] : 1.0f, hd,
                                   buf + t * hd);
                    v0 = buf;
                    ldv = hd;
                }
                for (size_t h = 0; h < groups; ++h) {
                    const float *p = A->scores + (h0 + h) * cap + t0;
                    float *o = A->out + i * A->lo->qd + (h0 + h) * hd;
                    for (size_t c = 0; c < hd; c += DEC_VB) dec_values_block(p, tl, v0 + c, ldv, o + c);
                }
            }
            continue;
        }
        for (size_t h = 0; h < groups; ++h) { /* the general case, one element at a time */
            const float *s = A->scores + (h0 + h) * cap;
            float *o = A->out + i * A->lo->qd + (h0 + h) * hd;
            for (size_t c = 0; c < hd; ++c) {
                float a = 0.0f;
                for (size_t t = 0; t < len; ++t) {
                    const uint8_t *vr = vbase + t * row;
                    float v = kvt == BNE_KV_F32 ? ((const float *)vr)[c]
                              : kvt == BNE_KV_F16 ? dec_h2f(((const uint16_t *)vr)[c])
                                                  : (float)((const int8_t *)vr)[c] * vscale[t];
                    a = a + s[t] * v;
                }
                o[c] = a;
            }
        }
    }
}

/* Write one rotated key / value row (hd floats) to cache row r of a plane. */
static void dec_cache_put(const bne_decoder *d, const bne_dec_layout *lo, uint8_t *plane, size_t capacity, size_t r,
                          const float *src) {
    const size_t hd = d->head_dim;
    uint8_t *dst = plane + r * lo->kv_row;
    if (d->kv_type == BNE_KV_F32) {
        bne_copy(dst, src, hd * 4);
    } else if (d->kv_type == BNE_KV_F16) {
        uint16_t *h = (uint16_t *)dst;
        for (size_t c = 0; c < hd; ++c) h[c] = dec_f2h(src[c]);
    } else {
        float amax = 0.0f;
        for (size_t c = 0; c < hd; ++c) {
            float a = src[c] < 0.0f ? -src[c] : src[c];
            amax = a > amax ? a : amax;
        }
        if (amax < 1e-5f) amax = 1e-5f;
        const float s = 127.0f / amax;
        int8_t *q = (int8_t *)dst;
        for (size_t c = 0; c < hd; ++c) q[c] = bne_quant1(src[c], s);
        const size_t scale_off = (d->kv_heads * capacity * lo->kv_row + 63) & ~(size_t)63;
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

/* rows (m, k) of src: optional RMSNorm with w (into dst; NULL w: dst = src), then quantized into
 * xq/xs with row sums xsum. */
static int dec_norm_quant(const bne_kernels *kt, const float *src, size_t m, size_t k, const float *w, float eps,
                          float *dst, int8_t *xq, float *xs, int32_t *xsum) {
    if (w) {
        for (size_t i = 0; i < m; ++i) dec_rmsnorm(src + i * k, w, k, eps, dst + i * k);
        src = dst;
    }
    int rc = kt->quantize(src, m, k, k, xq, k, xs);
    if (rc) return rc;
    for (size_t i = 0; i < m; ++i) {
        const int8_t *q = xq + i * k;
        int32_t acc[DEC_L] = {0};
        size_t t = 0;
        for (; t + DEC_L <= k; t += DEC_L)
            for (int l = 0; l < DEC_L; ++l) acc[l] += q[t + l];
        int32_t sum = 0;
        for (int l = 0; l < DEC_L; ++l) sum += acc[l];
        for (; t < k; ++t) sum += q[t];
        xsum[i] = sum;
    }
    return BNE_OK;
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

int BNE_DEC_FN(const bne_kernels *kt, const bne_decoder *d, void *cache, size_t capacity, size_t pos0,
               const float *xin, size_t n, void *work, int all_logits, float *logits, float *hidden) {
    bne_dec_layout lo;
    int rc = bne_dec_layout_of(d, n, capacity, &lo);
    if (rc) return rc;
    uint8_t *W = (uint8_t *)work;
    float *x = (float *)(W + lo.x), *h = (float *)(W + lo.h), *qkv = (float *)(W + lo.qkv);
    float *att = (float *)(W + lo.att), *gate = (float *)(W + lo.gu), *up = gate + n * d->ffn;
    float *yo = (float *)(W + lo.yo), *xs = (float *)(W + lo.xs), *scores = (float *)(W + lo.scores);
    int8_t *xq = (int8_t *)(W + lo.xq);
    int32_t *xsum = (int32_t *)(W + lo.xsum);
    const size_t H = d->hidden, F = d->ffn, hd = d->head_dim;
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
        for (size_t i = 0; i < n; ++i) {
            float *row = qkv + i * lo.qkvd;
            dec_rope(d, row, d->heads, pos0 + i);
            dec_rope(d, row + lo.qd, d->kv_heads, pos0 + i);
            for (size_t g = 0; g < d->kv_heads; ++g) {
                dec_cache_put(d, &lo, kv, capacity, g * capacity + pos0 + i, row + lo.qd + g * hd);
                dec_cache_put(d, &lo, kv + lo.kv_plane, capacity, g * capacity + pos0 + i, row + lo.qd + lo.kvd + g * hd);
            }
        }
        dec_attn aj = {d, &lo, qkv, kv, capacity, pos0, n, scores, att};
        dec_tick(d, &t, 0);
        const size_t units = n * d->heads / dec_attn_hb(d);
        if ((pos0 + n) * n * lo.qd < DEC_ATTN_POOL_MACS)
            dec_attn_range(&aj, 0, units); /* a short decode step's attention: not worth a job */
        else
            bne_pool_run(dec_attn_range, &aj, units, 1);
        dec_tick(d, &t, 1);
        if ((rc = dec_norm_quant(kt, att, n, lo.qd, L->attn_sub_norm, d->eps, att, xq, xs, xsum))) return rc;
        dec_resid rj = {dec_lin_of(kt, &L->o, n, xq, xs, xsum, att, yo, H), x, H};
        dec_tick(d, &t, 0);
        bne_pool_run(dec_resid_range, &rj, H, dec_grain(H));
        dec_tick(d, &t, 2);

        /* feed-forward block */
        if ((rc = dec_norm_quant(kt, x, n, H, L->post_norm, d->eps, h, xq, xs, xsum))) return rc;
        dec_gateup gj = {dec_lin_of(kt, &L->gate, n, xq, xs, xsum, h, gate, F),
                         dec_lin_of(kt, &L->up, n, xq, xs, xsum, h, up, F), d->act};
        dec_tick(d, &t, 0);
        bne_pool_run(dec_gateup_range, &gj, F, dec_grain(F));
        dec_tick(d, &t, 2);
        if ((rc = dec_norm_quant(kt, gate, n, F, L->ffn_sub_norm, d->eps, gate, xq, xs, xsum))) return rc;
        dec_resid dj = {dec_lin_of(kt, &L->down, n, xq, xs, xsum, gate, yo, H), x, H};
        dec_tick(d, &t, 0);
        bne_pool_run(dec_resid_range, &dj, H, dec_grain(H));
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
