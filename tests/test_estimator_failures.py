"""The estimators when a call fails, and the parameter values scikit-learn's MLP takes:
a fit or partial_fit that raises leaves the estimator exactly as it was (fitted or not);
sample weights are checked before any update; scikit-learn's accepted values are accepted;
early stopping on small data, and across warm starts, as scikit-learn."""
import re
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkC, MLPRegressor as SkR  # noqa: E402

from fastbp.estimator import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
              pytest.mark.filterwarnings("ignore:Got `batch_size`:UserWarning")]


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = rng.permutation(np.arange(n) % 3)          # every class present from n = 3 on
    return X, y


def _state(est):
    """Everything a fitted estimator's behaviour depends on but its parameters (which
    set_params changes): attributes, live weights."""
    params = est.get_params(deep=False)
    attrs = {k: (list(v) if isinstance(v, list) else v) for k, v in vars(est).items() if k not in params}
    weights = [np.array(a) for a in est.coefs_ + est.intercepts_]
    return attrs, weights


def _assert_same_state(est, before):
    attrs, weights = before
    now_attrs, now_weights = _state(est)
    assert now_attrs.keys() == attrs.keys()
    for k, v in attrs.items():
        w = now_attrs[k]
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(w, v, err_msg=k)
        elif isinstance(v, (list, str, int, float, tuple, type(None))):
            assert w == v, k
        else:
            assert w is v, k
    for a, b in zip(now_weights, weights):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ a failed call changes nothing
def test_failed_classifier_fits_keep_the_previous_model():
    X, y = _data()
    e = MLPClassifier(hidden_layer_sizes=(5,), max_iter=10, random_state=0).fit(X, y)
    before, pred, proba = _state(e), e.predict(X), e.predict_proba(X)
    failures = [
        ((X, np.array(list("abc"))[y]), {"sample_weight": -np.ones(len(y))}, "sample_weight"),
        ((X, np.full(len(y), 7)), {}, "at least 2 classes"),
        ((X[:, :3], np.full(len(y), 7)), {}, "at least 2 classes"),   # n_features_in_ reset, then refused
        ((X, np.array(list("abc"))[y]), {"sample_weight": np.r_[np.nan, np.ones(len(y) - 1)]}, "NaN"),
    ]
    for args, kw, match in failures:
        with pytest.raises(ValueError, match=match):
            e.fit(*args, **kw)
        _assert_same_state(e, before)
        np.testing.assert_array_equal(e.predict(X), pred)
        np.testing.assert_array_equal(e.predict_proba(X), proba)
    # a bad parameter found after the input checks (warm start on another architecture)
    with pytest.raises(ValueError, match="warm_start"):
        e.set_params(warm_start=True, hidden_layer_sizes=(6,)).fit(X, np.array(list("abc"))[y])
    _assert_same_state(e, before)
    np.testing.assert_array_equal(e.predict(X), pred)


def test_failed_poisson_refit_keeps_the_squared_error_model():
    X, y = _data()
    r = MLPRegressor(hidden_layer_sizes=(5,), max_iter=10, random_state=0).fit(X, y * 1.0)
    before, pred = _state(r), r.predict(X)
    with pytest.raises(ValueError, match="negative"):
        r.set_params(loss="poisson").fit(X, y - 1.0)
    _assert_same_state(r, before)
    np.testing.assert_array_equal(r.predict(X), pred)          # not exp(pred)
    assert r.out_activation_ == "identity"
    r.set_params(loss="squared_error").partial_fit(X, y * 1.0)   # still the squared-error model
    assert r.out_activation_ == "identity"


def _diverging(X):
    """X whose second half drives a float32 squared error to infinity: the first minibatches
    train, a later one diverges (mid-epoch)."""
    Xbad = X.copy()
    Xbad[len(X) // 2:] *= 1e30
    return Xbad


def test_partial_fit_that_diverges_mid_epoch_changes_nothing():
    X, y = _data()
    y = y * 1.0
    kw = dict(hidden_layer_sizes=(5,), batch_size=10, shuffle=False, random_state=0)
    a, b = MLPRegressor(**kw), MLPRegressor(**kw)
    for est in (a, b):
        est.partial_fit(X, y)
    before = _state(a)
    with pytest.raises(ValueError, match="diverged.*left as it was"):
        a.partial_fit(_diverging(X), y)            # 6 minibatches train before the 7th diverges
    _assert_same_state(a, before)
    assert a._step.n_steps == b._step.n_steps == 12
    # the optimizer state and counters too: training on gives bitwise the twin's results
    a.partial_fit(X, y)
    b.partial_fit(X, y)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)
    assert a.loss_curve_ == b.loss_curve_ and a.t_ == b.t_ == 240


def test_first_fit_or_partial_fit_that_fails_leaves_the_estimator_unfitted():
    X, y = _data()
    sw = np.ones(len(y))
    sw[100] = -1.0
    for call in (lambda e: e.fit(_diverging(X), y * 1.0),
                 lambda e: e.partial_fit(_diverging(X), y * 1.0),
                 lambda e: e.fit(X, y * 1.0, sample_weight=sw)):
        e = MLPRegressor(hidden_layer_sizes=(5,), batch_size=10, shuffle=False, random_state=0)
        with pytest.raises(ValueError):
            call(e)
        assert set(vars(e)) == set(e.get_params())           # nothing but the parameters
        with pytest.raises(NotFittedError):
            e.predict(X)
    c = MLPClassifier(hidden_layer_sizes=(5,))
    with pytest.raises(ValueError, match="sample_weight"):
        c.partial_fit(X, y, classes=[0, 1, 2], sample_weight=sw)
    assert not hasattr(c, "classes_") and set(vars(c)) == set(c.get_params())


# ------------------------------------------------------------------ sample_weight, up front
@pytest.mark.parametrize("incremental", [False, True])
def test_negative_sample_weight_is_refused_before_any_update_naming_the_users_row(incremental):
    X, y = _data()
    sw = np.ones(len(y))
    sw[100] = -1.0
    sw[110] = -2.0
    e = MLPClassifier(hidden_layer_sizes=(5,), batch_size=16, shuffle=True, random_state=0, max_iter=3)
    e.fit(X, y)
    n_steps, before = e._step.n_steps, _state(e)
    msg = r"sample_weight must be >= 0.*sample_weight\[100\] is -1.0, and 1 more"
    with pytest.raises(ValueError, match=msg):
        (e.partial_fit if incremental else e.fit)(X, y, sample_weight=sw)
    assert e._step.n_steps == n_steps
    _assert_same_state(e, before)


# ------------------------------------------------------------------ scikit-learn's parameter values
@pytest.mark.parametrize("params", [dict(n_iter_no_change=np.inf), dict(n_iter_no_change=float("inf")),
                                    dict(verbose=2), dict(verbose=np.int64(0)),
                                    dict(validation_fraction=0.0), dict(momentum=0.0, solver="sgd"),
                                    dict(momentum=1.0, solver="sgd"),
                                    dict(random_state=np.random.RandomState(0)),
                                    dict(random_state=2**32 - 1)])
@pytest.mark.parametrize("Ours, Theirs", [(MLPClassifier, SkC), (MLPRegressor, SkR)])
def test_values_sklearn_accepts_are_accepted(params, Ours, Theirs, capsys):
    X, y = _data(n=40)
    y = y if Ours is MLPClassifier else y * 1.0
    Theirs(**params)._validate_params()                 # scikit-learn's own constraints take it
    est = Ours(hidden_layer_sizes=(3,), max_iter=3, random_state=0).set_params(**params).fit(X, y)
    assert est.n_iter_ == 3


def test_n_iter_no_change_inf_never_stops():
    X, y = _data(n=40)
    est = MLPClassifier(hidden_layer_sizes=(3,), max_iter=30, tol=10.0, n_iter_no_change=np.inf,
                        random_state=0).fit(X, y)
    assert est.n_iter_ == 30


@pytest.mark.parametrize("bad", ["abc", -1, 2**32, 1.5, np.random.default_rng(0)])
def test_bad_random_state_names_the_parameter(bad):
    X, y = _data(n=40)
    with pytest.raises(ValueError, match="random_state"):
        SkC(random_state=bad)._validate_params()        # scikit-learn refuses it too
    with pytest.raises(ValueError, match="random_state must be"):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, random_state=bad).fit(X, y)


@pytest.mark.parametrize("bad", ["float16", "f4,(2", ("f4", -1), np.zeros(3)])
def test_bad_dtype_is_a_type_error_naming_dtype(bad):
    X, y = _data(n=40)
    with pytest.raises(TypeError, match="dtype must be"):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, dtype=bad).fit(X, y)


@pytest.mark.parametrize("params, match", [(dict(momentum=1.5, solver="sgd"), "momentum"),
                                           (dict(verbose=-1), "verbose"),
                                           (dict(n_iter_no_change=2.5), "n_iter_no_change"),
                                           (dict(validation_fraction=-0.1), "validation_fraction")])
def test_values_still_refused_name_the_parameter(params, match):
    X, y = _data(n=40)
    with pytest.raises(ValueError, match=match):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, **params).fit(X, y)


# ------------------------------------------------------------------ early stopping
def test_early_stopping_on_small_multiclass_data_falls_back_to_a_random_split():
    X, y = _data(n=20)
    # ceil(0.1 * 20) = 2 validation rows, 3 classes: no stratified split (scikit-learn
    # does not stratify multiclass problems at all)
    e = MLPClassifier(hidden_layer_sizes=(3,), max_iter=5, early_stopping=True, random_state=0).fit(X, y)
    assert len(e.validation_scores_) == e.n_iter_ >= 1
    SkC(hidden_layer_sizes=(3,), max_iter=5, early_stopping=True, random_state=0).fit(X, y)


@pytest.mark.parametrize("n, fraction, match", [(120, 0.0, "validation set is too small.*validation_fraction"),
                                                (10, 0.1, "validation set is too small.*validation_fraction"),
                                                (3, 0.9, "No sample is left.*validation_fraction")])
@pytest.mark.parametrize("Est", [MLPClassifier, MLPRegressor])
def test_early_stopping_without_room_for_a_validation_set_names_validation_fraction(n, fraction, match, Est):
    X, y = _data(n=n)
    y = y if Est is MLPClassifier else y * 1.0
    with pytest.raises(ValueError, match=match):
        Est(hidden_layer_sizes=(3,), early_stopping=True, validation_fraction=fraction).fit(X, y)
    # without early stopping the fraction is not used (scikit-learn's [0, 1) is accepted)
    Est(hidden_layer_sizes=(3,), max_iter=2, validation_fraction=fraction).fit(X, y)


def test_warm_start_continues_the_validation_record_as_sklearn():
    X, y = _data(n=200)
    kw = dict(hidden_layer_sizes=(8,), max_iter=4, early_stopping=True, warm_start=True, random_state=0,
              n_iter_no_change=100)
    ours, theirs = MLPClassifier(**kw, dtype="float64"), SkC(**kw)
    for est in (ours, theirs):
        est.fit(X, y)
        first = list(est.validation_scores_)
        est.fit(X, y)
        assert est.validation_scores_[:len(first)] == first
        assert len(est.validation_scores_) == 8
        assert est.best_validation_score_ == max(est.validation_scores_)


def test_warm_start_that_never_beats_the_best_score_keeps_the_best_weights():
    X, y = _data(n=200)
    e = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, early_stopping=True, warm_start=True,
                      random_state=0, dtype="float64").fit(X, y)
    best, best_score = [np.array(c) for c in e.coefs_], e.best_validation_score_
    # a rate so small the validation accuracy cannot change: no epoch beats the best score,
    # so the fit ends with the previous best weights (a documented difference: scikit-learn's
    # _best_coefs is its coefs_ list after an early-stopped fit, moved by the warm fit)
    e.set_params(learning_rate_init=1e-9, max_iter=2).fit(X, y)
    assert e.best_validation_score_ == best_score and len(e.validation_scores_) == e.n_iter_ + 5
    for a, b in zip(e.coefs_, best):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ documented differences
def test_regressor_predict_returns_xs_dtype_as_sklearn():
    """scikit-learn's MLPRegressor.predict returns X's dtype (its test_mlp_param_dtypes); fastbp's
    returned float64 for float32 X, whatever the estimator's dtype."""
    X, y = _data(n=40)
    for dtype in ("float32", "float64", None):
        for Xd in (X.astype(np.float32), X.astype(np.float64), X.astype(np.int64)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = MLPRegressor(hidden_layer_sizes=(3,), max_iter=2, random_state=0, dtype=dtype).fit(Xd, y * 1.0)
                theirs = SkR(hidden_layer_sizes=(3,), max_iter=2, random_state=0).fit(Xd, y * 1.0)
            assert ours.predict(Xd).dtype == theirs.predict(Xd).dtype == (
                np.float32 if Xd.dtype == np.float32 else np.float64)
            assert ours.predict(Xd).dtype == ours.predict(Xd.tolist() if Xd.dtype == np.int64 else Xd).dtype


def test_single_class_is_refused_and_the_difference_documented():
    import fastbp.estimator as mod
    X, y = _data(n=40)
    SkC(hidden_layer_sizes=(3,), max_iter=2).fit(X, np.zeros(40))        # scikit-learn fits it
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=2).fit(X, np.zeros(40))
    assert "single class" in mod.__doc__


@pytest.mark.parametrize("y,shown", [(np.full(20, 7), "7"), (np.full(20, -3, np.int16), "-3"),
                                     (np.array(["spam"] * 20), "'spam'"),
                                     (np.array(["spam"] * 20, dtype=object), "'spam'")])
def test_single_class_error_shows_the_label_as_written(y, shown):
    """The label as the user wrote it, not numpy's scalar repr (``np.int64(7)``, ``np.str_('spam')``)."""
    X, _ = _data(n=20)
    with pytest.raises(ValueError, match=rf"y has only 1 class: {re.escape(shown)}$"):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=2).fit(X, y)


def test_warm_start_after_lbfgs_or_without_early_stopping_starts_the_missing_records():
    """An lbfgs fit has no loss_curve_ (as scikit-learn's): a stochastic warm start after it
    starts one (it raised AttributeError); early stopping after a fit without it starts the
    validation record (scikit-learn raises: its validation_scores_ is None)."""
    X, y = _data()
    e = MLPClassifier(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=5, warm_start=True,
                      random_state=0).fit(X, y)
    assert not hasattr(e, "loss_curve_")
    e.set_params(solver="adam").fit(X, y)
    assert len(e.loss_curve_) == 5 and e.validation_scores_ is None
    e.set_params(early_stopping=True).fit(X, y)
    assert len(e.loss_curve_) == 10 and len(e.validation_scores_) == 5
    assert e.best_validation_score_ == max(e.validation_scores_)


@pytest.mark.parametrize("params", [{"max_iter": "a"}, {"max_iter": 0}, {"precision": None}, {"activation": 3},
                                    {"dtype": "float16"}, {"shuffle": 1}, {"hidden_layer_sizes": 0},
                                    {"hidden_layer_sizes": (5.0,)}, {"hidden_layer_sizes": "5"},
                                    {"hidden_layer_sizes": None}, {"hidden_layer_sizes": (4, -1)}])
def test_bad_hyper_parameters_raise_scikit_learns_invalid_parameter_error(params):
    # scikit-learn raises InvalidParameterError (a ValueError and a TypeError) for a bad type or
    # value: code written for its MLP catches fastbp's alike (precision=None was a ValueError
    # here and a TypeError in fastbp.compile)
    from sklearn.utils._param_validation import InvalidParameterError
    X = np.random.default_rng(0).standard_normal((20, 3))
    y = np.arange(20) % 2
    for cls in (MLPClassifier, MLPRegressor):
        for kind in (InvalidParameterError, ValueError, TypeError):
            with pytest.raises(kind, match=next(iter(params))):
                cls(**params).fit(X, y)


def test_predict_log_proba_is_the_log_of_predict_proba_where_probabilities_underflow():
    # scikit-learn's contract ("equivalent to log(predict_proba(X))", enforced by
    # check_classifiers_train): a float64 log-softmax was finite where the float32 probability had
    # underflowed to 0, and check_classifiers_train failed with "inf location mismatch"
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X, y = X[:400], y[:400]
    underflow = {}
    for dtype, max_iter, Y in (("float32", 200, y), ("float32", 50, np.eye(10)[y].astype(int)), ("float64", 20, y)):
        for clf in (MLPClassifier(solver="lbfgs", max_iter=max_iter, random_state=0, dtype=dtype).fit(X, Y),):
            for Xp in (X, 30 * X):                  # 30 X: outputs far apart, probabilities underflow
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # no divide-by-zero warning for a log of 0
                    lp = clf.predict_log_proba(Xp)
                P = clf.predict_proba(Xp)
                assert lp.dtype == P.dtype == np.dtype(dtype)
                with np.errstate(divide="ignore"):
                    np.testing.assert_array_equal(lp, np.log(P))
                underflow[dtype] = underflow.get(dtype, False) or bool((P == 0).any())
    assert underflow["float32"]                     # the underflowing case was there


def test_sklearn_check_classifiers_train_passes_with_lbfgs():
    from sklearn.utils.estimator_checks import check_classifiers_train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_classifiers_train("MLPClassifier", MLPClassifier(solver="lbfgs", random_state=0))


def test_predict_decides_on_the_outputs_not_on_rounded_probabilities(tmp_path):
    # distinct float32 outputs whose float32 probabilities tie: predict took the first class,
    # fastbp.load_model(...).predict (and scikit-learn, in float64) the largest output
    import fastbp
    rng = np.random.RandomState(0)
    X = rng.rand(40, 2)
    y = (X[:, 0] * 3).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(), max_iter=2, random_state=0).fit(X, y)
    clf.coefs_[0][...] = 0
    clf.intercepts_[0][...] = [0.0, 1e-9, 0.0]
    assert clf.predict_proba(X[:1])[0, 0] == clf.predict_proba(X[:1])[0, 1]
    assert clf.predict(X[:1])[0] == 1
    clf.save(tmp_path / "m.npz")
    assert fastbp.load_model(tmp_path / "m.npz").predict(X[:1])[0] == 1
    Y = np.c_[X[:, 0] > .5, X[:, 1] > .5].astype(int)
    ml = MLPClassifier(hidden_layer_sizes=(), max_iter=2, random_state=0).fit(X, Y)
    ml.coefs_[0][...] = 0
    ml.intercepts_[0][...] = 1e-8                   # outputs above 0: probabilities above 0.5
    assert (ml.predict_proba(X[:1]) == 0.5).all()   # rounded to float32
    np.testing.assert_array_equal(ml.predict(X[:1]), [[1, 1]])
    ml.save(tmp_path / "ml.npz")
    np.testing.assert_array_equal(fastbp.load_model(tmp_path / "ml.npz").predict(X[:1]), [[1, 1]])


def test_lbfgs_does_not_warn_about_batch_size():
    # lbfgs uses the whole data set: scikit-learn does not warn that batch_size is clipped
    X = np.random.default_rng(0).standard_normal((20, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPRegressor(solver="lbfgs", batch_size=500, max_iter=5).fit(X, X[:, 0])


@pytest.mark.parametrize("bad", [(5.0,), "5", None, [np.float64(3)]])
def test_hidden_layer_sizes_that_are_not_ints_say_so(bad):
    """``(5.0,)`` was refused as 'must be > 0'."""
    X, y = _data()
    with pytest.raises(ValueError, match=r"hidden_layer_sizes must be an int or a sequence of ints"):
        MLPClassifier(hidden_layer_sizes=bad).fit(X, y)


def test_a_regressors_bad_loss_is_refused_before_its_data():
    from sklearn.utils._param_validation import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="'loss' parameter of MLPRegressor"):
        MLPRegressor(loss="bogus").fit(np.array([["a"]]), [1.0])       # X bad too: loss named first


def test_an_activation_set_after_the_fit_is_refused_not_ignored():
    """``set_params(activation=...)`` after a fit: partial_fit trained on with the compiled
    activation and predict used it, silently (scikit-learn reads the new one); both now say
    so, and nothing changes.  Set back, the model works as before."""
    X, y = _data()
    e = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0).fit(X, y)
    p = e.predict_proba(X)
    coefs = [c.copy() for c in e.coefs_]
    e.set_params(activation="tanh")
    for call in (lambda: e.partial_fit(X, y), lambda: e.predict(X), lambda: e.predict_proba(X)):
        with pytest.raises(ValueError, match=r"continues the fitted model, whose activation='tanh' \(fitted: "
                                             r"'relu'\) set_params changed"):
            call()
    for a, b in zip(e.coefs_, coefs):
        np.testing.assert_array_equal(a, b)
    e.set_params(activation="relu")
    np.testing.assert_array_equal(e.predict_proba(X), p)
    e.set_params(activation="tanh", warm_start=True)
    with pytest.raises(ValueError, match=r"warm_start=True continues the fitted model, whose activation='tanh'"):
        e.fit(X, y)
    e.set_params(activation="relu", hidden_layer_sizes=(6,))
    with pytest.raises(ValueError, match=r"hidden_layer_sizes=\(6,\) \(fitted: \(5,\)\)"):
        e.fit(X, y)
    e.set_params(hidden_layer_sizes=(5,), precision="bf16")
    with pytest.raises(ValueError, match=r"precision='bf16' \(fitted: 'full'\)"):
        e.predict(X)
    e.set_params(precision="full", activation="tanh")
    e.set_params(warm_start=False).fit(X, y)           # a new fit takes the new activation
    assert e.predict_proba(X).shape == p.shape
    f = MLPClassifier(hidden_layer_sizes=(5,), activation="logistic", max_iter=2, random_state=0).fit(X, y)
    f.set_params(activation="sigmoid")                  # fastbp's name of the same function
    np.testing.assert_array_equal(f.predict_proba(X), f.set_params(activation="logistic").predict_proba(X))


def test_partial_fit_classes_of_two_dimensions_are_named():
    """``classes=[[0, 1]]`` was read as a label indicator matrix: 'Y must have shape (n, 2)'."""
    X, y = _data()
    e = MLPClassifier(hidden_layer_sizes=(4,))
    with pytest.raises(ValueError, match=r"classes must be a 1-D array-like of the class labels, got one of "
                                         r"shape \(1, 2\)"):
        e.partial_fit(X, y % 2, classes=[[0, 1]])
    assert not hasattr(e, "classes_")
    e.partial_fit(X, y % 2, classes=[0, 1])
    assert list(e.classes_) == [0, 1]


def test_partial_fit_takes_a_column_of_classes_as_scikit_learn():
    """``classes`` of shape (n, 1) is a column of labels (scikit-learn's MLPClassifier takes it:
    ``unique_labels`` of a column vector); only other 2-D shapes are refused."""
    X, y = _data()
    e = MLPClassifier(hidden_layer_sizes=(4,), random_state=0)
    e.partial_fit(X, y % 3, classes=np.array([[2], [0], [1]]))
    assert list(e.classes_) == [0, 1, 2]
    e.partial_fit(X, y % 3, classes=[[0], [1], [2]])         # the same classes on a later call
    with pytest.raises(ValueError, match="is not the same as on last call"):
        e.partial_fit(X, y % 3, classes=[[0], [1]])


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("incremental", [False, True], ids=["fit", "warm-fit"])
def test_a_convergence_warning_raised_as_an_error_keeps_the_fitted_model(solver, incremental):
    """Warnings as errors (``pytest -W error``): max_iter's ConvergenceWarning reaches the
    caller after the fit is kept, as scikit-learn's is; it used to be raised inside the
    all-or-nothing guard, which then undid the whole fit."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X[:, 0] > 0).astype(int)
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, solver=solver,
                        warm_start=incremental)
    if incremental:
        est.fit(X, y)
    before = [np.array(w) for w in est.coefs_] if incremental else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning, match="converge"):
            est.fit(X, y)
    assert est.n_iter_ == 3 and est.predict(X).shape == (60,)
    if incremental:
        assert any(not np.array_equal(a, b) for a, b in zip(before, est.coefs_))
    with warnings.catch_warnings(record=True) as caught:     # and only once, as a warning
        warnings.simplefilter("always")
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, solver=solver).fit(X, y)
    assert [w.category for w in caught] == [ConvergenceWarning], caught


def test_a_fit_that_fails_issues_no_convergence_warning():
    X = np.random.default_rng(0).normal(size=(40, 3))
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, learning_rate_init=1e30, solver="sgd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="diverged"):
            est.fit(X * 1e10, X[:, 0] * 1e10)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert not hasattr(est, "n_iter_")


@pytest.mark.parametrize("as_series", [False, True])
def test_a_missing_regression_target_is_called_nan(as_series):
    """An object y with a None (JSON, pandas) becomes NaN after scikit-learn's finiteness check;
    it was reported as 'a value too large for float64', advising dtype='float64'."""
    X = np.random.default_rng(0).normal(size=(6, 2))
    y = np.array([1.0, None, 2.0, 3.0, 4.0, 5.0], dtype=object)
    if as_series:
        y = pytest.importorskip("pandas").Series(y)
    for dtype in ("float32", "float64"):
        with pytest.raises(ValueError, match="Input y contains NaN"):
            MLPRegressor(max_iter=2, dtype=dtype).fit(X, y)
    with pytest.raises(ValueError, match=r"too large for float32 \(1e\+39\)"):
        MLPRegressor(max_iter=2).fit(X, np.array([1e39, 1, 2, 3, 4, 5], dtype=object))


@pytest.mark.parametrize("Est, Sk", [(MLPClassifier, SkC), (MLPRegressor, SkR)])
def test_predict_refuses_strings_as_scikit_learn(Est, Sk):
    """scikit-learn validates X at predict with dtype='numeric': an array of (numeric) strings
    is a ValueError; fastbp converted it silently."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), np.arange(30) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = Est(hidden_layer_sizes=(5,), max_iter=2).fit(X, y), Sk(hidden_layer_sizes=(5,), max_iter=2).fit(X, y)
    for Xs in (X.astype(str), X.astype(bytes)):
        with pytest.raises(ValueError) as sk_err:
            theirs.predict(Xs)
        with pytest.raises(ValueError, match=re.escape(str(sk_err.value))):
            ours.predict(Xs)
    assert ours.predict(X.astype(object)).shape[0] == 30       # object numbers convert, as scikit-learn's


# ------------------------------------------------------------------ scikit-learn's _optimizer
@pytest.mark.parametrize("learning_rate", ["invscaling", "constant", "adaptive"])
def test_private_optimizer_learning_rate_follows_sklearns(learning_rate):
    """scikit-learn's own tests read ``est._optimizer.learning_rate`` (test_mlp.py:
    test_learning_rate_warmstart, test_adaptive_learning_rate); it was a method here."""
    X = [[3, 2], [1, 6], [5, 6], [-2, -4]]
    y = [1, 1, 1, 0]
    rates = {}
    for C in (MLPClassifier, SkC):
        kw = dict(dtype="float64") if C is MLPClassifier else {}
        mlp = C(solver="sgd", hidden_layer_sizes=4, learning_rate=learning_rate, max_iter=1,
                power_t=0.25, warm_start=True, random_state=0, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mlp.fit(X, y)
            prev = mlp._optimizer.learning_rate
            mlp.fit(X, y)
        rates[C] = (prev, mlp._optimizer.learning_rate)
        if learning_rate == "invscaling":
            assert mlp._optimizer.learning_rate == mlp.learning_rate_init / pow(8 + 1, mlp.power_t)
        else:
            assert rates[C][0] == rates[C][1] == mlp.learning_rate_init
    assert rates[MLPClassifier] == rates[SkC]


def test_private_optimizer_adaptive_rate_falls_below_1e_6_and_adams_is_bias_corrected():
    clf = MLPClassifier(tol=0.5, max_iter=3000, solver="sgd", learning_rate="adaptive")
    clf.fit([[3, 2], [1, 6]], [1, 0])
    assert clf.max_iter > clf.n_iter_ and 1e-6 > clf._optimizer.learning_rate
    X, y = _data(n=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(hidden_layer_sizes=(3,), max_iter=3, random_state=0, batch_size=10).fit(X, y)
        theirs = SkC(hidden_layer_sizes=(3,), max_iter=3, random_state=0, batch_size=10).fit(X, y)
    assert ours._optimizer.t == theirs._optimizer.t == 12
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)
    for est in (MLPClassifier(), MLPClassifier(solver="lbfgs", max_iter=3).fit(X, y)):
        with pytest.raises(AttributeError, match="_optimizer"):
            est._optimizer


def test_private_optimizer_keeps_the_epsilon_it_was_made_with():
    """scikit-learn makes ``_optimizer`` in the first ``partial_fit`` only: a later
    ``set_params(epsilon=...)`` changes neither the training nor what it shows."""
    X, y = _data(n=40)
    shown = []
    for cls in (MLPClassifier, SkC):
        est = cls(hidden_layer_sizes=(3,), random_state=0, epsilon=1e-7)
        est.partial_fit(X, y, classes=np.unique(y))
        est.set_params(epsilon=0.5)
        est.partial_fit(X, y)
        shown.append((est._optimizer.epsilon, est._optimizer.t))
    assert shown[0] == shown[1] == (1e-7, shown[1][1])


def test_warm_start_trains_the_coefs_arrays_in_place_as_sklearn():
    """scikit-learn's warm start makes a fresh optimizer over the same coefs_/intercepts_
    arrays: a reference taken before the fit follows it (it had kept the old weights); when
    the step must be compiled again (another batch size), the weights are carried over."""
    X, y = _data(n=60)
    for cls in (MLPClassifier, SkC):
        est = cls(hidden_layer_sizes=(4,), max_iter=3, random_state=0, batch_size=20)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
            held, first = est.coefs_[0], est.coefs_[0].copy()
            est.set_params(warm_start=True, max_iter=2).fit(X, y)
        assert held is est.coefs_[0] or np.shares_memory(held, est.coefs_[0])
        assert not np.array_equal(held, first)
        if cls is MLPClassifier:
            ours = est
    np.testing.assert_allclose(ours.predict_proba(X), est.predict_proba(X), rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        before = [w.copy() for w in ours.coefs_]
        ours.set_params(batch_size=7).fit(X, y)           # a new step: the weights carried over
    assert not any(np.shares_memory(h, w) for h, w in zip(before, ours.coefs_))


def test_warm_start_that_diverges_changes_nothing():
    """The warm start trains the step in place: a fit that diverges mid-epoch puts back its
    weights, optimizer state and counters (training on gives the twin's bits)."""
    X, y = _data()
    y = y * 1.0
    kw = dict(hidden_layer_sizes=(5,), batch_size=10, shuffle=False, random_state=0, max_iter=2)
    a, b = MLPRegressor(**kw), MLPRegressor(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in (a, b):
            est.fit(X, y).set_params(warm_start=True)
        before = _state(a)
        held = a.coefs_[0]
        with pytest.raises(ValueError, match="diverged.*left as it was"):
            a.fit(_diverging(X), y)
        _assert_same_state(a, before)
        assert np.shares_memory(held, a.coefs_[0])
        a.fit(X, y)
        b.fit(X, y)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)
    assert a.loss_curve_ == b.loss_curve_ and a.t_ == b.t_


@pytest.mark.parametrize("Ours, Theirs, kw", [(MLPClassifier, SkC, {}), (MLPRegressor, SkR, {"early_stopping": True}),
                                              (MLPClassifier, SkC, {"solver": "sgd", "warm_start": True})])
def test_a_randomstate_instance_gives_sklearns_fit(Ours, Theirs, kw):
    """A RandomState instance is drawn from as scikit-learn draws from it (the
    initialisation, the validation split, the shuffles, a warm start's next fit): the fits
    agree to rounding in float64 (the step's own seed is taken from a copy)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4))
    y = np.arange(60) % 3 if Ours is MLPClassifier else X.sum(1)
    fits = []
    for cls, extra in ((Ours, {"dtype": "float64"}), (Theirs, {})):
        est = cls(hidden_layer_sizes=(5,), max_iter=4, batch_size=16, random_state=np.random.RandomState(3),
                  **kw, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(2 if kw.get("warm_start") else 1):
                est.fit(X, y)
        fits.append((est.predict_proba(X) if Ours is MLPClassifier else est.predict(X), est.loss_curve_))
    np.testing.assert_allclose(fits[0][0], fits[1][0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fits[0][1], fits[1][1], rtol=1e-12)
