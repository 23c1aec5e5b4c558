"""Adversarial checks of the user-facing surface: the CLI on odd data files, saved models,
the estimators against scikit-learn's documented behaviour (regressions of defects found)."""
import numpy as np
import pytest

from _cli_run import run_here

pytest.importorskip("sklearn")
pytest.importorskip("pandas")


def write_csv(path, n=60, seed=0):
    """A small two-class CSV with a header and string labels (the last column)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    with open(path, "w") as f:
        f.write("f1,f2,f3,label\n")
        for r, lab in zip(X, y):
            f.write(",".join(f"{v:.4f}" for v in r) + f",{lab}\n")
    return path


@pytest.mark.parametrize("seed", [1, 3])
def test_a_short_healthy_run_is_not_called_divergence(tmp_path, capsys, seed):
    # 48 training rows, batch 32: the epoch's losses are one batch of 32 and one of 16;
    # their plain mean (1.505 for seed 3) was compared with the untrained model's loss
    # over all rows (1.430), while the model's loss on those rows had gone down (1.414)
    data = write_csv(tmp_path / "a.csv")
    rc, out, err = run_here(capsys, "train", "--data", data, "--epochs", "1", "--hidden", "8",
                            "--seed", seed, "--quiet")
    assert rc == 0, err
    assert "diverged" not in err and "test accuracy" in out


@pytest.mark.parametrize("na", ["NA", "nan"])
def test_na_in_a_numeric_label_column_is_a_missing_label_naming_the_line(tmp_path, capsys, na):
    rows = [f"{i},{i % 7},{i % 2}" for i in range(40)]
    rows[9] = rows[11] = f"9,2,{na}"          # twice: it would have trained as a third class
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    rc, out, err = run_here(capsys, "train", "--data", path, "--epochs", "1",
                            "--hidden", "4", "--quiet")
    assert rc == 1 and "Traceback" not in err
    assert f"line 11: missing label ('{na}') in column 'y'" in err, err


def test_na_is_a_class_in_a_column_of_words(tmp_path):
    from fastbp import data
    p = tmp_path / "w.csv"
    p.write_text("x,y\n" + "\n".join(["1,a", "2,b", "3,NA", "4,a", "5,b", "6,NA"]) + "\n")
    X, y, classes = data.load_file(p)
    assert list(classes) == ["NA", "a", "b"]


def test_estimator_float32_overflow_of_finite_x_is_a_clear_error():
    # finite float64 values beyond float32's range became inf in the float32 step: fit failed
    # as "divergence, lower learning_rate_init", predict returned labels from inf inputs
    from fastbp import MLPClassifier
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = np.where(X[:, 0] > 0, "cat", "dog")
    with pytest.raises(ValueError, match=r"too large for float32.*dtype='float64'"):
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X * 1e39, y)
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match=r"too large for float32 \(1e\+39 at row 0, column 0\)"):
        clf.predict(np.full((3, 4), 1e39))
    big = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, dtype="float64").fit(X * 1e39, y)
    assert big.predict(X[:2] * 1e39).shape == (2,)


def test_a_short_row_is_reported_as_short_even_when_a_label_moved_into_a_feature(tmp_path, capsys):
    # "1.0,b" on a 3-column file: pandas fills the row from the left, so the label 'b' sat in
    # feature column x2 and the error was "non-numeric feature value 'b'"
    rows = [f"{i / 10:.1f},{i % 3},{'ab'[i % 2]}" for i in range(30)]
    rows[5] = "1.0,b"
    path = tmp_path / "short.csv"
    path.write_text("x1,x2,y\n" + "\n".join(rows) + "\n")
    rc, out, err = run_here(capsys, "train", "--data", path, "--epochs", "1", "--hidden", "4", "--quiet")
    assert rc == 1 and "line 7 has 2 columns, expected 3" in err, err


def test_predict_into_a_closed_pipe_is_quiet(tmp_path, capsys):
    # `fastbp predict ... | head -1`: the reader goes away; no "error: [Errno 32] Broken pipe"
    import os
    import subprocess
    import sys
    data = write_csv(tmp_path / "a.csv", n=400)
    model = tmp_path / "m.npz"
    rc, out, err = run_here(capsys, "train", "--data", data, "--epochs", "1", "--hidden", "4",
                            "--quiet", "--save", model)
    assert rc == 0, err
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FASTBP_DEBUG", None)
    r, w = os.pipe()
    os.close(r)                                 # nobody reads stdout
    try:
        p = subprocess.run([sys.executable, "-m", "fastbp.cli", "predict", "--model", str(model),
                            "--data", str(data)], stdout=w, stderr=subprocess.PIPE, text=True,
                           cwd=root, env=env, timeout=300)
    finally:
        os.close(w)
    assert p.returncode == 141 and p.stderr == "", (p.returncode, p.stderr)


def test_train_whose_reader_goes_away_still_saves_the_model(tmp_path):
    """`fastbp train --save m.npz | head -3`: the reader left after the first lines; the print after
    training raised BrokenPipeError before the save, and the trained model was lost (exit 141)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FASTBP_DEBUG", None)
    model = tmp_path / "m.npz"
    p = subprocess.Popen([sys.executable, "-m", "fastbp.cli", "train", "--data", str(write_csv(tmp_path / "a.csv")),
                          "--epochs", "1", "--hidden", "4", "--quiet", "--save", str(model)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root, env=env)
    before = [p.stdout.readline(), p.stdout.readline()]     # "data: ...", "model: ...": before training
    p.stdout.close()                            # the reader goes away; the next line is the results'
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 141 and err == "", (p.returncode, err)
    assert before[0].startswith(b"data:") and before[1].startswith(b"model:") and model.exists()


def test_saved_estimator_predicts_on_the_dataframe_it_was_fitted_on(tmp_path):
    # a bool column makes the frame an object array: the estimator converts it (scikit-learn's
    # check_array), fastbp.load_model(path).predict raised "X must hold numbers, got dtype object"
    pd = pytest.importorskip("pandas")
    import fastbp
    from fastbp import MLPClassifier
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60) > 0, "c": rng.integers(0, 5, 60)})
    y = np.where(df.a > 0, "x", "z")
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(df, y)
    clf.save(tmp_path / "m.npz")
    model = fastbp.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(model.predict(df), clf.predict(df))
    np.testing.assert_array_equal(model.predict_proba(df[["c", "b", "a"]]), clf.predict_proba(df))
    with pytest.raises(TypeError, match="must hold numbers"):
        model.predict(np.array([["a", "b", "c"]], dtype=object))


def test_regressor_float32_overflow_of_finite_y_is_a_clear_error():
    from fastbp import MLPRegressor
    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match=r"y has a value too large for float32.*dtype='float64'"):
        MLPRegressor(hidden_layer_sizes=(4,), max_iter=2).fit(X, X[:, 0] * 1e39)


def test_saved_model_matches_feature_names_to_non_string_dataframe_columns(tmp_path, capsys):
    # feature names '0', '1', '2' and a DataFrame with int column labels 0, 1, 2: it found the
    # names (as strings) and then raised KeyError selecting them
    pd = pytest.importorskip("pandas")
    import fastbp
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    np.savez(tmp_path / "d.npz", X=X, y=(X[:, 0] > 0).astype(int), feature_names=np.array(["0", "1", "2"]))
    rc, out, err = run_here(capsys, "train", "--data", tmp_path / "d.npz", "--epochs", "1", "--hidden", "4",
                            "--quiet", "--save", tmp_path / "m.npz")
    assert rc == 0, err
    model = fastbp.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(model.predict(pd.DataFrame(X)), model.predict(X))
    np.testing.assert_array_equal(model.predict(pd.DataFrame(X[:, [2, 0, 1]], columns=[2, 0, 1])),
                                  model.predict(X))


def test_seed_beyond_32_bits_is_a_usage_error(tmp_path, capsys):
    # it reached scikit-learn's split, reported as "the dataset is too small to split"
    data = write_csv(tmp_path / "a.csv")
    rc, out, err = run_here(capsys, "train", "--data", data, "--epochs", "1", "--seed", 2 ** 32, "--quiet")
    assert rc == 2 and "--seed" in err and "4294967295" in err and "too small" not in err, err
    rc, out, err = run_here(capsys, "train", "--data", data, "--epochs", "1", "--hidden", "4",
                            "--seed", 2 ** 32 - 1, "--quiet")
    assert rc == 0, err


def test_negative_sample_weights_are_reported_with_their_sum():
    # all-negative weights were refused as "the weights sum to 0"
    from fastbp import MLPClassifier
    X = np.random.default_rng(0).normal(size=(30, 3))
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(ValueError, match=r"sum to -30; their sum must be positive"):
        MLPClassifier(max_iter=2).fit(X, y, sample_weight=-np.ones(30))
    with pytest.raises(ValueError, match=r"sum to 0;"):
        MLPClassifier(max_iter=2, class_weight={0: 0, 1: 0}).fit(X, y)


@pytest.mark.parametrize("name, args", [("--epochs", ["--epochs"]), ("--batch-size", ["--batch-size"]),
                                        ("--hidden", ["--hidden", "8"]),
                                        ("--step-size", ["--schedule", "step", "--step-size"]),
                                        ("--warmup", ["--schedule", "cosine", "--warmup"])])
def test_integer_flags_beyond_int64_are_usage_errors_naming_the_flag(capsys, name, args):
    # was: --epochs 2**70 trained (practically) forever, --hidden 2**70 failed later in Linear
    rc, out, err = run_here(capsys, "train", *args, 2**70, "--quiet")
    assert rc == 2
    assert f"argument {name}: expected a" in err and "<= 9223372036854775807" in err


@pytest.mark.parametrize("header", [True, False])
def test_rows_ending_in_the_delimiter_train_on_the_right_columns(tmp_path, capsys, header):
    # "1,2,3,yes,": pandas reads an extra empty column; it was taken as the label column
    # ("line 2: empty label in column 4")
    src = write_csv(tmp_path / "a.csv").read_text().splitlines()
    if not header:
        src = src[1:]
    (tmp_path / "t.csv").write_text("".join(line + ",\n" for line in src))
    rc, out, err = run_here(capsys, "train", "--data", tmp_path / "t.csv", "--epochs", "1",
                            "--hidden", "8", "--quiet")
    assert rc == 0, err
    assert "60 samples, 3 features, 2 classes" in out
    from fastbp import data
    d = data.read_dataset(tmp_path / "t.csv")
    ref = data.read_dataset(tmp_path / "a.csv")
    assert np.array_equal(d.X, ref.X) and list(d.labels) == list(ref.labels)
    assert (d.feature_names == ref.feature_names) == header


def test_a_partly_empty_last_column_is_still_an_error(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("1,2,0,\n3,4,1,5\n5,6,0,\n7,8,1,\n")
    rc, out, err = run_here(capsys, "train", "--data", tmp_path / "p.csv", "--epochs", "1", "--quiet")
    assert rc != 0 and "empty label" in err and "line 1" in err


def _regression_csv(path, target):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    path.write_text("a,b,c,t\n" + "".join(",".join(f"{v:.4f}" for v in r) + f",{target}\n" for r in X))
    return path


def test_constant_target_r2_is_finite_like_sklearn(tmp_path, capsys):
    # sklearn.metrics.r2_score (force_finite=True): 0.0 for an imperfect prediction of a constant
    # target; the CLI printed "test R^2: nan"
    data = _regression_csv(tmp_path / "c.csv", 5.0)
    model = tmp_path / "m.npz"
    rc, out, err = run_here(capsys, "train", "--data", data, "--task", "regression", "--epochs", "1",
                            "--hidden", "4", "--quiet", "--save", model)
    assert rc == 0, err
    assert "test R^2: 0.0000" in out and "nan" not in out.lower()
    rc, out, err = run_here(capsys, "evaluate", "--model", model, "--data", data)
    assert rc == 0, err
    assert "R^2: 0.0000" in out and "nan" not in out.lower()
    from fastbp import load_model
    from fastbp.data import read_dataset
    d = read_dataset(data)
    m = load_model(model)
    assert m.score(d.X, np.full(40, 5.0)) == 0.0
    assert m.score(d.X, m.predict(d.X)) == 1.0


def test_r2_score_matches_sklearn():
    from sklearn.metrics import r2_score as sk
    from fastbp.training import r2_score
    rng = np.random.default_rng(1)
    cases = [(np.full(5, 2.0), np.full(5, 2.0)), (np.full(5, 2.0), np.arange(5.0)),
             (np.arange(5.0), np.arange(5.0) + 0.3), (rng.normal(size=(6, 3)), rng.normal(size=(6, 3))),
             (np.c_[np.ones(6), rng.normal(size=6)], rng.normal(size=(6, 2))),
             (np.c_[np.ones(6), rng.normal(size=6)], np.c_[np.ones(6), rng.normal(size=6)])]
    for y, p in cases:
        assert r2_score(y, p) == pytest.approx(sk(y, p), abs=1e-12)
    # one sample: scikit-learn's NaN and warning (not 0.0 or 1.0)
    for y, p in (([1.0], [2.0]), ([3.0], [3.0]), ([[1.0, 2.0]], [[1.0, 2.0]])):
        with pytest.warns(UserWarning, match="not well-defined with less than two samples"):
            assert np.isnan(r2_score(y, p))
        with pytest.warns(UserWarning, match="not well-defined with less than two samples"):
            assert np.isnan(sk(y, p))


# ------------------------------------------------------------------ output paths, flag conflicts
def test_an_output_path_ending_in_a_separator_names_a_directory_and_is_refused(tmp_path, capsys):
    """``--save out/newdir/`` wrote a FILE named newdir (realpath drops the separator), then the
    command fastbp suggested (``predict --model out/newdir/``) failed; ``open()`` refuses it."""
    import fastbp
    target = tmp_path / "newdir"
    rc, out, err = run_here(capsys, "train", "--epochs", "1", "--hidden", "4", "--quiet",
                            "--save", str(target) + "/")
    assert rc == 1 and "ends with a path separator" in err and not target.exists()
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 2)), batch_size=2)
    with pytest.raises(IsADirectoryError, match="ends with a path separator"):
        step.save(str(tmp_path / "other") + "/")
    with pytest.raises(FileNotFoundError, match="empty"):
        step.save("")
    (tmp_path / "f.csv").write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        step.save(tmp_path / "f.csv" / "m.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]
    step.save(str(tmp_path / "m.npz").encode())
    assert fastbp.load_model(str(tmp_path / "m.npz").encode()).path == str(tmp_path / "m.npz")


@pytest.mark.parametrize("flags, words", [
    (["--batchnorm", "--batch-size", "1"], "--batchnorm needs minibatches of at least 2 rows"),
    (["--precision", "bf16", "--dtype", "float64"], "--precision bf16 keeps float32 master weights"),
    (["--precision", "bf16", "--device", "cuda"], "--precision bf16 runs on the CPU only"),
])
def test_flag_conflicts_are_usage_errors_before_the_data(tmp_path, capsys, flags, words):
    rc, out, err = run_here(capsys, "train", "--epochs", "1", "--hidden", "4", "--quiet",
                            "--data", str(tmp_path / "absent.csv"), *flags)
    assert rc == 2 and words in err and "absent.csv" not in err


def test_a_text_file_named_npz_is_not_an_archive_and_a_header_hint_only_for_line_1(tmp_path, capsys):
    bad = tmp_path / "text.npz"
    bad.write_text("a,b,label\n1,2,0\n3,4,1\n")
    rc, out, err = run_here(capsys, "train", "--data", bad, "--quiet")
    assert rc == 1 and "not an .npz archive (not a zip file" in err and "pickle" not in err
    # a header was detected: the single-sample class is on the first data line, line 2
    h = tmp_path / "h.csv"
    h.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i}\n" for i in range(30)))
    rc, out, err = run_here(capsys, "train", "--data", h, "--quiet", "--epochs", "1")
    assert rc == 1 and "single sample (on line 2)" in err and "--header" not in err
    # no header: the hint stays for line 1
    h.write_text("".join(f"{i},{i % 3},{i % 2 if i else 7}\n" for i in range(30)))
    rc, out, err = run_here(capsys, "train", "--data", h, "--quiet", "--epochs", "1")
    assert rc == 1 and "single sample (on line 1)" in err and "pass --header" in err


def test_a_pgf_plot_without_tex_is_refused_before_training(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import shutil
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if "tex" in name else real(name, *a, **k))
    rc, out, err = run_here(capsys, "train", "--epochs", "1", "--hidden", "4", "--quiet",
                            "--plot", str(tmp_path / "p.pgf"), "--save", str(tmp_path / "m.npz"))
    assert rc == 1 and "matplotlib writes .pgf with" in err and "not installed" in err
    assert not (tmp_path / "m.npz").exists() and "test accuracy" not in out


def test_a_debug_variable_that_is_no_boolean_is_one_line_naming_it(capsys, monkeypatch):
    """FASTBP_DEBUG=false turned tracebacks on (any value but "" and "0" did)."""
    monkeypatch.setenv("FASTBP_DEBUG", "maybe")
    rc, out, err = run_here(capsys, "train", "--epochs", "1")
    assert rc == 2 and out == ""
    assert err.strip() == "fastbp: error: FASTBP_DEBUG='maybe' is not one of: 1, true, yes, on, 0, false, no, off"


@pytest.mark.parametrize("var, value, words", [
    ("FASTBP_BLAS", "foo", "is not a BLAS backend fastbp knows"),
    ("FASTBP_PARALLEL_THRESHOLD", "x", "expected a non-negative integer"),
    ("FASTBP_NO_CACHE", "maybe", "is not one of: 1, true"),
])
def test_a_bad_variable_read_at_import_is_one_line_from_the_command(var, value, words):
    """These are read when fastbp is imported, before the CLI's error handling: a traceback."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "FASTBP_DEBUG"}
    env[var] = value
    p = subprocess.run([sys.executable, "-m", "fastbp.cli", "train", "--epochs", "1"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == "", p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastbp: error: {var}={value!r}") and words in lines[0], \
        p.stderr
    # a program importing fastbp gets the exception (a ValueError; FASTBP_BLAS's an ImportError too)
    p = subprocess.run([sys.executable, "-c", "import fastbp"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and "Traceback" in p.stderr and f"EnvError: {var}=" in p.stderr.replace(
        "EnvImportError", "EnvError"), p.stderr


@pytest.mark.parametrize("labels", [
    ["9007199254740992", "9007199254740993"],            # 2**53, 2**53 + 1: one float64
    ["-9223372036854775808", "-9223372036854775807"],    # int64's ends, below -2**53
])
def test_evaluate_keeps_integer_labels_beyond_2_53_apart(tmp_path, capsys, labels):
    # training encodes these labels exactly (int64); evaluate compared them through float64,
    # so both classes' samples counted as one class's
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] > 0).astype(int)
    path = tmp_path / "b.csv"
    path.write_text("a,b,y\n" + "".join(f"{r[0]:.4f},{r[1]:.4f},{labels[k]}\n" for r, k in zip(X, y)))
    model = tmp_path / "m.npz"
    rc, out, err = run_here(capsys, "train", "--data", path, "--epochs", "30", "--hidden", "8",
                            "--quiet", "--save", model)
    assert rc == 0, err
    import fastbp
    m = fastbp.load_model(model)
    assert [str(c) for c in m.classes_] == labels
    pred = m.predict(X)
    want = np.array(labels, dtype=object)[y]
    acc = np.mean([str(p) == t for p, t in zip(pred, want)])
    rc, out, err = run_here(capsys, "evaluate", "--model", model, "--data", path)
    assert rc == 0 and "never saw" not in err, err
    assert f"accuracy: {acc:.4f} ({int(round(acc * 60))}/60)" in out, out
    for name, n in zip(labels, np.bincount(y)):
        assert any(line.split()[:1] == [name] and line.split()[-1] == str(n) for line in out.splitlines()), out


def test_evaluate_keeps_uint64_labels_apart(tmp_path, capsys):
    # an npz y of uint64 labels beyond int64: two of them are one float64
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] > 0).astype(int)
    classes = np.array([2**64 - 2, 2**64 - 1], dtype=np.uint64)
    np.savez(tmp_path / "u.npz", X=X, y=classes[y])
    model = tmp_path / "m.npz"
    rc, out, err = run_here(capsys, "train", "--data", tmp_path / "u.npz", "--epochs", "30",
                            "--hidden", "8", "--quiet", "--save", model)
    assert rc == 0, err
    import fastbp
    m = fastbp.load_model(model)
    np.testing.assert_array_equal(m.classes_, classes)
    acc = np.mean(m.predict(X) == classes[y])
    rc, out, err = run_here(capsys, "evaluate", "--model", model, "--data", tmp_path / "u.npz")
    assert rc == 0 and "never saw" not in err, err
    assert f"accuracy: {acc:.4f} ({int(round(acc * 60))}/60)" in out, out


@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_a_row_of_empty_fields_is_missing_values_not_a_blank_line(tmp_path, capsys, command):
    # ',,,' was dropped as if it were a blank line: predict wrote one row fewer than its input
    # (every later prediction beside the wrong input row); blank lines are still skipped
    src = write_csv(tmp_path / "a.csv")
    model = tmp_path / "m.npz"
    rc, out, err = run_here(capsys, "train", "--data", src, "--epochs", "2", "--hidden", "4",
                            "--quiet", "--save", model)
    assert rc == 0, err
    lines = src.read_text().splitlines()
    text = "\n".join(lines[:5] + ["", "   ", ",,,"] + lines[5:]) + "\n"
    path = tmp_path / "e.csv"
    path.write_text(text)
    args = ["--data", path] + (["--epochs", "1", "--hidden", "4", "--quiet"] if command == "train"
                               else ["--model", model])
    rc, out, err = run_here(capsys, command, *args)
    assert rc == 1 and "Traceback" not in err
    assert "line 8, column 'f1': missing value" in err, err
    # without that row, the blank lines around it are skipped as before
    path.write_text(text.replace(",,,\n", ""))
    rc, out, err = run_here(capsys, command, *args)
    assert rc == 0, err
    if command == "predict":
        assert len(out.strip().splitlines()) == 1 + 60
