#!/usr/bin/python3
"""Export a trained checkpoint as SmolVLM-layout GGUF files.

    /usr/bin/python3 tools/shapes/export.py /work/ckpt/shapes/last.pt models/

writes models/glimpse-shapes.gguf (llama text model + tokenizer + chat
template) and models/glimpse-shapes-mmproj.gguf (clip mmproj, projector
idefics3), keys and tensor names as in gguf-vlm-spec.md 2.1-2.2, 3, 4.1-4.2.
All tensors are F32 (the model is small, and F32 keeps llama.cpp and Glimpse
closest to PyTorch). The auxiliary training head is not exported. Q/K rows are
written as trained: the model was trained with llama.cpp's adjacent-pair RoPE.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io  # noqa: E402  (tools/gguf_io.py)
import model as M  # noqa: E402

TEXT_NAME = "glimpse-shapes.gguf"
MMPROJ_NAME = "glimpse-shapes-mmproj.gguf"


def _np(t):
    return t.detach().float().contiguous().numpy()


def write_text(path, net, cfg, tok):
    w = gguf_io.GGUFWriter(path)
    hd = cfg.t_dim // cfg.t_heads
    w.add_str("general.architecture", "llama")
    w.add_str("general.name", "glimpse-shapes")
    w.add_u32("general.file_type", 0)
    w.add_u32("llama.context_length", 2048)
    w.add_u32("llama.embedding_length", cfg.t_dim)
    w.add_u32("llama.block_count", cfg.t_layers)
    w.add_u32("llama.feed_forward_length", cfg.t_ffn)
    w.add_u32("llama.attention.head_count", cfg.t_heads)
    w.add_u32("llama.attention.head_count_kv", cfg.t_kv_heads)
    w.add_u32("llama.attention.key_length", hd)
    w.add_u32("llama.attention.value_length", hd)
    w.add_f32("llama.attention.layer_norm_rms_epsilon", cfg.t_eps)
    w.add_f32("llama.rope.freq_base", cfg.rope_base)
    w.add_u32("llama.rope.dimension_count", hd)
    w.add_u32("llama.vocab_size", cfg.vocab_size)
    gguf_io.add_tokenizer(w, tok)
    w.add_tensor("token_embd.weight", _np(net.embed.weight), "f32")          # [vocab, D]
    for i, b in enumerate(net.blocks):
        p = "blk.%d." % i
        w.add_tensor(p + "attn_norm.weight", _np(b.attn_norm.weight), "f32")  # [D]
        w.add_tensor(p + "attn_q.weight", _np(b.q.weight), "f32")             # [H*hd, D]
        w.add_tensor(p + "attn_k.weight", _np(b.k.weight), "f32")             # [Hkv*hd, D]
        w.add_tensor(p + "attn_v.weight", _np(b.v.weight), "f32")             # [Hkv*hd, D]
        w.add_tensor(p + "attn_output.weight", _np(b.o.weight), "f32")        # [D, H*hd]
        w.add_tensor(p + "ffn_norm.weight", _np(b.ffn_norm.weight), "f32")    # [D]
        w.add_tensor(p + "ffn_gate.weight", _np(b.gate.weight), "f32")        # [F, D]
        w.add_tensor(p + "ffn_up.weight", _np(b.up.weight), "f32")            # [F, D]
        w.add_tensor(p + "ffn_down.weight", _np(b.down.weight), "f32")        # [D, F]
    w.add_tensor("output_norm.weight", _np(net.norm.weight), "f32")           # [D]; output tied
    w.write()


def write_mmproj(path, net, cfg):
    w = gguf_io.GGUFWriter(path)
    v = net.vision
    w.add_str("general.architecture", "clip")
    w.add_str("general.type", "mmproj")
    w.add_str("general.name", "glimpse-shapes-mmproj")
    w.add_u32("general.file_type", 0)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_str("clip.projector_type", "idefics3")
    w.add_bool("clip.use_gelu", True)
    w.add_u32("clip.vision.image_size", cfg.image_size)
    w.add_u32("clip.vision.preproc_image_size", cfg.image_size)
    w.add_u32("clip.vision.patch_size", cfg.patch_size)
    w.add_u32("clip.vision.embedding_length", cfg.v_dim)
    w.add_u32("clip.vision.feed_forward_length", cfg.v_ffn)
    w.add_u32("clip.vision.block_count", cfg.v_layers)
    w.add_u32("clip.vision.attention.head_count", cfg.v_heads)
    w.add_f32("clip.vision.attention.layer_norm_epsilon", cfg.v_eps)
    w.add_u32("clip.vision.projection_dim", cfg.t_dim)
    w.add_u32("clip.vision.projector.scale_factor", cfg.scale_factor)
    w.add_arr("clip.vision.image_mean", "f32", [0.5, 0.5, 0.5])
    w.add_arr("clip.vision.image_std", "f32", [0.5, 0.5, 0.5])
    w.add_tensor("v.patch_embd.weight", _np(v.patch.weight), "f32")      # [D, 3, p, p]
    w.add_tensor("v.patch_embd.bias", _np(v.patch.bias), "f32")          # [D]
    w.add_tensor("v.position_embd.weight", _np(v.pos), "f32")            # [G*G, D]
    for i, b in enumerate(v.blocks):
        p = "v.blk.%d." % i
        for name, mod in (("ln1", b.ln1), ("attn_q", b.q), ("attn_k", b.k), ("attn_v", b.v),
                          ("attn_out", b.out), ("ln2", b.ln2), ("ffn_up", b.up), ("ffn_down", b.down)):
            w.add_tensor(p + name + ".weight", _np(mod.weight), "f32")   # Linear [out, in]; LN [D]
            w.add_tensor(p + name + ".bias", _np(mod.bias), "f32")
    w.add_tensor("v.post_ln.weight", _np(v.post_ln.weight), "f32")
    w.add_tensor("v.post_ln.bias", _np(v.post_ln.bias), "f32")
    w.add_tensor("mm.model.fc.weight", _np(v.fc.weight), "f32")          # [t_dim, s*s*D]
    w.write()


def load(ckpt_path):
    """(net in eval mode, config, tokenizer) of a training checkpoint. The
    training-only auxiliary head is left out: its width changed between
    versions of train.py, and nothing exported or evaluated uses it."""
    ck = torch.load(ckpt_path)
    cfg = M.Config(**ck["config"])
    net = M.ShapesVLM(cfg)
    keys = net.load_state_dict({k: v for k, v in ck["model"].items() if not k.startswith("aux.")}, strict=False)
    assert not keys.unexpected_keys and all(k.startswith("aux.") for k in keys.missing_keys), keys
    net.eval()
    return net, cfg, ck["tokenizer"], ck


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("outdir")
    args = ap.parse_args(argv)
    net, cfg, tok, ck = load(args.ckpt)
    os.makedirs(args.outdir, exist_ok=True)
    write_text(os.path.join(args.outdir, TEXT_NAME), net, cfg, tok)
    write_mmproj(os.path.join(args.outdir, MMPROJ_NAME), net, cfg)
    print("exported step %d: %d parameters" % (ck["step"], M.n_params(net)))


if __name__ == "__main__":
    main()
