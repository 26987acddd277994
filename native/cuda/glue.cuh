// glue.cuh - the float32 decoder glue that keeps the activations and the KV cache on the GPU:
// RoPE + KV-cache write, and causal GQA attention.  Same formulas as sdk/models/ops.py and
// decoder.py; the position comes from device memory (pos0), so a captured CUDA graph of a decode
// step stays valid at every position.
#pragma once
#include "common.cuh"

#define BNE_ATTN_KPW 8  // keys a warp scores at once

// qkv (m, (heads + 2 kv_heads) * head_dim) float32: per token [q heads | k heads | v heads];
// cos_t, sin_t (capacity, head_dim) as ops.rope_tables; token i sits at position *pos0 + i.
//   q_out (m, heads * head_dim) = rope(q);  k_cache[kvh][pos] = rope(k);  v_cache[kvh][pos] = v
// with caches (kv_heads, capacity, head_dim).  rope(x) = x * cos + rotate_half(x) * sin, each
// product and the sum rounded once (bit-exact with numpy).  Grid (m, heads + kv_heads),
// block min(head_dim, 1024) (threads loop over head_dim).
BNE_KERNEL void bne_rope_kv(const float *qkv, int m, int heads, int kv_heads, int head_dim, const int32_t *pos0,
                            const float *cos_t, const float *sin_t, float *q_out, float *k_cache,
                            float *v_cache, int capacity) {
    const int i = blockIdx.x, hh = blockIdx.y;
    bne_pdl_launch();
    bne_pdl_wait();
    if (i >= m || hh >= heads + kv_heads) return;
    const int pos = __ldcg(pos0) + i;
    if (pos >= capacity) return;  // the host checks the capacity first; never write out of bounds
    const int half = head_dim / 2, width = (heads + 2 * kv_heads) * head_dim;
    const float *row = qkv + (size_t)i * width;
    const float *src = row + (size_t)hh * head_dim;  // q heads then k heads
    const float *c = cos_t + (size_t)pos * head_dim, *sn = sin_t + (size_t)pos * head_dim;
    float *dst;
    if (hh < heads) {
        dst = q_out + ((size_t)i * heads + hh) * head_dim;
    } else {
        const int kvh = hh - heads;
        dst = k_cache + ((size_t)kvh * capacity + pos) * head_dim;
        const float *v = row + (size_t)(heads + kv_heads + kvh) * head_dim;
        float *vd = v_cache + ((size_t)kvh * capacity + pos) * head_dim;
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) vd[d] = __ldcg(v + d);
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        const float rot = d < half ? -__ldcg(src + d + half) : __ldcg(src + d - half);
        dst[d] = __fadd_rn(__fmul_rn(__ldcg(src + d), c[d]), __fmul_rn(rot, sn[d]));
    }
}

// RoPE of one head vector as bne_rope_kv computes it: dst[d] = src[d] * c[d] + rot(src)[d] * sn[d],
// each product and the sum rounded once.  src is read through L2 (other blocks may have written it).
__device__ __forceinline__ void bne_rope_vec(const float *src, const float *c, const float *sn, int head_dim, float *dst) {
    const int half = head_dim / 2;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        const float rot = d < half ? -__ldcg(src + d + half) : __ldcg(src + d - half);
        dst[d] = __fadd_rn(__fmul_rn(__ldcg(src + d), c[d]), __fmul_rn(rot, sn[d]));
    }
}

// One query against keys 0 .. L-1 of one KV head: o[d] = softmax(qs . K_j * scale) . V.  qs (head_dim
// floats) and the block's scratch are shared memory: sc (>= L floats), part (parts * head_dim floats,
// parts = blockDim / head_dim or 1), red (32 floats).  Every float sum runs in an order fixed by
// head_dim and the block width alone, so bne_attention and the persistent decode kernel (both
// BNE_ATTN_THREADS = BNE_DECODE_THREADS wide) give the same bits.  K, V rows are read through L2.
__device__ __forceinline__ void bne_attend(const float *qs, int L, int head_dim, const float *K, const float *V,
                                           float scale, float *sc, float *part, float *red, float *o,
                                           BneTrace *tr = nullptr) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    // scores: a warp per group of BNE_ATTN_KPW keys, lanes over head_dim; a key's dot product is a
    // lane-strided sum then a warp reduction, whatever the grouping.  With head_dim <= 128 every
    // load of a group is in flight at once (32 a lane).
    constexpr int KPW = BNE_ATTN_KPW;
    for (int j0 = warp * KPW; j0 < L; j0 += nw * KPW) {
        float dot[KPW];
#pragma unroll
        for (int u = 0; u < KPW; ++u) dot[u] = 0.0f;
        if (head_dim <= 128) {
            float kv[4][KPW];
#pragma unroll
            for (int c = 0; c < 4; ++c)
#pragma unroll
                for (int u = 0; u < KPW; ++u) {
                    const int d = lane + 32 * c;
                    kv[c][u] = (d < head_dim && j0 + u < L) ? __ldcg(K + (size_t)(j0 + u) * head_dim + d) : 0.0f;
                }
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int d = lane + 32 * c;
                if (d < head_dim) {
                    const float qd = qs[d];
#pragma unroll
                    for (int u = 0; u < KPW; ++u)
                        if (j0 + u < L) dot[u] = __fadd_rn(dot[u], __fmul_rn(qd, kv[c][u]));
                }
            }
        } else {
            for (int d = lane; d < head_dim; d += 32) {
                const float qd = qs[d];
#pragma unroll
                for (int u = 0; u < KPW; ++u)
                    if (j0 + u < L) dot[u] = __fadd_rn(dot[u], __fmul_rn(qd, __ldcg(K + (size_t)(j0 + u) * head_dim + d)));
            }
        }
#pragma unroll
        for (int u = 0; u < KPW; ++u) {
            const float v = bne_warp_sum_f(dot[u]);
            if (lane == 0 && j0 + u < L) sc[j0 + u] = __fmul_rn(v, scale);
        }
    }
    __syncthreads();
    bne_stamp(tr, 0x2c);
    float mx = -INFINITY;
    for (int j = tid; j < L; j += blockDim.x) mx = fmaxf(mx, sc[j]);
    mx = bne_block_max_f(mx, red);
    float sum = 0.0f;
    for (int j = tid; j < L; j += blockDim.x) {
        const float e = expf(__fadd_rn(sc[j], -mx));
        sc[j] = e;
        sum = __fadd_rn(sum, e);
    }
    sum = bne_block_sum_f(sum, red);  // ends with a barrier-separated read: sc is complete here
    bne_stamp(tr, 0x2d);

    // out = sum_j p_j v_j: thread (part, d) sums keys part, part + parts, ... (loads unrolled)
    const int parts = (int)blockDim.x >= head_dim ? (int)blockDim.x / head_dim : 1;
    for (int idx = tid; idx < parts * head_dim; idx += blockDim.x) {
        const int d = idx % head_dim, pp = idx / head_dim;
        float a = 0.0f;
#pragma unroll 32
        for (int j = pp; j < L; j += parts) a = __fadd_rn(a, __fmul_rn(sc[j], __ldcg(V + (size_t)j * head_dim + d)));
        part[idx] = a;
    }
    __syncthreads();
    for (int d = tid; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
        for (int pp = 0; pp < parts; ++pp) a = __fadd_rn(a, part[pp * head_dim + d]);
        o[d] = __fdiv_rn(a, sum);
    }
    bne_stamp(tr, 0x2e);
}

// q (m, heads * head_dim) after RoPE; caches (kv_heads, capacity, head_dim) holding positions
// 0 .. *pos0 + m - 1.  Query i (position *pos0 + i) attends keys 0 .. *pos0 + i (causal); head h
// reads kv head h / (heads / kv_heads) (GQA).  out (m, heads * head_dim) = softmax(q k^T * scale) v.
// Grid (heads, m), block BNE_ATTN_THREADS; dynamic shared memory
// (head_dim + capacity + (BNE_ATTN_THREADS / head_dim or 1) * head_dim) floats.
BNE_KERNEL void __launch_bounds__(BNE_ATTN_THREADS) bne_attention(const float *q, int m, int heads, int kv_heads, int head_dim, const int32_t *pos0,
                              const float *k_cache, const float *v_cache, int capacity, float scale,
                              float *out) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    const int h = blockIdx.x, i = blockIdx.y;
    bne_pdl_launch();
    bne_pdl_wait();
    if (h >= heads || i >= m) return;
    const int L = min(__ldcg(pos0) + i + 1, capacity);
    const int kvh = h / (heads / kv_heads);
    float *qs = sm, *sc = sm + head_dim, *part = sm + head_dim + capacity;
    const float *qr = q + ((size_t)i * heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = __ldcg(qr + d);
    __syncthreads();
    bne_attend(qs, L, head_dim, k_cache + (size_t)kvh * capacity * head_dim, v_cache + (size_t)kvh * capacity * head_dim,
               scale, sc, part, red, out + ((size_t)i * heads + h) * head_dim);
}

// One decode token (m = 1): bne_rope_kv and bne_attention in one launch.  Block h: RoPE of query
// head h into shared memory, RoPE of its KV head's new key and the new value written at pos (every
// block of a KV group writes the same bits, then reads its own write, as the persistent kernel's
// attention phase), then attention over positions 0 .. pos.  Same device functions and block width
// as the two kernels, so the same bits.  Grid (heads), block BNE_ATTN_THREADS, dynamic shared
// memory as bne_attention.
BNE_KERNEL void __launch_bounds__(BNE_ATTN_THREADS) bne_rope_attention(const float *qkv, int heads, int kv_heads, int head_dim,
                                   const int32_t *pos0, const float *cos_t, const float *sin_t, float *k_cache,
                                   float *v_cache, int capacity, float scale, float *out) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    const int h = blockIdx.x;
    bne_pdl_launch();
    bne_pdl_wait();
    if (h >= heads) return;
    const int pos = __ldcg(pos0);
    if (pos >= capacity) return;  // the host checks the capacity first; never write out of bounds
    const int kvh = h / (heads / kv_heads);
    float *qs = sm, *sc = sm + head_dim, *part = sm + head_dim + capacity;
    const float *c = cos_t + (size_t)pos * head_dim, *sn = sin_t + (size_t)pos * head_dim;
    float *kc = k_cache + (size_t)kvh * capacity * head_dim, *vc = v_cache + (size_t)kvh * capacity * head_dim;
    bne_rope_vec(qkv + (size_t)h * head_dim, c, sn, head_dim, qs);
    bne_rope_vec(qkv + (size_t)(heads + kvh) * head_dim, c, sn, head_dim, kc + (size_t)pos * head_dim);
    const float *vs = qkv + (size_t)(heads + kv_heads + kvh) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) vc[(size_t)pos * head_dim + d] = __ldcg(vs + d);
    __threadfence_block();
    __syncthreads();
    bne_attend(qs, pos + 1, head_dim, kc, vc, scale, sc, part, red, out + (size_t)h * head_dim);
}
