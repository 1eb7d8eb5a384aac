#!/usr/bin/python3
"""reference.py — an independent PyTorch reference of the llama decoder (spec §2.4).

It reads a text GGUF through tools/gguf_io.py (whose dequantisers follow spec
§1.4), dequantises every weight to float32 (or float64 with --f64) and runs the
forward pass of llama.cpp's `llama` graph: RMSNorm (sum of squares in double,
as ggml), Q/K/V (+ optional biases), normal adjacent-pair RoPE on the GGUF
(pre-permuted) Q/K rows with θ built as ggml does (θ_{i+1} = θ_i·powf(base,
−2/d) in f32), GQA head h -> kv head h/(n_head/n_kv), causal softmax attention
scaled by 1/sqrt(d), SwiGLU FFN, final norm and the output matrix (tied to
token_embd when output.weight is absent). K/V and attention stay in float32
(llama.cpp's default F16 KV cache is not emulated).

By default every matmul multiplies float32 activations by the dequantised
weights. --act-quant instead emulates llama.cpp's CPU matmul: activations are
first converted to the weight type's vec_dot_type (Q8_0, Q8_1, Q8_K, F16 or
BF16; see quantize_activations) and the products are summed in float64. Against
llama.cpp with an F32 KV cache (oracle runs, see the fixture notes in
Makefile.am) this matches to ~1e-6 relative until some activation lands within
float noise of a rounding boundary: llama.cpp's own expf (SiLU, softmax) then
flips one 8-bit step, and logits after that position differ by up to ~2% of
their spread. Without --act-quant quantised models differ from llama.cpp by
~2-4% of the logit spread everywhere.

    reference.py logits MODEL --tokens 1,2,3 -o OUT.logits [--act-quant]
    reference.py greedy MODEL --tokens 1,2,3 -n 64 -o OUT.greedy [--logits-out OUT.logits]

File formats (all little-endian; H5's C tests read them):
  logits file:  char magic[4] = "GLGT"; u32 version = 1; u32 n_tok; u32 n_vocab;
                u32 tokens[n_tok];                 the input token ids
                f32 logits[n_tok][n_vocab]         logits after every input position
  greedy file:  char magic[4] = "GGRD"; u32 version = 1; u32 n_prompt; u32 n_gen;
                u32 prompt[n_prompt];              the input token ids
                u32 gen[n_gen];                    greedy continuation (argmax, lowest id on ties)
                f32 margin[n_gen]                  top-1 minus top-2 logit at each step, so a
                                                   test can tell a near-tie from a real mismatch
Generation never stops at EOS: exactly n_gen tokens are produced.

Vision hooks: Decoder.forward takes embeddings, so a vision tower (SigLIP/CLIP
+ idefics3/MLP projector, spec §4, §6) only has to produce [n, n_embd] vectors
and splice them between Decoder.embed() rows.
"""

import argparse
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io  # noqa: E402


# ggml-cpu.c type_traits_cpu[].vec_dot_type: what a matmul converts its f32
# activations to before the dot products with a weight of each type.
VEC_DOT_TYPE = {"f32": "f32", "f16": "f16", "bf16": "bf16", "q4_0": "q8_0", "q5_0": "q8_0",
                "q8_0": "q8_0", "q4_1": "q8_1", "q5_1": "q8_1", "q4_k": "q8_k",
                "q5_k": "q8_k", "q6_k": "q8_k"}


def quantize_activations(x, vdt):
    """x float32 [n, k] -> (values the dot products see [n, k] float64, q8_1 sums or None).

    Emulates llama.cpp's CPU activation conversion as its x86 (AVX/AVX2) build
    runs it: Q8_0/Q8_1 per 32 values with d = amax/127 stored as half but
    q = round-half-even(x·(127/amax)) (quantize_row_q8_0/q8_1 in
    ggml-cpu/arch/x86/quants.c; the portable _ref functions of spec §1.4 use
    roundf(x·(1/d)), which differs in rare ties), Q8_K per 256 values as
    quantize_row_q8_K_ref (iscale = -127/max, nearest, d = 1/iscale in f32), or
    rounding to f16/bf16. For Q8_1 it also returns s - d·Σq per block
    [n, k/32]: ggml multiplies a weight block's min by s = half(d·Σq), not by
    the exact sum.
    """
    xn = np.ascontiguousarray(x.detach().to(torch.float32).numpy())
    n, k = xn.shape
    if vdt == "f32":
        return torch.from_numpy(xn.astype(np.float64)), None
    if vdt in ("f16", "bf16"):
        return torch.from_numpy(gguf_io.dequantize(gguf_io.quantize(xn, vdt), vdt, xn.shape)
                                .astype(np.float64)), None
    if vdt in ("q8_0", "q8_1"):
        xb = xn.reshape(n, k // 32, 32)
        amax = np.abs(xb).max(axis=2)                                       # [n, k/32]
        d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)  # as stored
        with np.errstate(divide="ignore"):
            iscale = np.where(amax != 0, np.float32(127) / amax, 0).astype(np.float32)
        q = np.rint(xb * iscale[:, :, None]).astype(np.float64)             # ties to even
        deq = torch.from_numpy((q * d[:, :, None]).reshape(n, k))
        if vdt == "q8_0":
            return deq, None
        sq = q.sum(axis=2)
        d32 = (amax / np.float32(127)).astype(np.float32)
        s = (d32 * sq.astype(np.float32)).astype(np.float16).astype(np.float64)
        return deq, torch.from_numpy(s - d * sq)
    # q8_k
    xb = xn.reshape(n, k // 256, 256)
    idx = np.argmax(np.abs(xb), axis=2)
    mx = np.take_along_axis(xb, idx[:, :, None], axis=2)[:, :, 0]         # signed max
    with np.errstate(divide="ignore"):
        iscale = np.where(mx != 0, np.float32(-127) / mx, 0).astype(np.float32)
    q = np.minimum(127, np.rint(iscale[:, :, None] * xb))                   # nearest, ties to even
    d = np.where(mx != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
    return torch.from_numpy((q.astype(np.float64) * d[:, :, None].astype(np.float64)).reshape(n, k)), None


class Matrix:
    """A weight matrix [n_out, n_in] dequantised, with what activation emulation needs."""

    def __init__(self, t, dtype):
        self.dtype = t.dtype                                       # GGUF type, e.g. 'q8_0'
        self.w = torch.from_numpy(t.array()).to(dtype)             # [n_out, n_in]
        self.mins = None                                           # [n_out, n_in/32] for q4_1/q5_1
        if t.dtype in ("q4_1", "q5_1"):
            bsz = gguf_io.TENSOR_TYPES[t.dtype][2]
            raw = np.frombuffer(t.raw, np.uint8).reshape(-1, bsz)
            m = raw[:, 2:4].copy().view("<f2").astype(np.float64)
            self.mins = torch.from_numpy(m.reshape(t.shape[0], -1))
        self._w64 = None

    def apply(self, x, act_quant):
        """x [n, n_in] -> x·Wᵀ [n, n_out]; with act_quant as llama.cpp's CPU matmul sees it."""
        if not act_quant:
            return x @ self.w.T
        if self._w64 is None:
            self._w64 = self.w.double()
        xq, q8_1_err = quantize_activations(x, VEC_DOT_TYPE[self.dtype])
        y = xq @ self._w64.T
        if q8_1_err is not None:
            y = y + q8_1_err @ self.mins.T
        return y.to(x.dtype)


class Decoder:
    """The llama text decoder of one GGUF, with a growing float K/V cache."""

    def __init__(self, path, dtype=torch.float32, act_quant=False):
        r = gguf_io.GGUFReader(path)
        if r.kv.get("general.architecture") != "llama":
            raise ValueError(f"{path}: not a llama model")
        p = "llama."
        kv = r.kv
        self.dtype = dtype
        self.n_embd = kv[p + "embedding_length"]
        self.n_layer = kv[p + "block_count"]
        self.n_head = kv.get(p + "attention.head_count", 1)
        self.n_head_kv = kv.get(p + "attention.head_count_kv", self.n_head)
        self.head_dim = kv.get(p + "attention.key_length", self.n_embd // self.n_head)
        self.eps = kv[p + "attention.layer_norm_rms_epsilon"]
        self.rope_base = kv.get(p + "rope.freq_base", 10000.0)
        n_rot = kv.get(p + "rope.dimension_count", self.head_dim)
        if n_rot != self.head_dim:
            raise ValueError("rope.dimension_count must equal head_dim for llama")
        self.n_vocab = len(kv["tokenizer.ggml.tokens"])

        def get(name, required=True):
            t = r.tensors.get(name)
            if t is None:
                if required:
                    raise ValueError(f"{path}: missing tensor {name}")
                return None
            return torch.from_numpy(t.array()).to(dtype)

        def mat(name, required=True):
            t = r.tensors.get(name)
            if t is None and required:
                raise ValueError(f"{path}: missing tensor {name}")
            return None if t is None else Matrix(t, dtype)

        self.tok_embd = mat("token_embd.weight")                  # [n_vocab, n_embd]
        self.layers = []
        for i in range(self.n_layer):
            b = f"blk.{i}."
            L = {k: mat(b + k) for k in ("attn_q.weight", "attn_k.weight", "attn_v.weight",
                                         "attn_output.weight", "ffn_gate.weight",
                                         "ffn_up.weight", "ffn_down.weight")}
            L.update({k: get(b + k) for k in ("attn_norm.weight", "ffn_norm.weight")})
            L.update({k: get(b + k, required=False) for k in (
                "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias")})
            self.layers.append(L)
        self.out_norm = get("output_norm.weight")                 # [n_embd]
        # tied embeddings when output.weight is absent (spec §2.2)
        self.output = mat("output.weight", required=False) or self.tok_embd  # [n_vocab, n_embd]
        self.act_quant = act_quant
        self.reset()

    def reset(self):
        """Forgets the cache: the next forward starts at position 0."""
        self.k_cache = [None] * self.n_layer                      # [n_kv, n_past, d] each
        self.v_cache = [None] * self.n_layer
        self.n_past = 0

    def embed(self, tokens):
        """Token ids -> [n, n_embd] embedding rows (the hook where image vectors are spliced)."""
        ids = torch.tensor(tokens, dtype=torch.long)
        if len(tokens) and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise ValueError("token id out of range")
        return self.tok_embd.w[ids]

    def rms_norm(self, x, w):
        # ggml: sum of squares in double, mean and 1/sqrt in float, then x·scale·w.
        ms = (x.double() ** 2).mean(dim=-1, keepdim=True).to(self.dtype)
        return x * (1.0 / torch.sqrt(ms + self.eps)) * w

    def rope_cos_sin(self, pos):
        """cos, sin [n, d/2] for positions pos, with θ built as ggml_rope_cache_init does."""
        d = self.head_dim
        theta_scale = np.float32(np.float64(self.rope_base) ** np.float64(np.float32(-2.0) / np.float32(d)))
        theta = np.empty((len(pos), d // 2), np.float32)
        t = np.asarray(pos, np.float32)
        for i in range(d // 2):
            theta[:, i] = t
            t = (t * theta_scale).astype(np.float32)
        th = theta.astype(np.float64)
        return (torch.from_numpy(np.cos(th).astype(np.float32)).to(self.dtype),
                torch.from_numpy(np.sin(th).astype(np.float32)).to(self.dtype))

    @staticmethod
    def rope(x, cos, sin):
        """Adjacent-pair rotation of x [heads, n, d] (normal RoPE, mode 0)."""
        a, b = x[..., 0::2], x[..., 1::2]                          # [heads, n, d/2]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
        return out.flatten(-2)

    def forward(self, emb):
        """Runs emb [n, n_embd] at positions n_past.. and returns logits [n, n_vocab]."""
        n = emb.shape[0]
        d, nh, nkv = self.head_dim, self.n_head, self.n_head_kv
        pos = list(range(self.n_past, self.n_past + n))
        cos, sin = self.rope_cos_sin(pos)
        n_all = self.n_past + n
        # causal mask [n, n_all]: query t (absolute n_past+t) sees keys s <= n_past+t
        mask = torch.full((n, n_all), float("-inf"), dtype=self.dtype)
        mask = torch.triu(mask, diagonal=self.n_past + 1)
        x = emb.to(self.dtype)                                     # [n, n_embd]
        for il, L in enumerate(self.layers):
            h = self.rms_norm(x, L["attn_norm.weight"])
            q = self._linear(h, L["attn_q.weight"], L["attn_q.bias"])      # [n, nh*d]
            k = self._linear(h, L["attn_k.weight"], L["attn_k.bias"])      # [n, nkv*d]
            v = self._linear(h, L["attn_v.weight"], L["attn_v.bias"])
            q = self.rope(q.view(n, nh, d).transpose(0, 1), cos, sin)      # [nh, n, d]
            k = self.rope(k.view(n, nkv, d).transpose(0, 1), cos, sin)     # [nkv, n, d]
            v = v.view(n, nkv, d).transpose(0, 1)
            if self.k_cache[il] is not None:
                k = torch.cat([self.k_cache[il], k], dim=1)                # [nkv, n_all, d]
                v = torch.cat([self.v_cache[il], v], dim=1)
            self.k_cache[il], self.v_cache[il] = k, v
            # GQA: query head h reads kv head h // (nh/nkv) (contiguous groups).
            rep = nh // nkv
            k = k.repeat_interleave(rep, dim=0)                            # [nh, n_all, d]
            v = v.repeat_interleave(rep, dim=0)
            s = (q @ k.transpose(1, 2)) * (1.0 / np.sqrt(d)) + mask        # [nh, n, n_all]
            o = torch.softmax(s, dim=-1) @ v                               # [nh, n, d]
            o = o.transpose(0, 1).reshape(n, nh * d)
            x = x + self._linear(o, L["attn_output.weight"], L["attn_output.bias"])
            h = self.rms_norm(x, L["ffn_norm.weight"])
            g = self._linear(h, L["ffn_gate.weight"], None)                # [n, n_ff]
            u = self._linear(h, L["ffn_up.weight"], None)
            x = x + self._linear(torch.nn.functional.silu(g) * u, L["ffn_down.weight"], None)
        self.n_past = n_all
        return self._linear(self.rms_norm(x, self.out_norm), self.output, None)  # [n, n_vocab]

    def _linear(self, x, m, b):
        y = m.apply(x, self.act_quant)
        return y if b is None else y + b

    def greedy(self, prompt, n_gen):
        """Prompt ids -> (all prompt logits [n, n_vocab], n_gen ids, top1-top2 margins)."""
        self.reset()
        logits = self.forward(self.embed(prompt))
        prompt_logits = logits
        last = logits[-1]
        gen, margin = [], []
        for _ in range(n_gen):
            top = torch.topk(last.double(), 2)
            # torch.argmax returns the first maximum, i.e. the lowest id on ties.
            t = int(torch.argmax(last))
            gen.append(t)
            margin.append(float(top.values[0] - top.values[1]))
            last = self.forward(self.embed([t]))[-1]
        return prompt_logits, gen, margin


def write_logits(path, tokens, logits):
    lg = np.ascontiguousarray(logits.detach().to(torch.float32).numpy(), dtype="<f4")
    with open(path, "wb") as f:
        f.write(b"GLGT" + struct.pack("<III", 1, len(tokens), lg.shape[1]))
        f.write(np.asarray(tokens, "<u4").tobytes() + lg.tobytes())


def write_greedy(path, prompt, gen, margin):
    with open(path, "wb") as f:
        f.write(b"GGRD" + struct.pack("<III", 1, len(prompt), len(gen)))
        f.write(np.asarray(prompt, "<u4").tobytes() + np.asarray(gen, "<u4").tobytes())
        f.write(np.asarray(margin, "<f4").tobytes())


def main(argv):
    ap = argparse.ArgumentParser(description="PyTorch reference of the llama decoder")
    ap.add_argument("mode", choices=["logits", "greedy"])
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("--logits-out", help="greedy mode: also write the prompt's logits file")
    ap.add_argument("--f64", action="store_true", help="compute in float64")
    ap.add_argument("--act-quant", action="store_true",
                    help="emulate llama.cpp's CPU activation conversion before every matmul")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    if not tokens:
        ap.error("--tokens is empty")
    dec = Decoder(a.model, torch.float64 if a.f64 else torch.float32, a.act_quant)
    with torch.no_grad():
        if a.mode == "logits":
            write_logits(a.out, tokens, dec.forward(dec.embed(tokens)))
        else:
            logits, gen, margin = dec.greedy(tokens, a.n_gen)
            write_greedy(a.out, tokens, gen, margin)
            if a.logits_out:
                write_logits(a.logits_out, tokens, logits)
            print(" ".join(map(str, gen)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
