"""Layers, in the style of stax: each layer knows its output width and how to
add itself to a :class:`~fastbp.graph.Graph`.

A :class:`Sequential` model is nothing but a graph builder: ``Linear`` emits
``x @ W + b`` and the activations emit their gates, and the graph compiler
fuses each matmul + bias + activation chain into one linear kernel.  There
is no second code path for layer models.
"""
from __future__ import annotations

import numpy as np

from . import _validate as _v
from . import graph as _g

__all__ = ["Linear", "ReLU", "Sigmoid", "Tanh", "Sequential"]


class Layer:
    """Base class of fastbp layers."""

    def out_features(self, in_features):
        return in_features

    def spec(self):
        """A JSON-able description (used by checkpoints)."""
        return {"type": type(self).__name__}


class Linear(Layer):
    """Fully connected layer ``y = x W + b``.

    Parameters
    ----------
    in_features, out_features : int
        ``W`` has shape ``(in_features, out_features)``, ``b`` ``(out_features,)``.
    bias : bool, default True

    Notes
    -----
    ``W`` is initialised when the model is compiled: He (normal,
    ``std = sqrt(2 / in)``) when a ReLU follows, Glorot/Xavier uniform
    otherwise; ``b`` starts at zero.
    """

    def __init__(self, in_features, out_features, bias=True, *, _layout="in_out"):
        # one error policy (fastbp._validate): a wrong type is a TypeError, a wrong value a ValueError
        self.in_features = _v.positive_int("Linear: in_features", in_features)
        self.out_features_ = _v.positive_int("Linear: out_features", out_features)
        self.bias = _v.boolean("Linear: bias", bias)
        if _layout not in ("in_out", "out_in"):
            raise ValueError(f"Linear: unknown weight layout {_layout!r}")
        self.layout = _layout

    def out_features(self, in_features):
        if in_features != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features_}) receives "
                             f"{in_features} features from the previous layer")
        return self.out_features_

    @property
    def weight_shape(self):
        if self.layout == "out_in":
            return (self.out_features_, self.in_features)
        return (self.in_features, self.out_features_)

    def init(self, rng, next_activation):
        """Initial ``(W, b)`` in float64 for the activation that follows."""
        fan_in, fan_out = self.in_features, self.out_features_
        if next_activation == "relu":
            W = rng.standard_normal((fan_in, fan_out))
            W *= np.sqrt(2.0 / fan_in)       # in place: no second array of the layer's size
        else:
            a = np.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-a, a, size=(fan_in, fan_out))
        if self.layout == "out_in":
            W = np.ascontiguousarray(W.T)
        b = np.zeros(fan_out) if self.bias else None
        return W, b

    def build(self, g, x, prefix, W, b):
        # the initial values are the caller's fresh arrays: the graph keeps them without a copy
        w = g.param(f"{prefix}.W", W, copy=False)
        y = x @ (w.T if self.layout == "out_in" else w)
        if self.bias:
            y = y + g.param(f"{prefix}.b", b, copy=False)
        return y

    def spec(self):
        return {"type": "Linear", "in_features": self.in_features, "out_features": self.out_features_,
                "bias": self.bias, "layout": self.layout}

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features_}, bias={self.bias})"


class _Activation(Layer):
    op = None

    def build(self, g, x, prefix, W=None, b=None):
        return g._unary(self.op, x)

    def __repr__(self):
        return f"{type(self).__name__}()"


class ReLU(_Activation):
    """``max(x, 0)``."""
    op = "relu"


class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``."""
    op = "sigmoid"


class Tanh(_Activation):
    """``tanh(x)``."""
    op = "tanh"


_LAYER_TYPES = {"Linear": Linear, "ReLU": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh}


class Sequential(Layer):
    """A chain of layers.

    Parameters
    ----------
    *layers : Linear, ReLU, Sigmoid or Tanh
        At least one :class:`Linear`; widths must chain.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Linear, _Activation)):
                raise TypeError(f"Sequential: layer {i} must be a fastbp Linear, ReLU, Sigmoid or Tanh, "
                                f"got {type(layer).__name__}")
        linears = [layer for layer in layers if isinstance(layer, Linear)]
        if not linears:
            raise ValueError("Sequential needs at least one Linear layer")
        width = linears[0].in_features
        for layer in layers:
            width = layer.out_features(width)
        self.layers = tuple(layers)
        self.in_features = linears[0].in_features
        self.out_features_ = width

    def out_features(self, in_features=None):
        return self.out_features_

    def init_params(self, seed):
        """Seeded initial parameters: a dict ``name -> float64 array``."""
        rng = np.random.default_rng(seed)
        params = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
                act = nxt.op if isinstance(nxt, _Activation) else None
                W, b = layer.init(rng, act)
                params[f"{i}.W"] = W
                if b is not None:
                    params[f"{i}.b"] = b
        return params

    def build_graph(self, params):
        """The model as a :class:`~fastbp.graph.Graph`: ``(graph, x, output)``."""
        g = _g.Graph()
        x = g.input("x", (None, self.in_features))
        h = x
        for i, layer in enumerate(self.layers):
            h = layer.build(g, h, str(i), params.get(f"{i}.W"), params.get(f"{i}.b"))
        return g, x, h

    def spec(self):
        return {"type": "Sequential", "layers": [layer.spec() for layer in self.layers]}

    @classmethod
    def from_spec(cls, spec):
        """Rebuild a model from :meth:`spec` output (checkpoints)."""
        if not isinstance(spec, dict) or spec.get("type") != "Sequential":
            raise ValueError("model spec is not a Sequential")
        layers = []
        for ls in spec["layers"]:
            t = ls.get("type")
            if t not in _LAYER_TYPES:
                raise ValueError(f"unknown layer type {t!r} in model spec")
            if t == "Linear":
                layers.append(Linear(ls["in_features"], ls["out_features"], ls["bias"],
                                     _layout=ls.get("layout", "in_out")))
            else:
                layers.append(_LAYER_TYPES[t]())
        return cls(*layers)

    def __repr__(self):
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"
