/*
 * openai_props.h — properties of server/openai.c's outputs shared by the
 * request and response targets: an error is a 4xx with a valid JSON body,
 * every JSON document the server writes parses and is well-formed UTF-8.
 */
#ifndef GLIMPSE_FUZZ_OPENAI_PROPS_H
#define GLIMPSE_FUZZ_OPENAI_PROPS_H

#include "fuzz.h"
#include "openai.h"

#include <stdbool.h>

/* The request limits of the fuzz targets: small, so the limits are reached. */
static const chat_limits FUZZ_LIMITS = {
    .max_images = 4, .max_prompt_bytes = 4096, .max_n = 4, .image = { 0 } };

/* s[0..len) is one JSON object in well-formed UTF-8 with no raw newline (an
 * SSE data line must not contain one). */
static inline void check_json_doc(const char *s, size_t len)
{
    FUZZ_CHECK(s != NULL && utf8_valid((const unsigned char *)s, len));
    FUZZ_CHECK(memchr(s, '\n', len) == NULL);
    cJSON *j = cJSON_ParseWithLength(s, len);
    FUZZ_CHECK(cJSON_IsObject(j));
    cJSON_Delete(j);
}

/* A refused request: a 4xx (500 only for out of memory) whose body is valid. */
static inline void check_api_error(const api_error *e)
{
    FUZZ_CHECK((e->status >= 400 && e->status < 500) || e->status == 500);
    FUZZ_CHECK(e->message[0] != '\0');
    size_t len = 0;
    char *s = api_error_json(e, &len);
    check_json_doc(s, len);
    free(s);
}

/* An accepted request keeps to the limits. */
static inline void check_chat_req(const chat_req *cr)
{
    FUZZ_CHECK(cr->n >= 1 && cr->n <= FUZZ_LIMITS.max_n);
    FUZZ_CHECK(cr->n_images <= FUZZ_LIMITS.max_images);
    FUZZ_CHECK(cr->req.n_messages >= 1);
    size_t text_bytes = 0;
    for (size_t m = 0; m < cr->req.n_messages; m++) {
        const glimpse_message *msg = &cr->req.messages[m];
        FUZZ_CHECK(msg->role != NULL);
        for (size_t k = 0; k < msg->n_parts; k++) {
            const glimpse_part *p = &msg->parts[k];
            if (p->type == GLIMPSE_PART_TEXT) {
                size_t n = strlen(p->text);
                FUZZ_CHECK(utf8_valid((const unsigned char *)p->text, n));
                text_bytes += n;
            } else {
                FUZZ_CHECK(p->type == GLIMPSE_PART_IMAGE && p->image >= 0 && (size_t)p->image < cr->n_images);
            }
        }
    }
    FUZZ_CHECK(text_bytes <= FUZZ_LIMITS.max_prompt_bytes);
    for (size_t i = 0; i < cr->n_images; i++)
        fuzz_touch(cr->src[i].data, cr->src[i].len);
}

#endif /* GLIMPSE_FUZZ_OPENAI_PROPS_H */
