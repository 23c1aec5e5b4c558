"""from_torch against PyTorch's own loop: gradient clipping, RMSprop, lr schedulers, state write-back.

Each case trains a copy of one torch model with PyTorch (``opt.step()`` after
``clip_grad_norm_``) and the other with the fused step, float64, 10 steps,
and compares weights to 1e-10 relative.
"""
import copy

import numpy as np
import pytest

import fastbp

pytestmark = pytest.mark.extras          # needs torch (CI's second stage installs it)
torch = pytest.importorskip("torch")

RTOL = 1e-10


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _batches(n=10, b=8):
    rng = np.random.default_rng(0)
    return [(torch.from_numpy(rng.standard_normal((b, 5))), torch.from_numpy(rng.integers(0, 3, b)))
            for _ in range(n)]


def _torch_step(model, opt, x, y, clip=None):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def _assert_same(a, b):
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(pa.detach().numpy(), pb.detach().numpy(), rtol=RTOL, atol=1e-13, err_msg=na)


def _assert_same_state(ref, ref_opt, mine, opt):
    """The torch optimizers' per-parameter state agrees: keys, values, dtypes and shapes."""
    for (pr, pm) in zip(ref.parameters(), mine.parameters()):
        sr, sm = ref_opt.state[pr], opt.state[pm]
        assert set(sr) == set(sm)
        for k in sr:
            np.testing.assert_allclose(np.asarray(sm[k]), np.asarray(sr[k]), rtol=RTOL, atol=1e-14, err_msg=k)
            assert sm[k].dtype == sr[k].dtype and sm[k].shape == sr[k].shape, k


OPTS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9, weight_decay=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.02, weight_decay=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01),
    "rmsprop_momentum": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.9, weight_decay=0.01),
    "rmsprop_centered": lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, centered=True),
    "rmsprop_centered_momentum": lambda ps: torch.optim.RMSprop(ps, lr=0.005, momentum=0.5, centered=True,
                                                                eps=1e-6),
}


#: every optimizer without clipping; clipping with SGD + momentum, AdamW and one RMSprop
CASES = [(name, None) for name in OPTS] + [(name, 0.05) for name in ("sgd_momentum_wd", "adamw",
                                                                     "rmsprop_centered_momentum")]


@pytest.mark.parametrize("name, clip", CASES)
def test_ten_steps_match_torch(name, clip):
    ref = _model()
    mine = copy.deepcopy(ref)
    ref_opt = OPTS[name](ref.parameters())
    step = fastbp.from_torch(mine, optimizer=OPTS[name](mine.parameters()), batch_size=8, clip_grad_norm=clip)
    clipped = False
    for x, y in _batches():
        if clip is not None:
            ref_opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x), y).backward()
            clipped |= float(torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()])) > clip
        lt = _torch_step(ref, ref_opt, x, y, clip)
        lf = step(x, y)
        assert lf == pytest.approx(lt, rel=RTOL)
    assert clip is None or clipped         # the clipping case really clips
    _assert_same(ref, mine)


def test_from_torch_follows_an_lr_scheduler():
    """A torch scheduler stepped between calls changes the rate the fused step uses."""
    ref = _model()
    mine = copy.deepcopy(ref)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
    opt = torch.optim.SGD(mine.parameters(), lr=0.5, momentum=0.9)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.3)
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    for x, y in _batches():
        _torch_step(ref, ref_opt, x, y)
        ref_sched.step()
        step(x, y)
        sched.step()
        assert step.lr == opt.param_groups[0]["lr"]          # the rate of the next call
    _assert_same(ref, mine)
    # step.lr set on the step stays until the torch rate changes again
    step.lr = 0.123
    step(*_batches(1)[0])
    assert step.lr == 0.123
    opt.param_groups[0]["lr"] = 0.01
    step(*_batches(1)[0])
    assert step.lr == 0.01


@pytest.mark.parametrize("finish", ["sync_to_torch", "close"])
def test_sync_to_torch_keeps_a_rate_a_scheduler_set_after_the_last_step(finish):
    """sync_to_torch/close after scheduler.step() keeps the scheduler's rate (PyTorch's loop
    would continue at it), not the rate of the last fused step."""
    mine = _model()
    opt = torch.optim.SGD(mine.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    step(*_batches(1)[0])
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    getattr(step, finish)()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert step.lr == pytest.approx(0.05)


def test_from_torch_rejects_groups_with_different_rates_at_call_time():
    mine = _model()
    opt = torch.optim.SGD([{"params": mine[0].parameters()}, {"params": mine[2].parameters()}], lr=0.1)
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    opt.param_groups[1]["lr"] = 0.5
    w = mine[0].weight.detach().numpy().copy()
    with pytest.raises(ValueError, match="learning rates"):
        step(*_batches(1)[0])
    np.testing.assert_array_equal(mine[0].weight.detach().numpy(), w)


@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adamw", "rmsprop_centered_momentum"])
def test_sync_to_torch_continues_in_plain_pytorch(name):
    """5 fused steps, sync_to_torch, 5 torch steps == 10 torch steps (momentum, moments, step)."""
    ref = _model()
    mine = copy.deepcopy(ref)
    ref_opt = OPTS[name](ref.parameters())
    opt = OPTS[name](mine.parameters())
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    batches = _batches()
    for x, y in batches[:5]:
        _torch_step(ref, ref_opt, x, y)
        step(x, y)
    assert not opt.state                # nothing written until asked
    step.sync_to_torch()
    _assert_same_state(ref, ref_opt, mine, opt)
    for x, y in batches[5:]:
        _torch_step(ref, ref_opt, x, y)
        mine.zero_grad()
        _torch_step(mine, opt, x, y)
    _assert_same(ref, mine)


def test_from_torch_imports_rmsprop_state():
    ref = _model()
    ref_opt = torch.optim.RMSprop(ref.parameters(), lr=0.01, momentum=0.9, centered=True)
    batches = _batches()
    for x, y in batches[:3]:
        _torch_step(ref, ref_opt, x, y)
    mine = copy.deepcopy(ref)
    opt = torch.optim.RMSprop(mine.parameters(), lr=0.01, momentum=0.9, centered=True)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    for x, y in batches[3:]:
        _torch_step(ref, ref_opt, x, y)
        step(x, y)
    _assert_same(ref, mine)
    step.sync_to_torch()
    assert float(opt.state[mine[0].weight]["step"]) == 10.0


def test_from_torch_clip_grad_norm_is_validated():
    with pytest.raises(ValueError, match="clip_grad_norm"):
        fastbp.from_torch(_model(), clip_grad_norm=-1.0)
    with pytest.raises(TypeError, match="clip_grad_norm"):
        fastbp.from_torch(_model(), clip_grad_norm="1")


def _norm_model(norm):
    # no bias before the norm layer: BatchNorm removes it, so its gradient is rounding noise,
    # which Adam scales up to steps of the learning rate (in PyTorch as in fastbp)
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8, bias=False), norm(8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()


@pytest.mark.parametrize("norm", [
    lambda n: torch.nn.LayerNorm(n),
    lambda n: torch.nn.BatchNorm1d(n),
    lambda n: torch.nn.BatchNorm1d(n, momentum=None),           # the cumulative average: reads the count
    lambda n: torch.nn.BatchNorm1d(n, momentum=None, affine=False),
], ids=["layernorm", "batchnorm", "batchnorm_cumulative", "batchnorm_cumulative_no_affine"])
@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adamw"])
def test_sync_to_torch_with_norm_layers_continues_in_plain_pytorch(norm, name):
    """Norm layers' weights and biases are written back under their own names, and a
    BatchNorm1d's num_batches_tracked too: 4 fused steps, close(), 4 torch steps == 8
    torch steps (weights, running statistics, the count)."""
    ref = _norm_model(norm)
    mine = copy.deepcopy(ref)
    ref_opt = OPTS[name](ref.parameters())
    opt = OPTS[name](mine.parameters())
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    batches = _batches(8)
    for x, y in batches[:4]:
        _torch_step(ref, ref_opt, x, y)
        step(x, y)
    step.close()
    _assert_same_state(ref, ref_opt, mine, opt)
    if isinstance(mine[1], torch.nn.BatchNorm1d):
        assert int(mine[1].num_batches_tracked) == int(ref[1].num_batches_tracked) == 4
    for x, y in batches[4:]:
        _torch_step(ref, ref_opt, x, y)
        _torch_step(mine, opt, x, y)
    _assert_same(ref, mine)
    for (br, bm) in zip(ref.buffers(), mine.buffers()):
        np.testing.assert_allclose(bm.numpy(), br.numpy(), rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adamw"])
def test_fused_torch_fused_with_syncs_between_trains_as_one_pytorch_run(name):
    """Fused steps, PyTorch steps, fused steps again, with a sync_to_torch after each stretch
    and a second one after the PyTorch steps (as before saving opt.state_dict()): the same
    weights, running statistics, num_batches_tracked and optimizer state as plain PyTorch.
    The count PyTorch stepped was lost (the next sync wrote the step's own over it: the
    cumulative running average drifted), and a second sync reverted PyTorch's newer
    optimizer state."""
    ref = _norm_model(lambda n: torch.nn.BatchNorm1d(n, momentum=None))
    mine = copy.deepcopy(ref)
    ref_opt, opt = OPTS[name](ref.parameters()), OPTS[name](mine.parameters())
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    batches = _batches(9)
    for i, (x, y) in enumerate(batches):
        _torch_step(ref, ref_opt, x, y)
        if 3 <= i < 6:                      # the middle stretch in plain PyTorch
            mine.zero_grad()
            _torch_step(mine, opt, x, y)
            if i == 5:
                step.sync_to_torch()        # a second sync: PyTorch's newer state stays
        else:
            step(x, y)
            if i == 2:
                step.sync_to_torch()
    step.sync_to_torch()
    assert int(mine[1].num_batches_tracked) == int(ref[1].num_batches_tracked) == 9
    _assert_same_state(ref, ref_opt, mine, opt)
    _assert_same(ref, mine)
    for (br, bm) in zip(ref.buffers(), mine.buffers()):
        np.testing.assert_allclose(bm.numpy(), br.numpy(), rtol=RTOL, atol=1e-14)


def test_sync_to_torch_without_a_torch_optimizer_writes_the_batchnorm_count():
    mine = _norm_model(lambda n: torch.nn.BatchNorm1d(n, momentum=None))
    step = fastbp.from_torch(mine, optimizer=fastbp.SGD(lr=0.1), batch_size=8)
    for x, y in _batches(3):
        step(x, y)
    assert int(mine[1].num_batches_tracked) == 3        # each call writes it
    mine[1].num_batches_tracked = torch.tensor(7)       # the user's own tensor: taken as the count
    step(*_batches(1)[0])
    assert int(mine[1].num_batches_tracked) == 8
    step.sync_to_torch()
    assert int(mine[1].num_batches_tracked) == 8


def test_adam_with_decoupled_weight_decay_is_adamw():
    """torch.optim.Adam(decoupled_weight_decay=True) is AdamW (PyTorch 2.x): trained as AdamW."""
    ref = _model()
    mine = copy.deepcopy(ref)
    make = lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.5, decoupled_weight_decay=True)  # noqa: E731
    if "decoupled_weight_decay" not in make(_model().parameters()).param_groups[0]:
        pytest.skip("this PyTorch's Adam has no decoupled_weight_decay")
    ref_opt = make(ref.parameters())
    step = fastbp.from_torch(mine, optimizer=make(mine.parameters()), batch_size=8)
    assert type(step.optimizer) is fastbp.AdamW and step.optimizer.decoupled
    for x, y in _batches(5):
        _torch_step(ref, ref_opt, x, y)
        step(x, y)
    _assert_same(ref, mine)


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_tensor_betas_are_read_as_numbers(cls):
    """PyTorch takes betas as floats or tensors; from_torch refused tensors ("betas[0] must be a
    real number, got Tensor") while it took a tensor lr."""
    ref = _model()
    mine = copy.deepcopy(ref)
    b1, b2 = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64)
    make = lambda ps: getattr(torch.optim, cls)(ps, lr=0.05, betas=(b1, b2))  # noqa: E731
    ref_opt = make(ref.parameters())
    step = fastbp.from_torch(mine, optimizer=make(mine.parameters()), batch_size=8)
    assert step.optimizer.betas == (0.8, 0.9) and all(type(b) is float for b in step.optimizer.betas)
    for x, y in _batches(4):
        _torch_step(ref, ref_opt, x, y)
        step(x, y)
    _assert_same(ref, mine)


@pytest.mark.parametrize("option", [{"amsgrad": True}, {"maximize": True}, {"decoupled_weight_decay": True},
                                    {"eps": 1e-3}])
def test_an_option_set_in_a_later_parameter_group_only_is_refused(option):
    m = _model()
    groups = [{"params": m[0].parameters()}, {"params": m[2].parameters(), **option}]
    opt = torch.optim.Adam(groups, lr=0.01)
    key = next(iter(option))
    with pytest.raises(ValueError, match=f"group 1 has {key}="):
        fastbp.from_torch(m, optimizer=opt)


def test_frozen_parameters_are_refused_not_trained():
    """PyTorch does not update a parameter left out of the optimizer or with
    requires_grad=False; fastbp trains every parameter, so it refuses such a model."""
    m = _model()
    with pytest.raises(ValueError, match=r"layer 2's weight is not in the optimizer's parameter groups"):
        fastbp.from_torch(m, optimizer=torch.optim.SGD(m[0].parameters(), lr=0.1))
    m[2].requires_grad_(False)
    for opt in (torch.optim.SGD(m[0].parameters(), lr=0.1), fastbp.SGD(lr=0.1), None):
        with pytest.raises(ValueError, match=r"layer 2's weight has requires_grad=False"):
            fastbp.from_torch(m, optimizer=opt)


def test_tied_weights_are_refused_not_untied():
    lin = torch.nn.Linear(4, 4).double()
    m = torch.nn.Sequential(lin, torch.nn.Tanh(), lin)
    with pytest.raises(ValueError, match=r"layer 2's weight is also layer 0's"):
        fastbp.from_torch(m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1))
    other = torch.nn.Linear(4, 4).double()
    other.weight = lin.weight                       # a shared Parameter in two modules
    with pytest.raises(ValueError, match=r"layer 2's weight is also layer 0's"):
        fastbp.from_torch(torch.nn.Sequential(lin, torch.nn.Tanh(), other))
    bn = torch.nn.BatchNorm1d(4, affine=False).double()      # shared running statistics
    with pytest.raises(ValueError, match=r"layer 3's running_mean is also layer 1's"):
        fastbp.from_torch(torch.nn.Sequential(torch.nn.Linear(4, 4).double(), bn, torch.nn.Linear(4, 4).double(),
                                              bn))
    act = torch.nn.Tanh()                          # a module without parameters may repeat
    fastbp.from_torch(torch.nn.Sequential(torch.nn.Linear(4, 4).double(), act, torch.nn.Linear(4, 4).double(), act))
    # two Parameter objects over one storage (``.data`` assigned, or overlapping views) are tied too:
    # each got its own fastbp array and the two drifted apart where PyTorch updates one storage
    for share in (lambda a, b: setattr(b.weight, "data", a.weight.data),
                  lambda a, b: setattr(b, "weight", torch.nn.Parameter(a.weight.data[:, :]))):
        first, second = torch.nn.Linear(4, 4).double(), torch.nn.Linear(4, 4).double()
        share(first, second)
        with pytest.raises(ValueError, match=r"layer 2's weight is also layer 0's or shares its memory"):
            fastbp.from_torch(torch.nn.Sequential(first, torch.nn.Tanh(), second))
        assert first.weight.data_ptr() == second.weight.data_ptr()      # left as it was
    big = torch.zeros(2, 16, dtype=torch.float64)           # disjoint views of one storage: not tied
    first, second = torch.nn.Linear(4, 4).double(), torch.nn.Linear(4, 4).double()
    first.weight, second.weight = torch.nn.Parameter(big[0].view(4, 4)), torch.nn.Parameter(big[1].view(4, 4))
    fastbp.from_torch(torch.nn.Sequential(first, torch.nn.Tanh(), second))


def test_a_loss_of_the_wrong_type_is_a_type_error():
    m = torch.nn.Sequential(torch.nn.Linear(4, 3).double())
    for bad in (3, 1.5, [None]):
        with pytest.raises(TypeError, match=r"loss must be a fastbp loss name or a torch loss module, got"):
            fastbp.from_torch(m, loss=bad)
    with pytest.raises(ValueError, match="ReLU has no fastbp equivalent"):
        fastbp.from_torch(m, loss=torch.nn.ReLU())


def _scheduled_side_by_side(ref, ref_opt, ref_sched, mine, step, sched, n):
    """``n`` minibatches in plain PyTorch (``ref``, its optimizer and scheduler) and through
    ``step``, made from ``mine`` (a copy of ``ref``; its torch scheduler stepped alike): the
    same weights after."""
    for x, y in _batches(n):
        _torch_step(ref, ref_opt, x, y)
        step(x, y)
        ref_sched.step()
        sched.step()
    _assert_same(ref, mine)


@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adamw"])
@pytest.mark.parametrize("sched", ["linear_to_zero", "warmup_from_zero"])
def test_schedulers_that_reach_a_zero_rate_are_followed(name, sched):
    """PyTorch allows lr = 0 (only a negative rate is invalid): LinearLR(end_factor=0) and the
    usual LambdaLR warmup from 0 were refused ("lr must be > 0") mid-training or at compile."""
    ref = _model()
    mine = copy.deepcopy(ref)
    ref_opt, opt = OPTS[name](ref.parameters()), OPTS[name](mine.parameters())

    def make(o):
        if sched == "linear_to_zero":
            return torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=3)
        return torch.optim.lr_scheduler.LambdaLR(o, lambda e: min(e / 3, 1.0))
    ref_s, s = make(ref_opt), make(opt)
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    _scheduled_side_by_side(ref, ref_opt, ref_s, mine, step, s, 6)
    assert step.lr == opt.param_groups[0]["lr"]


@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adamw", "rmsprop_centered_momentum"])
def test_sync_to_torch_before_any_step_leaves_a_usable_torch_optimizer(name):
    """Handing back an untrained step wrote the moments without ``step``: the next
    ``opt.step()`` of Adam, AdamW and RMSprop raised KeyError: 'step'."""
    ref = _model()
    mine = copy.deepcopy(ref)
    ref_opt, opt = OPTS[name](ref.parameters()), OPTS[name](mine.parameters())
    fastbp.from_torch(mine, optimizer=opt, batch_size=8).close()
    for x, y in _batches(3):
        _torch_step(ref, ref_opt, x, y)
        mine.zero_grad()
        _torch_step(mine, opt, x, y)
    _assert_same(ref, mine)
    _assert_same_state(ref, ref_opt, mine, opt)


@pytest.mark.parametrize("make, key", [
    (lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=20), "momentum"),
    (lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, step_size_up=2, max_momentum=0.95), "momentum")])
def test_a_torch_scheduler_that_cycles_momentum_is_refused_not_ignored(make, key):
    """fastbp follows the torch optimizer's rate only: a momentum (or betas) a scheduler
    changed was ignored, and the training silently differed from PyTorch's."""
    mine = _model()
    opt = torch.optim.SGD(mine.parameters(), lr=0.1, momentum=0.9)
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    sched = make(opt)                       # moves momentum at once (to its maximum)
    x, y = _batches(1)[0]
    before = step.param_vector.copy()
    with pytest.raises(ValueError, match=rf"param_groups' {key} is now .* cycle_momentum=False"):
        step(x, y)
    np.testing.assert_array_equal(step.param_vector, before)
    assert step.n_steps == 0
    step.close()                            # handing back still works
    # without cycling, the rate is followed and the training is PyTorch's
    ref = _model()
    mine = copy.deepcopy(ref)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.1, betas=[0.9, 0.99])
    opt = torch.optim.Adam(mine.parameters(), lr=0.1, betas=[0.9, 0.99])
    kw = dict(max_lr=0.1, total_steps=20, cycle_momentum=False)
    ref_s = torch.optim.lr_scheduler.OneCycleLR(ref_opt, **kw)
    step = fastbp.from_torch(mine, optimizer=opt, batch_size=8)
    s = torch.optim.lr_scheduler.OneCycleLR(opt, **kw)
    _scheduled_side_by_side(ref, ref_opt, ref_s, mine, step, s, 4)
    del sched
