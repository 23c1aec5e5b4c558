"""The split of a dataset into training and test samples, and feature standardisation:
scikit-learn's ``train_test_split`` and ``StandardScaler`` behind fastbp's checks and messages
(re-exported by :mod:`fastbp.data`, where users import them from)."""
from __future__ import annotations

import numpy as _np

from . import _scalars
from . import _validate as _V
from ._tables import DataError, _import, _one_line, _py, _where


def stratified_split(y, test_size=0.2, seed=0, lines=None, stratify=True, classes=None):
    """Seeded train/test split of sample indices: scikit-learn's ``train_test_split``.

    Parameters
    ----------
    y : ndarray of int, shape (n_samples,)
        Class indices (or regression targets with ``stratify=False``).
    test_size : float
        Fraction of the samples put in the test set, in (0, 1).
    seed : int
        ``random_state`` of the split; the same seed gives the same split.
    lines : ndarray of int, optional
        1-based file line of each sample, for error messages.
    stratify : bool
        Keep the class proportions in both parts (classification).
    classes : ndarray, optional
        The label of each class index, for error messages.

    Returns
    -------
    train_idx, test_idx : ndarray of int64
        Disjoint sorted index arrays covering ``0..n_samples-1``.

    Raises
    ------
    TypeError
        ``test_size`` or ``seed`` not a number; ``y`` not integer class indices where ``stratify``.
    ValueError
        ``test_size`` outside (0, 1), a seed outside scikit-learn's range, ``y`` not one-dimensional
        or holding a negative class index.
    DataError
        A class with a single sample, or too few samples to split.
    """
    test_size = _scalars.real("test_size", test_size, "stratified_split")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    seed = _V.seed(seed, max_value=_V.RANDOM_STATE_MAX)       # scikit-learn's random_state range
    ms = _import("sklearn.model_selection", "splitting the data uses scikit-learn")
    y = _np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"stratified_split: y must be one-dimensional (n_samples,), got shape {y.shape}")
    n = y.shape[0]
    if stratify:
        if y.dtype.kind not in "iu":
            raise TypeError(f"stratified_split: y must hold integer class indices to stratify by "
                            f"(data.encode_labels makes them), got dtype {y.dtype}")
        if n and int(y.min()) < 0:
            raise ValueError(f"stratified_split: y must hold class indices >= 0, got {int(y.min())}")
        counts = _np.bincount(y)
        single = _np.flatnonzero(counts == 1)
        if single.size:
            i = int(_np.flatnonzero(y == single[0])[0])
            hint = (" (if that line is a header, pass --header)"
                    if lines is not None and i == 0 and int(lines[0]) == 1 else "")     # the file's first line
            name = repr(_py(classes[single[0]])) if classes is not None else int(single[0])
            raise DataError(f"class {name} has a single sample ({_where(i, lines)}); every "
                            f"class needs at least 2 samples to hold out a test set{hint}")
    try:
        tr, te = ms.train_test_split(_np.arange(n), test_size=test_size, random_state=seed,
                                     stratify=y if stratify else None)
    except ValueError as e:
        raise DataError(f"the dataset is too small to split ({n} samples, --test-size {test_size}): "
                        f"{_one_line(e)}") from None
    return _np.sort(tr).astype(_np.int64), _np.sort(te).astype(_np.int64)


class Standardizer:
    """Per-feature standardisation ``(X - mean_) / scale_``: scikit-learn's
    ``StandardScaler``, fitted without overflow, stored as two plain arrays.

    Each column is first divided by a power of two near its largest
    magnitude (exact), so features near the float64 limits (1e300) neither
    overflow the variance nor collapse to zero.  Constant features get
    ``scale_ = 1`` (only centred).

    Attributes
    ----------
    mean_, scale_ : ndarray of float64, shape (n_features,)

    Parameters
    ----------
    mean, scale : array-like of shape (n_features,), optional
        A fitted scaler's ``mean_`` and ``scale_`` (a checkpoint's); default: unfitted.
    """

    def __init__(self, mean=None, scale=None):
        if (mean is None) != (scale is None):
            raise ValueError("Standardizer: mean and scale are given together (a fitted scaler's "
                             "mean_ and scale_), or neither")
        if mean is not None:
            self.mean_ = _np.ascontiguousarray(mean, dtype=_np.float64)
            self.scale_ = _np.ascontiguousarray(scale, dtype=_np.float64)
            if self.mean_.ndim != 1 or self.scale_.shape != self.mean_.shape:
                raise ValueError(f"Standardizer: mean and scale must be of shape (n_features,), got "
                                 f"{self.mean_.shape} and {self.scale_.shape}")

    def fit(self, X):
        """Learn each column's mean and standard deviation.

        Parameters
        ----------
        X : array-like, shape (n, d)

        Returns
        -------
        Standardizer
            self.

        Raises
        ------
        ValueError
            ``X`` not two-dimensional, or without a sample.
        """
        pre = _import("sklearn.preprocessing", "feature scaling uses scikit-learn")
        X = _np.asarray(X, dtype=_np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"Standardizer.fit: X must be of shape (n_samples, n_features) with at least "
                             f"one sample, got shape {X.shape}")
        p = _pow2_below(_np.max(_np.abs(X), axis=0))
        sc = pre.StandardScaler().fit(X / p)
        self.mean_ = sc.mean_ * p
        self.scale_ = sc.scale_ * p
        # constant (scikit-learn's rule, on X / p: its scale_ is 1 where sqrt(var_) is not) or equal
        const = ((sc.scale_ == 1.0) & (_np.sqrt(sc.var_) != 1.0)) | _np.all(X == X[:1], axis=0)
        self.scale_[const] = 1.0        # only centred
        return self

    def transform(self, X, dtype=_np.float64, names=None):
        """``(X - mean_) / scale_``.

        Parameters
        ----------
        X : array-like, shape (n, d)
        dtype : numpy dtype, default float64
        names : sequence of str, optional
            The features' names, for errors.

        Returns
        -------
        ndarray of ``dtype``, shape (n, d), C-contiguous

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Neither fitted nor given ``mean`` and ``scale`` (a ValueError and an AttributeError).
        ValueError
            ``X`` not of shape ``(n, n_features)``.
        DataError
            A result is not finite in ``dtype`` (naming the feature: ``names[j]`` or its index).
        """
        if not hasattr(self, "mean_"):
            exc = _import("sklearn.exceptions", "feature scaling uses scikit-learn").NotFittedError
            raise exc("This Standardizer is not fitted yet: call fit first (or give mean and scale)")
        X = _np.asarray(X, dtype=_np.float64)
        if X.ndim != 2 or X.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"Standardizer.transform: X must be of shape (n_samples, {self.mean_.shape[0]}), "
                             f"got shape {X.shape}")
        p = _pow2_below(self.scale_)
        with _np.errstate(over="ignore", invalid="ignore", under="ignore"):
            Z = (X / p - self.mean_ / p) / (self.scale_ / p)
            out = _np.ascontiguousarray(Z, dtype=dtype)
        ok = _np.isfinite(out)
        if not ok.all():
            i, j = (int(v) for v in _np.argwhere(~ok)[0])
            name = repr(names[j]) if names is not None else str(j)
            raise DataError(f"feature {name} is not finite after scaling (value {float(X[i, j])!r} is "
                            f"{'far ' if _np.isfinite(Z[i, j]) else ''}outside the {_np.dtype(dtype).name} range "
                            f"at scale {self.scale_[j]:.3g})")
        return out


def _pow2_below(a):
    """The largest power of two <= ``a`` elementwise (1 where ``a`` is 0 or not finite)."""
    a = _np.asarray(a, dtype=_np.float64)
    good = _np.isfinite(a) & (a > 0)
    _, e = _np.frexp(_np.where(good, a, 1.0))
    return _np.where(good, _np.ldexp(1.0, e - 1), 1.0)



Standardizer.__module__ = stratified_split.__module__ = "fastbp.data"     # where users import them from
