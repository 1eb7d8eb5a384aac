/*
 * media.h — what a glimpse_image holds (glimpse.h's opaque type).
 */
#ifndef GLIMPSE_MEDIA_H
#define GLIMPSE_MEDIA_H

#include "image.h"

struct glimpse_image {
    const glimpse_model *model; /* the model it was preprocessed for (borrowed) */
    int width, height;          /* decoded size, after EXIF orientation */
    int n_tokens;               /* prompt positions it takes (fusion_image_layout's count) */
    image_tiles tiles;          /* owned: slices row-major, then the overview */
};

#endif /* GLIMPSE_MEDIA_H */
