/*
 * template.h — chat templates: messages -> the prompt text the model was
 * trained on, with the places where images go (spec §3 "Chat template").
 *
 * Jinja is not interpreted: the template string of a GGUF
 * (tokenizer.chat_template) is recognised by content, like llama.cpp's
 * llm_chat_detect_template, and rendered by C code that reproduces what the
 * Jinja template produces.
 *  - SMOLVLM: "<|im_start|>" then per message "Role: text<end_of_utterance>\n"
 *    (role capitalised; "Role:" without the space when the content starts
 *    with an image), generation prompt "Assistant:".
 *  - CHATML (the fallback): "<|im_start|>role\ntext<|im_end|>\n" per message,
 *    generation prompt "<|im_start|>assistant\n".
 *
 * Images are not written as marker text (a user could type any marker):
 * the rendered prompt lists image slots as byte offsets into the text, where
 * the Jinja template would have written "<image>".
 */
#ifndef GLIMPSE_TEMPLATE_H
#define GLIMPSE_TEMPLATE_H

#include "internal.h"

enum chat_template {
    CHAT_TEMPLATE_CHATML = 0,
    CHAT_TEMPLATE_SMOLVLM = 1,
};

/* Recognises a Jinja template by content; NULL or unknown -> CHATML. */
int chat_template_detect(const char *jinja, size_t len);
/* "chatml" / "smolvlm"; static. */
const char *chat_template_name(int kind);

typedef struct image_slot {
    size_t offset;   /* byte offset in text where the image's tokens go */
    int image;       /* the part's image index */
} image_slot;

typedef struct rendered_prompt {
    char *text;          /* NUL-terminated; owned */
    size_t len;
    image_slot *slots;   /* [n_slots] in text order; owned */
    size_t n_slots;
} rendered_prompt;

/* Renders messages with template kind, appending the generation prompt when
 * add_generation_prompt. Validates the messages (roles, parts) and gives
 * GLIMPSE_EINVAL naming the bad one. On success *out owns its buffers: free
 * with rendered_prompt_free. Any thread. */
int chat_template_render(int kind, const glimpse_message *msgs, size_t n_msgs, bool add_generation_prompt,
                         rendered_prompt *out, glimpse_err *err);
void rendered_prompt_free(rendered_prompt *p);

#endif /* GLIMPSE_TEMPLATE_H */
