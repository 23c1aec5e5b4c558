"""The compiled training step: ``fastbp.compile`` and :class:`TrainStep`."""
from __future__ import annotations

import threading

import numpy as np

from . import _executor as ex
from . import _memory
from . import _validate as V
from ._jit import entry_point
from .config import FIT_NATIVE_MIN_STEPS, PREDICT_NATIVE_MIN_CHUNKS
from .compiler import build_plan, new_arena, view
from .kernels.codes import CLASSIFICATION_LOSSES, LOSSES
from .layers import Linear, Sequential, _Activation
from .optimizers import Adam, SGD, resolve_optimizer

_INT64 = np.dtype(np.int64)

__all__ = ["compile", "TrainStep"]

# the shared validators (fastbp._validate), under the names other modules import
_resolve_dtype = V.resolve_dtype
_resolve_device = V.resolve_device
_positive_int = V.positive_int





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


def _hyper_from(optimizer):
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
    return ex.runtime_hyper(h)


class TrainStep:
    """A model compiled into one fused native training step.

    Create it with :func:`fastbp.compile`.  Calling it runs forward, loss,
    backward and the optimizer update for one minibatch in a single native
    call, with every buffer allocated once at compile time.

    Attributes
    ----------
    model : Sequential
    loss : str
    optimizer : SGD or Adam
        The step's own frozen copy of the optimizer it was compiled with
        (set the learning rate with ``step.lr = value``).
    batch_size : int
        Largest minibatch; any batch of ``1..batch_size`` rows works.
    dtype : numpy.dtype
        float32 or float64.
    params : dict of str -> ndarray
        The live weights (``"0.W"`` of shape ``(in, out)``, ``"0.b"`` ...);
        writing into them changes the model.
    grads : dict of str -> ndarray
        Gradients of the last step, same keys and shapes.
    n_steps : int
        Updates applied so far.
    """

    def __init__(self, model, loss, optimizer, batch_size, dtype, seed, _params=None):
        if not isinstance(model, Sequential):
            raise TypeError(f"model must be a fastbp.Sequential, got {type(model).__name__}")
        if not isinstance(loss, str) or loss not in LOSSES:
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
        p = self.plan
        self.arena = new_arena(p)
        for _, node, _, _ in p.params:
            node.value = None       # written into the arena: the float64 initial values are not kept
        self.hyper = _hyper_from(self.optimizer)
        self.ws64 = np.zeros(self.batch_size, dtype=np.float64)
        #: the JIT GEMM kernels of small products (oneMKL only; see ex.gemm_jit_table)
        self.gjit = ex.gemm_jit_table(p, self.batch_size, self)
        #: the addresses of the arrays above, which the executor takes (see ex.context)
        self._ctx = ex.context(self.arena, p.bufs, p.tape, self.hyper, self.ws64, self.gjit,
                                self.batch_size)
        self._yi_stage = np.zeros(self.batch_size, dtype=np.int64)
        self._no_yi = np.zeros(0, dtype=np.int64)
        self._no_yf = np.zeros((0, 0), dtype=self.dtype)
        self._lock = threading.Lock()
        self._fit_stage = None      # gather buffers of a short shuffled fit, made on first use
        # where each run mode stops on the tape (see ex.run_step)
        self._tape_end = {ex.MODE_FORWARD: int(p.sec[ex.S_FWD]), ex.MODE_GRAD: int(p.sec[ex.S_BWD]),
                          ex.MODE_TRAIN: int(p.sec[ex.S_END])}
        self.params = {name: view(self.arena, p, p.value_buf[node.id], shape)
                       for name, node, _, shape in p.params}
        self.grads = {name: view(self.arena, p, p.grad_buf[node.id], shape)
                      for name, node, _, shape in p.params}
        pr0, prn = p.param_region
        self.param_vector = self.arena[pr0:pr0 + prn]
        gr0, grn = p.grad_region
        self.grad_vector = self.arena[gr0:gr0 + grn]
        self.state_vectors = [self.arena[o:o + prn] for o in p.state_offsets]
        #: gradients followed by three spare slots (loss*rows, rows, error count): the one buffer a
        #: data-parallel step reduces across ranks
        self.comm_vector = self.arena[gr0:gr0 + grn + 3]
        # the calls for minibatches already in the executor's form (see _make_fast)
        self._train_fast = self._make_fast(ex.MODE_TRAIN)
        self._grad_fast = self._make_fast(ex.MODE_GRAD)

    # ------------------------------------------------------------ helpers
    @property
    def n_steps(self):
        return int(self.hyper[ex.H_STEPS])

    @property
    def lr(self):
        """The learning rate used by the next update (settable)."""
        return float(self.hyper[ex.H_LR])

    @lr.setter
    def lr(self, value):
        from .optimizers import _real
        v = _real("lr", value, low=0.0, low_open=True, owner="TrainStep")
        self.hyper[ex.H_LR] = v
        self.optimizer._set_lr(v)

    # the ONE input path (fastbp._validate): every entry point of the step, the
    # data-parallel step and the GPU step's host inputs go through these two
    def _features(self, x, name="x", max_rows=None):
        """Validate ``x``; returns ``(x in the executor's form, rows)`` (see :func:`fastbp._validate.features`)."""
        return V.features(x, name, self.dtype, self.n_in, max_rows)

    def _targets(self, y, n, name="y", check_range=True):
        """Validate targets for ``n`` rows; returns ``(yi, yf)`` in the executor's form."""
        if self.classification:
            return V.class_labels(y, name, n, self.n_out, self.loss, check_range), self._no_yf
        return self._no_yi, V.targets(y, name, n, self.n_out, self.dtype, self.loss)

    def _raise_status(self, status, info, y=None, where=""):
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

    # ------------------------------------------------------------- calls
    def __call__(self, x, y):
        """One training step on a minibatch.

        Parameters
        ----------
        x : ndarray, shape (b, in_features), dtype ``self.dtype``
            ``1 <= b <= batch_size``; any memory layout (read-only,
            strided, transposed, byte-swapped ...: copied when the
            compiled step cannot read it as it lies).
        y : ndarray
            Integer labels of shape ``(b,)`` for ``softmax_cross_entropy``
            and ``svm``; float targets ``(b, out_features)`` for ``mse`` and
            ``bce_with_logits``.

        Returns
        -------
        float
            The mean loss of the minibatch before the update.

        Raises
        ------
        TypeError, ValueError
            Bad ``x`` or ``y``; nothing is changed.
        FloatingPointError
            The loss or a gradient is not finite; nothing is changed.
        """
        loss = self._train_fast(x, y)
        return self._run(x, y, ex.MODE_TRAIN) if loss is None else loss

    def loss_and_grads(self, x, y):
        """Forward, loss and backward without an update; fills :attr:`grads`.

        Returns the mean loss.  Same arguments as :meth:`__call__`.
        """
        loss = self._grad_fast(x, y)
        return self._run(x, y, ex.MODE_GRAD) if loss is None else loss

    def _make_fast(self, mode):
        """The call in ``mode`` for arrays already in the executor's form (the
        common case), as a closure over everything it needs: no attribute
        lookups, no argument conversion, numba's dispatch skipped after the
        first call, and the rows, widths and memory layout of ``x`` and ``y``
        checked by the compiled code (``STATUS_BAD_INPUT``), not here.  With
        the executor's context vector, tiny's step 6.8 -> 5.0 us.

        Returns the loss, or ``None`` (having changed nothing) for anything
        else: other arrays, and failed steps, which :meth:`_run` then
        validates, runs again and reports.  Holds no reference to ``self``.
        """
        ctx = self._ctx
        end = self._tape_end[mode]
        acquire, release, dtype, batch = self._lock.acquire, self._lock.release, self.dtype, self.batch_size
        classification, no_yi, no_yf = self.classification, self._no_yi, self._no_yf
        ndarray, dispatcher = np.ndarray, ex.run_tape
        run = dispatcher

        def fast(x, y):
            nonlocal run
            if type(x) is not ndarray or type(y) is not ndarray or x.dtype is not dtype or x.ndim != 2:
                return None
            if classification:
                if y.dtype is not _INT64 or y.ndim != 1:
                    return None
                yi, yf = y, no_yf
            else:
                if y.dtype is not dtype or y.ndim != 2:
                    return None
                yi, yf = no_yi, y
            if run is dispatcher:
                # numba's dispatch types the arrays (a read-only one would be
                # compiled for anew): only the executor's own kind goes there
                if not (x.flags.carray and y.flags.carray and 0 < x.shape[0] <= batch):
                    return None
            # the compiled code checks rows, widths and layout (STATUS_BAD_INPUT)
            acquire()     # the step's lock, without a with-block's method lookups
            try:
                status, loss, _ = run(ctx, 0, end, x.shape[0], x, yi, yf)
            finally:
                release()
            if status:
                return None
            if run is dispatcher:
                run = entry_point(dispatcher, (ctx, 0, end, x.shape[0], x, yi, yf))
            return loss
        return fast

    def _run(self, x, y, mode):
        """Validate (and convert) one minibatch, run it through the executor
        in ``mode`` and report a failure: the path of every call the fast one
        (:meth:`_make_fast`) does not take."""
        x, n = self._features(x, "x", self.batch_size)
        yi, yf = self._targets(y, n, check_range=False)
        with self._lock:
            status, loss, info = ex.run_tape(self._ctx, 0, self._tape_end[mode], n, x, yi, yf)
        if status:
            self._raise_status(status, info, yi)
        return loss

    def fit(self, X, Y, epochs=1, shuffle=True, seed=None):
        """Train whole epochs inside native calls, one per epoch (from
        :data:`FIT_NATIVE_MIN_STEPS` steps up; fewer run as a loop of the
        step's own compiled call, with the same results).

        Each epoch's visiting order is drawn when the epoch starts (memory:
        one permutation of ``n`` rows, whatever ``epochs``).

        Parameters
        ----------
        X : ndarray, shape (n, in_features), dtype ``self.dtype``
            Any memory layout (copied once when the compiled step cannot
            read it as it lies).
        Y : ndarray
            Targets for all ``n`` rows (see :meth:`__call__`).
        epochs : int, default 1
        shuffle : bool, default True
            Visit the rows in a fresh random order each epoch.
        seed : int, optional
            Seed of the shuffling; by default the step's own generator
            (seeded at compile time, saved in checkpoints) is used.

        Returns
        -------
        ndarray of float64, shape (epochs * ceil(n / batch_size),)
            The loss of every step, the last partial minibatch of each
            epoch included.

        Raises
        ------
        TypeError, ValueError
            Bad arguments; nothing is changed.
        FloatingPointError
            A step's loss or gradient is not finite.  The steps before it
            were applied; that step and the rest were not, and the step's
            generator is left as it was before the call.
        """
        X, n = self._features(X, "X")
        epochs = V.positive_int("epochs", epochs)
        shuffle = V.boolean("shuffle", shuffle)
        seed = V.seed(seed)
        yi, yf = self._targets(Y, n, name="Y")
        starts = self._epoch_starts(n)
        per_epoch = len(starts) - 1
        losses = np.zeros(epochs * per_epoch, dtype=np.float64)
        p = self.plan
        native = len(losses) >= FIT_NATIVE_MIN_STEPS
        with self._lock:
            orders, rng_state = self._fit_orders(n, epochs, shuffle, seed)
            for e, perm in enumerate(orders):
                out = losses[e * per_epoch:(e + 1) * per_epoch]
                if native:
                    status, done, info = ex.run_fit(self._ctx, p.sec, X, yi, yf, perm, starts, not shuffle,
                                                    p.x_buf, p.yf_buf, self._yi_stage, out)
                else:
                    status, done, info = self._fit_loop(X, yi, yf, perm, starts, not shuffle, out)
                if status:
                    self.rng.bit_generator.state = rng_state     # a failed fit consumes no shuffles
                    self._raise_status(status, info, where=f" at step {e * per_epoch + done} of fit")
        return losses

    def _fit_loop(self, X, yi, yf, perm, starts, in_order, losses):
        """The driver of a short fit: :func:`fastbp._executor.run_fit`'s loop in
        Python around the step's own compiled call, with the same minibatches
        (in-order ones read where they lie, shuffled ones gathered) and the same
        ``(status, step, info)`` result."""
        end = self._tape_end[ex.MODE_TRAIN]
        classif = self.classification
        for s in range(len(losses)):
            lo, hi = int(starts[s]), int(starts[s + 1])
            nb = hi - lo
            if in_order:
                r0 = int(perm[lo])
                xb = X[r0:r0 + nb]
                yib = yi[r0:r0 + nb] if classif else yi
                yfb = yf if classif else yf[r0:r0 + nb]
            else:
                if self._fit_stage is None:
                    self._fit_stage = (np.empty((self.batch_size, self.n_in), self.dtype),
                                       np.empty((self.batch_size, self.n_out), self.dtype))
                rows = perm[lo:hi]
                xb = np.take(X, rows, axis=0, out=self._fit_stage[0][:nb])
                yib = np.take(yi, rows, out=self._yi_stage[:nb]) if classif else yi
                yfb = yf if classif else np.take(yf, rows, axis=0, out=self._fit_stage[1][:nb])
            status, loss, info = ex.run_tape(self._ctx, 0, end, nb, xb, yib, yfb)
            if status:
                return status, s, info
            losses[s] = loss
        return ex.STATUS_OK, len(losses), 0

    @staticmethod
    def _check_seed(seed):
        V.seed(seed)

    def _epoch_starts(self, n):
        """Where each minibatch of an epoch of ``n`` rows starts: int64 ``(ceil(n / batch_size) + 1,)``."""
        return np.minimum(np.arange(-(-n // self.batch_size) + 1, dtype=np.int64) * self.batch_size, n)

    def _fit_orders(self, n, epochs, shuffle, seed):
        """The visiting order of each epoch of a fit (shared with the GPU step).

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

    def predict(self, X):
        """Network outputs (scores, before any loss) for every row of ``X``.

        Parameters
        ----------
        X : ndarray, shape (n, in_features), dtype ``self.dtype``
            Any memory layout (copied once when the compiled step cannot
            read it as it lies).

        Returns
        -------
        ndarray, shape (n, out_features), dtype ``self.dtype``
        """
        # validated into the executor's form: every chunk passes the compiled step's
        # layout check; a rejection would still be reported, never returned as output
        X, n = self._features(X, "X")
        out = np.empty((n, self.n_out), dtype=self.dtype)
        p = self.plan
        bs = self.batch_size
        with self._lock:
            if -(-n // bs) >= PREDICT_NATIVE_MIN_CHUNKS:
                status, row = ex.run_predict(self._ctx, p.sec, X, out, bs, p.out_buf)
                if status:
                    self._raise_status(status, 0, where=f" in predict (rows from {row})")
                return out
            # few chunks: one already-compiled forward call each (the same code run_predict runs)
            off, _, cols = (int(v) for v in p.bufs[p.out_buf])
            end = self._tape_end[ex.MODE_FORWARD]
            for lo in range(0, n, bs):
                nb = min(bs, n - lo)
                status, _, info = ex.run_tape(self._ctx, 0, end, nb, X[lo:lo + nb], self._no_yi, self._no_yf)
                if status:
                    self._raise_status(status, info, where=" in predict")
                out[lo:lo + nb] = self.arena[off:off + nb * cols].reshape(nb, cols)
        return out

    def save(self, path):
        """Write a checkpoint (see :func:`fastbp.load`): architecture, weights,
        optimizer state, step count, dtype and RNG state; atomically."""
        from .checkpoint import save
        save(self, path)

    def __repr__(self):
        return (f"<fastbp.TrainStep {self.model!r} loss={self.loss!r} optimizer={self.optimizer!r} "
                f"batch_size={self.batch_size} dtype={self.dtype.name} steps={self.n_steps}>")


def compile(model, loss="softmax_cross_entropy", optimizer=None, batch_size=64, dtype=np.float32, seed=0,
            device="cpu", comm=None):
    """Compile a model into one fused training step.

    Parameters
    ----------
    model : Sequential
        Layers :class:`Linear`, :class:`ReLU`, :class:`Sigmoid`, :class:`Tanh`.
    loss : {"softmax_cross_entropy", "mse", "bce_with_logits", "svm"}
    optimizer : SGD or Adam, default ``SGD(lr=0.1)``
        Applied inside the fused step.
    batch_size : int, default 64
        Largest minibatch; smaller ones work without recompiling.
    dtype : float32 or float64, default float32
    seed : int or None, default 0
        Seeds the weight initialisation (He for layers feeding a ReLU,
        Glorot otherwise; zero biases) and the shuffling of :meth:`TrainStep.fit`.
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"``: the whole step runs on an NVIDIA GPU
        (:class:`fastbp.cuda_step.CudaTrainStep`, same API; needs numba-cuda).

    comm : mpi4py communicator, optional
        Train data-parallel over the ranks of ``comm`` (e.g. ``MPI.COMM_WORLD``;
        a collective call): returns a :class:`fastbp.distributed.DistributedStep`
        whose ``batch_size`` is the per-rank batch, starting from rank 0's
        weights, with one Allreduce of all gradients per step and each rank's
        threads capped to its share of the cores.  Needs
        ``pip install 'fastbp[distributed]'`` (ImportError saying so otherwise).

    Returns
    -------
    TrainStep, CudaTrainStep (``device='cuda'``) or DistributedStep (``comm=``)

    Raises
    ------
    TypeError
        An argument of the wrong type (``seed="a"``, ``batch_size=8.0``,
        ``dtype=np.int32``, ``device=0`` ...); the message names it.
    ValueError
        A wrong value (``batch_size=0`` or ``2**63``, ``seed=-1``, an unknown
        loss or device name ...).
    MemoryError
        The step would not fit in the memory left on this machine; checked
        before anything is allocated, the message says how many bytes it
        would need and how many are available.
    RuntimeError
        ``device="cuda"`` and no CUDA device or driver was found.

    Notes
    -----
    The step keeps its own copy of ``optimizer``: changing the object
    afterwards changes neither the training nor what :meth:`TrainStep.save`
    writes.  ``step.optimizer`` is that copy, frozen; ``step.lr = value``
    changes the learning rate.

    Examples
    --------
    >>> import numpy as np, fastbp
    >>> model = fastbp.Sequential(fastbp.Linear(4, 8), fastbp.ReLU(), fastbp.Linear(8, 3))
    >>> step = fastbp.compile(model, optimizer=fastbp.SGD(lr=0.1), batch_size=2)
    >>> loss = step(np.ones((2, 4), np.float32), np.array([0, 2]))
    """
    if comm is not None:
        if _resolve_device(device) != "cpu":
            raise ValueError("comm= (data-parallel training) runs on the CPU; device must be 'cpu'")
        from .distributed import compile as _compile_distributed   # imports mpi4py, or ImportError
        return _compile_distributed(model, loss=loss, optimizer=optimizer, batch_size=batch_size,
                                    dtype=dtype, seed=seed, comm=comm)
    if optimizer is None:
        optimizer = SGD(lr=0.1)
    elif not isinstance(optimizer, (SGD, Adam, str)):
        raise TypeError(f"optimizer must be fastbp.SGD(...) or fastbp.Adam(...), got {type(optimizer).__name__}")
    if _resolve_device(device) == "cuda":
        from .cuda_step import CudaTrainStep
        return CudaTrainStep(model, loss, optimizer, batch_size, dtype, seed)
    return TrainStep(model, loss, optimizer, batch_size, dtype, seed)
