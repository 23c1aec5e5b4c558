"""The training step per configuration and peer, fit per epoch, compile time, memory.

float32 MLPs with ReLU between layers, softmax cross-entropy and plain SGD
(lr 0.01), and ``tabular`` (Linear -> BatchNorm1d -> GELU -> Dropout(0.1)
blocks, AdamW lr 0.01; numpy has no such peer: skipped), all peers from
the same weights on the same batches.  The
peers come from :mod:`fastbp.bench.peers`; ``torch.compile`` is left to
``python -m fastbp.bench`` (its minute-long compilation would be paid in
every asv ``setup``).  ``TrainStepBf16`` is the same step with its matrix
products in bfloat16 (the peers of :mod:`fastbp.bench.bf16`), skipped where
the CPU or the installation has no bf16.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from .common import CONFIGS, DataBenchmark, require_attr

STEP_PEERS = ["fastbp", "numpy", "torch", "jax"]
#: fastbp precision="bf16", PyTorch under torch.autocast(bfloat16), PyTorch with float32 matmuls in bf16
BF16_STEP_PEERS = ["fastbp_bf16", "torch_autocast", "torch_bf16_matmul"]


class TrainStep(DataBenchmark):
    """One training step: forward, loss, backward and SGD update of one batch."""

    param_names = ["config", "peer"]
    params = [CONFIGS, STEP_PEERS]

    def setup(self, cache, config, peer):
        weights, X, y = self.load(cache, config)
        self.p = self.make_peer(peer, config, weights)
        self.batches = self.p.batches(X, y)
        self.k = 0
        self._step()  # compiles (JAX) / loads cached code (fastbp)

    def make_peer(self, peer, config, weights):
        return self.peer(peer, config, weights)

    def _step(self):
        xb, yb = self.batches[self.k % len(self.batches)]
        self.k += 1
        self.p.sync(self.p.step(xb, yb))

    def time_step(self, cache, config, peer):
        self._step()

    def peakmem_step(self, cache, config, peer):
        # peak RSS of the process: library, model, data and one more step
        self._step()


class TrainStepBf16(TrainStep):
    """The same training step with the linear layers' products in bfloat16 (float32
    weights, optimizer and loss): fastbp ``precision="bf16"``, PyTorch eager under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, and PyTorch with float32 matmuls
    allowed in bf16.  Skipped (``NotImplementedError`` in ``setup``) where bf16 is
    unavailable: see ``DataBenchmark.bf16_peer``."""

    params = [CONFIGS, BF16_STEP_PEERS]

    def make_peer(self, peer, config, weights):
        return self.bf16_peer(peer, config, weights)


class StepThreads(TrainStep):
    """fastbp's training step on numba's threads (the parallel twins of its elementwise
    kernels, its products split over the same threads on one BLAS thread each: what a
    step with a 256x512 activation or larger runs) against the same step with serial
    kernels and its products on the BLAS's threads (``fastbp.config.STEP_THREADS_MIN_ELEMENTS``
    raised while it is built): issue 18, item 3."""

    param_names = ["config", "threads"]
    params = [["medium", "tabular"], ["blas", "numba"]]

    def make_peer(self, threads, config, weights):
        cfg = require_attr("fastbp", "config")
        require_attr("fastbp._executor", "step_threads")
        saved = cfg.STEP_THREADS_MIN_ELEMENTS
        if threads == "blas":
            cfg.STEP_THREADS_MIN_ELEMENTS = 1 << 62
        try:
            p = self.peer("fastbp", config, weights)
        finally:
            cfg.STEP_THREADS_MIN_ELEMENTS = saved
        if getattr(p.compiled, "threads", False) != (threads == "numba"):
            raise NotImplementedError("this BLAS backend runs no step on numba's threads")
        return p


class Fit(DataBenchmark):
    """fastbp ``fit`` over one epoch vs a Python loop of ``step(x, y)``.

    ``fit`` is one native call from ``fastbp.step.FIT_NATIVE_MIN_STEPS``
    steps up (tiny: 64 steps of 32 rows), a Python loop of the compiled step
    below it (where the step's own time dominates anyway)."""

    param_names = ["config"]
    params = [CONFIGS]

    def setup(self, cache, config):
        weights, X, y = self.load(cache, config)
        self.p = self.peer("fastbp", config, weights)
        self.X, self.y = X, y
        self.batches = self.p.batches(X, y)
        self.p.fit(X, y)

    def time_fit_epoch(self, cache, config):
        self.p.fit(self.X, self.y)

    def time_loop_epoch(self, cache, config):
        step = self.p.step
        for xb, yb in self.batches:
            step(xb, yb)

    def peakmem_fit_epoch(self, cache, config):
        self.p.fit(self.X, self.y)


_STARTUP = r"""
import sys, time, json
import numpy as np
name, (widths, batch), from_bench = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, widths[0]), dtype=np.float32)
y = rng.integers(0, widths[-1], size=batch, dtype=np.int64)
t0 = time.perf_counter()
import fastbp
if from_bench:      # its blocks and optimizer (tabular): the bench's Config builds them
    from fastbp.bench.configs import CONFIGS
    model, opt = CONFIGS[name].model(), CONFIGS[name].fastbp_optimizer(0.01)
else:
    layers = []
    for l, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(fastbp.Linear(i, o))
        if l < len(widths) - 2:
            layers.append(fastbp.ReLU())
    model, opt = fastbp.Sequential(*layers), fastbp.SGD(lr=0.01)
step = fastbp.compile(model, loss="softmax_cross_entropy",
                      optimizer=opt, batch_size=batch, dtype=np.float32, seed=0)
step(x, y)
print(json.dumps({"first_step_s": time.perf_counter() - t0}))
"""


def _first_step_in_fresh_process(config, cache_dir):
    from .common import ALL_CONFIGS, FROM_FASTBP_BENCH, bench_config

    if config in FROM_FASTBP_BENCH:
        bench_config(config)        # NotImplementedError where this fastbp lacks it
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    arg = [config, ALL_CONFIGS[config], config in FROM_FASTBP_BENCH]
    p = subprocess.run([sys.executable, "-c", _STARTUP, json.dumps(arg)], env=env,
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"fresh-process first step failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["first_step_s"]


class Compile(DataBenchmark):
    """Compile time and start-up of a fastbp step, and the size of its workspace."""

    param_names = ["config"]
    params = [CONFIGS]
    timeout = 900

    def setup(self, cache, config):
        require_attr("fastbp", "compile")
        self.weights = self.load(cache, config)[0]

    def track_compile_s(self, cache, config):
        """Seconds for ``fastbp.compile`` in this process (kernels from the on-disk cache)."""
        t0 = time.perf_counter()
        self.peer("fastbp", config, self.weights)
        return time.perf_counter() - t0

    track_compile_s.unit = "seconds"

    def track_first_step_cold_s(self, cache, config):
        """``import fastbp`` + compile + first step in a fresh process with an empty numba cache."""
        d = tempfile.mkdtemp(prefix="fastbp-asv-cache-")
        try:
            return _first_step_in_fresh_process(config, d)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    track_first_step_cold_s.unit = "seconds"

    def track_first_step_warm_s(self, cache, config):
        """The same, in a second fresh process that finds the first one's numba cache."""
        d = tempfile.mkdtemp(prefix="fastbp-asv-cache-")
        try:
            _first_step_in_fresh_process(config, d)
            return _first_step_in_fresh_process(config, d)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    track_first_step_warm_s.unit = "seconds"

    def track_workspace_bytes(self, cache, config):
        """Bytes of the step's arena: parameters, gradients, optimizer state, activations."""
        p = self.peer("fastbp", config, self.weights)
        arena = getattr(p.compiled, "arena", None)
        if arena is None:
            raise NotImplementedError("this fastbp step has no arena attribute")
        return int(np.asarray(arena).nbytes)

    track_workspace_bytes.unit = "bytes"
