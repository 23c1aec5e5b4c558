"""Dropout's CUDA kernel, from the same scalar generator body as the CPU kernel.

``cuda.jit(device=True)`` compiles the templates of :mod:`fastbp._rng`
(:func:`~fastbp._rng.stream_key`, :func:`~fastbp._rng.element_bits`,
:func:`~fastbp._rng.keep`) bound to the device compilation of
:func:`~fastbp._rng.mix32` and of the word operations (``_rng.WORD_OPS``): the CPU kernel (:mod:`fastbp.kernels.dropout`)
compiles the very same bodies, so both draw bitwise the same mask.  One
thread per element (2-D grid, grid-stride over rows); each thread derives
the stream key itself (four hashes: cheaper than a launch argument computed
on the host).  Same contract as :func:`fastbp.kernels.dropout._dropout`.
"""
from numba import cuda

from ... import _rng
from ..factory import specialise
from .launch import device, grid_ew, kernel

_ops = {name: device(fn) for name, fn in _rng.WORD_OPS.items()}
_mix = device(specialise(_rng.mix32, "__cuda", **_ops))
_bits = device(specialise(_rng.element_bits, "__cuda", _mix=_mix, **_ops))
_key = device(specialise(_rng.stream_key, "__cuda", _mix=_mix, **_ops))
_keep = device(specialise(_rng.keep, "__cuda", _bits=_bits, **_ops))
_threshold = device(_rng.keep_threshold)


@kernel
def _k_dropout(A, out, seed, layer, step, row0, p, acc):
    """``out (+)= A * m``, ``m = 1[kept] / (1 - p)``; ``p == 0``: ``out (+)= A`` exactly."""
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    c = out.shape[1]
    zero = out.dtype.type(0.0)
    q = 1.0 - p
    scale = out.dtype.type(1.0) / out.dtype.type(q) if q > 0.0 else zero
    key = _key(seed, layer, step)
    thr = _threshold(q)
    for i in range(y0, out.shape[0], sy):
        for j in range(x0, c, sx):
            if p == 0.0:
                v = A[i, j]
            else:
                m = scale if _keep(key, (row0 + i) * c + j, thr) else zero
                v = A[i, j] * m
            if acc:
                out[i, j] += v
            else:
                out[i, j] = v


def _dropout(A, out, seed, layer, step, row0, p, acc, stream=0):
    """Launch :func:`_k_dropout` over ``out`` (``(r, c)`` device arrays of one float dtype)."""
    grid, block = grid_ew(out.shape[0], out.shape[1])
    _k_dropout[grid, block, stream](A, out, int(seed), int(layer), int(step), int(row0), float(p),
                                      bool(acc))
