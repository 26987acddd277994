/* api.c - the public entry points: argument checks, backend dispatch, and the
 * split of work over the pool.  No kernel math lives here. */
#include "bne_internal.h"

static const char *const NAMES[BNE_BACKEND_COUNT] = {
    "auto", "ref", "avx2", "avx512", "neon", "neon-dotprod", "rvv",
};

static uint32_t features(void) {
    static uint32_t cached = 0xffffffffu;
    if (cached == 0xffffffffu) cached = bne_detect_cpu();
    return cached;
}

static const bne_kernels *table(int backend) {
    switch (backend) {
    case BNE_BACKEND_REF: return &bne_kernels_ref;
#ifdef BNE_HAVE_X86
    case BNE_BACKEND_AVX2: return &bne_kernels_avx2;
    case BNE_BACKEND_AVX512: return &bne_kernels_avx512;
#endif
#ifdef BNE_HAVE_ARM
    case BNE_BACKEND_NEON: return &bne_kernels_neon;
    case BNE_BACKEND_NEON_DOTPROD: return &bne_kernels_neon_dotprod;
#endif
#ifdef BNE_HAVE_ARM32
    case BNE_BACKEND_NEON: return &bne_kernels_neon;
#endif
#ifdef BNE_HAVE_RISCV
    case BNE_BACKEND_RVV: return &bne_kernels_rvv;
#endif
    default: return NULL;
    }
}

static uint32_t required(int backend) {
    switch (backend) {
    case BNE_BACKEND_AVX2: return BNE_CPU_AVX2;
    case BNE_BACKEND_AVX512:
        return BNE_CPU_AVX512F | BNE_CPU_AVX512BW | BNE_CPU_AVX512VL | BNE_CPU_AVX512VNNI;
    case BNE_BACKEND_NEON: return BNE_CPU_NEON;
    case BNE_BACKEND_NEON_DOTPROD: return BNE_CPU_NEON | BNE_CPU_DOTPROD;
    case BNE_BACKEND_RVV: return BNE_CPU_RVV;
    default: return 0;
    }
}

const char *bne_version(void) { return BNE_VERSION_STRING; }

const char *bne_target(void) {
#if defined(__x86_64__) && defined(__linux__)
    return "x86_64-linux";
#elif defined(__aarch64__) && defined(__linux__)
    return "aarch64-linux";
#elif defined(__aarch64__) && defined(__APPLE__)
    return "arm64-macos";
#elif defined(__arm__) && defined(__linux__)
    return "armv7-linux";
#elif defined(__riscv) && __riscv_xlen == 64 && defined(__linux__)
    return "riscv64-linux";
#elif defined(__x86_64__)
    return "x86_64";
#elif defined(__aarch64__)
    return "aarch64";
#else
    return "generic";
#endif
}

uint32_t bne_cpu_features(void) { return features(); }
int bne_backend_compiled(int backend) { return table(backend) != NULL; }

int bne_backend_supported(int backend) {
    if (!table(backend)) return 0;
    uint32_t need = required(backend);
    return (features() & need) == need;
}

int bne_backend_best(void) {
    static const int order[] = {BNE_BACKEND_AVX512, BNE_BACKEND_AVX2, BNE_BACKEND_NEON_DOTPROD,
                                BNE_BACKEND_NEON, BNE_BACKEND_RVV};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; ++i)
        if (bne_backend_supported(order[i])) return order[i];
    return BNE_BACKEND_REF;
}

const char *bne_backend_name(int backend) {
    return (backend >= 0 && backend < BNE_BACKEND_COUNT) ? NAMES[backend] : "";
}

size_t bne_ternary_block(void) { return BNE_TERNARY_BLOCK; }

size_t bne_ternary_row_bytes(size_t k) {
    return (k + BNE_TERNARY_BLOCK - 1) / BNE_TERNARY_BLOCK * BNE_TERNARY_BLOCK_BYTES;
}

int bne_resolve_backend(int backend, const bne_kernels **out) {
    if (backend < 0 || backend >= BNE_BACKEND_COUNT) return BNE_ERR_BACKEND;
    if (backend == BNE_BACKEND_AUTO) backend = bne_backend_best();
    if (!bne_backend_supported(backend)) return BNE_ERR_UNSUPPORTED;
    *out = table(backend);
    return BNE_OK;
}

int bne_ternary_pack(const int8_t *q, size_t n, size_t k, size_t ldq, uint8_t *out,
                     size_t out_len) {
    if (!q || !out) return BNE_ERR_NULL;
    size_t rb = bne_ternary_row_bytes(k);
    if (n == 0 || k == 0 || ldq < k || out_len / rb < n) return BNE_ERR_SHAPE;
    for (size_t j = 0; j < n; ++j) {
        uint8_t *row = out + j * rb;
        for (size_t b = 0; b < rb; ++b) row[b] = 0x55; /* code 1 (weight 0) everywhere */
        for (size_t t = 0; t < k; ++t) {
            int v = q[j * ldq + t];
            if (v < -1 || v > 1) return BNE_ERR_VALUE;
            uint8_t *byte = row + (t / BNE_TERNARY_BLOCK) * BNE_TERNARY_BLOCK_BYTES + (t & 31);
            unsigned sh = 2u * (unsigned)((t % BNE_TERNARY_BLOCK) >> 5);
            *byte = (uint8_t)((*byte & ~(3u << sh)) | ((unsigned)(v + 1) << sh));
        }
    }
    return BNE_OK;
}

size_t bne_ternary3_row_bytes(size_t k) {
    return (k + BNE_TERNARY3_BLOCK - 1) / BNE_TERNARY3_BLOCK * BNE_TERNARY3_BLOCK_BYTES;
}

int bne_ternary3_pack(const int8_t *q, size_t n, size_t k, size_t ldq, uint8_t *out, size_t out_len) {
    if (!q || !out) return BNE_ERR_NULL;
    size_t rb = bne_ternary3_row_bytes(k);
    if (n == 0 || k == 0 || ldq < k || out_len / rb < n) return BNE_ERR_SHAPE;
    for (size_t j = 0; j < n; ++j) {
        const int8_t *src = q + j * ldq;
        for (size_t t = 0; t < k; ++t)
            if (src[t] < -1 || src[t] > 1) return BNE_ERR_VALUE;
        uint8_t *row = out + j * rb;
        for (size_t b = 0; b < rb / BNE_TERNARY3_BLOCK_BYTES; ++b) {
            for (size_t i = 0; i < BNE_TERNARY3_BLOCK_BYTES; ++i) {
                unsigned v = 0;
                for (size_t d = 0; d < 5; ++d) {
                    size_t t = b * BNE_TERNARY3_BLOCK + d * BNE_TERNARY3_BLOCK_BYTES + i;
                    v = 3 * v + (unsigned)(t < k ? src[t] + 1 : 1); /* padding: code 1 */
                }
                row[b * BNE_TERNARY3_BLOCK_BYTES + i] = (uint8_t)((v * 256 + 242) / 243);
            }
        }
    }
    return BNE_OK;
}

int bne_ternary3_unpack(const uint8_t *packed, size_t n, size_t k, int8_t *q, size_t ldq) {
    if (!q || !packed) return BNE_ERR_NULL;
    if (n == 0 || k == 0 || ldq < k) return BNE_ERR_SHAPE;
    size_t rb = bne_ternary3_row_bytes(k);
    for (size_t j = 0; j < n; ++j) {
        for (size_t b = 0; b < rb / BNE_TERNARY3_BLOCK_BYTES; ++b) {
            for (size_t i = 0; i < BNE_TERNARY3_BLOCK_BYTES; ++i) {
                uint8_t byte = packed[j * rb + b * BNE_TERNARY3_BLOCK_BYTES + i];
                unsigned t = byte, v = 0;
                for (size_t d = 0; d < 5; ++d) {
                    unsigned c = (unsigned)bne_trit((uint8_t)t);
                    v = 3 * v + c;
                    size_t pos = b * BNE_TERNARY3_BLOCK + d * BNE_TERNARY3_BLOCK_BYTES + i;
                    if (pos < k) q[j * ldq + pos] = (int8_t)((int)c - 1);
                    t = (t * 3) & 255u;
                }
                if ((v * 256 + 242) / 243 != byte) return BNE_ERR_VALUE; /* not a byte the packer writes */
            }
        }
    }
    return BNE_OK;
}

int bne_ternary_unpack(const uint8_t *packed, size_t n, size_t k, int8_t *q, size_t ldq) {
    if (!q || !packed) return BNE_ERR_NULL;
    if (n == 0 || k == 0 || ldq < k) return BNE_ERR_SHAPE;
    size_t rb = bne_ternary_row_bytes(k);
    for (size_t j = 0; j < n; ++j) {
        for (size_t t = 0; t < k; ++t) {
            uint8_t byte = packed[j * rb + (t / BNE_TERNARY_BLOCK) * BNE_TERNARY_BLOCK_BYTES + (t & 31)];
            int c = (byte >> (2 * ((t % BNE_TERNARY_BLOCK) >> 5))) & 3;
            if (c == 3) return BNE_ERR_VALUE; /* code 3 is not a ternary value */
            q[j * ldq + t] = (int8_t)(c - 1);
        }
    }
    return BNE_OK;
}

int bne_quantize_act(int backend, const float *x, size_t m, size_t k, size_t ldx, int8_t *xq,
                     size_t ldq, float *scales) {
    const bne_kernels *kt;
    int rc = bne_resolve_backend(backend, &kt);
    if (rc) return rc;
    if (!x || !xq || !scales) return BNE_ERR_NULL;
    if (m == 0 || k == 0 || ldx < k || ldq < k) return BNE_ERR_SHAPE;
    return kt->quantize(x, m, k, ldx, xq, ldq, scales);
}

/* ---- GEMM dispatch ---------------------------------------------------- */

typedef struct {
    bne_gemm_kernel kernel;
    const bne_gemm_args *args;
} job;

static void job_range(void *ctx, size_t b, size_t e) {
    const job *jb = (const job *)ctx;
    jb->kernel(jb->args, b, e);
}

/* Grain: enough chunks for balance across threads, rows in multiples of 4. */
static size_t grain_for(size_t n) {
    size_t t = (size_t)bne_get_threads();
    size_t g = n / (t * 4);
    g = (g + 3) & ~(size_t)3;
    return g < 4 ? 4 : g;
}

#define M_TILE 256 /* activation rows per pool job: bounds the xsum scratch */

static int run_gemm(bne_gemm_kernel kernel, bne_gemm_args *a, int ternary) {
    int32_t xsum[M_TILE];
    size_t m_total = a->m;
    const int8_t *x0 = a->x;
    int32_t *yi0 = a->yi;
    float *yf0 = a->yf;
    const float *xs0 = a->xscale;
    for (size_t i0 = 0; i0 < m_total; i0 += M_TILE) {
        size_t mt = m_total - i0 < M_TILE ? m_total - i0 : M_TILE;
        a->x = x0 + i0 * a->ldx;
        a->m = mt;
        if (yi0) a->yi = yi0 + i0 * a->ldy;
        if (yf0) a->yf = yf0 + i0 * a->ldy;
        if (xs0) a->xscale = xs0 + i0;
        if (ternary) {
            for (size_t i = 0; i < mt; ++i) {
                const int8_t *x = a->x + i * a->ldx;
                int32_t s = 0;
                for (size_t t = 0; t < a->k; ++t) s += x[t];
                xsum[i] = s;
            }
            a->xsum = xsum;
        }
        job jb = {kernel, a};
        bne_pool_run(job_range, &jb, a->n, grain_for(a->n));
    }
    return BNE_OK;
}

static int check_common(const void *w, size_t n, size_t k, const int8_t *x, size_t m, size_t ldx,
                        const void *y, size_t ldy) {
    if (!w || !x || !y) return BNE_ERR_NULL;
    if (n == 0 || k == 0 || m == 0 || k > BNE_MAX_K || ldx < k || ldy < n) return BNE_ERR_SHAPE;
    return BNE_OK;
}

int bne_ternary_gemm_i32(int backend, const uint8_t *w, size_t n, size_t k, const int8_t *x,
                         size_t m, size_t ldx, int32_t *y, size_t ldy) {
    const bne_kernels *kt;
    int rc = bne_resolve_backend(backend, &kt);
    if (rc) return rc;
    if ((rc = check_common(w, n, k, x, m, ldx, y, ldy))) return rc;
    bne_gemm_args a = {0};
    a.w = w; a.ldw = bne_ternary_row_bytes(k); a.n = n; a.k = k;
    a.x = x; a.ldx = ldx; a.m = m; a.yi = y; a.ldy = ldy;
    return run_gemm(kt->ternary_gemm, &a, 1);
}

int bne_ternary_gemm_f32(int backend, const uint8_t *w, size_t n, size_t k, float wscale,
                         const int8_t *x, size_t m, size_t ldx, const float *xscale, float *y,
                         size_t ldy) {
    const bne_kernels *kt;
    int rc = bne_resolve_backend(backend, &kt);
    if (rc) return rc;
    if ((rc = check_common(w, n, k, x, m, ldx, y, ldy))) return rc;
    if (!xscale) return BNE_ERR_NULL;
    bne_gemm_args a = {0};
    a.w = w; a.ldw = bne_ternary_row_bytes(k); a.n = n; a.k = k;
    a.x = x; a.ldx = ldx; a.m = m; a.yf = y; a.ldy = ldy;
    a.wscale = &wscale; a.wscale_per_row = 0; a.xscale = xscale;
    return run_gemm(kt->ternary_gemm, &a, 1);
}

static bne_gemm_kernel ternary3_kernel(const bne_kernels *kt) {
    return kt->ternary3_gemm ? kt->ternary3_gemm : bne_kernels_ref.ternary3_gemm;
}

int bne_ternary3_gemm_i32(int backend, const uint8_t *w, size_t n, size_t k, const int8_t *x, size_t m,
                          size_t ldx, int32_t *y, size_t ldy) {
    const bne_kernels *kt;
    int rc = bne_resolve_backend(backend, &kt);
    if (rc) return rc;
    if ((rc = check_common(w, n, k, x, m, ldx, y, ldy))) return rc;
    bne_gemm_args a = {0};
    a.w = w; a.ldw = bne_ternary3_row_bytes(k); a.n = n; a.k = k;
    a.x = x; a.ldx = ldx; a.m = m; a.yi = y; a.ldy = ldy;
    return run_gemm(ternary3_kernel(kt), &a, 1);
}

int bne_ternary3_gemm_f32(int backend, const uint8_t *w, size_t n, size_t k, float wscale, const int8_t *x,
                          size_t m, size_t ldx, const float *xscale, float *y, size_t ldy) {
    const bne_kernels *kt;
    int rc = bne_resolve_backend(backend, &kt);
    if (rc) return rc;
    if ((rc = check_common(w, n, k, x, m, ldx, y, ldy))) return rc;
    if (!xscale) return BNE_ERR_NULL;
    bne_gemm_args a = {0};
    a.w = w; a.ldw = bne_ternary3_row_bytes(k); a.n = n; a.k = k;
    a.x = x; a.ldx = ldx; a.m = m; a.yf = y; a.ldy = ldy;
    a.wscale = &wscale; a.wscale_per_row = 0; a.xscale = xscale;
    return run_gemm(ternary3_kernel(kt), &a, 1);
}

int bne_ternary_gemv_i32(int backend, const uint8_t *w, size_t n, size_t k, const int8_t *x,
                         int32_t *y) {
    return bne_ternary_gemm_i32(backend, w, n, k, x, 1, k, y, n);
}

int bne_int8_rowsum(const int8_t *w, size_t n, size_t k, size_t ldw, int32_t *wsum) {
    if (!w || !wsum) return BNE_ERR_NULL;
    if (n == 0 || k == 0 || ldw < k) return BNE_ERR_SHAPE;
    for (size_t j = 0; j < n; ++j) {
        int32_t s = 0;
        for (size_t t = 0; t < k; ++t) {
            if (w[j * ldw + t] == -128) return BNE_ERR_VALUE; /* kernels need [-127, 127] */
            s += w[j * ldw + t];
        }
        wsum[j] = s;
    }
    return BNE_OK;
}

int bne_int8_gemm_i32(int backend, const int8_t *w, size_t n, size_t k, size_t ldw,
                      const int32_t *wsum, const int8_t *x, size_t m, size_t ldx, int32_t *y,
                      size_t ldy) {
    const bne_kernels *kt;
    int rc = bne_resolve_backend(backend, &kt);
    if (rc) return rc;
    if ((rc = check_common(w, n, k, x, m, ldx, y, ldy))) return rc;
    if (!wsum) return BNE_ERR_NULL;
    if (ldw < k) return BNE_ERR_SHAPE;
    bne_gemm_args a = {0};
    a.w = (const uint8_t *)w; a.ldw = ldw; a.wsum = wsum; a.n = n; a.k = k;
    a.x = x; a.ldx = ldx; a.m = m; a.yi = y; a.ldy = ldy;
    return run_gemm(kt->int8_gemm, &a, 0);
}

int bne_int8_gemm_f32(int backend, const int8_t *w, size_t n, size_t k, size_t ldw,
                      const int32_t *wsum, const float *wscale, const int8_t *x, size_t m,
                      size_t ldx, const float *xscale, float *y, size_t ldy) {
    const bne_kernels *kt;
    int rc = bne_resolve_backend(backend, &kt);
    if (rc) return rc;
    if ((rc = check_common(w, n, k, x, m, ldx, y, ldy))) return rc;
    if (!wsum || !wscale || !xscale) return BNE_ERR_NULL;
    if (ldw < k) return BNE_ERR_SHAPE;
    bne_gemm_args a = {0};
    a.w = (const uint8_t *)w; a.ldw = ldw; a.wsum = wsum; a.n = n; a.k = k;
    a.x = x; a.ldx = ldx; a.m = m; a.yf = y; a.ldy = ldy;
    a.wscale = wscale; a.wscale_per_row = 1; a.xscale = xscale;
    return run_gemm(kt->int8_gemm, &a, 0);
}

int bne_int8_gemv_i32(int backend, const int8_t *w, size_t n, size_t k, size_t ldw,
                      const int32_t *wsum, const int8_t *x, int32_t *y) {
    return bne_int8_gemm_i32(backend, w, n, k, ldw, wsum, x, 1, k, y, n);
}
