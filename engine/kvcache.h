/*
 * kvcache.h — the key/value cache: a pool of fixed-size blocks shared by
 * sequences, each sequence mapping its positions to blocks through a block
 * table (paged attention's layout). A position is addressed as (sequence,
 * position), never as an offset into one contiguous array.
 *
 * Blocks are reference-counted: a block may sit in the tables of several
 * sequences at once. That is how the prefix cache works: a full block whose
 * rows have been computed is registered under a hash that chains the hash of
 * the block before it with the keys of its own positions (token ids, or an
 * image's content hash and row), so equal hashes mean equal prefixes. A new
 * sequence attaches the longest chain of registered blocks that its own
 * hashes find, and computes only what follows. Registered blocks that no
 * sequence holds stay in the cache and are evicted least-recently-used when
 * the pool runs out of never-registered free blocks.
 *
 * Shared blocks are read-only by contract: a sequence only writes positions
 * at or after its attached prefix, and only full blocks are ever shared.
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
 * block readers may run on many threads as long as no two write the same
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
    int n_head;       /* heads per row (n_head_kv): row_len / n_head elements each */
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
/* Blocks no sequence holds: free ones plus cached ones that may be evicted. */
int kv_cache_free_blocks(const kv_cache *kv);

/* Opens an empty sequence; *seq is its id in [0, max_seqs).
 * GLIMPSE_ELIMIT when max_seqs are open. */
int kv_seq_open(kv_cache *kv, int *seq, glimpse_err *err);
/* Drops the sequence's references to its blocks (registered ones stay cached
 * until evicted) and closes it. Closing a closed id is a no-op. */
void kv_seq_close(kv_cache *kv, int seq);
/* Makes positions [0, n_pos) of seq addressable, taking blocks from the pool
 * as needed: never-registered free blocks first, then the least recently
 * released cached ones (which leave the cache). GLIMPSE_ELIMIT when the pool
 * or the block table is exhausted (nothing is taken then). */
int kv_seq_reserve(kv_cache *kv, int seq, int64_t n_pos, glimpse_err *err);
/* Drops positions >= n_pos (the sequence's references to their blocks), so
 * that a sequence can be reused for a new prompt. */
void kv_seq_truncate(kv_cache *kv, int seq, int64_t n_pos);
/* Positions currently addressable: a multiple of block_size. */
int64_t kv_seq_capacity(const kv_cache *kv, int seq);

/* Stores the K and V rows ([row_len] f32 each) of (layer, seq, pos), converting
 * to the cache type. pos must be below kv_seq_capacity. */
void kv_store(kv_cache *kv, int layer, int seq, int64_t pos, const float *k, const float *v);

/* Borrowed pointers to head `head`'s keys or values in the block holding
 * position pos of seq, valid until the block is dropped: block_size
 * positions of row_len / n_head elements of the cache type (uint16_t halves
 * or floats) each. Values are rows, element i of slot s at
 * [s * row_len / n_head + i]; keys are transposed, element i of slot s at
 * [i * block_size + s], so that attention loads element i of all the
 * block's keys at once (kn_attn_kv). Slot s holds position
 * pos - pos % block_size + s. */
const void *kv_k_block(const kv_cache *kv, int layer, int seq, int64_t pos, int head);
const void *kv_v_block(const kv_cache *kv, int layer, int seq, int64_t pos, int head);
/* ---- prefix cache ------------------------------------------------------- */

/* The hash of a full block: parent is the previous block's hash (0 for the
 * first block), keys[block_size] the keys of its positions. 64-bit; a
 * collision would splice another prefix's rows in, at odds of about
 * n_blocks^2 / 2^64. Any thread. */
uint64_t kv_block_hash(uint64_t parent, const uint64_t *keys, int n_keys);

/* Attaches to the empty sequence seq the registered blocks of hashes[0..n)
 * in order, stopping at the first hash not in the cache; each attached block
 * gains a reference (leaving the evictable list if it was there). Returns the
 * number of blocks attached (its positions are computed). Counts one prefix
 * query per hash looked up and one hit per block attached. */
int kv_seq_attach_prefix(kv_cache *kv, int seq, const uint64_t *hashes, int n);

/* Registers block index `block` of seq (which must be full and computed)
 * under hash. Nothing happens when the block is registered already or when
 * another block holds that hash (two sequences computed the same prefix at
 * once: the first stays the cached one). */
void kv_seq_commit_block(kv_cache *kv, int seq, int block, uint64_t hash);

typedef struct kv_stats {
    int n_blocks;           /* pool size */
    int n_used;             /* held by at least one sequence */
    int n_cached;           /* registered in the prefix cache (held or not) */
    int n_evictable;        /* registered and held by no sequence */
    uint64_t queries;       /* block hashes looked up by kv_seq_attach_prefix */
    uint64_t hits;          /* blocks attached by it */
    uint64_t evictions;     /* registered blocks reused for other rows */
} kv_stats;

void kv_cache_stats(const kv_cache *kv, kv_stats *out);

/* 65536 floats indexed by a half's bits: attention widens F16 rows with it
 * (a load instead of a bit-manipulating conversion per element). Built once
 * by the first kv_cache_create; borrowed, valid for the process. */
const float *kv_half_table(void);

#endif /* GLIMPSE_KVCACHE_H */
