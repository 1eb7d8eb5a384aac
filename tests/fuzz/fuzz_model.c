/*
 * fuzz_model — the loaders on a mutated model file: the text model
 * (text_model_load), its tokenizer (tokenizer_load) and the vision projector
 * (vision_load) all read the same GGUF. The seeds are tiny but complete text
 * and mmproj files (tests/fuzz/make_seeds.py), so mutations reach the
 * hyper-parameter and shape checks behind the GGUF reader. A model that loads
 * has its views touched end to end; a tokenizer that loads encodes a line.
 */
#include "fuzz.h"
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"
#include "vision.h"

static void touch_tensor(const tensor *t)
{
    if (t)
        fuzz_touch(t->data, t->nbytes);
}

static void check_text(const gguf_file *f)
{
    text_model m;
    glimpse_err e = { 0 };
    int rc = text_model_load(f, &m, &e);
    if (rc < 0) {
        FUZZ_CHECK_ERR(rc, e);
        return;
    }
    const text_config *c = &m.cfg;
    FUZZ_CHECK(c->n_vocab > 0 && c->n_embd > 0 && c->n_layer > 0 && c->n_head > 0 && c->n_head_kv > 0);
    FUZZ_CHECK(c->n_head % c->n_head_kv == 0);
    touch_tensor(m.w.token_embd);
    touch_tensor(m.w.output);
    fuzz_touch(m.w.output_norm, (size_t)c->n_embd * sizeof(float));
    for (int il = 0; il < c->n_layer; il++) {
        const text_layer *l = &m.w.layers[il];
        fuzz_touch(l->attn_norm, (size_t)c->n_embd * sizeof(float));
        fuzz_touch(l->ffn_norm, (size_t)c->n_embd * sizeof(float));
        touch_tensor(l->wq), touch_tensor(l->wk), touch_tensor(l->wv), touch_tensor(l->wo);
        touch_tensor(l->ffn_gate), touch_tensor(l->ffn_up), touch_tensor(l->ffn_down);
    }
    text_model_release(&m);
}

static void check_tokenizer(const gguf_file *f)
{
    tokenizer *tok = NULL;
    glimpse_err e = { 0 };
    int rc = tokenizer_load(f, &tok, &e);
    if (rc < 0) {
        FUZZ_CHECK_ERR(rc, e);
        return;
    }
    static const char text[] = "<|im_start|>User: What is in this image?<end_of_utterance>\n\xC3\xA9\xF0\x9F\x98\x80 12345";
    int32_t ids[256];
    size_t n = 0;
    rc = tokenizer_encode(tok, text, sizeof text - 1, true, true, ids, 256, &n, &e);
    FUZZ_CHECK(rc == 0 || rc == GLIMPSE_ELIMIT || rc == GLIMPSE_ENOMEM);
    for (size_t i = 0; rc == 0 && i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < tokenizer_n_vocab(tok));
    tokenizer_free(tok);
}

static void check_vision(const gguf_file *f)
{
    vision_model *vm = NULL;
    glimpse_err e = { 0 };
    int rc = vision_load(f, &vm, &e);
    if (rc < 0) {
        FUZZ_CHECK_ERR(rc, e);
        return;
    }
    FUZZ_CHECK(vision_get_hparams(vm) != NULL);
    vision_free(vm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    static int quiet;
    if (!quiet++)
        fuzz_quiet();
    gguf_file *f = NULL;
    glimpse_err e = { 0 };
    if (gguf_open_buffer(data, len, &f, &e) < 0)
        return 0;
    check_text(f);
    check_tokenizer(f);
    check_vision(f);
    gguf_close(f);
    return 0;
}
