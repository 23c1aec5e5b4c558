"""Inputs of the public helpers around a step that took numpy's broadcasting or raw errors:
the metrics (``fastbp.training.eval_loss``, ``accuracy``, ``probabilities``, ``r2_score``),
``SavedModel.score``, ``fastbp.data.stratified_split`` and ``Standardizer``,
``ReduceLROnPlateau.step``'s metric, ``gradcheck``'s analytic gradients and ``compile``'s loss.
A label column ``(n, 1)`` is taken as scikit-learn's metrics take it; any other shape that
would broadcast into a wrong number is an error naming the argument."""
import numpy as np
import pytest

import fastbp
from fastbp import data, training
from fastbp.gradcheck import gradcheck
from fastbp.schedules import ReduceLROnPlateau

sk_metrics = pytest.importorskip("sklearn.metrics")

S = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 4.0, 0.0], [0.3, -0.2, 0.1]])
Y = np.array([0, 2, 0, 1])          # argmax is [0, 2, 1, 0]: half right


def _xent(s, y):                    # an independent reference: scipy's logsumexp
    from scipy.special import logsumexp
    return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))


@pytest.mark.parametrize("y", [Y, Y[:, None], Y.astype(np.int32)])
def test_class_metrics_take_labels_or_a_label_column(y):
    assert training.accuracy("softmax_cross_entropy", S, y) == sk_metrics.accuracy_score(Y, S.argmax(1)) == 0.5
    assert training.eval_loss("softmax_cross_entropy", S, y) == pytest.approx(_xent(S, Y), rel=1e-14)
    margins = np.maximum(0.0, S - S[np.arange(4), Y][:, None] + 1.0)
    margins[np.arange(4), Y] = 0.0
    assert training.eval_loss("svm", S, y) == pytest.approx(margins.sum(1).mean(), rel=1e-14)


@pytest.mark.parametrize("y, exc, match", [
    (Y[:1], ValueError, r"y must be of shape \(4,\), one label per row of scores, got shape \(1,\)"),
    (np.tile(Y, (2, 1)), ValueError, r"got shape \(2, 4\)"),
    (Y.astype(np.float64), TypeError, "y must hold integer class labels for loss 'softmax_cross_entropy', got dtype float64"),
    (np.array([0, 1, 3, 0]), ValueError, r"y must hold class labels in \[0, 3\) for 3 outputs, got 3"),
    (np.array([0, -1, 2, 0]), ValueError, r"in \[0, 3\) for 3 outputs, got -1"),     # was: the last column, silently
])
def test_class_metrics_refuse_labels_that_would_broadcast_or_index_wrongly(y, exc, match):
    for f in (training.accuracy, training.eval_loss):
        with pytest.raises(exc, match=match):
            f("softmax_cross_entropy", S, y)


def test_target_metrics_check_the_shape_of_the_targets():
    T = np.array([[0.5], [1.5], [-1.0], [2.0]])
    s = np.array([[0.4], [1.0], [-1.0], [3.0]])
    want = float(np.mean((s - T) ** 2))
    assert training.eval_loss("mse", s, T) == training.eval_loss("mse", s, T[:, 0]) == pytest.approx(want)
    with pytest.raises(ValueError, match=r"y must be of shape \(4, 1\), the shape of scores, for loss 'mse', got shape \(4, 4\)"):
        training.eval_loss("mse", s, np.tile(T[:, 0], (4, 1)))      # was: a broadcast (4, 4) mean
    B = (S > 0).astype(np.float64)
    assert training.accuracy("bce_with_logits", S, B) == 1.0
    with pytest.raises(ValueError, match="the shape of scores"):
        training.accuracy("bce_with_logits", S, B[:, :1])
    with pytest.raises(ValueError, match=r"scores must be of shape \(n, out_features\) with n >= 1, got shape \(0, 3\)"):
        training.eval_loss("mse", np.zeros((0, 3)), np.zeros((0, 3)))
    assert training.accuracy("mse", s, T) is None


def test_probabilities_need_float_logits():
    p = training.probabilities("bce_with_logits", np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(p, [[1 / (1 + np.exp(-1.0)), 0.5]], rtol=1e-15)
    assert p.dtype == np.float64
    assert training.probabilities("bce_with_logits", np.array([[1.0]], np.float32)).dtype == np.float32
    with pytest.raises(TypeError, match="scores must be float32 or float64 logits, got dtype int64"):
        training.probabilities("bce_with_logits", np.array([[1, 0]]))           # was [[0, 0]]
    with pytest.raises(ValueError, match=r"scores must be of shape \(n, out_features\), got shape \(2,\)"):
        training.probabilities("softmax_cross_entropy", np.array([1.0, 0.0]))
    np.testing.assert_allclose(training.probabilities("softmax_cross_entropy", [[0.0, 0.0]]), [[0.5, 0.5]])
    with pytest.raises(ValueError, match="needs a probabilistic loss"):
        training.probabilities("mse", None)


def test_r2_score_refuses_shapes_that_differ():
    y = np.array([1.0, 2.0, 4.0])
    assert training.r2_score(y[:, None], y) == 1.0 == sk_metrics.r2_score(y, y)
    p = np.array([1.5, 2.0, 3.0])
    assert training.r2_score(y, p) == pytest.approx(sk_metrics.r2_score(y, p), rel=1e-15)
    with pytest.raises(ValueError, match=r"r2_score: y and pred must have the same shape, got \(3,\) and \(2,\)"):
        training.r2_score(y, p[:2])
    with pytest.raises(ValueError, match=r"got \(3,\) and \(3, 2\)"):
        training.r2_score(y, np.ones((3, 2)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from fastbp.bundle import save_model
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(4, 2)), optimizer=fastbp.SGD(lr=0.5), batch_size=40)
    for _ in range(100):
        step(X, y)
    path = tmp_path_factory.mktemp("bundle") / "m.npz"
    save_model(step, path, task="classification")
    return fastbp.load_model(path), X, y


def test_saved_model_score_takes_a_label_column_and_refuses_a_wrong_length(saved):
    m, X, y = saved
    want = sk_metrics.accuracy_score(y, m.predict(X))
    assert m.score(X, y) == want
    assert m.score(X, y[:, None]) == want          # was 0.50125: (40, 1) == (40,) broadcast to (40, 40)
    with pytest.raises(ValueError, match=r"y must be of shape \(40,\), a label for each sample of X, got shape \(1,\)"):
        m.score(X, y[:1])
    with pytest.raises(ValueError, match="score needs at least one sample; X has 0 rows"):
        m.score(X[:0], y[:0])                   # was NaN with numpy's RuntimeWarnings


def test_stratified_split_names_its_arguments():
    y = np.arange(20) % 2
    tr, te = data.stratified_split(y, 0.25)
    assert len(te) == 5 and np.intersect1d(tr, te).size == 0
    for bad, exc, match in [
        (dict(y=y.astype(float)), TypeError, "y must hold integer class indices to stratify by"),
        (dict(y=y - 1), ValueError, "y must hold class indices >= 0, got -1"),
        (dict(y=y[:, None]), ValueError, r"y must be one-dimensional \(n_samples,\), got shape \(20, 1\)"),
        (dict(y=y, test_size="a"), TypeError, "stratified_split: test_size must be a real number, got str"),
        (dict(y=y, test_size=1.5), ValueError, r"test_size must be in \(0, 1\), got 1.5"),
    ]:
        with pytest.raises(exc, match=match):
            data.stratified_split(**bad)
    tr, te = data.stratified_split(np.linspace(0, 1, 20), 0.25, stratify=False)       # regression targets
    assert len(te) == 5


def test_standardizer_names_what_is_wrong():
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError, match="not fitted yet"):
        data.Standardizer().transform(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"Standardizer.fit: X must be of shape \(n_samples, n_features\) with at least one sample"):
        data.Standardizer().fit(np.ones((0, 2)))
    s = data.Standardizer().fit(np.array([[1.0, 2.0], [3.0, 6.0]]))
    np.testing.assert_allclose(s.transform(np.array([[2.0, 4.0]])), [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"Standardizer.transform: X must be of shape \(n_samples, 2\), got shape \(1, 3\)"):
        s.transform(np.ones((1, 3)))
    with pytest.raises(ValueError, match="mean and scale are given together"):
        data.Standardizer(mean=[0.0, 1.0])
    assert data.Standardizer.__module__ == "fastbp.data"


def test_plateau_metric_must_be_a_real_number_and_a_bad_one_changes_nothing():
    p = ReduceLROnPlateau(patience=0)
    assert p.step(np.float32(1.0), 0.1) == 0.1
    for bad in (None, "abc", np.array([1.0, 2.0]), True, 1 + 1j, np.complex128(1.0)):
        with pytest.raises(TypeError, match="ReduceLROnPlateau.step: metric must be a real number"):
            p.step(bad, 0.1)
    with pytest.raises(ValueError, match="ReduceLROnPlateau.step: lr must be >= 0"):
        p.step(1.0, -0.1)
    assert p.last_epoch == 1 and p.best == 1.0
    assert p.step(float("nan"), 0.1) == pytest.approx(0.01)      # NaN is never better (PyTorch's rule)
    assert p.step(np.array(0.5), 0.01) == 0.01                  # a 0-d array is a number


def test_gradcheck_names_a_complex_analytic_gradient():
    x = np.array([1.0, 2.0])
    with pytest.raises(TypeError, match=r"gradcheck: analytic_grads\[0\] must hold real numbers, got dtype complex128"):
        gradcheck(lambda a: float((a ** 2).sum()), [x], [np.array([2.0, 4.0 + 0j])])


@pytest.mark.parametrize("loss", [1, None, ["mse"], b"mse"])
def test_a_loss_that_is_not_a_name_is_a_type_error(loss):
    m = fastbp.Sequential(fastbp.Linear(3, 2))
    with pytest.raises(TypeError, match=f"loss must be a str naming a loss, got {type(loss).__name__}"):
        fastbp.compile(m, loss=loss)
    with pytest.raises(ValueError, match="valid losses: bce_with_logits, mse, poisson, softmax_cross_entropy, svm"):
        fastbp.compile(m, loss=loss)            # a ValueError too, as before
