/*
 * media.c — the public image object: bytes decoded (image.c) and preprocessed
 * into tiles for one model's vision encoder, with the number of prompt
 * positions the image will take (fusion.c's layout). HTTP threads make these
 * in parallel; the engine thread only encodes the tiles.
 */
#include "media.h"

#include "model.h"
#include "vision.h"

#include <stdlib.h>

int glimpse_image_decode(const glimpse_model *m, const void *data, size_t len, const glimpse_image_limits *lim,
                         glimpse_image **out, glimpse_err *err)
{
    *out = NULL;
    if (!m || !data)
        return err_set(err, GLIMPSE_EINVAL, "image: model and data are required");
    if (!m->vision)
        return err_set(err, GLIMPSE_EUNSUPPORTED, "image: the model has no vision projector (load an mmproj)");
    if (lim && (lim->max_width < 0 || lim->max_height < 0 || lim->max_pixels < 0))
        return err_set(err, GLIMPSE_EINVAL, "image: negative limits");
    image_limits il = { 0 };
    if (lim)
        il = (image_limits){ (uint32_t)lim->max_width, (uint32_t)lim->max_height, (uint64_t)lim->max_pixels };

    glimpse_image *img = calloc(1, sizeof *img);
    if (!img)
        return err_set(err, GLIMPSE_ENOMEM, "image: out of memory");
    image_u8 u8 = { 0 };
    int rc = image_decode(data, len, &il, &u8, err);
    if (rc == 0)
        rc = image_preprocess(&u8, &m->pp, &img->tiles, err);
    if (rc < 0) {
        image_u8_free(&u8);
        free(img);
        return rc;
    }
    img->model = m;
    img->width = u8.w;
    img->height = u8.h;
    image_u8_free(&u8);
    const vision_hparams *hp = vision_get_hparams(m->vision);
    img->n_tokens = m->pp.mode == IMAGE_PP_IDEFICS3
                        ? (int)image_idefics3_n_tokens(img->tiles.grid_x, img->tiles.grid_y, hp->n_tokens_out)
                        : hp->n_tokens_out;
    *out = img;
    return 0;
}

void glimpse_image_free(glimpse_image *img)
{
    if (!img)
        return;
    image_tiles_free(&img->tiles);
    free(img);
}

int glimpse_image_width(const glimpse_image *img)
{
    return img->width;
}

int glimpse_image_height(const glimpse_image *img)
{
    return img->height;
}

int glimpse_image_n_tokens(const glimpse_image *img)
{
    return img->n_tokens;
}
