/*
 * check_gguf.c — the GGUF reader against valid files (every value type, every
 * tensor field, v2 and v3, default and custom alignment, a file written by
 * llama.cpp's gguf-py) and against a table of malformed ones.
 *
 * Malformed inputs are made by a tiny builder below: it writes a valid file
 * and remembers where each interesting field is, and each table row
 * overwrites one field. Every input is placed right before a guard page
 * (guarded_copy) so that any read past the end faults instead of passing.
 */
#include "gguf.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>

/* ---- a tiny GGUF builder ----------------------------------------------------- */

/* Fields the malformed-file table overwrites: byte offsets in the built file. */
enum mark {
    M_MAGIC, M_VERSION, M_N_TENSORS, M_N_KV,
    M_ALIGN_TYPE, M_ALIGN_VAL,
    M_U8_KEY_LEN, M_U8_KEY, M_U32_TYPE, M_STR_LEN,
    M_ARR_I32_ETYPE, M_ARR_I32_N, M_ARR_STR_N, M_ARR_STR_E1_LEN,
    M_T0_NAME_LEN, M_T0_NAME, M_T0_N_DIMS, M_T0_NE0, M_T0_NE1, M_T0_TYPE, M_T0_OFFSET,
    M_T1_NE0, M_T1_OFFSET, M_T3_NAME, M_T4_NE0, M_T4_OFFSET,
    M_COUNT
};

typedef struct builder {
    uint8_t *buf;
    size_t len, cap;
    size_t mark[M_COUNT];
} builder;

static void put(builder *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->buf = realloc(b->buf, b->cap);
        ck_assert_ptr_nonnull(b->buf);
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
}

static void put_u32(builder *b, uint32_t v) { put(b, &v, sizeof v); }
static void put_i32(builder *b, int32_t v) { put(b, &v, sizeof v); }
static void put_u64(builder *b, uint64_t v) { put(b, &v, sizeof v); }
static void put_i64(builder *b, int64_t v) { put(b, &v, sizeof v); }
static void put_str(builder *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
/* Remembers the current offset as field m; M_COUNT means: not a field we patch. */
static void mark(builder *b, enum mark m)
{
    if (m != M_COUNT)
        b->mark[m] = b->len;
}

/* Starts a KV: key and value type. */
static void kv(builder *b, const char *key, enum gguf_vtype type, enum mark key_len_mark, enum mark type_mark)
{
    if (key_len_mark != M_COUNT)
        mark(b, key_len_mark);
    put_str(b, key);
    if (type_mark != M_COUNT)
        mark(b, type_mark);
    put_i32(b, (int32_t)type);
}

/* The tensors of the valid file: every dimensionality, block and plain types. */
static const struct {
    const char *name;
    int type, n_dims;
    int64_t ne[4];
    size_t nbytes;
} tensors[] = {
    { "w.f32", DTYPE_F32, 2, { 8, 2, 1, 1 }, 64 },
    { "w.q8_0", DTYPE_Q8_0, 2, { 64, 3, 1, 1 }, 2 * 34 * 3 },
    { "w.q4_K", DTYPE_Q4_K, 1, { 256, 1, 1, 1 }, 144 },
    { "w.f16", DTYPE_F16, 3, { 4, 2, 2, 1 }, 32 },
    { "w.bf16", DTYPE_BF16, 4, { 2, 1, 2, 2 }, 16 },
};
#define N_TENSORS ((int)(sizeof tensors / sizeof tensors[0]))
#define N_KV 17

static uint8_t data_byte(int t, size_t i) { return (uint8_t)(i * 7 + (size_t)t * 31 + 1); }

/* Builds the valid test file. align 0 means: no general.alignment key (the
 * default 32 applies). The last tensor ends the file, without padding. */
static void build(builder *b, uint32_t align, uint32_t version)
{
    memset(b, 0, sizeof *b);
    uint32_t a = align ? align : 32;

    mark(b, M_MAGIC);
    put(b, "GGUF", 4);
    mark(b, M_VERSION);
    put_u32(b, version);
    mark(b, M_N_TENSORS);
    put_i64(b, N_TENSORS);
    mark(b, M_N_KV);
    put_i64(b, align ? N_KV : N_KV - 1);

    if (align) {
        kv(b, "general.alignment", GGUF_VTYPE_UINT32, M_COUNT, M_ALIGN_TYPE);
        mark(b, M_ALIGN_VAL);
        put_u32(b, align);
    }
    kv(b, "t.u8", GGUF_VTYPE_UINT8, M_U8_KEY_LEN, M_COUNT);
    put(b, &(uint8_t){ 200 }, 1);
    b->mark[M_U8_KEY] = b->mark[M_U8_KEY_LEN] + 8;
    kv(b, "t.i8", GGUF_VTYPE_INT8, M_COUNT, M_COUNT);
    put(b, &(int8_t){ -5 }, 1);
    kv(b, "t.u16", GGUF_VTYPE_UINT16, M_COUNT, M_COUNT);
    put(b, &(uint16_t){ 60000 }, 2);
    kv(b, "t.i16", GGUF_VTYPE_INT16, M_COUNT, M_COUNT);
    put(b, &(int16_t){ -30000 }, 2);
    kv(b, "t.u32", GGUF_VTYPE_UINT32, M_COUNT, M_U32_TYPE);
    put_u32(b, 4000000000u);
    kv(b, "t.i32", GGUF_VTYPE_INT32, M_COUNT, M_COUNT);
    put_i32(b, -2000000000);
    kv(b, "t.f32", GGUF_VTYPE_FLOAT32, M_COUNT, M_COUNT);
    put(b, &(float){ 1.5f }, 4);
    kv(b, "t.bool", GGUF_VTYPE_BOOL, M_COUNT, M_COUNT);
    put(b, &(uint8_t){ 1 }, 1);
    kv(b, "t.str", GGUF_VTYPE_STRING, M_COUNT, M_COUNT);
    mark(b, M_STR_LEN);
    put_str(b, "h\xc3\xa9llo");
    kv(b, "t.u64", GGUF_VTYPE_UINT64, M_COUNT, M_COUNT);
    put_u64(b, 0x123456789abcdef0u);
    kv(b, "t.i64", GGUF_VTYPE_INT64, M_COUNT, M_COUNT);
    put_i64(b, -((int64_t)1 << 40));
    kv(b, "t.f64", GGUF_VTYPE_FLOAT64, M_COUNT, M_COUNT);
    put(b, &(double){ 3.25 }, 8);

    kv(b, "t.arr_i32", GGUF_VTYPE_ARRAY, M_COUNT, M_COUNT);
    mark(b, M_ARR_I32_ETYPE);
    put_i32(b, GGUF_VTYPE_INT32);
    mark(b, M_ARR_I32_N);
    put_u64(b, 3);
    put_i32(b, 1);
    put_i32(b, -2);
    put_i32(b, 3);
    kv(b, "t.arr_str", GGUF_VTYPE_ARRAY, M_COUNT, M_COUNT);
    put_i32(b, GGUF_VTYPE_STRING);
    mark(b, M_ARR_STR_N);
    put_u64(b, 3);
    put_str(b, "a");
    mark(b, M_ARR_STR_E1_LEN);
    put_str(b, "");
    put_str(b, "ccc");
    kv(b, "t.arr_empty", GGUF_VTYPE_ARRAY, M_COUNT, M_COUNT);
    put_i32(b, GGUF_VTYPE_UINT8);
    put_u64(b, 0);
    kv(b, "t.arr_f64", GGUF_VTYPE_ARRAY, M_COUNT, M_COUNT);
    put_i32(b, GGUF_VTYPE_FLOAT64);
    put_u64(b, 2);
    put(b, &(double){ 0.5 }, 8);
    put(b, &(double){ -1.0 }, 8);

    uint64_t offset = 0;
    for (int t = 0; t < N_TENSORS; t++) {
        if (t == 0)
            mark(b, M_T0_NAME_LEN);
        put_str(b, tensors[t].name);
        if (t == 0)
            b->mark[M_T0_NAME] = b->mark[M_T0_NAME_LEN] + 8;
        if (t == 3)
            b->mark[M_T3_NAME] = b->len - strlen(tensors[t].name);
        if (t == 0)
            mark(b, M_T0_N_DIMS);
        put_u32(b, (uint32_t)tensors[t].n_dims);
        for (int j = 0; j < tensors[t].n_dims; j++) {
            if (j == 0)
                mark(b, t == 0 ? M_T0_NE0 : t == 1 ? M_T1_NE0 : t == 4 ? M_T4_NE0 : M_COUNT);
            if (t == 0 && j == 1)
                mark(b, M_T0_NE1);
            put_i64(b, tensors[t].ne[j]);
        }
        if (t == 0)
            mark(b, M_T0_TYPE);
        put_i32(b, tensors[t].type);
        mark(b, t == 0 ? M_T0_OFFSET : t == 1 ? M_T1_OFFSET : t == 4 ? M_T4_OFFSET : M_COUNT);
        put_u64(b, offset);
        offset += (tensors[t].nbytes + a - 1) / a * a;
    }
    while (b->len % a)
        put(b, "", 1);
    for (int t = 0; t < N_TENSORS; t++) {
        for (size_t i = 0; i < tensors[t].nbytes; i++)
            put(b, &(uint8_t){ data_byte(t, i) }, 1);
        while (t + 1 < N_TENSORS && b->len % a)
            put(b, "", 1);
    }
}

/* Opens len bytes of data from right before a guard page. */
static int open_guarded(const void *data, size_t len, glimpse_err *err)
{
    void *g = guarded_copy(data, len);
    ck_assert_ptr_nonnull(g);
    gguf_file *f = (gguf_file *)0x1;
    int rc = gguf_open_buffer(g, len, &f, err);
    if (rc == 0)
        gguf_close(f);
    else
        ck_assert_ptr_null(f);
    guarded_free(g, len);
    return rc;
}

/* ---- the valid file ------------------------------------------------------------ */

/* The typed keys both writers (ours in this file, gguf-py's) put in every
 * test file: their types and the scalars' values. */
static void check_typed_kvs(const gguf_file *f)
{
    static const struct { const char *key; enum gguf_vtype type; } types[] = {
        { "t.u8", GGUF_VTYPE_UINT8 },    { "t.i8", GGUF_VTYPE_INT8 },   { "t.u16", GGUF_VTYPE_UINT16 },
        { "t.i16", GGUF_VTYPE_INT16 },   { "t.u64", GGUF_VTYPE_UINT64 }, { "t.i64", GGUF_VTYPE_INT64 },
        { "t.f64", GGUF_VTYPE_FLOAT64 }, { "t.arr_i32", GGUF_VTYPE_ARRAY },
    };
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        int64_t idx = gguf_find_key(f, types[k].key);
        ck_assert_msg(idx >= 0, "%s missing", types[k].key);
        ck_assert_int_eq(gguf_kv_type(f, idx), types[k].type);
    }
    glimpse_err err = { 0 };
    uint32_t u32;
    int32_t i32;
    float f32;
    bool b;
    gguf_str s;
    ck_assert_int_eq(gguf_get_u32(f, "t.u32", &u32, &err), 0);
    ck_assert_uint_eq(u32, 4000000000u);
    ck_assert_int_eq(gguf_get_i32(f, "t.i32", &i32, &err), 0);
    ck_assert_int_eq(i32, -2000000000);
    ck_assert_int_eq(gguf_get_f32(f, "t.f32", &f32, &err), 0);
    ck_assert_float_eq(f32, 1.5f);
    ck_assert_int_eq(gguf_get_bool(f, "t.bool", &b, &err), 0);
    ck_assert(b);
    ck_assert_int_eq(gguf_get_str(f, "t.str", &s, &err), 0);
    ck_assert_uint_eq(s.len, 6);
    ck_assert_int_eq(memcmp(s.ptr, "h\xc3\xa9llo", 6), 0);
}

static void check_valid(const gguf_file *f, uint32_t align, uint32_t version)
{
    glimpse_err err = { 0 };
    ck_assert_uint_eq(gguf_version(f), version);
    ck_assert_uint_eq(gguf_alignment(f), align ? align : 32);
    ck_assert_int_eq(gguf_n_kv(f), align ? N_KV : N_KV - 1);
    ck_assert_int_eq(gguf_n_tensors(f), N_TENSORS);

    const void *p;
    enum gguf_vtype et;
    uint64_t n;
    check_typed_kvs(f);
    int64_t i = gguf_find_key(f, "t.u8");
    gguf_str key = gguf_kv_key(f, i);
    ck_assert_uint_eq(key.len, 4);
    ck_assert_int_eq(memcmp(key.ptr, "t.u8", 4), 0);
    ck_assert_int_eq(gguf_find_key(f, "t.u"), -1);
    ck_assert_int_eq(gguf_find_key(f, "t.u88"), -1);
    ck_assert_int_eq(gguf_find_key(f, "general.alignment") >= 0, align != 0);

    uint32_t u32;
    int32_t i32;
    float f32;
    bool b;
    gguf_str s;

    /* fixed-size arrays: contiguous little-endian elements */
    ck_assert_int_eq(gguf_get_arr(f, "t.arr_i32", &et, &n, &p, &err), 0);
    ck_assert_int_eq(et, GGUF_VTYPE_INT32);
    ck_assert_uint_eq(n, 3);
    int32_t ai[3];
    memcpy(ai, p, sizeof ai);
    ck_assert(ai[0] == 1 && ai[1] == -2 && ai[2] == 3);
    ck_assert_int_eq(gguf_get_arr(f, "t.arr_f64", &et, &n, &p, &err), 0);
    ck_assert_int_eq(et, GGUF_VTYPE_FLOAT64);
    ck_assert_uint_eq(n, 2);
    double ad[2];
    memcpy(ad, p, sizeof ad);
    ck_assert(ad[0] == 0.5 && ad[1] == -1.0);
    ck_assert_int_eq(gguf_get_arr(f, "t.arr_empty", &et, &n, &p, &err), 0);
    ck_assert_int_eq(et, GGUF_VTYPE_UINT8);
    ck_assert_uint_eq(n, 0);

    /* string arrays, by index */
    static const char *strs[] = { "a", "", "ccc" };
    ck_assert_int_eq(gguf_get_arr(f, "t.arr_str", &et, &n, &p, &err), 0);
    ck_assert_int_eq(et, GGUF_VTYPE_STRING);
    ck_assert_uint_eq(n, 3);
    for (uint64_t k = 0; k < 3; k++) {
        ck_assert_int_eq(gguf_get_arr_str(f, "t.arr_str", k, &s, &err), 0);
        ck_assert_uint_eq(s.len, strlen(strs[k]));
        ck_assert_int_eq(memcmp(s.ptr, strs[k], s.len), 0);
    }

    /* strict types, absent keys, bad indices */
    ck_assert_int_eq(gguf_get_u32(f, "t.i32", &u32, &err), GLIMPSE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "t.i32"));
    ck_assert_ptr_nonnull(strstr(err.msg, "i32"));
    ck_assert_int_eq(gguf_get_f32(f, "t.f64", &f32, &err), GLIMPSE_EFORMAT);
    ck_assert_int_eq(gguf_get_i32(f, "t.u32", &i32, &err), GLIMPSE_EFORMAT);
    ck_assert_int_eq(gguf_get_bool(f, "t.u8", &b, &err), GLIMPSE_EFORMAT);
    ck_assert_int_eq(gguf_get_str(f, "t.arr_str", &s, &err), GLIMPSE_EFORMAT);
    ck_assert_int_eq(gguf_get_arr(f, "t.str", &et, &n, &p, &err), GLIMPSE_EFORMAT);
    ck_assert_int_eq(gguf_get_u32(f, "absent", &u32, &err), GLIMPSE_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "absent"));
    ck_assert_int_eq(gguf_get_arr_str(f, "t.arr_str", 3, &s, &err), GLIMPSE_EINVAL);
    ck_assert_int_eq(gguf_get_arr_str(f, "t.arr_i32", 0, &s, &err), GLIMPSE_EFORMAT);
    ck_assert_int_eq(gguf_get_arr_str(f, "absent", 0, &s, &err), GLIMPSE_ENOTFOUND);

    /* tensors: infos, and data at the aligned place with the written bytes */
    const uint8_t *first = gguf_tensor_at(f, 0)->data;
    for (int t = 0; t < N_TENSORS; t++) {
        const tensor *x = gguf_tensor_at(f, t);
        ck_assert_ptr_eq(gguf_find_tensor(f, tensors[t].name), x);
        ck_assert_str_eq(x->name, tensors[t].name);
        ck_assert_int_eq(x->type, tensors[t].type);
        ck_assert_int_eq(x->n_dims, tensors[t].n_dims);
        for (int j = 0; j < 4; j++)
            ck_assert_int_eq(x->ne[j], tensors[t].ne[j]);
        ck_assert_uint_eq(x->nbytes, tensors[t].nbytes);
        ck_assert_uint_eq((size_t)((const uint8_t *)x->data - first) % (align ? align : 32), 0);
        for (size_t k = 0; k < x->nbytes; k++)
            if (((const uint8_t *)x->data)[k] != data_byte(t, k))
                ck_abort_msg("tensor %s byte %zu differs", x->name, k);
    }
    ck_assert_ptr_null(gguf_find_tensor(f, "w.f3"));
    ck_assert_ptr_null(gguf_find_tensor(f, "missing"));
    /* row r of a [64, 3] Q8_0 tensor is 2 blocks of 34 bytes further */
    const tensor *q = gguf_find_tensor(f, "w.q8_0");
    ck_assert_ptr_eq(tensor_row(q, 2), (const uint8_t *)q->data + 2 * 68);
}

static const struct { uint32_t align, version; } valid_variants[] = {
    { 64, 3 }, { 0, 3 }, { 64, 2 }, { 4, 3 }, { 256, 3 },
};

START_TEST(test_valid_roundtrip)
{
    builder b;
    build(&b, valid_variants[_i].align, valid_variants[_i].version);
    void *g = guarded_copy(b.buf, b.len);
    gguf_file *f = NULL;
    glimpse_err err = { 0 };
    ck_assert_msg(gguf_open_buffer(g, b.len, &f, &err) == 0, "%s", err.msg);
    check_valid(f, valid_variants[_i].align, valid_variants[_i].version);
    gguf_close(f);
    guarded_free(g, b.len);
    free(b.buf);
}
END_TEST

START_TEST(test_empty_file_ok)
{
    /* header only: no keys, no tensors, no data section */
    builder b = { 0 };
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_i64(&b, 0);
    put_i64(&b, 0);
    void *g = guarded_copy(b.buf, b.len);
    gguf_file *f = NULL;
    glimpse_err err = { 0 };
    ck_assert_int_eq(gguf_open_buffer(g, b.len, &f, &err), 0);
    ck_assert_int_eq(gguf_n_kv(f), 0);
    ck_assert_int_eq(gguf_n_tensors(f), 0);
    ck_assert_int_eq(gguf_find_key(f, "general.alignment"), -1);
    ck_assert_ptr_null(gguf_find_tensor(f, "x"));
    ck_assert_uint_eq(gguf_alignment(f), 32);
    gguf_close(f);
    gguf_close(NULL);
    guarded_free(g, b.len);
    free(b.buf);
}
END_TEST

/* general.alignment 1 is legal, but data that is not 4-byte aligned in
 * memory cannot be read in place: refused, not read misaligned. */
START_TEST(test_misaligned_data_refused)
{
    builder b;
    build(&b, 1, 3);
    /* place the file so that the data section starts at an odd address */
    size_t data_start = b.len - (64 + 204 + 144 + 32 + 16);
    char *buf = malloc(b.len + 16);
    char *p = buf + 8 - (uintptr_t)(buf + data_start) % 8 + 1;
    memcpy(p, b.buf, b.len);
    gguf_file *f = NULL;
    glimpse_err err = { 0 };
    ck_assert_int_eq(gguf_open_buffer(p, b.len, &f, &err), GLIMPSE_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "'w.f32' data is not 4-byte aligned"));
    /* the same bytes 4-aligned are fine */
    p += 3;
    memmove(p, p - 3, b.len);
    ck_assert_msg(gguf_open_buffer(p, b.len, &f, &err) == 0, "%s", err.msg);
    check_valid(f, 1, 3);
    gguf_close(f);
    free(buf);
    free(b.buf);
}
END_TEST

/* ---- malformed files --------------------------------------------------------------- */

static const struct bad {
    const char *what;
    enum mark at;
    int delta;       /* bytes after the mark */
    int width;       /* bytes overwritten: 1, 2, 4 or 8 */
    uint64_t value;  /* little-endian */
    int code;
    const char *msg; /* must appear in the message */
} bad[] = {
    { "bad magic", M_MAGIC, 0, 1, 'g', GLIMPSE_EFORMAT, "magic" },
    { "version 0", M_VERSION, 0, 4, 0, GLIMPSE_EFORMAT, "version 0" },
    { "version 1", M_VERSION, 0, 4, 1, GLIMPSE_EUNSUPPORTED, "version 1" },
    { "version 4", M_VERSION, 0, 4, 4, GLIMPSE_EUNSUPPORTED, "version 4" },
    { "big-endian v3", M_VERSION, 0, 4, 0x03000000, GLIMPSE_EFORMAT, "big-endian" },
    { "negative tensor count", M_N_TENSORS, 0, 8, (uint64_t)-1, GLIMPSE_EFORMAT, "negative" },
    { "negative key count", M_N_KV, 0, 8, (uint64_t)-1, GLIMPSE_EFORMAT, "negative" },
    { "huge key count", M_N_KV, 0, 8, INT64_MAX, GLIMPSE_EFORMAT, "keys" },
    { "key count 2^40", M_N_KV, 0, 8, (uint64_t)1 << 40, GLIMPSE_EFORMAT, "keys" },
    { "one key too many", M_N_KV, 0, 8, N_KV + 1, GLIMPSE_EFORMAT, NULL },
    { "huge tensor count", M_N_TENSORS, 0, 8, INT64_MAX, GLIMPSE_EFORMAT, "tensors" },
    { "tensor count 2^33", M_N_TENSORS, 0, 8, (uint64_t)1 << 33, GLIMPSE_EFORMAT, "tensors" },
    { "one tensor too many", M_N_TENSORS, 0, 8, N_TENSORS + 1, GLIMPSE_EFORMAT, NULL },
    { "key length past the end", M_U8_KEY_LEN, 0, 8, (uint64_t)1 << 62, GLIMPSE_EFORMAT, "truncated" },
    { "key length 2^64-1", M_U8_KEY_LEN, 0, 8, UINT64_MAX, GLIMPSE_EFORMAT, "truncated" },
    { "empty key", M_U8_KEY_LEN, 0, 8, 0, GLIMPSE_EFORMAT, "empty" },
    { "string value past the end", M_STR_LEN, 0, 8, UINT64_MAX, GLIMPSE_EFORMAT, "t.str" },
    { "array count overflows bytes", M_ARR_I32_N, 0, 8, (uint64_t)1 << 62, GLIMPSE_EFORMAT, "t.arr_i32" },
    { "array count 2^64-1", M_ARR_I32_N, 0, 8, UINT64_MAX, GLIMPSE_EFORMAT, "t.arr_i32" },
    { "array past the end", M_ARR_I32_N, 0, 8, 1 << 20, GLIMPSE_EFORMAT, "does not fit" },
    { "string array count huge", M_ARR_STR_N, 0, 8, (uint64_t)1 << 61, GLIMPSE_EFORMAT, "strings does not fit" },
    { "string element past the end", M_ARR_STR_E1_LEN, 0, 8, (uint64_t)1 << 40, GLIMPSE_EFORMAT, "t.arr_str" },
    { "value type 13", M_U32_TYPE, 0, 4, 13, GLIMPSE_EFORMAT, "invalid value type 13" },
    { "value type -1", M_U32_TYPE, 0, 4, (uint32_t)-1, GLIMPSE_EFORMAT, "t.u32" },
    { "array of arrays", M_ARR_I32_ETYPE, 0, 4, GGUF_VTYPE_ARRAY, GLIMPSE_EFORMAT, "array of arrays" },
    { "array element type 13", M_ARR_I32_ETYPE, 0, 4, 13, GLIMPSE_EFORMAT, "t.arr_i32" },
    { "array element type -7", M_ARR_I32_ETYPE, 0, 4, (uint32_t)-7, GLIMPSE_EFORMAT, "t.arr_i32" },
    { "duplicate key", M_U8_KEY, 2, 1, 'i', GLIMPSE_EFORMAT, "key 2 't.i8' duplicates key 1" },
    { "alignment of type i32", M_ALIGN_TYPE, 0, 4, GGUF_VTYPE_INT32, GLIMPSE_EFORMAT, "must be of type u32" },
    { "alignment of type f32", M_ALIGN_TYPE, 0, 4, GGUF_VTYPE_FLOAT32, GLIMPSE_EFORMAT, "general.alignment" },
    { "alignment 0", M_ALIGN_VAL, 0, 4, 0, GLIMPSE_EFORMAT, "power of two" },
    { "alignment 48", M_ALIGN_VAL, 0, 4, 48, GLIMPSE_EFORMAT, "power of two" },
    { "alignment 32: offsets no longer match", M_ALIGN_VAL, 0, 4, 32, GLIMPSE_EFORMAT, "w.q4_K" },
    { "alignment 2^31: data past the end", M_ALIGN_VAL, 0, 4, 1u << 31, GLIMPSE_EFORMAT, "data section" },
    { "misaligned offset", M_T1_OFFSET, 0, 8, 65, GLIMPSE_EFORMAT, "'w.q8_0' has offset 65, expected 64" },
    { "gap between tensors", M_T1_OFFSET, 0, 8, 128, GLIMPSE_EFORMAT, "w.q8_0" },
    { "first offset not 0", M_T0_OFFSET, 0, 8, 64, GLIMPSE_EFORMAT, "w.f32" },
    { "overlapping tensors", M_T4_OFFSET, 0, 8, 0, GLIMPSE_EFORMAT, "w.bf16" },
    { "offset 2^64-1", M_T4_OFFSET, 0, 8, UINT64_MAX, GLIMPSE_EFORMAT, "w.bf16" },
    { "n_dims 0", M_T0_N_DIMS, 0, 4, 0, GLIMPSE_EFORMAT, "'w.f32' has 0 dimensions" },
    { "n_dims 5", M_T0_N_DIMS, 0, 4, 5, GLIMPSE_EFORMAT, "5 dimensions" },
    { "n_dims 2^32-1", M_T0_N_DIMS, 0, 4, UINT32_MAX, GLIMPSE_EFORMAT, "w.f32" },
    { "ne0 not a multiple of the block", M_T1_NE0, 0, 8, 48, GLIMPSE_EFORMAT, "not a multiple of the block size 32" },
    { "ne0 33 for q8_0", M_T1_NE0, 0, 8, 33, GLIMPSE_EFORMAT, "w.q8_0" },
    { "negative ne1", M_T0_NE1, 0, 8, (uint64_t)-1, GLIMPSE_EFORMAT, "negative" },
    { "element count overflows", M_T0_NE0, 0, 8, (uint64_t)1 << 62, GLIMPSE_EFORMAT, "overflows the element count" },
    { "ne0 INT64_MAX", M_T0_NE0, 0, 8, INT64_MAX, GLIMPSE_EFORMAT, "w.f32" },
    { "byte size overflows", M_T0_NE0, 0, 8, (uint64_t)1 << 61, GLIMPSE_EFORMAT, "byte size overflows" },
    { "data past the end", M_T4_NE0, 0, 8, 4, GLIMPSE_EFORMAT, "'w.bf16' data" },
    { "data far past the end", M_T4_NE0, 0, 8, (uint64_t)1 << 60, GLIMPSE_EFORMAT, "end of the file" },
    { "type 10 (q2_K)", M_T0_TYPE, 0, 4, 10, GLIMPSE_EUNSUPPORTED, "type id 10" },
    { "type 15 (q8_K)", M_T0_TYPE, 0, 4, 15, GLIMPSE_EUNSUPPORTED, "q8_K" },
    { "type 9 (q8_1)", M_T0_TYPE, 0, 4, 9, GLIMPSE_EUNSUPPORTED, "w.f32" },
    { "type 39", M_T0_TYPE, 0, 4, 39, GLIMPSE_EUNSUPPORTED, "type id 39" },
    { "type -1", M_T0_TYPE, 0, 4, (uint32_t)-1, GLIMPSE_EUNSUPPORTED, "type id -1" },
    { "duplicate tensor name", M_T3_NAME, 3, 2, '3' | '2' << 8, GLIMPSE_EFORMAT, "tensor 3 'w.f32' duplicates the name of tensor 0" },
    { "NUL in tensor name", M_T0_NAME, 1, 1, 0, GLIMPSE_EFORMAT, "NUL" },
    { "tensor name of 64 bytes", M_T0_NAME_LEN, 0, 8, 64, GLIMPSE_EFORMAT, "limit is 63" },
    { "tensor name past the end", M_T0_NAME_LEN, 0, 8, (uint64_t)1 << 50, GLIMPSE_EFORMAT, "truncated" },
};

START_TEST(test_malformed)
{
    const struct bad *c = &bad[_i];
    builder b;
    build(&b, 64, 3);
    ck_assert(b.mark[c->at] != 0 || c->at == M_MAGIC);
    memcpy(b.buf + b.mark[c->at] + c->delta, &c->value, (size_t)c->width);
    glimpse_err err = { 0 };
    int rc = open_guarded(b.buf, b.len, &err);
    ck_assert_msg(rc == c->code, "%s: got %d (%s), want %d", c->what, rc, err.msg, c->code);
    ck_assert_int_eq(err.code, c->code);
    if (c->msg)
        ck_assert_msg(strstr(err.msg, c->msg), "%s: message \"%s\" lacks \"%s\"", c->what, err.msg, c->msg);
    free(b.buf);
}
END_TEST

/* Names reach messages (and so logs) with control and non-ASCII bytes masked. */
START_TEST(test_names_masked_in_messages)
{
    builder b;
    build(&b, 64, 3);
    b.buf[b.mark[M_T0_NAME] + 1] = '\n';
    b.buf[b.mark[M_T0_NAME] + 2] = 0xff;
    memcpy(b.buf + b.mark[M_T0_TYPE], &(int32_t){ 10 }, 4);
    glimpse_err err = { 0 };
    ck_assert_int_eq(open_guarded(b.buf, b.len, &err), GLIMPSE_EUNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "tensor 0 'w??32' has type id 10"), "%s", err.msg);
    free(b.buf);
}
END_TEST

/* Every proper prefix of a valid file is an error (the last tensor ends the
 * file), and none reads a byte past its end. */
START_TEST(test_truncated_everywhere)
{
    builder b;
    build(&b, valid_variants[_i].align, valid_variants[_i].version);
    ck_assert_int_eq(open_guarded(b.buf, b.len, NULL), 0);
    for (size_t len = 0; len < b.len; len++) {
        glimpse_err err = { 0 };
        int rc = open_guarded(b.buf, len, &err);
        if (rc != GLIMPSE_EFORMAT)
            ck_abort_msg("prefix of %zu bytes: got %d (%s)", len, rc, err.msg);
    }
    free(b.buf);
}
END_TEST

/* Random byte corruption: any result but a crash or an over-read. */
START_TEST(test_random_corruption)
{
    builder b;
    build(&b, 64, 3);
    uint8_t *copy = malloc(b.len);
    uint32_t s = 42;
    int n_ok = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(copy, b.buf, b.len);
        for (int k = 0; k < 1 + iter % 4; k++) {
            s = s * 1664525u + 1013904223u;
            size_t at = (s >> 8) % b.len;
            s = s * 1664525u + 1013904223u;
            copy[at] = (uint8_t)(s >> 24);
        }
        glimpse_err err = { 0 };
        int rc = open_guarded(copy, b.len, &err);
        if (rc == 0)
            n_ok++;
        else if (rc != GLIMPSE_EFORMAT && rc != GLIMPSE_EUNSUPPORTED && rc != GLIMPSE_ENOMEM)
            ck_abort_msg("iteration %d: unexpected code %d (%s)", iter, rc, err.msg);
    }
    /* most corruptions hit tensor data or values, which stay valid */
    ck_assert_int_gt(n_ok, 0);
    free(copy);
    free(b.buf);
}
END_TEST

/* ---- files ---------------------------------------------------------------------------- */

START_TEST(test_open_file)
{
    builder b;
    build(&b, 64, 3);
    char path[] = "/tmp/check_gguf_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, b.buf, b.len), (ssize_t)b.len);
    close(fd);

    gguf_file *f = NULL;
    glimpse_err err = { 0 };
    ck_assert_msg(gguf_open(path, &f, &err) == 0, "%s", err.msg);
    check_valid(f, 64, 3);
    gguf_close(f);

    /* a malformed file's message names the path */
    fd = open(path, O_WRONLY | O_TRUNC);
    ck_assert_int_eq(write(fd, b.buf, 30), 30);
    close(fd);
    ck_assert_int_eq(gguf_open(path, &f, &err), GLIMPSE_EFORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_ptr_null(f);

    /* empty file */
    fd = open(path, O_WRONLY | O_TRUNC);
    close(fd);
    ck_assert_int_eq(gguf_open(path, &f, &err), GLIMPSE_EFORMAT);
    unlink(path);

    ck_assert_int_eq(gguf_open(path, &f, &err), GLIMPSE_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    ck_assert_int_eq(gguf_open("/tmp", &f, &err), GLIMPSE_EIO);
    free(b.buf);
}
END_TEST

/* A file written by llama.cpp's gguf-py (tests/data/quant/README.md): an
 * independent writer must agree with us on every offset and value. */
START_TEST(test_gguf_py_file)
{
    gguf_file *f = NULL;
    glimpse_err err = { 0 };
    ck_assert_msg(gguf_open(source_path("tests/data/quant/gguf-py.gguf"), &f, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(gguf_version(f), 3);
    ck_assert_uint_eq(gguf_alignment(f), 64);

    gguf_str s;
    ck_assert_int_eq(gguf_get_str(f, "general.architecture", &s, &err), 0);
    ck_assert_int_eq(s.len == 12 && memcmp(s.ptr, "glimpse-test", 12) == 0, 1);
    check_typed_kvs(f);
    enum gguf_vtype et;
    uint64_t n;
    const void *p;
    ck_assert_int_eq(gguf_get_arr(f, "t.arr_i32", &et, &n, &p, &err), 0);
    ck_assert(et == GGUF_VTYPE_INT32 && n == 3);
    ck_assert_int_eq(gguf_get_arr_str(f, "t.arr_str", 2, &s, &err), 0);
    ck_assert_int_eq(s.len == 3 && memcmp(s.ptr, "ccc", 3) == 0, 1);

    static const struct { const char *name; int type; } types[] = {
        { "f32", DTYPE_F32 },   { "f16", DTYPE_F16 },   { "bf16", DTYPE_BF16 }, { "q4_0", DTYPE_Q4_0 },
        { "q4_1", DTYPE_Q4_1 }, { "q5_0", DTYPE_Q5_0 }, { "q5_1", DTYPE_Q5_1 }, { "q8_0", DTYPE_Q8_0 },
        { "q4_K", DTYPE_Q4_K }, { "q5_K", DTYPE_Q5_K }, { "q6_K", DTYPE_Q6_K },
    };
    ck_assert_int_eq(gguf_n_tensors(f), 11);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const tensor *t = gguf_find_tensor(f, types[k].name);
        ck_assert_ptr_nonnull(t);
        ck_assert_ptr_eq(gguf_tensor_at(f, (int64_t)k), t);
        ck_assert_int_eq(t->type, types[k].type);
        ck_assert_int_eq(t->n_dims, 2);
        ck_assert_int_eq(t->ne[1], 2);
        char rel[64];
        size_t len;
        snprintf(rel, sizeof rel, "tests/data/quant/%s.raw", types[k].name);
        void *raw = read_file(source_path(rel), &len);
        ck_assert_ptr_nonnull(raw);
        ck_assert_uint_eq(t->nbytes, len);
        ck_assert_uint_eq(dtype_row_size(t->type, t->ne[0]) * 2, len);
        ck_assert_int_eq(memcmp(t->data, raw, len), 0);
        free(raw);
    }
    gguf_close(f);
}
END_TEST

static Suite *gguf_suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    int n_variants = (int)(sizeof valid_variants / sizeof valid_variants[0]);
    tcase_add_loop_test(tc, test_valid_roundtrip, 0, n_variants);
    tcase_add_test(tc, test_empty_file_ok);
    tcase_add_test(tc, test_misaligned_data_refused);
    tcase_add_loop_test(tc, test_malformed, 0, (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(tc, test_names_masked_in_messages);
    tcase_add_loop_test(tc, test_truncated_everywhere, 0, n_variants);
    tcase_add_test(tc, test_random_corruption);
    tcase_add_test(tc, test_open_file);
    tcase_add_test(tc, test_gguf_py_file);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(gguf_suite());
}
