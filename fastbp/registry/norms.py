"""The normalisation layers (LayerNorm, BatchNorm1d): their names and scalar bodies.

Every piece of the two layers' math is a plain Python function here, compiled
for the CPU loops (:mod:`fastbp.kernels.norm`) and for the CUDA kernels
(:mod:`fastbp.kernels.cuda.norm`): one body, two targets.

* statistics: :func:`norm_mean` (a mean from a sum, also the biased variance
  from the sum of squared deviations) and :func:`norm_rstd`
  (``1 / sqrt(var + eps)``), in the arrays' dtype: float32 arrays get float32
  statistics on both targets;
* forward: ``y = (x - mean) * rstd * w + b`` (:func:`norm_affine`);
* backward: with ``g = dy * w``, ``xhat = (x - mean) * rstd`` and the means
  ``mg = mean(g)``, ``mgx = mean(g * xhat)`` over the values normalised
  together, ``dx = rstd * (g - mg - xhat * mgx)`` (:func:`norm_dx`);
* LayerNorm's rows: :func:`ln_fwd_row`, :func:`ln_dx_row` (the CPU loops over
  the rows, a CUDA thread runs a row);
* BatchNorm: the input-gradient element with batch or running statistics
  (:func:`bn_dx`) and the running statistics' update (:func:`bn_factor`,
  :func:`bn_running`).

What stays per target is only the order of BatchNorm's column loops, for
speed: the CPU sums the minibatch row by row (contiguous, vectorised over the
columns; the backward's two column sums in one pass), a CUDA thread sums its
column (coalesced across the threads of a warp).  Both sum each column in row
order and then call the bodies above on the sums.

Imports only ``math`` (see :mod:`fastbp.registry`); the bodies that call other
bodies call the target's compiled ``_norm_mean`` / ``_norm_rstd`` /
``_norm_affine`` / ``_norm_dx``, injected
(:func:`fastbp.kernels.factory.specialise`).  ``dt`` arguments are the
arrays' scalar type (``X.dtype.type``).
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


def norm_mean(total, n, dt):
    """The mean of ``n`` values from their sum: ``total * (1 / n)``, in ``dt`` (float32
    arithmetic for float32 arrays, on both targets).  With ``total`` the sum of squared
    deviations from the mean it is the biased variance; with ``n - 1`` the unbiased one."""
    return total * (dt(1.0) / dt(n))


def norm_rstd(var, eps, dt):
    """``rstd = 1 / sqrt(var + eps)`` in ``dt`` (float32 arithmetic for float32 arrays, on
    both targets); ``+inf`` where ``var + eps`` is 0 (eps = 0 and values without variance:
    the normalised values are then NaN, as torch's), never an exception; NaN where the
    variance overflowed ``dt`` (float32 values ~1e19 apart: ``1 / inf`` made every
    normalised value a silent 0; torch's are NaN too).  Its derivative enters the backward
    through the statistics' terms of :func:`norm_dx`."""
    sd = math.sqrt(var + eps)
    if sd == dt(math.inf):
        return dt(math.nan)
    return dt(1.0) / sd if sd != dt(0.0) else dt(math.inf)


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
    rstd)`` (mean, then the biased variance of the deviations; :func:`norm_mean`,
    :func:`norm_rstd`), then ``Y[i] = norm_affine(X[i])``.  ``w``/``b`` of size 0: no
    weight / no bias."""
    N = X.shape[1]
    dt = X.dtype.type
    one = dt(1.0)
    zero = dt(0.0)
    s = zero
    for j in range(N):
        s += X[i, j]
    mean = _norm_mean(s, N, dt)  # noqa: F821
    v = zero
    for j in range(N):
        d = X[i, j] - mean
        v += d * d
    rstd = _norm_rstd(_norm_mean(v, N, dt), eps, dt)  # noqa: F821
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
    mean = S[i, 0]
    rstd = S[i, 1]
    sg = zero
    sgx = zero
    for j in range(N):
        g = dY[i, j] * (w[j] if has_w else one)
        sg += g
        sgx += g * ((X[i, j] - mean) * rstd)
    mg = _norm_mean(sg, N, dt)  # noqa: F821
    mgx = _norm_mean(sgx, N, dt)  # noqa: F821
    for j in range(N):
        g = dY[i, j] * (w[j] if has_w else one)
        d = _norm_dx(g, (X[i, j] - mean) * rstd, rstd, mg, mgx)  # noqa: F821
        if acc_x:
            dX[i, j] += d
        else:
            dX[i, j] = d


def bn_dx(dy, x, w, mean, rstd, mg, mgx, batch):
    """BatchNorm's input gradient of one element, ``g = dy * w``: with batch statistics
    (``batch``: training, or no running statistics) the statistics depend on ``x``, so
    ``norm_dx(g, (x - mean) * rstd, rstd, mg, mgx)`` with the column means
    ``mg = mean(g)``, ``mgx = mean(g * xhat)``; with the running statistics (constants)
    ``dy/dx = rstd * w``, so ``g * rstd``."""
    g = dy * w
    if batch:
        return _norm_dx(g, (x - mean) * rstd, rstd, mg, mgx)  # noqa: F821
    return g * rstd


def bn_factor(tracked, cumulative, momentum, dt):
    """The weight ``f`` of a minibatch's statistics in BatchNorm's running statistics, with
    ``tracked`` the batches tracked before this one: ``momentum``, or for ``momentum=None``
    (``cumulative``) PyTorch's cumulative average ``1 / (tracked + 1)``; in ``dt``."""
    return dt(1.0) / (tracked + dt(1.0)) if cumulative else momentum


def bn_running(stat, r, f, dt):
    """The running statistic ``r`` after a minibatch whose statistic is ``stat`` (the batch
    mean, or the unbiased batch variance): ``f * stat + (1 - f) * r`` (PyTorch's update), in
    ``dt``."""
    return f * stat + (dt(1.0) - f) * r
