/*
 * quant.c — the weight-type table, half/bfloat conversion, dequantisation of
 * every weight type and quantisation of activations to Q8_0 / Q8_K.
 *
 * These are the scalar reference versions: each function reproduces ggml's
 * reference C code (ggml-quants.c) bit for bit, including the order of the
 * float operations, so that logits match llama.cpp. Fast paths belong in
 * kernels/ and are tested against these.
 *
 * The file is compiled as ISO C11, which makes GCC default to
 * -ffp-contract=off: `q*d + m` stays two roundings, as in gguf-py's numpy.
 */
#include "tensor.h"

#include <assert.h>
#include <math.h>
#include <string.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "GGUF blocks are read in place: the host must be little-endian");
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 layout");
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 layout");
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0 layout");
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1 layout");
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 layout");
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K layout");
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K layout");
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K layout");
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K layout");

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- scalars -------------------------------------------------------------- */

uint16_t f32_to_fp16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;

    if (ax > 0x7f800000u) /* NaN: quieted, top payload bits kept (F16C) */
        return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff);
    if (ax >= 0x477ff000u) /* >= 65520 rounds past the largest half, 65504 */
        return sign | 0x7c00;
    if (ax >= 0x38800000u) {
        /* normal half: rebias the exponent (127 -> 15), then round the 13
         * dropped mantissa bits to nearest even; a carry into the exponent
         * is the correct result. */
        uint32_t r = ax - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1);
        return sign | (uint16_t)(r >> 13);
    }
    if (ax <= 0x33000000u) /* <= 2^-25: rounds to zero (the tie goes to even 0) */
        return sign;
    /* subnormal half: the value in units of 2^-24 is m * 2^(e-126), e < 113 */
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..23 */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return sign | (uint16_t)q;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: truncate and force quiet */
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* ---- dequantisation (ggml-quants.c: dequantize_row_*) ---------------------- */

static void to_float_f32(const void *src, float *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void to_float_f16(const void *src, float *dst, int64_t n)
{
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = fp16_to_f32(x[i]);
}

static void to_float_bf16(const void *src, float *dst, int64_t n)
{
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = bf16_to_f32(x[i]);
}

static void to_float_q4_0(const void *src, float *y, int64_t n)
{
    const block_q4_0 *x = src;
    for (int64_t i = 0; i < n / QK4_0; i++, y += QK4_0) {
        const float d = fp16_to_f32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0f) - 8) * d;
            y[j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void to_float_q4_1(const void *src, float *y, int64_t n)
{
    const block_q4_1 *x = src;
    for (int64_t i = 0; i < n / QK4_1; i++, y += QK4_1) {
        const float d = fp16_to_f32(x[i].d);
        const float m = fp16_to_f32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = (x[i].qs[j] & 0x0f) * d + m;
            y[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

/* Q5_0 and Q5_1 share the unpacking of the 5-bit value of element j and
 * j+16 from the nibbles and the 32-bit mask of high bits. */
static inline int q5_lo(const uint8_t *qs, uint32_t qh, int j)
{
    return (qs[j] & 0x0f) | (int)((qh >> j) << 4 & 0x10);
}

static inline int q5_hi(const uint8_t *qs, uint32_t qh, int j)
{
    return (qs[j] >> 4) | (int)((qh >> (j + 12)) & 0x10);
}

static void to_float_q5_0(const void *src, float *y, int64_t n)
{
    const block_q5_0 *x = src;
    for (int64_t i = 0; i < n / QK5_0; i++, y += QK5_0) {
        const float d = fp16_to_f32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof qh);
        for (int j = 0; j < QK5_0 / 2; j++) {
            y[j] = (q5_lo(x[i].qs, qh, j) - 16) * d;
            y[j + QK5_0 / 2] = (q5_hi(x[i].qs, qh, j) - 16) * d;
        }
    }
}

static void to_float_q5_1(const void *src, float *y, int64_t n)
{
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < n / QK5_1; i++, y += QK5_1) {
        const float d = fp16_to_f32(x[i].d);
        const float m = fp16_to_f32(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof qh);
        for (int j = 0; j < QK5_1 / 2; j++) {
            y[j] = q5_lo(x[i].qs, qh, j) * d + m;
            y[j + QK5_1 / 2] = q5_hi(x[i].qs, qh, j) * d + m;
        }
    }
}

static void to_float_q8_0(const void *src, float *y, int64_t n)
{
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0) {
        const float d = fp16_to_f32(x[i].d);
        for (int j = 0; j < QK8_0; j++)
            y[j] = x[i].qs[j] * d;
    }
}

/* 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes
 * (ggml-quants.c: get_scale_min_k4). */
static inline void scale_min_k4(int j, const uint8_t *s, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* One 256-element super-block of Q4_K or Q5_K: they share the layout but for
 * Q5_K's fifth bits qh (NULL for Q4_K, whose values then gain nothing, so
 * each element is the same single product and subtraction as ggml's). */
static void k_block_to_float(float d, float dmin, const uint8_t *scales, const uint8_t *q, const uint8_t *qh,
                             float *y)
{
    /* 4 groups of 64: sub-block 2g from the low nibbles, 2g+1 from the high;
     * qh is not advanced: group g uses its bits 2g and 2g+1 */
    for (int g = 0; g < 4; g++, q += 32) {
        const uint8_t u1 = (uint8_t)(1u << (2 * g)), u2 = (uint8_t)(2u << (2 * g));
        uint8_t sc, m;
        scale_min_k4(2 * g, scales, &sc, &m);
        const float d1 = d * sc, m1 = dmin * m;
        scale_min_k4(2 * g + 1, scales, &sc, &m);
        const float d2 = d * sc, m2 = dmin * m;
        for (int l = 0; l < 32; l++)
            *y++ = d1 * ((q[l] & 0x0f) + (qh && qh[l] & u1 ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * ((q[l] >> 4) + (qh && qh[l] & u2 ? 16 : 0)) - m2;
    }
}

static void to_float_q4_K(const void *src, float *y, int64_t n)
{
    const block_q4_K *x = src;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
        k_block_to_float(fp16_to_f32(x[i].d), fp16_to_f32(x[i].dmin), x[i].scales, x[i].qs, NULL, y);
}

static void to_float_q5_K(const void *src, float *y, int64_t n)
{
    const block_q5_K *x = src;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
        k_block_to_float(fp16_to_f32(x[i].d), fp16_to_f32(x[i].dmin), x[i].scales, x[i].qs, x[i].qh, y);
}

static void to_float_q6_K(const void *src, float *y, int64_t n)
{
    const block_q6_K *x = src;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = fp16_to_f32(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        /* two halves of 128; each l < 32 yields elements l, l+32, l+64, l+96 */
        for (int h = 0; h < 2; h++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0f) | ((qh[l] >> 0 & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2 & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4 & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6 & 3) << 4)) - 32;
                y[l] = d * sc[is] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

static void to_float_q8_K(const void *src, float *y, int64_t n)
{
    const block_q8_K *x = src;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
        for (int j = 0; j < QK_K; j++)
            y[j] = x[i].d * x[i].qs[j];
}

/* ---- activation quantisation ------------------------------------------------ */

static void from_float_f32(const float *src, void *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void from_float_f16(const float *src, void *dst, int64_t n)
{
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = f32_to_fp16(src[i]);
}

static void from_float_bf16(const float *src, void *dst, int64_t n)
{
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = f32_to_bf16(src[i]);
}

void quantize_row_q8_0(const float *x, void *dst, int64_t n)
{
    block_q8_0 *y = dst;
    assert(n % QK8_0 == 0);
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) {
            const float ax = fabsf(x[j]);
            amax = amax > ax ? amax : ax; /* ggml's MAX: a NaN propagates */
        }
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) {
            /* |x*id| <= 127 for finite input; a NaN (from inf or NaN
             * activations) would make the int conversion undefined, so it
             * becomes 0 */
            const float v = roundf(x[j] * id);
            y[i].qs[j] = v == v ? (int8_t)v : 0;
        }
    }
}

/* Round to nearest (ties to even) by adding 1.5*2^23 and reading the
 * mantissa, as ggml's nearest_int; valid for |f| <= 2^22. */
static inline int nearest_int(float f)
{
    const uint32_t u = f32_bits(f + 12582912.0f);
    return (int)(u & 0x007fffff) - 0x00400000;
}

void quantize_row_q8_K(const float *x, void *dst, int64_t n)
{
    block_q8_K *y = dst;
    assert(n % QK_K == 0);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        /* max is the signed value of largest magnitude, so that it maps to -127 */
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

static void from_float_q8_0(const float *src, void *dst, int64_t n) { quantize_row_q8_0(src, dst, n); }
static void from_float_q8_K(const float *src, void *dst, int64_t n) { quantize_row_q8_K(src, dst, n); }

/* ---- the table -------------------------------------------------------------- */

/* Indexed by ggml type id; holes (ids we do not know) have name NULL.
 * vec_dot_type follows ggml-cpu.c's type_traits_cpu. */
static const dtype_info dtype_table[] = {
    [DTYPE_F32] = { "f32", 1, 4, DTYPE_F32, true, to_float_f32, from_float_f32 },
    [DTYPE_F16] = { "f16", 1, 2, DTYPE_F16, true, to_float_f16, from_float_f16 },
    [DTYPE_BF16] = { "bf16", 1, 2, DTYPE_BF16, true, to_float_bf16, from_float_bf16 },
    [DTYPE_Q4_0] = { "q4_0", QK4_0, sizeof(block_q4_0), DTYPE_Q8_0, true, to_float_q4_0, NULL },
    [DTYPE_Q4_1] = { "q4_1", QK4_1, sizeof(block_q4_1), DTYPE_Q8_1, true, to_float_q4_1, NULL },
    [DTYPE_Q5_0] = { "q5_0", QK5_0, sizeof(block_q5_0), DTYPE_Q8_0, true, to_float_q5_0, NULL },
    [DTYPE_Q5_1] = { "q5_1", QK5_1, sizeof(block_q5_1), DTYPE_Q8_1, true, to_float_q5_1, NULL },
    [DTYPE_Q8_0] = { "q8_0", QK8_0, sizeof(block_q8_0), DTYPE_Q8_0, true, to_float_q8_0, from_float_q8_0 },
    [DTYPE_Q4_K] = { "q4_K", QK_K, sizeof(block_q4_K), DTYPE_Q8_K, true, to_float_q4_K, NULL },
    [DTYPE_Q5_K] = { "q5_K", QK_K, sizeof(block_q5_K), DTYPE_Q8_K, true, to_float_q5_K, NULL },
    [DTYPE_Q6_K] = { "q6_K", QK_K, sizeof(block_q6_K), DTYPE_Q8_K, true, to_float_q6_K, NULL },
    /* d, s (halves) and 32 int8: kernels/ quantises to it, nothing dequantises it */
    [DTYPE_Q8_1] = { "q8_1", 32, 36, DTYPE_Q8_1, false, NULL, NULL },
    [DTYPE_Q8_K] = { "q8_K", QK_K, sizeof(block_q8_K), DTYPE_Q8_K, false, to_float_q8_K, from_float_q8_K },
    /* rows in groups of 16, as many bytes: only kernels/ reads them */
    [DTYPE_Q8_0_R16] = { "q8_0_r16", QK8_0, sizeof(block_q8_0), DTYPE_Q8_0, false, NULL, NULL },
    [DTYPE_Q4_0_R16] = { "q4_0_r16", QK4_0, sizeof(block_q4_0), DTYPE_Q8_0, false, NULL, NULL },
    [DTYPE_Q5_0_R16] = { "q5_0_r16", QK5_0, sizeof(block_q5_0), DTYPE_Q8_0, false, NULL, NULL },
    [DTYPE_F16_R16] = { "f16_r16", 1, 2, DTYPE_F16, false, NULL, NULL },
};

const dtype_info *dtype_get(int type)
{
    if (type < 0 || (size_t)type >= sizeof dtype_table / sizeof dtype_table[0])
        return NULL;
    return dtype_table[type].name ? &dtype_table[type] : NULL;
}

size_t dtype_row_size(int type, int64_t n)
{
    const dtype_info *ti = dtype_get(type);
    if (!ti || n < 0)
        return 0;
    return (size_t)(n / ti->block_size) * (size_t)ti->type_size;
}

void dequantize_row(int type, const void *src, float *dst, int64_t n)
{
    const dtype_info *ti = dtype_get(type);
    assert(ti && ti->to_float && n % ti->block_size == 0);
    ti->to_float(src, dst, n);
}
