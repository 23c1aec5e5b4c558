"""Saved models (fastbp.bundle): fastbp train --save, estimators' save, fastbp predict/evaluate
on raw features, plain checkpoints (issue 16 part 3)."""
import json
import re
import warnings

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("sklearn")

import fastbp  # noqa: E402
from fastbp import bundle, checkpoint, cli, data  # noqa: E402


def blobs(n_per_class=30, n_features=4, n_classes=3, seed=0, offset=100.0, spread=50.0):
    """Raw features far from standardised (offset, spread): a model without its scaling fails."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(n_classes, n_features))
    X = np.concatenate([c + rng.normal(size=(n_per_class, n_features)) for c in centers])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return offset + spread * X, y


def write_csv(path, X, labels=None, names=None, label_name="animal"):
    with open(path, "w") as f:
        if names is not None:
            f.write(",".join(list(names) + ([label_name] if labels is not None else [])) + "\n")
        for i, row in enumerate(X):
            cells = [repr(float(v)) for v in row] + ([str(labels[i])] if labels is not None else [])
            f.write(",".join(cells) + "\n")
    return str(path)


def accuracy_of(out):
    m = re.search(r"^test accuracy: ([0-9.]+) \((\d+)/(\d+)\)$", out, re.M)
    assert m, out
    return float(m.group(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained by the CLI on a CSV with a header and string labels."""
    d = tmp_path_factory.mktemp("bundle")
    X, y = blobs()
    labels = np.array(["cat", "dog", "eel"])[y]
    csv = write_csv(d / "train.csv", X, labels, names=["w", "x", "y", "z"])
    model = str(d / "m.npz")
    out = _run(["train", "--quiet", "--data", csv, "--epochs", "25", "--hidden", "16", "--lr", "0.01",
                "--save", model])
    return dict(dir=d, X=X, y=y, labels=labels, csv=csv, model=model, out=out)


def _run(argv, capsys=None):
    import contextlib
    import io
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = cli.main(argv)
    assert rc == 0, e.getvalue()
    return o.getvalue()


def _run_rc(argv):
    import contextlib
    import io
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = cli.main(argv)
    return rc, o.getvalue(), e.getvalue()


# ------------------------------------------------------------------ fastbp train --save
def test_saved_model_is_self_contained(trained):
    m = fastbp.load_model(trained["model"])
    assert not m.plain and m.task == "classification"
    np.testing.assert_array_equal(m.classes_, ["cat", "dog", "eel"])
    assert m.feature_names == ["w", "x", "y", "z"] and m.label_name == "animal" and m.label_index == 4
    assert m.x_mean_.shape == (4,) and m.x_scale_.shape == (4,) and m.x_mean_.dtype == np.float64
    info = m.info
    assert info["fastbp_version"] == fastbp.__version__ and info["data"] == "train.csv"
    assert info["epochs"] == 25 and re.match(r"\d{4}-\d\d-\d\dT", info["created"])
    assert info["test_accuracy"] == pytest.approx(accuracy_of(trained["out"]), abs=1e-4)
    # raw features in, original labels out: reproduces the printed test accuracy on the test split
    X, y = trained["X"], trained["y"]
    _, te = data.stratified_split(y, 0.2, seed=0)
    pred = m.predict(X[te])
    assert pred.dtype.kind == "U"
    assert f"test accuracy: {np.mean(pred == trained['labels'][te]):.4f}" in trained["out"]
    assert m.score(X, trained["labels"]) >= 0.9
    P = m.predict_proba(X)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(m.classes_[P.argmax(axis=1)], m.predict(X))


def test_bundle_is_pickle_free_and_loads_as_a_plain_checkpoint(trained):
    with np.load(trained["model"], allow_pickle=False) as z:
        for k in z.files:
            assert z[k].dtype != object
        meta = json.loads(str(z["meta"]))
    b = meta["extra"]["fastbp_bundle"]
    assert b["format"] == bundle.FORMAT_NAME and b["format_version"] == bundle.FORMAT_VERSION
    step = fastbp.load(trained["model"])          # the checkpoint part, as before
    m = fastbp.load_model(trained["model"])
    np.testing.assert_array_equal(step.param_vector, m.step.param_vector)


def test_cli_predict_on_raw_features(trained, tmp_path):
    X, labels = trained["X"], trained["labels"]
    m = fastbp.load_model(trained["model"])
    # columns in another order, with the label column: matched by name, the label ignored
    order = [3, 1, 0, 2]
    new = write_csv(tmp_path / "new.csv", X[:, order], labels, names=[["w", "x", "y", "z"][j] for j in order])
    out = tmp_path / "p.csv"
    text = _run(["predict", "--model", trained["model"], "--data", new, "--out", str(out), "--proba"])
    assert f"{len(X)} rows written to {out}" in text
    import pandas as pd
    df = pd.read_csv(out)
    assert list(df.columns) == ["prediction", "proba_cat", "proba_dog", "proba_eel"]
    np.testing.assert_array_equal(df["prediction"], m.predict(X))
    np.testing.assert_allclose(df[["proba_cat", "proba_dog", "proba_eel"]], m.predict_proba(X), rtol=1e-6)
    # no header, no label column: by count, to stdout
    bare = write_csv(tmp_path / "bare.csv", X[:5])
    text = _run(["predict", "--model", trained["model"], "--data", bare])
    assert text.splitlines() == ["prediction", *m.predict(X[:5])]


@pytest.mark.parametrize("content, needle", [
    ("w,x,y\n1,2,3\n", "missing feature column(s) 'z'"),
    ("w,x,y,z,id\n1,2,3,4,5\n", "'id' are not features"),
    ("1,2,3\n", "3 columns, the model expects 4 features"),
    ("w,x,y,z\n1,,3,4\n", "line 2, column 'x': missing value"),
])
def test_cli_predict_column_errors_are_one_line(trained, tmp_path, content, needle):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    rc, out, err = _run_rc(["predict", "--model", trained["model"], "--data", str(p)])
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_cli_evaluate(trained):
    out = _run(["evaluate", "--model", trained["model"], "--data", trained["csv"]])
    m = fastbp.load_model(trained["model"])
    acc = m.score(trained["X"], trained["labels"])
    n = len(trained["labels"])
    assert f"accuracy: {acc:.4f} ({int(round(acc * n))}/{n})" in out
    for c in ("cat", "dog", "eel"):
        assert re.search(rf"^\s+{c}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+30$", out, re.M), out
    # evaluate needs the labels
    rc, out, err = _run_rc(["evaluate", "--model", trained["model"], "--data",
                            write_csv(trained["dir"] / "nolab.csv", trained["X"][:4])])
    assert rc == 1 and "no label column 'animal'" in err


def test_evaluate_counts_unseen_labels_as_errors(trained, tmp_path):
    X, labels = trained["X"][:10], trained["labels"][:10].copy()
    labels[:7] = "yak"
    p = write_csv(tmp_path / "u.csv", X, labels, names=["w", "x", "y", "z"])
    rc, out, err = _run_rc(["evaluate", "--model", trained["model"], "--data", p])
    # the distinct labels: no ', ...' for 7 samples of one label
    assert rc == 0 and "7 samples have labels the model never saw ('yak'): counted as errors" in err
    m = fastbp.load_model(trained["model"])
    assert f"accuracy: {np.mean(m.predict(X) == labels):.4f}" in out


def test_digits_bundle_stores_the_divide_by_16(tmp_path):
    path = str(tmp_path / "d.npz")
    out = _run(["train", "--quiet", "--epochs", "2", "--hidden", "16", "--save", path])
    m = fastbp.load_model(path)
    np.testing.assert_array_equal(m.x_mean_, 0.0)
    np.testing.assert_array_equal(m.x_scale_, 16.0)
    np.testing.assert_array_equal(m.classes_, np.arange(10))
    X, y, _ = data.load_digits()
    _, te = data.stratified_split(y, 0.2, seed=0)
    assert f"test accuracy: {np.mean(m.predict(X[te]) == y[te]):.4f}" in out
    # the step sees exactly what training saw
    np.testing.assert_array_equal(m.decision_function(X[te]),
                                  m.step.predict(np.ascontiguousarray(X[te] / 16.0, dtype=np.float32)))


def test_regression_bundle_predicts_in_original_units(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(160, 3)) * [1.0, 10.0, 1000.0]
    y = 5000.0 + 300.0 * X[:, 0] + 20.0 * X[:, 1] - 0.1 * X[:, 2]
    csv = write_csv(tmp_path / "r.csv", X, y, names=["a", "b", "c"], label_name="price")
    path = str(tmp_path / "r.npz")
    out = _run(["train", "--quiet", "--task", "regression", "--data", csv, "--epochs", "60", "--hidden", "16",
                "--lr", "0.01", "--save", path])
    r2 = float(re.search(r"^test R\^2: ([-0-9.]+) \(RMSE ([0-9.e+-]+) in target units", out, re.M).group(1))
    assert r2 > 0.9
    m = fastbp.load_model(path)
    assert m.task == "regression" and m.classes_ is None
    assert m.y_mean_[0] == pytest.approx(y.mean(), rel=0.05)
    pred = m.predict(X)
    assert pred.shape == (160,)
    assert np.sqrt(np.mean((pred - y) ** 2)) < 0.3 * y.std()           # original units
    ev = _run(["evaluate", "--model", path, "--data", csv])
    assert f"R^2: {m.score(X, y):.4f}" in ev and "RMSE:" in ev
    rc, _, err = _run_rc(["predict", "--model", path, "--data", csv, "--proba"])
    assert rc == 1 and "regression" in err


# ------------------------------------------------------------------ plain checkpoints
def test_plain_checkpoint_predicts_with_a_warning(tmp_path):
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 4)), batch_size=8)
    path = str(tmp_path / "plain.npz")
    step.save(path)
    m = fastbp.load_model(path)
    assert m.plain and m.x_mean_ is None
    np.testing.assert_array_equal(m.classes_, np.arange(4))
    X = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_array_equal(m.predict(X), step.predict(X.astype(np.float32)).argmax(1))
    p = write_csv(tmp_path / "x.csv", X)
    rc, out, err = _run_rc(["predict", "--model", path, "--data", p])
    assert rc == 0 and out.splitlines()[1:] == [str(v) for v in m.predict(X)]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "plain checkpoint" in lines[0]


@pytest.mark.parametrize("loss", sorted(fastbp.registry.losses.regression_names()))
def test_plain_checkpoint_of_every_regression_loss_is_a_regression_model(tmp_path, loss):
    """A plain checkpoint of a poisson (or mse) step predicts its targets (exp of the outputs for
    poisson, as MLPRegressor(loss='poisson')), not class 0; so does fastbp predict."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3)).astype(np.float32)
    Y = rng.poisson(2.0, (40, 1)).astype(np.float32)
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 1)), loss=loss, batch_size=8)
    step.fit(X, Y)
    path = str(tmp_path / f"{loss}.npz")
    step.save(path)
    m = fastbp.load_model(path)
    assert m.plain and m.task == "regression" and m.classes_ is None
    out = step.predict(X).astype(np.float64)[:, 0]
    want = np.exp(out) if loss == "poisson" else out
    np.testing.assert_allclose(m.predict(X), want, rtol=1e-12)
    rc, text, err = _run_rc(["predict", "--model", path, "--data", write_csv(tmp_path / "x.csv", X)])
    assert rc == 0 and "plain checkpoint" in err and "regression" in err
    lines = text.splitlines()
    assert lines[0] == "prediction"
    np.testing.assert_allclose([float(v) for v in lines[1:]], want, rtol=1e-6)


# ------------------------------------------------------------------ estimators
def test_estimators_save_bundles(tmp_path):
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, names)
        reg = fastbp.MLPRegressor(hidden_layer_sizes=(8,), max_iter=10, random_state=0).fit(X[:, :3], X[:, 3])
        ml = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=10, random_state=0).fit(
            X, np.column_stack([y == 0, y == 2]).astype(int))
    for est, name in ((clf, "c"), (reg, "r"), (ml, "m")):
        path = str(tmp_path / f"{name}.npz")
        est.save(path)
        m = fastbp.load_model(path)
        Xe = X[:, :3] if est is reg else X
        np.testing.assert_array_equal(m.predict(Xe), est.predict(Xe))
        assert m.estimator["class"] == type(est).__name__
        assert m.estimator["params"]["hidden_layer_sizes"] == [8]
    m = fastbp.load_model(str(tmp_path / "c.npz"))
    np.testing.assert_allclose(m.predict_proba(X), clf.predict_proba(X), rtol=1e-12)
    assert m.task == "classification" and m.info["estimator"] == "MLPClassifier"
    assert fastbp.load_model(str(tmp_path / "m.npz")).task == "multilabel"
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        fastbp.MLPClassifier().save(str(tmp_path / "u.npz"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_multilabel_estimators_bundle_gives_its_probabilities_exactly(tmp_path, dtype):
    """The bundle's sigmoid (0.5 * (1 + tanh(s / 2))) differed from the estimator's (expit) by
    an ulp in about half of float64's probabilities."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5))
    Y = (rng.normal(size=(40, 3)) > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = fastbp.MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0, dtype=dtype).fit(X, Y)
    est.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(fastbp.load_model(tmp_path / "m.npz").predict_proba(X), est.predict_proba(X))


@pytest.mark.parametrize("classes, want", [
    (np.array([1, 2, 3], dtype=object), np.array([1, 2, 3])),       # was refused: "all numbers or all strings"
    (np.array(["x", "y", "z"], dtype=object), np.array(["x", "y", "z"])),
    ([True, False, True], np.array([True, False, True])),
    (np.array([1.5, 2.0, 3.0]), np.array([1.5, 2.0, 3.0])),
])
def test_saved_classes_come_back_as_they_were(tmp_path, classes, want):
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 3)), batch_size=4)
    bundle.save_model(step, tmp_path / "m.npz", classes=classes)
    got = fastbp.load_model(tmp_path / "m.npz").classes_
    np.testing.assert_array_equal(got, want)
    assert got.dtype.kind == want.dtype.kind


@pytest.mark.parametrize("classes, match", [
    ([1, "a", 2.5], r"all numbers or all strings, got \['float', 'int', 'str'\]"),   # were stored as '1', 'a', '2.5'
    (np.array([b"a", b"b", b"c"]), "not bytes"),                                  # were stored as "b'a'"
    ([None, 1, 2], "all numbers or all strings"),
])
def test_classes_that_cannot_come_back_as_they_were_are_refused(tmp_path, classes, match):
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 3)), batch_size=4)
    with pytest.raises(TypeError, match=match):
        bundle.save_model(step, tmp_path / "m.npz", classes=classes)
    assert not (tmp_path / "m.npz").exists()


def test_duplicate_feature_names_are_refused(tmp_path):
    """A DataFrame's columns are taken by name: with a name twice, its first column was read for both."""
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 3)), batch_size=4)
    with pytest.raises(ValueError, match="feature_names must be unique: 'a'"):
        bundle.save_model(step, tmp_path / "m.npz", feature_names=["a", "a"])


def test_a_bundle_predicts_on_the_sparse_matrices_its_estimator_took(tmp_path, monkeypatch):
    """It refused them (TypeError: X must hold numbers, got dtype object)."""
    import scipy.sparse as sp
    from fastbp import _estimator_rows
    rng = np.random.default_rng(0)
    X = sp.random(60, 7, density=0.3, format="csr", random_state=1)
    y = rng.integers(0, 3, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = fastbp.MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(X, y)
    est.save(tmp_path / "m.npz")
    m = fastbp.load_model(tmp_path / "m.npz")
    monkeypatch.setattr(_estimator_rows, "CHUNK_VALUES", 7 * 16)        # chunks of 16 rows
    for Xs in (X, X.tocsc(), sp.csr_array(X)):
        np.testing.assert_array_equal(m.predict_proba(Xs), est.predict_proba(X))
        np.testing.assert_array_equal(m.predict(Xs), est.predict(X))
    assert m.predict_proba(X[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 7\)"):
        m.predict(sp.random(4, 6, format="csr"))


# ------------------------------------------------------------------ validation
def _raw_bundle(tmp_path, arrays, meta):
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 3)), batch_size=4)
    path = str(tmp_path / "b.npz")
    checkpoint.save(step, path, extra_arrays=arrays, extra_meta={"fastbp_bundle": meta})
    return path


@pytest.mark.parametrize("arrays, meta, needle", [
    ({}, {"format": "fastbp-bundle", "format_version": 99, "task": "classification"}, "newer"),
    ({}, {"format": "other", "format_version": 1, "task": "classification"}, "format"),
    ({}, {"format": "fastbp-bundle", "format_version": 1, "task": "ranking"}, "task"),
    ({"x_mean": np.zeros(3), "x_scale": np.ones(3)},
     {"format": "fastbp-bundle", "format_version": 1, "task": "classification"}, "x_mean must have shape (2,)"),
    ({"x_mean": np.zeros(2), "x_scale": np.zeros(2)},
     {"format": "fastbp-bundle", "format_version": 1, "task": "classification"}, "x_scale must be finite and > 0"),
    ({"classes": np.arange(2)},
     {"format": "fastbp-bundle", "format_version": 1, "task": "classification"}, "3 outputs"),
    ({}, {"format": "fastbp-bundle", "format_version": 1, "task": "classification",
          "classes": ["a", "b"]}, "list of 3 strings"),
    ({"classes": np.arange(3)}, {"format": "fastbp-bundle", "format_version": 1, "task": "classification",
                                 "feature_names": ["a"]}, "feature_names"),
    ({}, {"format": "fastbp-bundle", "format_version": 1, "task": "classification"}, "classes"),
    ({"classes": np.arange(3)}, {"format": "fastbp-bundle", "format_version": 1, "task": "regression"},
     "no classes"),
])
def test_malformed_bundles_raise_value_error_naming_the_file(tmp_path, arrays, meta, needle):
    path = _raw_bundle(tmp_path, arrays, meta)
    with pytest.raises(ValueError, match=re.escape(needle)) as e:
        fastbp.load_model(path)
    assert path in str(e.value)
    rc, out, err = _run_rc(["predict", "--model", path, "--data", path])
    assert rc == 1 and needle in err and len(err.strip().splitlines()) == 1


def test_save_model_validates_its_arguments(tmp_path):
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 3)), batch_size=4)
    p = str(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="task"):
        bundle.save_model(step, p, task="ranking")
    with pytest.raises(ValueError, match=r"classes must have shape \(3,\)"):
        bundle.save_model(step, p, classes=[1, 2])
    with pytest.raises(ValueError, match="x_mean and x_scale"):
        bundle.save_model(step, p, x_mean=np.zeros(2))
    with pytest.raises(ValueError, match="feature_names"):
        bundle.save_model(step, p, feature_names=["a"])
    import os
    assert not os.path.exists(p)


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastbp {fastbp.__version__}"
