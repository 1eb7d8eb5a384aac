/*
 * vision.c — the Vision Encoder (spec §4.3 SigLIP, §6 CLIP), as llama.cpp's
 * clip.cpp runs it, then the projector of fusion.c.
 *
 * Forward pass of one tile, one line per block:
 *   im2col the S×S tile into patches, rounded to half like ggml's F16 im2col;
 *   patch embedding = patches · W_patch^T (+ bias), W_patch also in half;
 *   [mlp] append the class token after the patches;
 *   add learned position embeddings row by row;
 *   [mlp] pre-LayerNorm;
 *   each layer: x += Wo·attn(LN1(x)) ; x += Wdown·act(Wup·LN2(x)) (all with biases);
 *   [idefics3] post-LayerNorm;
 *   projector (fusion.c).
 */
#include "vision.h"

#include "fusion.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct vision_layer {
    float *ln1_w, *ln1_b;        /* [C] */
    const tensor *wq, *wk, *wv;  /* ne=[C, C] */
    float *bq, *bk, *bv;         /* [C] */
    const tensor *wo;            /* ne=[C, C] */
    float *bo;                   /* [C] */
    float *ln2_w, *ln2_b;        /* [C] */
    const tensor *up;            /* ne=[C, F] */
    float *up_b;                 /* [F] */
    const tensor *down;          /* ne=[F, C] */
    float *down_b;               /* [C] */
} vision_layer;

struct vision_model {
    vision_hparams hp;

    /* weights: tensors borrowed from the mmap, small vectors as owned f32 */
    tensor patch_w;              /* ne=[3*p*p, C] F16: v.patch_embd.weight rounded to half */
    uint16_t *patch_w_half;      /* its data, owned */
    float *patch_b;              /* [C], or NULL */
    float *pos;                  /* [n_pos][C] */
    float *class_embd;           /* [C] (mlp only) */
    float *pre_ln_w, *pre_ln_b;  /* [C] or NULL */
    float *post_ln_w, *post_ln_b;
    vision_layer *layers;        /* [n_layer_run] */
    projector proj;
    kn_packed packed;            /* owned copies (kn_packed_add_rows) some matrices above point to */

    /* scratch for one tile, sized at load (the attention's grows once per
     * thread count, the first time a pool of that size is used) */
    float *patches;              /* [n_patches][3*p*p] */
    float *x;                    /* [n_pos][C] residual stream */
    float *h;                    /* [n_pos][C] normed input of a block */
    float *q, *k, *v;            /* [n_pos][C] */
    float *attn;                 /* [n_pos][C] concatenated heads */
    float *ffn;                  /* [n_pos][F] */
    float *proj_scratch;
    float *attn_scratch;         /* [n_attn_parts][kn_attention_dense_scratch(n_pos, head_dim)] */
    int n_attn_parts;
};

/* ---- loading --------------------------------------------------------------- */

static int get_u32_req(const gguf_file *f, const char *key, int *out, glimpse_err *err)
{
    uint32_t v;
    int rc = gguf_get_u32(f, key, &v, err);
    if (rc == GLIMPSE_ENOTFOUND)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: required key '%s' is missing", key);
    if (rc)
        return rc;
    if (v == 0 || v > (1u << 20))
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: key '%s' = %u is out of range", key, v);
    *out = (int)v;
    return 0;
}

static int get_bool_opt(const gguf_file *f, const char *key, bool *out, glimpse_err *err)
{
    int rc = gguf_get_bool(f, key, out, err);
    if (rc == GLIMPSE_ENOTFOUND) {
        *out = false;
        return 0;
    }
    return rc;
}

static int get_f32_arr3(const gguf_file *f, const char *key, float out[3], glimpse_err *err)
{
    enum gguf_vtype t;
    uint64_t n;
    const void *data;
    int rc = gguf_get_arr(f, key, &t, &n, &data, err);
    if (rc == GLIMPSE_ENOTFOUND)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: required key '%s' is missing", key);
    if (rc)
        return rc;
    if (t != GGUF_VTYPE_FLOAT32 || n < 3)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: '%s' must be an array of at least 3 float32", key);
    memcpy(out, data, 3 * sizeof(float));
    return 0;
}

int vision_find_tensor(const gguf_file *f, const char *name, int64_t ne0, int64_t ne1,
                       bool optional, const tensor **out, glimpse_err *err)
{
    const tensor *t = gguf_find_tensor(f, name);
    *out = t;
    if (!t)
        return optional ? 0 : err_set(err, GLIMPSE_EFORMAT, "mmproj: tensor '%s' is missing", name);
    int64_t want1 = ne1 ? ne1 : 1;
    if (t->ne[0] != ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1)
        return err_set(err, GLIMPSE_EFORMAT,
                       "mmproj: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                       (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                       (long long)ne0, (long long)want1);
    return 0;
}

/* Owned f32 copy of a tensor's n elements (any loadable type), or NULL for a
 * NULL tensor. */
static int vec_f32(const tensor *t, int64_t n, float **out, glimpse_err *err)
{
    *out = NULL;
    if (!t)
        return 0;
    float *v = malloc((size_t)n * sizeof *v);
    if (!v)
        return err_set(err, GLIMPSE_ENOMEM, "mmproj: out of memory for '%s'", t->name);
    dequantize_row(t->type, t->data, v, n);
    *out = v;
    return 0;
}

int vision_load_vec(const gguf_file *f, const char *name, int64_t n, bool optional, float **out,
                    glimpse_err *err)
{
    const tensor *t;
    int rc = vision_find_tensor(f, name, n, 0, optional, &t, err);
    if (rc)
        return rc;
    return vec_f32(t, n, out, err);
}

static int load_hparams(const gguf_file *f, vision_hparams *hp, glimpse_err *err)
{
    int rc;
    bool has_vision, use_gelu, use_silu;
    gguf_str ptype;

    memset(hp, 0, sizeof *hp);
    rc = gguf_get_bool(f, "clip.has_vision_encoder", &has_vision, err);
    if (rc == GLIMPSE_ENOTFOUND || (!rc && !has_vision))
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: the file has no vision encoder");
    if (rc)
        return rc;

    rc = gguf_get_str(f, "clip.projector_type", &ptype, err);
    if (rc == GLIMPSE_ENOTFOUND)
        rc = gguf_get_str(f, "clip.vision.projector_type", &ptype, err);
    if (rc == GLIMPSE_ENOTFOUND)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: clip.projector_type is missing");
    if (rc)
        return rc;
    if (ptype.len == 8 && !memcmp(ptype.ptr, "idefics3", 8))
        hp->projector = PROJECTOR_IDEFICS3;
    else if (ptype.len == 3 && !memcmp(ptype.ptr, "mlp", 3))
        hp->projector = PROJECTOR_MLP;
    else
        return err_set(err, GLIMPSE_EUNSUPPORTED,
                       "mmproj: projector type '%.*s' is not supported (supported: idefics3, mlp)",
                       (int)(ptype.len > 64 ? 64 : ptype.len), ptype.ptr);

    if ((rc = get_u32_req(f, "clip.vision.image_size", &hp->image_size, err)) ||
        (rc = get_u32_req(f, "clip.vision.patch_size", &hp->patch_size, err)) ||
        (rc = get_u32_req(f, "clip.vision.embedding_length", &hp->n_embd, err)) ||
        (rc = get_u32_req(f, "clip.vision.feed_forward_length", &hp->n_ff, err)) ||
        (rc = get_u32_req(f, "clip.vision.block_count", &hp->n_layer, err)) ||
        (rc = get_u32_req(f, "clip.vision.attention.head_count", &hp->n_head, err)))
        return rc;
    if (hp->image_size > 4096 || hp->image_size % hp->patch_size)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: image_size %d is not a multiple of patch_size %d (or > 4096)",
                       hp->image_size, hp->patch_size);
    if (hp->n_embd % hp->n_head)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: embedding_length %d is not a multiple of head_count %d",
                       hp->n_embd, hp->n_head);
    hp->head_dim = hp->n_embd / hp->n_head;
    uint32_t hd;
    rc = gguf_get_u32(f, "clip.vision.attention.head_dim", &hd, err);
    if (rc && rc != GLIMPSE_ENOTFOUND)
        return rc;
    if (!rc && (int)hd != hp->head_dim)
        return err_set(err, GLIMPSE_EUNSUPPORTED, "mmproj: head_dim %u differs from embedding_length/head_count",
                       hd);

    rc = gguf_get_f32(f, "clip.vision.attention.layer_norm_epsilon", &hp->eps, err);
    if (rc == GLIMPSE_ENOTFOUND)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: clip.vision.attention.layer_norm_epsilon is missing");
    if (rc)
        return rc;
    if (!(hp->eps >= 0.0f && hp->eps < 1.0f))
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: layer_norm_epsilon %g is out of range", hp->eps);
    if ((rc = get_f32_arr3(f, "clip.vision.image_mean", hp->mean, err)) ||
        (rc = get_f32_arr3(f, "clip.vision.image_std", hp->std, err)))
        return rc;
    for (int c = 0; c < 3; c++)
        if (!(hp->std[c] > 0.0f) || !isfinite(hp->mean[c]))
            return err_set(err, GLIMPSE_EFORMAT, "mmproj: image_mean/image_std are not usable");

    uint32_t u;
    hp->scale_factor = 1;
    rc = gguf_get_u32(f, "clip.vision.projector.scale_factor", &u, err);
    if (rc && rc != GLIMPSE_ENOTFOUND)
        return rc;
    if (!rc)
        hp->scale_factor = (int)u;
    rc = gguf_get_u32(f, "clip.vision.preproc_image_size", &u, err);
    if (rc && rc != GLIMPSE_ENOTFOUND)
        return rc;
    hp->longest_edge = rc ? 0 : (int)u;
    if (hp->longest_edge > 16384)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: preproc_image_size %d is out of range", hp->longest_edge);

    if ((rc = get_bool_opt(f, "clip.use_gelu", &use_gelu, err)) ||
        (rc = get_bool_opt(f, "clip.use_silu", &use_silu, err)))
        return rc;
    if (use_gelu && use_silu)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: both clip.use_gelu and clip.use_silu are set");
    hp->act = use_gelu ? VISION_ACT_GELU : use_silu ? VISION_ACT_SILU : VISION_ACT_GELU_QUICK;

    int side = hp->image_size / hp->patch_size;
    hp->n_patches = side * side;
    if (hp->projector == PROJECTOR_IDEFICS3) {
        if (hp->scale_factor < 2 || side % hp->scale_factor)
            return err_set(err, GLIMPSE_EUNSUPPORTED,
                           "mmproj: idefics3 needs a scale_factor >= 2 that divides the patch grid (%d, grid %d)",
                           hp->scale_factor, side);
        hp->n_pos = hp->n_patches;
        hp->n_layer_run = hp->n_layer;
    } else {
        /* llama.cpp's llava graph runs layers 0 .. n_layer-2 (spec §6). */
        if (hp->n_layer < 2)
            return err_set(err, GLIMPSE_EFORMAT, "mmproj: an mlp projector needs at least 2 vision layers");
        hp->n_pos = hp->n_patches + 1;
        hp->n_layer_run = hp->n_layer - 1;
    }
    return 0;
}

static int load_layer(const gguf_file *f, const vision_hparams *hp, int il, vision_layer *l,
                      glimpse_err *err)
{
    const int64_t C = hp->n_embd, F = hp->n_ff;
    char name[96];
    int rc;
#define NAME(fmt) (snprintf(name, sizeof name, "v.blk.%d." fmt, il), name)
    if ((rc = vision_load_vec(f, NAME("ln1.weight"), C, false, &l->ln1_w, err)) ||
        (rc = vision_load_vec(f, NAME("ln1.bias"), C, true, &l->ln1_b, err)) ||
        (rc = vision_load_vec(f, NAME("ln2.weight"), C, false, &l->ln2_w, err)) ||
        (rc = vision_load_vec(f, NAME("ln2.bias"), C, true, &l->ln2_b, err)) ||
        (rc = vision_find_tensor(f, NAME("attn_q.weight"), C, C, false, &l->wq, err)) ||
        (rc = vision_find_tensor(f, NAME("attn_k.weight"), C, C, false, &l->wk, err)) ||
        (rc = vision_find_tensor(f, NAME("attn_v.weight"), C, C, false, &l->wv, err)) ||
        (rc = vision_find_tensor(f, NAME("attn_out.weight"), C, C, false, &l->wo, err)) ||
        (rc = vision_load_vec(f, NAME("attn_q.bias"), C, true, &l->bq, err)) ||
        (rc = vision_load_vec(f, NAME("attn_k.bias"), C, true, &l->bk, err)) ||
        (rc = vision_load_vec(f, NAME("attn_v.bias"), C, true, &l->bv, err)) ||
        (rc = vision_load_vec(f, NAME("attn_out.bias"), C, true, &l->bo, err)))
        return rc;

    /* Legacy files name fc1 "ffn_down": like clip.cpp, the matrices (and their
     * biases) are exchanged when ffn_down's ne0 equals the ViT width. */
    const tensor *up = gguf_find_tensor(f, NAME("ffn_up.weight"));
    const tensor *down = gguf_find_tensor(f, NAME("ffn_down.weight"));
    if (!up || !down)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: layer %d lacks ffn_up/ffn_down", il);
    bool swapped = down->ne[0] == C;
    const char *up_name = swapped ? "ffn_down" : "ffn_up";
    const char *down_name = swapped ? "ffn_up" : "ffn_down";
    char bias_name[96];
    snprintf(name, sizeof name, "v.blk.%d.%s.weight", il, up_name);
    if ((rc = vision_find_tensor(f, name, C, F, false, &l->up, err)))
        return rc;
    snprintf(bias_name, sizeof bias_name, "v.blk.%d.%s.bias", il, up_name);
    if ((rc = vision_load_vec(f, bias_name, F, true, &l->up_b, err)))
        return rc;
    snprintf(name, sizeof name, "v.blk.%d.%s.weight", il, down_name);
    if ((rc = vision_find_tensor(f, name, F, C, false, &l->down, err)))
        return rc;
    snprintf(bias_name, sizeof bias_name, "v.blk.%d.%s.bias", il, down_name);
    return vision_load_vec(f, bias_name, C, true, &l->down_b, err);
#undef NAME
}

/* The run layers' and the projector's matrices, packed where the kernels
 * gain (gguf_pack_matrix). */
static int pack_matrices(const gguf_file *f, vision_model *vm, glimpse_err *err)
{
    int rc = 0;
    for (int il = 0; rc == 0 && il < vm->hp.n_layer_run; il++) {
        vision_layer *l = &vm->layers[il];
        const tensor **slots[] = { &l->wq, &l->wk, &l->wv, &l->wo, &l->up, &l->down };
        for (size_t i = 0; rc == 0 && i < sizeof slots / sizeof slots[0]; i++)
            rc = gguf_pack_matrix(f, &vm->packed, slots[i], 1, slots[i], false, err);
    }
    const tensor **proj[] = { &vm->proj.fc, &vm->proj.mm0, &vm->proj.mm2 };
    for (size_t i = 0; rc == 0 && i < sizeof proj / sizeof proj[0]; i++)
        rc = gguf_pack_matrix(f, &vm->packed, proj[i], 1, proj[i], false, err);
    return rc;
}

static void free_layer(vision_layer *l)
{
    free(l->ln1_w);
    free(l->ln1_b);
    free(l->bq);
    free(l->bk);
    free(l->bv);
    free(l->bo);
    free(l->ln2_w);
    free(l->ln2_b);
    free(l->up_b);
    free(l->down_b);
}

/* The patch kernel ne=[p, p, 3, C] is, row by row, [C][3][p][p]: exactly the
 * im2col order (c, ky, kx), so it is viewed as a [3*p*p, C] matrix. ggml's
 * conv_2d runs im2col in F16, so the kernel is rounded to half here once. */
static int load_patch_embd(const gguf_file *f, vision_model *vm, glimpse_err *err)
{
    const vision_hparams *hp = &vm->hp;
    const int64_t p = hp->patch_size, C = hp->n_embd, k = 3 * p * p;
    const tensor *t = gguf_find_tensor(f, "v.patch_embd.weight");
    if (!t)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: tensor 'v.patch_embd.weight' is missing");
    if (t->ne[0] != p || t->ne[1] != p || t->ne[2] != 3 || t->ne[3] != C)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: v.patch_embd.weight has shape [%lld, %lld, %lld, %lld], "
                       "expected [%lld, %lld, 3, %lld]", (long long)t->ne[0], (long long)t->ne[1],
                       (long long)t->ne[2], (long long)t->ne[3], (long long)p, (long long)p, (long long)C);
    float *row = malloc((size_t)k * sizeof *row);
    vm->patch_w_half = malloc((size_t)(k * C) * sizeof *vm->patch_w_half);
    if (!row || !vm->patch_w_half) {
        free(row);
        return err_set(err, GLIMPSE_ENOMEM, "mmproj: out of memory for the patch embedding");
    }
    size_t row_bytes = dtype_row_size(t->type, k);
    for (int64_t o = 0; o < C; o++) {
        dequantize_row(t->type, (const char *)t->data + (size_t)o * row_bytes, row, k);
        for (int64_t i = 0; i < k; i++)
            vm->patch_w_half[o * k + i] = f32_to_fp16(row[i]);
    }
    free(row);
    vm->patch_w = (tensor){
        .name = "v.patch_embd.weight (f16)", .type = DTYPE_F16, .n_dims = 2, .ne = { k, C, 1, 1 },
        .data = vm->patch_w_half, .nbytes = (size_t)(k * C) * sizeof(uint16_t),
    };
    return vision_load_vec(f, "v.patch_embd.bias", C, true, &vm->patch_b, err);
}

/* Queries per attention work item (a multiple of KN_ATTN_DENSE_QUERIES):
 * 1024 positions x 12 heads make 192 items, enough to even out two threads
 * that the OS runs unevenly; keys and values are read once per 32 queries
 * whatever the size. The items are split into VIS_PARTS_PER_THREAD parts
 * per pool thread, each with its own scratch (the row passes are split the
 * same way). */
#define VIS_Q_TILE 64
#define VIS_PARTS_PER_THREAD 4

static int ensure_attn_scratch(vision_model *vm, int nth)
{
    const int parts = VIS_PARTS_PER_THREAD * nth;
    if (vm->n_attn_parts >= parts)
        return 0;
    const size_t per_part = kn_attention_dense_scratch(vm->hp.n_pos, vm->hp.head_dim);
    float *s = realloc(vm->attn_scratch, (size_t)parts * per_part * sizeof *s);
    if (!s)
        return GLIMPSE_ENOMEM;
    vm->attn_scratch = s;
    vm->n_attn_parts = parts;
    return 0;
}

static int alloc_scratch(vision_model *vm, glimpse_err *err)
{
    const vision_hparams *hp = &vm->hp;
    const size_t n = (size_t)hp->n_pos, C = (size_t)hp->n_embd, F = (size_t)hp->n_ff;
    const size_t k = 3 * (size_t)hp->patch_size * (size_t)hp->patch_size;
    vm->patches = malloc((size_t)hp->n_patches * k * sizeof(float));
    vm->x = malloc(n * C * sizeof(float));
    vm->h = malloc(n * C * sizeof(float));
    vm->q = malloc(n * C * sizeof(float));
    vm->k = malloc(n * C * sizeof(float));
    vm->v = malloc(n * C * sizeof(float));
    vm->attn = malloc(n * C * sizeof(float));
    vm->ffn = malloc(n * F * sizeof(float));
    vm->proj_scratch = malloc(projector_scratch_size(&vm->proj, hp) * sizeof(float) + sizeof(float));
    if (!vm->patches || !vm->x || !vm->h || !vm->q || !vm->k || !vm->v || !vm->attn || !vm->ffn ||
        !vm->proj_scratch)
        return err_set(err, GLIMPSE_ENOMEM, "mmproj: out of memory for the vision scratch");
    if (ensure_attn_scratch(vm, 1))
        return err_set(err, GLIMPSE_ENOMEM, "mmproj: out of memory for the attention scratch");
    size_t act = n * (F > C ? F : C);
    return kernels_reserve((int64_t)(act > (size_t)hp->n_patches * k ? act : (size_t)hp->n_patches * k), err);
}

int vision_load(const gguf_file *f, vision_model **out, glimpse_err *err)
{
    vision_model *vm = calloc(1, sizeof *vm);
    int rc;
    *out = NULL;
    if (!vm)
        return err_set(err, GLIMPSE_ENOMEM, "mmproj: out of memory");
    vision_hparams *hp = &vm->hp;
    if ((rc = load_hparams(f, hp, err)))
        goto fail;
    const int64_t C = hp->n_embd;

    if ((rc = load_patch_embd(f, vm, err)))
        goto fail;
    const tensor *pos;
    if ((rc = vision_find_tensor(f, "v.position_embd.weight", C, hp->n_pos, false, &pos, err)) ||
        (rc = vec_f32(pos, C * hp->n_pos, &vm->pos, err)))
        goto fail;
    if (hp->projector == PROJECTOR_MLP &&
        (rc = vision_load_vec(f, "v.class_embd", C, false, &vm->class_embd, err)))
        goto fail;
    if ((rc = vision_load_vec(f, "v.pre_ln.weight", C, true, &vm->pre_ln_w, err)) ||
        (rc = vision_load_vec(f, "v.pre_ln.bias", C, true, &vm->pre_ln_b, err)) ||
        (rc = vision_load_vec(f, "v.post_ln.weight", C, true, &vm->post_ln_w, err)) ||
        (rc = vision_load_vec(f, "v.post_ln.bias", C, true, &vm->post_ln_b, err)))
        goto fail;

    vm->layers = calloc((size_t)hp->n_layer_run, sizeof *vm->layers);
    if (!vm->layers) {
        rc = err_set(err, GLIMPSE_ENOMEM, "mmproj: out of memory");
        goto fail;
    }
    for (int il = 0; il < hp->n_layer_run; il++)
        if ((rc = load_layer(f, hp, il, &vm->layers[il], err)))
            goto fail;

    if ((rc = projector_load(f, hp, &vm->proj, err)) || (rc = pack_matrices(f, vm, err)) ||
        (rc = alloc_scratch(vm, err)))
        goto fail;
    *out = vm;
    return 0;
fail:
    vision_free(vm);
    return rc;
}

void vision_free(vision_model *vm)
{
    if (!vm)
        return;
    if (vm->layers)
        for (int il = 0; il < vm->hp.n_layer_run; il++)
            free_layer(&vm->layers[il]);
    free(vm->layers);
    projector_free(&vm->proj);
    kn_packed_free(&vm->packed);
    free(vm->patch_w_half);
    free(vm->patch_b);
    free(vm->pos);
    free(vm->class_embd);
    free(vm->pre_ln_w);
    free(vm->pre_ln_b);
    free(vm->post_ln_w);
    free(vm->post_ln_b);
    free(vm->patches);
    free(vm->x);
    free(vm->h);
    free(vm->q);
    free(vm->k);
    free(vm->v);
    free(vm->attn);
    free(vm->ffn);
    free(vm->proj_scratch);
    free(vm->attn_scratch);
    free(vm);
}

const vision_hparams *vision_get_hparams(const vision_model *vm)
{
    return &vm->hp;
}

const float *vision_last_hidden(const vision_model *vm)
{
    return vm->x;
}

/* ---- forward ----------------------------------------------------------------- */

typedef struct im2col_task {
    const vision_hparams *hp;
    const float *tile;
    float *patches;
} im2col_task;

/* patches[py*side+px][(c*p + ky)*p + kx] = half(tile[c][p*py+ky][p*px+kx])
 * for the patch rows py of part ith of nth. */
static void im2col_part(void *arg, int ith, int nth)
{
    const im2col_task *t = arg;
    const int S = t->hp->image_size, p = t->hp->patch_size, side = S / p;
    const int k = 3 * p * p;
    int64_t lo, hi;
    threadpool_split(side, ith, nth, &lo, &hi);
    for (int py = (int)lo; py < (int)hi; py++)
        for (int px = 0; px < side; px++) {
            float *dst = t->patches + (size_t)(py * side + px) * k;
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < p; ky++) {
                    const float *src = t->tile + ((size_t)c * S + (size_t)(p * py + ky)) * S + (size_t)p * px;
                    for (int kx = 0; kx < p; kx++)
                        *dst++ = fp16_to_f32(f32_to_fp16(src[kx]));
                }
        }
}

static void im2col(threadpool *tp, const vision_hparams *hp, const float *tile, float *patches)
{
    im2col_task t = { hp, tile, patches };
    threadpool_run(tp, im2col_part, &t);
}

/* Rows per kn_layer_norm_rows call: the rows' other steps first, then their
 * LayerNorms together (a row's numbers do not depend on the grouping). */
#define LN_ROWS 8

static void rows_part(void *arg, int ith, int nth)
{
    const vision_rows *t = arg;
    int64_t lo, hi;
    threadpool_split(t->n_rows, ith, nth, &lo, &hi);
    for (int64_t r0 = lo; r0 < hi; r0 += LN_ROWS) {
        const int64_t r1 = hi - r0 < LN_ROWS ? hi : r0 + LN_ROWS;
        for (int64_t r = r0; r < r1; r++) {
            float *y = t->y + r * t->n;
            if (t->b)
                kn_add_bias(y, t->b, 1, t->n);
            if (t->act)
                t->act(y, t->n);
            if (t->x)
                kn_add_bias(t->x + r * t->n, y, 1, t->n);
        }
        if (t->h)
            kn_layer_norm_rows((t->x ? t->x : t->y) + r0 * t->n, (size_t)t->n, t->ln_w, t->ln_b, t->n, t->eps,
                               t->h + r0 * t->n, (size_t)t->n, r1 - r0);
    }
}

void vision_rows_run(threadpool *tp, const vision_rows *t)
{
    if (!t->b && !t->act && !t->x && !t->h)
        return; /* nothing to do (a bias the model does not have) */
    /* several parts per thread: a thread the OS holds back leaves its rows
     * to the others instead of stalling the pass */
    threadpool_run_parts(tp, rows_part, (void *)t, tp ? VIS_PARTS_PER_THREAD * threadpool_size(tp) : 1);
}

/* Bidirectional multi-head attention, fused (kn_attention_dense): the work
 * items (head, tile of VIS_Q_TILE queries) are split into parts, each with
 * its own scratch. */
typedef struct attn_task {
    vision_model *vm;
} attn_task;

static void attn_part(void *arg, int ith, int nth)
{
    vision_model *vm = ((attn_task *)arg)->vm;
    const vision_hparams *hp = &vm->hp;
    const int n = hp->n_pos, C = hp->n_embd, d = hp->head_dim;
    const int n_tiles = (n + VIS_Q_TILE - 1) / VIS_Q_TILE;
    float *scratch = vm->attn_scratch + (size_t)ith * kn_attention_dense_scratch(n, d);
    int64_t lo, hi;
    threadpool_split((int64_t)hp->n_head * n_tiles, ith, nth, &lo, &hi);
    for (int64_t it = lo; it < hi; it++) {
        const int h = (int)(it / n_tiles), q0 = (int)(it % n_tiles) * VIS_Q_TILE;
        const int n_q = n - q0 < VIS_Q_TILE ? n - q0 : VIS_Q_TILE;
        const size_t off = (size_t)h * d;
        kn_attention_dense(vm->q + (size_t)q0 * C + off, (size_t)C, n_q, vm->k + off, vm->v + off, (size_t)C, n, d,
                           1.0f / sqrtf((float)d), vm->attn + (size_t)q0 * C + off, (size_t)C, scratch);
    }
}

static void silu(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = x[i] / (1.0f + expf(-x[i]));
}

/* The ViT input rows vm->x [n_pos][C] of a tile: patch embedding, the class
 * token as the last row, positions, pre-LN. */
static void embed_tile(vision_model *vm, threadpool *tp, const float *tile)
{
    const vision_hparams *hp = &vm->hp;
    const int64_t C = hp->n_embd;
    im2col(tp, hp, tile, vm->patches);
    kn_matmul(tp, &vm->patch_w, vm->patches, hp->n_patches, vm->x);
    vision_rows bias = { .y = vm->x, .n_rows = hp->n_patches, .n = C, .b = vm->patch_b };
    vision_rows_run(tp, &bias);
    if (vm->class_embd)
        memcpy(vm->x + (size_t)hp->n_patches * C, vm->class_embd, (size_t)C * sizeof(float));
    /* x += positions, then the pre-LN in place */
    vision_rows pos = { .y = vm->pos, .n_rows = hp->n_pos, .n = C, .x = vm->x };
    if (vm->pre_ln_w) {
        pos.h = vm->x;
        pos.ln_w = vm->pre_ln_w;
        pos.ln_b = vm->pre_ln_b;
        pos.eps = hp->eps;
    }
    vision_rows_run(tp, &pos);
}

void vision_encode(vision_model *vm, threadpool *tp, const float *tile, float *out)
{
    vision_encode_part(vm, tp, tile, 0, vm->hp.n_layer_run, out);
}

/* Between two parts only the residual stream vm->x carries the tile: every
 * other buffer is rewritten inside a layer, so the split changes no number. */
void vision_encode_part(vision_model *vm, threadpool *tp, const float *tile, int layer_from, int layer_to,
                        float *out)
{
    const vision_hparams *hp = &vm->hp;
    const int64_t n = hp->n_pos, C = hp->n_embd, F = hp->n_ff;
    const int nth = tp ? threadpool_size(tp) : 1;

    /* The attention scratch is sized for one thread at load and grows once
     * for a larger pool; if that growth fails, run on the caller's thread alone. */
    if (ensure_attn_scratch(vm, nth))
        tp = NULL;

    if (layer_from == 0)
        embed_tile(vm, tp, tile);
    /* Each matrix product's bias, activation, residual add and the next
     * LayerNorm are one pass over its rows (vision_rows), in the order the
     * separate passes had: the same numbers with fewer trips to memory. */
    void (*act)(float *, int64_t) = hp->act == VISION_ACT_GELU        ? kn_gelu
                                    : hp->act == VISION_ACT_GELU_QUICK ? kn_gelu_quick
                                                                       : silu;
    if (layer_from < layer_to) {
        const vision_layer *l = &vm->layers[layer_from];
        vision_rows ln1 = { .y = vm->x, .n_rows = n, .n = C, .h = vm->h, .ln_w = l->ln1_w, .ln_b = l->ln1_b,
                            .eps = hp->eps };
        vision_rows_run(tp, &ln1);
    }
    for (int il = layer_from; il < layer_to; il++) {
        const vision_layer *l = &vm->layers[il];
        /* h = LN1(x) here */
        const tensor *wqkv[3] = { l->wq, l->wk, l->wv };
        float *bqkv[3] = { l->bq, l->bk, l->bv }, *qkv[3] = { vm->q, vm->k, vm->v };
        for (int i = 0; i < 3; i++) {
            kn_matmul(tp, wqkv[i], vm->h, n, qkv[i]);
            vision_rows bias = { .y = qkv[i], .n_rows = n, .n = C, .b = bqkv[i] };
            vision_rows_run(tp, &bias);
        }
        attn_task at = { vm };
        threadpool_run_parts(tp, attn_part, &at, vm->n_attn_parts);
        /* x += Wo attn + bo; h = LN2(x) */
        kn_matmul(tp, l->wo, vm->attn, n, vm->h);
        vision_rows attn_out = { .y = vm->h, .n_rows = n, .n = C, .b = l->bo, .x = vm->x, .h = vm->h,
                                 .ln_w = l->ln2_w, .ln_b = l->ln2_b, .eps = hp->eps };
        vision_rows_run(tp, &attn_out);
        /* ffn = act(Wup h + b_up) */
        kn_matmul(tp, l->up, vm->h, n, vm->ffn);
        vision_rows up = { .y = vm->ffn, .n_rows = n, .n = F, .b = l->up_b, .act = act };
        vision_rows_run(tp, &up);
        /* x += Wdown ffn + b_down; h = LN1(x) of the next layer of this part */
        kn_matmul(tp, l->down, vm->ffn, n, vm->h);
        vision_rows down = { .y = vm->h, .n_rows = n, .n = C, .b = l->down_b, .x = vm->x };
        if (il + 1 < layer_to) {
            down.h = vm->h;
            down.ln_w = vm->layers[il + 1].ln1_w;
            down.ln_b = vm->layers[il + 1].ln1_b;
            down.eps = hp->eps;
        }
        vision_rows_run(tp, &down);
    }
    if (layer_to < hp->n_layer_run)
        return;
    if (vm->post_ln_w) {
        vision_rows post = { .y = vm->x, .n_rows = n, .n = C, .h = vm->x, .ln_w = vm->post_ln_w,
                             .ln_b = vm->post_ln_b, .eps = hp->eps };
        vision_rows_run(tp, &post);
    }

    projector_run(&vm->proj, hp, tp, vm->x, vm->proj_scratch, out);
}
