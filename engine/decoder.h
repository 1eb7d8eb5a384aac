/*
 * decoder.h — the forward pass of the llama text model (spec §2.4) over a
 * batch of positions, with the KV cache.
 *
 * A batch is a list of entries (sequence, position, token id or embedding
 * vector, whether logits are wanted). Entries may belong to different
 * sequences; entries of one sequence must come in increasing position order
 * and every earlier position of that sequence must already be in the cache
 * or earlier in the batch (attention is causal over the sequence's positions).
 * Prefill is a batch of many positions of one sequence, decoding one entry
 * per running sequence.
 *
 * An entry carries either a token id (its row of token_embd is looked up) or
 * a caller's embedding vector of n_embd floats: the fusion block splices image
 * embeddings into the sequence that way (spec §5.4).
 *
 * Memory: all scratch is allocated by decoder_create for n_batch entries and
 * n_out logit rows; a forward pass allocates nothing.
 * Thread rule: one thread at a time per decoder; the pass itself runs on the
 * thread pool given at creation.
 */
#ifndef GLIMPSE_DECODER_H
#define GLIMPSE_DECODER_H

#include "kvcache.h"
#include "model.h"
#include "threadpool.h"

typedef struct dec_entry {
    int seq;              /* KV cache sequence id */
    int64_t pos;          /* position in the sequence (RoPE angle and cache slot) */
    int32_t token;        /* token id, used when embd is NULL */
    const float *embd;    /* [n_embd] input vector instead of a token, or NULL; borrowed for the call */
    bool logits;          /* compute this position's logits */
} dec_entry;

typedef struct decoder decoder;

/* n_batch: entries per pass; n_out: entries per pass that may ask for logits.
 * m, kv and tp are borrowed and must outlive the decoder; kv's rows must be
 * n_head_kv * head_dim long and its max_seq_len bounds positions.
 * Owned, free with decoder_free. */
int decoder_create(const text_model *m, kv_cache *kv, threadpool *tp, int n_batch, int n_out,
                   decoder **out, glimpse_err *err);
void decoder_free(decoder *d);

/* Runs the model over n entries (1 <= n <= n_batch, at most n_out with
 * logits), storing their K/V rows in the cache. Validates every entry (token
 * range, sequence open, position reserved) before touching any state. */
int decoder_forward(decoder *d, const dec_entry *batch, int n, glimpse_err *err);

/* Logits [n_vocab] of the i-th entry of the last pass that asked for logits
 * (i counts only those entries). Borrowed, valid until the next pass. */
const float *decoder_logits(const decoder *d, int i);

#endif /* GLIMPSE_DECODER_H */
