"""The executor's instruction handlers: one compiled function per opcode.

:func:`fastbp._executor.run_tape` is a dispatch loop: for each instruction it
calls the handler of its opcode by address (kernel table slot
``K_HANDLER + opcode``, see :mod:`fastbp.kernels.table`).  Each handler is
compiled on its own, once per dtype, and only when a step whose tape holds
its opcode is built: a model without normalisation layers, gates or dropout
never compiles (or loads) their handlers, and no handler is re-optimised
together with the others (numba optimises a caller's module with every
callee it links: one interpreter holding every handler took ~10 s to compile
cold, whatever the model used).

Every handler has one signature (:data:`HANDLER_ARGS`)::

    handler(ctx, pc, nb, x, yi, yf, xb, jbase, carry) -> (status, loss, carry_or_info)

``ctx``: the executor context (:func:`fastbp._executor.context`); ``pc``: the
instruction's index in the tape; ``nb``: the minibatch's rows; ``x, yi, yf``:
the minibatch (checked by the interpreter); ``xb``: the buffer read from ``x``
in place (-1: none); ``jbase``: the first JIT GEMM slot (-1: none, see
:func:`jit_slot`); ``carry``: a value the interpreter keeps between
instructions for the handlers (BatchNorm's running update: whether the
gradients are finite, -1 when not checked yet).  A handler returns its status,
the loss (the loss instruction; 0 otherwise) and, with ``STATUS_OK``, the new
``carry`` (the info of the failure otherwise).

The large matrix products go to the BLAS through :func:`_mm` (itself called by
address, kernel ``K_MM``), whose threads are then the only ones running
(README, "Threading design").
"""
import math

import numba
import numpy as np

from ._jit import array_at, block2d, jit
from ._arena_views import _all_finite, _c_vec, _c_rows, _view, _view_or_empty, _vec, _xview
from ._native import kcall, native_kernel
from .config import JIT_MAX_MACS
from .kernels.codes import LOSS_BCE_LOGITS, LOSS_MSE, LOSS_POISSON, LOSS_SOFTMAX_XENT, LOSS_SVM
from .kernels.gemm import JIT_SLOT, blas_get_threads, blas_set_threads
from .kernels.activations import ROLE_BIAS_ACT, ROLE_BIAS_ACT_D, ROLE_BWD, ROLE_FWD, ROLE_FWD_D
from .kernels.losses import _check_labels
from .kernels.table import (K_ACT, K_BCE_LOGITS, K_BLAS_MM, K_BN_BWD, K_BN_FWD, K_BN_RUNNING,
                            K_COLSUM, K_DROPOUT, K_DROPOUT_D, K_GATE, K_GATE_BWD, K_GATE_FWD, K_HANDLER,
                            K_JIT_MM, K_LN_BWD, K_LN_FWD, K_MM, K_MM_SMALL, K_MSE, K_POISSON, K_PROTO_BIAS_ACT,
                            K_PROTO_BWD, K_PROTO_FWD, K_PROTO_FWD_D, K_PROTO_BIAS_ACT_D, K_MUL_D, K_SOFTMAX_XENT, K_SUM_BWD, K_SUM_FWD,
                            K_SVM, K_WEIGH_ROWS, K_CLIP_LOSS, N_KERNELS, N_ROLES, GATE_ROLES, B, F1, I1, I64, NONE, F64, a2, kcall_at)
from .registry.activations import CAPACITY as ACT_CAPACITY, IDENTITY as ACT_IDENTITY
from .registry.gates import CAPACITY as GATE_CAPACITY
from ._jit import int64_bits_as_float64  # dropout's p: float64 bits in the tape
from ._isa import (OP_ACT, OP_ACT_BWD, OP_BATCHNORM, OP_BATCHNORM_BWD, OP_DROPOUT, OP_DROPOUT_BWD, OP_GATE,
                   OP_GATE_BWD, OP_LAYERNORM, OP_LAYERNORM_BWD, OP_LINEAR, OP_LINEAR_BWD, OP_LOSS, OP_MATMUL,
                   OP_MATMUL_BWD, OP_SUM, OP_SUM_BWD, C_OP, C_OUT, C_A, C_B, C_C, C_D, C_E, C_F, C_G, C_F1,
                   C_F2, C_F3, C_F4, C_F5, C_P, TAPE_WIDTH, X_ARENA, X_ARENA_N, X_BUFS, X_BUFS_N, X_TAPE,
                   X_TAPE_N, X_HYPER, X_WS64, X_WS64_N, X_GJIT, X_GJIT_N, X_BATCH, X_KTAB, H_BLAS_MIN,
                   H_STEPS, H_BT_ON, H_BT_MAX, H_BT_CUR, H_BT_MIN, H_WEIGHTED, H_ROW0, H_RNG_SEED, H_TRAINING,
                   H_LOSS_CLIP, HYPER_SIZE, INFO_ONE_ROW, STATUS_OK, STATUS_LOSS_NONFINITE, STATUS_BAD_LABEL,
                   STATUS_BAD_INPUT, STATUS_BAD_OP)

#: what every handler returns: (status, loss, carry or info)
HANDLER_RET = numba.types.Tuple((I64, F64, I64))


def HANDLER_ARGS(d):
    """A handler's argument types for the float type ``d`` (see the module docstring)."""
    return (I1, I64, I64, a2(d), I1, a2(d), I64, I64, I64)


def _handles(*ops):
    """Decorator: compile a handler (fastbp's flags) and register it as the
    native kernel ``K_HANDLER + op`` of each of ``ops``."""
    def wrap(fn):
        disp = jit(fn)
        for op in ops:
            native_kernel(K_HANDLER + op, disp, HANDLER_RET, HANDLER_ARGS)
        return disp
    return wrap


# ------------------------------------------------------------ shared helpers
@jit
def arrays(ctx, x):
    """The arrays of an executor context (:func:`fastbp._executor.context`):
    ``(arena, bufs, tape, hyper, ws64, gjit, kt)``; the arena has ``x``'s dtype.
    Views that skip reference counting: the step keeps the arrays alive."""
    arena = array_at(ctx[X_ARENA], ctx[X_ARENA_N], x.dtype)
    bufs = block2d(array_at(ctx[X_BUFS], 3 * ctx[X_BUFS_N], np.int64), 0, ctx[X_BUFS_N], 3)
    tape = block2d(array_at(ctx[X_TAPE], TAPE_WIDTH * ctx[X_TAPE_N], np.int64), 0, ctx[X_TAPE_N], TAPE_WIDTH)
    hyper = array_at(ctx[X_HYPER], HYPER_SIZE, np.float64)
    ws64 = array_at(ctx[X_WS64], ctx[X_WS64_N], np.float64)
    gjit = array_at(ctx[X_GJIT], ctx[X_GJIT_N], np.int64)
    kt = array_at(ctx[X_KTAB], N_KERNELS, np.int64)
    return arena, bufs, tape, hyper, ws64, gjit, kt


@jit
def _blas_threads_for(macs, hyper):
    """One BLAS thread for a small product, the configured number for a large one."""
    if hyper[H_BT_ON] == 0.0:
        return
    if hyper[H_BT_CUR] < 0.0:
        # the first BLAS product of this call: the configured count, restored at the end
        hyper[H_BT_MAX] = blas_get_threads()
        hyper[H_BT_CUR] = hyper[H_BT_MAX]
    want = 1.0 if macs < hyper[H_BT_MIN] else hyper[H_BT_MAX]
    if want != hyper[H_BT_CUR]:
        blas_set_threads(int(want))
        hyper[H_BT_CUR] = want


@jit
def _mm(A, B, C, ta, tb, acc, hyper, gjit, slot, kt):
    """``C (+)= op(A) @ op(B)``: own loops below ``hyper[H_BLAS_MIN]`` multiply-adds,
    BLAS above; below JIT_MAX_MACS through the JIT GEMM kernel at ``gjit[slot]``
    when ``slot >= 0`` (see :func:`jit_slot`)."""
    k = A.shape[0] if ta else A.shape[1]
    macs = C.shape[0] * C.shape[1] * k
    if macs >= hyper[H_BLAS_MIN]:
        if slot >= 0 and macs < JIT_MAX_MACS and kcall(kt, K_JIT_MM, (A, B, C, ta, tb, acc, gjit, slot)):
            return
        _blas_threads_for(macs, hyper)
        kcall(kt, K_BLAS_MM, (A, B, C, ta, tb, acc))
    else:
        # a few thousand multiply-adds at most: plain loops beat a BLAS call
        kcall(kt, K_MM_SMALL, (A, B, C, ta, tb, acc))


native_kernel(K_MM, _mm, NONE, lambda d: (a2(d), a2(d), a2(d), B, B, B, F1, I1, I64, I1))


@jit
def jit_slot(jbase, pc, p):
    """Where in the JIT GEMM table product ``p`` (0 or 1) of instruction ``pc``
    keeps its kernel; -1 (no kernel) when ``jbase`` is."""
    return jbase + JIT_SLOT * (2 * pc + p) if jbase >= 0 else -1


# Flags passed to compiled callees must not be Python literals: numba would
# compile one specialisation per literal combination.  Each handler computes
# its False/True at run time (``nb < 0`` / ``nb >= 0``).

# ------------------------------------------------------------ forward
@_handles(OP_LINEAR)
def _h_linear(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """``out = act(a @ op(b) + c)``; d: the pre-activation Z (activations whose
    derivative reads their input), else the product goes straight into the
    output and the activation applies in place; f5 (with d): in training mode
    d keeps ``act'(Z)`` instead, computed in the same pass (role bias_act_d)."""
    arena, bufs, tape, hyper, _, gjit, kt = arrays(ctx, x)
    ins = tape[pc]
    act = ins[C_G]
    if act < 0 or act >= ACT_CAPACITY:
        return STATUS_BAD_OP, 0.0, 0
    _F = nb < 0
    X = _xview(arena, bufs, x, xb, ins[C_A], nb)
    W = _xview(arena, bufs, x, xb, ins[C_B], nb)
    b = _vec(arena, bufs, ins[C_C])
    Y = _view(arena, bufs, ins[C_OUT], nb)
    Z = _view(arena, bufs, ins[C_D], nb) if ins[C_D] >= 0 else Y
    kcall(kt, K_MM, (X, W, Z, _F, ins[C_F1] != 0, _F, hyper, gjit, jit_slot(jbase, pc, 0), kt))
    linear_epilogue(arena, bufs, ins, hyper, kt, act, b, Z, Y)
    return STATUS_OK, 0.0, carry


@jit
def linear_epilogue(arena, bufs, ins, hyper, kt, act, b, Z, Y):
    """A linear instruction's pass after its product ``Z``: ``Y = act(Z + b)``, and
    with f5 (in training mode) the kept derivative ``act'(Z + b)`` into d instead of Z;
    nothing when there is neither bias, activation nor pre-activation buffer."""
    if ins[C_F5] != 0 and ins[C_D] >= 0 and hyper[H_TRAINING] != 0.0:
        kcall_at(kt, K_ACT + N_ROLES * act + ROLE_BIAS_ACT_D, K_PROTO_BIAS_ACT_D, (Z, b, Y, _vec(arena, bufs, ins[C_P])))
    elif b.shape[0] > 0 or act != ACT_IDENTITY or ins[C_D] >= 0:
        kcall_at(kt, K_ACT + N_ROLES * act + ROLE_BIAS_ACT, K_PROTO_BIAS_ACT, (Z, b, Y, _vec(arena, bufs, ins[C_P])))


@_handles(OP_MATMUL)
def _h_matmul(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """``out = a @ op(b)``; f1: b transposed."""
    arena, bufs, tape, hyper, _, gjit, kt = arrays(ctx, x)
    ins = tape[pc]
    _F = nb < 0
    A = _xview(arena, bufs, x, xb, ins[C_A], nb)
    Bm = _xview(arena, bufs, x, xb, ins[C_B], nb)
    kcall(kt, K_MM, (A, Bm, _view(arena, bufs, ins[C_OUT], nb), _F, ins[C_F1] != 0, _F, hyper, gjit,
                     jit_slot(jbase, pc, 0), kt))
    return STATUS_OK, 0.0, carry


@_handles(OP_GATE)
def _h_gate(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """``out = gate(a, b)`` (the gate registry's entry ``g``)."""
    arena, bufs, tape, _, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    gate = ins[C_G]
    if gate < 0 or gate >= GATE_CAPACITY:
        return STATUS_BAD_OP, 0.0, 0     # a corrupt tape (the compiler emits registry codes only)
    kcall_at(kt, K_GATE + GATE_ROLES * gate, K_GATE_FWD,
             (gate, _xview(arena, bufs, x, xb, ins[C_A], nb), _xview(arena, bufs, x, xb, ins[C_B], nb),
              _view(arena, bufs, ins[C_OUT], nb)))
    return STATUS_OK, 0.0, carry


@_handles(OP_ACT)
def _h_act(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """``out = act(a)`` (the activation registry's entry ``g``, parameters ``p``);
    c >= 0: in training mode also ``c = act'(a)``, the derivative the backward reads
    (ACT_BWD with f1), computed in the same pass (role fwd_d)."""
    arena, bufs, tape, hyper, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    act = ins[C_G]
    if act < 0 or act >= ACT_CAPACITY:
        return STATUS_BAD_OP, 0.0, 0
    X = _xview(arena, bufs, x, xb, ins[C_A], nb)
    Y = _view(arena, bufs, ins[C_OUT], nb)
    P = _vec(arena, bufs, ins[C_P])
    if ins[C_C] >= 0 and hyper[H_TRAINING] != 0.0:
        kcall_at(kt, K_ACT + N_ROLES * act + ROLE_FWD_D, K_PROTO_FWD_D, (X, Y, _view(arena, bufs, ins[C_C], nb), P))
    else:
        kcall_at(kt, K_ACT + N_ROLES * act + ROLE_FWD, K_PROTO_FWD, (X, Y, P))
    return STATUS_OK, 0.0, carry


@_handles(OP_SUM)
def _h_sum(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """``out = sum(a)``."""
    arena, bufs, tape, _, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    kcall(kt, K_SUM_FWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _view(arena, bufs, ins[C_OUT], nb)))
    return STATUS_OK, 0.0, carry


@_handles(OP_LOSS)
def _h_loss(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """The loss of scores ``a`` against the targets (``yi``: class labels,
    ``yf``: float targets), its gradient into ``b``; ``g``: the loss code.
    Sample weights (``hyper[H_WEIGHTED]``) sit in ws64 after the row losses; with
    ``hyper[H_LOSS_CLIP]`` set (and its kernel loaded) the value is scikit-learn's clipped
    log-loss."""
    arena, bufs, tape, hyper, ws64, _, kt = arrays(ctx, x)
    ins = tape[pc]
    S = _xview(arena, bufs, x, xb, ins[C_A], nb)
    dS = _view(arena, bufs, ins[C_B], nb)
    kind = ins[C_G]
    rowloss = ws64[:S.shape[0]]
    if (kind != LOSS_SOFTMAX_XENT and kind != LOSS_SVM and kind != LOSS_MSE and kind != LOSS_BCE_LOGITS
            and kind != LOSS_POISSON):
        return STATUS_BAD_OP, 0.0, 0     # a corrupt tape (the compiler emits registry codes only)
    if kind == LOSS_SOFTMAX_XENT or kind == LOSS_SVM:
        if yi.shape[0] != S.shape[0] or not _c_vec(yi):
            return STATUS_BAD_INPUT, 0.0, 0
        bad = _check_labels(yi[:S.shape[0]], S.shape[1])
        if bad >= 0:
            return STATUS_BAD_LABEL, 0.0, bad
        if kind == LOSS_SOFTMAX_XENT:
            loss = kcall(kt, K_SOFTMAX_XENT, (S, yi, dS, rowloss))
        else:
            loss = kcall(kt, K_SVM, (S, yi, dS, rowloss))
    elif yf.shape[0] != S.shape[0] or yf.shape[1] != S.shape[1] or not _c_rows(yf):
        return STATUS_BAD_INPUT, 0.0, 0
    elif kind == LOSS_MSE:
        loss = kcall(kt, K_MSE, (S, yf, dS, rowloss))
    elif kind == LOSS_POISSON:
        loss = kcall(kt, K_POISSON, (S, yf, dS, rowloss))
    else:
        loss = kcall(kt, K_BCE_LOGITS, (S, yf, dS, rowloss))
    eps = hyper[H_LOSS_CLIP]
    if eps > 0.0 and kt[K_CLIP_LOSS] != 0 and (kind == LOSS_SOFTMAX_XENT or kind == LOSS_BCE_LOGITS):
        # scikit-learn's value: probabilities clipped to [eps, 1 - eps] (the estimators)
        bce = kind == LOSS_BCE_LOGITS
        loss = kcall(kt, K_CLIP_LOSS, (S, yf if bce else S, rowloss, bce, eps))
    if hyper[H_WEIGHTED] != 0.0:
        loss = kcall(kt, K_WEIGH_ROWS, (dS, rowloss, ws64, ctx[X_BATCH],
                                        kind != LOSS_SOFTMAX_XENT and kind != LOSS_SVM))
    if not math.isfinite(loss):
        return STATUS_LOSS_NONFINITE, loss, 0
    if ins[C_OUT] >= 0:
        _view(arena, bufs, ins[C_OUT], nb)[0, 0] = loss
    return STATUS_OK, loss, carry


# ------------------------------------------------------------ backward
@_handles(OP_LINEAR_BWD)
def _h_linear_bwd(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """a=X, b=W, c=what act' reads (Y, or with f5 the derivative act'(Z) the
    forward kept), d=dY (overwritten by dZ = dY * act'), e=dX, f=dW, out=db, p=act params;
    f1: W stored transposed, f2..f4: accumulate into dX, into dW, into db (a bias may
    have other consumers than this layer: its flag is its own).
    ``dW = X^T dZ``, ``dX = dZ W^T``, ``db = 1^T dZ``."""
    arena, bufs, tape, hyper, _, gjit, kt = arrays(ctx, x)
    ins = tape[pc]
    act = ins[C_G]
    if act < 0 or act >= ACT_CAPACITY:
        return STATUS_BAD_OP, 0.0, 0
    _T = nb >= 0
    _F = nb < 0
    X = _xview(arena, bufs, x, xb, ins[C_A], nb)
    W = _xview(arena, bufs, x, xb, ins[C_B], nb)
    T = _xview(arena, bufs, x, xb, ins[C_C], nb)
    dZ = _xview(arena, bufs, x, xb, ins[C_D], nb)
    wt = ins[C_F1] != 0
    acc_dx = ins[C_F2] != 0
    acc_w = ins[C_F3] != 0
    linear_dz(arena, bufs, ins, kt, act, T, dZ, _F)
    dW = _view(arena, bufs, ins[C_F], nb)
    if wt:   # dWt (out, in) = dZ^T X
        kcall(kt, K_MM, (dZ, X, dW, _T, _F, acc_w, hyper, gjit, jit_slot(jbase, pc, 0), kt))
    else:    # dW (in, out) = X^T dZ
        kcall(kt, K_MM, (X, dZ, dW, _T, _F, acc_w, hyper, gjit, jit_slot(jbase, pc, 0), kt))
    if ins[C_E] >= 0:
        # dX = dZ W^T  (or dZ Wt)
        kcall(kt, K_MM, (dZ, W, _view(arena, bufs, ins[C_E], nb), _F, not wt, acc_dx, hyper, gjit,
                         jit_slot(jbase, pc, 1), kt))
    return STATUS_OK, 0.0, carry


@jit
def linear_dz(arena, bufs, ins, kt, act, T, dZ, _F):
    """A linear backward's pass before its products: ``dZ = dY * act'`` in place (f5:
    times the derivative the forward kept, c; else act' of c), then the bias
    gradient into out (f4: accumulate)."""
    if ins[C_F5] != 0:
        kcall(kt, K_MUL_D, (T, dZ, dZ, _F))
    elif act != ACT_IDENTITY:
        kcall_at(kt, K_ACT + N_ROLES * act + ROLE_BWD, K_PROTO_BWD, (T, dZ, dZ, _F, _vec(arena, bufs, ins[C_P])))
    if ins[C_OUT] >= 0:
        kcall(kt, K_COLSUM, (dZ, _vec(arena, bufs, ins[C_OUT]), ins[C_F4] != 0))


@_handles(OP_MATMUL_BWD)
def _h_matmul_bwd(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """out = A @ op(B): ``dA = dO @ op(B)^T`` into e, ``d op(B) = A^T dO`` into f
    (f1: B stored transposed; f2, f3: accumulate)."""
    arena, bufs, tape, hyper, _, gjit, kt = arrays(ctx, x)
    ins = tape[pc]
    _T = nb >= 0
    _F = nb < 0
    A = _xview(arena, bufs, x, xb, ins[C_A], nb)
    Bm = _xview(arena, bufs, x, xb, ins[C_B], nb)
    dO = _xview(arena, bufs, x, xb, ins[C_D], nb)
    tb = ins[C_F1] != 0
    if ins[C_E] >= 0:
        kcall(kt, K_MM, (dO, Bm, _view(arena, bufs, ins[C_E], nb), _F, not tb, ins[C_F2] != 0, hyper, gjit,
                         jit_slot(jbase, pc, 0), kt))
    if ins[C_F] >= 0:
        dB = _view(arena, bufs, ins[C_F], nb)
        if tb:   # B stored transposed: dB = dO^T A
            kcall(kt, K_MM, (dO, A, dB, _T, _F, ins[C_F3] != 0, hyper, gjit, jit_slot(jbase, pc, 1), kt))
        else:
            kcall(kt, K_MM, (A, dO, dB, _T, _F, ins[C_F3] != 0, hyper, gjit, jit_slot(jbase, pc, 1), kt))
    return STATUS_OK, 0.0, carry


@_handles(OP_GATE_BWD)
def _h_gate_bwd(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """The gate's local gradients times dO (d) into e (da) and f (db); f2, f3: accumulate."""
    arena, bufs, tape, _, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    gate = ins[C_G]
    if gate < 0 or gate >= GATE_CAPACITY:
        return STATUS_BAD_OP, 0.0, 0
    kcall_at(kt, K_GATE + GATE_ROLES * gate + 1, K_GATE_BWD,
             (gate, _xview(arena, bufs, x, xb, ins[C_A], nb), _xview(arena, bufs, x, xb, ins[C_B], nb),
              _xview(arena, bufs, x, xb, ins[C_D], nb), _view_or_empty(arena, bufs, ins[C_E], nb),
              _view_or_empty(arena, bufs, ins[C_F], nb), ins[C_F2] != 0, ins[C_F3] != 0))
    return STATUS_OK, 0.0, carry


@_handles(OP_ACT_BWD)
def _h_act_bwd(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """e (+)= d * act'(c), c: what act' reads (the output, or the input); f1: c is
    the derivative itself, kept by the forward (e (+)= d * c); f2: accumulate."""
    arena, bufs, tape, _, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    act = ins[C_G]
    if act < 0 or act >= ACT_CAPACITY:
        return STATUS_BAD_OP, 0.0, 0
    if ins[C_F1] != 0:
        kcall(kt, K_MUL_D, (_xview(arena, bufs, x, xb, ins[C_C], nb), _xview(arena, bufs, x, xb, ins[C_D], nb),
                            _view(arena, bufs, ins[C_E], nb), ins[C_F2] != 0))
        return STATUS_OK, 0.0, carry
    kcall_at(kt, K_ACT + N_ROLES * act + ROLE_BWD, K_PROTO_BWD,
             (_xview(arena, bufs, x, xb, ins[C_C], nb), _xview(arena, bufs, x, xb, ins[C_D], nb),
              _view(arena, bufs, ins[C_E], nb), ins[C_F2] != 0, _vec(arena, bufs, ins[C_P])))
    return STATUS_OK, 0.0, carry


@_handles(OP_SUM_BWD)
def _h_sum_bwd(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """e (+)= d broadcast (the sum's gradient); f2: accumulate."""
    arena, bufs, tape, _, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    kcall(kt, K_SUM_BWD, (_xview(arena, bufs, x, xb, ins[C_D], nb), _view(arena, bufs, ins[C_E], nb),
                          ins[C_F2] != 0))
    return STATUS_OK, 0.0, carry


# ------------------------------------------------------------ normalisation and dropout
@_handles(OP_LAYERNORM)
def _h_layernorm(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """a=X, b=w, c=bias, out=Y, d=(mean, rstd) per row, p=(eps,)."""
    arena, bufs, tape, _, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    kcall(kt, K_LN_FWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _vec(arena, bufs, ins[C_B]),
                         _vec(arena, bufs, ins[C_C]), _view(arena, bufs, ins[C_OUT], nb),
                         _view(arena, bufs, ins[C_D], nb), _vec(arena, bufs, ins[C_P])))
    return STATUS_OK, 0.0, carry


@_handles(OP_LAYERNORM_BWD)
def _h_layernorm_bwd(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """a=X, b=w, c=stats, d=dY, e=dX, f=dw, out=db; f2..f4: accumulate into dX, dw, db."""
    arena, bufs, tape, _, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    kcall(kt, K_LN_BWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _vec(arena, bufs, ins[C_B]),
                         _view(arena, bufs, ins[C_C], nb), _view(arena, bufs, ins[C_D], nb),
                         _view_or_empty(arena, bufs, ins[C_E], nb), _vec(arena, bufs, ins[C_F]),
                         _vec(arena, bufs, ins[C_OUT]), ins[C_F2] != 0, ins[C_F3] != 0, ins[C_F4] != 0))
    return STATUS_OK, 0.0, carry


@_handles(OP_BATCHNORM)
def _h_batchnorm(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """f1 = 0, forward: a=X, b=w, c=bias, out=Y, d=statistics (5, N), e=running
    (2, N) or -1.  f1 = 1, after the backward: the running statistics
    (c=statistics, d=X, e=running, f=batches tracked), only when every gradient
    (a, f4: the gradient region) is finite, so that a step that fails changes
    nothing; ``carry``: that finiteness (-1: not checked yet)."""
    arena, bufs, tape, hyper, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    training = hyper[H_TRAINING] != 0.0
    # the input's rows: fixed (a graph node without a batch dimension), or (-1) the call's
    rows = bufs[ins[C_A] if ins[C_F1] == 0 else ins[C_D], 1]
    rows = nb if rows < 0 else rows
    if ins[C_F1] == 0:
        if (training or ins[C_E] < 0) and rows < 2:
            return STATUS_BAD_INPUT, 0.0, INFO_ONE_ROW     # one value per channel: no batch variance
        kcall(kt, K_BN_FWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _vec(arena, bufs, ins[C_B]),
                             _vec(arena, bufs, ins[C_C]), _view(arena, bufs, ins[C_OUT], nb),
                             _view(arena, bufs, ins[C_D], nb), _view_or_empty(arena, bufs, ins[C_E], nb),
                             _vec(arena, bufs, ins[C_P]), training))
    elif training:
        if carry < 0:
            carry = 1 if _all_finite(arena[ins[C_A]:ins[C_A] + ins[C_F4]]) else 0
        if carry == 1:
            kcall(kt, K_BN_RUNNING, (_view(arena, bufs, ins[C_C], nb), _view(arena, bufs, ins[C_E], nb),
                                     _vec(arena, bufs, ins[C_F]), _vec(arena, bufs, ins[C_P]), rows))
    return STATUS_OK, 0.0, carry


@_handles(OP_BATCHNORM_BWD)
def _h_batchnorm_bwd(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """a=X, b=w, c=statistics, d=dY, e=dX, f=dw, out=db; f1: running statistics
    exist (in eval mode the gradient goes through them); f2..f4: accumulate."""
    arena, bufs, tape, hyper, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    batch_stats = hyper[H_TRAINING] != 0.0 or ins[C_F1] == 0
    kcall(kt, K_BN_BWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _vec(arena, bufs, ins[C_B]),
                         _view(arena, bufs, ins[C_C], nb), _view(arena, bufs, ins[C_D], nb),
                         _view_or_empty(arena, bufs, ins[C_E], nb), _vec(arena, bufs, ins[C_F]),
                         _vec(arena, bufs, ins[C_OUT]), ins[C_F2] != 0, ins[C_F3] != 0, ins[C_F4] != 0,
                         batch_stats))
    return STATUS_OK, 0.0, carry


@_handles(OP_DROPOUT, OP_DROPOUT_BWD)
def _h_dropout(ctx, pc, nb, x, yi, yf, xb, jbase, carry):
    """The mask of (seed, layer f1, updates so far, element: global row
    ``hyper[H_ROW0] + i``, column), f3: p's float64 bits; recomputed by the backward (fastbp._rng); eval mode
    (``hyper[H_TRAINING] == 0``) passes a through.  Forward: out = a * mask (c >= 0, in
    training: also c *= mask, see fastbp._fold_plan); backward: e (+)= d * mask (f2: accumulate)."""
    arena, bufs, tape, hyper, _, _, kt = arrays(ctx, x)
    ins = tape[pc]
    pdrop = int64_bits_as_float64(ins[C_F3]) if hyper[H_TRAINING] != 0.0 else 0.0
    bwd = ins[C_OP] == OP_DROPOUT_BWD
    if not bwd:
        src = _xview(arena, bufs, x, xb, ins[C_A], nb)
        dst = _view(arena, bufs, ins[C_OUT], nb)
        if ins[C_C] >= 0 and pdrop > 0.0:
            # c: the preceding activation's kept derivative, scaled by the same mask
            # (fastbp._fold_plan: the backward then has no dropout instruction)
            kcall(kt, K_DROPOUT_D, (src, dst, _view(arena, bufs, ins[C_C], nb), int(hyper[H_RNG_SEED]),
                                    ins[C_F1], int(hyper[H_STEPS]), int(hyper[H_ROW0]), pdrop))
            return STATUS_OK, 0.0, carry
    else:
        src = _xview(arena, bufs, x, xb, ins[C_D], nb)
        dst = _view(arena, bufs, ins[C_E], nb)
    kcall(kt, K_DROPOUT, (src, dst, int(hyper[H_RNG_SEED]), ins[C_F1], int(hyper[H_STEPS]),
                          int(hyper[H_ROW0]), pdrop, bwd and ins[C_F2] != 0))
    return STATUS_OK, 0.0, carry
