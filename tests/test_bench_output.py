"""``python -m fastbp.bench`` prints ratios and figures a user can read, no
project-internal targets; the cold/warm start-up lines; and the bf16 section
(``--precision fp32,bf16``) below the float32 table, from fabricated records."""
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


def _bf16_rec(bf16_ms=2.0, fp32=True):
    def row(ms, vs, precision, check="ok", **kw):
        return dict(precision=precision, median_s=ms * 1e-3, min_s=ms * 0.9e-3, gflops=10.0 / ms, vs_fastest=vs,
                    loss_check=check, **kw)
    peers = {"fastbp_bf16": row(bf16_ms, 1.0, "bf16", loss_rel_diff=1.2e-3),
             "torch_autocast": row(3.0, 3.0 / bf16_ms, "bf16", loss_rel_diff=9.8e-4),
             "torch_bf16_matmul": row(5.0, 5.0 / bf16_ms, "bf16", loss_rel_diff=1e-7,
                                      info={"mode": 'torch.backends.mkldnn.matmul.fp32_precision = "bf16"',
                                            "product_rel_err": 1.5e-7, "products_in_bf16": False})}
    sec = {"loss_reference": "fastbp", "loss_rtol": 0.03, "loss_mismatches": {}, "fastest": "fastbp_bf16",
           "fastbp_bf16": {"vs_torch_bf16": {"over": "torch_autocast", "x": 3.0 / bf16_ms}}}
    rec = {"peers": peers, "bf16": sec, "workspace_bytes": 1000, "errors": {}}
    if fp32:
        rec["peers"] = {"fastbp": row(4.0, 1.0, "fp32", "reference"), "numpy": row(8.0, 2.0, "fp32"), **peers}
        rec["fastbp_speedup"] = {"over": "numpy", "x": 2.0}
        sec["fastbp_bf16"]["vs_fp32"] = {"over": "fastbp", "x": 4.0 / bf16_ms}
    return rec


def test_bf16_section_next_to_the_float32_table():
    lines = []
    print_config(CONFIGS["tiny"], _bf16_rec(), None, lines.append)
    text = "\n".join(lines)
    assert "target" not in text.lower() and "met" not in text.split()
    head = [k for k, ln in enumerate(lines) if ln.lstrip().startswith("peer ")]
    assert len(head) == 2                                           # two tables: float32, then bf16
    fp32_table, bf16_table = lines[head[0]:head[1]], lines[head[1]:]
    assert not any("bf16" in ln for ln in fp32_table[:3])           # the float32 rows only
    assert "fastbp is 2.00x faster per step than the fastest other peer (numpy)" in text
    assert lines[head[1] - 1].startswith("  bf16: the linear layers' products on bfloat16 operands")
    assert "losses checked against fastbp float32 (rtol 0.03)" in lines[head[1] - 1]
    rows = [ln.split()[:2] for ln in bf16_table[1:4]]
    assert rows == [["fastbp", "bf16"], ["PyTorch", "autocast"], ["PyTorch", "bf16"]]    # fastest first
    assert "ok (max relative difference 1.2e-03)" in bf16_table[1] and "1.00x" in bf16_table[1]
    assert ("fastbp bf16 is 2.00x faster per step than the fastest float32 peer (fastbp 4 ms, fastbp bf16 2 ms)"
            in text)
    assert ("fastbp bf16 is 1.50x faster per step than the fastest bf16 PyTorch peer "
            "(PyTorch autocast bf16 3 ms, fastbp bf16 2 ms)") in text
    assert "PyTorch bf16 matmuls: with torch.backends.mkldnn.matmul.fp32_precision = \"bf16\" the first layer's " \
           "product still matches float32 (relative error 1.5e-07)" in text


def test_bf16_section_slower_and_alone():
    lines = []
    print_config(CONFIGS["tiny"], _bf16_rec(bf16_ms=6.0), None, lines.append)
    text = "\n".join(lines)
    assert "fastbp bf16 is 1.50x slower per step than the fastest float32 peer (fastbp 4 ms, fastbp bf16 6 ms)" in text
    assert "fastbp bf16 is 2.00x slower per step than the fastest bf16 PyTorch peer" in text
    # --precision bf16: no float32 table, no ratio against it
    lines = []
    print_config(CONFIGS["tiny"], _bf16_rec(fp32=False), None, lines.append)
    text = "\n".join(lines)
    assert sum(ln.lstrip().startswith("peer ") for ln in lines) == 1
    assert "float32 peer" not in text and "fastest bf16 PyTorch peer" in text
    # a float32-only record prints no bf16 line
    lines = []
    print_config(CONFIGS["tiny"], _rec(1.0), 100.0, lines.append)
    assert not any("bf16" in ln for ln in lines)


def test_the_gemm_jit_line_says_why_not_without_blaming_an_unset_variable():
    from fastbp.bench.runner import _gemm_jit
    assert _gemm_jit({"backend": "openblas", "gemm_jit": False}) == "no (they need the mkl backend)"
    assert _gemm_jit({"backend": "mkl", "gemm_jit": True}).startswith("yes")
    assert "FASTBP_GEMM_JIT=0" in _gemm_jit({"backend": "mkl", "gemm_jit": False})
