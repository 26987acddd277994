/* ternary3_neon.h - the base-3 ternary kernel (BNE_TERNARY3_*) for aarch64, included by neon.c and
 * (with BNE_T3_SDOT defined) by neon_dotprod.c, which name it through BNE_T3_FN.
 *
 * A 64-byte block is four 16-byte vectors t; digit d of byte j is the code of weight 64 d + j.
 * Per 16 codes: the negated code s = (t >= 86) + (t >= 171) as bytes 0 / -1 / -2 (two unsigned
 * compares give 0xff = -1 each, one add), then t *= 3 (mod 256) for the next digit.  s meets x as
 * signed bytes: SDOT into int32 lanes, or, without it, SMLAL into int16 lanes (two products of
 * at most 2 * 128 a lane per 16 codes, 40 a block: <= 10240) widened with SADALP once a block.
 * The sums are -sum(c * x), so the result is -acc - sum(x). */
#ifndef BNE_T3_FN
#error "define BNE_T3_FN before including ternary3_neon.h"
#endif

/* Negated codes (0, -1, -2) of the current digit of t (16 bytes). */
static inline __attribute__((always_inline)) int8x16_t t3_codes(uint8x16_t t) {
    return vreinterpretq_s8_u8(vaddq_u8(vcgeq_u8(t, vdupq_n_u8(86)), vcgeq_u8(t, vdupq_n_u8(171))));
}

/* nr weight rows from j x mr activation rows from i (nr, mr <= 4). */
static inline __attribute__((always_inline)) void t3_tile(const bne_gemm_args *a, size_t j, size_t i, int nr,
                                                          int mr) {
    const size_t nb = a->k / BNE_TERNARY3_BLOCK, tail = a->k - nb * BNE_TERNARY3_BLOCK;
    int8_t xt[4][BNE_TERNARY3_BLOCK];
    int32x4_t acc[4][4];
    for (int r = 0; r < nr; ++r)
        for (int c = 0; c < mr; ++c) acc[r][c] = vdupq_n_s32(0);
    if (tail)
        for (int c = 0; c < mr; ++c) {
            bne_zero(xt[c], sizeof xt[c]);
            bne_copy(xt[c], a->x + (i + c) * a->ldx + nb * BNE_TERNARY3_BLOCK, tail);
        }
    for (size_t b = 0; b < nb + (tail != 0); ++b) {
        uint8x16_t t[4][4];
#ifndef BNE_T3_SDOT
        int16x8_t h[4][4];
#endif
        for (int r = 0; r < nr; ++r) {
            const uint8_t *src = a->w + (j + r) * a->ldw + b * BNE_TERNARY3_BLOCK_BYTES;
            for (int q = 0; q < 4; ++q) t[r][q] = vld1q_u8(src + 16 * q);
#ifndef BNE_T3_SDOT
            for (int c = 0; c < mr; ++c) h[r][c] = vdupq_n_s16(0);
#endif
        }
        for (int d = 0; d < 5; ++d) {
            int8x16_t cd[4][4];
            for (int r = 0; r < nr; ++r)
                for (int q = 0; q < 4; ++q) {
                    cd[r][q] = t3_codes(t[r][q]);
                    t[r][q] = vmulq_u8(t[r][q], vdupq_n_u8(3));
                }
            for (int c = 0; c < mr; ++c) {
                const int8_t *xb = (b < nb ? a->x + (i + c) * a->ldx + b * BNE_TERNARY3_BLOCK : xt[c]) + 64 * d;
                for (int q = 0; q < 4; ++q) {
                    int8x16_t xv = vld1q_s8(xb + 16 * q);
                    for (int r = 0; r < nr; ++r) {
#ifdef BNE_T3_SDOT
                        acc[r][c] = vdotq_s32(acc[r][c], cd[r][q], xv);
#else
                        h[r][c] = vmlal_s8(h[r][c], vget_low_s8(cd[r][q]), vget_low_s8(xv));
                        h[r][c] = vmlal_high_s8(h[r][c], cd[r][q], xv);
#endif
                    }
                }
            }
        }
#ifndef BNE_T3_SDOT
        for (int r = 0; r < nr; ++r)
            for (int c = 0; c < mr; ++c) acc[r][c] = vpadalq_s16(acc[r][c], h[r][c]);
#endif
    }
    for (int r = 0; r < nr; ++r)
        for (int c = 0; c < mr; ++c) bne_store(a, i + c, j + r, -vaddvq_s32(acc[r][c]) - a->xsum[i + c]);
}

static void BNE_T3_FN(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        for (; j + 2 <= n1; j += 2) t3_tile(a, j, 0, 2, 1);
        for (; j < n1; ++j) t3_tile(a, j, 0, 1, 1);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) t3_tile(a, j, i, 1, 4);
        for (; i < a->m; ++i) t3_tile(a, j, i, 1, 1);
    }
}
