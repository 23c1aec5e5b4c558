"""Estimator ``sample_weight`` (fit, partial_fit, score) and ``class_weight``, against
scikit-learn's invariances: integer weights are repeated rows, zero weights dropped rows,
``class_weight='balanced'`` the equivalent explicit dict / sample weights."""
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import make_blobs, make_regression  # noqa: E402
from sklearn.utils.class_weight import compute_class_weight  # noqa: E402

import fastbp  # noqa: E402
from fastbp.estimator import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
              pytest.mark.filterwarnings("ignore:Got `batch_size`:UserWarning")]

# full batch, no shuffling: the same minibatch whichever way the rows are given
FULL = dict(hidden_layer_sizes=(6,), batch_size=10_000, shuffle=False, max_iter=15, random_state=0,
            dtype="float64", alpha=1e-3)


def _blobs(n=45):
    X, y = make_blobs(n, centers=3, n_features=4, random_state=0)
    return (X - X.mean(0)) / X.std(0), y


def _close(a, b, rtol=1e-9):
    for ca, cb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(ca, cb, rtol=rtol, atol=1e-12)
    assert a.loss_ == pytest.approx(b.loss_, rel=rtol)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_integer_weights_equal_repeated_rows(solver):
    X, y = _blobs()
    w = np.random.default_rng(1).integers(0, 4, len(y))
    w[:3] = [0, 2, 3]
    a = MLPClassifier(solver=solver, **FULL).fit(X, y, sample_weight=w)
    b = MLPClassifier(solver=solver, **FULL).fit(np.repeat(X, w, 0), np.repeat(y, w))
    _close(a, b)


def test_zero_weights_equal_dropped_rows_regressor():
    X, y = make_regression(40, 3, noise=0.1, random_state=0)
    y = y / y.std()
    w = np.ones(40)
    w[::3] = 0
    a = MLPRegressor(solver="sgd", **FULL).fit(X, y, sample_weight=w)
    b = MLPRegressor(solver="sgd", **FULL).fit(X[w > 0], y[w > 0])
    _close(a, b)


def test_fractional_weights_are_a_weighted_mean_not_a_sum():
    """Without the L2 term (scikit-learn divides it by the sum of the weights), scaling every
    weight by one factor changes nothing: the loss is sum w l / sum w."""
    X, y = _blobs()
    w = np.random.default_rng(2).uniform(0.1, 2.0, len(y))
    kw = dict(FULL, alpha=0.0)
    a = MLPClassifier(solver="adam", **kw).fit(X, y, sample_weight=w)
    b = MLPClassifier(solver="adam", **kw).fit(X, y, sample_weight=7.5 * w)
    _close(a, b, rtol=1e-7)
    c = MLPClassifier(solver="adam", **kw).fit(X, y)
    assert not np.allclose(a.coefs_[0], c.coefs_[0])     # the weights do something


def test_minibatch_weighted_training_runs_and_scores_with_weights():
    X, y = _blobs(120)
    w = np.where(y == 0, 3.0, 1.0)
    clf = MLPClassifier(hidden_layer_sizes=(8,), batch_size=16, max_iter=30, random_state=0, learning_rate_init=0.02,
                        early_stopping=True, validation_fraction=0.2).fit(X, y, sample_weight=w)
    assert clf.score(X, y, sample_weight=w) > 0.8
    assert len(clf.validation_scores_) == clf.n_iter_
    inc = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    inc.partial_fit(X[:30], y[:30], sample_weight=w[:30], classes=np.unique(y))
    inc.partial_fit(X[30:], y[30:], w[30:])            # scikit-learn's order: sample_weight, classes
    assert inc.t_ == 120


def test_class_weight_balanced_equals_explicit_dict_and_sample_weights():
    X, y = _blobs()
    X, y = X[5:], y[5:]            # unbalanced classes
    cw = compute_class_weight("balanced", classes=np.unique(y), y=y)
    kw = dict(FULL, solver="sgd")
    a = MLPClassifier(class_weight="balanced", **kw).fit(X, y)
    b = MLPClassifier(class_weight=dict(zip(np.unique(y).tolist(), cw)), **kw).fit(X, y)
    c = MLPClassifier(**kw).fit(X, y, sample_weight=cw[y])
    _close(a, b)
    _close(a, c)
    d = MLPClassifier(class_weight={0: 2.0}, **kw).fit(X, y, sample_weight=np.full(len(y), 0.5))
    e = MLPClassifier(**kw).fit(X, y, sample_weight=np.where(y == 0, 1.0, 0.5))
    _close(d, e)


def test_class_weight_with_string_labels():
    X, y = _blobs()
    names = np.array(["a", "b", "c"])[y]
    a = MLPClassifier(class_weight={"b": 3.0}, solver="sgd", **FULL).fit(X, names)
    b = MLPClassifier(solver="sgd", **FULL).fit(X, y, sample_weight=np.where(y == 1, 3.0, 1.0))
    _close(a, b)


@pytest.mark.parametrize("kw, fit_kw, exc, match", [
    ({}, {"sample_weight": np.ones(3)}, ValueError, "sample_weight"),
    ({}, {"sample_weight": -np.ones(45)}, ValueError, "negative|sample_weight"),
    ({}, {"sample_weight": np.zeros(45)}, ValueError, "non-zero|sum to 0"),
    ({"class_weight": {0: 0, 1: 0, 2: 0}}, {}, ValueError, "sum to 0"),
    ({"class_weight": "auto"}, {}, ValueError, "class_weight"),
    ({"class_weight": {7: 1.0}}, {}, ValueError, "class_weight"),
    ({"class_weight": {0: -1.0}}, {}, ValueError, "class_weight"),
])
def test_bad_weights_are_refused(kw, fit_kw, exc, match):
    X, y = _blobs()
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, **kw)
    with pytest.raises(exc, match=match):
        clf.fit(X, y, **fit_kw)


def test_balanced_class_weight_in_partial_fit_is_refused():
    X, y = _blobs()
    with pytest.raises(ValueError, match="balanced"):
        MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=np.unique(y))


def test_step_sample_weight_is_validated():
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), batch_size=4, dtype=np.float64)
    x = np.zeros((4, 3))
    y = np.array([0, 1, 0, 1])
    p0 = step.param_vector.copy()
    for bad, exc in ((np.ones(3), ValueError), (np.array([1, -1, 1, 1]), ValueError),
                     (np.array([1, np.nan, 1, 1]), ValueError), (np.zeros(4), ValueError),
                     (np.array(["a"] * 4), TypeError), (np.ones(4, bool), TypeError)):
        with pytest.raises(exc, match="sample_weight"):
            step(x, y, sample_weight=bad)
    np.testing.assert_array_equal(step.param_vector, p0)


@pytest.mark.parametrize("w,msg", [
    ([1.0, -1.0, 1.0, -2.0], r"sample_weight must be >= 0 \(sample_weight\[1\] is -1\.0, and 1 more\)$"),
    ([1.0, 1.0, 1.0, -0.5], r"sample_weight must be >= 0 \(sample_weight\[3\] is -0\.5\)$"),
    ([1.0, 1.0, np.inf, np.nan], r"sample_weight must be finite \(sample_weight\[2\] is inf, and 1 more\)$"),
    ([np.nan, -1.0, 1.0, 1.0], r"sample_weight must be finite \(sample_weight\[0\] is nan\)$"),
])
def test_step_sample_weight_error_names_the_first_bad_row_as_a_plain_number(w, msg):
    """The row and value as the estimators report them (no numpy scalar repr such as
    ``np.float64(-1.0)``); a non-finite weight is reported before a negative one."""
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), batch_size=4, dtype=np.float32)
    with pytest.raises(ValueError, match=msg):
        step(np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1]), sample_weight=np.array(w))


def test_set_fit_request_routes_sample_weight():
    with sklearn.config_context(enable_metadata_routing=True):
        from sklearn.model_selection import cross_validate
        X, y = _blobs(60)
        w = np.ones(60)
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).set_fit_request(
            sample_weight=True).set_score_request(sample_weight=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = cross_validate(clf, X, y, cv=2, params={"sample_weight": w})
        assert len(res["test_score"]) == 2


_WORKER = """
import sys, numpy as np, warnings
warnings.simplefilter("ignore")
from fastbp import MLPClassifier
from fastbp._native import compile_watch
X = np.random.default_rng(0).standard_normal((60, 4)); y = (X[:, 0] > 0).astype(int)
with compile_watch() as w:
    m = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(X, y, sample_weight=np.ones(60))
print("COMPILED", w.functions)
print("COEFS", b"".join(a.tobytes() for a in m.coefs_ + m.intercepts_).hex())
"""


def test_a_fresh_worker_process_loads_the_compiled_code_from_disk():
    """What a joblib worker (GridSearchCV(n_jobs=...)) does: a new process fitting an
    estimator compiles nothing once the on-disk cache holds the code; its cost is the
    process start, the imports and numba's first load, not compilation (issue 15); and the code
    it loads computes what this process's computed, to the bit (on a cold cache, what this
    process compiled: tests/test_coldstart.py compares a whole cold compilation, in CI's
    thorough stage)."""
    import subprocess
    import sys
    X = np.random.default_rng(0).standard_normal((60, 4))
    y = (X[:, 0] > 0).astype(int)
    m = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(X, y, sample_weight=np.ones(60))
    out = subprocess.run([sys.executable, "-c", _WORKER], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "COMPILED 0" in out.stdout, out.stdout + out.stderr[-2000:]
    mine = b"".join(a.tobytes() for a in m.coefs_ + m.intercepts_).hex()
    assert f"COEFS {mine}" in out.stdout.splitlines()


def test_partial_fit_after_an_early_stopping_fit_without_it():
    """fit(early_stopping=True), then set_params(early_stopping=False).partial_fit: the
    training-loss record starts afresh (scikit-learn raises TypeError: best_loss_ is None)."""
    X = np.random.default_rng(0).standard_normal((100, 4))
    y = (X[:, 0] > 0).astype(int)
    m = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, early_stopping=True, random_state=0).fit(X, y)
    assert m.best_loss_ is None
    m.set_params(early_stopping=False).partial_fit(X, y)
    assert m.best_loss_ == m.loss_curve_[-1] and np.isfinite(m.best_loss_)
