"""One peer in a process of its own, driven by the peer command.

``python -m fastbp.bench.worker`` reads one JSON request per line on stdin
and answers one JSON line per request on the file descriptor that was its
stdout when it started; everything the peer's libraries print goes to
stderr instead, so it cannot corrupt the protocol.

Requests (``{"cmd": ..., "args": {...}}``):

``init`` (peer, config, data, lr, n_check)
    Import the library, load the shared weights and data (``.npz``), build
    the peer and run ``n_check`` steps on batches ``0 .. n_check-1``;
    answers their losses, the build time and the first step's time.  A
    configuration with dropout is checked on its dropout-free variant (each
    library draws its own masks): that peer is built first, steps
    ``n_check`` times for the answered ``losses`` and is dropped; the timed
    peer's own first losses are answered as ``dropout_losses``.
``calibrate`` (min_time)
    Warm up and estimate the time of one step (at least 3 steps).
``time`` (number)
    Run ``number`` steps (epochs for scikit-learn), cycling over the
    batches, wait for the last; answers seconds per step.
``memory`` (steps)
    Peak RSS growth since just before the peer was built, and the peak of
    traced (``tracemalloc``) allocations during ``steps`` further steps.
``fit_vs_loop`` (rounds, min_time), fastbp only
    Per-step time of ``step.fit`` over one epoch vs a Python loop of
    ``step(x, y)`` over the same batches, interleaved; answers both lists.
``info``
    Library versions and, for fastbp, ``fastbp._jit.threading_info()``;
    a peer's own ``info()`` where it has one (the bf16 peers of
    :mod:`fastbp.bench.bf16`: their precision, mode and CPU flags).

The peer is any of :data:`fastbp.bench.bf16.ALL_PEERS`: the float32 peers
of :mod:`fastbp.bench.peers` and the bf16 ones, each in a process of its
own (oneDNN's GNU OpenMP threads and OpenBLAS's never share a process).
``quit``

The first step in a fresh process is timed by :mod:`fastbp.bench._startup`
instead (run by path, so that ``import fastbp`` is inside the clock).
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback

import numpy as np

from .configs import CONFIGS, SCRUBBED_ENV

def _rss_bytes():
    """Current resident set size (``/proc/self/statm``), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _hwm_bytes():
    """Peak resident set size: ``VmHWM`` (resettable), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_hwm():
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs``); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load_shared(path):
    """Weights ``[(W, b), ...]`` and data ``(X, y)`` from the peer command's ``.npz``."""
    with np.load(path) as z:
        n = int(z["n_layers"])
        weights = [(z[f"W{l}"], z[f"b{l}"]) for l in range(n)]
        return weights, z["X"], z["y"]


def save_shared(path, weights, X, y):
    """Write what :func:`load_shared` reads."""
    arrays = {"n_layers": np.int64(len(weights)), "X": X, "y": y}
    for l, (W, b) in enumerate(weights):
        arrays[f"W{l}"] = W
        arrays[f"b{l}"] = b
    np.savez(path, **arrays)


class Worker:
    """State of one worker process (one peer, one configuration)."""

    def __init__(self):
        self.peer = None
        self.name = None
        self.k = 0
        self.last = None

    # -- requests ---------------------------------------------------------
    def init(self, peer, config, data, lr, n_check):
        from .bf16 import ALL_PEERS as PEERS, ALL_MODULES as MODULES

        import importlib

        importlib.import_module(MODULES[peer])  # import cost is not part of the build
        weights, X, y = load_shared(data)
        self.config = CONFIGS[config]
        self.name = peer
        check_losses = None
        if self.config.dropout and peer != "sklearn" and n_check:
            # the same network with p=0, same weights and batches: comparable across peers
            check = PEERS[peer](self.config.without_dropout(), weights, lr)
            batches = check.batches(X, y)
            check_losses = [check.loss_value(check.step(*batches[k % len(batches)])) for k in range(n_check)]
            del check, batches
            gc.collect()
        self.hwm_reset = _reset_hwm()
        self.rss0 = _rss_bytes() if self.hwm_reset else _hwm_bytes()
        t0 = time.perf_counter()
        self.peer = PEERS[peer](self.config, weights, lr)
        build_s = time.perf_counter() - t0
        self.build_hwm = _hwm_bytes()
        if peer == "sklearn":
            self.peer.set_data(X, y)
            t0 = time.perf_counter()
            self.peer.epoch()
            return {"losses": None, "build_s": build_s, "first_step_s": time.perf_counter() - t0,
                    "steps_per_epoch": self.peer.steps_per_epoch}
        self.X, self.y = X, y
        self.batches = self.peer.batches(X, y)
        losses = []
        first = None
        for k in range(n_check):
            t0 = time.perf_counter()
            xb, yb = self.batches[k % len(self.batches)]
            losses.append(self.peer.loss_value(self.peer.step(xb, yb)))
            if first is None:
                first = time.perf_counter() - t0
        self.k = n_check
        out = {"losses": losses, "build_s": build_s, "first_step_s": first, "n_batches": len(self.batches)}
        if check_losses is not None:
            out["losses"], out["dropout_losses"] = check_losses, losses
        return out

    def _run(self, number):
        if self.name == "sklearn":
            for _ in range(number):
                self.peer.epoch()
            return number * self.peer.steps_per_epoch
        peer, batches, nb = self.peer, self.batches, len(self.batches)
        k = self.k
        h = None
        for _ in range(number):
            xb, yb = batches[k % nb]
            h = peer.step(xb, yb)
            k += 1
        peer.sync(h)
        self.k = k
        self.last = h
        return number

    def calibrate(self, min_time):
        steps = 0
        t0 = time.perf_counter()
        while True:
            steps += self._run(1)
            dt = time.perf_counter() - t0
            if steps >= 3 and dt >= min_time:
                break
        # a second, timed pass after warm-up
        t0 = time.perf_counter()
        steps = self._run(1 if self.name == "sklearn" else 3)
        per_step = (time.perf_counter() - t0) / steps
        # from here on only steps run: their own peak is measured from this mark
        self.warm_hwm = _hwm_bytes()
        self.hwm_reset = self.hwm_reset and _reset_hwm()
        self.rss1 = _rss_bytes() if self.hwm_reset else None
        return per_step

    def time(self, number):
        t0 = time.perf_counter()
        steps = self._run(number)
        return (time.perf_counter() - t0) / steps

    def memory(self, steps):
        import tracemalloc

        hwm = _hwm_bytes()
        out = {"hwm_reset": self.hwm_reset, "rss_bytes": _rss_bytes()}
        if self.rss0 is not None:
            # peak over build, check steps, warm-up and timing rounds
            peak = max(hwm, self.build_hwm, getattr(self, "warm_hwm", 0))
            out["peak_rss_growth"] = max(0, peak - self.rss0)
        else:
            out["peak_rss_growth"] = None
        # peak over the timing rounds alone, above the resident size before them
        rss1 = getattr(self, "rss1", None)
        out["steps_rss_growth"] = max(0, hwm - rss1) if rss1 is not None else None
        arena = getattr(getattr(self.peer, "compiled", None), "arena", None)
        if arena is not None:
            out["fastbp_arena_bytes"] = int(arena.nbytes)
        self._run(1)
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        n = self._run(max(1, steps))
        cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["traced_peak_per_step"] = max(0, peak - base)
        out["traced_growth"] = (cur - base) / n
        return out

    def fit_vs_loop(self, rounds, min_time):
        if self.name != "fastbp":
            raise ValueError(f"fit_vs_loop: only the fastbp peer has fit, this worker runs {self.name}")
        peer = self.peer
        nb = len(self.batches)
        X = np.ascontiguousarray(self.X[: nb * self.config.batch])
        y = np.ascontiguousarray(self.y[: nb * self.config.batch])
        batches = self.batches

        def loop():
            loss = 0.0
            for xb, yb in batches:
                loss = peer.step(xb, yb)
            return loss

        peer.fit(X, y)
        loop()
        t0 = time.perf_counter()
        peer.fit(X, y)
        epochs = max(1, int(min_time / max(time.perf_counter() - t0, 1e-9)))
        fit_t, loop_t = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(epochs):
                losses = peer.fit(X, y)
            fit_t.append((time.perf_counter() - t0) / (epochs * nb))
            t0 = time.perf_counter()
            for _ in range(epochs):
                loop()
            loop_t.append((time.perf_counter() - t0) / (epochs * nb))
        return {"fit_per_step": fit_t, "loop_per_step": loop_t, "steps_per_epoch": nb,
                "fit_losses_len": int(np.asarray(losses).shape[0])}

    def info(self):
        import importlib.metadata as md

        from .bf16 import ALL_MODULES as MODULES

        dist = {"fastbp": "fastbp", "numpy": "numpy", "torch": "torch", "jax": "jax",
                "sklearn": "scikit-learn"}[MODULES[self.name]]
        out = {"version": md.version(dist), "numpy": np.__version__,
               "env": {k: os.environ[k] for k in SCRUBBED_ENV if k in os.environ}}
        if MODULES[self.name] == "fastbp":
            from fastbp import _jit

            out["threading"] = _jit.threading_info()
        elif MODULES[self.name] == "torch":
            import torch

            out["threads"] = torch.get_num_threads()
        elif self.name == "jax":
            import jax

            out["devices"] = [str(d) for d in jax.devices()]
        if callable(getattr(self.peer, "info", None)):      # the bf16 peers' mode and CPU flags
            out.update(self.peer.info())
        return out


def serve(stdin, proto):
    w = Worker()
    for line in stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        try:
            result = getattr(w, cmd)(**msg.get("args", {}))
            reply = {"ok": True, "result": result}
        except Exception as e:  # reported to the launcher, which skips the peer
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # keep the protocol channel private: libraries' prints go to stderr
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(sys.stdin, proto)
    return 0


if __name__ == "__main__":
    sys.exit(main())
