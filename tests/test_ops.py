"""The public wrappers in fastbp.ops: results, gradients, validation.

Results are compared with plain numpy float64 references; gradients with
finite differences of the forward wrappers.  Fixtures force the serial or
the parallel kernel variant and the own-loop or BLAS product path, so both
are exercised at the small shapes used here.
"""
import math
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _jit, ops
from fastbp.gradcheck import gradcheck

DTYPES = [np.float32, np.float64]
ACTS = ["none", "relu", "sigmoid", "tanh"]
GC_RTOL = {np.float32: 2e-2, np.float64: 1e-6}


@pytest.fixture
def rng():
    return np.random.default_rng(99)


@pytest.fixture(params=["serial", "parallel"])
def variant(request, monkeypatch):
    """Make every Kernel.pick return the given variant."""
    v = request.param
    monkeypatch.setattr(_jit.Kernel, "pick", lambda self, work: getattr(self, v))
    return v


@pytest.fixture(params=["loops", "blas"])
def mm_path(request, monkeypatch):
    """Send every matrix product to the own loops or to BLAS."""
    monkeypatch.setattr(ops, "BLAS_THRESHOLD", 0 if request.param == "blas" else 1 << 62)
    return request.param


def thorough_case(params):
    """The float64 cases of the parallel variants run in CI's thorough stage only (see
    conftest.py): each compiles kernels' parallel variants for float64 (seconds), while the
    float32 cases run every parallel loop and the float64 serial ones every float64 path.
    Likewise the parallel cases of the linear wrappers with sigmoid and tanh (each compiles
    that entry's parallel fused-linear and epilogue kernels, seconds): every activation's
    kernels are copies of the same loop templates with its scalar body inlined
    (kernels/factory.py), whose parallel loops the "relu" cases run
    (test_linear_*[parallel-*-float32-relu]), and whose scalar bodies the serial cases
    check (test_linear_*[serial-*-float32-sigmoid/tanh]); test_kernels.thorough_case argues
    the same for the kernels themselves.  The parallel case of the plain-loop linear without
    an activation ("none": 17 s of the README command on a cold cache) is thorough too: its
    loops are ReLU's without the activation pass, which the serial "none" case checks."""
    if params.get("variant") != "parallel":
        return False
    if params.get("act") == "none" and params.get("mm_path") == "loops":
        return True
    return params.get("dt") is np.float64 or params.get("act") in ("sigmoid", "tanh")


def randn(rng, shape, dt, scale=1.0):
    return np.array(scale * rng.standard_normal(shape), dtype=dt)


def close(got, ref, dt, k=1, what=""):
    ref = np.asarray(ref, np.float64)
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    assert got.dtype == dt, what
    if dt == np.float64:
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=4e-15 * k * scale, err_msg=what)
    else:
        np.testing.assert_allclose(got, ref, rtol=3e-6, atol=3e-7 * k * scale, err_msg=what)


def sigmoid_ref(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


def act_ref(act, z):
    return {"none": z, "relu": np.maximum(z, 0), "sigmoid": sigmoid_ref(z), "tanh": np.tanh(z)}[act]


def dact_ref(act, y):
    return {"none": np.ones_like(y), "relu": (y > 0) * 1.0, "sigmoid": y * (1 - y), "tanh": 1 - y * y}[act]


# ------------------------------------------------------------------- linear
# one case per activation (the parallel cases of sigmoid and tanh are thorough: thorough_case)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_linear_forward_backward_match_numpy(rng, dt, variant, mm_path, act):
    for n, d_in, d_out in [(1, 1, 1), (7, 33, 1), (33, 7, 5), (5, 257, 7), (257, 3, 33)]:
        x = randn(rng, (n, d_in), dt)
        W = randn(rng, (d_in, d_out), dt)
        b = randn(rng, (d_out,), dt)
        x64, W64, b64 = (a.astype(np.float64) for a in (x, W, b))
        for bias in (b, None):
            what = f"{act} bias={bias is not None} {n, d_in, d_out} {mm_path}"
            z = x64 @ W64 + (b64 if bias is not None else 0)
            y = ops.linear_forward(x, W, bias, act)
            close(y, act_ref(act, z), dt, d_in, what)
        dy = randn(rng, (n, d_out), dt)
        dy_before = dy.copy()
        y = ops.linear_forward(x, W, b, act)
        dx, dW, db = ops.linear_backward(x, W, y, dy, act)
        np.testing.assert_array_equal(dy, dy_before)  # the caller's dy is not touched
        dz = dy.astype(np.float64) * dact_ref(act, y.astype(np.float64))
        close(dW, x64.T @ dz, dt, n, what)
        close(dx, dz @ W64.T, dt, d_out, what)
        close(db, dz.sum(0), dt, n, what)
        dx2, dW2, db2 = ops.linear_backward(x, W, y, dy, act, need_dx=False)
        assert dx2 is None
        np.testing.assert_array_equal(dW2, dW)
        np.testing.assert_array_equal(db2, db)


# one case per activation (the parallel cases of sigmoid and tanh are thorough: thorough_case)
@pytest.mark.parametrize("act", ["none", "sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("dt", DTYPES)
def test_linear_gradcheck(rng, dt, variant, mm_path, act):
    x = randn(rng, (5, 4), dt)
    W = randn(rng, (4, 3), dt, 0.5)
    b = randn(rng, (3,), dt, 0.5)
    G = randn(rng, (5, 3), dt)
    if act == "relu":  # keep the pre-activations off ReLU's kink
        for _ in range(100):
            if np.abs(x.astype(np.float64) @ W + b).min() > 0.05:
                break
            b = randn(rng, (3,), dt, 0.5)
        else:
            pytest.fail("no kink-free bias found")

    def f(x, W, b):
        return np.sum(G.astype(np.float64) * ops.linear_forward(x, W, b, act))

    def grads(x, W, b):
        dx, dW, db = ops.linear_backward(x, W, ops.linear_forward(x, W, b, act), G, act)
        return {"x": dx, "W": dW, "b": db}

    assert gradcheck(f, {"x": x, "W": W, "b": b}, grads)


@pytest.mark.parametrize("dt", DTYPES)
def test_matmul_matches_numpy(rng, dt, variant, mm_path):
    for m, k, n in [(1, 1, 1), (7, 1, 33), (33, 7, 1), (9, 257, 3), (0, 3, 2), (2, 0, 3)]:
        a = randn(rng, (m, k), dt)
        b = randn(rng, (k, n), dt)
        c = ops.matmul(a, b)
        close(c, a.astype(np.float64) @ b, dt, k)
        out = np.full((m, n), np.nan, dt)
        assert ops.matmul(a, b, out=out) is out
        close(out, a.astype(np.float64) @ b, dt, k)


def test_linear_out_argument(rng):
    x = randn(rng, (7, 5), np.float64)
    W = randn(rng, (5, 3), np.float64)
    out = np.full((7, 3), np.nan)
    assert ops.linear_forward(x, W, None, "relu", out=out) is out
    close(out, np.maximum(x @ W, 0), np.float64, 5)
    with pytest.raises(ValueError, match="out overlaps x"):
        sq = randn(rng, (4, 4), np.float64)
        ops.linear_forward(sq, randn(rng, (4, 4), np.float64), out=sq)


def test_blas_threshold_picks_the_path(monkeypatch, rng):
    """Products below BLAS_THRESHOLD never reach BLAS; products at or above always do."""
    calls = []
    from fastbp.kernels import gemm
    real = gemm._blas_mm
    monkeypatch.setattr(gemm, "_blas_mm", lambda *a: (calls.append(a[2].shape), real(*a)))
    small = int(round(ops.BLAS_THRESHOLD ** (1 / 3))) - 1
    a = randn(rng, (small, small), np.float64)
    ops.matmul(a, a)
    ops.linear_forward(a, a)
    assert calls == []
    big = int(round(ops.BLAS_THRESHOLD ** (1 / 3))) + 1
    a = randn(rng, (big, big), np.float64)
    ops.matmul(a, a)
    ops.linear_forward(a, a, np.zeros(big), "relu")
    ops.linear_backward(a, a, a, a, "relu")
    assert len(calls) == 4


# -------------------------------------------------------------- activations
UNARY = {
    "relu": (ops.relu_forward, ops.relu_backward, lambda x: np.maximum(x, 0), lambda y: (y > 0) * 1.0),
    "sigmoid": (ops.sigmoid_forward, ops.sigmoid_backward, sigmoid_ref, lambda y: y * (1 - y)),
    "tanh": (ops.tanh_forward, ops.tanh_backward, np.tanh, lambda y: 1 - y * y),
}


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name", list(UNARY))
def test_activations_match_numpy_any_ndim(rng, name, dt, variant):
    fwd, bwd, ref, dref = UNARY[name]
    for shape in [(), (1,), (7,), (33, 7), (1, 257), (3, 5, 7), (2, 0, 3), (2 * 1024 + 7,), (3072,)]:
        x = randn(rng, shape, dt, 3.0)
        y = fwd(x)
        assert y.shape == shape and y.dtype == dt
        close(y, ref(x.astype(np.float64)), dt, what=f"{name} {shape}")
        dy = randn(rng, shape, dt)
        dx = bwd(y, dy)
        assert dx.shape == shape
        close(dx, dy.astype(np.float64) * dref(y.astype(np.float64)), dt, what=f"{name} {shape}")
    # out=, in place
    x = randn(rng, (7, 33), dt)
    out = np.empty_like(x)
    assert fwd(x, out=out) is out
    xi = x.copy()
    assert fwd(xi, out=xi) is xi
    np.testing.assert_array_equal(xi, out)
    dy = randn(rng, (7, 33), dt)
    dx = bwd(out, dy)
    assert bwd(out, dy, out=dy) is dy
    np.testing.assert_array_equal(dy, dx)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name", list(UNARY))
def test_activations_gradcheck(rng, name, dt, variant):
    fwd, bwd, _, _ = UNARY[name]
    x = randn(rng, (4, 9), dt, 2.0)
    x[np.abs(x) < 0.1] += 0.3  # off ReLU's kink
    G = randn(rng, (4, 9), dt)

    def f(x):
        return np.sum(G.astype(np.float64) * fwd(x))

    assert gradcheck(f, [x], lambda x: [bwd(fwd(x), G)])


@pytest.mark.parametrize("dt", DTYPES)
def test_sigmoid_tanh_softmax_bce_at_extremes(dt, variant):
    x = np.array([-1e4, -1000.0, -50.0, 0.0, 50.0, 1000.0, 1e4], dt)
    S = np.array([[-1e4, 1e4, 0.0], [1000.0, -1000.0, 5.0], [1e4, 1e4, -1e4]], dt)
    labels = np.array([0, 1, 2])
    T = np.array([[1, 0, 0.5], [0, 1, 1], [1, 1, 0]], dt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            x64 = x.astype(np.float64)
            ref_sig, ref_tanh = sigmoid_ref(x64), np.tanh(x64)
            S64 = S.astype(np.float64)
            m = S64.max(1, keepdims=True)
            e = np.exp(np.maximum(S64 - m, -700)) * (S64 - m > -700)
            ref_xent = np.mean(np.log(e.sum(1)) + m[:, 0] - S64[np.arange(3), labels])
            ref_bce = np.mean(np.maximum(S64, 0) - S64 * T
                              + np.log1p(np.exp(np.maximum(-np.abs(S64), -700)) * (np.abs(S64) < 700)))
            y = ops.sigmoid_forward(x)
            close(y, ref_sig, dt)
            assert np.all(np.isfinite(ops.sigmoid_backward(y, np.ones_like(y))))
            y = ops.tanh_forward(x)
            close(y, ref_tanh, dt)
            assert np.all(np.isfinite(ops.tanh_backward(y, np.ones_like(y))))
            loss, d = ops.softmax_cross_entropy(S, labels)
            assert math.isfinite(loss) and np.all(np.isfinite(d))
            np.testing.assert_allclose(loss, ref_xent, rtol=1e-6)
            loss, d = ops.bce_with_logits(S, T)
            assert math.isfinite(loss) and np.all(np.isfinite(d))
            np.testing.assert_allclose(loss, ref_bce, rtol=1e-6)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n_classes", [2, 10, 100])
def test_softmax_xent_keeps_the_loss_and_gradient_of_rows_predicted_right(dt, n_classes, variant):
    """Rows whose target's probability is 1 to within the float type's resolution (float32:
    1 - 3.4e-9 rounds to 1) keep their loss and the target's derivative ``p_t - 1``: both
    computed from the other classes' probabilities (``log1p``, ``-r / s``), not by
    cancelling against 1.  Reference: float64 from the other classes' exps directly."""
    rng = np.random.default_rng(n_classes)
    B = 6
    S = rng.uniform(-1.0, 1.0, (B, n_classes))
    labels = rng.integers(0, n_classes, B)
    margin = np.array([25.0, 28.0, 32.0, 40.0, 0.5, 3.0])        # four rows saturated in float32
    S[np.arange(B), labels] += margin
    S[5, (labels[5] + 1) % n_classes] += 5.0                      # the last row's target is not the max
    S = S.astype(dt)
    S64 = S.astype(np.float64)
    m = S64.max(1, keepdims=True)
    e = np.exp(S64 - m)
    e_t = e[np.arange(B), labels]
    other = np.array([np.delete(e[i], labels[i]).sum() for i in range(B)])
    ref_rows = np.log1p(other / e_t)
    ref_d = e / e.sum(1, keepdims=True)
    ref_d[np.arange(B), labels] = -other / e.sum(1)
    ref_d /= B
    loss, d = ops.softmax_cross_entropy(S, labels)
    assert ref_rows[:4].max() < 1e-7              # saturated: below float32's resolution of 1
    rtol = 2e-6 if dt == np.float32 else 1e-12
    np.testing.assert_allclose(loss, ref_rows.mean(), rtol=rtol)
    np.testing.assert_allclose(d, ref_d, rtol=rtol, atol=0)
    assert np.all(d[np.arange(B), labels] < 0)    # never 0: the target's derivative survives


@pytest.mark.parametrize("dt", DTYPES)
def test_bce_with_logits_keeps_the_gradient_of_predictions_right_to_rounding(dt, variant):
    """``sigmoid(s) - t`` where ``sigmoid(s)`` rounds to a target of 1 (or 0) keeps its value:
    computed as ``sigmoid(s) (1 - t) - t sigmoid(-s)``.  Reference: float64, the same identity."""
    S = np.array([[20.0, -20.0, 30.0, 3.0], [-25.0, 25.0, 0.5, -60.0]], dt)
    T = np.array([[1.0, 0.0, 1.0, 0.25], [0.0, 1.0, 0.7, 0.0]], dt)
    S64, T64 = S.astype(np.float64), T.astype(np.float64)
    sig = 1.0 / (1.0 + np.exp(-S64))
    sig_neg = 1.0 / (1.0 + np.exp(S64))
    ref = (sig * (1.0 - T64) - T64 * sig_neg) / S.size
    loss, d = ops.bce_with_logits(S, T)
    rtol = 4e-6 if dt == np.float32 else 1e-13
    np.testing.assert_allclose(d, ref, rtol=rtol, atol=0)
    assert d[0, 0] < 0 and d[0, 1] > 0 and d[1, 1] < 0          # never 0: the derivative survives


# -------------------------------------------------------------------- gates
GATES = {
    "add": (ops.add_forward, ops.add_backward),
    "mul": (ops.mul_forward, ops.mul_backward),
    "max": (ops.max_forward, ops.max_backward),
}
BCAST = [((7, 33), (7, 33)), ((7, 33), (33,)), ((7, 33), (7, 1)), ((7, 1), (1, 33)), ((257,), ()),
         ((), ()), ((1,), (7, 1)), ((33,), (33,)), ((0, 3), (3,))]


def gate_ref(name, a, b, dout):
    ab, bb = np.broadcast_arrays(a, b)
    if name == "add":
        return a + b, dout, dout
    if name == "mul":
        return a * b, dout * bb, dout * ab
    return np.maximum(a, b), dout * (ab >= bb), dout * (ab < bb)


def unbroadcast(g, shape):
    g = np.asarray(g)
    while g.ndim > len(shape):
        g = g.sum(0)
    return g.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1),
                 keepdims=True).reshape(shape)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name", list(GATES))
def test_gates_match_numpy_with_broadcasting(rng, name, dt, variant):
    fwd, bwd = GATES[name]
    for sa, sb in BCAST + [(s2, s1) for s1, s2 in BCAST]:
        a = randn(rng, sa, dt)
        b = randn(rng, sb, dt)
        oshape = np.broadcast_shapes(sa, sb)
        dout = randn(rng, oshape, dt)
        ref, ga, gb = gate_ref(name, a.astype(np.float64), b.astype(np.float64), dout.astype(np.float64))
        what = f"{name} {sa} {sb}"
        out = fwd(a, b)
        assert out.shape == oshape, what
        close(out, ref, dt, what=what)
        da, db = bwd(a, b, dout)
        assert da.shape == sa and db.shape == sb, what
        k = max(oshape, default=1)
        close(da, unbroadcast(ga, sa), dt, k, what)
        close(db, unbroadcast(gb, sb), dt, k, what)
    a = randn(rng, (7, 33), dt)
    b = randn(rng, (33,), dt)
    ref = fwd(a, b)
    assert fwd(a, b, out=a) is a  # in place into an operand of the output's shape
    np.testing.assert_array_equal(a, ref)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name", list(GATES))
def test_gates_gradcheck(rng, name, dt, variant):
    fwd, bwd = GATES[name]
    for sa, sb in [((4, 5), (4, 5)), ((4, 5), (5,)), ((4, 1), (1, 5)), ((), (3,))]:
        a = np.array(rng.integers(-8, 8, sa) * 0.25 + 0.125, dt)  # |a - b| >= 1/8: off max's kink
        b = np.array(rng.integers(-8, 8, sb) * 0.25, dt)
        G = randn(rng, np.broadcast_shapes(sa, sb), dt)

        def f(a, b):
            return np.sum(G.astype(np.float64) * fwd(a, b))

        assert gradcheck(f, {"a": a, "b": b}, lambda a, b: dict(zip("ab", bwd(a, b, G))))


def test_golden_example_gates():
    """f = 2 (x y + max(z, w)) at x=3, y=-4, z=2, w=-1 (the notes' example).

    The gradients are the notes' golden values; f itself is 2 (-12 + 2) = -20
    (the lecture lists -8, which is df/dx, not f)."""
    x, y, z, w = (np.array(v, np.float64) for v in (3.0, -4.0, 2.0, -1.0))
    two = np.array(2.0)
    xy = ops.mul_forward(x, y)
    m = ops.max_forward(z, w)
    s = ops.add_forward(xy, m)
    f = ops.mul_forward(two, s)
    assert f == -20
    _, ds = ops.mul_backward(two, s, np.array(1.0))
    dxy, dm = ops.add_backward(xy, m, ds)
    dx, dy = ops.mul_backward(x, y, dxy)
    dz, dw = ops.max_backward(z, w, dm)
    assert (dx, dy, dz, dw) == (-8, 6, 2, 0)


# ------------------------------------------------------------------- losses
def loss_ref(kind, S, t):
    S = S.astype(np.float64)
    B = S.shape[0] if S.ndim == 2 else 1
    if kind in ("xent", "svm"):
        r = np.arange(B)
        if kind == "xent":
            m = S.max(1, keepdims=True)
            e = np.exp(S - m)
            d = e / e.sum(1, keepdims=True)
            d[r, t] -= 1
            return np.mean(np.log(e.sum(1)) + m[:, 0] - S[r, t]), d / B
        mg = S - S[r, t][:, None] + 1
        mg[r, t] = 0
        pos = mg > 0
        d = pos * 1.0
        d[r, t] = -pos.sum(1)
        return np.sum(mg * pos) / B, d / B
    T = t.astype(np.float64)
    if kind == "mse":
        return np.mean((S - T) ** 2), 2 * (S - T) / S.size
    return (np.mean(np.maximum(S, 0) - S * T + np.log1p(np.exp(-np.abs(S)))),
            (sigmoid_ref(S) - T) / S.size)


LOSSES = {"xent": ops.softmax_cross_entropy, "svm": ops.svm_loss, "mse": ops.mse, "bce": ops.bce_with_logits}


def targets(rng, kind, shape, dt):
    if kind in ("xent", "svm"):
        return rng.integers(0, shape[1], shape[0])
    return (rng.random(shape) if kind == "bce" else rng.standard_normal(shape)).astype(dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kind", list(LOSSES))
def test_losses_match_numpy(rng, kind, dt, variant):
    shapes = [(1, 1), (1, 7), (7, 33), (257, 3)] + ([(7,), (1,)] if kind in ("mse", "bce") else [])
    for shape in shapes:
        S = randn(rng, shape, dt, 2.0)
        t = targets(rng, kind, shape if len(shape) == 2 else (1,) + shape, dt)
        if kind in ("mse", "bce"):
            t = t.reshape(shape)
        loss, dS = LOSSES[kind](S, t)
        ref, dref = loss_ref(kind, S, t)
        assert isinstance(loss, float) and dS.shape == shape
        np.testing.assert_allclose(loss, ref, rtol=1e-12 if dt == np.float64 else 2e-6, atol=1e-7)
        close(dS, dref, dt, what=f"{kind} {shape}")
        out = np.full(shape, np.nan, dt)
        loss2, d2 = LOSSES[kind](S, t, out=out)
        assert d2 is out and loss2 == loss
        np.testing.assert_array_equal(out, dS)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kind", list(LOSSES))
def test_losses_gradcheck(rng, kind, dt, variant):
    S = randn(rng, (5, 4), dt, 1.5)
    t = targets(rng, kind, (5, 4), dt)
    if kind == "svm":  # keep margins off the hinge's kink
        r = np.arange(5)
        mg = S - S[r, t][:, None] + 1
        bad = np.abs(mg) < 0.1
        bad[r, t] = False
        S[bad] += 0.3
    assert gradcheck(lambda S, t: LOSSES[kind](S, t)[0], [S, t], lambda S, t: [LOSSES[kind](S, t)[1], None])


def test_labels_accept_any_integer_dtype(rng):
    S = randn(rng, (6, 4), np.float64)
    y = np.array([0, 3, 1, 2, 3, 0])
    ref = ops.softmax_cross_entropy(S, y.astype(np.int64))
    for dt in (np.int32, np.uint8, np.int16):
        loss, d = ops.softmax_cross_entropy(S, y.astype(dt))
        assert loss == ref[0]
        np.testing.assert_array_equal(d, ref[1])
    loss, _ = ops.svm_loss(S, np.repeat(y, 2)[::2])  # strided labels are fine
    assert loss == ops.svm_loss(S, y)[0]


@pytest.mark.parametrize("fn", [ops.softmax_cross_entropy, ops.svm_loss])
@pytest.mark.parametrize("bad", [[0, 1, 4], [0, -1, 2], [7, 0, 0]])
def test_labels_out_of_range(fn, bad):
    S = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels\[\d\] = -?\d+ is out of range \[0, 4\)"):
        fn(S, np.array(bad))


@pytest.mark.parametrize("fn", [ops.softmax_cross_entropy, ops.svm_loss])
def test_labels_wrong_type_or_shape(fn):
    S = np.zeros((3, 4))
    with pytest.raises(TypeError, match="labels.*integer"):
        fn(S, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="labels.*integer"):
        fn(S, np.array([True, False, True]))
    with pytest.raises(TypeError, match="labels must be a numpy.ndarray"):
        fn(S, [0, 1, 2])
    with pytest.raises(ValueError, match=r"labels: expected shape \(3,\)"):
        fn(S, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels: expected shape \(3,\)"):
        fn(S, np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="scores"):
        fn(np.zeros((0, 4)), np.zeros(0, np.int64))


# ---------------------------------------------------------------------- NaN
@pytest.mark.parametrize("dt", DTYPES)
def test_nan_propagates_through_every_op(dt, variant):
    x = np.array([[1.0, np.nan, -2.0]], dt)
    for name, (fwd, bwd, _, _) in UNARY.items():
        y = fwd(x)
        assert np.isnan(y[0, 1]) and np.isfinite(y[0, 0]), name
        assert np.isnan(bwd(np.ones_like(x), x)[0, 1]), name
    for name, (fwd, bwd) in GATES.items():
        out = fwd(x, np.ones_like(x))
        assert np.isnan(out[0, 1]) and np.isfinite(out[0, 0]), name
        da, db = bwd(np.ones_like(x), np.zeros_like(x), x)
        assert np.isnan(da[0, 1]) or np.isnan(db[0, 1]), name
    W = np.ones((3, 2), dt)
    assert np.all(np.isnan(ops.linear_forward(x, W, None, "relu")))
    assert np.all(np.isnan(ops.matmul(x, W)))
    dx, dW, db = ops.linear_backward(np.ones_like(x), W, np.ones((1, 2), dt), np.array([[np.nan, 1]], dt))
    assert np.all(np.isnan(dx)) and np.all(np.isnan(dW[:, 0])) and np.isnan(db[0]) and db[1] == 1
    for kind, fn in LOSSES.items():
        t = np.array([0]) if kind in ("xent", "svm") else np.zeros_like(x)
        loss, d = fn(x, t)
        assert math.isnan(loss) and np.isnan(d[0, 1]), kind


# ------------------------------------------------------------------ bad input
def _slots():
    """(argument name, valid shape, call) for array arguments of every op; ``call(a)``
    passes ``a`` in that argument and valid arrays in the others."""
    x = np.ones((3, 4))
    W = np.ones((4, 2))
    y = np.ones((3, 2))
    lab = np.zeros(3, np.int64)
    return [
        ("x", (3, 4), lambda a: ops.linear_forward(a, W)),
        ("W", (4, 2), lambda a: ops.linear_forward(x, a)),
        ("b", (2,), lambda a: ops.linear_forward(x, W, a)),
        ("x", (3, 4), lambda a: ops.linear_backward(a, W, y, y)),
        ("W", (4, 2), lambda a: ops.linear_backward(x, a, y, y)),
        ("y", (3, 2), lambda a: ops.linear_backward(x, W, a, y)),
        ("dy", (3, 2), lambda a: ops.linear_backward(x, W, y, a)),
        ("a", (3, 4), lambda a: ops.matmul(a, W)),
        ("b", (4, 2), lambda a: ops.matmul(x, a)),
        ("x", (3, 4), ops.relu_forward),
        ("x", (12,), ops.sigmoid_forward),
        ("x", (3, 4), ops.tanh_forward),
        ("y", (3, 4), lambda a: ops.relu_backward(a, x)),
        ("dy", (3, 4), lambda a: ops.sigmoid_backward(x, a)),
        ("a", (3, 4), lambda a: ops.add_forward(a, x)),
        ("b", (4,), lambda a: ops.mul_forward(x, a)),
        ("a", (3, 4), lambda a: ops.max_backward(a, x, x)),
        ("dout", (3, 4), lambda a: ops.max_backward(x, x, a)),
        ("scores", (3, 4), lambda a: ops.softmax_cross_entropy(a, lab)),
        ("scores", (3, 4), lambda a: ops.svm_loss(a, lab)),
        ("scores", (3, 4), lambda a: ops.mse(a, x)),
        ("targets", (3, 4), lambda a: ops.mse(x, a)),
        ("targets", (12,), lambda a: ops.bce_with_logits(np.ones(12), a)),
    ]


@pytest.mark.parametrize("dt", [np.int64, np.int32, np.float16, np.bool_, np.complex128, object])
def test_bad_dtype_raises_typeerror_naming_argument(dt):
    for name, shape, call in _slots():
        with pytest.raises(TypeError, match=rf"^{name} has dtype .*expected float32 or float64"):
            call(np.ones(shape, dtype=dt))


def test_lists_and_scalars_raise_typeerror():
    for name, shape, call in _slots():
        with pytest.raises(TypeError, match=rf"^{name} must be a numpy.ndarray, got list"):
            call(np.ones(shape).tolist())
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got float"):
        ops.relu_forward(1.0)


def test_masked_arrays_raise_typeerror_and_subclasses_pass():
    """A numpy.ma.MaskedArray passed the isinstance check and failed inside numba (a NumbaTypeError,
    not a TypeError); its mask would be ignored."""
    for name, shape, call in _slots():
        with pytest.raises(TypeError, match=rf"^{name} must be a numpy.ndarray, got MaskedArray; .*mask"):
            call(np.ma.masked_array(np.ones(shape), mask=np.zeros(shape, bool)))
    with pytest.raises(TypeError, match=r"^out must be a numpy.ndarray, got MaskedArray"):
        ops.relu_forward(np.ones((2, 3)), out=np.ma.masked_array(np.ones((2, 3))))
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), batch_size=4, dtype=np.float64)
    with pytest.raises(TypeError, match=r"^X must be a numpy.ndarray, got MaskedArray"):
        step.predict(np.ma.masked_array(np.ones((2, 3))))
    with pytest.raises(TypeError, match=r"^y must be a numpy.ndarray, got MaskedArray"):      # (its mask ignored)
        step(np.ones((2, 3)), np.ma.masked_array([0, 1], mask=[0, 1]))
    reg = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), loss="mse", batch_size=4, dtype=np.float64)
    with pytest.raises(TypeError, match=r"^y must be a numpy.ndarray, got MaskedArray"):
        reg(np.ones((2, 3)), np.ma.masked_array(np.ones((2, 2)), mask=[[0, 1], [0, 0]]))

    class Sub(np.ndarray):
        pass
    np.testing.assert_array_equal(ops.relu_forward(np.arange(-3.0, 3.0).view(Sub)), [0, 0, 0, 0, 1, 2])
    assert step.predict(np.ones((2, 3)).view(Sub)).shape == (2, 2)


def test_mixed_dtypes_raise_typeerror():
    x32 = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="W has dtype float64 but x has dtype float32"):
        ops.linear_forward(x32, np.ones((4, 2)))
    with pytest.raises(TypeError, match="b has dtype float64 but x has dtype float32"):
        ops.linear_forward(x32, np.ones((4, 2), np.float32), np.ones(2))
    with pytest.raises(TypeError, match="dy has dtype float64 but y has dtype float32"):
        ops.relu_backward(x32, np.ones((3, 4)))
    with pytest.raises(TypeError, match="targets has dtype float32 but scores has dtype float64"):
        ops.mse(np.ones((3, 4)), x32)
    with pytest.raises(TypeError, match="b has dtype float32 but a has dtype float64"):
        ops.add_forward(np.ones((3, 4)), x32)


def test_mismatched_shapes_raise_valueerror():
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"W: expected shape \(4, \*\), got \(5, 2\)"):
        ops.linear_forward(x, np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"b: expected shape \(2,\), got \(3,\)"):
        ops.linear_forward(x, np.ones((4, 2)), np.ones(3))
    with pytest.raises(ValueError, match="x must be 2-D"):
        ops.linear_forward(np.ones(4), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"y: expected shape \(3, 2\), got \(3, 3\)"):
        ops.linear_backward(x, np.ones((4, 2)), np.ones((3, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 2\), got \(2, 2\)"):
        ops.linear_backward(x, np.ones((4, 2)), np.ones((3, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"b: expected shape \(4, \*\), got \(3, 4\)"):
        ops.matmul(x, x)
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 4\), got \(4, 3\)"):
        ops.relu_backward(x, np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"a of shape \(3, 4\) and b of shape \(3,\) cannot be broadcast"):
        ops.add_forward(x, np.ones(3))
    with pytest.raises(ValueError, match="a must be 0 or 1 or 2-D"):
        ops.mul_forward(np.ones((2, 3, 4)), np.ones(4))
    with pytest.raises(ValueError, match=r"dout: expected shape \(3, 4\), got \(4,\)"):
        ops.add_backward(x, np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match=r"targets: expected shape \(3, 4\), got \(3, 5\)"):
        ops.bce_with_logits(x, np.ones((3, 5)))
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.linear_forward(x, np.ones((4, 2)), activation="mish")


def test_non_contiguous_inputs_raise_valueerror():
    for name, shape, call in _slots():
        strided = np.ones(shape[:-1] + (2 * shape[-1],))[..., ::2]
        with pytest.raises(ValueError, match=rf"^{name} is non-contiguous.*np.ascontiguousarray\({name}\)"):
            call(strided)
        if len(shape) == 2:
            with pytest.raises(ValueError, match=rf"^{name} is Fortran-ordered.*np.ascontiguousarray\({name}\)"):
                call(np.asfortranarray(np.ones(shape)))
    with pytest.raises(ValueError, match=r"x is non-contiguous"):
        ops.relu_forward(np.ones(10)[::3])


def test_bad_out_arguments():
    x = np.ones((3, 4))
    cases = [
        (lambda o: ops.relu_forward(x, out=o), (3, 4)),
        (lambda o: ops.tanh_backward(x, x, out=o), (3, 4)),
        (lambda o: ops.linear_forward(x, np.ones((4, 2)), out=o), (3, 2)),
        (lambda o: ops.matmul(x, np.ones((4, 2)), out=o), (3, 2)),
        (lambda o: ops.max_forward(x, np.ones(4), out=o), (3, 4)),
        (lambda o: ops.softmax_cross_entropy(x, np.zeros(3, np.int64), out=o), (3, 4)),
        (lambda o: ops.mse(x, x, out=o), (3, 4)),
    ]
    for call, shape in cases:
        with pytest.raises(ValueError, match=r"out: expected shape"):
            call(np.empty((shape[0] + 1, shape[1])))
        with pytest.raises(TypeError, match=r"out has dtype float32; expected float64"):
            call(np.empty(shape, np.float32))
        with pytest.raises(TypeError, match=r"out must be a numpy.ndarray"):
            call([[0.0] * shape[1]] * shape[0])
        ro = np.empty(shape)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="out is read-only"):
            call(ro)
        with pytest.raises(ValueError, match=r"out is Fortran-ordered"):
            call(np.asfortranarray(np.empty(shape)))
        with pytest.raises(ValueError, match=r"out is non-contiguous"):
            call(np.empty((shape[0], 2 * shape[1]))[:, ::2])
    with pytest.raises(ValueError, match="out overlaps scores"):
        s = x.copy()
        ops.softmax_cross_entropy(s, np.zeros(3, np.int64), out=s)
    big = np.ones((4, 4))
    with pytest.raises(ValueError, match="out overlaps a"):
        ops.add_forward(big[:1], np.ones((4, 4)), out=big)


def test_read_only_inputs_are_accepted(rng):
    x = randn(rng, (5, 3), np.float64)
    W = randn(rng, (3, 2), np.float64)
    x.flags.writeable = False
    W.flags.writeable = False
    close(ops.linear_forward(x, W), x @ W, np.float64, 3)
    close(ops.relu_forward(x), np.maximum(x, 0), np.float64)


# ---------------------------------------------------------------- _validate
def test_validate_helpers_directly():
    from fastbp import _validate as V
    a = np.ones((3, 4), np.float32)
    assert V.float_array(a, "a", (1, 2)) is a
    assert V.shape(a, "a", (3, None)) is a
    with pytest.raises(ValueError, match=r"^a: expected shape \(\*, 5\), got \(3, 4\) \(five columns\)$"):
        V.shape(a, "a", (None, 5), "five columns")
    with pytest.raises(ValueError, match=r"^a: expected shape \(3, 4, 1\), got \(3, 4\)"):
        V.shape(a, "a", (3, 4, 1))
    with pytest.raises(ValueError, match="a must be 1-D, got a 2-D array"):
        V.ndim(a, "a", 1)
    big_endian = np.ones(3, ">f8")
    with pytest.raises(TypeError, match="expected float32 or float64"):
        V.float_array(big_endian, "v")
    assert V.same_dtype(a, "a", a, "b", a, "c") == np.float32
    with pytest.raises(TypeError, match="^c has dtype float64 but a has dtype float32"):
        V.same_dtype(a, "a", a, "b", np.ones(2), "c")
    o = V.out_array(None, "out", (2, 5), np.float64)
    assert o.shape == (2, 5) and o.dtype == np.float64 and o.flags.c_contiguous
    V.no_overlap(o, "out", o, "x", allow_identical=True)
    with pytest.raises(ValueError, match="out overlaps x"):
        V.no_overlap(o, "out", o, "x")
    with pytest.raises(ValueError, match="out overlaps x"):
        V.no_overlap(o, "out", o[1:], "x", allow_identical=True)
    V.no_overlap(o[1:], "out", o[:1], "x")  # disjoint halves of one buffer are fine
    y = V.labels(np.array([1, 0, 2], np.int32), "y", 3, 3)
    assert y.dtype == np.int64 and y.flags.c_contiguous
    y64 = np.array([1, 0, 2])
    assert V.labels(y64, "y", 3, 3) is y64  # no copy when already int64 C-contiguous
    with pytest.raises(ValueError, match=r"y\[0\] = 18446744073709551615 is out of range \[0, 3\)"):
        V.labels(np.array([2**64 - 1, 0, 0], np.uint64), "y", 3, 3)
    with pytest.raises(ValueError, match=r"y\[1\] = 3 is out of range \[0, 3\)"):
        V.labels(np.array([0, 3, 0], np.uint8), "y", 3, 3)
    assert V.fmt_shape(()) == "()" and V.fmt_shape((2,)) == "(2,)" and V.fmt_shape((None, 3)) == "(*, 3)"


def test_public_modules_list_only_their_api():
    """``dir()`` of the public modules (and ``fastbp``): no ``np``, ``V``, ``annotations``,
    module aliases or imported helpers; ``__all__`` holds public names that exist."""
    import importlib
    import fastbp
    leaks = {"np", "V", "ex", "annotations", "math", "numbers", "os", "sys", "inspect", "datetime",
             "bisect_right", "GATE_ADD", "GATE_MAX", "GATE_MUL"}
    for name in ("ops", "layers", "graph", "optimizers", "schedules", "data", "gradcheck", "bundle",
                 "training", "checkpoint"):
        m = importlib.import_module(f"fastbp.{name}")
        assert not leaks & set(dir(m)), (name, leaks & set(dir(m)))
        assert not leaks & set(m.__all__), name
        assert all(hasattr(m, n) for n in m.__all__), name
        assert set(dir(m)) == set(m.__all__), name
    assert not leaks & set(dir(fastbp))
    assert {"compile", "grad", "MLPClassifier", "__version__", "checkpoint"} <= set(dir(fastbp))
    for n in ("np", "V", "GATE_ADD"):
        assert not hasattr(fastbp.ops, n)
