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

#: name -> the entry that holds it, as words ("activation 'relu'", "gate 'add'")
_TAKEN = {}


def claim(name, owner):
    """ValueError unless ``name`` is free for ``owner`` (words, e.g. "gate 'relu'")."""
    if name in GRAPH_OPS:
        raise ValueError(f"{owner}: {name!r} is the name of a graph operation; choose another name")
    held = _TAKEN.get(name)
    if held is not None and held != owner:
        raise ValueError(f"{owner}: the name {name!r} is taken by {held}")


def take(name, owner):
    _TAKEN[name] = owner


def release(name):
    _TAKEN.pop(name, None)
