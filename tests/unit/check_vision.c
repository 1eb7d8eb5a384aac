/*
 * check_vision.c — the Vision Encoder and the projector against the PyTorch
 * reference (tools/reference_vision.py) on random mmproj files of both
 * projector types, and the loader's errors on broken files.
 */
#include "testutil.h"

#include "fusion.h"
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
    suite_add_tcase(s, tc);
    return run_suite(s);
}
