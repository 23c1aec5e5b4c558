"""The optimizer registry: every update rule of the fused step, defined once.

Each entry: the optimizer's name (``fastbp.SGD(...).name``), its opcode in
the tape (:mod:`fastbp._isa`), the number of state vectors it keeps beside
the parameters (SGD momentum; Adam's two moments), the ``torch.optim``
classes ``from_torch`` maps to it, the update rule as text and the kernels
that implement it (CPU: :mod:`fastbp.kernels.optim`, CUDA:
:mod:`fastbp.kernels.cuda.optim`).  The compiler emits the entry's opcode;
an unknown optimizer name is a ValueError, an unknown opcode too (the
executor's kernel table).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _isa

__all__ = ["Optimizer", "get", "entries"]


@dataclass(frozen=True)
class Optimizer:
    """One update rule: ``name``, ``opcode``, ``n_state`` (state vectors, at
    most: SGD without momentum keeps none), ``torch`` (``torch.optim`` class
    names), ``rule`` (text), ``cpu`` and ``cuda`` (kernel names)."""
    name: str
    opcode: int
    n_state: int
    torch: tuple
    rule: str
    cpu: str
    cuda: str


_ENTRIES = (
    Optimizer("sgd", _isa.OP_SGD, 1, ("SGD",),
              "g += wd p; v = mu v + g; p -= lr (g + mu v if nesterov else v)", "_sgd_update", "_k_sgd"),
    Optimizer("adam", _isa.OP_ADAM, 2, ("Adam", "AdamW"),
              "m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr m_hat / (sqrt(v_hat) + eps) "
              "(AdamW: decoupled weight decay)", "_adam_update", "_k_adam"),
    Optimizer("rmsprop", _isa.OP_RMSPROP, 3, ("RMSprop",),
              "g += wd p; s = alpha s + (1 - alpha) g^2; d = sqrt(s - a^2 if centered else s) + eps "
              "(a = alpha a + (1 - alpha) g); b = mu b + g / d, p -= lr b (p -= lr g / d without momentum)",
              "_rmsprop_update", "_k_rmsprop"),
)
_BY_NAME = {e.name: e for e in _ENTRIES}


def entries():
    """Every optimizer entry."""
    return list(_ENTRIES)


def get(name):
    """The entry named ``name``; ValueError if there is none."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(sorted(_BY_NAME))}") from None


def rmsprop_element(p, g, sq, buf, gavg, i, lr, a, one, e, wd, use_wd, mu, centered, use_mom):
    """Element ``i`` of RMSprop's update (``torch.optim.RMSprop``), in place: the one body
    the CPU kernel (:func:`fastbp.kernels.optim._rmsprop_update`) and the CUDA kernel
    (:func:`fastbp.kernels.cuda.optim._k_rmsprop`) compile.  Constants in the arrays' dtype."""
    gi = g[i]
    if use_wd:
        gi = gi + wd * p[i]
    si = a * sq[i] + (one - a) * gi * gi
    sq[i] = si
    if centered:
        ai = gavg[i] + (one - a) * (gi - gavg[i])
        gavg[i] = ai
        d = math.sqrt(si - ai * ai) + e
    else:
        d = math.sqrt(si) + e
    if use_mom:
        bi = mu * buf[i] + gi / d
        buf[i] = bi
        p[i] -= lr * bi
    else:
        p[i] -= lr * gi / d
