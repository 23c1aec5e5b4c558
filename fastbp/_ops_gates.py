"""The ``fastbp.ops`` gate wrappers, generated from the gate registry.

For every gate of :mod:`fastbp.registry.gates` (``add``, ``mul``, ``max``, ``div``, ``pow``),
``<name>_forward(a, b, out=None)`` and ``<name>_backward(a, b, dout)``, with numpydoc
docstrings built from the entry: numpy broadcasting of arrays of at most 2 dims, arguments
validated (:mod:`fastbp._validate`), ``out`` checked or allocated, the entry's compiled kernels
(:mod:`fastbp.kernels.gates`) run serial or parallel by size.
"""
from __future__ import annotations

import numpy as np

from . import _validate as V
from ._ops_activations import check_out, view2d_shape
from .kernels import gates as _G
from .registry import gates as _gates


def as2d(a):
    """``a`` (0-D to 2-D) as the 2-D view the kernels take."""
    return a if a.ndim == 2 else a.reshape(view2d_shape(a.shape, a.size))


def _shapes(a, b):
    V.float_array(a, "a", (0, 1, 2))
    V.float_array(b, "b", (0, 1, 2))
    V.same_dtype(a, "a", b, "b")
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"a of shape {V.fmt_shape(a.shape)} and b of shape {V.fmt_shape(b.shape)} "
                         f"cannot be broadcast together") from None


def gate_forward(code, a, b, out=None):
    """``out = gate(a, b)`` of the gate with registry code ``code``, broadcast."""
    o = check_out(out, "out", _shapes(a, b), a.dtype, ((a, "a"), (b, "b")), allow_identical=True)
    _G._gate_fwd.pick(o.size)(code, as2d(a), as2d(b), as2d(o))
    return o


def gate_backward(code, a, b, dout):
    """``(da, db)`` of the gate with registry code ``code``, each summed over its broadcast axes."""
    oshape = _shapes(a, b)
    V.float_array(dout, "dout")
    V.same_dtype(a, "a", dout, "dout")
    V.shape(dout, "dout", oshape, "the broadcast shape of a and b")
    da = np.empty(a.shape, a.dtype)
    db = np.empty(b.shape, b.dtype)
    _G._gate_bwd.pick(dout.size)(code, as2d(a), as2d(b), as2d(dout), as2d(da), as2d(db), False, False)
    return da, db


def _make(entry):
    """``(<name>_forward, <name>_backward)`` of a registry gate."""
    code = entry.code

    def forward(a, b, out=None):
        return gate_forward(code, a, b, out)

    def backward(a, b, dout):
        return gate_backward(code, a, b, dout)

    forward.__name__ = forward.__qualname__ = f"{entry.name}_forward"
    backward.__name__ = backward.__qualname__ = f"{entry.name}_backward"
    forward.__module__ = backward.__module__ = "fastbp.ops"
    forward.__doc__ = f"""The ``{entry.name}`` gate, ``{entry.formula}``, with numpy broadcasting (at most 2 dims).

    Parameters
    ----------
    a, b : numpy.ndarray, 0-D, 1-D or 2-D
        float32 or float64 (one dtype), C-contiguous, broadcastable.
    out : numpy.ndarray, optional
        Output of the broadcast shape; may be ``a`` or ``b`` itself when that
        already has the broadcast shape.

    Returns
    -------
    numpy.ndarray
        The broadcast shape, same dtype.
    """
    backward.__doc__ = f"""Gradients of the ``{entry.name}`` gate: ``{entry.gradient}``.

    An input that was broadcast receives its gradient summed over its broadcast axes
    (in float64, rounded once).

    Parameters
    ----------
    a, b : numpy.ndarray, 0-D, 1-D or 2-D
        The forward inputs, float32 or float64 (one dtype).
    dout : numpy.ndarray
        Upstream gradient, of the broadcast shape and the inputs' dtype.

    Returns
    -------
    da, db : numpy.ndarray
        Shapes of ``a`` and ``b``.
    """
    return forward, backward


def wrappers():
    """``{name: function}`` of every gate's wrappers, in code order."""
    out = {}
    for e in _gates.entries():
        for f in _make(e):
            out[f.__name__] = f
    return out
