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
from numba import types as _nt

from .._native import native_kernel
from .activations import _act_bwd, _act_fwd
from .gates import _gate_bwd, _gate_fwd, _sum_bwd, _sum_fwd
from .gemm import _blas_mm, _jit_mm, _mm_small
from .linear import _bias_act, _colsum
from .losses import _bce_logits, _mse, _softmax_xent, _svm
from .optim import _adam_update, _sgd_update

(K_BIAS_ACT, K_ACT_FWD, K_ACT_BWD, K_COLSUM, K_GATE_FWD, K_GATE_BWD, K_SUM_FWD, K_SUM_BWD, K_SOFTMAX_XENT,
 K_SVM, K_MSE, K_BCE_LOGITS, K_SGD, K_ADAM, K_MM_SMALL, K_BLAS_MM, K_JIT_MM) = range(17)
#: entries of a kernel table
N_KERNELS = 17


def a1(d):
    """The numba type of a 1-D C-contiguous array of ``d``."""
    return _nt.Array(d, 1, "C")


def a2(d):
    """The numba type of a 2-D C-contiguous array of ``d``."""
    return _nt.Array(d, 2, "C")


I64, B, F64 = _nt.int64, _nt.boolean, _nt.float64
I1, F1 = a1(_nt.int64), a1(_nt.float64)
NONE = _nt.none

native_kernel(K_BIAS_ACT, _bias_act.serial, NONE, lambda d: (a2(d), a1(d), I64))
native_kernel(K_ACT_FWD, _act_fwd.serial, NONE, lambda d: (a2(d), I64, a2(d)))
native_kernel(K_ACT_BWD, _act_bwd.serial, NONE, lambda d: (a2(d), a2(d), I64, a2(d), B))
native_kernel(K_COLSUM, _colsum.serial, NONE, lambda d: (a2(d), a1(d), B))
native_kernel(K_GATE_FWD, _gate_fwd.serial, NONE, lambda d: (I64, a2(d), a2(d), a2(d)))
native_kernel(K_GATE_BWD, _gate_bwd.serial, NONE, lambda d: (I64, a2(d), a2(d), a2(d), a2(d), a2(d), B, B))
native_kernel(K_SUM_FWD, _sum_fwd.serial, NONE, lambda d: (a2(d), a2(d)))
native_kernel(K_SUM_BWD, _sum_bwd.serial, NONE, lambda d: (a2(d), a2(d), B))
native_kernel(K_SOFTMAX_XENT, _softmax_xent.serial, F64, lambda d: (a2(d), I1, a2(d), F1))
native_kernel(K_SVM, _svm.serial, F64, lambda d: (a2(d), I1, a2(d), F1))
native_kernel(K_MSE, _mse.serial, F64, lambda d: (a2(d), a2(d), a2(d), F1))
native_kernel(K_BCE_LOGITS, _bce_logits.serial, F64, lambda d: (a2(d), a2(d), a2(d), F1))
native_kernel(K_SGD, _sgd_update.serial, NONE, lambda d: (a1(d), a1(d), a1(d), F64, F64, B, F64))
native_kernel(K_ADAM, _adam_update.serial, NONE,
              lambda d: (a1(d), a1(d), a1(d), a1(d), F64, F64, F64, F64, F64, F64, B))
native_kernel(K_MM_SMALL, _mm_small, NONE, lambda d: (a2(d), a2(d), a2(d), B, B, B))
native_kernel(K_BLAS_MM, _blas_mm, NONE, lambda d: (a2(d), a2(d), a2(d), B, B, B))
native_kernel(K_JIT_MM, _jit_mm, B, lambda d: (a2(d), a2(d), a2(d), B, B, B, I1, I64))
