"""The activations of issue 14 against PyTorch, float64: ELU, GELU (both forms), SiLU,
Softplus (across its threshold), Identity -- layers, graph functions, ops wrappers and
from_torch, forward and backward to 1e-12, and a net with all of them trained ten steps
with SGD and AdamW to 1e-10.  (Every registry entry also runs through
tests/test_registry.py and test_torch_interop.py's registry-parametrised tests.)"""
import copy

import numpy as np
import pytest

import fastbp
from fastbp import ops

pytestmark = pytest.mark.extras          # needs torch (CI's second stage installs it)
torch = pytest.importorskip("torch")
nn = torch.nn

TOL = dict(rtol=1e-12, atol=1e-14)


def _torch_fwd_bwd(module, x, dy):
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


# (torch module, fastbp layer, ops name, ops kwargs)
CASES = {
    "elu": (lambda: nn.ELU(), lambda: fastbp.ELU(), "elu", {}),
    "elu_alpha_0.3": (lambda: nn.ELU(alpha=0.3), lambda: fastbp.ELU(alpha=0.3), "elu", {"alpha": 0.3}),
    "elu_alpha_2.5": (lambda: nn.ELU(2.5), lambda: fastbp.ELU(2.5), "elu", {"alpha": 2.5}),
    "elu_alpha_neg": (lambda: nn.ELU(alpha=-0.5), lambda: fastbp.ELU(alpha=-0.5), "elu", {"alpha": -0.5}),
    "gelu": (lambda: nn.GELU(), lambda: fastbp.GELU(), "gelu", {}),
    "gelu_none": (lambda: nn.GELU(approximate="none"), lambda: fastbp.GELU(approximate="none"), "gelu",
                  {"approximate": "none"}),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), lambda: fastbp.GELU(approximate="tanh"), "gelu",
                  {"approximate": "tanh"}),
    "silu": (lambda: nn.SiLU(), lambda: fastbp.SiLU(), "silu", {}),
    "softplus": (lambda: nn.Softplus(), lambda: fastbp.Softplus(), "softplus", {}),
    "softplus_b2_t3": (lambda: nn.Softplus(beta=2.0, threshold=3.0), lambda: fastbp.Softplus(beta=2.0, threshold=3.0),
                       "softplus", {"beta": 2.0, "threshold": 3.0}),
    "softplus_b0.5_t-1": (lambda: nn.Softplus(0.5, -1.0), lambda: fastbp.Softplus(0.5, -1.0), "softplus",
                          {"beta": 0.5, "threshold": -1.0}),
}


def _inputs(rng, shape=(6, 40)):
    x = rng.standard_normal(shape) * 4
    x[0, :8] = [0.0, -0.0, 1e-300, -1e-300, 30.0, -30.0, 700.0, -700.0]
    # Softplus(beta=2, threshold=3) and (0.5, -1): both sides of beta x = threshold
    x[1, :12] = np.array([1.5, -2.0, 10.0, -10.0]).repeat(3) + np.tile([-1e-9, 0.0, 1e-9], 4)
    return x


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_backward_match_pytorch_float64(case):
    tmod, layer, name, kw = CASES[case]
    rng = np.random.default_rng(len(case))
    x = _inputs(rng)
    dy = rng.standard_normal(x.shape)
    ty, tdx = _torch_fwd_bwd(tmod(), x, dy)
    # the ops wrappers
    y = getattr(ops, f"{name}_forward")(x, **kw)
    np.testing.assert_allclose(y, ty, **TOL)
    # the sign of a zero output at +-0 too (ELU with a negative alpha flipped it)
    np.testing.assert_array_equal(np.signbit(y[0, :2]), np.signbit(np.asarray(ty)[0, :2]))
    dx = getattr(ops, f"{name}_backward")(x, dy, **kw)      # every new entry's derivative reads its input
    np.testing.assert_allclose(dx, tdx, **TOL)
    # the graph function (the activation as its own instruction) through fastbp.grad
    g = fastbp.Graph()
    xi = g.input("x", (None, x.shape[1]))
    d = g.input("dy", (None, x.shape[1]))
    f = fastbp.grad(fastbp.sum(getattr(fastbp, name)(xi, **kw) * d), wrt=[xi], dtype=np.float64,
                    batch_size=x.shape[0])
    val, grads = f(x=x, dy=dy)
    np.testing.assert_allclose(val, np.sum(ty * dy), rtol=1e-12)
    np.testing.assert_allclose(grads["x"], tdx, **TOL)
    # the layer: its spec and repr round-trip, and it stands for the same entry
    lay = layer()
    assert repr(lay) == repr(type(lay)(**{k: v for k, v in (lay.spec().items()) if k != "type"}))


def _all_net(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.ELU(alpha=0.7), nn.Linear(9, 9), nn.GELU(),
                         nn.Linear(9, 9), nn.GELU(approximate="tanh"), nn.Linear(9, 9), nn.SiLU(),
                         nn.Linear(9, 9), nn.Softplus(beta=2.0, threshold=1.5), nn.Identity(),
                         nn.Linear(9, 3)).to(dtype)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_from_torch_net_with_every_new_activation_trains_like_pytorch(opt):
    ref = _all_net()
    mine = copy.deepcopy(ref)
    make = ((lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)) if opt == "sgd"
            else (lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05)))
    step = fastbp.from_torch(mine, loss=nn.CrossEntropyLoss(), optimizer=make(mine.parameters()), batch_size=7)
    kinds = [type(layer).__name__ for layer in step.model.layers]
    assert kinds == ["Linear", "ELU", "Linear", "GELU", "Linear", "GELU", "Linear", "SiLU", "Linear",
                     "Softplus", "Identity", "Linear"]
    assert [layer.entry.name for layer in step.model.layers[1:10:2]] == ["elu", "gelu", "gelu_tanh", "silu",
                                                                        "softplus"]
    assert step.model.layers[5].approximate == "tanh" and step.model.layers[3].approximate == "none"
    assert step.model.layers[1].alpha == 0.7 and tuple(step.model.layers[9].params) == (2.0, 1.5)
    topt = make(ref.parameters())
    g = torch.Generator().manual_seed(4)
    losses = []
    for _ in range(10):
        xb = torch.randn(7, 6, generator=g, dtype=torch.float64) * 2
        yb = torch.randint(0, 3, (7,), generator=g)
        topt.zero_grad()
        loss = nn.CrossEntropyLoss()(ref(xb), yb)
        loss.backward()
        topt.step()
        losses.append((loss.item(), step(xb, yb)))
    want, got = np.array(losses).T
    np.testing.assert_allclose(got, want, rtol=1e-10)
    for (pn, pr), pm in zip(ref.named_parameters(), mine.parameters()):
        np.testing.assert_allclose(pm.detach().numpy(), pr.detach().numpy(), rtol=1e-10, atol=1e-13, err_msg=pn)


def test_invalid_approximate_is_a_value_error_naming_it_everywhere():
    for bad, err in (("erf", ValueError), ("TANH", ValueError), (None, TypeError), (1, TypeError)):
        with pytest.raises(err, match="approximate"):
            fastbp.GELU(approximate=bad)
        g = fastbp.Graph()
        x = g.input("x", (None, 3))
        with pytest.raises(err, match="approximate"):
            fastbp.gelu(x, approximate=bad)
        with pytest.raises(err, match="approximate"):
            ops.gelu_forward(np.zeros(3), approximate=bad)
        with pytest.raises(err, match="approximate"):
            ops.gelu_backward(np.zeros(3), np.zeros(3), approximate=bad)
    model = nn.Sequential(nn.Linear(3, 3), nn.GELU())
    model[1].approximate = "fast"              # torch itself only checks at forward time
    with pytest.raises(ValueError, match="approximate"):
        fastbp.from_torch(model.double())


@pytest.mark.parametrize("entry", fastbp.registry.activations.layer_entries(), ids=lambda e: e.layer)
def test_layers_take_the_inplace_flag_exactly_where_the_torch_module_does(entry):
    import inspect
    params = inspect.signature(getattr(nn, entry.torch)).parameters
    takes = "inplace" in params
    assert entry.inplace == takes
    cls = getattr(fastbp, entry.layer)
    if takes:       # by keyword and by position after the parameters, as torch; from_torch too
        defaults = [p.default for p in entry.params]
        assert cls(inplace=True).inplace and cls(*defaults, True).inplace and not cls().inplace
        step = fastbp.from_torch(nn.Sequential(nn.Linear(3, 4), getattr(nn, entry.torch)(inplace=True),
                                               nn.Linear(4, 2)).double())
        assert step.model.layers[1].entry is entry and step.model.layers[1].params == entry.defaults
    elif not any(p.kind is p.VAR_KEYWORD for p in params.values()):    # (nn.Identity takes anything)
        with pytest.raises(TypeError, match="inplace"):
            cls(inplace=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_blocks_an_infinite_or_nan_gradient_exactly_as_pytorch(dtype):
    """ReLU's backward is PyTorch's threshold_backward, a select: a blocked unit's gradient is
    exactly 0 also for dy = inf or NaN (dy * 0 gave NaN there); tanh's, a product, stays NaN
    as PyTorch's."""
    x = np.array([[-2.0, 0.0, 3.0, -1.0, 5.0, np.nan]], dtype)
    dy = np.array([[np.inf, np.inf, 1.0, np.nan, -np.inf, 2.0]], dtype)
    t = torch.tensor(x, requires_grad=True)
    torch.relu(t).backward(torch.tensor(dy))
    want = t.grad.numpy()
    np.testing.assert_array_equal(ops.relu_backward(ops.relu_forward(x), dy), want)
    g = fastbp.Graph()
    xi = g.input("x", (None, x.shape[1]))
    d = g.input("dy", (None, x.shape[1]))
    f = fastbp.grad(fastbp.sum(fastbp.relu(xi) * d), wrt=[xi], dtype=dtype, batch_size=1)
    np.testing.assert_array_equal(f(x=x, dy=dy)[1]["x"], want)
    # a product followed by a ReLU: the gated gradient flows into the product (whose own
    # inf * 0 terms are NaN in PyTorch too); the weights' gradient
    W = np.diag(np.arange(1.0, 7.0)).astype(dtype)
    w = g.param("W", W)
    f = fastbp.grad(fastbp.sum(fastbp.relu(xi @ w) * d), wrt=[w], dtype=dtype, batch_size=1)
    tw = torch.tensor(W, requires_grad=True)
    torch.relu(torch.tensor(x) @ tw).backward(torch.tensor(dy))
    np.testing.assert_array_equal(f(x=x, dy=dy)[1]["W"], tw.grad.numpy())
    tt = torch.tensor(np.array([[30.0, -30.0]], dtype), requires_grad=True)
    torch.tanh(tt).backward(torch.full((1, 2), np.inf, dtype=tt.dtype))
    assert np.isnan(tt.grad.numpy()).all()
