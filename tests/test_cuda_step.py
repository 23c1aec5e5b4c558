"""The fused training step on the GPU (``fastbp.compile(..., device="cuda")``)
against the CPU step, and ``fastbp.grad(..., device="cuda")``.

How these tests run (the design of ``tests/test_cuda_kernels.py``)
-------------------------------------------------------------------
numba decides when ``numba.cuda`` is first imported whether it is the real
CUDA target or the simulator (``NUMBA_ENABLE_CUDASIM=1``), so:

* ``test_gpu_*`` run in-process whenever kernels can be launched: on a real
  GPU, or in a process started with the simulator variable.  Otherwise they
  are skipped and...
* ``test_gpu_step_simulator_subprocess`` checks them, run in a child process
  under the simulator that starts right after collection (``_simulator.py``),
  and fails unless every one passed (none failed, errored or
  was skipped).  It is skipped where they already ran in-process.
* ``test_no_device_error`` and ``test_import_without_numba_cuda`` run a child
  *without* the simulator: with no driver, ``device="cuda"`` must raise the
  no-device ``RuntimeError``; on a machine with a GPU the child checks that
  the GPU step works instead.
* ``test_step_kernels_compile_ptx`` compiles the step's own kernels (status,
  gated updates, gather) for a real GPU in both dtypes; the simulator runs
  plain Python and cannot catch a kernel that does not type-check.

Every equivalence test builds a CPU step and a GPU step from the same model
and seed, feeds both the same minibatches and compares losses, weights,
gradients and optimizer state to float tolerance.  The simulator runs every
CUDA thread as a Python thread, so it runs the kernels with scaled-down
blocks (``fastbp.kernels.cuda.launch.SIM_SMALL_BLOCKS``; CI's last stage runs
them with the GPU's block shapes too, ``FASTBP_SIM_FULL_BLOCKS=1``), shapes
are tiny, and the cases cover each loss, activation, optimizer and dtype
without taking their full product.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import _simulator

import fastbp
from fastbp.kernels.cuda import cuda_available
from cuda_ptx import PTX_TARGETS, assemble, find_ptxas, ptx_target

AVAIL = cuda_available()
SIM_ENV = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")

if AVAIL:
    from numba import cuda

requires_cuda = pytest.mark.skipif(
    not AVAIL, reason=f"the GPU step cannot run in this process ({AVAIL.reason}); "
                      "test_gpu_step_simulator_subprocess runs these tests under the CUDA simulator")

L = fastbp.Linear


def tol(dtype):
    """Tolerances GPU vs CPU after a few steps: FMA contraction and summation order."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-4, atol=2e-5)
    return dict(rtol=1e-10, atol=1e-12)


def approx(expected, dtype):
    t = tol(dtype)
    return pytest.approx(expected, rel=t["rtol"], abs=t["atol"])


def make_pair(layers, loss, opt, dtype, batch_size=4, seed=0):
    """A CPU and a GPU step from one model and seed; ``opt`` makes a fresh optimizer."""
    model = fastbp.Sequential(*layers)
    kw = dict(loss=loss, batch_size=batch_size, dtype=dtype, seed=seed)
    cpu = fastbp.compile(model, optimizer=opt(), **kw)
    gpu = fastbp.compile(model, optimizer=opt(), device="cuda", **kw)
    return cpu, gpu


def batch(step, n, rng):
    x = rng.standard_normal((n, step.n_in)).astype(step.dtype)
    if step.classification:
        y = rng.integers(0, step.n_out, n).astype(np.int64)
    elif step.loss == "bce_with_logits":
        y = rng.uniform(0, 1, (n, step.n_out)).astype(step.dtype)
    else:
        y = rng.standard_normal((n, step.n_out)).astype(step.dtype)
    return x, y


def host(a):
    return a.copy_to_host()


def assert_same_state(cpu, gpu, grads=True):
    """Weights, gradients, optimizer state and counters of the two steps agree."""
    t = tol(cpu.dtype)
    ph = gpu.params_host()
    assert set(ph) == set(cpu.params)
    for k, v in ph.items():
        np.testing.assert_allclose(v, cpu.params[k], err_msg=f"param {k}", **t)
        if grads:
            np.testing.assert_allclose(host(gpu.grads[k]), cpu.grads[k], err_msg=f"grad {k}", **t)
    assert len(gpu.state_vectors) == len(cpu.state_vectors)
    for i, (g, c) in enumerate(zip(gpu.state_vectors, cpu.state_vectors)):
        np.testing.assert_allclose(host(g), c, err_msg=f"optimizer state {i}", **t)
    assert gpu.n_steps == cpu.n_steps
    keep = [i for i in range(cpu.hyper.size) if i not in fastbp._executor.RUNTIME_SLOTS]   # training state
    np.testing.assert_array_equal(gpu.hyper[keep], cpu.hyper[keep])


def snapshot(gpu):
    """Host copies of the weights and the optimizer state."""
    return [host(gpu.param_vector)] + [host(s) for s in gpu.state_vectors]


# ===================================================== step equals CPU step
CASES = {
    # each loss, each activation (fused and standalone), SGD momentum and Adam, both dtypes,
    # both weight layouts, with and without bias
    "xent_relu_sgd_nesterov_f32": ([L(5, 6), fastbp.ReLU(), L(6, 3)], "softmax_cross_entropy",
                                   lambda: fastbp.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                                   np.float32),
    "mse_sigmoid_adam_f64": ([L(5, 6), fastbp.Sigmoid(), L(6, 3)], "mse",
                             lambda: fastbp.Adam(lr=0.01, weight_decay=0.01), np.float64),
    "bce_tanh_outin_nobias_sgd_f32": ([L(5, 6, _layout="out_in"), fastbp.Tanh(), L(6, 2, bias=False)],
                                      "bce_with_logits", lambda: fastbp.SGD(lr=0.5, momentum=0.5),
                                      np.float32),
    "svm_relu_tanh_adamw_f32": ([L(5, 6), fastbp.ReLU(), fastbp.Tanh(), L(6, 3)], "svm",
                                lambda: fastbp.Adam(lr=0.05, weight_decay=0.1, decoupled=True), np.float32),
    "xent_sigmoid_outin_plain_sgd_f64": ([L(5, 4), fastbp.Sigmoid(), L(4, 3, _layout="out_in")],
                                         "softmax_cross_entropy", lambda: fastbp.SGD(lr=0.3), np.float64),
    # weight decay on the matrices only: the update in pieces (fastbp.registry.optimizers.update_piece)
    "xent_tanh_adam_decay1d_epshat_f64": ([L(5, 6), fastbp.Tanh(), L(6, 3)], "softmax_cross_entropy",
                                          lambda: fastbp.Adam(lr=0.05, eps=1e-3, weight_decay=0.1, decay_1d=False,
                                                              eps_hat=True), np.float64),
    "mse_relu_sgd_decay1d_f32": ([L(5, 6), fastbp.ReLU(), L(6, 3)], "mse",
                                 lambda: fastbp.SGD(lr=0.1, momentum=0.9, weight_decay=0.05, decay_1d=False),
                                 np.float32),
}


#: cases marked ``thorough`` (CI's last stage; each costs ~15 s under the simulator, whose
#: every launch runs 128-256 Python threads): the README's test command runs a cross-entropy
#: SGD-momentum float32 step and an mse Adam float64 step on the simulator, CI all five
THOROUGH_CASES = {"xent_sigmoid_outin_plain_sgd_f64", "bce_tanh_outin_nobias_sgd_f32", "svm_relu_tanh_adamw_f32",
                  "xent_tanh_adam_decay1d_epshat_f64", "mse_relu_sgd_decay1d_f32"}


@requires_cuda
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.thorough) if c in THOROUGH_CASES else c
                                  for c in sorted(CASES)])
def test_gpu_step_matches_cpu(case):
    layers, loss, opt, dtype = CASES[case]
    cpu, gpu = make_pair(layers, loss, opt, dtype)
    assert isinstance(gpu, fastbp.cuda_step.CudaTrainStep)
    np.testing.assert_array_equal(gpu.plan.tape, cpu.plan.tape)       # the same compiled graph
    rng = np.random.default_rng(7)
    for n in (4, 3):                                                     # full and partial batch
        x, y = batch(cpu, n, rng)
        lc = cpu(x, y)
        lg = gpu(x, y)
        assert isinstance(lg, float)
        assert lg == approx(lc, dtype)
    x, y = batch(cpu, 4, rng)
    assert gpu.loss_and_grads(x, y) == approx(cpu.loss_and_grads(x, y), dtype)
    assert_same_state(cpu, gpu)
    assert gpu.n_steps == 2


@requires_cuda
@pytest.mark.thorough       # ~14 s of simulator; the default run checks the kernels (test_cuda_kernels.py)
def test_gpu_rmsprop_with_gradient_clipping_matches_cpu():
    """RMSprop (centered, momentum, weight decay) with clip_grad_norm: the GPU step's
    update, state vectors and clipped gradients are the CPU step's."""
    model = fastbp.Sequential(L(5, 6), fastbp.Tanh(), L(6, 3))
    kw = dict(loss="softmax_cross_entropy", batch_size=4, dtype=np.float64, seed=0, clip_grad_norm=0.05)
    opt = dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)
    cpu = fastbp.compile(model, optimizer=fastbp.RMSprop(**opt), **kw)
    gpu = fastbp.compile(model, optimizer=fastbp.RMSprop(**opt), device="cuda", **kw)
    assert gpu.clip_grad_norm == 0.05
    rng = np.random.default_rng(3)
    for n in (4, 3):
        x, y = batch(cpu, n, rng)
        assert gpu(x, y) == approx(cpu(x, y), np.float64)
    assert len(cpu.state_vectors) == 3
    assert_same_state(cpu, gpu)


# ============================================== normalisation layers (issue 14)
@requires_cuda
@pytest.mark.parametrize("norm", ["batchnorm", pytest.param("layernorm", marks=pytest.mark.thorough)])
def test_gpu_norm_layers_match_cpu(norm):
    """LayerNorm / BatchNorm1d instructions on the GPU: steps, gradients, running statistics,
    eval-mode predict, and a one-row training call refused, as on the CPU.  After BatchNorm a
    GELU, whose training forward keeps its derivative for the backward (OP_ACT's c, OP_ACT_BWD's
    f1), with a predict (eval mode: no derivative) between the steps."""
    layer = fastbp.BatchNorm1d(6, momentum=0.3) if norm == "batchnorm" else fastbp.LayerNorm(6)
    act = fastbp.GELU() if norm == "batchnorm" else fastbp.Tanh()
    cpu, gpu = make_pair([L(5, 6), layer, act, L(6, 3)], "softmax_cross_entropy",
                         lambda: fastbp.SGD(lr=0.1, momentum=0.9), np.float64)
    if norm == "batchnorm":
        isa = fastbp._isa
        assert any(row[isa.C_OP] == isa.OP_ACT_BWD and row[isa.C_F1] == 1 for row in cpu.plan.tape)
    rng = np.random.default_rng(3)
    for n in (4, 3):
        x, y = batch(cpu, n, rng)
        assert gpu(x, y) == approx(cpu(x, y), np.float64)
        gpu.predict(x)
    assert_same_state(cpu, gpu)
    np.testing.assert_allclose(gpu.buffer_vector, cpu.buffer_vector, **tol(np.float64))
    assert set(gpu.buffers) == set(cpu.buffers)
    x, _ = batch(cpu, 5, rng)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), **tol(np.float64))
    if norm == "batchnorm":
        assert gpu.buffers["1.num_batches_tracked"][0] == 2
        before = gpu.buffer_vector.copy()
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            gpu(x[:1], np.zeros(1, dtype=np.int64))
        np.testing.assert_array_equal(gpu.buffer_vector, before)
        # load_params_from a CPU step takes its running statistics too
        gpu.load_params_from(cpu)
        np.testing.assert_array_equal(gpu.buffer_vector, cpu.buffer_vector)


@requires_cuda
def test_gpu_fused_linear_keeps_the_derivative():
    """Linear -> SiLU fused: the training forward keeps act'(Z) in the pre-activation's buffer
    (OP_LINEAR / OP_LINEAR_BWD flag f5) and the backward multiplies by it, on the GPU as on the
    CPU; a predict (eval mode) between the steps changes nothing."""
    cpu, gpu = make_pair([L(5, 6), fastbp.SiLU(), L(6, 3)], "softmax_cross_entropy",
                         lambda: fastbp.SGD(lr=0.1, momentum=0.9), np.float64)
    isa = fastbp._isa
    assert sum(row[isa.C_F5] for row in cpu.plan.tape if row[isa.C_OP] in (isa.OP_LINEAR, isa.OP_LINEAR_BWD)) == 2
    rng = np.random.default_rng(5)
    for n in (4, 3):
        x, y = batch(cpu, n, rng)
        assert gpu(x, y) == approx(cpu(x, y), np.float64)
        np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), **tol(np.float64))
    assert_same_state(cpu, gpu)


# ================================================================== dropout
@requires_cuda
@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.thorough)])
def test_gpu_dropout_matches_cpu(dtype):
    """Dropout on the GPU: bitwise the CPU's mask (single calls, and a fit, whose steps are
    launched before the step count advances), close results, eval mode in predict.
    float64 (the README's test command, ~15 s of simulator): a fit of two steps only."""
    if dtype == np.float64:
        layers = [L(5, 6), fastbp.ReLU(), fastbp.Dropout(0.4), L(6, 3)]
        opt = lambda: fastbp.SGD(lr=0.1, momentum=0.9)      # noqa: E731
    else:
        layers = [L(5, 6), fastbp.ReLU(), fastbp.Dropout(0.4), L(6, 6), fastbp.Tanh(), fastbp.Dropout(0.5),
                  L(6, 3)]
        opt = lambda: fastbp.Adam(lr=0.01)      # noqa: E731
    cpu, gpu = make_pair(layers, "softmax_cross_entropy", opt, dtype, seed=4)
    assert gpu.hyper[fastbp._isa.H_RNG_SEED] == cpu.hyper[fastbp._isa.H_RNG_SEED]
    drops = [n for n in cpu.graph.nodes if n.op == "dropout"]

    def same_mask(n):
        """The elements the last call dropped (its last minibatch: ``n`` rows) are the same."""
        for node in drops:
            buf = cpu.plan.value_buf[node.id]
            off, _, c = (int(v) for v in cpu.plan.bufs[buf])
            kept_cpu = cpu.arena[off:off + n * c].reshape(n, c) != 0
            np.testing.assert_array_equal(gpu._tape.view(buf, n).copy_to_host() != 0, kept_cpu)

    rng = np.random.default_rng(2)
    if dtype != np.float64:
        for n in (4, 3):
            x, y = batch(cpu, n, rng)
            assert gpu.loss_and_grads(x, y) == approx(cpu.loss_and_grads(x, y), dtype)
            same_mask(n)
            assert gpu(x, y) == approx(cpu(x, y), dtype)
    X, Y = batch(cpu, 5, rng)           # two steps: 4 rows, then 1
    np.testing.assert_allclose(gpu.fit(X, Y, epochs=1, seed=1), cpu.fit(X, Y, epochs=1, seed=1), **tol(dtype))
    same_mask(1)                        # the second step's mask: step count + 1
    assert_same_state(cpu, gpu, grads=False)
    np.testing.assert_allclose(gpu.predict(X), cpu.predict(X), **tol(dtype))
    assert gpu.hyper[fastbp._isa.H_TRAINING] == 1.0


# ============================================================ fit / predict
@requires_cuda
@pytest.mark.parametrize("on_device", [False, pytest.param(True, marks=pytest.mark.thorough)])
def test_gpu_fit_and_predict(on_device):
    if on_device:      # regression, data already on the device (used in place), Adam
        cpu, gpu = make_pair([L(3, 5), fastbp.Tanh(), L(5, 2)], "mse", lambda: fastbp.Adam(lr=0.02),
                             np.float64, seed=3)
    else:              # classification, host data, SGD with momentum
        cpu, gpu = make_pair([L(3, 5), fastbp.ReLU(), L(5, 3)], "softmax_cross_entropy",
                             lambda: fastbp.SGD(lr=0.2, momentum=0.9), np.float32, seed=3)
    rng = np.random.default_rng(11)
    X, Y = batch(cpu, 7, rng)            # 7 rows, batch 4: a full and a partial minibatch
    Xg, Yg = (cuda.to_device(X), cuda.to_device(Y)) if on_device else (X, Y)
    lc = cpu.fit(X, Y, epochs=1, shuffle=True)
    lg = gpu.fit(Xg, Yg, epochs=1, shuffle=True)
    assert lg.shape == lc.shape == (2,)
    np.testing.assert_allclose(lg, lc, **tol(cpu.dtype))
    assert gpu.rng.bit_generator.state == cpu.rng.bit_generator.state   # same draws
    assert_same_state(cpu, gpu)
    if on_device:
        np.testing.assert_array_equal(Xg.copy_to_host(), X)           # read, not modified
    out = gpu.predict(Xg)
    if on_device:
        assert getattr(out, "__cuda_ndarray__", False)
        out = out.copy_to_host()
    else:
        assert isinstance(out, np.ndarray)
    assert out.shape == (7, cpu.n_out) and out.dtype == cpu.dtype
    np.testing.assert_allclose(out, cpu.predict(X), **tol(cpu.dtype))


@requires_cuda
@pytest.mark.thorough      # ~25 s under the simulator; CI's last stage runs it
def test_gpu_fit_with_schedule_validation_and_callbacks_matches_cpu():
    """Issue 15: the GPU step's fit has the CPU step's signature and results: a per-step
    schedule (rate set before each update's launch), History, validation metrics, a callback
    that stops, predict_proba."""
    cpu, gpu = make_pair([L(3, 5), fastbp.Tanh(), L(5, 3)], "softmax_cross_entropy",
                         lambda: fastbp.SGD(lr=0.2, momentum=0.9), np.float64, seed=3)
    rng = np.random.default_rng(11)
    X, Y = batch(cpu, 7, rng)
    sched = fastbp.schedules.OneCycleLR(0.5, total_steps=6)
    stop = lambda e, logs: e == 1           # noqa: E731
    hc = cpu.fit(X, Y, epochs=3, schedule=sched, validation_data=(X, Y), callbacks=[stop])
    hg = gpu.fit(X, Y, epochs=3, schedule=sched, validation_data=(X, Y), callbacks=[stop])
    assert hg.shape == hc.shape == (4,) and hg.stopped_epoch == hc.stopped_epoch == 1
    np.testing.assert_allclose(hg, hc, **tol(cpu.dtype))
    assert hg.history["lr"] == hc.history["lr"] and gpu.lr == cpu.lr
    np.testing.assert_allclose(hg.history["val_loss"], hc.history["val_loss"], **tol(cpu.dtype))
    assert hg.history["val_accuracy"] == hc.history["val_accuracy"]
    assert_same_state(cpu, gpu)
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), **tol(cpu.dtype))
    import pickle
    with pytest.raises(TypeError, match="step.save"):
        pickle.dumps(gpu)



@requires_cuda
def test_gpu_calls_outside_fit_follow_a_step_interval_schedule_as_the_cpu_steps():
    """A step-interval schedule given to the step: each call runs at its rate of that update
    and ``lr`` then reports the next one, as on the CPU (both ignored it)."""
    sched = lambda: fastbp.schedules.StepLR(1, 0.5, interval="step")      # noqa: E731
    cpu, gpu = make_pair([L(3, 4), fastbp.ReLU(), L(4, 3)], "softmax_cross_entropy",
                         lambda: fastbp.SGD(lr=0.2), np.float64, seed=3)
    cpu.schedule, gpu.schedule = sched(), sched()
    X, Y = batch(cpu, 4, np.random.default_rng(5))
    for _ in range(3):
        lc, lg = cpu(X, Y), gpu(X, Y)
        np.testing.assert_allclose(lg, lc, **tol(cpu.dtype))
        assert gpu.lr == cpu.lr
    assert cpu.lr == pytest.approx(0.2 * 0.5 ** 3)
    assert_same_state(cpu, gpu)

# ================================================= host inputs in any layout
@requires_cuda
@pytest.mark.thorough           # 12-60 s under the simulator: CI's last stage
def test_gpu_host_inputs_in_any_layout_are_those_of_copies():
    """Issue 17: the GPU step's host inputs go through the CPU step's one input path: odd
    layouts (x[:, None], read-only, Fortran, byte-swapped, strided) give bitwise the
    results of C-contiguous copies, and each epoch's order of a fit is drawn when it starts."""
    model = fastbp.Sequential(L(1, 4), fastbp.Tanh(), L(4, 1))
    kw = dict(loss="mse", batch_size=4, dtype=np.float32, seed=2, device="cuda")
    odd, ref = (fastbp.compile(model, optimizer=fastbp.Adam(lr=0.05), **kw) for _ in range(2))
    x = np.linspace(-1, 1, 10).astype(np.float32)
    y = np.cos(3 * x).astype(np.float32)
    ro = y[:, None].copy()
    ro.flags.writeable = False
    wide = np.zeros((10, 3), ">f4")
    wide[:, 1] = x
    assert odd(x[:4, None], ro[:4]) == ref(x[:4, None].copy(), y[:4, None].copy())
    assert odd.loss_and_grads(np.asfortranarray(wide[:4, 1:2]), y[:4]) == ref.loss_and_grads(x[:4, None].copy(),
                                                                                            y[:4].copy())
    lo = odd.fit(wide[:, 1:2], y[::-1][::-1], epochs=2, seed=5)
    lr = ref.fit(x[:, None].copy(), y.copy(), epochs=2, seed=5)
    assert lo.tobytes() == lr.tobytes() and lo.shape == (6,)
    po, pr = odd.params_host(), ref.params_host()
    assert all(po[k].tobytes() == pr[k].tobytes() for k in po)
    assert odd.predict(x[:, None]).tobytes() == ref.predict(x[:, None].copy()).tobytes()
    # the same minibatches as the CPU step's fit, epoch by epoch, from the step's own generator
    cpu = fastbp.compile(model, loss="mse", optimizer=fastbp.Adam(lr=0.05), batch_size=4, dtype=np.float32,
                         seed=2)
    gpu = fastbp.compile(model, optimizer=fastbp.Adam(lr=0.05), **kw)
    np.testing.assert_allclose(gpu.fit(x[:, None], y, epochs=2), cpu.fit(x[:, None], y, epochs=2), **tol(np.float32))
    assert gpu.rng.bit_generator.state == cpu.rng.bit_generator.state
    with pytest.raises(TypeError, match="shuffle must be a bool"):
        gpu.fit(x[:, None], y, shuffle="no")


# ===================================================== device inputs in place
@requires_cuda
@pytest.mark.thorough           # 12-60 s under the simulator: CI's last stage
def test_gpu_device_inputs_are_read_in_place():
    cpu, gpu = make_pair([L(4, 3), fastbp.Sigmoid(), L(3, 2)], "mse",
                         lambda: fastbp.SGD(lr=0.1, momentum=0.9), np.float32)
    rng = np.random.default_rng(5)
    x, y = batch(cpu, 4, rng)
    p = gpu.plan
    # poison the staging buffers of the input and the targets: a device input must not go there
    xv = gpu._tape.view(p.x_buf, 4)
    yv = gpu._tape.view(p.yf_buf, 4)
    xv.copy_to_device(np.full((4, 4), 7.0, np.float32))
    yv.copy_to_device(np.full((4, 2), -3.0, np.float32))
    lg = gpu(cuda.to_device(x), cuda.to_device(y))
    assert lg == approx(cpu(x, y), np.float32)
    np.testing.assert_array_equal(xv.copy_to_host(), 7.0)
    np.testing.assert_array_equal(yv.copy_to_host(), -3.0)
    assert_same_state(cpu, gpu)
    # a numpy minibatch goes through the staging buffer
    x2, y2 = batch(cpu, 4, rng)
    assert gpu(x2, y2) == approx(cpu(x2, y2), np.float32)
    np.testing.assert_array_equal(xv.copy_to_host(), x2)
    # on a real GPU with PyTorch CUDA: tensors (__cuda_array_interface__) are read in place too
    if not AVAIL.simulator and _torch_cuda():
        import torch
        x3, y3 = batch(cpu, 3, rng)
        xv.copy_to_device(np.full((4, 4), 7.0, np.float32))
        lt = gpu(torch.as_tensor(x3, device="cuda"), torch.as_tensor(y3, device="cuda"))
        assert lt == approx(cpu(x3, y3), np.float32)
        np.testing.assert_array_equal(xv.copy_to_host(), 7.0)
        assert_same_state(cpu, gpu)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@requires_cuda
def test_gpu_argument_errors_name_the_argument():
    _, gpu = make_pair([L(4, 3)], "softmax_cross_entropy", lambda: fastbp.SGD(lr=0.1), np.float32)
    x = np.zeros((2, 4), np.float32)
    y = np.zeros(2, np.int64)
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray or a CUDA device array"):
        gpu([[0.0] * 4] * 2, y)
    with pytest.raises(TypeError, match=r"x has dtype float64; this step was compiled for float32"):
        gpu(cuda.to_device(x.astype(np.float64)), y)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 4\)"):
        gpu(cuda.to_device(np.zeros((2, 5), np.float32)), y)
    with pytest.raises(ValueError, match=r"more than batch_size=4"):
        gpu(cuda.to_device(np.zeros((5, 4), np.float32)), np.zeros(5, np.int64))
    with pytest.raises(TypeError, match=r"y on the device must hold int64 class labels"):
        gpu(x, cuda.to_device(np.zeros(2, np.int32)))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        gpu(x, cuda.to_device(np.zeros(3, np.int64)))
    with pytest.raises(TypeError, match=r"y must hold integer class labels"):
        gpu(x, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"X must have shape"):
        gpu.predict(np.zeros((3, 2), np.float32))
    assert gpu.n_steps == 0


# ============================================ failures leave the state alone
@requires_cuda
def test_gpu_bad_label_and_nan_leave_weights_unchanged():
    cpu, gpu = make_pair([L(4, 5), fastbp.ReLU(), L(5, 3)], "softmax_cross_entropy",
                         lambda: fastbp.Adam(lr=0.05), np.float32)
    rng = np.random.default_rng(2)
    x, y = batch(cpu, 4, rng)
    before = snapshot(gpu)
    bad = y.copy()
    bad[2] = 3
    for step in (cpu, gpu):
        with pytest.raises(ValueError, match=r"y\[2\] = 3 is not a class label in \[0, 3\).*weights unchanged"):
            step(x, bad)
    with pytest.raises(ValueError, match=r"y\[1\] = -1 is not a class label"):      # labels on the device
        gpu(x, cuda.to_device(np.array([0, -1, 2, 1], np.int64)))
    xn = x.copy()
    xn[1, 2] = np.nan
    for step in (cpu, gpu):
        with pytest.raises(FloatingPointError, match=r"loss is not finite.*unchanged"):
            step(xn, y)
    for a, b in zip(before, snapshot(gpu)):
        np.testing.assert_array_equal(a, b)
    assert gpu.n_steps == 0 and gpu.hyper[fastbp._executor.H_T] == 0
    # the next good step is a normal first step (the failure status was cleared)
    assert gpu(x, y) == approx(cpu(x, y), np.float32)
    assert_same_state(cpu, gpu, grads=False)
    assert gpu.n_steps == 1


@requires_cuda
def test_gpu_nonfinite_gradient_leaves_weights_unchanged():
    # finite loss, overflowing weight gradient: H = 1e250, W2 = 1e-100 -> dW2 = H^T dS = inf
    cpu, gpu = make_pair([L(2, 2), fastbp.ReLU(), L(2, 1)], "mse",
                         lambda: fastbp.SGD(lr=0.1, momentum=0.9), np.float64)
    w = {"0.W": np.array([[1e250, 0.0], [0.0, 1e250]]), "0.b": np.zeros(2),
         "2.W": np.array([[1e-100], [1e-100]]), "2.b": np.zeros(1)}
    for k, v in w.items():
        cpu.params[k][...] = v
    gpu.load_params_from(w)
    x = np.ones((1, 2))
    y = np.zeros((1, 1))
    before = snapshot(gpu)
    for step in (cpu, gpu):
        with pytest.raises(FloatingPointError, match=r"a gradient is not finite.*unchanged"):
            step(x, y)
    for a, b in zip(before, snapshot(gpu)):
        np.testing.assert_array_equal(a, b)
    assert gpu.n_steps == cpu.n_steps == 0


@requires_cuda
@pytest.mark.thorough           # 12-60 s under the simulator: CI's last stage
def test_gpu_fit_failure_keeps_earlier_steps_only():
    cpu, gpu = make_pair([L(3, 4), fastbp.Tanh(), L(4, 2)], "softmax_cross_entropy",
                         lambda: fastbp.SGD(lr=0.1, momentum=0.9), np.float32)
    rng = np.random.default_rng(4)
    X, Y = batch(cpu, 8, rng)
    X[5, 1] = np.inf             # in the second (last) minibatch (no shuffling)
    for step in (cpu, gpu):
        with pytest.raises(FloatingPointError, match=r"at step 1 of fit"):
            step.fit(X, Y, shuffle=False)
    assert gpu.n_steps == cpu.n_steps == 1
    assert_same_state(cpu, gpu, grads=False)
    # shuffled: the same minibatch fails on both, and a failed fit consumes no shuffles
    rng_before = gpu.rng.bit_generator.state
    msgs = []
    for step in (cpu, gpu):
        with pytest.raises(FloatingPointError, match=r"at step \d of fit") as e:
            step.fit(X, Y, shuffle=True)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    assert gpu.rng.bit_generator.state == cpu.rng.bit_generator.state == rng_before
    assert_same_state(cpu, gpu, grads=False)
    Yb = Y.copy()
    Yb[7] = 2                    # host labels are checked up front, as on the CPU
    with pytest.raises(ValueError, match=r"Y\[7\] = 2 is not a class label"):
        gpu.fit(X, Yb)
    assert gpu.n_steps == cpu.n_steps
    # device labels are checked on the device: step 0 is applied, the failing step 1 is not
    Yb[:] = Y
    Yb[6] = -4
    X1 = np.ones((8, 3), np.float32)
    with pytest.raises(ValueError, match=r"Y\[6\] = -4 is not a class label .* at step 1 of fit"):
        gpu.fit(X1, cuda.to_device(Yb), shuffle=False)
    n_before = cpu.n_steps
    cpu(X1[:4], Yb[:4])
    assert gpu.n_steps == cpu.n_steps == n_before + 1
    assert_same_state(cpu, gpu, grads=False)


@requires_cuda
def test_gpu_poisson_device_targets_outside_the_domain_are_a_value_error():
    """Device targets of poisson were not checked: a negative count was a FloatingPointError
    ("the loss is not finite"), where host targets (and the CPU step) give a ValueError
    naming the target; a fit stopped at the failing step after applying the earlier ones."""
    cpu, gpu = make_pair([L(3, 2)], "poisson", lambda: fastbp.SGD(lr=0.1), np.float32)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.poisson(2.0, (4, 2)).astype(np.float32)
    before = snapshot(gpu)
    for v, what in ((-1.0, "negative"), (np.nan, "not finite")):
        bad = y.copy()
        bad[2, 1] = v
        for step, yb in ((cpu, bad), (gpu, bad), (gpu, cuda.to_device(bad))):
            with pytest.raises(ValueError, match=rf"y holds a target that is {what} \(row 2, output 1"):
                step(x, yb)
    X = np.concatenate([x, x])
    Y = np.concatenate([y, y])
    Y[6, 0] = -2.0
    with pytest.raises(ValueError, match=r"Y holds a target that is negative \(row 6, output 0"):
        gpu.fit(X, cuda.to_device(Y), shuffle=False)
    for a, b in zip(before, snapshot(gpu)):
        np.testing.assert_array_equal(a, b)
    assert gpu.n_steps == 0
    assert gpu(x, cuda.to_device(y)) == pytest.approx(cpu(x, y), rel=1e-5)


@requires_cuda
def test_load_params_from_with_optimizer_state_continues_as_the_source():
    """It copied the counters only: a source's changed rate and its dropout seed (another
    compile seed) were not taken, so the next step differed (0.04 in the weights)."""
    model = fastbp.Sequential(L(4, 6), fastbp.ReLU(), fastbp.Dropout(0.25), L(6, 3))
    kw = dict(loss="softmax_cross_entropy", batch_size=4, dtype=np.float64)
    cpu = fastbp.compile(model, optimizer=fastbp.Adam(lr=0.01), seed=7, **kw)
    gpu = fastbp.compile(model, optimizer=fastbp.Adam(lr=0.01), seed=3, device="cuda", **kw)
    rng = np.random.default_rng(1)
    x, y = batch(cpu, 4, rng)
    cpu(x, y)
    cpu.lr = 0.05
    gpu.load_params_from(cpu, optimizer_state=True)
    assert gpu.lr == cpu.lr == 0.05 and gpu.n_steps == 1
    x, y = batch(cpu, 4, rng)
    assert gpu(x, y) == approx(cpu(x, y), np.float64)
    assert_same_state(cpu, gpu)


@requires_cuda
def test_gpu_to_cpu_with_clipping_loads_the_clip_kernel_and_host_values_are_checked(monkeypatch):
    """to_cpu() copied clip_grad_norm into hyper without loading clipping's native kernel: in a
    process that had not compiled a clipping CPU step, every call of the copy raised "native
    kernel ... was not loaded".  load_params_from dropped a complex value's imaginary part and
    gave numpy's bare messages for a string or None."""
    ex = fastbp._executor
    loaded = []
    real = ex.load_kernels
    monkeypatch.setattr(ex, "load_kernels", lambda dtype, ks, *a, **k: (loaded.extend(ks), real(dtype, ks, *a, **k))[1])
    cpu_ref, gpu = make_pair([L(3, 4), fastbp.ReLU(), L(4, 2)], "softmax_cross_entropy",
                             lambda: fastbp.SGD(lr=0.1), np.float64)
    gpu.clip_grad_norm = cpu_ref.clip_grad_norm = 0.01
    loaded.clear()
    cpu = gpu.to_cpu()
    assert cpu.clip_grad_norm == 0.01 and ex.K_CLIP_GRAD_NORM in loaded
    x, y = batch(cpu, 4, np.random.default_rng(0))
    assert cpu(x, y) == approx(cpu_ref(x, y), np.float64)
    before = gpu.params_host()["0.W"].copy()
    for bad, words in ((np.ones((3, 4), complex), "ndarray of dtype complex128"), ("abc", "str of dtype"),
                       (None, "NoneType of dtype object")):
        with pytest.raises(TypeError, match=f"'0.W' must be a real numeric array, got {words}"):
            gpu.load_params_from({"0.W": bad, "0.b": np.zeros(4)})
    np.testing.assert_array_equal(gpu.params_host()["0.W"], before)     # nothing copied


@requires_cuda
def test_gpu_grad_function_refuses_non_contiguous_device_arrays_naming_them():
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    f = fastbp.grad(fastbp.sum(x * x), [x], batch_size=4, dtype=np.float64, device="cuda")
    a = np.arange(12.0).reshape(4, 3)
    for d in (cuda.to_device(np.asfortranarray(a)), cuda.to_device(np.arange(24.0).reshape(4, 6))[:, ::2]):
        with pytest.raises(ValueError, match="x on the device must be C-contiguous"):
            f(x=d)
    np.testing.assert_allclose(f(x=cuda.to_device(a))[1]["x"], 2 * a)


# =============================================== CPU <-> GPU weights, saving
@requires_cuda
@pytest.mark.thorough           # 12-60 s under the simulator: CI's last stage
def test_gpu_cpu_weights_round_trip(tmp_path):
    cpu, gpu = make_pair([L(3, 4), fastbp.Sigmoid(), L(4, 2)], "bce_with_logits",
                         lambda: fastbp.Adam(lr=0.03), np.float64, seed=1)
    rng = np.random.default_rng(8)
    x, y = batch(cpu, 4, rng)
    cpu(x, y)
    # CPU -> GPU with the optimizer state: the next step is the same on both
    gpu.load_params_from(cpu, optimizer_state=True)
    assert gpu.n_steps == 1
    x, y = batch(cpu, 4, rng)
    assert gpu(x, y) == approx(cpu(x, y), np.float64)
    assert_same_state(cpu, gpu)
    # GPU -> CPU: an independent CPU step in the same state
    back = gpu.to_cpu()
    assert type(back) is fastbp.TrainStep and back.n_steps == 2
    x, y = batch(cpu, 4, rng)
    assert gpu(x, y) == approx(back(x, y), np.float64)
    assert_same_state(back, gpu)
    # plain weights into a CPU step through host copies
    cpu2 = fastbp.compile(gpu.model, loss="bce_with_logits", optimizer=fastbp.Adam(lr=0.03), batch_size=4,
                          dtype=np.float64, seed=9)
    for k, v in gpu.params_host().items():
        cpu2.params[k][...] = v
    np.testing.assert_allclose(cpu2.predict(x), gpu.predict(x), **tol(np.float64))
    # a dict of device arrays into the GPU step
    gpu2 = fastbp.compile(gpu.model, loss="bce_with_logits", optimizer=fastbp.Adam(lr=0.03), batch_size=4,
                          dtype=np.float64, seed=9, device="cuda")
    gpu2.load_params_from({k: cuda.to_device(v) for k, v in gpu.params_host().items()})
    for k, v in gpu.params_host().items():
        np.testing.assert_array_equal(gpu2.params_host()[k], v)
    with pytest.raises(ValueError, match=r"'0.W' must have shape \(3, 4\)"):
        gpu2.load_params_from({"0.W": np.zeros((4, 3))})
    with pytest.raises(KeyError, match=r"unknown parameter 'nope'"):
        gpu2.load_params_from({"nope": np.zeros(1)})
    # save through a host copy; load and continue on the GPU
    path = tmp_path / "gpu.ckpt"
    gpu.save(path)
    loaded = fastbp.load(path)
    again = fastbp.cuda_step.CudaTrainStep.from_cpu(loaded)
    assert again.n_steps == gpu.n_steps == 3
    for k, v in gpu.params_host().items():
        np.testing.assert_array_equal(loaded.params[k], v)
        np.testing.assert_array_equal(again.params_host()[k], v)
    for a, b in zip(snapshot(gpu), snapshot(again)):
        np.testing.assert_array_equal(a, b)


@requires_cuda
def test_gpu_step_is_a_step_base_without_a_cpu_template():
    """The GPU step shares StepBase with the CPU step instead of holding a CPU TrainStep; its
    initial weights are the CPU step's; to_cpu/from_cpu carry the training state (learning
    rate, counters, generator) but each step keeps its own process's BLAS policy slots."""
    from fastbp import _isa
    from fastbp._step_base import StepBase
    cpu, gpu = make_pair([L(3, 5), fastbp.Tanh(), L(5, 2)], "mse", lambda: fastbp.SGD(lr=0.1, momentum=0.5),
                         np.float64, seed=4)
    assert isinstance(gpu, StepBase) and not isinstance(gpu, fastbp.TrainStep)
    assert not any(isinstance(v, fastbp.TrainStep) for v in vars(gpu).values())
    for k, v in gpu.params_host().items():
        np.testing.assert_array_equal(v, cpu.params[k])
    gpu.lr = 0.25
    assert gpu.optimizer.lr == 0.25 and gpu.lr == 0.25
    gpu.hyper[_isa.H_STEPS] = 5.0
    gpu.rng.random()
    back = gpu.to_cpu()
    state = [i for i in range(_isa.HYPER_SIZE) if i not in _isa.RUNTIME_SLOTS]
    np.testing.assert_array_equal(back.hyper[state], gpu.hyper[state])
    np.testing.assert_array_equal(back.hyper[list(_isa.RUNTIME_SLOTS)], cpu.hyper[list(_isa.RUNTIME_SLOTS)])
    assert back.lr == back.optimizer.lr == 0.25 and back.n_steps == 5
    assert back.rng.bit_generator.state == gpu.rng.bit_generator.state
    again = fastbp.cuda_step.CudaTrainStep.from_cpu(back)
    np.testing.assert_array_equal(again.hyper[state], back.hyper[state])
    assert again.lr == 0.25 and again.rng.bit_generator.state == back.rng.bit_generator.state
    with pytest.raises(TypeError, match="step must be a fastbp.TrainStep, got CudaTrainStep"):
        fastbp.cuda_step.CudaTrainStep.from_cpu(gpu)


@pytest.mark.thorough       # needs the bf16 extra: CI's last stage has it (its default stage would skip)
@requires_cuda
def test_gpu_step_from_a_bf16_cpu_step_takes_its_weights_and_optimizer_state():
    """Defect: ``from_cpu`` of a ``precision="bf16"`` step failed ("incompatible shape"): its
    arena has the bf16 copies after everything else.  The shared part is copied: the same
    weights, optimizer state and counters, in a full-precision GPU step."""
    if not fastbp.bf16_info()["available"]:
        pytest.skip(f"precision='bf16' is not available here: {fastbp.bf16_info()['why']}")
    model = fastbp.Sequential(L(8, 6), fastbp.ReLU(), L(6, 3))
    cpu = fastbp.compile(model, optimizer=fastbp.Adam(lr=0.01), batch_size=4, seed=1, precision="bf16")
    full = fastbp.compile(model, optimizer=fastbp.Adam(lr=0.01), batch_size=4, seed=1)
    assert cpu.arena.size > full.arena.size         # the bf16 copies
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 8)).astype(np.float32), np.array([0, 1, 2, 1])
    cpu(x, y)
    cpu(x, y)
    from fastbp.cuda_step import CudaTrainStep
    gpu = CudaTrainStep.from_cpu(cpu)
    assert gpu.precision == "full" and gpu.n_steps == cpu.n_steps == 2
    np.testing.assert_array_equal(host(gpu.param_vector), cpu.param_vector)
    for a, b in zip(gpu.state_vectors, cpu.state_vectors):
        np.testing.assert_array_equal(host(a), b)
    for k, v in gpu.params_host().items():
        np.testing.assert_array_equal(v, cpu.params[k])
    back = gpu.to_cpu()       # the GPU step trains on as a full-precision CPU step would
    assert gpu(x, y) == approx(back(x, y), np.float32)
    for k, v in gpu.params_host().items():
        np.testing.assert_allclose(v, back.params[k], **tol(np.float32))


# ========================================================= fastbp.grad on GPU
@requires_cuda
@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.thorough)])
def test_gpu_grad_function_matches_cpu(dtype):
    def build():
        g = fastbp.Graph()
        x = g.input("x", (3, 3))
        A = g.input("A", (3, 2))
        b = g.param("b", [0.5, -0.2])
        v = g.input("v", (2,))
        h = fastbp.maximum(x @ A, 2.0 * b)           # product of inputs, broadcast max, constant
        u = fastbp.sigmoid(h) * h + b / (1 + h * h) ** 0.5   # activation, mul, broadcast add, div, pow
        f = fastbp.sum(fastbp.relu(u @ v) * fastbp.tanh(u @ v))   # mat-vec, two uses of one value
        return f, [x, A, b, v]
    rng = np.random.default_rng(3)
    # in the functions' dtype: a grad function refuses arrays of another dtype, as the step does
    args = {k: np.asarray(a, dtype) for k, a in dict(x=rng.standard_normal((3, 3)), A=rng.standard_normal((3, 2)),
                                                     v=rng.standard_normal(2), b=np.array([0.1, -0.3])).items()}
    f, wrt = build()
    vc, gc = fastbp.grad(f, wrt, dtype=dtype, batch_size=4)(**args)
    f, wrt = build()
    fg = fastbp.grad(f, wrt, dtype=dtype, batch_size=4, device="cuda")
    assert isinstance(fg, fastbp.CudaGradFunction)
    if dtype == np.float32:      # device inputs are staged device-to-device
        args = {k: (cuda.to_device(np.asarray(a, np.float32)) if k in ("x", "A") else a) for k, a in args.items()}
    vg, gg = fg(**args)
    assert isinstance(vg, float) and vg == approx(vc, dtype)
    assert set(gg) == {"x", "A", "b", "v"}
    for k in gg:
        assert gg[k].shape == gc[k].shape
        np.testing.assert_allclose(gg[k], gc[k], err_msg=k, **tol(dtype))


@requires_cuda
def test_gpu_grad_of_a_parameter_on_both_sides_of_one_product():
    """``W @ W.T`` (one fused linear instruction whose dX and dW are one buffer): the GPU
    tape runs dW before dX, as the CPU does, so both contributions arrive."""
    Wv = np.array([[1.0, 2.0], [3.0, 4.0]])
    g = fastbp.Graph()
    W = g.param("W", Wv)
    fg = fastbp.grad(fastbp.sum(W @ W.T), [W], device="cuda")
    v, gr = fg()
    assert v == approx(np.sum(Wv @ Wv.T), np.float64)
    np.testing.assert_allclose(gr["W"], 2 * np.ones((2, 2)) @ Wv, **tol(np.float64))


@requires_cuda
def test_gpu_step_and_grad_keep_the_kernels_of_the_entries_they_were_built_with():
    """The GPU tape looked each activation and gate up by code at launch (and built its eval
    program on first use): after unregister it failed, and with the code registered again as
    another op it computed that op silently (the CPU step keeps its kernels)."""
    from fastbp.layers import layer_class
    from fastbp.registry import activations as R, gates as G

    def twice(x):
        return x * type(x)(2.0)

    def d_twice(x):
        return type(x)(2.0)

    def five(x):
        return x * type(x)(5.0)

    def d_five(x):
        return type(x)(5.0)

    def sub(a, b):
        return a - b

    def d_sub(a, b, g):
        return g, -g

    def rsub(a, b):
        return b - a

    def d_rsub(a, b, g):
        return -g, g
    act = dict(torch=None, sklearn=None, uses="output", formula="", dformula="")
    entry = R.register(R.Activation(code=30, name="twice_t", layer="TwiceT", forward=twice, derivative=d_twice, **act))
    G.register(G.Gate(code=12, name="sub_t", forward=sub, grads=d_sub, formula="a-b", gradient="1,-1"))
    try:
        m = fastbp.Sequential(L(2, 2, bias=False), layer_class(entry)())
        step = fastbp.compile(m, loss="mse", batch_size=2, dtype=np.float64, seed=0, device="cuda")
        g = fastbp.Graph()
        a, b = g.input("a", (3,)), g.input("b", (3,))
        fg = fastbp.grad(fastbp.sum(fastbp.graph.gate("sub_t", a, b)), wrt=[a], dtype=np.float64, device="cuda")
        W = step.to_cpu().params["0.W"].copy()
        R.unregister("twice_t")
        G.unregister("sub_t")
        R.register(R.Activation(code=30, name="five_t", layer="FiveT", forward=five, derivative=d_five, **act))
        G.register(G.Gate(code=12, name="rsub_t", forward=rsub, grads=d_rsub, formula="b-a", gradient="-1,1"))
        np.testing.assert_allclose(step.predict(np.eye(2)), 2 * W, rtol=1e-15)
        value, grads = fg(a=np.array([1.0, 2.0, 3.0]), b=np.zeros(3))
        assert value == 6.0 and np.array_equal(grads["a"], np.ones(3))
    finally:
        for name in ("twice_t", "five_t"):
            if R.lookup(name) is not None:
                R.unregister(name)
        for name in ("sub_t", "rsub_t"):
            if name in G.CODES:
                G.unregister(name)


# ================================================================ benchmark
@requires_cuda
@pytest.mark.thorough           # ~30 s under the simulator: CI's last stage
def test_gpu_bench_entry_runs():
    from fastbp.bench.configs import Config
    from fastbp.bench.gpu import bench_gpu
    cfg = Config("t", (4, 3, 2), 2)
    res = bench_gpu([cfg], steps=1, warmup=1, n_batches=1, allow_simulator=True)
    assert res["available"] and res["simulator"] == AVAIL.simulator
    (r,) = res["results"]
    assert r["config"] == "t" and r["arch"] == "4-3-2" and r["batch"] == 2
    assert np.isfinite(r["first_losses"][0]) and "fit_step_s" in r
    if not AVAIL.simulator:
        assert r["step_s"] > 0 and r["fit_step_s"] > 0 and r["gflops"] > 0


def test_bench_gpu_skips_cleanly():
    """Without a GPU (or under the simulator) the entry times nothing and says why."""
    from fastbp.bench.gpu import bench_gpu
    if AVAIL and not AVAIL.simulator:
        pytest.skip(f"a real GPU is here ({AVAIL.reason}); test_gpu_bench_entry_runs times it")
    res = bench_gpu("tiny", steps=1)
    assert res["available"] is False and res["results"] == []
    assert res["reason"] and ("simulator" in res["reason"] if AVAIL.simulator else res["reason"] == AVAIL.reason)
    with pytest.raises(ValueError, match="unknown configuration"):
        bench_gpu("nope")
    for empty in (",", []):
        with pytest.raises(ValueError, match="names no configuration"):
            bench_gpu(empty)


# ==================================================== orchestration (no GPU)
@pytest.mark.simulator
def test_gpu_step_simulator_subprocess():
    """This file's test_gpu_* under the CUDA simulator, in the child process that
    ``conftest.py`` started after collection (``_simulator.py``)."""
    if AVAIL:
        pytest.skip(f"the GPU step tests ran in this process ({AVAIL.reason})")
    if "numba-cuda" in AVAIL.reason:
        pytest.skip(AVAIL.reason)
    rc, counts, ids, tail, reported = _simulator.result(Path(__file__).name)
    assert reported, f"no report from the simulator run (rc={rc}):\n{tail}"
    assert counts["failures"] == counts["errors"] == 0, f"simulator run failed {counts}:\n{tail}"
    # the one skip allowed: a bf16 CPU step's test on a CPU without bf16 instructions
    allowed = 0 if fastbp.bf16_info()["available"] else sum("bf16" in i for i in ids)
    assert counts["skipped"] <= allowed, f"GPU step tests skipped under the simulator {counts}:\n{tail}"
    assert counts["ran"] == len(ids) > 0, f"ran {counts['ran']} of {len(ids)} GPU step tests:\n{tail}"


_NO_DEVICE_CHILD = r"""
import sys, numpy as np
import fastbp
from fastbp.kernels.cuda import cuda_available
a = cuda_available()
model = fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2))
g = fastbp.Graph(); x = g.input("x", (2,)); f = fastbp.sum(fastbp.tanh(x))
try:
    fastbp.compile(model, device="tpu")
except ValueError as e:
    assert "device must be 'cpu' or 'cuda'" in str(e), e
else:
    raise AssertionError("device='tpu' accepted")
if a:   # a real GPU: the step must work
    step = fastbp.compile(model, batch_size=2, device="cuda")
    loss = step(np.ones((2, 3), np.float32), np.array([0, 1]))
    assert np.isfinite(loss)
    v, gr = fastbp.grad(f, [x], device="cuda")(x=np.array([0.1, 0.2]))
    print("GPU", a.reason)
else:
    for make in (lambda: fastbp.compile(model, device="cuda"),
                 lambda: fastbp.grad(f, [x], device="cuda")):
        try:
            make()
        except RuntimeError as e:
            msg = str(e)
            assert "no CUDA device or driver was found" in msg, msg
            assert a.reason in msg, msg
        else:
            raise AssertionError("device='cuda' did not raise without a GPU")
    # the CPU is unaffected
    step = fastbp.compile(model, batch_size=2)
    assert np.isfinite(step(np.ones((2, 3), np.float32), np.array([0, 1])))
    print("NODEV", msg)
"""


def _child_env():
    return {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}


def test_no_device_error():
    """Without the simulator and without a driver: a clear RuntimeError (real GPU: the step works)."""
    r = subprocess.run([sys.executable, "-c", _NO_DEVICE_CHILD], capture_output=True, text=True,
                       env=_child_env(), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("GPU" in r.stdout) == bool(cuda_available_in_child()), r.stdout


def cuda_available_in_child():
    r = subprocess.run([sys.executable, "-c", "from fastbp.kernels.cuda import cuda_available as c; "
                        "print(bool(c()))"], capture_output=True, text=True, env=_child_env(), timeout=300)
    return r.stdout.strip().endswith("True")


def test_import_without_numba_cuda():
    """``import fastbp`` needs no numba-cuda; device='cuda' then explains what is missing."""
    code = ("import sys\n"
            "import fastbp\n"
            "assert 'numba.cuda' not in sys.modules, 'import fastbp imported numba.cuda'\n"
            "sys.modules['numba.cuda'] = None\n"
            "import fastbp.cuda_step\n"
            "m = fastbp.Sequential(fastbp.Linear(2, 2))\n"
            "try:\n"
            "    fastbp.compile(m, device='cuda')\n"
            "except RuntimeError as e:\n"
            "    assert 'no CUDA device or driver was found' in str(e) and 'numba-cuda' in str(e), e\n"
            "    print('OK')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env(),
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("target", PTX_TARGETS, ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_step_kernels_compile_ptx(monkeypatch, tmp_path, target):
    """The step's own kernels compile for a real GPU (this one's, else sm_80 and sm_90) in
    both dtypes, and assemble into machine code where ``ptxas`` is present."""
    import numba
    from numba import cuda as real_cuda

    from fastbp import _cuda_status as cs   # the step's own kernels
    cc = ptx_target(monkeypatch, AVAIL, target)
    ptxas = find_ptxas()
    res = np.zeros(4)
    y = np.zeros(3, np.int64)
    for dtype in (np.float32, np.float64):
        v = np.zeros(3, dtype)
        M = np.zeros((3, 3), dtype)
        table = {
            "sgd_gated": (cs._k_sgd_gated, (v, v, v, 0.1, 0.9, True, 0.1, res)),
            "adam_gated": (cs._k_adam_gated, (v, v, v, v, 0.1, 0.1, 0.9, 0.99, 0.1, 0.01, 1e-8, 0.1, 1.0, True, res)),
            "rmsprop_gated": (cs._k_rmsprop_gated, (v, v, v, v, v, 0.01, 0.99, 0.01, 1e-8, 0.1, 0.9, res)),
            "grad_scale_gated": (cs._k_grad_scale_gated, (v, res[:1], res)),
            "loss_status": (cs._k_loss_status, (y, 3, res, M, res, 0)),
            "grad_status": (cs._k_grad_status, (v, res, 0)),
            "reset_status": (cs._k_reset_status, (res,)),
            "gather_labels": (cs._k_gather, (M, y.reshape(3, 1), y, 0, M, y.reshape(3, 1))),
            "gather_targets": (cs._k_gather, (M, M, y, 0, M, M)),
        }
        for name, (k, args) in table.items():
            sig = tuple(numba.typeof(a) for a in args)
            ptx, _ = real_cuda.compile_ptx(k.py_func, sig, cc=cc)
            assert ".entry" in ptx, name
            if ptxas:
                assemble(ptxas, ptx, cc, tmp_path / f"{name}_{np.dtype(dtype).name}.ptx")
