"""The executor's handlers of the update instructions (SGD, Adam/AdamW, RMSprop).

Each update instruction covers the whole parameter region (a, f4 values) and
its gradients (b): the gradients are checked for NaN and infinities, clipped
when ``hyper[H_CLIP] > 0``, then the optimizer's kernel updates the region.
With ``decay_1d=False`` (f5=1) the region is updated in pieces, the weight
decay on the matrices' pieces only (:func:`fastbp.registry.optimizers.update_piece`);
the update is elementwise, so the pieces give the bits of one call.  With
``hyper[H_WD_ROWS]`` set (the estimators), the weight decay is ``hyper[H_WD]``
divided by the minibatch's rows, and the decayed parameters' sum of squares before
the update is added to ``hyper[H_WD_SQ]`` (scikit-learn's reported L2 term).
Registered like every handler (:func:`fastbp._handlers._handles`), by importing
this module.
"""
import numpy as np

from ._jit import jit
from ._arena_views import _all_finite
from ._handlers import _blas_threads_for, _handles, arrays
from ._native import kcall
from .kernels.gemm import blas_asum, blas_axpy
from .kernels.table import K_ADAM, K_ADAM_DECOUPLED, K_ADAM_L2, K_CLIP_GRAD_NORM, K_RMSPROP, K_SGD, K_SUM_SQ
from .registry import optimizers as _optimizers
from .registry.optimizers import ADAM_DECOUPLED, ADAM_L2, ADAM_NO_DECAY
from ._isa import (OP_ADAM, OP_RMSPROP, OP_SGD, C_A, C_B, C_C, C_D, C_E, C_G, C_F1, C_F4, H_LR,
                   H_MOM, H_NESTEROV, H_WD, H_B1, H_B2, H_EPS, H_DECOUPLED, H_T, H_STEPS, H_BT_MIN, H_AXPY_MIN,
                   H_ASUM_MIN, H_CLIP, H_ALPHA, H_WD_ROWS, H_WD_SQ, STATUS_OK, STATUS_GRAD_NONFINITE, STATUS_BAD_OP)


@jit
def _gradients(arena, hyper, ins, kt, by_asum):
    """The gradient region of an update instruction (b, f4: start, length),
    clipped by global norm when ``hyper[H_CLIP] > 0`` (torch's
    ``clip_grad_norm_``); ``(False, region)``, unclipped, when a gradient is
    not finite.  ``by_asum``: the check is the BLAS's asum on its threads
    (fastbp._blas.asum_propagates: a finite sum proves every element finite),
    and fastbp's own scan only when the sum is not finite (a non-finite element,
    or finite ones whose sum overflows)."""
    g0 = ins[C_B]
    g = arena[g0:g0 + ins[C_F4]]
    if by_asum:
        _blas_threads_for(hyper[H_BT_MIN], hyper)
        finite = np.isfinite(blas_asum(g)) or _all_finite(g)
    else:
        finite = _all_finite(g)
    if not finite:
        return False, g
    if hyper[H_CLIP] > 0.0:
        kcall(kt, K_CLIP_GRAD_NORM, (g, hyper[H_CLIP]))
    return True, g


#: the pieces of an update instruction's region (fastbp.registry.optimizers.update_piece)
n_pieces = jit(_optimizers.n_pieces)
update_piece = jit(_optimizers.update_piece)
_adam_eps = jit(_optimizers.adam_eps)
_weight_decay = jit(_optimizers.weight_decay)


@jit
def _opening(ctx, pc, nb, x, sgd):
    """What every update handler starts with: ``(ok, arena, bufs, hyper, kt, ins, g, wd,
    by_blas)``: the instruction ``ins`` at ``pc``, its gradients ``g`` checked (and clipped)
    by :func:`_gradients`, the weight decay ``wd`` of an ``nb``-row minibatch, and (``sgd``)
    whether the update is plain SGD on the BLAS's threads, awake after the products
    (fastbp.config.SGD_AXPY_MIN_PARAMS; the kernel's bits: fastbp._blas.axpy_exact), a
    large one's gradients checked there too (SGD_ASUM_MIN_PARAMS)."""
    arena, bufs, tape, hyper, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    n = ins[C_F4]
    wd = _weight_decay(hyper[H_WD], hyper[H_WD_ROWS], nb)
    by_blas = sgd and hyper[H_MOM] == 0.0 and wd == 0.0 and 0.0 < hyper[H_AXPY_MIN] <= n
    ok, g = _gradients(arena, hyper, ins, kt, by_blas and 0.0 < hyper[H_ASUM_MIN] <= n)
    if ok and wd != 0.0 and hyper[H_WD_ROWS] != 0.0:
        hyper[H_WD_SQ] += _decayed_sq(arena, bufs, ins, kt)
    return ok, arena, bufs, hyper, kt, ins, g, wd, by_blas


@jit
def _decayed_sq(arena, bufs, ins, kt):
    """The sum of squares, in float64, of the parameters an update instruction decays
    (its pieces with ``decayed``), before the update (``K_SUM_SQ``; 0.0 where no estimator
    loaded that kernel)."""
    p0 = ins[C_A]
    sq = 0.0
    if kt[K_SUM_SQ] == 0:
        return sq
    for i in range(n_pieces(ins)):
        lo, hi, decayed = update_piece(bufs, ins, i)
        if decayed and hi > lo:
            sq += kcall(kt, K_SUM_SQ, (arena[p0 + lo:p0 + hi],))
    return sq


@_handles(OP_SGD)
def _h_sgd(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """SGD (momentum, Nesterov, weight decay) on the parameter region a (f4
    values), gradients b, momentum buffer c (-1: none)."""
    ok, arena, bufs, hyper, kt, ins, g, wd, by_blas = _opening(ctx, pc, nb, x, True)
    if not ok:
        return STATUS_GRAD_NONFINITE, 0.0, 0
    p0 = ins[C_A]
    s0 = ins[C_C]
    if by_blas:
        _blas_threads_for(hyper[H_BT_MIN], hyper)
        blas_axpy(-hyper[H_LR], g, arena[p0:p0 + ins[C_F4]])
    else:
        for i in range(n_pieces(ins)):
            lo, hi, decayed = update_piece(bufs, ins, i)
            if hi > lo:
                v = arena[s0 + lo:s0 + hi] if s0 >= 0 else arena[0:0]
                kcall(kt, K_SGD, (arena[p0 + lo:p0 + hi], g[lo:hi], v, hyper[H_LR], hyper[H_MOM],
                                  hyper[H_NESTEROV] != 0.0, wd if decayed else 0.0))
    hyper[H_STEPS] += 1.0
    return STATUS_OK, 0.0, carry


@_handles(OP_ADAM)
def _h_adam(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """Adam / AdamW on the parameter region a (f4 values), gradients b, moments c and d;
    f1=1: epsilon-hat (:func:`fastbp.registry.optimizers.adam_eps`)."""
    ok, arena, bufs, hyper, kt, ins, g, wd, _ = _opening(ctx, pc, nb, x, False)
    if not ok:
        return STATUS_GRAD_NONFINITE, 0.0, 0
    p0 = ins[C_A]
    m0 = ins[C_C]
    v0 = ins[C_D]
    mode = ins[C_G]         # the weight-decay mode: each has its kernel (kernels.optim.ADAM_KERNELS)
    if mode != ADAM_NO_DECAY and mode != ADAM_DECOUPLED and mode != ADAM_L2:
        return STATUS_BAD_OP, 0.0, 0
    hyper[H_T] += 1.0
    eps = _adam_eps(hyper[H_EPS], hyper[H_B2], hyper[H_T], ins[C_F1] == 1)     # f1=1: eps_hat
    for i in range(n_pieces(ins)):
        lo, hi, decayed = update_piece(bufs, ins, i)
        if hi <= lo:
            continue
        args = (arena[p0 + lo:p0 + hi], g[lo:hi], arena[m0 + lo:m0 + hi], arena[v0 + lo:v0 + hi], hyper[H_T],
                hyper[H_LR], hyper[H_B1], hyper[H_B2], eps, wd if decayed else 0.0,
                hyper[H_DECOUPLED] != 0.0)
        if mode == ADAM_NO_DECAY:
            kcall(kt, K_ADAM, args)
        elif mode == ADAM_DECOUPLED:
            kcall(kt, K_ADAM_DECOUPLED, args)
        else:
            kcall(kt, K_ADAM_L2, args)
    hyper[H_STEPS] += 1.0
    return STATUS_OK, 0.0, carry


@_handles(OP_RMSPROP)
def _h_rmsprop(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """RMSprop on the parameter region a (f4 values), gradients b, square_avg c,
    momentum buffer d (-1: none), grad_avg e (-1: none: not centered)."""
    ok, arena, bufs, hyper, kt, ins, g, wd, _ = _opening(ctx, pc, nb, x, False)
    if not ok:
        return STATUS_GRAD_NONFINITE, 0.0, 0
    p0 = ins[C_A]
    s0 = ins[C_C]
    b0 = ins[C_D]
    a0 = ins[C_E]
    for i in range(n_pieces(ins)):
        lo, hi, decayed = update_piece(bufs, ins, i)
        if hi <= lo:
            continue
        kcall(kt, K_RMSPROP, (arena[p0 + lo:p0 + hi], g[lo:hi], arena[s0 + lo:s0 + hi],
                              arena[b0 + lo:b0 + hi] if b0 >= 0 else arena[0:0],
                              arena[a0 + lo:a0 + hi] if a0 >= 0 else arena[0:0], hyper[H_LR], hyper[H_ALPHA],
                              hyper[H_EPS], wd if decayed else 0.0, hyper[H_MOM]))
    hyper[H_STEPS] += 1.0
    return STATUS_OK, 0.0, carry
