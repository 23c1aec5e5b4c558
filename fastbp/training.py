"""What ``fit`` does around the compiled step, the same for every step kind.

- :class:`History`: what ``fit`` returns -- the float64 loss of every update
  (the array ``fit`` always returned) carrying the per-epoch metrics
  (``history.history``: ``loss``, ``val_loss``, ``val_accuracy``, ``lr``,
  like Keras's ``History.history``);
- :class:`EarlyStopping`: stop when a monitored metric stops improving and
  restore the best weights (Keras's ``EarlyStopping`` rule);
- callbacks: any object with ``on_epoch_end(epoch, logs) -> bool | None``
  (or a plain function of ``(epoch, logs)``); a true result stops the fit
  after that epoch.  ``logs`` is a dict of the epoch's metrics;
- :func:`drive`: the epoch loop of a fit (learning-rate schedule, metrics, early stopping,
  callbacks, progress) around a step kind's "train one epoch" function;
- the metrics of a loss computed from the network's outputs
  (:func:`eval_loss`, :func:`accuracy`, :func:`probabilities`) and :func:`r2_score`.

Nothing here runs a step: this module imports neither the executor nor numba-cuda.
"""
from __future__ import annotations

import contextlib as _contextlib
import math as _math
import numbers as _numbers
import sys as _sys
import time as _time

import numpy as _np

from . import _scalars
from . import _validate as _V
from ._metrics import accuracy, eval_loss, probabilities, r2_score
from .schedules import ReduceLROnPlateau as _ReduceLROnPlateau

__all__ = ["History", "EarlyStopping", "Callback", "drive", "eval_loss", "accuracy", "probabilities",
           "r2_score"]


def __dir__():     # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)


# ------------------------------------------------------------------ History
class History(_np.ndarray):
    """What ``fit`` returns: the loss of every update, with the per-epoch metrics.

    As an array (float64, shape ``(steps,)``): the mean loss of every
    minibatch, in order, as ``fit`` has always returned it.

    Parameters
    ----------
    step_losses : array-like of float, shape (steps,)

    Attributes
    ----------
    history : dict of str -> list of float
        Per epoch, like Keras's ``History.history``: ``"loss"`` (the mean
        training loss over the epoch's rows, weights changing along the
        epoch), ``"lr"`` (the learning rate of the epoch's first update),
        and with ``validation_data`` ``"val_loss"`` plus, for the
        classification losses, ``"val_accuracy"``.
    epoch : list of int
        The epochs run (0-based, this fit's own count).
    stopped_epoch : int or None
        The epoch after which early stopping or a callback stopped the fit.
    best_epoch : int or None
        The best epoch of the early stopping's monitor (its weights were
        restored when the fit stopped early and ``restore_best_weights``).
    """

    def __new__(cls, step_losses):
        obj = _np.asarray(step_losses, dtype=_np.float64).view(cls)
        obj.history = {}
        obj.epoch = []
        obj.stopped_epoch = None
        obj.best_epoch = None
        return obj

    def __array_finalize__(self, obj):
        if obj is None:
            return
        self.history = getattr(obj, "history", {})
        self.epoch = getattr(obj, "epoch", [])
        self.stopped_epoch = getattr(obj, "stopped_epoch", None)
        self.best_epoch = getattr(obj, "best_epoch", None)

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        # arithmetic and reductions give plain arrays / scalars, not Histories
        out = _np.asarray(arr).view(_np.ndarray)
        return out[()] if return_scalar else out

    def __reduce__(self):
        return (_rebuild_history, (_np.asarray(self).view(_np.ndarray).copy(), self.history, self.epoch,
                                   self.stopped_epoch, self.best_epoch))

    @property
    def step_losses(self):
        """The loss of every update as a plain ndarray."""
        return self.view(_np.ndarray)

    @property
    def loss(self):
        """Per-epoch training loss (list)."""
        return self.history.get("loss", [])

    @property
    def val_loss(self):
        """Per-epoch validation loss (list; empty without validation data)."""
        return self.history.get("val_loss", [])

    @property
    def val_accuracy(self):
        """Per-epoch validation accuracy (list; empty without validation data or for regression)."""
        return self.history.get("val_accuracy", [])


def _rebuild_history(a, history, epoch, stopped, best):
    h = History(a)
    h.history, h.epoch, h.stopped_epoch, h.best_epoch = history, epoch, stopped, best
    return h


# ------------------------------------------------------------ callbacks
class Callback:
    """The callback protocol of ``fit``: :meth:`on_epoch_end` (subclassing it is optional)."""

    def on_epoch_end(self, epoch, logs):
        """Called by ``fit`` after every epoch.

        Parameters
        ----------
        epoch : int
            The epoch's index in this fit (0-based).
        logs : dict of str to float
            Its metrics (``loss``, ``lr``, ``val_loss``, ``val_accuracy`` where computed).

        Returns
        -------
        bool or None
            True stops the fit after this epoch.
        """
        return None


class EarlyStopping:
    """Stop ``fit`` when a metric has stopped improving (Keras's rule).

    After each epoch, the monitored value improves when it beats the best
    so far by more than ``min_delta``; the fit stops once ``patience``
    epochs in a row have not improved (``patience=0``: the first epoch that
    does not improve), and the weights of the best epoch are restored then.

    Parameters
    ----------
    patience : int, default 0
    min_delta : float, default 0.0
    restore_best_weights : bool, default True
        Restore the weights and BatchNorm1d's running statistics (not the
        optimizer state) of the best epoch when stopping early, so the model
        scores the best epoch's value again (Keras's default is False).
    monitor : {"val_loss", "val_accuracy", "loss"}, default "val_loss"
        "val_*" need ``validation_data`` (ValueError otherwise).
    mode : {"auto", "min", "max"}, default "auto"
        "auto": max for accuracies, min otherwise.
    """

    _MONITORS = ("val_loss", "val_accuracy", "loss")

    def __init__(self, patience=0, min_delta=0.0, restore_best_weights=True, monitor="val_loss", mode="auto"):
        self.patience = _nonneg("patience", patience)
        self.min_delta = _scalars.real("min_delta", min_delta, "EarlyStopping", low=0.0)
        self.restore_best_weights = _V.boolean("restore_best_weights", restore_best_weights)
        if not isinstance(monitor, str):
            raise TypeError(f"EarlyStopping: monitor must be a str, got {type(monitor).__name__}")
        if monitor not in self._MONITORS:
            raise ValueError(f"EarlyStopping: monitor must be one of {', '.join(self._MONITORS)}, got {monitor!r}")
        self.monitor = monitor
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.mode = mode
        self._begin()

    def _maximise(self):
        return self.mode == "max" or (self.mode == "auto" and "accuracy" in self.monitor)

    def _begin(self):
        self.wait = 0
        self.best = -_math.inf if self._maximise() else _math.inf
        self.best_epoch = None
        self.best_weights = None
        self.stopped_epoch = None

    def _improves(self, v):
        return v - self.min_delta > self.best if self._maximise() else v + self.min_delta < self.best

    def _update(self, epoch, logs, get_weights):
        """Record the epoch; True when the fit must stop."""
        v = logs[self.monitor]
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = get_weights(), epoch
        self.wait += 1
        if self._improves(v):
            self.best, self.best_epoch, self.wait = v, epoch, 0
            if self.restore_best_weights:
                self.best_weights = get_weights()
            return False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return True
        return False

    def __repr__(self):
        return (f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, "
                f"restore_best_weights={self.restore_best_weights}, monitor={self.monitor!r}, mode={self.mode!r})")


def _nonneg(name, v):
    if isinstance(v, bool) or not isinstance(v, _numbers.Integral):
        raise TypeError(f"EarlyStopping: {name} must be an int, got {type(v).__name__}")
    if v < 0:
        raise ValueError(f"EarlyStopping: {name} must be >= 0, got {v}")
    return int(v)


def early_stopping_arg(es, has_validation):
    """Check ``early_stopping=`` (None, an :class:`EarlyStopping`, or an int patience)."""
    if es is None:
        return None
    if isinstance(es, _numbers.Integral) and not isinstance(es, bool):
        es = EarlyStopping(patience=int(es), monitor="val_loss" if has_validation else "loss")
    if not isinstance(es, EarlyStopping):
        raise TypeError(f"early_stopping must be a fastbp.training.EarlyStopping, an int patience or None, "
                        f"got {type(es).__name__}")
    if es.monitor.startswith("val_") and not has_validation:
        raise ValueError(f"early_stopping monitors {es.monitor!r}, which needs validation_data=(X_val, y_val)")
    return es


def check_accuracy_monitors(loss, *watchers):
    """A ValueError when an EarlyStopping or a ReduceLROnPlateau watches ``val_accuracy`` of a
    loss without an accuracy (mse)."""
    if loss not in ("mse", "poisson"):
        return
    for w in watchers:
        if w is not None and getattr(w, "monitor", None) == "val_accuracy":
            raise ValueError(f"{type(w).__name__} monitors 'val_accuracy', but loss {loss!r} has no accuracy; "
                             f"monitor 'val_loss' or 'loss'")


def callbacks_arg(callbacks):
    """Check ``callbacks=``: a sequence of objects with ``on_epoch_end`` or callables; returns the
    list of functions ``f(epoch, logs)``."""
    if callbacks is None:
        return []
    if hasattr(callbacks, "on_epoch_end") or callable(callbacks):
        callbacks = [callbacks]
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a sequence of callbacks, got {type(callbacks).__name__}")
    out = []
    for i, cb in enumerate(callbacks):
        f = getattr(cb, "on_epoch_end", None)
        if f is None and callable(cb):
            f = cb
        if not callable(f):
            raise TypeError(f"callbacks[{i}] must have an on_epoch_end(epoch, logs) method or be callable, "
                            f"got {type(cb).__name__}")
        out.append(f)
    return out


# ---------------------------------------------------------------- progress
class Progress:
    """A tqdm bar on a terminal (stderr), else one plain line per epoch (stdout); or nothing."""

    def __init__(self, total, enabled, desc="fit"):
        self.bar = None
        self.enabled = enabled
        self.total = total
        if not enabled:
            return
        try:
            tty = _sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="epoch", file=_sys.stderr, mininterval=0,
                                dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, epoch, logs):
        if not self.enabled:
            return
        text = {k: f"{v:.4g}" for k, v in logs.items()}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
            self.bar.update(1)
        else:
            print(f"epoch {epoch + 1}/{self.total} " + " ".join(f"{k}={v}" for k, v in text.items()), flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# -------------------------------------------------------------- the driver
def epoch_lrs(schedule, base_lr, current_lr, epoch, first_step, n_steps):
    """The learning rate of each update of an epoch (float64 ``(n_steps,)``), or an empty array
    without a schedule (the step keeps its rate)."""
    if schedule is None:
        return _np.zeros(0, dtype=_np.float64)
    if isinstance(schedule, _ReduceLROnPlateau):
        return _np.full(n_steps, current_lr if schedule.lr is not None else base_lr, dtype=_np.float64)
    if schedule.interval == "epoch":
        return _np.full(n_steps, schedule.lr_at(epoch, base_lr), dtype=_np.float64)
    return _np.array([schedule.lr_at(first_step + s, base_lr) for s in range(n_steps)], dtype=_np.float64)


@_contextlib.contextmanager
def scheduled_call(step):
    """Around a training call outside ``fit`` under a schedule: :func:`rate_of_a_call`
    before it, and after it when it succeeded (the next update's rate)."""
    rate_of_a_call(step)
    yield
    rate_of_a_call(step, after=True)


def rate_of_a_call(step, after=False):
    """The rate of a training call outside ``fit`` (``step(x, y)``) under the step's
    schedule: with ``interval="step"``, the schedule's rate of this update, its ``t`` being
    the updates since the schedule was attached (as ``fit`` counts them), so that a loop of
    calls follows the schedule as ``fit`` does and a later ``fit`` goes on from it.  An
    epoch-interval schedule's rate changes at ``fit``'s epoch ends only (a call between them
    runs at the current epoch's rate), a ReduceLROnPlateau's at its metric: nothing to do.
    Called before the update (ValueError past a OneCycleLR's ``total_steps``: nothing is
    changed, as PyTorch's scheduler raises past its end) and, with ``after``, after it: the
    next update's rate is then what ``step.lr`` reports, as after ``fit`` (at a OneCycleLR's
    end the rate is kept)."""
    s = step.schedule
    if s is None or isinstance(s, _ReduceLROnPlateau) or s.interval != "step":
        return
    try:
        step._set_scheduled_lr(next_rate(step, s, float(step.optimizer.lr)))
    except ValueError:
        if not after:
            raise


def next_rate(step, schedule, base_lr):
    """The rate of ``step``'s next update under ``schedule`` (not a ReduceLROnPlateau) from the
    base rate ``base_lr``: the schedule's at its count, the updates (``interval="step"``) or the
    epochs since it was attached.  ValueError past a OneCycleLR's end."""
    e0, s0 = step._sched_origin
    return schedule.lr_at(step.epochs_done - e0 if schedule.interval == "epoch" else step.n_steps - s0, base_lr)


def rate_for_base(step, base_lr):
    """The rate of ``step``'s next update once its base rate is ``base_lr`` (``step.lr = v``):
    its schedule's there (:func:`next_rate`); ``base_lr`` itself without a schedule, with a
    ReduceLROnPlateau (it goes on from the step's rate) or past a OneCycleLR's end (the next
    training call raises)."""
    s = step.schedule
    if s is None or isinstance(s, _ReduceLROnPlateau):
        return base_lr
    try:
        return float(next_rate(step, s, base_lr))
    except ValueError:
        return base_lr


def check_schedule_span(schedule, base_lr, epoch0, step0, epochs, per_epoch, has_validation=True):
    """Evaluate the schedule over every update of a fit up front (a OneCycleLR past its
    ``total_steps`` is a ValueError before anything is trained; a ReduceLROnPlateau
    monitoring a validation metric needs validation data)."""
    if schedule is None:
        return
    if isinstance(schedule, _ReduceLROnPlateau):
        if schedule.monitor is not None and schedule.monitor.startswith("val_") and not has_validation:
            raise ValueError(f"the ReduceLROnPlateau schedule monitors {schedule.monitor!r}, which needs "
                             f"validation_data=(X_val, y_val)")
        return
    last = epoch0 + epochs - 1 if schedule.interval == "epoch" else step0 + epochs * per_epoch - 1
    lr = schedule.lr_at(last, base_lr)
    # the rate at the end of the fit: the largest a rising schedule (gamma > 1) reaches
    if not _math.isfinite(lr):
        raise ValueError(f"schedule: the rate of {schedule.spec()} at {schedule.interval} {last} of this fit "
                         f"is {lr!r} (base rate {base_lr!r}): not a finite learning rate")


def drive(*, epochs, per_epoch, rows_per_step, orders, train_epoch, step, validate,
          early_stopping, callbacks, verbose, get_weights, set_weights, agree=None, loss_name):
    """The epoch loop of a fit.

    Parameters
    ----------
    epochs, per_epoch : int
        Epochs, and updates per epoch.
    rows_per_step : ndarray of int64, shape (per_epoch,)
        Rows of each minibatch (the epoch's loss is their weighted mean).
    orders : iterable of ndarray
        Each epoch's row order (drawn when the epoch starts, under ``step.lock``).
    train_epoch : callable ``(e, perm, lrs, out) -> None``
        Trains one epoch, writing each update's loss into ``out``; raises on failure.
    step : StepBase
        Its ``schedule``, base rate (``optimizer.lr``), ``n_steps``, ``epochs_done``, ``_sched_origin``
        and ``lr`` are read and ``epochs_done`` advanced, each epoch's under ``step.lock`` with its
        shuffle, training, validation and ReduceLROnPlateau step (another thread's save sees a whole
        epoch or none of it): a schedule or rate set during the fit (a callback, a thread) counts from
        the next epoch.
    validate : callable ``() -> (val_loss, val_accuracy or None)`` or None
    early_stopping : EarlyStopping or None
    callbacks : list of callables ``(epoch, logs)``
    verbose : bool
    get_weights, set_weights : callables
        A copy of the weights, and setting them back (early stopping).
    agree : callable ``(bool, BaseException or None) -> bool``, optional
        Turns this process's "stop" into the decision of every process
        (data-parallel fits); given the exception a callback raised here
        (then not raised by ``drive``), it raises on every process.
    loss_name : str

    Returns
    -------
    History
    """
    losses = _np.zeros(epochs * per_epoch, dtype=_np.float64)
    hist = History(losses)
    w = rows_per_step.astype(_np.float64)
    if early_stopping is not None:
        early_stopping._begin()
    bar = Progress(epochs, verbose)
    try:
        orders = iter(orders)
        for e in range(epochs):
            out = losses[e * per_epoch:(e + 1) * per_epoch]
            # the shuffle, the rates, the epoch, its count and the next rate as one (another thread's
            # save sees the state before the epoch's permutation is drawn, or after its update)
            with step.lock:
                perm = next(orders)
                schedule, base_lr = step.schedule, float(step.optimizer.lr)     # as set now
                e0, s0 = step._sched_origin
                lrs = epoch_lrs(schedule, base_lr, step.lr, step.epochs_done - e0, step.n_steps - s0, per_epoch)
                first_lr = float(lrs[0]) if len(lrs) else step.lr
                train_epoch(e, perm, lrs, out)
                step.epochs_done += 1
                if schedule is not None and not isinstance(schedule, _ReduceLROnPlateau):
                    try:        # the rate of the next update (what step.lr reports after the fit)
                        step._set_scheduled_lr(next_rate(step, schedule, base_lr))
                    except ValueError:
                        pass    # a OneCycleLR at its end: the step keeps the last rate
                logs = {"loss": float(_np.dot(out, w) / w.sum()), "lr": first_lr}
                if validate is not None:
                    vl, va = validate()
                    logs["val_loss"] = vl
                    if va is not None:
                        logs["val_accuracy"] = va
                if isinstance(schedule, _ReduceLROnPlateau) and step.schedule is schedule:
                    key = schedule.monitor or ("val_loss" if "val_loss" in logs else "loss")
                    step._set_scheduled_lr(schedule.step(logs[key], first_lr))
            _time.sleep(0)      # a thread waiting for the lock (a save) gets it between epochs
            for k, v in logs.items():
                hist.history.setdefault(k, []).append(v)
            hist.epoch.append(e)
            bar.update(e, logs)
            stop = False
            if early_stopping is not None and early_stopping._update(e, logs, get_weights):
                stop = True
            failed = None
            for cb in callbacks:
                try:
                    if cb(e, dict(logs)):
                        stop = True
                except Exception as exc:  # noqa: BLE001 - raised by agree on every process
                    if agree is None:
                        raise
                    failed = exc
                    break
            if agree is not None:
                stop = agree(stop, failed)
            if stop:
                hist.stopped_epoch = e
                if early_stopping is not None and early_stopping.restore_best_weights and \
                        early_stopping.best_weights is not None:
                    set_weights(early_stopping.best_weights)
                break
    finally:
        bar.close()
    if early_stopping is not None:
        hist.best_epoch = early_stopping.best_epoch
        early_stopping.best_weights = None          # not kept alive by the object
    if hist.stopped_epoch is not None:
        hist = _rebuild_history(losses[:(hist.stopped_epoch + 1) * per_epoch].copy(), hist.history, hist.epoch,
                                hist.stopped_epoch, hist.best_epoch)
    return hist
