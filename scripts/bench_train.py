#!/usr/bin/python3
"""Training and serving benchmarks of engram.torch (make bench; figures in
docs/BENCHMARKS.md and docs/TRAINING.md).

1. Training throughput of examples/train_lm.py's two arms on the same cores:
   the Engram arm's tokens/s over the baseline's (same dense parameters),
   alternating arm by arm in this process.
2. One Engram layer's training step (hash, gather, forward, backward, the
   tables' optimizer step) written the way the public reference writes it
   (engram_demo_v1.py: numpy hashing, nn.Embedding with offsets, torch ops for
   the gated layer and the short conv), an independent implementation here,
   against engram.torch.EngramLayer + TableAdam. Rows and outputs are compared
   first; then tokens/s of each, alternating. The reference's table trains
   with dense Adam (what a plain training script gets) and, as a second peer,
   with sparse gradients and torch.optim.SparseAdam.
3. Decoding: examples/generate.py's per-token cost of the Engram layers at
   batch 1, 8 and 64 beside the rest of the step.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(ROOT, "python"))
import engram  # noqa: E402
import train_lm  # noqa: E402
from lm import keep_freed_memory  # noqa: E402
from engram.torch import EngramLayer, TableAdam, close_stores  # noqa: E402


def median(xs):
    return float(np.median(xs))


# ---- 1. the two arms ----------------------------------------------------------------

def arms(rounds, steps, batch):
    ffn, _ = train_lm.matched_ffn()
    tr = train_lm.load("train")
    T, V = train_lm.T, train_lm.VOCAB
    models = {}
    for arm in ("baseline", "engram"):
        torch.manual_seed(0)
        m = train_lm.build_model(arm, "planned", ffn if arm == "baseline" else None)
        models[arm] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3),
                       TableAdam(m.engram_layers(), lr=1e-3))
    rng = np.random.default_rng(0)

    def run(arm, n):
        m, opt, topt = models[arm]
        t0 = time.perf_counter()
        for _ in range(n):
            s = rng.integers(0, len(tr) - T - 1, size=batch)
            w = torch.from_numpy(np.stack([tr[i:i + T + 1] for i in s]))
            loss = F.cross_entropy(m(w[:, :-1]).reshape(-1, V), w[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            topt.zero_grad()
            loss.backward()
            opt.step()
            topt.step()
        return n * batch * T / (time.perf_counter() - t0)

    for arm in models:
        run(arm, 3)  # warm up
    res = {"baseline": [], "engram": []}
    for _ in range(rounds):
        for arm in ("baseline", "engram"):
            res[arm].append(run(arm, steps))
    out = {a: round(median(v), 1) for a, v in res.items()}
    out["ratio"] = round(out["engram"] / out["baseline"], 3)
    out["ratios_per_round"] = [round(e / b, 3) for b, e in zip(res["baseline"], res["engram"])]
    out["median_ratio_per_round"] = round(median(out["ratios_per_round"]), 3)
    out["dense_params"] = {a: models[a][0].dense_parameters() for a in models}
    close_stores()
    return out


# ---- 2. the layer, the reference's way ----------------------------------------------

class RefEngram(nn.Module):
    """engram_demo_v1.py's Engram (hc_mult branches), hashing in numpy with the
    store's multipliers and primes, one nn.Embedding for all heads with offsets."""

    def __init__(self, mult, primes, offsets, n_rows, dim, pad, N, K, d, hc, kernel, sparse):
        super().__init__()
        self.mult, self.primes = np.asarray(mult, np.int64), np.asarray(primes, np.int64)
        self.offsets = torch.tensor(np.asarray(offsets, np.int64))
        self.pad, self.N, self.K, self.d, self.hc, self.kernel = pad, N, K, d, hc, kernel
        self.embedding = nn.Embedding(n_rows, dim, sparse=sparse)
        De = (N - 1) * K * dim
        self.value_proj = nn.Linear(De, d)
        self.key_projs = nn.ModuleList([nn.Linear(De, d) for _ in range(hc)])
        self.norm1 = nn.ParameterList([nn.Parameter(torch.ones(d)) for _ in range(hc)])
        self.norm2 = nn.ParameterList([nn.Parameter(torch.ones(d)) for _ in range(hc)])
        self.conv = nn.Conv1d(hc * d, hc * d, kernel, groups=hc * d, bias=False,
                              padding=(kernel - 1) * N, dilation=N)
        self.conv_norms = nn.ParameterList([nn.Parameter(torch.ones(d)) for _ in range(hc)])

    def hash(self, x):
        """[B, T] compressed ids (numpy int64) -> [B, T, (N-1)K] head indices."""
        B, T = x.shape
        shifts = [x] + [np.pad(x, ((0, 0), (k, 0)), constant_values=self.pad)[:, :T]
                        for k in range(1, self.N)]
        out = []
        for n in range(2, self.N + 1):
            mix = shifts[0] * self.mult[0]
            for k in range(1, n):
                mix = np.bitwise_xor(mix, shifts[k] * self.mult[k])
            for j in range(self.K):
                out.append(mix % self.primes[(n - 2) * self.K + j])
        return np.stack(out, axis=2)

    @staticmethod
    def rms(x, w, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def forward(self, cids, h):
        idx = torch.from_numpy(self.hash(cids)) + self.offsets
        e = self.embedding(idx).flatten(start_dim=-2)
        gates = []
        for i in range(self.hc):
            k = self.rms(self.key_projs[i](e), self.norm1[i], 1.1920929e-07)
            q = self.rms(h[:, :, i, :], self.norm2[i], 1.1920929e-07)
            g = (k * q).sum(-1) / math.sqrt(self.d)
            g = g.abs().clamp_min(1e-6).sqrt() * g.sign()
            gates.append(g.sigmoid().unsqueeze(-1))
        v = torch.stack(gates, dim=2) * self.value_proj(e).unsqueeze(2)
        B, T = cids.shape
        x = torch.cat([self.rms(v[:, :, i, :], self.conv_norms[i], 1e-5) for i in range(self.hc)], -1)
        y = self.conv(x.transpose(1, 2))[..., :T]
        return v + F.silu(y).transpose(1, 2).reshape(B, T, self.hc, self.d), idx


def layer_peer(store, rounds, steps, B, T, hc):
    L = engram.library()
    eng = EngramLayer(store, layer_id=1, hidden=128, hc_mult=hc)
    rt = eng.rt
    spec = rt._spec
    cfg = rt.config()
    N, K = rt.max_ngram, cfg["n_head_per_ngram"]
    import ctypes
    for name, res in (("eg_spec_multipliers", ctypes.POINTER(ctypes.c_int64)),
                      ("eg_spec_primes", ctypes.POINTER(ctypes.c_uint64)),
                      ("eg_spec_offsets", ctypes.POINTER(ctypes.c_uint64))):
        getattr(L, name).argtypes, getattr(L, name).restype = [ctypes.c_void_p, ctypes.c_uint32], res
    H = (N - 1) * K
    mult = [L.eg_spec_multipliers(spec, eng.li)[i] for i in range(N)]
    primes = [L.eg_spec_primes(spec, eng.li)[i] for i in range(H)]
    offsets = [L.eg_spec_offsets(spec, eng.li)[i] for i in range(H)]
    n_rows = rt.layer_rows(eng.li)
    proj = np.fromfile(os.path.join(ROOT, "build", "sample", "kjv.proj.u32"), dtype=np.uint32)
    peers = {}
    table = torch.from_numpy(rt.gather(eng.li, np.arange(n_rows, dtype=np.uint64)))
    for sparse in (False, True):
        torch.manual_seed(0)
        p = RefEngram(mult, primes, offsets, n_rows, rt.dim, int(proj[cfg["pad_id"]]), N, K, 128, hc,
                      eng.kernel, sparse)
        with torch.no_grad():
            p.embedding.weight.copy_(table)
            for i in range(hc):
                p.key_projs[i].weight.copy_(eng.w_k[i])
                p.key_projs[i].bias.copy_(eng.b_k[i])
                p.norm1[i].copy_(eng.norm_k[i])
                p.norm2[i].copy_(eng.norm_q[i])
                p.conv_norms[i].copy_(eng.norm_c[i])
            p.value_proj.weight.copy_(eng.w_v)
            p.value_proj.bias.copy_(eng.b_v)
            p.conv.weight.copy_(eng.conv.unsqueeze(1))
        emb = [p.embedding.weight]
        rest = [q for n_, q in p.named_parameters() if not n_.startswith("embedding")]
        if sparse:
            opts = [torch.optim.SparseAdam(emb, lr=5e-3), torch.optim.Adam(rest, lr=1e-3)]
        else:
            opts = [torch.optim.Adam([{"params": emb, "lr": 5e-3}, {"params": rest}], lr=1e-3)]
        peers["reference, dense Adam" if not sparse else "reference, SparseAdam"] = (p, opts)
    del table
    ours_opt = [torch.optim.Adam(eng.parameters(), lr=1e-3), TableAdam([eng], lr=1e-3)]
    tr = train_lm.load("train")
    rng = np.random.default_rng(1)

    def batch():
        s = rng.integers(0, len(tr) - T, size=B)
        raw = np.stack([tr[i:i + T] for i in s])
        return raw, torch.randn(B, T, hc, 128)

    # equal first: rows and outputs on one batch
    raw, h = batch()
    ours_out = eng(torch.from_numpy(raw), h)
    ours_rows, _ = eng.lookup(torch.from_numpy(raw))
    for name, (p, _) in peers.items():
        out, idx = p(proj[raw].astype(np.int64), h)
        assert np.array_equal(idx.numpy().astype(np.uint64), ours_rows), "rows differ"
        err = float((out - ours_out).abs().max() / ours_out.abs().max())
        assert err < 1e-4, (name, err)
    eng.zero_table_grad()
    agree = {"rows": "identical", "output_max_rel_err": err}

    def layer_ours(raw, h):
        return eng(torch.from_numpy(raw), h)

    def peer_layer(p):
        return lambda raw, h: p(proj[raw].astype(np.int64), h)[0]

    # each implementation: its layer and its optimizers, timed the same way
    impls = {"engram.torch": (layer_ours, ours_opt)}
    impls.update({name: (peer_layer(p), opts) for name, (p, opts) in peers.items()})

    def run(name, n):
        layer, opts = impls[name]
        t0 = time.perf_counter()
        for _ in range(n):
            raw, h = batch()
            loss = layer(raw, h.requires_grad_()).square().mean()
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
        return n * B * T / (time.perf_counter() - t0)

    for name in impls:
        run(name, 2)  # warm up
    res = {name: [] for name in impls}
    for _ in range(rounds):
        for name in impls:
            res[name].append(run(name, steps))
    out = {k: round(median(v), 1) for k, v in res.items()}
    out.update({f"ratio vs {k}": round(out["engram.torch"] / out[k], 2) for k in peers})
    out.update(agree)
    out["table_rows"] = n_rows
    close_stores()
    return out


# ---- 3. decoding --------------------------------------------------------------------

def decoding(model_path):
    import generate
    model, _ = generate.load(model_path)
    rows = generate.bench(model)
    close_stores()
    return rows


def main():
    keep_freed_memory()  # examples/lm.py: the same for every arm
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not os.path.exists(os.path.join(train_lm.OUT, "planned.store")):
        train_lm.prepare()
    res = {"threads": args.threads, "torch": torch.__version__}
    res["arms"] = arms(args.rounds, args.steps, 16)
    print("training tokens/s, same cores:", json.dumps(res["arms"]), flush=True)
    res["layer"] = layer_peer(os.path.join(train_lm.OUT, "planned.store"), args.rounds, args.steps,
                              16, 128, 1)
    print("one Engram layer's training step, tokens/s:", json.dumps(res["layer"]), flush=True)
    model = os.path.join(train_lm.OUT, "bench-model")
    if not os.path.exists(model + ".json"):
        train_lm.train("engram", 0, 20, save=model, eval_windows=8)
    res["decode"] = decoding(model)
    print("decoding, per generated token:")
    for r in res["decode"]:
        print("  " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
