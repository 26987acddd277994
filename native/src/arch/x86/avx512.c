/* avx512.c - x86-64 AVX-512 variant with VNNI ("avx512").  Built with
 * -mavx512f -mavx512bw -mavx512vl -mavx512vnni.
 *
 * Ternary: a 32-byte block is broadcast to both halves of a zmm; a per-qword
 * variable shift (0 | 2 in the low | high half, then 4 | 6) and a mask give the
 * codes of weights 0..63 and 64..127 in x's own order, so two vpdpbusd
 * (codes u8 x x s8 -> int32, 4 products a lane) finish a block.  No int16
 * stage, so no overflow for any int8 x.  acc = sum(code * x) - sum(x).
 *
 * int8: vpdpbusd needs an unsigned operand: x + 128 = x ^ 0x80 as u8, and
 * sum((x + 128) * w) - 128 * sum(w) = sum(x * w); works for every int8 w and x.
 */
#include <immintrin.h>
#include <stdlib.h>
#include "bne_internal.h"

#define BNE_INLINE static inline __attribute__((always_inline))


/* Tile: NR weight rows j.. x MR activation rows i..  (NR, MR <= 4).
 * W (NR, k) packed @ x (MR, k) -> y (MR, NR). */
BNE_INLINE void ternary_tile(const bne_gemm_args *a, size_t j, size_t i, int NR, int MR) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i sh_lo = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
    const __m512i sh_hi = _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6);
    const size_t nb = a->k / BNE_TERNARY_BLOCK;
    __m512i acc[4][4];
    for (int r = 0; r < NR; ++r)
        for (int c = 0; c < MR; ++c) acc[r][c] = _mm512_setzero_si512();
    for (size_t b = 0; b < nb; ++b) {
        __m512i lo[4], hi[4];
        for (int r = 0; r < NR; ++r) {
            const uint8_t *src = a->w + (j + r) * a->ldw + b * 32;
            __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)src));
            lo[r] = _mm512_and_si512(_mm512_srlv_epi64(v, sh_lo), m3); /* weights 0..63 */
            hi[r] = _mm512_and_si512(_mm512_srlv_epi64(v, sh_hi), m3); /* weights 64..127 */
        }
        for (int c = 0; c < MR; ++c) {
            const int8_t *xb = a->x + (i + c) * a->ldx + b * BNE_TERNARY_BLOCK;
            __m512i x0 = _mm512_loadu_si512((const void *)xb);
            __m512i x1 = _mm512_loadu_si512((const void *)(xb + 64));
            for (int r = 0; r < NR; ++r) {
                acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], lo[r], x0);
                acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], hi[r], x1);
            }
        }
    }
    const size_t tail = a->k - nb * BNE_TERNARY_BLOCK;
    for (int r = 0; r < NR; ++r) {
        const uint8_t *last = a->w + (j + r) * a->ldw + nb * 32;
        for (int c = 0; c < MR; ++c) {
            const int8_t *x = a->x + (i + c) * a->ldx;
            int32_t s = _mm512_reduce_add_epi32(acc[r][c]);
            if (tail) s += bne_tail_codes_dot(last, x + nb * BNE_TERNARY_BLOCK, tail);
            bne_store(a, i + c, j + r, s - a->xsum[i + c]);
        }
    }
}

/* ---- ternary GEMM for prefill (m >= PANEL_MIN_M), both layouts ---------------------------------
 * The panels of the AVX2 variant (bne_panel_fill_avx2: step q = 64 bytes, 16 columns x 4 codes) are
 * exactly one zmm per step, and vpdpbusd (codes u8 x x s8, 4 products into each int32 lane) adds
 * them into 16 column sums with no int16 stage and no separate add.  Two panels (32 columns) are
 * filled together; the micro-kernel keeps up to 12 activation rows x 2 panels = 24 zmm sums: per
 * step 2 panel loads, 12 broadcasts of 4 x bytes, 24 vpdpbusd for 1536 multiply-adds (0.025
 * instructions a MAC).  |sum| <= 2 * 128 * k fits int32 for any k <= BNE_MAX_K. */
#define PANEL_MIN_M 8
#define PANEL_N 16
#define PANEL_MR 12

typedef struct {
    size_t j, nc;
    const int32_t *adj; /* (m, 16) k % 4 tail products - sum(x), or NULL */
} panel_out512;

BNE_INLINE void panel_finish512(const bne_gemm_args *a, const panel_out512 *po, size_t i, __m512i t) {
    t = po->adj ? _mm512_add_epi32(t, _mm512_loadu_si512((const void *)(po->adj + i * PANEL_N)))
                : _mm512_sub_epi32(t, _mm512_set1_epi32(a->xsum[i]));
    const __mmask16 mk = (__mmask16)((1u << po->nc) - 1u);
    if (a->yi) {
        _mm512_mask_storeu_epi32(a->yi + i * a->ldy + po->j, mk, t);
        return;
    }
    /* bne_store's operations, 16 lanes: int -> float, * wscale, / xscale */
    __m512 f = _mm512_div_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(a->wscale[0])),
                             _mm512_set1_ps(a->xscale[i]));
    _mm512_mask_storeu_ps(a->yf + i * a->ldy + po->j, mk, f);
}

/* acc += codes (u8) . b (s8), 4 products a lane, in acc's own register (with the intrinsic GCC
 * copies every accumulator each step). */
BNE_INLINE void dpbusd_inplace(__m512i *acc, __m512i codes, __m512i b) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(*acc) : "v"(codes), "v"(b));
}

/* ---- GEMV (decode: one activation row) ---------------------------------------------------------
 * R weight rows j, j + step, ... (R <= 4, a constant after inlining; the caller's rows in R parts:
 * R sequential weight streams far apart, as avx2.c's GEMV, whose measurements chose that order: 4
 * adjacent rows a step read 1.9x slower from DRAM on a Zen 4).  A step is one cache line of each row,
 * two blocks: field f of its 64 bytes (bits 2f, 2f+1) holds the codes of weights f*32.. of the first
 * block in the low half and of the second block in the high half, so it meets x's 32 bytes f*32..
 * of each block joined in one zmm (loaded once for the R rows); 3 shifts, 4 masks and 4 vpdpbusd a
 * row and 256 weights, one int32 sum per row (|sum| <= 2 * 128 * k: no overflow for k <= BNE_MAX_K). */
BNE_INLINE __m512i x_pair_field(const int8_t *xb, int f) { /* x of field f of blocks xb, xb + 128 */
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(xb + 32 * f))),
                              _mm256_loadu_si256((const __m256i *)(xb + 128 + 32 * f)), 1);
}

BNE_INLINE void gemv_fields(__m512i *acc, __m512i v, const __m512i x[4], __m512i m3) {
    dpbusd_inplace(acc, _mm512_and_si512(v, m3), x[0]);
    dpbusd_inplace(acc, _mm512_and_si512(_mm512_srli_epi16(v, 2), m3), x[1]);
    dpbusd_inplace(acc, _mm512_and_si512(_mm512_srli_epi16(v, 4), m3), x[2]);
    dpbusd_inplace(acc, _mm512_and_si512(_mm512_srli_epi16(v, 6), m3), x[3]);
}

BNE_INLINE void ternary_gemv512(const bne_gemm_args *a, size_t j, int R, size_t step, size_t pf) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const size_t nb = a->k / BNE_TERNARY_BLOCK;
    const uint8_t *w[4];
    __m512i acc[4];
    for (int r = 0; r < R; ++r) {
        w[r] = a->w + (j + r * step) * a->ldw;
        acc[r] = _mm512_setzero_si512();
    }
    size_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const int8_t *xb = a->x + b * BNE_TERNARY_BLOCK;
        const __m512i x[4] = {x_pair_field(xb, 0), x_pair_field(xb, 1), x_pair_field(xb, 2), x_pair_field(xb, 3)};
        for (int r = 0; r < R; ++r) {
            _mm_prefetch((const char *)(w[r] + b * 32 + pf), _MM_HINT_T0);
            gemv_fields(&acc[r], _mm512_loadu_si512((const void *)(w[r] + b * 32)), x, m3);
        }
    }
    if (b < nb) { /* an odd last block: the high halves are zero */
        const int8_t *xb = a->x + b * BNE_TERNARY_BLOCK;
        __m512i x[4];
        for (int f = 0; f < 4; ++f)
            x[f] = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(xb + 32 * f)));
        for (int r = 0; r < R; ++r)
            gemv_fields(&acc[r], _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(w[r] + b * 32))), x, m3);
    }
    const size_t tail = a->k - nb * BNE_TERNARY_BLOCK;
    for (int r = 0; r < R; ++r) {
        int32_t s = _mm512_reduce_add_epi32(acc[r]);
        if (tail) s += bne_tail_codes_dot(w[r] + nb * 32, a->x + nb * BNE_TERNARY_BLOCK, tail);
        bne_store(a, 0, j + r * step, s - a->xsum[0]);
    }
}

/* MR activation rows from i against NP (1 or 2) panels over k4 steps, finished into y.  The 24 sums
 * are named variables, not an array: GCC does not keep a 1.5 KB array of zmm in registers. */
#define PANEL_REP12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
BNE_INLINE void panel_kernel512(const bne_gemm_args *a, const uint8_t *p0, const uint8_t *p1, size_t k4, size_t i,
                                int MR, int NP, const panel_out512 *po) {
#define ROW_DECL(r)                                                                  \
    __m512i s##r##_0 = _mm512_setzero_si512(), s##r##_1 = _mm512_setzero_si512();  \
    const int8_t *x##r = a->x + (i + (MR > r ? r : 0)) * a->ldx;
#define ROW_STEP(r)                                                                  \
    if (MR > r) {                                                                    \
        int32_t xv;                                                                  \
        __builtin_memcpy(&xv, x##r + 4 * q, 4);                                      \
        const __m512i b = _mm512_set1_epi32(xv);                                     \
        dpbusd_inplace(&s##r##_0, w0, b);                                            \
        if (NP == 2) dpbusd_inplace(&s##r##_1, w1, b);                               \
    }
#define ROW_FIN(r)                                                                   \
    if (MR > r) {                                                                    \
        panel_finish512(a, &po[0], i + r, s##r##_0);                                 \
        if (NP == 2) panel_finish512(a, &po[1], i + r, s##r##_1);                    \
    }
    PANEL_REP12(ROW_DECL)
    for (size_t q = 0; q < k4; ++q) {
        const __m512i w0 = _mm512_load_si512((const void *)(p0 + q * 64));
        const __m512i w1 = NP == 2 ? _mm512_load_si512((const void *)(p1 + q * 64)) : w0;
        PANEL_REP12(ROW_STEP)
    }
    PANEL_REP12(ROW_FIN)
#undef ROW_DECL
#undef ROW_STEP
#undef ROW_FIN
}

#define PANEL_CASE(mr)                                                              \
    case mr:                                                                        \
        if (np == 2) panel_kernel512(a, panel, panel + pbytes, k4, i, mr, 2, po);   \
        else panel_kernel512(a, panel, panel, k4, i, mr, 1, po);                    \
        break;

/* A 16-column panel of 2-bit rows (k a whole number of blocks; rows past nc read as zero), with
 * 512-bit operations: the panel's quads are the packed bytes' dwords (packed byte t of a block holds
 * weights t, t + 32, t + 64, t + 96 in its fields 0..3, so packed dword q holds, in field f, the 4
 * codes of quad 8 f + q).  Per block: the 16 x 8 packed dwords are transposed once (row c and row
 * c + 8 in the halves of one zmm, the 3 shuffle stages of panel_tr8 in both halves at once, the
 * last as one vpermt2q), then each field is a shift and a mask of the 8 transposed vectors: 24
 * shuffles and 64 bit operations for 2048 weights (the AVX2 fill: 320).  Same panel bytes as
 * bne_panel_fill_avx2. */
static void panel_unpack_2bit16(const uint8_t *w, size_t ldw, size_t nc, size_t nb, uint8_t *panel) {
    static const uint8_t zero32[32] __attribute__((aligned(32))) = {0};
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i lo_idx = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i hi_idx = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    const uint8_t *row[16];
    size_t step[16];
    for (size_t c = 0; c < 16; ++c) {
        row[c] = c < nc ? w + c * ldw : zero32;
        step[c] = c < nc ? 32 : 0;
    }
    for (size_t b = 0; b < nb; ++b) {
        __m512i r[8], t[8];
        for (int c = 0; c < 8; ++c)
            r[c] = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(row[c] + b * step[c]))),
                _mm256_loadu_si256((const __m256i *)(row[c + 8] + b * step[c + 8])), 1);
        for (int c = 0; c < 8; c += 2) {
            t[c] = _mm512_unpacklo_epi32(r[c], r[c + 1]);
            t[c + 1] = _mm512_unpackhi_epi32(r[c], r[c + 1]);
        }
        for (int c = 0; c < 8; c += 4) {
            r[c] = _mm512_unpacklo_epi64(t[c], t[c + 2]);
            r[c + 1] = _mm512_unpackhi_epi64(t[c], t[c + 2]);
            r[c + 2] = _mm512_unpacklo_epi64(t[c + 1], t[c + 3]);
            r[c + 3] = _mm512_unpackhi_epi64(t[c + 1], t[c + 3]);
        }
        /* in each half: r[s] (s < 4) = dword s of rows 0-3 | dword s+4 of rows 0-3 (128-bit lanes),
         * r[s+4] the same of rows 4-7 (of 8-11 | 12-15 in the high half) */
        for (int c = 0; c < 4; ++c) {
            t[c] = _mm512_permutex2var_epi64(r[c], lo_idx, r[c + 4]);     /* dword c of rows 0-15 */
            t[c + 4] = _mm512_permutex2var_epi64(r[c], hi_idx, r[c + 4]); /* dword c+4 */
        }
        uint8_t *dst = panel + b * 32 * 64;
        for (int f = 0; f < 4; ++f)
            for (int q = 0; q < 8; ++q)
                _mm512_store_si512((void *)(dst + (8 * f + q) * 64),
                                   _mm512_and_si512(_mm512_srli_epi16(t[q], 2 * f), m3));
    }
}

/* One 16-column panel: 2-bit rows of whole blocks through panel_unpack_2bit16, the rest (base-3, a
 * partial last block) through the AVX2 fill. */
static void panel_fill512(const bne_gemm_args *a, size_t j, size_t nc, int base3, uint8_t *panel, uint8_t *codes,
                          uint8_t tailc[16][4]) {
    if (!base3 && a->k % BNE_TERNARY_BLOCK == 0)
        panel_unpack_2bit16(a->w + j * a->ldw, a->ldw, nc, a->k / BNE_TERNARY_BLOCK, panel);
    else
        bne_panel_fill_avx2(a, j, nc, base3, panel, codes, tailc);
}

/* Columns [n0, n1) through pairs of 16-column panels; 0 if the buffer could not be had. */
static int ternary_panel_gemm512(const bne_gemm_args *a, size_t n0, size_t n1, int base3) {
    const size_t k = a->k, k4 = k / 4, kt = k - 4 * k4, m = a->m;
    const size_t k32 = (k + 31) & ~(size_t)31;
    const size_t tiles = (m + PANEL_MR - 1) / PANEL_MR, base = m / tiles, extra = m % tiles;
    const size_t pbytes = (k4 * 64 + 63) & ~(size_t)63;
    uint8_t *buf = (uint8_t *)aligned_alloc(64, 2 * pbytes + 8 * k32 + 2 * m * PANEL_N * 4 + 64);
    if (!buf) return 0;
    uint8_t *panel = buf, *codes = buf + 2 * pbytes;
    int32_t *adj = (int32_t *)(codes + 8 * k32);
    uint8_t tailc[PANEL_N][4];
    panel_out512 po[2];
    for (size_t j0 = n0; j0 < n1; j0 += 2 * PANEL_N) {
        size_t np = 0;
        for (size_t j = j0; j < n1 && np < 2; j += PANEL_N, ++np) {
            const size_t nc = n1 - j < PANEL_N ? n1 - j : PANEL_N;
            panel_fill512(a, j, nc, base3, panel + np * pbytes, codes, tailc);
            po[np] = (panel_out512){j, nc, NULL};
            if (kt) {
                int32_t *ad = adj + np * m * PANEL_N;
                po[np].adj = ad;
                bne_panel_tail_avx2(a, tailc, ad);
            }
        }
        /* the next pair's weight rows into L2 while the micro-kernels run on this pair (the fill
         * otherwise waits on DRAM) */
        const size_t pf0 = j0 + 2 * PANEL_N, pf1 = pf0 + 2 * PANEL_N < n1 ? pf0 + 2 * PANEL_N : n1;
        if (pf0 < pf1) {
            const char *p = (const char *)(a->w + pf0 * a->ldw);
            for (size_t off = 0; off < (pf1 - pf0) * a->ldw; off += 64) _mm_prefetch(p + off, _MM_HINT_T1);
        }
        for (size_t t = 0, i = 0; t < tiles; ++t) {
            const size_t mr = base + (t < extra);
            switch (mr) {
                PANEL_CASE(12) PANEL_CASE(11) PANEL_CASE(10) PANEL_CASE(9) PANEL_CASE(8) PANEL_CASE(7)
                PANEL_CASE(6) PANEL_CASE(5) PANEL_CASE(4) PANEL_CASE(3) PANEL_CASE(2)
            default:
                if (np == 2) panel_kernel512(a, panel, panel + pbytes, k4, i, 1, 2, po);
                else panel_kernel512(a, panel, panel, k4, i, 1, 1, po);
                break;
            }
            i += mr;
        }
    }
    free(buf);
    return 1;
}

/* W (n, k) packed ternary @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void ternary_gemm_avx512(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) { /* 4 streams far apart (ternary_gemv512) */
        const size_t pf = bne_prefetch_offset(a->ldw), part = (n1 - n0) / 4;
        for (int q = 0; q < 4; ++q) bne_gemv_prefetch_start(a, n0 + q * part, n0 + (q + 1) * part, pf / 4);
        for (size_t i = 0; i < part; ++i) ternary_gemv512(a, n0 + i, 4, part, pf);
        for (j = n0 + 4 * part; j < n1; ++j) ternary_gemv512(a, j, 1, 1, pf);
        return;
    }
    if (a->m >= PANEL_MIN_M && ternary_panel_gemm512(a, n0, n1, 0)) return;
    for (; j + 2 <= n1; j += 2) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) ternary_tile(a, j, i, 2, 4);
        for (; i < a->m; ++i) ternary_tile(a, j, i, 2, 1);
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) ternary_tile(a, j, i, 1, 4);
        for (; i < a->m; ++i) ternary_tile(a, j, i, 1, 1);
    }
}

BNE_INLINE void int8_tile(const bne_gemm_args *a, size_t j, size_t i, int NR, int MR) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const size_t kv = a->k & ~(size_t)63;
    __m512i acc[4][4];
    for (int r = 0; r < NR; ++r)
        for (int c = 0; c < MR; ++c) acc[r][c] = _mm512_setzero_si512();
    for (size_t t = 0; t < kv; t += 64) {
        __m512i w[4];
        for (int r = 0; r < NR; ++r) {
            const uint8_t *src = a->w + (j + r) * a->ldw + t;
            w[r] = _mm512_loadu_si512((const void *)src);
        }
        for (int c = 0; c < MR; ++c) {
            __m512i xu = _mm512_xor_si512(
                _mm512_loadu_si512((const void *)(a->x + (i + c) * a->ldx + t)), bias);
            for (int r = 0; r < NR; ++r) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xu, w[r]);
        }
    }
    for (int r = 0; r < NR; ++r) {
        const int8_t *w = (const int8_t *)(a->w + (j + r) * a->ldw);
        int32_t wsum_v = 0; /* sum of w over the vector part */
        if (kv) {
            int32_t tail_w = 0;
            for (size_t t = kv; t < a->k; ++t) tail_w += w[t];
            wsum_v = a->wsum[j + r] - tail_w;
        }
        for (int c = 0; c < MR; ++c) {
            const int8_t *x = a->x + (i + c) * a->ldx;
            /* wrapping int32 arithmetic: the true result fits, so the sum is exact */
            uint32_t s = (uint32_t)_mm512_reduce_add_epi32(acc[r][c]) - 128u * (uint32_t)wsum_v;
            for (size_t t = kv; t < a->k; ++t) s += (uint32_t)((int32_t)w[t] * (int32_t)x[t]);
            bne_store(a, i + c, j + r, (int32_t)s);
        }
    }
}

/* int8 GEMV: R rows j, j + step, ... as R far streams (as ternary_gemv512); x ^ 0x80 loaded once a step
 * for the R rows, one vpdpbusd a row and 64 bytes, 128 sum(w) taken off at the end (int8_tile's rule). */
BNE_INLINE void int8_gemv512(const bne_gemm_args *a, size_t j, int R, size_t step, size_t pf) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const size_t kv = a->k & ~(size_t)63;
    const uint8_t *w[4];
    __m512i acc[4];
    for (int r = 0; r < R; ++r) {
        w[r] = a->w + (j + r * step) * a->ldw;
        acc[r] = _mm512_setzero_si512();
    }
    for (size_t t = 0; t < kv; t += 64) {
        const __m512i xu = _mm512_xor_si512(_mm512_loadu_si512((const void *)(a->x + t)), bias);
        for (int r = 0; r < R; ++r) {
            _mm_prefetch((const char *)(w[r] + t + pf), _MM_HINT_T0);
            dpbusd_inplace(&acc[r], xu, _mm512_loadu_si512((const void *)(w[r] + t)));
        }
    }
    for (int r = 0; r < R; ++r) {
        const int8_t *wr = (const int8_t *)w[r];
        int32_t tail_w = 0;
        for (size_t t = kv; t < a->k; ++t) tail_w += wr[t];
        /* wrapping int32 arithmetic: the true result fits, so the sum is exact */
        uint32_t s = (uint32_t)_mm512_reduce_add_epi32(acc[r]) - 128u * (uint32_t)(a->wsum[j + r * step] - tail_w);
        for (size_t t = kv; t < a->k; ++t) s += (uint32_t)((int32_t)wr[t] * (int32_t)a->x[t]);
        bne_store(a, 0, j + r * step, (int32_t)s);
    }
}

/* W (n, k) int8 @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void int8_gemm_avx512(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) { /* 4 streams far apart */
        const size_t pf = bne_prefetch_offset(a->ldw), part = (n1 - n0) / 4;
        for (int q = 0; q < 4; ++q) bne_gemv_prefetch_start(a, n0 + q * part, n0 + (q + 1) * part, pf / 4);
        for (size_t i = 0; i < part; ++i) int8_gemv512(a, n0 + i, 4, part, pf);
        for (j = n0 + 4 * part; j < n1; ++j) int8_gemv512(a, j, 1, 1, pf);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) int8_tile(a, j, i, 1, 4);
        for (; i < a->m; ++i) int8_tile(a, j, i, 1, 1);
    }
}

/* x (m, k) float -> xq (m, k) int8, scales (m,). */
static int quantize_avx512(const float *x, size_t m, size_t k, size_t ldx, int8_t *xq,
                           size_t ldq, float *scales) {
    const size_t kv = k & ~(size_t)15;
    for (size_t i = 0; i < m; ++i) {
        const float *row = x + i * ldx;
        __m512 vmax = _mm512_setzero_ps();
        __mmask16 bad = 0;
        size_t t = 0;
        for (; t < kv; t += 16) {
            __m512 v = _mm512_loadu_ps(row + t);
            bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
        }
        if (bad) return BNE_ERR_NONFINITE;
        float amax = _mm512_reduce_max_ps(vmax);
        for (; t < k; ++t) {
            float v = row[t];
            if (!(v - v == 0.0f)) return BNE_ERR_NONFINITE;
            float av = v < 0.0f ? -v : v;
            if (av > amax) amax = av;
        }
        if (amax < 1e-5f) amax = 1e-5f;
        const float s = 127.0f / amax;
        scales[i] = s;
        const __m512 vs = _mm512_set1_ps(s);
        int8_t *q = xq + i * ldq;
        for (t = 0; t < kv; t += 16) {
            /* cvtps rounds half to even (default MXCSR); cvtsepi32 saturates */
            __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + t), vs));
            _mm_storeu_si128((__m128i *)(q + t), _mm512_cvtsepi32_epi8(r));
        }
        for (; t < k; ++t) q[t] = bne_quant1(row[t], s);
    }
    return BNE_OK;
}

/* Base-3: the panel GEMM above for prefill, avx2.c's kernels otherwise. */
static void ternary3_gemm_avx512(const bne_gemm_args *a, size_t n0, size_t n1) {
    if (a->m >= PANEL_MIN_M && ternary_panel_gemm512(a, n0, n1, 1)) return;
    bne_ternary3_gemm_avx2(a, n0, n1);
}

/* The base-3 GEMV, the panel unpack and the decoder glue are avx2.c's (AVX2 code runs on every
 * AVX-512 CPU; the decoder calls this table's own ternary/int8 kernels). */
const bne_kernels bne_kernels_avx512 = {
    ternary_gemm_avx512,
    int8_gemm_avx512,
    quantize_avx512,
    ternary3_gemm_avx512,
    bne_decoder_forward_avx2,
};
