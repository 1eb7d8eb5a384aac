#!/usr/bin/python3
"""make_model.py — writes random-weight GGUF models in llama.cpp's exact layout.

Text model (general.architecture = llama, spec §2, §3, §7):
    make_model.py -o tiny.gguf --n-embd 256 --n-layer 2 --n-head 4 --n-head-kv 2 \\
        --n-ff 512 --dtype q8_0 [--bias] [--untied] [--tokenizer tok.json] [--vocab-size N]
    make_model.py -o smol.gguf --preset smolvlm-256m --dtype q8_0
    make_model.py -o vocab.gguf --vocab-only --tokenizer tok.json
Vision projector (general.architecture = clip, spec §4 idefics3 / §6 mlp), alone
with --no-text or next to the text model:
    make_model.py -o tiny.gguf ... --mmproj-out tiny-mmproj.gguf --projector idefics3 \\
        --image-size 64 --patch-size 16 --v-embd 32 --v-layer 2 --v-head 2 --v-ff 64 --scale-factor 2

Weights are normal(0, 1/fan_in) so that activations stay O(1) through many
layers; norm weights are 1 + N(0, 0.1²), biases N(0, 0.1²). The token
embedding is N(0, 0.05²) (--embd-scale): with tied output a unit-variance
embedding dominates the residual stream, every position's logits pick its own
input token and greedy generation repeats one token forever. output_norm's
weights are scaled by 1/embd_scale so the logits keep a spread of about
sqrt(n_embd) (std ~16 for n_embd 256). Q/K rows are written as random
rows directly in GGUF order (already "permuted", spec §2.3), which is what a
reader applying normal (adjacent-pair) RoPE expects.

--dtype applies to every matrix (norms, biases stay f32, as in converted
files); a K-quant that does not divide a matrix's ne0 falls back like
llama-quant.cpp's tensor_type_fallback (q4_k->q5_0, q5_k->q5_1, q6_k->q8_0,
then f16). The tokenizer is --tokenizer's JSON (team-notes format) or, without
one, a byte-level BPE trained in-process (tools/bpe.py) on a built-in text:
256 byte tokens, SmolVLM's special tokens and a few hundred merges.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io  # noqa: E402

# spec §7
PRESETS = {
    "smolvlm-256m": dict(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536,
                         rope_base=100000.0, eps=1e-5, ctx=8192, vocab_size=49280,
                         v_embd=768, v_layer=12, v_head=12, v_ff=3072, image_size=512,
                         patch_size=16, scale_factor=4, longest_edge=2048, v_eps=1e-6),
    "smolvlm-500m": dict(n_embd=960, n_layer=32, n_head=15, n_head_kv=5, n_ff=2560,
                         rope_base=100000.0, eps=1e-5, ctx=8192, vocab_size=49280,
                         v_embd=768, v_layer=12, v_head=12, v_ff=3072, image_size=512,
                         patch_size=16, scale_factor=4, longest_edge=2048, v_eps=1e-6),
}

# llama-quant.cpp: tensor_type_fallback, for rows the K-quant block does not divide.
KQUANT_FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}

MATRIX_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
                "q4_k", "q5_k", "q6_k"]

# Training text of the fallback tokenizer: short, fixed, with the words of the
# image-description prompts the tests use.
BUILTIN_TEXT = """\
A small red circle sits on the left of the picture, and a large blue square is on the right.
Describe this image. What shapes do you see? How many circles are there in the image?
There are two green triangles and one yellow star on a white background.
The image shows a black line from the top left corner to the bottom right corner.
User: What colour is the square?
Assistant: The square is blue.
User: Can you count the shapes in this picture, please?
Assistant: I can see three shapes: a circle, a square and a triangle.
The quick brown fox jumps over the lazy dog. 0123456789 10 20 30 100 2024.
It's a picture of the sea; the sky is grey and there's a boat near the shore.
Images, pictures and photos: the model describes what it sees in a few words.
"""


def fallback_tokenizer():
    """Tokenizer dict trained on BUILTIN_TEXT by H3's bpe.train (specials first)."""
    import bpe
    return bpe.train([BUILTIN_TEXT] * 4, vocab_size=len(bpe.SMOLVLM_SPECIALS) + 256 + 300)


def load_tokenizer(path):
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if path:
        print(f"make_model: {path} not found, using the built-in tokenizer", file=sys.stderr)
    return fallback_tokenizer()


def pick_type(dtype, ne0):
    """The type a matrix of row length ne0 gets for the requested dtype."""
    while ne0 % gguf_io.TENSOR_TYPES[dtype][1]:
        dtype = KQUANT_FALLBACK.get(dtype, "f16")
    return dtype


class Weights:
    """Random tensor source plus the writer they go to."""

    def __init__(self, w, seed, dtype):
        self.w, self.rng, self.dtype = w, np.random.default_rng(seed), dtype

    def matrix(self, name, n_out, n_in, dtype=None, scale=None):
        """A Linear weight [n_out, n_in] (ne = [n_in, n_out]), N(0, 1/n_in) unless scale."""
        s = 1.0 / np.sqrt(n_in) if scale is None else scale
        x = self.rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(s)
        self.w.add_tensor(name, x, pick_type(dtype or self.dtype, n_in))

    def norm(self, name, n, gain=1.0):
        x = (1 + 0.1 * self.rng.standard_normal(n, dtype=np.float32)) * np.float32(gain)
        self.w.add_tensor(name, x, "f32")

    def bias(self, name, n):
        self.w.add_tensor(name, 0.1 * self.rng.standard_normal(n, dtype=np.float32), "f32")

    def raw(self, name, shape, scale, dtype="f32"):
        self.w.add_tensor(name, scale * self.rng.standard_normal(shape, dtype=np.float32), dtype)


# ---------------------------------------------------------------------------
# text model (spec §2)

def write_text(a, tok):
    w = gguf_io.GGUFWriter(a.out)
    w.add_str("general.architecture", "llama")
    w.add_str("general.name", a.name)
    if not a.vocab_only:
        head_dim = a.n_embd // a.n_head
        p = "llama."
        w.add_u32(p + "context_length", a.ctx)
        w.add_u32(p + "embedding_length", a.n_embd)
        w.add_u32(p + "block_count", a.n_layer)
        w.add_u32(p + "feed_forward_length", a.n_ff)
        w.add_u32(p + "attention.head_count", a.n_head)
        w.add_u32(p + "attention.head_count_kv", a.n_head_kv)
        w.add_f32(p + "attention.layer_norm_rms_epsilon", a.eps)
        w.add_f32(p + "rope.freq_base", a.rope_base)
        w.add_u32(p + "rope.dimension_count", head_dim)
        w.add_u32(p + "attention.key_length", head_dim)
        w.add_u32(p + "attention.value_length", head_dim)
    gguf_io.add_tokenizer(w, tok, a.vocab_size)
    if a.vocab_only:
        w.write()
        return
    n_vocab = max(len(tok["tokens"]), a.vocab_size or 0)
    w.add_u32("llama.vocab_size", n_vocab)
    t = Weights(w, a.seed, a.dtype)
    d = a.n_embd // a.n_head
    t.matrix("token_embd.weight", n_vocab, a.n_embd, a.dtype_embd, scale=a.embd_scale)
    for i in range(a.n_layer):
        b = f"blk.{i}."
        t.norm(b + "attn_norm.weight", a.n_embd)
        t.matrix(b + "attn_q.weight", a.n_head * d, a.n_embd)
        t.matrix(b + "attn_k.weight", a.n_head_kv * d, a.n_embd)
        t.matrix(b + "attn_v.weight", a.n_head_kv * d, a.n_embd)
        t.matrix(b + "attn_output.weight", a.n_embd, a.n_head * d)
        if a.bias:
            t.bias(b + "attn_q.bias", a.n_head * d)
            t.bias(b + "attn_k.bias", a.n_head_kv * d)
            t.bias(b + "attn_v.bias", a.n_head_kv * d)
            t.bias(b + "attn_output.bias", a.n_embd)
        t.norm(b + "ffn_norm.weight", a.n_embd)
        t.matrix(b + "ffn_gate.weight", a.n_ff, a.n_embd)
        t.matrix(b + "ffn_up.weight", a.n_ff, a.n_embd)
        t.matrix(b + "ffn_down.weight", a.n_embd, a.n_ff)
    t.norm("output_norm.weight", a.n_embd, gain=1.0 / a.embd_scale)
    if a.untied:
        t.matrix("output.weight", n_vocab, a.n_embd, a.dtype_embd)
    w.write()


# ---------------------------------------------------------------------------
# vision projector (spec §4 idefics3, §6 mlp)

def write_mmproj(a, n_embd_text):
    w = gguf_io.GGUFWriter(a.mmproj_out)
    C, P, S = a.v_embd, a.patch_size, a.image_size
    n_patch = (S // P) ** 2
    w.add_str("general.architecture", "clip")
    w.add_str("general.type", "mmproj")
    w.add_str("general.name", a.name + "-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_str("clip.projector_type", a.projector)
    w.add_u32("clip.vision.image_size", S)
    w.add_u32("clip.vision.patch_size", P)
    w.add_u32("clip.vision.embedding_length", C)
    w.add_u32("clip.vision.feed_forward_length", a.v_ff)
    w.add_u32("clip.vision.block_count", a.v_layer)
    w.add_u32("clip.vision.attention.head_count", a.v_head)
    w.add_f32("clip.vision.attention.layer_norm_epsilon", a.v_eps)
    w.add_u32("clip.vision.projection_dim", n_embd_text)
    if a.projector == "idefics3":
        w.add_arr("clip.vision.image_mean", "f32", [0.5, 0.5, 0.5])
        w.add_arr("clip.vision.image_std", "f32", [0.5, 0.5, 0.5])
        w.add_u32("clip.vision.projector.scale_factor", a.scale_factor)
        if a.longest_edge:
            w.add_u32("clip.vision.preproc_image_size", a.longest_edge)
        w.add_bool("clip.use_gelu", True)
    else:
        w.add_arr("clip.vision.image_mean", "f32", [0.48145466, 0.4578275, 0.40821073])
        w.add_arr("clip.vision.image_std", "f32", [0.26862954, 0.26130258, 0.27577711])
        w.add_bool("clip.has_llava_projector", True)
        w.add_bool("clip.use_gelu", False)

    t = Weights(w, a.seed + 1, a.mmproj_dtype)
    fan_patch = 3 * P * P
    if a.projector == "mlp":
        t.raw("v.class_embd", (C,), 1.0)
        t.raw("v.patch_embd.weight", (C, 3, P, P), 1 / np.sqrt(fan_patch), "f16")
        t.raw("v.position_embd.weight", (n_patch + 1, C), 1.0)
        t.norm("v.pre_ln.weight", C)
        t.bias("v.pre_ln.bias", C)
    else:
        t.raw("v.patch_embd.weight", (C, 3, P, P), 1 / np.sqrt(fan_patch))
        t.bias("v.patch_embd.bias", C)
        t.raw("v.position_embd.weight", (n_patch, C), 1.0)
    for i in range(a.v_layer):
        b = f"v.blk.{i}."
        t.norm(b + "ln1.weight", C)
        t.bias(b + "ln1.bias", C)
        for m in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t.matrix(b + m + ".weight", C, C)
            t.bias(b + m + ".bias", C)
        t.norm(b + "ln2.weight", C)
        t.bias(b + "ln2.bias", C)
        # LLaVA files carry the legacy swap: fc1 under "ffn_down", fc2 under
        # "ffn_up" (spec §6); readers pick the matrices by shape (§4.2).
        up, down = ("ffn_down", "ffn_up") if a.projector == "mlp" else ("ffn_up", "ffn_down")
        t.matrix(b + up + ".weight", a.v_ff, C)
        t.bias(b + up + ".bias", a.v_ff)
        t.matrix(b + down + ".weight", C, a.v_ff)
        t.bias(b + down + ".bias", C)
    if a.projector == "idefics3":
        t.norm("v.post_ln.weight", C)
        t.bias("v.post_ln.bias", C)
        n_in = C * a.scale_factor ** 2
        t.matrix("mm.model.fc.weight", n_embd_text, n_in)
    else:
        t.matrix("mm.0.weight", n_embd_text, C)
        t.bias("mm.0.bias", n_embd_text)
        t.matrix("mm.2.weight", n_embd_text, n_embd_text)
        t.bias("mm.2.bias", n_embd_text)
    w.write()


# ---------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", help="text model GGUF to write")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="real SmolVLM shapes (spec §7)")
    ap.add_argument("--name", default="glimpse-random")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-head-kv", type=int, default=None, help="default: n_head")
    ap.add_argument("--n-ff", type=int, default=512)
    ap.add_argument("--rope-base", type=float, default=10000.0)
    ap.add_argument("--eps", type=float, default=1e-5)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--dtype", choices=MATRIX_TYPES, default="f32", help="type of every matrix")
    ap.add_argument("--dtype-embd", choices=MATRIX_TYPES, default=None,
                    help="type of token_embd/output (default: --dtype)")
    ap.add_argument("--embd-scale", type=float, default=0.05, help="std of token_embd entries")
    ap.add_argument("--bias", action="store_true", help="q/k/v/o biases (Qwen2-style)")
    ap.add_argument("--untied", action="store_true", help="write output.weight (default: tied)")
    ap.add_argument("--tokenizer", help="tokenizer JSON (team-notes format)")
    ap.add_argument("--vocab-size", type=int, default=None, help="pad the vocabulary to N tokens")
    ap.add_argument("--vocab-only", action="store_true", help="only the tokenizer keys")
    ap.add_argument("--no-text", action="store_true", help="write only the mmproj")
    ap.add_argument("--mmproj-out", help="also write a vision projector GGUF here")
    ap.add_argument("--projector", choices=["idefics3", "mlp"], default="idefics3")
    ap.add_argument("--mmproj-dtype", choices=["f32", "f16", "bf16", "q8_0"], default="f32",
                    help="type of the vision matrices")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--v-embd", type=int, default=32)
    ap.add_argument("--v-layer", type=int, default=2)
    ap.add_argument("--v-head", type=int, default=2)
    ap.add_argument("--v-ff", type=int, default=64)
    ap.add_argument("--v-eps", type=float, default=1e-6)
    ap.add_argument("--scale-factor", type=int, default=2)
    ap.add_argument("--longest-edge", type=int, default=0, help="preproc_image_size (0: absent)")
    ap.add_argument("--n-embd-text", type=int, default=None,
                    help="projector output width with --no-text (default: --n-embd)")
    # Explicit options win over the preset: parse once to see which were given.
    a = ap.parse_args(argv)
    if a.preset:
        ap.set_defaults(**PRESETS[a.preset])
        a = ap.parse_args(argv)
    if a.n_head_kv is None:
        a.n_head_kv = a.n_head
    if a.dtype_embd is None:
        a.dtype_embd = a.dtype
    if not a.no_text and not a.out:
        ap.error("-o/--out is required (or --no-text with --mmproj-out)")
    if a.no_text and not a.mmproj_out:
        ap.error("--no-text needs --mmproj-out")
    if a.n_embd % a.n_head or a.n_head % a.n_head_kv or (a.n_embd // a.n_head) % 2:
        ap.error("need n_embd % n_head == 0, n_head % n_head_kv == 0 and an even head_dim")
    if a.mmproj_out:
        g = a.image_size // a.patch_size
        if a.image_size % a.patch_size or a.v_embd % a.v_head:
            ap.error("need image_size % patch_size == 0 and v_embd % v_head == 0")
        if a.projector == "idefics3" and g % a.scale_factor:
            ap.error("the patch grid must be divisible by --scale-factor")
    return a


def main(argv):
    a = parse_args(argv)
    if not a.no_text:
        write_text(a, load_tokenizer(a.tokenizer))
    if a.mmproj_out:
        write_mmproj(a, a.n_embd_text or a.n_embd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
