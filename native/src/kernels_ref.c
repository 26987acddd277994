/* kernels_ref.c - the portable scalar reference variant ("ref").
 *
 * Plain loops over the packed formats, written to be obviously correct.  Every
 * SIMD variant is tested bit-exact against these (and these against numpy).
 */
#include "bne_internal.h"

/* W (n, k) packed ternary @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void ternary_gemm_ref(const bne_gemm_args *a, size_t n0, size_t n1) {
    for (size_t j = n0; j < n1; ++j) {
        const uint8_t *row = a->w + j * a->ldw;
        for (size_t i = 0; i < a->m; ++i) {
            const int8_t *x = a->x + i * a->ldx;
            int32_t acc = 0;
            for (size_t t = 0; t < a->k; ++t) {
                const uint8_t *blk = row + (t / BNE_TERNARY_BLOCK) * BNE_TERNARY_BLOCK_BYTES;
                size_t r = t % BNE_TERNARY_BLOCK;
                int w = ((blk[r & 31] >> (2 * (r >> 5))) & 3) - 1;
                acc += w * (int32_t)x[t];
            }
            bne_store(a, i, j, acc);
        }
    }
}

/* W (n, k) base-3 packed ternary @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void ternary3_gemm_ref(const bne_gemm_args *a, size_t n0, size_t n1) {
    for (size_t j = n0; j < n1; ++j) {
        const uint8_t *row = a->w + j * a->ldw;
        for (size_t i = 0; i < a->m; ++i) {
            const int8_t *x = a->x + i * a->ldx;
            int32_t acc = 0;
            for (size_t t = 0; t < a->k; ++t) {
                size_t r = t % BNE_TERNARY3_BLOCK, d = r / BNE_TERNARY3_BLOCK_BYTES;
                unsigned v = row[(t / BNE_TERNARY3_BLOCK) * BNE_TERNARY3_BLOCK_BYTES + r % BNE_TERNARY3_BLOCK_BYTES];
                for (size_t s = 0; s < d; ++s) v = (v * 3) & 255u; /* digit d: d steps of t -> 3t mod 256 */
                acc += (bne_trit((uint8_t)v) - 1) * (int32_t)x[t];
            }
            bne_store(a, i, j, acc);
        }
    }
}

/* W (n, k) int8 @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void int8_gemm_ref(const bne_gemm_args *a, size_t n0, size_t n1) {
    for (size_t j = n0; j < n1; ++j) {
        const int8_t *w = (const int8_t *)(a->w + j * a->ldw);
        for (size_t i = 0; i < a->m; ++i) {
            const int8_t *x = a->x + i * a->ldx;
            int32_t acc = 0;
            for (size_t t = 0; t < a->k; ++t) acc += (int32_t)w[t] * (int32_t)x[t];
            bne_store(a, i, j, acc);
        }
    }
}

int bne_quantize_rows_scalar(const float *x, size_t m, size_t k, size_t ldx,
                             int8_t *xq, size_t ldq, float *scales) {
    for (size_t i = 0; i < m; ++i) {
        const float *row = x + i * ldx;
        float amax = 0.0f;
        for (size_t t = 0; t < k; ++t) {
            float v = row[t];
            if (!(v - v == 0.0f)) return BNE_ERR_NONFINITE; /* NaN or inf */
            float av = v < 0.0f ? -v : v;
            if (av > amax) amax = av;
        }
        if (amax < 1e-5f) amax = 1e-5f;
        float s = 127.0f / amax;
        scales[i] = s;
        int8_t *q = xq + i * ldq;
        for (size_t t = 0; t < k; ++t) q[t] = bne_quant1(row[t], s);
    }
    return BNE_OK;
}

#define BNE_DEC_FN bne_decoder_forward_ref
#include "decoder_impl.h"

const bne_kernels bne_kernels_ref = {
    ternary_gemm_ref,
    int8_gemm_ref,
    bne_quantize_rows_scalar,
    ternary3_gemm_ref,
    bne_decoder_forward_ref,
};
