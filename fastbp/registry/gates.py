"""The gate registry: the elementwise binary gates of the graph, defined once.

A :class:`Gate` entry holds its code (``OP_GATE``'s ``C_G``), its graph op
name (``fastbp.<name>``, ``fastbp.ops.<name>_forward``), the scalar forward
``out = forward(a, b)`` and, next to it, the local gradients
``(da, db) = grads(a, b, dout)`` (the "distributor", "switcher" and "router"
of the lecture notes).  The scalar functions are plain Python on numbers:
numba compiles them for the CPU (inlined into the broadcasting loops of
:mod:`fastbp.kernels.gates`, one set of kernels per entry) and as CUDA
device functions (:mod:`fastbp.kernels.cuda.gates`): both targets run the
same body.  Constants are written ``type(x)(c)`` (float32 kernels compute in
float32).

The division and power gates follow ``torch.div`` and ``torch.pow`` (IEEE: ``a / 0`` is
+-inf or NaN, a negative base to a non-integer power NaN, never an exception) and their
backward rules: ``pow``'s ``da`` is exactly 0 where ``b == 0`` (even for an infinite or NaN
``dout``) and its ``db`` is ``dout * 0`` where ``a == 0`` and ``b >= 0`` (0, or NaN for an
infinite or NaN ``dout``, as torch's product); ``div``'s ``db`` is computed as torch's ``-dout ((a / b) / b)``,
which stays finite where ``b * b`` would overflow, and is 0 for ``a == 0`` where ``dout / b``
would overflow.

The max gate's rule on both targets: ``out = NaN`` if either input is NaN
(``torch.maximum``); the gradient goes to ``a`` unless ``a < b`` and to ``b``
unless ``a >= b``: ties go to ``a`` (PyTorch splits a tie in halves; fastbp's
router keeps the lecture notes' rule), and with a NaN on either side both
inputs receive ``dout`` (as ``torch.maximum``'s backward, where every
comparison with NaN is false).  A gradient that does not flow is an exact 0,
even for an infinite or NaN ``dout`` (a select, never ``dout * 0``).

An unknown name or code is a ValueError (when a step is compiled); a kernel
handed a code other than its entry's writes NaN, never another gate.
Adding a gate is adding one entry (:func:`register`).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import fastmath as _fm
from . import names as _names

__all__ = ["Gate", "CODES", "register", "unregister", "get", "by_code", "entries", "ADD", "MUL", "MAX", "DIV",
           "POW", "BUILT_IN", "CAPACITY"]

#: the most entries (codes 0 .. CAPACITY-1): the size of the kernel tables
CAPACITY = 16
ADD, MUL, MAX, DIV, POW = 0, 1, 2, 3, 4
#: the codes of the entries below, which cannot be unregistered
BUILT_IN = (ADD, MUL, MAX, DIV, POW)


@dataclass(frozen=True)
class Gate:
    """One gate.

    Attributes
    ----------
    code : int
        Its code in the tape, ``0 <= code < CAPACITY``.
    name : str
        Graph op ``fastbp.<name>``, ``fastbp.ops.<name>_forward``.
    forward : function
        ``forward(a, b)``: the gate of two scalars of one dtype.
    grads : function
        ``grads(a, b, dout)``: the tuple ``(dout * d out/da, dout * d out/db)``
        at the same point.
    formula, gradient : str
        The forward and the local gradients as text (docstrings).
    """
    code: int
    name: str
    forward: object
    grads: object
    formula: str
    gradient: str

    def __post_init__(self):
        if not (isinstance(self.code, int) and 0 <= self.code < CAPACITY):
            raise ValueError(f"gate {self.name!r}: code must be an int in [0, {CAPACITY}), got {self.code!r}")
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise ValueError(f"gate name must be an identifier, got {self.name!r}")
        if not (callable(self.forward) and callable(self.grads)):
            raise TypeError(f"gate {self.name!r}: forward and grads must be functions")

    @property
    def suffix(self):
        """The name suffix of the entry's compiled kernels (CPU and CUDA): its
        name and a hash of its scalar bodies (numba's disk cache keys a kernel
        by the template's bytecode, which an edited entry does not change)."""
        from .fingerprint import fingerprint        # code, closure values, the globals it reads
        return "__gate_" + self.name + "_" + fingerprint(self.forward, self.grads)[:10]


_BY_NAME = {}
_BY_CODE = {}
#: name -> code of every registered gate, kept current by register/unregister
#: (the graph compiler looks gates up here, so an entry added later compiles too)
CODES = {}


def register(entry):
    """Add ``entry`` (a :class:`Gate`; its code and name must be new).

    Kernels are compiled for an entry only when a step or a kernel call first
    uses it.  Tests may register more (:func:`unregister` removes them).
    """
    if not isinstance(entry, Gate):
        raise TypeError(f"entry must be a Gate, got {type(entry).__name__}")
    if entry.code in _BY_CODE:
        raise ValueError(f"gate code {entry.code} is already {_BY_CODE[entry.code].name!r}")
    if entry.name in _BY_NAME:
        raise ValueError(f"gate {entry.name!r} is already registered")
    _names.claim(entry.name, f"gate {entry.name!r}")
    _names.take(entry.name, f"gate {entry.name!r}")
    _BY_NAME[entry.name] = entry
    _BY_CODE[entry.code] = entry
    CODES[entry.name] = entry.code
    return entry


def unregister(name):
    """Remove the entry ``name`` (tests only; the built-in gates stay)."""
    entry = get(name)
    if entry.code in BUILT_IN:
        raise ValueError(f"the built-in gate {name!r} cannot be unregistered")
    del _BY_NAME[entry.name]
    del _BY_CODE[entry.code]
    del CODES[entry.name]
    _names.release(entry.name)


def entries():
    """Every gate, by code."""
    return [e for _, e in sorted(_BY_CODE.items())]


def get(name):
    """The gate named ``name``; ValueError if there is none."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown gate {name!r}; valid gates: {', '.join(sorted(_BY_NAME))}") from None


def by_code(code):
    """The gate with tape code ``code``; ValueError for an unknown code."""
    try:
        if isinstance(code, bool):
            raise TypeError
        return _BY_CODE[int(code)]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ValueError(f"unknown gate code {code!r}; known codes are {sorted(_BY_CODE)}") from None


# ====================================================================== entries
# Each forward is followed by its local gradients.

def add(a, b):
    return a + b


def d_add(a, b, g):
    return g, g


register(Gate(ADD, "add", add, d_add, "out = a + b", "da = dout, db = dout (a distributor)"))


def mul(a, b):
    return a * b


def d_mul(a, b, g):
    return g * b, g * a


register(Gate(MUL, "mul", mul, d_mul, "out = a * b", "da = dout * b, db = dout * a (a switcher)"))


def maximum(a, b):
    # NaN on either side: NaN (a NaN a is kept by a != a; a NaN b fails a >= b and is taken)
    return a if a >= b or a != a else b


def d_maximum(a, b, g):
    zero = type(g)(0.0)
    return (zero if a < b else g), (zero if a >= b else g)


register(Gate(MAX, "max", maximum, d_maximum, "out = max(a, b) (NaN if either is NaN)",
              "da = dout * 1[not a < b], db = dout * 1[not a >= b] "
              "(a router; ties to a, a NaN on either side: both get dout; a gradient that does not "
              "flow is an exact 0, even for an infinite or NaN dout)"))


def div(a, b):
    # IEEE division (fastmath.div: no ZeroDivisionError test in the compiled loops)
    return _fm.div(a, b)


def d_div(a, b, g):
    # db as torch's div backward, -dout ((a / b) / b): 0 for a == 0 where b is so small
    # that dout / b overflows (-(dout / b) (a / b) was inf * 0 = NaN)
    return _fm.div(g, b), -(g * _fm.div(_fm.div(a, b), b))


register(Gate(DIV, "div", div, d_div, "out = a / b (torch.div: a / 0 is +-inf, 0 / 0 NaN)",
              "da = dout / b, db = -dout a / b^2 (as torch: -dout ((a / b) / b))"))


def power(a, b):
    return a ** b


def d_power(a, b, g):
    # torch's pow backward: da exactly 0 where b == 0 (a select, even for an infinite or NaN
    # dout); db = dout * 0 where a == 0 and b >= 0 (a product: NaN for an infinite or NaN dout)
    zero = type(g)(0.0)
    da = zero if b == 0 else g * (b * a ** (b - type(b)(1.0)))
    db = g * (zero if (a == 0 and b >= 0) else a ** b * _fm.log(a))
    return da, db


register(Gate(POW, "pow", power, d_power, "out = a ** b (torch.pow: NaN for a < 0 and a non-integer b)",
              "da = dout b a^(b - 1) (0 where b == 0), db = dout a^b log(a) (dout * 0 where a == 0 and b >= 0)"))
