/*
 * kernels.c — run-time choice of kernel implementations, and the matmul driver.
 *
 * Which path runs where:
 *   - kernels_init picks one kn_impl table for the process: the AVX-512 table
 *     (kernels_avx512.c) when the CPU has AVX-512F/BW/VL, else the AVX2+FMA
 *     table (kernels_avx2.c) when it has AVX2, FMA and F16C, else the scalar
 *     reference (kernels_ref.c). GLIMPSE_KERNELS=scalar or =avx2 caps the
 *     choice. The AVX-512 table is the AVX2 one with the F32/F16/BF16 tiles
 *     (BF16 on vdpbf16ps where the CPU has AVX512_BF16),
 *     the Q8_0/Q4_0/Q5_0/Q4_K/Q6_K tiles (with VNNI only), the fused
 *     attention and the norms of 8 rows at once (layer_norm_rows,
 *     rms_norm_rows) replaced; the other quantised tiles, the activation
 *     quantisers and the other per-row kernels are AVX2 (or reference)
 *     there too.
 *   - Q8_0/Q4_0/Q5_0 matrices of a multiple of 16 rows on AVX-512 VNNI,
 *     and F16 ones on AVX-512, are repacked at load (kn_packed_add_rows,
 *     DTYPE_*_R16: 16 rows interleaved, one row per lane) by the text and
 *     vision loaders (gguf_pack_matrix); other such matrices take the
 *     row-major tiles.
 *   - kn_matmul converts the activations to the weight type's vec_dot_type
 *     (kernels_impl.h: enum kn_act) into a scratch buffer sized once by
 *     kernels_reserve, split over the pool by token rows; then runs the
 *     table's register-blocked tile kernel (kernels_tile.h) split over the
 *     pool by output rows, in token blocks and weight-row tiles that stay in
 *     cache (dot_rows). Every output is one dot whose order depends on k
 *     alone, so kn_matmul_invariant is this path whatever the batch.
 *   - Where OpenBLAS runs: only on the AVX2 table (no AVX-512), where sgemm
 *     beats our 2 x 4 tiles: kn_matmul (never kn_matmul_invariant) sends
 *     F32/F16/BF16 weights with n_tok >= BLAS_MIN_TOK_* to sgemm,
 *     single-threaded inside each pool thread on its share of output rows;
 *     F16/BF16 weights are converted to f32 a panel at a time, the
 *     activations rounded to the weight's type first (as llama.cpp does).
 *     On AVX-512 our tiles are ~2x faster than Debian's OpenBLAS (which runs
 *     its Haswell kernels on Zen 5), so the ViT and projector run on them.
 *     Quantised weights always take the integer dot path, whose activation
 *     quantisation is part of the numerics we match (spec §8 pitfall 5).
 *   - Everything else is a per-row call straight into the table.
 */
#include "kernels_impl.h"

#include <cblas.h>

#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const kn_impl *active = &kn_ref_impl;

/* Activation scratch for kn_matmul: process-wide, grown only by kernels_reserve. */
static uint8_t *scratch;
static size_t scratch_len;

/* Bytes per reserved activation element: F32/F16/BF16 rows are f32 (4);
 * the quantised formats are smaller (Q8_0 34/32, Q8_0X 40/32, Q8_K 292/256). */
#define ACT_MAX_BYTES_PER_ELEM 4

static const struct {
    int block;       /* elements per block */
    size_t size;     /* bytes per block */
} act_formats[KN_ACT_COUNT] = {
    [KN_ACT_F32] = { 1, sizeof(float) },
    [KN_ACT_F16] = { 1, sizeof(float) },   /* f32 rounded to half */
    [KN_ACT_BF16] = { 1, sizeof(float) },  /* f32 rounded to bfloat */
    [KN_ACT_Q8_0] = { QK8_0, sizeof(block_q8_0) },
    [KN_ACT_Q8_1] = { 32, sizeof(block_q8_1) },
    [KN_ACT_Q8_K] = { QK_K, sizeof(block_q8_K) },
    [KN_ACT_Q8_0X] = { QK8_0, sizeof(block_q8_0x) },
};

int kn_act_of(int wtype)
{
    switch (wtype) {
    case DTYPE_F32: return KN_ACT_F32;
    case DTYPE_F16:
    case DTYPE_F16_R16: return KN_ACT_F16;
    case DTYPE_BF16: return KN_ACT_BF16;
    case DTYPE_Q4_0:
    case DTYPE_Q5_0:
    case DTYPE_Q8_0: return KN_ACT_Q8_0;
    case DTYPE_Q4_1:
    case DTYPE_Q5_1: return KN_ACT_Q8_1;
    case DTYPE_Q4_K:
    case DTYPE_Q5_K:
    case DTYPE_Q6_K: return KN_ACT_Q8_K;
    case DTYPE_Q8_0_R16:
    case DTYPE_Q4_0_R16:
    case DTYPE_Q5_0_R16: return KN_ACT_Q8_0X;
    default: return -1;
    }
}

size_t kn_act_row_size(int act, int64_t n)
{
    return (size_t)(n / act_formats[act].block) * act_formats[act].size;
}

bool kn_matmul_supports(int wtype, int64_t k)
{
    const dtype_info *info = dtype_get(wtype);
    int act = kn_act_of(wtype);
    return info && act >= 0 && k > 0 && k % info->block_size == 0 && k % act_formats[act].block == 0;
}

void kernels_init(void)
{
    const char *env = getenv("GLIMPSE_KERNELS");
    const kn_impl *avx2 = kn_avx2_impl(), *avx512 = kn_avx512_impl();
    kn_ref_init_tables();
    /* sgemm runs inside our pool's threads: OpenBLAS must not add its own. */
    openblas_set_num_threads(1);
    if ((env && strcmp(env, "scalar") == 0) || !avx2)
        active = &kn_ref_impl;
    else if ((env && strcmp(env, "avx2") == 0) || !avx512)
        active = avx2;
    else
        active = avx512;
}

const char *kernels_isa(void)
{
    return active->isa;
}

const kn_impl *kn_impl_active(void)
{
    return active;
}

int kernels_reserve(int64_t max_act_elems, glimpse_err *err)
{
    size_t need;
    if (max_act_elems < 0 || !size_mul((size_t)max_act_elems, ACT_MAX_BYTES_PER_ELEM, &need) ||
        need > PTRDIFF_MAX)
        return err_set(err, GLIMPSE_EINVAL, "activation scratch of %lld elements is too large",
                       (long long)max_act_elems);
    if (need <= scratch_len)
        return 0;
    uint8_t *p = realloc(scratch, need);
    if (!p)
        return err_set(err, GLIMPSE_ENOMEM, "out of memory for %zu bytes of matmul scratch", need);
    scratch = p;
    scratch_len = need;
    return 0;
}

/* ---- matmul -------------------------------------------------------------------- */

/* A pool thread's share of a matmul (whole ROW_TILEs of output rows) is
 * walked in blocks of activation rows of at most TOK_BYTES (and TOK_BLOCK
 * rows), which stay in L2 while the share's weight rows pass over them a
 * few at a time (kernels_tile.h). Measured on Zen 5, F16 weights, 2
 * threads: 128 KB blocks run k = 3072 at ~370 GFLOP/s where 64 rows (768
 * KB) ran ~200; k = 576..1536 run ~350-370 with 64 KB to 256 KB. That was
 * with whole rows; the float tiles now walk rows longer than
 * KN_TILE_K_PART in parts, and their blocks count a part's bytes: 32-40
 * rows of k = 3072 (parts of 1024 or 768) ran ~200 GFLOP/s on one core
 * where 8 whole rows ran 150 (and 156 in parts). */
#define TOK_BYTES (128 * 1024)
#define TOK_BLOCK 64
_Static_assert(TOK_BLOCK <= KN_TILE_PART_TOK, "the float tiles must be able to walk k in parts");
#define ROW_TILE 32
/* Parts per pool thread of the dot products, from PARTS_MIN_TOK tokens: on
 * a shared machine the OS runs our threads unevenly, and small parts let
 * the thread that runs take over the work of the one that does not
 * (threadpool.c). With fewer tokens a product is short and held by the
 * memory: one contiguous share per thread streams best, as every part is a
 * new stream the prefetchers must find, and parts are claimed in turn, so
 * a thread's parts are not contiguous. Measured with bench_kernels, 2
 * threads, 2 alternating runs: one token of the 256M Q8_0 model 54.8 ->
 * 61.1-61.3 GB/s in the fast memory state (74.7 -> 82.0-83.9 %), 8 streams
 * x4.96 -> x5.13-5.28, with one part per thread for every product; prefill
 * and the ViT tile then lost 6-10 % (256M Q8_0 prefill 839-847 -> 756-764
 * GFLOP/s), hence the threshold. */
#define PARTS_PER_THREAD 4
#define PARTS_MIN_TOK 32

typedef struct matmul_job {
    kn_vec_dot_fn vec_dot;
    kn_tile_fn tile;        /* may be NULL: vec_dot per pair */
    bool k_parts;           /* tile is a float tile: it walks k in parts */
    kn_from_float_fn from_float; /* NULL: the activations are x itself (F32) */
    kn_rows_fn prep;        /* NULL, or writes rows [lo, hi) of the caller's x first */
    void *prep_arg;
    int64_t t0;             /* x's first row in the caller's (prep's row numbers) */
    const uint8_t *w;       /* [n_out] rows of w_row bytes */
    size_t w_row;
    int64_t k, n_out;
    const float *x;         /* [n_tok][k] f32 */
    uint8_t *act_out;       /* conversion target: [n_tok] rows of act_row bytes */
    const uint8_t *act;     /* what the dots read: act_out, or x itself for F32 */
    size_t act_row;
    int64_t n_tok;
    float *y;               /* [n_tok][n_out] */
} matmul_job;

static void convert_rows(void *p, int ith, int nth)
{
    matmul_job *j = p;
    int64_t lo, hi;
    threadpool_split(j->n_tok, ith, nth, &lo, &hi);
    if (j->prep && hi > lo)
        j->prep(j->prep_arg, j->t0 + lo, j->t0 + hi);
    for (int64_t t = lo; t < hi && j->from_float; t++)
        j->from_float(j->x + t * j->k, j->act_out + (size_t)t * j->act_row, j->k);
}

/* Part ith of the output rows, whole ROW_TILEs (so that parts start on a
 * multiple of the micro-kernels' row count). */
static void dot_rows(void *p, int ith, int nth)
{
    matmul_job *j = p;
    int64_t lo, hi;
    threadpool_split((j->n_out + ROW_TILE - 1) / ROW_TILE, ith, nth, &lo, &hi);
    lo *= ROW_TILE;
    hi = hi * ROW_TILE < j->n_out ? hi * ROW_TILE : j->n_out;
    /* a multiple of 4 tokens, the micro-kernels' group (at least one
     * group); of rows the float tiles walk in parts, a part's bytes count
     * (kernels_impl.h: KN_TILE_K_PART) */
    const size_t part = KN_TILE_K_PART * sizeof(float);
    const size_t row_bytes = j->k_parts && j->act_row > part ? part : j->act_row;
    int64_t tb = (int64_t)(TOK_BYTES / row_bytes) & ~(int64_t)3;
    tb = tb < 4 ? 4 : tb > TOK_BLOCK ? TOK_BLOCK : tb;
    for (int64_t t0 = 0; t0 < j->n_tok; t0 += tb) {
        const int64_t nt = j->n_tok - t0 < tb ? j->n_tok - t0 : tb;
        const uint8_t *a = j->act + (size_t)t0 * j->act_row;
        float *y = j->y + t0 * j->n_out;
        for (int64_t o0 = lo; o0 < hi; o0 += ROW_TILE) {
            const int64_t rows = hi - o0 < ROW_TILE ? hi - o0 : ROW_TILE;
            const uint8_t *w = j->w + (size_t)o0 * j->w_row;
            if (j->tile) {
                j->tile(j->k, w, j->w_row, rows, a, j->act_row, nt, y + o0, (size_t)j->n_out);
                continue;
            }
            for (int64_t t = 0; t < nt; t++)
                for (int64_t o = 0; o < rows; o++)
                    y[t * j->n_out + o0 + o] = j->vec_dot(j->k, w + (size_t)o * j->w_row, a + (size_t)t * j->act_row);
        }
    }
}

/* ---- matmul through OpenBLAS ------------------------------------------------------ */

/* Token counts from which F32 / F16,BF16 weights go to sgemm. Measured on
 * one core of a busy AMD EPYC (AVX-512) running the AVX2 table, 768x3072, best of
 * 7: f32 dots 56/31/27/53 GFLOP/s at 8/16/32/64 tokens vs sgemm 60/50/48/88;
 * f16 dots (4-token kernel) 74/40/68/77 at 16/32/64/128 vs sgemm with panel
 * widening 71/34/97/88. */
#define BLAS_MIN_TOK_F32 8
#define BLAS_MIN_TOK_HALF 48
/* Weight rows converted to f32 per sgemm call, per thread: BLAS_PANEL, or
 * down to BLAS_PANEL_MIN when many threads share a small scratch. */
#define BLAS_PANEL 64
#define BLAS_PANEL_MIN 8

typedef struct blas_job {
    const kn_impl *impl;
    const tensor *w;
    int64_t k, n_out, n_tok;
    const float *x;     /* [n_tok][k]: the caller's x (F32) or x rounded to the weight's type */
    float *panels;      /* [nth][panel][k] f32, unused for F32 weights */
    int64_t panel;      /* weight rows per panel */
    float *y;           /* [n_tok][n_out] */
} blas_job;

static void blas_rows(void *p, int ith, int nth)
{
    blas_job *j = p;
    int64_t lo, hi;
    threadpool_split(j->n_out, ith, nth, &lo, &hi);
    if (hi <= lo)
        return;
    if (j->w->type == DTYPE_F32) {
        const float *wf = (const float *)j->w->data + lo * j->k;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->n_tok, (int)(hi - lo), (int)j->k, 1.0f,
                    j->x, (int)j->k, wf, (int)j->k, 0.0f, j->y + lo, (int)j->n_out);
        return;
    }
    float *panel = j->panels + (size_t)ith * (size_t)j->panel * (size_t)j->k;
    for (int64_t o0 = lo; o0 < hi; o0 += j->panel) {
        int64_t rows = hi - o0 < j->panel ? hi - o0 : j->panel;
        /* rows are contiguous: one conversion of rows·k values */
        j->impl->to_f32(j->w->type, tensor_row(j->w, o0), panel, rows * j->k);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->n_tok, (int)rows, (int)j->k, 1.0f,
                    j->x, (int)j->k, panel, (int)j->k, 0.0f, j->y + o0, (int)j->n_out);
    }
}

/* The sgemm path for F32/F16/BF16 weights; false (nothing done) when the
 * reserved scratch cannot hold BLAS_MIN_TOK_HALF rounded rows plus a panel of
 * at least BLAS_PANEL_MIN rows per thread. */
static bool blas_matmul(const kn_impl *impl, threadpool *tp, const tensor *w, const float *x,
                        int64_t n_tok, float *y)
{
    const int64_t k = w->ne[0], n_out = w->ne[1];
    blas_job j = { .impl = impl, .w = w, .k = k, .n_out = n_out };
    if (w->type == DTYPE_F32) {
        j.n_tok = n_tok;
        j.x = x;
        j.y = y;
        threadpool_run(tp, blas_rows, &j);
        return true;
    }
    const int64_t cap_rows = (int64_t)(scratch_len / sizeof(float) / (size_t)k);
    const int64_t nth = threadpool_size(tp);
    j.panel = BLAS_PANEL;
    while (cap_rows - nth * j.panel < BLAS_MIN_TOK_HALF && j.panel > BLAS_PANEL_MIN)
        j.panel /= 2;
    const int64_t chunk = cap_rows - nth * j.panel;
    if (chunk < BLAS_MIN_TOK_HALF)
        return false;
    float *xr = (float *)scratch;
    j.panels = xr + (size_t)chunk * (size_t)k;
    /* x rounded to the weight's half type, as llama.cpp rounds the
     * activations of F16/BF16 matmuls (the act format is f32 rows); then
     * exact f32 products in sgemm. */
    matmul_job r = { .from_float = impl->from_float[kn_act_of(w->type)], .k = k, .act_out = scratch,
                     .act_row = (size_t)k * sizeof(float) };
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        j.n_tok = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        r.x = x + t0 * k;
        r.n_tok = j.n_tok;
        threadpool_run(tp, convert_rows, &r);
        j.x = xr;
        j.y = y + t0 * n_out;
        threadpool_run(tp, blas_rows, &j);
    }
    return true;
}

/* ---- matmul driver ------------------------------------------------------------------ */

/* prep: NULL, or (invariant products only) the rows' writer that the
 * conversion runs first (kn_matmul_invariant_prep). */
static void matmul(const kn_impl *impl, bool allow_blas, threadpool *tp, const tensor *w, const float *x,
                   int64_t n_tok, float *y, kn_rows_fn prep, void *prep_arg)
{
    const int64_t k = w->ne[0], n_out = w->ne[1];
    const int act = kn_act_of(w->type);
    assert(kn_matmul_supports(w->type, k) && (impl->vec_dot[w->type] || impl->tile[w->type]));
    assert(!prep || !allow_blas);

    /* cblas takes int dimensions */
    const int64_t blas_min = act == KN_ACT_F32 ? BLAS_MIN_TOK_F32 : BLAS_MIN_TOK_HALF;
    const bool blas_ok = allow_blas && impl->use_blas && n_tok >= blas_min && n_tok <= INT_MAX && k <= INT_MAX &&
                         n_out <= INT_MAX && (act == KN_ACT_F32 || act == KN_ACT_F16 || act == KN_ACT_BF16);
    if (blas_ok && blas_matmul(impl, tp, w, x, n_tok, y))
        return;

    matmul_job j = {
        .vec_dot = impl->vec_dot[w->type],
        .tile = impl->tile[w->type],
        .k_parts = impl->tile[w->type] && (act == KN_ACT_F32 || act == KN_ACT_F16 || act == KN_ACT_BF16),
        .from_float = act == KN_ACT_F32 ? NULL : impl->from_float[act],
        .prep = prep,
        .prep_arg = prep_arg,
        .w = w->data,
        .w_row = dtype_row_size(w->type, k),
        .k = k,
        .n_out = n_out,
        .act_row = kn_act_row_size(act, k),
    };

    /* Tokens per pass: all of them for F32 weights (no conversion), else as
     * many converted rows as the reserved scratch holds. */
    int64_t chunk = n_tok;
    if (act != KN_ACT_F32) {
        chunk = (int64_t)(scratch_len / j.act_row);
        if (chunk == 0) {
            /* kernels_reserve was not called with enough: a programming error,
             * made loud rather than written past the buffer. */
            LOG_ERROR("kn_matmul: %s needs %zu bytes of scratch per token, %zu reserved",
                      w->name ? w->name : "weight", j.act_row, scratch_len);
            assert(!"kernels_reserve too small");
            for (int64_t i = 0; i < n_tok * n_out; i++)
                y[i] = NAN;
            return;
        }
    }

    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        j.n_tok = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        j.t0 = t0;
        j.x = x + t0 * k;
        j.y = y + t0 * n_out;
        j.act_out = act == KN_ACT_F32 ? NULL : scratch;
        j.act = act == KN_ACT_F32 ? (const uint8_t *)j.x : scratch;
        if (act != KN_ACT_F32 || prep) {
            if (j.n_tok == 1) /* the split is by tokens (decode batches: see the decoder's run_rows) */
                convert_rows(&j, 0, 1);
            else
                threadpool_run(tp, convert_rows, &j);
        }
        int64_t n_parts = (int64_t)threadpool_size(tp) * (j.n_tok >= PARTS_MIN_TOK ? PARTS_PER_THREAD : 1);
        if (n_parts > (n_out + ROW_TILE - 1) / ROW_TILE)
            n_parts = (n_out + ROW_TILE - 1) / ROW_TILE;
        threadpool_run_parts(tp, dot_rows, &j, (int)n_parts);
    }
}

/* ---- packed weights -------------------------------------------------------------- */

/* Block b (bs bytes) of row x of a Q8_0/Q4_0/Q5_0 matrix into its place in
 * a packed group (kernels_impl.h), as row r of the 16. */
static void pack_block(int type, size_t bs, const uint8_t *x, int64_t b, int64_t nb, int r, uint8_t *group)
{
    const size_t blk = KN_R16 * bs;
    const uint8_t *src = x + (size_t)b * bs;
    uint8_t *body = group + kn_r16_body(b, nb, blk);
    memcpy(group + kn_r16_scales(b, blk) + 2 * r, src, sizeof(uint16_t)); /* every block starts with d */
    if (type == DTYPE_Q8_0) {
        for (int i = 0; i < QK8_0 / 4; i++) {
            uint32_t v; /* 4 quants + 128 each: the sign bits flipped */
            memcpy(&v, ((const block_q8_0 *)src)->qs + 4 * i, sizeof v);
            v ^= 0x80808080u;
            memcpy(body + (size_t)i * 4 * KN_R16 + 4 * r, &v, sizeof v);
        }
        return;
    }
    const uint8_t *qs = type == DTYPE_Q4_0 ? ((const block_q4_0 *)src)->qs : ((const block_q5_0 *)src)->qs;
    if (type == DTYPE_Q5_0) {
        uint32_t qh;
        memcpy(&qh, ((const block_q5_0 *)src)->qh, sizeof qh);
        for (int m = 0; m < 8; m++) {
            uint64_t mask;
            memcpy(&mask, body + 8 * m, sizeof mask);
            mask |= (uint64_t)((qh >> (16 * (m / 4) + 4 * (m % 4))) & 15) << (4 * r);
            memcpy(body + 8 * m, &mask, sizeof mask);
        }
        body += 64;
    }
    for (int i = 0; i < 4; i++)
        memcpy(body + (size_t)i * 4 * KN_R16 + 4 * r, qs + 4 * i, 4);
}

/* Row r of 16 F16 rows at x (row bytes apart) into a DTYPE_F16_R16 group. */
static void pack_f16_row(const uint16_t *x, int64_t k, int r, uint16_t *group)
{
    for (int64_t i = 0; i < k; i++)
        group[i * KN_R16 + r] = x[i];
}

/* The chunks of a kn_packed: at least PACK_CHUNK bytes of huge pages
 * (alloc_huge), so that streaming the weights of a decode step does not
 * walk the page tables every 4 KB (one token, 2 threads, medians of 6
 * alternating runs: Q8_0 500M model 7.43 -> 6.87 ms, F16 256M 5.11 -> 4.89
 * with huge pages for the matrices of 2 MB or more; the chunks give them to
 * the smaller ones too). */
#define PACK_CHUNK ((size_t)32 << 20)

/* len bytes (a multiple of 64) from set's last chunk, or from a new one. */
static uint8_t *chunk_alloc(kn_packed *set, size_t len)
{
    if (set->n_chunk == 0 || set->size - set->used < len) {
        const size_t size = len > PACK_CHUNK ? len : PACK_CHUNK;
        unsigned char **c = realloc(set->chunk, (size_t)(set->n_chunk + 1) * sizeof *c);
        if (!c)
            return NULL;
        set->chunk = c;
        uint8_t *mem = alloc_huge(size);
        if (!mem)
            return NULL;
        set->chunk[set->n_chunk++] = mem;
        set->used = 0;
        set->size = size;
    }
    uint8_t *p = set->chunk[set->n_chunk - 1] + set->used;
    set->used += len;
    return p;
}

/* Packs the rows of n matrices of one type and row width, one after the
 * other, into one packed matrix (n = 1: a copy of w[0]) where the table has
 * the packed type's kernel and every matrix a multiple of KN_R16 rows;
 * otherwise F32/F16/BF16 rows are only put one after the other, for n > 1
 * (the tiles read them as they are), and *out is NULL for the rest. The
 * memory comes from set's chunks, or (set NULL) is the matrix's own
 * allocation, which the caller frees. */
static int pack_rows(const kn_impl *impl, kn_packed *set, const tensor *const *w, int n, tensor **out,
                     glimpse_err *err)
{
    *out = NULL;
    const int type = w[0]->type, r16 = kn_r16_type(type);
    bool fits = true; /* every matrix has a multiple of KN_R16 rows */
    int64_t rows = 0;
    size_t nbytes = 0;
    for (int i = 0; i < n; i++) {
        if (w[i]->type != type || w[i]->ne[0] != w[0]->ne[0] || w[i]->ne[2] != 1 || w[i]->ne[3] != 1)
            return 0;
        fits = fits && w[i]->ne[1] % KN_R16 == 0;
        rows += w[i]->ne[1];
        nbytes += w[i]->nbytes;
    }
    const bool pack = r16 >= 0 && impl->tile[r16] && fits;
    const bool plain = !pack && (type == DTYPE_F32 || type == DTYPE_F16 || type == DTYPE_BF16);
    if ((!pack && !(plain && n > 1)) || !kn_matmul_supports(type, w[0]->ne[0]))
        return 0;
    const int packed = pack ? r16 : type;
    const int64_t nb = w[0]->ne[0] / QK8_0;
    const size_t w_row = dtype_row_size(type, w[0]->ne[0]), group = KN_R16 * w_row;
    const size_t bs = (size_t)dtype_get(type)->type_size;
    const size_t head = (sizeof(tensor) + 63) / 64 * 64, len = head + (nbytes + 63) / 64 * 64;
    uint8_t *mem = set ? chunk_alloc(set, len) : aligned_alloc(64, len);
    if (!mem)
        return err_set(err, GLIMPSE_ENOMEM, "out of memory for %zu bytes to repack %s", nbytes,
                       w[0]->name ? w[0]->name : "a weight");
    if (type == DTYPE_Q5_0)
        memset(mem, 0, len); /* its masks are or-ed in, row by row */
    tensor *t = (tensor *)mem;
    uint8_t *data = mem + head;
    *t = *w[0];
    t->type = packed;
    t->ne[1] = rows;
    t->data = data;
    t->nbytes = nbytes;
    for (int i = 0; i < n; i++) {
        if (plain) {
            memcpy(data, w[i]->data, w[i]->nbytes);
            data += w[i]->nbytes;
            continue;
        }
        for (int64_t g = 0; g < w[i]->ne[1] / KN_R16; g++, data += group)
            for (int r = 0; r < KN_R16; r++)
                if (type == DTYPE_F16)
                    pack_f16_row(tensor_row(w[i], g * KN_R16 + r), w[0]->ne[0], r, (uint16_t *)data);
                else
                    for (int64_t b = 0; b < nb; b++)
                        pack_block(type, bs, tensor_row(w[i], g * KN_R16 + r), b, nb, r, data);
    }
    *out = t;
    return 0;
}

int kn_pack_weight_impl(const kn_impl *impl, const tensor *w, tensor **out, glimpse_err *err)
{
    return pack_rows(impl, NULL, &w, 1, out, err);
}

int kn_packed_add_rows(kn_packed *set, const tensor *const *w, int n, const tensor **out, glimpse_err *err)
{
    tensor *p;
    int rc = pack_rows(active, set, w, n, &p, err);
    if (rc < 0 || !p)
        return rc;
    set->n++;
    *out = p;
    return 1;
}

void kn_packed_free(kn_packed *set)
{
    for (int i = 0; i < set->n_chunk; i++)
        free(set->chunk[i]);
    free(set->chunk);
    *set = (kn_packed){ 0 };
}

void kn_matmul_impl(const kn_impl *impl, threadpool *tp, const tensor *w, const float *x,
                    int64_t n_tok, float *y)
{
    matmul(impl, true, tp, w, x, n_tok, y, NULL, NULL);
}

void kn_matmul_invariant_impl(const kn_impl *impl, threadpool *tp, const tensor *w, const float *x,
                              int64_t n_tok, float *y)
{
    matmul(impl, false, tp, w, x, n_tok, y, NULL, NULL);
}

void kn_matmul(threadpool *tp, const tensor *w, const float *x, int64_t n_tok, float *y)
{
    matmul(active, true, tp, w, x, n_tok, y, NULL, NULL);
}

void kn_matmul_invariant(threadpool *tp, const tensor *w, const float *x, int64_t n_tok, float *y)
{
    matmul(active, false, tp, w, x, n_tok, y, NULL, NULL);
}

void kn_matmul_invariant_prep(threadpool *tp, kn_rows_fn prep, void *arg, const tensor *w, const float *x,
                              int64_t n_tok, float *y)
{
    matmul(active, false, tp, w, x, n_tok, y, prep, arg);
}

/* ---- per-row kernels ------------------------------------------------------------- */

void kn_rms_norm(const float *x, const float *w, int64_t n, float eps, float *y)
{
    active->rms_norm(x, w, n, eps, y);
}

void kn_rms_norm_rows(const float *x, size_t x_stride, const float *w, int64_t n, float eps, float *y, size_t y_stride,
                      int64_t n_rows)
{
    active->rms_norm_rows(x, x_stride, w, n, eps, y, y_stride, n_rows);
}

void kn_layer_norm_rows(const float *x, size_t x_stride, const float *w, const float *b, int64_t n, float eps, float *y,
                        size_t y_stride, int64_t n_rows)
{
    active->layer_norm_rows(x, x_stride, w, b, n, eps, y, y_stride, n_rows);
}

void kn_rope(float *x, int n_heads, int head_dim, int64_t pos, float freq_base)
{
    active->rope(x, n_heads, head_dim, pos, freq_base);
}

void kn_swiglu(float *y, const float *g, const float *u, int64_t n)
{
    active->swiglu(y, g, u, n);
}

void kn_gelu(float *x, int64_t n)
{
    active->gelu(x, n);
}

void kn_gelu_quick(float *x, int64_t n)
{
    active->gelu_quick(x, n);
}

void kn_add_bias(float *y, const float *b, int64_t n_tok, int64_t n)
{
    active->add_bias(y, b, n_tok, n);
}

void kn_to_half(const float *x, uint16_t *y, int64_t n)
{
    active->to_half(x, y, n);
}

float kn_dot_f32(const float *a, const float *b, int64_t n)
{
    return active->dot_f32(a, b, n);
}
