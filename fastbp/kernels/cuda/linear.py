"""Fully connected layer kernels for CUDA, activation fused into the epilogue.

Same contracts as :mod:`fastbp.kernels.linear`: forward
``Y = act(X W + b)`` with ``X (B, in)``, ``W (in, out)``, ``b (out,)``
(:func:`_linear_fwd`), or with the weight stored transposed ``Wt (out, in)``
(:func:`_linear_fwd_t`); a bias of length 0 means no bias.  The product is the
tiled kernel of :mod:`.gemm`; bias and activation are applied to the
register tile before it is stored, so ``X W`` never makes a round trip
through global memory.  The kernels are made per activation of the registry
(:func:`linear_kernels`, called by :mod:`.activations`) from the templates
below, with the entry's scalar forward ``_F``.  For an activation whose
derivative reads its input, the launchers keep the pre-activation ``Z``:
the identity's kernel writes ``Z = X W + b``, then ``Y = f(Z)``.

Backward, from ``dY`` and the cached output ``Y`` (or ``Z``):
``dZ = dY * act'(.)`` (:func:`.activations._act_bwd`), ``dW = X^T dZ``
(:func:`.gemm._mm_tn`), ``dX = dZ W^T`` (:func:`.gemm._mm_nt`) and
``db = sum_batch dZ`` (:func:`_colsum`, a shared-memory tree reduction:
no atomics, a fixed summation order).
"""
from numba import cuda

from . import activations as _ga
from .launch import COL_X, COL_Y, grid_cols, grid_ew, grid_gemm, kernel


@kernel
def _k_colsum(dZ, db, acc):
    """One block per ``COL_X`` columns; ``COL_Y`` threads per column split the rows."""
    part = cuda.shared.array((COL_Y, COL_X), dtype=dZ.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    j = cuda.blockIdx.x * COL_X + tx
    B = dZ.shape[0]
    N = dZ.shape[1]
    s = dZ.dtype.type(0.0)
    if j < N:
        for i in range(ty, B, COL_Y):
            s += dZ[i, j]
    part[ty, tx] = s
    cuda.syncthreads()
    h = COL_Y // 2
    while h > 0:
        if ty < h:
            part[ty, tx] += part[ty + h, tx]
        cuda.syncthreads()
        h //= 2
    if ty == 0 and j < N:
        if acc:
            db[j] += part[0, tx]
        else:
            db[j] = part[0, tx]


def _linear(which, X, W, b, act, Y, stream, P, Z):
    m, n = Y.shape
    if m == 0 or n == 0:
        return
    grid, block = grid_gemm(m, n)
    if Z is None:
        k = getattr(_ga.kernels(act), which)
        k[grid, block, stream](X, W, b, Y, _ga.params_or_defaults(act, Y.dtype, P))
        return
    # the pre-activation is kept: Z = X W + b (the identity's kernel), then Y = f(Z)
    ident = _ga.R.IDENTITY
    getattr(_ga.kernels(ident), which)[grid, block, stream](X, W, b, Z, _ga.params_or_defaults(ident, Y.dtype, None))
    _ga._act_fwd(Z, act, Y, stream, P)


def _linear_fwd(X, W, b, act, Y, stream=0, P=None, Z=None):
    """``Y = act(X @ W + b)`` on the GPU (one fused kernel).

    Parameters
    ----------
    X : device array, (B, in), float32 or float64
    W : device array, (in, out), same dtype
    b : device array, (out,) or (0,) for no bias, same dtype
    act : int
        Activation code (a registry entry's ``code``; ValueError if unknown).
    Y : device array, (B, out), same dtype
        Output (caller-allocated).
    stream : numba CUDA stream or 0
    P : device array, (n_params,), same dtype, optional
        The activation's parameters (default: its defaults).
    Z : device array, (B, out), same dtype, optional
        Where to keep the pre-activation ``X @ W + b`` (activations whose
        derivative reads their input); None: not kept.
    """
    _linear("linear_fwd", X, W, b, act, Y, stream, P, Z)


def _linear_fwd_t(X, Wt, b, act, Y, stream=0, P=None, Z=None):
    """``Y = act(X @ Wt.T + b)`` on the GPU for a weight stored ``Wt (out, in)``.

    Parameters
    ----------
    X : device array, (B, in), float32 or float64
    Wt : device array, (out, in), same dtype
    b : device array, (out,) or (0,) for no bias, same dtype
    act : int
        Activation code.
    Y : device array, (B, out), same dtype
        Output (caller-allocated).
    stream : numba CUDA stream or 0
    P, Z : device arrays, optional
        As for :func:`_linear_fwd`.
    """
    _linear("linear_fwd_t", X, Wt, b, act, Y, stream, P, Z)


def _bias_act(Y, b, act, stream=0, P=None, Z=None):
    """Epilogue after a separate product: ``Y = act(Y + b)`` in place on the GPU,
    or, with ``Z`` (the product), ``Z += b; Y = act(Z)``.

    Parameters
    ----------
    Y : device array, (B, out), float32 or float64
    b : device array, (out,) or (0,), same dtype
    act : int
        Activation code.
    stream : numba CUDA stream or 0
    P : device array, optional
        The activation's parameters (default: its defaults).
    Z : device array, (B, out), optional
        The product, kept as the pre-activation.
    """
    m, n = Y.shape
    if m == 0 or n == 0:
        return
    grid, block = grid_ew(m, n)
    _ga.kernels(act).bias_act[grid, block, stream](Y if Z is None else Z, b, Y,
                                                   _ga.params_or_defaults(act, Y.dtype, P))


def _colsum(dZ, db, acc, stream=0):
    """``db (+)= sum over rows of dZ`` on the GPU (the bias gradient).

    Deterministic: each column is summed by ``COL_Y`` threads over
    interleaved rows, then combined by a fixed shared-memory tree.

    Parameters
    ----------
    dZ : device array, (B, n), float32 or float64
    db : device array, (n,), same dtype
        Output (caller-allocated).
    acc : bool
        Add into ``db`` instead of overwriting it.
    stream : numba CUDA stream or 0
    """
    n = dZ.shape[1]
    if n == 0:
        return
    grid, block = grid_cols(n)
    _k_colsum[grid, block, stream](dZ, db, bool(acc))
