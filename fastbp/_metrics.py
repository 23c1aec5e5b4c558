"""The metrics of a loss computed from a network's outputs: :func:`eval_loss`, :func:`accuracy`,
:func:`probabilities`, and :func:`r2_score` (re-exported by :mod:`fastbp.training`, where users
import them from).  Each checks its arrays first: a label column ``(n, 1)`` is taken as
scikit-learn's metrics take it, any other shape, dtype or label that would broadcast or index
into a wrong number is an error naming the argument."""
from __future__ import annotations

import numpy as _np

_CLASS_LOSSES = ("softmax_cross_entropy", "svm")


def _log_sigmoid(z):
    return -_np.logaddexp(0.0, -z)


def _scores(scores, name="scores"):
    """``scores`` as an array of shape (n, out_features) with n >= 1; TypeError / ValueError naming it."""
    s = _np.asarray(scores)
    if s.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {s.dtype}")
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"{name} must be of shape (n, out_features) with n >= 1, got shape {s.shape}")
    return s


def _class_labels(y, s, loss):
    """Integer labels ``(n,)`` (or a column ``(n, 1)``) in ``[0, out_features)``, one per row of ``s``."""
    y = _np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must hold integer class labels for loss {loss!r}, got dtype {y.dtype}")
    n, k = s.shape
    if y.shape != (n,):
        raise ValueError(f"y must be of shape ({n},), one label per row of scores, got shape {y.shape}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"y must hold class labels in [0, {k}) for {k} outputs, got {lo if lo < 0 else hi}")
    return y


def _float_targets(y, s, loss):
    """Targets of the shape of ``s`` (or ``(n,)`` for one output) as float64."""
    y = _np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold real-valued targets for loss {loss!r}, got dtype {y.dtype}")
    if y.ndim == 1 and s.shape[1] == 1:
        y = y[:, None]
    if y.shape != s.shape:
        raise ValueError(f"y must be of shape {s.shape}, the shape of scores, for loss {loss!r}, "
                         f"got shape {y.shape}")
    return y.astype(_np.float64)


def eval_loss(loss, scores, y):
    """The mean loss of ``scores`` against ``y`` as the compiled step defines it (float64).

    Parameters
    ----------
    loss : str
    scores : ndarray, shape (n, out_features)
    y : ndarray
        int64 labels ``(n,)`` (softmax_cross_entropy, svm) or float targets
        ``(n, out_features)`` (mse, bce_with_logits, poisson).

    Returns
    -------
    float

    Raises
    ------
    TypeError
        Scores that are not real numbers, labels that are not integers.
    ValueError
        An unknown loss, shapes that do not match, a label outside ``[0, out_features)``.
    """
    if loss not in _CLASS_LOSSES + ("mse", "bce_with_logits", "poisson"):
        raise ValueError(f"no evaluation defined for loss {loss!r}")
    s = _scores(scores).astype(_np.float64)
    n = s.shape[0]
    if loss in _CLASS_LOSSES:
        y = _class_labels(y, s, loss)
        if loss == "softmax_cross_entropy":
            m = s.max(axis=1, keepdims=True)
            lse = (m + _np.log(_np.exp(s - m).sum(axis=1, keepdims=True)))[:, 0]
            return float(_np.mean(lse - s[_np.arange(n), y]))
        sy = s[_np.arange(n), y][:, None]
        margins = _np.maximum(0.0, s - sy + 1.0)
        margins[_np.arange(n), y] = 0.0
        return float(_np.mean(margins.sum(axis=1)))
    t = _float_targets(y, s, loss)
    if loss == "mse":
        return float(_np.mean((s - t) ** 2))
    if loss == "bce_with_logits":
        return float(_np.mean(-(t * _log_sigmoid(s) + (1.0 - t) * _log_sigmoid(-s))))
    with _np.errstate(divide="ignore", invalid="ignore"):       # poisson
        c = _np.where(t > 0, t * _np.log(_np.where(t > 0, t, 1.0)) - t, _np.where(t == 0, 0.0, _np.nan))
    return float(_np.mean(_np.exp(s) - t * s + c))


def accuracy(loss, scores, y):
    """The accuracy of a network's outputs.

    Parameters
    ----------
    loss : str
        The step's loss name.
    scores : ndarray, shape (n, out_features)
        The network's outputs (logits).
    y : ndarray
        Integer labels ``(n,)``, or for ``bce_with_logits`` float targets ``(n, out_features)``.

    Returns
    -------
    float or None
        The fraction right: the argmax is the label (softmax_cross_entropy, svm), or every output
        above 0 where its target is above 0.5 (bce_with_logits, Keras's binary accuracy); None for
        the regression losses (mse, poisson).

    Raises
    ------
    TypeError, ValueError
        As :func:`eval_loss`.
    """
    if loss in _CLASS_LOSSES:
        s = _scores(scores)
        return float(_np.mean(_np.argmax(s, axis=1) == _class_labels(y, s, loss)))
    if loss == "bce_with_logits":
        s = _scores(scores)
        return float(_np.mean((s > 0) == (_float_targets(y, s, loss) > 0.5)))
    return None


def r2_score(y, pred):
    """R^2 as ``sklearn.metrics.r2_score(y, pred)`` computes it by default.

    Parameters
    ----------
    y, pred : array-like, shape (n,) or (n, outputs)
        Targets and predictions.

    Returns
    -------
    float
        Per output (column), averaged over outputs (``multioutput="uniform_average"``);
        ``force_finite=True``: an output whose targets are all equal scores 1.0 when
        it is predicted exactly and 0.0 otherwise; NaN with scikit-learn's warning
        (a ``UserWarning``) for fewer than two samples.

    Raises
    ------
    ValueError
        ``y`` and ``pred`` of different shapes (a column ``(n, 1)`` is ``(n,)``).
    """
    y, pred = _np.asarray(y, dtype=_np.float64), _np.asarray(pred, dtype=_np.float64)
    shapes = y.shape, pred.shape
    if (y.ndim <= 1 or pred.ndim <= 1) and y.size == len(y) and pred.size == len(pred):
        y, pred = y.reshape(-1, 1), pred.reshape(-1, 1)        # (n,) and (n, 1) alike
    if y.ndim != 2 or y.shape != pred.shape:
        raise ValueError(f"r2_score: y and pred must have the same shape, got {shapes[0]} and {shapes[1]}")
    if len(pred) < 2:
        __import__("warnings").warn("R^2 score is not well-defined with less than two samples.", UserWarning, 2)
        return float("nan")
    num = _np.sum((y - pred) ** 2, axis=0)
    den = _np.sum((y - _np.mean(y, axis=0)) ** 2, axis=0)
    scores = _np.ones(y.shape[1])
    ok = (den != 0) & (num != 0)
    scores[ok] = 1.0 - num[ok] / den[ok]
    scores[(num != 0) & (den == 0)] = 0.0
    return float(_np.mean(scores))


def probabilities(loss, scores):
    """Class probabilities from a network's outputs.

    Parameters
    ----------
    loss : str
        The step's loss name.
    scores : ndarray of float32 or float64, shape (n, out_features)
        The network's outputs (logits).

    Returns
    -------
    ndarray, shape (n, out_features), the dtype of ``scores``
        Softmax of each row (softmax_cross_entropy) or the sigmoid of each output (bce_with_logits).

    Raises
    ------
    ValueError
        For the losses whose outputs are not probabilities (mse, svm, poisson); ``scores`` not
        two-dimensional.
    TypeError
        ``scores`` not float32 or float64.
    """
    if loss not in ("softmax_cross_entropy", "bce_with_logits"):
        raise ValueError(f"predict_proba needs a probabilistic loss (softmax_cross_entropy or bce_with_logits); "
                         f"this step's loss is {loss!r}, whose outputs are not probabilities (use predict)")
    scores = _np.asarray(scores)
    if scores.dtype not in (_np.float32, _np.float64):
        raise TypeError(f"scores must be float32 or float64 logits, got dtype {scores.dtype}")
    if scores.ndim != 2:
        raise ValueError(f"scores must be of shape (n, out_features), got shape {scores.shape}")
    if loss == "softmax_cross_entropy":
        e = _np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    out = _np.empty_like(scores)
    pos = scores >= 0
    out[pos] = 1.0 / (1.0 + _np.exp(-scores[pos]))
    ez = _np.exp(scores[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


for _f in (eval_loss, accuracy, r2_score, probabilities):
    _f.__module__ = "fastbp.training"           # where users import them from
