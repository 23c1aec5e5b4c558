"""Is a product cut into blocks the same, bit for bit, as one BLAS call?

A step on numba's threads (:func:`fastbp._executor.step_threads`) cuts each
large product into :data:`fastbp.config.SPLIT_BLOCKS` blocks of rows (or of
columns), each block one BLAS call on one BLAS thread
(:func:`fastbp.kernels.gemm._blas_mm_split`).  The blocks do not depend on
numba's thread count, so neither do the results; whether they are also the
bits of one call over the whole product depends on the BLAS.  OpenBLAS's
SkylakeX and later kernels (AVX-512) give them; its Haswell kernels (CPUs with
AVX2 but no AVX-512) do not: 2 and 3 blocks of a 1031 x 64 x 65 product differ
from the whole one in thousands of elements (float32 and float64), also with
block edges at multiples of 64 rows or columns.  :func:`split_exact` measures
it on the running CPU and BLAS.
"""
import itertools

import numpy as np

from . import _blas
from .kernels.gemm import _blas_mm

#: (m, k, n) of the probe: odd edges in both dimensions, each block over the BLAS's
#: small-product size (BLAS_THREADS_MIN_MACS), as the step's splits are
SHAPES = ((1031, 64, 65), (301, 190, 70), (40, 150, 601))
_CACHE = {}


def _blocks(dim, nblk):
    return [((t * dim) // nblk, ((t + 1) * dim) // nblk) for t in range(nblk)]


def split_exact(dtype):
    """Whether this process's BLAS gives a product's rows or columns, cut into 2
    or 3 blocks of one call each, the bits of the whole product's call.

    Parameters
    ----------
    dtype : numpy dtype or type
        float32 or float64.

    Returns
    -------
    bool
        Measured once per process and dtype, at one BLAS thread, on
        :data:`SHAPES` with both operands transposed and not; ``False`` without
        a BLAS, and for dtypes other than float32 and float64.  Where it is
        ``False``, a step on numba's threads (``step.threads``) computes its
        products in other bits than one call each would (the same at any numba
        thread count: README, "Threading design").
    """
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)) or not _blas.AVAILABLE:
        return False
    if dt not in _CACHE:
        _CACHE[dt] = _measure(dt)
    return _CACHE[dt]


def _blocked(A, B, t, rows, nblk, dt):
    """``op(A) @ op(B)`` (``op`` transposes both where ``t``) as ``nblk`` calls, one per block
    of its rows (``rows``) or of its columns."""
    m = A.shape[1] if t else A.shape[0]
    n = B.shape[0] if t else B.shape[1]
    got = np.zeros((m, n), dt)
    for lo, hi in _blocks(m if rows else n, nblk):
        if rows:
            a, b, out = np.ascontiguousarray(A[:, lo:hi] if t else A[lo:hi]), B, got[lo:hi]
        else:
            a, b, out = A, np.ascontiguousarray(B[lo:hi] if t else B[:, lo:hi]), got[:, lo:hi]
        c = np.zeros(out.shape, dt)
        _blas_mm(a, b, c, t, t, False)
        out[...] = c
    return got


def _measure(dt):
    rng = np.random.default_rng(20261204)
    with _blas.THREADS_LOCK:
        before = int(_blas._backend.get_threads())
        _blas._backend.set_threads(1)
        try:
            for (m, k, n), t in itertools.product(SHAPES, (False, True)):
                A = rng.standard_normal((k, m) if t else (m, k)).astype(dt)
                B = rng.standard_normal((n, k) if t else (k, n)).astype(dt)
                whole = np.zeros((m, n), dt)
                _blas_mm(A, B, whole, t, t, False)
                for rows, nblk in itertools.product((True, False), (2, 3)):
                    if _blocked(A, B, t, rows, nblk, dt).tobytes() != whole.tobytes():
                        return False
        finally:
            _blas._backend.set_threads(before)
    return True
