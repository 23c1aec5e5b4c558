"""The compiled training step: ``fastbp.compile`` and :class:`TrainStep`."""
from __future__ import annotations

import numbers
import threading

import numpy as np

from . import _executor as ex
from ._jit import entry_point
from .compiler import build_plan, new_arena, view
from .kernels.codes import CLASSIFICATION_LOSSES, LOSSES
from .layers import Sequential
from .optimizers import Adam, SGD, resolve_optimizer

_INT64 = np.dtype(np.int64)

__all__ = ["compile", "TrainStep"]



_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _resolve_dtype(dtype):
    if dtype is None:
        raise TypeError("dtype must be float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v}")
    return int(v)


#: ``predict`` runs its chunks (``batch_size`` rows each) in the native loop
#: ``run_predict`` from this many chunks up, and fewer through a Python loop of
#: the step's own compiled call (~1.5 us of overhead each).  run_predict's
#: one-time compilation takes ~5 s on the development machine (numba
#: re-optimises the whole interpreter inside it), which a small prediction,
#: like the per-epoch evaluation of ``fastbp train``, should not pay.
PREDICT_NATIVE_MIN_CHUNKS = 256

#: ``fit`` runs in the native loop ``run_fit`` (one call for all its steps)
#: from this many steps up, and fewer through a Python loop of the step's
#: own compiled call (~2 us of overhead per step).  run_fit's one-time
#: compilation takes ~3 s on the development machine; this keeps the first
#: run of ``fastbp train`` (45 steps per epoch on digits) from paying it.
FIT_NATIVE_MIN_STEPS = 64


def _writeable(a):
    """numba compiles a separate (slow) specialisation for read-only and for
    unaligned arrays, and the executor reads only aligned ones: hand it a copy."""
    return a if a.flags.writeable and a.flags.aligned else a.copy()


def _resolve_device(device):
    """``"cpu"`` or ``"cuda"``; anything else a ValueError naming ``device``."""
    if not isinstance(device, str) or device.lower() not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device.lower()


def _array_kind(name, a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")


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
        self.optimizer = resolve_optimizer(optimizer)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.dtype = _resolve_dtype(dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.n_in = model.in_features
        self.n_out = model.out_features()
        self.classification = loss in CLASSIFICATION_LOSSES
        if self.classification and self.n_out < 2:
            raise ValueError(f"loss {loss!r} needs at least 2 outputs, the model has {self.n_out}")

        init = _params if _params is not None else model.init_params(seed if seed is not None else
                                                                     int(self.rng.integers(2**63)))
        g, x, out = model.build_graph(init)
        lnode = g._loss(loss, out)
        self.graph = g
        self.plan = build_plan(g, lnode, g.params, dtype=self.dtype, batch_size=self.batch_size,
                               loss=loss, optimizer=self.optimizer, train_input=x)
        p = self.plan
        self.arena = new_arena(p)
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
        self.optimizer.lr = v

    def _check_x(self, x, name="x", max_rows=None):
        _array_kind(name, x)
        if x.dtype != self.dtype:
            if x.dtype.kind == "f" or x.dtype.kind in "iubcOUS":
                raise TypeError(f"{name} has dtype {x.dtype}; this step was compiled for {self.dtype} "
                                f"(convert with {name}.astype(np.{self.dtype.name}))")
            raise TypeError(f"{name} has dtype {x.dtype}, expected {self.dtype}")
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"{name} must have shape (n, {self.n_in}), got {x.shape}")
        n = x.shape[0]
        if n < 1:
            raise ValueError(f"{name} is empty: it must have at least one row")
        if max_rows is not None and n > max_rows:
            raise ValueError(f"{name} has {n} rows, more than batch_size={max_rows}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (row-major); pass np.ascontiguousarray({name})")
        return n

    def _check_y(self, y, n, name="y", check_range=True):
        """Validate targets for ``n`` rows; returns ``(yi, yf)`` for the executor."""
        _array_kind(name, y)
        if self.classification:
            if y.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integer class labels for loss {self.loss!r}, "
                                f"got dtype {y.dtype}")
            if y.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match the {n} rows of x, got {y.shape}")
            if y.dtype != np.int64 or not y.flags.c_contiguous:
                y = np.ascontiguousarray(y, dtype=np.int64)
            if check_range and n and (y.min() < 0 or y.max() >= self.n_out):
                bad = int(np.flatnonzero((y < 0) | (y >= self.n_out))[0])
                raise ValueError(f"{name}[{bad}] = {y[bad]} is not a class label in [0, {self.n_out})")
            return _writeable(y), self._no_yf
        if y.dtype.kind != "f" and y.dtype.kind not in "iu":
            raise TypeError(f"{name} must be a float array of targets for loss {self.loss!r}, got dtype {y.dtype}")
        if y.shape == (n,) and self.n_out == 1:
            y = y.reshape(n, 1)
        if y.shape != (n, self.n_out):
            raise ValueError(f"{name} must have shape ({n}, {self.n_out}), got {y.shape}")
        if y.dtype != self.dtype or not y.flags.c_contiguous:
            y = np.ascontiguousarray(y, dtype=self.dtype)
        return self._no_yi, _writeable(y)

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
        raise RuntimeError(f"executor status {status}")

    # ------------------------------------------------------------- calls
    def __call__(self, x, y):
        """One training step on a minibatch.

        Parameters
        ----------
        x : ndarray, shape (b, in_features), dtype ``self.dtype``, C-contiguous
            ``1 <= b <= batch_size``.
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
        n = self._check_x(x, "x", self.batch_size)
        x = _writeable(x)
        yi, yf = self._check_y(y, n, check_range=False)
        with self._lock:
            status, loss, info = ex.run_tape(self._ctx, 0, self._tape_end[mode], n, x, yi, yf)
        if status:
            self._raise_status(status, info, yi)
        return loss

    def fit(self, X, Y, epochs=1, shuffle=True, seed=None):
        """Train whole epochs inside one native call (from
        :data:`FIT_NATIVE_MIN_STEPS` steps up; fewer run as a loop of the
        step's own compiled call, with the same results).

        Parameters
        ----------
        X : ndarray, shape (n, in_features), dtype ``self.dtype``, C-contiguous
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
        FloatingPointError
            A step's loss or gradient is not finite.  The steps before it
            were applied; that step and the rest were not.
        """
        n = self._check_x(X, "X")
        X = _writeable(X)
        epochs = _positive_int("epochs", epochs)
        self._check_seed(seed)
        yi, yf = self._check_y(Y, n, name="Y")
        perm, starts, rng_state = self._fit_schedule(n, epochs, shuffle, seed)
        losses = np.zeros(len(starts) - 1, dtype=np.float64)
        p = self.plan
        with self._lock:
            if len(losses) >= FIT_NATIVE_MIN_STEPS:
                status, done, info = ex.run_fit(self._ctx, p.sec, X, yi, yf, perm, starts, not shuffle,
                                                p.x_buf, p.yf_buf, self._yi_stage, losses)
            else:
                status, done, info = self._fit_loop(X, yi, yf, perm, starts, not shuffle, losses)
        if status:
            self.rng.bit_generator.state = rng_state     # a failed fit consumes no shuffles
            self._raise_status(status, info, where=f" at step {done} of fit")
        return losses

    def _fit_loop(self, X, yi, yf, perm, starts, in_order, losses):
        """The driver of a short fit: :func:`fastbp._executor.run_fit`'s loop in
        Python around the step's own compiled call, with the same minibatches
        (in-order ones read where they lie, shuffled ones gathered) and the same
        ``(status, step, info)`` result."""
        p = self.plan
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
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
                raise TypeError(f"seed must be a non-negative integer or None, got {type(seed).__name__}")
            if seed < 0:
                raise ValueError(f"seed must be a non-negative integer or None, got {seed}")

    def _fit_schedule(self, n, epochs, shuffle, seed):
        """The visiting order of a fit (shared with the GPU step).

        Returns ``(perm, starts, rng_state)``: minibatch ``s`` is the rows
        ``perm[starts[s]:starts[s+1]]`` (int64); ``rng_state`` is the step
        generator's state before the shuffles were drawn (restored when the
        fit fails).
        """
        rng = self.rng if seed is None else np.random.default_rng(seed)
        rng_state = self.rng.bit_generator.state
        bs = self.batch_size
        per_epoch = -(-n // bs)
        if shuffle:
            perm = np.concatenate([rng.permutation(n) for _ in range(epochs)])
        else:
            perm = np.tile(np.arange(n, dtype=np.int64), epochs)
        within = np.minimum(np.arange(per_epoch + 1) * bs, n)
        starts = (np.arange(epochs)[:, None] * n + within[None, :-1]).ravel()
        starts = np.append(starts, epochs * n).astype(np.int64)
        return perm.astype(np.int64), starts, rng_state

    def predict(self, X):
        """Network outputs (scores, before any loss) for every row of ``X``.

        Parameters
        ----------
        X : ndarray, shape (n, in_features), dtype ``self.dtype``, C-contiguous

        Returns
        -------
        ndarray, shape (n, out_features), dtype ``self.dtype``
        """
        n = self._check_x(X, "X")
        X = _writeable(X)
        out = np.empty((n, self.n_out), dtype=self.dtype)
        p = self.plan
        bs = self.batch_size
        with self._lock:
            if -(-n // bs) >= PREDICT_NATIVE_MIN_CHUNKS:
                ex.run_predict(self._ctx, p.sec, X, out, bs, p.out_buf)
                return out
            # few chunks: one already-compiled forward call each (the same code run_predict runs)
            off, _, cols = (int(v) for v in p.bufs[p.out_buf])
            end = self._tape_end[ex.MODE_FORWARD]
            for lo in range(0, n, bs):
                nb = min(bs, n - lo)
                ex.run_tape(self._ctx, 0, end, nb, X[lo:lo + nb], self._no_yi, self._no_yf)
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
    RuntimeError
        ``device="cuda"`` and no CUDA device or driver was found.

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
