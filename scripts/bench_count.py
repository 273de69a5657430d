#!/usr/bin/env python3
"""N-gram counting throughput: `engram count` (orders 2..3) on a synthetic
Zipfian stream (vocabulary 100k, exponent 1.1), with an ample budget and with
a budget that forces spills, 1 and 2 threads, and the in-memory run with two
peers: the other method (tables), and partition first in one pass (the whole
key stream in memory); beside it in the same script,
`sort | uniq -c` on the same n-grams as text for a slice; peak memory against
the budget. The counts are checked against numpy's for the slice.

usage: scripts/bench_count.py [--engram build/engram] [--tokens 500M] [--slice 2M] [--settle 25]
"""
import argparse
import json
import os
import subprocess
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.exit("bench_count: numpy is missing (apt-get install python3-numpy)")


def parse_count(s):
    mul = {"k": 10**3, "M": 10**6, "G": 10**9}
    return int(float(s[:-1]) * mul[s[-1]]) if s[-1] in mul else int(s)


def zipf_stream(path, n, vocab=100_000, s=1.1, seed=0):
    if os.path.exists(path) and os.path.getsize(path) == 4 * n:
        return
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** s
    cdf = np.cumsum(p / p.sum())
    with open(path + ".tmp", "wb") as f:
        left = n
        while left:
            k = min(left, 50_000_000)
            ids = np.searchsorted(cdf, rng.random(k)).astype("<u4")
            ids.tofile(f)
            left -= k
    os.replace(path + ".tmp", path)


def run_count(a, path, mem, threads, out, extra=()):
    # VMs hand freed guest memory back to the host after a while (free page
    # reporting); a run right after a big one finds its pages still backed and
    # touches them much faster. Each run starts from the settled state.
    time.sleep(a.settle)
    r = subprocess.run([a.engram, "count", path, "-V", "100000", "--pad", "0", "-n", "3", "-T", "4096",
                        "-m", mem, "-j", str(threads), "-k", "0", "-o", out, "--json", *extra],
                       check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engram", default="build/engram")
    ap.add_argument("--work", default="build/bench")
    ap.add_argument("--tokens", default="500M")
    ap.add_argument("--slice", default="2M")
    ap.add_argument("--ample", default="16G")
    ap.add_argument("--small", default="512M")
    ap.add_argument("--settle", type=float, default=25.0,
                    help="seconds to wait before each run (freed memory goes back to the host)")
    a = ap.parse_args()
    n, sl = parse_count(a.tokens), parse_count(a.slice)
    os.makedirs(a.work, exist_ok=True)
    stream = os.path.join(a.work, f"zipf{n}.u32")
    zipf_stream(stream, n)
    out = os.path.join(a.work, "zipf.counts")
    print(f"n-gram counting, orders 2..3, {n:,} Zipfian tokens (vocabulary 100k, s = 1.1), "
          "sequences of 4096")
    print(f"  {'run':<46}{'method':>10}{'passes':>7}{'count M tok/s':>14}{'overall M tok/s':>16}"
          f"{'spills':>8}{'peak MiB':>10}{'budget MiB':>11}")
    runs = [(mem, th, ()) for mem in (a.ample, a.small) for th in (1, 2)]
    # the peers of the in-memory runs: the same budget, counting with tables,
    # and partition first in one pass (the whole key stream in memory)
    runs.insert(2, (a.ample, 2, ("--method", "tables")))
    runs.insert(3, (a.ample, 2, ("--passes", "1")))
    runs.append((a.ample, 2, ("--wide-keys",)))  # two-word keys, the path for N x bits > 60
    runs.append((a.small, 2, ("--wide-counts",)))  # 64-bit counts, the path for >= 2^32 tokens
    overall = {}
    for mem, th, extra in runs:
        j = run_count(a, stream, mem, th, out, extra)
        name = (f"engram count, {mem}, {th} thread{'s' if th > 1 else ''}"
                f"{', ' + ' '.join(extra).lstrip('-').replace('-', ' ') if extra else ''}")
        overall[(mem, th, extra)] = j["tokens_per_second"]
        print(f"  {name:<46}{j['method']:>10}{j.get('passes', 0):>7}"
              f"{j['count_tokens_per_second'] / 1e6:>14.2f}{j['tokens_per_second'] / 1e6:>16.2f}"
              f"{j['spills']:>8}{j['peak_rss_mib']:>10.0f}{j['memory_budget'] / 2**20:>11.0f}")
    print(f"  {a.ample}, 2 threads: auto / tables = "
          f"{overall[(a.ample, 2, ())] / overall[(a.ample, 2, ('--method', 'tables'))]:.2f}x, "
          f"auto / one pass = {overall[(a.ample, 2, ())] / overall[(a.ample, 2, ('--passes', '1'))]:.2f}x")
    # the slice: sort | uniq -c on text n-grams vs engram count on the same tokens
    x = np.fromfile(stream, dtype="<u4", count=sl)
    slice_path = os.path.join(a.work, "zipf_slice.u32")
    x.tofile(slice_path)
    txt = os.path.join(a.work, "zipf_slice.txt")
    with open(txt, "w") as f:
        for n_ in (2, 3):
            cols = []
            for start in range(0, len(x), 4096):
                seq = x[start:start + 4096].astype(np.int64)
                padded = np.concatenate([np.zeros(n_ - 1, dtype=np.int64), seq])
                cols.append(np.stack([padded[k:k + len(seq)] for k in range(n_)], axis=1))
            g = np.concatenate(cols)
            np.savetxt(f, g, fmt="%d")
    t0 = time.perf_counter()
    subprocess.run(f"LC_ALL=C sort {txt} | uniq -c > {txt}.counted", shell=True, check=True)
    t_sort = time.perf_counter() - t0
    j = run_count(a, slice_path, a.small, 2, out)
    lines = sum(1 for _ in open(txt + ".counted"))
    distinct = sum(o["distinct"] for o in j["orders"])
    print(f"  slice of {sl:,} tokens: sort | uniq -c {sl / t_sort / 1e6:.2f} M tok/s, "
          f"engram count {j['tokens_per_second'] / 1e6:.2f} M tok/s "
          f"({j['tokens_per_second'] * t_sort / sl:.1f}x); distinct n-grams {lines:,} vs "
          f"{distinct:,} ({'same' if lines == distinct else 'DIFFER'})")
    # the peer that explains the in-memory runs: what a first touch of fresh
    # memory costs here (the tables are gigabytes touched once)
    buf = np.empty(1 << 28, dtype=np.int64)  # 2 GiB, not yet touched
    t0 = time.perf_counter()
    buf.fill(1)
    t1 = time.perf_counter()
    buf.fill(2)
    t2 = time.perf_counter()
    print(f"  first touch of 2 GiB of fresh memory: {2 * 2**30 / (t1 - t0) / 1e9:.2f} GB/s; "
          f"the same memory again: {2 * 2**30 / (t2 - t1) / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
