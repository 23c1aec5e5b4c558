"""The normalisation layers (LayerNorm, BatchNorm1d): their names and scalar bodies.

The elementwise parts of both layers are these two plain Python functions,
compiled for the CPU loops (:mod:`fastbp.kernels.norm`) and for the CUDA
kernels (:mod:`fastbp.kernels.cuda.norm`): one body, two targets.  LayerNorm's
rows are one body each too (:func:`ln_fwd_row`, :func:`ln_dx_row`: the CPU loops
over rows, the CUDA kernels run a row per thread).  BatchNorm's column
statistics are each target's loops: the CPU sums row by row (contiguous,
vectorised over the columns), a CUDA thread sums its column.

* forward: ``y = (x - mean) * rstd * w + b`` (:func:`norm_affine`);
* backward: with ``g = dy * w``, ``xhat = (x - mean) * rstd`` and the means
  ``mg = mean(g)``, ``mgx = mean(g * xhat)`` over the values normalised
  together, ``dx = rstd * (g - mg - xhat * mgx)`` (:func:`norm_dx`).

Imports only ``math`` (see :mod:`fastbp.registry`); the row bodies call the target's
compiled ``_norm_affine`` / ``_norm_dx``, injected
(:func:`fastbp.kernels.factory.specialise`).
"""
import math

#: graph op names of the layers (graph.py's nodes) and their PyTorch modules
LAYER_NORM = "layer_norm"
BATCH_NORM = "batch_norm"
OPS = (LAYER_NORM, BATCH_NORM)
TORCH = {"LayerNorm": LAYER_NORM, "BatchNorm1d": BATCH_NORM}
#: rows of a BatchNorm's statistics buffer: mean, rstd, sum of squared deviations, 2 scratch
BN_STAT_ROWS = 5
#: LayerNorm keeps (mean, rstd) per row
LN_STAT_COLS = 2


def norm_affine(x, mean, rstd, w, b):
    """``(x - mean) * rstd * w + b``; derivative in ``x``: ``rstd * w`` (plus the
    statistics' terms, :func:`norm_dx`)."""
    return (x - mean) * rstd * w + b


def norm_dx(g, xhat, rstd, mg, mgx):
    """``rstd * (g - mg - xhat * mgx)``: the input gradient of a normalisation with
    batch statistics, ``g = dy * w``, ``mg = mean(g)``, ``mgx = mean(g * xhat)``."""
    return rstd * (g - mg - xhat * mgx)


def ln_fwd_row(X, w, b, Y, S, i, eps):
    """LayerNorm's forward of row ``i`` of ``X (B, N)``: its statistics ``S[i] = (mean,
    rstd)`` (mean, then the biased variance of the deviations; in the dtype of ``X``), then
    ``Y[i] = norm_affine(X[i])``.  ``w``/``b`` of size 0: no weight / no bias."""
    N = X.shape[1]
    dt = X.dtype.type
    one = dt(1.0)
    zero = dt(0.0)
    inv_n = one / dt(N)
    s = zero
    for j in range(N):
        s += X[i, j]
    mean = s * inv_n
    v = zero
    for j in range(N):
        d = X[i, j] - mean
        v += d * d
    sd = math.sqrt(v * inv_n + eps)
    rstd = one / sd if sd != zero else dt(math.inf)     # eps = 0, a constant row: inf (then NaN), as torch
    S[i, 0] = mean
    S[i, 1] = rstd
    has_w = w.shape[0] > 0
    has_b = b.shape[0] > 0
    for j in range(N):
        Y[i, j] = _norm_affine(X[i, j], mean, rstd, w[j] if has_w else one, b[j] if has_b else zero)  # noqa: F821


def ln_dx_row(X, w, S, dY, dX, i, acc_x):
    """LayerNorm's input gradient of row ``i``: ``dX[i] (+)= norm_dx(g, xhat, rstd, mean(g),
    mean(g xhat))`` with ``g = dY w`` and the row's statistics from ``S[i]``."""
    N = X.shape[1]
    dt = X.dtype.type
    one = dt(1.0)
    zero = dt(0.0)
    has_w = w.shape[0] > 0
    inv_n = one / dt(N)
    mean = S[i, 0]
    rstd = S[i, 1]
    sg = zero
    sgx = zero
    for j in range(N):
        g = dY[i, j] * (w[j] if has_w else one)
        sg += g
        sgx += g * ((X[i, j] - mean) * rstd)
    mg = sg * inv_n
    mgx = sgx * inv_n
    for j in range(N):
        g = dY[i, j] * (w[j] if has_w else one)
        d = _norm_dx(g, (X[i, j] - mean) * rstd, rstd, mg, mgx)  # noqa: F821
        if acc_x:
            dX[i, j] += d
        else:
            dX[i, j] = d
