/*
 * fuzz_response — the JSON and SSE response writers on arbitrary token text.
 *
 * The first byte picks the request (choices, logprobs, top_logprobs,
 * include_usage); the rest is a stream of records
 *     [ctl][piece_len][piece bytes][text_len][text bytes]
 * ctl bit 0: an END event, else a TOKEN; bits 1-2: the choice (3 is out of
 * range, which the writers must skip); bits 3-4: alternatives; bit 5: id
 * GLIMPSE_TOKEN_NONE (the final flush); bits 6-7: the logprob (finite, -inf,
 * NaN, +inf). Each record is delivered as its own batch of events to a
 * streaming and a non-streaming response of the same request.
 * Properties: every SSE event is "data: " + one JSON object in well-formed
 * UTF-8 without a raw newline, or "data: [DONE]" last; the completion JSON
 * parses; both stay well-formed whatever bytes the tokens carry.
 */
#include "openai_props.h"

#include <math.h>

static chat_req *make_request(uint8_t sel)
{
    char body[256];
    int n = 1 + (sel & 3);
    bool lp = sel & 4, usage = sel & 8;
    int top = lp ? (sel >> 4) & 3 : 0;
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":%d,\"logprobs\":%s,%s"
             "\"stream\":true,\"stream_options\":{\"include_usage\":%s}}",
             n, lp ? "true" : "false", top ? (top == 1 ? "\"top_logprobs\":1," : "\"top_logprobs\":3,") : "",
             usage ? "true" : "false");
    chat_req *cr = NULL;
    api_error e = { 0 };
    FUZZ_CHECK(chat_parse_json(body, strlen(body), NULL, 0, &FUZZ_LIMITS, &cr, &e) == 0);
    return cr;
}

/* Appends bytes to ev->bytes; returns their offset. */
static size_t put_bytes(gq_events *ev, const uint8_t *p, size_t n)
{
    char *b = realloc(ev->bytes, ev->n_bytes + n + 1);
    FUZZ_CHECK(b != NULL);
    ev->bytes = b;
    memcpy(b + ev->n_bytes, p, n);
    size_t off = ev->n_bytes;
    ev->n_bytes += n;
    return off;
}

/* Reads one record into a fresh batch; returns the bytes consumed, 0 at the end. */
static size_t read_record(const uint8_t *d, size_t len, gq_events *ev)
{
    if (len < 2)
        return 0;
    uint8_t ctl = d[0];
    size_t pl = d[1] < len - 2 ? d[1] : len - 2;
    size_t at = 2 + pl;
    size_t tl = at < len ? (d[at] < len - at - 1 ? d[at] : len - at - 1) : 0;
    const uint8_t *text = d + at + 1;
    size_t used = at < len ? at + 1 + tl : at;

    ev->ev = calloc(1, sizeof *ev->ev);
    FUZZ_CHECK(ev->ev != NULL);
    ev->n_ev = ev->cap_ev = 1;
    gq_event *e = &ev->ev[0];
    e->choice = (ctl >> 1) & 3;
    static const float lps[4] = { -0.25f, -INFINITY, NAN, INFINITY };
    e->logprob = lps[ctl >> 6];
    if (ctl & 1) {
        e->type = GQ_EV_END;
        e->res.finish_reason = (ctl >> 3) & 1 ? GLIMPSE_FINISH_LENGTH : GLIMPSE_FINISH_STOP;
        e->res.prompt_tokens = d[1];
        e->res.completion_tokens = (int)pl;
        return used;
    }
    e->type = GQ_EV_TOKEN;
    e->id = ctl & 32 ? GLIMPSE_TOKEN_NONE : (int32_t)pl;
    e->piece_off = put_bytes(ev, d + 2, pl);
    e->piece_len = pl;
    e->text_off = put_bytes(ev, text, tl);
    e->text_len = tl;
    /* alternatives: prefixes of the piece, so they end inside characters too */
    e->n_top = (ctl >> 3) & 3;
    e->top_off = 0;
    ev->tops = calloc((size_t)e->n_top + 1, sizeof *ev->tops);
    FUZZ_CHECK(ev->tops != NULL);
    ev->n_tops = ev->cap_tops = (size_t)e->n_top;
    for (int i = 0; i < e->n_top; i++)
        ev->tops[i] = (gq_top){ .id = i, .piece_off = e->piece_off, .piece_len = pl / (size_t)(i + 1),
                                .logprob = e->logprob - (float)i };
    return used;
}

/* out holds "data: {json}\n\n" events and ends with "data: [DONE]\n\n" when done. */
static void check_sse(const sbuf *out, bool done)
{
    if (!out->p) {
        FUZZ_CHECK(!done);
        return;
    }
    const char *p = out->p, *end = out->p + out->len;
    bool seen_done = false;
    while (p < end) {
        FUZZ_CHECK(!seen_done && (size_t)(end - p) > 6 && !memcmp(p, "data: ", 6));
        p += 6;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        FUZZ_CHECK(nl && nl + 1 < end && nl[1] == '\n');
        if (nl - p == 6 && !memcmp(p, "[DONE]", 6))
            seen_done = true;
        else
            check_json_doc(p, (size_t)(nl - p));
        p = nl + 2;
    }
    FUZZ_CHECK(seen_done == done);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 1)
        return 0;
    chat_req *cr = make_request(data[0]);
    chat_out *stream = chat_out_new(cr, "fuzz");
    chat_out *whole = chat_out_new(cr, "fuzz");
    FUZZ_CHECK(stream && whole);
    sbuf sse = { 0 };
    size_t at = 1, used;
    gq_events ev = { 0 };
    while ((used = read_record(data + at, len - at, &ev)) > 0) {
        at += used;
        chat_out_stream(stream, &ev, &sse);
        FUZZ_CHECK(chat_out_add(whole, &ev) == 0);
        gq_events_free(&ev);
        memset(&ev, 0, sizeof ev);
    }
    gq_events_free(&ev);
    FUZZ_CHECK(!sse.oom);
    check_sse(&sse, false);
    chat_out_stream_end(stream, &sse);
    check_sse(&sse, true);

    size_t json_len = 0;
    char *json = chat_out_json(whole, &json_len);
    check_json_doc(json, json_len);
    free(json);

    sbuf_free(&sse);
    chat_out_free(whole);
    chat_out_free(stream);
    chat_req_free(cr);
    return 0;
}
