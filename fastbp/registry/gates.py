"""The gate registry: the elementwise binary gates of the graph, defined once.

Each entry: its code (``OP_GATE``'s ``C_G``), its graph op name and
``fastbp.ops`` prefix, the forward and the local gradients (the
"distributor", "switcher" and "router" of the lecture notes), as text.  The
CPU kernels (:mod:`fastbp.kernels.gates`) and the CUDA kernels
(:mod:`fastbp.kernels.cuda.gates`) implement exactly these codes: an
unknown code is a ValueError when a step is compiled, and NaN (never another
gate) in a kernel that is handed one anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Gate", "get", "by_code", "entries", "ADD", "MUL", "MAX"]

ADD, MUL, MAX = 0, 1, 2


@dataclass(frozen=True)
class Gate:
    """One gate: ``code``, ``name`` (graph op, ``fastbp.ops.<name>_forward``),
    ``formula`` and ``gradient`` (text)."""
    code: int
    name: str
    formula: str
    gradient: str


_ENTRIES = (
    Gate(ADD, "add", "out = a + b", "da = dout, db = dout (a distributor)"),
    Gate(MUL, "mul", "out = a * b", "da = dout * b, db = dout * a (a switcher)"),
    Gate(MAX, "max", "out = max(a, b) (NaN if either is NaN)",
         "da = dout * 1[a >= b], db = dout * 1[a < b] (a router; ties to a)"),
)
_BY_NAME = {e.name: e for e in _ENTRIES}
_BY_CODE = {e.code: e for e in _ENTRIES}


def entries():
    """Every gate, by code."""
    return list(_ENTRIES)


def get(name):
    """The gate named ``name``; ValueError if there is none."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown gate {name!r}; valid gates: {', '.join(sorted(_BY_NAME))}") from None


def by_code(code):
    """The gate with tape code ``code``; ValueError for an unknown code."""
    try:
        return _BY_CODE[int(code)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"unknown gate code {code!r}; known codes are {sorted(_BY_CODE)}") from None
