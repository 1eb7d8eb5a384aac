/*
 * check_vision.c — the Vision Encoder and the projector against the PyTorch
 * reference (tools/reference_vision.py) on random mmproj files of both
 * projector types, and the loader's errors on broken files.
 */
#include "testutil.h"

#include "fusion.h"
#include "glimpse.h"
#include "gguf.h"
#include "image.h"
#include "tokenizer.h"
#include "kernels/kernels.h"
#include "vision.h"

#include <math.h>
#include <stdint.h>

/* A reference array file: int32 magic "GMIL", n_dims, dims..., float32 data. */
typedef struct ref_array {
    void *buf;
    int n_dims;
    int32_t dims[4];
    const float *data;
    size_t n;
} ref_array;

static void ref_load(const char *path, ref_array *a)
{
    size_t len = 0;
    a->buf = read_file(path, &len);
    ck_assert_msg(a->buf != NULL, "cannot read %s (run `make check` to build fixtures)", path);
    const int32_t *h = a->buf;
    ck_assert_uint_ge(len, 8);
    ck_assert_int_eq(h[0], 0x4C494D47);
    a->n_dims = h[1];
    ck_assert(a->n_dims >= 1 && a->n_dims <= 4);
    a->n = 1;
    for (int i = 0; i < a->n_dims; i++) {
        a->dims[i] = h[2 + i];
        a->n *= (size_t)a->dims[i];
    }
    size_t off = (size_t)(2 + a->n_dims) * sizeof(int32_t);
    ck_assert_uint_eq(len, off + a->n * sizeof(float));
    a->data = (const float *)((const char *)a->buf + off);
}

/* max |a - b| / max |b| */
static double rel_err(const float *a, const float *b, size_t n)
{
    double dmax = 0, bmax = 0;
    for (size_t i = 0; i < n; i++) {
        dmax = fmax(dmax, fabs((double)a[i] - b[i]));
        bmax = fmax(bmax, fabs((double)b[i]));
    }
    return bmax > 0 ? dmax / bmax : dmax;
}

static void check_against_reference(const char *name, double tol)
{
    char path[256];
    glimpse_err err = { 0 };
    gguf_file *f = NULL;
    vision_model *vm = NULL;
    threadpool *tp = NULL;
    ref_array tiles, vit, emb;

    kernels_init();
    snprintf(path, sizeof path, "vision-%s.gguf", name);
    ck_assert_msg(gguf_open(fixture_path(path), &f, &err) == 0, "%s", err.msg);
    ck_assert_msg(vision_load(f, &vm, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(threadpool_create(3, &tp, &err), 0);
    const vision_hparams *hp = vision_get_hparams(vm);

    snprintf(path, sizeof path, "vision-%s.tiles", name);
    ref_load(fixture_path(path), &tiles);
    snprintf(path, sizeof path, "vision-%s.vit", name);
    ref_load(fixture_path(path), &vit);
    snprintf(path, sizeof path, "vision-%s.emb", name);
    ref_load(fixture_path(path), &emb);
    const int n_tiles = tiles.dims[0];
    ck_assert_int_eq(tiles.dims[3], hp->image_size);
    ck_assert_int_eq(vit.dims[1], hp->n_pos);
    ck_assert_int_eq(vit.dims[2], hp->n_embd);
    ck_assert_int_eq(emb.dims[1], hp->n_tokens_out);
    ck_assert_int_eq(emb.dims[2], hp->n_embd_text);

    const size_t tile_n = tiles.n / (size_t)n_tiles, vit_n = vit.n / (size_t)n_tiles;
    const size_t emb_n = emb.n / (size_t)n_tiles;
    float *out = malloc(emb_n * sizeof *out);
    ck_assert_ptr_nonnull(out);
    for (int t = 0; t < n_tiles; t++) {
        /* alternate pool sizes: the result must not depend on the thread count */
        vision_encode(vm, t % 2 ? NULL : tp, tiles.data + t * tile_n, out);
        double e_vit = rel_err(vision_last_hidden(vm), vit.data + t * vit_n, vit_n);
        double e_emb = rel_err(out, emb.data + t * emb_n, emb_n);
        ck_assert_msg(e_vit <= tol, "%s tile %d: ViT output rel. error %.3g > %.3g", name, t, e_vit, tol);
        ck_assert_msg(e_emb <= tol, "%s tile %d: projector rel. error %.3g > %.3g", name, t, e_emb, tol);
    }
    free(out);
    free(tiles.buf);
    free(vit.buf);
    free(emb.buf);
    threadpool_free(tp);
    vision_free(vm);
    gguf_close(f);
}

/* F32 weights: only float rounding separates engine and reference, yet the
 * errors move in jumps. ggml's GELU (and the reference) round its input to
 * half; where an f32 input lies within float noise (~1e-7 relative) of the
 * midpoint between two halves, engine and float64 reference take
 * neighbouring halves: one element off by a half ulp (up to 2^-11
 * relative), carried on by the next layers. Any change in f32 summation
 * order (a matmul's blocking, the attention's) draws again which elements
 * flip: with the kernels of 2026-11-27 the worst tile is at 9.4e-5
 * (idefics3, ViT), and an attention that divided unnormalised sums at the
 * end put mlp's projector at 1.04e-4 through one flipped GELU input that
 * the reference puts 2.4e-7 above a midpoint (0.62426782 vs 0.62426758). */
START_TEST(test_idefics3_f32)
{
    check_against_reference("idefics3", 1e-4);
}
END_TEST

/* F16 weights: the reference dequantises the same half values, but the engine
 * rounds activations to half before each product (llama.cpp's CPU rule). */
START_TEST(test_idefics3_f16)
{
    check_against_reference("idefics3-f16", 1e-2);
}
END_TEST

START_TEST(test_mlp_f32)
{
    check_against_reference("mlp", 1e-4);
}
END_TEST

/* A text model is not an mmproj: a clear error, no crash. */
START_TEST(test_rejects_text_model)
{
    glimpse_err err = { 0 };
    gguf_file *f = NULL;
    vision_model *vm = (vision_model *)1;
    ck_assert_int_eq(gguf_open(fixture_path("tiny-f32.gguf"), &f, &err), 0);
    ck_assert_int_eq(vision_load(f, &vm, &err), GLIMPSE_EFORMAT);
    ck_assert_ptr_null(vm);
    ck_assert_msg(strstr(err.msg, "vision encoder") != NULL, "message: %s", err.msg);
    gguf_close(f);
}
END_TEST

/* The piece of a layout position, or "<emb i:r>" for an image row. */
static const char *pos_str(const tokenizer *tok, const prompt_pos *p, char *buf, size_t cap)
{
    if (p->image >= 0) {
        snprintf(buf, cap, "<emb %d:%d>", p->image, p->row);
        return buf;
    }
    size_t len;
    const char *piece = tokenizer_piece(tok, p->token, true, &len);
    snprintf(buf, cap, "%.*s", (int)len, piece);
    return buf;
}

/* Spec §5.3 for a 3-column, 2-row grid with 2 embeddings per tile, written
 * out by hand, and the count against image.h's independent formula. */
START_TEST(test_idefics3_layout)
{
    static const char *want[] = {
        "<fake_token_around_image>", "<row_1_col_1>", "<emb 5:0>", "<emb 5:1>",
        "<fake_token_around_image>", "<row_1_col_2>", "<emb 5:2>", "<emb 5:3>",
        "<fake_token_around_image>", "<row_1_col_3>", "<emb 5:4>", "<emb 5:5>",
        "\n",
        "<fake_token_around_image>", "<row_2_col_1>", "<emb 5:6>", "<emb 5:7>",
        "<fake_token_around_image>", "<row_2_col_2>", "<emb 5:8>", "<emb 5:9>",
        "<fake_token_around_image>", "<row_2_col_3>", "<emb 5:10>", "<emb 5:11>",
        "\n\n", "<fake_token_around_image>", "<global-img>", "<emb 5:12>", "<emb 5:13>",
        "<fake_token_around_image>",
    };
    const size_t n_want = sizeof want / sizeof want[0];
    glimpse_err err = { 0 };
    gguf_file *f = NULL;
    tokenizer *tok = NULL;
    ck_assert_msg(gguf_open(fixture_path("vocab.gguf"), &f, &err) == 0, "%s", err.msg);
    ck_assert_msg(tokenizer_load(f, &tok, &err) == 0, "%s", err.msg);
    vision_hparams hp = { .projector = PROJECTOR_IDEFICS3, .n_tokens_out = 2 };

    prompt_pos pos[64];
    size_t n = 0;
    ck_assert_int_eq(fusion_image_layout(tok, &hp, 3, 2, 5, pos, 4, &n, &err), GLIMPSE_ELIMIT);
    ck_assert_uint_eq(n, n_want);
    ck_assert_int_eq(fusion_image_layout(tok, &hp, 3, 2, 5, pos, 64, &n, &err), 0);
    ck_assert_uint_eq(n, n_want);
    ck_assert_uint_eq(n, image_idefics3_n_tokens(3, 2, 2));
    for (size_t i = 0; i < n; i++) {
        char buf[64];
        ck_assert_msg(!strcmp(pos_str(tok, &pos[i], buf, sizeof buf), want[i]), "position %zu: '%s', want '%s'", i,
                      buf, want[i]);
    }
    /* a 1×1 grid (the shapes demo model): one slice, no row break */
    ck_assert_int_eq(fusion_image_layout(tok, &hp, 1, 1, 0, pos, 64, &n, &err), 0);
    ck_assert_uint_eq(n, image_idefics3_n_tokens(1, 1, 2));

    /* mlp: the embeddings alone */
    vision_hparams mlp = { .projector = PROJECTOR_MLP, .n_tokens_out = 7 };
    ck_assert_int_eq(fusion_image_layout(tok, &mlp, 0, 0, 1, pos, 64, &n, &err), 0);
    ck_assert_uint_eq(n, 7);
    for (size_t i = 0; i < n; i++)
        ck_assert(pos[i].image == 1 && pos[i].row == (int)i);
    tokenizer_free(tok);
    gguf_close(f);
}
END_TEST

/* ---- end to end ------------------------------------------------------------ */

typedef struct e2e_state {
    int32_t ids[64];
    float logprob[64][GLIMPSE_MAX_TOP_LOGPROBS + 1]; /* chosen token, then the alternatives */
    int32_t top_id[64][GLIMPSE_MAX_TOP_LOGPROBS];
    int n_top[64];
    int n;
} e2e_state;

static int e2e_token(const glimpse_token *t, void *user)
{
    e2e_state *st = user;
    if (t->id == GLIMPSE_TOKEN_NONE || st->n == 64)
        return 0;
    st->ids[st->n] = t->id;
    st->logprob[st->n][0] = t->logprob;
    for (int i = 0; i < t->n_top; i++) {
        st->top_id[st->n][i] = t->top[i].id;
        st->logprob[st->n][i + 1] = t->top[i].logprob;
    }
    st->n_top[st->n] = t->n_top;
    st->n++;
    return 0;
}

/* From image file to greedy tokens through the public API, against
 * tools/reference_vlm.py (PIL decoding, numpy preprocessing, PyTorch towers):
 * the same 32 tokens, and the same log-probabilities for the chosen token and
 * its 20 alternatives at every step (F32 KV cache, so that only float
 * rounding separates the two). */
static void check_end_to_end(const char *name)
{
    glimpse_err err = { 0 };
    glimpse_model_params mp;
    glimpse_model_params_default(&mp);
    char model_path[4200], mmproj_path[4200], file[64];
    snprintf(file, sizeof file, "%s.gguf", name);
    snprintf(model_path, sizeof model_path, "%s", fixture_path(file));
    snprintf(file, sizeof file, "%s-mmproj.gguf", name);
    snprintf(mmproj_path, sizeof mmproj_path, "%s", fixture_path(file));
    mp.model_path = model_path;
    mp.mmproj_path = mmproj_path;
    mp.kv_type = GLIMPSE_KV_F32;
    mp.n_threads = 2;
    glimpse_model *m = NULL;
    ck_assert_msg(glimpse_model_load(&mp, &m, &err) == 0, "%s", err.msg);

    size_t len = 0;
    void *png = read_file(source_path("../shared/testdata/images/jpeg-turbo/vgl_5674_0098.png"), &len);
    ck_assert_ptr_nonnull(png);
    glimpse_image *img = NULL;
    ck_assert_msg(glimpse_image_decode(m, png, len, NULL, &img, &err) == 0, "%s", err.msg);
    free(png);
    ck_assert_int_eq(glimpse_image_width(img), 120);
    ck_assert_int_eq(glimpse_image_height(img), 96);

    glimpse_part parts[2] = { { GLIMPSE_PART_IMAGE, NULL, 0 }, { GLIMPSE_PART_TEXT, "What is in this picture?", 0 } };
    glimpse_message msg = { "user", parts, 2 };
    glimpse_request req;
    glimpse_request_default(&req);
    req.messages = &msg;
    req.n_messages = 1;
    req.images = (const glimpse_image *const *)&img;
    req.n_images = 1;
    req.sampling.temperature = 0;
    req.sampling.n_top_logprobs = GLIMPSE_MAX_TOP_LOGPROBS;
    req.max_tokens = 32;
    e2e_state *st = calloc(1, sizeof *st);
    req.on_token = e2e_token;
    req.user = st;
    glimpse_result res;
    ck_assert_msg(glimpse_generate(m, &req, &res, &err) == 0, "%s", err.msg);

    /* reference: GGRD header, prompt ids (image rows 0xFFFFFFFF), greedy ids */
    size_t glen = 0, llen = 0;
    snprintf(file, sizeof file, "%s.greedy", name);
    unsigned char *g = read_file(fixture_path(file), &glen);
    snprintf(file, sizeof file, "%s.steps", name);
    unsigned char *l = read_file(fixture_path(file), &llen);
    ck_assert(g && l && glen >= 16 && llen >= 8);
    uint32_t n_prompt, n_gen, n_steps, n_vocab;
    memcpy(&n_prompt, g + 8, 4);
    memcpy(&n_gen, g + 12, 4);
    memcpy(&n_steps, l, 4);
    memcpy(&n_vocab, l + 4, 4);
    ck_assert_uint_eq(glen, 16 + 4 * (size_t)n_prompt + 8 * (size_t)n_gen);
    ck_assert_uint_eq(llen, 8 + 4 * (size_t)n_steps * n_vocab);
    int n_image_rows = 0;
    for (uint32_t i = 0; i < n_prompt; i++) {
        uint32_t id;
        memcpy(&id, g + 16 + 4 * i, 4);
        n_image_rows += id == 0xFFFFFFFFu;
    }
    ck_assert_int_eq(res.prompt_tokens, (int)n_prompt);
    ck_assert_int_eq(glimpse_image_n_tokens(img), res.image_tokens);
    /* idefics3 adds wrapper tokens around the embeddings; mlp has none */
    ck_assert_int_ge(res.image_tokens, n_image_rows);
    ck_assert_int_gt(n_image_rows, 0);
    ck_assert_int_eq(st->n, (int)n_gen);

    /* max |Δ logprob| / max |logit|: logprobs are logits shifted by their
     * log-sum-exp, so this is the relative logit error (up to 2x). */
    const float *ref_logits = (const float *)(l + 8);
    double worst = 0, scale = 0;
    double *lp = malloc(n_vocab * sizeof *lp);
    for (uint32_t i = 0; i < n_gen; i++) {
        uint32_t want;
        memcpy(&want, g + 16 + 4 * (size_t)n_prompt + 4 * i, 4);
        ck_assert_msg(st->ids[i] == (int32_t)want, "token %u: %d, reference %u", i, st->ids[i], want);
        const float *row = ref_logits + (size_t)i * n_vocab;
        double mx = -INFINITY, sum = 0;
        for (uint32_t v = 0; v < n_vocab; v++) {
            mx = fmax(mx, row[v]);
            scale = fmax(scale, fabs(row[v]));
        }
        for (uint32_t v = 0; v < n_vocab; v++)
            sum += exp(row[v] - mx);
        for (uint32_t v = 0; v < n_vocab; v++)
            lp[v] = row[v] - mx - log(sum);
        worst = fmax(worst, fabs(st->logprob[i][0] - lp[want]));
        ck_assert_int_eq(st->n_top[i], GLIMPSE_MAX_TOP_LOGPROBS);
        for (int k = 0; k < st->n_top[i]; k++)
            worst = fmax(worst, fabs(st->logprob[i][k + 1] - lp[st->top_id[i][k]]));
    }
    free(lp);
    ck_assert_msg(worst / scale < 1e-4, "log-probabilities differ from the reference by %.3g (%.3g of max |logit|)",
                  worst, worst / scale);
    free(g);
    free(l);
    free(st);
    glimpse_image_free(img);
    glimpse_model_free(m);
}

START_TEST(test_end_to_end_idefics3)
{
    check_end_to_end("vlm");
}
END_TEST

START_TEST(test_end_to_end_mlp)
{
    check_end_to_end("vlm-mlp");
}
END_TEST

/* Images are refused cleanly where they cannot be used. */
START_TEST(test_image_errors)
{
    glimpse_err err = { 0 };
    glimpse_model_params mp;
    glimpse_model_params_default(&mp);
    char model_path[4200];
    snprintf(model_path, sizeof model_path, "%s", fixture_path("vlm.gguf"));
    mp.model_path = model_path;
    glimpse_model *m = NULL;
    ck_assert_msg(glimpse_model_load(&mp, &m, &err) == 0, "%s", err.msg);
    glimpse_image *img = (glimpse_image *)1;
    static const unsigned char png_magic[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
    ck_assert_int_eq(glimpse_image_decode(m, png_magic, sizeof png_magic, NULL, &img, &err), GLIMPSE_EUNSUPPORTED);
    ck_assert_ptr_null(img);
    ck_assert_msg(strstr(err.msg, "vision") != NULL, "message: %s", err.msg);

    glimpse_part parts[1] = { { GLIMPSE_PART_IMAGE, NULL, 0 } };
    glimpse_message msg = { "user", parts, 1 };
    glimpse_request req;
    glimpse_request_default(&req);
    req.messages = &msg;
    req.n_messages = 1;
    glimpse_result res;
    ck_assert_int_eq(glimpse_generate(m, &req, &res, &err), GLIMPSE_EUNSUPPORTED);
    glimpse_model_free(m);

    /* with a projector: garbage bytes, and a part that names no image */
    char mmproj_path[4200];
    snprintf(mmproj_path, sizeof mmproj_path, "%s", fixture_path("vlm-mmproj.gguf"));
    mp.mmproj_path = mmproj_path;
    ck_assert_msg(glimpse_model_load(&mp, &m, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(glimpse_image_decode(m, "GIF89a", 6, NULL, &img, &err), GLIMPSE_EFORMAT);
    ck_assert_int_eq(glimpse_generate(m, &req, &res, &err), GLIMPSE_EINVAL);
    glimpse_model_free(m);

    /* a projector for another text width */
    snprintf(mmproj_path, sizeof mmproj_path, "%s", fixture_path("vision-idefics3.gguf"));
    ck_assert_int_eq(glimpse_model_load(&mp, &m, &err), GLIMPSE_EFORMAT);
    ck_assert_msg(strstr(err.msg, "wide") != NULL, "message: %s", err.msg);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("vision");
    TCase *tc = tcase_create("vision");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_idefics3_f32);
    tcase_add_test(tc, test_idefics3_f16);
    tcase_add_test(tc, test_mlp_f32);
    tcase_add_test(tc, test_rejects_text_model);
    tcase_add_test(tc, test_idefics3_layout);
    tcase_add_test(tc, test_end_to_end_idefics3);
    tcase_add_test(tc, test_end_to_end_mlp);
    tcase_add_test(tc, test_image_errors);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
