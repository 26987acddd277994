/* neon.c - the aarch64 Advanced SIMD variant ("neon"), ARMv8.0: no SDOT.
 *
 * Build with -march=armv8-a.  Products are formed with SMULL/SMLAL (int8 x
 * int8 -> int16) and widened into int32 with SADALP before an int16 lane can
 * overflow.  Results are bit-exact with kernels_ref.c: integer sums are exact,
 * and the float epilogue goes through the shared bne_store.
 *
 * Ternary: codes c = w + 1 in {0,1,2} are multiplied as signed bytes, so
 * sum(w * x) = sum(c * x) - sum(x), with sum(x) = a->xsum[i] from api.c.
 */
#if !defined(__aarch64__)
#error "neon.c is aarch64 only (build it with -march=armv8-a)"
#endif

#include <arm_neon.h>

#include "bne_internal.h"

#define MR 4 /* activation rows that share one unpacked weight block (GEMM) */
#define NR 4 /* weight rows per step when m == 1 (GEMV) */

/* Ternary: one block adds 16 products to each int16 lane (8 code vectors x
 * SMULL low + high), each of magnitude <= 2 * 128 = 256.  GROUP blocks stay in
 * int16 before the SADALP widening: GROUP * 16 products * 256 < 32768. */
#define GROUP 7
_Static_assert(GROUP * 16 <= 127, "int16 lanes would overflow before widening");

#define FORCE_INLINE static inline __attribute__((always_inline))

/* ---- ternary ---------------------------------------------------------- */

/* The 8 code vectors of one 32-byte block in weight order: c[q] = codes of
 * weights 16q .. 16q+15 (byte j holds weights j, j+32, j+64, j+96). */
FORCE_INLINE void unpack_block(const uint8_t *blk, int8x16_t c[8]) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    uint8x16_t v0 = vld1q_u8(blk), v1 = vld1q_u8(blk + 16);
    c[0] = vreinterpretq_s8_u8(vandq_u8(v0, m3));
    c[1] = vreinterpretq_s8_u8(vandq_u8(v1, m3));
    c[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v0, 2), m3));
    c[3] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v1, 2), m3));
    c[4] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v0, 4), m3));
    c[5] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v1, 4), m3));
    c[6] = vreinterpretq_s8_u8(vshrq_n_u8(v0, 6));
    c[7] = vreinterpretq_s8_u8(vshrq_n_u8(v1, 6));
}

/* acc (int16 x 8) += c * x over 16 bytes: 2 products per lane. */
FORCE_INLINE int16x8_t mla16(int16x8_t acc, int8x16_t c, int8x16_t x) {
    acc = vmlal_s8(acc, vget_low_s8(c), vget_low_s8(x));
    return vmlal_high_s8(acc, c, x);
}

/* One weight row j against activation rows i0 .. i0+r-1 (r <= MR): each
 * unpacked block is reused for all r rows.  sum(c*x) over the full blocks. */
FORCE_INLINE void ternary_1xr(const bne_gemm_args *a, size_t j, size_t i0, int r) {
    const uint8_t *row = a->w + j * a->ldw;
    const size_t nb = a->k / BNE_TERNARY_BLOCK, tail = a->k % BNE_TERNARY_BLOCK;
    const int8_t *xr[MR];
    int32x4_t acc[MR];
#pragma GCC unroll 4
    for (int q = 0; q < r; ++q) {
        xr[q] = a->x + (i0 + (size_t)q) * a->ldx;
        acc[q] = vdupq_n_s32(0);
    }
    for (size_t b = 0; b < nb;) {
        size_t bend = nb - b > GROUP ? b + GROUP : nb;
        int16x8_t h[MR];
#pragma GCC unroll 4
        for (int q = 0; q < r; ++q) h[q] = vdupq_n_s16(0);
        for (; b < bend; ++b) {
            int8x16_t c[8];
            unpack_block(row + b * BNE_TERNARY_BLOCK_BYTES, c);
#pragma GCC unroll 4
            for (int q = 0; q < r; ++q) {
                const int8_t *x = xr[q] + b * BNE_TERNARY_BLOCK;
#pragma GCC unroll 8
                for (int v = 0; v < 8; ++v) h[q] = mla16(h[q], c[v], vld1q_s8(x + 16 * v));
            }
        }
#pragma GCC unroll 4
        for (int q = 0; q < r; ++q) acc[q] = vpadalq_s16(acc[q], h[q]);
    }
    const uint8_t *last = row + nb * BNE_TERNARY_BLOCK_BYTES;
#pragma GCC unroll 4
    for (int q = 0; q < r; ++q) {
        int32_t s = vaddvq_s32(acc[q]);
        if (tail) s += bne_tail_codes_dot(last, xr[q] + nb * BNE_TERNARY_BLOCK, tail);
        bne_store(a, i0 + (size_t)q, j, s - a->xsum[i0 + (size_t)q]);
    }
}

/* GEMV step: weight rows j .. j+NR-1 against activation row 0; the x loads of
 * a block are shared by the NR rows, whose accumulators are independent. */
FORCE_INLINE void ternary_nr_x1(const bne_gemm_args *a, size_t j) {
    const size_t nb = a->k / BNE_TERNARY_BLOCK, tail = a->k % BNE_TERNARY_BLOCK;
    const int8_t *x0 = a->x;
    const uint8_t *rows[NR];
    int32x4_t acc[NR];
#pragma GCC unroll 4
    for (int p = 0; p < NR; ++p) {
        rows[p] = a->w + (j + (size_t)p) * a->ldw;
        acc[p] = vdupq_n_s32(0);
    }
    for (size_t b = 0; b < nb;) {
        size_t bend = nb - b > GROUP ? b + GROUP : nb;
        int16x8_t h[NR];
#pragma GCC unroll 4
        for (int p = 0; p < NR; ++p) h[p] = vdupq_n_s16(0);
        for (; b < bend; ++b) {
            const int8_t *x = x0 + b * BNE_TERNARY_BLOCK;
            int8x16_t xv[8];
#pragma GCC unroll 8
            for (int v = 0; v < 8; ++v) xv[v] = vld1q_s8(x + 16 * v);
#pragma GCC unroll 4
            for (int p = 0; p < NR; ++p) {
                int8x16_t c[8];
                unpack_block(rows[p] + b * BNE_TERNARY_BLOCK_BYTES, c);
#pragma GCC unroll 8
                for (int v = 0; v < 8; ++v) h[p] = mla16(h[p], c[v], xv[v]);
            }
        }
#pragma GCC unroll 4
        for (int p = 0; p < NR; ++p) acc[p] = vpadalq_s16(acc[p], h[p]);
    }
    const size_t t0 = nb * BNE_TERNARY_BLOCK;
#pragma GCC unroll 4
    for (int p = 0; p < NR; ++p) {
        int32_t s = vaddvq_s32(acc[p]);
        if (tail) s += bne_tail_codes_dot(rows[p] + nb * BNE_TERNARY_BLOCK_BYTES, x0 + t0, tail);
        bne_store(a, 0, j + (size_t)p, s - a->xsum[0]);
    }
}

/* W (n, k) packed ternary @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void ternary_gemm_neon(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        for (; j + NR <= n1; j += NR) ternary_nr_x1(a, j);
        for (; j < n1; ++j) ternary_1xr(a, j, 0, 1);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + MR <= a->m; i += MR) ternary_1xr(a, j, i, MR);
        switch (a->m - i) {
        case 3: ternary_1xr(a, j, i, 3); break;
        case 2: ternary_1xr(a, j, i, 2); break;
        case 1: ternary_1xr(a, j, i, 1); break;
        default: break;
        }
    }
}

/* ---- int8 ------------------------------------------------------------- */

/* acc (int32 x 4) += w * x over 16 bytes.  w in [-127, 127] keeps each
 * product within 127 * 128 = 16256, so two fit an int16 lane (32512). */
FORCE_INLINE int32x4_t dot16(int32x4_t acc, int8x16_t w, int8x16_t x) {
    int16x8_t p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    p = vmlal_high_s8(p, w, x);
    return vpadalq_s16(acc, p);
}

/* One weight row j against activation rows i0 .. i0+r-1 (r <= MR). */
FORCE_INLINE void int8_1xr(const bne_gemm_args *a, size_t j, size_t i0, int r) {
    const int8_t *w = (const int8_t *)(a->w + j * a->ldw);
    const size_t k = a->k;
    const int8_t *xr[MR];
    int32x4_t acc[MR];
#pragma GCC unroll 4
    for (int q = 0; q < r; ++q) {
        xr[q] = a->x + (i0 + (size_t)q) * a->ldx;
        acc[q] = vdupq_n_s32(0);
    }
    size_t t = 0;
    for (; t + 16 <= k; t += 16) {
        int8x16_t wv = vld1q_s8(w + t);
#pragma GCC unroll 4
        for (int q = 0; q < r; ++q) acc[q] = dot16(acc[q], wv, vld1q_s8(xr[q] + t));
    }
    int32_t s[MR];
#pragma GCC unroll 4
    for (int q = 0; q < r; ++q) s[q] = vaddvq_s32(acc[q]);
    for (; t < k; ++t) {
#pragma GCC unroll 4
        for (int q = 0; q < r; ++q) s[q] += (int32_t)w[t] * (int32_t)xr[q][t];
    }
#pragma GCC unroll 4
    for (int q = 0; q < r; ++q) bne_store(a, i0 + (size_t)q, j, s[q]);
}

/* GEMV step: weight rows j .. j+NR-1 against activation row 0. */
FORCE_INLINE void int8_nr_x1(const bne_gemm_args *a, size_t j) {
    const int8_t *x = a->x;
    const size_t k = a->k;
    const int8_t *wr[NR];
    int32x4_t acc[NR];
#pragma GCC unroll 4
    for (int p = 0; p < NR; ++p) {
        wr[p] = (const int8_t *)(a->w + (j + (size_t)p) * a->ldw);
        acc[p] = vdupq_n_s32(0);
    }
    size_t t = 0;
    for (; t + 16 <= k; t += 16) {
        int8x16_t xv = vld1q_s8(x + t);
#pragma GCC unroll 4
        for (int p = 0; p < NR; ++p) acc[p] = dot16(acc[p], vld1q_s8(wr[p] + t), xv);
    }
    int32_t s[NR];
#pragma GCC unroll 4
    for (int p = 0; p < NR; ++p) s[p] = vaddvq_s32(acc[p]);
    for (; t < k; ++t) {
#pragma GCC unroll 4
        for (int p = 0; p < NR; ++p) s[p] += (int32_t)wr[p][t] * (int32_t)x[t];
    }
#pragma GCC unroll 4
    for (int p = 0; p < NR; ++p) bne_store(a, 0, j + (size_t)p, s[p]);
}

/* W (n, k) int8 @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void int8_gemm_neon(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        for (; j + NR <= n1; j += NR) int8_nr_x1(a, j);
        for (; j < n1; ++j) int8_1xr(a, j, 0, 1);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + MR <= a->m; i += MR) int8_1xr(a, j, i, MR);
        switch (a->m - i) {
        case 3: int8_1xr(a, j, i, 3); break;
        case 2: int8_1xr(a, j, i, 2); break;
        case 1: int8_1xr(a, j, i, 1); break;
        default: break;
        }
    }
}

/* ---- quantize --------------------------------------------------------- */

/* x (m, k) float32 -> xq (m, k) int8 + scales (m,): per-row absmax, s = 127 /
 * max(amax, 1e-5), xq = clip(rint(x * s), -128, 127) with ties to even.  A row
 * with NaN or inf returns BNE_ERR_NONFINITE before it is written (rows before
 * it are already written, as in the reference).  neon_dotprod.c shares it. */
int bne_quantize_rows_neon(const float *x, size_t m, size_t k, size_t ldx, int8_t *xq,
                           size_t ldq, float *scales) {
    const float32x4_t fmax = vdupq_n_f32(3.40282347e+38f); /* FLT_MAX */
    for (size_t i = 0; i < m; ++i) {
        const float *row = x + i * ldx;
        float32x4_t mx0 = vdupq_n_f32(0.0f), mx1 = mx0;
        uint32x4_t ok = vdupq_n_u32(0xffffffffu); /* lanes stay set while |v| <= FLT_MAX */
        size_t t = 0;
        for (; t + 8 <= k; t += 8) {
            float32x4_t a0 = vabsq_f32(vld1q_f32(row + t));
            float32x4_t a1 = vabsq_f32(vld1q_f32(row + t + 4));
            ok = vandq_u32(ok, vandq_u32(vcleq_f32(a0, fmax), vcleq_f32(a1, fmax)));
            mx0 = vmaxq_f32(mx0, a0);
            mx1 = vmaxq_f32(mx1, a1);
        }
        if (vminvq_u32(ok) == 0) return BNE_ERR_NONFINITE;
        float amax = vmaxvq_f32(vmaxq_f32(mx0, mx1)); /* all finite here: max is exact */
        for (; t < k; ++t) {
            float v = row[t];
            if (!(v - v == 0.0f)) return BNE_ERR_NONFINITE; /* NaN or inf */
            float av = v < 0.0f ? -v : v;
            if (av > amax) amax = av;
        }
        if (amax < 1e-5f) amax = 1e-5f;
        const float s = 127.0f / amax;
        scales[i] = s;
        const float32x4_t sv = vdupq_n_f32(s);
        int8_t *q = xq + i * ldq;
        t = 0;
        for (; t + 16 <= k; t += 16) {
            /* one float32 multiply, FCVTNS rounds to nearest even, SQXTN clips */
            int32x4_t r0 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(row + t), sv));
            int32x4_t r1 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(row + t + 4), sv));
            int32x4_t r2 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(row + t + 8), sv));
            int32x4_t r3 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(row + t + 12), sv));
            int16x8_t h0 = vqmovn_high_s32(vqmovn_s32(r0), r1);
            int16x8_t h1 = vqmovn_high_s32(vqmovn_s32(r2), r3);
            vst1q_s8(q + t, vqmovn_high_s16(vqmovn_s16(h0), h1));
        }
        for (; t < k; ++t) q[t] = bne_quant1(row[t], s); /* the reference's rounding */
    }
    return BNE_OK;
}

#define BNE_T3_FN ternary3_gemm_neon
#include "ternary3_neon.h"

#define BNE_DEC_FN bne_decoder_forward_neon
#include "decoder_impl.h"

const bne_kernels bne_kernels_neon = {
    ternary_gemm_neon,
    int8_gemm_neon,
    bne_quantize_rows_neon,
    ternary3_gemm_neon,
    bne_decoder_forward_neon,
};
