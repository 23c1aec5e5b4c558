"""fastbp.estimator: scikit-learn conventions, estimator checks, behaviour."""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_blobs, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbp.estimator import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ------------------------------------------------------------------ sklearn's checks
def _expected_failed_checks(estimator):
    # stochastic minibatches (shuffled, float32) cannot give the same weights when the rows are
    # repeated instead of weighted; scikit-learn runs this check on its own MLPs with
    # solver='lbfgs' (classifier) and solver='sgd', tol=1e-2 (regressor): so does the test below
    why = ("minibatch training: checked with scikit-learn's own settings in "
           "test_sample_weight_equivalence_with_sklearns_settings")
    return {"check_sample_weight_equivalence_on_dense_data": why,
            "check_sample_weight_equivalence_on_sparse_data": why}


@parametrize_with_checks([MLPClassifier(random_state=0), MLPRegressor(random_state=0)],
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("estimator", [MLPClassifier(solver="lbfgs", random_state=0, dtype="float64"),
                                       MLPRegressor(solver="sgd", tol=1e-2, random_state=42, dtype="float64")])
def test_sample_weight_equivalence_with_sklearns_settings(estimator):
    """scikit-learn's invariance check, with the settings scikit-learn uses for its own MLPs
    (sklearn.utils._test_common.instance_generator.PER_ESTIMATOR_CHECK_PARAMS), in float64:
    the check compares predictions at ``rtol=1e-7``, which scikit-learn's MLPs (float64 on
    its float64 data) meet and float32 arithmetic cannot promise (the weighted rows come
    shuffled, so every sum runs in another order; on an AVX-512 CPU two of the 15 float32
    predictions differed by 2 ulp). float32: the next test, at float32's tolerance."""
    from sklearn.utils.estimator_checks import (check_sample_weight_equivalence_on_dense_data,
                                                check_sample_weight_equivalence_on_sparse_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_sample_weight_equivalence_on_dense_data(type(estimator).__name__, estimator)
        check_sample_weight_equivalence_on_sparse_data(type(estimator).__name__, estimator)


@pytest.mark.parametrize("est", [MLPRegressor(solver="sgd", tol=1e-2, random_state=42),
                                 MLPClassifier(solver="lbfgs", random_state=0)])
def test_sample_weight_equivalence_in_float32(est):
    """The same invariance as scikit-learn's check (integer weights, zeros included, against
    repeated rows, the weighted rows shuffled), on the default float32 estimators, to float32's
    tolerance (scikit-learn's own ``assert_allclose`` uses ``rtol=1e-4`` for float32; L-BFGS's
    up to 200 iterations carry float32 rounding further: seen 4e-6 on a probability of 0.03)."""
    from sklearn.utils import shuffle
    rng = np.random.RandomState(42)
    X = rng.rand(15, 30)
    y = rng.randint(0, 3, size=15)
    sw = rng.randint(0, 5, size=15)
    Xr, yr = X.repeat(sw, axis=0), y.repeat(sw)
    Xw, yw, sw = shuffle(X, y, sw, random_state=0)
    if isinstance(est, MLPRegressor):
        yr, yw = yr.astype(float), yw.astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = clone(est).fit(Xw, yw, sample_weight=sw)
        repeated = clone(est).fit(Xr, yr)
    assert weighted.dtype == "float32"
    method = "predict" if isinstance(est, MLPRegressor) else "predict_proba"
    np.testing.assert_allclose(getattr(weighted, method)(X), getattr(repeated, method)(X), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)


def blobs(n=200, centers=3, n_features=4, seed=0):
    X, y = make_blobs(n_samples=n, centers=centers, n_features=n_features, random_state=seed)
    return (X - X.mean(0)) / X.std(0), y


# ------------------------------------------------------------------ classifier
def test_classifier_learns_digits(digits):
    Xtr, Xte, ytr, yte = digits
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=60, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    assert clf.score(Xte, yte) > 0.95
    assert clf.n_features_in_ == 64
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    assert clf.n_iter_ == len(clf.loss_curve_) >= 1
    assert clf.t_ == clf.n_iter_ * len(ytr)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert [c.shape for c in clf.coefs_] == [(64, 64), (64, 10)]
    assert [b.shape for b in clf.intercepts_] == [(64,), (10,)]
    assert clf.n_layers_ == 3 and clf.n_outputs_ == 10 and clf.out_activation_ == "softmax"


def test_predict_proba_is_softmax_and_agrees_with_predict():
    X, y = blobs()
    labels = np.array(["ant", "bee", "cow"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, batch_size=20,
                        random_state=1, dtype="float64").fit(X, labels)
    P = clf.predict_proba(X)
    assert P.shape == (200, 3)
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-12)
    assert np.all(P >= 0)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[P.argmax(1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(P))
    # softmax of the network outputs, computed independently
    S = clf._step.predict(np.ascontiguousarray(X, dtype=np.float64))
    E = np.exp(S - S.max(1, keepdims=True))
    np.testing.assert_allclose(P, E / E.sum(1, keepdims=True), rtol=1e-10)
    assert clf.score(X, labels) > 0.95


def test_binary_problem_uses_two_softmax_units():
    X, y = blobs(centers=2)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, batch_size=20,
                        random_state=0).fit(X, y == 1)
    assert clf.predict_proba(X).shape == (200, 2)
    assert clf.predict(X).dtype == bool
    assert clf.score(X, y == 1) > 0.95


def test_single_class_is_a_clear_error():
    X, _ = blobs()
    with pytest.raises(ValueError, match="class"):
        MLPClassifier().fit(X, np.zeros(len(X)))


def test_random_state_makes_fits_reproducible():
    X, y = blobs()
    a = MLPClassifier(max_iter=15, random_state=3).fit(X, y)
    b = MLPClassifier(max_iter=15, random_state=3).fit(X, y)
    c = MLPClassifier(max_iter=15, random_state=4).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.loss_curve_ == b.loss_curve_
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))


def test_converges_by_tol_before_max_iter():
    X, y = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = MLPClassifier(max_iter=500, tol=1e-2, n_iter_no_change=2, random_state=0).fit(X, y)
    assert clf.n_iter_ < 500
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier(max_iter=2, random_state=0).fit(X, y)


def test_early_stopping_restores_the_best_weights(digits):
    Xtr, Xte, ytr, yte = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, validation_fraction=0.2,
                        n_iter_no_change=3, max_iter=200, random_state=0).fit(Xtr, ytr)
    assert clf.best_loss_ is None
    assert len(clf.validation_scores_) == clf.n_iter_ < 200
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    # stopped n_iter_no_change + 1 epochs after the (first) best one
    assert int(np.argmax(clf.validation_scores_)) == clf.n_iter_ - 5
    # the restored weights reproduce the best validation score on the same split
    # (scikit-learn's generator after its initialisation: tests.reference.sklearn_split_state)
    from reference import sklearn_split_state
    rs = sklearn_split_state(0, (64, 32, 10))
    _, Xval, _, yval = train_test_split(Xtr, ytr, test_size=0.2, stratify=ytr, random_state=rs)
    assert clf.score(Xval, yval) == clf.best_validation_score_
    # a sanity bound: with this short patience, random_state 0 to 3 score 0.86 to 0.93 here
    # (scikit-learn's MLP 0.91 to 0.93; its validation split is not stratified, fastbp's is)
    assert clf.score(Xte, yte) > 0.85


def test_partial_fit_needs_classes_first_then_learns():
    X, y = blobs(n=300)
    clf = MLPClassifier(hidden_layer_sizes=(16,), random_state=0, batch_size=32,
                        learning_rate_init=0.01)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    assert not hasattr(clf, "classes_")
    clf.partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    first = clf.loss_
    for i in range(20):
        clf.partial_fit(X[i % 6 * 50:(i % 6 + 1) * 50], y[i % 6 * 50:(i % 6 + 1) * 50])
    assert clf.loss_ < first
    assert clf.t_ == 21 * 50 and len(clf.loss_curve_) == 21 and clf.n_iter_ == 1
    assert clf.score(X, y) > 0.9
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X[:5], np.full(5, 7))
    with pytest.raises(ValueError, match="not the same"):
        clf.partial_fit(X[:5], y[:5], classes=[0, 1])
    with pytest.raises(ValueError, match="early_stopping"):
        clone(clf).set_params(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])


def test_partial_fit_keeps_optimizer_state_like_one_fit():
    """Epoch-by-epoch partial_fit continues the same Adam state as fit does."""
    X, y = blobs()
    kw = dict(hidden_layer_sizes=(8,), random_state=0, shuffle=False, batch_size=50)
    a = MLPClassifier(max_iter=5, tol=0, n_iter_no_change=100, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(X, y)
    b = MLPClassifier(**kw)
    for _ in range(5):
        b.partial_fit(X, y, classes=np.unique(y))
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-10)


def test_warm_start_continues_from_the_previous_weights():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        end_of_first = clf.loss_curve_[-1]
        clf.fit(X, y)
    assert len(clf.loss_curve_) == 10 and clf.n_iter_ == 5
    assert clf.loss_curve_[5] < clf.loss_curve_[0]
    assert abs(clf.loss_curve_[5] - end_of_first) < 0.5 * clf.loss_curve_[0]
    with pytest.raises(ValueError, match="same classes"):
        clf.fit(X, np.where(y == 2, 5, y))


def test_multilabel_uses_sigmoid_outputs():
    X, Y = make_multilabel_classification(n_samples=200, n_features=6, n_classes=4, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=100, batch_size=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, Y)
    assert clf.out_activation_ == "logistic"
    P = clf.predict_proba(X)
    assert P.shape == (200, 4) and np.all((P > 0) & (P < 1))
    pred = clf.predict(X)
    assert pred.shape == Y.shape and pred.dtype == Y.dtype
    np.testing.assert_array_equal(pred, (P > 0.5).astype(Y.dtype))
    assert np.mean(pred == Y) > 0.75  # scikit-learn's MLPClassifier: 0.80 here
    # reported like scikit-learn: binary log-losses summed over the labels
    P64 = np.clip(P, 1e-12, 1 - 1e-12)
    bce = -np.mean(np.sum(Y * np.log(P64) + (1 - Y) * np.log(1 - P64), axis=1))
    assert clf.loss_curve_[-1] == pytest.approx(bce, rel=0.3)


def test_alpha_is_weight_decay():
    X, y = blobs()
    kw = dict(hidden_layer_sizes=(16,), max_iter=40, batch_size=20, random_state=0, tol=0,
              n_iter_no_change=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        free = MLPClassifier(alpha=0.0, **kw).fit(X, y)
        decayed = MLPClassifier(alpha=20.0, **kw).fit(X, y)
    norm = lambda m: sum(float(np.sum(w ** 2)) for w in m.coefs_)  # noqa: E731
    assert norm(decayed) < 0.5 * norm(free)
    assert decayed._step.optimizer.weight_decay == pytest.approx(20.0 / 20)


@pytest.mark.parametrize("solver, momentum, nesterov", [("sgd", 0.9, True), ("sgd", 0.0, True),
                                                        ("sgd", 0.5, False), ("adam", 0.9, True)])
def test_solvers_map_to_fastbp_optimizers(solver, momentum, nesterov):
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), solver=solver, momentum=momentum,
                        nesterovs_momentum=nesterov, learning_rate_init=0.01, beta_1=0.8,
                        beta_2=0.99, epsilon=1e-7, max_iter=30, batch_size=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    opt = clf._step.optimizer
    if solver == "sgd":
        assert type(opt).__name__ == "SGD"
        assert opt.momentum == momentum and opt.nesterov == (nesterov and momentum > 0)
    else:
        assert type(opt).__name__ == "Adam"
        assert tuple(opt.betas) == (0.8, 0.99) and opt.eps == 1e-7
    assert opt.lr == 0.01
    assert clf.score(X, y) > 0.9


@pytest.mark.parametrize("activation, layer", [("relu", "ReLU"), ("logistic", "Sigmoid"),
                                               ("tanh", "Tanh"), ("identity", None)])
def test_activations(activation, layer):
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8, 8), activation=activation, max_iter=5,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    kinds = [type(lay).__name__ for lay in clf._step.model.layers]
    expected = ["Linear", layer, "Linear", layer, "Linear"] if layer else ["Linear"] * 3
    assert kinds == expected


@pytest.mark.parametrize("X_dtype, dtype, expected", [
    (np.float64, None, np.float64), (np.float32, None, np.float32), (np.int64, None, np.float64),
    (np.float64, "float32", np.float32), (np.float32, np.float64, np.float64)])
def test_dtype(X_dtype, dtype, expected):
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, dtype=dtype, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((X * 10).astype(X_dtype), y)
    assert clf._step.dtype == expected
    assert clf.predict_proba(X).dtype == expected
    assert clf.coefs_[0].dtype == expected


def test_batch_size_auto_and_clipping():
    X, y = blobs(n=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert MLPClassifier(max_iter=1).fit(X, y)._step.batch_size == 200
        assert MLPClassifier(max_iter=1).fit(X[:50], y[:50])._step.batch_size == 50
        with pytest.warns(UserWarning, match="clipped"):
            clf = MLPClassifier(max_iter=1, batch_size=1000).fit(X, y)
    assert clf._step.batch_size == 300


@pytest.mark.parametrize("param, value, match", [
    ("hidden_layer_sizes", (10, 0), "hidden_layer_sizes"),
    ("hidden_layer_sizes", "wide", "hidden_layer_sizes"),
    ("activation", "mish", "activation"),
    ("solver", "newton-cg", "solver"),          # ('lbfgs' is a solver now: issue 15)
    ("alpha", -1.0, "alpha"),
    ("batch_size", 0, "batch_size"),
    ("learning_rate_init", 0.0, "learning_rate_init"),
    ("max_iter", 0, "max_iter"),
    ("momentum", 1.5, "momentum"),
    ("beta_1", 1.0, "beta_1"),
    ("beta_2", -0.1, "beta_2"),
    ("epsilon", 0.0, "epsilon"),
    ("validation_fraction", 1.0, "validation_fraction"),
    ("n_iter_no_change", 0, "n_iter_no_change"),
    ("tol", float("nan"), "tol"),
])
def test_bad_hyper_parameters_name_the_parameter(param, value, match):
    X, y = blobs(n=30)
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**{param: value}).fit(X, y)
    with pytest.raises(ValueError, match=match):
        MLPRegressor(**{param: value}).fit(X, y.astype(float))


def test_bad_dtype_is_a_type_error():
    X, y = blobs(n=30)
    with pytest.raises(TypeError, match="dtype"):
        MLPClassifier(dtype="float16").fit(X, y)


def test_get_set_params_and_clone():
    clf = MLPClassifier(hidden_layer_sizes=(5, 3), alpha=0.1, dtype="float32")
    p = clf.get_params()
    for name in ("hidden_layer_sizes", "activation", "solver", "alpha", "batch_size",
                 "learning_rate_init", "max_iter", "momentum", "nesterovs_momentum", "beta_1",
                 "beta_2", "epsilon", "tol", "random_state", "early_stopping",
                 "validation_fraction", "n_iter_no_change", "shuffle", "verbose", "dtype"):
        assert name in p
    assert p["hidden_layer_sizes"] == (5, 3) and p["dtype"] == "float32"
    clf.set_params(alpha=0.5, max_iter=7)
    c = clone(clf)
    assert c.alpha == 0.5 and c.max_iter == 7 and c is not clf


def test_sklearn_parameter_names_match():
    from sklearn.neural_network import MLPClassifier as SkMLP
    ours = set(MLPClassifier().get_params())
    theirs = set(SkMLP().get_params())
    # every scikit-learn parameter exists (lbfgs's max_fun and the learning-rate schedules
    # were added by issue 15)
    assert theirs - ours == set()
    # fastbp's additions: dtype, class_weight (issue 15; scikit-learn's MLP has none) and
    # precision (bf16 products, issue 18)
    assert ours - theirs == {"dtype", "class_weight", "precision"}


def test_pickle_round_trip_then_keep_training():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    copy = pickle.loads(pickle.dumps(clf))
    assert copy._step is not clf._step and hasattr(clf, "_step")
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    # weights, Adam's moments and step count travel: both continue bitwise alike
    copy.partial_fit(X, y)
    clf.partial_fit(X, y)
    assert copy.n_iter_ == clf.n_iter_ == 1 and len(clf.loss_curve_) == 6
    assert copy.loss_curve_ == clf.loss_curve_
    for a, b in zip(copy.coefs_ + copy.intercepts_, clf.coefs_ + clf.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_verbose_prints_the_loss(capsys):
    X, y = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(max_iter=3, verbose=True, random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert out.count("Iteration") == 3 and "loss = " in out


def test_divergence_is_a_value_error():
    X, y = make_regression(n_samples=50, n_features=3, random_state=0)
    reg = MLPRegressor(hidden_layer_sizes=(), solver="sgd", momentum=0.0, learning_rate_init=1e10,
                       dtype="float32", max_iter=50)
    with pytest.raises(ValueError, match="diverged"):
        reg.fit(X, y)


# ------------------------------------------------------------------ regressor
def test_regressor_fits_a_smooth_function():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(400, 2))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2
    reg = MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=300, random_state=0,
                       learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
    assert reg.score(X, y) > 0.95
    pred = reg.predict(X)
    assert pred.shape == (400,) and pred.dtype == np.float64
    assert reg.out_activation_ == "identity" and reg.n_outputs_ == 1
    # loss_curve_ is half the mean squared error, as in scikit-learn
    half_mse = 0.5 * np.mean((reg.predict(X) - y) ** 2)
    assert reg.loss_curve_[-1] == pytest.approx(half_mse + 0.5 * reg.alpha * sum(
        float(np.sum(w ** 2)) for w in reg.coefs_) / 200, rel=0.5)


def test_regressor_multioutput_and_early_stopping():
    X, Y = make_regression(n_samples=300, n_features=6, n_targets=3, noise=0.1, random_state=0)
    Y = Y / Y.std(0)
    reg = MLPRegressor(hidden_layer_sizes=(32,), early_stopping=True, max_iter=300,
                       learning_rate_init=0.01, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (300, 3)
    assert reg.n_outputs_ == 3
    assert reg.best_validation_score_ == max(reg.validation_scores_) > 0.9
    assert reg.score(X, Y) > 0.9


def _same_start_then_train(ours, theirs, X, y):
    """Fit both (warm_start=True), give ours scikit-learn's weights, train both again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        theirs.fit(X, y)
        start = [np.array(p) for p in theirs.coefs_ + theirs.intercepts_]
        for mine, sk in zip(ours.coefs_ + ours.intercepts_, start):
            mine[...] = sk
        ours.fit(X, y)
        theirs.fit(X, y)
    return start


def test_regressor_sgd_takes_sklearns_steps():
    """Same weights, same hyper-parameters: the same SGD (Nesterov momentum) steps as
    scikit-learn's MLPRegressor, whose loss is half the squared error."""
    from sklearn.neural_network import MLPRegressor as SkMLPRegressor
    X, y = make_regression(n_samples=64, n_features=3, n_targets=2, noise=0.0, random_state=1)
    y = y / y.std(0)
    kw = dict(hidden_layer_sizes=(5,), activation="tanh", solver="sgd", learning_rate_init=0.05,
              momentum=0.9, nesterovs_momentum=True, batch_size=64, max_iter=3, shuffle=False,
              alpha=0.0, tol=0.0, n_iter_no_change=100, warm_start=True, random_state=0)
    ours, theirs = MLPRegressor(**kw, dtype="float64"), SkMLPRegressor(**kw)
    _same_start_then_train(ours, theirs, X, y)
    for mine, sk in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, sk, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_[-3:], theirs.loss_curve_[-3:], rtol=1e-9)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-9, atol=1e-12)


def test_classifier_alpha_matches_sklearns_l2_gradient():
    """alpha -> weight_decay = alpha / batch_size gives scikit-learn's step: on the weights,
    not on the biases (the optimizer's decay_1d=False)."""
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier
    X, y = blobs(n=60)
    kw = dict(hidden_layer_sizes=(6,), solver="sgd", learning_rate_init=0.1, momentum=0.0,
              batch_size=60, max_iter=1, shuffle=False, alpha=0.3, tol=0.0, warm_start=True,
              random_state=0)
    ours, theirs = MLPClassifier(**kw, dtype="float64"), SkMLPClassifier(**kw)
    start = _same_start_then_train(ours, theirs, X, y)
    wd = 0.3 / 60
    assert ours._step.optimizer.weight_decay == pytest.approx(wd)
    for mine, sk in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(mine, sk, rtol=1e-9, atol=1e-12)
    assert ours._step.optimizer.decay_1d is False
    for mine, sk in zip(ours.intercepts_, theirs.intercepts_):
        np.testing.assert_allclose(mine, sk, rtol=1e-9, atol=1e-12)
    # (the decay of the old behaviour, 0.1 * wd * b0, is far beyond that tolerance; the biases moved)
    assert all(np.abs(b - b0).max() > 1e-3 for b, b0 in zip(ours.intercepts_, start[2:]))


def test_adam_takes_sklearns_steps():
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier
    X, y = blobs(n=90)
    kw = dict(hidden_layer_sizes=(7,), solver="adam", learning_rate_init=0.01, beta_1=0.8,
              beta_2=0.99, batch_size=90, max_iter=4, shuffle=False, alpha=0.0, tol=0.0,
              n_iter_no_change=100, warm_start=True, random_state=0)
    ours, theirs = MLPClassifier(**kw, dtype="float64"), SkMLPClassifier(**kw)
    _same_start_then_train(ours, theirs, X, y)
    # torch's and scikit-learn's Adam differ only in where epsilon (1e-8) enters
    for mine, sk in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, sk, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-5)


def test_regressor_partial_fit_and_target_count():
    X, y = make_regression(n_samples=100, n_features=4, random_state=0)
    reg = MLPRegressor(random_state=0).partial_fit(X, y / y.std())
    assert reg.n_iter_ == 1
    with pytest.raises(ValueError, match="targets"):
        reg.partial_fit(X, np.column_stack([y, y]))
    with pytest.raises(ValueError, match="features"):
        reg.partial_fit(X[:, :3], y)
