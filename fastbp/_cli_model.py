"""``fastbp predict`` and ``fastbp evaluate``: a saved model (:mod:`fastbp.bundle`) on raw data."""
from __future__ import annotations

import sys

import numpy as np

from ._cli_base import (CliError, check_csv_options, check_output_path, check_paths, err, out, text_writer,
                        warn, write_output)


def run(args):
    """Run ``fastbp predict`` or ``fastbp evaluate`` with parsed ``args``; returns the exit status."""
    check_csv_options(f"fastbp {args.command}", args)
    if args.command == "predict":
        return predict(args)
    return evaluate(args)


def _load_model(path):
    from . import bundle
    try:
        model = bundle.load_model(path)
    except FileNotFoundError:
        raise CliError(f"--model {path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"--model {path}: is a directory") from None
    except PermissionError as e:
        raise CliError(f"--model {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CliError(f"--model {path}: {e}") from None
    if model.plain:
        what = ("a regression model" if model.task == "regression"
                else "its classes are the output indices")
        warn(f"{path} is a plain checkpoint, not a model saved by fastbp train --save: its features "
             f"are used as given (no scaling) and {what}")
    return model


def _read(args, model):
    from . import data
    ds = data.read_features(args.data, model.n_features_in_, model.feature_names, model.label_name,
                            model.label_index, args.delimiter, args.header)
    note_header(ds)
    return ds


def note_header(ds):
    """The note (stderr, rank 0) of a header decided from a CSV file whose first row holds numbers."""
    from ._cli_base import State
    if getattr(ds, "header_note", None) and State.rank == 0:
        err(f"fastbp: note: {ds.header_note}")


def _label_strings(values):
    """Class labels as text: integral floats (labels beyond int64, exact in float64) in full,
    ``18446744073709551616`` rather than ``1.8446744073709552e+19``."""
    return [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
            for v in np.asarray(values).tolist()]


def predict(args):
    """Predictions as CSV (stdout or ``--out``): a ``prediction`` column, and with
    ``--proba`` one ``proba_<class>`` column per class."""
    check_paths("fastbp predict", [("--out", args.out)], [("--model", args.model), ("--data", args.data)])
    if args.out is not None:
        check_output_path(args.out, "--out")
    model = _load_model(args.model)
    if args.proba and model.task == "regression":
        raise CliError("--proba: a regression model has no class probabilities")
    if args.proba and model.step.loss not in ("softmax_cross_entropy", "bce_with_logits"):
        raise CliError(f"--proba: the model was trained with loss {model.step.loss!r}, whose outputs are "
                       "not probabilities")
    ds = _read(args, model)
    pred = model.predict(ds.X)
    cols = {}
    if model.task == "multilabel":
        for j, c in enumerate(_label_strings(model.classes_)):
            cols[f"prediction_{c}"] = pred[:, j]
    elif pred.ndim == 2:
        for j in range(pred.shape[1]):
            cols[f"prediction_{j}"] = pred[:, j]
    elif model.task == "classification":
        cols["prediction"] = np.array(_label_strings(pred), dtype=object)    # as in the training file
    else:
        cols["prediction"] = pred
    if args.proba:
        P = model.predict_proba(ds.X)
        for j, c in enumerate(_label_strings(model.classes_)):
            cols[f"proba_{c}"] = P[:, j]
    from ._tables import _import
    frame = _import("pandas", "fastbp predict writes CSV with pandas").DataFrame(cols)
    # float32 probabilities to 9 digits (they round-trip); a regression's predictions in the
    # targets' units are float64: their shortest exact repr (%.9g lost up to 5 units at 1.6e9)
    fmt = None if model.task == "regression" else "%.9g" if model.step.dtype == np.float32 else "%.17g"
    if args.out is not None:
        write_output(args.out, "--out", text_writer(
            lambda f: frame.to_csv(f, index=False, float_format=fmt, lineterminator="\n")))
        out(f"predictions: {len(frame)} rows written to {args.out}")
    else:
        frame.to_csv(sys.stdout, index=False, float_format=fmt, lineterminator="\n")
        sys.stdout.flush()
    return 0


def _describe(model, path):
    info = model.info
    for key in ("data", "fastbp_version", "created"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise CliError(f"--model {path}: info field {key!r} must be a string, got "
                           f"{type(info[key]).__name__} (a damaged or hand-edited model file)")
    bits = [model.task]
    if info.get("data"):
        bits.append(f"trained on {info['data']}")
    if info.get("fastbp_version"):
        bits.append(f"fastbp {info['fastbp_version']}")
    if info.get("created"):
        bits.append(info["created"])
    from .layers import Linear
    widths = [model.n_features_in_] + [ly.out_features for ly in model.step.model.layers
                                        if isinstance(ly, Linear)]
    return f"{'-'.join(map(str, widths))}, " + ", ".join(bits)


def _true_indices(model, labels, ds):
    """Index of each sample's label in ``model.classes_`` (-1: a label the model never saw)."""
    from . import data
    classes = model.classes_
    labels = np.asarray(labels)
    if labels.dtype.kind in "OUS":
        labels = data.strip_cells(labels.astype(str) if labels.dtype.kind == "S" else labels)
        empty = np.flatnonzero(labels == "")
        if empty.size:
            raise CliError(f"{ds.path}: empty label {data._where(empty[0], ds.lines)}")
    if classes.dtype.kind in "biuf":
        # exact, as training encoded them (data.encode_labels): integers compared as Python ints,
        # never through float64, where integers beyond 2**53 (or uint64 beyond int64) would merge
        if labels.dtype.kind in "OUS":
            text = labels.tolist()
            num = data._to_numbers(labels).tolist()
            keys = [data.exact_label(t, v) for t, v in zip(text, num)]
        else:
            keys = labels.tolist()
        lookup = {c: k for k, c in enumerate(classes.tolist())}
        return np.array([lookup.get(v, -1) for v in keys], dtype=np.int64)
    text = np.array([str(v) for v in labels.tolist()])
    lookup = {c: k for k, c in enumerate(_label_strings(classes))}
    return np.array([lookup.get(s, -1) for s in text], dtype=np.int64)


def evaluate(args):
    """Accuracy and a per-class report, or R^2 / RMSE / MAE, on labelled raw data."""
    from . import data
    model = _load_model(args.model)
    if model.task == "multilabel":
        raise CliError(f"--model {args.model}: evaluate scores single-label and regression models; "
                       "this one is multilabel (use its predict and your own metric)")
    described = _describe(model, args.model)
    ds = _read(args, model)
    if ds.labels is None:
        name = f" {model.label_name!r}" if model.label_name else ""
        raise CliError(f"{ds.path}: no label column{name}: evaluate needs the true labels "
                       f"({ds.X.shape[1]} feature columns found)")
    out(f"model: {args.model}: {described}")
    n = ds.X.shape[0]
    out(f"data: {ds.path}: {n} samples")
    if model.task == "regression":
        y = data.regression_targets(ds.labels, ds.path if ds.lines is not None else f"{ds.path}: y",
                                    ds.lines)
        pred = model.predict(ds.X)
        if pred.ndim != 1:
            raise CliError(f"--model {args.model}: evaluate scores models of one target; this one has "
                           f"{pred.shape[1]}")
        err = pred - y
        from .training import r2_score
        r2 = r2_score(y, pred)
        if n < 2 or np.ptp(y) == 0:
            warn(f"R^2 is not defined for {'one sample' if n < 2 else 'targets that are all equal'}: "
                 "the value is scikit-learn's convention (1 if predicted exactly, else 0)")
        out(f"R^2: {r2:.4f}")
        out(f"RMSE: {float(np.sqrt(np.mean(err ** 2))):.6g}")
        out(f"MAE: {float(np.mean(np.abs(err))):.6g}")
        return 0
    true = _true_indices(model, ds.labels, ds)
    unseen = np.flatnonzero(true < 0)
    if unseen.size:
        names = sorted({str(v) for v in np.asarray(ds.labels)[unseen].tolist()})
        warn(f"{unseen.size} samples have labels the model never saw ({', '.join(map(repr, names[:5]))}"
             f"{', ...' if len(names) > 5 else ''}): counted as errors in the accuracy, left out of the "
             "report's rows")
    pred = np.argmax(model.decision_function(ds.X), axis=1)
    correct = int(np.sum(pred == true))
    out(f"accuracy: {correct / n:.4f} ({correct}/{n})")
    from ._tables import _import
    metrics = _import("sklearn.metrics", "fastbp evaluate's report uses scikit-learn")
    names = _label_strings(model.classes_)
    report = metrics.classification_report(true, pred, labels=np.arange(len(names)), target_names=names,
                                   digits=4, zero_division=0)
    out(report.rstrip())
    return 0
