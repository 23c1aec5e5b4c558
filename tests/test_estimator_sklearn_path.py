"""The estimators take scikit-learn's path: its minibatch order under ``shuffle=True`` (drawn
from its generator), its ``alpha / n_b`` on a last, smaller minibatch, and the step's
``hyper[H_WD_ROWS]`` slot that carries the latter (set and reset around each call)."""
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _isa

sklearn = pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkC, MLPRegressor as SkR  # noqa: E402


def _fit_both(ours, theirs, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ours.fit(X, y, **kw), theirs.fit(X, y, **kw)


def _blobs(n, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, 3, n)
    X = r.standard_normal((n, 6)) + y[:, None]
    return X, y


@pytest.mark.parametrize("alpha", [1e-4, 0.5])
def test_shuffled_minibatches_with_a_smaller_last_one_are_sklearns(alpha):
    """97 rows in minibatches of 20: four of 20 and one of 17, in scikit-learn's shuffled
    order, each with its own alpha / n_b (alpha / 20 on the last one was 1e-3 off here)."""
    X, y = _blobs(97)
    kw = dict(hidden_layer_sizes=(8,), batch_size=20, max_iter=25, alpha=alpha, random_state=3)
    ours, theirs = _fit_both(fastbp.MLPClassifier(dtype="float64", **kw), SkC(**kw), X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-10, atol=1e-12)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # the reported L2 term with each minibatch's weights before its update, as scikit-learn's
    # (the epoch's final weights were 1e-3 off with alpha=0.5)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    assert ours._step.hyper[_isa.H_WD_SQ] > 0.0


def test_regressor_with_early_stopping_is_sklearns():
    r = np.random.default_rng(1)
    X = r.standard_normal((120, 4))
    y = X @ r.standard_normal(4) + 0.1 * r.standard_normal(120)
    kw = dict(hidden_layer_sizes=(6,), batch_size=32, max_iter=30, early_stopping=True, random_state=0)
    ours, theirs = _fit_both(fastbp.MLPRegressor(dtype="float64", **kw), SkR(**kw), X, y)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-10)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-10, atol=1e-12)


def test_partial_fit_calls_shuffle_as_sklearn():
    """Each partial_fit call: scikit-learn's generator from an int random_state afresh."""
    X, y = _blobs(90, seed=2)
    kw = dict(hidden_layer_sizes=(5,), batch_size=16, alpha=0.01, random_state=0)
    ours, theirs = fastbp.MLPClassifier(dtype="float64", **kw), SkC(**kw)
    for k in range(3):
        sl = slice(30 * k, 30 * k + 30)
        for est in (ours, theirs):
            est.partial_fit(X[sl], y[sl], classes=[0, 1, 2])
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-10, atol=1e-12)


def test_the_per_row_slot_is_reset_and_a_plain_step_ignores_it():
    X, y = _blobs(50)
    est = fastbp.MLPClassifier(hidden_layer_sizes=(4,), batch_size=16, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert est._step.hyper[_isa.H_WD_ROWS] == 0.0
    # a step of fastbp.compile: the weight decay is the optimizer's, whatever the rows
    s = fastbp.compile(fastbp.Sequential(fastbp.Linear(6, 3)), optimizer=fastbp.SGD(0.1, weight_decay=0.5),
                       batch_size=8, dtype=np.float64)
    s.hyper[_isa.H_WD_ROWS] = 1.0          # as an estimator sets it: decay / rows
    p0 = s.params["0.W"].copy()
    s.loss_and_grads(X[:8], y[:8])
    g = s.grads["0.W"].copy()
    s(X[:8], y[:8])
    np.testing.assert_allclose(s.params["0.W"], p0 - 0.1 * (g + 0.5 / 8 * p0), rtol=1e-13)


@pytest.mark.parametrize("size", [_isa.HYPER_SIZE_V2, _isa.HYPER_SIZE_V3, _isa.HYPER_SIZE_V4])
def test_a_checkpoint_of_the_previous_hyper_length_loads(tmp_path, size):
    """Checkpoints written before the slots existed (24, 25 or 26 hyper values) load, the slots 0."""
    s = fastbp.compile(fastbp.Sequential(fastbp.Linear(6, 3)), optimizer=fastbp.Adam(), batch_size=8)
    X, y = _blobs(8)
    s(X.astype(np.float32), y)
    s.save(tmp_path / "c")
    path = tmp_path / "c.npz" if (tmp_path / "c.npz").exists() else tmp_path / "c"
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["hyper"].size == _isa.HYPER_SIZE
    arrays["hyper"] = arrays["hyper"][:size]
    np.savez(path, **arrays)
    back = fastbp.load(path)
    keep = [i for i in range(size) if i not in _isa.RUNTIME_SLOTS]
    np.testing.assert_array_equal(back.hyper[keep], s.hyper[keep])
    assert back.hyper[_isa.H_WD_ROWS] == 0.0 and back.hyper[_isa.H_WD_SQ] == 0.0
    assert back.hyper[_isa.H_LOSS_CLIP] == 0.0


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_weighted_fit_reports_sklearns_loss_with_each_minibatchs_weights(solver):
    """sample_weight with alpha=0.5: the L2 term of each minibatch is alpha ||W_b||^2 / (2 sum(w_b)),
    W_b the weights before its update, as scikit-learn's (the epoch's final weights were used)."""
    X, y = _blobs(97)
    w = np.random.default_rng(0).uniform(0.2, 2.0, len(y))
    kw = dict(hidden_layer_sizes=(8,), solver=solver, alpha=0.5, max_iter=12, batch_size=32, random_state=0)
    ours, theirs = fastbp.MLPClassifier(dtype="float64", **kw), SkC(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y, sample_weight=w)
        theirs.fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-10, atol=1e-12)


def _far_off_digits():
    """Digits times 10: unscaled features, so that the first epochs put probabilities of
    training rows below float64's eps (scikit-learn caps their loss at -log(eps) = 36.04)."""
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return X[:300] * 10.0, y[:300]


def test_the_log_loss_clips_probabilities_as_sklearns_and_lbfgs_minimises_it():
    """scikit-learn's log-loss clips probabilities to [eps, 1 - eps] before the log; L-BFGS
    minimises that value (with the unclipped gradient). Unclipped, fastbp's loss was 0.0042
    against 0.161 and its probabilities up to 0.98 off."""
    X, y = _far_off_digits()
    kw = dict(random_state=0, solver="lbfgs", max_iter=30, hidden_layer_sizes=(30,))
    ours, theirs = _fit_both(fastbp.MLPClassifier(dtype="float64", **kw), SkC(**kw), X, y)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-8)
    assert ours._step.hyper[_isa.H_LOSS_CLIP] == 0.0        # set around the calls only
    # multilabel: scikit-learn's binary log-loss of its clipped expit, term by term
    Y = np.stack([y % 2, (y > 4).astype(int), (y == 3).astype(int)], 1)
    ours, theirs = _fit_both(fastbp.MLPClassifier(dtype="float64", **kw), SkC(**kw), X, Y)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-8)


@pytest.mark.parametrize("weighted", [False, True])
def test_clipped_loss_curves_and_the_tol_stopping_epoch_are_sklearns(weighted):
    """The loss curve (first epoch 141 unclipped against scikit-learn's 33.2) and so the
    ``tol``/``n_iter_no_change`` stopping epoch (67 against 64)."""
    X, y = _far_off_digits()
    w = np.random.default_rng(0).uniform(0.1, 2.0, len(y)) if weighted else None
    kw = dict(random_state=0, hidden_layer_sizes=(30,), max_iter=200, tol=0.1, n_iter_no_change=2)
    ours, theirs = _fit_both(fastbp.MLPClassifier(dtype="float64", **kw), SkC(**kw), X, y, sample_weight=w)
    assert ours.n_iter_ == theirs.n_iter_
    assert theirs.loss_curve_[0] > 30.0                 # rows clipped in the first epochs
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-10)


@pytest.mark.thorough      # compiles three kernels for direct calls; the fits above cover the step's
def test_the_clipped_row_losses_against_sklearns_functions():
    """The kernel against scikit-learn's own ``log_loss`` and ``binary_log_loss`` of the
    probabilities, in float64, rows with probabilities below eps, above 1 - eps and between."""
    from sklearn.neural_network._base import binary_log_loss, log_loss
    from fastbp.kernels.losses import _bce_logits, _softmax_xent, clip_log_loss
    eps = np.finfo(np.float64).eps
    S = np.array([[0.0, 50.0, -3.0], [40.0, -1.0, 2.0], [0.5, 0.25, 0.125], [-60.0, 60.0, 0.0],
                  [36.5, 0.0, 0.0], [-37.0, 1.0, 33.0]])
    y = np.array([0, 0, 2, 1, 1, 0])
    rowloss, dS = np.empty(len(y)), np.empty_like(S)
    _softmax_xent.serial(S, y, dS, rowloss)
    got = clip_log_loss(S, S, rowloss, False, eps)
    P = np.exp(S - S.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    assert got == pytest.approx(log_loss(np.eye(3)[y], P), rel=1e-14)
    assert rowloss.max() == pytest.approx(-np.log(eps)) and rowloss[3] == pytest.approx(-np.log(1 - eps))
    T = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0],
                  [1.0, 1.0, 1.0]])
    _bce_logits.serial(S, T, dS, rowloss)
    got = clip_log_loss(S, T, rowloss, True, eps) * S.shape[1]      # scikit-learn sums over labels
    assert got == pytest.approx(binary_log_loss(T, 1.0 / (1.0 + np.exp(-S))), rel=1e-14)
    rowloss[0] = np.nan
    assert np.isnan(clip_log_loss(S, S, rowloss, False, eps))
