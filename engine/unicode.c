/*
 * unicode.c — lenient and strict UTF-8, categories, the byte-level BPE map.
 */
#include "unicode.h"

size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cpt)
{
    unsigned b = s[0];
    size_t need;
    if (b < 0x80) {
        *cpt = b;
        return 1;
    }
    /* The lead byte's high bits give the length; the payload mask keeps the
     * bits below the first 0. 10xxxxxx and 11111xxx are not lead bytes. */
    if ((b & 0x40) == 0)
        need = 0;
    else if ((b & 0x20) == 0)
        need = 1;
    else if ((b & 0x10) == 0)
        need = 2;
    else if ((b & 0x08) == 0)
        need = 3;
    else
        need = 0;
    if (need == 0 || need >= len)
        goto invalid;
    uint32_t c = b & (0x3Fu >> need);
    for (size_t k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80)
            goto invalid;
        c = c << 6 | (s[k] & 0x3Fu);
    }
    *cpt = c;
    return need + 1;
invalid:
    *cpt = UNICODE_REPLACEMENT;
    return 1;
}

size_t utf8_encode(uint32_t cpt, unsigned char out[4])
{
    if (cpt < 0x80) {
        out[0] = (unsigned char)cpt;
        return 1;
    }
    if (cpt < 0x800) {
        out[0] = (unsigned char)(0xC0 | cpt >> 6);
        out[1] = (unsigned char)(0x80 | (cpt & 0x3F));
        return 2;
    }
    if (cpt < 0x10000) {
        out[0] = (unsigned char)(0xE0 | cpt >> 12);
        out[1] = (unsigned char)(0x80 | (cpt >> 6 & 0x3F));
        out[2] = (unsigned char)(0x80 | (cpt & 0x3F));
        return 3;
    }
    if (cpt <= UNICODE_MAX) {
        out[0] = (unsigned char)(0xF0 | cpt >> 18);
        out[1] = (unsigned char)(0x80 | (cpt >> 12 & 0x3F));
        out[2] = (unsigned char)(0x80 | (cpt >> 6 & 0x3F));
        out[3] = (unsigned char)(0x80 | (cpt & 0x3F));
        return 4;
    }
    return 0;
}

int utf8_strict(const unsigned char *s, size_t len)
{
    unsigned b = s[0];
    int need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF)
        need = 1;
    else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0)
            lo = 0xA0; /* overlong below U+0800 */
        else if (b == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0)
            lo = 0x90; /* overlong below U+10000 */
        else if (b == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return -1; /* continuation byte, C0, C1, F5..FF */
    }
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= len)
            return 0;
        unsigned c = s[k];
        if (c < lo || c > hi)
            return -k;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

enum unicode_cat unicode_category(uint32_t cpt)
{
    if (cpt > UNICODE_MAX)
        return UNICODE_CAT_UNDEFINED;
    /* last run whose start is <= cpt; run 0 starts at U+0000 */
    size_t lo = 0, hi = unicode_cat_n_runs;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if ((unicode_cat_runs[mid] >> 8) <= cpt)
            lo = mid;
        else
            hi = mid;
    }
    return (enum unicode_cat)(unicode_cat_runs[lo] & 0xFF);
}

bool unicode_is_whitespace(uint32_t cpt)
{
    if (cpt < 0x80)
        return cpt == ' ' || (cpt >= 0x09 && cpt <= 0x0D);
    switch (cpt) {
    case 0x0085: case 0x00A0: case 0x1680: case 0x2028: case 0x2029:
    case 0x202F: case 0x205F: case 0x3000:
        return true;
    default:
        return cpt >= 0x2000 && cpt <= 0x200A;
    }
}

/* Bytes that stand for themselves in the byte-level map. */
static bool byte_is_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

uint32_t unicode_byte_to_cpt(uint8_t byte)
{
    if (byte_is_printable(byte))
        return byte;
    /* the n-th non-printable byte maps to U+0100 + n: 0x00..0x20 are the
     * first 33, then 0x7F..0xA0 (34), then 0xAD */
    if (byte <= 0x20)
        return 0x100u + byte;
    if (byte <= 0xA0)
        return 0x100u + 33 + (byte - 0x7Fu);
    return 0x100u + 67;
}

int unicode_cpt_to_byte(uint32_t cpt)
{
    if (cpt < 0x100)
        return byte_is_printable(cpt) ? (int)cpt : -1;
    if (cpt < 0x100 + 33)
        return (int)(cpt - 0x100);
    if (cpt < 0x100 + 67)
        return (int)(cpt - 0x100 - 33 + 0x7F);
    if (cpt == 0x100 + 67)
        return 0xAD;
    return -1;
}
