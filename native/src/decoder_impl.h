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
    for (int w = DEC_L / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) acc[l] = acc[l] + acc[l + w];
    return acc[0];
}

static float dec_dot(const float *a, const float *b, size_t n) {
    float acc[DEC_L] = {0};
    size_t i = 0;
    for (; i + DEC_L <= n; i += DEC_L)
        for (int l = 0; l < DEC_L; ++l) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i + (size_t)l < n; ++l) acc[l] += a[i + l] * b[i + l];
    return dec_lanes_sum(acc);
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

static size_t dec_grain(size_t n) {
    size_t t = (size_t)bne_get_threads();
    size_t g = n / (t * 4);
    g = (g + 7) & ~(size_t)7;
    return g < 8 ? 8 : g;
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

static void dec_attn_range(void *ctx, size_t h0, size_t h1) {
    const dec_attn *A = (const dec_attn *)ctx;
    const bne_decoder *d = A->d;
    const size_t hd = d->head_dim, groups = d->heads / d->kv_heads, cap = A->capacity;
    const int kvt = d->kv_type;
    for (size_t hh = h0; hh < h1; ++hh) {
        const size_t g = hh / groups;
        const uint8_t *kplane = A->kv, *vplane = A->kv + A->lo->kv_plane;
        const size_t row0 = g * cap; /* first cache row of this kv head */
        const size_t scale_off = (d->kv_heads * cap * A->lo->kv_row + 63) & ~(size_t)63;
        const float *kscale = (const float *)(kplane + scale_off) + row0;
        const float *vscale = (const float *)(vplane + scale_off) + row0;
        float *s = A->scores + hh * cap;
        for (size_t i = 0; i < A->n; ++i) {
            const float *q = A->qkv + i * A->lo->qkvd + hh * hd;
            const size_t len = A->pos0 + i + 1; /* causal: positions 0 .. pos0 + i */
            float mx = -3.402823466e38f;
            for (size_t t = 0; t < len; ++t) {
                const size_t r = row0 + t;
                float dot;
                if (kvt == BNE_KV_F32) dot = dec_dot(q, (const float *)(kplane + r * A->lo->kv_row), hd);
                else if (kvt == BNE_KV_F16) dot = dec_dot_h(q, (const uint16_t *)(kplane + r * A->lo->kv_row), hd);
                else dot = dec_dot_i8(q, (const int8_t *)(kplane + r * A->lo->kv_row), hd) * kscale[t];
                s[t] = dot * d->attn_scale;
                mx = s[t] > mx ? s[t] : mx;
            }
            float sum = 0.0f;
            for (size_t t = 0; t < len; ++t) {
                s[t] = dec_expf(s[t] - mx);
                sum += s[t];
            }
            const float inv = 1.0f / sum;
            float *o = A->out + i * A->lo->qd + hh * hd;
            for (size_t c = 0; c < hd; ++c) o[c] = 0.0f;
            for (size_t t = 0; t < len; ++t) {
                const float p = s[t] * inv;
                const size_t r = row0 + t;
                if (kvt == BNE_KV_F32) {
                    const float *v = (const float *)(vplane + r * A->lo->kv_row);
                    for (size_t c = 0; c < hd; ++c) o[c] = o[c] + p * v[c];
                } else if (kvt == BNE_KV_F16) {
                    const uint16_t *v = (const uint16_t *)(vplane + r * A->lo->kv_row);
                    for (size_t c = 0; c < hd; ++c) o[c] = o[c] + p * dec_h2f(v[c]);
                } else {
                    const int8_t *v = (const int8_t *)(vplane + r * A->lo->kv_row);
                    const float pv = p * vscale[t];
                    for (size_t c = 0; c < hd; ++c) o[c] = o[c] + pv * (float)v[c];
                }
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
        if ((pos0 + n) * n * lo.qd < DEC_ATTN_POOL_MACS)
            dec_attn_range(&aj, 0, d->heads); /* a decode step's attention: not worth a job */
        else
            bne_pool_run(dec_attn_range, &aj, d->heads, 1);
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
