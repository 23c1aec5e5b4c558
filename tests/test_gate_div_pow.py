"""The division and power gates (``a / b``, ``a ** b``): registry entries of
:mod:`fastbp.registry.gates`, checked against numpy references of their forward and of
torch's backward rules, by finite differences (float64), against PyTorch, and through the
graph's operators and ``fastbp.grad``'s fused native step, with the worked examples of the
lecture notes that need them (the staged computation ``(x + s(y)) / (s(x) + (x + y)^2)``
and the sigmoid neuron built from ``*-1``, ``exp``, ``+1`` and ``1/x`` gates).  The CUDA
kernels of both gates are compared with these CPU kernels under the simulator: in the
README's run through the GPU grad function of ``tests/test_cuda_step.py``, kernel by kernel
in CI's thorough stage (``tests/test_cuda_kernels.py``, whose gate list holds them)."""
import itertools
import math

import numpy as np
import pytest

import fastbp
from fastbp import ops
from fastbp.gradcheck import numerical_gradient, relative_error
from fastbp.kernels import gates as G
from fastbp.registry import gates as R
from test_kernels import unbroadcast     # a gradient summed over the broadcast axes

DTYPES = [np.float32, np.float64]
PAIRS = [((5, 7), (5, 7)), ((5, 7), (1, 7)), ((5, 1), (1, 7)), ((1, 1), (4, 3)), ((4, 3), (4, 1))]
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def _reference(code, a, b, g):
    """numpy forward and torch's backward rules, in float64, before unbroadcasting."""
    a, b = np.broadcast_arrays(a.astype(np.float64), b.astype(np.float64))
    g = g.astype(np.float64)
    with np.errstate(all="ignore"):
        if code == R.DIV:
            return a / b, g / b, -g * a / (b * b)
        out = a ** b
        da = np.where(b == 0, 0.0, g * b * a ** (b - 1))
        db = np.where((a == 0) & (b >= 0), 0.0, g * out * np.log(a))
        return out, da, db


def _operands(rng, code, sa, sb, dt):
    if code == R.DIV:      # |b| >= 0.5: no cancellation-sized quotients
        b = rng.uniform(0.5, 2.0, sb) * rng.choice([-1.0, 1.0], sb)
        return rng.standard_normal(sa).astype(dt), b.astype(dt)
    return rng.uniform(0.2, 3.0, sa).astype(dt), rng.uniform(-2.5, 2.5, sb).astype(dt)


#: float64 in the README's test command (the dtype of the fused-step tests below: the same
#: compiled kernels); float32 (~4 s of cold compilation per gate) in CI's thorough stage, and in
#: the torch comparison of the extras stage
DTYPES_RUN = [np.float64, pytest.param(np.float32, marks=pytest.mark.thorough)]


@pytest.mark.parametrize("variant", ["serial", pytest.param("parallel", marks=pytest.mark.thorough)])
@pytest.mark.parametrize("dt", DTYPES_RUN)
@pytest.mark.parametrize("code", [R.DIV, R.POW], ids=["div", "pow"])
def test_kernels_match_numpy_and_torchs_rules(code, dt, variant):
    rng = np.random.default_rng(code)
    fwd, bwd = getattr(G._gate_fwd, variant), getattr(G._gate_bwd, variant)
    for sa, sb in PAIRS + [(q, p) for p, q in PAIRS]:
        a, b = _operands(rng, code, sa, sb, dt)
        shape = np.broadcast_shapes(sa, sb)
        g = rng.standard_normal(shape).astype(dt)
        ref, rda, rdb = _reference(code, a, b, g)
        out = np.full(shape, np.nan, dt)
        fwd(code, a, b, out)
        np.testing.assert_allclose(out, ref, **TOL[dt])
        da, db = np.full(sa, np.nan, dt), np.full(sb, np.nan, dt)
        bwd(code, a, b, g, da, db, False, False)
        np.testing.assert_allclose(da, unbroadcast(rda, sa), **TOL[dt])
        np.testing.assert_allclose(db, unbroadcast(rdb, sb), **TOL[dt])
        # accumulation, and a gradient that is not needed (size 0)
        da0 = rng.standard_normal(sa).astype(dt)
        da = da0.copy()
        bwd(code, a, b, g, da, np.empty((0, 0), dt), True, False)
        np.testing.assert_allclose(da, da0 + unbroadcast(rda, sa), **TOL[dt])


def test_ieee_results_and_torchs_exact_zeros():
    """Division by zero and a negative base give inf/NaN (never an exception, as numpy and
    torch); pow's gradients are exactly 0 where torch's are (b == 0 for a, even for an
    infinite upstream gradient; a == 0, b >= 0 for b, where an infinite one gives NaN, as
    torch's); div's b-gradient stays finite where b*b
    overflows."""
    a = np.array([[1.0, -1.0, 0.0, -8.0, 0.0, 0.0, 2.0, np.nan]])
    b = np.array([[0.0, 0.0, 0.0, 1 / 3, 2.0, -1.0, 0.0, 0.0]])
    out = np.empty_like(a)
    G._gate_fwd(R.DIV, a, b, out)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(out, a / b)
    G._gate_fwd(R.POW, a, b, out)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(out, a ** b)      # nan ** 0 is 1, as numpy and torch
    g = np.full_like(a, np.inf)
    da, db = np.empty_like(a), np.empty_like(b)
    G._gate_bwd(R.POW, a, b, g, da, db, False, False)
    assert da[0, 0] == da[0, 1] == da[0, 2] == da[0, 6] == da[0, 7] == 0.0     # b == 0
    # a == 0, b >= 0: torch's db is dout * 0 (a product): NaN for an infinite dout, 0 for a finite one
    assert np.isnan(db[0, 2]) and np.isnan(db[0, 4])
    G._gate_bwd(R.POW, a, b, np.ones_like(a), da, db, False, False)
    assert db[0, 2] == db[0, 4] == 0.0
    G._gate_bwd(R.POW, a, b, g, da, db, False, False)
    assert db[0, 5] == -np.inf and np.isnan(db[0, 1]) and np.isnan(db[0, 3])
    for dt in (np.float64,):     # (float32: test_against_torch's extreme values)
        big = np.array([[1e30]], dt) if dt is np.float32 else np.array([[1e300]], dt)
        da, db = np.empty_like(big), np.empty_like(big)
        G._gate_bwd(R.DIV, big, big * 4, np.ones_like(big), da, db, False, False)
        assert db[0, 0] == pytest.approx(-1 / (4 * 4 * big[0, 0]), rel=1e-6)   # -a / b^2, b^2 overflowing
        assert da[0, 0] == pytest.approx(1 / (4 * big[0, 0]), rel=1e-6)
        # a == 0 over a subnormal b: dout / b overflows; torch's -dout ((a / b) / b) is 0
        # (it was -(dout / b) (a / b) = -inf * 0 = NaN)
        tiny = np.array([[1e-320]], dt)
        G._gate_bwd(R.DIV, np.zeros_like(tiny), tiny, np.ones_like(tiny), da, db, False, False)
        assert db[0, 0] == 0.0 and da[0, 0] == np.inf


def test_finite_differences_through_the_fused_step():
    """float64 gradients of a graph of both gates (broadcast operands, a value used twice)
    from fastbp.grad's fused native step, against central differences."""
    rng = np.random.default_rng(3)
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    W, C = rng.uniform(0.5, 1.5, 3), rng.uniform(1.0, 2.0, (1, 1))
    w, c = g.param("w", W), g.param("c", C)
    f = fastbp.sum((x / w) ** 2 + w ** x / (c + x * x) + 2 ** (x / c) - 1 / w)
    fn = fastbp.grad(f, wrt=[x, w, c], batch_size=4)
    X = rng.uniform(-1.0, 1.0, (4, 3))

    def ref(X, W, C):
        return float(np.sum((X / W) ** 2 + W ** X / (C + X * X) + 2 ** (X / C) - 1 / W))

    value, grads = fn(x=X)
    assert value == pytest.approx(ref(X, W, C), rel=1e-13)
    for name, arr, f_of in (("x", X, lambda v: ref(v, W, C)), ("w", W, lambda v: ref(X, v, C)),
                            ("c", C, lambda v: ref(X, W, v))):
        num = numerical_gradient(f_of, arr.copy())
        assert relative_error(grads[name], num) < 1e-7, name


def test_graph_operators_and_the_notes_examples():
    """``/`` and ``**`` with nodes and constants on either side; the staged computation
    ``f = (x + s(y)) / (s(x) + (x + y)^2)`` at x = 3, y = -4 against its hand-written
    backward pass; the sigmoid neuron of backprop.md from primitive gates (its golden
    numbers)."""
    g = fastbp.Graph()
    x, y = g.input("x", ()), g.input("y", ())
    sig = fastbp.sigmoid
    f = (x + sig(y)) / (sig(x) + (x + y) ** 2)
    value, grads = fastbp.grad(f, wrt=[x, y])(x=3.0, y=-4.0)
    X, Y = 3.0, -4.0
    sy, sx = 1 / (1 + math.exp(-Y)), 1 / (1 + math.exp(-X))
    num, den = X + sy, sx + (X + Y) ** 2
    dden = -num / den ** 2
    dxpy = 2 * (X + Y) * dden
    assert value == pytest.approx(num / den, rel=1e-15)
    assert grads["x"] == pytest.approx(dxpy + (1 - sx) * sx * dden + 1 / den, rel=1e-14)
    assert grads["y"] == pytest.approx(dxpy + (1 - sy) * sy / den, rel=1e-14)

    g = fastbp.Graph()
    w0, x0, w1, x1, w2 = (g.input(n, ()) for n in ("w0", "x0", "w1", "x1", "w2"))
    f = 1 / (1 + math.e ** ((w0 * x0 + w1 * x1 + w2) * -1))
    value, grads = fastbp.grad(f, wrt=[w0, x0, w1, x1, w2])(w0=2.0, x0=-1.0, w1=-3.0, x1=-2.0, w2=-3.0)
    assert value == pytest.approx(0.7310585786300049, rel=1e-14)
    want = {"w0": -0.19661193324148185, "x0": 0.3932238664829637, "w1": -0.3932238664829637,
            "x1": -0.5898357997244456, "w2": 0.19661193324148185}
    assert grads == pytest.approx(want, rel=1e-13)

    g = fastbp.Graph()
    x, y = g.input("x", (2,)), g.input("y", (2,))
    xv, yv = np.array([1.5, 4.0]), np.array([2.0, 0.5])
    cases = ((x / 4, xv / 4, np.full(2, 0.25)), (4 / x, 4 / xv, -4 / xv ** 2),
             (x ** 3, xv ** 3, 3 * xv ** 2), (3 ** x, 3 ** xv, 3 ** xv * math.log(3)),
             (x ** y, xv ** yv, yv * xv ** (yv - 1)))
    for expr, want, dwant in cases:
        assert expr.op in ("div", "pow") and expr.shape == (2,)
        feeds = {"x": xv, "y": yv} if y in expr.inputs else {"x": xv}
        value, grads = fastbp.grad(fastbp.sum(expr), wrt=[x])(**feeds)
        assert value == pytest.approx(float(np.sum(want)), rel=1e-14)
        np.testing.assert_allclose(grads["x"], dwant, rtol=1e-14)
    with pytest.raises(TypeError):
        x / "a"
    with pytest.raises(fastbp.GraphError, match="div"):
        x / g.input("z", (3,))
    with pytest.raises(fastbp.GraphError, match="pow"):
        g.input("u", (3,)) ** x


@pytest.mark.parametrize("dt", DTYPES_RUN)
def test_ops_wrappers(dt):
    a = np.array([[1.0, 2.0], [3.0, 4.0]], dt)
    b = np.array([2.0, 0.5], dt)
    np.testing.assert_allclose(ops.div_forward(a, b), a / b, rtol=1e-7)
    np.testing.assert_allclose(ops.pow_forward(a, b), a ** b, rtol=1e-6)
    da, db = ops.div_backward(a, b, np.ones_like(a))
    np.testing.assert_allclose(da, 1 / np.broadcast_to(b, a.shape), rtol=1e-7)
    np.testing.assert_allclose(db, (-a / b ** 2).sum(0), rtol=1e-6)
    da, db = ops.pow_backward(a, b, np.ones_like(a))
    np.testing.assert_allclose(da, b * a ** (b - 1), rtol=1e-6)
    np.testing.assert_allclose(db, (a ** b * np.log(a)).sum(0), rtol=1e-6)
    out = np.empty_like(a)
    assert ops.div_forward(a, b, out=out) is out
    for name in ("div_forward", "div_backward", "pow_forward", "pow_backward"):
        doc = getattr(ops, name).__doc__
        assert "Parameters" in doc and "Returns" in doc and name in ops.__all__
    with pytest.raises(TypeError, match="b"):
        ops.div_forward(a, b.astype(np.float16))
    with pytest.raises(ValueError, match="cannot be broadcast"):
        ops.pow_forward(a, np.ones(3, dt))


@pytest.mark.extras
@pytest.mark.parametrize("dt", DTYPES)
def test_against_torch(dt):
    """torch.div and torch.pow: forward and both gradients, zeros, negative bases, b == 0 and
    a broadcast operand included (NaN and inf in the same places), for finite upstream
    gradients and for infinite and NaN ones (where a select and a product differ)."""
    torch = pytest.importorskip("torch")
    a_all = np.array([[1.5, -2.0, 0.0, 3.0, 0.0, -8.0, 2.0, 0.25],
                      [0.5, 4.0, -1.0, 0.0, 2.0, 1.0, -0.5, 9.0]], dt)
    b = np.array([[2.0, -1.0, 0.0, 0.5, -2.0, 1 / 3, 0.0, 3.0]], dt)
    g = np.linspace(-1.0, 2.0, a_all.size).reshape(a_all.shape).astype(dt)
    g_inf = np.where(np.arange(a_all.size).reshape(a_all.shape) % 2 == 0, np.inf, np.nan).astype(dt)
    cases = itertools.product((("div", torch.div), ("pow", torch.pow)), (g, g_inf), (2, 1))
    for (name, tf), g, rows in cases:      # (one row: no sum over rows hides a NaN of db)
        a, g = a_all[:rows], g[:rows]
        ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        tout = tf(ta, tb)
        tout.backward(torch.tensor(g))
        out = getattr(ops, f"{name}_forward")(a, b)
        da, db = getattr(ops, f"{name}_backward")(a, b, g)
        for got, want in ((out, tout.detach().numpy()), (da, ta.grad.numpy()), (db, tb.grad.numpy())):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
            fin = np.isfinite(want)
            np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
            np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5 if dt is np.float32 else 1e-13,
                                       atol=1e-6, err_msg=name)
