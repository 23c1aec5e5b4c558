"""The gate registry (issue 13): a gate is one entry, its scalar forward next to its local
gradients; adding one is registering one entry (proved with a test-only ``min_test`` gate
through the CPU kernels, a graph op and the fused native step of ``fastbp.grad``)."""
import numpy as np
import pytest

import fastbp
from fastbp.graph import gate as graph_gate
from fastbp.kernels import gates as G
from fastbp.registry import gates as R
from test_kernels import unbroadcast     # a gradient summed over the broadcast axes


def _min(a, b):
    return a if a <= b or a != a else b


def _d_min(a, b, g):
    zero = type(g)(0.0)
    return (zero if a > b else g), (zero if a <= b else g)


MIN_TEST = R.Gate(R.CAPACITY - 1, "min_test", _min, _d_min, "out = min(a, b)",
                  "da = dout * 1[not a > b], db = dout * 1[not a <= b] (ties to a)")


@pytest.fixture
def min_gate():
    R.register(MIN_TEST)
    yield MIN_TEST
    R.unregister(MIN_TEST.name)


def _ref_min(a, b, g):
    """numpy reference of the test entry: (out, da, db) before unbroadcasting."""
    a, b = np.broadcast_arrays(a, b)
    out = np.where((a <= b) | np.isnan(a), a, b)
    da = np.where(a > b, 0.0, g)
    db = np.where(a <= b, 0.0, g)
    return out, da, db


def test_entries_hold_their_scalar_math():
    """Each built-in entry's forward and local gradients, as plain Python on scalars."""
    add, mul, mx = R.get("add"), R.get("mul"), R.get("max")
    assert (add.forward(2.0, 3.0), add.grads(2.0, 3.0, 5.0)) == (5.0, (5.0, 5.0))
    assert (mul.forward(2.0, 3.0), mul.grads(2.0, 3.0, 5.0)) == (6.0, (15.0, 10.0))
    assert mx.forward(2.0, 3.0) == 3.0 and mx.grads(2.0, 3.0, 5.0) == (0.0, 5.0)
    assert mx.grads(3.0, 3.0, 5.0) == (5.0, 0.0)                     # ties to a
    nan = float("nan")
    assert np.isnan(mx.forward(nan, 1.0)) and np.isnan(mx.forward(1.0, nan))
    assert mx.grads(nan, 1.0, 5.0) == (5.0, 5.0) == mx.grads(1.0, nan, 5.0)   # as torch.maximum
    dv, pw = R.get("div"), R.get("pow")
    assert (dv.forward(3.0, 2.0), dv.grads(3.0, 2.0, 5.0)) == (1.5, (2.5, -3.75))
    assert (pw.forward(3.0, 2.0), pw.grads(3.0, 2.0, 5.0)) == (9.0, (30.0, 45.0 * np.log(3.0)))
    assert pw.grads(0.0, 2.0, 5.0) == (0.0, 0.0)                                  # torch's zeros
    da, db = pw.grads(0.0, 0.0, np.inf)         # torch: da a select (0), db a product (inf * 0)
    assert da == 0.0 and np.isnan(db)
    assert [e.name for e in R.entries()] == ["add", "mul", "max", "div", "pow"]
    with pytest.raises(ValueError, match="unknown gate code"):
        R.by_code(R.CAPACITY - 1)
    with pytest.raises(ValueError, match="unknown gate 'nope'"):
        R.get("nope")
    with pytest.raises(ValueError, match="already"):
        R.register(R.Gate(R.ADD, "add2", _min, _d_min, "", ""))
    with pytest.raises(ValueError, match="code must be"):
        R.Gate(R.CAPACITY, "x", _min, _d_min, "", "")


@pytest.mark.extras
def test_max_gate_matches_torch_nan_rule():
    """With NaN on either side torch.maximum sends dout to both inputs (its comparisons with
    NaN are false); fastbp's kernels do the same.  Ties: torch splits, fastbp routes to a."""
    torch = pytest.importorskip("torch")
    a = np.array([[np.nan, 1.0, np.nan, 3.0, -np.inf]])
    b = np.array([[0.0, np.nan, np.nan, 4.0, np.inf]])
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    torch.maximum(ta, tb).backward(torch.ones_like(ta))
    out, da, db = np.empty_like(a), np.empty_like(a), np.empty_like(b)
    G._gate_fwd(R.MAX, a, b, out)
    G._gate_bwd(R.MAX, a, b, np.ones_like(a), da, db, False, False)
    np.testing.assert_array_equal(out, torch.maximum(ta, tb).detach().numpy())
    np.testing.assert_array_equal(da, ta.grad.numpy())
    np.testing.assert_array_equal(db, tb.grad.numpy())


def test_an_unknown_gate_code_is_an_error_or_nan():
    a = np.ones((2, 3))
    out = np.empty_like(a)
    with pytest.raises(ValueError, match="unknown gate code"):
        G._gate_fwd(R.CAPACITY - 1, a, a, out)
    # a kernel handed another entry's code: NaN, never another gate
    G.kernels(R.ADD).fwd.serial(R.MUL, a, a, out)
    assert np.isnan(out).all()
    da, db = np.empty_like(a), np.empty_like(a)
    G.kernels(R.MAX).bwd.serial(R.ADD, a, a, a, da, db, False, False)
    assert np.isnan(da).all() and np.isnan(db).all()
    with pytest.raises(ValueError, match="unknown gate"):
        graph_gate("nope", fastbp.Graph().input("x", ()), 1.0)


def _min_kernels_match_reference(entry, variant):
    rng = np.random.default_rng(5)
    pairs = [((4, 5), (4, 5)), ((4, 5), (1, 5)), ((4, 1), (1, 5)), ((1, 1), (4, 5))]
    for sa, sb in pairs:
        a = np.round(rng.standard_normal(sa) * 2)      # integers: ties
        b = np.round(rng.standard_normal(sb) * 2)
        a.flat[0] = np.nan
        shape = np.broadcast_shapes(sa, sb)
        g = rng.standard_normal(shape)
        ref, rda, rdb = _ref_min(a, b, g)
        out = np.empty(shape)
        getattr(G._gate_fwd, variant)(entry.code, a, b, out)
        np.testing.assert_array_equal(out, ref)
        da, db = np.empty(sa), np.empty(sb)
        getattr(G._gate_bwd, variant)(entry.code, a, b, g, da, db, False, False)
        np.testing.assert_allclose(da, unbroadcast(rda, sa), rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(db, unbroadcast(rdb, sb), rtol=1e-15, atol=1e-15)


@pytest.mark.thorough
def test_a_new_gate_parallel_kernels(min_gate):
    """The parallel variants of min_test's kernels (compiling them costs seconds)."""
    _min_kernels_match_reference(min_gate, "parallel")


def test_a_new_gate_is_one_entry(min_gate):
    """min_test through the CPU kernels (every broadcast pair, NaN, ties), a graph op and
    the fused native step of fastbp.grad, with nothing but its registry entry."""
    _min_kernels_match_reference(min_gate, "serial")
    # a graph op, compiled into the fused native step of fastbp.grad
    gr = fastbp.Graph()
    x, y = gr.input("x", (3,)), gr.input("y", (3,))
    f = fastbp.sum(graph_gate("min_test", x * 2.0, y) * y)
    xv, yv = np.array([1.0, -2.0, 0.5]), np.array([3.0, -5.0, 1.0])
    value, grads = fastbp.grad(f, wrt=[x, y])(x=xv, y=yv)
    m = np.minimum(2 * xv, yv)
    assert value == pytest.approx(float(np.sum(m * yv)), abs=1e-12)
    to_a = 2 * xv <= yv        # ties to a
    np.testing.assert_allclose(grads["x"], np.where(to_a, 2 * yv, 0.0), atol=1e-12)
    np.testing.assert_allclose(grads["y"], m + np.where(to_a, 0.0, yv), atol=1e-12)


def test_an_unknown_gate_code_in_a_tape_is_an_error_when_compiled():
    """The executor checks every gate code of a tape before it runs (ValueError), and
    registers only the kernels of the gates the tape uses."""
    from fastbp import _executor as ex
    from fastbp.kernels.table import gate_kernel_id
    gr = fastbp.Graph()
    x, y = gr.input("x", (3,)), gr.input("y", (3,))
    fn = fastbp.grad(fastbp.sum(fastbp.maximum(x, y)), wrt=[x])
    tape = fn.plan.tape.copy()
    need = ex.kernels_for(tape)
    assert {gate_kernel_id(R.MAX, 0), gate_kernel_id(R.MAX, 1)} <= need
    assert not need & {gate_kernel_id(R.ADD, 0), gate_kernel_id(R.MUL, 1)}
    rows = np.flatnonzero(np.isin(tape[:, ex.C_OP], (ex.OP_GATE, ex.OP_GATE_BWD)))
    assert rows.size == 2
    for row in rows:
        for bad in (R.CAPACITY - 1, R.CAPACITY + 3, -1):
            t = tape.copy()
            t[row, ex.C_G] = bad
            with pytest.raises(ValueError, match=f"unknown gate code {bad}"):
                ex.kernels_for(t)


def test_a_corrupt_gate_code_reaching_the_interpreter_is_an_error_status():
    """A gate code outside the kernel table in a tape that is run anyway: STATUS_BAD_OP,
    nothing applied (never another gate)."""
    from fastbp import _executor as ex
    model = fastbp.Sequential(fastbp.Linear(3, 3), fastbp.Residual(fastbp.Linear(3, 3)), fastbp.Linear(3, 2))
    step = fastbp.compile(model, loss="mse", optimizer=fastbp.SGD(lr=0.1), batch_size=2, dtype=np.float64)
    tape = step.plan.tape.copy()
    x, y = np.ones((2, 3)), np.zeros((2, 2))
    for op in (ex.OP_GATE, ex.OP_GATE_BWD):
        row = int(np.flatnonzero(tape[:, ex.C_OP] == op)[0])
        for bad in (R.CAPACITY + 3, -1):
            before = step.param_vector.copy()
            step.plan.tape[row, ex.C_G] = bad
            try:
                status, _, _ = ex.run_tape(step._ctx, 0, step.plan.sec[ex.S_END], 2, x, np.zeros(0, np.int64), y)
            finally:
                step.plan.tape[...] = tape
            assert status == ex.STATUS_BAD_OP, (op, bad)
            np.testing.assert_array_equal(step.param_vector, before)


@pytest.mark.parametrize("code", [0, pytest.param(1, marks=pytest.mark.thorough)])
def test_a_broadcast_operands_gradient_is_summed_in_float64(code):
    """The gradient of an operand broadcast over 6e4 float32 rows: each element the float64 sum of
    the local gradients, rounded once (a float32 running sum drifted ~1e-4 relative; torch sums
    pairwise), for (1, c), (1, 1) and (r, 1) operands, on both sides of the gate."""
    rng = np.random.default_rng(5)
    r, c = 60_000, 70               # a full and a narrow block of columns
    dO = (rng.standard_normal((r, c)) + 0.5).astype(np.float32)
    Bfull = rng.standard_normal((r, c)).astype(np.float32)
    k = G.kernels(code).bwd.serial
    for shape in [(1, c), (1, 1)]:
        A = rng.standard_normal(shape).astype(np.float32)
        dA, dB = np.zeros(shape, np.float32), np.zeros((r, c), np.float32)
        k(code, A, Bfull, dO, dA, dB, False, False)
        ga = dO if code == 0 else dO * Bfull                 # the local gradient, in float32
        want = ga.astype(np.float64).sum(0, keepdims=True)
        if shape == (1, c):
            np.testing.assert_array_equal(dA, want.astype(np.float32))
        else:
            np.testing.assert_allclose(dA, want.sum(keepdims=True), rtol=1e-7)
        np.testing.assert_array_equal(dB, dO if code == 0 else dO * A)
        # the other side of the gate, and accumulation into an existing gradient
        dB1, dA1 = np.full(shape, 2.0, np.float32), np.zeros((r, c), np.float32)
        k(code, Bfull, A, dO, dA1, dB1, False, True)
        total = want if shape == (1, c) else want.sum(keepdims=True)
        np.testing.assert_allclose(dB1, (total + 2.0).astype(np.float32), rtol=1e-7)
    # an (r, 1) operand against a (1, c) one: each row's sum over the columns in float64
    A, Brow = rng.standard_normal((r, 1)).astype(np.float32), rng.standard_normal((1, c)).astype(np.float32)
    dA, dB = np.zeros((r, 1), np.float32), np.zeros((1, c), np.float32)
    k(code, A, Brow, dO, dA, dB, False, False)
    ga = dO if code == 0 else dO * Brow
    np.testing.assert_allclose(dA, ga.astype(np.float64).sum(1, keepdims=True), rtol=1e-6, atol=1e-6)
    gb = dO if code == 0 else dO * A
    np.testing.assert_array_equal(dB, gb.astype(np.float64).sum(0, keepdims=True).astype(np.float32))
