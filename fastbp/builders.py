"""One builder for "an MLP from layer widths and an activation": :func:`mlp`
(optionally with BatchNorm1d and Dropout in each hidden block).

The estimator, the command line and the benchmarks build their models here,
and :func:`activation_layer` is the ONE place where an activation's name
becomes a layer: looked up in the activation registry
(:mod:`fastbp.registry.activations`) by fastbp's name or scikit-learn's.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _validate as _v
from . import layers as _layers
from ._graph_base import short_repr
from .registry import activations as _acts

__all__ = ["mlp", "activation_layer", "activation_names"]

def _entry(name):
    """The registry entry called ``name`` (fastbp's or scikit-learn's name; "none": the identity), or None."""
    if name == "none":
        return _acts.get("identity")
    return _acts.lookup(name) or _acts.lookup(name, "sklearn")


def _has_layer(entry):
    """Whether a layer stands for ``entry``: its own, or its head's through a Choice."""
    return _acts.variant_of(entry)[0].layer is not None


def activation_names():
    """Every name :func:`activation_layer` accepts, sorted (``"none"`` and scikit-learn's names included;
    not a registered entry without a layer class, which only graphs use)."""
    entries = [e for e in _acts.entries() if _has_layer(e)]
    return sorted({"none"} | {e.name for e in entries} | {e.sklearn for e in entries if e.sklearn})


def activation_layer(name):
    """The activation layer called ``name``, or ``None`` for the identity.

    Parameters
    ----------
    name : str
        A fastbp activation name (a registry entry: ``"relu"``, ``"sigmoid"``,
        ``"tanh"``, ...; ``"none"``) or scikit-learn's name of one
        (``"logistic"``, ``"identity"``).  The layer gets the entry's
        default parameters.

    Returns
    -------
    layer or None
        A new layer instance (``fastbp.ReLU()`` ...); ``None`` for the identity.

    Raises
    ------
    TypeError
        ``name`` is not a str.
    ValueError
        An unknown name (the message lists the valid ones), or an entry
        registered without a layer class.
    """
    if not isinstance(name, str):
        raise TypeError(f"activation must be a str, got {type(name).__name__}")
    entry = _entry(name)
    if entry is None:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(activation_names())}")
    head, value = _acts.variant_of(entry)    # "gelu_tanh": GELU(approximate="tanh")
    if value is not None:
        return _layers.layer_class(head)(**{head.choice.name: value})
    if entry.code == _acts.IDENTITY:
        return None
    if entry.layer is None:     # never the identity in its place
        raise ValueError(f"activation {name!r} was registered without a layer class (layer=None): graphs "
                         f"(fastbp.ops) use it, layers cannot; register it with a layer name; valid: "
                         f"{', '.join(activation_names())}")
    return _layers.layer_class(entry)()


def _check_dropout(p):
    """A checked hidden-block dropout probability: float in [0, 1)."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout must be a real number in [0, 1), got {type(p).__name__}")
    if not 0 <= p < 1:            # (compared before float(): an int too large for a float)
        raise ValueError(f"dropout must be in [0, 1), got {short_repr(p)}")
    return float(p)


def mlp(widths, activation="relu", *, bias=True, batchnorm=False, dropout=0.0):
    """A :class:`~fastbp.Sequential` MLP: ``Linear`` layers with ``activation`` between them.

    Every hidden block is ``Linear -> [BatchNorm1d] -> activation -> [Dropout(dropout)]``;
    the last layer is a plain ``Linear`` (the logits).

    Parameters
    ----------
    widths : sequence of int
        ``(in_features, hidden..., out_features)``: at least two widths;
        layer ``i`` maps ``widths[i]`` to ``widths[i + 1]`` features.
    activation : str, default "relu"
        Applied after every layer but the last (see :func:`activation_layer`;
        ``"none"``/``"identity"``: none).
    bias : bool, default True
        Whether the ``Linear`` layers have a bias.  With ``batchnorm`` the
        hidden layers' bias is still there (PyTorch's ``nn.Linear`` default;
        BatchNorm's mean subtraction makes it have zero gradient).
    batchnorm : bool, default False
        A :class:`~fastbp.BatchNorm1d` (PyTorch's defaults: ``eps=1e-5``,
        ``momentum=0.1``, affine) after each hidden ``Linear``, before the
        activation.
    dropout : float in [0, 1), default 0.0
        A :class:`~fastbp.Dropout` of this probability after each hidden
        activation; ``0``: no Dropout layer at all.

    Returns
    -------
    Sequential

    Raises
    ------
    TypeError
        ``widths`` is not a sequence of int, ``activation`` not a str,
        ``batchnorm`` not a bool, ``dropout`` not a real number.
    ValueError
        Fewer than two widths, a width below 1, an unknown activation, or
        ``dropout`` outside [0, 1).

    Examples
    --------
    >>> from fastbp.builders import mlp
    >>> mlp([4, 8, 3], "tanh")
    Sequential(Linear(4, 8, bias=True), Tanh(), Linear(8, 3, bias=True))
    >>> mlp([4, 8, 3], "gelu", batchnorm=True, dropout=0.1)  # doctest: +NORMALIZE_WHITESPACE
    Sequential(Linear(4, 8, bias=True), BatchNorm1d(8, eps=1e-05, momentum=0.1, affine=True,
    track_running_stats=True), GELU(approximate='none'), Dropout(p=0.1), Linear(8, 3, bias=True))
    """
    if isinstance(widths, (str, bytes, dict, set, frozenset)) or not hasattr(widths, "__len__"):
        raise TypeError(f"widths must be a sequence of int, got {type(widths).__name__}")
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"widths must hold at least two widths (in and out features), got {widths}")
    for i, w in enumerate(widths):         # named as the caller passed them (not as a Linear's)
        _v.positive_int(f"widths[{i}]", w)
    activation_layer(activation)          # checks the name once, also for a one-layer model
    if not isinstance(batchnorm, (bool, np.bool_)):
        raise TypeError(f"batchnorm must be a bool, got {type(batchnorm).__name__}")
    dropout = _check_dropout(dropout)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(_layers.Linear(widths[i], widths[i + 1], bias=bias))
        if i < len(widths) - 2:
            if batchnorm:
                layers.append(_layers.BatchNorm1d(widths[i + 1]))
            act = activation_layer(activation)
            if act is not None:
                layers.append(act)
            if dropout > 0.0:
                layers.append(_layers.Dropout(dropout))
    return _layers.Sequential(*layers)
