"""The optimizers' ``decay_1d=False`` (weight decay on the matrices only) and Adam's
``eps_hat=True`` (epsilon before the bias correction): against numpy references,
PyTorch's parameter groups, scikit-learn's MLP, checkpoints and bad arguments."""
import math

import numpy as np
import pytest

import fastbp
from fastbp.optimizers import optimizer_from_spec

L = fastbp.Linear


def _data(n=16, n_in=5, n_out=3, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, n_in)), r.integers(0, n_out, n)


def _model():
    # a LayerNorm between: its 1-D weight and bias sit inside the region, between two matrices
    return fastbp.Sequential(L(5, 7), fastbp.LayerNorm(7), fastbp.Tanh(), L(7, 3))


def _step(opt, dtype=np.float64, **kw):
    return fastbp.compile(_model(), loss="softmax_cross_entropy", optimizer=opt, batch_size=16, dtype=dtype,
                          seed=1, **kw)


def _one_step(s):
    """One training step on ``_data()``; the parameters before it and its gradients."""
    X, y = _data()
    before = {k: v.copy() for k, v in s.params.items()}
    s.loss_and_grads(X, y)
    grads = {k: v.copy() for k, v in s.grads.items()}
    s(X, y)
    return before, grads


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_decays_the_matrices_only(momentum):
    """One step against numpy: ``p -= lr (g + wd p)`` on the 2-D parameters, ``p -= lr g`` on
    the others (the first momentum step is the gradient itself)."""
    lr, wd = 0.1, 0.3
    s = _step(fastbp.SGD(lr, momentum=momentum, weight_decay=wd, decay_1d=False))
    before, grads = _one_step(s)
    assert {k for k, v in before.items() if v.ndim < 2} == {"0.b", "1.weight", "1.bias", "3.b"}
    for k, p0 in before.items():
        want = p0 - lr * (grads[k] + (wd * p0 if p0.ndim >= 2 else 0.0))
        np.testing.assert_allclose(s.params[k], want, rtol=1e-13, atol=1e-15, err_msg=k)


def test_default_decays_every_parameter_as_pytorch():
    lr, wd = 0.1, 0.3
    s = _step(fastbp.SGD(lr, weight_decay=wd))
    before, grads = _one_step(s)
    for k, p0 in before.items():
        np.testing.assert_allclose(s.params[k], p0 - lr * (grads[k] + wd * p0), rtol=1e-13, atol=1e-15)


def _adam_reference(p, grads, lr, b1, b2, eps, wd, decay, eps_hat, decoupled):
    """Adam in numpy over a list of gradients: PyTorch's (eps after the bias correction) or
    scikit-learn's (``eps_hat``: before it, the step size corrected instead)."""
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        if decay and decoupled:
            p = p * (1 - lr * wd)
        elif decay:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if eps_hat:
            p = p - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        else:
            p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return p


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("eps_hat", [False, True])
def test_adam_pieces_and_eps_hat_against_numpy(decoupled, eps_hat):
    """A large eps (1e-2, near sqrt(v)) so that its placement shows; the same gradients
    replayed through the numpy reference, parameter by parameter."""
    lr, b1, b2, eps, wd = 0.05, 0.8, 0.9, 1e-2, 0.2
    opt = fastbp.Adam(lr, (b1, b2), eps, wd, decoupled=decoupled, decay_1d=False, eps_hat=eps_hat)
    s = _step(opt)
    X, y = _data()
    p0 = {k: v.copy() for k, v in s.params.items()}
    grads = {k: [] for k in p0}
    for _ in range(3):
        s.loss_and_grads(X, y)
        for k, g in s.grads.items():
            grads[k].append(g.copy())
        s(X, y)
    for k in p0:
        want = _adam_reference(p0[k], grads[k], lr, b1, b2, eps, wd, p0[k].ndim >= 2, eps_hat, decoupled)
        np.testing.assert_allclose(s.params[k], want, rtol=1e-12, atol=1e-14, err_msg=k)
    # the other placement is visibly different here (the test can fail)
    other = _adam_reference(p0["0.W"], grads["0.W"], lr, b1, b2, eps, wd, True, not eps_hat, decoupled)
    assert np.abs(other - s.params["0.W"]).max() > 1e-4


def test_rmsprop_decays_the_matrices_only():
    lr, alpha, eps, wd = 0.01, 0.9, 1e-8, 0.5
    s = _step(fastbp.RMSprop(lr, alpha, eps, wd, decay_1d=False))
    before, grads = _one_step(s)
    for k, p0 in before.items():
        g = grads[k] + (wd * p0 if p0.ndim >= 2 else 0.0)
        want = p0 - lr * g / (np.sqrt((1 - alpha) * g * g) + eps)
        np.testing.assert_allclose(s.params[k], want, rtol=1e-12, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("make", [
    lambda: fastbp.SGD(0.1, momentum=0.5, weight_decay=0.1, decay_1d=False),
    lambda: fastbp.Adam(weight_decay=0.1, decay_1d=False, eps_hat=True),
    lambda: fastbp.AdamW(eps_hat=True),
    lambda: fastbp.RMSprop(weight_decay=0.1, decay_1d=False)], ids=["sgd", "adam", "adamw", "rmsprop"])
def test_spec_repr_and_checkpoint_keep_them(make, tmp_path):
    opt = make()
    back = optimizer_from_spec(opt.spec())
    assert (back.decay_1d, getattr(back, "eps_hat", False)) == (opt.decay_1d, getattr(opt, "eps_hat", False))
    assert repr(back) == repr(opt)
    assert ("decay_1d=False" in repr(opt)) == (not opt.decay_1d)
    X, y = _data()
    a = _step(opt)
    a(X, y)
    a.save(tmp_path / "c")
    b = fastbp.load(tmp_path / "c")
    assert repr(b.optimizer) == repr(opt)
    for s in (a, b):
        s(X, y)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_default_spec_and_repr_unchanged():
    assert "decay_1d" not in fastbp.SGD(0.1).spec() and "eps_hat" not in fastbp.Adam().spec()
    assert repr(fastbp.SGD(0.1)) == "SGD(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)"
    # a spec written before these existed reads as PyTorch's behaviour
    old = {"type": "Adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "decoupled": False}
    o = optimizer_from_spec(old)
    assert o.decay_1d is True and o.eps_hat is False


@pytest.mark.parametrize("make", [
    lambda v: fastbp.SGD(0.1, decay_1d=v), lambda v: fastbp.Adam(decay_1d=v), lambda v: fastbp.AdamW(decay_1d=v),
    lambda v: fastbp.RMSprop(decay_1d=v), lambda v: fastbp.Adam(eps_hat=v), lambda v: fastbp.AdamW(eps_hat=v)])
@pytest.mark.parametrize("bad", ["no", 0, None])
def test_non_bool_is_a_type_error_naming_it(make, bad):
    with pytest.raises(TypeError, match="decay_1d|eps_hat"):
        make(bad)


def test_keyword_only():
    with pytest.raises(TypeError):
        fastbp.SGD(0.1, 0.0, 0.0, 0.0, False, False)      # decay_1d: keyword only
    with pytest.raises(TypeError):
        fastbp.Adam(1e-3, (0.9, 0.999), 1e-8, 0.0, False, True)


# ---------------------------------------------------------------- PyTorch

def _torch_pair(torch, make_opt, wd):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.ReLU(),
                            torch.nn.Linear(7, 3)).double()
    import copy
    ref = copy.deepcopy(m)

    def groups(mod):
        return [{"params": [p for p in mod.parameters() if p.dim() >= 2], "weight_decay": wd},
                {"params": [p for p in mod.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    return m, make_opt(groups(m)), ref, make_opt(groups(ref))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_from_torch_takes_the_usual_two_groups(name):
    """``weight_decay`` on the matrices and 0 on the 1-D parameters: ``decay_1d=False``,
    trained as ``opt.step()`` trains them."""
    torch = pytest.importorskip("torch")
    make = {"sgd": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9),
            "adam": lambda g: torch.optim.Adam(g, lr=0.01),
            "adamw": lambda g: torch.optim.AdamW(g, lr=0.01),
            "rmsprop": lambda g: torch.optim.RMSprop(g, lr=0.01, centered=True)}[name]
    m, opt, ref, ropt = _torch_pair(torch, make, 0.3)
    step = fastbp.from_torch(m, optimizer=opt, batch_size=16)
    assert step.optimizer.decay_1d is False and step.optimizer.weight_decay == 0.3
    X, y = _data()
    for _ in range(4):
        step(X, y)
        ropt.zero_grad()
        torch.nn.functional.cross_entropy(ref(torch.tensor(X)), torch.tensor(y)).backward()
        ropt.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_from_torch_refuses_other_group_splits():
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    ps = list(m.parameters())
    # a matrix undecayed: not decay_1d=False
    bad = torch.optim.SGD([{"params": ps[:2], "weight_decay": 0.0}, {"params": ps[2:], "weight_decay": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        fastbp.from_torch(m, optimizer=bad)
    two = torch.optim.SGD([{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[2]], "weight_decay": 0.2},
                           {"params": [ps[1], ps[3]], "weight_decay": 0.0}], lr=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        fastbp.from_torch(m, optimizer=two)


def test_from_torch_follows_each_groups_hyper_parameters():
    torch = pytest.importorskip("torch")
    m, opt, _, _ = _torch_pair(torch, lambda g: torch.optim.SGD(g, lr=0.1), 0.3)
    step = fastbp.from_torch(m, optimizer=opt, batch_size=16)
    X, y = _data()
    step(X, y)                               # the groups' own weight decays are not "changed"
    opt.param_groups[1]["weight_decay"] = 0.1
    with pytest.raises(ValueError, match="weight_decay"):
        step(X, y)


# ---------------------------------------------------------------- scikit-learn

def test_estimator_with_every_default_is_sklearns_mlp():
    """iris, every default (Adam, alpha=1e-4), float64: scikit-learn's probabilities (the
    biases decayed, or epsilon after the bias correction, left them 1e-2 apart)."""
    pytest.importorskip("sklearn")
    import warnings
    from sklearn.datasets import load_iris
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as Sk
    X, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = fastbp.MLPClassifier(random_state=0, dtype="float64", max_iter=60).fit(X, y)
        theirs = Sk(random_state=0, max_iter=60).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-10, atol=1e-12)
    for a, b in zip(ours.intercepts_, theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-7)
