#!/usr/bin/python3
"""test_bpe.py — checks tools/bpe.py, the Python encoder beside engine/tokenizer.c.

1. Every case of tests/data/tokenizer-golden.txt (ids from llama.cpp's
   llama-tokenize) encodes to exactly those ids with the vocabularies of
   tests/data/tokenizer.json and tokenizer-odd.json, and decodes back to the
   text as llama.cpp read it; the odd vocabulary's pieces are llama.cpp's.
2. The trainer on a small corpus: specials first, the 256 byte characters,
   one token per merge, and its own encoder reproduces the training words.
3. engine/unicode_data.c is what tools/gen_unicode.py generates now.
Run by `make check`; exit status 0 = pass.
"""

import os
import subprocess
import sys
import unittest

TOP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(TOP, "tools"))
import bpe  # noqa: E402


def unescape(s):
    """The TEXT field of the golden file back to bytes (format at its top)."""
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == "\\":
            e = s[i + 1]
            if e == "x":
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
                continue
            out += {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\"}[e]
            i += 2
            continue
        out += s[i].encode("utf-8")
        i += 1
    return bytes(out)


def read_golden():
    rows = []
    with open(os.path.join(TOP, "tests", "data", "tokenizer-golden.txt"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            mode, text, ids = line.rstrip("\n").split("\t")
            rows.append((mode, unescape(text), [int(x) for x in ids.split()]))
    return rows


class GoldenTest(unittest.TestCase):
    def test_golden(self):
        data = os.path.join(TOP, "tests", "data")
        tok = bpe.load(os.path.join(data, "tokenizer.json"))
        odd = bpe.load(os.path.join(data, "tokenizer-odd.json"))
        modes = {  # tokenizer, parse_special, add_special (header of the golden file)
            "S": (tok, True, False), "N": (tok, False, False), "G": (dict(tok, pre="gpt-2"), True, False),
            "O": (odd, True, True), "P": (odd, False, True)}
        rows = read_golden()
        self.assertGreater(len(rows), 900)
        for mode, text, want in rows:
            t, special, add = modes[mode]
            got = bpe.encode(t, text, parse_special=special, add_special=add)
            self.assertEqual(got, want, "%s %r" % (mode, text[:60]))
            if t is not odd:
                # pieces give back the text as llama.cpp read it (lenient UTF-8)
                back = b"".join(bpe.piece(t, i) for i in got)
                self.assertEqual(back, bpe.utf8_encode(bpe.utf8_decode(text)), "%s %r" % (mode, text[:60]))

    def test_odd_pieces(self):
        odd = bpe.load(os.path.join(TOP, "tests", "data", "tokenizer-odd.json"))
        # llama.cpp's token_to_piece for the odd tokens (special=True, False)
        want = {0: (b"<|endoftext|>", b""), 2: (b"<|fim_pad|>", b""), 3: (b"h\xe9llo",) * 2,
                4: (b"\x00 ",) * 2, 5: (b"[UNK_BYTE_0xcea9\xce\xa9]",) * 2, 6: (b"A",) * 2,
                7: (b"", b""), 8: (b"", b""), 9: (b"[EMPTY_9]",) * 2, 10: (b"<eos>", b""), 12: (b"<u>",) * 2,
                13: (b"<u><v>", b"")}
        for i, (sp, nsp) in want.items():
            self.assertEqual((bpe.piece(odd, i, True), bpe.piece(odd, i, False)), (sp, nsp), i)


class TrainTest(unittest.TestCase):
    def test_train(self):
        texts = ["the cat sat on the mat, the cat ate.\n\n", "Ünïcödé über alles 123 456"] * 20
        tok = bpe.train(texts, 400, specials=[("<s>", bpe.TOKEN_CONTROL), ("<x>", bpe.TOKEN_USER_DEFINED)],
                        bos="<s>", eos="<s>", unk=None, pad=None, chat_template=None)
        self.assertEqual(tok["tokens"][:2], ["<s>", "<x>"])
        self.assertEqual(tok["token_type"][:2], [bpe.TOKEN_CONTROL, bpe.TOKEN_USER_DEFINED])
        self.assertEqual(tok["tokens"][2:258], [bpe.BYTE_TO_CHAR[b] for b in range(256)])
        self.assertEqual(len(tok["tokens"]), len(set(tok["tokens"])))
        self.assertIn("ĊĊ", tok["tokens"])
        self.assertEqual((tok["bos_token_id"], tok["eos_token_id"]), (0, 0))
        self.assertNotIn("unknown_token_id", tok)
        # frequent words became single tokens; every text round-trips
        ids = bpe.encode(tok, " cat")
        self.assertEqual([tok["tokens"][i] for i in ids], ["Ġcat"])
        for t in texts[:2] + ["<s>x<x>", "never seen: ζ 😀"]:
            self.assertEqual(bpe.decode(tok, bpe.encode(tok, t)), t)
        self.assertEqual(bpe.encode(tok, "<s><x>"), [0, 1])
        self.assertNotEqual(bpe.encode(tok, "<s><x>", parse_special=False)[0], 0)


class UnicodeDataTest(unittest.TestCase):
    def test_generated_table_current(self):
        import unicodedata
        with open(os.path.join(TOP, "engine", "unicode_data.c"), encoding="utf-8") as f:
            have = f.read()
        if " * Unicode %s." % unicodedata.unidata_version not in have:
            self.skipTest("this Python has another Unicode version than engine/unicode_data.c")
        gen = subprocess.run([sys.executable, os.path.join(TOP, "tools", "gen_unicode.py")],
                             check=True, capture_output=True, encoding="utf-8").stdout
        # the tables, not the header naming the Python that wrote them
        self.assertEqual(gen[gen.index("#include"):], have[have.index("#include"):],
                         "regenerate engine/unicode_data.c with tools/gen_unicode.py")

if __name__ == "__main__":
    unittest.main()
