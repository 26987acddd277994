// common.cuh - helpers shared by the bitnet-edge CUDA kernels: block reductions, dp4a on the
// 2-bit planes, the float epilogue.  Built with --fmad=false and without fast math, so every
// float expression rounds exactly as written; the bit-exact paths spell their rounding out
// anyway (__fmul_rn, __fdiv_rn, __fadd_rn), as ADR 0003 asks.
#pragma once
#include <stdint.h>
#include "bne_cuda.h"

#define BNE_FULL_MASK 0xffffffffu

// Programmatic dependent launch (sm_90+, docs/adr/0009): a kernel launched with the programmatic
// stream-serialization attribute may start while the kernel before it still runs.  bne_pdl_wait()
// blocks until every prerequisite grid has completed and its memory is visible; each kernel calls it
// in every thread before it reads an activation or writes anything, and before it exits, so "grid N
// complete" still implies "grid N - 1 complete" down the chain.  Only weights (never written during a
// forward pass) are read before it.  bne_pdl_launch() lets the next kernel's blocks be scheduled now
// (they then wait in bne_pdl_wait()).  Both are no-ops where the image has no such instruction (the
// host enables the attribute only for sm_90+ images) and when the launch had no attribute.
__device__ __forceinline__ void bne_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void bne_pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ int bne_warp_sum_i(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(BNE_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float bne_warp_sum_f(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(BNE_FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ float bne_warp_max_f(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(BNE_FULL_MASK, v, o));
    return v;
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024); `red` holds 32 slots.
// Every thread gets the result.  Integer sums and float max are exact in any order; the float
// sum's order is fixed by the block shape (deterministic, but not numpy's pairwise order).
__device__ __forceinline__ int bne_block_sum_i(int v, int *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = bne_warp_sum_i(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0;
    return bne_warp_sum_i(v);
}

__device__ __forceinline__ float bne_block_sum_f(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = bne_warp_sum_f(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return bne_warp_sum_f(v);
}

__device__ __forceinline__ float bne_block_max_f(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = bne_warp_max_f(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    return bne_warp_max_f(v);
}

// The codes (w + 1, in {0,1,2}) of plane p of a 32-bit word of packed bytes: byte j of the word
// holds weights j, j+32, j+64, j+96 of its block in bits 0-1, 2-3, 4-5, 6-7 (ADR 0002), so plane p
// of 4 consecutive bytes is 4 consecutive weights, one per byte: a dp4a operand as it stands.
__device__ __forceinline__ int bne_plane(uint32_t word, int p) {
    return (int)((word >> (2 * p)) & 0x03030303u);
}

// dp4a with unsigned bytes in a (the masked 2-bit planes, up to 128) and signed bytes in b.
__device__ __forceinline__ int bne_dp4a_us(uint32_t a, uint32_t b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// The ADR 0003 epilogue of one output element: ((float)acc * ws) / s, then + add if given.
// A total order of (value, index) as np.argmax picks: any NaN beats every number, then the larger
// value (-0.0 equal to 0.0), then the smaller index; as one unsigned 64-bit key, so the pick is an
// integer max (exact in any order, e.g. by atomicMax).  Index = 0xffffffff - (key & 0xffffffff).
__device__ __forceinline__ unsigned long long bne_argmax_key(float v, int i) {
    unsigned hi;
    if (isnan(v)) {
        hi = 0xffffffffu;
    } else {
        if (v == 0.0f) v = 0.0f;
        const unsigned b = __float_as_uint(v);
        hi = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // monotone in v; +inf -> 0xff800000
    }
    return ((unsigned long long)hi << 32) | (unsigned long long)(0xffffffffu - (unsigned)i);
}

__device__ __forceinline__ float bne_epilogue(int acc, float ws, float s, const float *add, size_t idx) {
    float y = __fdiv_rn(__fmul_rn(__int2float_rn(acc), ws), s);
    if (add != nullptr) y = __fadd_rn(__ldcg(add + idx), y);  // through L2: written by an earlier kernel
    return y;
}

// m16n8k32 int8 tensor-core product, s32 accumulate (sm_80+).  Fragments (PTX ISA), g = lane/4,
// t = lane%4:  A 16x32 row-major: a0 = A[g][4t..], a1 = A[g+8][4t..], a2 = A[g][16+4t..],
// a3 = A[g+8][16+4t..];  B 32x8 col-major: b0 = B[4t..][g], b1 = B[16+4t..][g];
// C 16x8: c0,c1 = C[g][2t, 2t+1], c2,c3 = C[g+8][2t, 2t+1].
__device__ __forceinline__ void bne_mma_s8(int c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- persistent-kernel helpers (decode.cuh) ------------------------------------------------------

// Profiling stamps (benchmarks/cuda.py --profile): thread 0 of a traced block writes (globaltimer
// ns, label) at each step boundary; label = phase << 4 | step.  p == nullptr: off (one branch).
#ifndef BNE_TRACE_MAX
#define BNE_TRACE_MAX 1024
#endif
struct BneTrace {
    unsigned long long *p;
    int ev;
};

__device__ __forceinline__ void bne_stamp(BneTrace *tr, int label) {
    if (tr == nullptr || tr->p == nullptr) return;
    if (threadIdx.x == 0 && tr->ev < BNE_TRACE_MAX) {
        unsigned long long g;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
        tr->p[2 * tr->ev] = g;
        tr->p[2 * tr->ev + 1] = (unsigned long long)label;
    }
    ++tr->ev;
}

// Grid-wide barrier for a cooperative launch (every block resident).  *bar counts arrivals and is
// zeroed before the launch; barrier number k waits until it reaches k * gridDim.x (`target` is the
// block's running count).  The arrival is a release and the polling an acquire at GPU scope, with a
// block barrier on either side: every write before the barrier is visible to every block after it.  A wait that lasts
// ~2^22 polls (seconds; a real one takes microseconds) sets bit 1 of *status and gives up, and so
// does every later barrier once that bit is set: a broken launch ends instead of hanging the GPU.
#define BNE_STATUS_BARRIER_TIMEOUT 2
__device__ __forceinline__ void bne_grid_sync(unsigned *bar, unsigned &target, int *status) {
    target += gridDim.x;
    __syncthreads();
    if (threadIdx.x == 0) {
        // release: the block's writes (ordered before this by the bar.sync above) are visible to
        // whoever acquires the count; acquire below: the other blocks' writes are visible here
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar) : "memory");
        unsigned v;
        for (int polls = 0;; ++polls) {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(bar) : "memory");
            if (v >= target) break;
            if ((polls & 1023) == 1023) {
                int st;
                asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(st) : "l"(status) : "memory");
                if ((st & BNE_STATUS_BARRIER_TIMEOUT) || polls >= (1 << 22)) {
                    atomicOr(status, BNE_STATUS_BARRIER_TIMEOUT);
                    break;
                }
            }
        }
    }
    __syncthreads();
}

// 16 bytes global -> shared, asynchronously, through L2 only (cp.async.cg, sm_80+).
__device__ __forceinline__ void bne_cp_async16(void *smem, const void *gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void bne_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void bne_cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// Ask L2 for [p, p + bytes).  sm_90: bulk prefetches issued by thread 0 (one instruction per 256 KB;
// the range is trimmed to 16-byte boundaries); older GPUs: one prefetch per 128-byte line, spread
// over the block's threads.
__device__ __forceinline__ void bne_prefetch_l2(const void *p, size_t bytes) {
    const char *c = static_cast<const char *>(p);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        const size_t a = ((size_t)c + 15) & ~(size_t)15, e = ((size_t)c + bytes) & ~(size_t)15;
        for (size_t q = a; q < e; q += (size_t)1 << 18) {
            const unsigned n = (unsigned)min(e - q, (size_t)1 << 18);
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(q), "r"(n) : "memory");
        }
    }
#else
    for (size_t off = (size_t)threadIdx.x * 128; off < bytes; off += (size_t)blockDim.x * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
#endif
}

// Weights global -> shared ahead of use.  sm_90: one bulk (TMA) copy issued by thread 0, completing
// on an mbarrier; older GPUs: cp.async of 16-byte units by every thread.  The caller keeps the
// sequence number of the copies issued (the mbarrier's phase parity).
__device__ __forceinline__ unsigned bne_smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void bne_mbar_init(uint64_t *bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bne_smem_addr(bar)) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
#endif
}

// Thread 0: copy `bytes` (a multiple of 16, both addresses 16-byte aligned) into smem, completing on bar.
__device__ __forceinline__ void bne_bulk_g2s(void *smem, const void *gmem, unsigned bytes, uint64_t *bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // earlier generic reads of smem first
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bne_smem_addr(bar)), "r"(bytes)
                 : "memory");
    for (unsigned off = 0; off < bytes; off += 65536u) {
        const unsigned n = min(bytes - off, 65536u);
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                         bne_smem_addr(static_cast<char *>(smem) + off)),
                     "l"(static_cast<const char *>(gmem) + off), "r"(n), "r"(bne_smem_addr(bar))
                     : "memory");
    }
#endif
}

// Every thread: wait until the copies of sequence number `seq` (0, 1, ...) have landed.
__device__ __forceinline__ void bne_mbar_wait(uint64_t *bar, unsigned seq) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n .reg .pred p;\n BNE_WAIT_%=:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        " @!p bra BNE_WAIT_%=;\n}" ::"r"(bne_smem_addr(bar)),
        "r"(seq & 1u)
        : "memory");
#endif
}
