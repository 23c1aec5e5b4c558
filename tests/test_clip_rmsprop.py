"""Gradient clipping by global norm (``clip_grad_norm=``) and the RMSprop optimizer.

Default run: both against a numpy reference of one update (the gradients come
from ``loss_and_grads``, the update from a training call on the same
minibatch), argument checks, checkpoints.  Marker ``extras``: 10 training
steps against PyTorch's own loop to 1e-10 (float64).
"""
import math

import numpy as np
import pytest

import fastbp
from fastbp import _isa

L = fastbp.Linear


def _step(opt, clip=None, dtype=np.float64, loss="softmax_cross_entropy", n_out=3):
    model = fastbp.Sequential(L(4, 5), fastbp.Tanh(), L(5, n_out))
    return fastbp.compile(model, loss=loss, optimizer=opt, batch_size=6, dtype=dtype, seed=1,
                          clip_grad_norm=clip)


def _data(step, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 4)).astype(step.dtype)
    y = rng.integers(0, 3, 6)
    return x, y


def _flat_grads(step, x, y):
    step.loss_and_grads(x, y)
    return step.grad_vector.copy() if hasattr(step, "grad_vector") else np.concatenate(
        [np.ravel(step.grads[k]) for k in step.params])


def _param_vec(step):
    return step.param_vector.copy()


# ------------------------------------------------------------ clipping
def _clip_ref(g, max_norm):
    total = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
    return g * min(1.0, max_norm / (total + 1e-6)), total


@pytest.mark.parametrize("max_norm", [0.01, 1e6])     # clipped / left alone
def test_clip_matches_numpy_reference_sgd_with_weight_decay(max_norm):
    step = _step(fastbp.SGD(lr=0.5, weight_decay=0.1), clip=max_norm)
    assert step.clip_grad_norm == max_norm
    x, y = _data(step)
    p0 = _param_vec(step)
    step.loss_and_grads(x, y)
    g = step.grad_vector.copy()
    gc, total = _clip_ref(g, max_norm)
    if max_norm < 1:
        assert total > max_norm * 10           # the case really clips
    step(x, y)
    # weight decay is added after clipping (as torch.optim does after clip_grad_norm_)
    np.testing.assert_allclose(step.param_vector, p0 - 0.5 * (gc + 0.1 * p0), rtol=1e-13, atol=1e-15)
    # the gradients are clipped in place, as clip_grad_norm_ leaves p.grad
    np.testing.assert_allclose(step.grad_vector, gc, rtol=1e-13, atol=1e-16)


def test_clip_changes_the_update_and_can_be_turned_off():
    a = _step(fastbp.Adam(lr=0.01), clip=0.01)
    b = _step(fastbp.Adam(lr=0.01))
    assert b.clip_grad_norm is None
    x, y = _data(a)
    for _ in range(3):
        a(x, y)
        b(x, y)
    assert not np.allclose(a.param_vector, b.param_vector)
    a.clip_grad_norm = None
    assert a.clip_grad_norm is None and a.hyper[_isa.H_CLIP] == 0.0
    a.clip_grad_norm = 2
    assert a.clip_grad_norm == 2.0


def test_clip_in_fit_equals_the_step_calls():
    a = _step(fastbp.SGD(lr=0.3, momentum=0.9), clip=0.05)
    b = _step(fastbp.SGD(lr=0.3, momentum=0.9), clip=0.05)
    rng = np.random.default_rng(4)
    X = rng.standard_normal((18, 4))
    Y = rng.integers(0, 3, 18)
    a.fit(X, Y, epochs=1, shuffle=False)
    for i in range(0, 18, 6):
        b(X[i:i + 6], Y[i:i + 6])
    np.testing.assert_allclose(a.param_vector, b.param_vector, rtol=1e-13, atol=1e-15)


def test_nonfinite_gradient_is_reported_before_clipping():
    step = _step(fastbp.SGD(lr=0.1), clip=1.0)
    x, y = _data(step)
    p0 = _param_vec(step)
    x[0, 0] = np.inf
    with pytest.raises(FloatingPointError):
        step(x, y)
    np.testing.assert_array_equal(step.param_vector, p0)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1.0, ValueError), (math.inf, ValueError),
                                      (math.nan, ValueError), ("1", TypeError), (True, TypeError),
                                      ([1.0], TypeError)])
def test_clip_grad_norm_is_validated(bad, exc):
    model = fastbp.Sequential(L(2, 2))
    with pytest.raises(exc, match="clip_grad_norm"):
        fastbp.compile(model, clip_grad_norm=bad)
    step = fastbp.compile(model, clip_grad_norm=0.5)
    with pytest.raises(exc, match="clip_grad_norm"):
        step.clip_grad_norm = bad
    assert step.clip_grad_norm == 0.5          # a rejected call changes nothing


# ------------------------------------------------------------- RMSprop
def _rmsprop_ref(p, g, state, lr, alpha, eps, wd, mu, centered):
    g = g + wd * p
    state["sq"] = alpha * state["sq"] + (1 - alpha) * g * g
    if centered:
        state["ga"] = state["ga"] + (1 - alpha) * (g - state["ga"])
        d = np.sqrt(state["sq"] - state["ga"] ** 2) + eps
    else:
        d = np.sqrt(state["sq"]) + eps
    if mu:
        state["buf"] = mu * state["buf"] + g / d
        return p - lr * state["buf"]
    return p - lr * g / d


@pytest.mark.parametrize("momentum, centered", [(0.0, False), (0.9, True)])
def test_rmsprop_matches_numpy_reference(momentum, centered):
    kw = dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=momentum, centered=centered)
    step = _step(fastbp.RMSprop(**kw))
    assert len(step.state_vectors) == 1 + (momentum > 0) + centered
    n = step.param_vector.size
    state = {"sq": np.zeros(n), "ga": np.zeros(n), "buf": np.zeros(n)}
    p = _param_vec(step)
    for s in range(3):
        x, y = _data(step, seed=s)
        step.loss_and_grads(x, y)
        g = step.grad_vector.copy()
        p = _rmsprop_ref(p, g, state, kw["lr"], kw["alpha"], kw["eps"], kw["weight_decay"], momentum, centered)
        step(x, y)
        np.testing.assert_allclose(step.param_vector, p, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(step.state_vectors[0], state["sq"], rtol=1e-12, atol=1e-16)
    if momentum:
        np.testing.assert_allclose(step.state_vectors[1], state["buf"], rtol=1e-12, atol=1e-16)
    if centered:
        np.testing.assert_allclose(step.state_vectors[-1], state["ga"], rtol=1e-12, atol=1e-16)


def test_rmsprop_defaults_and_validation():
    o = fastbp.RMSprop()
    assert (o.lr, o.alpha, o.eps, o.weight_decay, o.momentum, o.centered) == (0.01, 0.99, 1e-8, 0.0, 0.0, False)
    assert fastbp.optimizers.resolve_optimizer("rmsprop").spec() == o.spec()
    for kw, exc in (({"lr": -0.1}, ValueError), ({"alpha": 1.5}, ValueError), ({"eps": 0}, ValueError),
                    ({"momentum": -0.1}, ValueError), ({"weight_decay": -1}, ValueError),
                    ({"centered": 1}, TypeError), ({"lr": "0.1"}, TypeError)):
        with pytest.raises(exc, match=next(iter(kw))):
            fastbp.RMSprop(**kw)


def test_rmsprop_and_clip_survive_a_checkpoint(tmp_path):
    opt = fastbp.RMSprop(lr=0.02, momentum=0.5, centered=True)
    a = _step(opt, clip=0.1, dtype=np.float32)
    x, y = _data(a)
    a(x, y)
    a.save(tmp_path / "c.npz")
    b = fastbp.load(tmp_path / "c.npz")
    assert b.optimizer.spec() == opt.spec()
    assert b.clip_grad_norm == pytest.approx(0.1)
    for s, t in zip(a.state_vectors, b.state_vectors):
        np.testing.assert_array_equal(s, t)
    assert a(x, y) == b(x, y)
    np.testing.assert_array_equal(a.param_vector, b.param_vector)


def test_checkpoint_with_the_old_hyper_length_loads(tmp_path):
    """A checkpoint written when ``hyper`` had 16 slots loads: the new slots take their defaults."""
    import json
    a = _step(fastbp.Adam(lr=0.01), dtype=np.float32)
    x, y = _data(a)
    a(x, y)
    a.save(tmp_path / "new.npz")
    # rewrite the archive with the first 16 hyper slots, as the format was before
    from fastbp import checkpoint
    with np.load(tmp_path / "new.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert arrays["hyper"].size == _isa.HYPER_SIZE
    arrays["hyper"] = arrays["hyper"][:_isa.HYPER_SIZE_V1].copy()
    meta["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.name, "sha256": checkpoint._digest(v)}
                      for k, v in arrays.items()}
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps(meta)), **arrays)
    b = fastbp.load(tmp_path / "old.npz")
    assert b.hyper.size == _isa.HYPER_SIZE
    assert b.clip_grad_norm is None
    np.testing.assert_array_equal(b.hyper[:_isa.HYPER_SIZE_V1][[_isa.H_LR, _isa.H_T, _isa.H_STEPS]],
                                  a.hyper[[_isa.H_LR, _isa.H_T, _isa.H_STEPS]])
    assert a(x, y) == b(x, y)
