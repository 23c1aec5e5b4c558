"""The BLAS backend (fastbp._blas): choice by FASTBP_BLAS, and correct products
and training steps with every backend this machine can load.

Each backend runs in its own process (the choice is made once, at import);
they share the on-disk numba cache, since compiled code links to the BLAS by
fixed symbol names.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbp import _blas
from fastbp.kernels import gemm as M

HERE = os.path.dirname(os.path.abspath(__file__))

# products of every transpose combination through the backend's gemm, and a
# fused training step's gradients and update against the unfused numpy
# reference, both dtypes; prints the backend's description as JSON
_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import fastbp
from fastbp import _blas
from fastbp.kernels import gemm as M
import reference as R

rng = np.random.default_rng(0)
worst = 0.0
for dt, tol in ((np.float32, 2e-5), (np.float64, 1e-12)):
    # without a BLAS, the public product must still be right (own loops)
    a = rng.standard_normal((70, 90)).astype(dt)
    b = rng.standard_normal((90, 60)).astype(dt)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(fastbp.ops.matmul(a, b) - ref).max() < tol * np.abs(ref).max() * 10
    for m, k, n in (((64, 96, 80), (3, 300, 5), (130, 17, 257)) if _blas.AVAILABLE else ()):
        a = rng.standard_normal((m, k)).astype(dt)
        b = rng.standard_normal((k, n)).astype(dt)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        for ta in (False, True):
            for tb in (False, True):
                aa = np.ascontiguousarray(a.T) if ta else a
                bb = np.ascontiguousarray(b.T) if tb else b
                for acc in (False, True):
                    c0 = rng.standard_normal((m, n)).astype(dt)
                    c = c0.copy()
                    M._blas_mm(aa, bb, c, ta, tb, acc)
                    want = ref + c0 if acc else ref
                    err = np.abs(c - want).max() / (np.abs(want).max() * np.sqrt(k))
                    assert err < tol, (dt, m, k, n, ta, tb, acc, err)
                    worst = max(worst, err)
    model = R.mlp([40, 64, 48, 7])
    opt = fastbp.SGD(lr=0.05, momentum=0.9)
    step = fastbp.compile(model, "softmax_cross_entropy", opt, batch_size=32, dtype=dt, seed=3)
    params = {k: v.astype(np.float64) for k, v in step.params.items()}
    x = rng.standard_normal((32, 40)).astype(dt)
    y = rng.integers(0, 7, 32)
    L, grads = R.forward_backward(model, params, x, y, "softmax_cross_entropy")
    got = step(x, y)
    assert abs(got - L) <= (1e-5 if dt == np.float32 else 1e-12) * max(1.0, abs(L)), (got, L)
    for kname, g in grads.items():
        e = np.abs(step.grads[kname] - g).max() / max(1.0, np.abs(g).max())
        assert e < (1e-4 if dt == np.float32 else 1e-11), (kname, e)
    R.optimizer_update(opt, params, grads, {})
    for kname, p in params.items():
        assert np.allclose(step.params[kname], p, rtol=1e-4 if dt == np.float32 else 1e-11, atol=1e-6), kname
info = _blas.backend_info()
info["worst"] = worst
print(json.dumps(info))
"""


def _run(backend, code=_SCRIPT, **more_env):
    env = dict(os.environ, FASTBP_BLAS=backend, **more_env)
    return subprocess.run([sys.executable, "-c", code, HERE], env=env, capture_output=True,
                          text=True, timeout=600)


def test_default_backend_is_described():
    info = _blas.backend_info()
    assert info["backend"] in ("mkl", "openblas", "scipy")
    assert info["backend"] == _blas.BACKEND and _blas.AVAILABLE
    assert info["version"] and os.path.exists(info["path"])
    assert info["threads"] >= 1
    from fastbp._jit import threading_info
    assert threading_info()["blas_backend"]["backend"] == info["backend"]


def test_thread_setter_round_trips():
    n0 = M.blas_get_threads()
    try:
        M.blas_set_threads(1)
        assert M.blas_get_threads() == 1
    finally:
        M.blas_set_threads(n0)
    assert M.blas_get_threads() == n0


@pytest.mark.parametrize("backend", [pytest.param("mkl", marks=pytest.mark.extras), "openblas", "scipy", "none"])
def test_backend_products_and_step(backend):
    p = _run(backend)
    if p.returncode != 0 and "could not be loaded" in p.stderr:
        # a clear message, not a crash; the backend is just not installed here
        assert f"FASTBP_BLAS={backend}" in p.stderr
        pytest.skip(f"{backend} not loadable here: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    if backend == "none":
        assert info["backend"] is None and info["threads"] == 1
        return
    assert info["backend"] == backend
    assert info["version"]
    # oneMKL's JIT GEMM kernels for small products (the step above used them)
    assert info["gemm_jit"] == (backend == "mkl")


@pytest.mark.extras
def test_mkl_without_jit_gemm_kernels():
    """FASTBP_GEMM_JIT=0 turns oneMKL's JIT kernels off; products and steps stay right."""
    p = _run("mkl", FASTBP_GEMM_JIT="0")
    if p.returncode != 0 and "could not be loaded" in p.stderr:
        pytest.skip("oneMKL not loadable here")
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["backend"] == "mkl" and info["gemm_jit"] is False


@pytest.mark.extras      # also meaningful without MKL (then auto is OpenBLAS): not skipped there
def test_auto_prefers_mkl_when_present():
    p = _run("auto", "from fastbp import _blas; print(_blas.BACKEND)")
    assert p.returncode == 0, p.stderr
    mkl = _run("mkl", "from fastbp import _blas; print(_blas.BACKEND)")
    expect = "mkl" if mkl.returncode == 0 else "openblas"
    assert p.stdout.strip() == expect


@pytest.mark.parametrize("value", ["nonsense", "openblas64"])
def test_unknown_backend_is_a_clear_import_error(value):
    p = _run(value, "import fastbp")
    assert p.returncode != 0
    assert "ImportError" in p.stderr
    assert f"FASTBP_BLAS={value!r}" in p.stderr and "auto, mkl, openblas, scipy, none" in p.stderr


def test_backends_agree_on_a_training_run():
    """Two backends give the same training loss to float32 rounding (not bitwise)."""
    code = ("import numpy as np, fastbp, sys; sys.path.insert(0, sys.argv[1]); import reference as R\n"
            "rng = np.random.default_rng(1)\n"
            "s = fastbp.compile(R.mlp([30, 50, 4]), 'mse', fastbp.SGD(0.01), batch_size=16, seed=0)\n"
            "x = rng.standard_normal((16, 30)).astype(np.float32); y = rng.standard_normal((16, 4))\n"
            "print(repr([float(s(x, y.astype(np.float32))) for _ in range(5)]))")
    a = _run("openblas", code)
    b = _run("scipy", code)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    la, lb = eval(a.stdout.strip()), eval(b.stdout.strip())
    np.testing.assert_allclose(la, lb, rtol=1e-5)



def test_unknown_gemm_jit_setting_is_a_clear_error_with_any_backend():
    # FASTBP_GEMM_JIT only matters with oneMKL, but a typo is refused with every backend
    p = _run("auto", "import fastbp", FASTBP_GEMM_JIT="maybe")
    assert p.returncode != 0
    assert "EnvError" in p.stderr and "FASTBP_GEMM_JIT='maybe'" in p.stderr and "0, false, no, off" in p.stderr
    p = _run("auto", "import fastbp", FASTBP_GEMM_JIT=" Off ")
    assert p.returncode == 0, p.stderr[-2000:]
