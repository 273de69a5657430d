#!/usr/bin/python3
"""The paper's result in miniature: a small decoder-only transformer trained on
the King James Bible, with and without Engram layers reading tables prepared by
the engram command (prep -> count -> plan -> build), and a table-size sweep.

    examples/train_lm.py --prepare            # data, counts, plans, stores (build/train/)
    examples/train_lm.py --arm engram --rows planned --seed 0 --steps 300
    examples/train_lm.py --sweep              # every arm, size and seed; docs/TRAINING.md's table

Data: build/sample/kjv.txt (Debian's bible-kjv, `make demo` writes it) with
its SentencePiece model (4,000 pieces). The verses are cut into blocks of 200;
every 10th block is held out. `engram prep` writes each split as raw uint32 ids
with </s> after every verse; training reads random windows of T+1 tokens of
the training stream, evaluation the held-out stream in consecutive windows.
Each window is hashed as a sequence of its own (left padded), in both arms.

Arms, at the same dense parameter count and the same training tokens:
  baseline  the transformer, its MLP widened to match the Engram arm's dense
            parameters (the Engram layers' projections, norms and conv);
  engram    the transformer with EngramLayers before blocks 1 and 3 (configs/
            train.json: orders 2..3, 4 heads of 16 values), tables sized by
            `engram plan` on the training split's counts at a collision target,
            trained with sparse Adam at 5x the dense learning rate.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from lm import LM, keep_freed_memory  # noqa: E402
from engram.torch import TableAdam, close_stores  # noqa: E402

OUT = os.path.join(ROOT, "build", "train")
ENGRAM = os.path.join(ROOT, "build", "engram")
CONFIG = os.path.join(ROOT, "configs", "train.json")
CORPUS = os.path.join(ROOT, "build", "sample", "kjv.txt")
MODEL = os.path.join(ROOT, "build", "sample", "kjv.model")
# collision targets of `engram plan` for the size sweep (per-head rate of distinct n-grams)
TARGETS = {"tiny": 0.99, "planned": 0.5, "large": 0.1}
VOCAB, D, LAYERS, HEADS, FFN, T = 4000, 128, 4, 4, 512, 128


def sh(*cmd):
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def prepare(out=OUT):
    """Split the corpus, tokenize, count the training split, plan and build the stores."""
    if not os.path.exists(CORPUS) or not os.path.exists(MODEL):
        sys.exit(f"train_lm: {CORPUS} or {MODEL} is missing: run `make demo` first")
    os.makedirs(out, exist_ok=True)
    with open(CORPUS, encoding="utf-8") as f:
        verses = f.read().splitlines()
    split = {"train": [], "val": []}
    for i, v in enumerate(verses):
        split["val" if (i // 200) % 10 == 9 else "train"].append(v)
    for name, lines in split.items():
        txt = os.path.join(out, name + ".txt")
        with open(txt, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        sh(ENGRAM, "prep", "--tokenizer", MODEL, "--doc-per-line", "--eos", "</s>", "-f", "u32",
           "-q", "-o", os.path.join(out, name), txt)
    counts = os.path.join(out, "train.counts")
    sh(ENGRAM, "count", os.path.join(out, "train.u32"), "--tokenizer", MODEL, "--config", CONFIG,
       "-o", counts, "-q")
    sizes = {}
    for name, target in TARGETS.items():
        planned = os.path.join(out, f"planned-{name}.json")
        sh(ENGRAM, "plan", "--config", CONFIG, "--counts", counts, "--target", target, "-o", planned)
        sh(ENGRAM, "build", "--config", planned, "--tokenizer", MODEL, "--dtype", "f32", "-q",
           "-o", os.path.join(out, f"{name}.store"))
        with open(planned) as f:
            cfg = json.load(f)
        sizes[name] = {"target": target, "engram_vocab_size": cfg["engram_vocab_size"]}
    with open(os.path.join(out, "sizes.json"), "w") as f:
        json.dump(sizes, f, indent=1)
    ntok = {n: os.path.getsize(os.path.join(out, n + ".u32")) // 4 for n in split}
    print(f"prepared {out}: {ntok['train']} training tokens, {ntok['val']} held out; "
          f"table sizes {sizes}")


def load(name, out=OUT):
    path = os.path.join(out, name + ".u32")
    if not os.path.exists(path):
        sys.exit(f"train_lm: {path} is missing: run examples/train_lm.py --prepare")
    return np.fromfile(path, dtype=np.uint32).astype(np.int64)


def store_rows(path):
    import engram
    with engram.Runtime(path) as rt:
        return sum(rt.layer_rows(li) for li in range(rt.n_layers)), rt.dim


def build_model(arm, rows="planned", ffn=None, out=OUT, threads=0):
    if arm == "baseline":
        return LM(VOCAB, D, LAYERS, HEADS, ffn or FFN, T)
    store = os.path.join(out, f"{rows}.store")
    cfg = json.load(open(CONFIG))
    return LM(VOCAB, D, LAYERS, HEADS, FFN, T, engram=store, engram_layers=cfg["layer_ids"],
              threads=threads)


def matched_ffn(out=OUT):
    """The baseline's MLP width whose dense parameters are nearest the Engram arm's."""
    target = build_model("engram", out=out).dense_parameters()
    close_stores()
    base = LM(VOCAB, D, LAYERS, HEADS, FFN, T).dense_parameters()
    per_unit = LAYERS * (2 * D + 1)  # fc1 column + bias, fc2 row
    return FFN + round((target - base) / per_unit), target


@torch.no_grad()
def evaluate(model, val, n_windows=256):
    model.eval()
    n = min(n_windows, (len(val) - 1) // T)
    tot = 0.0
    for i in range(0, n, 32):
        idx = np.arange(i, min(n, i + 32))
        x = torch.from_numpy(np.stack([val[j * T:j * T + T] for j in idx]))
        y = torch.from_numpy(np.stack([val[j * T + 1:j * T + T + 1] for j in idx]))
        tot += F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1), reduction="sum").item()
    model.train()
    return tot / (n * T)


def train(arm, seed, steps, batch=16, lr=2e-3, rows="planned", ffn=None, out=OUT, log_every=0,
          threads=0, lr_mult=5.0, eval_windows=256, save=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tr, val = load("train", out), load("val", out)
    model = build_model(arm, rows, ffn, out, threads)
    dense = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    tables = TableAdam(model.engram_layers(), lr=lr, lr_mult=lr_mult)
    warm = max(1, steps // 20)
    t0 = time.time()
    for step in range(steps):
        f = (step + 1) / warm if step < warm else 0.1 + 0.45 * (1 + math.cos(
            math.pi * (step - warm) / max(1, steps - warm)))
        for g in dense.param_groups + tables.param_groups:
            g["lr"] = lr * f
        starts = rng.integers(0, len(tr) - T - 1, size=batch)
        w = torch.from_numpy(np.stack([tr[s:s + T + 1] for s in starts]))
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1))
        dense.zero_grad(set_to_none=True)
        tables.zero_grad()
        loss.backward()
        dense.step()
        tables.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  step {step:4d} loss {loss.item():.4f}", flush=True)
    train_s = time.time() - t0
    res = {"arm": arm, "rows": rows if arm == "engram" else None, "seed": seed, "steps": steps,
           "tokens": steps * batch * T, "dense_params": model.dense_parameters(),
           "train_s": round(train_s, 2), "tok_per_s": round(steps * batch * T / train_s, 1),
           "final_train_loss": round(loss.item(), 4)}
    if arm == "engram":
        res["table_rows"], res["row_dim"] = store_rows(os.path.join(out, f"{rows}.store"))
        res["trained_rows"] = int(model.engram_layers()[0].rt.trained_rows)
    res["val_loss"] = round(evaluate(model, val, eval_windows), 4)
    if save:
        save_model(model, save, ffn or FFN)
    close_stores()
    return res


def save_model(model, path, ffn):
    """PATH.json (shape), PATH.pt (dense weights), PATH.store (the tables, trained):
    what examples/generate.py loads."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    layers = model.engram_layers()
    if layers:
        layers[0].checkpoint(path + ".store")  # one runtime: every layer's rows
    torch.save(model.state_dict(), path + ".pt")
    meta = {"vocab": VOCAB, "d": D, "n_layer": LAYERS, "n_head": HEADS, "ffn": ffn,
            "max_len": T, "engram_layers": [l.layer_id for l in layers], "tokenizer": MODEL}
    with open(path + ".json", "w") as f:
        json.dump(meta, f)


def sweep(args):
    ffn, target = matched_ffn()
    runs = [("baseline", None)] + [("engram", r) for r in TARGETS]
    results = []
    path = os.path.join(OUT, "results.jsonl")
    t0 = time.time()
    with open(path, "w") as f:
        for seed in range(args.seeds):
            for arm, rows in runs:
                r = train(arm, seed, args.steps, args.batch, args.lr, rows or "planned",
                          ffn if arm == "baseline" else None, threads=args.threads)
                results.append(r)
                f.write(json.dumps(r) + "\n")
                f.flush()
                print(json.dumps(r), flush=True)
    print(f"sweep: {len(results)} runs in {time.time() - t0:.0f} s "
          f"(baseline MLP {ffn} for {target} dense parameters)")
    report(results)


def report(results=None):
    if results is None:
        with open(os.path.join(OUT, "results.jsonl")) as f:
            results = [json.loads(line) for line in f]
    sizes = json.load(open(os.path.join(OUT, "sizes.json")))
    groups = {}
    for r in results:
        groups.setdefault((r["arm"], r["rows"]), []).append(r)
    base = [r["val_loss"] for r in groups[("baseline", None)]]
    base_by_seed = {r["seed"]: r["val_loss"] for r in groups[("baseline", None)]}
    lines = ["| arm | table rows (2 layers) | dense params | held-out loss, nats/token (mean ± sd) "
             "| seeds | vs baseline, same seed (mean ± sd) | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    pts = []
    for (arm, rows), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "baseline",
                                                                  kv[1][0].get("table_rows", 0))):
        v = np.array([r["val_loss"] for r in rs])
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        paired = np.array([r["val_loss"] - base_by_seed[r["seed"]] for r in rs
                           if r["seed"] in base_by_seed])
        psd = paired.std(ddof=1) if len(paired) > 1 else 0.0
        diff = f"{paired.mean():+.4f} ± {psd:.4f}" if arm == "engram" else "-"
        name = "baseline" if arm == "baseline" else f"engram ({rows}, target {sizes[rows]['target']})"
        trow = f"{rs[0]['table_rows']:,}" if arm == "engram" else "-"
        lines.append(f"| {name} | {trow} | {rs[0]['dense_params']:,} | {v.mean():.4f} ± {sd:.4f} | "
                     f"{len(v)} | {diff} | {np.mean([r['tok_per_s'] for r in rs]):.0f} |")
        if arm == "engram":
            pts.append((rs[0]["table_rows"], v.mean(), sd, v))
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(table + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=4,
                    label="Engram arm (mean ± sd over seeds)")
        for p in pts:
            ax.scatter([p[0]] * len(p[3]), p[3], s=8, color="C0", alpha=0.4)
        ax.axhline(np.mean(base), color="C3", ls="--", label="baseline (same dense params)")
        ax.axhspan(np.mean(base) - np.std(base, ddof=1), np.mean(base) + np.std(base, ddof=1),
                   color="C3", alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("table rows (both Engram layers)")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("KJV, 4-block transformer d=128: loss vs Engram table size")
        ax.legend()
        fig.tight_layout()
        png = os.path.join(ROOT, "docs", "training-sweep.png")
        fig.savefig(png, dpi=110)
        print(f"plot: {png}")
    except ImportError:
        print("matplotlib is not installed: no plot (apt-get install python3-matplotlib)")


def main():
    keep_freed_memory()  # see examples/lm.py
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="split, tokenize, count, plan, build")
    ap.add_argument("--sweep", action="store_true", help="every arm, table size and seed")
    ap.add_argument("--report", action="store_true", help="the table and plot of the last sweep")
    ap.add_argument("--arm", choices=["baseline", "engram"], help="one run")
    ap.add_argument("--rows", default="planned", choices=list(TARGETS), help="table size (engram)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per arm in --sweep")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16, help=f"sequences of {T} tokens per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2, help="torch and runtime threads")
    ap.add_argument("--save", metavar="PATH", help="one run: save the model for generate.py")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.prepare:
        prepare()
    if args.sweep:
        sweep(args)
    elif args.report:
        report()
    elif args.arm:
        ffn = matched_ffn()[0] if args.arm == "baseline" else None
        print(json.dumps(train(args.arm, args.seed, args.steps, args.batch, args.lr, args.rows, ffn,
                               log_every=25, threads=args.threads, save=args.save)))
    elif not args.prepare:
        ap.print_help()


if __name__ == "__main__":
    main()
