"""Validated, allocating wrappers around the fastbp kernels.

Every function here checks its arguments (:mod:`fastbp._validate`: numpy
arrays, float32 or float64, one dtype per call, C-contiguous, shapes that
fit together), allocates its outputs -- or writes into a caller-supplied
``out=`` array after checking its shape, dtype, layout and writeability --
and runs a compiled kernel.  Each call picks the kernel's serial or
``prange``-parallel variant by the amount of work
(:meth:`fastbp._jit.Kernel.pick`); matrix products of at least
:data:`BLAS_THRESHOLD` multiply-adds go to the BLAS ``gemm`` instead of the
own loops.

Forward functions return the output; backward functions take the upstream
gradient ``d<out>`` (and whatever the forward cached: its inputs, or, for
an activation whose derivative reads it, its output) and return the gradient
with respect to each input, of the same shape as that input -- the chain
rule of backpropagation, "upstream gradient times local gradient".

The activation wrappers ``<name>_forward``/``<name>_backward`` are generated
from the activation registry (:mod:`fastbp.registry.activations`,
:mod:`fastbp._ops_activations`): ``relu``, ``sigmoid``, ``tanh``, ...; the gate wrappers
``add``, ``mul``, ``max``, ``div`` and ``pow`` (``_forward``/``_backward``, numpy broadcasting)
from the gate registry (:mod:`fastbp.registry.gates`, :mod:`fastbp._ops_gates`).
LayerNorm, BatchNorm1d and dropout: ``layer_norm_forward``/``_backward``,
``batch_norm_forward``/``_backward``, ``dropout_forward``/``_backward``
(:mod:`fastbp._ops_norm`; PyTorch's ``torch.nn.functional`` semantics).

Non-finite data is not an error: NaN in an input propagates as NaN to the
outputs it touches.
"""
from __future__ import annotations

import numpy as _np

from . import _ops_activations as _OA
from . import _ops_gates as _OG
from . import _ops_norm as _ON
from . import _validate as _V
from .kernels import activations as _A
from .kernels import gemm as _M
from .kernels import linear as _L
from .kernels import losses as _Ls
from .config import OPS_BLAS_THRESHOLD as BLAS_THRESHOLD
from .registry.activations import IDENTITY as _IDENTITY

_ACTIVATION_WRAPPERS = _OA.wrappers()
globals().update(_ACTIVATION_WRAPPERS)
_GATE_WRAPPERS = _OG.wrappers()
globals().update(_GATE_WRAPPERS)

__all__ = [
    "BLAS_THRESHOLD",
    "linear_forward", "linear_backward", "matmul",
    *_ACTIVATION_WRAPPERS,
    *_GATE_WRAPPERS,
    "softmax_cross_entropy", "svm_loss", "mse", "bce_with_logits", "poisson_loss",
    *_ON.__all__,
]
globals().update({_name: getattr(_ON, _name) for _name in _ON.__all__})


def __dir__():
    # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)

_NOBIAS = {dt: _np.empty(0, dt) for dt in _V.FLOAT_DTYPES}
_as2d = _OG.as2d
_check_out = _OA.check_out


def _mm(a, b, c, ta, tb):
    """``c = op(a) @ op(b)``: BLAS at or above BLAS_THRESHOLD (if one is loaded), own loops below."""
    m, n = c.shape
    k = a.shape[0] if ta else a.shape[1]
    work = m * n * k
    if work >= BLAS_THRESHOLD and _M.BLAS_AVAILABLE:
        _M._blas_mm(a, b, c, ta, tb, False)
    elif ta:
        _M._mm_tn.pick(work)(a, b, c, False)
    elif tb:
        _M._mm_nt.pick(work)(a, b, c, False)
    else:
        _M._mm_nn.pick(work)(a, b, c, False)


# ------------------------------------------------------------------ linear
def linear_forward(x, W, b=None, activation="none", out=None, *, activation_params=None):
    """Fully connected layer ``y = act(x @ W + b)``.

    Parameters
    ----------
    x : numpy.ndarray, shape (batch, in_features)
        Inputs, one sample per row; float32 or float64, C-contiguous.
    W : numpy.ndarray, shape (in_features, out_features)
        Weights (same dtype as ``x``).
    b : numpy.ndarray, shape (out_features,), optional
        Bias; ``None`` for none.
    activation : str, default "none"
        Activation fused into the epilogue: ``"none"`` or the name of a
        registry activation (``"relu"``, ``"sigmoid"``, ``"tanh"``, ...).
    out : numpy.ndarray, shape (batch, out_features), optional
        Where to write ``y``; must not overlap the inputs.
    activation_params : dict, optional
        The activation's parameters by name (default: the registry defaults).

    Returns
    -------
    y : numpy.ndarray, shape (batch, out_features)
        Same dtype as ``x``.  Keep it: :func:`linear_backward` needs the
        cached output (or, for an activation whose derivative reads its
        input, the pre-activation ``linear_forward(x, W, b)``).

    Notes
    -----
    With ``z = x W + b``: ``dy/dz = act'(z)`` and ``dz/dx = W^T``,
    ``dz/dW = x^T``, ``dz/db = 1`` (see :func:`linear_backward`).
    """
    _V.float_array(x, "x", 2)
    _V.float_array(W, "W", 2)
    dt = _V.same_dtype(x, "x", W, "W")
    n, d_in = x.shape
    if W.shape[0] != d_in:
        _V.shape(W, "W", (d_in, None), "W is (in_features, out_features) with in_features = x.shape[1]")
    d_out = W.shape[1]
    if b is None:
        b = _NOBIAS[dt]
    else:
        _V.float_array(b, "b", 1)
        _V.same_dtype(x, "x", b, "b")
        _V.shape(b, "b", (d_out,), "one bias per output feature, W.shape[1]")
    entry, params = _OA.resolve(activation, activation_params, "linear_forward")
    y = _check_out(out, "out", (n, d_out), dt, ((x, "x"), (W, "W"), (b, "b")))
    work = n * d_in * d_out
    ks = _A.kernels(entry.code)
    P = _OA.param_array(entry, params, dt, f"linear_forward: activation {entry.name!r}")
    if work >= BLAS_THRESHOLD and _M.BLAS_AVAILABLE:
        _M._blas_mm(x, W, y, False, False, False)
        if b.shape[0] or entry.code != _IDENTITY:
            ks.bias_act.pick(n * d_out)(y, b, y, P)
    else:
        ks.linear_fwd.pick(work)(x, W, b, y, P)
    return y


def linear_backward(x, W, y, dy, activation="none", need_dx=True, *, activation_params=None, z=None):
    """Gradients of a fully connected layer ``y = act(x @ W + b)``.

    Parameters
    ----------
    x : numpy.ndarray, shape (batch, in_features)
        The forward input.
    W : numpy.ndarray, shape (in_features, out_features)
        The weights.
    y : numpy.ndarray, shape (batch, out_features)
        The cached forward *output* (the local derivative of an activation
        that reads its output is computed from it).
    dy : numpy.ndarray, shape (batch, out_features)
        Upstream gradient ``dL/dy``; not modified.
    activation : str, default "none"
        The activation used in the forward pass (``"none"`` or a registry name).
    need_dx : bool, default True
        Compute ``dx`` (False for a first layer, whose input needs no gradient);
        anything but a bool is a TypeError.
    activation_params : dict, optional
        The activation's parameters by name (default: the registry defaults).
    z : numpy.ndarray, shape (batch, out_features), optional
        The pre-activation ``x @ W + b``: required for an activation whose
        derivative reads its input (registry ``uses="input"``), unused otherwise.

    Returns
    -------
    dx : numpy.ndarray, shape (batch, in_features), or None
        ``dz @ W.T``; ``None`` when ``need_dx`` is False.
    dW : numpy.ndarray, shape (in_features, out_features)
        ``x.T @ dz``.
    db : numpy.ndarray, shape (out_features,)
        ``dz`` summed over the batch.

    Notes
    -----
    ``dz = dy * act'`` elementwise, with ``act'`` the registry entry's
    derivative, of the output ``y`` (relu ``0 if y <= 0 else 1``, sigmoid
    ``y (1 - y)``, tanh ``1 - y^2``, none ``1``) or of the pre-activation
    ``z``.  All arrays share ``x``'s dtype (float32 or float64).
    """
    need_dx = _V.boolean("need_dx", need_dx)     # a flag: "no" is not True
    _V.float_array(x, "x", 2)
    _V.float_array(W, "W", 2)
    _V.float_array(y, "y", 2)
    _V.float_array(dy, "dy", 2)
    dt = _V.same_dtype(x, "x", W, "W", y, "y", dy, "dy")
    n, d_in = x.shape
    if W.shape[0] != d_in:
        _V.shape(W, "W", (d_in, None), "W is (in_features, out_features) with in_features = x.shape[1]")
    d_out = W.shape[1]
    _V.shape(y, "y", (n, d_out), "the forward output, (x.shape[0], W.shape[1])")
    _V.shape(dy, "dy", (n, d_out), "the gradient of the forward output, (x.shape[0], W.shape[1])")
    entry, params = _OA.resolve(activation, activation_params, "linear_backward")
    t = y
    if entry.uses == "input":
        if z is None:
            raise ValueError(f"z: activation {entry.name!r} needs the pre-activation z = x @ W + b, got None")
        _V.float_array(z, "z", 2)
        _V.same_dtype(x, "x", z, "z")
        _V.shape(z, "z", (n, d_out), "the pre-activation x @ W + b, (x.shape[0], W.shape[1])")
        t = z
    P = _OA.param_array(entry, params, dt, f"linear_backward: activation {entry.name!r}")
    if entry.code == _IDENTITY:
        dz = dy  # read only
    else:
        dz = _np.empty((n, d_out), dt)
        _A.kernels(entry.code).bwd.pick(n * d_out)(t, dy, dz, False, P)
    dW = _np.empty((d_in, d_out), dt)
    _mm(x, dz, dW, True, False)
    db = _np.empty(d_out, dt)
    _L._colsum.pick(n * d_out)(dz, db, False)
    dx = None
    if need_dx:
        dx = _np.empty((n, d_in), dt)
        _mm(dz, W, dx, False, True)
    return dx, dW, db


def matmul(a, b, out=None):
    """Matrix product ``a @ b`` of 2-D arrays.

    Parameters
    ----------
    a : numpy.ndarray, shape (m, k)
        float32 or float64, C-contiguous.
    b : numpy.ndarray, shape (k, n)
        Same dtype as ``a``.
    out : numpy.ndarray, shape (m, n), optional
        Where to write the product; must not overlap ``a`` or ``b``.

    Returns
    -------
    numpy.ndarray, shape (m, n)
        Same dtype.  Gradients (for reference): ``da = dout @ b.T``,
        ``db = a.T @ dout``.
    """
    _V.float_array(a, "a", 2)
    _V.float_array(b, "b", 2)
    dt = _V.same_dtype(a, "a", b, "b")
    m, k = a.shape
    if b.shape[0] != k:
        _V.shape(b, "b", (k, None), "b.shape[0] must equal a.shape[1]")
    c = _check_out(out, "out", (m, b.shape[1]), dt, ((a, "a"), (b, "b")))
    _mm(a, b, c, False, False)
    return c


# ------------------------------------------------------------------ losses
def _scores(scores, nd=2):
    _V.float_array(scores, "scores", nd)
    if scores.size == 0:
        raise ValueError(f"scores: expected a non-empty array, got shape {_V.fmt_shape(scores.shape)}")
    return scores


def _class_loss(kern, scores, labels, out):
    _scores(scores)
    n, c = scores.shape
    y = _V.labels(labels, "labels", n, c)     # the caller's array itself when already int64
    # the kernel reads the labels while it writes out: an out that overlaps them is rejected too
    ds = _check_out(out, "out", (n, c), scores.dtype, ((scores, "scores"), (labels, "labels")))
    rowloss = _np.empty(n, _np.float64)
    loss = kern.pick(n * c)(scores, y, ds, rowloss)
    return float(loss), ds


def _target_loss(kern, scores, targets, out):
    _scores(scores, (1, 2))
    _V.float_array(targets, "targets")
    _V.same_dtype(scores, "scores", targets, "targets")
    _V.shape(targets, "targets", scores.shape, "one target per score")
    ds = _check_out(out, "out", scores.shape, scores.dtype, ((scores, "scores"), (targets, "targets")))
    s2, t2, d2 = _as2d(scores), _as2d(targets), _as2d(ds)
    rowloss = _np.empty(s2.shape[0], _np.float64)
    loss = kern.pick(scores.size)(s2, t2, d2, rowloss)
    return float(loss), ds


def softmax_cross_entropy(scores, labels, out=None):
    """Softmax cross-entropy loss and its gradient w.r.t. the scores.

    ``L = mean_i (log sum_j exp(s_ij) - s_{i, y_i})``.

    Parameters
    ----------
    scores : numpy.ndarray, shape (batch, n_classes)
        Unnormalised class scores (logits), float32 or float64, non-empty.
    labels : numpy.ndarray of int, shape (batch,)
        Class indices in ``[0, n_classes)`` (any integer dtype).
    out : numpy.ndarray, shape (batch, n_classes), optional
        Where to write ``dscores``; must not overlap ``scores`` or ``labels``.

    Returns
    -------
    loss : float
        The mean loss (accumulated in float64).
    dscores : numpy.ndarray, shape (batch, n_classes)
        ``dL/dscores = (softmax(scores) - onehot(labels)) / batch``, in the
        scores' dtype.

    Notes
    -----
    Each row is shifted by its maximum before ``exp``: finite and
    warning-free for any finite scores (e.g. +-1e4).
    """
    return _class_loss(_Ls._softmax_xent, scores, labels, out)


def svm_loss(scores, labels, out=None):
    """Multiclass SVM (hinge) loss of CS231n and its gradient.

    ``L = mean_i sum_{j != y_i} max(0, s_ij - s_{i, y_i} + 1)``.

    Parameters
    ----------
    scores : numpy.ndarray, shape (batch, n_classes)
        Class scores, float32 or float64, non-empty.
    labels : numpy.ndarray of int, shape (batch,)
        Class indices in ``[0, n_classes)``.
    out : numpy.ndarray, shape (batch, n_classes), optional
        Where to write ``dscores``; must not overlap ``scores`` or ``labels``.

    Returns
    -------
    loss : float
        The mean loss.
    dscores : numpy.ndarray, shape (batch, n_classes)
        ``1[margin_ij > 0] / batch`` for ``j != y_i`` and minus the number of
        positive margins over ``batch`` at ``j = y_i``.
    """
    return _class_loss(_Ls._svm, scores, labels, out)


def mse(scores, targets, out=None):
    """Mean squared error over all elements and its gradient.

    ``L = mean((scores - targets)^2)`` (PyTorch's ``reduction='mean'``).

    Parameters
    ----------
    scores : numpy.ndarray, shape (batch, n) or (n,)
        Predictions, float32 or float64, non-empty.
    targets : numpy.ndarray, shape of ``scores``
        Targets, same dtype.
    out : numpy.ndarray, shape of ``scores``, optional
        Where to write ``dscores``; must not overlap the inputs.

    Returns
    -------
    loss : float
        The mean loss.
    dscores : numpy.ndarray, shape of ``scores``
        ``2 (scores - targets) / scores.size``.
    """
    return _target_loss(_Ls._mse, scores, targets, out)


def bce_with_logits(scores, targets, out=None):
    """Binary cross-entropy on logits, mean over all elements, and its gradient.

    ``l = max(s, 0) - s t + log(1 + exp(-|s|))`` per element, the stable form
    of ``-(t log sigma(s) + (1 - t) log(1 - sigma(s)))``; finite and
    warning-free for any finite logits.

    Parameters
    ----------
    scores : numpy.ndarray, shape (batch, n) or (n,)
        Logits, float32 or float64, non-empty.
    targets : numpy.ndarray, shape of ``scores``
        Targets in ``[0, 1]``, same dtype.
    out : numpy.ndarray, shape of ``scores``, optional
        Where to write ``dscores``; must not overlap the inputs.

    Returns
    -------
    loss : float
        The mean loss.
    dscores : numpy.ndarray, shape of ``scores``
        ``(sigmoid(scores) - targets) / scores.size``.
    """
    return _target_loss(_Ls._bce_logits, scores, targets, out)


def poisson_loss(scores, targets, out=None):
    """Half Poisson deviance of ``mu = exp(scores)``, mean over all elements, and its gradient.

    ``L = mean(l)`` over all ``scores.size`` elements, with
    ``l = exp(s) - t s + xlogy(t, t) - t`` per element (``t log(t / mu) - t + mu``,
    the per-element term of scikit-learn's ``poisson_loss``).

    scikit-learn's ``sklearn.neural_network._base.poisson_loss(targets, exp(scores))``
    (the loss of ``MLPRegressor(loss='poisson')``) averages over the rows but *sums*
    over the outputs: for 2-D ``scores`` of shape ``(batch, n)`` it is ``n * L``
    (the same for 1-D ``scores`` or ``n == 1``).  :class:`fastbp.MLPRegressor`
    scales by ``n`` itself, so its ``loss_curve_`` is scikit-learn's.

    Parameters
    ----------
    scores : numpy.ndarray, shape (batch, n) or (n,)
        Log-means, float32 or float64, non-empty.
    targets : numpy.ndarray, shape of ``scores``
        Non-negative targets, same dtype (a negative one gives a NaN loss).
    out : numpy.ndarray, shape of ``scores``, optional
        Where to write ``dscores``; must not overlap the inputs.

    Returns
    -------
    loss : float
        The mean loss ``L`` over all elements (scikit-learn's divided by ``n``).
    dscores : numpy.ndarray, shape of ``scores``
        ``(exp(scores) - targets) / scores.size``.
    """
    return _target_loss(_Ls._poisson, scores, targets, out)
