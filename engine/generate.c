/*
 * generate.c — a request as one job: template, tokenizer and image layouts
 * when it is submitted (on the caller's thread), and the path of each
 * generated token: sample, detokenize, stop rules, report (engine thread).
 * scheduler.c decides when a job's positions are evaluated.
 *
 * Text path of a generated token: the streaming detokenizer turns ids into
 * well-formed UTF-8 (special tokens not rendered), then the stop matcher
 * holds back what may begin a stop string and cuts at a match; what it
 * releases is the event's text. The event's piece is the token's own bytes
 * (special tokens rendered), which is what logprobs report.
 */
#include "media.h"
#include "scheduler.h"
#include "template.h"
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
static int add_text(const glimpse_model *m, prompt_pos *prompt, int32_t *ids, const char *text, size_t len,
                    bool first, size_t *n, glimpse_err *err)
{
    size_t room = (size_t)m->n_ctx - *n, n_ids;
    int rc = tokenizer_encode(m->tok, text, len, first, true, ids, room, &n_ids, err);
    if (rc == GLIMPSE_ELIMIT)
        return context_full(m, *n, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n_ids; i++)
        prompt[*n + i] = (prompt_pos){ ids[i], -1, 0 };
    *n += n_ids;
    return 0;
}

/* The fused prompt (spec §5.3) into prompt [n_ctx]: text chunks between image
 * slots, each slot replaced by its image's layout. prompt_pos.image is the
 * slot index (an image used twice has two slots; the image cache makes the
 * second one free). ids [n_ctx] is scratch. */
static int build_prompt(const glimpse_model *m, const glimpse_request *req, const rendered_prompt *p,
                        prompt_pos *prompt, int32_t *ids, size_t *n_out, int *image_tokens, glimpse_err *err)
{
    size_t n = 0, at = 0;
    int rc;
    *image_tokens = 0;
    for (size_t s = 0; s <= p->n_slots; s++) {
        size_t end = s < p->n_slots ? p->slots[s].offset : p->len;
        if ((rc = add_text(m, prompt, ids, p->text + at, end - at, s == 0, &n, err)) < 0)
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
                                 (int)s, prompt + n, (size_t)m->n_ctx - n, &n_img, err);
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
static int report_tail(const glimpse_job *j, const char *text, size_t len)
{
    if (len == 0 || !j->on_token)
        return 0;
    glimpse_token ev = { .id = GLIMPSE_TOKEN_NONE, .piece = "", .text = text, .text_len = len };
    return j->on_token(&ev, j->user);
}

/* A content hash of an image as the encoder sees it: its preprocessed tiles
 * and grid (two files with the same pixels hash alike). 64-bit words mixed
 * by multiply-rotate; the tail bytes are folded in last. */
static uint64_t image_hash(const image_tiles *t)
{
    uint64_t h = 0x243f6a8885a308d3ull ^ ((uint64_t)t->grid_x << 32 | (uint64_t)t->grid_y);
    h ^= (uint64_t)t->n_tiles * 0x9e3779b97f4a7c15ull + (uint64_t)t->size;
    size_t len = (size_t)t->n_tiles * 3 * (size_t)t->size * (size_t)t->size * sizeof(float), i = 0;
    const unsigned char *p = (const unsigned char *)t->data;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h = h << 29 | h >> 35;
    }
    for (; i < len; i++)
        h = (h ^ p[i]) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

int job_prepare(glimpse_job *j, const glimpse_request *req, glimpse_err *err)
{
    glimpse_model *m = j->m;
    rendered_prompt prompt = { 0 };
    int32_t *ids = NULL;
    int rc;

    j->seq = -1;
    j->on_token = req->on_token;
    j->on_done = req->on_done;
    j->user = req->user;
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

    /* The fused prompt is built at full context size, then the buffer is
     * trimmed to prompt + output: the whole context is the cap on both. */
    size_t n_prompt = 0;
    j->pos = malloc((size_t)m->n_ctx * sizeof *j->pos);
    ids = malloc((size_t)m->n_ctx * sizeof *ids);
    if (!j->pos || !ids) {
        rc = err_set(err, GLIMPSE_ENOMEM, "generate: out of memory");
        goto done;
    }
    if ((rc = build_prompt(m, req, &prompt, j->pos, ids, &n_prompt, &j->image_tokens, err)) < 0)
        goto done;
    if (n_prompt >= (size_t)m->n_ctx) {
        rc = context_full(m, n_prompt, err);
        goto done;
    }
    if (n_prompt == 0) {
        rc = err_set(err, GLIMPSE_EINVAL, "generate: the prompt is empty");
        goto done;
    }
    int room = m->n_ctx - (int)n_prompt;
    int max_tokens = req->max_tokens > 0 && req->max_tokens < room ? req->max_tokens : room;
    j->n_prompt = j->n_total = (int)n_prompt;
    j->cap = j->n_prompt + max_tokens;

    if ((rc = init_stops(&j->sm, req, max_tokens, err)) < 0 ||
        (rc = sampler_create(&req->sampling, m->text.cfg.n_vocab, &j->smp, err)) < 0)
        goto done;
    /* Penalties see the prompt's tokens too, as llama-server feeds them to its sampler. */
    for (int i = 0; i < j->n_prompt; i++)
        if (j->pos[i].image < 0 && (rc = sampler_accept(j->smp, j->pos[i].token, err)) < 0)
            goto done;
    detok_init(&j->dt, m->tok, false);

    size_t n_blocks = (size_t)j->cap / SCHED_KV_BLOCK + 1, n_slots = prompt.n_slots ? prompt.n_slots : 1;
    j->block_hash = malloc(n_blocks * sizeof *j->block_hash);
    j->tiles = calloc(n_slots, sizeof *j->tiles);
    j->slot_hash = calloc(n_slots, sizeof *j->slot_hash);
    j->slot_last = calloc(n_slots, sizeof *j->slot_last);
    j->slot_emb = calloc(n_slots, sizeof *j->slot_emb);
    if (!j->block_hash || !j->tiles || !j->slot_hash || !j->slot_last || !j->slot_emb) {
        rc = err_set(err, GLIMPSE_ENOMEM, "generate: out of memory");
        goto done;
    }
    j->n_slots = (int)prompt.n_slots;
    for (int s = 0; s < j->n_slots; s++) {
        j->tiles[s] = &req->images[prompt.slots[s].image]->tiles;
        j->slot_hash[s] = image_hash(j->tiles[s]);
    }
    for (int i = 0; i < j->n_prompt; i++)
        if (j->pos[i].image >= 0)
            j->slot_last[j->pos[i].image] = i;
    prompt_pos *trimmed = realloc(j->pos, (size_t)j->cap * sizeof *j->pos);
    if (trimmed)
        j->pos = trimmed;
    j->res.prompt_tokens = j->n_prompt;
    j->res.image_tokens = j->image_tokens;
    j->res.load_ms = m->load_ms;
    rc = 0;
done:
    free(ids);
    rendered_prompt_free(&prompt);
    return rc;
}

void job_release(glimpse_job *j)
{
    free(j->pos);
    free(j->tiles);
    free(j->slot_hash);
    free(j->slot_last);
    free(j->slot_emb);
    free(j->block_hash);
    sampler_free(j->smp);
}

int job_emit(glimpse_job *j, const float *logits, bool *finished, glimpse_err *err)
{
    glimpse_model *m = j->m;
    const tokenizer *tok = m->tok;
    sample_result sr;
    glimpse_top_logprob top[GLIMPSE_MAX_TOP_LOGPROBS];
    int rc;
    *finished = false;
    if ((rc = sampler_sample(j->smp, m->scratch, logits, &sr, err)) < 0)
        return rc;

    size_t n_text = 0, n_more = 0;
    if (tokenizer_is_eog(tok, sr.token)) {
        /* Release what the matcher held (no stop string completed) and any
         * incomplete character as U+FFFD. */
        stop_flush(&j->sm, m->out, &n_text);
        if ((rc = detok_flush(&j->dt, m->out + n_text, m->out_cap - n_text, &n_more, err)) < 0)
            return rc;
        j->res.finish_reason = GLIMPSE_FINISH_STOP;
        *finished = true;
        return report_tail(j, m->out, n_text + n_more) ? GLIMPSE_ECANCELED : 0;
    }

    size_t piece_len;
    if ((rc = detok_push(&j->dt, sr.token, m->piece, m->piece_cap, &piece_len, err)) < 0)
        return rc;
    int fin = stop_push(&j->sm, sr.token, m->piece, piece_len, m->out, m->out_cap, &n_text, err);
    if (fin < 0)
        return fin;
    j->res.completion_tokens++;

    if (j->on_token) {
        for (int i = 0; i < sr.n_top; i++) {
            top[i].id = sr.top[i].id;
            top[i].piece = tokenizer_piece(tok, sr.top[i].id, true, &top[i].piece_len);
            top[i].logprob = sr.top[i].logprob;
        }
        glimpse_token ev = { .id = sr.token, .text = m->out, .text_len = n_text,
                             .logprob = sr.logprob, .top = top, .n_top = sr.n_top };
        ev.piece = tokenizer_piece(tok, sr.token, true, &ev.piece_len);
        if (j->on_token(&ev, j->user))
            return GLIMPSE_ECANCELED;
    }
    if (fin == GLIMPSE_FINISH_LENGTH) {
        /* A character left incomplete by the last token. */
        if ((rc = detok_flush(&j->dt, m->out, m->out_cap, &n_more, err)) < 0)
            return rc;
        j->res.finish_reason = GLIMPSE_FINISH_LENGTH;
        *finished = true;
        return report_tail(j, m->out, n_more) ? GLIMPSE_ECANCELED : 0;
    }
    if (fin == GLIMPSE_FINISH_STOP) {
        j->res.finish_reason = GLIMPSE_FINISH_STOP;
        *finished = true;
        return 0;
    }
    /* max_tokens bounds the matcher, so a token that goes on has room. */
    j->pos[j->n_total++] = (prompt_pos){ sr.token, -1, 0 };
    return 0;
}

int glimpse_generate(glimpse_model *m, const glimpse_request *req, glimpse_result *res, glimpse_err *err)
{
    if (!m || !req || !res)
        return err_set(err, GLIMPSE_EINVAL, "generate: model, request and result are required");
    glimpse_job *j;
    int rc = glimpse_submit(m, req, &j, err);
    if (rc < 0)
        return rc;
    rc = glimpse_job_wait(j, res, err);
    glimpse_job_free(j);
    return rc;
}
