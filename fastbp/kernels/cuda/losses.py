"""Loss kernels for CUDA: per-row losses and dL/dS in one kernel, the mean in a second.

Same formulas as :mod:`fastbp.kernels.losses` (scores ``S (B, C)``,
``dS`` already divided by ``B``, or by ``B*C`` for mse/bce; per-row losses
in a float64 ``rowloss (B,)``).  The difference is the mean: a kernel cannot
return a value, so each launcher takes a float64 device array ``loss`` of
length >= 1 and a second, single-block kernel writes the mean into
``loss[0]`` (a shared-memory tree sum in float64: deterministic, no
atomics).  Nothing is copied back to the host; read ``loss`` when needed.

One thread per row of ``S`` (rows are independent and ``C`` is the number
of classes, small in the intended use).  Every loss computes its row with the loss
registry's bodies (:mod:`fastbp.registry.losses`; softmax cross-entropy's three phases),
which the CPU kernels compile too.

Labels must be checked with :func:`_check_labels` first; a label outside
``[0, C)`` that slips through does not touch memory out of bounds: its row
gets a NaN loss and NaN gradients instead.
"""
import math

from numba import cuda, float64, int64

from ...registry import losses as _L
from ..factory import specialise
from .activations import _sigmoid1
from .launch import REDUCE_THREADS, device, grid_1d, grid_reduce, kernel
from .gates import _block_sum

# the loss registry's row bodies, compiled for CUDA (the CPU kernels compile the same)
_mse_row = device(_L.mse_row)
_bce_logits_row = device(specialise(_L.bce_logits_row, "__cuda", _sigmoid=_sigmoid1))
_poisson_row = device(_L.poisson_row)
_svm_row = device(_L.svm_row)


@device
def _row_sum(A, i, t, scale):
    """``(r, scale / (r + A[i, t]))`` for the sum ``r`` of row ``i`` of ``A`` but its
    column ``t``, in column order."""
    s = A.dtype.type(0.0)
    for j in range(A.shape[1]):
        if j != t:
            s += A[i, j]
    return s, (A.dtype.type(1.0) / (s + A[i, t])) * scale


# softmax cross-entropy's phases (the loss registry's bodies) with the device's exp and row sum
_xent_shift_row = device(_L.xent_shift_row)
_xent_prob = device(specialise(_L.xent_prob, "__cuda", _exp=math.exp))
_xent_finish_row = device(specialise(_L.xent_finish_row, "__cuda", _row_sum=_row_sum))


@device
def _bad_row(S, dS, rowloss, i):
    nan = S.dtype.type(math.nan)
    for j in range(S.shape[1]):
        dS[i, j] = nan
    rowloss[i] = math.nan


@kernel
def _k_softmax_xent_rows(S, y, dS, rowloss):
    """Row ``i`` of softmax cross-entropy: the registry's three phases on one thread."""
    i = cuda.grid(1)
    B = S.shape[0]
    C = S.shape[1]
    if i >= B:
        return
    yi = y[i]
    if yi < 0 or yi >= C:
        _bad_row(S, dS, rowloss, i)
        return
    zero = S.dtype.type(0.0)
    m = _xent_shift_row(S, dS, i)           # in the scores' dtype: no float64 arithmetic in float32
    for j in range(C):
        dS[i, j] = _xent_prob(dS[i, j], zero)
    rowloss[i] = _xent_finish_row(S, y, dS, i, m, S.dtype.type(1.0 / B))


@kernel
def _k_mse_rows(S, T, dS, rowloss):
    i = cuda.grid(1)
    B = S.shape[0]
    if i >= B:
        return
    rowloss[i] = _mse_row(S, T, dS, i, S.dtype.type(2.0 / (B * S.shape[1])))


@kernel
def _k_poisson_rows(S, T, dS, rowloss):
    i = cuda.grid(1)
    B = S.shape[0]
    if i >= B:
        return
    rowloss[i] = _poisson_row(S, T, dS, i, S.dtype.type(1.0 / (B * S.shape[1])))


@kernel
def _k_bce_logits_rows(S, T, dS, rowloss):
    i = cuda.grid(1)
    B = S.shape[0]
    if i >= B:
        return
    rowloss[i] = _bce_logits_row(S, T, dS, i, S.dtype.type(1.0 / (B * S.shape[1])))


@kernel
def _k_svm_rows(S, y, dS, rowloss):
    i = cuda.grid(1)
    B = S.shape[0]
    if i >= B:
        return
    yi = y[i]
    if yi < 0 or yi >= S.shape[1]:
        _bad_row(S, dS, rowloss, i)
        return
    rowloss[i] = _svm_row(S, y, dS, i, S.dtype.type(1.0 / B))


@kernel
def _k_mean(rowloss, n, denom, loss):
    """``loss[0] = sum(rowloss[:n]) / denom`` by one block (fixed order)."""
    buf = cuda.shared.array(REDUCE_THREADS, dtype=float64)
    tid = cuda.threadIdx.x
    s = 0.0
    for i in range(tid, n, REDUCE_THREADS):
        s += rowloss[i]
    buf[tid] = s
    _block_sum(buf, tid)
    if tid == 0:
        loss[0] = buf[0] / denom


@device
def _first_bad_label(y, n_classes, buf):
    """Block-wide min-reduction (one block of REDUCE_THREADS threads, shared
    ``buf``): leaves in ``buf[0]`` the first index with ``y`` outside
    ``[0, n_classes)``, or ``y.shape[0]`` if every label is valid."""
    tid = cuda.threadIdx.x
    n = y.shape[0]
    first = n
    for i in range(tid, n, REDUCE_THREADS):
        if (y[i] < 0 or y[i] >= n_classes) and i < first:
            first = i
    buf[tid] = first
    cuda.syncthreads()
    h = REDUCE_THREADS // 2
    while h > 0:
        if tid < h and buf[tid + h] < buf[tid]:
            buf[tid] = buf[tid + h]
        cuda.syncthreads()
        h //= 2


@kernel
def _k_check_labels(y, n_classes, out):
    """``out[0]`` = first index with ``y`` outside ``[0, n_classes)``, or -1 (one block)."""
    buf = cuda.shared.array(REDUCE_THREADS, dtype=int64)
    _first_bad_label(y, n_classes, buf)
    if cuda.threadIdx.x == 0:
        out[0] = buf[0] if buf[0] < y.shape[0] else -1


def _launch_loss(k, S, target, dS, rowloss, loss, per_element, stream):
    B, C = S.shape
    grid, block = grid_1d(B)
    if B > 0:
        k[grid, block, stream](S, target, dS, rowloss)
    denom = float(B * C) if per_element else float(B)
    rgrid, rblock = grid_reduce()
    _k_mean[rgrid, rblock, stream](rowloss, B, denom, loss)


def _softmax_xent(S, y, dS, rowloss, loss, stream=0):
    """Softmax cross-entropy ``mean_i(logsumexp(S_i) - S_i[y_i])`` and its gradient, on the GPU.

    Derivative written to ``dS``: ``(softmax(S) - onehot(y)) / B``.

    Parameters
    ----------
    S : device array, (B, C), float32 or float64
        Scores (logits).
    y : device array, (B,), int64
        Labels in ``[0, C)``.
    dS : device array, (B, C), same dtype as ``S``
        Output gradient.
    rowloss : device array, (B,), float64
        Output per-row losses.
    loss : device array, (>= 1,), float64
        ``loss[0]`` receives the mean loss.
    stream : numba CUDA stream or 0
    """
    _launch_loss(_k_softmax_xent_rows, S, y, dS, rowloss, loss, False, stream)


def _mse(S, T, dS, rowloss, loss, stream=0):
    """Mean squared error over all elements and its gradient ``2 (S - T) / (B C)``, on the GPU.

    Parameters
    ----------
    S : device array, (B, C), float32 or float64
    T : device array, (B, C), same dtype
        Targets.
    dS : device array, (B, C), same dtype
        Output gradient.
    rowloss : device array, (B,), float64
        Output per-row sums of squared errors.
    loss : device array, (>= 1,), float64
        ``loss[0]`` receives the mean loss.
    stream : numba CUDA stream or 0
    """
    _launch_loss(_k_mse_rows, S, T, dS, rowloss, loss, True, stream)


def _poisson(S, T, dS, rowloss, loss, stream=0):
    """Half Poisson deviance of ``mu = exp(S)`` (mean over all elements) and its gradient
    ``(exp(S) - T) / (B C)``, on the GPU.

    ``l = exp(s) - t s + xlogy(t, t) - t``; a negative target gives NaN.

    Parameters
    ----------
    S : device array, (B, C), float32 or float64
        Log-means (the network's raw output).
    T : device array, (B, C), same dtype
        Non-negative targets (counts, rates).
    dS : device array, (B, C), same dtype
        Output gradient.
    rowloss : device array, (B,), float64
        Output per-row sums.
    loss : device array, (>= 1,), float64
        ``loss[0]`` receives the mean loss.
    stream : numba CUDA stream or 0
    """
    _launch_loss(_k_poisson_rows, S, T, dS, rowloss, loss, True, stream)


def _bce_logits(S, T, dS, rowloss, loss, stream=0):
    """Binary cross-entropy on logits (mean over all elements) and its gradient, on the GPU.

    ``l = max(s, 0) - s t + log(1 + exp(-|s|))``; gradient
    ``(sigmoid(s) - t) / (B C)``.

    Parameters
    ----------
    S : device array, (B, C), float32 or float64
        Logits.
    T : device array, (B, C), same dtype
        Targets in ``[0, 1]``.
    dS : device array, (B, C), same dtype
        Output gradient.
    rowloss : device array, (B,), float64
        Output per-row loss sums.
    loss : device array, (>= 1,), float64
        ``loss[0]`` receives the mean loss.
    stream : numba CUDA stream or 0
    """
    _launch_loss(_k_bce_logits_rows, S, T, dS, rowloss, loss, True, stream)


def _svm(S, y, dS, rowloss, loss, stream=0):
    """Multiclass hinge loss (CS231n) and its gradient, on the GPU.

    ``L = mean_i sum_{j != y_i} max(0, S_ij - S_iy + 1)``; gradient
    ``1[margin_ij > 0] / B`` off the label, ``-(count of positive margins) / B`` on it.

    Parameters
    ----------
    S : device array, (B, C), float32 or float64
    y : device array, (B,), int64
        Labels in ``[0, C)``.
    dS : device array, (B, C), same dtype as ``S``
        Output gradient.
    rowloss : device array, (B,), float64
        Output per-row hinge sums.
    loss : device array, (>= 1,), float64
        ``loss[0]`` receives the mean loss.
    stream : numba CUDA stream or 0
    """
    _launch_loss(_k_svm_rows, S, y, dS, rowloss, loss, False, stream)


def _check_labels(y, n_classes, out, stream=0):
    """Index of the first label outside ``[0, n_classes)``, or -1, written to ``out[0]``.

    Parameters
    ----------
    y : device array, (B,), int64
    n_classes : int
    out : device array, (>= 1,), int64
        ``out[0]`` receives the index.
    stream : numba CUDA stream or 0
    """
    grid, block = grid_reduce()
    _k_check_labels[grid, block, stream](y, int(n_classes), out)
