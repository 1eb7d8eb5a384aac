/*
 * fuzz_datauri — base64 and data: URIs.
 *
 * 1. base64_decode on the raw input into a buffer of exactly the documented
 *    size (len / 4 * 3 + 3), so a write past it faults.
 * 2. Round trip: the input encoded by the simple encoder below decodes back
 *    to itself (with and without padding).
 * 3. The input as the URL of an image part of a request (after "data:"), so
 *    the data-URI parser sees arbitrary media types, parameters and payloads;
 *    an accepted image holds what base64_decode makes of the payload.
 */
#include "openai_props.h"

static size_t b64_encode(const uint8_t *in, size_t n, char *out, bool pad)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = a[v >> 18], out[o++] = a[(v >> 12) & 63], out[o++] = a[(v >> 6) & 63], out[o++] = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = a[v >> 18], out[o++] = a[(v >> 12) & 63];
        if (pad)
            out[o++] = '=', out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = a[v >> 18], out[o++] = a[(v >> 12) & 63], out[o++] = a[(v >> 6) & 63];
        if (pad)
            out[o++] = '=';
    }
    return o;
}

static void check_roundtrip(const uint8_t *data, size_t len, bool pad)
{
    size_t enc_len = (len + 2) / 3 * 4;
    char *enc = malloc(enc_len ? enc_len : 1);
    unsigned char *dec = malloc(enc_len / 4 * 3 + 3);
    FUZZ_CHECK(enc && dec);
    size_t n = b64_encode(data, len, enc, pad);
    long got = base64_decode(enc, n, dec);
    FUZZ_CHECK(got == (long)len && (len == 0 || !memcmp(dec, data, len)));
    free(dec);
    free(enc);
}

static void check_uri(const uint8_t *data, size_t len)
{
    /* "data:" + input as a NUL-terminated C string (cJSON escapes it) */
    char *url = malloc(len + 6);
    FUZZ_CHECK(url != NULL);
    memcpy(url, "data:", 5);
    memcpy(url + 5, data, len);
    url[len + 5] = '\0';
    cJSON *root = cJSON_CreateObject();
    cJSON *msg = cJSON_CreateObject();
    cJSON *part = cJSON_CreateObject();
    cJSON *content = cJSON_CreateArray();
    cJSON *iu = cJSON_CreateObject();
    FUZZ_CHECK(root && msg && part && content && iu);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "messages"), msg);
    cJSON_AddStringToObject(msg, "role", "user");
    cJSON_AddItemToObject(msg, "content", content);
    cJSON_AddItemToArray(content, part);
    cJSON_AddStringToObject(part, "type", "image_url");
    cJSON_AddItemToObject(part, "image_url", iu);
    FUZZ_CHECK(cJSON_AddStringToObject(iu, "url", url) != NULL);
    char *body = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    FUZZ_CHECK(body != NULL);

    chat_req *cr = NULL;
    api_error e = { 0 };
    if (chat_parse_json(body, strlen(body), NULL, 0, &FUZZ_LIMITS, &cr, &e) < 0) {
        check_api_error(&e);
    } else {
        check_chat_req(cr);
        FUZZ_CHECK(cr->n_images == 1);
        /* the image is what base64_decode makes of everything after the first ',' */
        const char *comma = strchr(url, ',');
        FUZZ_CHECK(comma != NULL);
        size_t b64_len = strlen(comma + 1);
        unsigned char *dec = malloc(b64_len / 4 * 3 + 3);
        FUZZ_CHECK(dec != NULL);
        long got = base64_decode(comma + 1, b64_len, dec);
        FUZZ_CHECK(got > 0 && (size_t)got == cr->src[0].len && !memcmp(dec, cr->src[0].data, (size_t)got));
        free(dec);
        chat_req_free(cr);
    }
    free(body);
    free(url);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    unsigned char *out = malloc(len / 4 * 3 + 3);
    FUZZ_CHECK(out != NULL);
    long got = base64_decode((const char *)data, len, out);
    FUZZ_CHECK(got >= -1 && (got < 0 || (size_t)got <= len / 4 * 3 + 2));
    free(out);

    check_roundtrip(data, len, true);
    check_roundtrip(data, len, false);
    check_uri(data, len);
    return 0;
}
