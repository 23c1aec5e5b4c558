"""Plain SGD's update through the BLAS's axpy (fastbp._blas.axpy_exact,
fastbp.config.SGD_AXPY_MIN_PARAMS, the SGD handler of fastbp._handlers).

A step whose products run on the BLAS's threads updates its parameters with
the BLAS's ``?axpy`` on those threads when the optimizer is plain SGD (no
momentum, no weight decay) and the model has enough parameters.  That path
must give the bits of fastbp's own SGD kernel (``p -= lr g``) at any BLAS
thread count; the probe that decides it must tell a fused multiply-add from
two roundings.
"""
import os
import platform
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import fastbp
from fastbp import _blas
from fastbp import _executor as ex
from fastbp import config
from fastbp.kernels.optim import _sgd_update

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as R  # noqa: E402

DTYPES = (np.float32, np.float64)
# 784-24-10: 19,090 parameters, over SGD_AXPY_MIN_PARAMS (16,384) and OpenBLAS's one-thread limit
WIDTHS = [784, 24, 10]
N_PARAMS = 784 * 24 + 24 + 24 * 10 + 10


def _data(dtype, n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, WIDTHS[0])).astype(dtype), rng.integers(0, WIDTHS[-1], n)


def _step(dtype, optimizer=None, batch_size=32, **kw):
    return fastbp.compile(R.mlp(WIDTHS), "softmax_cross_entropy", optimizer or fastbp.SGD(lr=0.05),
                          batch_size=batch_size, dtype=dtype, seed=1, **kw)


def _blas_threads(n):
    """Set the BLAS's thread count; returns the previous one."""
    before = int(_blas._backend.get_threads())
    _blas._backend.set_threads(n)
    return before


needs_axpy = pytest.mark.skipif(not (_blas.AVAILABLE and _blas.axpy_exact(np.float32)
                                     and _blas.axpy_exact(np.float64)),
                                reason="this BLAS's axpy does not give the SGD kernel's bits (or no BLAS)")


# ------------------------------------------------------------------ the probe
@pytest.mark.parametrize("dtype", DTYPES)
def test_probe_is_correctly_rounded_and_discriminates(dtype):
    y, x, alpha, fused = _blas._axpy_probe(dtype)
    assert y.dtype == x.dtype == fused.dtype == np.dtype(dtype)
    twice = y + x * dtype(alpha)            # the product rounded, then the sum
    assert float(np.mean(twice != fused)) > 0.3
    # an exact rational reference on a sample: one rounding of y + alpha x
    a = Fraction(alpha)
    for i in range(0, y.shape[0], 997):
        exact = Fraction(float(y[i])) + a * Fraction(float(x[i]))
        # float() of a Fraction rounds correctly to float64; for float32 data the exact value
        # has at most 27 significant bits, so float() is exact and astype rounds once
        want = np.array(float(exact)).astype(dtype)
        assert fused[i] == want, (i, fused[i], want)


PROBES = [(_blas.axpy_exact, _blas._AXPY_EXACT), (_blas.asum_propagates, _blas._ASUM_PROPAGATES)]


@pytest.mark.parametrize("probe, cache", PROBES, ids=["axpy_exact", "asum_propagates"])
def test_level1_probes_other_dtypes_and_cache(probe, cache):
    assert probe(np.float16) is False
    assert probe(np.int64) is False
    first = probe(np.float32)
    assert probe("float32") is first       # cached per dtype, any spelling
    assert cache[np.dtype(np.float32)] is first


@pytest.mark.parametrize("probe, cache", PROBES, ids=["axpy_exact", "asum_propagates"])
def test_level1_probes_leave_blas_threads(probe, cache):
    if not _blas.AVAILABLE:
        pytest.skip("no BLAS")
    saved = dict(cache)
    cache.clear()
    before = _blas_threads(1)
    try:
        probe(np.float64)
        assert int(_blas._backend.get_threads()) == 1
    finally:
        _blas._backend.set_threads(before)
        cache.update(saved)


def _host_has_avx512():
    from llvmlite import binding as llvm
    return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


def test_openblas_axpy_is_exact_on_x86_64_with_avx512():
    """numpy's and scipy's OpenBLAS on an x86-64 CPU with AVX-512 (its SkylakeX
    and later kernels, masked tails included): the fused axpy, so a large plain
    SGD update runs on the BLAS's threads.  On an AVX2-only CPU OpenBLAS 0.3.31's
    Haswell kernel adds the last few elements (``n`` mod 16 or 32) in C without
    a fused multiply-add: not fastbp's bits, so ``axpy_exact`` is False there and
    the update stays in fastbp's own kernel (seen on an AVX2 AMD EPYC)."""
    if _blas.BACKEND not in ("openblas", "scipy") or not _blas._contracts() or \
            platform.machine().lower() not in ("x86_64", "amd64") or not _host_has_avx512():
        pytest.skip("not OpenBLAS on an x86-64 CPU with AVX-512 and FMA")
    assert _blas.axpy_exact(np.float32) and _blas.axpy_exact(np.float64)


@needs_axpy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", (1, 2))
def test_blas_axpy_is_the_sgd_kernel(dtype, threads):
    """The compiled callee the handler uses against the SGD kernel, unaligned
    starts and odd tails, at one and two BLAS threads."""
    from fastbp.kernels.gemm import blas_axpy
    rng = np.random.default_rng(4)
    before = _blas_threads(threads)
    try:
        for n in (1, 15, 17, 4097, 10_001, 40_003, 100_003):
            for off in (0, 1, 3):
                p0 = rng.standard_normal(n + off).astype(dtype)
                g = rng.standard_normal(n + off).astype(dtype)[off:]
                lr = 0.0371
                want = p0[off:].copy()
                _sgd_update.serial(want, g, np.empty(0, dtype), lr, 0.0, False, 0.0)
                got = p0.copy()[off:]
                blas_axpy(-lr, g, got)
                assert got.tobytes() == want.tobytes(), (n, off)
    finally:
        _blas._backend.set_threads(before)


# ------------------------------------------------------------------ the step
@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_in_hyper(dtype):
    step = _step(dtype)
    assert not step.threads
    want = config.SGD_AXPY_MIN_PARAMS if _blas.axpy_exact(dtype) else 0
    assert step.hyper[ex.H_AXPY_MIN] == want
    assert ex.H_AXPY_MIN in ex.RUNTIME_SLOTS      # this process's policy, never a checkpoint's


def test_policy_off_without_an_update_or_on_numba_threads():
    h = np.full(ex.HYPER_SIZE, 7.0)
    assert ex.runtime_hyper(h)[ex.H_AXPY_MIN] == 0       # fastbp.grad's functions: no update
    h[:] = 7.0
    assert ex.runtime_hyper(h, threads=True, axpy_dtype=np.float32)[ex.H_AXPY_MIN] == 0
    h[:] = 7.0
    want = config.SGD_AXPY_MIN_PARAMS if _blas.axpy_exact(np.float32) else 0
    assert ex.runtime_hyper(h, threads=False, axpy_dtype=np.float32)[ex.H_AXPY_MIN] == want


def test_policy_off_in_a_bf16_step():
    """A bf16 step's products run on oneDNN's OpenMP threads, not the BLAS's."""
    try:
        step = _step(np.float32, precision="bf16")
    except (RuntimeError, ImportError, ValueError) as e:
        pytest.skip(f"no bf16 here: {e}")
    assert step.hyper[ex.H_AXPY_MIN] == 0


def _train(step, batches, threads):
    before = _blas_threads(threads)
    try:
        losses = [step(x, y) for x, y in batches]
    finally:
        _blas._backend.set_threads(before)
    return losses, step.param_vector.copy()


@needs_axpy
@pytest.mark.parametrize("dtype", DTYPES)
def test_step_through_axpy_is_bitwise_the_kernel_step(dtype):
    """Three plain SGD steps through the BLAS (1 and 2 threads) and through the
    kernel (the policy slot cleared) give the same losses and weights, and
    the update is ``p - lr g`` of the step's own gradients."""
    X, y = _data(dtype)
    batches = [(X[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    kernel = _step(dtype)
    kernel.hyper[ex.H_AXPY_MIN] = 0.0
    ref_losses, ref_params = _train(kernel, batches, 2)
    for threads in (1, 2):
        step = _step(dtype)
        assert step.param_vector.size >= N_PARAMS >= step.hyper[ex.H_AXPY_MIN] > 0   # (+ alignment padding)
        losses, params = _train(step, batches, threads)
        assert losses == ref_losses
        assert params.tobytes() == ref_params.tobytes(), threads
    # the update itself against numpy: p - lr g, from the gradients the step computes
    step = _step(dtype)
    x0, y0 = batches[0]
    step.loss_and_grads(x0, y0)
    grads = step.grad_vector.copy()
    before = step.param_vector.copy()
    step(x0, y0)
    want = before.astype(np.float64) - np.float64(dtype(0.05)) * grads.astype(np.float64)
    tol = np.finfo(dtype).eps * (np.abs(want) + 0.05 * np.abs(grads.astype(np.float64)))
    assert np.all(np.abs(step.param_vector - want) <= tol)
    assert np.mean(step.param_vector != before) > 0.5


@needs_axpy
@pytest.mark.parametrize("opt", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(weight_decay=1e-3)])
def test_momentum_and_weight_decay_stay_on_the_kernel(opt):
    """With momentum or weight decay the update is not an axpy: the policy slot
    set or cleared gives the same bits (the momentum buffer is updated)."""
    X, y = _data(np.float32)
    batches = [(X[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    runs = []
    for slot in (config.SGD_AXPY_MIN_PARAMS, 0.0):
        step = _step(np.float32, fastbp.SGD(lr=0.05, **opt))
        step.hyper[ex.H_AXPY_MIN] = slot
        runs.append(_train(step, batches, 2))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].tobytes() == runs[1][1].tobytes()


@needs_axpy
def test_clipped_and_fit_updates_through_the_axpy():
    """Clipping by global norm scales the gradients before the axpy, and fit's native
    epoch loop takes the same path: the slot set or cleared gives the same bits."""
    X, y = _data(np.float32)
    runs = []
    for slot in (config.SGD_AXPY_MIN_PARAMS, 0.0):
        step = _step(np.float32, clip_grad_norm=0.5)
        step.hyper[ex.H_AXPY_MIN] = slot
        _train(step, [(X[:32], y[:32])], 2)
        step.fit(X, y, epochs=2, shuffle=False)
        runs.append(step.param_vector.copy())
    assert runs[0].tobytes() == runs[1].tobytes()
    unclipped = _step(np.float32)
    _train(unclipped, [(X[:32], y[:32])], 2)
    unclipped.fit(X, y, epochs=2, shuffle=False)
    assert unclipped.param_vector.tobytes() != runs[0].tobytes()


@needs_axpy
def test_lr_change_reaches_the_axpy():
    """The BLAS path reads the learning rate at every step, like the kernel."""
    X, y = _data(np.float32)
    batches = [(X[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    out = []
    for slot in (config.SGD_AXPY_MIN_PARAMS, 0.0):
        step = _step(np.float32)
        step.hyper[ex.H_AXPY_MIN] = slot
        step(*batches[0])
        step.lr = 0.5
        _, p = _train(step, batches[1:], 2)
        out.append(p)
    assert out[0].tobytes() == out[1].tobytes()


@needs_axpy
def test_below_threshold_and_nonfinite_gradients():
    """A model smaller than the threshold trains as before; a non-finite
    gradient leaves the weights unchanged on the BLAS path too."""
    X, y = _data(np.float32)
    step = _step(np.float32)
    before = step.param_vector.copy()
    bad = X[:32].copy()
    bad[0, 0] = np.inf
    with pytest.raises((FloatingPointError, ValueError, RuntimeError)):
        step(bad, y[:32])
    assert step.param_vector.tobytes() == before.tobytes()
    small = fastbp.compile(R.mlp([20, 16, 3]), "softmax_cross_entropy", fastbp.SGD(lr=0.05), batch_size=8,
                           dtype=np.float32, seed=1)
    assert small.param_vector.size < config.SGD_AXPY_MIN_PARAMS and small.hyper[ex.H_AXPY_MIN] == 0
    small(X[:8, :20], y[:8] % 3)


def test_only_a_large_sgd_step_runs_the_check():
    """The check sets the BLAS's threads (whose spinning would take a core from a cold
    start's compilation): an Adam step, or a small SGD step, never runs it."""
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import fastbp, reference as R\n"
        "from fastbp import _blas, _executor as ex\n"
        "a = fastbp.compile(R.mlp([784, 24, 10]), 'softmax_cross_entropy', fastbp.Adam(), batch_size=8)\n"
        "s = fastbp.compile(R.mlp([20, 16, 3]), 'softmax_cross_entropy', fastbp.SGD(lr=0.1), batch_size=8)\n"
        "assert a.hyper[ex.H_AXPY_MIN] == 0 and s.hyper[ex.H_AXPY_MIN] == 0\n"
        "assert not ex.sgd_axpy_candidate(a.plan.tape) and not ex.sgd_axpy_candidate(s.plan.tape)\n"
        "assert _blas._AXPY_EXACT == {} and _blas._ASUM_PROPAGATES == {}, _blas._AXPY_EXACT\n"
        "b = fastbp.compile(R.mlp([784, 24, 10]), 'softmax_cross_entropy', fastbp.SGD(lr=0.1, momentum=0.9),\n"
        "                   batch_size=8)\n"
        "assert ex.sgd_axpy_candidate(b.plan.tape) and np.dtype(np.float32) in _blas._AXPY_EXACT\n"
        "assert _blas._ASUM_PROPAGATES == {}      # 19,090 parameters: under SGD_ASUM_MIN_PARAMS\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", script, HERE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")


def test_no_blas_no_axpy():
    """FASTBP_BLAS=none: no axpy, the slot stays 0, steps still train."""
    script = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import fastbp, reference as R\n"
        "from fastbp import _blas, _executor as ex\n"
        "assert not _blas.axpy_exact(np.float32) and not _blas.axpy_exact(np.float64)\n"
        "assert not _blas.asum_propagates(np.float32) and not _blas.asum_propagates(np.float64)\n"
        "s = fastbp.compile(R.mlp([784, 24, 10]), 'softmax_cross_entropy', fastbp.SGD(lr=0.05), batch_size=8)\n"
        "assert s.hyper[ex.H_AXPY_MIN] == 0 and s.hyper[ex.H_ASUM_MIN] == 0\n"
        "rng = np.random.default_rng(0)\n"
        "s(rng.standard_normal((8, 784)).astype(np.float32), rng.integers(0, 10, 8))\n"
        "print('ok')\n")
    env = dict(os.environ, FASTBP_BLAS="none")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", script, HERE], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")


def test_checkpoint_keeps_this_process_policy(tmp_path):
    """The slot is this process's BLAS policy: a checkpoint saved with it set
    loads with the loading process's value, and trains on bitwise as the
    saved step does."""
    X, y = _data(np.float32)
    step = _step(np.float32)
    step(X[:32], y[:32])
    path = str(tmp_path / "m.npz")
    step.save(path)
    loaded = fastbp.load(path)
    assert loaded.hyper[ex.H_AXPY_MIN] == step.hyper[ex.H_AXPY_MIN]
    step.hyper[ex.H_AXPY_MIN] = 0.0           # as in a process whose BLAS has no exact axpy
    step.save(path)
    loaded = fastbp.load(path)
    want = config.SGD_AXPY_MIN_PARAMS if _blas.axpy_exact(np.float32) else 0
    assert loaded.hyper[ex.H_AXPY_MIN] == want
    step(X[32:64], y[32:64])
    loaded(X[32:64], y[32:64])
    assert loaded.param_vector.tobytes() == step.param_vector.tobytes()
