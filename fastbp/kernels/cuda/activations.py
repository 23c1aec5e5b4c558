"""Elementwise activations for CUDA, compiled per registry entry from the same
scalar bodies as the CPU loops.

Each entry of :mod:`fastbp.registry.activations` gives its forward ``f`` and
derivative ``f'``; ``cuda.jit(device=True)`` compiles those very Python
functions, and the kernel templates below are specialised
(:func:`fastbp.kernels.factory.specialise`) into one set of kernels per
entry (:func:`kernels`), with the contracts of :mod:`fastbp.kernels.activations`:

* ``fwd(X, Y, P)``:            ``Y = f(X)``;
* ``bwd(T, dY, dX, acc, P)``:  ``dX (+)= dY * f'(T)``, ``T`` the forward output or input;
* ``bias_act(Z, b, Y, P)``:    ``Z += b; Y = f(Z)`` (``Z`` may be ``Y``);
* ``fwd_d(X, Y, D, P)``:       ``Y = f(X)``, ``D = f'(X)`` (the training forward of an
  entry whose derivative reads its input; the backward is then :func:`_mul_d`);
* the fused linear kernels (:mod:`.linear`).

``P``: the entry's parameters, a 1-D device array in the data's dtype.
Launch shape: 2-D grid, ``x`` along columns (coalesced), grid-stride over
rows (:func:`.launch.grid_ew`); one thread per element, in-place allowed.
All constants are taken in the array dtype, so float32 kernels do float32
arithmetic only.  The launchers keep the signatures of the code-based API
(``_act_fwd(X, act, Y, stream)``) with the parameters as an optional ``P``
(default: the entry's defaults).
"""
import numpy as np
from numba import cuda

from ...registry import activations as R
from ..factory import ADAPTERS, entry_suffix, specialise
from .fused import _param, linear_kernels
from .launch import device, grid_ew, kernel

#: the logistic function of one scalar (the registry's sigmoid; the BCE loss uses it)
_sigmoid1 = device(R.sigmoid)


def _t_k_act_fwd(X, Y, P):
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    for i in range(y0, X.shape[0], sy):
        for j in range(x0, X.shape[1], sx):
            Y[i, j] = _F(X[i, j], p0, p1)  # noqa: F821 - injected


def _t_k_act_bwd(T, dY, dX, acc, P):
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    for i in range(y0, T.shape[0], sy):
        for j in range(x0, T.shape[1], sx):
            g = _G(dY[i, j], _D(T[i, j], p0, p1))  # noqa: F821 - the entry's combine
            if acc:
                dX[i, j] += g
            else:
                dX[i, j] = g


def _t_k_act_fwd_d(X, Y, D, P):
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    for i in range(y0, X.shape[0], sy):
        for j in range(x0, X.shape[1], sx):
            v = X[i, j]
            Y[i, j] = _F(v, p0, p1)  # noqa: F821 - injected
            D[i, j] = _D(v, p0, p1)  # noqa: F821


@kernel
def _k_mul_d(D, dY, dX, acc):
    """``dX (+)= dY * D``: the backward of an activation whose derivative ``D`` the forward kept."""
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    for i in range(y0, D.shape[0], sy):
        for j in range(x0, D.shape[1], sx):
            g = dY[i, j] * D[i, j]
            if acc:
                dX[i, j] += g
            else:
                dX[i, j] = g


def _t_k_bias_act(Z, b, Y, P):
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    has_bias = b.shape[0] > 0
    for i in range(y0, Z.shape[0], sy):
        for j in range(x0, Z.shape[1], sx):
            v = Z[i, j]
            if has_bias:
                v += b[j]
            Z[i, j] = v             # (Z may be Y: the next store wins, same thread)
            Y[i, j] = _F(v, p0, p1)  # noqa: F821


class EntryKernels:
    """The CUDA kernels of one registry entry: ``fwd``, ``bwd``, ``bias_act``, ``fwd_d``,
    ``linear_fwd``, ``linear_fwd_t`` (``@cuda.jit`` dispatchers) and the
    scalar device functions ``f``, ``d``."""

    def __init__(self, entry):
        self.entry = entry
        sfx = entry_suffix(entry)
        n = len(entry.params)
        self.f = device(specialise(ADAPTERS[n], "_f" + sfx, _S=device(entry.forward)))
        self.d = device(specialise(ADAPTERS[n], "_d" + sfx, _S=device(entry.derivative)))
        self.fwd = kernel(specialise(_t_k_act_fwd, sfx, _F=self.f))
        self.bwd = kernel(specialise(_t_k_act_bwd, sfx, _D=self.d, _G=device(entry.combine)))
        self.bias_act = kernel(specialise(_t_k_bias_act, sfx, _F=self.f))
        self.fwd_d = kernel(specialise(_t_k_act_fwd_d, sfx, _F=self.f, _D=self.d))
        self.linear_fwd, self.linear_fwd_t = linear_kernels(self.f, sfx, separate=_large(entry))

    def all(self):
        """``{role: kernel}`` (for the PTX compile tests)."""
        return {"fwd": self.fwd, "bwd": self.bwd, "bias_act": self.bias_act, "fwd_d": self.fwd_d,
                "linear_fwd": self.linear_fwd, "linear_fwd_t": self.linear_fwd_t}


def _large(entry):
    """Whether ``entry``'s forward calls the polynomial functions of
    :mod:`fastbp.registry.fastmath` (``exp``, ``erf``, ``log1p``): a body too
    large for the fused linear kernels' unrolled epilogue, which then stores
    the pre-activations first and activates in a second loop (PTX without
    ``.local``: tests/test_cuda_kernels.py)."""
    from ...registry import fastmath
    fm = {id(getattr(fastmath, n)) for n in fastmath.__all__} | {id(fastmath)}
    g = entry.forward.__globals__
    return any(id(g.get(n)) in fm for n in entry.forward.__code__.co_names)


_KERNELS = {}
_DEFAULTS = {}


def kernels(code):
    """The :class:`EntryKernels` of activation ``code`` (made on first use); an
    :class:`EntryKernels` itself is returned as it is (a compiled step's: the
    kernels of the entry it was built with, whatever the registry holds now).

    Raises
    ------
    ValueError
        No entry has that code.
    """
    if isinstance(code, EntryKernels):
        return code
    entry = R.by_code(code)
    k = _KERNELS.get(entry.code)
    if k is None or k.entry is not entry:
        k = _KERNELS[entry.code] = EntryKernels(entry)
    return k


def params_or_defaults(code, dtype, P):
    """``P``, or the entry's default parameters as a device array of ``dtype``."""
    if P is not None:
        return P
    entry = code.entry if isinstance(code, EntryKernels) else R.by_code(code)
    key = (entry.code, np.dtype(dtype), entry)
    d = _DEFAULTS.get(key)
    if d is None:
        d = _DEFAULTS[key] = cuda.to_device(np.array(entry.defaults, dtype=dtype))
    return d


def registry_kernels(dtype):
    """Every activation kernel of every registry entry with example host
    arguments of ``dtype``: ``{name: (kernel, args)}`` (for compiling each to PTX)."""
    M = np.zeros((3, 3), dtype)
    v = np.zeros(3, dtype)
    out = {}
    for e in R.entries():
        P = np.array(e.defaults, dtype)
        ks = kernels(e.code)
        out.update({
            f"{e.name}.fwd": (ks.fwd, (M, M, P)),
            f"{e.name}.bwd": (ks.bwd, (M, M, M, True, P)),
            f"{e.name}.bias_act": (ks.bias_act, (M, v, M, P)),
            f"{e.name}.fwd_d": (ks.fwd_d, (M, M, M, P)),
            f"{e.name}.linear_fwd": (ks.linear_fwd, (M, M, v, M, P)),
            f"{e.name}.linear_fwd_t": (ks.linear_fwd_t, (M, M, v, M, P)),
        })
    out["mul_d"] = (_k_mul_d, (M, M, M, True))
    return out


def _launch_ew(k, shape, args, stream):
    m, n = shape
    if m == 0 or n == 0:
        return
    grid, block = grid_ew(m, n)
    k[grid, block, stream](*args)


def _act_fwd(X, act, Y, stream=0, P=None):
    """``Y = act(X)`` elementwise on the GPU (``Y`` may be ``X``).

    Parameters
    ----------
    X : device array, (m, n), float32 or float64
    act : int or EntryKernels
        Activation code (a registry entry's ``code``; ValueError if unknown), or
        its kernels (:func:`kernels`).
    Y : device array, (m, n), same dtype
        Output (caller-allocated).
    stream : numba CUDA stream or 0
    P : device array, (n_params,), same dtype, optional
        The entry's parameters (default: its defaults).
    """
    k = kernels(act)
    _launch_ew(k.fwd, X.shape, (X, Y, params_or_defaults(act, X.dtype, P)), stream)


def _act_bwd(Y, dY, act, dX, acc, stream=0, P=None):
    """``dX (+)= dY * act'(.)`` on the GPU, from what the entry's derivative
    reads: the cached output ``Y`` or, for ``uses="input"`` entries, the input.

    Parameters
    ----------
    Y : device array, (m, n), float32 or float64
        The forward output (or input, see above).
    dY : device array, (m, n), same dtype
        Upstream gradient.
    act : int
        Activation code.
    dX : device array, (m, n), same dtype
        Output (may be ``dY``).
    acc : bool
        Add into ``dX`` instead of overwriting it.
    stream : numba CUDA stream or 0
    P : device array, optional
        The entry's parameters (default: its defaults).
    """
    k = kernels(act)
    _launch_ew(k.bwd, Y.shape, (Y, dY, dX, bool(acc), params_or_defaults(act, Y.dtype, P)), stream)


def _act_fwd_d(X, act, Y, D, stream=0, P=None):
    """``Y = act(X)`` and ``D = act'(X)`` on the GPU, one pass (arrays (m, n), float32 or
    float64, distinct; ``act`` a registry code, ValueError if unknown; ``P`` as :func:`_act_fwd`)."""
    k = kernels(act)
    _launch_ew(k.fwd_d, X.shape, (X, Y, D, params_or_defaults(act, X.dtype, P)), stream)


def _mul_d(D, dY, dX, acc, stream=0):
    """``dX (+)= dY * D`` on the GPU (arrays (m, n), one float dtype; ``dX`` may be ``dY``)."""
    _launch_ew(_k_mul_d, D.shape, (D, dY, dX, bool(acc)), stream)


def _fixed(code, name):
    def fwd(X, Y, stream=0):
        _act_fwd(X, code, Y, stream)

    def bwd(Y, dY, dX, stream=0):
        _act_bwd(Y, dY, code, dX, False, stream)
    fwd.__name__, bwd.__name__ = f"_{name}_fwd", f"_{name}_bwd"
    fwd.__doc__ = f"``Y = {name}(X)`` on the GPU (default parameters).  Arrays (m, n), float32/float64."
    bwd.__doc__ = f"``dX = dY * {name}'`` on the GPU (default parameters).  Arrays (m, n), float32/float64."
    return fwd, bwd


for _e in R.entries(public=True):
    globals()[f"_{_e.name}_fwd"], globals()[f"_{_e.name}_bwd"] = _fixed(_e.code, _e.name)
del _e
