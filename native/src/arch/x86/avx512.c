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
#include "bne_internal.h"

#define BNE_INLINE static inline __attribute__((always_inline))


/* Tile: NR weight rows j.. x MR activation rows i..  (NR, MR <= 4).
 * W (NR, k) packed @ x (MR, k) -> y (MR, NR). */
BNE_INLINE void ternary_tile(const bne_gemm_args *a, size_t j, size_t i, int NR, int MR, size_t pf) {
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
            if (pf && (b & 1) == 0) /* GEMV streams weights from DRAM: fetch ahead */
                _mm_prefetch((const char *)(src + pf), _MM_HINT_T0);
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

/* W (n, k) packed ternary @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void ternary_gemm_avx512(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        for (; j + 4 <= n1; j += 4) ternary_tile(a, j, 0, 4, 1, bne_prefetch_offset(a->ldw));
        for (; j < n1; ++j) ternary_tile(a, j, 0, 1, 1, 0);
        return;
    }
    for (; j + 2 <= n1; j += 2) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) ternary_tile(a, j, i, 2, 4, 0);
        for (; i < a->m; ++i) ternary_tile(a, j, i, 2, 1, 0);
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) ternary_tile(a, j, i, 1, 4, 0);
        for (; i < a->m; ++i) ternary_tile(a, j, i, 1, 1, 0);
    }
}

BNE_INLINE void int8_tile(const bne_gemm_args *a, size_t j, size_t i, int NR, int MR, size_t pf) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const size_t kv = a->k & ~(size_t)63;
    __m512i acc[4][4];
    for (int r = 0; r < NR; ++r)
        for (int c = 0; c < MR; ++c) acc[r][c] = _mm512_setzero_si512();
    for (size_t t = 0; t < kv; t += 64) {
        __m512i w[4];
        for (int r = 0; r < NR; ++r) {
            const uint8_t *src = a->w + (j + r) * a->ldw + t;
            if (pf) _mm_prefetch((const char *)(src + pf), _MM_HINT_T0);
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

/* W (n, k) int8 @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void int8_gemm_avx512(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        for (; j + 4 <= n1; j += 4) int8_tile(a, j, 0, 4, 1, bne_prefetch_offset(a->ldw));
        for (; j < n1; ++j) int8_tile(a, j, 0, 1, 1, 0);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) int8_tile(a, j, i, 1, 4, 0);
        for (; i < a->m; ++i) int8_tile(a, j, i, 1, 1, 0);
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

/* The base-3 kernel and the decoder glue are avx2.c's (AVX2 code runs on every AVX-512 CPU; the
 * decoder calls this table's own ternary/int8 kernels). */
const bne_kernels bne_kernels_avx512 = {
    ternary_gemm_avx512,
    int8_gemm_avx512,
    quantize_avx512,
    bne_ternary3_gemm_avx2,
    bne_decoder_forward_avx2,
};
