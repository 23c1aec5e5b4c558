"""Loss kernels: the mean loss and its gradient w.r.t. the scores in one pass.

Every kernel takes the scores ``S (B, C)``, the targets, a caller-allocated
gradient ``dS (B, C)`` and a per-row workspace ``rowloss (B,)``, and returns
the mean loss as a float64.  Per-row losses are summed serially in row
order, so the result does not depend on the number of threads.

Targets: integer labels ``y (B,)`` (int64) for the classification losses,
a float array ``T (B, C)`` for the regression-style ones.  Labels must be
checked with :func:`_check_labels` first.
"""
import math

from numba import prange

from .._jit import int64_bits_as_float64, jit, kernel, stack_tile
from ..registry import losses as _L
from ..registry.activations import sigmoid as _sigmoid
from .factory import specialise

#: the logistic function of one scalar: the activation registry's sigmoid
_sigmoid1 = jit(_sigmoid)

# the loss registry's row bodies, compiled for the CPU (inlined into the kernels' loops)
_mse_row = jit(inline=True)(_L.mse_row)
_bce_logits_row = jit(inline=True)(specialise(_L.bce_logits_row, "__cpu", _sigmoid=_sigmoid1))
_svm_row = jit(inline=True)(_L.svm_row)
#: no fast-math: LLVM reassociated the row's sum differently in the serial kernel and in
#: the parallel loop (float64 row losses 1 ulp apart between thread counts)
_poisson_row = jit(fastmath=False)(_L.poisson_row)


@jit(python=True)      # (fastbp._validate checks labels with it)
def _check_labels(y, n_classes):
    """Index of the first label outside ``[0, n_classes)``, or -1."""
    for i in range(y.shape[0]):
        if y[i] < 0 or y[i] >= n_classes:
            return i
    return -1


@jit
def _exp_nonpos(x):
    """``exp(x)`` for ``x <= 0``, in float64 arithmetic, within ~1.3 ulp of float64.

    Straight-line code without a libm call, so a loop over it vectorises
    (measured: softmax cross-entropy 2x faster than with ``math.exp``, 32x10
    to 1024x1024).  ``exp(x) = 2**k * exp(r)`` with ``k = round(x / ln 2)``,
    ``|r| <= ln(2)/2`` (Cody-Waite split of ln 2); ``exp(r)`` by its degree-12
    Taylor polynomial (truncation < 2e-16); ``2**k`` from its exponent bits.
    Arguments below -80 are clamped to -80 (the callers flush such results to
    0); NaN stays NaN.
    """
    x = float(x)
    if x < -80.0:
        x = -80.0
    k = math.floor(x * 1.4426950408889634 + 0.5)
    r = (x - k * 0.6931471803691238) - k * 1.9082149292705877e-10
    p = 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * int64_bits_as_float64((int(k) + 1023) << 52)


@jit
def _sum_rows(rowloss, n):
    s = 0.0
    for i in range(n):
        s += rowloss[i]
    return s


@jit(fastmath=False)
def _row_sum(A, i, t, scale):
    """``(r, scale / (r + A[i, t]))`` for the sum ``r`` of row ``i`` of ``A`` but its
    column ``t`` (softmax cross-entropy's other classes), in one fixed order of operations
    whatever the loop this is compiled into (no fast-math): 32 interleaved partial sums on
    the stack (independent lanes, which vectorise without reassociation), then added up in
    order, with ``A[i, t]`` read as 0 (set to 0 and restored).  (With fast-math, LLVM
    compiled the sum and the reciprocal differently in the serial kernel and in the
    parallel loop: float64 results 1 ulp apart between thread counts.)"""
    n = A.shape[1]
    zero = A.dtype.type(0.0)
    et = A[i, t]
    A[i, t] = zero
    s = zero
    j0 = 0
    if n >= 64:
        acc = stack_tile(A.dtype)
        for l in range(32):
            acc[l] = s
        j0 = n - n % 32
        for j in range(0, j0, 32):
            for l in range(32):
                acc[l] += A[i, j + l]
        for l in range(32):
            s += acc[l]
    for j in range(j0, n):
        s += A[i, j]
    A[i, t] = et
    return s, (A.dtype.type(1.0) / (s + et)) * scale


# softmax cross-entropy's phases (the loss registry's bodies) with the CPU's exp and row sum
_xent_shift_row = jit(inline=True)(_L.xent_shift_row)
_xent_prob = jit(inline=True)(specialise(_L.xent_prob, "__cpu", _exp=_exp_nonpos))
_xent_finish_row = jit(inline=True)(specialise(_L.xent_finish_row, "__cpu", _row_sum=_row_sum))


@kernel
def _softmax_xent(S, y, dS, rowloss):
    """Softmax cross-entropy ``L = mean_i(logsumexp(S_i) - S_i[y_i])``.

    Derivative: ``dL/dS = (softmax(S) - onehot(y)) / B``.  The shift by the
    row maximum keeps ``exp`` finite for any finite score.  Three passes, the
    phases of :mod:`fastbp.registry.losses` (``xent_shift_row``, ``xent_prob``,
    ``xent_finish_row``): shifted scores into ``dS`` (row maxima kept in
    ``rowloss``), one flat vectorised ``exp`` over all of ``dS``
    (:func:`_exp_nonpos`; probabilities below 1e-30 flushed to 0), then the row
    sums, normalisation and losses.
    """
    B = S.shape[0]
    scale = S.dtype.type(1.0 / B)
    zero = S.dtype.type(0.0)
    for i in prange(B):
        rowloss[i] = _xent_shift_row(S, dS, i)
    f = dS.ravel()
    # one flat loop (a loop nest over chunks did not vectorise: 3x slower); flushing the
    # probabilities below 1e-30 keeps subnormal gradients out of the later products (measured:
    # 20 us instead of 2.5 us for a 32x32x10 dW)
    for t in prange(f.shape[0]):
        f[t] = _xent_prob(f[t], zero)
    for i in prange(B):
        rowloss[i] = _xent_finish_row(S, y, dS, i, rowloss[i], scale)
    return _sum_rows(rowloss, B) / B


@kernel
def _mse(S, T, dS, rowloss):
    """Mean squared error over all elements ``L = mean((S - T)^2)``.

    Derivative: ``dL/dS = 2 (S - T) / (B C)`` (rows: :func:`fastbp.registry.losses.mse_row`).
    """
    B, C = S.shape
    scale = S.dtype.type(2.0 / (B * C))
    for i in prange(B):
        rowloss[i] = _mse_row(S, T, dS, i, scale)
    return _sum_rows(rowloss, B) / (B * C)


@kernel
def _bce_logits(S, T, dS, rowloss):
    """Binary cross-entropy on logits, mean over all elements.

    ``l = max(s, 0) - s t + log(1 + exp(-|s|))`` (finite for any finite
    ``s``); derivative ``dL/ds = (sigmoid(s) - t) / (B C)`` (rows:
    :func:`fastbp.registry.losses.bce_logits_row`).
    """
    B, C = S.shape
    scale = S.dtype.type(1.0 / (B * C))
    for i in prange(B):
        rowloss[i] = _bce_logits_row(S, T, dS, i, scale)
    return _sum_rows(rowloss, B) / (B * C)


@kernel
def _poisson(S, T, dS, rowloss):
    """Half Poisson deviance with a log link, mean over all elements.

    ``l = exp(s) - t s + xlogy(t, t) - t`` (``= t log(t / mu) - t + mu``, ``mu =
    exp(s)``: scikit-learn's ``poisson_loss`` of ``mu``; a negative target gives
    NaN); derivative ``dL/ds = (exp(s) - t) / (B C)`` (rows:
    :func:`fastbp.registry.losses.poisson_row`).
    """
    B, C = S.shape
    scale = S.dtype.type(1.0 / (B * C))
    for i in prange(B):
        rowloss[i] = _poisson_row(S, T, dS, i, scale)
    return _sum_rows(rowloss, B) / (B * C)


@kernel
def _svm(S, y, dS, rowloss):
    """Multiclass hinge loss (CS231n) ``L = mean_i sum_{j != y_i} max(0, S_ij - S_iy + 1)``.

    Derivative: ``dL/dS_ij = 1[margin_ij > 0] / B`` for ``j != y_i`` and
    ``dL/dS_iy = -(number of positive margins) / B`` (rows:
    :func:`fastbp.registry.losses.svm_row`).
    """
    B, C = S.shape
    scale = S.dtype.type(1.0 / B)
    for i in prange(B):
        rowloss[i] = _svm_row(S, y, dS, i, scale)
    return _sum_rows(rowloss, B) / B


_clipped_log_loss_row = jit(inline=True)(_L.clipped_log_loss_row)


@jit
def clip_log_loss(S, T, rowloss, bce, eps):
    """scikit-learn's reported log-loss after a softmax cross-entropy (``bce`` false) or BCE
    on logits kernel (``bce`` true) has filled ``rowloss[:B]``: each row's loss with its
    probabilities clipped to ``[eps, 1 - eps]``
    (:func:`fastbp.registry.losses.clipped_log_loss_row`), written back into ``rowloss``; returns the
    mean the loss kernel returns (over the rows, or over the elements for BCE).  ``T``: the
    float targets (BCE; the scores otherwise, unread).  No derivative: the value only (the
    gradient the loss kernel wrote stays).  Called inside the interpreter while
    ``hyper[H_LOSS_CLIP]`` holds ``eps`` (the estimators)."""
    B = S.shape[0]
    for i in range(B):
        rowloss[i] = _clipped_log_loss_row(S, T, rowloss, i, bce, eps)
    s = _sum_rows(rowloss, B)
    return s / (B * S.shape[1]) if bce else s / B


@jit
def weigh_rows(dS, rowloss, ws64, w0, per_element):
    """Sample weights (``ws64[w0 : w0 + B]``) applied to a loss kernel's result: its
    unweighted mean ``sum_i rowloss_i / (B k)`` (``k`` = C for a loss averaged over the
    elements, else 1) becomes ``sum_i w_i rowloss_i / (k sum_i w_i)``, scikit-learn's
    weighted mean, and row ``i`` of its gradient ``dS`` is multiplied by ``B w_i / sum(w)``.
    Returns the weighted loss; NaN (a non-finite loss to the caller) when the weights sum
    to 0 or ``ws64`` has no room for them.  Weights beyond ``2^+-400`` are first scaled in
    ``ws64`` by an exact power of two (scale-invariant).  Called inside the interpreter."""
    B = dS.shape[0]
    if ws64.shape[0] < w0 + B:
        return math.nan
    w = ws64[w0:w0 + B]
    wmax = 0.0
    for i in range(B):
        wmax = max(wmax, w[i])
    if 0.0 < wmax < math.inf and not 2.0 ** -400 <= wmax <= 2.0 ** 400:
        # subnormal or huge weights (all 5e-324 gave a loss of 0.5 and NaN gradients): scaled
        # in their buffer by an exact power of two, so that they weigh as their ratios say
        e = math.frexp(wmax)[1]
        for i in range(B):
            w[i] = math.ldexp(w[i], -e)
    sw = 0.0
    swl = 0.0
    for i in range(B):
        sw += w[i]
        swl += w[i] * rowloss[i]
    if sw == 0.0:
        return math.nan
    for i in range(B):
        c = dS.dtype.type(B * w[i] / sw)
        for j in range(dS.shape[1]):
            dS[i, j] *= c
    return swl / (sw * (dS.shape[1] if per_element else 1))
