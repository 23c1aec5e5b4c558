"""Sparse input of the estimators, densified a chunk of rows at a time.

The compiled step reads dense rows.  A scipy sparse ``X`` stays sparse (CSR, in
the estimator's dtype) inside :class:`SparseRows`, whose row selections
(``X[idx]``, ``X[lo:hi]``) are dense arrays: training densifies the rows of
one chunk of minibatches at a time (:func:`fastbp._estimator_fit.ordered_epoch`),
``solver='lbfgs'`` and the sample-weighted epochs one minibatch at a time, and
prediction a chunk of rows at a time (:func:`predict_rows`), so the dense copy
is never the whole matrix (scikit-learn's MLP multiplies the sparse matrix
itself).

Imported by :mod:`fastbp._estimator_base` only.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SparseRows", "as_array", "as_rows", "chunk_rows", "predict_rows", "sparse_matrix", "unwrap"]

#: values (rows x features) densified at once when a sparse X is predicted or trained on
CHUNK_VALUES = 1 << 22


def chunk_rows(n_features, multiple=1):
    """Rows of one densified chunk: about :data:`CHUNK_VALUES` values, a multiple of
    ``multiple`` (whole minibatches), at least ``multiple``."""
    return max(1, CHUNK_VALUES // max(1, multiple * n_features)) * multiple


class SparseRows:
    """A CSR matrix whose row selections are dense C-contiguous arrays.

    Parameters
    ----------
    csr : scipy.sparse.csr_matrix or csr_array
        Of the estimator's dtype, finite.
    """

    def __init__(self, csr):
        self.csr = csr
        self.shape = csr.shape
        self.dtype = csr.dtype
        self.ndim = 2

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        """The dense rows ``rows`` (a slice or an index array), shape ``(k, n_features)``."""
        return np.ascontiguousarray(self.csr[rows].toarray())


def sparse_matrix(X):
    """Whether ``X`` is a scipy sparse matrix or array."""
    return hasattr(X, "toarray") and hasattr(X, "tocsr")


def as_rows(X):
    """``X`` (a row selection of the estimator's data: an array, or a sparse matrix, such as
    :func:`sklearn.model_selection.train_test_split`'s parts) as training reads it:
    C-contiguous rows, or :class:`SparseRows`."""
    if isinstance(X, SparseRows):
        return X
    if sparse_matrix(X):
        return SparseRows(X.tocsr())
    return np.ascontiguousarray(X)


def unwrap(X):
    """The matrix to split or index with scikit-learn's tools: the CSR matrix of a
    :class:`SparseRows`, anything else as it is."""
    return X.csr if isinstance(X, SparseRows) else X


def as_array(X, dtype):
    """The estimator's view of validated, finite ``X``: C-contiguous of ``dtype``, or for a
    sparse matrix a :class:`SparseRows` of its CSR form in ``dtype``.

    Raises
    ------
    ValueError
        A value beyond ``dtype``'s range (finite in X's own dtype), naming its row and
        column and the ``dtype='float64'`` way out.
    """
    if isinstance(X, SparseRows):
        return X
    if sparse_matrix(X):
        csr = X.tocsr()
        if not csr.has_canonical_format:    # duplicates summed first (on a copy): the value reported is theirs
            csr = csr.copy()
            csr.sum_duplicates()
        with np.errstate(over="ignore"):
            out = csr.astype(dtype)
        bad = np.flatnonzero(~np.isfinite(out.data)) if out.dtype != np.float64 else ()
        if len(bad):
            k = int(bad[0])
            i, j = int(np.searchsorted(csr.indptr, k, side="right")) - 1, int(csr.indices[k])
            _too_large(out.dtype, float(csr.data[k]), i, j)
        return SparseRows(out)
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(X, dtype=dtype)
    if out.dtype != np.float64 and not np.isfinite(out).all():    # X was checked finite
        i, j = (int(v) for v in np.argwhere(~np.isfinite(out))[0])
        _too_large(out.dtype, float(np.asarray(X)[i, j]), i, j)
    return out


def _too_large(dtype, value, i, j):
    raise ValueError(f"X has a value too large for {dtype} ({value!r} at row {i}, column {j}), the "
                     f"estimator's dtype: pass dtype='float64'")


def predict_rows(step, X):
    """``step.predict`` of every row of ``X``; a :class:`SparseRows` a chunk at a time."""
    if not isinstance(X, SparseRows):
        return np.asarray(step.predict(X))
    per = chunk_rows(X.shape[1])
    if X.shape[0] == 0:
        return np.asarray(step.predict(X[0:0]))
    return np.concatenate([np.asarray(step.predict(X[lo:lo + per])) for lo in range(0, X.shape[0], per)])
