/*
 * multipart.h — a multipart/form-data parser (RFC 7578 over RFC 2046) over a
 * complete body held in memory.
 *
 * The parser never allocates and never reads past body[len): every part it
 * returns points into the body (borrowed, valid while the body is).
 * Any thread; no shared state.
 */
#ifndef GLIMPSE_MULTIPART_H
#define GLIMPSE_MULTIPART_H

#include <stddef.h>

#define MP_MAX_BOUNDARY 70  /* RFC 2046 §5.1.1 */
#define MP_MAX_HEADERS 16   /* header lines per part */

typedef struct mp_part {
    const char *name;         /* Content-Disposition name, unquoted; never NULL */
    size_t name_len;
    const char *filename;     /* filename parameter, or NULL when absent (a plain field) */
    size_t filename_len;
    const char *content_type; /* the part's Content-Type value, or NULL */
    size_t content_type_len;
    const char *data;         /* the part's content */
    size_t data_len;
} mp_part;

/* Finds the boundary parameter in a Content-Type header value
 * ("multipart/form-data; boundary=xyz", quoted or not). On success *out
 * points into ct (borrowed) and *out_len is 1..MP_MAX_BOUNDARY.
 * Returns 0, or -1 when ct is not multipart/form-data or has no valid boundary. */
int mp_boundary(const char *ct, const char **out, size_t *out_len);

/* Splits body[0..len) into at most max_parts parts. On success returns the
 * number of parts (>= 0) and fills parts[]; on failure returns -1 and puts a
 * static message in *why: a missing or broken delimiter, a part without
 * "Content-Disposition: form-data; name=...", an overlong header block, more
 * parts than max_parts, or no closing delimiter. */
int mp_parse(const char *body, size_t len, const char *boundary, size_t boundary_len, mp_part *parts,
             size_t max_parts, const char **why);

#endif /* GLIMPSE_MULTIPART_H */
