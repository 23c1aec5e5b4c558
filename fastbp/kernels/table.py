"""The kernels the executor calls by address, and their signatures.

The interpreter (:func:`fastbp._executor.run_tape`) calls each kernel through
:func:`fastbp._native.kcall` with the address in a per-dtype table that
:func:`fastbp._executor.context` fills with the kernels a step's tape uses,
compiled (or loaded from numba's disk cache) on first use: each kernel is
compiled once, on its own, and only if some step needs it, and the
interpreter compiles without them (numba would otherwise re-optimise every
kernel inside it).  The signatures here are the only ones the executor
compiles: every array C-contiguous, aligned and writeable.
"""
import numba
from numba import types as _nt
from numba.core import cgutils as _cgutils
from numba.extending import intrinsic as _intrinsic

from .. import _isa
from .._native import _NATIVE, LOCK, native_kernel, native_signature
from ..registry import activations as _R
from . import activations as _act
from . import gates as _gates
from .gates import _sum_bwd, _sum_fwd
from .gemm import _blas_mm, _blas_mm_split, _jit_mm, _mm_small
from .linear import _colsum
from .losses import _bce_logits, _mse, _poisson, _softmax_xent, _svm, clip_log_loss, weigh_rows
from .optim import ADAM_KERNELS, _clip_grad_norm, _rmsprop_update, _sgd_update, _sum_sq
from .norm import _batchnorm_bwd, _batchnorm_fwd, _batchnorm_running, _layernorm_bwd, _layernorm_fwd
from .dropout import _dropout, _dropout_d

(K_COLSUM, K_GATE_FWD, K_GATE_BWD, K_SUM_FWD, K_SUM_BWD, K_SOFTMAX_XENT,
 K_SVM, K_MSE, K_BCE_LOGITS, K_SGD, K_ADAM, K_MM_SMALL, K_BLAS_MM, K_JIT_MM) = range(14)
#: the activation kernels: K_ACT + N_ROLES * code + role (role: activations.ROLE_*)
K_ACT = 14
N_ROLES = _act.N_ROLES
#: entries of a kernel table
N_KERNELS = K_ACT + N_ROLES * _R.CAPACITY
#: dropout's kernel (forward and backward), after the activations' block
K_DROPOUT = N_KERNELS
N_KERNELS = K_DROPOUT + 1
#: dropout's forward scaling the preceding activation's kept derivative too (fastbp._fold_plan)
K_DROPOUT_D = N_KERNELS
N_KERNELS = K_DROPOUT_D + 1
#: the normalisation kernels (fastbp.kernels.norm), after dropout's
(K_LN_FWD, K_LN_BWD, K_BN_FWD, K_BN_BWD, K_BN_RUNNING) = range(N_KERNELS, N_KERNELS + 5)
N_KERNELS = K_BN_RUNNING + 1
#: the identity's kernels: the prototypes whose signatures every entry's kernels share
K_PROTO_BIAS_ACT = K_ACT + _act.ROLE_BIAS_ACT
K_PROTO_FWD = K_ACT + _act.ROLE_FWD
K_PROTO_BWD = K_ACT + _act.ROLE_BWD
K_PROTO_FWD_D = K_ACT + _act.ROLE_FWD_D
K_PROTO_BIAS_ACT_D = K_ACT + _act.ROLE_BIAS_ACT_D
#: kernels numbered after the activation range (the ids above stay as they were)
K_RMSPROP, K_CLIP_GRAD_NORM, K_POISSON, K_MUL_D = range(N_KERNELS, N_KERNELS + 4)
N_KERNELS = K_MUL_D + 1
#: the interpreter's matrix product (own loops, JIT GEMM or BLAS by size) and its
#: instruction handlers, K_HANDLER + opcode (both in fastbp._handlers, which registers them)
K_MM = N_KERNELS
K_HANDLER = K_MM + 1
N_KERNELS = K_HANDLER + _isa.OP_CAPACITY


def a1(d):
    """The numba type of a 1-D C-contiguous array of ``d``."""
    return _nt.Array(d, 1, "C")


def a2(d):
    """The numba type of a 2-D C-contiguous array of ``d``."""
    return _nt.Array(d, 2, "C")


I64, B, F64 = _nt.int64, _nt.boolean, _nt.float64
I1, F1 = a1(_nt.int64), a1(_nt.float64)
NONE = _nt.none

native_kernel(K_COLSUM, _colsum, NONE, lambda d: (a2(d), a1(d), B))
#: the gate kernels, after every other block: K_GATE + GATE_ROLES * code + role
#: (role: gates.ROLE_FWD / ROLE_BWD)
K_GATE = N_KERNELS
GATE_ROLES = _gates.N_ROLES
N_KERNELS = K_GATE + GATE_ROLES * _gates.R.CAPACITY
#: precision="bf16": float32 -> bf16 rounding and the bf16 product (fastbp.kernels.bf16,
#: registered by fastbp._bf16.require, which loads oneDNN first)
K_TO_BF16, K_MM_BF16 = range(N_KERNELS, N_KERNELS + 2)
N_KERNELS = K_MM_BF16 + 1
#: the sample weights of a weighted call (fastbp.kernels.losses.weigh_rows); like gradient
#: clipping (K_CLIP_GRAD_NORM) not among a tape's kernels (kernels_for): loaded when a
#: step first uses it (fastbp._executor.load_kernels), as most never do
K_WEIGH_ROWS = N_KERNELS
N_KERNELS = K_WEIGH_ROWS + 1
#: the sum of squares of the decayed weights before an update (fastbp.kernels.optim._sum_sq,
#: hyper[H_WD_SQ]): loaded by the estimators, the only callers that set H_WD_ROWS
K_SUM_SQ = N_KERNELS
N_KERNELS = K_SUM_SQ + 1
#: scikit-learn's clipped log-loss value after a loss kernel (fastbp.kernels.losses.clip_log_loss,
#: hyper[H_LOSS_CLIP]): loaded by the estimators, the only callers that set H_LOSS_CLIP
K_CLIP_LOSS = N_KERNELS
N_KERNELS = K_CLIP_LOSS + 1
#: Adam's kernels of the two weight-decay modes besides none (K_ADAM); ADAM_KERNEL_IDS: by
#: mode (registry ADAM_* code, the update instruction's column g)
K_ADAM_DECOUPLED, K_ADAM_L2 = range(N_KERNELS, N_KERNELS + 2)
N_KERNELS = K_ADAM_L2 + 1
ADAM_KERNEL_IDS = (K_ADAM, K_ADAM_DECOUPLED, K_ADAM_L2)
#: argument types of the gate roles (fwd, bwd); K_GATE_FWD / K_GATE_BWD hold the add gate's
#: kernels as the prototypes (kcall_at types a gate's call by them), the executor calls
#: every gate, add included, at K_GATE + GATE_ROLES * code + role
_GATE_SIGS = (lambda d: (I64, a2(d), a2(d), a2(d)),
              lambda d: (I64, a2(d), a2(d), a2(d), a2(d), a2(d), B, B))
native_kernel(K_GATE_FWD, _gates.kernels(_gates.R.ADD).fwd, NONE, _GATE_SIGS[0])
native_kernel(K_GATE_BWD, _gates.kernels(_gates.R.ADD).bwd, NONE, _GATE_SIGS[1])
native_kernel(K_SUM_FWD, _sum_fwd.serial, NONE, lambda d: (a2(d), a2(d)))
native_kernel(K_SUM_BWD, _sum_bwd, NONE, lambda d: (a2(d), a2(d), B))
native_kernel(K_SOFTMAX_XENT, _softmax_xent, F64, lambda d: (a2(d), I1, a2(d), F1))
native_kernel(K_SVM, _svm, F64, lambda d: (a2(d), I1, a2(d), F1))
native_kernel(K_MSE, _mse, F64, lambda d: (a2(d), a2(d), a2(d), F1))
native_kernel(K_BCE_LOGITS, _bce_logits, F64, lambda d: (a2(d), a2(d), a2(d), F1))
native_kernel(K_SGD, _sgd_update, NONE, lambda d: (a1(d), a1(d), a1(d), F64, F64, B, F64))
for _kid, _k in zip(ADAM_KERNEL_IDS, ADAM_KERNELS):
    native_kernel(_kid, _k, NONE, lambda d: (a1(d), a1(d), a1(d), a1(d), F64, F64, F64, F64, F64, F64, B))
native_kernel(K_RMSPROP, _rmsprop_update, NONE,
              lambda d: (a1(d), a1(d), a1(d), a1(d), a1(d), F64, F64, F64, F64, F64))
native_kernel(K_POISSON, _poisson, F64, lambda d: (a2(d), a2(d), a2(d), F1))
native_kernel(K_CLIP_GRAD_NORM, _clip_grad_norm.serial, NONE, lambda d: (a1(d), F64))
native_kernel(K_WEIGH_ROWS, weigh_rows, F64, lambda d: (a2(d), F1, F1, I64, B))
native_kernel(K_SUM_SQ, _sum_sq.serial, F64, lambda d: (a1(d),))
native_kernel(K_CLIP_LOSS, clip_log_loss, F64, lambda d: (a2(d), a2(d), F1, B, F64))
native_kernel(K_MM_SMALL, _mm_small, NONE, lambda d: (a2(d), a2(d), a2(d), B, B, B))
native_kernel(K_BLAS_MM, _blas_mm, NONE, lambda d: (a2(d), a2(d), a2(d), B, B, B), parallel=_blas_mm_split)
native_kernel(K_JIT_MM, _jit_mm, B, lambda d: (a2(d), a2(d), a2(d), B, B, B, I1, I64))
native_kernel(K_LN_FWD, _layernorm_fwd, NONE, lambda d: (a2(d), a1(d), a1(d), a2(d), a2(d), a1(d)))
native_kernel(K_LN_BWD, _layernorm_bwd, NONE,
              lambda d: (a2(d), a1(d), a2(d), a2(d), a2(d), a1(d), a1(d), B, B, B))
native_kernel(K_BN_FWD, _batchnorm_fwd, NONE,
              lambda d: (a2(d), a1(d), a1(d), a2(d), a2(d), a2(d), a1(d), B))
native_kernel(K_BN_BWD, _batchnorm_bwd, NONE,
              lambda d: (a2(d), a1(d), a2(d), a2(d), a2(d), a1(d), a1(d), B, B, B, B))
native_kernel(K_BN_RUNNING, _batchnorm_running.serial, NONE, lambda d: (a2(d), a2(d), a1(d), a1(d), I64))
native_kernel(K_DROPOUT, _dropout, NONE, lambda d: (a2(d), a2(d), I64, I64, I64, I64, F64, B))
native_kernel(K_DROPOUT_D, _dropout_d, NONE, lambda d: (a2(d), a2(d), a2(d), I64, I64, I64, I64, F64))
native_kernel(K_MUL_D, _act._mul_d, NONE, lambda d: (a2(d), a2(d), a2(d), B))

#: argument types of the activation roles (bias_act, fwd, bwd, fwd_d, bias_act_d)
_ACT_SIGS = (lambda d: (a2(d), a1(d), a2(d), a1(d)),
             lambda d: (a2(d), a2(d), a1(d)),
             lambda d: (a2(d), a2(d), a2(d), B, a1(d)),
             lambda d: (a2(d), a2(d), a2(d), a1(d)),
             lambda d: (a2(d), a1(d), a2(d), a1(d)))
#: kernel id -> the registry entry (activation or gate) whose kernel it is
_ENTRY_OF = {}


def _ensure_entry_kernels(kind, entry, kernels, first_id, sigs):
    """Register ``entry``'s kernel of each role (``kernels.roles()``) as native kernels
    ``first_id + role``, with the role's argument types from ``sigs``; returns the ids.
    A code already registered for another entry of that family is a RuntimeError."""
    ids = []
    with LOCK:              # check and register as one: steps built on several threads at once
        for role, k in enumerate(kernels.roles()):
            kid = first_id + role
            old = _ENTRY_OF.get(kid)
            if old is not None and old is not entry:
                raise RuntimeError(f"{kind} code {entry.code} was {old.name!r} and is now {entry.name!r} "
                                   f"in this process: its native kernels are already loaded")
            if old is None:
                native_kernel(kid, k, NONE, sigs[role])      # with its parallel twin
                _ENTRY_OF[kid] = entry
            ids.append(kid)
    return ids


def act_kernel_id(code, role):
    """The table index of activation ``code``'s kernel ``role``."""
    return K_ACT + N_ROLES * code + role


def ensure_act_kernels(code):
    """Register activation ``code``'s kernels as native kernels (not compiled
    yet: that happens when a table loads them); returns their ids.

    Raises
    ------
    ValueError
        No registry entry has that code.
    """
    entry = _R.by_code(code)
    return _ensure_entry_kernels("activation", entry, _act.kernels(code), act_kernel_id(entry.code, 0), _ACT_SIGS)


ensure_act_kernels(_R.IDENTITY)     # the prototypes: kcall_at types calls by their signatures


def gate_kernel_id(code, role):
    """The table index of gate ``code``'s kernel ``role`` (gates.ROLE_FWD / ROLE_BWD)."""
    return K_GATE + GATE_ROLES * code + role


def ensure_gate_kernels(code):
    """Register gate ``code``'s kernels as native kernels (compiled when a
    table loads them); returns their ids ``(fwd, bwd)``.

    Raises
    ------
    ValueError
        No gate registry entry has that code.
    """
    entry = _gates.R.by_code(code)
    return _ensure_entry_kernels("gate", entry, _gates.kernels(entry.code), gate_kernel_id(entry.code, 0),
                                 _GATE_SIGS)


@_intrinsic
def kcall_at(typingctx, table, idx, proto, args):
    """``kcall_at(table, i, PROTO, (arg, ...))``: call the native kernel at the
    address ``table[i]``, an index known only at run time (an activation's
    kernel: ``act_kernel_id(code, role)``), typed by native kernel ``PROTO``
    (a constant), whose signature every kernel that may sit at ``i`` shares.

    An index outside the table or a zero address raises RuntimeError (the
    executor checks codes before: an unknown code is a status, not a call).
    """
    if not (isinstance(table, _nt.Array) and table.ndim == 1 and table.dtype == _nt.int64
            and isinstance(idx, _nt.Integer) and isinstance(proto, _nt.IntegerLiteral)
            and isinstance(args, _nt.BaseTuple)):
        return None
    k = proto.literal_value
    if k not in _NATIVE:
        raise numba.core.errors.TypingError(f"kcall_at: no native kernel {k}")
    arrays = [t for t in args.types if isinstance(t, _nt.Array) and isinstance(t.dtype, _nt.Float)]
    ret, want = native_signature(k, arrays[0].dtype)
    if tuple(args.types) != want:
        raise numba.core.errors.TypingError(f"kcall_at: prototype {k} takes {want}, got {tuple(args.types)}")

    def impl(context, builder, signature, llargs):
        ary = context.make_array(signature.args[0])(context, builder, value=llargs[0])
        i = context.cast(builder, llargs[1], signature.args[1], _nt.intp)
        n = builder.extract_value(ary.shape, 0)
        bad = builder.or_(builder.icmp_signed("<", i, context.get_constant(_nt.intp, 0)),
                          builder.icmp_signed(">=", i, n))
        with _cgutils.if_unlikely(builder, bad):
            context.call_conv.return_user_exc(builder, RuntimeError, ("fastbp: kernel index outside the table",))
        addr = builder.load(builder.gep(ary.data, [i]))
        with _cgutils.if_unlikely(builder, builder.icmp_signed("==", addr, context.get_constant(_nt.int64, 0))):
            context.call_conv.return_user_exc(
                builder, RuntimeError, ("fastbp: a native kernel (a handler, an activation's or a gate's) was not loaded for this step",))
        fnty = context.call_conv.get_function_type(ret, want)
        fn = builder.inttoptr(addr, fnty.as_pointer())
        vals = [builder.extract_value(llargs[3], j) for j in range(len(want))]
        status, res = context.call_conv.call_function(builder, fn, ret, want, vals)
        with _cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return res
    return ret(table, idx, proto, args), impl


# ------------------------------------------------- which kernels a tape calls
from .. import _blas  # noqa: E402
from ..registry import losses as _loss_registry  # noqa: E402
from .gemm import BLAS_AVAILABLE  # noqa: E402

import numpy as np  # noqa: E402

#: loss code -> its CPU kernel (the loss registry names the kernel of each entry)
_LOSS_KERNEL = {e.code: {"_softmax_xent": K_SOFTMAX_XENT, "_svm": K_SVM, "_mse": K_MSE,
                         "_bce_logits": K_BCE_LOGITS, "_poisson": K_POISSON}[e.cpu] for e in _loss_registry.entries()}

#: per opcode: the kernels it calls besides the matrix products (the loss kernel is
#: chosen by the instruction's loss code), and whether it multiplies matrices
_OP_KERNELS = {
    _isa.OP_LOAD_X: ((), False), _isa.OP_SEED: ((), False),
    _isa.OP_LINEAR: ((), True), _isa.OP_MATMUL: ((), True), _isa.OP_GATE: ((), False),
    _isa.OP_ACT: ((), False), _isa.OP_SUM: ((K_SUM_FWD,), False), _isa.OP_LOSS: ((), False),
    _isa.OP_LINEAR_BWD: ((K_COLSUM,), True), _isa.OP_MATMUL_BWD: ((), True),
    _isa.OP_GATE_BWD: ((), False), _isa.OP_ACT_BWD: ((), False),
    _isa.OP_SUM_BWD: ((K_SUM_BWD,), False), _isa.OP_SGD: ((K_SGD,), False), _isa.OP_ADAM: ((), False),
    _isa.OP_RMSPROP: ((K_RMSPROP,), False),
}
_OP_KERNELS[_isa.OP_LAYERNORM] = ((K_LN_FWD,), False)
_OP_KERNELS[_isa.OP_LAYERNORM_BWD] = ((K_LN_BWD,), False)
_OP_KERNELS[_isa.OP_BATCHNORM] = ((K_BN_FWD, K_BN_RUNNING), False)
_OP_KERNELS[_isa.OP_BATCHNORM_BWD] = ((K_BN_BWD,), False)
#: the update opcodes: each may clip the gradients first (hyper slot H_CLIP)
_UPDATE_OPS = (_isa.OP_SGD, _isa.OP_ADAM, _isa.OP_RMSPROP)
_OP_KERNELS[_isa.OP_DROPOUT] = ((K_DROPOUT,), False)
_OP_KERNELS[_isa.OP_DROPOUT_BWD] = ((K_DROPOUT,), False)
_OP_KERNELS[_isa.OP_LINEAR_BF16] = ((K_TO_BF16, K_MM_BF16), False)
_OP_KERNELS[_isa.OP_LINEAR_BWD_BF16] = ((K_COLSUM, K_TO_BF16, K_MM_BF16), False)
#: the bf16 opcodes' float twins: the same activation kernels
_BF16_TWIN = {_isa.OP_LINEAR_BF16: _isa.OP_LINEAR, _isa.OP_LINEAR_BWD_BF16: _isa.OP_LINEAR_BWD}
#: opcodes the interpreter runs itself (every other has a handler, K_HANDLER + opcode)
_INLINE_OPS = (_isa.OP_LOAD_X, _isa.OP_SEED)
#: the opcodes with a handler
HANDLED_OPS = tuple(sorted(op for op in _OP_KERNELS if op not in _INLINE_OPS))
#: opcodes whose C_G is an activation code, and the roles of its kernels they call
#: (OP_ACT keeping the derivative, c >= 0, calls fwd_d too: fwd in eval mode; OP_LINEAR with
#: f5 = 1 bias_act_d too; OP_ACT_BWD reading a kept derivative, f1 = 1, and OP_LINEAR_BWD with
#: f5 = 1 call K_MUL_D instead)
_ACT_ROLES = {_isa.OP_LINEAR: (0,), _isa.OP_ACT: (1,), _isa.OP_LINEAR_BWD: (2,), _isa.OP_ACT_BWD: (2,)}


def kernels_for(tape):
    """The native kernels (``K_*``) that running ``tape`` may call, but for those
    that a step's settings call for (gradient clipping, ``K_CLIP_GRAD_NORM``) or a
    call (sample weights, ``K_WEIGH_ROWS``): the step loads them when it first
    needs them (:func:`fastbp._executor.load_kernels`).

    Raises
    ------
    ValueError
        The tape holds an opcode, an activation code or a loss code this
        executor does not know.
    """
    need = set()
    mm = False
    for ins in np.asarray(tape):
        op = int(ins[_isa.C_OP])
        if op not in _OP_KERNELS:
            raise ValueError(f"executor: unknown opcode {op} in the tape")
        kernels, products = _OP_KERNELS[op]
        need.update(kernels)
        if op not in _INLINE_OPS:
            need.add(K_HANDLER + op)
        mm = mm or products
        if op == _isa.OP_ADAM:          # the kernel of the instruction's weight-decay mode
            mode = int(ins[_isa.C_G])
            if not 0 <= mode < len(ADAM_KERNEL_IDS):
                raise ValueError(f"executor: unknown Adam weight-decay mode {mode} in the tape")
            need.add(ADAM_KERNEL_IDS[mode])
        if op == _isa.OP_LOSS:
            code = int(ins[_isa.C_G])
            if code not in _LOSS_KERNEL:
                raise ValueError(f"executor: unknown loss code {code} in the tape")
            need.add(_LOSS_KERNEL[code])
        if op == _isa.OP_DROPOUT and int(ins[_isa.C_C]) >= 0:
            need.add(K_DROPOUT_D)
        if op == _isa.OP_GATE or op == _isa.OP_GATE_BWD:
            ids = ensure_gate_kernels(int(ins[_isa.C_G]))    # ValueError: unknown gate code
            need.add(ids[0 if op == _isa.OP_GATE else 1])
        op = _BF16_TWIN.get(op, op)
        if op in _ACT_ROLES:
            code = int(ins[_isa.C_G])
            ids = ensure_act_kernels(code)     # ValueError: unknown activation code
            if op == _isa.OP_ACT and int(ins[_isa.C_C]) >= 0:
                need.add(ids[_act.ROLE_FWD_D])
            if op == _isa.OP_LINEAR and int(ins[_isa.C_F5]) != 0:
                need.add(ids[_act.ROLE_BIAS_ACT_D])
            if ((op == _isa.OP_ACT_BWD and int(ins[_isa.C_F1]) != 0)
                    or (op == _isa.OP_LINEAR_BWD and int(ins[_isa.C_F5]) != 0)):
                need.add(K_MUL_D)
            elif not (op == _isa.OP_LINEAR_BWD and code == _R.IDENTITY):
                # (a linear layer's backward skips the identity's derivative)
                need.update(ids[r] for r in _ACT_ROLES[op])
    if mm:
        need.add(K_MM)
        need.add(K_MM_SMALL)
        if BLAS_AVAILABLE:
            need.add(K_BLAS_MM)
        if _blas.GEMM_JIT:
            need.add(K_JIT_MM)
    return need


