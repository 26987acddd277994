// gemv.cuh - decode-time products (one activation row): ternary W1.58 x A8 and int8 W8 x A8.
//
// A warp owns BNE_GEMV_ROWS rows and walks them in 16-byte units, lane-strided (coalesced).
// Ternary: a unit is half a 128-weight block (bytes 16h..16h+15); its 4 words hold, per 2-bit
// plane p, the codes of weights 32p + 16h + 4i .. +3 (word i), which line up with the 16
// activations at 32p + 16h of the block.  No shifts: word & (3 << 2p) per byte is 4^p * c (c = w + 1
// in {0,1,2}; up to 128 for p = 3, so the dp4a takes it unsigned), one accumulator per plane, and
// the planes are joined exactly at the end: acc_p is a multiple of 4^p, acc_p >> 2p is exact.
// 16 LOP3 + 16 dp4a per unit.  sum(w x) = sum(c x) - sum(x), sum(x) = xsum from the quantizer;
// padded weights (code 1) meet zero-padded activations.
// Bounds (k <= 65536): a plane holds k/4 weights, |acc_p| <= 4^3 * 2 * 128 * 16384 = 2^28;
// |sum(c x)| <= 2 * 128 * 65536 = 2^24; |sum(w8 x)| <= 128 * 128 * 65536 = 2^30.
#pragma once
#include "common.cuh"

template <bool TERNARY>
__device__ __forceinline__ void bne_gemv(const uint8_t *__restrict__ w, int n, int nb, const int8_t *__restrict__ xq,
                                         const int32_t *__restrict__ xsum, const float *__restrict__ s,
                                         const float *__restrict__ wscale, const float *add,
                                         int32_t *__restrict__ yi, float *y) {
    constexpr int R = BNE_GEMV_ROWS;
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
    if (row0 >= n) return;  // the whole warp leaves together
    const size_t rb = TERNARY ? (size_t)nb * 32 : (size_t)nb * 128;  // bytes per weight row
    const int units = (int)(rb >> 4);
    const uint4 *x4 = reinterpret_cast<const uint4 *>(xq);
    const uint4 *wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = reinterpret_cast<const uint4 *>(w + (size_t)min(row0 + r, n - 1) * rb);
    int acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0;

    int pacc[R][4];  // ternary: per-plane accumulators, plane p scaled by 4^p
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int p = 0; p < 4; ++p) pacc[r][p] = 0;

#pragma unroll 2
    for (int u = lane; u < units; u += 32) {
        if (TERNARY) {
            const int base = (u >> 1) * 8 + (u & 1);  // uint4 index of activations 128b + 16h
            uint4 xp[4];
#pragma unroll
            for (int p = 0; p < 4; ++p) xp[p] = __ldg(x4 + base + 2 * p);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const uint4 wv = __ldcs(wr[r] + u);
#pragma unroll
                for (int p = 0; p < 4; ++p) {
                    const uint32_t mask = 0x03030303u << (2 * p);
                    int a = pacc[r][p];
                    a = bne_dp4a_us(wv.x & mask, xp[p].x, a);
                    a = bne_dp4a_us(wv.y & mask, xp[p].y, a);
                    a = bne_dp4a_us(wv.z & mask, xp[p].z, a);
                    a = bne_dp4a_us(wv.w & mask, xp[p].w, a);
                    pacc[r][p] = a;
                }
            }
        } else {
            const uint4 xv = __ldg(x4 + u);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const uint4 wv = __ldcs(wr[r] + u);
                int a = acc[r];
                a = __dp4a((int)wv.x, (int)xv.x, a);
                a = __dp4a((int)wv.y, (int)xv.y, a);
                a = __dp4a((int)wv.z, (int)xv.z, a);
                a = __dp4a((int)wv.w, (int)xv.w, a);
                acc[r] = a;
            }
        }
    }
    if (TERNARY) {
#pragma unroll
        for (int r = 0; r < R; ++r)
            acc[r] = pacc[r][0] + (pacc[r][1] >> 2) + (pacc[r][2] >> 4) + (pacc[r][3] >> 6);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = bne_warp_sum_i(acc[r]);
    if (lane < R) {
        int a = acc[0];
#pragma unroll
        for (int r = 1; r < R; ++r)
            if (lane == r) a = acc[r];
        const int row = row0 + lane;
        if (row < n) {
            if (TERNARY) a -= xsum[0];
            if (yi != nullptr) yi[row] = a;
            if (y != nullptr) y[row] = bne_epilogue(a, wscale[row], s[0], add, (size_t)row);
        }
    }
}

// W (n, k) ternary, rows of nb*32 bytes  @  xq (nb*128,) int8 -> yi (n,) int32 and/or
// y (n,) = [add +] acc * wscale / s[0].  Grid ceil(n / (BNE_GEMV_WARPS * BNE_GEMV_ROWS)),
// block 32 * BNE_GEMV_WARPS.
BNE_KERNEL void bne_ternary_gemv(const uint8_t *w, int n, int nb, const int8_t *xq, const int32_t *xsum,
                                 const float *s, const float *wscale, const float *add, int32_t *yi,
                                 float *y) {
    bne_gemv<true>(w, n, nb, xq, xsum, s, wscale, add, yi, y);
}

// W (n, k) int8, rows of nb*128 bytes zero-padded  @  xq (nb*128,) int8 -> yi (n,) and/or y (n,)
// as bne_ternary_gemv (the LM head).  Same grid and block.
BNE_KERNEL void bne_int8_gemv(const int8_t *w, int n, int nb, const int8_t *xq, const float *s,
                              const float *wscale, const float *add, int32_t *yi, float *y) {
    bne_gemv<false>(reinterpret_cast<const uint8_t *>(w), n, nb, xq, nullptr, s, wscale, add, yi, y);
}
