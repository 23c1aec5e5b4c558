"""The Poisson loss (half Poisson deviance with a log link) and MLPRegressor(loss='poisson'),
against a numpy reference and scikit-learn's loss values and training."""
import warnings

import numpy as np
import pytest

import fastbp


def _ref(S, T):
    """numpy reference: mean over all elements of exp(s) - t s + xlogy(t, t) - t, and its gradient."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(T > 0, T * np.log(np.where(T > 0, T, 1.0)) - T, 0.0)
    return float(np.mean(np.exp(S) - T * S + c)), (np.exp(S) - T) / S.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_poisson_loss_matches_numpy_reference(dtype):
    rng = np.random.default_rng(0)
    S = rng.standard_normal((7, 3)).astype(dtype)
    T = rng.poisson(2.0, (7, 3)).astype(dtype)
    T[0, 0] = 0.0
    loss, dS = fastbp.ops.poisson_loss(S, T)
    want, dwant = _ref(S.astype(np.float64), T.astype(np.float64))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    assert loss == pytest.approx(want, **{"rel": tol["rtol"]})
    np.testing.assert_allclose(dS, dwant, **tol)


def test_poisson_negative_target_is_a_nonfinite_loss_in_ops_and_a_value_error_in_a_step():
    """fastbp.ops computes the formula (NaN); a step refuses the target before it runs, with a
    ValueError naming it (scikit-learn's Poisson regression refuses negative y), not a
    FloatingPointError about the loss."""
    S = np.zeros((2, 1))
    loss, _ = fastbp.ops.poisson_loss(S, np.array([[1.0], [-1.0]]))
    assert np.isnan(loss)
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 1)), loss="poisson", batch_size=2,
                          dtype=np.float64)
    p0 = step.param_vector.copy()
    with pytest.raises(ValueError, match=r"^y holds a target that is negative \(row 1, output 0: -1.0\); "
                                         r"loss 'poisson' needs count targets that are finite and >= 0"):
        step(np.ones((2, 2)), np.array([[1.0], [-1.0]]))
    np.testing.assert_array_equal(step.param_vector, p0)
    assert step.n_steps == 0


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_poisson_targets_outside_the_counts_are_refused_by_every_entry_point(bad):
    X = np.ones((8, 3), np.float32)
    Y = np.ones((8, 1), np.float32)
    Yb = Y.copy()
    Yb[5, 0] = bad
    what = "negative" if bad == -1.0 else "not finite"
    s = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 1)), loss="poisson", batch_size=8)
    p0 = s.param_vector.copy()
    with pytest.raises(ValueError, match=rf"^y holds a target that is {what} \(row 5, output 0"):
        s(X, Yb)
    with pytest.raises(ValueError, match=rf"^y holds a target that is {what}"):
        s(X, Yb[:, 0])                                      # (n,) targets of one output too
    with pytest.raises(ValueError, match=rf"^Y holds a target that is {what}"):
        s.fit(X, Yb)
    with pytest.raises(ValueError, match=rf"^validation_data\[1\] holds a target that is {what}"):
        s.fit(X, Y, validation_data=(X, Yb))
    np.testing.assert_array_equal(s.param_vector, p0)
    assert s.n_steps == 0 and s.epochs_done == 0
    s(X, np.zeros((8, 1), np.float32))                      # zero counts are valid targets


def test_poisson_step_gradient_and_update():
    """The fused step's loss and gradient against the reference through a linear model."""
    rng = np.random.default_rng(1)
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), loss="poisson",
                          optimizer=fastbp.SGD(lr=0.1), batch_size=6, dtype=np.float64)
    x = rng.standard_normal((6, 3))
    T = rng.poisson(1.0, (6, 2)).astype(np.float64)
    W, b = step.params["0.W"].copy(), step.params["0.b"].copy()
    S = x @ W + b
    want, dS = _ref(S, T)
    assert step.loss_and_grads(x, T) == pytest.approx(want, rel=1e-13)
    np.testing.assert_allclose(step.grads["0.W"], x.T @ dS, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(step.grads["0.b"], dS.sum(0), rtol=1e-12, atol=1e-15)
    step(x, T)
    np.testing.assert_allclose(step.params["0.W"], W - 0.1 * x.T @ dS, rtol=1e-12, atol=1e-15)
    # the validation loss of fit is the same loss
    h = step.fit(x, T, epochs=1, validation_data=(x, T))
    from fastbp.training import eval_loss
    assert h.history["val_loss"][0] == pytest.approx(eval_loss("poisson", step.predict(x), T), rel=1e-12)


def _counts(n=60, k=1):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 3))
    mu = np.exp(0.5 * X[:, :1] + 0.2 * np.arange(k))
    y = rng.poisson(mu).astype(np.float64)
    return X, (y[:, 0] if k == 1 else y)


def test_poisson_matches_sklearns_loss_value():
    pytest.importorskip("sklearn")
    from sklearn.neural_network._base import poisson_loss
    rng = np.random.default_rng(3)
    S = rng.standard_normal((9, 2))
    T = rng.poisson(1.5, (9, 2)).astype(np.float64)
    ours, _ = fastbp.ops.poisson_loss(S, T)
    # scikit-learn sums over the outputs what fastbp averages
    assert ours * S.shape[1] == pytest.approx(poisson_loss(T, np.exp(S)), rel=1e-13)


@pytest.mark.parametrize("k", [1, 2])
def test_mlpregressor_poisson_trains_like_sklearn(k):
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPRegressor as SkMLP
    try:
        SkMLP(loss="poisson")
    except TypeError:
        pytest.skip("scikit-learn < 1.7 has no MLPRegressor(loss=...)")
    from fastbp.estimator import MLPRegressor
    X, y = _counts(k=k)
    kw = dict(loss="poisson", hidden_layer_sizes=(5,), solver="sgd", batch_size=len(y), shuffle=False,
              max_iter=6, alpha=0.0, momentum=0.0, learning_rate_init=0.01, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SkMLP(**kw).fit(X, y)
        ours = MLPRegressor(dtype="float64", **kw).fit(X, y)
    assert ours.out_activation_ == theirs.out_activation_ == "exp"
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-12)
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y), rel=1e-10)


def test_mlpregressor_loss_argument():
    pytest.importorskip("sklearn")
    from fastbp.estimator import MLPRegressor
    X, y = _counts()
    assert MLPRegressor().loss == "squared_error"
    assert MLPRegressor("poisson").loss == "poisson"             # first parameter, as scikit-learn's
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="huber", max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="negative"):
        MLPRegressor(loss="poisson", max_iter=1).fit(X, y - 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MLPRegressor(loss="poisson", max_iter=30, random_state=0, learning_rate_init=0.01).fit(X, y)
    assert np.all(reg.predict(X) > 0)
    assert reg.loss_curve_[-1] < reg.loss_curve_[0]
