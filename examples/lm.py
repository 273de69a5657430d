"""A small decoder-only transformer in plain PyTorch, with or without Engram
layers (engram.torch.EngramLayer) before some of its blocks, and a KV cache
for token-by-token decoding. Shared by train_lm.py and generate.py.

The Engram layers sit where the reference puts them: at the start of block i
(i in the store's layer_ids), h = h + Engram(ids, h), before attention.
"""
import ctypes
import math
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F


def keep_freed_memory():
    """glibc hands large freed blocks back to the kernel (mmap'd blocks, and
    the heap's top past the trim threshold), and every training step then
    pays for fresh zeroed pages for its activations and gradients: on the
    development VM that is about a quarter of a small model's step. Keep
    them: blocks up to 256 MiB come from the heap, which is trimmed only past
    1 GiB free (the same as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_).
    A process-wide setting, so it is the training script's to make, not the
    library's. No effect outside glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    libc.mallopt(M_MMAP_THRESHOLD, 256 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(M_TOP_PAD, 64 << 20)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from engram.torch import EngramLayer, prefetch_on_forward  # noqa: E402


class Block(nn.Module):
    def __init__(self, d, n_head, ffn):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def attn(self, x, cache=None):
        B, T, d = x.shape
        nh, hd = self.n_head, d // self.n_head
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, nh, hd).transpose(1, 2) for t in (q, k, v))
        past = 0
        if cache is not None:
            if cache.get("k") is not None:
                past = cache["k"].shape[2]
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        S = k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=past)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, d)
        return self.proj(y)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class LM(nn.Module):
    """vocab: raw token ids; engram: None, or (store path or Runtime, kwargs) to put an
    EngramLayer before every block whose index is one of the store's layer_ids."""

    def __init__(self, vocab, d=128, n_layer=4, n_head=4, ffn=512, max_len=128, engram=None,
                 engram_layers=(), threads=0, cache_bytes=None, prefetch=True,
                 shared_cache=False):
        super().__init__()
        self.vocab, self.max_len = vocab, max_len
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList([Block(d, n_head, ffn) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.engram = nn.ModuleDict()
        for i in engram_layers:
            self.engram[str(i)] = EngramLayer(engram, layer_id=i, hidden=d, hc_mult=1,
                                              threads=threads, cache_bytes=cache_bytes,
                                              shared_cache=shared_cache)
        # the rows of every Engram layer depend only on the ids: their reads start
        # with the forward (eg_rt_prefetch) and overlap the blocks before each layer
        self.prefetch = prefetch_on_forward(self) if self.engram and prefetch else None
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def dense_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids, states=None, caches=None, start=0):
        """ids [B, T] -> logits [B, T, vocab]. Serving: states (per Engram layer, a
        DecodeState) and caches (per block, a dict) continue sequences at `start`."""
        B, T = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(start, start + T))[None]
        for i, blk in enumerate(self.blocks):
            key = str(i)
            if key in self.engram:
                x = x + self.engram[key](ids, x, state=states[key] if states else None)
            x = blk(x, caches[i] if caches is not None else None)
        return self.ln_f(x) @ self.tok.weight.T

    def engram_layers(self):
        return list(self.engram.values())
