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


@pytest.mark.parametrize("size", [_isa.HYPER_SIZE_V2, _isa.HYPER_SIZE_V3])
def test_a_checkpoint_of_the_previous_hyper_length_loads(tmp_path, size):
    """Checkpoints written before the slots existed (24 or 25 hyper values) load, the slots 0."""
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
