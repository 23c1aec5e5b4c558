"""The float32 matrix products of the benchmark configurations, library by library.

``python -m fastbp.bench.blas`` times the products of one training step of
each configuration of :mod:`fastbp.bench.configs` (per linear layer of ``in``
inputs and ``out`` outputs at batch ``b``: the forward ``Z = X W``, ``b x out
x in``; ``dW = X^T dZ``, ``in x out x b``; and, past the first layer, ``dX =
dZ W^T``, ``b x in x out``: the products and transposes fastbp's step runs)
in every library that could serve as fastbp's BLAS, each in a process of its
own, at two thread counts: all usable cores (one call on the library's own
threads: how a small step runs its large products) and one (how a small
step runs its products under 2 M multiply-adds, and how a larger step runs
each block of a product it splits over numba's threads; see "Threading
design" in the README). It prints GFLOP/s per product, the time of each
configuration's products summed (the step's product time), each library's
installed size, and checks each result against a float64 product.

Libraries (those that cannot be loaded are reported and skipped):

``openblas``
    The OpenBLAS bundled with numpy's wheels: the default install's backend.
``scipy``
    The OpenBLAS bundled with scipy's wheels.
``mkl``
    Intel oneMKL (``pip install mkl``).
``onednn``
    oneDNN's float32 ``dnnl_sgemm`` (oneDNN comes with ``pip install -e
    '.[bf16]'``, for the bf16 products; fastbp's float32 steps do not
    use it).

The numbers are what a choice of the default install's BLAS rests on
(issue 18). Each product is one call of the library's gemm from a numba
loop (no Python between calls), timed for ``--seconds`` per round; the
median of the rounds' medians is reported, the libraries interleaved round
by round.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np

from .._cli_base import CliError, check_output_path
from .configs import CONFIGS, get_configs
from .machine import usable_cores

__all__ = ["LIBRARIES", "products", "main"]

#: the libraries compared, in the order of the table
LIBRARIES = ("openblas", "scipy", "mkl", "onednn")

#: the Python distributions that install each library (for its installed size)
_DISTS = {"openblas": ("numpy",), "scipy": ("scipy",), "mkl": ("mkl", "intel-openmp", "tbb", "onemkl-license"),
          "onednn": ("onednn-cpu-gomp",)}

#: a product whose largest error exceeds this share of its largest value is reported as wrong
_RTOL = 1e-4


def products(config):
    """The matrix products of one training step of ``config``.

    Parameters
    ----------
    config : fastbp.bench.configs.Config
        The configuration: its layer widths and minibatch size.

    Returns
    -------
    list of dict
        One per product: ``name`` (``"fwd1"``, ``"dW1"``, ``"dX2"``, ...: the
        layer's number, from 1), ``m``, ``n``, ``k`` (``C`` is ``m x n``, the
        sum over ``k``), ``ta``, ``tb`` (whether ``A`` and ``B`` are read
        transposed), all in row-major terms.
    """
    out = []
    b = config.batch
    for i, (fan_in, fan_out) in enumerate(zip(config.widths[:-1], config.widths[1:]), start=1):
        out.append({"name": f"fwd{i}", "m": b, "n": fan_out, "k": fan_in, "ta": False, "tb": False})
        out.append({"name": f"dW{i}", "m": fan_in, "n": fan_out, "k": b, "ta": True, "tb": False})
        if i > 1:
            out.append({"name": f"dX{i}", "m": b, "n": fan_in, "k": fan_out, "ta": False, "tb": True})
    return out


def _dist_size(names):
    """Bytes installed by the first of the distributions ``names`` that is installed, and its name."""
    from importlib import metadata
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        total = 0
        for f in dist.files or ():
            try:
                total += os.path.getsize(dist.locate_file(f))
            except OSError:
                pass
        return name, total
    return None, 0


# ------------------------------------------------------------------ worker (one library, one process)
#: the symbol the worker's timing loop calls, bound to the library's gemm
_SYM = "fastbp_bench_sgemm"


def _load(name, threads):
    """``(kind, address, info)`` of library ``name``'s float32 gemm on ``threads`` threads:
    ``kind`` "cblas" (``cblas_sgemm``'s arguments, 64-bit integers) or "dnnl"
    (``dnnl_sgemm``'s), ``info`` the library's path and version.  Raises OSError where the
    library cannot be loaded."""
    if name == "onednn":
        os.environ["OMP_NUM_THREADS"] = str(threads)   # read when oneDNN's OpenMP starts
        from .. import _bf16
        lib, error = _bf16._library()
        if lib is None:
            raise OSError(error)
        return ("dnnl", ctypes.cast(lib.dnnl_sgemm, ctypes.c_void_p).value,
                {"path": _bf16._state["path"], "version": _dist_version("onednn-cpu-gomp")})
    from .. import _blas
    backend = _blas._FINDERS[name]()
    if backend is None:
        raise OSError(f"{name} could not be loaded" + (" (pip install mkl)" if name == "mkl" else ""))
    backend.set_threads(threads)
    return "cblas", backend.sgemm, {"path": backend.path, "version": backend.version}


def _timing_loop(kind, address):
    """A numba function ``loop(reps, p, A, B, C)`` (``p``: ta, tb, m, n, k) that calls the
    gemm at ``address`` ``reps`` times: native calls, so that small products are timed
    without Python's call overhead."""
    import llvmlite.binding as llvm
    from numba import njit, types
    llvm.add_symbol(_SYM, address)
    i, f32, ptr = types.int64, types.float32, types.uintp
    if kind == "dnnl":
        gemm = types.ExternalFunction(_SYM, types.intc(types.char, types.char, i, i, i, f32, ptr, i, ptr, i, f32,
                                                       ptr, i))

        @njit(cache=False)
        def loop(reps, p, A, B, C):
            status = 0
            for _ in range(reps):
                status |= gemm(np.int8(84 if p[0] else 78), np.int8(84 if p[1] else 78), p[2], p[3], p[4],
                               np.float32(1.0), A.ctypes.data, A.shape[1], B.ctypes.data, B.shape[1],
                               np.float32(0.0), C.ctypes.data, C.shape[1])
            return status
        return loop
    gemm = types.ExternalFunction(_SYM, types.void(i, i, i, i, i, i, f32, ptr, i, ptr, i, f32, ptr, i))

    @njit(cache=False)
    def loop(reps, p, A, B, C):
        for _ in range(reps):
            gemm(101, 112 if p[0] else 111, 112 if p[1] else 111, p[2], p[3], p[4], np.float32(1.0),
                 A.ctypes.data, A.shape[1], B.ctypes.data, B.shape[1], np.float32(0.0), C.ctypes.data, C.shape[1])
        return 0
    return loop


def _dist_version(name):
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _operands(p, rng):
    A = rng.standard_normal((p["k"], p["m"]) if p["ta"] else (p["m"], p["k"]), dtype=np.float32)
    B = rng.standard_normal((p["n"], p["k"]) if p["tb"] else (p["k"], p["n"]), dtype=np.float32)
    return A, B, np.empty((p["m"], p["n"]), np.float32)


def _time(loop, q, A, B, C, seconds):
    """Median seconds per call over about ``seconds`` (at least 3 timings of at least 1 call)."""
    if loop(1, q, A, B, C):
        raise RuntimeError("dnnl_sgemm returned an error status")
    t0 = time.perf_counter()
    loop(1, q, A, B, C)
    once = max(time.perf_counter() - t0, 1e-7)
    per = max(1, int(seconds / 5 / once))
    ts = []
    for _ in range(max(3, min(25, int(seconds / (per * once))))):
        t0 = time.perf_counter()
        loop(per, q, A, B, C)
        ts.append((time.perf_counter() - t0) / per)
    return float(np.median(ts))


def _worker(name, threads, prods, seconds, check):
    try:
        kind, address, info = _load(name, threads)
    except (OSError, ImportError) as e:
        return {"library": name, "error": str(e)}
    loop = _timing_loop(kind, address)
    rng = np.random.default_rng(0)
    res = []
    for p in prods:
        A, B, C = _operands(p, rng)
        q = np.array([p["ta"], p["tb"], p["m"], p["n"], p["k"]], np.int64)
        err = None
        if check:
            loop(1, q, A, B, C)
            ref = (A.T if p["ta"] else A).astype(np.float64) @ (B.T if p["tb"] else B).astype(np.float64)
            err = float(np.abs(C - ref).max() / max(np.abs(ref).max(), 1e-300))
        res.append({"seconds": _time(loop, q, A, B, C, seconds), "rel_error": err})
    return {"library": name, "threads": threads, "info": info, "results": res}


# ------------------------------------------------------------------ the command
def _run_worker(name, threads, prods, seconds, check, timeout):
    cmd = [sys.executable, "-m", "fastbp.bench.blas", "--worker", name, "--threads", str(threads),
           "--seconds", str(seconds), "--products", json.dumps(prods)] + (["--check"] if check else [])
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        return {"library": name, "error": f"worker failed (exit {r.returncode}): {r.stderr.strip()[-500:]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _parse_list(text, known, what):
    """The names in the comma-separated ``text``; ValueError naming ``--what`` for an unknown one."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in known]
    if bad or not names:
        raise ValueError(f"--{what}: unknown {bad or 'empty list'}; expected some of {', '.join(known)}")
    return names


def _parse_threads(text):
    """The thread counts in ``text`` ("all" or positive integers); ValueError naming --threads."""
    out = []
    for s in text.split(","):
        s = s.strip()
        if s == "all":
            out.append(usable_cores())
        elif s.isdigit() and int(s) > 0:
            out.append(int(s))
        else:
            raise ValueError(f"--threads: {s!r} is not 'all' or a positive integer")
    return list(dict.fromkeys(out))


def _report(configs, prods, table, libs, threads, failed, out):
    """Print the per-product GFLOP/s table and each configuration's summed product time."""
    cols = [(lib, t) for lib in libs for t in threads if (lib, t) in table]
    w = out.write
    for lib in libs:
        if lib in failed:
            w(f"{lib}: not measured: {failed[lib]}\n")
    for lib in libs:
        info = next((table[c]["info"] for c in cols if c[0] == lib), None)
        if info:
            dist, size = _dist_size(_DISTS[lib])
            w(f"{lib}: {info['path']} (version {info['version']}; library file {_mib(info['path'])} MiB; "
              f"installed with {dist}: {size / 2 ** 20:.0f} MiB)\n")
    head = "| product | m x n x k |" + "".join(f" {lib}, {t} thr |" for lib, t in cols)
    w("\nGFLOP/s per product (median)\n\n" + head + "\n|" + "---|" * (2 + len(cols)) + "\n")
    for ci, cfg in enumerate(configs):
        for pi, p in enumerate(prods[ci]):
            flops = 2.0 * p["m"] * p["n"] * p["k"]
            row = f"| {cfg.name} {p['name']} | {p['m']}x{p['n']}x{p['k']}{' ' + _tr(p) if _tr(p) else ''} |"
            for c in cols:
                r = table[c]["results"][ci][pi]
                bad = r["rel_error"] is not None and not r["rel_error"] <= _RTOL
                row += f" {flops / r['seconds'] / 1e9:.1f}{' WRONG' if bad else ''} |"
            w(row + "\n")
    w("\nOne step's products, summed (in brackets: time relative to the first column's)\n\n"
      + head.replace("| product | m x n x k |", "| configuration | products |")
      + "\n|" + "---|" * (2 + len(cols)) + "\n")
    for ci, cfg in enumerate(configs):
        sums = [sum(r["seconds"] for r in table[c]["results"][ci]) for c in cols]
        row = f"| {cfg.name} | {len(prods[ci])} |"
        for s in sums:
            row += f" {_fmt(s)} ({s / sums[0]:.2f}) |"
        w(row + "\n")


def _tr(p):
    return " ".join(t for t, on in (("A^T", p["ta"]), ("B^T", p["tb"])) if on)


def _mib(path):
    try:
        return f"{os.path.getsize(path) / 2 ** 20:.0f}"
    except OSError:
        return "?"


def _fmt(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def main(argv=None):
    """Run the command (``python -m fastbp.bench.blas --help``).

    Parameters
    ----------
    argv : list of str, optional
        The command's arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0, or 1 where a product's result was wrong (its largest error above
        1e-4 of its largest value) or no library could be measured.
    """
    p = argparse.ArgumentParser(prog="python -m fastbp.bench.blas", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help="configurations (default: all)")
    p.add_argument("--libraries", default=",".join(LIBRARIES), help=f"default: {','.join(LIBRARIES)}")
    p.add_argument("--threads", default="all,1", help="thread counts, 'all' = the usable cores (default: all,1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--seconds", type=float, default=0.1, help="timing per product and round (default 0.1)")
    p.add_argument("--json", metavar="PATH", help="write all numbers to PATH as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--products", help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or not 0 < args.seconds < float("inf"):
        p.error("--rounds must be at least 1 and --seconds a positive finite number")
    if args.worker:
        prods = json.loads(args.products)
        print(json.dumps(_worker(args.worker, int(args.threads), prods, args.seconds, args.check)))
        return 0
    try:        # every option checked before the run (exit 2 with the usage line, as argparse's own)
        configs = get_configs(args.configs)
        libs = _parse_list(args.libraries, LIBRARIES, "libraries")
        threads = _parse_threads(args.threads)
        if args.json is not None:
            check_output_path(args.json, "--json")
    except (ValueError, CliError) as e:
        p.error(str(e))
    prods = [products(c) for c in configs]
    flat = [q for ps in prods for q in ps]
    runs, failed = {}, {}
    timeout = 120 + 400 * args.seconds * len(flat)
    for rnd in range(args.rounds):
        for lib in libs:
            for t in threads:
                if lib in failed:
                    continue
                r = _run_worker(lib, t, flat, args.seconds, rnd == 0, timeout)
                if "error" in r:
                    failed[lib] = r["error"]
                    continue
                runs.setdefault((lib, t), []).append(r)
    table = {}
    for key, rs in runs.items():
        merged = []
        for i in range(len(flat)):
            merged.append({"seconds": float(np.median([r["results"][i]["seconds"] for r in rs])),
                           "rel_error": rs[0]["results"][i]["rel_error"]})
        it = iter(merged)
        table[key] = {"info": rs[0]["info"], "results": [[next(it) for _ in ps] for ps in prods]}
    print(f"python -m fastbp.bench.blas: {len(flat)} float32 products of {len(configs)} configurations, "
          f"{args.rounds} rounds, {usable_cores()} usable cores")
    _report(configs, prods, table, libs, threads, failed, sys.stdout)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"products": prods, "failed": failed,
                       "results": [{"library": k[0], "threads": k[1], **v} for k, v in table.items()]}, f, indent=1)
    wrong = [k for k, v in table.items() for ps in v["results"] for r in ps
             if r["rel_error"] is not None and not r["rel_error"] <= _RTOL]
    return 1 if wrong or not table else 0


if __name__ == "__main__":
    sys.exit(main())
