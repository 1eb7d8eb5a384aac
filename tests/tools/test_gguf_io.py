#!/usr/bin/python3
"""test_gguf_io.py — checks tools/gguf_io.py, the writer and dequantisers every test model relies on.

1. Dequantisers against a second, deliberately naive implementation: per-element
   loops transcribed from the table of docs/gguf-vlm-spec.md §1.4, run on random
   bytes (so every bit of every field is exercised, not only what our quantisers
   happen to produce).
2. quantise -> dequantise round trips within each type's error bound.
3. writer -> reader round trip of every KV value type and of tensors of every
   type, with the byte layout of §1.3 (offsets, alignment padding) checked
   directly on the file.
4. When llama.cpp's gguf-py is importable (PYTHONPATH), its reader and its
   dequantisers must agree with ours; otherwise that part is skipped.
Run by `make check`; exit status 0 = pass.
"""

import os
import struct
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import gguf_io  # noqa: E402

RNG = np.random.default_rng(7)


def half(b, o):
    return float(np.frombuffer(bytes(b[o:o + 2]), "<f2")[0])


def scale_min_k4(j, s):
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


def naive_block(dtype, b):
    """One block's values, element by element, as spec §1.4 words it."""
    y = []
    if dtype in ("q4_0", "q4_1", "q5_0", "q5_1"):
        d = half(b, 0)
        m = half(b, 2) if dtype in ("q4_1", "q5_1") else 0.0
        o = 4 if dtype in ("q4_1", "q5_1") else 2
        qh = 0
        if dtype in ("q5_0", "q5_1"):
            qh = struct.unpack("<I", bytes(b[o:o + 4]))[0]
            o += 4
        qs = b[o:o + 16]
        q = [0] * 32
        for j in range(16):
            q[j] = qs[j] & 15
            q[j + 16] = qs[j] >> 4
            if dtype in ("q5_0", "q5_1"):
                q[j] |= ((qh >> j) & 1) << 4
                q[j + 16] |= ((qh >> (j + 16)) & 1) << 4
        off = {"q4_0": 8, "q5_0": 16}.get(dtype, 0)
        return [(v - off) * d + m for v in q]
    if dtype == "q8_0":
        d = half(b, 0)
        return [int(np.int8(v)) * d for v in b[2:34]]
    if dtype in ("q4_k", "q5_k"):
        d, dmin = half(b, 0), half(b, 2)
        s = b[4:16]
        qh = b[16:48] if dtype == "q5_k" else None
        qs = b[-128:]
        y = [0.0] * 256
        for g in range(4):
            sc1, m1 = scale_min_k4(2 * g, s)
            sc2, m2 = scale_min_k4(2 * g + 1, s)
            for l in range(32):
                lo, hi = qs[32 * g + l] & 15, qs[32 * g + l] >> 4
                if qh is not None:
                    lo += 16 if qh[l] & (1 << (2 * g)) else 0
                    hi += 16 if qh[l] & (1 << (2 * g + 1)) else 0
                y[64 * g + l] = np.float32(d * sc1) * lo - np.float32(dmin * m1)
                y[64 * g + 32 + l] = np.float32(d * sc2) * hi - np.float32(dmin * m2)
        return y
    if dtype == "q6_k":
        ql_all, qh_all = b[0:128], b[128:192]
        sc_all = np.frombuffer(bytes(b[192:208]), np.int8)
        d = half(b, 208)
        y = [0.0] * 256
        for h in range(2):
            ql, qh, sc = ql_all[64 * h:], qh_all[32 * h:], sc_all[8 * h:]
            for l in range(32):
                is_ = l // 16
                q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32
                q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32
                q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                y[128 * h + l] = d * sc[is_] * q1
                y[128 * h + l + 32] = d * sc[is_ + 2] * q2
                y[128 * h + l + 64] = d * sc[is_ + 4] * q3
                y[128 * h + l + 96] = d * sc[is_ + 6] * q4
        return y
    raise AssertionError(dtype)


def random_blocks(dtype, nb):
    """nb random blocks whose half fields are finite (random bits elsewhere)."""
    _, _, bsz = gguf_io.TENSOR_TYPES[dtype]
    b = RNG.integers(0, 256, size=(nb, bsz), dtype=np.uint8)
    half_at = {"q6_k": [208]}.get(dtype, [0, 2] if dtype in ("q4_1", "q5_1", "q4_k", "q5_k") else [0])
    for o in half_at:
        b[:, o:o + 2] = np.frombuffer(RNG.uniform(-2, 2, nb).astype("<f2").tobytes(),
                                      np.uint8).reshape(nb, 2)
    return b


QUANTS = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k"]


class Dequantisers(unittest.TestCase):
    def test_against_naive_spec_loops(self):
        for dtype in QUANTS:
            with self.subTest(dtype=dtype):
                b = random_blocks(dtype, 6)
                blk = gguf_io.TENSOR_TYPES[dtype][1]
                got = gguf_io.dequantize(b.tobytes(), dtype, (6 * blk,))
                want = np.array([v for row in b for v in naive_block(dtype, row)], np.float32)
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    def test_float_types_exact(self):
        x = RNG.standard_normal(64).astype(np.float32)
        for dtype, ref in (("f32", x), ("f16", x.astype(np.float16).astype(np.float32))):
            self.assertTrue(np.array_equal(gguf_io.dequantize(gguf_io.quantize(x, dtype), dtype, x.shape), ref))
        # bf16: the upper half of the f32 bits, rounded to nearest even
        v = np.array([1.0, 1.00390625, 1.01171875, -3.5, 0.0], np.float32)   # ties and exact values
        got = gguf_io.dequantize(gguf_io.quantize(v, "bf16"), "bf16", v.shape)
        np.testing.assert_array_equal(got, np.array([1.0, 1.0, 1.015625, -3.5, 0.0], np.float32))


class RoundTrip(unittest.TestCase):
    # max |error| allowed, in units of each row's max |x|; a half step of the
    # coarsest grid plus the 6-bit/f16 scale rounding of the K-quants.
    BOUND = {"f16": 1e-3, "bf16": 8e-3, "q8_0": 1 / 127, "q4_0": 1 / 8 + 1e-3, "q4_1": 1 / 15,
             "q5_0": 1 / 16 + 1e-3, "q5_1": 1 / 31, "q4_k": 0.15, "q5_k": 0.08, "q6_k": 0.05}

    def test_quantise_dequantise(self):
        x = (RNG.standard_normal((4, 512)) * RNG.uniform(0.01, 10, (4, 1))).astype(np.float32)
        x[0, :256] = 0                         # an all-zero block must stay zero
        x[1, :256] = np.abs(x[1, :256])        # all-positive blocks (min > 0)
        x[2, :256] = -np.abs(x[2, :256])       # all-negative blocks
        for dtype, bound in self.BOUND.items():
            with self.subTest(dtype=dtype):
                y = gguf_io.dequantize(gguf_io.quantize(x, dtype), dtype, x.shape)
                err = np.abs(y - x).max(axis=1) / np.abs(x).max(axis=1)
                self.assertLess(err.max(), bound)
                self.assertTrue(np.all(y[0, :256] == 0))
                # uniform rounding error has rms = step/sqrt(12) ~ bound/1.7
                rms = np.sqrt(((y - x) ** 2).mean(axis=1)) / np.abs(x).max(axis=1)
                self.assertLess(rms.max(), bound / 1.5)

    def test_block_size_enforced(self):
        with self.assertRaises(ValueError):
            gguf_io.quantize(np.zeros(48, np.float32), "q8_0")


class WriterReader(unittest.TestCase):
    def setUp(self):
        fd, self.path = tempfile.mkstemp(suffix=".gguf")
        os.close(fd)

    def tearDown(self):
        os.unlink(self.path)

    SCALARS = [("u8", 200), ("i8", -100), ("u16", 60000), ("i16", -30000), ("u32", 4000000000),
               ("i32", -2000000000), ("f32", 0.25), ("bool", True), ("str", "héllo Ġworld"),
               ("u64", 1 << 60), ("i64", -(1 << 60)), ("f64", 1e-300)]

    def write_sample(self, alignment):
        w = gguf_io.GGUFWriter(self.path, alignment=alignment)
        for vt, v in self.SCALARS:
            getattr(w, "add_" + vt)("k." + vt, v)
            w.add_arr("a." + vt, vt, [v, v])
        w.add_arr("a.empty", "i32", [])
        tensors = {}
        for i, dtype in enumerate(gguf_io.TENSOR_TYPES):
            x = RNG.standard_normal((3, 256)).astype(np.float32)
            w.add_tensor(f"t{i}.{dtype}", x, dtype)
            tensors[f"t{i}.{dtype}"] = (x, dtype)
        w.add_tensor("odd", RNG.standard_normal((2, 3, 5)).astype(np.float32), "f32")
        w.write()
        return tensors

    def test_round_trip(self):
        for alignment in (32, 64):
            tensors = self.write_sample(alignment)
            r = gguf_io.GGUFReader(self.path)
            for vt, v in self.SCALARS:
                self.assertEqual(r.kv_type["k." + vt], vt)
                self.assertEqual(r.kv_type["a." + vt], f"arr[{vt}]")
                self.assertEqual(r.kv["k." + vt], np.float32(v) if vt == "f32" else v)
                self.assertEqual(r.kv["a." + vt], [r.kv["k." + vt]] * 2)
            self.assertEqual(r.kv["a.empty"], [])
            self.assertEqual(r.alignment, alignment)
            self.assertEqual(r.kv.get("general.alignment", 32), alignment)
            for name, (x, dtype) in tensors.items():
                t = r.tensors[name]
                self.assertEqual((t.dtype, t.ne), (dtype, [256, 3]))
                self.assertEqual(t.raw, gguf_io.quantize(x, dtype))
                np.testing.assert_array_equal(t.array(), gguf_io.dequantize(t.raw, dtype, x.shape))
            self.assertEqual(r.tensors["odd"].ne, [5, 3, 2])
            self.assertEqual(r.tensors["odd"].array().shape, (2, 3, 5))

    def test_layout_on_disk(self):
        """Offsets are the padded running sum, data starts aligned, padding is zero (spec §1.3)."""
        self.write_sample(64)
        r = gguf_io.GGUFReader(self.path)
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertEqual(data[:4], b"GGUF")
        self.assertEqual(struct.unpack("<Iqq", data[4:24]), (3, len(r.tensors), len(r.kv)))
        self.assertEqual(r.data_start % 64, 0)
        expect = 0
        for t in r.tensors.values():
            self.assertEqual(t.offset, expect)
            end = r.data_start + t.offset + t.nbytes
            expect += (t.nbytes + 63) // 64 * 64
            self.assertEqual(data[end:r.data_start + expect], b"\0" * (r.data_start + expect - end))
        self.assertEqual(len(data), r.data_start + expect)

    def test_reader_rejects(self):
        self.write_sample(32)
        with open(self.path, "rb") as f:
            good = f.read()
        r = gguf_io.GGUFReader(self.path)
        first = next(iter(r.tensors.values()))
        bad_offset = bytearray(good)
        # the second tensor's offset field is the last 8 bytes of its info record
        name = list(r.tensors)[1].encode()
        pos = good.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4 + 16 + 4
        bad_offset[pos:pos + 8] = struct.pack("<Q", first.nbytes + 1)
        # truncated header, version 4, a tensor offset off by one, the last
        # tensor's alignment padding cut (llama.cpp reads the padded blob)
        bad_version = b"GGUF" + struct.pack("<I", 4) + good[8:]
        for i, blob in enumerate((good[:10], bad_version, bytes(bad_offset), good[:-1])):
            with self.subTest(case=i):
                with open(self.path, "wb") as f:
                    f.write(blob)
                with self.assertRaises(ValueError):
                    gguf_io.GGUFReader(self.path)

    def test_writer_rejects(self):
        w = gguf_io.GGUFWriter(self.path)
        w.add_u32("x", 1)
        with self.assertRaises(ValueError):
            w.add_u32("x", 2)
        with self.assertRaises(ValueError):
            w.add_str("", "empty key")
        with self.assertRaises(ValueError):
            w.add_tensor("k", np.zeros((2, 100), np.float32), "q4_k")

    def test_tokenizer_padding(self):
        tok = {"tokens": ["<|endoftext|>", "a", "b", "ab"], "token_type": [3, 1, 1, 1],
               "merges": ["a b"], "bos_token_id": 0, "eos_token_id": 0,
               "unknown_token_id": 0, "padding_token_id": 0, "add_bos_token": False}
        w = gguf_io.GGUFWriter(self.path)
        gguf_io.add_tokenizer(w, tok, vocab_size=7)
        w.write()
        r = gguf_io.GGUFReader(self.path)
        self.assertEqual(r.kv["tokenizer.ggml.tokens"][:4], tok["tokens"])
        self.assertEqual(len(r.kv["tokenizer.ggml.tokens"]), 7)
        self.assertEqual(r.kv["tokenizer.ggml.token_type"], [3, 1, 1, 1, 1, 1, 1])
        self.assertEqual(r.kv_type["tokenizer.ggml.token_type"], "arr[i32]")
        self.assertEqual(r.kv_type["tokenizer.ggml.bos_token_id"], "u32")
        self.assertIs(r.kv["tokenizer.ggml.add_bos_token"], False)
        self.assertNotIn("tokenizer.chat_template", r.kv)


class Requantize(unittest.TestCase):
    """tools/requantize.py: matrices re-encoded, everything else as it was."""

    def test_matrices_requantized_rest_kept(self):
        import requantize
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "in.gguf"), os.path.join(d, "out.gguf")
            w = gguf_io.GGUFWriter(src, alignment=64)
            w.add_str("general.architecture", "llama")
            w.add_arr("tokenizer.ggml.tokens", "str", ["a", "b", "Ġc"])
            w.add_u32("llama.block_count", 2)
            x = RNG.standard_normal((4, 256)).astype(np.float32)
            w.add_tensor("m.weight", x, "f32")
            w.add_tensor("v.weight", RNG.standard_normal(256).astype(np.float32), "f32")
            w.add_tensor("odd.weight", RNG.standard_normal((4, 48)).astype(np.float32), "f16")
            w.write()
            self.assertEqual(requantize.requantize(src, dst, "q8_0"), ["m.weight"])
            a, b = gguf_io.GGUFReader(src), gguf_io.GGUFReader(dst)
            self.assertEqual((b.kv, b.kv_type, b.alignment), (a.kv, a.kv_type, 64))
            self.assertEqual(b.tensors["m.weight"].dtype, "q8_0")
            self.assertEqual(b.tensors["m.weight"].raw, gguf_io.quantize(x, "q8_0"))
            for name in ("v.weight", "odd.weight"):
                self.assertEqual((b.tensors[name].dtype, b.tensors[name].raw),
                                 (a.tensors[name].dtype, a.tensors[name].raw))


class AgainstGGUFPy(unittest.TestCase):
    """Cross-check with llama.cpp's gguf-py when it is on PYTHONPATH (never in CI)."""

    def setUp(self):
        try:
            import gguf
        except ImportError:
            self.skipTest("gguf-py not importable")
        self.gguf = gguf
        fd, self.path = tempfile.mkstemp(suffix=".gguf")
        os.close(fd)

    def tearDown(self):
        os.unlink(self.path)

    def test_reader_and_dequantisers_agree(self):
        from gguf import quants
        w = gguf_io.GGUFWriter(self.path, alignment=64)
        w.add_u32("k.u32", 7)
        w.add_arr("k.arr", "str", ["x", "Ġy"])
        arrays = {}
        for dtype in gguf_io.TENSOR_TYPES:
            arrays[dtype] = RNG.standard_normal((2, 512)).astype(np.float32)
            w.add_tensor(dtype, arrays[dtype], dtype)
        w.write()
        theirs = self.gguf.GGUFReader(self.path)
        self.assertEqual(theirs.fields["k.u32"].contents(), 7)
        self.assertEqual(theirs.fields["k.arr"].contents(), ["x", "Ġy"])
        mine = gguf_io.GGUFReader(self.path)
        for t in theirs.tensors:
            m = mine.tensors[t.name]
            self.assertEqual(list(t.shape), m.ne)
            self.assertEqual(t.tensor_type.name.lower(), m.dtype)
            self.assertEqual(t.data.tobytes(), m.raw)
            ref = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            np.testing.assert_array_equal(ref.reshape(m.shape), m.array())


if __name__ == "__main__":
    unittest.main(verbosity=1)
