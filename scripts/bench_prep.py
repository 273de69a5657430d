#!/usr/bin/env python3
"""Corpus preparation throughput, side by side in one script on the same
corpus (>= 100 MB, built by repeating ../shared's corpora):

  1. SentencePiece .model: Debian's `spm_encode --output_format=id` vs
     `engram prep --doc-per-line` on 1 and 2 threads (ids compared).
  2. tokenizer.json: HF tokenizers itself (npm, encodeBatch on the same
     lines, RAYON_NUM_THREADS = engram's threads) vs `engram prep
     --doc-per-line` (ids compared byte for byte).

Figures are tokens/s and ratios measured in this run; best of --repeats.
usage: scripts/bench_prep.py [--engram build/engram] [--mb 100] [--repeats 1]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.exit("bench_prep: numpy is missing (apt-get install python3-numpy)")


def build_corpus(shared, path, mb):
    if os.path.exists(path) and os.path.getsize(path) >= mb * 1e6:
        return
    parts = [open(os.path.join(shared, "data/corpora/tinyshakespeare.txt"), "rb").read()]
    udhr = os.path.join(shared, "data/corpora/udhr")
    for f in sorted(os.listdir(udhr)):
        parts.append(open(os.path.join(udhr, f), "rb").read())
    block = b"".join(p if p.endswith(b"\n") else p + b"\n" for p in parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        written = 0
        while written < mb * 1e6:
            f.write(block)
            written += len(block)
    os.replace(path + ".tmp", path)


def timed(cmd, env=None, stdin=None, stdout=subprocess.DEVNULL):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdin=stdin, stdout=stdout)
    return time.perf_counter() - t0


def engram_prep(a, tok, corpus, out, threads):
    r = subprocess.run([a.engram, "prep", "-q", "--json", "-t", tok, "-o", out, "-f", "u32",
                        "--doc-per-line", "-j", str(threads), corpus],
                       check=True, capture_output=True, text=True)
    j = json.loads(r.stdout)
    return j["seconds"], j["tokens"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engram", default="build/engram")
    ap.add_argument("--shared", default=os.environ.get("ENGRAM_SHARED", "../shared"))
    ap.add_argument("--work", default="build/bench")
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--npm-dir", default="build/npm")
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(a.shared, "data")):
        print(f"bench_prep: skipped: {a.shared}/data not found")
        return
    corpus = os.path.join(a.work, "corpus.txt")
    build_corpus(a.shared, corpus, a.mb)
    size_mb = os.path.getsize(corpus) / 1e6
    toks = os.path.join(a.shared, "data/tokenizers")
    print(f"corpus preparation, {size_mb:.0f} MB ({corpus}), one document per line, "
          f"best of {a.repeats}")
    print(f"  {'tokenizer / implementation':<44}{'tokens/s':>14}{'ratio':>8}")

    # 1. SentencePiece
    model = os.path.join(toks, "mistral-v03.model")
    if shutil.which("spm_encode"):
        spm_txt = os.path.join(a.work, "spm_ids.txt")
        best = min(timed(["spm_encode", f"--model={model}", "--output_format=id"],
                         stdin=open(corpus, "rb"), stdout=open(spm_txt, "wb"))
                   for _ in range(a.repeats))
        ref = np.array(open(spm_txt).read().split(), dtype=np.uint32)
        spm_tps = len(ref) / best
        print(f"  {'mistral-v03.model: spm_encode':<44}{spm_tps:>14,.0f}{1.0:>7.2f}x")
        for th in (1, 2):
            out = os.path.join(a.work, f"spm{th}")
            runs = [engram_prep(a, model, corpus, out, th) for _ in range(a.repeats)]
            secs, ntok = min(runs)
            got = np.fromfile(out + ".u32", dtype="<u4")
            same = np.array_equal(got, ref)
            print(f"  {'  engram prep, ' + str(th) + ' thread' + ('s' if th > 1 else ''):<44}"
                  f"{ntok / secs:>14,.0f}{ntok / secs / spm_tps:>7.2f}x"
                  f"{'' if same else '  IDS DIFFER'}")
    else:
        print("  (spm_encode not found: apt-get install sentencepiece)")

    # 2. tokenizer.json vs HF tokenizers
    mod = os.path.join(a.npm_dir, "node_modules", "tokenizers")
    if shutil.which("node") and not os.path.isdir(mod):
        subprocess.run(["npm", "install", "--silent", "--prefix", a.npm_dir, "tokenizers"],
                       capture_output=True)
    if not (shutil.which("node") and os.path.isdir(mod)):
        print("  (node or the npm package tokenizers missing: HF comparison skipped)")
        return
    env = dict(os.environ, NODE_PATH=os.path.join(os.path.abspath(a.npm_dir), "node_modules"))
    for name in ("deepseek-v3.tokenizer.json", "mistral-v03.tokenizer.json"):
        tok = os.path.join(toks, name)
        for th in (1, 2):
            hf_out = os.path.join(a.work, "hf.u32")
            hf = []
            for _ in range(a.repeats):
                r = subprocess.run(["node", "bench/encode_reference.js", tok, corpus, hf_out],
                                   env=dict(env, RAYON_NUM_THREADS=str(th)), check=True,
                                   capture_output=True, text=True)
                hf.append(json.loads(r.stdout))
            h = min(hf, key=lambda j: j["seconds"])
            hf_tps = h["tokens"] / h["seconds"]
            out = os.path.join(a.work, f"hf_ours{th}")
            secs, ntok = min(engram_prep(a, tok, corpus, out, th) for _ in range(a.repeats))
            same = open(hf_out, "rb").read() == open(out + ".u32", "rb").read()
            label = f"{name}, {th} thread" + ("s" if th > 1 else "")
            print(f"  {label + ': HF tokenizers':<44}{hf_tps:>14,.0f}{1.0:>7.2f}x")
            print(f"  {'  engram prep':<44}{ntok / secs:>14,.0f}{ntok / secs / hf_tps:>7.2f}x"
                  f"{'' if same else '  IDS DIFFER'}")


if __name__ == "__main__":
    main()
