/*
 * tensor.h — weight types (ggml's numbering), half/bfloat conversion,
 * dequantisation and activation quantisation, and the tensor view type.
 */
#ifndef GLIMPSE_TENSOR_H
#define GLIMPSE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Values are ggml's type ids as stored in GGUF tensor infos. */
enum dtype {
    DTYPE_F32 = 0,
    DTYPE_F16 = 1,
    DTYPE_Q4_0 = 2,
    DTYPE_Q4_1 = 3,
    DTYPE_Q5_0 = 6,
    DTYPE_Q5_1 = 7,
    DTYPE_Q8_0 = 8,
    DTYPE_Q4_K = 12,
    DTYPE_Q5_K = 13,
    DTYPE_Q6_K = 14,
    DTYPE_Q8_K = 15, /* activations only: never a weight type we load */
    DTYPE_BF16 = 30,
};

typedef struct dtype_info {
    const char *name;    /* "q8_0" */
    int block_size;      /* elements per block */
    int type_size;       /* bytes per block */
    int vec_dot_type;    /* what activations are converted to for matmul (llama.cpp CPU rule) */
} dtype_info;

/* Table entry for a weight type we can load, or NULL for any other id. */
const dtype_info *dtype_get(int type);

/* Bytes of a row of n elements; n must be a multiple of the block size. */
size_t dtype_row_size(int type, int64_t n);

/* A view of an n-dimensional tensor (ggml order: ne[0] is contiguous).
 * Unused dims are 1. For weights, data points into the read-only mmap. */
typedef struct tensor {
    const char *name;   /* NUL-terminated; borrowed from the owner */
    int type;           /* enum dtype */
    int n_dims;         /* 1..4 */
    int64_t ne[4];
    const void *data;
    size_t nbytes;
} tensor;

/* Row r of a 2-D (or higher, flattened) tensor. */
static inline const void *tensor_row(const tensor *t, int64_t r)
{
    return (const char *)t->data + (size_t)r * (t->nbytes / (size_t)(t->ne[1] * t->ne[2] * t->ne[3]));
}

/* ---- scalars -------------------------------------------------------------- */

float fp16_to_f32(uint16_t h);        /* exact */
uint16_t f32_to_fp16(float f);        /* round to nearest even, like F16C */
static inline float bf16_to_f32(uint16_t b)
{
    union { uint32_t u; float f; } v = { .u = (uint32_t)b << 16 };
    return v.f;
}
uint16_t f32_to_bf16(float f);        /* round to nearest even, NaN kept quiet */

/* ---- rows ------------------------------------------------------------------ */

/* Dequantises n elements (a multiple of the type's block size) from src to f32. */
void dequantize_row(int type, const void *src, float *dst, int64_t n);

/* Activation quantisation exactly as llama.cpp's reference CPU code
 * (quantize_row_q8_0_ref, quantize_row_q8_K_ref); n a multiple of 32 / 256. */
void quantize_row_q8_0(const float *src, void *dst, int64_t n);
void quantize_row_q8_K(const float *src, void *dst, int64_t n);

#endif /* GLIMPSE_TENSOR_H */
