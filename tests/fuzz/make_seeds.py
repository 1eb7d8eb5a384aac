#!/usr/bin/env python3
"""make_seeds.py — writes the committed seed corpora of tests/fuzz/corpus/.

Run with Debian's python3 (numpy, PIL) from the repository root:
    /usr/bin/python3 tests/fuzz/make_seeds.py
Each corpus gets a handful of small, valid inputs that reach deep into the
code under test; the fuzzer mutates them from there. Deterministic: running
it again rewrites the same files.
"""
import base64
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
PY = sys.executable


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def picture(w, h, mode, seed):
    rng = np.random.default_rng(seed)
    ch = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    a = rng.integers(0, 256, size=(h, w, ch), dtype=np.uint8)
    return Image.fromarray(a[:, :, 0] if ch == 1 else a, mode)


def encode(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def images():
    """(name, bytes) of small pictures in the formats image.c handles."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    out = [
        ("rgb.jpg", encode(picture(13, 7, "RGB", 1), "JPEG", quality=80)),
        ("prog.jpg", encode(picture(9, 16, "RGB", 2), "JPEG", progressive=True)),
        ("gray.jpg", encode(picture(8, 8, "L", 3), "JPEG")),
        ("cmyk.jpg", encode(picture(8, 5, "CMYK", 4), "JPEG")),
        ("exif.jpg", encode(picture(6, 10, "RGB", 5), "JPEG", exif=exif.tobytes())),
        ("rgb.png", encode(picture(5, 3, "RGB", 6), "PNG")),
        ("rgba.png", encode(picture(4, 4, "RGBA", 7), "PNG")),
        ("gray-alpha.png", encode(picture(3, 6, "LA", 8), "PNG")),
        ("palette.png", encode(picture(7, 7, "RGB", 9).convert("P", palette=Image.ADAPTIVE, colors=5), "PNG",
                               transparency=1)),
        ("mono.png", encode(picture(9, 2, "L", 10).convert("1"), "PNG")),
    ]
    a16 = (np.random.default_rng(12).integers(0, 65536, size=(4, 5))).astype(np.uint16)
    out.append(("gray16.png", encode(Image.fromarray(a16, "I;16"), "PNG")))
    return out


# PIL writes no interlaced PNG: take two from the shared PngSuite copy
PNGSUITE = os.path.join(ROOT, "..", "shared", "testdata", "images", "pngsuite")


def image_corpus():
    # first byte: preprocessing selector (fuzz_image.c), then the file
    for i, (name, data) in enumerate(images()):
        put("image", name, bytes([i * 37 & 0xFF]) + data)
    for i, name in enumerate(["basi2c16.png", "basi3p04.png"]):
        path = os.path.join(PNGSUITE, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                put("image", "interlaced-" + name, bytes([i * 9 + 1]) + f.read())


def gguf_corpora():
    with tempfile.TemporaryDirectory() as tmp:
        mm = os.path.join(ROOT, "tools", "make_model.py")
        common = ["--seed", "3", "--n-embd", "8", "--n-layer", "1", "--n-head", "2", "--n-ff", "16", "--ctx", "64"]
        runs = [
            ("text-f32.gguf", common + ["--dtype", "f32"]),
            ("text-bias.gguf", common + ["--dtype", "f16", "--bias", "--untied"]),
            ("text-q8.gguf", ["--seed", "4", "--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--n-ff", "32",
                              "--dtype", "q8_0", "--dtype-embd", "q4_0"]),
            ("vocab.gguf", ["--vocab-only"]),
        ]
        for name, args in runs:
            subprocess.run([PY, mm, "-o", os.path.join(tmp, name)] + args, check=True, stdout=subprocess.DEVNULL)
        vis = ["--no-text", "--seed", "5", "--n-embd-text", "8", "--v-embd", "8", "--v-layer", "1", "--v-head", "2",
               "--v-ff", "16"]
        subprocess.run([PY, mm, "--mmproj-out", os.path.join(tmp, "mmproj-idefics3.gguf"), "--projector", "idefics3",
                        "--image-size", "8", "--patch-size", "2", "--scale-factor", "2", "--longest-edge", "16"] + vis,
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([PY, mm, "--mmproj-out", os.path.join(tmp, "mmproj-mlp.gguf"), "--projector", "mlp",
                        "--image-size", "8", "--patch-size", "4"] + vis, check=True, stdout=subprocess.DEVNULL)
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                data = f.read()
            put("model", name, data)
            if name != "vocab.gguf":
                put("gguf", name, data)


def tokenizer_corpus():
    # first byte: bit 0 parse_special, bit 1 add_special (fuzz_tokenizer.c)
    texts = [
        (0, "Hello world! It's 2024, isn't it?\n\n  tabs\tand   spaces"),
        (1, "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant:"),
        (2, "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 \u0645\u0631\u062d\u0628\u0627 123456789"),
        (3, "<fake_token_around_image><row_1_col_1><global-img>\r\n"),
    ]
    for i, (flags, t) in enumerate(texts):
        put("tokenizer", "text%d" % i, bytes([flags]) + t.encode())
    put("tokenizer", "invalid-utf8", b"\x00ab\xff\xc3\x28\xe2\x82\xf0\x9f\x98 \xed\xa0\x80\xf4\x90\x80\x80")


PNG_B64 = base64.b64encode(images()[5][1]).decode()


def chat_corpus():
    reqs = {
        "simple.json": {"model": "glimpse", "messages": [{"role": "user", "content": "Hello"}]},
        "full.json": {"messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                                                {"type": "image_url",
                                                                 "image_url": {"url": "data:image/png;base64," + PNG_B64}}]},
                                   {"role": "assistant", "content": "A square."},
                                   {"role": "user", "content": "And?"}],
                      "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "seed": 42, "n": 2,
                      "stop": ["\n", "END"], "logprobs": True, "top_logprobs": 3, "stream": True,
                      "stream_options": {"include_usage": True}, "frequency_penalty": 0.5,
                      "presence_penalty": 0.1},
        "upload.json": {"messages": [{"role": "user", "content": [{"type": "image_url",
                                                                   "image_url": {"url": "upload:image"}},
                                                                  {"type": "text", "text": "Describe."}]}]},
    }
    for name, r in reqs.items():
        put("chat_json", name, json.dumps(r))
    put("chat_json", "bad-types.json", '{"messages":[{"role":"user","content":1e999}],"max_tokens":-1,"n":1.5}')


def multipart_corpus():
    crlf = "\r\n"
    form = ("--XyZ" + crlf + 'Content-Disposition: form-data; name="prompt"' + crlf + crlf + "What is this?" + crlf +
            "--XyZ" + crlf + 'Content-Disposition: form-data; name="image"; filename="a.png"' + crlf +
            "Content-Type: image/png" + crlf + crlf).encode() + images()[5][1] + (
            crlf + "--XyZ" + crlf + 'Content-Disposition: form-data; name="max_tokens"' + crlf + crlf + "8" + crlf +
            "--XyZ" + crlf + 'Content-Disposition: form-data; name="stop"' + crlf + crlf + "END" + crlf +
            "--XyZ--" + crlf).encode()
    put("multipart", "prompt-form", b"multipart/form-data; boundary=XyZ\n" + form)
    req = json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                                 "image_url": {"url": "upload:pic"}}]}]})
    form2 = ('--"q b"' + crlf + 'Content-Disposition: form-data; name="request"' + crlf + crlf + req + crlf +
             '--"q b"' + crlf + 'content-disposition: form-data; name=pic; filename=x.jpg' + crlf + crlf).encode()
    form2 = form2.replace(b'--"q b"', b"--q b") + images()[0][1] + (crlf + "--q b--" + crlf).encode()
    put("multipart", "request-form", b'multipart/form-data; boundary="q b"\n' + form2)


def datauri_corpus():
    put("datauri", "png", "image/png;base64," + PNG_B64)
    put("datauri", "jpeg-params", "image/jpeg;name=a.jpg;BASE64," + base64.b64encode(images()[0][1]).decode())
    put("datauri", "unpadded", "image/webp;base64," + PNG_B64.rstrip("="))
    put("datauri", "text", "text/plain;base64,aGVsbG8=")


def response_corpus():
    def rec(ctl, piece, text):
        return bytes([ctl, len(piece)]) + piece + bytes([len(text)]) + text
    stream = (bytes([4 | 8 | 16 | 1]) +
              rec(0, b"Hello", b"Hello") + rec(2 | 8, b" w", b" w") + rec(16, b"\xe2\x82", b"") +
              rec(2, b"\xac!", b"\xe2\x82\xac!") + rec(32 | 64, b"", b"\xff") + rec(1, b"\x05", b"") +
              rec(3 | 8, b"\x07", b""))
    put("response", "stream", stream)
    put("response", "plain", bytes([0]) + rec(0, b"a\nb\"c\\", b"a\nb\"c\\") + rec(128, b"\x00", b"\x00") +
        rec(1, b"", b""))


def main():
    image_corpus()
    gguf_corpora()
    tokenizer_corpus()
    chat_corpus()
    multipart_corpus()
    datauri_corpus()
    response_corpus()
    return 0


if __name__ == "__main__":
    sys.exit(main())
