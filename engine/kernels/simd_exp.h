/*
 * simd_exp.h — e^x on SIMD registers, shared by the AVX2 and AVX-512 kernels
 * (softmax, SiLU, the fused attentions). Each function carries its own target
 * attribute, so it inlines into any function compiled for a superset ISA.
 * x86-64 GCC/Clang only; include inside the files' ISA guards.
 */
#ifndef GLIMPSE_SIMD_EXP_H
#define GLIMPSE_SIMD_EXP_H

#include <immintrin.h>

#define KN_EXP_INLINE(isa) __attribute__((target(isa), always_inline)) static inline

/* e^x within ~1 ulp of expf: split x = n·ln2 + r with |r| <= ln2/2 (ln2 in
 * two parts, so r is exact to f32), e^r by its degree-7 Taylor polynomial
 * (remainder < 1e-8 relative), times 2^n built in the exponent field.
 * Above 88.8 the result is +inf (the input is clamped there so that n stays
 * in range); below -86.6 it is flushed to 0 where expf would give at most
 * 2.5e-38: irrelevant after max-subtraction. */
KN_EXP_INLINE("avx2,fma") __m256 kn_exp256(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-86.6f);
    x = _mm256_min_ps(_mm256_set1_ps(88.8f), x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n for n in [-125, 128]: 2^128 is not a float, so build 2^(n-1) and
     * double it, which overflows to inf exactly when e^x does. */
    const __m256i e = _mm256_cvtps_epi32(n);
    const __m256 half = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(126)), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, half), _mm256_set1_ps(2.0f));
    return _mm256_and_ps(y, _mm256_cmp_ps(x, lo, _CMP_GE_OQ));
}

/* The same with 16 lanes (same reduction, same polynomial, same results). */
KN_EXP_INLINE("avx512f,fma") __m512 kn_exp512(__m512 x)
{
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-86.6f), _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_set1_ps(88.8f), x);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_cvtps_epi32(n);
    const __m512 half = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(126)), 23));
    return _mm512_maskz_mul_ps(keep, _mm512_mul_ps(p, half), _mm512_set1_ps(2.0f));
}

#endif /* GLIMPSE_SIMD_EXP_H */
