/*
 * check_template.c — chat templates render exactly what the Jinja templates
 * (SmolVLM's tokenizer_config.json template, ChatML) produce.
 *
 * The expected strings were derived by hand from the Jinja source below
 * (SmolVLM's, identical to tests/data/tokenizer.json's chat_template); no
 * Jinja engine is available here to render it mechanically.
 */
#include "template.h"

#include "testutil.h"

/* SmolVLM-Instruct's chat_template, as stored in its GGUF. */
static const char smolvlm_jinja[] =
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

static const char chatml_jinja[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#define TEXT(s) { GLIMPSE_PART_TEXT, (s), 0 }
#define IMAGE(i) { GLIMPSE_PART_IMAGE, NULL, (i) }

START_TEST(detect)
{
    ck_assert_int_eq(chat_template_detect(smolvlm_jinja, strlen(smolvlm_jinja)), CHAT_TEMPLATE_SMOLVLM);
    ck_assert_int_eq(chat_template_detect(chatml_jinja, strlen(chatml_jinja)), CHAT_TEMPLATE_CHATML);
    ck_assert_int_eq(chat_template_detect(NULL, 0), CHAT_TEMPLATE_CHATML);
    ck_assert_int_eq(chat_template_detect("", 0), CHAT_TEMPLATE_CHATML);
    /* Only the given length is searched. */
    ck_assert_int_eq(chat_template_detect(smolvlm_jinja, 40), CHAT_TEMPLATE_CHATML);
    ck_assert_str_eq(chat_template_name(CHAT_TEMPLATE_SMOLVLM), "smolvlm");
    ck_assert_str_eq(chat_template_name(CHAT_TEMPLATE_CHATML), "chatml");
}
END_TEST

static void render_eq(int kind, const glimpse_message *m, size_t n, bool gen, const char *want)
{
    rendered_prompt p;
    glimpse_err err = { 0 };
    ck_assert_int_eq(chat_template_render(kind, m, n, gen, &p, &err), 0);
    ck_assert_str_eq(p.text, want);
    ck_assert_uint_eq(p.len, strlen(want));
    rendered_prompt_free(&p);
}

START_TEST(smolvlm_text)
{
    const glimpse_part sys[] = { TEXT("Be brief.") };
    const glimpse_part u1[] = { TEXT("Hi!") };
    const glimpse_part a1[] = { TEXT(" Hello.") };
    const glimpse_part u2[] = { TEXT("What is 2+2?"), TEXT(" Say it.") };
    const glimpse_message m[] = {
        { "system", sys, 1 }, { "user", u1, 1 }, { "assistant", a1, 1 }, { "user", u2, 2 },
    };
    render_eq(CHAT_TEMPLATE_SMOLVLM, m, 4, true,
              "<|im_start|>System: Be brief.<end_of_utterance>\n"
              "User: Hi!<end_of_utterance>\n"
              "Assistant:  Hello.<end_of_utterance>\n"
              "User: What is 2+2? Say it.<end_of_utterance>\n"
              "Assistant:");
    render_eq(CHAT_TEMPLATE_SMOLVLM, m + 1, 1, false, "<|im_start|>User: Hi!<end_of_utterance>\n");
    render_eq(CHAT_TEMPLATE_SMOLVLM, NULL, 0, true, "<|im_start|>Assistant:");
    /* capitalize lowers the rest of the word. */
    const glimpse_message odd[] = { { "uSER", u1, 1 } };
    render_eq(CHAT_TEMPLATE_SMOLVLM, odd, 1, false, "<|im_start|>User: Hi!<end_of_utterance>\n");
}
END_TEST

START_TEST(smolvlm_images)
{
    /* Image first: "User:" with no space, then the slot where Jinja writes
     * "<image>". */
    const glimpse_part u[] = { IMAGE(0), TEXT("What is this?"), IMAGE(1) };
    const glimpse_message m[] = { { "user", u, 3 } };
    rendered_prompt p;
    glimpse_err err = { 0 };
    ck_assert_int_eq(chat_template_render(CHAT_TEMPLATE_SMOLVLM, m, 1, true, &p, &err), 0);
    ck_assert_str_eq(p.text, "<|im_start|>User:What is this?<end_of_utterance>\nAssistant:");
    ck_assert_uint_eq(p.n_slots, 2);
    ck_assert_uint_eq(p.slots[0].offset, strlen("<|im_start|>User:"));
    ck_assert_int_eq(p.slots[0].image, 0);
    ck_assert_uint_eq(p.slots[1].offset, strlen("<|im_start|>User:What is this?"));
    ck_assert_int_eq(p.slots[1].image, 1);
    rendered_prompt_free(&p);

    /* Text first keeps the space. */
    const glimpse_part u2[] = { TEXT("Look:"), IMAGE(3) };
    const glimpse_message m2[] = { { "user", u2, 2 } };
    ck_assert_int_eq(chat_template_render(CHAT_TEMPLATE_SMOLVLM, m2, 1, false, &p, &err), 0);
    ck_assert_str_eq(p.text, "<|im_start|>User: Look:<end_of_utterance>\n");
    ck_assert_uint_eq(p.n_slots, 1);
    ck_assert_uint_eq(p.slots[0].offset, strlen("<|im_start|>User: Look:"));
    ck_assert_int_eq(p.slots[0].image, 3);
    rendered_prompt_free(&p);
}
END_TEST

START_TEST(chatml)
{
    const glimpse_part sys[] = { TEXT("You are helpful.") };
    const glimpse_part u[] = { TEXT("Hello"), TEXT(" there") };
    const glimpse_message m[] = { { "system", sys, 1 }, { "user", u, 2 } };
    render_eq(CHAT_TEMPLATE_CHATML, m, 2, true,
              "<|im_start|>system\nYou are helpful.<|im_end|>\n"
              "<|im_start|>user\nHello there<|im_end|>\n"
              "<|im_start|>assistant\n");
    render_eq(CHAT_TEMPLATE_CHATML, m + 1, 1, false, "<|im_start|>user\nHello there<|im_end|>\n");
}
END_TEST

START_TEST(empty_content_and_long_text)
{
    const glimpse_message m[] = { { "user", NULL, 0 } };
    render_eq(CHAT_TEMPLATE_SMOLVLM, m, 1, true, "<|im_start|>User: <end_of_utterance>\nAssistant:");
    /* Long text grows the buffer many times. */
    size_t n = 100000;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    const glimpse_part u[] = { TEXT(big) };
    const glimpse_message mb[] = { { "user", u, 1 } };
    rendered_prompt p;
    ck_assert_int_eq(chat_template_render(CHAT_TEMPLATE_CHATML, mb, 1, true, &p, NULL), 0);
    ck_assert_uint_eq(p.len, n + strlen("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"));
    ck_assert(!memcmp(p.text + strlen("<|im_start|>user\n"), big, n));
    rendered_prompt_free(&p);
    free(big);
}
END_TEST

START_TEST(bad_messages)
{
    const glimpse_part ok[] = { TEXT("x") };
    const glimpse_part no_text[] = { { GLIMPSE_PART_TEXT, NULL, 0 } };
    const glimpse_part bad_img[] = { IMAGE(-1) };
    const glimpse_part bad_type[] = { { 7, "x", 0 } };
    const struct {
        glimpse_message m;
        const char *msg;
    } cases[] = {
        { { NULL, ok, 1 }, "no role" },
        { { "", ok, 1 }, "no role" },
        { { "user", NULL, 1 }, "no content" },
        { { "user", no_text, 1 }, "no text" },
        { { "user", bad_img, 1 }, "negative image" },
        { { "user", bad_type, 1 }, "unknown type" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rendered_prompt p;
        glimpse_err err = { 0 };
        ck_assert_int_eq(chat_template_render(CHAT_TEMPLATE_SMOLVLM, &cases[i].m, 1, true, &p, &err),
                         GLIMPSE_EINVAL);
        ck_assert_msg(strstr(err.msg, cases[i].msg), "case %zu: '%s'", i, err.msg);
        ck_assert_ptr_null(p.text);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("template");
    TCase *tc = tcase_create("render");
    tcase_add_test(tc, detect);
    tcase_add_test(tc, smolvlm_text);
    tcase_add_test(tc, smolvlm_images);
    tcase_add_test(tc, chatml);
    tcase_add_test(tc, empty_content_and_long_text);
    tcase_add_test(tc, bad_messages);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
