"""``fastbp.grad``: compile a gate graph into one value-and-gradient function."""
from __future__ import annotations

import threading

import numpy as np

from . import _executor as ex
from . import _validate as V
from .compiler import build_plan, new_arena, view
from .graph import GraphError, Node, upstream

__all__ = ["grad", "GradFunction"]


def _check_memory(output, dtype, batch_size):
    """MemoryError (before the compiler lays anything out) when the inputs the output
    depends on and the output itself, at ``batch_size`` rows, cannot fit: a lower bound
    of the buffers :func:`fastbp.compiler.new_arena` would allocate."""
    from ._memory import check
    count = 0
    for n in upstream(output).values():
        if n.op == "input" or n is output:
            size = 1
            for d in n.shape:
                size *= batch_size if d is None else d
            count += size
    check(count * dtype.itemsize, f"fastbp.grad with batch_size={batch_size}",
          f"at least {count} values of {dtype.name} for the inputs and the output")


class GradFunction:
    """The compiled ``value, grads = f(**inputs)`` of :func:`grad`.

    Calling it writes the inputs into the preallocated buffers, runs the
    forward pass and the backward pass in one native call and returns the
    output value and the gradients (copies) keyed by node name.
    """

    def __init__(self, output, wrt, dtype, batch_size):
        self.graph = output.graph
        self.output = output
        self.wrt = list(wrt)
        self.dtype = np.dtype(dtype)
        _check_memory(output, self.dtype, batch_size)
        self.plan = build_plan(self.graph, output, self.wrt, dtype=self.dtype, batch_size=batch_size)
        self.arena = new_arena(self.plan)
        self.inputs = [n for n in self.graph.inputs if n.id in self.plan.value_buf]
        self.param_nodes = [n for n in self.graph.params if n.id in self.plan.value_buf]
        self.hyper = np.zeros(ex.HYPER_SIZE)
        ex.runtime_hyper(self.hyper)
        self.ws64 = np.zeros(max(batch_size, 1))
        self.gjit = ex.gemm_jit_table(self.plan, batch_size, self)
        self._ctx = ex.context(self.arena, self.plan.bufs, self.plan.tape, self.hyper, self.ws64, self.gjit,
                               batch_size)
        self._x = np.zeros((0, 0), self.dtype)
        self._yi = np.zeros(0, np.int64)
        self._lock = threading.Lock()

    def _asarray(self, v):
        """How an argument is read (the CUDA variant keeps device arrays on the device)."""
        return np.asarray(v)

    def _stage(self, values):
        """Validate the keyword arguments; returns ``(nb, [(node, array), ...])``."""
        p = self.plan
        known = {n.name for n in self.inputs} | {n.name for n in self.param_nodes}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unexpected argument(s) {sorted(unknown)}; this function takes "
                            f"{sorted(known)}")
        nb = None
        staged = []
        for n in self.inputs + self.param_nodes:
            if n.name not in values:
                if n.op == "input":
                    raise TypeError(f"missing input {n.name!r} (shape {n.shape})")
                continue
            try:
                v = self._asarray(values[n.name])
            except (ValueError, TypeError) as e:
                raise ValueError(f"{n.name} cannot be converted to an array: {e}") from None
            if v.dtype.kind not in "fiu" or v.dtype.kind == "b":
                raise TypeError(f"{n.name} must be a real array, got dtype {v.dtype}")
            shape = n.shape
            if len(shape) == 2 and shape[0] is None:
                if v.ndim != 2 or v.shape[1] != shape[1]:
                    raise ValueError(f"{n.name} must have shape (batch, {shape[1]}), got {v.shape}")
                if nb is None:
                    nb = v.shape[0]
                elif v.shape[0] != nb:
                    raise ValueError(f"{n.name} has {v.shape[0]} rows but another input has {nb}")
                if not 1 <= nb <= p.batch_size:
                    raise ValueError(f"{n.name} has {nb} rows; 1..{p.batch_size} are supported "
                                     f"(pass batch_size= to fastbp.grad)")
            elif v.shape != tuple(shape):
                raise ValueError(f"{n.name} must have shape {tuple(shape)}, got {v.shape}")
            staged.append((n, v))
        nb = p.batch_size if nb is None else nb
        return nb, staged

    def __call__(self, **values):
        p = self.plan
        nb, staged = self._stage(values)
        with self._lock:
            for n, v in staged:
                view(self.arena, p, p.value_buf[n.id], n.shape, nb)[...] = v
            status, _, _ = ex.run_step(self._ctx, p.sec, nb, self._x, self._yi, self._x, ex.MODE_GRAD)
            if status:      # every input was validated and written into the arena: a bug if seen
                raise RuntimeError(f"internal error: executor status {status} for a validated call of "
                                   f"a fastbp.grad function; its inputs are unchanged")
            out = view(self.arena, p, p.value_buf[self.output.id], self.output.shape, nb)
            value = float(out) if out.ndim == 0 else out.copy()
            grads = {w.name: np.array(view(self.arena, p, p.grad_buf[w.id], w.shape, nb))
                     for w in self.wrt}
        for k, g in grads.items():
            if g.ndim == 0:
                grads[k] = float(g)
        return value, grads


def grad(output, wrt, *, dtype=np.float64, batch_size=1, device="cpu"):
    """Compile the gradient of ``output`` with respect to ``wrt``.

    Parameters
    ----------
    output : Node
        The value to differentiate; for a non-scalar output the gradient of
        the sum of its elements is returned.
    wrt : list of Node
        Inputs and/or parameters of the same graph.
    dtype : float32 or float64, default float64
    batch_size : int, default 1
        Rows reserved for inputs declared with a ``None`` (batch) dimension.
    device : {"cpu", "cuda"}, default "cpu"
        ``"cuda"``: forward and backward run on an NVIDIA GPU
        (:class:`fastbp.cuda_step.CudaGradFunction`; inputs may be CUDA
        device arrays; results come back as host values).

    Returns
    -------
    GradFunction or CudaGradFunction
        ``value, grads = f(name=array, ...)``: ``grads`` maps each ``wrt``
        node's name to its gradient (same shape as the node; Python floats
        for scalars).

    Raises
    ------
    GraphError
        ``output`` does not depend on a ``wrt`` node, nodes from another
        graph, or a ``wrt`` entry that is not an input or parameter.
    RuntimeError
        ``device="cuda"`` and no CUDA device or driver was found.
    """
    if not isinstance(output, Node):
        raise GraphError(f"output must be a graph node, got {type(output).__name__}")
    if isinstance(wrt, Node):
        wrt = [wrt]
    cls = GradFunction
    if V.resolve_device(device) == "cuda":
        from .cuda_step import CudaGradFunction as cls
    return cls(output, list(wrt), V.resolve_dtype(dtype), V.positive_int("batch_size", batch_size))
