"""The checks of :mod:`fastbp.graph` that need no node: its exceptions, shapes, constant
values, a dropout probability and a normalisation's ``eps`` (kept apart so that the graph
module stays small; :mod:`fastbp.graph` re-exports the exceptions)."""
from __future__ import annotations

import functools
import numbers

import numpy as np

from . import _scalars
from ._scalars import short_repr  # noqa: F401  (builders imports it from here)
from ._validate import INT64_MAX

__all__ = ["GraphError", "GraphTypeError", "dropout_probability"]


class GraphError(ValueError):
    """A graph is malformed: incompatible shapes, foreign nodes, bad wrt."""


class GraphTypeError(GraphError, TypeError):
    """An argument of the wrong type (not a node, a name that is not a string, a
    non-real constant): a :class:`TypeError`, and a :class:`GraphError` too."""


def _fmt_shape(shape):
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def _check_shape(shape, what):
    if not isinstance(shape, (tuple, list)):
        raise GraphTypeError(f"{what}: shape must be a tuple, got {type(shape).__name__}")
    shape = tuple(shape)
    if len(shape) > 2:
        raise GraphError(f"{what}: shapes of at most 2 dimensions are supported, got {shape}")
    for i, d in enumerate(shape):
        if d is None:
            if i != 0 or len(shape) != 2:
                raise GraphError(f"{what}: only the first of two dimensions may be None (the batch), got {shape}")
        elif isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise GraphTypeError(f"{what}: dimensions must be positive integers or a leading None, got {shape}")
        elif d < 1:
            raise GraphError(f"{what}: dimensions must be positive integers or a leading None, got {shape}")
        elif d > INT64_MAX:     # sizes are int64 inside the executor
            raise GraphError(f"{what}: dimensions must be at most {INT64_MAX}, got {shape}")
    return tuple(None if d is None else int(d) for d in shape)


def holds_bool(value):
    """Whether a (nested) list or tuple holds a bool, which numpy would silently turn into
    a number in a list that also holds numbers (``[True, 2]``: ``[1, 2]``)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "b"
    return isinstance(value, (list, tuple)) and any(holds_bool(v) for v in value)


def _real_array(value, what):
    """``value`` as a new float64 array; GraphTypeError naming ``what`` unless it holds real
    numbers (no bool, complex, string or other object: nothing is silently converted)."""
    try:
        arr = np.asarray(value)
    except ValueError as e:             # a ragged list
        raise GraphError(f"{what} is not a rectangular array: {e}") from None
    if arr.dtype.kind == "O" and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                                     for v in arr.flat):
        try:
            arr = arr.astype(np.float64)
        except OverflowError:           # ints beyond float's range
            raise GraphError(f"{what} holds an integer too large for a float") from None
    if arr.dtype.kind not in "fiu":
        raise GraphTypeError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    if isinstance(value, (list, tuple)) and holds_bool(value):
        raise GraphTypeError(f"{what} must hold real numbers, got a bool among them")
    return np.array(arr, dtype=np.float64)


def dropout_probability(p, owner="dropout"):
    """A checked dropout probability (float in [0, 1]); TypeError / ValueError naming ``p``."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{owner}: p must be a real number in [0, 1], got {type(p).__name__}")
    if not 0 <= p <= 1:           # (compared before float(): an int too large for a float)
        raise ValueError(f"{owner}: dropout probability p has to be between 0 and 1, but got {short_repr(p)}")
    return float(p)


def _norm_eps(op, eps, training=False):
    """A normalisation's ``eps``: a finite real number >= 0, and > 0 for a batch norm that
    trains (``training``: PyTorch's ``batch_norm`` refuses ``eps <= 0`` in training)."""
    return _scalars.real("eps", eps, op, low=0.0, low_open=training)


GraphError.__module__ = GraphTypeError.__module__ = "fastbp.graph"      # where users import them from


class Transposed:
    """``W.T`` of a 2-D parameter ``W``: only meaningful as ``x @ W.T``."""
    __slots__ = ("node",)
    __array_ufunc__ = None      # ``ndarray @ W.T``: numpy defers to __rmatmul__

    def __init__(self, node):
        self.node = node

    def __rmatmul__(self, other):
        # a constant left operand (an array, a list) becomes a constant node of W's graph
        return self.node._lift(other, "matmul") @ self


def atomic(method):
    """A node's graph-building operator that adds no node when it raises: an operand lifted
    into the graph as a constant before the shapes were found not to fit is taken out again,
    so that a rejected call leaves ``graph.nodes`` as it was."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        nodes = self.graph.nodes
        n = len(nodes)
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            del nodes[n:]
            raise
    return wrapper
