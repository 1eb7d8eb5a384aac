/*
 * unicode.h — the little Unicode the tokenizer needs: lenient UTF-8 decoding
 * exactly as llama.cpp does it, code point categories, and GPT-2's byte <->
 * code point map of byte-level BPE.
 *
 * Pure functions over constant tables: any thread.
 */
#ifndef GLIMPSE_UNICODE_H
#define GLIMPSE_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UNICODE_REPLACEMENT 0xFFFDu /* U+FFFD, what an invalid byte decodes to */
#define UNICODE_MAX 0x10FFFFu

/* One class per Unicode general category letter, as llama.cpp's tokenizer
 * sees them (Cn is UNDEFINED; Cc, Cf, Co and Cs are CONTROL). Order fixed by
 * tools/gen_unicode.py. */
enum unicode_cat {
    UNICODE_CAT_UNDEFINED = 0,
    UNICODE_CAT_NUMBER = 1,      /* \p{N} */
    UNICODE_CAT_LETTER = 2,      /* \p{L} */
    UNICODE_CAT_SEPARATOR = 3,   /* \p{Z} */
    UNICODE_CAT_MARK = 4,        /* \p{M} */
    UNICODE_CAT_PUNCTUATION = 5, /* \p{P} */
    UNICODE_CAT_SYMBOL = 6,      /* \p{S} */
    UNICODE_CAT_CONTROL = 7,     /* \p{C} */
};

/* Decodes the code point starting at s[0] (len >= 1 bytes available) and
 * returns how many bytes it used. Like llama.cpp's unicode_cpts_from_utf8 it
 * checks only the lead byte's length bits and that the continuation bytes are
 * 10xxxxxx: a stray continuation byte, a lead byte 11111xxx or a sequence cut
 * short by len uses 1 byte and gives U+FFFD; overlong forms and surrogates
 * decode to their (possibly odd) values, and lead bytes F4..F7 can give values
 * above U+10FFFF, which callers must handle. */
size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cpt);

/* Writes the UTF-8 form of cpt (<= U+10FFFF; surrogates are written as
 * their 3-byte form) to out and returns its length 1..4, or 0 when cpt is
 * beyond U+10FFFF. */
size_t utf8_encode(uint32_t cpt, unsigned char out[4]);

/* Strict UTF-8 (Unicode table 3-7: no overlong forms, no surrogates, nothing
 * above U+10FFFF) for text we hand out. Looks at the sequence starting at
 * s[0] (len >= 1) and returns its length n > 0 if it is well formed; 0 if it
 * is a well-formed beginning cut short by len (more bytes may complete it);
 * -n if it is ill formed, where n >= 1 is the length of its maximal
 * well-formed prefix, to be replaced by one U+FFFD (the W3C/Unicode
 * "maximal subpart" practice, which Python's errors="replace" follows too). */
int utf8_strict(const unsigned char *s, size_t len);

/* Category of a code point; values beyond U+10FFFF are UNDEFINED. */
enum unicode_cat unicode_category(uint32_t cpt);

/* \s as llama.cpp defines it: Unicode White_Space (tab..CR, space, U+0085,
 * U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000). */
bool unicode_is_whitespace(uint32_t cpt);

/* GPT-2 byte-level map: bytes 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF stand for
 * themselves; the other 68 bytes map in increasing order to U+0100.. (so
 * ' ' -> U+0120 'Ġ', '\n' -> U+010A 'Ċ'). */
uint32_t unicode_byte_to_cpt(uint8_t byte);
/* Inverse of unicode_byte_to_cpt: the byte, or -1 when cpt is not in the map. */
int unicode_cpt_to_byte(uint32_t cpt);

/* The generated table (engine/unicode_data.c): (first code point << 8) |
 * enum unicode_cat, ascending; the first run starts at 0. */
extern const uint32_t unicode_cat_runs[];
extern const size_t unicode_cat_n_runs;

#endif /* GLIMPSE_UNICODE_H */
