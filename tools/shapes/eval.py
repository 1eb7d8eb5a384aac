#!/usr/bin/python3
"""Held-out evaluation of the demo model, per question kind.

    /usr/bin/python3 tools/shapes/eval.py --n 1000 --out /tmp/shapes-eval \\
        [--ckpt /work/ckpt/shapes/last.pt] \\
        [--cmd './glimpse ask -m M.gguf --mmproj P.gguf --image {image} -p {question}']

Writes --n fresh scenes (seed --seed, never used in training; all five
question kinds in turn, sizes, aspect ratios, styles and formats spread over
the task's ranges) as PNG/JPEG files plus manifest.json into --out, then
answers each question greedily with

  (a) the PyTorch model of --ckpt (decoding the file with PIL, preprocessing
      with tools/shapes/preprocess.py), and/or
  (b) the command --cmd, one run per image: {image}, {question} and {prompt}
      (the full chat prompt, image marker <__media__> first) are substituted
      into its arguments, and its trimmed standard output is the answer.

It prints accuracy per kind for each, and the agreement of (b) with (a).
--cmd-template llama.cpp prints the llama-mtmd-cli command used for the model card.
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import preprocess as pp  # noqa: E402
import scene as sc  # noqa: E402

EVAL_SEED = 99_000_017

# llama-mtmd-cli renders this instead of its built-in SmolVLM fallback (which
# writes "User: " with a space): exactly the prompt of the issue.
LLAMA_TEMPLATE = ("<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{{ m['content'] }}"
                  "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def llama_cmd(bindir, models):
    return [os.path.join(bindir, "llama-mtmd-cli"),
            "-m", os.path.join(models, "glimpse-shapes.gguf"),
            "--mmproj", os.path.join(models, "glimpse-shapes-mmproj.gguf"),
            "--image", "{image}", "-p", "{question}", "--temp", "0", "-n", "24", "-t", "1",
            "--jinja", "--chat-template", LLAMA_TEMPLATE]


def make_set(n, seed, out):
    """n held-out scenes written to out/; returns the manifest list."""
    os.makedirs(out, exist_ok=True)
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        kind = sc.KINDS[i % len(sc.KINDS)]
        while True:   # a scene that allows this kind of question; plain (not oversampled-hard) scenes
            scene = sc.sample_scene(rng, hard_prob=0.25)
            qa = sc.ask(scene, kind, rng)
            if qa is not None:
                break
        blob, ext = sc.render_file(scene)
        path = os.path.join(out, "%04d.%s" % (i, ext))
        with open(path, "wb") as f:
            f.write(blob)
        items.append(dict(image=path, kind=kind, question=qa[0], answer=qa[1],
                          w=scene["w"], h=scene["h"], fmt=scene["fmt"], antialias=scene["antialias"]))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(items, f, indent=1)
    return items


@torch.no_grad()
def torch_answer(net, cfg, prompter, image_path, question, max_tokens=24):
    """Greedy answer of the PyTorch model, text without the leading space."""
    img = np.asarray(Image.open(image_path).convert("RGB"))
    pre = pp.preprocess(img, cfg.image_size, cfg.image_size)
    ids = prompter.prompt(question, pre["grid"], cfg.tokens_per_image)
    seq = torch.tensor(ids)
    slots = (seq == data.IMG).nonzero().flatten()[None]
    images = torch.from_numpy(np.concatenate([pre["tiles"], pre["overview"][None]]))[None]
    seq = torch.where(seq == data.IMG, torch.full_like(seq, prompter.pad), seq)
    emb, _ = net.image_embeddings(images[0])                     # [n_img, tokens_per_image, D]
    emb = emb.reshape(1, -1, cfg.t_dim)
    out = []
    for _ in range(max_tokens):
        t = int(net.decode(seq[None], slots, emb)[0, -1].argmax())
        if t in prompter.eog:
            break
        out.append(t)
        seq = torch.cat([seq, torch.tensor([t])])
    return prompter.decode(out).strip()


def run_cmd(template, item, complete=None, tries=5):
    """The command's answer for one item. complete(stdout) says whether the
    output is whole; an incomplete one is retried."""
    prompt = "<__media__>" + item["question"]
    argv = [a.replace("{image}", item["image"]).replace("{question}", item["question"])
            .replace("{prompt}", prompt) for a in template]
    for _ in range(tries):
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        if r.returncode != 0:   # counted as a wrong answer, and visible in results.json
            return "<exit %d: %s>" % (r.returncode, r.stderr.decode("utf-8", "replace").strip()[-300:])
        out = r.stdout.decode("utf-8", "replace")
        if complete is None or complete(out):
            return out.strip()
    return "<incomplete: %r>" % out


def llama_complete(out):
    """llama-mtmd-cli prints tokens through its asynchronous logger and now and
    then exits before the end of the text reaches stdout; a whole answer is
    followed by its closing blank lines."""
    return out.endswith("\n\n")


def report(name, items, key):
    print("%s:" % name)
    tot = 0
    for k in sc.KINDS:
        sel = [it for it in items if it["kind"] == k]
        ok = sum(it[key] == it["answer"] for it in sel)
        tot += ok
        print("  %-9s %5.1f %%  (%d/%d)" % (k, 100.0 * ok / max(1, len(sel)), ok, len(sel)))
    print("  %-9s %5.1f %%" % ("all", 100.0 * tot / max(1, len(items))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--out", required=True, help="directory for the images, manifest and results")
    ap.add_argument("--ckpt", help="PyTorch checkpoint to evaluate")
    ap.add_argument("--cmd", help="command template (shell words) to evaluate")
    ap.add_argument("--llama", metavar="BINDIR:MODELS", help="evaluate llama-mtmd-cli from BINDIR on the GGUFs in MODELS")
    ap.add_argument("-j", type=int, default=1, help="commands run in parallel")
    args = ap.parse_args(argv)

    items = make_set(args.n, args.seed, args.out)
    if args.ckpt:
        import export
        net, cfg, tok, _ = export.load(args.ckpt)
        torch.set_num_threads(1)
        prompter = data.Prompter(tok)
        for it in items:
            it["torch"] = torch_answer(net, cfg, prompter, it["image"], it["question"])
        report("pytorch (%s)" % args.ckpt, items, "torch")
    template, complete = None, None
    if args.cmd:
        template = shlex.split(args.cmd)
    elif args.llama:
        bindir, models = args.llama.split(":", 1)
        template, complete = llama_cmd(bindir, models), llama_complete
    if template:
        with concurrent.futures.ThreadPoolExecutor(args.j) as ex:
            for it, ans in zip(items, ex.map(lambda it: run_cmd(template, it, complete), items)):
                it["cmd"] = ans
        report("command (%s)" % " ".join(template[:1]), items, "cmd")
        if args.ckpt:
            same = sum(it["cmd"] == it["torch"] for it in items)
            print("command == pytorch: %.1f %% (%d/%d)" % (100.0 * same / len(items), same, len(items)))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(items, f, indent=1)


if __name__ == "__main__":
    main()
