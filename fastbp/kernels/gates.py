"""The gates of the notes on 2-D arrays with numpy broadcasting.

``A (ra, ca)`` and ``B (rb, cb)`` broadcast to ``out (r, c)`` where each of
``ra, rb`` is 1 or ``r`` and each of ``ca, cb`` is 1 or ``c``.

Backward patterns (``dO`` is the upstream gradient):

* add: distributor  ``dA = dO``, ``dB = dO``
* mul: switcher     ``dA = dO * B``, ``dB = dO * A``
* max: router       ``dA = dO * 1[A >= B]``, ``dB = dO * 1[A < B]`` (ties go to ``A``)

A broadcast operand receives the sum of ``dO`` over its broadcast axes.  A
gradient array of size 0 means "not needed"; ``acc_a``/``acc_b`` add into
the gradient instead of overwriting it (a value used twice sums its
gradients).
"""
import math

import numpy as np
from numba import prange

from .._jit import jit, kernel
from .codes import GATE_ADD, GATE_MAX, GATE_MUL


@jit
def _gate1(gate, a, b):
    if gate == GATE_ADD:
        return a + b
    if gate == GATE_MUL:
        return a * b
    if gate == GATE_MAX:
        return a if a >= b or a != a else b
    return a * type(a)(math.nan)    # an unknown code (a corrupt tape): NaN, never another gate


@kernel
def _gate_fwd(gate, A, B, out):
    """``out = A (+ | * | max) B`` with broadcasting."""
    r, c = out.shape
    ra1 = A.shape[0] > 1
    ca1 = A.shape[1] > 1
    rb1 = B.shape[0] > 1
    cb1 = B.shape[1] > 1
    for ii in prange(r):
        # the prange index is unsigned in the parallel variant; mixing it with
        # the signed 0 below would make numba type the row index as float64
        i = np.intp(ii)
        ia = i if ra1 else 0
        ib = i if rb1 else 0
        for j in range(c):
            out[i, j] = _gate1(gate, A[ia, j if ca1 else 0], B[ib, j if cb1 else 0])


@jit
def _gate_bwd_row(gate, A, B, dO, dA, dB, i):
    c = dO.shape[1]
    need_a = dA.size > 0
    need_b = dB.size > 0
    ia = i if A.shape[0] > 1 else 0
    ib = i if B.shape[0] > 1 else 0
    ca1 = A.shape[1] > 1
    cb1 = B.shape[1] > 1
    zero = dO.dtype.type(0.0)
    for j in range(c):
        g = dO[i, j]
        a = A[ia, j if ca1 else 0]
        b = B[ib, j if cb1 else 0]
        if gate == GATE_ADD:
            ga = g
            gb = g
        elif gate == GATE_MUL:
            ga = g * b
            gb = g * a
        elif gate != GATE_MAX:
            ga = g * dO.dtype.type(math.nan)    # unknown code: NaN, never another gate
            gb = ga
        else:
            # same routing as the forward's ``a if a >= b or a != a else b``
            if a >= b or a != a:
                ga = g
                gb = zero
            else:
                ga = zero
                gb = g
        if need_a:
            dA[ia, j if ca1 else 0] += ga
        if need_b:
            dB[ib, j if cb1 else 0] += gb


@kernel
def _gate_bwd(gate, A, B, dO, dA, dB, acc_a, acc_b):
    """Gradients of a gate w.r.t. both inputs (see module docstring)."""
    r = dO.shape[0]
    if dA.size > 0 and not acc_a:
        dA[:, :] = 0
    if dB.size > 0 and not acc_b:
        dB[:, :] = 0
    rows_a = dA.size == 0 or dA.shape[0] == r
    rows_b = dB.size == 0 or dB.shape[0] == r
    if rows_a and rows_b:
        # every row of dO updates only its own rows of dA and dB
        for i in prange(r):
            _gate_bwd_row(gate, A, B, dO, dA, dB, np.intp(i))
    else:
        for i in range(r):
            _gate_bwd_row(gate, A, B, dO, dA, dB, i)


@kernel
def _sum_fwd(A, out):
    """``out[0, 0] = sum(A)`` (serial, in row order)."""
    s = A.dtype.type(0.0)
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            s += A[i, j]
    out[0, 0] = s


@kernel
def _sum_bwd(dO, dA, acc):
    """``dA (+)= dO[0, 0]`` everywhere (``d sum(A) / dA = 1``)."""
    g = dO[0, 0]
    for i in prange(dA.shape[0]):
        for j in range(dA.shape[1]):
            if acc:
                dA[i, j] += g
            else:
                dA[i, j] = g


@kernel
def _scale(A, alpha, out, acc):
    """``out (+)= alpha * A`` (the gradient of multiplication by a constant)."""
    a = A.dtype.type(alpha)
    for i in prange(A.shape[0]):
        for j in range(A.shape[1]):
            if acc:
                out[i, j] += a * A[i, j]
            else:
                out[i, j] = a * A[i, j]
