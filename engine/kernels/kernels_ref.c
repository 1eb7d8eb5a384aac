/*
 * kernels_ref.c — scalar reference kernels: the definition of what every SIMD
 * kernel must compute.
 *
 * The dot products follow ggml's scalar vec_dot functions (ggml-cpu/quants.c,
 * vec.cpp): integer sums of quantised values within a block, times the f32
 * product of the two block scales, accumulated in f32 across blocks; F32/F16/
 * BF16 products are accumulated in double. The K-quant dots keep ggml's eight
 * f32 lane accumulators so that the summation order (hence the rounding) is
 * the same. Activations are quantised by ggml's generic (_ref) rules; the
 * AVX2 table uses llama.cpp's x86 variant of Q8_0/Q8_1 (kernels_avx2.c), so
 * the two paths can differ by one quant step in rare near-ties.
 */
#include "kernels_impl.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>

/* ---- activation conversion --------------------------------------------------- */

/* F16/BF16 activations are f32 values rounded to the weight's type
 * (enum kn_act): llama.cpp's half / bfloat rows, widened once. */
static void from_float_f16(const float *x, void *dst, int64_t n)
{
    float *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = fp16_to_f32(f32_to_fp16(x[i]));
}

static void from_float_bf16(const float *x, void *dst, int64_t n)
{
    float *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

/* ggml's quantize_row_q8_1_ref: Q8_0 rounding plus the block sum s = d·Σq. */
static void from_float_q8_1(const float *x, void *dst, int64_t n)
{
    block_q8_1 *y = dst;
    for (int64_t b = 0; b < n / 32; b++, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            y[b].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[b].qs[j];
        }
        y[b].d = f32_to_fp16(d);
        y[b].s = f32_to_fp16((float)sum * d);
    }
}

/* ---- dot products -------------------------------------------------------------- */

/* Weight i of an F32/F16/BF16 row, as f32. */
static inline float float_weight(int type, const void *w, int64_t i)
{
    switch (type) {
    case DTYPE_F16: return fp16_to_f32(((const uint16_t *)w)[i]);
    case DTYPE_BF16: return bf16_to_f32(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

/* f32 products (exact for half x half) summed in double. */
static float dot_float(int type, int64_t n, const void *w, const float *a)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(float_weight(type, w, i) * a[i]);
    return (float)sum;
}

static float dot_f32(const float *a, const float *b, int64_t n)
{
    return dot_float(DTYPE_F32, n, a, b);
}

static float vec_dot_f32(int64_t n, const void *w, const void *a)
{
    return dot_float(DTYPE_F32, n, w, a);
}

static float vec_dot_f16(int64_t n, const void *w, const void *a)
{
    return dot_float(DTYPE_F16, n, w, a);
}

static float vec_dot_bf16(int64_t n, const void *w, const void *a)
{
    return dot_float(DTYPE_BF16, n, w, a);
}

/* Block b of a row of a 32-element format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) as
 * 32 integer quants q[j] (offset removed for the signed formats), its scale
 * d and min m (0 for the formats without one). In the nibble formats byte j
 * holds elements j (low) and j+16 (high); the 5th bit of element j is bit j
 * of qh. */
static void w32_block(int type, const void *w, int64_t b, int q[32], float *d, float *m)
{
    const uint8_t *qs = NULL, *qhp = NULL;
    uint16_t dh, mh = 0;
    int offset = 0;
    switch (type) {
    case DTYPE_Q8_0: {
        const block_q8_0 *x = (const block_q8_0 *)w + b;
        for (int j = 0; j < 32; j++)
            q[j] = x->qs[j];
        *d = fp16_to_f32(x->d);
        *m = 0.0f;
        return;
    }
    case DTYPE_Q4_0: {
        const block_q4_0 *x = (const block_q4_0 *)w + b;
        dh = x->d, qs = x->qs, offset = 8;
        break;
    }
    case DTYPE_Q4_1: {
        const block_q4_1 *x = (const block_q4_1 *)w + b;
        dh = x->d, mh = x->m, qs = x->qs;
        break;
    }
    case DTYPE_Q5_0: {
        const block_q5_0 *x = (const block_q5_0 *)w + b;
        dh = x->d, qs = x->qs, qhp = x->qh, offset = 16;
        break;
    }
    case DTYPE_Q5_1:
    default: {
        const block_q5_1 *x = (const block_q5_1 *)w + b;
        dh = x->d, mh = x->m, qs = x->qs, qhp = x->qh;
        break;
    }
    }
    uint32_t qh = 0;
    if (qhp)
        memcpy(&qh, qhp, sizeof qh);
    for (int j = 0; j < 32; j++) {
        const int nib = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
        q[j] = (nib | (int)((qh >> j) & 1) << 4) - offset;
    }
    *d = fp16_to_f32(dh);
    *m = fp16_to_f32(mh);
}

/* ggml's scalar dots of the 32-element formats: the integer block sum times
 * the two scales, accumulated in f32, each format with ggml's order of the
 * float operations (which the rounding depends on). Q4_1/Q5_1 pair with Q8_1:
 * Σ (q·dx + m)(qa·da) = dx·da·Σ q·qa + m·(da·Σ qa). */
static float vec_dot_w32(int type, int64_t n, const void *w, const void *a)
{
    const bool q8_1 = type == DTYPE_Q4_1 || type == DTYPE_Q5_1;
    const size_t ablk = q8_1 ? sizeof(block_q8_1) : sizeof(block_q8_0);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *yb = (const uint8_t *)a + (size_t)b * ablk;
        /* block_q8_0 and block_q8_1 both start with the half d; qs is last */
        uint16_t dyh, syh;
        memcpy(&dyh, yb, 2);
        memcpy(&syh, yb + offsetof(block_q8_1, s), 2);
        const int8_t *qa = (const int8_t *)(yb + ablk - 32);
        int q[32], isum = 0;
        float dx, mx;
        w32_block(type, w, b, q, &dx, &mx);
        for (int j = 0; j < 32; j++)
            isum += q[j] * qa[j];
        const float dy = fp16_to_f32(dyh);
        if (type == DTYPE_Q4_0)
            sum += (float)isum * dx * dy;
        else if (q8_1)
            sum += dx * dy * (float)isum + mx * fp16_to_f32(syh);
        else
            sum += dx * dy * (float)isum;
    }
    return sum;
}

static float vec_dot_q4_0(int64_t n, const void *w, const void *a)
{
    return vec_dot_w32(DTYPE_Q4_0, n, w, a);
}

static float vec_dot_q4_1(int64_t n, const void *w, const void *a)
{
    return vec_dot_w32(DTYPE_Q4_1, n, w, a);
}

static float vec_dot_q5_0(int64_t n, const void *w, const void *a)
{
    return vec_dot_w32(DTYPE_Q5_0, n, w, a);
}

static float vec_dot_q5_1(int64_t n, const void *w, const void *a)
{
    return vec_dot_w32(DTYPE_Q5_1, n, w, a);
}

static float vec_dot_q8_0(int64_t n, const void *w, const void *a)
{
    return vec_dot_w32(DTYPE_Q8_0, n, w, a);
}

/* ---- K-quants ------------------------------------------------------------------ */

/* The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes. */
static inline void scale_min_k4(int j, const uint8_t *s, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* ggml accumulates a K-quant block's integer products in eight lanes (element
 * index mod 8), scales each lane by d·dy in f32 into eight running f32 sums,
 * and adds the lanes once at the end; the min term is subtracted from a
 * separate f32 sum per block. Keeping that order keeps its rounding. */
typedef struct kq_acc {
    float lanes[8];
    float mins;
} kq_acc;

static inline void kq_block(kq_acc *acc, const int8_t *q /* [256] unpacked weight */,
                            const int *scale /* [256/group] */, int group,
                            const block_q8_K *y, float d, float dmin, int min_isum)
{
    int32_t lane[8] = { 0 };
    for (int i = 0; i < QK_K; i++)
        lane[i & 7] += scale[i / group] * (q[i] * y->qs[i]);
    for (int l = 0; l < 8; l++)
        acc->lanes[l] += d * y->d * (float)lane[l];
    acc->mins -= dmin * y->d * (float)min_isum;
}

static inline float kq_total(const kq_acc *acc)
{
    float sum = acc->mins;
    for (int l = 0; l < 8; l++)
        sum += acc->lanes[l];
    return sum;
}

/* Q4_K/Q5_K share everything but the 5th bit. Element 64g+l (l < 32) is the
 * low nibble of qs[32g+l], element 64g+32+l the high nibble. */
static float vec_dot_q45_K(int64_t n, const uint8_t *blocks, size_t block_len, size_t qs_off,
                           bool has_qh, const block_q8_K *y)
{
    kq_acc acc = { { 0 }, 0.0f };
    for (int64_t b = 0; b < n / QK_K; b++, y++) {
        const uint8_t *blk = blocks + (size_t)b * block_len;
        uint16_t dh, dminh;
        memcpy(&dh, blk, 2);
        memcpy(&dminh, blk + 2, 2);
        const uint8_t *scales = blk + 4;
        const uint8_t *qs = blk + qs_off;
        const uint8_t *qh = has_qh ? blk + offsetof(block_q5_K, qh) : NULL;

        int8_t q[QK_K];
        for (int g = 0; g < 4; g++) {
            for (int l = 0; l < 32; l++) {
                q[64 * g + l] = (int8_t)(qs[32 * g + l] & 15);
                q[64 * g + 32 + l] = (int8_t)(qs[32 * g + l] >> 4);
                if (qh) {
                    q[64 * g + l] += (qh[l] >> (2 * g)) & 1 ? 16 : 0;
                    q[64 * g + 32 + l] += (qh[l] >> (2 * g + 1)) & 1 ? 16 : 0;
                }
            }
        }
        int sc[8], mn[8];
        for (int j = 0; j < 8; j++)
            scale_min_k4(j, scales, &sc[j], &mn[j]);
        /* Σ over sub-blocks of min_j · Σ qa (bsums cover 16 elements each). */
        int min_isum = 0;
        for (int j = 0; j < QK_K / 16; j++)
            min_isum += y->bsums[j] * mn[j / 2];
        kq_block(&acc, q, sc, 32, y, fp16_to_f32(dh), fp16_to_f32(dminh), min_isum);
    }
    return kq_total(&acc);
}

static float vec_dot_q4_K(int64_t n, const void *w, const void *a)
{
    return vec_dot_q45_K(n, w, sizeof(block_q4_K), offsetof(block_q4_K, qs), false, a);
}

static float vec_dot_q5_K(int64_t n, const void *w, const void *a)
{
    return vec_dot_q45_K(n, w, sizeof(block_q5_K), offsetof(block_q5_K, qs), true, a);
}

static float vec_dot_q6_K(int64_t n, const void *w, const void *a)
{
    const block_q6_K *x = w;
    const block_q8_K *y = a;
    kq_acc acc = { { 0 }, 0.0f };
    for (int64_t b = 0; b < n / QK_K; b++) {
        int8_t q[QK_K];
        /* Two halves of 128; in each, 32 positions l give four elements. */
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[b].ql + 64 * h, *qh = x[b].qh + 32 * h;
            int8_t *o = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int sc[16];
        for (int j = 0; j < 16; j++)
            sc[j] = x[b].scales[j];
        kq_block(&acc, q, sc, 16, &y[b], fp16_to_f32(x[b].d), 0.0f, 0);
    }
    return kq_total(&acc);
}

/* ---- per-row kernels ----------------------------------------------------------- */

static void rms_norm(const float *x, const float *w, int64_t n, float eps, float *y)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * scale * w[i];
}

static void rms_norm_rows(const float *x, size_t x_stride, const float *w, int64_t n, float eps, float *y,
                          size_t y_stride, int64_t n_rows)
{
    for (int64_t r = 0; r < n_rows; r++)
        rms_norm(x + (size_t)r * x_stride, w, n, eps, y + (size_t)r * y_stride);
}

static void softmax(float *x, int64_t n)
{
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        max = fmaxf(max, x[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

static void swiglu(float *y, const float *g, const float *u, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void layer_norm(const float *x, const float *w, const float *b, int64_t n, float eps, float *y)
{
    /* ggml_compute_forward_norm_f32: mean from a double sum, centred values
     * stored, variance from a double sum of their f32 squares; the weight and
     * bias are separate ggml ops applied afterwards, in that order. */
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)x[i];
    const float mean = (float)sum / (float)n;
    double sq = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float c = x[i] - mean;
        y[i] = c;
        sq += (double)(c * c);
    }
    const float var = (float)(sq / (double)n);
    const float scale = 1.0f / sqrtf(var + eps);
    for (int64_t i = 0; i < n; i++) {
        float v = y[i] * scale;
        if (w)
            v *= w[i];
        if (b)
            v += b[i];
        y[i] = v;
    }
}

static void layer_norm_rows(const float *x, size_t x_stride, const float *w, const float *b, int64_t n, float eps,
                            float *y, size_t y_stride, int64_t n_rows)
{
    for (int64_t r = 0; r < n_rows; r++)
        layer_norm(x + (size_t)r * x_stride, w, b, n, eps, y + (size_t)r * y_stride);
}

static void rope(float *x /* [n_heads][head_dim] */, int n_heads, int head_dim, int64_t pos,
                 float freq_base)
{
    /* ggml_rope_cache_init: θ starts at pos and is multiplied by theta_scale
     * once per pair, in f32, so the rounding drifts exactly as in ggml. */
    const float theta_scale = powf(freq_base, -2.0f / (float)head_dim);
    float theta = (float)pos;
    for (int i = 0; i < head_dim; i += 2) {
        const float c = cosf(theta), s = sinf(theta);
        for (int h = 0; h < n_heads; h++) {
            float *p = x + (size_t)h * (size_t)head_dim + i;
            const float x0 = p[0], x1 = p[1];
            p[0] = x0 * c - x1 * s;
            p[1] = x0 * s + x1 * c;
        }
        theta *= theta_scale;
    }
}

/* GELU as ggml's CPU backend computes it (GGML_GELU_FP16, GGML_GELU_QUICK_FP16
 * in ggml-cpu/vec.h): the input is rounded to half and looked up in a 64K
 * table of half(f(x)) built once from the f32 formula; tanh-GELU passes
 * through outside (-10, 10). The tables make the outputs half-precision
 * values, which is what llama.cpp's vision tower sees. */
/* One spare entry past the end: SIMD gathers read 32 bits at entry i. */
static uint16_t gelu_table[(1 << 16) + 1];        /* half bits -> half(gelu_tanh) */
static uint16_t gelu_quick_table[(1 << 16) + 1];  /* half bits -> half(quick_gelu) */
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static void gelu_tables_build(void)
{
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f;
    for (uint32_t i = 0; i < (1u << 16); i++) {
        const float x = fp16_to_f32((uint16_t)i);
        const float g = 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * x * (1.0f + 0.044715f * x * x)));
        const float q = x * (1.0f / (1.0f + expf(-1.702f * x)));
        gelu_table[i] = f32_to_fp16(g);
        gelu_quick_table[i] = f32_to_fp16(q);
    }
}

void kn_ref_init_tables(void)
{
    pthread_once(&gelu_once, gelu_tables_build);
}

const uint16_t *kn_gelu_table(bool quick)
{
    kn_ref_init_tables();
    return quick ? gelu_quick_table : gelu_table;
}

static void gelu(float *x, int64_t n)
{
    kn_ref_init_tables();
    for (int64_t i = 0; i < n; i++) {
        if (x[i] <= -10.0f)
            x[i] = 0.0f;
        else if (x[i] < 10.0f)
            x[i] = fp16_to_f32(gelu_table[f32_to_fp16(x[i])]);
    }
}

static void gelu_quick(float *x, int64_t n)
{
    kn_ref_init_tables();
    for (int64_t i = 0; i < n; i++)
        x[i] = fp16_to_f32(gelu_quick_table[f32_to_fp16(x[i])]);
}

static void add_bias(float *y, const float *b, int64_t n_tok, int64_t n)
{
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < n; i++)
            y[t * n + i] += b[i];
}

static void to_half(const float *x, uint16_t *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = f32_to_fp16(x[i]);
}

const kn_impl kn_ref_impl = {
    .isa = "scalar",
    .from_float = {
        [KN_ACT_F16] = from_float_f16,
        [KN_ACT_BF16] = from_float_bf16,
        [KN_ACT_Q8_0] = quantize_row_q8_0,
        [KN_ACT_Q8_1] = from_float_q8_1,
        [KN_ACT_Q8_K] = quantize_row_q8_K,
    },
    .vec_dot = {
        [DTYPE_F32] = vec_dot_f32,
        [DTYPE_F16] = vec_dot_f16,
        [DTYPE_BF16] = vec_dot_bf16,
        [DTYPE_Q4_0] = vec_dot_q4_0,
        [DTYPE_Q4_1] = vec_dot_q4_1,
        [DTYPE_Q5_0] = vec_dot_q5_0,
        [DTYPE_Q5_1] = vec_dot_q5_1,
        [DTYPE_Q8_0] = vec_dot_q8_0,
        [DTYPE_Q4_K] = vec_dot_q4_K,
        [DTYPE_Q5_K] = vec_dot_q5_K,
        [DTYPE_Q6_K] = vec_dot_q6_K,
    },
    .to_f32 = dequantize_row,
    .dot_f32 = dot_f32,
    .rms_norm = rms_norm,
    .rms_norm_rows = rms_norm_rows,
    .layer_norm = layer_norm,
    .layer_norm_rows = layer_norm_rows,
    .rope = rope,
    .swiglu = swiglu,
    .gelu = gelu,
    .gelu_quick = gelu_quick,
    .softmax = softmax,
    .add_bias = add_bias,
    .to_half = to_half,
    .attention = kn_attention_ref,
    .attention_dense = kn_attention_dense_ref,
};
