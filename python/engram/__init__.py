"""engram: Python binding of libengram's runtime (ctypes; nothing to compile).

    import engram
    rt = engram.Runtime("tables.store")                   # a store from `engram build`
    rows = rt.hash(0, ids)                                # [B, T] raw ids -> [B, T, H] rows
    e = rt.gather(0, rows).reshape(B, T, -1)              # [B, T, H*dim] float32
    out = engram.layer_forward(e, h, weights, dilation=rt.max_ngram)
    grads = engram.layer_backward(e, h, dout, weights, dilation=rt.max_ngram)
    rt.step(0, rows.reshape(-1), grads["de"].reshape(-1, rt.dim), lr=1e-3)
    rt.checkpoint()

Arrays are numpy arrays or CPU torch tensors (returned as the same kind).
libengram.so is found through $ENGRAM_LIB, else beside this package
(../../build/libengram.so in a checkout), else the loader's search path.
Weights: a dict with w_k [hc, d, De], b_k [hc, d] (optional), w_v [d, De],
b_v [d] (optional), norm_k, norm_q, norm_c [hc, d], conv [hc*d, kernel]
(PyTorch's nn.Linear / nn.Conv1d layouts).
"""
import ctypes
import os

import numpy as np

__all__ = ["Runtime", "EngramError", "layer_forward", "layer_backward", "library"]


class EngramError(RuntimeError):
    """A libengram call failed; .code is the eg_status, the message names the cause."""

    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


class _Err(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("msg", ctypes.c_char * 512)]


class _Dims(ctypes.Structure):
    _fields_ = [("B", ctypes.c_size_t), ("T", ctypes.c_size_t), ("hc", ctypes.c_uint32),
                ("d", ctypes.c_uint32), ("De", ctypes.c_uint32), ("kernel", ctypes.c_uint32),
                ("dilation", ctypes.c_uint32), ("eps_kq", ctypes.c_float),
                ("eps_conv", ctypes.c_float)]


_FP = ctypes.POINTER(ctypes.c_float)
_WNAMES = ["w_k", "b_k", "w_v", "b_v", "norm_k", "norm_q", "norm_c", "conv"]


class _Weights(ctypes.Structure):
    _fields_ = [(n, _FP) for n in _WNAMES]


class _Grads(ctypes.Structure):
    _fields_ = [("de", _FP), ("dh", _FP)] + [("d" + n, _FP) for n in _WNAMES]


class _Adam(ctypes.Structure):
    _fields_ = [("lr", ctypes.c_float), ("beta1", ctypes.c_float), ("beta2", ctypes.c_float),
                ("eps", ctypes.c_float), ("lr_mult", ctypes.c_float)]


class _TierOpts(ctypes.Structure):  # eg_tier_opts
    _fields_ = [("cache_bytes", ctypes.c_uint64), ("n_readers", ctypes.c_int),
                ("buffered", ctypes.c_int), ("read_fn", ctypes.c_void_p),
                ("read_ctx", ctypes.c_void_p), ("shared", ctypes.c_int),
                ("lease_ms", ctypes.c_uint32)]


class _RuntimeOpts(ctypes.Structure):  # eg_runtime_opts
    _fields_ = [("tok", ctypes.c_char_p), ("spec", ctypes.c_void_p), ("nt", ctypes.c_int),
                ("rows", ctypes.c_int), ("tier", _TierOpts)]


class _TierStats(ctypes.Structure):  # eg_tier_stats
    _fields_ = [(n, ctypes.c_uint64) for n in ("lookups", "hits", "waited", "rows_read", "reads",
                                              "bytes_read", "cache_slots", "cache_bytes")] + \
               [("direct", ctypes.c_int), ("shared", ctypes.c_int)]


class _History(ctypes.Structure):
    _fields_ = [("ids", ctypes.c_uint32 * 16)]


_lib = None


def _load(cands):
    """The first of the candidate paths (None skipped) that loads: (CDLL, None),
    or (None, the last loader error)."""
    last = None
    for c in cands:
        if not c:
            continue
        try:
            return ctypes.CDLL(c), None
        except OSError as e:
            last = e
    return None, last


def library():
    """The loaded libengram (ctypes.CDLL)."""
    global _lib
    if _lib is not None:
        return _lib
    here = os.path.dirname(os.path.abspath(__file__))
    _lib, last = _load([os.environ.get("ENGRAM_LIB"),
                        os.path.join(here, "..", "..", "build", "libengram.so"), "libengram.so"])
    if _lib is None:
        raise OSError(f"libengram.so not found (set ENGRAM_LIB): {last}")
    L = _lib
    vp, sz, u32, i32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int
    E = ctypes.POINTER(_Err)
    sig = {
        "eg_runtime_open": ([ctypes.c_char_p, vp, ctypes.POINTER(vp), E], i32),
        "eg_runtime_close": ([vp], None),
        "eg_runtime_spec": ([vp], vp),
        "eg_runtime_dim": ([vp], u32),
        "eg_spec_n_layers": ([vp], u32),
        "eg_spec_n_heads": ([vp], u32),
        "eg_spec_max_ngram": ([vp], u32),
        "eg_spec_layer_rows": ([vp, u32], ctypes.c_uint64),
        "eg_rt_history_reset": ([vp, vp, sz], None),
        "eg_rt_hash": ([vp, u32, vp, sz, sz, vp, vp, vp, sz, E], i32),
        "eg_rt_gather": ([vp, u32, vp, sz, i32, vp, sz, E], i32),
        "eg_rt_reduce_rows": ([vp, vp, vp, sz, vp, vp, ctypes.POINTER(sz), E], i32),
        "eg_rt_adam_step": ([vp, u32, vp, vp, sz, ctypes.POINTER(_Adam), E], i32),
        "eg_rt_checkpoint": ([vp, ctypes.c_char_p, E], i32),
        "eg_rt_prefetch": ([vp, vp, sz, sz, vp, vp, E], i32),
        "eg_rt_tier_stats": ([vp, ctypes.POINTER(_TierStats)], None),
        "eg_rt_trained_rows": ([vp], sz),
        "eg_layer_forward": ([ctypes.POINTER(_Dims), ctypes.POINTER(_Weights), vp, vp, vp, i32, E], i32),
        "eg_layer_backward": ([ctypes.POINTER(_Dims), ctypes.POINTER(_Weights), vp, vp, vp,
                               ctypes.POINTER(_Grads), i32, E], i32),
        "eg_layer_saved_bytes": ([ctypes.POINTER(_Dims)], sz),
        "eg_layer_forward_save": ([ctypes.POINTER(_Dims), ctypes.POINTER(_Weights), vp, vp, vp, vp,
                                   sz, i32, E], i32),
        "eg_layer_backward_saved": ([ctypes.POINTER(_Dims), ctypes.POINTER(_Weights), vp, vp, vp,
                                     vp, sz, ctypes.POINTER(_Grads), i32, E], i32),
        "eg_layer_decode": ([ctypes.POINTER(_Dims), ctypes.POINTER(_Weights), vp, vp, vp, vp, i32,
                             E], i32),
        "eg_layer_state_create": ([sz, u32, u32, u32, u32, ctypes.POINTER(vp), E], i32),
        "eg_layer_state_free": ([vp], None),
        "eg_layer_state_reset": ([vp, sz, sz], None),
        "eg_layer_state_seen": ([vp, sz], ctypes.c_uint64),
        "eg_spec_layer_index": ([vp, u32], i32),
        "eg_runtime_store": ([vp], vp),
        "eg_store_config_json": ([vp], ctypes.c_char_p),
        "eg_store_get_info": ([vp], vp),
        "eg_store_expect": ([vp, ctypes.c_char_p, vp, E], i32),
    }
    for name, (args, res) in sig.items():
        f = getattr(L, name)
        f.argtypes, f.restype = args, res
    return L


def _check(rc, err):
    if rc:
        raise EngramError(rc, err.msg.decode("utf-8", "replace"))


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def _np(x, dtype):
    """A C-contiguous numpy view (or copy) of x with dtype; torch CPU tensors share memory."""
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def _like(ref, arr):
    if ref is not None and _is_torch(ref):
        import torch
        return torch.from_numpy(arr)
    return arr


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def _fptr(a):
    return a.ctypes.data_as(_FP) if a is not None else None


class Runtime:
    """A store opened for lookups and training (eg_runtime_open)."""

    def __init__(self, path, tokenizer_sha256=None, threads=0, cache_bytes=None, readers=0,
                 buffered=False, shared_cache=False):
        """cache_bytes: None reads rows through the store's memory map (the
        store should fit in RAM); a number (0 included) reads them with the
        row tier (eg_tier.h) into a hot-row cache of that many bytes, with
        `readers` reader threads (0: 16), O_DIRECT unless `buffered`.
        shared_cache: the hot-row cache lives in shared memory, one per store
        file and host, used by every process that opens the file so (with the
        same cache_bytes): data-parallel replicas hold the hot rows once."""
        L = library()
        self._rt = ctypes.c_void_p()
        err = _Err()
        tier = _TierOpts(int(cache_bytes or 0), int(readers), int(bool(buffered)), None, None,
                         int(bool(shared_cache)), 0)
        self._opts = _RuntimeOpts(tokenizer_sha256.encode() if tokenizer_sha256 else None, None,
                                  threads, 0 if cache_bytes is None else 1, tier)
        _check(L.eg_runtime_open(os.fsencode(path), ctypes.byref(self._opts),
                                 ctypes.byref(self._rt), ctypes.byref(err)), err)
        self._spec = L.eg_runtime_spec(self._rt)
        self.dim = L.eg_runtime_dim(self._rt)
        self.n_layers = L.eg_spec_n_layers(self._spec)
        self.n_heads = L.eg_spec_n_heads(self._spec)
        self.max_ngram = L.eg_spec_max_ngram(self._spec)

    def expect(self, tokenizer_sha256):
        """Fail (EngramError) unless the store was built for this tokenizer fingerprint."""
        err = _Err()
        _check(library().eg_store_expect(library().eg_runtime_store(self._rt),
                                         tokenizer_sha256.encode(), None, ctypes.byref(err)), err)

    def config(self):
        """The store's config (a dict; the planned config it was built from)."""
        import json
        raw = library().eg_store_config_json(library().eg_runtime_store(self._rt))
        return json.loads(raw.decode()) if raw else {}

    @property
    def store_dtype(self):
        """The rows' stored encoding: "f32", "bf16", "f16" or "fp8" (eg_store_info.dtype)."""
        class _InfoHead(ctypes.Structure):  # eg_store_info's first fields
            _fields_ = [("format_version", ctypes.c_uint32), ("dtype", ctypes.c_int)]
        L = library()
        p = L.eg_store_get_info(L.eg_runtime_store(self._rt))
        return ("f32", "bf16", "f16", "fp8")[ctypes.cast(p, ctypes.POINTER(_InfoHead)).contents.dtype]

    def layer_rows(self, li):
        return library().eg_spec_layer_rows(self._spec, li)

    def close(self):
        if self._rt:
            library().eg_runtime_close(self._rt)
            self._rt = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def new_history(self, batch):
        """Decode state for `batch` sequences (each at its start)."""
        h = (_History * batch)()
        library().eg_rt_history_reset(self._rt, h, batch)
        return h

    def hash(self, li, ids, history=None, barrier=None):
        """[B, T] raw ids -> [B, T, H] uint64 layer-local rows (see eg_rt_hash)."""
        a = _np(ids, np.uint32)
        if a.ndim == 1:
            a = a[None, :]
        B, T = a.shape
        out = np.empty((B, T, self.n_heads), dtype=np.uint64)
        bar = _np(barrier, np.uint8) if barrier is not None else None
        err = _Err()
        _check(library().eg_rt_hash(self._rt, li, _ptr(a), B, T, _ptr(bar) if bar is not None else None,
                                    history, _ptr(out), out.size, ctypes.byref(err)), err)
        return _like(ids, out.astype(np.int64) if _is_torch(ids) else out)

    def prefetch(self, ids, history=None, barrier=None):
        """Start reading the rows of every layer for [B, T] raw ids and return at
        once (eg_rt_prefetch; `history` is read, not advanced). Nothing to do when
        rows come from the map."""
        a = _np(ids, np.uint32)
        if a.ndim == 1:
            a = a[None, :]
        B, T = a.shape
        bar = _np(barrier, np.uint8) if barrier is not None else None
        err = _Err()
        _check(library().eg_rt_prefetch(self._rt, _ptr(a), B, T, _ptr(bar) if bar is not None else None,
                                        history, ctypes.byref(err)), err)

    def tier_stats(self):
        """The row tier's counters as a dict (zeros when rows come from the map)."""
        st = _TierStats()
        library().eg_rt_tier_stats(self._rt, ctypes.byref(st))
        return {n: getattr(st, n) for n, _ in _TierStats._fields_}

    def gather(self, li, rows, dtype="f32"):
        """rows (any shape) -> [..., dim] float32 (or bfloat16 bits as uint16 with dtype='bf16')."""
        r = _np(rows, np.uint64)
        code, npd = (0, np.float32) if dtype == "f32" else (1, np.uint16)
        out = np.empty(r.shape + (self.dim,), dtype=npd)
        err = _Err()
        _check(library().eg_rt_gather(self._rt, li, _ptr(r), r.size, code, _ptr(out), out.nbytes,
                                      ctypes.byref(err)), err)
        return _like(rows, out)

    def step(self, li, rows, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, lr_mult=1.0):
        """Reduce per-position row gradients [n, dim] per unique row and take one Adam step."""
        r = _np(rows, np.uint64).reshape(-1)
        g = _np(grads, np.float32).reshape(r.size, self.dim)
        uniq = np.empty(r.size, dtype=np.uint64)
        usum = np.empty((r.size, self.dim), dtype=np.float32)
        nu = ctypes.c_size_t()
        err = _Err()
        L = library()
        _check(L.eg_rt_reduce_rows(self._rt, _ptr(r), _ptr(g), r.size, _ptr(uniq), _ptr(usum),
                                   ctypes.byref(nu), ctypes.byref(err)), err)
        hp = _Adam(lr, beta1, beta2, eps, lr_mult)
        _check(L.eg_rt_adam_step(self._rt, li, _ptr(uniq), _ptr(usum), nu.value, ctypes.byref(hp),
                                 ctypes.byref(err)), err)
        return int(nu.value)

    def checkpoint(self, path=None):
        err = _Err()
        _check(library().eg_rt_checkpoint(self._rt, os.fsencode(path) if path else None,
                                          ctypes.byref(err)), err)

    @property
    def trained_rows(self):
        return library().eg_rt_trained_rows(self._rt)


def _layer_args(e, h, weights, kernel, dilation, eps_kq, eps_conv):
    E = _np(e, np.float32)
    Hs = _np(h, np.float32)
    B, T, De = E.shape
    _, _, hc, d = Hs.shape
    w = {k: (_np(weights[k], np.float32) if weights.get(k) is not None else None) for k in _WNAMES}
    ws = _Weights(*[_fptr(w[k]) for k in _WNAMES])
    dims = _Dims(B, T, hc, d, De, kernel, dilation, eps_kq, eps_conv)
    return E, Hs, w, ws, dims


def layer_forward(e, h, weights, kernel=4, dilation=3, eps_kq=0.0, eps_conv=0.0, threads=0):
    """CONTRACT section 5: e [B, T, De], h [B, T, hc, d] -> [B, T, hc, d] (float32)."""
    E, Hs, w, ws, dims = _layer_args(e, h, weights, kernel, dilation, eps_kq, eps_conv)
    out = np.empty(Hs.shape, dtype=np.float32)
    err = _Err()
    _check(library().eg_layer_forward(ctypes.byref(dims), ctypes.byref(ws), _ptr(E), _ptr(Hs),
                                      _ptr(out), threads, ctypes.byref(err)), err)
    return _like(e, out)


def layer_backward(e, h, dout, weights, kernel=4, dilation=3, eps_kq=0.0, eps_conv=0.0, threads=0):
    """Gradients of the layer for dout [B, T, hc, d]: a dict with de, dh and d<weight>."""
    E, Hs, w, ws, dims = _layer_args(e, h, weights, kernel, dilation, eps_kq, eps_conv)
    D = _np(dout, np.float32)
    g = {"de": np.empty(E.shape, np.float32), "dh": np.empty(Hs.shape, np.float32)}
    for k in _WNAMES:
        g["d" + k] = np.empty(w[k].shape, np.float32) if w[k] is not None else None
    gs = _Grads(*[_fptr(g[k]) for k in ["de", "dh"] + ["d" + n for n in _WNAMES]])
    err = _Err()
    _check(library().eg_layer_backward(ctypes.byref(dims), ctypes.byref(ws), _ptr(E), _ptr(Hs),
                                       _ptr(D), ctypes.byref(gs), threads, ctypes.byref(err)), err)
    return {k: (_like(e, v) if v is not None else None) for k, v in g.items()}
