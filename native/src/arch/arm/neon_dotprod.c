/* neon_dotprod.c - the aarch64 Advanced SIMD + SDOT variant ("neon-dotprod").
 *
 * Build with -march=armv8.2-a+dotprod; api.c only dispatches here when
 * getauxval(AT_HWCAP) reports ASIMDDP.  SDOT sums four int8 x int8 products
 * straight into each int32 lane, so no intermediate width can overflow.
 * Results are bit-exact with kernels_ref.c: integer sums are exact, and the
 * float epilogue goes through the shared bne_store.
 *
 * Ternary: codes c = w + 1 in {0,1,2} are multiplied as signed bytes, so
 * sum(w * x) = sum(c * x) - sum(x), with sum(x) = a->xsum[i] from api.c.
 */
#if !defined(__aarch64__) || !defined(__ARM_FEATURE_DOTPROD)
#error "neon_dotprod.c needs aarch64 with -march=armv8.2-a+dotprod"
#endif

#include <arm_neon.h>

#include "bne_internal.h"

#define MR 4 /* activation rows that share one unpacked weight block (GEMM) */
#define NR 4 /* weight rows per step when m == 1 (GEMV) */

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
    for (size_t b = 0; b < nb; ++b) {
        int8x16_t c[8];
        unpack_block(row + b * BNE_TERNARY_BLOCK_BYTES, c);
#pragma GCC unroll 4
        for (int q = 0; q < r; ++q) {
            const int8_t *x = xr[q] + b * BNE_TERNARY_BLOCK;
#pragma GCC unroll 8
            for (int v = 0; v < 8; ++v) acc[q] = vdotq_s32(acc[q], c[v], vld1q_s8(x + 16 * v));
        }
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
    for (size_t b = 0; b < nb; ++b) {
        const int8_t *x = x0 + b * BNE_TERNARY_BLOCK;
        int8x16_t xv[8];
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v) xv[v] = vld1q_s8(x + 16 * v);
#pragma GCC unroll 4
        for (int p = 0; p < NR; ++p) {
            int8x16_t c[8];
            unpack_block(rows[p] + b * BNE_TERNARY_BLOCK_BYTES, c);
#pragma GCC unroll 8
            for (int v = 0; v < 8; ++v) acc[p] = vdotq_s32(acc[p], c[v], xv[v]);
        }
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
static void ternary_gemm_neon_dotprod(const bne_gemm_args *a, size_t n0, size_t n1) {
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

/* acc (int32 x 4) += w * x over 16 bytes: SDOT, 4 products per int32 lane. */
FORCE_INLINE int32x4_t dot16(int32x4_t acc, int8x16_t w, int8x16_t x) {
    return vdotq_s32(acc, w, x);
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
static void int8_gemm_neon_dotprod(const bne_gemm_args *a, size_t n0, size_t n1) {
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

/* SDOT does not help the quantizer: reuse the neon.c one (same rounding,
 * same status on NaN/inf); declared in bne_internal.h. */

#define BNE_T3_FN ternary3_gemm_neon_dotprod
#define BNE_T3_SDOT 1
#include "ternary3_neon.h"

const bne_kernels bne_kernels_neon_dotprod = {
    ternary_gemm_neon_dotprod,
    int8_gemm_neon_dotprod,
    bne_quantize_rows_neon,
    ternary3_gemm_neon_dotprod,
    bne_decoder_forward_neon, /* neon.c's glue with this table's kernels */
};
