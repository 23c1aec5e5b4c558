"""The interpreter's dispatch: one handler per opcode, called by address.

* a corrupt opcode reaching the interpreter is an error status, never a
  skipped instruction, and nothing is applied;
* a process loads (or compiles) only the handlers its steps' tapes use, and
  one signature of the interpreter per dtype.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import _executor as ex


def _mlp_step(dtype=np.float64):
    model = fastbp.Sequential(fastbp.Linear(4, 5), fastbp.ReLU(), fastbp.Linear(5, 3))
    return fastbp.compile(model, loss="softmax_cross_entropy", optimizer=fastbp.SGD(lr=0.1, momentum=0.9),
                          batch_size=6, dtype=dtype)


@pytest.mark.parametrize("which", ["first_forward", "update"])
@pytest.mark.parametrize("bad", [ex.OP_CAPACITY, ex.OP_CAPACITY + 1000, -1, 0, 23])
def test_a_corrupt_opcode_is_an_error_status_and_changes_nothing(which, bad):
    step = _mlp_step()
    x = np.random.default_rng(0).standard_normal((6, 4))
    y = np.arange(6, dtype=np.int64) % 3
    tape = step.plan.tape.copy()
    ops = tape[:, ex.C_OP]
    row = int(np.flatnonzero(ops == ex.OP_LINEAR)[0]) if which == "first_forward" else int(
        np.flatnonzero(ops == ex.OP_SGD)[0])
    before = step.param_vector.copy()
    state_before = [v.copy() for v in step.state_vectors]
    assert state_before         # SGD with momentum: one state vector
    step.plan.tape[row, ex.C_OP] = bad
    try:
        status, _, _ = ex.run_tape(step._ctx, 0, step.plan.sec[ex.S_END], 6, x, y, np.zeros((0, 0)))
    finally:
        step.plan.tape[...] = tape
    assert status == ex.STATUS_BAD_OP
    np.testing.assert_array_equal(step.param_vector, before)
    for a, b in zip(state_before, step.state_vectors):
        np.testing.assert_array_equal(a, b)
    assert step.hyper[ex.H_STEPS] == 0
    # the step still works once the tape is intact again
    loss = step(x, y)
    assert np.isfinite(loss)


_CHILD = r"""
import json, numpy as np, fastbp
from fastbp import _executor as ex, _handlers as h, _handlers_update as hu
from fastbp.kernels.table import K_HANDLER
est = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, batch_size=16, random_state=0)
X = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
y = np.arange(64) % 3
est.fit(X, y)
est.predict(X)
tab = ex._KTABS[np.dtype(np.float32), False]      # a small step: the serial kernels' table
loaded = sorted(int(op) for op in range(ex.OP_CAPACITY) if tab[K_HANDLER + op] != 0)
compiled = {name: len(getattr(m, name).overloads) for m in (h, hu) for name in dir(m) if name.startswith("_h_")}
print(json.dumps({"loaded": loaded, "compiled": compiled, "run_tape": len(ex.run_tape.overloads),
                  "dtypes": sorted(f"{d}/{t}" for d, t in ex._KTABS)}))
"""


def test_a_process_loads_only_the_handlers_its_tapes_use():
    """An MLP estimator's fit and predict (float32) load the handlers of the
    linear layer, the loss, its backward and the update, and no other; and
    one signature of the interpreter (issue 16: "how many signatures of the
    interpreter does the main job compile")."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(fastbp.__file__)),
                                                    env.get("PYTHONPATH", "")] if p)
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    est = fastbp.MLPClassifier()
    want = {ex.OP_LINEAR, ex.OP_LOSS, ex.OP_LINEAR_BWD}
    assert set(got["loaded"]) >= want
    assert len(set(got["loaded"]) - want) == 1          # the optimizer's update, and nothing else
    assert (set(got["loaded"]) - want) <= {ex.OP_ADAM, ex.OP_SGD}, est.solver
    unused = [name for name in ("_h_batchnorm", "_h_batchnorm_bwd", "_h_layernorm", "_h_layernorm_bwd",
                                "_h_dropout", "_h_gate", "_h_gate_bwd", "_h_matmul", "_h_matmul_bwd", "_h_sum",
                                "_h_sum_bwd", "_h_act", "_h_act_bwd", "_h_rmsprop")]
    assert all(got["compiled"][name] == 0 for name in unused), got["compiled"]
    assert got["run_tape"] == 1 and got["dtypes"] == ["float32/False"]
