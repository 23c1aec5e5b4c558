"""The native executor: runs a compiled graph's instruction tape in one call.

The compiler (:mod:`fastbp.compiler`) turns a graph into data: one flat
``arena`` holding every parameter, gradient, optimizer state and activation,
a buffer table ``bufs`` (offset, rows, cols; rows = -1 means "the minibatch
size") and an instruction ``tape``.  This module is the only code that runs
them, and it is compiled once per dtype and cached on disk: compiling a new
architecture compiles nothing.  A step passes its arrays (those three, the
hyper-parameters, a float64 workspace, its JIT GEMM table and the table of
kernel addresses) by address, in one int64 vector (:func:`context`), and the
minibatch as arrays.

The interpreter calls the loop kernels by address (:mod:`fastbp.kernels.table`,
:func:`fastbp._native.kcall`): each is compiled on its own, once per dtype,
when the first step whose tape uses it is built; the interpreter's own
compilation does not include (and re-optimise) them.

Threading: everything here runs serially in the calling thread; the large
matrix products go to the BLAS (``_blas_mm``), whose own threads are then
the only ones running.  Small products use fastbp's own loops, so a tiny
step never pays a thread wake-up (README, "Threading design").

Status codes returned by :func:`run_step`: see ``STATUS_*``.
"""
import math
import weakref

import numba
import numpy as np

from . import _blas
from ._jit import array_at, block2d, jit, unmanaged_c
from ._arena_views import _all_finite, _c_rows, _c_vec, _empty, _vec, _view, _view_or_empty, _xview
from ._native import kcall, native_address, native_kernel
from .config import BLAS_MIN_MACS, BLAS_THREADS_MIN_MACS, JIT_MAX_MACS  # noqa: F401 - re-exported
from .kernels.codes import LOSS_BCE_LOGITS, LOSS_MSE, LOSS_POISSON, LOSS_SOFTMAX_XENT, LOSS_SVM
from .kernels.gemm import BLAS_AVAILABLE, BLAS_THREAD_CONTROL, JIT_SLOT, blas_get_threads, blas_set_threads
from .kernels.losses import _check_labels, weigh_rows
from .kernels.table import (K_ACT, K_ADAM, K_BCE_LOGITS, K_BLAS_MM, K_COLSUM,  # noqa: F401
                            K_GATE_BWD, K_GATE_FWD, K_JIT_MM, K_MM_SMALL, K_MSE, K_PROTO_BIAS_ACT, K_PROTO_BWD,
                            K_PROTO_FWD, K_SGD, K_SOFTMAX_XENT, K_SUM_BWD, K_SUM_FWD, K_SVM, N_KERNELS, N_ROLES, I1,
                            I64, a2, kcall_at, kernels_for)
from .kernels.table import K_CLIP_GRAD_NORM, K_POISSON, K_RMSPROP
from .kernels.table import K_DROPOUT
from .kernels.table import GATE_ROLES, K_GATE
from .registry.gates import CAPACITY as GATE_CAPACITY
from .registry.activations import CAPACITY as ACT_CAPACITY, IDENTITY as ACT_IDENTITY
from .kernels.table import K_BN_BWD, K_BN_FWD, K_BN_RUNNING, K_LN_BWD, K_LN_FWD
from ._isa import OP_BATCHNORM, OP_BATCHNORM_BWD, OP_LAYERNORM, OP_LAYERNORM_BWD, H_TRAINING, INFO_ONE_ROW

from ._isa import (  # noqa: F401 - re-exported: the executor reads and writes this format
    OP_LOAD_X, OP_LINEAR, OP_MATMUL, OP_GATE, OP_ACT, OP_SUM, OP_LOSS, OP_SEED, OP_LINEAR_BWD, OP_MATMUL_BWD,
    OP_GATE_BWD, OP_ACT_BWD, OP_SUM_BWD, OP_SGD, OP_ADAM, C_OP, C_OUT, C_A, C_B, C_C, C_D, C_E, C_F, C_G,
    C_F1, C_F2, C_F3, C_F4, C_P, TAPE_WIDTH, X_ARENA, X_ARENA_N, X_BUFS, X_BUFS_N, X_TAPE, X_TAPE_N, X_HYPER,
    X_WS64, X_WS64_N, X_GJIT, X_GJIT_N, X_BATCH, X_KTAB, X_RUN, CONTEXT_SIZE, S_FWD, S_LOSS, S_BWD, S_END, H_LR,
    H_MOM, H_NESTEROV, H_WD, H_B1, H_B2, H_EPS, H_DECOUPLED, H_T, H_BLAS_MIN, H_STEPS, H_BT_ON, H_BT_MAX,
    H_BT_CUR, H_BT_MIN, H_JIT_ON, RUNTIME_SLOTS, HYPER_SIZE, MODE_FORWARD, MODE_GRAD, MODE_TRAIN, STATUS_OK,
    STATUS_LOSS_NONFINITE, STATUS_GRAD_NONFINITE, STATUS_BAD_LABEL, STATUS_BAD_INPUT, STATUS_BAD_OP)
from ._isa import OP_RMSPROP, H_CLIP, H_ALPHA, H_WEIGHTED, HYPER_SIZE_V1  # noqa: F401 - re-exported
from ._isa import OP_DROPOUT, OP_DROPOUT_BWD, H_RNG_SEED, H_TRAINING  # noqa: F401 - re-exported
from ._jit import int64_bits_as_float64  # dropout's p: float64 bits in the tape


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


@jit
def jit_slot(jbase, pc, p):
    """Where in the JIT GEMM table product ``p`` (0 or 1) of instruction ``pc``
    keeps its kernel; -1 (no kernel) when ``jbase`` is."""
    return jbase + JIT_SLOT * (2 * pc + p) if jbase >= 0 else -1


def context(arena, bufs, tape, hyper, ws64, gjit, batch_size):
    """The executor context of a step: one int64 vector of the addresses and
    sizes of its arrays, which the compiled entry points take instead of
    the arrays themselves (each array argument costs ~55 ns to unbox: 0.23 us
    of a tiny step), and the most rows a minibatch may have.

    The caller keeps every one of these arrays alive, unmoved, for as long as
    it uses the context; only C-contiguous arrays of the executor's dtypes.
    """
    want = ((arena, "arena", None, 1), (bufs, "bufs", np.int64, 2), (tape, "tape", np.int64, 2),
            (hyper, "hyper", np.float64, 1), (ws64, "ws64", np.float64, 1), (gjit, "gjit", np.int64, 1))
    for a, name, dt, nd in want:
        if (not isinstance(a, np.ndarray) or a.ndim != nd or not a.flags.c_contiguous
                or not a.flags.writeable or (dt is not None and a.dtype != dt)):
            raise ValueError(f"executor context: {name} must be a writeable C-contiguous {nd}-D "
                             f"{'float' if dt is None else np.dtype(dt).name} array")
    if bufs.shape[1] != 3 or tape.shape[1] != TAPE_WIDTH or hyper.shape[0] != HYPER_SIZE:
        raise ValueError("executor context: bufs, tape or hyper has the wrong width")
    ktab = kernel_table(arena.dtype, tape)
    run = _ensure_run_tape(arena.dtype)
    return np.array([arena.ctypes.data, arena.shape[0], bufs.ctypes.data, bufs.shape[0], tape.ctypes.data,
                     tape.shape[0], hyper.ctypes.data, ws64.ctypes.data, ws64.shape[0], gjit.ctypes.data,
                     gjit.shape[0], batch_size, ktab.ctypes.data, run], dtype=np.int64)


#: per dtype: the addresses of the native kernels loaded so far (0: not loaded)
_KTABS = {}

def _ensure_run_tape(dtype):
    """Compile (or load from the cache) :func:`run_tape` for the arguments a
    step passes (C-contiguous arrays of ``dtype``), so that the one-time
    compilation happens in :func:`fastbp.compile`, not inside the first step;
    returns the address of its native code (context slot ``X_RUN``)."""
    return native_address(K_RUN_TAPE, np.dtype(dtype))


def kernel_table(dtype, tape):
    """The table of native kernel addresses for ``dtype`` (int64, ``N_KERNELS``;
    kept alive for the process), with every kernel ``tape`` uses loaded."""
    dtype = np.dtype(dtype)
    tab = _KTABS.get(dtype)
    if tab is None:
        tab = _KTABS.setdefault(dtype, np.zeros(N_KERNELS, dtype=np.int64))
    for k in sorted(kernels_for(tape)):
        if tab[k] == 0:
            tab[k] = native_address(k, dtype)
    return tab


@jit
def _arrays(ctx, x):
    """The arrays of an executor context (see :func:`context`); the arena has ``x``'s dtype."""
    arena = array_at(ctx[X_ARENA], ctx[X_ARENA_N], x.dtype)
    bufs = block2d(array_at(ctx[X_BUFS], 3 * ctx[X_BUFS_N], np.int64), 0, ctx[X_BUFS_N], 3)
    tape = block2d(array_at(ctx[X_TAPE], TAPE_WIDTH * ctx[X_TAPE_N], np.int64), 0, ctx[X_TAPE_N], TAPE_WIDTH)
    hyper = array_at(ctx[X_HYPER], HYPER_SIZE, np.float64)
    ws64 = array_at(ctx[X_WS64], ctx[X_WS64_N], np.float64)
    gjit = array_at(ctx[X_GJIT], ctx[X_GJIT_N], np.int64)
    return arena, bufs, tape, hyper, ws64, gjit


@jit
def run_tape(ctx, lo, hi, nb, x, yi, yf):
    """Run instructions ``lo .. hi-1`` of the step whose executor context
    (:func:`context`) is ``ctx``.  Returns ``(status, loss, info)``.

    The BLAS's thread count is read by the first BLAS product and restored
    last: inside, each product chooses one thread or that many
    (``_blas_threads_for``).

    One function, not a wrapper around the loop: numba re-optimises a
    caller's module together with every callee's, so each wrapper level
    around the interpreter cost ~1.6 s of the one-time compilation.
    """
    if nb < 1 or nb > ctx[X_BATCH]:
        return STATUS_BAD_INPUT, 0.0, 0
    # Views of these arrays skip numba's atomic reference counting (~20% of a
    # tiny step): all of them stay alive for the call, no view escapes.
    arena, bufs, tape, hyper, ws64, gjit = _arrays(ctx, x)
    kt = array_at(ctx[X_KTAB], N_KERNELS, np.int64)
    # Typed C-contiguous (one type for every kernel call, whatever the caller
    # passed): their rows, widths and layout are checked below (LOAD_X, LOSS)
    # before anything reads them.
    x = unmanaged_c(x)
    yi = unmanaged_c(yi)
    yf = unmanaged_c(yf)
    # JIT GEMM kernels are made for full minibatches (gjit[0] rows) only
    jbase = -1
    if hyper[H_JIT_ON] != 0.0 and gjit.shape[0] >= 1 + JIT_SLOT * 2 * tape.shape[0] and gjit[0] == nb:
        jbase = 1
    # the BLAS's thread count: read by the first BLAS product (a step of JIT
    # kernels makes none), restored at the end
    hyper[H_BT_CUR] = -1.0
    status = STATUS_OK
    info = 0
    loss = 0.0
    # Flags passed to compiled callees must not be Python literals: numba would
    # compile one specialisation per literal combination (measured: 3x the cold
    # compile time).  These are the same values, computed at run time.
    _T = nb >= 0
    _F = nb < 0
    xb = -1         # the buffer read from x in place, once LOAD_X has run
    grads_ok = -1   # BatchNorm's running update: the gradients' finiteness (-1: not checked yet)
    for pc in range(lo, hi):
        ins = tape[pc]
        op = ins[C_OP]
        if op == OP_LOAD_X:
            if x.shape[0] != nb or x.shape[1] != bufs[ins[C_OUT], 2] or not _c_rows(x):
                status = STATUS_BAD_INPUT
                break
            if ins[C_F1] != 0:
                # every later read of this buffer gets x itself: no copy (2.4 MB
                # per step on cs231n); nothing ever writes the input's buffer
                xb = ins[C_OUT]
            else:
                out = _view(arena, bufs, ins[C_OUT], nb).ravel()
                src = x.ravel()
                for i in range(out.shape[0]):
                    out[i] = src[i]
        elif op == OP_LINEAR:
            # d: the pre-activation Z (activations whose derivative reads their
            # input), else the product goes straight into Y and f applies in place
            act = ins[C_G]
            if act < 0 or act >= ACT_CAPACITY:
                status = STATUS_BAD_OP
                break
            X = _xview(arena, bufs, x, xb, ins[C_A], nb)
            W = _xview(arena, bufs, x, xb, ins[C_B], nb)
            b = _vec(arena, bufs, ins[C_C])
            Y = _view(arena, bufs, ins[C_OUT], nb)
            Z = _view(arena, bufs, ins[C_D], nb) if ins[C_D] >= 0 else Y
            _mm(X, W, Z, _F, ins[C_F1] != 0, _F, hyper, gjit, jit_slot(jbase, pc, 0), kt)
            if b.shape[0] > 0 or act != ACT_IDENTITY or ins[C_D] >= 0:
                kcall_at(kt, K_ACT + N_ROLES * act, K_PROTO_BIAS_ACT, (Z, b, Y, _vec(arena, bufs, ins[C_P])))
        elif op == OP_MATMUL:
            A = _xview(arena, bufs, x, xb, ins[C_A], nb)
            B = _xview(arena, bufs, x, xb, ins[C_B], nb)
            out = _view(arena, bufs, ins[C_OUT], nb)
            _mm(A, B, out, _F, ins[C_F1] != 0, _F, hyper, gjit, jit_slot(jbase, pc, 0), kt)
        elif op == OP_GATE:
            A = _xview(arena, bufs, x, xb, ins[C_A], nb)
            B = _xview(arena, bufs, x, xb, ins[C_B], nb)
            gate = ins[C_G]
            if gate < 0 or gate >= GATE_CAPACITY:
                status = STATUS_BAD_OP      # a corrupt tape (the compiler emits registry codes only)
                break
            kcall_at(kt, K_GATE + GATE_ROLES * gate, K_GATE_FWD, (gate, A, B, _view(arena, bufs, ins[C_OUT], nb)))
        elif op == OP_ACT:
            act = ins[C_G]
            if act < 0 or act >= ACT_CAPACITY:
                status = STATUS_BAD_OP
                break
            kcall_at(kt, K_ACT + N_ROLES * act + 1, K_PROTO_FWD,
                     (_xview(arena, bufs, x, xb, ins[C_A], nb), _view(arena, bufs, ins[C_OUT], nb),
                      _vec(arena, bufs, ins[C_P])))
        elif op == OP_SUM:
            kcall(kt, K_SUM_FWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _view(arena, bufs, ins[C_OUT], nb)))
        elif op == OP_LOSS:
            S = _xview(arena, bufs, x, xb, ins[C_A], nb)
            dS = _view(arena, bufs, ins[C_B], nb)
            kind = ins[C_G]
            rowloss = ws64[:S.shape[0]]
            if (kind != LOSS_SOFTMAX_XENT and kind != LOSS_SVM and kind != LOSS_MSE and kind != LOSS_BCE_LOGITS
                    and kind != LOSS_POISSON):
                status = STATUS_BAD_OP      # a corrupt tape (the compiler emits registry codes only)
                break
            if kind == LOSS_SOFTMAX_XENT or kind == LOSS_SVM:
                if yi.shape[0] != S.shape[0] or not _c_vec(yi):
                    status = STATUS_BAD_INPUT
                    break
                bad = _check_labels(yi[:S.shape[0]], S.shape[1])
                if bad >= 0:
                    status = STATUS_BAD_LABEL
                    info = bad
                    break
                if kind == LOSS_SOFTMAX_XENT:
                    loss = kcall(kt, K_SOFTMAX_XENT, (S, yi, dS, rowloss))
                else:
                    loss = kcall(kt, K_SVM, (S, yi, dS, rowloss))
            elif yf.shape[0] != S.shape[0] or yf.shape[1] != S.shape[1] or not _c_rows(yf):
                status = STATUS_BAD_INPUT
                break
            elif kind == LOSS_MSE:
                loss = kcall(kt, K_MSE, (S, yf, dS, rowloss))
            elif kind == LOSS_POISSON:
                loss = kcall(kt, K_POISSON, (S, yf, dS, rowloss))
            else:
                loss = kcall(kt, K_BCE_LOGITS, (S, yf, dS, rowloss))
            if hyper[H_WEIGHTED] != 0.0:    # sample weights, in ws64 after the row losses
                loss = weigh_rows(dS, rowloss, ws64, ctx[X_BATCH], kind != LOSS_SOFTMAX_XENT and kind != LOSS_SVM)
            if not math.isfinite(loss):
                status = STATUS_LOSS_NONFINITE
                break
            if ins[C_OUT] >= 0:
                _view(arena, bufs, ins[C_OUT], nb)[0, 0] = loss
        elif op == OP_SEED:
            out = _view(arena, bufs, ins[C_OUT], nb)
            out[:, :] = 1.0
        elif op == OP_LINEAR_BWD:
            # a=X, b=W, c=what act' reads (Y, or the pre-activation Z), d=dY
            # (overwritten by dZ), e=dX, f=dW, out=db, p=act params
            act = ins[C_G]
            if act < 0 or act >= ACT_CAPACITY:
                status = STATUS_BAD_OP
                break
            X = _xview(arena, bufs, x, xb, ins[C_A], nb)
            W = _xview(arena, bufs, x, xb, ins[C_B], nb)
            T = _xview(arena, bufs, x, xb, ins[C_C], nb)
            dZ = _xview(arena, bufs, x, xb, ins[C_D], nb)
            wt = ins[C_F1] != 0
            acc_dx = ins[C_F2] != 0
            acc_w = ins[C_F3] != 0
            if act != ACT_IDENTITY:
                kcall_at(kt, K_ACT + N_ROLES * act + 2, K_PROTO_BWD, (T, dZ, dZ, _F, _vec(arena, bufs, ins[C_P])))
            if ins[C_OUT] >= 0:
                kcall(kt, K_COLSUM, (dZ, _vec(arena, bufs, ins[C_OUT]), acc_w))
            dW = _view(arena, bufs, ins[C_F], nb)
            if wt:   # dWt (out, in) = dZ^T X
                _mm(dZ, X, dW, _T, _F, acc_w, hyper, gjit, jit_slot(jbase, pc, 0), kt)
            else:    # dW (in, out) = X^T dZ
                _mm(X, dZ, dW, _T, _F, acc_w, hyper, gjit, jit_slot(jbase, pc, 0), kt)
            if ins[C_E] >= 0:
                dX = _view(arena, bufs, ins[C_E], nb)
                # dX = dZ W^T  (or dZ Wt)
                _mm(dZ, W, dX, _F, not wt, acc_dx, hyper, gjit, jit_slot(jbase, pc, 1), kt)
        elif op == OP_MATMUL_BWD:
            # out = A @ op(B): dA = dO @ op(B)^T ; d op(B) = A^T dO
            A = _xview(arena, bufs, x, xb, ins[C_A], nb)
            B = _xview(arena, bufs, x, xb, ins[C_B], nb)
            dO = _xview(arena, bufs, x, xb, ins[C_D], nb)
            tb = ins[C_F1] != 0
            if ins[C_E] >= 0:
                _mm(dO, B, _view(arena, bufs, ins[C_E], nb), _F, not tb, ins[C_F2] != 0, hyper, gjit,
                    jit_slot(jbase, pc, 0), kt)
            if ins[C_F] >= 0:
                dB = _view(arena, bufs, ins[C_F], nb)
                if tb:   # B stored transposed: dB = dO^T A
                    _mm(dO, A, dB, _T, _F, ins[C_F3] != 0, hyper, gjit, jit_slot(jbase, pc, 1), kt)
                else:
                    _mm(A, dO, dB, _T, _F, ins[C_F3] != 0, hyper, gjit, jit_slot(jbase, pc, 1), kt)
        elif op == OP_GATE_BWD:
            A = _xview(arena, bufs, x, xb, ins[C_A], nb)
            B = _xview(arena, bufs, x, xb, ins[C_B], nb)
            dO = _xview(arena, bufs, x, xb, ins[C_D], nb)
            gate = ins[C_G]
            if gate < 0 or gate >= GATE_CAPACITY:
                status = STATUS_BAD_OP
                break
            kcall_at(kt, K_GATE + GATE_ROLES * gate + 1, K_GATE_BWD,
                     (gate, A, B, dO, _view_or_empty(arena, bufs, ins[C_E], nb),
                      _view_or_empty(arena, bufs, ins[C_F], nb), ins[C_F2] != 0, ins[C_F3] != 0))
        elif op == OP_ACT_BWD:
            # c: what act' reads (the output, or the input)
            act = ins[C_G]
            if act < 0 or act >= ACT_CAPACITY:
                status = STATUS_BAD_OP
                break
            T = _xview(arena, bufs, x, xb, ins[C_C], nb)
            dO = _xview(arena, bufs, x, xb, ins[C_D], nb)
            kcall_at(kt, K_ACT + N_ROLES * act + 2, K_PROTO_BWD,
                     (T, dO, _view(arena, bufs, ins[C_E], nb), ins[C_F2] != 0, _vec(arena, bufs, ins[C_P])))
        elif op == OP_SUM_BWD:
            dO = _xview(arena, bufs, x, xb, ins[C_D], nb)
            kcall(kt, K_SUM_BWD, (dO, _view(arena, bufs, ins[C_E], nb), ins[C_F2] != 0))
        elif op == OP_LAYERNORM:
            # a=X, b=w, c=bias, out=Y, d=(mean, rstd) per row, p=(eps,)
            kcall(kt, K_LN_FWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _vec(arena, bufs, ins[C_B]),
                                 _vec(arena, bufs, ins[C_C]), _view(arena, bufs, ins[C_OUT], nb),
                                 _view(arena, bufs, ins[C_D], nb), _vec(arena, bufs, ins[C_P])))
        elif op == OP_LAYERNORM_BWD:
            # a=X, b=w, c=stats, d=dY, e=dX, f=dw, out=db; f2..f4: accumulate into dX, dw, db
            kcall(kt, K_LN_BWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _vec(arena, bufs, ins[C_B]),
                                 _view(arena, bufs, ins[C_C], nb), _view(arena, bufs, ins[C_D], nb),
                                 _view_or_empty(arena, bufs, ins[C_E], nb), _vec(arena, bufs, ins[C_F]),
                                 _vec(arena, bufs, ins[C_OUT]), ins[C_F2] != 0, ins[C_F3] != 0, ins[C_F4] != 0))
        elif op == OP_BATCHNORM:
            training = hyper[H_TRAINING] != 0.0
            if ins[C_F1] == 0:
                # forward: a=X, b=w, c=bias, out=Y, d=statistics (5, N), e=running (2, N) or -1
                if (training or ins[C_E] < 0) and nb < 2:
                    status = STATUS_BAD_INPUT      # one value per channel: no batch variance
                    info = INFO_ONE_ROW
                    break
                kcall(kt, K_BN_FWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _vec(arena, bufs, ins[C_B]),
                                     _vec(arena, bufs, ins[C_C]), _view(arena, bufs, ins[C_OUT], nb),
                                     _view(arena, bufs, ins[C_D], nb), _view_or_empty(arena, bufs, ins[C_E], nb),
                                     _vec(arena, bufs, ins[C_P]), training))
            elif training:
                # the running statistics (c=statistics, e=running, f=batches tracked), only
                # when every gradient (a, f4: the gradient region) is finite: a step that
                # fails changes nothing
                if grads_ok < 0:
                    grads_ok = 1 if _all_finite(arena[ins[C_A]:ins[C_A] + ins[C_F4]]) else 0
                if grads_ok == 1:
                    kcall(kt, K_BN_RUNNING, (_view(arena, bufs, ins[C_C], nb), _view(arena, bufs, ins[C_E], nb),
                                             _vec(arena, bufs, ins[C_F]), _vec(arena, bufs, ins[C_P]),
                                             np.int64(nb)))     # not a literal (run_update passes 1)
        elif op == OP_BATCHNORM_BWD:
            # a=X, b=w, c=statistics, d=dY, e=dX, f=dw, out=db; f1: running statistics exist
            batch_stats = hyper[H_TRAINING] != 0.0 or ins[C_F1] == 0
            kcall(kt, K_BN_BWD, (_xview(arena, bufs, x, xb, ins[C_A], nb), _vec(arena, bufs, ins[C_B]),
                                 _view(arena, bufs, ins[C_C], nb), _view(arena, bufs, ins[C_D], nb),
                                 _view_or_empty(arena, bufs, ins[C_E], nb), _vec(arena, bufs, ins[C_F]),
                                 _vec(arena, bufs, ins[C_OUT]), ins[C_F2] != 0, ins[C_F3] != 0, ins[C_F4] != 0,
                                 batch_stats))
        elif op == OP_DROPOUT or op == OP_DROPOUT_BWD:
            # the mask of (seed, layer f1, updates so far, element): recomputed by the
            # backward (fastbp._rng); eval mode (hyper[H_TRAINING] == 0) passes a through
            pdrop = int64_bits_as_float64(ins[C_F3]) if hyper[H_TRAINING] != 0.0 else 0.0
            if op == OP_DROPOUT:
                src = _xview(arena, bufs, x, xb, ins[C_A], nb)
                dst = _view(arena, bufs, ins[C_OUT], nb)
            else:
                src = _xview(arena, bufs, x, xb, ins[C_D], nb)
                dst = _view(arena, bufs, ins[C_E], nb)
            kcall(kt, K_DROPOUT, (src, dst, int(hyper[H_RNG_SEED]), ins[C_F1], int(hyper[H_STEPS]), pdrop,
                                  op == OP_DROPOUT_BWD and ins[C_F2] != 0))
        elif op == OP_SGD or op == OP_ADAM or op == OP_RMSPROP:
            p0 = ins[C_A]
            g0 = ins[C_B]
            n = ins[C_F4]
            g = arena[g0:g0 + n]
            if not _all_finite(g):
                status = STATUS_GRAD_NONFINITE
                break
            if hyper[H_CLIP] > 0.0:     # torch's clip_grad_norm_ over every gradient (one region)
                kcall(kt, K_CLIP_GRAD_NORM, (g, hyper[H_CLIP]))
            p = arena[p0:p0 + n]
            if op == OP_RMSPROP:
                s0 = ins[C_C]
                b0 = ins[C_D]
                a0 = ins[C_E]
                kcall(kt, K_RMSPROP, (p, g, arena[s0:s0 + n], arena[b0:b0 + n] if b0 >= 0 else arena[0:0],
                                      arena[a0:a0 + n] if a0 >= 0 else arena[0:0], hyper[H_LR], hyper[H_ALPHA],
                                      hyper[H_EPS], hyper[H_WD], hyper[H_MOM]))
            elif op == OP_SGD:
                s0 = ins[C_C]
                v = arena[s0:s0 + n] if s0 >= 0 else arena[0:0]
                kcall(kt, K_SGD, (p, g, v, hyper[H_LR], hyper[H_MOM], hyper[H_NESTEROV] != 0.0, hyper[H_WD]))
            else:
                hyper[H_T] += 1.0
                m0 = ins[C_C]
                v0 = ins[C_D]
                kcall(kt, K_ADAM, (p, g, arena[m0:m0 + n], arena[v0:v0 + n], hyper[H_T], hyper[H_LR],
                                   hyper[H_B1], hyper[H_B2], hyper[H_EPS], hyper[H_WD],
                                   hyper[H_DECOUPLED] != 0.0))
            hyper[H_STEPS] += 1.0
    if hyper[H_BT_ON] != 0.0 and hyper[H_BT_CUR] >= 0.0 and hyper[H_BT_CUR] != hyper[H_BT_MAX]:
        blas_set_threads(int(hyper[H_BT_MAX]))
    return status, (0.0 if status == STATUS_BAD_LABEL else loss), info


#: the interpreter as a native kernel: the native loops (:func:`run_fit`,
#: :func:`run_predict`, :func:`run_update`) call it by address (context slot
#: ``X_RUN``), so each of them compiles in well under a second instead of
#: re-optimising a copy of the interpreter (seconds each, per dtype), and runs
#: exactly the code a single step runs.  (Not an index of the kernel table.)
K_RUN_TAPE = 1 << 20
native_kernel(K_RUN_TAPE, run_tape, numba.types.Tuple((I64, numba.types.float64, I64)),
              lambda d: (I1, I64, I64, I64, a2(d), I1, a2(d)))

def run_step(ctx, sec, nb, x, yi, yf, mode):
    """One call: forward (+ loss + backward (+ update)) for a minibatch of ``nb`` rows.

    ``mode``: MODE_FORWARD, MODE_GRAD (no update) or MODE_TRAIN.  The update
    runs only after the loss and every gradient are known to be finite, so a
    failed step leaves parameters and optimizer state untouched.  A plain
    Python function (the section bounds are picked here): only
    :func:`run_tape` is compiled.
    """
    hi = sec[S_FWD]
    if mode != MODE_FORWARD:
        hi = sec[S_BWD] if mode == MODE_GRAD else sec[S_END]
    return run_tape(ctx, 0, hi, nb, x, yi, yf)


@jit
def _copy_row(src, i, dst, j):
    """``dst[j, :] = src[i, :]`` as a loop (equal widths: the caller's buffers).

    numba's slice assignment would compile its shape-mismatch error message,
    which formats tuples into strings: seconds of compilation per caller."""
    for c in range(dst.shape[1]):
        dst[j, c] = src[i, c]


@jit
def run_fit(ctx, sec, X, Yi, Yf, perm, starts, in_order, xbuf, yfbuf, yi_stage, losses, lrs):
    """Whole epochs in one call: each minibatch is the rows ``perm[starts[s]:starts[s+1]]``.

    ``lrs``: float64, the learning rate of each step (a schedule), written into
    ``hyper[H_LR]`` before the step; empty: the step's rate is kept.

    Shuffled (``in_order`` False), the rows are gathered into the input
    buffers first; in order (each minibatch's rows consecutive in ``X``), the
    minibatch is read where it lies, exactly as a call of the step on the
    slice.  Returns ``(status, step, info)``: on failure ``step`` is the index
    of the step that failed (earlier steps are applied).
    """
    arena, bufs, _, hyper, _, _ = _arrays(ctx, X)
    n_steps = starts.shape[0] - 1
    classif = Yi.shape[0] > 0
    for s in range(n_steps):
        if lrs.shape[0] > 0:
            hyper[H_LR] = lrs[s]
        lo = starts[s]
        nb = starts[s + 1] - lo
        if in_order:
            r0 = perm[lo]
            xin = X[r0:r0 + nb]
            yi_v = Yi[r0:r0 + nb] if classif else yi_stage[:0]
            yf_v = _empty(arena) if classif else Yf[r0:r0 + nb]
            first = 0
        else:
            xin = _view(arena, bufs, xbuf, nb)
            for r in range(nb):
                _copy_row(X, perm[lo + r], xin, r)
            yi_v = yi_stage[:nb]
            if classif:
                for r in range(nb):
                    yi_stage[r] = Yi[perm[lo + r]]
                yf_v = _empty(arena)
            else:
                yf_v = _view(arena, bufs, yfbuf, nb)
                for r in range(nb):
                    _copy_row(Yf, perm[lo + r], yf_v, r)
            first = 1   # the LOAD_X instruction (tape[0]) is skipped: the rows are in place
        status, loss, info = kcall_at(ctx, X_RUN, K_RUN_TAPE, (ctx, first, sec[S_END], nb, xin, yi_v, yf_v))
        if status != STATUS_OK:
            return status, s, info
        losses[s] = loss
    return STATUS_OK, n_steps, 0


@jit
def run_predict(ctx, sec, X, out, batch_size, outbuf):
    """Forward pass over ``X`` in chunks of ``batch_size``; network outputs into ``out``.

    Returns ``(status, row)``: ``STATUS_OK`` and ``n``, or the status of the first
    chunk the tape rejected and its first row (``out`` filled only before it).
    """
    arena, bufs, _, _, _, _ = _arrays(ctx, X)
    n = X.shape[0]
    yi = bufs[0, :0]        # an empty int64 vector that allocates nothing
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        nb = hi - lo
        status, _, _ = kcall_at(ctx, X_RUN, K_RUN_TAPE, (ctx, np.int64(0), sec[S_FWD], nb, X[lo:hi], yi, _empty(arena)))
        if status != STATUS_OK:
            return status, lo
        got = _view(arena, bufs, outbuf, nb)
        for r in range(nb):
            _copy_row(got, r, out, lo + r)
    return STATUS_OK, n


@jit
def run_update(ctx, sec, x):
    """Only the optimizer update (after the gradients were reduced across ranks).
    ``x``: any 2-D array of the step's dtype (empty: it is not read)."""
    yi = sec[:0]            # an empty int64 vector that allocates nothing
    return kcall_at(ctx, X_RUN, K_RUN_TAPE, (ctx, sec[S_BWD], sec[S_END], np.int64(1), x, yi, x))


def runtime_hyper(hyper):
    """Fill the process-specific slots of a hyper-parameter array (BLAS policy)."""
    # without a BLAS every product runs in the plain loops
    hyper[H_BLAS_MIN] = BLAS_MIN_MACS if BLAS_AVAILABLE else float(2 ** 62)
    hyper[H_BT_ON] = 1.0 if BLAS_THREAD_CONTROL else 0.0
    hyper[H_BT_MIN] = BLAS_THREADS_MIN_MACS
    hyper[H_JIT_ON] = 1.0 if _blas.GEMM_JIT else 0.0
    return hyper


def gemm_jit_table(plan, batch_size, owner):
    """A step's table of JIT GEMM kernels (int64, ``gjit`` of :func:`context`):
    ``[batch_size, (kernel, jitter, m, n, k) per product slot...]``, all 0
    until each product makes its kernel on first use.  The kernels are freed
    when ``owner`` (the step) is garbage-collected."""
    table = np.zeros(1 + JIT_SLOT * 2 * plan.tape.shape[0], dtype=np.int64)
    table[0] = batch_size
    weakref.finalize(owner, _blas.gemm_jit_destroy, table[2::JIT_SLOT])
    return table
