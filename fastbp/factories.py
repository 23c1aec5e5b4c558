"""The factories: ``fastbp.compile``, ``fastbp.grad``, ``fastbp.load``.

The one module that knows every kind of step and gradient function (CPU,
GPU, data-parallel) and chooses among them; the step modules know none of
the others.  The GPU and MPI kinds are imported only when asked for, so
importing fastbp never imports numba-cuda or mpi4py.
"""
from __future__ import annotations

import numpy as np

from . import _validate as V
from .graph import GraphError, Node
from .gradfn import GradFunction
from .optimizers import optimizer_arg
from .step import TrainStep

__all__ = ["compile", "grad"]


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
        if V.resolve_device(device) != "cpu":
            raise ValueError("comm= (data-parallel training) runs on the CPU; device must be 'cpu'")
        from .distributed import compile as _compile_distributed   # imports mpi4py, or ImportError
        return _compile_distributed(model, loss=loss, optimizer=optimizer, batch_size=batch_size,
                                    dtype=dtype, seed=seed, comm=comm)
    optimizer = optimizer_arg(optimizer)
    if V.resolve_device(device) == "cuda":
        from .cuda_step import CudaTrainStep
        return CudaTrainStep(model, loss, optimizer, batch_size, dtype, seed)
    return TrainStep(model, loss, optimizer, batch_size, dtype, seed)


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
    if V.resolve_device(device) == "cuda":
        from .cuda_gradfn import CudaGradFunction as cls
    else:
        cls = GradFunction
    return cls(output, list(wrt), V.resolve_dtype(dtype), V.positive_int("batch_size", batch_size))
