"""The optimizer state between a :func:`fastbp.from_torch` step and its torch optimizer.

The fused step keeps the optimizer state (SGD's momentum, Adam's moments, RMSprop's
averages, the step counts) in its own vectors.  :func:`import_state` reads a torch
optimizer's ``opt.state`` into them (a torch optimizer that already stepped, or one that
stepped again after :meth:`~fastbp.torch_interop.TorchTrainStep.sync_to_torch`);
:func:`export_state` writes them into ``opt.state`` in PyTorch's layout and returns a
:func:`record` of what it wrote, which :func:`torch_moved` compares (the tensors'
identities and in-place versions) to see whether PyTorch stepped since.

PyTorch is passed in (``torch``): importing this module does not import it.
"""
from __future__ import annotations

from itertools import repeat
from operator import is_not

from . import _isa as ex
from .optimizers import Adam, RMSprop, SGD

__all__ = ["import_state", "export_state", "record", "watch", "torch_moved", "step_dtype"]


def step_dtype(torch):
    """The dtype of ``opt.state[p]["step"]`` (torch.optim's ``_get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _slice(step, key):
    """The part of the step's state vectors that parameter ``key`` owns: ``(offset, live)``."""
    live = step.params[key]
    off = live.__array_interface__["data"][0] - step.arena.__array_interface__["data"][0]
    return off // step.arena.itemsize - step.plan.param_region[0], live


def import_state(opt, pairs, step, torch):
    """Read the state of torch optimizer ``opt`` for ``pairs`` ``(parameter, step key)`` into
    the step's state vectors (momentum, Adam's moments, RMSprop's averages) and its step
    count (Adam's ``t``; RMSprop's count from here on).  A parameter without state (a fresh
    optimizer, or one whose state ``load_state_dict`` emptied) starts afresh, as PyTorch's
    next step would: its vectors zero, and the count 0 when no parameter has state.
    ValueError when the parameters have taken different numbers of steps."""
    if opt is None or not isinstance(opt, torch.optim.Optimizer):
        return
    steps = set()
    for p, key in pairs:
        st = opt.state.get(p) if p is not None else None
        off, live = _slice(step, key)
        n = live.size
        if not st:
            for vec in step.state_vectors:
                vec[off:off + n] = 0
            continue
        if isinstance(step.optimizer, SGD):
            bufs = [st.get("momentum_buffer")]
        elif isinstance(step.optimizer, RMSprop):
            bufs = [st.get(k) for k in step.optimizer.state_names]
        else:
            bufs = [st.get("exp_avg"), st.get("exp_avg_sq")]
        for vec, b in zip(step.state_vectors, bufs):
            vec[off:off + n] = b.detach().numpy().ravel() if b is not None else 0
        if "step" in st:
            steps.add(float(st["step"]))
    if len(steps) > 1:
        raise ValueError("optimizer: parameters have taken different numbers of steps")
    count = steps.pop() if steps else 0.0
    if isinstance(step.optimizer, Adam):
        step.hyper[ex.H_T] = count
    elif isinstance(step.optimizer, RMSprop):
        step._torch_step0 = (count, step.n_steps)


def export_state(step, opt, torch):
    """Write the step's optimizer state into ``opt.state`` (copies, PyTorch's layout: SGD's
    ``momentum_buffer`` with momentum; Adam/AdamW ``step``, ``exp_avg``, ``exp_avg_sq``;
    RMSprop ``step``, ``square_avg``, ``momentum_buffer``, ``grad_avg``); returns the
    :func:`record` of the tensors written.  The caller holds the step's lock."""
    name = step.optimizer.name
    keys = _state_keys(step)
    counted = keys[-1:] == ("step",)
    if counted:
        keys = keys[:-1]
    if name == "adam":
        t = float(step.hyper[ex.H_T])
    else:
        t = step._torch_step0[0] + (step.n_steps - step._torch_step0[1])
    written = []
    for p, key in step._torch_params:
        off, live = _slice(step, key)
        n = live.size
        st = opt.state[p]
        for k, vec in zip(keys, step.state_vectors):
            st[k] = torch.from_numpy(vec[off:off + n].reshape(live.shape).copy())
            written.append((p, k))
        if counted:       # (0 before any update: torch's own first state)
            st["step"] = torch.tensor(float(t), dtype=step_dtype(torch))
            written.append((p, "step"))
    return record(written, opt)


def _state_keys(step):
    """The ``opt.state`` keys :func:`export_state` writes per parameter, ``step`` last."""
    name = step.optimizer.name
    if name == "sgd":
        return ("momentum_buffer",) if step.optimizer.momentum != 0.0 else ()
    keys = ("exp_avg", "exp_avg_sq") if name == "adam" else tuple(step.optimizer.state_names)
    return keys + ("step",)


def watch(step, opt):
    """The :func:`record` of the state :func:`export_state` would write, as ``opt.state``
    holds it now (from_torch: PyTorch's steps before the first sync are followed too)."""
    return record([(p, k) for p, _ in step._torch_params for k in _state_keys(step)], opt)


class _Record:
    """What ``opt.state`` held for some ``(parameter, state key)`` entries at one moment:
    the ``opt.state`` mapping and its size, each parameter's state dict, each state tensor
    and its ``_version`` (torch's count of in-place changes).  Compared once per fused
    step: in C-level maps, and without hashing a tensor (``Tensor.__hash__`` is Python)."""
    __slots__ = ("entries", "state", "size", "keys", "dicts", "tensors", "versions")

    def __init__(self, entries, opt):
        self.entries = tuple((p, k) for p, k, *_ in entries)
        self.state = opt.state
        self.size = len(opt.state)
        self.keys = tuple(k for _, k in self.entries)
        self.dicts = tuple(opt.state.get(p, _NONE) for p, _ in self.entries)
        self.tensors = tuple(map(dict.get, self.dicts, self.keys))
        self.versions = tuple(map(getattr, self.tensors, repeat("_version"), repeat(None)))

    def __bool__(self):
        return bool(self.entries)

    def __iter__(self):
        return iter(self.entries)


#: the state dict of a parameter without state (a read-only stand-in: never written)
_NONE = {}


def record(entries, opt):
    """The state ``opt.state`` holds now for ``entries`` (``(parameter, state key, ...)``
    tuples, or an earlier record), for :func:`torch_moved`."""
    return _Record(entries, opt)


def torch_moved(rec, opt):
    """Whether ``opt.state`` changed since :func:`record` made ``rec``: a state tensor
    stepped in place (``opt.step()``), replaced or removed, or ``opt.state`` replaced
    (``opt.load_state_dict``) or grown (a parameter's first state: PyTorch stepped)."""
    state = opt.state
    if state is not rec.state or len(state) != rec.size:
        return True
    tensors = tuple(map(dict.get, rec.dicts, rec.keys))
    return (any(map(is_not, tensors, rec.tensors))
            or tuple(map(getattr, tensors, repeat("_version"), repeat(None))) != rec.versions)
