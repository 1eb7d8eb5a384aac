/*
 * check_multipart.c — the multipart/form-data parser: boundary parameters,
 * complete bodies, every truncation of a valid body, and malformed bodies,
 * each placed right before a guard page so that any read past len faults.
 */
#include "multipart.h"
#include "testutil.h"

/* Parses body (NUL-terminated literal, len = strlen) from a guarded copy. */
static int parse_guarded(const char *body, size_t len, const char *boundary, mp_part *parts, size_t max,
                         const char **why)
{
    char *g = guarded_copy(body, len);
    ck_assert_ptr_nonnull(g);
    int n = mp_parse(g, len, boundary, strlen(boundary), parts, max, why);
    /* parts point into g: check them before it goes */
    for (int i = 0; i < n; i++) {
        ck_assert(parts[i].data >= g && parts[i].data + parts[i].data_len <= g + len);
        ck_assert(parts[i].name >= g && parts[i].name + parts[i].name_len <= g + len);
    }
    guarded_free(g, len);
    return n;
}

#define CRLF "\r\n"

static const char VALID[] = "preamble to ignore" CRLF
                            "--XyZ" CRLF
                            "Content-Disposition: form-data; name=\"prompt\"" CRLF
                            CRLF
                            "What is this?" CRLF
                            "--XyZ" CRLF
                            "Content-Disposition: form-data; name=\"image\"; filename=\"a b.png\"" CRLF
                            "Content-Type: image/png" CRLF
                            CRLF
                            "\x89PNG\r\n\x1a\n--XyZnot-a-delimiter\r\n--Xy" CRLF
                            "--XyZ  " CRLF
                            "content-disposition: FORM-DATA; name=max_tokens" CRLF
                            CRLF
                            CRLF
                            "--XyZ--" CRLF
                            "epilogue";

START_TEST(test_valid)
{
    mp_part p[8];
    const char *why = NULL;
    size_t len = sizeof VALID - 1;
    int n = parse_guarded(VALID, len, "XyZ", p, 8, &why);
    ck_assert_msg(n == 3, "n=%d why=%s", n, why ? why : "");
    /* parse again from the literal to compare contents */
    n = mp_parse(VALID, len, "XyZ", 3, p, 8, &why);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(p[0].name_len, 6);
    ck_assert(!memcmp(p[0].name, "prompt", 6));
    ck_assert_ptr_null(p[0].filename);
    ck_assert_int_eq(p[0].data_len, 13);
    ck_assert(!memcmp(p[0].data, "What is this?", 13));
    ck_assert(!memcmp(p[1].name, "image", 5));
    ck_assert_int_eq(p[1].filename_len, 7);
    ck_assert(!memcmp(p[1].filename, "a b.png", 7));
    ck_assert_int_eq(p[1].content_type_len, 9);
    ck_assert(!memcmp(p[1].content_type, "image/png", 9));
    /* a delimiter-like string without a CRLF before it is data */
    const char *img = "\x89PNG\r\n\x1a\n--XyZnot-a-delimiter\r\n--Xy";
    ck_assert_int_eq(p[1].data_len, strlen(img));
    ck_assert(!memcmp(p[1].data, img, strlen(img)));
    ck_assert(!memcmp(p[2].name, "max_tokens", 10));
    ck_assert_int_eq(p[2].data_len, 0);
}
END_TEST

/* Every proper prefix of a valid body (which lacks its closing delimiter) fails cleanly. */
START_TEST(test_truncations)
{
    const char *end = strstr(VALID, "--XyZ--");
    size_t full = (size_t)(end - VALID) + 7; /* through the closing delimiter */
    for (size_t len = 0; len < full; len++) {
        mp_part p[8];
        const char *why = NULL;
        int n = parse_guarded(VALID, len, "XyZ", p, 8, &why);
        ck_assert_msg(n == -1, "prefix %zu parsed as %d parts", len, n);
        ck_assert_ptr_nonnull(why);
    }
    mp_part p[8];
    const char *why;
    ck_assert_int_eq(parse_guarded(VALID, full, "XyZ", p, 8, &why), 3);
}
END_TEST

static const struct {
    const char *body;
    const char *boundary;
    int n; /* expected parts, -1 for an error */
} TABLE[] = {
    { "--b" CRLF "Content-Disposition: form-data; name=x" CRLF CRLF "1" CRLF "--b--", "b", 1 },
    /* no preamble, empty form */
    { "--b--" CRLF, "b", 0 },
    /* LWSP after the delimiter is allowed */
    { "--b \t" CRLF "Content-Disposition: form-data; name=x" CRLF CRLF "1" CRLF "--b--", "b", 1 },
    /* junk after a delimiter */
    { "--bjunk" CRLF "Content-Disposition: form-data; name=x" CRLF CRLF "1" CRLF "--b--", "b", -1 },
    /* no delimiter at all */
    { "hello world", "b", -1 },
    { "", "b", -1 },
    /* missing Content-Disposition */
    { "--b" CRLF "Content-Type: text/plain" CRLF CRLF "1" CRLF "--b--", "b", -1 },
    /* empty header block */
    { "--b" CRLF CRLF "1" CRLF "--b--", "b", -1 },
    /* not form-data */
    { "--b" CRLF "Content-Disposition: attachment; name=x" CRLF CRLF "1" CRLF "--b--", "b", -1 },
    /* no name */
    { "--b" CRLF "Content-Disposition: form-data; filename=x" CRLF CRLF "1" CRLF "--b--", "b", -1 },
    /* unterminated quoted name */
    { "--b" CRLF "Content-Disposition: form-data; name=\"x" CRLF CRLF "1" CRLF "--b--", "b", -1 },
    /* header line without a colon */
    { "--b" CRLF "Content-Disposition form-data" CRLF CRLF "1" CRLF "--b--", "b", -1 },
    /* bare LF line ends */
    { "--b\nContent-Disposition: form-data; name=x\n\n1\n--b--", "b", -1 },
    /* a part without a following delimiter */
    { "--b" CRLF "Content-Disposition: form-data; name=x" CRLF CRLF "1", "b", -1 },
    /* two parts, the second empty-named is fine by the parser */
    { "--b" CRLF "Content-Disposition: form-data; name=x" CRLF CRLF "1" CRLF "--b" CRLF
      "Content-Disposition: form-data; name=\"\"" CRLF CRLF "2" CRLF "--b--", "b", 2 },
    /* a name with an escaped quote */
    { "--b" CRLF "Content-Disposition: form-data; name=\"a\\\"b\"" CRLF CRLF "1" CRLF "--b--", "b", 1 },
    /* invalid boundary characters */
    { "--b{" CRLF "Content-Disposition: form-data; name=x" CRLF CRLF "1" CRLF "--b{--", "b{", -1 },
    /* two Content-Dispositions */
    { "--b" CRLF "Content-Disposition: form-data; name=x" CRLF "Content-Disposition: form-data; name=y" CRLF CRLF
      "1" CRLF "--b--", "b", -1 },
};

START_TEST(test_table)
{
    mp_part p[4];
    const char *why = NULL;
    int n = parse_guarded(TABLE[_i].body, strlen(TABLE[_i].body), TABLE[_i].boundary, p, 4, &why);
    ck_assert_msg(n == TABLE[_i].n, "case %d: got %d (%s)", _i, n, n < 0 && why ? why : "");
}
END_TEST

START_TEST(test_limits)
{
    /* more parts than room */
    const char *body = "--b" CRLF "Content-Disposition: form-data; name=x" CRLF CRLF "1" CRLF "--b" CRLF
                       "Content-Disposition: form-data; name=y" CRLF CRLF "2" CRLF "--b--";
    mp_part p[2];
    const char *why = NULL;
    ck_assert_int_eq(parse_guarded(body, strlen(body), "b", p, 1, &why), -1);
    ck_assert_int_eq(parse_guarded(body, strlen(body), "b", p, 2, &why), 2);
    /* too many header lines */
    char big[4096] = "--b" CRLF;
    for (int i = 0; i < MP_MAX_HEADERS; i++)
        strcat(big, "X-Pad: 1" CRLF);
    strcat(big, "Content-Disposition: form-data; name=x" CRLF CRLF "1" CRLF "--b--");
    ck_assert_int_eq(parse_guarded(big, strlen(big), "b", p, 2, &why), -1);
    /* an overlong header block is refused without scanning the whole body */
    size_t n = 20000;
    char *huge = malloc(n + 64);
    ck_assert_ptr_nonnull(huge);
    strcpy(huge, "--b" CRLF "X-Long: ");
    size_t k = strlen(huge);
    memset(huge + k, 'a', n);
    huge[k + n] = '\0';
    strcat(huge, CRLF CRLF "--b--");
    ck_assert_int_eq(parse_guarded(huge, strlen(huge), "b", p, 2, &why), -1);
    free(huge);
    /* a boundary longer than RFC 2046 allows */
    char lb[80];
    memset(lb, 'a', 71);
    lb[71] = '\0';
    ck_assert_int_eq(mp_parse("x", 1, lb, 71, p, 2, &why), -1);
}
END_TEST

START_TEST(test_boundary)
{
    const char *b;
    size_t n;
    ck_assert_int_eq(mp_boundary("multipart/form-data; boundary=abc", &b, &n), 0);
    ck_assert(n == 3 && !memcmp(b, "abc", 3));
    ck_assert_int_eq(mp_boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b:c\"", &b, &n), 0);
    ck_assert(n == 5 && !memcmp(b, "a b:c", 5));
    ck_assert_int_eq(mp_boundary("multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW", &b, &n), 0);
    ck_assert_int_eq(n, strlen("----WebKitFormBoundary7MA4YWxkTrZu0gW"));
    ck_assert_int_eq(mp_boundary("multipart/form-data", &b, &n), -1);
    ck_assert_int_eq(mp_boundary("multipart/mixed; boundary=abc", &b, &n), -1);
    ck_assert_int_eq(mp_boundary("application/json", &b, &n), -1);
    ck_assert_int_eq(mp_boundary("multipart/form-data; boundary=", &b, &n), -1);
    ck_assert_int_eq(mp_boundary("multipart/form-data; boundary=\"abc", &b, &n), -1);
    ck_assert_int_eq(mp_boundary("multipart/form-data; boundary=\"abc \"", &b, &n), -1);
    ck_assert_int_eq(mp_boundary("multipart/form-data; boundary=a{b", &b, &n), -1);
}
END_TEST

/* Random bytes never crash the parser or make it read past the end. */
START_TEST(test_random)
{
    unsigned s = 12345;
    static const char alphabet[] = "-b\r\n:;=\" xContent-Disposition: form-data; name=";
    for (int iter = 0; iter < 3000; iter++) {
        char buf[256];
        size_t len = (size_t)(iter % 200);
        for (size_t i = 0; i < len; i++) {
            s = s * 1103515245u + 12345u;
            buf[i] = alphabet[(s >> 16) % (sizeof alphabet - 1)];
        }
        mp_part p[8];
        const char *why;
        int n = parse_guarded(buf, len, "b", p, 8, &why);
        ck_assert(n >= -1 && n <= 8);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("multipart");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_valid);
    tcase_add_test(tc, test_truncations);
    tcase_add_loop_test(tc, test_table, 0, (int)(sizeof TABLE / sizeof TABLE[0]));
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_boundary);
    tcase_add_test(tc, test_random);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
