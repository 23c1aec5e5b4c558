"""The text ``python -m fastbp.bench`` prints: times, sizes, and one configuration's results.

:func:`print_config` prints the float32 table and, where the run had one,
the bf16 section (:func:`print_section`) right below it;
every comparison is a plain ratio with the figures it comes from.
"""
from __future__ import annotations

from . import bf16
from .bf16 import ALL_DISPLAY as DISPLAY

__all__ = ["format_time", "format_bytes", "format_startup", "print_config", "print_section"]


def format_time(s):
    """``1.23 us`` / ``45.6 ms`` / ``1.20 s`` (``-`` for None)."""
    if s is None:
        return "-"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if s >= f or unit == "ns":
            v = s / f
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return str(s)


def format_bytes(n):
    """``12.3 MiB`` / ``512 B`` (``-`` for None)."""
    if n is None:
        return "-"
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= f:
            return f"{n / f:.3g} {unit}"
    return f"{int(n)} B"


def format_startup(what, s):
    """One line of the cold and warm start-up times ``s`` (from :func:`fastbp.bench.runner.measure_startup`)."""
    parts = []
    for k, word in (("cold", "empty cache, everything compiled"), ("warm", "compiled code loaded from the cache")):
        v = s[k]
        parts.append(f"{word}: {v['compile_s'] + v['first_step_s']:.2f} s (fastbp.compile {v['compile_s']:.2f} s "
                     f"+ first step {v['first_step_s']:.3f} s; import fastbp {v['import_s']:.2f} s more)")
    return f"{what}: {'; '.join(parts)}"


def print_config(cfg, rec, peak_gflops, log):
    """Print one configuration's results: the float32 table and ratios, the bf16 section
    (if the record has one), fastbp's fit and start-up lines, memory and errors.

    Parameters
    ----------
    cfg : Config
    rec : dict
        The configuration's record (:func:`fastbp.bench.runner.run_config`).
    peak_gflops : float or None
        The machine's measured float32 peak (None: not measured).
    log : callable
        Called with each line.
    """
    timed = [p for p in rec["peers"] if "median_s" in rec["peers"][p]]
    if not timed:
        return
    rows = [p for p in timed if bf16.precision_of(p) == "fp32"]
    if rows:
        log(f"  {'peer':<22}{'median/step':>12}{'min':>11}{'GFLOP/s':>10}{'vs fastest':>12}  loss check")
    for p in sorted(rows, key=lambda p: rec["peers"][p]["median_s"]):
        r = rec["peers"][p]
        log(f"  {DISPLAY[p]:<22}{format_time(r['median_s']):>12}{format_time(r['min_s']):>11}{r['gflops']:>10.3g}"
            f"{r['vs_fastest']:>11.2f}x  {r['loss_check']}")
    if "fastbp_speedup" in rec:
        s = rec["fastbp_speedup"]
        word = "faster" if s["x"] >= 1 else "slower"
        x = s["x"] if s["x"] >= 1 else 1 / s["x"]
        log(f"  fastbp is {x:.2f}x {word} per step than the fastest other peer ({DISPLAY[s['over']]})")
    if "fastbp" in rows and peak_gflops:
        g = rec["peers"]["fastbp"]["gflops"]
        log(f"  fastbp runs at {100 * g / peak_gflops:.0f}% of this machine's measured float32 peak "
            f"({peak_gflops:.0f} GFLOP/s)")
    print_section(rec, log)
    if "fit_vs_loop" in rec:
        f = rec["fit_vs_loop"]
        from ..config import FIT_NATIVE_MIN_STEPS
        driver = "one native call" if f["steps_per_epoch"] >= FIT_NATIVE_MIN_STEPS else "a Python loop inside fit"
        x = f["x"] if f["x"] >= 1 else 1 / f["x"]
        log(f"  fastbp fit over an epoch ({f['steps_per_epoch']} steps, {driver}): "
            f"{format_time(f['fit_median_s'])} per step; a Python loop of step(x, y): "
            f"{format_time(f['loop_median_s'])} per step; fit is {x:.2f}x {'faster' if f['x'] >= 1 else 'slower'}")
    if "startup" in rec:
        log(format_startup("  fastbp's first step in a new process", rec["startup"]))
    mem = []
    for p in timed:
        m = rec["peers"][p].get("memory")
        if not m:
            continue
        s = f"{DISPLAY[p]} {format_bytes(m['peak_rss_growth'])} / {format_bytes(m['steps_rss_growth'])}"
        if p in ("fastbp", "fastbp_bf16", "numpy", "sklearn"):
            s += f" (traced {format_bytes(m['traced_peak_per_step'])})"
        if "fastbp_arena_bytes" in m:
            s += f" (arena {format_bytes(m['fastbp_arena_bytes'])})"
        mem.append(s)
    fm = rec["peers"].get("fastbp", {}).get("memory")
    if fm:
        log(f"  fastbp allocations per step (tracemalloc over a few steps): peak "
            f"{format_bytes(fm['traced_peak_per_step'])}, retained {format_bytes(fm['traced_growth'])} per step "
            f"(no array is allocated per step: one {cfg.batch}x{max(cfg.widths)} activation would be "
            f"{format_bytes(cfg.batch * max(cfg.widths) * 4)})")
    if mem:
        log(f"  memory, peak RSS growth over build+steps / over timed steps alone: {', '.join(mem)}")
        log(f"    parameters + gradients + activations: {format_bytes(rec['workspace_bytes'])}; traced = peak "
            f"numpy/Python allocations during a few steps (tracemalloc)")
    for p, e in rec["errors"].items():
        log(f"  error, {p}: {e.splitlines()[0]}")


def _ratio_line(what, s, peers):
    x = s["x"]
    word = "faster" if x >= 1 else "slower"
    other = peers[s["over"]]["median_s"]
    return (f"  fastbp bf16 is {x if x >= 1 else 1 / x:.2f}x {word} per step than {what} "
            f"({DISPLAY[s['over']]} {format_time(other)}, fastbp bf16 {format_time(peers['fastbp_bf16']['median_s'])})")


def print_section(rec, log):
    """Print the bf16 section of one configuration's record: its table, the ratios of
    fastbp bf16 against the fastest float32 and bf16 PyTorch peers, and a note where
    PyTorch's float32 products stayed float32.  Nothing when the record has no bf16 row.

    Parameters
    ----------
    rec : dict
        The configuration's record (:func:`fastbp.bench.runner.run_config`).
    log : callable
        Called with each line.
    """
    peers = rec["peers"]
    rows = [p for p in peers if bf16.precision_of(p) == "bf16" and "median_s" in peers[p]]
    if not rows:
        return
    sec = rec.get("bf16", {})
    ref = sec.get("loss_reference")
    log(f"  bf16: the linear layers' products on bfloat16 operands, float32 accumulation; losses checked "
        f"against {DISPLAY.get(ref, ref)}{' float32' if bf16.precision_of(ref or '') == 'fp32' else ''} "
        f"(rtol {sec.get('loss_rtol', 0):g})")
    log(f"  {'peer':<22}{'median/step':>12}{'min':>11}{'GFLOP/s':>10}{'vs fastest':>12}  loss check")
    for p in sorted(rows, key=lambda p: peers[p]["median_s"]):
        r = peers[p]
        diff = r.get("loss_rel_diff")
        check = r["loss_check"] + (f" (max relative difference {diff:.1e})" if diff is not None else "")
        log(f"  {DISPLAY[p]:<22}{format_time(r['median_s']):>12}{format_time(r['min_s']):>11}"
            f"{r['gflops']:>10.3g}{r['vs_fastest']:>11.2f}x  {check}")
    s = sec.get("fastbp_bf16", {})
    if "vs_fp32" in s:
        log(_ratio_line("the fastest float32 peer", s["vs_fp32"], peers))
    if "vs_torch_bf16" in s:
        log(_ratio_line("the fastest bf16 PyTorch peer", s["vs_torch_bf16"], peers))
    info = peers.get("torch_bf16_matmul", {}).get("info", {})
    if info and not info.get("products_in_bf16", True):
        log(f"  {DISPLAY['torch_bf16_matmul']}: with {info['mode']} the first layer's product still matches "
            f"float32 (relative error {info['product_rel_err']:.1e}): oneDNN kept it float32 on this CPU")
