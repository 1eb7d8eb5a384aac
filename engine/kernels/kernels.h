/*
 * kernels.h — the math of the engine: matrix products over every weight type,
 * norms, RoPE, activations, softmax.
 *
 * Each kernel has a scalar reference (kernels_ref.c) and SIMD versions picked
 * at run time by CPU feature (kernels_avx2.c, ...); tests/unit/check_kernels.c
 * compares them on awkward sizes. Matrix products run on the caller's thread
 * pool; the rest are per-row and single-threaded (callers split rows).
 *
 * Shapes: a weight W has ne = [k, n] (row o = k contiguous values, ggml order);
 * activations are row-major [n_tok][k] f32.
 *
 * Numerics follow llama.cpp's CPU backend (gguf-vlm-spec.md §1.4, §2.4, §8):
 * activation quantisation before matmul, double sums in the norms, f32
 * incremental RoPE angles, fp16-table GELU.
 *
 * Thread rules: kernels_init and kernels_reserve at start-up, before any
 * other call; kn_matmul from one thread at a time (it uses a process-wide
 * scratch and runs on the given pool); the per-row kernels from any thread.
 */
#ifndef GLIMPSE_KERNELS_H
#define GLIMPSE_KERNELS_H

#include "../tensor.h"
#include "../threadpool.h"

/* Selects SIMD implementations for this CPU; idempotent, call at start-up.
 * GLIMPSE_KERNELS=scalar in the environment forces the reference kernels.
 * Also sets OpenBLAS to one thread per call: sgemm (here and in callers) runs
 * inside our pool's threads, which must not each spawn BLAS threads. */
void kernels_init(void);
/* Name of the selected ISA path ("avx2", "scalar", ...). */
const char *kernels_isa(void);

/* Scratch that matmul needs for activation conversion (4 bytes per element):
 * call at start-up with the largest n_tok*k (elements) that will be
 * multiplied, so that kn_matmul allocates nothing afterwards. Only grows;
 * several callers (decoder, vision) may each reserve their own maximum. */
int kernels_reserve(int64_t max_act_elems, glimpse_err *err);

/* Whether kn_matmul accepts weights of this type with rows of k elements
 * (k a positive multiple of the type's block and of its activation block).
 * Model loaders check every weight with it. */
bool kn_matmul_supports(int wtype, int64_t k);

/* y[t][o] = sum_i W[o][i] * x[t][i], t < n_tok, o < W->ne[1]; x is [n_tok][W->ne[0]],
 * y is [n_tok][W->ne[1]] (must not alias x). W must pass kn_matmul_supports.
 * Activations are converted to the weight type's vec_dot_type first
 * (F32 / F16 / BF16 / Q8_0 / Q8_1 for Q4_1,Q5_1 / Q8_K for K-quants), as
 * llama.cpp's CPU backend does. On the AVX2 table (no AVX-512), batches of
 * F32/F16/BF16 weights go to OpenBLAS sgemm (same rounding of the
 * activations, f32 sums in another order); elsewhere this is
 * kn_matmul_invariant. Allocates nothing; more tokens than kernels_reserve
 * allowed for are processed in several passes. */
void kn_matmul(threadpool *tp, const tensor *w, const float *x, int64_t n_tok, float *y);

/* kn_matmul without the sgemm path: every output row is the weight rows' dot
 * products with its own activation row, each summed in an order fixed by k
 * alone (a tile's every output equals the one-token dot bit for bit,
 * kernels_tile.h). So a row's result does not depend on n_tok or on the
 * other rows: the scheduler's batch invariance rests on this. sgemm is not used because its result for a
 * row may change with the number of rows (kernel choice, blocking), and the
 * dot/sgemm switch at BLAS_MIN_TOK_* would change it for sure. */
void kn_matmul_invariant(threadpool *tp, const tensor *w, const float *x, int64_t n_tok, float *y);

/* Writes rows [lo, hi) of a product's input x; a row's values may depend on
 * that row alone (any split of the rows gives the same x). */
typedef void (*kn_rows_fn)(void *arg, int64_t lo, int64_t hi);

/* prep(arg, ...) over the n_tok rows of x, then kn_matmul_invariant: each
 * pool thread converts the rows it has just written, in one pool run (a
 * round trip less per product, and the rows still in cache). */
void kn_matmul_invariant_prep(threadpool *tp, kn_rows_fn prep, void *arg, const tensor *w, const float *x,
                              int64_t n_tok, float *y);

/* The packed copies of weights a model owns (kn_packed_add_rows), carved
 * out of a few large chunks. */
typedef struct kn_packed {
    int n;                 /* matrices */
    unsigned char **chunk;
    int n_chunk;
    size_t used, size;     /* of the last chunk */
} kn_packed;

/* One matrix of the rows of w[0..n-1] one after the other (the same type
 * and row width: matrices that multiply the same activations, which one
 * product then does), in the layout the selected kernels multiply fastest,
 * made once at load and passed to kn_matmul* in place of the w (the same
 * results, bit for bit across batch sizes as ever): Q8_0, Q4_0 and Q5_0
 * matrices of a multiple of 16 rows on AVX-512 VNNI, and F16 ones on
 * AVX-512, are packed (DTYPE_*_R16, as many bytes in another order), other
 * F32/F16/BF16 rows copied as they are (n > 1 only). Recorded in set and
 * returned in *out. Not for token lookups: nothing dequantises a packed
 * row. Returns 1, or 0 (*out untouched) when the kernels have no such
 * layout for them, or an error (GLIMPSE_ENOMEM). */
int kn_packed_add_rows(kn_packed *set, const tensor *const *w, int n, const tensor **out, glimpse_err *err);
/* Frees the copies (the views pointing at them die with them); set may be
 * zeroed or used again. */
void kn_packed_free(kn_packed *set);

/* y = x / sqrt(mean(x^2) + eps) * w  (sum of squares in double, like ggml). y may be x. */
void kn_rms_norm(const float *x, const float *w, int64_t n, float eps, float *y);
/* kn_rms_norm of n_rows rows, as kn_layer_norm_rows. */
void kn_rms_norm_rows(const float *x, size_t x_stride, const float *w, int64_t n, float eps, float *y,
                      size_t y_stride, int64_t n_rows);
/* y = (x - mean) / sqrt(var + eps) * w + b, biased variance, w and b may be
 * NULL, for n_rows rows, x + r * x_stride to y + r * y_stride (strides in
 * floats): the same bits as the one-row kernel per row, several rows' sums at
 * once where the ISA allows. The y rows may be the x rows (y == x, same stride). */
void kn_layer_norm_rows(const float *x, size_t x_stride, const float *w, const float *b, int64_t n, float eps, float *y,
                        size_t y_stride, int64_t n_rows);
/* Adjacent-pair ("normal", ggml mode 0) RoPE of x [n_heads][head_dim] at pos:
 * pair (2i, 2i+1) turns by θ_i = pos·base^(-2i/head_dim), θ built as ggml does. */
void kn_rope(float *x, int n_heads, int head_dim, int64_t pos, float freq_base);
/* y[i] = silu(g[i]) * u[i]; y may be g. */
void kn_swiglu(float *y, const float *g, const float *u, int64_t n);
/* GELU, tanh approximation, and quick-GELU z*sigmoid(1.702 z), in place, through
 * ggml's fp16 lookup tables (input and output rounded to half; tanh-GELU is 0
 * below -10 and the identity above 10), as llama.cpp's CPU backend computes them. */
void kn_gelu(float *x, int64_t n);
void kn_gelu_quick(float *x, int64_t n);
/* y[i] += b[i] for each of n_tok rows of n. */
void kn_add_bias(float *y, const float *b, int64_t n_tok, int64_t n);
/* y[i] = x[i] rounded to half (nearest even, F16C's rounding: f32_to_fp16's). */
void kn_to_half(const float *x, uint16_t *y, int64_t n);
/* Dot product of two f32 vectors. */
float kn_dot_f32(const float *a, const float *b, int64_t n);

/* ---- fused attention ----------------------------------------------------------- */

/* Keys per step of the online softmax. Every query walks its own keys in
 * blocks of KN_ATTN_BLOCK from key 0, whatever else is in the call, so a
 * query's output does not depend on the other queries (batch invariance). */
#define KN_ATTN_BLOCK 16

/* One head's keys and values in blocks of KN_ATTN_BLOCK positions, the
 * paged KV cache's blocks: ceil(n / KN_ATTN_BLOCK) of each, K and V both
 * DTYPE_F32 or both DTYPE_F16, every block whole. A key block is
 * transposed, element t of its key j at k[b][t * KN_ATTN_BLOCK + j], so
 * that one load gives dimension t of all its keys; a value block holds its
 * rows, element t of value j at v[b][j * head_dim + t]. The slots of the
 * last block past n may hold anything (NaN included): they never reach a
 * result. */
typedef struct kn_attn_kv {
    int type;
    int head_dim;
    int64_t n;
    const void *const *k;   /* key blocks, [head_dim][KN_ATTN_BLOCK] values each */
    const void *const *v;   /* value blocks, [KN_ATTN_BLOCK][head_dim] values each */
} kn_attn_kv;

/* Floats of scratch kn_attention needs for n_q queries of head_dim d. */
size_t kn_attention_scratch(int n_q, int head_dim);

/* Softmax attention of n_q query rows over one head's keys, fused: one pass
 * over the keys with a running max and sum (online softmax), no score matrix:
 *   o_i = sum_{j < n_i} p_ij v_j,   p_i = softmax_j(scale * q_i . k_j)
 * n_i = n_keys[i] (causal attention: the query's position + 1), or kv->n for
 * every query when n_keys is NULL; 1 <= n_i <= kv->n. Query i is read at
 * q + i*q_stride, its output written at out + i*out_stride (head_dim floats).
 * With F16 keys the queries are rounded to half first, as llama.cpp converts
 * Q to K's type; products and sums are f32, the probabilities are not
 * rounded. scratch: kn_attention_scratch(n_q, head_dim) floats. Any thread. */
void kn_attention(const kn_attn_kv *kv, const float *q, size_t q_stride, int n_q, const int64_t *n_keys,
                  float scale, float *out, size_t out_stride, float *scratch);

/* Queries kn_attention_dense computes side by side (one per vector lane),
 * and the keys whose weighted values it sums before adding them to a
 * query's output (two-level sums: less rounding over long rows). */
#define KN_ATTN_DENSE_QUERIES 32
#define KN_ATTN_DENSE_VBLOCK 64

/* Floats of scratch kn_attention_dense needs for n keys of head_dim d (any
 * n_q): KN_ATTN_DENSE_QUERIES rows of n scores, and as many of 2*d. */
size_t kn_attention_dense_scratch(int64_t n, int head_dim);

/* Bidirectional softmax attention of n_q queries over all n keys of one
 * head, f32 rows (the vision encoder's), fused:
 *   o_i = sum_{j < n} p_ij v_j,   p_i = softmax_j(scale * q_i . k_j)
 * Query i at q + i*q_stride, key and value j at k + j*kv_stride and
 * v + j*kv_stride, output i at out + i*out_stride; head_dim floats each,
 * n >= 1. Queries are taken KN_ATTN_DENSE_QUERIES at a time, one per vector
 * lane: one pass over the keys fills their rows of scores (never the n x n
 * matrix), the softmax runs on those rows as the kernel tables' does (max-subtracted,
 * sum in double, times the f32 reciprocal: ggml's soft_max, so the
 * probabilities are rounded as llama.cpp's non-flash attention rounds them),
 * and one pass over the values sums p_ij v_j in key order (in blocks of
 * KN_ATTN_DENSE_VBLOCK). Each key and value
 * is read once per 32 queries; no operation mixes two queries, so a query's
 * output does not depend on n_q or on the other queries.
 * scratch: kn_attention_dense_scratch(n, head_dim) floats. Any thread. */
void kn_attention_dense(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                        size_t kv_stride, int64_t n, int head_dim, float scale, float *out, size_t out_stride,
                        float *scratch);

#endif /* GLIMPSE_KERNELS_H */
