"""All-or-nothing ``fit`` and ``partial_fit`` for :class:`fastbp._estimator_base._BaseMLP`.

A call that raises (bad input found by the checks, a bad ``random_state``, training that
diverges ...) leaves the estimator exactly as it was before the call: its fitted
attributes (``classes_``, ``n_features_in_``, the label binarizer, the loss it was fitted
with, ``loss_curve_`` ...) and its compiled step, whose weights, optimizer state and
counters a ``partial_fit`` and a warm start train in place (a warm start keeps the step
when nothing compiled into it changed: :func:`reuse_for_warm_start`).  Any other ``fit``
trains a new step, and so does a ``partial_fit`` that compiles the step again for another
minibatch size (:func:`transfer_step_state`): the previous one only needs to be kept,
not copied.

A warning about a call that succeeds (scikit-learn's ``ConvergenceWarning`` when
``max_iter`` ends the training) is issued when the call has returned its fitted state
(:func:`warn_after_fit`), not inside the guard: where warnings are errors (``pytest -W
error``, ``warnings.simplefilter("error")``) the exception reaches the caller and the
estimator keeps the model it has fitted, as scikit-learn's does.

Imported by :mod:`fastbp._estimator_base` and :mod:`fastbp._estimator_fit` only.
"""
from __future__ import annotations

import contextvars
import warnings

import numpy as np

from . import _isa

__all__ = ["snapshot", "restore", "transfer_step_state", "reuse_for_warm_start", "warn_after_fit",
           "deferring_warnings", "issue_deferred"]

#: the warnings of the ``fit`` / ``partial_fit`` running in this thread (or task), issued
#: when it has succeeded; None outside one
_DEFERRED = contextvars.ContextVar("fastbp_estimator_deferred_warnings", default=None)


def warn_after_fit(message, category=UserWarning):
    """``warnings.warn(message, category)`` once the running ``fit`` or ``partial_fit``
    has succeeded (never if it raises: the estimator is then as it was), or now outside one."""
    pending = _DEFERRED.get()
    if pending is None:
        warnings.warn(message, category, stacklevel=2)
    else:
        pending.append((message, category))


def deferring_warnings():
    """Start collecting :func:`warn_after_fit`'s warnings; returns the token for
    :func:`issue_deferred` (calls nest: an inner call's warnings are its own)."""
    return _DEFERRED.set([])


def issue_deferred(token, succeeded):
    """Stop collecting (``token``: :func:`deferring_warnings`'s); issue the collected warnings
    where ``succeeded``, each attributed to the caller of ``fit`` / ``partial_fit``."""
    pending = _DEFERRED.get()
    _DEFERRED.reset(token)
    for message, category in (pending or ()) if succeeded else ():
        warnings.warn(message, category, stacklevel=4)


def _step_state(step):
    """Copies of what training changes in ``step``: weights, optimizer state, counters, RNG."""
    return {
        "params": np.array(step.param_vector),
        "states": [np.array(s) for s in step.state_vectors],
        "hyper": np.array(step.hyper),
        "lr": float(step.optimizer.lr),
        "rng": step.rng.bit_generator.state,
        "epochs_done": step.epochs_done,
    }


def _set_step_state(step, saved):
    """Write :func:`_step_state`'s copies back into ``step``."""
    step.param_vector[...] = saved["params"]
    for dst, src in zip(step.state_vectors, saved["states"]):
        dst[...] = src
    step.lr = saved["lr"]                       # the optimizer's rate, then the counters and the rest:
    runtime = list(_isa.RUNTIME_SLOTS)          # as fastbp.load, not this process's BLAS policy
    keep = step.hyper[runtime].copy()
    step.hyper[...] = saved["hyper"]
    step.hyper[runtime] = keep
    step._settings_changed()
    step.rng.bit_generator.state = saved["rng"]
    step.epochs_done = saved["epochs_done"]


def transfer_step_state(src, dst):
    """Give ``dst``, a step compiled from ``src``'s architecture and optimizer with another
    ``batch_size``, everything training has changed in ``src``: weights, optimizer state,
    counters, rate and generator; ``src`` is left as it is.  ``dst`` keeps its own optimizer
    constants (the weight decay of its minibatch size: a checkpoint of it must match its spec)."""
    dst.param_vector[...] = src.param_vector
    for d, s in zip(dst.state_vectors, src.state_vectors):
        d[...] = s
    dst._take_state_of(src, _isa.PROGRESS_SLOTS)       # rates, counters, epochs, generator


def reuse_for_warm_start(step, arch, new_arch):
    """A warm start's fresh optimizer on the step it continues, when ``new_arch`` (what a new
    step would be compiled from) equals ``arch`` (the step's) but for its seed: the optimizer
    state, the update counters and the epochs zeroed, the rate the optimizer's ``lr``, the
    weights kept in place, as scikit-learn makes its optimizer again over the same
    ``coefs_`` and ``intercepts_`` arrays (a reference to them stays the model's).  Returns
    whether it did (False: nothing changed; the caller compiles a new step)."""
    def key(a):
        return {k: v for k, v in a.items() if k not in ("seed", "step_precision")}
    if step is None or arch is None or key(arch) != key(new_arch):
        return False
    for vec in step.state_vectors:
        vec[...] = 0.0
    step.hyper[[_isa.H_T, _isa.H_STEPS]] = 0.0
    step.lr = new_arch["optimizer"]["lr"]
    step.epochs_done = 0
    return True


def snapshot(est, in_place):
    """What :func:`restore` needs to undo a call on ``est``.

    Parameters
    ----------
    est : _BaseMLP
    in_place : bool
        The call trains the current step in place (``partial_fit``): its state is
        copied too (its weights, optimizer state and counters; about three copies of
        the weights for Adam).

    Returns
    -------
    object
        Opaque; pass it to :func:`restore`.
    """
    # a shallow copy of the attributes, lists copied (loss_curve_ and validation_scores_
    # grow in place); every other attribute a call changes is rebound, not mutated
    attrs = {k: (list(v) if type(v) is list else v) for k, v in vars(est).items()}
    step = attrs.get("_step") if in_place else None
    return attrs, step, (None if step is None else _step_state(step))


def restore(est, saved):
    """Put ``est`` back as it was when :func:`snapshot` returned ``saved``."""
    attrs, step, step_state = saved
    vars(est).clear()
    vars(est).update(attrs)
    if step_state is not None:
        _set_step_state(step, step_state)
