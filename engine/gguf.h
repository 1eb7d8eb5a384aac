/*
 * gguf.h — hardened reader of GGUF v2/v3 files over a read-only mmap.
 *
 * Nothing in the file is trusted: every length, count, type and offset is
 * checked against the file size and against overflow before use, and a bad
 * file gives GLIMPSE_EFORMAT with a message naming what is wrong (the key or
 * tensor, by index and name) — never a crash. GLIMPSE_EUNSUPPORTED is for a
 * well-formed file we cannot use: GGUF version 1 or > 3, a tensor type that
 * is not a weight type of tensor.h (the message names the type id), tensor
 * data not 4-byte aligned in memory.
 *
 * Beyond llama.cpp's reader this one also requires n_dims >= 1, tensor names
 * without NUL bytes, and every tensor's data inside the file.
 *
 * All pointers returned by the accessors are borrowed: valid until gguf_close.
 * A gguf_file is immutable after opening, so any thread may read it.
 */
#ifndef GLIMPSE_GGUF_H
#define GLIMPSE_GGUF_H

#include "internal.h"
#include "tensor.h"

enum gguf_vtype {
    GGUF_VTYPE_UINT8 = 0,
    GGUF_VTYPE_INT8 = 1,
    GGUF_VTYPE_UINT16 = 2,
    GGUF_VTYPE_INT16 = 3,
    GGUF_VTYPE_UINT32 = 4,
    GGUF_VTYPE_INT32 = 5,
    GGUF_VTYPE_FLOAT32 = 6,
    GGUF_VTYPE_BOOL = 7,
    GGUF_VTYPE_STRING = 8,
    GGUF_VTYPE_ARRAY = 9,
    GGUF_VTYPE_UINT64 = 10,
    GGUF_VTYPE_INT64 = 11,
    GGUF_VTYPE_FLOAT64 = 12,
    GGUF_VTYPE_COUNT
};

typedef struct gguf_file gguf_file;

/* A string inside the mapped file: not NUL-terminated. */
typedef struct gguf_str {
    const char *ptr;
    uint64_t len;
} gguf_str;

/* Opens and validates a GGUF file. On success *out is owned by the caller,
 * free with gguf_close. Any thread. */
int gguf_open(const char *path, gguf_file **out, glimpse_err *err);

/* Same over a caller's buffer (tests, fuzzing). The buffer must outlive the
 * returned file; it is not copied. Tensor data must land 4-byte aligned in
 * memory (GLIMPSE_EUNSUPPORTED otherwise), as it does for any file with
 * general.alignment >= 4 in a 4-aligned buffer. */
int gguf_open_buffer(const void *data, size_t len, gguf_file **out, glimpse_err *err);

void gguf_close(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
uint32_t gguf_alignment(const gguf_file *f);

/* ---- metadata ----------------------------------------------------------- */

int64_t gguf_n_kv(const gguf_file *f);
/* Index of key, or -1 when absent. O(1). */
int64_t gguf_find_key(const gguf_file *f, const char *key);
/* Key and value type of the i-th pair in file order, 0 <= i < gguf_n_kv. */
gguf_str gguf_kv_key(const gguf_file *f, int64_t i);
enum gguf_vtype gguf_kv_type(const gguf_file *f, int64_t i);

/* Typed getters by key. They are strict like llama.cpp's loaders: the stored
 * type must be exactly the one asked for. Return 0, GLIMPSE_ENOTFOUND when the
 * key is absent, GLIMPSE_EFORMAT (message names key and both types) when the
 * type differs. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, glimpse_err *err);
int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out, glimpse_err *err);
int gguf_get_f32(const gguf_file *f, const char *key, float *out, glimpse_err *err);
int gguf_get_bool(const gguf_file *f, const char *key, bool *out, glimpse_err *err);
int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, glimpse_err *err);

/* Arrays: element type and count; elements of fixed-size types are contiguous
 * little-endian at *data (possibly unaligned: read with memcpy). For string
 * arrays *data is the first element's length prefix: use gguf_get_arr_str. */
int gguf_get_arr(const gguf_file *f, const char *key, enum gguf_vtype *elem_type,
                 uint64_t *n, const void **data, glimpse_err *err);
/* The i-th string of a string array (O(1): offsets are indexed at open).
 * GLIMPSE_EFORMAT if the key is not an array of strings, GLIMPSE_EINVAL if
 * i >= its length. */
int gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t i, gguf_str *out,
                     glimpse_err *err);

/* ---- tensors ------------------------------------------------------------ */

int64_t gguf_n_tensors(const gguf_file *f);
/* The i-th tensor in file order, 0 <= i < gguf_n_tensors. Borrowed. */
const tensor *gguf_tensor_at(const gguf_file *f, int64_t i);
/* Tensor by name, or NULL. Borrowed. O(1). */
const tensor *gguf_find_tensor(const gguf_file *f, const char *name);
/* The packed copy (kn_packed_add_rows, kept in set) of the rows of the
 * matrices w[0..n-1] of f, one after the other, into *out, when the kernels
 * multiply them faster packed (n = 1 and out = w: a matrix replaced by its
 * packed copy); w[0] NULL or no packed layout: nothing happens. Then, unless
 * keep_file (the file's copy is still read, e.g. token rows looked up),
 * lets the system take back the mapped pages that hold only the file's
 * copies (a read would still see them, from the file; nothing for
 * gguf_open_buffer). Errors: GLIMPSE_ENOMEM. */
struct kn_packed;
int gguf_pack_matrix(const gguf_file *f, struct kn_packed *set, const tensor **w, int n, const tensor **out,
                     bool keep_file, glimpse_err *err);

#endif /* GLIMPSE_GGUF_H */
