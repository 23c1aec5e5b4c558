"""Training paths of the estimators beyond one ``step.fit`` per epoch: sample and class
weights, the minibatch size of each call (:func:`fit_batch_size`), and ``solver='lbfgs'``
(used by :class:`fastbp._estimator_base._BaseMLP`).

Sample weights follow scikit-learn's MLP (``BaseMultilayerPerceptron._backprop``):
each minibatch's loss is the weighted mean ``sum_i w_i l_i / sum_i w_i`` and its L2
term ``alpha ||W||^2 / (2 sum_i w_i)``; the weights enter the loss inside the fused
step (:meth:`fastbp.TrainStep.__call__` with ``sample_weight``), not by resampling.

Imported by :mod:`fastbp._estimator_base` only; needs scikit-learn.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
from sklearn.utils.validation import _check_sample_weight

from . import _isa
from . import _executor as ex
from ._estimator_rows import chunk_rows
from ._estimator_state import transfer_step_state, warn_after_fit

__all__ = ["fit_weights", "check_split_weights", "validation_stratify", "batch_sizes", "fit_batch_size",
           "ordered_epoch", "weighted_epoch", "fit_lbfgs"]


def fit_weights(est, X, Y, sample_weight, incremental):
    """The per-row weights of a fit: ``sample_weight`` (scikit-learn's checks) times the
    class weights of ``est`` (a classifier's ``class_weight``); None when both are absent.

    Raises
    ------
    ValueError
        ``sample_weight`` of the wrong length or not finite (scikit-learn's messages), with a
        negative value (naming the first one's row in the caller's order), or weights whose
        sum is not positive; all found before any training.
    """
    w = None
    negative = ""
    if sample_weight is not None:
        # scikit-learn's checks (length, finite), then fastbp's: no negative weight, found
        # here, before any update, by the user's row number
        w = _check_sample_weight(sample_weight, X, dtype=np.float64)
        neg = np.flatnonzero(w < 0)
        if neg.size:
            i = int(neg[0])
            negative = (f"sample_weight[{i}] is {float(w[i])!r}"
                        + (f", and {neg.size - 1} more are negative" if neg.size > 1 else ""))
    cw = est._row_class_weights(Y, incremental)
    if cw is not None:
        w = cw if w is None else w * cw
    if w is not None and not np.sum(w) > 0:
        raise ValueError(f"sample_weight: the weights (times the class weights) sum to {float(np.sum(w)):g}; "
                         "their sum must be positive" + (f", and each weight >= 0 ({negative})" if negative else ""))
    if negative:
        raise ValueError(f"sample_weight must be >= 0 (fastbp refuses negative weights): {negative}")
    return w


def check_split_weights(W_train, W_val):
    """Check the weights of the two sides of ``early_stopping=True``'s split, before any
    training: each needs a positive sum (scikit-learn's message: its training fails on
    them, its validation score refuses them).

    Raises
    ------
    ValueError
        The training or the validation rows' ``sample_weight`` (times the class weights)
        are all 0, naming ``sample_weight`` and ``validation_fraction``.
    """
    for what, w in (("training", W_train), ("validation", W_val)):
        if not float(np.sum(w)) > 0:
            raise ValueError(
                "Sample weights must contain at least one non-zero number. sample_weight (times the "
                f"class weights) is 0 on every one of the {w.size} {what} rows of early_stopping=True's "
                "split; change sample_weight, validation_fraction or random_state")


def validation_stratify(est, Y):
    """Check that ``early_stopping=True`` can hold out a validation set; return the labels
    to stratify its split by (``train_test_split``'s ``stratify``), or None.

    The validation set is ``ceil(validation_fraction * n_samples)`` rows, as
    ``train_test_split`` takes them; fewer than 2 (``validation_fraction=0`` included), or
    no row left to train on, is a ValueError naming ``validation_fraction``, as
    scikit-learn's "validation set is too small".  A single-label classifier's split is
    stratified by class where it can be (every class present has 2 or more rows, and both
    sets room for one row of each); otherwise, e.g. a small multiclass problem, it is a
    plain random split, the one scikit-learn makes for every multiclass problem.
    """
    n = Y.shape[0]
    vf = float(est.validation_fraction)
    n_val = int(np.ceil(vf * n))
    held = (f"early_stopping=True holds out ceil(validation_fraction * n_samples) = ceil({vf!r} * {n}) = "
            f"{n_val} of the {n} samples for validation")
    if n_val < 2:
        raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                         f"your dataset: {held}; it needs at least 2.")
    if n_val >= n:
        raise ValueError(f"No sample is left to train on. Decrease 'validation_fraction' or increase the size "
                         f"of your dataset: {held}.")
    if not est._is_classifier_single_label():
        return None
    counts = np.bincount(Y)
    counts = counts[counts > 0]
    k = counts.size
    return Y if (counts.min() >= 2 and n_val >= k and n - n_val >= k) else None


def batch_sizes(n, bs):
    """The rows of each minibatch of an epoch of ``n`` rows in minibatches of ``bs`` (float64)."""
    full, rem = divmod(n, bs)
    sizes = np.full(full + (1 if rem else 0), bs, dtype=np.float64)
    if rem:
        sizes[-1] = rem
    return sizes


def fit_batch_size(est, bs, n):
    """Make ``est``'s step train an ``n``-row call in minibatches of ``bs`` rows, ``bs <= n``.

    The compiled step trains any minibatch of 1 to its ``batch_size`` rows, and its
    ``fit`` cuts an epoch into minibatches of ``batch_size`` rows: it serves as it is
    when that is ``bs``, or when the call is one minibatch (``bs == n``) that fits.
    Otherwise (a later ``partial_fit`` with more rows or another ``batch_size``, or an
    ``alpha`` set from or to 0) it is compiled again for ``bs`` and this ``alpha``,
    keeping the weights, the optimizer and its state, the counters and the generator
    (:func:`fastbp._estimator_state.transfer_step_state`);
    the previous step is left as it was (the all-or-nothing guard keeps it).
    """
    cap = est._step.batch_size
    wd = est._weight_decay(bs, est._arch["n_out"])
    # a step compiled without weight decay has no decay in its update (Adam's kernel is
    # compiled per mode): an alpha set from or to 0 since needs a new step too
    same_mode = (wd == 0.0) == (est._arch["optimizer"]["weight_decay"] == 0.0)
    if same_mode and (cap == bs or (bs == n and n <= cap)):
        return
    arch = dict(est._arch, batch_size=int(bs), optimizer=dict(est._arch["optimizer"], weight_decay=wd))
    step = est._compile(arch)
    transfer_step_state(est._step, step)
    est._step, est._arch = step, arch


def set_sgd_rate(step, lr):
    """``step.lr = lr`` for scikit-learn's SGD rate schedules, its momentum carried over in
    scikit-learn's form.

    scikit-learn's velocity is ``v = m v - lr g`` (``p += v``), PyTorch's, which the step
    keeps, ``u = m u + g`` (``p -= lr u``): the same steps while ``u = -v / lr``.  When the
    rate changes from ``old`` to ``lr`` (``invscaling`` after every epoch, ``adaptive``'s
    divisions by 5), ``u`` is scaled by ``old / lr``, so the velocity already gathered keeps
    the size it had, as in scikit-learn, and the steps stay the same to rounding (Nesterov's
    too: its step ``m v - lr g`` is ``-lr (m u + g)``)."""
    old = float(step.lr)
    if old != lr and step.optimizer.momentum and step.state_vectors:
        step.state_vectors[0] *= old / lr       # the momentum buffer (SGD's only state vector)
    step.lr = lr


def ordered_epoch(step, X, Y, order, bs):
    """One epoch of minibatches of ``bs`` rows (the step's own cut) in ``order`` (None: the
    rows' order), through the step's fused loop: the rows are gathered in chunks of whole
    minibatches, about 2**22 values each (:func:`fastbp._estimator_rows.chunk_rows`; a
    sparse X is densified a chunk at a time), and each chunk is trained without shuffling.

    Returns
    -------
    ndarray of float64
        The loss of every minibatch.
    """
    if order is None and isinstance(X, np.ndarray):
        return np.asarray(step.fit(X, Y, epochs=1, shuffle=False), dtype=np.float64)
    order = np.arange(X.shape[0]) if order is None else order      # (sparse X: densified per chunk)
    per = chunk_rows(X.shape[1], bs)
    return np.concatenate([np.asarray(step.fit(X[idx], Y[idx], epochs=1, shuffle=False), dtype=np.float64)
                           for idx in (order[lo:lo + per] for lo in range(0, len(order), per))])


def weighted_epoch(step, X, Y, W, bs, order, alpha, grad_scale, sq_weights):
    """One epoch of weighted minibatches of ``bs`` rows in ``order``.

    The weight decay of each minibatch is scikit-learn's ``alpha / sum(w)`` (on the
    step's gradient scale ``grad_scale``); minibatches whose weights are all 0 are
    skipped (scikit-learn divides by their sum).  ``sq_weights()``: ``||W||^2`` of the
    decayed weights now.

    Returns
    -------
    (losses, rows, l2)
        The weighted loss and the rows of each minibatch run, and
        ``sum_b ||W_b||^2 rows_b / sum(w_b)``, ``W_b`` the weights before minibatch
        ``b``'s update (``alpha / 2`` times it, over the rows, is the epoch's L2 term).
    """
    hyper = step.hyper
    wd0, per_row = float(hyper[_isa.H_WD]), float(hyper[_isa.H_WD_ROWS])
    losses, rows, l2 = [], [], 0.0
    try:
        for lo in range(0, X.shape[0], bs):
            idx = order[lo:lo + bs]
            w = W[idx]
            sw = float(w.sum())
            if sw <= 0.0:
                continue
            hyper[_isa.H_WD], hyper[_isa.H_WD_ROWS] = float(alpha) / sw / grad_scale, 0.0
            sq = sq_weights() if alpha else 0.0
            losses.append(step(X[idx], Y[idx], sample_weight=w))
            rows.append(len(idx))
            l2 += sq * len(idx) / sw
    finally:
        # the caller's values (the estimator's epochs put the optimizer's own back after)
        hyper[_isa.H_WD], hyper[_isa.H_WD_ROWS] = wd0, per_row
    return np.asarray(losses, dtype=np.float64), np.asarray(rows, dtype=np.float64), l2


@contextlib.contextmanager
def sklearn_log_loss(est):
    """The step's calls inside report (and, for ``lbfgs``, minimise) scikit-learn's log-loss
    value: the probabilities of a classifier (softmax cross-entropy, BCE on logits) clipped to
    ``[eps, 1 - eps]`` before the log, ``eps`` the machine epsilon of the step's dtype
    (``np.finfo(dtype).eps``, as ``sklearn.neural_network._base.log_loss``): a sample's loss
    is at most ``-log(eps)`` (36.04 in float64, 15.94 in float32).  The gradient stays the
    unclipped ``p - y``, scikit-learn's.  The step's ``hyper[H_LOSS_CLIP]``, set here and
    reset after; its kernel is loaded once per process.  A regressor's loss is not clipped."""
    step = est._step
    if est._fastbp_loss not in ("softmax_cross_entropy", "bce_with_logits"):
        yield
        return
    ex.load_kernels(step.dtype, (ex.K_CLIP_LOSS,), step.threads)
    step.hyper[_isa.H_LOSS_CLIP] = float(np.finfo(step.dtype).eps)
    try:
        yield
    finally:
        step.hyper[_isa.H_LOSS_CLIP] = 0.0


def fit_lbfgs(est, X, Y, W=None):
    """scikit-learn's ``solver='lbfgs'``: ``scipy.optimize.minimize(method='L-BFGS-B')`` on the
    full-batch loss and gradient of the step (:meth:`fastbp.TrainStep.loss_and_grads`, in
    chunks of the step's batch), with the L2 term ``0.5 * alpha * ||W||^2 / n`` on the
    weights (not the biases), ``maxfun=max_fun``, ``maxiter=max_iter``, ``gtol=tol``.
    With sample weights ``W``: the weighted mean loss and ``n = sum(W)``."""
    from scipy.optimize import minimize
    from sklearn.utils.optimize import _check_optimize_result
    step = est._step
    n = X.shape[0]
    bs = step.batch_size
    rep, gs = est._loss_scales(est._arch["n_out"])
    alpha = float(est.alpha)
    pv = step.param_vector
    saved = pv.copy()
    pv[...] = 0
    for Wl in est.coefs_:
        Wl[...] = 1
    wmask = pv != 0
    pv[...] = saved
    chunks = [(lo, min(lo + bs, n)) for lo in range(0, n, bs)]
    total = float(n) if W is None else float(W.sum())
    if W is not None:
        chunks = [(lo, hi) for lo, hi in chunks if W[lo:hi].sum() > 0]
    g = np.zeros(pv.size, dtype=np.float64)

    def loss_grad(x):
        pv[...] = x
        g[...] = 0.0
        loss = 0.0
        try:
            for lo, hi in chunks:
                if W is None:
                    share = (hi - lo) / n
                    loss += share * step.loss_and_grads(X[lo:hi], Y[lo:hi])
                else:
                    share = float(W[lo:hi].sum()) / total
                    loss += share * step.loss_and_grads(X[lo:hi], Y[lo:hi], sample_weight=W[lo:hi])
                np.add(g, share * step.grad_vector, out=g)
        except FloatingPointError:
            return np.inf, np.zeros_like(g)        # a line-search trial too far: not finite
        wx = x[wmask]
        g2 = g * gs
        g2[wmask] += alpha / total * wx
        return rep * loss + 0.5 * alpha * float(np.dot(wx, wx)) / total, g2

    with sklearn_log_loss(est):
        res = minimize(loss_grad, saved.astype(np.float64), method="L-BFGS-B", jac=True,
                       options={"maxfun": int(est.max_fun), "maxiter": int(est.max_iter), "gtol": est.tol})
    with warnings.catch_warnings(record=True) as caught:    # its ConvergenceWarning: after the fit
        warnings.simplefilter("always")
        est.n_iter_ = _check_optimize_result("lbfgs", res, est.max_iter)
    for w in caught:
        warn_after_fit(w.message, w.category)
    est.loss_ = float(res.fun)
    pv[...] = res.x
    for name in ("loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_", "_best_params"):
        est.__dict__.pop(name, None)          # stochastic solvers only, as in scikit-learn
