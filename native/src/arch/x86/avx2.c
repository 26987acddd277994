/* avx2.c - x86-64 AVX2 variant ("avx2").  Built with -mavx2 -mfma.
 *
 * Ternary: per 128-weight block, the 32 packed bytes give four 32-byte code
 * vectors (codes w+1 in {0,1,2}); _mm256_maddubs_epi16(codes u8, x s8) sums
 * pairs into int16 (|pair| <= 2*2*128 = 512), four such vectors are added in
 * int16 (8 products a lane, |sum| <= 2048) and widened to int32 once per block
 * with _mm256_madd_epi16 - far below the int16 limit for any int8 x, -128
 * included.  acc = sum(code * x) - sum(x).
 *
 * int8: _mm256_maddubs_epi16(|x|, sign(w, x)) with w in [-127, 127]: a pair is
 * at most 2*128*127 = 32512, so it never saturates; widened per 32 products.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include "bne_internal.h"

#define BNE_INLINE static inline __attribute__((always_inline))

BNE_INLINE int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* Tile: NR weight rows j.. x MR activation rows i..  (NR, MR <= 4, constants
 * after inlining).  W (NR, k) packed @ x (MR, k) -> y (MR, NR). */
BNE_INLINE void ternary_tile(const bne_gemm_args *a, size_t j, size_t i, int NR, int MR, size_t pf) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t nb = a->k / BNE_TERNARY_BLOCK;
    __m256i acc[4][4];
    for (int r = 0; r < NR; ++r)
        for (int c = 0; c < MR; ++c) acc[r][c] = _mm256_setzero_si256();
    for (size_t b = 0; b < nb; ++b) {
        __m256i cd[4][4];
        for (int r = 0; r < NR; ++r) {
            const uint8_t *src = a->w + (j + r) * a->ldw + b * 32;
            if (pf && (b & 1) == 0) /* GEMV streams weights from DRAM: fetch ahead */
                _mm_prefetch((const char *)(src + pf), _MM_HINT_T0);
            __m256i v = _mm256_loadu_si256((const __m256i *)src);
            cd[r][0] = _mm256_and_si256(v, m3);
            cd[r][1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), m3);
            cd[r][2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m3);
            cd[r][3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), m3);
        }
        for (int c = 0; c < MR; ++c) {
            const int8_t *xb = a->x + (i + c) * a->ldx + b * BNE_TERNARY_BLOCK;
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 32));
            __m256i x2 = _mm256_loadu_si256((const __m256i *)(xb + 64));
            __m256i x3 = _mm256_loadu_si256((const __m256i *)(xb + 96));
            for (int r = 0; r < NR; ++r) {
                __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(cd[r][0], x0),
                                             _mm256_maddubs_epi16(cd[r][1], x1));
                p = _mm256_add_epi16(p, _mm256_add_epi16(_mm256_maddubs_epi16(cd[r][2], x2),
                                                         _mm256_maddubs_epi16(cd[r][3], x3)));
                acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(p, ones));
            }
        }
    }
    const size_t tail = a->k - nb * BNE_TERNARY_BLOCK;
    for (int r = 0; r < NR; ++r) {
        const uint8_t *last = a->w + (j + r) * a->ldw + nb * 32;
        for (int c = 0; c < MR; ++c) {
            const int8_t *x = a->x + (i + c) * a->ldx;
            int32_t s = hsum_epi32(acc[r][c]);
            if (tail) s += bne_tail_codes_dot(last, x + nb * BNE_TERNARY_BLOCK, tail);
            bne_store(a, i + c, j + r, s - a->xsum[i + c]);
        }
    }
}

/* acc += p (int16 lanes) in acc's own register: with the plain intrinsic GCC adds into p's register
 * and copies back, a move per accumulator and step. */
BNE_INLINE __m256i add16(__m256i acc, __m256i p) {
    __asm__("vpaddw %1, %0, %0" : "+x"(acc) : "x"(p));
    return acc;
}

/* One row's 128 weights (32 bytes at src) against the x block x0..x3, added to two int16 sums with
 * one shift: fields 0 and 2 (v & 3, (v >> 4) & 3) at scale 1 into s1, fields 1 and 3 (v & 0xc,
 * (v >> 4) & 0xc: 4 times the code) at scale 4 into s4.  13 vector instructions per 32 bytes (1 shift,
 * 4 and, 4 vpmaddubsw, 4 vpaddw) instead of 15 (3 shifts, 4 and, ...). */
BNE_INLINE void gemv_block(__m256i *s1, __m256i *s4, const uint8_t *src, __m256i x0, __m256i x1, __m256i x2,
                           __m256i x3, __m256i m3, __m256i mc) {
    __m256i v = _mm256_loadu_si256((const __m256i *)src);
    __m256i h = _mm256_srli_epi16(v, 4);
    *s1 = add16(*s1, _mm256_maddubs_epi16(_mm256_and_si256(v, m3), x0));
    *s4 = add16(*s4, _mm256_maddubs_epi16(_mm256_and_si256(v, mc), x1));
    *s1 = add16(*s1, _mm256_maddubs_epi16(_mm256_and_si256(h, m3), x2));
    *s4 = add16(*s4, _mm256_maddubs_epi16(_mm256_and_si256(h, mc), x3));
}

/* GEMV (one activation row), R weight rows j, j + step, ... (R <= 4, a constant after inlining): the
 * x of a block is loaded once for the R rows.  Per row two int16 sums (gemv_block): s1 gains at most 2 x 512 a block, s4 (codes 0, 4, 8: a pair is at
 * most 2 x 8 x 128 = 2048, never saturating) 2 x 2048, so both are widened every 8 blocks (s4: 8 x
 * 4096 = 32768, the worst case -32768 fits) into one int32 sum of 4 s1 + s4 = 4 acc (vpmaddwd with 4
 * and with 1), shifted right by 2 at the end (exact: every term is a multiple of 4).  Two blocks
 * (one cache line of each row) per step, one prefetch each. */
BNE_INLINE void ternary_gemv(const bne_gemm_args *a, size_t j, int R, size_t step, size_t pf) {
    const __m256i m3 = _mm256_set1_epi8(3), mc = _mm256_set1_epi8(12);
    const __m256i one16 = _mm256_set1_epi16(1), four16 = _mm256_set1_epi16(4);
    const size_t nb = a->k / BNE_TERNARY_BLOCK;
    const uint8_t *w[4];
    __m256i acc[4];
    for (int r = 0; r < R; ++r) {
        w[r] = a->w + (j + r * step) * a->ldw;
        acc[r] = _mm256_setzero_si256();
    }
    for (size_t b0 = 0; b0 < nb; b0 += 8) {
        const size_t b1 = nb - b0 < 8 ? nb : b0 + 8;
        __m256i s1[4], s4[4];
        for (int r = 0; r < R; ++r) s1[r] = s4[r] = _mm256_setzero_si256();
        size_t b = b0;
        for (; b + 2 <= b1; b += 2) {
            const int8_t *xb = a->x + b * BNE_TERNARY_BLOCK;
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 32));
            __m256i x2 = _mm256_loadu_si256((const __m256i *)(xb + 64));
            __m256i x3 = _mm256_loadu_si256((const __m256i *)(xb + 96));
            for (int r = 0; r < R; ++r) {
                _mm_prefetch((const char *)(w[r] + b * 32 + pf), _MM_HINT_T0);
                gemv_block(&s1[r], &s4[r], w[r] + b * 32, x0, x1, x2, x3, m3, mc);
            }
            x0 = _mm256_loadu_si256((const __m256i *)(xb + 128));
            x1 = _mm256_loadu_si256((const __m256i *)(xb + 160));
            x2 = _mm256_loadu_si256((const __m256i *)(xb + 192));
            x3 = _mm256_loadu_si256((const __m256i *)(xb + 224));
            for (int r = 0; r < R; ++r) gemv_block(&s1[r], &s4[r], w[r] + b * 32 + 32, x0, x1, x2, x3, m3, mc);
        }
        if (b < b1) {
            const int8_t *xb = a->x + b * BNE_TERNARY_BLOCK;
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 32));
            __m256i x2 = _mm256_loadu_si256((const __m256i *)(xb + 64));
            __m256i x3 = _mm256_loadu_si256((const __m256i *)(xb + 96));
            for (int r = 0; r < R; ++r) gemv_block(&s1[r], &s4[r], w[r] + b * 32, x0, x1, x2, x3, m3, mc);
        }
        for (int r = 0; r < R; ++r)
            acc[r] = _mm256_add_epi32(acc[r], _mm256_add_epi32(_mm256_madd_epi16(s1[r], four16),
                                                               _mm256_madd_epi16(s4[r], one16)));
    }
    const size_t tail = a->k - nb * BNE_TERNARY_BLOCK;
    for (int r = 0; r < R; ++r) {
        int32_t s = hsum_epi32(acc[r]) >> 2; /* 4 acc -> acc, exact (|4 acc| < 2^31 for k <= BNE_MAX_K) */
        if (tail) s += bne_tail_codes_dot(w[r] + nb * 32, a->x + nb * BNE_TERNARY_BLOCK, tail);
        bne_store(a, 0, j + r * step, s - a->xsum[0]);
    }
}

#define PANEL_MIN_M 8 /* activation rows from which the GEMM goes through panels */
static int ternary_panel_gemm(const bne_gemm_args *a, size_t n0, size_t n1, int base3);

/* W (n, k) packed ternary @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void ternary_gemm_avx2(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        /* The rows in 4 parts, a row of each a step: 4 sequential weight streams far apart (x loaded
         * once for 4 rows).  4 adjacent rows a step (4 streams 640 B apart, in the same pages) ran
         * 1.4x slower from DRAM, a row at a time (1 stream) 1.25x slower. */
        const size_t pf = bne_prefetch_offset(a->ldw), part = (n1 - n0) / 4;
        for (int q = 0; q < 4; ++q) bne_gemv_prefetch_start(a, n0 + q * part, n0 + (q + 1) * part, pf / 4);
        for (size_t i = 0; i < part; ++i) ternary_gemv(a, n0 + i, 4, part, pf);
        for (j = n0 + 4 * part; j < n1; ++j) ternary_gemv(a, j, 1, 1, pf);
        return;
    }
    if (a->m >= PANEL_MIN_M && ternary_panel_gemm(a, n0, n1, 0)) return;
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) ternary_tile(a, j, i, 1, 4, 0);
        for (; i < a->m; ++i) ternary_tile(a, j, i, 1, 1, 0);
    }
}

/* ---- base-3 ternary (BNE_TERNARY3_*) ------------------------------------------------------------
 * A 64-byte block is two 32-byte halves (bytes 0-31, 32-63).  Digit d of byte j is the code of
 * weight 64 d + j.  The digits are peeled from t = byte ^ 0x80, which keeps unsigned order as
 * signed order (t >= 86 <=> t' > -43, t >= 171 <=> t' > 42) and is closed under t -> 3 t mod 256:
 * per 32 codes, two signed compares, code = |m1 + m2|, then t' += 2 t' for the next digit.  The
 * codes meet x in _mm256_maddubs_epi16 as in the 2-bit path (|pair| <= 512); ten such pairs a block
 * are summed in int16 (<= 5120) and widened once per block. */

/* t > c, signed bytes, as one vpcmpgtb: for a constant c, GCC rewrites the intrinsic as
 * min(t, c) == t plus a complement (two more instructions for every 32 codes). */
BNE_INLINE __m256i cmpgt8(__m256i t, __m256i c) {
    __m256i r;
    __asm__("vpcmpgtb %2, %1, %0" : "=x"(r) : "x"(t), "x"(c));
    return r;
}

/* Codes (0..2) of the current digit of t' (biased bytes): 4 instructions. */
BNE_INLINE __m256i trit_codes(__m256i t, __m256i lo, __m256i hi) {
    return _mm256_abs_epi8(_mm256_add_epi8(cmpgt8(t, lo), cmpgt8(t, hi)));
}

BNE_INLINE __m256i times3(__m256i t) { return _mm256_add_epi8(t, _mm256_add_epi8(t, t)); }

/* NR weight rows j.. x MR activation rows (pointers xr[c], blocks of 320) over nb full blocks, plus
 * the last partial block from the zero-padded copies in xt. */
BNE_INLINE void ternary3_tile(const bne_gemm_args *a, size_t j, size_t i, int NR, int MR, size_t pf) {
    const __m256i bias = _mm256_set1_epi8((char)0x80), lo = _mm256_set1_epi8(-43), hi = _mm256_set1_epi8(42);
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t nb = a->k / BNE_TERNARY3_BLOCK, tail = a->k - nb * BNE_TERNARY3_BLOCK;
    __m256i acc[4][4];
    int8_t xt[4][BNE_TERNARY3_BLOCK] __attribute__((aligned(32)));
    for (int r = 0; r < NR; ++r)
        for (int c = 0; c < MR; ++c) acc[r][c] = _mm256_setzero_si256();
    if (tail)
        for (int c = 0; c < MR; ++c) {
            memset(xt[c], 0, sizeof xt[c]);
            memcpy(xt[c], a->x + (i + c) * a->ldx + nb * BNE_TERNARY3_BLOCK, tail);
        }
    for (size_t b = 0; b < nb + (tail != 0); ++b) {
        __m256i t0[4], t1[4], s16[4][4];
        for (int r = 0; r < NR; ++r) {
            const uint8_t *src = a->w + (j + r) * a->ldw + b * BNE_TERNARY3_BLOCK_BYTES;
            if (pf) _mm_prefetch((const char *)(src + pf), _MM_HINT_T0);
            t0[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)src), bias);
            t1[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + 32)), bias);
            for (int c = 0; c < MR; ++c) s16[r][c] = _mm256_setzero_si256();
        }
        for (int d = 0; d < 5; ++d) {
            __m256i c0[4], c1[4];
            for (int r = 0; r < NR; ++r) {
                c0[r] = trit_codes(t0[r], lo, hi);
                c1[r] = trit_codes(t1[r], lo, hi);
                if (d < 4) {
                    t0[r] = times3(t0[r]);
                    t1[r] = times3(t1[r]);
                }
            }
            for (int c = 0; c < MR; ++c) {
                const int8_t *xb = b < nb ? a->x + (i + c) * a->ldx + b * BNE_TERNARY3_BLOCK : xt[c];
                __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb + 64 * d));
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 64 * d + 32));
                for (int r = 0; r < NR; ++r)
                    s16[r][c] = _mm256_add_epi16(s16[r][c], _mm256_add_epi16(_mm256_maddubs_epi16(c0[r], x0),
                                                                             _mm256_maddubs_epi16(c1[r], x1)));
            }
        }
        for (int r = 0; r < NR; ++r)
            for (int c = 0; c < MR; ++c) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(s16[r][c], ones));
    }
    for (int r = 0; r < NR; ++r)
        for (int c = 0; c < MR; ++c) bne_store(a, i + c, j + r, hsum_epi32(acc[r][c]) - a->xsum[i + c]);
}

/* GEMV (one activation row), NR (1 or 2) weight rows j, j + step.  Per digit and row: 2 x (4 to decode,
 * 2 for t' *= 3 but after the last digit, vpmaddubsw, vpaddw): 78 vector instructions per 64-byte
 * block (320 weights) and row, plus 2 for the bias and 2 to widen every 6 blocks (|sum| <= 6 x 10 x
 * 512 = 30720); the int16 sums are added in place (add16) so GCC neither reassociates them nor
 * spills products. */
BNE_INLINE void ternary3_gemv(const bne_gemm_args *a, size_t j, int NR, size_t step, size_t pf) {
    const __m256i bias = _mm256_set1_epi8((char)0x80), lo = _mm256_set1_epi8(-43), hi = _mm256_set1_epi8(42);
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t nb = a->k / BNE_TERNARY3_BLOCK, tail = a->k - nb * BNE_TERNARY3_BLOCK;
    int8_t xt[BNE_TERNARY3_BLOCK] __attribute__((aligned(32)));
    __m256i acc[2];
    const uint8_t *w[2];
    for (int r = 0; r < NR; ++r) {
        acc[r] = _mm256_setzero_si256();
        w[r] = a->w + (j + r * step) * a->ldw;
    }
    if (tail) {
        memset(xt, 0, sizeof xt);
        memcpy(xt, a->x + nb * BNE_TERNARY3_BLOCK, tail);
    }
    const size_t nball = nb + (tail != 0);
    __m256i s16[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}; /* reset every 6 blocks below */
    for (size_t b = 0; b < nball; ++b) {
        const int8_t *xb = b < nb ? a->x + b * BNE_TERNARY3_BLOCK : xt;
        __m256i t0[2], t1[2];
        for (int r = 0; r < NR; ++r) {
            const uint8_t *src = w[r] + b * BNE_TERNARY3_BLOCK_BYTES;
            if (pf) _mm_prefetch((const char *)(src + pf), _MM_HINT_T0);
            t0[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)src), bias);
            t1[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + 32)), bias);
            if (b % 6 == 0) s16[r] = _mm256_setzero_si256();
        }
        for (int d = 0; d < 5; ++d) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb + 64 * d));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 64 * d + 32));
            for (int r = 0; r < NR; ++r) {
                s16[r] = add16(s16[r], _mm256_maddubs_epi16(trit_codes(t0[r], lo, hi), x0));
                s16[r] = add16(s16[r], _mm256_maddubs_epi16(trit_codes(t1[r], lo, hi), x1));
                if (d < 4) {
                    t0[r] = times3(t0[r]);
                    t1[r] = times3(t1[r]);
                }
            }
        }
        if (b % 6 == 5 || b + 1 == nball) /* 6 blocks: |s16| <= 6 x 10 x 512 = 30720 */
            for (int r = 0; r < NR; ++r) acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(s16[r], ones));
    }
    for (int r = 0; r < NR; ++r) bne_store(a, 0, j + r * step, hsum_epi32(acc[r]) - a->xsum[0]);
}

void bne_ternary3_gemm_avx2(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        /* 2 sequential weight streams far apart (the chunk's rows in 2 parts), as the 2-bit GEMV */
        const size_t pf = bne_prefetch_offset(a->ldw), part = (n1 - n0) / 2;
        for (int q = 0; q < 2; ++q) bne_gemv_prefetch_start(a, n0 + q * part, n0 + (q + 1) * part, pf / 2);
        for (size_t i = 0; i < part; ++i) ternary3_gemv(a, n0 + i, 2, part, pf);
        for (j = n0 + 2 * part; j < n1; ++j) ternary3_gemv(a, j, 1, 1, pf);
        return;
    }
    if (a->m >= PANEL_MIN_M && ternary_panel_gemm(a, n0, n1, 1)) return;
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) ternary3_tile(a, j, i, 1, 4, 0);
        for (; i < a->m; ++i) ternary3_tile(a, j, i, 1, 1, 0);
    }
}

/* ---- ternary GEMM for prefill (m >= PANEL_MIN_M), both layouts ---------------------------------
 * The weight rows of a chunk are unpacked, 16 at a time, into a panel of codes (0..2) laid out for
 * broadcasting activations: step q (k = 4q .. 4q+3) holds 64 bytes, [column group g of 8][column
 * c][4 codes].  The micro-kernel keeps 6 activation rows x 16 columns of int16 sums in 12
 * registers: per step 2 panel loads, 6 broadcasts of 4 x bytes, 12 _mm256_maddubs_epi16 (codes u8
 * x x s8: 32 multiply-adds each, |pair| <= 2 * 2 * 128 = 512) and 12 int16 adds: 32 vector
 * instructions per 384 multiply-adds (0.083 a MAC), 24 of them the multiply-add pairs that bound a
 * Zen 3 core (~82% of the vpmaddubsw-only rate: docs/adr/0020).  Every 64 steps (k 256) the int16
 * sums (|sum| <= 64 * 512 = 32768, reached only as -32768: exact for every int8 x) are widened with
 * _mm256_madd_epi16 into int32; after the last step the epilogue (- sum(x), int -> float, * wscale,
 * / xscale) runs on the tile's registers.  The layout only changes the unpack; the same panel
 * serves the 2-bit and base-3 rows. */
#define PANEL_N 16
#define PANEL_MR 6
#define PANEL_WIDEN 64 /* steps (k 256) of int16 sums between widenings */
#ifndef PANEL_NP
#define PANEL_NP 2 /* panels unpacked together; each row tile runs against all of them */
#endif

/* Codes of row `row` (k weights) in natural order -> dst (k bytes). */
static void unpack_codes_2bit(const uint8_t *row, size_t k, uint8_t *dst) {
    const __m256i m3 = _mm256_set1_epi8(3);
    size_t nb = k / BNE_TERNARY_BLOCK, b;
    for (b = 0; b < nb; ++b) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(row + b * 32));
        uint8_t *o = dst + b * BNE_TERNARY_BLOCK;
        _mm256_storeu_si256((__m256i *)o, _mm256_and_si256(v, m3));
        _mm256_storeu_si256((__m256i *)(o + 32), _mm256_and_si256(_mm256_srli_epi16(v, 2), m3));
        _mm256_storeu_si256((__m256i *)(o + 64), _mm256_and_si256(_mm256_srli_epi16(v, 4), m3));
        _mm256_storeu_si256((__m256i *)(o + 96), _mm256_and_si256(_mm256_srli_epi16(v, 6), m3));
    }
    for (size_t t = nb * BNE_TERNARY_BLOCK; t < k; ++t) {
        size_t r = t % BNE_TERNARY_BLOCK;
        dst[t] = (uint8_t)((row[b * 32 + (r & 31)] >> (2 * (r >> 5))) & 3);
    }
}

static void unpack_codes_b3(const uint8_t *row, size_t k, uint8_t *dst) {
    const __m256i bias = _mm256_set1_epi8((char)0x80), lo = _mm256_set1_epi8(-43), hi = _mm256_set1_epi8(42);
    const size_t nb = (k + BNE_TERNARY3_BLOCK - 1) / BNE_TERNARY3_BLOCK;
    uint8_t last[BNE_TERNARY3_BLOCK];
    for (size_t b = 0; b < nb; ++b) {
        uint8_t *o = (b + 1) * BNE_TERNARY3_BLOCK <= k ? dst + b * BNE_TERNARY3_BLOCK : last;
        __m256i t0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(row + b * 64)), bias);
        __m256i t1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(row + b * 64 + 32)), bias);
        for (int d = 0; d < 5; ++d) {
            _mm256_storeu_si256((__m256i *)(o + 64 * d), trit_codes(t0, lo, hi));
            _mm256_storeu_si256((__m256i *)(o + 64 * d + 32), trit_codes(t1, lo, hi));
            t0 = times3(t0);
            t1 = times3(t1);
        }
        if (o == last) memcpy(dst + b * BNE_TERNARY3_BLOCK, last, k - b * BNE_TERNARY3_BLOCK);
    }
}

/* acc += p (int16 lanes) in acc's own register: with the plain intrinsic GCC adds into p's register
 * and copies back, a move per accumulator and step. */
BNE_INLINE void add16_inplace(__m256i *acc, __m256i p) { __asm__("vpaddw %1, %0, %0" : "+x"(*acc) : "x"(p)); }

/* What the micro-kernel needs to finish a panel's outputs (the fused epilogue). */
typedef struct {
    size_t j, nc;        /* first output column of the panel, columns in it (<= 16) */
    const int32_t *adj;  /* (m, 16) tail products minus sum(x), or NULL: minus sum(x) alone */
} panel_out;

/* Row i's 16 column sums t0 | t1 (sum(code * x) over the full quads) -> y[i][j .. j+nc): minus
 * sum(x) (plus the k % 4 tail), then the epilogue of bne_store in 8 lanes (the same IEEE operations:
 * int -> float, * wscale, / xscale). */
BNE_INLINE void panel_finish(const bne_gemm_args *a, const panel_out *po, size_t i, __m256i t0, __m256i t1) {
    if (po->adj) {
        t0 = _mm256_add_epi32(t0, _mm256_load_si256((const __m256i *)(po->adj + i * PANEL_N)));
        t1 = _mm256_add_epi32(t1, _mm256_load_si256((const __m256i *)(po->adj + i * PANEL_N + 8)));
    } else {
        const __m256i xs = _mm256_set1_epi32(a->xsum[i]);
        t0 = _mm256_sub_epi32(t0, xs);
        t1 = _mm256_sub_epi32(t1, xs);
    }
    if (a->yi) {
        int32_t *y = a->yi + i * a->ldy + po->j;
        if (po->nc == PANEL_N) {
            _mm256_storeu_si256((__m256i *)y, t0);
            _mm256_storeu_si256((__m256i *)(y + 8), t1);
        } else {
            int32_t tmp[PANEL_N] __attribute__((aligned(32)));
            _mm256_store_si256((__m256i *)tmp, t0);
            _mm256_store_si256((__m256i *)(tmp + 8), t1);
            for (size_t c = 0; c < po->nc; ++c) y[c] = tmp[c];
        }
        return;
    }
    const __m256 ws = _mm256_set1_ps(a->wscale[0]), xs = _mm256_set1_ps(a->xscale[i]);
    __m256 f0 = _mm256_div_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(t0), ws), xs);
    __m256 f1 = _mm256_div_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(t1), ws), xs);
    float *y = a->yf + i * a->ldy + po->j;
    if (po->nc == PANEL_N) {
        _mm256_storeu_ps(y, f0);
        _mm256_storeu_ps(y + 8, f1);
    } else {
        float tmp[PANEL_N] __attribute__((aligned(32)));
        _mm256_store_ps(tmp, f0);
        _mm256_store_ps(tmp + 8, f1);
        for (size_t c = 0; c < po->nc; ++c) y[c] = tmp[c];
    }
}

/* MR activation rows from i against the whole panel (16 columns, k4 quads), then through
 * panel_finish into y.  k is not sliced: the panel streams from L2 at 2 loads per step, which costs
 * less than storing and reloading the int32 sums between slices (measured). */
BNE_INLINE void panel_kernel(const bne_gemm_args *a, const uint8_t *panel, size_t k4, size_t i, int MR,
                             const panel_out *po) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[PANEL_MR][2], tot[PANEL_MR][2];
    const int8_t *xr[PANEL_MR];
    for (int r = 0; r < MR; ++r) {
        xr[r] = a->x + (i + r) * a->ldx;
        tot[r][0] = tot[r][1] = _mm256_setzero_si256();
    }
    for (size_t q0 = 0; q0 < k4; q0 += PANEL_WIDEN) {
        const size_t q1 = q0 + PANEL_WIDEN < k4 ? q0 + PANEL_WIDEN : k4;
        for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
        for (size_t q = q0; q < q1; ++q) {
            const __m256i w0 = _mm256_load_si256((const __m256i *)(panel + q * 64));
            const __m256i w1 = _mm256_load_si256((const __m256i *)(panel + q * 64 + 32));
            for (int r = 0; r < MR; ++r) {
                int32_t xv;
                memcpy(&xv, xr[r] + 4 * q, 4);
                const __m256i b = _mm256_set1_epi32(xv);
                add16_inplace(&acc[r][0], _mm256_maddubs_epi16(w0, b));
                add16_inplace(&acc[r][1], _mm256_maddubs_epi16(w1, b));
            }
        }
        for (int r = 0; r < MR; ++r) {
            tot[r][0] = _mm256_add_epi32(tot[r][0], _mm256_madd_epi16(acc[r][0], ones));
            tot[r][1] = _mm256_add_epi32(tot[r][1], _mm256_madd_epi16(acc[r][1], ones));
        }
    }
    for (int r = 0; r < MR; ++r) panel_finish(a, po, i + r, tot[r][0], tot[r][1]);
}

/* 8 vectors, r[c] = dwords 0..7 of row c -> out[q] = dword q of rows 0-7: an 8 x 8 transpose of
 * 4-byte quads (unpack 32, unpack 64, permute 128: 24 shuffles). */
BNE_INLINE void panel_tr8_regs(__m256i r[8], __m256i out[8]) {
    __m256i t[8];
    for (int c = 0; c < 8; c += 2) {
        t[c] = _mm256_unpacklo_epi32(r[c], r[c + 1]);
        t[c + 1] = _mm256_unpackhi_epi32(r[c], r[c + 1]);
    }
    for (int c = 0; c < 8; c += 4) {
        r[c] = _mm256_unpacklo_epi64(t[c], t[c + 2]);
        r[c + 1] = _mm256_unpackhi_epi64(t[c], t[c + 2]);
        r[c + 2] = _mm256_unpacklo_epi64(t[c + 1], t[c + 3]);
        r[c + 3] = _mm256_unpackhi_epi64(t[c + 1], t[c + 3]);
    }
    /* r[s] (s < 4): quad s of rows 0-3 | quad s+4 of rows 0-3; r[s+4]: the same of rows 4-7 */
    for (int c = 0; c < 4; ++c) {
        out[c] = _mm256_permute2x128_si256(r[c], r[c + 4], 0x20);     /* quad c, rows 0-7 */
        out[c + 4] = _mm256_permute2x128_si256(r[c], r[c + 4], 0x31); /* quad c+4 */
    }
}

/* 8 vectors of codes, r[c] = quads 0..7 (32 bytes) of row c -> the 8 panel steps from dst (64-byte
 * stride, this column group's 32 bytes each; only the first nq are stored). */
BNE_INLINE void panel_tr8(__m256i r[8], uint8_t *dst, size_t nq) {
    __m256i t[8];
    panel_tr8_regs(r, t);
    for (size_t q = 0; q < 8 && q < nq; ++q) _mm256_store_si256((__m256i *)(dst + q * 64), t[q]);
}

/* 8 rows of codes (stride k32 bytes, zero past k4 quads) -> column group g of the panel. */
static void panel_transpose8(const uint8_t *codes, size_t k32, size_t k4, uint8_t *panel, size_t g) {
    for (size_t p = 0; p < k32 / 32; ++p) {
        __m256i r[8];
        for (int c = 0; c < 8; ++c) r[c] = _mm256_loadu_si256((const __m256i *)(codes + c * k32 + 32 * p));
        panel_tr8(r, panel + 8 * p * 64 + g * 32, k4 - 8 * p);
    }
}

/* 2-bit rows: the nb whole 128-weight blocks of rows w, w + ldw, ... (nr of them, the other of the 8
 * columns zero) -> column group g of the panel, straight from the packed bytes.  Packed byte t of a
 * block holds weights t, t + 32, t + 64, t + 96 in its fields 0..3, so packed dword q holds, in field
 * f, the 4 codes of quad 8 f + q: the 8 x 8 packed dwords are transposed once, then each field is a
 * shift and a mask of the 8 transposed vectors (per block and 8 rows: 8 loads, 24 shuffles, 64 bit
 * operations, 32 stores). */
static void panel_unpack_2bit8(const uint8_t *w, size_t ldw, size_t nr, size_t nb, uint8_t *panel, size_t g) {
    static const uint8_t zero32[32] __attribute__((aligned(32))) = {0};
    const __m256i m3 = _mm256_set1_epi8(3);
    const uint8_t *row[8];
    size_t step[8];
    for (size_t c = 0; c < 8; ++c) {
        row[c] = c < nr ? w + c * ldw : zero32;
        step[c] = c < nr ? 32 : 0;
    }
    for (size_t b = 0; b < nb; ++b) {
        __m256i v[8], t[8];
        for (int c = 0; c < 8; ++c) v[c] = _mm256_loadu_si256((const __m256i *)(row[c] + b * step[c]));
        panel_tr8_regs(v, t);
        uint8_t *dst = panel + b * 32 * 64 + g * 32;
        for (int f = 0; f < 4; ++f)
            for (int q = 0; q < 8; ++q)
                _mm256_store_si256((__m256i *)(dst + (8 * f + q) * 64),
                                   _mm256_and_si256(_mm256_srli_epi16(t[q], 2 * f), m3));
    }
}

/* Columns [j, j + nc) (nc <= 16) of W into one panel (k4 steps of 64 bytes; zero codes past nc),
 * either layout; the codes of the last k % 4 weights of each column go to tailc.  codes: scratch of
 * 8 rows of round_up(k, 32) bytes.  Shared with the AVX-512 variant (AVX2 code). */
void bne_panel_fill_avx2(const bne_gemm_args *a, size_t j, size_t nc, int base3, uint8_t *panel, uint8_t *codes,
                         uint8_t tailc[16][4]) {
    const size_t k = a->k, k4 = k / 4, kt = k - 4 * k4;
    for (size_t g = 0; g < PANEL_N / 8; ++g) {
        const size_t nr = nc > g * 8 ? (nc - g * 8 < 8 ? nc - g * 8 : 8) : 0; /* rows of this group */
        size_t kd = 0; /* weights done by the fused 2-bit unpack: whole blocks */
        if (!base3) {
            kd = k / BNE_TERNARY_BLOCK * BNE_TERNARY_BLOCK;
            panel_unpack_2bit8(a->w + (j + g * 8) * a->ldw, a->ldw, nr, k / BNE_TERNARY_BLOCK, panel, g);
        }
        if (kd == k) continue; /* (k % 4 == 0 here: no tail codes) */
        /* the rest (base-3 rows, or a 2-bit row's last partial block) through natural-order codes */
        const size_t kr = k - kd, k4r = k4 - kd / 4, kr32 = (kr + 31) & ~(size_t)31;
        for (size_t c = 0; c < 8; ++c) { /* zeros past nr and k */
            uint8_t *dst = codes + c * kr32;
            memset(dst + 4 * k4r, 0, kr32 - 4 * k4r);
            if (c < nr) {
                const uint8_t *row = a->w + (j + g * 8 + c) * a->ldw;
                if (base3) unpack_codes_b3(row, k, dst);
                else unpack_codes_2bit(row + kd / 4, kr, dst); /* the last block, on its own */
                for (size_t t = 0; t < kt; ++t) tailc[g * 8 + c][t] = dst[4 * k4r + t];
                memset(dst + 4 * k4r, 0, kt);
            } else {
                memset(dst, 0, 4 * k4r);
                for (size_t t = 0; t < kt; ++t) tailc[g * 8 + c][t] = 0;
            }
        }
        panel_transpose8(codes, kr32, k4r, panel + kd / 4 * 64, g);
    }
}

/* The last k % 4 weights of a panel's columns, apart from the panel: ad[i][c] = sum over those
 * weights of code * x[i] - sum(x[i]) (the panel sums hold code = w + 1).  Shared with AVX-512. */
void bne_panel_tail_avx2(const bne_gemm_args *a, uint8_t tailc[16][4], int32_t *ad) {
    const size_t k4 = a->k / 4, kt = a->k - 4 * k4;
    for (size_t i = 0; i < a->m; ++i) {
        const int8_t *x = a->x + i * a->ldx + 4 * k4;
        for (size_t c = 0; c < PANEL_N; ++c) {
            int32_t s = -a->xsum[i];
            for (size_t t = 0; t < kt; ++t) s += (int32_t)tailc[c][t] * x[t];
            ad[i * PANEL_N + c] = s;
        }
    }
}

/* Columns [n0, n1) of a ternary GEMM through 16-column panels; returns 0 if it could not get its
 * buffer (the caller then uses the tile kernels).  Activation rows go in tiles of 5 or 6 (as even as
 * m allows: 128 = 18 x 6 + 4 x 5), so no tile runs with a third of the registers. */
static int ternary_panel_gemm(const bne_gemm_args *a, size_t n0, size_t n1, int base3) {
    const size_t k = a->k, k4 = k / 4, kt = k - 4 * k4, m = a->m;
    const size_t k32 = (k + 31) & ~(size_t)31; /* code rows padded to whole 8-quad groups */
    const size_t tiles = (m + PANEL_MR - 1) / PANEL_MR, base = m / tiles, extra = m % tiles;
    const size_t pbytes = (k4 * 64 + 63) & ~(size_t)63; /* one panel */
    uint8_t *buf = (uint8_t *)aligned_alloc(64, PANEL_NP * pbytes + 8 * k32 + PANEL_NP * m * PANEL_N * 4 + 64);
    if (!buf) return 0;
    uint8_t *codes = buf + PANEL_NP * pbytes;              /* 8 rows of k32 bytes */
    int32_t *adj = (int32_t *)(codes + 8 * k32);           /* (PANEL_NP, m, 16) k % 4 tail products - sum(x) */
    uint8_t tailc[PANEL_N][4];
    panel_out po[PANEL_NP];
    for (size_t j0 = n0; j0 < n1; j0 += PANEL_NP * PANEL_N) {
        size_t np = 0;
        for (size_t j = j0; j < n1 && np < PANEL_NP; j += PANEL_N, ++np) {
            uint8_t *panel = buf + np * pbytes;
            const size_t nc = n1 - j < PANEL_N ? n1 - j : PANEL_N;
            bne_panel_fill_avx2(a, j, nc, base3, panel, codes, tailc);
            po[np] = (panel_out){j, nc, NULL};
            if (kt) { /* the last k % 4 weights, apart: sum(code * x) - sum(x) */
                int32_t *ad = adj + np * m * PANEL_N;
                po[np].adj = ad;
                bne_panel_tail_avx2(a, tailc, ad);
            }
        }
        /* each row tile against the np panels in turn: its activation rows are read from L2/L3 once
         * and from L1 for the other panels */
        for (size_t t = 0, i = 0; t < tiles; ++t) {
            const size_t mr = base + (t < extra);
            for (size_t p = 0; p < np; ++p) {
                const uint8_t *panel = buf + p * pbytes;
                switch (mr) {
                case 6: panel_kernel(a, panel, k4, i, 6, &po[p]); break;
                case 5: panel_kernel(a, panel, k4, i, 5, &po[p]); break;
                case 4: panel_kernel(a, panel, k4, i, 4, &po[p]); break;
                case 3: panel_kernel(a, panel, k4, i, 3, &po[p]); break;
                case 2: panel_kernel(a, panel, k4, i, 2, &po[p]); break;
                default: panel_kernel(a, panel, k4, i, 1, &po[p]); break;
                }
            }
            i += mr;
        }
    }
    free(buf);
    return 1;
}

BNE_INLINE void int8_tile(const bne_gemm_args *a, size_t j, size_t i, int NR, int MR, size_t pf) {
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t kv = a->k & ~(size_t)31;
    __m256i acc[4][4];
    for (int r = 0; r < NR; ++r)
        for (int c = 0; c < MR; ++c) acc[r][c] = _mm256_setzero_si256();
    for (size_t t = 0; t < kv; t += 32) {
        __m256i w[4];
        for (int r = 0; r < NR; ++r) {
            const uint8_t *src = a->w + (j + r) * a->ldw + t;
            if (pf && (t & 63) == 0) _mm_prefetch((const char *)(src + pf), _MM_HINT_T0);
            w[r] = _mm256_loadu_si256((const __m256i *)src);
        }
        for (int c = 0; c < MR; ++c) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(a->x + (i + c) * a->ldx + t));
            __m256i ax = _mm256_abs_epi8(x); /* |-128| reads as 128 unsigned */
            for (int r = 0; r < NR; ++r) {
                __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w[r], x));
                acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(p, ones));
            }
        }
    }
    for (int r = 0; r < NR; ++r) {
        const int8_t *w = (const int8_t *)(a->w + (j + r) * a->ldw);
        for (int c = 0; c < MR; ++c) {
            const int8_t *x = a->x + (i + c) * a->ldx;
            int32_t s = hsum_epi32(acc[r][c]);
            for (size_t t = kv; t < a->k; ++t) s += (int32_t)w[t] * (int32_t)x[t];
            bne_store(a, i + c, j + r, s);
        }
    }
}

/* acc += p (int32 lanes) in acc's own register (see add16). */
BNE_INLINE __m256i add32(__m256i acc, __m256i p) {
    __asm__("vpaddd %1, %0, %0" : "+x"(acc) : "x"(p));
    return acc;
}

/* GEMV (one activation row), R weight rows j, j + step, ... (R a constant after inlining): a step is
 * one cache line (64 bytes) of every row, one prefetch each; per 32 weight bytes and row: vpsignb, vpmaddubsw,
 * vpmaddwd, vpaddd (the vpabsb of x is shared by the R rows). */
BNE_INLINE void int8_gemv(const bne_gemm_args *a, size_t j, int R, size_t step, size_t pf) {
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t kv = a->k & ~(size_t)63;
    const uint8_t *w[8];
    __m256i acc[8];
    for (int r = 0; r < R; ++r) {
        w[r] = a->w + (j + r * step) * a->ldw;
        acc[r] = _mm256_setzero_si256();
    }
    for (size_t t = 0; t < kv; t += 64) {
        for (int h = 0; h < 2; ++h) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(a->x + t + 32 * h));
            const __m256i ax = _mm256_abs_epi8(x); /* |-128| reads as 128 unsigned */
            for (int r = 0; r < R; ++r) {
                if (h == 0) _mm_prefetch((const char *)(w[r] + t + pf), _MM_HINT_T0);
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(w[r] + t + 32 * h));
                acc[r] = add32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, x)), ones));
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        const int8_t *wr = (const int8_t *)w[r];
        int32_t s = hsum_epi32(acc[r]);
        for (size_t t = kv; t < a->k; ++t) s += (int32_t)wr[t] * (int32_t)a->x[t];
        bne_store(a, 0, j + r * step, s);
    }
}

/* W (n, k) int8 @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void int8_gemm_avx2(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        /* 4 sequential streams far apart, as in the ternary GEMV: 4 adjacent rows a step (streams
         * 2560 B apart) ran 1.4x slower from DRAM. */
        const size_t pf = bne_prefetch_offset(a->ldw), part = (n1 - n0) / 4;
        for (int q = 0; q < 4; ++q) bne_gemv_prefetch_start(a, n0 + q * part, n0 + (q + 1) * part, pf / 4);
        for (size_t i = 0; i < part; ++i) int8_gemv(a, n0 + i, 4, part, pf);
        for (j = n0 + 4 * part; j < n1; ++j) int8_gemv(a, j, 1, 1, pf);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) int8_tile(a, j, i, 1, 4, 0);
        for (; i < a->m; ++i) int8_tile(a, j, i, 1, 1, 0);
    }
}

/* x (m, k) float -> xq (m, k) int8, scales (m,). */
static int quantize_avx2(const float *x, size_t m, size_t k, size_t ldx, int8_t *xq, size_t ldq,
                         float *scales) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const size_t kv = k & ~(size_t)31;
    for (size_t i = 0; i < m; ++i) {
        const float *row = x + i * ldx;
        __m256 vmax = _mm256_setzero_ps();
        __m256 bad = _mm256_setzero_ps();
        size_t t = 0;
        for (; t + 8 <= k; t += 8) {
            __m256 v = _mm256_loadu_ps(row + t);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(),
                                                  _CMP_NEQ_UQ));
            vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, absmask));
        }
        if (_mm256_movemask_ps(bad)) return BNE_ERR_NONFINITE;
        float lanes[8];
        _mm256_storeu_ps(lanes, vmax);
        float amax = 0.0f;
        for (int l = 0; l < 8; ++l) amax = lanes[l] > amax ? lanes[l] : amax;
        for (; t < k; ++t) {
            float v = row[t];
            if (!(v - v == 0.0f)) return BNE_ERR_NONFINITE;
            float av = v < 0.0f ? -v : v;
            if (av > amax) amax = av;
        }
        if (amax < 1e-5f) amax = 1e-5f;
        const float s = 127.0f / amax;
        scales[i] = s;
        const __m256 vs = _mm256_set1_ps(s);
        int8_t *q = xq + i * ldq;
        for (t = 0; t < kv; t += 32) {
            /* cvtps rounds half to even (default MXCSR); packs saturate to [-128, 127] */
            __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + t), vs));
            __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + t + 8), vs));
            __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + t + 16), vs));
            __m256i q3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + t + 24), vs));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
            _mm256_storeu_si256((__m256i *)(q + t), _mm256_permutevar8x32_epi32(p, perm));
        }
        for (; t < k; ++t) q[t] = bne_quant1(row[t], s);
    }
    return BNE_OK;
}

#define BNE_DEC_FN bne_decoder_forward_avx2
#include "decoder_impl.h"

const bne_kernels bne_kernels_avx2 = {
    ternary_gemm_avx2,
    int8_gemm_avx2,
    quantize_avx2,
    bne_ternary3_gemm_avx2,
    bne_decoder_forward_avx2,
};
