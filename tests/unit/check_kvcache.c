/*
 * check_kvcache.c — the shared paged KV pool: block allocation, reference
 * counts, the prefix cache's hash chains, LRU eviction, and what closing
 * (cancelling) a sequence gives back. Expected values are worked out by hand
 * from the contract in kvcache.h.
 */
#include "kvcache.h"

#include "testutil.h"

enum { B = 4 }; /* positions per block in these tests */

static kv_cache *make(int n_blocks, int max_seqs)
{
    kv_params kp = { .n_layer = 2, .row_len = 3, .n_head = 1, .type = KV_F32, .block_size = B, .n_blocks = n_blocks,
                     .max_seqs = max_seqs, .max_seq_len = 64 };
    kv_cache *kv;
    glimpse_err err = { 0 };
    ck_assert_msg(kv_cache_create(&kp, &kv, &err) == 0, "%s", err.msg);
    return kv;
}

/* Hash chain of n blocks whose position keys are base + position. */
static void chain(uint64_t base, int n, uint64_t *h)
{
    uint64_t keys[B];
    for (int b = 0; b < n; b++) {
        for (int i = 0; i < B; i++)
            keys[i] = base + (uint64_t)(b * B + i);
        h[b] = kv_block_hash(b ? h[b - 1] : 0, keys, B);
    }
}

/* Writes a recognisable row at every position of seq [0, n). */
static void fill(kv_cache *kv, int seq, int n, float tag)
{
    for (int p = 0; p < n; p++) {
        float k[3] = { tag, (float)p, 1 }, v[3] = { -tag, (float)p, 2 };
        for (int l = 0; l < 2; l++)
            kv_store(kv, l, seq, p, k, v);
    }
}

/* Element 0 of position p's key: slot p % B of its block (keys are transposed). */
static float k0(kv_cache *kv, int seq, int p) { return ((const float *)kv_k_block(kv, 1, seq, p, 0))[p % B]; }

START_TEST(hash_chain_depends_on_all_of_the_prefix)
{
    uint64_t a[3], b[3], keys[B] = { 1, 2, 3, 4 };
    chain(100, 3, a);
    chain(100, 3, b);
    ck_assert(a[0] == b[0] && a[2] == b[2]);
    /* same block content after a different parent: another hash */
    ck_assert(kv_block_hash(a[0], keys, B) != kv_block_hash(a[1], keys, B));
    ck_assert(kv_block_hash(0, keys, B) != 0);
    /* one key changed in block 0 changes every later hash */
    keys[3] = 5;
    uint64_t c0 = kv_block_hash(0, keys, B);
    ck_assert(c0 != kv_block_hash(0, (uint64_t[B]){ 1, 2, 3, 4 }, B));
    /* order of keys matters */
    ck_assert(kv_block_hash(0, (uint64_t[B]){ 1, 2, 4, 3 }, B) != kv_block_hash(0, (uint64_t[B]){ 1, 2, 3, 4 }, B));
}
END_TEST

START_TEST(allocation_and_close_return_blocks)
{
    kv_cache *kv = make(6, 3);
    glimpse_err err = { 0 };
    int a, b;
    ck_assert_int_eq(kv_seq_open(kv, &a, &err), 0);
    ck_assert_int_eq(kv_seq_open(kv, &b, &err), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, a, 9, &err), 0); /* 3 blocks */
    ck_assert_int_eq(kv_seq_reserve(kv, b, 12, &err), 0); /* 3 blocks */
    ck_assert_int_eq(kv_cache_free_blocks(kv), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, b, 13, &err), GLIMPSE_ELIMIT);
    ck_assert_int_eq(kv_seq_capacity(kv, b), 12);
    kv_stats st;
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.n_used, 6);
    /* cancelling a sequence (close) gives every block back */
    kv_seq_close(kv, a);
    ck_assert_int_eq(kv_cache_free_blocks(kv), 3);
    ck_assert_int_eq(kv_seq_reserve(kv, b, 24, &err), 0);
    ck_assert_int_eq(kv_cache_free_blocks(kv), 0);
    kv_seq_close(kv, b);
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.n_used, 0);
    ck_assert_int_eq(st.n_cached, 0);
    ck_assert_int_eq(kv_cache_free_blocks(kv), 6);
    kv_cache_free(kv);
}
END_TEST

START_TEST(prefix_shared_by_reference)
{
    kv_cache *kv = make(8, 3);
    glimpse_err err = { 0 };
    uint64_t h[3];
    chain(7, 3, h);
    int a, b, c;
    ck_assert_int_eq(kv_seq_open(kv, &a, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, a, h, 3), 0); /* empty cache */
    ck_assert_int_eq(kv_seq_reserve(kv, a, 10, &err), 0); /* blocks 0..2, block 2 partial */
    fill(kv, a, 10, 1.0f);
    kv_seq_commit_block(kv, a, 0, h[0]);
    kv_seq_commit_block(kv, a, 1, h[1]);

    /* b finds a's two full blocks while a still holds them */
    ck_assert_int_eq(kv_seq_open(kv, &b, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, b, h, 3), 2);
    ck_assert_int_eq(kv_seq_capacity(kv, b), 8);
    for (int p = 0; p < 8; p++)
        ck_assert(kv_k_block(kv, 1, b, p, 0) == kv_k_block(kv, 1, a, p, 0)); /* the same blocks, not copies */
    ck_assert_int_eq(kv_cache_free_blocks(kv), 5);              /* nothing new taken */
    ck_assert_int_eq(kv_seq_reserve(kv, b, 10, &err), 0);      /* its own third block */
    ck_assert(kv_k_block(kv, 1, b, 8, 0) != kv_k_block(kv, 1, a, 8, 0));
    kv_stats st;
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.n_used, 4);
    ck_assert_int_eq(st.queries, 1 + 3); /* lookups stop at the first miss */
    ck_assert_int_eq(st.hits, 2);

    /* a leaves (cancelled): the shared blocks live on in b */
    kv_seq_close(kv, a);
    ck_assert_int_eq(kv_cache_free_blocks(kv), 8 - 3);
    ck_assert_float_eq(k0(kv, b, 5), 1.0f);

    /* b leaves too: the registered blocks stay findable but evictable */
    kv_seq_close(kv, b);
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.n_used, 0);
    ck_assert_int_eq(st.n_cached, 2);
    ck_assert_int_eq(st.n_evictable, 2);
    ck_assert_int_eq(kv_cache_free_blocks(kv), 8);
    ck_assert_int_eq(kv_seq_open(kv, &c, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, c, h, 3), 2);
    ck_assert_float_eq(k0(kv, c, 7), 1.0f);
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.n_evictable, 0);
    /* a different first block: nothing matches, even with equal later keys */
    uint64_t other[3];
    chain(8, 3, other);
    int d;
    ck_assert_int_eq(kv_seq_open(kv, &d, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, d, other, 3), 0);
    /* attaching only works on an empty sequence */
    ck_assert_int_eq(kv_seq_reserve(kv, d, 1, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, d, h, 3), 0);
    kv_cache_free(kv);
}
END_TEST

START_TEST(lru_eviction_order)
{
    /* 4 blocks; three one-block prefixes cached in order x, y, z. */
    kv_cache *kv = make(4, 2);
    glimpse_err err = { 0 };
    uint64_t hx, hy, hz;
    chain(1000, 1, &hx);
    chain(2000, 1, &hy);
    chain(3000, 1, &hz);
    const uint64_t hs[3] = { hx, hy, hz };
    for (int i = 0; i < 3; i++) {
        int s;
        ck_assert_int_eq(kv_seq_open(kv, &s, &err), 0);
        ck_assert_int_eq(kv_seq_reserve(kv, s, B, &err), 0);
        fill(kv, s, B, (float)(i + 1));
        kv_seq_commit_block(kv, s, 0, hs[i]);
        kv_seq_close(kv, s);
    }
    kv_stats st;
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.n_cached, 3);
    ck_assert_int_eq(kv_cache_free_blocks(kv), 4);

    /* x is used again: it becomes the most recently released */
    int s;
    ck_assert_int_eq(kv_seq_open(kv, &s, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, s, &hx, 1), 1);
    kv_seq_close(kv, s);

    /* 2 new blocks: the never-cached free one, then the LRU one (y) */
    ck_assert_int_eq(kv_seq_open(kv, &s, &err), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, s, 2 * B, &err), 0);
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.evictions, 1);
    ck_assert_int_eq(st.n_cached, 2);
    int t;
    ck_assert_int_eq(kv_seq_open(kv, &t, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, t, &hy, 1), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, t, &hz, 1), 1);
    ck_assert_float_eq(k0(kv, t, 0), 3.0f);
    kv_seq_close(kv, t);
    ck_assert_int_eq(kv_seq_open(kv, &t, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, t, &hx, 1), 1);
    ck_assert_float_eq(k0(kv, t, 0), 1.0f);
    /* a held cached block is never evicted: 4 blocks = s's 2 + x held + z */
    ck_assert_int_eq(kv_seq_reserve(kv, s, 3 * B, &err), 0); /* takes z */
    ck_assert_int_eq(kv_seq_reserve(kv, s, 4 * B, &err), GLIMPSE_ELIMIT);
    ck_assert_float_eq(k0(kv, t, 0), 1.0f);
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.evictions, 2);
    ck_assert_int_eq(st.n_cached, 1);
    kv_cache_free(kv);
}
END_TEST

/* A reserve's new blocks lie in the pool in position order, whatever order
 * the free stack and the prefix cache hand them out in (a sequence's cached
 * blocks are evicted last first): the attention streams them. */
START_TEST(new_blocks_in_pool_order)
{
    kv_cache *kv = make(6, 2);
    glimpse_err err = { 0 };
    uint64_t h[4];
    chain(1000, 4, h);
    int s, t;
    ck_assert_int_eq(kv_seq_open(kv, &s, &err), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, s, 4 * B, &err), 0);
    for (int b = 0; b < 4; b++)
        kv_seq_commit_block(kv, s, b, h[b]);
    kv_seq_close(kv, s);
    ck_assert_int_eq(kv_seq_open(kv, &t, &err), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, t, 6 * B, &err), 0); /* the 2 free blocks, then the 4 cached */
    kv_stats st;
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.evictions, 4);
    for (int b = 1; b < 6; b++)
        ck_assert((const char *)kv_k_block(kv, 0, t, b * B, 0) > (const char *)kv_k_block(kv, 0, t, (b - 1) * B, 0));
    kv_cache_free(kv);
}
END_TEST

START_TEST(commit_keeps_the_first_copy)
{
    /* Two sequences computed the same block at once: the first registered
     * copy is the cached one, the second is freed on close. */
    kv_cache *kv = make(4, 2);
    glimpse_err err = { 0 };
    uint64_t h;
    chain(5, 1, &h);
    int a, b;
    ck_assert_int_eq(kv_seq_open(kv, &a, &err), 0);
    ck_assert_int_eq(kv_seq_open(kv, &b, &err), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, a, B, &err), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, b, B, &err), 0);
    fill(kv, a, B, 1.0f);
    fill(kv, b, B, 2.0f);
    kv_seq_commit_block(kv, a, 0, h);
    kv_seq_commit_block(kv, b, 0, h);
    kv_seq_commit_block(kv, a, 0, h); /* twice: no-op */
    kv_seq_commit_block(kv, a, 5, h); /* out of range: no-op */
    kv_seq_close(kv, a);
    kv_seq_close(kv, b);
    kv_stats st;
    kv_cache_stats(kv, &st);
    ck_assert_int_eq(st.n_cached, 1);
    ck_assert_int_eq(st.n_evictable, 1);
    ck_assert_int_eq(kv_seq_open(kv, &a, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, a, &h, 1), 1);
    ck_assert_float_eq(k0(kv, a, 2), 1.0f);
    kv_cache_free(kv);
}
END_TEST

START_TEST(truncate_drops_references_only)
{
    kv_cache *kv = make(6, 2);
    glimpse_err err = { 0 };
    uint64_t h[2];
    chain(9, 2, h);
    int a, b;
    ck_assert_int_eq(kv_seq_open(kv, &a, &err), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, a, 2 * B, &err), 0);
    fill(kv, a, 2 * B, 4.0f);
    kv_seq_commit_block(kv, a, 0, h[0]);
    kv_seq_commit_block(kv, a, 1, h[1]);
    ck_assert_int_eq(kv_seq_open(kv, &b, &err), 0);
    ck_assert_int_eq(kv_seq_attach_prefix(kv, b, h, 2), 2);
    kv_seq_truncate(kv, a, B); /* a drops block 1; b still holds it */
    ck_assert_int_eq(kv_seq_capacity(kv, a), B);
    ck_assert_float_eq(k0(kv, b, 6), 4.0f);
    ck_assert_int_eq(kv_cache_free_blocks(kv), 4);
    kv_seq_close(kv, b); /* block 1 now unheld: evictable */
    ck_assert_int_eq(kv_cache_free_blocks(kv), 5);
    kv_cache_free(kv);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kvcache");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, hash_chain_depends_on_all_of_the_prefix);
    tcase_add_test(tc, allocation_and_close_return_blocks);
    tcase_add_test(tc, prefix_shared_by_reference);
    tcase_add_test(tc, lru_eviction_order);
    tcase_add_test(tc, new_blocks_in_pool_order);
    tcase_add_test(tc, commit_keeps_the_first_copy);
    tcase_add_test(tc, truncate_drops_references_only);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(suite());
}
