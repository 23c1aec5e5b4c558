"""fastbp.AdamW: torch.optim.AdamW's name, defaults and update (Adam with decoupled weight decay)."""
import inspect

import numpy as np
import pytest

import fastbp


def _data(n=24, n_in=5, n_out=3, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, n_in)), r.integers(0, n_out, n)


def _train(opt, dtype, steps=6, save_at=None, path=None):
    m = fastbp.Sequential(fastbp.Linear(5, 7), fastbp.Tanh(), fastbp.Linear(7, 3))
    s = fastbp.compile(m, optimizer=opt, batch_size=8, dtype=dtype, seed=3)
    X, y = _data()
    X = X.astype(dtype)
    for k in range(steps):
        if k == save_at:
            s.save(path)
        s(X[8 * (k % 3):8 * (k % 3) + 8], y[8 * (k % 3):8 * (k % 3) + 8])
    return s


def test_defaults_are_pytorchs():
    o = fastbp.AdamW()
    assert (o.lr, o.betas, o.eps, o.weight_decay, o.decoupled) == (1e-3, (0.9, 0.999), 1e-8, 1e-2, True)
    assert isinstance(o, fastbp.Adam) and o.name == "adam"
    assert repr(o) == "AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)"
    assert fastbp.Adam().weight_decay == 0.0      # Adam's default stays 0, as torch.optim.Adam's


def test_defaults_match_torch_optim_adamw_signature():
    torch = pytest.importorskip("torch")
    sig = inspect.signature(torch.optim.AdamW).parameters
    o = fastbp.AdamW()
    assert sig["lr"].default == o.lr and tuple(sig["betas"].default) == o.betas
    assert sig["eps"].default == o.eps and sig["weight_decay"].default == o.weight_decay


@pytest.mark.parametrize("ours,theirs", [("SGD", "SGD"), ("Adam", "Adam"), ("AdamW", "AdamW"),
                                         ("RMSprop", "RMSprop")])
def test_positional_arguments_are_pytorchs_in_its_order(ours, theirs):
    """A positional call written for torch.optim binds the same arguments here (or is refused):
    Adam's fifth was ``decoupled`` (torch's ``amsgrad``: Adam(..., True) silently became
    AdamW), SGD's third ``nesterov`` (torch's ``dampening``); SGD's lr had no default."""
    torch = pytest.importorskip("torch")
    skip = {"params", "foreach", "maximize", "capturable", "differentiable", "fused"}
    theirs = [p for p in inspect.signature(getattr(torch.optim, theirs)).parameters.values()
              if p.name not in skip and p.kind is p.POSITIONAL_OR_KEYWORD]
    ours = [p for p in inspect.signature(getattr(fastbp, ours)).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in ours] == [p.name for p in theirs]
    for a, b in zip(ours, theirs):
        assert a.default == b.default or (isinstance(b.default, tuple) and tuple(a.default) == b.default), a.name


def test_torch_options_fastbp_lacks_are_refused_and_torchs_spelling_accepted():
    with pytest.raises(ValueError, match="amsgrad=True is not supported"):
        fastbp.Adam(1e-3, (0.9, 0.999), 1e-8, 0.0, True)
    with pytest.raises(ValueError, match="amsgrad"):
        fastbp.AdamW(amsgrad=True)
    assert fastbp.Adam(amsgrad=np.False_).lr == 1e-3        # numpy's False is False
    for bad in (1, 0, "yes", None):                          # not a bool: named, not "unsupported"
        with pytest.raises(TypeError, match="Adam: amsgrad must be a bool"):
            fastbp.Adam(amsgrad=bad)
    with pytest.raises(ValueError, match="dampening=0.5 is not supported"):
        fastbp.SGD(0.1, 0.9, 0.5)
    assert fastbp.SGD(0.1, 0.9, 0, 1e-4).weight_decay == 1e-4 and fastbp.SGD().lr == 1e-3
    assert fastbp.Adam(weight_decay=0.1, decoupled_weight_decay=True).decoupled
    with pytest.raises(ValueError, match="disagree"):
        fastbp.Adam(decoupled=True, decoupled_weight_decay=False)
    with pytest.raises(TypeError, match="decoupled_weight_decay must be a bool"):
        fastbp.Adam(decoupled_weight_decay=1)


# CI's thorough stage (three steps with tanh and Adam's weight-decay modes: 14 s of cold compilations
# the README's test command has no other use for); test_decoupled_decay_against_numpy checks the
# update itself against numpy, test_by_name_and_checkpoint_keep_the_class AdamW's float32 steps
@pytest.mark.thorough
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_update_as_adam_decoupled_bitwise(dtype):
    a = _train(fastbp.AdamW(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), dtype)
    b = _train(fastbp.Adam(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, decoupled=True), dtype)
    c = _train(fastbp.Adam(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), dtype)
    assert a.param_vector.tobytes() == b.param_vector.tobytes()
    assert a.param_vector.tobytes() != c.param_vector.tobytes()     # L2 in the gradient differs


def test_decoupled_decay_against_numpy():
    """One step by hand: p <- p (1 - lr wd), then Adam's step with bias correction."""
    lr, wd, b1, b2, eps = 0.05, 0.2, 0.9, 0.999, 1e-8
    m = fastbp.Sequential(fastbp.Linear(5, 3))
    s = fastbp.compile(m, optimizer=fastbp.AdamW(lr=lr, weight_decay=wd), batch_size=8, dtype=np.float64,
                       loss="mse")
    X = np.random.default_rng(1).standard_normal((8, 5))
    Y = np.random.default_rng(2).standard_normal((8, 3))
    p0 = s.param_vector.copy()
    s.loss_and_grads(X, Y)
    gv = s.grad_vector.copy()
    s(X, Y)
    mt, vt = (1 - b1) * gv, (1 - b2) * gv * gv
    want = p0 * (1 - lr * wd) - lr * (mt / (1 - b1)) / (np.sqrt(vt / (1 - b2)) + eps)
    np.testing.assert_allclose(s.param_vector, want, rtol=1e-12, atol=1e-15)


def test_by_name_and_checkpoint_keep_the_class(tmp_path):
    s = fastbp.compile(fastbp.Sequential(fastbp.Linear(5, 3)), optimizer="adamw", batch_size=8)
    assert type(s.optimizer) is fastbp.AdamW and s.optimizer.weight_decay == 0.01
    a = _train(fastbp.AdamW(lr=1e-2), np.float32, steps=6, save_at=3, path=tmp_path / "c.npz")
    b = fastbp.load(tmp_path / "c.npz")
    assert type(b.optimizer) is fastbp.AdamW and b.optimizer.spec() == a.optimizer.spec()
    X, y = _data()
    X = X.astype(np.float32)
    for k in range(3, 6):
        b(X[8 * (k % 3):8 * (k % 3) + 8], y[8 * (k % 3):8 * (k % 3) + 8])
    assert a.param_vector.tobytes() == b.param_vector.tobytes()


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(lr=-1e-3), ValueError, "AdamW: lr must be >= 0"),
    (dict(weight_decay=-1.0), ValueError, "AdamW: weight_decay must be >= 0"),
    (dict(betas=(0.9, 1.0)), ValueError, r"AdamW: betas\[1\] must be < 1"),
    (dict(betas=0.9), ValueError, "AdamW: betas must be a pair"),
    (dict(eps="1e-8"), TypeError, "AdamW: eps must be a real number"),
    (dict(decoupled=False), TypeError, "decoupled"),
])
def test_bad_arguments_name_adamw(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        fastbp.AdamW(**kw)


@pytest.mark.parametrize("make, slot, coef", [
    (lambda: fastbp.Adam(lr=1e-3), 1, 1.0 - 0.999),
    (lambda: fastbp.Adam(lr=1e-3, betas=(0.8, 0.9999)), 0, 1.0 - 0.8),
    (lambda: fastbp.RMSprop(lr=1e-3, alpha=0.999), 0, 1.0 - 0.999),
])
def test_float32_moments_use_one_minus_beta_rounded_once(make, slot, coef):
    """``1 - b2`` was computed in float32: 1 - float32(0.999) = 0.00099998713, so every float32
    Adam step was 6.5e-6 too large (fastbp drifted from scikit-learn's float32 fits: 2e-3 after
    200 epochs).  PyTorch and scikit-learn round the float64 ``1 - b2`` once."""
    s = fastbp.compile(fastbp.Sequential(fastbp.Linear(6, 5)), optimizer=make(), batch_size=8,
                       dtype=np.float32, loss="mse", seed=0)
    r = np.random.default_rng(0)
    x, y = r.standard_normal((8, 6)).astype(np.float32), r.standard_normal((8, 5)).astype(np.float32)
    s.loss_and_grads(x, y)
    g = s.grad_vector.astype(np.float64)
    s(x, y)
    state = s.state_vectors[slot].astype(np.float64)
    k = np.abs(g) > 1e-3
    ratio = state[k] / (g[k] ** 2 if (slot == 1 or isinstance(s.optimizer, fastbp.RMSprop)) else g[k])
    np.testing.assert_allclose(ratio, np.float32(coef), rtol=3e-7)


def test_adam_and_rmsprop_scalars_are_float64_as_torch_computes_them():
    """The update's scalars (fastbp.registry.optimizers.adam_scalars / rmsprop_scalars: the CPU
    kernels and the CUDA step's host code take them from there) in float64, by hand as
    ``torch.optim.Adam``'s single-tensor step: ``bias_correction1 = 1 - beta1 ** step``,
    ``step_size = lr / bias_correction1``, ``bias_correction2_sqrt = sqrt(1 - beta2 ** step)``;
    the moments' ``1 - beta`` (``lerp``'s weight) and AdamW's ``1 - lr * weight_decay``."""
    import math

    from fastbp.registry import optimizers as reg
    from fastbp.kernels import optim as O
    lr, b1, b2, wd = 1e-3, 0.9, 0.999, 0.01
    for t in (1, 3, 1000):
        want = (lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t), 1 - b1, 1 - b2, 1 - lr * wd)
        assert reg.adam_scalars(lr, b1, b2, t, wd) == want
        assert O._adam_scalars(lr, b1, b2, float(t), wd) == want        # the compiled copy, as the step calls it
    assert reg.adam_scalars(lr, b1, b2, 2, wd)[3] == 0.0010000000000000009     # not float32's 0.00099998713
    assert reg.rmsprop_scalars(0.99) == 1 - 0.99 and O._rmsprop_scalars(0.99) == 1 - 0.99
