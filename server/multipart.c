/*
 * multipart.c — multipart/form-data over a complete body (see multipart.h).
 *
 * The body is a sequence of parts separated by delimiter lines:
 *
 *     preamble CRLF --B [LWSP] CRLF headers CRLF CRLF data CRLF --B ... CRLF --B-- epilogue
 *
 * Every scan is bounded by the end pointer of the region it looks at, so a
 * truncated body ends in an error, never in a read past len (check_multipart
 * puts each input right before a guard page).
 */
#include "multipart.h"

#include <stdbool.h>
#include <string.h>

#define MP_MAX_HEADER_BLOCK 8192 /* bytes of one part's header lines */

static bool is_space(char c) { return c == ' ' || c == '\t'; }

static bool lower_eq(const char *s, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    if (n != k)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lit[i])
            return false;
    }
    return true;
}

/* RFC 2046 bchars, plus space anywhere but last. */
static bool boundary_ok(const char *b, size_t n)
{
    if (n < 1 || n > MP_MAX_BOUNDARY || b[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = b[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || strchr("'()+_,-./:=? ", c)))
            return false;
    }
    return true;
}

/* Reads the next "; key=value" parameter of a header value in [*p, end).
 * Quoted values lose their quotes; a backslash-escaped character inside
 * quotes is kept escaped (browsers percent-encode quotes in names instead).
 * Returns 1 with the key/value, 0 at the end, -1 on a malformed parameter. */
static int param_next(const char **p, const char *end, const char **key, size_t *key_len, const char **val,
                      size_t *val_len)
{
    const char *s = *p;
    while (s < end && is_space(*s))
        s++;
    if (s == end)
        return 0;
    if (*s != ';')
        return -1;
    s++;
    while (s < end && is_space(*s))
        s++;
    const char *k = s;
    while (s < end && *s != '=' && *s != ';' && !is_space(*s))
        s++;
    if (s == k || s == end || *s != '=')
        return -1;
    *key = k;
    *key_len = (size_t)(s - k);
    s++;
    if (s < end && *s == '"') {
        const char *v = ++s;
        while (s < end && *s != '"') {
            if (*s == '\\' && s + 1 < end)
                s++;
            s++;
        }
        if (s == end)
            return -1;
        *val = v;
        *val_len = (size_t)(s - v);
        s++;
    } else {
        const char *v = s;
        while (s < end && *s != ';' && !is_space(*s))
            s++;
        if (s == v)
            return -1;
        *val = v;
        *val_len = (size_t)(s - v);
    }
    *p = s;
    return 1;
}

int mp_boundary(const char *ct, const char **out, size_t *out_len)
{
    const char *end = ct + strlen(ct);
    const char *s = ct;
    while (s < end && is_space(*s))
        s++;
    const char *t = s;
    while (s < end && *s != ';' && !is_space(*s))
        s++;
    if (!lower_eq(t, (size_t)(s - t), "multipart/form-data"))
        return -1;
    const char *k, *v;
    size_t kn, vn;
    int rc;
    while ((rc = param_next(&s, end, &k, &kn, &v, &vn)) == 1) {
        if (lower_eq(k, kn, "boundary")) {
            if (!boundary_ok(v, vn))
                return -1;
            *out = v;
            *out_len = vn;
            return 0;
        }
    }
    return -1;
}

/* The parts' header lines in [s, end): fills name/filename/content_type. */
static int parse_headers(const char *s, const char *end, mp_part *part, const char **why)
{
    int n_lines = 0;
    bool have_disp = false;
    while (s < end) {
        const char *eol = memchr(s, '\r', (size_t)(end - s));
        if (!eol || eol + 1 >= end || eol[1] != '\n') {
            *why = "a part header line does not end in CRLF";
            return -1;
        }
        if (++n_lines > MP_MAX_HEADERS) {
            *why = "too many header lines in a part";
            return -1;
        }
        const char *colon = memchr(s, ':', (size_t)(eol - s));
        if (!colon || colon == s) {
            *why = "a part header line has no name";
            return -1;
        }
        const char *v = colon + 1;
        while (v < eol && is_space(*v))
            v++;
        const char *ve = eol;
        while (ve > v && is_space(ve[-1]))
            ve--;
        if (lower_eq(s, (size_t)(colon - s), "content-disposition")) {
            const char *t = v;
            while (t < ve && *t != ';' && !is_space(*t))
                t++;
            if (have_disp || !lower_eq(v, (size_t)(t - v), "form-data")) {
                *why = "a part's Content-Disposition is not one form-data";
                return -1;
            }
            have_disp = true;
            const char *k, *pv;
            size_t kn, pvn;
            int rc;
            while ((rc = param_next(&t, ve, &k, &kn, &pv, &pvn)) == 1) {
                if (lower_eq(k, kn, "name")) {
                    part->name = pv;
                    part->name_len = pvn;
                } else if (lower_eq(k, kn, "filename")) {
                    part->filename = pv;
                    part->filename_len = pvn;
                }
            }
            if (rc < 0) {
                *why = "a part's Content-Disposition has a malformed parameter";
                return -1;
            }
        } else if (lower_eq(s, (size_t)(colon - s), "content-type")) {
            part->content_type = v;
            part->content_type_len = (size_t)(ve - v);
        }
        s = eol + 2;
    }
    if (!have_disp || !part->name) {
        *why = "a part has no Content-Disposition: form-data with a name";
        return -1;
    }
    return 0;
}

int mp_parse(const char *body, size_t len, const char *boundary, size_t boundary_len, mp_part *parts,
             size_t max_parts, const char **why)
{
    const char *end = body + len;
    char delim[2 + 2 + MP_MAX_BOUNDARY]; /* CRLF "--" boundary */
    if (!boundary_ok(boundary, boundary_len)) {
        *why = "invalid multipart boundary";
        return -1;
    }
    memcpy(delim, "\r\n--", 4);
    memcpy(delim + 4, boundary, boundary_len);
    size_t dlen = 4 + boundary_len;

    /* The first delimiter may open the body (no preamble, no CRLF before it). */
    const char *s;
    if (len >= dlen - 2 && !memcmp(body, delim + 2, dlen - 2)) {
        s = body + dlen - 2;
    } else {
        s = memmem(body, len, delim, dlen);
        if (!s) {
            *why = "the body has no multipart delimiter";
            return -1;
        }
        s += dlen;
    }
    size_t n = 0;
    for (;;) {
        /* s is just past a delimiter: "--" closes, else LWSP CRLF opens a part. */
        if (end - s >= 2 && s[0] == '-' && s[1] == '-')
            return (int)n;
        while (s < end && is_space(*s))
            s++;
        if (end - s < 2 || s[0] != '\r' || s[1] != '\n') {
            *why = s >= end ? "the body ends without a closing delimiter" : "junk after a multipart delimiter";
            return -1;
        }
        s += 2;
        if (n == max_parts) {
            *why = "too many parts in the multipart body";
            return -1;
        }
        mp_part *p = &parts[n];
        memset(p, 0, sizeof *p);
        /* Headers end at the first empty line; an empty header block is CRLF alone. */
        const char *hend;
        if (end - s >= 2 && s[0] == '\r' && s[1] == '\n') {
            hend = s;
        } else {
            size_t scan = (size_t)(end - s) < MP_MAX_HEADER_BLOCK + 4 ? (size_t)(end - s) : MP_MAX_HEADER_BLOCK + 4;
            const char *crlf2 = memmem(s, scan, "\r\n\r\n", 4);
            if (!crlf2) {
                *why = scan < (size_t)(end - s) ? "a part's headers are too long" : "a part's headers are truncated";
                return -1;
            }
            hend = crlf2 + 2;
        }
        if (parse_headers(s, hend, p, why) < 0)
            return -1;
        const char *data = hend + 2;
        const char *next = memmem(data, (size_t)(end - data), delim, dlen);
        if (!next) {
            *why = "a part is not followed by a delimiter";
            return -1;
        }
        p->data = data;
        p->data_len = (size_t)(next - data);
        n++;
        s = next + dlen;
    }
}
