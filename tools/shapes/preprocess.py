"""llama.cpp's idefics3 image preprocessing in numpy (gguf-vlm-spec.md section 5.1).

The model is trained on exactly what inference feeds it: a letterboxed
bicubic refined image cut into S x S tiles, plus a bilinear S x S overview of
the original, normalised with mean = std = 0.5. The arithmetic follows
llama.cpp's float32 order of operations so that pixels agree (up to the
compiler contracting a multiply-add into an FMA, which can flip a rounding).
"""
import numpy as np

F32 = np.float32


def refined_size(w, h, tile, longest_edge):
    """(w', h'): the image scaled so its longest edge is longest_edge, each
    side rounded up to a multiple of tile, in llama.cpp's float32 arithmetic."""
    scale = min(F32(longest_edge) / F32(w), F32(longest_edge) / F32(h))
    wb = int(np.ceil(F32(F32(w) * scale) / F32(tile))) * tile
    hb = int(np.ceil(F32(F32(h) * scale) / F32(tile))) * tile
    return wb, hb


def _cubic(p0, p1, p2, p3, t):
    """llama.cpp's cubic through p[-1..2] at fraction t: coefficients in
    double, stored as float, polynomial evaluated in float."""
    d0 = (p0 - p1).astype(np.float64)
    d2 = (p2 - p1).astype(np.float64)
    d3 = (p3 - p1).astype(np.float64)
    a1 = (-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3).astype(F32)
    a2 = (1.0 / 2 * d0 + 1.0 / 2 * d2).astype(F32)
    a3 = (-1.0 / 6 * d0 - 1.0 / 2 * d2 + 1.0 / 6 * d3).astype(F32)
    return p1 + a1 * t + a2 * t * t + a3 * t * t * t


def resize_bicubic(img, tw, th):
    """img uint8 [h, w, 3] -> uint8 [th, tw, 3] (no half-pixel offset, clamped
    edges, rounded and clamped result)."""
    ny, nx = img.shape[:2]
    tx = F32(nx) / F32(tw)
    ty = F32(ny) / F32(th)
    xs = tx * np.arange(tw, dtype=F32)
    ys = ty * np.arange(th, dtype=F32)
    x = xs.astype(np.int64)
    y = ys.astype(np.int64)
    dx = (xs - x.astype(F32)).astype(F32)[None, :, None]   # [1, tw, 1]
    dy = (ys - y.astype(F32)).astype(F32)[:, None, None]   # [th, 1, 1]
    off = np.arange(-1, 3)
    cols = np.clip(x[:, None] + off, 0, nx - 1)            # [tw, 4]
    rows = np.clip(y[:, None] + off, 0, ny - 1)            # [th, 4]
    p = img.astype(F32)
    c = []
    for jj in range(4):
        line = p[rows[:, jj]]                              # [th, nx, 3]
        c.append(_cubic(line[:, cols[:, 0]], line[:, cols[:, 1]],
                        line[:, cols[:, 2]], line[:, cols[:, 3]], dx))   # [th, tw, 3]
    v = _cubic(c[0], c[1], c[2], c[3], dy).astype(np.float64)
    return np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8)   # std::round, v >= 0 after clamp


def resize_bilinear(img, tw, th):
    """img uint8 [h, w, 3] -> uint8 [th, tw, 3], corners aligned, truncated."""
    ny, nx = img.shape[:2]
    xr = F32(nx - 1) / F32(tw - 1) if tw > 1 else F32(0)
    yr = F32(ny - 1) / F32(th - 1) if th > 1 else F32(0)
    px = np.arange(tw, dtype=F32) * xr
    py = np.arange(th, dtype=F32) * yr
    x0 = np.minimum(px.astype(np.int64), nx - 1)
    y0 = np.minimum(py.astype(np.int64), ny - 1)
    x1 = np.minimum(x0 + 1, nx - 1)
    y1 = np.minimum(y0 + 1, ny - 1)
    xf = (px - x0.astype(F32))[None, :, None]
    yf = (py - y0.astype(F32))[:, None, None]
    p = img.astype(F32)
    top = p[y0][:, x0] + (p[y0][:, x1] - p[y0][:, x0]) * xf
    bot = p[y1][:, x0] + (p[y1][:, x1] - p[y1][:, x0]) * xf
    return (top + (bot - top) * yf).astype(np.uint8)


def letterbox(img, tw, th, fill=(0, 0, 0)):
    """Aspect-preserving bicubic resize into a tw x th canvas of colour fill
    (black for idefics3), centred (PAD_CEIL). Returns (canvas, (ox, oy, nw, nh))."""
    h, w = img.shape[:2]
    if (w, h) == (tw, th):
        return img.copy(), (0, 0, w, h)
    scale = min(F32(tw) / F32(w), F32(th) / F32(h))
    nw = min(int(np.ceil(F32(F32(w) * scale))), tw)
    nh = min(int(np.ceil(F32(F32(h) * scale))), th)
    canvas = np.empty((th, tw, 3), dtype=np.uint8)
    canvas[:] = np.asarray(fill, dtype=np.uint8)
    ox, oy = (tw - nw) // 2, (th - nh) // 2
    canvas[oy:oy + nh, ox:ox + nw] = resize_bicubic(img, nw, nh)
    return canvas, (ox, oy, nw, nh)


def normalize(u8):
    """uint8 [H, W, 3] -> float32 [3, H, W] planes, (u/255 - 0.5)/0.5."""
    v = (u8.astype(F32) / F32(255.0) - F32(0.5)) / F32(0.5)
    return np.ascontiguousarray(v.transpose(2, 0, 1))


def preprocess(img, tile=128, longest_edge=128):
    """img uint8 [h, w, 3] -> dict:
    tiles    float32 [rows*cols, 3, tile, tile], row-major;
    overview float32 [3, tile, tile];
    grid     (cols, rows);
    box      (ox, oy, nw, nh) of the image inside the refined canvas."""
    h, w = img.shape[:2]
    wb, hb = refined_size(w, h, tile, longest_edge)
    if (w, h) == (tile, tile):
        ov = img.copy()
    else:
        ov = resize_bilinear(img, tile, tile)
    refined, box = letterbox(img, wb, hb)
    cols, rows = wb // tile, hb // tile
    tiles = [normalize(refined[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile])
             for r in range(rows) for c in range(cols)]
    return dict(tiles=np.stack(tiles), overview=normalize(ov), grid=(cols, rows), box=box)


def patch_points(w, h, pre, tile, patch, sub):
    """Original-image coordinates of sub x sub points per patch (at sub-pixel
    centres) of the first tile and of the overview, for the auxiliary labels:
    two pairs (xs, ys) of arrays [g*sub, g*sub], g = tile/patch; points in the
    letterbox padding are put far outside the image. Only meaningful for a
    1x1 grid."""
    n = tile // patch * sub
    c = (np.arange(n) + 0.5) * (patch / sub)
    cx, cy = np.meshgrid(c, c)                    # [n, n], y rows
    ox, oy, nw, nh = pre["box"]
    tx = (cx - ox) * w / nw
    ty = (cy - oy) * h / nh
    outside = (cx < ox) | (cx >= ox + nw) | (cy < oy) | (cy >= oy + nh)
    tx = np.where(outside, -1e9, tx)
    ty = np.where(outside, -1e9, ty)
    vx = cx * (w - 1) / (tile - 1)
    vy = cy * (h - 1) / (tile - 1)
    return (tx, ty), (vx, vy)
