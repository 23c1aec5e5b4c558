"""Shared pieces of fastbp's asv suite: the ``Benchmark`` base class and cached data.

Every benchmark class derives from :class:`Benchmark`, which fixes the
timer, the time-out and the sampling profile, and declares ``params`` /
``param_names``.  Benchmarks that train a model derive from
:class:`DataBenchmark`, whose ``setup_cache`` generates the initial weights
and the data of every configuration once per asv run (into asv's working
directory) and hands the file names to ``setup``.

Environment variables (read when asv imports the suite):

``FASTBP_ASV_PROFILE``
    ``regular`` (default: asv's own sampling) or ``fast`` (one sample of
    one call per benchmark, no warm-up: a smoke run).
``FASTBP_ASV_CONFIGS``
    Comma-separated configuration names to benchmark (default: all of
    ``tiny,small,medium,large,cs231n,tabular``).

Libraries a benchmark needs but cannot import (PyTorch, JAX, or a part
of fastbp that an older commit does not have) make its ``setup`` raise
``NotImplementedError``, which asv reports as skipped.
"""
import importlib
import importlib.util
import os
import timeit

import numpy as np

#: The configurations of issue 4: name -> (widths, batch).  Kept here, not
#: imported from fastbp, so that the suite loads against any commit.
ALL_CONFIGS = {
    "tiny": ((64, 32, 10), 32),
    "small": ((784, 128, 10), 64),
    "medium": ((784, 512, 512, 10), 256),
    "large": ((1024, 2048, 2048, 1024), 1024),
    "cs231n": ((3072, 100, 10), 200),
    # issue 14: Linear -> BatchNorm1d -> GELU -> Dropout(0.1) blocks, AdamW; the blocks and the
    # optimizer come from fastbp.bench.configs (a commit without them skips it)
    "tabular": ((256, 512, 512, 10), 256),
}

#: configurations whose network is not the plain ReLU/SGD MLP of ``(widths, batch)``
FROM_FASTBP_BENCH = ("tabular",)

PROFILE = os.environ.get("FASTBP_ASV_PROFILE", "").strip() or "regular"
if PROFILE not in ("regular", "fast"):          # a typo must not run the regular (long) profile
    raise ValueError(f"FASTBP_ASV_PROFILE={PROFILE!r} is not 'regular' or 'fast'")
CONFIGS = list(dict.fromkeys(c.strip() for c in os.environ.get("FASTBP_ASV_CONFIGS", "").split(",")
                             if c.strip())) or list(ALL_CONFIGS)
if set(CONFIGS) - set(ALL_CONFIGS):             # (a typo ran every configuration, large included)
    raise ValueError(f"FASTBP_ASV_CONFIGS: unknown configuration(s) {sorted(set(CONFIGS) - set(ALL_CONFIGS))}; "
                     f"expected some of {', '.join(ALL_CONFIGS)}")

#: SGD learning rate of every training benchmark
LR = 0.01


def require(module):
    """Import ``module`` or raise ``NotImplementedError`` (asv: skipped)."""
    try:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise ImportError(module)
        return importlib.import_module(module)
    except ImportError as e:
        raise NotImplementedError(f"{module} is not importable: {e}") from None


def require_attr(module, name):
    """``module.name`` or ``NotImplementedError`` if this fastbp lacks it."""
    mod = require(module)
    if not hasattr(mod, name):
        raise NotImplementedError(f"{module}.{name} does not exist in this version")
    return getattr(mod, name)


def parse_shape(s):
    """``"64x784x128"`` -> ``(64, 784, 128)``."""
    return tuple(int(v) for v in s.split("x"))


def n_batches(config):
    """Distinct batches in a configuration's data (about 2048 rows, 2 to 64 batches)."""
    _, batch = ALL_CONFIGS[config]
    return int(min(64, max(2, 2048 // batch)))


def make_shared(config, seed=0):
    """Initial weights ``[(W (in, out), b), ...]`` and data ``(X, y)`` of ``config``, float32."""
    widths, batch = ALL_CONFIGS[config]
    rng = np.random.default_rng(seed)
    weights = []
    for i, o in zip(widths[:-1], widths[1:]):
        W = rng.standard_normal((i, o), dtype=np.float32) * np.float32(np.sqrt(2.0 / i))
        b = rng.standard_normal(o, dtype=np.float32) * np.float32(0.01)
        weights.append((W, b))
    n = n_batches(config) * batch
    X = rng.standard_normal((n, widths[0]), dtype=np.float32)
    y = rng.integers(0, widths[-1], size=n, dtype=np.int64)
    return weights, X, y


class Benchmark:
    """Base class of every benchmark in the suite.

    Subclasses set ``params`` and ``param_names`` (asv's parameter grid)
    and define ``time_*``, ``peakmem_*`` and ``track_*`` methods.
    """

    timer = timeit.default_timer  # wall time
    timeout = 600
    processes = 1
    params = []
    param_names = []

    if PROFILE == "fast":
        warmup_time = 0
        repeat = 1
        number = 1
        min_run_count = 1


class DataBenchmark(Benchmark):
    """A benchmark on the shared weights and data of the configurations.

    ``setup_cache`` runs once per asv run for all subclasses: it writes one
    ``.npz`` per configuration into asv's working directory and returns
    ``{config: path}``; asv passes that as the first argument of
    ``setup`` and of every benchmark method.
    """

    def setup_cache(self):
        paths = {}
        for name in CONFIGS:
            weights, X, y = make_shared(name)
            arrays = {"X": X, "y": y, "n_layers": np.int64(len(weights))}
            for l, (W, b) in enumerate(weights):
                arrays[f"W{l}"] = W
                arrays[f"b{l}"] = b
            path = os.path.abspath(f"fastbp_asv_{name}.npz")
            np.savez(path, **arrays)
            paths[name] = path
        return paths

    @staticmethod
    def load(cache, config):
        """``(weights, X, y)`` of ``config`` from the files ``setup_cache`` wrote
        (``NotImplementedError``, a skip, for one ``FASTBP_ASV_CONFIGS`` leaves out)."""
        if config not in cache:
            raise NotImplementedError(f"configuration {config!r} is not in FASTBP_ASV_CONFIGS")
        with np.load(cache[config]) as z:
            n = int(z["n_layers"])
            return [(z[f"W{l}"], z[f"b{l}"]) for l in range(n)], z["X"], z["y"]

    @staticmethod
    def peer(name, config, weights):
        """A training-step peer from :mod:`fastbp.bench.peers` built on ``weights``.

        Raises NotImplementedError when the peer's library (or this fastbp's
        ``compile`` / ``bench`` package) is missing.
        """
        peers = require("fastbp.bench.peers")
        configs = require("fastbp.bench.configs")
        if name not in peers.PEERS:
            raise NotImplementedError(f"no peer {name!r} in this fastbp.bench")
        if not peers.available(name):
            raise NotImplementedError(f"{peers.MODULES[name]} is not installed")
        if name == "fastbp":
            require_attr("fastbp", "compile")
        cfg = bench_config(config)
        why = peers.PEERS[name].supports(cfg) if hasattr(peers.PEERS[name], "supports") else None
        if why is not None:
            raise NotImplementedError(why)
        return peers.PEERS[name](cfg, weights, LR)

    @staticmethod
    def bf16_peer(name, config, weights):
        """A peer of the bf16 section (:data:`fastbp.bench.bf16.BF16_PEERS`) built on ``weights``.

        Raises NotImplementedError (asv: skipped) where this fastbp has no
        ``precision="bf16"``, where the peer's library is missing, where
        ``fastbp._bf16.available()`` is false (``fastbp_bf16``: the CPU's
        instructions or oneDNN missing) or where the CPU has no bf16
        instructions (the PyTorch peers: ``fastbp._bf16.cpu_support()``,
        which loads no library into PyTorch's process).
        """
        bf16 = require("fastbp.bench.bf16")
        hw = require("fastbp._bf16")
        peers = require("fastbp.bench.peers")
        if name not in bf16.BF16_PEERS:
            raise NotImplementedError(f"no bf16 peer {name!r} in this fastbp.bench")
        base = bf16.BASE[name]
        if not peers.available(base):
            raise NotImplementedError(f"{peers.MODULES[base]} is not installed")
        if base == "fastbp":
            ok, why = hw.available()
        else:
            ok, why = bool(hw.cpu_support()), "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16)"
        if not ok:
            raise NotImplementedError(why)
        cfg = bench_config(config)
        why = bf16.BF16_PEERS[name].supports(cfg)
        if why is not None:
            raise NotImplementedError(why)
        return bf16.BF16_PEERS[name](cfg, weights, LR)


def bench_config(config):
    """The :class:`fastbp.bench.configs.Config` of ``config`` (NotImplementedError: this fastbp lacks it)."""
    configs = require("fastbp.bench.configs")
    if config in FROM_FASTBP_BENCH:
        if config not in configs.CONFIGS:
            raise NotImplementedError(f"this fastbp.bench has no configuration {config!r}")
        return configs.CONFIGS[config]
    widths, batch = ALL_CONFIGS[config]
    return configs.Config(config, widths, batch)
