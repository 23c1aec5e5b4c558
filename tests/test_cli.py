"""``fastbp train`` end to end (subprocesses) and its data loading (fastbp.data)."""
import importlib.metadata
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cli, data
from _cli_run import run_here

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
    """``fastbp ARGS`` in a fresh interpreter; returns (rc, stdout, stderr)."""
    env = dict(os.environ)
    env.pop("FASTBP_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "fastbp.cli", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def accuracy_of(out):
    m = re.search(r"^test accuracy: ([0-9.]+) \((\d+)/(\d+)\)$", out, re.M)
    assert m, out
    return float(m.group(1))


def one_line_error(rc, out, err, *needles):
    assert rc != 0
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]
    return lines[0]


def blobs(n_per_class=40, n_features=5, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(n_classes, n_features))
    X = np.concatenate([c + rng.normal(size=(n_per_class, n_features)) for c in centers])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return X, y


# ------------------------------------------------------------------ console script
def test_console_script_is_declared():
    eps = importlib.metadata.entry_points(group="console_scripts")
    ep = [e for e in eps if e.name == "fastbp"]
    assert ep and ep[0].value == "fastbp.cli:main"
    assert ep[0].load() is cli.main


def test_the_console_script_freezes_the_heap_before_the_process_exits():
    """main() without arguments is the console script, after which the process exits:
    the remaining objects are frozen out of the garbage collector (the interpreter's
    collections at exit cost 0.3-0.4 s); a call with arguments (a program or a test
    calling main) leaves the collector as it was."""
    code = ("import gc, sys\n"
            "from fastbp import cli\n"
            "assert cli.main(['--version']) == 0 and gc.get_freeze_count() == 0\n"
            "sys.argv = ['fastbp', '--version']\n"
            "assert cli.main() == 0 and gc.get_freeze_count() > 0 and gc.isenabled()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("fastbp") == 2


# ------------------------------------------------------------------ end to end
def test_default_run_trains_digits_to_97_percent():
    rc, out, err = run_cli("train")
    assert rc == 0, err
    assert "digits" in out and "1797 samples" in out
    acc = accuracy_of(out)
    assert acc >= 0.97, out
    assert re.search(r"^time per epoch: [0-9.]+ (ms|s) ", out, re.M), out
    assert re.search(r"^total time: [0-9.]+ s", out, re.M), out
    # the progress bar goes to stderr with running loss and accuracy
    assert "epoch" in err and "loss=" in err and "acc=" in err


def test_quiet_has_no_progress_bar():
    rc, out, err = run_cli("train", "--quiet", "--epochs", "3", "--hidden", "16")
    assert rc == 0 and err == "", err
    assert 0.1 < accuracy_of(out) <= 1.0        # 3 epochs of a 16-unit net: better than chance


@pytest.mark.thorough       # two more runs of the command (fixed seeds are tested in-process elsewhere)
def test_quiet_runs_are_reproducible():
    rc1, out1, err1 = run_cli("train", "--quiet", "--epochs", "3", "--hidden", "16")
    rc2, out2, err2 = run_cli("train", "--quiet", "--epochs", "3", "--hidden", "16")
    assert rc1 == 0 and rc2 == 0, err1 + err2
    assert err1 == "" and err2 == ""
    assert accuracy_of(out1) == accuracy_of(out2)       # same seed: same accuracy


@pytest.mark.parametrize("argv, needle", [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "ten"], "--epochs"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--activation", "mish"], "--activation"),     # (gelu was unknown before issue 14)
    (["train", "--dropout", "1"], "--dropout"),
    (["train", "--dropout", "-0.1"], "--dropout"),
    (["train", "--dropout", "nan"], "--dropout"),
    (["train", "--dropout", "half"], "--dropout"),
    (["train", "--batchnorm", "yes"], "yes"),
    (["train", "--compare", "--dropout", "0.1"], "--dropout"),
    (["train", "--compare", "--batchnorm"], "--batchnorm"),
    # refused before any training (they trained the whole fastbp job first until 2026-12-01)
    (["train", "--compare", "--optimizer", "adamw"], "'adamw' solver"),
    (["train", "--compare", "--optimizer", "rmsprop"], "'rmsprop' solver"),
    (["train", "--compare", "--weight-decay", "0.1"], "--weight-decay"),
    (["train", "--compare", "--clip-grad-norm", "1"], "--clip-grad-norm"),
    (["train", "--compare", "--activation", "gelu"], "'gelu' activation"),
    (["train", "--hidden", "--dropout", "0.2"], "--dropout applies to hidden layers"),
    (["train", "--batchnorm", "--hidden"], "--batchnorm applies to hidden layers"),
    (["train", "--loss", "hinge"], "--loss"),
    (["train", "--optimizer", "adagrad"], "--optimizer"),      # (rmsprop was refused until issue 15)
    (["train", "--clip-grad-norm", "0"], "--clip-grad-norm"),
    (["train", "--clip-grad-norm", "inf"], "--clip-grad-norm"),
    (["train", "--loss", "poisson"], "--loss"),       # count targets: MLPRegressor(loss="poisson")
    (["train", "--hidden", "0"], "--hidden"),
    (["train", "--momentum", "1.5", "--optimizer", "sgd"], "--momentum"),
    (["train", "--weight-decay", "-0.1", "--optimizer", "adamw"], "--weight-decay"),
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--momentum", "0.5"], "--momentum"),          # adam has no momentum
    (["train", "--dtype", "float16"], "--dtype"),
    (["train", "--test-size", "1"], "--test-size"),
    (["train", "--batch-size", "-3"], "--batch-size"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--frobnicate"], "--frobnicate"),
    (["tran"], "tran"),
    ([], "command"),
    (["train", "--task", "regression", "--loss", "svm"], "--loss mse"),
    (["train", "--task", "regression"], "needs --data"),
    (["train", "--task", "ranking"], "--task"),
    (["train", "--label-column", "x"], "--label-column"),
    (["train", "--no-header"], "--header"),
    (["train", "--delimiter", "ab"], "--delimiter"),
    (["predict", "--model", "m.npz", "--data", "x.csv", "--delimiter", "1"], "--delimiter"),
    (["predict", "--data", "x.csv"], "--model"),
    (["evaluate", "--model", "m.npz"], "--data"),
])
def test_bad_arguments_are_one_line(argv, needle, capsys):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.out == ""
    one_line_error(rc, cap.out, cap.err, needle)


def test_bad_argument_in_a_real_process_is_one_line():
    rc, out, err = run_cli("train", "--epochs", "0")
    assert rc == 2
    one_line_error(rc, out, err, "--epochs")


def test_help_exits_zero(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--hidden", "--activation", "--loss", "--optimizer", "--lr", "--momentum", "--epochs",
                "--batch-size", "--seed", "--dtype", "--device", "--save", "--plot", "--data",
                "--compare", "--quiet", "--label-column", "--delimiter", "--header", "--no-header",
                "--task", "--dropout", "--batchnorm", "--weight-decay", "adamw"):
        assert opt in out
    for cmd, opts in (("predict", ("--model", "--data", "--proba", "--out", "--delimiter")),
                      ("evaluate", ("--model", "--data"))):
        assert cli.main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert all(o in out for o in opts), out


def test_missing_data_file(tmp_path):
    rc, out, err = run_cli("train", "--data", tmp_path / "nope.npz")
    one_line_error(rc, out, err, "no such file")


def test_garbage_data_files_are_one_line(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(300))
    rc, out, err = run_cli("train", "--quiet", "--data", junk)
    one_line_error(rc, out, err, "junk.npz", ".npz")


@pytest.mark.parametrize("name, content, needle", [
    ("junk.csv", b"\xff\xfe\x00garbage\x00\x81", "utf-8"),
    ("text.csv", b"a,b,label\n1,x,2\n3,4,5\n", "non-numeric"),
    ("ragged.csv", b"1,2,0\n3,4\n5,6,1\n", "columns"),
    ("empty.csv", b"", "empty"),
    ("header_only.csv", b"a,b,label\n", "no data"),
    ("one_col.csv", b"1\n2\n", "2 columns"),
    ("single_class.csv", b"1,2,0\n3,4,0\n5,6,0\n", "single class"),
    ("nan.csv", b"1,nan,0\n3,4,1\n5,6,1\n1,1,0\n", "nan"),
    ("float_labels.csv", b"1,2,0.5\n3,4,1\n5,6,1\n1,1,0\n", "non-integer"),
    ("data.txt", b"1,2,0\n", "unknown file type"),
])
def test_bad_data_files_are_one_line(tmp_path, capsys, name, content, needle):
    p = tmp_path / name
    p.write_bytes(content)
    rc = cli.main(["train", "--quiet", "--data", str(p)])
    cap = capsys.readouterr()
    assert rc == 1
    one_line_error(rc, cap.out, cap.err, needle)


def test_npz_without_y_is_one_line(tmp_path, capsys):
    p = tmp_path / "noy.npz"
    np.savez(p, X=np.zeros((4, 2)))
    rc = cli.main(["train", "--quiet", "--data", str(p)])
    one_line_error(rc, "", capsys.readouterr().err, "'y'")


def test_npz_length_mismatch_is_one_line(tmp_path, capsys):
    p = tmp_path / "bad.npz"
    np.savez(p, X=np.zeros((6, 2)), y=np.array([0, 1, 0, 1, 0]))
    rc = cli.main(["train", "--quiet", "--data", str(p)])
    one_line_error(rc, "", capsys.readouterr().err, "6 rows", "5 labels")


def test_npz_object_arrays_are_refused_without_pickle(tmp_path, capsys):
    p = tmp_path / "obj.npz"
    np.savez(p, X=np.array([[1, 2], [3, 4]], dtype=object), y=np.array([0, 1]))
    rc = cli.main(["train", "--quiet", "--data", str(p)])
    one_line_error(rc, "", capsys.readouterr().err, "obj.npz")


def test_train_on_user_npz(tmp_path, capsys):
    X, y = blobs()
    p = tmp_path / "blobs.npz"
    np.savez(p, X=X, y=y + 5)  # labels need not start at 0
    rc, out, err = run_here(capsys, "train", "--quiet", "--data", p, "--epochs", "30", "--hidden", "16",
                            "--lr", "0.01")
    assert rc == 0, err
    assert "120 samples, 5 features, 3 classes (96 train / 24 test)" in out
    assert accuracy_of(out) >= 0.9


def test_train_on_user_csv_with_header_and_string_labels(tmp_path, capsys):
    X, y = blobs(n_features=4)
    names = np.array(["cat", "dog", "eel"])[y]
    p = tmp_path / "blobs.csv"
    with open(p, "w") as f:
        f.write("f1,f2,f3,f4,animal\n")
        for row, lab in zip(X, names):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{lab}\n")
    rc = cli.main(["train", "--quiet", "--data", str(p), "--epochs", "20", "--hidden", "16",
                   "--dtype", "float64", "--optimizer", "sgd", "--lr", "0.05"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "120 samples, 4 features, 3 classes" in cap.out
    assert accuracy_of(cap.out) >= 0.9


@pytest.mark.parametrize("loss", ["svm", "mse", "bce_with_logits"])
def test_other_losses(loss, capsys, tmp_path):
    model = tmp_path / "m.npz"
    rc = cli.main(["train", "--quiet", "--epochs", "3", "--hidden", "32", "--loss", loss,
                   "--activation", "tanh", "--save", str(model)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"loss {loss}" in cap.out
    assert accuracy_of(cap.out) > 0.5
    if loss != "bce_with_logits":
        # said before the data is read (it came from the API after the predictions, without --proba)
        data_file = _csv(tmp_path, "x.csv", "1,2\n")
        rc = cli.main(["predict", "--model", str(model), "--data", data_file, "--proba"])
        one_line_error(rc, "", capsys.readouterr().err, f"--proba: the model was trained with loss '{loss}'")


def test_batchnorm_with_a_last_minibatch_of_one_row_is_refused_before_training(tmp_path, capsys):
    p = _csv(tmp_path, "b.csv", "\n".join(_blob_rows(20)) + "\n")         # 40 rows: 32 to train
    rc = cli.main(["train", "--quiet", "--batchnorm", "--data", p, "--batch-size", "31"])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "--batchnorm", "--batch-size 31", "32 training rows",
                   "minibatch of 1 row")
    assert "test accuracy" not in cap.out


@pytest.mark.parametrize("name, magic", [("curves.png", b"\x89PNG\r\n\x1a\n"), ("curves.PDF", b"%PDF"),
                                         ("curves", b"\x89PNG\r\n\x1a\n")])
def test_plot_writes_the_format_of_its_extension(tmp_path, capsys, name, magic):
    """As matplotlib's savefig: the format of the file name's extension (any case), PNG without
    one (a .pdf file held PNG bytes)."""
    path = tmp_path / name
    rc, out, err = run_here(capsys, "train", "--quiet", "--epochs", "4", "--hidden", "16", "--plot", path)
    assert rc == 0, err
    assert path.read_bytes()[:len(magic)] == magic
    assert f"plot: {path}" in out


def test_plot_with_an_extension_matplotlib_cannot_write_fails_before_training(tmp_path, capsys):
    rc = cli.main(["train", "--quiet", "--plot", str(tmp_path / "curves.xyz")])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "--plot", ".xyz", ".pdf", ".png")
    assert "test accuracy" not in cap.out
    assert not (tmp_path / "curves.xyz").exists()


def test_plot_into_missing_directory_fails_before_training(tmp_path, capsys):
    rc = cli.main(["train", "--quiet", "--plot", str(tmp_path / "no" / "such" / "x.png")])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "--plot", "does not exist")
    assert "test accuracy" not in cap.out


def test_compare_prints_both_accuracies(capsys):
    rc, out, err = run_here(capsys, "train", "--quiet", "--compare", "--epochs", "5")
    assert rc == 0, err
    fb = re.search(r"^\s+fastbp\s+([0-9.]+)\s+", out, re.M)
    sk = re.search(r"^\s+scikit-learn\s+([0-9.]+)\s+", out, re.M)
    assert fb and sk, out
    assert float(fb.group(1)) == accuracy_of(out)
    assert 0.8 < float(sk.group(1)) <= 1.0
    assert re.search(r"^  (fastbp|scikit-learn) is [0-9.]+x faster per epoch \(medians\)$", out, re.M), out


@pytest.mark.skipif(not hasattr(fastbp.TrainStep, "save"),
                    reason="TrainStep.save (checkpoints, issue 5) is not implemented yet")
def test_save_writes_a_checkpoint_that_loads(tmp_path, capsys):
    ckpt = tmp_path / "model.npz"
    rc, out, err = run_here(capsys, "train", "--quiet", "--epochs", "2", "--hidden", "16", "--save", ckpt)
    assert rc == 0, err
    assert ckpt.exists() and f"checkpoint: {ckpt} " in out
    step = fastbp.load(str(ckpt))
    assert step.params["0.W"].shape == (64, 16)
    # the checkpoint holds the trained weights: it reproduces the printed accuracy
    X, y, _ = data.load_digits()
    _, te = data.stratified_split(y, 0.2, seed=0)
    pred = step.predict(np.ascontiguousarray(X[te] / 16.0, dtype=np.float32)).argmax(1)
    assert f"test accuracy: {np.mean(pred == y[te]):.4f}" in out


def test_gelu_dropout_batchnorm_model_is_saved_and_predicts(tmp_path, capsys):
    """fastbp train --activation gelu --dropout 0.1 --batchnorm: the saved model has those
    layers (BatchNorm's running statistics included) and predicts in eval mode (no dropout,
    running statistics): it reproduces the printed accuracy, and fastbp predict (in a new
    process) agrees."""
    ckpt = tmp_path / "model.npz"
    rc, out, err = run_here(capsys, "train", "--quiet", "--epochs", "3", "--hidden", "32", "16",
                            "--activation", "gelu", "--dropout", "0.1", "--batchnorm", "--save", ckpt)
    assert rc == 0, err
    assert "model: 64-32-16-10 gelu + batchnorm + dropout 0.1," in out
    from fastbp import bundle
    model = bundle.load_model(str(ckpt))
    kinds = [type(ly).__name__ for ly in model.step.model.layers]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Dropout"] * 2 + ["Linear"]
    assert [ly.p for ly in model.step.model.layers if type(ly).__name__ == "Dropout"] == [0.1, 0.1]
    rm = model.step.buffers["1.running_mean"]
    assert rm.shape == (32,) and np.any(rm != 0)             # trained running statistics were saved
    X, y, _ = data.load_digits()
    _, te = data.stratified_split(y, 0.2, seed=0)
    pred = model.predict(X[te])
    assert f"test accuracy: {np.mean(pred == y[te]):.4f}" in out
    assert np.array_equal(model.predict(X[te]), pred)        # eval mode: deterministic
    csv = tmp_path / "x.csv"
    np.savetxt(csv, X[te][:20], delimiter=",", fmt="%g")
    rc, out2, err2 = run_cli("predict", "--model", ckpt, "--data", csv, "--no-header")
    assert rc == 0, err2
    assert [int(v) for v in out2.split()[1:]] == pred[:20].tolist()


@pytest.mark.skipif(hasattr(fastbp.TrainStep, "save"),
                    reason="TrainStep.save exists: the checkpoint is written (test above)")
def test_save_without_checkpoint_support_is_one_line(tmp_path, capsys):
    rc = cli.main(["train", "--quiet", "--epochs", "1", "--save", str(tmp_path / "m.npz")])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "--save")


def _cuda_available():
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:
        return False


@pytest.mark.skipif(_cuda_available(), reason="a CUDA device is present")
def test_cuda_without_gpu_is_one_line(capsys):
    rc = cli.main(["train", "--quiet", "--epochs", "1", "--device", "cuda"])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "cuda")


def test_without_tqdm_progress_is_plain_lines(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    rc = cli.main(["train", "--epochs", "2", "--hidden", "8"])
    cap = capsys.readouterr()
    assert rc == 0
    lines = cap.err.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2") and "loss" in lines[1]


def test_without_matplotlib_plot_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = cli.main(["train", "--quiet", "--plot", str(tmp_path / "x.png")])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "matplotlib", "pip install")
    assert not (tmp_path / "x.png").exists()


def test_without_sklearn_digits_and_compare_are_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    rc = cli.main(["train", "--quiet"])
    one_line_error(rc, "", capsys.readouterr().err, "scikit-learn", "pip install", "--data")
    rc = cli.main(["train", "--quiet", "--compare"])
    one_line_error(rc, "", capsys.readouterr().err, "--compare", "scikit-learn")
    # the user's own data is split, scaled and label-encoded by scikit-learn too (issue 16)
    X, y = blobs()
    np.savez(tmp_path / "b.npz", X=X, y=y)
    for mod in ("sklearn.preprocessing", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, mod, None)
    rc = cli.main(["train", "--quiet", "--epochs", "2", "--data", str(tmp_path / "b.npz")])
    one_line_error(rc, "", capsys.readouterr().err, "scikit-learn", "pip install")


def test_divergence_is_one_line(capsys):
    rc = cli.main(["train", "--quiet", "--epochs", "5", "--optimizer", "sgd", "--lr", "1e30",
                   "--dtype", "float32"])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "diverged")


def test_unexpected_errors_are_one_line_unless_debugging(monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError("kaboom\nsecond line")
    monkeypatch.setattr(cli, "_load", boom)
    monkeypatch.delenv("FASTBP_DEBUG", raising=False)
    rc = cli.main(["train", "--quiet"])
    line = one_line_error(rc, "", capsys.readouterr().err, "kaboom second line", "FASTBP_DEBUG")
    assert "RuntimeError" in line
    monkeypatch.setenv("FASTBP_DEBUG", "1")
    with pytest.raises(RuntimeError, match="kaboom"):
        cli.main(["train", "--quiet"])


# ------------------------------------------------------------------ fastbp.data
def test_stratified_split_is_seeded_disjoint_and_stratified():
    y = np.repeat(np.arange(4), [50, 30, 11, 2])
    tr, te = data.stratified_split(y, 0.2, seed=3)
    tr2, te2 = data.stratified_split(y, 0.2, seed=3)
    tr3, te3 = data.stratified_split(y, 0.2, seed=4)
    np.testing.assert_array_equal(te, te2)
    assert not np.array_equal(te, te3)
    assert np.intersect1d(tr, te).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(y.size))
    np.testing.assert_array_equal(np.bincount(y[te], minlength=4), [10, 6, 2, 1])
    with pytest.raises(ValueError, match="test_size"):
        data.stratified_split(y, 1.5)


def test_encode_labels():
    y, classes = data.encode_labels(np.array([7.0, 3.0, 7.0, 5.0]))
    np.testing.assert_array_equal(classes, [3, 5, 7])
    np.testing.assert_array_equal(y, [2, 0, 2, 1])
    assert y.dtype == np.int64
    y, classes = data.encode_labels(np.array(["b", "a", "b"]))
    np.testing.assert_array_equal(classes[y], ["b", "a", "b"])
    with pytest.raises(data.DataError, match="non-integer"):
        data.encode_labels(np.array([0.5, 1.0]))
    with pytest.raises(data.DataError, match="1-D"):
        data.encode_labels(np.zeros((3, 2)))


def test_load_file_npz_and_csv_agree(tmp_path):
    X, y = blobs(n_per_class=5, n_features=3)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", fmt="%.17g")
    X1, y1, c1 = data.load_file(tmp_path / "d.npz")
    X2, y2, c2 = data.load_file(tmp_path / "d.csv")
    np.testing.assert_array_equal(X1, X)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(c1, c2)


def test_standardizer_uses_training_statistics():
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(200, 3))
    X[:, 2] = 5.0  # constant column: centred, not divided by 0
    s = data.Standardizer().fit(X)
    Z = s.transform(X, np.float32)
    assert Z.dtype == np.float32 and Z.flags.c_contiguous
    np.testing.assert_allclose(Z[:, :2].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(Z[:, :2].std(0), 1, atol=1e-5)
    np.testing.assert_array_equal(Z[:, 2], 0)


# ------------------------------------------------------------------ issue 16: options and feedback
def test_lr_100_on_digits_exits_non_zero_naming_the_learning_rate(capsys, tmp_path):
    model = tmp_path / "m.npz"
    rc = cli.main(["train", "--quiet", "--lr", "100", "--epochs", "3", "--hidden", "32",
                   "--save", str(model)])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "diverged", "learning rate", "--lr 100")
    assert "test accuracy" not in cap.out and not model.exists()    # no model of a diverged run


def test_training_that_ends_at_chance_above_the_initial_loss_is_divergence(capsys):
    # adam at lr 10: the loss does not grow a thousandfold, but the run ends at chance
    rc = cli.main(["train", "--quiet", "--lr", "10", "--epochs", "4", "--hidden", "32"])
    cap = capsys.readouterr()
    one_line_error(rc, cap.out, cap.err, "diverged", "at chance", "learning rate")


def test_progress_is_one_plain_line_per_epoch_off_a_terminal(capsys):
    rc = cli.main(["train", "--epochs", "3", "--hidden", "8"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "\r" not in cap.err
    lines = cap.err.strip().split("\n")
    assert [ln.split(" loss=")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(re.search(r"loss=[0-9.]+ acc=[0-9.]+ test_acc=[0-9.]+ time=", ln) for ln in lines)


def test_progress_bar_on_a_terminal(monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    bar = cli._Progress(3, False, False)
    try:
        assert bar.bar is not None and not bar.plain
    finally:
        bar.close()
    assert cli._Progress(3, True, False).bar is None


def _csv(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def _blob_rows(n_per_class=20, sep=","):
    X, y = blobs(n_per_class=n_per_class, n_features=2, n_classes=2)
    return [sep.join(f"{v:.5f}" for v in row) + f"{sep}{lab}" for row, lab in zip(X, y)]


def test_label_column_and_delimiter(tmp_path, capsys):
    rows = [f"{r.rsplit(';', 1)[1]};{r.rsplit(';', 1)[0]}" for r in _blob_rows(sep=";")]
    p = _csv(tmp_path, "semi.csv", "kind;a;b\n" + "\n".join(rows) + "\n")
    rc = cli.main(["train", "--quiet", "--data", p, "--delimiter", ";", "--label-column", "kind",
                   "--epochs", "3", "--hidden", "8"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "40 samples, 2 features, 2 classes" in cap.out
    rc = cli.main(["train", "--quiet", "--data", p, "--delimiter", ";", "--label-column", "price"])
    one_line_error(rc, "", capsys.readouterr().err, "no column named 'price'", "kind, a, b")


@pytest.mark.parametrize("case", ["empty_label", "bom", "first_row_empty_cell", "numeric_header"])
def test_csv_defects_of_issue_17(tmp_path, capsys, case):
    rows = _blob_rows()
    if case == "empty_label":
        rows[2] = rows[2].rsplit(",", 1)[0] + ","
        rc = cli.main(["train", "--quiet", "--data", _csv(tmp_path, "d.csv", "\n".join(rows))])
        one_line_error(rc, "", capsys.readouterr().err, "d.csv: line 3: empty label")
    elif case == "bom":
        rc = cli.main(["train", "--quiet", "--epochs", "2", "--hidden", "8", "--data",
                       _csv(tmp_path, "d.csv", b"\xef\xbb\xbf" + "\n".join(rows).encode())])
        cap = capsys.readouterr()
        assert rc == 0 and "40 samples" in cap.out           # the first row is data, not a header
    elif case == "first_row_empty_cell":
        rows[0] = "," + rows[0].split(",", 1)[1]
        rc = cli.main(["train", "--quiet", "--data", _csv(tmp_path, "d.csv", "\n".join(rows))])
        one_line_error(rc, "", capsys.readouterr().err, "line 1, column 0: missing value")
    else:
        rc = cli.main(["train", "--quiet", "--epochs", "2", "--hidden", "8", "--data",
                       _csv(tmp_path, "d.csv", "0,1,label\n" + "\n".join(rows))])
        cap = capsys.readouterr()
        assert rc == 0 and "40 samples, 2 features, 2 classes" in cap.out, cap.err


def test_features_near_1e300_train_without_overflow(tmp_path, capsys):
    # issue 17, defect 8: the scaling neither overflows (RuntimeWarning, all-zero features) nor
    # changes the result: the same data at 1e299 times the scale trains to the same accuracy
    import warnings
    X, y = blobs(n_per_class=30, n_features=3)
    accs = []
    for scale in (1.0, 1e299):
        p = tmp_path / f"d{len(accs)}.csv"
        np.savetxt(p, np.column_stack([X * scale, y]), delimiter=",", fmt="%.17g")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rc = cli.main(["train", "--quiet", "--data", str(p), "--epochs", "40", "--hidden", "16",
                           "--lr", "0.01"])
        cap = capsys.readouterr()
        assert rc == 0 and cap.err == "", cap.err
        accs.append(accuracy_of(cap.out))
    assert accs[0] >= 0.8 and accs[1] == accs[0]


def test_regression_on_the_command_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    y = 1e4 + 1e3 * (X[:, 0] - 2 * X[:, 1])
    p = tmp_path / "r.csv"
    np.savetxt(p, np.column_stack([X, y]), delimiter=",", fmt="%.10g", header="a,b,target", comments="")
    rc = cli.main(["train", "--quiet", "--task", "regression", "--data", str(p), "--epochs", "40",
                   "--hidden", "16", "--lr", "0.01"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "120 samples, 2 features, target 'target' (96 train / 24 test)" in cap.out
    assert "loss mse" in cap.out
    m = re.search(r"^test R\^2: ([-0-9.]+) \(RMSE ([0-9.e+]+) in target units, 24 samples\)$", cap.out, re.M)
    assert m and float(m.group(1)) > 0.95 and float(m.group(2)) < 0.25 * y.std(), cap.out
    rc = cli.main(["train", "--quiet", "--task", "regression", "--data",
                   _csv(tmp_path, "bad.csv", "a,t\n1,2\n3,x\n4,5\n")])
    one_line_error(rc, "", capsys.readouterr().err, "line 3", "not a finite number")
    # predictions in the targets' units, written exactly: a float32 model's were written with
    # %.9g, up to 5 units off at 1.6e9 (timestamps, prices in cents)
    big = tmp_path / "big.csv"
    np.savetxt(big, np.column_stack([X, 1.6e9 + y]), delimiter=",", fmt="%.12g", header="a,b,target", comments="")
    rc = cli.main(["train", "--quiet", "--task", "regression", "--data", str(big), "--epochs", "2",
                   "--hidden", "16", "--save", str(tmp_path / "big.npz")])
    assert rc == 0, capsys.readouterr().err
    rc = cli.main(["predict", "--model", str(tmp_path / "big.npz"), "--data", str(big), "--out",
                   str(tmp_path / "pred.csv")])
    assert rc == 0, capsys.readouterr().err
    want = fastbp.load_model(tmp_path / "big.npz").predict(X)
    got = np.loadtxt(tmp_path / "pred.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(got, want)
    # R^2 of one sample is undefined: printed with scikit-learn's convention, and said so
    rc = cli.main(["evaluate", "--model", str(tmp_path / "big.npz"), "--data",
                   _csv(tmp_path, "one.csv", "a,b,target\n0.5,0.25,1600000000\n")])
    cap = capsys.readouterr()
    assert rc == 0 and "R^2 is not defined for one sample" in cap.err and "R^2: " in cap.out


def test_train_with_rmsprop_and_gradient_clipping(capsys):
    rc = cli.main(["train", "--quiet", "--epochs", "5", "--hidden", "16", "--optimizer", "rmsprop",
                   "--momentum", "0.5", "--clip-grad-norm", "1.0", "--lr", "0.005"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert accuracy_of(cap.out) > 0.5
    rc = cli.main(["train", "--quiet", "--epochs", "1", "--optimizer", "rmsprop", "--compare"])
    cap = capsys.readouterr()
    assert rc != 0 and "rmsprop" in cap.err


def test_adamw_and_weight_decay(tmp_path, capsys):
    """--optimizer adamw: fastbp.AdamW with PyTorch's default weight decay (0.01) unless
    --weight-decay says otherwise; --weight-decay is the L2 term of the other optimizers."""
    from fastbp import _cli_args, bundle
    args = _cli_args.build_parser().parse_args(["train", "--optimizer", "adamw"])
    opt = _cli_args.optimizer_from_args(args)
    assert type(opt) is fastbp.AdamW and (opt.lr, opt.weight_decay) == (1e-3, 0.01)
    for name, cls in (("sgd", fastbp.SGD), ("adam", fastbp.Adam), ("rmsprop", fastbp.RMSprop)):
        args = _cli_args.build_parser().parse_args(["train", "--optimizer", name, "--weight-decay", "0.25"])
        opt = _cli_args.optimizer_from_args(args)
        assert type(opt) is cls and opt.weight_decay == 0.25
        assert _cli_args.optimizer_from_args(_cli_args.build_parser().parse_args(
            ["train", "--optimizer", name])).weight_decay == 0.0
    ckpt = tmp_path / "m.npz"
    rc = cli.main(["train", "--quiet", "--epochs", "3", "--hidden", "16", "--optimizer", "adamw",
                   "--weight-decay", "0.05", "--lr", "0.01", "--save", str(ckpt)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert accuracy_of(cap.out) > 0.8
    opt = bundle.load_model(str(ckpt)).step.optimizer
    assert type(opt) is fastbp.AdamW and (opt.lr, opt.weight_decay) == (0.01, 0.05)
    for extra in (["--optimizer", "adamw"], ["--weight-decay", "0.1"]):
        rc = cli.main(["train", "--quiet", "--epochs", "1", "--compare"] + extra)
        cap = capsys.readouterr()
        assert rc != 0 and ("adamw" in cap.err or "--weight-decay" in cap.err), cap.err


def test_gelu_tanh_is_an_activation_choice(tmp_path):
    """--activation gelu_tanh: GELU(approximate="tanh") hidden layers (the estimator's name)."""
    ckpt = tmp_path / "m.npz"
    rc, out, err = run_cli("train", "--quiet", "--epochs", "1", "--hidden", "8", "--activation", "gelu_tanh",
                           "--save", ckpt)
    assert rc == 0, err
    from fastbp import bundle
    layers = bundle.load_model(str(ckpt)).step.model.layers
    gelus = [ly for ly in layers if type(ly).__name__ == "GELU"]
    assert len(gelus) == 1 and gelus[0].approximate == "tanh"
