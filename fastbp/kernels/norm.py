"""Normalisation layers: LayerNorm and BatchNorm1d forward, backward and running statistics.

Every kernel writes into caller-allocated arrays; the executor
(:func:`fastbp._executor.run_tape`) calls them by address (:mod:`.table`).
``w`` / ``b`` of size 0 mean "no weight" / "no bias" (``elementwise_affine``
or ``affine`` False).  ``P`` is the layer's float row: ``P[0] = eps``
(BatchNorm: ``P[1] = momentum``, ``P[2] = 1`` for the cumulative average of
``momentum=None``).

The math is the scalar bodies of :mod:`fastbp.registry.norms`, the same
Python functions the CUDA kernels (:mod:`fastbp.kernels.cuda.norm`) compile:
the statistics (mean, ``rstd``; in the arrays' dtype), normalise + affine,
the input-gradient element, LayerNorm's rows, BatchNorm's running update.
What is written here is BatchNorm's column loops: the minibatch is summed row
by row, contiguous and vectorised over the columns.

Math (``xhat = (x - mean) * rstd``, ``rstd = 1 / sqrt(var + eps)``, ``var``
the biased variance; ``g = dy * w``):

* forward ``y = xhat * w + b``;
* backward over the ``n`` values normalised together (a row for LayerNorm,
  a column of the minibatch for BatchNorm in training)
  ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``,
  ``dw = sum dy * xhat``, ``db = sum dy`` (the last two summed over the
  minibatch);
* BatchNorm in eval mode normalises with the running statistics, constants:
  ``dx = g * rstd``.

Every reduction runs in a fixed order (rows in order; BatchNorm's column sums in
blocks of columns, one thread per block), so the result does not depend on the
thread count.  The serial and parallel compilations of a kernel may round
differently (LLVM decides fast-math contractions per compilation): a step uses
one or the other by its size (:func:`fastbp._executor.step_threads`), never by
the thread count.
"""
import numba
import numpy as np
from numba import prange

from .._jit import TILE, kernel, stack_tile
from ..registry import norms as _body
from .factory import specialise

_inline = numba.njit(inline="always")
#: columns per block of BatchNorm's column sums (a thread's share; each column summed in row order,
#: in a float64 stack tile of TILE elements)
_COLS = TILE


@_inline
def _n_blocks(N):
    """The number of column blocks of ``N`` columns."""
    return (N + _COLS - 1) // _COLS


@_inline
def _block(blk, N):
    """Columns ``j0:j1`` of block ``blk`` (the prange index is unsigned in the parallel variant)."""
    j0 = np.intp(blk) * _COLS
    return j0, min(j0 + _COLS, N)


_norm_mean = _inline(_body.norm_mean)
_norm_rstd = _inline(_body.norm_rstd)
_norm_affine = _inline(_body.norm_affine)
_norm_dx = _inline(_body.norm_dx)
# LayerNorm's row bodies and BatchNorm's element bodies (shared with the CUDA kernels)
_ln_fwd_row = _inline(specialise(_body.ln_fwd_row, "__cpu", _norm_mean=_norm_mean, _norm_rstd=_norm_rstd,
                                 _norm_affine=_norm_affine))
_ln_dx_row = _inline(specialise(_body.ln_dx_row, "__cpu", _norm_mean=_norm_mean, _norm_dx=_norm_dx))
_bn_dx = _inline(specialise(_body.bn_dx, "__cpu", _norm_dx=_norm_dx))
_bn_factor = _inline(_body.bn_factor)
_bn_running = _inline(_body.bn_running)


@kernel
def _layernorm_fwd(X, w, b, Y, S, P):
    """LayerNorm over each row of ``X (B, N)``: ``S[i] = (mean, rstd)`` of row ``i``
    (one pass of statistics, mean then biased variance), then
    ``Y = (X - mean) * rstd * w + b`` (one pass): the registry's row body
    (:func:`fastbp.registry.norms.ln_fwd_row`).  Derivative: see :func:`_layernorm_bwd`."""
    eps = P[0]
    for i in prange(X.shape[0]):
        _ln_fwd_row(X, w, b, Y, S, np.intp(i), eps)


@kernel
def _layernorm_bwd(X, w, S, dY, dX, dw, db, acc_x, acc_w, acc_b):
    """Backward of :func:`_layernorm_fwd`: per row
    ``dX = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dY * w``,
    ``xhat = (X - mean) * rstd``; ``dw (+)= sum_rows dY * xhat``, ``db (+)= sum_rows dY``.
    An output of size 0 is not wanted; ``acc_*``: add to the output."""
    B, N = X.shape
    zero = X.dtype.type(0.0)
    if dw.shape[0] > 0:
        if not acc_w:
            for j in range(N):
                dw[j] = zero
        for i in range(B):
            mean = S[i, 0]
            rstd = S[i, 1]
            for j in range(N):
                dw[j] += dY[i, j] * ((X[i, j] - mean) * rstd)
    if db.shape[0] > 0:
        if not acc_b:
            for j in range(N):
                db[j] = zero
        for i in range(B):
            for j in range(N):
                db[j] += dY[i, j]
    if dX.shape[0] > 0:
        for i in prange(B):
            _ln_dx_row(X, w, S, dY, dX, np.intp(i), acc_x)     # the registry's row body


@kernel
def _batchnorm_fwd(X, w, b, Y, S, R, P, training):
    """BatchNorm1d over the columns of ``X (B, N)``.

    Training (or no running statistics, ``R`` empty): ``S[0] = mean`` and
    ``S[1] = rstd`` of each column over the minibatch (biased variance),
    ``S[2]`` the column's sum of squared deviations (for the unbiased running
    variance; ``S`` has 5 rows, the last two scratch of the backward); eval: ``S[0], S[1]``
    from the running ``R[0] = mean``, ``R[1] = var``.  Then ``Y = (X - mean) * rstd * w + b``.
    The column sums are float64 (float32 ones drifted: a mean 4e-3 off at 1e6 rows), each
    rounded once to the dtype of ``X``; the mean and biased variance are the registry's
    ``norm_mean`` of them in float64, rounded, and ``rstd`` its ``norm_rstd`` in that dtype.
    Derivative: see :func:`_batchnorm_bwd`."""
    B, N = X.shape
    dt = X.dtype.type
    eps = P[0]
    has_w = w.shape[0] > 0
    has_b = b.shape[0] > 0
    one = dt(1.0)
    zero = dt(0.0)
    if training or R.shape[0] == 0:
        for blk in prange(_n_blocks(N)):     # blocks of columns, rows in order in each
            j0, j1 = _block(blk, N)
            t = stack_tile(np.float64)      # the block's column sums, in float64
            for j in range(j0, j1):
                t[j - j0] = 0.0
            for i in range(B):
                for j in range(j0, j1):
                    t[j - j0] += X[i, j]
            for j in range(j0, j1):
                S[0, j] = dt(_norm_mean(t[j - j0], B, np.float64))
                t[j - j0] = 0.0
            for i in range(B):              # the squared deviations from the rounded mean
                for j in range(j0, j1):
                    d = X[i, j] - S[0, j]
                    t[j - j0] += d * d
            for j in range(j0, j1):
                S[2, j] = dt(t[j - j0])
                S[1, j] = _norm_rstd(dt(_norm_mean(t[j - j0], B, np.float64)), eps, dt)   # biased variance
    else:
        for j in range(N):
            S[0, j] = R[0, j]
            S[1, j] = _norm_rstd(R[1, j], eps, dt)
    for i in prange(B):
        for j in range(N):
            Y[i, j] = _norm_affine(X[i, j], S[0, j], S[1, j], w[j] if has_w else one, b[j] if has_b else zero)


@kernel
def _batchnorm_bwd(X, w, S, dY, dX, dw, db, acc_x, acc_w, acc_b, batch_stats):
    """Backward of :func:`_batchnorm_fwd`: ``dw (+)= sum_rows dY * xhat``,
    ``db (+)= sum_rows dY``; with batch statistics (``batch_stats``) per column
    ``dX = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``g = dY * w``,
    else (running statistics, constants) ``dX = g * rstd`` (the registry's ``bn_dx``).
    ``S[3]``, ``S[4]``: scratch for the column sums of ``dY`` and ``dY * xhat`` (summed in
    float64, rounded once)."""
    B, N = X.shape
    dt = X.dtype.type
    one = dt(1.0)
    has_w = w.shape[0] > 0
    for blk in prange(_n_blocks(N)):     # blocks of columns, rows in order in each
        j0, j1 = _block(blk, N)
        t = stack_tile(np.float64)          # the block's sums of dY and dY * xhat, in float64
        u = stack_tile(np.float64)
        for j in range(j0, j1):
            t[j - j0] = 0.0
            u[j - j0] = 0.0
        for i in range(B):          # both column sums in one pass over dY (each in row order)
            for j in range(j0, j1):
                t[j - j0] += dY[i, j]
                u[j - j0] += dY[i, j] * ((X[i, j] - S[0, j]) * S[1, j])
        for j in range(j0, j1):
            S[3, j] = dt(t[j - j0])
            S[4, j] = dt(u[j - j0])
    if dw.shape[0] > 0:
        for j in range(N):
            dw[j] = dw[j] + S[4, j] if acc_w else S[4, j]
    if db.shape[0] > 0:
        for j in range(N):
            db[j] = db[j] + S[3, j] if acc_b else S[3, j]
    if dX.shape[0] == 0:
        return
    for i in prange(B):
        for j in range(N):
            ww = w[j] if has_w else one
            d = _bn_dx(dY[i, j], X[i, j], ww, S[0, j], S[1, j],
                       _norm_mean(S[3, j] * ww, B, dt), _norm_mean(S[4, j] * ww, B, dt), batch_stats)
            if acc_x:
                dX[i, j] += d
            else:
                dX[i, j] = d


@kernel
def _batchnorm_running(S, R, T, P, nb):
    """The running statistics after a training minibatch of ``nb >= 2`` rows:
    ``f = momentum`` (or ``1 / (T[0] + 1)`` for the cumulative average), ``T[0] += 1``
    (batches tracked), ``R[0] = (1 - f) R[0] + f mean``, ``R[1] = (1 - f) R[1] + f
    var_unbiased`` (PyTorch's update; the registry's ``bn_factor``, ``bn_running``)."""
    N = R.shape[1]
    dt = R.dtype.type
    f = _bn_factor(T[0], P[2] != dt(0.0), P[1], dt)
    T[0] += dt(1.0)
    for j in range(N):
        R[0, j] = _bn_running(S[0, j], R[0, j], f, dt)
    for j in range(N):
        R[1, j] = _bn_running(_norm_mean(S[2, j], nb - 1, dt), R[1, j], f, dt)
