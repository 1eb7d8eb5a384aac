/*
 * fuzz_gguf — the GGUF reader on a file from an untrusted source: open the
 * bytes, then read every key with every typed getter and touch the first and
 * last byte of every tensor and dequantise its first row, so that any offset
 * or length the reader accepted but should not have shows up under ASan.
 */
#include "fuzz.h"
#include "gguf.h"

static void walk_kv(const gguf_file *f, size_t len)
{
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        gguf_str k = gguf_kv_key(f, i);
        FUZZ_CHECK(gguf_kv_type(f, i) < GGUF_VTYPE_COUNT);
        char key[256];
        if (k.len >= sizeof key)
            continue;
        memcpy(key, k.ptr, k.len);
        key[k.len] = '\0';
        glimpse_err e;
        uint32_t u;
        int32_t s;
        float x;
        bool b;
        gguf_str str;
        enum gguf_vtype et;
        uint64_t n;
        const void *p;
        /* a key with a NUL inside is found by its prefix, if at all */
        (void)gguf_get_u32(f, key, &u, &e);
        (void)gguf_get_i32(f, key, &s, &e);
        (void)gguf_get_f32(f, key, &x, &e);
        (void)gguf_get_bool(f, key, &b, &e);
        if (gguf_get_str(f, key, &str, &e) == 0)
            fuzz_touch(str.ptr, str.len);
        if (gguf_get_arr(f, key, &et, &n, &p, &e) == 0 && n) {
            if (et == GGUF_VTYPE_STRING) {
                FUZZ_CHECK(gguf_get_arr_str(f, key, 0, &str, &e) == 0);
                fuzz_touch(str.ptr, str.len);
                FUZZ_CHECK(gguf_get_arr_str(f, key, n - 1, &str, &e) == 0);
                fuzz_touch(str.ptr, str.len);
                int rc = gguf_get_arr_str(f, key, n, &str, &e);
                FUZZ_CHECK_ERR(rc, e);
            } else {
                /* bytes per element of the fixed-size types, by enum gguf_vtype */
                static const size_t elem_size[GGUF_VTYPE_COUNT] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
                FUZZ_CHECK(et < GGUF_VTYPE_COUNT && elem_size[et] && n <= len / elem_size[et]);
                fuzz_touch(p, n * elem_size[et]);
            }
        }
    }
}

static void walk_tensors(const gguf_file *f)
{
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const tensor *t = gguf_tensor_at(f, i);
        FUZZ_CHECK(t && t->name && t->n_dims >= 1 && t->n_dims <= 4);
        FUZZ_CHECK(gguf_find_tensor(f, t->name) != NULL);
        const dtype_info *ti = dtype_get(t->type);
        FUZZ_CHECK(ti != NULL);
        fuzz_touch(t->data, t->nbytes);
        /* the first row, at most 1024 values (a few blocks of any type) */
        float row[1024];
        int64_t n = t->ne[0] < 1024 ? t->ne[0] : 1024;
        n -= n % ti->block_size;
        if (n > 0 && ti->to_float && (size_t)(n / ti->block_size) * (size_t)ti->type_size <= t->nbytes)
            dequantize_row(t->type, t->data, row, n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    static int quiet;
    if (!quiet++)
        fuzz_quiet();
    gguf_file *f = NULL;
    glimpse_err e = { 0 };
    int rc = gguf_open_buffer(data, len, &f, &e);
    if (rc < 0) {
        FUZZ_CHECK_ERR(rc, e);
        return 0;
    }
    walk_kv(f, len);
    walk_tensors(f);
    gguf_close(f);
    return 0;
}
