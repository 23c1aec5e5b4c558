"""Optimizer hyper-parameters; the updates themselves run inside the fused step
(:mod:`fastbp.kernels.optim`)."""
from __future__ import annotations

import numpy as _np

from . import _isa as _ex
from ._scalars import real as _real
from ._validate import boolean as _boolean
from .registry.optimizers import adam_mode as _adam_mode

__all__ = ["SGD", "Adam", "AdamW", "RMSprop"]


def __dir__():
    # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)


def clip_grad_norm_arg(value, owner="compile"):
    """The ``clip_grad_norm=`` of a step: None (no clipping) is 0.0, else a positive finite number.

    With it, every update first multiplies all gradients by
    ``min(1, max_norm / (total_norm + 1e-6))``, ``total_norm`` being the 2-norm
    of every parameter's gradient together, as ``torch.nn.utils.clip_grad_norm_``
    does; after the non-finite check, before the optimizer adds weight decay.

    Raises
    ------
    TypeError
        Not a real number (bools included).
    ValueError
        Not finite, or <= 0.
    """
    if value is None:
        return 0.0
    return _real("clip_grad_norm", value, owner, low=0.0, low_open=True)


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

    def _decay_1d_arg(self, decay_1d):
        """Validate and keep ``decay_1d`` (a bool)."""
        object.__setattr__(self, "decay_1d", _boolean(f"{type(self).__name__}: decay_1d", decay_1d))

    def _spec_decay(self, spec):
        """``spec`` with ``decay_1d`` and ``eps_hat`` when not the defaults (older fastbp reads the rest)."""
        if not self.decay_1d:
            spec["decay_1d"] = False
        if getattr(self, "eps_hat", False):
            spec["eps_hat"] = True
        return spec

    def _repr_decay(self):
        """The non-default ``decay_1d`` and ``eps_hat`` for ``repr``."""
        return ("" if self.decay_1d else ", decay_1d=False") + (", eps_hat=True" if getattr(self, "eps_hat", False)
                                                                 else "")

    def _set_lr(self, lr):
        """Set the learning rate (already validated) of this (possibly frozen) object."""
        object.__setattr__(self, "lr", float(lr))

    def spec(self):
        """A JSON-able description (checkpoints; :func:`optimizer_from_spec` rebuilds it).

        Returns
        -------
        dict
            ``{"type": class name, "lr": ..., ...}``: the constructor's arguments.
        """
        raise NotImplementedError


class SGD(_Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD`` semantics.

    The arguments are PyTorch's, in its order.

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate, >= 0 (0 as PyTorch allows it: a schedule may reach it).
    momentum : float, default 0
        >= 0, as PyTorch's (1 or more keeps every past gradient undamped:
        rarely what one wants, but not refused).
    dampening : float, default 0
        Only 0 (PyTorch's default, ``buf = momentum buf + g``); any other value
        is refused, naming it.
    weight_decay : float, default 0
        L2 penalty added to the gradient, >= 0.
    nesterov : bool, default False
        Nesterov momentum (needs ``momentum > 0``).
    decay_1d : bool, default True
        Whether ``weight_decay`` applies to the parameters of fewer than two
        dimensions too (biases, the norm layers' weight and bias), as in
        PyTorch.  False decays the matrices only: scikit-learn's ``alpha``
        (on ``coefs_``, not ``intercepts_``), and the usual practice of a
        second PyTorch parameter group with ``weight_decay=0`` for the 1-D
        parameters.
    """
    name = "sgd"

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *, decay_1d=True):
        self.lr = _real("lr", lr, "SGD", low=0.0)
        self.momentum = _real("momentum", momentum, "SGD", low=0.0)
        if _real("dampening", dampening, "SGD") != 0.0:
            raise ValueError(f"SGD: dampening={dampening!r} is not supported (only 0, PyTorch's default)")
        self.nesterov = _boolean("SGD: nesterov", nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.weight_decay = _real("weight_decay", weight_decay, "SGD", low=0.0)
        self._decay_1d_arg(decay_1d)

    @property
    def n_state(self):
        """Number of state vectors (each the size of the parameters)."""
        return 1 if self.momentum != 0.0 else 0

    def spec(self):
        return self._spec_decay({"type": "SGD", "lr": self.lr, "momentum": self.momentum,
                                 "nesterov": self.nesterov, "weight_decay": self.weight_decay})

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay}{self._repr_decay()})")


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
    amsgrad : bool, default False
        PyTorch's fifth argument; only False (AMSGrad is not implemented: True is a
        ValueError, anything but a bool a TypeError).
    decoupled : bool, default False
        Apply weight decay to the weights directly (AdamW) instead of the gradient.
    decay_1d : bool, default True
        Decay the parameters of fewer than two dimensions too, as PyTorch;
        False: the matrices only, as scikit-learn's ``alpha`` (see :class:`SGD`).
    eps_hat : bool, default False
        Add ``eps`` to ``sqrt(v)`` before the bias correction (Kingma and Ba's
        epsilon-hat: ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``,
        scikit-learn's and Keras's Adam) instead of to ``sqrt(v_hat)``, after it
        (PyTorch's).  The two differ where ``sqrt(v)`` is not much larger than
        ``eps``.
    decoupled_weight_decay : bool, optional
        PyTorch's name (``torch.optim.Adam``, torch >= 2.5) for ``decoupled``.
    """
    name = "adam"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 decoupled=False, decay_1d=True, eps_hat=False, decoupled_weight_decay=None):
        who = type(self).__name__
        if _boolean(f"{who}: amsgrad", amsgrad):        # a bool (numpy's too), as torch.optim's
            raise ValueError(f"{who}: amsgrad=True is not supported (AMSGrad is not implemented)")
        if decoupled_weight_decay is not None:      # torch.optim.Adam's name (torch >= 2.5)
            decoupled_weight_decay = _boolean(f"{who}: decoupled_weight_decay", decoupled_weight_decay)
            if decoupled and not decoupled_weight_decay:
                raise ValueError(f"{who}: decoupled=True and decoupled_weight_decay=False disagree")
            decoupled = decoupled_weight_decay
        self.lr = _real("lr", lr, who, low=0.0)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"{who}: betas must be a pair of floats, got {betas!r}") from None
        self.betas = (_real("betas[0]", b1, who, low=0.0, high=1.0, high_open=True),
                      _real("betas[1]", b2, who, low=0.0, high=1.0, high_open=True))
        self.eps = _real("eps", eps, who, low=0.0, low_open=True)
        self.weight_decay = _real("weight_decay", weight_decay, who, low=0.0)
        self.decoupled = _boolean(f"{who}: decoupled", decoupled)
        self._decay_1d_arg(decay_1d)
        self.eps_hat = _boolean(f"{who}: eps_hat", eps_hat)

    n_state = 2

    def tape_state(self, offsets):
        """The update instruction's columns for this optimizer (the compiler's interface).

        Parameters
        ----------
        offsets : sequence of int
            Arena offsets of the :attr:`n_state` state vectors.

        Returns
        -------
        dict of str to int
            ``c`` exp_avg's and ``d`` exp_avg_sq's offsets, ``g`` the weight-decay mode
            (the CPU kernel is the mode's own, see
            :func:`fastbp.registry.optimizers.adam_mode`), ``f1`` ``eps_hat``.
        """
        return dict(c=offsets[0], d=offsets[1], g=_adam_mode(self.weight_decay, self.decoupled),
                    f1=int(self.eps_hat))

    def spec(self):
        return self._spec_decay({"type": "Adam", "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                                 "weight_decay": self.weight_decay, "decoupled": self.decoupled})

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}, decoupled={self.decoupled}{self._repr_decay()})")


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, ``torch.optim.AdamW`` semantics and defaults.

    The same update as ``Adam(..., decoupled=True)`` (bitwise): ``p -= lr wd p``
    before the Adam step, instead of adding ``wd p`` to the gradient.  Like
    PyTorch's, its default ``weight_decay`` is 0.01 (Adam's is 0).

    Parameters
    ----------
    lr : float, default 1e-3
        >= 0.
    betas : (float, float), default (0.9, 0.999)
        Each in [0, 1).
    eps : float, default 1e-8
        > 0.
    weight_decay : float, default 1e-2
        Decoupled weight decay, >= 0.
    amsgrad : bool, default False
        Only False (PyTorch's fifth argument; AMSGrad is not implemented).
    decay_1d : bool, default True
        Decay the parameters of fewer than two dimensions too, as PyTorch;
        False: the matrices only, as scikit-learn's ``alpha`` (see :class:`SGD`).
    eps_hat : bool, default False
        Add ``eps`` before the bias correction, as scikit-learn (see :class:`Adam`).
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *, decay_1d=True,
                 eps_hat=False):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, decoupled=True, decay_1d=decay_1d, eps_hat=eps_hat)

    def spec(self):
        return self._spec_decay({"type": "AdamW", "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                                 "weight_decay": self.weight_decay})

    def __repr__(self):
        return (f"AdamW(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay}"
                f"{self._repr_decay()})")


class RMSprop(_Optimizer):
    """RMSprop, ``torch.optim.RMSprop`` semantics (and defaults).

    ``g += wd p``; ``s = alpha s + (1 - alpha) g^2``; centered:
    ``a = alpha a + (1 - alpha) g``, ``d = sqrt(s - a^2) + eps``, else
    ``d = sqrt(s) + eps``; with momentum ``b = mu b + g / d``, ``p -= lr b``,
    else ``p -= lr g / d``.

    Parameters
    ----------
    lr : float, default 1e-2
        >= 0.
    alpha : float, default 0.99
        Smoothing constant, in [0, 1].
    eps : float, default 1e-8
        > 0.
    weight_decay : float, default 0
        L2 penalty added to the gradient, >= 0.
    momentum : float, default 0
        >= 0, as PyTorch's.
    centered : bool, default False
        Normalise by the estimated variance of the gradient instead of its
        second moment.
    decay_1d : bool, default True
        Decay the parameters of fewer than two dimensions too, as PyTorch;
        False: the matrices only, as scikit-learn's ``alpha`` (see :class:`SGD`).
    """
    name = "rmsprop"

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 decay_1d=True):
        self.lr = _real("lr", lr, "RMSprop", low=0.0)
        self.alpha = _real("alpha", alpha, "RMSprop", low=0.0, high=1.0)
        self.eps = _real("eps", eps, "RMSprop", low=0.0, low_open=True)
        self.weight_decay = _real("weight_decay", weight_decay, "RMSprop", low=0.0)
        self.momentum = _real("momentum", momentum, "RMSprop", low=0.0)
        self.centered = _boolean("RMSprop: centered", centered)
        self._decay_1d_arg(decay_1d)

    @property
    def n_state(self):
        """Number of state vectors: ``square_avg``, then ``momentum_buffer`` (momentum > 0),
        then ``grad_avg`` (centered)."""
        return 1 + (self.momentum != 0.0) + self.centered

    @property
    def state_names(self):
        """The ``torch.optim.RMSprop`` state key of each state vector, in order."""
        return (("square_avg",) + (("momentum_buffer",) if self.momentum != 0.0 else ())
                + (("grad_avg",) if self.centered else ()))

    def tape_state(self, offsets):
        """The update instruction's columns for this optimizer (the compiler's interface).

        Parameters
        ----------
        offsets : sequence of int
            Arena offsets of the :attr:`n_state` state vectors (:attr:`state_names`' order).

        Returns
        -------
        dict of str to int
            ``c`` square_avg's, ``d`` the momentum buffer's and ``e`` grad_avg's offsets
            (-1: none).
        """
        at = dict(zip(self.state_names, offsets))
        return dict(c=at["square_avg"], d=at.get("momentum_buffer", -1), e=at.get("grad_avg", -1))

    def spec(self):
        return self._spec_decay({"type": "RMSprop", "lr": self.lr, "alpha": self.alpha, "eps": self.eps,
                                 "weight_decay": self.weight_decay, "momentum": self.momentum,
                                 "centered": self.centered})

    def __repr__(self):
        return (f"RMSprop(lr={self.lr}, alpha={self.alpha}, eps={self.eps}, weight_decay={self.weight_decay}, "
                f"momentum={self.momentum}, centered={self.centered}{self._repr_decay()})")


def optimizer_from_spec(spec):
    """Rebuild an optimizer from its :meth:`spec` (checkpoints)."""
    t = spec.get("type") if isinstance(spec, dict) else None
    d1 = spec.get("decay_1d", True) if isinstance(spec, dict) else True    # absent before fastbp had it
    if t == "SGD":
        return SGD(spec["lr"], spec["momentum"], nesterov=spec["nesterov"], weight_decay=spec["weight_decay"],
                   decay_1d=d1)
    if t == "Adam":
        return Adam(spec["lr"], tuple(spec["betas"]), spec["eps"], spec["weight_decay"], decoupled=spec["decoupled"],
                    decay_1d=d1, eps_hat=spec.get("eps_hat", False))
    if t == "AdamW":
        return AdamW(spec["lr"], tuple(spec["betas"]), spec["eps"], spec["weight_decay"], decay_1d=d1,
                     eps_hat=spec.get("eps_hat", False))
    if t == "RMSprop":
        return RMSprop(spec["lr"], spec["alpha"], spec["eps"], spec["weight_decay"], spec["momentum"],
                       spec["centered"], decay_1d=d1)
    raise ValueError(f"unknown optimizer spec {spec!r}")


def optimizer_arg(optimizer):
    """The ``optimizer=`` argument of :func:`fastbp.compile`: ``None`` is ``SGD(lr=0.1)``.

    Parameters
    ----------
    optimizer : SGD, Adam, AdamW, RMSprop, str or None

    Returns
    -------
    SGD, Adam, AdamW, RMSprop or str
        Names are resolved by the step (:func:`resolve_optimizer`).

    Raises
    ------
    TypeError
        Any other type.
    """
    if optimizer is None:
        return SGD(lr=0.1)
    if not isinstance(optimizer, (SGD, Adam, RMSprop, str)):
        raise TypeError(f"optimizer must be fastbp.SGD(...), fastbp.Adam(...), fastbp.AdamW(...) or fastbp.RMSprop(...), "
                        f"got {type(optimizer).__name__}")
    return optimizer


def resolve_optimizer(optimizer):
    """Accept an optimizer instance or a name ('sgd', 'adam', 'adamw', 'rmsprop') with default settings."""
    if isinstance(optimizer, (SGD, Adam, RMSprop)):
        return optimizer
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key == "sgd":
            return SGD(lr=0.01)
        if key == "adam":
            return Adam()
        if key == "adamw":
            return AdamW()
        if key == "rmsprop":
            return RMSprop()
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: fastbp.SGD(...), fastbp.Adam(...), "
                     f"fastbp.AdamW(...), fastbp.RMSprop(...), 'sgd', 'adam', 'adamw', 'rmsprop'")


def hyper_from(optimizer):
    """The step's float64 hyper-parameter vector (``_isa.HYPER_SIZE``) for ``optimizer``.

    The process-specific slots (``_isa.RUNTIME_SLOTS``: the BLAS policy)
    are left at 0; the CPU step fills them (the GPU step never reads them).
    """
    h = _np.zeros(_ex.HYPER_SIZE, dtype=_np.float64)
    h[_ex.H_TRAINING] = 1.0      # training mode; eval calls (predict) set 0 for their duration
    h[_ex.H_LR] = optimizer.lr
    h[_ex.H_WD] = optimizer.weight_decay
    if isinstance(optimizer, SGD):
        h[_ex.H_MOM] = optimizer.momentum
        h[_ex.H_NESTEROV] = float(optimizer.nesterov)
    elif optimizer.name == "rmsprop":
        h[_ex.H_MOM] = optimizer.momentum
        h[_ex.H_ALPHA] = optimizer.alpha
        h[_ex.H_EPS] = optimizer.eps
    else:
        h[_ex.H_B1], h[_ex.H_B2] = optimizer.betas
        h[_ex.H_EPS] = optimizer.eps
        h[_ex.H_DECOUPLED] = float(optimizer.decoupled)
    return h
