"""The fused linear kernels of CUDA, made per activation: templates and their factory.

``linear_fwd(X, W, b, Y, P)`` / ``linear_fwd_t(X, Wt, b, Y, P)``: the tile loop
of :mod:`.gemm` (``_tiles_nn``/``_tiles_nt``) with the bias and the activation ``_F`` (an entry's
scalar forward, injected by :func:`linear_kernels`) applied to the register
tile before it is stored, so ``X W`` never makes a round trip through global
memory.  The launchers are in :mod:`.linear`; :mod:`.activations` makes the
kernels for each registry entry.
"""
import math

from numba import cuda

from ..factory import specialise
from .gemm import _tiles_nn, _tiles_nt
from .launch import BM, BN, GEMM_TX, GEMM_TY, TM, TN, device, kernel


@device
def _param(P, k):
    """``P[k]`` (an activation's parameter); NaN if ``P`` has no element ``k``."""
    return P[k] if k < P.shape[0] else P.dtype.type(math.nan)


def _t_store_bias_act(Y, acc, b, P, m0, n0, tx, ty):
    """``Y[tile] = f(acc + b)`` for the in-range part of this thread's outputs."""
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    M = Y.shape[0]
    N = Y.shape[1]
    has_bias = b.shape[0] > 0
    for i in range(TM):
        r = m0 + ty + i * GEMM_TY
        if r < M:
            for j in range(TN):
                c = n0 + tx + j * GEMM_TX
                if c < N:
                    v = acc[i, j]
                    if has_bias:
                        v += b[c]
                    Y[r, c] = _F(v, p0, p1)  # noqa: F821 - injected


def _t_store_bias_then_act(Y, acc, b, P, m0, n0, tx, ty):
    """As :func:`_t_store_bias_act`, for activations whose scalar body is large
    (a polynomial ``exp``/``erf``): the tile's pre-activations ``acc + b`` are
    stored first (a small loop NVVM unrolls, so ``acc`` stays in registers),
    then this thread's outputs are read back, activated and stored (a loop that
    may stay rolled: it indexes no local array).  Inlined into the unrolled
    loop, such a body kept the loop rolled and put ``acc`` in local memory."""
    p0 = _param(P, 0)
    p1 = _param(P, 1)
    M = Y.shape[0]
    N = Y.shape[1]
    has_bias = b.shape[0] > 0
    for i in range(TM):
        r = m0 + ty + i * GEMM_TY
        if r < M:
            for j in range(TN):
                c = n0 + tx + j * GEMM_TX
                if c < N:
                    v = acc[i, j]
                    if has_bias:
                        v += b[c]
                    Y[r, c] = v
    for i in range(TM):
        r = m0 + ty + i * GEMM_TY
        if r < M:
            for j in range(TN):
                c = n0 + tx + j * GEMM_TX
                if c < N:
                    Y[r, c] = _F(Y[r, c], p0, p1)  # noqa: F821 - injected


def _t_k_linear_fwd(X, W, b, Y, P):
    """Kernel of :func:`_linear_fwd`: tiled ``X @ W`` with the bias/activation epilogue."""
    acc = cuda.local.array((TM, TN), dtype=X.dtype)
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    _tiles_nn(X, W, acc, X.shape[1], m0, n0, cuda.threadIdx.x, cuda.threadIdx.y)
    _store_bias_act(Y, acc, b, P, m0, n0, cuda.threadIdx.x, cuda.threadIdx.y)  # noqa: F821 - injected


def _t_k_linear_fwd_t(X, Wt, b, Y, P):
    """Kernel of :func:`_linear_fwd_t`: tiled ``X @ Wt.T`` with the epilogue."""
    acc = cuda.local.array((TM, TN), dtype=X.dtype)
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    _tiles_nt(X, Wt, acc, X.shape[1], m0, n0, cuda.threadIdx.x, cuda.threadIdx.y)
    _store_bias_act(Y, acc, b, P, m0, n0, cuda.threadIdx.x, cuda.threadIdx.y)  # noqa: F821 - injected


def linear_kernels(f, sfx, separate=False):
    """``(linear_fwd, linear_fwd_t)`` kernels whose epilogue applies the scalar
    device function ``f(v, p0, p1)`` (an activation's adapter); ``sfx`` names them.
    ``separate``: the two-loop epilogue (:func:`_t_store_bias_then_act`) for large bodies."""
    store = device(specialise(_t_store_bias_then_act if separate else _t_store_bias_act, sfx, _F=f))
    return (kernel(specialise(_t_k_linear_fwd, sfx, _store_bias_act=store)),
            kernel(specialise(_t_k_linear_fwd_t, sfx, _store_bias_act=store)))
