"""Benchmarks of fastbp's training step against the libraries a user would pick instead.

Run ``python -m fastbp.bench --help``.  Modules:

:mod:`fastbp.bench.configs`
    The configurations of issue 4 and ``tabular`` (issue 14: BatchNorm, GELU,
    Dropout, AdamW) and the shared initial weights and data.
:mod:`fastbp.bench.peers`
    The same training step in numpy, PyTorch (eager and ``torch.compile``),
    JAX and fastbp, and scikit-learn's ``MLPClassifier`` per epoch
    (numpy and scikit-learn: the ReLU/SGD configurations only).
:mod:`fastbp.bench.worker`
    One peer in a process of its own, driven over a pipe.
:mod:`fastbp.bench.machine`
    CPU model, core count and the measured float32 peak (numba FMA loop,
    numpy sgemm).
:mod:`fastbp.bench.blas`
    ``python -m fastbp.bench.blas``: the float32 products of every
    configuration's step in each BLAS library fastbp could use (numpy's and
    scipy's OpenBLAS, oneMKL, oneDNN), on all cores and on one.
:mod:`fastbp.bench.bf16`
    The bf16 section (``--precision fp32,bf16``): fastbp ``precision="bf16"``,
    PyTorch under ``torch.autocast`` and with float32 matmuls in bf16.
:mod:`fastbp.bench.checks`
    The loss check against a reference peer.
:mod:`fastbp.bench.report`
    The printed tables and ratios.
:mod:`fastbp.bench.runner`
    The command: interleaved rounds, loss check, table, ``--json``.

Importing this package imports numpy only; each peer's library is
imported by the worker process that runs it.
"""
from .configs import CONFIGS, Config, get_configs, make_data, make_weights
from .peers import PEERS, available

__all__ = ["CONFIGS", "Config", "get_configs", "make_data", "make_weights", "PEERS", "available"]
