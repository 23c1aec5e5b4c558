"""One builder for "an MLP from layer widths and an activation": :func:`mlp`.

The estimator, the command line and the benchmarks build their models here,
and :func:`activation_layer` is the ONE place where an activation's name
becomes a layer (today from the layer classes of :mod:`fastbp.layers`, keyed
by their ``op`` name, which is :data:`fastbp.kernels.codes.ACTIVATIONS`'
key; scikit-learn's names as aliases).
"""
from __future__ import annotations

from . import layers as _layers
from .kernels.codes import ACTIVATIONS

__all__ = ["mlp", "activation_layer", "activation_names"]

#: other libraries' names of the same functions (scikit-learn's ``activation=``)
_ALIASES = {"logistic": "sigmoid", "identity": "none"}


def _activation_classes():
    """``{op name: layer class}`` of every activation layer."""
    found = {}
    todo = [_layers._Activation]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.op is not None and cls.__module__.split(".")[0] == "fastbp":   # not users' subclasses
            found.setdefault(cls.op, cls)
    return found


def activation_names():
    """Every name :func:`activation_layer` accepts, sorted (``"none"`` and aliases included)."""
    return sorted(set(ACTIVATIONS) | set(_ALIASES))


def activation_layer(name):
    """The activation layer called ``name``, or ``None`` for the identity.

    Parameters
    ----------
    name : str
        A fastbp activation name (``"relu"``, ``"sigmoid"``, ``"tanh"``,
        ``"none"``: the keys of :data:`fastbp.kernels.codes.ACTIVATIONS`) or
        scikit-learn's name of one (``"logistic"``, ``"identity"``).

    Returns
    -------
    layer or None
        A new layer instance (``fastbp.ReLU()`` ...); ``None`` for the identity.

    Raises
    ------
    TypeError
        ``name`` is not a str.
    ValueError
        An unknown name (the message lists the valid ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"activation must be a str, got {type(name).__name__}")
    key = _ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(activation_names())}")
    if key == "none":
        return None
    cls = _activation_classes().get(key)
    if cls is None:
        raise ValueError(f"activation {name!r} has no layer class in fastbp.layers")
    return cls()


def mlp(widths, activation="relu", *, bias=True):
    """A :class:`~fastbp.Sequential` MLP: ``Linear`` layers with ``activation`` between them.

    Parameters
    ----------
    widths : sequence of int
        ``(in_features, hidden..., out_features)``: at least two widths;
        layer ``i`` maps ``widths[i]`` to ``widths[i + 1]`` features.
    activation : str, default "relu"
        Applied after every layer but the last (see :func:`activation_layer`;
        ``"none"``/``"identity"``: none).
    bias : bool, default True
        Whether the ``Linear`` layers have a bias.

    Returns
    -------
    Sequential

    Raises
    ------
    TypeError
        ``widths`` is not a sequence of int, or ``activation`` not a str.
    ValueError
        Fewer than two widths, a width below 1, or an unknown activation.

    Examples
    --------
    >>> from fastbp.builders import mlp
    >>> mlp([4, 8, 3], "tanh")
    Sequential(Linear(4, 8, bias=True), Tanh(), Linear(8, 3, bias=True))
    """
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__"):
        raise TypeError(f"widths must be a sequence of int, got {type(widths).__name__}")
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"widths must hold at least two widths (in and out features), got {widths}")
    activation_layer(activation)          # checks the name once, also for a one-layer model
    layers = []
    for i in range(len(widths) - 1):
        layers.append(_layers.Linear(widths[i], widths[i + 1], bias=bias))
        if i < len(widths) - 2:
            act = activation_layer(activation)
            if act is not None:
                layers.append(act)
    return _layers.Sequential(*layers)
