"""Launch machinery shared by the CUDA kernels: decorators, block shapes, grids.

Every ``@cuda.jit`` kernel of :mod:`fastbp.kernels.cuda` is declared with
:func:`kernel` and every device helper with :func:`device`.  They hide the
one difference between the real CUDA target and numba's CUDA simulator that
matters here: the simulator's ``cuda.jit`` accepts neither ``forceinline``
nor file caching.

Compilation flags (real GPU): ``fastmath`` is left off, so divisions and
square roots are IEEE-exact, denormals are kept and NaN/inf checks survive
(the rule of :mod:`fastbp._jit`: never ``nnan``/``ninf``); NVVM still fuses
multiply-adds (FMA), which is the one source of rounding differences from
the CPU kernels.  No kernel uses floating-point atomics: every output element
is written by exactly one thread, and every reduction runs in an order fixed
by the launch shape, so a kernel gives bitwise-identical results from run to
run on a given device.
"""
from __future__ import annotations

import os

from numba import cuda

from ...config import env_flag

try:  # numba-cuda keeps its configuration here
    from numba.cuda.core import config as _config
except ImportError:  # pragma: no cover - numba's built-in CUDA target
    from numba.core import config as _config

#: True when numba runs kernels in its CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = bool(_config.ENABLE_CUDASIM)

_CACHE = not env_flag("FASTBP_NO_CACHE") and not SIMULATOR

# ------------------------------------------------------------ block shapes
#: Under the simulator every CUDA thread of a block is a Python thread, so a launch costs about
#: its thread count in Python thread switches.  The simulator therefore runs the same kernels
#: with scaled-down blocks (``SIM_SMALL_BLOCKS``): every code path is the same, small arrays
#: span more blocks (which also exercises the multi-block paths), and the launches cost an
#: eighth.  ``FASTBP_SIM_FULL_BLOCKS=1`` keeps the GPU's shapes under the simulator too (CI's
#: first stage runs the simulator tests with the small blocks, its last stage with the GPU's).
SIM_SMALL_BLOCKS = SIMULATOR and os.environ.get("FASTBP_SIM_FULL_BLOCKS", "") in ("", "0")

#: threads per block of the 1-D kernels (rows of a loss, flat optimizer vectors)
THREADS_1D = 32 if SIM_SMALL_BLOCKS else 128
#: threads per block of the single-block reductions (a power of two)
REDUCE_THREADS = 32 if SIM_SMALL_BLOCKS else 256
#: block of the 2-D elementwise kernels: x runs along columns (coalesced)
EW_X, EW_Y = (8, 4) if SIM_SMALL_BLOCKS else (32, 8)
#: block of the column reduction (``_colsum``, broadcast gate gradients)
COL_X, COL_Y = (8, 4) if SIM_SMALL_BLOCKS else (32, 8)

#: matrix-product tile: a block computes a ``BM x BN`` tile of ``C``,
#: marching over the reduction in steps of ``BK``; each of its
#: ``(BN // TN) x (BM // TM)`` threads holds a ``TM x TN`` block of
#: outputs in registers.
BM = BN = 16 if SIM_SMALL_BLOCKS else 64
BK = 8
TM = 4
TN = 4
GEMM_TX = BN // TN            # 16 threads along the columns of a tile (4 under the simulator)
GEMM_TY = BM // TM            # 16 threads along the rows
GEMM_THREADS = GEMM_TX * GEMM_TY
#: shared tiles are stored ``(BK, BM + PAD)``; the padding makes the
#: transposing tile loads free of shared-memory bank conflicts
PAD = 4
TILE_LD = BM + PAD

_MAX_GRID_Y = 65535

assert BM == BN, "the tile loaders assume square output tiles"
assert (BK * BM) % GEMM_THREADS == 0 and GEMM_THREADS % BM == 0
assert GEMM_THREADS % BK == 0
assert REDUCE_THREADS & (REDUCE_THREADS - 1) == 0
assert COL_Y & (COL_Y - 1) == 0


# ------------------------------------------------------------- decorators
def kernel(fn):
    """Compile ``fn`` as a CUDA kernel (file-cached on a real GPU)."""
    if SIMULATOR:
        return cuda.jit(fn)
    return cuda.jit(cache=_CACHE)(fn)


def device(fn):
    """Compile ``fn`` as a CUDA device function, always inlined on a real GPU."""
    if SIMULATOR:
        return cuda.jit(device=True)(fn)
    return cuda.jit(device=True, forceinline=True)(fn)


# ------------------------------------------------------------------ grids
def _ceil_div(a, b):
    return -(-a // b)


def grid_1d(n, threads=THREADS_1D):
    """``(blocks, threads)`` giving one thread per element of a length-``n`` range.

    Parameters
    ----------
    n : int
        Number of elements (>= 1).
    threads : int
        Threads per block.

    Returns
    -------
    tuple of int
        ``(blocks, threads)``.
    """
    return max(1, _ceil_div(n, threads)), threads


def grid_ew(m, n):
    """``(grid, block)`` of a 2-D elementwise kernel over an ``(m, n)`` array.

    x runs along columns, y along rows; the kernels loop grid-stride over
    rows, so ``m`` beyond the 65535-block limit of the y dimension is fine.

    Returns
    -------
    tuple
        ``((gx, gy), (EW_X, EW_Y))``.
    """
    gx = max(1, _ceil_div(n, EW_X))
    gy = max(1, min(_ceil_div(m, EW_Y), _MAX_GRID_Y))
    return (gx, gy), (EW_X, EW_Y)


def grid_cols(n):
    """``(grid, block)`` of a column reduction over ``n`` columns.

    One block per ``COL_X`` columns; the ``COL_Y`` threads of a column split
    its rows and combine their partial sums in shared memory.
    """
    return (max(1, _ceil_div(n, COL_X)),), (COL_X, COL_Y)


def grid_gemm(m, n):
    """``(grid, block)`` of a tiled product with an ``(m, n)`` result.

    Raises
    ------
    ValueError
        If ``m`` needs more than 65535 row tiles.
    """
    gy = _ceil_div(m, BM)
    if gy > _MAX_GRID_Y:
        raise ValueError(f"matrix product with {m} rows exceeds the CUDA grid limit "
                         f"({_MAX_GRID_Y * BM} rows)")
    return (max(1, _ceil_div(n, BN)), max(1, gy)), (GEMM_TX, GEMM_TY)


def grid_reduce():
    """``(grid, block)`` of a single-block reduction."""
    return (1,), (REDUCE_THREADS,)
