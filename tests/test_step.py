"""The fused training step against the unfused numpy reference step."""
import numpy as np
import pytest

import fastbp
from reference import forward, forward_backward, mlp, optimizer_update, targets

LOSSES = ["softmax_cross_entropy", "mse", "bce_with_logits", "svm"]
OPTIMIZERS = {
    "sgd": lambda: fastbp.SGD(lr=0.05),
    "sgd_mom_nesterov_wd": lambda: fastbp.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: fastbp.Adam(lr=1e-2),
    "adamw": lambda: fastbp.Adam(lr=1e-2, weight_decay=0.1, decoupled=True),
}
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=2e-3, atol=2e-5)}


def _widths(depth, rng):
    return [7] + [int(w) for w in rng.integers(3, 12, depth)] + [5]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_fused_step_equals_unfused_reference(depth, act, loss, opt, dtype):
    rng = np.random.default_rng(depth * 100 + len(act) + len(loss))
    widths = _widths(depth, rng)
    model = mlp(widths, act)
    optimizer = OPTIMIZERS[opt]()
    step = fastbp.compile(model, loss=loss, optimizer=optimizer, batch_size=6, dtype=dtype, seed=3)
    params = {k: v.astype(np.float64) for k, v in step.params.items()}
    state = {}
    for it in range(3):
        nb = 6 if it < 2 else 4                       # a partial batch too
        x = rng.standard_normal((nb, widths[0])).astype(dtype)
        y = targets(loss, rng, nb, widths[-1])
        if y.dtype.kind == "f":
            y = y.astype(dtype)
        # each step is checked from the step's current weights: exact gradients given the
        # weights, exact update given the gradients (Adam amplifies rounding noise on
        # gradients that are 0 in exact arithmetic, so free-running trajectories drift)
        params = {k: v.astype(np.float64) for k, v in step.params.items()}
        ref_loss, ref_grads = forward_backward(model, params, x, y, loss)
        got = step(x, y)
        assert got == pytest.approx(ref_loss, rel=TOL[dtype]["rtol"] * 10, abs=TOL[dtype]["atol"])
        for k in ref_grads:
            np.testing.assert_allclose(step.grads[k], ref_grads[k], **TOL[dtype], err_msg=k)
        # float32: update the reference with the step's own gradients, so that Adam's
        # normalisation of gradients that are ~0 in exact arithmetic (float32 noise vs
        # float64 noise) does not make the trajectories differ by +-lr
        used = ref_grads if dtype == np.float64 else {k: step.grads[k].astype(np.float64) for k in ref_grads}
        optimizer_update(optimizer, params, used, state)
        # Adam maps gradients that are 0 in exact arithmetic (but +-1e-17 after rounding)
        # to steps of up to lr * 1e-8: allow that much on the weights
        ptol = dict(TOL[dtype], atol=max(TOL[dtype]["atol"], 1e-9))
        for k in params:
            np.testing.assert_allclose(step.params[k], params[k], **ptol, err_msg=k)
    assert step.n_steps == 3


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_fused_gradients_pass_gradcheck_float64(act, loss):
    rng = np.random.default_rng(11)
    model = mlp([5, 6, 4, 3], act)
    step = fastbp.compile(model, loss=loss, optimizer=fastbp.SGD(lr=0.1), batch_size=4, dtype=np.float64, seed=1)
    x = rng.standard_normal((4, 5))
    y = targets(loss, rng, 4, 3)
    step.loss_and_grads(x, y)
    analytic = {k: v.copy() for k, v in step.grads.items()}
    eps = 1e-6
    for k, p in step.params.items():
        flat = p.reshape(-1)
        num = np.zeros(flat.size)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            lp = step.loss_and_grads(x, y)
            flat[i] = old - eps
            lm = step.loss_and_grads(x, y)
            flat[i] = old
            num[i] = (lp - lm) / (2 * eps)
        a = analytic[k].reshape(-1)
        rel = np.max(np.abs(a - num) / np.maximum(np.abs(a) + np.abs(num), 1e-8))
        # ReLU kinks and hinge corners can sit within eps of a sample; these seeds avoid them
        assert rel < 1e-6, (k, rel)


def test_sequential_is_compiled_by_the_graph_compiler():
    step = fastbp.compile(mlp([4, 8, 8, 3]), batch_size=2)
    # three Linear layers -> three fused linear instructions, nothing else in the forward pass
    assert step.plan.n_fused == 3


def test_grad_on_a_layer_graph_matches_step():
    """fastbp.grad over x @ W + b chains equals the step's gradients."""
    rng = np.random.default_rng(0)
    model = mlp([3, 4, 2])
    step = fastbp.compile(model, loss="mse", batch_size=5, dtype=np.float64)
    x = rng.standard_normal((5, 3))
    y = rng.standard_normal((5, 2))
    loss = step.loss_and_grads(x, y)
    g = fastbp.Graph()
    xi = g.input("x", (None, 3))
    yi = g.input("y", (None, 2))
    W0 = g.param("W0", step.params["0.W"])
    b0 = g.param("b0", step.params["0.b"])
    W2 = g.param("W2", step.params["2.W"])
    b2 = g.param("b2", step.params["2.b"])
    out = fastbp.relu(xi @ W0 + b0) @ W2 + b2
    d = out - yi
    L = fastbp.sum(d * d) * (1.0 / 10)
    value, gr = fastbp.grad(L, wrt=[W0, b0, W2, b2], batch_size=5)(x=x, y=y)
    assert value == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(gr["W0"], step.grads["0.W"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(gr["b2"], step.grads["2.b"], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_seed_is_bitwise_reproducible(dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 9)).astype(dtype)
    Y = rng.integers(0, 4, 50)

    def run():
        step = fastbp.compile(mlp([9, 16, 16, 4]), optimizer=fastbp.Adam(lr=1e-2), batch_size=8, dtype=dtype,
                              seed=42)
        for i in range(100):
            lo = (i * 8) % 42
            step(X[lo:lo + 8], Y[lo:lo + 8])
        step.fit(X, Y, epochs=3)
        return {k: v.copy() for k, v in step.params.items()}

    a, b = run(), run()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    c = fastbp.compile(mlp([9, 16, 16, 4]), batch_size=8, dtype=dtype, seed=43).params
    assert c["0.W"].tobytes() != a["0.W"].tobytes()


def test_fit_equals_loop_of_steps_and_covers_partial_batch():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((23, 5))
    Y = rng.integers(0, 3, 23)
    s1 = fastbp.compile(mlp([5, 7, 3]), optimizer=fastbp.SGD(lr=0.1, momentum=0.5), batch_size=8,
                        dtype=np.float64)
    s2 = fastbp.compile(mlp([5, 7, 3]), optimizer=fastbp.SGD(lr=0.1, momentum=0.5), batch_size=8,
                        dtype=np.float64)
    losses = s1.fit(X, Y, epochs=2, shuffle=False)
    assert losses.shape == (6,)                       # 3 steps per epoch, the last with 7 rows
    expect = [s2(X[lo:lo + 8], Y[lo:lo + 8]) for _ in range(2) for lo in (0, 8, 16)]
    np.testing.assert_allclose(losses, expect, rtol=1e-12)
    for k in s1.params:
        np.testing.assert_array_equal(s1.params[k], s2.params[k])
    assert s1.n_steps == 6


def test_fit_shuffles_with_seed():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 5))
    Y = rng.integers(0, 3, 40)
    runs = []
    for seed in (0, 0, 1):
        s = fastbp.compile(mlp([5, 7, 3]), batch_size=8, dtype=np.float64)
        runs.append(s.fit(X, Y, epochs=2, seed=seed))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("n", [1, 5, 16, 37])
def test_predict_any_batch_size(n):
    rng = np.random.default_rng(n)
    model = mlp([6, 5, 4], "tanh")
    step = fastbp.compile(model, batch_size=8, dtype=np.float64)
    X = rng.standard_normal((n, 6))
    W0, b0, W2, b2 = (step.params[k] for k in ("0.W", "0.b", "2.W", "2.b"))
    np.testing.assert_allclose(step.predict(X), np.tanh(X @ W0 + b0) @ W2 + b2, rtol=1e-12, atol=1e-14)


def test_params_are_live_buffers_and_grads_shapes():
    step = fastbp.compile(mlp([3, 4, 2]), batch_size=2, dtype=np.float64)
    assert set(step.params) == {"0.W", "0.b", "2.W", "2.b"}
    assert step.params["0.W"].shape == (3, 4) and step.grads["0.W"].shape == (3, 4)
    step.params["2.W"][...] = 0
    step.params["2.b"][...] = [1.0, -1.0]
    np.testing.assert_allclose(step.predict(np.ones((3, 3))), [[1.0, -1.0]] * 3)


def test_initialisation_he_and_glorot():
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(400, 300), fastbp.ReLU(), fastbp.Linear(300, 200),
                                            fastbp.Tanh(), fastbp.Linear(200, 10)), batch_size=2, seed=0)
    W0, W2 = step.params["0.W"], step.params["2.W"]
    assert np.std(W0) == pytest.approx(np.sqrt(2 / 400), rel=0.05)             # He
    assert np.abs(W2).max() <= np.sqrt(6 / 500) + 1e-6                          # Glorot uniform
    assert np.std(W2) == pytest.approx(np.sqrt(6 / 500) / np.sqrt(3), rel=0.05)
    assert not step.params["0.b"].any()


def test_no_allocation_per_step():
    """After the first call a step allocates nothing but the argument wrappers numba makes."""
    from numba import njit
    from numba.core.runtime import _nrt_python, rtsys
    _nrt_python.memsys_enable_stats()

    @njit
    def touch(a, b, c, d):
        return 0

    rng = np.random.default_rng(0)
    counts = {}
    for depth in (1, 4):
        step = fastbp.compile(mlp([8] + [16] * depth + [3]), optimizer=fastbp.Adam(), batch_size=4)
        x = rng.standard_normal((4, 8)).astype(np.float32)
        y = rng.integers(0, 3, 4)
        step(x, y)
        # the array arguments of ex.run_tape, the one compiled call of a step
        args = (step._ctx, x, y, step._no_yf)
        touch(*args)
        a0 = rtsys.get_allocation_stats()
        for _ in range(10):
            touch(*args)
        a1 = rtsys.get_allocation_stats()
        for _ in range(10):
            step(x, y)
        a2 = rtsys.get_allocation_stats()
        baseline = a1.alloc - a0.alloc          # one meminfo per array argument per call
        counts[depth] = a2.alloc - a1.alloc
        assert counts[depth] == baseline, (depth, counts[depth], baseline)
        assert a2.alloc - a2.free == a1.alloc - a1.free            # nothing kept alive
    assert counts[1] == counts[4]


def test_compiled_executor_is_cached_on_disk(tmp_path):
    """A new process compiling an architecture reuses the on-disk cache."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import numpy as np, fastbp
        from fastbp import _executor as ex
        s = fastbp.compile(fastbp.Sequential(fastbp.Linear(5, 3)), batch_size=2, dtype=np.float64)
        s(np.ones((2, 5)), np.array([0, 1]))
        st = ex.run_tape.stats
        print(sum(st.cache_hits.values()), sum(st.cache_misses.values()))
    """)
    for _ in range(2):      # the first process may compile (and cache) it; the last must not
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        hits, misses = map(int, out.split())
        if misses == 0:     # already on disk (this session compiled it before): one process shows it
            break
    assert hits >= 1 and misses == 0


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_fast_argument_path_matches_validated_path(loss):
    """Arrays already in the executor's form skip the full validation; others
    (another integer dtype, read-only, Fortran order, 1-D regression targets)
    are converted first: both give bitwise the same training run."""
    import inspect
    import fastbp._executor as ex

    def resolved(f):
        """Whether a fast call goes straight to the compiled entry (past numba's dispatch)."""
        return inspect.getclosurevars(f).nonlocals["run"] is not ex.run_tape

    rng = np.random.default_rng(5)
    steps = [fastbp.compile(mlp([6, 9, 3 if loss != "mse" else 1]), loss, fastbp.SGD(0.1), batch_size=8,
                            seed=0) for _ in range(2)]
    fast, slow = steps
    for _ in range(4):
        x = rng.standard_normal((8, 6)).astype(np.float32)
        if loss == "mse":
            y = rng.standard_normal((8, 1)).astype(np.float32)
            y_other = np.asfortranarray(y.ravel().astype(np.float64))
        else:
            y = rng.integers(0, 3, 8)
            y_other = y.astype(np.int32)
        xr = x.copy()
        xr.flags.writeable = False
        assert fast(x, y) == slow(xr, y_other)
    for k in fast.params:
        np.testing.assert_array_equal(fast.params[k], slow.params[k])
    # after its first call the fast path goes straight to the compiled entry;
    # the converted arrays never took it
    assert resolved(fast._train_fast) and not resolved(slow._train_fast)
    for _ in range(2):
        assert fast.loss_and_grads(x, y) == slow.loss_and_grads(xr, y_other)
    assert resolved(fast._grad_fast) and not resolved(slow._grad_fast)
    for k in fast.grads:
        np.testing.assert_array_equal(fast.grads[k], slow.grads[k])
    # arrays that only look alike are checked by the compiled code and then
    # take the validated path (its conversions and errors)
    xu = np.zeros(8 * 6 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(8, 6)   # misaligned
    xu[...] = x
    assert not xu.flags.aligned and fast._train_fast(xu, y) is None
    with pytest.raises(TypeError, match="float64"):
        fast(x.astype(np.float64), y)
    # the fast path still rejects a bad label inside the native call, weights unchanged
    if loss != "mse":
        before = {k: v.copy() for k, v in fast.params.items()}
        with pytest.raises(ValueError, match=r"y\[2\] = 7"):
            fast(x, np.array([0, 1, 7, 0, 1, 2, 0, 1]))
        for k in before:
            np.testing.assert_array_equal(fast.params[k], before[k])


def test_input_is_read_in_place_and_left_unchanged():
    """The LOAD_X instruction lets the executor read ``x`` where it lies (no copy
    into the arena); results are bitwise those of the copying path, and ``x``
    itself is never written."""
    from fastbp import _executor as ex
    rng = np.random.default_rng(11)
    a, b = (fastbp.compile(mlp([12, 20, 5]), "softmax_cross_entropy", fastbp.Adam(1e-2), batch_size=16,
                           seed=1) for _ in range(2))
    assert a.plan.tape[0, ex.C_OP] == ex.OP_LOAD_X and a.plan.tape[0, ex.C_F1] == 1
    b.plan.tape[0, ex.C_F1] = 0          # force the copy into the arena
    for n in (16, 7):
        x = rng.standard_normal((n, 12)).astype(np.float32)
        y = rng.integers(0, 5, n)
        x0 = x.copy()
        assert a(x, y) == b(x, y)
        np.testing.assert_array_equal(x, x0)
        for k in a.params:
            np.testing.assert_array_equal(a.params[k], b.params[k])
    X = rng.standard_normal((50, 12)).astype(np.float32)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


@pytest.mark.parametrize("driver", ["native", "python"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy"])
def test_fit_equals_loop_in_order_and_shuffled(monkeypatch, loss, shuffle, driver):
    """fit reads in-order minibatches where they lie and gathers shuffled ones;
    both equal a loop of steps over the same rows, for label and float targets,
    with either driver (run_fit for long fits, a Python loop for short ones)."""
    import fastbp.step as S
    monkeypatch.setattr(S, "FIT_NATIVE_MIN_STEPS", 1 if driver == "native" else 10 ** 9)
    rng = np.random.default_rng(3)
    n, bs = 29, 8
    X = rng.standard_normal((n, 5)).astype(np.float32)
    Y = rng.integers(0, 3, n) if loss != "mse" else rng.standard_normal((n, 3)).astype(np.float32)
    s1, s2 = (fastbp.compile(mlp([5, 7, 3]), loss, fastbp.Adam(1e-2), batch_size=bs, seed=4) for _ in range(2))
    losses = s1.fit(X, Y, epochs=2, shuffle=shuffle, seed=9)
    order = np.random.default_rng(9)
    expect = []
    for _ in range(2):
        perm = order.permutation(n) if shuffle else np.arange(n)
        for lo in range(0, n, bs):
            rows = perm[lo:lo + bs]
            expect.append(s2(np.ascontiguousarray(X[rows]), np.ascontiguousarray(Y[rows])))
    np.testing.assert_array_equal(losses, expect)
    for k in s1.params:
        np.testing.assert_array_equal(s1.params[k], s2.params[k])


@pytest.mark.parametrize("n", [1, 33, 100])
def test_predict_native_loop_equals_python_loop(monkeypatch, n):
    """predict's two drivers (native run_predict for many chunks, a Python loop of
    the step's compiled call for few) give bitwise the same outputs."""
    import fastbp.step as S
    rng = np.random.default_rng(n)
    step = fastbp.compile(mlp([6, 9, 4], "tanh"), "mse", batch_size=8, seed=2)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    monkeypatch.setattr(S, "PREDICT_NATIVE_MIN_CHUNKS", 10 ** 9)
    few = step.predict(X)
    monkeypatch.setattr(S, "PREDICT_NATIVE_MIN_CHUNKS", 1)
    many = step.predict(X)
    np.testing.assert_array_equal(few, many)
    ref = forward(step.model, {k: v.astype(np.float64) for k, v in step.params.items()}, X)[2][-1]
    np.testing.assert_allclose(few, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("driver", ["native", "python"])
def test_fit_failure_and_result_same_for_both_drivers(monkeypatch, driver):
    """A non-finite step k: both fit drivers keep steps 0..k-1, skip the rest,
    restore the generator and name step k."""
    import fastbp.step as S
    monkeypatch.setattr(S, "FIT_NATIVE_MIN_STEPS", 1 if driver == "native" else 10 ** 9)
    rng = np.random.default_rng(8)
    X = rng.standard_normal((20, 5)).astype(np.float32)
    Y = rng.integers(0, 3, 20)
    X[13, 1] = np.nan                               # minibatch 3 (rows 12..15), in order
    s1, s2 = (fastbp.compile(mlp([5, 6, 3]), batch_size=4, seed=0) for _ in range(2))
    state = s1.rng.bit_generator.state
    with pytest.raises(FloatingPointError, match="at step 3 of fit"):
        s1.fit(X, Y, shuffle=False)
    assert s1.rng.bit_generator.state == state
    for lo in (0, 4, 8):
        s2(X[lo:lo + 4], Y[lo:lo + 4])
    for k in s1.params:
        np.testing.assert_array_equal(s1.params[k], s2.params[k])
    assert s1.n_steps == 3


def test_executor_refuses_a_buffer_outside_the_arena():
    """The executor's views skip numba's bounds and reference counting; a
    buffer table pointing past the arena is still refused, not read."""
    import fastbp._executor as ex
    step = fastbp.compile(mlp([8, 16, 3]), batch_size=4)
    x = np.zeros((4, 8), np.float32)
    y = np.zeros(4, np.int64)
    p = step.plan
    bufs = p.bufs.copy()   # a corrupt copy: the step's own table stays intact
    bufs[:, 0] = step.arena.shape[0]       # every buffer starts at the arena's end
    with pytest.raises(IndexError, match="outside the arena"):
        ctx = ex.context(step.arena, bufs, p.tape, step.hyper, step.ws64, step.gjit, 4)
        ex.run_tape(ctx, 0, step._tape_end[ex.MODE_TRAIN], 4, x, y, step._no_yf)
    assert step(x, y) == pytest.approx(np.log(3), rel=0.5)   # the step itself is unharmed


@pytest.mark.extras
@pytest.mark.skipif(not fastbp._blas.GEMM_JIT, reason="oneMKL's JIT GEMM kernels are not in use here")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jit_gemm_kernels_match_the_blas_path(dtype):
    """Small products of a full minibatch run through oneMKL kernels made for
    their shapes; a partial minibatch through cblas.  Same training run as
    with the kernels off (to rounding: MKL sums in another order)."""
    import fastbp._executor as ex
    rng = np.random.default_rng(7)
    steps = [fastbp.compile(mlp([48, 40, 36, 10]), "softmax_cross_entropy", fastbp.SGD(0.1, momentum=0.9),
                            batch_size=32, dtype=dtype, seed=1) for _ in range(2)]
    jit_on, jit_off = steps
    jit_off.hyper[ex.H_JIT_ON] = 0.0
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for n in (32, 32, 20, 32, 7, 32):
        x = rng.standard_normal((n, 48)).astype(dtype)
        y = rng.integers(0, 10, n)
        assert jit_on(x, y) == pytest.approx(jit_off(x, y), rel=tol)
    for k in jit_on.params:
        np.testing.assert_allclose(jit_on.params[k], jit_off.params[k], rtol=10 * tol, atol=10 * tol)
    slots = jit_on.gjit[1:].reshape(-1, 5)
    tried = slots[slots[:, 0] != 0]          # kernel address, or -1 where MKL made none
    # forward 3 products, backward 3 dW + 2 dX (no dX for the input)
    assert len(tried) == 8
    assert {tuple(r) for r in tried[:, 2:]} >= {(32, 40, 48), (40, 36, 32), (32, 40, 36)}  # (m, n, k)
    made = tried[tried[:, 0] > 0]
    if len(made) != 8:
        # oneMKL makes JIT kernels only on CPUs it supports (an AMD EPYC with AVX2: status
        # MKL_NO_JIT for every shape); then every product stays with cblas, as compared above
        assert len(made) == 0 and not _mkl_makes_jit_kernels(dtype)
    assert not jit_off.gjit[1:].any()
    # fit's native loop and the Python driver use the same kernels
    X = rng.standard_normal((32 * 70, 48)).astype(dtype)
    Y = rng.integers(0, 10, 32 * 70)
    np.testing.assert_allclose(jit_on.fit(X, Y, shuffle=False), jit_off.fit(X, Y, shuffle=False),
                               rtol=50 * tol)


def _mkl_makes_jit_kernels(dtype):
    """Whether oneMKL makes a JIT GEMM kernel for a 32x48 @ 48x40 product on this CPU."""
    from fastbp.kernels import gemm as G
    A, B, C = np.ones((32, 48), dtype), np.ones((48, 40), dtype), np.zeros((32, 40), dtype)
    table = np.zeros(1 + G.JIT_SLOT, np.int64)
    try:
        return bool(G._jit_mm(A, B, C, False, False, False, table, 1))
    finally:
        fastbp._blas.gemm_jit_destroy(table[2::G.JIT_SLOT])


def test_jit_gemm_kernels_are_freed_with_the_step(monkeypatch):
    """The step's table of JIT GEMM kernels is freed when the step is
    collected (a no-op where none were made)."""
    import gc
    import fastbp._blas as B
    freed = []
    monkeypatch.setattr(B, "gemm_jit_destroy", lambda jitters: freed.append(np.array(jitters)))
    step = fastbp.compile(mlp([48, 40, 10]), batch_size=32)
    rng = np.random.default_rng(0)
    step(rng.standard_normal((32, 48)).astype(np.float32), rng.integers(0, 10, 32))
    made = step.gjit[2::5].copy()
    del step
    gc.collect()
    assert len(freed) == 1
    np.testing.assert_array_equal(freed[0], made)
    assert (made != 0).sum() == (5 if B.GEMM_JIT else 0)   # 2 forward, dW twice, one dX


def test_executor_context_takes_only_what_the_executor_reads():
    """ex.context packs a step's arrays by address: it refuses arrays the
    compiled code would misread (wrong dtype, width, layout, read-only)."""
    import fastbp._executor as ex
    step = fastbp.compile(mlp([8, 16, 3]), batch_size=4)
    p = step.plan
    good = dict(arena=step.arena, bufs=p.bufs, tape=p.tape, hyper=step.hyper, ws64=step.ws64, gjit=step.gjit,
                batch_size=4)
    ctx = ex.context(**good)
    assert ctx.dtype == np.int64 and ctx.shape == (ex.CONTEXT_SIZE,)
    assert ctx[ex.X_ARENA] == step.arena.ctypes.data and ctx[ex.X_TAPE_N] == p.tape.shape[0]
    ro = step.ws64.copy()
    ro.flags.writeable = False
    for name, bad in (("bufs", p.bufs.astype(np.int32)), ("tape", np.asfortranarray(p.tape)),
                      ("hyper", step.hyper[:-1].copy()), ("ws64", ro), ("gjit", step.gjit.astype(np.float64)),
                      ("arena", step.arena.reshape(1, -1))):
        with pytest.raises(ValueError, match="executor context"):
            ex.context(**dict(good, **{name: bad}))


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_executor_checks_the_minibatch_itself(loss):
    """The step's fast path leaves rows, widths and layout to the compiled
    code: it answers STATUS_BAD_INPUT for anything else, with the weights,
    optimizer state and counters unchanged, and the step then validates and
    reports (or converts)."""
    import fastbp._executor as ex
    from fastbp._jit import entry_point
    rng = np.random.default_rng(3)
    step, twin = (fastbp.compile(mlp([6, 9, 3]), loss, fastbp.SGD(0.1, momentum=0.9), batch_size=8, seed=0)
                  for _ in range(2))
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = rng.integers(0, 3, 8) if loss != "mse" else rng.standard_normal((8, 3)).astype(np.float32)
    assert step(x, y) == twin(x, y)          # from here the fast path goes straight to the entry

    def targets(t):
        return (t, step._no_yf) if loss != "mse" else (step._no_yi, t)

    def state():
        return step.param_vector.copy(), [v.copy() for v in step.state_vectors], step.hyper.copy()

    before = state()
    end = step._tape_end[ex.MODE_TRAIN]
    # the code the fast path runs after its first call: the compiled entry for C-contiguous
    # arrays, which takes any array without numba's dispatch (passing these arrays to the
    # dispatcher would compile, and test, variants of the interpreter no step runs)
    run = entry_point(ex.run_tape, (step._ctx, 0, end, 8, x, *targets(y)))
    assert run is not ex.run_tape
    wide = np.zeros((8, 12), np.float32)
    misaligned = np.zeros(8 * 6 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(8, 6)
    for bx in (wide[:, ::2], misaligned, np.zeros((8, 5), np.float32), np.zeros((0, 6), np.float32)):
        st, _, _ = run(step._ctx, 0, end, bx.shape[0], bx, *targets(y[:bx.shape[0]]))
        assert st == ex.STATUS_BAD_INPUT, bx.shape
    y9 = np.resize(y, (9,) + y.shape[1:])
    st, _, _ = run(step._ctx, 0, end, 9, np.zeros((9, 6), np.float32), *targets(y9))
    assert st == ex.STATUS_BAD_INPUT
    bad_y = [y[:7], y.repeat(2)[::2]] if loss != "mse" else [y[:7], y[:, :2].copy(), y[:, :2], np.asfortranarray(y)]
    for by in bad_y:
        st, _, _ = run(step._ctx, 0, end, 8, x, *targets(by))
        assert st == ex.STATUS_BAD_INPUT, by.shape
    after = state()
    np.testing.assert_array_equal(after[0], before[0])
    for a, b in zip(after[1], before[1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after[2], before[2])
    # through the step: the same data in any layout is converted (issue 17: one input
    # path), and trains exactly like its C-contiguous copy
    assert step(misaligned, y) == twin(misaligned.copy(), y)
    assert step(wide[:, ::2], y) == twin(np.ascontiguousarray(wide[:, ::2]), y)
    with pytest.raises(ValueError, match="batch_size"):
        step(np.zeros((9, 6), np.float32), y9)
    with pytest.raises(ValueError):
        step(x, bad_y[0])
    for k in step.params:
        np.testing.assert_array_equal(step.params[k], twin.params[k])
