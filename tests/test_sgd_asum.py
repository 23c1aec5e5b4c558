"""The gradients' finiteness check through the BLAS's asum (fastbp._blas.asum_propagates,
fastbp.config.SGD_ASUM_MIN_PARAMS, fastbp._handlers_update._gradients).

A large plain SGD update through the BLAS's axpy first checks its gradients
with the BLAS's ``?asum`` on the same threads: a finite sum proves every
gradient finite; a non-finite sum (a NaN or an infinity, or finite gradients
whose sum overflows) is settled by fastbp's own element-wise check.  So the
result is always that of the element-wise check: the update is skipped
exactly when a gradient is not finite.
"""
import os
import platform
import sys

import numpy as np
import pytest

import fastbp
from fastbp import _blas
from fastbp import _executor as ex
from fastbp import config

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as R  # noqa: E402
from test_sgd_axpy import _blas_threads, _train  # noqa: E402

DTYPES = (np.float32, np.float64)
# 784-200-10: 159,010 parameters, over SGD_ASUM_MIN_PARAMS (131,072)
WIDTHS = [784, 200, 10]

needs_asum = pytest.mark.skipif(
    not (_blas.AVAILABLE and _blas.asum_propagates(np.float32) and _blas.asum_propagates(np.float64)
         and _blas.axpy_exact(np.float32) and _blas.axpy_exact(np.float64)),
    reason="this BLAS's asum or axpy is not used (or no BLAS)")


def _step(dtype=np.float32, act="relu", optimizer=None, batch_size=32, **kw):
    return fastbp.compile(R.mlp(WIDTHS, act), "softmax_cross_entropy", optimizer or fastbp.SGD(lr=0.01),
                          batch_size=batch_size, dtype=dtype, seed=1, **kw)


# ------------------------------------------------------------------ the probe
def test_openblas_asum_propagates_on_x86_64():
    """numpy's and scipy's OpenBLAS on x86-64: the CI's and the benchmarks' case."""
    if _blas.BACKEND not in ("openblas", "scipy") or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("not OpenBLAS on x86-64")
    assert _blas.asum_propagates(np.float32) and _blas.asum_propagates(np.float64)


def _fake_asum(skip_nan):
    """A stand-in for the BLAS's asum, in Python: ``sum |x|`` of the n elements at
    the address, ignoring NaN when ``skip_nan`` (as a buggy kernel might)."""
    def asum(n, addr, inc):
        for dt in (np.float32, np.float64):
            if asum.dtype == dt:
                x = np.ctypeslib.as_array((np.ctypeslib.as_ctypes_type(dt) * n).from_address(addr))
        return float(np.nansum(np.abs(x)) if skip_nan else np.abs(x).sum())
    return asum


@pytest.mark.parametrize("skip_nan, want", [(False, True), (True, False)])
def test_probe_refuses_an_asum_that_drops_nan(monkeypatch, skip_nan, want):
    """The probe is what keeps a NaN from passing: an asum that ignores NaN is refused."""
    if not _blas.AVAILABLE:
        pytest.skip("no BLAS")
    fake = _fake_asum(skip_nan)
    fake.dtype = np.float64
    monkeypatch.setattr(_blas, "_level1_routine", lambda name: fake)
    saved = dict(_blas._ASUM_PROPAGATES)
    _blas._ASUM_PROPAGATES.clear()
    try:
        assert _blas.asum_propagates(np.float64) is want
    finally:
        _blas._ASUM_PROPAGATES.clear()
        _blas._ASUM_PROPAGATES.update(saved)


@pytest.mark.skipif(not (_blas.AVAILABLE and _blas.asum_propagates(np.float32)
                         and _blas.asum_propagates(np.float64)), reason="the BLAS's asum is not used")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", (1, 2))
def test_blas_asum_against_numpy(dtype, threads):
    """The compiled callee against numpy: finite sums close to numpy's, any NaN or
    infinity (first, last, middle element; unaligned starts) a non-finite sum."""
    from fastbp.kernels.gemm import blas_asum
    rng = np.random.default_rng(5)
    before = _blas_threads(threads)
    try:
        for n in (1, 7, 10_001, 100_003):
            for off in (0, 1):
                x = rng.uniform(-2.0, 2.0, n + off).astype(dtype)[off:]
                want = np.abs(x.astype(np.float64)).sum()
                assert blas_asum(x) == pytest.approx(want, rel=1e-5 if dtype == np.float32 else 1e-12)
                for i in {0, n // 2, n - 1}:
                    for bad in (np.nan, np.inf, -np.inf):
                        y = x.copy()
                        y[i] = bad
                        assert not np.isfinite(blas_asum(y)), (n, off, i, bad)
    finally:
        _blas._backend.set_threads(before)


# ------------------------------------------------------------------ the step
@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_in_hyper(dtype):
    step = _step(dtype)
    assert not step.threads
    on = _blas.axpy_exact(dtype) and _blas.asum_propagates(dtype)
    assert step.hyper[ex.H_ASUM_MIN] == (config.SGD_ASUM_MIN_PARAMS if on else 0)
    assert ex.H_ASUM_MIN in ex.RUNTIME_SLOTS


def test_policy_off_for_small_sgd_adam_and_numba_threads():
    small = fastbp.compile(R.mlp([784, 24, 10]), "softmax_cross_entropy", fastbp.SGD(lr=0.1), batch_size=8)
    assert small.hyper[ex.H_ASUM_MIN] == 0
    assert _step(optimizer=fastbp.Adam()).hyper[ex.H_ASUM_MIN] == 0
    h = np.full(ex.HYPER_SIZE, 7.0)
    assert ex.runtime_hyper(h, threads=True, axpy_dtype=np.float32, asum_dtype=np.float32)[ex.H_ASUM_MIN] == 0
    h[:] = 7.0
    assert ex.runtime_hyper(h)[ex.H_ASUM_MIN] == 0


@needs_asum
@pytest.mark.parametrize("dtype", DTYPES)
def test_steps_with_the_asum_check_are_bitwise_the_same(dtype):
    """The check decides nothing but whether to update: three steps with the slot
    set and cleared give the same losses and weights, at 1 and 2 BLAS threads (the
    products' bits depend on the thread count: each is compared at its own)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, WIDTHS[0])).astype(dtype)
    y = rng.integers(0, WIDTHS[-1], 96)
    batches = [(X[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    for threads in (1, 2):
        ref = _step(dtype)
        ref.hyper[ex.H_ASUM_MIN] = 0.0
        want = _train(ref, batches, threads)
        step = _step(dtype)
        assert step.hyper[ex.H_ASUM_MIN] > 0 and step.hyper[ex.H_AXPY_MIN] > 0
        got = _train(step, batches, threads)
        assert got[0] == want[0]
        assert got[1].tobytes() == want[1].tobytes()


def _infinite_gradients(step):
    """Weights and one input row for which the loss is finite but gradients are not:
    hidden unit j's output is tanh(1e-30), its outgoing weights +-3.4e38, so that
    dH_j = dZ2 . W2[j] overflows."""
    p = step.param_vector
    n1 = WIDTHS[0] * WIDTHS[1]
    W1 = p[:n1].reshape(WIDTHS[0], WIDTHS[1])
    b1 = p[n1:n1 + WIDTHS[1]]
    W2 = p[n1 + WIDTHS[1]:n1 + WIDTHS[1] + WIDTHS[1] * WIDTHS[2]].reshape(WIDTHS[1], WIDTHS[2])
    j = 7
    W1[:, j] = 0.0
    b1[j] = 1e-30
    W2[j, :] = -3.4e38
    W2[j, 0] = 3.4e38
    x = np.random.default_rng(3).standard_normal((1, WIDTHS[0])).astype(p.dtype)
    return x, np.array([1])


@needs_asum
@pytest.mark.parametrize("slot", ("set", "cleared"))
def test_nonfinite_gradients_skip_the_update(slot):
    """A finite loss with infinite gradients: the update is skipped and the weights
    stay as they were, through the asum check as through the loop (NaN: the
    probe's and test_blas_asum_against_numpy's)."""
    step = _step(np.float32, act="tanh", batch_size=1)
    assert step.hyper[ex.H_ASUM_MIN] > 0
    if slot == "cleared":
        step.hyper[ex.H_ASUM_MIN] = 0.0
    x, y = _infinite_gradients(step)
    loss = step.loss_and_grads(x, y)
    g = step.grad_vector
    assert np.isfinite(loss) and not np.all(np.isfinite(g))      # the premise
    before = step.param_vector.copy()
    with pytest.raises(FloatingPointError, match="gradient is not finite"):
        step(x, y)
    assert step.param_vector.tobytes() == before.tobytes()


@needs_asum
def test_finite_gradients_whose_sum_overflows_still_update():
    """Finite float32 gradients whose absolute sum overflows: the asum is infinite,
    the element-wise check then finds every gradient finite, and the update runs,
    bitwise as with the slot cleared."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, WIDTHS[0])) * 1e36).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], 32)
    out = []
    for slot in ("set", "cleared"):
        step = _step(np.float32, optimizer=fastbp.SGD(lr=1e-30))
        if slot == "cleared":
            step.hyper[ex.H_ASUM_MIN] = 0.0
        step.loss_and_grads(x, y)
        g = step.grad_vector
        with np.errstate(over="ignore"):
            assert np.all(np.isfinite(g)) and not np.isfinite(np.abs(g).sum(dtype=np.float32))   # the premise
        before = step.param_vector.copy()
        step(x, y)
        assert step.param_vector.tobytes() != before.tobytes()
        out.append(step.param_vector.copy())
    assert out[0].tobytes() == out[1].tobytes()
