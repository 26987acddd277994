/* conv_harness.c - test-vector harness of the conv kernels (bne_dwconv_i8, bne_dwconv_f32,
 * bne_conv_gemm_f32): runs every case of IN_FILE on AUTO and on every backend the CPU supports,
 * with 1 and 2 threads, and writes the outputs to OUT_FILE for tests/test_graph_kernels_qemu.py
 * to compare with numpy bit for bit.
 *
 *   usage: conv_harness IN_FILE OUT_FILE
 *
 * Little-endian.  Input "BNCV" u32 version=1 u32 ncases, then per case:
 *   u32 kind (1 dw int8, 2 dw float32, 3 conv gemm) u32 has_bias f32 lo f32 hi, then
 *   dw:   u32 n h w c kh kw stride_h stride_w dil_h dil_w pad_top pad_left oh ow,
 *         x (i8 or f32, n*h*w*c) [f32 xscale[n]] taps (i8 or f32, kh*kw*c) [f32 wscale[c]] [f32 bias[c]]
 *   gemm: u32 m k n, i8 x[m*k] f32 xscale[m] i8 w4[ceil(k/4)*n*4] i32 wsum[n] f32 wscale[n] [f32 bias[n]]
 * Output "BNCR" u32 version=1 u32 ncases u32 nruns, then per case nruns records:
 *   u32 backend u32 threads i32 status f32 y[outputs]
 * Prints one JSON line; exits 0 when every status is BNE_OK.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitnet_edge.h"

static int rd(FILE *f, void *p, size_t n) { return n == 0 || fread(p, 1, n, f) == n; }

static void *take(FILE *f, size_t n) {
    void *p = malloc(n ? n : 1);
    if (p && !rd(f, p, n)) { free(p); return NULL; }
    return p;
}

typedef struct {
    uint32_t kind, has_bias;
    float lo, hi;
    bne_dwconv_shape s;
    uint32_t m, k, n;
    void *x, *taps;
    float *xscale, *wscale, *bias;
    int32_t *wsum;
    size_t outputs;
} ccase;

static int read_case(FILE *f, ccase *c) {
    memset(c, 0, sizeof *c);
    if (!rd(f, &c->kind, 4) || !rd(f, &c->has_bias, 4) || !rd(f, &c->lo, 4) || !rd(f, &c->hi, 4)) return 0;
    if (c->kind == 1 || c->kind == 2) {
        uint32_t v[14];
        if (!rd(f, v, sizeof v)) return 0;
        size_t *dst[14] = {&c->s.n, &c->s.h, &c->s.w, &c->s.c, &c->s.kh, &c->s.kw, &c->s.stride_h, &c->s.stride_w,
                           &c->s.dil_h, &c->s.dil_w, &c->s.pad_top, &c->s.pad_left, &c->s.oh, &c->s.ow};
        for (int i = 0; i < 14; ++i) *dst[i] = v[i];
        size_t es = c->kind == 1 ? 1 : 4, nx = c->s.n * c->s.h * c->s.w * c->s.c, nt = c->s.kh * c->s.kw * c->s.c;
        if (!(c->x = take(f, nx * es))) return 0;
        if (c->kind == 1 && !(c->xscale = take(f, c->s.n * 4))) return 0;
        if (!(c->taps = take(f, nt * es))) return 0;
        if (c->kind == 1 && !(c->wscale = take(f, c->s.c * 4))) return 0;
        if (c->has_bias && !(c->bias = take(f, c->s.c * 4))) return 0;
        c->outputs = c->s.n * c->s.oh * c->s.ow * c->s.c;
        return 1;
    }
    if (c->kind != 3 || !rd(f, &c->m, 4) || !rd(f, &c->k, 4) || !rd(f, &c->n, 4)) return 0;
    if (!(c->x = take(f, (size_t)c->m * c->k)) || !(c->xscale = take(f, c->m * 4u))) return 0;
    if (!(c->taps = take(f, (size_t)(c->k + 3) / 4 * 4 * c->n)) || !(c->wsum = take(f, c->n * 4u))) return 0;
    if (!(c->wscale = take(f, c->n * 4u))) return 0;
    if (c->has_bias && !(c->bias = take(f, c->n * 4u))) return 0;
    c->outputs = (size_t)c->m * c->n;
    return 1;
}

static int run(const ccase *c, int backend, float *y) {
    switch (c->kind) {
    case 1: return bne_dwconv_i8(backend, &c->s, c->x, c->xscale, c->taps, c->wscale, c->bias, c->lo, c->hi, y);
    case 2: return bne_dwconv_f32(backend, &c->s, c->x, c->taps, c->bias, c->lo, c->hi, y);
    default: return bne_conv_gemm_f32(backend, c->taps, c->wsum, c->k, c->n, c->wscale, c->x, c->m, c->k,
                                      c->xscale, c->bias, c->lo, c->hi, y, c->n);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) { puts("{\"error\": \"usage: conv_harness IN OUT\"}"); return 2; }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    char magic[4];
    uint32_t version, ncases;
    if (!in || !out || !rd(in, magic, 4) || memcmp(magic, "BNCV", 4) || !rd(in, &version, 4) || version != 1 ||
        !rd(in, &ncases, 4)) {
        puts("{\"error\": \"bad input file\"}");
        return 2;
    }
    int backends[8], nb = 0;
    for (int b = 0; b < BNE_BACKEND_COUNT; ++b)
        if (b == BNE_BACKEND_AUTO || bne_backend_supported(b)) backends[nb++] = b;
    uint32_t nruns = (uint32_t)nb * 2;
    fwrite("BNCR", 1, 4, out);
    fwrite(&version, 4, 1, out);
    fwrite(&ncases, 4, 1, out);
    fwrite(&nruns, 4, 1, out);
    int bad = 0;
    for (uint32_t i = 0; i < ncases; ++i) {
        ccase c;
        if (!read_case(in, &c)) { printf("{\"error\": \"case %u unreadable\"}\n", i); return 2; }
        float *y = malloc(c.outputs * sizeof(float));
        for (int r = 0; r < nb; ++r) {
            for (uint32_t threads = 1; threads <= 2; ++threads) {
                bne_set_threads((int)threads);
                memset(y, 0xff, c.outputs * sizeof(float));
                int32_t st = run(&c, backends[r], y);
                bad += st != BNE_OK;
                uint32_t be = (uint32_t)backends[r];
                fwrite(&be, 4, 1, out);
                fwrite(&threads, 4, 1, out);
                fwrite(&st, 4, 1, out);
                fwrite(y, sizeof(float), c.outputs, out);
            }
        }
        free(y); free(c.x); free(c.taps); free(c.xscale); free(c.wscale); free(c.bias); free(c.wsum);
    }
    fclose(out);
    printf("{\"target\": \"%s\", \"best\": \"%s\", \"runs\": %u, \"bad_status\": %d}\n", bne_target(),
           bne_backend_name(bne_backend_best()), nruns, bad);
    return bad ? 1 : 0;
}
