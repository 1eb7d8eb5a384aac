/*
 * tokenizer.c — byte-level BPE as llama.cpp runs it for `gpt2` vocabularies
 * (src/llama-vocab.cpp: load, tokenizer_st_partition, llm_tokenizer_bpe_session;
 * src/unicode.cpp: unicode_regex_split_custom_gpt2), written anew from the
 * behaviour, not the code. Contract in tokenizer.h.
 */
#include "tokenizer.h"
#include "unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------
 * tables
 */

/* Token attributes: the type from the file, plus CONTROL where llama.cpp adds
 * it to end-of-turn / FIM tokens it recognises by text. Several may be set. */
enum {
    ATTR_UNKNOWN = 1 << 0,
    ATTR_UNUSED = 1 << 1,
    ATTR_NORMAL = 1 << 2,
    ATTR_CONTROL = 1 << 3,
    ATTR_USER_DEFINED = 1 << 4,
    ATTR_BYTE = 1 << 5,
};

static const uint8_t attr_of_type[] = {
    [TOKEN_TYPE_UNDEFINED] = 0,
    [TOKEN_TYPE_NORMAL] = ATTR_NORMAL,
    [TOKEN_TYPE_UNKNOWN] = ATTR_UNKNOWN,
    [TOKEN_TYPE_CONTROL] = ATTR_CONTROL,
    [TOKEN_TYPE_USER_DEFINED] = ATTR_USER_DEFINED,
    [TOKEN_TYPE_UNUSED] = ATTR_UNUSED,
    [TOKEN_TYPE_BYTE] = ATTR_BYTE,
};

enum pre_type { PRE_SMOLLM, PRE_GPT2 };

/* tokenizer.ggml.pre values whose regexes are the two we implement (the
 * names llama.cpp maps to LLAMA_VOCAB_PRE_TYPE_SMOLLM / _GPT2 with no other
 * option changed). */
static const struct { const char *name; enum pre_type pre; } pre_names[] = {
    { "smollm", PRE_SMOLLM },
    { "gpt-2", PRE_GPT2 },       { "phi-2", PRE_GPT2 },      { "jina-es", PRE_GPT2 },
    { "jina-de", PRE_GPT2 },     { "gigachat", PRE_GPT2 },   { "jina-v2-es", PRE_GPT2 },
    { "jina-v2-de", PRE_GPT2 },  { "a.x-4.0", PRE_GPT2 },    { "mellum", PRE_GPT2 },
    { "modern-bert", PRE_GPT2 }, { "jina-v1-en", PRE_GPT2 }, { "jina-v2-code", PRE_GPT2 },
    { "roberta-bpe", PRE_GPT2 },
};

/* Special ids read from the file. Index into tokenizer.special[]. */
enum role {
    ROLE_BOS, ROLE_EOS, ROLE_EOT, ROLE_EOM, ROLE_UNK, ROLE_SEP, ROLE_PAD, ROLE_MASK,
    ROLE_FIM_PRE, ROLE_FIM_SUF, ROLE_FIM_MID, ROLE_FIM_PAD, ROLE_FIM_REP, ROLE_FIM_SEP,
    N_ROLES
};

/* The keys in llama.cpp's order (a later key for the same role overrides an
 * earlier one: the deprecated prefix/suffix/middle keys come last). */
static const struct { const char *key; enum role role; } role_keys[] = {
    { "tokenizer.ggml.bos_token_id", ROLE_BOS },
    { "tokenizer.ggml.eos_token_id", ROLE_EOS },
    { "tokenizer.ggml.eot_token_id", ROLE_EOT },
    { "tokenizer.ggml.eom_token_id", ROLE_EOM },
    { "tokenizer.ggml.unknown_token_id", ROLE_UNK },
    { "tokenizer.ggml.seperator_token_id", ROLE_SEP },
    { "tokenizer.ggml.padding_token_id", ROLE_PAD },
    { "tokenizer.ggml.mask_token_id", ROLE_MASK },
    { "tokenizer.ggml.fim_pre_token_id", ROLE_FIM_PRE },
    { "tokenizer.ggml.fim_suf_token_id", ROLE_FIM_SUF },
    { "tokenizer.ggml.fim_mid_token_id", ROLE_FIM_MID },
    { "tokenizer.ggml.fim_pad_token_id", ROLE_FIM_PAD },
    { "tokenizer.ggml.fim_rep_token_id", ROLE_FIM_REP },
    { "tokenizer.ggml.fim_sep_token_id", ROLE_FIM_SEP },
    { "tokenizer.ggml.prefix_token_id", ROLE_FIM_PRE },
    { "tokenizer.ggml.suffix_token_id", ROLE_FIM_SUF },
    { "tokenizer.ggml.middle_token_id", ROLE_FIM_MID },
};

/* "▁" (U+2581) and "｜" (U+FF5C) in UTF-8, for the DeepSeek / CodeLlama texts */
#define LOW_LINE "\xe2\x96\x81"
#define FW_BAR "\xef\xbd\x9c"

/* Roles llama.cpp fills by token text when the file leaves them unset; the
 * token found also becomes CONTROL. llama.cpp takes the first match in hash
 * order; we take the lowest id, which is the same whenever only one matches. */
static const struct { enum role role; const char *texts[12]; } role_texts[] = {
    { ROLE_EOT, { "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                  "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                  "<" FW_BAR "end" LOW_LINE "of" LOW_LINE "sentence" FW_BAR ">", "<end_of_utterance>" } },
    { ROLE_EOM, { "<|eom_id|>" } },
    { ROLE_FIM_PRE, { "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<" FW_BAR "fim" LOW_LINE "begin" FW_BAR ">",
                      "<PRE>", LOW_LINE "<PRE>", "<|code_prefix|>", "<|prefix|>" } },
    { ROLE_FIM_SUF, { "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<" FW_BAR "fim" LOW_LINE "hole" FW_BAR ">",
                      "<SUF>", LOW_LINE "<SUF>", "<|code_suffix|>", "<|suffix|>" } },
    { ROLE_FIM_MID, { "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<" FW_BAR "fim" LOW_LINE "end" FW_BAR ">",
                      "<MID>", LOW_LINE "<MID>", "<|code_middle|>", "<|middle|>" } },
    { ROLE_FIM_PAD, { "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]" } },
    { ROLE_FIM_REP, { "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>" } },
    { ROLE_FIM_SEP, { "<|file_sep|>" } },
};

/* Token texts that end generation (and become CONTROL). */
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<" FW_BAR "end" LOW_LINE "of" LOW_LINE "sentence" FW_BAR ">", "[e~[",
};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* A string in the tokenizer's arena. */
struct span {
    size_t off;
    size_t len;
};

/* Open-addressing hash index over spans: slots hold index + 1, 0 is empty. */
struct strtab {
    uint32_t *slots;
    size_t mask;
};

struct tokenizer {
    int32_t n_vocab;
    enum pre_type pre;
    char *arena;               /* token texts, then merge strings */
    struct span *text;         /* [n_vocab] token text */
    struct span *piece;        /* [n_vocab] detokenised bytes, in pieces */
    char *pieces;
    uint8_t *type;             /* [n_vocab] enum token_type from the file */
    uint8_t *attr;             /* [n_vocab] ATTR_* */
    bool *eog;                 /* [n_vocab] */
    struct strtab by_text;     /* token text -> id */
    struct span *merge;        /* [n_merges] "left right"; rank = index */
    size_t n_merges;
    struct strtab by_merge;    /* merge string -> rank (first one wins) */
    int32_t *specials;         /* ids partitioned out literally, longest text first */
    size_t n_specials;
    int32_t special[N_ROLES];  /* TOKEN_NONE when unset */
    bool add_bos, add_eos;
    size_t max_piece;
};

static uint64_t fnv_add(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ULL;
    return h;
}

#define FNV_INIT 0xcbf29ce484222325ULL

static int strtab_init(struct strtab *t, size_t n)
{
    size_t size = 16;
    while (size < 2 * n + 1) {
        if (!size_mul(size, 2, &size))
            return GLIMPSE_ENOMEM;
    }
    t->slots = calloc(size, sizeof *t->slots);
    t->mask = size - 1;
    return t->slots ? 0 : GLIMPSE_ENOMEM;
}

/* Slot where s[0..len) is or would go (hash h of it). */
static size_t strtab_slot(const struct strtab *t, const char *arena, const struct span *spans,
                          uint64_t h, const char *s, size_t len)
{
    size_t i = (size_t)h & t->mask;
    for (;;) {
        uint32_t v = t->slots[i];
        if (v == 0)
            return i;
        const struct span *sp = &spans[v - 1];
        if (sp->len == len && memcmp(arena + sp->off, s, len) == 0)
            return i;
        i = (i + 1) & t->mask;
    }
}

/* Id of the token whose text is s[0..len), or TOKEN_NONE. */
static int32_t find_text(const tokenizer *tok, const char *s, size_t len)
{
    size_t i = strtab_slot(&tok->by_text, tok->arena, tok->text, fnv_add(FNV_INIT, s, len), s, len);
    return (int32_t)tok->by_text.slots[i] - 1;
}

/* Rank of the merge "left right", or -1. Neither side contains a space (they
 * are byte-level text), so the lookup string splits exactly as llama.cpp
 * splits the stored merge at its first space past index 0. */
static int64_t merge_rank(const tokenizer *tok, const char *l, size_t ln, const char *r, size_t rn)
{
    uint64_t h = fnv_add(fnv_add(fnv_add(FNV_INIT, l, ln), " ", 1), r, rn);
    size_t i = (size_t)h & tok->by_merge.mask;
    for (;;) {
        uint32_t v = tok->by_merge.slots[i];
        if (v == 0)
            return -1;
        const struct span *m = &tok->merge[v - 1];
        const char *p = tok->arena + m->off;
        if (m->len == ln + 1 + rn && memcmp(p, l, ln) == 0 && p[ln] == ' ' && memcmp(p + ln + 1, r, rn) == 0)
            return (int64_t)v - 1;
        i = (i + 1) & tok->by_merge.mask;
    }
}

/* ---------------------------------------------------------------------------
 * growable buffers
 */

/* Makes room for need elements of size elem in *p (capacity *cap). */
static int grow(void *pp, size_t *cap, size_t need, size_t elem)
{
    void **p = pp;
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64, bytes;
    while (n < need) {
        if (!size_mul(n, 2, &n))
            return GLIMPSE_ENOMEM;
    }
    if (!size_mul(n, elem, &bytes))
        return GLIMPSE_ENOMEM;
    void *q = realloc(*p, bytes);
    if (!q)
        return GLIMPSE_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

struct buf {
    char *data;
    size_t len, cap;
};

static int buf_put(struct buf *b, const void *p, size_t n)
{
    size_t need;
    if (!size_add(b->len, n, &need) || grow(&b->data, &b->cap, need, 1))
        return GLIMPSE_ENOMEM;
    memcpy(b->data + b->len, p, n);
    b->len = need;
    return 0;
}

/* ---------------------------------------------------------------------------
 * loading
 */

void tokenizer_free(tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->arena);
    free(tok->text);
    free(tok->piece);
    free(tok->pieces);
    free(tok->type);
    free(tok->attr);
    free(tok->eog);
    free(tok->by_text.slots);
    free(tok->merge);
    free(tok->by_merge.slots);
    free(tok->specials);
    free(tok);
}

/* Key holding an array of elem_type, or an error naming it. *n its length. */
static int get_array(const gguf_file *f, const char *key, enum gguf_vtype elem_type, bool required,
                     uint64_t *n, const void **data, glimpse_err *err)
{
    enum gguf_vtype et;
    int rc = gguf_get_arr(f, key, &et, n, data, err);
    if (rc == GLIMPSE_ENOTFOUND && !required)
        return rc;
    if (rc == GLIMPSE_ENOTFOUND)
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: %s is missing", key);
    if (rc)
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: %s is not an array", key);
    if (et != elem_type)
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: %s has elements of type %d, expected %d", key,
                       (int)et, (int)elem_type);
    return 0;
}

/* Reads tokenizer.ggml.model and .pre into tok->pre. */
static int load_kind(const gguf_file *f, tokenizer *tok, glimpse_err *err)
{
    gguf_str s;
    int rc = gguf_get_str(f, "tokenizer.ggml.model", &s, err);
    if (rc == GLIMPSE_ENOTFOUND)
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: tokenizer.ggml.model is missing");
    if (rc)
        return rc;
    if (s.len != 4 || memcmp(s.ptr, "gpt2", 4) != 0)
        return err_set(err, GLIMPSE_EUNSUPPORTED, "tokenizer: model '%.*s' is not supported (only gpt2)",
                       (int)(s.len > 64 ? 64 : s.len), s.ptr);
    rc = gguf_get_str(f, "tokenizer.ggml.pre", &s, err);
    if (rc == GLIMPSE_ENOTFOUND)
        return err_set(err, GLIMPSE_EUNSUPPORTED,
                       "tokenizer: tokenizer.ggml.pre is missing (llama.cpp's degraded 'default' "
                       "pre-tokenizer is not supported)");
    if (rc)
        return rc;
    for (size_t i = 0; i < N_ELEMS(pre_names); i++) {
        if (strlen(pre_names[i].name) == s.len && memcmp(pre_names[i].name, s.ptr, s.len) == 0) {
            tok->pre = pre_names[i].pre;
            return 0;
        }
    }
    return err_set(err, GLIMPSE_EUNSUPPORTED, "tokenizer: unknown pre-tokenizer type: '%.*s'",
                   (int)(s.len > 64 ? 64 : s.len), s.ptr);
}

/* Copies the token texts and merges into the arena and indexes them. */
static int load_strings(const gguf_file *f, tokenizer *tok, glimpse_err *err)
{
    uint64_t n_tokens, n_merges;
    const void *unused;
    int rc;
    if ((rc = get_array(f, "tokenizer.ggml.tokens", GGUF_VTYPE_STRING, true, &n_tokens, &unused, err)))
        return rc;
    if ((rc = get_array(f, "tokenizer.ggml.merges", GGUF_VTYPE_STRING, true, &n_merges, &unused, err)))
        return rc;
    if (n_tokens == 0 || n_tokens > INT32_MAX - 1)
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: %llu tokens", (unsigned long long)n_tokens);
    if (n_merges > INT32_MAX - 1)
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: %llu merges", (unsigned long long)n_merges);
    tok->n_vocab = (int32_t)n_tokens;
    tok->n_merges = (size_t)n_merges;

    /* sizes first, so the arena is one allocation; an empty token is
     * renamed "[EMPTY_<id>]" like llama.cpp does */
    size_t total = 0;
    for (uint64_t i = 0; i < n_tokens + n_merges; i++) {
        bool is_tok = i < n_tokens;
        gguf_str s;
        rc = gguf_get_arr_str(f, is_tok ? "tokenizer.ggml.tokens" : "tokenizer.ggml.merges",
                              is_tok ? i : i - n_tokens, &s, err);
        if (rc)
            return rc;
        size_t len = (size_t)s.len;
        if (is_tok && len == 0)
            len = 32;
        if (s.len > SIZE_MAX || !size_add(total, len, &total))
            return err_set(err, GLIMPSE_ENOMEM, "tokenizer: strings too large");
    }
    tok->arena = malloc(total ? total : 1);
    tok->text = calloc((size_t)n_tokens, sizeof *tok->text);
    tok->merge = calloc(n_merges ? (size_t)n_merges : 1, sizeof *tok->merge);
    if (!tok->arena || !tok->text || !tok->merge || strtab_init(&tok->by_text, (size_t)n_tokens) ||
        strtab_init(&tok->by_merge, (size_t)n_merges))
        return err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");

    size_t off = 0;
    for (uint64_t i = 0; i < n_tokens + n_merges; i++) {
        bool is_tok = i < n_tokens;
        gguf_str s;
        gguf_get_arr_str(f, is_tok ? "tokenizer.ggml.tokens" : "tokenizer.ggml.merges",
                         is_tok ? i : i - n_tokens, &s, NULL);
        struct span sp = { off, (size_t)s.len };
        if (is_tok && s.len == 0) {
            LOG_WARN("tokenizer: empty token at index %llu", (unsigned long long)i);
            sp.len = (size_t)snprintf(tok->arena + off, 32, "[EMPTY_%llu]", (unsigned long long)i);
        } else {
            memcpy(tok->arena + off, s.ptr, sp.len);
        }
        off += sp.len;
        const char *p = tok->arena + sp.off;
        uint64_t h = fnv_add(FNV_INIT, p, sp.len);
        if (is_tok) {
            tok->text[i] = sp;
            size_t slot = strtab_slot(&tok->by_text, tok->arena, tok->text, h, p, sp.len);
            if (tok->by_text.slots[slot])
                return err_set(err, GLIMPSE_EFORMAT, "tokenizer: tokens %u and %llu have the same text",
                               tok->by_text.slots[slot] - 1, (unsigned long long)i);
            tok->by_text.slots[slot] = (uint32_t)i + 1;
        } else {
            size_t r = (size_t)(i - n_tokens);
            tok->merge[r] = sp;
            /* a repeated merge keeps its first rank, as std::map::emplace does */
            size_t slot = strtab_slot(&tok->by_merge, tok->arena, tok->merge, h, p, sp.len);
            if (!tok->by_merge.slots[slot])
                tok->by_merge.slots[slot] = (uint32_t)r + 1;
        }
    }
    return 0;
}

/* Token types (optional), checked the way llama.cpp checks them; also the
 * scores array, which we do not use but llama.cpp refuses when malformed. */
static int load_types(const gguf_file *f, tokenizer *tok, glimpse_err *err)
{
    uint64_t n;
    const void *data;
    size_t nv = (size_t)tok->n_vocab;
    tok->type = malloc(nv);
    tok->attr = malloc(nv);
    tok->eog = calloc(nv, sizeof *tok->eog);
    if (!tok->type || !tok->attr || !tok->eog)
        return err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
    enum gguf_vtype et;
    int rc = gguf_get_arr(f, "tokenizer.ggml.scores", &et, &n, &data, NULL);
    if (rc != GLIMPSE_ENOTFOUND) {
        if (rc || (et != GGUF_VTYPE_FLOAT32 && et != GGUF_VTYPE_INT32))
            return err_set(err, GLIMPSE_EFORMAT, "tokenizer: tokenizer.ggml.scores is not an f32/i32 array");
        if (n < nv)
            return err_set(err, GLIMPSE_EFORMAT, "tokenizer: %llu scores for %zu tokens",
                           (unsigned long long)n, nv);
    }
    rc = get_array(f, "tokenizer.ggml.token_type", GGUF_VTYPE_INT32, false, &n, &data, err);
    if (rc == GLIMPSE_ENOTFOUND) {
        memset(tok->type, TOKEN_TYPE_NORMAL, nv);
    } else if (rc) {
        return rc;
    } else if (n < nv) {
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: %llu token types for %zu tokens",
                       (unsigned long long)n, nv);
    } else {
        for (size_t i = 0; i < nv; i++) {
            int32_t t;
            memcpy(&t, (const char *)data + 4 * i, 4);
            /* a type llama.cpp does not know counts as UNDEFINED */
            tok->type[i] = (uint8_t)(t >= 0 && t <= TOKEN_TYPE_BYTE ? t : TOKEN_TYPE_UNDEFINED);
        }
    }
    for (size_t i = 0; i < nv; i++)
        tok->attr[i] = attr_of_type[tok->type[i]];
    return 0;
}

/* Special ids and add_bos/add_eos from the file, over gpt2's defaults. */
static int load_specials(const gguf_file *f, tokenizer *tok, glimpse_err *err)
{
    for (int r = 0; r < N_ROLES; r++)
        tok->special[r] = TOKEN_NONE;
    tok->special[ROLE_BOS] = tok->special[ROLE_EOS] = 11 < tok->n_vocab ? 11 : TOKEN_NONE;
    for (size_t k = 0; k < N_ELEMS(role_keys); k++) {
        uint32_t id;
        int rc = gguf_get_u32(f, role_keys[k].key, &id, err);
        if (rc == GLIMPSE_ENOTFOUND)
            continue;
        if (rc)
            return rc;
        if (id >= (uint32_t)tok->n_vocab)
            LOG_WARN("tokenizer: bad special token %s = %u (vocabulary of %d), keeping %d",
                     role_keys[k].key, id, tok->n_vocab, tok->special[role_keys[k].role]);
        else
            tok->special[role_keys[k].role] = (int32_t)id;
    }
    int rc = gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &tok->add_bos, err);
    if (rc && rc != GLIMPSE_ENOTFOUND)
        return rc;
    rc = gguf_get_bool(f, "tokenizer.ggml.add_eos_token", &tok->add_eos, err);
    if (rc && rc != GLIMPSE_ENOTFOUND)
        return rc;
    if (tok->add_bos && tok->special[ROLE_BOS] == TOKEN_NONE)
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: add_bos_token is set but there is no BOS token");
    if (tok->add_eos && tok->special[ROLE_EOS] == TOKEN_NONE)
        return err_set(err, GLIMPSE_EFORMAT, "tokenizer: add_eos_token is set but there is no EOS token");
    return 0;
}

static int32_t find_cstr(const tokenizer *tok, const char *s)
{
    return find_text(tok, s, strlen(s));
}

/* Roles found by text, the end-of-generation set, and the CONTROL attribute
 * llama.cpp gives the tokens it recognises. */
static void mark_eog(tokenizer *tok)
{
    for (size_t k = 0; k < N_ELEMS(role_texts); k++) {
        int32_t *id = &tok->special[role_texts[k].role];
        if (*id != TOKEN_NONE)
            continue;
        for (size_t j = 0; j < N_ELEMS(role_texts[k].texts) && role_texts[k].texts[j]; j++) {
            int32_t t = find_cstr(tok, role_texts[k].texts[j]);
            if (t != TOKEN_NONE && (*id == TOKEN_NONE || t < *id))
                *id = t;
        }
        if (*id != TOKEN_NONE)
            tok->attr[*id] |= ATTR_CONTROL;
    }
    for (size_t j = 0; j < N_ELEMS(eog_texts); j++) {
        int32_t t = find_cstr(tok, eog_texts[j]);
        if (t != TOKEN_NONE) {
            tok->eog[t] = true;
            tok->attr[t] |= ATTR_CONTROL;
        }
    }
    static const enum role eog_roles[] = { ROLE_EOS, ROLE_EOT, ROLE_EOM, ROLE_FIM_PAD, ROLE_FIM_REP, ROLE_FIM_SEP };
    for (size_t k = 0; k < N_ELEMS(eog_roles); k++)
        if (tok->special[eog_roles[k]] != TOKEN_NONE)
            tok->eog[tok->special[eog_roles[k]]] = true;
}

/* Detokenised bytes of NORMAL text: each code point back to its byte. A code
 * point outside the byte map is written as llama.cpp writes it,
 * "[UNK_BYTE_0x<its utf-8 in hex><the whole token text>]". */
static int decode_normal(const tokenizer *tok, int32_t id, struct buf *out, glimpse_err *err)
{
    const unsigned char *s = (const unsigned char *)tok->arena + tok->text[id].off;
    size_t len = tok->text[id].len;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        i += utf8_decode(s + i, len - i, &c);
        int b = unicode_cpt_to_byte(c);
        if (b >= 0) {
            unsigned char byte = (unsigned char)b;
            if (buf_put(out, &byte, 1))
                return GLIMPSE_ENOMEM;
            continue;
        }
        unsigned char u[4];
        size_t n = utf8_encode(c, u);
        if (n == 0)
            return err_set(err, GLIMPSE_EFORMAT, "tokenizer: token %d holds a code point above U+10FFFF", id);
        char hex[16];
        int rc = buf_put(out, "[UNK_BYTE_0x", 12);
        for (size_t k = 0; k < n && !rc; k++) {
            snprintf(hex, sizeof hex, "%02x", u[k]);
            rc = buf_put(out, hex, 2);
        }
        if (rc || buf_put(out, s, len) || buf_put(out, "]", 1))
            return GLIMPSE_ENOMEM;
    }
    return 0;
}

/* The piece of every token with special = true (llama.cpp's piece cache). */
static int build_pieces(tokenizer *tok, glimpse_err *err)
{
    struct buf out = { 0 };
    int rc = 0;
    tok->piece = calloc((size_t)tok->n_vocab, sizeof *tok->piece);
    if (!tok->piece)
        return err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
    for (int32_t id = 0; id < tok->n_vocab && rc == 0; id++) {
        size_t start = out.len;
        uint8_t a = tok->attr[id];
        const char *text = tok->arena + tok->text[id].off;
        size_t len = tok->text[id].len;
        if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
            rc = buf_put(&out, text, len);
        } else if (a & ATTR_NORMAL) {
            rc = decode_normal(tok, id, &out, err);
        } else if (a & ATTR_BYTE) {
            /* llama.cpp parses text[3..5) with strtol(.., 16), "<0x0A>" -> 0x0A */
            if (len < 3) {
                rc = err_set(err, GLIMPSE_EFORMAT, "tokenizer: byte token %d is too short", id);
                break;
            }
            char hex[3] = { 0 };
            memcpy(hex, text + 3, len - 3 < 2 ? len - 3 : 2);
            unsigned char byte = (unsigned char)strtol(hex, NULL, 16);
            rc = buf_put(&out, &byte, 1);
        }
        tok->piece[id] = (struct span){ start, out.len - start };
        if (out.len - start > tok->max_piece)
            tok->max_piece = out.len - start;
    }
    tok->pieces = out.data;
    if (rc == GLIMPSE_ENOMEM)
        return err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
    return rc;
}

static int cmp_special(const void *a, const void *b, void *arg)
{
    const tokenizer *tok = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    size_t lx = tok->text[x].len, ly = tok->text[y].len;
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Ids matched literally before BPE: CONTROL, USER_DEFINED and UNKNOWN, longest
 * text first so that a token containing another wins (equal lengths by id;
 * llama.cpp leaves their order to std::sort, but two different texts of one
 * length can only both match at overlapping places). */
static int build_specials(tokenizer *tok, glimpse_err *err)
{
    tok->specials = malloc((size_t)tok->n_vocab * sizeof *tok->specials);
    if (!tok->specials)
        return err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if (tok->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
            tok->specials[tok->n_specials++] = id;
    qsort_r(tok->specials, tok->n_specials, sizeof *tok->specials, cmp_special, tok);
    return 0;
}

int tokenizer_load(const gguf_file *f, tokenizer **out, glimpse_err *err)
{
    int rc;
    tokenizer *tok = calloc(1, sizeof *tok);
    *out = NULL;
    if (!tok)
        return err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
    if ((rc = load_kind(f, tok, err)) || (rc = load_strings(f, tok, err)) || (rc = load_types(f, tok, err)) ||
        (rc = load_specials(f, tok, err)))
        goto fail;
    mark_eog(tok);
    if ((rc = build_pieces(tok, err)) || (rc = build_specials(tok, err)))
        goto fail;
    *out = tok;
    return 0;
fail:
    tokenizer_free(tok);
    return rc;
}

/* ---------------------------------------------------------------------------
 * accessors
 */

int32_t tokenizer_n_vocab(const tokenizer *tok) { return tok->n_vocab; }
int32_t tokenizer_bos(const tokenizer *tok) { return tok->special[ROLE_BOS]; }
int32_t tokenizer_eos(const tokenizer *tok) { return tok->special[ROLE_EOS]; }
bool tokenizer_add_bos(const tokenizer *tok) { return tok->add_bos; }
bool tokenizer_add_eos(const tokenizer *tok) { return tok->add_eos; }
size_t tokenizer_max_piece_len(const tokenizer *tok) { return tok->max_piece; }

bool tokenizer_is_eog(const tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_vocab && tok->eog[id];
}

enum token_type tokenizer_type(const tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_vocab ? (enum token_type)tok->type[id] : TOKEN_TYPE_UNDEFINED;
}

const char *tokenizer_piece(const tokenizer *tok, int32_t id, bool special, size_t *len)
{
    *len = 0;
    if (id < 0 || id >= tok->n_vocab)
        return "";
    if (!special && (tok->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN)))
        return "";
    *len = tok->piece[id].len;
    return tok->pieces ? tok->pieces + tok->piece[id].off : "";
}

int32_t tokenizer_find(const tokenizer *tok, const char *text, size_t len)
{
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        size_t n;
        const char *p = tokenizer_piece(tok, id, true, &n);
        if (n == len && memcmp(p, text, len) == 0)
            return id;
    }
    return TOKEN_NONE;
}

/* ---------------------------------------------------------------------------
 * encoding
 */

/* A piece of the input after the special partition: raw text, or a token. */
struct frag {
    size_t off, len;
    int32_t id; /* TOKEN_NONE for raw text */
};

/* One BPE symbol: a run of the word buffer; removed symbols have n = 0. */
struct sym {
    size_t off, n;
    size_t prev, next; /* SIZE_MAX at the ends */
};

/* A candidate merge of two adjacent symbols. It is stale once either side
 * has changed length (symbols only ever grow to the right, so equal lengths
 * mean equal texts and still-adjacent symbols). */
struct bigram {
    int64_t rank;
    size_t left, right, left_n, right_n;
};

/* Per-call scratch and the output cursor. */
struct enc {
    const tokenizer *tok;
    uint32_t *cpts; size_t cap_cpts;
    uint8_t *cls; size_t cap_cls;
    unsigned char *word; size_t cap_word;
    struct sym *syms; size_t cap_syms;
    struct bigram *heap; size_t cap_heap, n_heap;
    int32_t *ids;
    size_t cap, n;
};

/* Character classes of the GPT-2 pattern; exactly one per code point, 0
 * outside the piece being split. */
enum { CLS_LETTER = 1, CLS_NUMBER = 2, CLS_SPACE = 4, CLS_OTHER = 8 };

static uint8_t cpt_cls(uint32_t c)
{
    if (unicode_is_whitespace(c))
        return CLS_SPACE;
    switch (unicode_category(c)) {
    case UNICODE_CAT_LETTER:
        return CLS_LETTER;
    case UNICODE_CAT_NUMBER:
        return CLS_NUMBER;
    default:
        return CLS_OTHER;
    }
}

static void emit(struct enc *e, int32_t id)
{
    if (e->n < e->cap)
        e->ids[e->n] = id;
    e->n++;
}

static bool bigram_before(const struct bigram *a, const struct bigram *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(struct enc *e, struct bigram b)
{
    size_t i = e->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_before(&b, &e->heap[parent]))
            break;
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i] = b;
}

static struct bigram heap_pop(struct enc *e)
{
    struct bigram top = e->heap[0], last = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && bigram_before(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!bigram_before(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n > 0)
        e->heap[i] = last;
    return top;
}

static void try_pair(struct enc *e, size_t l, size_t r)
{
    if (l == SIZE_MAX || r == SIZE_MAX)
        return;
    const struct sym *a = &e->syms[l], *b = &e->syms[r];
    int64_t rank = merge_rank(e->tok, (const char *)e->word + a->off, a->n, (const char *)e->word + b->off, b->n);
    if (rank >= 0)
        heap_push(e, (struct bigram){ rank, l, r, a->n, b->n });
}

/* BPE over one pre-tokenized word (code points cp[0..n)): byte-level
 * encoding, merges in rank order (leftmost first on ties), then vocabulary
 * lookup with llama.cpp's per-byte fallback. */
static int bpe_word(struct enc *e, const uint32_t *cp, size_t n)
{
    const tokenizer *tok = e->tok;
    size_t n_bytes = 0, max_bytes, word_len, heap_len;
    /* each code point is <= 4 bytes, each byte's map character <= 2; a merge
     * pushes at most two new pairs, so the heap stays below 3 per byte */
    if (!size_mul(n, 4, &max_bytes) || !size_mul(max_bytes, 2, &word_len) || !size_mul(max_bytes, 3, &heap_len) ||
        grow(&e->word, &e->cap_word, word_len, 1) || grow(&e->syms, &e->cap_syms, max_bytes, sizeof *e->syms) ||
        grow(&e->heap, &e->cap_heap, heap_len, sizeof *e->heap))
        return GLIMPSE_ENOMEM;
    size_t wlen = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char u[4];
        size_t k = utf8_encode(cp[i], u);
        for (size_t j = 0; j < k; j++) {
            unsigned char m[4];
            size_t mlen = utf8_encode(unicode_byte_to_cpt(u[j]), m);
            e->syms[n_bytes] = (struct sym){ wlen, mlen, n_bytes - 1, n_bytes + 1 };
            memcpy(e->word + wlen, m, mlen);
            wlen += mlen;
            n_bytes++;
        }
    }
    if (n_bytes == 0)
        return 0;
    e->syms[0].prev = SIZE_MAX;
    e->syms[n_bytes - 1].next = SIZE_MAX;

    e->n_heap = 0;
    for (size_t i = 0; i + 1 < n_bytes; i++)
        try_pair(e, i, i + 1);
    while (e->n_heap > 0) {
        struct bigram b = heap_pop(e);
        struct sym *l = &e->syms[b.left], *r = &e->syms[b.right];
        if (l->n != b.left_n || r->n != b.right_n || l->n == 0 || r->n == 0)
            continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next != SIZE_MAX)
            e->syms[r->next].prev = b.left;
        try_pair(e, l->prev, b.left);
        try_pair(e, b.left, l->next);
    }

    for (size_t i = 0; i != SIZE_MAX; i = e->syms[i].next) {
        const struct sym *s = &e->syms[i];
        const char *text = (const char *)e->word + s->off;
        int32_t id = find_text(tok, text, s->n);
        if (id != TOKEN_NONE) {
            emit(e, id);
            continue;
        }
        /* not in the vocabulary: llama.cpp looks up each byte of the symbol
         * as a one-byte string and drops those that are not tokens */
        for (size_t k = 0; k < s->n; k++) {
            id = find_text(tok, text + k, 1);
            if (id != TOKEN_NONE)
                emit(e, id);
        }
    }
    return 0;
}

#define CLS_AT(i) ((i) < hi ? cls[i] : 0)

/* The GPT-2 pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * over cp[lo..hi), with nothing outside visible; each match goes to BPE. */
static int split_gpt2(struct enc *e, const uint32_t *cp, const uint8_t *cls, size_t lo, size_t hi)
{
    size_t pos = lo;
    while (pos < hi) {
        uint32_t c = cp[pos];
        size_t end = 0;
        if (c == '\'' && pos + 1 < hi) {
            uint32_t c1 = cp[pos + 1], c2 = pos + 2 < hi ? cp[pos + 2] : 0;
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
                end = pos + 2;
            else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                end = pos + 3;
        }
        if (!end) {
            uint8_t f = c == ' ' ? CLS_AT(pos + 1) : cls[pos];
            if (f & (CLS_LETTER | CLS_NUMBER | CLS_OTHER)) {
                /* an optional space, then a run of one class */
                end = pos + (c == ' ');
                while (CLS_AT(end) == f)
                    end++;
            } else {
                size_t nws = 0;
                while (CLS_AT(pos + nws) == CLS_SPACE)
                    nws++;
                if (nws > 1 && pos + nws < hi)
                    end = pos + nws - 1; /* leave the last space to the next word */
                else
                    end = pos + (nws ? nws : 1);
            }
        }
        int rc = bpe_word(e, cp + pos, end - pos);
        if (rc)
            return rc;
        pos = end;
    }
    return 0;
}

/* Pre-tokenizes and encodes one raw fragment. */
static int encode_fragment(struct enc *e, const unsigned char *s, size_t len, glimpse_err *err)
{
    if (grow(&e->cpts, &e->cap_cpts, len, sizeof *e->cpts) || grow(&e->cls, &e->cap_cls, len, 1))
        return err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        i += utf8_decode(s + i, len - i, &c);
        if (c > UNICODE_MAX)
            return err_set(err, GLIMPSE_EINVAL, "tokenizer: invalid UTF-8 (code point above U+10FFFF at byte %zu)",
                           i);
        e->cpts[n] = c;
        e->cls[n] = cpt_cls(c);
        n++;
    }
    int rc = 0;
    if (e->tok->pre == PRE_GPT2) {
        rc = split_gpt2(e, e->cpts, e->cls, 0, n);
    } else {
        /* smollm: every \p{N} code point is a piece of its own first */
        for (size_t i = 0; i < n && rc == 0;) {
            size_t j = i + 1;
            if (e->cls[i] != CLS_NUMBER)
                while (j < n && e->cls[j] != CLS_NUMBER)
                    j++;
            rc = split_gpt2(e, e->cpts, e->cls, i, j);
            i = j;
        }
    }
    if (rc)
        return err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
    return 0;
}

/* Splits the fragments in *frags at every occurrence of each special token
 * text, longest first. */
static int partition(const tokenizer *tok, const char *text, bool parse_special, struct frag **frags,
                     size_t *n_frags, size_t *cap_frags)
{
    struct frag *next = NULL;
    size_t cap_next = 0;
    for (size_t k = 0; k < tok->n_specials; k++) {
        int32_t id = tok->specials[k];
        if (!parse_special && (tok->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN)))
            continue;
        const char *st = tok->arena + tok->text[id].off;
        size_t sl = tok->text[id].len, n_next = 0;
        for (size_t i = 0; i < *n_frags; i++) {
            struct frag f = (*frags)[i];
            size_t need;
            /* worst case: every match adds a token and a text fragment */
            if (!size_add(n_next, 2 * (f.len / sl) + 1, &need) || grow(&next, &cap_next, need, sizeof *next)) {
                free(next);
                return GLIMPSE_ENOMEM;
            }
            if (f.id != TOKEN_NONE || f.len < sl) {
                next[n_next++] = f;
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            for (;;) {
                const char *m = memmem(text + pos, end - pos, st, sl);
                if (!m)
                    break;
                size_t at = (size_t)(m - text);
                if (at > pos)
                    next[n_next++] = (struct frag){ pos, at - pos, TOKEN_NONE };
                next[n_next++] = (struct frag){ at, sl, id };
                pos = at + sl;
            }
            if (pos < end)
                next[n_next++] = (struct frag){ pos, end - pos, TOKEN_NONE };
        }
        struct frag *t = *frags;
        *frags = next;
        next = t;
        size_t c = *cap_frags;
        *cap_frags = cap_next;
        cap_next = c;
        *n_frags = n_next;
    }
    free(next);
    return 0;
}

int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, bool add_special, bool parse_special,
                     int32_t *ids, size_t cap, size_t *n, glimpse_err *err)
{
    struct enc e = { .tok = tok, .ids = ids, .cap = cap };
    struct frag *frags = NULL;
    size_t n_frags = 0, cap_frags = 0;
    int rc = 0;
    *n = 0;
    if (len > 0) {
        if (grow(&frags, &cap_frags, 1, sizeof *frags)) {
            rc = err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
            goto fail;
        }
        frags[n_frags++] = (struct frag){ 0, len, TOKEN_NONE };
        if (partition(tok, text, parse_special, &frags, &n_frags, &cap_frags)) {
            rc = err_set(err, GLIMPSE_ENOMEM, "tokenizer: out of memory");
            goto fail;
        }
    }
    if (add_special && tok->add_bos)
        emit(&e, tok->special[ROLE_BOS]);
    for (size_t i = 0; i < n_frags; i++) {
        if (frags[i].id != TOKEN_NONE)
            emit(&e, frags[i].id);
        else if ((rc = encode_fragment(&e, (const unsigned char *)text + frags[i].off, frags[i].len, err)))
            goto fail;
    }
    if (add_special && tok->add_eos)
        emit(&e, tok->special[ROLE_EOS]);
    *n = e.n;
    if (e.n > cap)
        rc = err_set(err, GLIMPSE_ELIMIT, "tokenizer: %zu tokens do not fit in %zu", e.n, cap);
fail:
    free(frags);
    free(e.cpts);
    free(e.cls);
    free(e.word);
    free(e.syms);
    free(e.heap);
    return rc;
}

/* ---------------------------------------------------------------------------
 * streaming detokenizer
 */

static const unsigned char replacement[3] = { 0xEF, 0xBF, 0xBD }; /* U+FFFD */

size_t detok_out_max(const tokenizer *tok)
{
    /* every byte of the held-back tail and the piece could become U+FFFD */
    return (tok->max_piece + sizeof((detok *)0)->pending) * sizeof replacement;
}

void detok_init(detok *d, const tokenizer *tok, bool special)
{
    d->tok = tok;
    d->special = special;
    d->n_pending = 0;
}

/* Writes the well-formed UTF-8 of pending + p[0..n) to out; at the end an
 * incomplete character is held back (final: replaced). Commits the new
 * pending tail only when everything fitted. */
static int detok_run(detok *d, const char *p, size_t n, bool final, char *out, size_t cap, size_t *out_len,
                     glimpse_err *err)
{
    unsigned char tail[4];
    size_t n_tail = 0, o = 0, i = 0, total = d->n_pending + n;
#define BYTE_AT(k) ((k) < d->n_pending ? d->pending[k] : (unsigned char)p[(k) - d->n_pending])
    while (i < total) {
        unsigned char seq[4];
        size_t avail = total - i < 4 ? total - i : 4;
        for (size_t k = 0; k < avail; k++)
            seq[k] = BYTE_AT(i + k);
        int r = utf8_strict(seq, avail);
        const unsigned char *w = seq;
        size_t wn = (size_t)r;
        if (r == 0 && !final) {
            memcpy(tail, seq, avail); /* avail <= 3 here: a complete prefix */
            n_tail = avail;
            break;
        }
        if (r <= 0) {
            w = replacement;
            wn = sizeof replacement;
            r = r == 0 ? (int)avail : -r;
        }
        if (o + wn > cap) {
            *out_len = 0;
            return err_set(err, GLIMPSE_ELIMIT, "detok: output needs more than %zu bytes", cap);
        }
        memcpy(out + o, w, wn);
        o += wn;
        i += (size_t)r;
    }
#undef BYTE_AT
    memcpy(d->pending, tail, n_tail);
    d->n_pending = n_tail;
    *out_len = o;
    return 0;
}

int detok_push(detok *d, int32_t id, char *out, size_t cap, size_t *out_len, glimpse_err *err)
{
    size_t n;
    const char *p = tokenizer_piece(d->tok, id, d->special, &n);
    return detok_run(d, p, n, false, out, cap, out_len, err);
}

int detok_flush(detok *d, char *out, size_t cap, size_t *out_len, glimpse_err *err)
{
    return detok_run(d, NULL, 0, true, out, cap, out_len, err);
}
