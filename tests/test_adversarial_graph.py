"""Adversarial inputs to the gate-graph API (``fastbp.Graph``, ``fastbp.grad``), the
``fastbp.ops`` wrappers and ``fastbp.gradcheck``: wrong types are ``TypeError`` naming the
argument, nothing is silently converted or lost, a compiled function has no hidden state
between calls, and results follow numpy / PyTorch semantics."""
import numpy as np
import pytest

import fastbp
from fastbp import GraphError, ops
from fastbp.gradcheck import gradcheck, numerical_gradient, relative_error


# ---------------------------------------------------------------- graph construction
@pytest.mark.parametrize("value", [
    np.array([1 + 2j, 3.0]),            # the imaginary part was dropped (a ComplexWarning only)
    np.array([True, False]),             # bool arrays became 1.0 / 0.0 (Python's True was refused)
    np.array(["1", "2"]),                # strings were parsed as numbers
    ["1.5", "2"],
    np.array([1.0, None], dtype=object),
])
def test_constants_and_params_of_non_real_values_are_type_errors(value):
    g = fastbp.Graph()
    x = g.input("x", (2,))
    with pytest.raises(TypeError, match="constant must hold real numbers"):
        x + value
    with pytest.raises(TypeError, match="constant must hold real numbers"):
        g.const(value)
    with pytest.raises(TypeError, match=r"param 'p': value must hold real numbers"):
        g.param("p", value)
    # still GraphErrors (what the graph API raised before), so old handlers keep working
    with pytest.raises(GraphError):
        g.param("p", value)


def test_real_constants_and_params_are_still_accepted_exactly():
    g = fastbp.Graph()
    assert g.param("a", [1, 2]).value.dtype == np.float64
    assert g.param("b", np.float32(1.5)).value == 1.5
    w = np.ones((2, 3))
    assert g.param("c", w, copy=False).value is w           # no copy of a float64 array
    assert g.param("d", w).value is not w
    assert g.param("e", np.array([1, 2], dtype=object)).value.tolist() == [1.0, 2.0]
    assert g.param("f", np.arange(3, dtype=">f8")).value.tolist() == [0.0, 1.0, 2.0]
    assert g.const(np.int8(3)).value == 3.0


@pytest.mark.parametrize("make, match", [
    (lambda g, x: x + "a", "constants must be real numbers or arrays, got str"),
    (lambda g, x: x * None, "constants must be real numbers or arrays, got NoneType"),
    (lambda g, x: x + 1j, "constants must be real numbers or arrays, got complex"),
    (lambda g, x: fastbp.relu(3.0), "relu: expected a graph node, got float"),
    (lambda g, x: fastbp.sum(np.ones(3)), "sum: expected a graph node, got ndarray"),
    (lambda g, x: fastbp.maximum(1.0, 2.0), "maximum: expected a graph node, got float"),
    (lambda g, x: fastbp.graph.gate(2, x, x), "gate: name must be a str, got int"),
    (lambda g, x: fastbp.graph.gate("add", 1.0, 2.0), "add: expected a graph node, got float"),
    (lambda g, x: fastbp.layer_norm(x, weight=np.ones(2)), "layer_norm: weight must be a graph node"),
    (lambda g, x: g.input(3, (2,)), "input name must be a non-empty string, got int"),
    (lambda g, x: g.param(None, 1.0), "param name must be a non-empty string, got NoneType"),
    (lambda g, x: g.input("y", 3), r"input 'y': shape must be a tuple, got int"),
    (lambda g, x: g.input("y", "ab"), r"input 'y': shape must be a tuple, got str"),
    (lambda g, x: g.input("y", (2.0,)), r"input 'y': dimensions must be positive integers"),
    (lambda g, x: g.input("y", (True,)), r"input 'y': dimensions must be positive integers"),
    (lambda g, x: fastbp.batch_norm(g.input("b", (None, 2)), running_mean=np.array([1j, 0])),
     "batch_norm: running_mean must hold real numbers, got dtype complex128"),
    (lambda g, x: fastbp.batch_norm(g.input("b", (None, 2)), running_var=["1", "1"]),
     "batch_norm: running_var must hold real numbers"),
    (lambda g, x: fastbp.grad(np.ones(3), []), "output must be a graph node, got ndarray"),
    (lambda g, x: fastbp.grad(fastbp.sum(x), [x, "x"]), "wrt entries must be graph nodes, got str"),
    (lambda g, x: fastbp.grad(fastbp.sum(x), None), "wrt must be a node or a list of nodes, got NoneType"),
    (lambda g, x: fastbp.grad(fastbp.sum(x), "x"), "wrt must be a node or a list of nodes, got str"),
])
def test_wrong_argument_types_are_type_errors_naming_the_argument(make, match):
    g = fastbp.Graph()
    x = g.input("x", (2,))
    with pytest.raises(TypeError, match=match) as e:
        make(g, x)
    assert isinstance(e.value, GraphError)          # and still a GraphError (a ValueError)


@pytest.mark.parametrize("make, match", [
    (lambda g, x: g.input("y", (0,)), "dimensions must be positive integers"),
    (lambda g, x: g.input("", (2,)), "input name must be a non-empty string"),
    (lambda g, x: x + np.nan, "is not finite"),
    (lambda g, x: x + np.ones(3), "do not broadcast"),
    (lambda g, x: g.param("p", [[1.0, 2.0], [3.0]]), r"param 'p': value is not a rectangular array"),
    (lambda g, x: x + [[1.0], [2.0, 3.0]], "constant is not a rectangular array"),
])
def test_wrong_values_stay_value_errors(make, match):
    g = fastbp.Graph()
    x = g.input("x", (2,))
    with pytest.raises(ValueError, match=match) as e:
        make(g, x)
    assert not isinstance(e.value, TypeError)


# ---------------------------------------------------------------- fastbp.grad
def test_grad_with_an_empty_wrt_is_a_clear_error():
    """It raised KeyError from the compiler (torch.autograd.grad: "grad requires non-empty inputs")."""
    g = fastbp.Graph()
    x = g.input("x", (2,))
    for out in (fastbp.sum(x), g.const(2.0)):
        with pytest.raises(GraphError, match="wrt is empty"):
            fastbp.grad(out, [])
        with pytest.raises(GraphError, match="wrt is empty"):
            fastbp.grad(out, ())


def test_grad_function_has_no_hidden_state_from_parameter_overrides():
    """A parameter passed to one call was kept by every later call that did not pass it:
    f(x=a) gave another result after f(x=a, W=...)."""
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    W = g.param("W", np.arange(6.0).reshape(3, 2) / 10)
    b = g.param("b", np.array([0.5, -0.5]))
    f = fastbp.grad(fastbp.sum(fastbp.tanh(x @ W + b)), [x, W], batch_size=4)
    xv = np.linspace(-1, 1, 6).reshape(2, 3)
    v0, g0 = f(x=xv)
    v1, g1 = f(x=xv, W=np.zeros((3, 2)), b=np.full(2, np.nan))
    assert np.isnan(v1)
    for _ in range(2):
        v2, g2 = f(x=xv)
        assert v2 == v0
        for k in g0:
            np.testing.assert_array_equal(g2[k], g0[k])
    # an override is the given value, in that call
    v3, _ = f(x=xv, W=np.zeros((3, 2)))
    assert v3 == pytest.approx(np.sum(np.tanh(np.tile(b.value, (2, 1)))))
    assert f(x=xv, b=b.value)[0] == v0


# ---------------------------------------------------------------- fastbp.ops
@pytest.mark.parametrize("flag", ["no", 0, 1, None, 1.0])
def test_linear_backward_need_dx_must_be_a_bool(flag):
    """``need_dx="no"`` was truthy: dx was computed and returned."""
    x, W = np.ones((2, 3)), np.ones((3, 4))
    y = fastbp.ops.linear_forward(x, W)
    with pytest.raises(TypeError, match="need_dx must be a bool"):
        fastbp.ops.linear_backward(x, W, y, np.ones_like(y), need_dx=flag)
    assert fastbp.ops.linear_backward(x, W, y, np.ones_like(y), need_dx=np.bool_(False))[0] is None


# ---------------------------------------------------------------- fastbp.gradcheck
@pytest.mark.parametrize("x, eps", [
    (np.array([1e20]), None),                                   # x + 1e-6 == x - 1e-6: it divided by zero
    (np.array([np.finfo(np.float32).max], np.float32), None),   # likewise in float32
    (np.array([1.0, 3e38], np.float32), 1e38),                  # x + eps overflows
])
def test_numerical_gradient_refuses_a_step_lost_in_rounding(x, eps):
    before = x.copy()
    with pytest.raises(ValueError, match=r"eps=.* is lost at x\[\d\]"):
        numerical_gradient(lambda v: float(v.ravel()[0]), x, eps)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("eps, exc", [("1e-3", TypeError), (True, TypeError), ([1e-3], TypeError),
                                      (np.inf, ValueError), (np.nan, ValueError), (0.0, ValueError),
                                      (-1e-3, ValueError)])
def test_numerical_gradient_eps_is_checked(eps, exc):
    with pytest.raises(exc, match="eps must be"):
        numerical_gradient(lambda v: float(np.sum(v)), np.ones(2), eps)
    assert numerical_gradient(lambda v: float(np.sum(v * v)), np.ones(2), np.float32(1e-3)) == pytest.approx(2.0)


@pytest.mark.parametrize("ret", ["1.0", None, 1j, True])
def test_numerical_gradient_needs_a_real_scalar_from_f(ret):
    """``f`` returning the string "1.0" was read as 1.0; None gave float()'s message."""
    with pytest.raises(TypeError, match="f must return a real scalar"):
        numerical_gradient(lambda v: ret, np.ones(2))


def test_relative_error_of_identical_infinite_and_of_complex_gradients():
    assert relative_error(np.array([np.inf, -np.inf, 1.0]), np.array([np.inf, -np.inf, 1.0])) == 0.0   # was NaN
    assert relative_error(np.array([np.inf]), np.array([1.0])) != 0.0
    with pytest.raises(TypeError, match="relative_error: b must hold real numbers, got dtype complex128"):
        relative_error(np.ones(2), np.array([1.0, 1j]))       # the imaginary part was dropped
    assert gradcheck(lambda v: float(np.sum(v ** 2)), [np.array([1.0, -2.0])], [np.array([2.0, -4.0])])


# ---------------------------------------------------------------- normalisations
def test_norms_with_eps_zero_and_no_variance_give_nan_like_torch():
    """eps=0 and a constant row (LayerNorm): 1 / sqrt(0) raised ZeroDivisionError from the
    compiled kernel; PyTorch gives NaN.  A batch norm with eps=0 is refused, as PyTorch's
    ``batch_norm`` refuses it in training (torch 2.13: "eps must be positive during
    training"); an eval pass with eps=0 still divides by the running variance."""
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    value, grads = fastbp.grad(fastbp.sum(fastbp.layer_norm(x, eps=0.0)), [x], batch_size=2)(x=np.ones((2, 3)))
    assert np.isnan(value) and np.isnan(grads["x"]).all()
    # the training step: a non-finite loss, weights unchanged
    step = fastbp.compile(fastbp.Sequential(fastbp.LayerNorm(3, eps=0.0), fastbp.Linear(3, 2)), loss="mse",
                          batch_size=4, dtype=np.float64)
    before = step.param_vector.copy()
    with pytest.raises(FloatingPointError):
        step(np.ones((2, 3)), np.zeros((2, 2)))
    np.testing.assert_array_equal(step.param_vector, before)
    for make, owner in ((lambda: fastbp.batch_norm(x, eps=0.0), "batch_norm"),
                        (lambda: fastbp.BatchNorm1d(3, eps=0.0), "BatchNorm1d"),
                        (lambda: ops.batch_norm_forward(np.ones((2, 3)), training=True, eps=0.0), "batch_norm_forward")):
        with pytest.raises(ValueError, match=f"{owner}: eps must be > 0"):
            make()
    y = ops.batch_norm_forward(np.zeros((2, 3)), training=False, eps=0.0, running_mean=np.zeros(3),
                               running_var=np.zeros(3))[0]
    assert np.isnan(y).all()        # 0 / sqrt(0), as PyTorch's eval pass
    # eval with a zero running variance (and the default eps) is finite; with it zeroed: inf/NaN
    step = fastbp.compile(fastbp.Sequential(fastbp.BatchNorm1d(3), fastbp.Linear(3, 2)), loss="mse",
                          batch_size=4, dtype=np.float64)
    step.buffers["0.running_var"][...] = 0.0
    assert np.isfinite(step.predict(np.zeros((2, 3)))).all()


def test_grad_of_batch_norm_with_one_row_is_pytorchs_value_error():
    """fastbp.grad is a training call: one row was a RuntimeError ("internal error: executor status 4")."""
    g = fastbp.Graph()
    x = g.input("x", (None, 4))
    f = fastbp.grad(fastbp.sum(fastbp.batch_norm(x) * np.arange(4.0)), [x], batch_size=3)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        f(x=np.ones((1, 4)))
    value, grads = f(x=np.arange(8.0).reshape(2, 4))      # and the function still works
    assert value == pytest.approx(np.sum(np.tile([-1.0, 1.0], (4, 1)).T * np.arange(4.0)), abs=1e-4)
    g = fastbp.Graph()
    x1 = g.input("x", (1, 4))
    with pytest.raises(ValueError, match="gets 1 row"):
        fastbp.grad(fastbp.sum(fastbp.batch_norm(x1)), [x1])(x=np.ones((1, 4)))


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_grad_of_batch_norm_on_a_fixed_shape_node_matches_pytorch(batch_size):
    """A batch_norm of a fixed (3, 2) node normalises its 3 rows whatever batch_size is: with the
    default batch_size=1 it was "internal error: executor status 4" (the one-row check read the
    call's batch rows, not the node's 3)."""
    torch = pytest.importorskip("torch")
    X = np.arange(6.0).reshape(3, 2) ** 1.5
    W = np.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 2.0]])
    g = fastbp.Graph()
    x = g.input("x", (3, 2))
    value, grads = fastbp.grad(fastbp.sum(fastbp.batch_norm(x) * g.param("w", W)), [x],
                               batch_size=batch_size)(x=X)
    t = torch.tensor(X, requires_grad=True)
    ref = (torch.nn.functional.batch_norm(t, None, None, training=True) * torch.tensor(W)).sum()
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(grads["x"], t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_grad_of_a_fixed_shape_batch_norm_next_to_one_batch_row():
    """With a batched input of one row too: the fixed node's 3 rows decide, not the call's 1."""
    g = fastbp.Graph()
    x = g.input("x", (3, 2))
    z = g.input("z", (None, 2))
    f = fastbp.grad(fastbp.sum(fastbp.batch_norm(x)) + fastbp.sum(z), [x, z], batch_size=4)
    X = np.arange(6.0).reshape(3, 2) ** 1.5
    for rows in (1, 2):
        value, grads = f(x=X, z=np.ones((rows, 2)))
        assert value == pytest.approx(2.0 * rows, abs=1e-12)
        np.testing.assert_allclose(grads["x"], np.zeros((3, 2)), atol=1e-12)
        np.testing.assert_array_equal(grads["z"], np.ones((rows, 2)))


# ---------------------------------------------------------------- activations at NaN
def test_relu_gradient_at_nan_passes_like_pytorch():
    """PyTorch's ReLU backward blocks the gradient only where y <= 0: at NaN it passes
    (threshold_backward); fastbp's 1[y > 0] gave 0 there, on every path."""
    x = np.array([np.nan, -1.0, 0.0, -0.0, 2.0, np.inf, -np.inf])
    expect = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])      # torch.relu(x).backward(ones)
    for dt in (np.float64, np.float32):
        y = fastbp.ops.relu_forward(x.astype(dt))
        np.testing.assert_array_equal(fastbp.ops.relu_backward(y, np.ones(7, dt)), expect)
    g = fastbp.Graph()
    xi = g.input("x", (7,))
    np.testing.assert_array_equal(fastbp.grad(fastbp.sum(fastbp.relu(xi)), [xi])(x=x)[1]["x"], expect)
    xx = np.array([[np.nan, 1.0], [-1.0, 2.0]])
    W = np.eye(2)
    yl = fastbp.ops.linear_forward(xx, W, activation="relu")
    np.testing.assert_array_equal(fastbp.ops.linear_backward(xx, W, yl, np.ones((2, 2)), "relu")[2], [1.0, 2.0])


# ---------------------------------------------------------------- fused linear chains
def _np_tanh_relu_reference(xv, Wv, bv, cv, bias_twice):
    z1 = xv @ Wv + bv
    h1 = np.maximum(z1, 0)
    z2 = xv @ Wv
    value = np.sum(h1 * cv) + np.sum(np.tanh(z2)) + (np.sum(bv * bv) if bias_twice else 0.0)
    dz1 = cv * (z1 > 0)
    dz2 = 1 - np.tanh(z2) ** 2
    dW = xv.T @ dz1 + xv.T @ dz2
    db = dz1.sum(axis=0) + (2 * bv if bias_twice else 0.0)
    dx = dz1 @ Wv.T + dz2 @ Wv.T
    return value, {"x": dx, "W": dW, "b": db}


@pytest.mark.parametrize("bias_twice", [False, True])
def test_fused_bias_gradient_accumulates_by_its_own_flag(bias_twice):
    """``relu(x @ W + b)`` is one fused instruction whose bias gradient accumulated under
    W's flag: a bias also used elsewhere lost that contribution (db wrong), and a W used by
    another product made db accumulate onto the previous call's value."""
    rng = np.random.default_rng(7)
    Wv, bv, cv = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((5, 4))
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    c = g.input("c", (None, 4))
    W, b = g.param("W", Wv), g.param("b", bv)
    out = fastbp.sum(fastbp.relu(x @ W + b) * c) + fastbp.sum(fastbp.tanh(x @ W))
    if bias_twice:
        out = out + fastbp.sum(b * b)
    f = fastbp.grad(out, [x, W, b], batch_size=5)
    for _ in range(3):
        xv = rng.standard_normal((5, 3))
        value, grads = f(x=xv, c=cv)
        ref_v, ref_g = _np_tanh_relu_reference(xv, Wv, bv, cv, bias_twice)
        assert value == pytest.approx(ref_v, rel=1e-12)
        for k in ref_g:
            np.testing.assert_allclose(grads[k], ref_g[k], rtol=1e-10, atol=1e-12, err_msg=k)


# the planning under test is the same in both dtypes: float32 takes the products alone in the
# README's run; with the gates and activations (their float32 kernels in the tape's variant,
# ~15 s of cold compilation nothing else there needs) in CI's thorough stage
@pytest.mark.parametrize("name, dtype", [
    pytest.param(n, dt, id=f"{n}-{dt.__name__}",
                 marks=[pytest.mark.thorough] * (dt is np.float32 and n in ("relu(W@W+b)", "gram_penalty")))
    for n in ("W@W", "W@W.T", "relu(W@W+b)", "gram_penalty", "x@W@W") for dt in (np.float64, np.float32)])
def test_a_parameter_on_both_sides_of_one_product_gets_both_gradients(name, dtype):
    """``W @ W`` with W a parameter is one fused linear instruction whose dX and dW are
    the same buffer: dX overwrote the dW just accumulated there (only ``dO W^T`` came
    back).  Against the hand-derived ``dO W^T + W^T dO`` (and ``(dO + dO^T) W`` for
    ``W W^T``) through numpy's reference of each expression."""
    rng = np.random.default_rng(3)
    Wv, bv, xv = rng.standard_normal((3, 3)), rng.standard_normal(3), rng.standard_normal((4, 3))
    g = fastbp.Graph()
    W, b, x = g.param("W", Wv), g.param("b", bv), g.input("x", (None, 3))
    eye = np.eye(3)
    exprs = {"W@W": (lambda: fastbp.sum(W @ W), lambda w: np.sum(w @ w)),
             "W@W.T": (lambda: fastbp.sum(W @ W.T), lambda w: np.sum(w @ w.T)),
             "relu(W@W+b)": (lambda: fastbp.sum(fastbp.relu(W @ W + b)), lambda w: np.sum(np.maximum(w @ w + bv, 0))),
             "gram_penalty": (lambda: fastbp.sum((W @ W.T - eye) * (W @ W.T - eye)),
                              lambda w: np.sum((w @ w.T - eye) ** 2)),
             "x@W@W": (lambda: fastbp.sum((x @ W) @ W), lambda w: np.sum((xv @ w) @ w))}
    make, ref = exprs[name]
    f = fastbp.grad(make(), [W], dtype=dtype, batch_size=4)
    value, grads = f(x=xv.astype(dtype)) if "x" in name else f()
    num = numerical_gradient(ref, Wv.copy())
    assert value == pytest.approx(ref(Wv), rel=1e-12 if dtype == np.float64 else 1e-5)
    np.testing.assert_allclose(grads["W"], num, rtol=1e-6 if dtype == np.float64 else 2e-4, atol=1e-6)


def test_relative_error_is_not_hidden_by_an_infinity_or_an_overflow():
    assert relative_error([np.inf, 1.0], [np.inf, 2.0]) == pytest.approx(1 / 3)     # was 0
    assert relative_error([1.7e308, 0.0], [1.7e308, 1e300]) == pytest.approx(1e300 / 1.7e308 / 2)   # was 0
    assert relative_error([1.7e308], [-1.7e308]) == 1.0                  # |a - b| overflowed
    assert relative_error([5e-324], [1e-323]) == pytest.approx(1 / 3)
    assert np.isnan(relative_error([np.inf], [1.0]))
    with pytest.raises(fastbp.gradcheck.GradcheckError):
        gradcheck(lambda v: float(np.sum(v ** 2)), [np.array([1.0, 2.0])], [np.array([2.0, 0.0])])


@pytest.mark.parametrize("flag", ["no", 0, None])
def test_gradcheck_raise_exception_must_be_a_bool(flag):
    with pytest.raises(TypeError, match="raise_exception must be a bool"):
        gradcheck(lambda v: float(np.sum(v ** 2)), [np.array([1.0])], [np.array([2.0])], raise_exception=flag)


def test_a_grad_function_given_integers_does_not_suggest_an_integer_dtype():
    g = fastbp.Graph()
    x = g.input("x", (3,))
    f = fastbp.grad(fastbp.sum(x * x), [x])
    with pytest.raises(TypeError, match=r"convert with x.astype\(np.float64\)\)$"):
        f(x=np.arange(3))
    with pytest.raises(TypeError, match=r"compile it with fastbp.grad\(..., dtype=np.float32\)"):
        f(x=np.ones(3, np.float32))


# ---------------------------------------------------------------- docstrings
@pytest.mark.parametrize("fn", [fastbp.maximum, fastbp.sum, fastbp.graph.gate, fastbp.Graph.const,
                                fastbp.Graph.param, fastbp.Graph.input, fastbp.gradcheck.default_eps,
                                fastbp.gradcheck.default_rtol, fastbp.gradfn.GradFunction.__call__,
                                fastbp.grad, fastbp.layer_norm, fastbp.dropout, fastbp.relu],
                         ids=lambda f: f.__qualname__)
def test_public_graph_functions_have_numpydoc_sections(fn):
    doc = fn.__doc__ or ""
    assert "Parameters\n" in doc and "Returns\n" in doc, fn


def test_elu_float64_near_zero_matches_pytorchs_expm1():
    """ELU computed alpha * (exp(x) - 1): for small negative x the subtraction cancels
    (x = -1e-12: 9e-5 relative error, -1e-300: 0 instead of -1e-300); PyTorch uses expm1."""
    x = np.array([-1e-300, -1e-12, -1e-8, -1e-3, -0.5, -30.0, -800.0, -np.inf, 0.0, 2.0])
    expect = 0.7 * np.expm1(np.minimum(x, 0)) + np.maximum(x, 0)       # torch.nn.functional.elu(x, 0.7)
    np.testing.assert_allclose(fastbp.ops.elu_forward(x, 0.7), expect, rtol=1e-15, atol=0)
    g = fastbp.Graph()
    xi = g.input("x", (None, 10))
    value, _ = fastbp.grad(fastbp.sum(fastbp.elu(xi, 0.7) * np.arange(1.0, 11.0)), [xi])(x=x[None, :])
    assert value == pytest.approx(np.sum(expect * np.arange(1.0, 11.0)), rel=1e-15)
    y = fastbp.ops.linear_forward(x[:7, None], np.ones((1, 1)), activation="elu", activation_params={"alpha": 0.7})
    np.testing.assert_allclose(y[:, 0], expect[:7], rtol=1e-15, atol=0)


def test_python_numbers_beyond_float32_are_refused_not_made_infinite():
    """A float32 function staged 1e39 given as a Python number as inf (only numpy's
    RuntimeWarning said so); an ndarray of the wrong dtype was already a TypeError."""
    g = fastbp.Graph()
    x, s = g.input("x", (None, 2)), g.input("s", ())
    f = fastbp.grad(fastbp.sum(x * s), wrt=[x, s], dtype=np.float32)
    with pytest.raises(ValueError, match=r"x holds 1e\+39, beyond the range of float32"):
        f(x=[[1e39, 2.0]], s=2.0)
    with pytest.raises(ValueError, match=r"s holds 1e\+39, beyond the range of float32"):
        f(x=[[1.0, 2.0]], s=1e39)
    out, grads = f(x=[[np.inf, 2.0]], s=2.0)         # an infinity given is the user's own
    assert out == np.inf
    assert f(x=[[1.0, 2.0]], s=2.0)[0] == 6.0


def test_float32_sum_is_accumulated_in_float64():
    # a float32 running sum of 10^6 elements of 0.1 was 100359.7 (numpy, torch: ~1e-7 off)
    X = np.full((100000, 10), 0.1, np.float32)
    g = fastbp.Graph()
    x = g.input("x", (None, 10))
    v, _ = fastbp.grad(fastbp.sum(x), [x], dtype=np.float32, batch_size=100000)(x=X)
    exact = X.astype(np.float64).sum()
    assert abs(v - exact) <= 1e-6 * exact


def test_constant_array_at_the_left_of_a_transposed_parameter():
    g = fastbp.Graph()
    W = g.param("W", np.arange(12.0).reshape(4, 3))
    A = np.arange(6.0).reshape(2, 3)
    for left in (A, A.tolist()):
        out = left @ W.T            # numpy deferred to W.T's __rmatmul__ (it failed inside numpy)
        val, grads = fastbp.grad(fastbp.sum(out), [W], dtype=np.float64)()
        assert val == pytest.approx((A @ W.value.T).sum())
        np.testing.assert_allclose(grads["W"], np.ones((2, 4)).T @ A)


def test_an_input_or_parameter_named_self_can_be_passed():
    g = fastbp.Graph()
    s = g.input("self", ())
    p = g.param("p", 2.0)
    f = fastbp.grad(s * s * p, [s, p], dtype=np.float64)
    val, grads = f(self=3.0)
    assert val == 18.0 and grads == {"self": 12.0, "p": 9.0}
    g = fastbp.Graph()
    q = g.param("self", 2.0)
    x = g.input("x", ())
    assert fastbp.grad(q * x, [q], dtype=np.float64)(x=1.0, self=5.0)[0] == 5.0


def test_python_ints_beyond_int64_at_call_time_read_as_the_graph_reads_them():
    g = fastbp.Graph()
    s = g.input("s", ())
    p = g.param("p", 2.0)
    f = fastbp.grad(s * p, [s, p], dtype=np.float64)
    val, grads = f(s=2**70)                         # was "must be a real array, got dtype object"
    assert val == 2.0 * 2**70 and grads["p"] == float(2**70)
    with pytest.raises(ValueError, match="s holds an integer too large for a float"):
        f(s=10**400)


def test_graph_values_beyond_float32_are_refused_when_compiling_for_float32():
    # they became inf silently (the same value passed at call time was a ValueError)
    g = fastbp.Graph()
    x = g.input("x", (2,))
    W = g.param("W", np.array([1e39, 1.0]))
    with pytest.raises(ValueError, match=r"W holds 1e\+39, beyond the range of float32"):
        fastbp.grad(fastbp.sum(x * W), [x], dtype=np.float32)
    g = fastbp.Graph()
    x = g.input("x", (2,))
    with pytest.raises(ValueError, match=r"const '\w+' holds 1e\+39, beyond the range of float32"):
        fastbp.grad(fastbp.sum(x * 1e39), [x], dtype=np.float32)
    assert fastbp.grad(fastbp.sum(x * 1e39), [x], dtype=np.float64)(x=np.ones(2))[0] == 2e39


def test_gradcheck_defaults_name_a_bad_dtype():
    from fastbp import gradcheck as gc
    for fn in (gc.default_eps, gc.default_rtol):
        for dt in (np.float16, np.int64, "complex128", "nonsense"):
            with pytest.raises(TypeError, match="dtype must be float32 or float64"):
                fn(dt)
        assert fn(">f8") == fn(np.float64)


def test_subtraction_shape_error_names_the_subtraction_and_its_operands():
    g = fastbp.Graph()
    a, b = g.input("a", (None, 3)), g.input("b", (None, 4))
    n = len(g.nodes)
    for f in (lambda: a - b, lambda: b.__rsub__(a)):
        with pytest.raises(fastbp.GraphError, match=r"^sub: .*input node 'a'.*input node 'b'"):
            f()
    assert len(g.nodes) == n         # no negation node was left behind


@pytest.mark.parametrize("call", [lambda W: fastbp.maximum(W.T, 1.0), lambda W: fastbp.maximum(1.0, W.T),
                                  lambda W: fastbp.graph.gate("mul", W.T, 2.0)])
def test_transposed_parameter_outside_matmul_is_named(call):
    g = fastbp.Graph()
    W = g.param("W", np.ones((3, 4)))
    with pytest.raises(TypeError, match="transposed parameter can only be the right operand of @"):
        call(W)


def test_one_row_for_a_batch_norm_without_running_statistics_is_refused_before_training():
    """A BatchNorm1d(track_running_stats=False) normalises eval calls with their own rows: one row
    has no statistics (PyTorch: "Expected more than 1 value per channel").  fit's 1-row
    validation_data trained a whole epoch before predict refused it, saying "nothing was changed"
    and "when training in predict"."""
    m = fastbp.Sequential(fastbp.Linear(3, 4), fastbp.BatchNorm1d(4, track_running_stats=False),
                          fastbp.Linear(4, 2))
    s = fastbp.compile(m, loss="mse", batch_size=4, dtype=np.float64)
    rng = np.random.default_rng(0)
    X, Y = rng.random((4, 3)), rng.random((4, 2))
    w0, rng_state = s.param_vector.copy(), s.rng.bit_generator.state
    with pytest.raises(ValueError, match=r"more than 1 value per channel in validation_data: .* at least 2 rows"):
        s.fit(X, Y, validation_data=(X[:1], Y[:1]))
    assert s.n_steps == 0 and s.epochs_done == 0 and np.array_equal(w0, s.param_vector)
    assert s.rng.bit_generator.state == rng_state
    with pytest.raises(ValueError, match=r"more than 1 value per channel in predict: .* at least 2 rows"):
        s.predict(X[:1])
    assert s.predict(X[:2]).shape == (2, 2)
    s.fit(X, Y, validation_data=(X[:2], Y[:2]))
    assert s.n_steps == 1


def test_a_dropout_mask_is_keyed_by_its_place_in_the_graph_not_by_the_output_compiled():
    """Two dropout nodes of one graph: each differentiated alone got the mask of the first
    selected dropout (identical masks), and a node's mask changed when another dropout was
    also upstream of the output."""
    g = fastbp.Graph()
    x = g.input("x", (None, 64))
    d1, d2 = fastbp.dropout(x, 0.5), fastbp.dropout(x, 0.5)
    X = np.ones((4, 64))

    def mask(out):
        return fastbp.grad(out, [x], batch_size=4)(x=X)[1]["x"]
    alone1, alone2 = mask(fastbp.sum(d1)), mask(fastbp.sum(d2))
    both = mask(fastbp.sum(d2) + 0.0 * fastbp.sum(d1))
    assert not np.array_equal(alone1, alone2)
    np.testing.assert_array_equal(both, alone2)
    np.testing.assert_array_equal(mask(fastbp.sum(d1) + 0.0 * fastbp.sum(d2)), alone1)
    assert set(np.unique(alone1)) == {0.0, 2.0}


def _ln_value(x, w, b, c):
    """sum(layer_norm(x) * w + b) weighted by ``c``, in numpy (float64; eps 1e-5)."""
    xh = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5)
    return float(((xh * w + b) * c).sum())


@pytest.mark.parametrize("same", ["weight", "bias", "both"])
@pytest.mark.parametrize("kind", ["param", "input"])
def test_layer_norm_of_its_own_weight_or_bias_sums_both_gradients(same, kind):
    """``layer_norm(w, weight=w)`` / ``bias=w``: the backward wrote dx after the weight's and
    bias's gradients into their one buffer, so only dx arrived (the kernels compute dweight,
    dbias, then dx; the targets are now taken in that order)."""
    w0 = np.array([0.3, -1.2, 0.7, 2.0, -0.4])
    other = np.array([0.5, 1.5, -0.7, 0.2, 1.1])
    c = np.arange(5.0) - 1.5
    g = fastbp.Graph()
    w = g.param("w", w0) if kind == "param" else g.input("w", (5,))
    o = g.param("o", other)
    weight = w if same in ("weight", "both") else o
    bias = w if same in ("bias", "both") else o
    out = fastbp.sum(fastbp.layer_norm(w, weight, bias) * g.const(c))
    f = fastbp.grad(out, [w])
    _, grads = f() if kind == "param" else f(w=w0)

    def ref(v):
        return _ln_value(v, v if same in ("weight", "both") else other, v if same in ("bias", "both") else other, c)
    np.testing.assert_allclose(grads["w"], numerical_gradient(ref, w0.copy()), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("make, match", [
    (lambda x: fastbp.layer_norm(x, eps=1e39), r"layer_norm: eps=1e\+39 cannot be represented in float32"),
    (lambda x: fastbp.leaky_relu(x, 1e39), r"negative_slope=1e\+39 cannot be represented in float32"),
])
def test_graph_parameters_beyond_float32_are_refused_naming_them(make, match):
    """They were cast into the float32 arena as infinities: layer_norm's eps=1e39 gave a NaN
    value and gradients with only numpy's overflow warning (fastbp.ops refuses them)."""
    x0 = np.array([-2.0, -0.5, 0.5, 2.0])
    g = fastbp.Graph()
    x = g.input("x", (4,))
    out = fastbp.sum(make(x) * g.const(np.arange(4.0)))
    with pytest.raises(ValueError, match=match + r".*dtype=float64"):
        fastbp.grad(out, [x], dtype=np.float32)
    value, grads = fastbp.grad(out, [x], dtype=np.float64)(x=x0)    # float64 holds them
    assert np.isfinite(value) and np.isfinite(grads["x"]).all()
