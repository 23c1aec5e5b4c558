"""Datasets for the ``fastbp`` command line: the bundled digits, user files, splits, scaling.

Reading and fitting are done by the field's libraries, imported lazily from
the ``examples`` extra: pandas (:func:`pandas.read_csv`: delimiters, quoting,
byte-order marks) and scikit-learn (:func:`~sklearn.model_selection.train_test_split`
with ``stratify``, :class:`~sklearn.preprocessing.StandardScaler`,
:class:`~sklearn.preprocessing.LabelEncoder`).  What fastbp adds on top:

* a careful header decision: the first row is a header iff one of its cells
  is not a number while the same column holds numbers below it (or the
  caller says so, or it names the requested label column);
* one-line errors that name the file, the 1-based line and the column of a
  missing value, a non-numeric or non-finite feature, an empty label, a
  short row;
* scaling that does not overflow for features near the float64 limits, and
  whose fitted state is two plain float64 arrays (``mean_``, ``scale_``);
* ``.npz`` files (arrays ``X``, ``y``, optional ``feature_names``) and the
  digits default.

A training dataset is a :class:`Dataset`: ``X`` a float64 array
``(n_samples, n_features)``, ``labels`` the raw label column (strings from a
CSV file, the array ``y`` of an ``.npz``), the feature and label names.
"""
from __future__ import annotations

import decimal as _decimal
import re as _re

import numpy as _np

from ._tables import (_NA, DataError, _Table, _check_path, _column_names, _delimiter, _feature_names,
                      _first_repeat, _import, _load_npz, _py, _resolve_label, _to_numbers, _where,
                      strip_cells)
from ._splits import Standardizer, stratified_split

__all__ = [
    "DataError",
    "Dataset",
    "load_digits",
    "load_file",
    "read_dataset",
    "read_features",
    "encode_labels",
    "regression_targets",
    "stratified_split",
    "Standardizer",
]


def __dir__():
    # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)

_EXTRA = "install it with: pip install -e '.[examples]' in the fastbp clone"


def load_digits():
    """The handwritten digits bundled with scikit-learn.

    Returns
    -------
    X : ndarray of float64, shape (1797, 64)
        8x8 images flattened, pixel values 0..16.
    y : ndarray of int64, shape (1797,)
        Digit 0..9.
    classes : ndarray of int64, shape (10,)
        ``arange(10)``.
    """
    ds = _digits_module().load_digits()
    X = _np.ascontiguousarray(ds.data, dtype=_np.float64)
    y, classes = encode_labels(ds.target, "digits target")
    return X, y, classes


def _digits_module():
    try:
        import sklearn.datasets
    except ImportError:
        raise ImportError("the digits dataset ships with scikit-learn, which is not installed; "
                          f"{_EXTRA} (or pass --data PATH)") from None
    return sklearn.datasets


# ------------------------------------------------------------------ labels
def encode_labels(labels, what="y", lines=None):
    """Class labels to int64 indices ``0..n_classes-1`` in sorted label order.

    Parameters
    ----------
    labels : array_like, shape (n_samples,)
        Integer, float (integral values) or string labels.  Strings that all
        parse as numbers (a CSV label column) are treated as numbers: as
        int64 when every one is written as an integer (so that integers
        beyond float64's 2**53 stay distinct), else as float64.
    what : str
        Name used in error messages.
    lines : ndarray of int, shape (n_samples,), optional
        1-based line of each sample in its file, for error messages.

    Returns
    -------
    y : ndarray of int64, shape (n_samples,)
    classes : ndarray, shape (n_classes,)
        The sorted distinct labels (scikit-learn's ``LabelEncoder.classes_``);
        ``classes[y]`` gives the labels back.
    """
    labels = _np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{what} must be a 1-D array of class labels, got shape {labels.shape}")
    if labels.shape[0] == 0:
        raise DataError(f"{what} is empty: need at least one sample")
    kind = labels.dtype.kind
    if kind == "O" and not all(isinstance(v, str) for v in labels):
        try:
            labels = labels.astype(str)
        except (TypeError, ValueError):
            raise DataError(f"{what} has labels of unsupported type {labels.dtype}") from None
        kind = "U"
    if kind in "OUS":
        labels = strip_cells(labels.astype(str) if kind == "S" else labels)
        empty = _np.flatnonzero(labels == "")
        if empty.size:
            raise DataError(f"{what}: empty label {_where(empty[0], lines)}")
        ints = _integer_labels(labels, what, lines)
        if ints is not None:
            labels, kind = ints, ints.dtype.kind
        else:
            num = _to_numbers(labels)
            if not _np.isnan(num).any():
                # numbers: integral ones ('1.0', '1e3') exactly, not through float64, where
                # '9007199254740993' beside a '1.0' became 2**53 and merged with that class
                exact = [exact_label(t, v) for t, v in zip(labels.tolist(), num.tolist())]
                frac = next((i for i, v in enumerate(exact) if not isinstance(v, int) and _np.isfinite(v)), None)
                if frac is not None:        # ('9007199254740993.5' is an integer in float64)
                    raise DataError(_non_integer(what, labels[frac], frac, lines))
                if all(isinstance(v, int) for v in exact):
                    labels = _int_array(exact, labels, what, lines)
                    kind = labels.dtype.kind
                else:
                    labels, kind = num, "f"
    if kind == "f":
        if not _np.all(_np.isfinite(labels)):
            i = int(_np.flatnonzero(~_np.isfinite(labels))[0])
            raise DataError(f"{what} contains NaN or infinite labels ({labels[i].item()} {_where(i, lines)})")
        frac = _np.flatnonzero(labels != _np.round(labels))
        if frac.size:
            raise DataError(_non_integer(what, labels[frac[0]].item(), frac[0], lines))
        if _np.all(_np.abs(labels) < 2.0 ** 53):
            labels = labels.astype(_np.int64)
    elif kind == "b":
        labels = labels.astype(_np.int64)
    elif kind not in "iuOUS":
        raise DataError(f"{what} has labels of unsupported dtype {labels.dtype}")
    le = _import("sklearn.preprocessing", "class labels are encoded by scikit-learn").LabelEncoder()
    y = le.fit_transform(labels)
    return _np.ascontiguousarray(y, dtype=_np.int64), le.classes_


_INTEGER = _re.compile(r"[-+]?[0-9]+")


def _non_integer(what, value, i, lines):
    return (f"{what} contains non-integer values ({value!r} {_where(i, lines)}): "
            "class labels must be integers or strings (or train with --task regression)")


def exact_label(text, number):
    """The value of a label cell ``text`` that pandas reads as ``number`` (float64), exactly:
    a Python int where it is integral (``"7"``, ``"+7"``, ``"7.0"``, ``"7e3"``, and
    ``"9007199254740993"`` or ``"9007199254740993.0"`` without float64's rounding), else
    ``number`` (NaN where the cell is not a number)."""
    if _INTEGER.fullmatch(text):
        return int(text)
    if not _np.isfinite(number):
        return number
    try:
        d = _decimal.Decimal(text)
    except (_decimal.InvalidOperation, ValueError):
        return number
    return int(d) if d.is_finite() and d == d.to_integral_value() else number


def _integer_labels(text, what, lines):
    """String labels that are all written as integers (``"12"``, ``"-0"``, ``"+7"``) as int64, or
    float64 where some do not fit int64 but every one is exact in float64 (else DataError: two
    of them could become one class); None when some label is not an integer."""
    if not all(_INTEGER.fullmatch(t) for t in text):
        return None
    return _int_array([int(t) for t in text], text, what, lines)


def _int_array(ints, text, what, lines):
    """Python ints as int64, or float64 where some do not fit int64 but every one is exact in
    float64; DataError otherwise (two of them could become one class)."""
    if all(-2**63 <= v < 2**63 for v in ints):
        return _np.array(ints, dtype=_np.int64)
    for i, v in enumerate(ints):
        if float(v) != v:
            raise DataError(f"{what}: class label {text[i]} {_where(i, lines)} is an integer beyond int64 that "
                            "float64 cannot hold exactly either (labels would merge): use shorter labels")
    return _np.array(ints, dtype=_np.float64)


def regression_targets(labels, what="y", lines=None):
    """Numeric regression targets.

    Parameters
    ----------
    labels : array-like, shape (n_samples,) or (n_samples, 1)
        Numbers, or strings (a CSV label column) parsed as numbers.
    what : str, default "y"
        Their name in errors.
    lines : ndarray of int64, shape (n_samples,), optional
        The file line of each (named in errors).

    Returns
    -------
    ndarray of float64, shape (n_samples,)

    Raises
    ------
    DataError
        An empty, missing, non-numeric or non-finite target (naming its line).
    """
    labels = _np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise DataError(f"{what} must be a non-empty 1-D array of targets, got shape {labels.shape}")
    if labels.dtype.kind in "OUS":
        text = strip_cells(labels.astype(str) if labels.dtype.kind == "S" else labels)
        y = _to_numbers(text)
        bad = _np.flatnonzero(~_np.isfinite(y))
        if bad.size:
            i = int(bad[0])
            if text[i] == "" or text[i].lower() in _NA:
                raise DataError(f"{what}: missing target {_where(i, lines)}")
            raise DataError(f"{what}: target {str(text[i])!r} {_where(i, lines)} is not a finite number "
                            "(--task regression needs numeric targets)")
        return y
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{what} has targets of unsupported dtype {labels.dtype}")
    y = labels.astype(_np.float64)
    bad = _np.flatnonzero(~_np.isfinite(y))
    if bad.size:
        raise DataError(f"{what} contains NaN or infinite targets ({_where(bad[0], lines)})")
    return y



class Dataset:
    """A data file read for training or prediction (made by :func:`read_dataset`).

    Parameters
    ----------
    path, X, labels, feature_names, label_name, label_index, n_columns, lines, has_header, header_note
        The attributes below.

    Attributes
    ----------
    path : str
    X : ndarray of float64, shape (n_samples, n_features)
        Finite feature values, C-contiguous.
    labels : ndarray, shape (n_samples,), or None
        The raw label column (strings from a CSV file), None when the file
        has no label column (prediction input).
    feature_names : list of str or None
        From the CSV header (an empty name is ``column j``, its 0-based
        index), or an ``.npz`` member ``feature_names``.
    label_name : str or None
    label_index : int or None
        0-based column of the label in the file.
    n_columns : int
        Columns of the file (features plus the label, if any).
    lines : ndarray of int64, shape (n_samples,), or None
        1-based line of each sample in a CSV file (None for ``.npz``).
    has_header : bool
    header_note : str or None
        A note for the user when the header was decided from the cells of
        a first row that holds numbers (it may be a data row with a typo,
        which is then dropped); None otherwise.
    """

    def __init__(self, path, X, labels, feature_names, label_name, label_index, n_columns,
                 lines, has_header, header_note=None):
        self.path, self.X, self.labels = path, X, labels
        self.feature_names, self.label_name, self.label_index = feature_names, label_name, label_index
        self.n_columns, self.lines, self.has_header = n_columns, lines, has_header
        self.header_note = header_note


def read_dataset(path, label_column=None, delimiter=None, header=None):
    """Read a training file: features and a label column.

    Parameters
    ----------
    path : str or os.PathLike
        ``.csv`` (``.tsv``: tab-delimited) or ``.npz`` with arrays ``X``
        ``(n_samples, n_features)`` and ``y`` ``(n_samples,)`` (and optionally
        ``feature_names``, distinct strings).  An ``.npz``'s 1-D ``X`` is one feature;
        one of more dimensions, ``(n_samples, ...)`` (images), is flattened per
        sample in C order.
    label_column : str or int, optional
        CSV only: the label column, by header name or 0-based index
        (negative counts from the end); default the last column.
    delimiter : str, optional
        CSV only: one character, or ``'tab'``; default ``','`` (tab for ``.tsv``).
    header : bool, optional
        CSV only: whether the first non-blank line is a header.  Default:
        decided from the file (a cell that is not a number above a column
        of numbers), or True when ``label_column`` names a first-row cell.

    Returns
    -------
    Dataset
        With finite float64 features and the raw labels (validated by
        :func:`encode_labels` or :func:`regression_targets`).

    Raises
    ------
    DataError
        A missing, unreadable or malformed file, a missing or non-numeric
        feature, an empty label (one line naming the file, line and column).
    ImportError
        pandas (for CSV files) is not installed.
    """
    path, ext = _check_path(path)
    if ext == ".npz":
        if label_column is not None or delimiter is not None or header is not None:
            raise DataError(f"{path}: the label column, delimiter and header options apply to CSV "
                            "files (an .npz holds arrays X and y)")
        X, y, fn = _load_npz(path, need_y=True)
        y = _np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"{path}: y must be a 1-D array of labels, got shape {y.shape}")
        if y.shape[0] != X.shape[0]:
            raise DataError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]} labels")
        return Dataset(path, X, y, fn, None, None, X.shape[1] + 1, None, False)
    t = _Table(path, _delimiter(delimiter, ext), header, label_column, None)
    if t.width < 2:
        raise DataError(f"{path}: each CSV row needs at least 2 columns (features..., label), "
                        f"found 1{t.delimiter_hint()}")
    try:
        lab = _resolve_label(label_column, t.names, t.width, path)
        cols = [j for j in range(t.width) if j != lab]
        fn = _feature_names(t.names, cols, path)
        X = t.features(cols)
        labels = t.labels(lab)
    except DataError as e:
        if t.header_note is None:
            raise
        # the header was a guess that may be the cause (a data row with a typo): say so
        raise DataError(f"{e}; note: {t.header_note.split(': ', 1)[1]}") from None
    name = _column_names(t.names)[lab] if t.names is not None else None
    if name is not None and name in fn:
        # the model could not tell them apart when it reads a file by name (predict, evaluate)
        raise DataError(f"{path}: the label column and a feature column are both named {name!r}; "
                        "column names must differ")
    return Dataset(path, X, labels, fn, name, lab, t.width, t.lines, t.has_header, t.header_note)


def read_features(path, n_features, feature_names=None, label_name=None, label_index=None,
                  delimiter=None, header=None):
    """Read new data for a trained model: its feature columns, and the label column if present.

    Columns are matched to the model by name when the file has a header and
    the model knows its feature names (order free; an empty header cell is
    named ``column j`` as in :func:`read_dataset`; the label column, if
    present, is returned apart; any other column is an error); otherwise by
    count: ``n_features`` columns (no label) or ``n_features + 1`` (the label
    at ``label_index``, default the last column).

    Parameters
    ----------
    path : str or os.PathLike
        ``.csv``/``.tsv``, or ``.npz`` with ``X`` (``y`` optional).
    n_features : int
    feature_names : list of str, optional
    label_name : str, optional
    label_index : int, optional
        0-based column of the label in the training file.
    delimiter, header
        As in :func:`read_dataset`.

    Returns
    -------
    Dataset
        ``X`` in the model's feature order, ``labels`` None if the file has
        no label column.
    """
    path, ext = _check_path(path)
    if ext == ".npz":
        if delimiter is not None or header is not None:
            raise DataError(f"{path}: the delimiter and header options apply to CSV files (an .npz "
                            "holds arrays X and y)")
        X, y, fn = _load_npz(path, need_y=False)
        if X.shape[1] != n_features:
            raise DataError(f"{path}: X has {X.shape[1]} features, the model expects {n_features}")
        if fn is not None and feature_names is not None and list(fn) != list(feature_names):
            raise DataError(f"{path}: feature_names {fn} differ from the model's {list(feature_names)}")
        if y is not None:
            y = _np.asarray(y)
            if y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.ndim != 1 or y.shape[0] != X.shape[0]:
                raise DataError(f"{path}: y must hold one label per row of X ({X.shape[0]}), got shape {y.shape}")
        return Dataset(path, X, y, feature_names, label_name, None, X.shape[1], None, False)
    t = _Table(path, _delimiter(delimiter, ext), header, None, feature_names)
    lab = None
    if t.names is not None and feature_names is not None:
        twice = _first_repeat(list(feature_names))
        if twice is not None:
            raise DataError(f"{path}: the model names the feature {twice!r} twice: the file's columns "
                            "cannot be matched to its features by name")
        names = _column_names(t.names)
        where = {n: j for j, n in enumerate(names)}
        if label_name == "" and label_index is not None:      # saved before empty names were named
            label_name = f"column {int(label_index)}"
        missing = [n for n in feature_names if n not in where]
        if missing:
            raise DataError(f"{path}: missing feature column(s) {', '.join(map(repr, missing))} "
                            f"(the model's features: {', '.join(feature_names)})")
        lab = where.get(label_name) if label_name is not None else None
        extra = [n for j, n in enumerate(names) if n not in feature_names and j != lab]
        if label_name is None and len(extra) == 1:
            # a model that knows its features' names but not its label's (an estimator's save, an
            # .npz's feature_names): the one other column is the label, as when matched by count
            lab, extra = where[extra[0]], []
        if extra:
            raise DataError(f"{path}: column(s) {', '.join(map(repr, extra))} are not features of the "
                            f"model (its features: {', '.join(feature_names)}"
                            f"{f'; label {label_name!r}' if label_name else ''})")
        if len(where) != t.width:
            raise DataError(f"{path}: the header names a column twice")
        cols = [where[n] for n in feature_names]
    else:
        if t.width == n_features:
            cols = list(range(t.width))
        elif t.width == n_features + 1:
            lab = t.width - 1 if label_index is None else int(label_index)
            if not 0 <= lab < t.width:
                lab = t.width - 1
            cols = [j for j in range(t.width) if j != lab]
        else:
            raise DataError(f"{path}: {t.width} columns, the model expects {n_features} features "
                            f"(plus, optionally, the label column){t.delimiter_hint()}")
    X = t.features(cols)
    labels = t.cells[:, lab].copy() if lab is not None else None
    return Dataset(path, X, labels, feature_names, label_name, lab, t.width, t.lines, t.has_header,
                   t.header_note)


def load_file(path, label_column=None, delimiter=None, header=None):
    """Load a classification dataset: ``(X, y, classes)``.

    The :func:`read_dataset` file followed by :func:`encode_labels`; the
    last column of a CSV file is the label unless ``label_column`` says
    otherwise.

    Parameters
    ----------
    path, label_column, delimiter, header
        As :func:`read_dataset`'s.

    Returns
    -------
    X : ndarray of float64, shape (n_samples, n_features)
    y : ndarray of int64, shape (n_samples,)
        Class indices into ``classes``.
    classes : ndarray, shape (n_classes,)

    Raises
    ------
    DataError
        The file is missing, unreadable, of an unknown type, or its content is
        not a usable classification dataset (one-line message).
    """
    ds = read_dataset(path, label_column, delimiter, header)
    y, classes = encode_labels(ds.labels, f"{ds.path}: y" if ds.lines is None else ds.path, ds.lines)
    if classes.shape[0] < 2:
        raise DataError(f"{ds.path}: y has a single class ({_py(classes[0])!r}); need at least 2 to train "
                        "a classifier")
    return ds.X, y, classes
