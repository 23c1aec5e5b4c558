"""Matrix-product kernels: own loops for small products, BLAS for large ones.

Three loop kernels cover every product backpropagation needs without ever
forming a transposed copy (all operands C-contiguous, row-major):

* ``_mm_nn``: ``C = A @ B``      (forward ``X W``; ``dX = dZ W`` for a
  weight stored transposed),
* ``_mm_nt``: ``C = A @ B.T``    (``dX = dZ W^T``),
* ``_mm_tn``: ``C = A.T @ B``    (``dW = X^T dZ``).

Each parallelises over rows of ``C`` only; the reduction over ``k`` runs in
one fixed order inside one thread, so results are bitwise identical at any
thread count.  ``acc`` selects ``C = ...`` (False) or ``C += ...`` (True):
a value used twice receives the sum of its gradients.

``_blas_mm`` computes the same products through the CBLAS ``gemm`` of the
backend :mod:`fastbp._blas` chose (MKL or OpenBLAS), with the transposes
passed as flags; it allocates nothing.
"""
import numpy as np
from numba import prange, types

from .. import _blas
from ..config import BLAS_THREADS_MIN_MACS, SPLIT_BLOCKS
from .._jit import TILE, call_fnptr4, jit, kernel, parallel_jit, stack_tile


@jit
def _gemm_rows(A, B, C, i0, nr, ta, b, acc, overread):
    """Rows ``i0 .. i0+nr-1`` (``nr`` <= 4) of ``C (+)= op(A) @ B + b``.

    ``op(A)`` is ``A`` (``ta`` False, ``A (m, k)``) or ``A.T`` (``ta`` True,
    ``A (k, m)``); ``B (k, n)``.  The 4 x 16 block of ``C`` being computed
    lives in a stack tile that cannot alias the operands and is only ever
    indexed by constants (every loop over it has a fixed trip count), so
    LLVM keeps it in vector registers across the whole ``k`` loop: one load
    of ``B`` feeds four FMAs.  The bias is added to the stored block right
    after, while it is still in L1 (an activation, by the caller: see
    :mod:`fastbp.kernels.activations`).  ``overread`` lets a 16-column block read past
    the last column of ``B`` (arena buffers only: they have slack after
    them); otherwise partial blocks take the narrow path.  ``b`` of length 0
    means no bias.
    """
    K = B.shape[0]
    N = B.shape[1]
    zero = C.dtype.type(0.0)
    # while loops, not range(0, N, 16): a stepped range defeats LLVM's
    # promotion of the tile to registers (measured: 2.5x slower)
    j0 = 0
    while j0 < N:
        nj = min(16, N - j0)
        if nr == 4 and (nj == 16 or overread):
            t = stack_tile(C.dtype)
            for q in range(TILE):
                t[q] = zero
            for k in range(K):
                if ta:
                    a0 = A[k, i0]
                    a1 = A[k, i0 + 1]
                    a2 = A[k, i0 + 2]
                    a3 = A[k, i0 + 3]
                else:
                    a0 = A[i0, k]
                    a1 = A[i0 + 1, k]
                    a2 = A[i0 + 2, k]
                    a3 = A[i0 + 3, k]
                for jj in range(16):
                    bj = B[k, j0 + jj]
                    t[jj] += a0 * bj
                    t[16 + jj] += a1 * bj
                    t[32 + jj] += a2 * bj
                    t[48 + jj] += a3 * bj
            # fixed trip counts and no calls here, or the tile leaves the registers
            for r in range(4):
                for jj in range(16):
                    if jj < nj:
                        if acc:
                            C[i0 + r, j0 + jj] += t[16 * r + jj]
                        else:
                            C[i0 + r, j0 + jj] = t[16 * r + jj]
        else:
            # narrow edge block: plain dot products (no second stack tile, which
            # LLVM would merge with the first and so keep out of registers)
            for r in range(nr):
                for jj in range(nj):
                    s = zero
                    for k in range(K):
                        s += (A[k, i0 + r] if ta else A[i0 + r, k]) * B[k, j0 + jj]
                    if acc:
                        C[i0 + r, j0 + jj] += s
                    else:
                        C[i0 + r, j0 + jj] = s
        if b.shape[0] > 0:
            for r in range(i0, i0 + nr):
                for jj in range(j0, j0 + nj):
                    C[r, jj] += b[jj]
        j0 += 16


@jit
def _mm_small(A, B, C, ta, tb, acc):
    """``C (+)= op(A) @ op(B)`` by plain dot products, for products too small
    to be worth a BLAS call (a few thousand multiply-adds); cheap to compile."""
    m, n = C.shape
    K = A.shape[0] if ta else A.shape[1]
    for i in range(m):
        for j in range(n):
            s = C.dtype.type(0.0)
            for k in range(K):
                s += (A[k, i] if ta else A[i, k]) * (B[j, k] if tb else B[k, j])
            if acc:
                C[i, j] += s
            else:
                C[i, j] = s


@kernel
def _mm_nn(A, B, C, acc):
    """``C (+)= A @ B`` with ``A (m, k)``, ``B (k, n)``, ``C (m, n)``.

    Parallel over blocks of four rows of ``C``; each block is a register-tiled
    product (``_gemm_rows``).
    """
    m = C.shape[0]
    nob = C[0, :0] if m > 0 else C.ravel()[:0]
    for blk in prange((m + 3) // 4):
        i0 = blk * 4
        _gemm_rows(A, B, C, i0, min(4, m - i0), False, nob, acc, False)


@kernel
def _mm_nt(A, B, C, acc):
    """``C (+)= A @ B.T`` with ``A (m, k)``, ``B (n, k)``, ``C (m, n)``.

    Each output is a dot product of two contiguous rows; four outputs share
    every load of ``A``.
    """
    m, K = A.shape
    N = B.shape[0]
    for i in prange(m):
        a = A[i]
        j = 0
        while j < N:
            if j + 4 <= N:
                b0 = B[j]
                b1 = B[j + 1]
                b2 = B[j + 2]
                b3 = B[j + 3]
                s0 = C.dtype.type(0.0)
                s1 = C.dtype.type(0.0)
                s2 = C.dtype.type(0.0)
                s3 = C.dtype.type(0.0)
                for k in range(K):
                    ak = a[k]
                    s0 += ak * b0[k]
                    s1 += ak * b1[k]
                    s2 += ak * b2[k]
                    s3 += ak * b3[k]
                if acc:
                    C[i, j] += s0
                    C[i, j + 1] += s1
                    C[i, j + 2] += s2
                    C[i, j + 3] += s3
                else:
                    C[i, j] = s0
                    C[i, j + 1] = s1
                    C[i, j + 2] = s2
                    C[i, j + 3] = s3
                j += 4
            else:
                b0 = B[j]
                s0 = C.dtype.type(0.0)
                for k in range(K):
                    s0 += a[k] * b0[k]
                if acc:
                    C[i, j] += s0
                else:
                    C[i, j] = s0
                j += 1


@kernel
def _mm_tn(A, B, C, acc):
    """``C (+)= A.T @ B`` with ``A (r, m)``, ``B (r, n)``, ``C (m, n)``.

    The reduction over ``r`` (the batch, for ``dW = X^T dZ``) runs inside
    one thread per block of four rows of ``C``: race-free and independent
    of the thread count.
    """
    m = C.shape[0]
    nob = C[0, :0] if m > 0 else C.ravel()[:0]
    for blk in prange((m + 3) // 4):
        i0 = blk * 4
        _gemm_rows(A, B, C, i0, min(4, m - i0), True, nob, acc, False)


# --------------------------------------------------------------------- BLAS
# The CBLAS gemm of the backend chosen in fastbp._blas, through fixed symbol
# names (cached code links to whichever library this process loaded).  ILP64
# signature: 64-bit integers, pointers passed as integers.
_i = types.int64
_cblas_sgemm = types.ExternalFunction(
    _blas.SGEMM_SYM, types.void(_i, _i, _i, _i, _i, _i, types.float32, types.uintp, _i,
                                types.uintp, _i, types.float32, types.uintp, _i))
_cblas_dgemm = types.ExternalFunction(
    _blas.DGEMM_SYM, types.void(_i, _i, _i, _i, _i, _i, types.float64, types.uintp, _i,
                                types.uintp, _i, types.float64, types.uintp, _i))
_cblas_saxpy = types.ExternalFunction(_blas.SAXPY_SYM, types.void(_i, types.float32, types.uintp, _i, types.uintp, _i))
_cblas_daxpy = types.ExternalFunction(_blas.DAXPY_SYM, types.void(_i, types.float64, types.uintp, _i, types.uintp, _i))
_cblas_sasum = types.ExternalFunction(_blas.SASUM_SYM, types.float32(_i, types.uintp, _i))
_cblas_dasum = types.ExternalFunction(_blas.DASUM_SYM, types.float64(_i, types.uintp, _i))
_blas_set_threads = types.ExternalFunction(_blas.SET_THREADS_SYM, types.void(types.intc))
_blas_get_threads = types.ExternalFunction(_blas.GET_THREADS_SYM, types.intc())
_jit_create_s = types.ExternalFunction(
    _blas.JIT_CREATE_SYMS[0], types.intc(types.uintp, types.intc, types.intc, types.intc, _i, _i, _i, types.float32,
                                         _i, _i, types.float32, _i))
_jit_create_d = types.ExternalFunction(
    _blas.JIT_CREATE_SYMS[1], types.intc(types.uintp, types.intc, types.intc, types.intc, _i, _i, _i, types.float64,
                                         _i, _i, types.float64, _i))
_jit_get_s = types.ExternalFunction(_blas.JIT_GET_SYMS[0], types.uintp(types.uintp))
_jit_get_d = types.ExternalFunction(_blas.JIT_GET_SYMS[1], types.uintp(types.uintp))
_ROW = _blas.ROW_MAJOR
_NT = _blas.NO_TRANS
_TR = _blas.TRANS

#: whether a BLAS is loaded (without one, callers use the loop kernels)
BLAS_AVAILABLE = _blas.AVAILABLE
#: whether the step can choose the number of BLAS threads per product
BLAS_THREAD_CONTROL = _blas.THREAD_CONTROL


@jit(inline=True)
def empty_product(C, k, acc):
    """Whether ``C (+)= op(A) @ op(B)`` with inner dimension ``k`` is done without a
    library call: ``C`` empty, or ``k == 0`` (``C`` zeroed unless ``acc``); a BLAS is
    not asked for those (some reject a zero leading dimension)."""
    if C.shape[0] == 0 or C.shape[1] == 0:
        return True
    if k == 0:
        if not acc:
            C[:, :] = 0
        return True
    return False


@jit(inline=True)
def _gemm_block(A, B, C, ta, tb, beta, r0, r1, c0, c1):
    """Rows ``r0:r1``, columns ``c0:c1`` of ``C = op(A) @ op(B) + beta C`` in one
    BLAS call on that block (a row block reads rows of ``op(A)``, a column block
    columns of ``op(B)``; the leading dimensions stay the whole arrays')."""
    k = A.shape[0] if ta else A.shape[1]
    isz = C.itemsize
    lda = A.shape[1]
    ldb = B.shape[1]
    n = C.shape[1]
    a = A.ctypes.data + (r0 if ta else r0 * lda) * isz
    b = B.ctypes.data + (c0 * ldb if tb else c0) * isz
    c = C.ctypes.data + (r0 * n + c0) * isz
    one = C.dtype.type(1.0)
    if isz == 4:    # float32 (both branches compile; the dead one is pruned)
        _cblas_sgemm(_ROW, _TR if ta else _NT, _TR if tb else _NT, r1 - r0, c1 - c0, k, one,
                     a, lda, b, ldb, C.dtype.type(beta), c, n)
    else:
        _cblas_dgemm(_ROW, _TR if ta else _NT, _TR if tb else _NT, r1 - r0, c1 - c0, k, one,
                     a, lda, b, ldb, C.dtype.type(beta), c, n)


@jit
def blas_axpy(alpha, x, y):
    """``y += alpha x`` through the BLAS's ``?axpy`` on its own threads (a
    product's threads, still awake after it), for contiguous 1-D ``x`` and
    ``y`` of one dtype (float32 or float64; ``alpha`` converted to it).  Only
    where :func:`fastbp._blas.axpy_exact` holds for the dtype."""
    if y.itemsize == 4:     # (both branches compile; the dead one is pruned)
        _cblas_saxpy(y.shape[0], np.float32(alpha), x.ctypes.data, 1, y.ctypes.data, 1)
    else:
        _cblas_daxpy(y.shape[0], np.float64(alpha), x.ctypes.data, 1, y.ctypes.data, 1)


@jit
def blas_asum(x):
    """``sum |x_i|`` (float64) through the BLAS's ``?asum`` on its own threads,
    for a contiguous 1-D float32 or float64 ``x``.  Only where
    :func:`fastbp._blas.asum_propagates` holds for the dtype: then a finite
    result proves every element finite."""
    if x.itemsize == 4:     # (both branches compile; the dead one is pruned)
        return np.float64(_cblas_sasum(x.shape[0], x.ctypes.data, 1))
    return np.float64(_cblas_dasum(x.shape[0], x.ctypes.data, 1))


@jit(python=True)      # (fastbp.ops calls it)
def _blas_mm(A, B, C, ta, tb, acc):
    """``C (+)= op(A) @ op(B)`` through the BLAS; ``op`` transposes when ``ta``/``tb``.

    All arrays C-contiguous and of one dtype (float32 or float64); the call
    allocates nothing.  Only valid when :data:`BLAS_AVAILABLE`.
    """
    k = A.shape[0] if ta else A.shape[1]
    if empty_product(C, k, acc):
        return
    _gemm_block(A, B, C, ta, tb, 1.0 if acc else 0.0, 0, C.shape[0], 0, C.shape[1])


@parallel_jit
def _blas_mm_split(A, B, C, ta, tb, acc):
    """``C (+)= op(A) @ op(B)`` as :func:`_blas_mm`, its rows (or, for a wide
    ``C``, its columns) cut into :data:`fastbp.config.SPLIT_BLOCKS` blocks (the
    usable cores; fewer for a small product), run on numba's threads, each block
    one BLAS call on one BLAS thread (the caller sets the BLAS to one thread).

    The step's threads in one runtime: a step that runs its elementwise
    kernels on numba's threads runs its products on them too, instead of the
    BLAS's own threads spinning against numba's (see
    :data:`fastbp.config.STEP_THREADS_MIN_ELEMENTS`).  Every element of ``C``
    is the same dot product in the same order whatever the blocks (the BLAS
    splits a product over ``m`` and ``n``, never ``k``) where
    :func:`fastbp._blas_split.split_exact` holds; elsewhere (OpenBLAS's Haswell
    kernels) a block's bits may differ from the whole call's, but the blocks do
    not depend on numba's thread count, so neither do the results.  Products
    below twice BLAS_THREADS_MIN_MACS are one call.
    Compiled with ``parallel=True`` only (its serial twin would be one call per
    block, one after the other).
    """
    m = C.shape[0]
    n = C.shape[1]
    k = A.shape[0] if ta else A.shape[1]
    if empty_product(C, k, acc):
        return
    beta = 1.0 if acc else 0.0
    rows = m >= n
    dim = m if rows else n
    # every block keeps at least BLAS_THREADS_MIN_MACS multiply-adds: the BLAS's own kernel for
    # small products (OpenBLAS: below ~1e6, on one thread only) never gets a block of a product
    # that one call would have run through its general kernel
    nblk = min(SPLIT_BLOCKS, (m * n * k) // BLAS_THREADS_MIN_MACS, dim)
    if nblk < 2:
        _gemm_block(A, B, C, ta, tb, beta, 0, m, 0, n)
        return
    for t in prange(nblk):
        lo = (np.intp(t) * dim) // nblk      # (the prange index is unsigned in the parallel variant)
        hi = ((np.intp(t) + 1) * dim) // nblk
        if rows:
            _gemm_block(A, B, C, ta, tb, beta, lo, hi, 0, n)
        else:
            _gemm_block(A, B, C, ta, tb, beta, 0, m, lo, hi)


#: int64 values per product in a JIT GEMM table: kernel, jitter, m, n, k
JIT_SLOT = 5


@jit
def _jit_mm(A, B, C, ta, tb, acc, jt, off):
    """``C (+)= op(A) @ op(B)`` through the oneMKL JIT GEMM kernel kept in
    ``jt[off:off + JIT_SLOT]`` (kernel address, jitter, m, n, k), which is
    generated on first use for these shapes, transposes and ``acc``.

    Returns False, having done nothing, where there is no kernel for this
    product (MKL declined or failed to make one, or it was made for other
    shapes): the caller then calls the BLAS.  Only valid when
    :data:`fastbp._blas.GEMM_JIT`; operands C-contiguous, one dtype, no
    dimension 0.  The caller frees the
    jitters (:func:`fastbp._blas.gemm_jit_destroy`).
    """
    m = C.shape[0]
    n = C.shape[1]
    k = A.shape[0] if ta else A.shape[1]
    if jt[off] == 0:
        one = C.dtype.type(1.0)
        beta = one if acc else C.dtype.type(0.0)
        where = jt.ctypes.data + 8 * (off + 1)     # MKL writes the jitter there
        if C.itemsize == 4:
            st = _jit_create_s(where, _ROW, _TR if ta else _NT, _TR if tb else _NT, m, n, k, one,
                               A.shape[1], B.shape[1], beta, n)
        else:
            st = _jit_create_d(where, _ROW, _TR if ta else _NT, _TR if tb else _NT, m, n, k, one,
                               A.shape[1], B.shape[1], beta, n)
        fn = 0
        if st == 0:
            fn = _jit_get_s(jt[off + 1]) if C.itemsize == 4 else _jit_get_d(jt[off + 1])
        elif st != 1:
            # 1: MKL declined (plain gemm behind the same call, on however many
            # threads MKL has: the caller's cblas path, which chooses them, is
            # better; the jitter is still freed with the table); else failed,
            # and there is no jitter to free
            jt[off + 1] = 0
        jt[off] = fn if fn != 0 else -1
        jt[off + 2] = m
        jt[off + 3] = n
        jt[off + 4] = k
    if jt[off] < 0 or jt[off + 2] != m or jt[off + 3] != n or jt[off + 4] != k:
        return False
    call_fnptr4(jt[off], jt[off + 1], A.ctypes.data, B.ctypes.data, C.ctypes.data)
    return True


@jit
def blas_get_threads():
    """The BLAS's current number of threads."""
    return _blas_get_threads()


@jit
def blas_set_threads(n):
    """Set the BLAS's number of threads."""
    _blas_set_threads(n)
