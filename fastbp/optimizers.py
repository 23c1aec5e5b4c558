"""Optimizer hyper-parameters; the updates themselves run inside the fused step
(:mod:`fastbp.kernels.optim`)."""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["SGD", "Adam"]


def _real(name, value, *, low=None, high=None, low_open=False, high_open=False, owner=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{owner}: {name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return v


class _Optimizer:
    """What SGD and Adam share: a compiled step's frozen copy of them.

    :func:`fastbp.compile` keeps its own copy of the optimizer it is given
    (:meth:`_owned_copy`), so that a later change to the caller's object
    changes neither the training nor what ``step.save()`` writes.  That
    copy is frozen: its hyper-parameters are compiled into the step (the
    optimizer state buffers are sized for them), and only the learning rate
    can change, through ``step.lr = value``.
    """
    _frozen = False

    def __setattr__(self, name, value):
        if self._frozen:
            raise AttributeError(
                f"{type(self).__name__}.{name} cannot be set: this is a compiled step's copy of its "
                f"optimizer, whose hyper-parameters are fixed at compile time (change the learning rate "
                f"with step.lr = value; anything else needs a new fastbp.compile)")
        object.__setattr__(self, name, value)

    def _owned_copy(self):
        """A frozen copy with the same hyper-parameters (for a compiled step)."""
        c = optimizer_from_spec(self.spec())
        object.__setattr__(c, "_frozen", True)
        return c

    def _set_lr(self, lr):
        """Set the learning rate (already validated) of this (possibly frozen) object."""
        object.__setattr__(self, "lr", float(lr))


class SGD(_Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD`` semantics.

    Parameters
    ----------
    lr : float
        Learning rate, > 0.
    momentum : float, default 0
        In [0, 1).
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0``).
    weight_decay : float, default 0
        L2 penalty added to the gradient, >= 0.
    """
    name = "sgd"

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr = _real("lr", lr, low=0.0, low_open=True, owner="SGD")
        self.momentum = _real("momentum", momentum, low=0.0, high=1.0, high_open=True, owner="SGD")
        if not isinstance(nesterov, (bool, np.bool_)):     # the one bool policy (fastbp._validate.boolean)
            raise TypeError(f"SGD: nesterov must be a bool (True or False), got {type(nesterov).__name__}")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.weight_decay = _real("weight_decay", weight_decay, low=0.0, owner="SGD")

    @property
    def n_state(self):
        """Number of state vectors (each the size of the parameters)."""
        return 1 if self.momentum != 0.0 else 0

    def spec(self):
        return {"type": "SGD", "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")


class Adam(_Optimizer):
    """Adam, or AdamW with ``decoupled=True``; ``torch.optim.Adam``/``AdamW`` semantics.

    Parameters
    ----------
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Each in [0, 1).
    eps : float, default 1e-8
        > 0.
    weight_decay : float, default 0
    decoupled : bool, default False
        Apply weight decay to the weights directly (AdamW) instead of the gradient.
    """
    name = "adam"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        self.lr = _real("lr", lr, low=0.0, low_open=True, owner="Adam")
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"Adam: betas must be a pair of floats, got {betas!r}") from None
        self.betas = (_real("betas[0]", b1, low=0.0, high=1.0, high_open=True, owner="Adam"),
                      _real("betas[1]", b2, low=0.0, high=1.0, high_open=True, owner="Adam"))
        self.eps = _real("eps", eps, low=0.0, low_open=True, owner="Adam")
        self.weight_decay = _real("weight_decay", weight_decay, low=0.0, owner="Adam")
        if not isinstance(decoupled, (bool, np.bool_)):
            raise TypeError(f"Adam: decoupled must be a bool (True or False), got {type(decoupled).__name__}")
        self.decoupled = bool(decoupled)

    n_state = 2

    def spec(self):
        return {"type": "Adam", "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "decoupled": self.decoupled}

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}, decoupled={self.decoupled})")


def optimizer_from_spec(spec):
    """Rebuild an optimizer from its :meth:`spec` (checkpoints)."""
    t = spec.get("type") if isinstance(spec, dict) else None
    if t == "SGD":
        return SGD(spec["lr"], spec["momentum"], spec["nesterov"], spec["weight_decay"])
    if t == "Adam":
        return Adam(spec["lr"], tuple(spec["betas"]), spec["eps"], spec["weight_decay"], spec["decoupled"])
    raise ValueError(f"unknown optimizer spec {spec!r}")


def optimizer_arg(optimizer):
    """The ``optimizer=`` argument of :func:`fastbp.compile`: ``None`` is ``SGD(lr=0.1)``.

    Parameters
    ----------
    optimizer : SGD, Adam, str or None

    Returns
    -------
    SGD, Adam or str
        Names are resolved by the step (:func:`resolve_optimizer`).

    Raises
    ------
    TypeError
        Any other type.
    """
    if optimizer is None:
        return SGD(lr=0.1)
    if not isinstance(optimizer, (SGD, Adam, str)):
        raise TypeError(f"optimizer must be fastbp.SGD(...) or fastbp.Adam(...), got {type(optimizer).__name__}")
    return optimizer


def resolve_optimizer(optimizer):
    """Accept an optimizer instance or a name ('sgd', 'adam') with default settings."""
    if isinstance(optimizer, (SGD, Adam)):
        return optimizer
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key == "sgd":
            return SGD(lr=0.01)
        if key == "adam":
            return Adam()
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: fastbp.SGD(...), fastbp.Adam(...), 'sgd', 'adam'")
