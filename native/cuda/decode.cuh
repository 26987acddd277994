// decode.cuh - one decode step of the whole decoder as ONE persistent kernel (bne_decode_step).
//
// A cooperative launch of one BNE_DECODE_THREADS-wide block per SM walks the layers with a grid
// barrier between the phases that need all of the previous phase's output (5 a layer):
//   A  input RMSNorm + quantize (every block, redundantly, into shared memory) -> fused q/k/v GEMV
//   B  RoPE + KV-cache write + attention, one block per head (the others prefetch weights into L2)
//   C  sub-norm + quantize -> o_proj GEMV adding into the residual
//   D  post-attention RMSNorm + quantize -> fused gate/up GEMV
//   E  act(gate) * up + sub-norm + quantize -> down_proj GEMV adding into the residual
// then the final norm, the LM head and the argmax of the logits.  The host's decode step is one
// launch (in a CUDA graph with the copies): no kernel-launch floor per operation.
//
// GEMV partition: block b owns rows [b n / G, (b + 1) n / G) of a matrix; its weight bytes are
// 16-byte units, thread t always takes unit column j = t % upr (upr = units a row) of rows
// t / upr + i * rpi (rpi = BNE_DECODE_THREADS / upr), so its activations (4 x 16 bytes for a ternary
// unit, 16 for int8) are loaded from shared memory once per phase.  A unit's dot product is the
// GEMV kernel's (ternary: 16 LOP3 + 16 dp4a, planes joined by exact shifts); the lanes of one row
// are summed by a segmented shuffle reduction and one shared-memory atomicAdd per row segment
// (integers: order-free, exact).  Each phase's weight rows (as many as the buffer of PF x 16 bytes a
// thread holds) are copied into shared memory at the end of the previous phase — one bulk (TMA)
// copy on sm_90, cp.async by every thread before — so they stream in while the grid waits at the
// barrier and the next norm runs; rows past the buffer are read from global memory, 2-4 in flight.
//
// Numerics: the same device functions as the one-operation kernels (bne_norm_quant_row,
// bne_attend, the ADR 0003 epilogue) with the same block width, so a decode step gives exactly the
// bits of the multi-kernel path and of prefill.
#pragma once
#include "common.cuh"
#include "glue.cuh"
#include "quant.cuh"

#define BNE_DT BNE_DECODE_THREADS

// Plan words are re-read where they are used (volatile: the compiler may not keep them live in
// registers across the layer loop, which would spill; the reads hit L1).
__device__ __forceinline__ unsigned long long bne_pw(const uint64_t *plan, int i) {
    unsigned long long v;
    asm volatile("ld.global.nc.u64 %0, [%1];" : "=l"(v) : "l"(plan + i));
    return v;
}
template <class T>
__device__ __forceinline__ T *bne_pp(const uint64_t *plan, int i) {
    return reinterpret_cast<T *>(bne_pw(plan, i));
}
__device__ __forceinline__ int bne_pi(const uint64_t *plan, int i) { return (int)bne_pw(plan, i); }
__device__ __forceinline__ float bne_pf(const uint64_t *plan, int i) {
    return __int_as_float((int)(unsigned)bne_pw(plan, i));
}

// The rows of one matrix (or a chunk of them) that this block computes.
struct BnePhase {
    const uint8_t *w;  // first byte of row r0
    int rb;            // bytes a row
    int upr;           // 16-byte units a row (<= BNE_DT)
    int rpi;           // rows per iteration
    int r0, rows;      // first row, row count
    int iters;         // ceil(rows / rpi)
};

__device__ __forceinline__ BnePhase bne_phase(const void *w, int k, bool ternary, int r0, int r1) {
    BnePhase p;
    const int nb = (k + 127) >> 7;
    p.rb = ternary ? nb * 32 : nb * 128;
    p.upr = p.rb >> 4;
    p.rpi = BNE_DT / p.upr;
    p.r0 = r0;
    p.rows = r1 - r0;
    p.iters = (p.rows + p.rpi - 1) / p.rpi;
    p.w = static_cast<const uint8_t *>(w) + (size_t)r0 * p.rb;
    return p;
}

__device__ __forceinline__ void bne_block_rows(int n, int &r0, int &r1) {
    r0 = (int)(((long long)blockIdx.x * n) / gridDim.x);
    r1 = (int)(((long long)(blockIdx.x + 1) * n) / gridDim.x);
}

// Rows of the phase's slice that a prefetch buffer of bufb bytes holds.
__device__ __forceinline__ int bne_buf_rows(const BnePhase &p, int bufb) { return min(p.rows, bufb / p.rb); }

// Start bringing the first rows of the phase's slice (as many as bufb bytes hold) into wbuf, laid
// out as in global memory (row rl, unit j at rl * upr + j).  sm_90: one bulk copy by thread 0 on
// *bar; older GPUs: cp.async by every thread of the units it will use.  After a __syncthreads that
// follows the last read of wbuf.  `seq` counts the copies issued (the mbarrier's parity).
__device__ __forceinline__ void bne_phase_prefetch(const BnePhase &p, uint4 *wbuf, int bufb, uint64_t *bar,
                                                   unsigned &seq) {
    const int nr = bne_buf_rows(p, bufb);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) bne_bulk_g2s(wbuf, p.w, (unsigned)nr * (unsigned)p.rb, bar);
#else
    const int t = threadIdx.x, rt = t / p.upr, jt = t - rt * p.upr;
    if (rt < p.rpi)
        for (int rl = rt; rl < nr; rl += p.rpi) bne_cp_async16(wbuf + rl * p.upr + jt, p.w + (size_t)rl * p.rb + 16 * jt);
    bne_cp_async_commit();
#endif
    ++seq;
}

// Wait for the latest prefetch (sequence number seq - 1).
__device__ __forceinline__ void bne_phase_wait(uint64_t *bar, unsigned seq) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    bne_mbar_wait(bar, seq - 1u);
#else
    bne_cp_async_wait_all();
#endif
}

// One 16-byte unit of a ternary row against its 64 activations (planes as in gemv.cuh).
__device__ __forceinline__ int bne_unit_ternary(const uint4 w, const uint4 xp[4]) {
    int acc = 0;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        const uint32_t mask = 0x03030303u << (2 * p);
        int a = 0;
        a = bne_dp4a_us(w.x & mask, xp[p].x, a);
        a = bne_dp4a_us(w.y & mask, xp[p].y, a);
        a = bne_dp4a_us(w.z & mask, xp[p].z, a);
        a = bne_dp4a_us(w.w & mask, xp[p].w, a);
        acc += a >> (2 * p);  // a is a multiple of 4^p: exact
    }
    return acc;
}

__device__ __forceinline__ int bne_unit_int8(const uint4 w, const uint4 x) {
    int a = 0;
    a = __dp4a((int)w.x, (int)x.x, a);
    a = __dp4a((int)w.y, (int)x.y, a);
    a = __dp4a((int)w.z, (int)x.z, a);
    a = __dp4a((int)w.w, (int)x.w, a);
    return a;
}

// acc[r] += sum over the row's units of (ternary or int8 weights) . xq, for the block's rows.
// Call with every thread of the block (shuffles); acc must hold zeros (or a previous chunk's
// already-stored rows zeroed by bne_phase_store).
template <bool TERNARY>
// nbuf: rows of the slice already prefetched into wbuf (0: none; then no wait); bar/seq: bne_phase_wait.
__device__ __forceinline__ void bne_phase_dot(const BnePhase &p, const uint4 *wbuf, int nbuf, uint64_t *bar, unsigned seq,
                                              const int8_t *xq, int *acc, BneTrace *tr, int ph) {
    const int t = threadIdx.x, lane = t & 31;
    const int rt = t / p.upr, jt = t - rt * p.upr;
    const bool active = rt < p.rpi;
    const int lim = active ? min(31 - lane, p.upr - 1 - jt) : -1;  // lanes to the right in the same row
    const bool head = active && (jt == 0 || lane == 0);            // first lane of a row segment
    uint4 xp[TERNARY ? 4 : 1];
    if (TERNARY) {
        const int base = (jt >> 1) * 128 + 16 * (jt & 1);
#pragma unroll
        for (int q = 0; q < 4; ++q) xp[q] = *reinterpret_cast<const uint4 *>(xq + base + 32 * q);
    } else {
        xp[0] = *reinterpret_cast<const uint4 *>(xq + 16 * jt);
    }
    // sum(w x) = sum(c x) - sum(x): each unit subtracts the sum of its own 64 activations (exact),
    // so no block-wide activation sum is needed
    int xs_t = 0;
    if (TERNARY) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            xs_t = __dp4a(0x01010101, (int)xp[q].x, xs_t);
            xs_t = __dp4a(0x01010101, (int)xp[q].y, xs_t);
            xs_t = __dp4a(0x01010101, (int)xp[q].z, xs_t);
            xs_t = __dp4a(0x01010101, (int)xp[q].w, xs_t);
        }
    }
    if (nbuf > 0) bne_phase_wait(bar, seq);
    bne_stamp(tr, ph | 4);
    constexpr int B = TERNARY ? 2 : 4;  // units in flight (registers: 4 words each)
    for (int i0 = 0; i0 < p.iters; i0 += B) {
        uint4 wv[B];
#pragma unroll
        for (int u = 0; u < B; ++u) {
            const int i = i0 + u, rl = rt + i * p.rpi;
            wv[u] = make_uint4(0u, 0u, 0u, 0u);
            if (active && i < p.iters && rl < p.rows)
                wv[u] = rl < nbuf ? wbuf[rl * p.upr + jt]
                                  : __ldcs(reinterpret_cast<const uint4 *>(p.w + (size_t)rl * p.rb) + jt);
        }
#pragma unroll
        for (int u = 0; u < B; ++u) {
            const int i = i0 + u, rl = rt + i * p.rpi;
            if (i >= p.iters) break;  // the same for the whole block
            const bool ok = active && rl < p.rows;
            int v = 0;
            if (ok) v = TERNARY ? bne_unit_ternary(wv[u], xp) - xs_t : bne_unit_int8(wv[u], xp[0]);
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int y = __shfl_down_sync(BNE_FULL_MASK, v, o);
                if (o <= lim) v += y;
            }
            if (ok && head) atomicAdd(acc + rl, v);
        }
    }
    bne_stamp(tr, ph | 5);
}

// y[row] = [y[row] +] ((acc - corr) * wscale[row]) / s for the block's rows (the ADR 0003 epilogue,
// bit-exact with bne_epilogue); zeroes acc.  After a __syncthreads that follows bne_phase_dot.
__device__ __forceinline__ void bne_phase_store(const BnePhase &p, int corr, float s, const float *wscale, bool add,
                                                float *y, int *acc, float ws0, float y0) {
    for (int r = threadIdx.x; r < p.rows; r += BNE_DT) {
        const int a = acc[r] - corr;
        acc[r] = 0;
        const int row = p.r0 + r;
        const bool first = r == (int)threadIdx.x;  // ws0, y0: this row's scale and residual, loaded early
        float v = __fdiv_rn(__fmul_rn(__int2float_rn(a), first ? ws0 : __ldg(wscale + row)), s);
        if (add) v = __fadd_rn(first ? y0 : __ldcg(y + row), v);
        y[row] = v;
    }
}

__device__ __forceinline__ void bne_dot(bool ternary, const BnePhase &p, const uint4 *wbuf, int nbuf, uint64_t *bar,
                                        unsigned seq, const int8_t *xq, int *acc, BneTrace *tr, int ph) {
    if (ternary)
        bne_phase_dot<true>(p, wbuf, nbuf, bar, seq, xq, acc, tr, ph);
    else
        bne_phase_dot<false>(p, wbuf, nbuf, bar, seq, xq, acc, tr, ph);
}

// np.argmax order: NaN beats everything, then the larger value, then the smaller index.
__device__ __forceinline__ bool bne_better(float v, int i, float bv, int bi) {
    if (isnan(v)) return !isnan(bv) || i < bi;
    if (isnan(bv)) return false;
    return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void bne_warp_argmax(float &v, int &i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(BNE_FULL_MASK, v, o);
        const int oi = __shfl_xor_sync(BNE_FULL_MASK, i, o);
        if (bne_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

// (v, i) of the whole block to every thread; red/redi hold 32 slots each.
__device__ __forceinline__ void bne_block_argmax(float &v, int &i, float *red, int *redi) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    bne_warp_argmax(v, i);
    __syncthreads();
    if (lane == 0) {
        red[warp] = v;
        redi[warp] = i;
    }
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    i = lane < nw ? redi[lane] : 0x7fffffff;
    bne_warp_argmax(v, i);
}

// The phases of a layer.  Plan words are read at their point of use (see bne_pw).
#define BNE_I(w) ((int)bne_pw(plan, w))
#define BNE_P(T, w) bne_pp<T>(plan, w)
#define BNE_LP(T, w) bne_pp<T>(Lp, w)

struct BneSmem {  // the block's dynamic shared memory (and the weight copies' mbarrier)
    uint64_t *bar;
    uint4 *wbuf;
    int8_t *xq;
    int *acc;
    float *region;
};

__device__ __forceinline__ BneSmem bne_smem(const uint64_t *plan, unsigned char *dsm) {
    BneSmem m;
    m.wbuf = reinterpret_cast<uint4 *>(dsm);
    m.xq = reinterpret_cast<int8_t *>(dsm + BNE_I(BNE_PLAN_SMEM_XQ));
    m.acc = reinterpret_cast<int *>(dsm + BNE_I(BNE_PLAN_SMEM_ACC));
    m.region = reinterpret_cast<float *>(dsm + BNE_I(BNE_PLAN_SMEM_REGION));
    return m;
}

// Norm + quantize one activation row into shared memory; NaN/inf set bit 0 of the status word.
__device__ __noinline__ void bne_dec_norm(const uint64_t *plan, const BneSmem &m, const float *xr, const float *x2r,
                                             int k, int act, const float *w, float *redf, int *redi, float &s, int &xs,
                                             BneTrace *tr, int ph) {
    int bad;
    bne_norm_quant_row(xr, x2r, k, act, w, __int_as_float(BNE_I(BNE_PLAN_EPS)), m.xq, ((k + 127) >> 7) << 7, m.region,
                       BNE_I(BNE_PLAN_REGION_FLOATS), redf, redi, s, xs, bad, tr, ph, false);
    if (bad && threadIdx.x == 0) atomicOr(BNE_P(int, BNE_PLAN_FLAG), 1);
}

// y = [y +] W xq for this block's rows of W (n rows, k columns), then start prefetching `next` (the
// next phase's matrix, its first next_rows_cap rows a block) into the buffer.
__device__ __noinline__ void bne_dec_gemv(const void *w, int n, int k, bool ternary, const float *wscale, bool add, float *y,
                                          const BneSmem &m, int bufb, unsigned &seq, float s, const void *next_w,
                                          int next_n, int next_k, bool next_ternary, int next_rows_cap, BneTrace *tr,
                                          int ph) {
    int r0, r1;
    bne_block_rows(n, r0, r1);
    const BnePhase p = bne_phase(w, k, ternary, r0, r1);
    float ws0 = 0.0f, y0 = 0.0f;  // the epilogue's loads, in flight during the dot
    if ((int)threadIdx.x < p.rows) {
        ws0 = __ldg(wscale + r0 + threadIdx.x);
        if (add) y0 = __ldcg(y + r0 + threadIdx.x);  // this block wrote these rows last: final here
    }
    bne_dot(ternary, p, m.wbuf, bne_buf_rows(p, bufb), m.bar, seq, m.xq, m.acc, tr, ph);
    __syncthreads();  // wbuf read, acc complete
    bne_stamp(tr, ph | 7);
    if (next_w != nullptr) {
        int q0, q1;
        bne_block_rows(next_n, q0, q1);
        bne_phase_prefetch(bne_phase(next_w, next_k, next_ternary, q0, min(q1, q0 + next_rows_cap)), m.wbuf, bufb, m.bar,
                           seq);
    }
    bne_stamp(tr, ph | 6);
    bne_phase_store(p, 0, s, wscale, add, y, m.acc, ws0, y0);  // xsum already subtracted per unit
    bne_stamp(tr, ph | 8);
}

// Phase B for the heads this block owns: RoPE of q (into shared memory) and of the new key, the
// key and value written at pos (every block of a KV group writes the same bits, then reads its own
// write), attention over positions 0 .. pos.
__device__ __noinline__ void bne_dec_attention(const uint64_t *plan, const uint64_t *Lp, const BneSmem &m, float *red,
                                               BneTrace *tr) {
    const int H = BNE_I(BNE_PLAN_HEADS), KV = BNE_I(BNE_PLAN_KV_HEADS), hd = BNE_I(BNE_PLAN_HEAD_DIM);
    const int cap = BNE_I(BNE_PLAN_CAPACITY), pos = *BNE_P(const int, BNE_PLAN_POS);
    const float *qkv = BNE_P(const float, BNE_PLAN_QKV);
    float *kc = BNE_LP(float, BNE_PLAN_L_K_CACHE), *vc = BNE_LP(float, BNE_PLAN_L_V_CACHE);
    for (int h = blockIdx.x; h < H; h += gridDim.x) {
        const int kvh = h / (H / KV);
        float *qs = m.region, *sc = m.region + hd, *part = m.region + hd + cap;
        const float *c = BNE_P(const float, BNE_PLAN_COS) + (size_t)pos * hd;
        const float *sn = BNE_P(const float, BNE_PLAN_SIN) + (size_t)pos * hd;
        bne_rope_vec(qkv + (size_t)h * hd, c, sn, hd, qs);
        bne_rope_vec(qkv + (size_t)(H + kvh) * hd, c, sn, hd, kc + ((size_t)kvh * cap + pos) * hd);
        float *vd = vc + ((size_t)kvh * cap + pos) * hd;
        const float *vs = qkv + (size_t)(H + KV + kvh) * hd;
        for (int d = threadIdx.x; d < hd; d += BNE_DT) vd[d] = __ldcg(vs + d);
        __syncthreads();
        bne_stamp(h == (int)blockIdx.x ? tr : nullptr, 0x2b);
        bne_attend(qs, min(pos + 1, cap), hd, kc + (size_t)kvh * cap * hd, vc + (size_t)kvh * cap * hd,
                   __int_as_float(BNE_I(BNE_PLAN_SCALE)), sc, part, red, BNE_P(float, BNE_PLAN_ATTN) + (size_t)h * hd,
                   h == (int)blockIdx.x ? tr : nullptr);
        __syncthreads();
    }
}

// Bytes of this block's rows of a matrix, for an L2 prefetch.
__device__ __forceinline__ void bne_prefetch_rows(const void *w, int n, int k, bool ternary, size_t cap_bytes) {
    int r0, r1;
    bne_block_rows(n, r0, r1);
    const size_t rb = (size_t)((k + 127) >> 7) * (ternary ? 32 : 128);
    bne_prefetch_l2(static_cast<const uint8_t *>(w) + (size_t)r0 * rb, min((size_t)(r1 - r0) * rb, cap_bytes));
}

// The LM head over this block's rows, in chunks of ACC_ROWS rows (the first prefetched): logits and
// this block's (max, lowest id).
__device__ __noinline__ void bne_dec_head(const uint64_t *plan, const BneSmem &m, float s, unsigned seq, float &bv_out,
                                          int &bi_out, BneTrace *tr) {
    const int t = threadIdx.x, hidden = BNE_I(BNE_PLAN_HIDDEN), acc_rows = BNE_I(BNE_PLAN_ACC_ROWS);
    const bool hter = BNE_I(BNE_PLAN_HEAD_TERNARY) != 0;
    float bv = -INFINITY;
    int bi = 0x7fffffff, r0, r1;
    bne_block_rows(BNE_I(BNE_PLAN_VOCAB), r0, r1);
    for (int c0 = r0; c0 < r1; c0 += acc_rows) {
        const BnePhase p = bne_phase(BNE_P(const void, BNE_PLAN_HEAD_W), hidden, hter, c0, min(r1, c0 + acc_rows));
        const int nbuf = c0 == r0 ? bne_buf_rows(p, BNE_I(BNE_PLAN_PF) * BNE_DT * 16) : 0;  // chunk 0 was prefetched
        bne_dot(hter, p, m.wbuf, nbuf, m.bar, seq, m.xq, m.acc, tr, 0x60);
        __syncthreads();
        const float *hscale = BNE_P(const float, BNE_PLAN_HEAD_SCALE);
        float *logits = BNE_P(float, BNE_PLAN_LOGITS);
        for (int r = t; r < p.rows; r += BNE_DT) {
            const int a = m.acc[r];  // a ternary head's sum(x) is subtracted per unit
            m.acc[r] = 0;
            const int row = p.r0 + r;
            const float v = __fdiv_rn(__fmul_rn(__int2float_rn(a), __ldg(hscale + row)), s);
            logits[row] = v;
            if (bne_better(v, row, bv, bi)) {
                bv = v;
                bi = row;
            }
        }
        __syncthreads();
    }
    bv_out = bv;
    bi_out = bi;
}

// plan: see BNE_PLAN_* in bne_cuda.h.  Grid: one block per SM (cooperative launch), block
// BNE_DECODE_THREADS, dynamic shared memory as the plan's offsets say.
BNE_KERNEL void __launch_bounds__(BNE_DECODE_THREADS, 1) bne_decode_step(const uint64_t *plan) {
    extern __shared__ __align__(16) unsigned char bne_dsm[];
    __shared__ float redf[32];
    __shared__ int redi[32];
    const int t = threadIdx.x;
    __shared__ __align__(8) uint64_t wbar;  // completion of the weight prefetches (sm_90 bulk copies)
    BneSmem m = bne_smem(plan, bne_dsm);
    m.bar = &wbar;
    bne_mbar_init(&wbar);
    unsigned seq = 0;  // weight prefetches issued
    unsigned *bar = BNE_P(unsigned, BNE_PLAN_BARRIER);
    int *status = BNE_P(int, BNE_PLAN_FLAG);
    unsigned target = 0;
    float s;
    int xs;
    const size_t all = ~(size_t)0;
    BneTrace tr{nullptr, 0};  // stamps: see bne_stamp (common.cuh)
    if (bne_pw(plan, BNE_PLAN_TRACE) != 0 && (blockIdx.x == 0 || blockIdx.x == gridDim.x - 1))
        tr.p = BNE_P(unsigned long long, BNE_PLAN_TRACE) + (blockIdx.x == 0 ? 0 : 2 * BNE_TRACE_MAX);
    const int opts = BNE_I(BNE_PLAN_OPTS);

    for (int r = t; r < BNE_I(BNE_PLAN_ACC_ROWS); r += BNE_DT) m.acc[r] = 0;  // visible after the first norm
    {
        const uint64_t *Lp = plan + BNE_PLAN_HEADER;
        const int H = BNE_I(BNE_PLAN_HEADS), KV = BNE_I(BNE_PLAN_KV_HEADS), hd = BNE_I(BNE_PLAN_HEAD_DIM);
        int r0, r1;
        bne_block_rows((H + 2 * KV) * hd, r0, r1);
        bne_phase_prefetch(bne_phase(BNE_LP(const void, BNE_PLAN_L_QKV), BNE_I(BNE_PLAN_HIDDEN),
                                     bne_pw(Lp, BNE_PLAN_L_TERNARY) & 1, r0, r1), m.wbuf,
                           BNE_I(BNE_PLAN_PF) * BNE_DT * 16, m.bar, seq);
    }

    bne_stamp(&tr, 0x00);
    const int nl = BNE_I(BNE_PLAN_LAYERS);
    for (int l = 0; l < nl; ++l) {
        const uint64_t *Lp = plan + BNE_PLAN_HEADER + (size_t)l * BNE_PLAN_LAYER;
        const uint64_t *Ln = l + 1 < nl ? Lp + BNE_PLAN_LAYER : nullptr;
        const unsigned tern = (unsigned)bne_pw(Lp, BNE_PLAN_L_TERNARY);
        const int hidden = BNE_I(BNE_PLAN_HIDDEN), inter = BNE_I(BNE_PLAN_INTER);
        const int qdim = BNE_I(BNE_PLAN_HEADS) * BNE_I(BNE_PLAN_HEAD_DIM);
        const int nqkv = qdim + 2 * BNE_I(BNE_PLAN_KV_HEADS) * BNE_I(BNE_PLAN_HEAD_DIM);
        const int bufb = BNE_I(BNE_PLAN_PF) * BNE_DT * 16;  // prefetch buffer bytes

        // ---- A: input norm -> q/k/v
        if (!(opts & 2) && (int)blockIdx.x < BNE_I(BNE_PLAN_HEADS)) {  // this block attends next: its KV rows into L2
            const int hd = BNE_I(BNE_PLAN_HEAD_DIM), cap = BNE_I(BNE_PLAN_CAPACITY);
            const int kvh = blockIdx.x / (BNE_I(BNE_PLAN_HEADS) / BNE_I(BNE_PLAN_KV_HEADS));
            const size_t bytes = (size_t)(*BNE_P(const int, BNE_PLAN_POS)) * hd * 4;
            bne_prefetch_l2(BNE_LP(const float, BNE_PLAN_L_K_CACHE) + (size_t)kvh * cap * hd, bytes);
            bne_prefetch_l2(BNE_LP(const float, BNE_PLAN_L_V_CACHE) + (size_t)kvh * cap * hd, bytes);
        }
        bne_dec_norm(plan, m, BNE_P(const float, BNE_PLAN_X), nullptr, hidden, 0, BNE_LP(const float, BNE_PLAN_L_IN_NORM),
                     redf, redi, s, xs, &tr, 0x10);
        bne_dec_gemv(BNE_LP(const void, BNE_PLAN_L_QKV), nqkv, hidden, tern & 1, BNE_LP(const float, BNE_PLAN_L_QKV_SCALE),
                     false, BNE_P(float, BNE_PLAN_QKV), m, bufb, seq, s, BNE_LP(const void, BNE_PLAN_L_O), hidden, qdim,
                     tern & 2, 1 << 30, &tr, 0x10);
        bne_grid_sync(bar, target, status);
        bne_stamp(&tr, 0x19);

        // ---- B: attention (blocks < heads); every block brings its next weights into L2
        if (!(opts & 1)) {
            bne_prefetch_rows(BNE_LP(const void, BNE_PLAN_L_GATE_UP), 2 * inter, hidden, tern & 4, all);
            bne_prefetch_rows(BNE_LP(const void, BNE_PLAN_L_DOWN), hidden, inter, tern & 8, all);
            if (Ln != nullptr)
                bne_prefetch_rows(bne_pp<const void>(Ln, BNE_PLAN_L_QKV), nqkv, hidden,
                                  bne_pw(Ln, BNE_PLAN_L_TERNARY) & 1, all);
            else
                bne_prefetch_rows(BNE_P(const void, BNE_PLAN_HEAD_W), BNE_I(BNE_PLAN_VOCAB), hidden,
                                  BNE_I(BNE_PLAN_HEAD_TERNARY) != 0, (size_t)bne_pw(plan, BNE_PLAN_HEAD_L2));
        }
        bne_stamp(&tr, 0x2a);
        bne_dec_attention(plan, Lp, m, redf, &tr);
        bne_grid_sync(bar, target, status);
        bne_stamp(&tr, 0x29);

        // ---- C: sub-norm -> o_proj, added into the residual
        bne_dec_norm(plan, m, BNE_P(const float, BNE_PLAN_ATTN), nullptr, qdim, 0, BNE_LP(const float, BNE_PLAN_L_ATTN_SUB),
                     redf, redi, s, xs, &tr, 0x30);
        bne_dec_gemv(BNE_LP(const void, BNE_PLAN_L_O), hidden, qdim, tern & 2, BNE_LP(const float, BNE_PLAN_L_O_SCALE), true,
                     BNE_P(float, BNE_PLAN_X), m, bufb, seq, s, BNE_LP(const void, BNE_PLAN_L_GATE_UP), 2 * inter, hidden,
                     tern & 4, 1 << 30, &tr, 0x30);
        bne_grid_sync(bar, target, status);
        bne_stamp(&tr, 0x39);

        // ---- D: post-attention norm -> gate/up
        bne_dec_norm(plan, m, BNE_P(const float, BNE_PLAN_X), nullptr, hidden, 0, BNE_LP(const float, BNE_PLAN_L_POST_NORM),
                     redf, redi, s, xs, &tr, 0x40);
        bne_dec_gemv(BNE_LP(const void, BNE_PLAN_L_GATE_UP), 2 * inter, hidden, tern & 4,
                     BNE_LP(const float, BNE_PLAN_L_GATE_UP_SCALE), false, BNE_P(float, BNE_PLAN_GU), m, bufb, seq, s,
                     BNE_LP(const void, BNE_PLAN_L_DOWN), hidden, inter, tern & 8, 1 << 30, &tr, 0x40);
        bne_grid_sync(bar, target, status);
        bne_stamp(&tr, 0x49);

        // ---- E: act(gate) * up [+ sub-norm] -> down_proj, added into the residual
        bne_dec_norm(plan, m, BNE_P(const float, BNE_PLAN_GU), BNE_P(const float, BNE_PLAN_GU) + inter, inter,
                     BNE_I(BNE_PLAN_ACT), BNE_LP(const float, BNE_PLAN_L_FFN_SUB), redf, redi, s, xs, &tr, 0x50);
        if (Ln != nullptr)
            bne_dec_gemv(BNE_LP(const void, BNE_PLAN_L_DOWN), hidden, inter, tern & 8, BNE_LP(const float, BNE_PLAN_L_DOWN_SCALE),
                         true, BNE_P(float, BNE_PLAN_X), m, bufb, seq, s, bne_pp<const void>(Ln, BNE_PLAN_L_QKV), nqkv, hidden,
                         bne_pw(Ln, BNE_PLAN_L_TERNARY) & 1, 1 << 30, &tr, 0x50);
        else  // the LM head's first chunk next
            bne_dec_gemv(BNE_LP(const void, BNE_PLAN_L_DOWN), hidden, inter, tern & 8, BNE_LP(const float, BNE_PLAN_L_DOWN_SCALE),
                         true, BNE_P(float, BNE_PLAN_X), m, bufb, seq, s, BNE_P(const void, BNE_PLAN_HEAD_W),
                         BNE_I(BNE_PLAN_VOCAB), hidden, BNE_I(BNE_PLAN_HEAD_TERNARY) != 0, BNE_I(BNE_PLAN_ACC_ROWS), &tr, 0x50);
        bne_grid_sync(bar, target, status);
        bne_stamp(&tr, 0x59);
    }

    // ---- final norm -> LM head (in chunks of ACC_ROWS rows) -> logits and their argmax
    bne_dec_norm(plan, m, BNE_P(const float, BNE_PLAN_X), nullptr, BNE_I(BNE_PLAN_HIDDEN), 0, BNE_P(const float, BNE_PLAN_NORM), redf, redi,
                 s, xs, &tr, 0x60);
    float bv;
    int bi;
    bne_dec_head(plan, m, s, seq, bv, bi, &tr);
    int *am = BNE_P(int, BNE_PLAN_ARGMAX);
    bne_block_argmax(bv, bi, redf, redi);
    if (t == 0) {
        am[2 * blockIdx.x] = __float_as_int(bv);
        am[2 * blockIdx.x + 1] = bi;
    }
    bne_stamp(&tr, 0x6a);
    bne_grid_sync(bar, target, status);
    bne_stamp(&tr, 0x69);
    if (blockIdx.x == 0) {
        bv = -INFINITY;
        bi = 0x7fffffff;
        for (int g = t; g < (int)gridDim.x; g += BNE_DT) {
            const float v = __int_as_float(__ldcg(am + 2 * g));
            const int i = __ldcg(am + 2 * g + 1);
            if (bne_better(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
        bne_block_argmax(bv, bi, redf, redi);
        if (t == 0) {
            am[2 * gridDim.x] = bi;
            am[2 * gridDim.x + 1] = __ldcg(status);  // what went wrong in this step, if anything
        }
    }
    bne_stamp(&tr, 0x6f);
}
