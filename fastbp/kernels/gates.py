"""The gates of the notes on 2-D arrays with numpy broadcasting, compiled per
registry entry from its scalar bodies.

``A (ra, ca)`` and ``B (rb, cb)`` broadcast to ``out (r, c)`` where each of
``ra, rb`` is 1 or ``r`` and each of ``ca, cb`` is 1 or ``c``.

For every entry of :mod:`fastbp.registry.gates` (``forward(a, b)`` and
``grads(a, b, dout) -> (da, db)``) the two templates below are specialised
(:func:`fastbp.kernels.factory.specialise`) into loops that call that
entry's functions; numba inlines the scalar bodies (the add and mul forwards
vectorise).  Backward patterns (``dO`` is the upstream gradient):

* add: distributor  ``dA = dO``, ``dB = dO``
* mul: switcher     ``dA = dO * B``, ``dB = dO * A``
* max: router       ``dA = dO * 1[not A < B]``, ``dB = dO * 1[not A >= B]``
  (ties go to ``A``; a NaN on either side: both get ``dO``, as ``torch.maximum``)

A broadcast operand receives the sum of ``dO`` over its broadcast axes, in float64,
rounded once (a float32 running sum over 1e6 rows drifted by 1e-4 relative).  A
gradient array of size 0 means "not needed"; ``acc_a``/``acc_b`` add into
the gradient instead of overwriting it (a value used twice sums its
gradients).  Each kernel takes the gate code first and checks it against its
entry's: another code writes NaN, never another gate.

``_gate_fwd(gate, A, B, out)`` and ``_gate_bwd(gate, A, B, dO, dA, dB, acc_a,
acc_b)`` dispatch to the kernels of the entry with code ``gate`` (``serial``,
``parallel``, ``pick(work)`` as a :class:`fastbp._jit.Kernel`); an unknown
code is a ValueError.
"""
import math

import numpy as np
from numba import prange

from .._jit import TILE, ChosenKernel, Kernel, jit, kernel, stack_tile
from ..registry import gates as R
from .factory import PerEntry, specialise

#: kernel roles (fastbp.kernels.table: K_GATE + N_ROLES * code + role)
ROLE_FWD, ROLE_BWD = range(2)
N_ROLES = 2


# ------------------------------------------------------------------ templates
# _F (forward), _G (local gradients), _ROW (the backward of a row), _BCAST (the backward with a
# gradient broadcast over the rows) and _CODE are the entry's, injected.
def _t_gate_fwd(gate, A, B, out):
    """``out = f(A, B)`` with broadcasting (``f``: the entry's forward)."""
    r, c = out.shape
    if gate != _CODE:  # noqa: F821 - a kernel handed another code: NaN, never another gate
        out[:, :] = out.dtype.type(math.nan)
        return
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
        # the column cases hoisted out of the inner loop: each inner loop vectorises
        if ca1 and cb1:
            for j in range(c):
                out[i, j] = _F(A[ia, j], B[ib, j])  # noqa: F821
        elif ca1:
            b = B[ib, 0]
            for j in range(c):
                out[i, j] = _F(A[ia, j], b)  # noqa: F821
        elif cb1:
            a = A[ia, 0]
            for j in range(c):
                out[i, j] = _F(a, B[ib, j])  # noqa: F821
        else:
            v = _F(A[ia, 0], B[ib, 0])  # noqa: F821
            for j in range(c):
                out[i, j] = v


def _t_bwd_row(A, B, dO, dA, dB, i):
    """Row ``i`` of the backward where no gradient is broadcast over the rows: ``dA``/``dB``
    ``+=`` the local gradients ``_G(a, b, dO)``; an operand broadcast over the columns gets
    the row's sum, in float64 in column order, rounded once."""
    c = dO.shape[1]
    need_a = dA.size > 0
    need_b = dB.size > 0
    ia = i if A.shape[0] > 1 else 0
    ib = i if B.shape[0] > 1 else 0
    ca1 = A.shape[1] > 1
    cb1 = B.shape[1] > 1
    sa = 0.0
    sb = 0.0
    for j in range(c):
        ga, gb = _G(A[ia, j if ca1 else 0], B[ib, j if cb1 else 0], dO[i, j])  # noqa: F821
        if need_a:
            if ca1:
                dA[ia, j] += ga
            else:
                sa += ga
        if need_b:
            if cb1:
                dB[ib, j] += gb
            else:
                sb += gb
    if need_a and not ca1:
        dA[ia, 0] += sa
    if need_b and not cb1:
        dB[ib, 0] += sb


@jit(inline=True)
def _take(g, rows1, cols1, need, D, t, i, j, j0, s):
    """The local gradient ``g`` of element (i, j) for one operand of :func:`_t_bwd_bcast`:
    into its column's float64 tile ``t`` (an operand broadcast over the rows), its own
    element of ``D``, or the row's float64 sum ``s`` (broadcast over the columns only);
    returns ``s``."""
    if not rows1:
        t[j - j0] += g
    elif cols1:
        if need:
            D[i, j] += g
    else:
        s += g
    return s


@jit(inline=True)
def _give(need, rows1, cols1, D, t, j0, j1, total):
    """A block's float64 tile ``t`` of one operand of :func:`_t_bwd_bcast` into its gradient
    ``D``, where that operand is broadcast over the rows: each column's sum into its row of
    one (rounded once), or, for a (1, 1) operand, added to the float64 ``total`` (returned)."""
    if need and not rows1:
        for j in range(j0, j1):
            if cols1:
                D[0, j] += t[j - j0]
            else:
                total += t[j - j0]
    return total


def _t_bwd_bcast(A, B, dO, dA, dB):
    """The backward where a gradient is broadcast over the rows (serial): that operand's
    gradient summed over the rows in row order (and over its columns too, for a (1, 1) one),
    in float64 tiles of TILE columns, rounded once per element; an operand broadcast over
    the columns only gets each row's sum over a block of TILE columns in float64."""
    r, c = dO.shape
    need_a = dA.size > 0
    need_b = dB.size > 0
    ra1 = A.shape[0] > 1
    rb1 = B.shape[0] > 1
    ca1 = A.shape[1] > 1
    cb1 = B.shape[1] > 1
    ta = stack_tile(np.float64)
    tb = stack_tile(np.float64)
    all_a = 0.0
    all_b = 0.0
    for j0 in range(0, c, TILE):
        j1 = min(j0 + TILE, c)
        for q in range(TILE):
            ta[q] = 0.0
            tb[q] = 0.0
        for i in range(r):
            ia = i if ra1 else 0
            ib = i if rb1 else 0
            sa = 0.0
            sb = 0.0
            for j in range(j0, j1):
                ga, gb = _G(A[ia, j if ca1 else 0], B[ib, j if cb1 else 0], dO[i, j])  # noqa: F821
                sa = _take(ga, ra1, ca1, need_a, dA, ta, i, j, j0, sa)
                sb = _take(gb, rb1, cb1, need_b, dB, tb, i, j, j0, sb)
            if need_a and ra1 and not ca1:
                dA[i, 0] += sa
            if need_b and rb1 and not cb1:
                dB[i, 0] += sb
        all_a = _give(need_a, ra1, ca1, dA, ta, j0, j1, all_a)
        all_b = _give(need_b, rb1, cb1, dB, tb, j0, j1, all_b)
    if need_a and not ra1 and not ca1:
        dA[0, 0] += all_a
    if need_b and not rb1 and not cb1:
        dB[0, 0] += all_b


def _t_gate_bwd(gate, A, B, dO, dA, dB, acc_a, acc_b):
    """Gradients of the gate w.r.t. both inputs (see the module docstring)."""
    r = dO.shape[0]
    if gate != _CODE:  # noqa: F821 - another code: NaN gradients, never another gate
        nan = dO.dtype.type(math.nan)
        if dA.size > 0:
            dA[:, :] = nan
        if dB.size > 0:
            dB[:, :] = nan
        return
    if dA.size > 0 and not acc_a:
        dA[:, :] = 0
    if dB.size > 0 and not acc_b:
        dB[:, :] = 0
    rows_a = dA.size == 0 or dA.shape[0] == r
    rows_b = dB.size == 0 or dB.shape[0] == r
    if rows_a and rows_b:
        # every row of dO updates only its own rows of dA and dB
        for i in prange(r):
            _ROW(A, B, dO, dA, dB, np.intp(i))  # noqa: F821
    else:
        _BCAST(A, B, dO, dA, dB)  # noqa: F821


class EntryKernels:
    """The kernels of one gate entry: ``fwd``, ``bwd`` (:class:`fastbp._jit.Kernel`)."""

    def __init__(self, entry):
        self.entry = entry
        sfx = entry.suffix
        f = jit(inline=True)(entry.forward)
        g = jit(inline=True)(entry.grads)
        self.fwd = Kernel(specialise(_t_gate_fwd, sfx, _F=f, _CODE=entry.code))
        # the row's backward without fast-math: a broadcast operand's gradient is a sum along the
        # row, which reassociation let the serial and the parallel compilations vectorise in
        # different orders (AVX-512: float64 (1961, 1) + (1961, 67) differed in the last bit)
        row = jit(specialise(_t_bwd_row, sfx, _G=g), fastmath=False)
        bcast = jit(specialise(_t_bwd_bcast, sfx, _G=g), fastmath=False)
        self.bwd = Kernel(specialise(_t_gate_bwd, sfx, _ROW=row, _BCAST=bcast, _CODE=entry.code))

    def roles(self):
        """The executor's kernels, by role: ``(fwd, bwd)``."""
        return (self.fwd, self.bwd)


_KERNELS = PerEntry(R.by_code, EntryKernels)


def kernels(code):
    """The :class:`EntryKernels` of gate ``code`` (made on first use).

    Raises
    ------
    ValueError
        No entry has that code.
    """
    return _KERNELS(code)


# ------------------------------------------------------- dispatch by code
class _ByCode(ChosenKernel):
    """A role of the per-entry gate kernels, the entry chosen by the first
    argument (the gate code), with the interface of a :class:`fastbp._jit.Kernel`."""

    def __init__(self, name, role, doc):
        super().__init__(name, doc)
        self.role = role

    def choose(self, args):
        return getattr(kernels(args[0]), self.role), args


_gate_fwd = _ByCode("_gate_fwd", "fwd", """``out = A (gate) B`` with broadcasting.

Parameters
----------
gate : int
    A gate code of :mod:`fastbp.registry.gates` (ValueError if unknown).
A : ndarray, (ra, ca), float32 or float64
B : ndarray, (rb, cb), same dtype
out : ndarray, (r, c), same dtype
    Output (caller-allocated); ``ra, rb`` in ``{1, r}``, ``ca, cb`` in ``{1, c}``.
""")
_gate_bwd = _ByCode("_gate_bwd", "bwd", """Gradients of a gate w.r.t. both inputs.

Parameters
----------
gate : int
    A gate code (ValueError if unknown).
A, B : ndarrays, shapes as in ``_gate_fwd``, float32 or float64
dO : ndarray, (r, c), same dtype
    Upstream gradient.
dA, dB : ndarrays of the shapes of ``A`` / ``B``, or of size 0 (not needed)
    Outputs: ``dA (+)= sum over broadcast axes of da``, likewise ``dB``.
acc_a, acc_b : bool
    Add into ``dA`` / ``dB`` instead of overwriting.
""")


@kernel
def _sum_fwd(A, out):
    """``out[0, 0] = sum(A)``, accumulated in float64 and rounded once (float32: a
    float32 running sum of 10^6 elements was 4e-3 off; numpy and PyTorch sum pairwise)."""
    s = 0.0
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
