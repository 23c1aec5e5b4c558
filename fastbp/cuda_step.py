"""The fused training step on an NVIDIA GPU: ``fastbp.compile(..., device="cuda")``.

A :class:`CudaTrainStep` runs exactly the graph a CPU :class:`~fastbp.step.TrainStep`
runs: both are a :class:`fastbp._step_base.StepBase`, which checks the
arguments, initialises the weights and builds the plan with the same
compiler call.  Its device memory is the plan's flat arena as ONE device
array, every buffer being a view of it.  The layout of this side:

- :mod:`fastbp._cuda_tape`: the interpreter of the instruction tape (the
  kernel launches of every opcode, on one CUDA stream, asynchronously);
- :mod:`fastbp._cuda_status`: the step's own kernels (status word, gated
  updates, minibatch gather);
- :mod:`fastbp._cuda_device`: device arrays at the boundary (recognition,
  checks, :func:`require_cuda`);
- this module: the step class (calls, fit, predict, transfers).

None of them imports the CPU executor or the BLAS binding.

Host-device traffic of a training step: the minibatch when it is given as a
numpy array (host to device, straight into the arena), and one small copy
back at the end (the loss and the status, four float64 values).  Inputs that
are already on the GPU (numba device arrays and anything exposing
``__cuda_array_interface__``: CuPy arrays, PyTorch CUDA tensors) are read in
place, without a copy.  :meth:`CudaTrainStep.fit` copies the data set to the
device once (unless it is there already) and gathers each minibatch with a
kernel.

Failure semantics are the CPU's: a bad label, a non-finite loss or a
non-finite gradient leaves the weights and the optimizer state untouched.
One difference: after a bad label or a non-finite loss the backward pass
has run on the device (only the update is gated), so :attr:`grads` hold
that call's gradients (NaN), where the CPU step stops before the backward
and keeps the previous ones.
The check runs on the device: a status kernel after the loss (labels, loss)
and one before the update (gradients) write a status word that the update
kernels read; they return at once when it is set.  The status is sticky
until the host has read it, so in :meth:`CudaTrainStep.fit` the failing step
and every later one skip their updates, exactly as the CPU stops there.

Importing this module never requires numba-cuda or a GPU; constructing a
step does (:func:`require_cuda` raises a :class:`RuntimeError` naming the
reason otherwise).
"""
from __future__ import annotations

import numpy as np

from . import _bf16
from . import _isa as ex
from . import _validate as V
from . import training as _training
from ._cuda_device import (device_array, device_features, device_targets, kind_error, require_cuda,
                           stage_params)
from ._loss_targets import float_targets
from ._step_base import StepBase
from .cuda_gradfn import CudaGradFunction
from .optimizers import optimizer_from_spec
from .registry import losses as _loss_registry

try:  # numba-cuda is optional: without it only require_cuda() is usable
    from numba import cuda

    from ._cuda_status import _k_gather
    from ._cuda_tape import DeviceTape, TapeCall
    from .kernels.cuda.launch import grid_ew
except Exception:  # noqa: BLE001 - any failure: cuda_available() explains it
    cuda = None

__all__ = ["CudaTrainStep", "CudaGradFunction", "require_cuda"]


class CudaTrainStep(StepBase):
    """A model compiled into one fused training step that runs on an NVIDIA GPU.

    Create it with ``fastbp.compile(model, ..., device="cuda")``.  Same
    public API as :class:`fastbp.TrainStep`; parameters, gradients,
    activations and optimizer state live in one device array.

    Parameters
    ----------
    model, loss, optimizer, batch_size, dtype, seed, schedule, precision
        As for :func:`fastbp.compile` (validated by the same code; ``precision="bf16"``
        is the CPU's, a ValueError here).

    Attributes
    ----------
    model : Sequential
    loss : str
    optimizer : SGD or Adam
    batch_size : int
    dtype : numpy.dtype
        float32 or float64.
    plan : Plan
        The compiled graph, identical to a CPU step's for the same model.
    arena : numba device array, shape (plan.arena_size,), dtype ``dtype``
        All device state.
    params : dict of str -> device array
        Live device views of the weights (``"0.W"`` of shape ``(in, out)``,
        ``"0.b"`` of shape ``(out,)``, ...); :meth:`params_host` copies them
        to numpy, :meth:`load_params_from` sets them.
    grads : dict of str -> device array
        Gradients of the last step, same keys and shapes.
    param_vector, grad_vector : device array, (n_params,)
        All parameters / gradients, flat, in the CPU step's order.
    state_vectors : list of device arrays, (n_params,)
        Optimizer state (SGD momentum; Adam's two moments).
    n_steps : int
        Updates applied so far.

    Raises
    ------
    RuntimeError
        No CUDA device or driver was found (nothing else is done).
    """

    _device = "cuda"     # precision="bf16" is the CPU's (a ValueError here); "auto" is "full"

    def __init__(self, model, loss, optimizer, batch_size, dtype, seed, _params=None, schedule=None,
                 precision="full"):
        _bf16.resolve(precision, np.float32, "cuda")   # the argument's error (bf16 is CPU-only) before the probe
        require_cuda("fastbp.compile(..., device='cuda')")
        # the shared part: validation, initialisation and the compiler call of the CPU step
        super().__init__(model, loss, optimizer, batch_size, dtype, seed, _params, schedule, precision)
        p = self.plan
        self._tape = DeviceTape(p, self.arena, self.hyper)   # the host arena: the initial contents
        self.arena = self._tape.arena
        self._stream = cuda.stream()
        self._yi_dev = cuda.device_array(self.batch_size, dtype=np.int64)
        self._dirty = False            # the status word holds an unread failure
        self.params = {name: self._node_view(p.value_buf[node.id], shape) for name, node, _, shape in p.params}
        self.grads = {name: self._node_view(p.grad_buf[node.id], shape) for name, node, _, shape in p.params}
        pr0, prn = p.param_region
        gr0, grn = p.grad_region
        self.param_vector = self._tape.region(pr0, prn)
        self.grad_vector = self._tape.region(gr0, grn)
        self.state_vectors = [self._tape.region(o, prn) for o in p.state_offsets]
        self._is_adam = self.optimizer.name == "adam"      # the optimizer that counts its steps in H_T

    @property
    def stream(self):
        """The CUDA stream every kernel and copy of this step runs on, in order (record
        ``numba.cuda`` events on it to time the step on the device)."""
        return self._stream

    def _node_view(self, buf, shape):
        off, r, c = (int(v) for v in self.plan.bufs[buf])
        return self.arena[off:off + r * c].reshape(*shape) if shape else self.arena[off:off + 1]

    # ----------------------------------------------------------- inputs
    def _input_x(self, x, name, max_rows=None):
        """Validate ``x``; returns ``(n, device array or None, host array or None)``."""
        d = device_array(x)
        if d is None:
            if not isinstance(x, np.ndarray):
                raise kind_error(name, x)
            # the CPU step's input path: any layout, converted to what is copied to the device
            xh, n = self._features(x, name, max_rows)
            return n, None, xh
        return device_features(d, name, self.dtype, self.n_in, max_rows), d, None

    def _input_y(self, y, n, name, check_range):
        """Validate targets; returns ``(device array or None, host array or None)``.

        Host targets are converted as on the CPU; device targets must already
        be int64 labels ``(n,)`` or ``(n, out)`` floats of the step's dtype.
        """
        d = device_array(y)
        if d is None:
            if not isinstance(y, np.ndarray):
                raise kind_error(name, y)
            yi, yf = self._targets(y, n, name=name, check_range=check_range)
            return None, (yi if self.classification else yf)
        return device_targets(d, name, n, self.n_out, self.dtype, self.loss, self.classification), None

    def _stage(self, ctx, n, xd, xh, yd, yh):
        """Point ``ctx`` at the minibatch: host data is copied into the arena."""
        t = self._tape
        s = ctx.stream
        if xh is not None:
            xv = t.view(self.plan.x_buf, n)
            xv.copy_to_device(xh, stream=s)
            ctx.x = xv
        else:
            ctx.x = xd
        if yh is not None:
            if self.classification:
                yv = self._yi_dev[:n]
            else:
                yv = t.view(self.plan.yf_buf, n)
            yv.copy_to_device(yh, stream=s)
            ctx.target = yv
        else:
            ctx.target = yd

    def _begin(self):
        ctx = TapeCall(self._stream)
        if self._dirty:
            self._tape.reset_status(ctx.stream)
            self._dirty = False
        return ctx

    def _raise(self, status, info, y=None, where=""):
        self._dirty = True
        self._raise_status(status, info, y, where)

    def _check_device_domain(self, yd, n, name):
        """ValueError naming a device target outside the loss's domain (``poisson``: negative or
        not finite), from one copy to the host; nothing for other losses."""
        if _loss_registry.get(self.loss).nonnegative_targets:
            float_targets(yd.copy_to_host(), name, n, self.n_out, self.dtype, self.loss)

    def _run_one(self, x, y, mode):
        n, xd, xh = self._input_x(x, "x", self.batch_size)
        yd, yh = self._input_y(y, n, "y", check_range=False)
        self.check_train_rows(n)
        p = self.plan
        hi = p.sec[ex.S_END] if mode == ex.MODE_TRAIN else p.sec[ex.S_BWD]
        with self._lock:
            ctx = self._begin()
            self._stage(ctx, n, xd, xh, yd, yh)
            ctx.loss = self._tape.res_loss
            ctx.t = self.hyper[ex.H_T] + 1.0
            self._tape.run(ctx, 1, int(hi), n)
            status, info, _, loss = self._tape.read_status(ctx.stream)
            if status == ex.STATUS_LOSS_NONFINITE and yd is not None:
                self._dirty = True
                self._check_device_domain(yd, n, "y")    # (the update was skipped)
            if status:
                self._raise(status, info, yh if yh is not None else yd)
            if mode == ex.MODE_TRAIN and p.sec[ex.S_END] > p.sec[ex.S_BWD]:
                self.hyper[ex.H_STEPS] += 1.0
                if self._is_adam:
                    self.hyper[ex.H_T] += 1.0
        return loss

    # ------------------------------------------------------------- calls
    def __call__(self, x, y):
        """One training step on a minibatch, on the GPU.

        Parameters
        ----------
        x : ndarray or CUDA device array, shape (b, in_features), dtype ``self.dtype``
            C-contiguous, ``1 <= b <= batch_size``.  A numpy array is copied
            into the device arena; a device array is read in place.
        y : ndarray or CUDA device array
            Integer labels ``(b,)`` (int64 when on the device) for
            ``softmax_cross_entropy`` and ``svm``; float targets
            ``(b, out_features)`` for ``mse`` and ``bce_with_logits``.

        Returns
        -------
        float
            The mean loss of the minibatch before the update.

        Raises
        ------
        TypeError, ValueError
            Bad ``x`` or ``y`` (a label out of range: weights unchanged).
        FloatingPointError
            The loss or a gradient is not finite; weights and optimizer
            state unchanged.

        Notes
        -----
        With a :attr:`schedule` of ``interval="step"``, the call runs at the schedule's
        rate of this update, as :meth:`fit`'s updates do, and :attr:`lr` then reports the
        next update's.
        """
        if self._schedule is None:
            return self._run_one(x, y, ex.MODE_TRAIN)
        with _training.scheduled_call(self):
            return self._run_one(x, y, ex.MODE_TRAIN)

    def loss_and_grads(self, x, y):
        """Forward, loss and backward without an update; fills :attr:`grads` (on the device).

        Parameters
        ----------
        x, y
            As :meth:`__call__`'s.

        Returns
        -------
        float
            The mean loss of the minibatch.
        """
        return self._run_one(x, y, ex.MODE_GRAD)

    def _fit_data(self, X, Y):
        """The checked data set of :meth:`fit` (:meth:`StepBase.fit`): host or device arrays.

        The data set is copied to the GPU once when the fit starts (not at
        all when it is there already); each minibatch is gathered there by a
        kernel.  The shuffling is the CPU step's (same generator, same
        draws), so a CPU and a GPU step with the same weights see the same
        minibatches.  A host label out of range is a ValueError up front; a
        device label out of range stops the fit at its step (the steps
        before it were applied).  Device targets of a loss with a domain
        (``poisson``) are copied to the host once and checked up front.
        """
        n, xd, xh = self._input_x(X, "X")
        yd, yh = self._input_y(Y, n, "Y", check_range=True)
        if yd is not None:
            self._check_device_domain(yd, n, "Y")
        return (xd, xh, yd, yh), n

    def _fit_runner(self, data, n, starts, shuffle, epochs):
        """One epoch of :meth:`fit` on the device: a gather kernel and the tape per
        minibatch, the status read once at the end of the epoch; the rate of every
        update (``lrs``) is set before its launch."""
        xd, xh, yd, yh = data
        per_epoch = len(starts) - 1
        p = self.plan
        t = self._tape
        dev = {}

        def upload(s):
            Xd = xd if xd is not None else cuda.to_device(xh, stream=s)
            Yd = yd if yd is not None else cuda.to_device(yh, stream=s)
            dev["X"] = Xd
            dev["Y2"] = Yd.reshape(n, 1) if self.classification else Yd
            dev["perm"] = cuda.device_array(n, dtype=np.int64, stream=s)
            dev["losses"] = cuda.device_array(per_epoch, dtype=np.float64, stream=s)

        def train_epoch(e, perm, lrs, out):
            with self._lock:
                ctx = self._begin()
                s = ctx.stream
                if not dev:
                    upload(s)
                Xd, Y2, perm_d, losses_d = dev["X"], dev["Y2"], dev["perm"], dev["losses"]
                t0 = self.hyper[ex.H_T]
                end = int(p.sec[ex.S_END])
                perm_d.copy_to_device(perm, stream=s)
                for j in range(per_epoch):
                    lo = int(starts[j])
                    nb = int(starts[j + 1]) - lo
                    xv = t.view(p.x_buf, nb)
                    if self.classification:
                        yv = self._yi_dev[:nb]
                        yv2 = yv.reshape(nb, 1)
                    else:
                        yv = yv2 = t.view(p.yf_buf, nb)
                    grid, block = grid_ew(nb, max(self.n_in, int(Y2.shape[1])))
                    _k_gather[grid, block, s](Xd, Y2, perm_d, lo, xv, yv2)
                    ctx.x = xv
                    ctx.target = yv
                    ctx.loss = losses_d[j:j + 1]
                    ctx.step = j
                    ctx.t = t0 + j + 1.0
                    if len(lrs):
                        self.hyper[ex.H_LR] = lrs[j]      # read when the update is launched
                    t.run(ctx, 1, end, nb)
                losses_d.copy_to_host(out, stream=s)
                status, info, failed, _ = t.read_status(s)     # waits for the epoch
                done = failed if status else per_epoch
                if p.sec[ex.S_END] > p.sec[ex.S_BWD]:
                    self.hyper[ex.H_STEPS] += done
                    if self._is_adam:
                        self.hyper[ex.H_T] += done
                if status == ex.STATUS_BAD_LABEL:      # device labels: name the row of Y
                    self._dirty = True
                    row = int(perm[starts[failed] + info])
                    raise ValueError(f"Y[{row}] = {int(Y2[row, 0])} is not a class label in [0, {self.n_out}) "
                                     f"at step {e * per_epoch + failed} of fit; that step and the later ones "
                                     f"were not applied")
                if status:
                    self._raise(status, info, where=f" at step {e * per_epoch + failed} of fit")
        return train_epoch

    def _set_weights(self, state):
        params, buffers = state
        off, nbuf = self.plan.buffer_region
        with self._lock:
            self.param_vector.copy_to_device(np.ascontiguousarray(params, dtype=self.dtype), stream=self._stream)
            if nbuf:
                dst = self._tape.region(off, nbuf)
                dst.copy_to_device(np.ascontiguousarray(buffers, dtype=dst.dtype), stream=self._stream)
            self._stream.synchronize()

    def predict(self, X):
        """Network outputs (scores, before any loss) for every row of ``X``, on the GPU.

        Parameters
        ----------
        X : ndarray or CUDA device array, shape (n, in_features), dtype ``self.dtype``

        Returns
        -------
        ndarray or device array, shape (n, out_features), dtype ``self.dtype``
            A numpy array for a numpy ``X``; a numba device array (not
            copied back) for a device ``X``.
        """
        n, xd, xh = self._input_x(X, "X")
        self.check_eval_rows(n)
        p = self.plan
        t = self._tape
        fwd = int(p.sec[ex.S_FWD])
        with self._lock:
            ctx = TapeCall(self._stream)
            s = ctx.stream
            Xd = xd if xd is not None else cuda.to_device(xh, stream=s)
            out = cuda.device_array((n, self.n_out), dtype=self.dtype, stream=s)
            bs = self.batch_size
            self.hyper[ex.H_TRAINING] = 0.0     # eval mode (Dropout off), read as each launch is made
            try:
                for lo in range(0, n, bs):
                    hi = min(lo + bs, n)
                    ctx.x = Xd[lo:hi]
                    t.run(ctx, 1, fwd, hi - lo)
                    out[lo:hi].copy_to_device(t.view(p.out_buf, hi - lo), stream=s)
            finally:
                self.hyper[ex.H_TRAINING] = 1.0
            result = out.copy_to_host(stream=s) if xh is not None else out
            s.synchronize()
        return result

    def _buffer_host(self):
        """A host copy of the arena (for :attr:`buffers`, :attr:`buffer_vector`: copies)."""
        with self._lock:
            host = self.arena.copy_to_host(stream=self._stream)
            self._stream.synchronize()
        return host

    # ------------------------------------------------- host <-> device
    def params_host(self):
        """Copies of the weights on the host (one device-to-host copy).

        Returns
        -------
        dict of str -> ndarray
            Same keys and shapes as :attr:`params`, dtype ``self.dtype``.
        """
        p = self.plan
        pr0, prn = p.param_region
        with self._lock:
            flat = self.param_vector.copy_to_host(stream=self._stream)
            self._stream.synchronize()
        out = {}
        for name, _, off, shape in p.params:
            k = int(np.prod(shape, dtype=np.int64)) if shape else 1
            out[name] = flat[off - pr0:off - pr0 + k].reshape(shape).copy()
        return out

    def _same_layout(self, other, optimizer_state):
        mine = [(name, tuple(shape)) for name, _, _, shape in self.plan.params]
        theirs = [(name, tuple(shape)) for name, _, _, shape in other.plan.params]
        if mine != theirs or self.plan.buffer_region[1] != other.plan.buffer_region[1]:
            return False
        return not optimizer_state or (other.optimizer.name == self.optimizer.name
                                       and len(self.state_vectors) == len(other.state_vectors))

    def load_params_from(self, source, optimizer_state=False):
        """Set the weights from a CPU step, another GPU step or a mapping.

        Parameters
        ----------
        source : TrainStep, CudaTrainStep or mapping of str -> array
            A step of the same architecture (weights, and BatchNorm's running
            statistics, copied in one transfer:
            host to device from a CPU step, device to device from a GPU
            step), or ``{name: array}`` with some of :attr:`params`' keys
            (numpy or device arrays of the same shapes).
        optimizer_state : bool, default False
            With a step as ``source``: also copy its optimizer state, its step
            counters, its learning rate (base and scheduled), schedule, dropout
            seed and shuffling generator (same optimizer type needed), so
            training continues exactly as ``source`` would (with this step's
            own optimizer constants and clipping).

        Returns
        -------
        CudaTrainStep
            ``self``.

        Raises
        ------
        TypeError, ValueError, KeyError
            Wrong source type, another architecture, unknown names, wrong shapes.
        """
        optimizer_state = V.boolean("optimizer_state", optimizer_state)
        if isinstance(source, StepBase):
            if not self._same_layout(source, optimizer_state):
                raise ValueError("load_params_from: source has another architecture"
                                 + (" or optimizer" if optimizer_state else "") + f" ({source!r} vs {self!r})")
            if source.dtype != self.dtype:
                raise TypeError(f"load_params_from: source has dtype {source.dtype}, this step {self.dtype}")
            if source is self:
                return self
            pairs = [(self.param_vector, source.param_vector)]
            if optimizer_state:
                pairs += list(zip(self.state_vectors, source.state_vectors))
            off, nbuf = self.plan.buffer_region        # BatchNorm's running statistics come along
            if nbuf:
                src = (source._tape.region(*source.plan.buffer_region) if isinstance(source, CudaTrainStep)
                       else source.buffer_vector)
                pairs.append((self._tape.region(off, nbuf), src))
            first, second = sorted((self, source), key=id)     # one lock order: no deadlock
            with first.lock, second.lock:
                if isinstance(source, CudaTrainStep):
                    source._stream.synchronize()
                for dst, src in pairs:
                    dst.copy_to_device(src, stream=self._stream)
                self._stream.synchronize()
                if optimizer_state:
                    # the training progress: counters, rates (the base one and the scheduled
                    # next), the dropout stream and the shuffling generator, the schedule (not
                    # this step's own optimizer constants and clipping)
                    self._take_state_of(source, ex.PROGRESS_SLOTS)
            return self
        if not hasattr(source, "items"):
            raise TypeError("load_params_from: source must be a fastbp.TrainStep, a CudaTrainStep or a "
                            f"mapping of parameter name -> array, got {type(source).__name__}")
        staged = stage_params(self.params, source, self.dtype)
        with self._lock:
            for dst, v in staged:
                dst.copy_to_device(v, stream=self._stream)
            self._stream.synchronize()
        return self

    def to_cpu(self):
        """A CPU :class:`fastbp.TrainStep` in exactly this step's state.

        Weights, gradients, optimizer state, learning rate, step counters
        and the shuffling generator are copied (the arena in one transfer);
        training the copy continues as this step would.

        Returns
        -------
        TrainStep
        """
        from .step import TrainStep       # the one import of the CPU side: this makes a CPU step
        cpu = TrainStep(self.model, self.loss, optimizer_from_spec(self.optimizer.spec()), self.batch_size,
                        self.dtype, self.seed)
        with self._lock:
            self.arena.copy_to_host(cpu.arena, stream=self._stream)
            self._stream.synchronize()
            cpu._take_state_of(self)
        return cpu

    @staticmethod
    def _host(a):
        """A host array for a host array or any CUDA device array (copied back: numba's, or
        anything with ``__cuda_array_interface__``, as the step's inputs)."""
        d = device_array(a)
        return a if d is None else d.copy_to_host()

    @classmethod
    def from_cpu(cls, step):
        """A GPU step in exactly the state of the CPU step ``step`` (e.g. from :func:`fastbp.load`).

        The GPU step has ``precision="full"`` whatever ``step``'s: a
        ``precision="bf16"`` step's weights and optimizer state are float32
        already (its bf16 copies are scratch, remade every call), so they are
        copied as they are and the GPU step multiplies them in float32.

        Parameters
        ----------
        step : TrainStep

        Returns
        -------
        CudaTrainStep

        Raises
        ------
        TypeError
            ``step`` is not a CPU :class:`fastbp.TrainStep`.
        """
        if not isinstance(step, StepBase) or isinstance(step, CudaTrainStep):
            raise TypeError(f"step must be a fastbp.TrainStep, got {type(step).__name__}")
        gpu = cls(step.model, step.loss, optimizer_from_spec(step.optimizer.spec()), step.batch_size,
                  step.dtype, step.seed)
        # the GPU plan is the CPU plan without a bf16 plan's copies, which come after everything
        # else (fastbp._bf16_plan): the weights, gradients, optimizer state and running statistics
        # lie at the same offsets, in the first gpu.arena.size elements
        gp, cp = gpu.plan, step.plan
        n = int(gpu.arena.size)
        if ([tuple(gp.param_region), tuple(gp.grad_region), list(gp.state_offsets), tuple(gp.buffer_region)]
                != [tuple(cp.param_region), tuple(cp.grad_region), list(cp.state_offsets),
                    tuple(cp.buffer_region)] or n > step.arena.size):
            raise RuntimeError(f"internal: the GPU step's memory layout differs from the CPU step's "
                               f"(precision={step.precision!r})")
        with step.lock, gpu.lock:
            gpu.arena.copy_to_device(step.arena[:n], stream=gpu._stream)
            gpu._stream.synchronize()
            gpu._take_state_of(step)
        return gpu

    def save(self, path):
        """Write a checkpoint (see :func:`fastbp.load`) from a host copy of this step.

        Load it back on the GPU with ``CudaTrainStep.from_cpu(fastbp.load(path))``.

        Parameters
        ----------
        path : str or os.PathLike
        """
        self.to_cpu().save(path)
