"""Determinism and threads.

* The same seed and thread count give bitwise-identical runs, in fresh
  processes too, with BLAS-sized layers and parallel ``fastbp.ops`` kernels.
* One thread vs two (numba + BLAS) agree to float tolerance.
* One compiled step called from several Python threads at once is never
  corrupted: its lock serialises the native calls (which release the GIL).
* Separate steps in separate threads run truly in parallel and give exactly
  the serial results.

(``tests/test_step.py::test_same_seed_is_bitwise_reproducible`` covers
the in-process, same-thread case; it is not repeated here.)
"""
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastbp
from reference import mlp

try:
    from fastbp import ops
except ImportError:          # pragma: no cover - ops lands in parallel
    ops = None

# A run mixing every path whose threading could matter: a model with BLAS-sized products
# (batch 64 x 256 x 128 >= BLAS_MIN_MACS), fit (shuffled), predict, and -- when present --
# fastbp.ops on arrays big enough for the prange variants and the BLAS.
_RUN = textwrap.dedent("""
    import json
    import numpy as np, fastbp
    try:
        from fastbp import ops
    except ImportError:
        ops = None
    res = {}
    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((300, 256)).astype(dtype)
        Y = rng.integers(0, 10, 300)
        model = fastbp.Sequential(fastbp.Linear(256, 128), fastbp.Tanh(), fastbp.Linear(128, 64), fastbp.ReLU(),
                                  fastbp.Linear(64, 10))
        step = fastbp.compile(model, optimizer=fastbp.Adam(lr=1e-3), batch_size=64, dtype=dtype, seed=3)
        for i in range(4):
            step(X[i * 64:(i + 1) * 64], Y[i * 64:(i + 1) * 64])
        losses = step.fit(X, Y, epochs=2)
        out = {"params": step.param_vector.astype(np.float64).tolist(), "losses": losses.tolist(),
               "predict": step.predict(X[:50]).astype(np.float64).ravel().tolist()}
        if ops is not None:
            A = rng.standard_normal((128, 96)).astype(dtype)
            B = rng.standard_normal((96, 64)).astype(dtype)
            y = ops.linear_forward(A, B, rng.standard_normal(64).astype(dtype), activation="tanh")
            dx, dW, db = ops.linear_backward(A, B, y, np.ones_like(y), activation="tanh")
            big = rng.standard_normal((200, 64)).astype(dtype)
            loss, ds = ops.softmax_cross_entropy(big, rng.integers(0, 64, 200))
            out["ops"] = [v.astype(np.float64).ravel().tolist() for v in (y, dx, dW, db, ds, ops.relu_forward(big))]
            out["ops_loss"] = loss
        res[dtype.name] = out
    print(json.dumps(res))
""")


def _start(threads):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               FASTBP_PARALLEL_THRESHOLD="1024")          # make ops take the prange variants
    return subprocess.Popen([sys.executable, "-c", _RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.fixture(scope="module")
def runs():
    # the processes run side by side (each is mostly one core's loading and compiling);
    # the first one alone first, so that the others load what it compiles from the cache
    # instead of compiling it again
    out = {}
    for group in (("2a",), ("2b", "1")):
        procs = {k: _start(1 if k == "1" else 2) for k in group}
        for k, p in procs.items():
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-3000:]
            out[k] = json.loads(stdout)
    return out


@pytest.mark.thorough      # three processes (~20 s); tests/test_coldstart.py checks across processes by default
def test_same_seed_and_thread_count_is_bitwise_identical_across_processes(runs):
    assert runs["2a"] == runs["2b"]                 # every float, exactly (JSON keeps float64 repr)


@pytest.mark.thorough      # shares the fixture above; tests/test_threads.py checks 1 vs 2 threads by default
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_and_two_threads_agree_to_float_tolerance(runs, dtype):
    a, b = runs["1"][dtype], runs["2a"][dtype]
    rtol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=rtol)
    np.testing.assert_allclose(a["params"], b["params"], rtol=rtol, atol=rtol * np.max(np.abs(b["params"])))
    np.testing.assert_allclose(a["predict"], b["predict"], rtol=rtol, atol=rtol * np.max(np.abs(b["predict"])))
    if "ops" in b:
        for u, v in zip(a["ops"], b["ops"]):
            np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * max(np.max(np.abs(v)), 1.0))
        assert a["ops_loss"] == pytest.approx(b["ops_loss"], rel=rtol)


# ---------------------------------------------------------------- one step, many threads
def _hammer(n_threads, fn, n_calls):
    """Run ``fn(thread_index, call_index)`` from ``n_threads`` threads released together."""
    barrier = threading.Barrier(n_threads)
    results = [[] for _ in range(n_threads)]
    errors = []

    def worker(t):
        try:
            barrier.wait()
            for i in range(n_calls):
                results[t].append(fn(t, i))
        except BaseException as e:        # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return results


def _data(n, n_in, n_out, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype(dtype), rng.integers(0, n_out, n)


def test_one_step_hammered_by_two_threads_matches_serial_loss_and_grads():
    """Each thread evaluates its own minibatches (no update): every returned loss must be
    exactly the serial one, whatever the interleaving."""
    step = fastbp.compile(mlp([16, 64, 64, 5]), batch_size=32, dtype=np.float64)
    batches = [_data(32, 16, 5, s) for s in range(8)]
    serial = [step.loss_and_grads(x, y) for x, y in batches]
    before = step.param_vector.tobytes()
    n_calls = 400
    got = _hammer(2, lambda t, i: step.loss_and_grads(*batches[(2 * i + t) % 8]), n_calls)
    for t in range(2):
        assert got[t] == [serial[(2 * i + t) % 8] for i in range(n_calls)]
    assert step.param_vector.tobytes() == before


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_one_step_from_two_threads_loses_no_update(opt):
    """All threads send the same minibatch, so the order of the calls does not matter:
    2 x N concurrent updates must equal 2N serial ones bitwise (none lost, none torn)."""
    def new():
        o = fastbp.SGD(lr=0.01, momentum=0.9) if opt == "sgd" else fastbp.Adam(lr=1e-3)
        return fastbp.compile(mlp([16, 48, 5]), optimizer=o, batch_size=16, dtype=np.float64, seed=1)

    x, y = _data(16, 16, 5, 0)
    n = 500
    serial = new()
    serial_losses = [serial(x, y) for _ in range(2 * n)]
    shared = new()
    got = _hammer(2, lambda t, i: shared(x, y), n)
    assert shared.n_steps == 2 * n
    assert shared.param_vector.tobytes() == serial.param_vector.tobytes()
    assert [v.tobytes() for v in shared.state_vectors] == [v.tobytes() for v in serial.state_vectors]
    assert sorted(got[0] + got[1]) == sorted(serial_losses)


def test_predict_fit_and_steps_from_three_threads_at_once():
    """Training with step() and fit() while a third thread predicts: predict reuses the
    activation buffers, so without serialisation it would corrupt the training."""
    def new():
        return fastbp.compile(mlp([8, 32, 4], "tanh"), optimizer=fastbp.SGD(lr=0.05), batch_size=8,
                              dtype=np.float64, seed=2)

    x, y = _data(8, 8, 4, 1)
    Xp = _data(20, 8, 4, 2)[0]
    n = 300
    # the same minibatch through step() and fit(shuffle=False): identical updates in any order
    ref = new()
    states = [ref.predict(Xp).tobytes()]
    for _ in range(2 * n):
        ref(x, y)
        states.append(ref.predict(Xp).tobytes())

    live = new()

    def work(t, i):
        if t == 0:
            return live(x, y)
        if t == 1:
            return live.fit(x, y, epochs=1, shuffle=False)[0]
        return live.predict(Xp).tobytes()

    got = _hammer(3, work, n)
    assert live.n_steps == 2 * n
    assert live.param_vector.tobytes() == ref.param_vector.tobytes()
    valid = set(states)
    assert all(p in valid for p in got[2])          # every prediction is of a whole-step state
    # and they appear in training order
    index = {s: k for k, s in enumerate(states)}
    seen = [index[p] for p in got[2]]
    assert seen == sorted(seen)


def test_grad_function_shared_by_two_threads():
    g = fastbp.Graph()
    xin = g.input("x", (None, 48))
    W = g.param("W", np.linspace(-1, 1, 48 * 40).reshape(48, 40))
    V = g.param("V", np.linspace(1, -1, 40 * 30).reshape(40, 30))
    f = fastbp.grad(fastbp.sum(fastbp.sigmoid(fastbp.tanh(xin @ W) @ V)), [W, V, xin], batch_size=64)
    inputs = [_data(64, 48, 3, s)[0] for s in range(4)]
    serial = [f(x=x) for x in inputs]
    got = _hammer(2, lambda t, i: f(x=inputs[(i + t) % 4]), 200)
    for t in range(2):
        for i, (v, gr) in enumerate(got[t]):
            sv, sg = serial[(i + t) % 4]
            assert v == sv
            assert all(gr[k].tobytes() == sg[k].tobytes() for k in sg)


# ---------------------------------------------------------------- separate steps, parallel threads
def test_separate_steps_in_separate_threads_equal_serial_runs():
    configs = [
        (mlp([32, 256, 128, 10]), fastbp.Adam(lr=1e-3), np.float32, 64),     # BLAS-sized products
        (mlp([12, 24, 3], "sigmoid"), fastbp.SGD(lr=0.1, momentum=0.9), np.float64, 8),
        (mlp([12, 16, 16, 3], "tanh"), fastbp.SGD(lr=0.05, nesterov=True, momentum=0.5), np.float32, 16),
        (mlp([12, 5, 3]), fastbp.Adam(lr=1e-2, weight_decay=0.1, decoupled=True), np.float64, 4),
    ]

    def make(k):
        model, opt, dtype, bs = configs[k]
        import copy
        return fastbp.compile(model, optimizer=copy.deepcopy(opt), batch_size=bs, dtype=dtype, seed=k)

    def data(k):
        model, _, dtype, bs = configs[k]
        return _data(10 * bs, model.in_features, model.out_features, 10 + k, dtype)

    def train(step, X, Y):
        bs = step.batch_size
        losses = [step(X[i * bs:(i + 1) * bs], Y[i * bs:(i + 1) * bs]) for i in range(10)]
        losses += list(step.fit(X, Y, epochs=2))
        return losses, step.param_vector.tobytes(), step.predict(X).tobytes()

    serial = [train(make(k), *data(k)) for k in range(len(configs))]
    steps = [make(k) for k in range(len(configs))]
    datasets = [data(k) for k in range(len(configs))]
    got = _hammer(len(configs), lambda t, i: train(steps[t], *datasets[t]), 1)
    for k in range(len(configs)):
        assert got[k][0] == serial[k], k


def test_steps_that_call_the_blas_share_one_lock_and_leave_its_thread_count_alone():
    """The BLAS's thread count is one per process and a step sets it per product: steps that
    may call the BLAS hold one process-wide lock, so concurrent ones never run a product at
    another's setting, and the configured count is what it was after they ran."""
    from fastbp import _blas
    if not _blas.THREAD_CONTROL:
        pytest.skip("no BLAS with thread control in this process")
    big = [fastbp.compile(mlp([32, 256, 128, 10]), batch_size=64, dtype=np.float32, seed=k) for k in range(3)]
    tiny = fastbp.compile(mlp([3, 4, 2]), batch_size=2, dtype=np.float64, seed=0)
    assert all(s.lock is _blas.THREADS_LOCK for s in big)
    assert tiny.lock is not _blas.THREADS_LOCK        # its products stay in fastbp's loops: runs in parallel
    before = _blas._backend.get_threads()
    X, Y = _data(64, 32, 10, 0, np.float32)
    _hammer(3, lambda t, i: big[t](X, Y), 30)
    assert _blas._backend.get_threads() == before


_FIRST_BUILDS = textwrap.dedent("""
    import threading, numpy as np, fastbp
    errors = []
    def build(act):
        try:
            # the first steps of the process with these activations: their kernels are registered
            # and loaded now, by two threads at once
            step = fastbp.compile(fastbp.Sequential(fastbp.Linear(4, 5), act(), fastbp.Linear(5, 3)),
                                  batch_size=4, dtype=np.float64)
            step(np.ones((4, 4)), np.array([0, 1, 2, 0]))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    for acts in ((fastbp.Tanh, fastbp.Tanh), (fastbp.ELU, fastbp.SiLU), (fastbp.Sigmoid, fastbp.Sigmoid)):
        ts = [threading.Thread(target=build, args=(a,)) for a in acts]
        [t.start() for t in ts]
        [t.join() for t in ts]
    print(errors)
""")


def test_the_first_steps_of_a_process_built_on_two_threads_at_once():
    """Registering a kernel was check-then-act without a lock: two threads building the first
    steps of an activation at once (two estimators fitted by joblib's threading backend, two
    models unpickled by a server) raised "native kernel id N registered twice" in one of them."""
    env = {**os.environ, "FASTBP_TEST_LANES": "0"}
    out = subprocess.run([sys.executable, "-c", _FIRST_BUILDS], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


# ------------------------------------------------ one step's settings from several threads
def _small_step(**kw):
    return fastbp.compile(mlp([4, 5, 3]), optimizer=fastbp.SGD(lr=0.1), batch_size=4, dtype=np.float64,
                          seed=0, **kw)


def test_clip_grad_norm_setter_loads_its_kernel_before_the_setting_is_seen():
    """The setter wrote the setting first and loaded the clipping kernel after, without the lock: a
    call of another thread in between raised "native kernel 182 was not loaded"."""
    step = _small_step()
    seen = []
    real = step._settings_changed

    def spy(clip=None):
        seen.append(float(step.clip_grad_norm or 0.0))      # what another thread would see now
        real(clip=clip)
    step._settings_changed = spy
    step.clip_grad_norm = 1.0
    assert seen == [0.0] and step.clip_grad_norm == 1.0
    step(np.ones((4, 4)), np.array([0, 1, 2, 0]))           # the kernel is there


@pytest.mark.parametrize("setting", ["lr", "clip_grad_norm", "schedule"])
def test_setters_wait_for_the_call_that_holds_the_step(setting):
    """A setter changes the step between calls (and between the epochs of another thread's fit),
    never in the middle of one."""
    step = _small_step()
    value = fastbp.schedules.ExponentialLR(0.5) if setting == "schedule" else 0.05
    before = getattr(step, setting)
    with step.lock:
        t = threading.Thread(target=setattr, args=(step, setting, value))
        t.start()
        t.join(0.3)
        assert t.is_alive() and getattr(step, setting) == before
    t.join(10)
    assert not t.is_alive() and getattr(step, setting) == value


def test_an_lr_set_during_another_threads_fit_applies_from_its_next_epoch():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((4000, 4)), rng.integers(0, 3, 4000)
    fit_then_set, set_then_fit = _small_step(), _small_step()
    fit_then_set.fit(X, Y, shuffle=False)
    fit_then_set.lr = 0.01
    set_then_fit.lr = 0.01
    set_then_fit.fit(X, Y, shuffle=False)
    for _ in range(3):
        live = _small_step()
        started = threading.Event()
        t = threading.Thread(target=lambda: (started.set(), live.fit(X, Y, shuffle=False)))
        t.start()
        started.wait()
        live.lr = 0.01
        t.join()
        got = live.param_vector.tobytes()
        assert got in (fit_then_set.param_vector.tobytes(), set_then_fit.param_vector.tobytes())


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_a_scheduled_step_fitted_from_two_threads_equals_a_serial_run(interval):
    """fit computed an epoch's scheduled rates before taking the step's lock (and counted the
    epoch after): two threads' fits of one step matched no serial order (~5e-4 apart)."""
    def new():
        return _small_step(schedule=fastbp.schedules.ExponentialLR(0.99, interval=interval))
    x, y = np.random.default_rng(0).standard_normal((8, 4)), np.array([0, 1, 2, 0, 1, 2, 0, 1])
    n = 150
    serial = new()
    for _ in range(2 * n):
        serial.fit(x, y, shuffle=False)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        live = new()
        _hammer(2, lambda t, i: live.fit(x, y, shuffle=False), n)
    finally:
        sys.setswitchinterval(old)
    assert (live.n_steps, live.epochs_done) == (serial.n_steps, serial.epochs_done)
    assert live.lr == serial.lr
    assert live.param_vector.tobytes() == serial.param_vector.tobytes()


def test_one_reduce_lr_on_plateau_claimed_by_two_threads_at_once():
    """Exactly one of two steps attaching one ReduceLROnPlateau at once gets it; dead entries of the
    owners' table removed by two threads at once raised KeyError."""
    import gc
    steps = [_small_step() for _ in range(4)]
    old = sys.getswitchinterval()

    def hammer(fn):             # a thread switch every microsecond while the two threads race only
        sys.setswitchinterval(1e-6)
        try:
            return _hammer(2, fn, 1)
        finally:
            sys.setswitchinterval(old)
    for _ in range(15):
        p = fastbp.schedules.ReduceLROnPlateau()
        steps[0].schedule = steps[1].schedule = None

        def attach(t, i, p=p):
            try:
                steps[t].schedule = p
                return "ok"
            except ValueError:
                return "refused"
        got = hammer(attach)
        assert sorted(got[0] + got[1]) == ["ok", "refused"]
        dead = _small_step(schedule=fastbp.schedules.ReduceLROnPlateau())
        del dead
        gc.collect()
        hammer(lambda t, i: setattr(steps[2 + t], "schedule", fastbp.schedules.ReduceLROnPlateau()))


_FORK_WHILE_HELD = textwrap.dedent("""
    import os, threading
    import fastbp
    from fastbp import _blas, _native
    held, done = threading.Event(), threading.Event()
    def holder():
        with _native.LOCK, _blas.THREADS_LOCK:
            held.set()
            done.wait(30)
    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        ok = _native.LOCK.acquire(timeout=10) and _blas.THREADS_LOCK.acquire(timeout=10)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    done.set()
    t.join()
    codes = [os.waitstatus_to_exitcode(status)]
    with _native.LOCK:              # held by the forking thread: still its own in the child
        pid = os.fork()
        if pid == 0:
            try:
                _native.LOCK.release()
                os._exit(0)
            except RuntimeError:
                os._exit(4)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    print(codes)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_fork_while_another_thread_holds_fastbps_locks_leaves_them_free_in_the_child():
    """multiprocessing's 'fork' while another thread built a step (the kernel lock) or trained one
    (the BLAS's lock): the child hung at its first step."""
    env = {**os.environ, "FASTBP_TEST_LANES": "0"}
    out = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", _FORK_WHILE_HELD],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[0, 0]", out.stdout


def test_a_save_during_fit_sees_an_epoch_whole_or_not_at_all(tmp_path):
    """The epoch's permutation was drawn outside the step's lock: a save in another thread then
    held the weights before the epoch with the generator after its shuffle, which did not resume
    as the uninterrupted fit (and a ReduceLROnPlateau stepped after the lock was released)."""
    import time

    class SlowPermutation(np.random.Generator):
        def __init__(self, bit_generator, drawn):
            super().__init__(bit_generator)
            self.drawn = drawn

        def permutation(self, n):
            order = super().permutation(n)
            self.drawn.set()
            time.sleep(0.3)         # the save below is tried meanwhile
            return order

    m = fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2))
    X = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    y = np.arange(32) % 2
    st = fastbp.compile(m, batch_size=8, seed=0)
    st.fit(X, y, epochs=1)
    drawn = threading.Event()
    st.rng = SlowPermutation(st.rng.bit_generator, drawn)
    fitting = threading.Thread(target=lambda: st.fit(X, y, epochs=1))
    fitting.start()
    assert drawn.wait(60)
    st.save(tmp_path / "c.npz")
    fitting.join()
    back = fastbp.load(tmp_path / "c.npz")
    assert (back.epochs_done, back.n_steps) == (2, 8)
    np.testing.assert_array_equal(back.param_vector, st.param_vector)
    assert back.rng.bit_generator.state == st.rng.bit_generator.state
