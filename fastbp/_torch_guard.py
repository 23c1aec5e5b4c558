"""What a :func:`fastbp.from_torch` step can train, checked when it is made and at each call.

:func:`check_trainable` refuses, when the step is made, a model whose parameters the step
would not train as PyTorch does (frozen, left out of the optimizer, tied); :class:`Guard`
refuses a step whose PyTorch model changed under it since.

The fused step was compiled from the model as :func:`~fastbp.from_torch` found it: its
modules, their settings (a ``Dropout``'s ``p``, an activation's parameters, a norm layer's
``eps`` and ``momentum``), train mode, and its parameters and running statistics, whose
memory is the step's own.  PyTorch lets all of that change afterwards; the step would go on
training what it was compiled from and silently differ from what ``model(x)`` computes:

- a module replaced or added (``model[2] = nn.Linear(...)``, ``model.append(...)``), a
  parameter or buffer replaced (``m.weight = nn.Parameter(...)``, ``p.data = ...``), or
  taken over by a later ``from_torch`` of the same model;
- a parameter frozen (``p.requires_grad_(False)``), or given a gradient hook;
- a forward or backward hook added to a module, a step hook to the optimizer, or a global
  one of PyTorch's (``register_module_forward_hook``, ``register_optimizer_step_pre_hook``);
- a setting the step compiled in changed, or ``model.eval()`` where the mode matters.

:class:`Guard` records all of it when the step is made; :meth:`Guard.check`, before each
call that trains or predicts (a few dictionary lookups per module and parameter), raises a
ValueError naming what changed, before anything changes.  In-place changes of the values
(``load_state_dict``, ``torch.nn.init``, ``with torch.no_grad(): p.mul_(0.5)``) are the
step's own memory and are followed.
"""
from __future__ import annotations

from itertools import repeat
from operator import attrgetter, is_not, methodcaller

from ._torch_hooks import check_global_hooks, global_hook_dicts, is_sync_hook

__all__ = ["Guard", "check_optimizer_hooks", "check_trainable", "param_keys"]

_MODULE_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
_data_ptr = methodcaller("data_ptr")
_grad_state = attrgetter("requires_grad", "_backward_hooks", "_post_accumulate_grad_hooks")
_training = attrgetter("training")
_REMEDY = ("; the step trains what from_torch compiled: make a new step with fastbp.from_torch(model, ...) "
           "(nothing was changed)")


class Guard:
    """What a :func:`~fastbp.from_torch` step was compiled from (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Sequential
    layers : list of (torch.nn.Module, tuple of str, bool)
        Each layer of ``model`` in order: the module, the attributes the step compiled in,
        and whether its train mode matters (the step computes train mode's output).
    optimizer : torch.optim.Optimizer or None
    """

    def __init__(self, model, layers, optimizer):
        self.model = model
        self.modules = tuple(m for m, _, _ in layers)
        self.settings = [(i, m, a, getattr(m, a)) for i, (m, attrs, _) in enumerate(layers) for a in attrs]
        self.modes = [(i, m) for i, (m, _, matters) in enumerate(layers) if matters]
        self.hooks = [(f"model layer {i}", m, tuple(len(getattr(m, h)) for h in _MODULE_HOOKS))
                      for i, m in enumerate(self.modules)]
        self.hooks.append(("the model", model, tuple(len(getattr(model, h)) for h in _MODULE_HOOKS)))
        # each parameter and buffer slot the layer's forward reads (None included: a bias set
        # later would not be trained), but num_batches_tracked (a copy the step follows, see
        # TorchTrainStep._follow_torch_state); one registered later is not read by these exact classes
        self.tensors = []
        for i, m in enumerate(self.modules):
            for attr, table in (("_parameters", m._parameters), ("_buffers", m._buffers)):
                for name, t in table.items():
                    if name != "num_batches_tracked" or attr != "_buffers":
                        self.tensors.append((i, name, table, t, None if t is None else t.data_ptr(),
                                             attr == "_parameters" and t is not None))
        self.optimizer = optimizer if hasattr(optimizer, "_optimizer_step_pre_hooks") else None
        opt_dicts = () if self.optimizer is None else (self.optimizer._optimizer_step_pre_hooks,
                                                       self.optimizer._optimizer_step_post_hooks)
        # the same, flat, for check's C-level maps
        self._tables = tuple(e[2] for e in self.tensors)
        self._names = tuple(e[1] for e in self.tensors)
        self._tensors = tuple(e[3] for e in self.tensors)
        self._present = tuple(e[3] for e in self.tensors if e[3] is not None)
        self._ptrs = tuple(e[4] for e in self.tensors if e[3] is not None)
        self._params = tuple(e[3] for e in self.tensors if e[5])
        self._grad_ok = ((True, None, None),) * len(self._params)     # (a hook added then removed: {})
        self._hook_dicts = (tuple(getattr(m, h) for _, m, _ in self.hooks for h in _MODULE_HOOKS) + opt_dicts
                            + tuple(d for d, _ in global_hook_dicts(self.optimizer is not None)))
        self._hook_lens = tuple(map(len, self._hook_dicts))
        self._set_mods = tuple(e[1] for e in self.settings)
        self._set_attrs = tuple(e[2] for e in self.settings)
        self._set_values = tuple(e[3] for e in self.settings)
        self._mode_mods = tuple(m for _, m in self.modes)

    def check(self, training=True):
        """Raise a ValueError naming the first change (see the module docstring); return None.
        Eval mode is a change only if ``training`` (a call that trains)."""
        mods = self.model._modules
        if (len(mods) != len(self.modules) or any(map(is_not, mods.values(), self.modules))
                or any(map(is_not, map(dict.get, self._tables, self._names), self._tensors))
                or tuple(map(_data_ptr, self._present)) != self._ptrs
                or tuple(map(_grad_state, self._params)) != self._grad_ok
                or tuple(map(len, self._hook_dicts)) != self._hook_lens
                or any(map(is_not, map(getattr, self._set_mods, self._set_attrs, repeat(None)), self._set_values))
                or (training and not all(map(_training, self._mode_mods)))):
            self._explain(training)

    def _explain(self, training=True):
        """:meth:`check`'s ValueError, in words (or nothing: a setting set to an equal value)."""
        mods = self.model._modules
        if len(mods) != len(self.modules) or any(a is not b for a, b in zip(mods.values(), self.modules)):
            self._changed_modules()
        for i, name, table, t, ptr, is_param in self.tensors:
            now = table.get(name)
            if t is None and now is not None:
                raise ValueError(f"model layer {i}'s {name} was None when the step was compiled and is set now"
                                 + _REMEDY)
            if t is not None and (now is not t or t.data_ptr() != ptr):
                raise ValueError(f"model layer {i}'s {name} is not the tensor from_torch shared with the step (it "
                                 f"was replaced or removed, its .data was set, or a later from_torch of this model "
                                 f"took it)" + _REMEDY)
            if is_param and (not t.requires_grad or t._backward_hooks or t._post_accumulate_grad_hooks):
                what = ("has requires_grad=False now (frozen parameters are not supported)" if not t.requires_grad
                        else "has a gradient hook now, which the fused step cannot run")
                raise ValueError(f"model layer {i}'s {name} {what}" + _REMEDY)
        for what, m, counts in self.hooks:
            if any(len(getattr(m, h)) != n for h, n in zip(_MODULE_HOOKS, counts)):
                raise ValueError(f"{what} has a hook now ({type(m).__name__}: forward or backward hooks), which "
                                 f"the fused step cannot run" + _REMEDY)
        check_global_hooks(self.optimizer is not None)
        for i, m, attr, value in self.settings:
            now = getattr(m, attr, None)
            if now is not value and now != value:
                raise ValueError(f"model layer {i} ({type(m).__name__}) has {attr}={now!r} now, {value!r} when the "
                                 f"step was compiled" + _REMEDY)
        for i, m in self.modes if training else ():
            if not m.training:
                raise ValueError(f"model layer {i} ({type(m).__name__}) is in eval mode now, and the fused step "
                                 f"trains as train mode does: call model.train() before training (nothing was "
                                 f"changed)")
        if self.optimizer is not None:
            check_optimizer_hooks(self.optimizer)
        # nothing changed that matters (a setting set to an equal value, a hook added and
        # removed): the fast comparison starts from the values as they are now
        self._grad_ok = tuple(map(_grad_state, self._params))
        self._hook_lens = tuple(map(len, self._hook_dicts))
        self._set_values = tuple(map(getattr, self._set_mods, self._set_attrs, repeat(None)))

    def _changed_modules(self):
        mods = list(self.model._modules.values())
        if len(mods) != len(self.modules):
            raise ValueError(f"model has {len(mods)} layers now, {len(self.modules)} when the step was compiled"
                             + _REMEDY)
        i = next(i for i, (a, b) in enumerate(zip(mods, self.modules)) if a is not b)
        raise ValueError(f"model layer {i} was replaced (now a {type(mods[i]).__name__}) since the step was "
                         f"compiled" + _REMEDY)


def check_optimizer_hooks(opt):
    """Refuse a torch optimizer with step hooks of the user's (``register_step_pre_hook``,
    ``register_step_post_hook``): the fused step replaces ``opt.step()`` and cannot run them
    (the hooks of :mod:`fastbp._torch_hooks` are not the user's)."""
    if opt is None or not hasattr(opt, "_optimizer_step_pre_hooks"):
        return
    for table, how in ((opt._optimizer_step_pre_hooks, "register_step_pre_hook"),
                       (opt._optimizer_step_post_hooks, "register_step_post_hook")):
        if any(not is_sync_hook(h) for h in table.values()):
            raise ValueError(f"optimizer has a step hook ({how}); the fused step replaces opt.step() and cannot "
                             f"run it: remove it, or train in PyTorch")


def param_keys(m, torch):
    """``(attribute, fastbp key)`` of a module's parameters: a Linear's ``weight`` and
    ``bias`` are fastbp's ``W`` and ``b``; a norm layer's keep their names."""
    if isinstance(m, torch.nn.Linear):
        return (("weight", "W"), ("bias", "b"))
    return (("weight", "weight"), ("bias", "bias"))


def _memory_span(t):
    """``(storage address, first byte, end byte)`` of the elements of tensor ``t``, or None (no
    elements, or no memory: the meta device)."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    end = t.data_ptr() + (sum((d - 1) * st for d, st in zip(t.shape, t.stride())) + 1) * t.element_size()
    return t.untyped_storage().data_ptr(), t.data_ptr(), end      # (torch's strides are not negative)


def check_trainable(model, optimizer, torch):
    """Every parameter of ``model`` is trained by the step: refuse frozen parameters
    (``requires_grad=False``, or left out of a torch optimizer's groups), parameters the
    step has no place for (registered beside a layer's weight and bias, or in a submodule),
    and parameters or buffers shared between layers (tied weights: PyTorch sums their
    gradients into one tensor; fastbp gives every layer its own)."""
    seen, spans = {}, []
    for i, m in enumerate(model):
        own = ({a for a, _ in param_keys(m, torch)}
               if type(m) in (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.BatchNorm1d) else set())
        extra = sorted({n for n, _ in m.named_parameters()} - own)
        if extra:
            raise ValueError(f"model layer {i} has parameters {extra} that the step would not train (it "
                             f"trains a layer's weight and bias only)")
        tensors = [(n, t) for n, t in m.named_parameters(recurse=False)]
        tensors += [(n, t) for n, t in m.named_buffers(recurse=False) if t is not None and t.is_floating_point()]
        for n, t in tensors:
            span = _memory_span(t)      # two Parameter objects over one storage are tied too
            j = seen.get(id(t))
            if j is None and span is not None:
                j = next((k for k, sp in spans if sp[0] == span[0] and sp[1] < span[2] and span[1] < sp[2]), None)
            if j is not None:
                raise ValueError(f"model layer {i}'s {n} is also layer {j}'s or shares its memory (tied "
                                 f"weights, or one module used twice); fastbp gives every layer its own "
                                 f"parameters: give each position its own module and tensor")
            seen[id(t)] = i
            if span is not None:
                spans.append((i, span))
    in_opt = None
    if isinstance(optimizer, torch.optim.Optimizer):
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for i, m in enumerate(model):
        for n, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                raise ValueError(f"model layer {i}'s {n} has requires_grad=False; fastbp trains every parameter "
                                 f"of the model (frozen parameters are not supported)")
            if in_opt is not None and id(p) not in in_opt:
                raise ValueError(f"model layer {i}'s {n} is not in the optimizer's parameter groups; fastbp "
                                 f"trains every parameter of the model (give the optimizer model.parameters())")
