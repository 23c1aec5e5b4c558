"""fastbp.gradcheck: finite differences, relative error, gradcheck reports,
and the worked examples of the notes checked through fastbp.ops."""
import numpy as np
import pytest

from fastbp import ops
from fastbp.gradcheck import (GradcheckError, default_eps, default_rtol, gradcheck, numerical_gradient,
                              relative_error)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ------------------------------------------------------- numerical_gradient
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_numerical_gradient_of_known_functions(rng, dt):
    x = np.array(rng.uniform(-2, 2, (3, 5)), dt)
    tol = 1e-8 if dt == np.float64 else 2e-3
    cases = [
        (lambda v: np.sum(v.astype(np.float64) ** 2), lambda v: 2 * v),
        (lambda v: np.sum(np.sin(v.astype(np.float64))), np.cos),
        (lambda v: np.sum(v.astype(np.float64) ** 3) / 3, lambda v: v.astype(np.float64) ** 2),
        (lambda v: float(v[1, 2]) * float(v[0, 0]), None),
    ]
    for f, g in cases:
        num = numerical_gradient(f, x)
        assert num.shape == x.shape and num.dtype == np.float64
        if g is None:
            ref = np.zeros(x.shape)
            ref[1, 2], ref[0, 0] = x[0, 0], x[1, 2]
        else:
            ref = g(x.astype(np.float64))
        assert relative_error(num, ref) < tol


def test_numerical_gradient_restores_input_exactly(rng):
    x = rng.standard_normal((4, 7))
    before = x.copy()
    numerical_gradient(lambda v: np.sum(np.exp(v)), x)
    np.testing.assert_array_equal(x, before)
    xt = rng.standard_normal((5, 6))[:, ::2]  # a strided view works too
    b2 = xt.copy()
    g = numerical_gradient(lambda v: np.sum(v ** 2), xt)
    np.testing.assert_array_equal(xt, b2)
    assert relative_error(g, 2 * b2) < 1e-9


class _Boom(Exception):
    pass


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("fail_at", [0, 1, 4, 5])          # on an x + h call and on an x - h call
@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt, "not_scalar"])
def test_numerical_gradient_restores_input_bitwise_when_f_raises(dt, fail_at, exc):
    """Defect: an exception from f left x perturbed by +-h.  Values whose bits a careless
    restore would change (-0.0, NaN payloads, subnormals) must come back bitwise."""
    bits = np.uint32 if dt == np.float32 else np.uint64
    nan_payload = (0x7FC00123 if dt == np.float32 else 0x7FF8000000000123)
    x = np.array([[1.25, -0.0, 3.0], [np.finfo(dt).smallest_subnormal, -2.5, 0.0]], dt)
    x.view(bits)[1, 2] = nan_payload
    view = x.T                                                # a non-contiguous view of the same memory
    before = x.tobytes()
    calls = []

    def f(v):
        calls.append(v.copy())
        if len(calls) - 1 == fail_at:
            if exc == "not_scalar":
                return np.zeros(2)                            # _scalar raises TypeError
            raise exc("f failed")
        return float(np.sum(np.nan_to_num(v.astype(np.float64))))

    with pytest.raises(TypeError if exc == "not_scalar" else exc):
        numerical_gradient(f, view)
    assert x.tobytes() == before
    assert calls[-1].tobytes() != view.copy().tobytes()     # f really saw a perturbed x when it failed


def test_numerical_gradient_closure_and_0d(rng):
    x = np.array(1.5)
    assert abs(numerical_gradient(lambda v: float(v) ** 2, x) - 3.0) < 1e-8
    w = rng.standard_normal(4)

    def loss(_):  # reads w through the closure
        return np.dot(w, w)

    np.testing.assert_allclose(numerical_gradient(loss, w), 2 * w, rtol=1e-8)


def test_numerical_gradient_bad_arguments():
    with pytest.raises(TypeError, match="x has dtype int64; expected float32 or float64"):
        numerical_gradient(np.sum, np.arange(3))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        numerical_gradient(np.sum, [1.0, 2.0])
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="x is read-only"):
        numerical_gradient(np.sum, ro)
    with pytest.raises(TypeError, match="f must return a scalar"):
        numerical_gradient(lambda v: v * 2, np.ones(3))
    with pytest.raises(ValueError, match=r"numerical_gradient: eps must be > 0.0, got 0.0"):
        numerical_gradient(np.sum, np.ones(3), eps=0.0)
    with pytest.raises(ValueError, match="numerical_gradient: eps must be finite, got an integer of 401 digits"):
        numerical_gradient(np.sum, np.ones(3), eps=10**400)


def test_default_steps_and_tolerances():
    assert default_eps(np.float64) < default_eps(np.float32)
    assert default_rtol(np.float64) < default_rtol(np.float32)


# ----------------------------------------------------------- relative_error
def test_relative_error():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(a, -a) == 1.0  # max|2a| / max(2|a|)
    assert relative_error(np.array([1.0]), np.array([1.0 + 1e-6])) == pytest.approx(5e-7, rel=1e-3)
    # scale free
    assert relative_error(1e-8 * a, 1e-8 * (a + 1e-3)) == pytest.approx(relative_error(a, a + 1e-3))
    assert np.isnan(relative_error(np.array([np.nan]), np.array([1.0])))
    assert relative_error(np.zeros(0), np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.ones(3), np.ones(4))


# ---------------------------------------------------------------- gradcheck
def _quad(rng, dt=np.float64):
    A = np.array(rng.standard_normal((4, 3)), dt)
    x = np.array(rng.standard_normal(3), dt)
    c = np.array(rng.standard_normal(4), dt)

    def f(A, x, c):
        r = A.astype(np.float64) @ x + c
        return 0.5 * np.dot(r, r)

    def grads(A, x, c):
        r = A.astype(np.float64) @ x + c
        return {"A": np.outer(r, x), "x": A.T.astype(np.float64) @ r, "c": r}

    return f, {"A": A, "x": x, "c": c}, grads


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_gradcheck_passes_correct_gradients(rng, dt):
    f, inputs, grads = _quad(rng, dt)
    assert gradcheck(f, inputs, grads) is True
    assert gradcheck(f, inputs, grads(**inputs)) is True
    lst = [inputs["A"], inputs["x"], inputs["c"]]
    g = grads(*lst)
    assert gradcheck(f, lst, [g["A"], None, g["c"]]) is True
    assert gradcheck(f, inputs, {"x": g["x"]}) is True  # a subset of the inputs


def test_gradcheck_reports_wrong_gradients(rng):
    f, inputs, grads = _quad(rng)
    g = grads(**inputs)
    g["x"] = g["x"].copy()
    g["x"][1] += 0.5
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, inputs, g)
    msg = str(info.value)
    assert "'x'" in msg and "relative error" in msg and "worst at index (1,)" in msg
    assert "'A'" in msg and "ok" in msg  # passing inputs are listed too
    assert gradcheck(f, inputs, g, raise_exception=False) is False
    # a transposed (wrong-shaped) gradient is an error, not a pass
    g = grads(**inputs)
    with pytest.raises(ValueError, match=r"analytic_grads\['A'\] has shape \(3, 4\)"):
        gradcheck(f, inputs, {"A": g["A"].T})
    with pytest.raises(ValueError, match="not among the inputs"):
        gradcheck(f, inputs, {"z": g["A"]})


def test_gradcheck_sign_error_caught_in_float32(rng):
    f, inputs, grads = _quad(rng, np.float32)
    g = grads(**inputs)
    assert not gradcheck(f, inputs, {"c": -g["c"]}, raise_exception=False)
    assert gradcheck(f, inputs, {"c": g["c"]})


def test_gradcheck_tolerances(rng):
    f, inputs, grads = _quad(rng)
    g = grads(**inputs)
    g["c"] = g["c"] * (1 + 1e-4)
    assert not gradcheck(f, inputs, g, raise_exception=False)
    assert gradcheck(f, inputs, g, rtol=1e-3)
    z = {"c": np.zeros(4)}
    assert gradcheck(lambda c: 0.0 * c.sum(), z, {"c": np.full(4, 1e-9)}, atol=1e-8)
    assert not gradcheck(lambda c: 0.0 * c.sum(), z, {"c": np.full(4, 1e-9)}, raise_exception=False)


def test_gradcheck_nan_gradient_fails(rng):
    f, inputs, grads = _quad(rng)
    g = grads(**inputs)
    g["A"][0, 0] = np.nan
    with pytest.raises(GradcheckError, match=r"'A'.*relative error nan.*index \(0, 0\)"):
        gradcheck(f, inputs, g)


def test_gradcheck_passes_through_non_float_inputs(rng):
    S = rng.standard_normal((4, 3))
    y = np.array([0, 2, 1, 1])
    assert gradcheck(lambda S, y: ops.softmax_cross_entropy(S, y)[0], {"S": S, "y": y},
                     lambda S, y: {"S": ops.softmax_cross_entropy(S, y)[1]})
    with pytest.raises(TypeError, match="inputs must be a dict or a list"):
        gradcheck(np.sum, S, [S])


# ------------------------------------------- the worked examples of the notes
def test_example_add_mul_circuit():
    """f = (x + y) z at x=-2, y=5, z=-4: q = 3, f = -12; df/dz = 3, df/dx = df/dy = -4."""
    x, y, z = np.array(-2.0), np.array(5.0), np.array(-4.0)
    q = ops.add_forward(x, y)
    f = ops.mul_forward(q, z)
    assert (q, f) == (3, -12)
    dq, dz = ops.mul_backward(q, z, np.array(1.0))
    dx, dy = ops.add_backward(x, y, dq)
    assert (dx, dy, dz) == (-4, -4, 3)
    assert gradcheck(lambda x, y, z: ops.mul_forward(ops.add_forward(x, y), z),
                     {"x": x, "y": y, "z": z}, {"x": dx, "y": dy, "z": dz})


def test_example_sigmoid_neuron():
    """f = sigmoid(w0 x0 + w1 x1 + w2) at w = (2, -3, -3), x = (-1, -2)."""
    w = np.array([[2.0], [-3.0]])  # (in=2, out=1)
    b = np.array([-3.0])
    x = np.array([[-1.0, -2.0]])
    y = ops.linear_forward(x, w, b, "sigmoid")
    assert y[0, 0] == pytest.approx(0.7310585786)
    dx, dw, db = ops.linear_backward(x, w, y, np.ones((1, 1)), "sigmoid")
    np.testing.assert_allclose(dw[:, 0], [-0.19661193, -0.39322387], rtol=1e-7)
    np.testing.assert_allclose(dx[0], [0.39322387, -0.58983580], rtol=1e-7)
    np.testing.assert_allclose(db, [0.19661193], rtol=1e-7)
    assert gradcheck(lambda x, w, b: ops.linear_forward(x, w, b, "sigmoid")[0, 0],
                     {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


def test_example_vectorised_norm():
    """f = ||W x||^2 with W = [[.1, .5], [-.3, .8]], x = [.2, .4]."""
    W = np.array([[0.1, 0.5], [-0.3, 0.8]])
    x = np.array([[0.2], [0.4]])
    q = ops.matmul(W, x)
    np.testing.assert_allclose(q[:, 0], [0.22, 0.26])
    f = float(np.sum(q * q))
    assert f == pytest.approx(0.116)
    dq = 2 * q
    dW = ops.matmul(dq, np.ascontiguousarray(x.T))  # 2 q x^T
    dx = ops.matmul(np.ascontiguousarray(W.T), dq)  # 2 W^T q
    np.testing.assert_allclose(dW, [[0.088, 0.176], [0.104, 0.208]])
    np.testing.assert_allclose(dx[:, 0], [-0.112, 0.636])
    assert gradcheck(lambda W, x: np.sum(ops.matmul(W, x) ** 2), {"W": W, "x": x}, {"W": dW, "x": dx})


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_example_two_layer_net(rng, act):
    """Two layers with squared loss: the chain of linear_backward calls matches finite differences."""
    X = rng.standard_normal((6, 4))
    W1 = rng.standard_normal((4, 5)) * 0.5
    b1 = rng.standard_normal(5) * 0.5
    W2 = rng.standard_normal((5, 2)) * 0.5
    b2 = np.zeros(2)
    T = rng.standard_normal((6, 2))
    for _ in range(100):  # keep ReLU's pre-activations off the kink
        if np.abs(X @ W1 + b1).min() > 0.05:
            break
        b1 = rng.standard_normal(5) * 0.5

    def f(W1, b1, W2, b2):
        h = ops.linear_forward(X, W1, b1, act)
        return ops.mse(ops.linear_forward(h, W2, b2), T)[0]

    h = ops.linear_forward(X, W1, b1, act)
    out = ops.linear_forward(h, W2, b2)
    _, dout = ops.mse(out, T)
    dh, dW2, db2 = ops.linear_backward(h, W2, out, dout)
    _, dW1, db1 = ops.linear_backward(X, W1, h, dh, act, need_dx=False)
    assert gradcheck(f, {"W1": W1, "b1": b1, "W2": W2, "b2": b2},
                     {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2})


# ------------------------------------------------------- argument checks (review defects 7, 8)
@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value,exc,words", [
    ("1e-3", TypeError, "must be a real number"),
    (True, TypeError, "must be a real number"),
    (-1.0, ValueError, "must be >= 0"),
    (float("nan"), ValueError, "must be finite"),
    (float("inf"), ValueError, "must be finite"),
])
def test_gradcheck_checks_its_tolerances(name, value, exc, words):
    """Strings used to fail on a comparison without naming the argument; a negative or NaN
    tolerance was taken (and failed every check), an infinite one passed any gradient."""
    x = np.array([1.0, 2.0])
    with pytest.raises(exc, match=f"gradcheck: {name} {words}"):
        gradcheck(lambda x: float(np.sum(x ** 2)), {"x": x}, {"x": 2 * x}, **{name: value})
    ok = {name: 0.0 if name == "atol" else 1e-6}
    assert gradcheck(lambda x: float(np.sum(x ** 2)), {"x": x}, {"x": 2 * x}, **ok)
    assert gradcheck(lambda x: float(np.sum(x ** 2)), {"x": x}, {"x": 2 * x}, rtol=None, atol=None)


def test_gradcheck_names_a_read_only_input_without_mentioning_out():
    x = np.array([1.0, 2.0])
    x.flags.writeable = False
    with pytest.raises(ValueError, match=r"inputs\['x'\] is read-only") as e:
        gradcheck(lambda x: float(np.sum(x ** 2)), {"x": x}, {"x": 2 * x})
    assert "out=" not in str(e.value)
    with pytest.raises(ValueError, match="x is read-only") as e:
        numerical_gradient(np.sum, x)
    assert "out=" not in str(e.value)


def test_a_step_whose_difference_overflows_is_an_error_naming_eps():
    """eps=1e308: x + eps and x - eps are finite, their difference is not (the quotient was 0)."""
    x = np.array([0.5, -1.0])
    with pytest.raises(ValueError, match=r"eps=1e\+308 overflows at x\[0\]"):
        numerical_gradient(lambda v: float(np.sum(v)), x, eps=1e308)
    assert x.tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="eps=1e\\+308 overflows"):
        gradcheck(lambda x: float(np.sum(x)), {"x": x}, {"x": np.ones(2)}, eps=1e308)
    np.testing.assert_allclose(numerical_gradient(lambda v: float(np.sum(v)), x, eps=1e300), [1.0, 1.0])


def test_gradcheck_errors_name_the_callers_input():
    """Errors found while differencing name the input by its key (they named an internal x)."""
    W = np.array([[0.5, 1e30]], np.float32)
    with pytest.raises(ValueError, match=r"eps=0\.01 is lost at inputs\['W'\]\[0, 1\]"):
        gradcheck(lambda W, b: float(np.sum(W)), {"W": W, "b": 1.0}, {"W": np.ones((1, 2))})
    with pytest.raises(ValueError, match=r"overflows at inputs\[1\]\[0\]"):
        gradcheck(lambda a, v: float(np.sum(v)), [np.zeros(1), np.array([0.5])], [None, np.ones(1)], eps=1e308)
    with pytest.raises(ValueError, match=r"eps=1e\+308 overflows at x\[0\]"):      # numerical_gradient's own name
        numerical_gradient(lambda v: float(np.sum(v)), np.array([0.5]), eps=1e308)


@pytest.mark.parametrize("eps, exc, msg", [("1e-3", TypeError, "gradcheck: eps must be a real number, got str"),
                                           (-1e-3, ValueError, r"gradcheck: eps must be > 0.0"),
                                           (10**400, ValueError, "gradcheck: eps must be finite, got an integer")],
                         ids=["str", "negative", "int-beyond-float"])
def test_gradcheck_checks_eps_before_calling_f(eps, exc, msg):
    calls = []

    def f(x):
        calls.append(1)
        return float(np.sum(x))

    with pytest.raises(exc, match=msg):
        gradcheck(f, {"x": np.ones(2)}, {"x": np.ones(2)}, eps=eps)
    assert calls == []


def test_every_element_is_judged_on_its_own_scale():
    """The verdict was relative_error <= rtol, one number for the whole array: an element a
    million times smaller than the largest could have any sign, and float32 passed
    gradients 4% off everywhere.  torch.autograd.gradcheck judges every element."""
    y = np.array([1000.0, 1e-3])
    f = lambda y: 0.5 * float(np.sum(y ** 2))           # noqa: E731
    assert gradcheck(f, [y], [np.array([1000.0, 1e-3])])
    with pytest.raises(GradcheckError, match=r"1 of 2 elements beyond rtol 1e-06.*index \(1,\): analytic -0.001"):
        gradcheck(f, [y], [np.array([1000.0, -1e-3])])
    assert not gradcheck(f, [y], [np.array([1000.0, 0.0])], raise_exception=False)
    x = np.array([1.0, -2.0, 3.0], np.float32)
    cube = lambda x: float(np.sum(x.astype(np.float64) ** 3))     # noqa: E731
    assert gradcheck(cube, [x], [3 * x ** 2])
    assert not gradcheck(cube, [x], [3 * x ** 2 * 1.04], raise_exception=False)
    # the rounding noise of the differences is allowed for: a large constant in f does not
    # fail a correct gradient whose elements are far below it
    v = np.linspace(-1e-3, 1e-3, 7)
    assert gradcheck(lambda v: 1e6 + float(np.sum(v ** 2)), [v], [2 * v])
    assert not gradcheck(lambda v: 1e6 + float(np.sum(v ** 2)), [v], [2 * v + 1e-2], raise_exception=False)


def test_a_non_finite_function_value_fails_rather_than_widening_the_noise():
    x = np.array([0.0, 1.0])
    g = np.array([1.0, 1.0])
    assert not gradcheck(lambda x: float(np.sum(x)) if x[0] < 1e-7 else np.inf, [x], [g], raise_exception=False)
