#!/usr/bin/env python3
"""Parity of libengram's Engram layer (CONTRACT section 5) with a PyTorch
implementation in float64, forward and backward, on random inputs of several
shapes; and the binding's runtime calls on numpy arrays and torch tensors.
Run by the C test rt_parity_with_pytorch (ENGRAM_LIB, ENGRAM_BIN set there),
or by hand: ENGRAM_LIB=build/libengram.so python3 tests/python/test_layer_torch.py
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import engram  # noqa: E402

torch.set_default_dtype(torch.float64)
TOL = 1e-5


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def reference(e, h, W, kernel, dil, eps_kq, eps_conv):
    """The reference layer (engram_demo_v1.py's Engram.forward), float64."""
    B, T, hc, d = h.shape
    u = e @ W["w_v"].T + (W["b_v"] if W["b_v"] is not None else 0)
    gates = []
    for i in range(hc):
        k = e @ W["w_k"][i].T + (W["b_k"][i] if W["b_k"] is not None else 0)
        nk = rmsnorm(k, W["norm_k"][i], eps_kq)
        nq = rmsnorm(h[:, :, i, :], W["norm_q"][i], eps_kq)
        g = (nk * nq).sum(-1) / d ** 0.5
        g = g.abs().clamp_min(1e-6).sqrt() * g.sign()
        gates.append(g.sigmoid().unsqueeze(-1))
    v = torch.stack(gates, dim=2) * u.unsqueeze(2)  # [B, T, hc, d]
    normed = torch.cat([rmsnorm(v[:, :, i, :], W["norm_c"][i], eps_conv) for i in range(hc)], -1)
    x = normed.transpose(1, 2)  # [B, hc*d, T]
    y = torch.nn.functional.conv1d(x, W["conv"].unsqueeze(1), padding=(kernel - 1) * dil,
                                   dilation=dil, groups=hc * d)[..., :T]
    y = torch.nn.functional.silu(y).transpose(1, 2).reshape(B, T, hc, d)
    return v + y


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def case(B, T, hc, d, De, dil, bias, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.rand(*s, generator=g) * 2 - 1) * sc  # noqa: E731
    W = {"w_k": r(hc, d, De, sc=De ** -0.5), "b_k": r(hc, d, sc=0.1) if bias else None,
         "w_v": r(d, De, sc=De ** -0.5), "b_v": r(d, sc=0.1) if bias else None,
         "norm_k": 1 + r(hc, d, sc=0.2), "norm_q": 1 + r(hc, d, sc=0.2),
         "norm_c": 1 + r(hc, d, sc=0.2), "conv": r(hc * d, 4, sc=0.5)}
    e, h, dout = r(B, T, De), r(B, T, hc, d, sc=2), r(B, T, hc, d)
    eps_kq, eps_conv = 1.1920929e-07, 1e-5
    # float32 inputs for both sides: the reference upcasts the same values
    W32 = {k: (v.float() if v is not None else None) for k, v in W.items()}
    e32, h32, dout32 = e.float(), h.float(), dout.float()
    Wd = {k: (v.double().requires_grad_() if v is not None else None) for k, v in W32.items()}
    ed, hd = e32.double().requires_grad_(), h32.double().requires_grad_()
    ref = reference(ed, hd, Wd, 4, dil, eps_kq, eps_conv)
    ref.backward(dout32.double())
    out = engram.layer_forward(e32, h32, W32, 4, dil, eps_kq, eps_conv)   # torch in, torch out
    grads = engram.layer_backward(e32.numpy(), h32.numpy(), dout32.numpy(),
                                  {k: (v.numpy() if v is not None else None) for k, v in W32.items()},
                                  4, dil, eps_kq, eps_conv)                # numpy in, numpy out
    assert isinstance(out, torch.Tensor) and isinstance(grads["de"], np.ndarray)
    errs = {"out": rel(out.numpy(), ref.detach().numpy()),
            "de": rel(grads["de"], ed.grad.numpy()), "dh": rel(grads["dh"], hd.grad.numpy())}
    for k, v in Wd.items():
        if v is not None:
            errs["d" + k] = rel(grads["d" + k], v.grad.numpy())
    worst = max(errs.values())
    name = f"B={B} T={T} hc={hc} d={d} De={De} dil={dil} bias={bias}"
    print(f"  {name:<44} worst relative error {worst:.2e} ({max(errs, key=errs.get)})")
    return worst <= TOL, name, errs


def runtime_smoke():
    """hash -> gather -> step -> checkpoint through the binding, torch and numpy."""
    bin_ = os.environ.get("ENGRAM_BIN", "build/engram")
    if not os.path.exists(bin_):
        print("  (runtime smoke test skipped: no engram binary)")
        return True
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "c.json")
        with open(cfg, "w") as f:
            f.write('{"engram_vocab_size": [1000, 1500], "max_ngram_size": 3, "n_embed_per_ngram": 32,'
                    ' "n_head_per_ngram": 2, "layer_ids": [1], "pad_id": 0, "seed": 3,'
                    ' "kernel_size": 4, "hidden_size": 16, "hc_mult": 2}')
        store = os.path.join(tmp, "s.store")
        subprocess.run([bin_, "build", "-c", cfg, "-V", "200", "-o", store, "-q"], check=True,
                       stdout=subprocess.DEVNULL)
        rt = engram.Runtime(store)
        ids = torch.randint(0, 200, (2, 8), dtype=torch.int64)
        rows = rt.hash(0, ids)
        assert tuple(rows.shape) == (2, 8, 4) and isinstance(rows, torch.Tensor)
        # token by token with a history equals the whole sequence
        hist = rt.new_history(2)
        inc = np.concatenate([rt.hash(0, ids[:, t:t + 1].numpy(), history=hist) for t in range(8)], 1)
        assert (inc == rows.numpy()).all()
        e = rt.gather(0, rows)
        assert tuple(e.shape) == (2, 8, 4, 16)
        before = rt.gather(0, rows.reshape(-1)[:1]).clone()
        n = rt.step(0, rows.reshape(-1), torch.ones(64, 16), lr=0.1)
        after = rt.gather(0, rows.reshape(-1)[:1])
        assert n > 0 and not torch.equal(before, after)
        rt.checkpoint()
        rt.close()
        rt2 = engram.Runtime(store)
        assert torch.equal(rt2.gather(0, rows.reshape(-1)[:1]), after) and rt2.trained_rows == n
        try:
            rt2.hash(0, np.array([[5, 200]]))
            return False
        except engram.EngramError as ex:
            assert "200" in str(ex)
        rt2.close()
    print("  runtime through the binding: hash, decode history, gather, step, checkpoint, reopen: ok")
    return True


def main():
    print(f"Engram layer: libengram (float32) vs PyTorch {torch.__version__} (float64), "
          f"relative error bound {TOL:g}")
    ok = True
    for args in [(1, 1, 1, 8, 8, 3, False, 1), (2, 9, 2, 16, 24, 3, True, 2),
                 (3, 33, 4, 32, 64, 3, True, 3), (2, 17, 2, 64, 128, 4, False, 4),
                 (1, 64, 4, 128, 256, 2, True, 5)]:
        good, name, errs = case(*args)
        if not good:
            ok = False
            print(f"FAIL {name}: {errs}")
    ok = runtime_smoke() and ok
    print("parity: ok" if ok else "parity: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
