// gemm.cuh - prefill products (many activation rows) on int8 tensor cores (mma.sync m16n8k32).
//
// Block: 4 warps; tile BNE_GEMM_BM (32) activation rows x BNE_GEMM_BN (128) weight rows; each warp
// 32 x 32 = 2 (m16) x 4 (n8) mma tiles.  Per 128-weight block the activation tile goes through
// shared memory (rows padded to 144 bytes: the A-fragment loads hit 32 distinct banks) and the
// weights go straight from global memory into B fragments:
//   ternary: thread (g, t) loads words t and t+4 of the 32-byte block of row n0+g; plane p of
//   those words is exactly b0/b1 of the k32 step p (weights 32p+4t.. and 32p+16+4t..), codes c = w+1
//   used as they are, sum(w x) = sum(c x) - xsum.  One 8-byte load feeds 4 k-steps.
//   int8: words 8p+t and 8p+4+t of the 128-byte block for k32 step p.
#pragma once
#include "common.cuh"

#define BNE_GEMM_LDS 144  // bytes per shared activation row (128 + 16)

template <bool TERNARY>
__device__ __forceinline__ void bne_gemm(const uint8_t *__restrict__ w, int n, int nb, const int8_t *__restrict__ xq,
                                         int m, const int32_t *__restrict__ xsum, const float *__restrict__ s,
                                         const float *__restrict__ wscale, const float *add,
                                         int32_t *__restrict__ yi, float *y) {
    __shared__ __align__(16) int8_t xs[BNE_GEMM_BM * BNE_GEMM_LDS];
    bne_pdl_launch();
    bne_pdl_wait();  // activations come from the kernel before (prefill: no weight prefetch here)
    constexpr int WW = TERNARY ? 2 : 8;  // B words per n8 tile per 128-block
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * BNE_GEMM_BM;
    const int n0 = blockIdx.x * BNE_GEMM_BN + warp * 32;
    const size_t kp = (size_t)nb * 128;
    const size_t rb = TERNARY ? (size_t)nb * 32 : kp;
    const size_t bstride = TERNARY ? 32 : 128;  // bytes of one 128-block in a weight row

    const uint32_t *wrow[4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
        wrow[nt] = reinterpret_cast<const uint32_t *>(w + (size_t)min(n0 + 8 * nt + g, n - 1) * rb);

    int acc[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;

    for (int b = 0; b < nb; ++b) {
        // the activation tile: 32 rows x 128 bytes = 256 uint4, 2 per thread; rows past m are 0
#pragma unroll
        for (int i = tid; i < BNE_GEMM_BM * 8; i += 128) {
            const int r = i >> 3, c = i & 7;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (m0 + r < m) v = __ldcg(reinterpret_cast<const uint4 *>(xq + (size_t)(m0 + r) * kp + (size_t)b * 128) + c);
            *reinterpret_cast<uint4 *>(xs + r * BNE_GEMM_LDS + c * 16) = v;
        }
        uint32_t bw[4][WW];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            const uint32_t *p = wrow[nt] + (size_t)b * (bstride / 4);
#pragma unroll
            for (int j = 0; j < WW / 2; ++j) {
                bw[nt][2 * j] = __ldcs(p + 8 * j + t);
                bw[nt][2 * j + 1] = __ldcs(p + 8 * j + 4 + t);
            }
        }
        __syncthreads();
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            uint32_t a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int8_t *base = xs + (16 * mt + g) * BNE_GEMM_LDS + 32 * p + 4 * t;
                a[mt][0] = *reinterpret_cast<const uint32_t *>(base);
                a[mt][1] = *reinterpret_cast<const uint32_t *>(base + 8 * BNE_GEMM_LDS);
                a[mt][2] = *reinterpret_cast<const uint32_t *>(base + 16);
                a[mt][3] = *reinterpret_cast<const uint32_t *>(base + 8 * BNE_GEMM_LDS + 16);
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                uint32_t b0, b1;
                if (TERNARY) {
                    b0 = (uint32_t)bne_plane(bw[nt][0], p);
                    b1 = (uint32_t)bne_plane(bw[nt][1], p);
                } else {
                    b0 = bw[nt][2 * p];
                    b1 = bw[nt][2 * p + 1];
                }
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) bne_mma_s8(acc[mt][nt], a[mt], b0, b1);
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = m0 + 16 * mt + g + 8 * half;
            if (row >= m) continue;
            const int corr = TERNARY ? __ldcg(xsum + row) : 0;
            const float sr = s != nullptr ? __ldcg(s + row) : 1.0f;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int col = n0 + 8 * nt + 2 * t + j;
                    if (col >= n) continue;
                    const int a = acc[mt][nt][2 * half + j] - corr;
                    const size_t idx = (size_t)row * n + col;
                    if (yi != nullptr) yi[idx] = a;
                    if (y != nullptr) y[idx] = bne_epilogue(a, wscale[col], sr, add, idx);
                }
        }
}

// xq (m, nb*128) int8  @  W (n, k)^T ternary (rows of nb*32 bytes) -> yi (m, n) int32 and/or
// y (m, n) = [add +] acc * wscale[col] / s[row].  Grid (ceil(n / 128), ceil(m / 32)), block 128.
BNE_KERNEL void bne_ternary_gemm(const uint8_t *w, int n, int nb, const int8_t *xq, int m,
                                 const int32_t *xsum, const float *s, const float *wscale, const float *add,
                                 int32_t *yi, float *y) {
    bne_gemm<true>(w, n, nb, xq, m, xsum, s, wscale, add, yi, y);
}

// xq (m, nb*128) int8  @  W (n, k)^T int8 (rows of nb*128 bytes, zero-padded) -> yi / y (m, n)
// as bne_ternary_gemm.  Same grid and block.
BNE_KERNEL void bne_int8_gemm(const int8_t *w, int n, int nb, const int8_t *xq, int m, const float *s,
                              const float *wscale, const float *add, int32_t *yi, float *y) {
    bne_gemm<false>(reinterpret_cast<const uint8_t *>(w), n, nb, xq, m, nullptr, s, wscale, add, yi, y);
}
