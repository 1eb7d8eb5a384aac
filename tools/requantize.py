#!/usr/bin/python3
"""requantize.py — a GGUF file with its matrices in another weight type.

    /usr/bin/python3 tools/requantize.py IN.gguf OUT.gguf --type q8_0

Every tensor of two or more dimensions whose rows are a whole number of the
type's blocks is re-encoded from its float values as --type (gguf_io's
quantisers, ggml's rounding); vectors and the other tensors keep their type,
and every KV is copied. Used to run the demo model as Q8_0 against
llama.cpp (models/README.md). A file that is already quantised loses
precision a second time.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io  # noqa: E402


def requantize(src, dst, dtype):
    """Writes dst: src with its matrices as dtype. Returns the names re-encoded."""
    r = gguf_io.GGUFReader(src)
    w = gguf_io.GGUFWriter(dst, r.alignment)
    for key, value in r.kv.items():
        vtype = r.kv_type[key]
        if key == "general.alignment":
            continue    # the writer records it from its alignment
        if vtype.startswith("arr["):
            w.add_arr(key, vtype[4:-1], value)
        else:
            w.add_kv(key, vtype, value)
    block = gguf_io.TENSOR_TYPES[dtype][1]
    changed = []
    for name, t in r.tensors.items():
        matrix = len(t.ne) >= 2 and t.ne[1] > 1 and t.ne[0] % block == 0
        w.add_tensor(name, t.array(), dtype if matrix else t.dtype)
        if matrix:
            changed.append(name)
    w.write()
    return changed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--type", required=True, choices=sorted(gguf_io.TENSOR_TYPES))
    a = ap.parse_args(argv)
    changed = requantize(a.src, a.dst, a.type)
    print("requantize: %d matrices as %s in %s" % (len(changed), a.type, a.dst))


if __name__ == "__main__":
    main()
