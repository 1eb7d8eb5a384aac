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
#include "media.h"
#include "model.h"
#include "sampler.h"
#include "template.h"
#include "tokenizer.h"
#include "vision.h"

#include <stdlib.h>
#include <string.h>

void glimpse_request_default(glimpse_request *r)
{
    memset(r, 0, sizeof *r);
    glimpse_sampling_default(&r->sampling);
}

/* Renders the request into prompt text with image slots; owned by *p. A raw
 * prompt takes the request's images first, in order. */
static int render_prompt(const glimpse_model *m, const glimpse_request *req, rendered_prompt *p, glimpse_err *err)
{
    memset(p, 0, sizeof *p);
    if (req->prompt) {
        p->len = strlen(req->prompt);
        p->text = malloc(p->len + 1);
        p->slots = calloc(req->n_images ? req->n_images : 1, sizeof *p->slots);
        if (!p->text || !p->slots) {
            rendered_prompt_free(p);
            return err_set(err, GLIMPSE_ENOMEM, "generate: out of memory");
        }
        memcpy(p->text, req->prompt, p->len + 1);
        for (size_t i = 0; i < req->n_images; i++)
            p->slots[i] = (image_slot){ 0, (int)i };
        p->n_slots = req->n_images;
        return 0;
    }
    if (req->n_messages == 0)
        return err_set(err, GLIMPSE_EINVAL, "generate: the request has neither messages nor a prompt");
    return chat_template_render(m->tmpl, req->messages, req->n_messages, true, p, err);
}

static int context_full(const glimpse_model *m, size_t n, glimpse_err *err)
{
    return err_set(err, GLIMPSE_ELIMIT, "generate: the prompt needs more than the %d positions of the context%s",
                   m->n_ctx, n ? "" : " (an image alone does not fit)");
}

/* Appends the tokens of text[0..len) to the prompt at *n. The first chunk gets
 * BOS/EOS as the vocabulary asks, like mtmd's first text chunk. */
static int add_text(glimpse_model *m, const char *text, size_t len, bool first, size_t *n, glimpse_err *err)
{
    size_t room = (size_t)m->n_ctx - *n, n_ids;
    int rc = tokenizer_encode(m->tok, text, len, first, true, m->ids, room, &n_ids, err);
    if (rc == GLIMPSE_ELIMIT)
        return context_full(m, *n, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n_ids; i++)
        m->prompt[*n + i] = (prompt_pos){ m->ids[i], -1, 0 };
    *n += n_ids;
    return 0;
}

/* The fused prompt (spec §5.3): text chunks between image slots, each slot
 * replaced by its image's layout. prompt_pos.image is the slot index, so an
 * image used twice is encoded twice, each with its own rows in m->emb. */
static int build_prompt(glimpse_model *m, const glimpse_request *req, const rendered_prompt *p, size_t *n_out,
                        int *image_tokens, glimpse_err *err)
{
    size_t n = 0, at = 0;
    int rc;
    *image_tokens = 0;
    for (size_t s = 0; s <= p->n_slots; s++) {
        size_t end = s < p->n_slots ? p->slots[s].offset : p->len;
        if ((rc = add_text(m, p->text + at, end - at, s == 0, &n, err)) < 0)
            return rc;
        at = end;
        if (s == p->n_slots)
            break;
        int idx = p->slots[s].image;
        if (idx < 0 || (size_t)idx >= req->n_images || !req->images || !req->images[idx])
            return err_set(err, GLIMPSE_EINVAL, "generate: image part %d refers to no image of the request", idx);
        const glimpse_image *img = req->images[idx];
        if (img->model != m)
            return err_set(err, GLIMPSE_EINVAL, "generate: image %d was prepared for another model", idx);
        size_t n_img;
        rc = fusion_image_layout(m->tok, vision_get_hparams(m->vision), img->tiles.grid_x, img->tiles.grid_y,
                                 (int)s, m->prompt + n, (size_t)m->n_ctx - n, &n_img, err);
        if (rc == GLIMPSE_ELIMIT)
            return context_full(m, n, err);
        if (rc < 0)
            return rc;
        n += n_img;
        *image_tokens += (int)n_img;
    }
    *n_out = n;
    return 0;
}

/* Runs the vision encoder over every tile of every slot's image; slot s's rows
 * start at row emb_row[s] of m->emb. */
static void encode_images(glimpse_model *m, const glimpse_request *req, const rendered_prompt *p,
                          size_t *emb_row)
{
    const vision_hparams *hp = vision_get_hparams(m->vision);
    const size_t n_embd = (size_t)m->text.cfg.n_embd, tile_len = 3 * (size_t)hp->image_size * hp->image_size;
    size_t row = 0;
    for (size_t s = 0; s < p->n_slots; s++) {
        const image_tiles *t = &req->images[p->slots[s].image]->tiles;
        emb_row[s] = row;
        for (int i = 0; i < t->n_tiles; i++) {
            vision_encode(m->vision, m->tp, t->data + (size_t)i * tile_len, m->emb + row * n_embd);
            row += (size_t)hp->n_tokens_out;
        }
    }
}

/* Evaluates the prompt at positions 0..n-1 in chunks of n_batch, with logits
 * for the last one only; image rows come from m->emb. */
static int prefill(glimpse_model *m, int n, const size_t *emb_row, glimpse_err *err)
{
    const size_t n_embd = (size_t)m->text.cfg.n_embd;
    for (int i0 = 0; i0 < n; i0 += m->n_batch) {
        int nb = n - i0 < m->n_batch ? n - i0 : m->n_batch;
        for (int j = 0; j < nb; j++) {
            const prompt_pos *pp = &m->prompt[i0 + j];
            const float *embd = pp->image < 0 ? NULL : m->emb + (emb_row[pp->image] + (size_t)pp->row) * n_embd;
            m->batch[j] = (dec_entry){ m->seq, i0 + j, pp->token, embd, i0 + j == n - 1 };
        }
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
    size_t *emb_row = NULL;
    int rc;

    if (req->max_tokens < 0)
        return err_set(err, GLIMPSE_EINVAL, "generate: max_tokens %d is negative", req->max_tokens);
    if (req->sampling.n_top_logprobs < 0 || req->sampling.n_top_logprobs > GLIMPSE_MAX_TOP_LOGPROBS)
        return err_set(err, GLIMPSE_EINVAL, "generate: top_logprobs %d is out of range [0, %d]",
                       (int)req->sampling.n_top_logprobs, GLIMPSE_MAX_TOP_LOGPROBS);
    if ((rc = render_prompt(m, req, &prompt, err)) < 0)
        return rc;
    if (prompt.n_slots > 0 && !m->vision) {
        rc = err_set(err, GLIMPSE_EUNSUPPORTED, "generate: the request has images but no vision projector is loaded");
        goto done;
    }

    /* The whole context is the cap on prompt + output. */
    size_t n_prompt = 0;
    int image_tokens = 0;
    if ((rc = build_prompt(m, req, &prompt, &n_prompt, &image_tokens, err)) < 0)
        goto done;
    if (n_prompt >= (size_t)m->n_ctx) {
        rc = context_full(m, n_prompt, err);
        goto done;
    }
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
    /* Penalties see the prompt's tokens too, as llama-server feeds them to its sampler. */
    for (size_t i = 0; i < n_prompt; i++)
        if (m->prompt[i].image < 0 && (rc = sampler_accept(smp, m->prompt[i].token, err)) < 0)
            goto done;
    if (prompt.n_slots > 0 && !(emb_row = malloc(prompt.n_slots * sizeof *emb_row))) {
        rc = err_set(err, GLIMPSE_ENOMEM, "generate: out of memory");
        goto done;
    }

    memset(res, 0, sizeof *res);
    res->prompt_tokens = (int)n_prompt;
    res->image_tokens = image_tokens;
    res->load_ms = m->load_ms;
    double t0 = time_ms();
    if (prompt.n_slots > 0)
        encode_images(m, req, &prompt, emb_row);
    double t_img = time_ms();
    res->image_encode_ms = t_img - t0;
    if ((rc = prefill(m, (int)n_prompt, emb_row, err)) < 0)
        goto done;
    double t1 = time_ms();
    res->prefill_ms = t1 - t_img;

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
    free(emb_row);
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
