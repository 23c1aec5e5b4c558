"""fastbp.from_torch: PyTorch never reads stale state after fused steps (fastbp._torch_hooks).

Fused steps keep the optimizer state and BatchNorm's count in the step; ``opt.step()``,
``opt.state_dict()``, ``model.state_dict()`` and a train-mode BatchNorm forward in PyTorch
sync it first, so fused and plain PyTorch steps mix in any order, without a
``sync_to_torch()``, and train as one PyTorch run.
"""
import copy

import numpy as np
import pytest

import fastbp

pytestmark = pytest.mark.extras          # needs torch (CI's second stage installs it)
torch = pytest.importorskip("torch")
nn = torch.nn


def _model(bn_momentum=0.1):
    torch.manual_seed(0)
    # (no bias before the BatchNorm: its gradient is 0 up to rounding, which Adam would scale up)
    return nn.Sequential(nn.Linear(5, 7, bias=False), nn.BatchNorm1d(7, momentum=bn_momentum), nn.Tanh(),
                         nn.Linear(7, 3)).double()


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.95)),
    "rmsprop_centered": lambda p: torch.optim.RMSprop(p, lr=0.005, momentum=0.5, centered=True),
}


def _batches(n, rows=6):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((rows, 5)), rng.integers(0, 3, rows)) for _ in range(n)]


def _torch_step(model, opt, x, y):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    opt.step()
    return loss.item()


def _pair(make, bn_momentum=0.1):
    """Two equal models and their optimizers (``make(params)``), the second one's from_torch
    step: ``(ref, o_ref, fused, o_fused, step)``, the first pair the pure-PyTorch reference."""
    ref, fused = _model(bn_momentum), _model(bn_momentum)
    o_ref, o_fused = make(ref.parameters()), make(fused.parameters())
    step = fastbp.from_torch(fused, loss=nn.CrossEntropyLoss(), optimizer=o_fused, batch_size=6)
    return ref, o_ref, fused, o_fused, step


def _assert_same(m1, o1, m2, o2):
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].keys() == s2[k].keys()
        for name in s1[k]:
            np.testing.assert_allclose(np.asarray(s2[k][name]), np.asarray(s1[k][name]), rtol=1e-10,
                                       atol=1e-12, err_msg=f"{k}.{name}")


@pytest.mark.parametrize("bn_momentum", [0.1, None])
@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_fused_and_pytorch_steps_mix_without_sync(make, bn_momentum):
    """fused, PyTorch, fused, ... with no sync_to_torch: PyTorch's opt.step() goes on from the
    fused steps' momentum/moments (not from the state of the last sync), and a train-mode
    BatchNorm forward (the cumulative average, momentum=None) from their count."""
    ref, o_ref, mixed, o_mixed, step = _pair(make, bn_momentum)
    for i, (x, y) in enumerate(_batches(9)):
        want = _torch_step(ref, o_ref, x, y)
        got = float(step(x, y)) if i % 3 != 1 else _torch_step(mixed, o_mixed, x, y)
        assert got == pytest.approx(want, rel=1e-10), i
    _assert_same(ref, o_ref, mixed, o_mixed)     # the state dicts: synced by their own hooks


def test_state_dicts_after_fused_steps_hold_the_steps_state():
    """torch.save(opt.state_dict()) / model.state_dict() right after fused steps: the state
    the steps reached (the moments, step counts and num_batches_tracked), not the last sync's."""
    ref, o_ref, fused, o_fused, step = _pair(OPTIMIZERS["adam"])
    for x, y in _batches(4):
        _torch_step(ref, o_ref, x, y)
        step(x, y)
    sd = fused.state_dict()
    assert int(sd["1.num_batches_tracked"]) == 4
    saved = o_fused.state_dict()
    assert all(int(s["step"]) == 4 for s in saved["state"].values())
    _assert_same(ref, o_ref, fused, o_fused)


def test_a_second_from_torch_starts_where_the_first_step_stopped():
    """A new step of the same model and optimizer, made while the first has unsynced fused
    steps: it takes over their state; the first step's hooks are removed (a PyTorch step
    then no longer writes the first step's state)."""
    ref, o_ref, fused, o_fused, first = _pair(OPTIMIZERS["sgd_momentum"])
    batches = _batches(6)
    for x, y in batches[:3]:
        _torch_step(ref, o_ref, x, y)
        first(x, y)
    second = fastbp.from_torch(fused, loss=nn.CrossEntropyLoss(), optimizer=o_fused, batch_size=6)
    assert len(o_fused._optimizer_step_pre_hooks) == 1 and len(fused[1]._forward_pre_hooks) == 1
    for x, y in batches[3:5]:
        assert float(second(x, y)) == pytest.approx(_torch_step(ref, o_ref, x, y), rel=1e-10)
    x, y = batches[5]
    assert _torch_step(fused, o_fused, x, y) == pytest.approx(_torch_step(ref, o_ref, x, y), rel=1e-10)
    _assert_same(ref, o_ref, fused, o_fused)
    del first


def test_the_hooks_are_not_the_users_and_a_copy_carries_them_inert():
    """from_torch refuses the user's hooks, not its own: a model compiled before (or its deep
    copy, whose hooks act on the original only) compiles again; a user's hook is still refused."""
    model = _model()
    opt = OPTIMIZERS["adam"](model.parameters())
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt, batch_size=6)
    x, y = _batches(1)[0]
    step(x, y)
    twin = copy.deepcopy(model)
    twin_opt = OPTIMIZERS["adam"](twin.parameters())
    assert fastbp.from_torch(twin, loss=nn.CrossEntropyLoss(), optimizer=twin_opt, batch_size=6) is not None
    assert fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt, batch_size=6) is not None
    model[2].register_forward_pre_hook(lambda m, a: None)
    with pytest.raises(ValueError, match="model layer 2 has forward pre hooks"):
        fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt, batch_size=6)
    del step


def test_a_model_with_the_hooks_pickles_and_its_copy_is_not_the_steps():
    """torch.save(model) (a pickle of the whole module) and copy.deepcopy work after
    from_torch; the copies' hooks are inert (a copy's state_dict does not sync the step)."""
    import io
    import pickle
    model = _model()
    opt = OPTIMIZERS["adam"](model.parameters())
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt, batch_size=6)
    x, y = _batches(1)[0]
    step(x, y)
    buf = io.BytesIO()
    torch.save(model, buf)
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        twin.state_dict()
        assert step._synced_at == 0 and len(opt.state) == 0     # the step was not synced
        (hook,) = twin[1]._forward_pre_hooks.values()
        hook(twin[1], ())
        assert fastbp.from_torch(twin, loss=nn.CrossEntropyLoss(), optimizer=OPTIMIZERS["adam"](twin.parameters()),
                                 batch_size=6) is not None
    model.state_dict()
    assert step._synced_at == 1 and len(opt.state) == len(list(model.parameters()))


def _restore(model, saved):
    model.load_state_dict(saved)


def _reset(model, saved):
    model[1].reset_running_stats()


@pytest.mark.parametrize("bn_momentum", [0.1, None])
@pytest.mark.parametrize("action", [_restore, _reset], ids=["load_state_dict", "reset_running_stats"])
def test_a_batchnorm_count_pytorch_sets_after_fused_steps_is_the_count(action, bn_momentum):
    """model.load_state_dict(checkpoint) or bn.reset_running_stats() after unsynced fused steps:
    num_batches_tracked is what PyTorch set (the checkpoint's, 0), not that plus the steps'
    count; with momentum=None the running statistics' cumulative average follows it."""
    ref, o_ref, fused, o_fused, step = _pair(OPTIMIZERS["sgd_momentum"], bn_momentum)
    batches = _batches(8)
    for x, y in batches[:3]:
        _torch_step(ref, o_ref, x, y)
        step(x, y)
    saved = {m: copy.deepcopy(m.state_dict()) for m in (ref, fused)}
    assert int(saved[fused]["1.num_batches_tracked"]) == 3
    for x, y in batches[3:5]:
        _torch_step(ref, o_ref, x, y)
        step(x, y)
    for m in (ref, fused):
        action(m, saved[m])
    for x, y in batches[5:]:
        assert float(step(x, y)) == pytest.approx(_torch_step(ref, o_ref, x, y), rel=1e-10)
    _assert_same(ref, o_ref, fused, o_fused)
    assert int(fused[1].num_batches_tracked) == int(ref[1].num_batches_tracked)


def test_copies_of_the_model_after_fused_steps_hold_the_steps_count():
    """copy.deepcopy(model) and torch.save(model) (no hook runs for them) right after fused
    steps: each BatchNorm1d's num_batches_tracked is the steps' count, a 0-d int64 tensor as
    PyTorch's, and a checkpoint of it loads into a fresh model."""
    import io
    model = _model(None)
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=OPTIMIZERS["adam"](model.parameters()),
                             batch_size=6)
    batches = _batches(5)
    for x, y in batches[:3]:
        step(x, y)
    step.fit(*map(np.concatenate, zip(*batches[3:])), epochs=1, shuffle=False)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for twin in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        t = twin[1].num_batches_tracked
        assert t.dtype == torch.int64 and t.shape == () and int(t) == 5
    fresh = _model(None)
    fresh.load_state_dict(copy.deepcopy(model).state_dict())
    assert int(fresh[1].num_batches_tracked) == 5
    assert step._synced_at == 0        # (no sync was needed for that)


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_an_optimizer_state_pytorch_emptied_starts_afresh(make):
    """opt.load_state_dict(a checkpoint taken before any step) after unsynced fused steps: the
    optimizer state is empty, as PyTorch's after that load, so the next step starts afresh
    (fresh momentum / moments, the count from 0), not from the fused steps' state."""
    ref, o_ref, fused, o_fused, step = _pair(make)
    fresh = (copy.deepcopy(o_ref.state_dict()), copy.deepcopy(o_fused.state_dict()))   # (no step taken yet)
    batches = _batches(6)
    for x, y in batches[:3]:
        _torch_step(ref, o_ref, x, y)
        step(x, y)
    o_ref.load_state_dict(fresh[0])
    o_fused.load_state_dict(fresh[1])
    for x, y in batches[3:]:
        assert float(step(x, y)) == pytest.approx(_torch_step(ref, o_ref, x, y), rel=1e-10)
    _assert_same(ref, o_ref, fused, o_fused)
