/*
 * fusion.h — the Fusion Block: the projector that maps ViT outputs into the
 * text model's embedding space (idefics3 pixel shuffle + linear, or LLaVA's
 * two-layer MLP), spec §4.4 and §6.
 */
#ifndef GLIMPSE_FUSION_H
#define GLIMPSE_FUSION_H

#include "gguf.h"
#include "threadpool.h"
#include "vision.h"

typedef struct projector {
    int type;              /* enum projector_type */
    /* idefics3 */
    const tensor *fc;      /* mm.model.fc.weight   ne=[C*s*s, n_embd_text], no bias */
    /* mlp */
    const tensor *mm0;     /* mm.0.weight          ne=[C, n_mid] */
    float *mm0_b;          /* [n_mid], owned */
    const tensor *mm2;     /* mm.2.weight          ne=[n_mid, n_embd_text] */
    float *mm2_b;          /* [n_embd_text], owned */
} projector;

/* Shared by vision.c and fusion.c: finds a tensor and checks its shape
 * (ne1 = 0 means 1-D); a missing tensor is an error unless optional (then *out
 * is NULL). Borrowed from f. */
int vision_find_tensor(const gguf_file *f, const char *name, int64_t ne0, int64_t ne1, bool optional,
                       const tensor **out, glimpse_err *err);
/* A vector tensor of n elements as an owned f32 copy (free()), or NULL when
 * optional and absent. */
int vision_load_vec(const gguf_file *f, const char *name, int64_t n, bool optional, float **out,
                    glimpse_err *err);

/* The per-row work after a matrix product, one pass over each row of
 * y [n_rows][n], split over the pool by rows: y += b (if b), act(y) (if act),
 * then x += y (if x), then h = LayerNorm(x, or y without x) with ln_w, ln_b,
 * eps (if h; h may be the row it normalises). */
typedef struct vision_rows {
    float *y;
    int64_t n_rows, n;
    const float *b;
    void (*act)(float *y, int64_t n);
    float *x;
    float *h;
    const float *ln_w, *ln_b;
    float eps;
} vision_rows;

void vision_rows_run(threadpool *tp, const vision_rows *t);

/* Finds the projector tensors of hp->projector in f, checks their shapes
 * against hp and sets hp->n_embd_text and hp->n_tokens_out. Tensors are
 * borrowed from f; biases are owned copies, freed by projector_free. */
int projector_load(const gguf_file *f, vision_hparams *hp, projector *pj, glimpse_err *err);
void projector_free(projector *pj);

/* Floats of scratch projector_run needs. */
size_t projector_scratch_size(const projector *pj, const vision_hparams *hp);

/* Projects the ViT output of one tile.
 *   x:   [n_pos][C] ViT output rows
 *   out: [n_tokens_out][n_embd_text] */
void projector_run(const projector *pj, const vision_hparams *hp, threadpool *tp,
                   const float *x, float *scratch, float *out);

/* ---- splicing: where an image's embeddings go in the token sequence ------- */

struct tokenizer;

/* One position of a prompt: a token, or one embedding row of an image. */
typedef struct prompt_pos {
    int32_t token;  /* token id, when image < 0 */
    int32_t image;  /* index of the request's image, or -1 */
    int32_t row;    /* row of that image's embeddings: tile * n_tokens_out + i */
} prompt_pos;

/* The positions one image occupies, exactly as llama.cpp's mtmd lays them
 * out (spec §5.3). idefics3, with grid_y rows × grid_x columns of slices:
 *   for each row r, column c: "<fake_token_around_image><row_r_col_c>" (text,
 *   tokenized with specials), then the slice's n_tokens_out embeddings; "\n"
 *   after every row but the last; then "\n\n", <fake_token_around_image>,
 *   <global-img>, the overview's embeddings, <fake_token_around_image>.
 * Embedding rows follow image.h's tile order (slices row-major, overview
 * last). mlp: just the n_tokens_out embeddings of the one tile.
 * Writes up to cap positions to out and the full count to *n; returns 0, or
 * GLIMPSE_ELIMIT when cap was too small (call again with *n), or
 * GLIMPSE_EUNSUPPORTED when the vocabulary lacks a wrapper token. Any thread. */
int fusion_image_layout(const struct tokenizer *tok, const vision_hparams *hp, int grid_x, int grid_y,
                        int image, prompt_pos *out, size_t cap, size_t *n, glimpse_err *err);

#endif /* GLIMPSE_FUSION_H */
