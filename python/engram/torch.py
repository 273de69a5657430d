"""engram.torch: the Engram layer (CONTRACT section 5) as a PyTorch module.

    from engram.torch import EngramLayer, TableAdam
    eng = EngramLayer("tables.store", layer_id=1, hidden=256, hc_mult=1)
    out = eng(input_ids, h)              # [B, T] raw ids, h [B, T, d] -> [B, T, d]
    h = h + out                          # the caller adds the residual
    dense_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    table_opt = TableAdam([eng], lr=1e-3)        # the rows: lr x5, no weight decay
    loss.backward(); dense_opt.step(); table_opt.step()
    dense_opt.zero_grad(); table_opt.zero_grad()
    eng.checkpoint("run/tables.store")   # rows + their Adam state (torch.save the rest)

The forward hashes the raw ids with the store's projection and the store's
multipliers and primes (the C runtime, eg_rt_hash), gathers one row per head
(eg_rt_gather) and runs the gated layer (eg_layer_forward) through one
torch.autograd.Function. Its backward (eg_layer_backward) returns the
gradients of h and of every dense weight to autograd; the gradient of the
gathered rows goes to the layer's pending row gradients, which TableAdam
reduces per unique row and applies with the runtime's sparse Adam
(eg_rt_reduce_rows + eg_rt_adam_step): only the rows a batch touched change.

Dense weights are ordinary nn.Parameters in PyTorch's layouts, initialized
as the reference's nn.Linear / nn.RMSNorm / nn.Conv1d are. Layers of one
store share one runtime (open_store), so a checkpoint from any of them writes
every layer's rows.

Hidden states must be float32 tensors (the runtime computes in binary32). On
CPU tensors the layer runs the CPU runtime; on CUDA tensors libengram_cuda.so
(engram.cuda: the rows gathered by the runtime on the host and copied over,
or read from a device-resident or cached table, chosen by `tables`). For
checks, layer_function() also takes float64 inputs (computed in float32).
"""
import ctypes
import math
import os

import numpy as np
import torch
from torch import nn

from . import (EngramError, Runtime, _Adam, _Dims, _Err, _Grads, _Weights, _check, _FP,
               library)

__all__ = ["EngramLayer", "TableAdam", "DecodeState", "open_store", "layer_function",
           "close_stores", "prefetch", "prefetch_on_forward"]

_WN = ["w_k", "b_k", "w_v", "b_v", "norm_k", "norm_q", "norm_c", "conv"]
_stores = {}
_device_layers = {}  # id(runtime) -> engram.cuda.DeviceLayer of its layers (synced at checkpoints)


def open_store(path, tokenizer_sha256=None, threads=0, cache_bytes=None, shared_cache=False):
    """The Runtime of `path`, shared by every layer of this process that reads it.

    Two runtimes of one file would each checkpoint only their own trained
    rows over the other's; sharing one makes a checkpoint carry all layers.
    cache_bytes: None reads rows through the store's memory map; a number
    serves a store larger than RAM from disk through the row tier with a
    hot-row cache of that many bytes (the first opener's choice holds);
    shared_cache puts that cache in shared memory, one for every process of
    the host serving the file (Runtime's shared_cache)."""
    key = os.path.realpath(path)
    rt = _stores.get(key)
    if rt is None or not rt._rt:
        rt = Runtime(path, tokenizer_sha256=tokenizer_sha256, threads=threads,
                     cache_bytes=cache_bytes, shared_cache=shared_cache)
        rt.path = path
        _stores[key] = rt
    elif tokenizer_sha256:
        rt.expect(tokenizer_sha256)  # the open checked the first caller's fingerprint
    return rt


def _engram_layers(model):
    if isinstance(model, EngramLayer):
        return [model]
    if isinstance(model, nn.Module):
        return [m for m in model.modules() if isinstance(m, EngramLayer)]
    return [m for m in model if isinstance(m, EngramLayer)]


def prefetch(model, input_ids, states=None):
    """Start reading the rows that every EngramLayer of `model` (a module, or a
    list of layers) will gather for input_ids [B, T], and return at once: one
    eg_rt_prefetch per store, all its layers at once (the rows depend only on
    the ids). states: the decode states of a decoding step (a DecodeState, or
    a dict or list of them; their histories continue the sequences); None for
    whole sequences. A no-op for stores read through the map."""
    layers = _engram_layers(model)
    if not layers:
        return
    if isinstance(states, DecodeState):
        states = [states]
    elif isinstance(states, dict):
        states = list(states.values())
    hist = {}
    for st in states or []:
        if isinstance(st, DecodeState):
            hist.setdefault(id(st.layer.rt), st.hist)
    ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else \
        np.asarray(input_ids)
    if ids.ndim != 2 or (ids.size and (ids.min() < 0 or ids.max() > 0xFFFFFFFF)):
        return  # the layers' own lookups report bad ids, with their positions
    ids = ids.astype(np.uint32)
    done = set()
    for layer in layers:
        rt = layer.rt
        if id(rt) in done or not rt._rt:
            continue
        done.add(id(rt))
        if states and id(rt) not in hist:
            continue  # decoding without this store's history: the gather reads
        rt.prefetch(ids, history=hist.get(id(rt)))


def prefetch_on_forward(model, ids_arg=0, states_arg=1):
    """Issue prefetch() at the start of every forward of `model`: the ids are
    its positional argument `ids_arg`, the decode states (a dict or list of
    DecodeState, or None) argument `states_arg` when given. Returns the hook's
    handle (handle.remove() undoes it)."""
    def hook(module, args):
        if len(args) > ids_arg:
            st = args[states_arg] if states_arg is not None and len(args) > states_arg else None
            prefetch(module, args[ids_arg], st if isinstance(st, (dict, list, DecodeState)) else None)
    return model.register_forward_pre_hook(hook)


def close_stores():
    """Close every shared runtime (their layers cannot be used afterwards)."""
    for rt in _stores.values():
        for dev in _device_layers.pop(id(rt), []):
            dev.close()  # GPU tables read the runtime: they go first
        rt.close()
    _stores.clear()


def _f32(t):
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    return t.contiguous()


def _fp(t):
    return ctypes.cast(t.data_ptr(), _FP) if t is not None else None


def _weights(ws):
    return _Weights(*[_fp(w) for w in ws])


class _LayerFn(torch.autograd.Function):
    """out = layer(e, h; weights) with the C forward and backward."""

    @staticmethod
    def forward(ctx, cfg, e, h, w_k, b_k, w_v, b_v, norm_k, norm_q, norm_c, conv):
        kernel, dilation, eps_kq, eps_conv, threads = cfg[:5]
        ws = [_f32(w) if w is not None else None for w in (w_k, b_k, w_v, b_v, norm_k, norm_q,
                                                           norm_c, conv)]
        E, H = _f32(e), _f32(h)
        B, T, De = E.shape
        hc, d = H.shape[2], H.shape[3]
        dims = _Dims(B, T, hc, d, De, kernel, dilation, eps_kq, eps_conv)
        out = torch.empty(H.shape, dtype=torch.float32)
        err = _Err()
        pool = cfg[6] if len(cfg) > 6 else None
        ctx.buf = None
        if pool is not None:
            # keep the intermediates for the backward (no recompute), in a buffer
            # from the layer's pool (fresh pages every step cost more than reuse)
            L = library()
            nb = L.eg_layer_saved_bytes(ctypes.byref(dims))
            buf = next((b for b in pool if b.numel() * 8 >= nb), None)
            if buf is None:
                buf = torch.empty((nb + 7) // 8, dtype=torch.float64)
            else:
                pool.remove(buf)
            _check(L.eg_layer_forward_save(ctypes.byref(dims), ctypes.byref(_weights(ws)),
                                           E.data_ptr(), H.data_ptr(), out.data_ptr(),
                                           buf.data_ptr(), buf.numel() * 8, threads,
                                           ctypes.byref(err)), err)
            ctx.buf, ctx.pool = buf, pool
        else:
            _check(library().eg_layer_forward(ctypes.byref(dims), ctypes.byref(_weights(ws)),
                                              E.data_ptr(), H.data_ptr(), out.data_ptr(), threads,
                                              ctypes.byref(err)), err)
        ctx.cfg, ctx.dims = cfg, dims
        ctx.dtypes = [x.dtype if x is not None else None
                      for x in (e, h, w_k, b_k, w_v, b_v, norm_k, norm_q, norm_c, conv)]
        ctx.save_for_backward(E, H, *[w if w is not None else torch.empty(0) for w in ws])
        ctx.has_bias = (b_k is not None, b_v is not None)
        return out.to(h.dtype)

    @staticmethod
    def backward(ctx, dout):
        E, H, *ws = ctx.saved_tensors
        if not ctx.has_bias[0]:
            ws[1] = None
        if not ctx.has_bias[1]:
            ws[3] = None
        D = _f32(dout)
        g = [torch.empty(E.shape), torch.empty(H.shape)]
        g += [torch.empty(w.shape) if w is not None else None for w in ws]
        err = _Err()
        if ctx.buf is not None:
            buf = ctx.buf
            _check(library().eg_layer_backward_saved(
                ctypes.byref(ctx.dims), ctypes.byref(_weights(ws)), E.data_ptr(), H.data_ptr(),
                D.data_ptr(), buf.data_ptr(), buf.numel() * 8,
                ctypes.byref(_Grads(*[_fp(x) for x in g])), ctx.cfg[4], ctypes.byref(err)), err)
            ctx.buf = None
            ctx.pool.append(buf)
        else:
            _check(library().eg_layer_backward(ctypes.byref(ctx.dims), ctypes.byref(_weights(ws)),
                                               E.data_ptr(), H.data_ptr(), D.data_ptr(),
                                               ctypes.byref(_Grads(*[_fp(x) for x in g])),
                                               ctx.cfg[4], ctypes.byref(err)), err)
        if len(ctx.cfg) > 5 and ctx.cfg[5] is not None:
            ctx.cfg[5](g[0])  # the rows' gradient, to the tables' optimizer
        res = [None]
        for x, dt, need in zip(g, ctx.dtypes, ctx.needs_input_grad[1:]):
            res.append(x.to(dt) if (x is not None and need) else None)
        return tuple(res)


def layer_function(e, h, w_k, b_k, w_v, b_v, norm_k, norm_q, norm_c, conv, kernel=4,
                   dilation=3, eps_kq=0.0, eps_conv=0.0, threads=0):
    """The layer on tensors, differentiable in e, h and every weight (CPU, float32 or
    float64; computed in float32). e [B, T, De], h [B, T, hc, d] -> [B, T, hc, d]."""
    for name, t in (("e", e), ("h", h)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"engram layer: {name} must be a float32 or float64 tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.is_cuda:
            raise TypeError(f"engram layer: {name} is a CUDA tensor; this function runs the "
                            "CPU runtime (see docs/TRAINING.md, CUDA)")
    if e.dim() != 3 or h.dim() != 4 or e.shape[:2] != h.shape[:2]:
        raise ValueError(f"engram layer: e must be [B, T, De] and h [B, T, hc, d] with the same "
                         f"B and T, got {tuple(e.shape)} and {tuple(h.shape)}")
    return _LayerFn.apply((kernel, dilation, eps_kq, eps_conv, threads), e, h, w_k, b_k, w_v,
                          b_v, norm_k, norm_q, norm_c, conv)


class DecodeState:
    """Decode state of one EngramLayer for `batch` sequences: the hash history
    (the last N-1 ids, eg_rt_history) and the conv's history (eg_layer_state)."""

    def __init__(self, layer, batch):
        self.layer, self.batch = layer, batch
        self.hist = layer.rt.new_history(batch)
        p = ctypes.c_void_p()
        err = _Err()
        _check(library().eg_layer_state_create(batch, layer.hc, layer.hidden, layer.kernel,
                                               layer.dilation, ctypes.byref(p),
                                               ctypes.byref(err)), err)
        self._st = p

    def reset(self, b0=0, n=None):
        """Sequences b0 .. b0+n-1 start afresh."""
        n = self.batch - b0 if n is None else n
        library().eg_layer_state_reset(self._st, b0, n)
        sub = (type(self.hist[0]) * n).from_buffer(self.hist, b0 * ctypes.sizeof(self.hist[0]))
        library().eg_rt_history_reset(self.layer.rt._rt, sub, n)

    def seen(self, b=0):
        return library().eg_layer_state_seen(self._st, b)

    def __del__(self):
        try:
            library().eg_layer_state_free(self._st)
        except Exception:
            pass


class EngramLayer(nn.Module):
    """One Engram layer reading the tables of `store` (a path from `engram build`,
    or an engram.Runtime) for `layer_id` (one of the config's layer_ids).

    hidden: the backbone's hidden size d; hc_mult: its hyper-connection
    branches (h is [B, T, hc, d]; with hc_mult=1 also [B, T, d]). kernel: the
    short conv's kernel (the config's kernel_size); its dilation is the
    store's max n-gram size. bias: the key and value projections' biases
    (nn.Linear's default, as the reference). tokenizer_sha256 / config:
    refuse a store built for another tokenizer (its fingerprint, as `engram
    vocab` prints) or another config (a path or dict: its hashing fields and
    table sizes must equal the store's). threads: the runtime's OpenMP
    threads (0: OpenMP's default). tables: where the rows come from when the
    hidden states are CUDA tensors: "host" (the runtime gathers them on the
    host; trains there), "device" (the table on the GPU; trains there, synced
    into the runtime at checkpoints) or "cached" (a device cache of
    cache_rows hot rows; serves only) -- see engram.cuda. cache_bytes: None
    reads the store's rows through its memory map; a number serves a store
    larger than RAM through the row tier (eg_tier.h) with a hot-row cache of
    that many bytes (in shared memory, one per host, with shared_cache);
    prefetch() / prefetch_on_forward() start a step's reads ahead of the
    layers."""

    def __init__(self, store, layer_id, hidden, hc_mult=1, kernel=None, bias=True,
                 tokenizer_sha256=None, config=None, threads=0, eps_kq=0.0, eps_conv=1e-5,
                 tables="host", cache_rows=None, cache_bytes=None, shared_cache=False):
        super().__init__()
        self.rt = store if isinstance(store, Runtime) else open_store(
            store, tokenizer_sha256=tokenizer_sha256, threads=threads, cache_bytes=cache_bytes,
            shared_cache=shared_cache)
        L = library()
        store_cfg = self.rt.config()
        if config is not None:
            _check_config(config, store_cfg, getattr(self.rt, "path", "the store"))
        li = L.eg_spec_layer_index(self.rt._spec, layer_id)
        if li < 0:
            raise EngramError(-9, f"EngramLayer: layer_id {layer_id} is not one of the store's "
                                  f"layer_ids {store_cfg.get('layer_ids')}")
        self.layer_id, self.li = layer_id, li
        self.hidden, self.hc = int(hidden), int(hc_mult)
        self.kernel = int(kernel if kernel is not None else store_cfg.get("kernel_size", 4))
        self.dilation = self.rt.max_ngram
        self.n_heads, self.dim = self.rt.n_heads, self.rt.dim
        self.De = self.n_heads * self.dim
        self.eps_kq, self.eps_conv, self.threads = eps_kq, eps_conv, threads
        d, De, hc = self.hidden, self.De, self.hc
        # the reference's modules: nn.Linear(De, d) per branch and one for values,
        # nn.RMSNorm(d) for keys, queries and the conv input, depthwise nn.Conv1d
        bound = 1 / math.sqrt(De)
        self.w_k = nn.Parameter(torch.empty(hc, d, De).uniform_(-bound, bound))
        self.b_k = nn.Parameter(torch.empty(hc, d).uniform_(-bound, bound)) if bias else None
        self.w_v = nn.Parameter(torch.empty(d, De).uniform_(-bound, bound))
        self.b_v = nn.Parameter(torch.empty(d).uniform_(-bound, bound)) if bias else None
        self.norm_k = nn.Parameter(torch.ones(hc, d))
        self.norm_q = nn.Parameter(torch.ones(hc, d))
        self.norm_c = nn.Parameter(torch.ones(hc, d))
        cb = 1 / math.sqrt(self.kernel)
        self.conv = nn.Parameter(torch.empty(hc * d, self.kernel).uniform_(-cb, cb))
        if tables not in ("host", "device", "cached"):
            raise ValueError(f"EngramLayer: tables must be 'host', 'device' or 'cached', got "
                             f"{tables!r}")
        self.tables, self.cache_rows, self._dev = tables, cache_rows, None
        self._pending = []  # (rows [n] uint64, row grads [n, dim] float32, owner) since zero_grad
        self._saved_pool = []  # buffers for forward intermediates kept for the backward

    def extra_repr(self):
        return (f"layer_id={self.layer_id}, hidden={self.hidden}, hc_mult={self.hc}, "
                f"heads={self.n_heads}, dim={self.dim}, kernel={self.kernel}, "
                f"dilation={self.dilation}")

    # ---- lookup ----
    def lookup(self, input_ids, state=None, gather=True):
        """[B, T] raw ids -> (rows [B, T, H] uint64 numpy, e [B, T, De] float32 tensor, or
        None without gather)."""
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.as_tensor(np.asarray(input_ids))
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"EngramLayer: input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"EngramLayer: input_ids must be [B, T], got {tuple(input_ids.shape)}")
        a = input_ids.detach().cpu().numpy()
        if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
            b, t = [int(x) for x in np.argwhere((a < 0) | (a > 0xFFFFFFFF))[0]]
            raise EngramError(-5, f"EngramLayer: sequence {b} position {t}: id {int(a[b, t])} "
                                  "is not a token id")
        rows = self.rt.hash(self.li, a if a.dtype == np.uint32 else a.astype(np.uint32),
                            history=state.hist if state is not None else None)
        if not gather:
            return rows, None
        e = torch.from_numpy(self.rt.gather(self.li, rows))
        B, T = a.shape
        return rows, e.view(B, T, self.De)

    def _weights(self):
        return (self.w_k, self.b_k, self.w_v, self.b_v, self.norm_k, self.norm_q, self.norm_c,
                self.conv)

    def _check_h(self, h):
        if not isinstance(h, torch.Tensor):
            raise TypeError("EngramLayer: hidden states must be a torch tensor")
        if h.is_cuda and not all(p.device == h.device for p in self.parameters()):
            raise ValueError(f"EngramLayer: hidden states on {h.device}, the layer's weights on "
                             f"{self.w_k.device} (move the module with .to(device))")
        if h.dtype != torch.float32:
            raise TypeError(f"EngramLayer: hidden states must be float32, got {h.dtype} "
                            "(the runtime computes in binary32)")
        shape = tuple(h.shape)
        if h.dim() == 3 and self.hc == 1 and shape[2] == self.hidden:
            return h.unsqueeze(2), True
        if h.dim() == 4 and shape[2:] == (self.hc, self.hidden):
            return h, False
        want = f"[B, T, {self.hc}, {self.hidden}]" + (f" or [B, T, {self.hidden}]"
                                                       if self.hc == 1 else "")
        raise ValueError(f"EngramLayer: hidden states must be {want}, got {list(shape)}")

    def forward(self, input_ids, h, state=None):
        """input_ids [B, T] raw token ids, h [B, T, hc, d] (or [B, T, d] when hc_mult=1)
        -> the layer's output, shaped as h (add it to the residual stream).
        state: a DecodeState to continue sequences from (serving); then the
        output of each position equals the whole sequence's."""
        h4, squeeze = self._check_h(h)
        if tuple(input_ids.shape) != tuple(h4.shape[:2]):
            raise ValueError(f"EngramLayer: input_ids {list(input_ids.shape)} and hidden states "
                             f"{list(h.shape)} disagree on [B, T]")
        if h4.is_cuda:
            out = self._forward_cuda(input_ids, h4, state)
        elif state is not None:
            out = self._decode(input_ids, h4, state)
        else:
            rows, e = self.lookup(input_ids)
            sink = pool = None
            if torch.is_grad_enabled() and self.training:
                pool, sink = self._saved_pool, self._row_grad_sink(rows)
            out = _LayerFn.apply((self.kernel, self.dilation, self.eps_kq, self.eps_conv,
                                  self.threads, sink, pool), e, h4, *self._weights())
        return out.squeeze(2) if squeeze else out

    def _row_grad_sink(self, rows, d_rows=None):
        """Where the backward hands the gathered rows' gradient (not to autograd):
        the layer's pending row gradients, for TableAdam. On the host (the
        backward's own fresh tensor, kept, not copied; a CUDA one copied over),
        or, for a device-trained table (d_rows given), rows and gradient stay
        on the device."""
        pend, dim = self._pending, self.dim

        def sink(de):
            if d_rows is not None:
                pend.append((d_rows, de.reshape(-1, dim), "device"))
            else:
                de = de.cpu()  # the tensor itself when it is already on the host
                pend.append((rows.reshape(-1), de.numpy().reshape(-1, dim), de))
        return sink

    def _forward_cuda(self, input_ids, h4, state):
        from . import cuda
        if state is not None:
            raise EngramError(-6, "EngramLayer: decoding with a DecodeState runs on the CPU runtime "
                                  "(its conv history is host memory); decode on CPU tensors")
        training = torch.is_grad_enabled() and self.training
        if training and self.tables == "cached":
            raise EngramError(-6, "EngramLayer: tables='cached' serves only (the device cache "
                                  "holds no optimizer state): train with tables='host' or "
                                  "'device'")
        if self._dev is None:
            self._dev = cuda.DeviceLayer(self, self.tables, self.cache_rows)
            _device_layers.setdefault(id(self.rt), []).append(self._dev)
        rows, _ = self.lookup(input_ids.cpu(), gather=False)
        e, d_rows = self._dev.rows_to_device(rows, h4.device, training)
        B, T = rows.shape[:2]
        dims = _Dims(B, T, self.hc, self.hidden, self.De, self.kernel, self.dilation, self.eps_kq,
                     self.eps_conv)
        sink = self._row_grad_sink(rows, d_rows) if training else None
        ws = [w.contiguous() if w is not None else None for w in self._weights()]
        return cuda.LayerFnCUDA.apply(self._dev, dims, sink, e, h4.contiguous(), *ws)

    def _decode(self, input_ids, h4, state):
        if torch.is_grad_enabled() and h4.requires_grad:
            raise RuntimeError("EngramLayer: decoding with a state runs without autograd "
                               "(use torch.no_grad())")
        if state.layer is not self or state.batch != h4.shape[0]:
            raise ValueError("EngramLayer: the DecodeState is for another layer or batch size")
        _, e = self.lookup(input_ids, state)
        ws = [_f32(w) if w is not None else None for w in self._weights()]
        B, T = h4.shape[:2]
        H = _f32(h4)
        out = torch.empty(H.shape, dtype=torch.float32)
        dims = _Dims(B, T, self.hc, self.hidden, self.De, self.kernel, self.dilation,
                     self.eps_kq, self.eps_conv)
        err = _Err()
        _check(library().eg_layer_decode(ctypes.byref(dims), ctypes.byref(_weights(ws)),
                                         e.data_ptr(), H.data_ptr(), state._st, out.data_ptr(),
                                         self.threads, ctypes.byref(err)), err)
        return out

    def decode_state(self, batch):
        """A DecodeState for `batch` sequences, each at its start."""
        return DecodeState(self, batch)

    # ---- the tables' training ----
    @property
    def pending_rows(self):
        return sum(p[0].size if isinstance(p[0], np.ndarray) else p[0].numel()
                   for p in self._pending)

    def table_step(self, lr, beta1=0.9, beta2=0.999, eps=1e-8, lr_mult=5.0):
        """One sparse Adam step on the rows the pending gradients touched (reduced
        per unique row); clears them. Returns the number of unique rows."""
        if not self._pending:
            return 0
        if isinstance(self._pending[0][2], str):  # "device"
            rows = torch.cat([p[0] for p in self._pending])
            grads = torch.cat([p[1] for p in self._pending])
            self._pending.clear()
            self._dev.adam(rows, grads, _Adam(lr, beta1, beta2, eps, lr_mult))
            return int(torch.unique(rows).numel())
        if len(self._pending) == 1:
            rows, grads = self._pending[0][0], self._pending[0][1]
        else:
            rows = np.concatenate([p[0] for p in self._pending])
            grads = np.concatenate([p[1] for p in self._pending])
        self._pending.clear()
        return self.rt.step(self.li, rows, grads, lr, beta1, beta2, eps, lr_mult)

    def zero_table_grad(self):
        self._pending.clear()

    def checkpoint(self, path=None):
        """Write the store's next generation (every layer's rows and their Adam
        state) to `path` (None: the store's own file), atomically; the runtime
        then reads it. Save the dense part with torch.save(model.state_dict())."""
        for dev in _device_layers.get(id(self.rt), []):
            dev.sync()  # rows trained on a GPU, into the runtime first
        self.rt.checkpoint(path)
        if path is not None:
            self.rt.path = path


class TableAdam:
    """Sparse Adam for the tables of EngramLayers: the paper's recipe, the
    tables' learning rate lr * lr_mult (5), no weight decay. param_groups
    mirrors torch optimizers' so LR schedulers can set 'lr'."""

    def __init__(self, layers, lr, betas=(0.9, 0.999), eps=1e-8, lr_mult=5.0):
        self.layers = list(layers)
        self.param_groups = [{"lr": lr, "betas": betas, "eps": eps, "lr_mult": lr_mult}]

    def step(self):
        g = self.param_groups[0]
        return sum(layer.table_step(g["lr"], g["betas"][0], g["betas"][1], g["eps"],
                                    g["lr_mult"]) for layer in self.layers)

    def zero_grad(self, set_to_none=True):
        for layer in self.layers:
            layer.zero_table_grad()


_CONFIG_FIELDS = ["max_ngram_size", "n_head_per_ngram", "n_embed_per_ngram", "layer_ids",
                  "pad_id", "seed", "engram_vocab_size"]


def _check_config(config, store_cfg, where):
    import json
    if isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            config = json.load(f)
    for k in _CONFIG_FIELDS:
        if k in config and config[k] != store_cfg.get(k):
            raise EngramError(-9, f"EngramLayer: {where} was built for {k} = {store_cfg.get(k)}, "
                                  f"the model's config has {config[k]}")
