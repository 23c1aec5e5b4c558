"""The GPU step's own kernels: the status word, the gated updates and the minibatch gather.

A :class:`fastbp.cuda_step.CudaTrainStep` checks failures on the device: a
status kernel after the loss (labels, loss) and one before the update
(gradients) write a status word (a float64 device array, slots ``R_*``)
that the update kernels read; they return at once when it is set.  The
status is sticky until the host has read it and reset it
(:func:`_k_reset_status`).

Importing this module needs numba-cuda (:mod:`fastbp.cuda_step` imports it
only when numba-cuda is there).
"""
from numba import cuda, float64, int64

from . import _isa as ex
from .kernels.cuda import losses as _glo
from .kernels.cuda import optim as _go
from .kernels.cuda.launch import REDUCE_THREADS, device, kernel

#: slots of the status word (a float64 device array, copied back after each call)
R_LOSS, R_STATUS, R_INFO, R_STEP = range(4)
RES_SIZE = 4

# status codes as plain module constants (compile-time constants in the kernels)
_BAD_LABEL = ex.STATUS_BAD_LABEL
_LOSS_NONFINITE = ex.STATUS_LOSS_NONFINITE
_GRAD_NONFINITE = ex.STATUS_GRAD_NONFINITE

# the update bodies are the kernels of fastbp.kernels.cuda.optim, reused as
# device functions: same arithmetic, plus the status gate below
_sgd_body = device(_go._k_sgd.py_func)
_first_bad_label = _glo._first_bad_label
_adam_body = device(_go._k_adam.py_func)
_rmsprop_body = device(_go._k_rmsprop.py_func)
_grad_scale_body = device(_go._k_grad_scale.py_func)


@kernel
def _k_sgd_gated(p, g, v, lr, momentum, nesterov, weight_decay, res):
    """``_sgd_update``, skipped when the status word ``res[1]`` is set."""
    if res[1] != 0.0:
        return
    _sgd_body(p, g, v, lr, momentum, nesterov, weight_decay)


@kernel
def _k_adam_gated(p, g, m, v, step, sbc2, beta1, beta2, c1, c2, eps, weight_decay, decay, decoupled, res):
    """``_adam_update``, skipped when the status word ``res[1]`` is set."""
    if res[1] != 0.0:
        return
    _adam_body(p, g, m, v, step, sbc2, beta1, beta2, c1, c2, eps, weight_decay, decay, decoupled)


@kernel
def _k_rmsprop_gated(p, g, sq, buf, gavg, lr, alpha, calpha, eps, weight_decay, momentum, res):
    """``_rmsprop_update``, skipped when the status word ``res[1]`` is set."""
    if res[1] != 0.0:
        return
    _rmsprop_body(p, g, sq, buf, gavg, lr, alpha, calpha, eps, weight_decay, momentum)


@kernel
def _k_grad_scale_gated(g, coef, res):
    """Gradient clipping's ``g *= coef[0]``, skipped when the status word ``res[1]`` is set
    (the coefficient of non-finite gradients is never applied)."""
    if res[1] != 0.0:
        return
    _grad_scale_body(g, coef)


@kernel
def _k_loss_status(y, n_classes, loss, out, res, step):
    """After a loss kernel (one block): first bad label, else a non-finite loss,
    goes to the status word; a finite loss is stored in ``out[0, 0]``.

    ``y`` are the labels (size 0 for regression).  A status already set
    (by an earlier step of a fit) is kept.
    """
    buf = cuda.shared.array(REDUCE_THREADS, dtype=int64)
    if res[1] != 0.0:          # uniform over the block
        return
    _first_bad_label(y, n_classes, buf)
    if cuda.threadIdx.x == 0:
        if buf[0] < y.shape[0]:
            res[1] = float64(_BAD_LABEL)
            res[2] = float64(buf[0])
            res[3] = float64(step)
        else:
            v = loss[0]
            if v - v != 0.0:   # NaN or +-inf
                res[1] = float64(_LOSS_NONFINITE)
                res[3] = float64(step)
            elif out.shape[0] > 0:
                out[0, 0] = v


@kernel
def _k_grad_status(g, res, step):
    """Before an update: set the status word if any gradient is NaN or infinite.

    Every writer writes the same values, so the race between blocks is benign.
    """
    if res[1] != 0.0:
        return
    bad = False
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        v = g[i]
        if v - v != 0.0:
            bad = True
    if bad:
        res[1] = float64(_GRAD_NONFINITE)
        res[3] = float64(step)


@kernel
def _k_reset_status(res):
    if cuda.grid(1) == 0:
        res[1] = 0.0
        res[2] = 0.0
        res[3] = 0.0


@kernel
def _k_gather(X, Y, perm, lo, xo, yo):
    """``xo[r] = X[perm[lo + r]]`` and ``yo[r] = Y[perm[lo + r]]`` (a minibatch of a fit)."""
    x0, y0 = cuda.grid(2)
    sx, sy = cuda.gridsize(2)
    for r in range(y0, xo.shape[0], sy):
        src = perm[lo + r]
        for j in range(x0, xo.shape[1], sx):
            xo[r, j] = X[src, j]
        for j in range(x0, yo.shape[1], sx):
            yo[r, j] = Y[src, j]
