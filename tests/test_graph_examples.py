"""The worked examples of the lecture notes (docs/backprop.md) as golden tests."""
import numpy as np
import pytest

import fastbp

TOL = 1e-12


def test_example1_add_mul():
    g = fastbp.Graph()
    x, y, z = g.input("x", ()), g.input("y", ()), g.input("z", ())
    q = x + y
    f = q * z
    value, grads = fastbp.grad(f, wrt=[x, y, z])(x=-2.0, y=5.0, z=-4.0)
    assert value == pytest.approx(-12.0, abs=TOL)
    assert grads["z"] == pytest.approx(3.0, abs=TOL)      # df/dz = q
    assert grads["x"] == pytest.approx(-4.0, abs=TOL)     # df/dq * dq/dx = z
    assert grads["y"] == pytest.approx(-4.0, abs=TOL)


def test_example2_sigmoid_neuron():
    g = fastbp.Graph()
    w0, x0, w1, x1, w2 = (g.input(n, ()) for n in ("w0", "x0", "w1", "x1", "w2"))
    f = fastbp.sigmoid(w0 * x0 + w1 * x1 + w2)
    value, gr = fastbp.grad(f, wrt=[w0, x0, w1, x1, w2])(w0=2.0, x0=-1.0, w1=-3.0, x1=-2.0, w2=-3.0)
    s = 1 / (1 + np.exp(-1.0))          # pre-activation is 1
    ds = (1 - s) * s
    assert value == pytest.approx(s, abs=TOL)
    assert round(value, 3) == 0.731 and round(ds, 3) == 0.197
    expect = {"w0": -1.0 * ds, "x0": 2.0 * ds, "w1": -2.0 * ds, "x1": -3.0 * ds, "w2": ds}
    for k, v in expect.items():
        assert gr[k] == pytest.approx(v, abs=TOL), k
    # the rounded numbers of the notes
    assert [round(gr[k], 3) for k in ("w0", "x0", "w1", "x1", "w2")] == [-0.197, 0.393, -0.393, -0.59, 0.197]


def test_example2_same_through_explicit_gates():
    """The sigmoid as a chain of elementary gates gives the same gradient."""
    g = fastbp.Graph()
    w0, x0, w1, x1, w2 = (g.input(n, ()) for n in ("w0", "x0", "w1", "x1", "w2"))
    a = w0 * x0 + w1 * x1 + w2
    f = fastbp.sigmoid(a)
    f2 = 0.5 * fastbp.tanh(0.5 * a) + 0.5      # sigma(a) written with tanh
    args = dict(w0=2.0, x0=-1.0, w1=-3.0, x1=-2.0, w2=-3.0)
    v1, g1 = fastbp.grad(f, wrt=[w0, x1])(**args)
    v2, g2 = fastbp.grad(f2, wrt=[w0, x1])(**args)
    assert v1 == pytest.approx(v2, abs=TOL)
    assert g1["w0"] == pytest.approx(g2["w0"], abs=TOL)
    assert g1["x1"] == pytest.approx(g2["x1"], abs=TOL)


def test_example3_add_max_mul_gates():
    g = fastbp.Graph()
    x, y, z, w = (g.input(n, ()) for n in "xyzw")
    f = 2 * (x * y + fastbp.maximum(z, w))
    value, gr = fastbp.grad(f, wrt=[x, y, z, w])(x=3.0, y=-4.0, z=2.0, w=-1.0)
    # the lecture prints f = -8 for this example, but 2 * (3 * -4 + max(2, -1)) = -20;
    # -8 is df/dx.  The gradients below are the notes' own numbers.
    assert value == pytest.approx(-20.0, abs=TOL)
    assert gr == pytest.approx({"x": -8.0, "y": 6.0, "z": 2.0, "w": 0.0}, abs=TOL)


def test_example4_vectorised_norm():
    g = fastbp.Graph()
    W = g.param("W", [[0.1, 0.5], [-0.3, 0.8]])
    x = g.input("x", (2,))
    q = W @ x
    f = fastbp.sum(q * q)
    value, gr = fastbp.grad(f, wrt=[W, x])(x=np.array([0.2, 0.4]))
    assert value == pytest.approx(0.116, abs=TOL)
    np.testing.assert_allclose(gr["W"], [[0.088, 0.176], [0.104, 0.208]], atol=TOL, rtol=0)
    np.testing.assert_allclose(gr["x"], [-0.112, 0.636], atol=TOL, rtol=0)
    # the intermediate df/dq = 2q
    gq = fastbp.grad(f, wrt=[x])
    assert gq(x=np.array([0.2, 0.4]))[0] == pytest.approx(0.116, abs=TOL)


def test_example5_two_layer_sigmoid_squared_loss():
    rng = np.random.default_rng(5)
    n_in, n_h = 4, 3
    W1v = rng.standard_normal((n_h, n_in))
    W2v = rng.standard_normal(n_h)
    xv = rng.standard_normal(n_in)
    yv = 0.3
    g = fastbp.Graph()
    W1 = g.param("W1", W1v)
    W2 = g.param("W2", W2v)
    x = g.input("x", (n_in,))
    y = g.input("y", ())
    h = fastbp.sigmoid(W1 @ x)
    yhat = W2 @ h
    e = yhat - y
    L = e * e                       # e is used twice: its gradients are summed
    value, gr = fastbp.grad(L, wrt=[W1, W2])(x=xv, y=yv)
    hv = 1 / (1 + np.exp(-(W1v @ xv)))
    yh = W2v @ hv
    assert value == pytest.approx((yh - yv) ** 2, abs=TOL)
    np.testing.assert_allclose(gr["W2"], 2 * (yh - yv) * hv, atol=TOL, rtol=0)
    np.testing.assert_allclose(gr["W1"], np.outer(2 * (yh - yv) * W2v * hv * (1 - hv), xv), atol=TOL, rtol=0)
