"""Computational graphs of gates, the way the lecture notes draw them.

A :class:`Graph` holds nodes: inputs, parameters, constants and operations
built with Python operators (``+``, ``-``, ``*``, ``@``) and the functions
:func:`maximum`, :func:`sum` and one per activation of the registry
(:mod:`fastbp.registry.activations`: :func:`relu`, :func:`sigmoid`,
:func:`tanh`, ...), generated from its entries, and the normalisations
:func:`layer_norm` and :func:`batch_norm`.  Shapes are inferred (numpy broadcasting, at most two
dimensions; a leading ``None`` is the minibatch dimension) and checked as
each node is built, so a shape error names the nodes involved.

Graphs are compiled by :mod:`fastbp.compiler`; :func:`fastbp.grad` and
:func:`fastbp.compile` are the entry points.

Examples
--------
>>> import fastbp
>>> g = fastbp.Graph()
>>> x, y, z = g.input("x", ()), g.input("y", ()), g.input("z", ())
>>> f = (x + y) * z
>>> value, grads = fastbp.grad(f, wrt=[x, y, z])(x=-2.0, y=5.0, z=-4.0)
>>> value, grads["z"]
(-12.0, 3.0)
"""
from __future__ import annotations

import inspect as _inspect
import numbers as _numbers

import numpy as _np

from . import _scalars
from ._graph_base import (GraphError, GraphTypeError, Transposed as _Transposed, atomic as _atomic,
                          _check_shape, _fmt_shape, _norm_eps, _real_array,
                          dropout_probability)
from .registry import activations as _acts, gates as _gates

__all__ = ["Graph", "GraphError", "GraphTypeError", "Node", "gate", "maximum", "sum"]


def __dir__():  # dir(module), tab completion: the public API, not the imports and helpers
    return sorted(__all__)


def activation_of(node):
    """``(entry, params)`` of an activation node (its registry entry, parameter values), else None."""
    entry = _acts.lookup(node.op)
    return None if entry is None else (entry, node.attrs.get("params", entry.defaults))


def _broadcast(a, b, op):
    """numpy broadcasting of two shapes (<= 2-D; None = batch)."""
    sa, sb = a.shape, b.shape
    n = max(len(sa), len(sb))
    pa = (1,) * (n - len(sa)) + sa
    pb = (1,) * (n - len(sb)) + sb
    out = []
    for da, db in zip(pa, pb):
        if da == db:
            out.append(da)
        elif da == 1:
            out.append(db)
        elif db == 1:
            out.append(da)
        else:
            raise GraphError(
                f"{op}: shapes {_fmt_shape(sa)} of {a!r} and {_fmt_shape(sb)} of {b!r} do not broadcast")
    return tuple(out)


class Node:
    """One value in a :class:`Graph`: an input, a parameter, a constant or an operation.

    Parameters
    ----------
    graph, op, inputs, shape, name, attrs, value
        The attributes below (``attrs``: an operation's options, ``value``: a parameter's or constant's
        array); nodes are made by the graph's methods and operators, not by hand.

    Attributes
    ----------
    graph : Graph
    op : str
        ``"input"``, ``"param"``, ``"const"``, ``"matmul"``, a gate's registry name (``"add"``, ``"mul"``,
        ``"div"``, ``"pow"``, ``"max"``: Python's ``+ - * / **`` and :func:`maximum`), ``"sum"``, ``"loss"``,
        ``"layer_norm"``, ``"batch_norm"`` or an activation's name (``"relu"``, ``"sigmoid"``, ...).
    inputs : tuple of Node
    shape : tuple
        At most two dimensions; a leading ``None`` is the minibatch size.
    name : str
    """

    __slots__ = ("graph", "id", "op", "inputs", "shape", "attrs", "name", "value")
    __array_priority__ = 1000  # make ``ndarray * node`` call Node.__rmul__
    __array_ufunc__ = None     # ``ndarray + node`` defers to the reflected operators; np.exp(node): TypeError

    def __array_function__(self, func, types, args, kwargs):
        # np.sum(node) returned the node itself (a 0-d object array's sum), silently
        raise GraphTypeError(f"numpy.{func.__name__} does not take graph nodes ({self!r}); use the "
                             f"graph's own functions (fastbp.sum, fastbp.maximum, fastbp.relu, ...)")

    def __init__(self, graph, op, inputs, shape, name=None, attrs=None, value=None):
        self.graph = graph
        self.op = op
        self.inputs = tuple(inputs)
        self.shape = shape
        self.attrs = attrs or {}
        self.value = value
        self.id = len(graph.nodes)
        self.name = name if name is not None else f"{op}{self.id}"
        graph.nodes.append(self)

    def __repr__(self):
        return f"<{self.op} node '{self.name}' {_fmt_shape(self.shape)}>"

    # ------------------------------------------------------------ operators
    def _lift(self, other, op):
        if isinstance(other, Node):
            if other.graph is not self.graph:
                raise GraphError(f"{op}: {other!r} belongs to another graph than {self!r}")
            return other
        if isinstance(other, _Transposed):
            raise GraphTypeError(f"{op}: a transposed parameter can only be the right operand of @")
        return self.graph.const(other)

    def _binary(self, other, op, swap=False):
        other = self._lift(other, op)
        a, b = (other, self) if swap else (self, other)
        return Node(self.graph, op, (a, b), _broadcast(a, b, op))

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        other = self._lift(other, "sub")
        _broadcast(self, other, "sub")      # a shape error names the subtraction, before -other exists
        return self + (-other)

    def __rsub__(self, other):
        other = self._lift(other, "sub")
        _broadcast(other, self, "sub")
        return other + (-self)

    def __matmul__(self, other):
        transposed = isinstance(other, _Transposed)
        b = other.node if transposed else self._lift(other, "matmul")
        if b.graph is not self.graph:
            raise GraphError(f"matmul: {b!r} belongs to another graph than {self!r}")
        sa = self.shape
        sb = b.shape[::-1] if transposed else b.shape
        if len(sa) == 0 or len(sb) == 0:
            raise GraphError(f"matmul: {self!r} @ {b!r}: operands must be 1-D or 2-D, not scalars")
        ka = sa[-1]
        kb = sb[0]
        if ka != kb or ka is None:
            raise GraphError(f"matmul: inner dimensions of {self!r} {_fmt_shape(sa)} and {b!r} "
                             f"{_fmt_shape(sb)} differ")
        if sb[-1] is None if len(sb) == 2 else False:
            raise GraphError(f"matmul: {b!r} cannot have a batch dimension as its columns")
        shape = sa[:-1] + sb[1:]
        if len(shape) == 1 and shape[0] is None:
            raise GraphError(f"matmul: {self!r} @ {b!r} would give a batch-sized vector; "
                             f"use a 2-D right operand of shape (k, 1)")
        return Node(self.graph, "matmul", (self, b), shape, attrs={"tb": transposed})

    def __rmatmul__(self, other):
        return self._lift(other, "matmul") @ self

    @property
    def T(self):
        """The transpose of a 2-D parameter, for use as the right operand of ``@``."""
        if self.op != "param" or len(self.shape) != 2:
            raise GraphError(f"transpose: only 2-D parameters can be transposed, not {self!r}")
        return _Transposed(self)


def _operator(name, gate, swap):
    def op(self, other):
        return self._binary(other, gate, swap=swap)
    op.__name__, op.__qualname__ = name, f"Node.{name}"
    return op


# ``a + b``, ``a * b``, ``a / b``, ``a ** b`` and their reflections: the registry's gates
for _py, _gate in (("add", "add"), ("mul", "mul"), ("truediv", "div"), ("pow", "pow")):
    setattr(Node, f"__{_py}__", _operator(f"__{_py}__", _gate, False))
    setattr(Node, f"__r{_py}__", _operator(f"__r{_py}__", _gate, True))
del _py, _gate

# a rejected operation adds no node (the constant it lifted into the graph is taken out again)
for _name in ("_binary", "__sub__", "__rsub__", "__matmul__", "__rmatmul__"):
    setattr(Node, _name, _atomic(getattr(Node, _name)))


class Graph:
    """A computational graph under construction.

    Nodes are appended in creation order, which is a topological order.
    """

    def __init__(self):
        self.nodes = []
        self._names = {}

    def _unique(self, name, kind):
        if not isinstance(name, str):
            raise GraphTypeError(f"{kind} name must be a non-empty string, got {type(name).__name__}")
        if not name:
            raise GraphError(f"{kind} name must be a non-empty string, got {name!r}")
        if name in self._names:
            raise GraphError(f"{kind} name {name!r} is already used by {self._names[name]!r}")

    def input(self, name, shape):
        """Declare an input.

        Parameters
        ----------
        name : str
            The keyword the compiled function takes it by.
        shape : tuple
            ``()`` for a scalar, ``(n,)``, ``(m, n)``, or ``(None, n)`` for a
            minibatch of any size.

        Returns
        -------
        Node
        """
        self._unique(name, "input")
        node = Node(self, "input", (), _check_shape(shape, f"input {name!r}"), name=name)
        self._names[name] = node
        return node

    def param(self, name, value, *, copy=True):
        """Declare a trainable parameter with its initial value (scalar, 1-D or 2-D).

        Parameters
        ----------
        name : str
            Unique name of the parameter (the key of ``grads``).
        value : array_like of real numbers, shape ``()``, ``(n,)`` or ``(m, n)``
            Initial value; kept as float64.
        copy : bool, default True
            Keep a copy of ``value``.  ``False`` keeps ``value`` itself when it is
            already a float64 array (no second copy of a large weight matrix): the
            caller must not change it afterwards.

        Returns
        -------
        Node

        Raises
        ------
        TypeError
            ``value`` is not real numbers (bool, complex, str, object): never silently converted.
        """
        self._unique(name, "param")
        if not isinstance(copy, bool):
            raise TypeError(f"copy must be a bool, got {type(copy).__name__}")
        # a float64 array is kept as it is (copy=False) or copied once; anything else is checked and converted
        if isinstance(value, _np.ndarray) and value.dtype == _np.float64:
            arr = _np.array(value, dtype=_np.float64, copy=True) if copy else _np.asarray(value, dtype=_np.float64)
        else:
            arr = _real_array(value, f"param {name!r}: value")
        node = Node(self, "param", (), _check_shape(arr.shape, f"param {name!r}"), name=name, value=arr)
        self._names[name] = node
        return node

    def const(self, value):
        """A constant (no gradient), e.g. the ``2`` in ``2 * x``.

        Parameters
        ----------
        value : real number or array_like of real numbers, at most 2-D
            Kept as a float64 copy; ints are converted, finite values only.

        Returns
        -------
        Node

        Raises
        ------
        TypeError
            A bool, complex, string, None or other non-real value (never silently converted).
        GraphError
            A non-finite value, or more than 2 dimensions, or an empty dimension.
        """
        if isinstance(value, (bool, _np.bool_)) or not isinstance(value, (_numbers.Real, _np.ndarray, list, tuple)):
            raise GraphTypeError(f"constants must be real numbers or arrays, got {type(value).__name__}")
        arr = _real_array(value, "constant")
        if not _np.all(_np.isfinite(arr)):
            raise GraphError(f"constant {value!r} is not finite")
        return Node(self, "const", (), _check_shape(arr.shape, "constant"), value=arr)

    def _unary(self, op, x, attrs=None):
        if not isinstance(x, Node):
            raise GraphTypeError(f"{op}: expected a graph node, got {type(x).__name__}")
        if x.graph is not self:
            raise GraphError(f"{op}: {x!r} belongs to another graph")
        shape = () if op == "sum" else x.shape
        return Node(self, op, (x,), shape, attrs=attrs)

    def _loss(self, kind, scores):
        """Internal: a loss node over ``scores`` whose targets are given at run time."""
        if len(scores.shape) != 2:
            raise GraphError(f"loss {kind!r}: scores {scores!r} must be 2-D (batch, outputs)")
        return Node(self, "loss", (scores,), (), attrs={"kind": kind})

    @property
    def inputs(self):
        return [n for n in self.nodes if n.op == "input"]

    @property
    def params(self):
        return [n for n in self.nodes if n.op == "param"]


def upstream(output):
    """Every node the Node ``output`` depends on (itself included), each once: a dict keyed by
    node id."""
    found, stack = {}, [output]
    while stack:
        n = stack.pop()
        if n.id not in found:
            found[n.id] = n
            stack.extend(n.inputs)
    return found


def _graph_of(x, op, other=None):
    if isinstance(x, _Transposed) or isinstance(other, _Transposed):
        raise GraphTypeError(f"{op}: a transposed parameter can only be the right operand of @")
    if not isinstance(x, Node):
        raise GraphTypeError(f"{op}: expected a graph node, got {type(x).__name__}")
    return x.graph


def maximum(a, b):
    """Elementwise ``max(a, b)`` (router gate: the gradient goes to the larger input; ties to
    ``a``; NaN on either side: NaN, and both inputs receive the gradient, as ``torch.maximum``).

    Parameters
    ----------
    a, b : Node or real number or array_like
        At least one a node; the other may be a constant (real numbers, at most 2-D).

    Returns
    -------
    Node
        The numpy broadcast shape of ``a`` and ``b``.

    Raises
    ------
    TypeError
        Neither is a node, or a constant that is not real numbers.
    GraphError
        The shapes do not broadcast, or nodes of two graphs.
    """
    if isinstance(a, Node):
        return a._binary(b, "max")
    _graph_of(b, "maximum", a)     # raises unless b is a node
    return b._binary(a, "max", swap=True)


def gate(name, a, b):
    """Elementwise gate ``name`` of :mod:`fastbp.registry.gates` (``"add"``, ``"mul"``,
    ``"max"``, ``"div"``, ``"pow"``, or an entry registered later) of ``a`` and ``b``,
    with numpy broadcasting; at least one of them a node.

    Parameters
    ----------
    name : str
        The gate's registry name.
    a, b : Node or real number or array_like
        At least one a node; the other may be a constant (at most 2-D).

    Returns
    -------
    Node
        The numpy broadcast shape of ``a`` and ``b``.

    Raises
    ------
    ValueError
        No gate has that name.
    GraphError
        Neither operand is a node of a graph (also a TypeError), or the shapes do not broadcast.
    """
    if not isinstance(name, str):
        raise GraphTypeError(f"gate: name must be a str, got {type(name).__name__}")
    _gates.get(name)            # ValueError naming the known gates
    if isinstance(a, Node):
        return a._binary(b, name)
    _graph_of(b, name, a)
    return b._binary(a, name, swap=True)


def _graph_function(entry):
    """The graph function of a registry activation: ``fastbp.<name>(x, *params)``."""
    def fn(x, *args, **kwargs):
        # a string choice (GELU's approximate) selects the entry the node computes
        chosen, params = _acts.select(entry, entry.name, args, kwargs)
        g = _graph_of(x, entry.name)
        return g._unary(chosen.name, x, {"params": params} if params else None)
    fn.__name__ = fn.__qualname__ = entry.name
    fn.__module__ = __name__
    pdoc = _acts.param_doc(entry)
    fn.__doc__ = (f"``{entry.formula}`` elementwise; gradient ``{entry.dformula}``.\n{_acts.variant_doc(entry)}\n"
                  f"    Parameters\n    ----------\n    x : Node\n        A node of this graph, any shape.\n{pdoc}"
                  f"\n    Returns\n    -------\n    Node\n        Same shape as ``x``.\n")
    fn.__signature__ = _inspect.Signature(
        [_inspect.Parameter("x", _inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [_inspect.Parameter(p.name, _inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default)
           for p in entry.params]
        + ([_inspect.Parameter(entry.choice.name, _inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=entry.choice.default)] if entry.choice is not None else []))
    return fn


for _e in _acts.entries(public=True):
    globals()[_e.name] = _graph_function(_e)
    __all__.append(_e.name)
del _e


def sum(x):  # noqa: A001  (mirrors numpy's name on purpose)
    """The sum of all elements (a scalar); gradient 1 everywhere.

    Parameters
    ----------
    x : Node
        Any shape (a batch dimension included: the sum over every row).

    Returns
    -------
    Node
        Shape ``()``.
    """
    return _graph_of(x, "sum")._unary("sum", x)


def dropout(x, p=0.5):
    """Inverted dropout: each element zeroed with probability ``p`` in training, the
    others scaled by ``1 / (1 - p)``; the identity in evaluation (``predict``).

    The mask is drawn by a counter-based generator keyed by the step's seed,
    the dropout's position in the graph, the number of updates applied and the
    element's index (:mod:`fastbp._rng`): the same on the CPU and the GPU, at
    any thread count, and after a checkpoint is loaded.  Gradient: ``dx = dy * mask / (1 - p)``.

    Parameters
    ----------
    x : Node
        A node of this graph, any shape.
    p : float, default 0.5
        Probability of an element being zeroed, in [0, 1] (``p=1``: zeros, as PyTorch).

    Returns
    -------
    Node
        Same shape as ``x``; ``x`` itself when ``p == 0`` (no instruction: bitwise no dropout).

    Raises
    ------
    TypeError
        ``p`` is not a real number.
    ValueError
        ``p`` is outside [0, 1].
    """
    p = dropout_probability(p)
    g = _graph_of(x, "dropout")
    if p == 0.0:
        return x
    return g._unary("dropout", x, {"p": p})


__all__.append("dropout")


def _norm_affine_inputs(op, x, n, weight, bias):
    """The node's inputs ``(x, [weight], [bias])``, each affine parameter a node of
    ``x``'s graph of shape ``(n,)``."""
    inputs = [x]
    for what, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, Node):
            raise GraphTypeError(f"{op}: {what} must be a graph node (a parameter of shape ({n},)) or None, "
                             f"got {type(p).__name__}")
        if p.graph is not x.graph:
            raise GraphError(f"{op}: {what} {p!r} belongs to another graph than {x!r}")
        if p.shape != (n,):
            raise GraphError(f"{op}: {what} {p!r} has shape {_fmt_shape(p.shape)}, expected ({n},)")
        inputs.append(p)
    return inputs


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Layer normalisation over the last dimension (PyTorch's ``F.layer_norm``).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, the mean and the
    biased variance taken over each row's ``n`` features.

    Parameters
    ----------
    x : Node, shape (batch, n) or (n,)
    weight, bias : Node of shape (n,), optional
        Parameters of the same graph (``None``: 1 and 0).
    eps : float, default 1e-5

    Returns
    -------
    Node
        Same shape as ``x``.  Gradient: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``
        with ``g = dy * weight``, ``xhat`` the normalised row; ``dweight = sum dy * xhat``,
        ``dbias = sum dy``.
    """
    g = _graph_of(x, "layer_norm")
    if len(x.shape) not in (1, 2):
        raise GraphError(f"layer_norm: {x!r} must be 1-D or 2-D, got shape {_fmt_shape(x.shape)}")
    n = x.shape[-1]
    inputs = _norm_affine_inputs("layer_norm", x, n, weight, bias)
    attrs = {"eps": _norm_eps("layer_norm", eps), "has_w": weight is not None, "has_b": bias is not None}
    return Node(g, "layer_norm", inputs, x.shape, attrs=attrs)


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, eps=1e-5, momentum=0.1,
               track_running_stats=True, num_batches_tracked=0, name=None):
    """Batch normalisation of each column over the minibatch (PyTorch's ``BatchNorm1d``).

    In training calls (a step, ``loss_and_grads``, ``fit``, :func:`fastbp.grad`)
    each feature is normalised with the minibatch's mean and biased variance,
    and the running statistics are updated with the *unbiased* variance:
    ``running = (1 - momentum) * running + momentum * batch`` (``momentum=None``:
    the cumulative average, ``1 / num_batches_tracked``).  In eval calls
    (``predict``, validation) the running statistics normalise.  Without
    ``track_running_stats`` the batch statistics are used in both.

    Parameters
    ----------
    x : Node, shape (batch, n)
    weight, bias : Node of shape (n,), optional
        Parameters of the same graph (``None``: 1 and 0).
    running_mean, running_var : array_like of shape (n,), optional
        Initial running statistics (default 0 and 1); they live in the compiled
        step (``step.buffers``), are not trained, and are saved in checkpoints.
    eps : float, default 1e-5
        Added to the variance; > 0 (PyTorch's ``batch_norm`` refuses ``eps <= 0`` in training).
    momentum : float in [0, 1] or None, default 0.1
    track_running_stats : bool, default True
    num_batches_tracked : int, default 0
    name : str, optional
        The node's name: the running statistics are ``step.buffers[name + ".running_mean"]`` ...

    Returns
    -------
    Node
        Same shape as ``x``.  Gradient (batch statistics):
        ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` over each column,
        ``g = dy * weight``; with running statistics ``dx = g * rstd``.

    Notes
    -----
    A training call with a minibatch of one row raises ValueError ("Expected
    more than 1 value per channel when training"), as PyTorch does.  Under
    MPI (:class:`fastbp.distributed.DistributedStep`) each rank normalises with
    the statistics of its own rows and keeps its own running statistics, like
    PyTorch's DistributedDataParallel without SyncBatchNorm.
    """
    g = _graph_of(x, "batch_norm")
    if len(x.shape) != 2:
        raise GraphError(f"batch_norm: {x!r} must be 2-D (batch, features), got shape {_fmt_shape(x.shape)}")
    n = x.shape[-1]
    inputs = _norm_affine_inputs("batch_norm", x, n, weight, bias)
    momentum = _scalars.real("momentum", momentum, "batch_norm", low=0.0, high=1.0, or_none=True)
    if not isinstance(track_running_stats, (bool, _np.bool_)):
        raise TypeError(f"batch_norm: track_running_stats must be a bool, got {type(track_running_stats).__name__}")
    stats = []
    for what, v, default in (("running_mean", running_mean, 0.0), ("running_var", running_var, 1.0)):
        arr = _np.full(n, default) if v is None else _real_array(v, f"batch_norm: {what}")
        if arr.shape != (n,):
            raise ValueError(f"batch_norm: {what} must have shape ({n},), got {arr.shape}")
        if not _np.all(_np.isfinite(arr)):
            raise ValueError(f"batch_norm: {what} must be finite")
        stats.append(arr)
    if isinstance(num_batches_tracked, bool) or not isinstance(num_batches_tracked, _numbers.Integral):
        raise TypeError(f"batch_norm: num_batches_tracked must be an int, got {type(num_batches_tracked).__name__}")
    if num_batches_tracked < 0:
        raise ValueError(f"batch_norm: num_batches_tracked must be >= 0, got {num_batches_tracked}")
    attrs = {"eps": _norm_eps("batch_norm", eps, training=True), "has_w": weight is not None, "has_b": bias is not None,
             "momentum": momentum, "track": bool(track_running_stats), "running_mean": stats[0],
             "running_var": stats[1], "num_batches_tracked": int(num_batches_tracked)}
    if name is not None:
        g._unique(name, "batch_norm")       # before the node: a rejected name adds none
    node = Node(g, "batch_norm", inputs, x.shape, name=name, attrs=attrs)
    if name is not None:
        g._names[name] = node
    return node


__all__ += ["layer_norm", "batch_norm"]
