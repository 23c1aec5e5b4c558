"""The one-time compilation on two cores (fastbp._compile_pool): a helper process
compiles part of a step's native code into numba's disk cache."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fastbp
from fastbp import _compile_pool as pool
from fastbp import _executor as ex
from fastbp.kernels import table

#: the step both the child and this process train (one definition, run by each)
_TRAIN = r"""
model = fastbp.Sequential(fastbp.Linear(6, 9), fastbp.Tanh(), fastbp.Linear(9, 4))
step = fastbp.compile(model, loss="softmax_cross_entropy", optimizer=fastbp.Adam(lr=1e-2), batch_size=8,
                      dtype=np.float64, seed=3)
rng = np.random.default_rng(0)
for _ in range(3):
    step(rng.standard_normal((8, 6)), rng.integers(0, 4, 8))
"""

#: a child's preamble: ``compiled`` lists the functions numba compiles in it (None: the wait for the helper)
_LISTEN = r"""
import json, sys
from numba.core import event
compiled = []
class L(event.Listener):
    def on_start(self, ev):
        d = ev.data.get("dispatcher")
        compiled.append(getattr(getattr(d, "py_func", None), "__qualname__", None))
    def on_end(self, ev):
        pass
event.register("numba:compile", L())
"""

_CHILD = _LISTEN + r"""
import numpy as np, fastbp
""" + _TRAIN + r"""
np.save(sys.argv[1], step.param_vector)
print(json.dumps({"compiled": compiled, "enabled": fastbp._compile_pool.enabled()}))
"""


def _child_env(tmp_path, workers, **more):
    """The environment of a child process: this fastbp on its path, an empty numba cache
    under ``tmp_path``, the pool as ``workers`` says (``FASTBP_COMPILE_WORKERS``), and ``more``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FASTBP_COMPILE_WORKERS=str(workers), **more)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(fastbp.__file__)),
                                                    env.get("PYTHONPATH", "")] if p)
    return env


def _run_child(tmp_path, workers, start="auto"):
    env = _child_env(tmp_path, workers, FASTBP_COMPILE_START=start)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "p.npy")], capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), np.load(tmp_path / "p.npy")


def _same_step_here():
    ns = {"fastbp": fastbp, "np": np}
    exec(_TRAIN, ns)
    return ns["step"].param_vector


@pytest.mark.thorough      # two processes compiling a step from an empty cache: 19 s of the README command
@pytest.mark.parametrize("start", ["auto", "spawn"])       # the helper forked, or a new interpreter
def test_a_cold_first_step_compiles_on_two_processes_and_trains_bitwise_alike(tmp_path, start):
    """With an empty disk cache, the helper compiles the loop kernels (the process
    compiles the interpreter and its handlers, then loads the helper's kernels from
    the cache), and the trained weights are bitwise those of code compiled in one process."""
    got, params = _run_child(tmp_path, workers=1, start=start)
    if not got["enabled"]:
        pytest.skip("the pool is off on one CPU")
    names = [n for n in got["compiled"] if n]
    assert "run_tape" in names and "_h_linear" in names
    # the helper's share (the loop kernels) was compiled there and loaded from the cache, but
    # for those this process took from the end of the helper's list once its own were done
    loops = ("_softmax_xent", "_t_adam", "_colsum", "_mm_small", "_t_bias_act", "_t_bwd")
    assert not all(any(n.startswith(p) for n in names) for p in loops), names
    assert any(n is None for n in got["compiled"])          # the wait for the helper counts as compiling
    np.testing.assert_array_equal(params, _same_step_here())


def test_the_pool_is_off_when_asked(monkeypatch):
    monkeypatch.setattr(pool, "_cpus", lambda: 2)
    monkeypatch.setattr(pool, "_idle_cpus", lambda **k: 2.0)
    for off in ("0", "off"):
        monkeypatch.setattr(pool.config, "COMPILE_WORKERS", off)
        assert not pool.enabled()
    monkeypatch.setattr(pool.config, "COMPILE_WORKERS", "auto")
    assert pool.enabled()
    monkeypatch.setattr(pool, "_idle_cpus", lambda **k: 0.7)      # the other CPU is busy
    assert not pool.enabled()
    monkeypatch.setattr(pool.config, "COMPILE_WORKERS", "1")
    assert pool.enabled()
    monkeypatch.setattr(pool.sys, "executable", "/usr/bin/uwsgi")     # Python embedded in a server
    assert not pool.enabled()
    monkeypatch.setattr(pool.sys, "executable", sys.executable)
    monkeypatch.setattr(pool, "_cpus", lambda: 1)
    assert not pool.enabled()


def test_idle_cpus_measured_from_an_earlier_sample(monkeypatch):
    """start_ahead measures the machine's load over its own cache check instead of
    sleeping: the process's CPU time since the sample counts as idle; too short an
    interval falls back to the sleeping measurement."""
    class T:
        user, system = 5.1, 0.0
    ticks = [(110, 1020)]
    slept = []
    monkeypatch.setattr(pool.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(pool.os, "sysconf", lambda name: 100)
    monkeypatch.setattr(pool.os, "times", lambda: T)
    monkeypatch.setattr(pool, "_cpu_times", lambda: ticks[-1])
    monkeypatch.setattr(pool.time, "sleep", lambda dt: slept.append(dt) or ticks.append((112, 1030)))
    # 20 jiffies on 2 CPUs, 10 of them idle, and this process busy for 0.1 s (10 jiffies)
    assert pool._idle_cpus(since=((100, 1000), 5.0)) == pytest.approx(2.0)
    assert pool._idle_cpus(since=((100, 1000), 5.1)) == pytest.approx(1.0)     # busy elsewhere: one CPU idle
    assert slept == []
    assert pool.usage_sample() == ((110, 1020), 5.1)
    # an interval under 2 ticks per CPU: measured again over a sleep (2 of 10 jiffies idle)
    assert pool._idle_cpus(since=((109, 1018), 5.0)) == pytest.approx(0.4) and slept == [0.05]


def _fake_pool(monkeypatch, calls, started):
    """The pool on 2 idle CPUs with nothing cached: ``native_address`` records the
    units asked for in ``calls``, a helper is a process that does nothing and
    records its share in ``started``."""
    monkeypatch.setattr(pool.config, "COMPILE_WORKERS", "1")
    monkeypatch.setattr(pool, "_cpus", lambda: 2)
    monkeypatch.setattr(pool, "_idle_cpus", lambda **k: 2.0)
    monkeypatch.setattr(pool, "native_cached", lambda k, d: False)
    monkeypatch.setattr(pool, "native_address", lambda k, d: calls.append(k) or 1000 + k)

    def fake_helper(dtype, share):
        started.append([k for k, _ in share])
        return pool._Helper(subprocess.Popen([sys.executable, "-c", "pass"]), started[-1])
    monkeypatch.setattr(pool, "_start_helper", fake_helper)
    monkeypatch.setattr(pool, "_AHEAD", {})


def test_whatever_the_helper_did_not_compile_is_compiled_here(monkeypatch):
    """A helper that exits without compiling anything: every kernel still gets its
    address, the helper's share after the wait (loaded or compiled here)."""
    kids = sorted(table.kernels_for(fastbp.compile(
        fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2)), loss="mse",
        optimizer=fastbp.SGD(lr=0.1), batch_size=2, dtype=np.float64).plan.tape))
    calls, started = [], []
    _fake_pool(monkeypatch, calls, started)
    here = {table.K_MM, *range(table.K_HANDLER, table.K_HANDLER + ex.OP_CAPACITY)}
    out = pool.load(np.float64, kids + [ex.K_RUN_TAPE], keep_here=here | {ex.K_RUN_TAPE})
    assert out == {k: 1000 + k for k in kids + [ex.K_RUN_TAPE]}
    assert len(started) == 1 and started[0] and not set(started[0]) & here
    # this process's share first, the helper's after the wait
    n_here = len(kids) + 1 - len(started[0])
    assert set(calls[:n_here]) & set(started[0]) == set() and set(calls[n_here:]) == set(started[0])


def _tape():
    return fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2)),
                          loss="softmax_cross_entropy", optimizer=fastbp.Adam(), batch_size=2,
                          dtype=np.float64).plan.tape


def test_a_helper_started_ahead_compiles_its_share_for_the_next_load(monkeypatch):
    """compile_ahead (fastbp train, before reading its data): the helper takes every
    unit, the handlers and the interpreter first (the larger ones); the step built later
    waits for it (a helper that does not report its work: nothing is taken from it),
    loads the units and starts no second helper."""
    calls, started = [], []
    tape = _tape()
    kids = sorted(table.kernels_for(tape)) + [ex.K_RUN_TAPE]
    _fake_pool(monkeypatch, calls, started)
    assert ex.compile_ahead(np.float64, tape)
    assert not ex.compile_ahead(np.float64, tape)        # one helper per dtype at a time
    assert len(started) == 1 and calls == []
    order = started[0]
    assert sorted(order) == sorted(kids) and table.K_MM in order
    # the handlers and the interpreter first, largest first; then the loop kernels smallest
    # first, so that this process takes the largest from the end (_compile_order)
    n = sum(k >= table.K_HANDLER for k in order)
    assert all(k >= table.K_HANDLER for k in order[:n]) and ex.K_RUN_TAPE in order[:n] and n < len(order)
    size = [pool._code_size(pool._NATIVE[k][0].py_func, set()) for k in order]
    assert size[:n] == sorted(size[:n], reverse=True) and size[n:] == sorted(size[n:])
    out = pool.load(np.float64, kids, keep_here=ex._COMPILE_HERE)
    assert out == {k: 1000 + k for k in kids} and len(started) == 1 and pool._AHEAD == {}
    assert sorted(calls) == sorted(kids)        # each loaded once, after the wait
    # a later cold load of that dtype starts its own helper again
    calls.clear()
    pool.load(np.float64, kids, keep_here=ex._COMPILE_HERE)
    assert len(started) == 2


def test_a_helper_started_ahead_for_a_step_on_numbas_threads_compiles_the_parallel_twins(monkeypatch):
    """compile_ahead(threads=True): the helper's units are the parallel twins of the kernels
    that have one (what kernel_table(threads=True) loads), the others as they are."""
    from fastbp._native import PARALLEL_TWIN, twin
    calls, started = [], []
    tape = _tape()
    _fake_pool(monkeypatch, calls, started)
    assert ex.compile_ahead(np.float64, tape, threads=True)
    order = started[0]
    kids = sorted(table.kernels_for(tape))
    assert sorted(order) == sorted([twin(k) for k in kids] + [ex.K_RUN_TAPE])
    assert twin(table.K_ADAM) in order and twin(table.K_ADAM) == table.K_ADAM + PARALLEL_TWIN
    assert table.K_MM in order and twin(table.K_MM) == table.K_MM       # the handlers have no twin
    pool._AHEAD.clear()


def test_no_helper_ahead_when_the_pool_is_off_or_little_is_to_compile(monkeypatch):
    calls, started = [], []
    tape = _tape()
    _fake_pool(monkeypatch, calls, started)
    monkeypatch.setattr(pool.config, "COMPILE_WORKERS", "0")
    assert not ex.compile_ahead(np.float64, tape)
    monkeypatch.setattr(pool.config, "COMPILE_WORKERS", "1")
    monkeypatch.setattr(pool, "native_cached", lambda k, d: True)       # a warm cache
    assert not ex.compile_ahead(np.float32, tape)
    assert started == [] and pool._AHEAD == {}


#: a helper that speaks the work-sharing protocol (fastbp._compile_helper with --share):
#: reports each unit before "compiling" it (0.2 s), skips the units the parent took
_SHARING_HELPER = r"""
import sys, threading, time
taken = set()
def read():
    for line in sys.stdin:
        taken.add(int(line))
threading.Thread(target=read, daemon=True).start()
for k in [int(k) for k in sys.argv[1].split(",")]:
    if k in taken:
        continue
    print(k, flush=True)
    time.sleep(0.2)
"""


def test_this_process_takes_the_helpers_units_from_the_end_of_its_list(monkeypatch):
    """Work sharing: once its own units are done, this process compiles the
    helper's from the end of its list, telling the helper, which skips them; the
    helper compiles from the start and reports each unit it begins.  They meet in
    the middle, and every unit gets its address."""
    calls, started = [], []
    _fake_pool(monkeypatch, calls, started)
    order = list(range(100, 110))
    mine = [1]

    def sharing_helper(dtype, share):
        started.append([k for k, _ in share])
        proc = subprocess.Popen([sys.executable, "-c", _SHARING_HELPER, ",".join(map(str, started[-1]))],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return pool._Helper(proc, started[-1])
    monkeypatch.setattr(pool, "_start_helper", sharing_helper)
    monkeypatch.setattr(pool, "_NATIVE", {k: (_named("kernel"),) for k in mine + order})
    monkeypatch.setattr(pool, "_compile_order", lambda units: units)     # the list as given

    def compile_here(k, dtype):       # 0.3 s a unit, a little slower than the helper
        calls.append(k)
        time.sleep(0.3)
        return 1000 + k
    monkeypatch.setattr(pool, "native_address", compile_here)
    helpers = []
    real_wait = pool._wait
    monkeypatch.setattr(pool, "_wait", lambda h, timeout: helpers.append(h) or real_wait(h, timeout))
    out = pool.load(np.float64, mine + order, keep_here=set(mine))
    assert out == {k: 1000 + k for k in mine + order}
    assert started == [order]
    (helper,) = helpers
    taken = [k for k in order if k in helper.taken]
    claimed = [k for k in order if k in helper.claimed]
    assert calls[0] == 1 and calls[1:1 + len(taken)] == taken[::-1]     # its own first, then from the end
    assert taken and claimed and taken == order[len(order) - len(taken):] and claimed == order[:len(claimed)]
    assert set(taken) | set(claimed) == set(order) and len(set(taken) & set(claimed)) <= 1
    assert sorted(calls[1 + len(taken):]) == sorted(set(order) - set(taken))    # the rest: from the cache


def test_a_unit_the_step_does_not_need_is_left_to_the_helper(monkeypatch):
    """A helper started ahead for more units than the step then needs: this process
    takes only the units it needs from the helper's list."""
    calls, started = [], []
    _fake_pool(monkeypatch, calls, started)
    order = list(range(100, 106))
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdin.read(); time.sleep(0.2)"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    monkeypatch.setattr(pool, "_AHEAD", {np.dtype(np.float64): pool._Helper(proc, order)})
    out = pool.load(np.float64, [100, 101, 102, 104])
    assert out == {k: 1000 + k for k in (100, 101, 102, 104)}
    assert calls == [104, 102, 101, 100] and started == []      # taken from the end; 103 and 105 not


def _named(qualname):
    def f():
        pass
    f.__qualname__, f.__module__ = qualname, "fastbp.kernels.fake"
    return type("D", (), {"py_func": f})()


def test_a_helper_nobody_waited_for_is_stopped_at_exit(monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(pool, "_AHEAD", {np.dtype(np.float32): pool._Helper(proc, [1, 2])})
    pool._stop_ahead()
    assert proc.poll() is not None and pool._AHEAD == {}


def test_the_helper_compiles_the_product_dispatcher_into_the_cache(tmp_path):
    """The helper process itself (python -m fastbp._compile_helper) with a share beyond
    the loop kernels: the product dispatcher, registered by fastbp._handlers, which
    the helper then imports; a new process finds it cached.  A unit the parent
    took (written on the helper's input) is not compiled there."""
    env = _child_env(tmp_path, "0")
    share = json.dumps([[table.K_MM, "_mm"], [table.K_MM_SMALL, "_mm_small"], [table.K_COLSUM, "_colsum"]])
    # with --share: it reports each unit it begins, and skips one the parent took (_colsum)
    run = subprocess.run([sys.executable, "-m", "fastbp._compile_helper", "float64", share, "--share"], env=env,
                         input=f"{table.K_COLSUM}\n", capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == [str(table.K_MM), str(table.K_MM_SMALL)]
    probe = ("import numpy as np; from fastbp import _handlers; from fastbp._native import native_cached; "
             f"print(native_cached({table.K_MM}, np.dtype('float64')), "
             f"native_cached({table.K_MM_SMALL}, np.dtype('float64')), "
             f"native_cached({table.K_COLSUM}, np.dtype('float64')))")
    got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout.split() == ["True", "True", "False"]


@pytest.mark.parametrize("argv", [
    [],
    ["--activation", "gelu", "--dropout", "0.1", "--batchnorm", "--optimizer", "sgd", "--momentum", "0.9"],
    ["--activation", "tanh", "--optimizer", "rmsprop", "--loss", "svm", "--hidden", "7"],
    ["--task", "regression", "--dtype", "float64", "--hidden", "5", "3", "--clip-grad-norm", "1.0"],
    ["--hidden", "512", "--batch-size", "256", "--activation", "gelu", "--batchnorm"],   # on numba's threads
])
def test_fastbp_train_starts_ahead_the_kernels_its_step_runs(monkeypatch, tmp_path, argv, capsys):
    """fastbp train names the kernels to compile ahead (before reading the data)
    from a model of width 2 with its layers: exactly the kernels of the step it builds.
    (The command's setup only, up to the built step, whose kernels are not loaded: the
    kernels are named, not compiled; tests/test_cli.py trains with these options.)"""
    from fastbp import cli
    ahead, built = [], []
    monkeypatch.setattr(ex, "compile_ahead",
                        lambda dtype, tape, threads=False: ahead.append((np.dtype(dtype), tape, threads)))
    # the built step is never run: no kernel compiled or loaded (its table holds zeros)
    monkeypatch.setattr(ex, "kernel_table", lambda dtype, tape, threads=False: np.zeros(ex.N_KERNELS, np.int64))
    monkeypatch.setattr(ex, "_ensure_run_tape", lambda dtype: 0)
    real = cli._build_step
    monkeypatch.setattr(cli, "_build_step", lambda *a: built.append(real(*a)) or built[-1])
    if "regression" in argv:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((40, 3))
        np.savetxt(tmp_path / "r.csv", np.column_stack([X, X @ [1.0, -2.0, 0.5]]), delimiter=",",
                   header="a,b,c,y", comments="")
        argv = argv + ["--data", str(tmp_path / "r.csv")]
    args = cli.extend_parser(cli.build_parser()).parse_args(["train", "--quiet", "--epochs", "1", *argv])
    cli._setup(args, False)
    (dtype, tape, threads), = ahead
    step = built[0][0]
    assert dtype == step.dtype and threads == step.threads == ("512" in argv)
    assert table.kernels_for(tape) == table.kernels_for(step.plan.tape)


_CLI_CHILD = _LISTEN + r"""
from fastbp import cli, _compile_pool
order, forked = [], []
start = _compile_pool._start_helper
def recorded(dtype, share):
    order.extend(q for _, q in share)
    helper = start(dtype, share)
    forked.append(type(helper.proc).__name__ == "_Forked")
    return helper
_compile_pool._start_helper = recorded
status = cli.main(["train", "--quiet", "--epochs", "2", "--dtype", "float64"])
print(json.dumps({"status": status, "compiled": compiled, "enabled": _compile_pool.enabled(), "order": order,
                  "forked": forked}))
"""


@pytest.mark.thorough      # a cold compilation of fastbp train's step on two processes
def test_a_cold_fastbp_train_compiles_the_loop_kernels_ahead_in_the_helper(tmp_path):
    """On an empty cache, fastbp train starts the helper before it reads the data:
    the helper begins with the handlers, and this process, after the data, takes
    units from the end of the helper's list (the loop kernels); then the same run
    on the warm cache prints the same result."""
    env = _child_env(tmp_path, "1")
    runs = [subprocess.run([sys.executable, "-c", _CLI_CHILD], capture_output=True, text=True, env=env,
                           timeout=900) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    cold, warm = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    if not cold["enabled"]:
        pytest.skip("the pool is off on one CPU")
    assert cold["status"] == warm["status"] == 0
    names = [n for n in cold["compiled"] if n]
    order = cold["order"]
    assert cold["forked"] == [True] and warm["order"] == []         # forked on Linux; nothing to compile warm
    here = [n for n in names if n in order]
    assert here, "this process compiled nothing: no work was shared"
    # taken from the end of the helper's list (the two may both begin the unit where they meet)
    assert order[0] not in here and set(order[len(order) - len(here):]) <= set(here) | {order[-len(here) - 1]}
    assert [n for n in warm["compiled"] if n] == []
    accuracy = [[ln for ln in r.stdout.splitlines() if ln.startswith("test accuracy")] for r in runs]
    assert accuracy[0] and accuracy[0] == accuracy[1]


#: fork a helper (fastbp._compile_pool._fork_helper) for three units, the last taken by this
#: process; then report what the helper claimed, its exit status and what the cache holds
_FORK_CHILD = r"""
import json, sys
import numpy as np
from fastbp import _executor, _compile_pool as pool
from fastbp._native import native_cached
from fastbp.kernels import table
dt = np.dtype(np.float64)
kids = [table.K_MM_SMALL, table.K_COLSUM, table.K_SGD]
safe = pool._fork_safe()
helper = pool._fork_helper(dt, [(k, pool._NATIVE[k][0].py_func.__qualname__) for k in kids])
helper.proc.stdin.write(f"{kids[-1]}\n".encode())
helper.proc.stdin.flush()
pool._wait(helper, timeout=600)
print(json.dumps({"safe": safe, "forked": type(helper.proc).__name__, "claimed": sorted(helper.claimed),
                  "status": helper.proc.returncode, "cached": [native_cached(k, dt) for k in kids],
                  "kids": kids}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the helper is forked on Linux only")
def test_a_forked_helper_compiles_its_share_into_the_cache(tmp_path):
    """The helper as a fork of this process: it reports each unit it begins on its pipe,
    skips the unit this process took, writes the others into the disk cache (found there
    by this process) and exits with status 0, printing nothing."""
    env = _child_env(tmp_path, "0")
    run = subprocess.run([sys.executable, "-c", _FORK_CHILD], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(run.stdout.strip().splitlines()) == 1 and run.stderr == ""     # the child wrote nothing
    assert got["safe"] and got["forked"] == "_Forked" and got["status"] == 0
    assert got["claimed"] == sorted(got["kids"][:2])
    assert got["cached"] == [True, True, False]


def test_the_helper_is_not_forked_beside_another_thread_or_when_asked(monkeypatch):
    """A fork copies only the calling thread: where another Python thread runs (it
    could hold a lock the child needs), or with FASTBP_COMPILE_START=spawn, the helper
    is a new interpreter."""
    import threading
    monkeypatch.setattr(pool.config, "COMPILE_START", "auto")
    monkeypatch.setattr(pool.threading, "active_count", lambda: 1)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    par = sys.modules.get("numba.np.ufunc.parallel")
    assert pool._fork_safe() == (sys.platform.startswith("linux") and not getattr(par, "_is_initialized", False))
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", object())     # MPI loaded: no fork
    assert not pool._fork_safe()
    monkeypatch.delitem(sys.modules, "mpi4py.MPI")
    monkeypatch.setattr(pool.config, "COMPILE_START", "spawn")
    assert not pool._fork_safe()
    monkeypatch.setattr(pool.config, "COMPILE_START", "auto")
    monkeypatch.undo()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not pool._fork_safe()
    finally:
        stop.set()
        t.join()
    spawned = []
    monkeypatch.setattr(pool, "_fork_safe", lambda: False)
    monkeypatch.setattr(pool, "_spawn_helper", lambda d, s: spawned.append(s) or "spawned")
    assert pool._start_helper(np.float64, [(1, "a")]) == "spawned" and spawned == [[(1, "a")]]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")
def test_a_forked_helper_that_does_not_finish_is_killed_at_the_timeout():
    """_Forked (a forked helper's process handle): wait with a timeout raises
    subprocess.TimeoutExpired as Popen's does, kill ends the child, poll and wait give its status."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(60)
        finally:
            os._exit(0)
    proc = pool._Forked(pid, None, None)
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.05)
    proc.kill()
    assert proc.wait(timeout=10) == -9 and proc.poll() == -9
    proc.kill()         # once ended: nothing to kill


def test_the_helpers_list_leaves_small_units_to_whoever_reaches_the_loop_kernels_last(monkeypatch):
    """_compile_order, by the units' code size: with handlers in the share (started
    ahead), the handlers first, largest first, then the loop kernels smallest first
    (this process takes the largest from the end); without, the loop kernels largest
    first (the helper starts on them, this process comes late).  Ties keep their order."""
    sizes = {"a": 5, "b": 50, "c": 20, "d": 1, "e": 40, "f": 10, "g": 10, "h1": 3, "h2": 30, "run": 9}
    ids = dict(zip(sizes, [0, 1, 2, 3, 4, 5, 6, table.K_HANDLER + 1, table.K_HANDLER + 2, ex.K_RUN_TAPE]))
    monkeypatch.setattr(pool, "_NATIVE", {i: (_named(q),) for q, i in ids.items()})
    monkeypatch.setattr(pool, "_code_size", lambda fn, seen: sizes[fn.__qualname__])
    got = [q for _, q in pool._compile_order([(i, q) for q, i in ids.items()])]
    assert got == ["h2", "run", "h1", "d", "a", "g", "f", "c", "e", "b"]
    got = [q for _, q in pool._compile_order([(i, q) for q, i in ids.items() if i < table.K_HANDLER])]
    assert got == ["b", "e", "c", "f", "g", "a", "d"]
    assert pool._compile_order([]) == []


def test_code_size_counts_the_compiled_functions_a_kernel_calls_once():
    from fastbp.kernels import losses
    own = pool._code_size(losses._check_labels.py_func, set())
    assert own > 0
    whole = pool._code_size(losses._softmax_xent.serial.py_func, set())
    seen = set()
    assert whole > pool._code_size(losses._exp_nonpos.py_func, seen) > 0
    assert pool._code_size(losses._exp_nonpos.py_func, seen) == 0       # counted once
    assert pool._code_size(None, set()) == 0


@pytest.mark.parametrize("var, value", [("FASTBP_COMPILE_WORKERS", "2"), ("FASTBP_COMPILE_START", "forkserver"),
                                        ("FASTBP_PARALLEL_THRESHOLD", "lots"), ("FASTBP_STEP_THREADS_MIN", "-1")])
def test_an_unknown_setting_in_the_environment_is_an_error_naming_it(var, value):
    """A misspelt setting is not silently the default (fastbp.config reads them at import)."""
    p = subprocess.run([sys.executable, "-c", "import fastbp.config"], capture_output=True, text=True,
                       env=dict(os.environ, **{var: value}), timeout=120)
    assert p.returncode != 0 and "EnvError" in p.stderr and f"{var}={value!r}" in p.stderr, p.stderr[-2000:]


def test_settings_in_the_environment_ignore_case_and_spaces():
    """A choice is read lower-cased and stripped (once, not per misspelt setting above)."""
    ok = subprocess.run([sys.executable, "-c", "import fastbp.config as c; print(c.COMPILE_WORKERS, c.COMPILE_START)"],
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, FASTBP_COMPILE_WORKERS=" Off ", FASTBP_COMPILE_START="SPAWN"))
    assert ok.returncode == 0 and ok.stdout.split() == ["off", "spawn"], ok.stderr[-2000:]
