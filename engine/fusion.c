/*
 * fusion.c — the Fusion Block's projectors (spec §4.4 idefics3, §6 mlp).
 *
 * idefics3: pixel shuffle groups each s×s block of ViT rows into one token
 *   (dy outer, dx middle, channel inner, like HF's Idefics3Connector and
 *   ggml's build_patch_merge_permute), then a linear map without bias.
 * mlp: rows 1 .. n_pos-1 of the ViT output (llama.cpp's gather, which keeps the
 *   class token — appended last — and drops patch 0), mm.0 + bias, GELU (tanh),
 *   mm.2 + bias.
 */
#include "fusion.h"

#include "kernels/kernels.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int projector_load(const gguf_file *f, vision_hparams *hp, projector *pj, glimpse_err *err)
{
    const int64_t C = hp->n_embd;
    int rc;
    memset(pj, 0, sizeof *pj);
    pj->type = hp->projector;
    if (hp->projector == PROJECTOR_IDEFICS3) {
        const int64_t s = hp->scale_factor;
        const tensor *fc = gguf_find_tensor(f, "mm.model.fc.weight");
        if (!fc)
            return err_set(err, GLIMPSE_EFORMAT, "mmproj: tensor 'mm.model.fc.weight' is missing");
        if ((rc = vision_find_tensor(f, "mm.model.fc.weight", C * s * s, fc->ne[1], false, &pj->fc, err)))
            return rc;
        hp->n_embd_text = (int)fc->ne[1];
        hp->n_tokens_out = hp->n_patches / (int)(s * s);
        return 0;
    }
    const tensor *mm0 = gguf_find_tensor(f, "mm.0.weight");
    const tensor *mm2 = gguf_find_tensor(f, "mm.2.weight");
    if (!mm0 || !mm2)
        return err_set(err, GLIMPSE_EFORMAT, "mmproj: the mlp projector needs mm.0.weight and mm.2.weight");
    const int64_t n_mid = mm0->ne[1], n_out = mm2->ne[1];
    if ((rc = vision_find_tensor(f, "mm.0.weight", C, n_mid, false, &pj->mm0, err)) ||
        (rc = vision_find_tensor(f, "mm.2.weight", n_mid, n_out, false, &pj->mm2, err)) ||
        (rc = vision_load_vec(f, "mm.0.bias", n_mid, true, &pj->mm0_b, err)) ||
        (rc = vision_load_vec(f, "mm.2.bias", n_out, true, &pj->mm2_b, err))) {
        projector_free(pj);
        return rc;
    }
    hp->n_embd_text = (int)n_out;
    hp->n_tokens_out = hp->n_patches;
    return 0;
}

void projector_free(projector *pj)
{
    if (!pj)
        return;
    free(pj->mm0_b);
    free(pj->mm2_b);
    pj->mm0_b = pj->mm2_b = NULL;
}

size_t projector_scratch_size(const projector *pj, const vision_hparams *hp)
{
    if (pj->type == PROJECTOR_IDEFICS3)
        return (size_t)hp->n_patches * (size_t)hp->n_embd; /* the shuffled rows */
    return (size_t)hp->n_patches * (size_t)pj->mm0->ne[1];  /* the hidden layer */
}

/* f[T][c + C*(dx + s*dy)] = x[(s*Y + dy)*side + s*X + dx][c], T = Y*(side/s) + X */
static void pixel_shuffle(const vision_hparams *hp, const float *x, float *f)
{
    const int side = hp->image_size / hp->patch_size, s = hp->scale_factor, C = hp->n_embd;
    const int out_side = side / s;
    for (int Y = 0; Y < out_side; Y++)
        for (int X = 0; X < out_side; X++) {
            float *dst = f + (size_t)(Y * out_side + X) * C * s * s;
            for (int dy = 0; dy < s; dy++)
                for (int dx = 0; dx < s; dx++) {
                    const float *src = x + (size_t)((s * Y + dy) * side + s * X + dx) * C;
                    memcpy(dst + (size_t)C * (dx + s * dy), src, (size_t)C * sizeof(float));
                }
        }
}

void projector_run(const projector *pj, const vision_hparams *hp, threadpool *tp, const float *x,
                   float *scratch, float *out)
{
    if (pj->type == PROJECTOR_IDEFICS3) {
        pixel_shuffle(hp, x, scratch);
        kn_matmul(tp, pj->fc, scratch, hp->n_tokens_out, out);
        return;
    }
    const int64_t n = hp->n_patches, n_mid = pj->mm0->ne[1];
    kn_matmul(tp, pj->mm0, x + hp->n_embd, n, scratch);
    vision_rows mid = { .y = scratch, .n_rows = n, .n = n_mid, .b = pj->mm0_b, .act = kn_gelu };
    vision_rows_run(tp, &mid);
    kn_matmul(tp, pj->mm2, scratch, n, out);
    vision_rows bias = { .y = out, .n_rows = n, .n = pj->mm2->ne[1], .b = pj->mm2_b };
    vision_rows_run(tp, &bias);
}

/* ---- splicing ---------------------------------------------------------------- */

typedef struct layout {
    prompt_pos *out;
    size_t cap, n;
} layout;

static void put(layout *l, int32_t token, int32_t image, int32_t row)
{
    if (l->n < l->cap)
        l->out[l->n] = (prompt_pos){ token, image, row };
    l->n++;
}

static void put_embeddings(layout *l, int image, int tile, int n_tokens_out)
{
    for (int i = 0; i < n_tokens_out; i++)
        put(l, -1, image, tile * n_tokens_out + i);
}

/* mtmd's lookup_token: the first id whose piece (specials rendered) is text. */
static int lookup(const tokenizer *tok, const char *text, int32_t *id, glimpse_err *err)
{
    *id = tokenizer_find(tok, text, strlen(text));
    if (*id < 0)
        return err_set(err, GLIMPSE_EUNSUPPORTED,
                       "the vocabulary has no token '%s', which idefics3 images need", text);
    return 0;
}

int fusion_image_layout(const tokenizer *tok, const vision_hparams *hp, int grid_x, int grid_y, int image,
                        prompt_pos *out, size_t cap, size_t *n, glimpse_err *err)
{
    layout l = { out, cap, 0 };
    const int n_out = hp->n_tokens_out;
    int rc;

    if (hp->projector != PROJECTOR_IDEFICS3) {
        put_embeddings(&l, image, 0, n_out);
    } else {
        int32_t nl, nlnl, fake, global;
        if ((rc = lookup(tok, "\n", &nl, err)) || (rc = lookup(tok, "\n\n", &nlnl, err)) ||
            (rc = lookup(tok, "<fake_token_around_image>", &fake, err)) ||
            (rc = lookup(tok, "<global-img>", &global, err)))
            return rc;
        for (int r = 0; r < grid_y; r++) {
            for (int c = 0; c < grid_x; c++) {
                char text[64];
                int32_t ids[64];
                size_t n_ids;
                int len = snprintf(text, sizeof text, "<fake_token_around_image><row_%d_col_%d>", r + 1, c + 1);
                rc = tokenizer_encode(tok, text, (size_t)len, false, true, ids, 64, &n_ids, err);
                if (rc)
                    return rc;
                for (size_t i = 0; i < n_ids; i++)
                    put(&l, ids[i], -1, 0);
                put_embeddings(&l, image, r * grid_x + c, n_out);
            }
            if (r + 1 < grid_y)
                put(&l, nl, -1, 0);
        }
        put(&l, nlnl, -1, 0);
        put(&l, fake, -1, 0);
        put(&l, global, -1, 0);
        put_embeddings(&l, image, grid_x * grid_y, n_out);
        put(&l, fake, -1, 0);
    }
    *n = l.n;
    return l.n > cap ? GLIMPSE_ELIMIT : 0;
}
