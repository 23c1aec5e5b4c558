"""Residual blocks (issue 14): ``fastbp.Residual(f...)`` is ``x + f(x)`` on the gate graph,
against an unfused numpy reference and a PyTorch module with a skip connection."""
from __future__ import annotations

import numpy as np
import pytest

import fastbp

from reference import loss_and_grad, optimizer_update

L = fastbp.Linear


def model():
    return fastbp.Sequential(L(3, 4), fastbp.ReLU(), fastbp.Residual(L(4, 4), fastbp.Tanh(), L(4, 4)), L(4, 2))


def ref_loss_grads(P, x, y):
    """relu(x W0 + b0) = h; r = h + (tanh(h W20 + b20) W22 + b22); S = r W3 + b3; mse."""
    h = np.maximum(x @ P["0.W"] + P["0.b"], 0)
    t = np.tanh(h @ P["2.0.W"] + P["2.0.b"])
    r = h + t @ P["2.2.W"] + P["2.2.b"]
    S = r @ P["3.W"] + P["3.b"]
    loss, dS = loss_and_grad("mse", S, y)
    g = {"3.W": r.T @ dS, "3.b": dS.sum(0)}
    dr = dS @ P["3.W"].T
    g["2.2.W"], g["2.2.b"] = t.T @ dr, dr.sum(0)
    dz = (dr @ P["2.2.W"].T) * (1 - t * t)
    g["2.0.W"], g["2.0.b"] = h.T @ dz, dz.sum(0)
    dh = dr + dz @ P["2.0.W"].T                     # both paths of the skip connection
    dz0 = dh * (h > 0)
    g["0.W"], g["0.b"] = x.T @ dz0, dz0.sum(0)
    return loss, g


def test_params_names_and_init():
    m = model()
    st = fastbp.compile(m, loss="mse", optimizer=fastbp.SGD(lr=0.1), batch_size=4, dtype=np.float64, seed=3)
    init = m.init_params(3)
    assert sorted(st.params) == sorted(init) == ["0.W", "0.b", "2.0.W", "2.0.b", "2.2.W", "2.2.b", "3.W", "3.b"]
    for k, v in init.items():
        np.testing.assert_array_equal(st.params[k], v)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_matches_numpy_reference(opt):
    make = {"sgd": lambda: fastbp.SGD(lr=0.05, momentum=0.9),
            "adamw": lambda: fastbp.Adam(lr=0.01, weight_decay=0.1, decoupled=True)}[opt]
    st = fastbp.compile(model(), loss="mse", optimizer=make(), batch_size=6, dtype=np.float64, seed=1)
    P = {k: v.copy() for k, v in st.params.items()}
    state = {}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    lref, g = ref_loss_grads(P, x, y)
    assert st.loss_and_grads(x, y) == pytest.approx(lref, rel=1e-12)
    for k in g:
        np.testing.assert_allclose(st.grads[k], g[k], rtol=1e-10, atol=1e-13, err_msg=k)
    for _ in range(10):
        x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
        lref, g = ref_loss_grads(P, x, y)
        assert st(x, y) == pytest.approx(lref, rel=1e-10)
        optimizer_update(make(), P, g, state)
    for k in P:
        np.testing.assert_allclose(st.params[k], P[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_matches_torch_skip_connection():
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.f1, self.f2, self.out = (torch.nn.Linear(3, 4), torch.nn.Linear(4, 4),
                                                    torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))

        def forward(self, x):
            h = torch.relu(self.inp(x))
            h = h + self.f2(torch.tanh(self.f1(h)))
            return self.out(h)

    st = fastbp.compile(model(), loss="softmax_cross_entropy", optimizer=fastbp.Adam(lr=0.01, weight_decay=0.01,
                                                                                     decoupled=True),
                        batch_size=5, dtype=np.float64, seed=2)
    net = Block().double()
    with torch.no_grad():
        for mod, key in ((net.inp, "0"), (net.f1, "2.0"), (net.f2, "2.2"), (net.out, "3")):
            mod.weight.copy_(torch.from_numpy(st.params[key + ".W"].T.copy()))
            mod.bias.copy_(torch.from_numpy(st.params[key + ".b"].copy()))
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.01)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert st(x, y) == pytest.approx(loss.item(), rel=1e-12)
    for mod, key in ((net.inp, "0"), (net.f1, "2.0"), (net.f2, "2.2"), (net.out, "3")):
        np.testing.assert_allclose(st.params[key + ".W"], mod.weight.detach().numpy().T, rtol=1e-10, atol=1e-12)
    X = rng.standard_normal((7, 3))
    with torch.no_grad():
        np.testing.assert_allclose(st.predict(X), net(torch.from_numpy(X)).numpy(), rtol=1e-12, atol=1e-13)


def test_width_change_names_the_block():
    with pytest.raises(ValueError, match=r"Sequential layer 2: Residual\(Linear\(4, 5.*f maps 4 features to 5"):
        fastbp.Sequential(L(3, 4), fastbp.ReLU(), fastbp.Residual(L(4, 5), fastbp.ReLU()), L(5, 2))
    # a width of 1 would broadcast in the graph: still an error
    with pytest.raises(ValueError, match="f maps 3 features to 1"):
        fastbp.Sequential(fastbp.Residual(L(3, 1)), L(3, 2))
    with pytest.raises(ValueError, match="at least one layer"):
        fastbp.Residual()
    with pytest.raises(TypeError, match="Residual: layer 0"):
        fastbp.Residual("relu")


def test_nested_blocks_dropout_spec_and_checkpoint(tmp_path):
    m = fastbp.Sequential(fastbp.Residual(L(4, 4), fastbp.ReLU(), fastbp.Residual(L(4, 4), fastbp.Tanh()),
                                          fastbp.Dropout(0.3)), L(4, 3))
    assert m.in_features == 4 and fastbp.Sequential.from_spec(m.spec()).spec() == m.spec()
    st = fastbp.compile(m, loss="softmax_cross_entropy", optimizer=fastbp.SGD(lr=0.1), batch_size=4, seed=0)
    assert sorted(st.params) == ["0.0.W", "0.0.b", "0.2.0.W", "0.2.0.b", "1.W", "1.b"]
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((4, 4)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(4)]
    for x, y in data[:2]:
        st(x, y)
    st.save(tmp_path / "r.fbp")
    back = fastbp.load(tmp_path / "r.fbp")
    for x, y in data[2:]:
        st(x, y)
        back(x, y)
    assert back.param_vector.tobytes() == st.param_vector.tobytes()
    # eval mode: x + f(x) with the dropout off
    P = st.params
    X = rng.standard_normal((5, 4)).astype(np.float32)
    h = np.maximum(X @ P["0.0.W"] + P["0.0.b"], 0)
    r = X + h + np.tanh(h @ P["0.2.0.W"] + P["0.2.0.b"])
    np.testing.assert_allclose(st.predict(X), r @ P["1.W"] + P["1.b"], rtol=2e-5, atol=2e-6)
