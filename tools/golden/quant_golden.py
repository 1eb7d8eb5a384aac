#!/usr/bin/env python3
"""Golden data for tests/unit/check_quant.c, from llama.cpp's gguf-py.

Writes into tests/data/quant/ (committed; regenerate only when adding a type):
  <type>.raw   random blocks of the type (finite half scales), as stored in GGUF
  <type>.f32   their dequantisation by gguf.quants.dequantize, little-endian f32
  q8_0-quant.in / .raw   f32 activations and gguf.quants.quantize(..., Q8_0)
  q8_K-quant.in / .raw   f32 activations and a numpy transcription of ggml's
                         quantize_row_q8_K_ref (gguf-py has no Q8_K quantiser)
  gguf-py.gguf           a GGUF v3 file written by gguf-py's GGUFWriter (alignment
                         64): one KV of every value type and one [n/2, 2] tensor
                         per type above holding that type's .raw blocks, for
                         check_gguf's independent-writer test

gguf-py is not vendored: point PYTHONPATH at a llama.cpp checkout, e.g.
  PYTHONPATH=/path/to/llama.cpp/gguf-py /usr/bin/python3 tools/golden/quant_golden.py tests/data/quant
"""
import os
import sys

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFValueType as V
from gguf import GGUFWriter, quants

# type name -> (ggml type, number of blocks, byte offsets of the half scales in a block)
TYPES = {
    "f32": (T.F32, 256, ()),
    "f16": (T.F16, 512, ()),
    "bf16": (T.BF16, 512, ()),
    "q4_0": (T.Q4_0, 64, (0,)),
    "q4_1": (T.Q4_1, 64, (0, 2)),
    "q5_0": (T.Q5_0, 64, (0,)),
    "q5_1": (T.Q5_1, 64, (0, 2)),
    "q8_0": (T.Q8_0, 64, (0,)),
    "q4_K": (T.Q4_K, 8, (0, 2)),
    "q5_K": (T.Q5_K, 8, (0, 2)),
    "q6_K": (T.Q6_K, 8, (208,)),
}


def random_halves(rng, n):
    """Finite halves over the whole exponent range, both signs, with subnormals and zeros."""
    h = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    h[(h & 0x7C00) == 0x7C00] &= 0xBFFF  # inf/NaN exponent -> a finite one
    h[:4] = [0x0000, 0x8000, 0x0001, 0x83FF]  # zeros and subnormals
    return h


def random_blocks(rng, qtype, n_blocks, scale_offsets):
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        return rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8).reshape(n_blocks, 4)
    if qtype == T.F16:
        return random_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.BF16:
        b = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint32).astype(np.uint16)
        b[(b & 0x7F80) == 0x7F80] &= 0xBFFF  # keep them finite: NaN payload rules differ by tool
        return b.view(np.uint8).reshape(n_blocks, 2)
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint16).astype(np.uint8)
    for off in scale_offsets:
        # scales of ordinary magnitude so the products are neither all zero nor inf
        d = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        blocks[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def quantize_q8_K(x):
    """ggml-quants.c: quantize_row_q8_K_ref, in float32 numpy."""
    x = x.astype(np.float32).reshape(-1, 256)
    out = bytearray()
    for blk in x:
        ax = np.abs(blk)
        if not ax.max() > 0:
            out += np.zeros(292, dtype=np.uint8).tobytes()
            continue
        mx = blk[int(np.argmax(ax))]  # first index of the largest |x|, like the C loop's strict >
        iscale = np.float32(-127.0) / mx
        # nearest_int adds 1.5*2^23 in float32: round half to even
        q = np.rint((iscale * blk).astype(np.float32)).astype(np.int32)
        q = np.minimum(127, q).astype(np.int8)
        bsums = q.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
        d = np.float32(1.0) / iscale
        out += np.float32(d).tobytes() + q.tobytes() + bsums.tobytes()
    return bytes(out)


def activations(rng, n):
    x = (rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0], size=n // 32).repeat(32)).astype(np.float32)
    x[:32] = 0.0  # an all-zero block
    x[32:64] = np.arange(32, dtype=np.float32) - 16.0  # exact ties after scaling
    return x


def write_gguf(path, raws):
    """KVs and tensors that tests/unit/check_gguf.c (test_gguf_py_file) expects."""
    w = GGUFWriter(path, "glimpse-test")  # also writes general.architecture
    w.add_custom_alignment(64)
    w.add_key_value("t.u8", 200, V.UINT8)
    w.add_key_value("t.i8", -5, V.INT8)
    w.add_key_value("t.u16", 60000, V.UINT16)
    w.add_key_value("t.i16", -30000, V.INT16)
    w.add_key_value("t.u32", 4000000000, V.UINT32)
    w.add_key_value("t.i32", -2000000000, V.INT32)
    w.add_key_value("t.f32", 1.5, V.FLOAT32)
    w.add_key_value("t.bool", True, V.BOOL)
    w.add_key_value("t.str", "h\u00e9llo", V.STRING)
    w.add_key_value("t.u64", 0x123456789ABCDEF0, V.UINT64)
    w.add_key_value("t.i64", -(1 << 40), V.INT64)
    w.add_key_value("t.f64", 3.25, V.FLOAT64)
    w.add_key_value("t.arr_i32", [1, -2, 3], V.ARRAY, V.INT32)
    w.add_key_value("t.arr_str", ["a", "", "ccc"], V.ARRAY, V.STRING)
    for name, raw in raws.items():
        # a uint8 array's shape is in bytes: two rows of half the blocks each
        w.add_tensor(name, raw.reshape(2, -1), raw_dtype=TYPES[name][0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/data/quant"
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20261127)

    raws = {}
    for name, (qtype, n_blocks, scale_offsets) in TYPES.items():
        raw = random_blocks(rng, qtype, n_blocks, scale_offsets)
        raws[name] = raw
        y = quants.dequantize(raw.reshape(-1), qtype).astype(np.float32)
        assert np.all(np.isfinite(y)), name
        with open(os.path.join(out_dir, name + ".raw"), "wb") as f:
            f.write(raw.tobytes())
        with open(os.path.join(out_dir, name + ".f32"), "wb") as f:
            f.write(y.astype("<f4").tobytes())

    x = activations(rng, 64 * 32)
    with open(os.path.join(out_dir, "q8_0-quant.in"), "wb") as f:
        f.write(x.astype("<f4").tobytes())
    with open(os.path.join(out_dir, "q8_0-quant.raw"), "wb") as f:
        f.write(quants.quantize(x, T.Q8_0).tobytes())

    x = activations(rng, 8 * 256)
    with open(os.path.join(out_dir, "q8_K-quant.in"), "wb") as f:
        f.write(x.astype("<f4").tobytes())
    with open(os.path.join(out_dir, "q8_K-quant.raw"), "wb") as f:
        f.write(quantize_q8_K(x))

    write_gguf(os.path.join(out_dir, "gguf-py.gguf"), raws)


if __name__ == "__main__":
    main()
