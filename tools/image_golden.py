#!/usr/bin/python3
"""image_golden.py — expected pixels of the image-decoder tests, from PIL.

Writes into --out (tests/fixtures/images at `make check` time):
  manifest.txt   one line per case: INPUT EXPECTED TOLERANCE
                 INPUT    @images/<path> (the shared test images) or @fixtures/<file>
                 EXPECTED <name>.rgb, or EFORMAT / EUNSUPPORTED for inputs that must fail
                 TOLERANCE largest allowed |difference| per sample (0 for PNG)
  <name>.rgb     u32 LE width, u32 LE height, then height*width*3 RGB bytes
  gen_*.jpg/png  inputs made here: CMYK, grayscale and progressive JPEGs, all 8
                 EXIF orientations, a PNG with an eXIf orientation, a PNG with alpha.

PIL (Debian's python3-pil) is the independent decoder. The decoder's documented
conversions are applied here on PIL's samples, never by calling Glimpse:
  16-bit samples keep their high byte; gray < 8 bits is scaled to 0..255;
  alpha (channel or tRNS) is composited onto white:
      out = (c*a + 255*(255-a) + 127) // 255
JPEG tolerance: PIL decodes with the same libjpeg-turbo and default settings
(islow DCT, fancy upsampling), so samples normally agree exactly; 2 levels are
allowed for the CMYK->RGB rounding and for a PIL built against another libjpeg.
"""
import argparse
import glob
import io
import os
import struct
import sys

import numpy as np
from PIL import Image, ImageOps

JPEG_TOL = 2


def png_header(data):
    """(bit depth, colour type) from IHDR; raw tRNS payload or None."""
    depth, ctype = data[24], data[25]
    trns, pos = None, 8
    while pos + 8 <= len(data):
        n, kind = struct.unpack('>I4s', data[pos:pos + 8])
        if kind == b'tRNS':
            trns = data[pos + 8:pos + 8 + n]
        if kind == b'IDAT':
            break
        pos += 12 + n
    return depth, ctype, trns


def jpeg_precision(path):
    """Sample precision from the first SOFn segment."""
    data = open(path, 'rb').read()
    pos = 2
    while pos + 4 < len(data) and data[pos] == 0xff:
        marker = data[pos + 1]
        n = struct.unpack('>H', data[pos + 2:pos + 4])[0]
        if 0xc0 <= marker <= 0xcf and marker not in (0xc4, 0xc8, 0xcc):
            return data[pos + 4]
        pos += 2 + n
    raise ValueError('no SOF in ' + path)


def onto_white(rgb, alpha):
    c = rgb.astype(np.uint32)
    a = alpha.astype(np.uint32)[..., None]
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def expected_png(path):
    data = open(path, 'rb').read()
    depth, ctype, trns = png_header(data)
    im = Image.open(io.BytesIO(data))
    im.load()
    if ctype == 3:  # palette, tRNS handled by PIL's own RGBA conversion
        rgba = np.array(im.convert('RGBA'))
        return onto_white(rgba[..., :3], rgba[..., 3])
    if ctype in (4, 6):  # gray+alpha / RGBA; PIL already keeps 16-bit high bytes
        a = np.array(im.convert('RGBA'))
        return onto_white(a[..., :3], a[..., 3])
    if ctype == 0:
        raw = np.array(im).astype(np.int64)
        # PIL gives 1-bit as bool, 2/4-bit already scaled to 0..255, 16-bit as is.
        if depth == 1:
            gray, key_scale = raw * 255, 255
        elif depth < 8:
            gray, key_scale = raw, 255 // ((1 << depth) - 1)
        elif depth == 8:
            gray, key_scale = raw, 1
        else:
            gray, key_scale = raw >> 8, None
        if trns is not None:
            key = struct.unpack('>H', trns[:2])[0]
            # compare with the sample at file precision
            match = (raw == key) if depth == 16 else (gray == key * key_scale)
            alpha = np.where(match, 0, 255)
        else:
            alpha = np.full(gray.shape, 255)
        g = gray.astype(np.uint8)
        return onto_white(np.stack([g, g, g], axis=-1), alpha)
    if ctype == 2:
        rgb = np.array(im.convert('RGB'))
        if trns is None:
            return rgb
        key = struct.unpack('>HHH', trns[:6])
        if depth == 16:
            # PIL only keeps high bytes; check that the key is unambiguous on them
            key = tuple(k >> 8 for k in key)
        match = np.all(rgb == np.array(key, dtype=np.uint8), axis=-1)
        return onto_white(rgb, np.where(match, 0, 255))
    raise ValueError('unknown colour type %d in %s' % (ctype, path))


def expected_jpeg(path):
    im = Image.open(path)
    im.load()
    im = ImageOps.exif_transpose(im)
    return np.array(im.convert('RGB'))


def synth(w, h):
    """A deterministic picture with detail in every channel."""
    y, x = np.mgrid[0:h, 0:w]
    r = (3 * x + 5 * y) & 255
    g = ((x * y) // 16 + x) & 255
    b = ((x * x + y * y) // 64) & 255
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def write_rgb(path, rgb):
    h, w = rgb.shape[:2]
    with open(path, 'wb') as f:
        f.write(struct.pack('<II', w, h))
        f.write(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--images', required=True, help='shared/testdata/images')
    ap.add_argument('--out', required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines = []

    def case(ref, name, rgb, tol):
        write_rgb(os.path.join(args.out, name + '.rgb'), rgb)
        lines.append('%s %s.rgb %d' % (ref, name, tol))

    for path in sorted(glob.glob(os.path.join(args.images, 'pngsuite', '*.png'))):
        base = os.path.basename(path)
        ref = '@images/pngsuite/' + base
        if base.startswith('x'):  # the suite's deliberately corrupt files
            lines.append('%s EFORMAT 0' % ref)
        else:
            case(ref, 'pngsuite_' + base[:-4], expected_png(path), 0)

    for sub in ('jpeg-turbo', 'photos'):
        for path in sorted(glob.glob(os.path.join(args.images, sub, '*'))):
            base = os.path.basename(path)
            ref = '@images/%s/%s' % (sub, base)
            head = open(path, 'rb').read(4)
            if head[:3] == b'\xff\xd8\xff':
                if jpeg_precision(path) != 8:  # monkey12.jpg: 12-bit samples
                    lines.append('%s EUNSUPPORTED 0' % ref)
                else:
                    case(ref, sub + '_' + base.replace('.', '_'), expected_jpeg(path), JPEG_TOL)
            elif head == b'\x89PNG':
                case(ref, sub + '_' + base.replace('.', '_'), expected_png(path), 0)

    # Generated inputs: what the shared images lack.
    pic = synth(48, 32)
    gen = os.path.join(args.out, 'gen_%s')

    def gen_jpeg(name, im, **kw):
        im.save(gen % name, 'JPEG', quality=95, **kw)
        case('@fixtures/images/gen_' + name, name.rsplit('.', 1)[0], expected_jpeg(gen % name),
             JPEG_TOL)

    # PIL writes CMYK JPEGs the Photoshop way: inverted inks plus an Adobe marker.
    gen_jpeg('cmyk.jpg', Image.fromarray(pic).convert('CMYK'))
    gen_jpeg('gray.jpg', Image.fromarray(pic).convert('L'))
    gen_jpeg('progressive.jpg', Image.fromarray(pic), progressive=True)
    gen_jpeg('subsampled.jpg', Image.fromarray(pic), subsampling=2)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        gen_jpeg('orient%d.jpg' % o, Image.fromarray(pic), exif=exif.tobytes())

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pic).save(gen % 'orient6.png', 'PNG', exif=exif.tobytes())
    case('@fixtures/images/gen_orient6.png', 'orient6_png', np.array(ImageOps.exif_transpose(
        Image.open(gen % 'orient6.png')).convert('RGB')), 0)

    alpha = ((np.arange(48)[None, :] * 5 + np.arange(32)[:, None] * 3) % 256).astype(np.uint8)
    Image.fromarray(np.dstack([pic, alpha]), 'RGBA').save(gen % 'alpha.png', 'PNG')
    case('@fixtures/images/gen_alpha.png', 'alpha_png', onto_white(pic, alpha), 0)

    with open(os.path.join(args.out, 'manifest.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('image_golden: %d cases in %s' % (len(lines), args.out), file=sys.stderr)


if __name__ == '__main__':
    main()
