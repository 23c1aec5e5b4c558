"""The one-time compilation on two cores (fastbp._compile_pool): a helper process
compiles part of a step's native code into numba's disk cache."""
import json
import os
import subprocess
import sys

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

_CHILD = r"""
import json, sys, numpy as np, fastbp
from numba.core import event
compiled = []
class L(event.Listener):
    def on_start(self, ev):
        d = ev.data.get("dispatcher")
        compiled.append(getattr(getattr(d, "py_func", None), "__qualname__", None))
    def on_end(self, ev):
        pass
event.register("numba:compile", L())
""" + _TRAIN + r"""
np.save(sys.argv[1], step.param_vector)
print(json.dumps({"compiled": compiled, "enabled": fastbp._compile_pool.enabled()}))
"""


def _run_child(tmp_path, workers):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FASTBP_COMPILE_WORKERS=str(workers))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(fastbp.__file__)),
                                                    env.get("PYTHONPATH", "")] if p)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "p.npy")], capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), np.load(tmp_path / "p.npy")


def _same_step_here():
    ns = {"fastbp": fastbp, "np": np}
    exec(_TRAIN, ns)
    return ns["step"].param_vector


@pytest.mark.thorough      # two processes compiling a step from an empty cache: 19 s of the README command
def test_a_cold_first_step_compiles_on_two_processes_and_trains_bitwise_alike(tmp_path):
    """With an empty disk cache, the helper compiles the loop kernels (the process
    compiles the interpreter and its handlers, then loads the helper's kernels from
    the cache), and the trained weights are bitwise those of code compiled in one process."""
    got, params = _run_child(tmp_path, workers=1)
    if not got["enabled"]:
        pytest.skip("the pool is off on one CPU")
    names = [n for n in got["compiled"] if n]
    assert "run_tape" in names and "_h_linear" in names
    # the helper's share was loaded from the cache, not compiled here
    assert not any(n.startswith(("_softmax_xent", "_adam_update", "_colsum", "_mm_small", "_t_bias_act",
                                 "_t_bwd")) for n in names), names
    assert any(n is None for n in got["compiled"])          # the wait for the helper counts as compiling
    np.testing.assert_array_equal(params, _same_step_here())


def test_the_pool_is_off_when_asked(monkeypatch):
    monkeypatch.setattr(pool, "_cpus", lambda: 2)
    monkeypatch.setattr(pool, "_idle_cpus", lambda: 2.0)
    for off in ("0", "off"):
        monkeypatch.setattr(pool.config, "COMPILE_WORKERS", off)
        assert not pool.enabled()
    monkeypatch.setattr(pool.config, "COMPILE_WORKERS", "auto")
    assert pool.enabled()
    monkeypatch.setattr(pool, "_idle_cpus", lambda: 0.7)      # the other CPU is busy
    assert not pool.enabled()
    monkeypatch.setattr(pool.config, "COMPILE_WORKERS", "1")
    assert pool.enabled()
    monkeypatch.setattr(pool.sys, "executable", "/usr/bin/uwsgi")     # Python embedded in a server
    assert not pool.enabled()
    monkeypatch.setattr(pool.sys, "executable", sys.executable)
    monkeypatch.setattr(pool, "_cpus", lambda: 1)
    assert not pool.enabled()


def test_whatever_the_helper_did_not_compile_is_compiled_here(monkeypatch):
    """A helper that exits without compiling anything: every kernel still gets its
    address, the helper's share after the wait (loaded or compiled here)."""
    kids = sorted(table.kernels_for(fastbp.compile(
        fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2)), loss="mse",
        optimizer=fastbp.SGD(lr=0.1), batch_size=2, dtype=np.float64).plan.tape))
    calls = []
    started = []
    monkeypatch.setattr(pool.config, "COMPILE_WORKERS", "1")
    monkeypatch.setattr(pool, "_cpus", lambda: 2)
    monkeypatch.setattr(pool, "_idle_cpus", lambda: 2.0)
    monkeypatch.setattr(pool, "native_cached", lambda k, d: False)
    monkeypatch.setattr(pool, "native_address", lambda k, d: calls.append(k) or 1000 + k)

    def fake_helper(dtype, share):
        started.append([k for k, _ in share])
        return subprocess.Popen([sys.executable, "-c", "pass"])
    monkeypatch.setattr(pool, "_start_helper", fake_helper)
    here = {table.K_MM, *range(table.K_HANDLER, table.K_HANDLER + ex.OP_CAPACITY)}
    out = pool.load(np.float64, kids + [ex.K_RUN_TAPE], keep_here=here | {ex.K_RUN_TAPE})
    assert out == {k: 1000 + k for k in kids + [ex.K_RUN_TAPE]}
    assert len(started) == 1 and started[0] and not set(started[0]) & here
    # this process's share first, the helper's after the wait
    n_here = len(kids) + 1 - len(started[0])
    assert set(calls[:n_here]) & set(started[0]) == set() and set(calls[n_here:]) == set(started[0])
