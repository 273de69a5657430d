#!/usr/bin/env python3
"""Store write throughput: `engram build` of the reference demo config (two
layers of 10.3M rows of 64 values; bf16 = 2.6 GB, f32 = 5.3 GB) against a
plain sequential write of the same number of bytes (os.write of 8 MiB buffers,
then fsync) in the same script. The bar: build at least 0.8x the plain write.

usage: scripts/bench_store.py [--engram build/engram] [--work build/bench] [--runs 2]
"""
import argparse
import json
import os
import subprocess
import time


def plain_write(path, nbytes):
    buf = os.urandom(8 << 20)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    left = nbytes
    while left:
        n = os.write(fd, buf[:min(left, len(buf))])
        left -= n
    os.fsync(fd)
    os.close(fd)
    dt = time.perf_counter() - t0
    os.unlink(path)
    return dt


def build(a, path, dtype):
    t0 = time.perf_counter()
    r = subprocess.run([a.engram, "build", "-c", "configs/demo.json", "-V", "129280", "-d", dtype,
                        "-o", path, "--json"], check=True, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    j = json.loads(r.stdout)
    os.unlink(path)
    return dt, j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engram", default="build/engram")
    ap.add_argument("--work", default="build/bench")
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    store = os.path.join(a.work, "bench.store")
    plain = os.path.join(a.work, "bench.plain")
    print("store build vs a plain sequential write of the same bytes (+ fsync), best of "
          f"{a.runs}; the demo config, V' = 129,280")
    print(f"  {'dtype':<7}{'file MiB':>10}{'build s':>9}{'build MiB/s':>13}{'plain s':>9}"
          f"{'plain MiB/s':>13}{'ratio':>7}{'peak RSS MiB':>14}")
    for dtype in ("bf16", "f32"):
        best_b, best_p, j = None, None, None
        for _ in range(a.runs):
            dt, jj = build(a, store, dtype)
            if best_b is None or dt < best_b:
                best_b, j = dt, jj
            dp = plain_write(plain, jj["file_bytes"])
            best_p = dp if best_p is None else min(best_p, dp)
        mib = j["file_bytes"] / 2**20
        print(f"  {dtype:<7}{mib:>10.0f}{best_b:>9.2f}{mib / best_b:>13.0f}{best_p:>9.2f}"
              f"{mib / best_p:>13.0f}{best_p / best_b:>7.2f}{j['peak_rss_mib']:>14.0f}")
    print("  (ratio = plain time / build time; the build generates every row with Philox4x32-10,"
          " encodes it, checksums each block and syncs; peak RSS counts the file's mapped pages)")


if __name__ == "__main__":
    main()
