"""The private kernels, called directly through both compiled variants.

Every kernel is compared with a plain numpy float64 reference, and every
backward kernel with a centered finite-difference gradient of its forward
kernel (same variant), in float32 and float64, on odd shapes.
"""
import math
import warnings

import numpy as np
import pytest

from fastbp.gradcheck import numerical_gradient, relative_error
from fastbp.kernels import activations as A
from fastbp.kernels import gates as G
from fastbp.kernels import gemm as M
from fastbp.kernels import linear as L
from fastbp.kernels import losses as Ls
from fastbp.kernels import optim as O
from fastbp.kernels.codes import (ACT_NONE, ACT_RELU, ACT_SIGMOID, ACT_TANH, GATE_ADD, GATE_MAX,
                                  GATE_MUL)

DTYPES = [np.float32, np.float64]
VARIANTS = ["serial", "parallel"]
ACTS = [ACT_NONE, ACT_RELU, ACT_SIGMOID, ACT_TANH]
ACT_IDS = ["identity", "relu", "sigmoid", "tanh"]
#: odd shapes: 1, 7, 33, 257 along both axes
SHAPES = [(1, 1), (1, 7), (7, 1), (7, 33), (33, 7), (257, 3), (3, 257)]
#: (m, k, n) for products
MKN = [(1, 1, 1), (1, 7, 1), (7, 33, 1), (7, 1, 33), (33, 7, 5), (5, 257, 7), (257, 3, 33), (9, 17, 18)]
#: small shapes for finite differences (2 f-evaluations per element)
GC_SHAPES = [(1, 1), (7, 5), (2, 11)]

GC_RTOL = {np.float32: 2e-2, np.float64: 1e-6}


def thorough_case(params):
    """The float64 cases of the parallel variants run in CI's thorough stage only (see
    conftest.py): each compiles a kernel's parallel variant for float64 (seconds), while
    the float32 cases already run every parallel loop and the float64 serial ones every
    float64 path.  Likewise the parallel variants of the identity, sigmoid and tanh
    activation kernels: every activation's kernels are copies of the same loop templates
    with its scalar body inlined (kernels/factory.py), whose parallel loops ReLU's cases
    run, and whose scalar bodies every serial case checks."""
    if params.get("variant") != "parallel":
        return False
    return params.get("dt") is np.float64 or params.get("act") in (ACT_NONE, ACT_SIGMOID, ACT_TANH)


def var(k, variant):
    return getattr(k, variant)


def close(got, ref, dt, k=1, what=""):
    """float64: near machine precision; float32: a few ulps times the reduction length."""
    ref = np.asarray(ref, np.float64)
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    if dt == np.float64:
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=4e-15 * k * scale, err_msg=what)
    else:
        np.testing.assert_allclose(got, ref, rtol=3e-6, atol=3e-7 * k * scale, err_msg=what)


def ref_act(act, z):
    if act == ACT_RELU:
        return np.maximum(z, 0)
    if act == ACT_SIGMOID:
        return 0.5 * (1 + np.tanh(0.5 * z))  # overflow-free form
    if act == ACT_TANH:
        return np.tanh(z)
    return z


def ref_dact(act, y):
    if act == ACT_RELU:
        return (y > 0).astype(np.float64)
    if act == ACT_SIGMOID:
        return y * (1 - y)
    if act == ACT_TANH:
        return 1 - y * y
    return np.ones_like(y)


def away_from_zero(x, margin):
    """Move values within ``margin`` of 0 away from it (keeps ReLU off its kink)."""
    x = x.copy()
    small = np.abs(x) < margin
    x[small] = np.where(x[small] >= 0, 1, -1) * (margin + np.abs(x[small]))
    return x


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, shape, dt, scale=1.0):
    return np.array(scale * rng.standard_normal(shape), dtype=dt)


# -------------------------------------------------------------- activations
FWD_BWD = {
    ACT_RELU: (A._relu_fwd, A._relu_bwd),
    ACT_SIGMOID: (A._sigmoid_fwd, A._sigmoid_bwd),
    ACT_TANH: (A._tanh_fwd, A._tanh_bwd),
}


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_activation_kernels_match_numpy(rng, dt, variant, act):
    for shape in SHAPES:
        x = randn(rng, shape, dt, 3.0)
        dy = randn(rng, shape, dt)
        x64 = x.astype(np.float64)
        what = f"act={act} shape={shape}"
        y = np.full(shape, np.nan, dt)
        var(A._act_fwd, variant)(x, act, y)
        close(y, ref_act(act, x64), dt, what=what)
        ref_dx = dy.astype(np.float64) * ref_dact(act, y.astype(np.float64))
        dx = np.full(shape, np.nan, dt)
        var(A._act_bwd, variant)(y, dy, act, dx, False)
        close(dx, ref_dx, dt, what=what)
        # in place (dX is dY, as the fused step calls it): its own loops, same result
        inplace = dy.copy()
        var(A._act_bwd, variant)(y, inplace, act, inplace, False)
        np.testing.assert_array_equal(inplace, dx, err_msg=what + " in place")
        acc = randn(rng, shape, dt)
        start = acc.astype(np.float64)
        var(A._act_bwd, variant)(y, dy, act, acc, True)
        close(acc, start + ref_dx, dt, what=what + " acc")
        if act in FWD_BWD:
            fwd, bwd = FWD_BWD[act]
            y2 = np.full(shape, np.nan, dt)
            var(fwd, variant)(x, y2)
            close(y2, ref_act(act, x64), dt, what=what + " " + fwd.__name__)
            dx2 = np.full(shape, np.nan, dt)
            var(bwd, variant)(y, dy, dx2)
            close(dx2, ref_dx, dt, what=what + " " + bwd.__name__)
            inplace2 = dy.copy()
            var(bwd, variant)(y, inplace2, inplace2)
            np.testing.assert_array_equal(inplace2, dx2, err_msg=what + " " + bwd.__name__ + " in place")
        # in place (Y is X, dX is dY)
        xi = x.copy()
        var(A._act_fwd, variant)(xi, act, xi)
        close(xi, ref_act(act, x64), dt)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_activation_kernels_gradcheck(rng, dt, variant, act):
    for shape in GC_SHAPES:
        x = away_from_zero(randn(rng, shape, dt, 2.0), 0.1).astype(dt)
        G_ = randn(rng, shape, dt)
        y = np.empty(shape, dt)
        fwd = var(A._act_fwd, variant)

        def f(xx):
            fwd(xx, act, y)
            return np.sum(G_.astype(np.float64) * y)

        num = numerical_gradient(f, x)
        fwd(x, act, y)
        dx = np.empty(shape, dt)
        var(A._act_bwd, variant)(y, G_, act, dx, False)
        err = relative_error(dx, num)
        assert err < GC_RTOL[dt], (act, shape, err)


@pytest.mark.parametrize("act", [ACT_SIGMOID, ACT_TANH], ids=["sigmoid", "tanh"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_activation_kernels_extremes_finite_and_silent(dt, variant, act):
    x = np.array([[-1e4, -1000, -88.0, -1.0, 0.0, 1.0, 88.0, 1000, 1e4]], dt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            ref_s = 0.5 * (1 + np.tanh(0.5 * x.astype(np.float64)))
            ref_t = np.tanh(x.astype(np.float64))
        ref = ref_s if act == ACT_SIGMOID else ref_t
        y = np.empty_like(x)
        var(A._act_fwd, variant)(x, act, y)
        assert np.all(np.isfinite(y))
        close(y, ref, dt)
        dx = np.empty_like(x)
        var(A._act_bwd, variant)(y, np.ones_like(x), act, dx, False)
        assert np.all(np.isfinite(dx))
        assert dx[0, 0] == 0 and dx[0, -1] == 0
        if act == ACT_SIGMOID:
            y = np.empty_like(x)
            var(A._sigmoid_fwd, variant)(x, y)
            assert y[0, 0] == 0 and y[0, -1] == 1 and y[0, 4] == 0.5


@pytest.mark.parametrize("act", [ACT_RELU, ACT_SIGMOID, ACT_TANH], ids=["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_activation_kernels_propagate_nan(dt, variant, act):
    x = np.array([[np.nan, 1.0, -1.0]], dt)
    y = np.empty_like(x)
    var(A._act_fwd, variant)(x, act, y)
    assert np.isnan(y[0, 0]) and np.all(np.isfinite(y[0, 1:])), act
    dx = np.empty_like(x)
    var(A._act_bwd, variant)(np.abs(x), np.array([[1.0, np.nan, 1.0]], dt), act, dx, False)
    assert np.isnan(dx[0, 1]), act


# --------------------------------------------------------------------- gemm
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_gemm_loop_kernels_match_numpy(rng, dt, variant):
    for m, k, n in MKN:
        a = randn(rng, (m, k), dt)
        b = randn(rng, (k, n), dt)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        for kern, aa, bb in ((M._mm_nn, a, b),
                             (M._mm_nt, a, np.ascontiguousarray(b.T)),
                             (M._mm_tn, np.ascontiguousarray(a.T), b)):
            what = f"{kern.__name__} m={m} k={k} n={n}"
            c = np.full((m, n), np.nan, dt)
            var(kern, variant)(aa, bb, c, False)
            close(c, ref, dt, k, what)
            c0 = randn(rng, (m, n), dt)
            c = c0.copy()
            var(kern, variant)(aa, bb, c, True)
            close(c, ref + c0, dt, k, what + " acc")


@pytest.mark.parametrize("dt", DTYPES)
def test_blas_mm_matches_numpy(rng, dt):
    for m, k, n in MKN + [(0, 3, 4), (3, 0, 4)]:
        a = randn(rng, (m, k), dt)
        b = randn(rng, (k, n), dt)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        for ta in (False, True):
            for tb in (False, True):
                aa = np.ascontiguousarray(a.T) if ta else a
                bb = np.ascontiguousarray(b.T) if tb else b
                c = np.full((m, n), np.nan, dt)
                M._blas_mm(aa, bb, c, ta, tb, False)
                close(c, ref, dt, k, f"ta={ta} tb={tb} {m, k, n}")
                c0 = randn(rng, (m, n), dt)
                c = c0.copy()
                M._blas_mm(aa, bb, c, ta, tb, True)
                close(c, ref + c0, dt, k, f"acc ta={ta} tb={tb} {m, k, n}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_gemm_gradcheck(rng, dt, variant):
    """For f = sum(G * (A @ B)): df/dA = G @ B.T (_mm_nt), df/dB = A.T @ G (_mm_tn)."""
    for m, k, n in [(1, 1, 1), (7, 5, 3), (3, 9, 4)]:
        a = randn(rng, (m, k), dt)
        b = randn(rng, (k, n), dt)
        g = randn(rng, (m, n), dt)
        c = np.empty((m, n), dt)
        nn = var(M._mm_nn, variant)

        def f(_):
            nn(a, b, c, False)
            return np.sum(g.astype(np.float64) * c)

        da = np.empty_like(a)
        var(M._mm_nt, variant)(g, b, da, False)
        db = np.empty_like(b)
        var(M._mm_tn, variant)(a, g, db, False)
        assert relative_error(da, numerical_gradient(f, a)) < GC_RTOL[dt]
        assert relative_error(db, numerical_gradient(f, b)) < GC_RTOL[dt]


# ------------------------------------------------------------------- linear
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_linear_kernels_match_numpy(rng, dt, variant, act):
    for m, k, n in MKN:
        x = randn(rng, (m, k), dt)
        w = randn(rng, (k, n), dt)
        b = randn(rng, (n,), dt)
        z = x.astype(np.float64) @ w.astype(np.float64)
        wt = np.ascontiguousarray(w.T)
        for bias in (b, np.empty(0, dt)):
            what = f"act={act} bias={bias.size} {m, k, n}"
            ref = ref_act(act, z + (bias.astype(np.float64) if bias.size else 0))
            y = np.full((m, n), np.nan, dt)
            var(L._linear_fwd, variant)(x, w, bias, act, y)
            close(y, ref, dt, k, what)
            y = np.full((m, n), np.nan, dt)
            var(L._linear_fwd_t, variant)(x, wt, bias, act, y)
            close(y, ref, dt, k, what + " (transposed W)")
            y = z.astype(dt)
            var(L._bias_act, variant)(y, bias, act)
            close(y, ref, dt, k, what + " (epilogue)")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_colsum_kernel_matches_numpy(rng, dt, variant):
    for m, k, n in MKN:
        dz = randn(rng, (m, n), dt)
        db = np.full(n, np.nan, dt)
        var(L._colsum, variant)(dz, db, False)
        close(db, dz.astype(np.float64).sum(0), dt, m)
        db0 = randn(rng, (n,), dt)
        db = db0.copy()
        var(L._colsum, variant)(dz, db, True)
        close(db, db0 + dz.astype(np.float64).sum(0), dt, m)
    # more columns than one _colsum block (64)
    dz = randn(rng, (5, 129), dt)
    db = np.empty(129, dt)
    var(L._colsum, variant)(dz, db, False)
    close(db, dz.astype(np.float64).sum(0), dt, 5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_colsum_of_many_float32_rows_is_rounded_once(rng, variant):
    """The bias gradient of a large float32 minibatch: summed in float64, rounded once
    (a float32 running sum was 1.2e-4 off at 1e6 rows; 2**25 ones stopped at 2**24)."""
    dz = (rng.standard_normal((1_000_000, 3)) + 0.5).astype(np.float32)
    want = dz.astype(np.float64).sum(0)
    db = np.empty(3, np.float32)
    var(L._colsum, variant)(dz, db, False)
    np.testing.assert_array_equal(db, want.astype(np.float32))
    db0 = np.array([1e3, -2.0, 0.25], np.float32)
    db = db0.copy()
    var(L._colsum, variant)(dz, db, True)
    np.testing.assert_array_equal(db, (db0 + want).astype(np.float32))
    ones = np.ones((2 ** 25, 1), np.float32)
    db = np.empty(1, np.float32)
    var(L._colsum, variant)(ones, db, False)
    assert db[0] == 2.0 ** 25


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_linear_backward_chain_gradcheck(rng, dt, variant, act):
    """f = sum(G * act(X W + b)) through _linear_fwd; analytic gradients through
    _act_bwd, _mm_tn, _mm_nt and _colsum (the documented backward recipe)."""
    for (m, k, n) in [(1, 1, 1), (7, 5, 3), (4, 9, 6)]:
        x = randn(rng, (m, k), dt)
        w = randn(rng, (k, n), dt, 0.5)
        b = randn(rng, (n,), dt, 0.5)
        g = randn(rng, (m, n), dt)
        y = np.empty((m, n), dt)
        fwd = var(L._linear_fwd, variant)
        if act == ACT_RELU:  # keep the pre-activations off the kink
            for _ in range(100):
                if np.abs(x.astype(np.float64) @ w + b).min() > 0.05:
                    break
                b = randn(rng, (n,), dt, 0.5)
            else:
                pytest.fail("no kink-free bias found")

        def f(_):
            fwd(x, w, b, act, y)
            return np.sum(g.astype(np.float64) * y)

        fwd(x, w, b, act, y)
        dz = np.empty_like(y)
        var(A._act_bwd, variant)(y, g, act, dz, False)
        dw = np.empty_like(w)
        var(M._mm_tn, variant)(x, dz, dw, False)
        dx = np.empty_like(x)
        var(M._mm_nt, variant)(dz, w, dx, False)
        db = np.empty_like(b)
        var(L._colsum, variant)(dz, db, False)
        for name, ana, arr in (("x", dx, x), ("w", dw, w), ("b", db, b)):
            err = relative_error(ana, numerical_gradient(f, arr))
            assert err < GC_RTOL[dt], (name, act, (m, k, n), err)


# -------------------------------------------------------------------- gates
GATE_SHAPE_PAIRS = [((7, 33), (7, 33)), ((7, 33), (1, 33)), ((7, 33), (7, 1)), ((7, 33), (1, 1)),
                    ((1, 33), (7, 1)), ((7, 1), (1, 33)), ((1, 1), (257, 3)), ((1, 1), (1, 1))]


def ref_gate(gate, a, b):
    return {GATE_ADD: np.add, GATE_MUL: np.multiply, GATE_MAX: np.maximum}[gate](a, b)


def unbroadcast(g, shape):
    return g.sum(axis=tuple(i for i in range(2) if shape[i] == 1 and g.shape[i] != 1),
                 keepdims=True).reshape(shape)


#: the gate kernels' parallel variant (fastbp.ops' gate wrappers on large arrays; the fused step
#: and fastbp.grad run the serial one) compiles every gate's prange loops into one function:
#: 33 s of the README command on a cold cache, so it runs in CI's thorough stage
GATE_VARIANTS = ["serial", pytest.param("parallel", marks=pytest.mark.thorough)]


@pytest.mark.parametrize("variant", GATE_VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_gate_kernels_match_numpy(rng, dt, variant):
    for sa, sb in GATE_SHAPE_PAIRS + [(s2, s1) for s1, s2 in GATE_SHAPE_PAIRS]:
        a = randn(rng, sa, dt)
        b = randn(rng, sb, dt)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        oshape = np.broadcast_shapes(sa, sb)
        do = randn(rng, oshape, dt)
        do64 = do.astype(np.float64)
        for gate in (GATE_ADD, GATE_MUL, GATE_MAX):
            what = f"gate={gate} {sa} {sb}"
            out = np.full(oshape, np.nan, dt)
            var(G._gate_fwd, variant)(gate, a, b, out)
            close(out, ref_gate(gate, a64, b64), dt, what=what)
            ab, bb = np.broadcast_to(a64, oshape), np.broadcast_to(b64, oshape)
            if gate == GATE_ADD:
                ga, gb = do64, do64
            elif gate == GATE_MUL:
                ga, gb = do64 * bb, do64 * ab
            else:
                ga, gb = do64 * (ab >= bb), do64 * (ab < bb)
            ref_da, ref_db = unbroadcast(ga, sa), unbroadcast(gb, sb)
            red = max(oshape[0], oshape[1])
            da = np.full(sa, np.nan, dt)
            db = np.full(sb, np.nan, dt)
            var(G._gate_bwd, variant)(gate, a, b, do, da, db, False, False)
            close(da, ref_da, dt, red, what + " dA")
            close(db, ref_db, dt, red, what + " dB")
            # accumulate, and "not needed" (size-0) gradients
            da0 = randn(rng, sa, dt)
            da = da0.copy()
            var(G._gate_bwd, variant)(gate, a, b, do, da, np.empty((0, 0), dt), True, False)
            close(da, da0 + ref_da, dt, red, what + " dA acc")
            db0 = randn(rng, sb, dt)
            db = db0.copy()
            var(G._gate_bwd, variant)(gate, a, b, do, np.empty((0, 0), dt), db, False, True)
            close(db, db0 + ref_db, dt, red, what + " dB acc")


@pytest.mark.parametrize("variant", GATE_VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_gate_kernels_gradcheck(rng, dt, variant):
    for sa, sb in [((7, 5), (7, 5)), ((7, 5), (1, 5)), ((7, 1), (1, 5)), ((1, 1), (3, 4))]:
        # a on odd multiples of 1/8, b on multiples of 1/4: |a - b| >= 1/8, far from max's kink
        a = (rng.integers(-8, 8, sa) * 0.25 + 0.125).astype(dt)
        b = (rng.integers(-8, 8, sb) * 0.25).astype(dt)
        oshape = np.broadcast_shapes(sa, sb)
        g = randn(rng, oshape, dt)
        out = np.empty(oshape, dt)
        for gate in (GATE_ADD, GATE_MUL, GATE_MAX):
            fwd = var(G._gate_fwd, variant)

            def f(_):
                fwd(gate, a, b, out)
                return np.sum(g.astype(np.float64) * out)

            da = np.empty(sa, dt)
            db = np.empty(sb, dt)
            var(G._gate_bwd, variant)(gate, a, b, g, da, db, False, False)
            assert relative_error(da, numerical_gradient(f, a)) < GC_RTOL[dt], (gate, sa, sb)
            assert relative_error(db, numerical_gradient(f, b)) < GC_RTOL[dt], (gate, sa, sb)


@pytest.mark.parametrize("variant", GATE_VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_max_gate_ties_and_nan(dt, variant):
    a = np.array([[1.0, np.nan, 2.0, 3.0]], dt)
    b = np.array([[1.0, 0.0, np.nan, 4.0]], dt)
    out = np.empty_like(a)
    var(G._gate_fwd, variant)(GATE_MAX, a, b, out)
    assert out[0, 0] == 1 and np.isnan(out[0, 1]) and np.isnan(out[0, 2]) and out[0, 3] == 4
    da, db = np.empty_like(a), np.empty_like(b)
    var(G._gate_bwd, variant)(GATE_MAX, a, b, np.ones_like(a), da, db, False, False)
    # ties go to A; a NaN on either side routes dout to both (torch.maximum's backward,
    # whose comparisons with NaN are false); CPU and CUDA share this rule (the registry's)
    np.testing.assert_array_equal(da, [[1, 1, 1, 0]])
    np.testing.assert_array_equal(db, [[0, 1, 1, 1]])
    # a gradient that does not flow is an exact zero, even for an infinite or NaN dout
    var(G._gate_bwd, variant)(GATE_MAX, a, b, np.array([[np.inf, 1, 1, np.nan]], dt), da, db, False, False)
    np.testing.assert_array_equal(da, [[np.inf, 1, 1, 0]])
    np.testing.assert_array_equal(db, [[0, 1, 1, np.nan]])
    for gate in (GATE_ADD, GATE_MUL):
        var(G._gate_fwd, variant)(gate, a, b, out)
        assert np.isnan(out[0, 1]) and np.isnan(out[0, 2]) and np.isfinite(out[0, 0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_sum_and_scale_kernels(rng, dt, variant):
    for shape in SHAPES:
        a = randn(rng, shape, dt)
        out = np.full((1, 1), np.nan, dt)
        with warnings.catch_warnings():
            # _sum_fwd has no prange: numba warns once when compiling its parallel variant
            warnings.simplefilter("ignore")
            var(G._sum_fwd, variant)(a, out)
        close(out[0, 0], a.astype(np.float64).sum(), dt, a.size)
        d = np.full(shape, np.nan, dt)
        var(G._sum_bwd, variant)(np.array([[2.5]], dt), d, False)
        np.testing.assert_array_equal(d, np.full(shape, 2.5, dt))
        var(G._sum_bwd, variant)(np.array([[1.0]], dt), d, True)
        np.testing.assert_array_equal(d, np.full(shape, 3.5, dt))
        s = np.full(shape, np.nan, dt)
        var(G._scale, variant)(a, -1.5, s, False)
        close(s, -1.5 * a.astype(np.float64), dt)
        s0 = randn(rng, shape, dt)
        s = s0.copy()
        var(G._scale, variant)(a, 0.5, s, True)
        close(s, s0.astype(np.float64) + 0.5 * a.astype(np.float64), dt)


# ------------------------------------------------------------------- losses
def exp_safe(d):
    """exp of non-positive float64 values, 0 below -700 (no underflow flag)."""
    return np.where(d > -700, np.exp(np.maximum(d, -700)), 0.0)


def ref_loss(kind, S, y):
    """(mean loss, dL/dS) in float64, from the formulas."""
    S = S.astype(np.float64)
    B, C = S.shape
    r = np.arange(B)
    if kind == "xent":
        m = S.max(1, keepdims=True)
        e = exp_safe(S - m)
        s = e.sum(1, keepdims=True)
        d = e / s
        d[r, y] -= 1
        return np.mean(np.log(s[:, 0]) + m[:, 0] - S[r, y]), d / B
    if kind == "svm":
        mg = S - S[r, y][:, None] + 1
        mg[r, y] = 0
        pos = mg > 0
        d = pos.astype(np.float64)
        d[r, y] = -pos.sum(1)
        return np.sum(mg * pos) / B, d / B
    T = y.astype(np.float64)
    if kind == "mse":
        return np.mean((S - T) ** 2), 2 * (S - T) / S.size
    sig = 0.5 * (1 + np.tanh(0.5 * S))
    lp = np.log1p(exp_safe(-np.abs(S)))
    return np.mean(np.maximum(S, 0) - S * T + lp), (sig - T) / S.size


LOSS_KERNELS = {"xent": Ls._softmax_xent, "svm": Ls._svm, "mse": Ls._mse, "bce": Ls._bce_logits}


def loss_targets(rng, kind, B, C, dt):
    if kind in ("xent", "svm"):
        return rng.integers(0, C, B).astype(np.int64)
    if kind == "bce":
        return rng.random((B, C)).astype(dt)
    return randn(rng, (B, C), dt)


def svm_off_kinks(S, y, margin):
    """Move scores whose hinge margin is within ``margin`` of 0 (not the label's)."""
    S = S.copy()
    r = np.arange(S.shape[0])
    mg = S - S[r, y][:, None] + 1
    mask = np.abs(mg) < margin
    mask[r, y] = False
    S[mask] += 3 * margin
    return S


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kind", list(LOSS_KERNELS))
def test_loss_kernels_match_numpy(rng, kind, dt, variant):
    for B, C in [(1, 1), (1, 7), (7, 1), (7, 33), (33, 7), (257, 3)]:
        S = randn(rng, (B, C), dt, 2.0)
        y = loss_targets(rng, kind, B, C, dt)
        dS = np.full((B, C), np.nan, dt)
        rowloss = np.full(B, np.nan)
        loss = var(LOSS_KERNELS[kind], variant)(S, y, dS, rowloss)
        ref, dref = ref_loss(kind, S, y)
        what = f"{kind} {B}x{C}"
        assert isinstance(loss, float)
        np.testing.assert_allclose(loss, ref, rtol=1e-12 if dt == np.float64 else 2e-6,
                                   atol=1e-12 if dt == np.float64 else 1e-6, err_msg=what)
        close(dS, dref, dt, what=what)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kind", list(LOSS_KERNELS))
def test_loss_kernels_gradcheck(rng, kind, dt, variant):
    kern = var(LOSS_KERNELS[kind], variant)
    for B, C in [(1, 1), (1, 7), (5, 3), (3, 11)]:
        S = randn(rng, (B, C), dt, 1.5)
        y = loss_targets(rng, kind, B, C, dt)
        if kind == "svm":
            S = svm_off_kinks(S, y, 0.1).astype(dt)
        dS = np.empty((B, C), dt)
        rowloss = np.empty(B)
        scratch = np.empty((B, C), dt)

        def f(s):
            return kern(s, y, scratch, rowloss)

        kern(S, y, dS, rowloss)
        num = numerical_gradient(f, S)
        err = relative_error(dS, num)
        assert err < GC_RTOL[dt], (kind, B, C, err)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_loss_kernels_extremes_finite_and_silent(rng, dt, variant):
    S = np.array([[-1e4, 1e4, 0.0], [1000, -1000, 3.0], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]], dt)
    y = np.array([0, 1, 2, 1], np.int64)
    T = np.array([[1, 0, 0.5], [0, 1, 1], [1, 0, 0], [0, 0, 1]], dt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in ("xent", "bce", "svm", "mse"):
            tgt = y if kind in ("xent", "svm") else T
            with np.errstate(all="raise"):
                ref, dref = ref_loss(kind, S, tgt)
            dS = np.empty_like(S)
            loss = var(LOSS_KERNELS[kind], variant)(S, tgt, dS, np.empty(4))
            assert math.isfinite(loss) and np.all(np.isfinite(dS)), kind
            np.testing.assert_allclose(loss, ref, rtol=1e-6, err_msg=kind)
            close(dS, dref, dt, what=kind)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kind", list(LOSS_KERNELS))
def test_loss_kernels_propagate_nan(rng, kind, dt, variant):
    S = randn(rng, (3, 4), dt)
    S[1, 2] = np.nan
    y = np.array([0, 1, 3], np.int64) if kind in ("xent", "svm") else randn(rng, (3, 4), dt)
    dS = np.empty_like(S)
    loss = var(LOSS_KERNELS[kind], variant)(S, y, dS, np.empty(3))
    assert math.isnan(loss), kind
    assert np.isnan(dS[1, 2]), kind
    assert np.all(np.isfinite(dS[[0, 2]])), kind


def test_check_labels():
    assert Ls._check_labels(np.array([0, 4, 2], np.int64), 5) == -1
    assert Ls._check_labels(np.array([0, 5, 2], np.int64), 5) == 1
    assert Ls._check_labels(np.array([0, 1, -1], np.int64), 5) == 2
    assert Ls._check_labels(np.zeros(0, np.int64), 5) == -1


# -------------------------------------------------------------------- optim
def ref_sgd(p, g, v, lr, mu, nesterov, wd):
    g = g + wd * p
    if mu != 0:
        v = mu * v + g
        g = g + mu * v if nesterov else v
    return p - lr * g, v


def ref_adam(p, g, m, v, t, lr, b1, b2, eps, wd, decoupled):
    if wd != 0:
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
    return p - lr / (1 - b1 ** t) * m / denom, m, v


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_sgd_kernel_matches_reference(rng, dt, variant):
    for n in (1, 7, 257):
        for mu, nesterov, wd in ((0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.01), (0.5, False, 0.1)):
            p = randn(rng, (n,), dt)
            v = np.zeros(n if mu else 0, dt)
            p64, v64 = p.astype(np.float64), np.zeros(n)
            for _ in range(3):
                g = randn(rng, (n,), dt)
                var(O._sgd_update, variant)(p, g, v, 0.1, mu, nesterov, wd)
                p64, v64 = ref_sgd(p64, g.astype(np.float64), v64, 0.1, mu, nesterov, wd)
            close(p, p64, dt, 4, f"sgd n={n} mu={mu} nesterov={nesterov} wd={wd}")
            if mu:
                close(v, v64, dt, 4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dt", DTYPES)
def test_adam_kernel_matches_reference(rng, dt, variant):
    for n in (1, 7, 257):
        for wd, decoupled in ((0.0, False), (0.01, False), (0.1, True)):
            p = randn(rng, (n,), dt)
            m, v = np.zeros(n, dt), np.zeros(n, dt)
            p64, m64, v64 = p.astype(np.float64), np.zeros(n), np.zeros(n)
            for t in range(1, 4):
                g = randn(rng, (n,), dt)
                var(O._adam_update, variant)(p, g, m, v, t, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
                p64, m64, v64 = ref_adam(p64, g.astype(np.float64), m64, v64, t, 1e-2, 0.9, 0.999,
                                         1e-8, wd, decoupled)
            what = f"adam n={n} wd={wd} decoupled={decoupled}"
            close(p, p64, dt, 8, what)
            close(m, m64, dt, 8, what)
            close(v, v64, dt, 8, what)


def test_vectorisable_exp_is_accurate():
    """The softmax's own exp (no libm call, so its loop vectorises) is within
    2 ulp of numpy's float64 exp on [-80, 0], keeps NaN, and clamps below -80."""
    from fastbp.kernels.losses import _exp_nonpos
    xs = np.concatenate([-np.logspace(-15, np.log10(80.0), 5000), -np.linspace(0.0, 80.0, 5001), [0.0, -0.0]])
    got = np.array([_exp_nonpos(v) for v in xs])
    want = np.exp(xs)
    ulps = np.abs(got - want) / np.spacing(want)
    assert ulps.max() <= 2.0, (ulps.max(), xs[np.argmax(ulps)])
    assert np.isnan(_exp_nonpos(np.nan))
    assert _exp_nonpos(-np.inf) == _exp_nonpos(-80.0) == _exp_nonpos(-1e300)
    assert np.float32(_exp_nonpos(np.float32(-3.5))) == np.float32(np.exp(np.float64(np.float32(-3.5))))


# ------------------------------------------- kept derivatives (uses="input" entries)
@pytest.mark.thorough
@pytest.mark.parametrize("dt", DTYPES)
def test_fwd_d_is_the_forward_and_the_derivative_bitwise(rng, dt):
    """``fwd_d`` (the training forward of an activation whose derivative reads its input)
    and ``bias_act_d`` (the same after a product's bias) write bitwise what ``fwd`` writes
    and what ``bwd`` multiplies by (``bwd`` with ``dY = 1``), for every such entry, with
    non-default parameters, NaN and extremes; and ``_mul_d`` (the backward then) is ``dX (+)= dY * D``, in place too.  CI's thorough stage
    (a cold compilation of two kernels per entry and dtype); the README's run checks the same
    kernels through the steps: tests/test_registry.py (fused, every entry, both dtypes) and
    tests/test_norms.py (standalone, against PyTorch)."""
    from fastbp.registry import activations as R
    entries = [e for e in R.entries() if e.uses == "input"]
    assert {"gelu", "gelu_tanh", "silu", "elu", "leaky_relu", "softplus"} <= {e.name for e in entries}
    x = randn(rng, (7, 33), dt, 4.0)
    x[0, :6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30 if dt == np.float64 else 1e30]
    for e in entries:
        ks = A.kernels(e.code)
        P = np.array([v * 0.75 + 0.1 for v in e.defaults], dtype=dt)
        y_ref, d_ref = np.empty_like(x), np.empty_like(x)
        with np.errstate(all="ignore"):
            ks.fwd.serial(x, y_ref, P)
            ks.bwd.serial(x, np.ones_like(x), d_ref, False, P)
        y, d = np.full_like(x, 7.0), np.full_like(x, 7.0)
        ks.fwd_d.serial(x, y, d, P)
        np.testing.assert_array_equal(y, y_ref, err_msg=e.name)
        np.testing.assert_array_equal(d, d_ref, err_msg=e.name)
        # the training epilogue of a fused product: z = Z + b, Y = f(z), Z = f'(z); no bias too
        b = x[1].copy()
        for bias in (b, np.empty(0, dt)):
            z = x + bias if bias.size else x.copy()
            zy, zd = np.empty_like(x), np.empty_like(x)
            with np.errstate(all="ignore"):
                ks.fwd.serial(z, zy, P)
                ks.bwd.serial(z, np.ones_like(x), zd, False, P)
            Z, Y = x.copy(), np.full_like(x, 7.0)
            ks.bias_act_d.serial(Z, bias, Y, P)
            np.testing.assert_array_equal(Y, zy, err_msg=e.name)
            np.testing.assert_array_equal(Z, zd, err_msg=e.name)
    D, dY = randn(rng, (5, 9), dt), randn(rng, (5, 9), dt)
    out = np.empty_like(D)
    A._mul_d.serial(D, dY, out, False)
    np.testing.assert_array_equal(out, dY * D)
    acc = np.ones_like(D)
    A._mul_d.serial(D, dY, acc, True)
    # (accumulating, the product and the sum may be one fused multiply-add: one rounding)
    prod = dY.astype(np.float64) * D
    assert np.all(np.abs(acc - (1.0 + prod)) <= 2 * np.finfo(dt).eps * (1.0 + np.abs(prod)))
    same = dY.copy()
    A._mul_d.serial(D, same, same, False)
    np.testing.assert_array_equal(same, dY * D)


@pytest.mark.parametrize("variant", ["serial", pytest.param("parallel", marks=pytest.mark.thorough)])
def test_batchnorm_statistics_of_many_float32_rows_are_summed_in_float64(rng, variant):
    """BatchNorm's column sums (mean, variance, and the backward's sums of dY and dY * xhat)
    in float64, rounded once: with float32 running sums, on 2e5 rows around 100, the mean was
    1.9e-3 off and the normalised output 7e-4 (torch's 3.5e-4; now 2e-6)."""
    from fastbp.kernels import norm as N
    X = (rng.standard_normal((200_000, 67)) * 3 + 100).astype(np.float32)     # a full and a narrow block
    S = np.zeros((5, 67), np.float32)
    Y = np.empty_like(X)
    one, zero = np.ones(67, np.float32), np.zeros(67, np.float32)
    var(N._batchnorm_fwd, variant)(X, one, zero, Y, S, np.zeros((0, 67), np.float32),
                                   np.array([1e-5], np.float32), True)
    x64 = X.astype(np.float64)
    mean = x64.mean(0)
    np.testing.assert_array_equal(S[0], mean.astype(np.float32))
    dev = ((x64 - S[0].astype(np.float64)) ** 2).sum(0)     # the deviations from the rounded mean
    np.testing.assert_allclose(S[2], dev, rtol=1e-6)
    ref = (x64 - mean) / np.sqrt(x64.var(0) + 1e-5)
    assert np.abs(Y - ref).max() < 1e-5
    dY = rng.standard_normal(X.shape).astype(np.float32)
    dX, dw, db = np.empty_like(X), np.empty(67, np.float32), np.empty(67, np.float32)
    var(N._batchnorm_bwd, variant)(X, one, S, dY, dX, dw, db, False, False, False, True)
    np.testing.assert_array_equal(db, dY.astype(np.float64).sum(0).astype(np.float32))
    xhat = (X - S[0]) * S[1]             # the kernel's float32 xhat, as in its sum
    np.testing.assert_allclose(dw, (dY.astype(np.float64) * xhat.astype(np.float64)).sum(0), rtol=1e-5, atol=1e-2)
