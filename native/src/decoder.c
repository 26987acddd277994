/* decoder.c - the decoder entry points: size the cache and workspace, check a bne_decoder, and run
 * the forward pass of the chosen backend (decoder_impl.h, compiled once per variant). */
#include "bne_internal.h"

static size_t align64(size_t v) { return (v + 63) & ~(size_t)63; }

/* a * b, or 0 on overflow (0 is never a valid size here) */
static size_t mul(size_t a, size_t b) { return (a && b > (size_t)-1 / a) ? 0 : a * b; }

static int kv_elem(int kv_type) {
    switch (kv_type) {
    case BNE_KV_F32: return 4;
    case BNE_KV_F16: return 2;
    case BNE_KV_I8: return 1;
    default: return 0;
    }
}

int bne_dec_layout_of(const bne_decoder *d, size_t n, size_t capacity, bne_dec_layout *o) {
    const size_t cap_limit = (size_t)1 << 24, dim_limit = (size_t)1 << 20;
    if (!d) return BNE_ERR_NULL;
    int elem = kv_elem(d->kv_type);
    if (!elem) return BNE_ERR_VALUE;
    if (d->hidden == 0 || d->ffn == 0 || d->heads == 0 || d->kv_heads == 0 || d->head_dim == 0 ||
        d->head_dim % 2 || d->heads % d->kv_heads || d->vocab == 0 || d->layers == 0 ||
        d->hidden > dim_limit || d->ffn > dim_limit || d->heads > 4096 || d->head_dim > 4096 ||
        d->vocab > ((size_t)1 << 26) || d->layers > 65536 || capacity == 0 || capacity > cap_limit ||
        n == 0 || n > capacity)
        return BNE_ERR_SHAPE;
    o->qd = d->heads * d->head_dim;
    o->kvd = d->kv_heads * d->head_dim;
    o->qkvd = o->qd + 2 * o->kvd;
    if (o->qd > dim_limit) return BNE_ERR_SHAPE;
    size_t widest = d->hidden > d->ffn ? d->hidden : d->ffn;
    if (o->qd > widest) widest = o->qd;
    size_t off = 0;
#define TAKE(field, bytes)                    \
    do {                                      \
        size_t b_ = (bytes);                  \
        if (!b_) return BNE_ERR_SHAPE;        \
        o->field = off;                       \
        off += align64(b_);                   \
    } while (0)
    TAKE(x, mul(mul(n, d->hidden), 4));         /* residual stream */
    TAKE(h, mul(mul(n, widest), 4));            /* normed input of a linear */
    TAKE(qkv, mul(mul(n, o->qkvd), 4));         /* q | k | v of each token */
    TAKE(att, mul(mul(n, o->qd), 4));           /* attention output */
    TAKE(gu, mul(mul(n, d->ffn), 8));           /* gate, up (gate becomes act(gate) * up) */
    TAKE(yo, mul(mul(n, d->hidden), 4));        /* o / down output before the residual add */
    TAKE(xq, mul(n, widest));                   /* quantized activations */
    TAKE(xs, mul(n, 4));                        /* their scales */
    TAKE(xsum, mul(n, 4));                      /* their row sums (ternary kernels) */
    /* attention partials of one token: per head and chunk of 64 positions, o (head_dim), max, sum */
    TAKE(part, mul(mul(mul(d->heads, (capacity + 63) / 64), d->head_dim + 2), 4));
    TAKE(left, mul(d->kv_heads, 4));            /* chunks of each kv head not yet done (that token) */
#undef TAKE
    o->total = off;
    o->kv_row = d->head_dim * (size_t)elem;
    o->kv_cap = (capacity + 7) & ~(size_t)7; /* whole tiles of 8 positions (decoder_impl.h) */
    size_t rows = d->kv_heads * o->kv_cap;
    o->kv_plane = align64(mul(rows, o->kv_row)) + (d->kv_type == BNE_KV_I8 ? align64(rows * 4) : 0);
    o->kv_layer = 2 * o->kv_plane;
    if (mul(o->kv_layer, d->layers) == 0) return BNE_ERR_SHAPE;
    return BNE_OK;
}

size_t bne_decoder_cache_bytes(const bne_decoder *d, size_t capacity) {
    bne_dec_layout lo;
    if (bne_dec_layout_of(d, 1, capacity, &lo)) return 0;
    return lo.kv_layer * d->layers;
}

size_t bne_decoder_workspace_bytes(const bne_decoder *d, size_t n, size_t capacity) {
    bne_dec_layout lo;
    if (bne_dec_layout_of(d, n, capacity, &lo)) return 0;
    return lo.total;
}

static int check_linear(const bne_linear *l, size_t n, size_t k) {
    if (l->n != n || l->k != k || k > BNE_MAX_K) return BNE_ERR_SHAPE;
    if (!l->w) return BNE_ERR_NULL;
    switch (l->format) {
    case BNE_W_TERNARY2:
    case BNE_W_TERNARY3:
        return (l->scale > 0.0f && l->scale - l->scale == 0.0f) ? BNE_OK : BNE_ERR_VALUE;
    case BNE_W_INT8: return (l->scales && l->wsum) ? BNE_OK : BNE_ERR_NULL;
    case BNE_W_F32: return BNE_OK;
    default: return BNE_ERR_VALUE;
    }
}

static int check_decoder(const bne_decoder *d, const bne_dec_layout *lo) {
    int rc;
    if (!d->layer || !d->final_norm || !d->rope_cos || !d->rope_sin) return BNE_ERR_NULL;
    if (d->act != BNE_ACT_RELU2 && d->act != BNE_ACT_SILU) return BNE_ERR_VALUE;
    if (!(d->eps >= 0.0f) || !(d->attn_scale > 0.0f)) return BNE_ERR_VALUE;
    for (size_t i = 0; i < d->layers; ++i) {
        const bne_decoder_layer *L = &d->layer[i];
        if (!L->in_norm || !L->post_norm) return BNE_ERR_NULL;
        if ((rc = check_linear(&L->q, lo->qd, d->hidden)) || (rc = check_linear(&L->k, lo->kvd, d->hidden)) ||
            (rc = check_linear(&L->v, lo->kvd, d->hidden)) || (rc = check_linear(&L->o, d->hidden, lo->qd)) ||
            (rc = check_linear(&L->gate, d->ffn, d->hidden)) || (rc = check_linear(&L->up, d->ffn, d->hidden)) ||
            (rc = check_linear(&L->down, d->hidden, d->ffn)))
            return rc;
    }
    return check_linear(&d->head, d->vocab, d->hidden);
}

int bne_decoder_forward(int backend, const bne_decoder *d, void *cache, size_t capacity, size_t pos0,
                        const float *x, size_t n, void *work, size_t work_bytes, int all_logits, float *logits,
                        float *hidden) {
    const bne_kernels *kt;
    int rc = bne_resolve_backend(backend, &kt);
    if (rc) return rc;
    if (!d || !cache || !x || !work || !logits) return BNE_ERR_NULL;
    bne_dec_layout lo;
    if ((rc = bne_dec_layout_of(d, n, capacity, &lo))) return rc;
    if (pos0 > capacity - n || pos0 + n > d->max_positions) return BNE_ERR_SHAPE;
    if (work_bytes < lo.total) return BNE_ERR_SHAPE;
    if (((uintptr_t)cache | (uintptr_t)work) & 63) return BNE_ERR_SHAPE;
    if ((rc = check_decoder(d, &lo))) return rc;
    bne_decoder_fn fn = kt->decoder ? kt->decoder : bne_decoder_forward_ref;
    return fn(kt, d, cache, capacity, pos0, x, n, work, all_logits, logits, hidden);
}
