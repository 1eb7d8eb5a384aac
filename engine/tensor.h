/*
 * tensor.h — weight types (ggml's numbering and block layouts), half/bfloat
 * conversion, dequantisation and activation quantisation, and the tensor
 * view type.
 *
 * Block layouts are byte-for-byte those of ggml (ggml-common.h) because the
 * blocks are read straight out of the mapped GGUF file. Halves are stored as
 * raw uint16_t bits; the host must be little-endian (checked in quant.c).
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
    DTYPE_Q8_1 = 9,  /* activations only (Q4_1/Q5_1 matmul); layout in kernels/ */
    DTYPE_Q4_K = 12,
    DTYPE_Q5_K = 13,
    DTYPE_Q6_K = 14,
    DTYPE_Q8_K = 15, /* activations only: never a weight type we load */
    DTYPE_BF16 = 30,
    /* Never in a file: Q8_0 / Q4_0 / Q5_0 weights repacked at load for the
     * AVX-512 VNNI kernels, F16 weights for the AVX-512 ones, 16 rows
     * interleaved (kernels_impl.h, kn_packed_add_rows). */
    DTYPE_Q8_0_R16 = 31,
    DTYPE_Q4_0_R16 = 32,
    DTYPE_Q5_0_R16 = 33,
    DTYPE_F16_R16 = 34,
};

/* ---- block layouts (ggml-common.h) --------------------------------------- */

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct block_q4_0 {
    uint16_t d;             /* half: scale */
    uint8_t qs[QK4_0 / 2];  /* byte j: element j (low nibble), j+16 (high) */
} block_q4_0;

typedef struct block_q4_1 {
    uint16_t d, m;          /* half: scale, minimum */
    uint8_t qs[QK4_1 / 2];
} block_q4_1;

typedef struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4];          /* 5th bit of each element, little-endian u32 */
    uint8_t qs[QK5_0 / 2];
} block_q5_0;

typedef struct block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;

typedef struct block_q8_0 {
    uint16_t d;
    int8_t qs[QK8_0];
} block_q8_0;

/* K-quants: 256-element super-blocks of 8 sub-blocks with 6-bit scales/mins. */
typedef struct block_q4_K {
    uint16_t d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;

typedef struct block_q5_K {
    uint16_t d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;

typedef struct block_q6_K {
    uint8_t ql[QK_K / 2];   /* low 4 bits */
    uint8_t qh[QK_K / 4];   /* high 2 bits */
    int8_t scales[QK_K / 16];
    uint16_t d;
} block_q6_K;

/* Activation blocks for K-quant dot products: d stays f32, bsums[j] is the
 * sum of qs[16j .. 16j+15] (the K-quant kernels use it for the mins). */
typedef struct block_q8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;

/* ---- type table ------------------------------------------------------------ */

typedef void (*dtype_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*dtype_from_float_fn)(const float *src, void *dst, int64_t n);

typedef struct dtype_info {
    const char *name;    /* "q8_0" */
    int block_size;      /* elements per block */
    int type_size;       /* bytes per block */
    int vec_dot_type;    /* what activations are converted to for matmul (llama.cpp CPU rule) */
    bool is_weight;      /* may be the type of a tensor in a file we load */
    dtype_to_float_fn to_float;      /* n a multiple of block_size; NULL for Q8_1 */
    dtype_from_float_fn from_float;  /* NULL unless some type uses this as vec_dot_type */
} dtype_info;

/* Table entry for a type id (weights and activation types), or NULL for any
 * other id. Borrowed, static. Any thread. */
const dtype_info *dtype_get(int type);

/* Bytes of a row of n elements; n must be a multiple of the block size and
 * type a known type (0 otherwise). */
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

/* Row r of a 2-D (or higher, flattened) tensor: rows are ne[0] elements. */
static inline const void *tensor_row(const tensor *t, int64_t r)
{
    return (const char *)t->data + (size_t)r * dtype_row_size(t->type, t->ne[0]);
}

/* ---- scalars -------------------------------------------------------------- */

/* Exact. Inline because kernels read two half scales per block. */
static inline float fp16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v;
    const uint32_t em = h & 0x7fffu;
    if (em >= 0x7c00u)          /* inf, NaN: payload kept in the top mantissa bits */
        v.u = 0x7f800000u | (em & 0x3ffu) << 13;
    else if (em >= 0x0400u)     /* normal: rebias the exponent from 15 to 127 */
        v.u = (em << 13) + 0x38000000u;
    else                        /* zero or subnormal: m * 2^-24, exact in f32 */
        v.f = (float)em * 0x1p-24f;
    v.u |= (uint32_t)(h & 0x8000u) << 16;
    return v.f;
}
uint16_t f32_to_fp16(float f);        /* round to nearest even, like F16C */
static inline float bf16_to_f32(uint16_t b)
{
    union { uint32_t u; float f; } v = { .u = (uint32_t)b << 16 };
    return v.f;
}
uint16_t f32_to_bf16(float f);        /* round to nearest even, NaN kept quiet */

/* ---- rows ------------------------------------------------------------------ */

/* Dequantises n elements (a multiple of the type's block size) from src
 * (4-byte aligned, as gguf guarantees for tensor data) to f32, bit-exact with
 * ggml's dequantize_row_*. type must be a weight type or Q8_K. */
void dequantize_row(int type, const void *src, float *dst, int64_t n);

/* Activation quantisation exactly as llama.cpp's reference CPU code
 * (quantize_row_q8_0_ref, quantize_row_q8_K_ref); n a multiple of 32 / 256.
 * dst is an array of block_q8_0 / block_q8_K. */
void quantize_row_q8_0(const float *src, void *dst, int64_t n);
void quantize_row_q8_K(const float *src, void *dst, int64_t n);

#endif /* GLIMPSE_TENSOR_H */
