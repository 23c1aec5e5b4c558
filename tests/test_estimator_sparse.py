"""Sparse X in the estimators: the same fit and predictions as its dense form, with the
rows densified a chunk at a time (fastbp._estimator_rows), never the whole matrix."""
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _estimator_rows as rows

sp = pytest.importorskip("scipy.sparse")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402


def _data(n=300, d=40, seed=0):
    r = np.random.default_rng(seed)
    X = sp.random(n, d, density=0.1, format="csr", random_state=seed, dtype=np.float64)
    y = r.integers(0, 3, n)
    return X, y


@pytest.mark.parametrize("kw", [dict(), dict(early_stopping=True), dict(solver="lbfgs"), dict(shuffle=False),
                                dict(solver="sgd", batch_size=64)],
                         ids=["adam", "early", "lbfgs", "noshuffle", "sgd"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_fit_equals_dense(kw, weighted, fmt, monkeypatch):
    # small chunks: several chunks per epoch and per prediction
    monkeypatch.setattr(rows, "CHUNK_VALUES", 40 * 70)
    X, y = _data()
    X = X.asformat(fmt)
    sw = np.random.default_rng(1).uniform(0.5, 2.0, X.shape[0]) if weighted else None
    est = dict(hidden_layer_sizes=(7,), max_iter=4, random_state=0, dtype="float64", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = fastbp.MLPClassifier(**est).fit(X, y, sample_weight=sw)
        b = fastbp.MLPClassifier(**est).fit(X.toarray(), y, sample_weight=sw)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X.toarray()))
    np.testing.assert_array_equal(a.predict_proba(X), a.predict_proba(X.toarray()))
    assert a.loss_ == b.loss_


def test_sparse_regressor_partial_fit_and_score():
    X, _ = _data(seed=2)
    y = np.asarray(X.sum(axis=1)).ravel()
    a = fastbp.MLPRegressor(hidden_layer_sizes=(5,), random_state=0, dtype="float64")
    b = fastbp.MLPRegressor(hidden_layer_sizes=(5,), random_state=0, dtype="float64")
    for _ in range(3):
        a.partial_fit(X, y)
        b.partial_fit(X.toarray(), y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X.toarray()))
    assert a.score(X, y) == b.score(X.toarray(), y)


def test_sparse_is_never_densified_whole(monkeypatch):
    """Every densified block is at most one chunk of rows (here 2 minibatches)."""
    X, y = _data(n=400)
    monkeypatch.setattr(rows, "CHUNK_VALUES", 2 * 50 * 40)
    biggest = []
    get = rows.SparseRows.__getitem__

    def spy(self, key):
        out = get(self, key)
        biggest.append(out.shape[0])
        return out
    monkeypatch.setattr(rows.SparseRows, "__getitem__", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = fastbp.MLPClassifier(hidden_layer_sizes=(4,), batch_size=50, max_iter=2, random_state=0).fit(X, y)
    est.predict(X)
    assert biggest and max(biggest) <= 100


def test_float32_overflow_in_sparse_x_names_the_entry():
    X = sp.csr_matrix(np.array([[0.0, 1.0], [0.0, 1e300]]))
    with pytest.raises(ValueError, match=r"row 1, column 1.*dtype='float64'"):
        fastbp.MLPRegressor(max_iter=1).fit(X, np.array([0.0, 1.0]))


def test_a_float32_overflow_from_summed_duplicates_names_the_sum():
    """Two stored entries of one cell (3e38 each, finite in float32) sum past float32's range: the
    error was right but named one of them (3e+38), which float32 holds; the user's matrix is kept."""
    X = np.random.RandomState(0).randn(30, 3)
    m = fastbp.MLPClassifier(hidden_layer_sizes=(5,), max_iter=2, random_state=0, dtype="float32")
    with pytest.warns(Warning):
        m.fit(X, np.arange(30) % 3)
    A = sp.csr_matrix((np.array([3e38, 3e38]), np.array([0, 0]), np.array([0, 2, 2, 2])), shape=(3, 3))
    with pytest.raises(ValueError, match=r"too large for float32 \(6e\+38 at row 0, column 0\)"):
        m.predict(A)
    assert A.nnz == 2 and not A.has_canonical_format
