"""The names the gate graph and the op registries share: one name, one op.

The graph tells its nodes apart by ``op`` name (``"matmul"``, ``"sum"``, a
gate's or an activation's name), so an activation may not take a gate's
name, nor either take a graph operation's: such an entry would be registered
and then break the graph functions of the built-in op (or fail late with an
obscure error).  :func:`claim` checks a name, :func:`take` records it.
"""
from __future__ import annotations

#: the graph's own operations (fastbp.graph): not available to registry entries
GRAPH_OPS = frozenset({"input", "param", "const", "matmul", "sum", "loss", "dropout", "layer_norm",
                       "batch_norm"})

#: the layer types fastbp defines itself (fastbp.layers, checkpoint specs) and the torch.nn modules
#: from_torch maps to them: not available as an activation's ``layer`` or ``torch`` name
LAYER_TYPES = frozenset({"Linear", "Dropout", "LayerNorm", "BatchNorm1d", "Residual", "Sequential"})

#: name -> the entry that holds it, as words ("activation 'relu'", "gate 'add'")
_TAKEN = {}


def claim(name, owner):
    """ValueError unless ``name`` is free for ``owner`` (words, e.g. "gate 'relu'")."""
    if name in GRAPH_OPS:
        raise ValueError(f"{owner}: {name!r} is the name of a graph operation; choose another name")
    held = _TAKEN.get(name)
    if held is not None and held != owner:
        raise ValueError(f"{owner}: the name {name!r} is taken by {held}")


def claim_activation(name, owner, **outside):
    """:func:`claim` for an activation, whose name may not be ``"none"`` (no activation
    everywhere) and whose ``outside`` names (``layer``, ``torch``) may not be :data:`LAYER_TYPES`."""
    if name == "none":
        raise ValueError(f"{owner}: 'none' means no activation (the identity) everywhere; choose another name")
    claim(name, owner)
    for field, value in outside.items():
        if value in LAYER_TYPES:
            raise ValueError(f"{owner}: {field}={value!r} is one of fastbp's own layer types "
                             f"({', '.join(sorted(LAYER_TYPES))}); choose another name")


def take(name, owner):
    _TAKEN[name] = owner


def release(name):
    _TAKEN.pop(name, None)
