/*
 * generate.c — one request from prompt to finish: template, tokenizer,
 * prefill in chunks, then sample / report / decode one token per step.
 *
 * Text path of a generated token: the streaming detokenizer turns ids into
 * well-formed UTF-8 (special tokens not rendered), then the stop matcher
 * holds back what may begin a stop string and cuts at a match; what it
 * releases is the event's text. The event's piece is the token's own bytes
 * (special tokens rendered), which is what logprobs report.
 */
#include "decoder.h"
#include "model.h"
#include "sampler.h"
#include "template.h"
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

void glimpse_request_default(glimpse_request *r)
{
    memset(r, 0, sizeof *r);
    glimpse_sampling_default(&r->sampling);
}

/* Renders the request into prompt text; owned by *p. */
static int render_prompt(const glimpse_model *m, const glimpse_request *req, rendered_prompt *p, glimpse_err *err)
{
    if (req->prompt) {
        memset(p, 0, sizeof *p);
        p->len = strlen(req->prompt);
        p->text = malloc(p->len + 1);
        if (!p->text)
            return err_set(err, GLIMPSE_ENOMEM, "generate: out of memory");
        memcpy(p->text, req->prompt, p->len + 1);
        return 0;
    }
    if (req->n_messages == 0)
        return err_set(err, GLIMPSE_EINVAL, "generate: the request has neither messages nor a prompt");
    int rc = chat_template_render(m->tmpl, req->messages, req->n_messages, true, p, err);
    if (rc < 0)
        return rc;
    if (p->n_slots > 0) {
        rendered_prompt_free(p);
        return err_set(err, GLIMPSE_EUNSUPPORTED, "generate: the request has images but no vision projector is loaded");
    }
    return 0;
}

/* Evaluates ids[0..n) at positions 0..n-1 in chunks of n_batch, with logits
 * for the last one only. */
static int prefill(glimpse_model *m, int n, glimpse_err *err)
{
    for (int i0 = 0; i0 < n; i0 += m->n_batch) {
        int nb = n - i0 < m->n_batch ? n - i0 : m->n_batch;
        for (int j = 0; j < nb; j++)
            m->batch[j] = (dec_entry){ m->seq, i0 + j, m->ids[i0 + j], NULL, i0 + j == n - 1 };
        int rc = decoder_forward(m->dec, m->batch, nb, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int init_stops(stop_matcher *sm, const glimpse_request *req, int64_t max_tokens, glimpse_err *err)
{
    const char *stops[GLIMPSE_MAX_STOP];
    size_t lens[GLIMPSE_MAX_STOP];
    int n = 0;
    for (int i = 0; i < GLIMPSE_MAX_STOP && req->stop[i]; i++) {
        stops[n] = req->stop[i];
        lens[n] = strlen(req->stop[i]);
        if (lens[n] == 0 || lens[n] > GLIMPSE_MAX_STOP_LEN)
            return err_set(err, GLIMPSE_EINVAL, "generate: stop string %d must be 1..%d bytes", i,
                           GLIMPSE_MAX_STOP_LEN);
        n++;
    }
    /* End-of-generation tokens are checked here (tokenizer_is_eog), not by
     * the matcher, so that they are not reported as generated tokens. */
    return stop_init(sm, stops, lens, n, NULL, 0, max_tokens, err);
}

/* Reports the text released at the end without a token of its own. */
static int report_tail(const glimpse_request *req, const char *text, size_t len)
{
    if (len == 0 || !req->on_token)
        return 0;
    glimpse_token ev = { .id = GLIMPSE_TOKEN_NONE, .piece = "", .text = text, .text_len = len };
    return req->on_token(&ev, req->user);
}

static int generate_locked(glimpse_model *m, const glimpse_request *req, glimpse_result *res, glimpse_err *err)
{
    const tokenizer *tok = m->tok;
    rendered_prompt prompt = { 0 };
    sampler *smp = NULL;
    int rc;

    if (req->max_tokens < 0)
        return err_set(err, GLIMPSE_EINVAL, "generate: max_tokens %d is negative", req->max_tokens);
    if (req->sampling.n_top_logprobs < 0 || req->sampling.n_top_logprobs > GLIMPSE_MAX_TOP_LOGPROBS)
        return err_set(err, GLIMPSE_EINVAL, "generate: top_logprobs %d is out of range [0, %d]",
                       (int)req->sampling.n_top_logprobs, GLIMPSE_MAX_TOP_LOGPROBS);
    if (req->n_images > 0)
        return err_set(err, GLIMPSE_EUNSUPPORTED, "generate: the request has images but no vision projector is loaded");
    if ((rc = render_prompt(m, req, &prompt, err)) < 0)
        return rc;

    /* The whole context is the cap on prompt + output. */
    size_t n_prompt;
    rc = tokenizer_encode(tok, prompt.text, prompt.len, true, true, m->ids, (size_t)m->n_ctx, &n_prompt, err);
    if (rc == GLIMPSE_ELIMIT || (rc == 0 && n_prompt >= (size_t)m->n_ctx)) {
        rc = err_set(err, GLIMPSE_ELIMIT, "generate: the prompt has %zu tokens; the context holds %d",
                     n_prompt, m->n_ctx);
        goto done;
    }
    if (rc < 0)
        goto done;
    if (n_prompt == 0) {
        rc = err_set(err, GLIMPSE_EINVAL, "generate: the prompt is empty");
        goto done;
    }
    int64_t room = m->n_ctx - (int64_t)n_prompt;
    int64_t max_tokens = req->max_tokens > 0 && req->max_tokens < room ? req->max_tokens : room;

    stop_matcher sm;
    if ((rc = init_stops(&sm, req, max_tokens, err)) < 0 ||
        (rc = sampler_create(&req->sampling, m->text.cfg.n_vocab, &smp, err)) < 0)
        goto done;
    /* Penalties see the prompt too, as llama-server feeds it to its sampler. */
    for (size_t i = 0; i < n_prompt; i++)
        if ((rc = sampler_accept(smp, m->ids[i], err)) < 0)
            goto done;

    memset(res, 0, sizeof *res);
    res->prompt_tokens = (int)n_prompt;
    res->load_ms = m->load_ms;
    double t0 = time_ms();
    if ((rc = prefill(m, (int)n_prompt, err)) < 0)
        goto done;
    double t1 = time_ms();
    res->prefill_ms = t1 - t0;

    detok dt;
    detok_init(&dt, tok, false);
    int64_t pos = (int64_t)n_prompt;
    glimpse_top_logprob top[GLIMPSE_MAX_TOP_LOGPROBS];
    for (;;) {
        sample_result sr;
        if ((rc = sampler_sample(smp, m->scratch, decoder_logits(m->dec, 0), &sr, err)) < 0)
            goto done;

        size_t n_text = 0, n_more = 0;
        if (tokenizer_is_eog(tok, sr.token)) {
            /* Release what the matcher held (no stop string completed) and
             * any incomplete character as U+FFFD. */
            stop_flush(&sm, m->out, &n_text);
            if ((rc = detok_flush(&dt, m->out + n_text, m->out_cap - n_text, &n_more, err)) < 0)
                goto done;
            res->finish_reason = GLIMPSE_FINISH_STOP;
            if (report_tail(req, m->out, n_text + n_more))
                goto cancel;
            break;
        }

        size_t piece_len;
        if ((rc = detok_push(&dt, sr.token, m->piece, m->piece_cap, &piece_len, err)) < 0)
            goto done;
        int fin = stop_push(&sm, sr.token, m->piece, piece_len, m->out, m->out_cap, &n_text, err);
        if (fin < 0) {
            rc = fin;
            goto done;
        }
        res->completion_tokens++;
        m->ids[pos] = sr.token;

        if (req->on_token) {
            for (int i = 0; i < sr.n_top; i++) {
                top[i].id = sr.top[i].id;
                top[i].piece = tokenizer_piece(tok, sr.top[i].id, true, &top[i].piece_len);
                top[i].logprob = sr.top[i].logprob;
            }
            glimpse_token ev = { .id = sr.token, .text = m->out, .text_len = n_text,
                                 .logprob = sr.logprob, .top = top, .n_top = sr.n_top };
            ev.piece = tokenizer_piece(tok, sr.token, true, &ev.piece_len);
            if (req->on_token(&ev, req->user))
                goto cancel;
        }
        if (fin == GLIMPSE_FINISH_LENGTH) {
            /* A character left incomplete by the last token. */
            if ((rc = detok_flush(&dt, m->out, m->out_cap, &n_more, err)) < 0)
                goto done;
            res->finish_reason = GLIMPSE_FINISH_LENGTH;
            if (report_tail(req, m->out, n_more))
                goto cancel;
            break;
        }
        if (fin == GLIMPSE_FINISH_STOP) {
            res->finish_reason = GLIMPSE_FINISH_STOP;
            break;
        }

        dec_entry e = { m->seq, pos, sr.token, NULL, true };
        if ((rc = decoder_forward(m->dec, &e, 1, err)) < 0)
            goto done;
        pos++;
    }
    res->decode_ms = time_ms() - t1;
    rc = 0;
    goto done;

cancel:
    res->decode_ms = time_ms() - t1;
    rc = err_set(err, GLIMPSE_ECANCELED, "generate: cancelled by the caller");
done:
    sampler_free(smp);
    rendered_prompt_free(&prompt);
    return rc;
}

int glimpse_generate(glimpse_model *m, const glimpse_request *req, glimpse_result *res, glimpse_err *err)
{
    if (!m || !req || !res)
        return err_set(err, GLIMPSE_EINVAL, "generate: model, request and result are required");
    pthread_mutex_lock(&m->lock);
    int rc = generate_locked(m, req, res, err);
    pthread_mutex_unlock(&m->lock);
    return rc;
}
