"""Learning-rate schedules with PyTorch's formulas, names and defaults.

A closed-form schedule is a small immutable description: ``lr_at(t,
base_lr)`` is the learning rate of the ``t``-th update of its interval
(``t`` counts from 0), exactly the value ``torch.optim.lr_scheduler`` gives
the optimizer after ``t`` calls of ``scheduler.step()``.  ``interval`` says
what ``t`` counts:

- ``"epoch"`` (the default of :class:`StepLR`, :class:`MultiStepLR`,
  :class:`ExponentialLR`, :class:`CosineAnnealingLR`): completed epochs of
  ``fit`` (PyTorch users call ``scheduler.step()`` once per epoch);
- ``"step"`` (the default of :class:`OneCycleLR`): updates applied so far,
  ``step.n_steps`` (``scheduler.step()`` after every batch).

Because ``lr_at`` is a closed form, a step's native ``fit`` loop receives
the learning rate of every update of an epoch as one array and never
returns to Python between updates.

:class:`ReduceLROnPlateau` is the stateful exception: it is updated at the
end of each epoch with a metric (``fit``'s validation loss, or its training
loss without validation data) and holds the current learning rate.

Use one with ``fastbp.compile(..., schedule=...)`` or ``step.fit(...,
schedule=...)``::

    step = fastbp.compile(model, optimizer=fastbp.SGD(lr=0.1),
                          schedule=fastbp.schedules.CosineAnnealingLR(T_max=20, warmup=2))
    step.fit(X, y, epochs=20)
"""
from __future__ import annotations

import math as _math
import threading as _threading
import weakref as _weakref
import numbers as _numbers
from bisect import bisect_right as _bisect_right

from ._scalars import real as _float, real_or_nonfinite as _metric

__all__ = ["Schedule", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR",
           "ReduceLROnPlateau", "schedule_arg", "schedule_from_spec"]


def __dir__():
    # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)

_INTERVALS = ("epoch", "step")


def _int(name, value, owner, low=0):
    if isinstance(value, bool) or not isinstance(value, _numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low:
        raise ValueError(f"{owner}: {name} must be >= {low}, got {value}")
    return value


def _choice(name, value, choices, owner):
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be a str, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _power(gamma, k):
    """``gamma ** k``, an infinity where it overflows (as torch's rate would become: a fit
    refuses a non-finite rate up front, see :func:`fastbp.training.check_schedule_span`)."""
    try:
        return gamma ** k
    except OverflowError:
        return _math.inf


def _t(t):
    if isinstance(t, bool) or not isinstance(t, _numbers.Integral):
        raise TypeError(f"t must be an int, got {type(t).__name__}")
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t}")
    return int(t)


class Schedule:
    """Base of the closed-form schedules: immutable, compared by value, described by :meth:`spec`.

    Attributes
    ----------
    interval : {"epoch", "step"}
        What ``t`` of :meth:`lr_at` counts: completed epochs of ``fit``, or
        updates applied (``step.n_steps``).
    """

    _fields = ()
    stateful = False

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; make a new one")

    def _set(self, **kw):
        for k, v in kw.items():
            object.__setattr__(self, k, v)

    def lr_at(self, t, base_lr):
        """The learning rate of update ``t`` of the interval.

        Parameters
        ----------
        t : int
            Updates (``interval="step"``) or epochs (``"epoch"``) completed before it, ``>= 0``.
        base_lr : float
            The optimizer's own learning rate (unused by :class:`OneCycleLR`, which has its ``max_lr``).

        Returns
        -------
        float
            What ``torch.optim.lr_scheduler``'s scheduler sets after ``t`` calls of its ``step()``.
        """
        raise NotImplementedError

    def spec(self):
        """A JSON-serialisable description.

        Returns
        -------
        dict
            ``{"type": class name, ...}``: the constructor's arguments (:func:`schedule_from_spec`
            rebuilds the schedule).
        """
        return {"type": type(self).__name__, **{f: _jsonable(getattr(self, f)) for f in self._fields}}

    def __eq__(self, other):
        return type(other) is type(self) and other.spec() == self.spec()

    def __hash__(self):
        return hash(repr(self))

    def __repr__(self):
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"

    def __reduce__(self):
        return (schedule_from_spec, (self.spec(),))


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


class StepLR(Schedule):
    """Decay by ``gamma`` every ``step_size`` epochs: ``base_lr * gamma ** (t // step_size)``.

    As ``torch.optim.lr_scheduler.StepLR``.

    Parameters
    ----------
    step_size : int
        Period of the decay (> 0).
    gamma : float, default 0.1
    interval : {"epoch", "step"}, default "epoch"
    """

    _fields = ("step_size", "gamma", "interval")

    def __init__(self, step_size, gamma=0.1, interval="epoch"):
        self._set(step_size=_int("step_size", step_size, "StepLR", low=1),
                  gamma=_float("gamma", gamma, "StepLR", low=0.0),
                  interval=_choice("interval", interval, _INTERVALS, "StepLR"))

    def lr_at(self, t, base_lr):
        return base_lr * _power(self.gamma, _t(t) // self.step_size)


class MultiStepLR(Schedule):
    """Decay by ``gamma`` at each milestone: ``base_lr * gamma ** bisect_right(milestones, t)``.

    As ``torch.optim.lr_scheduler.MultiStepLR`` (a repeated milestone decays
    once per repetition).

    Parameters
    ----------
    milestones : sequence of int
        Epochs (or steps) at which the rate is multiplied by ``gamma``.
    gamma : float, default 0.1
    interval : {"epoch", "step"}, default "epoch"
    """

    _fields = ("milestones", "gamma", "interval")

    def __init__(self, milestones, gamma=0.1, interval="epoch"):
        try:
            ms = list(milestones)
        except TypeError:
            raise TypeError(f"MultiStepLR: milestones must be a sequence of ints, "
                            f"got {type(milestones).__name__}") from None
        ms = tuple(sorted(_int("milestones[i]", m, "MultiStepLR") for m in ms))
        self._set(milestones=ms, gamma=_float("gamma", gamma, "MultiStepLR", low=0.0),
                  interval=_choice("interval", interval, _INTERVALS, "MultiStepLR"))

    def lr_at(self, t, base_lr):
        return base_lr * _power(self.gamma, _bisect_right(self.milestones, _t(t)))


class ExponentialLR(Schedule):
    """Decay by ``gamma`` every epoch: ``base_lr * gamma ** t``.

    As ``torch.optim.lr_scheduler.ExponentialLR``.

    Parameters
    ----------
    gamma : float
    interval : {"epoch", "step"}, default "epoch"
    """

    _fields = ("gamma", "interval")

    def __init__(self, gamma, interval="epoch"):
        self._set(gamma=_float("gamma", gamma, "ExponentialLR", low=0.0),
                  interval=_choice("interval", interval, _INTERVALS, "ExponentialLR"))

    def lr_at(self, t, base_lr):
        return base_lr * _power(self.gamma, _t(t))


class CosineAnnealingLR(Schedule):
    """Cosine annealing from ``base_lr`` to ``eta_min`` over ``T_max`` epochs, optionally after a linear warmup.

    Without warmup, PyTorch's ``CosineAnnealingLR`` closed form::

        eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    (periodic past ``T_max``, as PyTorch's).  With ``warmup = w > 0``, the
    first ``w`` updates follow ``torch.optim.lr_scheduler.LinearLR(
    start_factor=warmup_start_factor, total_iters=w)`` and the cosine starts
    at ``t = w``: PyTorch's ``SequentialLR([LinearLR(...), CosineAnnealingLR(
    T_max)], milestones=[w])``::

        t <  w:  base_lr * (warmup_start_factor + (1 - warmup_start_factor) * t / w)
        t >= w:  the cosine at t - w

    Parameters
    ----------
    T_max : int
        Length of the half cosine (> 0), warmup excluded.
    eta_min : float, default 0.0
    warmup : int, default 0
        Linear warmup updates before the cosine.
    warmup_start_factor : float, default 1/3
        The warmup's first rate as a fraction of ``base_lr``, in ``(0, 1]``
        (``LinearLR``'s ``start_factor`` and default).
    interval : {"epoch", "step"}, default "epoch"
    """

    _fields = ("T_max", "eta_min", "warmup", "warmup_start_factor", "interval")

    def __init__(self, T_max, eta_min=0.0, warmup=0, warmup_start_factor=1.0 / 3, interval="epoch"):
        self._set(T_max=_int("T_max", T_max, "CosineAnnealingLR", low=1),
                  eta_min=_float("eta_min", eta_min, "CosineAnnealingLR", low=0.0),
                  warmup=_int("warmup", warmup, "CosineAnnealingLR"),
                  warmup_start_factor=_float("warmup_start_factor", warmup_start_factor, "CosineAnnealingLR",
                                             low=0.0, high=1.0, low_open=True),
                  interval=_choice("interval", interval, _INTERVALS, "CosineAnnealingLR"))

    def lr_at(self, t, base_lr):
        t = _t(t)
        w = self.warmup
        if t < w:
            f = self.warmup_start_factor
            return base_lr * (f + (1.0 - f) * t / w)
        return self.eta_min + (base_lr - self.eta_min) * (1 + _math.cos(_math.pi * (t - w) / self.T_max)) / 2


class OneCycleLR(Schedule):
    """The 1cycle policy, per update: PyTorch's ``OneCycleLR`` learning rates.

    From ``max_lr / div_factor`` up to ``max_lr`` over the first
    ``pct_start * total_steps`` updates, then down to ``max_lr / div_factor
    / final_div_factor`` (``three_phase``: back to the initial rate first);
    ``anneal_strategy`` "cos" or "linear".  The optimizer's own learning rate
    is not used.  ``total_steps``, or ``epochs`` and ``steps_per_epoch``.

    Parameters
    ----------
    max_lr : float
    total_steps : int, optional
    epochs, steps_per_epoch : int, optional
    pct_start : float, default 0.3
    anneal_strategy : {"cos", "linear"}, default "cos"
    cycle_momentum : bool, default False
        PyTorch's default is True (it also cycles the momentum / Adam's
        beta1); fastbp schedules the learning rate only, so ``True`` is a
        ``ValueError`` rather than a silently different training.
    div_factor : float, default 25.0
    final_div_factor : float, default 1e4
    three_phase : bool, default False
    interval : {"step", "epoch"}, default "step"

    Notes
    -----
    As in PyTorch, the schedule is defined for ``t <= total_steps``; a larger
    ``t`` is a ``ValueError`` (``fit`` checks every update up front).
    """

    _fields = ("max_lr", "total_steps", "pct_start", "anneal_strategy", "div_factor", "final_div_factor",
               "three_phase", "interval")

    def __init__(self, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=False, div_factor=25.0, final_div_factor=1e4,
                 three_phase=False, interval="step"):
        o = "OneCycleLR"
        if total_steps is not None:
            total = _int("total_steps", total_steps, o, low=1)
        elif epochs is not None and steps_per_epoch is not None:
            total = _int("epochs", epochs, o, low=1) * _int("steps_per_epoch", steps_per_epoch, o, low=1)
        else:
            raise ValueError(f"{o}: give total_steps, or epochs and steps_per_epoch")
        if total > 2 ** 53:     # the phases are computed in float64, exact for counts up to 2**53
            what = "total_steps" if total_steps is not None else "epochs * steps_per_epoch"
            raise ValueError(f"{o}: {what} must be <= 2**53, got about 10**{int(total.bit_length() * 0.30103)}")
        if not isinstance(cycle_momentum, bool):
            raise TypeError(f"{o}: cycle_momentum must be a bool, got {type(cycle_momentum).__name__}")
        if cycle_momentum:
            raise ValueError(f"{o}: cycle_momentum=True is not supported (fastbp schedules the learning rate "
                             f"only); pass cycle_momentum=False")
        if not isinstance(three_phase, bool):
            raise TypeError(f"{o}: three_phase must be a bool, got {type(three_phase).__name__}")
        self._set(max_lr=_float("max_lr", max_lr, o, low=0.0, low_open=True), total_steps=total,
                  pct_start=_float("pct_start", pct_start, o, low=0.0, high=1.0),
                  anneal_strategy=_choice("anneal_strategy", anneal_strategy, ("cos", "linear"), o),
                  div_factor=_float("div_factor", div_factor, o, low=0.0, low_open=True),
                  final_div_factor=_float("final_div_factor", final_div_factor, o, low=0.0, low_open=True),
                  three_phase=three_phase, interval=_choice("interval", interval, _INTERVALS, o))

    def _phases(self):
        initial = self.max_lr / self.div_factor
        lo = initial / self.final_div_factor
        T, p = self.total_steps, self.pct_start
        if self.three_phase:
            return ((float(p * T) - 1, initial, self.max_lr), (float(2 * p * T) - 2, self.max_lr, initial),
                    (T - 1, initial, lo))
        return ((float(p * T) - 1, initial, self.max_lr), (T - 1, self.max_lr, lo))

    def lr_at(self, t, base_lr=None):
        t = _t(t)
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: update {t} is past total_steps={self.total_steps}")
        start = 0.0
        phases = self._phases()
        for i, (end, a, b) in enumerate(phases):
            if t <= end or i == len(phases) - 1:
                pct = (t - start) / (end - start) if end != start else 1.0
                if self.anneal_strategy == "cos":
                    return b + (a - b) / 2.0 * (_math.cos(_math.pi * pct) + 1)
                return (b - a) * pct + a
            start = end
        raise AssertionError("unreachable")


class ReduceLROnPlateau:
    """Reduce the learning rate when a metric stops improving (PyTorch's ``ReduceLROnPlateau``).

    Stateful, updated once per epoch by ``fit`` with its validation loss
    (training loss without ``validation_data``) through :meth:`step`.  It
    belongs to one step at a time (as PyTorch's to one optimizer): giving one
    object to a second live step is a ``ValueError``.

    Parameters
    ----------
    mode : {"min", "max"}, default "min"
    factor : float, default 0.1
        ``new_lr = max(lr * factor, min_lr)``; in ``(0, 1)``.
    patience : int, default 10
    threshold : float, default 1e-4
    threshold_mode : {"rel", "abs"}, default "rel"
    cooldown : int, default 0
    min_lr : float, default 0.0
    eps : float, default 1e-8
        A reduction smaller than ``eps`` is skipped.
    monitor : {"val_loss", "loss", "val_accuracy"}, optional
        fastbp's addition: the metric of ``fit`` it follows (PyTorch's is
        given to ``scheduler.step(metric)`` by hand); default ``val_loss``
        with validation data, else ``loss``.  Use ``mode="max"`` with
        ``val_accuracy``.

    Attributes
    ----------
    lr : float or None
        The current learning rate (None until bound to a step's rate).
    best, num_bad_epochs, cooldown_counter, last_epoch
        As PyTorch's.
    """

    interval = "epoch"
    stateful = True
    _fields = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps", "monitor")
    _state = ("lr", "best", "num_bad_epochs", "cooldown_counter", "last_epoch")

    def __init__(self, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel", cooldown=0,
                 min_lr=0.0, eps=1e-8, monitor=None):
        o = "ReduceLROnPlateau"
        self.mode = _choice("mode", mode, ("min", "max"), o)
        self.factor = _float("factor", factor, o, low=0.0, high=1.0, low_open=True, high_open=True)
        self.patience = _int("patience", patience, o)
        self.threshold = _float("threshold", threshold, o, low=0.0)
        self.threshold_mode = _choice("threshold_mode", threshold_mode, ("rel", "abs"), o)
        self.cooldown = _int("cooldown", cooldown, o)
        self.min_lr = _float("min_lr", min_lr, o, low=0.0)
        self.eps = _float("eps", eps, o, low=0.0)
        self.monitor = None if monitor is None else _choice("monitor", monitor, ("val_loss", "loss", "val_accuracy"),
                                                              o)
        self.lr = None
        self.best = _math.inf if self.mode == "min" else -_math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def lr_at(self, t, base_lr):
        """The current rate.

        Parameters
        ----------
        t : int
            Ignored (the rate is this object's state, not a function of ``t``).
        base_lr : float
            The optimizer's learning rate, returned until the first reduction.

        Returns
        -------
        float
        """
        return base_lr if self.lr is None else self.lr

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (self.threshold + 1.0) if self.threshold_mode == "rel" else best + self.threshold)

    def step(self, metric, lr):
        """End an epoch (``fit`` calls it), as PyTorch's ``scheduler.step(metric)``.

        Parameters
        ----------
        metric : float
            The epoch's monitored value.
        lr : float
            The learning rate the epoch ran at.

        Returns
        -------
        float
            The next epoch's learning rate.

        Raises
        ------
        TypeError
            ``metric`` is not a real number (NaN and infinities are, as in PyTorch: a NaN
            epoch is never an improvement), or ``lr`` not a finite one.
        ValueError
            ``lr`` below 0.
        """
        current = _metric("metric", metric, "ReduceLROnPlateau.step")
        lr = _float("lr", lr, "ReduceLROnPlateau.step", low=0.0)
        self.last_epoch += 1
        self.lr = lr
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new = max(self.lr * self.factor, self.min_lr)
            if self.lr - new > self.eps:
                self.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.lr

    def spec(self):
        """Parameters and state, JSON-serialisable.

        Returns
        -------
        dict
            The constructor's arguments and ``"state"``: ``lr``, ``best`` (None for an
            infinity), ``num_bad_epochs``, ``cooldown_counter``, ``last_epoch``
            (:func:`schedule_from_spec` rebuilds it).
        """
        d = {"type": "ReduceLROnPlateau", **{f: getattr(self, f) for f in self._fields}}
        state = {f: getattr(self, f) for f in self._state}
        if _math.isinf(state["best"]):
            state["best"] = None
        d["state"] = state
        return d

    def __repr__(self):
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"ReduceLROnPlateau({args})"


_CLASSES = {c.__name__: c for c in (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, OneCycleLR,
                                    ReduceLROnPlateau)}


def schedule_from_spec(spec):
    """Rebuild a schedule from its :meth:`Schedule.spec`.

    Parameters
    ----------
    spec : dict
        What a schedule's ``spec()`` returned (a checkpoint's).

    Returns
    -------
    Schedule or ReduceLROnPlateau

    Raises
    ------
    ValueError, TypeError
        Not a schedule's spec, or a field its constructor refuses.
    """
    if not isinstance(spec, dict) or spec.get("type") not in _CLASSES:
        raise ValueError(f"not a schedule spec: {spec!r:.200}")
    args = {k: v for k, v in spec.items() if k not in ("type", "state")}
    cls = _CLASSES[spec["type"]]
    s = cls(**args)
    if cls is ReduceLROnPlateau:
        state = {} if spec.get("state") is None else spec["state"]
        if not isinstance(state, dict):
            raise ValueError(f"ReduceLROnPlateau: state must be a dict, got {type(state).__name__}")
        lr = state.get("lr")
        # >= 0: a rate of 0 (SGD(lr=0), or reductions that underflowed with eps=0) is a state it reaches
        s.lr = None if lr is None else _float("state.lr", lr, "ReduceLROnPlateau", low=0.0)
        best = state.get("best")
        s.best = (_math.inf if s.mode == "min" else -_math.inf) if best is None else \
            _float("state.best", best, "ReduceLROnPlateau")
        for k in ("num_bad_epochs", "cooldown_counter", "last_epoch"):
            setattr(s, k, _int(f"state.{k}", state.get(k, 0), "ReduceLROnPlateau"))
    return s


def schedule_arg(schedule, name="schedule"):
    """Check a ``schedule=`` argument.

    Parameters
    ----------
    schedule : Schedule, ReduceLROnPlateau or None
    name : str, default "schedule"
        The argument's name in the error.

    Returns
    -------
    Schedule, ReduceLROnPlateau or None
        ``schedule`` itself.

    Raises
    ------
    TypeError
        Anything else.
    """
    if schedule is None or isinstance(schedule, (Schedule, ReduceLROnPlateau)):
        return schedule
    raise TypeError(f"{name} must be a fastbp.schedules schedule (StepLR, MultiStepLR, ExponentialLR, "
                    f"CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau) or None, got {type(schedule).__name__}")


#: the step each ReduceLROnPlateau belongs to: id(schedule) -> (weakref to it, weakref to the step)
_PLATEAU_OWNERS = {}
_PLATEAU_LOCK = _threading.RLock()     # claims from two threads: one wins, the other is refused


def _claim_plateau(schedule, step, check_only=False):
    """Record ``step`` as ``schedule``'s step (``check_only``: record nothing); ValueError if
    another live step has it."""
    with _PLATEAU_LOCK:
        for k, (s_ref, o_ref) in list(_PLATEAU_OWNERS.items()):
            if s_ref() is None or o_ref() is None:
                _PLATEAU_OWNERS.pop(k, None)    # a schedule or a step gone: its id may be reused
        held = _PLATEAU_OWNERS.get(id(schedule))
        if held is not None and held[0]() is schedule and held[1]() is not step:
            raise ValueError("schedule: this ReduceLROnPlateau is already another step's schedule (it holds "
                             "that step's rate, best metric and counters); give each step its own "
                             "ReduceLROnPlateau")
        if not check_only:
            _PLATEAU_OWNERS[id(schedule)] = (_weakref.ref(schedule), _weakref.ref(step))


def _release_plateau(schedule, step):
    """Undo :func:`_claim_plateau`: ``step`` lets go of ``schedule`` (detached or replaced), which
    another step may then take; nothing for another schedule or another step's."""
    with _PLATEAU_LOCK:
        held = _PLATEAU_OWNERS.get(id(schedule))
        if held is not None and held[0]() is schedule and held[1]() is step:
            _PLATEAU_OWNERS.pop(id(schedule), None)
