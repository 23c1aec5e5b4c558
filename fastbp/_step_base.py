"""What every kind of training step shares: :class:`StepBase`.

The CPU step (:class:`fastbp.step.TrainStep`), the GPU step
(:class:`fastbp.cuda_step.CudaTrainStep`) and, through the CPU step it
drives, the data-parallel step (:class:`fastbp.distributed.DistributedStep`)
compile, validate and report in the same way.  This module holds that once:

- the checks of the constructor's arguments, the memory check, the weight
  initialisation and the compiler call that builds the plan and its host
  arena (:meth:`StepBase.__init__`);
- the input path of every call (:meth:`StepBase.check_features`,
  :meth:`StepBase.check_targets`);
- the schedule of a fit (:meth:`StepBase._epoch_starts`,
  :meth:`StepBase._fit_orders`);
- the translation of an executor status into an exception
  (:meth:`StepBase.raise_status`).

The single-underscore methods are protected by design: the subclasses call
them on themselves, nothing else calls them.  Nothing here runs a step, so
this module imports neither the CPU executor nor numba-cuda.
"""
from __future__ import annotations

import threading

import numpy as np

from . import _isa as ex
from . import _memory
from . import _validate as V
from .compiler import build_plan, new_arena
from .kernels.codes import CLASSIFICATION_LOSSES, LOSSES
from .layers import Linear, Sequential, _Activation
from .optimizers import SGD, _real, resolve_optimizer

__all__ = ["StepBase"]


class _LazyInit:
    """``model.init_params(seed)``, drawn one layer at a time as the graph asks for it.

    The same generator, the same draws in the same order (layer by layer):
    bitwise the weights of :meth:`Sequential.init_params`.  Each layer's
    float64 arrays live only until the graph has copied them, so building
    a step never holds two float64 copies of all its weights.
    """

    def __init__(self, model, seed):
        layers = model.layers
        self._keys = set()
        for i, layer in enumerate(layers):
            if isinstance(layer, Linear):
                self._keys.add(f"{i}.W")
                if layer.bias:
                    self._keys.add(f"{i}.b")
        self._ready = {}
        self._draws = self._draw(layers, seed)

    @staticmethod
    def _draw(layers, seed):
        rng = np.random.default_rng(seed)
        for i, layer in enumerate(layers):
            if isinstance(layer, Linear):
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                W, b = layer.init(rng, nxt.op if isinstance(nxt, _Activation) else None)
                yield f"{i}.W", W
                if b is not None:
                    yield f"{i}.b", b

    def get(self, key, default=None):
        if key not in self._keys:
            return default
        while key not in self._ready:
            k, v = next(self._draws)
            self._ready[k] = v
        self._keys.discard(key)
        return self._ready.pop(key)


def hyper_from(optimizer):
    """The step's float64 hyper-parameter vector (``_isa.HYPER_SIZE``) for ``optimizer``.

    The process-specific slots (``_isa.RUNTIME_SLOTS``: the BLAS policy)
    are left at 0; the CPU step fills them (the GPU step never reads them).
    """
    h = np.zeros(ex.HYPER_SIZE, dtype=np.float64)
    h[ex.H_LR] = optimizer.lr
    h[ex.H_WD] = optimizer.weight_decay
    if isinstance(optimizer, SGD):
        h[ex.H_MOM] = optimizer.momentum
        h[ex.H_NESTEROV] = float(optimizer.nesterov)
    else:
        h[ex.H_B1], h[ex.H_B2] = optimizer.betas
        h[ex.H_EPS] = optimizer.eps
        h[ex.H_DECOUPLED] = float(optimizer.decoupled)
    return h


def gather_rows(rows, X, yi, yf, x_out, yi_out, yf_out, classification):
    """Gather the minibatch ``rows`` of a data set into staging buffers (the one host gather).

    Parameters
    ----------
    rows : ndarray of int64, shape (b,)
    X : ndarray, shape (n, in_features)
    yi : ndarray of int64, shape (n,) or (0,)
        Labels (classification), or the empty placeholder.
    yf : ndarray, shape (n, out_features) or (0, 0)
        Float targets (regression), or the empty placeholder.
    x_out, yi_out, yf_out : ndarray
        Staging buffers of at least ``b`` rows (``yi_out``/``yf_out``: only
        the one matching the targets is written).
    classification : bool
        Whether the targets are the labels ``yi`` (else the floats ``yf``).

    Returns
    -------
    (xb, yib, yfb)
        Views of the first ``b`` rows of the buffers; the placeholder is
        passed through.
    """
    nb = len(rows)
    xb = np.take(X, rows, axis=0, out=x_out[:nb])
    if classification:
        return xb, np.take(yi, rows, out=yi_out[:nb]), yf
    return xb, yi, np.take(yf, rows, axis=0, out=yf_out[:nb])


#: the hyper-parameter slots that are a step's training state (copied between steps)
STATE_SLOTS = tuple(i for i in range(ex.HYPER_SIZE) if i not in ex.RUNTIME_SLOTS)


class StepBase:
    """The shared part of a compiled training step (not instantiated by itself).

    ``__init__`` validates the arguments, checks that the step fits in
    memory, initialises the weights and builds the plan; it leaves the
    initial contents of the plan's arena in ``self.arena`` (a numpy array),
    which the subclass uses as it is (CPU) or copies to its device (GPU).

    Attributes
    ----------
    model : Sequential
    loss : str
    optimizer : SGD or Adam
        The step's own frozen copy.
    batch_size : int
    dtype : numpy.dtype
    seed : int or None
    rng : numpy.random.Generator
        The shuffling generator of :meth:`fit` (saved in checkpoints).
    n_in, n_out : int
    classification : bool
    graph, plan
        The graph and the compiled plan.
    hyper : ndarray of float64, shape (_isa.HYPER_SIZE,)
        Learning rate, optimizer constants and step counters.
    """

    #: the class name used in messages (``TrainStep.lr`` ...)
    kind = "TrainStep"

    def __init__(self, model, loss, optimizer, batch_size, dtype, seed, _params=None):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastbp.Sequential, got {type(model).__name__}")
        if not isinstance(loss, str) or loss not in LOSSES:     # (None included: tests/test_bad_input.py)
            raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(sorted(LOSSES))}")
        self.model = model
        self.loss = loss
        # the step's own, frozen copy: a later change to the caller's object changes
        # neither the training nor what save() writes (step.lr = v changes the rate)
        self.optimizer = resolve_optimizer(optimizer)._owned_copy()
        self.batch_size = V.positive_int("batch_size", batch_size)
        self.dtype = V.resolve_dtype(dtype)
        self.seed = V.seed(seed)
        self.n_in = model.in_features
        self.n_out = model.out_features()
        self.classification = loss in CLASSIFICATION_LOSSES
        if self.classification and self.n_out < 2:
            raise ValueError(f"loss {loss!r} needs at least 2 outputs, the model has {self.n_out}")
        # the size check comes before anything is allocated, the initial weights included
        need, buffers = _memory.step_bytes(model, self.optimizer.n_state, self.batch_size, self.dtype.itemsize,
                                           init=_params is None)
        _memory.check(need, f"compiling {model!r} (batch_size={self.batch_size}, {self.dtype.name})",
                      f"{_memory.fmt_bytes(buffers)} for the step's weights, gradients, optimizer state and "
                      f"activations, the rest while its float64 initial weights are built")
        self.rng = np.random.default_rng(self.seed)

        init = _params if _params is not None else _LazyInit(model, self.seed if self.seed is not None else
                                                             int(self.rng.integers(2**63)))
        g, x, out = model.build_graph(init)
        del init
        lnode = g._loss(loss, out)
        self.graph = g
        self.plan = build_plan(g, lnode, g.params, dtype=self.dtype, batch_size=self.batch_size,
                               loss=loss, optimizer=self.optimizer, train_input=x)
        self.arena = new_arena(self.plan)
        for _, node, _, _ in self.plan.params:
            node.value = None       # written into the arena: the float64 initial values are not kept
        self.hyper = hyper_from(self.optimizer)
        self._no_yi = np.zeros(0, dtype=np.int64)
        self._no_yf = np.zeros((0, 0), dtype=self.dtype)
        self._lock = threading.Lock()       # one call at a time on this step's buffers

    # ------------------------------------------------------------ state
    @property
    def lock(self):
        """The lock every call of this step holds (a :class:`threading.Lock`, or for a CPU
        step that calls the BLAS the process-wide ``fastbp._blas.THREADS_LOCK``); a driver that
        composes several calls (e.g. :class:`fastbp.distributed.DistributedStep`) holds it
        around them."""
        return self._lock

    @property
    def n_steps(self):
        """Updates applied so far."""
        return int(self.hyper[ex.H_STEPS])

    @property
    def lr(self):
        """The learning rate used by the next update (settable)."""
        return float(self.hyper[ex.H_LR])

    @lr.setter
    def lr(self, value):
        v = _real("lr", value, low=0.0, low_open=True, owner=self.kind)
        self.hyper[ex.H_LR] = v
        self.optimizer._set_lr(v)

    def _take_state_of(self, other):
        """Take the learning rate, step counters and generator state of ``other`` (a step of
        another kind with the same plan, e.g. the GPU step of this CPU step); the arrays
        (weights, optimizer state) are the caller's job."""
        slots = list(STATE_SLOTS)
        self.hyper[slots] = other.hyper[slots]
        self.optimizer._set_lr(float(self.hyper[ex.H_LR]))
        self.rng.bit_generator.state = other.rng.bit_generator.state

    # ----------------------------------------------------- input path
    # the ONE input path (fastbp._validate): every entry point of the CPU step, the
    # data-parallel step and the GPU step's host inputs go through these two
    def check_features(self, x, name="x", max_rows=None):
        """Validate features ``x`` as every call of the step does.

        Parameters
        ----------
        x : ndarray, shape (n, in_features)
            Any memory layout, a dtype that converts safely to :attr:`dtype`.
        name : str
            Its name in error messages.
        max_rows : int, optional

        Returns
        -------
        (x, n)
            ``x`` in the executor's form (C-contiguous, aligned, native
            :attr:`dtype`; a copy only where needed) and its rows.

        Raises
        ------
        TypeError, ValueError
            See :func:`fastbp._validate.features`.
        """
        return V.features(x, name, self.dtype, self.n_in, max_rows)

    def check_targets(self, y, n, name="y", check_range=True):
        """Validate the targets of ``n`` rows as every call of the step does.

        Parameters
        ----------
        y : ndarray
            Labels ``(n,)`` (classification losses) or targets ``(n, out_features)``.
        n : int
        name : str
        check_range : bool, default True
            Check the labels' range here (else the compiled step does).

        Returns
        -------
        (yi, yf)
            int64 labels and the empty float placeholder, or the empty label
            placeholder and float targets of :attr:`dtype`: the executor's form.

        Raises
        ------
        TypeError, ValueError
        """
        if self.classification:
            return V.class_labels(y, name, n, self.n_out, self.loss, check_range), self._no_yf
        return self._no_yi, V.targets(y, name, n, self.n_out, self.dtype, self.loss)

    _features = check_features
    _targets = check_targets

    def _fit_args(self, epochs, shuffle, seed):
        """The checked ``(epochs, shuffle, seed)`` of a fit."""
        return V.positive_int("epochs", epochs), V.boolean("shuffle", shuffle), V.seed(seed)

    # ------------------------------------------------------ fit schedule
    def _epoch_starts(self, n):
        """Where each minibatch of an epoch of ``n`` rows starts: int64 ``(ceil(n / batch_size) + 1,)``."""
        return np.minimum(np.arange(-(-n // self.batch_size) + 1, dtype=np.int64) * self.batch_size, n)

    def _fit_orders(self, n, epochs, shuffle, seed):
        """The visiting order of each epoch of a fit (the same for every step kind).

        Returns ``(orders, rng_state)``: ``orders`` yields, for each epoch
        when it starts, the int64 row order (minibatch ``s`` of the epoch is
        ``order[starts[s]:starts[s+1]]``, see :meth:`_epoch_starts`);
        ``rng_state`` is the step generator's state before any shuffle was
        drawn (restored when the fit fails).  The orders are those of one
        generator drawn epoch after epoch: with the same seed, bitwise the
        ones of drawing every epoch's permutation up front.
        """
        rng = self.rng if seed is None else np.random.default_rng(seed)
        rng_state = self.rng.bit_generator.state

        def orders():
            in_order = None if shuffle else np.arange(n, dtype=np.int64)
            for _ in range(epochs):
                yield np.asarray(rng.permutation(n), dtype=np.int64) if shuffle else in_order
        return orders(), rng_state

    # ------------------------------------------------- status -> exception
    def raise_status(self, status, info, y=None, where=""):
        """Raise the exception of a failed call's executor status.

        Parameters
        ----------
        status : int
            A nonzero ``fastbp._isa.STATUS_*`` code.
        info : int
            The row of the first bad label in ``y`` (``STATUS_BAD_LABEL``).
        y : ndarray of int64, optional
            The labels of the call (named in the message).
        where : str
            Ends the message (``" at step 3 of fit"``).

        Raises
        ------
        ValueError
            A label out of range.
        FloatingPointError
            A non-finite loss or gradient.
        RuntimeError
            Any other status (an internal error).
        """
        if status == ex.STATUS_BAD_LABEL:
            label = "?" if y is None else int(y[info])
            raise ValueError(f"y[{info}] = {label} is not a class label in [0, {self.n_out}){where}; "
                             f"weights unchanged")
        if status == ex.STATUS_LOSS_NONFINITE:
            raise FloatingPointError(f"the loss is not finite{where} (NaN/Inf in the inputs or divergence); "
                                     f"the update was skipped: weights and optimizer state unchanged")
        if status == ex.STATUS_GRAD_NONFINITE:
            raise FloatingPointError(f"a gradient is not finite{where}; the update was skipped: weights "
                                     f"and optimizer state unchanged")
        if status == ex.STATUS_BAD_INPUT:
            # the validated path hands the executor only arrays in its form: a bug if seen
            raise RuntimeError(f"internal error: the compiled step rejected the layout of a validated "
                               f"minibatch{where} (executor status {status}); nothing was changed")
        raise RuntimeError(f"internal error: executor status {status}{where}")

    _raise_status = raise_status

    def __repr__(self):
        return (f"<fastbp.{type(self).__name__} {self.model!r} loss={self.loss!r} optimizer={self.optimizer!r} "
                f"batch_size={self.batch_size} dtype={self.dtype.name} steps={self.n_steps}>")
