"""The fitted estimators' ``coefs_`` and ``intercepts_``: lists of the step's live
arrays that write through, as assigning scikit-learn's lists changes its model."""
import numpy as np


class _LiveList(list):
    """A fitted estimator's ``coefs_`` / ``intercepts_``: the step's live arrays; assigning
    an item (or a whole slice) copies the values into the live array, which keeps its
    shape and dtype (ValueError for another shape)."""

    def __init__(self, name, arrays):
        super().__init__(arrays)
        self._name = name

    def _write(self, i, value):
        live = list.__getitem__(self, i)
        v = np.asarray(value)
        if v.shape != live.shape:
            raise ValueError(f"{self._name}[{i}] has shape {live.shape}; got an array of shape {v.shape}")
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{self._name}[{i}] must hold real numbers, got dtype {v.dtype}")
        live[...] = v

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            idx = range(len(self))[i]
            values = list(value)
            if len(values) != len(idx):
                raise ValueError(f"{self._name} has {len(idx)} arrays here; got {len(values)}")
            for j, v in zip(idx, values):
                self._write(j, v)
            return
        self._write(range(len(self))[i], value)

    def append(self, value):
        raise TypeError(f"{self._name} has one array per layer; the architecture cannot change")

    extend = insert = append


def optimizer_view(est):
    """``est._optimizer``: what scikit-learn's private ``_optimizer`` (its ``SGDOptimizer`` or
    ``AdamOptimizer``) shows of the fitted optimizer, read-only: ``learning_rate`` (the current
    rate: 'invscaling' and 'adaptive' change it between epochs; Adam's bias-corrected
    ``learning_rate_init * sqrt(1 - beta_2**t) / (1 - beta_1**t)`` after ``t`` updates),
    ``learning_rate_init`` and the solver's own settings.  AttributeError before a
    stochastic fit (scikit-learn's lbfgs has none)."""
    from types import SimpleNamespace
    from ._isa import H_T
    step = est.__dict__.get("_step")
    s = est._opt_settings() if step is not None else None
    if s is None or est.__dict__.get("_sgd_lr") is None or s["solver"] == "lbfgs":
        raise AttributeError(f"{type(est).__name__!r} object has no attribute '_optimizer' (no "
                             "stochastic fit yet: the sgd and adam solvers make it)")
    lr0 = float(s["learning_rate_init"])
    if s["solver"] == "sgd":
        o = est._arch["optimizer"]
        return SimpleNamespace(learning_rate_init=lr0, learning_rate=float(est._sgd_lr),
                               lr_schedule=s["learning_rate"], power_t=float(s["power_t"]),
                               momentum=float(o["momentum"]), nesterov=bool(o["nesterov"]))
    b1, b2 = (float(b) for b in est._arch["optimizer"]["betas"])
    t = int(step.hyper[H_T])
    lr = lr0 * (1.0 - b2 ** t) ** 0.5 / (1.0 - b1 ** t) if t else lr0
    return SimpleNamespace(learning_rate_init=lr0, learning_rate=lr, beta_1=b1, beta_2=b2,
                           epsilon=float(s.get("epsilon", est.epsilon)), t=t)
