/*
 * model.h — the text model (llama architecture, spec §2) read from a GGUF,
 * and the glimpse_model that wires it to the tokenizer, the KV cache, the
 * decoder and the thread pool.
 *
 * The split follows llama2.c: text_config is the blueprint (hyper-parameters),
 * text_weights are borrowed views into the read-only mapping of the file, and
 * everything the forward pass writes lives in the decoder (decoder.h) and the
 * KV cache (kvcache.h), allocated once at load.
 */
#ifndef GLIMPSE_MODEL_H
#define GLIMPSE_MODEL_H

#include "fusion.h"
#include "gguf.h"
#include "image.h"
#include "kernels/kernels.h"

#include <pthread.h>

/* Hyper-parameters of a llama text model (spec §2.1). */
typedef struct text_config {
    int n_vocab;      /* length of tokenizer.ggml.tokens (= token_embd ne1) */
    int n_embd;       /* width of the residual stream */
    int n_layer;
    int n_head;       /* query heads */
    int n_head_kv;    /* key/value heads; n_head % n_head_kv == 0 (GQA) */
    int head_dim;     /* d: attention.key_length, default n_embd / n_head */
    int n_ff;         /* SwiGLU hidden width */
    int n_ctx_train;  /* informational */
    float rms_eps;
    float rope_base;
} text_config;

/* One transformer block. Every field is borrowed from the mapped file; shapes
 * are ggml ne (ne0 contiguous), d = head_dim. Biases are NULL when absent. */
typedef struct text_layer {
    const float *attn_norm;   /* [n_embd] */
    const tensor *wq;         /* [n_embd, n_head*d], rows pre-permuted for adjacent-pair RoPE */
    const tensor *wk;         /* [n_embd, n_head_kv*d], likewise */
    const tensor *wv;         /* [n_embd, n_head_kv*d] */
    const tensor *wo;         /* [n_head*d, n_embd] */
    const float *bq;          /* [n_head*d] or NULL */
    const float *bk;          /* [n_head_kv*d] or NULL */
    const float *bv;          /* [n_head_kv*d] or NULL */
    const float *bo;          /* [n_embd] or NULL */
    const float *ffn_norm;    /* [n_embd] */
    const tensor *ffn_gate;   /* [n_embd, n_ff] */
    const tensor *ffn_up;     /* [n_embd, n_ff] */
    const tensor *ffn_down;   /* [n_ff, n_embd] */
    /* Where the kernels pack them (kn_packed_add_rows): wq, wk, wv as one
     * matrix of their rows one after the other, and ffn_gate, ffn_up so, each
     * one product; the decoder then does not read the four above. NULL
     * otherwise. */
    const tensor *wqkv;       /* [n_embd, (n_head + 2 n_head_kv)*d] */
    const tensor *ffn_gate_up; /* [n_embd, 2 n_ff] */
} text_layer;

typedef struct text_weights {
    const tensor *token_embd;   /* [n_embd, n_vocab] */
    text_layer *layers;         /* [n_layer], owned array of borrowed views */
    const float *output_norm;   /* [n_embd] */
    const tensor *output;       /* [n_embd, n_vocab]; == token_embd when tied (unless packed) */
    bool tied;                  /* output.weight absent in the file */
    kn_packed packed;           /* owned copies (kn_packed_add_rows) some views above point to */
} text_weights;

typedef struct text_model {
    const gguf_file *file;      /* borrowed: must outlive the model */
    text_config cfg;
    text_weights w;
} text_model;

/* Reads the hyper-parameters and tensor views of a llama text model from f
 * with llama.cpp's rules: exact key types, defaults, exact tensor shapes, tied
 * output when output.weight is absent. On failure nothing is left allocated
 * and err names the key or tensor (with expected and found shape).
 * Any thread. Release with text_model_release. */
int text_model_load(const gguf_file *f, text_model *m, glimpse_err *err);
void text_model_release(text_model *m);

/* ---- the public model object --------------------------------------------- */

struct tokenizer;
struct kv_cache;
struct decoder;
struct threadpool;
struct sampler_scratch;
struct scheduler;

struct glimpse_model {
    gguf_file *file;                 /* owned: the text GGUF mapping */
    text_model text;
    struct tokenizer *tok;           /* owned */
    struct threadpool *tp;           /* owned: the one compute pool */
    struct kv_cache *kv;             /* owned */
    struct decoder *dec;             /* owned */
    struct sampler_scratch *scratch; /* owned: sampling working memory [n_vocab] (engine thread) */
    struct scheduler *sched;         /* owned: the engine thread and its queue */
    int tmpl;                        /* enum chat_template (template.h) */
    int n_ctx;                       /* positions one sequence may hold */
    int n_batch;                     /* entries per forward pass (the step's token budget) */
    int n_parallel;                  /* sequences run together */
    int n_threads;
    /* vision, when an mmproj is loaded (all NULL otherwise) */
    gguf_file *mmproj_file;          /* owned: the mmproj GGUF mapping */
    struct vision_model *vision;     /* owned */
    image_pp_params pp;              /* how images are preprocessed for it */
    char *piece;                     /* [piece_cap] one token's text from the detokenizer (engine thread) */
    size_t piece_cap;
    char *out;                       /* [out_cap] text released by one token (piece + held back) */
    size_t out_cap;
    char name[128];                  /* general.name or the file's base name */
    double load_ms;
};

#endif /* GLIMPSE_MODEL_H */
