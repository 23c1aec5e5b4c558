"""fastbp.from_torch: same weights as PyTorch's own training loop, shared storage."""
import copy
import re

import numpy as np
import pytest

import fastbp

pytestmark = pytest.mark.extras          # needs torch (CI's second stage installs it)
torch = pytest.importorskip("torch")


def _model(dtype, act=torch.nn.ReLU, bias=True):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8, bias=bias), act(), torch.nn.Linear(8, 8), act(),
                               torch.nn.Linear(8, 3)).to(dtype)


def _torch_loop(model, opt, loss_fn, batches):
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


CASES = {
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=0.1), torch.nn.CrossEntropyLoss),
    "sgd_nesterov_wd": (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                        torch.nn.CrossEntropyLoss),
    "adam": (lambda ps: torch.optim.Adam(ps, lr=1e-2), torch.nn.MSELoss),
    "adamw": (lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05), torch.nn.BCEWithLogitsLoss),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_same_weights_as_pytorch_loop(case, dtype):
    make_opt, make_loss = CASES[case]
    ref = _model(dtype, torch.nn.Tanh if case == "adamw" else torch.nn.ReLU)
    mine = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(1)
    batches = []
    for i in range(8):
        x = torch.randn(5 if i % 3 else 4, 6, generator=g, dtype=dtype)
        if make_loss is torch.nn.CrossEntropyLoss:
            y = torch.randint(0, 3, (x.shape[0],), generator=g)
        elif make_loss is torch.nn.BCEWithLogitsLoss:
            y = (torch.rand(x.shape[0], 3, generator=g) > 0.5).to(dtype)
        else:
            y = torch.randn(x.shape[0], 3, generator=g, dtype=dtype)
        batches.append((x, y))
    expect = _torch_loop(ref, make_opt(ref.parameters()), make_loss(), batches)
    params_before = [p for p in mine.parameters()]
    step = fastbp.from_torch(mine, loss=make_loss(), optimizer=make_opt(mine.parameters()), batch_size=5)
    got = [step(x, y) for x, y in batches]
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(got, expect, **tol)
    for (name, p_ref), p_mine, p_obj in zip(ref.named_parameters(), mine.parameters(), params_before):
        assert p_mine is p_obj                                   # same Parameter objects
        np.testing.assert_allclose(p_mine.detach().numpy(), p_ref.detach().numpy(), **tol, err_msg=name)
    # the torch model computes with the updated weights: shared storage, no copy
    x = batches[0][0]
    np.testing.assert_allclose(mine(x).detach().numpy(), step.predict(x.numpy()), rtol=1e-5, atol=1e-6)
    w = next(mine.parameters())
    assert w.data_ptr() == step.params["0.W"].__array_interface__["data"][0]


def test_optimizer_state_is_carried_over():
    ref = _model(torch.float64)
    mine = copy.deepcopy(ref)
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    opt_mine = torch.optim.Adam(mine.parameters(), lr=1e-2)
    _torch_loop(ref, opt_ref, torch.nn.CrossEntropyLoss(), [(x, y)] * 3)
    _torch_loop(mine, opt_mine, torch.nn.CrossEntropyLoss(), [(x, y)] * 3)
    step = fastbp.from_torch(mine, optimizer=opt_mine, batch_size=4)
    _torch_loop(ref, opt_ref, torch.nn.CrossEntropyLoss(), [(x, y)] * 2)
    for _ in range(2):
        step(x, y)
    for p_ref, p_mine in zip(ref.parameters(), mine.parameters()):
        np.testing.assert_allclose(p_mine.detach().numpy(), p_ref.detach().numpy(), rtol=1e-9, atol=1e-11)


def test_unsupported_models_and_options_are_rejected():
    with pytest.raises(TypeError, match="torch.nn.Sequential"):
        fastbp.from_torch(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="Conv1d"):
        fastbp.from_torch(torch.nn.Sequential(torch.nn.Conv1d(1, 1, 1)))
    m = torch.nn.Sequential(torch.nn.Linear(3, 2))
    # (RMSprop was the unsupported example until issue 15 added it: Adagrad is one now)
    with pytest.raises(ValueError, match="Adagrad"):
        fastbp.from_torch(m, optimizer=torch.optim.Adagrad(m.parameters()))
    with pytest.raises(ValueError, match="NLLLoss"):
        fastbp.from_torch(m, loss=torch.nn.NLLLoss())
    with pytest.raises(TypeError, match="float32 or all float64"):
        fastbp.from_torch(torch.nn.Sequential(torch.nn.Linear(3, 2).half()))
    for empty in (torch.nn.Sequential(), torch.nn.Sequential(torch.nn.ReLU())):     # not "got []"
        with pytest.raises(ValueError, match="model has no parameters to train"):
            fastbp.from_torch(empty)


def test_a_bfloat16_tensor_is_a_type_error_naming_the_argument():
    """numpy has no bfloat16: torch's own 'Got unsupported ScalarType BFloat16' named nothing."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 3))
    step = fastbp.from_torch(m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), batch_size=8)
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    with pytest.raises(TypeError, match=r"x has dtype torch.bfloat16.*x.float\(\)"):
        step(x.bfloat16(), y)
    with pytest.raises(TypeError, match=r"X has dtype torch.bfloat16"):
        step.predict(x.bfloat16())
    for other in (torch.float16, torch.float64, torch.int64):   # torch's conversions, not numpy's astype
        with pytest.raises(TypeError, match=rf"x has dtype {other}; this step was compiled for torch.float32 "
                                            r"\(convert with x.float\(\)\)"):
            step(x.to(other), y)
    assert np.isfinite(step(x, y))


@pytest.mark.parametrize("loss,arg", [
    (lambda: torch.nn.CrossEntropyLoss(ignore_index=0), "ignore_index=0"),           # issue 17 defect 5
    (lambda: torch.nn.CrossEntropyLoss(ignore_index=-1), "ignore_index=-1"),
    (lambda: torch.nn.CrossEntropyLoss(reduction="sum"), "reduction='sum'"),
    (lambda: torch.nn.CrossEntropyLoss(reduction="none"), "reduction='none'"),
    (lambda: torch.nn.CrossEntropyLoss(label_smoothing=0.1), "label_smoothing=0.1"),
    (lambda: torch.nn.CrossEntropyLoss(weight=torch.ones(2)), "weight=a (2,) tensor"),
    (lambda: torch.nn.MSELoss(reduction="sum"), "reduction='sum'"),
    (lambda: torch.nn.MSELoss(size_average=False), "reduction='sum'"),                # the legacy spelling
    (lambda: torch.nn.BCEWithLogitsLoss(reduction="sum"), "reduction='sum'"),
    (lambda: torch.nn.BCEWithLogitsLoss(weight=torch.ones(2)), "weight=a (2,) tensor"),
    (lambda: torch.nn.BCEWithLogitsLoss(pos_weight=torch.ones(2)), "pos_weight=a (2,) tensor"),
])
@pytest.mark.filterwarnings("ignore:size_average and reduce args")
def test_loss_arguments_fastbp_does_not_implement_are_refused(loss, arg):
    """Issue 17 defect 5: CrossEntropyLoss(ignore_index=0) trained another loss than torch's.
    Every argument of a torch loss that fastbp does not implement is a ValueError naming it."""
    m = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"loss: \w+\(" + re.escape(arg) + r"\) is not supported"):
        fastbp.from_torch(m, loss=loss())


def test_loss_subclasses_are_refused_and_defaults_accepted():
    class Custom(torch.nn.CrossEntropyLoss):
        def forward(self, a, b):          # a subclass may compute anything
            return super().forward(a, b) * 2

    m = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="Custom has no fastbp equivalent"):
        fastbp.from_torch(m, loss=Custom())
    for loss, name in ((torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="mean", label_smoothing=0.0),
                        "softmax_cross_entropy"), (torch.nn.MSELoss(), "mse"),
                       (torch.nn.BCEWithLogitsLoss(), "bce_with_logits")):
        assert fastbp.from_torch(torch.nn.Sequential(torch.nn.Linear(3, 2)), loss=loss).loss == name


def test_tensor_inputs_in_any_layout_are_converted_like_arrays():
    """Tensors go through the same input path as numpy arrays: a transposed (non-contiguous)
    tensor gives the result of its contiguous copy."""
    torch.manual_seed(0)
    a, b = (torch.nn.Sequential(torch.nn.Linear(4, 3)) for _ in range(2))
    b.load_state_dict(a.state_dict())
    sa, sb = fastbp.from_torch(a, batch_size=5), fastbp.from_torch(b, batch_size=5)
    x = torch.randn(4, 5).T                      # (5, 4), not contiguous
    y = torch.tensor([0, 1, 2, 0, 1])
    assert not x.is_contiguous()
    assert sa(x, y) == sb(x.contiguous(), y)
    assert sa.predict(x).tobytes() == sb.predict(x.contiguous()).tobytes()
    assert sa.param_vector.tobytes() == sb.param_vector.tobytes()


# ------------------------------------------ every registry activation against PyTorch
from fastbp.registry import activations as _REG  # noqa: E402

_TORCH_ACTS = [e.name for e in _REG.entries(public=True) if e.torch is not None]


def _torch_act(entry, params):
    return getattr(torch.nn, entry.torch)(**dict(zip((p.name for p in entry.params), params)))


def _params_for(entry):
    """The defaults, and other in-range values where the entry has parameters."""
    out = [entry.defaults]
    if entry.params:
        vals = []
        for p in entry.params:
            try:
                vals.append(p.check(3.0 * p.default + 0.5, "test"))
            except ValueError:
                vals.append(p.default)
        out.append(tuple(vals))
    return out


@pytest.mark.parametrize("name", _TORCH_ACTS)
def test_registry_activation_matches_pytorch(name):
    """Forward and backward of each entry with a torch.nn module, float64, against
    autograd (the ops wrappers), and ten SGD steps of a from_torch model with it."""
    entry = _REG.get(name)
    rng = np.random.default_rng(entry.code)
    for params in _params_for(entry):
        x = rng.standard_normal((6, 7)) * 3
        x[np.abs(x) < 1e-3] = 0.5                        # off the kinks
        dy = rng.standard_normal(x.shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = _torch_act(entry, params)(xt)
        yt.backward(torch.tensor(dy))
        y = getattr(fastbp.ops, f"{name}_forward")(x, *params)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
        t = y if entry.uses == "output" else x
        dx = getattr(fastbp.ops, f"{name}_backward")(t, dy, *params)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)
        # a whole model: from_torch maps the module (parameters included)
        torch.manual_seed(0)
        ref = torch.nn.Sequential(torch.nn.Linear(6, 8), _torch_act(entry, params), torch.nn.Linear(8, 3)).double()
        mine = copy.deepcopy(ref)
        step = fastbp.from_torch(mine, loss=torch.nn.CrossEntropyLoss(),
                                 optimizer=torch.optim.SGD(mine.parameters(), lr=0.1), batch_size=5)
        assert tuple(step.model.layers[1].params) == tuple(params)
        opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(2)
        batches = [(torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g))
                   for _ in range(10)]
        expect = _torch_loop(ref, opt, torch.nn.CrossEntropyLoss(), batches)
        got = [step(xb, yb) for xb, yb in batches]
        np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-12)
        for (pn, pr), pm in zip(ref.named_parameters(), mine.parameters()):
            np.testing.assert_allclose(pm.detach().numpy(), pr.detach().numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=pn)


def test_fit_takes_tensors_and_the_whole_fit_signature():
    """A from_torch step's fit has TrainStep.fit's signature and takes tensors, the
    validation data included; on arrays it gives exactly the array-fed run."""
    torch.manual_seed(0)
    X = torch.randn(40, 4, dtype=torch.float64)
    y = torch.arange(40) % 3

    def run(convert):
        torch.manual_seed(1)
        mine = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
        step = fastbp.from_torch(mine, optimizer=torch.optim.SGD(mine.parameters(), lr=0.1), batch_size=8)
        hist = step.fit(convert(X), convert(y), epochs=3, seed=0, validation_data=(convert(X[:10]), convert(y[:10])),
                        early_stopping=fastbp.EarlyStopping(patience=5))
        return hist, step

    h_t, s_t = run(lambda t: t)
    h_n, s_n = run(lambda t: t.numpy())
    assert len(h_t.history["val_loss"]) == 3 and np.all(np.isfinite(h_t.history["val_loss"]))
    np.testing.assert_array_equal(np.asarray(h_t), np.asarray(h_n))
    assert h_t.history == h_n.history
    np.testing.assert_array_equal(s_t.param_vector, s_n.param_vector)


def test_torch_adam_and_adamw_map_to_their_fastbp_classes():
    for make, cls in ((lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
                       fastbp.AdamW),
                      (lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.05), fastbp.Adam)):
        m = _model(torch.float64)
        step = fastbp.from_torch(m, optimizer=make(m.parameters()), batch_size=5)
        assert type(step.optimizer) is cls
        assert step.optimizer.weight_decay == 0.05 and step.optimizer.decoupled == (cls is fastbp.AdamW)


def test_load_with_expect_model_names_the_weight_layout_of_a_from_torch_checkpoint(tmp_path):
    """The saved and expected models print alike; the message must name what differs (each
    Linear's weight layout), not only show two identical reprs."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    step = fastbp.from_torch(m, loss=torch.nn.CrossEntropyLoss(),
                             optimizer=torch.optim.SGD(m.parameters(), lr=0.1), batch_size=4)
    step.save(tmp_path / "t.npz")
    expected = fastbp.Sequential(fastbp.Linear(4, 8), fastbp.ReLU(), fastbp.Linear(8, 3))
    assert repr(expected) == repr(step.model)
    with pytest.raises(ValueError) as e:
        fastbp.load(tmp_path / "t.npz", expect_model=expected)
    msg = str(e.value)
    assert "layer 0 (Linear): layout 'out_in' saved, 'in_out' expected" in msg
    assert "layer 2 (Linear): layout 'out_in' saved, 'in_out' expected" in msg
    assert "weight layout" in msg and "from_torch" in msg
    back = fastbp.load(tmp_path / "t.npz", expect_model=step.model)      # the same spec loads
    np.testing.assert_array_equal(back.param_vector, step.param_vector)


def _refused(model, match):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=match):
        fastbp.from_torch(model, loss=torch.nn.CrossEntropyLoss(), optimizer=opt, batch_size=4)


def test_modules_the_step_cannot_reproduce_are_refused():
    """A Linear subclass (its forward may compute something else), a parametrized Linear
    (weight_norm: the step trained a copy of the computed weight and never the module's
    parameters), hooks, and parameters besides a layer's weight and bias were accepted."""
    nn = torch.nn

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    _refused(nn.Sequential(Scaled(4, 3)), r"model layer 0 is a Scaled \(a subclass of Linear")
    wn = torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
    _refused(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), wn), r"model layer 2 is a ParametrizedLinear \(a subclass "
                                                            r"of Linear, or a parametrized one such as weight_norm")

    class Relu2(nn.ReLU):
        pass

    _refused(nn.Sequential(nn.Linear(4, 3), Relu2()), r"model layer 1 is a Relu2 \(a subclass of ReLU")
    hooked = nn.Linear(4, 3)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    _refused(nn.Sequential(hooked), r"model layer 0 has forward hooks")
    pre = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    pre[1].register_forward_pre_hook(lambda m, i: i)
    _refused(pre, r"model layer 1 has forward pre hooks")
    top = nn.Sequential(nn.Linear(4, 3))
    top.register_forward_hook(lambda m, i, o: o)
    _refused(top, r"model has forward hooks")
    # a gradient hook on a parameter tensor (masking or freezing part of a weight) was dropped
    # silently: the weight the hook froze moved
    masked = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    handle = masked[0].weight.register_hook(lambda g: g * 0)
    _refused(masked, r"model layer 0's parameter 'weight' has a gradient hook \(register_hook\)")
    handle.remove()
    masked[2].bias.register_post_accumulate_grad_hook(lambda p: None)
    _refused(masked, r"model layer 2's parameter 'bias' has a gradient hook \(register_post_accumulate_grad_hook\)")
    extra = nn.Linear(4, 3)
    extra.scale = nn.Parameter(torch.ones(3))
    _refused(nn.Sequential(extra), r"model layer 0 has parameters \['scale'\] that the step would not train")
    child = nn.Linear(4, 3)
    child.aux = nn.Linear(2, 2)
    _refused(nn.Sequential(child), r"parameters \['aux.bias', 'aux.weight'\]")
    act = nn.ReLU()
    act.w = nn.Parameter(torch.ones(1))
    _refused(nn.Sequential(nn.Linear(4, 3), act), r"model layer 1 has parameters \['w'\]")


def test_p_grad_is_the_steps_gradient_again_after_zero_grad_or_a_torch_backward():
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = fastbp.from_torch(model, loss=nn.CrossEntropyLoss(), optimizer=opt, batch_size=8)
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    w = model[0].weight
    for reset in (lambda: opt.zero_grad(),                                  # p.grad = None
                  lambda: setattr(w, "grad", torch.zeros_like(w)),          # another tensor
                  lambda: nn.CrossEntropyLoss()(model(x), y).backward()):   # accumulates
        reset()
        step(x, y)
        np.testing.assert_array_equal(w.grad.numpy(), step.grads["0.W"])
        assert np.shares_memory(w.grad.numpy(), step.grads["0.W"])
        opt.zero_grad()
        step.loss_and_grads(x, y)
        np.testing.assert_array_equal(w.grad.numpy(), step.grads["0.W"])
        np.testing.assert_array_equal(model[0].bias.grad.numpy(), step.grads["0.b"])


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: torch.optim.Adam(p, lr=0.01),
                                  lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True)],
                         ids=["sgd", "adam", "rmsprop"])
def test_fused_then_torch_then_fused_again_is_one_torch_run(make):
    """After sync_to_torch and a stretch of plain PyTorch steps, the step went on with its own
    older momentum / moments (weights 7e-2 off a pure PyTorch run, Adam's step 10 for 15): it
    now takes PyTorch's state first when PyTorch stepped it."""
    import copy
    nn = torch.nn
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    b = copy.deepcopy(a)
    X, Y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    batches = [(X[(k % 5) * 8:(k % 5) * 8 + 8], Y[(k % 5) * 8:(k % 5) * 8 + 8]) for k in range(15)]
    ob = make(b.parameters())
    for xb, yb in batches:
        ob.zero_grad()
        nn.functional.cross_entropy(b(xb), yb).backward()
        ob.step()
    oa = make(a.parameters())
    s = fastbp.from_torch(a, loss=nn.CrossEntropyLoss(), optimizer=oa, batch_size=8)
    for k, (xb, yb) in enumerate(batches):
        if 5 <= k < 10:
            if k == 5:
                s.sync_to_torch()
            oa.zero_grad()
            nn.functional.cross_entropy(a(xb), yb).backward()
            oa.step()
        else:
            s(xb, yb)
    s.sync_to_torch()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)
    for p in a.parameters():
        if "step" in oa.state[p]:
            assert float(oa.state[p]["step"]) == 15.0


_MAKERS = [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: torch.optim.Adam(p, lr=0.01),
           lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True)]


def _torch_steps(model, opt, batches):
    for xb, yb in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()


def _bn_run():
    """A float64 model with BatchNorm, a copy, and 12 minibatches."""
    nn = torch.nn
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    X, Y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    return a, copy.deepcopy(a), [(X[(k % 5) * 8:(k % 5) * 8 + 8], Y[(k % 5) * 8:(k % 5) * 8 + 8]) for k in range(12)]


@pytest.mark.parametrize("make", _MAKERS, ids=["sgd", "adam", "rmsprop"])
def test_torch_steps_before_the_first_fused_call_are_followed(make):
    """PyTorch's steps between from_torch and the first sync were ignored: the step went on from
    the optimizer state it imported (Adam's step 1 for 7)."""
    a, b, batches = _bn_run()
    ob = make(b.parameters())
    _torch_steps(b, ob, batches)
    oa = make(a.parameters())
    s = fastbp.from_torch(a, loss=torch.nn.CrossEntropyLoss(), optimizer=oa, batch_size=8)
    _torch_steps(a, oa, batches[:6])
    for xb, yb in batches[6:]:
        s(xb, yb)
    s.sync_to_torch()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-8, atol=1e-9)     # (BatchNorm's rounding, through Adam)
    assert int(a[1].num_batches_tracked) == int(b[1].num_batches_tracked) == 12


@pytest.mark.parametrize("make", _MAKERS, ids=["sgd", "adam", "rmsprop"])
def test_a_checkpoint_after_torch_steps_holds_what_the_next_call_trains_from(make, tmp_path):
    """save after sync_to_torch and plain PyTorch steps wrote the step's older optimizer state,
    BatchNorm counts and the rate before a torch scheduler's step."""
    a, _, batches = _bn_run()
    oa = make(a.parameters())
    sched = torch.optim.lr_scheduler.StepLR(oa, step_size=1, gamma=0.5)
    s = fastbp.from_torch(a, loss=torch.nn.CrossEntropyLoss(), optimizer=oa, batch_size=8)
    for xb, yb in batches[:4]:
        s(xb, yb)
    s.sync_to_torch()
    _torch_steps(a, oa, batches[4:7])
    sched.step()
    s.save(tmp_path / "c.npz")
    back = fastbp.load(tmp_path / "c.npz")
    for xb, yb in batches[7:]:
        s(xb, yb)
        back(xb.numpy(), yb.numpy())
    assert back.lr == s.lr == oa.param_groups[0]["lr"]
    np.testing.assert_array_equal(back.param_vector, s.param_vector)
    np.testing.assert_array_equal(back.buffer_vector, s.buffer_vector)


def test_a_mode_dependent_layer_in_eval_mode_is_refused_naming_it():
    """``loss = step(x, y)`` stands for PyTorch's train-mode step: a Dropout or a BatchNorm1d
    with running statistics left in eval mode would silently train differently."""
    nn = torch.nn

    def net(mid):
        return nn.Sequential(nn.Linear(4, 6), mid, nn.ReLU(), nn.Linear(6, 3))

    for mid, name in ((nn.Dropout(0.3), "Dropout"), (nn.BatchNorm1d(6), "BatchNorm1d")):
        m = net(mid)
        m.eval()
        with pytest.raises(ValueError, match=rf"model layer 1 \({name}\) is in eval mode .*model\.train\(\)"):
            fastbp.from_torch(m, batch_size=4)
        m.train()
        assert fastbp.from_torch(m, batch_size=4).predict(np.ones((2, 4), np.float32)).shape == (2, 3)
    # layers that compute the same in both modes are taken in either
    for mid in (nn.Dropout(0.0), nn.BatchNorm1d(6, track_running_stats=False), nn.LayerNorm(6), nn.Identity()):
        m = net(mid)
        m.eval()
        x, y = np.ones((4, 4), np.float32), np.array([0, 1, 2, 0])
        assert np.isfinite(fastbp.from_torch(m, batch_size=4)(x, y))


@pytest.mark.parametrize("tensor_dtype, rtol, atol", [(torch.float64, 1e-12, 1e-14), (torch.float32, 1e-5, 1e-6)],
                         ids=["float64-tensors", "float32-tensors"])
def test_tensor_hyper_parameters_are_taken_as_their_values(tensor_dtype, rtol, atol):
    """Adam(lr=tensor, betas=(tensor, tensor)) (PyTorch's documented types): float64 tensors
    train as PyTorch to rounding; from float32 tensors PyTorch computes the step size and bias
    corrections in float32 (1 - 0.999**t keeps about five digits there; fastbp's are float64): the
    documented difference, ~1e-7 here on parameters that 5 updates of ~0.01 moved."""
    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()

    def adam(params):
        t = lambda v: torch.tensor(v, dtype=tensor_dtype)
        return torch.optim.Adam(params, lr=t(0.01), betas=(t(0.9), t(0.999)))

    ref, model = make(), make()
    ref_opt = adam(ref.parameters())
    step = fastbp.from_torch(model, loss=torch.nn.CrossEntropyLoss(), optimizer=adam(model.parameters()), batch_size=8)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, dtype=torch.float64, generator=g), torch.randint(0, 3, (8,), generator=g)
    for _ in range(5):
        ref_opt.zero_grad()
        want = torch.nn.functional.cross_entropy(ref(x), y)
        want.backward()
        ref_opt.step()
        assert float(step(x, y)) == pytest.approx(want.item(), rel=rtol)
    step.sync_to_torch()
    for a, b in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)
