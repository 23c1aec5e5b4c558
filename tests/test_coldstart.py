"""First runs: what numba compiles, what it loads from its disk cache, and
that the two run exactly the same code.

* A process that compiles fastbp's native code and one that loads it from
  numba's on-disk cache give bitwise-identical results (they used to differ
  by 1 ulp: numba links a re-optimised copy of every callee into each caller,
  and the JIT linker picked whichever copy was loaded first).
* Kernels are called by address and loaded only for what a step's tape uses.
* :func:`fastbp._native.compile_watch` reports compilation, not cache loads.
"""
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

import fastbp
from fastbp import _executor as ex
from fastbp import _native
from reference import mlp

# Tanh and Adam in float64 (where the cached and the fresh code differed), the
# step's own call and predict; fit with few steps (the Python driver).
_RUN = textwrap.dedent("""
    import json, sys
    import numpy as np, fastbp
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 40))
    Y = rng.integers(0, 5, 96)
    model = fastbp.Sequential(fastbp.Linear(40, 24), fastbp.Tanh(), fastbp.Linear(24, 5))
    step = fastbp.compile(model, optimizer=fastbp.Adam(lr=1e-2), batch_size=32, dtype=np.float64, seed=3)
    if sys.argv[1] == "fit-first":
        losses = step.fit(X, Y, epochs=2).tolist()
        losses += [step(X[i * 32:(i + 1) * 32], Y[i * 32:(i + 1) * 32]) for i in range(3)]
    else:
        losses = [step(X[i * 32:(i + 1) * 32], Y[i * 32:(i + 1) * 32]) for i in range(3)]
        losses += step.fit(X, Y, epochs=2).tolist()
    print(json.dumps({"losses": losses, "params": step.param_vector.tolist(),
                      "predict": step.predict(X[:7]).ravel().tolist()}))
""")


def _run(order, base=None, **env):
    e = dict(os.environ if base is None else base, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
             MKL_NUM_THREADS="1", **env)
    p = subprocess.run([sys.executable, "-c", _RUN, order], capture_output=True, text=True, env=e, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def _fresh_then_cached(cache, base=None):
    """A fresh compilation into the empty ``cache``, then a process that loads it."""
    fresh = _run("step-first", base, NUMBA_CACHE_DIR=cache)
    cached = _run("step-first", base, NUMBA_CACHE_DIR=cache)
    return fresh, cached


#: the runs of the test below, started early in a background thread (see start_early)
_EARLY = {}


def start_early(items):
    """Called by conftest.py when collection ends, with this module's selected tests: the
    two processes of the test below (a cold compilation, ~20 s of one core, in an empty
    cache of their own, so they need nothing this session compiles) start now, in a
    background thread, and run while the rest of the suite does, instead of this process
    waiting for them when the test comes."""
    names = {getattr(it, "originalname", None) or it.name for it in items}
    if "test_compiled_and_cached_native_code_give_bitwise_identical_runs" not in names or _EARLY:
        return
    tmp = tempfile.mkdtemp(prefix="fastbp-coldstart-")
    base = dict(os.environ)             # this session's environment now, not a test's monkeypatched one

    def work():
        try:
            _EARLY["result"] = _fresh_then_cached(os.path.join(tmp, "numba-cache"), base)
        except BaseException as e:      # re-raised by the test
            _EARLY["error"] = e

    t = threading.Thread(target=work, name="coldstart-early", daemon=True)
    _EARLY.update(thread=t, tmp=tmp)
    t.start()


# CI's thorough stage: the cold compilation of a whole float64 Adam step (~30 s of one core) in
# an empty cache of its own duplicates what the session compiles anyway; the README's run
# compares an estimator's fit in a process that loads the code from the disk cache with this
# session's, to the bit (test_estimator_weights.py)
@pytest.mark.thorough
def test_compiled_and_cached_native_code_give_bitwise_identical_runs(tmp_path):
    """Fresh compilation (its own, empty cache), then a load of that cache: every float equal."""
    early = _EARLY.get("thread")
    if early is None:       # not started by conftest.py (another runner): run them now
        fresh, cached = _fresh_then_cached(str(tmp_path / "numba-cache"))
    else:
        early.join(timeout=1300)
        shutil.rmtree(_EARLY["tmp"], ignore_errors=True)
        assert not early.is_alive(), "the early cold-start runs did not finish"
        if "error" in _EARLY:
            raise _EARLY["error"]
        fresh, cached = _EARLY["result"]
    assert cached == fresh


@pytest.mark.thorough           # two more cold compilations (~40 s): CI's last stage
def test_uncached_runs_and_the_order_of_first_calls_do_not_change_results(tmp_path):
    """A process that never caches, and the other order of first calls (fit before step),
    against a fresh compilation and a load of its cache: every float equal."""
    cache = str(tmp_path / "numba-cache")
    fresh = _run("step-first", NUMBA_CACHE_DIR=cache)
    never = _run("step-first", FASTBP_NO_CACHE="1")
    assert never == fresh
    a = _run("fit-first", NUMBA_CACHE_DIR=cache)
    b = _run("fit-first", FASTBP_NO_CACHE="1")
    assert a == b


def test_linked_callee_copies_are_internal():
    """Every copy of a fastbp function linked into the interpreter's module is
    internal to it: calls never resolve to another module's copy."""
    import re
    step = fastbp.compile(mlp([6, 9, 3]), batch_size=4, dtype=np.float64)
    step(np.zeros((4, 6)), np.zeros(4, np.int64))
    sig = next(iter(ex.run_tape.overloads))
    lib = ex.run_tape.overloads[sig].library
    if getattr(lib, "_disable_inspection", False):
        pytest.skip("loaded from the disk cache: no IR to inspect")
    ir = lib.get_llvm_str()
    own = ex.run_tape.overloads[sig].fndesc.mangled_name
    for m in re.finditer(r'^define ([^@]*)@"?([^"(]+)', ir, re.M):
        linkage, name = m.group(1), m.group(2)
        if "fastbp" in name and own not in name:
            assert "linkonce_odr" not in linkage and "weak_odr" not in linkage, (name, linkage)


def test_kernels_are_loaded_for_what_the_tape_uses():
    sgd_mse = fastbp.compile(mlp([5, 7, 2]), "mse", fastbp.SGD(0.1), batch_size=4)
    need = ex.kernels_for(sgd_mse.plan.tape)
    # the activation kernels are per registry entry: ReLU's epilogue and backward,
    # the identity's epilogue (the output layer's bias)
    from fastbp.kernels.activations import ROLE_BIAS_ACT, ROLE_BWD, ROLE_FWD
    from fastbp.kernels.table import act_kernel_id
    from fastbp.registry import activations as reg
    relu, ident = reg.get("relu").code, reg.IDENTITY
    K_BIAS_ACT, K_ACT_BWD = act_kernel_id(relu, ROLE_BIAS_ACT), act_kernel_id(relu, ROLE_BWD)
    assert {ex.K_MSE, ex.K_SGD, K_BIAS_ACT, K_ACT_BWD, ex.K_COLSUM, ex.K_MM_SMALL} <= need
    assert act_kernel_id(ident, ROLE_BIAS_ACT) in need
    assert not need & {act_kernel_id(relu, ROLE_FWD), act_kernel_id(reg.get("tanh").code, ROLE_BIAS_ACT)}
    assert not need & {ex.K_SOFTMAX_XENT, ex.K_SVM, ex.K_BCE_LOGITS, ex.K_ADAM, ex.K_GATE_FWD,
                       ex.K_GATE_BWD, ex.K_SUM_FWD, ex.K_SUM_BWD}
    adam = fastbp.compile(mlp([5, 7, 2]), "softmax_cross_entropy", fastbp.Adam(), batch_size=4)
    need = ex.kernels_for(adam.plan.tape)
    assert {ex.K_SOFTMAX_XENT, ex.K_ADAM} <= need and not need & {ex.K_MSE, ex.K_SGD}
    # the table the step runs with holds an address for each of them
    assert not adam.threads                  # a small step: the serial kernels' table
    tab = ex._KTABS[np.dtype(np.float32), False]
    assert all(tab[k] != 0 for k in need)
    assert ex.kernel_table(np.float32, adam.plan.tape) is tab
    bce = fastbp.compile(mlp([5, 7, 2]), "bce_with_logits", fastbp.SGD(0.1), batch_size=4)
    assert ex.K_BCE_LOGITS in ex.kernels_for(bce.plan.tape)
    # Adam: the kernel of the step's weight-decay mode only (the update instruction's column g)
    from fastbp.kernels.table import ADAM_KERNEL_IDS
    for opt, want in ((fastbp.Adam(), ex.K_ADAM), (fastbp.AdamW(), ex.K_ADAM_DECOUPLED),
                      (fastbp.Adam(weight_decay=0.1), ex.K_ADAM_L2)):
        s = fastbp.compile(mlp([5, 7, 2]), "softmax_cross_entropy", opt, batch_size=4)
        assert ex.kernels_for(s.plan.tape) & set(ADAM_KERNEL_IDS) == {want}, opt


def test_an_unknown_adam_mode_is_an_error_not_a_fallback():
    step = fastbp.compile(mlp([5, 7, 2]), "softmax_cross_entropy", fastbp.AdamW(lr=0.1), batch_size=4)
    row = int(np.flatnonzero(step.plan.tape[:, ex.C_OP] == ex.OP_ADAM)[0])
    tape = step.plan.tape.copy()
    tape[row, ex.C_G] = 3
    with pytest.raises(ValueError, match="unknown Adam weight-decay mode 3"):
        ex.kernels_for(tape)
    # a corrupt mode reaching the handler: an error status, the weights untouched
    x, y = np.ones((4, 5), np.float32), np.zeros(4, np.int64)
    step(x, y)
    before = step.param_vector.copy()
    step.plan.tape[row, ex.C_G] = 7
    try:
        with pytest.raises(RuntimeError, match="status 5"):
            step(x, y)
    finally:
        step.plan.tape[row, ex.C_G] = 1
    np.testing.assert_array_equal(step.param_vector, before)


def test_an_unknown_opcode_or_loss_code_is_an_error_not_a_fallback():
    step = fastbp.compile(mlp([5, 7, 2]), "mse", fastbp.SGD(0.1), batch_size=4)
    tape = step.plan.tape.copy()
    tape[0, ex.C_OP] = 99
    with pytest.raises(ValueError, match="unknown opcode 99"):
        ex.kernels_for(tape)
    tape = step.plan.tape.copy()
    loss_row = int(np.flatnonzero(tape[:, ex.C_OP] == ex.OP_LOSS)[0])
    tape[loss_row, ex.C_G] = 42
    with pytest.raises(ValueError, match="unknown loss code 42"):
        ex.kernels_for(tape)


def test_a_kernel_that_was_not_loaded_raises_instead_of_crashing():
    step = fastbp.compile(mlp([6, 9, 3]), batch_size=4)
    x, y = np.zeros((4, 6), np.float32), np.zeros(4, np.int64)
    step(x, y)
    empty = np.zeros(ex.N_KERNELS, dtype=np.int64)
    ctx = step._ctx.copy()
    ctx[ex.X_KTAB] = empty.ctypes.data
    before = step.param_vector.copy()
    with pytest.raises(RuntimeError, match="not loaded"):
        ex.run_tape(ctx, 0, step._tape_end[ex.MODE_TRAIN], 4, x, y, step._no_yf)
    np.testing.assert_array_equal(step.param_vector, before)


_K_BIAS_ACT = ex.K_PROTO_BIAS_ACT     # (the identity's epilogue) a global: numba types it as a constant


def test_kcall_checks_the_kernel_signature_at_compile_time():
    """A call whose argument types differ from the kernel's registered
    signature does not compile (it would pass the wrong arguments)."""
    @njit
    def wrong(tab, Y, b):
        _native.kcall(tab, _K_BIAS_ACT, (Y, b, 1.5))      # takes (Z, b, Y, P)

    with pytest.raises(TypingError, match="kcall"):
        wrong(np.zeros(ex.N_KERNELS, np.int64), np.zeros((2, 2)), np.zeros(2))


def test_compile_watch_reports_compilation_not_cache_loads():
    calls = []

    @njit
    def fresh(a):              # defined here: never compiled before, not cached
        return a + 1

    with _native.compile_watch(on_first=lambda: calls.append(1)) as w:
        assert fresh(1) == 2
        assert fresh(2.5) == 3.5
    assert w.compiled and w.functions == 2 and w.seconds > 0 and calls == [1]
    with _native.compile_watch(on_first=lambda: calls.append(2)) as w2:
        assert fresh(3) == 4
    assert not w2.compiled and w2.seconds == 0.0 and calls == [1]
    # a second step of an architecture and dtype already run compiles nothing
    fastbp.compile(mlp([6, 9, 3]), batch_size=4)(np.zeros((4, 6), np.float32), np.zeros(4, np.int64))
    with _native.compile_watch() as w3:
        s = fastbp.compile(mlp([6, 11, 3]), batch_size=4)
        s(np.zeros((4, 6), np.float32), np.zeros(4, np.int64))
    assert not w3.compiled


_LAZY = textwrap.dedent("""
    import json, sys
    import numpy as np, fastbp
    from fastbp import _executor as ex
    from reference import mlp
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, 6))
    Y = rng.integers(0, 3, 64)
    tab = lambda: ex._KTABS[np.dtype(np.float64), False]
    out = {}
    if sys.argv[1] == "train":
        a = fastbp.compile(mlp([6, 9, 3]), optimizer=fastbp.SGD(lr=0.5), batch_size=16, dtype=np.float64)
        a(X[:16], Y[:16])
        out["before"] = [int(tab()[ex.K_CLIP_GRAD_NORM]), int(tab()[ex.K_WEIGH_ROWS])]
        b = fastbp.compile(mlp([6, 9, 3]), optimizer=fastbp.SGD(lr=0.5), batch_size=16, dtype=np.float64)
        b.param_vector[...] = a.param_vector
        a.clip_grad_norm = 0.05                  # set on a live step: its kernel loads now
        out["after_clip"] = int(tab()[ex.K_CLIP_GRAD_NORM])
        a(X[16:32], Y[16:32], sample_weight=np.linspace(0.5, 2.0, 16))      # the first weighted call
        out["after_weights"] = int(tab()[ex.K_WEIGH_ROWS])
        c = fastbp.compile(mlp([6, 9, 3]), optimizer=fastbp.SGD(lr=0.5), batch_size=16, dtype=np.float64,
                           clip_grad_norm=0.05)
        c.param_vector[...] = b.param_vector
        for s in (b, c):
            s(X[16:32], Y[16:32], sample_weight=np.linspace(0.5, 2.0, 16))
        out["clipped_like_compiled_with_it"] = bool(np.array_equal(a.param_vector, c.param_vector))
        out["unclipped_differs"] = not np.array_equal(a.param_vector, b.param_vector)
        a.save(sys.argv[2])
    else:
        s = fastbp.load(sys.argv[2])
        out["loaded"] = int(tab()[ex.K_CLIP_GRAD_NORM])
        s(X[:16], Y[:16])
        out["clip"] = s.clip_grad_norm
    print(json.dumps(out))
""")


def test_clipping_and_sample_weights_load_their_kernels_when_first_used(tmp_path):
    """Gradient clipping's and the sample weights' kernels are not among a tape's
    (most steps never use them: compiling them cost every first run ~0.3 s of CPU):
    a step loads them when clipping is set (compile, the setter, a checkpoint) and on
    its first weighted call, in a fresh process each time here."""
    assert ex.K_CLIP_GRAD_NORM not in ex.kernels_for(fastbp.compile(mlp([4, 3]), batch_size=2).plan.tape)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    ckpt = str(tmp_path / "a.npz")
    runs = []
    for mode in ("train", "load"):
        p = subprocess.run([sys.executable, "-c", _LAZY, mode, ckpt], capture_output=True, text=True, env=env,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        runs.append(json.loads(p.stdout))
    train, load = runs
    assert train["before"] == [0, 0]
    assert train["after_clip"] != 0 and train["after_weights"] != 0
    assert train["clipped_like_compiled_with_it"] and train["unclipped_differs"]
    assert load["loaded"] != 0 and load["clip"] == 0.05


def test_every_write_of_the_clipping_setting_loads_its_kernel():
    """Only the ``clip_grad_norm`` setter and a checkpoint's restore (which calls the
    step's ``_settings_changed`` after it) write the clipping slot: a write that skipped
    the load would make the step raise RuntimeError (kernel not loaded) at its update."""
    import pathlib
    root = pathlib.Path(fastbp.__file__).parent
    writes = [(p.name, line.strip()) for p in root.rglob("*.py") for line in p.read_text().splitlines()
              if re.search(r"H_CLIP\]\s*=[^=]", line)]
    assert writes == [("_step_base.py", "self.hyper[ex.H_CLIP] = v")]
    setter = (root / "_step_base.py").read_text()       # the setter loads first (another thread's call)
    assert setter.index("self._settings_changed(clip=v)") < setter.index("self.hyper[ex.H_CLIP] = v")
    restore = (root / "factories.py").read_text()
    assert "step.hyper[...] = hyper" in restore
    assert restore.index("step._settings_changed()") > restore.index("step.hyper[...] = hyper")
