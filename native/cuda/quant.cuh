// quant.cuh - per-row absmax int8 activation quantization on the GPU, optionally fused with what
// precedes it in the decoder (a gated activation, an RMSNorm).
#pragma once
#include "common.cuh"

// act: 0 = x, 1 = relu(x)^2 * x2 (BitNet's relu2 gate), 2 = silu(x) * x2 (LLaMA); as sdk/models/ops.py.
__device__ __forceinline__ float bne_gated(const float *x, const float *x2, int act, int i) {
    float v = __ldcg(x + i);
    if (act == 1) {
        const float r = fmaxf(v, 0.0f);
        v = __fmul_rn(__fmul_rn(r, r), __ldcg(x2 + i));
    } else if (act == 2) {
        v = __fmul_rn(__fdiv_rn(v, __fadd_rn(1.0f, expf(-v))), __ldcg(x2 + i));
    }
    return v;
}

#define BNE_NORM_CACHE 8192  // floats of a row kept in shared memory (longer rows are recomputed)
#define BNE_NORM_BATCH 8     // elements a thread loads at once in the first pass (rows up to 8 x block)

// One row: h = gated(xr[, x2r]) [-> rmsnorm(h) * w] -> qr (kp int8, zero-padded past k),
// sc = 127 / max(max|h|, 1e-5), sum = sum(qr), bad = 1 when a value is NaN or infinite; every thread
// of the block gets sc, sum and bad.  The block shape fixes the float sum's order, so bne_norm_quant
// and the persistent decode kernel (both BNE_NORM_THREADS = BNE_DECODE_THREADS wide) give the same
// bits.  hs (hs_cap floats of shared memory) keeps the row when it fits (else it is recomputed:
// same bits).  Inputs are read through L2 (__ldcg): in the decode kernel other blocks wrote them.
// Block-wide max of m and OR of b in one pass (order-free: every thread gets the exact result).
__device__ __forceinline__ void bne_block_max_or(float &m, int &b, float *red, int *redi) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(BNE_FULL_MASK, m, o));
        b |= __shfl_xor_sync(BNE_FULL_MASK, b, o);
    }
    __syncthreads();
    if (lane == 0) {
        red[warp] = m;
        redi[warp] = b;
    }
    __syncthreads();
    m = lane < nw ? red[lane] : -INFINITY;
    b = lane < nw ? redi[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(BNE_FULL_MASK, m, o));
        b |= __shfl_xor_sync(BNE_FULL_MASK, b, o);
    }
}

__device__ __forceinline__ int bne_quant1(float h, float sc) {
    return (int)fminf(fmaxf(rintf(__fmul_rn(h, sc)), -128.0f), 127.0f);
}

// One row: h = gated(xr[, x2r]) [-> rmsnorm(h) * w] -> qr (kp int8, zero-padded past k),
// sc = 127 / max(max|h|, 1e-5), sum = sum(qr) (when want_sum; else 0), bad = 1 when a value is NaN or
// infinite; every thread of the block gets sc, sum and bad.  The block shape fixes the float sum's
// order, so bne_norm_quant and the persistent decode kernel (both BNE_NORM_THREADS =
// BNE_DECODE_THREADS wide) give the same bits.  Rows up to BNE_NORM_BATCH x block stay in registers
// (every load of a thread in flight at once, the norm weight with them); longer rows use hs
// (hs_cap floats of shared memory) when they fit, else they are recomputed: same bits every way.
// Inputs are read through L2 (__ldcg): in the decode kernel other blocks wrote them.
__device__ __forceinline__ void bne_norm_quant_row(const float *xr, const float *x2r, int k, int act, const float *w,
                                                   float eps, int8_t *qr, int kp, float *hs, int hs_cap,
                                                   float *redf, int *redi, float &sc_out, int &sum_out,
                                                   int &bad_out, BneTrace *tr = nullptr, int ph = 0,
                                                   bool want_sum = true) {
    const int T = blockDim.x;
    float ss = 0.0f, amax = 0.0f, inv = 1.0f, sc;
    int bad = 0, sum = 0;
    if (k <= BNE_NORM_BATCH * T) {
        float v[BNE_NORM_BATCH], wv[BNE_NORM_BATCH];
#pragma unroll
        for (int u = 0; u < BNE_NORM_BATCH; ++u) {
            const int i = threadIdx.x + u * T;
            v[u] = i < k ? bne_gated(xr, x2r, act, i) : 0.0f;
            wv[u] = (w != nullptr && i < k) ? __ldg(w + i) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < BNE_NORM_BATCH; ++u)
            if (threadIdx.x + u * T < k) ss = __fadd_rn(ss, __fmul_rn(v[u], v[u]));
        if (w != nullptr) {
            ss = bne_block_sum_f(ss, redf);
            const float var = __fdiv_rn(ss, (float)k);
            inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
        }
        bne_stamp(tr, ph | 1);
#pragma unroll
        for (int u = 0; u < BNE_NORM_BATCH; ++u) {
            if (threadIdx.x + u * T < k) {
                float h = v[u];
                if (w != nullptr) h = __fmul_rn(__fmul_rn(h, inv), wv[u]);
                v[u] = h;
                if (!isfinite(h)) bad = 1;
                amax = fmaxf(amax, fabsf(h));
            }
        }
        bne_block_max_or(amax, bad, redf, redi);
        sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
        bne_stamp(tr, ph | 2);
#pragma unroll
        for (int u = 0; u < BNE_NORM_BATCH; ++u) {
            const int i = threadIdx.x + u * T;
            if (i < k) {
                const int qv = bne_quant1(v[u], sc);
                qr[i] = (int8_t)qv;
                sum += qv;
            }
        }
        for (int i = k + threadIdx.x; i < kp; i += T) qr[i] = 0;
    } else {
        const bool cached = k <= hs_cap;
        for (int i = threadIdx.x; i < k; i += T) {
            const float v = bne_gated(xr, x2r, act, i);
            if (cached) hs[i] = v;
            ss = __fadd_rn(ss, __fmul_rn(v, v));
        }
        if (w != nullptr) {
            ss = bne_block_sum_f(ss, redf);
            const float var = __fdiv_rn(ss, (float)k);
            inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
        }
        bne_stamp(tr, ph | 1);
        for (int i = threadIdx.x; i < k; i += T) {  // each thread revisits its own elements
            float h = cached ? hs[i] : bne_gated(xr, x2r, act, i);
            if (w != nullptr) h = __fmul_rn(__fmul_rn(h, inv), w[i]);
            if (cached) hs[i] = h;
            if (!isfinite(h)) bad = 1;
            amax = fmaxf(amax, fabsf(h));
        }
        bne_block_max_or(amax, bad, redf, redi);
        sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
        bne_stamp(tr, ph | 2);
        for (int i = threadIdx.x; i < kp; i += T) {
            int qv = 0;
            if (i < k) {
                float h;
                if (cached) {
                    h = hs[i];
                } else {
                    h = bne_gated(xr, x2r, act, i);
                    if (w != nullptr) h = __fmul_rn(__fmul_rn(h, inv), w[i]);
                }
                qv = bne_quant1(h, sc);
            }
            qr[i] = (int8_t)qv;
            sum += qv;
        }
    }
    if (want_sum) {
        sum = bne_block_sum_i(sum, redi);
    } else {
        __syncthreads();  // qr complete for the whole block
        sum = 0;
    }
    sum_out = sum;
    sc_out = sc;
    bad_out = bad;
    bne_stamp(tr, ph | 3);
}

// x (m, k) float32, row stride ldx [, x2 (m, k) same stride] -> h = gated(x[, x2]) [-> rmsnorm(h) * w]
//   -> xq (m, kp) int8 zero-padded past k, s (m,) = 127 / max(max|h_row|, 1e-5), xsum (m,) = sum(xq_row).
// With act = 0 and w = NULL, h = x and the result is bit-exact with quant.absmax_int8:
//   xq = clip(rint(x * s), -128, 127), rint ties to even (rintf), x * s rounded once (__fmul_rn).
// RMSNorm as ops.rms_norm: (h * (1 / sqrt(mean(h^2) + eps))) * w, the mean in float32 (block order).
// *flag |= 1 when a value is NaN or infinite.  Grid (m), block BNE_NORM_THREADS (one row per block:
// a decode step has one row, so the block is wide and the row stays in shared memory).
BNE_KERNEL void __launch_bounds__(BNE_NORM_THREADS) bne_norm_quant(const float *x, const float *x2, int ldx, int m, int k, int act,
                               const float *w, float eps, int8_t *xq, int kp, float *s, int32_t *xsum,
                               int32_t *flag) {
    __shared__ float redf[32];
    __shared__ int redi[32];
    __shared__ float hs[BNE_NORM_CACHE];
    const int row = blockIdx.x;
    bne_pdl_launch();
    bne_pdl_wait();
    if (row >= m) return;
    const float *xr = x + (size_t)row * ldx;
    const float *x2r = x2 != nullptr ? x2 + (size_t)row * ldx : nullptr;
    float sc;
    int sum, bad;
    bne_norm_quant_row(xr, x2r, k, act, w, eps, xq + (size_t)row * kp, kp, hs, BNE_NORM_CACHE, redf, redi, sc, sum, bad);
    if (threadIdx.x == 0) {
        s[row] = sc;
        xsum[row] = sum;
        if (bad && flag != nullptr) atomicOr(flag, 1);
    }
}
