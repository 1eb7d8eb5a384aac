/*
 * kernels_impl.h — private to engine/kernels/ and its test: the table of
 * kernel implementations for one ISA, and the activation formats of matmul.
 *
 * kernels.c picks one table at kernels_init (the scalar reference, or a SIMD
 * table that starts as a copy of it and overrides what it speeds up), so every
 * entry is always valid. check_kernels.c runs two tables side by side.
 */
#ifndef GLIMPSE_KERNELS_IMPL_H
#define GLIMPSE_KERNELS_IMPL_H

#include "kernels.h"

/* What matmul converts f32 activations to before the dot products: ggml's
 * vec_dot_type of the weight type (ggml-cpu.c: type_traits_cpu). Note that
 * Q4_1 and Q5_1 pair with Q8_1 (which carries d·Σq for the weight minimum),
 * not with Q8_0. F16 and BF16 rows are kept as f32 values rounded to half /
 * bfloat (4 bytes each): the same numbers as llama.cpp's half rows, widened
 * once per row instead of once per weight row that meets them. */
enum kn_act {
    KN_ACT_F32,
    KN_ACT_F16,
    KN_ACT_BF16,
    KN_ACT_Q8_0,
    KN_ACT_Q8_1,
    KN_ACT_Q8_K,
    KN_ACT_Q8_0X,
    KN_ACT_COUNT
};

/* ggml's block_q8_1: the activation partner of Q4_1/Q5_1. s = d * Σ qs,
 * stored as half, lets the dot product add the weight minimum in one step. */
typedef struct block_q8_1 {
    uint16_t d;     /* half */
    uint16_t s;     /* half: d * sum(qs) */
    int8_t qs[32];
} block_q8_1;

/* Weight type ids stay below this bound (BF16 = 30, the packed types 31-34). */
#define KN_MAX_DTYPE 35

/* The packed types (DTYPE_Q8_0_R16, _Q4_0_R16, _Q5_0_R16): Q8_0 / Q4_0 /
 * Q5_0 weights repacked at load (kn_packed_add_rows) for vpdpbusd, so that one
 * instruction takes 4 quants of 16 rows against 4 activation quants
 * broadcast, and the 16 row sums stay in the lanes of one register (no
 * horizontal sums; a 16-row group is read front to back). Rows go in
 * groups of KN_R16 (the matrix has a multiple of it); group g takes the
 * bytes of its rows in the original matrix, from g * KN_R16 * (row bytes),
 * and in it block b (elements 32b..32b+31) of the 16 rows is
 *   - their 16 half scales d (at kn_r16_scales);
 *   - their quants as unsigned bytes (at kn_r16_body), the value being the
 *     byte minus kn_r16_offset: Q8_0 for i = 0..7 the 16 rows' quants
 *     4i..4i+3 plus 128 (64 bytes each); Q4_0 and Q5_0 for i = 0..3 the 16
 *     rows' bytes 4i..4i+3 of qs (low nibbles elements 4i.., high nibbles
 *     16+4i..), Q5_0 preceded by 8 masks of 64 bits: mask h*4+i has bit
 *     4r+j set when element 16h+4i+j of row r has its 5th bit (qh).
 * The blocks go in pairs, both blocks' scales first (64 bytes), so that
 * with an even number of blocks every group, scale run and body starts on a
 * 64-byte line; an odd last block is its 32 bytes of scales, then its body.
 * Their activations are block_q8_0x.
 *
 * DTYPE_F16_R16: F16 weights in the same groups of KN_R16 rows, element i
 * of the 16 rows at halves 16i..16i+15 of the group, so that one load
 * widens element i of 16 rows; the group is the rows' bytes, read front to
 * back. Its activations are KN_ACT_F16, as for F16. */
#define KN_R16 16

/* The packed type of a weight type, or -1. */
static inline int kn_r16_type(int type)
{
    return type == DTYPE_Q8_0 ? DTYPE_Q8_0_R16 : type == DTYPE_Q4_0 ? DTYPE_Q4_0_R16
         : type == DTYPE_Q5_0 ? DTYPE_Q5_0_R16 : type == DTYPE_F16 ? DTYPE_F16_R16 : -1;
}

/* What a packed type's stored bytes exceed its quants by. */
static inline int kn_r16_offset(int type)
{
    return type == DTYPE_Q8_0_R16 ? 128 : type == DTYPE_Q4_0_R16 ? 8 : 16;
}

/* Byte offsets of block b's scales and body in a group of nb blocks of
 * blk = KN_R16 * (bytes per block of the type) bytes each. */
static inline size_t kn_r16_scales(int64_t b, size_t blk)
{
    return (size_t)(b / 2) * 2 * blk + (size_t)(b % 2) * KN_R16 * sizeof(uint16_t);
}

static inline size_t kn_r16_body(int64_t b, int64_t nb, size_t blk)
{
    const size_t pair = (size_t)(b / 2) * 2 * blk, scales = KN_R16 * sizeof(uint16_t);
    if (b % 2 == 0 && b + 1 == nb)
        return pair + scales;
    return pair + 2 * scales + (size_t)(b % 2) * (blk - scales);
}

/* The activation partner of the packed types: a Q8_0 block with its half d
 * widened and sum = Σ qs, with which the kernels take the weights' offset
 * back out of the integer block sum. */
typedef struct block_q8_0x {
    float d;
    int32_t sum;
    int8_t qs[QK8_0];
} block_q8_0x;

/* y = Σ w[i]·a[i] over one row of n elements: w a weight row of its dtype,
 * a the activation row already converted to the paired kn_act format. */
typedef float (*kn_vec_dot_fn)(int64_t n, const void *w, const void *a);
/* Converts n f32 values (a multiple of the format's block) to an act format. */
typedef void (*kn_from_float_fn)(const float *x, void *dst, int64_t n);

/* The float tiles (F32/F16/BF16) walk rows longer than KN_TILE_K_PART
 * elements in parts of at most that, keeping the accumulators of up to
 * KN_TILE_PART_TOK tokens in between (kernels_tile.h); kernels.c sizes
 * their token blocks by a part. */
#define KN_TILE_K_PART 1024
#define KN_TILE_PART_TOK 64

/* A tile of dots: y[t*y_stride + o] = the dot of weight row o (at w +
 * o*w_row bytes) with activation row t (at a + t*a_row bytes), o < n_rows,
 * t < n_tok, rows of k elements. Each (o, t) result must not depend on
 * n_rows, n_tok or the other rows, bit for bit (kn_matmul_invariant rests on
 * it): the 1 x 1 tile is the table's one-token dot. */
typedef void (*kn_tile_fn)(int64_t k, const void *w, size_t w_row, int64_t n_rows, const void *a, size_t a_row,
                           int64_t n_tok, float *y, size_t y_stride);

/* kn_attention_dense's contract (kernels.h). */
typedef void (*kn_attn_dense_fn)(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                                 size_t kv_stride, int64_t n, int head_dim, float scale, float *out,
                                 size_t out_stride, float *scratch);

typedef struct kn_impl {
    const char *isa;
    /* Large batches of F32/F16/BF16 weights go to OpenBLAS sgemm (kernels.c);
     * off in the reference so that GLIMPSE_KERNELS=scalar is all scalar. */
    bool use_blas;
    kn_from_float_fn from_float[KN_ACT_COUNT];  /* [KN_ACT_F32] unused */
    kn_vec_dot_fn vec_dot[KN_MAX_DTYPE];        /* NULL: not a weight type */
    /* Register-blocked tiles; NULL: matmul runs vec_dot one pair at a time.
     * Where set, matmul uses only the tile (also for one token). */
    kn_tile_fn tile[KN_MAX_DTYPE];
    /* dequantize_row's contract; the sgemm path widens F16/BF16 with it. */
    void (*to_f32)(int type, const void *src, float *dst, int64_t n);
    /* The per-row kernels of kernels.h, same contracts. */
    float (*dot_f32)(const float *a, const float *b, int64_t n);
    void (*rms_norm)(const float *x, const float *w, int64_t n, float eps, float *y);
    void (*rms_norm_rows)(const float *x, size_t x_stride, const float *w, int64_t n, float eps, float *y,
                          size_t y_stride, int64_t n_rows);
    void (*layer_norm)(const float *x, const float *w, const float *b, int64_t n, float eps, float *y);
    void (*layer_norm_rows)(const float *x, size_t x_stride, const float *w, const float *b, int64_t n, float eps,
                            float *y, size_t y_stride, int64_t n_rows);
    void (*rope)(float *x, int n_heads, int head_dim, int64_t pos, float freq_base);
    void (*swiglu)(float *y, const float *g, const float *u, int64_t n);
    void (*gelu)(float *x, int64_t n);
    void (*gelu_quick)(float *x, int64_t n);
    void (*softmax)(float *x, int64_t n);
    void (*add_bias)(float *y, const float *b, int64_t n_tok, int64_t n);
    void (*to_half)(const float *x, uint16_t *y, int64_t n);
    void (*attention)(const kn_attn_kv *kv, const float *q, size_t q_stride, int n_q, const int64_t *n_keys,
                      float scale, float *out, size_t out_stride, float *scratch);
    kn_attn_dense_fn attention_dense;
} kn_impl;

/* Always available. */
extern const kn_impl kn_ref_impl;
/* Builds the GELU lookup tables (once; any thread, idempotent). */
void kn_ref_init_tables(void);
/* The tanh-GELU or quick-GELU table: 65536 halves indexed by the input's half
 * bits, plus one spare entry so that 32-bit gathers stay inside. Borrowed,
 * static; built on first use. */
const uint16_t *kn_gelu_table(bool quick);
/* The AVX2+FMA table, or NULL when the CPU (or compiler) lacks AVX2/FMA/F16C.
 * Borrowed, static; built on first call (not thread-safe before kernels_init). */
const kn_impl *kn_avx2_impl(void);

/* The AVX-512 table (AVX-512F/BW/VL on top of the AVX2 table), or NULL when
 * the CPU lacks them. Borrowed, static; built on first call. */
const kn_impl *kn_avx512_impl(void);

/* The fused attention's scratch layout, shared by every table:
 * kt [head_dim][KN_ATTN_BLOCK] a block's keys and vb [KN_ATTN_BLOCK]
 * [head_dim] its values as f32 (the reference's; the AVX-512 version reads
 * the cache's blocks as they are), qc [n_q][head_dim] the queries in K's precision,
 * acc [n_q][head_dim] unnormalised outputs, m [n_q] running maxima, l [n_q]
 * running sums. */
typedef struct kn_attn_scratch {
    float *kt, *vb, *qc, *acc, *m, *l;
} kn_attn_scratch;
kn_attn_scratch kn_attn_split(float *scratch, int n_q, int head_dim);
/* The attention of the reference table and of the AVX-512 one (attention.c,
 * attention_avx512.c); the latter only valid where kn_avx512_impl is not NULL. */
void kn_attention_ref(const kn_attn_kv *kv, const float *q, size_t q_stride, int n_q, const int64_t *n_keys,
                      float scale, float *out, size_t out_stride, float *scratch);
void kn_attention_avx512(const kn_attn_kv *kv, const float *q, size_t q_stride, int n_q, const int64_t *n_keys,
                         float scale, float *out, size_t out_stride, float *scratch);
/* The dense attention of the reference table (attention.c) and of the AVX2
 * and AVX-512 ones (attention_avx2.c, attention_avx512.c), each of the
 * latter valid only where its table is not NULL. */
void kn_attention_dense_ref(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                            size_t kv_stride, int64_t n, int head_dim, float scale, float *out,
                            size_t out_stride, float *scratch);
void kn_attention_dense_avx2(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                             size_t kv_stride, int64_t n, int head_dim, float scale, float *out, size_t out_stride,
                             float *scratch);
void kn_attention_dense_avx512(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                               size_t kv_stride, int64_t n, int head_dim, float scale, float *out,
                               size_t out_stride, float *scratch);
/* Rows of the dense attention's score scratch for n keys: n rounded up to
 * a multiple of 48, so the SIMD kernels fill whole score tiles of 8 or 3
 * keys (the layout kn_attention_dense_scratch sizes). */
static inline size_t kn_attn_dense_score_rows(int64_t n)
{
    return ((size_t)n + 47) / 48 * 48;
}
/* The table kernels_init selected (borrowed, static). */
const kn_impl *kn_impl_active(void);
/* kn_packed_add_rows' packing of one matrix for a given table, the copy the
 * caller's to free() (the tests pack for each table). */
int kn_pack_weight_impl(const kn_impl *impl, const tensor *w, tensor **out, glimpse_err *err);

/* Activation format paired with a weight type, or -1 if it is not one. */
int kn_act_of(int wtype);
/* Bytes of an activation row of n elements in format act (n a multiple of the block). */
size_t kn_act_row_size(int act, int64_t n);

/* kn_matmul and kn_matmul_invariant with an explicit implementation table
 * (tests compare tables). */
void kn_matmul_impl(const kn_impl *impl, threadpool *tp, const tensor *w, const float *x,
                    int64_t n_tok, float *y);
void kn_matmul_invariant_impl(const kn_impl *impl, threadpool *tp, const tensor *w, const float *x,
                              int64_t n_tok, float *y);

#endif /* GLIMPSE_KERNELS_IMPL_H */
