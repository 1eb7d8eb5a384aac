/*
 * fuzz_tokenizer — the tokenizer on arbitrary bytes, and the streaming
 * detokenizer on arbitrary ids, over the committed test vocabulary
 * (tests/data/tokenizer.json as a GGUF; run.sh writes it and passes its path
 * in GLIMPSE_FUZZ_VOCAB).
 *
 * Properties: encoding never fails except for the documented 4-byte
 * sequences above U+10FFFF; every id is in the vocabulary; the size query
 * (cap too small) reports the same count as the full encode; without special
 * parsing, detokenizing the ids of valid UTF-8 text gives the text back; the
 * detokenizer's output is always well-formed UTF-8.
 */
#include "fuzz.h"
#include "gguf.h"
#include "tokenizer.h"

static gguf_file *vocab_file;
static tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_quiet();
    const char *path = getenv("GLIMPSE_FUZZ_VOCAB");
    glimpse_err e = { 0 };
    if (!path || gguf_open(path, &vocab_file, &e) < 0 || tokenizer_load(vocab_file, &tok, &e) < 0) {
        fprintf(stderr, "fuzz_tokenizer: set GLIMPSE_FUZZ_VOCAB to a vocabulary GGUF (%s)\n", e.msg);
        exit(1);
    }
    return 0;
}

/* Streams ids through a detok into out (room for n_ids pushes and a flush);
 * returns the length. Every chunk must be well-formed on its own. */
static size_t detokenize(const int32_t *ids, size_t n_ids, bool special, char *out)
{
    detok d;
    detok_init(&d, tok, special);
    size_t max = detok_out_max(tok), total = 0, got = 0;
    glimpse_err e = { 0 };
    for (size_t i = 0; i < n_ids; i++) {
        FUZZ_CHECK(detok_push(&d, ids[i], out + total, max, &got, &e) == 0);
        FUZZ_CHECK(got <= max && utf8_valid((unsigned char *)out + total, got));
        total += got;
    }
    FUZZ_CHECK(detok_flush(&d, out + total, max, &got, &e) == 0);
    FUZZ_CHECK(got <= max && utf8_valid((unsigned char *)out + total, got));
    return total + got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 1)
        return 0;
    const bool parse_special = data[0] & 1, add_special = data[0] & 2;
    const char *text = (const char *)data + 1;
    const size_t text_len = len - 1;
    glimpse_err e = { 0 };

    /* encode: a size query first, then into exactly that room */
    size_t need = 0;
    int32_t one;
    int rc = tokenizer_encode(tok, text, text_len, add_special, parse_special, &one, 0, &need, &e);
    if (rc == GLIMPSE_EINVAL)
        return 0; /* a 4-byte sequence above U+10FFFF: refused as documented */
    FUZZ_CHECK(rc == 0 || rc == GLIMPSE_ELIMIT);
    int32_t *ids = malloc((need ? need : 1) * sizeof *ids);
    FUZZ_CHECK(ids != NULL);
    size_t n = 0;
    rc = tokenizer_encode(tok, text, text_len, add_special, parse_special, ids, need, &n, &e);
    FUZZ_CHECK(rc == 0 && n == need);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < tokenizer_n_vocab(tok));

    size_t max = detok_out_max(tok);
    char *out = malloc((n + 1) * max);
    FUZZ_CHECK(out != NULL);
    size_t out_len = detokenize(ids, n, false, out);
    /* plain text round-trips: nothing special was parsed or added */
    if (!parse_special && !add_special && utf8_valid((const unsigned char *)text, text_len))
        FUZZ_CHECK(out_len == text_len && !memcmp(out, text, text_len));
    free(out);
    free(ids);

    /* the detokenizer on arbitrary ids (out of range ones included) */
    size_t n_raw = text_len / 4;
    int32_t *raw = malloc((n_raw ? n_raw : 1) * sizeof *raw);
    char *buf = malloc((n_raw + 1) * max);
    FUZZ_CHECK(raw && buf);
    memcpy(raw, text, n_raw * sizeof *raw);
    for (size_t i = 0; i < n_raw; i++)
        raw[i] %= tokenizer_n_vocab(tok) + 16;
    detokenize(raw, n_raw, parse_special, buf);
    free(buf);
    free(raw);
    return 0;
}
