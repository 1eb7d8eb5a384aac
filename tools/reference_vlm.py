#!/usr/bin/python3
"""reference_vlm.py — an independent end-to-end reference of one image question.

From an image file to greedy tokens, with nothing of the C engine: PIL decodes
the image, tools/shapes/preprocess.py preprocesses it (llama.cpp's §5.1 in
numpy), reference_vision.py encodes every tile, this file renders the SmolVLM
chat template and lays the image out in the token sequence (spec §5.3),
tools/bpe.py tokenizes the text, and reference.py's decoder runs it.

    reference_vlm.py --model T.gguf --mmproj M.gguf --tokenizer TOK.json \\
        --image IMG.png --prompt TEXT -n 32 -o OUT

writes OUT.greedy in reference.py's greedy format, where the prompt ids are
the whole fused sequence with 0xFFFFFFFF at every image-embedding position,
and OUT.steps: u32 n_gen, u32 n_vocab, then f32 [n_gen][n_vocab], the logits
each greedy token was chosen from.
"""
import argparse
import os
import struct
import sys

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "shapes"))
import bpe  # noqa: E402
import reference  # noqa: E402
from preprocess import letterbox, preprocess  # noqa: E402
from reference_vision import VisionReference  # noqa: E402

IMAGE_ROW = 0xFFFFFFFF


def lookup(tok, text):
    """mtmd's lookup_token: the first id whose piece (specials rendered) is text."""
    for i in range(len(tok["tokens"])):
        if bpe.piece(tok, i, special=True) == text.encode():
            return i
    raise ValueError("no token %r" % text)


def image_layout(tok, grid, n_out):
    """Spec §5.3 for idefics3: [token id or ('img', tile, i)]; tiles row-major, overview last."""
    cols, rows = grid
    seq = []
    for r in range(rows):
        for c in range(cols):
            seq += bpe.encode(tok, "<fake_token_around_image><row_%d_col_%d>" % (r + 1, c + 1))
            seq += [("img", r * cols + c, i) for i in range(n_out)]
        if r + 1 < rows:
            seq.append(lookup(tok, "\n"))
    seq += [lookup(tok, "\n\n"), lookup(tok, "<fake_token_around_image>"), lookup(tok, "<global-img>")]
    seq += [("img", rows * cols, i) for i in range(n_out)]
    seq.append(lookup(tok, "<fake_token_around_image>"))
    return seq


def preprocess_fixed(img, size, mean, std):
    """LLaVA (spec §6): one letterboxed tile on llama.cpp's pad colour,
    normalised with the file's mean/std in float32."""
    canvas, _ = letterbox(img, size, size, fill=(122, 116, 104))
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    v = canvas.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return [np.ascontiguousarray((v - m) / s)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()

    tok = bpe.load(a.tokenizer)
    vis = VisionReference(a.mmproj)
    img = np.asarray(Image.open(a.image).convert("RGB"), dtype=np.uint8)
    if vis.ptype == "idefics3":
        pre = preprocess(img, tile=vis.S, longest_edge=vis.longest_edge or vis.S)
        tiles = list(pre["tiles"]) + [pre["overview"]]
    else:
        tiles = preprocess_fixed(img, vis.S, vis.mean, vis.std)
    with torch.no_grad():
        embs = [vis.project(vis.vit(t)).to(torch.float32) for t in tiles]   # each [n_out, n_embd]
    n_out = embs[0].shape[0]

    # SmolVLM's template for one user message whose content starts with the image.
    seq = bpe.encode(tok, "<|im_start|>User:")
    seq += image_layout(tok, pre["grid"], n_out) if vis.ptype == "idefics3" else [("img", 0, i) for i in range(n_out)]
    seq += bpe.encode(tok, a.prompt + "<end_of_utterance>\nAssistant:")

    dec = reference.Decoder(a.model)
    rows = []
    for s in seq:
        if isinstance(s, tuple):
            rows.append(embs[s[1]][s[2]])
        else:
            rows.append(dec.embed([s])[0])
    with torch.no_grad():
        dec.reset()
        last = dec.forward(torch.stack(rows))[-1]
        gen, margin, steps = [], [], []
        for _ in range(a.n):
            top = torch.topk(last.double(), 2)
            t = int(torch.argmax(last))
            gen.append(t)
            margin.append(float(top.values[0] - top.values[1]))
            steps.append(last.to(torch.float32).numpy())
            last = dec.forward(dec.embed([t]))[-1]

    prompt_ids = [IMAGE_ROW if isinstance(s, tuple) else s for s in seq]
    reference.write_greedy(a.out + ".greedy", prompt_ids, gen, margin)
    lg = np.stack(steps).astype("<f4")
    with open(a.out + ".steps", "wb") as f:
        f.write(struct.pack("<II", lg.shape[0], lg.shape[1]))
        f.write(lg.tobytes())


if __name__ == "__main__":
    main()
