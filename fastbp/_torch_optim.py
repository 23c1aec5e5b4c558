"""The fastbp optimizer a ``torch.optim`` optimizer is (for :func:`fastbp.from_torch`).

:func:`optimizer_of` reads a torch ``SGD``, ``Adam``, ``AdamW`` or ``RMSprop`` (the exact
update of those classes: a subclass that overrides ``step`` computes something else and is
refused) and its parameter groups into the fastbp optimizer that updates as it does, or
refuses what fastbp does not implement with a ValueError naming the hyper-parameter.

PyTorch is passed in (``torch``): importing this module does not import it.
"""
from __future__ import annotations

import inspect

from .optimizers import Adam, AdamW, RMSprop, SGD

__all__ = ["HYPER_KEYS", "plain", "optimizer_of"]


#: the torch optimizers' hyper-parameters besides the rate that fastbp reads (and compiles in)
HYPER_KEYS = ("momentum", "nesterov", "weight_decay", "dampening", "betas", "eps", "alpha", "centered",
               "maximize", "amsgrad", "decoupled_weight_decay")


def plain(v):
    """A hyper-parameter's value to compare: a tuple for a list or tuple (torch's schedulers
    write ``betas`` back as a tuple), a float for a one-element tensor."""
    if isinstance(v, (list, tuple)):
        return tuple(plain(e) for e in v)
    if hasattr(v, "numel") and hasattr(v, "item") and v.numel() == 1:
        return float(v.item())
    return v


def _decay_1d_of(groups):
    """``False`` (weight decay on the matrices only) for torch parameter groups that differ
    in ``weight_decay`` alone, as the usual two groups do: one value ``wd > 0`` on exactly
    the parameters of 2 or more dimensions, 0 on the others; ``True`` otherwise (groups
    that differ are then refused by the caller)."""
    wds = [float(g.get("weight_decay", 0.0)) for g in groups]
    decayed = {w for w in wds if w != 0.0}
    if len(decayed) != 1 or 0.0 not in wds:
        return True
    for g, w in zip(groups, wds):
        if any((p.dim() >= 2) != (w != 0.0) for p in g["params"]):
            return True
    return False


def optimizer_of(opt, torch):
    """A fastbp optimizer from a torch.optim instance (its hyper-parameters)."""
    if opt is None or isinstance(opt, (SGD, Adam, RMSprop)):
        return opt if opt is not None else SGD(lr=0.01)
    optim = torch.optim
    if not isinstance(opt, (optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop)):
        raise ValueError(f"optimizer: {type(opt).__name__} is not supported; use torch.optim.SGD, Adam, AdamW, "
                         f"RMSprop or a fastbp optimizer")
    kind = type(opt)
    base = next(c for c in kind.__mro__ if c in (optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop))
    # (torch.optim wraps a class's step for its profiler when the first instance is made:
    # compare the functions under the wrappers)
    if inspect.unwrap(kind.step) is not inspect.unwrap(base.step):
        raise ValueError(f"optimizer: {kind.__name__} overrides {base.__name__}.step, so its update may not be "
                         f"{base.__name__}'s, which is what the fused step would compute; use torch.optim."
                         f"{base.__name__} itself (or a subclass that keeps its step), or train in PyTorch")
    groups = opt.param_groups
    keys = ("lr",) + HYPER_KEYS
    first = {k: groups[0].get(k) for k in keys}
    decay_1d = _decay_1d_of(groups)
    for i, g in enumerate(groups[1:], 1):
        diff = [k for k in keys if g.get(k) != first[k] and (k != "weight_decay" or decay_1d)]
        if diff:
            raise ValueError(f"optimizer: parameter group {i} has {diff[0]}={g.get(diff[0])!r} and group 0 "
                             f"{diff[0]}={first[diff[0]]!r}; fastbp trains every parameter with the same "
                             f"hyper-parameters (but for weight_decay=0 on exactly the parameters of fewer "
                             f"than 2 dimensions: decay_1d=False)")
    g = dict(groups[0], weight_decay=max(float(h.get("weight_decay", 0.0)) for h in groups))
    if g.get("maximize"):
        raise ValueError("optimizer: maximize=True is not supported")
    lr = float(g["lr"])
    if isinstance(opt, optim.SGD):
        if g.get("dampening", 0):
            raise ValueError("optimizer: SGD dampening is not supported")
        return SGD(lr, momentum=g.get("momentum", 0.0), nesterov=g.get("nesterov", False),
                   weight_decay=g.get("weight_decay", 0.0), decay_1d=decay_1d)
    if isinstance(opt, optim.RMSprop):
        return RMSprop(lr, alpha=g["alpha"], eps=g["eps"], weight_decay=g.get("weight_decay", 0.0),
                       momentum=g.get("momentum", 0.0), centered=g.get("centered", False), decay_1d=decay_1d)
    if g.get("amsgrad"):
        raise ValueError("optimizer: amsgrad is not supported")
    if isinstance(opt, optim.AdamW) or g.get("decoupled_weight_decay"):     # Adam(decoupled_weight_decay=True)
        return AdamW(lr, betas=plain(tuple(g["betas"])), eps=g["eps"], weight_decay=g.get("weight_decay", 0.0),
                     decay_1d=decay_1d)
    return Adam(lr, betas=plain(tuple(g["betas"])), eps=g["eps"], weight_decay=g.get("weight_decay", 0.0), decay_1d=decay_1d)
