"""The instruction handlers of ``precision="bf16"``: a linear layer whose products
read bfloat16 copies of their operands and accumulate in float32.

``OP_LINEAR_BF16`` and ``OP_LINEAR_BWD_BF16`` do what :mod:`fastbp._handlers`'
``OP_LINEAR`` and ``OP_LINEAR_BWD`` do (bias, activation and its derivative,
the bias gradient: all in float32, the same kernels), except for the three
products, which go to :func:`fastbp.kernels.bf16._mm_bf16` (oneDNN):

* forward: ``X`` and ``W`` are rounded to bf16 once (``W``: once per call, so
  once per update in training, never per product), ``Z = Xh @ op(Wh)``;
* backward: ``dZ`` is rounded once and read by both products,
  ``dW = Xh^T dZh`` (the forward's copy of ``X``) and ``dX = dZh op(Wh)^T``
  (the forward's copy of ``W``: the weights have not changed since).

Registered by :func:`fastbp._bf16.require` (imported there, after oneDNN is
loaded), never by a step of full precision.
"""
from ._arena_views import _vec, _view, _xview
from ._handlers import _handles, arrays, linear_dz, linear_epilogue
from ._native import kcall
from .kernels.table import K_MM_BF16, K_TO_BF16
from .registry.activations import CAPACITY as ACT_CAPACITY
from ._isa import (OP_LINEAR_BF16, OP_LINEAR_BWD_BF16, C_OUT, C_A, C_B, C_C, C_D, C_E, C_F, C_G, C_H, C_F1,
                   C_F2, C_F3, STATUS_OK, STATUS_BAD_OP)


@_handles(OP_LINEAR_BF16)
def _h_linear_bf16(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """``out = act(a @ op(b) + c)`` with the product on bf16 copies: e (X's) and f (W's)
    written here; the other columns as OP_LINEAR's (:func:`fastbp._handlers._h_linear`)."""
    arena, bufs, tape, hyper, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    act = ins[C_G]
    if act < 0 or act >= ACT_CAPACITY:
        return STATUS_BAD_OP, 0.0, 0
    _F = nb < 0
    X = _xview(arena, bufs, x, xb, ins[C_A], nb)
    W = _xview(arena, bufs, x, xb, ins[C_B], nb)
    Xh = _view(arena, bufs, ins[C_E], nb)
    Wh = _view(arena, bufs, ins[C_F], nb)
    kcall(kt, K_TO_BF16, (X, Xh))
    kcall(kt, K_TO_BF16, (W, Wh))
    b = _vec(arena, bufs, ins[C_C])
    Y = _view(arena, bufs, ins[C_OUT], nb)
    Z = _view(arena, bufs, ins[C_D], nb) if ins[C_D] >= 0 else Y
    kcall(kt, K_MM_BF16, (Xh, Wh, Z, _F, ins[C_F1] != 0, _F, X.shape[1]))
    linear_epilogue(arena, bufs, ins, hyper, kt, act, b, Z, Y)
    return STATUS_OK, 0.0, carry


@_handles(OP_LINEAR_BWD_BF16)
def _h_linear_bwd_bf16(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """OP_LINEAR_BWD (:func:`fastbp._handlers._h_linear_bwd`) with a, b the forward's
    bf16 copies of X and W and h the buffer of dZ's bf16 copy:
    ``dW = Xh^T dZh``, ``dX = dZh Wh^T`` (f1: W stored transposed)."""
    arena, bufs, tape, hyper, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    act = ins[C_G]
    if act < 0 or act >= ACT_CAPACITY:
        return STATUS_BAD_OP, 0.0, 0
    _T = nb >= 0
    _F = nb < 0
    Xh = _view(arena, bufs, ins[C_A], nb)
    Wh = _view(arena, bufs, ins[C_B], nb)
    T = _xview(arena, bufs, x, xb, ins[C_C], nb)
    dZ = _xview(arena, bufs, x, xb, ins[C_D], nb)
    dZh = _view(arena, bufs, ins[C_H], nb)
    wt = ins[C_F1] != 0
    linear_dz(arena, bufs, ins, kt, act, T, dZ, _F)
    kcall(kt, K_TO_BF16, (dZ, dZh))
    dW = _view(arena, bufs, ins[C_F], nb)
    n_out = dZ.shape[1]
    rows = dZ.shape[0]
    if wt:   # dWt (out, in) = dZ^T X
        kcall(kt, K_MM_BF16, (dZh, Xh, dW, _T, _F, ins[C_F3] != 0, rows))
    else:    # dW (in, out) = X^T dZ
        kcall(kt, K_MM_BF16, (Xh, dZh, dW, _T, _F, ins[C_F3] != 0, rows))
    if ins[C_E] >= 0:
        # dX = dZ W^T  (or dZ Wt)
        kcall(kt, K_MM_BF16, (dZh, Wh, _view(arena, bufs, ins[C_E], nb), _F, not wt, ins[C_F2] != 0, n_out))
    return STATUS_OK, 0.0, carry
