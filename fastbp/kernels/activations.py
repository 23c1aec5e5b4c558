"""Activation kernels, compiled per registry entry from its scalar bodies.

For every entry of :mod:`fastbp.registry.activations` (forward ``f`` and
derivative ``f'``, each of one scalar and the entry's parameters), the
templates below are specialised (:func:`fastbp.kernels.factory.specialise`)
into loops that call that entry's ``f``/``f'``; numba inlines the scalar
bodies, so each loop is branch-free in the code and vectorises where ``f``
allows (ReLU: one pass of vector max over bias-added rows).  One set per
entry, compiled on first use (:func:`kernels`), each a serial/parallel
:class:`fastbp._jit.Kernel`:

* ``fwd(X, Y, P)``:             ``Y = f(X)`` (``Y`` may be ``X``);
* ``bwd(T, dY, dX, acc, P)``:   ``dX (+)= dY * f'(T)``, ``T`` the forward output
  (``uses="output"``) or input (``uses="input"``); ``dX`` may be ``dY``;
* ``bias_act(Z, b, Y, P)``:     epilogue of a product: ``Z += b; Y = f(Z)``; with
  ``Z`` and ``Y`` the same array (entries that use the output), in place;
* ``bias_act_d(Z, b, Y, P)``:   the training epilogue of a product followed by such an
  entry: ``z = Z + b; Y = f(z); Z = f'(z)`` (``Z`` keeps the derivative);
* ``fwd_d(X, Y, D, P)``:        ``Y = f(X)`` and ``D = f'(X)`` in one pass, for an
  entry whose derivative reads its input: the training forward keeps ``D`` and
  the backward is then a product (:data:`_mul_d`), one pass of ``f`` and ``f'``
  together instead of ``f`` forward and ``f'`` backward (they share their
  expensive part: GELU's ``erf``, SiLU's and ELU's ``exp``; 245 + 396 us ->
  406 + 35 us for float32 GELU on 256 x 512);
* ``linear_fwd(X, W, b, Y, P)`` and ``linear_fwd_t(X, Wt, b, Y, P)``: the fused
  ``Y = f(X W + b)`` (register-tiled, activation applied per block of rows
  while in cache) and its variant for a weight stored ``(out, in)``.

``P`` holds the entry's parameters (e.g. LeakyReLU's slope) in the arrays'
dtype, in registry order; an entry without parameters gets an empty ``P``.

The names ``_act_fwd(X, act, Y)``, ``_act_bwd(T, dY, act, dX, acc)``,
``_relu_fwd`` ... are dispatchers over these per-entry kernels (a code or a
fixed entry, default parameters), for the ``fastbp.ops`` wrappers and tests.
"""
import math

import numpy as np
from numba import prange

from .._jit import ChosenKernel, Kernel, jit
from ..registry import activations as R
from .factory import ADAPTERS, entry_suffix, specialise
from .gemm import _gemm_rows

#: kernel roles in the executor's table (fastbp.kernels.table): K = base + N_ROLES * code + role
ROLE_BIAS_ACT, ROLE_FWD, ROLE_BWD, ROLE_FWD_D, ROLE_BIAS_ACT_D = range(5)
N_ROLES = 5


@jit(inline=True)
def _param(P, k):
    """``P[k]``; NaN if ``P`` has no element ``k`` (a missing parameter shows, never defaults)."""
    return P[k] if k < P.shape[0] else P.dtype.type(math.nan)


# ------------------------------------------------------------------ templates
# _F (forward) and _D (derivative) are the entry's scalar functions, injected.
def _t_fwd(X, Y, P):
    """``Y = f(X)`` elementwise (``Y`` may be ``X``)."""
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    for i in prange(X.shape[0]):
        for j in range(X.shape[1]):
            Y[i, j] = _F(X[i, j], p0, p1)  # noqa: F821


def _t_bwd(T, dY, dX, acc, P):
    """``dX (+)= dY * f'(T)`` elementwise (``dX`` may be ``dY``); for a gate entry
    (ReLU) the select ``dY if f'(T) else 0`` (``_G``: the entry's ``combine``).

    In place (``dX`` is ``dY``, no accumulation): loops that read and write
    only ``dX``; the general loops would see ``dX`` and ``dY`` overlap at run
    time and fall back to scalar code (measured before: 3-4x slower for
    ReLU, 15x for sigmoid).  2-D indexing, not row views: a view of a
    reference-counted array costs two atomic operations.
    """
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    inplace = dX.ctypes.data == dY.ctypes.data and not acc
    n = T.shape[1]
    for i in prange(T.shape[0]):
        if inplace:
            for j in range(n):
                dX[i, j] = _G(dX[i, j], _D(T[i, j], p0, p1))  # noqa: F821
        elif acc:
            for j in range(n):
                dX[i, j] += _G(dY[i, j], _D(T[i, j], p0, p1))  # noqa: F821
        else:
            for j in range(n):
                dX[i, j] = _G(dY[i, j], _D(T[i, j], p0, p1))  # noqa: F821


def _t_fwd_d(X, Y, D, P):
    """``Y = f(X)`` and ``D = f'(X)`` elementwise (``f'`` of the input: entries with
    ``uses="input"``); three distinct arrays.  numba inlines both scalar bodies into
    one loop, where LLVM computes their common part once."""
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    for i in prange(X.shape[0]):
        for j in range(X.shape[1]):
            v = X[i, j]
            Y[i, j] = _F(v, p0, p1)  # noqa: F821
            D[i, j] = _D(v, p0, p1)  # noqa: F821


def _t_bias_act_d(Z, b, Y, P):
    """Training epilogue after a product, for an entry whose derivative reads its input:
    ``z = Z + b`` (``b`` of length 0: no bias), ``Y = f(z)``, ``Z = f'(z)`` (``Z`` and ``Y``
    distinct): the derivative the backward multiplies by (:func:`_t_mul_d`)."""
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    m, n = Z.shape
    has_bias = b.shape[0] > 0
    for i in prange(m):
        if has_bias:
            for j in range(n):
                v = Z[i, j] + b[j]
                Y[i, j] = _F(v, p0, p1)  # noqa: F821
                Z[i, j] = _D(v, p0, p1)  # noqa: F821
        else:
            for j in range(n):
                v = Z[i, j]
                Y[i, j] = _F(v, p0, p1)  # noqa: F821
                Z[i, j] = _D(v, p0, p1)  # noqa: F821


def _t_mul_d(D, dY, dX, acc):
    """``dX (+)= dY * D`` elementwise: the backward of an activation whose derivative
    ``D`` the forward kept (:func:`_t_fwd_d`); ``dX`` may be ``dY`` (in place, as
    :func:`_t_bwd`: loops that read and write ``dX`` only, so that they vectorise)."""
    inplace = dX.ctypes.data == dY.ctypes.data and not acc
    n = D.shape[1]
    for i in prange(D.shape[0]):
        if inplace:
            for j in range(n):
                dX[i, j] *= D[i, j]
        elif acc:
            for j in range(n):
                dX[i, j] += dY[i, j] * D[i, j]
        else:
            for j in range(n):
                dX[i, j] = dY[i, j] * D[i, j]


#: the backward of every entry whose forward kept its derivative (one kernel for all)
_mul_d = Kernel(_t_mul_d)


def _t_bias_act(Z, b, Y, P):
    """Epilogue after a product: ``Z += b`` (``b`` of length 0: no bias), ``Y = f(Z)``.

    ``Z`` and ``Y`` the same array: in place (one fused pass; measured before:
    7x faster on 32 x 32 and 2x on 256 x 512 than a bias pass and an
    activation pass).  Otherwise ``Z`` keeps the pre-activation.
    """
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    m, n = Z.shape
    has_bias = b.shape[0] > 0
    same = Z.ctypes.data == Y.ctypes.data
    for i in prange(m):
        if same:
            if has_bias:
                for j in range(n):
                    Y[i, j] = _F(Y[i, j] + b[j], p0, p1)  # noqa: F821
            else:
                for j in range(n):
                    Y[i, j] = _F(Y[i, j], p0, p1)  # noqa: F821
        elif has_bias:
            for j in range(n):
                v = Z[i, j] + b[j]
                Z[i, j] = v
                Y[i, j] = _F(v, p0, p1)  # noqa: F821
        else:
            for j in range(n):
                Y[i, j] = _F(Z[i, j], p0, p1)  # noqa: F821


def _t_linear_fwd(X, W, b, Y, P):
    """``Y = f(X @ W + b)``; ``b`` of length 0 means no bias.

    Register-tiled (:func:`fastbp.kernels.gemm._gemm_rows`, which adds the
    bias to each 4 x 16 block); each block of four rows gets its activation
    right after, while in L1.  Derivative: ``dY/dX = W^T f'``,
    ``dY/dW = X^T f'``, ``dY/db = f'``.
    """
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    m = Y.shape[0]
    n = Y.shape[1]
    for blk in prange((m + 3) // 4):
        i0 = blk * 4
        nr = min(4, m - i0)
        _gemm_rows(X, W, Y, i0, nr, False, b, False, False)
        if _ACTIVE:  # noqa: F821 - a constant per entry: False for the identity
            for i in range(i0, i0 + nr):
                for j in range(n):
                    Y[i, j] = _F(Y[i, j], p0, p1)  # noqa: F821


def _t_linear_fwd_t(X, Wt, b, Y, P):
    """``Y = f(X @ Wt.T + b)`` for a weight stored as ``Wt (out, in)``."""
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    m, K = X.shape
    N = Wt.shape[0]
    has_bias = b.shape[0] > 0
    for i in prange(m):
        for j in range(N):
            s = Y.dtype.type(0.0)
            for k in range(K):
                s += X[i, k] * Wt[j, k]
            if has_bias:
                s += b[j]
            Y[i, j] = _F(s, p0, p1)  # noqa: F821


class EntryKernels:
    """The kernels of one registry entry (attributes ``fwd``, ``bwd``,
    ``bias_act``, ``fwd_d``, ``bias_act_d``, ``linear_fwd``, ``linear_fwd_t``: :class:`fastbp._jit.Kernel`)."""

    def __init__(self, entry):
        self.entry = entry
        sfx = entry_suffix(entry)
        n = len(entry.params)
        f = jit(inline=True)(specialise(ADAPTERS[n], "_f" + sfx, _S=jit(inline=True)(entry.forward)))
        d = jit(inline=True)(specialise(ADAPTERS[n], "_d" + sfx, _S=jit(inline=True)(entry.derivative)))
        self.fwd = Kernel(specialise(_t_fwd, sfx, _F=f))
        self.bwd = Kernel(specialise(_t_bwd, sfx, _D=d, _G=jit(inline=True)(entry.combine)))
        self.bias_act = Kernel(specialise(_t_bias_act, sfx, _F=f))
        self.fwd_d = Kernel(specialise(_t_fwd_d, sfx, _F=f, _D=d))
        self.bias_act_d = Kernel(specialise(_t_bias_act_d, sfx, _F=f, _D=d))
        self.linear_fwd = Kernel(specialise(_t_linear_fwd, sfx, _F=f, _ACTIVE=entry.code != R.IDENTITY))
        self.linear_fwd_t = Kernel(specialise(_t_linear_fwd_t, sfx, _F=f))

    def roles(self):
        """The executor's kernels, by role: ``(bias_act, fwd, bwd, fwd_d, bias_act_d)``."""
        return (self.bias_act, self.fwd, self.bwd, self.fwd_d, self.bias_act_d)

    def all(self):
        """Every kernel of the entry (for compile/threading checks)."""
        return {"fwd": self.fwd, "bwd": self.bwd, "bias_act": self.bias_act, "fwd_d": self.fwd_d,
                "bias_act_d": self.bias_act_d, "linear_fwd": self.linear_fwd, "linear_fwd_t": self.linear_fwd_t}


_KERNELS = {}


def kernels(code):
    """The :class:`EntryKernels` of activation ``code`` (made on first use).

    Raises
    ------
    ValueError
        No entry has that code.
    """
    entry = R.by_code(code)
    k = _KERNELS.get(entry.code)
    if k is None or k.entry is not entry:
        k = _KERNELS[entry.code] = EntryKernels(entry)
    return k


def params_array(code, dtype, values=None):
    """The ``P`` argument of activation ``code``: ``values`` (default: the
    entry's defaults) as a 1-D array of ``dtype``."""
    entry = R.by_code(code)
    vals = entry.defaults if values is None else tuple(values)
    if len(vals) != len(entry.params):
        raise ValueError(f"activation {entry.name!r} takes {len(entry.params)} parameter(s), got {len(vals)}")
    return np.array(vals, dtype=dtype)


# ------------------------------------------------------- dispatch by code
class _ByCode(ChosenKernel):
    """A role of the per-entry kernels, the entry chosen by a code argument
    (the older kernel signatures with ``act``), with default parameters."""

    def __init__(self, name, role, pos, adapt):
        super().__init__(name)
        self.role, self.pos, self.adapt = role, pos, adapt

    def choose(self, args):
        code = args[self.pos]
        rest = args[:self.pos] + args[self.pos + 1:]
        return getattr(kernels(code), self.role), (*self.adapt(rest), params_array(code, rest[0].dtype))


class _Fixed(ChosenKernel):
    """A role of one entry's kernels, default parameters (``_relu_fwd(X, Y)``)."""

    def __init__(self, name, role, code, adapt):
        super().__init__(name)
        self.role, self.code, self.adapt = role, code, adapt

    def choose(self, args):
        return getattr(kernels(self.code), self.role), (*self.adapt(args), params_array(self.code, args[0].dtype))


_act_fwd = _ByCode("_act_fwd", "fwd", 1, lambda a: a)
_act_bwd = _ByCode("_act_bwd", "bwd", 2, lambda a: a)
_act_fwd_d = _ByCode("_act_fwd_d", "fwd_d", 1, lambda a: a)
_bias_act_d = _ByCode("_bias_act_d", "bias_act_d", 2, lambda a: a)
_bias_act = _ByCode("_bias_act", "bias_act", 2, lambda a: (a[0], a[1], a[0]))
_linear_fwd = _ByCode("_linear_fwd", "linear_fwd", 3, lambda a: a)
_linear_fwd_t = _ByCode("_linear_fwd_t", "linear_fwd_t", 3, lambda a: a)

for _e in R.entries(public=True):
    globals()[f"_{_e.name}_fwd"] = _Fixed(f"_{_e.name}_fwd", "fwd", _e.code, lambda a: a)
    # (T, dY, dX): no accumulation
    globals()[f"_{_e.name}_bwd"] = _Fixed(f"_{_e.name}_bwd", "bwd", _e.code, lambda a: (*a, False))
del _e
