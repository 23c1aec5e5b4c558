"""``python -m fastbp.bench`` prints ratios and figures a user can read, no
project-internal targets; and the cold/warm start-up lines."""
from fastbp.bench.configs import CONFIGS
from fastbp.bench.runner import format_startup, print_config


def _rec(fit_x):
    peer = {"median_s": 5e-6, "min_s": 4e-6, "gflops": 1.0, "vs_fastest": 1.0, "loss_check": "ok"}
    slow = dict(peer, median_s=2e-5, vs_fastest=4.0)
    st = {"import_s": 0.5, "compile_s": 0.01, "first_step_s": 0.02, "total_s": 0.53, "process_wall_s": 1.0}
    return {"peers": {"fastbp": peer, "numpy": slow}, "fastbp_speedup": {"over": "numpy", "x": 4.0},
            "fit_vs_loop": {"steps_per_epoch": 100, "fit_median_s": 2e-6 * fit_x, "loop_median_s": 2e-6,
                            "x": 1 / fit_x},
            "startup": {"cold": dict(st, compile_s=3.0, first_step_s=1.5), "warm": st},
            "workspace_bytes": 1000, "errors": {}}


def test_bench_lines_are_ratios_and_figures_without_targets():
    for fit_x in (0.5, 2.0):
        lines = []
        print_config(CONFIGS["tiny"], _rec(fit_x), 100.0, lines.append)
        text = "\n".join(lines)
        assert "target" not in text.lower() and "met" not in text.split() and "SLOWER" not in text
        assert "fastbp is 4.00x faster per step than the fastest other peer (numpy)" in text
        assert f"fit is 2.00x {'faster' if fit_x < 1 else 'slower'}" in text
        assert "empty cache, everything compiled: 4.50 s" in text
        assert "compiled code loaded from the cache: 0.03 s" in text


def test_format_startup_names_both_cases():
    line = format_startup("first", _rec(1.0)["startup"])
    assert line.startswith("first: empty cache") and "import fastbp 0.50 s more" in line
