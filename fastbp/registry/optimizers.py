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
from .fastmath import div as _div

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


def sgd_element(p, g, v, i, lr, mu, wd, use_wd, use_mom, nesterov):
    """Element ``i`` of SGD's update (``torch.optim.SGD``), in place: ``g += wd p``;
    with momentum ``v = mu v + g`` and ``g = g + mu v`` (Nesterov) or ``g = v``;
    ``p -= lr g``.  The one body the CPU kernel (:func:`fastbp.kernels.optim._sgd_update`)
    and the CUDA kernel (:func:`fastbp.kernels.cuda.optim._k_sgd`) compile.  Constants
    in the arrays' dtype."""
    gi = g[i]
    if use_wd:
        gi = gi + wd * p[i]
    if use_mom:
        vi = mu * v[i] + gi
        v[i] = vi
        if nesterov:
            gi = gi + mu * vi
        else:
            gi = vi
    p[i] -= lr * gi


#: Adam's weight-decay modes (:func:`adam_element`)
ADAM_NO_DECAY, ADAM_DECOUPLED, ADAM_L2 = 0, 1, 2


def adam_mode(weight_decay, decoupled):
    """Adam's weight-decay mode (``ADAM_*``): none with ``weight_decay == 0``, else
    decoupled (AdamW) or L2 (``torch.optim.Adam``'s).  The update instruction holds
    it (tape column g), and each mode has a CPU kernel of its own."""
    if weight_decay == 0.0:
        return ADAM_NO_DECAY
    return ADAM_DECOUPLED if decoupled else ADAM_L2


def adam_eps(eps, beta2, t, eps_hat):
    """The epsilon Adam's kernels add to ``sqrt(v_hat)`` at step ``t``: ``eps`` (PyTorch's
    placement), or with ``eps_hat`` (Kingma and Ba's epsilon-hat, scikit-learn's and
    Keras's placement: ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``)
    ``eps / sqrt(1 - beta2^t)``, which is that update.  Float64, computed once per
    update by the CPU handler (:mod:`fastbp._handlers_update`) and the CUDA step
    (:mod:`fastbp._cuda_tape`)."""
    if eps_hat:
        return eps / math.sqrt(1.0 - beta2 ** t)
    return eps


def adam_scalars(lr, beta1, beta2, t, weight_decay):
    """The scalars of Adam's step ``t`` (``t >= 1``) that :func:`adam_element` takes, in
    float64: ``(step, sbc2, c1, c2, decay)`` = ``(lr / (1 - beta1^t), sqrt(1 - beta2^t),
    1 - beta1, 1 - beta2, 1 - lr weight_decay)``; the caller rounds each once to the arrays'
    dtype (as PyTorch and scikit-learn compute them).  The one place the CPU kernel
    (:func:`fastbp.kernels.optim._adam_update`, compiled without fast-math: no contraction)
    and the CUDA step's host code (:func:`fastbp.kernels.cuda.optim._adam_update`,
    :mod:`fastbp._cuda_tape`) compute them."""
    return (lr / (1.0 - beta1 ** t), math.sqrt(1.0 - beta2 ** t), 1.0 - beta1, 1.0 - beta2,
            1.0 - lr * weight_decay)


def rmsprop_scalars(alpha):
    """The scalar of RMSprop's update that :func:`rmsprop_element` takes besides ``alpha``:
    ``ca = 1 - alpha``, in float64, rounded once to the arrays' dtype by the caller (as
    PyTorch's); for the CPU kernel and the CUDA step's host code alike."""
    return 1.0 - alpha


def adam_element(p, g, m, v, i, step, sbc2, b1, b2, c1, c2, e, wd, decay, mode):
    """Element ``i`` of Adam's update (``torch.optim.Adam``; ``mode`` ADAM_DECOUPLED:
    ``AdamW``), in place: ``m = b1 m + c1 g``; ``v = b2 v + c2 g^2`` with ``c1 = 1 - b1``,
    ``c2 = 1 - b2``; ``p -= step m / (sqrt(v) / sbc2 + e)`` with ``step = lr / (1 - b1^t)``
    and ``sbc2 = sqrt(1 - b2^t)``.  ``step``, ``sbc2``, ``c1`` and ``c2`` are computed by the
    caller in float64 (:func:`adam_scalars`) and rounded once to the arrays' dtype, as PyTorch
    and scikit-learn compute them (``1 - b2`` in float32 is 0.00099998713 for b2 = 0.999: every float32 step
    was 6.5e-6 too large).  Weight decay: ADAM_L2 ``g += wd p`` first, ADAM_DECOUPLED
    ``p *= decay`` (``1 - lr wd``) first.  The one body the CPU kernel
    (:func:`fastbp.kernels.optim._adam_update`) and the CUDA kernel
    (:func:`fastbp.kernels.cuda.optim._k_adam`) compile.  Constants in the arrays' dtype."""
    gi = g[i]
    pi = p[i]
    if mode == ADAM_DECOUPLED:
        pi = pi * decay
    elif mode == ADAM_L2:
        gi = gi + wd * pi
    mi = b1 * m[i] + c1 * gi
    vi = b2 * v[i] + c2 * gi * gi
    m[i] = mi
    v[i] = vi
    # divisions through fastmath.div: IEEE division, without the zero-divisor test and
    # exception path of numba's Python error model, which kept the CPU loop scalar
    p[i] = pi - _div(step * mi, _div(math.sqrt(vi), sbc2) + e)


def rmsprop_element(p, g, sq, buf, gavg, i, lr, a, ca, e, wd, use_wd, mu, centered, use_mom):
    """Element ``i`` of RMSprop's update (``torch.optim.RMSprop``), in place: the one body
    the CPU kernel (:func:`fastbp.kernels.optim._rmsprop_update`) and the CUDA kernel
    (:func:`fastbp.kernels.cuda.optim._k_rmsprop`) compile.  Constants in the arrays' dtype;
    ``ca = 1 - a`` computed by the caller in float64 and rounded once, as PyTorch's."""
    gi = g[i]
    if use_wd:
        gi = gi + wd * p[i]
    si = a * sq[i] + ca * gi * gi
    sq[i] = si
    if centered:
        ai = gavg[i] + ca * (gi - gavg[i])
        gavg[i] = ai
        d = math.sqrt(si - ai * ai) + e
    else:
        d = math.sqrt(si) + e
    if use_mom:
        bi = mu * buf[i] + _div(gi, d)
        buf[i] = bi
        p[i] -= lr * bi
    else:
        p[i] -= _div(lr * gi, d)


def weight_decay(wd, per_row, rows):
    """The weight decay of an update: ``wd`` (``hyper[H_WD]``), or divided by the ``rows`` of
    the minibatch when ``per_row`` (``hyper[H_WD_ROWS]``: scikit-learn's ``alpha / n_b``)."""
    if per_row != 0.0 and rows > 0:
        return wd / rows
    return wd


def n_pieces(ins):
    """How many pieces :func:`update_piece` cuts an update instruction's region into:
    1 (every parameter decayed), or ``2 k + 1`` for ``k`` decayed buffers (f3).
    Compiled into the CPU handlers (:mod:`fastbp._handlers_update`), called as it is by
    the CUDA step (:mod:`fastbp._cuda_tape`)."""
    return 2 * ins[_isa.C_F3] + 1 if ins[_isa.C_F5] == 1 else 1


def update_piece(bufs, ins, i):
    """Piece ``i`` of an update instruction's region: ``(lo, hi, decayed)``, offsets
    from the region's start (a), ``hi <= lo`` for an empty piece.

    Without f5 the one piece is the whole region, decayed.  With f5=1 (the
    optimizer's ``decay_1d=False``), the decayed parameters are the f3 buffers
    from h on, in the region's order: piece ``2 j + 1`` is buffer ``j``,
    piece ``2 j`` the undecayed stretch before it, piece ``2 f3`` the stretch
    after the last one."""
    n = ins[_isa.C_F4]
    if ins[_isa.C_F5] != 1:
        return 0, n, True
    k = ins[_isa.C_F3]
    p0 = ins[_isa.C_A]
    j = i // 2
    if i % 2 == 1:
        s = ins[_isa.C_H] + j
        lo = bufs[s, 0] - p0
        return lo, lo + bufs[s, 1] * bufs[s, 2], True
    lo = 0
    if j > 0:
        s = ins[_isa.C_H] + j - 1
        lo = bufs[s, 0] - p0 + bufs[s, 1] * bufs[s, 2]
    hi = n if j == k else bufs[ins[_isa.C_H] + j, 0] - p0
    return lo, hi, False
