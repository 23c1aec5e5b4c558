"""LayerNorm and BatchNorm1d for CUDA: the contracts of :mod:`fastbp.kernels.norm`.

Simple kernels, one thread per reduced line: LayerNorm's statistics and
input gradient take one thread per row, BatchNorm's statistics, the
weight/bias gradients and the running update one thread per column; each
line is summed in the CPU kernels' order (rows or columns in order), so
no atomics and a fixed order.  The math is the scalar bodies of
:mod:`fastbp.registry.norms`, compiled here as device functions from the same
Python functions the CPU loops use: the statistics (``norm_mean``,
``norm_rstd``), ``norm_affine``, ``norm_dx``, LayerNorm's rows (``ln_fwd_row``,
``ln_dx_row``), BatchNorm's input-gradient element (``bn_dx``) and running
update (``bn_factor``, ``bn_running``).  What is written here is the loops:
a BatchNorm column per thread.

The launchers take the arrays and the stream; ``w``/``b`` of size 0 mean
no weight/bias, an output of size 0 is not computed.
"""
from numba import cuda

from ...registry import norms as _body
from ..factory import specialise
from .launch import device, grid_1d, grid_ew, kernel

_norm_mean = device(_body.norm_mean)
_norm_rstd = device(_body.norm_rstd)
_norm_affine = device(_body.norm_affine)
_norm_dx = device(_body.norm_dx)
# LayerNorm's row bodies and BatchNorm's element bodies (shared with the CPU loops)
_ln_fwd_row = device(specialise(_body.ln_fwd_row, "__cuda", _norm_mean=_norm_mean, _norm_rstd=_norm_rstd,
                                _norm_affine=_norm_affine))
_ln_dx_row = device(specialise(_body.ln_dx_row, "__cuda", _norm_mean=_norm_mean, _norm_dx=_norm_dx))
_bn_dx = device(specialise(_body.bn_dx, "__cuda", _norm_dx=_norm_dx))
_bn_factor = device(_body.bn_factor)
_bn_running = device(_body.bn_running)


@kernel
def _k_ln_fwd(X, w, b, Y, S, P):
    """LayerNorm's forward: one thread per row (the registry's row body)."""
    i = cuda.grid(1)
    if i < X.shape[0]:
        _ln_fwd_row(X, w, b, Y, S, i, P[0])


@kernel
def _k_ln_dparams(X, S, dY, dw, db, acc_w, acc_b):
    """``dw (+)= sum_rows dY * xhat``, ``db (+)= sum_rows dY``: one thread per column."""
    j = cuda.grid(1)
    B = X.shape[0]
    if j >= X.shape[1]:
        return
    zero = X.dtype.type(0.0)
    if dw.shape[0] > 0:
        s = zero
        for i in range(B):
            s += dY[i, j] * ((X[i, j] - S[i, 0]) * S[i, 1])
        dw[j] = dw[j] + s if acc_w else s
    if db.shape[0] > 0:
        s = zero
        for i in range(B):
            s += dY[i, j]
        db[j] = db[j] + s if acc_b else s


@kernel
def _k_ln_dx(X, w, S, dY, dX, acc_x):
    """The input gradient of LayerNorm: one thread per row (the registry's row body)."""
    i = cuda.grid(1)
    if i < X.shape[0]:
        _ln_dx_row(X, w, S, dY, dX, i, acc_x)


@kernel
def _k_bn_stats(X, S, R, P, batch):
    """Per column: batch mean / rstd / sum of squared deviations (``batch``), or the
    running statistics' mean and rstd (the registry's ``norm_mean``, ``norm_rstd``)."""
    j = cuda.grid(1)
    B = X.shape[0]
    if j >= X.shape[1]:
        return
    dt = X.dtype.type
    eps = P[0]
    if batch:
        s = dt(0.0)
        for i in range(B):
            s += X[i, j]
        mean = _norm_mean(s, B, dt)
        v = dt(0.0)
        for i in range(B):
            d = X[i, j] - mean
            v += d * d
        S[0, j] = mean
        S[2, j] = v
        S[1, j] = _norm_rstd(_norm_mean(v, B, dt), eps, dt)     # the biased variance's rstd
    else:
        S[0, j] = R[0, j]
        S[1, j] = _norm_rstd(R[1, j], eps, dt)


@kernel
def _k_bn_apply(X, w, b, Y, S):
    """``Y = (X - mean) * rstd * w + b`` per element (the statistics in ``S``)."""
    j, i0 = cuda.grid(2)
    sy = cuda.gridsize(2)[1]
    N = X.shape[1]
    if j >= N:
        return
    dt = X.dtype.type
    ww = w[j] if w.shape[0] > 0 else dt(1.0)
    bb = b[j] if b.shape[0] > 0 else dt(0.0)
    mean = S[0, j]
    rstd = S[1, j]
    for i in range(i0, X.shape[0], sy):
        Y[i, j] = _norm_affine(X[i, j], mean, rstd, ww, bb)


@kernel
def _k_bn_dparams(X, S, dY, dw, db, acc_w, acc_b):
    """Per column: ``S[3] = sum dY``, ``S[4] = sum dY * xhat``, then ``db``, ``dw`` (+)= them."""
    j = cuda.grid(1)
    B = X.shape[0]
    if j >= X.shape[1]:
        return
    zero = X.dtype.type(0.0)
    s3 = zero
    for i in range(B):
        s3 += dY[i, j]
    s4 = zero
    for i in range(B):
        s4 += dY[i, j] * ((X[i, j] - S[0, j]) * S[1, j])
    S[3, j] = s3
    S[4, j] = s4
    if dw.shape[0] > 0:
        dw[j] = dw[j] + s4 if acc_w else s4
    if db.shape[0] > 0:
        db[j] = db[j] + s3 if acc_b else s3


@kernel
def _k_bn_dx(X, w, S, dY, dX, acc_x, batch):
    """The input gradient of BatchNorm per element (the registry's ``bn_dx``; column sums
    in ``S[3]``, ``S[4]``)."""
    j, i0 = cuda.grid(2)
    sy = cuda.gridsize(2)[1]
    N = X.shape[1]
    if j >= N:
        return
    dt = X.dtype.type
    B = X.shape[0]
    ww = w[j] if w.shape[0] > 0 else dt(1.0)
    mean = S[0, j]
    rstd = S[1, j]
    mg = _norm_mean(S[3, j] * ww, B, dt)
    mgx = _norm_mean(S[4, j] * ww, B, dt)
    for i in range(i0, B, sy):
        d = _bn_dx(dY[i, j], X[i, j], ww, mean, rstd, mg, mgx, batch)
        if acc_x:
            dX[i, j] += d
        else:
            dX[i, j] = d


@kernel
def _k_flag_reset(flag):
    if cuda.grid(1) == 0:
        flag[0] = 0.0


@kernel
def _k_flag_nonfinite(g, flag):
    """``flag[0] = 1`` if any of ``g`` is NaN or infinite (every writer writes 1)."""
    bad = False
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        v = g[i]
        if v - v != 0.0:
            bad = True
    if bad:
        flag[0] = 1.0


@kernel
def _k_bn_running(S, R, T, P, nb, flag, res):
    """The running update of one column per thread (the registry's ``bn_factor``,
    ``bn_running``; ``T`` read, not written: see :func:`_k_bn_count`), skipped when
    ``flag[0]`` (a gradient is not finite) or the status word ``res[1]`` is set."""
    j = cuda.grid(1)
    if j >= R.shape[1] or flag[0] != 0.0 or res[1] != 0.0:      # flag, res: float64 by contract
        return
    dt = R.dtype.type
    f = _bn_factor(T[0], P[2] != dt(0.0), P[1], dt)
    R[0, j] = _bn_running(S[0, j], R[0, j], f, dt)
    R[1, j] = _bn_running(_norm_mean(S[2, j], nb - 1, dt), R[1, j], f, dt)


@kernel
def _k_bn_count(T, flag, res):
    """``T[0] += 1`` (batches tracked) after :func:`_k_bn_running`, under the same gate."""
    if cuda.grid(1) == 0 and flag[0] == 0.0 and res[1] == 0.0:
        T[0] += T.dtype.type(1.0)


# --------------------------------------------------------------- launchers
def layernorm_fwd(X, w, b, Y, S, P, stream=0):
    """LayerNorm forward (:func:`fastbp.kernels.norm._layernorm_fwd`)."""
    if X.shape[0] == 0:
        return
    g, t = grid_1d(X.shape[0])
    _k_ln_fwd[g, t, stream](X, w, b, Y, S, P)


def layernorm_bwd(X, w, S, dY, dX, dw, db, acc_x, acc_w, acc_b, stream=0):
    """LayerNorm backward (:func:`fastbp.kernels.norm._layernorm_bwd`)."""
    if dw.shape[0] > 0 or db.shape[0] > 0:
        g, t = grid_1d(X.shape[1])
        _k_ln_dparams[g, t, stream](X, S, dY, dw, db, acc_w, acc_b)
    if dX.shape[0] > 0:
        g, t = grid_1d(X.shape[0])
        _k_ln_dx[g, t, stream](X, w, S, dY, dX, acc_x)


def batchnorm_fwd(X, w, b, Y, S, R, P, batch, stream=0):
    """BatchNorm forward (:func:`fastbp.kernels.norm._batchnorm_fwd`); ``batch``: the
    minibatch's statistics (training, or no running statistics)."""
    g, t = grid_1d(X.shape[1])
    _k_bn_stats[g, t, stream](X, S, R, P, batch)
    grid, block = grid_ew(X.shape[0], X.shape[1])
    _k_bn_apply[grid, block, stream](X, w, b, Y, S)


def batchnorm_bwd(X, w, S, dY, dX, dw, db, acc_x, acc_w, acc_b, batch, stream=0):
    """BatchNorm backward (:func:`fastbp.kernels.norm._batchnorm_bwd`)."""
    g, t = grid_1d(X.shape[1])
    _k_bn_dparams[g, t, stream](X, S, dY, dw, db, acc_w, acc_b)
    if dX.shape[0] > 0:
        grid, block = grid_ew(X.shape[0], X.shape[1])
        _k_bn_dx[grid, block, stream](X, w, S, dY, dX, acc_x, batch)


def batchnorm_running(S, R, T, P, nb, grads, flag, res, stream=0):
    """The running statistics after a training minibatch of ``nb`` rows, only when
    every value of ``grads`` is finite and the status word is clear."""
    _k_flag_reset[1, 1, stream](flag)
    if grads.shape[0] > 0:
        g, t = grid_1d(grads.shape[0])
        _k_flag_nonfinite[min(g, 1024), t, stream](grads, flag)
    g, t = grid_1d(R.shape[1])
    _k_bn_running[g, t, stream](S, R, T, P, nb, flag, res)
    _k_bn_count[1, 1, stream](T, flag, res)
