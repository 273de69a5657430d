#!/usr/bin/env python3
"""Projection time: `engram vocab` vs HuggingFace tokenizers itself (npm package,
bench/vocab_reference.js), same tokenizer files, same script; outputs compared
byte for byte. Figures are ratios measured in this run.

Needs ../shared (the real tokenizers) and node; the npm package `tokenizers` is
installed under build/npm on first use. Skips with a message when either is
missing.
usage: scripts/bench_vocab.py [--engram build/engram] [--shared ../shared]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engram", default="build/engram")
    ap.add_argument("--shared", default=os.environ.get("ENGRAM_SHARED", "../shared"))
    ap.add_argument("--npm-dir", default="build/npm")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    toks = [("deepseek-v3", "deepseek-v3.tokenizer.json"),
            ("mistral-v03 (json)", "mistral-v03.tokenizer.json")]
    tok_dir = os.path.join(a.shared, "data", "tokenizers")
    if not os.path.isdir(tok_dir):
        print(f"bench_vocab: skipped: {tok_dir} not found")
        return
    if not shutil.which("node"):
        print("bench_vocab: skipped: node not found")
        return
    mod = os.path.join(a.npm_dir, "node_modules", "tokenizers")
    if not os.path.isdir(mod):
        r = subprocess.run(["npm", "install", "--silent", "--prefix", a.npm_dir, "tokenizers"],
                           capture_output=True, text=True)
        if r.returncode != 0 or not os.path.isdir(mod):
            print("bench_vocab: skipped: npm could not install tokenizers")
            return
    env = dict(os.environ, NODE_PATH=os.path.join(os.path.abspath(a.npm_dir), "node_modules"))
    print("vocabulary projection: engram vocab vs HF tokenizers (node), best of "
          f"{a.repeats}, outputs compared byte for byte")
    print(f"  {'tokenizer':<20}{'ids':>8}{'V`':>8}{'HF s':>9}{'engram s':>10}{'speed-up':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, f in toks:
            path = os.path.join(tok_dir, f)
            ref_out, our_out = os.path.join(tmp, "ref.u32"), os.path.join(tmp, "our.u32")
            ref_s = our_s = None
            for _ in range(a.repeats):
                r = subprocess.run(["node", "bench/vocab_reference.js", path, ref_out], env=env,
                                   check=True, capture_output=True, text=True)
                ref = json.loads(r.stdout)
                ref_s = ref["seconds"] if ref_s is None else min(ref_s, ref["seconds"])
                r = subprocess.run([a.engram, "vocab", path, "-o", our_out, "--json", "--top", "0"],
                                   check=True, capture_output=True, text=True)
                our = json.loads(r.stdout)
                s = our["seconds_load"] + our["seconds_projection"]
                our_s = s if our_s is None else min(our_s, s)
            if open(ref_out, "rb").read() != open(our_out, "rb").read():
                sys.exit(f"bench_vocab: {name}: engram and HF projections differ")
            print(f"  {name:<20}{ref['vocab_size']:>8}{ref['compressed_vocab_size']:>8}"
                  f"{ref_s:>9.3f}{our_s:>10.3f}{ref_s / our_s:>9.1f}x")


if __name__ == "__main__":
    main()
