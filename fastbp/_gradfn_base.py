"""What the CPU and the GPU ``fastbp.grad`` functions share: :class:`GradFunctionBase`.

The plan and its host arena, the checks of the keyword arguments and the
reading of the results; running the plan is the subclass's job
(:class:`fastbp.gradfn.GradFunction` on the CPU,
:class:`fastbp.cuda_gradfn.CudaGradFunction` on the GPU).  Imports neither
the CPU executor nor numba-cuda.
"""
from __future__ import annotations

import threading

import numpy as np

from . import _isa as ex
from ._validate import same_precision
from .compiler import build_plan, new_arena, view
from ._graph_base import _real_array, holds_bool
from .graph import upstream

__all__ = ["GradFunctionBase"]


def _check_memory(nodes, output, dtype, batch_size):
    """MemoryError (before the compiler lays anything out) when the inputs the output
    depends on (``nodes``: its upstream nodes) and the output itself, at ``batch_size``
    rows, cannot fit: a lower bound of the buffers :func:`fastbp.compiler.new_arena` would allocate."""
    from ._memory import check
    count = 0
    for n in nodes:
        if n.op == "input" or n is output:
            size = 1
            for d in n.shape:
                size *= batch_size if d is None else d
            count += size
    check(count * dtype.itemsize, f"fastbp.grad with batch_size={batch_size}",
          f"at least {count} values of {dtype.name} for the inputs and the output")


def _check_range(name, v, dtype):
    """ValueError if a finite value of ``v`` (Python numbers read as an array) is beyond
    ``dtype``'s range: staged into the arena it would silently become an infinity."""
    with np.errstate(over="ignore", invalid="ignore"):
        bad = np.isfinite(v) & ~np.isfinite(v.astype(dtype))
    if bad.any():
        raise ValueError(f"{name} holds {float(v[bad].flat[0])!r}, beyond the range of {np.dtype(dtype)} "
                         f"(largest {float(np.finfo(dtype).max):.6g}) that this function was compiled for")


class GradFunctionBase:
    """The compiled ``value, grads = f(**inputs)`` of :func:`fastbp.grad` (shared part).

    Parameters
    ----------
    output : Node
    wrt : list of Node
    dtype : numpy.dtype
        float32 or float64 (already resolved).
    batch_size : int
        Already checked.
    """

    def __init__(self, output, wrt, dtype, batch_size):
        self.graph = output.graph
        self.output = output
        self.wrt = list(wrt)
        self.dtype = np.dtype(dtype)
        nodes = list(upstream(output).values())     # walked once, for the three uses below
        _check_memory(nodes, output, self.dtype, batch_size)
        for n in nodes:     # the graph's own (float64) values, staged into the arena below
            if n.op in ("param", "const") and self.dtype != np.float64:
                _check_range(f"{n.op} {n.name!r}" if n.op == "const" else n.name, np.asarray(n.value), self.dtype)
        self.plan = build_plan(self.graph, output, self.wrt, dtype=self.dtype, batch_size=batch_size)
        self.arena = new_arena(self.plan)
        self.inputs = [n for n in self.graph.inputs if n.id in self.plan.value_buf]
        self.param_nodes = [n for n in self.graph.params if n.id in self.plan.value_buf]
        self.hyper = np.zeros(ex.HYPER_SIZE)
        self.hyper[ex.H_TRAINING] = 1.0     # fastbp.grad is training mode (Dropout on; BatchNorm: batch statistics)
        self._lock = threading.Lock()
        self._overridden = set()    # ids of the parameters a call has overridden
        self._batch_norms = [n for n in nodes if n.op == "batch_norm"]

    def __reduce_ex__(self, protocol):
        raise TypeError(f"a compiled {type(self).__name__} cannot be pickled (it holds native code and "
                        f"buffers); build it again with fastbp.grad(output, wrt) in the other process "
                        f"(steps: step.save(path) and fastbp.load(path))")

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
            if v.dtype.kind == "O" and not hasattr(values[n.name], "dtype"):
                # Python ints beyond int64 (2**70) read as the graph reads its values
                v = _real_array(values[n.name], n.name)
            if v.dtype.kind not in "fiu" or v.dtype.kind == "b":
                raise TypeError(f"{n.name} must be a real array, got dtype {v.dtype}")
            if isinstance(values[n.name], (list, tuple)) and holds_bool(values[n.name]):
                raise TypeError(f"{n.name} must be a real array, got a bool among its numbers")
            given = getattr(values[n.name], "dtype", None)
            if given is not None and not same_precision(v.dtype, self.dtype):
                # the step's policy (fastbp._validate.features): an array of another dtype is not
                # silently converted (float64 -> float32 loses precision; ints are not features)
                other = (f", or compile it with fastbp.grad(..., dtype=np.{v.dtype.name})"
                         if v.dtype in (np.float32, np.float64) else "")
                raise TypeError(f"{n.name} has dtype {v.dtype}; this function was compiled for "
                                f"{self.dtype} (convert with {n.name}.astype(np.{self.dtype.name}){other})")
            if given is None:
                _check_range(n.name, v, self.dtype)     # Python numbers become self.dtype
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
        for n in self._batch_norms:         # a training call (PyTorch's rule; the executor refuses it too)
            rows = nb if n.shape[0] is None else n.shape[0]
            if rows < 2:
                raise ValueError(f"Expected more than 1 value per channel when training: batch_norm {n.name!r} "
                                 f"gets {rows} row (fastbp.grad is a training call; pass at least 2 rows)")
        return nb, staged

    def _with_defaults(self, staged):
        """``staged`` plus ``(param, its graph value)`` for every parameter a previous call
        overrode and this one does not pass: a call's result depends on its own arguments
        only.  Called under the lock."""
        passed = {n.id for n, _ in staged}
        self._overridden |= {n.id for n, _ in staged if n.op == "param"}   # kept: a failed copy is redone
        return staged + [(n, n.value) for n in self.param_nodes if n.id in self._overridden and n.id not in passed]

    def _results(self, nb):
        """The output value and the gradients of the last run, read from the host arena (copies;
        Python floats for scalars)."""
        p = self.plan
        out = view(self.arena, p, p.value_buf[self.output.id], self.output.shape, nb)
        value = float(out) if out.ndim == 0 else out.copy()
        grads = {w.name: np.array(view(self.arena, p, p.grad_buf[w.id], w.shape, nb)) for w in self.wrt}
        for k, g in grads.items():
            if g.ndim == 0:
                grads[k] = float(g)
        return value, grads
