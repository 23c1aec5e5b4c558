"""The fused training step on an NVIDIA GPU: ``fastbp.compile(..., device="cuda")``.

A :class:`CudaTrainStep` runs exactly the graph a CPU :class:`~fastbp.step.TrainStep`
runs: it is built by the same compiler call (:func:`fastbp.compiler.build_plan`,
through an internal CPU step used as the template), and its device memory is
the plan's flat arena as ONE device array, every buffer being a view of it.
A step walks the instruction tape in order and launches, for each
instruction, the CUDA kernels of :mod:`fastbp.kernels.cuda` with the
semantics of the CPU interpreter (:func:`fastbp._executor.run_tape`), all on
one CUDA stream, asynchronously.

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

import math
import threading

import numpy as np

from . import _isa as ex
from . import _validate as V
from .kernels.codes import LOSS_BCE_LOGITS, LOSS_MSE, LOSS_SOFTMAX_XENT, LOSS_SVM
from .kernels.cuda import cuda_available

try:  # numba-cuda is optional: without it only require_cuda() is usable
    from numba import cuda, float64, int64

    from .kernels.cuda import activations as _ga
    from .kernels.cuda import gates as _gg
    from .kernels.cuda import gemm as _gm
    from .kernels.cuda import linear as _gl
    from .kernels.cuda import losses as _glo
    from .kernels.cuda import optim as _go
    from .kernels.cuda.launch import REDUCE_THREADS, device, grid_1d, grid_ew, grid_reduce, kernel
except Exception:  # noqa: BLE001 - any failure: cuda_available() explains it
    cuda = None

__all__ = ["CudaTrainStep", "CudaGradFunction", "require_cuda"]

#: slots of the status word (a float64 device array, copied back after each call)
R_LOSS, R_STATUS, R_INFO, R_STEP = range(4)
RES_SIZE = 4

#: cap on the blocks of the grid-stride gradient check
_MAX_BLOCKS = 4096

# status codes as plain module constants (compile-time constants in the kernels)
_BAD_LABEL = ex.STATUS_BAD_LABEL
_LOSS_NONFINITE = ex.STATUS_LOSS_NONFINITE
_GRAD_NONFINITE = ex.STATUS_GRAD_NONFINITE


def require_cuda(what="device='cuda'"):
    """Raise unless the CUDA kernels can run here.

    Parameters
    ----------
    what : str
        The call that needs CUDA (starts the message).

    Returns
    -------
    Availability
        The truthy answer of :func:`fastbp.kernels.cuda.cuda_available`.

    Raises
    ------
    RuntimeError
        No CUDA device or driver was found (or numba-cuda / NVVM is
        missing); the message gives the reason.
    """
    avail = cuda_available()
    if not avail:
        raise RuntimeError(f"{what}: no CUDA device or driver was found ({avail.reason}). "
                           f"Use device='cpu' (the default) on this machine.")
    return avail


# ====================================================================== kernels
if cuda is not None:
    # the update bodies are the kernels of fastbp.kernels.cuda.optim, reused as
    # device functions: same arithmetic, plus the status gate below
    _sgd_body = device(_go._k_sgd.py_func)
    _first_bad_label = _glo._first_bad_label
    _adam_body = device(_go._k_adam.py_func)

    @kernel
    def _k_sgd_gated(p, g, v, lr, momentum, nesterov, weight_decay, res):
        """``_sgd_update``, skipped when the status word ``res[1]`` is set."""
        if res[1] != 0.0:
            return
        _sgd_body(p, g, v, lr, momentum, nesterov, weight_decay)

    @kernel
    def _k_adam_gated(p, g, m, v, step, sbc2, beta1, beta2, eps, weight_decay, decay, decoupled, res):
        """``_adam_update``, skipped when the status word ``res[1]`` is set."""
        if res[1] != 0.0:
            return
        _adam_body(p, g, m, v, step, sbc2, beta1, beta2, eps, weight_decay, decay, decoupled)

    @kernel
    def _k_loss_status(y, n_classes, loss, out, res, step):
        """After a loss kernel (one block): first bad label, else a non-finite loss,
        goes to the status word; a finite loss is stored in ``out[0, 0]``.

        ``y`` are the labels (size 0 for regression).  A status already set
        (by an earlier step of a fit) is kept.
        """
        buf = cuda.shared.array(REDUCE_THREADS, dtype=int64)
        if res[1] != 0.0:          # uniform over the block
            return
        _first_bad_label(y, n_classes, buf)
        if cuda.threadIdx.x == 0:
            if buf[0] < y.shape[0]:
                res[1] = float64(_BAD_LABEL)
                res[2] = float64(buf[0])
                res[3] = float64(step)
            else:
                v = loss[0]
                if v - v != 0.0:   # NaN or +-inf
                    res[1] = float64(_LOSS_NONFINITE)
                    res[3] = float64(step)
                elif out.shape[0] > 0:
                    out[0, 0] = v

    @kernel
    def _k_grad_status(g, res, step):
        """Before an update: set the status word if any gradient is NaN or infinite.

        Every writer writes the same values, so the race between blocks is benign.
        """
        if res[1] != 0.0:
            return
        bad = False
        for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
            v = g[i]
            if v - v != 0.0:
                bad = True
        if bad:
            res[1] = float64(_GRAD_NONFINITE)
            res[3] = float64(step)

    @kernel
    def _k_reset_status(res):
        if cuda.grid(1) == 0:
            res[1] = 0.0
            res[2] = 0.0
            res[3] = 0.0

    @kernel
    def _k_gather(X, Y, perm, lo, xo, yo):
        """``xo[r] = X[perm[lo + r]]`` and ``yo[r] = Y[perm[lo + r]]`` (a minibatch of a fit)."""
        x0, y0 = cuda.grid(2)
        sx, sy = cuda.gridsize(2)
        for r in range(y0, xo.shape[0], sy):
            src = perm[lo + r]
            for j in range(x0, xo.shape[1], sx):
                xo[r, j] = X[src, j]
            for j in range(x0, yo.shape[1], sx):
                yo[r, j] = Y[src, j]


# ============================================================== array helpers
def _device_array(a):
    """A numba device array for data already on the GPU (no copy), else None."""
    if cuda is None:
        return None
    if getattr(a, "__cuda_ndarray__", False):            # numba (also the simulator's)
        return a
    if hasattr(a, "__cuda_array_interface__"):           # CuPy, PyTorch CUDA, ...
        return cuda.as_cuda_array(a)
    return None


def _is_c_contiguous(d):
    return d.is_c_contiguous() if hasattr(d, "is_c_contiguous") else d.flags["C_CONTIGUOUS"]


def _kind_error(name, a):
    return TypeError(f"{name} must be a numpy.ndarray or a CUDA device array (numba device array, "
                     f"CuPy array, PyTorch CUDA tensor: anything with __cuda_array_interface__), "
                     f"got {type(a).__name__}")


def _adam_scalars(hyper, t):
    """Step-dependent scalars of Adam step ``t`` (as :func:`fastbp.kernels.cuda.optim._adam_update`)."""
    lr, b1, b2, wd = hyper[ex.H_LR], hyper[ex.H_B1], hyper[ex.H_B2], hyper[ex.H_WD]
    bc1 = 1.0 - b1 ** t
    bc2 = 1.0 - b2 ** t
    return lr / bc1, math.sqrt(bc2), 1.0 - lr * wd


class _Ctx:
    """Per-call values the tape programs read: stream, input, targets, loss slot, step."""
    __slots__ = ("stream", "x", "target", "loss", "step", "t")

    def __init__(self, stream):
        self.stream = stream
        self.x = None
        self.target = None
        self.loss = None
        self.step = 0
        self.t = 1.0


class _DeviceTape:
    """The GPU interpreter of a plan's tape over one device arena.

    ``program(nb)`` turns the tape into, per instruction, a list of
    closures ``run(ctx)`` that launch the CUDA kernels with the arena views
    of a minibatch of ``nb`` rows (views and launch arguments are made once
    per ``nb`` and cached).  Reads of the step's input buffer (``plan.x_buf``)
    go to ``ctx.x``, so a device input is read in place.
    """

    def __init__(self, plan, host_arena, hyper):
        self.plan = plan
        self.hyper = hyper          # the owner's float64 host array (read at launch time)
        self.dtype = plan.dtype
        self.arena = cuda.to_device(host_arena)
        self.ws64 = cuda.device_array(max(plan.batch_size, 1), dtype=np.float64)
        self.res = cuda.to_device(np.zeros(RES_SIZE, dtype=np.float64))
        self.res_loss = self.res[R_LOSS:R_LOSS + 1]
        self.res_host = cuda.pinned_array(RES_SIZE, dtype=np.float64)
        self.e1 = cuda.device_array(0, dtype=self.dtype)
        self.e2 = cuda.device_array((0, 0), dtype=self.dtype)
        self.no_labels = cuda.device_array(0, dtype=np.int64)
        self.one = cuda.to_device(np.ones((1, 1), dtype=self.dtype))
        self._programs = {}
        self._views = {}

    # ------------------------------------------------------------ views
    def view(self, buf, nb):
        """The 2-D device view of buffer ``buf`` for a minibatch of ``nb`` rows (cached)."""
        key = (buf, nb)
        v = self._views.get(key)
        if v is None:
            off, r, c = (int(x) for x in self.plan.bufs[buf])
            if r < 0:
                r = nb
            v = self._views[key] = self.arena[off:off + r * c].reshape(r, c)
        return v

    def vec(self, buf):
        if buf < 0:
            return self.e1
        off, r, c = (int(v) for v in self.plan.bufs[buf])
        return self.arena[off:off + r * c]

    def region(self, off, n):
        return self.arena[off:off + n]

    # ---------------------------------------------------------- programs
    def program(self, nb):
        prog = self._programs.get(nb)
        if prog is None:
            prog = self._programs[nb] = [self._compile(ins, nb) for ins in self.plan.tape]
        return prog

    def run(self, ctx, lo, hi, nb):
        """Launch instructions ``lo .. hi-1`` (OP_LOAD_X is the caller's job)."""
        prog = self.program(nb)
        for pc in range(lo, hi):
            for op in prog[pc]:
                op(ctx)

    def _compile(self, ins, nb):
        X_SLOT = self.plan.x_buf

        def V(i):
            if i < 0:
                return self.e2
            if i == X_SLOT:
                return _XSLOT
            return self.view(i, nb)

        def launch(fn, *args):
            """A closure launching ``fn(*args, stream=...)``; ``_XSLOT`` arguments read ``ctx.x``."""
            if any(a is _XSLOT for a in args):
                def run(ctx):
                    fn(*[ctx.x if a is _XSLOT else a for a in args], stream=ctx.stream)
            else:
                def run(ctx):
                    fn(*args, stream=ctx.stream)
            return run

        op = int(ins[ex.C_OP])
        out, a, b, c, d, e, f = (int(ins[k]) for k in (ex.C_OUT, ex.C_A, ex.C_B, ex.C_C, ex.C_D,
                                                         ex.C_E, ex.C_F))
        g, f1, f2, f3 = (int(ins[k]) for k in (ex.C_G, ex.C_F1, ex.C_F2, ex.C_F3))
        if op == ex.OP_LOAD_X:
            return []
        if op == ex.OP_LINEAR:
            fwd = _gl._linear_fwd_t if f1 else _gl._linear_fwd
            return [launch(fwd, V(a), V(b), self.vec(c), g, V(out))]
        if op == ex.OP_MATMUL:
            mm = _gm._mm_nt if f1 else _gm._mm_nn
            return [launch(mm, V(a), V(b), V(out), False)]
        if op == ex.OP_GATE:
            return [launch(_gg._gate_fwd, g, V(a), V(b), V(out))]
        if op == ex.OP_ACT:
            return [launch(_ga._act_fwd, V(a), g, V(out))]
        if op == ex.OP_SUM:
            return [launch(_gg._sum_fwd, V(a), V(out))]
        if op == ex.OP_LOSS:
            return [self._loss_op(V(a), V(b), V(out) if out >= 0 else self.e2, g, nb)]
        if op == ex.OP_SEED:
            return [launch(_gg._sum_bwd, self.one, V(out), False)]
        if op == ex.OP_LINEAR_BWD:
            # a=X, b=W, c=Y, d=dY (overwritten by dZ), e=dX, f=dW, out=db; the bias
            # gradient accumulates like dW (flag f3), as on the CPU
            X, W, Y, dZ = V(a), V(b), V(c), V(d)
            ops = []
            if g != 0:
                ops.append(launch(_ga._act_bwd, Y, dZ, g, dZ, False))
            if out >= 0:
                ops.append(launch(_gl._colsum, dZ, self.vec(out), bool(f3)))
            dW = V(f)
            if f1:      # dWt (out, in) = dZ^T X
                ops.append(launch(_gm._mm_tn, dZ, X, dW, bool(f3)))
            else:       # dW (in, out) = X^T dZ
                ops.append(launch(_gm._mm_tn, X, dZ, dW, bool(f3)))
            if e >= 0:  # dX = dZ W^T  (or dZ Wt)
                mm = _gm._mm_nn if f1 else _gm._mm_nt
                ops.append(launch(mm, dZ, W, V(e), bool(f2)))
            return ops
        if op == ex.OP_MATMUL_BWD:
            A, B, dO = V(a), V(b), V(d)
            ops = []
            if e >= 0:
                mm = _gm._mm_nn if f1 else _gm._mm_nt
                ops.append(launch(mm, dO, B, V(e), bool(f2)))
            if f >= 0:
                if f1:  # B stored transposed: dB = dO^T A
                    ops.append(launch(_gm._mm_tn, dO, A, V(f), bool(f3)))
                else:
                    ops.append(launch(_gm._mm_tn, A, dO, V(f), bool(f3)))
            return ops
        if op == ex.OP_GATE_BWD:
            return [launch(_gg._gate_bwd, g, V(a), V(b), V(d), V(e), V(f), bool(f2), bool(f3))]
        if op == ex.OP_ACT_BWD:
            return [launch(_ga._act_bwd, V(c), V(d), g, V(e), bool(f2))]
        if op == ex.OP_SUM_BWD:
            return [launch(_gg._sum_bwd, V(d), V(e), bool(f2))]
        if op in (ex.OP_SGD, ex.OP_ADAM):
            return [self._update_op(op, a, b, c, d, int(ins[ex.C_F4]))]
        raise RuntimeError(f"internal: opcode {op} has no CUDA implementation")

    def _loss_op(self, S, dS, out, kind, nb):
        fn = {LOSS_SOFTMAX_XENT: _glo._softmax_xent, LOSS_SVM: _glo._svm,
              LOSS_MSE: _glo._mse, LOSS_BCE_LOGITS: _glo._bce_logits}[kind]
        rowloss = self.ws64[:nb]
        classification = kind in (LOSS_SOFTMAX_XENT, LOSS_SVM)
        n_classes = S.shape[1]
        rgrid, rblock = grid_reduce()
        res = self.res
        no_labels = self.no_labels

        def run(ctx):
            fn(S, ctx.target, dS, rowloss, ctx.loss, stream=ctx.stream)
            labels = ctx.target if classification else no_labels
            _k_loss_status[rgrid, rblock, ctx.stream](labels, n_classes, ctx.loss, out, res, ctx.step)
        return run

    def _update_op(self, op, p0, g0, s0, s1, n):
        p = self.region(p0, n)
        gvec = self.region(g0, n)
        res = self.res
        blocks, threads = grid_1d(n)
        blocks = min(blocks, _MAX_BLOCKS)
        hyper = self.hyper
        if op == ex.OP_SGD:
            v = self.region(s0, n) if s0 >= 0 else self.e1

            def run(ctx):
                s = ctx.stream
                _k_grad_status[blocks, threads, s](gvec, res, ctx.step)
                _k_sgd_gated[blocks, threads, s](p, gvec, v, float(hyper[ex.H_LR]), float(hyper[ex.H_MOM]),
                                                 bool(hyper[ex.H_NESTEROV] != 0.0), float(hyper[ex.H_WD]), res)
            return run
        m = self.region(s0, n)
        v = self.region(s1, n)

        def run(ctx):
            s = ctx.stream
            step, sbc2, decay = _adam_scalars(hyper, ctx.t)
            _k_grad_status[blocks, threads, s](gvec, res, ctx.step)
            _k_adam_gated[blocks, threads, s](p, gvec, m, v, float(step), float(sbc2), float(hyper[ex.H_B1]),
                                              float(hyper[ex.H_B2]), float(hyper[ex.H_EPS]),
                                              float(hyper[ex.H_WD]), float(decay),
                                              bool(hyper[ex.H_DECOUPLED] != 0.0), res)
        return run

    # ----------------------------------------------------------- status
    def reset_status(self, stream):
        _k_reset_status[1, 1, stream](self.res)

    def read_status(self, stream):
        """One device-to-host copy of the status word; waits for the stream."""
        self.res.copy_to_host(self.res_host, stream=stream)
        stream.synchronize()
        r = self.res_host
        return int(r[R_STATUS]), int(r[R_INFO]), int(r[R_STEP]), float(r[R_LOSS])


class _XSlotType:
    def __repr__(self):
        return "<the step's input>"


_XSLOT = _XSlotType()


# ================================================================= the step
class CudaTrainStep:
    """A model compiled into one fused training step that runs on an NVIDIA GPU.

    Create it with ``fastbp.compile(model, ..., device="cuda")``.  Same
    public API as :class:`fastbp.TrainStep`; parameters, gradients,
    activations and optimizer state live in one device array.

    Parameters
    ----------
    model, loss, optimizer, batch_size, dtype, seed
        As for :func:`fastbp.compile` (validated by the same code).

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

    def __init__(self, model, loss, optimizer, batch_size, dtype, seed, _params=None):
        require_cuda("fastbp.compile(..., device='cuda')")
        from .step import TrainStep
        # the CPU step is the template: same validation, initialisation and compiler call
        host = TrainStep(model, loss, optimizer, batch_size, dtype, seed, _params=_params)
        self._host = host
        for k in ("model", "loss", "optimizer", "batch_size", "dtype", "seed", "rng", "n_in", "n_out",
                  "classification", "graph", "plan", "hyper"):
            setattr(self, k, getattr(host, k))
        p = self.plan
        self._tape = _DeviceTape(p, host.arena, self.hyper)
        self.arena = self._tape.arena
        self._stream = cuda.stream()
        self._yi_dev = cuda.device_array(self.batch_size, dtype=np.int64)
        self._dirty = False            # the status word holds an unread failure
        self._lock = threading.Lock()
        self.params = {name: self._node_view(p.value_buf[node.id], shape) for name, node, _, shape in p.params}
        self.grads = {name: self._node_view(p.grad_buf[node.id], shape) for name, node, _, shape in p.params}
        pr0, prn = p.param_region
        gr0, grn = p.grad_region
        self.param_vector = self._tape.region(pr0, prn)
        self.grad_vector = self._tape.region(gr0, grn)
        self.state_vectors = [self._tape.region(o, prn) for o in p.state_offsets]
        self._is_adam = self.optimizer.name != "sgd"

    def _node_view(self, buf, shape):
        off, r, c = (int(v) for v in self.plan.bufs[buf])
        return self.arena[off:off + r * c].reshape(*shape) if shape else self.arena[off:off + 1]

    # ------------------------------------------------------------ helpers
    @property
    def n_steps(self):
        return int(self.hyper[ex.H_STEPS])

    @property
    def lr(self):
        """The learning rate used by the next update (settable)."""
        return self._host.lr

    @lr.setter
    def lr(self, value):
        self._host.lr = value

    def _input_x(self, x, name, max_rows=None):
        """Validate ``x``; returns ``(n, device array or None, host array or None)``."""
        d = _device_array(x)
        if d is None:
            if not isinstance(x, np.ndarray):
                raise _kind_error(name, x)
            # the CPU step's input path: any layout, converted to what is copied to the device
            xh, n = self._host._features(x, name, max_rows)
            return n, None, xh
        if np.dtype(d.dtype) != self.dtype:
            raise TypeError(f"{name} has dtype {np.dtype(d.dtype)}; this step was compiled for {self.dtype} "
                            f"(convert it on the device first)")
        if len(d.shape) != 2 or d.shape[1] != self.n_in:
            raise ValueError(f"{name} must have shape (n, {self.n_in}), got {tuple(d.shape)}")
        n = int(d.shape[0])
        if n < 1:
            raise ValueError(f"{name} is empty: it must have at least one row")
        if max_rows is not None and n > max_rows:
            raise ValueError(f"{name} has {n} rows, more than batch_size={max_rows}")
        if not _is_c_contiguous(d):
            raise ValueError(f"{name} must be C-contiguous (row-major)")
        return n, d, None

    def _input_y(self, y, n, name, check_range):
        """Validate targets; returns ``(device array or None, host array or None)``.

        Host targets are converted as on the CPU; device targets must already
        be int64 labels ``(n,)`` or ``(n, out)`` floats of the step's dtype.
        """
        d = _device_array(y)
        if d is None:
            if not isinstance(y, np.ndarray):
                raise _kind_error(name, y)
            yi, yf = self._host._targets(y, n, name=name, check_range=check_range)
            return None, (yi if self.classification else yf)
        dt = np.dtype(d.dtype)
        shape = tuple(d.shape)
        if self.classification:
            if dt != np.int64:
                raise TypeError(f"{name} on the device must hold int64 class labels for loss {self.loss!r}, "
                                f"got dtype {dt}")
            if shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match the {n} rows of x, got {shape}")
        else:
            if dt != self.dtype:
                raise TypeError(f"{name} on the device must have dtype {self.dtype} for loss {self.loss!r}, "
                                f"got {dt}")
            if shape == (n,) and self.n_out == 1:
                d = d.reshape(n, 1)
                shape = (n, 1)
            if shape != (n, self.n_out):
                raise ValueError(f"{name} must have shape ({n}, {self.n_out}), got {shape}")
        if not _is_c_contiguous(d):
            raise ValueError(f"{name} must be C-contiguous")
        return d, None

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
        ctx = _Ctx(self._stream)
        if self._dirty:
            self._tape.reset_status(ctx.stream)
            self._dirty = False
        return ctx

    def _raise(self, status, info, y=None, where=""):
        self._dirty = True
        self._host._raise_status(status, info, y, where)

    def _run_one(self, x, y, mode):
        n, xd, xh = self._input_x(x, "x", self.batch_size)
        yd, yh = self._input_y(y, n, "y", check_range=False)
        p = self.plan
        hi = p.sec[ex.S_END] if mode == ex.MODE_TRAIN else p.sec[ex.S_BWD]
        with self._lock:
            ctx = self._begin()
            self._stage(ctx, n, xd, xh, yd, yh)
            ctx.loss = self._tape.res_loss
            ctx.t = self.hyper[ex.H_T] + 1.0
            self._tape.run(ctx, 1, int(hi), n)
            status, info, _, loss = self._tape.read_status(ctx.stream)
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
        """
        return self._run_one(x, y, ex.MODE_TRAIN)

    def loss_and_grads(self, x, y):
        """Forward, loss and backward without an update; fills :attr:`grads` (on the device).

        Returns the mean loss.  Same arguments as :meth:`__call__`.
        """
        return self._run_one(x, y, ex.MODE_GRAD)

    def fit(self, X, Y, epochs=1, shuffle=True, seed=None):
        """Train whole epochs with the data set on the device.

        The data set is copied to the GPU once (not at all when it is there
        already); each minibatch is gathered there by a kernel.  The
        shuffling is the CPU step's (same generator, same draws), so a CPU
        and a GPU step with the same weights see the same minibatches.

        Parameters
        ----------
        X : ndarray or CUDA device array, shape (n, in_features), dtype ``self.dtype``
        Y : ndarray or CUDA device array
            Targets for all ``n`` rows (see :meth:`__call__`).
        epochs : int, default 1
        shuffle : bool, default True
        seed : int, optional
            Seed of the shuffling; by default the step's own generator.

        Returns
        -------
        ndarray of float64, shape (epochs * ceil(n / batch_size),)
            The loss of every step.

        Raises
        ------
        ValueError
            A label out of range (checked up front for host labels, on the
            device for device labels; the steps before it were applied).
        FloatingPointError
            A step's loss or gradient is not finite.  The steps before it
            were applied; that step and the rest were not.
        """
        n, xd, xh = self._input_x(X, "X")
        epochs = V.positive_int("epochs", epochs)
        shuffle = V.boolean("shuffle", shuffle)
        seed = V.seed(seed)
        yd, yh = self._input_y(Y, n, "Y", check_range=True)
        # the CPU step's schedule: same generator, same draws, same minibatches,
        # each epoch's order drawn when the epoch starts
        starts = self._host._epoch_starts(n)
        per_epoch = len(starts) - 1
        n_steps = epochs * per_epoch
        losses = np.zeros(n_steps, dtype=np.float64)
        p = self.plan
        t = self._tape
        with self._lock:
            orders, rng_state = self._host._fit_orders(n, epochs, shuffle, seed)
            ctx = self._begin()
            s = ctx.stream
            Xd = xd if xd is not None else cuda.to_device(xh, stream=s)
            Yd = yd if yd is not None else cuda.to_device(yh, stream=s)
            if self.classification:
                Y2 = Yd.reshape(n, 1)
            else:
                Y2 = Yd
            perm_d = cuda.device_array(n, dtype=np.int64, stream=s)
            losses_d = cuda.device_array(per_epoch, dtype=np.float64, stream=s)
            t0 = self.hyper[ex.H_T]
            end = int(p.sec[ex.S_END])
            status = 0
            for e, perm in enumerate(orders):
                perm_d.copy_to_device(perm, stream=s)
                for j in range(per_epoch):
                    k = e * per_epoch + j
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
                    ctx.step = k
                    ctx.t = t0 + k + 1.0
                    t.run(ctx, 1, end, nb)
                losses_d.copy_to_host(losses[e * per_epoch:(e + 1) * per_epoch], stream=s)
                status, info, failed, _ = t.read_status(s)     # waits for the epoch
                if status:
                    break
            done = failed if status else n_steps
            if p.sec[ex.S_END] > p.sec[ex.S_BWD]:
                self.hyper[ex.H_STEPS] += done
                if self._is_adam:
                    self.hyper[ex.H_T] += done
            if status:
                self.rng.bit_generator.state = rng_state     # a failed fit consumes no shuffles
            if status == ex.STATUS_BAD_LABEL:      # device labels: name the row of Y
                self._dirty = True
                row = int(perm[starts[failed - e * per_epoch] + info])
                raise ValueError(f"Y[{row}] = {int(Y2[row, 0])} is not a class label in [0, {self.n_out}) "
                                 f"at step {failed} of fit; that step and the later ones were not applied")
            if status:
                self._raise(status, info, where=f" at step {failed} of fit")
        return losses

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
        p = self.plan
        t = self._tape
        fwd = int(p.sec[ex.S_FWD])
        with self._lock:
            ctx = _Ctx(self._stream)
            s = ctx.stream
            Xd = xd if xd is not None else cuda.to_device(xh, stream=s)
            out = cuda.device_array((n, self.n_out), dtype=self.dtype, stream=s)
            bs = self.batch_size
            for lo in range(0, n, bs):
                hi = min(lo + bs, n)
                ctx.x = Xd[lo:hi]
                t.run(ctx, 1, fwd, hi - lo)
                out[lo:hi].copy_to_device(t.view(p.out_buf, hi - lo), stream=s)
            result = out.copy_to_host(stream=s) if xh is not None else out
            s.synchronize()
        return result

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
        if mine != theirs:
            return False
        return not optimizer_state or (other.optimizer.name == self.optimizer.name
                                       and len(self.state_vectors) == len(other.state_vectors))

    def load_params_from(self, source, optimizer_state=False):
        """Set the weights from a CPU step, another GPU step or a mapping.

        Parameters
        ----------
        source : TrainStep, CudaTrainStep or mapping of str -> array
            A step of the same architecture (weights copied in one transfer:
            host to device from a CPU step, device to device from a GPU
            step), or ``{name: array}`` with some of :attr:`params`' keys
            (numpy or device arrays of the same shapes).
        optimizer_state : bool, default False
            With a step as ``source``: also copy its optimizer state and its
            step counters (same optimizer type needed), so training continues
            exactly as ``source`` would.

        Returns
        -------
        CudaTrainStep
            ``self``.

        Raises
        ------
        TypeError, ValueError, KeyError
            Wrong source type, another architecture, unknown names, wrong shapes.
        """
        from .step import TrainStep
        optimizer_state = V.boolean("optimizer_state", optimizer_state)
        if isinstance(source, (TrainStep, CudaTrainStep)):
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
            first, second = sorted((self, source), key=id)     # one lock order: no deadlock
            with first._lock, second._lock:
                if isinstance(source, CudaTrainStep):
                    source._stream.synchronize()
                for dst, src in pairs:
                    dst.copy_to_device(src, stream=self._stream)
                self._stream.synchronize()
                if optimizer_state:
                    for k in (ex.H_T, ex.H_STEPS):
                        self.hyper[k] = source.hyper[k]
            return self
        if not hasattr(source, "items"):
            raise TypeError("load_params_from: source must be a fastbp.TrainStep, a CudaTrainStep or a "
                            f"mapping of parameter name -> array, got {type(source).__name__}")
        staged = []
        for name, v in source.items():
            if name not in self.params:
                raise KeyError(f"load_params_from: unknown parameter {name!r}; expected some of "
                               f"{sorted(self.params)}")
            dst = self.params[name]
            d = _device_array(v)
            if d is None:
                v = np.ascontiguousarray(v, dtype=self.dtype)
                if v.shape != tuple(dst.shape):
                    raise ValueError(f"load_params_from: {name!r} must have shape {tuple(dst.shape)}, "
                                     f"got {v.shape}")
                staged.append((dst, v))
            else:
                if tuple(d.shape) != tuple(dst.shape) or np.dtype(d.dtype) != self.dtype:
                    raise ValueError(f"load_params_from: {name!r} must be a {self.dtype} device array of "
                                     f"shape {tuple(dst.shape)}, got {np.dtype(d.dtype)} {tuple(d.shape)}")
                staged.append((dst, d))
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
        from .optimizers import optimizer_from_spec
        from .step import TrainStep
        cpu = TrainStep(self.model, self.loss, optimizer_from_spec(self.optimizer.spec()), self.batch_size,
                        self.dtype, self.seed)
        with self._lock:
            self.arena.copy_to_host(cpu.arena, stream=self._stream)
            self._stream.synchronize()
            cpu.hyper[...] = self.hyper
            cpu.rng.bit_generator.state = self.rng.bit_generator.state
        return cpu

    @classmethod
    def from_cpu(cls, step):
        """A GPU step in exactly the state of the CPU step ``step`` (e.g. from :func:`fastbp.load`).

        Parameters
        ----------
        step : TrainStep

        Returns
        -------
        CudaTrainStep
        """
        from .optimizers import optimizer_from_spec
        from .step import TrainStep
        if not isinstance(step, TrainStep):
            raise TypeError(f"step must be a fastbp.TrainStep, got {type(step).__name__}")
        gpu = cls(step.model, step.loss, optimizer_from_spec(step.optimizer.spec()), step.batch_size,
                  step.dtype, step.seed)
        with step._lock, gpu._lock:
            gpu.arena.copy_to_device(step.arena, stream=gpu._stream)
            gpu._stream.synchronize()
            gpu.hyper[...] = step.hyper
            gpu.rng.bit_generator.state = step.rng.bit_generator.state
        return gpu

    def save(self, path):
        """Write a checkpoint (see :func:`fastbp.load`) from a host copy of this step.

        Load it back on the GPU with ``CudaTrainStep.from_cpu(fastbp.load(path))``.
        """
        self.to_cpu().save(path)

    def __repr__(self):
        return (f"<fastbp.CudaTrainStep {self.model!r} loss={self.loss!r} optimizer={self.optimizer!r} "
                f"batch_size={self.batch_size} dtype={self.dtype.name} steps={self.n_steps}>")


# ========================================================== fastbp.grad on GPU
def _grad_function_base():
    from .gradfn import GradFunction
    return GradFunction


class CudaGradFunction(_grad_function_base()):
    """``value, grads = f(**inputs)`` of ``fastbp.grad(..., device="cuda")``.

    Same contract as :class:`fastbp.gradfn.GradFunction`: inputs and
    parameters (numpy or CUDA device arrays) are written into the device
    arena, forward and backward run on the GPU, and the output value and
    the gradients come back as host copies (one device-to-host transfer).

    Raises
    ------
    RuntimeError
        No CUDA device or driver was found.
    """

    def __init__(self, output, wrt, dtype, batch_size):
        require_cuda("fastbp.grad(..., device='cuda')")
        super().__init__(output, wrt, dtype, batch_size)
        if np.any(self.plan.tape[:, ex.C_OP] == ex.OP_LOSS):
            from .graph import GraphError
            raise GraphError("fastbp.grad(device='cuda') does not take loss nodes; use fastbp.compile")
        self._tape = _DeviceTape(self.plan, self.arena, self.hyper)
        self.device_arena = self._tape.arena
        self._stream = cuda.stream()

    def _asarray(self, v):
        d = _device_array(v)
        return np.asarray(v) if d is None else d

    def __call__(self, **values):
        p = self.plan
        nb, staged = self._stage(values)
        t = self._tape
        with self._lock:
            s = self._stream
            for n, v in staged:
                dst = t.view(p.value_buf[n.id], nb)
                if _device_array(v) is None:
                    v = np.ascontiguousarray(v, dtype=self.dtype).reshape(dst.shape)
                else:
                    if np.dtype(v.dtype) != self.dtype:
                        raise TypeError(f"{n.name} on the device must have dtype {self.dtype}, got "
                                        f"{np.dtype(v.dtype)}")
                    v = v.reshape(*dst.shape)
                dst.copy_to_device(v, stream=s)
            ctx = _Ctx(s)
            t.run(ctx, 0, int(p.sec[ex.S_BWD]), nb)
            t.arena.copy_to_host(self.arena, stream=s)   # the host arena mirrors the device one
            s.synchronize()
            from .compiler import view
            out = view(self.arena, p, p.value_buf[self.output.id], self.output.shape, nb)
            value = float(out) if out.ndim == 0 else out.copy()
            grads = {w.name: np.array(view(self.arena, p, p.grad_buf[w.id], w.shape, nb)) for w in self.wrt}
        for k, g in grads.items():
            if g.ndim == 0:
                grads[k] = float(g)
        return value, grads
