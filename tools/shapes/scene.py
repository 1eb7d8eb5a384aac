"""Scenes of coloured shapes, their renderings, and the question/answer rules.

This module is the task definition of the demo model (issue 4): it samples a
scene (1-3 non-overlapping shapes on a light background), draws it with PIL in
one of several styles (aliased or anti-aliased, PNG or JPEG), and asks the five
kinds of questions with their exact wording and answers.

Everything random comes from a numpy Generator passed in, so a (seed, index)
pair always gives the same example.
"""
import io

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
# Nominal sRGB of each colour word; renderings jitter around these.
COLORS = {
    "red": (215, 35, 35),
    "green": (40, 160, 50),
    "blue": (35, 70, 215),
    "yellow": (240, 205, 20),
    "purple": (135, 45, 175),
    "orange": (245, 135, 25),
    "black": (25, 25, 25),
}
COLOR_NAMES = tuple(COLORS)
KINDS = ("count", "color", "shape", "yesno", "describe")
NUMBERS = ("one", "two", "three")

MIN_SIDE, MAX_SIDE = 48, 1024


# ---------------------------------------------------------------------------
# scene sampling

def _sample_size(rng):
    """Image (width, height): sides in [48, 1024], aspect ratio in [1:2, 2:1],
    log-uniform so that small and large images are equally common."""
    while True:
        w = int(round(np.exp(rng.uniform(np.log(MIN_SIDE), np.log(MAX_SIDE)))))
        a = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        h = int(round(w / a))
        if MIN_SIDE <= h <= MAX_SIDE and 0.5 <= w / h <= 2.0:
            return w, h


def _sample_attributes(rng, n, hard):
    """(shape, colour) pairs. Hard scenes make two shapes share a colour or a
    shape, the case the yes/no and describe questions get wrong most."""
    if hard and n >= 2:
        attrs = [(SHAPES[rng.integers(3)], COLOR_NAMES[rng.integers(7)]) for _ in range(n)]
        i, j = rng.choice(n, size=2, replace=False)
        if rng.random() < 0.5:   # same colour, different shape
            attrs[j] = (rng.choice([s for s in SHAPES if s != attrs[i][0]]), attrs[i][1])
        else:                    # same shape, different colour
            attrs[j] = (attrs[i][0], rng.choice([c for c in COLOR_NAMES if c != attrs[i][1]]))
        return [(str(s), str(c)) for s, c in attrs]
    return [(SHAPES[rng.integers(3)], COLOR_NAMES[rng.integers(7)]) for _ in range(n)]


def _place(rng, w, h, n):
    """n boxes (cx, cy, size) inside the image, pairwise disjoint with a gap,
    with centres far enough apart in x for an unambiguous left-to-right order.
    Returns None when this draw of sizes does not fit."""
    short = min(w, h)
    sizes = sorted((rng.uniform(0.10, 0.40) * short for _ in range(n)), reverse=True)
    gap = 0.03 * short
    min_dx = 0.04 * w
    boxes = []
    for s in sizes:
        for _ in range(100):
            cx = rng.uniform(s / 2 + 1, w - s / 2 - 1)
            cy = rng.uniform(s / 2 + 1, h - s / 2 - 1)
            ok = True
            for (bx, by, bs) in boxes:
                sep = (s + bs) / 2 + gap
                if (abs(cx - bx) < sep and abs(cy - by) < sep) or abs(cx - bx) < min_dx:
                    ok = False
                    break
            if ok:
                boxes.append((cx, cy, s))
                break
        else:
            return None
    return boxes


def _background(rng):
    """A plain light colour: white, off-white or a pale tint of any hue."""
    r = rng.random()
    if r < 0.25:
        return (255, 255, 255)
    if r < 0.5:
        v = rng.integers(225, 256)
        return tuple(int(np.clip(v + rng.integers(-12, 13), 200, 255)) for _ in range(3))
    hue = rng.uniform(0, 1)
    sat = rng.uniform(0.05, 0.30)
    val = rng.uniform(0.85, 1.0)
    rgb = _hsv_to_rgb(hue, sat, val)
    return tuple(int(round(255 * c)) for c in rgb)


def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def sample_scene(rng, hard_prob=0.5):
    """A random scene: dict with size (w, h), background, shapes (list of
    dicts shape/color/cx/cy/size/rgb), and rendering style."""
    while True:
        w, h = _sample_size(rng)
        n = int(rng.choice([1, 2, 3], p=[0.25, 0.35, 0.40]))
        boxes = _place(rng, w, h, n)
        if boxes is not None:
            break
    attrs = _sample_attributes(rng, n, rng.random() < hard_prob)
    shapes = []
    for (shape, color), (cx, cy, s) in zip(attrs, boxes):
        base = np.array(COLORS[color], dtype=np.float64)
        rgb = tuple(int(v) for v in np.clip(base + rng.integers(-18, 19, size=3), 0, 255))
        shapes.append(dict(shape=shape, color=color, cx=cx, cy=cy, size=s, rgb=rgb))
    return dict(
        w=w, h=h, background=_background(rng), shapes=shapes,
        antialias=bool(rng.random() < 0.5),
        fmt="jpeg" if rng.random() < 0.5 else "png",
        quality=int(rng.integers(70, 96)),
    )


# ---------------------------------------------------------------------------
# rendering

def _outline(shape, cx, cy, s, k=1.0, ox=0.0, oy=0.0):
    """PIL drawing coordinates of one shape, scaled by k about offset (ox, oy)."""
    x0, y0 = (cx - s / 2 - ox) * k, (cy - s / 2 - oy) * k
    x1, y1 = (cx + s / 2 - ox) * k, (cy + s / 2 - oy) * k
    if shape == "triangle":   # upright, apex at the top centre
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    return [x0, y0, x1, y1]


def _draw(draw, shape, xy, fill):
    if shape == "circle":
        draw.ellipse(xy, fill=fill)
    elif shape == "square":
        draw.rectangle(xy, fill=fill)
    else:
        draw.polygon(xy, fill=fill)


def draw_scene(scene):
    """The scene drawn as a PIL RGB image, before any file encoding."""
    img = Image.new("RGB", (scene["w"], scene["h"]), scene["background"])
    draw = ImageDraw.Draw(img)
    ss = 4  # anti-aliasing: draw a 4x supersampled mask of the shape's box, box-filter it down
    for sh in scene["shapes"]:
        if not scene["antialias"]:
            _draw(draw, sh["shape"], _outline(sh["shape"], sh["cx"], sh["cy"], sh["size"]), sh["rgb"])
            continue
        half = sh["size"] / 2 + 2
        bx0 = max(0, int(np.floor(sh["cx"] - half)))
        by0 = max(0, int(np.floor(sh["cy"] - half)))
        bx1 = min(scene["w"], int(np.ceil(sh["cx"] + half)))
        by1 = min(scene["h"], int(np.ceil(sh["cy"] + half)))
        mask = Image.new("L", ((bx1 - bx0) * ss, (by1 - by0) * ss), 0)
        _draw(ImageDraw.Draw(mask), sh["shape"],
              _outline(sh["shape"], sh["cx"], sh["cy"], sh["size"], ss, bx0, by0), 255)
        mask = mask.resize((bx1 - bx0, by1 - by0), Image.BOX)
        img.paste(sh["rgb"], (bx0, by0, bx1, by1), mask)
    return img


def render(scene):
    """The scene as an RGB uint8 array [h, w, 3], after its PNG/JPEG round trip
    (PNG is lossless, so it is skipped)."""
    img = draw_scene(scene)
    if scene["fmt"] == "png":
        return np.asarray(img)
    return np.asarray(decode(encode(img, scene)))


def encode(img, scene):
    """File bytes of a rendered scene in its format."""
    buf = io.BytesIO()
    if scene["fmt"] == "jpeg":
        img.save(buf, format="JPEG", quality=scene["quality"])
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode(data):
    return Image.open(io.BytesIO(data)).convert("RGB")


def render_file(scene):
    """(file bytes, extension) of the scene as it is written for evaluation."""
    return encode(draw_scene(scene), scene), ("jpg" if scene["fmt"] == "jpeg" else "png")


# The per-patch labels of label_maps, in its order, with their numbers of
# classes (background included): shape, colour, left-to-right rank.
AUX_CLASSES = (("shape", 1 + len(SHAPES)), ("color", 1 + len(COLOR_NAMES)), ("rank", 1 + len(NUMBERS)))


def label_maps(scene, xs, ys):
    """Shape class (0 background, 1+index in SHAPES), colour class (0
    background, 1+index in COLOR_NAMES) and left-to-right rank (0 background,
    1 + place of the shape's centre in describe's order) at original-image
    points (xs, ys), arrays of equal shape. Used for the dense auxiliary loss."""
    shp = np.zeros(xs.shape, dtype=np.int64)
    col = np.zeros(xs.shape, dtype=np.int64)
    rank = np.zeros(xs.shape, dtype=np.int64)
    order = sorted(scene["shapes"], key=lambda sh: sh["cx"])
    for sh in scene["shapes"]:
        s, cx, cy = sh["size"], sh["cx"], sh["cy"]
        u, v = xs - cx, ys - cy   # v grows downwards
        if sh["shape"] == "circle":
            inside = u * u + v * v <= (s / 2) ** 2
        elif sh["shape"] == "square":
            inside = (np.abs(u) <= s / 2) & (np.abs(v) <= s / 2)
        else:   # apex (0, -s/2), base corners (+-s/2, s/2): |u| <= (v + s/2) / 2
            inside = (v <= s / 2) & (np.abs(u) <= (v + s / 2) / 2)
        shp[inside] = 1 + SHAPES.index(sh["shape"])
        col[inside] = 1 + COLOR_NAMES.index(sh["color"])
        rank[inside] = 1 + order.index(sh)
    return shp, col, rank


# ---------------------------------------------------------------------------
# questions and answers

def _phrase(sh):
    return "a %s %s" % (sh["color"], sh["shape"])


def describe(scene):
    """Shapes left to right by centre, joined as 'a, b and c'."""
    parts = [_phrase(sh) for sh in sorted(scene["shapes"], key=lambda sh: sh["cx"])]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def ask(scene, kind, rng):
    """(question, answer) of the given kind, or None when the scene does not
    allow it (no shape type / colour occurring exactly once)."""
    shapes = scene["shapes"]
    if kind == "count":
        return "How many shapes are there?", NUMBERS[len(shapes) - 1]
    if kind == "color":
        unique = [s for s in SHAPES if sum(sh["shape"] == s for sh in shapes) == 1]
        if not unique:
            return None
        s = unique[rng.integers(len(unique))]
        sh = next(sh for sh in shapes if sh["shape"] == s)
        return "What color is the %s?" % s, sh["color"]
    if kind == "shape":
        unique = [c for c in COLOR_NAMES if sum(sh["color"] == c for sh in shapes) == 1]
        if not unique:
            return None
        c = unique[rng.integers(len(unique))]
        sh = next(sh for sh in shapes if sh["color"] == c)
        return "What shape is the %s one?" % c, sh["shape"]
    if kind == "yesno":
        present = {(sh["color"], sh["shape"]) for sh in shapes}
        if rng.random() < 0.5:
            c, s = sorted(present)[rng.integers(len(present))]
            return "Is there a %s %s?" % (c, s), "yes"
        # "no": mostly near misses (a present colour with another shape, or a
        # present shape with another colour), sometimes anything absent.
        colors = sorted({c for c, _ in present})
        kinds = sorted({s for _, s in present})
        absent = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in present]
        near = [(c, s) for (c, s) in absent if c in colors or s in kinds]
        pool = near if (near and rng.random() < 0.8) else absent
        c, s = pool[rng.integers(len(pool))]
        return "Is there a %s %s?" % (c, s), "no"
    if kind == "describe":
        return "Describe the image.", describe(scene)
    raise ValueError("unknown question kind %r" % kind)


def ask_any(scene, rng, weights=None):
    """(kind, question, answer) with the kind drawn from weights (dict kind ->
    weight, default uniform), redrawn when the scene does not allow it."""
    kinds = list(KINDS)
    p = np.array([1.0 if weights is None else weights[k] for k in kinds])
    p /= p.sum()
    while True:
        kind = kinds[rng.choice(len(kinds), p=p)]
        qa = ask(scene, kind, rng)
        if qa is not None:
            return (kind,) + qa
