/*
 * vision.h — the Vision Encoder: a ViT over one preprocessed image tile, read
 * from an mmproj GGUF (spec §4, §6), followed by the Fusion Block's projector
 * (fusion.h) so that one call turns pixels into text-space vectors.
 *
 * Two towers, both as llama.cpp's clip.cpp runs them:
 *  - projector "idefics3" (SmolVLM): SigLIP — patch conv with bias, learned
 *    positions, no pre-LN, pre-LN blocks, tanh-GELU, post-LN;
 *  - projector "mlp" (LLaVA-1.5): CLIP — class token appended after the patches,
 *    pre-LN, quick-GELU, the last stored layer not run, no post-LN.
 */
#ifndef GLIMPSE_VISION_H
#define GLIMPSE_VISION_H

#include "gguf.h"
#include "threadpool.h"

enum projector_type {
    PROJECTOR_IDEFICS3 = 1,
    PROJECTOR_MLP = 2,
};

enum vision_act {
    VISION_ACT_GELU = 0,       /* tanh approximation (clip.use_gelu) */
    VISION_ACT_GELU_QUICK = 1, /* z * sigmoid(1.702 z) (neither flag) */
    VISION_ACT_SILU = 2,       /* clip.use_silu */
};

typedef struct vision_hparams {
    int projector;     /* enum projector_type */
    int image_size;    /* S: tile side in pixels */
    int patch_size;    /* p */
    int n_embd;        /* C: ViT width */
    int n_ff;          /* ViT MLP width */
    int n_layer;       /* layers stored in the file */
    int n_layer_run;   /* layers run: n_layer, or n_layer - 1 for "mlp" (llama.cpp) */
    int n_head;
    int head_dim;
    float eps;         /* LayerNorm epsilon */
    float mean[3];     /* normalisation, per RGB channel */
    float std[3];
    int scale_factor;  /* pixel-shuffle factor s (idefics3), 1 otherwise */
    int longest_edge;  /* clip.vision.preproc_image_size, 0 when absent */
    int act;           /* enum vision_act of the ViT MLP */
    int n_patches;     /* (S/p)^2 */
    int n_pos;         /* rows through the ViT: n_patches, +1 with a class token */
    int n_embd_text;   /* projector output width = text model's n_embd */
    int n_tokens_out;  /* embeddings per tile after the projector */
} vision_hparams;

typedef struct vision_model vision_model;

/* Reads hparams and tensors from an mmproj file and allocates the scratch for
 * one tile. f is borrowed and must outlive the model (weights point into its
 * mapping). Owned, free with vision_free. Any thread; the result is used by one
 * thread at a time. */
int vision_load(const gguf_file *f, vision_model **out, glimpse_err *err);
void vision_free(vision_model *vm);

/* Borrowed, valid until vision_free. */
const vision_hparams *vision_get_hparams(const vision_model *vm);

/* Encodes one tile and projects it into the text space.
 *   tile: planar normalised pixels [3][S][S] (image.h's preprocessing output)
 *   out:  [n_tokens_out][n_embd_text]
 * Runs on tp; the caller must be the only user of vm (its scratch). */
void vision_encode(vision_model *vm, threadpool *tp, const float *tile, float *out);

/* One tile in parts, so that a caller can do other work between them (the
 * scheduler decodes running streams between the layers of a tile): runs ViT
 * layers [layer_from, layer_to), 0 <= layer_from <= layer_to <= n_layer_run;
 * layer_from == 0 first embeds tile (read only then), layer_to == n_layer_run
 * finishes into out (written only then). The tile's activations stay in vm
 * between parts, so one tile at a time: a part starting at 0, or a
 * vision_encode, drops an unfinished tile. The result is bit for bit
 * vision_encode's however the layers are split. */
void vision_encode_part(vision_model *vm, threadpool *tp, const float *tile, int layer_from, int layer_to,
                        float *out);

/* The ViT output rows [n_pos][n_embd] of the last vision_encode (before the
 * projector), for tests and debugging. Borrowed, overwritten by the next encode. */
const float *vision_last_hidden(const vision_model *vm);

#endif /* GLIMPSE_VISION_H */
