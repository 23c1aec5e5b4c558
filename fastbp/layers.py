"""Layers, in the style of stax: each layer knows its output width and how to
add itself to a :class:`~fastbp.graph.Graph`.

The activation layers (``ReLU``, ``Sigmoid``, ``Tanh``, ...) are generated,
one class per entry of :mod:`fastbp.registry.activations`, named after its
``layer`` field, taking its parameters (e.g. ``negative_slope``).

A :class:`Sequential` model is nothing but a graph builder: ``Linear`` emits
``x @ W + b`` and the activations emit their gates, and the graph compiler
fuses each matmul + bias + activation chain into one linear kernel.  There
is no second code path for layer models.
"""
from __future__ import annotations

import operator as _operator

import numpy as _np

from . import _validate as _v
from . import graph as _g
from .registry import activations as _acts
from ._norm_layers import _NORM_TYPES, BatchNorm1d, LayerNorm, _Norm, _norm_from_spec
from ._layer_base import Layer
from ._act_layers import _Activation, _layer_class

__all__ = ["Linear", "Sequential", "Dropout", "Residual", "LayerNorm", "BatchNorm1d"]


def __dir__():     # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)


class Linear(Layer):
    """Fully connected layer ``y = x W + b``.

    Parameters
    ----------
    in_features, out_features : int
        ``W`` has shape ``(in_features, out_features)``, ``b`` ``(out_features,)``.
    bias : bool, default True
    init : {None, "he", "glorot", "sklearn"} or callable, default None
        How ``W`` (and ``b``) are initialised when the model is compiled:

        * None: the rule of the activation that follows (its registry entry's
          ``init``): He after a ReLU, Glorot otherwise (and when no activation
          follows);
        * ``"he"``: normal, ``std = sqrt(2 / in_features)`` (PyTorch's
          ``kaiming_normal_`` for ReLU); ``b`` zero;
        * ``"glorot"``: uniform in ``+-sqrt(6 / (in + out))`` (Xavier); ``b`` zero;
        * ``"sklearn"``: scikit-learn's MLP rule: ``W`` and ``b`` uniform in
          ``+-sqrt(factor / (in + out))``, factor 2 before a sigmoid (and on
          the output layer of a model whose hidden layers end in sigmoids), else 6;
        * a callable ``init(rng, in_features, out_features)`` returning ``W``
          of shape ``(in_features, out_features)`` (finite reals; ``rng`` a
          seeded :class:`numpy.random.Generator`); ``b`` zero.

        Checkpoints keep the weights, not the rule (a callable is not saved).
    """

    INIT_RULES = ("he", "glorot", "sklearn")            #: the named rules of ``init=``
    _FIELDS = dict(in_features="in_features", out_features="out_features", bias="bias", init_rule="init",
                   layout="_layout")        # (set after construction: checked, fastbp._layer_base.Layer)

    def __init__(self, in_features, out_features, bias=True, *, init=None, _layout="in_out"):
        # one error policy (fastbp._validate): a wrong type is a TypeError, a wrong value a ValueError
        self.in_features = _v.positive_int("Linear: in_features", in_features)
        self.out_features = _v.positive_int("Linear: out_features", out_features)
        self.bias = _v.boolean("Linear: bias", bias)
        if init is not None and not callable(init):
            if not isinstance(init, str):
                raise TypeError(f"Linear: init must be None, one of {list(self.INIT_RULES)} or a callable, "
                                f"got {type(init).__name__}")
            if init not in self.INIT_RULES:
                raise ValueError(f"Linear: init must be None, one of {list(self.INIT_RULES)} or a callable, "
                                 f"got {init!r}")
        self.init_rule = init
        if _layout not in ("in_out", "out_in"):
            raise ValueError(f"Linear: unknown weight layout {_layout!r}")
        self.layout = _layout

    def _out_width(self, in_features):
        if in_features != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) receives "
                             f"{in_features} features from the previous layer")
        return self.out_features

    @property
    def weight_shape(self):
        if self.layout == "out_in":
            return (self.out_features, self.in_features)
        return (self.in_features, self.out_features)

    def init(self, rng, next_activation):
        """Initial weights and bias in float64 for the activation that follows.

        Parameters
        ----------
        rng : numpy.random.Generator
        next_activation : str or None
            The registry name of the activation after the layer (it picks the
            default rule: He for ReLU's family, Glorot otherwise), or None.

        Returns
        -------
        W : ndarray of float64, shape (in_features, out_features)
            (``(out_features, in_features)`` for a layer imported from PyTorch's layout.)
        b : ndarray of float64, shape (out_features,), or None without a bias
        """
        fan_in, fan_out = self.in_features, self.out_features
        rule = self.init_rule
        if rule is None:
            rule = _acts.get(next_activation).init if next_activation is not None else "glorot"
        b = _np.zeros(fan_out) if self.bias else None
        if callable(rule):
            W = _np.array(rule(rng, fan_in, fan_out), dtype=_np.float64)
            if W.shape != (fan_in, fan_out) or not _np.isfinite(W).all():
                raise ValueError(f"Linear({fan_in}, {fan_out}): init returned an array of shape {W.shape}; "
                                 f"expected finite values of shape {(fan_in, fan_out)}")
        elif rule == "he":
            W = rng.standard_normal((fan_in, fan_out))
            W *= _np.sqrt(2.0 / fan_in)       # in place: no second array of the layer's size
        elif rule == "sklearn":
            factor = 2.0 if next_activation == "sigmoid" else 6.0
            a = _np.sqrt(factor / (fan_in + fan_out))
            W = rng.uniform(-a, a, size=(fan_in, fan_out))
            if self.bias:
                b = rng.uniform(-a, a, size=fan_out)
        else:
            a = _np.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-a, a, size=(fan_in, fan_out))
        if self.layout == "out_in":
            W = _np.ascontiguousarray(W.T)
        return W, b

    def build(self, g, x, prefix, W, b):
        """Add ``x @ W + b`` to graph ``g`` (the compiler's layer interface).

        Parameters
        ----------
        g : Graph
        x : Node, shape (batch, in_features)
        prefix : str
            The layer's name in the model: its parameters are ``f"{prefix}.W"`` and ``f"{prefix}.b"``.
        W, b : ndarray
            Their initial values (:meth:`init`), kept by the graph without a copy.

        Returns
        -------
        Node, shape (batch, out_features)
        """
        # the initial values are the caller's fresh arrays: the graph keeps them without a copy
        w = g.param(f"{prefix}.W", W, copy=False)
        y = x @ (w.T if self.layout == "out_in" else w)
        if self.bias:
            y = y + g.param(f"{prefix}.b", b, copy=False)
        return y

    def spec(self):
        d = {"type": "Linear", "in_features": self.in_features, "out_features": self.out_features,
             "bias": self.bias, "layout": self.layout}
        if isinstance(self.init_rule, str):
            d["init"] = self.init_rule
        return d

    def __repr__(self):
        init = "" if self.init_rule is None else f", init={self.init_rule!r}"
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias}{init})"


class Dropout(Layer):
    """Inverted dropout (PyTorch's ``torch.nn.Dropout``): in training each element is
    zeroed with probability ``p`` and the others scaled by ``1 / (1 - p)``; in
    evaluation (``predict``) the identity.

    Parameters
    ----------
    p : float, default 0.5
        Probability of an element being zeroed, in [0, 1].  ``p=0`` emits no
        instruction (bitwise the model without it); ``p=1`` gives zeros.
    inplace : bool, default False
        Accepted for PyTorch's signature; it changes nothing (the fused step
        writes every layer's output into a buffer of its own).

    Notes
    -----
    The mask is not drawn from a stateful generator but computed from the
    step's seed (``fastbp.compile(..., seed=...)``), the dropout's position in
    the model, the number of updates applied and the element's index
    (:mod:`fastbp._rng`): a step is reproducible, resumable from a checkpoint
    bitwise, the same at any thread count and on the CPU and the GPU.  The
    backward recomputes the mask (no mask is stored).  Calls without an update
    in between (``loss_and_grads``, ``fastbp.grad``) see the same mask.
    """

    _FIELDS = {"p": "p", "inplace": "inplace"}

    def __init__(self, p=0.5, inplace=False):
        self.p = _g.dropout_probability(p, "Dropout")
        self.inplace = _v.boolean("Dropout: inplace", inplace)

    def build(self, g, x, prefix, W=None, b=None):
        """Add inverted dropout of ``x`` to graph ``g`` (the compiler's layer interface).

        Parameters
        ----------
        g : Graph
        x : Node, shape (batch, features)
        prefix : str
            The layer's name in the model (unused: no parameters).
        W, b : None
            Unused (the interface of :meth:`fastbp.Linear.build`).

        Returns
        -------
        Node
            Of ``x``'s shape.
        """
        return _g.dropout(x, self.p)

    def spec(self):
        return {"type": "Dropout", "p": self.p}

    def __repr__(self):
        return f"Dropout(p={self.p!r})"


_LAYER_TYPES = {"Linear": Linear}
for _e in _acts.layer_entries():
    globals()[_e.layer] = _LAYER_TYPES[_e.layer] = _layer_class(_e)
    __all__.append(_e.layer)
del _e


def layer_names():
    """"Linear, ReLU, Sigmoid or Tanh": the layer classes, for messages (the registry's order)."""
    names = ["Linear"] + [e.layer for e in _acts.entries(public=True)] + ["Identity", "Dropout"] + \
        list(_NORM_TYPES) + ["Residual"]
    names = list(dict.fromkeys(names))
    return ", ".join(names[:-1]) + " or " + names[-1]


def layer_class(entry):
    """The layer class of registry entry ``entry`` (made on first use for
    entries registered after import, e.g. by tests)."""
    cls = _LAYER_TYPES.get(entry.layer)
    if cls is None or cls.entry is not entry:
        cls = _LAYER_TYPES[entry.layer] = _layer_class(entry)
    return cls


class Residual(Layer):
    """A residual block: ``x + f(x)``, ``f`` the chain of ``layers`` (as in :class:`Sequential`).

    Built on the gate graph: ``f``'s layers, then an ``add`` gate with the
    block's input (whose gradient is the sum of both paths').

    Parameters
    ----------
    *layers : Linear, activation layers, Dropout, LayerNorm, BatchNorm1d or Residual
        ``f``; it must map the block's width to itself (checked when the
        model is built: a ValueError naming the block otherwise).

    Examples
    --------
    >>> import fastbp
    >>> model = fastbp.Sequential(fastbp.Linear(8, 16), fastbp.ReLU(),
    ...                           fastbp.Residual(fastbp.Linear(16, 16), fastbp.ReLU()),
    ...                           fastbp.Linear(16, 3))

    Notes
    -----
    PyTorch has no such module; ``from_torch`` does not convert skip
    connections written in a module's ``forward``.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        layers = _flatten(layers)
        if not layers:
            raise ValueError("Residual needs at least one layer (f in x + f(x))")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Linear, _Activation, Dropout, Residual, _Norm)):
                raise TypeError(f"Residual: layer {i} must be a fastbp layer ({layer_names()}) or a "
                                f"Sequential, got {type(layer).__name__}")
        self.layers = tuple(layers)

    def _out_width(self, in_features):
        width = in_features
        for layer in self.layers:
            width = layer._out_width(width)
        if width != in_features:
            raise ValueError(f"{self!r}: f maps {in_features} features to {width}; the block x + f(x) "
                             f"needs f to keep the width {in_features}")
        return in_features

    def build(self, g, x, prefix, params):
        """Add ``x + f(x)`` to graph ``g`` (the compiler's layer interface).

        Parameters
        ----------
        g : Graph
        x : Node, shape (batch, features)
        prefix : str
            The block's name in the model: its layer ``j`` is ``f"{prefix}.{j}"``.
        params : dict of str to ndarray
            The model's initial parameters by name (:meth:`Sequential.init_params`).

        Returns
        -------
        Node
            Of ``x``'s shape.

        Raises
        ------
        GraphError
            ``f`` changes the shape of ``x``.
        """
        h = x
        for j, layer in enumerate(self.layers):
            key = f"{prefix}.{j}"
            if isinstance(layer, Residual):
                h = layer.build(g, h, key, params)
            elif isinstance(layer, _Norm):
                h = _build_norm(layer, g, h, key, params)
            else:
                h = layer.build(g, h, key, params.get(f"{key}.W"), params.get(f"{key}.b"))
        if h.shape != x.shape:
            raise _g.GraphError(f"residual block {prefix} {self!r}: f(x) has shape {h.shape}, x {x.shape}")
        return x + h

    def spec(self):
        return {"type": "Residual", "layers": [layer.spec() for layer in self.layers]}

    def __repr__(self):
        return "Residual(" + ", ".join(map(repr, self.layers)) + ")"


def linear_layers(layers, prefix=""):
    """``(name prefix, Linear, the registry name of the activation after it or None)``
    for every Linear of ``layers``, in order, inside Residual blocks too (their names
    ``"i.j"``): the order in which the initial weights are drawn."""
    for i, layer in enumerate(layers):
        key = f"{prefix}{i}"
        if isinstance(layer, Residual):
            yield from linear_layers(layer.layers, key + ".")
        elif isinstance(layer, Linear):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            yield key, layer, (nxt.op if isinstance(nxt, _Activation) else None)


def init_order(layers):
    """:func:`linear_layers` with the activation each Linear's initial weights are drawn
    for: for ``init="sklearn"``, a Linear that no activation follows (the output layer)
    takes the model's, the last one before it (scikit-learn's factor is one per model:
    2 for every layer of a logistic MLP)."""
    last = None
    for key, layer, act in linear_layers(layers):
        if act is not None:
            last = act
        elif layer.init_rule == "sklearn":
            act = last
        yield key, layer, act


def _first_linear(layers):
    for layer in layers:
        if isinstance(layer, Linear):
            return layer
        if isinstance(layer, Residual):
            inner = _first_linear(layer.layers)
            if inner is not None:
                return inner
    return None


def _flatten(layers):
    """``layers`` with each nested :class:`Sequential` replaced by its layers (the same model:
    ``torch.nn.Sequential`` nests them as submodules, fastbp keeps one chain)."""
    out = []
    for layer in layers:
        out.extend(layer.layers if isinstance(layer, Sequential) else (layer,))
    return tuple(out)


class Sequential(Layer):
    """A chain of layers.

    Parameters
    ----------
    *layers : Linear, activation (ReLU, Sigmoid, Tanh, ...), Identity, Dropout, LayerNorm, BatchNorm1d, Residual or Sequential layers
        At least one :class:`Linear`; widths must chain.  A nested Sequential
        stands for its layers (``Sequential(m[:2], m[2:])`` is ``m``'s chain).

    Notes
    -----
    Layers are descriptions, not weight holders (a compiled step owns the
    weights): the same layer object at two positions gives two layers with
    their own weights, never tied ones.  Like ``torch.nn.Sequential``:
    ``len(model)``, ``model[i]`` (a layer), ``model[i:j]`` (a Sequential of
    those layers: it needs a Linear too, as every Sequential, to know its
    width) and iteration over the layers (also ``model.layers``, a tuple).
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        layers = _flatten(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Linear, _Activation, Dropout, Residual, _Norm)):
                raise TypeError(f"Sequential: layer {i} must be a fastbp layer ({layer_names()}) or a "
                                f"Sequential, got {type(layer).__name__}")
        first = _first_linear(layers)
        if first is None:
            raise ValueError("Sequential needs at least one Linear layer")
        width = first.in_features
        seen_linear = False             # before the first Linear, the width is the model's input
        for i, layer in enumerate(layers):
            try:
                width = layer._out_width(width)
            except ValueError as e:                 # name the layer by its place
                if not seen_linear:
                    e = str(e).replace("from the previous layer", "from the model's input (the "
                                       "in_features of its first Linear)")
                raise ValueError(f"Sequential layer {i}: {e}") from None
            seen_linear = seen_linear or _first_linear((layer,)) is not None
        self.layers = tuple(layers)
        self.in_features = first.in_features
        self.out_features = width

    def _out_width(self, in_features=None):
        return self.out_features

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        """A layer (``model[i]``), or a Sequential of a slice of them (``model[i:j]``)."""
        if isinstance(index, slice):
            part = self.layers[index]
            if _first_linear(part) is None:
                raise ValueError(f"model[{index.start}:{index.stop}{'' if index.step is None else f':{index.step}'}] "
                                 f"holds no Linear layer ({len(part)} layers): a fastbp Sequential needs one to "
                                 f"know its width")
            return Sequential(*part)
        # PyTorch's Sequential's errors: an integer index (operator.index) within [-n, n)
        try:
            i = _operator.index(index)
        except TypeError:
            raise TypeError(f"Sequential indices must be integers or slices, not {type(index).__name__}") from None
        n = len(self.layers)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range (a Sequential of {n} layers)")
        return self.layers[i]

    def init_params(self, seed):
        """Seeded initial parameters of every layer.

        Parameters
        ----------
        seed : int or None
            Seed of ``numpy.random.default_rng``.

        Returns
        -------
        dict of str to ndarray of float64
            ``"{i}.W"``, ``"{i}.b"`` for Linear layer ``i`` (``"{i}.{j}.W"`` inside a Residual
            block ``i``), ``"{i}.weight"``, ``"{i}.bias"`` for a normalisation layer.
        """
        rng = _np.random.default_rng(seed)
        params = {}
        for key, layer, act in init_order(self.layers):
            W, b = layer.init(rng, act)
            params[f"{key}.W"] = W
            if b is not None:
                params[f"{key}.b"] = b
        for key, layer in _norm_layers(self.layers):
            w, b = layer.init()     # draws nothing: the Linear layers' weights are unchanged
            if w is not None:
                params[f"{key}.weight"] = w
            if b is not None:
                params[f"{key}.bias"] = b
        return params

    def build_graph(self, params):
        """The model as a :class:`~fastbp.graph.Graph`.

        Parameters
        ----------
        params : dict of str to ndarray
            Initial parameters by name (:meth:`init_params`).

        Returns
        -------
        graph : Graph
        x : Node, shape (None, in_features)
            The input (``None``: the batch).
        output : Node, shape (None, out_features)
        """
        g = _g.Graph()
        x = g.input("x", (None, self.in_features))
        h = x
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Residual):
                h = layer.build(g, h, str(i), params)
                continue
            if isinstance(layer, _Norm):
                h = _build_norm(layer, g, h, str(i), params)
                continue
            h = layer.build(g, h, str(i), params.get(f"{i}.W"), params.get(f"{i}.b"))
        return g, x, h

    def flat_layers(self):
        """Every layer, those inside Residual blocks included (not the blocks), in order.

        Returns
        -------
        list of Layer
        """
        return [inner for layer in self.layers
                for inner in (Sequential.flat_layers(layer) if isinstance(layer, Residual) else (layer,))]

    def spec(self):
        return {"type": "Sequential", "layers": [layer.spec() for layer in self.layers]}

    @classmethod
    def from_spec(cls, spec):
        """Rebuild a model from :meth:`spec` output (checkpoints)."""
        if not isinstance(spec, dict) or spec.get("type") != "Sequential":
            raise ValueError("model spec is not a Sequential")
        return cls(*_layers_from_spec(spec.get("layers")))

    def __repr__(self):
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"


def _layers_from_spec(specs):
    """The layers of a list of :meth:`Layer.spec` outputs (ValueError for an unknown type)."""
    if not isinstance(specs, list):
        raise ValueError("model spec: 'layers' is not a list")
    layers = []
    for ls in specs:
        if not isinstance(ls, dict):
            raise ValueError(f"layer spec {ls!r} is not an object")
        t = ls.get("type")
        if not isinstance(t, str):
            raise ValueError(f"layer spec {ls!r} has no 'type' string")
        if t == "Residual":
            if set(ls) != {"type", "layers"}:
                raise ValueError(f"layer 'Residual' in model spec has fields {sorted(ls)}, "
                                 f"expected ['layers', 'type']")
            layers.append(Residual(*_layers_from_spec(ls["layers"])))
        elif t in _NORM_TYPES:
            layers.append(_norm_from_spec(t, ls))
        elif t == "Dropout":
            if set(ls) != {"type", "p"}:
                raise ValueError(f"layer 'Dropout' in model spec has fields {sorted(ls)}, expected ['p', 'type']")
            layers.append(Dropout(ls["p"]))
        elif t == "Linear":
            fields, needed = set(ls) - {"type"}, {"in_features", "out_features", "bias"}
            if not needed <= fields <= needed | {"init", "layout"}:
                raise ValueError(f"layer 'Linear' in model spec has fields {sorted(fields)}: it needs "
                                 f"{sorted(needed)} and may have 'init' and 'layout'")
            layers.append(Linear(ls["in_features"], ls["out_features"], ls["bias"], init=ls.get("init"),
                                 _layout=ls.get("layout", "in_out")))
        elif _acts.lookup(t, "layer") is None:
            raise ValueError(f"unknown layer type {t!r} in model spec")
        else:
            entry = _acts.lookup(t, "layer")
            names = [p.name for p in entry.params] + ([entry.choice.name] if entry.choice else [])
            extra = set(ls) - {"type"} - set(names)
            if extra:
                raise ValueError(f"layer {t!r} in model spec has unknown fields {sorted(extra)}")
            layers.append(layer_class(entry)(**{n: ls[n] for n in names if n in ls}))
    return layers


def _norm_layers(layers, prefix=""):
    """``(name prefix, layer)`` of every LayerNorm / BatchNorm1d of ``layers``, inside
    Residual blocks too."""
    for i, layer in enumerate(layers):
        key = f"{prefix}{i}"
        if isinstance(layer, Residual):
            yield from _norm_layers(layer.layers, key + ".")
        elif isinstance(layer, _Norm):
            yield key, layer


def _build_norm(layer, g, h, key, params):
    """A norm layer in graph ``g``: its weight/bias (and BatchNorm's running statistics from
    ``from_torch``: ``params["<key>.running"]``) from ``params`` when given."""
    if isinstance(layer, BatchNorm1d):
        return layer.build(g, h, key, params.get(f"{key}.weight"), params.get(f"{key}.bias"),
                           params.get(f"{key}.running"))
    return layer.build(g, h, key, params.get(f"{key}.weight"), params.get(f"{key}.bias"))
