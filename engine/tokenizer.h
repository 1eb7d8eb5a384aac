/*
 * tokenizer.h — byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`) exactly as
 * llama.cpp runs it, with the `smollm` and `gpt-2` pre-tokenizers.
 *
 * Text -> ids: special-token partition (literal, longest first), lenient UTF-8
 * decoding, pre-tokenization into words, byte-level mapping, merges by rank.
 * Ids -> text: per-token pieces, and a streaming detokenizer that only ever
 * hands out well-formed UTF-8.
 *
 * Not covered: other pre-tokenizers (llama3, qwen2, ... and llama.cpp's
 * degraded "default" for a missing tokenizer.ggml.pre) are refused at load;
 * llama_detokenize's clean_spaces pass (on for gpt-2, off for smollm) is not
 * applied, since streaming works on pieces as llama.cpp's own CLIs do.
 *
 * A tokenizer is immutable after tokenizer_load: any thread may use it at
 * once. A detok is owned by one thread (one per sequence).
 */
#ifndef GLIMPSE_TOKENIZER_H
#define GLIMPSE_TOKENIZER_H

#include "gguf.h"

typedef struct tokenizer tokenizer;

/* Token types of `tokenizer.ggml.token_type` (llama.h: llama_token_type). */
enum token_type {
    TOKEN_TYPE_UNDEFINED = 0,
    TOKEN_TYPE_NORMAL = 1,
    TOKEN_TYPE_UNKNOWN = 2,
    TOKEN_TYPE_CONTROL = 3,
    TOKEN_TYPE_USER_DEFINED = 4,
    TOKEN_TYPE_UNUSED = 5,
    TOKEN_TYPE_BYTE = 6,
};

#define TOKEN_NONE (-1)

/* Reads the tokenizer.ggml.* keys of f and builds the tokenizer, with
 * llama.cpp's rules: gpt2 defaults bos = eos = 11 (dropped when out of range),
 * ids from the file override them when in range (else a warning); add_bos /
 * add_eos are false unless the file says otherwise; EOT/EOM/FIM tokens are
 * found by text when the file does not name them, and the end-of-generation
 * set is eos, eot, eom, the FIM pad/repo/sep tokens and every token whose text
 * is a known end marker (<|im_end|>, <|endoftext|>, <end_of_utterance>, ...).
 * Errors: GLIMPSE_EFORMAT for missing/mistyped keys, duplicate token texts or
 * too few token types; GLIMPSE_EUNSUPPORTED for another tokenizer model or an
 * unknown pre-tokenizer (message names it). Strings are copied: f may be
 * closed afterwards. On success *out is owned, free with tokenizer_free. */
int tokenizer_load(const gguf_file *f, tokenizer **out, glimpse_err *err);

void tokenizer_free(tokenizer *tok);

/* Number of tokens in the vocabulary. */
int32_t tokenizer_n_vocab(const tokenizer *tok);
/* Special ids, TOKEN_NONE when the vocabulary has none. */
int32_t tokenizer_bos(const tokenizer *tok);
int32_t tokenizer_eos(const tokenizer *tok);
/* Whether encode with add_special prepends BOS / appends EOS. */
bool tokenizer_add_bos(const tokenizer *tok);
bool tokenizer_add_eos(const tokenizer *tok);
/* True when id ends generation (false for ids out of range). */
bool tokenizer_is_eog(const tokenizer *tok, int32_t id);
/* The type the file gave id (TOKEN_TYPE_UNDEFINED when out of range). */
enum token_type tokenizer_type(const tokenizer *tok, int32_t id);

/* Tokenizes text[0..len) (any bytes; invalid UTF-8 becomes U+FFFD like in
 * llama.cpp). add_special adds BOS/EOS as the vocabulary asks; parse_special
 * lets CONTROL and UNKNOWN token texts in the text become those tokens
 * (USER_DEFINED texts always do). Writes up to cap ids and sets *n to the
 * full count: returns 0 when all fitted, GLIMPSE_ELIMIT (ids[0..cap) valid,
 * *n the size needed) when not, GLIMPSE_EINVAL when the text holds a 4-byte
 * sequence above U+10FFFF (llama.cpp aborts there), GLIMPSE_ENOMEM.
 * Allocates scratch per call; thread-safe. */
int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, bool add_special,
                     bool parse_special, int32_t *ids, size_t cap, size_t *n, glimpse_err *err);

/* The bytes of token id (llama.cpp's token_to_piece): NORMAL tokens decoded
 * from the byte-level alphabet, USER_DEFINED as written, CONTROL and UNKNOWN
 * as written only when special, UNUSED/UNDEFINED (and ids out of range) as
 * nothing. Borrowed, not NUL-terminated, valid until tokenizer_free; *len set.
 * Never allocates. */
const char *tokenizer_piece(const tokenizer *tok, int32_t id, bool special, size_t *len);

/* The longest piece of the vocabulary, in bytes. */
size_t tokenizer_max_piece_len(const tokenizer *tok);

/* First id whose piece with special=true is exactly text[0..len) (mtmd's
 * lookup_token: "\n" finds the token "Ċ"), or TOKEN_NONE. Linear scan. */
int32_t tokenizer_find(const tokenizer *tok, const char *text, size_t len);

/* ---- streaming detokenizer ---------------------------------------------- */

/* Turns a stream of ids into well-formed UTF-8: a character split across
 * tokens is held back until complete; ill-formed bytes become U+FFFD (one per
 * maximal subpart, as Python's errors="replace"). The concatenated output of
 * all pushes and the flush equals the pieces' bytes decoded that way. */
typedef struct detok {
    const tokenizer *tok;
    bool special;               /* render CONTROL/UNKNOWN tokens */
    unsigned char pending[4];   /* start of an incomplete character */
    size_t n_pending;
} detok;

/* Output room that always suffices for one detok_push or detok_flush. */
size_t detok_out_max(const tokenizer *tok);

void detok_init(detok *d, const tokenizer *tok, bool special);
/* Appends token id; writes the newly complete text to out[0..cap) and its
 * length to *out_len. GLIMPSE_ELIMIT (state unchanged, nothing consumed) when
 * cap is too small; cap >= detok_out_max(tok) never is. No allocation. */
int detok_push(detok *d, int32_t id, char *out, size_t cap, size_t *out_len, glimpse_err *err);
/* Ends the stream: an incomplete trailing character becomes U+FFFD. The
 * detok is then empty and may be reused. */
int detok_flush(detok *d, char *out, size_t cap, size_t *out_len, glimpse_err *err);

#endif /* GLIMPSE_TOKENIZER_H */
