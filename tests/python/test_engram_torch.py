#!/usr/bin/env python3
"""engram.torch: the EngramLayer module, its autograd Function, the tables'
sparse Adam, checkpoints (resumed = uninterrupted, bit for bit), decoding with
state (= the whole sequence), and bad input. Run by the C test
torch_module_suite (ENGRAM_LIB, ENGRAM_BIN set there), or by hand:
  ENGRAM_LIB=build/libengram.so ENGRAM_BIN=build/engram python3 tests/python/test_engram_torch.py [NAME...]
"""
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples"))
sys.path.insert(0, HERE)
import engram  # noqa: E402
from engram.torch import EngramLayer, TableAdam, close_stores, layer_function  # noqa: E402
from test_layer_torch import reference  # noqa: E402

torch.set_default_dtype(torch.float32)  # test_layer_torch sets float64 on import

BIN = os.environ.get("ENGRAM_BIN", "build/engram")
V = 300  # compressed vocabulary of the test stores (ids are taken as compressed)
TMP = tempfile.mkdtemp(prefix="engram-torch-")
torch.set_num_threads(2)


def make_store(name="s.store", layer_ids=(1, 2), sizes=(701, 1103), seed=3, dim_total=16,
               heads=2, dtype="f32"):
    cfg = os.path.join(TMP, name + ".json")
    with open(cfg, "w") as f:
        f.write(f'{{"engram_vocab_size": {list(sizes)}, "max_ngram_size": 3, '
                f'"n_embed_per_ngram": {dim_total}, "n_head_per_ngram": {heads}, '
                f'"layer_ids": {list(layer_ids)}, "pad_id": 0, "seed": {seed}, "kernel_size": 4, '
                f'"hidden_size": 16, "hc_mult": 1}}')
    path = os.path.join(TMP, name)
    subprocess.run([BIN, "build", "-c", cfg, "-V", str(V), "-o", path, "-q", "-d", dtype,
                    "--init-std", "0.5"], check=True, stdout=subprocess.DEVNULL)
    return path, cfg


def rand_weights(hc, d, De, g, dtype=torch.float64, bias=True):
    r = lambda *s, sc=1.0: ((torch.rand(*s, generator=g) * 2 - 1) * sc).to(dtype)  # noqa: E731
    return [r(hc, d, De, sc=De ** -0.5), r(hc, d, sc=0.1) if bias else None,
            r(d, De, sc=De ** -0.5), r(d, sc=0.1) if bias else None,
            1 + r(hc, d, sc=0.2), 1 + r(hc, d, sc=0.2), 1 + r(hc, d, sc=0.2),
            r(hc * d, 4, sc=0.5)]


# ---- the autograd Function ----------------------------------------------------------

def test_gradcheck_float64():
    """torch.autograd.gradcheck of layer_function in float64 on small shapes (the
    runtime computes in float32: finite differences of 1e-3, tolerance 1e-3 + 1e-2 rel)."""
    for B, T, hc, d, De, bias in [(1, 5, 1, 4, 6, True), (2, 7, 2, 4, 6, False)]:
        g = torch.Generator().manual_seed(B * 100 + T)
        W = [w.requires_grad_() if w is not None else None
             for w in rand_weights(hc, d, De, g, bias=bias)]
        e = (torch.rand(B, T, De, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
        h = (torch.rand(B, T, hc, d, generator=g, dtype=torch.float64) * 4 - 2).requires_grad_()
        inputs = (e, h, *W)
        fn = lambda e_, h_, *w_: layer_function(e_, h_, *w_, dilation=3)  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-3, atol=1e-3, rtol=1e-2), (B, T, hc)


def test_function_gradients_equal_float64_reference():
    """Every gradient through the Function (e, h, all weights) is within 1e-5 of
    the float64 reference layer's autograd on the same float32 values."""
    g = torch.Generator().manual_seed(7)
    B, T, hc, d, De = 2, 11, 2, 16, 24
    W32 = [w.float() if w is not None else None for w in rand_weights(hc, d, De, g)]
    e32 = torch.rand(B, T, De, generator=g) * 2 - 1
    h32 = torch.rand(B, T, hc, d, generator=g) * 4 - 2
    dout = torch.rand(B, T, hc, d, generator=g) * 2 - 1
    names = ["w_k", "b_k", "w_v", "b_v", "norm_k", "norm_q", "norm_c", "conv"]
    Wd = {n: w.double().requires_grad_() for n, w in zip(names, W32)}
    ed, hd = e32.double().requires_grad_(), h32.double().requires_grad_()
    ref = reference(ed, hd, Wd, 4, 3, 1.1920929e-07, 1e-5)
    ref.backward(dout.double())
    Wf = [w.clone().requires_grad_() for w in W32]
    ef, hf = e32.clone().requires_grad_(), h32.clone().requires_grad_()
    out = layer_function(ef, hf, *Wf, dilation=3, eps_conv=1e-5)
    out.backward(dout)
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    assert rel(out.detach(), ref.detach()) < 1e-5
    for name, a, b in [("e", ef.grad, ed.grad), ("h", hf.grad, hd.grad)] + \
            [(n, w.grad, Wd[n].grad) for n, w in zip(names, Wf)]:
        assert rel(a, b) < 1e-5, (name, rel(a, b))


# ---- the module ---------------------------------------------------------------------

def test_module_output_equals_the_c_forward():
    store, _ = make_store()
    eng = EngramLayer(store, layer_id=2, hidden=16, hc_mult=1)
    ids = torch.randint(0, V, (3, 13))
    h = torch.randn(3, 13, 16)
    out = eng(ids, h)
    rt = eng.rt
    rows = rt.hash(eng.li, ids.numpy().astype(np.uint32))
    e = rt.gather(eng.li, rows).reshape(3, 13, -1)
    names = ["w_k", "b_k", "w_v", "b_v", "norm_k", "norm_q", "norm_c", "conv"]
    W = {n: getattr(eng, n).detach() for n in names}
    ref = engram.layer_forward(e, h.unsqueeze(2).numpy(), {k: v.numpy() for k, v in W.items()},
                               kernel=4, dilation=3, eps_conv=1e-5)
    assert out.shape == h.shape and np.array_equal(out.detach().numpy(), ref[:, :, 0, :])
    # hc_mult 2 takes [B, T, 2, d]
    eng2 = EngramLayer(store, layer_id=1, hidden=16, hc_mult=2)
    assert eng2.rt is eng.rt  # one runtime per store
    assert eng2(ids, torch.randn(3, 13, 2, 16)).shape == (3, 13, 2, 16)
    close_stores()


def test_table_gradients_reach_sparse_adam():
    """The rows' gradient (de of the C backward) is what TableAdam reduces and steps,
    bit for bit what the runtime's own step gives a twin store."""
    store, _ = make_store("g.store")
    twin = os.path.join(TMP, "g-twin.store")
    shutil.copy(store, twin)
    eng = EngramLayer(store, layer_id=1, hidden=16)
    opt = TableAdam([eng], lr=1e-2)
    ids = torch.randint(0, V, (2, 9))
    h = torch.randn(2, 9, 16, requires_grad=True)
    dout = torch.randn(2, 9, 16)
    eng(ids, h).backward(dout)
    assert eng.pending_rows == 2 * 9 * eng.n_heads
    names = ["w_k", "b_k", "w_v", "b_v", "norm_k", "norm_q", "norm_c", "conv"]
    rt2 = engram.Runtime(twin)
    rows = rt2.hash(eng.li, ids.numpy().astype(np.uint32))
    e = rt2.gather(eng.li, rows).reshape(2, 9, -1)
    W = {n: getattr(eng, n).detach().numpy() for n in names}
    gr = engram.layer_backward(e, h.detach().unsqueeze(2).numpy(), dout.unsqueeze(2).numpy(), W,
                               kernel=4, dilation=3, eps_conv=1e-5)
    assert np.array_equal(eng.w_k.grad.numpy(), gr["dw_k"])
    assert np.array_equal(h.grad.numpy(), gr["dh"][:, :, 0, :])
    n = opt.step()
    n2 = rt2.step(eng.li, rows.reshape(-1), gr["de"].reshape(-1, eng.dim), lr=1e-2, lr_mult=5.0)
    assert n == n2 and eng.pending_rows == 0
    assert np.array_equal(eng.rt.gather(eng.li, rows), rt2.gather(eng.li, rows))
    before = rt2.gather(eng.li, rows)
    assert not np.array_equal(before, engram.Runtime(store).gather(eng.li, rows))  # it moved
    # eval mode and no_grad leave the tables alone
    eng.eval()
    eng(ids, h).sum().backward()
    assert eng.pending_rows == 0
    rt2.close()
    close_stores()


class Tiny(torch.nn.Module):
    """Embedding -> EngramLayer -> linear head: predicts the next id."""

    def __init__(self, store):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 16)
        self.eng = EngramLayer(store, layer_id=1, hidden=16)
        self.head = torch.nn.Linear(16, V)

    def forward(self, ids):
        x = self.emb(ids)
        return self.head(x + self.eng(ids, x))


def batches(seed, n, B=4, T=24):
    """A deterministic stream whose next id depends on the previous two (trigrams)."""
    g = np.random.default_rng(seed)
    A = 12  # an alphabet of 12 ids spread over the vocabulary, 144 contexts
    alpha = g.choice(V, size=A, replace=False)
    table = g.integers(0, A, size=(A, A))
    out = []
    for _ in range(n):
        x = np.zeros((B, T + 1), np.int64)
        x[:, :2] = g.integers(0, A, size=(B, 2))
        for t in range(2, T + 1):
            x[:, t] = table[x[:, t - 2], x[:, t - 1]]
        x = alpha[x]
        out.append(torch.from_numpy(x))
    return out


def train_steps(model, opt, topt, data):
    losses = []
    for x in data:
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        topt.zero_grad()
        loss.backward()
        opt.step()
        topt.step()
        losses.append(loss.item())
    return losses


def test_a_model_using_it_trains():
    store, _ = make_store("t.store")
    torch.manual_seed(0)
    model = Tiny(store)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    topt = TableAdam([model.eng], lr=1e-2)
    losses = train_steps(model, opt, topt, batches(1, 60))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - 0.5, (first, last)
    assert model.eng.rt.trained_rows > 0
    close_stores()


def test_checkpoint_resume_equals_uninterrupted():
    """Train 8 steps straight; or 4, checkpoint (tables) + torch.save (dense and its
    optimizer), reopen everything in a fresh module, 4 more: the same bits."""
    data = batches(2, 8)
    store, _ = make_store("r.store")
    a = os.path.join(TMP, "ra.store")
    shutil.copy(store, a)
    torch.manual_seed(5)
    m = Tiny(a)
    init = copy.deepcopy({k: v for k, v in m.state_dict().items()})
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    topt = TableAdam([m.eng], lr=1e-2)
    la = train_steps(m, opt, topt, data)
    rows_a = m.eng.rt.gather(0, np.arange(200, dtype=np.uint64))
    final_a = {k: v.clone() for k, v in m.state_dict().items()}
    close_stores()
    # interrupted
    b = os.path.join(TMP, "rb.store")
    ck = os.path.join(TMP, "rb-ckpt.store")
    shutil.copy(store, b)
    m = Tiny(b)
    m.load_state_dict(init)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    topt = TableAdam([m.eng], lr=1e-2)
    lb = train_steps(m, opt, topt, data[:4])
    m.eng.checkpoint(ck)
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, ck + ".pt")
    close_stores()
    del m, opt
    m = Tiny(ck)
    sd = torch.load(ck + ".pt")
    m.load_state_dict(sd["model"])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    opt.load_state_dict(sd["opt"])
    topt = TableAdam([m.eng], lr=1e-2)
    lb += train_steps(m, opt, topt, data[4:])
    assert la == lb, (la, lb)
    assert np.array_equal(rows_a, m.eng.rt.gather(0, np.arange(200, dtype=np.uint64)))
    for k, v in m.state_dict().items():
        assert torch.equal(v, final_a[k]), k
    # the store that was opened first is untouched: checkpoints went to their own path
    assert np.array_equal(engram.Runtime(store).gather(0, np.arange(5, dtype=np.uint64)),
                          engram.Runtime(b).gather(0, np.arange(5, dtype=np.uint64)))
    close_stores()


# ---- decoding -----------------------------------------------------------------------

def test_decode_token_by_token_equals_the_whole_sequence():
    store, _ = make_store("d.store")
    eng = EngramLayer(store, layer_id=1, hidden=16).eval()
    B, T = 3, 20
    ids = torch.randint(0, V, (B, T))
    h = torch.randn(B, T, 16)
    with torch.no_grad():
        whole = eng(ids, h)
        st = eng.decode_state(B)
        parts = [eng(ids[:, :5], h[:, :5], state=st)]          # a prompt
        parts += [eng(ids[:, t:t + 1], h[:, t:t + 1], state=st) for t in range(5, T)]
    assert torch.equal(torch.cat(parts, 1), whole)
    assert st.seen(0) == T
    st.reset(1, 1)
    with torch.no_grad():
        o = eng(ids[:, :1], h[:, :1], state=st)
    assert torch.equal(o[1], whole[1, :1]) and not torch.equal(o[0], whole[0, :1])
    close_stores()


def test_lm_decode_logits_equal_the_full_forward():
    """examples/lm.py: prompt, then one token at a time with the KV cache and the
    Engram layers' decode state; logits at every step equal the full forward's."""
    from lm import LM
    store, _ = make_store("lm.store", layer_ids=(1, 3))
    torch.manual_seed(1)
    model = LM(V, d=32, n_layer=4, n_head=4, ffn=64, max_len=64, engram=store,
               engram_layers=(1, 3)).eval()
    B, T = 4, 24
    ids = torch.randint(0, V, (B, T))
    with torch.no_grad():
        full = model(ids)
        states = {k: layer.decode_state(B) for k, layer in model.engram.items()}
        caches = [dict() for _ in model.blocks]
        steps = [model(ids[:, :6], states, caches, 0)]
        for t in range(6, T):
            steps.append(model(ids[:, t:t + 1], states, caches, t))
    inc = torch.cat(steps, 1)
    assert (inc - full).abs().max().item() < 1e-4, (inc - full).abs().max().item()
    close_stores()


def test_tier_serves_the_maps_rows_and_decodes_with_prefetch():
    """A store served by the row tier (cache_bytes, prefetch at the model's
    forward) gives the map's rows, the same training step, and the same
    decoded logits, bit for bit; the prefetch reads ahead (the gathers wait
    for, or hit, rows it started)."""
    from lm import LM
    store, _ = make_store("tier.store", layer_ids=(1, 3), dtype="fp8_e4m3", dim_total=64)
    a, b = engram.Runtime(store), engram.Runtime(store, cache_bytes=1 << 16, readers=3)
    ids = np.random.default_rng(4).integers(0, V, size=(3, 50)).astype(np.uint32)
    b.prefetch(ids)
    for li in range(2):
        rows = a.hash(li, ids)
        assert np.array_equal(a.gather(li, rows), b.gather(li, rows))
        assert np.array_equal(a.gather(li, rows, "bf16"), b.gather(li, rows, "bf16"))
    st = b.tier_stats()
    assert st["lookups"] == 2 * 2 * ids.size * b.n_heads and st["rows_read"] > 0, st
    assert st["hits"] + st["waited"] > 0, st
    assert a.tier_stats()["lookups"] == 0
    # the cache in shared memory: a second runtime of the file (another replica)
    # finds what the first read, and reads nothing itself
    c, d = (engram.Runtime(store, cache_bytes=1 << 20, readers=2, shared_cache=True)
            for _ in range(2))
    rows = [a.hash(li, ids) for li in range(2)]
    for rt in (c, d):
        for li in range(2):
            assert np.array_equal(a.gather(li, rows[li]), rt.gather(li, rows[li]))
    sc, sd = c.tier_stats(), d.tier_stats()
    assert sc["shared"] == 1 and sc["rows_read"] > 0 and sd["rows_read"] == 0, (sc, sd)
    assert sd["hits"] == sd["lookups"] == 2 * ids.size * d.n_heads, sd
    c.close()
    d.close()
    a.close()
    b.close()
    torch.manual_seed(1)
    m_map = LM(V, d=32, n_layer=4, n_head=4, ffn=64, max_len=64, engram=store,
               engram_layers=(1, 3)).eval()
    torch.manual_seed(1)
    rt = engram.Runtime(store, cache_bytes=1 << 15)  # a second runtime of the file, on the tier
    m_tier = LM(V, d=32, n_layer=4, n_head=4, ffn=64, max_len=64, engram=rt,
                engram_layers=(1, 3)).eval()
    B, T = 4, 24
    x = torch.randint(0, V, (B, T))
    outs = []
    for model in (m_map, m_tier):
        with torch.no_grad():
            states = {k: layer.decode_state(B) for k, layer in model.engram.items()}
            caches = [dict() for _ in model.blocks]
            steps = [model(x[:, :6], states, caches, 0)]
            for t in range(6, T):
                steps.append(model(x[:, t:t + 1], states, caches, t))
        outs.append(torch.cat(steps, 1))
    assert torch.equal(outs[0], outs[1]), (outs[0] - outs[1]).abs().max().item()
    st = rt.tier_stats()
    assert st["lookups"] > 0 and st["rows_read"] > 0 and st["waited"] + st["hits"] > 0, st
    rt.close()
    close_stores()


# ---- bad input ----------------------------------------------------------------------

def expect(exc, fn, *words):
    try:
        fn()
    except exc as ex:
        msg = str(ex)
        for w in words:
            assert w in msg, f"'{w}' not in '{msg}'"
        return msg
    raise AssertionError(f"no {exc.__name__}")


def test_bad_input_gets_one_clear_error():
    store, cfg = make_store("b.store")
    other, _ = make_store("b2.store", seed=9)
    import json
    c = json.load(open(cfg))
    expect(engram.EngramError, lambda: EngramLayer(store, 7, 16), "layer_id 7", "[1, 2]")
    c2 = dict(c, seed=4)
    expect(engram.EngramError, lambda: EngramLayer(store, 1, 16, config=c2), "seed")
    EngramLayer(store, 1, 16, config=cfg)  # the config it was built from is accepted
    expect(engram.EngramError, lambda: EngramLayer(other, 1, 16, tokenizer_sha256="ab" * 32),
           "tokenizer")
    # and through the runtime already open for `store`
    expect(engram.EngramError, lambda: EngramLayer(store, 2, 16, tokenizer_sha256="ab" * 32),
           "tokenizer")
    eng = EngramLayer(store, 1, 16)
    h = torch.randn(1, 3, 16)
    expect(engram.EngramError, lambda: eng(torch.tensor([[1, V, 2]]), h), str(V), "position 1")
    expect(engram.EngramError, lambda: eng(torch.tensor([[1, -3, 2]]), h), "-3", "position 1")
    expect(TypeError, lambda: eng(torch.tensor([[1, 2, 3]]), h.half()), "float32", "float16")
    expect(TypeError, lambda: eng(torch.tensor([[1.0, 2.0, 3.0]]), h), "integer")
    expect(ValueError, lambda: eng(torch.tensor([[1, 2, 3]]), torch.randn(1, 3, 8)), "[B, T, 16]")
    expect(ValueError, lambda: eng(torch.tensor([[1, 2]]), h), "disagree")
    # a checkpoint into a directory that does not exist: an error naming it, the
    # store and the runtime as they were
    eng.train()
    eng(torch.tensor([[1, 2, 3]]), h.requires_grad_()).sum().backward()
    TableAdam([eng], lr=0.1).step()
    before = eng.rt.gather(0, np.arange(50, dtype=np.uint64))
    bad = os.path.join(TMP, "no-such-dir", "x.store")
    expect(engram.EngramError, lambda: eng.checkpoint(bad), "no-such-dir")
    assert not os.path.exists(os.path.dirname(bad))
    assert np.array_equal(before, eng.rt.gather(0, np.arange(50, dtype=np.uint64)))
    close_stores()


def test_cuda_arguments_and_availability():
    """What runs without a GPU: the residency argument, the store's encoding
    that tables='device' reads, and the CUDA library's report (a reason, not
    an exception, where it cannot run)."""
    store, _ = make_store("c.store")
    bf, _ = make_store("cb.store", dtype="bf16")
    expect(ValueError, lambda: EngramLayer(store, 1, 16, tables="gpu"), "'gpu'", "host")
    assert engram.Runtime(store).store_dtype == "f32"
    assert engram.Runtime(bf).store_dtype == "bf16"
    from engram import cuda
    ok, why = cuda.available()
    assert ok or why, "no reason given"
    if not ok:
        print(f"    (CUDA: {why})")
    close_stores()


def test_cuda_module_equals_the_cpu_module():
    """On a CUDA build of torch with a device: the module on CUDA tensors
    gives the CPU module's outputs and gradients within 1e-5/1e-4 (tables
    host, device and cached), and two training steps with TableAdam leave
    the same rows (tables host: the runtime's optimizer; device: trained on
    the GPU, synced back by the checkpoint) within 1e-5; cached refuses to
    train. Skipped (said so) where torch has no CUDA."""
    if not torch.cuda.is_available():
        print("    (skipped: this torch has no CUDA device; the C functions under the module's "
              "CUDA path are checked by the cuda_parity suite where a device is lent)")
        return
    from engram import cuda
    ok, why = cuda.available()
    assert ok, why
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, V, (3, 40), generator=g)
    hs = [torch.randn(3, 40, 16, generator=g) for _ in range(2)]
    for tables in ("host", "device", "cached"):
        s_cpu, _ = make_store(f"gc-{tables}.store")
        s_gpu, _ = make_store(f"gg-{tables}.store")  # the same contents, another runtime
        torch.manual_seed(1)
        cpu = EngramLayer(s_cpu, 1, 16)
        torch.manual_seed(1)
        gpu = EngramLayer(s_gpu, 1, 16, tables=tables).cuda()
        if tables == "cached":
            with torch.no_grad():
                oc, og = cpu.eval()(ids, hs[0]), gpu.eval()(ids, hs[0].cuda())
            assert (og.cpu() - oc).abs().max().item() < 1e-5 * (1 + oc.abs().max().item())
            gpu.train()
            expect(engram.EngramError, lambda: gpu(ids, hs[0].cuda().requires_grad_()),
                   "tables='cached'", "serves only")
            close_stores()
            continue
        tc, tg = TableAdam([cpu], lr=0.05), TableAdam([gpu], lr=0.05)
        for h in hs:
            hc, hg = h.clone().requires_grad_(), h.cuda().requires_grad_()
            oc, og = cpu(ids, hc), gpu(ids, hg)
            assert (og.detach().cpu() - oc.detach()).abs().max().item() < \
                1e-5 * (1 + oc.abs().max().item()), tables
            oc.square().sum().backward()
            og.square().sum().backward()
            assert (hg.grad.cpu() - hc.grad).abs().max().item() < 1e-4 * (1 + hc.grad.abs().max().item())
            for a, b in zip(cpu.parameters(), gpu.parameters()):
                assert (b.grad.cpu() - a.grad).abs().max().item() < 1e-4 * (1 + a.grad.abs().max().item())
                a.grad = b.grad = None
            assert cpu.pending_rows == gpu.pending_rows
            tc.step()
            tg.step()
        gpu.checkpoint()  # a device-trained table is synced into the runtime first
        rows = np.unique(cpu.rt.hash(cpu.li, ids.numpy().astype(np.uint32)))
        a, b = cpu.rt.gather(cpu.li, rows), gpu.rt.gather(gpu.li, rows)
        assert np.abs(a - b).max() < 1e-5 * (1 + np.abs(a).max()), (tables, np.abs(a - b).max())
        close_stores()


CHILD = r'''
import os, sys, numpy as np, torch
sys.path.insert(0, sys.argv[3])
import engram
from engram.torch import EngramLayer, TableAdam
eng = EngramLayer(sys.argv[1], 1, 16)
h = torch.randn(1, 3, 16, requires_grad=True)
eng(torch.tensor([[1, 2, 3]]), h).sum().backward()
TableAdam([eng], lr=0.1).step()
path = os.path.join(sys.argv[2], "ck.store")
try:
    eng.checkpoint(path)
    print("NO ERROR"); sys.exit(1)
except engram.EngramError as ex:
    print("error:", ex)
    if "ck.store" not in str(ex) or os.path.exists(path): sys.exit(2)
'''


def test_checkpoint_on_full_and_read_only_disks():
    """Under unshare -m (root): a 64 KiB tmpfs that the checkpoint overfills, then
    the same remounted read-only. Skipped where namespaces are not allowed."""
    store, _ = make_store("f.store", sizes=(3001, 4001))
    mnt = os.path.join(TMP, "mnt")
    os.makedirs(mnt, exist_ok=True)
    child = os.path.join(TMP, "child.py")
    with open(child, "w") as f:
        f.write(CHILD)
    py = os.path.join(HERE, "..", "..", "python")
    script = (f"mount -t tmpfs -o size=64k tmpfs {mnt} && {sys.executable} {child} {store} {mnt} {py}"
              f" && echo FULL-OK && mount -o remount,ro {mnt} && "
              f"{sys.executable} {child} {store} {mnt} {py} && echo RO-OK")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        print("    (skipped: unshare -m is not permitted here)")
        return
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert "FULL-OK" in r.stdout and "RO-OK" in r.stdout, r.stdout + r.stderr
    # the store it was opened from is whole
    engram.Runtime(store).gather(0, np.arange(10, dtype=np.uint64))


def main():
    names = sys.argv[1:]
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    tests = [(n, f) for n, f in tests if not names or any(x in n for x in names)]
    fails = 0
    for n, f in tests:
        try:
            f()
            print(f"ok   {n}")
        except Exception:
            fails += 1
            print(f"FAIL {n}")
            traceback.print_exc()
        finally:
            close_stores()
    shutil.rmtree(TMP, ignore_errors=True)
    print(f"{len(tests) - fails} passed, {fails} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
