#!/usr/bin/python3
"""test_reference.py — checks tools/make_model.py + tools/reference.py against llama.cpp's numbers.

The models are written here, from a fixed seed and a tokenizer built here (so
that nothing outside tools/make_model.py and tools/gguf_io.py changes them);
tests/data/reference/llamacpp-tiny.json holds what llama.cpp computed for the
same files (logits at a few vocabulary ids and the argmax at every prompt
position, 64 greedy tokens; how it was produced is in its "note"). The
reference must reproduce them: plain float32 for the f32 models, and with
--act-quant emulation for the quantised one (up to rare rounding flips).
Run by `make check`; exit status 0 = pass.

    test_reference.py --write-models DIR     only write the models (to produce the golden file)
"""

import json
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(TOP, "tools"))
import make_model  # noqa: E402
import reference  # noqa: E402

GOLDEN = os.path.join(TOP, "tests", "data", "reference", "llamacpp-tiny.json")

SHAPE = ["--seed", "5", "--n-embd", "256", "--n-layer", "2", "--n-head", "4", "--n-head-kv", "2",
         "--n-ff", "512", "--rope-base", "100000", "--vocab-size", "384"]
MODELS = {                                  # name -> (make_model options, act_quant)
    "f32": (["--dtype", "f32"], False),
    "bias": (["--dtype", "f32", "--bias", "--untied"], False),
    "q4_0": (["--dtype", "q4_0"], True),
}
PROMPT = [1, 40, 70, 101, 33, 300, 45, 259, 2, 120, 76, 99, 250, 200, 3, 150]


def byte_tokenizer():
    """256 byte tokens (GPT-2 byte-to-unicode order) + 4 control tokens, no merges."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>"]
    return {"model": "gpt2", "pre": "smollm", "tokens": specials + [chars[b] for b in range(256)],
            "token_type": [3] * 4 + [1] * 256, "merges": [], "bos_token_id": 1,
            "eos_token_id": 3, "unknown_token_id": 0, "padding_token_id": 2}


def write_models(outdir):
    tok_path = os.path.join(outdir, "tok.json")
    with open(tok_path, "w", encoding="utf-8") as f:
        json.dump(byte_tokenizer(), f, ensure_ascii=False)
    paths = {}
    for name, (opts, _) in MODELS.items():
        paths[name] = os.path.join(outdir, f"ref-{name}.gguf")
        make_model.main(SHAPE + opts + ["--tokenizer", tok_path, "-o", paths[name]])
    return paths


class AgainstLlamaCpp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.paths = write_models(cls.tmp.name)
        with open(GOLDEN, encoding="utf-8") as f:
            cls.golden = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_models(self):
        self.assertEqual(self.golden["prompt"], PROMPT)
        torch.set_num_threads(1)
        for name, (_, act_quant) in MODELS.items():
            with self.subTest(model=name), torch.no_grad():
                g = self.golden["models"][name]
                dec = reference.Decoder(self.paths[name], act_quant=act_quant)
                self.assertEqual(dec.n_vocab, g["n_vocab"])
                logits, gen, _ = dec.greedy(PROMPT, len(g["greedy"]))
                err = []
                for t, row in enumerate(g["positions"]):
                    err.append(np.abs(logits[t, row["ids"]].numpy() - row["logits"]).max())
                    self.assertEqual(int(logits[t].argmax()), row["argmax"], f"{name} position {t}")
                err = np.array(err)
                if not act_quant:
                    # float32 models agree to ~1e-6 of the logit spread (~16)
                    self.assertLess(err.max(), 2e-3, name)
                    self.assertEqual(gen, g["greedy"])
                    # make_model's scales must not give a model that echoes one token
                    self.assertGreater(len(set(gen)), 8, f"{name}: {gen}")
                else:
                    # Exact (float64 sums of the same quantised products) except where
                    # llama.cpp's own expf moves an activation across a rounding
                    # boundary of its 8-bit quantisation: a step of ~0.3 in some
                    # positions' logits. A wrong dequantiser or activation rule
                    # breaks every position instead.
                    self.assertLessEqual(np.sum(err > 2e-3), len(err) // 4, f"{name}: {err}")
                    self.assertLess(err.max(), 1.0, name)

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-models":
        write_models(sys.argv[2])
        sys.exit(0)
    unittest.main(verbosity=1)
