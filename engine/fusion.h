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

#endif /* GLIMPSE_FUSION_H */
