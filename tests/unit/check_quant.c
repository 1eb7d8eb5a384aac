/*
 * check_quant.c — weight types: the dtype table, half/bfloat conversion and
 * dequantisation / activation quantisation against independent references.
 *
 * Golden blocks come from llama.cpp's gguf-py (tests/data/quant/README.md);
 * half conversion is checked exhaustively against the compiler's _Float16,
 * bfloat rounding against a double-precision formulation.
 */
#include "tensor.h"
#include "testutil.h"

#include <math.h>

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Reads tests/data/quant/NAME; owned, free with free(). Fails the test if absent. */
static void *golden(const char *name, size_t *len)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/quant/%s", name);
    void *p = read_file(source_path(rel), len);
    ck_assert_msg(p != NULL, "cannot read %s (GLIMPSE_SRCDIR set?)", source_path(rel));
    return p;
}

/* ---- the table --------------------------------------------------------------- */

START_TEST(test_table_matches_ggml)
{
    /* ggml's (gguf-py GGML_QUANT_SIZES) block and type sizes */
    static const struct { int type; const char *name; int block, size, vec_dot; bool weight; } want[] = {
        { DTYPE_F32, "f32", 1, 4, DTYPE_F32, true },
        { DTYPE_F16, "f16", 1, 2, DTYPE_F16, true },
        { DTYPE_BF16, "bf16", 1, 2, DTYPE_BF16, true },
        { DTYPE_Q4_0, "q4_0", 32, 18, DTYPE_Q8_0, true },
        { DTYPE_Q4_1, "q4_1", 32, 20, DTYPE_Q8_1, true },
        { DTYPE_Q5_0, "q5_0", 32, 22, DTYPE_Q8_0, true },
        { DTYPE_Q5_1, "q5_1", 32, 24, DTYPE_Q8_1, true },
        { DTYPE_Q8_0, "q8_0", 32, 34, DTYPE_Q8_0, true },
        { DTYPE_Q8_1, "q8_1", 32, 36, DTYPE_Q8_1, false },
        { DTYPE_Q4_K, "q4_K", 256, 144, DTYPE_Q8_K, true },
        { DTYPE_Q5_K, "q5_K", 256, 176, DTYPE_Q8_K, true },
        { DTYPE_Q6_K, "q6_K", 256, 210, DTYPE_Q8_K, true },
        { DTYPE_Q8_K, "q8_K", 256, 292, DTYPE_Q8_K, false },
        /* ours (ggml's 31-33 are gone): packed, never the type of a tensor in a file */
        { DTYPE_Q8_0_R16, "q8_0_r16", 32, 34, DTYPE_Q8_0, false },
        { DTYPE_Q4_0_R16, "q4_0_r16", 32, 18, DTYPE_Q8_0, false },
        { DTYPE_Q5_0_R16, "q5_0_r16", 32, 22, DTYPE_Q8_0, false },
        { DTYPE_F16_R16, "f16_r16", 1, 2, DTYPE_F16, false },
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const dtype_info *ti = dtype_get(want[i].type);
        ck_assert_ptr_nonnull(ti);
        ck_assert_str_eq(ti->name, want[i].name);
        ck_assert_int_eq(ti->block_size, want[i].block);
        ck_assert_int_eq(ti->type_size, want[i].size);
        ck_assert_int_eq(ti->vec_dot_type, want[i].vec_dot);
        ck_assert_int_eq(ti->is_weight, want[i].weight);
        ck_assert_msg(!ti->is_weight || ti->to_float, "%s: weight type without to_float", ti->name);
        /* the type each activation is converted to must be able to be produced */
        const dtype_info *vd = dtype_get(ti->vec_dot_type);
        ck_assert_ptr_nonnull(vd);
        ck_assert_uint_eq(dtype_row_size(want[i].type, 4 * want[i].block), (size_t)(4 * want[i].size));
    }
    /* ids ggml has but we do not load, and ids out of any range */
    static const int unknown[] = { -1, 4, 5, 10, 11, 16, 29, 35, 1000 };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        ck_assert_ptr_null(dtype_get(unknown[i]));
        ck_assert_uint_eq(dtype_row_size(unknown[i], 256), 0);
    }
}
END_TEST

/* ---- halves ------------------------------------------------------------------ */

/* The value of a finite half from the IEEE 754 definition, in double. */
static double half_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return h & 0x8000 ? -v : v;
}

START_TEST(test_fp16_to_f32_definition)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        float got = fp16_to_f32((uint16_t)h);
        if ((h & 0x7c00) == 0x7c00) {
            bool nan = (h & 0x3ff) != 0;
            if (nan ? !isnan(got) : !isinf(got) || !!signbit(got) != !!(h & 0x8000))
                ck_abort_msg("h=%04x -> %a", h, (double)got);
            continue;
        }
        /* signbit also tells -0 from +0 */
        if ((double)got != half_value((uint16_t)h) || !!signbit(got) != !!(h & 0x8000))
            ck_abort_msg("h=%04x: got %a want %a", h, (double)got, half_value((uint16_t)h));
    }
}
END_TEST

/* Round to nearest, ties to even, checked at every pair of neighbouring
 * halves: both ends, the midpoint and one f32 ulp either side of it. */
START_TEST(test_f32_to_fp16_ties)
{
    for (uint32_t h = 0; h < 0x7bff; h++) { /* the step from 65504 to infinity: below */
        const uint16_t lo = (uint16_t)h, hi = (uint16_t)(h + 1), even = h & 1 ? hi : lo;
        const float a = fp16_to_f32(lo), b = fp16_to_f32(hi);
        const float mid = (float)(((double)a + (double)b) / 2); /* exact: halves have 11 bits */
        const struct { float x; uint16_t want; } cases[] = {
            { a, lo }, { nextafterf(mid, 0), lo }, { mid, even }, { nextafterf(mid, INFINITY), hi },
        };
        for (int k = 0; k < 4; k++) {
            uint16_t got = f32_to_fp16(cases[k].x), got_neg = f32_to_fp16(-cases[k].x);
            if (got != cases[k].want || got_neg != (cases[k].want | 0x8000))
                ck_abort_msg("%a: got %04x/%04x want %04x", (double)cases[k].x, got, got_neg, cases[k].want);
        }
    }
    ck_assert_uint_eq(f32_to_fp16(65504.0f), 0x7bff);
    ck_assert_uint_eq(f32_to_fp16(65519.996f), 0x7bff);
    ck_assert_uint_eq(f32_to_fp16(65520.0f), 0x7c00); /* the tie rounds to even: infinity */
    ck_assert_uint_eq(f32_to_fp16(INFINITY), 0x7c00);
    ck_assert_uint_eq(f32_to_fp16(-INFINITY), 0xfc00);
    ck_assert_uint_eq(f32_to_fp16(1e-30f), 0x0000);
    ck_assert_uint_eq(f32_to_fp16(-0.0f), 0x8000);
    uint16_t nan = f32_to_fp16(NAN);
    ck_assert((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
}
END_TEST

/* The compiler's own conversions are a second, independent reference where
 * _Float16 exists (GCC >= 12 on x86-64). */
#ifdef __FLT16_MAX__
START_TEST(test_fp16_to_f32_exhaustive)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        _Float16 ref;
        uint16_t hb = (uint16_t)h;
        memcpy(&ref, &hb, sizeof ref);
        float got = fp16_to_f32(hb);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
            /* NaN: payload handling is not specified (F16C quiets it) */
            if (!isnan(got) || !!signbit(got) != !!(h & 0x8000))
                ck_abort_msg("h=%04x", h);
            continue;
        }
        if (f32_bits(got) != f32_bits((float)ref))
            ck_abort_msg("h=%04x: got %08x want %08x", h, f32_bits(got), f32_bits((float)ref));
    }
}
END_TEST

static void check_to_fp16(float f)
{
    uint16_t got = f32_to_fp16(f);
    if (isnan(f)) {
        if ((got & 0x7c00) != 0x7c00 || !(got & 0x3ff) || !!(got & 0x8000) != !!signbit(f))
            ck_abort_msg("NaN %08x -> %04x", f32_bits(f), got);
        return;
    }
    _Float16 ref = (_Float16)f;
    uint16_t want;
    memcpy(&want, &ref, sizeof want);
    if (got != want) /* not ck_assert: it costs a syscall per call in the loops below */
        ck_abort_msg("f=%a (%08x): got %04x want %04x", (double)f, f32_bits(f), got, want);
}

START_TEST(test_f32_to_fp16_vs_compiler)
{
    /* every half, the midpoints between neighbours (ties) and one f32 ulp
     * either side of them: the places where rounding can go wrong */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        float lo = fp16_to_f32((uint16_t)h), hi = fp16_to_f32((uint16_t)(h + 1));
        float mid = (float)(((double)lo + (double)hi) / 2); /* exact: halves have 11 bits */
        const float cases[] = { lo, mid, nextafterf(mid, 0), nextafterf(mid, INFINITY) };
        for (int k = 0; k < 4; k++) {
            check_to_fp16(cases[k]);
            check_to_fp16(-cases[k]);
        }
    }
    /* a sweep over all f32 bit patterns: overflow, underflow, inf, NaN */
    for (uint64_t u = 0; u < 0x100000000ull; u += 4093)
        check_to_fp16(bits_f32((uint32_t)u));
    check_to_fp16(65519.996f);
    check_to_fp16(65520.0f);
    check_to_fp16(INFINITY);
    check_to_fp16(-INFINITY);
    check_to_fp16(bits_f32(0x33000000)); /* 2^-25: tie between 0 and the smallest subnormal */
    check_to_fp16(bits_f32(0x33000001));
}
END_TEST
#endif

/* Round-to-nearest-even of f to bfloat, worked out in double arithmetic. */
static uint16_t bf16_reference(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t lo = u & 0xffff0000u;
    double a = fabs((double)bits_f32(lo)), x = fabs((double)f);
    /* the next bfloat away from zero; for the largest finite it is inf */
    double b = (lo & 0x7fffffffu) == 0x7f7f0000u ? ldexp(1.0, 128) : fabs((double)bits_f32(lo + 0x10000u));
    if (x - a < b - x)
        return (uint16_t)(lo >> 16);
    if (x - a > b - x)
        return (uint16_t)((lo >> 16) + 1);
    return (uint16_t)((lo >> 16) + ((lo >> 16) & 1));
}

START_TEST(test_bf16)
{
    for (uint64_t u = 0; u < 0x100000000ull; u += 997) {
        float f = bits_f32((uint32_t)u);
        uint16_t got = f32_to_bf16(f);
        if (isnan(f)) {
            if (!isnan(bf16_to_f32(got)) || !(got & 0x40))
                ck_abort_msg("NaN %08x -> %04x (must stay a quiet NaN)", (uint32_t)u, got);
            continue;
        }
        uint16_t want = isinf(f) ? (uint16_t)((uint32_t)u >> 16) : bf16_reference(f);
        if (got != want)
            ck_abort_msg("%08x: got %04x want %04x", (uint32_t)u, got, want);
    }
    ck_assert_uint_eq(f32_to_bf16(bits_f32(0x3f808000)), 0x3f80); /* tie, even stays */
    ck_assert_uint_eq(f32_to_bf16(bits_f32(0x3f818000)), 0x3f82); /* tie, odd rounds up */
}
END_TEST

/* ---- dequantisation ---------------------------------------------------------- */

static const struct { int type; const char *name; } golden_types[] = {
    { DTYPE_F32, "f32" },   { DTYPE_F16, "f16" },   { DTYPE_BF16, "bf16" }, { DTYPE_Q4_0, "q4_0" },
    { DTYPE_Q4_1, "q4_1" }, { DTYPE_Q5_0, "q5_0" }, { DTYPE_Q5_1, "q5_1" }, { DTYPE_Q8_0, "q8_0" },
    { DTYPE_Q4_K, "q4_K" }, { DTYPE_Q5_K, "q5_K" }, { DTYPE_Q6_K, "q6_K" },
};

START_TEST(test_dequantize_golden)
{
    int type = golden_types[_i].type;
    char name[64];
    size_t raw_len, ref_len;
    snprintf(name, sizeof name, "%s.raw", golden_types[_i].name);
    void *raw = golden(name, &raw_len);
    snprintf(name, sizeof name, "%s.f32", golden_types[_i].name);
    float *ref = golden(name, &ref_len);
    int64_t n = (int64_t)(ref_len / sizeof(float));
    ck_assert_uint_eq(dtype_row_size(type, n), raw_len);

    float *got = malloc(ref_len);
    dequantize_row(type, raw, got, n);
    for (int64_t i = 0; i < n; i++)
        if (f32_bits(got[i]) != f32_bits(ref[i]))
            ck_abort_msg("%s element %lld: got %a want %a", golden_types[_i].name, (long long)i, (double)got[i],
                         (double)ref[i]);

    /* block by block, so a kernel that reads past its block shows up */
    const dtype_info *ti = dtype_get(type);
    for (int64_t b = 0; b < n / ti->block_size; b++) {
        float one[256];
        dequantize_row(type, (const char *)raw + b * ti->type_size, one, ti->block_size);
        ck_assert_int_eq(memcmp(one, ref + b * ti->block_size, (size_t)ti->block_size * sizeof(float)), 0);
    }
    free(got);
    free(raw);
    free(ref);
}
END_TEST

/* ---- activation quantisation --------------------------------------------------- */

static const struct {
    int type;
    const char *name;
    void (*quantize)(const float *x, void *dst, int64_t n);
} quant_goldens[] = { { DTYPE_Q8_0, "q8_0", quantize_row_q8_0 }, { DTYPE_Q8_K, "q8_K", quantize_row_q8_K } };

START_TEST(test_quantize_golden)
{
    const int type = quant_goldens[_i].type;
    const char *tn = quant_goldens[_i].name;
    char name[64];
    size_t in_len, ref_len;
    snprintf(name, sizeof name, "%s-quant.in", tn);
    float *x = golden(name, &in_len);
    snprintf(name, sizeof name, "%s-quant.raw", tn);
    uint8_t *ref = golden(name, &ref_len);
    int64_t n = (int64_t)(in_len / sizeof(float));
    ck_assert_uint_eq(dtype_row_size(type, n), ref_len);
    /* whole blocks: scale bits, quants and (Q8_K) block sums; neither block has padding */
    const size_t bs = (size_t)dtype_get(type)->type_size;
    uint8_t *got = malloc(ref_len);
    quant_goldens[_i].quantize(x, got, n);
    for (size_t b = 0; b < ref_len / bs; b++)
        ck_assert_msg(memcmp(got + b * bs, ref + b * bs, bs) == 0, "%s block %zu differs", tn, b);
    /* the table's from_float is the same function */
    memset(got, 0, ref_len);
    dtype_get(type)->from_float(x, got, n);
    ck_assert_msg(memcmp(got, ref, ref_len) == 0, "%s: from_float differs", tn);
    free(got);
    free(x);
    free(ref);
}
END_TEST

/* Non-finite activations must not trip undefined behaviour (UBSan build). */
START_TEST(test_quantize_nonfinite)
{
    float x[256];
    for (int i = 0; i < 256; i++)
        x[i] = (float)(i - 128) / 7;
    x[3] = INFINITY;
    x[40] = NAN;
    block_q8_0 q0[8];
    block_q8_K qk;
    quantize_row_q8_0(x, q0, 256);
    quantize_row_q8_K(x, &qk, 256);
    /* a finite block next to them is unaffected */
    ck_assert_uint_eq(q0[7].d, f32_to_fp16(127.0f / 7 / 127));
    ck_assert_int_eq(q0[7].qs[31], 127);
}
END_TEST

/* Dequantising a quantised activation gives back the input within half a step. */
START_TEST(test_q8_roundtrip)
{
    float x[512], y[512];
    uint32_t s = 12345;
    for (int i = 0; i < 512; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = ((float)(s >> 8) / (float)(1 << 24) - 0.5f) * (i < 256 ? 3.0f : 0.001f);
    }
    block_q8_K qk[2];
    quantize_row_q8_K(x, qk, 512);
    dequantize_row(DTYPE_Q8_K, qk, y, 512);
    for (int i = 0; i < 512; i++)
        ck_assert_float_le(fabsf(y[i] - x[i]), fabsf(qk[i / 256].d) * 0.5001f);
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += qk[b].qs[16 * j + l];
            ck_assert_int_eq(qk[b].bsums[j], sum);
        }
}
END_TEST

static Suite *quant_suite(void)
{
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("quant");
    tcase_add_test(tc, test_table_matches_ggml);
    tcase_add_test(tc, test_fp16_to_f32_definition);
    tcase_add_test(tc, test_f32_to_fp16_ties);
#ifdef __FLT16_MAX__
    tcase_add_test(tc, test_fp16_to_f32_exhaustive);
    tcase_add_test(tc, test_f32_to_fp16_vs_compiler);
#endif
    tcase_add_test(tc, test_bf16);
    tcase_add_loop_test(tc, test_dequantize_golden, 0, (int)(sizeof golden_types / sizeof golden_types[0]));
    tcase_add_loop_test(tc, test_quantize_golden, 0, (int)(sizeof quant_goldens / sizeof quant_goldens[0]));
    tcase_add_test(tc, test_quantize_nonfinite);
    tcase_add_test(tc, test_q8_roundtrip);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(quant_suite());
}
