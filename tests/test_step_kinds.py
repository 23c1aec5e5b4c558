"""The step kinds and what they share: StepBase, the TrainStep driver interface, the factories.

The GPU side of the same contracts is in tests/test_cuda_step.py
(``test_gpu_step_is_a_step_base_without_a_cpu_template``).
"""
import threading

import numpy as np
import pytest

import fastbp
from fastbp import _isa
from fastbp._gradfn_base import GradFunctionBase
from fastbp._step_base import StepBase, gather_rows
from reference import mlp


def make(loss="softmax_cross_entropy", opt=lambda: fastbp.Adam(lr=0.01), seed=3, dtype=np.float64):
    return fastbp.compile(mlp([5, 7, 3], "tanh"), loss, opt(), batch_size=8, dtype=dtype, seed=seed)


def batch(step, n, rng):
    x = rng.standard_normal((n, step.n_in)).astype(step.dtype)
    if step.classification:
        return x, rng.integers(0, step.n_out, n)
    return x, rng.standard_normal((n, step.n_out)).astype(step.dtype)


# ------------------------------------------------------------------ the hierarchy
def test_every_step_kind_is_a_step_base_and_grad_functions_share_theirs():
    from fastbp.cuda_gradfn import CudaGradFunction
    from fastbp.cuda_step import CudaTrainStep
    from fastbp.gradfn import GradFunction
    assert issubclass(fastbp.TrainStep, StepBase) and issubclass(CudaTrainStep, StepBase)
    assert not issubclass(CudaTrainStep, fastbp.TrainStep)
    # the GPU function's base is a class named in its source, not the result of a call
    assert CudaGradFunction.__bases__ == (GradFunctionBase,) and GradFunction.__bases__ == (GradFunctionBase,)
    assert isinstance(make(), StepBase)


def test_the_factories_are_the_package_entry_points():
    from fastbp import checkpoint, factories
    assert fastbp.compile is factories.compile and fastbp.grad is factories.grad
    assert fastbp.load is factories.load is checkpoint.load
    assert checkpoint.load_bundle is factories.load_bundle


def _scalar_graph():
    g = fastbp.Graph()
    a = g.input("a", (1, 3))
    return fastbp.sum(fastbp.tanh(a))


def test_grad_factory_builds_the_cpu_function():
    from fastbp.gradfn import GradFunction
    out = _scalar_graph()
    f = fastbp.grad(out, [out.graph.inputs[0]])
    assert type(f) is GradFunction
    v, g = f(a=np.array([[0.0, 1.0, -2.0]]))
    np.testing.assert_allclose(v, np.tanh([0.0, 1.0, -2.0]).sum())
    np.testing.assert_allclose(g["a"], 1 - np.tanh([[0.0, 1.0, -2.0]]) ** 2)


# ------------------------------------------------------------ the driver interface
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_gradients_then_update_is_one_step(loss):
    """What DistributedStep does with one rank: check, gradients, update == step(x, y), bitwise."""
    a, b = make(loss), make(loss)
    rng = np.random.default_rng(0)
    for n in (8, 5):
        x, y = batch(a, n, rng)
        expect = a(x, y)
        xs, nb = b.check_features(x, "x", b.batch_size)
        yi, yf = b.check_targets(y, nb)
        with b.lock:
            status, loss_value, _ = b.gradients_of(xs, yi, yf, nb)
            assert status == _isa.STATUS_OK
            np.testing.assert_array_equal(b.grad_vector, a.grad_vector)
            assert b.n_steps == a.n_steps - 1
            status, _ = b.apply_update()
        assert status == _isa.STATUS_OK and loss_value == expect and b.n_steps == a.n_steps
        np.testing.assert_array_equal(b.param_vector, a.param_vector)
        for sa, sb in zip(a.state_vectors, b.state_vectors):
            np.testing.assert_array_equal(sa, sb)


def test_driver_failures_report_like_the_step_and_change_nothing():
    s = make()
    rng = np.random.default_rng(1)
    x, y = batch(s, 4, rng)
    y[2] = 7
    before = s.param_vector.copy()
    xs, n = s.check_features(x)
    yi, yf = s.check_targets(y, n, check_range=False)
    status, _, info = s.gradients_of(xs, yi, yf, n)
    assert status == _isa.STATUS_BAD_LABEL and info == 2
    with pytest.raises(ValueError, match=r"y\[2\] = 7 is not a class label in \[0, 3\) at step 9"):
        s.raise_status(status, info, yi, where=" at step 9")
    with pytest.raises(ValueError, match=r"y\[2\] = 7 is not a class label in \[0, 3\)"):
        s(x, y)
    # a non-finite gradient: the update refuses and changes nothing
    s.grad_vector[0] = np.nan
    state = [v.copy() for v in s.state_vectors]
    status, _ = s.apply_update()
    assert status == _isa.STATUS_GRAD_NONFINITE
    with pytest.raises(FloatingPointError, match="a gradient is not finite"):
        s.raise_status(status, 0)
    np.testing.assert_array_equal(s.param_vector, before)
    for a, b in zip(state, s.state_vectors):
        np.testing.assert_array_equal(a, b)
    assert s.n_steps == 0
    with pytest.raises(RuntimeError, match="internal error: executor status 99"):
        s.raise_status(99, 0)


def test_check_features_and_targets_are_the_step_input_path():
    s = make("mse", dtype=np.float32)
    with pytest.raises(TypeError, match=r"X must be a numpy.ndarray, got list"):
        s.check_features([[1.0] * 5], "X")
    with pytest.raises(ValueError, match=r"x has 9 rows, more than batch_size=8"):
        s.check_features(np.zeros((9, 5), np.float32), "x", 8)
    xs, n = s.check_features(np.asfortranarray(np.ones((3, 5), np.float32)))
    assert n == 3 and xs.flags.c_contiguous
    with pytest.raises(ValueError, match=r"T must have shape \(3, 3\)"):
        s.check_targets(np.zeros((3, 2), np.float32), 3, name="T")


@pytest.mark.parametrize("classification", [True, False])
def test_gather_rows_is_fancy_indexing_into_the_stage(classification):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((10, 4))
    yi = rng.integers(0, 3, 10) if classification else np.zeros(0, np.int64)
    yf = np.zeros((0, 0)) if classification else rng.standard_normal((10, 2))
    stage = np.full((6, 4), -1.0), np.full(6, -1, np.int64), np.full((6, 2), -1.0)
    rows = np.array([7, 0, 7, 3], np.int64)
    xb, yib, yfb = gather_rows(rows, X, yi, yf, *stage, classification)
    np.testing.assert_array_equal(xb, X[rows])
    assert np.shares_memory(xb, stage[0])
    if classification:
        np.testing.assert_array_equal(yib, yi[rows])
        assert yfb is yf and np.shares_memory(yib, stage[1])
    else:
        np.testing.assert_array_equal(yfb, yf[rows])
        assert yib is yi and np.shares_memory(yfb, stage[2])


def test_lock_is_the_lock_every_call_holds():
    s = make()
    assert isinstance(s.lock, type(threading.RLock()))
    x, y = batch(s, 2, np.random.default_rng(3))
    done = []
    with s.lock:
        t = threading.Thread(target=lambda: done.append(s(x, y)))
        t.start()
        t.join(0.5)
        assert not done             # the call waits for the lock
    t.join()
    assert len(done) == 1 and s.n_steps == 1
