"""Optimizer updates on flat parameter/gradient/state vectors.

The compiler lays every parameter of a model out in one contiguous region,
so a whole update is one loop.  Semantics follow ``torch.optim``.
"""
import math

import numba
from numba import prange

from .._jit import ChosenKernel, Kernel, jit, kernel
from ..registry import optimizers as _opt
from .factory import specialise
from ..registry.optimizers import ADAM_DECOUPLED, ADAM_L2, ADAM_NO_DECAY

# the element updates: the registry's bodies (the CUDA kernels compile the same; Adam's here
# without fast-math, see ADAM_KERNELS).  Adam's and RMSprop's are compiled as functions of their
# own that LLVM inlines into the loops: inlined by numba instead (inline="always"), their loops
# stayed scalar (Adam: 1.5 ms for an update of 400k float32 parameters, 0.2 ms vectorised).
# SGD's, whose loop-invariant flags numba's inlining lets LLVM unswitch, is the other way round
# (0.05 ms inlined by numba, 4 ms as a call).
_sgd_element = numba.njit(inline="always")(_opt.sgd_element)
_adam_element = jit(_opt.adam_element, fastmath=False)
_rmsprop_element = jit(_opt.rmsprop_element)
# the update's float64 scalars, without fast-math (no contraction: as the CUDA step's host code)
_adam_scalars = jit(_opt.adam_scalars, fastmath=False)
_rmsprop_scalars = jit(_opt.rmsprop_scalars, fastmath=False)


@kernel
def _sgd_update(p, g, v, lr, momentum, nesterov, weight_decay):
    """SGD with momentum: ``g += wd p``; ``v = mu v + g``; ``p -= lr (g + mu v if nesterov else v)``
    (the registry's element body, :func:`fastbp.registry.optimizers.sgd_element`).

    ``v`` may have size 0 when ``momentum == 0``.
    """
    dt = p.dtype.type
    lr_ = dt(lr)
    mu = dt(momentum)
    wd = dt(weight_decay)
    use_mom = momentum != 0.0
    use_wd = weight_decay != 0.0
    for i in prange(p.shape[0]):
        _sgd_element(p, g, v, i, lr_, mu, wd, use_wd, use_mom, nesterov)


def _t_adam(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled):
    """Adam (``decoupled=True``: AdamW), step number ``t >= 1``
    (the registry's element body, :func:`fastbp.registry.optimizers.adam_element`),
    in one weight-decay mode, ``_MODE`` (``ADAM_*``, a constant of each copy).

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """
    dt = p.dtype.type
    # in float64, each rounded once (as PyTorch's and scikit-learn's)
    step64, sbc2_64, c1_64, c2_64, decay64 = _adam_scalars(lr, beta1, beta2, t, weight_decay)
    step = dt(step64)
    sbc2 = dt(sbc2_64)
    b1 = dt(beta1)
    b2 = dt(beta2)
    c1 = dt(c1_64)
    c2 = dt(c2_64)
    e = dt(eps)
    wd = dt(weight_decay)
    decay = dt(decay64)
    for i in prange(p.shape[0]):
        _adam_element(p, g, m, v, i, step, sbc2, b1, b2, c1, c2, e, wd, decay, _MODE)  # noqa: F821


# One kernel per weight-decay mode, the mode a constant in each: a step compiles (or loads)
# the kernel of its own mode only (the update instruction holds it; the three modes in one
# kernel were 0.35 s of a cold `fastbp train`'s compilation).  Without fast-math, the update
# and its element body: with it, the serial and the parallel compilations contracted the
# update into FMAs differently and disagreed in the last bit (float64, ~0.1-0.3% of the
# elements); in IEEE order they agree, and the loop stays vectorised (0.16 ms for 400k
# float32 parameters, as with fast-math).
_adam_no_decay = Kernel(specialise(_t_adam, "_no_decay", _MODE=ADAM_NO_DECAY), fastmath=False)
_adam_decoupled = Kernel(specialise(_t_adam, "_decoupled", _MODE=ADAM_DECOUPLED), fastmath=False)
_adam_l2 = Kernel(specialise(_t_adam, "_l2", _MODE=ADAM_L2), fastmath=False)
#: the kernel of each mode, by ADAM_* code
ADAM_KERNELS = (_adam_no_decay, _adam_decoupled, _adam_l2)


class _AdamByMode(ChosenKernel):
    """``_adam_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled)``:
    Adam's update through the kernel of its weight-decay mode (:data:`ADAM_KERNELS`),
    with a :class:`fastbp._jit.Kernel`'s interface (``serial``, ``parallel``,
    ``pick(work)``, called: serial).  For callers from Python; the executor calls the
    mode's kernel itself."""

    by = "weight-decay mode"

    def choose(self, args):
        return ADAM_KERNELS[_opt.adam_mode(args[9], args[10])], args


_adam_update = _AdamByMode("_adam_update")


@kernel
def _rmsprop_update(p, g, sq, buf, gavg, lr, alpha, eps, weight_decay, momentum):
    """RMSprop, ``torch.optim.RMSprop`` semantics.

    ``g += wd p``; ``s = alpha s + (1 - alpha) g^2``; centered (``gavg`` of
    size ``n``, else size 0): ``a = alpha a + (1 - alpha) g`` and
    ``d = sqrt(s - a^2) + eps``, else ``d = sqrt(s) + eps``; with momentum
    (``buf`` of size ``n``, else size 0): ``b = mu b + g / d``, ``p -= lr b``,
    else ``p -= lr g / d``.
    """
    dt = p.dtype.type
    lr_ = dt(lr)
    a = dt(alpha)
    ca = dt(_rmsprop_scalars(alpha))        # in float64, rounded once (as PyTorch's)
    e = dt(eps)
    wd = dt(weight_decay)
    mu = dt(momentum)
    centered = gavg.shape[0] > 0
    use_mom = buf.shape[0] > 0
    use_wd = weight_decay != 0.0
    # one loop per (centered, momentum) pair, the pair a constant in each (as Adam's modes): with
    # the flags read at run time the loop stayed scalar (1.4 ms plain, 8.7 ms centered with
    # momentum for 400k float32 parameters; 0.15 and 0.3 ms vectorised)
    n = p.shape[0]
    if centered and use_mom:
        for i in prange(n):
            _rmsprop_element(p, g, sq, buf, gavg, i, lr_, a, ca, e, wd, use_wd, mu, True, True)
    elif centered:
        for i in prange(n):
            _rmsprop_element(p, g, sq, buf, gavg, i, lr_, a, ca, e, wd, use_wd, mu, True, False)
    elif use_mom:
        for i in prange(n):
            _rmsprop_element(p, g, sq, buf, gavg, i, lr_, a, ca, e, wd, use_wd, mu, False, True)
    else:
        for i in prange(n):
            _rmsprop_element(p, g, sq, buf, gavg, i, lr_, a, ca, e, wd, use_wd, mu, False, False)


@kernel
def _sum_sq(v):
    """``sum(v ** 2)`` accumulated in float64: the weights' ``||W||^2`` of the L2 term that
    the estimators report (a value, not a step: no derivative)."""
    s = 0.0
    for i in range(v.shape[0]):
        x = float(v[i])
        s += x * x
    return s


#: the serial compilation, which the clipping kernel calls (a Kernel object is not typed in numba)
_sum_sq_serial = _sum_sq.serial


@kernel
def _clip_grad_norm(g, max_norm):
    """``torch.nn.utils.clip_grad_norm_`` on one flat gradient vector:
    ``g *= min(1, max_norm / (||g||_2 + 1e-6))``, the squared norm accumulated in float64
    (:func:`_sum_sq`)."""
    s = _sum_sq_serial(g)
    coef = max_norm / (math.sqrt(s) + 1e-6)
    c = g.dtype.type(min(coef, 1.0))
    for i in range(g.shape[0]):
        g[i] = g[i] * c
