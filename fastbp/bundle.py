"""Saved models: a checkpoint plus everything needed to use it on raw data.

A *bundle* is a :mod:`fastbp.checkpoint` file (weights, architecture,
optimizer state: :func:`fastbp.load` reads it as a plain checkpoint) whose
extra arrays and metadata also hold

* the task: ``'classification'``, ``'multilabel'`` or ``'regression'``;
* the feature preprocessing as plain float64 arrays ``x_mean``/``x_scale``
  (the model sees ``(X - x_mean) / x_scale``; the digits default stores
  mean 0 and scale 16), the target scaling ``y_mean``/``y_scale`` of a
  regression (predictions come back in the original units);
* the class labels (numbers as an array ``classes``, strings in the JSON
  metadata), the feature names and the label column of the training file;
* training metadata: fastbp version, UTC date, epochs, data file name,
  test accuracy or R^2, and for a scikit-learn-style estimator its class
  and parameters.

Like every checkpoint it is pickle-free (``allow_pickle=False``, JSON
metadata) and versioned (``FORMAT_VERSION`` of the bundle part, checked on
load).  :func:`load_model` also accepts a plain checkpoint (no extras): the
model then has no preprocessing, is a regression model when its loss is one
(``mse``, ``poisson``: predictions are the outputs, ``exp`` of them for
``poisson``) and a classifier otherwise, its classes the output indices
(``plain`` is True; ``fastbp predict`` warns).
"""
from __future__ import annotations

import datetime as _datetime
import math as _math
import numbers as _numbers
import os as _os

import numpy as _np

from .registry import losses as _losses

__all__ = ["SavedModel", "save_model", "load_model", "save_estimator", "FORMAT_NAME", "FORMAT_VERSION"]


def __dir__():
    # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)

FORMAT_NAME = "fastbp-bundle"
FORMAT_VERSION = 1
TASKS = ("classification", "multilabel", "regression")
_KEY = "fastbp_bundle"
_PROBA_LOSSES = ("softmax_cross_entropy", "bce_with_logits")


def _jsonable(v):
    """``v`` with numpy scalars and tuples made JSON types; non-finite floats -> None."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, _np.bool_)):
        return bool(v)
    if isinstance(v, _numbers.Integral):
        return int(v)
    if isinstance(v, _numbers.Real):
        return float(v) if _math.isfinite(v) else None
    if v is None or isinstance(v, str):
        return v
    return repr(v)


def regression_predictions(loss, S):
    """A regression network's predictions from its outputs ``S``, float64: the outputs
    themselves, ``exp`` of them (the inverse of the log link) for ``loss='poisson'``.

    The inverse link is applied after the cast to float64, so that a float32 output
    beyond ``log(float32 max)`` (about 88.7) gives its float64 mean, as scikit-learn's
    ``MLPRegressor(loss='poisson')`` does, not ``inf``.  The one definition of the
    link used by :class:`SavedModel` and :class:`fastbp.MLPRegressor`.
    """
    Y = _np.array(S, dtype=_np.float64)        # a copy: the caller's outputs are not changed
    if loss == "poisson":
        _np.exp(Y, out=Y)
    return Y


def _cpu_step(step):
    from .step import TrainStep
    if hasattr(step, "to_cpu") and not isinstance(step, TrainStep):     # CudaTrainStep
        step = step.to_cpu()
    inner = getattr(step, "step", None)                                 # DistributedStep (rank 0)
    if not isinstance(step, TrainStep) and isinstance(inner, TrainStep):
        step = inner
    if not isinstance(step, TrainStep):
        raise TypeError(f"step must be a fastbp.TrainStep, got {type(step).__name__}")
    return step


def _vector(name, v, n, positive=False):
    a = _np.asarray(v, dtype=_np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if not _np.all(_np.isfinite(a)) or (positive and not _np.all(a > 0)):
        raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}")
    return _np.ascontiguousarray(a)


def _labels(classes):
    """``classes`` as a numeric or str array, exactly: all numbers (bools) or all strings, never
    a mix made strings by numpy, nor bytes (which would come back as their repr)."""
    items = list(_np.ravel(_np.asarray(classes, dtype=object)))
    if any(isinstance(v, (bytes, _np.bytes_)) for v in items):
        raise TypeError("classes must be numbers or strings, not bytes (decode them to str)")
    if all(isinstance(v, str) for v in items):
        return _np.asarray(classes, dtype=str)
    if all(isinstance(v, (_numbers.Number, _np.bool_)) and not isinstance(v, (str, complex, _np.complexfloating))
           for v in items):
        c = _np.asarray(classes) if not isinstance(classes, _np.ndarray) or classes.dtype.kind != "O" \
            else _np.asarray(classes.tolist())
        if c.dtype.kind in "biuf":
            return c
    raise TypeError("classes must be all numbers or all strings, got "
                    f"{sorted({type(v).__name__ for v in items})}")


def save_model(step, path, *, task="classification", classes=None, feature_names=None, label_name=None,
               label_index=None, x_mean=None, x_scale=None, y_mean=None, y_scale=None, info=None,
               estimator=None):
    """Write ``step`` and its preprocessing as one bundle at ``path``, atomically.

    Parameters
    ----------
    step : TrainStep or CudaTrainStep
        The trained step (a GPU step is copied to the host first).
    path : str or os.PathLike
    task : {'classification', 'multilabel', 'regression'}
    classes : array_like, shape (n_outputs,), optional
        Classification: the label of each output, all numbers (or bools) or
        all strings, read back as they were (a mix, or bytes, is a
        ``TypeError``); default ``arange(n_outputs)``.
    feature_names : sequence of str, shape (n_features,), optional
        Unique (a DataFrame's columns are taken by name).
    label_name : str, optional
    label_index : int, optional
        0-based column of the label in the training file.
    x_mean, x_scale : array_like of float, shape (n_features,), optional
        The model's inputs are ``(X - x_mean) / x_scale`` (both or neither).
    y_mean, y_scale : array_like of float, shape (n_outputs,), optional
        Regression: the model's outputs are ``(y - y_mean) / y_scale``.
    info : dict, optional
        JSON-serialisable training metadata (non-finite floats become null).
    estimator : dict, optional
        ``{'class': name, 'params': get_params()}`` of an estimator.
    """
    from . import checkpoint
    from ._version import __version__
    step = _cpu_step(step)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    n_in, n_out = step.n_in, step.n_out
    arrays, meta = {}, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "task": task,
                        "precision": getattr(step, "precision", "full")}
    if task != "regression":
        c = _np.arange(n_out) if classes is None else _labels(classes)
        if c.shape != (n_out,):
            raise ValueError(f"classes must have shape ({n_out},) (one per output), got {c.shape}")
        if c.dtype.kind == "U":
            meta["classes"] = [str(v) for v in c]
        elif c.dtype.kind in "biuf":
            arrays["classes"] = _np.ascontiguousarray(c)
        else:
            raise TypeError(f"classes must be numbers or strings, got dtype {c.dtype}")
    elif classes is not None:
        raise ValueError("a regression bundle has no classes")
    if feature_names is not None:
        fn = [str(v) for v in feature_names]
        if len(fn) != n_in:
            raise ValueError(f"feature_names must name the {n_in} features, got {len(fn)} names")
        if len(set(fn)) != len(fn):     # a DataFrame's columns are taken by name
            dup = next(v for v in fn if fn.count(v) > 1)
            raise ValueError(f"feature_names must be unique: {dup!r} names more than one feature")
        meta["feature_names"] = fn
    if (x_mean is None) != (x_scale is None):
        raise ValueError("x_mean and x_scale go together")
    if x_mean is not None:
        arrays["x_mean"] = _vector("x_mean", x_mean, n_in)
        arrays["x_scale"] = _vector("x_scale", x_scale, n_in, positive=True)
    if (y_mean is None) != (y_scale is None):
        raise ValueError("y_mean and y_scale go together")
    if y_mean is not None:
        if task != "regression":
            raise ValueError("y_mean and y_scale apply to regression bundles")
        arrays["y_mean"] = _vector("y_mean", y_mean, n_out)
        arrays["y_scale"] = _vector("y_scale", y_scale, n_out, positive=True)
    meta["label_name"] = None if label_name is None else str(label_name)
    meta["label_index"] = None if label_index is None else int(label_index)
    base = {"fastbp_version": __version__,
            "created": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds")}
    meta["info"] = _jsonable({**base, **(info or {})})
    meta["estimator"] = _jsonable(estimator) if estimator is not None else None
    checkpoint.save(step, path, extra_arrays=arrays, extra_meta={_KEY: meta})


def save_estimator(est, path):
    """Bundle of a fitted :class:`fastbp.MLPClassifier` / :class:`fastbp.MLPRegressor`."""
    step = getattr(est, "_step", None)
    if step is None:
        raise ValueError(f"this {type(est).__name__} is not fitted yet: call fit before save")
    if hasattr(est, "classes_"):
        task = "multilabel" if getattr(est, "_multilabel", False) else "classification"
        # the label of each output: a multilabel target's columns (its binarizer's classes;
        # classes_ may hold partial_fit's classes beyond them, as scikit-learn's)
        classes = est._label_binarizer.classes_ if task == "multilabel" else est.classes_
    else:
        task, classes = "regression", None
    names = getattr(est, "feature_names_in_", None)
    info = {"estimator": type(est).__name__, "n_iter": getattr(est, "n_iter_", None),
            "loss": getattr(est, "loss_", None), "t": getattr(est, "t_", None)}
    params = {k: v for k, v in est.get_params(deep=False).items()}
    rs = params.get("random_state")
    if rs is not None and not isinstance(rs, _numbers.Integral):
        params["random_state"] = None          # a RandomState instance is not data
    save_model(step, path, task=task, classes=classes,
               feature_names=None if names is None else list(names), info=info,
               estimator={"class": type(est).__name__, "params": params})


class SavedModel:
    """A trained model loaded by :func:`load_model`, ready for raw features.

    Parameters
    ----------
    step : TrainStep
    meta : dict
        The file's metadata.
    arrays : dict of str to ndarray
        Its arrays (classes, scaling).
    path : str
    plain : bool
        Made by :func:`load_model` (create one with it).

    Attributes
    ----------
    step : TrainStep
        The network (weights, architecture, optimizer state).
    task : {'classification', 'multilabel', 'regression'}
    classes_ : ndarray or None
        The label of each output (classification and multilabel).
    feature_names_in_ : ndarray of str or None
    n_features_in_ : int
    label_name : str or None
    label_index : int or None
    x_mean_, x_scale_ : ndarray of float64 or None
    y_mean_, y_scale_ : ndarray of float64 or None
    info : dict
        Training metadata (fastbp version, date, epochs, data file, scores).
    estimator : dict or None
        Class and parameters of the estimator that saved it.
    plain : bool
        True for a plain checkpoint without a bundle (no preprocessing).
    """

    def __init__(self, step, meta, arrays, path, plain):
        self.step, self.path, self.plain = step, path, plain
        self.n_features_in_ = step.n_in
        loss = step.loss
        # a plain checkpoint: the loss tells the task (every regression loss: mse, poisson)
        regression = plain and loss in _losses.regression_names()
        self.task = meta.get("task", "regression" if regression else "classification")
        self.classes_ = None
        if self.task != "regression":
            if "classes" in arrays:
                self.classes_ = arrays["classes"]
            elif meta.get("classes") is not None:
                self.classes_ = _np.array(meta["classes"], dtype=str)
            else:
                self.classes_ = _np.arange(step.n_out)
        fn = meta.get("feature_names")
        self.feature_names_in_ = None if fn is None else _np.array(fn, dtype=str)
        self.label_name = meta.get("label_name")
        self.label_index = meta.get("label_index")
        self.x_mean_, self.x_scale_ = arrays.get("x_mean"), arrays.get("x_scale")
        self.y_mean_, self.y_scale_ = arrays.get("y_mean"), arrays.get("y_scale")
        self.info = dict(meta.get("info") or {})
        self.estimator = meta.get("estimator")

    @property
    def feature_names(self):
        """The feature names as a list, or None."""
        return None if self.feature_names_in_ is None else [str(s) for s in self.feature_names_in_]

    def __repr__(self):
        what = "plain checkpoint" if self.plain else f"{self.task}"
        return f"<fastbp.SavedModel {what} {self.step.model!r} from {self.path!r}>"

    # ------------------------------------------------------------ inference
    def _inputs(self, X):
        if hasattr(X, "columns") and self.feature_names_in_ is not None:
            cols = [str(c) for c in X.columns]
            missing = [n for n in self.feature_names if n not in cols]
            if missing:
                raise ValueError(f"X lacks the feature column(s) {missing}")
            if hasattr(X, "iloc"):      # pandas, by position: its column labels may be numbers
                X = X.iloc[:, [cols.index(n) for n in self.feature_names]]
            else:
                X = X[self.feature_names]
        X = _np.asarray(X)
        if X.dtype.kind == "O":        # a DataFrame of bool and number columns: numbers, as scikit-learn
            try:
                X = X.astype(_np.float64)
            except (TypeError, ValueError):
                pass
        if X.dtype.kind not in "biuf":
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n_samples, {self.n_features_in_}), got {X.shape}")
        if not _np.all(_np.isfinite(X)):
            raise ValueError("X contains NaN or infinite values")
        if self.x_mean_ is None:
            with _np.errstate(over="ignore"):
                Z = _np.ascontiguousarray(X, dtype=self.step.dtype)
            if not _np.all(_np.isfinite(Z)):
                raise ValueError(f"X has values outside the {self.step.dtype.name} range")
            return Z
        from .data import Standardizer
        return Standardizer(self.x_mean_, self.x_scale_).transform(X, self.step.dtype, self.feature_names)

    def decision_function(self, X):
        """Network outputs for raw features.

        Parameters
        ----------
        X : array-like, sparse matrix or DataFrame, shape (n_samples, n_features_in_)
            Raw features (scaled here as in training; a DataFrame's columns taken by name;
            a scipy sparse matrix densified a chunk of rows at a time).

        Returns
        -------
        ndarray, shape (n_samples, n_outputs), the step's dtype
        """
        from ._estimator_rows import chunk_rows, sparse_matrix
        if sparse_matrix(X):        # (scipy.sparse, as the estimators: densified a chunk of rows at a time)
            if len(X.shape) != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(f"X must have shape (n_samples, {self.n_features_in_}), got {X.shape}")
            X, per = X.tocsr(), chunk_rows(X.shape[1])
            return _np.concatenate([self.decision_function(X[i:i + per].toarray())
                                    for i in range(0, X.shape[0], per)] or
                                   [_np.empty((0, self.step.n_out), dtype=self.step.dtype)])
        Z = self._inputs(X)
        if Z.shape[0] == 0:
            return _np.empty((0, self.step.n_out), dtype=self.step.dtype)
        return _np.asarray(self.step.predict(Z))

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in the order of ``classes_``.

        Softmax of the outputs (``softmax_cross_entropy``), per-class sigmoid
        (``bce_with_logits``; normalised to sum 1 for a single-label task).

        Parameters
        ----------
        X : array-like or DataFrame, shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray, shape (n_samples, n_classes)
            float64, or an estimator's bundle's compute dtype (as the estimator answered).

        Raises
        ------
        ValueError
            A regression model, or a loss whose outputs are not probabilities.
        """
        if self.task == "regression":
            raise ValueError("predict_proba: a regression model has no class probabilities")
        if self.step.loss not in _PROBA_LOSSES:
            raise ValueError(f"predict_proba: the model was trained with loss {self.step.loss!r}, whose "
                             f"outputs are not probabilities (use {' or '.join(_PROBA_LOSSES)})")
        S = self.decision_function(X).astype(_np.float64)
        # a bundle of a fastbp estimator answers as the estimator did: in its compute dtype
        out = self.step.dtype if self.estimator is not None else _np.float64
        if self.step.loss == "bce_with_logits":
            from scipy.special import expit             # (as the estimators: the same values)
            P = expit(S)
            if self.task == "classification":
                P /= _np.maximum(P.sum(axis=1, keepdims=True), _np.finfo(_np.float64).tiny)
            return P.astype(out, copy=False)
        S -= S.max(axis=1, keepdims=True)
        _np.exp(S, out=S)
        S /= S.sum(axis=1, keepdims=True)
        return S.astype(out, copy=False)

    def predict(self, X):
        """Predictions for raw features.

        Parameters
        ----------
        X : array-like or DataFrame, shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray
            Labels ``(n_samples,)`` (classification), an int64 indicator matrix ``(n_samples,
            n_classes)`` (multilabel) or targets in the original units (regression;
            ``(n_samples,)`` for one target).
        """
        S = self.decision_function(X)
        if self.task == "classification":
            return self.classes_[_np.argmax(S, axis=1)]
        if self.task == "multilabel":
            return (S > 0).astype(_np.int64)
        # the network outputs log-means for loss='poisson' (MLPRegressor(loss='poisson'))
        Y = regression_predictions(self.step.loss, S)
        if self.y_mean_ is not None:
            Y = Y * self.y_scale_ + self.y_mean_
        return Y[:, 0] if Y.shape[1] == 1 else Y

    def score(self, X, y):
        """Accuracy (classification, multilabel: exact match) or R^2 (regression).

        Parameters
        ----------
        X : array-like or DataFrame, shape (n_samples, n_features_in_)
        y : array-like, shape (n_samples,) or (n_samples, n_outputs)
            True labels or targets (a label column ``(n_samples, 1)`` as scikit-learn's
            ``accuracy_score`` takes it).

        Returns
        -------
        float

        Raises
        ------
        ValueError
            ``X`` without a sample (as scikit-learn's ``score``), ``y`` not of the predictions'
            shape (one label or target per sample of ``X``).
        """
        pred = self.predict(X)
        if len(pred) == 0:
            raise ValueError("score needs at least one sample; X has 0 rows")
        y = _np.asarray(y)
        if self.task == "regression":
            from .training import r2_score
            return r2_score(y, pred)
        if y.ndim == 2 and y.shape[1] == 1 and pred.ndim == 1:
            y = y[:, 0]                 # a label column, as scikit-learn's accuracy_score takes it
        if y.shape != pred.shape:
            raise ValueError(f"y must be of shape {pred.shape}, a label for each sample of X, got shape {y.shape}")
        if self.task == "multilabel":
            return float(_np.mean(_np.all(pred == y, axis=1)))
        return float(_np.mean(pred == y))


def _check_bundle(meta, arrays, step):
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"bundle format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    v = meta.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"bundle format version {v!r} is not valid")
    if v > FORMAT_VERSION:
        raise ValueError(f"bundle format version {v} is newer than this fastbp reads ({FORMAT_VERSION}); "
                         "upgrade fastbp")
    task = meta.get("task")
    if task not in TASKS:
        raise ValueError(f"bundle task {task!r} is not one of {TASKS}")
    known = {"classes", "x_mean", "x_scale", "y_mean", "y_scale"}
    extra = sorted(set(arrays) - known)
    if extra:
        raise ValueError(f"unexpected bundle array(s) {', '.join(extra)}")
    n_in, n_out = step.n_in, step.n_out
    for k, n in (("x_mean", n_in), ("x_scale", n_in), ("y_mean", n_out), ("y_scale", n_out)):
        if k in arrays:
            _vector(k, arrays[k], n, positive=k.endswith("scale"))
    if ("x_mean" in arrays) != ("x_scale" in arrays) or ("y_mean" in arrays) != ("y_scale" in arrays):
        raise ValueError("the scaling arrays come in pairs (mean and scale)")
    if task != "regression":
        if "classes" in arrays:
            c = arrays["classes"]
            if c.shape != (n_out,):
                raise ValueError(f"'classes' has shape {c.shape}, the model has {n_out} outputs")
        else:
            c = meta.get("classes")
            if not isinstance(c, list) or len(c) != n_out or not all(isinstance(s, str) for s in c):
                raise ValueError(f"classes must be a list of {n_out} strings")
    elif "classes" in arrays or meta.get("classes") is not None:
        raise ValueError("a regression bundle has no classes")
    fn = meta.get("feature_names")
    if fn is not None and (not isinstance(fn, list) or len(fn) != n_in
                           or not all(isinstance(s, str) for s in fn)):
        raise ValueError(f"feature_names must be a list of {n_in} strings")
    if meta.get("label_name") is not None and not isinstance(meta["label_name"], str):
        raise ValueError("label_name must be a string")
    li = meta.get("label_index")
    if li is not None and (not isinstance(li, int) or isinstance(li, bool) or li < 0):
        raise ValueError("label_index must be a non-negative integer")
    for k in ("info", "estimator"):
        if meta.get(k) is not None and not isinstance(meta[k], dict):
            raise ValueError(f"{k} must be an object")


def saved_precision(recorded):
    """The precision to rebuild a step trained at ``recorded`` precision with (any case): "auto"
    for "bf16" (bf16 products where this machine has them, full precision elsewhere, so that
    the model loads anywhere) and for "auto" (a record of the argument, not of what it resolved
    to: an estimator pickled by an earlier fastbp), "full" otherwise."""
    return "auto" if isinstance(recorded, str) and recorded.lower() in ("bf16", "auto") else "full"


def load_model(path, precision=None):
    """Load a bundle (or a plain checkpoint) written by :func:`save_model`,
    ``fastbp train --save`` or an estimator's ``save``.

    Parameters
    ----------
    path : str or os.PathLike
    precision : {"full", "bf16", "auto"}, optional
        The precision of the rebuilt step's products.  Default: as the
        model was trained (a bf16 model's products in bf16 where this
        machine has them, in full precision elsewhere), so that its
        predictions are the trained model's.

    Returns
    -------
    SavedModel

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Not a readable checkpoint, or its bundle part is malformed or of a
        newer format version (the message names the file).
    """
    from . import checkpoint
    try:
        spath = _os.fsdecode(_os.fspath(path))        # a bytes path as checkpoint.save takes it
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if precision is None:
        def precision(meta):         # as saved: the bundle's record (a plain checkpoint: full)
            rec = ((meta.get("extra") or {}).get(_KEY) or {}) if isinstance(meta, dict) else {}
            return saved_precision(rec.get("precision") if isinstance(rec, dict) else None)
    step, arrays, extra = checkpoint.load_bundle(spath, precision=precision)
    arrays = dict(arrays or {})
    meta = (extra or {}).get(_KEY)
    if meta is None:
        if arrays:
            raise ValueError(f"bundle {spath!r}: extra arrays {sorted(arrays)} without bundle metadata")
        return SavedModel(step, {}, {}, spath, plain=True)
    if not isinstance(meta, dict):
        raise ValueError(f"bundle {spath!r}: metadata is not an object")
    try:
        _check_bundle(meta, arrays, step)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bundle {spath!r}: {e}") from None
    return SavedModel(step, meta, arrays, spath, plain=False)
