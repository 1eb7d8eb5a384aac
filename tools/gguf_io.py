"""gguf_io.py — an independent GGUF v3 writer and reader with numpy quantisers.

This is the test side's own implementation of the container and the weight
types described in docs/gguf-vlm-spec.md §1 (it does not use llama.cpp's
gguf-py, so that it can catch the C reader and llama.cpp disagreeing with the
spec). It writes every test model and its dequantisers are the ones the
PyTorch reference (tools/reference.py) computes with.

    w = GGUFWriter(path, alignment=32)
    w.add_u32("llama.block_count", 2)            # also add_i32/f32/bool/str/u64/...
    w.add_arr("tokenizer.ggml.token_type", "i32", [1, 1, 3])
    w.add_tensor("blk.0.attn_q.weight", W, "q8_0")  # W: float32, PyTorch order [out, in]
    w.write()

    r = GGUFReader(path)
    r.kv["llama.block_count"], r.kv_type["llama.block_count"]     # 2, 'u32'
    r.kv_type["tokenizer.ggml.tokens"]                             # 'arr[str]'
    t = r.tensors["blk.0.attn_q.weight"]; t.dtype, t.ne, t.raw, t.array()

Tensor arrays are in PyTorch order: a [out, in] array is stored row by row, so
its GGUF ne is the reversed shape, [in, out]. Quantisation runs along the last
array axis (ne0), which must be a multiple of the type's block size.

Quantisers only need to produce valid blocks (any valid encoding is fine for
random weights); they follow ggml's reference rounding for the legacy types and
use a plain per-sub-block min/max scale for the K-quants. Dequantisers follow
spec §1.4 exactly, in float32.

Needs numpy (Debian's /usr/bin/python3).
"""

import mmap
import struct

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

# KV value types (spec §1.2): name -> (id, struct format or None for str/arr).
VALUE_TYPES = {
    "u8": (0, "<B"), "i8": (1, "<b"), "u16": (2, "<H"), "i16": (3, "<h"),
    "u32": (4, "<I"), "i32": (5, "<i"), "f32": (6, "<f"), "bool": (7, "<?"),
    "str": (8, None), "arr": (9, None), "u64": (10, "<Q"), "i64": (11, "<q"),
    "f64": (12, "<d"),
}
_VTYPE_BY_ID = {v[0]: k for k, v in VALUE_TYPES.items()}
# numpy dtypes of fixed-size array elements, for fast array reads.
_NP_ELEM = {"u8": "<u1", "i8": "<i1", "u16": "<u2", "i16": "<i2", "u32": "<u4",
            "i32": "<i4", "f32": "<f4", "u64": "<u8", "i64": "<i8", "f64": "<f8"}

# Tensor types (spec §1.4): name -> (ggml type id, elements per block, bytes per block).
TENSOR_TYPES = {
    "f32": (0, 1, 4), "f16": (1, 1, 2), "q4_0": (2, 32, 18), "q4_1": (3, 32, 20),
    "q5_0": (6, 32, 22), "q5_1": (7, 32, 24), "q8_0": (8, 32, 34),
    "q4_k": (12, 256, 144), "q5_k": (13, 256, 176), "q6_k": (14, 256, 210),
    "bf16": (30, 1, 2),
}
_TTYPE_BY_ID = {v[0]: k for k, v in TENSOR_TYPES.items()}


def _pad(n, align):
    return (n + align - 1) // align * align


# ---------------------------------------------------------------------------
# half helpers

def _f16_bytes(v):
    """float32 array [n] -> uint8 [n, 2] (IEEE half, round to nearest even)."""
    return np.ascontiguousarray(v.astype(np.float16)).view(np.uint8).reshape(-1, 2)


def _f16_read(b):
    """uint8 [n, 2] -> float32 [n]."""
    return np.ascontiguousarray(b).view("<f2").reshape(-1).astype(np.float32)


def _roundf(v):
    """C roundf (half away from zero), as ggml's reference quantisers use."""
    return np.trunc(v + np.copysign(np.float32(0.5), v))


def _safe_inv(d):
    """1/d where d != 0, else 0 (an all-zero block quantises to zeros)."""
    out = np.zeros_like(d)
    nz = d != 0
    out[nz] = 1.0 / d[nz]
    return out


def _signed_absmax(x):
    """Per row of x [nb, n]: the value with the largest magnitude (keeps its sign)."""
    idx = np.argmax(np.abs(x), axis=1)
    return x[np.arange(x.shape[0]), idx]


# ---------------------------------------------------------------------------
# quantisers: x float32 [nb, block elems] -> uint8 [nb, block bytes]

def _q_f32(x):
    return np.ascontiguousarray(x.astype("<f4")).view(np.uint8)


def _q_f16(x):
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8)


def _q_bf16(x):
    # Round to nearest even on the upper 16 bits; NaN stays a quiet NaN.
    u = np.ascontiguousarray(x.astype("<f4")).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    r[nan] = ((u[nan] >> 16) | 64).astype(np.uint16)
    return r.astype("<u2").view(np.uint8)


def _pack_nibbles(q):
    """q uint8 [nb, 32] in 0..15 -> [nb, 16]: low nibble elem j, high nibble elem j+16."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _qh_bits(q):
    """q [nb, 32] in 0..31 -> the fifth bits as a LE u32, as uint8 [nb, 4]."""
    bits = (q >> 4).astype(np.uint32) & 1
    qh = (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4)


def _q_q4_0(x):
    mx = _signed_absmax(x)
    d = mx / np.float32(-8)
    q = np.minimum(15, np.trunc(x * _safe_inv(d)[:, None] + np.float32(8.5))).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _q_q4_1(x):
    mn, mx = x.min(axis=1), x.max(axis=1)
    d = (mx - mn) / np.float32(15)
    q = np.minimum(15, np.trunc((x - mn[:, None]) * _safe_inv(d)[:, None] + np.float32(0.5)))
    q = q.astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(mn), _pack_nibbles(q)], axis=1)


def _q_q5_0(x):
    mx = _signed_absmax(x)
    d = mx / np.float32(-16)
    q = np.minimum(31, np.trunc(x * _safe_inv(d)[:, None] + np.float32(16.5))).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _qh_bits(q), _pack_nibbles(q & 15)], axis=1)


def _q_q5_1(x):
    mn, mx = x.min(axis=1), x.max(axis=1)
    d = (mx - mn) / np.float32(31)
    q = np.minimum(31, np.trunc((x - mn[:, None]) * _safe_inv(d)[:, None] + np.float32(0.5)))
    q = q.astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(mn), _qh_bits(q), _pack_nibbles(q & 15)],
                          axis=1)


def _q_q8_0(x):
    d = np.abs(x).max(axis=1) / np.float32(127)
    q = _roundf(x * _safe_inv(d)[:, None]).astype(np.int8)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def _kquant_scales(x, nmax):
    """Shared part of Q4_K/Q5_K: x [nb, 256] -> (d/dmin bytes [nb, 4], scales [nb, 12], q [nb, 256]).

    Each of the 8 sub-blocks of 32 gets y = d*sc*q - dmin*m with 6-bit sc and m;
    here sc covers the sub-block's range [min(x,0), max(x)] in nmax steps.
    """
    nb = x.shape[0]
    xs = x.reshape(nb, 8, 32)
    mins = np.maximum(0, -xs.min(axis=2))                       # [nb, 8], >= 0
    scales = (xs.max(axis=2) + mins) / np.float32(nmax)         # [nb, 8], >= 0
    d = scales.max(axis=1) / np.float32(63)
    dmin = mins.max(axis=1) / np.float32(63)
    d16, dmin16 = _f16_bytes(d), _f16_bytes(dmin)
    d_eff, dmin_eff = _f16_read(d16), _f16_read(dmin16)
    sc = np.clip(_roundf(scales * _safe_inv(d_eff)[:, None]), 0, 63).astype(np.uint8)
    m = np.clip(_roundf(mins * _safe_inv(dmin_eff)[:, None]), 0, 63).astype(np.uint8)
    # The effective values the dequantiser will see (f32 products, spec §1.4).
    d1 = d_eff[:, None] * sc.astype(np.float32)                 # [nb, 8]
    m1 = dmin_eff[:, None] * m.astype(np.float32)
    q = np.clip(_roundf((xs + m1[:, :, None]) * _safe_inv(d1)[:, :, None]), 0, nmax)
    q = q.astype(np.uint8).reshape(nb, 256)
    # 12-byte packing, the inverse of get_scale_min_k4.
    s = np.zeros((nb, 12), np.uint8)
    s[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    return np.concatenate([d16, dmin16], axis=1), s, q


def _kquant_qs(q):
    """q [nb, 256] -> qs [nb, 128]: group g byte l = elem 64g+l | elem 64g+32+l << 4."""
    g = q.reshape(-1, 4, 2, 32) & 15
    return (g[:, :, 0, :] | (g[:, :, 1, :] << 4)).reshape(-1, 128).astype(np.uint8)


def _q_q4_k(x):
    dd, s, q = _kquant_scales(x, 15)
    return np.concatenate([dd, s, _kquant_qs(q)], axis=1)


def _q_q5_k(x):
    dd, s, q = _kquant_scales(x, 31)
    hi = (q.reshape(-1, 4, 2, 32) >> 4).astype(np.uint8)        # [nb, g, half, l]
    shift = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
    qh = (hi << shift[None, :, :, None]).sum(axis=(1, 2)).astype(np.uint8)  # [nb, 32]
    return np.concatenate([dd, s, qh, _kquant_qs(q)], axis=1)


def _q_q6_k(x):
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    scales = np.abs(xs).max(axis=2) / np.float32(31)            # [nb, 16]
    d = scales.max(axis=1) / np.float32(127)
    d16 = _f16_bytes(d)
    d_eff = _f16_read(d16)
    sc = np.clip(_roundf(scales * _safe_inv(d_eff)[:, None]), 0, 127).astype(np.int8)
    d1 = d_eff[:, None] * sc.astype(np.float32)
    q = np.clip(_roundf(xs * _safe_inv(d1)[:, :, None]), -32, 31) + 32
    q = q.astype(np.uint8).reshape(nb, 2, 4, 32)                # [nb, half, k, l]: elem 128h+32k+l
    ql = np.concatenate([(q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4),
                         (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)], axis=2)  # [nb, 2, 64]
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) |
          ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6))  # [nb, 2, 32]
    return np.concatenate([ql.reshape(nb, 128).astype(np.uint8), qh.reshape(nb, 64).astype(np.uint8),
                           sc.view(np.uint8), d16], axis=1)


# ---------------------------------------------------------------------------
# dequantisers: b uint8 [nb, block bytes] -> float32 [nb, block elems] (spec §1.4)

def _dq_f32(b):
    return np.ascontiguousarray(b).view("<f4").astype(np.float32)


def _dq_f16(b):
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _dq_bf16(b):
    u = np.ascontiguousarray(b).view("<u2").astype(np.uint32) << 16
    return u.view(np.float32)


def _unpack_nibbles(qs):
    """[nb, 16] -> [nb, 32]: elem j = low nibble of byte j, elem j+16 = high nibble."""
    return np.concatenate([qs & 15, qs >> 4], axis=1)


def _fifth_bits(qh):
    """qh uint8 [nb, 4] (LE u32) -> [nb, 32] bit j of it, as 0 or 16."""
    u = np.ascontiguousarray(qh).view("<u4").reshape(-1, 1)
    return (((u >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)


def _dq_q4_0(b):
    d = _f16_read(b[:, 0:2])
    q = _unpack_nibbles(b[:, 2:18]).astype(np.float32) - 8
    return q * d[:, None]


def _dq_q4_1(b):
    d, m = _f16_read(b[:, 0:2]), _f16_read(b[:, 2:4])
    q = _unpack_nibbles(b[:, 4:20]).astype(np.float32)
    return q * d[:, None] + m[:, None]


def _dq_q5_0(b):
    d = _f16_read(b[:, 0:2])
    q = (_unpack_nibbles(b[:, 6:22]) | _fifth_bits(b[:, 2:6])).astype(np.float32) - 16
    return q * d[:, None]


def _dq_q5_1(b):
    d, m = _f16_read(b[:, 0:2]), _f16_read(b[:, 2:4])
    q = (_unpack_nibbles(b[:, 8:24]) | _fifth_bits(b[:, 4:8])).astype(np.float32)
    return q * d[:, None] + m[:, None]


def _dq_q8_0(b):
    d = _f16_read(b[:, 0:2])
    return np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(np.float32) * d[:, None]


def _scale_min_k4(s):
    """s uint8 [nb, 12] -> (sc, m) uint8 [nb, 8] (get_scale_min_k4 for j = 0..7)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _dq_kquant(b, qh):
    """Q4_K / Q5_K body; qh is None for Q4_K, else uint8 [nb, 32]."""
    nb = b.shape[0]
    d, dmin = _f16_read(b[:, 0:2]), _f16_read(b[:, 2:4])
    sc, m = _scale_min_k4(b[:, 4:16])
    qs = b[:, -128:].reshape(nb, 4, 1, 32)                      # group g, byte l
    q = np.concatenate([qs & 15, qs >> 4], axis=2)              # [nb, g, half, l]
    if qh is not None:
        shift = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
        q = q + (((qh[:, None, None, :] >> shift[None, :, :, None]) & 1) << 4)
    d1 = (d[:, None] * sc.astype(np.float32)).reshape(nb, 4, 2, 1)   # sub-block 2g+half
    m1 = (dmin[:, None] * m.astype(np.float32)).reshape(nb, 4, 2, 1)
    return (d1 * q.astype(np.float32) - m1).reshape(nb, 256)


def _dq_q4_k(b):
    return _dq_kquant(b, None)


def _dq_q5_k(b):
    return _dq_kquant(b, b[:, 16:48])


def _dq_q6_k(b):
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 64)
    qh = b[:, 128:192].reshape(nb, 2, 32)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)  # [nb, 16]
    d = _f16_read(b[:, 208:210])
    q = np.stack([(ql[:, :, 0:32] & 15) | (((qh >> 0) & 3) << 4),
                  (ql[:, :, 32:64] & 15) | (((qh >> 2) & 3) << 4),
                  (ql[:, :, 0:32] >> 4) | (((qh >> 4) & 3) << 4),
                  (ql[:, :, 32:64] >> 4) | (((qh >> 6) & 3) << 4)], axis=2)  # [nb, half, k, l]
    q = q.astype(np.float32) - 32
    d1 = (d[:, None] * sc).reshape(nb, 16, 1)                   # sub-block of 16 elems
    return (d1 * q.reshape(nb, 16, 16)).reshape(nb, 256)


_QUANTISERS = {
    "f32": _q_f32, "f16": _q_f16, "bf16": _q_bf16, "q4_0": _q_q4_0, "q4_1": _q_q4_1,
    "q5_0": _q_q5_0, "q5_1": _q_q5_1, "q8_0": _q_q8_0, "q4_k": _q_q4_k, "q5_k": _q_q5_k,
    "q6_k": _q_q6_k,
}
_DEQUANTISERS = {
    "f32": _dq_f32, "f16": _dq_f16, "bf16": _dq_bf16, "q4_0": _dq_q4_0, "q4_1": _dq_q4_1,
    "q5_0": _dq_q5_0, "q5_1": _dq_q5_1, "q8_0": _dq_q8_0, "q4_k": _dq_q4_k, "q5_k": _dq_q5_k,
    "q6_k": _dq_q6_k,
}


def quantize(array, dtype):
    """float array (any shape, last axis a multiple of the block) -> bytes in GGUF layout."""
    _, blk, _ = TENSOR_TYPES[dtype]
    x = np.asarray(array, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % blk:
        raise ValueError(f"{dtype}: last dimension {x.shape} not a multiple of {blk}")
    return _QUANTISERS[dtype](x.reshape(-1, blk)).tobytes()


def dequantize(raw, dtype, shape):
    """bytes in GGUF layout -> float32 array of the given (PyTorch-order) shape."""
    _, blk, bsz = TENSOR_TYPES[dtype]
    n = int(np.prod(shape, dtype=np.int64))
    if n % blk or len(raw) != n // blk * bsz:
        raise ValueError(f"{dtype}: {len(raw)} bytes do not hold {shape}")
    b = np.frombuffer(raw, dtype=np.uint8).reshape(n // blk, bsz)
    return _DEQUANTISERS[dtype](b).reshape(shape).astype(np.float32, copy=False)


def tensor_nbytes(dtype, ne):
    """Bytes of a tensor of GGUF shape ne (spec §1.3)."""
    _, blk, bsz = TENSOR_TYPES[dtype]
    n = 1
    for v in ne[1:]:
        n *= int(v)
    return int(ne[0]) // blk * bsz * n


# ---------------------------------------------------------------------------
# writer

def _enc_str(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _enc_scalar(vtype, v):
    if vtype == "str":
        return _enc_str(v)
    fmt = VALUE_TYPES[vtype][1]
    if fmt is None:
        raise ValueError(f"not a scalar value type: {vtype}")
    return struct.pack(fmt, v)


class GGUFWriter:
    """Collects KVs and tensors, then write() emits one GGUF v3 file.

    KVs and tensors are written in the order they were added. An alignment
    other than 32 is recorded as general.alignment (u32), as readers require.
    """

    def __init__(self, path, alignment=DEFAULT_ALIGNMENT):
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError("alignment must be a power of two")
        self.path = path
        self.alignment = alignment
        self._kv = {}          # key -> (vtype id, encoded value)
        self._tensors = []     # (name, ne, dtype, float32 array)
        self._names = set()
        if alignment != DEFAULT_ALIGNMENT:
            self.add_u32("general.alignment", alignment)

    def add_kv(self, key, vtype, value):
        """Adds one scalar KV of value type vtype ('u32', 'str', ...)."""
        self._put(key, VALUE_TYPES[vtype][0], _enc_scalar(vtype, value))

    def add_arr(self, key, elem_vtype, values):
        """Adds an ARRAY KV whose elements all have value type elem_vtype."""
        if elem_vtype == "arr":
            raise ValueError("arrays of arrays are not allowed")
        values = list(values)
        if elem_vtype in _NP_ELEM:
            body = np.asarray(values, dtype=_NP_ELEM[elem_vtype]).tobytes()
        else:
            body = b"".join(_enc_scalar(elem_vtype, v) for v in values)
        head = struct.pack("<iQ", VALUE_TYPES[elem_vtype][0], len(values))
        self._put(key, VALUE_TYPES["arr"][0], head + body)

    def _put(self, key, vid, enc):
        if not key:
            raise ValueError("empty key")
        if key in self._kv:
            raise ValueError(f"duplicate key {key}")
        self._kv[key] = (vid, enc)

    def add_tensor(self, name, array, dtype):
        """Adds a tensor from a float array in PyTorch order; quantised at write()."""
        if dtype not in TENSOR_TYPES:
            raise ValueError(f"unknown tensor type {dtype}")
        if name in self._names:
            raise ValueError(f"duplicate tensor {name}")
        x = np.asarray(array, dtype=np.float32)
        if not 1 <= x.ndim <= 4:
            raise ValueError(f"{name}: tensors have 1 to 4 dimensions")
        ne = list(reversed(x.shape))
        if ne[0] % TENSOR_TYPES[dtype][1]:
            raise ValueError(f"{name}: ne0={ne[0]} not a multiple of the {dtype} block")
        self._names.add(name)
        self._tensors.append((name, ne, dtype, x))

    def write(self):
        offsets, off = [], 0
        for _, ne, dtype, _ in self._tensors:
            offsets.append(off)
            off += _pad(tensor_nbytes(dtype, ne), self.alignment)
        with open(self.path, "wb") as f:
            f.write(GGUF_MAGIC + struct.pack("<Iqq", GGUF_VERSION, len(self._tensors), len(self._kv)))
            for key, (vid, enc) in self._kv.items():
                f.write(_enc_str(key) + struct.pack("<i", vid) + enc)
            for (name, ne, dtype, _), o in zip(self._tensors, offsets):
                f.write(_enc_str(name) + struct.pack("<I", len(ne)))
                f.write(struct.pack(f"<{len(ne)}q", *ne))
                f.write(struct.pack("<iQ", TENSOR_TYPES[dtype][0], o))
            f.write(b"\0" * (_pad(f.tell(), self.alignment) - f.tell()))
            for name, ne, dtype, x in self._tensors:
                data = quantize(x, dtype)
                f.write(data + b"\0" * (_pad(len(data), self.alignment) - len(data)))


# Generates add_u8 ... add_f64, add_bool, add_str (add_u32(key, v) etc.).
for _vt in VALUE_TYPES:
    if _vt != "arr":
        setattr(GGUFWriter, f"add_{_vt}",
                lambda self, key, value, _vt=_vt: self.add_kv(key, _vt, value))


def add_tokenizer(w, tok, vocab_size=None):
    """Writes the tokenizer.ggml.* keys (and tokenizer.chat_template) of tokenizer dict tok.

    With vocab_size the vocabulary is padded with NORMAL tokens "[PAD<id>]":
    no merge produces them, so BPE can never emit them.
    """
    tokens = list(tok["tokens"])
    types = list(tok["token_type"])
    if len(types) != len(tokens):
        raise ValueError("tokens and token_type differ in length")
    if vocab_size is not None:
        if vocab_size < len(tokens):
            raise ValueError(f"vocab_size {vocab_size} < {len(tokens)} tokens")
        known = set(tokens)
        for i in range(len(tokens), vocab_size):
            pad = f"[PAD{i}]"
            if pad in known:
                raise ValueError(f"padding token {pad} already in the vocabulary")
            tokens.append(pad)
            types.append(1)
    w.add_str("tokenizer.ggml.model", tok.get("model", "gpt2"))
    w.add_str("tokenizer.ggml.pre", tok.get("pre", "smollm"))
    w.add_arr("tokenizer.ggml.tokens", "str", tokens)
    w.add_arr("tokenizer.ggml.token_type", "i32", types)
    w.add_arr("tokenizer.ggml.merges", "str", tok["merges"])
    for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        if k in tok:
            w.add_u32("tokenizer.ggml." + k, int(tok[k]))
    if "add_bos_token" in tok:
        w.add_bool("tokenizer.ggml.add_bos_token", bool(tok["add_bos_token"]))
    if "add_eos_token" in tok:
        w.add_bool("tokenizer.ggml.add_eos_token", bool(tok["add_eos_token"]))
    if tok.get("chat_template") is not None:
        w.add_str("tokenizer.chat_template", tok["chat_template"])


# ---------------------------------------------------------------------------
# reader

class GGUFTensor:
    """One tensor of a GGUFReader: name, dtype (e.g. 'q8_0'), ne (GGUF order), offset (in the data blob)."""

    def __init__(self, reader, name, dtype, ne, offset):
        self._reader = reader
        self.name, self.dtype, self.ne, self.offset = name, dtype, ne, offset
        self.nbytes = tensor_nbytes(dtype, ne)

    @property
    def shape(self):
        """PyTorch-order shape: reversed ne."""
        return tuple(reversed(self.ne))

    @property
    def raw(self):
        """The tensor's bytes, exactly as stored."""
        start = self._reader.data_start + self.offset
        return bytes(self._reader._buf[start:start + self.nbytes])

    def array(self):
        """Dequantised float32 array in PyTorch order."""
        start = self._reader.data_start + self.offset
        return dequantize(self._reader._buf[start:start + self.nbytes], self.dtype, self.shape)


class GGUFReader:
    """Parses a GGUF v2/v3 file with the checks of spec §1.3 (raises ValueError).

    kv: key -> python value (arrays as lists); kv_type: key -> 'u32', 'str', ...
    or 'arr[<elem>]' for arrays; tensors: name -> GGUFTensor, in file order.
    """

    def __init__(self, path):
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._pos = 0
        if self._take(4) != GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        self.version, n_tensors, n_kv = self._unpack("<Iqq")
        if self.version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {self.version}")
        if n_tensors < 0 or n_kv < 0:
            raise ValueError("negative counts")
        self.kv, self.kv_type = {}, {}
        for _ in range(n_kv):
            key = self._str()
            if not key or key in self.kv:
                raise ValueError(f"empty or duplicate key {key!r}")
            (vid,) = self._unpack("<i")
            vtype = self._vtype(vid)
            if vtype == "arr":
                (eid,) = self._unpack("<i")
                etype = self._vtype(eid)
                if etype == "arr":
                    raise ValueError(f"{key}: array of arrays")
                (n,) = self._unpack("<Q")
                self.kv[key] = self._array(etype, n)
                self.kv_type[key] = f"arr[{etype}]"
            else:
                self.kv[key] = self._scalar(vtype)
                self.kv_type[key] = vtype
        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.kv:
            a = self.kv["general.alignment"]
            if self.kv_type["general.alignment"] != "u32" or a == 0 or a & (a - 1):
                raise ValueError("general.alignment must be a u32 power of two")
            self.alignment = a
        self.tensors = {}
        expect = 0
        for _ in range(n_tensors):
            name = self._str()
            if name in self.tensors:
                raise ValueError(f"duplicate tensor {name}")
            (n_dims,) = self._unpack("<I")
            if not 1 <= n_dims <= 4:
                raise ValueError(f"{name}: {n_dims} dimensions")
            ne = list(self._unpack(f"<{n_dims}q"))
            tid, offset = self._unpack("<iQ")
            if tid not in _TTYPE_BY_ID:
                raise ValueError(f"{name}: unsupported tensor type {tid}")
            dtype = _TTYPE_BY_ID[tid]
            if any(v < 0 for v in ne) or ne[0] % TENSOR_TYPES[dtype][1]:
                raise ValueError(f"{name}: bad shape {ne} for {dtype}")
            if offset != expect:
                raise ValueError(f"{name}: offset {offset}, expected {expect}")
            t = GGUFTensor(self, name, dtype, ne, offset)
            expect += _pad(t.nbytes, self.alignment)
            self.tensors[name] = t
        self.data_start = _pad(self._pos, self.alignment)
        # llama.cpp reads the whole padded blob, so the last padding must be there too.
        if self.data_start + expect > len(self._buf):
            raise ValueError("tensor data past the end of the file")

    def _take(self, n):
        if n < 0 or self._pos + n > len(self._buf):
            raise ValueError("truncated file")
        b = self._buf[self._pos:self._pos + n]
        self._pos += n
        return b

    def _unpack(self, fmt):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))

    def _str(self):
        (n,) = self._unpack("<Q")
        b = self._take(n)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b.decode("utf-8", "surrogateescape")

    @staticmethod
    def _vtype(vid):
        if vid not in _VTYPE_BY_ID:
            raise ValueError(f"invalid value type {vid}")
        return _VTYPE_BY_ID[vid]

    def _scalar(self, vtype):
        if vtype == "str":
            return self._str()
        (v,) = self._unpack(VALUE_TYPES[vtype][1])
        return v

    def _array(self, etype, n):
        if etype == "str":
            return [self._str() for _ in range(n)]
        if etype == "bool":
            return [bool(b) for b in self._take(n)]
        dt = np.dtype(_NP_ELEM[etype])
        if n > len(self._buf):
            raise ValueError("truncated file")
        return np.frombuffer(self._take(n * dt.itemsize), dtype=dt).tolist()
