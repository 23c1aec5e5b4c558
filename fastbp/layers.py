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

import inspect

import numpy as np

from . import _validate as _v
from . import graph as _g
from .registry import activations as _acts

__all__ = ["Linear", "Sequential"]


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
    ``W`` is initialised when the model is compiled by the rule of the
    activation that follows (its registry entry's ``init``): He (normal,
    ``std = sqrt(2 / in)``) after a ReLU, Glorot/Xavier uniform otherwise
    (and when no activation follows); ``b`` starts at zero.
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
        """Initial ``(W, b)`` in float64 for the activation that follows (its
        registry name, or None)."""
        fan_in, fan_out = self.in_features, self.out_features_
        rule = _acts.get(next_activation).init if next_activation is not None else "glorot"
        if rule == "he":
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
    """Base of the activation layers; each subclass is one registry entry (``entry``)."""
    entry = None

    def __init__(self, *args, **kwargs):
        self.params = self.entry.bind(type(self).__name__, args, kwargs)

    @property
    def op(self):
        """The entry's name (the graph op)."""
        return self.entry.name

    def __getattr__(self, name):
        # the parameters by name (layer.negative_slope)
        entry = type(self).entry
        for p, v in zip(entry.params if entry is not None else (), self.__dict__.get("params", ())):
            if p.name == name:
                return v
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def build(self, g, x, prefix, W=None, b=None):
        return g._unary(self.op, x, {"params": self.params} if self.params else None)

    def spec(self):
        d = {"type": type(self).__name__}
        d.update((p.name, v) for p, v in zip(self.entry.params, self.params))
        return d

    def __repr__(self):
        args = ", ".join(f"{p.name}={v!r}" for p, v in zip(self.entry.params, self.params))
        return f"{type(self).__name__}({args})"


def _layer_class(entry):
    """The layer class of a registry activation."""
    pdoc = "".join(f"    {p.name} : float, default {p.default!r}\n        {p.doc}\n" for p in entry.params)
    doc = (f"Activation layer ``{entry.formula}`` elementwise (local gradient ``{entry.dformula}``).\n\n"
           + (f"    Parameters\n    ----------\n{pdoc}" if pdoc else "")
           + f"\n    PyTorch: ``torch.nn.{entry.torch}``."
           + (f"  scikit-learn: ``activation='{entry.sklearn}'``." if entry.sklearn else ""))
    cls = type(entry.layer, (_Activation,), {"entry": entry, "__doc__": doc, "__module__": __name__,
                                             "__qualname__": entry.layer})
    cls.__signature__ = inspect.Signature(
        [inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default)
         for p in entry.params])
    return cls


class _Norm(Layer):
    """Base of the normalisation layers: affine parameters ``{prefix}.weight``
    (initialised to 1) and ``{prefix}.bias`` (0), trained like every parameter
    (weight decay included, as PyTorch's optimizers apply it to them)."""

    def out_features(self, in_features):
        if in_features != self.num_features:
            raise ValueError(f"{self!r} receives {in_features} features from the previous layer")
        return in_features

    def init(self):
        """Initial ``(weight, bias)`` in float64 (``None`` where the layer has none)."""
        n = self.num_features
        return (np.ones(n) if self._has_w else None), (np.zeros(n) if self._has_b else None)

    def _params(self, g, prefix, weight, bias):
        w0, b0 = self.init()
        w = g.param(f"{prefix}.weight", w0 if weight is None else weight) if self._has_w else None
        b = g.param(f"{prefix}.bias", b0 if bias is None else bias) if self._has_b else None
        return w, b


def _norm_eps(owner, eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not (np.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"{owner}: eps must be a finite number >= 0, got {eps}")
    return eps


class LayerNorm(_Norm):
    """Layer normalisation over the features of each row (``torch.nn.LayerNorm``).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and the
    biased variance of each row of ``x (batch, n)``.  Forward and backward are
    each one fused instruction of the compiled step (statistics pass, then
    normalise + affine).

    Parameters
    ----------
    normalized_shape : int or tuple of one int
        The feature width ``n`` (only the last dimension is normalised).
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learnable ``weight`` (init 1) and ``bias`` (init 0), shape ``(n,)``:
        the step's parameters ``"<i>.weight"`` and ``"<i>.bias"``.
    bias : bool, default True
        With ``elementwise_affine``: whether there is a bias (PyTorch >= 2.1).
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        shape = normalized_shape
        if isinstance(shape, (tuple, list)):
            if len(shape) != 1:
                raise ValueError(f"LayerNorm: normalized_shape must be an int or a 1-tuple (the feature "
                                 f"width; fastbp normalises the last dimension only), got {tuple(shape)!r}")
            shape = shape[0]
        self.num_features = _v.positive_int("LayerNorm: normalized_shape", shape)
        self.normalized_shape = (self.num_features,)
        self.eps = _norm_eps("LayerNorm", eps)
        self.elementwise_affine = _v.boolean("LayerNorm: elementwise_affine", elementwise_affine)
        self.bias_ = _v.boolean("LayerNorm: bias", bias)
        self._has_w = self.elementwise_affine
        self._has_b = self.elementwise_affine and self.bias_

    def build(self, g, x, prefix, weight=None, bias=None):
        w, b = self._params(g, prefix, weight, bias)
        return _g.layer_norm(x, w, b, eps=self.eps)

    def spec(self):
        return {"type": "LayerNorm", "normalized_shape": self.num_features, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias_}

    def __repr__(self):
        return (f"LayerNorm(({self.num_features},), eps={self.eps}, elementwise_affine={self.elementwise_affine}"
                + ("" if self.bias_ else ", bias=False") + ")")


class BatchNorm1d(_Norm):
    """Batch normalisation of each feature over the minibatch (``torch.nn.BatchNorm1d``).

    In training calls (``step(x, y)``, ``loss_and_grads``, ``fit``) each feature
    is normalised with the minibatch's mean and biased variance, and the
    running statistics are updated with the unbiased variance,
    ``running = (1 - momentum) * running + momentum * batch``; ``predict``
    and the validation of ``fit`` (eval mode) normalise with the running
    statistics.  They live in the step's arena (``step.buffers["<i>.running_mean"]``,
    ``"<i>.running_var"``, ``"<i>.num_batches_tracked"``), are not trained, and
    are saved in checkpoints.  A running update happens only in a call whose
    loss and gradients are finite (a failed step changes nothing).

    Parameters
    ----------
    num_features : int
    eps : float, default 1e-5
    momentum : float in [0, 1] or None, default 0.1
        ``None``: the cumulative average (``1 / num_batches_tracked``).
    affine : bool, default True
        Learnable ``weight`` (init 1) and ``bias`` (init 0).
    track_running_stats : bool, default True
        False: batch statistics in eval mode too, no running statistics.

    Notes
    -----
    Input ``(batch, num_features)`` only.  A training call with one row raises
    ValueError, like PyTorch.  Under MPI each rank normalises with its own
    rows' statistics and keeps its own running statistics (PyTorch DDP's
    default, without SyncBatchNorm); ranks' running statistics may differ.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        self.num_features = _v.positive_int("BatchNorm1d: num_features", num_features)
        self.eps = _norm_eps("BatchNorm1d", eps)
        if momentum is not None:
            if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.integer, np.floating)):
                raise TypeError(f"BatchNorm1d: momentum must be a real number or None, got {type(momentum).__name__}")
            momentum = float(momentum)
            if not 0.0 <= momentum <= 1.0:
                raise ValueError(f"BatchNorm1d: momentum must be in [0, 1] or None, got {momentum}")
        self.momentum = momentum
        self.affine = _v.boolean("BatchNorm1d: affine", affine)
        self.track_running_stats = _v.boolean("BatchNorm1d: track_running_stats", track_running_stats)
        self._has_w = self._has_b = self.affine

    def build(self, g, x, prefix, weight=None, bias=None, running=None):
        w, b = self._params(g, prefix, weight, bias)
        rm, rv, nbt = running if running is not None else (None, None, 0)
        return _g.batch_norm(x, w, b, rm, rv, eps=self.eps, momentum=self.momentum,
                             track_running_stats=self.track_running_stats, num_batches_tracked=nbt, name=prefix)

    def spec(self):
        return {"type": "BatchNorm1d", "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine, "track_running_stats": self.track_running_stats}

    def __repr__(self):
        return (f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats})")


_NORM_TYPES = {"LayerNorm": LayerNorm, "BatchNorm1d": BatchNorm1d}
__all__ += ["LayerNorm", "BatchNorm1d"]

_LAYER_TYPES = {"Linear": Linear}
for _e in _acts.entries(public=True):
    globals()[_e.layer] = _LAYER_TYPES[_e.layer] = _layer_class(_e)
    __all__.append(_e.layer)
del _e


def layer_names():
    """"Linear, ReLU, Sigmoid or Tanh": the layer classes, for messages (the registry's order)."""
    names = ["Linear"] + [e.layer for e in _acts.entries(public=True)] + list(_NORM_TYPES)
    return ", ".join(names[:-1]) + " or " + names[-1]


def layer_class(entry):
    """The layer class of registry entry ``entry`` (made on first use for
    entries registered after import, e.g. by tests)."""
    cls = _LAYER_TYPES.get(entry.layer)
    if cls is None or cls.entry is not entry:
        cls = _LAYER_TYPES[entry.layer] = _layer_class(entry)
    return cls


class Sequential(Layer):
    """A chain of layers.

    Parameters
    ----------
    *layers : Linear or activation layers (ReLU, Sigmoid, Tanh, ...)
        At least one :class:`Linear`; widths must chain.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Linear, _Activation, _Norm)):
                raise TypeError(f"Sequential: layer {i} must be a fastbp {layer_names()}, got {type(layer).__name__}")
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
            elif isinstance(layer, _Norm):
                w, b = layer.init()     # draws nothing: the Linear layers' weights are unchanged
                if w is not None:
                    params[f"{i}.weight"] = w
                if b is not None:
                    params[f"{i}.bias"] = b
        return params

    def build_graph(self, params):
        """The model as a :class:`~fastbp.graph.Graph`: ``(graph, x, output)``."""
        g = _g.Graph()
        x = g.input("x", (None, self.in_features))
        h = x
        for i, layer in enumerate(self.layers):
            if isinstance(layer, BatchNorm1d):
                run = params.get(f"{i}.running")       # (mean, var, batches tracked) from from_torch
                h = layer.build(g, h, str(i), params.get(f"{i}.weight"), params.get(f"{i}.bias"), run)
            elif isinstance(layer, _Norm):
                h = layer.build(g, h, str(i), params.get(f"{i}.weight"), params.get(f"{i}.bias"))
            else:
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
            if t in _NORM_TYPES:
                layers.append(_norm_from_spec(t, ls))
                continue
            entry = _acts.lookup(t, "layer") if t != "Linear" else None
            if t != "Linear" and entry is None:
                raise ValueError(f"unknown layer type {t!r} in model spec")
            if t == "Linear":
                layers.append(Linear(ls["in_features"], ls["out_features"], ls["bias"],
                                     _layout=ls.get("layout", "in_out")))
            else:
                extra = set(ls) - {"type"} - {p.name for p in entry.params}
                if extra:
                    raise ValueError(f"layer {t!r} in model spec has unknown fields {sorted(extra)}")
                layers.append(layer_class(entry)(**{p.name: ls[p.name] for p in entry.params if p.name in ls}))
        return cls(*layers)

    def __repr__(self):
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"


def _norm_from_spec(t, ls):
    """A LayerNorm / BatchNorm1d from its :meth:`spec`."""
    cls = _NORM_TYPES[t]
    keys = {"LayerNorm": ("normalized_shape", "eps", "elementwise_affine", "bias"),
            "BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats")}[t]
    extra = set(ls) - {"type"} - set(keys)
    if extra:
        raise ValueError(f"layer {t!r} in model spec has unknown fields {sorted(extra)}")
    return cls(**{k: ls[k] for k in keys if k in ls})
