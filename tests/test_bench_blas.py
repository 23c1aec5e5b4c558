"""Tests of ``python -m fastbp.bench.blas``: the products of one training step per
configuration, timed library by library (the numbers behind the choice of the default
install's BLAS, issue 18)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fastbp.bench import blas
from fastbp.bench.configs import CONFIGS


def test_products_are_the_steps_forward_dw_and_dx_products():
    got = [(p["name"], p["m"], p["n"], p["k"], p["ta"], p["tb"]) for p in blas.products(CONFIGS["tiny"])]
    # 64-32-10 at batch 32: Z1 = X W1, dW1 = X^T dZ1, Z2 = H W2, dW2 = H^T dZ2, dH = dZ2 W2^T
    assert got == [("fwd1", 32, 32, 64, False, False), ("dW1", 64, 32, 32, True, False),
                   ("fwd2", 32, 10, 32, False, False), ("dW2", 32, 10, 32, True, False),
                   ("dX2", 32, 32, 10, False, True)]
    large = blas.products(CONFIGS["large"])
    assert len(large) == 3 * 3 - 1      # no dX for the first layer
    macs = sum(p["m"] * p["n"] * p["k"] for p in large)
    assert macs == 1024 * (2 * (1024 * 2048 + 2048 * 2048 + 2048 * 1024) + 2048 * 2048 + 2048 * 1024)


def test_timing_loop_computes_each_transposed_product():
    kind, address, info = blas._load("openblas", 1)
    assert kind == "cblas" and info["path"]
    loop = blas._timing_loop(kind, address)
    rng = np.random.default_rng(3)
    for ta in (False, True):
        for tb in (False, True):
            p = {"m": 7, "n": 5, "k": 11, "ta": ta, "tb": tb}
            A, B, C = blas._operands(p, rng)
            q = np.array([ta, tb, 7, 5, 11], np.int64)
            assert loop(3, q, A, B, C) == 0
            ref = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
            np.testing.assert_allclose(C, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.thorough       # ~5 s: the command in a subprocess (its pieces are tested above, here)
def test_command_prints_tables_and_json(tmp_path):
    out = tmp_path / "blas.json"
    r = subprocess.run([sys.executable, "-m", "fastbp.bench.blas", "--configs", "tiny", "--libraries",
                        "openblas,onednn,mkl", "--threads", "1", "--rounds", "1", "--seconds", "0.01",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "| tiny fwd1 | 32x32x64 |" in text and "| tiny dX2 | 32x32x10 B^T |" in text
    assert "| configuration | products | openblas, 1 thr |" in text
    assert "| tiny | 5 | " in text and "(1.00)" in text
    data = json.loads(out.read_text())
    measured = {(r["library"], r["threads"]) for r in data["results"]}
    assert ("openblas", 1) in measured
    for lib in ("onednn", "mkl"):   # either measured or reported as missing, with its reason
        assert (lib, 1) in measured or (lib in data["failed"] and f"{lib}: not measured" in text)
    for res in data["results"]:
        rows = res["results"][0]
        assert len(rows) == 5
        assert all(row["seconds"] > 0 and row["rel_error"] < 1e-4 for row in rows)


@pytest.mark.parametrize("argv, words", [
    (["--libraries", "openblas,atlas"], "--libraries: unknown ['atlas']"),
    (["--threads", "0"], "--threads: '0'"),
    (["--threads", "two"], "--threads: 'two'"),
    (["--configs", "huge"], "unknown configuration 'huge'"),
    (["--configs", ","], "names no configuration"),
    (["--libraries", ","], "--libraries: unknown empty list"),
    (["--threads", ","], "--threads: ''"),
    (["--configs", "huge"], "error: --configs: unknown configuration 'huge'"),
    (["--json", "/nonexistent-dir/x.json"], "error: --json /nonexistent-dir/x.json: directory /nonexistent-dir does not exist"),
    (["--seconds", "inf"], "--seconds a positive finite number"),      # was an OverflowError in subprocess
])
def test_bad_options_are_refused_before_any_work(argv, words, capsys):
    """Each with argparse's usage line and exit status 2 (--threads and --libraries exited 1;
    a --json path in a missing directory failed after the whole timing run)."""
    with pytest.raises(SystemExit) as e:
        blas.main(argv + ["--rounds", "1"])
    assert e.value.code == 2
    assert words in capsys.readouterr().err
