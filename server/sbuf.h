/*
 * sbuf.h — a growable byte buffer for response bodies. A failed allocation
 * sets oom and turns later appends into no-ops, so callers check once at the
 * end. Owned memory: free p with free().
 */
#ifndef GLIMPSE_SBUF_H
#define GLIMPSE_SBUF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
    char *p;        /* NUL-terminated when len > 0 */
    size_t len, cap;
    int oom;
} sbuf;

static inline void sbuf_put(sbuf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (n >= SIZE_MAX - b->len) {
        b->oom = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) {
                b->oom = 1;
                return;
            }
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static inline void sbuf_str(sbuf *b, const char *s) { sbuf_put(b, s, strlen(s)); }

static inline void sbuf_free(sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

#endif /* GLIMPSE_SBUF_H */
