"""``fastbp.ops``' wrappers of the normalisation and dropout kernels.

Forward/backward pairs in the style of the rest of :mod:`fastbp.ops`: each
function validates its arguments (:mod:`fastbp._validate`), allocates its
outputs (or checks an ``out=`` array) and runs the serial or parallel variant
of a kernel of :mod:`fastbp.kernels.norm` / :mod:`fastbp.kernels.dropout`,
chosen by the amount of work.  Semantics and defaults are PyTorch's
(``torch.nn.functional.layer_norm``, ``batch_norm``, ``dropout``); the
backward functions take what the forward returned besides its output.
"""
from __future__ import annotations

import numpy as np

from . import _validate as V
from . import _scalars
from ._graph_base import _norm_eps, dropout_probability
from . import _rng
from ._ops_activations import check_out, scalar_array, view2d_shape
from .kernels import dropout as _D
from .kernels import norm as _N

__all__ = ["layer_norm_forward", "layer_norm_backward", "batch_norm_forward", "batch_norm_backward",
           "dropout_forward", "dropout_backward"]

_EMPTY = {dt: np.empty(0, dt) for dt in V.FLOAT_DTYPES}


def _empty_stats(shape, dt, axis):
    """The stats of normalisations over no values at all, (mean, rstd) stacked on ``axis``:
    mean 0 and rstd NaN (the variance of nothing is undefined), what
    ``torch.ops.aten.native_layer_norm`` returns for a normalised size of 0."""
    return np.stack([np.zeros(shape, dt), np.full(shape, np.nan, dt)], axis=axis)


def _x(x, name="x"):
    V.float_array(x, name, 2)
    return x.dtype


def _vector(v, name, n, dt, what):
    """``v`` as a checked (n,) vector of ``dt``, or the empty "none" vector for ``None``."""
    if v is None:
        return _EMPTY[dt]
    V.float_array(v, name, 1)
    V.same_dtype(v, name, np.empty(0, dt), "x")
    V.shape(v, name, (n,), what)
    return v


def _grad_of(v, name, n, dt, what):
    """An (n,) gradient for the optional parameter ``v``: allocated if ``v`` is given."""
    _vector(v, name, n, dt, what)
    return np.empty(n, dt) if v is not None else _EMPTY[dt]


def _backward_args(x, dy, stats, weight, bias, stats_shape, stats_what):
    """Check a normalisation backward's ``dy``, ``stats`` and parameters against the
    checked input ``x (..., N)``; ``(weight or the empty vector, dweight, dbias, dx)``,
    the gradients allocated (size 0 where not wanted), ``dx`` in ``x``'s shape."""
    dt, N = x.dtype, x.shape[-1]
    V.float_array(dy, "dy", x.ndim)
    V.same_dtype(x, "x", dy, "dy")
    V.shape(dy, "dy", x.shape, "the output's gradient has the input's shape")
    V.float_array(stats, "stats", x.ndim)
    V.same_dtype(x, "x", stats, "stats")
    V.shape(stats, "stats", stats_shape, stats_what)
    w = _vector(weight, "weight", N, dt, "one weight per feature, x.shape[-1]")
    dw = _grad_of(weight, "weight", N, dt, "")
    db = _grad_of(bias, "bias", N, dt, "one bias per feature, x.shape[-1]")
    return w, dw, db, np.empty(x.shape, dt)


# ------------------------------------------------------------------ LayerNorm
def _rows(x, name="x"):
    """``(rows, N)``: an array of 1-4 dimensions as rows of its last dimension."""
    V.float_array(x, name, (1, 2, 3, 4))
    N = x.shape[-1]
    return (x.size // N if N else int(np.prod(x.shape[:-1]))), N


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5, out=None):
    """LayerNorm over the last dimension: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    ``torch.nn.functional.layer_norm(x, (N,), weight, bias, eps)``: the mean
    and the biased variance of each row (each vector along the last axis).

    Parameters
    ----------
    x : numpy.ndarray, shape (..., N) (1 to 4 dimensions), float32 or float64
    weight, bias : numpy.ndarray, shape (N,), same dtype, optional
        The elementwise affine parameters (``None``: 1 and 0).
    eps : float, default 1e-5
        Added to the variance; finite, >= 0.
    out : numpy.ndarray, the shape of ``x``, optional
        Where to write ``y``; must not overlap the inputs.

    Returns
    -------
    y : numpy.ndarray, the shape and dtype of ``x``
    stats : numpy.ndarray, shape (..., 2)
        Each row's mean and ``rstd = 1 / sqrt(var + eps)``, for
        :func:`layer_norm_backward`.

    Notes
    -----
    Empty arrays give empty outputs, as in PyTorch; with ``N = 0`` each
    (empty) row's stats are mean 0 and rstd NaN, as
    ``torch.ops.aten.native_layer_norm`` returns.
    """
    B, N = _rows(x)
    dt = x.dtype
    w = _vector(weight, "weight", N, dt, "one weight per feature, x.shape[-1]")
    b = _vector(bias, "bias", N, dt, "one bias per feature, x.shape[-1]")
    P = scalar_array("layer_norm_forward", ("eps",), (_norm_eps("layer_norm_forward", eps),), dt)
    y = check_out(out, "out", x.shape, dt, ((x, "x"), (w, "weight"), (b, "bias")))
    if N == 0:                  # no values to normalise (the kernel would divide by N)
        return y, _empty_stats(x.shape[:-1], dt, -1)
    S = np.empty(x.shape[:-1] + (2,), dt)
    _N._layernorm_fwd.pick(B * N)(x.reshape(B, N), w, b, y.reshape(B, N), S.reshape(B, 2), P)
    return y, S


def layer_norm_backward(x, dy, stats, weight=None, bias=None):
    """Gradients of :func:`layer_norm_forward`.

    With ``xhat = (x - mean) * rstd`` and ``g = dy * weight``, per row
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``;
    ``dweight = sum_rows dy * xhat``, ``dbias = sum_rows dy``.

    Parameters
    ----------
    x : numpy.ndarray, shape (..., N)
        The forward's input.
    dy : numpy.ndarray, the shape of ``x``
        The gradient of the output.
    stats : numpy.ndarray, shape (..., 2)
        The forward's ``stats``.
    weight, bias : numpy.ndarray, shape (N,), optional
        The forward's parameters; a gradient is returned for each one given.

    Returns
    -------
    dx : numpy.ndarray, the shape of ``x``
    dweight, dbias : numpy.ndarray, shape (N,), or None
        ``None`` where the forward had no such parameter.
    """
    B, N = _rows(x)
    w, dw, db, dx = _backward_args(x, dy, stats, weight, bias, x.shape[:-1] + (2,),
                                   "layer_norm_forward's stats: (mean, rstd) per row of x")
    if N == 0:                  # every output is empty (the kernel would divide by N)
        return dx, (dw if weight is not None else None), (db if bias is not None else None)
    _N._layernorm_bwd.pick(B * N)(x.reshape(B, N), w, stats.reshape(B, 2), dy.reshape(B, N), dx.reshape(B, N),
                                  dw, db, False, False, False)
    return dx, (dw if weight is not None else None), (db if bias is not None else None)


# ------------------------------------------------------------------ BatchNorm1d
def batch_norm_forward(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
                       momentum=0.1, eps=1e-5, out=None):
    """BatchNorm1d over the columns: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    ``torch.nn.functional.batch_norm`` for 2-D ``x``, with its semantics:
    in training (or without running statistics) the minibatch's mean and
    biased variance of each column, and the running statistics, if given,
    updated in place (``running = (1 - momentum) running + momentum batch``,
    the unbiased variance); in eval mode the running statistics.

    Parameters
    ----------
    x : numpy.ndarray, shape (batch, N), float32 or float64
        Not exactly 1 row in training (as PyTorch).
    running_mean, running_var : numpy.ndarray, shape (N,), same dtype, optional
        Both or neither, not overlapping each other in memory; written in
        training mode.
    weight, bias : numpy.ndarray, shape (N,), optional
        The affine parameters (``None``: 1 and 0).
    training : bool, default False
    momentum : float in [0, 1], default 0.1
    eps : float, default 1e-5
        Added to the variance; finite, >= 0, and > 0 where the minibatch's statistics
        are used (``training``, or no running statistics), as PyTorch's ``batch_norm``.
    out : numpy.ndarray, shape (batch, N), optional
        Where to write ``y``; must not overlap the inputs.

    Returns
    -------
    y : numpy.ndarray, shape (batch, N)
    stats : numpy.ndarray, shape (2, N)
        The mean and ``rstd = 1 / sqrt(var + eps)`` that normalised each
        column, for :func:`batch_norm_backward`.

    Notes
    -----
    An empty batch (``batch = 0``) gives an empty ``y`` and leaves the
    running statistics unchanged, as PyTorch; normalised by the minibatch
    (training, or no running statistics), its stats are mean 0 and rstd NaN
    (the statistics of no values; cf. :func:`layer_norm_forward`).
    """
    dt = _x(x)
    B, N = x.shape
    training = V.boolean("training", training)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_forward: give both running_mean and running_var, or neither")
    rm = _vector(running_mean, "running_mean", N, dt, "one mean per feature, x.shape[1]")
    rv = _vector(running_var, "running_var", N, dt, "one variance per feature, x.shape[1]")
    if running_mean is not None and training:    # written in training only (eval reads them: a mmap is fine)
        V.writeable(rm, "running_mean")
        V.writeable(rv, "running_var")
        V.no_overlap(rv, "running_var", rm, "running_mean")     # both written: the last would win
    w = _vector(weight, "weight", N, dt, "one weight per feature, x.shape[1]")
    b = _vector(bias, "bias", N, dt, "one bias per feature, x.shape[1]")
    momentum = _scalars.real("momentum", momentum, "batch_norm_forward", low=0.0, high=1.0)
    batch_stats = bool(training) or running_mean is None    # the minibatch's statistics normalise
    P = scalar_array("batch_norm_forward", ("eps", "momentum", "cumulative"),
                     (_norm_eps("batch_norm_forward", eps, training=batch_stats), momentum, 0.0), dt)
    update = training and running_mean is not None and B > 0
    if batch_stats and B == 1:     # PyTorch: an empty batch is allowed (an empty output)
        # the minibatch's statistics (training, or eval without running statistics, as
        # BatchNorm1d(track_running_stats=False).eval()): one row has no variance
        raise ValueError(f"batch_norm_forward: expected more than 1 row per feature "
                         f"{'in training' if training else 'without running statistics'}, got x of "
                         f"shape {V.fmt_shape(x.shape)}")
    y = check_out(out, "out", (B, N), dt, ((x, "x"), (w, "weight"), (b, "bias"), (rm, "running_mean"),
                                           (rv, "running_var")))
    R = np.stack([rm, rv]) if running_mean is not None else np.empty((0, N), dt)
    if B == 0 and (training or running_mean is None):   # the minibatch's statistics of no rows
        return y, _empty_stats((N,), dt, 0)
    S = np.empty((5, N), dt)
    _N._batchnorm_fwd.pick(B * N)(x, w, b, y, S, R, P, training)
    if update:
        T = np.zeros(1, dt)
        _N._batchnorm_running.serial(S, R, T, P, B)
        rm[...] = R[0]
        rv[...] = R[1]
    return y, S[:2].copy()


def batch_norm_backward(x, dy, stats, weight=None, bias=None, batch_stats=True):
    """Gradients of :func:`batch_norm_forward`.

    ``dweight = sum_rows dy * xhat``, ``dbias = sum_rows dy``; with the
    minibatch's statistics (``batch_stats``: the forward ran in training, or
    without running statistics) per column
    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``g = dy * weight``;
    with the running statistics (constants) ``dx = g * rstd``.

    Parameters
    ----------
    x : numpy.ndarray, shape (batch, N)
        The forward's input.
    dy : numpy.ndarray, shape (batch, N)
    stats : numpy.ndarray, shape (2, N)
        The forward's ``stats``.
    weight, bias : numpy.ndarray, shape (N,), optional
        The forward's parameters; a gradient is returned for each one given.
    batch_stats : bool, default True
        Whether the forward normalised with the minibatch's statistics.

    Returns
    -------
    dx : numpy.ndarray, shape (batch, N)
    dweight, dbias : numpy.ndarray, shape (N,), or None
    """
    dt = _x(x)
    B, N = x.shape
    w, dw, db, dx = _backward_args(x, dy, stats, weight, bias, (2, N),
                                   "batch_norm_forward's stats: (mean, rstd) per column of x")
    batch_stats = V.boolean("batch_stats", batch_stats)
    S = np.empty((5, N), dt)          # rows 3-4: the kernel's column sums
    S[:2] = stats
    _N._batchnorm_bwd.pick(B * N)(x, w, S, dy, dx, dw, db, False, False, False, batch_stats)
    return dx, (dw if weight is not None else None), (db if bias is not None else None)


# ------------------------------------------------------------------ dropout
def _dropout(a, name, p, seed, training, out):
    V.float_array(a, name, (1, 2, 3, 4))
    p = dropout_probability(p, "dropout")
    # no None: the backward redraws the forward's mask from the seed
    key = _rng.seed_key(V.seed(seed, none=False))
    if not V.boolean("training", training):
        p = 0.0
    y = check_out(out, "out", a.shape, a.dtype, ((a, name),))
    shape2 = view2d_shape(a.shape, a.size)       # the mask is a function of the flat index
    _D._dropout.pick(a.size)(a.reshape(shape2), y.reshape(shape2), key, 0, 0, 0, p, False)
    return y


def dropout_forward(x, p=0.5, seed=0, training=True, out=None):
    """Inverted dropout: ``y = x * m``, ``m = 1[kept] / (1 - p)`` per element.

    ``torch.nn.functional.dropout(x, p, training)``, with fastbp's
    counter-based mask: a pure function of ``seed`` and each element's
    index, so :func:`dropout_backward` with the same ``seed`` and ``p``
    applies the same mask (no mask is stored).

    Parameters
    ----------
    x : numpy.ndarray, 1 to 4 dimensions, float32 or float64
    p : float in [0, 1], default 0.5
        The probability of an element being zeroed (1: all zeros).
    seed : int, default 0
        The mask's seed (a non-negative integer).
    training : bool, default True
        False: ``y = x`` (a copy).
    out : numpy.ndarray, the shape of ``x``, optional

    Returns
    -------
    y : numpy.ndarray, the shape and dtype of ``x``
    """
    return _dropout(x, "x", p, seed, training, out)


def dropout_backward(dy, p=0.5, seed=0, training=True):
    """Gradient of :func:`dropout_forward`: ``dx = dy * m``, the forward's mask
    (the same ``p``, ``seed`` and ``training``).

    Parameters
    ----------
    dy : numpy.ndarray, the shape of the forward's ``x``
    p, seed, training
        As given to :func:`dropout_forward`.

    Returns
    -------
    dx : numpy.ndarray, the shape and dtype of ``dy``
    """
    return _dropout(dy, "dy", p, seed, training, None)
