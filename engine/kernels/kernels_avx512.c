/*
 * kernels_avx512.c — the AVX-512 table: the AVX2 table with the matrix
 * tiles that gain from 16-lane registers replaced: F32/F16/BF16 (4 weight
 * rows x 4 tokens per micro-kernel, kernels_tile.h) and Q8_0 with VNNI
 * where the CPU has it (the same blocking), and the fused attention
 * (attention_avx512.c).
 *
 * Numerics vs the reference: float tiles sum each output in one 16-lane f32
 * chain instead of double, the Q8_0 tile adds the block terms in 16 lanes
 * (8 per block) instead of one f32 sum, so both differ by float rounding
 * (as the AVX2 ones do). Every output's order of operations depends on k
 * alone (kernels_tile.h: batch invariance).
 *
 * Only the functions marked TARGET use AVX-512 instructions; kn_avx512_impl
 * checks the CPU before handing them out, so the file is safe to link
 * everywhere.
 */
#include "kernels_impl.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))

/* ---- float tiles ----------------------------------------------------------------- */

#define VF __m512
#define VL 16
#define vf_zero() _mm512_setzero_ps()
#define vf_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vf_hsum(v) _mm512_reduce_add_ps(v)
#define vf_load(p) _mm512_loadu_ps(p)
#define vf_from_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define vf_from_bf16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
/* 32 zmm registers: 4 x 4 accumulators, 4 weight vectors, 1 activation.
 * Measured on one Zen 5 core, F16 weights, k = 576: 4x4, 4x6, 5x5 and 6x4
 * all reach ~220 GFLOP/s of its 258 peak; 3x8 and 2x8 ~195. A single token
 * (decode) runs 8 rows per step, 8 chains in flight. */
#define TILE_R 4
#define TILE_T 4
#define TILE_R1 8
#include "kernels_tile.h"

/* ---- Q8_0 x Q8_0 with VNNI ------------------------------------------------------- */

#undef TARGET
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

/* The quants of blocks b and b+1 of a Q8_0 row in one register (b+1 zero
 * when absent). */
INLINE __m512i q8_pair(const block_q8_0 *x, int64_t b, bool two)
{
    const __m512i lo = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)x[b].qs));
    return two ? _mm512_inserti64x4(lo, _mm256_loadu_si256((const __m256i *)x[b + 1].qs), 1) : lo;
}

/* Their scales: 8 lanes of d_b, 8 of d_{b+1} (0 when absent). */
INLINE __m512 q8_pair_scales(const block_q8_0 *x, int64_t b, bool two)
{
    return _mm512_cvtph_ps(_mm256_set_m128i(_mm_set1_epi16(two ? (short)x[b + 1].d : 0), _mm_set1_epi16((short)x[b].d)));
}

/* R Q8_0 weight rows x T Q8_0 activation rows, two blocks per step.
 * vpdpbusd multiplies unsigned by signed bytes: the activations go in as
 * a + 128 (they never hold -128, so a + 128 is 1..255), the weights signed,
 * and the accumulator starts at -128 * (the weight's 4-byte sums), computed
 * once per weight vector for all T tokens; so each 8-lane half holds one
 * block's exact integer partial sums, then scaled by d_w * d_a and added to
 * the pair's one accumulator. The order depends on k alone. */
INLINE void micro_q8_0(int R, int T, int64_t k, const uint8_t *w, size_t w_row, const uint8_t *a, size_t a_row,
                       float *y, size_t y_stride)
{
    const int64_t nb = k / QK8_0;
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    __m512 acc[TILE_R1][TILE_T], dw[TILE_R1];
    __m512i qw[TILE_R1], corr[TILE_R1];
    TILE_UNROLL
    for (int r = 0; r < R; r++) {
        TILE_UNROLL
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b += 2) {
        const bool two = b + 1 < nb;
        TILE_UNROLL
        for (int r = 0; r < R; r++) {
            const block_q8_0 *x = (const block_q8_0 *)(w + (size_t)r * w_row);
            qw[r] = q8_pair(x, b, two);
            corr[r] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                       _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, qw[r]));
            dw[r] = q8_pair_scales(x, b, two);
        }
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const block_q8_0 *yb = (const block_q8_0 *)(a + (size_t)t * a_row);
            const __m512i qa = _mm512_xor_si512(q8_pair(yb, b, two), bias);
            const __m512 da = q8_pair_scales(yb, b, two);
            TILE_UNROLL
            for (int r = 0; r < R; r++) {
                const __m512i isum = _mm512_dpbusd_epi32(corr[r], qa, qw[r]);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw[r], da), acc[r][t]);
            }
        }
    }
    TILE_UNROLL
    for (int r = 0; r < R; r++) {
        TILE_UNROLL
        for (int t = 0; t < T; t++)
            y[(size_t)t * y_stride + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
}

/* Measured like the float tile: 4x4 ~200-220 GOP/s on one core (3x4 the
 * same, 4x2 ~180, 8x1 ~130). */
DEFINE_TILE(tile_q8_0, micro_q8_0, TILE_R, TILE_T, TILE_R1)

/* ---- the table -------------------------------------------------------------------- */

static kn_impl avx512_impl;

const kn_impl *kn_avx512_impl(void)
{
    const kn_impl *base = kn_avx2_impl();
    __builtin_cpu_init();
    if (!base || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
        return NULL;
    if (avx512_impl.isa)
        return &avx512_impl;
    kn_impl t = *base;
    t.isa = "avx512";
    t.attention = kn_attention_avx512;
    /* The tiles beat Debian's OpenBLAS (Haswell kernels on Zen 5) ~2x at
     * the ViT's sizes (bench/README.md "Kernels"): no sgemm path here. */
    t.use_blas = false;
    t.dot_f32 = dot_f32;
    t.tile[DTYPE_F32] = tile_f32;
    t.tile[DTYPE_F16] = tile_f16;
    t.tile[DTYPE_BF16] = tile_bf16;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512dq"))
        t.tile[DTYPE_Q8_0] = tile_q8_0;
    avx512_impl = t;
    return &avx512_impl;
}

#else /* not x86-64 GCC/Clang */

const kn_impl *kn_avx512_impl(void)
{
    return NULL;
}

#endif
