"""Results do not depend on the number of threads.

Every parallel kernel parallelises over independent output rows (or column
blocks), never over a reduction, so its results must be bitwise identical
with 1 and with 2 numba threads, and identical to its serial compilation.
A script computes every ``prange`` kernel (through ``.parallel`` and
``.serial`` directly, and through the ops wrappers, which pick a variant by
size) on shapes large enough for the parallel path, in subprocesses with
``NUMBA_NUM_THREADS=1`` and ``=2``; the hashes of all outputs are compared.
"""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r'''
import hashlib, json, sys
import numpy as np
import numba
import fastbp
from fastbp import _jit, ops
from fastbp.kernels import activations as A, gates as G, gemm as M, linear as L, losses as Ls, optim as O
from fastbp.kernels import dropout as Dr, norm as N

THR = _jit.PARALLEL_THRESHOLD
R, C = THR // 67 + 5, 67          # R * C >= THR: elementwise work takes the parallel path
m, k, n = 97, 67, 45              # m * k * n >= THR for the default threshold
out = {"threads": numba.get_num_threads(), "config_threads": numba.config.NUMBA_NUM_THREADS}
out["picks_parallel"] = A._relu_fwd.pick(R * C) is A._relu_fwd.parallel
from fastbp.registry import activations as _reg
# argv[2] "all": every registry entry; "some": one per kind of loop body (the entries' kernels
# are copies of the same templates, with the entry's scalar body inlined): the identity, an
# output-reading one (relu), an input-reading one with a parameter (leaky_relu); the scalar
# bodies (gelu's float32 polynomial, ...) change no loop, and the "all" run has them
SOME = {"identity", "relu", "leaky_relu"}
ENTRIES = [e for e in _reg.entries() if sys.argv[2] == "all" or e.name in SOME]
PUBLIC = [e for e in _reg.entries(public=True) if e in ENTRIES]
ACT_CODES = [e.code for e in ENTRIES]
# the kept-derivative templates (fwd_d, bias_act_d, mul_d): in the "all" run (CI's thorough
# stage) only -- a cold compilation of both variants of each, in each subprocess, which the
# README's run leaves out (its steps run the serial variants: tests/test_registry.py, test_norms.py)
KEEP_D_CODES = [e.code for e in ENTRIES if e.uses == "input" and sys.argv[2] == "all"]
out["entries"] = sys.argv[2]
# the gates (add, mul, max, div, pow) share their loops (one template, tests/test_gate_registry.py):
# the "all" run (CI's thorough stage) takes the five, directly and through the ops wrappers; the
# "some" run none (their parallel twins: 8 s of cold compilation in each subprocess; the README's
# run compares mul's parallel and serial compilations in test_broadcast_gate_gradient_... below)
from fastbp.kernels.codes import GATE_ADD, GATE_DIV, GATE_MAX, GATE_MUL, GATE_POW
from fastbp.registry import gates as _greg
GATES = [GATE_ADD, GATE_MUL, GATE_MAX, GATE_DIV, GATE_POW] if sys.argv[2] == "all" else []
# the fused linear kernels: every entry's in the "all" run; in the "some" run the identity's and
# ReLU's (an output-reading body; leaky_relu's input-reading loops are the activation kernels' above)
LINEAR_CODES = [e.code for e in ENTRIES if sys.argv[2] == "all" or e.name in ("identity", "relu")]
# the kernels of the layers and losses a default MLP step does not use (the legacy sigmoid/tanh
# kernels, the losses other than softmax cross-entropy, Adam's weight-decay modes, RMSprop,
# the norm layers, dropout): in the "all" run only (CI's thorough stage), ~25 s of cold
# compilation of their parallel twins that the README's run leaves out
ALL = sys.argv[2] == "all"
hashes = {}


def h(name, *arrays):
    d = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        d.update(str((a.dtype.str, a.shape)).encode())
        d.update(np.ascontiguousarray(a).tobytes())
    hashes[name] = d.hexdigest()


for dt in [np.dtype(name).type for name in sys.argv[1].split(",")]:
    rng = np.random.default_rng(2024)
    def rn(*shape, scale=1.0):
        return np.array(scale * rng.standard_normal(shape), dt)
    X = rn(R, C, scale=3.0)
    DY = rn(R, C)
    Xm, Wm, Bm = rn(m, k), rn(k, n), rn(n)
    Gm = rn(m, n)
    row, col = rn(1, C), rn(R, 1)
    lab = rng.integers(0, C, R).astype(np.int64)
    T = np.array(rng.random((R, C)), dt)
    P = rn(R * C)
    for var in ("serial", "parallel"):
        def k_(kern):
            return getattr(kern, var)
        tag = f"{np.dtype(dt).name}/{{}}/{var}"
        for act in ACT_CODES:     # every registry entry, through its own kernels
            Y = np.empty_like(X); k_(A._act_fwd)(X, act, Y)
            dX = np.empty_like(X); k_(A._act_bwd)(Y, DY, act, dX, False)
            acc = DY.copy(); k_(A._act_bwd)(Y, X, act, acc, True)
            h(tag.format(f"act{act}"), Y, dX, acc)
        for act in KEEP_D_CODES:  # the training forwards that keep the derivative (uses="input")
            Yd, D = np.empty_like(X), np.empty_like(X); k_(A._act_fwd_d)(X, act, Yd, D)
            Zb, Yb = X.copy(), np.empty_like(X); k_(A._bias_act_d)(Zb, X[0].copy(), act, Yb)
            h(tag.format(f"keep_d{act}"), Yd, D, Zb, Yb)
        if KEEP_D_CODES:
            md = np.empty_like(X); k_(A._mul_d)(X, DY, md, False)
            md2 = DY.copy(); k_(A._mul_d)(X, X, md2, True)
            h(tag.format("mul_d"), md, md2)
        for name, f, b in (("relu", A._relu_fwd, A._relu_bwd), ("sigmoid", A._sigmoid_fwd, A._sigmoid_bwd),
                           ("tanh", A._tanh_fwd, A._tanh_bwd))[:None if ALL else 1]:
            Y = np.empty_like(X); k_(f)(X, Y)
            dX = np.empty_like(X); k_(b)(Y, DY, dX)
            h(tag.format(name), Y, dX)
        for acc in (False, True):
            c1 = Gm.copy(); k_(M._mm_nn)(Xm, Wm, c1, acc)
            c2 = Gm.copy(); k_(M._mm_nt)(Xm, np.ascontiguousarray(Wm.T), c2, acc)
            c3 = Wm.copy(); k_(M._mm_tn)(Xm, Gm, c3, acc)
            h(tag.format(f"mm/{acc}"), c1, c2, c3)
        for act in LINEAR_CODES:
            for bias in (Bm, np.empty(0, dt)):
                Y1 = np.empty((m, n), dt); k_(L._linear_fwd)(Xm, Wm, bias, act, Y1)
                Y2 = np.empty((m, n), dt); k_(L._linear_fwd_t)(Xm, np.ascontiguousarray(Wm.T), bias, act, Y2)
                Y3 = Gm.copy(); k_(L._bias_act)(Y3, bias, act)
                h(tag.format(f"linear{act}/{bias.size}"), Y1, Y2, Y3)
        db = np.empty(C, dt); k_(L._colsum)(X, db, False)
        db2 = db.copy(); k_(L._colsum)(DY, db2, True)
        h(tag.format("colsum"), db, db2)
        for gate in GATES:
            for a, b in ((X, DY), (X, row), (col, X), (row, col)):
                o = np.empty((R, C), dt); k_(G._gate_fwd)(gate, a, b, o)
                da, dbb = np.empty_like(a), np.empty_like(b)
                k_(G._gate_bwd)(gate, a, b, DY, da, dbb, False, False)
                h(tag.format(f"gate{gate}/{a.shape}/{b.shape}"), o, da, dbb)
        s = np.empty_like(X); k_(G._scale)(X, 0.37, s, False)
        s2 = DY.copy(); k_(G._scale)(X, -1.5, s2, True)
        sb = np.empty_like(X); k_(G._sum_bwd)(np.array([[0.3]], dt), sb, False)
        h(tag.format("scale_sum"), s, s2, sb)
        for name, kern, tgt in (("xent", Ls._softmax_xent, lab), ("svm", Ls._svm, lab),
                                ("mse", Ls._mse, T), ("bce", Ls._bce_logits, T),
                                ("poisson", Ls._poisson, np.abs(T)))[:None if ALL else 1]:
            dS = np.empty_like(X); rl = np.empty(R)
            loss = k_(kern)(X, tgt, dS, rl)
            h(tag.format(name), dS, rl, np.float64(loss))
        p, v = P.copy(), np.zeros_like(P)
        for _ in range(2):
            k_(O._sgd_update)(p, DY.ravel(), v, 0.1, 0.9, True, 0.01)
        h(tag.format("optim"), p, v)
        for kern, wd, dec in ((O._adam_no_decay, 0.0, False), (O._adam_decoupled, 0.01, True),
                              (O._adam_l2, 0.01, False))[:None if ALL else 1]:   # each weight-decay mode's
            pa, ma, va = P.copy(), np.zeros_like(P), np.zeros_like(P)
            for t in (1, 2):
                k_(kern)(pa, DY.ravel(), ma, va, t, 1e-3, 0.9, 0.999, 1e-8, wd, dec)
            h(tag.format(f"adam/{wd}/{dec}"), pa, ma, va)
        if not ALL:
            continue
        pr, sq, bf, ga = P.copy(), np.zeros_like(P), np.zeros_like(P), np.zeros_like(P)
        for _ in range(2):
            k_(O._rmsprop_update)(pr, DY.ravel(), sq, bf, ga, 1e-2, 0.99, 1e-8, 0.01, 0.9)
        h(tag.format("rmsprop"), pr, sq, bf, ga)
        # the norm kernels' variants may round differently from each other (fast-math contraction
        # is decided per compilation: a step uses one by its size, never by the thread count):
        # each variant is compared with itself at 1 and 2 threads, not paired
        ntag = f"{np.dtype(dt).name}/{{}}/{var}-only"
        wN, bN, PN = rn(C), rn(C), np.array([1e-5, 0.1, 0.0], dt)
        for train in (True, False):
            S = np.zeros((5, C), dt); Rn = np.array([rn(C), np.abs(rn(C)) + 0.5]); Yn = np.empty_like(X)
            k_(N._batchnorm_fwd)(X, wN, bN, Yn, S, Rn, PN, train)
            dXn, dwn, dbn = DY.copy(), wN.copy(), bN.copy()
            k_(N._batchnorm_bwd)(X, wN, S, DY, dXn, dwn, dbn, train, True, False, train)
            h(ntag.format(f"batchnorm/{train}"), Yn, S, dXn, dwn, dbn)
        SL, YL = np.zeros((R, 2), dt), np.empty_like(X)
        k_(N._layernorm_fwd)(X, wN, bN, YL, SL, PN)
        dXL, dwL, dbL = np.empty_like(X), np.empty(C, dt), bN.copy()
        k_(N._layernorm_bwd)(X, wN, SL, DY, dXL, dwL, dbL, False, False, True)
        h(ntag.format("layernorm"), YL, SL, dXL, dwL, dbL)
        for p_ in (0.0, 0.3):
            o1 = np.empty_like(X); k_(Dr._dropout)(X, o1, 7, 2, 5, 3, p_, False)
            o2 = DY.copy(); k_(Dr._dropout)(X, o2, 7, 2, 5, 3, p_, True)
            h(tag.format(f"dropout/{p_}"), o1, o2)
        o3, D3 = np.empty_like(X), DY.copy(); k_(Dr._dropout_d)(X, o3, D3, 7, 2, 5, 3, 0.3)
        h(tag.format("dropout_d"), o3, D3)

    # the split BLAS products of a step on numba's threads against one BLAS call (as serial and
    # parallel: the pairs test compares them), on shapes split by rows, by columns, and unevenly;
    # with the OpenBLAS backends, the only ones a step splits its products for (oneMKL's results
    # depend on the shapes of its calls: CI's later stages run with it).  In the "all" run (CI's
    # thorough stage) every shape, the README's run one (and the split products of the small step below)
    out["threads_backend"] = fastbp._blas.SPLIT_EXACT   # (oneMKL: never)
    # whether this CPU's BLAS gives a block of a product the whole call's bits (measured:
    # OpenBLAS's AVX-512 kernels do, its Haswell kernels on an AVX2 CPU do not)
    from fastbp._blas_split import split_exact
    out.setdefault("split_exact", {})[np.dtype(dt).name] = split_exact(dt)
    # the README's run: one shape (the step below compiles the split kernel anyway)
    split_shapes = ((301, 190, 70), (40, 150, 601), (1031, 64, 65)) if ALL else ((1031, 64, 65),)
    for (mm, kk, nn) in split_shapes if fastbp._blas.SPLIT_EXACT else ():
        for ta in (False, True):
            for tb in (False, True):
                Aa = rn(kk, mm) if ta else rn(mm, kk)
                Bb = rn(nn, kk) if tb else rn(kk, nn)
                C0 = rn(mm, nn)
                for acc in (False, True):
                    for var, f in (("serial", M._blas_mm), ("parallel", M._blas_mm_split)):
                        Cc = C0.copy(); f(Aa, Bb, Cc, ta, tb, acc)
                        h(f"{np.dtype(dt).name}/split/{mm}x{kk}x{nn}/{ta}/{tb}/{acc}/{var}", Cc)

    # whole steps: on numba's threads at 2 threads (context(threads=True)), serial at 1; the
    # README's run takes the smallest such step (each layer kind is the parallel twins of its
    # kernels, ~20 s of cold compilation for these layers: the "all" run's)
    if sys.argv[2] == "all":
        model = fastbp.Sequential(fastbp.Linear(96, 512), fastbp.BatchNorm1d(512), fastbp.GELU(), fastbp.Dropout(0.1),
                                  fastbp.Linear(512, 256), fastbp.LayerNorm(256), fastbp.ReLU(), fastbp.Linear(256, 10))
        opt = fastbp.AdamW(1e-3, weight_decay=0.01)
    else:
        model, opt = fastbp.Sequential(fastbp.Linear(96, 512), fastbp.ReLU(), fastbp.Linear(512, 10)), fastbp.SGD(0.1)
    st = fastbp.compile(model, optimizer=opt, batch_size=256, dtype=dt, seed=0)
    out[f"step_threads/{np.dtype(dt).name}"] = bool(st.threads)
    Xs, ys = rn(600, 96), rng.integers(0, 10, 600)
    st.fit(Xs, ys, epochs=2, seed=1)
    h(f"{np.dtype(dt).name}/step", st.param_vector, st.buffer_vector, *st.state_vectors, st.predict(Xs))

    # the ops wrappers, which pick serial/parallel by size (loops forced for products)
    tag = f"{np.dtype(dt).name}/ops/{{}}"
    saved = ops.BLAS_THRESHOLD
    for path, thr in (("loops", 1 << 62), ("blas", 0)):
        ops.BLAS_THRESHOLD = thr
        for act in ["none"] + [e.name for e in PUBLIC if e.code in LINEAR_CODES]:
            y = ops.linear_forward(Xm, Wm, Bm, act)
            z = ops.linear_forward(Xm, Wm, Bm)
            h(tag.format(f"linear/{path}/{act}"), y, *ops.linear_backward(Xm, Wm, y, Gm, act, z=z))
        h(tag.format(f"matmul/{path}"), ops.matmul(Xm, Wm))
    ops.BLAS_THRESHOLD = saved
    for e in PUBLIC:
        name = e.name
        y = getattr(ops, name + "_forward")(X)
        t = y if e.uses == "output" else X
        h(tag.format(name), y, getattr(ops, name + "_backward")(t, DY), getattr(ops, name + "_forward")(P))
    for gate in GATES:          # the ops wrappers are named after the gate (at 2 threads: its parallel kernels)
        name = _greg.by_code(gate).name
        h(tag.format(name), getattr(ops, name + "_forward")(X, row), *getattr(ops, name + "_backward")(X, row, DY))
    for name, tgt in (("softmax_cross_entropy", lab), ("svm_loss", lab), ("mse", T),
                      ("bce_with_logits", T))[:None if ALL else 1]:
        loss, d = getattr(ops, name)(X, tgt)
        h(tag.format(name), d, np.float64(loss))
    # the norm wrappers (their kernels' two compilations round differently: one picked by size)
    wN, bN = rn(C), rn(C)
    yl, sl = ops.layer_norm_forward(X, wN, bN)
    h(tag.format("layer_norm"), yl, sl, *ops.layer_norm_backward(X, DY, sl, wN, bN))
    yb, sb = ops.batch_norm_forward(X, weight=wN, bias=bN, training=True)
    h(tag.format("batch_norm"), yb, sb, *ops.batch_norm_backward(X, DY, sb, wN, bN))

out["hashes"] = hashes
print("RESULT" + json.dumps(out))
'''


def _run(tmp_path, nthreads, dtypes, entries="all"):
    script = tmp_path / "threads_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ)
    env["NUMBA_NUM_THREADS"] = str(nthreads)
    env.pop("FASTBP_PARALLEL_THRESHOLD", None)
    return subprocess.Popen([sys.executable, str(script), dtypes, entries], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc):
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-4000:]
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module", params=["float32-some", pytest.param("float32-all", marks=pytest.mark.thorough),
                                        pytest.param("float64-all", marks=pytest.mark.thorough)])
def runs(tmp_path_factory, request):
    """The script's results at 1 and 2 threads: float32 with one registry entry per kind of
    loop body, no gate and the smallest step on numba's threads (the README's test command), and
    every entry, every gate and a step with every layer kind in float32 and float64 (CI's thorough
    stage: compiling every entry's parallel kernels is ~40 s per dtype on two cores)."""
    dtypes, entries = request.param.split("-")
    d1 = tmp_path_factory.mktemp("t1")
    d2 = tmp_path_factory.mktemp("t2")
    # one after the other: if the kernels are not in numba's on-disk cache yet,
    # the first run compiles them and the second loads them
    one = _result(_run(d1, 1, dtypes, entries))
    two = _result(_run(d2, 2, dtypes, entries))
    return one, two


def test_subprocesses_really_ran_with_1_and_2_threads(runs):
    one, two = runs
    assert one["threads"] == 1 and one["config_threads"] == 1
    assert two["threads"] == 2 and two["config_threads"] == 2
    # these shapes take the parallel path at any thread count (by size: the norm kernels' two
    # compilations round differently, and at one thread the ops' layer_norm gave other bits)
    assert one["picks_parallel"] and two["picks_parallel"]
    steps = [k for k in one if k.startswith("step_threads/")]
    # the steps run on numba's threads (the parallel twins, split products) at any thread count,
    # with the OpenBLAS backends (with oneMKL on its own threads: CI's later stages)
    want = one["threads_backend"]
    assert steps and all(one[k] == want for k in steps) and all(two[k] == want for k in steps)


def _inexact_split(run, key):
    """A split BLAS product's key where this CPU's BLAS does not give a block the whole call's
    bits (measured in the subprocess: fastbp._blas_split.split_exact; OpenBLAS's Haswell
    kernels on an AVX2 CPU): its blocks (fastbp.config.SPLIT_BLOCKS, the same at 1 and 2
    threads) may differ from the one call of its serial variant."""
    dt, _, rest = key.partition("/")
    return rest.startswith("split/") and not run["split_exact"][dt]


def test_outputs_bitwise_equal_at_1_and_2_threads(runs):
    """Every output, the split products and the steps on numba's threads included, on every
    CPU: a product's blocks are fastbp.config.SPLIT_BLOCKS, never the thread count."""
    one, two = runs
    h1, h2 = one["hashes"], two["hashes"]
    assert set(h1) == set(h2) and len(h1) > (100 if one["entries"] == "all" else 50)
    differ = sorted(k for k in h1 if h1[k] != h2[k])
    assert not differ, f"outputs differ between 1 and 2 threads: {differ}"


def test_parallel_variant_bitwise_equal_to_serial(runs):
    for run in runs:
        h = run["hashes"]
        pairs = [(k, k[: -len("/serial")] + "/parallel") for k in h if k.endswith("/serial")]
        # per dtype (39 each today in the "all" runs, 21 in "some"; the dtypes are separate cases)
        assert len(pairs) > (25 if run["entries"] == "all" else 18)
        differ = sorted(a for a, b in pairs if h[a] != h[b] and not _inexact_split(run, a))
        assert not differ, f"serial and parallel compilations differ ({run['threads']} threads): {differ}"


def test_split_exact_never_claims_exactness_the_split_products_lack(runs):
    """fastbp._blas_split.split_exact, measured in each subprocess, is False wherever the
    script's split products (2 blocks at 2 threads) differ from one call; where it is True
    they are compared above."""
    one, two = runs
    assert one["split_exact"] == two["split_exact"]
    h = two["hashes"]
    for dt, exact in two["split_exact"].items():
        keys = [k for k in h if k.startswith(f"{dt}/split/") and k.endswith("/serial")]
        if any(h[k] != h[k[: -len("/serial")] + "/parallel"] for k in keys):
            assert not exact, dt


#: the Kernel objects the script runs (every one with a prange loop)
COVERED = {
    "_mm_nn", "_mm_nt", "_mm_tn", "_colsum",
    "_sum_bwd", "_scale", "_softmax_xent", "_svm", "_mse", "_bce_logits",
    "_sgd_update", "_adam_no_decay", "_adam_decoupled", "_adam_l2", "_rmsprop_update", "_poisson", "_mul_d",
    "_batchnorm_fwd", "_batchnorm_bwd", "_layernorm_fwd", "_layernorm_bwd", "_dropout", "_dropout_d",
}
#: kernels without a prange loop (nothing to parallelise)
SERIAL_ONLY = {"_sum_fwd", "_clip_grad_norm", "_sum_sq", "_batchnorm_running"}


def test_script_covers_every_parallel_kernel():
    import inspect

    from fastbp._jit import Kernel
    from fastbp.kernels import activations, dropout, gates, gemm, linear, losses, norm, optim

    found = {name for mod in (activations, dropout, gates, gemm, linear, losses, norm, optim)
             for name, obj in vars(mod).items() if isinstance(obj, Kernel)}
    assert found - SERIAL_ONLY == COVERED, "update SCRIPT for new or removed kernels"
    # the activation kernels are per registry entry (activations.kernels(code)); the
    # script runs every role of every entry through these dispatchers, by code
    from fastbp.registry import activations as reg
    for name in ("_act_fwd", "_act_bwd", "_act_fwd_d", "_bias_act_d", "_linear_fwd", "_linear_fwd_t", "_bias_act"):
        assert f".{name})" in SCRIPT, name
    assert "for act in ACT_CODES" in SCRIPT and "for act in KEEP_D_CODES" in SCRIPT
    roles = {"_act_fwd": "fwd", "_act_bwd": "bwd", "_act_fwd_d": "fwd_d", "_bias_act_d": "bias_act_d",
             "_linear_fwd": "linear_fwd", "_linear_fwd_t": "linear_fwd_t", "_bias_act": "bias_act"}
    for e in reg.entries():
        assert set(activations.kernels(e.code).all()) == set(roles.values())
        for k in activations.kernels(e.code).all().values():
            assert isinstance(k, Kernel)
    # the gate kernels are per registry entry too (gates.kernels(code)); the script runs
    # every built-in gate through the by-code dispatchers
    from fastbp.registry import gates as greg
    for name in ("_gate_fwd", "_gate_bwd"):
        assert f".{name})" in SCRIPT, name
    assert "for gate in GATES" in SCRIPT and [e.code for e in greg.entries()] == [0, 1, 2, 3, 4]
    assert 'GATES = [GATE_ADD, GATE_MUL, GATE_MAX, GATE_DIV, GATE_POW] if sys.argv[2] == "all"' in SCRIPT
    for e in greg.entries():
        assert all(isinstance(k, Kernel) for k in gates.kernels(e.code).roles())
    for name in COVERED:
        assert f".{name})" in SCRIPT or f".{name}," in SCRIPT, name
    for name in SERIAL_ONLY:
        mod = next(m for m in (activations, dropout, gates, gemm, linear, losses, norm, optim) if hasattr(m, name))
        assert "prange" not in inspect.getsource(getattr(mod, name).py_func)


@pytest.mark.parametrize("code", [pytest.param(0, marks=pytest.mark.thorough), 1,
                                  pytest.param(2, marks=pytest.mark.thorough),
                                  pytest.param(3, marks=pytest.mark.thorough)])
# (~4 s each, cold; mul in the README's run, whose "some" script run above takes no gate)
def test_broadcast_gate_gradient_is_the_sum_in_row_order(code):
    """A broadcast operand's gradient (a column of a (r, 1) operand against (r, c)) is the sum
    along the row in order, in the serial and in the parallel compilation alike.  With fast-math
    reassociation the parallel one vectorised that sum differently on an AVX-512 CPU (float64,
    r=1961, c=67: the last bit differed); the row's backward is now compiled without it."""
    import numpy as np
    from fastbp.kernels import gates as G
    from fastbp.registry import gates as greg
    rng = np.random.default_rng(2024)
    r, c = 1961, 67
    A = rng.standard_normal((r, 1))
    B = rng.standard_normal((r, c))
    dO = rng.standard_normal((r, c))
    local = greg.by_code(code).grads
    ga = np.array([[local(A[i, 0], B[i, j], dO[i, j])[0] for j in range(c)] for i in range(r)])
    expect = np.zeros((r, 1))
    for j in range(c):              # the row's sum, in order
        expect[:, 0] += ga[:, j]
    k = G._KERNELS(code).bwd
    for variant in (k.serial, k.parallel):
        dA, dB = np.zeros((r, 1)), np.zeros((r, c))
        variant(code, A, B, dO, dA, dB, False, False)
        assert np.array_equal(dA, expect), variant


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs CPU affinity (Linux) and two cores")
def test_split_blocks_do_not_follow_the_process_affinity():
    """numba's disk cache keeps the SPLIT_BLOCKS a kernel was compiled with: a process on one core
    (taskset) that loaded the two-core process's kernels computed with 2 blocks, one that compiled
    them itself with 1, and the two gave other float64 bits for the same seed and threads."""
    code = "import os; from fastbp import config; print(config.SPLIT_BLOCKS, len(os.sched_getaffinity(0)))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}))
    assert p.returncode == 0, p.stderr[-2000:]
    blocks, cores = map(int, p.stdout.split())
    assert cores == 1 and blocks == os.cpu_count()
