/*
 * template.c — rendering messages with the SmolVLM and ChatML templates.
 */
#include "template.h"

#include <stdlib.h>
#include <string.h>

int chat_template_detect(const char *jinja, size_t len)
{
    /* llama.cpp's rule: "<|im_start|>" plus "<end_of_utterance>" is SmolVLM
     * (which uses <|im_start|> as BOS but is not ChatML). Requiring the
     * end-of-utterance marker alone keeps templates that spell the start as
     * bos_token recognised too. */
    if (jinja && memmem(jinja, len, "<end_of_utterance>", 18))
        return CHAT_TEMPLATE_SMOLVLM;
    return CHAT_TEMPLATE_CHATML;
}

const char *chat_template_name(int kind)
{
    return kind == CHAT_TEMPLATE_SMOLVLM ? "smolvlm" : "chatml";
}

/* ---- a growable output ------------------------------------------------------ */

typedef struct out_buf {
    rendered_prompt *p;
    size_t cap;
    size_t slot_cap;
    bool oom;
} out_buf;

static void put(out_buf *o, const char *s, size_t n)
{
    if (o->oom)
        return;
    rendered_prompt *p = o->p;
    size_t need;
    if (!size_add(p->len, n, &need) || !size_add(need, 1, &need)) {
        o->oom = true;
        return;
    }
    if (need > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *t = realloc(p->text, cap);
        if (!t) {
            o->oom = true;
            return;
        }
        p->text = t;
        o->cap = cap;
    }
    memcpy(p->text + p->len, s, n);
    p->len += n;
    p->text[p->len] = '\0';
}

static void puts_(out_buf *o, const char *s) { put(o, s, strlen(s)); }

static void put_slot(out_buf *o, int image)
{
    if (o->oom)
        return;
    rendered_prompt *p = o->p;
    if (p->n_slots == o->slot_cap) {
        size_t cap = o->slot_cap ? o->slot_cap * 2 : 4;
        image_slot *s = realloc(p->slots, cap * sizeof *s);
        if (!s) {
            o->oom = true;
            return;
        }
        p->slots = s;
        o->slot_cap = cap;
    }
    p->slots[p->n_slots++] = (image_slot){ p->len, image };
}

/* Jinja's `capitalize` filter: first character upper case, the rest lower
 * (ASCII; roles are ASCII words). */
static void put_capitalized(out_buf *o, const char *s)
{
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        if (i == 0 && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        else if (i > 0 && c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        put(o, &c, 1);
    }
}

static void put_content(out_buf *o, const glimpse_message *m)
{
    for (size_t j = 0; j < m->n_parts; j++) {
        if (m->parts[j].type == GLIMPSE_PART_TEXT)
            puts_(o, m->parts[j].text);
        else
            put_slot(o, m->parts[j].image);
    }
}

static int check_messages(const glimpse_message *msgs, size_t n, glimpse_err *err)
{
    if (n > 0 && !msgs)
        return err_set(err, GLIMPSE_EINVAL, "template: messages missing");
    for (size_t i = 0; i < n; i++) {
        const glimpse_message *m = &msgs[i];
        if (!m->role || !m->role[0])
            return err_set(err, GLIMPSE_EINVAL, "template: message %zu has no role", i);
        if (m->n_parts > 0 && !m->parts)
            return err_set(err, GLIMPSE_EINVAL, "template: message %zu has no content", i);
        for (size_t j = 0; j < m->n_parts; j++) {
            const glimpse_part *pt = &m->parts[j];
            if (pt->type == GLIMPSE_PART_TEXT && !pt->text)
                return err_set(err, GLIMPSE_EINVAL, "template: message %zu part %zu has no text", i, j);
            if (pt->type == GLIMPSE_PART_IMAGE && pt->image < 0)
                return err_set(err, GLIMPSE_EINVAL, "template: message %zu part %zu has a negative image index",
                               i, j);
            if (pt->type != GLIMPSE_PART_TEXT && pt->type != GLIMPSE_PART_IMAGE)
                return err_set(err, GLIMPSE_EINVAL, "template: message %zu part %zu has unknown type %d",
                               i, j, pt->type);
        }
    }
    return 0;
}

int chat_template_render(int kind, const glimpse_message *msgs, size_t n_msgs, bool add_generation_prompt,
                         rendered_prompt *out, glimpse_err *err)
{
    memset(out, 0, sizeof *out);
    int rc = check_messages(msgs, n_msgs, err);
    if (rc < 0)
        return rc;
    out_buf o = { out, 0, 0, false };
    put(&o, "", 0); /* an empty prompt is still a valid string */

    if (kind == CHAT_TEMPLATE_SMOLVLM) {
        puts_(&o, "<|im_start|>");
        for (size_t i = 0; i < n_msgs; i++) {
            const glimpse_message *m = &msgs[i];
            put_capitalized(&o, m->role);
            bool image_first = m->n_parts > 0 && m->parts[0].type == GLIMPSE_PART_IMAGE;
            puts_(&o, image_first ? ":" : ": ");
            put_content(&o, m);
            puts_(&o, "<end_of_utterance>\n");
        }
        if (add_generation_prompt)
            puts_(&o, "Assistant:");
    } else {
        for (size_t i = 0; i < n_msgs; i++) {
            puts_(&o, "<|im_start|>");
            puts_(&o, msgs[i].role);
            puts_(&o, "\n");
            put_content(&o, &msgs[i]);
            puts_(&o, "<|im_end|>\n");
        }
        if (add_generation_prompt)
            puts_(&o, "<|im_start|>assistant\n");
    }
    if (o.oom) {
        rendered_prompt_free(out);
        return err_set(err, GLIMPSE_ENOMEM, "template: out of memory");
    }
    return 0;
}

void rendered_prompt_free(rendered_prompt *p)
{
    if (!p)
        return;
    free(p->text);
    free(p->slots);
    memset(p, 0, sizeof *p);
}
