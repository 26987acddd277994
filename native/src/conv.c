/* conv.c - the kernels of `graph` models' convolutions over NHWC activations.
 *
 *   depthwise:  x (n, h, w, c) @ taps (kh, kw, c) -> y (n, oh, ow, c)
 *   conv GEMM:  x (m, k) int8 @ W (n, k) int8 -> y (m, n) float   (im2col rows of a conv_2d), W held
 *               interleaved by 4 along k: w4 (ceil(k/4), n, 4), zero past k
 *
 * One portable C source.  The loops run over contiguous channels / output columns, which compilers
 * vectorize without reordering any per-element operation (the library is built with
 * -ffp-contract=off and no fast-math; integer sums are exact in any order), so every build gives
 * the same bits.  On x86-64 the same loops are compiled again for AVX2 and for AVX-512 (function-level
 * target attributes, no separate file) and backends avx2 / avx512 run those copies (the conv GEMM
 * has intrinsics kernels there: AVX2 maddubs and AVX-512 VNNI vpdpbusd; and on aarch64 one for
 * neon-dotprod: SDOT); ref, neon and neon-dotprod run the baseline build
 * (aarch64's baseline is NEON).
 *
 * depthwise:
 *   y[b][i][j][ch] = epi( sum over (p, q) in kernel order, inside the image, of
 *                         x[b][i*sh - pt + p*dh][j*sw - pl + q*dw][ch] * taps[p][q][ch] )
 *   zero padding contributes nothing: taps that fall outside the image are skipped.
 *   int8:    acc int32 (exact), epi = ((float)acc * wscale[ch]) / xscale[b] (+ bias[ch])
 *   float32: acc float32, added in tap order,  epi = acc (+ bias[ch])
 * conv GEMM:
 *   y[i][j] = ((float)acc * wscale[j]) / xscale[i] (+ bias[j]),  acc = sum_t x[i][t] * W[j][t] int32:
 *   the numbers of bne_int8_gemm_f32 / bne_ternary_gemm_f32 with the weights transposed, for many rows
 *   and few columns (the GEMM kernels split columns over threads; this splits rows).
 * Both then clamp: y = min(max(y, lo), hi) (fused ReLU / ReLU6; pass -inf, inf for none).
 * Each output element is computed by one thread: results do not depend on the thread count.
 */
#include "bne_internal.h"

#define CH_BLOCK 64 /* channels / columns per accumulator block (stack scratch) */

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(bne_dwconv_shape) == 14 * sizeof(size_t), "bne_dwconv_shape is 14 size_t fields");
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BNE_CONV_AVX2 1
#define BNE_INLINE static inline __attribute__((always_inline))
#else
#define BNE_INLINE static inline
#endif

typedef struct {
    const bne_dwconv_shape *s;
    const void *x;
    const float *xscale; /* int8: (n,) */
    const void *taps;
    const float *wscale; /* int8: (c,) */
    const float *bias;   /* (c,) or NULL */
    float lo, hi;
    float *y;
} dw_job;

typedef struct {
    const int8_t *w4;    /* (ceil(k/4), n, 4): w4[(t4*n + j)*4 + r] = W[j][4*t4 + r], 0 past k */
    const int32_t *wsum; /* (n,) sum_t W[j][t] */
    size_t k, n;
    const float *wscale; /* (n,) */
    const int8_t *x;     /* (m, ldx) */
    size_t ldx;
    const float *xscale; /* (m,) */
    const float *bias;   /* (n,) or NULL */
    float lo, hi;
    float *y;            /* (m, ldy) */
    size_t ldy;
} cg_job;

BNE_INLINE float clampf(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* ---- depthwise: output rows [r0, r1) of the flattened (n * oh) row index ----------------
 * A row is done in chunks of output pixels (DW_ACC accumulators); for each tap (in kernel order)
 * the pixels it reaches inside the image are a contiguous range, so the inner loops carry no bounds
 * checks and run over the chunk's pixels x channels. */

#define DW_ACC 2048 /* accumulators per chunk (stack scratch) */

/* Output columns j in [j0, j1) whose input column j*sw + off lies in [0, w): [*lo, *hi). */
BNE_INLINE void dw_span(size_t j0, size_t j1, size_t sw, long off, size_t w, size_t *lo, size_t *hi) {
    long a = off < 0 ? (-off + (long)sw - 1) / (long)sw : 0;           /* first j with j*sw + off >= 0 */
    long b = (long)w - 1 - off < 0 ? 0 : ((long)w - 1 - off) / (long)sw + 1; /* first j past the image */
    *lo = (size_t)a > j0 ? (size_t)a : j0;
    *hi = (size_t)b < j1 ? (size_t)b : j1;
    if (*hi < *lo) *hi = *lo;
}

BNE_INLINE void dw_i8_body(const dw_job *jb, size_t r0, size_t r1) {
    const bne_dwconv_shape *s = jb->s;
    const int8_t *x = (const int8_t *)jb->x;
    const int8_t *taps = (const int8_t *)jb->taps;
    const size_t c = s->c;
    int32_t acc[DW_ACC];
    size_t jn = DW_ACC / c ? DW_ACC / c : 1;
    for (size_t r = r0; r < r1; ++r) {
        size_t b = r / s->oh, i = r % s->oh;
        float xs = jb->xscale[b];
        for (size_t j0 = 0; j0 < s->ow; j0 += jn) {
            size_t j1 = j0 + jn < s->ow ? j0 + jn : s->ow;
            for (size_t c0 = 0; c0 < c; c0 += DW_ACC) { /* channel blocks only when c > DW_ACC */
                size_t cb = c - c0 < DW_ACC ? c - c0 : DW_ACC;
                for (size_t u = 0; u < (j1 - j0) * cb; ++u) acc[u] = 0;
                for (size_t p = 0; p < s->kh; ++p) {
                    size_t iy = i * s->stride_h + p * s->dil_h;
                    if (iy < s->pad_top || iy - s->pad_top >= s->h) continue;
                    const int8_t *xrow = x + ((b * s->h + iy - s->pad_top) * s->w) * c + c0;
                    for (size_t q = 0; q < s->kw; ++q) {
                        long off = (long)(q * s->dil_w) - (long)s->pad_left;
                        size_t lo, hi;
                        dw_span(j0, j1, s->stride_w, off, s->w, &lo, &hi);
                        const int8_t *wp = taps + (p * s->kw + q) * c + c0;
                        for (size_t j = lo; j < hi; ++j) {
                            const int8_t *xp = xrow + (size_t)((long)(j * s->stride_w) + off) * c;
                            int32_t *ap = acc + (j - j0) * cb;
                            for (size_t t = 0; t < cb; ++t) ap[t] += (int32_t)xp[t] * (int32_t)wp[t];
                        }
                    }
                }
                for (size_t j = j0; j < j1; ++j) {
                    float *yp = jb->y + ((b * s->oh + i) * s->ow + j) * c + c0;
                    const int32_t *ap = acc + (j - j0) * cb;
                    for (size_t t = 0; t < cb; ++t) {
                        float v = ((float)ap[t] * jb->wscale[c0 + t]) / xs;
                        if (jb->bias) v = v + jb->bias[c0 + t];
                        yp[t] = clampf(v, jb->lo, jb->hi);
                    }
                }
            }
        }
    }
}

BNE_INLINE void dw_f32_body(const dw_job *jb, size_t r0, size_t r1) {
    const bne_dwconv_shape *s = jb->s;
    const float *x = (const float *)jb->x;
    const float *taps = (const float *)jb->taps;
    const size_t c = s->c;
    float acc[DW_ACC];
    size_t jn = DW_ACC / c ? DW_ACC / c : 1;
    for (size_t r = r0; r < r1; ++r) {
        size_t b = r / s->oh, i = r % s->oh;
        for (size_t j0 = 0; j0 < s->ow; j0 += jn) {
            size_t j1 = j0 + jn < s->ow ? j0 + jn : s->ow;
            for (size_t c0 = 0; c0 < c; c0 += DW_ACC) {
                size_t cb = c - c0 < DW_ACC ? c - c0 : DW_ACC;
                for (size_t u = 0; u < (j1 - j0) * cb; ++u) acc[u] = 0.0f;
                for (size_t p = 0; p < s->kh; ++p) {
                    size_t iy = i * s->stride_h + p * s->dil_h;
                    if (iy < s->pad_top || iy - s->pad_top >= s->h) continue;
                    const float *xrow = x + ((b * s->h + iy - s->pad_top) * s->w) * c + c0;
                    for (size_t q = 0; q < s->kw; ++q) {
                        long off = (long)(q * s->dil_w) - (long)s->pad_left;
                        size_t lo, hi;
                        dw_span(j0, j1, s->stride_w, off, s->w, &lo, &hi);
                        const float *wp = taps + (p * s->kw + q) * c + c0;
                        for (size_t j = lo; j < hi; ++j) {
                            const float *xp = xrow + (size_t)((long)(j * s->stride_w) + off) * c;
                            float *ap = acc + (j - j0) * cb;
                            for (size_t t = 0; t < cb; ++t) ap[t] = ap[t] + xp[t] * wp[t];
                        }
                    }
                }
                for (size_t j = j0; j < j1; ++j) {
                    float *yp = jb->y + ((b * s->oh + i) * s->ow + j) * c + c0;
                    const float *ap = acc + (j - j0) * cb;
                    for (size_t t = 0; t < cb; ++t) {
                        float v = ap[t];
                        if (jb->bias) v = v + jb->bias[c0 + t];
                        yp[t] = clampf(v, jb->lo, jb->hi);
                    }
                }
            }
        }
    }
}

/* ---- conv GEMM: rows [i0, i1); four rows share each weight load ------------------------- */

BNE_INLINE void cg_epilogue(const cg_job *a, size_t i, size_t j0, size_t nb, const int32_t *acc) {
    float *yp = a->y + i * a->ldy + j0;
    float xs = a->xscale[i];
    for (size_t t = 0; t < nb; ++t) {
        float v = ((float)acc[t] * a->wscale[j0 + t]) / xs;
        if (a->bias) v = v + a->bias[j0 + t];
        yp[t] = clampf(v, a->lo, a->hi);
    }
}

BNE_INLINE int32_t xat(const int8_t *x, size_t t, size_t k) { return t < k ? x[t] : 0; }

BNE_INLINE void cg_body(const cg_job *a, size_t i0, size_t i1) {
    int32_t acc0[CH_BLOCK], acc1[CH_BLOCK], acc2[CH_BLOCK], acc3[CH_BLOCK];
    const size_t k = a->k, n = a->n, k4 = (k + 3) / 4;
    size_t i = i0;
    for (; i + 4 <= i1; i += 4) {
        const int8_t *x0 = a->x + i * a->ldx, *x1 = x0 + a->ldx, *x2 = x1 + a->ldx, *x3 = x2 + a->ldx;
        for (size_t j0 = 0; j0 < n; j0 += CH_BLOCK) {
            size_t nb = n - j0 < CH_BLOCK ? n - j0 : CH_BLOCK;
            for (size_t u = 0; u < nb; ++u) acc0[u] = acc1[u] = acc2[u] = acc3[u] = 0;
            for (size_t t = 0; t < 4 * k4; ++t) {
                int32_t v0 = xat(x0, t, k), v1 = xat(x1, t, k), v2 = xat(x2, t, k), v3 = xat(x3, t, k);
                if ((v0 | v1 | v2 | v3) == 0) continue; /* zeros after ReLU and padding */
                const int8_t *w = a->w4 + ((t / 4) * n + j0) * 4 + (t % 4);
                for (size_t u = 0; u < nb; ++u) {
                    int32_t wv = w[4 * u];
                    acc0[u] += v0 * wv;
                    acc1[u] += v1 * wv;
                    acc2[u] += v2 * wv;
                    acc3[u] += v3 * wv;
                }
            }
            cg_epilogue(a, i, j0, nb, acc0);
            cg_epilogue(a, i + 1, j0, nb, acc1);
            cg_epilogue(a, i + 2, j0, nb, acc2);
            cg_epilogue(a, i + 3, j0, nb, acc3);
        }
    }
    for (; i < i1; ++i) { /* shared tail: one row at a time */
        const int8_t *x0 = a->x + i * a->ldx;
        for (size_t j0 = 0; j0 < n; j0 += CH_BLOCK) {
            size_t nb = n - j0 < CH_BLOCK ? n - j0 : CH_BLOCK;
            for (size_t u = 0; u < nb; ++u) acc0[u] = 0;
            for (size_t t = 0; t < k; ++t) {
                int32_t v0 = x0[t];
                if (v0 == 0) continue;
                const int8_t *w = a->w4 + ((t / 4) * n + j0) * 4 + (t % 4);
                for (size_t u = 0; u < nb; ++u) acc0[u] += v0 * (int32_t)w[4 * u];
            }
            cg_epilogue(a, i, j0, nb, acc0);
        }
    }
}

#ifdef BNE_CONV_AVX2
#include <immintrin.h>
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* AVX-512 VNNI: 4 rows x 16 columns per step of 4 k values.  vpdpbusd multiplies unsigned by
 * signed bytes: x + 128 = x ^ 0x80 as u8, and acc - 128 * wsum[j] gives the exact signed sum
 * (|sum| <= k * 255 * 127 < 2^31 for k <= BNE_MAX_K).  The float epilogue is the scalar one, lane by lane. */
VNNI_TARGET static inline __m512i vnni_x4(const int8_t *x, size_t t4, size_t k) {
    uint32_t v = 0;
    for (size_t r = 0; r < 4; ++r) {
        size_t t = 4 * t4 + r;
        v |= (uint32_t)(uint8_t)((t < k ? x[t] : 0) ^ 0x80) << (8 * r);
    }
    return _mm512_set1_epi32((int32_t)v);
}

VNNI_TARGET static void vnni_store(const cg_job *a, size_t i, size_t j, __mmask16 m, __m512i acc, __m512i corr) {
    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, corr));
    v = _mm512_div_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, a->wscale + j)), _mm512_set1_ps(a->xscale[i]));
    if (a->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, a->bias + j));
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(a->lo)), _mm512_set1_ps(a->hi));
    _mm512_mask_storeu_ps(a->y + i * a->ldy + j, m, v);
}

VNNI_TARGET static void cg_rows_vnni(void *ctx, size_t i0, size_t i1) {
    const cg_job *a = (const cg_job *)ctx;
    const size_t k = a->k, n = a->n, k4 = (k + 3) / 4;
    size_t i = i0;
    for (; i < i1; i += 4) {
        size_t nr = i1 - i < 4 ? i1 - i : 4;
        const int8_t *xr[4];
        for (size_t r = 0; r < 4; ++r) xr[r] = a->x + (i + (r < nr ? r : 0)) * a->ldx;
        for (size_t j = 0; j < n; j += 32) { /* two 16-column vectors per step */
            size_t left = n - j;
            __mmask16 m0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            __mmask16 m1 = left >= 32 ? (__mmask16)0xffff : (left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0);
            __m512i acc[4][2];
            for (size_t r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
            for (size_t t4 = 0; t4 < k4; ++t4) {
                const int8_t *w = a->w4 + (t4 * n + j) * 4;
                __m512i w0 = _mm512_maskz_loadu_epi32(m0, w), w1 = _mm512_maskz_loadu_epi32(m1, w + 64);
                for (size_t r = 0; r < 4; ++r) {
                    __m512i xb = vnni_x4(xr[r], t4, k);
                    acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], xb, w0);
                    acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], xb, w1);
                }
            }
            __m512i c0 = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m0, a->wsum + j), 7);
            __m512i c1 = m1 ? _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m1, a->wsum + j + 16), 7) : c0;
            for (size_t r = 0; r < nr; ++r) {
                vnni_store(a, i + r, j, m0, acc[r][0], c0);
                if (m1) vnni_store(a, i + r, j + 16, m1, acc[r][1], c1);
            }
        }
    }
}

/* AVX2: 4 rows x 16 columns per step of 4 k values.  maddubs(|x|, sign(w, x)) multiplies bytes
 * without the +128 shift (|x| <= 128, |w| <= 127: a pair sums to at most 32512, no int16
 * saturation), madd(., 1) adds the pairs into int32 lanes: 4 exact products per lane. */
#define AVX2_TARGET __attribute__((target("avx2")))

AVX2_TARGET static inline __m256i avx2_x4(const int8_t *x, size_t t4, size_t k) {
    uint32_t v = 0;
    for (size_t r = 0; r < 4; ++r) {
        size_t t = 4 * t4 + r;
        v |= (uint32_t)(uint8_t)(t < k ? x[t] : 0) << (8 * r);
    }
    return _mm256_set1_epi32((int32_t)v);
}

AVX2_TARGET static inline __m256i avx2_mask(size_t left) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left > 8 ? 8 : left)), idx);
}

AVX2_TARGET static void avx2_store(const cg_job *a, size_t i, size_t j, __m256i m, __m256i acc) {
    __m256 v = _mm256_cvtepi32_ps(acc);
    v = _mm256_div_ps(_mm256_mul_ps(v, _mm256_maskload_ps(a->wscale + j, m)), _mm256_set1_ps(a->xscale[i]));
    if (a->bias) v = _mm256_add_ps(v, _mm256_maskload_ps(a->bias + j, m));
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(a->lo)), _mm256_set1_ps(a->hi));
    _mm256_maskstore_ps(a->y + i * a->ldy + j, m, v);
}

AVX2_TARGET static void cg_rows_avx2i(void *ctx, size_t i0, size_t i1) {
    const cg_job *a = (const cg_job *)ctx;
    const size_t k = a->k, n = a->n, k4 = (k + 3) / 4;
    const __m256i ones = _mm256_set1_epi16(1);
    for (size_t i = i0; i < i1; i += 4) {
        size_t nr = i1 - i < 4 ? i1 - i : 4;
        const int8_t *xr[4];
        for (size_t r = 0; r < 4; ++r) xr[r] = a->x + (i + (r < nr ? r : 0)) * a->ldx;
        for (size_t j = 0; j < n; j += 16) { /* two 8-column vectors per step */
            size_t left = n - j;
            __m256i m0 = avx2_mask(left), m1 = avx2_mask(left > 8 ? left - 8 : 0);
            __m256i acc[4][2];
            for (size_t r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
            for (size_t t4 = 0; t4 < k4; ++t4) {
                const int *w = (const int *)(a->w4 + (t4 * n + j) * 4);
                __m256i w0 = _mm256_maskload_epi32(w, m0), w1 = _mm256_maskload_epi32(w + 8, m1);
                for (size_t r = 0; r < 4; ++r) {
                    __m256i xb = avx2_x4(xr[r], t4, k), ax = _mm256_abs_epi8(xb);
                    acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(
                        _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, xb)), ones));
                    acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(
                        _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, xb)), ones));
                }
            }
            for (size_t r = 0; r < nr; ++r) {
                avx2_store(a, i + r, j, m0, acc[r][0]);
                if (left > 8) avx2_store(a, i + r, j + 8, m1, acc[r][1]);
            }
        }
    }
}
#endif

/* arm_neon.h declares SDOT for a function target with GCC and clang >= 17 (zig cc); older clang only when the
 * whole unit has it. */
#if defined(__aarch64__) && (!defined(__clang__) || __clang_major__ >= 17 || defined(__ARM_FEATURE_DOTPROD))
#define BNE_CONV_SDOT 1
#include <arm_neon.h>
#if defined(__clang__)
#define SDOT_TARGET __attribute__((target("dotprod")))
#else
#define SDOT_TARGET __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

/* NEON dotprod: 4 rows x 8 columns per step of 4 k values.  One 16-byte load of w4 holds 4 columns x
 * 4 k values, exactly the operand of SDOT against the row's 4 bytes broadcast: 4 exact products per
 * int32 lane.  The float epilogue is the scalar one (cg_epilogue), so every build gives the same bits. */
SDOT_TARGET static void cg_rows_sdot(void *ctx, size_t i0, size_t i1) {
    const cg_job *a = (const cg_job *)ctx;
    const size_t k = a->k, n = a->n, k4 = (k + 3) / 4;
    int32_t out[4][8];
    for (size_t i = i0; i < i1; i += 4) {
        size_t nr = i1 - i < 4 ? i1 - i : 4;
        const int8_t *xr[4];
        for (size_t r = 0; r < 4; ++r) xr[r] = a->x + (i + (r < nr ? r : 0)) * a->ldx;
        for (size_t j = 0; j < n; j += 8) {
            size_t nb = n - j < 8 ? n - j : 8;
            int32x4_t acc[4][2];
            for (size_t r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = vdupq_n_s32(0);
            int8_t wtail[32];
            for (size_t t4 = 0; t4 < k4; ++t4) {
                const int8_t *w = a->w4 + (t4 * n + j) * 4;
                if (nb < 8) { /* column tail: copy the valid columns, zeros after */
                    for (size_t b = 0; b < 32; ++b) wtail[b] = b < 4 * nb ? w[b] : 0;
                    w = wtail;
                }
                int8x16_t w0 = vld1q_s8(w), w1 = vld1q_s8(w + 16);
                for (size_t r = 0; r < 4; ++r) {
                    uint32_t v = 0;
                    for (size_t q = 0; q < 4; ++q) {
                        size_t tt = 4 * t4 + q;
                        v |= (uint32_t)(uint8_t)(tt < k ? xr[r][tt] : 0) << (8 * q);
                    }
                    int8x16_t xb = vreinterpretq_s8_u32(vdupq_n_u32(v));
                    acc[r][0] = vdotq_s32(acc[r][0], w0, xb);
                    acc[r][1] = vdotq_s32(acc[r][1], w1, xb);
                }
            }
            for (size_t r = 0; r < nr; ++r) {
                vst1q_s32(out[r], acc[r][0]);
                vst1q_s32(out[r] + 4, acc[r][1]);
                cg_epilogue(a, i + r, j, nb, out[r]);
            }
        }
    }
}
#endif

/* The baseline build of each loop, and on x86-64 an AVX2 build of the same source. */
static void dw_i8_rows(void *ctx, size_t b, size_t e) { dw_i8_body((const dw_job *)ctx, b, e); }
static void dw_f32_rows(void *ctx, size_t b, size_t e) { dw_f32_body((const dw_job *)ctx, b, e); }
static void cg_rows(void *ctx, size_t b, size_t e) { cg_body((const cg_job *)ctx, b, e); }
#ifdef BNE_CONV_AVX2
__attribute__((target("avx2"))) static void dw_i8_rows_avx2(void *ctx, size_t b, size_t e) {
    dw_i8_body((const dw_job *)ctx, b, e);
}
__attribute__((target("avx2"))) static void dw_f32_rows_avx2(void *ctx, size_t b, size_t e) {
    dw_f32_body((const dw_job *)ctx, b, e);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dw_i8_rows_avx512(void *ctx, size_t b, size_t e) {
    dw_i8_body((const dw_job *)ctx, b, e);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dw_f32_rows_avx512(void *ctx, size_t b, size_t e) {
    dw_f32_body((const dw_job *)ctx, b, e);
}
#endif

/* Backend id -> which build to run (0 baseline, 1 AVX2, 2 AVX-512, 3 NEON dotprod); or an error
 * status (negative).  Only the conv GEMM has a dotprod kernel; the depthwise loops run baseline there. */
static int pick(int backend) {
    if (backend < 0 || backend >= BNE_BACKEND_COUNT) return -BNE_ERR_BACKEND;
    if (backend == BNE_BACKEND_AUTO) backend = bne_backend_best();
    if (!bne_backend_supported(backend)) return -BNE_ERR_UNSUPPORTED;
#if defined(BNE_CONV_AVX2)
    return backend == BNE_BACKEND_AVX512 ? 2 : backend == BNE_BACKEND_AVX2;
#elif defined(BNE_CONV_SDOT)
    return backend == BNE_BACKEND_NEON_DOTPROD ? 3 : 0;
#else
    return 0;
#endif
}

static size_t grain(size_t rows, size_t per) {
    size_t t = (size_t)bne_get_threads();
    size_t g = rows / (t * 4);
    g = (g + per - 1) / per * per;
    return g < per ? per : g;
}

static int check_dw(const bne_dwconv_shape *s, const void *x, const void *taps, const float *y) {
    if (!s || !x || !taps || !y) return BNE_ERR_NULL;
    if (!s->n || !s->h || !s->w || !s->c || !s->kh || !s->kw || !s->stride_h || !s->stride_w ||
        !s->dil_h || !s->dil_w || !s->oh || !s->ow)
        return BNE_ERR_SHAPE;
    if (s->kh * s->kw > BNE_MAX_K) return BNE_ERR_SHAPE; /* int32 accumulators cannot overflow */
    return BNE_OK;
}

int bne_dwconv_i8(int backend, const bne_dwconv_shape *s, const int8_t *x, const float *xscale,
                  const int8_t *taps, const float *wscale, const float *bias, float lo, float hi, float *y) {
    int v = pick(backend), rc;
    if (v < 0) return -v;
    if ((rc = check_dw(s, x, taps, y))) return rc;
    if (!xscale || !wscale) return BNE_ERR_NULL;
    dw_job jb = {s, x, xscale, taps, wscale, bias, lo, hi, y};
    bne_range_fn fn = dw_i8_rows;
#ifdef BNE_CONV_AVX2
    if (v) fn = v == 2 ? dw_i8_rows_avx512 : dw_i8_rows_avx2;
#endif
    bne_pool_run(fn, &jb, s->n * s->oh, grain(s->n * s->oh, 1));
    return BNE_OK;
}

int bne_dwconv_f32(int backend, const bne_dwconv_shape *s, const float *x, const float *taps,
                   const float *bias, float lo, float hi, float *y) {
    int v = pick(backend), rc;
    if (v < 0) return -v;
    if ((rc = check_dw(s, x, taps, y))) return rc;
    dw_job jb = {s, x, NULL, taps, NULL, bias, lo, hi, y};
    bne_range_fn fn = dw_f32_rows;
#ifdef BNE_CONV_AVX2
    if (v) fn = v == 2 ? dw_f32_rows_avx512 : dw_f32_rows_avx2;
#endif
    bne_pool_run(fn, &jb, s->n * s->oh, grain(s->n * s->oh, 1));
    return BNE_OK;
}

int bne_conv_gemm_f32(int backend, const int8_t *w4, const int32_t *wsum, size_t k, size_t n,
                      const float *wscale, const int8_t *x, size_t m, size_t ldx, const float *xscale,
                      const float *bias, float lo, float hi, float *y, size_t ldy) {
    int v = pick(backend);
    if (v < 0) return -v;
    if (!w4 || !wsum || !wscale || !x || !xscale || !y) return BNE_ERR_NULL;
    if (!k || !n || !m || k > BNE_MAX_K || ldx < k || ldy < n) return BNE_ERR_SHAPE;
    cg_job jb = {w4, wsum, k, n, wscale, x, ldx, xscale, bias, lo, hi, y, ldy};
    bne_range_fn fn = cg_rows;
#ifdef BNE_CONV_AVX2
    if (v) fn = v == 2 ? cg_rows_vnni : cg_rows_avx2i;
#endif
#ifdef BNE_CONV_SDOT
    if (v == 3) fn = cg_rows_sdot;
#endif
    bne_pool_run(fn, &jb, m, grain(m, 4));
    return BNE_OK;
}
