"""The demo VLM in PyTorch, computing exactly the math llama.cpp runs for
SmolVLM (gguf-vlm-spec.md sections 2.4, 4.3, 4.4): a SigLIP-style ViT, the
idefics3 pixel-shuffle connector, and a llama decoder.

The decoder applies RoPE to adjacent pairs (q[2i], q[2i+1]) -- llama.cpp's
"normal" mode -- so the exporter writes Q/K unpermuted; there is no HF
rotate-half layout anywhere in this model.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

import scene as sc


@dataclass
class Config:
    # vision
    image_size: int = 128
    patch_size: int = 8
    v_dim: int = 128
    v_ffn: int = 512
    v_layers: int = 3
    v_heads: int = 4
    v_eps: float = 1e-6
    scale_factor: int = 4
    # text
    vocab_size: int = 512
    t_dim: int = 128
    t_ffn: int = 384
    t_layers: int = 4
    t_heads: int = 4
    t_kv_heads: int = 2
    t_eps: float = 1e-5
    rope_base: float = 10000.0

    def to_dict(self):
        return asdict(self)

    @property
    def grid(self):
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self):
        return (self.grid // self.scale_factor) ** 2


def attention(q, k, v, causal):
    """softmax(q k^T / sqrt(d)) v over [B, H, T, d] (torch 1.13 has no fused SDPA)."""
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


# ---------------------------------------------------------------------------
# vision tower + connector

class VisionBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads = c.v_heads
        self.ln1 = nn.LayerNorm(c.v_dim, eps=c.v_eps)
        self.q = nn.Linear(c.v_dim, c.v_dim)
        self.k = nn.Linear(c.v_dim, c.v_dim)
        self.v = nn.Linear(c.v_dim, c.v_dim)
        self.out = nn.Linear(c.v_dim, c.v_dim)
        self.ln2 = nn.LayerNorm(c.v_dim, eps=c.v_eps)
        self.up = nn.Linear(c.v_dim, c.v_ffn)
        self.down = nn.Linear(c.v_ffn, c.v_dim)

    def forward(self, x):                      # x [B, N, D]
        B, N, D = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).view(B, N, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        o = attention(q, k, v, causal=False)
        x = x + self.out(o.transpose(1, 2).reshape(B, N, D))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class Vision(nn.Module):
    """Normalised tiles [B, 3, S, S] -> patch features [B, (S/p)^2, D] and
    connector output [B, tokens_per_image, t_dim]."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.patch = nn.Conv2d(3, c.v_dim, c.patch_size, stride=c.patch_size, bias=True)
        self.pos = nn.Parameter(torch.randn(c.grid * c.grid, c.v_dim) * 0.02)
        self.blocks = nn.ModuleList(VisionBlock(c) for _ in range(c.v_layers))
        self.post_ln = nn.LayerNorm(c.v_dim, eps=c.v_eps)
        self.fc = nn.Linear(c.v_dim * c.scale_factor ** 2, c.t_dim, bias=False)

    def features(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)       # [B, G*G, D], raster order
        x = x + self.pos
        for b in self.blocks:
            x = b(x)
        return self.post_ln(x)

    def connect(self, x):
        """Pixel shuffle (spec 4.4): token T = Y*(G/s) + X gets
        f[c + D*(dx + s*dy)] = x[(s*Y+dy)*G + s*X+dx][c]; then fc."""
        B, _, D = x.shape
        G, s = self.c.grid, self.c.scale_factor
        x = x.view(B, G // s, s, G // s, s, D)               # [B, Y, dy, X, dx, D]
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, (G // s) ** 2, s * s * D)
        return self.fc(x)


# ---------------------------------------------------------------------------
# llama decoder

class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope(x, pos, base):
    """Adjacent-pair rotation of x [B, H, T, d] at positions pos [T]."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)     # [d/2]
    ang = pos.float()[:, None] * inv[None, :]                            # [T, d/2]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class DecoderBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        hd = c.t_dim // c.t_heads
        self.attn_norm = RMSNorm(c.t_dim, c.t_eps)
        self.q = nn.Linear(c.t_dim, c.t_heads * hd, bias=False)
        self.k = nn.Linear(c.t_dim, c.t_kv_heads * hd, bias=False)
        self.v = nn.Linear(c.t_dim, c.t_kv_heads * hd, bias=False)
        self.o = nn.Linear(c.t_heads * hd, c.t_dim, bias=False)
        self.ffn_norm = RMSNorm(c.t_dim, c.t_eps)
        self.gate = nn.Linear(c.t_dim, c.t_ffn, bias=False)
        self.up = nn.Linear(c.t_dim, c.t_ffn, bias=False)
        self.down = nn.Linear(c.t_ffn, c.t_dim, bias=False)

    def forward(self, x, pos):                                           # x [B, T, D]
        c = self.c
        B, T, D = x.shape
        h = self.attn_norm(x)
        q = self.q(h).view(B, T, c.t_heads, -1).transpose(1, 2)
        k = self.k(h).view(B, T, c.t_kv_heads, -1).transpose(1, 2)
        v = self.v(h).view(B, T, c.t_kv_heads, -1).transpose(1, 2)
        q, k = rope(q, pos, c.rope_base), rope(k, pos, c.rope_base)
        rep = c.t_heads // c.t_kv_heads          # q head h uses kv head h // rep
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        o = attention(q, k, v, causal=True)
        x = x + self.o(o.transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class ShapesVLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.vision = Vision(c)
        self.embed = nn.Embedding(c.vocab_size, c.t_dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.t_layers))
        self.norm = RMSNorm(c.t_dim, c.t_eps)
        # Training-only dense head: per patch, the logits of each label of
        # scene.AUX_CLASSES side by side.
        self.aux = nn.Linear(c.v_dim, sum(n for _, n in sc.AUX_CLASSES))

    def image_embeddings(self, images):
        """images [N, 3, S, S] -> (embeddings [N, tokens_per_image, t_dim], patch features)."""
        f = self.vision.features(images)
        return self.vision.connect(f), f

    def forward(self, ids, img_pos, images, img_index):
        """ids [B, T] token ids (image slots hold any valid id); img_pos [B, K]
        the sequence positions of the K image embeddings of each sequence, in
        the order of images [N, n_img, 3, S, S] flattened (tiles first,
        overview last); img_index [B] the image (0..N-1) of each sequence.
        Returns (logits [B, T, vocab], aux logits [N*n_img, G*G, classes])."""
        N = images.shape[0]
        emb, feat = self.image_embeddings(images.flatten(0, 1))
        emb = emb.reshape(N, -1, self.c.t_dim)[img_index]
        return self.decode(ids, img_pos, emb), self.aux(feat)

    def decode(self, ids, img_pos, emb):
        """Logits [B, T, vocab] of ids [B, T] with image embeddings emb [B, K, D]
        placed at positions img_pos [B, K]."""
        T = ids.shape[1]
        x = self.embed(ids)
        x = x.scatter(1, img_pos[..., None].expand(-1, -1, self.c.t_dim), emb.to(x.dtype))
        pos = torch.arange(T)
        for b in self.blocks:
            x = b(x, pos)
        return F.linear(self.norm(x), self.embed.weight)                   # tied output


def n_params(model, exported_only=True):
    return sum(p.numel() for n, p in model.named_parameters()
               if not (exported_only and n.startswith("aux.")))
