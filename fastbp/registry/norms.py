"""The normalisation layers (LayerNorm, BatchNorm1d): their names and scalar bodies.

The elementwise parts of both layers are these two plain Python functions,
compiled for the CPU loops (:mod:`fastbp.kernels.norm`) and for the CUDA
kernels (:mod:`fastbp.kernels.cuda.norm`): one body, two targets.  The
reductions around them (row statistics for LayerNorm, column statistics
for BatchNorm) are each target's loops.

* forward: ``y = (x - mean) * rstd * w + b`` (:func:`norm_affine`);
* backward: with ``g = dy * w``, ``xhat = (x - mean) * rstd`` and the means
  ``mg = mean(g)``, ``mgx = mean(g * xhat)`` over the values normalised
  together, ``dx = rstd * (g - mg - xhat * mgx)`` (:func:`norm_dx`).

Imports nothing (see :mod:`fastbp.registry`).
"""

#: graph op names of the layers (graph.py's nodes) and their PyTorch modules
LAYER_NORM = "layer_norm"
BATCH_NORM = "batch_norm"
OPS = (LAYER_NORM, BATCH_NORM)
TORCH = {"LayerNorm": LAYER_NORM, "BatchNorm1d": BATCH_NORM}
#: rows of a BatchNorm's statistics buffer: mean, rstd, sum of squared deviations, 2 scratch
BN_STAT_ROWS = 5
#: LayerNorm keeps (mean, rstd) per row
LN_STAT_COLS = 2


def norm_affine(x, mean, rstd, w, b):
    """``(x - mean) * rstd * w + b``; derivative in ``x``: ``rstd * w`` (plus the
    statistics' terms, :func:`norm_dx`)."""
    return (x - mean) * rstd * w + b


def norm_dx(g, xhat, rstd, mg, mgx):
    """``rstd * (g - mg - xhat * mgx)``: the input gradient of a normalisation with
    batch statistics, ``g = dy * w``, ``mg = mean(g)``, ``mgx = mean(g * xhat)``."""
    return rstd * (g - mg - xhat * mgx)
