"""Facts about the machine a benchmark ran on, and its measured peak.

``python -m fastbp.bench.machine`` prints them as JSON; the peer command
runs it in a subprocess of its own so that the thread pools it starts do
not stay alive next to a peer's.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

from ..config import usable_cores

__all__ = ["cpu_model", "usable_cores", "machine_info", "fma_peak", "sgemm_peak"]

#: float32 lanes kept in flight per thread by the FMA loop: enough
#: independent accumulators to cover FMA latency x FMA ports on current CPUs.
_FMA_LANES = 256


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """CPU model, core counts, platform and library versions.

    Returns
    -------
    dict
        ``cpu``, ``cores`` (:func:`os.cpu_count`), ``usable_cores`` (the
        affinity mask), ``platform``, ``python``, ``numpy``.
    """
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _fma_kernels():
    import numba
    from numba import prange

    @numba.njit(fastmath=True, cache=False)
    def fma_one(n_iter, a, b):
        acc = np.empty(_FMA_LANES, np.float32)
        for j in range(_FMA_LANES):
            acc[j] = np.float32(j) * np.float32(1e-3)
        for _ in range(n_iter):
            for j in range(_FMA_LANES):  # independent chains: vectorised FMAs
                acc[j] = acc[j] * a + b
        s = np.float32(0.0)
        for j in range(_FMA_LANES):
            s += acc[j]
        return s

    @numba.njit(fastmath=True, parallel=True, cache=False)
    def fma_par(n_iter, out, a, b):
        for t in prange(out.shape[0]):
            out[t] = fma_one(n_iter, a, b)

    return fma_one, fma_par


def fma_peak(threads=None, seconds=0.3, repeat=5):
    """Achievable float32 FMA throughput of a numba loop, in GFLOP/s.

    Each thread runs ``acc = acc * a + b`` on 256 independent float32
    accumulators (2 flops per element and iteration), which LLVM turns into
    back-to-back vector FMAs.  The best of ``repeat`` timings is returned,
    for one thread and for ``threads`` threads (one loop per thread, in a
    numba ``prange``).

    Parameters
    ----------
    threads : int, optional
        Default: numba's thread count (the number of usable cores).
    seconds : float
        Approximate duration of one timing.
    repeat : int

    Returns
    -------
    dict
        ``serial_gflops``, ``parallel_gflops``, ``threads``.
    """
    import numba

    fma_one, fma_par = _fma_kernels()
    threads = threads or numba.config.NUMBA_NUM_THREADS
    a, b = np.float32(0.999), np.float32(1e-3)
    fma_one(10, a, b)
    out = np.zeros(threads, np.float32)
    fma_par(10, out, a, b)
    # size the loop for about `seconds` on one thread
    n = 1000
    while True:
        t0 = time.perf_counter()
        fma_one(n, a, b)
        dt = time.perf_counter() - t0
        if dt > 0.02:
            break
        n *= 4
    n = max(1, int(n * seconds / dt))
    flops = 2.0 * _FMA_LANES * n
    ser = par = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fma_one(n, a, b)
        ser = max(ser, flops / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        fma_par(n, out, a, b)
        par = max(par, flops * threads / (time.perf_counter() - t0))
    return {"serial_gflops": ser / 1e9, "parallel_gflops": par / 1e9, "threads": threads}


def sgemm_peak(n=2048, repeat=3):
    """float32 ``n x n x n`` matrix product throughput of numpy's BLAS, GFLOP/s (best of ``repeat``)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty((n, n), np.float32)
    np.matmul(A, B, out=C)
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.matmul(A, B, out=C)
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t0))
    return {"n": n, "gflops": best / 1e9}


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return [{k: d.get(k) for k in ("internal_api", "num_threads", "version", "architecture")}
            for d in threadpool_info() if d.get("user_api") == "blas"]


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m fastbp.bench.machine",
                                description="Print the machine's facts and measured float32 peak as JSON.")
    p.add_argument("--quick", action="store_true", help="short timings, 1024^3 product")
    args = p.parse_args(argv)
    info = machine_info()
    if args.quick:
        info["fma"] = fma_peak(seconds=0.05, repeat=2)
        info["sgemm"] = sgemm_peak(1024, repeat=2)
    else:
        info["fma"] = fma_peak()
        info["sgemm"] = sgemm_peak()
    info["numpy_blas"] = _blas_info()
    json.dump(info, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
