"""``python -m fastbp.bench.mpi_bench``: data-parallel MPI training against one process.

For each configuration (default ``small`` 784-128-10 batch 64 and
``medium`` 784-512-512-10 batch 256, from :data:`fastbp.bench.configs.CONFIGS`)
it compares, at the same *global* batch:

* **1 rank x T threads**: one process, :meth:`TrainStep.fit` (all steps of
  an epoch in one native call), numba and BLAS capped to ``T`` threads
  (default: all cores of this process);
* **1 rank x 1 thread**: the same, for reference (parallel efficiency);
* **N ranks x 1 thread** (default ``N`` = the cores): ``mpiexec -n N``,
  :class:`fastbp.distributed.DistributedStep` ``fit`` with batch
  ``batch / N`` per rank, each rank capped to its share of the cores;

and, inside the MPI run, measures separately: the local forward+backward
of one rank (``run_step`` without update), the optimizer update, and the
``Allreduce`` of the gradient buffer alone (all ranks in a loop, after a
barrier) -- the communication cost per step.

Runs alternate (1 rank, N ranks, 1 rank, ...) in fresh processes and the
median over rounds is reported.  Timings on a machine shared with other
work are noisy; run it on an idle machine for numbers to quote.

Usage::

    python -m fastbp.bench.mpi_bench [--configs small,medium] [--ranks 2] [--rounds 3]
                                     [--json out.json] [--mpiexec "mpiexec"]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from .._cli_base import CliError, check_output_path
from .configs import get_configs, make_data
from .runner import format_bytes, format_time, peer_env

__all__ = ["main", "ring_allreduce_bytes"]


def ring_allreduce_bytes(n_bytes, ranks):
    """Bytes each rank sends (and receives) in a ring allreduce of ``n_bytes``.

    Reduce-scatter then allgather, each ``ranks - 1`` steps of
    ``n_bytes / ranks``: ``2 (ranks - 1) / ranks * n_bytes`` -- about twice
    the buffer, whatever the number of ranks.
    """
    return 2.0 * (ranks - 1) / ranks * n_bytes if ranks > 1 else 0.0


def _model(cfg):
    return cfg.model()


def _median_time(fn, reps):
    """(median, best) wall time of ``reps`` calls of ``fn``."""
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts)


# ------------------------------------------------------------------ workers
def _worker_single(cfg, threads, steps, reps):
    import fastbp
    from fastbp.distributed import limit_threads
    lim = limit_threads(threads)
    step = fastbp.compile(_model(cfg), optimizer=cfg.fastbp_optimizer(0.01), batch_size=cfg.batch, seed=0)
    X, y = make_data(cfg, n_batches=steps)
    step.fit(X[:2 * cfg.batch], y[:2 * cfg.batch], epochs=1)           # warm up (cache load, BLAS)
    med, best = _median_time(lambda: step.fit(X, y, epochs=1, shuffle=False), reps)
    return {"mode": "single", "threads": lim, "fit_step_s": med / steps, "fit_step_best_s": best / steps}


def _worker_dist(cfg, threads, steps, reps):
    from mpi4py import MPI

    import fastbp
    from fastbp import distributed as dist
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    if cfg.batch % size:
        raise SystemExit(f"batch {cfg.batch} is not divisible by {size} ranks")
    local = cfg.batch // size
    step = dist.compile(_model(cfg), optimizer=cfg.fastbp_optimizer(0.01), batch_size=local, seed=0, comm=comm,
                        threads="auto" if threads is None else threads)
    X, y = make_data(cfg, n_batches=steps)
    step.fit(X[:2 * cfg.batch], y[:2 * cfg.batch], epochs=1)           # warm up

    def timed(fn, reps, best=None):
        """Median over reps of the slowest rank's time (the best one into ``best``)."""
        ts = []
        for _ in range(reps):
            comm.Barrier()
            t = time.perf_counter()
            fn()
            t = np.array([time.perf_counter() - t])
            comm.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
            ts.append(float(t[0]))
        if best is not None:
            best.append(min(ts))
        return statistics.median(ts)

    b_fit = []
    fit_step = timed(lambda: step.fit(X, y, epochs=1, shuffle=False), reps, b_fit) / steps

    st = step.step          # the rank's TrainStep, driven through its driver interface
    xl, nl = st.check_features(X[:local], "x")
    yi, yf = st.check_targets(y[:local], nl)

    def grads(k):
        for _ in range(k):
            st.gradients_of(xl, yi, yf, nl)
    k = max(steps, 10)
    grad_s = timed(lambda: grads(k), reps) / k

    def updates(k):
        for _ in range(k):
            st.apply_update()
    update_s = timed(lambda: updates(k), reps) / k

    buf = np.zeros_like(step.comm_vector)

    def allreduces(k):
        for _ in range(k):
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    ka = 50
    t1 = timed(lambda: allreduces(ka), 1) / ka
    ka = int(min(20000, max(50, 0.3 / max(t1, 1e-7))))
    b_ar = []
    allreduce_s = timed(lambda: allreduces(ka), reps, b_ar) / ka
    return {"mode": "dist", "ranks": size, "threads": step.threads, "fit_step_s": fit_step,
            "fit_step_best_s": b_fit[0] / steps, "allreduce_best_s": b_ar[0] / ka,
            "grad_s": grad_s, "update_s": update_s, "allreduce_s": allreduce_s,
            "comm_bytes": int(step.comm_vector.nbytes), "in_sync": step.in_sync()}


def _worker_main(argv):
    ap = argparse.ArgumentParser(prog="fastbp.bench.mpi_bench --worker")
    ap.add_argument("--worker", choices=("single", "dist"), required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    cfg = get_configs(a.config)[0]
    if a.worker == "single":
        res = _worker_single(cfg, a.threads or len(os.sched_getaffinity(0)), a.steps, a.reps)
        print(json.dumps(res), flush=True)
    else:
        res = _worker_dist(cfg, a.threads, a.steps, a.reps)
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(json.dumps(res), flush=True)
    return 0


# ------------------------------------------------------------------ driver
def _mpiexec(arg):
    """The launcher's command line; ValueError naming --mpiexec where there is none."""
    if arg:
        cmd = arg.split()
        if not cmd or shutil.which(cmd[0]) is None:
            raise ValueError(f"--mpiexec {arg!r}: no such command")
        return cmd
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(local):
        return [local]
    found = shutil.which("mpiexec")
    if not found:
        raise ValueError("no mpiexec found: pip install -e '.[distributed]' in the fastbp clone, or pass --mpiexec")
    return [found]


def _check_options(a):
    """The options' values checked before any run: ``(configs, launcher)``; ValueError naming the option."""
    for name in ("ranks", "threads", "rounds", "steps"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name} must be at least 1, got {v}")
    if not 0 < a.timeout < float("inf"):
        raise ValueError(f"--timeout must be a positive number of seconds, got {a.timeout}")
    configs = get_configs(a.configs)
    ranks = a.ranks or len(os.sched_getaffinity(0))
    odd = [c for c in configs if c.batch % ranks]
    if odd:         # (each rank trains an equal share of the global batch)
        raise ValueError(f"--ranks {ranks}: the batch of {', '.join(f'{c.name} ({c.batch})' for c in odd)} "
                         f"is not divisible by {ranks} ranks")
    if a.json is not None:
        check_output_path(a.json, "--json")
    return configs, _mpiexec(a.mpiexec)


def _run(cmd, env, timeout):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


_DEFAULT_STEPS = {"tiny": 200, "small": 100, "medium": 12, "large": 3, "cs231n": 40}


def main(argv=None):
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        return _worker_main(argv)
    ap = argparse.ArgumentParser(prog="python -m fastbp.bench.mpi_bench",
                                 description="Data-parallel MPI training (N ranks x 1 thread) against one "
                                             "process (1 rank x N threads) at the same global batch.")
    ap.add_argument("--configs", default="small,medium", help="configurations (default: small,medium)")
    ap.add_argument("--ranks", type=int, default=None,
                    help="MPI ranks (default: the cores available to this process)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of the 1-rank run (default: the cores available to this process)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed epoch (default: per config)")
    ap.add_argument("--mpiexec", default=None, help="launcher command (default: the venv's mpiexec)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds each run may take (default: 900)")
    a = ap.parse_args(argv)
    try:
        configs, launcher = _check_options(a)
    except (ValueError, CliError) as e:
        ap.error(str(e))
    cores = len(os.sched_getaffinity(0))
    ranks = a.ranks or cores
    threads = a.threads or cores
    env, _ = peer_env()
    for k in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE"):
        env.pop(k, None)
    me = [sys.executable, "-m", "fastbp.bench.mpi_bench"]
    results = []
    print(f"mpi_bench: {ranks} ranks x 1 thread vs 1 rank x {threads} threads, {cores} cores, "
          f"{a.rounds} alternating rounds; load average {os.getloadavg()[0]:.1f}", flush=True)
    for cfg in configs:
        steps = a.steps or _DEFAULT_STEPS.get(cfg.name, 20)
        common = ["--config", cfg.name, "--steps", str(steps)]
        singles, ones, dists = [], [], []
        for _ in range(a.rounds):
            singles.append(_run(me + ["--worker", "single", "--threads", str(threads)] + common, env, a.timeout))
            if threads > 1:
                ones.append(_run(me + ["--worker", "single", "--threads", "1"] + common, env, a.timeout))
            dists.append(_run(launcher + ["-n", str(ranks)] + me + ["--worker", "dist", "--threads", "1"]
                              + common, env, a.timeout))
        med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
        best = lambda rows, k: min(r[k] for r in rows)  # noqa: E731
        r = {"config": cfg.name, "arch": cfg.arch, "global_batch": cfg.batch, "ranks": ranks,
             "single_threads": threads, "steps": steps,
             "single_fit_step_s": med(singles, "fit_step_s"), "dist_fit_step_s": med(dists, "fit_step_s"),
             "one_thread_fit_step_s": med(ones or singles, "fit_step_s"),
             "single_fit_step_best_s": best(singles, "fit_step_best_s"),
             "one_thread_fit_step_best_s": best(ones or singles, "fit_step_best_s"),
             "dist_fit_step_best_s": best(dists, "fit_step_best_s"),
             "allreduce_best_s": best(dists, "allreduce_best_s"),
             "dist_grad_s": med(dists, "grad_s"), "dist_update_s": med(dists, "update_s"),
             "allreduce_s": med(dists, "allreduce_s"), "comm_bytes": dists[0]["comm_bytes"],
             "ring_bytes_per_rank": ring_allreduce_bytes(dists[0]["comm_bytes"], ranks),
             "in_sync": all(d["in_sync"] for d in dists), "load_average": os.getloadavg()[0],
             "rounds": {"single": singles, "one_thread": ones, "dist": dists}}
        results.append(r)
        _print_row(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cores": cores, "results": results}, f, indent=1)
    return 0


def _print_row(r):
    def t(key):
        return f"{format_time(r[key]):>9s} (best {format_time(r[key[:-2] + '_best_s']):>9s})"
    sp = r["single_fit_step_s"] / r["dist_fit_step_s"]
    sp1 = r["one_thread_fit_step_s"] / r["dist_fit_step_s"]
    share = r["allreduce_s"] / r["dist_fit_step_s"]
    bw = r["ring_bytes_per_rank"] / r["allreduce_best_s"] if r["allreduce_best_s"] > 0 else float("nan")
    print(f"\n{r['config']} ({r['arch']}, global batch {r['global_batch']}), time per step, "
          f"median (best):", flush=True)
    print(f"  1 rank x 1 thread,  fit  {t('one_thread_fit_step_s')}")
    print(f"  1 rank x {r['single_threads']} threads, fit  {t('single_fit_step_s')}")
    print(f"  {r['ranks']} ranks x 1 thread, fit  {t('dist_fit_step_s')}  "
          f"speed-up {sp:.2f}x over 1 rank x {r['single_threads']} threads, {sp1:.2f}x over 1 x 1")
    print(f"    per rank: forward+backward {format_time(r['dist_grad_s'])}, update "
          f"{format_time(r['dist_update_s'])}, Allreduce alone {t('allreduce_s')} "
          f"= {share:.0%} of the step")
    print(f"    Allreduce buffer {format_bytes(r['comm_bytes'])}; ring volume per rank "
          f"{format_bytes(r['ring_bytes_per_rank'])} -> {bw / 1e9:.2f} GB/s at the best time", flush=True)


if __name__ == "__main__":
    sys.exit(main())
