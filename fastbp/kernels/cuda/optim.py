"""Optimizer updates for CUDA on flat parameter/gradient/state device vectors.

Same semantics as :mod:`fastbp.kernels.optim` (``torch.optim``); one thread
per parameter (1-D grid, grid-stride).  The step-dependent scalars (Adam's
bias corrections) are computed once on the host in float64, exactly as the
CPU kernel computes them before its loop, and cast to the array dtype in the
kernel, so float32 updates do float32 arithmetic only.
"""
import math

from numba import cuda, float64

from .gates import _block_sum
from ...registry import optimizers as _opt
from ...registry.optimizers import ADAM_DECOUPLED, ADAM_L2, ADAM_NO_DECAY
from .launch import REDUCE_THREADS, device, grid_1d, grid_reduce, kernel

# the element updates: the registry's bodies (the CPU kernels compile the same)
_sgd_element = device(_opt.sgd_element)
_adam_element = device(_opt.adam_element)
_rmsprop_element = device(_opt.rmsprop_element)

#: cap on blocks of the grid-stride update kernels
_MAX_BLOCKS = 4096


@kernel
def _k_sgd(p, g, v, lr, momentum, nesterov, weight_decay):
    """SGD (the registry's element body, :func:`fastbp.registry.optimizers.sgd_element`)."""
    dt = p.dtype.type
    lr_ = dt(lr)
    mu = dt(momentum)
    wd = dt(weight_decay)
    use_mom = momentum != 0.0
    use_wd = weight_decay != 0.0
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        _sgd_element(p, g, v, i, lr_, mu, wd, use_wd, use_mom, nesterov)


@kernel
def _k_adam(p, g, m, v, step, sbc2, beta1, beta2, c1, c2, eps, weight_decay, decay, decoupled):
    """Adam / AdamW (the registry's element body, :func:`fastbp.registry.optimizers.adam_element`);
    ``step``, ``sbc2``, ``decay`` and ``c1 = 1 - beta1``, ``c2 = 1 - beta2`` computed on the host
    in float64 as the CPU kernel does (a float32 kernel does no float64 arithmetic)."""
    dt = p.dtype.type
    step_ = dt(step)
    sbc2_ = dt(sbc2)
    b1 = dt(beta1)
    b2 = dt(beta2)
    c1_ = dt(c1)
    c2_ = dt(c2)
    e = dt(eps)
    wd = dt(weight_decay)
    decay_ = dt(decay)
    mode = ADAM_NO_DECAY
    if weight_decay != 0.0:
        mode = ADAM_DECOUPLED if decoupled else ADAM_L2
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        _adam_element(p, g, m, v, i, step_, sbc2_, b1, b2, c1_, c2_, e, wd, decay_, mode)


@kernel
def _k_rmsprop(p, g, sq, buf, gavg, lr, alpha, calpha, eps, weight_decay, momentum):
    dt = p.dtype.type
    lr_ = dt(lr)
    a = dt(alpha)
    ca = dt(calpha)             # 1 - alpha, computed on the host in float64 (as the CPU kernel)
    e = dt(eps)
    wd = dt(weight_decay)
    mu = dt(momentum)
    use_wd = weight_decay != 0.0
    centered = gavg.shape[0] > 0
    use_mom = buf.shape[0] > 0
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        _rmsprop_element(p, g, sq, buf, gavg, i, lr_, a, ca, e, wd, use_wd, mu, centered, use_mom)


@kernel
def _k_clip_coef(g, max_norm, coef):
    """One block: ``coef[0] = min(1, max_norm / (||g||_2 + 1e-6))``, the sum of squares
    in float64 (a fixed-order tree sum: deterministic)."""
    sh = cuda.shared.array(REDUCE_THREADS, dtype=float64)
    tid = cuda.threadIdx.x
    s = 0.0
    for i in range(tid, g.shape[0], REDUCE_THREADS):
        v = float64(g[i])
        s += v * v
    sh[tid] = s
    _block_sum(sh, tid)
    if tid == 0:
        c = max_norm / (math.sqrt(sh[0]) + 1e-6)
        coef[0] = c if c < 1.0 else 1.0


@kernel
def _k_grad_scale(g, coef):
    """``g *= coef[0]`` (cast to ``g``'s dtype)."""
    c = g.dtype.type(coef[0])
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        g[i] = g[i] * c


def _grid(n):
    blocks, threads = grid_1d(n)
    return min(blocks, _MAX_BLOCKS), threads


def _sgd_update(p, g, v, lr, momentum, nesterov, weight_decay, stream=0):
    """SGD with momentum on the GPU: ``g += wd p``; ``v = mu v + g``; ``p -= lr (g + mu v if nesterov else v)``.

    Parameters
    ----------
    p : device array, (n,), float32 or float64
        Parameters, updated in place.
    g : device array, (n,), same dtype
        Gradients (not modified).
    v : device array, (n,) or (0,) when ``momentum == 0``, same dtype
        Momentum buffer, updated in place.
    lr, momentum, weight_decay : float
    nesterov : bool
    stream : numba CUDA stream or 0
    """
    n = p.shape[0]
    if n == 0:
        return
    blocks, threads = _grid(n)
    _k_sgd[blocks, threads, stream](p, g, v, float(lr), float(momentum), bool(nesterov),
                                    float(weight_decay))


def _adam_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay, decoupled, stream=0):
    """Adam (``decoupled=True``: AdamW) step number ``t >= 1`` on the GPU.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    Parameters
    ----------
    p : device array, (n,), float32 or float64
        Parameters, updated in place.
    g : device array, (n,), same dtype
    m, v : device arrays, (n,), same dtype
        First/second moment buffers, updated in place.
    t : int
        Step number (1 for the first step).
    lr, beta1, beta2, eps, weight_decay : float
    decoupled : bool
        AdamW-style decay ``p *= 1 - lr wd`` instead of ``g += wd p``.
    stream : numba CUDA stream or 0
    """
    n = p.shape[0]
    if n == 0:
        return
    step, sbc2, c1, c2, decay = _opt.adam_scalars(float(lr), float(beta1), float(beta2), t, float(weight_decay))
    blocks, threads = _grid(n)
    _k_adam[blocks, threads, stream](p, g, m, v, step, sbc2, float(beta1), float(beta2), c1, c2, float(eps),
                                     float(weight_decay), decay, bool(decoupled))


def _rmsprop_update(p, g, sq, buf, gavg, lr, alpha, eps, weight_decay, momentum, stream=0):
    """RMSprop (``torch.optim.RMSprop``) on the GPU: ``g += wd p``; ``s = alpha s + (1 - alpha) g^2``;
    centered: ``a = alpha a + (1 - alpha) g``, ``d = sqrt(s - a^2) + eps``, else ``d = sqrt(s) + eps``;
    ``b = mu b + g / d``, ``p -= lr b`` (without momentum ``p -= lr g / d``).

    Parameters
    ----------
    p : device array, (n,), float32 or float64
        Parameters, updated in place.
    g : device array, (n,), same dtype
    sq : device array, (n,), same dtype
        ``square_avg``, updated in place.
    buf, gavg : device arrays, (n,) or (0,), same dtype
        Momentum buffer (size 0: momentum 0) and ``grad_avg`` (size 0: not centered).
    lr, alpha, eps, weight_decay, momentum : float
    stream : numba CUDA stream or 0
    """
    n = p.shape[0]
    if n == 0:
        return
    blocks, threads = _grid(n)
    _k_rmsprop[blocks, threads, stream](p, g, sq, buf, gavg, float(lr), float(alpha),
                                        _opt.rmsprop_scalars(float(alpha)), float(eps), float(weight_decay),
                                        float(momentum))


def _clip_grad_norm(g, max_norm, coef, stream=0):
    """``torch.nn.utils.clip_grad_norm_`` on one flat gradient vector on the GPU:
    ``g *= min(1, max_norm / (||g||_2 + 1e-6))``.

    Parameters
    ----------
    g : device array, (n,), float32 or float64
        Gradients, scaled in place.
    max_norm : float
        > 0.
    coef : device array, (1,), float64
        Receives the clipping coefficient.
    stream : numba CUDA stream or 0
    """
    n = g.shape[0]
    if n == 0:
        return
    rgrid, rblock = grid_reduce()
    _k_clip_coef[rgrid, rblock, stream](g, float(max_norm), coef)
    blocks, threads = _grid(n)
    _k_grad_scale[blocks, threads, stream](g, coef)
