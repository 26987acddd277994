/* arch/riscv/rvv.c - the RISC-V Vector 1.0 variant ("rvv" on linux-riscv64).
 *
 * Build with V enabled for this file only (zig: -mcpu=baseline_rv64+v, gcc:
 * -march=rv64gcv); the rest of the library stays rv64gc, and api.c dispatches
 * here only when the kernel reports V (riscv_hwprobe, or the HWCAP 'V' bit).
 *
 * Vector-length agnostic: nothing assumes a VLEN beyond the V minimum of 128
 * bits.  Loops strip-mine with vsetvl, so one binary runs on VLEN 128 (qemu's
 * default), 256 (SpacemiT X60 / K1) or wider.  Products are formed with the
 * widening multiply-accumulate VWMACC (int8 x int8 -> int16) and reduced into
 * int32 with VWREDSUM before an int16 lane can overflow.  Results are bit-exact
 * with kernels_ref.c: the integer sums are exact, and the float epilogue goes
 * through the shared bne_store.
 *
 * Ternary: a 32-byte block is taken in pieces of vl = min(32, VLMAX(e8, m1))
 * bytes (one piece when VLEN >= 256, two at VLEN 128).  Byte j of a block holds
 * the codes of weights j, j+32, j+64, j+96, so the piece's bytes at offset o
 * meet the activations x[o..], x[32+o..], x[64+o..], x[96+o..]: four unit-stride
 * loads, no shuffles.  Codes c = w + 1 in {0,1,2} are multiplied as signed
 * bytes, so sum(w * x) = sum(c * x) - sum(x), with sum(x) = a->xsum[i].
 *
 * RVV types are sizeless (no arrays of them), so the tiles are spelled out.
 */
#if !defined(__riscv_v) || __riscv_v < 1000000 || __riscv_xlen != 64
#error "arch/riscv/rvv.c needs rv64 with V 1.0 (zig: -mcpu=baseline_rv64+v, gcc: -march=rv64gcv)"
#endif

#include <riscv_vector.h>

#include "bne_internal.h"

/* Per piece each int16 lane gains one product per code group (4 groups), of
 * magnitude <= 2 * 128 = 256; a block is at most 2 pieces (VLEN >= 128), so at
 * most 8 products per lane per block: GROUP * 8 * 256 <= 32767. */
#define GROUP 15
_Static_assert(GROUP * 8 * 256 <= 32767, "int16 lanes would overflow before the reduction");

#define FORCE_INLINE static inline __attribute__((always_inline))

typedef vint16m2_t acc16;

FORCE_INLINE acc16 zero16(size_t vl) { return __riscv_vmv_v_x_i16m2(0, vl); }
FORCE_INLINE vint32m1_t zero32(void) { return __riscv_vmv_v_x_i32m1(0, 1); }

/* The codes of group g (weights 32g + byte) of a piece of packed bytes w. */
FORCE_INLINE vint8m1_t codes(vuint8m1_t w, int g, size_t vl) {
    vuint8m1_t c = g ? __riscv_vsrl_vx_u8m1(w, 2 * (size_t)g, vl) : w;
    return __riscv_vreinterpret_v_u8m1_i8m1(g < 3 ? __riscv_vand_vx_u8m1(c, 3, vl) : c);
}

/* h += codes * x for one piece whose 4 code vectors are unpacked; x points at
 * the block's activations + the piece offset. */
FORCE_INLINE acc16 piece_mla(acc16 h, vint8m1_t c0, vint8m1_t c1, vint8m1_t c2, vint8m1_t c3, const int8_t *x,
                             size_t vl) {
    h = __riscv_vwmacc_vv_i16m2(h, c0, __riscv_vle8_v_i8m1(x, vl), vl);
    h = __riscv_vwmacc_vv_i16m2(h, c1, __riscv_vle8_v_i8m1(x + 32, vl), vl);
    h = __riscv_vwmacc_vv_i16m2(h, c2, __riscv_vle8_v_i8m1(x + 64, vl), vl);
    return __riscv_vwmacc_vv_i16m2(h, c3, __riscv_vle8_v_i8m1(x + 96, vl), vl);
}

/* h += codes(p) * x for one piece at p whose 4 activation vectors are loaded
 * (GEMV: shared by the rows). */
FORCE_INLINE acc16 piece_mla_x(acc16 h, const uint8_t *p, vint8m1_t x0, vint8m1_t x1, vint8m1_t x2, vint8m1_t x3,
                               size_t vl) {
    vuint8m1_t w = __riscv_vle8_v_u8m1(p, vl);
    h = __riscv_vwmacc_vv_i16m2(h, codes(w, 0, vl), x0, vl);
    h = __riscv_vwmacc_vv_i16m2(h, codes(w, 1, vl), x1, vl);
    h = __riscv_vwmacc_vv_i16m2(h, codes(w, 2, vl), x2, vl);
    return __riscv_vwmacc_vv_i16m2(h, codes(w, 3, vl), x3, vl);
}

FORCE_INLINE vint32m1_t flush(acc16 h, vint32m1_t s, size_t vl) {
    return __riscv_vwredsum_vs_i16m2_i32m1(h, s, vl);
}

FORCE_INLINE int32_t lane0(vint32m1_t s) { return __riscv_vmv_x_s_i32m1_i32(s); }

/* ---- ternary ---------------------------------------------------------- */

/* One weight row j against activation rows i0 .. i0+r-1 (r <= 4): each piece's
 * codes are unpacked once for the r rows.  r is a constant after inlining. */
FORCE_INLINE void ternary_1xr(const bne_gemm_args *a, size_t j, size_t i0, int r, size_t vl) {
    const uint8_t *row = a->w + j * a->ldw;
    const size_t nb = a->k / BNE_TERNARY_BLOCK, tail = a->k % BNE_TERNARY_BLOCK;
    const int8_t *x0 = a->x + i0 * a->ldx;
    const int8_t *x1 = x0 + (r > 1 ? a->ldx : 0), *x2 = x0 + (r > 2 ? 2 * a->ldx : 0);
    const int8_t *x3 = x0 + (r > 3 ? 3 * a->ldx : 0);
    vint32m1_t s0 = zero32(), s1 = zero32(), s2 = zero32(), s3 = zero32();
    for (size_t b = 0; b < nb;) {
        size_t bend = nb - b > GROUP ? b + GROUP : nb;
        acc16 h0 = zero16(vl), h1 = zero16(vl), h2 = zero16(vl), h3 = zero16(vl);
        for (; b < bend; ++b) {
            const uint8_t *blk = row + b * BNE_TERNARY_BLOCK_BYTES;
            const size_t xo = b * BNE_TERNARY_BLOCK;
            for (size_t o = 0; o < BNE_TERNARY_BLOCK_BYTES; o += vl) {
                vuint8m1_t w = __riscv_vle8_v_u8m1(blk + o, vl);
                vint8m1_t c0 = codes(w, 0, vl), c1 = codes(w, 1, vl), c2 = codes(w, 2, vl), c3 = codes(w, 3, vl);
                h0 = piece_mla(h0, c0, c1, c2, c3, x0 + xo + o, vl);
                if (r > 1) h1 = piece_mla(h1, c0, c1, c2, c3, x1 + xo + o, vl);
                if (r > 2) h2 = piece_mla(h2, c0, c1, c2, c3, x2 + xo + o, vl);
                if (r > 3) h3 = piece_mla(h3, c0, c1, c2, c3, x3 + xo + o, vl);
            }
        }
        s0 = flush(h0, s0, vl);
        if (r > 1) s1 = flush(h1, s1, vl);
        if (r > 2) s2 = flush(h2, s2, vl);
        if (r > 3) s3 = flush(h3, s3, vl);
    }
    int32_t s[4] = {lane0(s0), lane0(s1), lane0(s2), lane0(s3)};
    const int8_t *xr[4] = {x0, x1, x2, x3};
    const uint8_t *last = row + nb * BNE_TERNARY_BLOCK_BYTES;
    for (int q = 0; q < r; ++q) {
        if (tail) s[q] += bne_tail_codes_dot(last, xr[q] + nb * BNE_TERNARY_BLOCK, tail);
        bne_store(a, i0 + (size_t)q, j, s[q] - a->xsum[i0 + (size_t)q]);
    }
}

/* GEMV step: weight rows j .. j+3 against activation row 0; the activations of
 * a piece are loaded once for the 4 rows. */
FORCE_INLINE void ternary_4x1(const bne_gemm_args *a, size_t j, size_t vl) {
    const size_t nb = a->k / BNE_TERNARY_BLOCK, tail = a->k % BNE_TERNARY_BLOCK;
    const int8_t *x = a->x;
    const uint8_t *r0 = a->w + j * a->ldw, *r1 = r0 + a->ldw, *r2 = r1 + a->ldw, *r3 = r2 + a->ldw;
    vint32m1_t s0 = zero32(), s1 = zero32(), s2 = zero32(), s3 = zero32();
    for (size_t b = 0; b < nb;) {
        size_t bend = nb - b > GROUP ? b + GROUP : nb;
        acc16 h0 = zero16(vl), h1 = zero16(vl), h2 = zero16(vl), h3 = zero16(vl);
        for (; b < bend; ++b) {
            const size_t wo = b * BNE_TERNARY_BLOCK_BYTES;
            const int8_t *xb = x + b * BNE_TERNARY_BLOCK;
            for (size_t o = 0; o < BNE_TERNARY_BLOCK_BYTES; o += vl) {
                vint8m1_t xv0 = __riscv_vle8_v_i8m1(xb + o, vl), xv1 = __riscv_vle8_v_i8m1(xb + 32 + o, vl);
                vint8m1_t xv2 = __riscv_vle8_v_i8m1(xb + 64 + o, vl), xv3 = __riscv_vle8_v_i8m1(xb + 96 + o, vl);
                h0 = piece_mla_x(h0, r0 + wo + o, xv0, xv1, xv2, xv3, vl);
                h1 = piece_mla_x(h1, r1 + wo + o, xv0, xv1, xv2, xv3, vl);
                h2 = piece_mla_x(h2, r2 + wo + o, xv0, xv1, xv2, xv3, vl);
                h3 = piece_mla_x(h3, r3 + wo + o, xv0, xv1, xv2, xv3, vl);
            }
        }
        s0 = flush(h0, s0, vl);
        s1 = flush(h1, s1, vl);
        s2 = flush(h2, s2, vl);
        s3 = flush(h3, s3, vl);
    }
    int32_t s[4] = {lane0(s0), lane0(s1), lane0(s2), lane0(s3)};
    const uint8_t *rows[4] = {r0, r1, r2, r3};
    for (int p = 0; p < 4; ++p) {
        if (tail)
            s[p] += bne_tail_codes_dot(rows[p] + nb * BNE_TERNARY_BLOCK_BYTES, x + nb * BNE_TERNARY_BLOCK, tail);
        bne_store(a, 0, j + (size_t)p, s[p] - a->xsum[0]);
    }
}

/* W (n, k) packed ternary @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void ternary_gemm_rvv(const bne_gemm_args *a, size_t n0, size_t n1) {
    const size_t vl = __riscv_vsetvl_e8m1(BNE_TERNARY_BLOCK_BYTES); /* 16 at VLEN 128, else 32 */
    size_t j = n0;
    if (a->m == 1) {
        for (; j + 4 <= n1; j += 4) ternary_4x1(a, j, vl);
        for (; j < n1; ++j) ternary_1xr(a, j, 0, 1, vl);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) ternary_1xr(a, j, i, 4, vl);
        switch (a->m - i) {
        case 3: ternary_1xr(a, j, i, 3, vl); break;
        case 2: ternary_1xr(a, j, i, 2, vl); break;
        case 1: ternary_1xr(a, j, i, 1, vl); break;
        default: break;
        }
    }
}

/* ---- int8 ------------------------------------------------------------- */

/* Each piece of vl bytes: VWMUL (int8 x int8 -> int16, |p| <= 127 * 128) then
 * VWADD.WV into int32 lanes, tail-undisturbed so a short last piece leaves the
 * other lanes' sums alone.  The accumulators span VLMAX(e32, m4) lanes and are
 * reduced once per row. */
typedef vint32m4_t acc32;

FORCE_INLINE acc32 mac32(acc32 acc, vint8m1_t w, vint8m1_t x, size_t vl) {
    return __riscv_vwadd_wv_i32m4_tu(acc, acc, __riscv_vwmul_vv_i16m2(w, x, vl), vl);
}

FORCE_INLINE int32_t sum32(acc32 acc, size_t vlmax) {
    return lane0(__riscv_vredsum_vs_i32m4_i32m1(acc, zero32(), vlmax));
}

/* One weight row j against activation rows i0 .. i0+r-1 (r <= 4). */
FORCE_INLINE void int8_1xr(const bne_gemm_args *a, size_t j, size_t i0, int r) {
    const int8_t *w = (const int8_t *)(a->w + j * a->ldw);
    const size_t k = a->k, vlmax = __riscv_vsetvlmax_e32m4();
    const int8_t *x0 = a->x + i0 * a->ldx;
    const int8_t *x1 = x0 + (r > 1 ? a->ldx : 0), *x2 = x0 + (r > 2 ? 2 * a->ldx : 0);
    const int8_t *x3 = x0 + (r > 3 ? 3 * a->ldx : 0);
    acc32 c0 = __riscv_vmv_v_x_i32m4(0, vlmax), c1 = c0, c2 = c0, c3 = c0;
    for (size_t t = 0, vl; t < k; t += vl) {
        vl = __riscv_vsetvl_e8m1(k - t);
        vint8m1_t wv = __riscv_vle8_v_i8m1(w + t, vl);
        c0 = mac32(c0, wv, __riscv_vle8_v_i8m1(x0 + t, vl), vl);
        if (r > 1) c1 = mac32(c1, wv, __riscv_vle8_v_i8m1(x1 + t, vl), vl);
        if (r > 2) c2 = mac32(c2, wv, __riscv_vle8_v_i8m1(x2 + t, vl), vl);
        if (r > 3) c3 = mac32(c3, wv, __riscv_vle8_v_i8m1(x3 + t, vl), vl);
    }
    bne_store(a, i0, j, sum32(c0, vlmax));
    if (r > 1) bne_store(a, i0 + 1, j, sum32(c1, vlmax));
    if (r > 2) bne_store(a, i0 + 2, j, sum32(c2, vlmax));
    if (r > 3) bne_store(a, i0 + 3, j, sum32(c3, vlmax));
}

/* GEMV step: weight rows j .. j+3 against activation row 0. */
FORCE_INLINE void int8_4x1(const bne_gemm_args *a, size_t j) {
    const int8_t *x = a->x;
    const size_t k = a->k, vlmax = __riscv_vsetvlmax_e32m4();
    const int8_t *w0 = (const int8_t *)(a->w + j * a->ldw), *w1 = w0 + a->ldw, *w2 = w1 + a->ldw;
    const int8_t *w3 = w2 + a->ldw;
    acc32 c0 = __riscv_vmv_v_x_i32m4(0, vlmax), c1 = c0, c2 = c0, c3 = c0;
    for (size_t t = 0, vl; t < k; t += vl) {
        vl = __riscv_vsetvl_e8m1(k - t);
        vint8m1_t xv = __riscv_vle8_v_i8m1(x + t, vl);
        c0 = mac32(c0, __riscv_vle8_v_i8m1(w0 + t, vl), xv, vl);
        c1 = mac32(c1, __riscv_vle8_v_i8m1(w1 + t, vl), xv, vl);
        c2 = mac32(c2, __riscv_vle8_v_i8m1(w2 + t, vl), xv, vl);
        c3 = mac32(c3, __riscv_vle8_v_i8m1(w3 + t, vl), xv, vl);
    }
    bne_store(a, 0, j, sum32(c0, vlmax));
    bne_store(a, 0, j + 1, sum32(c1, vlmax));
    bne_store(a, 0, j + 2, sum32(c2, vlmax));
    bne_store(a, 0, j + 3, sum32(c3, vlmax));
}

/* W (n, k) int8 @ x (m, k) int8 -> y (m, n): columns [n0, n1). */
static void int8_gemm_rvv(const bne_gemm_args *a, size_t n0, size_t n1) {
    size_t j = n0;
    if (a->m == 1) {
        for (; j + 4 <= n1; j += 4) int8_4x1(a, j);
        for (; j < n1; ++j) int8_1xr(a, j, 0, 1);
        return;
    }
    for (; j < n1; ++j) {
        size_t i = 0;
        for (; i + 4 <= a->m; i += 4) int8_1xr(a, j, i, 4);
        switch (a->m - i) {
        case 3: int8_1xr(a, j, i, 3); break;
        case 2: int8_1xr(a, j, i, 2); break;
        case 1: int8_1xr(a, j, i, 1); break;
        default: break;
        }
    }
}

/* ---- quantize --------------------------------------------------------- */

/* x (m, k) float32 -> xq (m, k) int8 + scales (m,), the reference's numbers:
 * RVV float arithmetic is IEEE (no flush to zero); VFCVT.X.F with the rounding
 * mode fixed to nearest-even rounds like the reference, and VNCLIP (shift 0)
 * saturates to [-128, 127].  A row with NaN or inf returns BNE_ERR_NONFINITE
 * before it is written (rows before it are already written, as in the
 * reference). */
static int quantize_rows_rvv(const float *x, size_t m, size_t k, size_t ldx, int8_t *xq, size_t ldq,
                             float *scales) {
    const float fmax = 3.40282347e+38f; /* FLT_MAX */
    const size_t vlmax = __riscv_vsetvlmax_e32m4();
    for (size_t i = 0; i < m; ++i) {
        const float *row = x + i * ldx;
        vfloat32m4_t mx = __riscv_vfmv_v_f_f32m4(0.0f, vlmax);
        for (size_t t = 0, vl; t < k; t += vl) {
            vl = __riscv_vsetvl_e32m4(k - t);
            vfloat32m4_t v = __riscv_vfabs_v_f32m4(__riscv_vle32_v_f32m4(row + t, vl), vl);
            /* |v| <= FLT_MAX is false for inf and NaN */
            if (__riscv_vcpop_m_b8(__riscv_vmfle_vf_f32m4_b8(v, fmax, vl), vl) != vl) return BNE_ERR_NONFINITE;
            mx = __riscv_vfmax_vv_f32m4_tu(mx, mx, v, vl);
        }
        vfloat32m1_t r = __riscv_vfredmax_vs_f32m4_f32m1(mx, __riscv_vfmv_v_f_f32m1(0.0f, 1), vlmax);
        float amax = __riscv_vfmv_f_s_f32m1_f32(r);
        if (amax < 1e-5f) amax = 1e-5f;
        const float s = 127.0f / amax;
        scales[i] = s;
        int8_t *q = xq + i * ldq;
        for (size_t t = 0, vl; t < k; t += vl) {
            vl = __riscv_vsetvl_e32m4(k - t);
            vfloat32m4_t p = __riscv_vfmul_vf_f32m4(__riscv_vle32_v_f32m4(row + t, vl), s, vl);
            vint32m4_t n32 = __riscv_vfcvt_x_f_v_i32m4_rm(p, __RISCV_FRM_RNE, vl);
            vint16m2_t n16 = __riscv_vnclip_wx_i16m2(n32, 0, __RISCV_VXRM_RNU, vl);
            __riscv_vse8_v_i8m1(q + t, __riscv_vnclip_wx_i8m1(n16, 0, __RISCV_VXRM_RNU, vl), vl);
        }
    }
    return BNE_OK;
}

const bne_kernels bne_kernels_rvv = {
    ternary_gemm_rvv,
    int8_gemm_rvv,
    quantize_rows_rvv,
    NULL, /* base-3 format: the reference kernel (api.c falls back) */
    NULL, /* decoder: the reference forward pass with this table's kernels (decoder.c) */
};
