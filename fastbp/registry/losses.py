"""The loss registry: every loss fastbp trains with, defined once.

An entry gives the loss's code (in the tape), its names (fastbp's, the
``torch.nn`` class ``from_torch`` maps, with the arguments fastbp implements),
what its targets are (integer class labels or float arrays), its formula and
gradient, and the kernels that implement it on each target: the CPU kernel
in :mod:`fastbp.kernels.losses` (called by address from the executor,
:mod:`fastbp.kernels.table`), the CUDA launcher in
:mod:`fastbp.kernels.cuda.losses` and the ``fastbp.ops`` wrapper.  Every
consumer (the compiler, the executor's kernel table, the CUDA interpreter,
the step's target checks, the CLI's ``--loss`` choices, ``from_torch``)
looks up this table; an unknown name or code is a ValueError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Loss", "get", "by_code", "entries", "names", "classification_names", "regression_names"]


@dataclass(frozen=True)
class Loss:
    """One loss.

    Attributes
    ----------
    code : int
        Its code in the tape (``OP_LOSS``'s ``C_G``).
    name : str
        fastbp's name (``compile(loss=...)``, CLI ``--loss``).
    targets : {"labels", "float"}
        Integer class labels ``(batch,)`` or float targets of the scores' shape.
    formula, gradient : str
        The mean loss and ``dL/dS``, as text.
    cpu, cuda, ops : str
        The CPU kernel (:mod:`fastbp.kernels.losses`), the CUDA launcher
        (:mod:`fastbp.kernels.cuda.losses`) and the ``fastbp.ops`` wrapper.
    torch : str or None
        The ``torch.nn`` loss class ``from_torch`` maps to it.
    torch_args : tuple of (str, object)
        The arguments of that class fastbp implements, with the only value it
        implements (``from_torch`` rejects others).
    regression : bool
        Its targets are real values the outputs predict (a regression
        model: a plain checkpoint of it loads as ``task='regression'``),
        not class labels or 0/1 indicators.
    nonnegative_targets : bool
        Its targets must be finite and >= 0 (counts); the step refuses
        others with a ValueError before it runs.
    """
    code: int
    name: str
    targets: str
    formula: str
    gradient: str
    cpu: str
    cuda: str
    ops: str
    torch: str | None = None
    torch_args: tuple = ()
    regression: bool = False
    nonnegative_targets: bool = False


_ENTRIES = (
    Loss(0, "softmax_cross_entropy", "labels", "mean_i (log sum_j exp(s_ij) - s_{i, y_i})",
         "(softmax(S) - onehot(y)) / B", "_softmax_xent", "_softmax_xent", "softmax_cross_entropy",
         torch="CrossEntropyLoss",
         torch_args=(("reduction", "mean"), ("weight", None), ("ignore_index", -100), ("label_smoothing", 0.0))),
    Loss(1, "mse", "float", "mean((S - T)^2)", "2 (S - T) / S.size", "_mse", "_mse", "mse",
         torch="MSELoss", torch_args=(("reduction", "mean"),), regression=True),
    Loss(2, "bce_with_logits", "float", "mean(max(s, 0) - s t + log(1 + exp(-|s|)))", "(sigmoid(S) - T) / S.size",
         "_bce_logits", "_bce_logits", "bce_with_logits",
         torch="BCEWithLogitsLoss", torch_args=(("reduction", "mean"), ("weight", None), ("pos_weight", None))),
    # torch.nn.MultiMarginLoss divides by the number of classes: not the same loss
    Loss(3, "svm", "labels", "mean_i sum_{j != y_i} max(0, s_ij - s_{i, y_i} + 1)",
         "1[margin > 0] / B (j != y_i), -(number of positive margins) / B (j = y_i)", "_svm", "_svm", "svm_loss"),
    Loss(4, "poisson", "float", "mean(exp(s) - t s + xlogy(t, t) - t): the half Poisson deviance of mu = exp(s), "
         "scikit-learn's MLPRegressor(loss='poisson') with its exp output", "(exp(S) - T) / S.size",
         "_poisson", "_poisson", "poisson_loss", regression=True, nonnegative_targets=True),
)
_BY_NAME = {e.name: e for e in _ENTRIES}
_BY_CODE = {e.code: e for e in _ENTRIES}


def entries():
    """Every loss, by code."""
    return list(_ENTRIES)


def names():
    """Every loss name, by code."""
    return tuple(e.name for e in _ENTRIES)


def classification_names():
    """The losses whose targets are integer class labels."""
    return frozenset(e.name for e in _ENTRIES if e.targets == "labels")


def regression_names():
    """The losses of regression models (real-valued targets: ``mse``, ``poisson``)."""
    return frozenset(e.name for e in _ENTRIES if e.regression)


class LossTypeError(TypeError, ValueError):
    """A loss given as something other than a name (``loss=1``, ``None``, a list): a TypeError,
    and a ValueError as an unknown name is (what it was before: code catching that still does)."""


def get(name):
    """The loss named ``name``; ValueError (listing the names) if there is none, a
    :class:`LossTypeError` (a TypeError and a ValueError) if ``name`` is not a str."""
    if not isinstance(name, str):
        raise LossTypeError(f"loss must be a str naming a loss, got {type(name).__name__} {name!r}; "
                            f"valid losses: {', '.join(sorted(_BY_NAME))}")
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(sorted(_BY_NAME))}") from None


def by_code(code):
    """The loss with tape code ``code``; ValueError for an unknown code."""
    try:
        return _BY_CODE[int(code)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"unknown loss code {code!r}; known codes are {sorted(_BY_CODE)}") from None


# ------------------------------------------------------------------ row bodies
# Row i of a loss: writes dL/dS for row i into dS (``scale``: 1/B, or 1/(B C)
# for the losses averaged over the elements) and returns the row's loss (a
# float64 accumulator).  The one body the CPU kernels (:mod:`fastbp.kernels.losses`,
# a loop over rows) and the CUDA kernels (:mod:`fastbp.kernels.cuda.losses`, one
# thread per row) compile; ``_sigmoid`` is the activation registry's sigmoid,
# compiled for the same target (``fastbp.kernels.factory.specialise``).  Softmax
# cross-entropy comes in three phases (shift, exp, normalise), because the CPU runs its exp
# as one flat vectorised loop over the whole minibatch; the CUDA kernel runs the three on
# its row.

#: ln(1e-30): softmax probabilities below exp of this are flushed to 0 on every target (they
#: change no float32 sum, and as subnormal gradients they would slow every later product)
XENT_FLUSH_BELOW = -69.07755278982137


def xent_shift_row(S, dS, i):
    """Softmax cross-entropy, first phase, row ``i``: ``dS[i] = S[i] - m`` with ``m`` the
    row's maximum (so that every ``exp`` below is of a non-positive number: finite for any
    finite score); returns ``m``."""
    m = S[i, 0]
    for j in range(1, S.shape[1]):
        if S[i, j] > m:
            m = S[i, j]
    for j in range(S.shape[1]):
        dS[i, j] = S[i, j] - m
    return m


def xent_prob(v, zero):
    """Softmax cross-entropy, second phase, one element: the unnormalised probability
    ``exp(v)`` of a shifted score ``v <= 0`` (``_exp``: the target's exp, injected), ``zero``
    below ``XENT_FLUSH_BELOW``; NaN stays NaN.  An elementwise body, so that the CPU kernel
    runs it as one flat loop that vectorises."""
    e = _exp(v)  # noqa: F821 - injected per target
    return zero if v < XENT_FLUSH_BELOW else e


def xent_finish_row(S, y, dS, i, m, scale):
    """Softmax cross-entropy, third phase, row ``i`` (``dS[i]`` holds the unnormalised
    probabilities ``e_j = exp(s_ij - m)``, ``m`` the row's maximum): ``dL/ds_ij =
    (p_ij - 1[j = y_i]) * scale`` with ``p_ij = e_j / s``, ``s = sum_k e_k`` (``scale`` = 1/B);
    returns the row's loss ``-log p_{i, y_i}``.  ``y[i]`` must be a valid class.

    The target's ``e_t`` is left out of the row sum: ``r``, the other classes' sum, gives the
    target's derivative as ``p_t - 1 = -r / s`` and, where the target is at (or within a
    factor 2 of) the row's maximum, the loss as ``log(1 + r / e_t)`` (``log1p``), without
    the cancellation of ``p_t - 1`` and ``log(s) - log(e_t)`` when the prediction is right to
    within the float type's resolution (in float32 ``1 + 3.4e-9`` is 1: that loss and that
    derivative would be 0); elsewhere the loss is ``log(s) + m - s_{i, y_i}``.
    ``_row_sum(A, i, t, scale) -> (sum of row i but column t, scale / (that sum + A[i, t]))``
    is the target's (injected)."""
    yi = y[i]
    et = dS[i, yi]
    r, w = _row_sum(dS, i, yi, scale)  # noqa: F821 - injected per target
    for j in range(S.shape[1]):
        dS[i, j] = dS[i, j] * w
    dS[i, yi] = -(r * w)
    if et >= type(et)(0.5):     # (in the scores' type: no float64 arithmetic in a float32 kernel)
        return math.log1p(r / et)
    return math.log(r + et) + m - S[i, yi]


def mse_row(S, T, dS, i, scale):
    """``sum_j (s_ij - t_ij)^2``; ``dL/ds_ij = scale * 2 (s_ij - t_ij)`` (``scale`` = 2/(B C))."""
    r = 0.0
    for j in range(S.shape[1]):
        d = S[i, j] - T[i, j]
        dS[i, j] = scale * d
        r += d * d
    return r


def bce_logits_row(S, T, dS, i, scale):
    """``sum_j max(s, 0) - s t + log(1 + exp(-|s|))`` (finite for any finite ``s``; at an
    infinite ``s`` its limit: ``(1 - t) inf`` at ``+inf``, ``t inf`` at ``-inf``, 0 for ``t`` 1 or 0);
    ``dL/ds = (sigmoid(s) - t) * scale``, computed as ``sigmoid(s) (1 - t) - t sigmoid(-s)``
    (the same for any ``t``): no cancellation where ``sigmoid(s)`` rounds to a target of 1
    (in float32 ``sigmoid(20) - 1`` is 0; this gives ``-sigmoid(-20) = -2.06e-9``)."""
    r = 0.0
    for j in range(S.shape[1]):
        s = S[i, j]
        t = T[i, j]
        if s == math.inf or s == -math.inf:
            # the loss's limit at an infinite logit, (1 - t) inf or t inf (inf - inf t was NaN)
            c = (1.0 - t) if s > 0.0 else t
            r += 0.0 if c == 0.0 else c * math.inf
        else:
            r += max(s, 0.0) - s * t + math.log1p(math.exp(-abs(s)))
        dS[i, j] = (_sigmoid(s) * (type(t)(1.0) - t) - t * _sigmoid(-s)) * scale  # noqa: F821 - injected
    return r


def clipped_log_loss_row(S, T, rowloss, i, bce, eps):
    """Row ``i``'s loss as scikit-learn's MLP reports it: the log-loss of probabilities
    clipped to ``[eps, 1 - eps]`` before the log (``sklearn.neural_network._base.log_loss``
    and ``binary_log_loss``).  A value only: the gradient stays the unclipped one, as
    scikit-learn's ``p - y``.

    Softmax cross-entropy (``bce`` false): ``rowloss[i]``, the kernel's ``-log p_{i, y_i}``,
    clamped to ``[-log(1 - eps), -log(eps)]``.  BCE on logits: scikit-learn's own
    evaluation, ``-sum_j xlogy(t, p) + xlogy(1 - t, 1 - p)`` with ``p = 1 / (1 + exp(-s))``
    (its ``expit``) clipped, so that its rounding of ``1 - p`` near ``p = 1`` (which makes
    ``-log(1 - p)`` up to 1e-3 off at ``s = 30``) is reproduced too: the value, not a better
    one, is what its stopping rule and L-BFGS read.  NaN stays NaN."""
    if not bce:
        v = rowloss[i]
        lo = -math.log(1.0 - eps)
        hi = -math.log(eps)
        if v < lo:
            return lo
        if v > hi:
            return hi
        return v
    r = 0.0
    for j in range(S.shape[1]):
        t = float(T[i, j])
        p = 1.0 / (1.0 + math.exp(-float(S[i, j])))
        if p < eps:
            p = eps
        elif p > 1.0 - eps:
            p = 1.0 - eps
        if t != 0.0:
            r -= t * math.log(p)
        if t != 1.0:
            r -= (1.0 - t) * math.log(1.0 - p)
    return r


def poisson_row(S, T, dS, i, scale):
    """``sum_j exp(s) - t s + xlogy(t, t) - t`` (a negative target: NaN);
    ``dL/ds = (exp(s) - t) * scale``.  Compiled without fast-math on the CPU
    (one order of operations in the serial and the parallel kernel)."""
    r = 0.0
    for j in range(S.shape[1]):
        s = S[i, j]
        t = T[i, j]
        mu = math.exp(s)
        dS[i, j] = (mu - t) * scale
        if t > 0.0:
            c = t * math.log(t) - t
        elif t == 0.0:
            c = 0.0 * t
        else:
            c = math.nan
        r += mu - t * s + c
    return r


def svm_row(S, y, dS, i, scale):
    """Multiclass hinge ``sum_{j != y} max(0, s_j - s_y + 1)``; ``dL/ds_j = scale *
    1[margin_j > 0]`` (j != y), ``dL/ds_y = -scale * (number of positive margins)``.
    A NaN margin makes the row's loss and ``dS[i, y]`` NaN.  ``y[i]`` must be a
    valid class (checked by the caller)."""
    zero = S.dtype.type(0.0)
    yi = y[i]
    sy = S[i, yi]
    r = 0.0
    cnt = 0
    nan = False
    for j in range(S.shape[1]):
        if j == yi:
            dS[i, j] = zero
            continue
        mg = S[i, j] - sy + 1.0
        if mg > 0:
            r += mg
            cnt += 1
            dS[i, j] = scale
        elif mg != mg:
            # NaN score: propagate it to the loss and the gradient (the step's
            # status check then rejects the step: nothing is applied)
            r += mg
            nan = True
            dS[i, j] = mg
        else:
            dS[i, j] = zero
    if nan:
        dS[i, yi] = r  # NaN
    else:
        dS[i, yi] = -cnt * scale
    return r
