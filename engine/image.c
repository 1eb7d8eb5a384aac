/*
 * image.c — JPEG/PNG decoding into RGB8 and the idefics3 / fixed-size
 * preprocessing of spec §5.1 and §6 (contracts in image.h).
 *
 * Both libraries report fatal errors through a callback that must not return;
 * each decode keeps its own jmp_buf and message in a per-call struct, so
 * nothing here is global and decodes may run on many threads at once.
 */
#include "image.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h> /* after jpeglib.h: its message list depends on jconfig.h */
#include <png.h>

/* Most tiles one idefics3 image may produce; 64 slices of 512² already hold
 * 16 MP, and SmolVLM only has <row_r_col_c> tokens up to 6×6. */
#define IMAGE_MAX_SLICES 64
/* A progressive JPEG with thousands of tiny scans costs minutes of CPU for a
 * few kilobytes of input; real encoders write about ten. */
#define JPEG_MAX_SCANS 500

/* ======================================================================== */
/* limits, formats, orientation                                              */
/* ======================================================================== */

static image_limits limits_or_default(const image_limits *lim)
{
    image_limits l = lim ? *lim : (image_limits){ 0 };
    if (!l.max_width)
        l.max_width = IMAGE_DEFAULT_MAX_SIDE;
    if (!l.max_height)
        l.max_height = IMAGE_DEFAULT_MAX_SIDE;
    if (!l.max_pixels)
        l.max_pixels = IMAGE_DEFAULT_MAX_PIXELS;
    return l;
}

/* Checks a header's dimensions; called before any pixel buffer exists. */
static int check_size(uint64_t w, uint64_t h, const image_limits *l, const char *fmt,
                      glimpse_err *err)
{
    if (w == 0 || h == 0)
        return err_set(err, GLIMPSE_EFORMAT, "%s: image has zero size (%llux%llu)", fmt,
                       (unsigned long long)w, (unsigned long long)h);
    uint64_t n_px;
    if (w > l->max_width || h > l->max_height || !u64_mul(w, h, &n_px) || n_px > l->max_pixels)
        return err_set(err, GLIMPSE_ELIMIT,
                       "%s: image of %llux%llu exceeds the limit (%ux%u, %llu pixels)", fmt,
                       (unsigned long long)w, (unsigned long long)h, l->max_width,
                       l->max_height, (unsigned long long)l->max_pixels);
    return 0;
}

enum image_format image_detect(const void *data, size_t len)
{
    static const uint8_t png_sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
    const uint8_t *p = data;
    if (p && len >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return IMAGE_FORMAT_JPEG;
    if (p && len >= sizeof png_sig && memcmp(p, png_sig, sizeof png_sig) == 0)
        return IMAGE_FORMAT_PNG;
    return IMAGE_FORMAT_UNKNOWN;
}

static uint32_t tiff_u16(const uint8_t *p, bool le) { return le ? p[0] | p[1] << 8 : p[0] << 8 | p[1]; }

static uint32_t tiff_u32(const uint8_t *p, bool le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* The Orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block, or 1
 * (upright) when absent or unreadable: a broken EXIF block is common in the
 * wild and never a reason to reject the picture itself. */
static int exif_orientation(const uint8_t *t, size_t len)
{
    if (len < 8)
        return 1;
    bool le;
    if (t[0] == 'I' && t[1] == 'I')
        le = true;
    else if (t[0] == 'M' && t[1] == 'M')
        le = false;
    else
        return 1;
    if (tiff_u16(t + 2, le) != 42)
        return 1;
    uint32_t ifd = tiff_u32(t + 4, le);
    if (ifd > len - 2)
        return 1;
    uint32_t n = tiff_u16(t + ifd, le);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t e = (uint64_t)ifd + 2 + 12 * (uint64_t)i;
        if (e + 12 > len)
            return 1;
        /* SHORT (type 3), count 1: the value sits in the entry's first 2 bytes. */
        if (tiff_u16(t + e, le) == 0x0112 && tiff_u16(t + e + 2, le) == 3) {
            uint32_t v = tiff_u16(t + e + 8, le);
            return v >= 1 && v <= 8 ? (int)v : 1;
        }
    }
    return 1;
}

/* Applies an EXIF orientation so that the picture is upright. For each output
 * pixel (x, y) of the new W'×H' picture, the source pixel of the stored W×H
 * picture is (sx, sy) as below; 5–8 swap the sides. */
static int apply_orientation(image_u8 *img, int orientation, glimpse_err *err)
{
    if (orientation <= 1 || orientation > 8)
        return 0;
    const int w = img->w, h = img->h;
    const bool swap = orientation >= 5;
    const int ow = swap ? h : w, oh = swap ? w : h;
    uint8_t *out = malloc((size_t)w * (size_t)h * 3); /* fits: the image already does */
    if (!out)
        return err_set(err, GLIMPSE_ENOMEM, "image: out of memory rotating %dx%d", w, h);
    for (int y = 0; y < oh; y++) {
        for (int x = 0; x < ow; x++) {
            int sx, sy;
            switch (orientation) {
            case 2: sx = w - 1 - x; sy = y; break;          /* mirrored */
            case 3: sx = w - 1 - x; sy = h - 1 - y; break;  /* rotated 180° */
            case 4: sx = x; sy = h - 1 - y; break;          /* flipped */
            case 5: sx = y; sy = x; break;                  /* transposed */
            case 6: sx = y; sy = h - 1 - x; break;          /* needs 90° clockwise */
            case 7: sx = w - 1 - y; sy = h - 1 - x; break;  /* transversed */
            default: sx = w - 1 - y; sy = x; break;         /* 8: needs 90° counter-clockwise */
            }
            memcpy(out + ((size_t)y * ow + x) * 3, img->data + ((size_t)sy * w + sx) * 3, 3);
        }
    }
    free(img->data);
    img->data = out;
    img->w = ow;
    img->h = oh;
    return 0;
}

/* Composites interleaved RGBA8 onto white and packs it to RGB8 in place
 * (writing pixel i at 3i never overtakes reading it at 4i). */
static void rgba_onto_white(uint8_t *px, size_t n_px)
{
    for (size_t i = 0; i < n_px; i++) {
        const uint8_t *s = px + 4 * i;
        unsigned a = s[3];
        uint8_t rgb[3];
        for (int c = 0; c < 3; c++)
            rgb[c] = (uint8_t)((s[c] * a + 255u * (255u - a) + 127u) / 255u);
        memcpy(px + 3 * i, rgb, 3);
    }
}

/* Releases the unused tail of a 4-byte-per-pixel buffer packed to RGB; keeps the
 * old block if realloc declines (the pixels are already in place). */
static uint8_t *shrink_to_rgb(uint8_t *px, size_t n_px)
{
    uint8_t *shrunk = realloc(px, n_px * 3);
    return shrunk ? shrunk : px;
}

/* ======================================================================== */
/* JPEG (libjpeg API of libjpeg-turbo)                                       */
/* ======================================================================== */

typedef struct jpeg_job {
    struct jpeg_error_mgr mgr; /* first: libjpeg hands us &mgr */
    struct jpeg_progress_mgr progress;
    jmp_buf jmp;
    int code; /* GLIMPSE_E* chosen for the error */
    char msg[JMSG_LENGTH_MAX];
} jpeg_job;

/* Errors that mean "valid JPEG, feature we do not decode" rather than corrupt. */
static bool jpeg_unsupported(int msg_code)
{
    static const int codes[] = {
        JERR_BAD_PRECISION, JERR_ARITH_NOTIMPL, JERR_NOT_COMPILED, JERR_SOF_UNSUPPORTED,
        JERR_CONVERSION_NOTIMPL, JERR_NOTIMPL, JERR_BAD_J_COLORSPACE, JERR_CCIR601_NOTIMPL,
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i] == msg_code)
            return true;
    return false;
}

static void jpeg_fail(j_common_ptr cinfo, int code)
{
    jpeg_job *job = (jpeg_job *)cinfo->err;
    job->code = code;
    cinfo->err->format_message(cinfo, job->msg);
    longjmp(job->jmp, 1);
}

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_fail(cinfo, jpeg_unsupported(cinfo->err->msg_code) ? GLIMPSE_EUNSUPPORTED
                                                            : GLIMPSE_EFORMAT);
}

/* libjpeg only warns when the data ends early (it pads with a fake EOI and
 * returns grey rows), a segment is cut short or an entropy code is invalid;
 * for us that is a truncated or damaged, hence corrupt, upload. Other
 * warnings (stray bytes between markers, which cameras write; odd JFIF or
 * progression parameters) are tolerated, as photo viewers do. */
static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    if (level >= 0)
        return;
    int c = cinfo->err->msg_code;
    if (c == JWRN_JPEG_EOF || c == JWRN_HIT_MARKER || c == JWRN_HUFF_BAD_CODE ||
        c == JWRN_ARITH_BAD_CODE)
        jpeg_fail(cinfo, GLIMPSE_EFORMAT);
    cinfo->err->num_warnings++;
}

static void jpeg_on_progress(j_common_ptr cinfo)
{
    if (cinfo->is_decompressor && ((j_decompress_ptr)cinfo)->input_scan_number > JPEG_MAX_SCANS) {
        jpeg_job *job = (jpeg_job *)cinfo->err;
        job->code = GLIMPSE_ELIMIT;
        snprintf(job->msg, sizeof job->msg, "more than %d scans", JPEG_MAX_SCANS);
        longjmp(job->jmp, 1);
    }
}

/* Orientation from the first APP1 "Exif\0\0" marker saved by jpeg_save_markers. */
static int jpeg_orientation(j_decompress_ptr cinfo)
{
    for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0)
            return exif_orientation(m->data + 6, m->data_length - 6);
    return 1;
}

/* CMYK as libjpeg returns it (YCCK already turned into CMYK) to RGB, in place.
 * Photoshop, the main writer of CMYK JPEGs, stores the inks inverted and marks
 * such files with an Adobe APP14 segment; then R = C·K/255 on the stored
 * values, otherwise R = (255−C)(255−K)/255. */
static void cmyk_to_rgb(uint8_t *px, size_t n_px, bool inverted)
{
    for (size_t i = 0; i < n_px; i++) {
        unsigned v[4];
        for (int c = 0; c < 4; c++)
            v[c] = inverted ? px[4 * i + c] : 255u - px[4 * i + c];
        for (int c = 0; c < 3; c++)
            px[3 * i + c] = (uint8_t)((v[c] * v[3] + 127u) / 255u);
    }
}

static int decode_jpeg(const uint8_t *data, size_t len, const image_limits *lim, image_u8 *out,
                       glimpse_err *err)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_job job;
    uint8_t *volatile px = NULL; /* volatile: read after longjmp */
    int rc;

    memset(&job, 0, sizeof job);
    memset(&cinfo, 0, sizeof cinfo); /* so that destroy is safe if create fails */
    cinfo.err = jpeg_std_error(&job.mgr);
    job.mgr.error_exit = jpeg_on_error;
    job.mgr.emit_message = jpeg_on_message;
    job.progress.progress_monitor = jpeg_on_progress;
    if (setjmp(job.jmp)) {
        rc = err_set(err, job.code, "jpeg: %s", job.msg);
        goto fail;
    }
    jpeg_create_decompress(&cinfo);
    cinfo.progress = &job.progress;
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xffff);
    if (jpeg_read_header(&cinfo, TRUE) != JPEG_HEADER_OK) {
        rc = err_set(err, GLIMPSE_EFORMAT, "jpeg: no image in the data (tables only)");
        goto fail;
    }
    rc = check_size(cinfo.image_width, cinfo.image_height, lim, "jpeg", err);
    if (rc)
        goto fail;

    const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    const int n_comp = cinfo.output_components;
    if (n_comp != (cmyk ? 4 : 3) || cinfo.output_width != cinfo.image_width ||
        cinfo.output_height != cinfo.image_height) {
        rc = err_set(err, GLIMPSE_EUNSUPPORTED, "jpeg: unexpected output layout (%d components)", n_comp);
        goto fail;
    }
    const size_t w = cinfo.output_width, h = cinfo.output_height;
    const size_t row_len = w * (size_t)n_comp; /* w ≤ limits, no overflow */
    px = malloc(row_len * h);
    if (!px) {
        rc = err_set(err, GLIMPSE_ENOMEM, "jpeg: out of memory for %zux%zu", w, h);
        goto fail;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = px + cinfo.output_scanline * row_len;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    if (cmyk) {
        cmyk_to_rgb(px, w * h, cinfo.saw_Adobe_marker);
        px = shrink_to_rgb(px, w * h);
    }
    const int orientation = jpeg_orientation(&cinfo);
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);

    out->w = (int)w;
    out->h = (int)h;
    out->data = px;
    rc = apply_orientation(out, orientation, err);
    if (rc)
        image_u8_free(out);
    return rc;

fail:
    jpeg_destroy_decompress(&cinfo);
    free(px);
    return rc;
}

/* ======================================================================== */
/* PNG (libpng 1.6)                                                          */
/* ======================================================================== */

typedef struct png_job {
    jmp_buf jmp;
    char msg[160];
    const uint8_t *data;
    size_t len, pos;
} png_job;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_job *job = png_get_error_ptr(png);
    snprintf(job->msg, sizeof job->msg, "%s", msg);
    longjmp(job->jmp, 1);
}

/* Warnings concern ancillary chunks libpng then skips (bad CRC, bad iCCP...). */
static void png_on_warning(png_structp png, png_const_charp msg)
{
    LOG_DEBUG("png: %s", msg);
}

/* Reads from the caller's buffer; asking past its end means a truncated file. */
static void png_read_mem(png_structp png, png_bytep dst, size_t n)
{
    png_job *job = png_get_io_ptr(png);
    if (n > job->len - job->pos)
        png_error(png, "truncated data");
    memcpy(dst, job->data + job->pos, n);
    job->pos += n;
}

static int decode_png(const uint8_t *data, size_t len, const image_limits *lim, image_u8 *out,
                      glimpse_err *err)
{
    png_job job = { .data = data, .len = len };
    png_structp png = NULL;
    png_infop info = NULL;
    uint8_t *volatile px = NULL;
    png_bytep *volatile rows = NULL;
    int rc;

    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job, png_on_error, png_on_warning);
    if (png)
        info = png_create_info_struct(png);
    if (!png || !info) {
        rc = err_set(err, GLIMPSE_ENOMEM, "png: out of memory");
        goto fail;
    }
    if (setjmp(job.jmp)) {
        rc = err_set(err, GLIMPSE_EFORMAT, "png: %s", job.msg);
        goto fail;
    }
    png_set_read_fn(png, &job, png_read_mem);
    png_read_info(png, info);

    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    rc = check_size(w, h, lim, "png", err);
    if (rc)
        goto fail;

    /* Every layout becomes 8-bit RGB, plus alpha when the file has any. */
    png_set_strip_16(png);
    png_set_packing(png);
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    const int n_ch = png_get_channels(png, info);
    const size_t row_len = (size_t)w * (size_t)n_ch; /* w ≤ limits, no overflow */
    if ((n_ch != 3 && n_ch != 4) || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != row_len) {
        rc = err_set(err, GLIMPSE_EUNSUPPORTED, "png: unexpected layout after conversion");
        goto fail;
    }
    px = malloc(row_len * h);
    rows = malloc(sizeof(png_bytep) * h);
    if (!px || !rows) {
        rc = err_set(err, GLIMPSE_ENOMEM, "png: out of memory for %ux%u", (unsigned)w, (unsigned)h);
        goto fail;
    }
    for (size_t y = 0; y < h; y++)
        rows[y] = px + y * row_len;
    png_read_image(png, rows);
    /* Reading to IEND checks the remaining CRCs and collects an eXIf after IDAT. */
    png_read_end(png, info);

    int orientation = 1;
    png_uint_32 n_exif = 0;
    png_bytep exif = NULL;
    if (png_get_eXIf_1(png, info, &n_exif, &exif) && exif)
        orientation = exif_orientation(exif, n_exif);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);

    if (n_ch == 4) {
        rgba_onto_white(px, (size_t)w * h);
        px = shrink_to_rgb(px, (size_t)w * h);
    }
    out->w = (int)w;
    out->h = (int)h;
    out->data = px;
    rc = apply_orientation(out, orientation, err);
    if (rc)
        image_u8_free(out);
    return rc;

fail:
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    free(px);
    return rc;
}

/* ======================================================================== */
/* decode entry point                                                        */
/* ======================================================================== */

int image_decode(const void *data, size_t len, const image_limits *lim, image_u8 *out,
                 glimpse_err *err)
{
    if (!out)
        return err_set(err, GLIMPSE_EINVAL, "image: no output");
    memset(out, 0, sizeof *out);
    if (!data || len == 0)
        return err_set(err, GLIMPSE_EFORMAT, "image: empty data");
    const image_limits l = limits_or_default(lim);
    switch (image_detect(data, len)) {
    case IMAGE_FORMAT_JPEG:
        return decode_jpeg(data, len, &l, out, err);
    case IMAGE_FORMAT_PNG:
        return decode_png(data, len, &l, out, err);
    default:
        return err_set(err, GLIMPSE_EFORMAT, "image: not a JPEG or PNG (unknown magic bytes)");
    }
}

void image_u8_free(image_u8 *img)
{
    if (!img)
        return;
    free(img->data);
    memset(img, 0, sizeof *img);
}

/* ======================================================================== */
/* resampling (llama.cpp's img_tool arithmetic, in f32 where it uses f32)    */
/* ======================================================================== */

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The cubic through p(-1), p(0), p(1), p(2) at t ∈ [0,1). The coefficients
 * are computed in double and stored as float, exactly as llama.cpp's
 * `a1 = -1.0 / 3 * d0 + ...` does; the polynomial itself is evaluated in f32. */
static inline float cubic(float pm1, float p0, float p1, float p2, float t)
{
    const float d0 = pm1 - p0, d2 = p1 - p0, d3 = p2 - p0;
    const float a1 = (float)(-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3);
    const float a2 = (float)(1.0 / 2 * d0 + 1.0 / 2 * d2);
    const float a3 = (float)(-1.0 / 6 * d0 - 1.0 / 2 * d2 + 1.0 / 6 * d3);
    return p0 + a1 * t + a2 * t * t + a3 * t * t * t;
}

/* Horizontal cubic of source row r at every output column: the same value
 * whichever output row asks for it, so it is computed once per row.
 *   out: [dw][3] */
static void bicubic_row(const uint8_t *src, int sw, int r, int dw, const int *xs, const float *dxs,
                        float *out)
{
    const uint8_t *row = src + (size_t)r * sw * 3;
    for (int j = 0; j < dw; j++) {
        const int *x = xs + 4 * j;
        for (int k = 0; k < 3; k++)
            out[3 * j + k] = cubic(row[x[0] * 3 + k], row[x[1] * 3 + k], row[x[2] * 3 + k],
                                   row[x[3] * 3 + k], dxs[j]);
    }
}

/* llama.cpp's img_tool::resize_bicubic: src [sh][sw][3] → dst [dh][dw][3],
 * no half-pixel offset, rounded and clamped. 0 or GLIMPSE_ENOMEM. */
static int resize_bicubic(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh)
{
    /* Column taps, and four cached horizontal passes: output rows walk the
     * source rows in order, so a row's four taps y-1..y+2 live in slots
     * (row & 3) and an upscale reuses them for several output rows. */
    int *xs = malloc(sizeof(int) * 4 * (size_t)dw);
    float *dxs = malloc(sizeof(float) * (size_t)dw);
    float *cache = malloc(sizeof(float) * 4 * 3 * (size_t)dw);
    if (!xs || !dxs || !cache) {
        free(xs);
        free(dxs);
        free(cache);
        return GLIMPSE_ENOMEM;
    }
    int tag[4] = { -1, -1, -1, -1 };
    /* No half-pixel offset: output pixel j samples source x = j·sw/dw. */
    const float tx = (float)sw / (float)dw, ty = (float)sh / (float)dh;
    for (int j = 0; j < dw; j++) {
        const int x = (int)(tx * j);
        dxs[j] = tx * j - x;
        for (int t = 0; t < 4; t++)
            xs[4 * j + t] = clampi(x - 1 + t, 0, sw - 1);
    }
    for (int i = 0; i < dh; i++) {
        const int y = (int)(ty * i);
        const float dy = ty * i - y;
        const float *rows[4];
        for (int t = 0; t < 4; t++) {
            const int r = clampi(y - 1 + t, 0, sh - 1);
            float *slot = cache + (size_t)(r & 3) * 3 * dw;
            if (tag[r & 3] != r) {
                bicubic_row(src, sw, r, dw, xs, dxs, slot);
                tag[r & 3] = r;
            }
            rows[t] = slot;
        }
        for (size_t e = 0; e < (size_t)dw * 3; e++) {
            const float v = roundf(cubic(rows[0][e], rows[1][e], rows[2][e], rows[3][e], dy));
            dst[(size_t)i * dw * 3 + e] = (uint8_t)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
        }
    }
    free(xs);
    free(dxs);
    free(cache);
    return 0;
}

static inline float lerpf(float s, float e, float t) { return s + (e - s) * t; }

/* llama.cpp's img_tool::resize_bilinear: src [sh][sw][3] → dst [dh][dw][3]. */
static void resize_bilinear(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh)
{
    /* Corners map onto corners ((sw-1)/(dw-1)), and the result is truncated. */
    const float xr = dw > 1 ? (float)(sw - 1) / (dw - 1) : 0.0f;
    const float yr = dh > 1 ? (float)(sh - 1) / (dh - 1) : 0.0f;
    for (int y = 0; y < dh; y++) {
        const float py = y * yr;
        const int y0 = clampi((int)py, 0, sh - 1), y1 = clampi(y0 + 1, 0, sh - 1);
        const float yf = py - y0;
        for (int x = 0; x < dw; x++) {
            const float px = x * xr;
            const int x0 = clampi((int)px, 0, sw - 1), x1 = clampi(x0 + 1, 0, sw - 1);
            const float xf = px - x0;
            const uint8_t *p00 = src + ((size_t)y0 * sw + x0) * 3, *p10 = src + ((size_t)y0 * sw + x1) * 3;
            const uint8_t *p01 = src + ((size_t)y1 * sw + x0) * 3, *p11 = src + ((size_t)y1 * sw + x1) * 3;
            for (int c = 0; c < 3; c++) {
                const float top = lerpf(p00[c], p10[c], xf), bottom = lerpf(p01[c], p11[c], xf);
                dst[((size_t)y * dw + x) * 3 + c] = (uint8_t)lerpf(top, bottom, yf);
            }
        }
    }
}

/* img_tool::resize with PAD_CEIL: the largest aspect-preserving bicubic resize
 * that fits dw×dh (sides rounded up, f32 scale), centred on a canvas of pad.
 *   dst: [dh][dw][3] */
static int resize_letterbox(const image_u8 *img, uint8_t *dst, int dw, int dh, const uint8_t pad[3],
                            uint8_t *scratch)
{
    if (img->w == dw && img->h == dh) {
        memcpy(dst, img->data, (size_t)dw * dh * 3);
        return 0;
    }
    const float sw = (float)dw / img->w, sh = (float)dh / img->h;
    const float s = sw < sh ? sw : sh;
    int nw = (int)ceilf(img->w * s), nh = (int)ceilf(img->h * s);
    nw = nw < dw ? nw : dw;
    nh = nh < dh ? nh : dh;
    if (resize_bicubic(img->data, img->w, img->h, scratch, nw, nh))
        return GLIMPSE_ENOMEM;
    for (size_t i = 0; i < (size_t)dw * dh; i++)
        memcpy(dst + 3 * i, pad, 3);
    const int ox = (dw - nw) / 2, oy = (dh - nh) / 2;
    for (int y = 0; y < nh; y++)
        memcpy(dst + ((size_t)(oy + y) * dw + ox) * 3, scratch + (size_t)y * nw * 3, (size_t)nw * 3);
    return 0;
}

/* ======================================================================== */
/* preprocessing                                                             */
/* ======================================================================== */

size_t image_idefics3_n_tokens(int grid_x, int grid_y, int n_tok_per_tile)
{
    const size_t n_slices = (size_t)grid_x * grid_y;
    return (n_slices + 1) * n_tok_per_tile + 2 * n_slices + (size_t)(grid_y - 1) + 4;
}

int image_idefics3_grid(int w, int h, int image_size, int longest_edge, int *rw, int *rh,
                        int *grid_x, int *grid_y, glimpse_err *err)
{
    const int S = image_size;
    if (w <= 0 || h <= 0 || S <= 0 || longest_edge < 0)
        return err_set(err, GLIMPSE_EINVAL, "idefics3: bad sizes (image %dx%d, tile %d, longest edge %d)",
                       w, h, S, longest_edge);
    /* calc_size_preserved_ratio: f32 arithmetic, because a double here can
     * flip a ceil and change the grid. */
    float fw, fh;
    if (longest_edge > 0) {
        const float sx = (float)longest_edge / w, sy = (float)longest_edge / h;
        const float s = sx < sy ? sx : sy;
        fw = ceilf(w * s / (float)S);
        fh = ceilf(h * s / (float)S);
    } else {
        fw = roundf((float)w / (float)S);
        fh = roundf((float)h / (float)S);
        fw = fw < 1.0f ? 1.0f : fw;
        fh = fh < 1.0f ? 1.0f : fh;
    }
    if (!(fw >= 1.0f && fh >= 1.0f && fw * fh <= IMAGE_MAX_SLICES))
        return err_set(err, GLIMPSE_ELIMIT, "idefics3: %dx%d needs a %.0fx%.0f grid (limit %d slices)",
                       w, h, fw, fh, IMAGE_MAX_SLICES);
    *grid_x = (int)fw;
    *grid_y = (int)fh;
    *rw = *grid_x * S;
    *rh = *grid_y * S;
    return 0;
}

/* Normalises an S×S window of an RGB8 picture (row stride `stride` pixels)
 * into a planar tile.
 *   src: top-left pixel of the window; tile: [3][S][S] */
static void normalize_tile(const uint8_t *src, size_t stride, int S, const image_pp_params *p, float *tile)
{
    const size_t plane = (size_t)S * S;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            for (int c = 0; c < 3; c++) {
                const float v = (float)src[((size_t)y * stride + x) * 3 + c] / 255.0f;
                tile[c * plane + (size_t)y * S + x] = (v - p->mean[c]) / p->std[c];
            }
}

int image_preprocess(const image_u8 *img, const image_pp_params *p, image_tiles *out, glimpse_err *err)
{
    uint8_t *canvas = NULL, *scratch = NULL;
    int rc;

    if (!out)
        return err_set(err, GLIMPSE_EINVAL, "preprocess: no output");
    memset(out, 0, sizeof *out);
    if (!img || !img->data || img->w <= 0 || img->h <= 0 || !p)
        return err_set(err, GLIMPSE_EINVAL, "preprocess: empty image or no parameters");
    if (p->image_size <= 0 || p->image_size > 2048)
        return err_set(err, GLIMPSE_EINVAL, "preprocess: tile size %d out of range", p->image_size);
    for (int c = 0; c < 3; c++)
        if (!(p->std[c] != 0.0f) || !isfinite(p->std[c]) || !isfinite(p->mean[c]))
            return err_set(err, GLIMPSE_EINVAL, "preprocess: bad mean/std for channel %d", c);

    const int S = p->image_size;
    const size_t tile_len = (size_t)3 * S * S; /* S ≤ 8192: fits */
    int rw = S, rh = S, gx = 0, gy = 0;
    if (p->mode == IMAGE_PP_IDEFICS3) {
        rc = image_idefics3_grid(img->w, img->h, S, p->longest_edge, &rw, &rh, &gx, &gy, err);
        if (rc)
            return rc;
    } else if (p->mode != IMAGE_PP_FIXED) {
        return err_set(err, GLIMPSE_EINVAL, "preprocess: unknown mode %d", p->mode);
    }
    const int n_tiles = p->mode == IMAGE_PP_IDEFICS3 ? gx * gy + 1 : 1;

    /* The letterboxed picture (refined image, or the single fixed tile) and the
     * bicubic result before padding, both at most rw×rh. */
    size_t canvas_len, tiles_len;
    if (!size_mul((size_t)rw * 3, (size_t)rh, &canvas_len) ||
        !size_mul(tile_len * sizeof(float), (size_t)n_tiles, &tiles_len))
        return err_set(err, GLIMPSE_ELIMIT, "preprocess: sizes overflow");
    canvas = malloc(canvas_len);
    scratch = malloc(canvas_len);
    out->data = malloc(tiles_len);
    if (!canvas || !scratch || !out->data) {
        rc = err_set(err, GLIMPSE_ENOMEM, "preprocess: out of memory for %d tiles of %d²", n_tiles, S);
        goto fail;
    }

    static const uint8_t black[3] = { 0, 0, 0 };
    if (resize_letterbox(img, canvas, rw, rh, p->mode == IMAGE_PP_FIXED ? p->pad_color : black, scratch)) {
        rc = err_set(err, GLIMPSE_ENOMEM, "preprocess: out of memory resizing to %dx%d", rw, rh);
        goto fail;
    }
    if (p->mode == IMAGE_PP_FIXED) {
        normalize_tile(canvas, (size_t)S, S, p, out->data);
    } else {
        for (int r = 0; r < gy; r++)
            for (int c = 0; c < gx; c++)
                normalize_tile(canvas + ((size_t)r * S * rw + (size_t)c * S) * 3, (size_t)rw, S, p,
                               out->data + (size_t)(r * gx + c) * tile_len);
        /* The overview: the whole original stretched to S×S (no letterbox). */
        if (img->w == S && img->h == S)
            memcpy(canvas, img->data, (size_t)S * S * 3);
        else
            resize_bilinear(img->data, img->w, img->h, canvas, S, S);
        normalize_tile(canvas, (size_t)S, S, p, out->data + (size_t)(n_tiles - 1) * tile_len);
    }
    out->size = S;
    out->grid_x = gx;
    out->grid_y = gy;
    out->n_tiles = n_tiles;
    free(canvas);
    free(scratch);
    return 0;

fail:
    free(canvas);
    free(scratch);
    image_tiles_free(out);
    return rc;
}

void image_tiles_free(image_tiles *t)
{
    if (!t)
        return;
    free(t->data);
    memset(t, 0, sizeof *t);
}
