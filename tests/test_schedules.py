"""fastbp.schedules: the learning-rate sequences equal PyTorch's schedulers' (to 1e-12)."""
import math
import pickle

import pytest

from fastbp import schedules as S

N = 50
BASE = 0.1


def _torch():
    return pytest.importorskip("torch")


def _torch_lrs(make, n=N, base=BASE):
    torch = _torch()
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sch = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


CASES = [
    ("step", lambda: S.StepLR(step_size=7, gamma=0.5),
     lambda L, o: L.StepLR(o, step_size=7, gamma=0.5)),
    ("step_default_gamma", lambda: S.StepLR(3), lambda L, o: L.StepLR(o, 3)),
    ("multistep", lambda: S.MultiStepLR([30, 5, 12, 12], gamma=0.3),
     lambda L, o: L.MultiStepLR(o, milestones=[30, 5, 12, 12], gamma=0.3)),
    ("exponential", lambda: S.ExponentialLR(0.93), lambda L, o: L.ExponentialLR(o, gamma=0.93)),
    ("cosine", lambda: S.CosineAnnealingLR(T_max=50), lambda L, o: L.CosineAnnealingLR(o, T_max=50)),
    ("cosine_periodic", lambda: S.CosineAnnealingLR(T_max=9, eta_min=0.01),
     lambda L, o: L.CosineAnnealingLR(o, T_max=9, eta_min=0.01)),
    ("cosine_warmup", lambda: S.CosineAnnealingLR(T_max=40, eta_min=1e-3, warmup=5),
     lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=1 / 3, total_iters=5),
                                     L.CosineAnnealingLR(o, T_max=40, eta_min=1e-3)], milestones=[5])),
    ("cosine_warmup_factor", lambda: S.CosineAnnealingLR(T_max=45, warmup=5, warmup_start_factor=0.01),
     lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.01, total_iters=5),
                                     L.CosineAnnealingLR(o, T_max=45)], milestones=[5])),
    ("onecycle", lambda: S.OneCycleLR(max_lr=0.5, total_steps=50),
     lambda L, o: L.OneCycleLR(o, max_lr=0.5, total_steps=50, cycle_momentum=False)),
    ("onecycle_linear_3phase", lambda: S.OneCycleLR(max_lr=0.5, epochs=5, steps_per_epoch=10, pct_start=0.25,
                                                    anneal_strategy="linear", three_phase=True),
     lambda L, o: L.OneCycleLR(o, max_lr=0.5, epochs=5, steps_per_epoch=10, pct_start=0.25,
                               anneal_strategy="linear", three_phase=True, cycle_momentum=False)),
    ("onecycle_factors", lambda: S.OneCycleLR(max_lr=2.0, total_steps=60, div_factor=10.0, final_div_factor=100.0),
     lambda L, o: L.OneCycleLR(o, max_lr=2.0, total_steps=60, div_factor=10.0, final_div_factor=100.0,
                               cycle_momentum=False)),
]


@pytest.mark.extras
@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_lr_sequence_equals_pytorch(name, ours, theirs):
    torch = _torch()
    ref = _torch_lrs(lambda o: theirs(torch.optim.lr_scheduler, o))
    s = ours()
    got = [s.lr_at(t, BASE) for t in range(N)]
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-12)


@pytest.mark.extras
@pytest.mark.parametrize("kw", [dict(), dict(mode="max", threshold_mode="abs", threshold=0.05),
                                dict(patience=2, cooldown=3, factor=0.5, min_lr=0.004),
                                dict(patience=0, threshold_mode="abs", threshold=0.0)])
def test_plateau_equals_pytorch(kw):
    torch = _torch()
    metrics = [1.0, 0.9, 0.95, 0.95, 0.94, 0.96, 0.97, 0.8, 0.8, 0.85, 0.86, 0.87, 0.9, 0.7, 0.7] * 4
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=BASE)
    ref_s = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    ours = S.ReduceLROnPlateau(**kw)
    lr = ours.lr_at(0, BASE)
    for m in metrics:
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        ref_s.step(m)
        lr = ours.step(m, lr)
    assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
    assert (ours.num_bad_epochs, ours.cooldown_counter, ours.best) == \
        (ref_s.num_bad_epochs, ref_s.cooldown_counter, ref_s.best)


def test_closed_forms_without_torch():
    assert S.StepLR(2, 0.5).lr_at(5, 1.0) == 0.25
    assert S.MultiStepLR([2, 4]).lr_at(4, 1.0) == pytest.approx(0.01)
    assert S.ExponentialLR(0.5).lr_at(3, 2.0) == 0.25
    c = S.CosineAnnealingLR(10, eta_min=0.1)
    assert c.lr_at(0, 1.0) == 1.0 and c.lr_at(10, 1.0) == pytest.approx(0.1) and c.lr_at(5, 1.0) == pytest.approx(0.55)
    w = S.CosineAnnealingLR(10, warmup=4, warmup_start_factor=0.2)
    assert w.lr_at(0, 1.0) == pytest.approx(0.2) and w.lr_at(2, 1.0) == pytest.approx(0.6) and w.lr_at(4, 1.0) == 1.0
    o = S.OneCycleLR(1.0, total_steps=100)
    assert o.lr_at(0) == pytest.approx(1 / 25) and o.lr_at(29) == pytest.approx(1.0)
    assert o.lr_at(99) == pytest.approx(1 / 25 / 1e4)
    assert (S.StepLR(1).interval, o.interval, S.ReduceLROnPlateau().interval) == ("epoch", "step", "epoch")


def test_onecycle_past_total_steps_is_an_error():
    o = S.OneCycleLR(1.0, total_steps=10)
    o.lr_at(10)
    with pytest.raises(ValueError, match="total_steps"):
        o.lr_at(11)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: S.StepLR(0), ValueError, "step_size"),
    (lambda: S.StepLR(2.0), TypeError, "step_size"),
    (lambda: S.StepLR(2, gamma="a"), TypeError, "gamma"),
    (lambda: S.StepLR(2, interval="batch"), ValueError, "interval"),
    (lambda: S.MultiStepLR(3), TypeError, "milestones"),
    (lambda: S.MultiStepLR([-1]), ValueError, "milestones"),
    (lambda: S.ExponentialLR(math.nan), ValueError, "gamma"),
    (lambda: S.CosineAnnealingLR(0), ValueError, "T_max"),
    (lambda: S.CosineAnnealingLR(5, warmup_start_factor=0.0), ValueError, "warmup_start_factor"),
    (lambda: S.OneCycleLR(1.0), ValueError, "total_steps"),
    (lambda: S.OneCycleLR(1.0, total_steps=10, cycle_momentum=True), ValueError, "cycle_momentum"),
    (lambda: S.OneCycleLR(1.0, total_steps=10, anneal_strategy="exp"), ValueError, "anneal_strategy"),
    (lambda: S.OneCycleLR(0.0, total_steps=10), ValueError, "max_lr"),
    (lambda: S.ReduceLROnPlateau(mode="mean"), ValueError, "mode"),
    (lambda: S.ReduceLROnPlateau(factor=1.0), ValueError, "factor"),
    (lambda: S.ReduceLROnPlateau(patience=-1), ValueError, "patience"),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_lr_at_checks_t():
    with pytest.raises(ValueError, match="t must be"):
        S.StepLR(2).lr_at(-1, 1.0)
    with pytest.raises(TypeError, match="t must be"):
        S.StepLR(2).lr_at(1.5, 1.0)


@pytest.mark.parametrize("s", [S.StepLR(3, 0.5), S.MultiStepLR([1, 5]), S.ExponentialLR(0.9),
                               S.CosineAnnealingLR(8, 0.01, warmup=2), S.OneCycleLR(0.3, total_steps=9)])
def test_immutable_spec_roundtrip_and_pickle(s):
    with pytest.raises(AttributeError):
        s.gamma = 2.0
    assert S.schedule_from_spec(s.spec()) == s
    assert pickle.loads(pickle.dumps(s)) == s
    assert [s.lr_at(t, 0.2) for t in range(9)] == [S.schedule_from_spec(s.spec()).lr_at(t, 0.2) for t in range(9)]


def test_plateau_state_roundtrip():
    p = S.ReduceLROnPlateau(patience=0, factor=0.5)
    lr = p.step(1.0, 0.1)
    lr = p.step(2.0, lr)
    q = S.schedule_from_spec(p.spec())
    assert (q.lr, q.best, q.num_bad_epochs, q.last_epoch) == (p.lr, p.best, p.num_bad_epochs, p.last_epoch) == \
        (0.05, 1.0, 0, 2)
    assert S.schedule_from_spec(S.ReduceLROnPlateau().spec()).best == math.inf
    # a checkpoint's malformed state is a ValueError (an AttributeError escaped fastbp.load)
    for bad in (True, [1], "x", 5, 0, ""):
        with pytest.raises(ValueError, match="state must be a dict"):
            S.schedule_from_spec({**S.ReduceLROnPlateau().spec(), "state": bad})


def test_schedule_arg():
    with pytest.raises(TypeError, match="schedule must be"):
        S.schedule_arg("cosine")
    assert S.schedule_arg(None) is None


def test_onecycle_degenerate_phases_do_not_divide_by_zero():
    o = S.OneCycleLR(1.0, total_steps=10, pct_start=1.0)
    assert [o.lr_at(t) for t in (0, 9, 10)] == pytest.approx([1 / 25, 1.0, 1 / 25 / 1e4])


def test_a_reduce_lr_on_plateau_belongs_to_one_step_at_a_time():
    """It holds its step's rate, best metric and counters (PyTorch's belongs to one
    optimizer): a second live step is refused, in compile and in fit; the same step
    again, or a new one after the first is gone, is fine."""
    import gc
    import numpy as np
    import fastbp
    m = fastbp.Sequential(fastbp.Linear(4, 3))
    s = S.ReduceLROnPlateau(patience=0)
    a = fastbp.compile(m, schedule=s, batch_size=4)
    with pytest.raises(ValueError, match="already another step's schedule"):
        fastbp.compile(m, schedule=s, batch_size=4)
    X, y = np.ones((8, 4), np.float32), np.zeros(8, int)
    a.fit(X, y, epochs=2, schedule=s)
    b = fastbp.compile(m, batch_size=4)
    with pytest.raises(ValueError, match="already another step's schedule"):
        b.fit(X, y, epochs=1, schedule=s)
    assert b.n_steps == 0
    del a
    gc.collect()
    assert fastbp.compile(m, schedule=s, batch_size=4).schedule is s


def test_a_reduce_lr_on_plateau_rebuilt_by_load_belongs_to_the_loaded_step(tmp_path):
    """The plateau that fastbp.load rebuilds was nobody's: a second
    step took it, and both then changed one rate, best metric and counters."""
    import fastbp
    m = fastbp.Sequential(fastbp.Linear(4, 3))
    fastbp.compile(m, schedule=S.ReduceLROnPlateau(), batch_size=4).save(tmp_path / "m.npz")
    loaded = fastbp.load(tmp_path / "m.npz")
    other = fastbp.compile(m, batch_size=4)
    with pytest.raises(ValueError, match="already another step's schedule"):
        other.schedule = loaded.schedule
    assert other.schedule is None
    plateau = loaded.schedule
    loaded.schedule = None                  # detached: free for another step
    other.schedule = plateau
    assert other.schedule is plateau


def test_setting_a_steps_schedule_attaches_it_as_the_argument_does():
    """``step.schedule = s`` was a plain attribute: anything was taken (a string failed
    later, in fit), the count did not restart, and a ReduceLROnPlateau of another step
    was shared.  It now attaches as ``fit(schedule=s)`` does."""
    import numpy as np
    import fastbp

    def model():
        return fastbp.Sequential(fastbp.Linear(4, 3))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    a = fastbp.compile(model(), optimizer=fastbp.SGD(lr=0.1), batch_size=8, seed=3)
    b = fastbp.compile(model(), optimizer=fastbp.SGD(lr=0.1), batch_size=8, seed=3)
    for st in (a, b):
        st.fit(X, y, epochs=2)
    a.schedule = S.StepLR(step_size=1, gamma=0.5)
    assert isinstance(a.schedule, S.StepLR) and a.lr == pytest.approx(0.1)
    a.fit(X, y, epochs=2)
    b.fit(X, y, epochs=2, schedule=S.StepLR(step_size=1, gamma=0.5))
    np.testing.assert_array_equal(a.param_vector, b.param_vector)
    assert a.lr == b.lr == pytest.approx(0.025)        # the rate of the next update (t = 2)
    sched = a.schedule
    a.schedule = sched                     # its own schedule again: it continues
    a.fit(X, y, epochs=1)
    b.fit(X, y, epochs=1)
    np.testing.assert_array_equal(a.param_vector, b.param_vector)
    assert a.lr == pytest.approx(0.0125)
    with pytest.raises(TypeError, match="schedule must be"):
        a.schedule = "cosine"
    assert a.schedule is sched
    a.schedule = None                      # detached: the rate stays where it is
    assert a.schedule is None and a.lr == pytest.approx(0.0125)
    p = S.ReduceLROnPlateau(patience=0)
    b.schedule = p
    with pytest.raises(ValueError, match="already another step's schedule"):
        a.schedule = p
    assert a.schedule is None
    b.schedule = None                      # b lets go of it: a may take it
    a.schedule = p
    assert a.schedule is p
    a.schedule = S.StepLR(step_size=1)     # replaced: free again
    b.schedule = p
    assert b.schedule is p
    b.fit(X, y, epochs=1, schedule=S.ExponentialLR(0.9))     # replaced by fit's schedule=
    a.fit(X, y, epochs=1, schedule=p)
    assert a.schedule is p


@pytest.mark.parametrize("make", [lambda: S.StepLR(step_size=1, gamma=1e308), lambda: S.ExponentialLR(1e200),
                                  lambda: S.MultiStepLR([1, 2], gamma=1e308)])
def test_a_rate_that_overflows_is_refused_before_fit_trains(make):
    """gamma ** t overflowed: a bare OverflowError (34, 'Numerical result out of range')."""
    import numpy as np
    import fastbp
    sched = make()
    assert sched.lr_at(5, 0.1) == math.inf
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), optimizer=fastbp.SGD(lr=0.1), batch_size=4)
    X, y = np.ones((8, 3), np.float32), np.zeros(8, int)
    with pytest.raises(ValueError, match=r"schedule: the rate of .* at epoch 2 of this fit is inf"):
        step.fit(X, y, epochs=3, schedule=sched)
    assert step.n_steps == 0


def _manual_and_fit(make_schedule, calls=4):
    import numpy as np
    import fastbp
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)

    def step():
        return fastbp.compile(fastbp.Sequential(fastbp.Linear(4, 3)), optimizer=fastbp.SGD(lr=0.1),
                              batch_size=4, seed=3, dtype=np.float64, schedule=make_schedule())
    return X, y, step(), step()


@pytest.mark.parametrize("make", [lambda: S.StepLR(1, 0.5, interval="step"),
                                  lambda: S.OneCycleLR(max_lr=0.4, total_steps=12),
                                  lambda: S.CosineAnnealingLR(T_max=6, interval="step")])
def test_calls_outside_fit_follow_a_step_interval_schedule_as_fit_does(make):
    """A step-interval schedule given to compile was ignored by ``step(x, y)`` (four calls all
    at 0.1) while the calls counted: a later fit jumped to 0.1 * 0.5**4.  Each call now runs at
    the schedule's rate of its update, and ``step.lr`` reports the next update's, as after fit."""
    import numpy as np
    X, y, hand, fit = _manual_and_fit(make)
    sched = hand.schedule
    for k in range(4):
        assert hand.lr == pytest.approx(sched.lr_at(k, 0.1), rel=1e-15)
        hand(X[4 * k:4 * k + 4], y[4 * k:4 * k + 4])
    assert hand.lr == pytest.approx(sched.lr_at(4, 0.1), rel=1e-15)
    fit.fit(X, y, epochs=1, shuffle=False)
    np.testing.assert_array_equal(hand.param_vector, fit.param_vector)
    assert hand.lr == fit.lr
    h = hand.fit(X, y, epochs=1, shuffle=False)          # fit goes on from the calls' count
    fit.fit(X, y, epochs=1, shuffle=False)
    assert h.history["lr"] == [pytest.approx(sched.lr_at(4, 0.1), rel=1e-15)]
    np.testing.assert_array_equal(hand.param_vector, fit.param_vector)
    hand(X[:4], y[:4], sample_weight=np.ones(4))          # the weighted path too
    assert hand.lr == pytest.approx(sched.lr_at(9, 0.1), rel=1e-15)


def test_calls_past_a_onecycle_end_are_an_error_that_changes_nothing():
    import numpy as np
    X, y, s, _ = _manual_and_fit(lambda: S.OneCycleLR(max_lr=0.4, total_steps=2))
    for k in range(3):                 # updates 0, 1 and 2 (PyTorch's scheduler steps to total_steps)
        s(X[:4], y[:4])
    p, lr = s.param_vector.copy(), s.lr
    with pytest.raises(ValueError, match="past total_steps=2"):
        s(X[:4], y[:4])
    np.testing.assert_array_equal(s.param_vector, p)
    assert s.n_steps == 3 and s.lr == lr


def test_an_epoch_interval_schedule_keeps_the_epochs_rate_between_fits():
    import numpy as np
    X, y, s, _ = _manual_and_fit(lambda: S.StepLR(1, 0.5))
    s(X[:4], y[:4])
    s(X[:4], y[:4])
    assert s.lr == pytest.approx(0.1)
    s.fit(X, y, epochs=1)
    assert s.lr == pytest.approx(0.05)
    s(X[:4], y[:4])
    assert s.lr == pytest.approx(0.05) and s.n_steps == 7
    assert np.isfinite(s.param_vector).all()
