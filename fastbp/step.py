"""The compiled training step on the CPU: :class:`TrainStep`.

Everything a step kind shares (argument checks, plan, input path, fit
schedule, status -> exception) is :class:`fastbp._step_base.StepBase`; this
module adds the CPU executor's side: the executor context over the host
arena, the fast call path, the native fit and predict.  The factories that
choose a step kind (``fastbp.compile``) live in :mod:`fastbp.factories`.
"""
from __future__ import annotations

import numpy as np

from . import _blas
from . import config as _config
from . import _executor as ex
from . import _validate as V
from . import training as _training
from ._ckpt_format import save
from ._fold_plan import fold_dropout
from ._jit import entry_point
from ._step_base import StepBase, gather_rows
from .compiler import view
from .config import FIT_NATIVE_MIN_STEPS, PREDICT_NATIVE_MIN_CHUNKS

_INT64 = np.dtype(np.int64)

__all__ = ["TrainStep"]


def _may_call_blas(plan, batch_size, blas_min_macs):
    """Whether any matrix product of ``plan`` can reach ``blas_min_macs`` multiply-adds (the
    BLAS's share, see :data:`fastbp.config.BLAS_MIN_MACS`): a bound from the widest buffer."""
    bufs = plan.bufs
    if bufs.shape[0] == 0:
        return False
    width = int(max(bufs[:, 2].max(), bufs[:, 1].max()))
    return max(width, batch_size) * width * width >= blas_min_macs


class TrainStep(StepBase):
    """A model compiled into one fused native training step.

    Create it with :func:`fastbp.compile`.  Calling it runs forward, loss,
    backward and the optimizer update for one minibatch in a single native
    call, with every buffer allocated once at compile time.

    Attributes
    ----------
    model : Sequential
    loss : str
    optimizer : SGD, Adam, AdamW or RMSprop
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
    threads : bool
        Whether the step runs on numba's threads alone (its elementwise
        kernels in parallel, its products split over the same threads on one
        BLAS thread each) instead of serial kernels and the BLAS's threads:
        a property of the step's shapes and the BLAS backend, not of the thread
        count (see ``fastbp._executor.step_threads``).

    Parameters
    ----------
    model : Sequential
    loss : str
    optimizer : SGD, Adam, AdamW or RMSprop
    batch_size : int
    dtype : numpy.dtype
    seed : int or None
    schedule : Schedule or ReduceLROnPlateau, optional
    precision : {"full", "bf16"}, default "full"
        As :func:`fastbp.compile`'s arguments, which it checks and resolves before it makes
        the step: create steps with it.
    """

    def __init__(self, model, loss, optimizer, batch_size, dtype, seed, _params=None, schedule=None,
                 precision="full"):
        super().__init__(model, loss, optimizer, batch_size, dtype, seed, _params, schedule, precision)
        self.plan = fold_dropout(self.plan)     # the CPU's backward of activation + dropout in one pass
        p = self.plan
        #: whether the step runs on numba's threads alone (see fastbp._executor.step_threads)
        self.threads = self.precision != "bf16" and ex.step_threads(p, self.batch_size, self.dtype)
        # this process's BLAS policy; plain SGD's update through the BLAS's axpy in an fp32/fp64
        # step with a large SGD update (a bf16 step's products run on oneDNN's OpenMP threads)
        # and a large update's finiteness check through the BLAS's asum
        level1 = self.precision != "bf16"
        axpy = level1 and ex.sgd_axpy_candidate(p.tape)
        asum = axpy and ex.sgd_axpy_candidate(p.tape, _config.SGD_ASUM_MIN_PARAMS)
        ex.runtime_hyper(self.hyper, self.threads, self.dtype if axpy else None, self.dtype if asum else None)
        # per-row losses, then the sample weights of a weighted call (see ex.H_WEIGHTED)
        self.ws64 = np.zeros(2 * self.batch_size, dtype=np.float64)
        #: the JIT GEMM kernels of small products (oneMKL only; see ex.gemm_jit_table)
        self.gjit = ex.gemm_jit_table(p, self.batch_size, self)
        #: the addresses of the arrays above, which the executor takes (see ex.context)
        self._ctx = ex.context(self.arena, p.bufs, p.tape, self.hyper, self.ws64, self.gjit,
                                self.batch_size, self.threads)
        self._yi_stage = np.zeros(self.batch_size, dtype=np.int64)
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
        if self.hyper[ex.H_BT_ON] and _may_call_blas(p, self.batch_size, self.hyper[ex.H_BLAS_MIN]):
            # the BLAS's thread count is one per process (OpenBLAS, oneMKL) and the executor
            # sets it per product (one thread for a small one): steps that may call the BLAS
            # share one lock, so that no step runs a product at another step's setting (the
            # BLAS's result depends on its thread count; concurrent steps lost bitwise
            # equality with serial runs, and could leave the count at one thread)
            self._lock = _blas.THREADS_LOCK
        # the calls for minibatches already in the executor's form (see _make_fast)
        self._train_fast = self._make_fast(ex.MODE_TRAIN)
        self._grad_fast = self._make_fast(ex.MODE_GRAD)

    # ------------------------------------------------------------- calls
    def __call__(self, x, y, sample_weight=None):
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
        sample_weight : array-like of shape (b,), optional
            Non-negative weights of the rows: the loss is the weighted mean
            ``sum_i w_i l_i / sum_i w_i`` (``l_i`` the row's loss, averaged over
            the outputs for ``mse``/``bce_with_logits``), as scikit-learn weighs
            a minibatch.  Their sum must be positive.

        Returns
        -------
        float
            The mean (weighted mean) loss of the minibatch before the update.

        Raises
        ------
        TypeError, ValueError
            Bad ``x`` or ``y``; nothing is changed.
        FloatingPointError
            The loss or a gradient is not finite; nothing is changed.

        Notes
        -----
        With a :attr:`schedule` of ``interval="step"``, the call runs at the schedule's
        rate of this update, as :meth:`fit`'s updates do, and :attr:`lr` then reports the
        next update's (an epoch-interval schedule's rate changes at ``fit``'s epoch ends
        only).
        """
        if self._schedule is not None:
            return self._scheduled_call(x, y, sample_weight)
        if sample_weight is not None:
            return self._run(x, y, ex.MODE_TRAIN, sample_weight)
        loss = self._train_fast(x, y)
        return self._run(x, y, ex.MODE_TRAIN) if loss is None else loss

    def _scheduled_call(self, x, y, sample_weight):
        """:meth:`__call__` under a schedule: its rate of this update, then of the next."""
        with _training.scheduled_call(self):
            loss = None if sample_weight is not None else self._train_fast(x, y)
            return self._run(x, y, ex.MODE_TRAIN, sample_weight) if loss is None else loss

    def loss_and_grads(self, x, y, sample_weight=None):
        """Forward, loss and backward without an update; fills :attr:`grads`.

        Parameters
        ----------
        x, y, sample_weight
            As :meth:`__call__`'s.

        Returns
        -------
        float
            The mean (weighted mean) loss of the minibatch.

        Raises
        ------
        TypeError, ValueError, FloatingPointError
            As :meth:`__call__`; nothing is changed.
        """
        if sample_weight is not None:
            return self._run(x, y, ex.MODE_GRAD, sample_weight)
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

    def _settings_changed(self, clip=None):
        # gradient clipping's kernel, loaded when a step first clips (once per process)
        if (self.hyper[ex.H_CLIP] if clip is None else clip) > 0.0:
            ex.load_kernels(self.dtype, (ex.K_CLIP_GRAD_NORM,), self.threads)

    def _run(self, x, y, mode, sample_weight=None):
        """Validate (and convert) one minibatch, run it through the executor
        in ``mode`` and report a failure: the path of every call the fast one
        (:meth:`_make_fast`) does not take."""
        x, n = self._features(x, "x", self.batch_size)
        yi, yf = self._targets(y, n, check_range=False)
        self.check_train_rows(n)
        if sample_weight is not None:
            w = V.sample_weight(sample_weight, "sample_weight", n)
            if not w.sum() > 0.0:
                raise ValueError("sample_weight: the weights of the minibatch sum to 0; at least one "
                                 "must be positive")
            ex.load_kernels(self.dtype, (ex.K_WEIGH_ROWS,), self.threads)     # (once per process)
            with self._lock:
                b = self.batch_size
                self.ws64[b:b + n] = w
                self.hyper[ex.H_WEIGHTED] = 1.0
                try:
                    status, loss, info = ex.run_tape(self._ctx, 0, self._tape_end[mode], n, x, yi, yf)
                finally:
                    self.hyper[ex.H_WEIGHTED] = 0.0
            if status:
                self._raise_status(status, info, yi)
            return loss
        with self._lock:
            status, loss, info = ex.run_tape(self._ctx, 0, self._tape_end[mode], n, x, yi, yf)
        if status:
            self._raise_status(status, info, yi)
        return loss

    # --------------------------------------------------- driver interface
    # A step split in two native calls around a reduction: DistributedStep runs
    # the gradients of its rows, sums them over the ranks into comm_vector's
    # gradients, then the update.  The caller holds self.lock around both.
    def gradients_of(self, x, yi, yf, n):
        """Forward, loss and backward of a checked minibatch, without the update.

        The caller holds :attr:`lock`.

        Parameters
        ----------
        x : ndarray, shape (n, in_features), dtype ``self.dtype``
            As :meth:`check_features` returns it.
        yi, yf : ndarray
            As :meth:`check_targets` returns them.
        n : int
            Rows, ``1 <= n <= batch_size``.

        Returns
        -------
        status : int
            0, or a ``fastbp._isa.STATUS_*`` code for :meth:`raise_status`
            (with ``info`` and ``yi``); then only :attr:`grads` may have changed.
        loss : float
            The mean loss of the minibatch.
        info : int
            The row of a bad label.
        """
        return ex.run_step(self._ctx, self.plan.sec, n, x, yi, yf, ex.MODE_GRAD)

    def apply_update(self):
        """The optimizer update from the gradients in :attr:`grad_vector`, after checking
        that they are finite.  The caller holds :attr:`lock`.

        Returns
        -------
        status : int
            0, or ``fastbp._isa.STATUS_GRAD_NONFINITE`` (for :meth:`raise_status`):
            then nothing was changed.
        info : int
        """
        status, _, info = ex.run_update(self._ctx, self.plan.sec, self._no_yf)
        return status, info

    def gather(self, rows, X, yi, yf, x_out, yi_out, yf_out):
        """Rows ``rows`` of a checked data set gathered into staging buffers.

        Parameters
        ----------
        rows : ndarray of int64, shape (b,)
        X, yi, yf : ndarray
            The data set as :meth:`check_features` / :meth:`check_targets` return it.
        x_out : ndarray, shape (>= b, in_features)
        yi_out : ndarray of int64, shape (>= b,)
        yf_out : ndarray, shape (>= b, out_features)

        Returns
        -------
        (xb, yib, yfb)
            :meth:`gradients_of`'s arguments (see :func:`fastbp._step_base.gather_rows`).
        """
        return gather_rows(rows, X, yi, yf, x_out, yi_out, yf_out, self.classification)

    def _fit_runner(self, data, n, starts, shuffle, epochs):
        """One epoch of :meth:`fit` (:meth:`StepBase.fit`): inside one native call
        (:func:`fastbp._executor.run_fit`) from :data:`FIT_NATIVE_MIN_STEPS` steps
        per fit up, else a loop of the step's own compiled call (same results);
        the rate of every update comes in ``lrs``."""
        X, yi, yf = data
        per_epoch = len(starts) - 1
        native = epochs * per_epoch >= FIT_NATIVE_MIN_STEPS
        p = self.plan

        def train_epoch(e, perm, lrs, out):
            with self._lock:
                if native:
                    status, done, info = ex.run_fit(self._ctx, p.sec, X, yi, yf, perm, starts, not shuffle,
                                                    p.x_buf, p.yf_buf, self._yi_stage, out, lrs)
                else:
                    status, done, info = self._fit_loop(X, yi, yf, perm, starts, not shuffle, out, lrs)
            if status:
                self._raise_status(status, info, where=f" at step {e * per_epoch + done} of fit")
        return train_epoch

    def _fit_loop(self, X, yi, yf, perm, starts, in_order, losses, lrs):
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
                xb, yib, yfb = gather_rows(perm[lo:hi], X, yi, yf, self._fit_stage[0], self._yi_stage,
                                           self._fit_stage[1], classif)
            if len(lrs):
                self.hyper[ex.H_LR] = lrs[s]
            status, loss, info = ex.run_tape(self._ctx, 0, end, nb, xb, yib, yfb)
            if status:
                return status, s, info
            losses[s] = loss
        return ex.STATUS_OK, len(losses), 0

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

        Raises
        ------
        ValueError
            More than ``batch_size`` rows for a model with a
            ``BatchNorm1d(track_running_stats=False)``, which normalises an
            eval call with the statistics of its rows (predict would cut them
            into minibatches normalised separately).
        """
        # validated into the executor's form: every chunk passes the compiled step's
        # layout check; a rejection would still be reported, never returned as output
        X, n = self._features(X, "X")
        self.check_eval_rows(n)
        out = np.empty((n, self.n_out), dtype=self.dtype)
        p = self.plan
        bs = self.batch_size
        with self._lock:
            self.hyper[ex.H_TRAINING] = 0.0     # eval mode (Dropout off, BatchNorm's running statistics)
            try:
                if -(-n // bs) >= PREDICT_NATIVE_MIN_CHUNKS:
                    status, row = ex.run_predict(self._ctx, p.sec, X, out, bs, p.out_buf)
                    if status:
                        self._raise_status(status, ex.INFO_ONE_ROW if status == ex.STATUS_BAD_INPUT else 0,
                                           where=f" in predict (rows from {row})")
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
            finally:
                self.hyper[ex.H_TRAINING] = 1.0
        return out

    def save(self, path):
        """Write a checkpoint (see :func:`fastbp.load`), atomically.

        Parameters
        ----------
        path : str or os.PathLike
            The file (an ``.npz``): architecture, weights, optimizer state, step count,
            dtype, RNG state and learning-rate schedule.
        """
        save(self, path)
