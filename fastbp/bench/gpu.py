"""The GPU training step in the benchmark: :func:`bench_gpu`.

Times ``fastbp.compile(..., device="cuda")`` per configuration with CUDA
events on the step's stream: the per-call latency of ``step(x, y)`` (each
call ends with the one small copy of the loss back to the host, as a user
sees it) and the per-step time of ``fit`` on a device-resident data set (no
host synchronisation between steps).  Weights and data are the shared ones
of :mod:`fastbp.bench.configs`, so the losses are comparable with the other
peers'.  The minibatches are put on the device before timing (they are
read in place), so no host-device copy of inputs is timed.

Without a usable GPU it returns a result saying why and times nothing; the
CUDA simulator does not count as a GPU (its timings mean nothing) unless
``allow_simulator=True`` (a smoke test of this code).

Run it alone with ``python -m fastbp.bench.gpu [--configs tiny,small]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .configs import CONFIGS, get_configs, make_data, make_weights, n_batches_for

__all__ = ["bench_gpu"]


def _model(config):
    return config.model()


def _bench_one(config, steps, warmup, dtype, lr, seed, fit, n_batches):
    import fastbp
    from numba import cuda

    t0 = time.perf_counter()
    step = fastbp.compile(_model(config), loss="softmax_cross_entropy", optimizer=config.fastbp_optimizer(lr),
                          batch_size=config.batch, dtype=dtype, seed=seed, device="cuda")
    from .peers import _fastbp_param_keys
    weights = {}
    for (kW, kb), (W, b) in zip(_fastbp_param_keys(step.params), make_weights(config, seed=seed, dtype=dtype)):
        weights[kW] = W
        weights[kb] = b
    step.load_params_from(weights)
    X, y = make_data(config, n_batches=n_batches, seed=seed + 1, dtype=dtype)
    Xd = cuda.to_device(X)
    yd = cuda.to_device(y)
    nb = X.shape[0] // config.batch
    batches = [(Xd[i * config.batch:(i + 1) * config.batch], yd[i * config.batch:(i + 1) * config.batch])
               for i in range(nb)]
    build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    losses = [step(*batches[i % nb]) for i in range(max(1, warmup))]   # includes the kernels' JIT
    first_s = time.perf_counter() - t0

    stream = step.stream
    start, end = cuda.event(), cuda.event()
    start.record(stream)
    t0 = time.perf_counter()
    for i in range(steps):
        step(*batches[i % nb])
    wall = time.perf_counter() - t0
    end.record(stream)
    end.synchronize()
    call_ms = start.elapsed_time(end) / steps
    rec = {
        "config": config.name, "arch": config.arch, "batch": config.batch, "dtype": np.dtype(dtype).name,
        "steps": steps, "build_s": build_s, "warmup_s": first_s,
        "step_s": call_ms / 1e3, "step_wall_s": wall / steps,
        "gflops": config.flops / (call_ms / 1e3) / 1e9 if call_ms > 0 else None,
        "first_losses": [float(v) for v in losses[:3]],
    }
    if fit:
        epochs = max(1, -(-steps // nb))
        step.fit(Xd, yd, epochs=1, shuffle=True)         # warm the gather kernel
        start.record(stream)
        step.fit(Xd, yd, epochs=epochs, shuffle=True)
        end.record(stream)
        end.synchronize()
        fit_ms = start.elapsed_time(end) / (epochs * nb)
        rec["fit_step_s"] = fit_ms / 1e3
        rec["fit_gflops"] = config.flops / (fit_ms / 1e3) / 1e9 if fit_ms > 0 else None
    return rec


def bench_gpu(configs, steps=50, warmup=3, dtype=np.float32, lr=0.01, seed=0, fit=True, n_batches=None,
              allow_simulator=False):
    """Time the fused GPU training step for each configuration.

    Parameters
    ----------
    configs : str, Config or iterable of str / Config
        Names from :data:`fastbp.bench.configs.CONFIGS` (comma-separated
        string or list) or :class:`~fastbp.bench.configs.Config` objects.
    steps : int, default 50
        Timed calls per configuration (after ``warmup`` untimed ones).
    warmup : int, default 3
    dtype : float32 or float64, default float32
    lr : float, default 0.01
        Learning rate of the configuration's optimizer (SGD, or AdamW), softmax cross-entropy as the other peers.
    seed : int, default 0
        Seed of the shared weights (data: ``seed + 1``).
    fit : bool, default True
        Also time ``fit`` over the device-resident data, per step.
    n_batches : int, optional
        Distinct minibatches (default :func:`~fastbp.bench.configs.n_batches_for`).
    allow_simulator : bool, default False
        Run under numba's CUDA simulator too (a smoke test: timings are meaningless).

    Returns
    -------
    dict
        ``available`` (bool), ``reason`` (str: the device, or why nothing
        ran), ``simulator`` (bool) and ``results``: one dict per
        configuration with ``config``, ``arch``, ``batch``, ``dtype``,
        ``step_s`` (seconds per ``step(x, y)`` call, CUDA events),
        ``step_wall_s`` (host clock), ``gflops``, ``fit_step_s`` and
        ``fit_gflops`` (with ``fit=True``), ``build_s``, ``warmup_s``,
        ``first_losses``; empty when skipped.
    """
    from .configs import Config
    if isinstance(configs, Config):
        configs = [configs]
    elif isinstance(configs, str):
        configs = get_configs(configs)
    else:
        configs = [c if isinstance(c, Config) else get_configs([c])[0] for c in configs]
        if not configs:
            raise ValueError("configs: an empty list names no configuration")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    from ..kernels.cuda import cuda_available
    avail = cuda_available()
    out = {"available": bool(avail), "simulator": avail.simulator, "reason": avail.reason, "results": []}
    if not avail or (avail.simulator and not allow_simulator):
        out["available"] = False
        if avail.simulator:
            out["reason"] = "the CUDA simulator is active: GPU timings would be meaningless"
        return out
    for cfg in configs:
        nbat = n_batches if n_batches is not None else min(n_batches_for(cfg), 16)
        out["results"].append(_bench_one(cfg, steps, warmup, dtype, lr, seed, fit, nbat))
    return out


def _fmt(s):
    if s is None:
        return "-"
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.3f} ms"


def main(argv=None):
    """``python -m fastbp.bench.gpu``: print (or ``--json``) the GPU step timings."""
    ap = argparse.ArgumentParser(prog="python -m fastbp.bench.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configuration names")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per configuration (default 50)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--no-fit", action="store_true", help="time the steps only, not step.fit")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)
    try:            # the options checked before any work: a usage error (exit 2), not a traceback
        get_configs(a.configs)
        if a.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {a.steps}")
    except ValueError as e:
        ap.error(str(e))
    res = bench_gpu(a.configs, steps=a.steps, dtype=np.dtype(a.dtype), fit=not a.no_fit)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    if not res["available"]:
        print(f"GPU benchmark skipped: {res['reason']}")
        return 0
    print(f"fastbp GPU step on {res['reason']}")
    for r in res["results"]:
        gf = f"{r['gflops']:.1f} GFLOP/s" if r["gflops"] else "-"
        fit = f"   fit {_fmt(r.get('fit_step_s'))}/step" if "fit_step_s" in r else ""
        print(f"  {r['config']:<8} {r['arch']:<22} batch {r['batch']:<6} step {_fmt(r['step_s'])} "
              f"({gf}){fit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
