"""Tokenizer, prompt layout and training batches of the demo model.

The token sequence of one example is what llama.cpp's mtmd builds for the
SmolVLM chat template (gguf-vlm-spec.md 5.3) with a 1x1 tile grid:

  <|im_start|>User:  <fake_token_around_image><row_1_col_1> [tile x16]
  \\n\\n <fake_token_around_image><global-img> [overview x16] <fake_token_around_image>
  QUESTION<end_of_utterance>\\nAssistant:  ANSWER<end_of_utterance>

where ANSWER is the answer with a leading space (" two"), as SmolVLM answers.
"""
import functools
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bpe  # noqa: E402  (tools/bpe.py)

import preprocess as pp  # noqa: E402
import scene as sc  # noqa: E402

VOCAB_SIZE = 512
IMG = -1   # placeholder id of an image-embedding slot

# Extra general English so the vocabulary is not only the task's words.
_GENERAL = """The quick brown fox jumps over the lazy dog. This is a small model that
looks at pictures of simple shapes and answers short questions about them. It was
trained from scratch on generated images: circles, squares and triangles in several
colors, on plain light backgrounds. Ask it how many shapes there are, what color a
shape is, what shape a color is, whether some shape is present, or to describe the
image. Answers are single lowercase words or a short list. Hello! How are you today?
I am fine, thank you. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 2026. Left, right, top,
bottom, big, small, bright, dark, image, picture, question, answer."""


def corpus():
    """Texts the vocabulary is trained on: every question and answer wording
    (several times, so whole words become tokens) plus general text."""
    texts = [_GENERAL] * 3
    qa = ["How many shapes are there?", "Describe the image.", "User:", "Assistant:", "User: "]
    qa += [" " + n for n in sc.NUMBERS] + [" yes", " no"]
    for s in sc.SHAPES:
        qa += ["What color is the %s?" % s, " " + s]
    for c in sc.COLOR_NAMES:
        qa += ["What shape is the %s one?" % c, " " + c]
        for s in sc.SHAPES:
            qa += ["Is there a %s %s?" % (c, s), " a %s %s, a %s %s and" % (c, s, c, s)]
    return texts + qa * 20


def build_tokenizer():
    return bpe.train(corpus(), VOCAB_SIZE)


class Prompter:
    """Token ids of prompts and answers for one tokenizer (cached: the task
    uses a few hundred distinct strings)."""

    def __init__(self, tok):
        self.tok = tok
        ids = {t: i for i, t in enumerate(tok["tokens"])}
        self.eou = ids["<end_of_utterance>"]
        self.fake = ids["<fake_token_around_image>"]
        self.glob = ids["<global-img>"]
        self.nl = ids[bpe.byte_encode(bpe.utf8_decode(b"\n"))]
        self.nlnl = ids[bpe.byte_encode(bpe.utf8_decode(b"\n\n"))]
        self.pad = tok["padding_token_id"]
        # llama.cpp ends generation at any end-of-generation token: the EOS and
        # the texts it recognises as end of turn.
        self.eog = {ids[t] for t in ("<end_of_utterance>", "<|im_end|>", "<|endoftext|>")}

    @functools.lru_cache(maxsize=4096)
    def enc(self, text):
        return tuple(bpe.encode(self.tok, text, parse_special=True))

    def decode(self, ids):
        """Text of generated ids (invalid UTF-8 replaced)."""
        return bpe.decode(self.tok, ids)

    def image_block(self, grid, n_per_image):
        """The ids of one image (IMG for embedding slots): tiles row-major, then
        the overview, with the wrapper tokens of spec 5.3."""
        cols, rows = grid
        out = []
        for r in range(1, rows + 1):
            for c in range(1, cols + 1):
                out += self.enc("<fake_token_around_image><row_%d_col_%d>" % (r, c))
                out += [IMG] * n_per_image
            if r < rows:
                out.append(self.nl)
        out += [self.nlnl, self.fake, self.glob] + [IMG] * n_per_image + [self.fake]
        return out

    def prompt(self, question, grid, n_per_image, user="User:"):
        """Ids of the whole prompt up to and including 'Assistant:'."""
        return (list(self.enc("<|im_start|>" + user)) + self.image_block(grid, n_per_image)
                + list(self.enc(question + "<end_of_utterance>\nAssistant:")))

    def answer(self, answer):
        return list(self.enc(" " + answer)) + [self.eou]


KIND_WEIGHTS = {"count": 0.15, "color": 0.15, "shape": 0.15, "yesno": 0.30, "describe": 0.25}


def make_example(rng, prompter, cfg, n_questions=1, kind_weights=KIND_WEIGHTS, hard_prob=0.5, alt_user=0.1):
    """One training image drawn from rng with n_questions different questions
    about it: dict with tile, overview [3,S,S], aux labels, and seqs, a list of
    dicts with ids (prompt+answer), n_prompt and kind. The questions of one
    image share its vision pass in training, which is most of a step's compute."""
    scene = sc.sample_scene(rng, hard_prob=hard_prob)
    img = sc.render(scene)
    pre = pp.preprocess(img, cfg.image_size, cfg.image_size)
    assert pre["grid"] == (1, 1), "a %dx%d image gave more than one tile" % (scene["w"], scene["h"])
    seqs, asked = [], set()
    for _ in range(4 * n_questions):   # count and describe can be asked once per image
        if len(seqs) == n_questions:
            break
        kind, q, a = sc.ask_any(scene, rng, kind_weights)
        # The fallback template of llama.cpp writes "User: " (with a space); a few
        # such prompts make the model indifferent to it.
        user = "User: " if rng.random() < alt_user else "User:"
        if q in asked:
            continue
        asked.add(q)
        prompt = prompter.prompt(q, pre["grid"], cfg.tokens_per_image, user)
        seqs.append(dict(ids=prompt + prompter.answer(a), n_prompt=len(prompt), kind=kind))
    (tx, ty), (vx, vy) = pp.patch_points(scene["w"], scene["h"], pre, cfg.image_size, cfg.patch_size, AUX_SUB)
    tile, view = sc.label_maps(scene, tx, ty), sc.label_maps(scene, vx, vy)
    aux = {name: np.stack([_patch_label(tile[i], n), _patch_label(view[i], n)])
           for i, (name, n) in enumerate(sc.AUX_CLASSES)}
    return dict(seqs=seqs, tile=pre["tiles"][0], overview=pre["overview"], aux=aux)


AUX_SUB = 4   # label points per patch side


def _patch_label(points, n_classes):
    """Per-patch class from class labels at AUX_SUB^2 points per patch
    [g*sub, g*sub]: the most frequent non-background class, background (0)
    only where no point hits a shape. Returns [g*g]."""
    g = points.shape[0] // AUX_SUB
    onehot = np.eye(n_classes, dtype=np.int32)[points]                      # [n, n, C]
    counts = onehot.reshape(g, AUX_SUB, g, AUX_SUB, n_classes).sum(axis=(1, 3))
    label = counts[..., 1:].argmax(-1) + 1
    return np.where(counts[..., 1:].sum(-1) > 0, label, 0).reshape(-1)


def collate(examples, pad_id):
    """Batch tensors over the B sequences of the N images: ids [B,T] (image
    slots and padding hold pad_id), img_pos [B,K], targets [B,T] (-100 except
    the answer), img_index [B] (the image of each sequence), images
    [N,2,3,S,S], aux labels {name: [N*2, G*G]}, kinds list [B]."""
    seqs = [(i, q) for i, e in enumerate(examples) for q in e["seqs"]]
    B = len(seqs)
    T = max(len(q["ids"]) for _, q in seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    tgt = torch.full((B, T), -100, dtype=torch.long)
    img_pos = []
    for b, (_, q) in enumerate(seqs):
        seq = torch.tensor(q["ids"], dtype=torch.long)
        img_pos.append((seq == IMG).nonzero().flatten())
        seq = torch.where(seq == IMG, torch.full_like(seq, pad_id), seq)
        ids[b, :len(seq)] = seq
        n = q["n_prompt"]
        tgt[b, n - 1:len(seq) - 1] = seq[n:]   # position t predicts token t+1
    images = torch.from_numpy(np.stack([np.stack([e["tile"], e["overview"]]) for e in examples]))
    return dict(ids=ids, tgt=tgt, img_pos=torch.stack(img_pos), images=images,
                img_index=torch.tensor([i for i, _ in seqs], dtype=torch.long),
                aux={name: torch.from_numpy(np.concatenate([e["aux"][name] for e in examples]))
                     for name, _ in sc.AUX_CLASSES},
                kinds=[q["kind"] for _, q in seqs])


def make_batch(seed, index, n_images, prompter, cfg, **kw):
    """Batch number `index` of the stream with this seed: the same whatever
    process or resume point produces it."""
    rng = np.random.default_rng([seed, index])
    return collate([make_example(rng, prompter, cfg, **kw) for _ in range(n_images)], prompter.pad)


class BatchStream(torch.utils.data.IterableDataset):
    """Batches start, start+1, ... of a seed (for a DataLoader worker)."""

    def __init__(self, seed, start, n_images, n_questions, tok, cfg):
        self.seed, self.start, self.n_images, self.n_questions = seed, start, n_images, n_questions
        self.tok, self.cfg = tok, cfg

    def __iter__(self):
        prompter = Prompter(self.tok)
        i = self.start
        while True:
            yield make_batch(self.seed, i, self.n_images, prompter, self.cfg, n_questions=self.n_questions)
            i += 1
