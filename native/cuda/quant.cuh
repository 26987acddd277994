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

// One row: h = gated(xr[, x2r]) [-> rmsnorm(h) * w] -> qr (kp int8, zero-padded past k),
// sc = 127 / max(max|h|, 1e-5), sum = sum(qr), bad = 1 when a value is NaN or infinite; every thread
// of the block gets sc, sum and bad.  The block shape fixes the float sum's order, so bne_norm_quant
// and the persistent decode kernel (both BNE_NORM_THREADS = BNE_DECODE_THREADS wide) give the same
// bits.  hs (hs_cap floats of shared memory) keeps the row when it fits (else it is recomputed:
// same bits).  Inputs are read through L2 (__ldcg): in the decode kernel other blocks wrote them.
__device__ __forceinline__ void bne_norm_quant_row(const float *xr, const float *x2r, int k, int act, const float *w,
                                                   float eps, int8_t *qr, int kp, float *hs, int hs_cap,
                                                   float *redf, int *redi, float &sc_out, int &sum_out,
                                                   int &bad_out) {
    const bool cached = k <= hs_cap;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const float v = bne_gated(xr, x2r, act, i);
        if (cached) hs[i] = v;
        ss = __fadd_rn(ss, __fmul_rn(v, v));
    }
    float inv = 1.0f;
    if (w != nullptr) {
        ss = bne_block_sum_f(ss, redf);
        const float var = __fdiv_rn(ss, (float)k);
        inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
    }

    float amax = 0.0f;
    int bad = 0;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {  // each thread revisits its own elements
        float h = cached ? hs[i] : bne_gated(xr, x2r, act, i);
        if (w != nullptr) h = __fmul_rn(__fmul_rn(h, inv), w[i]);
        if (cached) hs[i] = h;
        if (!isfinite(h)) bad = 1;
        amax = fmaxf(amax, fabsf(h));
    }
    amax = bne_block_max_f(amax, redf);
    bad = bne_block_sum_i(bad, redi);
    const float sc = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));

    int sum = 0;
    for (int i = threadIdx.x; i < kp; i += blockDim.x) {
        int q = 0;
        if (i < k) {
            float h;
            if (cached) {
                h = hs[i];
            } else {
                h = bne_gated(xr, x2r, act, i);
                if (w != nullptr) h = __fmul_rn(__fmul_rn(h, inv), w[i]);
            }
            q = (int)fminf(fmaxf(rintf(__fmul_rn(h, sc)), -128.0f), 127.0f);
        }
        qr[i] = (int8_t)q;
        sum += q;
    }
    sum_out = bne_block_sum_i(sum, redi);
    sc_out = sc;
    bad_out = bad;
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
