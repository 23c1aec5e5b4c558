"""The executor's views of a step's arena: buffers as 2-D blocks, the layout checks of
a caller's arrays, the finiteness test of a gradient region.

Compiled helpers of :func:`fastbp._executor.run_tape` (and its native loops),
in a module of their own so that the interpreter's module stays one job.
"""
from ._jit import block2d, jit


@jit
def _view(arena, bufs, i, nb):
    """The 2-D C-contiguous view of buffer ``i`` (``nb`` rows if batch-sized)."""
    off = bufs[i, 0]
    r = bufs[i, 1]
    if r < 0:
        r = nb
    c = bufs[i, 2]
    if off < 0 or off + r * c > arena.shape[0]:
        raise IndexError("fastbp: buffer outside the arena (corrupt step)")
    return block2d(arena, off, r, c)


@jit
def _xview(arena, bufs, x, xb, i, nb):
    """:func:`_view`, except that buffer ``xb`` (the input, read in place) is ``x`` itself."""
    if i == xb:
        return x
    return _view(arena, bufs, i, nb)


@jit
def _empty(arena):
    return arena[0:0].reshape((0, 0))


@jit
def _view_or_empty(arena, bufs, i, nb):
    if i < 0:
        return arena[0:0].reshape((0, 0))
    return _view(arena, bufs, i, nb)


@jit
def _vec(arena, bufs, i):
    """Buffer ``i`` as a 1-D view (biases)."""
    if i < 0:
        return arena[0:0]
    off = bufs[i, 0]
    return arena[off:off + bufs[i, 1] * bufs[i, 2]]


@jit
def _all_finite(v):
    s = v.dtype.type(0.0)
    for i in range(v.shape[0]):
        s += v[i] * v.dtype.type(0.0)
    return s == 0.0


@jit
def _c_rows(a):
    """Whether a 2-D array is laid out as the executor reads it: C-contiguous
    rows (numba indexes a "C" array by its shape, whatever its strides), aligned."""
    isz = a.itemsize
    if a.shape[0] == 0 or a.shape[1] == 0:
        return True
    if a.strides[1] != isz or (a.shape[0] > 1 and a.strides[0] != isz * a.shape[1]):
        return False
    return a.ctypes.data % isz == 0


@jit
def _c_vec(v):
    """:func:`_c_rows` for a 1-D array."""
    isz = v.itemsize
    if v.shape[0] == 0:
        return True
    return (v.shape[0] == 1 or v.strides[0] == isz) and v.ctypes.data % isz == 0
