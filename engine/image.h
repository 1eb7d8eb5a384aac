/*
 * image.h — image decoding (JPEG, PNG) and the preprocessing that turns one
 * RGB picture into the normalised tiles a vision encoder reads (spec §5.1, §6).
 *
 * Decoding
 *  - The format is detected from the bytes (magic numbers), never from a name.
 *  - JPEG (libjpeg-turbo): baseline, progressive, arithmetic-coded, grayscale,
 *    RGB, CMYK and YCCK (Adobe-inverted CMYK handled). 12- and 16-bit JPEGs are
 *    GLIMPSE_EUNSUPPORTED. The EXIF orientation tag (all 8 values) is applied,
 *    so the pixels come out the way a photo viewer shows them (llama.cpp's
 *    stb_image ignores it, so a phone photo taken upright reaches llama.cpp's
 *    model on its side and ours the right way up).
 *  - PNG (libpng): every colour type and bit depth, palettes with tRNS,
 *    interlaced. 16-bit samples keep their high byte (what libpng's strip_16,
 *    stb_image and PIL do). gAMA, sBIT, bKGD and colour-profile chunks are
 *    ignored: pixels are passed on as stored. An eXIf orientation is applied
 *    like a JPEG's.
 *  - Alpha (an alpha channel or tRNS) is composited onto WHITE, per pixel on
 *    8-bit values: out = (c*a + 255*(255-a) + 127) / 255 (integer division).
 *    That is what a user sees in a browser and what Hugging Face's image
 *    processors do (transformers' convert_to_rgb pastes onto white), so a
 *    transparent logo does not turn into a black square. llama.cpp's
 *    stb_image path drops alpha instead; for opaque images both agree.
 *  - Every size is checked against an image_limits before any pixel buffer is
 *    allocated; truncated or corrupt data gives GLIMPSE_EFORMAT with a message.
 *    Nothing is global: any number of threads may decode at once.
 *
 * Preprocessing (image_preprocess) produces S×S tiles of planar normalised
 * f32 pixels [3][S][S]:
 *  - IMAGE_PP_IDEFICS3 (SmolVLM): the slices of the refined, black-letterboxed
 *    bicubic resize in row-major order, then the bilinear overview of the whole
 *    image LAST — the order in which their tokens enter the prompt (§5.3).
 *  - IMAGE_PP_FIXED (LLaVA-1.5): one tile, the aspect-preserving bicubic
 *    resize into S×S on a pad colour (default (122,116,104)).
 * The arithmetic follows llama.cpp's mtmd-image.cpp operation by operation in
 * f32 so that tiles match it to within one u8 level.
 */
#ifndef GLIMPSE_IMAGE_H
#define GLIMPSE_IMAGE_H

#include "internal.h"

/* ---- decoding ------------------------------------------------------------ */

/* An 8-bit RGB picture, rows top to bottom, pixels interleaved.
 *   data: [h][w][3], owned, free with image_u8_free */
typedef struct image_u8 {
    int w, h;
    uint8_t *data;
} image_u8;

/* Largest picture a decode accepts; checked from the header before any pixel
 * buffer exists. A zero field means "use the default" below. */
typedef struct image_limits {
    uint32_t max_width;
    uint32_t max_height;
    uint64_t max_pixels; /* w*h */
} image_limits;

#define IMAGE_DEFAULT_MAX_SIDE 16384u
#define IMAGE_DEFAULT_MAX_PIXELS (40u * 1000u * 1000u) /* 120 MB of RGB */

enum image_format {
    IMAGE_FORMAT_UNKNOWN = 0,
    IMAGE_FORMAT_JPEG = 1,
    IMAGE_FORMAT_PNG = 2,
};

/* Format of a buffer from its first bytes. Any thread. */
enum image_format image_detect(const void *data, size_t len);

/* Decodes a JPEG or PNG held in memory into RGB8. lim may be NULL (defaults).
 * On success out->data is owned by the caller, free with image_u8_free; on
 * failure *out is zeroed and the return value is GLIMPSE_EFORMAT (corrupt or
 * not an image), GLIMPSE_EUNSUPPORTED (valid but not supported, e.g. 12-bit
 * JPEG), GLIMPSE_ELIMIT (too large for lim), GLIMPSE_EINVAL or GLIMPSE_ENOMEM.
 * Any thread; data is only read, never past len. */
int image_decode(const void *data, size_t len, const image_limits *lim, image_u8 *out,
                 glimpse_err *err);

/* Frees out->data and zeroes *img; accepts NULL and an empty image. */
void image_u8_free(image_u8 *img);

/* ---- preprocessing ------------------------------------------------------- */

enum image_pp_mode {
    IMAGE_PP_IDEFICS3 = 1, /* refined slices + overview (projector "idefics3") */
    IMAGE_PP_FIXED = 2,    /* one letterboxed S×S tile (projector "mlp") */
};

typedef struct image_pp_params {
    int mode;             /* enum image_pp_mode */
    int image_size;       /* S: tile side (clip.vision.image_size) */
    int longest_edge;     /* idefics3: clip.vision.preproc_image_size, 0 when absent */
    float mean[3];        /* per-channel normalisation: v = (u8/255 - mean) / std */
    float std[3];
    uint8_t pad_color[3]; /* fixed: letterbox colour (llama.cpp uses 122,116,104 for llava) */
} image_pp_params;

/* Preprocessed tiles of one image.
 *   data: [n_tiles][3][S][S] planar normalised f32, owned, free with image_tiles_free.
 * idefics3: tiles 0 .. grid_x*grid_y-1 are the slices, row-major (tile r*grid_x + c
 * is column c of row r), and tile n_tiles-1 is the overview.
 * fixed: n_tiles = 1, grid_x = grid_y = 0. */
typedef struct image_tiles {
    int size;     /* S */
    int grid_x;   /* slice columns */
    int grid_y;   /* slice rows */
    int n_tiles;
    float *data;
} image_tiles;

/* Prompt tokens one idefics3 image occupies (spec §5.3), n_tok_per_tile image
 * embeddings per tile (64 for SmolVLM): (R·C + 1)·n + 2·R·C + (R − 1) + 4. */
size_t image_idefics3_n_tokens(int grid_x, int grid_y, int n_tok_per_tile);

/* Slice grid idefics3 uses for a w×h image (steps 1–2 of §5.1): the refined
 * size *rw×*rh and grid_x = rw/S, grid_y = rh/S. Returns 0, or GLIMPSE_EINVAL /
 * GLIMPSE_ELIMIT for sizes that are not positive or too large. Any thread. */
int image_idefics3_grid(int w, int h, int image_size, int longest_edge, int *rw, int *rh,
                        int *grid_x, int *grid_y, glimpse_err *err);

/* Preprocesses img as p says. On success out->data is owned by the caller,
 * free with image_tiles_free; on failure *out is zeroed. Errors:
 * GLIMPSE_EINVAL (bad parameters: tile size outside 1..2048, zero std),
 * GLIMPSE_ELIMIT (the grid would exceed 64 slices or sizes overflow),
 * GLIMPSE_ENOMEM. Any thread. */
int image_preprocess(const image_u8 *img, const image_pp_params *p, image_tiles *out,
                     glimpse_err *err);

/* Frees out->data and zeroes *t; accepts NULL. */
void image_tiles_free(image_tiles *t);

#endif /* GLIMPSE_IMAGE_H */
