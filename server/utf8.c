/*
 * utf8.c — UTF-8 validation and repair for everything the server writes as
 * JSON text (token pieces may be parts of characters) and reads as prompts.
 */
#include "utf8.h"

#include "sbuf.h"

#include <string.h>

/* Length of the well-formed UTF-8 prefix of s[0..n) (RFC 3629: no overlongs,
 * surrogates or code points past U+10FFFF); n when all of it is. */
size_t utf8_valid_prefix(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || len > n - i)
            return i;
        unsigned cp = len == 1 ? c : c & (0x7Fu >> len);
        for (size_t k = 1; k < len; k++) {
            if ((u[i + k] & 0xC0) != 0x80)
                return i;
            cp = cp << 6 | (u[i + k] & 0x3Fu);
        }
        static const unsigned min_cp[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += len;
    }
    return n;
}

/* s[0..n) as a NUL-terminated string of valid UTF-8 without NUL bytes:
 * anything else (a token piece may be part of a character) becomes U+FFFD,
 * one per byte. Owned, free with free(); NULL on OOM. */
char *utf8_clean(const char *s, size_t n)
{
    sbuf b = { 0 };
    for (size_t i = 0; i < n;) {
        size_t k = utf8_valid_prefix(s + i, n - i);
        const char *nul = k ? memchr(s + i, '\0', k) : NULL;
        if (nul)
            k = (size_t)(nul - (s + i));
        sbuf_put(&b, s + i, k);
        i += k;
        if (i < n) {
            sbuf_put(&b, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    sbuf_put(&b, "", 0);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
