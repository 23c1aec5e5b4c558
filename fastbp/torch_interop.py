"""``fastbp.from_torch``: a fused fastbp step for an existing PyTorch MLP.

PyTorch is optional: it is imported only when :func:`from_torch` is called.
"""
from __future__ import annotations

import numpy as np

from .layers import BatchNorm1d, Dropout, LayerNorm, Linear, Sequential, layer_class
from . import _isa as ex
from .registry import activations as _acts
from .registry import losses as _losses
from .step import TrainStep
from ._torch_state import export_state, import_state, record, torch_moved, watch
from ._torch_guard import Guard, check_optimizer_hooks, check_trainable, param_keys
from ._torch_hooks import attach, check_global_hooks, check_user_hooks, release
from ._torch_optim import HYPER_KEYS, optimizer_of, plain

__all__ = ["from_torch", "TorchTrainStep"]


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ImportError("fastbp.from_torch needs PyTorch: pip install torch") from None
    return torch


class TorchTrainStep(TrainStep):
    """A :class:`~fastbp.TrainStep` whose weights ARE the PyTorch model's parameters.

    The model's ``Parameter`` objects keep their identity; their storage is
    fastbp's arena (shared through the buffer protocol, no copy per step),
    so ``model(x)`` always sees the weights the last ``step(x, y)`` wrote,
    and ``p.grad`` holds the last step's gradients (linked again by each call
    after ``opt.zero_grad()`` or a torch ``backward()`` replaced it).  ``x`` and ``y`` may be
    CPU tensors or numpy arrays.
    """

    #: the torch optimizer the step was made from (None: a fastbp optimizer or none), the
    #: learning rate last taken from its ``param_groups``, and its parameters by state key
    _torch_opt = None
    _torch_lr = None
    _torch_params = ()
    _torch_step0 = (0.0, 0)
    #: the torch optimizer's other hyper-parameters when the step was made (fastbp compiled them
    #: in), per parameter group
    _torch_hyper = ()
    #: the BatchNorm1d modules whose num_batches_tracked the step follows and writes: (prefix,
    #: module, its num_batches_tracked tensor, the int64 array under it, the step's count), and
    #: by prefix (the count tensor, its _version) when the step last read or wrote it
    _torch_counts = ()
    _torch_count_seen = {}
    #: (parameter, the tensor over its gradient in the step's arena) for each model parameter
    _torch_grads = ()
    #: the torch state tensors sync_to_torch wrote, with their versions (fastbp._torch_state.record)
    _torch_synced = ()
    #: n_steps when the torch objects last held the step's state (fastbp._torch_hooks)
    _synced_at = 0
    #: what the step was compiled from (fastbp._torch_guard.Guard), checked before each call
    _torch_guard = None
    #: a later from_torch took the model or optimizer (fastbp._torch_hooks.release)
    _taken = False
    #: the torch loss class whose target must have the output's shape (MSELoss,
    #: BCEWithLogitsLoss given as modules), else None
    _torch_loss_cls = None

    def _check_model(self, training=True):
        """A ValueError naming what changed in the torch model since the step was compiled
        (a module or parameter replaced, a parameter frozen, a hook added, ...: see
        :mod:`fastbp._torch_guard`), before anything changes; eval mode only if ``training``."""
        if self._taken:
            _refuse_taken()
        if self._torch_guard is not None:
            self._torch_guard.check(training)

    def _follow_torch(self):
        """Before a training call: the model is still the one compiled (:meth:`_check_model`);
        what plain PyTorch training changed since the step last wrote it there
        (:meth:`_follow_torch_state`), then the optimizer's learning rate."""
        self._check_model()
        self._follow_torch_state()
        self._follow_torch_lr()

    def _follow_torch_state(self):
        """The torch optimizer's state, when PyTorch stepped it (or replaced it) since
        :meth:`sync_to_torch` wrote it there (a stretch of plain PyTorch training between
        fused steps: fastbp went on with its own older momentum or moments, and the next
        sync overwrote PyTorch's); and each ``BatchNorm1d``'s ``num_batches_tracked``, when
        PyTorch changed it since the step last read or wrote it (a train-mode forward, whose
        hook synced first, ``load_state_dict``, ``reset_running_stats()``): the module's count
        is the count from then on."""
        with self._lock:
            for prefix, m, _, _, count in self._torch_counts:
                t = m.num_batches_tracked
                seen = self._torch_count_seen.get(prefix)
                if t is not None and (seen is None or t is not seen[0] or t._version != seen[1]):
                    count[0] = int(t)
                    self._torch_count_seen[prefix] = (t, t._version)
            if self._torch_synced and torch_moved(self._torch_synced, self._torch_opt):
                import_state(self._torch_opt, self._torch_params, self, _torch())
                self._torch_synced = record(self._torch_synced, self._torch_opt)

    def _before_save(self):
        """Before a checkpoint or bundle is written: the state the next call would train from
        (PyTorch's own steps since the last sync, a rate a torch scheduler set since)."""
        self._follow_torch_state()
        self._follow_torch_lr(check_hyper=False)

    def _follow_torch_lr(self, check_hyper=True):
        """Take the torch optimizer's current ``param_groups`` learning rate when it changed
        since the step last read it (a ``torch.optim.lr_scheduler`` stepped it, or the user
        set it), as ``opt.step()`` would use it.  ``step.lr = v`` set on the step stays in
        force until the torch rate changes again.  With ``check_hyper``, a ValueError if
        another hyper-parameter changed there (the step cannot follow it)."""
        opt = self._torch_opt
        if opt is None:
            return
        lrs = {float(g["lr"]) for g in opt.param_groups}
        if len(lrs) != 1:
            raise ValueError(f"optimizer: its parameter groups now have different learning rates "
                             f"{sorted(lrs)}; fastbp trains every parameter with one rate")
        lr = lrs.pop()
        for g, hyper in zip(opt.param_groups, self._torch_hyper) if check_hyper else ():
            for k, v in hyper:
                w = g.get(k)
                if w != v and plain(w) != v:       # (plain only for another container: once per step)
                    raise ValueError(
                        f"optimizer: its param_groups' {k} is now {g.get(k)!r}, was {v!r} when the step was "
                        f"made; the step keeps the hyper-parameters it was compiled with and follows only the "
                        f"learning rate (a torch scheduler that cycles momentum or betas, such as OneCycleLR "
                        f"or CyclicLR, needs cycle_momentum=False); nothing was changed")
        if lr != self._torch_lr:
            self.lr = lr                 # validates (> 0, finite)
            self._torch_lr = lr

    def sync_to_torch(self):
        """Write the optimizer state into the torch optimizer's ``opt.state``, in PyTorch's layout,
        and each ``BatchNorm1d``'s ``num_batches_tracked`` into the module.

        Per parameter: SGD ``momentum_buffer`` (with momentum), Adam/AdamW ``step``,
        ``exp_avg``, ``exp_avg_sq``, RMSprop ``step``, ``square_avg``,
        ``momentum_buffer`` (with momentum), ``grad_avg`` (centered); copies, so a
        plain PyTorch loop continues exactly where the fused step stopped.  The
        parameter group's ``lr`` is set to the step's current rate, :attr:`lr`
        (which first follows a rate a torch scheduler or the user set in
        ``param_groups`` since the last step, so that rate is kept).  (The weights
        and the running statistics need no copy: the modules' tensors are the
        step's own storage.)  A step made without a torch optimizer writes only
        the ``num_batches_tracked`` counts.

        Returns
        -------
        TorchTrainStep
            ``self``.
        """
        torch = _torch()
        if self._taken:
            _refuse_taken()
        self._follow_torch_state()      # PyTorch's own steps since the last sync are kept
        self._synced_at = self.n_steps
        with self._lock:
            self._publish_counts()
        opt = self._torch_opt
        if opt is None:
            return self
        self._follow_torch_lr(check_hyper=False)    # a scheduler's rate set after the last step wins
        with self._lock:
            self._torch_synced = export_state(self, opt, torch)
            lr = float(self.hyper[ex.H_LR])
            for g in opt.param_groups:
                g["lr"] = lr
            self._torch_lr = lr
        return self

    def close(self):
        """Hand the training back to PyTorch: :meth:`sync_to_torch`."""
        self.sync_to_torch()

    def _sync_if_behind(self):
        """:meth:`sync_to_torch` if fused updates ran since the last one (PyTorch's hooks)."""
        if self.n_steps != self._synced_at:
            self.sync_to_torch()

    def _np(self, t, name):
        torch = _torch()
        if isinstance(t, torch.Tensor):
            if t.device.type != "cpu":
                raise ValueError(f"{name} is on {t.device}; fastbp.from_torch steps run on the CPU")
            want = torch.float32 if self.dtype == np.float32 else torch.float64
            if t.dtype != want and (name in ("x", "X") or t.dtype == torch.bfloat16):  # (numpy has no bf16)
                raise TypeError(f"{name} has dtype {t.dtype}; this step was compiled for {want} (convert "
                                f"with {name}.{'float' if want == torch.float32 else 'double'}())")
            t = t.detach().numpy()
        if self._torch_loss_cls and name in ("y", "Y", "validation_data[1]") and np.ndim(t) != 2:
            shape = np.shape(t)
            how = ("broadcast them, with a warning, rather than compare them row by row" if self._torch_loss_cls == "MSELoss"
                   else "refuse them")
            raise ValueError(f"{name} has shape {shape} and the model's output (n, {self.n_out}): "
                             f"torch.nn.{self._torch_loss_cls} needs the target's shape to equal the output's "
                             f"(PyTorch would {how}); pass {name} of shape (n, {self.n_out}), such as "
                             f"{name}.reshape(-1, {self.n_out})")
        return t

    def __call__(self, x, y, sample_weight=None):
        """:meth:`fastbp.TrainStep.__call__` on tensors or arrays, at the torch optimizer's
        current learning rate (see :func:`from_torch`)."""
        self._follow_torch()
        sw = None if sample_weight is None else self._np(sample_weight, "sample_weight")
        loss = super().__call__(self._np(x, "x"), self._np(y, "y"), sw)
        self._torch_stepped()
        return loss

    def _run(self, x, y, mode, sample_weight=None):
        sw = None if sample_weight is None else self._np(sample_weight, "sample_weight")
        return super()._run(self._np(x, "x"), self._np(y, "y"), mode, sw)

    def loss_and_grads(self, x, y, sample_weight=None):
        """:meth:`fastbp.TrainStep.loss_and_grads` on tensors or arrays; ``p.grad`` holds the gradients."""
        self._check_model()
        loss = super().loss_and_grads(x, y, sample_weight)
        self._link_grads()
        self._publish_counts()
        return loss

    def _link_grads(self):
        """Each ``p.grad`` the tensor over the step's gradient again, after ``opt.zero_grad()``
        set it to None or a torch ``backward()`` replaced it."""
        for p, g in self._torch_grads:
            if p.grad is not g:
                p.grad = g

    def _torch_stepped(self):
        """Tell a torch lr scheduler that the optimizer stepped (the step replaces
        ``opt.step()``; else ``scheduler.step()`` warns that it came first), link
        ``p.grad`` to the step's gradients (:meth:`_link_grads`) and write the BatchNorm
        counts into the modules (:meth:`_publish_counts`)."""
        if self._torch_opt is not None:
            self._torch_opt._opt_called = True
        self._link_grads()
        self._publish_counts()

    def _publish_counts(self):
        """Each ``BatchNorm1d``'s ``num_batches_tracked`` (an int64 tensor over an array of the
        step's, see :func:`_share_running`) set to the step's count after a call, so that
        ``copy.deepcopy(model)``, ``torch.save(model)`` and a hook-free forward read it too.
        (A plain numpy write: torch's ``_version`` of the tensor does not move, so
        :meth:`_follow_torch_state` does not take it for PyTorch's.)  A count tensor the user
        put in place of it is written with ``fill_`` (its new version recorded)."""
        for prefix, m, shared, arr, count in self._torch_counts:
            t = m._buffers.get("num_batches_tracked")
            if t is shared:
                arr[...] = count[0]
            elif t is not None:
                t.fill_(int(count[0]))
                self._torch_count_seen[prefix] = (t, t._version)

    @property
    def lr(self):
        """The learning rate of the next update (settable); with a torch optimizer, its current
        ``param_groups`` rate once that changed (see :func:`from_torch`)."""
        self._follow_torch_lr()
        return float(self.hyper[ex.H_LR])

    @lr.setter
    def lr(self, value):
        TrainStep.lr.fset(self, value)

    def fit(self, X, Y, epochs=1, shuffle=True, seed=None, validation_data=None, **kwargs):
        """:meth:`fastbp.TrainStep.fit` (same arguments) on tensors or arrays."""
        if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            validation_data = (self._np(validation_data[0], "validation_data[0]"),
                               self._np(validation_data[1], "validation_data[1]"))
        self._follow_torch()
        try:
            return super().fit(self._np(X, "X"), self._np(Y, "Y"), epochs=epochs, shuffle=shuffle, seed=seed,
                               validation_data=validation_data, **kwargs)
        finally:        # (also after an interrupted fit: the epochs it finished stand)
            self._torch_stepped()

    def predict(self, X):
        """:meth:`fastbp.TrainStep.predict` on a tensor or array (eval mode's outputs, in
        either mode of the model)."""
        self._check_model(training=False)
        return super().predict(self._np(X, "X"))


def _refuse_taken():
    raise ValueError("a later from_torch of this step's model or optimizer took them over (it brought this "
                     "step's state with it): this step no longer trains, predicts or syncs them; use the newer step")


def _loss_name(loss, torch):
    """The fastbp loss a torch loss module computes, or a ValueError naming the
    argument (of the module) that fastbp does not implement.

    Only the exact classes (a subclass may compute something else) with
    every argument at the value fastbp implements: ``reduction="mean"``, no
    ``weight``/``pos_weight``, ``ignore_index=-100`` (fastbp rejects negative
    labels instead of ignoring them, so no label is silently skipped) and
    ``label_smoothing=0``.
    """
    if isinstance(loss, str):
        return loss
    # the torch classes of the loss registry, with the arguments fastbp implements
    supported = {getattr(torch.nn, e.torch): (e.name, e.torch_args) for e in _losses.entries()
                 if e.torch is not None and hasattr(torch.nn, e.torch)}
    kind = type(loss)
    if not isinstance(loss, torch.nn.Module):
        raise TypeError(f"loss must be a fastbp loss name or a torch loss module, got {kind.__name__}")
    if kind not in supported:
        names = ", ".join(c.__name__ for c in supported)
        raise ValueError(f"loss: {kind.__name__} has no fastbp equivalent; use torch.nn.{names} "
                         f"(not subclasses) or a fastbp loss name")
    name, wanted = supported[kind]
    for attr, want in wanted:
        got = getattr(loss, attr, want)
        same = got is None if want is None else (not isinstance(got, torch.Tensor) and got == want)
        if not same:
            shown = f"a {tuple(got.shape)} tensor" if isinstance(got, torch.Tensor) else repr(got)
            raise ValueError(f"loss: {kind.__name__}({attr}={shown}) is not supported; fastbp implements "
                             f"{kind.__name__} only with {attr}={want!r}")
    return name


def _refuse_eval_mode(m, i, matters, does):
    """A ValueError naming layer ``i`` if ``m`` is in eval mode where its mode changes what it
    computes (``matters``): the fused step computes what PyTorch's train mode does (``does``)."""
    if matters and not m.training:
        raise ValueError(f"model layer {i} ({type(m).__name__}) is in eval mode (training=False), but the "
                         f"fused step trains as PyTorch's train mode does ({type(m).__name__} {does}): call "
                         f"model.train() before from_torch")


def from_torch(model, loss="softmax_cross_entropy", optimizer=None, batch_size=64, seed=0, clip_grad_norm=None,
               precision="full"):
    """Compile an existing ``torch.nn.Sequential`` into a fused fastbp step.

    Parameters
    ----------
    model : torch.nn.Sequential
        Of ``Linear`` modules, ``Dropout`` (``inplace`` is ignored; the masks are
        fastbp's own generator's), ``LayerNorm`` and ``BatchNorm1d`` (their
        weights and running statistics shared as the Linear weights are) and the
        activation modules of fastbp's activation registry (``ReLU``,
        ``Sigmoid``, ``Tanh``, ..., with their parameters), on the CPU, all
        float32 or all float64.  In train mode: the step trains as
        ``model.train()`` does, so a ``Dropout`` (``p > 0``) or a ``BatchNorm1d``
        with running statistics in eval mode is a ``ValueError`` (call
        ``model.train()`` first); ``step.predict`` computes eval mode's outputs.
    loss : str or torch loss module
        A fastbp loss name, or ``CrossEntropyLoss`` / ``MSELoss`` /
        ``BCEWithLogitsLoss`` (mean reduction).
    optimizer : torch.optim.SGD, Adam, AdamW or RMSprop, or a fastbp optimizer
        Its hyper-parameters (and, if it has already taken steps, its
        momentum / moment buffers and step count) are taken over
        (``Adam(decoupled_weight_decay=True)`` is AdamW).  The step trains
        every parameter of the model with one set of hyper-parameters: a
        parameter with ``requires_grad=False`` or missing from the torch
        optimizer's groups, groups that differ in anything but their
        parameters, and a parameter shared by two layers (tied weights, one
        module used twice) are refused with a ``ValueError``; but groups that
        differ in ``weight_decay`` alone, one value on exactly the parameters
        of 2 or more dimensions and 0 on the others (the usual split), are
        trained as the optimizer's ``decay_1d=False``.  A hyper-parameter
        given as a one-element tensor (``lr=torch.tensor(0.01)``) is taken
        as its value; PyTorch's Adam and AdamW compute their step size and
        bias corrections from float32 tensors in float32 (``1 - 0.999**t``
        keeps about 5 significant digits there), fastbp from the values in
        float64, so their updates then differ in about the 6th digit with
        tensor ``betas`` (the 8th with a tensor ``lr``); float64 tensors
        agree to rounding.  A torch
        optimizer stays linked: each call of the step (and each ``fit``) uses
        its current ``param_groups`` learning rate when that changed, so a
        ``torch.optim.lr_scheduler`` stepped between calls works as with
        ``opt.step()``; ``step.sync_to_torch()`` (and ``step.close()``) write
        the optimizer state back into ``opt.state``, as PyTorch's ``opt.step()``,
        ``opt.state_dict()``, ``model.state_dict()`` and a train-mode
        ``BatchNorm1d`` forward do first after fused steps (hooks, see
        :mod:`fastbp._torch_hooks`).
    batch_size : int, default 64
    seed : int, default 0
        Seeds the shuffling of ``fit`` and the dropout masks.
    clip_grad_norm : float, optional
        What ``torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)``
        before each ``opt.step()`` does (a torch optimizer does not know it).
    precision : {"full", "bf16", "auto"}, default "full"
        As in :func:`fastbp.compile` (``"bf16"``: float32 models only; the
        products on bfloat16 copies, the torch parameters stay float32).

    Returns
    -------
    TorchTrainStep
        ``loss = step(x, y)`` replaces ``opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()``.
        The model's own parameter tensors are updated in place.

    Raises
    ------
    TypeError, ValueError
        What the step cannot train as PyTorch would (naming the layer, parameter, group or
        option); also an optimizer subclass that overrides ``step``, an optimizer step hook,
        a module hook or a global one of PyTorch's (``register_module_forward_hook``, and with
        a torch optimizer ``register_optimizer_step_pre_hook``), and (``MSELoss``,
        ``BCEWithLogitsLoss`` modules) a target of another shape than the output at a call.
        The step is compiled from the model as found here: a later change PyTorch allows (a
        module or parameter replaced, ``p.data`` set, ``requires_grad_(False)``,
        a hook added, a setting such as ``Dropout.p`` changed, ``model.eval()`` where the mode
        matters, a later ``from_torch`` of the same model) is a ValueError at the next call,
        before anything changes (:mod:`fastbp._torch_guard`).
    """
    torch = _torch()
    from .optimizers import clip_grad_norm_arg
    clip = clip_grad_norm_arg(clip_grad_norm, owner="from_torch")
    if not isinstance(model, torch.nn.Sequential):
        raise TypeError(f"model must be a torch.nn.Sequential, got {type(model).__name__}")
    torch_opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    # an earlier step of this model or optimizer: its state first (what this one starts from)
    release(model, *model.children(), torch_opt, remove=False)
    layers, names = [], []
    dtypes = set()
    # the activation modules fastbp has: from the registry (exact classes only)
    kinds = {getattr(torch.nn, e.torch): e for e in _acts.layer_entries()
             if e.torch is not None and hasattr(torch.nn, e.torch)}
    check_user_hooks(model, "model")
    check_optimizer_hooks(torch_opt)
    check_global_hooks(torch_opt is not None)
    compiled = []       # each layer: (module, the attributes compiled in, whether its train mode matters)
    for i, m in enumerate(model):
        check_user_hooks(m, f"model layer {i}")
        compiled.append((m, (), False))
        if type(m) is torch.nn.Linear:
            for p in m.parameters():
                if p.device.type != "cpu":
                    raise ValueError(f"model layer {i} is on {p.device}; from_torch needs a CPU model")
                dtypes.add(p.dtype)
            layers.append(Linear(m.in_features, m.out_features, bias=m.bias is not None, _layout="out_in"))
            names.append((str(i), m))
        elif type(m) is torch.nn.Dropout:
            # inplace=True is accepted: it changes nothing here (fastbp writes its own buffer);
            # the mask is fastbp's generator's, not torch's (the same distribution)
            _refuse_eval_mode(m, i, m.p > 0, "drops units")
            layers.append(Dropout(m.p))
            compiled[-1] = (m, ("p",), m.p > 0)
        elif type(m) in kinds:
            entry = kinds[type(m)]
            kw = {p.name: getattr(m, p.name) for p in entry.params}
            if entry.choice is not None:        # nn.GELU(approximate=...)
                kw[entry.choice.name] = getattr(m, entry.choice.name)
            layers.append(layer_class(entry)(**kw))
            compiled[-1] = (m, tuple(kw), False)
        elif type(m) in (torch.nn.LayerNorm, torch.nn.BatchNorm1d):
            layers.append(_norm_layer(m, i, torch))
            compiled[-1] = ((m, ("eps",), False) if type(m) is torch.nn.LayerNorm else
                            (m, ("eps", "momentum", "track_running_stats"), layers[-1].track_running_stats))
            for p in list(m.parameters()) + [b for b in m.buffers() if b.is_floating_point()]:
                if p.device.type != "cpu":
                    raise ValueError(f"model layer {i} is on {p.device}; from_torch needs a CPU model")
                dtypes.add(p.dtype)
            names.append((str(i), m))
        else:
            names = ", ".join(["Linear", "Dropout"] + [c.__name__ for c in kinds] + ["LayerNorm", "BatchNorm1d"])
            sub = next((c.__name__ for c in (torch.nn.Linear, torch.nn.Dropout, torch.nn.LayerNorm,
                                               torch.nn.BatchNorm1d, *kinds) if isinstance(m, c)), None)
            why = (f" (a subclass of {sub}, or a parametrized one such as weight_norm's: it may compute "
                   f"something else)" if sub else "")
            raise ValueError(f"model layer {i} is a {type(m).__name__}{why}; from_torch supports exactly {names}")
    check_trainable(model, optimizer, torch)
    if not dtypes:
        raise ValueError("model has no parameters to train: from_torch compiles a training step, "
                         "which needs a layer with parameters (Linear, or an affine LayerNorm or BatchNorm1d)")
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        raise TypeError(f"model parameters must all be float32 or all float64, got {sorted(map(str, dtypes))}")
    dtype = np.float32 if dtypes == {torch.float32} else np.float64
    fb_model = Sequential(*layers)
    params = {}
    with torch.no_grad():
        for prefix, m in names:
            if not isinstance(m, torch.nn.Linear):
                _norm_params(m, prefix, params, torch)
                continue
            params[f"{prefix}.W"] = m.weight.detach().numpy().astype(np.float64)
            if m.bias is not None:
                params[f"{prefix}.b"] = m.bias.detach().numpy().astype(np.float64)
    step = TorchTrainStep(fb_model, _loss_name(loss, torch), optimizer_of(optimizer, torch), batch_size, dtype,
                          seed, _params=params, precision=precision)
    step._torch_grads = []
    # exact copy of the weights (the float64 round trip above is exact), then share storage
    with torch.no_grad():
        for prefix, m in names:
            if not isinstance(m, torch.nn.Linear):
                _share_running(m, prefix, step, torch)
            for attr, key in param_keys(m, torch):
                p = getattr(m, attr)
                if p is None:
                    continue
                live = step.params[f"{prefix}.{key}"]
                live[...] = p.detach().numpy()
                p.data = torch.from_numpy(live)
                p.grad = torch.from_numpy(step.grads[f"{prefix}.{key}"])
                step._torch_grads.append((p, p.grad))
    pairs = [(getattr(m, attr), f"{prefix}.{key}") for prefix, m in names
             for attr, key in param_keys(m, torch) if getattr(m, attr) is not None]
    import_state(optimizer, pairs, step, torch)
    step.clip_grad_norm = clip or None
    if torch_opt is not None:
        step._torch_opt = optimizer
        step._torch_lr = float(optimizer.param_groups[0]["lr"])
        step._torch_hyper = tuple(tuple((k, plain(g[k])) for k in HYPER_KEYS if k in g)
                                  for g in optimizer.param_groups)
        step._torch_params = pairs
        step._torch_synced = watch(step, optimizer)     # PyTorch's steps before the first sync: followed
    step._torch_counts = [(prefix, m, m.num_batches_tracked, m.num_batches_tracked.numpy(),
                           step.buffers[f"{prefix}.num_batches_tracked"]) for prefix, m in names
                          if isinstance(m, torch.nn.BatchNorm1d) and m.running_mean is not None
                          and m.num_batches_tracked is not None]
    step._torch_count_seen = {prefix: (shared, shared._version) for prefix, _, shared, _, _ in step._torch_counts}
    attach(step, model, step._torch_opt, [m for _, m, *_ in step._torch_counts])
    step._torch_guard = Guard(model, compiled, torch_opt)
    if type(loss) in (torch.nn.MSELoss, torch.nn.BCEWithLogitsLoss):
        step._torch_loss_cls = type(loss).__name__
    return step


def _norm_layer(m, i, torch):
    """The fastbp layer of a ``torch.nn.LayerNorm`` / ``BatchNorm1d`` (exact classes)."""
    if isinstance(m, torch.nn.LayerNorm):
        if len(m.normalized_shape) != 1:
            raise ValueError(f"model layer {i}: LayerNorm{tuple(m.normalized_shape)}: fastbp normalises the last "
                             f"dimension only (normalized_shape of one int)")
        has_bias = getattr(m, "bias", None) is not None or not m.elementwise_affine
        return LayerNorm(m.normalized_shape[0], eps=m.eps, elementwise_affine=m.elementwise_affine, bias=has_bias)
    tracks = m.track_running_stats and m.running_mean is not None
    _refuse_eval_mode(m, i, tracks, "normalises with each minibatch's statistics and updates the running ones")
    return BatchNorm1d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=tracks)


def _norm_params(m, prefix, params, torch):
    """The initial values of a norm layer: weight, bias and the running statistics."""
    if m.weight is not None:
        params[f"{prefix}.weight"] = m.weight.detach().numpy().astype(np.float64)
    if m.bias is not None:
        params[f"{prefix}.bias"] = m.bias.detach().numpy().astype(np.float64)
    if isinstance(m, torch.nn.BatchNorm1d) and m.running_mean is not None:
        nbt = int(m.num_batches_tracked) if m.num_batches_tracked is not None else 0
        params[f"{prefix}.running"] = (m.running_mean.detach().numpy().astype(np.float64),
                                       m.running_var.detach().numpy().astype(np.float64), nbt)


def _share_running(m, prefix, step, torch):
    """A BatchNorm1d's running statistics become views of the step's own (exact copy
    first), so ``model.eval(); model(x)`` sees the statistics the steps updated.
    ``num_batches_tracked`` (an int64 tensor in PyTorch; the step counts in its arena's
    dtype, ``step.buffers["<i>.num_batches_tracked"]``) becomes an int64 tensor over an
    array of its own, which each call sets to the step's count
    (:meth:`TorchTrainStep._publish_counts`)."""
    if not isinstance(m, torch.nn.BatchNorm1d) or m.running_mean is None:
        return
    for attr in ("running_mean", "running_var"):
        live = step.buffers[f"{prefix}.{attr}"]
        live[...] = getattr(m, attr).detach().numpy()
        setattr(m, attr, torch.from_numpy(live))
    if m.num_batches_tracked is not None:
        m.num_batches_tracked = torch.from_numpy(np.array(int(m.num_batches_tracked), dtype=np.int64))  # (0-d)
