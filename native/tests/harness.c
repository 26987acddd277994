/* harness.c - test-vector harness: runs every case of IN_FILE on AUTO and on
 * every backend this CPU supports, with 1 and 2 threads, and writes all
 * results to OUT_FILE for the Python test to compare with numpy.
 *
 *   usage: harness IN_FILE OUT_FILE
 *
 * Linked statically with the library sources; under qemu-user the -cpu model
 * decides which backends getauxval() lets run.  Prints one JSON line; exits 0
 * only when every status is the expected one, 1 and 2 threads agree, every
 * backend agrees with "ref", and no write lands outside its output.
 *
 * All integers are little-endian.  Input (version 1):
 *   "BNEV" u32 version u32 ncases, then per case:
 *   u32 kind (1 ternary, 2 int8, 3 quantize, 4 ternary base-3) u32 n u32 k u32 m i32 expect_status
 *     ternary:  u8 w[n * row_bytes(k)]  f32 wscale     i8 x[m*k]  f32 xscale[m]
 *     base-3:   u8 w[n * ternary3_row_bytes(k)]  f32 wscale  i8 x[m*k]  f32 xscale[m]
 *     int8:     i8 w[n * k]             f32 wscale[n]  i8 x[m*k]  f32 xscale[m]
 *     quantize: f32 x[m*k]                             (n is 0)
 * Output (version 1):
 *   "BNER" u32 version u32 ncases u32 nruns, then per case, nruns records:
 *   u32 backend u32 threads i32 status, then
 *     ternary / int8: i32 y[m*n]  f32 y[m*n]   (the _i32 and _f32 entry points)
 *     quantize:       i8 xq[m*k]  f32 scales[m]
 * A run's status is the first non-OK status of its calls.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitnet_edge.h"

#define IN_MAGIC "BNEV"
#define OUT_MAGIC "BNER"
#define FORMAT_VERSION 1u
#define MAX_DIM (1u << 24) /* sanity bound on n, k, m read from the file */

enum { KIND_TERNARY = 1, KIND_INT8 = 2, KIND_QUANT = 3, KIND_TERNARY3 = 4 };

/* Strides wider than the rows, with sentinel padding, so kernels that ignore
 * ldx/ldw/ldy or write past a row are caught. */
#define PAD_X 5
#define PAD_W 3
#define PAD_Y 2
#define SENT_I8 ((int8_t)0x5a)
#define SENT_I32 ((int32_t)0x7eadbeef)

typedef struct {
    uint32_t kind, n, k, m;
    int32_t expect;
    uint8_t *w;      /* ternary packed or int8, as in the file */
    float *wscale;   /* 1 or n values */
    int8_t *x;       /* m*k */
    float *xscale;   /* m */
    float *xf;       /* quantize input m*k */
} tcase;

typedef struct {
    int status_errors, thread_mismatches, ref_mismatches, stride_errors, gemv_mismatches;
} tally;

static int read_exact(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

static int write_exact(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n; }

static void *xmalloc(size_t n) { return malloc(n ? n : 1); }

static size_t payload_bytes(const tcase *c) {
    if (c->kind == KIND_QUANT) return (size_t)c->m * c->k + (size_t)c->m * sizeof(float);
    return (size_t)c->m * c->n * (sizeof(int32_t) + sizeof(float));
}

static int read_case(FILE *f, tcase *c) {
    uint32_t h[4];
    memset(c, 0, sizeof *c);
    if (!read_exact(f, h, sizeof h) || !read_exact(f, &c->expect, sizeof c->expect)) return 0;
    c->kind = h[0]; c->n = h[1]; c->k = h[2]; c->m = h[3];
    if (c->k == 0 || c->m == 0 || c->k > MAX_DIM || c->m > MAX_DIM || c->n > MAX_DIM) return 0;
    size_t mk = (size_t)c->m * c->k;
    if (c->kind == KIND_QUANT) {
        c->xf = xmalloc(mk * sizeof(float));
        return c->xf && read_exact(f, c->xf, mk * sizeof(float));
    }
    if (c->kind != KIND_TERNARY && c->kind != KIND_INT8 && c->kind != KIND_TERNARY3) return 0;
    if (c->n == 0) return 0;
    size_t wbytes = c->kind == KIND_TERNARY    ? (size_t)c->n * bne_ternary_row_bytes(c->k)
                    : c->kind == KIND_TERNARY3 ? (size_t)c->n * bne_ternary3_row_bytes(c->k)
                                               : (size_t)c->n * c->k;
    size_t nws = c->kind == KIND_INT8 ? c->n : 1;
    c->w = xmalloc(wbytes);
    c->wscale = xmalloc(nws * sizeof(float));
    c->x = xmalloc(mk);
    c->xscale = xmalloc((size_t)c->m * sizeof(float));
    if (!c->w || !c->wscale || !c->x || !c->xscale) return 0;
    return read_exact(f, c->w, wbytes) && read_exact(f, c->wscale, nws * sizeof(float)) &&
           read_exact(f, c->x, mk) && read_exact(f, c->xscale, (size_t)c->m * sizeof(float));
}

static void free_case(tcase *c) {
    free(c->w); free(c->wscale); free(c->x); free(c->xscale); free(c->xf);
}

/* Run one case on one backend; out receives payload_bytes(c) bytes. */
static int run_case(const tcase *c, int backend, uint8_t *out, tally *t) {
    const size_t n = c->n, k = c->k, m = c->m;
    int st = BNE_OK, rc;
#define KEEP(call) do { rc = (call); if (st == BNE_OK) st = rc; } while (0)
    if (c->kind == KIND_QUANT) {
        const size_t ldx = k + PAD_X, ldq = k + PAD_X;
        float *xf = xmalloc(m * ldx * sizeof(float));
        int8_t *xq = xmalloc(m * ldq);
        float *sc = xmalloc(m * sizeof(float));
        if (!xf || !xq || !sc) { free(xf); free(xq); free(sc); return -1; }
        for (size_t i = 0; i < m * ldx; ++i) xf[i] = 1e30f; /* would change amax if read */
        for (size_t i = 0; i < m; ++i) memcpy(xf + i * ldx, c->xf + i * k, k * sizeof(float));
        memset(xq, SENT_I8, m * ldq);
        memset(sc, 0, m * sizeof(float));
        KEEP(bne_quantize_act(backend, xf, m, k, ldx, xq, ldq, sc));
        for (size_t i = 0; i < m; ++i) {
            memcpy(out + i * k, xq + i * ldq, k);
            for (size_t p = k; p < ldq; ++p) t->stride_errors += xq[i * ldq + p] != SENT_I8;
        }
        memcpy(out + m * k, sc, m * sizeof(float));
        free(xf); free(xq); free(sc);
        return st;
    }
    const size_t ldx = k + PAD_X, ldy = n + PAD_Y;
    int8_t *x = xmalloc(m * ldx);
    int32_t *yi = xmalloc(m * ldy * sizeof(int32_t));
    float *yf = xmalloc(m * ldy * sizeof(float));
    int8_t *w8 = NULL;
    int32_t *wsum = NULL;
    if (!x || !yi || !yf) { free(x); free(yi); free(yf); return -1; }
    memset(x, 0x7f, m * ldx); /* would change the sums if read */
    for (size_t i = 0; i < m; ++i) memcpy(x + i * ldx, c->x + i * k, k);
    for (size_t i = 0; i < m * ldy; ++i) { yi[i] = SENT_I32; memcpy(&yf[i], &yi[i], 4); }
    if (c->kind == KIND_TERNARY) {
        KEEP(bne_ternary_gemm_i32(backend, c->w, n, k, x, m, ldx, yi, ldy));
        KEEP(bne_ternary_gemm_f32(backend, c->w, n, k, c->wscale[0], x, m, ldx, c->xscale, yf, ldy));
        if (m == 1) { /* the GEMV entry point must agree with the m = 1 GEMM */
            int32_t *yv = xmalloc(n * sizeof(int32_t));
            if (!yv) { free(x); free(yi); free(yf); return -1; }
            KEEP(bne_ternary_gemv_i32(backend, c->w, n, k, c->x, yv));
            t->gemv_mismatches += memcmp(yv, yi, n * sizeof(int32_t)) != 0;
            free(yv);
        }
    } else if (c->kind == KIND_TERNARY3) {
        KEEP(bne_ternary3_gemm_i32(backend, c->w, n, k, x, m, ldx, yi, ldy));
        KEEP(bne_ternary3_gemm_f32(backend, c->w, n, k, c->wscale[0], x, m, ldx, c->xscale, yf, ldy));
    } else {
        const size_t ldw = k + PAD_W;
        w8 = xmalloc(n * ldw);
        wsum = xmalloc(n * sizeof(int32_t));
        if (!w8 || !wsum) { free(x); free(yi); free(yf); free(w8); free(wsum); return -1; }
        memset(w8, 0x7f, n * ldw);
        for (size_t j = 0; j < n; ++j) memcpy(w8 + j * ldw, c->w + j * k, k);
        KEEP(bne_int8_rowsum(w8, n, k, ldw, wsum));
        KEEP(bne_int8_gemm_i32(backend, w8, n, k, ldw, wsum, x, m, ldx, yi, ldy));
        KEEP(bne_int8_gemm_f32(backend, w8, n, k, ldw, wsum, c->wscale, x, m, ldx, c->xscale,
                               yf, ldy));
        if (m == 1) {
            int32_t *yv = xmalloc(n * sizeof(int32_t));
            if (!yv) { free(x); free(yi); free(yf); free(w8); free(wsum); return -1; }
            KEEP(bne_int8_gemv_i32(backend, w8, n, k, ldw, wsum, c->x, yv));
            t->gemv_mismatches += memcmp(yv, yi, n * sizeof(int32_t)) != 0;
            free(yv);
        }
    }
    for (size_t i = 0; i < m; ++i) {
        memcpy(out + i * n * 4, yi + i * ldy, n * 4);
        memcpy(out + (m + i) * n * 4, yf + i * ldy, n * 4);
        for (size_t p = n; p < ldy; ++p) {
            int32_t fbits;
            memcpy(&fbits, &yf[i * ldy + p], 4);
            t->stride_errors += (yi[i * ldy + p] != SENT_I32) + (fbits != SENT_I32);
        }
    }
    free(x); free(yi); free(yf); free(w8); free(wsum);
    return st;
#undef KEEP
}

static int fail(const char *msg, const char *detail) {
    printf("{\"error\": \"%s%s\"}\n", msg, detail ? detail : "");
    return 2;
}

int main(int argc, char **argv) {
    if (argc != 3) return fail("usage: harness IN_FILE OUT_FILE", NULL);
    FILE *in = fopen(argv[1], "rb");
    if (!in) return fail("cannot open ", argv[1]);
    char magic[4];
    uint32_t ver, ncases;
    if (!read_exact(in, magic, 4) || memcmp(magic, IN_MAGIC, 4) != 0 ||
        !read_exact(in, &ver, 4) || !read_exact(in, &ncases, 4)) {
        fclose(in);
        return fail("not a BNEV test-vector file: ", argv[1]);
    }
    if (ver != FORMAT_VERSION) {
        fclose(in);
        return fail("unsupported BNEV version; regenerate the vectors with "
                    "tests/test_aarch64_qemu.py", NULL);
    }

    /* Runs: AUTO first, then every backend the CPU supports; threads 1 and 2. */
    static const int thread_counts[2] = {1, 2};
    int backends[BNE_BACKEND_COUNT], nb = 0;
    backends[nb++] = BNE_BACKEND_AUTO;
    for (int b = 1; b < BNE_BACKEND_COUNT; ++b)
        if (bne_backend_supported(b)) backends[nb++] = b;
    const uint32_t nruns = (uint32_t)(nb * 2);

    FILE *out = fopen(argv[2], "wb");
    if (!out) { fclose(in); return fail("cannot create ", argv[2]); }
    uint32_t hdr[3] = {FORMAT_VERSION, ncases, nruns};
    if (!write_exact(out, OUT_MAGIC, 4) || !write_exact(out, hdr, sizeof hdr)) {
        fclose(in); fclose(out);
        return fail("write failed: ", argv[2]);
    }

    tally t = {0, 0, 0, 0, 0};
    int io_error = 0;
    for (uint32_t ci = 0; ci < ncases && !io_error; ++ci) {
        tcase c;
        if (!read_case(in, &c)) { free_case(&c); io_error = 1; break; }
        size_t pb = payload_bytes(&c);
        uint8_t *res = xmalloc(pb * nruns);
        int *st = xmalloc(sizeof(int) * nruns);
        if (!res || !st) { free(res); free(st); free_case(&c); io_error = 1; break; }
        for (int ti = 0; ti < 2; ++ti) {
            if (bne_set_threads(thread_counts[ti]) != BNE_OK) t.status_errors++;
            for (int bi = 0; bi < nb; ++bi) {
                int r = ti * nb + bi;
                memset(res + (size_t)r * pb, 0, pb);
                st[r] = run_case(&c, backends[bi], res + (size_t)r * pb, &t);
                if (st[r] < 0) io_error = 1;
                if (st[r] != c.expect) t.status_errors++;
            }
        }
        if (c.expect == BNE_OK) { /* contents are only defined on success */
            int ref = -1;
            for (int bi = 0; bi < nb; ++bi) if (backends[bi] == BNE_BACKEND_REF) ref = bi;
            for (int r = 0; r < (int)nruns; ++r) {
                if (r >= nb) t.thread_mismatches += memcmp(res + (size_t)r * pb,
                                                           res + (size_t)(r - nb) * pb, pb) != 0;
                if (ref >= 0) t.ref_mismatches += memcmp(res + (size_t)r * pb,
                                                         res + (size_t)ref * pb, pb) != 0;
            }
        }
        for (int r = 0; r < (int)nruns && !io_error; ++r) {
            uint32_t rec[3] = {(uint32_t)backends[r % nb], (uint32_t)thread_counts[r / nb],
                               (uint32_t)st[r]};
            if (!write_exact(out, rec, sizeof rec) || !write_exact(out, res + (size_t)r * pb, pb))
                io_error = 1;
        }
        free(res); free(st); free_case(&c);
    }
    fclose(in);
    if (fclose(out) != 0) io_error = 1;
    bne_set_threads(1);

    uint32_t feat = bne_cpu_features();
    static const struct { uint32_t bit; const char *name; } FEATS[] = {
        {BNE_CPU_AVX2, "avx2"}, {BNE_CPU_FMA, "fma"}, {BNE_CPU_AVX512F, "avx512f"},
        {BNE_CPU_AVX512BW, "avx512bw"}, {BNE_CPU_AVX512VL, "avx512vl"},
        {BNE_CPU_AVX512VNNI, "avx512vnni"}, {BNE_CPU_NEON, "neon"}, {BNE_CPU_DOTPROD, "dotprod"},
        {BNE_CPU_RVV, "v"},
    };
    printf("{\"version\": \"%s\", \"target\": \"%s\", \"best\": \"%s\", \"features\": [",
           bne_version(), bne_target(), bne_backend_name(bne_backend_best()));
    int first = 1;
    for (size_t i = 0; i < sizeof FEATS / sizeof FEATS[0]; ++i)
        if (feat & FEATS[i].bit) { printf("%s\"%s\"", first ? "" : ", ", FEATS[i].name); first = 0; }
    printf("], \"backends\": [");
    for (int bi = 0; bi < nb; ++bi) printf("%s\"%s\"", bi ? ", " : "", bne_backend_name(backends[bi]));
    printf("], \"threads\": [1, 2], \"cases\": %u, \"io_error\": %d, \"status_errors\": %d, "
           "\"thread_mismatches\": %d, \"ref_mismatches\": %d, \"gemv_mismatches\": %d, "
           "\"stride_errors\": %d}\n",
           ncases, io_error, t.status_errors, t.thread_mismatches, t.ref_mismatches,
           t.gemv_mismatches, t.stride_errors);
    if (io_error) return 2;
    return (t.status_errors || t.thread_mismatches || t.ref_mismatches || t.gemv_mismatches ||
            t.stride_errors) ? 1 : 0;
}
