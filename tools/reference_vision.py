#!/usr/bin/env python3
"""PyTorch reference of an mmproj GGUF's vision tower and projector.

Independent of the C engine: it reads the file with tools/gguf_io.py and
follows /work/shared/docs/gguf-vlm-spec.md §4 (idefics3: SigLIP + pixel
shuffle + linear) and §6 (mlp: CLIP as llama.cpp runs it — class token
appended last, n_layer-1 layers, rows 1..n_pos-1 gathered, two-layer MLP).

It computes in float64 but reproduces the roundings llama.cpp's CPU backend
makes on purpose, since the engine copies them: the patch convolution's im2col
is F16 (pixels and kernel rounded to half) and GELU / quick-GELU are fp16
lookup tables (input rounded to half, result rounded to half).

Usage:
  reference_vision.py MMPROJ --tiles N --seed S --out PREFIX
writes
  PREFIX.tiles  N tiles, planar [3][S][S] float32 (random normalised pixels)
  PREFIX.vit    N × [n_pos][n_embd] float32: the ViT output (after post-LN)
  PREFIX.emb    N × [n_tokens_out][n_embd_text] float32: the projector output
each file starting with a header of int32: magic 0x4C494D47 ("GMIL"), the
number of dims D, then D sizes (outermost first), then the float32 data.
"""
import argparse
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_io import GGUFReader  # noqa: E402

MAGIC = 0x4C494D47


def write_array(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    with open(path, "wb") as f:
        f.write(struct.pack("<ii", MAGIC, arr.ndim))
        f.write(struct.pack("<%di" % arr.ndim, *arr.shape))
        f.write(arr.tobytes())


def half(t):
    return t.to(torch.float16).to(torch.float64)


def gelu_fp16_table(x):
    xh = half(x)
    y = half(0.5 * xh * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * xh * (1.0 + 0.044715 * xh * xh))))
    y = torch.where(x <= -10.0, torch.zeros_like(y), y)
    return torch.where(x >= 10.0, x, y)


def gelu_quick_fp16_table(x):
    xh = half(x)
    return half(xh * torch.sigmoid(1.702 * xh))


def silu(x):
    return x * torch.sigmoid(x)


class VisionReference:
    def __init__(self, path):
        r = GGUFReader(path)
        kv = r.kv
        self.t = {name: t for name, t in r.tensors.items()}
        ptype = kv.get("clip.projector_type", kv.get("clip.vision.projector_type"))
        if ptype not in ("idefics3", "mlp"):
            raise ValueError("unsupported projector type %r" % ptype)
        self.ptype = ptype
        self.S = kv["clip.vision.image_size"]
        self.p = kv["clip.vision.patch_size"]
        self.C = kv["clip.vision.embedding_length"]
        self.F = kv["clip.vision.feed_forward_length"]
        self.n_layer = kv["clip.vision.block_count"]
        self.n_head = kv["clip.vision.attention.head_count"]
        self.eps = kv["clip.vision.attention.layer_norm_epsilon"]
        self.s = kv.get("clip.vision.projector.scale_factor", 1)
        self.longest_edge = kv.get("clip.vision.preproc_image_size", 0)
        self.mean = kv["clip.vision.image_mean"]
        self.std = kv["clip.vision.image_std"]
        use_gelu = kv.get("clip.use_gelu", False)
        use_silu = kv.get("clip.use_silu", False)
        self.act = gelu_fp16_table if use_gelu else silu if use_silu else gelu_quick_fp16_table
        self.side = self.S // self.p
        self.n_patches = self.side * self.side
        self.has_cls = ptype == "mlp"
        self.n_pos = self.n_patches + (1 if self.has_cls else 0)
        self.n_run = self.n_layer - 1 if ptype == "mlp" else self.n_layer

    def w(self, name):
        if name not in self.t:
            return None
        return torch.from_numpy(self.t[name].array().astype(np.float64))

    def ln(self, x, prefix):
        w, b = self.w(prefix + ".weight"), self.w(prefix + ".bias")
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + self.eps) * w
        return y + b if b is not None else y

    def lin(self, x, prefix):
        y = x @ self.w(prefix + ".weight").T
        b = self.w(prefix + ".bias")
        return y + b if b is not None else y

    def vit(self, tile):
        """tile: [3][S][S] -> [n_pos][C]"""
        p, C = self.p, self.C
        img = half(torch.from_numpy(tile.astype(np.float64)))
        kernel = half(self.w("v.patch_embd.weight")).reshape(C, 3 * p * p)  # [C][c][ky][kx]
        patches = img.reshape(3, self.side, p, self.side, p).permute(1, 3, 0, 2, 4).reshape(self.n_patches, 3 * p * p)
        x = patches @ kernel.T
        b = self.w("v.patch_embd.bias")
        if b is not None:
            x = x + b
        if self.has_cls:
            x = torch.cat([x, self.w("v.class_embd").reshape(1, C)], 0)
        x = x + self.w("v.position_embd.weight")[: self.n_pos]
        if "v.pre_ln.weight" in self.t:
            x = self.ln(x, "v.pre_ln")
        H, d = self.n_head, C // self.n_head
        for il in range(self.n_run):
            pre = "v.blk.%d." % il
            h = self.ln(x, pre + "ln1")
            q = self.lin(h, pre + "attn_q").reshape(-1, H, d).transpose(0, 1)
            k = self.lin(h, pre + "attn_k").reshape(-1, H, d).transpose(0, 1)
            v = self.lin(h, pre + "attn_v").reshape(-1, H, d).transpose(0, 1)
            a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), -1) @ v
            x = x + self.lin(a.transpose(0, 1).reshape(-1, C), pre + "attn_out")
            h = self.ln(x, pre + "ln2")
            up, down = pre + "ffn_up", pre + "ffn_down"
            if self.t[down + ".weight"].ne[0] == C:  # legacy swapped names (clip.cpp's rule)
                up, down = down, up
            x = x + self.lin(self.act(self.lin(h, up)), down)
        if "v.post_ln.weight" in self.t:
            x = self.ln(x, "v.post_ln")
        return x

    def project(self, x):
        if self.ptype == "idefics3":
            s, side, C = self.s, self.side, self.C
            o = side // s
            # f[Y*o+X][c + C*(dx + s*dy)] = x[(s*Y+dy)*side + s*X+dx][c]
            f = x.reshape(o, s, o, s, C).permute(0, 2, 1, 3, 4).reshape(o * o, s * s * C)
            return f @ self.w("mm.model.fc.weight").T
        h = gelu_fp16_table(self.lin(x[1:], "mm.0"))
        return self.lin(h, "mm.2")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mmproj")
    ap.add_argument("--tiles", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ref = VisionReference(a.mmproj)
    rng = np.random.default_rng(a.seed)
    tiles = rng.uniform(-1.0, 1.0, size=(a.tiles, 3, ref.S, ref.S)).astype(np.float32)
    vits, embs = [], []
    with torch.no_grad():
        for t in tiles:
            x = ref.vit(t)
            vits.append(x.numpy())
            embs.append(ref.project(x).numpy())
    write_array(a.out + ".tiles", tiles)
    write_array(a.out + ".vit", np.stack(vits))
    write_array(a.out + ".emb", np.stack(embs))


if __name__ == "__main__":
    main()
