"""All-or-nothing ``fit`` and ``partial_fit`` for :class:`fastbp._estimator_base._BaseMLP`.

A call that raises (bad input found by the checks, a bad ``random_state``, training that
diverges ...) leaves the estimator exactly as it was before the call: its fitted
attributes (``classes_``, ``n_features_in_``, the label binarizer, the loss it was fitted
with, ``loss_curve_`` ...) and its compiled step, whose weights, optimizer state and
counters a ``partial_fit`` trains in place.  ``fit`` (warm start included) always trains
a new step, and so does a ``partial_fit`` that compiles the step again for another
minibatch size (:func:`transfer_step_state`): the previous one only needs to be kept,
not copied.

Imported by :mod:`fastbp._estimator_base` only.
"""
from __future__ import annotations

import numpy as np

from . import _isa

__all__ = ["snapshot", "restore", "transfer_step_state"]


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
    counters and generator; ``src`` is left as it is."""
    _set_step_state(dst, _step_state(src))


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
