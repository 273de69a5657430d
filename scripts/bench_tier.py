#!/usr/bin/env python3
"""The row tier at a scale larger than RAM (docs/BENCHMARKS.md, "The row tier").

One script, side by side on this machine:
  - the store: configs/tier-bench.json (2 layers, 2- to 4-grams, 8 heads of 64
    values, fp8: 580.8M rows, 35.7 GiB, 1.5x the RAM of a 24 GiB machine), and a
    store of the same shape with a tenth of the rows that fits in RAM; the big
    one's `engram build` rate against `dd if=/dev/zero ... conv=fsync` and fio's
    sequential write of random data with an fsync, of the same bytes.
  - the disk's own random-read rate at the tier's request size (fio, 4 KiB,
    O_DIRECT, 16 jobs: the tier's 16 reader threads).
  - gather rows/s, lookups from a real token stream (the KJV prepared by
    `make demo`, hashed for both layers), steady state after a warm-up:
    the tier with a 4 GiB cache, the same store through the memory map as
    before the tier, the store that fits in RAM (resident); and uniformly random
    rows with no cache (every row a disk read) against fio's rate.
  - decoding tokens/s of a 16-block LM (examples/lm.py, d=512, Engram before
    blocks 1 and 15) at batch 8 on real text: tier + prefetch, tier with reads
    when the layer asks, and the resident store.
Each measurement runs in its own process (its peak RSS is its own); the page
cache of the big store is dropped before each.

usage: scripts/bench_tier.py [--work build/bench] [--json OUT] [--seconds 40]
                             [--only build,fio,gather,decode]  (a store already built is kept;
                             remove build/bench/tier.store to measure the build again)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "examples"))
ENGRAM = os.path.join(ROOT, "build", "engram")
SAMPLE = os.path.join(ROOT, "build", "sample")
GiB = 1 << 30


def drop_cache(path):
    """Evict the file's pages (and, as root, the whole page cache)."""
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError:
        pass


def build_store(path, cfg, vocab_scale=None):
    """engram build of cfg (fp8) at path unless it exists; returns the build's JSON or None."""
    if os.path.exists(path):
        return None
    if vocab_scale:
        with open(cfg) as f:
            c = json.load(f)
        c["engram_vocab_size"] = [int(v * vocab_scale) for v in c["engram_vocab_size"]]
        cfg = path + ".json"
        with open(cfg, "w") as f:
            json.dump(c, f)
    t0 = time.perf_counter()
    r = subprocess.run([ENGRAM, "build", "-c", cfg, "-t", os.path.join(SAMPLE, "kjv.model"),
                        "-d", "fp8_e4m3", "-o", path, "--json", "-q"], check=True,
                       capture_output=True, text=True)
    j = json.loads(r.stdout)
    j["wall_s"] = time.perf_counter() - t0
    return j


def dd_fsync(path, nbytes):
    """dd of nbytes from /dev/zero with conv=fsync: the disk's sequential write rate."""
    bs = 8 << 20
    t0 = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", f"bs={bs}", f"count={nbytes // bs}",
                    "conv=fsync"], check=True, capture_output=True)
    dt = time.perf_counter() - t0
    os.unlink(path)
    return (nbytes // bs) * bs / dt


def fio_write(path, nbytes):
    """fio's sequential write of nbytes of random data (8 MiB requests) with an fsync at the end:
    the disk's write rate (dd from /dev/zero can be flattered by a virtual disk's zero pages)."""
    r = subprocess.run(["fio", "--name=w", f"--filename={path}", "--rw=write", "--bs=8m",
                        f"--size={nbytes}", "--end_fsync=1", "--refill_buffers",
                        "--output-format=json"], check=True, capture_output=True, text=True)
    os.unlink(path)
    j = json.loads(r.stdout)["jobs"][0]
    secs = j["job_runtime"] / 1e3 if j.get("job_runtime") else j["write"]["runtime"] / 1e3
    return nbytes / secs


def settle():
    """Wait for writeback to finish, so that a measurement reads an idle disk."""
    os.sync()
    time.sleep(10)


def fio_randread(path, seconds):
    r = subprocess.run(["fio", "--name=rr", f"--filename={path}", "--rw=randread", "--bs=4k",
                        "--direct=1", "--ioengine=psync", "--numjobs=16", "--group_reporting",
                        f"--runtime={seconds}", "--time_based", "--readonly",
                        "--output-format=json"], check=True, capture_output=True, text=True)
    j = json.loads(r.stdout)["jobs"][0]["read"]
    return {"iops": j["iops"], "MiB_s": j["bw_bytes"] / 2**20,
            "lat_us_mean": j["clat_ns"]["mean"] / 1e3}


# ---- measurements, each in its own process ------------------------------------------

def token_windows(B, T):
    """The KJV token stream (prepared by make demo) as consecutive [B, T] windows."""
    import numpy as np
    ids = np.fromfile(os.path.join(SAMPLE, "kjv.bin"), dtype=np.uint16).astype(np.uint32)
    n = len(ids) // (B * T)
    return ids[: n * B * T].reshape(n, B, T)


def phase_gather(a):
    import numpy as np
    import engram
    rt = engram.Runtime(a.store, cache_bytes=a.cache, threads=2) if a.cache is not None \
        else engram.Runtime(a.store, threads=2)
    B, T = 8, 128
    if a.uniform:
        rng = np.random.default_rng(1)
        steps = [[rng.integers(0, rt.layer_rows(li), size=B * T * rt.n_heads, dtype=np.uint64)
                  for li in range(rt.n_layers)] for _ in range(64)]
        warm = 0
    else:  # hashed when used (the rows of the whole stream would be 400 MB)
        wins = token_windows(B, T)
        steps = [w for w in wins]
        warm = int(len(steps) * 0.3)
    if a.resident:
        read_whole(a.store)

    def rows_of(s):
        return s if a.uniform else [rt.hash(li, s).reshape(-1) for li in range(rt.n_layers)]
    # warm-up: the first 30% of the stream (the cache and page cache fill)
    t0 = time.perf_counter()
    for s in steps[:warm]:
        for li, rows in enumerate(rows_of(s)):
            rt.gather(li, rows)
        if time.perf_counter() - t0 > a.warm_seconds:
            break
    st0 = rt.tier_stats()
    n_rows, k, t0 = 0, warm, time.perf_counter()
    while time.perf_counter() - t0 < a.seconds:
        s = steps[k % len(steps)] if a.uniform else steps[warm + (k - warm) % (len(steps) - warm)]
        for li, rows in enumerate(rows_of(s)):
            rt.gather(li, rows)
            n_rows += rows.size
        k += 1
        if a.uniform and k - warm >= len(steps) * 4:
            break
    dt = time.perf_counter() - t0
    st = rt.tier_stats()
    d = {key: st[key] - st0[key] for key in ("lookups", "hits", "waited", "rows_read", "reads",
                                            "bytes_read")}
    out = {"rows_s": n_rows / dt, "seconds": dt, "rows": n_rows, "steps": k - warm,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "tier": d, "cache_bytes": st["cache_bytes"], "direct": st["direct"],
           "reads_s": d["reads"] / dt if d["reads"] else 0.0}
    if d["lookups"]:
        out["hit_rate"] = d["hits"] / d["lookups"]
    print(json.dumps(out))


def read_whole(path):
    """Every page of the file into the page cache (a store that fits in RAM, resident)."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


def phase_decode(a):
    import numpy as np
    import torch
    from lm import LM
    from generate import Decoder
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = LM(4000, d=512, n_layer=16, n_head=8, ffn=2048, max_len=512, engram=a.store,
               engram_layers=[1, 15], threads=2, cache_bytes=a.cache,
               prefetch=not a.no_prefetch).eval()
    rt = next(iter(model.engram.values())).rt
    B = 8
    ids = np.fromfile(os.path.join(SAMPLE, "kjv.bin"), dtype=np.uint16).astype(np.int64)
    if a.resident:
        read_whole(a.store)
    # warm the row cache (or the page cache) on the first 30% of the stream
    if not a.cold:
        wins = token_windows(8, 128)
        t0 = time.perf_counter()
        for w in wins[: int(len(wins) * 0.3)]:
            for li in range(rt.n_layers):
                rt.gather(li, rt.hash(li, w).reshape(-1))
            if time.perf_counter() - t0 > a.warm_seconds:
                break
    n = len(ids)
    starts = [int(n * (0.4 + 0.07 * b)) for b in range(B)]  # text the warm-up did not read
    steps, warm = 320, 32
    st0 = None
    with torch.no_grad():
        dec = Decoder(model, B)
        t0 = None
        for t in range(steps):
            if t == warm:
                t0, st0 = time.perf_counter(), rt.tier_stats()
            tok = torch.tensor([[ids[s + t]] for s in starts])
            dec.feed(tok)
        dt = time.perf_counter() - t0
    st = rt.tier_stats()
    d = {k: st[k] - st0[k] for k in ("lookups", "hits", "waited", "rows_read", "reads")}
    print(json.dumps({"tokens_s": B * (steps - warm) / dt, "step_ms": 1e3 * dt / (steps - warm),
                      "tier": d,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_phase(args, drop=None, warm=120):
    args = args + ["--warm-seconds", str(warm)]
    if drop:
        drop_cache(drop)
    env = dict(os.environ, ENGRAM_LIB=os.path.join(ROOT, "build", "libengram.so"))
    r = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, check=True,
                       capture_output=True, text=True, env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--seconds", type=float, default=40, help="each measurement's length")
    ap.add_argument("--warm-seconds", type=float, default=120,
                    help="at most this long warming the cache on the first 30%% of the stream")
    ap.add_argument("--cache-gib", type=float, default=4)
    ap.add_argument("--only", default="build,fio,fio-ab,gather,decode")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--uniform", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-prefetch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--resident", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "gather":
        return phase_gather(a)
    if a.phase == "decode":
        return phase_decode(a)
    os.makedirs(a.work, exist_ok=True)
    if not os.path.exists(os.path.join(SAMPLE, "kjv.bin")):
        subprocess.run([os.path.join(ROOT, "scripts", "demo.sh")], check=True, capture_output=True)
    big = os.path.join(a.work, "tier.store")
    small = os.path.join(a.work, "tier-small.store")
    cfg = os.path.join(ROOT, "configs", "tier-bench.json")
    only = set(a.only.split(","))
    res = {"machine": {"cores": os.cpu_count(),
                       "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB}}
    cache = int(a.cache_gib * GiB)
    if "build" in only or not os.path.exists(big):
        j = build_store(big, cfg)
        if j:
            settle()
            dd = dd_fsync(os.path.join(a.work, "dd.tmp"), j["file_bytes"])
            settle()
            fw = fio_write(os.path.join(a.work, "fio.tmp"), j["file_bytes"])
            rate = j["file_bytes"] / j["wall_s"]
            res["build"] = {"file_gib": j["file_bytes"] / GiB, "seconds": j["wall_s"],
                            "MiB_s": rate / 2**20, "dd_zero_fsync_MiB_s": dd / 2**20,
                            "fio_write_fsync_MiB_s": fw / 2**20, "ratio_dd": rate / dd,
                            "ratio_fio": rate / fw, "peak_rss_mib": j.get("peak_rss_mib")}
            print("build:", json.dumps(res["build"]), flush=True)
    build_store(small, cfg, vocab_scale=0.1)
    res["store_gib"] = os.path.getsize(big) / GiB
    res["small_store_gib"] = os.path.getsize(small) / GiB
    if "fio" in only:
        settle()
        drop_cache(big)
        res["fio_4k_randread"] = fio_randread(big, 20)
        print("fio:", json.dumps(res["fio_4k_randread"]), flush=True)
    if "fio-ab" in only:  # the disk drifts: fio and the tier alternated, pair by pair
        pairs = res["fio_vs_tier_uniform"] = []
        for _ in range(4):
            settle()
            drop_cache(big)
            f = fio_randread(big, 10)
            t = run_phase(["--phase", "gather", "--store", big, "--cache", "0", "--uniform",
                           "--seconds", "10"], drop=big, warm=0)
            pairs.append({"fio_iops": f["iops"], "tier_reads_s": t["reads_s"],
                          "tier_rows_s": t["rows_s"], "ratio": t["reads_s"] / f["iops"]})
            print("fio / tier:", json.dumps(pairs[-1]), flush=True)
    if "gather" in only:
        g = res["gather"] = {}
        W = a.warm_seconds
        g["uniform_tier_nocache"] = run_phase(["--phase", "gather", "--store", big, "--cache", "0",
                                               "--uniform", "--seconds", str(a.seconds)], drop=big, warm=W)
        print("gather uniform, tier, no cache:", json.dumps(g["uniform_tier_nocache"]), flush=True)
        if "fio" in only:  # the disk again, right after: its rate drifts on this VM
            res["fio_4k_randread_after"] = fio_randread(big, 20)
            print("fio again:", json.dumps(res["fio_4k_randread_after"]), flush=True)
        g["tier"] = run_phase(["--phase", "gather", "--store", big, "--cache", str(cache),
                               "--seconds", str(a.seconds)], drop=big, warm=W)
        print("gather tier:", json.dumps(g["tier"]), flush=True)
        g["mmap"] = run_phase(["--phase", "gather", "--store", big, "--seconds", str(a.seconds)],
                              drop=big, warm=W)
        print("gather mmap:", json.dumps(g["mmap"]), flush=True)
        g["resident"] = run_phase(["--phase", "gather", "--store", small, "--resident",
                                   "--seconds", str(a.seconds)], drop=big, warm=W)
        print("gather resident:", json.dumps(g["resident"]), flush=True)
    if "decode" in only:
        dcd = res["decode"] = {}
        dcd["tier_prefetch"] = run_phase(["--phase", "decode", "--store", big, "--cache", str(cache),
                                          "--seconds", str(a.seconds)], drop=big, warm=a.warm_seconds)
        print("decode tier + prefetch:", json.dumps(dcd["tier_prefetch"]), flush=True)
        dcd["tier_sync"] = run_phase(["--phase", "decode", "--store", big, "--cache", str(cache),
                                      "--no-prefetch", "--seconds", str(a.seconds)], drop=big, warm=a.warm_seconds)
        print("decode tier, reads when asked:", json.dumps(dcd["tier_sync"]), flush=True)
        dcd["resident"] = run_phase(["--phase", "decode", "--store", small, "--resident",
                                     "--seconds", str(a.seconds)], drop=big, warm=a.warm_seconds)
        print("decode resident:", json.dumps(dcd["resident"]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
