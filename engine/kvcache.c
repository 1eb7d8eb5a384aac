/*
 * kvcache.c — block pool, per-sequence block tables, reference counts and the
 * prefix cache (hash index + LRU list of evictable blocks).
 *
 * Layout of the pool:
 *   v[layer][head][block][slot][row_len / n_head]   (elements of the cache type)
 *   k[layer][head][block][row_len / n_head][slot]   (transposed)
 * A sequence's position p lives in block table[seq][p / block_size], slot
 * p % block_size. One head's keys or values in a block are one contiguous
 * run, and the same head's next block follows it: the attention of a KV
 * head reads a sequence's blocks, which the free stack hands out in order,
 * as one stream that the hardware prefetchers follow (8 streams at 1100
 * positions, Q8_0 256M / 500M models, medians of 3 alternating runs: decode
 * steps of 8.85 / 19.5 ms against 11.9 / 23.5 with all heads of a block
 * together, [layer][block][head]; that was 17.9-18.4 / 33.2-34.5 against
 * 21.8-23.1 / 42.2-42.5 with whole rows per slot, sessions earlier). Keys
 * are transposed so that one load gives element i of all the block's keys
 * (kn_attn_kv).
 *
 * A block is in exactly one of three states:
 *   held       ref > 0 (in some tables), maybe registered;
 *   evictable  ref == 0 and registered: on the LRU list, still findable;
 *   free       ref == 0, not registered: on the free stack.
 * Everything is arrays sized at creation; no operation allocates.
 */
#include "kvcache.h"

#include "kernels/kernels.h"

#include "tensor.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct kv_cache {
    kv_params p;
    size_t elem_size;      /* 2 (F16) or 4 (F32) */
    size_t head_bytes;     /* row_len / n_head * elem_size: one head of one slot */
    size_t head_block;     /* block_size * head_bytes: one head of one block */
    size_t head_plane;     /* n_blocks * head_block: one head of one layer */
    size_t layer_bytes;    /* n_head * head_plane */
    unsigned char *k;      /* [n_layer][n_head][n_blocks][row_len / n_head][block_size] */
    unsigned char *v;      /* [n_layer][n_head][n_blocks][block_size][row_len / n_head] */
    int *free_list;        /* [n_blocks] stack of free block ids */
    int n_free;
    int *tables;           /* [max_seqs][max_blocks_per_seq] block ids */
    int *n_seq_blocks;     /* [max_seqs] blocks held, -1 when the sequence is closed */
    int max_blocks_per_seq;
    /* per block */
    int *ref;              /* [n_blocks] tables holding it */
    bool *registered;      /* [n_blocks] in the hash index */
    uint64_t *hash;        /* [n_blocks] its hash when registered */
    int *hnext;            /* [n_blocks] next block of the same index bucket, -1 ends */
    int *lru_prev, *lru_next; /* [n_blocks] evictable list links, -1 ends */
    int lru_head, lru_tail;   /* least / most recently released */
    int n_evictable;
    int n_registered;
    int *buckets;          /* [n_buckets] first block of each bucket, -1 empty */
    size_t n_buckets;      /* a power of two >= 2 * n_blocks */
    uint64_t queries, hits, evictions;
};

static float half_table[65536];
static pthread_once_t half_once = PTHREAD_ONCE_INIT;

static void half_table_init(void)
{
    for (uint32_t i = 0; i < 65536; i++)
        half_table[i] = fp16_to_f32((uint16_t)i);
}

const float *kv_half_table(void)
{
    pthread_once(&half_once, half_table_init);
    return half_table;
}

int kv_cache_create(const kv_params *p, kv_cache **out, glimpse_err *err)
{
    kv_cache *kv = NULL;
    int rc;
    *out = NULL;
    if (p->n_layer < 1 || p->row_len < 1 || p->n_head < 1 || p->row_len % p->n_head != 0 || p->block_size < 1 ||
        p->n_blocks < 1 ||
        p->max_seqs < 1 || p->max_seq_len < 1 || (p->type != KV_F16 && p->type != KV_F32))
        return err_set(err, GLIMPSE_EINVAL, "kv cache: invalid parameters");
    kv_half_table();

    kv = calloc(1, sizeof *kv);
    if (!kv)
        goto oom;
    kv->p = *p;
    kv->elem_size = p->type == KV_F16 ? 2 : 4;
    kv->max_blocks_per_seq = (p->max_seq_len + p->block_size - 1) / p->block_size;
    size_t total;
    kv->head_bytes = (size_t)(p->row_len / p->n_head) * kv->elem_size;
    if (!size_mul(kv->head_bytes, (size_t)p->block_size, &kv->head_block) ||
        !size_mul(kv->head_block, (size_t)p->n_blocks, &kv->head_plane) ||
        !size_mul(kv->head_plane, (size_t)p->n_head, &kv->layer_bytes) ||
        !size_mul(kv->layer_bytes, (size_t)p->n_layer, &total)) {
        rc = err_set(err, GLIMPSE_ELIMIT, "kv cache: size overflows");
        goto fail;
    }
    /* 4 KB pages (not alloc_huge): a pool's resident memory grows with the
     * blocks in use. On huge pages every head's plane of every layer would
     * take 2 MB at the first request, the whole pool of the server's
     * default (~360 MB for SmolVLM-256M at 4 x 4096 positions, against ~26
     * MB for one image prompt), for 6-10 % at long contexts (8 streams at
     * 1100 positions, Q8_0 256M / 500M, F16 256M, medians of 3 alternating
     * runs: 6.97 / 14.4 / 10.0 ms a step against 7.40 / 15.9 / 11.2) and
     * ~1 % at 64-80 positions. */
    kv->k = malloc(total);
    kv->v = malloc(total);
    kv->free_list = malloc((size_t)p->n_blocks * sizeof *kv->free_list);
    kv->tables = malloc((size_t)p->max_seqs * (size_t)kv->max_blocks_per_seq * sizeof *kv->tables);
    kv->n_seq_blocks = malloc((size_t)p->max_seqs * sizeof *kv->n_seq_blocks);
    size_t nb = (size_t)p->n_blocks;
    kv->n_buckets = 16;
    while (kv->n_buckets < 2 * nb)
        kv->n_buckets *= 2;
    kv->ref = calloc(nb, sizeof *kv->ref);
    kv->registered = calloc(nb, sizeof *kv->registered);
    kv->hash = calloc(nb, sizeof *kv->hash);
    kv->hnext = malloc(nb * sizeof *kv->hnext);
    kv->lru_prev = malloc(nb * sizeof *kv->lru_prev);
    kv->lru_next = malloc(nb * sizeof *kv->lru_next);
    kv->buckets = malloc(kv->n_buckets * sizeof *kv->buckets);
    if (!kv->k || !kv->v || !kv->free_list || !kv->tables || !kv->n_seq_blocks || !kv->ref || !kv->registered ||
        !kv->hash || !kv->hnext || !kv->lru_prev || !kv->lru_next || !kv->buckets)
        goto oom;
    /* Resident from the start, as llama.cpp clears its KV buffer at load: the
     * prefix cache keeps released blocks and take_block uses never-touched
     * free ones first, so the pool would otherwise become resident block by
     * block over hours of traffic, an RSS creep up to its size that looks
     * like a leak (found by bench/soak.py). A byte per 4 KiB through a
     * volatile pointer: GCC turns malloc plus a zeroing memset into calloc,
     * which touches nothing. */
    for (size_t i = 0; i < total; i += 4096) {
        ((volatile unsigned char *)kv->k)[i] = 0;
        ((volatile unsigned char *)kv->v)[i] = 0;
    }
    for (size_t i = 0; i < kv->n_buckets; i++)
        kv->buckets[i] = -1;
    kv->lru_head = kv->lru_tail = -1;
    /* Hand out low block ids first: a lone sequence then gets a contiguous,
     * ascending run, which keeps its rows in order in memory. */
    for (int i = 0; i < p->n_blocks; i++)
        kv->free_list[i] = p->n_blocks - 1 - i;
    kv->n_free = p->n_blocks;
    for (int s = 0; s < p->max_seqs; s++)
        kv->n_seq_blocks[s] = -1;
    *out = kv;
    return 0;

oom:
    rc = err_set(err, GLIMPSE_ENOMEM, "kv cache: out of memory (%d layers, %d blocks of %d x %d)",
                 p->n_layer, p->n_blocks, p->block_size, p->row_len);
fail:
    kv_cache_free(kv);
    return rc;
}

void kv_cache_free(kv_cache *kv)
{
    if (!kv)
        return;
    free(kv->k);
    free(kv->v);
    free(kv->free_list);
    free(kv->tables);
    free(kv->n_seq_blocks);
    free(kv->ref);
    free(kv->registered);
    free(kv->hash);
    free(kv->hnext);
    free(kv->lru_prev);
    free(kv->lru_next);
    free(kv->buckets);
    free(kv);
}

const kv_params *kv_cache_params(const kv_cache *kv) { return &kv->p; }

int kv_cache_free_blocks(const kv_cache *kv) { return kv->n_free + kv->n_evictable; }

/* ---- block states ------------------------------------------------------------ */

static void lru_unlink(kv_cache *kv, int b)
{
    int p = kv->lru_prev[b], n = kv->lru_next[b];
    if (p >= 0)
        kv->lru_next[p] = n;
    else
        kv->lru_head = n;
    if (n >= 0)
        kv->lru_prev[n] = p;
    else
        kv->lru_tail = p;
    kv->n_evictable--;
}

static void lru_push_tail(kv_cache *kv, int b)
{
    kv->lru_prev[b] = kv->lru_tail;
    kv->lru_next[b] = -1;
    if (kv->lru_tail >= 0)
        kv->lru_next[kv->lru_tail] = b;
    else
        kv->lru_head = b;
    kv->lru_tail = b;
    kv->n_evictable++;
}

static size_t bucket_of(const kv_cache *kv, uint64_t h) { return (size_t)(h & (kv->n_buckets - 1)); }

static int index_find(const kv_cache *kv, uint64_t h)
{
    for (int b = kv->buckets[bucket_of(kv, h)]; b >= 0; b = kv->hnext[b])
        if (kv->hash[b] == h)
            return b;
    return -1;
}

static void index_remove(kv_cache *kv, int b)
{
    int *link = &kv->buckets[bucket_of(kv, kv->hash[b])];
    while (*link != b)
        link = &kv->hnext[*link];
    *link = kv->hnext[b];
    kv->registered[b] = false;
    kv->n_registered--;
}

/* A block for new rows: a free one, else the least recently released cached
 * one, which leaves the cache. The caller checked that one exists. */
static int take_block(kv_cache *kv)
{
    int b;
    if (kv->n_free > 0) {
        b = kv->free_list[--kv->n_free];
    } else {
        b = kv->lru_head;
        lru_unlink(kv, b);
        index_remove(kv, b);
        kv->evictions++;
    }
    kv->ref[b] = 1;
    return b;
}

static void drop_ref(kv_cache *kv, int b)
{
    if (--kv->ref[b] > 0)
        return;
    if (kv->registered[b])
        lru_push_tail(kv, b);
    else
        kv->free_list[kv->n_free++] = b;
}

int kv_seq_open(kv_cache *kv, int *seq, glimpse_err *err)
{
    for (int s = 0; s < kv->p.max_seqs; s++) {
        if (kv->n_seq_blocks[s] < 0) {
            kv->n_seq_blocks[s] = 0;
            *seq = s;
            return 0;
        }
    }
    return err_set(err, GLIMPSE_ELIMIT, "kv cache: all %d sequences are in use", kv->p.max_seqs);
}

void kv_seq_close(kv_cache *kv, int seq)
{
    if (seq < 0 || seq >= kv->p.max_seqs || kv->n_seq_blocks[seq] < 0)
        return;
    kv_seq_truncate(kv, seq, 0);
    kv->n_seq_blocks[seq] = -1;
}

int kv_seq_reserve(kv_cache *kv, int seq, int64_t n_pos, glimpse_err *err)
{
    if (seq < 0 || seq >= kv->p.max_seqs || kv->n_seq_blocks[seq] < 0)
        return err_set(err, GLIMPSE_EINVAL, "kv cache: sequence %d is not open", seq);
    if (n_pos < 0 || n_pos > (int64_t)kv->max_blocks_per_seq * kv->p.block_size)
        return err_set(err, GLIMPSE_ELIMIT, "kv cache: %lld positions exceed the context of %d",
                       (long long)n_pos, kv->p.max_seq_len);
    int need = (int)((n_pos + kv->p.block_size - 1) / kv->p.block_size);
    int have = kv->n_seq_blocks[seq];
    if (need <= have)
        return 0;
    if (need - have > kv_cache_free_blocks(kv))
        return err_set(err, GLIMPSE_ELIMIT, "kv cache: %d more blocks needed, %d free",
                       need - have, kv_cache_free_blocks(kv));
    int *table = kv->tables + (size_t)seq * (size_t)kv->max_blocks_per_seq;
    for (int b = have; b < need; b++)
        table[b] = take_block(kv);
    /* The new blocks in the order of their place in the pool: the prefix
     * cache evicts a sequence's blocks last first, and in order a head's
     * blocks are one stream for the attention (layout above). 8 streams at
     * 1100 positions on blocks the cache evicted, Q8_0 256M, 2 runs: 9.1-9.2
     * ms a step, 11.2-11.8 in the evicted order (8.5-9.5 on fresh blocks).
     * Insertion sort: they come in runs. */
    for (int b = have + 1; b < need; b++) {
        const int id = table[b];
        int i = b;
        for (; i > have && table[i - 1] > id; i--)
            table[i] = table[i - 1];
        table[i] = id;
    }
    kv->n_seq_blocks[seq] = need;
    return 0;
}

void kv_seq_truncate(kv_cache *kv, int seq, int64_t n_pos)
{
    if (seq < 0 || seq >= kv->p.max_seqs || kv->n_seq_blocks[seq] < 0 || n_pos < 0)
        return;
    int keep = (int)((n_pos + kv->p.block_size - 1) / kv->p.block_size);
    int *table = kv->tables + (size_t)seq * (size_t)kv->max_blocks_per_seq;
    /* Release in reverse so that the next reserve takes free ones back in order. */
    for (int b = kv->n_seq_blocks[seq] - 1; b >= keep; b--)
        drop_ref(kv, table[b]);
    if (keep < kv->n_seq_blocks[seq])
        kv->n_seq_blocks[seq] = keep;
}

int64_t kv_seq_capacity(const kv_cache *kv, int seq)
{
    if (seq < 0 || seq >= kv->p.max_seqs || kv->n_seq_blocks[seq] < 0)
        return 0;
    return (int64_t)kv->n_seq_blocks[seq] * kv->p.block_size;
}

/* ---- prefix cache -------------------------------------------------------------- */

/* splitmix64's finaliser: every input bit moves every output bit. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t kv_block_hash(uint64_t parent, const uint64_t *keys, int n_keys)
{
    uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < n_keys; i++)
        h = mix64(h ^ mix64(keys[i] + (uint64_t)i));
    /* 0 means "no parent": keep it out of the range of real hashes. */
    return h ? h : 1;
}

int kv_seq_attach_prefix(kv_cache *kv, int seq, const uint64_t *hashes, int n)
{
    if (seq < 0 || seq >= kv->p.max_seqs || kv->n_seq_blocks[seq] != 0)
        return 0;
    int *table = kv->tables + (size_t)seq * (size_t)kv->max_blocks_per_seq;
    int got = 0;
    if (n > kv->max_blocks_per_seq)
        n = kv->max_blocks_per_seq;
    for (; got < n; got++) {
        kv->queries++;
        int b = index_find(kv, hashes[got]);
        if (b < 0)
            break;
        kv->hits++;
        if (kv->ref[b]++ == 0)
            lru_unlink(kv, b);
        table[got] = b;
    }
    kv->n_seq_blocks[seq] = got;
    return got;
}

void kv_seq_commit_block(kv_cache *kv, int seq, int block, uint64_t hash)
{
    if (seq < 0 || seq >= kv->p.max_seqs || block < 0 || block >= kv->n_seq_blocks[seq])
        return;
    int b = kv->tables[(size_t)seq * (size_t)kv->max_blocks_per_seq + (size_t)block];
    if (kv->registered[b] || index_find(kv, hash) >= 0)
        return;
    kv->hash[b] = hash;
    kv->registered[b] = true;
    kv->n_registered++;
    size_t i = bucket_of(kv, hash);
    kv->hnext[b] = kv->buckets[i];
    kv->buckets[i] = b;
}

void kv_cache_stats(const kv_cache *kv, kv_stats *out)
{
    *out = (kv_stats){
        .n_blocks = kv->p.n_blocks,
        .n_used = kv->p.n_blocks - kv->n_free - kv->n_evictable,
        .n_cached = kv->n_registered,
        .n_evictable = kv->n_evictable,
        .queries = kv->queries,
        .hits = kv->hits,
        .evictions = kv->evictions,
    };
}

/* Byte offset of head 0's part of the block holding (layer, seq, pos)
 * inside k or v; head h's is h * head_plane further. */
static size_t block_offset(const kv_cache *kv, int layer, int seq, int64_t pos)
{
    const int *table = kv->tables + (size_t)seq * (size_t)kv->max_blocks_per_seq;
    const size_t block = (size_t)table[pos / kv->p.block_size];
    return (size_t)layer * kv->layer_bytes + block * kv->head_block;
}

void kv_store(kv_cache *kv, int layer, int seq, int64_t pos, const float *k, const float *v)
{
    const size_t off = block_offset(kv, layer, seq, pos), stride = kv->head_plane;
    const size_t bs = (size_t)kv->p.block_size, slot = (size_t)(pos % kv->p.block_size);
    const int n = kv->p.row_len / kv->p.n_head;
    for (int h = 0; h < kv->p.n_head; h++) {
        unsigned char *kd = kv->k + off + (size_t)h * stride, *vd = kv->v + off + (size_t)h * stride;
        const float *ks = k + (size_t)h * n, *vs = v + (size_t)h * n;
        /* keys transposed: element i of the slot at i * bs + slot (kvcache.h) */
        if (kv->p.type == KV_F32) {
            for (int i = 0; i < n; i++)
                ((float *)(void *)kd)[(size_t)i * bs + slot] = ks[i];
            memcpy(vd + slot * kv->head_bytes, vs, kv->head_bytes);
            continue;
        }
        /* F16C's conversion where the CPU has it (kn_to_half): the scalar
         * one was ~1 % of a decode step of 8 streams */
        uint16_t *kh = (uint16_t *)(void *)kd, half[64];
        kn_to_half(vs, (uint16_t *)(void *)(vd + slot * kv->head_bytes), n);
        for (int i0 = 0; i0 < n; i0 += 64) {
            const int m = n - i0 < 64 ? n - i0 : 64;
            kn_to_half(ks + i0, half, m);
            for (int i = 0; i < m; i++)
                kh[(size_t)(i0 + i) * bs + slot] = half[i];
        }
    }
}

const void *kv_k_block(const kv_cache *kv, int layer, int seq, int64_t pos, int head)
{
    return kv->k + block_offset(kv, layer, seq, pos) + (size_t)head * kv->head_plane;
}

const void *kv_v_block(const kv_cache *kv, int layer, int seq, int64_t pos, int head)
{
    return kv->v + block_offset(kv, layer, seq, pos) + (size_t)head * kv->head_plane;
}
