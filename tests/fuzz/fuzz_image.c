/*
 * fuzz_image — image decoding and preprocessing on arbitrary bytes.
 *
 * The first byte picks the preprocessing (idefics3 or fixed), its tile size
 * and longest edge, so both paths see every decoded size; the rest is the
 * image file. Decoding runs under a 4-megapixel budget (the server's budget
 * is larger; a smaller one keeps each run fast without skipping any check).
 * Properties: a decoded image is non-empty, inside the budget, and its pixel
 * buffer is fully addressable; preprocessing yields the promised tile count
 * with finite values only.
 */
#include "fuzz.h"
#include "image.h"

#include <math.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 1)
        return 0;
    uint8_t sel = data[0];
    data++, len--;

    image_limits lim = { .max_width = 4096, .max_height = 4096, .max_pixels = 4u << 20 };
    image_u8 img;
    glimpse_err e = { 0 };
    int rc = image_decode(data, len, &lim, &img, &e);
    if (rc < 0) {
        FUZZ_CHECK_ERR(rc, e);
        FUZZ_CHECK(img.data == NULL);
        return 0;
    }
    FUZZ_CHECK(img.w > 0 && img.h > 0 && (uint64_t)img.w * (uint64_t)img.h <= lim.max_pixels);
    fuzz_touch(img.data, (size_t)img.w * (size_t)img.h * 3);

    /* tile sizes of real projectors and of the tests' small ones */
    static const int sizes[4] = { 16, 28, 64, 224 };
    image_pp_params p = {
        .mode = (sel & 1) ? IMAGE_PP_FIXED : IMAGE_PP_IDEFICS3,
        .image_size = sizes[(sel >> 1) & 3],
        .mean = { 0.5f, 0.5f, 0.5f },
        .std = { 0.5f, 0.5f, 0.5f },
        .pad_color = { 122, 116, 104 },
    };
    /* idefics3's longest edge: absent, or a few tiles' worth */
    p.longest_edge = (sel >> 3) & 3 ? p.image_size * ((sel >> 3) & 3) * 2 : 0;
    image_tiles t;
    rc = image_preprocess(&img, &p, &t, &e);
    if (rc < 0) {
        FUZZ_CHECK_ERR(rc, e);
    } else {
        FUZZ_CHECK(t.size == p.image_size && t.n_tiles >= 1);
        if (p.mode == IMAGE_PP_IDEFICS3)
            FUZZ_CHECK(t.n_tiles == t.grid_x * t.grid_y + 1);
        else
            FUZZ_CHECK(t.n_tiles == 1);
        size_t n = (size_t)t.n_tiles * 3 * (size_t)t.size * (size_t)t.size;
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(isfinite(t.data[i]));
        image_tiles_free(&t);
    }
    image_u8_free(&img);
    return 0;
}
