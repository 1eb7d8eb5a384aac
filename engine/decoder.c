/*
 * decoder.c — the llama forward pass (spec §2.4) over a batch of positions.
 *
 * Matrix products run over all entries of the batch at once on the thread
 * pool. Attention runs on the pool per (run of entries of one sequence, KV
 * head), reading that sequence's keys and values from the paged KV cache.
 *
 * Batch invariance: an entry's logits do not depend on what else is in the
 * batch (other sequences, or how a prompt was cut into chunks), so that the
 * scheduler can batch any requests together and prefix-cached rows equal
 * recomputed ones bit for bit. Every reduction is therefore per row, in an
 * order fixed by the row's own length: matrix products use
 * kn_matmul_invariant (dot products, never sgemm), and attention is the
 * fused kn_attention, which walks each query row's own positions in fixed
 * blocks whatever else is in the call. The price is prefill speed: sgemm is
 * up to 2x faster on long prompts.
 *
 * Numerics follow llama.cpp's CPU backend with flash attention (its default,
 * spec §2.5): with an F16 cache, K (after RoPE) and V are rounded to half
 * when stored and Q is rounded to half before q·k; the online softmax and
 * the weighted sum of V are in f32 (ggml accumulates V in half there: ours
 * is the more exact of the two).
 */
#include "decoder.h"

#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Entries of one sequence attended together: they share each block of the
 * sequence's K/V rows loaded by kn_attention (ATTN_CHUNK * group query rows
 * per block). 64 ran a prefill's attention ~8 % faster than 16. */
#define ATTN_CHUNK 64

typedef struct attn_item {
    int lo, hi;   /* entries [lo, hi) of one sequence, positions increasing */
    int kvh;      /* the KV head; its group of query heads is done together */
} attn_item;

struct decoder {
    const text_model *m;
    kv_cache *kv;
    threadpool *tp;
    int n_batch;
    int n_out;
    int n_threads;
    /* Activations, one row per batch entry (row-major). */
    float *x;          /* [n_batch][n_embd] residual stream */
    float *xb;         /* [n_batch][n_embd] normed input, then a block's output */
    float *q;          /* [n_batch][n_head*d], NULL if every layer's Q/K/V is fused */
    float *k;          /* [n_batch][n_head_kv*d], likewise */
    float *v;          /* [n_batch][n_head_kv*d], likewise */
    float *att;        /* [n_batch][n_head*d] attention output, heads concatenated */
    float *gate;       /* [n_batch][n_ff] */
    float *up;         /* [n_batch][n_ff], NULL if every layer's gate/up is fused */
    float *fused;      /* [n_batch][max(n_head*d + 2 n_head_kv*d, 2 n_ff)] the output of a
                        * layer's wqkv or ffn_gate_up (model.h), NULL if none has them */
    float *xo;         /* [n_out][n_embd] final-normed rows that want logits */
    float *logits;     /* [n_out][n_vocab] */
    int max_blocks;    /* KV blocks of one sequence at most */
    void *att_tmp;     /* [n_threads][att_tmp_per_thread bytes]: per thread the K and V block
                        * pointers of one head [2][max_blocks], a run's query and output
                        * rows [2][R][d] and their key counts [R] (R = ATTN_CHUNK * group),
                        * then kn_attention's scratch for R queries */
    size_t att_tmp_per_thread;
    attn_item *items;  /* [n_batch * n_head_kv] attention work items of a pass */
    int n_logits;      /* rows of logits from the last pass */
};

/* ---- creation --------------------------------------------------------------- */

static float *alloc_floats(size_t rows, size_t cols, bool *ok)
{
    size_t n;
    if (!size_mul(rows, cols, &n) || !size_mul(n, sizeof(float), &n)) {
        *ok = false;
        return NULL;
    }
    float *p = malloc(n ? n : 1);
    if (!p)
        *ok = false;
    return p;
}

int decoder_create(const text_model *m, kv_cache *kv, threadpool *tp, int n_batch, int n_out,
                   decoder **out, glimpse_err *err)
{
    const text_config *c = &m->cfg;
    const kv_params *kp = kv_cache_params(kv);
    decoder *d = NULL;
    int rc;
    *out = NULL;
    if (n_batch < 1 || n_out < 1 || n_out > n_batch)
        return err_set(err, GLIMPSE_EINVAL, "decoder: need 1 <= n_out (%d) <= n_batch (%d)", n_out, n_batch);
    if (kp->row_len != c->n_head_kv * c->head_dim || kp->n_head != c->n_head_kv || kp->n_layer != c->n_layer)
        return err_set(err, GLIMPSE_EINVAL, "decoder: kv cache shape does not match the model");
    if (kp->block_size != KN_ATTN_BLOCK) /* kn_attention reads the cache's blocks as they are */
        return err_set(err, GLIMPSE_EINVAL, "decoder: kv cache blocks of %d positions (the attention takes %d)",
                       kp->block_size, KN_ATTN_BLOCK);

    d = calloc(1, sizeof *d);
    if (!d)
        return err_set(err, GLIMPSE_ENOMEM, "decoder: out of memory");
    d->m = m;
    d->kv = kv;
    d->tp = tp;
    d->n_batch = n_batch;
    d->n_out = n_out;
    d->n_threads = tp ? threadpool_size(tp) : 1;
    d->max_blocks = (kp->max_seq_len + KN_ATTN_BLOCK - 1) / KN_ATTN_BLOCK;

    size_t nb = (size_t)n_batch, q_len = (size_t)c->n_head * (size_t)c->head_dim;
    size_t kv_len = (size_t)kp->row_len;
    bool ok = true;
    d->x = alloc_floats(nb, (size_t)c->n_embd, &ok);
    d->xb = alloc_floats(nb, (size_t)c->n_embd, &ok);
    d->att = alloc_floats(nb, q_len, &ok);
    d->gate = alloc_floats(nb, (size_t)c->n_ff, &ok);
    /* q, k, v only for the layers whose Q/K/V are not fused, up only for
     * those whose gate and up are not, fused only for those whose Q/K/V or
     * gate/up are */
    bool any_fused = false, all_qkv = true, all_gate_up = true;
    for (int l = 0; l < c->n_layer; l++) {
        any_fused = any_fused || m->w.layers[l].wqkv || m->w.layers[l].ffn_gate_up;
        all_qkv = all_qkv && m->w.layers[l].wqkv;
        all_gate_up = all_gate_up && m->w.layers[l].ffn_gate_up;
    }
    if (!all_qkv) {
        d->q = alloc_floats(nb, q_len, &ok);
        d->k = alloc_floats(nb, kv_len, &ok);
        d->v = alloc_floats(nb, kv_len, &ok);
    }
    if (!all_gate_up)
        d->up = alloc_floats(nb, (size_t)c->n_ff, &ok);
    if (any_fused)
        d->fused = alloc_floats(nb, q_len + 2 * kv_len > 2 * (size_t)c->n_ff ? q_len + 2 * kv_len
                                                                             : 2 * (size_t)c->n_ff, &ok);
    d->xo = alloc_floats((size_t)n_out, (size_t)c->n_embd, &ok);
    d->logits = alloc_floats((size_t)n_out, (size_t)c->n_vocab, &ok);
    const size_t r_max = (size_t)ATTN_CHUNK * (size_t)(c->n_head / c->n_head_kv);
    /* every part is a multiple of 8 bytes, so pointers and int64 stay aligned */
    d->att_tmp_per_thread = 2 * (size_t)d->max_blocks * sizeof(void *) +
                            2 * r_max * (size_t)c->head_dim * sizeof(float) + r_max * sizeof(int64_t) +
                            (kn_attention_scratch((int)r_max, c->head_dim) + 1) / 2 * 2 * sizeof(float);
    d->att_tmp = alloc_floats((size_t)d->n_threads, d->att_tmp_per_thread / sizeof(float), &ok);
    d->items = calloc(nb * (size_t)c->n_head_kv, sizeof *d->items);
    ok = ok && d->items;
    if (!ok) {
        rc = err_set(err, GLIMPSE_ENOMEM, "decoder: out of memory for a batch of %d", n_batch);
        goto fail;
    }

    /* The widest activation a matmul quantises is a batch of rows of the
     * largest input width (n_ff for ffn_down, n_head*d for attn_output). */
    int64_t widest = c->n_embd;
    if (c->n_ff > widest)
        widest = c->n_ff;
    if ((int64_t)q_len > widest)
        widest = (int64_t)q_len;
    rc = kernels_reserve(widest * n_batch, err);
    if (rc < 0)
        goto fail;
    *out = d;
    return 0;

fail:
    decoder_free(d);
    return rc;
}

void decoder_free(decoder *d)
{
    if (!d)
        return;
    free(d->x);
    free(d->xb);
    free(d->q);
    free(d->k);
    free(d->v);
    free(d->att);
    free(d->gate);
    free(d->up);
    free(d->fused);
    free(d->xo);
    free(d->logits);
    free(d->att_tmp);
    free(d->items);
    free(d);
}

const float *decoder_logits(const decoder *d, int i)
{
    if (i < 0 || i >= d->n_logits)
        return NULL;
    return d->logits + (size_t)i * (size_t)d->m->cfg.n_vocab;
}

/* ---- attention -------------------------------------------------------------- */

typedef struct attn_task {
    decoder *d;
    const dec_entry *batch;
    int layer;
    int n_items;
} attn_task;

/* Entry i's Q, K and V rows of layer L, as the projections left them: in
 * the fused output where L has wqkv, else in q, k and v (RoPE and the
 * biases then work on them in place). */
static void qkv_rows(const decoder *d, const text_layer *L, int64_t i, float **q, float **k, float **v)
{
    const text_config *c = &d->m->cfg;
    const int64_t q_len = (int64_t)c->n_head * c->head_dim, kv_len = (int64_t)c->n_head_kv * c->head_dim;
    if (L->wqkv) {
        *q = d->fused + i * (q_len + 2 * kv_len);
        *k = *q + q_len;
        *v = *k + kv_len;
    } else {
        *q = d->q + i * q_len;
        *k = d->k + i * kv_len;
        *v = d->v + i * kv_len;
    }
}

/* K/V blocks of an attention item asked for while its block pointers are
 * gathered, before the hardware prefetchers can have found their stream (8
 * streams at 64-80 positions, Q8_0 256M / 500M models, medians of 4
 * alternating runs: 3.85 / 8.47 ms a step, 4.04 / 8.89 without). Only the
 * first blocks (kn_attention asks for the next few). */
#define ATTN_PREFETCH_BLOCKS 4

/* Splits the batch into runs of one sequence, at most ATTN_CHUNK entries
 * each, times the KV heads. Returns the number of items. */
static int plan_attention(decoder *d, const dec_entry *b, int n)
{
    int n_items = 0;
    for (int lo = 0; lo < n;) {
        int hi = lo + 1;
        while (hi < n && hi - lo < ATTN_CHUNK && b[hi].seq == b[lo].seq)
            hi++;
        for (int kvh = 0; kvh < d->m->cfg.n_head_kv; kvh++)
            d->items[n_items++] = (attn_item){ lo, hi, kvh };
        lo = hi;
    }
    return n_items;
}

/* Causal attention of a run of entries of one sequence, for the query heads
 * of one KV head: R = entries x group query rows in one kn_attention call,
 * so they share each block of K/V rows it loads from the paged cache. Query
 * row r (entry lo + r/group, head kvh*group + r%group) sees positions
 * [0, pos] of its entry; kn_attention keeps its result independent of the
 * other rows (batch invariance). */
static void attn_worker(void *arg, int ith, int nth)
{
    attn_task *t = arg;
    decoder *d = t->d;
    const text_config *c = &d->m->cfg;
    const int hd = c->head_dim, group = c->n_head / c->n_head_kv;
    const int r_max = ATTN_CHUNK * group;
    uint8_t *tmp = (uint8_t *)d->att_tmp + (size_t)ith * d->att_tmp_per_thread;
    const void **kblk = (const void **)tmp, **vblk = kblk + d->max_blocks;     /* [max_blocks] each */
    float *qbuf = (float *)(vblk + d->max_blocks);                             /* [R][d] */
    float *obuf = qbuf + (size_t)r_max * hd;                                   /* [R][d] */
    int64_t *n_keys = (int64_t *)(obuf + (size_t)r_max * hd);                  /* [R] */
    float *scratch = (float *)(n_keys + r_max);
    const kn_attn_kv kv0 = { .type = kv_cache_params(d->kv)->type == KV_F16 ? DTYPE_F16 : DTYPE_F32,
                             .head_dim = hd, .k = kblk, .v = vblk };
    const size_t block_bytes = (size_t)KN_ATTN_BLOCK * (size_t)hd * (kv0.type == DTYPE_F16 ? 2 : 4);

    /* Every nth item: a run's cost grows with its positions, and items come
     * in position order, so contiguous shares gave one thread of two the
     * later half of a prompt, ~3/4 of its attention. */
    for (int64_t it = ith; it < t->n_items; it += nth) {
        const attn_item *item = &d->items[it];
        const dec_entry *b = t->batch;
        const int seq = b[item->lo].seq;
        const int R = (item->hi - item->lo) * group;
        kn_attn_kv kv = kv0;
        kv.n = b[item->hi - 1].pos + 1;
        /* the cache's blocks are kn_attention's (kvcache.h, kn_attn_kv) */
        for (int64_t bl = 0; bl * KN_ATTN_BLOCK < kv.n; bl++) {
            kblk[bl] = kv_k_block(d->kv, t->layer, seq, bl * KN_ATTN_BLOCK, item->kvh);
            vblk[bl] = kv_v_block(d->kv, t->layer, seq, bl * KN_ATTN_BLOCK, item->kvh);
            if (bl < ATTN_PREFETCH_BLOCKS)
                for (size_t o = 0; o < block_bytes; o += 64) {
                    __builtin_prefetch((const uint8_t *)kblk[bl] + o);
                    __builtin_prefetch((const uint8_t *)vblk[bl] + o);
                }
        }
        for (int r = 0; r < R; r++) {
            const int i = item->lo + r / group, h = item->kvh * group + r % group;
            float *q, *k, *v;
            qkv_rows(d, &d->m->w.layers[t->layer], i, &q, &k, &v);
            memcpy(qbuf + (size_t)r * hd, q + (size_t)h * hd, (size_t)hd * sizeof(float));
            n_keys[r] = b[i].pos + 1;
        }
        kn_attention(&kv, qbuf, (size_t)hd, R, n_keys, 1.0f / sqrtf((float)hd), obuf, (size_t)hd, scratch);
        for (int r = 0; r < R; r++) {
            const int i = item->lo + r / group, h = item->kvh * group + r % group;
            memcpy(d->att + ((size_t)i * c->n_head + h) * hd, obuf + (size_t)r * hd, (size_t)hd * sizeof(float));
        }
    }
}

/* ---- per-row passes ----------------------------------------------------------- */

/* The work between the matrix products, row by row. Each pass fuses what
 * the rows need between two products, in the order of the separate steps
 * (the same numbers with fewer trips over the batch); a row's result never
 * depends on the other rows, so how the rows are split changes nothing. */
enum row_pass {
    ROWS_ATTN_IN,   /* x += xb (the previous layer's FFN output, unless layer 0); xb = norm(x) */
    ROWS_ROPE,      /* Q/K/V biases, RoPE on Q and K (in place, qkv_rows), K and V into the cache */
    ROWS_FFN_IN,    /* xb += bo; x += xb; xb = norm(x) */
    ROWS_SWIGLU,    /* gate = silu(gate) * up (from the fused output, if fused) */
};

typedef struct row_task {
    decoder *d;
    const dec_entry *b;
    int n, layer;
    enum row_pass pass;
} row_task;

/* Rows per kn_rms_norm_rows call: a group's other steps first, then its
 * norms together (a row's numbers do not depend on the grouping). */
#define NORM_ROWS 8

static void rows_range(void *arg, int64_t lo, int64_t hi)
{
    const row_task *t = arg;
    decoder *d = t->d;
    const text_config *c = &d->m->cfg;
    const text_layer *L = &d->m->w.layers[t->layer];
    const int64_t E = c->n_embd, F = c->n_ff, hd = c->head_dim;
    const int64_t q_len = c->n_head * hd, kv_len = c->n_head_kv * hd;
    for (int64_t i0 = lo; i0 < hi; i0 += NORM_ROWS) {
        const int64_t i1 = hi - i0 < NORM_ROWS ? hi : i0 + NORM_ROWS;
        for (int64_t i = i0; i < i1; i++) {
            float *x = d->x + i * E, *xb = d->xb + i * E;
            float *q, *k, *v;
            switch (t->pass) {
            case ROWS_ATTN_IN:
                if (t->layer > 0)
                    kn_add_bias(x, xb, 1, E);
                break;
            case ROWS_ROPE:
                qkv_rows(d, L, i, &q, &k, &v);
                if (L->bq)
                    kn_add_bias(q, L->bq, 1, q_len);
                if (L->bk)
                    kn_add_bias(k, L->bk, 1, kv_len);
                if (L->bv)
                    kn_add_bias(v, L->bv, 1, kv_len);
                kn_rope(q, c->n_head, (int)hd, t->b[i].pos, c->rope_base);
                kn_rope(k, c->n_head_kv, (int)hd, t->b[i].pos, c->rope_base);
                kv_store(d->kv, t->layer, t->b[i].seq, t->b[i].pos, k, v);
                break;
            case ROWS_FFN_IN:
                if (L->bo)
                    kn_add_bias(xb, L->bo, 1, E);
                kn_add_bias(x, xb, 1, E);
                break;
            case ROWS_SWIGLU:
                if (L->ffn_gate_up)
                    kn_swiglu(d->gate + i * F, d->fused + i * 2 * F, d->fused + i * 2 * F + F, F);
                else
                    kn_swiglu(d->gate + i * F, d->gate + i * F, d->up + i * F, F);
                break;
            }
        }
        if (t->pass == ROWS_ATTN_IN || t->pass == ROWS_FFN_IN)
            kn_rms_norm_rows(d->x + i0 * E, (size_t)E, t->pass == ROWS_ATTN_IN ? L->attn_norm : L->ffn_norm, E,
                             c->rms_eps, d->xb + i0 * E, (size_t)E, i1 - i0);
    }
}

static void rows_worker(void *arg, int ith, int nth)
{
    const row_task *t = arg;
    int64_t lo, hi;
    threadpool_split(t->n, ith, nth, &lo, &hi);
    rows_range(arg, lo, hi);
}

static void run_rows(decoder *d, const dec_entry *b, int n, int layer, enum row_pass pass)
{
    row_task t = { d, b, n, layer, pass };
    /* One row cannot be split. Any more go to the pool, which otherwise waits
     * on one thread for ~8 % of a prefill (norms, RoPE, SwiGLU, the KV
     * stores) and ~5 % of a decode step of 4 or 8 streams, now that a pool
     * round trip is well under a microsecond (Q8_0 500M model, 4 / 8
     * streams: 10.1 / 13.4 ms a step with the rows of up to 16 entries on
     * the caller, 9.5 / 12.9 split; alternating runs). */
    if (n == 1)
        rows_range(&t, 0, n);
    else
        threadpool_run(d->tp, rows_worker, &t);
}

/* ---- forward ---------------------------------------------------------------- */

static int check_batch(const decoder *d, const dec_entry *b, int n, glimpse_err *err)
{
    const text_config *c = &d->m->cfg;
    if (n < 1 || n > d->n_batch)
        return err_set(err, GLIMPSE_EINVAL, "decoder: batch of %d entries (1..%d allowed)", n, d->n_batch);
    int n_logits = 0;
    for (int i = 0; i < n; i++) {
        if (!b[i].embd && (b[i].token < 0 || b[i].token >= c->n_vocab))
            return err_set(err, GLIMPSE_EINVAL, "decoder: token id %d out of range [0, %d)",
                           b[i].token, c->n_vocab);
        if (b[i].pos < 0 || b[i].pos >= kv_seq_capacity(d->kv, b[i].seq))
            return err_set(err, GLIMPSE_EINVAL, "decoder: position %lld of sequence %d is not reserved",
                           (long long)b[i].pos, b[i].seq);
        /* The attention of a run of one sequence reads positions up to its
         * last entry's, so positions must rise within the run. */
        if (i > 0 && b[i].seq == b[i - 1].seq && b[i].pos <= b[i - 1].pos)
            return err_set(err, GLIMPSE_EINVAL, "decoder: positions of sequence %d do not increase (%lld after %lld)",
                           b[i].seq, (long long)b[i].pos, (long long)b[i - 1].pos);
        n_logits += b[i].logits;
    }
    if (n_logits > d->n_out)
        return err_set(err, GLIMPSE_EINVAL, "decoder: %d entries want logits (at most %d)", n_logits, d->n_out);
    return 0;
}

int decoder_forward(decoder *d, const dec_entry *b, int n, glimpse_err *err)
{
    int rc = check_batch(d, b, n, err);
    if (rc < 0)
        return rc;
    const text_config *c = &d->m->cfg;
    const text_weights *w = &d->m->w;
    const int E = c->n_embd;

    int n_items = plan_attention(d, b, n);

    /* Input rows: token embeddings (dequantised rows of token_embd, no scaling)
     * or the caller's vectors. */
    for (int i = 0; i < n; i++) {
        float *xi = d->x + (size_t)i * E;
        if (b[i].embd)
            memcpy(xi, b[i].embd, (size_t)E * sizeof *xi);
        else
            dequantize_row(w->token_embd->type, tensor_row(w->token_embd, b[i].token), xi, E);
    }

    for (int l = 0; l < c->n_layer; l++) {
        const text_layer *L = &w->layers[l];

        /* Attention block: (the previous layer's residual,) pre-norm, Q/K/V
         * projections, RoPE on Q and K. The row passes before a product go
         * with the conversion of its input (kn_matmul_invariant_prep: 8
         * streams, Q8_0 256M / 500M models, medians of 5 alternating runs:
         * 4.26 / 8.98 ms a step with passes of their own, 4.14 / 8.80). */
        row_task rt = { d, b, n, l, ROWS_ATTN_IN };
        if (L->wqkv) {
            kn_matmul_invariant_prep(d->tp, rows_range, &rt, L->wqkv, d->xb, n, d->fused);
        } else {
            kn_matmul_invariant_prep(d->tp, rows_range, &rt, L->wq, d->xb, n, d->q);
            kn_matmul_invariant(d->tp, L->wk, d->xb, n, d->k);
            kn_matmul_invariant(d->tp, L->wv, d->xb, n, d->v);
        }
        run_rows(d, b, n, l, ROWS_ROPE);

        /* Every entry's K/V is in the cache now, so an entry attends to the
         * earlier entries of its sequence in this same batch too. */
        attn_task t = { d, b, l, n_items };
        threadpool_run(d->tp, attn_worker, &t);

        /* Output projection (its bias and the residual: the next pass). */
        kn_matmul_invariant(d->tp, L->wo, d->att, n, d->xb);

        /* Feed-forward block: pre-norm, SwiGLU, down projection (its
         * residual is the next pass's first step). */
        rt.pass = ROWS_FFN_IN;
        if (L->ffn_gate_up) {
            kn_matmul_invariant_prep(d->tp, rows_range, &rt, L->ffn_gate_up, d->xb, n, d->fused);
        } else {
            kn_matmul_invariant_prep(d->tp, rows_range, &rt, L->ffn_gate, d->xb, n, d->gate);
            kn_matmul_invariant(d->tp, L->ffn_up, d->xb, n, d->up);
        }
        rt.pass = ROWS_SWIGLU;
        kn_matmul_invariant_prep(d->tp, rows_range, &rt, L->ffn_down, d->gate, n, d->xb);
    }

    /* Output block, only for the rows that want logits: the last layer's
     * residual (no later layer reads x), final norm and LM head. */
    int n_out = 0;
    for (int i = 0; i < n; i++)
        if (b[i].logits) {
            float *x = d->x + (size_t)i * E;
            if (c->n_layer > 0)
                kn_add_bias(x, d->xb + (size_t)i * E, 1, E);
            kn_rms_norm(x, w->output_norm, E, c->rms_eps, d->xo + (size_t)n_out++ * E);
        }
    if (n_out > 0)
        kn_matmul_invariant(d->tp, w->output, d->xo, n_out, d->logits);
    d->n_logits = n_out;
    return 0;
}
