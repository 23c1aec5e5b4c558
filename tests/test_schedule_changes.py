"""A schedule or rate changed during a fit, and the states a schedule reaches: each must take
effect from the next epoch (README, "Threading design"), and a checkpoint must load whatever
state a schedule can reach."""
import numpy as np
import pytest

import fastbp
from fastbp import schedules as S


def _data():
    r = np.random.default_rng(0)
    return r.normal(size=(8, 4)), r.normal(size=(8, 2))


def _step(opt=None, schedule=None):
    m = fastbp.Sequential(fastbp.Linear(4, 3), fastbp.Tanh(), fastbp.Linear(3, 2))
    return fastbp.compile(m, loss="mse", optimizer=opt or fastbp.SGD(lr=0.1), batch_size=8, dtype=np.float64,
                          schedule=schedule)


def _fit_changing(st, change, epochs=4):
    """Fit ``epochs`` one-update epochs with ``change(st)`` called after the first; the epochs' rates."""
    X, Y = _data()

    def cb(epoch, logs):
        if epoch == 0:
            change(st)
    return st.fit(X, Y, epochs=epochs, shuffle=False, callbacks=[cb]).history["lr"]


def _rate_of_next_call(st):
    """The rate a direct call applies (plain SGD without momentum: the bias moves by lr * grad)."""
    X, Y = _data()
    w = st.params["2.b"].copy()
    st.loss_and_grads(X, Y)
    g = st.grads["2.b"].copy()
    st(X, Y)
    return float(((w - st.params["2.b"]) / g)[0])


@pytest.mark.parametrize("schedule", [None, "step", "exponential_step", "plateau"])
def test_a_rate_set_during_a_fit_is_the_base_rate_from_the_next_epoch(schedule):
    """Under a schedule a callback's ``step.lr = 0.01`` was ignored for the rest of the fit (the fit
    kept the base rate it started with) and ``step.lr`` afterwards was not the next update's."""
    sched = {None: None, "step": S.StepLR(10, 0.5), "exponential_step": S.ExponentialLR(0.5, interval="step"),
             "plateau": S.ReduceLROnPlateau()}[schedule]
    st = _step(schedule=sched)
    lrs = _fit_changing(st, lambda s: setattr(s, "lr", 0.01), epochs=3)
    want = {"exponential_step": [0.1, 0.01 * 0.5, 0.01 * 0.25]}.get(schedule, [0.1, 0.01, 0.01])
    np.testing.assert_allclose(lrs, want, rtol=1e-15)
    assert st.optimizer.lr == 0.01
    reported = st.lr                    # the next update's rate
    assert reported == (want[-1] * 0.5 if schedule == "exponential_step" else 0.01)
    np.testing.assert_allclose(_rate_of_next_call(st), reported, rtol=1e-9)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_a_rate_set_between_updates_reports_the_schedules_rate_of_the_next_update(interval):
    """``step.lr = 0.2`` mid-schedule made ``step.lr`` report 0.2 while the next update ran at 0.2
    times the schedule's factor (the getter promises the next update's rate)."""
    X, Y = _data()
    if interval == "step":
        st = _step(schedule=S.CosineAnnealingLR(T_max=10, interval="step"))
        for _ in range(3):
            st(X, Y)
        factor = (1 + np.cos(np.pi * 3 / 10)) / 2
    else:
        st = _step(schedule=S.ExponentialLR(0.5))
        st.fit(X, Y, epochs=2, shuffle=False)
        factor = 0.25
    st.lr = 0.2
    assert st.optimizer.lr == 0.2                       # the base rate
    np.testing.assert_allclose(st.lr, 0.2 * factor, rtol=1e-15)
    np.testing.assert_allclose(_rate_of_next_call(st), 0.2 * factor, rtol=1e-9)
    for sched in (None, S.ReduceLROnPlateau()):          # no schedule scales the rate: as set
        st.schedule = sched
        st.lr = 0.3
        assert st.lr == 0.3


def test_a_schedule_attached_during_a_fit_counts_from_the_next_epoch():
    st = _step()
    lrs = _fit_changing(st, lambda s: setattr(s, "schedule", S.ExponentialLR(0.5)))
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.05, 0.025], rtol=1e-15)
    X, Y = _data()
    np.testing.assert_allclose(st.fit(X, Y, epochs=2, shuffle=False).history["lr"], [0.0125, 0.00625], rtol=1e-15)


def test_a_schedule_detached_during_a_fit_stops_driving_it():
    """The detached schedule went on setting the rates of the fit's later epochs."""
    st = _step(schedule=S.ExponentialLR(0.5))
    lrs = _fit_changing(st, lambda s: setattr(s, "schedule", None))
    np.testing.assert_allclose(lrs, [0.1, 0.05, 0.05, 0.05], rtol=1e-15)     # detached: the rate kept
    assert st.schedule is None and st.lr == 0.05


def test_a_schedule_replaced_during_a_fit_drives_the_rest_of_it():
    st = _step(schedule=S.StepLR(100))
    lrs = _fit_changing(st, lambda s: setattr(s, "schedule", S.ExponentialLR(0.5)))
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.05, 0.025], rtol=1e-15)


@pytest.mark.parametrize("how", ["zero_rate", "underflow"])
def test_a_plateau_at_rate_zero_is_saved_and_loaded(tmp_path, how):
    """A ReduceLROnPlateau at rate 0 (SGD(lr=0), or reductions that underflow with eps=0, as PyTorch's)
    was saved in a checkpoint that fastbp.load refused ("state.lr must be > 0.0")."""
    X, Y = _data()
    if how == "zero_rate":
        st = _step(fastbp.SGD(lr=0.0), S.ReduceLROnPlateau(patience=0))
        st.fit(X, Y, epochs=1, shuffle=False)
    else:
        st = _step(fastbp.SGD(lr=1e-300), S.ReduceLROnPlateau(patience=0, eps=0.0, factor=1e-10, threshold=1e9))
        st.fit(X, Y, epochs=33, shuffle=False)
    assert st.schedule.spec()["state"]["lr"] == 0.0
    st.save(tmp_path / "m.npz")
    back = fastbp.load(tmp_path / "m.npz")
    assert back.lr == 0.0 and back.schedule.spec() == st.schedule.spec()
    with pytest.raises(ValueError, match="state.lr must be >= 0"):
        S.schedule_from_spec(dict(st.schedule.spec(), state=dict(st.schedule.spec()["state"], lr=-1.0)))


@pytest.mark.parametrize("kw, what", [(dict(total_steps=10**309), "total_steps"),
                                      (dict(epochs=10**200, steps_per_epoch=10**200), "epochs \\* steps_per_epoch")])
def test_onecycle_with_more_steps_than_a_float_counts_is_a_value_error(kw, what):
    """It was accepted, then fastbp.compile failed with a bare OverflowError (int too large to convert to float)."""
    with pytest.raises(ValueError, match=f"OneCycleLR: {what} must be <= 2\\*\\*53"):
        S.OneCycleLR(0.1, **kw)
    assert S.OneCycleLR(0.1, total_steps=2**53).total_steps == 2**53


def test_a_detached_schedules_step_keeps_its_base_rate_through_a_checkpoint(tmp_path):
    """A step whose schedule was detached runs at the schedule's last rate and keeps its base rate;
    fastbp.load made that last rate the base, so a schedule attached again after loading scaled
    another rate than the uninterrupted step's."""
    X, Y = _data()
    a, b = _step(schedule=S.ExponentialLR(0.5)), _step(schedule=S.ExponentialLR(0.5))
    for st in (a, b):
        st.fit(X, Y, epochs=2, shuffle=False)
        st.schedule = None
    b.save(tmp_path / "m.npz")
    c = fastbp.load(tmp_path / "m.npz")
    assert (c.lr, c.optimizer.lr) == (a.lr, a.optimizer.lr) == (0.025, 0.1)
    for st in (a, c):
        st.schedule = S.ExponentialLR(0.5)
        st.fit(X, Y, epochs=2, shuffle=False)
    assert c.lr == a.lr
    np.testing.assert_array_equal(c.param_vector, a.param_vector)
