"""fastbp: JIT-compiled backpropagation kernels and a static layer-graph compiler.

A graph of layers and gates is checked and shape-inferred once, then chained
into one fused native training step (forward, loss, backward and optimizer
update) per minibatch, with every buffer allocated once.

Quick tour
----------
>>> import numpy as np, fastbp
>>> model = fastbp.Sequential(fastbp.Linear(64, 32), fastbp.ReLU(), fastbp.Linear(32, 10))
>>> step = fastbp.compile(model, loss="softmax_cross_entropy",
...                       optimizer=fastbp.SGD(lr=0.1), batch_size=32)
>>> x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
>>> y = np.arange(32) % 10
>>> loss = step(x, y)
"""
from . import _env
try:
    from . import config  # noqa: F401  (first: the FASTBP_* variables it reads fail inside this try)
    from .bundle import SavedModel, load_model
    from . import checkpoint, gradcheck, ops, schedules, training
    from .graph import Graph, GraphError, GraphTypeError, Node, maximum, sum
    from .factories import compile, grad, load
    from .layers import Linear, Sequential
    from .layers import BatchNorm1d, LayerNorm
    from .graph import batch_norm, layer_norm
    from .optimizers import SGD, Adam, AdamW, RMSprop
    from .step import TrainStep
    from .training import EarlyStopping, History
    from .distributed import DistributedStep, RankError   # mpi4py is imported only when used
    from .torch_interop import from_torch
    from ._bf16 import info as bf16_info
except _env.EnvError as _e:      # a FASTBP_* variable with a bad value
    _env.exit_if_command(_e)
    raise

from ._version import __version__


_LAZY = ("CudaTrainStep", "CudaGradFunction", "MLPClassifier", "MLPRegressor")


def __dir__():
    # dir(fastbp) and tab completion: the public API (the lazily loaded classes included)
    return sorted(set(__all__) | set(_LAZY) | {"__version__"})


def __getattr__(name):
    # the GPU classes load on first use: importing fastbp never imports numba.cuda
    if name in ("CudaTrainStep", "CudaGradFunction"):
        from . import cuda_step
        return getattr(cuda_step, name)
    # the scikit-learn estimators load on first use: scikit-learn stays optional
    if name in ("MLPClassifier", "MLPRegressor"):
        from . import estimator
        return getattr(estimator, name)
    raise AttributeError(f"module 'fastbp' has no attribute {name!r}")

__all__ = [
    "ops", "gradcheck", "schedules", "training", "checkpoint", "EarlyStopping", "History",
    "Graph", "GraphError", "GraphTypeError", "Node", "maximum", "sum", "grad",
    "Linear", "Sequential", "SGD", "Adam", "AdamW", "RMSprop", "TrainStep", "compile", "load", "from_torch",
    "DistributedStep", "RankError", "load_model", "SavedModel",
    "LayerNorm", "BatchNorm1d", "layer_norm", "batch_norm", "bf16_info",
]


def _export_activations():
    """``fastbp.<name>`` (graph function) and ``fastbp.<Layer>`` for every
    public entry of the activation registry (``relu``/``ReLU``, ...)."""
    from . import graph as _graph, layers as _layers
    from .registry import activations as _acts
    for e in _acts.entries(public=True):
        globals()[e.name] = getattr(_graph, e.name)
        globals()[e.layer] = getattr(_layers, e.layer)
        __all__.extend((e.name, e.layer))
    # the identity: a layer (fastbp.Identity), no graph function (its code is "no activation")
    e = _acts.by_code(_acts.IDENTITY)
    globals()[e.layer] = getattr(_layers, e.layer)
    __all__.append(e.layer)


_export_activations()

from .graph import dropout  # noqa: E402
from .layers import Dropout, Residual  # noqa: E402
__all__ += ["dropout", "Dropout", "Residual"]
