/*
 * model.c — loading a llama text model from GGUF (spec §2.1, §2.2) with
 * llama.cpp's rules, and the public glimpse_model built around it.
 */
#include "model.h"

#include "decoder.h"
#include "kernels/kernels.h"
#include "kvcache.h"
#include "sampler.h"
#include "scheduler.h"
#include "template.h"
#include "threadpool.h"
#include "tokenizer.h"
#include "vision.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ============================================================================
 * hyper-parameters
 * ========================================================================== */

/* Largest value accepted for a count or width: keeps every product of two of
 * them (and with the context) far from overflowing int64 and size_t. */
#define HPARAM_MAX (1u << 20)

/* A u32 key; absent -> *out = dflt (or an error when required). */
static int get_u32(const gguf_file *f, const char *key, bool required, uint32_t dflt,
                   uint32_t *out, glimpse_err *err)
{
    int rc = gguf_get_u32(f, key, out, err);
    if (rc == GLIMPSE_ENOTFOUND) {
        if (required)
            return err_set(err, GLIMPSE_EFORMAT, "model: required key %s is missing", key);
        *out = dflt;
        return 0;
    }
    return rc;
}

static int get_f32(const gguf_file *f, const char *key, bool required, float dflt,
                   float *out, glimpse_err *err)
{
    int rc = gguf_get_f32(f, key, out, err);
    if (rc == GLIMPSE_ENOTFOUND) {
        if (required)
            return err_set(err, GLIMPSE_EFORMAT, "model: required key %s is missing", key);
        *out = dflt;
        return 0;
    }
    return rc;
}

/* A per-layer value stored either as one u32 or as an array of n_layer
 * integers (llama.cpp's get_key_or_arr). Layers with different values are
 * not supported by this engine. */
static int get_u32_or_arr(const gguf_file *f, const char *key, uint32_t n_layer, uint32_t dflt,
                          uint32_t *out, glimpse_err *err)
{
    int64_t id = gguf_find_key(f, key);
    if (id < 0) {
        *out = dflt;
        return 0;
    }
    if (gguf_kv_type(f, id) != GGUF_VTYPE_ARRAY)
        return get_u32(f, key, true, 0, out, err);
    enum gguf_vtype et;
    uint64_t n;
    const void *data;
    int rc = gguf_get_arr(f, key, &et, &n, &data, err);
    if (rc < 0)
        return rc;
    if (et != GGUF_VTYPE_UINT32 && et != GGUF_VTYPE_INT32)
        return err_set(err, GLIMPSE_EFORMAT, "model: key %s must be an array of u32 or i32", key);
    if (n != n_layer)
        return err_set(err, GLIMPSE_EFORMAT, "model: key %s has %llu entries, expected %u (block_count)",
                       key, (unsigned long long)n, n_layer);
    for (uint64_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, (const char *)data + 4 * i, 4);
        if (et == GGUF_VTYPE_INT32 && (int32_t)v < 0)
            return err_set(err, GLIMPSE_EFORMAT, "model: key %s[%llu] is negative", key, (unsigned long long)i);
        if (i > 0 && v != *out)
            return err_set(err, GLIMPSE_EUNSUPPORTED, "model: key %s varies per layer; not supported", key);
        *out = v;
    }
    return 0;
}

static int check_range(const char *key, uint32_t v, uint32_t lo, glimpse_err *err)
{
    if (v < lo || v > HPARAM_MAX)
        return err_set(err, GLIMPSE_EFORMAT, "model: %s = %u is out of range [%u, %u]", key, v, lo, HPARAM_MAX);
    return 0;
}

static int load_config(const gguf_file *f, text_config *c, glimpse_err *err)
{
    uint32_t ctx, embd, layers, ff, head, head_kv, key_len, val_len, rot;
    float scale = 0.0f;
    int rc;

    if ((rc = get_u32(f, "llama.context_length", true, 0, &ctx, err)) < 0 ||
        (rc = get_u32(f, "llama.embedding_length", true, 0, &embd, err)) < 0 ||
        (rc = get_u32(f, "llama.block_count", true, 0, &layers, err)) < 0)
        return rc;
    if ((rc = check_range("llama.embedding_length", embd, 1, err)) < 0 ||
        (rc = check_range("llama.block_count", layers, 1, err)) < 0)
        return rc;
    /* llama.cpp defaults n_ff and n_head to 0, which no tensor shape can
     * match; report the missing key instead of a confusing shape error. */
    if ((rc = get_u32_or_arr(f, "llama.feed_forward_length", layers, 0, &ff, err)) < 0 ||
        (rc = get_u32_or_arr(f, "llama.attention.head_count", layers, 0, &head, err)) < 0)
        return rc;
    if ((rc = check_range("llama.feed_forward_length", ff, 1, err)) < 0 ||
        (rc = check_range("llama.attention.head_count", head, 1, err)) < 0)
        return rc;
    if ((rc = get_u32_or_arr(f, "llama.attention.head_count_kv", layers, head, &head_kv, err)) < 0)
        return rc;
    if ((rc = check_range("llama.attention.head_count_kv", head_kv, 1, err)) < 0)
        return rc;
    if (head % head_kv != 0)
        return err_set(err, GLIMPSE_EFORMAT, "model: head_count %u is not a multiple of head_count_kv %u",
                       head, head_kv);
    if ((rc = get_u32(f, "llama.attention.key_length", false, embd / head, &key_len, err)) < 0 ||
        (rc = get_u32(f, "llama.attention.value_length", false, embd / head, &val_len, err)) < 0)
        return rc;
    if ((rc = get_u32(f, "llama.rope.dimension_count", false, key_len, &rot, err)) < 0)
        return rc;
    if (rot != key_len)
        return err_set(err, GLIMPSE_EFORMAT, "model: invalid n_rot: %u, expected %u (llama.rope.dimension_count)",
                       rot, key_len);
    if (val_len != key_len)
        return err_set(err, GLIMPSE_EUNSUPPORTED, "model: key_length %u != value_length %u is not supported",
                       key_len, val_len);
    if ((rc = check_range("llama.attention.key_length", key_len, 2, err)) < 0)
        return rc;
    if (key_len % 2 != 0)
        return err_set(err, GLIMPSE_EFORMAT, "model: head dimension %u is odd; RoPE rotates pairs", key_len);
    if ((rc = get_f32(f, "llama.attention.layer_norm_rms_epsilon", true, 0, &c->rms_eps, err)) < 0 ||
        (rc = get_f32(f, "llama.rope.freq_base", false, 10000.0f, &c->rope_base, err)) < 0)
        return rc;
    if (!(c->rms_eps >= 0.0f && c->rms_eps < 1.0f) || !(c->rope_base > 0.0f && c->rope_base < 1e30f))
        return err_set(err, GLIMPSE_EFORMAT, "model: rms epsilon %g or rope base %g out of range",
                       (double)c->rms_eps, (double)c->rope_base);

    /* RoPE scaling changes the angles; only the identity is implemented. */
    gguf_str st;
    rc = gguf_get_str(f, "llama.rope.scaling.type", &st, err);
    if (rc == 0 && !(st.len == 6 && !memcmp(st.ptr, "linear", 6)) && !(st.len == 4 && !memcmp(st.ptr, "none", 4)))
        return err_set(err, GLIMPSE_EUNSUPPORTED, "model: rope scaling type '%.*s' is not supported",
                       (int)(st.len > 32 ? 32 : st.len), st.ptr);
    if (rc < 0 && rc != GLIMPSE_ENOTFOUND)
        return rc;
    if ((rc = get_f32(f, "llama.rope.scaling.factor", false, 0.0f, &scale, err)) < 0)
        return rc;
    if (scale != 0.0f && scale != 1.0f)
        return err_set(err, GLIMPSE_EUNSUPPORTED, "model: rope scaling factor %g is not supported", (double)scale);

    enum gguf_vtype et;
    uint64_t n_vocab;
    const void *unused;
    if ((rc = gguf_get_arr(f, "tokenizer.ggml.tokens", &et, &n_vocab, &unused, err)) < 0) {
        if (rc == GLIMPSE_ENOTFOUND)
            return err_set(err, GLIMPSE_EFORMAT, "model: tokenizer.ggml.tokens is missing (no vocabulary)");
        return rc;
    }
    if (n_vocab < 1 || n_vocab > (1u << 24))
        return err_set(err, GLIMPSE_EFORMAT, "model: vocabulary of %llu tokens is out of range",
                       (unsigned long long)n_vocab);

    c->n_vocab = (int)n_vocab;
    c->n_embd = (int)embd;
    c->n_layer = (int)layers;
    c->n_head = (int)head;
    c->n_head_kv = (int)head_kv;
    c->head_dim = (int)key_len;
    c->n_ff = (int)ff;
    c->n_ctx_train = ctx > HPARAM_MAX ? (int)HPARAM_MAX : (int)ctx;
    return 0;
}

/* ============================================================================
 * tensors
 * ========================================================================== */

/* Finds name and checks its shape is exactly {ne0, ne1} (ne1 = 1 for vectors,
 * trailing dims 1, as llama.cpp's create_tensor). Absent: NULL when optional,
 * else an error. 1-D tensors must be F32 (they are read as floats). */
static int find_tensor(const gguf_file *f, const char *name, int64_t ne0, int64_t ne1, bool optional,
                       const tensor **out, glimpse_err *err)
{
    const tensor *t = gguf_find_tensor(f, name);
    *out = NULL;
    if (!t)
        return optional ? 0 : err_set(err, GLIMPSE_EFORMAT, "model: tensor %s is missing", name);
    const int64_t want[4] = { ne0, ne1, 1, 1 };
    for (int i = 0; i < 4; i++) {
        if (t->ne[i] != want[i]) {
            return err_set(err, GLIMPSE_EFORMAT,
                           "model: tensor %s has wrong shape; expected [%lld, %lld], got [%lld, %lld, %lld, %lld]",
                           name, (long long)ne0, (long long)ne1, (long long)t->ne[0], (long long)t->ne[1],
                           (long long)t->ne[2], (long long)t->ne[3]);
        }
    }
    const dtype_info *ti = dtype_get(t->type);
    if (!ti || t->type == DTYPE_Q8_K)
        return err_set(err, GLIMPSE_EUNSUPPORTED, "model: tensor %s has unsupported type %d", name, t->type);
    if (ne1 == 1 && (t->type != DTYPE_F32 || ((uintptr_t)t->data % sizeof(float)) != 0))
        return err_set(err, GLIMPSE_EUNSUPPORTED, "model: vector %s must be aligned F32, found %s",
                       name, ti->name);
    if (ne1 > 1 && !kn_matmul_supports(t->type, ne0))
        return err_set(err, GLIMPSE_EUNSUPPORTED, "model: matrix %s of type %s cannot be multiplied (row of %lld)",
                       name, ti->name, (long long)ne0);
    *out = t;
    return 0;
}

static const float *as_floats(const tensor *t) { return t ? (const float *)t->data : NULL; }

/* Tensors this engine does not implement; a file that has them would be run
 * wrongly, so it is refused. */
static const char *const unsupported_tensors[] = {
    "attn_qkv.weight", "ffn_gate.bias", "ffn_up.bias", "ffn_down.bias", "rope_freqs.weight",
};

static int load_layer(const gguf_file *f, const text_config *c, int il, text_layer *L, glimpse_err *err)
{
    const int64_t E = c->n_embd, Q = (int64_t)c->n_head * c->head_dim;
    const int64_t KV = (int64_t)c->n_head_kv * c->head_dim, F = c->n_ff;
    const struct {
        const char *name;
        int64_t ne0, ne1;
        bool optional;
        const tensor **slot;
    } table[] = {
        { "attn_norm.weight", E, 1, false, NULL },
        { "attn_q.weight", E, Q, false, &L->wq },
        { "attn_k.weight", E, KV, false, &L->wk },
        { "attn_v.weight", E, KV, false, &L->wv },
        { "attn_output.weight", Q, E, false, &L->wo },
        { "attn_q.bias", Q, 1, true, NULL },
        { "attn_k.bias", KV, 1, true, NULL },
        { "attn_v.bias", KV, 1, true, NULL },
        { "attn_output.bias", E, 1, true, NULL },
        { "ffn_norm.weight", E, 1, false, NULL },
        { "ffn_gate.weight", E, F, false, &L->ffn_gate },
        { "ffn_up.weight", E, F, false, &L->ffn_up },
        { "ffn_down.weight", F, E, false, &L->ffn_down },
    };
    const float **vectors[] = { &L->attn_norm, NULL, NULL, NULL, NULL, &L->bq, &L->bk, &L->bv, &L->bo,
                                &L->ffn_norm, NULL, NULL, NULL };
    char name[96];
    for (size_t i = 0; i < sizeof unsupported_tensors / sizeof unsupported_tensors[0]; i++) {
        snprintf(name, sizeof name, "blk.%d.%s", il, unsupported_tensors[i]);
        if (gguf_find_tensor(f, name))
            return err_set(err, GLIMPSE_EUNSUPPORTED, "model: tensor %s is not supported", name);
    }
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const tensor *t;
        snprintf(name, sizeof name, "blk.%d.%s", il, table[i].name);
        int rc = find_tensor(f, name, table[i].ne0, table[i].ne1, table[i].optional, &t, err);
        if (rc < 0)
            return rc;
        if (table[i].slot)
            *table[i].slot = t;
        else
            *vectors[i] = as_floats(t);
    }
    return 0;
}

static int pack_matrices(text_model *m, glimpse_err *err);

int text_model_load(const gguf_file *f, text_model *m, glimpse_err *err)
{
    memset(m, 0, sizeof *m);
    m->file = f;
    gguf_str arch;
    int rc = gguf_get_str(f, "general.architecture", &arch, err);
    if (rc == GLIMPSE_ENOTFOUND)
        return err_set(err, GLIMPSE_EFORMAT, "model: general.architecture is missing");
    if (rc < 0)
        return rc;
    if (!(arch.len == 5 && !memcmp(arch.ptr, "llama", 5)))
        return err_set(err, GLIMPSE_EUNSUPPORTED,
                       "model: architecture '%.*s' is not supported (only 'llama' text models)",
                       (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    if ((rc = load_config(f, &m->cfg, err)) < 0)
        return rc;

    const text_config *c = &m->cfg;
    text_weights *w = &m->w;
    const tensor *t;
    if ((rc = find_tensor(f, "token_embd.weight", c->n_embd, c->n_vocab, false, &w->token_embd, err)) < 0 ||
        (rc = find_tensor(f, "output_norm.weight", c->n_embd, 1, false, &t, err)) < 0)
        return rc;
    w->output_norm = as_floats(t);
    if ((rc = find_tensor(f, "output.weight", c->n_embd, c->n_vocab, true, &w->output, err)) < 0)
        return rc;
    w->tied = w->output == NULL;
    if (w->tied)
        w->output = w->token_embd;

    w->layers = calloc((size_t)c->n_layer, sizeof *w->layers);
    if (!w->layers)
        return err_set(err, GLIMPSE_ENOMEM, "model: out of memory");
    for (int il = 0; il < c->n_layer; il++) {
        if ((rc = load_layer(f, c, il, &w->layers[il], err)) < 0) {
            text_model_release(m);
            return rc;
        }
    }
    if ((rc = pack_matrices(m, err)) < 0)
        text_model_release(m);
    return rc;
}

/* The layers' matrices and the LM head, packed where the kernels gain
 * (gguf_pack_matrix): Q/K/V as one matrix and gate/up as one, the others
 * one by one; a tied LM head gets a copy of token_embd, whose rows are
 * still looked up. */
static int pack_matrices(text_model *m, glimpse_err *err)
{
    text_weights *w = &m->w;
    int rc = gguf_pack_matrix(m->file, &w->packed, &w->output, 1, &w->output, w->tied, err);
    for (int il = 0; rc == 0 && il < m->cfg.n_layer; il++) {
        text_layer *L = &w->layers[il];
        const tensor *qkv[] = { L->wq, L->wk, L->wv }, *gate_up[] = { L->ffn_gate, L->ffn_up };
        if ((rc = gguf_pack_matrix(m->file, &w->packed, qkv, 3, &L->wqkv, false, err)) < 0 ||
            (rc = gguf_pack_matrix(m->file, &w->packed, gate_up, 2, &L->ffn_gate_up, false, err)) < 0)
            return rc;
        /* what is not in a fused matrix, one by one */
        const tensor **slots[7];
        int n = 0;
        if (!L->wqkv) {
            slots[n++] = &L->wq;
            slots[n++] = &L->wk;
            slots[n++] = &L->wv;
        }
        slots[n++] = &L->wo;
        if (!L->ffn_gate_up) {
            slots[n++] = &L->ffn_gate;
            slots[n++] = &L->ffn_up;
        }
        slots[n++] = &L->ffn_down;
        for (int i = 0; rc == 0 && i < n; i++)
            rc = gguf_pack_matrix(m->file, &w->packed, slots[i], 1, slots[i], false, err);
    }
    return rc;
}

void text_model_release(text_model *m)
{
    if (!m)
        return;
    kn_packed_free(&m->w.packed);
    free(m->w.layers);
    m->w.layers = NULL;
}

/* ============================================================================
 * glimpse_model
 * ========================================================================== */

#define DEFAULT_CTX_MAX 4096
#define DEFAULT_BATCH 256
#define DEFAULT_PARALLEL 4
#define DEFAULT_QUEUE 64
#define DEFAULT_IMAGE_CACHE_MB 64
#define MAX_PARALLEL 256
#define MAX_THREADS 256

void glimpse_model_params_default(glimpse_model_params *p)
{
    memset(p, 0, sizeof *p);
    p->kv_type = GLIMPSE_KV_F16;
}

static int check_params(const glimpse_model_params *p, glimpse_err *err)
{
    if (!p || !p->model_path || !p->model_path[0])
        return err_set(err, GLIMPSE_EINVAL, "model: no model path given");
    if (p->n_threads < 0 || p->n_threads > MAX_THREADS)
        return err_set(err, GLIMPSE_EINVAL, "model: %d threads is out of range [0, %d]", p->n_threads, MAX_THREADS);
    if (p->n_ctx < 0 || p->n_ctx > (int)HPARAM_MAX)
        return err_set(err, GLIMPSE_EINVAL, "model: context size %d is out of range [0, %u]", p->n_ctx, HPARAM_MAX);
    if (p->n_batch < 0 || p->n_batch > 65536)
        return err_set(err, GLIMPSE_EINVAL, "model: batch size %d is out of range [0, 65536]", p->n_batch);
    if (p->kv_type != GLIMPSE_KV_F16 && p->kv_type != GLIMPSE_KV_F32)
        return err_set(err, GLIMPSE_EINVAL, "model: unknown KV cache type %d", p->kv_type);
    if (p->n_parallel < 0 || p->n_parallel > MAX_PARALLEL)
        return err_set(err, GLIMPSE_EINVAL, "model: %d parallel sequences is out of range [0, %d]", p->n_parallel,
                       MAX_PARALLEL);
    if (p->kv_cache_mb < 0 || p->kv_cache_mb > (1 << 24) || p->max_queue < 0 || p->max_queue > (1 << 20) ||
        p->image_cache_mb < -1 || p->image_cache_mb > (1 << 20))
        return err_set(err, GLIMPSE_EINVAL, "model: kv_cache_mb, max_queue or image_cache_mb out of range");
    return 0;
}

static void set_name(glimpse_model *m, const char *path)
{
    gguf_str s;
    if (gguf_get_str(m->file, "general.name", &s, NULL) == 0 && s.len > 0) {
        snprintf(m->name, sizeof m->name, "%.*s", (int)(s.len < sizeof m->name ? s.len : sizeof m->name - 1), s.ptr);
        return;
    }
    const char *base = strrchr(path, '/');
    snprintf(m->name, sizeof m->name, "%s", base ? base + 1 : path);
}

/* Loads the mmproj: the vision encoder, its projector into this model's
 * embedding space, and the matching preprocessing. */
static int load_vision(glimpse_model *m, const char *path, glimpse_err *err)
{
    int rc;
    if ((rc = gguf_open(path, &m->mmproj_file, err)) < 0 || (rc = vision_load(m->mmproj_file, &m->vision, err)) < 0)
        return rc;
    const vision_hparams *hp = vision_get_hparams(m->vision);
    if (hp->n_embd_text != m->text.cfg.n_embd)
        return err_set(err, GLIMPSE_EFORMAT, "model: the mmproj projects to width %d but the text model is %d wide",
                       hp->n_embd_text, m->text.cfg.n_embd);
    m->pp = (image_pp_params){
        .mode = hp->projector == PROJECTOR_IDEFICS3 ? IMAGE_PP_IDEFICS3 : IMAGE_PP_FIXED,
        .image_size = hp->image_size,
        .longest_edge = hp->longest_edge,
        /* llama.cpp letterboxes LLaVA images on the CLIP mean colour */
        .pad_color = { 122, 116, 104 },
    };
    memcpy(m->pp.mean, hp->mean, sizeof m->pp.mean);
    memcpy(m->pp.std, hp->std, sizeof m->pp.std);
    LOG_INFO("model: vision %s: %d layers, %d px tiles, %d embeddings per tile", path, hp->n_layer_run,
             hp->image_size, hp->n_tokens_out);
    return 0;
}

int glimpse_model_load(const glimpse_model_params *p, glimpse_model **out, glimpse_err *err)
{
    glimpse_model *m = NULL;
    int rc;
    *out = NULL;
    if ((rc = check_params(p, err)) < 0)
        return rc;
    double t0 = time_ms();
    kernels_init();

    m = calloc(1, sizeof *m);
    if (!m)
        return err_set(err, GLIMPSE_ENOMEM, "model: out of memory");
    if ((rc = gguf_open(p->model_path, &m->file, err)) < 0)
        goto fail;
    if ((rc = text_model_load(m->file, &m->text, err)) < 0)
        goto fail;
    if ((rc = tokenizer_load(m->file, &m->tok, err)) < 0)
        goto fail;
    const text_config *c = &m->text.cfg;
    if (tokenizer_n_vocab(m->tok) != c->n_vocab) {
        rc = err_set(err, GLIMPSE_EFORMAT, "model: tokenizer has %d tokens, token_embd %d",
                     tokenizer_n_vocab(m->tok), c->n_vocab);
        goto fail;
    }
    gguf_str tmpl = { NULL, 0 };
    rc = gguf_get_str(m->file, "tokenizer.chat_template", &tmpl, err);
    if (rc < 0 && rc != GLIMPSE_ENOTFOUND)
        goto fail;
    m->tmpl = chat_template_detect(tmpl.ptr, tmpl.len);
    set_name(m, p->model_path);

    m->n_ctx = p->n_ctx ? p->n_ctx
                        : c->n_ctx_train > 0 && c->n_ctx_train < DEFAULT_CTX_MAX ? c->n_ctx_train : DEFAULT_CTX_MAX;
    m->n_batch = p->n_batch ? p->n_batch : DEFAULT_BATCH;
    if (m->n_batch > m->n_ctx)
        m->n_batch = m->n_ctx;
    m->n_parallel = p->n_parallel ? p->n_parallel : DEFAULT_PARALLEL;
    /* A step holds one decode entry per sequence plus at least a block of prompt. */
    if (m->n_batch < m->n_parallel + SCHED_KV_BLOCK)
        m->n_batch = m->n_parallel + SCHED_KV_BLOCK;
    if (p->n_threads > 0) {
        m->n_threads = p->n_threads;
    } else {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        m->n_threads = n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
    }
    if ((rc = threadpool_create(m->n_threads, &m->tp, err)) < 0)
        goto fail;

    /* The KV pool, shared by all sequences: --kv-cache-mb, else one context
     * per parallel sequence; never less than one full context, so that any
     * admitted request can run to its end alone. */
    kv_params kp = {
        .n_layer = c->n_layer,
        .row_len = c->n_head_kv * c->head_dim,
        .n_head = c->n_head_kv,
        .type = p->kv_type == GLIMPSE_KV_F32 ? KV_F32 : KV_F16,
        .block_size = SCHED_KV_BLOCK,
        .max_seqs = m->n_parallel,
        .max_seq_len = m->n_ctx,
    };
    const int64_t ctx_blocks = (m->n_ctx + SCHED_KV_BLOCK - 1) / SCHED_KV_BLOCK;
    int64_t n_blocks = ctx_blocks * m->n_parallel;
    if (p->kv_cache_mb > 0) {
        int64_t block_bytes = 2 * (int64_t)c->n_layer * kp.row_len * SCHED_KV_BLOCK * (kp.type == KV_F16 ? 2 : 4);
        n_blocks = ((int64_t)p->kv_cache_mb << 20) / block_bytes;
    }
    if (n_blocks < ctx_blocks)
        n_blocks = ctx_blocks;
    if (n_blocks > INT32_MAX / SCHED_KV_BLOCK) {
        rc = err_set(err, GLIMPSE_ELIMIT, "model: KV cache of %lld blocks is too large", (long long)n_blocks);
        goto fail;
    }
    kp.n_blocks = (int)n_blocks;
    if ((rc = kv_cache_create(&kp, &m->kv, err)) < 0 ||
        (rc = decoder_create(&m->text, m->kv, m->tp, m->n_batch, m->n_parallel, &m->dec, err)) < 0 ||
        (rc = sampler_scratch_create(c->n_vocab, &m->scratch, err)) < 0)
        goto fail;

    /* Room for what one token can release: its piece (after UTF-8 repair)
     * plus everything the stop matcher may have held back. */
    m->piece_cap = detok_out_max(m->tok);
    m->out_cap = m->piece_cap + STOP_HOLD_MAX;
    m->piece = malloc(m->piece_cap);
    m->out = malloc(m->out_cap);
    if (!m->piece || !m->out) {
        rc = err_set(err, GLIMPSE_ENOMEM, "model: out of memory");
        goto fail;
    }
    if (p->mmproj_path && (rc = load_vision(m, p->mmproj_path, err)) < 0)
        goto fail;
    int img_mb = p->image_cache_mb ? p->image_cache_mb : DEFAULT_IMAGE_CACHE_MB;
    sched_params sp = {
        .n_parallel = m->n_parallel,
        .max_queue = p->max_queue ? p->max_queue : DEFAULT_QUEUE,
        .step_tokens = m->n_batch,
        .image_cache_bytes = img_mb < 0 ? 0 : (size_t)img_mb << 20,
    };
    if ((rc = scheduler_create(m, &sp, &m->sched, err)) < 0)
        goto fail;
    m->load_ms = time_ms() - t0;
    LOG_INFO("model: %s: %d layers, n_embd %d, vocab %d, context %d, %d threads, %s template, kernels %s, "
             "%d parallel sequences, KV pool %d blocks of %d, loaded in %.0f ms", m->name, c->n_layer, c->n_embd,
             c->n_vocab, m->n_ctx, m->n_threads, chat_template_name(m->tmpl), kernels_isa(), m->n_parallel,
             kp.n_blocks, SCHED_KV_BLOCK, m->load_ms);
    *out = m;
    return 0;

fail:
    glimpse_model_free(m);
    return rc;
}

void glimpse_model_free(glimpse_model *m)
{
    if (!m)
        return;
    /* The engine thread first: it uses everything below. */
    scheduler_free(m->sched);
    vision_free(m->vision);
    gguf_close(m->mmproj_file);
    free(m->piece);
    free(m->out);
    sampler_scratch_free(m->scratch);
    decoder_free(m->dec);
    kv_cache_free(m->kv);
    threadpool_free(m->tp);
    tokenizer_free(m->tok);
    text_model_release(&m->text);
    gguf_close(m->file);
    free(m);
}

void glimpse_model_info_get(const glimpse_model *m, glimpse_model_info *out)
{
    const text_config *c = &m->text.cfg;
    memset(out, 0, sizeof *out);
    out->name = m->name;
    out->chat_template = chat_template_name(m->tmpl);
    out->n_vocab = c->n_vocab;
    out->n_embd = c->n_embd;
    out->n_layer = c->n_layer;
    out->n_head = c->n_head;
    out->n_head_kv = c->n_head_kv;
    out->n_ctx_train = c->n_ctx_train;
    out->n_ctx = m->n_ctx;
    out->n_threads = m->n_threads;
    out->n_parallel = m->n_parallel;
    out->has_vision = m->vision != NULL;
    out->load_ms = m->load_ms;
}
