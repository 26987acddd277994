/* decoder_harness.c - runs bne_decoder_forward on a decoder described in IN_FILE: a prompt (all
 * logits) then single-token steps, for every KV cache type, on AUTO and every backend the CPU
 * supports, with 1 and 2 threads, and writes logits and hidden states to OUT_FILE.
 * tests/native/test_decoder_qemu.py builds it for the host and for aarch64 (qemu) and compares.
 *
 *   usage: decoder_harness IN_FILE OUT_FILE
 *
 * Little-endian.  Input "BNDV" u32 version=1, then
 *   u32 hidden ffn layers heads kv_heads head_dim vocab max_positions act n_prompt n_steps sub_norms
 *   f32 eps attn_scale
 *   per layer: f32 in_norm[hidden] post_norm[hidden] [f32 attn_sub[heads*head_dim] ffn_sub[ffn]],
 *              then the linears q k v o gate up down
 *   f32 final_norm[hidden], the head linear
 *   f32 rope_cos[max_positions * head_dim/2] rope_sin[...]
 *   f32 x[(n_prompt + n_steps) * hidden]
 * A linear: u32 format n k, f32 scale, u64 nbytes, u8 w[nbytes], and for int8 f32 scales[n] i32 wsum[n].
 * Output "BNDR" u32 version=1 u32 nruns, then per run:
 *   u32 kv_type backend threads, i32 status, f32 logits[(n_prompt + n_steps) * vocab],
 *   f32 hidden[(n_prompt + n_steps) * hidden]
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

static int read_linear(FILE *f, bne_linear *l) {
    uint32_t h[3];
    uint64_t nbytes;
    if (!rd(f, h, sizeof h) || !rd(f, &l->scale, 4) || !rd(f, &nbytes, 8)) return 0;
    l->format = (int)h[0];
    l->n = h[1];
    l->k = h[2];
    if (nbytes > ((uint64_t)1 << 32) || !(l->w = take(f, (size_t)nbytes))) return 0;
    if (l->format == BNE_W_INT8) {
        if (!(l->scales = take(f, l->n * 4)) || !(l->wsum = take(f, l->n * 4))) return 0;
    }
    return 1;
}

static int fail(const char *msg) {
    printf("{\"error\": \"%s\"}\n", msg);
    return 2;
}

int main(int argc, char **argv) {
    if (argc != 3) return fail("usage: decoder_harness IN_FILE OUT_FILE");
    FILE *in = fopen(argv[1], "rb");
    if (!in) return fail("cannot open the input");
    char magic[4];
    uint32_t ver, u[12];
    float fl[2];
    if (!rd(in, magic, 4) || memcmp(magic, "BNDV", 4) || !rd(in, &ver, 4) || ver != 1 || !rd(in, u, sizeof u) ||
        !rd(in, fl, sizeof fl))
        return fail("not a BNDV v1 file");
    bne_decoder d;
    memset(&d, 0, sizeof d);
    d.hidden = u[0]; d.ffn = u[1]; d.layers = u[2]; d.heads = u[3]; d.kv_heads = u[4]; d.head_dim = u[5];
    d.vocab = u[6]; d.max_positions = u[7]; d.act = (int)u[8];
    const size_t n_prompt = u[9], n_steps = u[10], sub = u[11], qd = d.heads * d.head_dim;
    d.eps = fl[0];
    d.attn_scale = fl[1];
    if (d.layers > 64 || d.hidden > 4096 || d.ffn > 16384 || qd > 4096 || d.max_positions > 4096 ||
        n_prompt == 0 || n_prompt + n_steps > d.max_positions)
        return fail("implausible sizes");
    bne_decoder_layer *layers = calloc(d.layers, sizeof *layers);
    if (!layers) return fail("out of memory");
    for (size_t i = 0; i < d.layers; ++i) {
        bne_decoder_layer *L = &layers[i];
        if (!(L->in_norm = take(in, d.hidden * 4)) || !(L->post_norm = take(in, d.hidden * 4))) return fail("short input");
        if (sub && (!(L->attn_sub_norm = take(in, qd * 4)) || !(L->ffn_sub_norm = take(in, d.ffn * 4))))
            return fail("short input");
        bne_linear *lins[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; ++j)
            if (!read_linear(in, lins[j])) return fail("short input");
    }
    d.layer = layers;
    const size_t half = d.head_dim / 2, total = n_prompt + n_steps;
    float *x;
    if (!(d.final_norm = take(in, d.hidden * 4)) || !read_linear(in, &d.head) ||
        !(d.rope_cos = take(in, d.max_positions * half * 4)) || !(d.rope_sin = take(in, d.max_positions * half * 4)) ||
        !(x = take(in, total * d.hidden * 4)))
        return fail("short input");
    fclose(in);

    int backends[BNE_BACKEND_COUNT], nb = 0;
    backends[nb++] = BNE_BACKEND_AUTO;
    for (int b = 1; b < BNE_BACKEND_COUNT; ++b)
        if (bne_backend_supported(b)) backends[nb++] = b;
    static const int kvs[3] = {BNE_KV_F32, BNE_KV_F16, BNE_KV_I8}, threads[2] = {1, 2};
    const uint32_t nruns = (uint32_t)(3 * nb * 2);
    FILE *out = fopen(argv[2], "wb");
    if (!out) return fail("cannot create the output");
    uint32_t hdr[2] = {1, nruns};
    fwrite("BNDR", 1, 4, out);
    fwrite(hdr, 4, 2, out);
    float *logits = malloc(total * d.vocab * 4), *hid = malloc(total * d.hidden * 4);
    int bad = 0;
    for (int kv = 0; kv < 3; ++kv) {
        d.kv_type = kvs[kv];
        size_t cap = d.max_positions, cb = bne_decoder_cache_bytes(&d, cap),
               wb = bne_decoder_workspace_bytes(&d, n_prompt, cap);
        void *cache = aligned_alloc(64, (cb + 63) & ~(size_t)63), *work = aligned_alloc(64, (wb + 63) & ~(size_t)63);
        if (!cache || !work || !logits || !hid) return fail("out of memory");
        for (int ti = 0; ti < 2; ++ti) {
            bne_set_threads(threads[ti]);
            for (int bi = 0; bi < nb; ++bi) {
                memset(cache, 0x55, cb);
                memset(logits, 0, total * d.vocab * 4);
                int st = bne_decoder_forward(backends[bi], &d, cache, cap, 0, x, n_prompt, work, wb, 1, logits, hid);
                for (size_t s = 0; s < n_steps && st == BNE_OK; ++s) {
                    size_t p = n_prompt + s;
                    st = bne_decoder_forward(backends[bi], &d, cache, cap, p, x + p * d.hidden, 1, work, wb, 0,
                                             logits + p * d.vocab, hid + p * d.hidden);
                }
                bad += st != BNE_OK;
                uint32_t rec[4] = {(uint32_t)kvs[kv], (uint32_t)backends[bi], (uint32_t)threads[ti], (uint32_t)st};
                fwrite(rec, 4, 4, out);
                fwrite(logits, 4, total * d.vocab, out);
                fwrite(hid, 4, total * d.hidden, out);
            }
        }
        free(cache);
        free(work);
    }
    bne_set_threads(1);
    if (fclose(out) != 0) return fail("write failed");
    printf("{\"target\": \"%s\", \"best\": \"%s\", \"backends\": [", bne_target(), bne_backend_name(bne_backend_best()));
    for (int bi = 0; bi < nb; ++bi) printf("%s\"%s\"", bi ? ", " : "", bne_backend_name(backends[bi]));
    printf("], \"runs\": %u, \"failed\": %d}\n", nruns, bad);
    return bad ? 1 : 0;
}
