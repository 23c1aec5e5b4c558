"""Dropout's CPU kernel: inverted dropout with the counter-based mask of :mod:`fastbp._rng`.

One kernel serves the forward and the backward of a dropout instruction:
the mask is a pure function of ``(seed, layer, step, index)``, so the
backward recomputes it instead of keeping it (no mask buffer: a dropout
costs no memory beyond its output, and hashing an element is cheaper than
the memory traffic of a stored mask on the CPU and the GPU alike).
"""
import numpy as np
from numba import prange

from .._jit import jit, kernel
from .. import _rng
from .factory import specialise
from .words import CPU_WORD_OPS

# the generator's templates, bound to the CPU's 32-bit word operations (fastbp.kernels.words)
_mix = jit(inline=True)(specialise(_rng.mix32, "__cpu", **CPU_WORD_OPS))
_bits = jit(inline=True)(specialise(_rng.element_bits, "__cpu", _mix=_mix, **CPU_WORD_OPS))
stream_key = jit(specialise(_rng.stream_key, "__cpu", _mix=_mix, **CPU_WORD_OPS))
_keep = jit(inline=True)(specialise(_rng.keep, "__cpu", _bits=_bits, **CPU_WORD_OPS))
_threshold = jit(inline=True)(_rng.keep_threshold)


@jit(inline=True)
def _mask_setup(out, seed, layer, step, p):
    """``(key, threshold, scale, zero)`` of the mask of ``p`` > 0: an element is kept
    (factor ``scale = 1 / (1 - p)`` in ``out``'s dtype) where ``_keep(key, index,
    threshold)``, else multiplied by ``zero``."""
    q = 1.0 - p
    one = out.dtype.type(1.0)
    zero = out.dtype.type(0.0)
    scale = one / out.dtype.type(q) if q > 0.0 else zero
    return stream_key(seed, layer, step), _threshold(q), scale, zero


@kernel
def _dropout(A, out, seed, layer, step, row0, p, acc):
    """``out (+)= A * m``, ``m = 1[kept] / (1 - p)`` per element (inverted dropout).

    Forward: ``A`` is the input, ``out`` the output.  Backward: ``A`` is the
    output's gradient ``dY`` and ``out`` the input's ``dX``; the derivative of
    ``y = x * m`` is ``dx = dy * m``, the same product with the same mask.

    Parameters
    ----------
    A, out : ndarray, shape (r, c), float32 or float64
    seed, layer, step : int64
        The mask's key (:func:`fastbp._rng.stream_key`).
    row0 : int64
        The index of ``A``'s first row in the global minibatch (0 on one
        process; a data-parallel rank's offset): element ``(i, j)`` has
        index ``(row0 + i) * c + j``, so that ranks draw the masks one
        process draws for the global minibatch.
    p : float64
        The probability of an element being zeroed, in [0, 1].  ``p == 0``:
        ``out (+)= A`` exactly (eval mode); ``p == 1``: ``m = 0``.
    acc : bool
        Add into ``out`` instead of overwriting it.

    Notes
    -----
    As PyTorch: the scale is ``1 / (1 - p)`` computed in the arrays' dtype and
    the product is ``A * m`` (so ``inf`` or NaN in a dropped element gives NaN).
    """
    r, c = out.shape
    if p == 0.0:
        for i in prange(r):
            for j in range(c):
                if acc:
                    out[i, j] += A[i, j]
                else:
                    out[i, j] = A[i, j]
        return
    key, thr, scale, zero = _mask_setup(out, seed, layer, step, p)
    for ii in prange(r):        # each element's mask is a function of its index alone
        i = np.intp(ii)         # (the prange index is unsigned in the parallel variant)
        for j in range(c):
            m = scale if _keep(key, (row0 + i) * c + j, thr) else zero
            if acc:
                out[i, j] += A[i, j] * m
            else:
                out[i, j] = A[i, j] * m


@kernel
def _dropout_d(A, out, D, seed, layer, step, row0, p):
    """:func:`_dropout`'s forward (``out = A * m``) that also scales ``D`` by the same
    mask in place (``D *= m``): with ``D`` the derivative ``act'`` that the preceding
    activation kept, the backward of ``out = m * act(z)`` is then one product,
    ``dz = dout * D`` (``d out / dz = m act'(z)``), with no pass of its own for the
    dropout (:mod:`fastbp._fold_plan`).  ``p`` in (0, 1]; ``p == 0`` never comes
    here (the instruction copies then and leaves ``D`` as it is)."""
    r, c = out.shape
    key, thr, scale, zero = _mask_setup(out, seed, layer, step, p)
    for ii in prange(r):
        i = np.intp(ii)
        for j in range(c):
            m = scale if _keep(key, (row0 + i) * c + j, thr) else zero
            out[i, j] = A[i, j] * m
            D[i, j] = D[i, j] * m
