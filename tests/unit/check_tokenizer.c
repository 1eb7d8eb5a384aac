/*
 * check_tokenizer.c — the tokenizer against llama.cpp and by hand.
 *
 * Golden ids: tests/data/tokenizer-golden.txt holds ~370 strings (ASCII,
 * accents, CJK, emoji, digits, whitespace runs, special tokens, invalid
 * UTF-8, long words) with the ids llama.cpp's llama-tokenize gives them for
 * the test vocabulary, with the smollm pre-tokenizer (parse_special on and
 * off) and with gpt-2, and ~40 strings for a hand-made odd vocabulary
 * (types llama.cpp overrides, dropped bytes, BYTE/UNUSED/empty tokens, BOS).
 * Every string must encode to exactly those ids (input behind a guard page),
 * decode back to its bytes, and stream through the detokenizer as
 * well-formed UTF-8. The vocabulary GGUFs are fixtures tools/make_model.py
 * writes from tests/data/tokenizer.json and tokenizer-odd.json; variants
 * (other pre-tokenizer, broken keys, tiny vocabularies) are built in memory
 * by a small GGUF writer below.
 */
#include "tokenizer.h"
#include "unicode.h"
#include "testutil.h"

/* ---- a KV-only GGUF writer ------------------------------------------------ */

struct gb {
    unsigned char *p;
    size_t len, cap;
    uint64_t n_kv;
};

static void gb_put(struct gb *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void gb_u32(struct gb *b, uint32_t v) { gb_put(b, &v, 4); }
static void gb_u64(struct gb *b, uint64_t v) { gb_put(b, &v, 8); }

static void gb_str(struct gb *b, const char *s, size_t n)
{
    gb_u64(b, n);
    gb_put(b, s, n);
}

static void kv_head(struct gb *b, const char *key, enum gguf_vtype t)
{
    gb_str(b, key, strlen(key));
    gb_u32(b, t);
    b->n_kv++;
}

static void kv_str(struct gb *b, const char *key, const char *s)
{
    kv_head(b, key, GGUF_VTYPE_STRING);
    gb_str(b, s, strlen(s));
}

static void kv_u32(struct gb *b, const char *key, enum gguf_vtype t, uint32_t v)
{
    kv_head(b, key, t); /* UINT32 or INT32: same bytes, different type */
    gb_u32(b, v);
}

static void kv_arr_str(struct gb *b, const char *key, const gguf_str *s, size_t n)
{
    kv_head(b, key, GGUF_VTYPE_ARRAY);
    gb_u32(b, GGUF_VTYPE_STRING);
    gb_u64(b, n);
    for (size_t i = 0; i < n; i++)
        gb_str(b, s[i].ptr, s[i].len);
}

static void kv_arr_32(struct gb *b, const char *key, enum gguf_vtype t, const int32_t *v, size_t n)
{
    kv_head(b, key, GGUF_VTYPE_ARRAY);
    gb_u32(b, t);
    gb_u64(b, n);
    gb_put(b, v, 4 * n);
}

/* A vocabulary to write; NULL / -1 fields are left out of the file. */
struct vspec {
    const char *model, *pre;
    const gguf_str *tokens;
    size_t n_tokens;
    const int32_t *types;
    size_t n_types;
    const gguf_str *merges;
    size_t n_merges;
    bool no_merges;
    int64_t bos, eos;
    int add_bos;
    bool tokens_as_i32, types_as_u32, bos_as_i32;
};

/* The GGUF bytes of v; owned, free with free(). */
static unsigned char *write_vocab(const struct vspec *v, size_t *len)
{
    struct gb body = { 0 }, out = { 0 };
    kv_str(&body, "general.architecture", "llama");
    if (v->model)
        kv_str(&body, "tokenizer.ggml.model", v->model);
    if (v->pre)
        kv_str(&body, "tokenizer.ggml.pre", v->pre);
    if (v->tokens && v->tokens_as_i32)
        kv_arr_32(&body, "tokenizer.ggml.tokens", GGUF_VTYPE_INT32, (const int32_t *)"abcdabcd", 2);
    else if (v->tokens)
        kv_arr_str(&body, "tokenizer.ggml.tokens", v->tokens, v->n_tokens);
    if (v->types)
        kv_arr_32(&body, "tokenizer.ggml.token_type", v->types_as_u32 ? GGUF_VTYPE_UINT32 : GGUF_VTYPE_INT32,
                  v->types, v->n_types);
    if (!v->no_merges)
        kv_arr_str(&body, "tokenizer.ggml.merges", v->merges, v->n_merges);
    if (v->bos >= 0)
        kv_u32(&body, "tokenizer.ggml.bos_token_id", v->bos_as_i32 ? GGUF_VTYPE_INT32 : GGUF_VTYPE_UINT32,
               (uint32_t)v->bos);
    if (v->eos >= 0)
        kv_u32(&body, "tokenizer.ggml.eos_token_id", GGUF_VTYPE_UINT32, (uint32_t)v->eos);
    if (v->add_bos >= 0) {
        kv_head(&body, "tokenizer.ggml.add_bos_token", GGUF_VTYPE_BOOL);
        gb_put(&body, &(uint8_t){ (uint8_t)v->add_bos }, 1);
    }
    gb_put(&out, "GGUF", 4);
    gb_u32(&out, 3);
    gb_u64(&out, 0);
    gb_u64(&out, body.n_kv);
    gb_put(&out, body.p, body.len);
    free(body.p);
    *len = out.len;
    return out.p;
}

/* Loads a tokenizer from v: the status, and *out on success. */
static int load_spec(const struct vspec *v, tokenizer **out, glimpse_err *err)
{
    size_t len;
    unsigned char *data = write_vocab(v, &len);
    gguf_file *f = NULL;
    int rc = gguf_open_buffer(data, len, &f, err);
    ck_assert_msg(rc == 0, "test GGUF rejected: %s", err->msg);
    rc = tokenizer_load(f, out, err);
    gguf_close(f);
    free(data);
    return rc;
}

/* ---- the fixture vocabulary ---------------------------------------------- */

static gguf_file *fixture;
static tokenizer *tok;       /* smollm */
static tokenizer *tok_gpt2;  /* same vocabulary, gpt-2 pre-tokenizer */
static gguf_str *fx_tokens, *fx_merges;
static int32_t *fx_types;
static size_t fx_n_tokens, fx_n_merges;

/* The fixture's vocabulary as a vspec to modify. */
static struct vspec fixture_spec(void)
{
    return (struct vspec){ .model = "gpt2", .pre = "smollm", .tokens = fx_tokens, .n_tokens = fx_n_tokens,
                           .types = fx_types, .n_types = fx_n_tokens, .merges = fx_merges,
                           .n_merges = fx_n_merges, .bos = 1, .eos = 56, .add_bos = -1 };
}

static void read_strs(const char *key, gguf_str **out, size_t *n)
{
    enum gguf_vtype et;
    uint64_t cnt;
    const void *data;
    ck_assert_int_eq(gguf_get_arr(fixture, key, &et, &cnt, &data, NULL), 0);
    *out = calloc(cnt, sizeof **out);
    for (uint64_t i = 0; i < cnt; i++)
        ck_assert_int_eq(gguf_get_arr_str(fixture, key, i, &(*out)[i], NULL), 0);
    *n = cnt;
}

static void setup(void)
{
    glimpse_err err = { 0 };
    ck_assert_msg(gguf_open(fixture_path("vocab.gguf"), &fixture, &err) == 0, "%s", err.msg);
    ck_assert_msg(tokenizer_load(fixture, &tok, &err) == 0, "%s", err.msg);
    read_strs("tokenizer.ggml.tokens", &fx_tokens, &fx_n_tokens);
    read_strs("tokenizer.ggml.merges", &fx_merges, &fx_n_merges);
    enum gguf_vtype et;
    uint64_t n;
    const void *data;
    ck_assert_int_eq(gguf_get_arr(fixture, "tokenizer.ggml.token_type", &et, &n, &data, NULL), 0);
    fx_types = malloc(4 * n);
    memcpy(fx_types, data, 4 * n);
    struct vspec v = fixture_spec();
    v.pre = "gpt-2";
    ck_assert_msg(load_spec(&v, &tok_gpt2, &err) == 0, "%s", err.msg);
}

static void teardown(void)
{
    tokenizer_free(tok);
    tokenizer_free(tok_gpt2);
    gguf_close(fixture);
    free(fx_tokens);
    free(fx_merges);
    free(fx_types);
}

/* Id of the token whose piece is s, which must exist. */
static int32_t id_of(const tokenizer *t, const char *s)
{
    int32_t id = tokenizer_find(t, s, strlen(s));
    ck_assert_msg(id != TOKEN_NONE, "no token '%s'", s);
    return id;
}

/* Encodes s (NUL-terminated) into ids[cap]; returns the count. */
static size_t enc(const tokenizer *t, const char *s, bool parse_special, int32_t *ids, size_t cap)
{
    size_t n;
    glimpse_err err = { 0 };
    ck_assert_msg(tokenizer_encode(t, s, strlen(s), false, parse_special, ids, cap, &n, &err) == 0, "%s", err.msg);
    return n;
}

/* Concatenated pieces (special = true) of ids; owned, free(). */
static char *pieces(const tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = 16, o = 0;
    char *out = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        size_t pl;
        const char *p = tokenizer_piece(t, ids[i], true, &pl);
        while (o + pl > cap)
            out = realloc(out, cap *= 2);
        memcpy(out + o, p, pl);
        o += pl;
    }
    *len = o;
    return out;
}

/* ---- golden file ---------------------------------------------------------- */

struct golden {
    char mode;
    char *text;
    size_t text_len;
    int32_t *ids;
    size_t n_ids;
};

static int hexdigit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c - 'A' + 10;
}

/* Parses tests/data/tokenizer-golden.txt (format at its top). */
static struct golden *read_golden(size_t *n_out)
{
    size_t len;
    char *file = read_file(source_path("tests/data/tokenizer-golden.txt"), &len);
    ck_assert_ptr_nonnull(file);
    size_t cap = 64, n = 0;
    struct golden *g = malloc(cap * sizeof *g);
    char *line = file, *end = file + len;
    while (line < end) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        ck_assert_ptr_nonnull(nl);
        if (line[0] != '#') {
            char *tab1 = memchr(line, '\t', (size_t)(nl - line));
            ck_assert_ptr_nonnull(tab1);
            char *tab2 = memchr(tab1 + 1, '\t', (size_t)(nl - tab1 - 1));
            ck_assert_ptr_nonnull(tab2);
            if (n == cap)
                g = realloc(g, (cap *= 2) * sizeof *g);
            struct golden *r = &g[n++];
            r->mode = line[0];
            r->text = malloc((size_t)(tab2 - tab1) + 1); /* NUL-terminated for messages */
            r->text_len = 0;
            for (char *p = tab1 + 1; p < tab2; p++) {
                char c = *p;
                if (c == '\\') {
                    char e = *++p;
                    if (e == 'x') {
                        c = (char)(hexdigit(p[1]) * 16 + hexdigit(p[2]));
                        p += 2;
                    } else {
                        c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
                    }
                }
                r->text[r->text_len++] = c;
            }
            r->text[r->text_len] = 0;
            r->ids = malloc(((size_t)(nl - tab2) / 2 + 1) * sizeof *r->ids);
            r->n_ids = 0;
            for (char *p = tab2 + 1; p < nl;) {
                char *q;
                long v = strtol(p, &q, 10);
                ck_assert_ptr_ne(q, p);
                r->ids[r->n_ids++] = (int32_t)v;
                p = q;
                while (p < nl && *p == ' ')
                    p++;
            }
        }
        line = nl + 1;
    }
    free(file);
    *n_out = n;
    return g;
}

static void free_golden(struct golden *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(g[i].text);
        free(g[i].ids);
    }
    free(g);
}

/* The bytes llama.cpp tokenizes for text: each byte that does not start a
 * decodable sequence as U+FFFD, the rest re-encoded as decoded (so overlong
 * forms shrink). Written here without utf8_decode: a direct reading of
 * llama.cpp's unicode_cpt_from_utf8. */
static size_t reference_reencode(const unsigned char *s, size_t len, unsigned char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned b = s[i];
        size_t need = b < 0x80 ? 0 : b < 0xC0 ? 9 : b < 0xE0 ? 1 : b < 0xF0 ? 2 : b < 0xF8 ? 3 : 9;
        bool ok = need != 9 && i + need < len;
        for (size_t k = 1; ok && k <= need; k++)
            ok = (s[i + k] & 0xC0) == 0x80;
        if (!ok) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
            continue;
        }
        uint32_t c = need == 0 ? b : b & (0x3F >> need);
        for (size_t k = 1; k <= need; k++)
            c = c << 6 | (s[i + k] & 0x3F);
        /* re-encode by length class */
        if (c < 0x80) {
            out[o++] = (unsigned char)c;
        } else if (c < 0x800) {
            out[o++] = (unsigned char)(0xC0 | c >> 6);
            out[o++] = (unsigned char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out[o++] = (unsigned char)(0xE0 | c >> 12);
            out[o++] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
            out[o++] = (unsigned char)(0x80 | (c & 0x3F));
        } else {
            out[o++] = (unsigned char)(0xF0 | c >> 18);
            out[o++] = (unsigned char)(0x80 | (c >> 12 & 0x3F));
            out[o++] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
            out[o++] = (unsigned char)(0x80 | (c & 0x3F));
        }
        i += need + 1;
    }
    return o;
}

/* Is s[0..len) well-formed UTF-8? Independent of unicode.c. */
static bool reference_valid_utf8(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        unsigned b = s[i];
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xC2 && b <= 0xDF) {
            need = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            lo = b == 0xE0 ? 0xA0 : 0x80;
            hi = b == 0xED ? 0x9F : 0xBF;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            lo = b == 0xF0 ? 0x90 : 0x80;
            hi = b == 0xF4 ? 0x8F : 0xBF;
        } else {
            return false;
        }
        if (i + need >= len)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
        i += need + 1;
    }
    return true;
}

/* How each golden mode is run (see the file's header). */
static const struct {
    char mode;
    bool odd, gpt2, parse_special, add_special;
} golden_modes[] = {
    { 'S', false, false, true, false }, { 'N', false, false, false, false }, { 'G', false, true, true, false },
    { 'O', true, false, true, true },   { 'P', true, false, false, true },
};

START_TEST(test_golden)
{
    size_t n_rows, counts[5] = { 0 };
    struct golden *g = read_golden(&n_rows);
    tokenizer *odd;
    gguf_file *odd_file;
    glimpse_err err = { 0 };
    ck_assert_msg(gguf_open(fixture_path("vocab-odd.gguf"), &odd_file, &err) == 0, "%s", err.msg);
    ck_assert_msg(tokenizer_load(odd_file, &odd, &err) == 0, "%s", err.msg);
    for (size_t r = 0; r < n_rows; r++) {
        const struct golden *row = &g[r];
        size_t m = 0;
        while (m < 5 && golden_modes[m].mode != row->mode)
            m++;
        ck_assert_msg(m < 5, "row %zu: mode %c", r, row->mode);
        counts[m]++;
        const tokenizer *t = golden_modes[m].odd ? odd : golden_modes[m].gpt2 ? tok_gpt2 : tok;

        /* encode, with the input ending right at a guard page */
        char *in = guarded_copy(row->text, row->text_len);
        ck_assert_ptr_nonnull(in);
        size_t cap = 3 * row->text_len + 8, n; /* an invalid byte gives 3 tokens */
        int32_t *ids = malloc(cap * sizeof *ids);
        int rc = tokenizer_encode(t, in, row->text_len, golden_modes[m].add_special, golden_modes[m].parse_special,
                                  ids, cap, &n, &err);
        ck_assert_msg(rc == 0, "row %zu: %s", r, err.msg);
        ck_assert_msg(n == row->n_ids, "row %zu (%c '%.40s'): %zu ids, llama.cpp %zu", r, row->mode, row->text, n,
                      row->n_ids);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(ids[i] == row->ids[i], "row %zu (%c '%.40s') id %zu: %d, llama.cpp %d", r, row->mode,
                          row->text, i, ids[i], row->ids[i]);

        /* decode: the pieces give back the text as llama.cpp read it (the odd
         * vocabulary drops bytes and adds BOS by design) */
        size_t plen;
        char *text = pieces(t, ids, n, &plen);
        if (!golden_modes[m].odd) {
            unsigned char *want = malloc(3 * row->text_len + 1);
            size_t want_len = reference_reencode((const unsigned char *)row->text, row->text_len, want);
            ck_assert_msg(plen == want_len && memcmp(text, want, plen) == 0, "row %zu: decoded text differs", r);
            if (reference_valid_utf8((const unsigned char *)row->text, row->text_len))
                ck_assert_msg(plen == row->text_len && memcmp(text, row->text, plen) == 0, "row %zu: no round trip",
                              r);
            free(want);
        }

        /* the streaming detokenizer: well-formed pieces of the same text */
        detok d;
        detok_init(&d, t, true);
        size_t out_cap = detok_out_max(t), total = 0;
        char *out = malloc(out_cap), *all = malloc(3 * plen + 4);
        for (size_t i = 0; i <= n; i++) {
            size_t ol;
            rc = i < n ? detok_push(&d, ids[i], out, out_cap, &ol, &err) : detok_flush(&d, out, out_cap, &ol, &err);
            ck_assert_int_eq(rc, 0);
            ck_assert_msg(reference_valid_utf8((unsigned char *)out, ol), "row %zu: detok emitted bad UTF-8", r);
            memcpy(all + total, out, ol);
            total += ol;
        }
        if (reference_valid_utf8((const unsigned char *)text, plen))
            ck_assert_msg(total == plen && memcmp(all, text, plen) == 0, "row %zu: detok text differs", r);
        free(out);
        free(all);
        free(text);
        free(ids);
        guarded_free(in, row->text_len);
    }
    for (size_t m = 0; m < 3; m++)
        ck_assert_uint_ge(counts[m], 300);
    ck_assert_uint_ge(counts[3], 30);
    ck_assert_uint_ge(counts[4], 30);
    tokenizer_free(odd);
    gguf_close(odd_file);
    free_golden(g, n_rows);
}
END_TEST

/* ---- vocabulary facts ----------------------------------------------------- */

START_TEST(test_specials_and_eog)
{
    ck_assert_int_eq(tokenizer_n_vocab(tok), 4000);
    ck_assert_int_eq(tokenizer_bos(tok), id_of(tok, "<|im_start|>"));
    ck_assert_int_eq(tokenizer_eos(tok), id_of(tok, "<end_of_utterance>"));
    ck_assert(!tokenizer_add_bos(tok)); /* key absent: false for gpt2 */
    ck_assert(!tokenizer_add_eos(tok));
    /* eos, the end markers llama.cpp knows by text, and <reponame>, which it
     * takes for the FIM repo token */
    const char *eog[] = { "<end_of_utterance>", "<|im_end|>", "<|endoftext|>", "<reponame>" };
    const char *not_eog[] = { "<|im_start|>", "<image>", "<global-img>", "<fake_token_around_image>",
                              "<file_sep>", "\n", "a" };
    for (size_t i = 0; i < sizeof eog / sizeof *eog; i++)
        ck_assert_msg(tokenizer_is_eog(tok, id_of(tok, eog[i])), "%s", eog[i]);
    for (size_t i = 0; i < sizeof not_eog / sizeof *not_eog; i++)
        ck_assert_msg(!tokenizer_is_eog(tok, id_of(tok, not_eog[i])), "%s", not_eog[i]);
    /* exactly the set llama.cpp prints ("printing all EOG tokens") */
    int n_eog = 0;
    for (int32_t id = 0; id < tokenizer_n_vocab(tok); id++)
        n_eog += tokenizer_is_eog(tok, id);
    ck_assert_int_eq(n_eog, 4);
    ck_assert(!tokenizer_is_eog(tok, -1));
    ck_assert(!tokenizer_is_eog(tok, 4000));
    ck_assert_int_eq(tokenizer_type(tok, id_of(tok, "<image>")), TOKEN_TYPE_CONTROL);
    ck_assert_int_eq(tokenizer_type(tok, id_of(tok, "<row_1_col_1>")), TOKEN_TYPE_USER_DEFINED);
    ck_assert_int_eq(tokenizer_type(tok, 4000), TOKEN_TYPE_UNDEFINED);
}
END_TEST

START_TEST(test_find_and_piece)
{
    /* mtmd's lookup_token: by piece, so "\n" is the byte-level token Ċ */
    int32_t nl = id_of(tok, "\n"), nl2 = id_of(tok, "\n\n");
    ck_assert(fx_tokens[nl].len == 2 && memcmp(fx_tokens[nl].ptr, "\xc4\x8a", 2) == 0);
    ck_assert(fx_tokens[nl2].len == 4 && memcmp(fx_tokens[nl2].ptr, "\xc4\x8a\xc4\x8a", 4) == 0);
    ck_assert_int_eq(tokenizer_find(tok, "<nope>", 6), TOKEN_NONE);
    ck_assert_int_eq(tokenizer_find(tok, "zqzqzq", 6), TOKEN_NONE);

    size_t len;
    const char *p = tokenizer_piece(tok, id_of(tok, "<image>"), false, &len);
    ck_assert_uint_eq(len, 0); /* CONTROL: only with special */
    p = tokenizer_piece(tok, id_of(tok, "<image>"), true, &len);
    ck_assert(len == 7 && memcmp(p, "<image>", 7) == 0);
    p = tokenizer_piece(tok, id_of(tok, "<row_2_col_3>"), false, &len);
    ck_assert(len == 13 && memcmp(p, "<row_2_col_3>", 13) == 0); /* USER_DEFINED: always */
    p = tokenizer_piece(tok, id_of(tok, " the"), false, &len);
    ck_assert(len == 4 && memcmp(p, " the", 4) == 0);
    tokenizer_piece(tok, -1, true, &len);
    ck_assert_uint_eq(len, 0);
    tokenizer_piece(tok, 4000, true, &len);
    ck_assert_uint_eq(len, 0);
    ck_assert_uint_ge(tokenizer_max_piece_len(tok), strlen("<fake_token_around_image>"));
}
END_TEST

/* The byte-level map at its landmarks (GPT-2's bytes_to_unicode). */
START_TEST(test_byte_map)
{
    static const struct { int byte; uint32_t cpt; } map[] = {
        { 0x00, 0x100 }, { ' ', 0x120 }, { '\n', 0x10A }, { '!', '!' }, { '~', '~' }, { 0x7F, 0x121 },
        { 0xA0, 0x142 }, { 0xA1, 0xA1 }, { 0xAC, 0xAC }, { 0xAD, 0x143 }, { 0xAE, 0xAE }, { 0xFF, 0xFF },
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++) {
        ck_assert_uint_eq(unicode_byte_to_cpt((uint8_t)map[i].byte), map[i].cpt);
        ck_assert_int_eq(unicode_cpt_to_byte(map[i].cpt), map[i].byte);
    }
    for (int b = 0; b < 256; b++)
        ck_assert_int_eq(unicode_cpt_to_byte(unicode_byte_to_cpt((uint8_t)b)), b);
    ck_assert_int_eq(unicode_cpt_to_byte(0x144), -1);
    ck_assert_int_eq(unicode_cpt_to_byte(0x20), -1);
    ck_assert_int_eq(unicode_cpt_to_byte(0xAD), -1);
}
END_TEST

START_TEST(test_categories)
{
    static const struct { uint32_t cpt; enum unicode_cat cat; } cases[] = {
        { 'a', UNICODE_CAT_LETTER },     { '7', UNICODE_CAT_NUMBER },      { ' ', UNICODE_CAT_SEPARATOR },
        { '!', UNICODE_CAT_PUNCTUATION }, { '$', UNICODE_CAT_SYMBOL },     { '\n', UNICODE_CAT_CONTROL },
        { 0xE9, UNICODE_CAT_LETTER },    { 0x0301, UNICODE_CAT_MARK },     { 0x4E2D, UNICODE_CAT_LETTER },
        { 0x0663, UNICODE_CAT_NUMBER },  { 0x00BD, UNICODE_CAT_NUMBER },   { 0x216B, UNICODE_CAT_NUMBER },
        { 0x1F600, UNICODE_CAT_SYMBOL }, { 0x3000, UNICODE_CAT_SEPARATOR }, { 0xD800, UNICODE_CAT_CONTROL },
        { 0xE000, UNICODE_CAT_CONTROL }, { 0x0378, UNICODE_CAT_UNDEFINED }, { 0x10FFFF, UNICODE_CAT_UNDEFINED },
        { 0x110000, UNICODE_CAT_UNDEFINED },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        ck_assert_msg(unicode_category(cases[i].cpt) == cases[i].cat, "U+%04X", cases[i].cpt);
    ck_assert(unicode_is_whitespace(0x85) && unicode_is_whitespace(0xA0) && unicode_is_whitespace(0x200A));
    ck_assert(!unicode_is_whitespace(0x200B) && !unicode_is_whitespace('x') && !unicode_is_whitespace(0x1C));
}
END_TEST

/* The odd vocabulary against llama.cpp's token_to_piece and EOG set for it
 * (dumped through libllama: llama_token_to_piece with special true / false,
 * llama_vocab_is_eog, llama_vocab_bos / _eos / _get_add_bos). */
START_TEST(test_odd_vocab)
{
    static const struct { int32_t id; const char *sp, *nsp; size_t sp_len, nsp_len; } want[] = {
        { 0, "<|endoftext|>", "", 13, 0 },      /* NORMAL in the file, CONTROL by its text */
        { 2, "<|fim_pad|>", "", 11, 0 },
        { 3, "h\xe9llo", "h\xe9llo", 5, 5 },   /* the byte 0xE9 alone */
        { 4, "\0 ", "\0 ", 2, 2 },
        { 5, "[UNK_BYTE_0xcea9\xce\xa9]", "[UNK_BYTE_0xcea9\xce\xa9]", 19, 19 },
        { 6, "A", "A", 1, 1 },                 /* BYTE <0x41> */
        { 7, "", "", 0, 0 },                   /* UNUSED */
        { 8, "", "", 0, 0 },                   /* type 9: UNDEFINED */
        { 9, "[EMPTY_9]", "[EMPTY_9]", 9, 9 },
        { 10, "<eos>", "", 5, 0 },             /* USER_DEFINED made CONTROL */
        { 11, " world", " world", 6, 6 },
        { 13, "<u><v>", "", 6, 0 },            /* UNKNOWN */
    };
    gguf_file *f;
    tokenizer *t;
    glimpse_err err = { 0 };
    ck_assert_msg(gguf_open(fixture_path("vocab-odd.gguf"), &f, &err) == 0, "%s", err.msg);
    ck_assert_msg(tokenizer_load(f, &t, &err) == 0, "%s", err.msg);
    gguf_close(f); /* the tokenizer keeps copies */
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        size_t len;
        const char *p = tokenizer_piece(t, want[i].id, true, &len);
        ck_assert_msg(len == want[i].sp_len && memcmp(p, want[i].sp, len) == 0, "id %d special", want[i].id);
        p = tokenizer_piece(t, want[i].id, false, &len);
        ck_assert_msg(len == want[i].nsp_len && memcmp(p, want[i].nsp, len) == 0, "id %d plain", want[i].id);
    }
    for (int32_t id = 0; id < tokenizer_n_vocab(t); id++)
        ck_assert_msg(tokenizer_is_eog(t, id) == (id == 0 || id == 2 || id == 10 || id == 11), "id %d", id);
    ck_assert_int_eq(tokenizer_bos(t), 1);
    ck_assert_int_eq(tokenizer_eos(t), 11); /* gpt2's default, no key */
    ck_assert(tokenizer_add_bos(t) && !tokenizer_add_eos(t));
    tokenizer_free(t);
}
END_TEST

/* ---- special-token partition ---------------------------------------------- */

START_TEST(test_partition)
{
    int32_t ids[64];
    int32_t im_start = id_of(tok, "<|im_start|>"), image = id_of(tok, "<image>"),
            row = id_of(tok, "<row_1_col_1>"), fake = id_of(tok, "<fake_token_around_image>");
    /* CONTROL text is a token only with parse_special */
    ck_assert_uint_eq(enc(tok, "<|im_start|>", true, ids, 64), 1);
    ck_assert_int_eq(ids[0], im_start);
    size_t n = enc(tok, "<|im_start|>", false, ids, 64);
    ck_assert_uint_gt(n, 1);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_ne(ids[i], im_start);
    size_t len;
    char *back = pieces(tok, ids, n, &len);
    ck_assert(len == 12 && memcmp(back, "<|im_start|>", 12) == 0);
    free(back);
    /* USER_DEFINED text always is */
    ck_assert_uint_eq(enc(tok, "<row_1_col_1>", false, ids, 64), 1);
    ck_assert_int_eq(ids[0], row);
    /* adjacent and nested */
    ck_assert_uint_eq(enc(tok, "<fake_token_around_image><row_1_col_1><image>", true, ids, 64), 3);
    ck_assert(ids[0] == fake && ids[1] == row && ids[2] == image);
    n = enc(tok, "<<image>>", true, ids, 64);
    ck_assert_uint_eq(n, 3);
    ck_assert(ids[0] == id_of(tok, "<") && ids[1] == image && ids[2] == id_of(tok, ">"));
    /* the text around a special token is tokenized on its own: the space
     * before <image> does not join the next word */
    n = enc(tok, "a <image> b", true, ids, 64);
    ck_assert_uint_eq(n, 4);
    ck_assert(ids[0] == id_of(tok, "a") && ids[1] == id_of(tok, " ") && ids[2] == image &&
              ids[3] == id_of(tok, " b"));
}
END_TEST

/* A hand-made vocabulary: the 256 byte characters of the fixture (ids
 * 57..312) plus extra tokens of the given types. */
static struct vspec tiny_spec(gguf_str *toks, int32_t *types, const char *const *extra, const int32_t *extra_types,
                              size_t n_extra)
{
    for (size_t i = 0; i < 256; i++) {
        toks[i] = fx_tokens[57 + i];
        types[i] = TOKEN_TYPE_NORMAL;
    }
    for (size_t i = 0; i < n_extra; i++) {
        toks[256 + i] = (gguf_str){ extra[i], strlen(extra[i]) };
        types[256 + i] = extra_types[i];
    }
    return (struct vspec){ .model = "gpt2", .pre = "smollm", .tokens = toks, .n_tokens = 256 + n_extra,
                           .types = types, .n_types = 256 + n_extra, .bos = -1, .eos = -1, .add_bos = -1 };
}

START_TEST(test_partition_longest_first)
{
    gguf_str toks[260];
    int32_t types[260], ids[16];
    static const char *const extra[] = { "xy", "xyz", "<c>" };
    static const int32_t extra_types[] = { TOKEN_TYPE_USER_DEFINED, TOKEN_TYPE_USER_DEFINED, TOKEN_TYPE_UNKNOWN };
    struct vspec v = tiny_spec(toks, types, extra, extra_types, 3);
    tokenizer *t;
    glimpse_err err = { 0 };
    ck_assert_msg(load_spec(&v, &t, &err) == 0, "%s", err.msg);
    /* "xyz" is matched before "xy" wherever both could start */
    ck_assert_uint_eq(enc(t, "xyzxy", false, ids, 16), 2);
    ck_assert(ids[0] == 257 && ids[1] == 256);
    /* UNKNOWN texts only with parse_special */
    ck_assert_uint_eq(enc(t, "<c>", true, ids, 16), 1);
    ck_assert_int_eq(ids[0], 258);
    ck_assert_uint_eq(enc(t, "<c>", false, ids, 16), 3);
    /* no merges at all: one token per byte */
    ck_assert_uint_eq(enc(t, "héllo", true, ids, 16), 6);
    /* defaults of gpt2: bos = eos = 11, which is in range here */
    ck_assert_int_eq(tokenizer_bos(t), 11);
    ck_assert_int_eq(tokenizer_eos(t), 11);
    ck_assert(tokenizer_is_eog(t, 11));
    tokenizer_free(t);
}
END_TEST

/* ---- encode edge cases ----------------------------------------------------- */

START_TEST(test_encode_limits)
{
    int32_t ids[64], all[64];
    size_t n, n_all;
    glimpse_err err = { 0 };
    const char *s = "Hello world, this is a test of the limit.";
    ck_assert_int_eq(tokenizer_encode(tok, s, strlen(s), false, true, all, 64, &n_all, &err), 0);
    ck_assert_uint_gt(n_all, 4);
    ck_assert_int_eq(tokenizer_encode(tok, s, strlen(s), false, true, ids, 3, &n, &err), GLIMPSE_ELIMIT);
    ck_assert_uint_eq(n, n_all); /* the size needed */
    ck_assert(memcmp(ids, all, 3 * sizeof *ids) == 0);
    ck_assert_int_eq(tokenizer_encode(tok, s, strlen(s), false, true, NULL, 0, &n, &err), GLIMPSE_ELIMIT);
    ck_assert_uint_eq(n, n_all);
    /* empty text; add_special adds nothing since add_bos is absent */
    ck_assert_int_eq(tokenizer_encode(tok, "", 0, true, true, ids, 64, &n, &err), 0);
    ck_assert_uint_eq(n, 0);
    /* a 4-byte sequence above U+10FFFF: llama.cpp throws, we refuse */
    ck_assert_int_eq(tokenizer_encode(tok, "ok\xf5\x80\x80\x80", 6, false, true, ids, 64, &n, &err), GLIMPSE_EINVAL);
    ck_assert_int_eq(tokenizer_encode(tok, "\xf4\x90\x80\x80", 4, false, true, ids, 64, &n, &err), GLIMPSE_EINVAL);
    /* ...but U+10FFFF itself and a cut-off one are fine */
    ck_assert_int_eq(tokenizer_encode(tok, "\xf4\x8f\xbf\xbf", 4, false, true, ids, 64, &n, &err), 0);
    ck_assert_int_eq(tokenizer_encode(tok, "\xf5\x80\x80", 3, false, true, ids, 64, &n, &err), 0);
}
END_TEST

START_TEST(test_add_bos)
{
    struct vspec v = fixture_spec();
    v.add_bos = 1;
    tokenizer *t;
    glimpse_err err = { 0 };
    int32_t ids[16];
    size_t n;
    ck_assert_msg(load_spec(&v, &t, &err) == 0, "%s", err.msg);
    ck_assert(tokenizer_add_bos(t));
    int32_t plain[16];
    size_t n_plain;
    ck_assert_int_eq(tokenizer_encode(t, "hello there", 11, false, true, plain, 16, &n_plain, &err), 0);
    ck_assert_int_eq(tokenizer_encode(t, "hello there", 11, true, true, ids, 16, &n, &err), 0);
    ck_assert_uint_eq(n, n_plain + 1);
    ck_assert_int_eq(ids[0], 1);
    ck_assert(memcmp(ids + 1, plain, n_plain * sizeof *ids) == 0);
    tokenizer_free(t);
}
END_TEST

/* ---- streaming detokenizer ------------------------------------------------ */

/* Pushes ids and checks each output; "F" in want[] marks the flush. */
static void detok_case(const int32_t *ids, size_t n, const char *const *want)
{
    detok d;
    char out[256];
    size_t ol;
    glimpse_err err = { 0 };
    detok_init(&d, tok, true);
    for (size_t i = 0; i <= n; i++) {
        int rc = i < n ? detok_push(&d, ids[i], out, sizeof out, &ol, &err)
                       : detok_flush(&d, out, sizeof out, &ol, &err);
        ck_assert_int_eq(rc, 0);
        ck_assert_msg(ol == strlen(want[i]) && memcmp(out, want[i], ol) == 0, "step %zu: '%.*s' want '%s'", i,
                      (int)ol, out, want[i]);
    }
}

START_TEST(test_detok_split_chars)
{
    /* the single-byte tokens: the piece of fixture token 57 + b is byte b */
#define B(b) (57 + (b))
    int32_t zhong[] = { B(0xE4), B(0xB8), B(0xAD) }; /* 中 = E4 B8 AD */
    const char *w1[] = { "", "", "\xe4\xb8\xad", "" };
    detok_case(zhong, 3, w1);
    int32_t emoji[] = { B(0xF0), B(0x9F), B(0x98), B(0x80), B('!') }; /* 😀! */
    const char *w2[] = { "", "", "", "\xf0\x9f\x98\x80", "!", "" };
    detok_case(emoji, 5, w2);
    /* an interrupted character: U+FFFD for the prefix, then the next one */
    int32_t cut[] = { B('a'), B(0xE4), B('b') };
    const char *w3[] = { "a", "", "\xef\xbf\xbd" "b", "" };
    detok_case(cut, 3, w3);
    /* bytes that can never start a character are replaced at once */
    int32_t bad[] = { B(0xFF), B(0x80), B(0xC0), B(0xED), B(0xA0) };
    const char *w4[] = { "\xef\xbf\xbd", "\xef\xbf\xbd", "\xef\xbf\xbd", "", "\xef\xbf\xbd\xef\xbf\xbd", "" };
    detok_case(bad, 5, w4);
    /* the flush turns an incomplete tail into one U+FFFD */
    int32_t tail[] = { B('x'), B(0xF0), B(0x9F), B(0x98) };
    const char *w5[] = { "x", "", "", "", "\xef\xbf\xbd" };
    detok_case(tail, 4, w5);
    /* a multi-byte token whose end is half a character */
    int32_t emo = id_of(tok, "\xf0\x9f"); /* the token ðŁ */
    int32_t mix[] = { emo, B(0x98), B(0x80) };
    const char *w6[] = { "", "", "\xf0\x9f\x98\x80", "" };
    detok_case(mix, 3, w6);
    /* CONTROL tokens are rendered only when asked */
    detok d;
    char out[64];
    size_t ol;
    detok_init(&d, tok, false);
    ck_assert_int_eq(detok_push(&d, id_of(tok, "<image>"), out, sizeof out, &ol, NULL), 0);
    ck_assert_uint_eq(ol, 0);
    ck_assert_int_eq(detok_push(&d, id_of(tok, "<row_1_col_1>"), out, sizeof out, &ol, NULL), 0);
    ck_assert_uint_eq(ol, 13);
#undef B
}
END_TEST

START_TEST(test_detok_small_buffer)
{
    detok d;
    char out[64];
    size_t ol = 99;
    glimpse_err err = { 0 };
    int32_t fake = id_of(tok, "<fake_token_around_image>");
    detok_init(&d, tok, true);
    ck_assert_int_eq(detok_push(&d, 57 + 0xE4, out, sizeof out, &ol, &err), 0);
    /* too small: refused, nothing consumed, the held byte still there */
    ck_assert_int_eq(detok_push(&d, fake, out, 10, &ol, &err), GLIMPSE_ELIMIT);
    ck_assert_uint_eq(d.n_pending, 1);
    ck_assert_int_eq(detok_push(&d, fake, out, sizeof out, &ol, &err), 0);
    ck_assert(ol == 3 + 25 && memcmp(out, "\xef\xbf\xbd<fake_token_around_image>", ol) == 0);
    ck_assert_uint_ge(detok_out_max(tok), 3 * (tokenizer_max_piece_len(tok) + 3));
}
END_TEST

/* ---- bad vocabularies ----------------------------------------------------- */

/* Loads v and expects status want, with needle in the message if given. */
static void expect_load(const struct vspec *v, int want, const char *needle)
{
    static char sentinel;
    tokenizer *t = (tokenizer *)&sentinel; /* a failed load must reset it */
    glimpse_err err = { 0 };
    int rc = load_spec(v, &t, &err);
    ck_assert_msg(rc == want, "status %d (%s), want %d", rc, err.msg, want);
    if (rc == 0) {
        tokenizer_free(t);
        return;
    }
    ck_assert_ptr_null(t);
    if (needle)
        ck_assert_msg(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
}

START_TEST(test_bad_vocab)
{
    struct vspec v;
    v = fixture_spec(); v.model = NULL;              expect_load(&v, GLIMPSE_EFORMAT, "tokenizer.ggml.model");
    v = fixture_spec(); v.model = "llama";           expect_load(&v, GLIMPSE_EUNSUPPORTED, "llama");
    v = fixture_spec(); v.pre = "qwen2";             expect_load(&v, GLIMPSE_EUNSUPPORTED, "qwen2");
    v = fixture_spec(); v.pre = "gpt2";              expect_load(&v, GLIMPSE_EUNSUPPORTED, "'gpt2'");
    v = fixture_spec(); v.pre = NULL;                expect_load(&v, GLIMPSE_EUNSUPPORTED, "pre");
    v = fixture_spec(); v.tokens = NULL;             expect_load(&v, GLIMPSE_EFORMAT, "tokens");
    v = fixture_spec(); v.tokens_as_i32 = true;      expect_load(&v, GLIMPSE_EFORMAT, "tokens");
    v = fixture_spec(); v.n_tokens = 0;              expect_load(&v, GLIMPSE_EFORMAT, "tokens");
    v = fixture_spec(); v.no_merges = true;          expect_load(&v, GLIMPSE_EFORMAT, "merges");
    v = fixture_spec(); v.n_types = 3999;            expect_load(&v, GLIMPSE_EFORMAT, "token types");
    v = fixture_spec(); v.types_as_u32 = true;       expect_load(&v, GLIMPSE_EFORMAT, "token_type");
    v = fixture_spec(); v.bos_as_i32 = true;         expect_load(&v, GLIMPSE_EFORMAT, "bos_token_id");
    /* same text twice: llama.cpp asserts, we refuse */
    gguf_str *dup = malloc(fx_n_tokens * sizeof *dup);
    memcpy(dup, fx_tokens, fx_n_tokens * sizeof *dup);
    dup[3999] = dup[500];
    v = fixture_spec(); v.tokens = dup;              expect_load(&v, GLIMPSE_EFORMAT, "same text");
    free(dup);
    /* no types at all: every token NORMAL, so <image> is plain text */
    v = fixture_spec(); v.types = NULL;              expect_load(&v, 0, NULL);
}
END_TEST

/* Things llama.cpp tolerates, and so do we. */
START_TEST(test_tolerated_vocab)
{
    tokenizer *t;
    glimpse_err err = { 0 };
    int32_t ids[64];
    /* out-of-range special ids keep the default (11) */
    struct vspec v = fixture_spec();
    v.bos = 4000;
    v.eos = 123456;
    ck_assert_msg(load_spec(&v, &t, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(tokenizer_bos(t), 11);
    ck_assert_int_eq(tokenizer_eos(t), 11);
    tokenizer_free(t);

    /* merges naming no token, without a space, or repeated */
    gguf_str *m = malloc((fx_n_merges + 4) * sizeof *m);
    memcpy(m + 4, fx_merges, fx_n_merges * sizeof *m);
    m[0] = (gguf_str){ "q q", 3 };          /* "qq" is no token: falls back to bytes */
    m[1] = (gguf_str){ "nospace", 7 };
    m[2] = (gguf_str){ " leading", 8 };
    m[3] = (gguf_str){ "q q", 3 };
    v = fixture_spec();
    v.merges = m;
    v.n_merges = fx_n_merges + 4;
    ck_assert_msg(load_spec(&v, &t, &err) == 0, "%s", err.msg);
    size_t n = enc(t, "qq", true, ids, 64);
    ck_assert(n == 2 && ids[0] == id_of(t, "q") && ids[1] == ids[0]);
    tokenizer_free(t);
    free(m);

    /* an empty token gets llama.cpp's stand-in text */
    gguf_str *e = malloc(fx_n_tokens * sizeof *e);
    memcpy(e, fx_tokens, fx_n_tokens * sizeof *e);
    e[3999] = (gguf_str){ "", 0 };
    v = fixture_spec();
    v.tokens = e;
    ck_assert_msg(load_spec(&v, &t, &err) == 0, "%s", err.msg);
    size_t len;
    const char *p = tokenizer_piece(t, 3999, true, &len);
    ck_assert(len == 12 && memcmp(p, "[EMPTY_3999]", 12) == 0);
    tokenizer_free(t);
    free(e);

    /* token types outside 0..6 count as UNDEFINED: no piece */
    int32_t *ty = malloc(fx_n_tokens * sizeof *ty);
    memcpy(ty, fx_types, fx_n_tokens * sizeof *ty);
    ty[3999] = 77;
    v = fixture_spec();
    v.types = ty;
    ck_assert_msg(load_spec(&v, &t, &err) == 0, "%s", err.msg);
    tokenizer_piece(t, 3999, true, &len);
    ck_assert_uint_eq(len, 0);
    tokenizer_free(t);
    free(ty);
}
END_TEST

START_TEST(test_utf8_strict)
{
    static const struct { const char *s; size_t len; int want; } cases[] = {
        { "a", 1, 1 },          { "\xc3\xa9", 2, 2 },     { "\xc3", 1, 0 },         { "\xe4\xb8", 2, 0 },
        { "\xe4\xb8\xad", 3, 3 }, { "\xf0\x9f\x98", 3, 0 }, { "\xf0\x9f\x98\x80", 4, 4 }, { "\x80", 1, -1 },
        { "\xc0\x80", 2, -1 },  { "\xc1\xbf", 2, -1 },    { "\xe0\x80\x80", 3, -1 }, { "\xed\xa0\x80", 3, -1 },
        { "\xf0\x80", 2, -1 },  { "\xf4\x90", 2, -1 },    { "\xf5", 1, -1 },         { "\xff", 1, -1 },
        { "\xe4(", 2, -1 },     { "\xe4\xb8(", 3, -2 },   { "\xf0\x9f\x98(", 4, -3 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        ck_assert_msg(utf8_strict((const unsigned char *)cases[i].s, cases[i].len) == cases[i].want, "case %zu", i);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_golden);
    tcase_add_test(tc, test_specials_and_eog);
    tcase_add_test(tc, test_find_and_piece);
    tcase_add_test(tc, test_odd_vocab);
    tcase_add_test(tc, test_byte_map);
    tcase_add_test(tc, test_categories);
    tcase_add_test(tc, test_partition);
    tcase_add_test(tc, test_partition_longest_first);
    tcase_add_test(tc, test_encode_limits);
    tcase_add_test(tc, test_add_bos);
    tcase_add_test(tc, test_detok_split_chars);
    tcase_add_test(tc, test_detok_small_buffer);
    tcase_add_test(tc, test_bad_vocab);
    tcase_add_test(tc, test_tolerated_vocab);
    tcase_add_test(tc, test_utf8_strict);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(tokenizer_suite());
}
