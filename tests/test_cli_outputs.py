"""The command line's output paths and the data it reads back (regressions of reviewed defects):
divergence on the last update, atomic --out/--plot, outputs that are inputs, empty paths,
schedule options that would be ignored, labels beyond int64, column names, CSV-only options."""
import errno
import os
import warnings

import numpy as np
import pytest

from fastbp import cli, data
from _cli_run import run_here
from fastbp.data import DataError

pytest.importorskip("sklearn")
pytest.importorskip("pandas")


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_csv(path, header="f1,f2,label", labels=("cat", "dog"), n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    with open(path, "w") as f:
        if header is not None:
            f.write(header + "\n")
        for i, r in enumerate(X):
            f.write(f"{r[0]:.4f},{r[1]:.4f},{labels[int(r[0] > 0)]}\n")
    return str(path)


def write_npz(path, n=40, seed=0, **extra):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    np.savez(path, X=X, y=(X[:, 0] > 0).astype(np.int64), **extra)
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model saved by ``fastbp train`` on a 3-feature .npz, and that .npz."""
    d = tmp_path_factory.mktemp("model")
    npz = write_npz(d / "d.npz")
    path = str(d / "m.npz")
    assert cli.main(["train", "--data", npz, "--hidden", "4", "--epochs", "1", "--quiet", "--save", path]) == 0
    return path, npz


# ------------------------------------------------------------------ 1: divergence on the last update
def test_a_divergence_on_the_last_update_is_an_error_and_writes_nothing(tmp_path, capsys):
    # one update of lr 1e30 (one batch, one epoch) made the weights inf: the run printed a numpy
    # RuntimeWarning, reported chance accuracy, saved the broken model and exited 0
    save = tmp_path / "div.npz"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = run_here(capsys, "train", "--hidden", "16", "--epochs", "1", "--batch-size", "5000",
                                "--lr", "1e30", "--optimizer", "sgd", "--save", save, "--quiet")
    assert rc == 1
    line = one_line(err)
    assert "diverged" in line and "--lr" in line and "not finite" in line
    assert not save.exists() and "checkpoint" not in out
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


# ------------------------------------------------------------------ 2: --out and --plot are atomic
def test_a_failed_out_leaves_the_old_file_as_it_was(tmp_path, capsys, monkeypatch, model):
    import pandas as pd
    real = pd.DataFrame.to_csv

    def disk_full(self, path_or_buf=None, **kw):     # writes part of the file, then ENOSPC
        text = real(self, None, **kw)
        if isinstance(path_or_buf, (str, os.PathLike)):
            with open(path_or_buf, "w") as f:
                f.write(text[:7])
        else:
            path_or_buf.write(text[:7])
            path_or_buf.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    out = tmp_path / "p.csv"
    out.write_text("old predictions\n")
    rc, _, err = run_here(capsys, "predict", "--model", model[0], "--data", model[1], "--out", out)
    assert rc == 1 and "--out" in one_line(err) and "No space left" in err
    assert out.read_text() == "old predictions\n"
    assert sorted(os.listdir(tmp_path)) == ["p.csv"]          # no temporary file left


def test_a_failed_plot_leaves_the_old_file_as_it_was(tmp_path, capsys, monkeypatch, model):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def disk_full(self, fname, **kw):
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG")
        else:
            fname.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", disk_full)
    png = tmp_path / "c.png"
    png.write_bytes(b"old plot")
    rc, _, err = run_here(capsys, "train", "--data", model[1], "--hidden", "4", "--epochs", "1", "--quiet",
                          "--plot", png)
    assert rc == 1 and "--plot" in one_line(err) and "No space left" in err
    assert png.read_bytes() == b"old plot" and sorted(os.listdir(tmp_path)) == ["c.png"]


def test_out_and_plot_still_write_their_files(tmp_path, capsys, model):
    out = tmp_path / "p.csv"
    out.write_text("old\n")
    rc, stdout, err = run_here(capsys, "predict", "--model", model[0], "--data", model[1], "--out", out)
    assert rc == 0, err
    assert out.read_text().splitlines()[0] == "prediction" and len(out.read_text().splitlines()) == 41


# ------------------------------------------------------------------ 3: an empty header cell
def test_a_model_trained_on_an_empty_header_cell_reads_that_file_back(tmp_path, capsys):
    csv = write_csv(tmp_path / "e.csv", header="f1,,label")
    m = tmp_path / "m.npz"
    rc, _, err = run_here(capsys, "train", "--data", csv, "--hidden", "4", "--epochs", "1", "--quiet",
                          "--save", m)
    assert rc == 0, err
    rc, out, err = run_here(capsys, "predict", "--model", m, "--data", csv)
    assert rc == 0, err
    assert out.splitlines()[0] == "prediction" and len(out.splitlines()) == 41
    rc, out, err = run_here(capsys, "evaluate", "--model", m, "--data", csv)
    assert rc == 0 and "accuracy:" in out, err
    ds = data.read_features(csv, 2, ["f1", "column 1"], "label", 2)
    assert ds.X.shape == (40, 2) and ds.labels is not None


# ------------------------------------------------------------------ 4: duplicate npz feature names
def test_duplicate_feature_names_in_an_npz_are_refused(tmp_path, capsys):
    npz = write_npz(tmp_path / "d.npz", feature_names=np.array(["a", "a", "c"]))
    with pytest.raises(DataError, match="'a' twice"):
        data.read_dataset(npz)
    rc, _, err = run_here(capsys, "train", "--data", npz, "--hidden", "4", "--epochs", "1", "--quiet")
    assert rc == 1 and "feature_names" in one_line(err)
    # a model that already has such names cannot match a header by name (it fed 'a' to both)
    csv = tmp_path / "ac.csv"
    csv.write_text("a,c\n1,2\n3,4\n")
    with pytest.raises(DataError, match="'a' twice"):
        data.read_features(str(csv), 3, ["a", "a", "c"])


# ------------------------------------------------------------------ 5: an output that is an input
@pytest.mark.parametrize("case", ["save=data", "plot=data", "plot=save", "out=model", "out=data",
                                  "hard link"])
def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, capsys, model, case):
    npz = tmp_path / "d.npz"
    npz.write_bytes(open(model[1], "rb").read())
    m = tmp_path / "m.npz"
    m.write_bytes(open(model[0], "rb").read())
    train = ["train", "--data", npz, "--hidden", "4", "--epochs", "1", "--quiet"]
    predict = ["predict", "--model", m, "--data", npz]
    argv, victim, words = {
        "save=data": (train + ["--save", tmp_path / "." / "d.npz"], npz, ("--save", "--data")),
        "plot=data": (train + ["--plot", npz], npz, ("--plot", "--data")),
        "plot=save": (train + ["--save", tmp_path / "x.npz", "--plot", tmp_path / "x.npz"], None,
                      ("--plot", "--save")),
        "out=model": (predict + ["--out", m], m, ("--out", "--model")),
        "out=data": (predict + ["--out", npz], npz, ("--out", "--data")),
        "hard link": (train + ["--save", tmp_path / "link.npz"], npz, ("--save", "--data")),
    }[case]
    if case == "hard link":
        os.link(npz, tmp_path / "link.npz")
    before = victim.read_bytes() if victim is not None else None
    rc, out, err = run_here(capsys, *argv)
    assert rc == 1 and out == ""
    line = one_line(err)
    assert all(w in line for w in words) and "same file" in line
    if victim is not None:
        assert victim.read_bytes() == before
    else:
        assert not (tmp_path / "x.npz").exists()


# ------------------------------------------------------------------ 6: empty output paths
@pytest.mark.parametrize("argv,opt", [
    (["train", "--save", ""], "--save"),
    (["train", "--plot", ""], "--plot"),
    (["predict", "--model", "M", "--data", "D", "--out", ""], "--out"),
])
def test_an_empty_output_path_is_a_usage_error(capsys, model, argv, opt):
    argv = [model[0] if a == "M" else model[1] if a == "D" else a for a in argv]
    rc, out, err = run_here(capsys, *argv, *(["--quiet"] if argv[0] == "train" else []))
    assert rc == 2 and out == ""
    assert opt in one_line(err) and "empty" in err


# ------------------------------------------------------------------ 7: schedule options that do nothing
@pytest.mark.parametrize("argv,words", [
    (["--schedule", "cosine", "--step-size", "5"], "--step-size applies to --schedule step"),
    (["--schedule", "cosine", "--gamma", "0.5"], "--gamma applies to"),
    (["--schedule", "onecycle", "--gamma", "0.5"], "--gamma applies to"),
    (["--schedule", "step", "--min-lr", "0.0001"], "--min-lr applies to --schedule cosine or plateau"),
    (["--schedule", "step", "--patience", "3"], "--patience applies to --schedule plateau"),
    (["--min-lr", "0.0001"], "--min-lr needs --schedule"),
    (["--patience", "3"], "--patience needs --schedule"),
    (["--schedule", "step", "--warmup", "0"], "--warmup applies to --schedule cosine"),
    (["--schedule", "cosine", "--warmup", "5", "--epochs", "3"], "--warmup 5 must be shorter than --epochs 3"),
    (["--schedule", "cosine", "--warmup", "3", "--epochs", "3"], "--warmup 3 must be shorter"),
    (["--schedule", "cosine", "--min-lr", "5"], "--min-lr 5 must be below the learning rate"),
    (["--schedule", "plateau", "--min-lr", "0.1", "--lr", "0.1"], "--min-lr 0.1 must be below"),
])
def test_schedule_options_that_would_be_ignored_are_usage_errors(capsys, argv, words):
    rc, out, err = run_here(capsys, "train", "--quiet", "--epochs", "2", "--hidden", "4", *argv)
    assert rc == 2 and out == ""
    assert words in one_line(err)


def test_schedule_options_that_apply_still_run(capsys):
    for argv in (["--schedule", "cosine", "--warmup", "1", "--min-lr", "0.0001", "--epochs", "2"],
                 ["--schedule", "plateau", "--min-lr", "0.0001", "--patience", "1", "--gamma", "0.5"]):
        rc, _, err = run_here(capsys, "train", "--quiet", "--epochs", "2", "--hidden", "4", *argv)
        assert rc == 0, err


# ------------------------------------------------------------------ 8: labels beyond int64
def test_labels_beyond_int64_come_back_as_written(tmp_path, capsys):
    big = ("18446744073709551616", "18446744073709555712")
    csv = write_csv(tmp_path / "big.csv", labels=big)
    m, out = tmp_path / "m.npz", tmp_path / "p.csv"
    assert run_here(capsys, "train", "--data", csv, "--hidden", "4", "--epochs", "1", "--quiet",
                    "--save", m)[0] == 0
    rc, _, err = run_here(capsys, "predict", "--model", m, "--data", csv, "--proba", "--out", out)
    assert rc == 0, err
    rows = out.read_text().splitlines()
    assert rows[0] == f"prediction,proba_{big[0]},proba_{big[1]}"
    assert {r.split(",")[0] for r in rows[1:]} <= set(big)
    rc, text, err = run_here(capsys, "evaluate", "--model", m, "--data", csv)
    assert rc == 0 and big[0] in text and big[1] in text, err


# ------------------------------------------------------------------ 9: CSV options with an .npz
@pytest.mark.parametrize("cmd", ["train", "predict", "evaluate"])
@pytest.mark.parametrize("opt", [["--delimiter", ";"], ["--header"], ["--no-header"]])
def test_csv_options_with_an_npz_are_usage_errors_in_every_command(capsys, model, cmd, opt):
    argv = ["train", "--data", model[1], "--quiet"] if cmd == "train" else \
        [cmd, "--model", model[0], "--data", model[1]]
    rc, out, err = run_here(capsys, *argv, *opt)
    assert rc == 2 and out == ""
    assert opt[0] in one_line(err) and "CSV" in err
    with pytest.raises(DataError, match="apply to CSV"):
        data.read_features(model[1], 3, delimiter=";")


# ------------------------------------------------------------------ 10: a damaged info field
def test_an_info_field_of_the_wrong_type_is_a_clear_error(capsys, monkeypatch, model):
    from fastbp import bundle
    real = bundle.load_model

    def damaged(path):
        m = real(path)
        m.info["created"] = ["2024", "01"]
        return m
    monkeypatch.setattr(bundle, "load_model", damaged)
    rc, out, err = run_here(capsys, "evaluate", "--model", model[0], "--data", model[1])
    assert rc == 1 and out == ""
    line = one_line(err)
    assert model[0] in line and "'created'" in line and "sequence item" not in line


# ------------------------------------------------------------------ 11: a first row taken as a header
def test_a_header_decided_from_a_row_with_numbers_is_noted(tmp_path, capsys):
    rows = write_csv(tmp_path / "x.csv", header=None)
    text = open(rows).read().splitlines()
    typo = tmp_path / "typo.csv"
    typo.write_text("\n".join(["0.84.44,0.7580,cat"] + text) + "\n")
    rc, _, err = run_here(capsys, "train", "--data", typo, "--hidden", "4", "--epochs", "1", "--quiet")
    assert rc == 0
    line = one_line(err)
    assert "note" in line and "line 1" in line and "0.84.44,0.7580,cat" in line and "--no-header" in line
    assert data.read_dataset(str(typo)).header_note is not None
    # an ordinary header of names: no note
    rc, _, err = run_here(capsys, "train", "--data", write_csv(tmp_path / "ok.csv"), "--hidden", "4",
                          "--epochs", "1", "--quiet")
    assert rc == 0 and err == ""


def test_a_header_guess_behind_a_failed_read_is_named_in_the_error(tmp_path, capsys):
    """A first data row with a typo taken as the header made equal 'names' of its numbers:
    the error said two columns were named '0', without the note that explains it."""
    typo = tmp_path / "typo.csv"
    rows = ["0,0,5,1x,cat"] + [f"0,{i % 3},{i},{i % 5},{'cat' if i % 2 else 'dog'}" for i in range(30)]
    typo.write_text("\n".join(rows) + "\n")
    rc, out, err = run_here(capsys, "train", "--data", typo, "--hidden", "4", "--epochs", "1", "--quiet")
    line = one_line(err)
    assert rc == 1 and "named '0'" in line and "note: line 1 ('0,0,5,1x,cat') was taken as the header" in line
    assert "--no-header" in line


@pytest.mark.parametrize("argv,words", [
    (["--compare", "--schedule", "cosine"], "--compare: scikit-learn's MLP has no --schedule cosine"),
    (["--hidden", "--activation", "tanh"], "--activation applies to hidden layers, and --hidden gives none"),
])
def test_options_that_would_be_ignored_by_compare_or_a_linear_model_are_usage_errors(capsys, argv, words):
    """--compare trained scikit-learn at a constant rate beside a scheduled fastbp; an
    --activation of a model without hidden layers did nothing (its siblings were refused)."""
    args = ["--hidden", "4", *argv] if argv[0] != "--hidden" else argv
    rc, out, err = run_here(capsys, "train", "--quiet", "--epochs", "2", *args)
    assert rc == 2 and out == ""
    assert words in one_line(err)


def test_compare_notes_that_scikit_learn_trains_log_loss_beside_an_mse_classifier(capsys):
    rc, out, err = run_here(capsys, "train", "--quiet", "--epochs", "1", "--hidden", "8", "--loss", "mse",
                            "--compare")
    assert rc == 0, err
    assert "(scikit-learn always trains with log-loss)" in out
    rc, out, err = run_here(capsys, "train", "--quiet", "--epochs", "1", "--hidden", "8", "--compare")
    assert rc == 0 and "log-loss" not in out
