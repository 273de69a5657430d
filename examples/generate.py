#!/usr/bin/python3
"""Token-by-token generation from a model trained by examples/train_lm.py.

    examples/train_lm.py --arm engram --save build/train/model     # a model to serve
    examples/generate.py build/train/model --prompt "In the beginning" --tokens 40
    examples/generate.py build/train/model --bench                  # lookup cost per token

Tables larger than RAM: --cache-bytes N serves them from disk through the row
tier (a hot-row cache of N bytes); each step's rows are prefetched at the start
of the model's forward (the ids are known), --no-prefetch reads them when the
layer asks.

Each step feeds only the new token: attention reads its KV cache, and every
Engram layer hashes the token with the runtime's decode history (the last N-1
ids of each sequence, eg_rt_hash with a history: no re-hash of the prefix) and
continues its causal conv from its decode state (eg_layer_decode). The logits
equal the full-sequence forward's at every step (tests/python/
test_engram_torch.py, test_lm_decode_logits_equal_the_full_forward; --check
here compares them for the run at hand).

--bench measures, at batch 1, 8 and 64, the time per generated token of the
Engram layers' lookup (hash + gather) and layer, beside the rest of the step.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from lm import LM, keep_freed_memory  # noqa: E402


def load(path, threads=0, cache_bytes=None, prefetch=True, shared_cache=False):
    """A model saved by train_lm.py --save: PATH.json (shape), PATH.pt (dense weights),
    PATH.store (the tables' checkpoint). cache_bytes: serve the tables through the
    row tier with a hot-row cache of that many bytes (None: the memory map);
    prefetch: start each step's row reads with the forward (eg_rt_prefetch);
    shared_cache: that cache in shared memory, one for every process of the host."""
    with open(path + ".json") as f:
        meta = json.load(f)
    store = path + ".store" if meta["engram_layers"] else None
    model = LM(meta["vocab"], meta["d"], meta["n_layer"], meta["n_head"], meta["ffn"],
               meta["max_len"], engram=store, engram_layers=meta["engram_layers"], threads=threads,
               cache_bytes=cache_bytes, prefetch=prefetch, shared_cache=shared_cache)
    model.load_state_dict(torch.load(path + ".pt"))
    return model.eval(), meta


class Decoder:
    """Batched decoding state: a KV cache per block, a DecodeState per Engram layer."""

    def __init__(self, model, batch):
        self.model, self.batch, self.pos = model, batch, 0
        self.states = {k: layer.decode_state(batch) for k, layer in model.engram.items()}
        self.caches = [dict() for _ in model.blocks]

    @torch.no_grad()
    def feed(self, ids):
        """ids [B, n] -> logits [B, n, vocab] of these positions."""
        if self.pos + ids.shape[1] > self.model.max_len:
            raise ValueError(f"generate: {self.pos + ids.shape[1]} positions exceed the model's "
                             f"{self.model.max_len}")
        out = self.model(ids, self.states, self.caches, self.pos)
        self.pos += ids.shape[1]
        return out


@torch.no_grad()
def generate(model, prompt_ids, n_tokens, temperature=0.0, seed=0, check=False):
    """prompt_ids [B, P] -> [B, P + n_tokens]; greedy at temperature 0."""
    g = torch.Generator().manual_seed(seed)
    dec = Decoder(model, prompt_ids.shape[0])
    logits = dec.feed(prompt_ids)[:, -1]
    seq = prompt_ids
    steps = []
    for _ in range(n_tokens):
        if temperature > 0:
            nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=g)
        else:
            nxt = logits.argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
        logits = dec.feed(nxt)[:, -1]
        steps.append(logits)
    if check:
        full = model(seq)[:, prompt_ids.shape[1]:]
        diff = (torch.stack(steps, 1) - full).abs().max().item()
        print(f"check: decoded logits vs the full forward, max |diff| {diff:.2e}")
        if diff > 1e-4:
            raise SystemExit("generate: decoded logits differ from the full forward")
    return seq


def bench(model, batches=(1, 8, 64), steps=48, prompt=16):
    """Per generated token: Engram lookup (hash + gather), Engram layer, the rest."""
    layers = list(model.engram.values())
    timers = {"lookup": 0.0, "layer": 0.0}
    orig = {}
    for layer in layers:  # time the two halves of each Engram layer's decode call
        orig[layer] = (layer.lookup, layer._decode)

        def lookup(ids, state=None, _f=layer.lookup):
            t = time.perf_counter()
            r = _f(ids, state)
            timers["lookup"] += time.perf_counter() - t
            return r

        def decode(ids, h4, state, _f=layer._decode):
            t = time.perf_counter()
            r = _f(ids, h4, state)
            timers["layer"] += time.perf_counter() - t
            return r
        layer.lookup, layer._decode = lookup, decode
    rows = []
    rng = np.random.default_rng(0)
    for B in batches:
        ids = torch.from_numpy(rng.integers(0, model.vocab, size=(B, prompt)))
        for timed in (False, True):
            # the first pass touches the rows (the store checks each block's crc32
            # the first time one of its rows is read); the second is timed
            dec = Decoder(model, B)
            dec.feed(ids)
            nxt = ids[:, -1:]
            timers["lookup"] = timers["layer"] = 0.0
            t0 = time.perf_counter()
            for _ in range(steps):
                nxt = dec.feed(nxt)[:, -1].argmax(-1, keepdim=True)
            total = time.perf_counter() - t0
        lk, ly = timers["lookup"], timers["layer"] - timers["lookup"]
        rows.append({"batch": B, "step_ms": 1e3 * total / steps,
                     "engram_lookup_us_per_token": 1e6 * lk / steps / B,
                     "engram_layer_us_per_token": 1e6 * ly / steps / B,
                     "rest_us_per_token": 1e6 * (total - timers["layer"]) / steps / B,
                     "engram_share": timers["layer"] / total, "tokens_per_s": B * steps / total})
    for layer in layers:
        layer.lookup, layer._decode = orig[layer]
    return rows


def main():
    keep_freed_memory()  # see examples/lm.py
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the path prefix given to train_lm.py --save")
    ap.add_argument("--prompt", default="In the beginning", help="text (SentencePiece model of the run)")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--batch", type=int, default=1, help="copies of the prompt decoded together")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="compare with the full forward")
    ap.add_argument("--bench", action="store_true", help="lookup cost per token at batch 1, 8, 64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-bytes", type=int, default=None,
                    help="serve the tables from disk through the row tier with this hot-row cache")
    ap.add_argument("--shared-cache", action="store_true",
                    help="keep the hot-row cache in shared memory, one for every replica "
                         "on this host serving the same tables")
    ap.add_argument("--no-prefetch", action="store_true",
                    help="read each step's rows when the layer needs them, not ahead")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load(args.model, args.threads, args.cache_bytes, not args.no_prefetch,
                       args.shared_cache)
    if args.bench:
        rows = bench(model)
        if args.json:
            print(json.dumps(rows))
        else:
            print("batch  step ms  lookup us/tok  layer us/tok  rest us/tok  engram share  tok/s")
            for r in rows:
                print(f"{r['batch']:5d}  {r['step_ms']:7.2f}  {r['engram_lookup_us_per_token']:13.1f}"
                      f"  {r['engram_layer_us_per_token']:12.1f}  {r['rest_us_per_token']:11.1f}"
                      f"  {100 * r['engram_share']:11.1f}%  {r['tokens_per_s']:6.0f}")
        return
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=meta["tokenizer"])
    ids = torch.tensor([sp.encode(args.prompt)] * args.batch)
    out = generate(model, ids, args.tokens, args.temperature, args.seed, args.check)
    for row in out.tolist():
        print(sp.decode(row))


if __name__ == "__main__":
    main()
