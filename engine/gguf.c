/*
 * gguf.c — hardened GGUF v2/v3 reader (layout: shared gguf-vlm-spec.md §1).
 *
 * The whole file is validated at open, in one forward pass with a bounds-
 * checked cursor: every length and count is compared with the bytes that
 * remain before it is used or allocated for, every size product is overflow-
 * checked, and tensor offsets must be exactly where llama.cpp's reader
 * (gguf.cpp: gguf_init_from_file_impl) expects them. Afterwards nothing is
 * re-validated: accessors index tables built at open.
 *
 * Keys and tensor names are found through open-addressing hash tables, which
 * also catch duplicates in linear time (a hostile file can hold millions of
 * keys, where a pairwise check would take hours).
 */
#include "gguf.h"

#include "kernels/kernels.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
/* ggml's GGML_MAX_NAME (64) including the NUL: longer names fail in llama.cpp. */
#define GGUF_MAX_NAME 64
/* Alignment of tensor data in memory that tensor.h's readers need (f32). */
#define WEIGHT_ALIGN 4

/* Smallest encodings, used to bound counts by the bytes that remain before
 * allocating for them: a KV is a non-empty key (8+1), a type (4) and at
 * least one value byte; a tensor info is a name (8+0), n_dims (4), one ne
 * (8), a type (4) and an offset (8). */
#define MIN_KV_BYTES 14
#define MIN_TENSOR_INFO_BYTES 32

struct gguf_kv {
    gguf_str key;
    enum gguf_vtype type;       /* GGUF_VTYPE_ARRAY for arrays */
    enum gguf_vtype elem_type;  /* arrays: element type */
    uint64_t n;                 /* arrays: element count */
    const uint8_t *val;         /* scalar value, or the first array element */
    const uint8_t **strs;       /* string arrays: each element's length prefix; owned */
};

struct gguf_file {
    const uint8_t *base;        /* the whole file */
    size_t size;
    void *map;                  /* owned mmap, NULL for gguf_open_buffer */
    uint32_t version;
    uint32_t alignment;
    int64_t n_kv;
    struct gguf_kv *kv;         /* [n_kv] */
    int64_t n_tensors;
    tensor *tensors;            /* [n_tensors] */
    char (*names)[GGUF_MAX_NAME]; /* [n_tensors] NUL-terminated tensor names */
    int64_t *kv_hash;           /* [kv_hash_cap] index+1 of a key, 0 = empty */
    size_t kv_hash_cap;         /* power of two */
    int64_t *tensor_hash;       /* [tensor_hash_cap] index+1 of a tensor, 0 = empty */
    size_t tensor_hash_cap;
};

/* ---- bounds-checked cursor -------------------------------------------------- */

typedef struct cursor {
    const uint8_t *p;
    size_t len;
    size_t pos;
    glimpse_err *err;
    char where[160]; /* what is being read, for messages: "key 3 'general.name'" */
} cursor;

/* Sets c->where to "<kind> <i> '<name>'" with at most 64 bytes of the name
 * and anything but printable ASCII shown as '?': names come from the file,
 * and a hostile one must not put control characters into logs. */
static void describe(cursor *c, const char *kind, int64_t i, const char *name, size_t len)
{
    char safe[65];
    size_t n = len < sizeof safe - 1 ? len : sizeof safe - 1;
    for (size_t k = 0; k < n; k++) {
        unsigned char ch = (unsigned char)name[k];
        safe[k] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    safe[n] = '\0';
    snprintf(c->where, sizeof c->where, "%s %" PRId64 " '%s'%s", kind, i, safe, len > n ? "..." : "");
}

static size_t cur_remain(const cursor *c) { return c->len - c->pos; }

static int truncated(cursor *c, const char *what, uint64_t need)
{
    return err_set(c->err, GLIMPSE_EFORMAT,
                   "GGUF truncated: %s of %s needs %" PRIu64 " bytes at offset %zu, file has %zu",
                   what, c->where, need, c->pos, c->len);
}

/* Borrows n bytes at the cursor and advances past them; NULL (error set)
 * when fewer remain. Never NULL for n == 0: p is never NULL. */
static const uint8_t *cur_take(cursor *c, uint64_t n, const char *what)
{
    if (n > cur_remain(c)) {
        truncated(c, what, n);
        return NULL;
    }
    const uint8_t *b = c->p + c->pos;
    c->pos += (size_t)n;
    return b;
}

/* Copies a fixed-size little-endian scalar (the host is little-endian:
 * tensor.h's blocks are read in place too) out of the possibly unaligned file. */
static int cur_read(cursor *c, const char *what, void *dst, size_t n)
{
    const uint8_t *b = cur_take(c, n, what);
    if (!b)
        return GLIMPSE_EFORMAT;
    memcpy(dst, b, n);
    return 0;
}

/* A length-prefixed string; the bytes stay in the file. */
static int cur_str(cursor *c, const char *what, gguf_str *s)
{
    int rc = cur_read(c, what, &s->len, sizeof s->len);
    if (rc)
        return rc;
    s->ptr = (const char *)cur_take(c, s->len, what);
    return s->ptr ? 0 : GLIMPSE_EFORMAT;
}

/* ---- value types ------------------------------------------------------------ */

static const struct {
    const char *name;
    unsigned size; /* bytes of one value; 0 for string and array */
} vtype_table[GGUF_VTYPE_COUNT] = {
    [GGUF_VTYPE_UINT8] = { "u8", 1 },     [GGUF_VTYPE_INT8] = { "i8", 1 },
    [GGUF_VTYPE_UINT16] = { "u16", 2 },   [GGUF_VTYPE_INT16] = { "i16", 2 },
    [GGUF_VTYPE_UINT32] = { "u32", 4 },   [GGUF_VTYPE_INT32] = { "i32", 4 },
    [GGUF_VTYPE_FLOAT32] = { "f32", 4 },  [GGUF_VTYPE_BOOL] = { "bool", 1 },
    [GGUF_VTYPE_STRING] = { "str", 0 },   [GGUF_VTYPE_ARRAY] = { "array", 0 },
    [GGUF_VTYPE_UINT64] = { "u64", 8 },   [GGUF_VTYPE_INT64] = { "i64", 8 },
    [GGUF_VTYPE_FLOAT64] = { "f64", 8 },
};

static const char *vtype_name(enum gguf_vtype t)
{
    return (unsigned)t < GGUF_VTYPE_COUNT ? vtype_table[t].name : "invalid";
}

/* ---- hash tables ------------------------------------------------------------- */

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)p[i];
        h *= 1099511628211u;
    }
    return h;
}

/* A power of two at least twice n, so probes stay short. Callers have
 * bounded n by the file size, so this cannot overflow. */
static size_t hash_capacity(int64_t n)
{
    size_t cap = 8;
    while (cap < (size_t)n * 2)
        cap *= 2;
    return cap;
}

static gguf_str kv_name(const gguf_file *f, int64_t i) { return f->kv[i].key; }

static gguf_str tensor_name(const gguf_file *f, int64_t i)
{
    return (gguf_str){ f->names[i], strlen(f->names[i]) };
}

/* Finds name in table; returns the slot holding it or the empty slot where
 * it would go. */
static size_t hash_slot(const gguf_file *f, const int64_t *table, size_t cap,
                        gguf_str (*name_of)(const gguf_file *, int64_t), const char *name, size_t len)
{
    size_t slot = (size_t)hash_bytes(name, len) & (cap - 1);
    for (;;) {
        int64_t idx = table[slot];
        if (idx == 0)
            return slot;
        gguf_str s = name_of(f, idx - 1);
        if (s.len == len && memcmp(s.ptr, name, len) == 0)
            return slot;
        slot = (slot + 1) & (cap - 1);
    }
}

/* ---- parsing ------------------------------------------------------------------- */

static int parse_header(cursor *c, gguf_file *f, int64_t *n_tensors, int64_t *n_kv)
{
    int rc;
    const uint8_t *magic = cur_take(c, 4, "magic");
    if (!magic)
        return GLIMPSE_EFORMAT;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0)
        return err_set(c->err, GLIMPSE_EFORMAT, "not a GGUF file: magic is %02x %02x %02x %02x, expected 'GGUF'",
                       magic[0], magic[1], magic[2], magic[3]);
    if ((rc = cur_read(c, "version", &f->version, sizeof f->version)))
        return rc;
    if (f->version != 2 && f->version != 3)
        return err_set(c->err, f->version == 0 || (f->version & 0xffff) == 0 ? GLIMPSE_EFORMAT : GLIMPSE_EUNSUPPORTED,
                       "GGUF version %" PRIu32 " is not supported (only 2 and 3)%s", f->version,
                       f->version != 0 && (f->version & 0xffff) == 0 ? "; the file may be big-endian" : "");
    if ((rc = cur_read(c, "tensor count", n_tensors, sizeof *n_tensors)) ||
        (rc = cur_read(c, "key-value count", n_kv, sizeof *n_kv)))
        return rc;
    if (*n_tensors < 0 || *n_kv < 0)
        return err_set(c->err, GLIMPSE_EFORMAT, "GGUF header has negative counts: %" PRId64 " tensors, %" PRId64 " keys",
                       *n_tensors, *n_kv);
    return 0;
}

/* Reads one value of a fixed-size type, a string, or an array body into kv. */
static int parse_value(cursor *c, struct gguf_kv *kv)
{
    int rc;
    if (kv->type == GGUF_VTYPE_STRING) {
        gguf_str s;
        kv->val = c->p + c->pos;
        return cur_str(c, "string value", &s);
    }
    if (kv->type != GGUF_VTYPE_ARRAY) {
        kv->val = cur_take(c, vtype_table[kv->type].size, "value");
        return kv->val ? 0 : GLIMPSE_EFORMAT;
    }

    int32_t et;
    if ((rc = cur_read(c, "array element type", &et, sizeof et)) ||
        (rc = cur_read(c, "array length", &kv->n, sizeof kv->n)))
        return rc;
    if (et == GGUF_VTYPE_ARRAY)
        return err_set(c->err, GLIMPSE_EFORMAT, "%s is an array of arrays, which GGUF readers reject", c->where);
    if (et < 0 || et >= GGUF_VTYPE_COUNT)
        return err_set(c->err, GLIMPSE_EFORMAT, "%s is an array of invalid value type %" PRId32, c->where, et);
    kv->elem_type = (enum gguf_vtype)et;
    kv->val = c->p + c->pos;

    if (kv->elem_type != GGUF_VTYPE_STRING) {
        uint64_t bytes;
        if (!u64_mul(kv->n, vtype_table[et].size, &bytes) || bytes > cur_remain(c))
            return err_set(c->err, GLIMPSE_EFORMAT,
                           "%s: array of %" PRIu64 " %s values does not fit in the %zu bytes left in the file",
                           c->where, kv->n, vtype_name(kv->elem_type), cur_remain(c));
        return cur_take(c, bytes, "array") ? 0 : GLIMPSE_EFORMAT;
    }

    /* Each string takes at least its 8-byte length: bound the count before
     * allocating the index. */
    if (kv->n > cur_remain(c) / 8)
        return err_set(c->err, GLIMPSE_EFORMAT,
                       "%s: array of %" PRIu64 " strings does not fit in the %zu bytes left in the file",
                       c->where, kv->n, cur_remain(c));
    kv->strs = malloc((size_t)kv->n * sizeof *kv->strs + 1);
    if (!kv->strs)
        return err_set(c->err, GLIMPSE_ENOMEM, "%s: no memory to index %" PRIu64 " strings", c->where, kv->n);
    for (uint64_t i = 0; i < kv->n; i++) {
        gguf_str s;
        kv->strs[i] = c->p + c->pos;
        if ((rc = cur_str(c, "array string", &s)))
            return rc;
    }
    return 0;
}

static int parse_kvs(cursor *c, gguf_file *f, int64_t n_kv)
{
    int rc;
    if ((uint64_t)n_kv > cur_remain(c) / MIN_KV_BYTES)
        return err_set(c->err, GLIMPSE_EFORMAT, "GGUF header claims %" PRId64 " keys but only %zu bytes follow",
                       n_kv, cur_remain(c));
    f->kv_hash_cap = hash_capacity(n_kv);
    f->kv = calloc((size_t)n_kv + 1, sizeof *f->kv);
    f->kv_hash = calloc(f->kv_hash_cap, sizeof *f->kv_hash);
    if (!f->kv || !f->kv_hash)
        return err_set(c->err, GLIMPSE_ENOMEM, "no memory for %" PRId64 " keys", n_kv);

    for (int64_t i = 0; i < n_kv; i++) {
        struct gguf_kv *kv = &f->kv[i];
        snprintf(c->where, sizeof c->where, "key %" PRId64, i);
        if ((rc = cur_str(c, "name", &kv->key)))
            return rc;
        if (kv->key.len == 0)
            return err_set(c->err, GLIMPSE_EFORMAT, "key %" PRId64 " has an empty name", i);
        describe(c, "key", i, kv->key.ptr, (size_t)kv->key.len);

        size_t slot = hash_slot(f, f->kv_hash, f->kv_hash_cap, kv_name, kv->key.ptr, (size_t)kv->key.len);
        if (f->kv_hash[slot] != 0)
            return err_set(c->err, GLIMPSE_EFORMAT, "%s duplicates key %" PRId64, c->where, f->kv_hash[slot] - 1);
        f->kv_hash[slot] = i + 1;
        f->n_kv = i + 1; /* from here on kv[i] is owned by f (its strs) */

        int32_t type;
        if ((rc = cur_read(c, "value type", &type, sizeof type)))
            return rc;
        if (type < 0 || type >= GGUF_VTYPE_COUNT)
            return err_set(c->err, GLIMPSE_EFORMAT, "%s has invalid value type %" PRId32, c->where, type);
        kv->type = (enum gguf_vtype)type;
        if ((rc = parse_value(c, kv)))
            return rc;
    }
    return 0;
}

/* general.alignment, if present, must be a u32 power of two (llama.cpp). */
static int parse_alignment(gguf_file *f, glimpse_err *err)
{
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = gguf_find_key(f, "general.alignment");
    if (i < 0)
        return 0;
    if (f->kv[i].type != GGUF_VTYPE_UINT32)
        return err_set(err, GLIMPSE_EFORMAT, "key 'general.alignment' must be of type u32 but is %s",
                       vtype_name(f->kv[i].type));
    memcpy(&f->alignment, f->kv[i].val, sizeof f->alignment);
    if (f->alignment == 0 || (f->alignment & (f->alignment - 1)) != 0)
        return err_set(err, GLIMPSE_EFORMAT, "general.alignment %" PRIu32 " is not a power of two", f->alignment);
    return 0;
}

static int parse_tensor_info(cursor *c, gguf_file *f, int64_t i, uint64_t *offset)
{
    tensor *t = &f->tensors[i];
    gguf_str name;
    int rc;

    snprintf(c->where, sizeof c->where, "tensor info %" PRId64, i);
    if ((rc = cur_str(c, "name", &name)))
        return rc;
    if (name.len >= GGUF_MAX_NAME)
        return err_set(c->err, GLIMPSE_EFORMAT, "tensor %" PRId64 " name is %" PRIu64 " bytes long, the limit is %d",
                       i, name.len, GGUF_MAX_NAME - 1);
    if (memchr(name.ptr, '\0', (size_t)name.len))
        return err_set(c->err, GLIMPSE_EFORMAT, "tensor %" PRId64 " name contains a NUL byte", i);
    memcpy(f->names[i], name.ptr, (size_t)name.len);
    f->names[i][name.len] = '\0';
    t->name = f->names[i];
    describe(c, "tensor", i, t->name, (size_t)name.len);

    size_t slot = hash_slot(f, f->tensor_hash, f->tensor_hash_cap, tensor_name, t->name, (size_t)name.len);
    if (f->tensor_hash[slot] != 0)
        return err_set(c->err, GLIMPSE_EFORMAT, "%s duplicates the name of tensor %" PRId64, c->where,
                       f->tensor_hash[slot] - 1);
    f->tensor_hash[slot] = i + 1;

    uint32_t n_dims;
    if ((rc = cur_read(c, "n_dims", &n_dims, sizeof n_dims)))
        return rc;
    if (n_dims < 1 || n_dims > 4)
        return err_set(c->err, GLIMPSE_EFORMAT, "%s has %" PRIu32 " dimensions, expected 1 to 4", c->where,
                       n_dims);
    t->n_dims = (int)n_dims;
    uint64_t n_elems = 1;
    t->ne[0] = t->ne[1] = t->ne[2] = t->ne[3] = 1;
    for (int j = 0; j < 4; j++) {
        if (j < t->n_dims && (rc = cur_read(c, "shape", &t->ne[j], sizeof t->ne[j])))
            return rc;
        if (t->ne[j] < 0)
            return err_set(c->err, GLIMPSE_EFORMAT, "%s dimension %d is negative (%" PRId64 ")", c->where, j,
                           t->ne[j]);
        if (!u64_mul(n_elems, (uint64_t)t->ne[j], &n_elems) || n_elems > INT64_MAX)
            return err_set(c->err, GLIMPSE_EFORMAT,
                           "%s shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] overflows the element count",
                           c->where, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    }

    int32_t type;
    if ((rc = cur_read(c, "type", &type, sizeof type)))
        return rc;
    const dtype_info *ti = dtype_get(type);
    if (!ti || !ti->is_weight)
        return err_set(c->err, GLIMPSE_EUNSUPPORTED, "%s has type id %" PRId32 "%s%s%s, which is not supported",
                       c->where, type, ti ? " (" : "", ti ? ti->name : "", ti ? ")" : "");
    t->type = type;
    if (t->ne[0] % ti->block_size != 0)
        return err_set(c->err, GLIMPSE_EFORMAT, "%s of type %s has rows of %" PRId64
                       " elements, not a multiple of the block size %d", c->where, ti->name, t->ne[0], ti->block_size);

    /* nbytes = (ne0/block)·type_size·ne1·ne2·ne3 */
    size_t nbytes = (size_t)ti->type_size;
    bool ok = size_mul(nbytes, (size_t)(t->ne[0] / ti->block_size), &nbytes);
    for (int j = 1; j < 4; j++)
        ok = ok && size_mul(nbytes, (size_t)t->ne[j], &nbytes);
    if (!ok)
        return err_set(c->err, GLIMPSE_EFORMAT, "%s byte size overflows", c->where);
    t->nbytes = nbytes;

    return cur_read(c, "data offset", offset, sizeof *offset);
}

/* Lays the data out as llama.cpp requires: tensor i starts at
 * data_start + Σ_{k<i} PAD(nbytes_k, alignment), exactly. */
static int place_tensors(cursor *c, gguf_file *f, const uint64_t *offsets)
{
    size_t align = f->alignment;
    size_t data_start = c->pos;
    if (f->n_tensors > 0 && (!size_add(data_start, align - 1, &data_start) || (data_start &= ~(align - 1)) > c->len))
        return err_set(c->err, GLIMPSE_EFORMAT, "GGUF data section (aligned to %zu) starts past the end of the file",
                       align);

    uint64_t expected = 0;
    for (int64_t i = 0; i < f->n_tensors; i++) {
        tensor *t = &f->tensors[i];
        describe(c, "tensor", i, t->name, strlen(t->name));
        if (offsets[i] != expected)
            return err_set(c->err, GLIMPSE_EFORMAT, "%s has offset %" PRIu64 ", expected %" PRIu64, c->where,
                           offsets[i], expected);
        uint64_t start, end;
        if (!u64_add(data_start, offsets[i], &start) || !u64_add(start, t->nbytes, &end) || end > f->size)
            return err_set(c->err, GLIMPSE_EFORMAT,
                           "%s data (%zu bytes at offset %" PRIu64 ") extends past the end of the file (%zu bytes)",
                           c->where, t->nbytes, offsets[i], f->size);
        t->data = f->base + start;
        /* end <= file size, so the padded end cannot overflow */
        expected = (offsets[i] + t->nbytes + align - 1) & ~(uint64_t)(align - 1);
    }

    /* Blocks and floats are read in place through typed pointers: only a
     * file with general.alignment < 4 (or a misplaced caller buffer) can
     * break this, and no writer produces one by default. Checked after the
     * layout so that a malformed file is reported as such. */
    for (int64_t i = 0; i < f->n_tensors; i++) {
        if ((uintptr_t)f->tensors[i].data % WEIGHT_ALIGN != 0) {
            describe(c, "tensor", i, f->tensors[i].name, strlen(f->tensors[i].name));
            return err_set(c->err, GLIMPSE_EUNSUPPORTED, "%s data is not %d-byte aligned in memory (file alignment %zu)",
                           c->where, WEIGHT_ALIGN, align);
        }
    }
    return 0;
}

static int parse_tensors(cursor *c, gguf_file *f, int64_t n_tensors)
{
    uint64_t *offsets = NULL;
    int rc;
    if ((uint64_t)n_tensors > cur_remain(c) / MIN_TENSOR_INFO_BYTES)
        return err_set(c->err, GLIMPSE_EFORMAT, "GGUF header claims %" PRId64 " tensors but only %zu bytes follow the keys",
                       n_tensors, cur_remain(c));
    f->tensor_hash_cap = hash_capacity(n_tensors);
    f->tensors = calloc((size_t)n_tensors + 1, sizeof *f->tensors);
    f->names = calloc((size_t)n_tensors + 1, sizeof *f->names);
    f->tensor_hash = calloc(f->tensor_hash_cap, sizeof *f->tensor_hash);
    offsets = calloc((size_t)n_tensors + 1, sizeof *offsets);
    if (!f->tensors || !f->names || !f->tensor_hash || !offsets) {
        rc = err_set(c->err, GLIMPSE_ENOMEM, "no memory for %" PRId64 " tensors", n_tensors);
        goto fail;
    }
    for (int64_t i = 0; i < n_tensors; i++)
        if ((rc = parse_tensor_info(c, f, i, &offsets[i])))
            goto fail;
    f->n_tensors = n_tensors;
    rc = place_tensors(c, f, offsets);
fail:
    free(offsets);
    return rc;
}

int gguf_open_buffer(const void *data, size_t len, gguf_file **out, glimpse_err *err)
{
    int64_t n_tensors, n_kv;
    int rc;
    *out = NULL;
    if (!data && len > 0)
        return err_set(err, GLIMPSE_EINVAL, "gguf_open_buffer: NULL data");
    gguf_file *f = calloc(1, sizeof *f);
    if (!f)
        return err_set(err, GLIMPSE_ENOMEM, "no memory for a GGUF file");
    f->base = data;
    f->size = len;

    cursor c = { .p = data ? data : (const void *)"", .len = len, .err = err, .where = "the header" };
    if ((rc = parse_header(&c, f, &n_tensors, &n_kv)) || (rc = parse_kvs(&c, f, n_kv)) ||
        (rc = parse_alignment(f, err)) || (rc = parse_tensors(&c, f, n_tensors)))
        goto fail;
    *out = f;
    return 0;
fail:
    gguf_close(f);
    return rc;
}

int gguf_open(const char *path, gguf_file **out, glimpse_err *err)
{
    void *map = NULL;
    size_t len = 0;
    int rc;
    *out = NULL;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, GLIMPSE_EIO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = err_set(err, GLIMPSE_EIO, "cannot stat '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(err, GLIMPSE_EIO, "'%s' is not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        rc = err_set(err, GLIMPSE_ELIMIT, "'%s' is too large to map", path);
        goto fail;
    }
    len = (size_t)st.st_size;
    /* mmap of 0 bytes fails; an empty file is then reported as truncated */
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            map = NULL;
            rc = err_set(err, GLIMPSE_EIO, "cannot map '%s': %s", path, strerror(errno));
            goto fail;
        }
    }
    close(fd);
    fd = -1;

    if ((rc = gguf_open_buffer(map ? map : "", len, out, err)))
        goto fail;
    (*out)->map = map;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    if (map)
        munmap(map, len);
    if (err && rc != 0 && rc != GLIMPSE_EIO && rc != GLIMPSE_ELIMIT) {
        /* prefix the parser's message with the path */
        char msg[GLIMPSE_ERR_MSG_LEN];
        snprintf(msg, sizeof msg, "%s", err->msg);
        err_set(err, rc, "%s: %s", path, msg);
    }
    return rc;
}

void gguf_close(gguf_file *f)
{
    if (!f)
        return;
    for (int64_t i = 0; f->kv && i < f->n_kv; i++)
        free(f->kv[i].strs);
    free(f->kv);
    free(f->kv_hash);
    free(f->tensors);
    free(f->names);
    free(f->tensor_hash);
    if (f->map)
        munmap(f->map, f->size);
    free(f);
}

/* ---- accessors ------------------------------------------------------------------ */

uint32_t gguf_version(const gguf_file *f) { return f->version; }
uint32_t gguf_alignment(const gguf_file *f) { return f->alignment; }
int64_t gguf_n_kv(const gguf_file *f) { return f->n_kv; }
int64_t gguf_n_tensors(const gguf_file *f) { return f->n_tensors; }

gguf_str gguf_kv_key(const gguf_file *f, int64_t i)
{
    assert(i >= 0 && i < f->n_kv);
    return f->kv[i].key;
}

enum gguf_vtype gguf_kv_type(const gguf_file *f, int64_t i)
{
    assert(i >= 0 && i < f->n_kv);
    return f->kv[i].type;
}

const tensor *gguf_tensor_at(const gguf_file *f, int64_t i)
{
    assert(i >= 0 && i < f->n_tensors);
    return &f->tensors[i];
}

int64_t gguf_find_key(const gguf_file *f, const char *key)
{
    if (f->kv_hash_cap == 0)
        return -1;
    size_t slot = hash_slot(f, f->kv_hash, f->kv_hash_cap, kv_name, key, strlen(key));
    return f->kv_hash[slot] - 1;
}

const tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    if (f->tensor_hash_cap == 0)
        return NULL;
    size_t slot = hash_slot(f, f->tensor_hash, f->tensor_hash_cap, tensor_name, name, strlen(name));
    return f->tensor_hash[slot] ? &f->tensors[f->tensor_hash[slot] - 1] : NULL;
}

/* The KV of key with exactly the stored type want, or an error. */
static int typed_kv(const gguf_file *f, const char *key, enum gguf_vtype want, const struct gguf_kv **out,
                    glimpse_err *err)
{
    int64_t i = gguf_find_key(f, key);
    if (i < 0)
        return err_set(err, GLIMPSE_ENOTFOUND, "GGUF key '%s' not found", key);
    if (f->kv[i].type != want)
        return err_set(err, GLIMPSE_EFORMAT, "GGUF key '%s' has type %s, expected %s", key,
                       vtype_name(f->kv[i].type), vtype_name(want));
    *out = &f->kv[i];
    return 0;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out, glimpse_err *err)
{
    const struct gguf_kv *kv = NULL;
    int rc = typed_kv(f, key, GGUF_VTYPE_UINT32, &kv, err);
    if (rc == 0)
        memcpy(out, kv->val, sizeof *out);
    return rc;
}

int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out, glimpse_err *err)
{
    const struct gguf_kv *kv = NULL;
    int rc = typed_kv(f, key, GGUF_VTYPE_INT32, &kv, err);
    if (rc == 0)
        memcpy(out, kv->val, sizeof *out);
    return rc;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out, glimpse_err *err)
{
    const struct gguf_kv *kv = NULL;
    int rc = typed_kv(f, key, GGUF_VTYPE_FLOAT32, &kv, err);
    if (rc == 0)
        memcpy(out, kv->val, sizeof *out);
    return rc;
}

int gguf_get_bool(const gguf_file *f, const char *key, bool *out, glimpse_err *err)
{
    const struct gguf_kv *kv = NULL;
    int rc = typed_kv(f, key, GGUF_VTYPE_BOOL, &kv, err);
    if (rc == 0)
        *out = kv->val[0] != 0; /* any non-zero byte is true, as in gguf.cpp */
    return rc;
}

/* The string whose u64 length prefix is at p (validated at open). */
static gguf_str str_at(const uint8_t *p)
{
    gguf_str s;
    memcpy(&s.len, p, sizeof s.len);
    s.ptr = (const char *)p + sizeof s.len;
    return s;
}

int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out, glimpse_err *err)
{
    const struct gguf_kv *kv = NULL;
    int rc = typed_kv(f, key, GGUF_VTYPE_STRING, &kv, err);
    if (rc == 0)
        *out = str_at(kv->val);
    return rc;
}

int gguf_get_arr(const gguf_file *f, const char *key, enum gguf_vtype *elem_type, uint64_t *n,
                 const void **data, glimpse_err *err)
{
    const struct gguf_kv *kv = NULL;
    int rc = typed_kv(f, key, GGUF_VTYPE_ARRAY, &kv, err);
    if (rc == 0) {
        *elem_type = kv->elem_type;
        *n = kv->n;
        *data = kv->val;
    }
    return rc;
}

int gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t i, gguf_str *out, glimpse_err *err)
{
    const struct gguf_kv *kv = NULL;
    int rc = typed_kv(f, key, GGUF_VTYPE_ARRAY, &kv, err);
    if (rc)
        return rc;
    if (kv->elem_type != GGUF_VTYPE_STRING)
        return err_set(err, GLIMPSE_EFORMAT, "GGUF key '%s' is an array of %s, expected str", key,
                       vtype_name(kv->elem_type));
    if (i >= kv->n)
        return err_set(err, GLIMPSE_EINVAL, "index %" PRIu64 " out of range for GGUF key '%s' (%" PRIu64 " strings)",
                       i, key, kv->n);
    *out = str_at(kv->strs[i]);
    return 0;
}

int gguf_pack_matrix(const gguf_file *f, kn_packed *set, const tensor **w, int n, const tensor **out,
                     bool keep_file, glimpse_err *err)
{
    const tensor *file[4];
    if (!w[0] || n < 1 || n > 4)
        return 0;
    memcpy(file, w, (size_t)n * sizeof *w);
    int rc = kn_packed_add_rows(set, file, n, out, err);
    if (rc <= 0 || keep_file || !f->map)
        return rc < 0 ? rc : 0;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < n; i++) {
        const tensor *t = file[i];
        const uintptr_t lo = ((uintptr_t)t->data + page - 1) / page * page;
        const uintptr_t hi = ((uintptr_t)t->data + t->nbytes) / page * page;
        if (lo < hi && (const uint8_t *)t->data >= f->base && (const uint8_t *)t->data + t->nbytes <= f->base + f->size)
            madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
    return 0;
}
