"""fit as practitioners run it: learning-rate schedules inside the compiled loop, History,
validation, early stopping, callbacks, verbose, predict_proba, pickling (issue 15)."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

import fastbp
import fastbp.step as step_mod
from fastbp import schedules as S
from fastbp.training import EarlyStopping, History

L = fastbp.Linear


def _data(n=40, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float64)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y % k


def _step(loss="softmax_cross_entropy", opt=None, bs=8, schedule=None, out=3, seed=1):
    model = fastbp.Sequential(L(3, 5), fastbp.Tanh(), L(5, out))
    return fastbp.compile(model, loss=loss, optimizer=opt or fastbp.SGD(lr=0.1, momentum=0.9), batch_size=bs,
                          dtype=np.float64, seed=seed, schedule=schedule)


def _manual(step, X, y, epochs, lr_of, seed=3):
    """The reference: the step's own call on each minibatch, the rate set by hand before it."""
    rng = np.random.default_rng(seed)
    n, bs = len(X), step.batch_size
    losses = []
    for e in range(epochs):
        perm = rng.permutation(n)
        for s, lo in enumerate(range(0, n, bs)):
            step.lr = lr_of(e, step.n_steps)
            rows = perm[lo:lo + bs]
            losses.append(step(X[rows], y[rows]))
    return np.array(losses)


@pytest.mark.parametrize("native", [True, False], ids=["run_fit", "python_loop"])
@pytest.mark.parametrize("sched", [S.StepLR(2, gamma=0.5), S.CosineAnnealingLR(4, eta_min=0.01, warmup=1),
                                   S.OneCycleLR(0.5, total_steps=25), S.ExponentialLR(0.7, interval="step")],
                         ids=["step", "cosine_warmup", "onecycle", "exp_per_step"])
def test_scheduled_fit_equals_setting_the_rate_by_hand(native, sched, monkeypatch):
    monkeypatch.setattr(step_mod, "FIT_NATIVE_MIN_STEPS", 1 if native else 10**9)
    X, y = _data()
    a, b = _step(), _step()
    hist = a.fit(X, y, epochs=5, seed=3, schedule=sched)
    ref = _manual(b, X, y, 5, lambda e, t: sched.lr_at(e if sched.interval == "epoch" else t, 0.1))
    assert np.asarray(hist).tobytes() == ref.tobytes()
    assert a.param_vector.tobytes() == b.param_vector.tobytes()
    assert a.state_vectors[0].tobytes() == b.state_vectors[0].tobytes()
    assert hist.history["lr"] == [sched.lr_at(e if sched.interval == "epoch" else 5 * e, 0.1) for e in range(5)]
    # afterwards step.lr is the rate of the next update; the base rate is unchanged
    t = 5 if sched.interval == "epoch" else 25
    assert a.lr == sched.lr_at(t, 0.1) and a.optimizer.lr == 0.1 and a.schedule is sched


def test_compile_schedule_continues_across_fits_and_epochs_counted():
    X, y = _data()
    sched = S.StepLR(1, gamma=0.5)
    a = _step(schedule=sched)
    assert a.lr == 0.1 and a.epochs_done == 0
    a.fit(X, y, epochs=2, seed=3)
    h = a.fit(X, y, epochs=2, seed=4)
    assert a.epochs_done == 4 and h.history["lr"] == [0.025, 0.0125]
    # the step's own schedule object given again continues (a loop of one-epoch fits)
    h = a.fit(X, y, epochs=1, schedule=sched)
    assert h.history["lr"] == [0.00625] and a.epochs_done == 5
    # another schedule given to fit starts its count there (an equal one too: a new object)
    h = a.fit(X, y, epochs=1, schedule=S.ExponentialLR(0.5))
    assert h.history["lr"] == [0.1] and a.lr == 0.05
    h = a.fit(X, y, epochs=1, schedule=S.ExponentialLR(0.5))
    assert h.history["lr"] == [0.1]


def test_onecycle_past_its_end_is_refused_before_training():
    X, y = _data()
    a = _step()
    before = a.param_vector.copy()
    state = a.rng.bit_generator.state
    with pytest.raises(ValueError, match="total_steps"):
        a.fit(X, y, epochs=3, schedule=S.OneCycleLR(0.5, total_steps=10))       # 15 updates
    assert np.array_equal(a.param_vector, before) and a.schedule is None and a.n_steps == 0
    assert a.rng.bit_generator.state == state


def test_schedule_argument_checked():
    X, y = _data()
    with pytest.raises(TypeError, match="schedule must be"):
        _step().fit(X, y, schedule="cosine")
    with pytest.raises(TypeError, match="schedule must be"):
        _step(schedule=0.5)


def test_checkpoint_keeps_the_schedule(tmp_path):
    X, y = _data()
    sched = S.CosineAnnealingLR(4, warmup=1)
    a, b = _step(schedule=sched), _step(schedule=sched)
    a.fit(X, y, epochs=4, seed=3)
    b.fit(X, y, epochs=2, seed=3)
    b.save(tmp_path / "c.npz")
    c = fastbp.load(tmp_path / "c.npz")
    assert c.schedule == sched and c.epochs_done == 2 and c.optimizer.lr == 0.1 and c.lr == b.lr
    # continue with the two shuffles a's fit drew for its epochs 3 and 4
    rng = np.random.default_rng(3)
    rng.permutation(len(X)), rng.permutation(len(X))
    _continue_with(c, X, y, rng)
    assert c.param_vector.tobytes() == a.param_vector.tobytes()


def _continue_with(step, X, y, rng):
    for _ in range(2):
        perm = rng.permutation(len(X))
        base = step.optimizer.lr
        lr = step.schedule.lr_at(step.epochs_done, base)
        for lo in range(0, len(X), step.batch_size):
            step._set_scheduled_lr(lr)
            step(X[perm[lo:lo + step.batch_size]], y[perm[lo:lo + step.batch_size]])
        step.epochs_done += 1


def test_schedule_reaching_zero_saves_and_loads(tmp_path):
    X, y = _data()
    a = _step(schedule=S.CosineAnnealingLR(2))
    a.fit(X, y, epochs=2)
    assert a.lr == 0.0
    a.save(tmp_path / "z.npz")
    assert fastbp.load(tmp_path / "z.npz").lr == 0.0


def test_plateau_follows_pytorch_rule_on_the_validation_loss():
    X, y = _data()
    plateau = S.ReduceLROnPlateau(patience=0, factor=0.5, threshold=0.5)   # almost nothing improves by 50%
    a = _step()
    h = a.fit(X, y, epochs=4, validation_data=(X, y), schedule=plateau)
    ref = S.ReduceLROnPlateau(patience=0, factor=0.5, threshold=0.5)
    lr, want = 0.1, []
    for v in h.history["val_loss"]:
        want.append(lr)
        lr = ref.step(v, lr)
    assert h.history["lr"] == want and a.lr == lr and want[-1] < 0.1


def test_history_is_the_loss_array_with_per_epoch_metrics():
    X, y = _data(n=37)
    a, b = _step(), _step()
    h = a.fit(X, y, epochs=3, seed=2, validation_data=(X[:10], y[:10]))
    ref = b.fit(X, y, epochs=3, seed=2)
    assert isinstance(h, History) and isinstance(h, np.ndarray) and h.shape == (15,)
    assert np.asarray(h).tobytes() == np.asarray(ref).tobytes()
    assert set(h.history) == {"loss", "lr", "val_loss", "val_accuracy"} and h.epoch == [0, 1, 2]
    rows = np.array([8, 8, 8, 8, 5], dtype=np.float64)
    assert h.loss[1] == pytest.approx(np.dot(np.asarray(h)[5:10], rows) / 37)
    scores = a.predict(X[:10])
    z = scores - scores.max(1, keepdims=True)
    ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(10), y[:10]])
    assert h.val_loss[-1] == pytest.approx(ce, rel=1e-12)
    assert h.val_accuracy[-1] == np.mean(scores.argmax(1) == y[:10])
    # arithmetic gives plain arrays; pickling keeps the metrics
    assert type(h * 2) is np.ndarray and isinstance(float(np.mean(h)), float)
    h2 = pickle.loads(pickle.dumps(h))
    assert h2.history == h.history and np.array_equal(h2, h)


@pytest.mark.parametrize("loss,out", [("mse", 3), ("bce_with_logits", 3), ("svm", 3)])
def test_validation_loss_of_each_loss_matches_the_step(loss, out):
    X, y = _data()
    Y = np.eye(3)[y] if loss != "svm" else y
    a = _step(loss=loss, opt=fastbp.SGD(lr=0.0 + 1e-300))      # the weights do not move
    h = a.fit(X, Y, epochs=1, validation_data=(X[:8], Y[:8]))
    assert h.val_loss[0] == pytest.approx(a.loss_and_grads(X[:8], Y[:8]), rel=1e-10)
    assert ("val_accuracy" in h.history) == (loss != "mse")


def test_validation_data_checked_before_anything_changes():
    X, y = _data()
    a = _step()
    before = a.param_vector.copy()
    for bad, exc, match in [((X,), ValueError, "validation_data must be a tuple"),
                            (X, TypeError, "validation_data must be a tuple"),
                            ((X[:, :2], y), ValueError, r"validation_data\[0\]"),
                            ((X, y[:-1]), ValueError, r"validation_data\[1\]"),
                            ((X, y + 5), ValueError, r"validation_data\[1\]")]:
        with pytest.raises(exc, match=match):
            a.fit(X, y, validation_data=bad)
    assert np.array_equal(a.param_vector, before) and a.n_steps == 0 and a.epochs_done == 0


def test_early_stopping_stops_and_restores_the_best_weights():
    X, y = _data()
    a = _step(opt=fastbp.SGD(lr=0.1))
    snaps = []

    class Snap:
        def on_epoch_end(self, epoch, logs):
            snaps.append((a.param_vector.copy(), logs["val_loss"]))

    # the validation set is scored against labels the model is not trained on: it gets worse
    yv = (y + 1) % 3
    es = EarlyStopping(patience=2)
    h = a.fit(X, y, epochs=30, validation_data=(X, yv), early_stopping=es, callbacks=[Snap()])
    assert h.stopped_epoch is not None and h.stopped_epoch < 29
    assert len(h) == (h.stopped_epoch + 1) * 5 and len(h.loss) == h.stopped_epoch + 1
    best = int(np.argmin([v for _, v in snaps]))
    assert h.best_epoch == best and h.stopped_epoch == best + 2
    assert np.array_equal(a.param_vector, snaps[best][0])


def test_early_stopping_restores_batchnorm_running_statistics_too():
    """restore_best_weights restores what predict depends on (Keras restores BatchNorm's moving
    statistics, a torch state_dict has the buffers): the restored model scores the best val_loss."""
    r = np.random.default_rng(0)
    X = r.standard_normal((200, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    Xv = r.standard_normal((100, 6)).astype(np.float32)
    yv = (Xv[:, 0] > 0).astype(np.int64)
    st = fastbp.compile(fastbp.Sequential(L(6, 16), fastbp.BatchNorm1d(16), fastbp.ReLU(), L(16, 2)),
                        optimizer=fastbp.SGD(lr=2.0, momentum=0.9), batch_size=20, seed=0)
    snaps = []
    h = st.fit(X, y, epochs=30, validation_data=(Xv, yv), early_stopping=EarlyStopping(patience=2),
               callbacks=[lambda e, logs: snaps.append(st.buffer_vector.copy())])
    assert h.stopped_epoch is not None and h.best_epoch < h.stopped_epoch
    np.testing.assert_array_equal(st.buffer_vector, snaps[h.best_epoch])
    val = fastbp.training.eval_loss("softmax_cross_entropy", st.predict(Xv), yv)
    assert val == min(h.history["val_loss"])


def test_early_stopping_without_restore_and_on_training_loss():
    X, y = _data()
    a = _step(opt=fastbp.SGD(lr=1e-12))
    h = a.fit(X, y, epochs=10, early_stopping=EarlyStopping(patience=1, min_delta=1.0, monitor="loss",
                                                             restore_best_weights=False))
    assert h.stopped_epoch == 1 and h.best_epoch == 0
    b = _step(opt=fastbp.SGD(lr=1e-300))                   # the weights do not move: no epoch improves
    h = b.fit(X, y, epochs=10, shuffle=False, early_stopping=1)   # an int: the patience, on "loss"
    assert h.stopped_epoch == 1


def test_early_stopping_arguments():
    X, y = _data()
    with pytest.raises(ValueError, match="validation_data"):
        _step().fit(X, y, early_stopping=EarlyStopping())
    with pytest.raises(TypeError, match="early_stopping must be"):
        _step().fit(X, y, early_stopping="yes")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping(monitor="acc")
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=math.inf)


def test_callbacks_see_the_logs_and_may_stop():
    X, y = _data()
    seen = []

    def cb(epoch, logs):
        seen.append((epoch, dict(logs)))
        return epoch == 2

    h = _step().fit(X, y, epochs=10, callbacks=[cb], validation_data=(X, y))
    assert [e for e, _ in seen] == [0, 1, 2] and h.stopped_epoch == 2 and len(h) == 15
    assert set(seen[0][1]) == {"loss", "lr", "val_loss", "val_accuracy"}
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        _step().fit(X, y, callbacks=[3])
    with pytest.raises(TypeError, match="callbacks must be"):
        _step().fit(X, y, callbacks="print")


def test_a_callback_can_save_the_step(tmp_path):
    """The step is not locked between epochs: callbacks may use it (save, predict)."""
    X, y = _data()
    a = _step()
    a.fit(X, y, epochs=2, callbacks=[lambda e, logs: a.save(tmp_path / f"e{e}.npz")])
    assert fastbp.load(tmp_path / "e1.npz").n_steps == 10


def test_verbose_prints_one_line_per_epoch_off_a_terminal(capsys):
    X, y = _data()
    _step().fit(X, y, epochs=3, verbose=True, validation_data=(X, y))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and out[0].startswith("epoch 1/3 loss=") and "val_loss=" in out[2]
    with pytest.raises(TypeError, match="verbose"):
        _step().fit(X, y, verbose="yes")


def test_predict_proba():
    X, y = _data()
    a = _step()
    a.fit(X, y, epochs=2)
    p = a.predict_proba(X)
    s = a.predict(X)
    e = np.exp(s - s.max(1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    b = _step(loss="bce_with_logits")
    b.fit(X, np.eye(3)[y], epochs=1)
    np.testing.assert_allclose(b.predict_proba(X), 1 / (1 + np.exp(-b.predict(X))), rtol=1e-12)
    for loss, Y in (("svm", y), ("mse", np.eye(3)[y])):
        with pytest.raises(ValueError, match=f"predict_proba.*{loss}"):
            _step(loss=loss).predict_proba(X)


def test_predict_proba_extreme_logits_are_finite():
    b = _step(loss="bce_with_logits", opt=fastbp.SGD(lr=0.1))
    b.params["2.W"][...] = 0
    b.params["2.b"][...] = [-800.0, 0.0, 800.0]
    p = b.predict_proba(np.zeros((2, 3)))
    assert np.all(np.isfinite(p)) and p[0, 0] == 0.0 and p[0, 1] == 0.5 and p[0, 2] == 1.0


def test_pickling_a_step_or_gradient_function_names_save_and_load():
    with pytest.raises(TypeError, match=r"step\.save.*fastbp\.load"):
        pickle.dumps(_step())
    g = fastbp.Graph()
    x = g.input("x", (2,))
    f = fastbp.grad(fastbp.sum(fastbp.tanh(x)), [x])
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(f)


def test_failed_fit_keeps_completed_epochs_in_the_counters():
    X, y = _data()
    a = _step(schedule=S.StepLR(1, 0.5))
    Xb = X.copy()
    Xb[-1, 0] = np.inf
    state = a.rng.bit_generator.state
    with pytest.raises(FloatingPointError):
        a.fit(Xb, y, epochs=2, shuffle=False)
    assert a.epochs_done == 0 and a.n_steps == 4 and a.rng.bit_generator.state == state


def test_plateau_can_monitor_accuracy_and_monitors_are_checked():
    X, y = _data()
    a = _step()
    h = a.fit(X, y, epochs=3, validation_data=(X, y),
              schedule=S.ReduceLROnPlateau(mode="max", monitor="val_accuracy", patience=0, threshold=10.0))
    ref = S.ReduceLROnPlateau(mode="max", patience=0, threshold=10.0)      # nothing improves 11-fold
    lr, want = 0.1, []
    for v in h.history["val_accuracy"]:
        want.append(lr)
        lr = ref.step(v, lr)
    assert h.history["lr"] == want == [0.1, 0.1, 0.1 * 0.1]
    with pytest.raises(ValueError, match="validation_data"):
        _step().fit(X, y, schedule=S.ReduceLROnPlateau(monitor="val_loss"))
    Y = np.eye(3)[y]
    for kw in (dict(early_stopping=EarlyStopping(monitor="val_accuracy")),
               dict(schedule=S.ReduceLROnPlateau(monitor="val_accuracy", mode="max"))):
        with pytest.raises(ValueError, match="accuracy"):
            _step(loss="mse").fit(X, Y, validation_data=(X, Y), **kw)
    with pytest.raises(ValueError, match="monitor"):
        S.ReduceLROnPlateau(monitor="acc")


def test_one_fit_signature_on_every_step_kind():
    import inspect

    from fastbp.cuda_step import CudaTrainStep
    from fastbp.distributed import DistributedStep
    sigs = {cls.__name__: inspect.signature(cls.fit) for cls in (fastbp.TrainStep, CudaTrainStep, DistributedStep)}
    assert len(set(map(str, sigs.values()))) == 1, sigs
    assert list(sigs["TrainStep"].parameters) == ["self", "X", "Y", "epochs", "shuffle", "seed", "validation_data",
                                                  "early_stopping", "callbacks", "verbose", "schedule"]
    for cls in (fastbp.TrainStep, CudaTrainStep, DistributedStep):
        assert callable(getattr(cls, "predict_proba"))
