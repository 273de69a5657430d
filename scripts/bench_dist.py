#!/usr/bin/env python3
"""Counting beyond one process, measured on this machine: the same Zipfian
stream as bench_count.py (vocabulary 100k, exponent 1.1; orders 2..3), cut
into shards, counted

  - by one process with all the cores (-j C), each method, and
  - by `mpirun -n C engram count --mpi -j 1` (the same cores, the same total
    memory: --memory divided among the ranks), and
  - by the merge path: C counts of disjoint halves one after the other
    (as batch jobs would run them), then `engram merge` (-j C);

with an ample budget and with one that makes the tables spill. Every output
is checked byte-identical to the single process's. Reports throughput, the
ratio of each path to the single process in the same script, the key bytes
exchanged per token and the time in the exchange, the merge's own rate
(input tokens per second of merging) and peak memory; --json for
docs/SCALING.md.

usage: scripts/bench_dist.py [--engram build/engram] [--tokens 100M] [--shards 8]
                             [--cores 2] [--settle 10] [--json OUT]
"""
import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_count import parse_count, zipf_stream  # noqa: E402

MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def run(a, argv, mpi_ranks=0):
    time.sleep(a.settle)  # see bench_count.py: freed memory settles on VMs
    if mpi_ranks:
        argv = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(mpi_ranks)] + argv
    t0 = time.perf_counter()
    r = subprocess.run(argv, check=True, capture_output=True, text=True, env=MPI_ENV)
    wall = time.perf_counter() - t0
    j = json.loads(r.stdout)
    j["wall"] = wall
    return j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engram", default="build/engram")
    ap.add_argument("--work", default="build/bench")
    ap.add_argument("--tokens", default="100M")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--settle", type=float, default=10)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not shutil.which("mpirun"):
        sys.exit("bench_dist: no mpirun (scripts/install-deps.sh installs OpenMPI)")
    n = parse_count(a.tokens)
    os.makedirs(a.work, exist_ok=True)
    stream = os.path.join(a.work, f"zipf{n}.u32")
    zipf_stream(stream, n)
    shards = []
    per = n // a.shards
    with open(stream, "rb") as f:
        for s in range(a.shards):
            p = os.path.join(a.work, f"dist{n}_{s:02d}.u32")
            data = f.read(4 * (per if s < a.shards - 1 else n - per * (a.shards - 1)))
            if not (os.path.exists(p) and os.path.getsize(p) == len(data)):
                with open(p, "wb") as o:
                    o.write(data)
            shards.append(p)
    C = a.cores
    count = lambda files: [a.engram, "count", *files, "-V", "100000", "--pad", "0", "-n", "3",  # noqa: E731
                           "-T", "4096", "-k", "0", "--json", "--tmp", a.work]
    base = count(shards)
    out = lambda name: os.path.join(a.work, f"dist_{name}.counts")  # noqa: E731
    results = []
    for label, mem in (("ample", 8 << 30), ("spilling", 512 << 20)):
        mib = f"{mem >> 20}M"
        row = {"budget": label, "memory": mem}
        one = out("one")
        row["one_auto"] = run(a, base + ["-m", mib, "-j", str(C), "-o", one])
        tables = out("tables")
        row["one_tables"] = run(a, base + ["-m", mib, "-j", str(C), "-o", tables, "--method", "tables"])
        assert filecmp.cmp(one, tables, shallow=False), "tables differ"
        ranks = out("ranks")
        row["mpi"] = run(a, base + ["-m", f"{(mem // C) >> 20}M", "-j", "1", "-o", ranks, "--mpi"],
                         mpi_ranks=C)
        assert filecmp.cmp(one, ranks, shallow=False), f"{C} ranks wrote another file"
        parts = []
        halves = [shards[: a.shards // 2], shards[a.shards // 2:]]
        row["parts"] = []
        for i, h in enumerate(halves):
            p = out(f"part{i}")
            j = run(a, count(h) + ["-m", mib, "-j", str(C), "-o", p])
            row["parts"].append(j)
            parts.append(p)
        merged = out("merged")
        row["merge"] = run(a, [a.engram, "merge", *parts, "-m", f"{min(mem, 1 << 30) >> 20}M",
                               "-j", str(C), "-k", "0", "-o", merged, "--json"])
        assert filecmp.cmp(one, merged, shallow=False), "the merge wrote another file"
        results.append(row)
        t1 = row["one_auto"]["seconds"]
        tt = row["one_tables"]["seconds"]
        m = row["mpi"]
        parts_s = sum(p["seconds"] for p in row["parts"])
        print(f"{label} budget ({mib} in all), {n / 1e6:.0f}M tokens, {C} cores, "
              f"outputs byte-identical")
        print(f"  one process -j {C}: {row['one_auto']['method']} {n / t1 / 1e6:.2f} M tok/s "
              f"({t1:.2f} s), tables {n / tt / 1e6:.2f} M tok/s ({tt:.2f} s, "
              f"{row['one_tables']['spills']} spills)")
        print(f"  mpirun -n {C} -j 1: {n / m['seconds'] / 1e6:.2f} M tok/s ({m['seconds']:.2f} s, "
              f"wall {m['wall']:.2f} s with MPI start) = {tt / m['seconds']:.2f}x one process's "
              f"tables, {t1 / m['seconds']:.2f}x its best; exchange "
              f"{m['exchange_bytes'] / n:.2f} bytes/token, {m['seconds_exchange']:.2f} s of "
              f"{m['seconds']:.2f} s in collectives; rank 0 peak {m['peak_rss_mib']:.0f} MiB")
        ms = row["merge"]["seconds"]
        print(f"  halves counted apart {parts_s:.2f} s + merge {ms:.2f} s "
              f"({n / ms / 1e6:.1f} M input tok/s, peak {row['merge']['peak_rss_mib']:.0f} MiB) = "
              f"{t1 / (parts_s + ms):.2f}x counting all at once")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"tokens": n, "cores": C, "shards": a.shards, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
