/*
 * fuzz_multipart — a multipart/form-data request: the first line of the
 * input is the Content-Type header value (mp_boundary), the rest the body
 * (mp_parse), and the parts go on to chat_parse_form as the server does.
 * Every part must lie inside the body; the form's outcome obeys the same
 * properties as a JSON request's.
 */
#include "openai_props.h"

#define MAX_PARTS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    const char *nl = memchr(data, '\n', len);
    if (!nl)
        return 0;
    size_t ct_len = (size_t)(nl - (const char *)data);
    char *ct = malloc(ct_len + 1);
    FUZZ_CHECK(ct != NULL);
    memcpy(ct, data, ct_len);
    ct[ct_len] = '\0';
    /* the body in its own exact-size buffer, so a read past it faults */
    size_t body_len = len - ct_len - 1;
    char *body = malloc(body_len ? body_len : 1);
    FUZZ_CHECK(body != NULL);
    memcpy(body, nl + 1, body_len);

    const char *b = NULL;
    size_t b_len = 0;
    if (mp_boundary(ct, &b, &b_len) < 0)
        goto done;
    FUZZ_CHECK(b >= ct && b_len >= 1 && b_len <= MP_MAX_BOUNDARY && b + b_len <= ct + ct_len);

    mp_part parts[MAX_PARTS];
    const char *why = NULL;
    int n = mp_parse(body, body_len, b, b_len, parts, MAX_PARTS, &why);
    if (n < 0) {
        FUZZ_CHECK(why != NULL && why[0] != '\0');
        goto done;
    }
    FUZZ_CHECK(n <= MAX_PARTS);
    const char *end = body + body_len;
    for (int i = 0; i < n; i++) {
        const mp_part *p = &parts[i];
        FUZZ_CHECK(p->name >= body && p->name + p->name_len <= end);
        FUZZ_CHECK(p->data >= body && p->data + p->data_len <= end);
        FUZZ_CHECK(!p->filename || (p->filename >= body && p->filename + p->filename_len <= end));
        FUZZ_CHECK(!p->content_type || (p->content_type >= body && p->content_type + p->content_type_len <= end));
    }
    chat_req *cr = NULL;
    api_error e = { 0 };
    if (chat_parse_form(parts, (size_t)n, &FUZZ_LIMITS, &cr, &e) < 0) {
        check_api_error(&e);
    } else {
        check_chat_req(cr);
        chat_req_free(cr);
    }
done:
    free(body);
    free(ct);
    return 0;
}
