/*
 * utf8.h — UTF-8 validation and repair (RFC 3629: no overlong forms,
 * surrogates or code points past U+10FFFF).
 */
#ifndef GLIMPSE_UTF8_H
#define GLIMPSE_UTF8_H

#include <stddef.h>

/* Length of the well-formed UTF-8 prefix of s[0..n); n when all of it is. */
size_t utf8_valid_prefix(const char *s, size_t n);

/* s[0..n) as a NUL-terminated string of valid UTF-8 without NUL bytes:
 * anything else becomes U+FFFD, one per byte. Owned, free with free();
 * NULL when out of memory. */
char *utf8_clean(const char *s, size_t n);

#endif /* GLIMPSE_UTF8_H */
