"""The factories: ``fastbp.compile``, ``fastbp.grad``, ``fastbp.load``.

The one module that knows every kind of step and gradient function (CPU,
GPU, data-parallel) and chooses among them; the step modules know none of
the others.  The GPU and MPI kinds are imported only when asked for, so
importing fastbp never imports numba-cuda or mpi4py.
"""
from __future__ import annotations

import numpy as np

import os

from . import _isa as ex
from . import _validate as V
from ._ckpt_format import BadArchive, _Bad, read
from .graph import GraphError, GraphTypeError, Node
from .gradfn import GradFunction
from .layers import Sequential
from .optimizers import optimizer_arg, optimizer_from_spec
from .step import TrainStep
from .optimizers import clip_grad_norm_arg

__all__ = ["compile", "grad", "load", "load_bundle"]


def compile(model, loss="softmax_cross_entropy", optimizer=None, batch_size=64, dtype=np.float32, seed=0,
            device="cpu", comm=None, schedule=None, clip_grad_norm=None, precision="full"):
    """Compile a model into one fused training step.

    Parameters
    ----------
    model : Sequential
        Of :class:`Linear` layers, the activations of the registry (:class:`ReLU`,
        :class:`Tanh`, :class:`GELU`, ...), :class:`Dropout`, :class:`LayerNorm`,
        :class:`BatchNorm1d` and :class:`Residual` blocks.
    loss : {"softmax_cross_entropy", "mse", "bce_with_logits", "svm", "poisson"}
        ``"poisson"``: the half Poisson deviance of ``exp`` of the outputs
        (count targets >= 0; the network's outputs are log-means).
    optimizer : SGD, Adam, AdamW, RMSprop or a name ('sgd', 'adam', 'adamw', 'rmsprop'), default ``SGD(lr=0.1)``
        Applied inside the fused step.  A name takes fastbp's defaults: ``'sgd'`` is
        ``SGD(lr=0.01)``, ``'adam'`` ``Adam()`` (lr 1e-3), ``'adamw'`` ``AdamW()`` (lr
        1e-3, weight_decay 0.01), ``'rmsprop'`` ``RMSprop()`` (lr 1e-2), as PyTorch's
        except SGD's rate (PyTorch's is 1e-3).
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
        threads capped to its share of the cores.  Every rank must pass the
        same model, loss, optimizer, batch_size, dtype, schedule and
        clip_grad_norm (checked: a ValueError on every rank naming what
        differs).  Needs ``pip install -e '.[distributed]'`` (ImportError
        saying so otherwise).
    schedule : fastbp.schedules schedule, optional
        The learning-rate schedule ``fit`` follows (see
        :mod:`fastbp.schedules`; scales the optimizer's ``lr``, counted from
        the step's first update / epoch).
    clip_grad_norm : float, optional
        Clip the gradients by their global 2-norm before each update, as
        ``torch.nn.utils.clip_grad_norm_(params, max_norm=clip_grad_norm)``
        (positive, finite; ``step.clip_grad_norm`` reads and sets it).
    precision : {"full", "bf16", "auto"}, default "full"
        ``"bf16"``: the linear layers' matrix products (forward and backward)
        read bfloat16 copies of their operands and accumulate in float32 on
        the CPU's bf16 instructions (AVX512-BF16 or AMX, through oneDNN:
        ``pip install -e '.[bf16]'``); weights, optimizer state,
        activations, loss and checkpoints stay float32, and the weights' bf16
        copies are made once per call (once per update), not per product.
        Needs ``dtype=float32`` and ``device="cpu"``.  ``"auto"``: ``"bf16"``
        where this machine and installation allow it, ``"full"`` otherwise.
        ``step.precision`` says which the step uses.

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
        loss or device name, ``precision="bf16"`` with float64 or on CUDA ...).
    ImportError
        ``precision="bf16"`` without oneDNN installed (or ``comm=`` without mpi4py).
    MemoryError
        The step would not fit in the memory left on this machine; checked
        before anything is allocated, the message says how many bytes it
        would need and how many are available.
    RuntimeError
        ``device="cuda"`` and no CUDA device or driver was found;
        ``precision="bf16"`` on a CPU without AVX512-BF16 or AMX-BF16.

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
        from .distributed import compile as _compile_distributed   # imports mpi4py, or ImportError
        # every argument checked there, the errors agreed on by the ranks (one rank's refusal
        # would leave the others waiting); clipping is set before the ranks compare their steps
        return _compile_distributed(model, loss=loss, optimizer=optimizer, batch_size=batch_size, dtype=dtype,
                                    seed=seed, comm=comm, schedule=schedule, precision=precision,
                                    clip_grad_norm=clip_grad_norm, _device=device)
    clip = clip_grad_norm_arg(clip_grad_norm)       # checked first: a rejected call builds nothing
    optimizer = optimizer_arg(optimizer)
    if V.resolve_device(device) == "cuda":
        from .cuda_step import CudaTrainStep
        step = CudaTrainStep(model, loss, optimizer, batch_size, dtype, seed, schedule=schedule,
                             precision=precision)
    else:
        step = TrainStep(model, loss, optimizer, batch_size, dtype, seed, schedule=schedule, precision=precision)
    step.clip_grad_norm = clip or None
    return step


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
        graph, a ``wrt`` entry that is not an input or parameter, or an empty ``wrt``.
        ``output`` or a ``wrt`` entry that is not a node is also a TypeError
        (:class:`fastbp.graph.GraphTypeError`).
    RuntimeError
        ``device="cuda"`` and no CUDA device or driver was found.
    """
    if not isinstance(output, Node):
        raise GraphTypeError(f"output must be a graph node, got {type(output).__name__}")
    if isinstance(wrt, Node):
        wrt = [wrt]
    if isinstance(wrt, (str, bytes, dict)) or not hasattr(wrt, "__iter__"):
        raise GraphTypeError(f"wrt must be a node or a list of nodes, got {type(wrt).__name__}")
    wrt = list(wrt)
    if not wrt:     # torch.autograd.grad: "grad requires non-empty inputs"
        raise GraphError("wrt is empty: name at least one input or parameter to differentiate with respect to")
    if V.resolve_device(device) == "cuda":
        from .cuda_gradfn import CudaGradFunction as cls
    else:
        cls = GradFunction
    return cls(output, wrt, V.resolve_dtype(dtype), V.positive_int("batch_size", batch_size))


# ---------------------------------------------------------------- fastbp.load
def _check_args(path, expect_model):
    if expect_model is not None and not isinstance(expect_model, Sequential):
        raise TypeError(f"expect_model must be a fastbp.Sequential or None, got {type(expect_model).__name__}")
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None


def load(path, expect_model=None, precision="full"):
    """Rebuild a :class:`TrainStep` from a checkpoint written by :func:`fastbp.checkpoint.save`.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :meth:`TrainStep.save` / :func:`fastbp.checkpoint.save`.
    expect_model : Sequential, optional
        When given, the checkpoint's architecture must equal this model's
        (same layers, widths, bias flags, weight layout); otherwise a
        :class:`ValueError` is raised.
    precision : {"full", "bf16", "auto"}, default "full"
        The precision of the rebuilt step's products (see :func:`compile`).
        A checkpoint holds float32 (or float64) weights whatever precision
        trained them: it is not a property of the file.

    Returns
    -------
    TrainStep
        Compiled with the checkpoint's model, loss, optimizer, batch size,
        dtype and seed, with its weights, optimizer state, learning rate,
        step counters and RNG state restored: continuing to train it gives
        bitwise the weights the saved step would have reached.  Extra
        arrays and metadata (see :func:`load_bundle`) are validated like
        everything else, then ignored.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is a directory or not a regular file; the file is
        truncated, corrupted, of an unknown format or version, lacks or adds
        arrays, has arrays of the wrong size or dtype, or is inconsistent
        (optimizer state vs. hyper-parameters), or does not match
        ``expect_model``.  The message names the file.
    TypeError
        ``path`` or ``expect_model`` has the wrong type.

    Notes
    -----
    Nothing in the file is unpickled or executed, and every size is checked
    against the metadata before the data is read (see the module docstring).
    """
    return load_bundle(path, expect_model, precision)[0]


def load_bundle(path, expect_model=None, precision="full"):
    """Like :func:`load`, also returning what ``save(extra_arrays=, extra_meta=)`` stored.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`fastbp.checkpoint.save`.
    expect_model : Sequential, optional
        As in :func:`load`.
    precision : {"full", "bf16", "auto"}, default "full"
        As in :func:`load`.

    Returns
    -------
    step : TrainStep
        As :func:`load` returns it.
    extra_arrays : dict of str to numpy.ndarray
        Each extra array by name (without the ``extra.`` prefix), with the
        saved shape and dtype, SHA-256 verified; new writeable arrays.
        Empty when the file has none.
    extra_meta : dict
        The saved ``extra_meta`` as parsed from JSON (tuples come back as
        lists); empty when none was saved.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        As :func:`load`.
    """
    path = _check_args(path, expect_model)
    from ._bf16 import precision_name
    if not callable(precision):     # (a callable of the metadata: fastbp.bundle.load_model's "as saved")
        precision = precision_name(precision)       # checked before the file is read
    try:
        return _load(path, expect_model, precision)
    except (_Bad, BadArchive) as e:
        raise ValueError(f"checkpoint {path!r}: {e}") from None


def _load(path, expect_model, precision="full"):
    meta, dtype, arrays = read(path)
    spec = meta["model"]
    try:
        model = Sequential.from_spec(spec)
    except Exception as e:  # noqa: BLE001 - untrusted spec: any failure is a bad file
        raise _Bad(f"invalid model spec ({type(e).__name__}: {e})") from None
    if expect_model is not None and model.spec() != expect_model.spec():
        from ._spec_diff import spec_differences
        diff = "; ".join(spec_differences(model.spec(), expect_model.spec()))
        raise _Bad(f"architecture {model!r} differs from the expected {expect_model!r}: {diff}")
    try:
        optimizer = optimizer_from_spec(meta["optimizer"])
    except Exception as e:  # noqa: BLE001 - untrusted spec: any failure is a bad file
        raise _Bad(f"invalid optimizer spec ({type(e).__name__}: {e})") from None
    from ._bf16 import resolve
    if callable(precision):
        precision = precision(meta)
    try:
        resolve(precision, dtype)   # a precision this checkpoint's dtype cannot take: the argument's error
    except ValueError as e:
        raise ValueError(f"{e} (this checkpoint holds a {np.dtype(dtype).name} step)") from None
    try:
        step = TrainStep(model, meta["loss"], optimizer, meta["batch_size"], dtype, meta["seed"],
                         precision=precision)
    except (TypeError, ValueError, OverflowError, MemoryError) as e:
        raise _Bad(f"cannot rebuild the step ({type(e).__name__}: {e})") from None

    params, hyper = arrays["params"], arrays["hyper"]
    if params.size != step.param_vector.size:
        raise _Bad(f"'params' has {params.size} values but the architecture {model!r} needs "
                   f"{step.param_vector.size} (wrong architecture)")
    if meta["n_state"] != len(step.state_vectors):
        raise _Bad(f"{meta['n_state']} optimizer state vector(s) stored, {optimizer!r} needs "
                   f"{len(step.state_vectors)}")
    if hyper.size in (ex.HYPER_SIZE_V1, ex.HYPER_SIZE_V2, ex.HYPER_SIZE_V3, ex.HYPER_SIZE_V4) \
            and step.hyper.size > hyper.size:
        # a checkpoint written before slots 16-23 (or 24, 25, 26) existed: they take their defaults
        # (no clipping; the optimizer's constants, which an SGD/Adam step never reads)
        hyper = np.concatenate([hyper, step.hyper[hyper.size:]])
    if hyper.size != step.hyper.size:
        raise _Bad(f"'hyper' has {hyper.size} values, expected {step.hyper.size}")
    # hyper-parameters fixed by the optimizer must agree with its spec: the update kernels
    # trust them (e.g. a momentum without a momentum buffer would write out of bounds)
    free = {ex.H_LR, ex.H_T, ex.H_STEPS, ex.H_CLIP, ex.H_RNG_SEED, *ex.RUNTIME_SLOTS}
    fixed = [i for i in range(step.hyper.size) if i not in free]
    if not np.array_equal(hyper[fixed], step.hyper[fixed]):
        raise _Bad("hyper-parameters do not match the optimizer spec "
                   f"{meta['optimizer']!r} (inconsistent checkpoint)")
    if not np.all(np.isfinite(hyper)):
        raise _Bad("'hyper' holds non-finite values")
    if hyper[ex.H_CLIP] < 0:
        raise _Bad(f"clip_grad_norm must be >= 0 (0: none), got {hyper[ex.H_CLIP]}")
    for slot, name in ((ex.H_T, "Adam step t"), (ex.H_STEPS, "step count")):
        v = hyper[slot]
        if v < 0 or v != np.floor(v) or v > 2.0 ** 53:     # counted exactly in float64 (and an int64)
            raise _Bad(f"{name} must be a non-negative integer of at most 2**53, got {v}")
    if not (0 <= hyper[ex.H_RNG_SEED] < 2.0 ** 32 and hyper[ex.H_RNG_SEED] == np.floor(hyper[ex.H_RNG_SEED])):
        raise _Bad(f"the dropout seed must be an integer in [0, 2**32), got {hyper[ex.H_RNG_SEED]}")
    rng_state = meta["rng"]
    if not isinstance(rng_state, dict) or rng_state.get("bit_generator") != type(step.rng.bit_generator).__name__:
        raise _Bad(f"RNG state is not a {type(step.rng.bit_generator).__name__} state")

    training = meta.get("training")
    scheduled = isinstance(training, dict) and training.get("schedule") is not None
    try:
        # the rate of the next update (hyper, written below) may differ from the base rate of the
        # spec: a schedule scales it, and a detached one leaves its last rate (base rate kept)
        if not hyper[ex.H_LR] >= 0.0:
            raise ValueError(f"{'the scheduled ' if scheduled else ''}lr must be >= 0, got {hyper[ex.H_LR]}")
    except (TypeError, ValueError) as e:
        raise _Bad(f"learning rate: {e}") from None
    try:
        step.rng.bit_generator.state = rng_state
    except Exception as e:  # noqa: BLE001 - untrusted state: any failure is a bad file
        raise _Bad(f"invalid RNG state ({type(e).__name__}: {e})") from None
    buffers = arrays.get("buffers")       # BatchNorm's running statistics
    want = step.buffer_vector.size
    if (0 if buffers is None else buffers.size) != want:
        raise _Bad(f"'buffers' (running statistics) has {0 if buffers is None else buffers.size} values, the "
                   f"architecture {model!r} needs {want}")
    if buffers is not None:
        # running means/variances may be inf/NaN (finite inputs can overflow them in training, as
        # in PyTorch, whose state_dicts round-trip them): what save wrote, load reads back; only
        # the counts must be counts
        step.buffer_vector[...] = buffers
        counts = {k: float(v[0]) for k, v in step.buffers.items() if k.endswith(".num_batches_tracked")}
        bad = {k: c for k, c in counts.items() if not (np.isfinite(c) and c >= 0)}
        if bad:
            k, c = next(iter(bad.items()))
            raise _Bad(f"'buffers' (running statistics): {k} must be a finite count >= 0, got {c}")
    step.param_vector[...] = params
    for dst, i in zip(step.state_vectors, range(meta["n_state"])):
        dst[...] = arrays[f"state_{i}"]
    runtime = step.hyper[list(ex.RUNTIME_SLOTS)].copy()   # this process's BLAS policy, not training state
    step.hyper[...] = hyper
    step.hyper[list(ex.RUNTIME_SLOTS)] = runtime
    step._settings_changed()
    if training is not None:
        try:
            step._restore_schedule_state(training)
        except (TypeError, ValueError) as e:
            raise _Bad(f"invalid schedule state ({type(e).__name__}: {e})") from None
    extra_arrays = {k[6:]: a for k, a in arrays.items() if k.startswith("extra.")}
    return step, extra_arrays, meta.get("extra", {})
