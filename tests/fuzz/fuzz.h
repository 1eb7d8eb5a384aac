/*
 * fuzz.h — what every libFuzzer target here shares: a quiet engine log and a
 * property check that stops the run (libFuzzer saves the input) when the code
 * under test breaks its contract without crashing.
 */
#ifndef GLIMPSE_FUZZ_H
#define GLIMPSE_FUZZ_H

#include "glimpse.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A broken contract is a finding like a crash: report it and abort. */
#define FUZZ_CHECK(cond)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond);  \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/* A failed call returns a negative code and names the problem; the message
 * is NUL-terminated inside its buffer. */
#define FUZZ_CHECK_ERR(rc, err)                                                           \
    do {                                                                                  \
        FUZZ_CHECK((rc) < 0);                                                             \
        FUZZ_CHECK(memchr((err).msg, '\0', sizeof (err).msg) != NULL);                    \
        FUZZ_CHECK((err).msg[0] != '\0');                                                 \
    } while (0)

/* Reads the first and last byte of p[0..n): ASan faults if either is outside
 * the buffer the code under test claimed. */
static inline void fuzz_touch(const void *p, size_t n)
{
    if (n) {
        volatile uint8_t a = ((const uint8_t *)p)[0], z = ((const uint8_t *)p)[n - 1];
        (void)a, (void)z;
    }
}

/* Well-formed UTF-8 (RFC 3629: no overlongs, surrogates or values past U+10FFFF). */
static inline bool utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!k || k > n - i)
            return false;
        unsigned cp = k == 1 ? c : c & (0x7Fu >> k);
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3Fu);
        }
        static const unsigned min_cp[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (cp < min_cp[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k;
    }
    return true;
}

static void fuzz_log_drop(int level, const char *msg, void *user)
{
    (void)level, (void)msg, (void)user;
}

/* Warnings about odd files would flood the fuzzer's output. */
static inline void fuzz_quiet(void)
{
    glimpse_log_set(fuzz_log_drop, GLIMPSE_LOG_ERROR, NULL);
}

#endif /* GLIMPSE_FUZZ_H */
