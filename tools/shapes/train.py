#!/usr/bin/python3
"""Train the demo VLM on generated shape scenes.

    nice -n 10 /usr/bin/python3 tools/shapes/train.py --ckpt /work/ckpt/shapes [--resume]

Everything is determined by --seed: the tokenizer (trained on a fixed corpus),
the initial weights, and batch i of the data stream (drawn from seed (seed, i)),
so a resumed run sees the same batches as an uninterrupted one. A checkpoint
(ckpt/last.pt: weights, optimizer, step, config, tokenizer) is written every
--ckpt-every seconds and at the end; --resume continues from it.

Every --eval-every steps the model is scored on a fixed validation set (a seed
never used for training batches): an answer counts as right when every answer
token, <end_of_utterance> included, is the argmax given the right prefix --
exactly when greedy decoding would produce it.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import model as M  # noqa: E402
import scene as sc  # noqa: E402

VAL_SEED = 7_000_001   # validation scenes; training batches use --seed


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def losses(net, batch):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, aux = net(batch["ids"], batch["img_pos"], batch["images"], batch["img_index"])
    lm = F.cross_entropy(logits.float().flatten(0, 1), batch["tgt"].flatten(), ignore_index=-100)
    # Per-patch cross-entropy of each auxiliary label (shape, colour, rank),
    # averaged over shape patches and over background patches separately:
    # shape patches are about 11 % of all, and in a plain mean the easy
    # background drowned their shape signal (the ViT's shape accuracy stayed at
    # chance for 750 steps).
    aux = aux.float().flatten(0, 1)
    ce, col = 0, 0
    for name, n in sc.AUX_CLASSES:
        ce = ce + F.cross_entropy(aux[:, col:col + n], batch["aux"][name].flatten(), reduction="none")
        col += n
    fg = batch["aux"]["shape"].flatten() > 0
    la = ce[fg].sum() / fg.sum().clamp(min=1) + ce[~fg].sum() / (~fg).sum().clamp(min=1)
    return lm, la, logits


@torch.no_grad()
def evaluate(net, val_batches):
    """Greedy-equivalent accuracy per question kind on the validation set."""
    net.eval()
    right, total = {}, {}
    for batch in val_batches:
        _, _, logits = losses(net, batch)
        pred = logits.float().argmax(-1)
        mask = batch["tgt"] != -100
        ok = ((pred == batch["tgt"]) | ~mask).all(dim=1)
        for k, o in zip(batch["kinds"], ok.tolist()):
            right[k] = right.get(k, 0) + o
            total[k] = total.get(k, 0) + 1
    net.train()
    return {k: right[k] / total[k] for k in sc.KINDS if k in total}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="/work/ckpt/shapes", help="checkpoint directory")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--images", type=int, default=16, help="images per batch")
    ap.add_argument("--questions", type=int, default=6, help="different questions per image")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (2 on an otherwise idle 2-core machine; 1 when it is shared)")
    ap.add_argument("--ckpt-every", type=float, default=300.0, help="seconds")
    ap.add_argument("--eval-every", type=int, default=500, help="steps")
    ap.add_argument("--val-size", type=int, default=512)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.makedirs(args.ckpt, exist_ok=True)
    path = os.path.join(args.ckpt, "last.pt")
    if args.resume:
        ck = torch.load(path)
        tok, cfg = ck["tokenizer"], M.Config(**ck["config"])
        net = M.ShapesVLM(cfg)
        net.load_state_dict(ck["model"])
        step, elapsed = ck["step"], ck["elapsed"]
        print("resumed at step %d (%.0f s trained)" % (step, elapsed), flush=True)
    else:
        tok = data.build_tokenizer()
        cfg = M.Config(vocab_size=len(tok["tokens"]))
        torch.manual_seed(args.seed)
        net = M.ShapesVLM(cfg)
        step, elapsed = 0, 0.0
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    if args.resume:
        opt.load_state_dict(ck["opt"])
    print("parameters: %d exported (+%d auxiliary head)" % (M.n_params(net), M.n_params(net, False) - M.n_params(net)),
          flush=True)

    prompter = data.Prompter(tok)
    val = [data.make_batch(VAL_SEED, i, 128, prompter, cfg) for i in range(args.val_size // 128)]
    loader = torch.utils.data.DataLoader(data.BatchStream(args.seed, step, args.images, args.questions, tok, cfg),
                                         batch_size=None, num_workers=1, prefetch_factor=4)

    def save():
        # bpe caches its lookup tables in the dict under "_" keys: keep them out
        # of the checkpoint, which must load without tools/bpe.py.
        clean_tok = {k: v for k, v in tok.items() if not k.startswith("_")}
        tmp = path + ".tmp"
        torch.save(dict(model=net.state_dict(), opt=opt.state_dict(), step=step, elapsed=elapsed,
                        config=cfg.to_dict(), tokenizer=clean_tok, args=vars(args)), tmp)
        os.replace(tmp, path)

    t_last_ckpt = time.time()
    t0 = time.time()
    t_wait = 0.0
    avg = None
    it = iter(loader)
    while step < args.steps:
        tw = time.time()
        batch = next(it)
        t_wait += time.time() - tw
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        lm, la, _ = losses(net, batch)
        loss = lm + args.aux_weight * la
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        now = time.time()
        elapsed += now - t0
        t0 = now
        cur = np.array([lm.item(), la.item()])
        avg = cur if avg is None else 0.98 * avg + 0.02 * cur
        if step % 50 == 0:
            print("step %d  lm %.4f  aux %.4f  lr %.2e  %.0f s  (data wait %.0f s)"
                  % (step, avg[0], avg[1], lr_at(step, args), elapsed, t_wait), flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(net, val)
            print("eval step %d  " % step + "  ".join("%s %.3f" % kv for kv in acc.items()), flush=True)
            t0 = time.time()   # evaluation time is not training time
        if now - t_last_ckpt > args.ckpt_every or step == args.steps:
            save()
            t_last_ckpt = time.time()
            t0 = t_last_ckpt
    print("done: %d steps, %.0f s" % (step, elapsed), flush=True)


if __name__ == "__main__":
    main()
