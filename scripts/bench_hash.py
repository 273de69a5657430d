#!/usr/bin/env python3
"""Hash throughput: engram (1 thread, all threads) vs numpy, same ids, same script.

The numpy side is an independent implementation of the reference semantics
(engram_demo_v1.py): multipliers from numpy.random.default_rng, primes from a
Python primality test, int64 arithmetic and floor modulo. Outputs are compared
bit for bit before any figure is printed. Figures are ratios against numpy
measured in this run; nothing here asserts a timing.

usage: scripts/bench_hash.py [--engram build/engram] [--tokens N] [--seq-len T]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
except ImportError:
    sys.exit("bench_hash: numpy is missing (apt-get install python3-numpy; "
             "run with Debian's /usr/bin/python3)")


def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def reference_spec(cfg, vprime):
    half = max(1, (np.iinfo(np.int64).max // vprime) // 2)
    mults, primes, seen = {}, {}, set()
    for L in cfg["layer_ids"]:
        r = np.random.default_rng(int(cfg.get("seed", 0) + 10007 * L)).integers(
            0, half, size=(cfg["max_ngram_size"],), dtype=np.int64)
        mults[L] = r * 2 + 1
    for L in cfg["layer_ids"]:
        heads = []
        for n in range(2, cfg["max_ngram_size"] + 1):
            start = cfg["engram_vocab_size"][n - 2] - 1
            for _ in range(cfg["n_head_per_ngram"]):
                c = start + 1
                while not is_prime(c) or c in seen:
                    c += 1
                seen.add(c)
                heads.append(c)
                start = c
        primes[L] = heads
    return mults, primes


def numpy_hash(x, cfg, mults, primes, pad):
    B, T = x.shape
    N = cfg["max_ngram_size"]
    out = {}
    for L in cfg["layer_ids"]:
        m = mults[L]
        sh = [x] + [np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=pad)[:, :T]
                    for k in range(1, N)]
        hs = []
        for n in range(2, N + 1):
            mix = sh[0] * m[0]
            for k in range(1, n):
                mix = np.bitwise_xor(mix, sh[k] * m[k])
            for j in range(cfg["n_head_per_ngram"]):
                hs.append(mix % int(primes[L][(n - 2) * cfg["n_head_per_ngram"] + j]))
        out[L] = np.stack(hs, axis=2)
    return out


def run_size(a, cfg, bench_bin, tokens_wanted, repeats):
    B = max(1, tokens_wanted // a.seq_len)
    tokens = B * a.seq_len
    ids = np.random.default_rng(2026).integers(0, a.vprime, size=(B, a.seq_len), dtype=np.int64)
    pad = cfg["pad_id"]  # ids are taken as compressed (identity projection)
    mults, primes = reference_spec(cfg, a.vprime)
    numpy_hash(ids, cfg, mults, primes, pad)  # warm-up
    best_np = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = numpy_hash(ids, cfg, mults, primes, pad)
        dt = time.perf_counter() - t0
        best_np = dt if best_np is None else min(best_np, dt)
    want = np.concatenate([ref[L].reshape(-1) for L in cfg["layer_ids"]]).astype("<u4")
    del ref
    nthreads = os.cpu_count() or 1
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.u32")
        ids.astype("<u4").tofile(ids_path)
        for th in sorted({1, nthreads}):
            out_path = os.path.join(tmp, f"out{th}.u32")
            r = subprocess.run([bench_bin, a.config, str(a.vprime), ids_path, str(a.seq_len),
                                str(th), str(repeats), out_path],
                               check=True, capture_output=True, text=True)
            runs[th] = json.loads(r.stdout)
            got = np.fromfile(out_path, dtype="<u4")
            if not np.array_equal(got, want):
                bad = int(np.argmax(got != want))
                sys.exit(f"bench_hash: engram and numpy disagree at value {bad}: "
                         f"{got[bad]} != {want[bad]}")
    return tokens, B, tokens / best_np, runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engram", default="build/engram")
    ap.add_argument("--bench-bin", default=None, help="default: bench_hash beside --engram")
    ap.add_argument("--config", default="configs/demo.json")
    ap.add_argument("--vprime", type=int, default=98627)
    ap.add_argument("--sizes", default="65536,1048576",
                    help="token counts to measure (a training batch, a corpus slice)")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--json-out", default="bench-out/hash.json")
    a = ap.parse_args()
    bench_bin = a.bench_bin or os.path.join(os.path.dirname(a.engram), "bench_hash")
    cfg = json.load(open(a.config))
    layers = len(cfg["layer_ids"])
    heads = (cfg["max_ngram_size"] - 1) * cfg["n_head_per_ngram"]
    print(f"hash throughput, {a.config}: {layers} layers x {heads} heads, V' = {a.vprime}, "
          f"sequences of {a.seq_len}; numpy and engram hash the same ids and their outputs are "
          f"compared bit for bit; best of several runs each")
    print(f"  {'tokens':>10}  {'implementation':<20}{'tokens/s':>16}{'vs numpy':>10}")
    results = []
    for size in [int(s) for s in a.sizes.split(",")]:
        repeats = 50 if size <= (1 << 17) else 3
        tokens, B, np_tps, runs = run_size(a, cfg, bench_bin, size, repeats)
        print(f"  {tokens:>10,}  {'numpy (1 thread)':<20}{np_tps:>16,.0f}{1.0:>9.1f}x")
        res = {"tokens": tokens, "sequences": B, "numpy_tokens_per_second": np_tps,
               "engram": {}}
        for th, r in runs.items():
            tps = r["tokens_per_second"]
            name = f"engram, {th} thread" + ("s" if th > 1 else "")
            print(f"  {'':>10}  {name:<20}{tps:>16,.0f}{tps / np_tps:>9.1f}x")
            res["engram"][str(th)] = {"tokens_per_second": tps, "ratio_vs_numpy": tps / np_tps}
        results.append(res)
    if a.json_out:
        os.makedirs(os.path.dirname(a.json_out) or ".", exist_ok=True)
        with open(a.json_out, "w") as f:
            json.dump({"config": a.config, "seq_len": a.seq_len, "layers": layers,
                       "heads": heads, "vprime": a.vprime, "runs": results}, f, indent=2)
        print(f"  (written to {a.json_out})")


if __name__ == "__main__":
    main()
