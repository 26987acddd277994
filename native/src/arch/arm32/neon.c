/* arch/arm32/neon.c - the 32-bit ARMv7-A NEON variant ("neon" on linux-armv7).
 *
 * Build with NEON enabled for this file only (zig: -mcpu=generic+v7a+neon, gcc:
 * -mfpu=neon); the rest of the library stays at the armhf baseline (ARMv7-A,
 * VFPv3-D16, no NEON), and api.c dispatches here only when AT_HWCAP has NEON.
 *
 * ARMv7 has no SDOT and no across-vector adds: products are formed with
 * VMULL/VMLAL.S8 (int8 x int8 -> int16) and widened into int32 with VPADAL.S16
 * before an int16 lane can overflow; horizontal sums use VPADD.  Results are
 * bit-exact with kernels_ref.c: the integer sums are exact, and the float
 * epilogue goes through the shared bne_store.
 *
 * The register file has 16 q registers (aarch64: 32), so the tiles are smaller
 * than in arch/arm/neon.c: the ternary GEMV keeps one block of activations (8
 * q registers) and 2 weight rows' int16 accumulators live.
 *
 * Ternary: codes c = w + 1 in {0,1,2} are multiplied as signed bytes, so
 * sum(w * x) = sum(c * x) - sum(x), with sum(x) = a->xsum[i] from api.c.
 */
#if !defined(__arm__) || !defined(__ARM_NEON)
#error "arch/arm32/neon.c is 32-bit ARM with NEON only (zig: -mcpu=generic+v7a+neon, gcc: -mfpu=neon)"
#endif

#include <arm_neon.h>

#include "bne_internal.h"

#define MR 2 /* activation rows that share one unpacked weight block (GEMM) */
#define NR 2 /* ternary weight rows per step when m == 1 (GEMV) */
#define NR8 4 /* int8 weight rows per step when m == 1 (GEMV) */

/* Ternary: one block adds 16 products to each int16 lane (8 code vectors x a
 * low and a high VMLAL), each of magnitude <= 2 * 128 = 256.  GROUP blocks stay
 * in int16 before the VPADAL widening: GROUP * 16 * 256 < 32768. */
#define GROUP 7
_Static_assert(GROUP * 16 <= 127, "int16 lanes would overflow before widening");

#define FORCE_INLINE static inline __attribute__((always_inline))

FORCE_INLINE int32_t hsum_s32(int32x4_t v) {
    int32x2_t s = vadd_s32(vget_low_s32(v), vget_high_s32(v));
    return vget_lane_s32(vpadd_s32(s, s), 0);
}

/* acc (int16 x 8) += c * x over 16 bytes: 2 products per lane. */
FORCE_INLINE int16x8_t mla16(int16x8_t acc, int8x16_t c, int8x16_t x) {
    acc = vmlal_s8(acc, vget_low_s8(c), vget_low_s8(x));
    return vmlal_s8(acc, vget_high_s8(c), vget_high_s8(x));
}

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

/* h += codes(blk) * xv for one block whose activations are already loaded:
 * the codes are unpacked one vector at a time (few live registers). */
FORCE_INLINE int16x8_t block_mla(int16x8_t h, const uint8_t *blk, const int8x16_t xv[8]) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    uint8x16_t v0 = vld1q_u8(blk), v1 = vld1q_u8(blk + 16);
    h = mla16(h, vreinterpretq_s8_u8(vandq_u8(v0, m3)), xv[0]);
    h = mla16(h, vreinterpretq_s8_u8(vandq_u8(v1, m3)), xv[1]);
    h = mla16(h, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v0, 2), m3)), xv[2]);
    h = mla16(h, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v1, 2), m3)), xv[3]);
    h = mla16(h, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v0, 4), m3)), xv[4]);
    h = mla16(h, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v1, 4), m3)), xv[5]);
    h = mla16(h, vreinterpretq_s8_u8(vshrq_n_u8(v0, 6)), xv[6]);
    return mla16(h, vreinterpretq_s8_u8(vshrq_n_u8(v1, 6)), xv[7]);
}

/* One weight row j against activation rows i0 .. i0+r-1 (r <= MR): each
 * unpacked block is reused for all r rows.  sum(c*x) over the full blocks. */
FORCE_INLINE void ternary_1xr(const bne_gemm_args *a, size_t j, size_t i0, int r) {
    const uint8_t *row = a->w + j * a->ldw;
    const size_t nb = a->k / BNE_TERNARY_BLOCK, tail = a->k % BNE_TERNARY_BLOCK;
    const int8_t *xr[MR];
    int32x4_t acc[MR];
    #pragma GCC unroll 2
    for (int q = 0; q < r; ++q) {
        xr[q] = a->x + (i0 + (size_t)q) * a->ldx;
        acc[q] = vdupq_n_s32(0);
    }
    for (size_t b = 0; b < nb;) {
        size_t bend = nb - b > GROUP ? b + GROUP : nb;
        int16x8_t h[MR];
        #pragma GCC unroll 2
        for (int q = 0; q < r; ++q) h[q] = vdupq_n_s16(0);
        for (; b < bend; ++b) {
            int8x16_t c[8];
            unpack_block(row + b * BNE_TERNARY_BLOCK_BYTES, c);
            #pragma GCC unroll 2
            for (int q = 0; q < r; ++q) {
                const int8_t *x = xr[q] + b * BNE_TERNARY_BLOCK;
                #pragma GCC unroll 8
                for (int v = 0; v < 8; ++v) h[q] = mla16(h[q], c[v], vld1q_s8(x + 16 * v));
            }
        }
        #pragma GCC unroll 2
        for (int q = 0; q < r; ++q) acc[q] = vpadalq_s16(acc[q], h[q]);
    }
    const uint8_t *last = row + nb * BNE_TERNARY_BLOCK_BYTES;
    #pragma GCC unroll 2
    for (int q = 0; q < r; ++q) {
        int32_t s = hsum_s32(acc[q]);
        if (tail) s += bne_tail_codes_dot(last, xr[q] + nb * BNE_TERNARY_BLOCK, tail);
        bne_store(a, i0 + (size_t)q, j, s - a->xsum[i0 + (size_t)q]);
    }
}

/* GEMV step: weight rows j .. j+NR-1 against activation row 0; one block of
 * activations is loaded once for the NR rows. */
FORCE_INLINE void ternary_nr_x1(const bne_gemm_args *a, size_t j) {
    const size_t nb = a->k / BNE_TERNARY_BLOCK, tail = a->k % BNE_TERNARY_BLOCK;
    const int8_t *x0 = a->x;
    const uint8_t *r0 = a->w + j * a->ldw, *r1 = r0 + a->ldw;
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = vdupq_n_s32(0);
    for (size_t b = 0; b < nb;) {
        size_t bend = nb - b > GROUP ? b + GROUP : nb;
        int16x8_t h0 = vdupq_n_s16(0), h1 = vdupq_n_s16(0);
        for (; b < bend; ++b) {
            const int8_t *x = x0 + b * BNE_TERNARY_BLOCK;
            int8x16_t xv[8];
            #pragma GCC unroll 8
            for (int v = 0; v < 8; ++v) xv[v] = vld1q_s8(x + 16 * v);
            h0 = block_mla(h0, r0 + b * BNE_TERNARY_BLOCK_BYTES, xv);
            h1 = block_mla(h1, r1 + b * BNE_TERNARY_BLOCK_BYTES, xv);
        }
        acc0 = vpadalq_s16(acc0, h0);
        acc1 = vpadalq_s16(acc1, h1);
    }
    int32_t s0 = hsum_s32(acc0), s1 = hsum_s32(acc1);
    if (tail) {
        const size_t t0 = nb * BNE_TERNARY_BLOCK, off = nb * BNE_TERNARY_BLOCK_BYTES;
        s0 += bne_tail_codes_dot(r0 + off, x0 + t0, tail);
        s1 += bne_tail_codes_dot(r1 + off, x0 + t0, tail);
    }
    bne_store(a, 0, j, s0 - a->xsum[0]);
    bne_store(a, 0, j + 1, s1 - a->xsum[0]);
}

/* W (n, k) packed ternary @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void ternary_gemm_neon32(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        for (; j + NR <= n1; j += NR) ternary_nr_x1(a, j);
        for (; j < n1; ++j) ternary_1xr(a, j, 0, 1);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + MR <= a->m; i += MR) ternary_1xr(a, j, i, MR);
        if (i < a->m) ternary_1xr(a, j, i, 1);
    }
}

/* ---- int8 ------------------------------------------------------------- */

/* acc (int32 x 4) += w * x over 16 bytes.  w in [-127, 127] keeps each
 * product within 127 * 128 = 16256, so two fit an int16 lane (32512). */
FORCE_INLINE int32x4_t dot16(int32x4_t acc, int8x16_t w, int8x16_t x) {
    int16x8_t p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    p = vmlal_s8(p, vget_high_s8(w), vget_high_s8(x));
    return vpadalq_s16(acc, p);
}

/* One weight row j against activation rows i0 .. i0+r-1 (r <= MR). */
FORCE_INLINE void int8_1xr(const bne_gemm_args *a, size_t j, size_t i0, int r) {
    const int8_t *w = (const int8_t *)(a->w + j * a->ldw);
    const size_t k = a->k;
    const int8_t *xr[MR];
    int32x4_t acc[MR];
    #pragma GCC unroll 2
    for (int q = 0; q < r; ++q) {
        xr[q] = a->x + (i0 + (size_t)q) * a->ldx;
        acc[q] = vdupq_n_s32(0);
    }
    size_t t = 0;
    for (; t + 16 <= k; t += 16) {
        int8x16_t wv = vld1q_s8(w + t);
        #pragma GCC unroll 2
        for (int q = 0; q < r; ++q) acc[q] = dot16(acc[q], wv, vld1q_s8(xr[q] + t));
    }
    int32_t s[MR];
    #pragma GCC unroll 2
    for (int q = 0; q < r; ++q) s[q] = hsum_s32(acc[q]);
    for (; t < k; ++t)
        #pragma GCC unroll 2
        for (int q = 0; q < r; ++q) s[q] += (int32_t)w[t] * (int32_t)xr[q][t];
    #pragma GCC unroll 2
    for (int q = 0; q < r; ++q) bne_store(a, i0 + (size_t)q, j, s[q]);
}

/* GEMV step: weight rows j .. j+NR8-1 against activation row 0. */
FORCE_INLINE void int8_nr_x1(const bne_gemm_args *a, size_t j) {
    const int8_t *x = a->x;
    const size_t k = a->k;
    const int8_t *wr[NR8];
    int32x4_t acc[NR8];
    #pragma GCC unroll 4
    for (int p = 0; p < NR8; ++p) {
        wr[p] = (const int8_t *)(a->w + (j + (size_t)p) * a->ldw);
        acc[p] = vdupq_n_s32(0);
    }
    size_t t = 0;
    for (; t + 16 <= k; t += 16) {
        int8x16_t xv = vld1q_s8(x + t);
        #pragma GCC unroll 4
        for (int p = 0; p < NR8; ++p) acc[p] = dot16(acc[p], vld1q_s8(wr[p] + t), xv);
    }
    int32_t s[NR8];
    #pragma GCC unroll 4
    for (int p = 0; p < NR8; ++p) s[p] = hsum_s32(acc[p]);
    for (; t < k; ++t)
        #pragma GCC unroll 4
        for (int p = 0; p < NR8; ++p) s[p] += (int32_t)wr[p][t] * (int32_t)x[t];
    #pragma GCC unroll 4
    for (int p = 0; p < NR8; ++p) bne_store(a, 0, j + (size_t)p, s[p]);
}

/* W (n, k) int8 @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void int8_gemm_neon32(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        for (; j + NR8 <= n1; j += NR8) int8_nr_x1(a, j);
        for (; j < n1; ++j) int8_1xr(a, j, 0, 1);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + MR <= a->m; i += MR) int8_1xr(a, j, i, MR);
        if (i < a->m) int8_1xr(a, j, i, 1);
    }
}

/* ---- quantize --------------------------------------------------------- */

/* x (m, k) float32 -> xq (m, k) int8 + scales (m,), the reference's numbers.
 * ARMv7 NEON arithmetic flushes subnormals to zero and always rounds to
 * nearest even.  Neither changes a result here: a subnormal |x| or product
 * quantizes to 0 either way, and amax below 1e-5 is raised to 1e-5.  Rounding
 * to an integer uses the reference's magic-number addition (VCVT truncates),
 * which is exact for |v| < 2^22; VQMOVN saturates to [-128, 127]. */
static int quantize_rows_neon32(const float *x, size_t m, size_t k, size_t ldx, int8_t *xq,
                                size_t ldq, float *scales) {
    const float32x4_t fmax = vdupq_n_f32(3.40282347e+38f); /* FLT_MAX */
    const float32x4_t magic = vdupq_n_f32(12582912.0f);    /* 1.5 * 2^23 */
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
        uint32x2_t okd = vpmin_u32(vget_low_u32(ok), vget_high_u32(ok));
        if (vget_lane_u32(vpmin_u32(okd, okd), 0) == 0) return BNE_ERR_NONFINITE;
        float32x4_t mx = vmaxq_f32(mx0, mx1);
        float32x2_t m2 = vpmax_f32(vget_low_f32(mx), vget_high_f32(mx));
        float amax = vget_lane_f32(vpmax_f32(m2, m2), 0); /* all finite here: max is exact */
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
            int32x4_t r[4];
            #pragma GCC unroll 4
            for (int u = 0; u < 4; ++u) {
                float32x4_t p = vmulq_f32(vld1q_f32(row + t + 4 * (size_t)u), sv);
                r[u] = vcvtq_s32_f32(vsubq_f32(vaddq_f32(p, magic), magic)); /* integer-valued: exact */
            }
            int16x8_t h0 = vcombine_s16(vqmovn_s32(r[0]), vqmovn_s32(r[1]));
            int16x8_t h1 = vcombine_s16(vqmovn_s32(r[2]), vqmovn_s32(r[3]));
            vst1q_s8(q + t, vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1)));
        }
        for (; t < k; ++t) q[t] = bne_quant1(row[t], s); /* the reference's rounding */
    }
    return BNE_OK;
}

const bne_kernels bne_kernels_neon = {
    ternary_gemm_neon32,
    int8_gemm_neon32,
    quantize_rows_neon32,
    NULL, /* base-3 format: the reference kernel (api.c falls back) */
    NULL, /* decoder: the reference forward pass with this table's kernels (decoder.c) */
};
