/*
 * attention_impl.h — private to engine/kernels/ and its test: the versions of
 * kn_attention_dense per ISA, so that tests can run them side by side.
 */
#ifndef GLIMPSE_ATTENTION_IMPL_H
#define GLIMPSE_ATTENTION_IMPL_H

#include "kernels_impl.h"

typedef void (*kn_attn_dense_fn)(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                                 size_t kv_stride, int64_t n, int head_dim, float scale, float *out,
                                 size_t out_stride, float *scratch);

/* The definition (attention.c), and the SIMD versions, each valid only where
 * its table (kn_avx2_impl, kn_avx512_impl) is not NULL. */
void kn_attention_dense_ref(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                            size_t kv_stride, int64_t n, int head_dim, float scale, float *out,
                            size_t out_stride, float *scratch);
void kn_attention_dense_avx2(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                             size_t kv_stride, int64_t n, int head_dim, float scale, float *out, size_t out_stride,
                             float *scratch);
void kn_attention_dense_avx512(const float *q, size_t q_stride, int n_q, const float *k, const float *v,
                               size_t kv_stride, int64_t n, int head_dim, float scale, float *out,
                               size_t out_stride, float *scratch);

/* The version that goes with a kernel table (the reference for unknown ones). */
kn_attn_dense_fn kn_attention_dense_for(const kn_impl *impl);

#endif /* GLIMPSE_ATTENTION_IMPL_H */
