/*
 * attention_avx2.c — kn_attention_dense with AVX2+FMA: the body of
 * attention_dense.h on 8-lane ymm registers (32 queries = 4 registers; tiles
 * of 3 keys or 2 dimensions x 4 registers, within the 16 ymm). The decoder's
 * kn_attention has no AVX2 version (the reference runs there).
 *
 * Only the AVX2 table hands it out, which kn_avx2_impl gives only where the
 * CPU has AVX2, FMA and F16C.
 */
#include "kernels_impl.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#include "simd_exp.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE TARGET static inline __attribute__((always_inline))

#define VEC __m256
#define VL 8
#define V_LOAD _mm256_loadu_ps
#define V_STORE _mm256_storeu_ps
#define V_SET1 _mm256_set1_ps
#define V_ZERO _mm256_setzero_ps
#define V_FMA _mm256_fmadd_ps
#define V_MUL _mm256_mul_ps
#define V_ADD _mm256_add_ps
#define V_SUB _mm256_sub_ps
#define V_MAX _mm256_max_ps
#define V_EXP kn_exp256
#define DKG 3  /* 3 keys x 4 ymm accumulators */
#define DTG 2  /* 2 dimensions x 4 ymm accumulators (3 would not divide 64) */
#define DENSE_FN kn_attention_dense_avx2

typedef struct { __m256d lo, hi; } DSUM;  /* lanes 0-3, 4-7 */

INLINE DSUM dsum_zero(void)
{
    return (DSUM){ _mm256_setzero_pd(), _mm256_setzero_pd() };
}

INLINE void dsum_add(DSUM *s, __m256 e)
{
    s->lo = _mm256_add_pd(s->lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s->hi = _mm256_add_pd(s->hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
}

INLINE __m256 dsum_inv(const DSUM *s)
{
    const __m256d one = _mm256_set1_pd(1.0);
    return _mm256_set_m128(_mm256_cvtpd_ps(_mm256_div_pd(one, s->hi)), _mm256_cvtpd_ps(_mm256_div_pd(one, s->lo)));
}

#include "attention_dense.h"

#endif
