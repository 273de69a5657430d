"""engram.cuda: EngramLayer's path for CUDA tensors (libengram_cuda.so).

The layer's forward and backward run on the GPU through the C API's device
pointer entry points (eg_cuda_layer_forward / eg_cuda_layer_backward, the
code the CUDA parity suite checks against the CPU, case by case); the rows
reach the GPU one of three ways, EngramLayer(..., tables=...):

  "host"    the runtime gathers the rows in host memory (eg_rt_gather: the
            stored rows and every row trained since open) and they are copied
            to the device, 2 * B*T*H*dim*4 bytes a step with the gradient's
            way back; the tables train with TableAdam on the host, as on the
            CPU. The default, and the only residency that trains.
  "device"  the layer's table in device memory: for serving, as stored
            (eg_cuda_table_open, EG_CUDA_DEVICE); once the layer trains, every
            row in binary32 with its Adam state (eg_cuda_table_open_train),
            trained on the device by TableAdam (eg_cuda_adam_rows: the CPU
            runtime's arithmetic) and written back into the runtime before a
            checkpoint (eg_cuda_table_sync).
  "cached"  hot rows in a device cache of `cache_rows` rows filled from the
            runtime ahead of each batch (eg_cuda_table_open_cached); serves
            only (the cache holds no optimizer state), training is refused.

Streams: every call is queued on torch's current stream of the tensors'
device. Debian's torch is CPU-only and no GPU was lent to the sessions that
wrote this: this path is untested (docs/TRAINING.md, CUDA); the C functions
under it are covered by the parity suite where a device is present.
"""
import ctypes
import os

import torch

from . import EngramError, _Adam, _check, _Dims, _Err, _FP, _Grads, _load, _Weights, library

RESIDENCIES = ("host", "device", "cached")
_lib = None


def cuda_library():
    """libengram_cuda.so ($ENGRAM_CUDA_LIB, else beside libengram), loaded once."""
    global _lib
    if _lib is not None:
        return _lib
    here = os.path.dirname(os.path.abspath(__file__))
    cands = [os.environ.get("ENGRAM_CUDA_LIB"),
             os.path.join(os.path.dirname(os.environ.get("ENGRAM_LIB", "")), "libengram_cuda.so")
             if os.environ.get("ENGRAM_LIB") else None,
             os.path.join(here, "..", "..", "build", "libengram_cuda.so"), "libengram_cuda.so"]
    library()  # libengram first (the CUDA library needs it: the same file, found beside it)
    L, last = _load(cands)
    if L is None:
        raise EngramError(-6, f"engram.cuda: libengram_cuda.so not found (build with nvcc, or set "
                              f"ENGRAM_CUDA_LIB): {last}")
    vp, sz, u32, i32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int
    E = ctypes.POINTER(_Err)
    D, W, G = ctypes.POINTER(_Dims), ctypes.POINTER(_Weights), ctypes.POINTER(_Grads)
    sig = {
        "eg_cuda_backend": ([ctypes.c_char_p, sz], vp),
        "eg_cuda_layer_create": ([D, ctypes.POINTER(vp), E], i32),
        "eg_cuda_layer_free": ([vp], None),
        "eg_cuda_layer_forward": ([vp, D, W, vp, vp, vp, vp, E], i32),
        "eg_cuda_layer_backward": ([vp, D, W, vp, vp, vp, G, vp, E], i32),
        "eg_cuda_table_open": ([vp, u32, i32, sz, ctypes.POINTER(vp), E], i32),
        "eg_cuda_table_open_cached": ([vp, u32, ctypes.c_uint64, u32, i32, sz, ctypes.POINTER(vp),
                                       E], i32),
        "eg_cuda_table_close": ([vp], None),
        "eg_cuda_table_open_train": ([vp, u32, ctypes.POINTER(vp), E], i32),
        "eg_cuda_adam_rows": ([vp, vp, vp, sz, ctypes.POINTER(_Adam), vp, E], i32),
        "eg_cuda_table_sync": ([vp, E], i32),
        "eg_cuda_gather": ([vp, vp, sz, vp, vp, E], i32),
        "eg_cuda_cache_stage": ([vp, vp, sz, vp, vp, vp, E], i32),
        "eg_cuda_gather_slots": ([vp, vp, sz, vp, vp, E], i32),
    }
    for name, (args, res) in sig.items():
        f = getattr(L, name)
        f.argtypes, f.restype = args, res
    _lib = L
    return L


def available():
    """(True, "") when the CUDA library loads and sees a device, else (False, why)."""
    try:
        L = cuda_library()
    except EngramError as e:
        return False, str(e)
    why = ctypes.create_string_buffer(256)
    if not L.eg_cuda_backend(why, 256):
        return False, why.value.decode(errors="replace")
    return True, ""


def _stream(t):
    return ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream)


def _dp(t):
    return ctypes.cast(t.data_ptr(), _FP) if t is not None else None


class DeviceLayer:
    """One EngramLayer's GPU state: the layer workspace (grown to the largest
    batch) and, for "device" / "cached", the placed table."""

    def __init__(self, layer, tables, cache_rows=None):
        if tables not in RESIDENCIES:
            raise ValueError(f"EngramLayer: tables must be one of {RESIDENCIES}, got {tables!r}")
        self.layer, self.tables, self.cache_rows = layer, tables, cache_rows
        self._ws, self._ws_bt, self._table, self._table_bt = None, 0, None, 0
        self.trains = False  # "device": the table is a training table

    def close(self):
        L = _lib
        if L is None:
            return
        if self._ws:
            L.eg_cuda_layer_free(self._ws)
        if self._table:
            L.eg_cuda_table_close(self._table)
        self._ws = self._table = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def workspace(self, dims):
        bt = dims.B * dims.T
        if self._ws is None or bt > self._ws_bt:
            L = cuda_library()
            if self._ws:
                L.eg_cuda_layer_free(self._ws)
                self._ws = None
            p, err = ctypes.c_void_p(), _Err()
            full = _Dims(bt, 1, dims.hc, dims.d, dims.De, dims.kernel, dims.dilation, dims.eps_kq,
                         dims.eps_conv)
            _check(L.eg_cuda_layer_create(ctypes.byref(full), ctypes.byref(p), ctypes.byref(err)),
                   err)
            self._ws, self._ws_bt = p, bt
        return self._ws

    def rows_to_device(self, rows, device, training=False):
        """rows [B, T, H] uint64 (host) -> (e [B, T, De] float32 on `device`, the rows on
        the device or None)."""
        lay, L = self.layer, cuda_library()
        B, T, H = rows.shape
        n = rows.size
        if self.tables == "host":
            e = torch.from_numpy(lay.rt.gather(lay.li, rows)).view(B, T, lay.De)
            return e.pin_memory().to(device, non_blocking=True), None
        err = _Err()
        if training and not self.trains:  # serving table -> training table
            if self._table:
                L.eg_cuda_table_close(self._table)
            p = ctypes.c_void_p()
            self._table = None
            _check(L.eg_cuda_table_open_train(lay.rt._rt, lay.li, ctypes.byref(p),
                                              ctypes.byref(err)), err)
            self._table, self.trains = p, True
        if self._table is None or (self.tables == "cached" and n > self._table_bt):
            if self._table:
                L.eg_cuda_table_close(self._table)
                self._table = None
            p = ctypes.c_void_p()
            if self.tables == "device":
                _check(L.eg_cuda_table_open(lay.rt._rt, lay.li, 0, 0, ctypes.byref(p),
                                            ctypes.byref(err)), err)
            else:
                cache = self.cache_rows or max(4 * n, 1 << 16)
                _check(L.eg_cuda_table_open_cached(lay.rt._rt, lay.li, cache, 8, 0, n,
                                                   ctypes.byref(p), ctypes.byref(err)), err)
            self._table, self._table_bt = p, n
        stream = torch.cuda.current_stream(device).cuda_stream
        if self.tables == "cached":
            slots = torch.empty(n, dtype=torch.int64, device=device)
            out = torch.empty((n, lay.dim), dtype=torch.float32, device=device)
            host = rows.reshape(-1)
            _check(L.eg_cuda_cache_stage(self._table, host.ctypes.data, n, slots.data_ptr(), stream,
                                         None, ctypes.byref(err)), err)
            _check(L.eg_cuda_gather_slots(self._table, slots.data_ptr(), n, out.data_ptr(), stream,
                                          ctypes.byref(err)), err)
            return out.view(B, T, lay.De), None
        d_rows = torch.from_numpy(rows.reshape(-1).view("int64")).to(device)
        dtype = "f32" if self.trains else lay.rt.store_dtype
        if dtype not in ("f32", "bf16"):
            raise EngramError(-6, f"EngramLayer: tables='device' reads f32 or bf16 stores, this one "
                                  f"is {dtype} (use tables='cached', which decodes to f32)")
        es = 4 if dtype == "f32" else 2
        out = torch.empty((n, lay.dim * es), dtype=torch.uint8, device=device)
        _check(L.eg_cuda_gather(self._table, d_rows.data_ptr(), n, out.data_ptr(), stream,
                                ctypes.byref(err)), err)
        e = out.view(torch.float32) if es == 4 else out.view(torch.bfloat16).float()
        return e.view(B, T, lay.De), d_rows

    def adam(self, d_rows, d_grads, hp):
        """One sparse Adam step of the training table on device rows and gradients."""
        err = _Err()
        _check(cuda_library().eg_cuda_adam_rows(self._table, d_rows.data_ptr(), d_grads.data_ptr(),
                                                d_rows.numel(), ctypes.byref(hp),
                                                _stream(d_grads), ctypes.byref(err)), err)

    def sync(self):
        """The device-trained rows into the runtime (before a checkpoint)."""
        if self.trains and self._table:
            err = _Err()
            _check(cuda_library().eg_cuda_table_sync(self._table, ctypes.byref(err)), err)


class LayerFnCUDA(torch.autograd.Function):
    """out = layer(e, h; weights) on device pointers (eg_cuda_layer_forward /
    eg_cuda_layer_backward, which recomputes the forward)."""

    @staticmethod
    def forward(ctx, dev, dims, sink, e, h, *ws):
        L = cuda_library()
        out = torch.empty_like(h)
        err = _Err()
        w = _Weights(*[_dp(x) for x in ws])
        _check(L.eg_cuda_layer_forward(dev.workspace(dims), ctypes.byref(dims), ctypes.byref(w),
                                       e.data_ptr(), h.data_ptr(), out.data_ptr(), _stream(h),
                                       ctypes.byref(err)), err)
        ctx.dev, ctx.dims, ctx.sink = dev, dims, sink
        ctx.has = [x is not None for x in ws]
        ctx.save_for_backward(e, h, *[x if x is not None else torch.empty(0) for x in ws])
        return out

    @staticmethod
    def backward(ctx, dout):
        L = cuda_library()
        e, h, *ws = ctx.saved_tensors
        ws = [x if has else None for x, has in zip(ws, ctx.has)]
        dout = dout.contiguous()
        g = [torch.empty_like(e), torch.empty_like(h)] + [
            torch.empty_like(x) if x is not None else None for x in ws]
        err = _Err()
        w = _Weights(*[_dp(x) for x in ws])
        _check(L.eg_cuda_layer_backward(ctx.dev.workspace(ctx.dims), ctypes.byref(ctx.dims),
                                        ctypes.byref(w), e.data_ptr(), h.data_ptr(),
                                        dout.data_ptr(), ctypes.byref(_Grads(*[_dp(x) for x in g])),
                                        _stream(h), ctypes.byref(err)), err)
        if ctx.sink is not None:
            ctx.sink(g[0])  # the rows' gradient, to the tables' optimizer
        return (None, None, None, None, g[1]) + tuple(g[2:])
