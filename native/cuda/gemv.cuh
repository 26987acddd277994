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
#include "quant.cuh"

// Units of a row a lane loads into registers before bne_pdl_wait() (weights only: they do not
// depend on the kernel before): with programmatic dependent launch the weight fetch overlaps the
// previous kernel, and only the activations are read after it (the rest of a longer row after).
#define BNE_GEMV_PRE 2

template <bool TERNARY>
__device__ __forceinline__ void bne_gemv_unit(const uint4 wv, int r, int u, const uint4 *x4, int (&pacc)[BNE_GEMV_ROWS][4],
                                              int (&acc)[BNE_GEMV_ROWS], const uint4 (&xp)[4], const uint4 &xv) {
    if (TERNARY) {
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
    } else {
        int a = acc[r];
        a = __dp4a((int)wv.x, (int)xv.x, a);
        a = __dp4a((int)wv.y, (int)xv.y, a);
        a = __dp4a((int)wv.z, (int)xv.z, a);
        a = __dp4a((int)wv.w, (int)xv.w, a);
        acc[r] = a;
    }
}

// The activations of unit u: from the block's shared-memory copy when the row fits there, else
// through L2 (the kernel before wrote them: never the non-coherent read-only path).
template <bool TERNARY>
__device__ __forceinline__ void bne_gemv_x(const uint4 *x4, bool staged, int u, uint4 (&xp)[4], uint4 &xv) {
    if (TERNARY) {
        const int base = (u >> 1) * 8 + (u & 1);  // uint4 index of activations 128b + 16h
#pragma unroll
        for (int p = 0; p < 4; ++p) xp[p] = staged ? x4[base + 2 * p] : __ldcg(x4 + base + 2 * p);
    } else {
        xv = staged ? x4[u] : __ldcg(x4 + u);
    }
}

#define BNE_GEMV_XS 8192  // bytes of activations a block stages in shared memory (k <= 8192)

// The input of a GEMV that quantizes its own activations (bne_norm_gemv): h = gated(x[, x2]) of k
// floats [-> rmsnorm(h) * w], as bne_norm_quant computes it.
struct BneNormIn {
    const float *x, *x2, *w;
    int k, act;
    float eps;
    int32_t *flag;
};

// One row h (k <= BNE_GEMV_XS floats in hs) -> xb (kp int8, zero-padded), sc, sum (ternary) with the
// bits of bne_norm_quant_row at BNE_NORM_THREADS wide, whatever this block's width: the sum of squares
// runs in its order (virtual thread t sums h[t + j * BNE_NORM_THREADS] in j order, a virtual warp's 32
// sums by the xor butterfly, then the 32 warp sums by the xor butterfly); max, the NaN flag and the
// integer sum are exact in any order.  Every thread gets sc and sum; xb is complete on return.
__device__ __forceinline__ void bne_norm_quant_block(const BneNormIn &in, float *hs, int8_t *xb, int kp, float *redf,
                                                     int *redi, float &sc_out, int &sum_out, bool want_sum) {
    constexpr int VT = BNE_NORM_THREADS;
    const int T = blockDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = T >> 5;
    const int k = in.k;
    constexpr int B = 8;  // loads a thread keeps in flight at once (a loop of single loads is a chain
                          // of L2 round trips)
    for (int i0 = tid; i0 < k; i0 += B * T) {
        float v[B];
#pragma unroll
        for (int b = 0; b < B; ++b) v[b] = i0 + b * T < k ? bne_gated(in.x, in.x2, in.act, i0 + b * T) : 0.0f;
#pragma unroll
        for (int b = 0; b < B; ++b)
            if (i0 + b * T < k) hs[i0 + b * T] = v[b];
    }
    __syncthreads();
    float inv = 1.0f;
    if (in.w != nullptr) {
        for (int vw = warp; vw < VT / 32; vw += nwarps) {
            float ss = 0.0f;
            for (int i = vw * 32 + lane; i < k; i += VT) ss = __fadd_rn(ss, __fmul_rn(hs[i], hs[i]));
            ss = bne_warp_sum_f(ss);
            if (lane == 0) redf[vw] = ss;
        }
        __syncthreads();
        const float ss = bne_warp_sum_f(redf[lane]);  // VT / 32 = 32 warp sums
        const float var = __fdiv_rn(ss, (float)k);
        inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, in.eps)));
    }
    float amax = 0.0f;
    int bad = 0;
    for (int i0 = tid; i0 < k; i0 += B * T) {  // each thread revisits its own elements
        float wv[B];
#pragma unroll
        for (int b = 0; b < B; ++b) wv[b] = (in.w != nullptr && i0 + b * T < k) ? __ldg(in.w + i0 + b * T) : 1.0f;
#pragma unroll
        for (int b = 0; b < B; ++b) {
            const int i = i0 + b * T;
            if (i < k) {
                float h = hs[i];
                if (in.w != nullptr) h = __fmul_rn(__fmul_rn(h, inv), wv[b]);
                hs[i] = h;
                if (!isfinite(h)) bad = 1;
                amax = fmaxf(amax, fabsf(h));
            }
        }
    }
    bne_block_max_or(amax, bad, redf, redi);
    const float sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
    int sum = 0;
    for (int i = tid; i < kp; i += T) {
        const int qv = i < k ? bne_quant1(hs[i], sc) : 0;
        xb[i] = (int8_t)qv;
        sum += qv;
    }
    if (want_sum) {
        sum = bne_block_sum_i(sum, redi);  // its barriers also complete xb
    } else {
        __syncthreads();
        sum = 0;
    }
    if (bad && in.flag != nullptr && blockIdx.x == 0 && tid == 0) atomicOr(in.flag, 1);
    sc_out = sc;
    sum_out = sum;
}

template <bool TERNARY, bool NORM = false>
__device__ __forceinline__ void bne_gemv(const uint8_t *__restrict__ w, int n, int nb, const int8_t *__restrict__ xq,
                                         const int32_t *__restrict__ xsum, const float *__restrict__ s,
                                         const float *__restrict__ wscale, const float *add,
                                         int32_t *__restrict__ yi, float *y, unsigned long long *amax = nullptr,
                                         const BneNormIn *nin = nullptr, uint4 *nxs = nullptr, float *nhs = nullptr) {
    constexpr int R = BNE_GEMV_ROWS, PRE = BNE_GEMV_PRE;
    // NORM: the caller's shared memory (nxs: BNE_GEMV_XS bytes, nhs: BNE_GEMV_XS floats), one copy for
    // both instantiations of its kernel
    __shared__ __align__(16) uint4 xs_own[NORM ? 1 : BNE_GEMV_XS / 16];
    __shared__ float redf[32];
    __shared__ int redi[32];
    uint4 *xs = NORM ? nxs : xs_own;
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
    const bool active = row0 < n;  // a warp past the last row still helps stage x and waits
    bne_pdl_launch();
    const size_t rb = TERNARY ? (size_t)nb * 32 : (size_t)nb * 128;  // bytes per weight row
    const int units = (int)(rb >> 4);
    const uint4 *wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = reinterpret_cast<const uint4 *>(w + (size_t)min(row0 + r, n - 1) * rb);
    int acc[R];
    int pacc[R][4];  // ternary: per-plane accumulators, plane p scaled by 4^p
#pragma unroll
    for (int r = 0; r < R; ++r) {
        acc[r] = 0;
#pragma unroll
        for (int p = 0; p < 4; ++p) pacc[r][p] = 0;
    }
    // weights first (independent of the kernel before), then wait for the activations
    uint4 wpre[PRE][R];
#pragma unroll
    for (int i = 0; i < PRE; ++i) {
        const int u = lane + 32 * i;
#pragma unroll
        for (int r = 0; r < R; ++r)
            wpre[i][r] = (active && u < units) ? __ldcs(wr[r] + u) : make_uint4(0u, 0u, 0u, 0u);
    }
    bne_pdl_wait();
    const int xunits = nb * 8;  // 16-byte units of the activation row (nb * 128 bytes)
    const bool staged = NORM || xunits * 16 <= BNE_GEMV_XS;
    const uint4 *x4 = reinterpret_cast<const uint4 *>(xq);
    float s_row = 0.0f;
    int xsum_row = 0;
    if (NORM) {  // quantize the row here (every block the same bits), into shared memory
        bne_norm_quant_block(*nin, nhs, reinterpret_cast<int8_t *>(xs), nb * 128, redf, redi, s_row, xsum_row, TERNARY);
        x4 = xs;
    } else {
        if (staged) {
            for (int i = threadIdx.x; i < xunits; i += blockDim.x) xs[i] = __ldcg(x4 + i);
            __syncthreads();
            x4 = xs;
        }
        s_row = __ldcg(s);
        if (TERNARY) xsum_row = __ldcg(xsum);
    }
    if (!active) return;  // the whole warp leaves together
#pragma unroll
    for (int i = 0; i < PRE; ++i) {
        const int u = lane + 32 * i;
        if (u < units) {
            uint4 xp[4], xv;
            bne_gemv_x<TERNARY>(x4, staged, u, xp, xv);
#pragma unroll
            for (int r = 0; r < R; ++r) bne_gemv_unit<TERNARY>(wpre[i][r], r, u, x4, pacc, acc, xp, xv);
        }
    }
#pragma unroll 2
    for (int u = lane + 32 * PRE; u < units; u += 32) {
        uint4 xp[4], xv;
        bne_gemv_x<TERNARY>(x4, staged, u, xp, xv);
#pragma unroll
        for (int r = 0; r < R; ++r) bne_gemv_unit<TERNARY>(__ldcs(wr[r] + u), r, u, x4, pacc, acc, xp, xv);
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
        unsigned long long key = 0;
        if (row < n) {
            if (TERNARY) a -= xsum_row;
            if (yi != nullptr) yi[row] = a;
            const float v = bne_epilogue(a, __ldg(wscale + row), s_row, add, (size_t)row);
            if (y != nullptr) y[row] = v;
            key = bne_argmax_key(v, row);
        }
        if (amax != nullptr) {  // the warp's best of its R rows, then one atomic (order-free: exact)
#pragma unroll
            for (int o = 1; o < R; o <<= 1) {
                const unsigned long long other = __shfl_xor_sync((1u << R) - 1u, key, o);
                key = other > key ? other : key;
            }
            if (lane == 0 && key > __ldcg(amax)) atomicMax(amax, key);
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

// The LM head of a greedy decode step: y = W xq as bne_ternary_gemv / bne_int8_gemv (ternary != 0 or
// 0), and *key = max over rows of bne_argmax_key(y[row], row), so the argmax of the logits in
// np.argmax's order is 0xffffffff - (key & 0xffffffff) (the host zeroes *key before the launch).
// Same grid and block as the GEMVs.
BNE_KERNEL void bne_head_argmax(const uint8_t *w, int n, int nb, int ternary, const int8_t *xq, const int32_t *xsum,
                                const float *s, const float *wscale, float *y, uint64_t *key) {
    unsigned long long *k = reinterpret_cast<unsigned long long *>(key);
    if (ternary)
        bne_gemv<true>(w, n, nb, xq, xsum, s, wscale, nullptr, nullptr, y, k);
    else
        bne_gemv<false>(w, n, nb, xq, nullptr, s, wscale, nullptr, nullptr, y, k);
}

// A decode GEMV that quantizes its own input row (no bne_norm_quant before it): every block computes
// h = gated(x[, x2]) [-> rmsnorm(h) * norm] of the k floats and its int8 quantization into shared
// memory with the bits of bne_norm_quant (same s and sum), then y = [add +] W xq as bne_ternary_gemv /
// bne_int8_gemv (ternary != 0 or 0); with key != NULL also the argmax as bne_head_argmax (the host
// zeroes *key first).  *flag |= 1 when h has a NaN or infinity.  k <= 8192 (nb * 128 <= 8192).
// Same grid and block as the GEMVs.
BNE_KERNEL void bne_norm_gemv(const uint8_t *w, int n, int nb, int ternary, const float *x, const float *x2, int k,
                              int act, const float *norm, float eps, const float *wscale, const float *add, float *y,
                              int32_t *flag, uint64_t *key) {
    __shared__ __align__(16) uint4 xs[BNE_GEMV_XS / 16];
    __shared__ float hs[BNE_GEMV_XS];
    const BneNormIn in{x, x2, norm, k, act, eps, flag};
    unsigned long long *kk = reinterpret_cast<unsigned long long *>(key);
    if (ternary)
        bne_gemv<true, true>(w, n, nb, nullptr, nullptr, nullptr, wscale, add, nullptr, y, kk, &in, xs, hs);
    else
        bne_gemv<false, true>(w, n, nb, nullptr, nullptr, nullptr, wscale, add, nullptr, y, kk, &in, xs, hs);
}
