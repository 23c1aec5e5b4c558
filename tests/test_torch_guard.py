"""fastbp.from_torch: a step refuses to run on a model that changed under it (fastbp._torch_guard).

The step was compiled from the model as from_torch found it; PyTorch lets modules, parameters,
hooks, settings and the mode change afterwards, and the step would go on training what it was
compiled from.  Each such change is a ValueError naming it, raised before anything changes;
changes that do not matter (a hook added and removed, an equal value set again, a copy of the
model) are not.  Also: optimizer subclasses that override ``step``, optimizer step hooks, and
targets whose shape a torch MSELoss / BCEWithLogitsLoss would not compare row by row.
"""
import copy
import importlib
import io

import numpy as np
import pytest

import fastbp

pytestmark = pytest.mark.extras          # needs torch (CI's second stage installs it)
torch = pytest.importorskip("torch")
nn = torch.nn


def _model(p=0.25):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.LeakyReLU(0.2), nn.BatchNorm1d(7), nn.Dropout(p),
                         nn.Linear(7, 3)).double()


def _data(rows=6):
    rng = np.random.default_rng(1)
    return torch.from_numpy(rng.standard_normal((rows, 5))), torch.from_numpy(rng.integers(0, 3, rows))


def _made(optimizer=None, p=0.25):
    model = _model(p)
    opt = optimizer(model.parameters()) if optimizer else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt, batch_size=6)
    x, y = _data()
    step(x, y)
    return model, opt, step


def _torch_step(model, opt, x, y):
    """One plain PyTorch step (the reference); its loss."""
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def _snapshot(step):
    return {k: v.copy() for k, v in step.params.items()}, step.n_steps


CHANGES = {
    "module replaced": (lambda m, o: m.__setitem__(4, nn.Linear(7, 3).double()), "model layer 4 was replaced"),
    "module appended": (lambda m, o: m.append(nn.Tanh()), "model has 6 layers now, 5 when"),
    "parameter replaced": (lambda m, o: setattr(m[0], "weight", nn.Parameter(m[0].weight.detach().clone())),
                           "model layer 0's weight is not the tensor"),
    "parameter data set": (lambda m, o: setattr(m[4].bias, "data", m[4].bias.data.clone()),
                           "model layer 4's bias is not the tensor"),
    "bias removed": (lambda m, o: setattr(m[4], "bias", None), "model layer 4's bias is not the tensor"),
    "running stats replaced": (lambda m, o: setattr(m[2], "running_mean", torch.zeros(7, dtype=torch.float64)),
                               "model layer 2's running_mean is not the tensor"),
    "dtype changed": (lambda m, o: m.float(), "model layer 0's weight is not the tensor"),
    "frozen": (lambda m, o: m[0].weight.requires_grad_(False), "model layer 0's weight has requires_grad=False"),
    "gradient hook": (lambda m, o: m[4].weight.register_hook(lambda g: g * 0), "model layer 4's weight has a gradient hook"),
    "accumulate hook": (lambda m, o: m[0].bias.register_post_accumulate_grad_hook(lambda p: None),
                        "model layer 0's bias has a gradient hook"),
    "forward hook": (lambda m, o: m[1].register_forward_hook(lambda *a: None), "model layer 1 has a hook now"),
    "backward hook": (lambda m, o: m[4].register_full_backward_hook(lambda *a: None), "model layer 4 has a hook now"),
    "model hook": (lambda m, o: m.register_forward_pre_hook(lambda *a: None), "the model has a hook now"),
    "dropout p": (lambda m, o: setattr(m[3], "p", 0.5), r"model layer 3 \(Dropout\) has p=0.5 now, 0.25 when"),
    "activation parameter": (lambda m, o: setattr(m[1], "negative_slope", 0.1), "has negative_slope=0.1 now"),
    "batchnorm momentum": (lambda m, o: setattr(m[2], "momentum", None), "has momentum=None now, 0.1 when"),
    "batchnorm eps": (lambda m, o: setattr(m[2], "eps", 1e-3), "has eps=0.001 now"),
    "eval mode": (lambda m, o: m.eval(), r"model layer 2 \(BatchNorm1d\) is in eval mode now"),
    "dropout eval": (lambda m, o: m[3].eval(), r"model layer 3 \(Dropout\) is in eval mode now"),
    "optimizer step hook": (lambda m, o: o.register_step_post_hook(lambda *a: None),
                            r"optimizer has a step hook \(register_step_post_hook\)"),
    "superseded": (lambda m, o: fastbp.from_torch(m, loss=nn.CrossEntropyLoss(), optimizer=o, batch_size=6),
                   "a later from_torch of this step's model or optimizer took them over"),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_to_the_model_is_refused_before_anything_changes(change):
    make, match = change
    model, opt, step = _made()
    x, y = _data()
    make(model, opt)
    weights, n = _snapshot(step)
    calls = [lambda: step(x, y), lambda: step.fit(x, y), lambda: step.loss_and_grads(x, y)]
    if "eval mode" not in match:
        calls.append(lambda: step.predict(x))
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()
    if "eval mode" in match:        # predict computes eval mode's outputs in either mode
        want = copy.deepcopy(model).eval()(x).detach().numpy()
        np.testing.assert_allclose(step.predict(x), want, rtol=1e-12, atol=1e-14)
    assert step.n_steps == n
    for k, v in step.params.items():
        np.testing.assert_array_equal(v, weights[k], err_msg=k)


def test_a_bias_set_on_a_layer_compiled_without_one_is_refused_and_other_attributes_are_not():
    """A Linear(bias=False) given a bias later (its forward would add it; the step would
    neither add nor train it) is refused; a buffer or attribute its forward does not read is not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Tanh(), nn.Linear(4, 3)).double()
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = _data()
    model[2].register_buffer("note", torch.zeros(2))
    model[2].tag = "head"
    step(x, y)
    model[0].bias = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="model layer 0's bias was None when the step was compiled and is set now"):
        step(x, y)


def test_a_superseded_step_does_not_sync_over_the_newer_one():
    """first.sync_to_torch() after a second from_torch of the model would write the first
    step's old optimizer state into the optimizer the second one trains: refused."""
    model, opt, first = _made()
    second = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt, batch_size=6)
    x, y = _data()
    second(x, y)
    second(x, y)
    for call in (first.sync_to_torch, first.close):
        with pytest.raises(ValueError, match="took them over"):
            call()
    assert int(opt.state_dict()["state"][0]["momentum_buffer"].shape[0]) == 7
    np.testing.assert_array_equal(opt.state[model[0].weight]["momentum_buffer"].numpy(),
                                  second.state_vectors[0][:35].reshape(7, 5))


def test_the_refusal_names_what_to_do_and_a_new_step_trains_the_changed_model():
    model, opt, step = _made()
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"make a new step with fastbp\.from_torch\(model, \.\.\.\)"):
        step(*_data())
    model[0].weight.requires_grad_(True)
    step(*_data())                  # undone: trains again
    model[4] = nn.Linear(7, 3).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt, batch_size=6)
    w = model[4].weight.detach().clone()
    step(*_data())
    assert not torch.equal(model[4].weight, w)      # the new head is trained


def _same_values(m, o):
    m[1].negative_slope = float("0.2")           # equal values, other float objects
    m[3].p = float("0.0")
    m[2].momentum = float("0.1")


def _hook_added_and_removed(m, o):
    m[1].register_forward_hook(lambda *a: None).remove()
    m[4].weight.register_hook(lambda g: g).remove()
    o.register_step_pre_hook(lambda *a: None).remove()


def _copies(m, o):
    copy.deepcopy(m)
    torch.save(m, io.BytesIO())
    twin = copy.deepcopy(m)
    fastbp.from_torch(twin, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(twin.parameters(), lr=0.1))


def _in_place(m, o):
    sd = copy.deepcopy(m.state_dict())
    m.eval()
    m(_data()[0])
    m.train()
    m.train()
    m.load_state_dict(sd)
    with torch.no_grad():
        m[0].weight.mul_(0.5)
    nn.init.zeros_(m[4].bias)


HARMLESS = {"equal values set again": _same_values, "hook added and removed": _hook_added_and_removed,
            "copies of the model": _copies, "in-place changes, eval and back": _in_place}


@pytest.mark.parametrize("change", HARMLESS.values(), ids=HARMLESS.keys())
def test_changes_that_do_not_matter_are_not_refused(change):
    """... and the step then trains exactly as PyTorch from the same state."""
    model, opt, step = _made(p=0.0)
    change(model, opt)
    state = opt.state_dict()        # (syncs: a deepcopy of the model alone would copy the last sync's count)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref_opt.load_state_dict(state)
    x, y = _data()
    for _ in range(2):
        got = float(step(x, y))
        assert got == pytest.approx(_torch_step(ref, ref_opt, x, y), rel=1e-10)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_eval_mode_is_refused_only_where_it_matters():
    """A model without Dropout or a BatchNorm with running statistics computes the same in
    both modes: model.eval() after from_torch is not refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.LayerNorm(4), nn.Dropout(0.0), nn.Linear(4, 3)).double()
    ref = copy.deepcopy(model)
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    model.eval()
    ref.eval()
    x, y = _data()
    got = float(step(x, y))
    assert got == pytest.approx(_torch_step(ref, ref_opt, x, y), rel=1e-12)
    for a, b in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_an_optimizer_subclass_that_overrides_step_is_refused():
    class SignSGD(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    p.add_(p.grad.sign(), alpha=-g["lr"])

    model = _model()
    with pytest.raises(ValueError, match=r"optimizer: SignSGD overrides SGD\.step"):
        fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=SignSGD(model.parameters(), lr=0.1))
    assert not model[0]._forward_pre_hooks and not model[2]._forward_pre_hooks    # nothing attached


def test_an_optimizer_subclass_that_keeps_step_is_accepted_even_under_the_profiler_wrapper():
    """torch.optim wraps a class's step for its profiler when its first instance is made: a
    subclass made before its base has a wrapper of its own over the same step."""
    class MyAdam(torch.optim.Adam):
        pass

    wrap = getattr(torch.optim.Optimizer, "profile_hook_step", None)
    if wrap is not None:
        MyAdam.step = wrap(torch.optim.Adam.step)          # as torch.optim's _patch_step_function does
        MyAdam.step.hooked = True
    model, ref = _model(), _model()
    model[3].p = ref[3].p = 0.0
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=MyAdam(model.parameters(), lr=0.01))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    x, y = _data()
    for _ in range(3):
        got = float(step(x, y))
        assert got == pytest.approx(_torch_step(ref, ref_opt, x, y), rel=1e-10)


@pytest.mark.parametrize("hook", ["register_step_pre_hook", "register_step_post_hook"])
def test_an_optimizer_with_a_step_hook_is_refused(hook):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    getattr(opt, hook)(lambda *a: None)
    with pytest.raises(ValueError, match=f"optimizer has a step hook \\({hook}\\)"):
        fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt)


_optim_module = importlib.import_module("torch.optim.optimizer")    # (not an attribute of torch.optim)
GLOBAL_HOOKS = {
    "forward pre": (lambda: torch.nn.modules.module.register_module_forward_pre_hook(lambda *a: None),
                    "register_module_forward_pre_hook"),
    "forward": (lambda: torch.nn.modules.module.register_module_forward_hook(lambda *a: None),
                "register_module_forward_hook"),
    "backward pre": (lambda: torch.nn.modules.module.register_module_full_backward_pre_hook(lambda *a: None),
                     "register_module_full_backward_pre_hook"),
    "backward": (lambda: torch.nn.modules.module.register_module_full_backward_hook(lambda *a: None),
                 "register_module_full_backward_hook"),
    "optimizer pre": (lambda: _optim_module.register_optimizer_step_pre_hook(lambda *a: None),
                      "register_optimizer_step_pre_hook"),
    "optimizer post": (lambda: _optim_module.register_optimizer_step_post_hook(lambda *a: None),
                       "register_optimizer_step_post_hook"),
}


@pytest.mark.parametrize("hook", list(GLOBAL_HOOKS))
def test_a_global_torch_hook_is_refused_at_from_torch_and_at_each_call(hook):
    """PyTorch runs a global module hook in every module call and a global optimizer hook in
    every opt.step(): the fused step cannot, so it refuses them as it does a module's own hooks,
    before anything changes; removed, the step trains as PyTorch does."""
    register, how = GLOBAL_HOOKS[hook]
    handle = register()
    try:
        model = _model()
        with pytest.raises(ValueError, match=f"PyTorch has a global hook .*{how}"):
            fastbp.from_torch(model, loss=nn.CrossEntropyLoss(),
                              optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    finally:
        handle.remove()
    model, opt, step = _made(p=0.0)
    state = opt.state_dict()        # (syncs first)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref_opt.load_state_dict(state)
    before = _snapshot(step)
    x, y = _data()
    handle = register()
    try:
        for call in (lambda: step(x, y), lambda: step.fit(x, y, epochs=1), lambda: step.predict(x)):
            with pytest.raises(ValueError, match=f"PyTorch has a global hook .*{how}"):
                call()
    finally:
        handle.remove()
    after = _snapshot(step)
    assert after[1] == before[1] and all(np.array_equal(after[0][k], before[0][k]) for k in before[0])
    for _ in range(2):
        assert float(step(x, y)) == pytest.approx(_torch_step(ref, ref_opt, x, y), rel=1e-10)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_a_global_optimizer_hook_does_not_concern_a_step_with_a_fastbp_optimizer():
    """A fastbp optimizer never runs torch's opt.step(): a global optimizer hook is not refused."""
    handle = _optim_module.register_optimizer_step_pre_hook(lambda *a: None)
    try:
        model = _model()
        step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=fastbp.SGD(lr=0.1), batch_size=6)
        assert np.isfinite(float(step(*_data())))
    finally:
        handle.remove()


@pytest.mark.parametrize("loss", [nn.MSELoss(), nn.BCEWithLogitsLoss()], ids=["mse", "bce"])
def test_a_1d_target_for_a_torch_elementwise_loss_is_refused(loss):
    """PyTorch's MSELoss broadcasts a (B,) target against a (B, 1) output to (B, B) (with a
    warning), and BCEWithLogitsLoss raises: fastbp does not quietly compare row by row."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1)).double()
    step = fastbp.from_torch(model, loss=loss, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(8, 4, dtype=torch.float64)
    y = (torch.rand(8, dtype=torch.float64) > 0.5).double()
    w = model[0].weight.detach().clone()
    for call, name in ((lambda: step(x, y), "y"), (lambda: step.fit(x, y), "Y"),
                       (lambda: step(x, y.numpy()), "y"),
                       (lambda: step.fit(x, y[:, None], validation_data=(x, y)), r"validation_data\[1\]")):
        with pytest.raises(ValueError, match=rf"{name} has shape \(8,\) and the model's output \(n, 1\)"):
            call()
    assert torch.equal(model[0].weight, w)
    ref = copy.deepcopy(model)
    got = float(step(x, y[:, None]))
    want = type(loss)()(ref(x), y[:, None])
    assert got == pytest.approx(want.item(), rel=1e-12)
    # a fastbp loss name keeps fastbp's rule: a (B,) target of a one-output model is its column
    named = fastbp.from_torch(copy.deepcopy(ref), loss="mse" if isinstance(loss, nn.MSELoss) else "bce_with_logits")
    assert np.isfinite(float(named(x, y)))
