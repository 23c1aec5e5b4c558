"""Keep a PyTorch model and optimizer current while a :func:`fastbp.from_torch` step trains them.

The step holds the optimizer state (momentum buffers, Adam's moments, the step counts) and
each ``BatchNorm1d``'s ``num_batches_tracked`` in its own arena; the torch objects see them
when :meth:`~fastbp.torch_interop.TorchTrainStep.sync_to_torch` writes them.  So that PyTorch
never reads stale values after fused steps (``opt.step()``, which would go on from the state
of the last sync; ``opt.state_dict()`` and ``model.state_dict()``, which would save it; a
train-mode ``BatchNorm1d`` forward, whose cumulative average reads the count), the step
registers PyTorch hooks that sync first, when fused steps ran since the last sync:

- the optimizer's step pre-hook and state-dict pre-hook;
- the model's state-dict pre-hook;
- a forward pre-hook on each ``BatchNorm1d`` with running statistics.

A later ``from_torch`` of the same model or optimizer brings the earlier step's state over
first, then removes its hooks: the newest step owns them, and the earlier step refuses to
train, predict or sync from then on.  The hooks hold the step weakly
and act on the object they were registered on only (a ``copy.deepcopy`` or a pickle of the
model carries them, inert).  ``from_torch`` does not count them as the user's hooks.
"""
from __future__ import annotations

import weakref

__all__ = ["attach", "release", "is_sync_hook", "check_user_hooks", "global_hook_dicts", "check_global_hooks"]

#: for each model, module and optimizer a step hooks: (the step, weakly; its hook handles)
_OWNERS = weakref.WeakKeyDictionary()


def is_sync_hook(fn):
    """Whether ``fn`` is one of the hooks this module registers."""
    return getattr(fn, "_fastbp_sync", False)


class _SyncFirst:
    """The hook: ``step._sync_if_behind()`` when called on ``target`` while ``step`` lives.
    Copied or pickled (``copy.deepcopy(model)``, ``torch.save(model)``) it becomes inert:
    the copy is not the step's."""
    _fastbp_sync = True

    def __init__(self, step=None, target=None):
        self._step = weakref.ref(step) if step is not None else None
        self._target = weakref.ref(target) if target is not None else None

    def __call__(self, obj, *args):
        step = self._step() if self._step is not None else None
        if step is not None and obj is self._target():
            step._sync_if_behind()

    def __reduce__(self):
        return (_SyncFirst, ())


def release(*targets, remove=True):
    """Before another step takes ``targets`` (a model, its modules, an optimizer): the
    earlier step's unsynced state is written into them and (``remove``) its hooks removed."""
    for target in targets:
        if target is None or target not in _OWNERS:
            continue
        step_ref, handles = _OWNERS.pop(target) if remove else _OWNERS[target]
        step = step_ref()
        if step is not None:
            step._sync_if_behind()
            if remove:
                step._taken = True      # its calls are refused from now on
        for h in handles if remove else ():
            h.remove()


def attach(step, model, optimizer, norm_modules):
    """Register the hooks of ``step`` (see the module docstring) on ``model``, each module of
    ``norm_modules`` (BatchNorm1d with running statistics) and ``optimizer`` (a torch
    optimizer or None)."""
    ref = weakref.ref(step)
    release(model, optimizer, *norm_modules)
    for m in norm_modules:
        _OWNERS[m] = (ref, [m.register_forward_pre_hook(_SyncFirst(step, m))])
    _OWNERS[model] = (ref, [model.register_state_dict_pre_hook(_SyncFirst(step, model))])
    if optimizer is not None:
        _OWNERS[optimizer] = (ref, [optimizer.register_step_pre_hook(_SyncFirst(step, optimizer)),
                                    optimizer.register_state_dict_pre_hook(_SyncFirst(step, optimizer))])


def check_user_hooks(m, what):
    """Refuse a module with forward or backward hooks, or a parameter tensor with gradient
    hooks (``p.register_hook``, ``p.register_post_accumulate_grad_hook``: the usual way to
    mask or freeze part of a weight): the fused step cannot run them (torch.nn.utils.weight_norm's
    pre-hook computes the weight the step would train).  The hooks :func:`attach` registers
    are not the user's."""
    for attr in ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks"):
        if any(not is_sync_hook(h) for h in (getattr(m, attr, None) or {}).values()):
            raise ValueError(f"{what} has {attr.strip('_').replace('_', ' ')} (such as "
                             f"torch.nn.utils.weight_norm's); the fused step cannot run them")
    for name, p in m.named_parameters(recurse=False):
        for attr, how in (("_backward_hooks", "register_hook"),
                          ("_post_accumulate_grad_hooks", "register_post_accumulate_grad_hook")):
            if getattr(p, attr, None):
                raise ValueError(f"{what}'s parameter {name!r} has a gradient hook ({how}); the fused "
                                 f"step cannot run it (remove it, or train in PyTorch)")


_MODULE = "torch.nn.modules.module"
_OPTIM = "torch.optim.optimizer"
#: PyTorch's global hooks, run for every module call or every optimizer step: (module, its
#: dictionary of them, the function that registers them, whether they are an optimizer's)
_GLOBAL_HOOKS = (
    (_MODULE, "_global_forward_pre_hooks", f"{_MODULE}.register_module_forward_pre_hook", False),
    (_MODULE, "_global_forward_hooks", f"{_MODULE}.register_module_forward_hook", False),
    (_MODULE, "_global_backward_pre_hooks", f"{_MODULE}.register_module_full_backward_pre_hook", False),
    (_MODULE, "_global_backward_hooks",
     f"{_MODULE}.register_module_full_backward_hook (or register_module_backward_hook)", False),
    (_OPTIM, "_global_optimizer_pre_hooks", f"{_OPTIM}.register_optimizer_step_pre_hook", True),
    (_OPTIM, "_global_optimizer_post_hooks", f"{_OPTIM}.register_optimizer_step_post_hook", True),
)


def global_hook_dicts(optimizer=True):
    """PyTorch's dictionaries of global hooks (those this PyTorch has), each with the function
    that registers into it: ``[(dict, name), ...]``; the optimizers' too where ``optimizer``.
    The dictionaries are module globals that PyTorch changes in place (their sizes are the
    :class:`fastbp._torch_guard.Guard`'s to compare)."""
    import importlib
    found = []
    for module, attr, how, of_optimizer in _GLOBAL_HOOKS:
        if of_optimizer and not optimizer:
            continue
        table = getattr(importlib.import_module(module), attr, None)
        if isinstance(table, dict):
            found.append((table, how))
    return found


def check_global_hooks(optimizer=True):
    """Refuse while PyTorch has a global module hook (it would run at every module's forward or
    backward) or, where ``optimizer`` (a torch optimizer's step is replaced), a global optimizer
    step hook: the fused step cannot run them."""
    for table, how in global_hook_dicts(optimizer):
        if table:
            raise ValueError(f"PyTorch has a global hook ({how}), which it would run in every module call or "
                             f"optimizer step; the fused step cannot run it: remove it (handle.remove()), or "
                             f"train in PyTorch")
