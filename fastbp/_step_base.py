"""What every kind of training step shares: :class:`StepBase`.

The CPU step (:class:`fastbp.step.TrainStep`), the GPU step (:class:`fastbp.cuda_step.CudaTrainStep`)
and, through the CPU step it drives, the data-parallel step (:class:`fastbp.distributed.DistributedStep`)
compile, validate and report in the same way.  This module holds that once:

- the checks of the constructor's arguments, the memory check, the weight initialisation and the
  compiler call that builds the plan and its host arena (:meth:`StepBase.__init__`);
- the input path of every call (:meth:`StepBase.check_features`, :meth:`StepBase.check_targets`);
- ``fit`` itself (:meth:`StepBase.fit`: arguments, the minibatch schedule :meth:`StepBase._epoch_starts`
  / :meth:`StepBase._fit_orders`, the learning-rate schedule, validation, early stopping, callbacks;
  the epoch loop is :func:`fastbp.training.drive`), around each kind's ``_fit_runner`` (the training
  of one epoch), and ``predict_proba``;
- the translation of an executor status into an exception (:meth:`StepBase.raise_status`).

The single-underscore methods are protected: the subclasses call them on themselves, nothing else does.
Nothing here runs a step: this module imports neither the CPU executor nor numba-cuda.
"""
from __future__ import annotations

import copy
import threading

import numpy as np

from . import _isa as ex
from . import _memory
from . import _rng
from . import _validate as V
from . import _bf16
from ._bf16_plan import bf16_plan
from ._loss_targets import float_targets
from .compiler import build_plan, new_arena
from .kernels.codes import CLASSIFICATION_LOSSES
from .registry import losses as _loss_registry
from .layers import Sequential
from ._scalars import real as _real
from .optimizers import clip_grad_norm_arg, hyper_from, resolve_optimizer
from .schedules import ReduceLROnPlateau, _claim_plateau, _release_plateau, schedule_arg
from . import training as _training
from ._norm_step import NormState
from ._init_weights import LazyInit, step_bytes

__all__ = ["StepBase"]


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


class StepBase(NormState):
    """The shared part of a compiled training step (not instantiated by itself).

    ``__init__`` validates the arguments, checks that the step fits in
    memory, initialises the weights and builds the plan; it leaves the
    initial contents of the plan's arena in ``self.arena`` (a numpy array),
    which the subclass uses as it is (CPU) or copies to its device (GPU).

    Attributes
    ----------
    model : Sequential
    loss : str
    optimizer : SGD, Adam, AdamW or RMSprop
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

    #: the device a ``precision`` is resolved for (fastbp._bf16.resolve)
    _device = "cpu"

    def __init__(self, model, loss, optimizer, batch_size, dtype, seed, _params=None, schedule=None,
                 precision="full"):
        schedule = schedule_arg(schedule)
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastbp.Sequential, got {type(model).__name__}")
        _loss_registry.get(loss)            # ValueError for an unknown name, TypeError (and ValueError) for a non-str
        self.model = copy.deepcopy(model)   # its own: a layer changed later changed save(), not the step
        self.loss = loss
        # the step's own, frozen copy: a later change to the caller's object changes
        # neither the training nor what save() writes (step.lr = v changes the rate)
        self.optimizer = resolve_optimizer(optimizer)._owned_copy()
        self.batch_size = V.positive_int("batch_size", batch_size)
        self.dtype = V.resolve_dtype(dtype)
        self.seed = V.seed(seed)
        #: "full" or "bf16" (the linear layers' products on bfloat16 copies; fastbp._bf16)
        self.precision = _bf16.resolve(precision, self.dtype, self._device)
        self.n_in = model.in_features
        self.n_out = model.out_features
        self.classification = loss in CLASSIFICATION_LOSSES
        if self.classification and self.n_out < 2:
            raise ValueError(f"loss {loss!r} needs at least 2 outputs, the model has {self.n_out}")
        # the size check comes before anything is allocated, the initial weights included
        need, buffers = step_bytes(model, loss, self.optimizer, self.batch_size, self.dtype, init=_params is None)
        _memory.check(need, f"compiling {model!r} (batch_size={self.batch_size}, {self.dtype.name})",
                      f"{_memory.fmt_bytes(buffers)} for the step's weights, gradients, optimizer state and "
                      f"activations, the rest while its float64 initial weights are built")
        self.rng = np.random.default_rng(self.seed)

        init = _params if _params is not None else LazyInit(model, self.seed if self.seed is not None else
                                                            int(self.rng.integers(2**63)))
        g, x, out = model.build_graph(init)
        del init
        lnode = g._loss(loss, out)
        self.graph = g
        self.plan = build_plan(g, lnode, g.params, dtype=self.dtype, batch_size=self.batch_size,
                               loss=loss, optimizer=self.optimizer, train_input=x)
        if self.precision == "bf16":
            _bf16.require()
            self.plan = bf16_plan(self.plan)
        self.arena = new_arena(self.plan)
        for _, node, _, _ in self.plan.params:
            node.value = None       # written into the arena: the float64 initial values are not kept
        self.hyper = hyper_from(self.optimizer)
        # Dropout: the masks' seed (from the step's seed; saved in checkpoints with hyper)
        # and training mode (predict switches to eval mode for its call)
        self.hyper[ex.H_RNG_SEED] = float(_rng.seed_key(self.seed))
        self.hyper[ex.H_TRAINING] = 1.0
        self._no_yi = np.zeros(0, dtype=np.int64)
        self._no_yf = np.zeros((0, 0), dtype=self.dtype)
        self._lock = threading.RLock()      # one call at a time on this step's buffers (fit's drive re-enters)
        #: epochs completed by fit (what an epoch-interval schedule counts, from where it was attached)
        self.epochs_done = 0
        self._schedule = None
        self._sched_origin = (0, 0)         # (epochs_done, n_steps) when the schedule was attached
        if schedule is not None:
            self._attach_schedule(schedule)

    # ------------------------------------------------------------ state
    @property
    def lock(self):
        """The lock every call and setter of this step holds (a :class:`threading.RLock`; for a CPU step
        that calls the BLAS the process-wide ``fastbp._blas.THREADS_LOCK``): a driver that composes several
        calls (e.g. :class:`fastbp.distributed.DistributedStep`) holds it around them."""
        return self._lock

    @property
    def n_steps(self):
        """Updates applied so far."""
        return int(self.hyper[ex.H_STEPS])

    @property
    def lr(self):
        """The learning rate used by the next update (settable).

        With a :attr:`schedule`, setting it sets the base rate the schedule scales (it then reports the
        schedule's rate of the next update).  Set while another thread fits the step: from its next epoch.
        """
        return float(self.hyper[ex.H_LR])

    @lr.setter
    def lr(self, value):
        v = _real("lr", value, self.kind, low=0.0)
        with self._lock:
            self.optimizer._set_lr(v)
            self.hyper[ex.H_LR] = _training.rate_for_base(self, v)

    @property
    def clip_grad_norm(self):
        """``max_norm`` of the gradient clipping before each update, or None (settable; see
        :func:`fastbp.optimizers.clip_grad_norm_arg`)."""
        v = float(self.hyper[ex.H_CLIP])
        return v if v > 0.0 else None

    @clip_grad_norm.setter
    def clip_grad_norm(self, value):
        v = clip_grad_norm_arg(value, owner=self.kind)
        self._settings_changed(clip=v)      # the code first: another thread's call may come in between
        with self._lock:
            self.hyper[ex.H_CLIP] = v

    def _settings_changed(self, clip=None):
        """Load the code the settings in ``hyper`` (or a ``clip`` about to be set) need (CPU step)."""

    @property
    def schedule(self):
        """The learning-rate schedule :meth:`fit` follows, or None (settable).

        Setting a :mod:`fastbp.schedules` schedule attaches it as ``schedule=`` does: its count starts at
        the next update (the step's own schedule set again continues); None detaches it and keeps the
        current rate; set during a fit (a callback, another thread), from the fit's next epoch.  Anything
        else is a TypeError; a ReduceLROnPlateau another live step holds, a ValueError.
        """
        return self._schedule

    @schedule.setter
    def schedule(self, value):
        value = schedule_arg(value)
        with self._lock:        # (a fit on another thread reads it between epochs)
            if value is None:
                _release_plateau(self._schedule, self)
                self._schedule = None
            elif value is not self._schedule:
                self._attach_schedule(value)

    def _set_scheduled_lr(self, value):
        """The rate of the next update, from the schedule (the base rate is kept)."""
        self.hyper[ex.H_LR] = float(value)

    def _attach_schedule(self, schedule):
        """Make ``schedule`` the step's: its ``t`` counts from now.  A ReduceLROnPlateau holds its
        step's state (rate, best metric, counters), so it belongs to one step at a time, as
        PyTorch's belongs to one optimizer: ValueError for one that another live step has."""
        plateau = isinstance(schedule, ReduceLROnPlateau)
        if plateau:
            _claim_plateau(schedule, self)
        if self._schedule is not schedule:
            _release_plateau(self._schedule, self)
        if plateau and schedule.lr is None:
            schedule.lr = float(self.optimizer.lr)
        self._schedule = schedule
        self._sched_origin = (self.epochs_done, self.n_steps)
        self.hyper[ex.H_LR] = schedule.lr if plateau else schedule.lr_at(0, float(self.optimizer.lr))

    def schedule_state(self):
        """The schedule's description and where its count started (saved in checkpoints).

        Returns
        -------
        dict
            JSON-able: ``epochs_done``, ``origin`` and ``schedule`` (its spec, or None).
        """
        return {"epochs_done": self.epochs_done, "origin": list(self._sched_origin),
                "schedule": None if self.schedule is None else self.schedule.spec()}

    def _restore_schedule_state(self, state):
        """Undo :meth:`schedule_state` (from a checkpoint's metadata); ValueError/TypeError if bad."""
        from .schedules import schedule_from_spec
        if not isinstance(state, dict):
            raise ValueError("the schedule state is not an object")
        epochs = V.seed(state.get("epochs_done", 0), "epochs_done")
        origin = state.get("origin", [0, 0])
        if not isinstance(origin, list) or len(origin) != 2:
            raise ValueError("the schedule origin is not a pair")
        origin = (V.seed(origin[0], "origin[0]"), V.seed(origin[1], "origin[1]"))
        if origin[0] > epochs or origin[1] > self.n_steps:      # (every fit failed: t < 0)
            raise ValueError(f"the schedule origin {list(origin)} (epochs, steps) lies beyond the step's "
                             f"progress ({epochs} epochs, {self.n_steps} steps)")
        spec = state.get("schedule")
        sched = None if spec is None else schedule_from_spec(spec)
        _release_plateau(self._schedule, self)
        if isinstance(sched, ReduceLROnPlateau):
            _claim_plateau(sched, self)         # a new object: this step's, as one it is given
        self.epochs_done, self._schedule, self._sched_origin = epochs, sched, origin

    def _take_state_of(self, other, slots=STATE_SLOTS):
        """Take the learning rate, step counters and generator state of ``other`` (a step of another
        kind with the same plan, e.g. the GPU step of this CPU step), its ``hyper`` ``slots`` and
        schedule; the arrays (weights, optimizer state) are the caller's job."""
        slots = list(slots)
        self.hyper[slots] = other.hyper[slots]
        self.optimizer._set_lr(float(other.optimizer.lr))       # the base rate (a schedule scales it)
        self.rng.bit_generator.state = other.rng.bit_generator.state
        self._restore_schedule_state(other.schedule_state())
        self._settings_changed()        # loads what the copied settings need (clipping's kernel)

    # ----------------------------------------------------- input path
    # the ONE input path (fastbp._validate): every entry point of the CPU step, the
    # data-parallel step and the GPU step's host inputs go through these two
    def check_features(self, x, name="x", max_rows=None):
        """Validate features ``x`` as every call of the step does.

        Parameters
        ----------
        x : ndarray, shape (n, in_features)
            Any memory layout; dtype :attr:`dtype` (another is a ``TypeError``).
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
            Also a target outside the loss's domain (``poisson``: negative or not finite).
        """
        if self.classification:
            return V.class_labels(y, name, n, self.n_out, self.loss, check_range), self._no_yf
        return self._no_yi, float_targets(y, name, n, self.n_out, self.dtype, self.loss)

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

        Returns ``(orders, rng_state)``: ``orders`` yields, for each epoch when it starts, the int64 row
        order (minibatch ``s`` of the epoch is ``order[starts[s]:starts[s+1]]``, see :meth:`_epoch_starts`);
        ``rng_state`` is the step generator's state before any shuffle was drawn (restored when the fit
        fails).  The orders are those of one generator drawn epoch after epoch: with the same seed,
        bitwise the ones of drawing every epoch's permutation up front.
        """
        rng = self.rng if seed is None else np.random.default_rng(seed)
        rng_state = self.rng.bit_generator.state

        def orders():
            in_order = None if shuffle else np.arange(n, dtype=np.int64)
            for _ in range(epochs):
                yield np.asarray(rng.permutation(n), dtype=np.int64) if shuffle else in_order
        return orders(), rng_state

    # ---------------------------------------------------------------- fit
    def fit(self, X, Y, epochs=1, shuffle=True, seed=None, validation_data=None, early_stopping=None,
            callbacks=(), verbose=False, schedule=None):
        """Train whole epochs (one signature for the CPU, GPU and data-parallel steps).

        Parameters
        ----------
        X : ndarray, shape (n, in_features)
            Any memory layout; the step's dtype (another is a ``TypeError``;
            the GPU step also takes CUDA device arrays).
        Y : ndarray
            Targets for all ``n`` rows (see :meth:`__call__`).
        epochs : int, default 1
        shuffle : bool, default True
            Visit the rows in a fresh random order each epoch.
        seed : int, optional
            Seed of the shuffling; by default the step's own generator
            (seeded at compile time, saved in checkpoints).
        validation_data : tuple (X_val, y_val), optional
            Evaluated after every epoch: ``val_loss`` (the step's loss) and,
            for the classification losses, ``val_accuracy``.
        early_stopping : fastbp.training.EarlyStopping or int, optional
            Stop when the monitored metric stops improving (an int is the
            patience, monitoring ``val_loss``, or ``loss`` without
            validation data).
        callbacks : sequence, default ()
            Objects with ``on_epoch_end(epoch, logs)`` (or functions of
            ``(epoch, logs)``); a true result stops the fit after that epoch.
        verbose : bool, default False
            A progress bar on a terminal, one line per epoch otherwise.
        schedule : fastbp.schedules schedule, optional
            Becomes the step's :attr:`schedule`, its count starting now; by
            default (or given the step's own schedule object again) the
            step's schedule (from ``compile(schedule=)`` or an earlier fit)
            continues.  The rate of every update of an epoch
            is computed up front and handed to the compiled loop.

        Returns
        -------
        fastbp.training.History
            The float64 loss of every update (shape ``(epochs_run *
            ceil(n / batch_size),)``) with the per-epoch metrics in
            ``history.history``.

        Raises
        ------
        TypeError, ValueError
            Bad arguments (a OneCycleLR that would run past its
            ``total_steps`` included); nothing is changed.
        FloatingPointError
            A step's loss or gradient is not finite.  The steps before it
            were applied; that step and the rest were not, and the step's
            generator is left as it was before the call.
        """
        data, n = self._fit_data(X, Y)
        epochs, shuffle, seed = self._fit_args(epochs, shuffle, seed)
        val = self._validation_arg(validation_data)
        es = _training.early_stopping_arg(early_stopping, val is not None)
        cbs = _training.callbacks_arg(callbacks)
        verbose = V.boolean("verbose", verbose)
        schedule = schedule_arg(schedule)
        if schedule is self.schedule:
            schedule = None             # the step's own schedule object again: it continues
        starts = self._epoch_starts(n)
        per_epoch = len(starts) - 1
        if epochs > 0:
            self.check_train_rows(int(np.diff(starts).min()), " (a minibatch of fit)")
        sched = self.schedule if schedule is None else schedule
        e0, s0 = (self.epochs_done, self.n_steps) if schedule is not None else self._sched_origin
        _training.check_schedule_span(sched, float(self.optimizer.lr), self.epochs_done - e0,
                                      self.n_steps - s0, epochs, per_epoch, val is not None)
        _training.check_accuracy_monitors(self.loss, es, sched)
        if schedule is not None:
            self._attach_schedule(schedule)
        run_epoch = self._fit_runner(data, n, starts, shuffle, epochs)
        orders, rng_state = self._fit_orders(n, epochs, shuffle, seed)
        validate = None if val is None else (lambda: self._evaluate(*val))
        try:
            return _training.drive(epochs=epochs, per_epoch=per_epoch, rows_per_step=np.diff(starts),
                                   orders=orders, train_epoch=run_epoch, step=self, validate=validate,
                                   early_stopping=es,
                                   callbacks=cbs, verbose=verbose, get_weights=self._weights_copy,
                                   set_weights=self._set_weights, loss_name=self.loss)
        except BaseException:
            self.rng.bit_generator.state = rng_state     # a failed fit consumes no shuffles
            raise

    def _fit_data(self, X, Y):
        """The checked data set of a fit and its rows (host arrays in the executor's form)."""
        X, n = self.check_features(X, "X")
        yi, yf = self.check_targets(Y, n, name="Y")
        return (X, yi, yf), n

    def _fit_runner(self, data, n, starts, shuffle, epochs):
        """``train_epoch(e, perm, lrs, out)`` of a fit: each kind trains one epoch its way
        (``lrs``: the rate of each update, or empty to keep the step's); raises on failure."""
        raise NotImplementedError

    def _validation_arg(self, validation_data):
        """Check ``validation_data``: None or ``(X_val, y_val)`` -> (X, y, n) host arrays."""
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)):
            raise TypeError(f"validation_data must be a tuple (X_val, y_val), got {type(validation_data).__name__}")
        if len(validation_data) != 2:
            raise ValueError(f"validation_data must be a tuple (X_val, y_val), got {len(validation_data)} items")
        xv, yv = (self._host(a) for a in validation_data)
        xv, n = V.features(xv, "validation_data[0]", self.dtype, self.n_in)
        self.check_eval_rows(n, "validation_data")     # before any training
        if self.classification:
            y = V.class_labels(yv, "validation_data[1]", n, self.n_out, self.loss, True)
        else:
            y = float_targets(yv, "validation_data[1]", n, self.n_out, self.dtype, self.loss)
        return xv, y

    @staticmethod
    def _host(a):
        """A host array for a host array or a CUDA device array (copied back)."""
        if hasattr(a, "copy_to_host"):
            return a.copy_to_host()
        return a

    def _evaluate(self, X, y):
        """``(loss, accuracy or None)`` of the current weights on checked data."""
        scores = self._host(self.predict(X))
        return _training.eval_loss(self.loss, scores, y), _training.accuracy(self.loss, scores, y)

    def predict_proba(self, X):
        """Class probabilities for every row of ``X``.

        Parameters
        ----------
        X : ndarray, shape (n, in_features)

        Returns
        -------
        ndarray, shape (n, out_features), dtype ``self.dtype``
            Softmax of the outputs (``softmax_cross_entropy``: rows sum to
            1) or the sigmoid of each output (``bce_with_logits``: one
            independent probability per output).

        Raises
        ------
        ValueError
            The step's loss is ``mse`` or ``svm`` (its outputs are not
            probabilities).
        """
        if self.loss not in ("softmax_cross_entropy", "bce_with_logits"):
            _training.probabilities(self.loss, None)      # raises the ValueError naming the loss
        return _training.probabilities(self.loss, self._host(self.predict(X)))

    def _weights_copy(self):
        """Host copies of everything :meth:`predict` depends on: ``(param_vector,
        buffer_vector)``, the weights and BatchNorm1d's running statistics (their
        counts included, as in a torch ``state_dict``; early stopping's best epoch)."""
        with self._lock:
            params = self._host(self.param_vector).copy()
        return params, np.array(self.buffer_vector, copy=True)   # a GPU step's takes the lock itself

    def _set_weights(self, state):
        """Set the weights and the running statistics from a copy made by :meth:`_weights_copy`."""
        params, buffers = state
        with self._lock:
            self.param_vector[...] = params
            self.buffer_vector[...] = buffers

    # ----------------------------------------------------------- pickling
    def __reduce_ex__(self, protocol):
        raise TypeError(f"a compiled {type(self).__name__} cannot be pickled (it holds native code and "
                        f"buffers); save it with step.save(path) and rebuild it with fastbp.load(path)")

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
        if status == ex.STATUS_BAD_INPUT and info == ex.INFO_ONE_ROW:
            self.check_train_rows(1, where)
        if status == ex.STATUS_BAD_INPUT:
            # the validated path hands the executor only arrays in its form: a bug if seen
            raise RuntimeError(f"internal error: the compiled step rejected the layout of a validated "
                               f"minibatch{where} (executor status {status}); nothing was changed")
        raise RuntimeError(f"internal error: executor status {status}{where}")

    _raise_status = raise_status

    def __repr__(self):
        return (f"<fastbp.{type(self).__name__} {self.model!r} loss={self.loss!r} optimizer={self.optimizer!r} "
                f"batch_size={self.batch_size} dtype={self.dtype.name} steps={self.n_steps}>")
