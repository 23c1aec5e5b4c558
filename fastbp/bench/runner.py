"""``python -m fastbp.bench``: fastbp's training step against its peers.

For each configuration (:data:`fastbp.bench.configs.CONFIGS`) every peer
runs in a process of its own (:mod:`fastbp.bench.worker`), so no two thread
pools (numba's, OpenBLAS's, PyTorch's OpenMP, XLA's) ever live in one
process.  All peers get the same initial weights and batches; their losses
over the first steps are compared; then timing rounds are interleaved
(peer A, B, C, A, B, C, ... with the starting peer rotated each round) and
the median time per step is reported with GFLOP/s and the ratio to the
fastest peer.  For fastbp it also reports ``fit`` per step against a loop of
``step(x, y)``, the first step in a fresh process with a cold and a warm
on-disk cache, and memory next to the peers'.

``--precision fp32,bf16`` adds a bf16 section to each configuration
(:mod:`fastbp.bench.bf16`): fastbp with ``precision="bf16"`` and PyTorch
with bf16 products, timed in the same interleaved rounds, losses checked
against the float32 ones, printed below the float32 table.  The default,
``--precision fp32``, is the float32 comparison alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from .._cli_base import CliError, check_output_path
from .configs import (SCRUBBED_ENV, CONFIGS, get_configs, make_data, make_weights, n_batches_for,
                      workspace_bytes)
from . import bf16
from .bf16 import ALL_DISPLAY as DISPLAY, ALL_PEERS
from .peers import PEERS, available
from .checks import compare_losses
from .report import format_bytes, format_startup, format_time, print_config  # noqa: F401 - re-exported

__all__ = ["main", "peer_env", "compare_losses", "SCRUBBED_ENV", "format_time", "format_bytes",
           "format_startup", "print_config"]


class WorkerError(RuntimeError):
    """A worker process failed a request or died."""


def peer_env(environ=None, scrub=True):
    """The environment for the processes the bench starts.

    Parameters
    ----------
    environ : mapping, optional
        Default :data:`os.environ` (not modified).
    scrub : bool
        Remove :data:`SCRUBBED_ENV` from the copy.

    Returns
    -------
    env : dict
        A copy of ``environ`` without the scrubbed variables.
    removed : dict
        The removed variables and their values.
    """
    env = dict(os.environ if environ is None else environ)
    removed = {}
    if scrub:
        for k in SCRUBBED_ENV:
            if k in env:
                removed[k] = env.pop(k)
    return env, removed


class WorkerProc:
    """A worker subprocess and its request/answer channel."""

    def __init__(self, peer, env, log_dir):
        self.peer = peer
        self.log_path = os.path.join(log_dir, f"{peer}.stderr")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "fastbp.bench.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, text=True, bufsize=1)

    def stderr_tail(self, n=15):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def call(self, cmd, timeout=900.0, **args):
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, "args": args}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"{self.peer} worker died before {cmd}:\n{self.stderr_tail()}") from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"{self.peer} worker: no answer to {cmd} within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"{self.peer} worker died during {cmd} (exit code {self.proc.wait()}):\n"
                              f"{self.stderr_tail()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerError(f"{self.peer} worker, {cmd}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply["result"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
                self.kill()
        self._log.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _run_json(cmd, env, timeout):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise WorkerError(f"{' '.join(cmd[1:])} failed (exit code {p.returncode}):\n{p.stderr[-3000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    out = json.loads(lines[-1])
    return out, wall


def measure_startup(config_name, data_path, env, timeout=600):
    """First step in a fresh process, with an empty (cold) then the same (warm) numba cache dir."""
    cache = tempfile.mkdtemp(prefix="fastbp-bench-cache-")
    try:
        e = dict(env, NUMBA_CACHE_DIR=cache)
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_startup.py"),
               config_name, data_path]
        cold, cold_wall = _run_json(cmd, e, timeout)
        warm, warm_wall = _run_json(cmd, e, timeout)
        cold["process_wall_s"] = cold_wall
        warm["process_wall_s"] = warm_wall
        return {"cold": cold, "warm": warm}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def measure_train_startup(env, timeout=900):
    """``fastbp train --quiet`` (the CLI's default job) in a new process, with an
    empty (cold: everything compiled) and then the same (warm) numba cache dir.
    Returns ``{"cold": {"wall_s": ...}, "warm": {...}}``: wall time of the
    whole process, interpreter start-up and imports included."""
    cache = tempfile.mkdtemp(prefix="fastbp-bench-cache-")
    try:
        e = dict(env, NUMBA_CACHE_DIR=cache)
        cmd = [sys.executable, "-m", "fastbp.cli", "train", "--quiet"]
        out = {}
        for kind in ("cold", "warm"):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                raise WorkerError(f"fastbp train failed (exit code {p.returncode}):\n{p.stderr[-3000:]}")
            out[kind] = {"wall_s": wall}
        return out
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def measure_machine(env, quick):
    cmd = [sys.executable, "-m", "fastbp.bench.machine"] + (["--quick"] if quick else [])
    out, _ = _run_json(cmd, env, 600)
    return out


def _say(*a):
    print(*a, flush=True)


def run_config(cfg, peers, args, env, tmp, log):
    """Everything for one configuration; returns its JSON record."""
    rec = {"widths": list(cfg.widths), "batch": cfg.batch, "flops": cfg.flops, "peers": {}, "errors": {},
           "network": cfg.describe(), "skipped": {}}
    weights = make_weights(cfg, seed=args.seed)
    n_batches = n_batches_for(cfg, samples=1024 if args.quick else 4096)
    X, y = make_data(cfg, n_batches=n_batches, seed=args.seed + 1)
    from .worker import save_shared

    data = os.path.join(tmp, f"{cfg.name}.npz")
    save_shared(data, weights, X, y)
    rec["n_batches"] = n_batches
    log(f"\n== {cfg.name}: {cfg.arch}, batch {cfg.batch}, {cfg.flops / 1e6:.3g} MFLOP per step, "
        f"{n_batches} batches ==")
    if not cfg.plain:
        log(f"  {cfg.describe()}"
            + ("; losses compared on the same network with dropout 0 (each library draws its own masks)"
               if cfg.dropout else ""))
    for p in list(peers):
        why = ALL_PEERS[p].supports(cfg)
        if why is not None:
            rec["skipped"][p] = why
            log(f"  {DISPLAY[p]}: skipped: {why}")
    peers = [p for p in peers if p not in rec["skipped"]]

    workers = {}
    try:
        for p in peers:
            workers[p] = WorkerProc(p, env, tmp)
        live = []
        for p in peers:
            try:
                r = workers[p].call("init", peer=p, config=cfg.name, data=data, lr=args.lr,
                                    n_check=args.check_steps)
                rec["peers"][p] = {"precision": bf16.precision_of(p), "check_losses": r["losses"],
                                   "build_s": r["build_s"], "first_step_s": r["first_step_s"]}
                if "dropout_losses" in r:
                    rec["peers"][p]["dropout_losses"] = r["dropout_losses"]
                if p == "sklearn":
                    rec["peers"][p]["steps_per_epoch"] = r["steps_per_epoch"]
                live.append(p)
            except WorkerError as e:
                rec["errors"][p] = str(e)
                log(f"  {DISPLAY[p]}: FAILED to build or step: {str(e).splitlines()[0]}")
                workers.pop(p).kill()

        fp32 = [p for p in live if bf16.precision_of(p) == "fp32"]
        ref, mism = compare_losses({p: rec["peers"][p]["check_losses"] for p in fp32}, rtol=args.rtol)
        rec["loss_reference"] = ref
        rec["loss_mismatches"] = mism
        for p in fp32:
            if rec["peers"][p]["check_losses"] is None:
                verdict = "not compared (own init)"
            elif p == ref:
                verdict = "reference"
            else:
                verdict = "MISMATCH" if p in mism else "ok"
            rec["peers"][p]["loss_check"] = verdict
        if mism:
            log(f"  LOSS MISMATCH over the first {args.check_steps} steps (reference {ref}, rtol {args.rtol:g}):")
            for lines in mism.values():
                for m in lines:
                    log(f"    {m}")
        if len(live) > len(fp32):
            b_mism = bf16.check_losses(rec, [p for p in live if p not in fp32], args.bf16_rtol)
            if b_mism:
                log(f"  bf16 LOSS MISMATCH over the first {args.check_steps} steps (reference "
                    f"{rec['bf16']['loss_reference']}, rtol {args.bf16_rtol:g}):")
                for lines in b_mism.values():
                    for m in lines:
                        log(f"    {m}")
        if args.check_only:
            for p in live:
                log(f"  {DISPLAY[p]:<22} losses {rec['peers'][p]['check_losses']}  {rec['peers'][p]['loss_check']}")
            return rec

        number = {}
        for p in list(live):
            try:
                est = workers[p].call("calibrate", min_time=args.round_time)
            except WorkerError as e:
                rec["errors"][p] = str(e)
                log(f"  {DISPLAY[p]}: FAILED during warm-up: {str(e).splitlines()[0]}")
                live.remove(p)
                continue
            per_call = est * (rec["peers"][p].get("steps_per_epoch") or 1)
            number[p] = max(1, int(round(args.round_time / max(per_call, 1e-9))))
            rec["peers"][p]["steps_per_round"] = number[p] * (rec["peers"][p].get("steps_per_epoch") or 1)
            rec["peers"][p]["times"] = []

        for r in range(args.repeat):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for p in order:
                if p not in live:
                    continue
                # let the previous peer's spinning threads (OpenBLAS, OpenMP) go to sleep first
                time.sleep(args.gap)
                try:
                    rec["peers"][p]["times"].append(workers[p].call("time", number=number[p]))
                except WorkerError as e:
                    rec["errors"][p] = str(e)
                    log(f"  {DISPLAY[p]}: FAILED while timed: {str(e).splitlines()[0]}")
                    live.remove(p)

        for p in live:
            pr = rec["peers"][p]
            pr["median_s"] = statistics.median(pr["times"])
            pr["min_s"] = min(pr["times"])
            pr["gflops"] = cfg.flops / pr["median_s"] / 1e9
            try:
                pr["memory"] = workers[p].call("memory", steps=2 if args.quick else 5)
                pr["info"] = workers[p].call("info")
            except WorkerError as e:
                rec["errors"][p] = str(e)
        fp32 = [p for p in live if bf16.precision_of(p) == "fp32"]
        if fp32:
            fastest = min(fp32, key=lambda p: rec["peers"][p]["median_s"])
            rec["fastest"] = fastest
            for p in fp32:
                rec["peers"][p]["vs_fastest"] = rec["peers"][p]["median_s"] / rec["peers"][fastest]["median_s"]
            others = [p for p in fp32 if p != "fastbp"]
            if "fastbp" in live and others:
                best = min(others, key=lambda p: rec["peers"][p]["median_s"])
                rec["fastbp_speedup"] = {"over": best,
                                         "x": rec["peers"][best]["median_s"] / rec["peers"]["fastbp"]["median_s"]}
        bf16.summarize(rec, live)
        if "fastbp" in live and not args.no_fit:
            try:
                f = workers["fastbp"].call("fit_vs_loop", rounds=3 if args.quick else args.repeat,
                                           min_time=args.round_time)
                f["fit_median_s"] = statistics.median(f["fit_per_step"])
                f["loop_median_s"] = statistics.median(f["loop_per_step"])
                f["x"] = f["loop_median_s"] / f["fit_median_s"]
                rec["fit_vs_loop"] = f
            except WorkerError as e:
                rec["errors"]["fastbp fit"] = str(e)
                log(f"  fastbp fit: FAILED: {str(e).splitlines()[0]}")
    finally:
        for w in workers.values():
            w.close()

    if "fastbp" in rec["peers"] and "fastbp" not in rec["errors"] and args.startup:
        try:
            rec["startup"] = measure_startup(cfg.name, data, env)
        except (WorkerError, subprocess.TimeoutExpired) as e:
            rec["errors"]["fastbp startup"] = str(e)
    rec["workspace_bytes"] = workspace_bytes(cfg)
    return rec


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastbp.bench",
        description="Compare fastbp's fused training step with numpy, PyTorch (eager and torch.compile), JAX and "
                    "scikit-learn, each in its own process, interleaved; float32, softmax cross-entropy; "
                    "ReLU MLPs with plain SGD, and 'tabular': Linear -> BatchNorm1d -> GELU -> Dropout(0.1) "
                    "blocks with AdamW (numpy and scikit-learn run the ReLU/SGD configurations only). "
                    "--precision fp32,bf16 adds a bf16 section (fastbp precision='bf16' and PyTorch in bf16).")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated configurations (default: all of {','.join(CONFIGS)})")
    p.add_argument("--peers", default=None,
                   help=f"comma-separated peers (default: every installed one of {','.join(PEERS)})")
    p.add_argument("--repeat", type=int, default=None, help="timing rounds per peer (default 9, 3 with --quick)")
    p.add_argument("--round-time", type=float, default=None,
                   help="seconds of steps per peer per round (default 0.2, 0.02 with --quick)")
    p.add_argument("--gap", type=float, default=None,
                   help="seconds of pause before each timed round, so that the previous peer's spinning thread "
                        "pools go to sleep (OpenBLAS spins ~0.1 s, Intel OpenMP under MKL 0.2 s; "
                        "default 0.3, 0.25 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="few short rounds, small data, short peak measurement, no cold/warm start-up runs")
    p.add_argument("--json", metavar="PATH", help="write all numbers to PATH as JSON")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate, SGD or AdamW (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared weights (data: seed + 1)")
    p.add_argument("--check-steps", type=int, default=None, help="steps whose losses are compared (default 3)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the loss check (default 1e-3)")
    p.add_argument("--precision", default="fp32",
                   help="comma-separated sections: fp32 (the float32 peers; the default alone) and bf16 (fastbp "
                        "with precision='bf16', PyTorch eager under torch.autocast bfloat16 and PyTorch with float32 "
                        "matmuls in bf16: the bf16 variants of fastbp and torch among --peers, timed in the same "
                        "rounds, printed below the float32 table; skipped with the reason where "
                        "fastbp._bf16.available() is false). Both: --precision fp32,bf16")
    p.add_argument("--bf16-rtol", type=float, default=0.03,
                   help="relative tolerance of the bf16 peers' losses against fastbp's float32 losses (default 0.03)")
    p.add_argument("--check-only", action="store_true", help="only build the peers and compare their losses")
    p.add_argument("--startup", dest="startup", action="store_true", default=None,
                   help="measure fastbp's first step in a fresh process, cold and warm cache (default unless --quick)")
    p.add_argument("--no-startup", dest="startup", action="store_false")
    p.add_argument("--no-peak", action="store_true", help="skip the FMA-loop and sgemm peak measurement")
    p.add_argument("--no-fit", action="store_true", help="skip fastbp's fit-vs-loop measurement")
    p.add_argument("--keep-openblas-env", action="store_true",
                   help=f"do not remove {' and '.join(SCRUBBED_ENV)} from the peers' environment")
    return p


def _gemm_jit(backend):
    """Whether the step's small products run through oneMKL's JIT GEMM kernels, and why not."""
    if backend.get("gemm_jit"):
        return "yes (FASTBP_GEMM_JIT=0 turns them off)"
    if backend.get("backend") != "mkl":
        return "no (they need the mkl backend)"
    return "no (FASTBP_GEMM_JIT=0, or this oneMKL has none)"


def _check_numbers(args):
    """What is wrong with the numeric options (a message), or None: checked before any work
    (a NaN or infinite --round-time never ended the calibration)."""
    if args.repeat < 1 or args.check_steps < 1:
        return "--repeat and --check-steps must be >= 1"
    for name, v, low_open in (("--round-time", args.round_time, True), ("--gap", args.gap, False),
                              ("--lr", args.lr, True), ("--rtol", args.rtol, False),
                              ("--bf16-rtol", args.bf16_rtol, False)):
        if not math.isfinite(v) or v < 0 or (low_open and v == 0):
            return f"{name} must be a finite number {'>' if low_open else '>='} 0, got {v!r}"
    if args.seed < 0:
        return f"--seed must be >= 0, got {args.seed}"
    return None


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 9
    if args.round_time is None:
        args.round_time = 0.02 if args.quick else 0.2
    if args.gap is None:
        args.gap = 0.25 if args.quick else 0.3
    if args.check_steps is None:
        args.check_steps = 3
    if args.startup is None:
        args.startup = not args.quick
    problem = _check_numbers(args)
    if problem:
        print(f"python -m fastbp.bench: error: {problem}", file=sys.stderr)
        return 2
    try:
        configs = get_configs(args.configs)
        if args.peers is None:
            peers = [p for p in PEERS if available(p)]
            missing = [p for p in PEERS if p not in peers]
        else:
            asked = list(dict.fromkeys(p.strip() for p in args.peers.split(",") if p.strip()))   # once each
            if not asked:
                raise ValueError(f"--peers {args.peers!r} names no peer (choose from {','.join(PEERS)})")
            for p in asked:
                available(p)  # raises on an unknown name
            peers = [p for p in asked if available(p)]
            missing = [p for p in asked if p not in peers]
        precisions = bf16.parse_precision(args.precision)
        if args.json is not None:       # found before the run, not after it
            check_output_path(args.json, "--json")
    except (ValueError, CliError) as e:
        print(f"python -m fastbp.bench: error: {e}", file=sys.stderr)
        return 2
    log = _say
    env, removed = peer_env(scrub=not args.keep_openblas_env)
    # the workers import fastbp.bench from the same tree as this process
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    from .machine import machine_info

    fp32_peers = peers if "fp32" in precisions else []
    result = {"machine": machine_info(), "argv": sys.argv[1:] if argv is None else list(argv),
              "removed_env": removed, "peers": fp32_peers, "missing_peers": missing, "precisions": list(precisions),
              "configs": {}}
    bf16_peers, bf16_lines = [], []
    if "bf16" in precisions:
        ok, why, cpu = bf16.bf16_status(env)
        if ok:
            bf16_peers = bf16.bf16_peers_for(peers)
            if bf16_peers:
                against = ("fastbp float32" if "fastbp" in fp32_peers else
                           "the float32 reference peer" if fp32_peers else "the first bf16 peer (no float32 peer)")
                bf16_lines.append(f"bf16 section: {', '.join(DISPLAY[p] for p in bf16_peers)}; CPU bf16 "
                                  f"instructions: {', '.join(cpu)}; losses checked against {against} "
                                  f"(rtol {args.bf16_rtol:g})")
            else:
                bf16_lines.append(f"bf16 section: none of these peers has a bf16 variant (those of "
                                  f"{' and '.join(dict.fromkeys(bf16.BASE.values()))} do)")
        else:
            bf16_lines.append(bf16.unavailable_line(why))
        result["bf16"] = {"available": ok, "why": why, "cpu": cpu, "peers": bf16_peers}
    m = result["machine"]
    log(f"fastbp.bench on {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['platform']}, "
        f"Python {m['python']}, numpy {m['numpy']}")
    if removed:
        log("removed from the peers' environment (they slow numpy down): "
            + ", ".join(f"{k}={v}" for k, v in removed.items()))
    elif not args.keep_openblas_env:
        log(f"environment: {' and '.join(SCRUBBED_ENV)} not set (nothing to remove for the peers)")
    log(f"peers: {', '.join(DISPLAY[p] for p in fp32_peers) or 'none in float32'}"
        + (f"; not installed, skipped: {', '.join(missing)}" if missing else ""))
    for line in bf16_lines:
        log(line)
    log(f"{'float32' if fp32_peers else 'bf16 section only' if bf16_peers else 'no peer to measure'}, lr {args.lr:g} (SGD, or AdamW where a configuration "
        f"says), {args.repeat} interleaved rounds of ~{args.round_time:g} s per peer, median per step; losses "
        f"compared over {args.check_steps} steps (rtol {args.rtol:g})")

    peak = None
    if not args.no_peak and not args.check_only:
        try:
            mm = measure_machine(env, args.quick)
            result["peak"] = {"fma": mm["fma"], "sgemm": mm["sgemm"], "numpy_blas": mm["numpy_blas"]}
            peak = max(mm["fma"]["parallel_gflops"], mm["sgemm"]["gflops"])
            result["peak"]["reference_gflops"] = peak
            log(f"measured float32 peak: numba FMA loop {mm['fma']['parallel_gflops']:.0f} GFLOP/s on "
                f"{mm['fma']['threads']} threads ({mm['fma']['serial_gflops']:.0f} on 1); numpy sgemm "
                f"{mm['sgemm']['n']}^3 {mm['sgemm']['gflops']:.0f} GFLOP/s; reference peak {peak:.0f} GFLOP/s")
        except (WorkerError, subprocess.TimeoutExpired) as e:
            log(f"peak measurement failed: {str(e).splitlines()[0]}")

    failed = False
    tmp = tempfile.mkdtemp(prefix="fastbp-bench-")
    try:
        for cfg in configs:
            rec = run_config(cfg, fp32_peers + bf16_peers, args, env, tmp, log)
            result["configs"][cfg.name] = rec
            if not args.check_only:
                print_config(cfg, rec, peak, log)
            failed |= bool(rec["loss_mismatches"]) or bool(rec["errors"])
            failed |= bool(rec.get("bf16", {}).get("loss_mismatches"))
            fb = (rec["peers"].get("fastbp") or rec["peers"].get("fastbp_bf16") or {}).get("info", {}).get("threading")
            # the first configuration's, or the first whose workers started numba's threads (tiny's never do)
            if fb and ("threading" not in result or (_threads_started(fb) and
                                                      not _threads_started(result["threading"]))):
                result["threading"] = fb
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.startup and not args.check_only and "fastbp" in fp32_peers:
        try:
            t = measure_train_startup(env)
            result["train_startup"] = t
            log(f"\nfirst run of `fastbp train --quiet` (digits, 30 epochs; the whole process): "
                f"{t['cold']['wall_s']:.1f} s with an empty cache (native code compiled), "
                f"{t['warm']['wall_s']:.1f} s with the compiled code in the cache")
        except (WorkerError, subprocess.TimeoutExpired) as e:
            log(f"first run of fastbp train: FAILED: {str(e).splitlines()[0]}")
    if "threading" in result:
        t = result["threading"]
        blas = t.get("blas")
        if isinstance(blas, list):
            blas = "; ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads, "
                             f"{b.get('architecture')})" for b in blas)
        bk = t.get("blas_backend") or {}
        log(f"\nfastbp threading: numba {t.get('numba_threads')} threads, layer {t.get('numba_layer')}; "
            f"the fused step's BLAS: {bk.get('backend')} ({bk.get('version')}, {bk.get('threads')} threads; "
            f"set FASTBP_BLAS to choose); small products through oneMKL's JIT GEMM kernels: {_gemm_jit(bk)}; "
            f"BLAS libraries loaded: {blas}")
        if t.get("step_threads_min_elements") is not None:
            log(f"steps whose widest minibatch activation has at least {t['step_threads_min_elements']} elements "
                "run on numba's threads alone: elementwise kernels in parallel, products split over the same "
                "threads on one BLAS thread each (FASTBP_STEP_THREADS_MIN)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {args.json}")
    measured = any(rec["peers"] or rec.get("bf16", {}).get("peers") for rec in result["configs"].values())
    if not measured:
        log("\nFAILED: no peer was measured (none of those asked for is installed, or has a variant for "
            "the precisions asked for)")
    if failed:
        log("\nFAILED: see the loss mismatches / errors above")
    return 1 if failed or not measured else 0


def _threads_started(info):
    """Whether a worker's ``fastbp.threading_info()`` shows numba's threading layer started."""
    return info.get("numba_layer") not in (None, "not started")
