"""Regression tests of issue 17's defects in the compiled step (inputs, optimizer,
memory, fit's schedule).  The layout property test is tests/test_input_layouts.py,
the bad-argument matrix tests/test_bad_input.py."""
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import fastbp
from fastbp import _executor as ex
from fastbp import _memory
from fastbp._init_weights import step_bytes
from fastbp import step as step_mod


def _one_feature(loss="softmax_cross_entropy", n_out=3, dtype=np.float32, batch_size=4, opt=None):
    model = fastbp.Sequential(fastbp.Linear(1, 5), fastbp.Tanh(), fastbp.Linear(5, n_out))
    return fastbp.compile(model, loss=loss, optimizer=opt or fastbp.SGD(0.1, momentum=0.9),
                          batch_size=batch_size, dtype=dtype, seed=2)


def _state(s):
    return (s.param_vector.tobytes(), s.grad_vector.tobytes(), [v.tobytes() for v in s.state_vectors],
            np.delete(s.hyper, list(ex.RUNTIME_SLOTS)).tobytes())


# ------------------------------------------------------- defects 2 and 3: x[:, None]
@pytest.mark.parametrize("n", [7, 4 * step_mod.PREDICT_NATIVE_MIN_CHUNKS + 3])   # both predict drivers
def test_predict_of_a_column_view_is_right(n):
    """Defect 2: ``predict(x[:, None])`` returned stale zeros for a one-feature model."""
    s = _one_feature()
    s(np.linspace(-1, 1, 4, dtype=np.float32)[:, None].copy(), np.array([0, 1, 2, 0]))
    x = np.linspace(-2, 2, n).astype(np.float32)
    col = x[:, None]
    assert col.flags.c_contiguous and col.strides[1] == 0          # numpy's "C-contiguous" with odd strides
    want = s.predict(x.reshape(-1, 1).copy())
    got = s.predict(col)
    assert got.tobytes() == want.tobytes()
    assert np.abs(got).min() > 0 and len(np.unique(got[:, 0])) > n // 2      # real outputs, not a stale buffer
    # nothing in the step depends on which layout was predicted first
    fresh = _one_feature()
    fresh(np.linspace(-1, 1, 4, dtype=np.float32)[:, None].copy(), np.array([0, 1, 2, 0]))
    assert fresh.predict(col).tobytes() == want.tobytes()


@pytest.mark.parametrize("entry", ["call", "loss_and_grads", "fit", "fit_native"])
def test_training_on_column_views_equals_the_copies(monkeypatch, entry):
    """Defect 3: ``step(x, y[:, None])`` (one-output mse), ``x[:, None]`` (one feature),
    ``loss_and_grads`` and ``fit(shuffle=False)`` raised "executor status 4"."""
    if entry == "fit_native":
        monkeypatch.setattr(step_mod, "FIT_NATIVE_MIN_STEPS", 1)
    odd, ref = (_one_feature("mse", n_out=1, opt=fastbp.Adam(1e-2)) for _ in range(2))
    n = 4 if entry in ("call", "loss_and_grads") else 10
    x = np.linspace(-1, 1, n).astype(np.float32)
    y = np.cos(np.arange(n)).astype(np.float32)
    if entry == "call":
        got, want = odd(x[:, None], y[:, None]), ref(x.reshape(-1, 1).copy(), y.reshape(-1, 1).copy())
    elif entry == "loss_and_grads":
        got = odd.loss_and_grads(x[:, None], y[:, None])
        want = ref.loss_and_grads(x.reshape(-1, 1).copy(), y.reshape(-1, 1).copy())
    else:
        got = odd.fit(x[:, None], y[:, None], epochs=2, shuffle=False)
        want = ref.fit(x.reshape(-1, 1).copy(), y.reshape(-1, 1).copy(), epochs=2, shuffle=False)
    assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
    assert _state(odd) == _state(ref)


def test_bad_input_status_message_names_the_problem():
    """An executor layout rejection can no longer reach the user as a bare "executor status 4";
    if it ever did, the message says it is an internal error and that nothing changed."""
    s = _one_feature()
    with pytest.raises(RuntimeError, match=r"internal error.*layout.*nothing was changed"):
        s._raise_status(ex.STATUS_BAD_INPUT, 0)


# ------------------------------------------------------- defect 4: the step's optimizer
@pytest.mark.parametrize("make", [lambda: fastbp.SGD(0.1, momentum=0.9), lambda: fastbp.Adam(1e-2)])
def test_the_step_owns_its_optimizer(tmp_path, make):
    """Defect 4: after ``opt.momentum = .5`` on the caller's object, save() wrote a checkpoint
    that load() refused.  The step keeps its own copy: the caller's object may change freely."""
    opt = make()
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2)),
                          optimizer=opt, batch_size=4, seed=0)
    twin = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2)),
                          optimizer=make(), batch_size=4, seed=0)
    spec = step.optimizer.spec()
    assert step.optimizer is not opt
    if isinstance(opt, fastbp.SGD):
        opt.momentum = 0.5
        opt.nesterov = True
    else:
        opt.betas = (0.5, 0.5)
        opt.eps = 1.0
    opt.lr = 123.0
    opt.weight_decay = 7.0
    assert step.optimizer.spec() == spec                       # the step is not changed ...
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 1, 0])
    for s in (step, twin):
        s(x, y)
        s(x * 2, y[::-1].copy())
    assert _state(step) == _state(twin)                         # ... nor its training
    step.lr = 0.03                                              # the learning rate is settable
    assert step.optimizer.lr == 0.03 and step.lr == 0.03
    path = str(tmp_path / "m.npz")
    step.save(path)                                             # ... and what save() writes
    back = fastbp.load(path)
    assert back.optimizer.spec() == dict(spec, lr=0.03) and back.lr == 0.03
    assert back.param_vector.tobytes() == step.param_vector.tobytes()
    for s in (step, back):
        s(x, y)
    assert _state(step) == _state(back)


def test_the_steps_optimizer_copy_is_frozen():
    """``step.optimizer`` is what the step trains with: setting a hyper-parameter on it would
    not change the compiled update (and would reopen defect 4 through save()), so it raises."""
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), optimizer=fastbp.SGD(0.1, momentum=0.9),
                          batch_size=2)
    with pytest.raises(AttributeError, match=r"SGD\.momentum cannot be set.*step\.lr = value"):
        step.optimizer.momentum = 0.0
    with pytest.raises(AttributeError, match=r"SGD\.lr cannot be set"):
        step.optimizer.lr = 1.0
    assert step.optimizer.momentum == 0.9 and step.optimizer.lr == 0.1
    user = fastbp.Adam()
    user.lr = 0.5                                               # the caller's own objects stay mutable
    assert user.lr == 0.5
    s2 = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), optimizer="adam", batch_size=2)
    with pytest.raises(AttributeError):
        s2.optimizer.eps = 1e-3


# ------------------------------------------------------- defect 7: memory
def test_a_model_too_big_for_the_machine_is_a_memory_error_before_any_allocation():
    """Defect 7: a 10**9-wide layer used to be killed by the OOM killer while its float64
    initial weights were built.  Now: MemoryError saying how much it needs, nothing allocated."""
    model = fastbp.Sequential(fastbp.Linear(3, 10**9), fastbp.ReLU(), fastbp.Linear(10**9, 2))
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError) as e:
            fastbp.compile(model, batch_size=200)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, peak
    need, buffers = step_bytes(model, "softmax_cross_entropy", fastbp.SGD(lr=0.1), 200, np.float32)
    msg = str(e.value)
    assert f"({need} bytes" in msg and "GiB" in msg and "available" in msg and "nothing was allocated" in msg
    assert need > 4 * 5 * 10**9 * 2                           # weights and gradients alone: 40 GB


@pytest.mark.parametrize("layers", [
    lambda: (fastbp.Linear(2 ** 31, 2 ** 31), fastbp.ReLU(), fastbp.Linear(2 ** 31, 2)),
    lambda: (fastbp.Linear(2, 2 ** 62),),
], ids=["2^62 weights", "2^63 weights"])
def test_a_model_past_numpys_array_sizes_is_the_same_memory_error(layers):
    """Past what numpy can index, the shape-only weights raised numpy's "array is too big"
    ValueError (naming no argument) before the memory check: now its MemoryError."""
    with pytest.raises(MemoryError, match=r"needs about .* bytes.*nothing was allocated"):
        fastbp.compile(fastbp.Sequential(*layers()), batch_size=2)


def test_compile_holds_at_most_one_float64_layer_beside_the_step_buffers():
    """Defect 7's peak: building a step used to hold the float64 initial weights two or
    three times over (scaled copy, graph copy) beside the arena.  Now at most one float64
    copy of the largest layer's weights lives next to the step's buffers."""
    model = fastbp.Sequential(fastbp.Linear(1500, 1000), fastbp.ReLU(), fastbp.Linear(1000, 10))
    # the kernels' first load in this process (numba's objects) is not the step's memory:
    # load them before tracing, so that the test passes alone as in the whole file
    fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2)),
                   optimizer=fastbp.SGD(0.1), batch_size=8, dtype=np.float32)
    tracemalloc.start()
    try:
        step = fastbp.compile(model, optimizer=fastbp.SGD(0.1), batch_size=8, dtype=np.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    largest_layer_f64 = 1500 * 1000 * 8
    assert peak <= step.arena.nbytes + largest_layer_f64 + 2**20, (peak, step.arena.nbytes)
    ref = model.init_params(0)                                  # still bitwise the documented weights
    np.testing.assert_array_equal(step.params["0.W"], ref["0.W"].astype(np.float32))


def test_estimator_with_a_huge_layer_raises_memory_error():
    """The issue's reproduction, in a subprocess: a kill would show as a negative return code."""
    code = textwrap.dedent("""
        import numpy as np
        from fastbp import MLPClassifier
        X = np.random.default_rng(0).standard_normal((20, 3)); y = np.arange(20) % 2
        try:
            MLPClassifier(hidden_layer_sizes=(10**9,), max_iter=1).fit(X, y)
        except MemoryError as e:
            print("MemoryError:", e)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "MemoryError:" in p.stdout and "bytes" in p.stdout, p.stdout


def test_the_memory_check_uses_what_the_machine_has(monkeypatch):
    model = fastbp.Sequential(fastbp.Linear(100, 200), fastbp.ReLU(), fastbp.Linear(200, 10))
    need, buffers = step_bytes(model, "softmax_cross_entropy", fastbp.Adam(), 32, np.float64)
    monkeypatch.setattr(_memory, "available_bytes", lambda: need - 1)
    with pytest.raises(MemoryError, match=rf"needs about .*\({need} bytes.*has .*\({need - 1} bytes\)"):
        fastbp.compile(model, optimizer=fastbp.Adam(), batch_size=32, dtype=np.float64)
    monkeypatch.setattr(_memory, "available_bytes", lambda: need)
    step = fastbp.compile(model, optimizer=fastbp.Adam(), batch_size=32, dtype=np.float64)
    # the size is the step's real buffers: its arena, and the staging of one minibatch
    assert buffers == step.arena.nbytes + 8 * 2 * 32
    # gate graphs (fastbp.grad) check their arena before allocating it too
    monkeypatch.setattr(_memory, "available_bytes", lambda: 100)
    g = fastbp.Graph()
    x = g.input("x", (None, 50))
    with pytest.raises(MemoryError, match=r"fastbp\.grad with batch_size=1000 needs about .*\(400008 bytes"):
        fastbp.grad(fastbp.sum(x), [x], batch_size=1000)
    monkeypatch.setattr(_memory, "available_bytes", lambda: 500000)      # passes the first check ...
    with pytest.raises(MemoryError, match=r"allocating the compiled graph's buffers needs about"):
        fastbp.grad(fastbp.sum(x), [x], batch_size=1000)                 # ... not the exact arena's
    monkeypatch.undo()
    # absurd batch sizes: MemoryError (how much), not an OverflowError from the compiler
    for bs in (2**62, 2**63 - 1):
        with pytest.raises(MemoryError, match="PiB"):
            fastbp.grad(fastbp.sum(x), [x], batch_size=bs)
        with pytest.raises(MemoryError, match="PiB"):
            fastbp.compile(model, batch_size=bs)
    assert _memory.available_bytes() is None or _memory.available_bytes() > 0


@pytest.mark.parametrize("layers", [
    lambda: [fastbp.Linear(4, 6), fastbp.ReLU(), fastbp.Linear(6, 5, bias=False), fastbp.Tanh(),
             fastbp.Linear(5, 3)],
    lambda: [fastbp.ReLU(), fastbp.Linear(4, 3), fastbp.Sigmoid(), fastbp.Sigmoid(), fastbp.Linear(3, 2)],
    lambda: [fastbp.Linear(4, 2, bias=False)],
])
@pytest.mark.parametrize("seed", [0, 7, None])
def test_initial_weights_are_those_of_init_params(layers, seed):
    """The step draws its initial weights one layer at a time (defect 7: no second float64 copy):
    bitwise those of ``Sequential.init_params`` for the same seed, and not kept as float64."""
    model = fastbp.Sequential(*layers())
    step = fastbp.compile(model, loss="mse", batch_size=2, dtype=np.float64, seed=seed)
    if seed is None:
        return
    ref = model.init_params(seed)
    assert set(ref) == set(step.params)
    for k, v in ref.items():
        assert step.params[k].tobytes() == v.tobytes(), k
    assert all(node.value is None for _, node, _, _ in step.plan.params)


# ------------------------------------------------------- defect 14: fit's schedule
def _old_schedule(rng, n, epochs, bs, shuffle):
    """fit's visiting order before issue 17: every epoch's permutation drawn up front."""
    per_epoch = -(-n // bs)
    if shuffle:
        perm = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    else:
        perm = np.tile(np.arange(n, dtype=np.int64), epochs)
    within = np.minimum(np.arange(per_epoch + 1) * bs, n)
    starts = (np.arange(epochs)[:, None] * n + within[None, :-1]).ravel()
    return perm.astype(np.int64), np.append(starts, epochs * n).astype(np.int64)


@pytest.mark.parametrize("seed", [None, 11])
@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_draws_each_epoch_when_it_starts_with_the_old_results(seed, shuffle):
    """Defect 14: 300 epochs over 100k rows allocated every permutation up front (457 MB).
    Now one epoch's order at a time -- and bitwise the old losses, weights and RNG state."""
    n, epochs, bs = 20000, 40, 64
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 2)).astype(np.float32)
    Y = (X[:, 0] > 0).astype(np.int64)

    def make():
        return fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 2)), batch_size=bs, seed=4)

    new, old = make(), make()
    new(X[:bs], Y[:bs])
    old(X[:bs], Y[:bs])
    tracemalloc.start()
    try:
        losses = new.fit(X, Y, epochs=epochs, shuffle=shuffle, seed=seed)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the old schedule alone is n * epochs int64 (6.4 MB here); now: one epoch's order + the losses
    assert peak < 8 * n * 4 + 8 * len(losses) + 2**20, peak
    rng_old = old.rng if seed is None else np.random.default_rng(seed)
    perm, starts = _old_schedule(rng_old, n, epochs, bs, shuffle)
    ref = np.zeros(len(starts) - 1)
    p = old.plan
    status, _, _ = ex.run_fit(old._ctx, p.sec, X, Y, old._no_yf, perm, starts, not shuffle, p.x_buf, p.yf_buf,
                              old._yi_stage, ref, np.zeros(0))
    assert status == 0
    assert losses.tobytes() == ref.tobytes()
    assert _state(new) == _state(old)
    assert new.rng.bit_generator.state == old.rng.bit_generator.state


def test_a_failed_fit_later_in_the_epochs_restores_the_rng_and_names_the_global_step(monkeypatch):
    """A step failing in epoch 2 (the native loop is now called once per epoch): the message
    counts steps over the whole fit, epoch 1 stays applied, the generator is restored."""
    monkeypatch.setattr(step_mod, "FIT_NATIVE_MIN_STEPS", 1)
    real, calls = ex.run_fit, []

    def second_epoch_fails(*args):
        calls.append(1)
        if len(calls) == 2:
            return ex.STATUS_LOSS_NONFINITE, 1, 0          # epoch 2's second step
        return real(*args)

    monkeypatch.setattr(ex, "run_fit", second_epoch_fails)
    s = fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 2)), batch_size=4, seed=1)
    X = np.linspace(-1, 1, 20).reshape(10, 2).astype(np.float32)
    Y = np.arange(10) % 2
    state = s.rng.bit_generator.state
    with pytest.raises(FloatingPointError, match=r"at step 4 of fit"):      # 3 steps per epoch
        s.fit(X, Y, epochs=5)
    assert s.rng.bit_generator.state == state and s.n_steps == 3 and len(calls) == 2


def test_a_broadcast_view_too_big_to_copy_is_a_memory_error():
    """A broadcast view can stand for far more data than the machine has: the copy into the
    executor's layout checks the memory first (MemoryError naming the argument), nothing changes."""
    s = fastbp.compile(fastbp.Sequential(fastbp.Linear(8, 2)), batch_size=4)
    before = _state(s)
    huge = np.broadcast_to(np.ones(8, np.float32), (10**13, 8))
    with pytest.raises(MemoryError, match=r"copying X into the layout.*needs about .*bytes"):
        s.predict(huge)
    with pytest.raises(MemoryError, match=r"copying X"):
        s.fit(huge, np.broadcast_to(np.int64(0), (10**13,)))
    assert _state(s) == before


def test_native_predict_reports_a_rejected_chunk_instead_of_returning_stale_output():
    """The class of defect 2: ``run_predict`` (the native predict loop) returned nothing
    about chunks the tape rejected, leaving stale buffer contents in the output.  It now
    returns the status and the first row of the rejected chunk; ``out`` is left alone."""
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), loss="mse", batch_size=4, seed=0)
    p = step.plan
    wrong_width = np.ones((6, 5), np.float32)          # C-contiguous, but not 3 features
    out = np.full((6, 2), 7.0, np.float32)
    status, row = ex.run_predict(step._ctx, p.sec, wrong_width, out, step.batch_size, p.out_buf)
    assert status == ex.STATUS_BAD_INPUT and row == 0
    assert (out == 7.0).all()
    good = np.arange(18, dtype=np.float32).reshape(6, 3)
    status, row = ex.run_predict(step._ctx, p.sec, good, out, step.batch_size, p.out_buf)
    assert status == ex.STATUS_OK and row == 6
    np.testing.assert_array_equal(out, step.predict(good))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_memory_check_counts_every_layers_buffers_exactly(dtype):
    """The size checked before compiling is the arena the step allocates, whatever the layers:
    kept pre-activations (GELU), dropout, BatchNorm's statistics and running statistics,
    LayerNorm, standalone activations, residual blocks, optimizer state (it used to count only
    the Linear layers' buffers, a lower bound)."""
    model = fastbp.Sequential(
        fastbp.Linear(20, 64), fastbp.BatchNorm1d(64), fastbp.GELU(), fastbp.Dropout(0.1),
        fastbp.Residual(fastbp.Linear(64, 64), fastbp.LayerNorm(64), fastbp.SiLU()),
        fastbp.Linear(64, 32, bias=False), fastbp.Tanh(), fastbp.Linear(32, 5))
    for opt in (fastbp.SGD(lr=0.1), fastbp.Adam(), fastbp.RMSprop(centered=True, momentum=0.9)):
        need, buffers = step_bytes(model, "softmax_cross_entropy", opt, 48, dtype)
        step = fastbp.compile(model, optimizer=opt, batch_size=48, dtype=dtype)
        assert buffers == step.arena.nbytes + 8 * 2 * 48
        n_params = sum(v.size for v in step.params.values())
        assert need == buffers + 8 * (n_params + 64 * 64)       # + the float64 initial weights


@pytest.mark.parametrize("scale", [2.0 ** -1070, 2.0 ** -1000, 1e300, 1.7e308, "equal 5e-324"])
def test_sample_weights_weigh_by_their_ratios_at_any_scale(scale):
    """All-equal weights of 5e-324 gave a loss of 0.5 and NaN gradients, 1.7e308 an infinite
    sum: the weights are scaled by an exact power of two before they are summed."""
    m = fastbp.Sequential(fastbp.Linear(3, 4), fastbp.Tanh(), fastbp.Linear(4, 3))
    s = fastbp.compile(m, optimizer=fastbp.SGD(lr=0.1), batch_size=4, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3)), np.array([0, 1, 2, 0])
    w = np.array([1.0, 2.0, 0.5, 1.0])
    want = s.loss_and_grads(x, y, sample_weight=w)
    g = s.grad_vector.copy()
    if scale == "equal 5e-324":         # the smallest float64, all equal: unweighted
        w = np.ones(4)
        want = s.loss_and_grads(x, y, sample_weight=w)
        g = s.grad_vector.copy()
        tiny = np.full(4, 5e-324)
    else:
        tiny = w * scale if scale < 1 else w / w.max() * scale       # the same ratios
    with np.errstate(over="ignore"):
        got = s.loss_and_grads(x, y, sample_weight=tiny)
    assert got == pytest.approx(want, rel=1e-14)
    np.testing.assert_allclose(s.grad_vector, g, rtol=1e-13, atol=1e-16)
