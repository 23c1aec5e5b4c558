"""Fully connected layer kernels: the bias gradient, and the fused forward.

Forward ``Y = act(X W + b)`` with ``X (B, in)``, ``W (in, out)``, ``b (out,)``
(``_linear_fwd``), or with the weight stored transposed as ``Wt (out, in)``,
PyTorch's layout (``_linear_fwd_t``), and the epilogue after a BLAS product
(``_bias_act``): per activation, compiled from its registry entry
(:mod:`fastbp.kernels.activations`); the names here dispatch by code.

Backward, from ``dY`` and what the activation's derivative reads (its output
``Y``, or the pre-activation ``Z``): ``dZ = dY * act'(.)`` (the entry's
``bwd`` kernel, in place), then ``dW = X^T dZ``, ``dX = dZ W^T``
(:mod:`.gemm`) and ``db = sum_batch dZ`` (``_colsum``).
"""
import numpy as np
from numba import prange

from .._jit import TILE, kernel, stack_tile
from .activations import _bias_act, _linear_fwd, _linear_fwd_t  # noqa: F401 - re-exported


@kernel
def _colsum(dZ, db, acc):
    """``db (+)= sum over rows of dZ`` (the bias gradient ``db = 1^T dZ``).

    Parallel over blocks of columns; each column is summed in row order by
    one thread, in float64 whatever dZ's dtype (float32 rows summed in float32
    drift: 1.2e-4 relative at 1e6 rows; torch's pairwise sums 5e-7), rounded
    once into ``db`` (with ``acc``: ``db + sum`` rounded once).
    """
    B, N = dZ.shape
    nblk = (N + 63) // 64
    for blk in prange(nblk):
        j0 = blk * 64
        j1 = min(j0 + 64, N)
        # sum into a float64 stack tile (cannot alias dZ, so the row loop vectorises);
        # every column is summed in row order, on either path
        t = stack_tile(np.float64)
        if j1 - j0 == TILE:
            # full block: fixed trip counts keep the tile in registers
            for q in range(TILE):
                t[q] = 0.0
            for i in range(B):
                for q in range(TILE):
                    t[q] += dZ[i, j0 + q]
            for q in range(TILE):
                if acc:
                    db[j0 + q] = db[j0 + q] + t[q]
                else:
                    db[j0 + q] = t[q]
        else:
            # narrow block: still row order (column-order dot products were
            # 2.5x slower on 32 x 32 and 200 x 100)
            nq = j1 - j0
            for q in range(nq):
                t[q] = 0.0
            for i in range(B):
                for q in range(nq):
                    t[q] += dZ[i, j0 + q]
            for q in range(nq):
                if acc:
                    db[j0 + q] = db[j0 + q] + t[q]
                else:
                    db[j0 + q] = t[q]
