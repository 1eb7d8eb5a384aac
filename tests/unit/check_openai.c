/*
 * check_openai.c — the chat-completions dialect without a server: request
 * validation (a table of good and bad bodies with the status, param and code
 * each must get), multipart forms, base64, and the shape of chat.completion
 * objects and SSE chunks built from synthetic engine events.
 */
#include "openai.h"
#include "testutil.h"

#include <cjson/cJSON.h>

static const chat_limits LIM = { .max_images = 2, .max_prompt_bytes = 1000, .max_n = 4, .image = { 0 } };

/* A 1x1 PNG (its bytes only matter to the decoder, not to parsing). */
#define PNG_B64 "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="

static chat_req *parse_ok(const char *json)
{
    chat_req *cr = NULL;
    api_error e = { 0 };
    int rc = chat_parse_json(json, strlen(json), NULL, 0, &LIM, &cr, &e);
    ck_assert_msg(rc == 0, "%s -> %d %s (%s)", json, e.status, e.message, e.param);
    return cr;
}

START_TEST(test_base64)
{
    unsigned char out[64];
    ck_assert_int_eq(base64_decode("", 0, out), 0);
    ck_assert_int_eq(base64_decode("Zg==", 4, out), 1);
    ck_assert_int_eq(out[0], 'f');
    ck_assert_int_eq(base64_decode("Zm8=", 4, out), 2);
    ck_assert(!memcmp(out, "fo", 2));
    ck_assert_int_eq(base64_decode("Zm9v", 4, out), 3);
    ck_assert(!memcmp(out, "foo", 3));
    ck_assert_int_eq(base64_decode("Zm9vYg", 6, out), 4); /* padding is optional */
    ck_assert(!memcmp(out, "foob", 4));
    ck_assert_int_eq(base64_decode("+/+/", 4, out), 3);
    ck_assert(out[0] == 0xFB && out[1] == 0xFF && out[2] == 0xBF);
    ck_assert_int_eq(base64_decode("Z", 1, out), -1);       /* impossible length */
    ck_assert_int_eq(base64_decode("Zm9v\n", 5, out), -1);  /* whitespace */
    ck_assert_int_eq(base64_decode("Zm-v", 4, out), -1);    /* url-safe alphabet is not base64 */
    ck_assert_int_eq(base64_decode("Zh==", 4, out), -1);    /* non-zero trailing bits */
    ck_assert_int_eq(base64_decode("Z===", 4, out), -1);
    ck_assert_int_eq(base64_decode("Zg=a", 4, out), -1);
    /* guard page: the decoder reads exactly len bytes */
    const char *s = "Zm9vYmFy";
    char *g = guarded_copy(s, 8);
    ck_assert_int_eq(base64_decode(g, 8, out), 6);
    ck_assert(!memcmp(out, "foobar", 6));
    guarded_free(g, 8);
}
END_TEST

START_TEST(test_parse_full)
{
    chat_req *cr = parse_ok(
        "{\"model\":\"m\",\"messages\":["
        "{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64," PNG_B64
        "\",\"detail\":\"low\"}},{\"type\":\"text\",\"text\":\"What is it?\"}]},"
        "{\"role\":\"assistant\",\"content\":\"A dot.\",\"refusal\":null},"
        "{\"role\":\"developer\",\"content\":\"And?\",\"name\":\"x\"}],"
        "\"max_tokens\":5,\"max_completion_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,"
        "\"seed\":-1,\"stop\":[\"a\",\"bc\"],\"n\":3,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
        "\"logprobs\":true,\"top_logprobs\":5,\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
        "\"repetition_penalty\":1.1,\"user\":\"u1\",\"response_format\":null}");
    ck_assert_str_eq(cr->model, "m");
    ck_assert_int_eq(cr->req.n_messages, 4);
    ck_assert_str_eq(cr->req.messages[0].role, "system");
    ck_assert_str_eq(cr->req.messages[3].role, "system"); /* developer is system */
    ck_assert_int_eq(cr->req.messages[1].n_parts, 2);
    ck_assert_int_eq(cr->req.messages[1].parts[0].type, GLIMPSE_PART_IMAGE);
    ck_assert_int_eq(cr->req.messages[1].parts[0].image, 0);
    ck_assert_str_eq(cr->req.messages[1].parts[1].text, "What is it?");
    ck_assert_int_eq(cr->n_images, 1);
    ck_assert_int_eq(cr->src[0].len, 70);  /* the PNG's size */
    ck_assert(!memcmp(cr->src[0].data, "\x89PNG", 4));
    ck_assert_int_eq(cr->req.max_tokens, 7); /* max_completion_tokens wins */
    ck_assert_float_eq_tol(cr->req.sampling.temperature, 0.5f, 1e-7);
    ck_assert_float_eq_tol(cr->req.sampling.top_p, 0.9f, 1e-7);
    ck_assert_int_eq(cr->req.sampling.top_k, 40);
    ck_assert_float_eq_tol(cr->req.sampling.min_p, 0.05f, 1e-7);
    ck_assert_float_eq_tol(cr->req.sampling.presence_penalty, 0.5f, 1e-7);
    ck_assert_float_eq_tol(cr->req.sampling.frequency_penalty, -0.5f, 1e-7);
    ck_assert_float_eq_tol(cr->req.sampling.repetition_penalty, 1.1f, 1e-7);
    ck_assert(cr->seed_given);
    ck_assert(cr->req.sampling.seed == UINT64_MAX);
    ck_assert_str_eq(cr->req.stop[0], "a");
    ck_assert_str_eq(cr->req.stop[1], "bc");
    ck_assert_ptr_null(cr->req.stop[2]);
    ck_assert_int_eq(cr->n, 3);
    ck_assert(cr->stream && cr->include_usage && cr->logprobs);
    ck_assert_int_eq(cr->req.sampling.n_top_logprobs, 5);
    chat_req_free(cr);

    /* defaults: OpenAI's temperature 1, one choice, a random seed, no stream */
    cr = parse_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":\"x\",\"logprobs\":false}");
    ck_assert(cr->req.sampling.temperature == 1.0f);
    ck_assert_int_eq(cr->n, 1);
    ck_assert(!cr->seed_given && !cr->stream && !cr->logprobs);
    ck_assert_int_eq(cr->req.sampling.n_top_logprobs, 0);
    ck_assert_int_eq(cr->req.max_tokens, 0);
    ck_assert_str_eq(cr->req.stop[0], "x");
    ck_assert_ptr_null(cr->model);
    chat_req_free(cr);
}
END_TEST

/* Bad bodies: each must fail with a 400 naming this param ("" for null) and
 * this code. Whole bodies first; then, to keep each case to what it is about,
 * top-level parameters after one good message, content parts of a user
 * message and image URLs of such a part. */
typedef struct bad_case {
    const char *json;
    const char *param;
    const char *code;
} bad_case;

static const bad_case BAD_BODIES[] = {
    { "", "", "invalid_json" },
    { "{", "", "invalid_json" },
    { "{\"messages\":[]} x", "", "invalid_json" },
    { "[1,2]", "", "invalid_type" },
    { "\"hi\"", "", "invalid_type" },
    { "{}", "messages", "invalid_type" },
    { "{\"messages\":[]}", "messages", "invalid_type" },
    { "{\"messages\":{}}", "messages", "invalid_type" },
    { "{\"messages\":[1]}", "messages[0]", "invalid_type" },
    { "{\"messages\":[{\"content\":\"x\"}]}", "messages[0]", "invalid_type" },
    { "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0]", "invalid_value" },
    { "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content", "invalid_type" },
    { "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content", "invalid_type" },
    { "{\"messages\":[{\"role\":\"user\",\"content\":[]}]}", "messages[0].content", "invalid_type" },
    { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"colour\":1}]}", "messages[0].colour",
      "unknown_parameter" },
    { "{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/"
      "png;base64," PNG_B64 "\"}}]}]}", "messages[0].content[0]", "invalid_value" },
    { "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;"
      "base64," PNG_B64 "\"}},{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64," PNG_B64
      "\"}},{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64," PNG_B64 "\"}}]}]}",
      "messages[0].content[2]", "too_many_images" },
    /* a repeated key is refused at every level. A repeated "content" was found by tests/fuzz/fuzz_chat_json
     * (the parts were counted with the first one and written with the last, past the end of their array);
     * a repeated top-level key by tests/integration/hostile.py (the first "messages" was used, the second
     * never looked at, while other parameters took their last value) */
    { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
      "{\"type\":\"text\",\"text\":\"b\"}]}]}", "messages[0]", "invalid_value" },
    { "{\"messages\":[{\"role\":\"user\",\"role\":\"system\",\"content\":\"x\"}]}", "messages[0]", "invalid_value" },
    { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"name\":\"a\",\"name\":\"b\"}]}", "messages[0]",
      "invalid_value" },
    { "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"messages\":[{\"role\":\"user\",\"content\":\"b\"}]}",
      "messages", "invalid_value" },
    { "{\"messages\":null,\"messages\":[{\"role\":\"user\",\"content\":\"b\"}]}", "messages", "invalid_value" },
    /* bytes that are not UTF-8 inside strings (found by tests/fuzz/fuzz_chat_json: cJSON passed them
     * into the prompt): a truncated sequence, an overlong '/', a surrogate, a code point past U+10FFFF */
    { "{\"messages\":[{\"role\":\"user\",\"content\":\"\xE7" "ello\"}]}", "", "invalid_json" },
    { "{\"messages\":[{\"role\":\"user\",\"content\":\"a\xC0\xAF\"}]}", "", "invalid_json" },
    { "{\"messages\":[{\"role\":\"user\",\"content\":\"\xED\xA0\x80\"}]}", "", "invalid_json" },
};

/* The body is ONE_MESSAGE, the case's json, "}". */
#define ONE_MESSAGE "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
static const bad_case BAD_PARAMS[] = {
    { "\"foo\":1", "foo", "unknown_parameter" },
    { "\"model\":5", "model", "invalid_type" },
    { "\"max_tokens\":0", "max_tokens", "invalid_value" },
    { "\"max_tokens\":1.5", "max_tokens", "invalid_type" },
    { "\"max_tokens\":\"5\"", "max_tokens", "invalid_type" },
    { "\"max_completion_tokens\":1e12", "max_completion_tokens", "invalid_value" },
    { "\"temperature\":2.5", "temperature", "invalid_value" },
    { "\"temperature\":\"hot\"", "temperature", "invalid_type" },
    { "\"top_p\":1.5", "top_p", "invalid_value" },
    { "\"top_k\":-1", "top_k", "invalid_value" },
    { "\"min_p\":-0.1", "min_p", "invalid_value" },
    { "\"presence_penalty\":3", "presence_penalty", "invalid_value" },
    { "\"frequency_penalty\":-3", "frequency_penalty", "invalid_value" },
    { "\"repetition_penalty\":0", "repetition_penalty", "invalid_value" },
    { "\"seed\":0.5", "seed", "invalid_type" },
    { "\"stop\":5", "stop", "invalid_type" },
    { "\"stop\":[\"a\",1]", "stop", "invalid_type" },
    { "\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "stop", "invalid_value" },
    { "\"stop\":\"\"", "stop", "invalid_value" },
    { "\"stop\":\"\xF4\x90\x80\x80\"", "", "invalid_json" }, /* past U+10FFFF */
    { "\"n\":0", "n", "invalid_value" },
    { "\"n\":5", "n", "invalid_value" },
    { "\"stream\":1", "stream", "invalid_type" },
    { "\"stream_options\":{\"include_usage\":true}", "stream_options", "invalid_value" },
    { "\"stream\":true,\"stream_options\":{\"x\":true}", "stream_options", "unknown_parameter" },
    { "\"stream\":true,\"stream_options\":[]", "stream_options", "invalid_type" },
    { "\"logprobs\":\"yes\"", "logprobs", "invalid_type" },
    { "\"top_logprobs\":3", "top_logprobs", "invalid_value" },
    { "\"logprobs\":true,\"top_logprobs\":21", "top_logprobs", "invalid_value" },
    { "\"user\":7", "user", "invalid_type" },
    /* repeated keys */
    { "\"max_tokens\":2,\"max_tokens\":3", "max_tokens", "invalid_value" },
    { "\"stream\":true,\"stream_options\":{\"include_usage\":true,\"include_usage\":false}", "stream_options",
      "invalid_value" },
};

/* The body is PART_BEFORE, the case's json, PART_AFTER; param follows messages[0].content[0]. */
#define PART_BEFORE "{\"messages\":[{\"role\":\"user\",\"content\":["
#define PART_AFTER "]}]}"
static const bad_case BAD_PARTS[] = {
    { "{\"type\":\"audio\"}", ".type", "invalid_value" },
    { "{\"text\":\"x\"}", "", "invalid_type" },
    { "{\"type\":\"text\",\"text\":1}", ".text", "invalid_type" },
    { "{\"type\":\"text\",\"text\":\"a\",\"url\":\"b\"}", ".url", "unknown_parameter" },
    { "{\"type\":\"image_url\",\"image_url\":\"data:x\"}", ".image_url", "invalid_type" },
    { "{\"type\":\"image_url\",\"image_url\":{}}", ".image_url.url", "invalid_type" },
    { "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\",\"size\":1}}", ".image_url", "unknown_parameter" },
    { "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\",\"detail\":\"max\"}}", ".image_url", "invalid_value" },
    /* repeated keys */
    { "{\"type\":\"text\",\"text\":\"a\",\"text\":\"b\"}", "", "invalid_value" },
    { "{\"type\":\"text\",\"type\":\"image_url\",\"text\":\"a\"}", "", "invalid_value" },
    { "{\"type\":\"image_url\",\"image_url\":{\"url\":\"a\",\"url\":\"b\"}}", ".image_url", "invalid_value" },
    { "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\",\"detail\":\"low\",\"detail\":\"high\"}}", ".image_url",
      "invalid_value" },
};

/* The url of an image_url part; the param is always messages[0].content[0].image_url.url. */
static const struct {
    const char *url;
    const char *code;
} BAD_URLS[] = {
    { "https://example.com/a.png", "image_url_not_supported" },
    { "HTTP://x/a.png", "image_url_not_supported" },
    { "file:///etc/passwd", "invalid_image_url" },
    { "data:image/png;base64,@@@@", "invalid_base64" },
    { "data:text/plain;base64,aGk=", "invalid_image_url" },
    { "data:image/png,abc", "invalid_image_url" },
    { "data:image/png;base64", "invalid_image_url" },
    { "upload:image", "invalid_image_url" },
};

/* Parses body from right before a guard page; it must fail with a 400, param and code. */
static void expect_bad(const char *body, const char *param, const char *code)
{
    chat_req *cr = NULL;
    api_error e = { 0 };
    char *g = guarded_copy(body, strlen(body));
    int rc = chat_parse_json(g, strlen(body), NULL, 0, &LIM, &cr, &e);
    guarded_free(g, strlen(body));
    ck_assert_msg(rc < 0, "accepted: %s", body);
    ck_assert_ptr_null(cr);
    ck_assert_msg(e.status == 400 && !strcmp(e.param, param) && e.code && !strcmp(e.code, code),
                  "%s: got %d param '%s' code %s (%s), want param '%s' code %s", body, e.status, e.param,
                  e.code ? e.code : "null", e.message, param, code);
    ck_assert(e.message[0]);
}

START_TEST(test_bad_body)
{
    expect_bad(BAD_BODIES[_i].json, BAD_BODIES[_i].param, BAD_BODIES[_i].code);
}
END_TEST

START_TEST(test_bad_param)
{
    char body[512];
    ck_assert_int_lt(snprintf(body, sizeof body, ONE_MESSAGE "%s}", BAD_PARAMS[_i].json), (int)sizeof body);
    expect_bad(body, BAD_PARAMS[_i].param, BAD_PARAMS[_i].code);
}
END_TEST

START_TEST(test_bad_part)
{
    char body[512], param[128];
    ck_assert_int_lt(snprintf(body, sizeof body, PART_BEFORE "%s" PART_AFTER, BAD_PARTS[_i].json), (int)sizeof body);
    snprintf(param, sizeof param, "messages[0].content[0]%s", BAD_PARTS[_i].param);
    expect_bad(body, param, BAD_PARTS[_i].code);
}
END_TEST

START_TEST(test_bad_url)
{
    char body[512];
    ck_assert_int_lt(snprintf(body, sizeof body, PART_BEFORE "{\"type\":\"image_url\",\"image_url\":{\"url\":\"%s\"}}"
                              PART_AFTER, BAD_URLS[_i].url), (int)sizeof body);
    expect_bad(body, "messages[0].content[0].image_url.url", BAD_URLS[_i].code);
}
END_TEST

START_TEST(test_prompt_limit)
{
    char body[2200];
    char text[1002];
    memset(text, 'a', 1001);
    text[1001] = '\0';
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", text);
    chat_req *cr = NULL;
    api_error e;
    ck_assert_int_eq(chat_parse_json(body, strlen(body), NULL, 0, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.code, "context_length_exceeded");
    text[1000] = '\0'; /* exactly the limit passes */
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", text);
    ck_assert_int_eq(chat_parse_json(body, strlen(body), NULL, 0, &LIM, &cr, &e), 0);
    chat_req_free(cr);
}
END_TEST

static mp_part field(const char *name, const char *filename, const char *data, size_t len)
{
    mp_part p = { name, strlen(name), filename, filename ? strlen(filename) : 0, NULL, 0, data, len };
    return p;
}

/* Form fields are text too (found by tests/fuzz/fuzz_multipart): not-UTF-8 bytes are refused. */
START_TEST(test_form_utf8)
{
    mp_part parts[] = {
        field("prompt", NULL, "What \xFF?", 7),
        field("stop", NULL, "END", 3),
    };
    chat_req *cr = NULL;
    api_error e = { 0 };
    ck_assert_int_eq(chat_parse_form(parts, 2, &LIM, &cr, &e), -1);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "prompt");
    parts[0] = field("prompt", NULL, "What?", 5);
    parts[1] = field("stop", NULL, "\xC3", 1);
    ck_assert_int_eq(chat_parse_form(parts, 2, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.param, "stop");
    parts[1] = field("stop", NULL, "\xC3\xA9", 2);
    ck_assert_int_eq(chat_parse_form(parts, 2, &LIM, &cr, &e), 0);
    ck_assert_str_eq(cr->req.stop[0], "\xC3\xA9");
    chat_req_free(cr);
}
END_TEST

START_TEST(test_form_prompt)
{
    const char img1[] = "\x89PNG-one", img2[] = "\xFF\xD8-two";
    mp_part parts[] = {
        field("image", "a.png", img1, sizeof img1 - 1),
        field("prompt", NULL, "What is this?", 13),
        field("max_tokens", NULL, "12", 2),
        field("stream", NULL, "true", 4),
        field("image", "b.jpg", img2, sizeof img2 - 1),
        field("stop", NULL, "x", 1),
        field("stop", NULL, "y", 1),
        field("user", NULL, "12abc", 5),
    };
    chat_req *cr = NULL;
    api_error e = { 0 };
    int rc = chat_parse_form(parts, sizeof parts / sizeof parts[0], &LIM, &cr, &e);
    ck_assert_msg(rc == 0, "%s", e.message);
    ck_assert_int_eq(cr->req.n_messages, 1);
    ck_assert_str_eq(cr->req.messages[0].role, "user");
    /* the images in order, then the prompt */
    ck_assert_int_eq(cr->req.messages[0].n_parts, 3);
    ck_assert_int_eq(cr->req.messages[0].parts[0].type, GLIMPSE_PART_IMAGE);
    ck_assert_int_eq(cr->req.messages[0].parts[1].image, 1);
    ck_assert_str_eq(cr->req.messages[0].parts[2].text, "What is this?");
    ck_assert_int_eq(cr->n_images, 2);
    ck_assert(cr->src[0].data == (const unsigned char *)img1 && cr->src[0].len == sizeof img1 - 1);
    ck_assert(cr->src[1].data == (const unsigned char *)img2);
    ck_assert_int_eq(cr->req.max_tokens, 12);
    ck_assert(cr->stream);
    ck_assert_str_eq(cr->req.stop[0], "x");
    ck_assert_str_eq(cr->req.stop[1], "y");
    chat_req_free(cr);

    /* a field that is not a parameter, a file under another name, a wrong type */
    mp_part bad1[] = { field("prompt", NULL, "q", 1), field("colour", NULL, "red", 3) };
    ck_assert_int_eq(chat_parse_form(bad1, 2, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.param, "colour");
    mp_part bad2[] = { field("prompt", NULL, "q", 1), field("photo", "p.png", img1, 4) };
    ck_assert_int_eq(chat_parse_form(bad2, 2, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.param, "photo");
    mp_part bad3[] = { field("prompt", NULL, "q", 1), field("max_tokens", NULL, "many", 4) };
    ck_assert_int_eq(chat_parse_form(bad3, 2, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.param, "max_tokens");
    mp_part bad4[] = { field("image", "p.png", img1, 4) };
    ck_assert_int_eq(chat_parse_form(bad4, 1, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.code, "missing_parameter");
    mp_part bad5[] = { field("prompt", NULL, "q", 1), field("n", NULL, "1", 1), field("n", NULL, "2", 1) };
    ck_assert_int_eq(chat_parse_form(bad5, 3, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.param, "n");
    mp_part bad6[] = { field("prompt", NULL, "q", 1), field("image", "a", img1, 4), field("image", "b", img1, 4),
                       field("image", "c", img1, 4) };
    ck_assert_int_eq(chat_parse_form(bad6, 4, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.code, "too_many_images");
}
END_TEST

START_TEST(test_form_request)
{
    const char a[] = "AAAA", b[] = "BBBBBB";
    const char *json = "{\"messages\":[{\"role\":\"user\",\"content\":["
                       "{\"type\":\"image_url\",\"image_url\":{\"url\":\"upload:pic\"}},"
                       "{\"type\":\"image_url\",\"image_url\":{\"url\":\"upload:pic\"}},"
                       "{\"type\":\"text\",\"text\":\"compare\"}]}],\"max_tokens\":3}";
    mp_part parts[] = { field("pic", "1.png", a, 4), field("request", NULL, json, strlen(json)),
                        field("pic", "2.png", b, 6) };
    chat_req *cr = NULL;
    api_error e = { 0 };
    ck_assert_msg(chat_parse_form(parts, 3, &LIM, &cr, &e) == 0, "%s", e.message);
    ck_assert_int_eq(cr->n_images, 2);
    /* the k-th reference to a name takes the k-th part of that name */
    ck_assert(cr->src[0].data == (const unsigned char *)a && cr->src[0].len == 4);
    ck_assert(cr->src[1].data == (const unsigned char *)b && cr->src[1].len == 6);
    ck_assert_int_eq(cr->req.max_tokens, 3);
    chat_req_free(cr);

    /* a third reference has no part left */
    const char *json3 = "{\"messages\":[{\"role\":\"user\",\"content\":["
                        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"upload:pic\"}},"
                        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"upload:other\"}}]}]}";
    mp_part p3[] = { field("request", NULL, json3, strlen(json3)), field("pic", "1.png", a, 4) };
    ck_assert_int_eq(chat_parse_form(p3, 2, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.code, "invalid_image_url");
    ck_assert_str_eq(e.param, "messages[0].content[1].image_url.url");
    /* scalar fields next to a request are refused */
    mp_part p4[] = { field("request", NULL, json, strlen(json)), field("max_tokens", NULL, "3", 1) };
    ck_assert_int_eq(chat_parse_form(p4, 2, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.param, "max_tokens");
    /* both forms at once */
    mp_part p5[] = { field("request", NULL, json, strlen(json)), field("prompt", NULL, "q", 1) };
    ck_assert_int_eq(chat_parse_form(p5, 2, &LIM, &cr, &e), -1);
    /* broken JSON in the request field */
    mp_part p6[] = { field("request", NULL, "{", 1) };
    ck_assert_int_eq(chat_parse_form(p6, 1, &LIM, &cr, &e), -1);
    ck_assert_str_eq(e.code, "invalid_json");
}
END_TEST

START_TEST(test_error_json)
{
    api_error e;
    ck_assert_int_eq(api_error_set(&e, 401, NULL, "invalid_api_key", "bad key \xff"), -1);
    size_t len = 0;
    char *s = api_error_json(&e, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(len, strlen(s));
    cJSON *o = cJSON_Parse(s);
    ck_assert_ptr_nonnull(o);
    cJSON *err = cJSON_GetObjectItem(o, "error");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "message")->valuestring, "bad key \xEF\xBF\xBD");
    ck_assert_str_eq(cJSON_GetObjectItem(err, "type")->valuestring, "authentication_error");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(err, "param")));
    ck_assert_str_eq(cJSON_GetObjectItem(err, "code")->valuestring, "invalid_api_key");
    ck_assert_int_eq(cJSON_GetArraySize(err), 4);
    cJSON_Delete(o);
    free(s);
    api_error_from_engine(&e, GLIMPSE_ELIMIT, &(glimpse_err){ GLIMPSE_ELIMIT, "prompt too long" });
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.code, "context_length_exceeded");
    api_error_from_engine(&e, GLIMPSE_EIO, NULL);
    ck_assert_int_eq(e.status, 500);
    ck_assert_str_eq(e.type, "server_error");
}
END_TEST

/* ---- responses from synthetic events ------------------------------------------------ */

static void add_token(gq_events *e, int choice, const char *piece, const char *text, float lp, int n_top)
{
    size_t pl = strlen(piece), tl = strlen(text);
    e->ev = realloc(e->ev, (e->n_ev + 1) * sizeof *e->ev);
    e->bytes = realloc(e->bytes, e->n_bytes + pl + tl + 16 * (size_t)n_top + 1);
    e->tops = realloc(e->tops, (e->n_tops + (size_t)n_top + 1) * sizeof *e->tops);
    gq_event *ev = &e->ev[e->n_ev++];
    memset(ev, 0, sizeof *ev);
    ev->type = GQ_EV_TOKEN;
    ev->choice = choice;
    ev->id = 7;
    ev->piece_off = e->n_bytes;
    ev->piece_len = pl;
    memcpy(e->bytes + e->n_bytes, piece, pl);
    e->n_bytes += pl;
    ev->text_off = e->n_bytes;
    ev->text_len = tl;
    memcpy(e->bytes + e->n_bytes, text, tl);
    e->n_bytes += tl;
    ev->logprob = lp;
    ev->top_off = e->n_tops;
    ev->n_top = n_top;
    for (int i = 0; i < n_top; i++) {
        gq_top *t = &e->tops[e->n_tops++];
        t->id = i;
        t->logprob = lp - (float)i;
        t->piece_off = ev->piece_off;
        t->piece_len = pl;
    }
}

static void add_end(gq_events *e, int choice, int finish, int prompt, int completion, int image)
{
    e->ev = realloc(e->ev, (e->n_ev + 1) * sizeof *e->ev);
    gq_event *ev = &e->ev[e->n_ev++];
    memset(ev, 0, sizeof *ev);
    ev->type = GQ_EV_END;
    ev->choice = choice;
    ev->res.finish_reason = finish;
    ev->res.prompt_tokens = prompt;
    ev->res.completion_tokens = completion;
    ev->res.image_tokens = image;
}

START_TEST(test_completion_json)
{
    chat_req *cr = parse_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":2,\"logprobs\":true,"
                            "\"top_logprobs\":2}");
    chat_out *o = chat_out_new(cr, "tiny");
    ck_assert_ptr_nonnull(o);
    gq_events e = { 0 };
    add_token(&e, 0, "He", "He", -0.5f, 2);
    add_token(&e, 0, "\xE2\x82", "", -1.0f, 0);    /* first bytes of a euro sign: held back */
    add_token(&e, 0, "\xAC", "\xE2\x82\xAC", -0.25f, 0);
    add_end(&e, 0, GLIMPSE_FINISH_LENGTH, 10, 3, 4);
    add_token(&e, 1, "Yo", "Yo", -2.0f, 1);
    add_end(&e, 1, GLIMPSE_FINISH_STOP, 10, 1, 4);
    ck_assert_int_eq(chat_out_add(o, &e), 0);
    size_t len;
    char *s = chat_out_json(o, &len);
    ck_assert_ptr_nonnull(s);
    cJSON *r = cJSON_Parse(s);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(cJSON_GetObjectItem(r, "object")->valuestring, "chat.completion");
    ck_assert_str_eq(cJSON_GetObjectItem(r, "model")->valuestring, "tiny");
    ck_assert(!strncmp(cJSON_GetObjectItem(r, "id")->valuestring, "chatcmpl-", 9));
    cJSON *ch = cJSON_GetObjectItem(r, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(ch), 2);
    cJSON *c0 = cJSON_GetArrayItem(ch, 0), *c1 = cJSON_GetArrayItem(ch, 1);
    ck_assert_int_eq(cJSON_GetObjectItem(c1, "index")->valueint, 1);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "content")->valuestring,
                     "He\xE2\x82\xAC");
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "role")->valuestring, "assistant");
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "length");
    ck_assert_str_eq(cJSON_GetObjectItem(c1, "finish_reason")->valuestring, "stop");
    cJSON *lc = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "content");
    ck_assert_int_eq(cJSON_GetArraySize(lc), 3);
    cJSON *t1 = cJSON_GetArrayItem(lc, 1);
    /* a partial character: the token string is U+FFFD per byte, the bytes are exact */
    ck_assert_str_eq(cJSON_GetObjectItem(t1, "token")->valuestring, "\xEF\xBF\xBD\xEF\xBF\xBD");
    cJSON *bytes = cJSON_GetObjectItem(t1, "bytes");
    ck_assert_int_eq(cJSON_GetArraySize(bytes), 2);
    ck_assert_int_eq(cJSON_GetArrayItem(bytes, 0)->valueint, 0xE2);
    ck_assert_int_eq(cJSON_GetArrayItem(bytes, 1)->valueint, 0x82);
    ck_assert_double_eq_tol(cJSON_GetObjectItem(t1, "logprob")->valuedouble, -1.0, 1e-6);
    cJSON *t0 = cJSON_GetArrayItem(lc, 0);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(t0, "top_logprobs")), 2);
    ck_assert_double_eq_tol(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(t0, "top_logprobs"), 1), "logprob")->valuedouble,
        -1.5, 1e-6);
    cJSON *u = cJSON_GetObjectItem(r, "usage");
    ck_assert_int_eq(cJSON_GetObjectItem(u, "prompt_tokens")->valueint, 10);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 4);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "total_tokens")->valueint, 14);
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(u, "prompt_tokens_details"), "image_tokens")->valueint, 4);
    cJSON_Delete(r);
    free(s);
    gq_events_free(&e);
    chat_out_free(o);
    chat_req_free(cr);
}
END_TEST

START_TEST(test_stream_chunks)
{
    chat_req *cr = parse_ok("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,"
                            "\"stream_options\":{\"include_usage\":true}}");
    chat_out *o = chat_out_new(cr, "tiny");
    gq_events e = { 0 };
    add_token(&e, 0, "A", "A", -0.1f, 0);
    add_token(&e, 0, "\xE2\x82", "", -0.1f, 0); /* held back: no chunk */
    add_token(&e, 0, "\xAC", "\xE2\x82\xAC", -0.1f, 0);
    add_end(&e, 0, GLIMPSE_FINISH_STOP, 5, 3, 0);
    sbuf out = { 0 };
    chat_out_stream(o, &e, &out);
    chat_out_stream_end(o, &out);
    ck_assert(!out.oom);
    /* split into events and check their order and shape */
    const char *want_delta[] = { "role", "A", "\xE2\x82\xAC", "finish", "usage", "done" };
    size_t k = 0;
    char *save = NULL;
    for (char *ev = strtok_r(out.p, "\n", &save); ev; ev = strtok_r(NULL, "\n", &save), k++) {
        ck_assert_msg(k < 6, "too many events");
        ck_assert(!strncmp(ev, "data: ", 6));
        if (!strcmp(want_delta[k], "done")) {
            ck_assert_str_eq(ev, "data: [DONE]");
            continue;
        }
        cJSON *c = cJSON_Parse(ev + 6);
        ck_assert_ptr_nonnull(c);
        ck_assert_str_eq(cJSON_GetObjectItem(c, "object")->valuestring, "chat.completion.chunk");
        cJSON *choices = cJSON_GetObjectItem(c, "choices");
        cJSON *usage = cJSON_GetObjectItem(c, "usage");
        ck_assert_ptr_nonnull(usage); /* null in every chunk but the last when include_usage */
        if (!strcmp(want_delta[k], "usage")) {
            ck_assert_int_eq(cJSON_GetArraySize(choices), 0);
            ck_assert_int_eq(cJSON_GetObjectItem(usage, "total_tokens")->valueint, 8);
        } else {
            ck_assert(cJSON_IsNull(usage));
            cJSON *c0 = cJSON_GetArrayItem(choices, 0);
            cJSON *d = cJSON_GetObjectItem(c0, "delta");
            if (!strcmp(want_delta[k], "role")) {
                ck_assert_str_eq(cJSON_GetObjectItem(d, "role")->valuestring, "assistant");
            } else if (!strcmp(want_delta[k], "finish")) {
                ck_assert_int_eq(cJSON_GetArraySize(d), 0);
                ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
            } else {
                ck_assert_str_eq(cJSON_GetObjectItem(d, "content")->valuestring, want_delta[k]);
                ck_assert(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")));
            }
        }
        cJSON_Delete(c);
    }
    ck_assert_int_eq(k, 6);
    sbuf_free(&out);
    gq_events_free(&e);
    chat_out_free(o);
    chat_req_free(cr);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("openai");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_base64);
    tcase_add_test(tc, test_parse_full);
    tcase_add_loop_test(tc, test_bad_body, 0, (int)(sizeof BAD_BODIES / sizeof BAD_BODIES[0]));
    tcase_add_loop_test(tc, test_bad_param, 0, (int)(sizeof BAD_PARAMS / sizeof BAD_PARAMS[0]));
    tcase_add_loop_test(tc, test_bad_part, 0, (int)(sizeof BAD_PARTS / sizeof BAD_PARTS[0]));
    tcase_add_loop_test(tc, test_bad_url, 0, (int)(sizeof BAD_URLS / sizeof BAD_URLS[0]));
    tcase_add_test(tc, test_prompt_limit);
    tcase_add_test(tc, test_form_prompt);
    tcase_add_test(tc, test_form_utf8);
    tcase_add_test(tc, test_form_request);
    tcase_add_test(tc, test_error_json);
    tcase_add_test(tc, test_completion_json);
    tcase_add_test(tc, test_stream_chunks);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
