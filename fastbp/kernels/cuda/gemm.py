"""Tiled matrix-product kernels for CUDA: ``C (+)= A @ B``, ``A @ B.T``, ``A.T @ B``.

Same contracts as :mod:`fastbp.kernels.gemm` (all operands 2-D C-contiguous
device arrays of one float dtype, ``C`` caller-allocated, ``acc`` selects
``C = ...`` or ``C += ...``), called as ``_mm_nn(A, B, C, acc, stream=0)``.

Design (the classic shared-memory + register-blocked SGEMM):

* a block of ``GEMM_TX x GEMM_TY = 16 x 16`` threads computes a
  ``BM x BN = 64 x 64`` tile of ``C``;
* the reduction runs in steps of ``BK = 8``: the block stages an
  ``A`` panel and a ``B`` panel in shared memory, both stored "k-major"
  (``tile[k, i]``) whatever the layout of the operand in global memory, so
  one inner loop serves the three products;
* each thread keeps a ``TM x TN = 4 x 4`` block of ``C`` in registers and,
  per ``k``, loads 4 values of the ``A`` panel and 4 of the ``B`` panel
  for 16 multiply-adds (a thread's outputs are the rows
  ``ty + 16 i`` and columns ``tx + 16 j`` of the tile, so the final stores
  and the shared ``B`` reads are consecutive across a warp);
* operands laid out with the reduction index along rows (``B`` of
  ``nn``/``tn``, ``A`` of ``tn``) are read with consecutive threads on
  consecutive columns (coalesced); operands with the reduction index along
  columns are read 8 consecutive ``k`` per output row, and the panel's
  padded leading dimension (``BM + 4``) keeps their transposing stores free
  of bank conflicts.

Every output element is reduced over ``k`` in increasing order by one
thread: no atomics, deterministic.  Out-of-range panel entries are loaded
as zeros, so any ``m, n, k >= 0`` works (``k = 0`` yields ``C = 0``).
"""
from numba import cuda

from ..factory import specialise
from .launch import (BK, BM, BN, GEMM_THREADS, GEMM_TX, GEMM_TY, TILE_LD, TM,
                     TN, device, grid_gemm, kernel)

_PANEL_STEPS = BK * BM // GEMM_THREADS   # panel elements loaded per thread


@device
def _load_panel_kmajor(src, panel, k0, c0, tid):
    """``panel[kk, cc] = src[k0 + kk, c0 + cc]`` (0 outside ``src``).

    ``src`` holds the reduction index along its rows; consecutive threads
    read consecutive columns (coalesced) and write consecutive banks.
    """
    R = src.shape[0]
    Cn = src.shape[1]
    zero = panel.dtype.type(0.0)
    for step in range(_PANEL_STEPS):
        idx = tid + step * GEMM_THREADS
        kk = idx // BM
        cc = idx - kk * BM
        r = k0 + kk
        c = c0 + cc
        if r < R and c < Cn:
            panel[kk, cc] = src[r, c]
        else:
            panel[kk, cc] = zero


@device
def _load_panel_kminor(src, panel, k0, c0, tid):
    """``panel[kk, cc] = src[c0 + cc, k0 + kk]`` (0 outside ``src``).

    ``src`` holds the reduction index along its columns; groups of ``BK``
    threads read ``BK`` consecutive entries of one row.
    """
    R = src.shape[0]
    Kn = src.shape[1]
    zero = panel.dtype.type(0.0)
    for step in range(_PANEL_STEPS):
        idx = tid + step * GEMM_THREADS
        cc = idx // BK
        kk = idx - cc * BK
        r = c0 + cc
        k = k0 + kk
        if r < R and k < Kn:
            panel[kk, cc] = src[r, k]
        else:
            panel[kk, cc] = zero


@device
def _panel_fma(Ap, Bp, acc, a, b, tx, ty):
    """``acc[i, j] += sum_k Ap[k, ty + 16 i] * Bp[k, tx + 16 j]`` over the panel."""
    for k in range(BK):
        for i in range(TM):
            a[i] = Ap[k, ty + i * GEMM_TY]
        for j in range(TN):
            b[j] = Bp[k, tx + j * GEMM_TX]
        for i in range(TM):
            for j in range(TN):
                acc[i, j] += a[i] * b[j]


@device
def _zero_acc(acc):
    zero = acc.dtype.type(0.0)
    for i in range(TM):
        for j in range(TN):
            acc[i, j] = zero


@device
def _store_tile(C, acc, m0, n0, tx, ty, accumulate):
    """``C[tile] (+)= acc`` for the in-range part of this thread's outputs."""
    M = C.shape[0]
    N = C.shape[1]
    for i in range(TM):
        r = m0 + ty + i * GEMM_TY
        if r < M:
            for j in range(TN):
                c = n0 + tx + j * GEMM_TX
                if c < N:
                    if accumulate:
                        C[r, c] += acc[i, j]
                    else:
                        C[r, c] = acc[i, j]


def _t_tiles(A, B, acc, K, m0, n0, tx, ty):
    """``acc = this thread's TM x TN outputs of the block's BM x BN tile of op(A) op(B)``:
    the reduction of length ``K`` in panels of ``BK``, each staged in shared memory by
    ``_LOAD_A``/``_LOAD_B`` (the operand's layout: :func:`_load_panel_kminor` when the
    reduction runs along its columns, :func:`_load_panel_kmajor` along its rows; injected)
    and applied by :func:`_panel_fma`.  The one tile loop of every product kernel (the three
    layouts here and the fused linear kernels of :mod:`.fused`)."""
    Ap = cuda.shared.array((BK, TILE_LD), dtype=A.dtype)
    Bp = cuda.shared.array((BK, TILE_LD), dtype=A.dtype)
    a = cuda.local.array(TM, dtype=A.dtype)
    b = cuda.local.array(TN, dtype=A.dtype)
    tid = ty * GEMM_TX + tx
    _zero_acc(acc)
    for k0 in range(0, K, BK):
        _LOAD_A(A, Ap, k0, m0, tid)  # noqa: F821 - injected
        _LOAD_B(B, Bp, k0, n0, tid)  # noqa: F821 - injected
        cuda.syncthreads()
        _panel_fma(Ap, Bp, acc, a, b, tx, ty)
        cuda.syncthreads()


#: the tile loops by operand layouts: ``A (m, k) @ B (k, n)``, ``A (m, k) @ B (n, k).T``,
#: ``A (k, m).T @ B (k, n)``
_tiles_nn = device(specialise(_t_tiles, "_nn", _LOAD_A=_load_panel_kminor, _LOAD_B=_load_panel_kmajor))
_tiles_nt = device(specialise(_t_tiles, "_nt", _LOAD_A=_load_panel_kminor, _LOAD_B=_load_panel_kminor))
_tiles_tn = device(specialise(_t_tiles, "_tn", _LOAD_A=_load_panel_kmajor, _LOAD_B=_load_panel_kmajor))


def _t_k_mm(A, B, C, accumulate):
    """Kernel of a product: ``C (+)= op(A) op(B)``, the layout's tile loop ``_TILES`` over a
    reduction of length ``A.shape[_K_AXIS]`` (injected), then the tile stored."""
    acc = cuda.local.array((TM, TN), dtype=A.dtype)
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BN
    _TILES(A, B, acc, A.shape[_K_AXIS], m0, n0, cuda.threadIdx.x, cuda.threadIdx.y)  # noqa: F821
    _store_tile(C, acc, m0, n0, cuda.threadIdx.x, cuda.threadIdx.y, accumulate)


#: kernels of :func:`_mm_nn` (``A (m, k)`` panels via rows, ``B (k, n)`` via columns),
#: :func:`_mm_nt` (``A (m, k)`` and ``B (n, k)`` both via rows) and :func:`_mm_tn`
#: (``A (r, m)`` and ``B (r, n)`` both via columns)
_k_mm_nn = kernel(specialise(_t_k_mm, "_nn", _TILES=_tiles_nn, _K_AXIS=1))
_k_mm_nt = kernel(specialise(_t_k_mm, "_nt", _TILES=_tiles_nt, _K_AXIS=1))
_k_mm_tn = kernel(specialise(_t_k_mm, "_tn", _TILES=_tiles_tn, _K_AXIS=0))


def _launch_mm(k, A, B, C, acc, stream):
    m, n = C.shape
    if m == 0 or n == 0:
        return
    grid, block = grid_gemm(m, n)
    k[grid, block, stream](A, B, C, bool(acc))


def _mm_nn(A, B, C, acc, stream=0):
    """``C (+)= A @ B`` on the GPU.

    Parameters
    ----------
    A : device array, (m, k), float32 or float64
    B : device array, (k, n), same dtype
    C : device array, (m, n), same dtype
        Output (caller-allocated).
    acc : bool
        Add into ``C`` instead of overwriting it.
    stream : numba CUDA stream or 0
        Stream to launch on (asynchronous).
    """
    _launch_mm(_k_mm_nn, A, B, C, acc, stream)


def _mm_nt(A, B, C, acc, stream=0):
    """``C (+)= A @ B.T`` on the GPU (``dX = dZ W^T``).

    Parameters
    ----------
    A : device array, (m, k), float32 or float64
    B : device array, (n, k), same dtype
    C : device array, (m, n), same dtype
        Output (caller-allocated).
    acc : bool
        Add into ``C`` instead of overwriting it.
    stream : numba CUDA stream or 0
    """
    _launch_mm(_k_mm_nt, A, B, C, acc, stream)


def _mm_tn(A, B, C, acc, stream=0):
    """``C (+)= A.T @ B`` on the GPU (``dW = X^T dZ``).

    Parameters
    ----------
    A : device array, (r, m), float32 or float64
    B : device array, (r, n), same dtype
    C : device array, (m, n), same dtype
        Output (caller-allocated).
    acc : bool
        Add into ``C`` instead of overwriting it.
    stream : numba CUDA stream or 0
    """
    _launch_mm(_k_mm_tn, A, B, C, acc, stream)
