/* decoder_bench.c - times decode steps of a decoder of the BitNet-b1.58-2B-4T shape (random 2-bit
 * ternary linears, a small int8 head) at a given context, and prints the decoder's own profile
 * (the median over the steps of each phase, ms) and a checksum of the logits as one JSON line.  The cache is filled
 * with random rows up to the context (no prefill), so a run takes seconds.
 * benchmarks/decoder_glue.py builds and runs it.
 *
 *   usage: decoder_bench THREADS KV_TYPE(0 f32, 1 f16, 2 int8) CONTEXT STEPS [BACKEND [LAYERS [PROMPT]]]
 *   PROMPT > 1: each timed step is a prompt of PROMPT tokens at positions CONTEXT.. (prefill)
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bitnet_edge.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float unif(void) { return (float)((next() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; } /* [-1, 1) */
static float gauss(void) { return (unif() + unif() + unif()) * 1.0f; }

static void *amalloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64)) return NULL;
    return p;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static unsigned char valid2[81]; /* bytes whose four 2-bit codes are all in {0, 1, 2} */

static void ternary(bne_linear *l, size_t n, size_t k) {
    size_t rb = (k + 127) / 128 * 32, bytes = n * rb;
    unsigned char *w = amalloc(bytes);
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t r = next();
        for (int j = 0; j < 8 && i + j < bytes; ++j) w[i + j] = valid2[((r >> (8 * j)) & 0xff) % 81];
    }
    l->format = BNE_W_TERNARY2;
    l->w = w;
    l->n = n;
    l->k = k;
    l->scale = 1.0f / sqrtf((float)k * 2.0f / 3.0f);
}

static float *vec(size_t n, float base, float spread) {
    float *v = amalloc(n * 4);
    for (size_t i = 0; i < n; ++i) v[i] = base + spread * unif();
    return v;
}

static uint16_t f2h(float f) { /* random cache fill only: plain truncation is fine */
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t s = (x >> 16) & 0x8000u, e = (x >> 23) & 0xff, m = x & 0x7fffffu;
    if (e < 113) return (uint16_t)s;
    return (uint16_t)(s | ((e - 112) << 10) | (m >> 13));
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: decoder_bench THREADS KV_TYPE CONTEXT STEPS [BACKEND [LAYERS [PROMPT]]]\n");
        return 2;
    }
    int threads = atoi(argv[1]), kvt = atoi(argv[2]), backend = argc > 5 ? atoi(argv[5]) : 0;
    size_t ctx = (size_t)atol(argv[3]), steps = (size_t)atol(argv[4]), layers = argc > 6 ? (size_t)atol(argv[6]) : 30;
    size_t prompt = argc > 7 ? (size_t)atol(argv[7]) : 1;
    if (prompt < 1) prompt = 1;
    for (int b = 0, c = 0; b < 256; ++b)
        if ((b & 3) < 3 && ((b >> 2) & 3) < 3 && ((b >> 4) & 3) < 3 && ((b >> 6) & 3) < 3)
            valid2[c++] = (unsigned char)b;
    bne_decoder d;
    memset(&d, 0, sizeof d);
    d.hidden = 2560;
    d.ffn = 6912;
    d.layers = layers;
    d.heads = 20;
    d.kv_heads = 5;
    d.head_dim = 128;
    d.vocab = 4096;
    d.max_positions = 4096;
    d.eps = 1e-5f;
    d.attn_scale = 1.0f / sqrtf(128.0f);
    d.act = BNE_ACT_RELU2;
    d.kv_type = kvt;
    size_t qd = d.heads * d.head_dim, kvd = d.kv_heads * d.head_dim;
    bne_decoder_layer *L = calloc(layers, sizeof *L);
    for (size_t i = 0; i < layers; ++i) {
        L[i].in_norm = vec(d.hidden, 1.0f, 0.05f);
        L[i].post_norm = vec(d.hidden, 1.0f, 0.05f);
        L[i].attn_sub_norm = vec(qd, 1.0f, 0.05f);
        L[i].ffn_sub_norm = vec(d.ffn, 1.0f, 0.05f);
        ternary(&L[i].q, qd, d.hidden);
        ternary(&L[i].k, kvd, d.hidden);
        ternary(&L[i].v, kvd, d.hidden);
        ternary(&L[i].o, d.hidden, qd);
        ternary(&L[i].gate, d.ffn, d.hidden);
        ternary(&L[i].up, d.ffn, d.hidden);
        ternary(&L[i].down, d.hidden, d.ffn);
    }
    d.layer = L;
    d.final_norm = vec(d.hidden, 1.0f, 0.05f);
    ternary(&d.head, d.vocab, d.hidden);
    size_t half = d.head_dim / 2;
    float *rc = amalloc(d.max_positions * half * 4), *rs = amalloc(d.max_positions * half * 4);
    for (size_t p = 0; p < d.max_positions; ++p)
        for (size_t i = 0; i < half; ++i) {
            double a = (double)p * pow(500000.0, -(double)(2 * i) / (double)d.head_dim);
            rc[p * half + i] = (float)cos(a);
            rs[p * half + i] = (float)sin(a);
        }
    d.rope_cos = rc;
    d.rope_sin = rs;
    uint64_t prof[4] = {0};

    size_t cap = (ctx + (prompt > 1 ? prompt : steps + 1) + 7) / 8 * 8; /* whole K tiles: the int8 scales sit where older layouts had them */
    size_t cbytes = bne_decoder_cache_bytes(&d, cap), wbytes = bne_decoder_workspace_bytes(&d, prompt, cap);
    if (!cbytes || !wbytes) {
        fprintf(stderr, "bad shape\n");
        return 2;
    }
    unsigned char *cache = amalloc(cbytes), *work = amalloc(wbytes);
    memset(cache, 0, cbytes);
    /* random rows at positions < ctx: layout per layer K plane then V plane, (kv_heads, cap, hd) */
    size_t elem = kvt == BNE_KV_F32 ? 4 : kvt == BNE_KV_F16 ? 2 : 1, row = d.head_dim * elem;
    size_t cap8 = (cap + 7) & ~(size_t)7, rows = d.kv_heads * cap8;
    size_t plane = (rows * row + 63) / 64 * 64 + (kvt == BNE_KV_I8 ? (rows * 4 + 63) / 64 * 64 : 0);
    for (size_t li = 0; li < layers; ++li)
        for (int pl = 0; pl < 2; ++pl) {
            unsigned char *P = cache + (2 * li + pl) * plane;
            for (size_t g = 0; g < d.kv_heads; ++g)
                for (size_t t = 0; t < ctx; ++t) {
                    unsigned char *r = P + (g * cap8 + t) * row;
                    for (size_t c = 0; c < d.head_dim; ++c) {
                        float v = 2.0f * gauss();
                        if (kvt == BNE_KV_F32) memcpy(r + 4 * c, &v, 4);
                        else if (kvt == BNE_KV_F16) { uint16_t h = f2h(v); memcpy(r + 2 * c, &h, 2); }
                        else r[c] = (unsigned char)(int8_t)(int)(v * 30.0f);
                    }
                    if (kvt == BNE_KV_I8) ((float *)(P + (rows * row + 63) / 64 * 64))[g * cap8 + t] = 2.0f / 127.0f;
                }
        }
    float *x = vec(d.hidden * (prompt > 1 ? prompt : steps + 1), 0.0f, 1.0f), *logits = amalloc(d.vocab * 4);
    bne_set_threads(threads);
    int st = bne_decoder_forward(backend, &d, cache, cap, ctx, x, 1, work, wbytes, 0, logits, NULL); /* warm-up */
    if (st) {
        fprintf(stderr, "status %d\n", st);
        return 1;
    }
    d.profile_ns = prof;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double sum = 0;
    double *per = calloc(4 * steps, sizeof(double));
    for (size_t s = 0; s < steps; ++s) {
        memset(prof, 0, sizeof prof);
        st = prompt > 1 ? bne_decoder_forward(backend, &d, cache, cap, ctx, x, prompt, work, wbytes, 0, logits, NULL)
                        : bne_decoder_forward(backend, &d, cache, cap, ctx + 1 + s, x + (s + 1) * d.hidden, 1, work,
                                              wbytes, 0, logits, NULL);
        if (st) {
            fprintf(stderr, "status %d\n", st);
            return 1;
        }
        for (int c = 0; c < 4; ++c) per[c * steps + s] = prof[c] / 1e6;
        for (size_t v = 0; v < d.vocab; ++v) sum += logits[v] * (double)((v % 7) + 1);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double wall = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-6;
    double med[4];
    for (int c = 0; c < 4; ++c) {
        double *v = per + c * steps;
        qsort(v, steps, sizeof *v, cmp_double);
        med[c] = steps % 2 ? v[steps / 2] : 0.5 * (v[steps / 2 - 1] + v[steps / 2]);
    }
    uint32_t bits;
    float l0 = logits[0];
    memcpy(&bits, &l0, 4);
    printf("{\"threads\": %d, \"kv_type\": %d, \"context\": %zu, \"prompt\": %zu, \"steps\": %zu, \"layers\": %zu, \"backend\": \"%s\", "
           "\"ms_per_step\": %.4f, \"glue_ms\": %.4f, \"attention_ms\": %.4f, \"linears_ms\": %.4f, \"head_ms\": %.4f, "
           "\"checksum\": %.9e, \"last_logit0_bits\": %u}\n",
           threads, kvt, ctx, prompt, steps, layers, bne_backend_name(backend ? backend : bne_backend_best()), wall / steps,
           med[0], med[1], med[2], med[3], sum, bits);
    return 0;
}
