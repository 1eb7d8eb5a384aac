#!/usr/bin/python3
"""make_images.py DIR — test pictures for the server's integration tests:
server-shapes.png and server-shapes.jpg (the same 96x64 drawing of shapes)
and server-big.png (400x300, above the tests' --max-image-pixels 100000)."""
import os
import sys

from PIL import Image, ImageDraw


def shapes(w, h):
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((8, 8, 40, 40), fill=(220, 30, 30))
    d.rectangle((52, 12, 88, 48), fill=(30, 60, 220))
    d.polygon([(20, 60), (36, 44), (52, 60)], fill=(30, 180, 60))
    return im


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    im = shapes(96, 64)
    im.save(os.path.join(out, "server-shapes.png"))
    im.save(os.path.join(out, "server-shapes.jpg"), quality=90)
    shapes(400, 300).save(os.path.join(out, "server-big.png"))


if __name__ == "__main__":
    main()
