"""The gates of the notes for CUDA, on 2-D device arrays with numpy broadcasting,
compiled per registry entry from the same scalar bodies as the CPU loops.

Same contracts as :mod:`fastbp.kernels.gates`: ``A (ra, ca)`` and
``B (rb, cb)`` broadcast to ``out (r, c)`` (each of ``ra, rb`` is 1 or
``r``, each of ``ca, cb`` is 1 or ``c``).  Each entry of
:mod:`fastbp.registry.gates` gives ``forward(a, b)`` and
``grads(a, b, dout) -> (da, db)``; ``cuda.jit(device=True)`` compiles those
very functions and the kernel templates below are specialised per entry
(:func:`kernels`).  add distributes, mul switches, max routes (ties go to
``A``, a NaN on either side sends ``dout`` to both, as on the CPU); a
broadcast operand receives the sum of ``dO`` over its broadcast axes; a
gradient of size 0 is not computed; ``acc_a``/``acc_b`` add into the
gradient.  A kernel handed a code other than its entry's writes NaN; the
launchers raise ValueError for an unknown code.

Race-free broadcasting backward: one kernel launch per requested operand
gradient, one thread per element of that gradient, each summing its
broadcast rows/columns itself in row-major order (the order of the CPU
kernel), so no two threads ever write one element and no atomics are used.
:func:`_sum_fwd` is a single-block shared-memory tree reduction.
"""
import math

import numpy as np
from numba import cuda, float64

from ...registry import gates as R
from ..factory import PerEntry, specialise
from .launch import (REDUCE_THREADS, device, grid_ew, grid_reduce, kernel)


@device
def _block_sum(buf, tid):
    """Tree-sum ``buf[0:REDUCE_THREADS]`` into ``buf[0]`` (a fixed pairing order).

    Every thread of the block must call it after writing its ``buf[tid]``.
    """
    cuda.syncthreads()
    h = REDUCE_THREADS // 2
    while h > 0:
        if tid < h:
            buf[tid] += buf[tid + h]
        cuda.syncthreads()
        h //= 2


@kernel
def _k_sum_fwd(A, out):
    # accumulated in float64 and rounded once, as the CPU's _sum_fwd
    buf = cuda.shared.array(REDUCE_THREADS, dtype=float64)
    tid = cuda.threadIdx.x
    n = A.shape[1]
    total = A.shape[0] * n
    s = 0.0
    for idx in range(tid, total, REDUCE_THREADS):
        i = idx // n
        s += A[i, idx - i * n]
    buf[tid] = s
    _block_sum(buf, tid)
    if tid == 0:
        out[0, 0] = buf[0]


@kernel
def _k_sum_bwd(dO, dA, acc):
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    g = dO[0, 0]
    for i in range(y0, dA.shape[0], sy):
        for j in range(x0, dA.shape[1], sx):
            if acc:
                dA[i, j] += g
            else:
                dA[i, j] = g


@kernel
def _k_scale(A, alpha, out, acc):
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    a = A.dtype.type(alpha)
    for i in range(y0, A.shape[0], sy):
        for j in range(x0, A.shape[1], sx):
            if acc:
                out[i, j] += a * A[i, j]
            else:
                out[i, j] = a * A[i, j]


# ------------------------------------------------------------------ templates
# _F (forward), _G (local gradients) and _CODE are the entry's, injected.
def _t_k_gate_fwd(gate, A, B, out):
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    bad = gate != _CODE  # noqa: F821 - another code: NaN, never another gate
    ra1 = A.shape[0] > 1
    ca1 = A.shape[1] > 1
    rb1 = B.shape[0] > 1
    cb1 = B.shape[1] > 1
    for i in range(y0, out.shape[0], sy):
        ia = i if ra1 else 0
        ib = i if rb1 else 0
        for j in range(x0, out.shape[1], sx):
            if bad:
                out[i, j] = out.dtype.type(math.nan)
            else:
                out[i, j] = _F(A[ia, j if ca1 else 0], B[ib, j if cb1 else 0])  # noqa: F821


def _t_k_gate_bwd_operand(gate, wrt_a, A, B, dO, dX, acc):
    """``dX (+)= sum over broadcast axes of d(gate)/d(operand) * dO``; ``dX`` is A's or B's shape."""
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    bad = gate != _CODE  # noqa: F821
    r = dO.shape[0]
    c = dO.shape[1]
    rx = dX.shape[0]
    cx = dX.shape[1]
    ra1 = A.shape[0] > 1
    ca1 = A.shape[1] > 1
    rb1 = B.shape[0] > 1
    cb1 = B.shape[1] > 1
    zero = dX.dtype.type(0.0)
    for ii in range(y0, rx, sy):
        i_lo = 0 if rx == 1 else ii
        i_hi = r if rx == 1 else ii + 1
        for jj in range(x0, cx, sx):
            j_lo = 0 if cx == 1 else jj
            j_hi = c if cx == 1 else jj + 1
            s = dX[ii, jj] if acc else zero
            for i in range(i_lo, i_hi):
                ia = i if ra1 else 0
                ib = i if rb1 else 0
                for j in range(j_lo, j_hi):
                    ga, gb = _G(A[ia, j if ca1 else 0], B[ib, j if cb1 else 0], dO[i, j])  # noqa: F821
                    s += ga if wrt_a else gb
            dX[ii, jj] = dX.dtype.type(math.nan) if bad else s


class EntryKernels:
    """The CUDA kernels of one gate entry: ``fwd`` and ``bwd_operand``
    (``@cuda.jit`` dispatchers) and the scalar device functions ``f``, ``g``."""

    def __init__(self, entry):
        self.entry = entry
        sfx = entry.suffix
        self.f = device(entry.forward)
        self.g = device(entry.grads)
        self.fwd = kernel(specialise(_t_k_gate_fwd, sfx, _F=self.f, _CODE=entry.code))
        self.bwd_operand = kernel(specialise(_t_k_gate_bwd_operand, sfx, _G=self.g, _CODE=entry.code))

    def all(self):
        """``{role: kernel}`` (for the PTX compile tests)."""
        return {"fwd": self.fwd, "bwd_operand": self.bwd_operand}


_KERNELS = PerEntry(R.by_code, EntryKernels)


def kernels(code):
    """The :class:`EntryKernels` of gate ``code`` (made on first use); an
    :class:`EntryKernels` itself is returned as it is (a compiled step's).

    Raises
    ------
    ValueError
        No entry has that code.
    """
    return code if isinstance(code, EntryKernels) else _KERNELS(code)


def registry_kernels(dtype):
    """Every gate kernel of every registry entry with example host arguments of
    ``dtype``: ``{name: (kernel, args)}`` (for compiling each to PTX)."""
    M = np.zeros((3, 3), dtype)
    out = {}
    for e in R.entries():
        ks = kernels(e.code)
        out[f"gate.{e.name}.fwd"] = (ks.fwd, (e.code, M, M, M))
        out[f"gate.{e.name}.bwd_operand"] = (ks.bwd_operand, (e.code, True, M, M, M, M, True))
    return out


def _gate_fwd(gate, A, B, out, stream=0):
    """``out = A (gate) B`` with broadcasting, on the GPU.

    Parameters
    ----------
    gate : int or EntryKernels
        A gate code of :mod:`fastbp.registry.gates` (ValueError if unknown), or its
        kernels (:func:`kernels`).
    A : device array, (ra, ca), float32 or float64
    B : device array, (rb, cb), same dtype
    out : device array, (r, c), same dtype
        Output (caller-allocated); ``ra, rb`` in ``{1, r}``, ``ca, cb`` in ``{1, c}``.
    stream : numba CUDA stream or 0
    """
    ks = kernels(gate)
    r, c = out.shape
    if r == 0 or c == 0:
        return
    grid, block = grid_ew(r, c)
    ks.fwd[grid, block, stream](int(ks.entry.code), A, B, out)


def _gate_bwd(gate, A, B, dO, dA, dB, acc_a, acc_b, stream=0):
    """Gradients of a gate w.r.t. both inputs, on the GPU.

    Parameters
    ----------
    gate : int
        A gate code (ValueError if unknown).
    A, B : device arrays, shapes as in :func:`_gate_fwd`, float32 or float64
    dO : device array, (r, c), same dtype
        Upstream gradient.
    dA, dB : device arrays of the shapes of ``A`` / ``B``, or of size 0
        Outputs; size 0 means "not needed".
    acc_a, acc_b : bool
        Add into ``dA`` / ``dB`` instead of overwriting.
    stream : numba CUDA stream or 0
    """
    ks = kernels(gate)
    for wrt_a, dX, acc in ((True, dA, acc_a), (False, dB, acc_b)):
        if dX.size == 0:
            continue
        grid, block = grid_ew(dX.shape[0], dX.shape[1])
        ks.bwd_operand[grid, block, stream](int(ks.entry.code), wrt_a, A, B, dO, dX, bool(acc))


def _sum_fwd(A, out, stream=0):
    """``out[0, 0] = sum(A)`` on the GPU (single-block tree reduction, deterministic).

    Parameters
    ----------
    A : device array, (m, n), float32 or float64
    out : device array, (1, 1), same dtype
    stream : numba CUDA stream or 0
    """
    grid, block = grid_reduce()
    _k_sum_fwd[grid, block, stream](A, out)


def _sum_bwd(dO, dA, acc, stream=0):
    """``dA (+)= dO[0, 0]`` everywhere, on the GPU.

    Parameters
    ----------
    dO : device array, (1, 1), float32 or float64
    dA : device array, (m, n), same dtype
    acc : bool
        Add into ``dA`` instead of overwriting it.
    stream : numba CUDA stream or 0
    """
    m, n = dA.shape
    if m == 0 or n == 0:
        return
    grid, block = grid_ew(m, n)
    _k_sum_bwd[grid, block, stream](dO, dA, bool(acc))


def _scale(A, alpha, out, acc, stream=0):
    """``out (+)= alpha * A`` on the GPU (``alpha`` is cast to the array dtype).

    Parameters
    ----------
    A : device array, (m, n), float32 or float64
    alpha : float
    out : device array, (m, n), same dtype
    acc : bool
        Add into ``out`` instead of overwriting it.
    stream : numba CUDA stream or 0
    """
    m, n = A.shape
    if m == 0 or n == 0:
        return
    grid, block = grid_ew(m, n)
    _k_scale[grid, block, stream](A, float(alpha), out, bool(acc))
