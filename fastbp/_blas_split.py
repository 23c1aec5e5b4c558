"""Is a product cut into blocks the same, bit for bit, as one BLAS call?

A step on numba's threads (:func:`fastbp._executor.step_threads`) cuts each
large product into one block of rows (or of columns) per numba thread, each
block one BLAS call on one BLAS thread (:func:`fastbp.kernels.gemm._blas_mm_split`).
Its results are independent of numba's thread count only where the BLAS
computes every element of a block exactly as it computes that element in the
whole call.  OpenBLAS's SkylakeX and later kernels (AVX-512) do; its Haswell
kernels (CPUs with AVX2 but no AVX-512) do not: 2 and 3 blocks of a
1031 x 64 x 65 product differ from the whole one in thousands of elements
(float32 and float64), also with block edges at multiples of 64 rows or
columns.  :func:`split_exact` measures it on the running CPU and BLAS.
"""
import numpy as np

from . import _blas

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
        :data:`SHAPES` with each operand transposed and not; ``False`` without
        a BLAS, and for dtypes other than float32 and float64.  Where it is
        ``False``, a step on numba's threads (``step.threads``) may differ in
        the last bits between numba thread counts (README, "Threading design").
    """
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)) or not _blas.AVAILABLE:
        return False
    if dt not in _CACHE:
        _CACHE[dt] = _measure(dt)
    return _CACHE[dt]


def _measure(dt):
    from .kernels.gemm import _blas_mm
    rng = np.random.default_rng(20261204)
    with _blas.THREADS_LOCK:
        before = int(_blas._backend.get_threads())
        _blas._backend.set_threads(1)
        try:
            for (m, k, n) in SHAPES:
                for ta in (False, True):
                    tb = ta
                    A = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
                    B = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
                    whole = np.zeros((m, n), dt)
                    _blas_mm(A, B, whole, ta, tb, False)
                    for rows in (True, False):
                        for nblk in (2, 3):
                            got = np.zeros((m, n), dt)
                            for lo, hi in _blocks(m if rows else n, nblk):
                                if rows:
                                    a = np.ascontiguousarray(A[:, lo:hi] if ta else A[lo:hi])
                                    c = np.zeros((hi - lo, n), dt)
                                    _blas_mm(a, B, c, ta, tb, False)
                                    got[lo:hi] = c
                                else:
                                    b = np.ascontiguousarray(B[lo:hi] if tb else B[:, lo:hi])
                                    c = np.zeros((m, hi - lo), dt)
                                    _blas_mm(A, b, c, ta, tb, False)
                                    got[:, lo:hi] = c
                            if got.tobytes() != whole.tobytes():
                                return False
        finally:
            _blas._backend.set_threads(before)
    return True
