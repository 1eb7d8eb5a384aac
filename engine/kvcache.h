/*
 * kvcache.h — the key/value cache: a pool of fixed-size blocks shared by
 * sequences, each sequence mapping its positions to blocks through a block
 * table (paged attention's layout).
 *
 * Today one sequence uses it, with all its blocks reserved up front, but the
 * layout is already the paged one so that a scheduler can run many sequences
 * over one pool: a position is addressed as (sequence, position) and never as
 * an offset into one contiguous array.
 *
 * Rows are stored as F16 by default, like llama.cpp (spec §2.5): keys after
 * RoPE and values are rounded to half when stored. F32 rows are available for
 * exact comparisons with a float32 reference.
 *
 * Memory: the whole pool and all block tables are allocated by
 * kv_cache_create; nothing afterwards allocates.
 *
 * Thread rule: sequence management (open/close/reserve) is done by one thread
 * (the engine thread) between forward passes. During a pass, kv_store and the
 * row readers may run on many threads as long as no two write the same
 * (layer, sequence, position).
 */
#ifndef GLIMPSE_KVCACHE_H
#define GLIMPSE_KVCACHE_H

#include "internal.h"

typedef struct kv_cache kv_cache;

enum kv_type {
    KV_F16 = 0, /* llama.cpp's default */
    KV_F32 = 1,
};

typedef struct kv_params {
    int n_layer;
    int row_len;      /* n_head_kv * head_dim: elements of one K (or V) row */
    int type;         /* enum kv_type */
    int block_size;   /* positions per block */
    int n_blocks;     /* blocks in the pool */
    int max_seqs;     /* sequences that may be open at once */
    int max_seq_len;  /* positions one sequence may hold (sizes its block table) */
} kv_params;

/* Allocates the pool (n_layer * n_blocks * block_size rows of K and of V) and
 * the block tables. Owned, free with kv_cache_free. */
int kv_cache_create(const kv_params *p, kv_cache **out, glimpse_err *err);
void kv_cache_free(kv_cache *kv);

const kv_params *kv_cache_params(const kv_cache *kv);
/* Blocks not owned by any sequence. */
int kv_cache_free_blocks(const kv_cache *kv);

/* Opens an empty sequence; *seq is its id in [0, max_seqs).
 * GLIMPSE_ELIMIT when max_seqs are open. */
int kv_seq_open(kv_cache *kv, int *seq, glimpse_err *err);
/* Returns the sequence's blocks to the pool. Closing a closed id is a no-op. */
void kv_seq_close(kv_cache *kv, int seq);
/* Makes positions [0, n_pos) of seq addressable, taking blocks from the pool
 * as needed. GLIMPSE_ELIMIT when the pool or the block table is exhausted
 * (nothing is taken then). */
int kv_seq_reserve(kv_cache *kv, int seq, int64_t n_pos, glimpse_err *err);
/* Drops positions >= n_pos (their blocks go back to the pool), so that a
 * sequence can be reused for a new prompt. */
void kv_seq_truncate(kv_cache *kv, int seq, int64_t n_pos);
/* Positions currently addressable: a multiple of block_size. */
int64_t kv_seq_capacity(const kv_cache *kv, int seq);

/* Stores the K and V rows ([row_len] f32 each) of (layer, seq, pos), converting
 * to the cache type. pos must be below kv_seq_capacity. */
void kv_store(kv_cache *kv, int layer, int seq, int64_t pos, const float *k, const float *v);

/* Borrowed pointers to the stored rows ([row_len] of the cache type: uint16_t
 * halves or floats), valid until the position is dropped. */
const void *kv_k_row(const kv_cache *kv, int layer, int seq, int64_t pos);
const void *kv_v_row(const kv_cache *kv, int layer, int seq, int64_t pos);

/* 65536 floats indexed by a half's bits: attention widens F16 rows with it
 * (a load instead of a bit-manipulating conversion per element). Built once
 * by the first kv_cache_create; borrowed, valid for the process. */
const float *kv_half_table(void);

#endif /* GLIMPSE_KVCACHE_H */
