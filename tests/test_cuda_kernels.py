"""CUDA kernels (``fastbp.kernels.cuda``) against the CPU kernels and numpy.

How these tests run (one file, three situations)
------------------------------------------------
numba decides *when ``numba.cuda`` is first imported* whether it is the real
CUDA target or the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``); a running
pytest process cannot switch, and setting the variable from inside a test
module would be too late whenever anything imported numba.cuda before
(another test module, a plugin).  So:

* ``test_cuda_*`` are the kernel tests.  They run in-process whenever
  kernels can be launched here: on a real GPU (no environment variable,
  ``cuda.is_available()`` true) or inside a simulator process.  Otherwise
  they are skipped, with the reason, and...
* ``test_simulator_subprocess`` checks them: ``python -m pytest <the selected
  test_cuda_* node ids>`` runs in a child process with ``NUMBA_ENABLE_CUDASIM=1``,
  started right after collection so that it uses the second core while the rest
  of the suite runs (``conftest.py``, ``_simulator.py``), and the test fails unless the child's JUnit report
  shows every one of them passed (none failed, errored or skipped).  It is
  itself skipped where the kernel tests already ran in-process.  This is the
  path CI and developer machines take: a plain ``pytest`` checks the kernels
  without a GPU, with no special invocation.  (To run a subset, e.g. while
  debugging, set the variable yourself:
  ``NUMBA_ENABLE_CUDASIM=1 pytest tests/test_cuda_kernels.py -k gemm``.)
* ``test_ptx_compiles`` compiles every kernel for a real GPU
  (``cuda.compile_ptx``, needs libNVVM/NVRTC but no GPU) for float32 and
  float64: the simulator executes plain Python and cannot catch a kernel
  that does not type-check for the CUDA target.  It also checks that float32
  kernels do no float64 arithmetic and that the matrix-product register
  tile never spills to local memory.  Skipped, with the reason, when the
  compiler libraries are missing.

The simulator executes every CUDA thread as a Python thread, so the shapes
are small and odd (1, 7, 33) plus one shape bigger than a 64 x 64 product
tile (70 x 65) per product kernel and dtype; the child run takes about two
minutes on two cores.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import _simulator

from fastbp.kernels import activations as cpu_act
from fastbp.kernels import gates as cpu_gates
from fastbp.kernels import gemm as cpu_gemm
from fastbp.kernels import linear as cpu_linear
from fastbp.kernels import losses as cpu_losses
from fastbp.kernels import optim as cpu_optim
from fastbp.kernels.codes import (ACT_NONE, ACT_RELU, ACT_SIGMOID, ACT_TANH, GATE_ADD,
                                  GATE_DIV, GATE_MAX, GATE_MUL, GATE_POW)
from fastbp.kernels.cuda import cuda_available
from cuda_ptx import PTX_TARGETS, assemble, find_ptxas, ptx_target

AVAIL = cuda_available()
SIM_ENV = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")

if AVAIL:
    from numba import cuda

    from fastbp.kernels.cuda import activations as g_act
    from fastbp.kernels.cuda import gates as g_gates
    from fastbp.kernels.cuda import gemm as g_gemm
    from fastbp.kernels.cuda import launch as g_launch
    from fastbp.kernels.cuda import linear as g_linear
    from fastbp.kernels.cuda import losses as g_losses
    from fastbp.kernels.cuda import optim as g_optim

requires_cuda = pytest.mark.skipif(
    not AVAIL, reason=f"CUDA kernels cannot run in this process ({AVAIL.reason}); "
                      "test_simulator_subprocess runs them under the CUDA simulator")

DTYPES = [np.float32, np.float64]
#: the dtypes of the kernel tests: float64 is marked ``thorough`` (excluded from the README's
#: test command, run by CI's last stage): under the simulator each test costs seconds of
#: Python threads, and float32 already runs every kernel's code path
PARAM_DTYPES = [np.float32, pytest.param(np.float64, marks=pytest.mark.thorough)]
ACTS = [ACT_NONE, ACT_RELU, ACT_SIGMOID, ACT_TANH]
GATES = [GATE_ADD, GATE_MUL, GATE_MAX, GATE_DIV, GATE_POW]


# ----------------------------------------------------------------- helpers
def tol(dtype):
    """assert_allclose tolerances: FMA contraction and the tiled summation order
    differ from the CPU kernels by rounding only."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-5, atol=2e-5)
    return dict(rtol=1e-12, atol=1e-12)


def rnd(rng, shape, dtype, scale=1.0):
    return np.ascontiguousarray((scale * rng.standard_normal(shape)).astype(dtype))


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def empty_dev(shape, dtype):
    return cuda.device_array(shape, dtype=dtype)


# ============================================================ launch shapes
@requires_cuda
@pytest.mark.skipif(not SIM_ENV, reason="a defect of the CUDA simulator's Python threads")
def test_cuda_simulator_gives_a_block_one_shared_array(monkeypatch):
    """Every thread of a block sees the one array of a ``cuda.shared.array`` line, even when
    the threads switch while it is created.  numba-cuda's simulator created it with an
    unlocked look-up-then-store: threads switched in between got arrays of their own and read
    uninitialised memory after ``syncthreads`` (a GPU-step test failed so once in CI, under
    load); conftest.py installs the fix (``_simulator.thread_safe_shared_arrays``).  Here
    every creation yields to the other threads, which makes the race likely: unfixed, 7 of 10
    such launches read garbage."""
    from numba.cuda.simulator import kernelapi

    class YieldingNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def empty(*args, **kwargs):
            time.sleep(0)             # a thread switch, as the interpreter may make anywhere
            return np.empty(*args, **kwargs)

    monkeypatch.setattr(kernelapi, "np", YieldingNumpy())

    @cuda.jit
    def reverse(out):
        s = cuda.shared.array(64, dtype=np.float64)
        t = cuda.threadIdx.x
        s[t] = t
        cuda.syncthreads()
        out[cuda.blockIdx.x, t] = s[63 - t]

    want = np.arange(63.0, -1.0, -1.0)[None]
    for _ in range(16):
        out = np.zeros((1, 64))
        reverse[1, 64](out)
        np.testing.assert_array_equal(out, want)


@requires_cuda
def test_cuda_launch_shapes_follow_the_target():
    """The simulator runs the kernels with scaled-down blocks unless FASTBP_SIM_FULL_BLOCKS
    is set (CI's last stage sets it); a real GPU always gets its own shapes.  Either way the
    tile loaders' invariants hold and the grids cover any array."""
    from fastbp.kernels.cuda import launch as L
    small = L.SIMULATOR and os.environ.get("FASTBP_SIM_FULL_BLOCKS", "") in ("", "0")
    assert L.SIM_SMALL_BLOCKS == small
    assert (L.BM, L.THREADS_1D, L.REDUCE_THREADS) == ((16, 32, 32) if small else (64, 128, 256))
    assert L.GEMM_THREADS == (L.BM // L.TM) * (L.BN // L.TN)
    assert (L.BK * L.BM) % L.GEMM_THREADS == 0 and L.GEMM_THREADS % L.BM == 0
    (gx, gy), (bx, by) = L.grid_ew(100, 37)
    assert gx * bx >= 37 and gy * by >= 100


# ================================================================ products
GEMM_SHAPES = [(1, 1, 1), (7, 33, 1), (33, 7, 33), (70, 9, 65)]


def _operands(kind, m, k, n, rng, dtype):
    """Operands of ``kind`` for an (m, n) result with reduction length k, and numpy's result."""
    if kind == "nn":
        A, B = rnd(rng, (m, k), dtype), rnd(rng, (k, n), dtype)
        ref = A.astype(np.float64) @ B.astype(np.float64)
    elif kind == "nt":
        A, B = rnd(rng, (m, k), dtype), rnd(rng, (n, k), dtype)
        ref = A.astype(np.float64) @ B.astype(np.float64).T
    else:
        A, B = rnd(rng, (k, m), dtype), rnd(rng, (k, n), dtype)
        ref = A.astype(np.float64).T @ B.astype(np.float64)
    return A, B, ref


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("kind", ["nn", "nt", "tn"])
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_cuda_gemm(kind, m, k, n, dtype):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    A, B, ref = _operands(kind, m, k, n, rng, dtype)
    gpu = getattr(g_gemm, f"_mm_{kind}")
    cpu = getattr(cpu_gemm, f"_mm_{kind}")
    dA, dB = dev(A), dev(B)
    multi_tile = m > g_launch.BM or n > g_launch.BN

    if not (multi_tile and AVAIL.simulator):   # (the simulator is slow: one launch there)
        # overwrite: whatever C held is replaced
        dC = dev(np.full((m, n), np.nan, dtype=dtype))
        gpu(dA, dB, dC, False)
        C = dC.copy_to_host()
        expect = np.empty((m, n), dtype)
        cpu(A, B, expect, False)
        np.testing.assert_allclose(C, expect, **tol(dtype))
        np.testing.assert_allclose(C, ref, **tol(dtype))

    # accumulate into an existing C
    C0 = rnd(rng, (m, n), dtype)
    dC = dev(C0)
    gpu(dA, dB, dC, True)
    expect = C0.copy()
    cpu(A, B, expect, True)
    np.testing.assert_allclose(dC.copy_to_host(), expect, **tol(dtype))
    np.testing.assert_allclose(dC.copy_to_host(), C0 + ref, **tol(dtype))

    if multi_tile and not AVAIL.simulator:
        # several blocks, several panels, real concurrency: still one fixed
        # summation order, so a second run is bitwise identical
        dC2 = empty_dev((m, n), dtype)
        gpu(dA, dB, dC2, False)
        np.testing.assert_array_equal(dC2.copy_to_host(), C)


@requires_cuda
@pytest.mark.parametrize("kind", ["nn", "nt", "tn"])
def test_cuda_gemm_empty_reduction_zeroes(kind):
    # k = 0: the product is the zero matrix (and C += 0 leaves C alone)
    dtype = np.float64
    rng = np.random.default_rng(5)
    A, B, _ = _operands(kind, 3, 0, 4, rng, dtype)
    gpu = getattr(g_gemm, f"_mm_{kind}")
    dC = dev(np.full((3, 4), 7.0))
    gpu(dev(A), dev(B), dC, False)
    np.testing.assert_array_equal(dC.copy_to_host(), np.zeros((3, 4)))
    C0 = rnd(rng, (3, 4), dtype)
    dC = dev(C0)
    gpu(dev(A), dev(B), dC, True)
    np.testing.assert_array_equal(dC.copy_to_host(), C0)


# ================================================================== linear
@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 5)])
def test_cuda_linear_fwd_all_activations(m, k, n, transposed, dtype):
    rng = np.random.default_rng(11 + m + k + n)
    X = rnd(rng, (m, k), dtype)
    W = rnd(rng, (n, k) if transposed else (k, n), dtype, 0.5)
    b = rnd(rng, (n,), dtype)
    gpu = g_linear._linear_fwd_t if transposed else g_linear._linear_fwd
    cpu = cpu_linear._linear_fwd_t if transposed else cpu_linear._linear_fwd
    dX, dW = dev(X), dev(W)
    # every activation with a bias, and no bias once
    cases = [(act, b) for act in ACTS] + [(ACT_RELU, np.empty(0, dtype))]
    if m == 1:
        cases = cases[-2:]
    for act, bias in cases:
        dY = empty_dev((m, n), dtype)
        gpu(dX, dW, dev(bias), act, dY)
        expect = np.empty((m, n), dtype)
        cpu(X, W, bias, act, expect)
        np.testing.assert_allclose(dY.copy_to_host(), expect, **tol(dtype),
                                   err_msg=f"act={act} bias={bias.size}")


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("transposed", [False, True])
def test_cuda_linear_fwd_multi_tile(transposed, dtype):
    m, k, n = 70, 9, 65
    rng = np.random.default_rng(3)
    X = rnd(rng, (m, k), dtype)
    W = rnd(rng, (n, k) if transposed else (k, n), dtype)
    b = rnd(rng, (n,), dtype)
    Wm = W.T if transposed else W
    ref = 1.0 / (1.0 + np.exp(-(X.astype(np.float64) @ Wm.astype(np.float64) + b)))
    gpu = g_linear._linear_fwd_t if transposed else g_linear._linear_fwd
    dY = empty_dev((m, n), dtype)
    gpu(dev(X), dev(W), dev(b), ACT_SIGMOID, dY)
    np.testing.assert_allclose(dY.copy_to_host(), ref, **tol(dtype))


@requires_cuda
@pytest.mark.parametrize("act,dtype", [(ACT_RELU, np.float32), (ACT_SIGMOID, np.float64),
                                       (ACT_TANH, np.float32),
                                       pytest.param(ACT_NONE, np.float64, marks=pytest.mark.thorough)])
def test_cuda_linear_backward_pieces(act, dtype):
    """dZ = dY act'(Y), dW = X^T dZ, dX = dZ W^T, db = colsum(dZ): against numpy's
    analytic gradient of L = sum(G * act(X W + b))."""
    m, k, n = 7, 33, 5
    rng = np.random.default_rng(act)
    X = rnd(rng, (m, k), dtype)
    W = rnd(rng, (k, n), dtype, 0.3)
    b = rnd(rng, (n,), dtype)
    G = rnd(rng, (m, n), dtype)
    dXd, dWd = dev(X), dev(W)
    Yd = empty_dev((m, n), dtype)
    g_linear._linear_fwd(dXd, dWd, dev(b), act, Yd)
    dZ = empty_dev((m, n), dtype)
    g_act._act_bwd(Yd, dev(G), act, dZ, False)
    gW, gX, gb = empty_dev((k, n), dtype), empty_dev((m, k), dtype), empty_dev((n,), dtype)
    g_gemm._mm_tn(dXd, dZ, gW, False)
    g_gemm._mm_nt(dZ, dWd, gX, False)
    g_linear._colsum(dZ, gb, False)

    X64, W64 = X.astype(np.float64), W.astype(np.float64)
    Z = X64 @ W64 + b
    d = {ACT_NONE: np.ones_like(Z), ACT_RELU: (Z > 0).astype(np.float64),
         ACT_SIGMOID: np.exp(-Z) / (1 + np.exp(-Z)) ** 2, ACT_TANH: 1 - np.tanh(Z) ** 2}[act]
    dZ64 = G * d
    t = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dZ.copy_to_host(), dZ64, **t)
    np.testing.assert_allclose(gW.copy_to_host(), X64.T @ dZ64, **t)
    np.testing.assert_allclose(gX.copy_to_host(), dZ64 @ W64.T, **t)
    np.testing.assert_allclose(gb.copy_to_host(), dZ64.sum(axis=0), **t)


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 33)])
def test_cuda_bias_act(shape, dtype):
    rng = np.random.default_rng(1)
    for act in ACTS:
        for bias in (rnd(rng, (shape[1],), dtype), np.empty(0, dtype)):
            Y = rnd(rng, shape, dtype, 3.0)
            dY = dev(Y)
            g_linear._bias_act(dY, dev(bias), act)
            cpu_linear._bias_act(Y, bias, act)
            np.testing.assert_allclose(dY.copy_to_host(), Y, **tol(dtype))


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (33, 7), (70, 65)])
def test_cuda_colsum(shape, dtype):
    rng = np.random.default_rng(shape[0])
    dZ = rnd(rng, shape, dtype)
    d_dZ = dev(dZ)
    db = dev(np.full(shape[1], np.nan, dtype=dtype))
    g_linear._colsum(d_dZ, db, False)
    got = db.copy_to_host()
    np.testing.assert_allclose(got, dZ.astype(np.float64).sum(axis=0), **tol(dtype))
    db0 = rnd(rng, (shape[1],), dtype)
    db = dev(db0)
    g_linear._colsum(d_dZ, db, True)
    expect = db0.copy()
    cpu_linear._colsum(dZ, expect, True)
    np.testing.assert_allclose(db.copy_to_host(), expect, **tol(dtype))
    if AVAIL.simulator:
        return
    # deterministic on real hardware too: a second run is bitwise identical
    db2 = empty_dev((shape[1],), dtype)
    g_linear._colsum(d_dZ, db2, False)
    np.testing.assert_array_equal(db2.copy_to_host(), got)


# ============================================================= activations
def _act_input(rng, shape, dtype):
    X = rnd(rng, shape, dtype, 3.0)
    flat = X.reshape(-1)
    extremes = np.array([0.0, -0.0, 1e3, -1e3, 40.0, -40.0, np.nan], dtype=dtype)
    flat[: min(flat.size, extremes.size)] = extremes[: flat.size]
    return X


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 33)])
def test_cuda_act_fwd_bwd(shape, dtype):
    rng = np.random.default_rng(2)
    X = _act_input(rng, shape, dtype)
    dY = rnd(rng, shape, dtype)
    d_X, d_dY = dev(X), dev(dY)
    for act in ACTS:
        Yd = empty_dev(shape, dtype)
        g_act._act_fwd(d_X, act, Yd)
        Y = np.empty(shape, dtype)
        cpu_act._act_fwd(X, act, Y)
        np.testing.assert_allclose(Yd.copy_to_host(), Y, **tol(dtype), err_msg=f"fwd act={act}")
        assert np.isfinite(Yd.copy_to_host()[~np.isnan(X)]).all()
        for acc in (False, True):
            dX0 = rnd(rng, shape, dtype)
            dXd = dev(dX0)
            g_act._act_bwd(dev(Y), d_dY, act, dXd, acc)
            expect = dX0.copy()
            cpu_act._act_bwd(Y, dY, act, expect, acc)
            np.testing.assert_allclose(dXd.copy_to_host(), expect, **tol(dtype),
                                       err_msg=f"bwd act={act} acc={acc}")


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_cuda_act_fwd_multi_block_in_place(dtype):
    shape = (70, 65)
    rng = np.random.default_rng(4)
    X = rnd(rng, shape, dtype, 2.0)
    d = dev(X)
    g_act._act_fwd(d, ACT_TANH, d)          # in place
    np.testing.assert_allclose(d.copy_to_host(), np.tanh(X.astype(np.float64)), **tol(dtype))


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_cuda_named_activations(name, dtype):
    shape = (7, 33)
    rng = np.random.default_rng(6)
    X = _act_input(rng, shape, dtype)
    dY = rnd(rng, shape, dtype)
    Yd = empty_dev(shape, dtype)
    getattr(g_act, f"_{name}_fwd")(dev(X), Yd)
    Y = np.empty(shape, dtype)
    getattr(cpu_act, f"_{name}_fwd")(X, Y)
    np.testing.assert_allclose(Yd.copy_to_host(), Y, **tol(dtype))
    dXd = empty_dev(shape, dtype)
    getattr(g_act, f"_{name}_bwd")(Yd, dev(dY), dXd)
    dX = np.empty(shape, dtype)
    getattr(cpu_act, f"_{name}_bwd")(Y, dY, dX)
    np.testing.assert_allclose(dXd.copy_to_host(), dX, **tol(dtype))


# =================================================================== gates
GATE_SHAPES = [((7, 33), (7, 33)), ((7, 33), (1, 33)), ((7, 1), (1, 33)), ((1, 1), (7, 33)),
               ((1, 1), (1, 1))]


def thorough_case(params):
    """Cases that run in CI's thorough stage only (see conftest.py): the gates other than
    add on the last three shape pairs (the broadcasting code is shared by the gates; add
    runs every pair), ~2 s each under the simulator; the transposed products (nt, tn) on the
    two middle shapes (the nn product runs every shape, the transposed ones the extremes: their
    tile loaders differ from nn's, not by shape); the registry activations outside
    REG_DEFAULT_RUN (their float32 CPU kernels run in the default run of test_registry); and
    every case of the div and pow gates (the default run takes both through the GPU grad
    function of test_cuda_step.py)."""
    if "kind" in params and "m" in params:     # products: every shape for nn, the extremes for nt/tn
        return params["kind"] != "nn" and (params["m"], params["k"], params["n"]) in GEMM_SHAPES[1:3]
    if params.get("gate") in (GATE_DIV, GATE_POW):
        return True
    if "pair" in params:    # the non-finite parity test: one broadcast pair per gate by default
        return params["pair"] != 0
    sa = params.get("sa")
    if params.get("name") in REG_NAMES and params["name"] not in REG_DEFAULT_RUN:
        return True
    return (sa is not None and params.get("gate") != GATE_ADD
            and GATE_SHAPES.index((sa, params["sb"])) >= 2)


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("sa,sb", GATE_SHAPES)
def test_cuda_gate_fwd_bwd(sa, sb, gate, dtype):
    rng = np.random.default_rng(len(sa) + gate)
    out_shape = (max(sa[0], sb[0]), max(sa[1], sb[1]))
    # integers make exact ties for max (ties go to A)
    A = np.round(rnd(rng, sa, dtype, 1.5))
    B = np.round(rnd(rng, sb, dtype, 1.5))
    dO = rnd(rng, out_shape, dtype)
    dA_, dB_, d_dO = dev(A), dev(B), dev(dO)

    Od = empty_dev(out_shape, dtype)
    g_gates._gate_fwd(gate, dA_, dB_, Od)
    O = np.empty(out_shape, dtype)
    cpu_gates._gate_fwd(gate, A, B, O)
    np.testing.assert_allclose(Od.copy_to_host(), O, **tol(dtype))

    for acc_a, acc_b in ((False, False), (True, True)):
        gA0, gB0 = rnd(rng, sa, dtype), rnd(rng, sb, dtype)
        gAd, gBd = dev(gA0), dev(gB0)
        g_gates._gate_bwd(gate, dA_, dB_, d_dO, gAd, gBd, acc_a, acc_b)
        gA, gB = gA0.copy(), gB0.copy()
        cpu_gates._gate_bwd(gate, A, B, dO, gA, gB, acc_a, acc_b)
        np.testing.assert_allclose(gAd.copy_to_host(), gA, **tol(dtype))
        np.testing.assert_allclose(gBd.copy_to_host(), gB, **tol(dtype))

    # only dA wanted: dB of size 0 is not touched
    gAd = empty_dev(sa, dtype)
    g_gates._gate_bwd(gate, dA_, dB_, d_dO, gAd, empty_dev((0, 0), dtype), False, False)
    gA = np.empty(sa, dtype)
    cpu_gates._gate_bwd(gate, A, B, dO, gA, np.empty((0, 0), dtype), False, False)
    np.testing.assert_allclose(gAd.copy_to_host(), gA, **tol(dtype))


@requires_cuda
def test_cuda_gate_max_nan_and_ties():
    A = np.array([[np.nan, 1.0, 2.0, 3.0]])
    B = np.array([[0.0, np.nan, 2.0, 4.0]])
    Od = empty_dev((1, 4), np.float64)
    g_gates._gate_fwd(GATE_MAX, dev(A), dev(B), Od)
    np.testing.assert_array_equal(Od.copy_to_host(), [[np.nan, np.nan, 2.0, 4.0]])
    gA, gB = empty_dev((1, 4), np.float64), empty_dev((1, 4), np.float64)
    g_gates._gate_bwd(GATE_MAX, dev(A), dev(B), dev(np.ones((1, 4))), gA, gB, False, False)
    # the registry's rule, as on the CPU: a NaN on either side sends dout to both inputs
    # (torch.maximum's backward: its comparisons with NaN are false); ties go to A
    np.testing.assert_array_equal(gA.copy_to_host(), [[1.0, 1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(gB.copy_to_host(), [[1.0, 1.0, 0.0, 1.0]])


#: every broadcast pair of tests/test_kernels.py's gate tests, both ways round
from test_kernels import GATE_SHAPE_PAIRS as _CPU_GATE_PAIRS  # noqa: E402

NONFINITE_GATE_PAIRS = _CPU_GATE_PAIRS + [(sb, sa) for sa, sb in _CPU_GATE_PAIRS]


def _gate_nonfinite(rng, shape, dtype):
    """Values from a pool of NaN, +-inf, signed zeros, and small integers (ties for max)."""
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0, 0.5, -3.0])
    return np.ascontiguousarray(pool[rng.integers(0, pool.size, shape)].astype(dtype))


def _gate_same(got, want, exact, dtype, what):
    """NaN and inf in the same places; the rest bitwise (``exact``) or to rounding."""
    assert got.shape == want.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=what)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=what)
    num = ~np.isnan(want)       # (a NaN's sign and payload carry no meaning)
    if exact:   # bitwise, signed zeros included
        np.testing.assert_array_equal(got[num].view(f"u{got.itemsize}"), want[num].view(f"u{want.itemsize}"),
                                      err_msg=what)
    else:
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], **tol(dtype), err_msg=what)


@requires_cuda
@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # the simulator's numpy scalars: inf * 0
@pytest.mark.parametrize("pair", range(len(NONFINITE_GATE_PAIRS)))
@pytest.mark.parametrize("gate", GATES)
def test_cuda_gates_match_cpu_with_nan_and_inf(gate, pair):
    """CPU/CUDA parity of every gate with NaN, inf and ties in both inputs and in dout:
    the same outputs and gradients (bitwise: one rounding per element, and the broadcast
    sums run in the CPU's order; the simulator runs Python arithmetic, a GPU may fuse
    mul's sums into FMAs: to rounding there), plus accumulation into finite gradients."""
    dtype = np.float32
    sa, sb = NONFINITE_GATE_PAIRS[pair]
    rng = np.random.default_rng(100 * gate + pair)
    out_shape = (max(sa[0], sb[0]), max(sa[1], sb[1]))
    A, B, dO = _gate_nonfinite(rng, sa, dtype), _gate_nonfinite(rng, sb, dtype), _gate_nonfinite(rng, out_shape, dtype)
    # on a GPU: mul's and div's sums may fuse into FMAs, and pow is libdevice's, not libm's
    exact = SIM_ENV or gate in (GATE_ADD, GATE_MAX)
    what = f"gate {gate} {sa} {sb}"
    Od = empty_dev(out_shape, dtype)
    g_gates._gate_fwd(gate, dev(A), dev(B), Od)
    O = np.empty(out_shape, dtype)
    cpu_gates._gate_fwd(gate, A, B, O)
    _gate_same(Od.copy_to_host(), O, SIM_ENV or gate != GATE_POW, dtype, what)
    for acc in (False, True):
        gA0, gB0 = np.round(rnd(rng, sa, dtype, 2.0)), np.round(rnd(rng, sb, dtype, 2.0))
        gAd, gBd = dev(gA0), dev(gB0)
        g_gates._gate_bwd(gate, dev(A), dev(B), dev(dO), gAd, gBd, acc, acc)
        gA, gB = gA0.copy(), gB0.copy()
        cpu_gates._gate_bwd(gate, A, B, dO, gA, gB, acc, acc)
        _gate_same(gAd.copy_to_host(), gA, exact, dtype, what + f" dA acc={acc}")
        _gate_same(gBd.copy_to_host(), gB, exact, dtype, what + f" dB acc={acc}")


@pytest.mark.thorough
@requires_cuda
def test_cuda_new_gate_is_one_entry():
    """The test-only min gate of test_gate_registry.py, registered here, runs on the GPU
    from its registry entry alone and matches the CPU kernels (NaN, ties, broadcasting).
    CI's thorough stage: the comparison compiles the test gate's float32 CPU kernels (~6 s
    cold) for this test alone; the README's run has the CPU side of the same claim
    (test_gate_registry.py) and every shipped gate's GPU/CPU parity."""
    from fastbp.registry import gates as reg
    from test_gate_registry import MIN_TEST
    reg.register(MIN_TEST)
    try:
        code = MIN_TEST.code
        A = np.array([[np.nan, 1.0, 2.0, -np.inf], [3.0, 3.0, np.nan, 0.0]], np.float32)
        B = np.array([[1.0, 1.0, 5.0, -1.0]], np.float32)
        dO = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
        Od = empty_dev((2, 4), np.float32)
        g_gates._gate_fwd(code, dev(A), dev(B), Od)
        O = np.empty((2, 4), np.float32)
        cpu_gates._gate_fwd(code, A, B, O)
        np.testing.assert_array_equal(Od.copy_to_host(), O)
        gAd, gBd = empty_dev((2, 4), np.float32), empty_dev((1, 4), np.float32)
        g_gates._gate_bwd(code, dev(A), dev(B), dev(dO), gAd, gBd, False, False)
        gA, gB = np.empty((2, 4), np.float32), np.empty((1, 4), np.float32)
        cpu_gates._gate_bwd(code, A, B, dO, gA, gB, False, False)
        np.testing.assert_array_equal(gAd.copy_to_host(), gA)
        np.testing.assert_array_equal(gBd.copy_to_host(), gB)
        np.testing.assert_array_equal(gA, [[1, 2, 3, 4], [0, 0, 7, 0]])     # ties and NaN: to A
    finally:
        reg.unregister(MIN_TEST.name)


@requires_cuda
def test_cuda_gate_unknown_code_is_an_error_or_nan():
    """An unknown code: ValueError from the launchers; a kernel handed another
    entry's code writes NaN, never another gate (as the CPU kernels)."""
    A = dev(np.ones((2, 3), np.float32))
    O = empty_dev((2, 3), np.float32)
    with pytest.raises(ValueError, match="unknown gate code"):
        g_gates._gate_fwd(99, A, A, O)
    with pytest.raises(ValueError, match="unknown gate code"):
        g_gates._gate_bwd(-1, A, A, A, O, O, False, False)
    k = g_gates.kernels(GATE_ADD)
    k.fwd[(1, 1), (4, 4)](GATE_MUL, A, A, O)
    assert np.isnan(O.copy_to_host()).all()
    k.bwd_operand[(1, 1), (4, 4)](GATE_MAX, True, A, A, A, O, False)
    assert np.isnan(O.copy_to_host()).all()


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (70, 65), (0, 3)])
def test_cuda_sum_scale(shape, dtype):
    rng = np.random.default_rng(8)
    A = rnd(rng, shape, dtype)
    out = dev(np.full((1, 1), np.nan, dtype=dtype))
    g_gates._sum_fwd(dev(A), out)
    np.testing.assert_allclose(out.copy_to_host()[0, 0], A.astype(np.float64).sum(),
                               rtol=tol(dtype)["rtol"], atol=1e-4 if dtype == np.float32 else 1e-12)
    if A.size == 0 or A.size > 7 * 33:    # (elementwise grids: tested on the small shapes)
        return
    dO = rnd(rng, (1, 1), dtype)
    for acc in (False, True):
        dA0 = rnd(rng, shape, dtype)
        dAd = dev(dA0)
        g_gates._sum_bwd(dev(dO), dAd, acc)
        expect = dA0.copy()
        cpu_gates._sum_bwd(dO, expect, acc)
        np.testing.assert_allclose(dAd.copy_to_host(), expect, **tol(dtype))
        outd = dev(dA0)
        g_gates._scale(dev(A), -0.75, outd, acc)
        expect = dA0.copy()
        cpu_gates._scale(A, -0.75, expect, acc)
        np.testing.assert_allclose(outd.copy_to_host(), expect, **tol(dtype))


# ================================================================== losses
LOSS_SHAPES = [(1, 1), (7, 10), (130, 3)]


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("name", ["softmax_xent", "svm", "mse", "bce_logits", "poisson"])
@pytest.mark.parametrize("B,C", LOSS_SHAPES)
def test_cuda_losses(B, C, name, dtype):
    rng = np.random.default_rng(B * 7 + C)
    S = rnd(rng, (B, C), dtype, 3.0)
    if name in ("softmax_xent", "svm"):
        T = rng.integers(0, C, size=B).astype(np.int64)
        if name == "softmax_xent" and B > 2:
            S[0, 0] = 80.0                        # exp would overflow without the max shift
    elif name == "mse":
        T = rnd(rng, (B, C), dtype)
    elif name == "poisson":
        T = rng.poisson(2.0, (B, C)).astype(dtype)     # counts, zeros among them
    else:
        T = rng.random((B, C)).astype(dtype)
        S[0, 0] = -200.0                          # log1p(exp(-|s|)) keeps this finite
    dS = empty_dev((B, C), dtype)
    rowloss = empty_dev((B,), np.float64)
    loss = dev(np.full(1, np.nan))
    getattr(g_losses, f"_{name}")(dev(S), dev(T), dS, rowloss, loss)

    dS_ref = np.empty((B, C), dtype)
    row_ref = np.empty(B, np.float64)
    mean_ref = getattr(cpu_losses, f"_{name}")(S, T, dS_ref, row_ref)
    t = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dS.copy_to_host(), dS_ref, **t)
    np.testing.assert_allclose(rowloss.copy_to_host(), row_ref, **t)
    got = loss.copy_to_host()[0]
    assert np.isfinite(got)
    np.testing.assert_allclose(got, mean_ref, **t)


@requires_cuda
def test_cuda_loss_bad_label_poisons_only_its_row():
    S = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 3, 2, -1], dtype=np.int64)
    for fn in (g_losses._softmax_xent, g_losses._svm):
        dS, rowloss, loss = empty_dev((4, 3), np.float64), empty_dev((4,), np.float64), empty_dev((1,), np.float64)
        fn(dev(S), dev(y), dS, rowloss, loss)
        r = rowloss.copy_to_host()
        g = dS.copy_to_host()
        assert np.isnan(r[[1, 3]]).all() and np.isfinite(r[[0, 2]]).all()
        assert np.isnan(g[[1, 3]]).all() and np.isfinite(g[[0, 2]]).all()
        assert np.isnan(loss.copy_to_host()[0])


@requires_cuda
@pytest.mark.parametrize("n", [1, 7, 300])
def test_cuda_check_labels(n):
    rng = np.random.default_rng(n)
    y = rng.integers(0, 5, size=n).astype(np.int64)
    out = dev(np.zeros(1, np.int64))
    g_losses._check_labels(dev(y), 5, out)
    assert out.copy_to_host()[0] == -1 == cpu_losses._check_labels(y, 5)
    bad = [n - 1] if n < 7 else [n - 1, n // 2, 3]
    y[bad[0]] = 5
    for i in bad[1:]:
        y[i] = -2
    g_losses._check_labels(dev(y), 5, out)
    assert out.copy_to_host()[0] == min(bad) == cpu_losses._check_labels(y, 5)


# ================================================================== dropout
@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_cuda_dropout_matches_cpu_bitwise(dtype):
    """The CUDA dropout kernel, compiled from the CPU kernel's generator bodies, gives
    bitwise the CPU's result (the same mask, one product per element): p = 0.5, 0.2
    (a step count above 2**32), 0 (a copy) and 1 (zeros).  Accumulating (the backward
    into a gradient that sums contributions) agrees to rounding: the multiply-add may
    be fused (FMA) on one side and not the other."""
    from fastbp.kernels import dropout as cpu_drop
    from fastbp.kernels.cuda import dropout as g_drop
    rng = np.random.default_rng(3)
    A = rnd(rng, (7, 33), dtype)
    for p, step in ((0.5, 3), (0.2, 2**33 + 1), (0.0, 0), (1.0, 5)):
        for acc in (False, True):
            out = rnd(rng, (7, 33), dtype)
            od = dev(out)
            g_drop._dropout(dev(A), od, 12345, 2, step, 3 * step, p, acc)
            cpu_drop._dropout.serial(A, out, 12345, 2, step, 3 * step, p, acc)
            if acc:
                np.testing.assert_allclose(od.copy_to_host(), out, **tol(dtype))
            else:
                np.testing.assert_array_equal(od.copy_to_host(), out)


# =============================================================== optimizers
@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("n", [1, 7, 300])
def test_cuda_sgd(n, dtype):
    rng = np.random.default_rng(n)
    for momentum, nesterov, wd in ((0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2),
                                   (0.0, False, 5e-2)):
        p, v = rnd(rng, (n,), dtype), rnd(rng, (n,), dtype) if momentum else np.empty(0, dtype)
        pd, vd = dev(p), dev(v)
        for _ in range(3):
            g = rnd(rng, (n,), dtype)
            g_optim._sgd_update(pd, dev(g), vd, 0.1, momentum, nesterov, wd)
            cpu_optim._sgd_update(p, g, v, 0.1, momentum, nesterov, wd)
        np.testing.assert_allclose(pd.copy_to_host(), p, **tol(dtype))
        if momentum:
            np.testing.assert_allclose(vd.copy_to_host(), v, **tol(dtype))


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("n", [1, 7, 300])
def test_cuda_adam(n, dtype):
    rng = np.random.default_rng(n + 1)
    for wd, decoupled in ((0.0, False), (1e-2, False), (1e-2, True)):
        p = rnd(rng, (n,), dtype)
        m, v = np.zeros(n, dtype), np.zeros(n, dtype)
        pd, md, vd = dev(p), dev(m), dev(v)
        for t in range(1, 4):
            g = rnd(rng, (n,), dtype)
            g_optim._adam_update(pd, dev(g), md, vd, t, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
            cpu_optim._adam_update(p, g, m, v, t, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
        np.testing.assert_allclose(pd.copy_to_host(), p, **tol(dtype))
        np.testing.assert_allclose(md.copy_to_host(), m, **tol(dtype))
        np.testing.assert_allclose(vd.copy_to_host(), v, **tol(dtype))


@requires_cuda
def test_cuda_available_reports_where():
    assert AVAIL.ok
    assert AVAIL.simulator == SIM_ENV
    assert ("simulator" in AVAIL.reason) == SIM_ENV


# ======================================================= orchestration tests
def test_import_without_numba_cuda():
    """The package imports and answers False, with a reason, when numba-cuda is absent."""
    code = ("import sys; sys.modules['numba.cuda'] = None\n"
            "from fastbp.kernels.cuda import cuda_available\n"
            "a = cuda_available()\n"
            "assert not a and a.ok is False, a\n"
            "assert 'numba-cuda' in a.reason, a.reason\n"
            "print('OK', a.reason)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


# ------------------------------------- every registry activation and loss: CPU vs CUDA
from fastbp.registry import activations as REG  # noqa: E402
from fastbp.registry import losses as loss_registry  # noqa: E402

REG_NAMES = [e.name for e in REG.entries()]
REG_PUBLIC = [e.name for e in REG.entries(public=True)]
#: the registry entries whose CPU-vs-CUDA case runs in the README's test command (see
#: thorough_case): an entry whose derivative reads the output (relu), one that reads the input
#: and has a parameter (leaky_relu) and one made of the float32 polynomials (gelu) stand for
#: the others, whose CUDA kernels are copies of the same templates with their bodies (identity,
#: sigmoid and tanh also run in the default run's test_cuda_act_fwd_bwd and linear tests)
REG_DEFAULT_RUN = {"relu", "leaky_relu", "gelu"}
LOSS_NAMES = list(loss_registry.names())


def _reg_params(entry):
    """Parameters other than the defaults where the entry has any (in range)."""
    vals = []
    for p in entry.params:
        try:
            vals.append(p.check(3.0 * p.default + 0.5, "test"))
        except ValueError:
            vals.append(p.default)
    return tuple(vals)


def _nonfinite(rng, shape, dtype, scale=3.0):
    """Random values with NaN, +inf, -inf, 0 and a large value among them."""
    x = rnd(rng, shape, dtype, scale)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, 40.0, -40.0], dtype)
    idx = rng.choice(x.size, size=len(special), replace=False)
    x.ravel()[idx] = special
    return x


def _same(gpu, cpu, dtype, what):
    """Same NaN and inf positions, finite values within rounding (FMA)."""
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu), err_msg=what + " (NaN positions)")
    np.testing.assert_allclose(gpu, cpu, err_msg=what, equal_nan=True, **tol(dtype))


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("name", REG_NAMES)
def test_cuda_registry_activation_matches_cpu(name, dtype):
    """Each entry's CUDA kernels (compiled from the same scalar bodies) against its CPU
    kernels, with NaN and inf inputs: same NaNs, same infs, same finite values."""
    entry = REG.get(name)
    rng = np.random.default_rng(entry.code)
    P = np.array(_reg_params(entry), dtype)
    ks = cpu_act.kernels(entry.code)
    m, n = 7, 33
    x = _nonfinite(rng, (m, n), dtype)
    dy = _nonfinite(rng, (m, n), dtype, 1.0)
    y = np.empty_like(x)
    ks.fwd.serial(x, y, P)
    Yd = empty_dev((m, n), dtype)
    g_act._act_fwd(dev(x), entry.code, Yd, P=dev(P))
    _same(Yd.copy_to_host(), y, dtype, f"{name} fwd")
    t = y if entry.uses == "output" else x
    for acc in (False, True):
        start = rnd(rng, (m, n), dtype)
        dx = start.copy()
        ks.bwd.serial(t, dy, dx, acc, P)
        dXd = dev(start)
        g_act._act_bwd(dev(t), dev(dy), entry.code, dXd, acc, P=dev(P))
        _same(dXd.copy_to_host(), dx, dtype, f"{name} bwd acc={acc}")
    b = _nonfinite(rng, (n,), dtype)
    for bias in (b, np.empty(0, dtype)):
        z = x.copy()
        yb = np.empty_like(x)
        ks.bias_act.serial(z, bias, yb, P)
        Zd, Ybd = dev(x), empty_dev((m, n), dtype)
        g_linear._bias_act(Ybd, dev(bias), entry.code, P=dev(P), Z=Zd)
        _same(Zd.copy_to_host(), z, dtype, f"{name} bias_act Z")
        _same(Ybd.copy_to_host(), yb, dtype, f"{name} bias_act Y")
        Yi = dev(x)
        g_linear._bias_act(Yi, dev(bias), entry.code, P=dev(P))
        _same(Yi.copy_to_host(), yb, dtype, f"{name} bias_act in place")
    # the fused linear forward, with and without the pre-activation kept
    X = rnd(rng, (m, 5), dtype)
    W = rnd(rng, (5, n), dtype)
    X[0, 0] = np.nan
    X[1, 1] = np.inf
    want = np.empty((m, n), dtype)
    ks.linear_fwd.serial(X, W, b, want, P)
    for keep in (False, True):
        Yd = empty_dev((m, n), dtype)
        Zd = empty_dev((m, n), dtype) if keep else None
        g_linear._linear_fwd(dev(X), dev(W), dev(b), entry.code, Yd, P=dev(P), Z=Zd)
        _same(Yd.copy_to_host(), want, dtype, f"{name} linear_fwd keep={keep}")
        Yt = empty_dev((m, n), dtype)
        g_linear._linear_fwd_t(dev(X), dev(np.ascontiguousarray(W.T)), dev(b), entry.code, Yt, P=dev(P), Z=Zd)
        _same(Yt.copy_to_host(), want, dtype, f"{name} linear_fwd_t keep={keep}")
    with pytest.raises(ValueError, match="unknown activation code"):
        g_act._act_fwd(dev(x), 29, empty_dev((m, n), dtype))


def _parity_cases():
    """Every (activation, loss) pair; the README's test command runs two (the first
    activation with the first loss, the last with the first
    regression loss: an output-reading and an input-reading derivative, a classification and
    a regression loss), CI's thorough stage
    all of them: under the simulator each case is ~14 s of Python threads.  Every
    activation's and every loss's kernels meet NaN and inf in the default run anyway
    (the two tests above)."""
    regression = next(j for j, loss in enumerate(LOSS_NAMES) if loss not in loss_registry.classification_names())
    cases = []
    for i, name in enumerate(REG_PUBLIC):
        for j, loss in enumerate(LOSS_NAMES):
            core = (i, j) in ((0, 0), (len(REG_PUBLIC) - 1, regression))
            cases.append(pytest.param(name, loss, marks=() if core else pytest.mark.thorough,
                                      id=f"{loss}-{name}"))
    return cases


@requires_cuda
@pytest.mark.parametrize("name,loss", _parity_cases())
def test_cuda_step_nonfinite_parity(name, loss):
    """A step on NaN or inf data: the GPU step (simulated) does what the CPU step does --
    the same error (FloatingPointError, nothing applied) or the same finite loss and
    update -- for every activation of the registry and every loss."""
    import fastbp
    from fastbp.builders import mlp
    model = mlp([3, 4, 2], name)
    kw = dict(loss=loss, optimizer=fastbp.SGD(lr=0.1), batch_size=2, dtype=np.float64, seed=0)
    cpu = fastbp.compile(model, **kw)
    gpu = fastbp.compile(model, device="cuda", **kw)
    rng = np.random.default_rng(1)
    y = np.array([0, 1]) if loss in loss_registry.classification_names() else rng.random((2, 2))
    for bad in (np.nan, np.inf, -np.inf):
        x = rng.standard_normal((2, 3))
        x[0, 1] = bad
        outcome = []
        for step in (cpu, gpu):
            before = dict(step.params if step is cpu else step.params_host())
            before = {k: np.array(v) for k, v in before.items()}
            try:
                outcome.append(("ok", step(x, y)))
            except FloatingPointError as exc:
                outcome.append(("FloatingPointError", str(exc).split(";")[0]))
                after = step.params if step is cpu else step.params_host()
                for k in before:
                    np.testing.assert_array_equal(after[k], before[k], err_msg=f"{name}/{loss}/{bad}: {k} changed")
        (kc, vc), (kg, vg) = outcome
        assert kc == kg, f"{name}/{loss}/x={bad}: CPU {outcome[0]}, GPU {outcome[1]}"
        if kc == "ok":
            np.testing.assert_allclose(vg, vc, rtol=1e-12, err_msg=f"{name}/{loss}/{bad}")
        hp = gpu.params_host()
        for k, v in cpu.params.items():
            np.testing.assert_allclose(hp[k], v, rtol=1e-12, atol=1e-14, err_msg=f"{name}/{loss}/{bad}: {k}")


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
@pytest.mark.parametrize("kind", LOSS_NAMES)
def test_cuda_loss_kernels_nonfinite_match_cpu(kind, dtype):
    """Each loss kernel with NaN and inf scores: the same loss (NaN, inf or finite) and
    the same gradient on both targets (the CUDA SVM kernel once returned 0 for a NaN score)."""
    cpu_k = {"softmax_cross_entropy": cpu_losses._softmax_xent, "svm": cpu_losses._svm,
             "mse": cpu_losses._mse, "bce_with_logits": cpu_losses._bce_logits,
             "poisson": cpu_losses._poisson}[kind]
    gpu_k = {"softmax_cross_entropy": g_losses._softmax_xent, "svm": g_losses._svm,
             "mse": g_losses._mse, "bce_with_logits": g_losses._bce_logits,
             "poisson": g_losses._poisson}[kind]
    rng = np.random.default_rng(4)
    B, C = 5, 4
    for bad in (np.nan, np.inf, -np.inf):
        S = rnd(rng, (B, C), dtype)
        S[1, 2] = bad
        if kind in ("softmax_cross_entropy", "svm"):
            tgt = rng.integers(0, C, B).astype(np.int64)
            tgt[1] = 0
        else:
            tgt = np.ascontiguousarray(rng.random((B, C)).astype(dtype))
        dS = np.empty_like(S)
        loss = cpu_k.serial(S, tgt, dS, np.empty(B))
        dSd = empty_dev((B, C), dtype)
        lossd = cuda.to_device(np.zeros(1))
        gpu_k(dev(S), dev(tgt), dSd, cuda.to_device(np.zeros(B)), lossd)
        gl = lossd.copy_to_host()[0]
        assert (np.isnan(gl), np.isinf(gl)) == (np.isnan(loss), np.isinf(loss)), f"{kind} {bad}: {gl} vs {loss}"
        if np.isfinite(loss):
            np.testing.assert_allclose(gl, loss, **tol(dtype))
        _same(dSd.copy_to_host(), dS, dtype, f"{kind} dS with {bad}")


@pytest.mark.simulator
def test_simulator_subprocess():
    """This file's test_cuda_* under the CUDA simulator, in the child process that
    ``conftest.py`` started after collection (``_simulator.py``)."""
    if AVAIL:
        pytest.skip(f"kernel tests ran in this process ({AVAIL.reason})")
    if "numba-cuda" in AVAIL.reason:
        pytest.skip(AVAIL.reason)
    rc, counts, ids, tail, reported = _simulator.result(Path(__file__).name)
    assert reported, f"no report from the simulator run (rc={rc}):\n{tail}"
    assert counts["failures"] == counts["errors"] == 0, f"simulator run failed {counts}:\n{tail}"
    assert counts["skipped"] == 0, f"kernel tests skipped under the simulator {counts}:\n{tail}"
    assert counts["ran"] == len(ids) > 0, f"ran {counts['ran']} of {len(ids)}:\n{tail}"


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_cuda_rmsprop(dtype):
    n = 300
    rng = np.random.default_rng(n + 2)
    for wd, momentum, centered in ((0.0, 0.0, False), (1e-2, 0.9, False), (0.0, 0.0, True), (1e-2, 0.9, True)):
        p, sq = rnd(rng, (n,), dtype), np.zeros(n, dtype)
        buf = np.zeros(n if momentum else 0, dtype)
        ga = np.zeros(n if centered else 0, dtype)
        pd, sqd, bd, gad = dev(p), dev(sq), dev(buf), dev(ga)
        for _ in range(3):
            g = rnd(rng, (n,), dtype)
            g_optim._rmsprop_update(pd, dev(g), sqd, bd, gad, 1e-2, 0.99, 1e-8, wd, momentum)
            cpu_optim._rmsprop_update(p, g, sq, buf, ga, 1e-2, 0.99, 1e-8, wd, momentum)
        np.testing.assert_allclose(pd.copy_to_host(), p, **tol(dtype))
        np.testing.assert_allclose(sqd.copy_to_host(), sq, **tol(dtype))
        np.testing.assert_allclose(bd.copy_to_host(), buf, **tol(dtype))
        np.testing.assert_allclose(gad.copy_to_host(), ga, **tol(dtype))


@requires_cuda
@pytest.mark.parametrize("dtype", PARAM_DTYPES)
def test_cuda_clip_grad_norm(dtype):
    rng = np.random.default_rng(5)
    for n, max_norm in ((1, 0.1), (700, 1.0), (700, 1e3)):     # clipped, clipped, left alone
        g = rnd(rng, (n,), dtype)
        gd = dev(g)
        coef = dev(np.zeros(1))
        g_optim._clip_grad_norm(gd, max_norm, coef)
        c = min(1.0, max_norm / (np.sqrt(np.sum(g.astype(np.float64) ** 2)) + 1e-6))
        assert coef.copy_to_host()[0] == pytest.approx(c, rel=1e-12)
        np.testing.assert_allclose(gd.copy_to_host(), g * g.dtype.type(c), **tol(dtype))


# ------------------------------------------------------- compile for a GPU
def _ptx_table(dtype):
    """Every kernel with example arguments of ``dtype`` (the types decide the signature)."""
    from fastbp.kernels.cuda import activations as a_, gates as ga, gemm as gm, linear as li
    from fastbp.kernels.cuda import losses as lo, optim as op
    M = np.zeros((3, 3), dtype)
    v = np.zeros(3, dtype)
    y = np.zeros(3, np.int64)
    f = np.zeros(3)
    return {
        "mm_nn": (gm._k_mm_nn, (M, M, M, True)),
        "mm_nt": (gm._k_mm_nt, (M, M, M, True)),
        "mm_tn": (gm._k_mm_tn, (M, M, M, True)),
        "colsum": (li._k_colsum, (M, v, True)),
        # every kernel of every gate of the registry ("gate.max.fwd", ...)
        **ga.registry_kernels(dtype),
        "sum_fwd": (ga._k_sum_fwd, (M, M)),
        "sum_bwd": (ga._k_sum_bwd, (M, M, True)),
        "scale": (ga._k_scale, (M, 1.0, M, True)),
        "softmax_xent": (lo._k_softmax_xent_rows, (M, y, M, f)),
        "mse": (lo._k_mse_rows, (M, M, M, f)),
        "bce_logits": (lo._k_bce_logits_rows, (M, M, M, f)),
        "svm": (lo._k_svm_rows, (M, y, M, f)),
        "poisson": (lo._k_poisson_rows, (M, M, M, f)),
        "mean": (lo._k_mean, (f, 3, 1.0, f)),
        "check_labels": (lo._k_check_labels, (y, 3, y)),
        "sgd": (op._k_sgd, (v, v, v, 0.1, 0.9, True, 0.1)),
        "adam": (op._k_adam, (v, v, v, v, 0.1, 0.1, 0.9, 0.99, 0.1, 0.01, 1e-8, 0.1, 1.0, True)),
        "rmsprop": (op._k_rmsprop, (v, v, v, v, v, 0.01, 0.99, 0.01, 1e-8, 0.1, 0.9)),
        "clip_coef": (op._k_clip_coef, (v, 1.0, f)),
        "grad_scale": (op._k_grad_scale, (v, f)),
        "dropout": (_dropout_kernel(), (M, M, 1, 2, 3, 4, 0.5, True)),
        # every kernel of every activation of the registry ("relu.linear_fwd", ...)
        **a_.registry_kernels(dtype),
        **_norm_ptx_table(dtype),
    }


def _norm_ptx_table(dtype):
    """The normalisation kernels (fastbp.kernels.cuda.norm) with example arguments."""
    from fastbp.kernels.cuda import norm as no
    M = np.zeros((3, 3), dtype)
    S = np.zeros((5, 3), dtype)
    v = np.zeros(3, dtype)
    one = np.zeros(1, dtype)
    f = np.zeros(1)
    return {
        "ln_fwd": (no._k_ln_fwd, (M, v, v, M, M, v)),
        "ln_dparams": (no._k_ln_dparams, (M, M, M, v, v, True, True)),
        "ln_dx": (no._k_ln_dx, (M, v, M, M, M, True)),
        "bn_stats": (no._k_bn_stats, (M, S, M, v, True)),
        "bn_apply": (no._k_bn_apply, (M, v, v, M, S)),
        "bn_dparams": (no._k_bn_dparams, (M, S, M, v, v, True, True)),
        "bn_dx": (no._k_bn_dx, (M, v, S, M, M, True, True)),
        "bn_flag_nonfinite": (no._k_flag_nonfinite, (v, f)),
        "bn_running": (no._k_bn_running, (S, M, one, v, 4, f, np.zeros(4))),
        "bn_count": (no._k_bn_count, (one, f, np.zeros(4))),
    }


def _dropout_kernel():
    from fastbp.kernels.cuda import dropout as dr
    return dr._k_dropout


#: kernels whose float32 variant legitimately uses float64: the loss row
#: accumulators and the mean are float64 by contract (as on the CPU); dropout
#: compares its 24-bit uniform with 1 - p in float64 (p exact, as PyTorch's)
_F64_BY_CONTRACT = {"mse", "bce_logits", "svm", "mean", "dropout", "clip_coef", "poisson"}
_F64_BY_CONTRACT |= {"bn_flag_nonfinite"}     # a float64 flag: its NaN test of a float32 value
_F64_BY_CONTRACT |= {"sum_fwd"}     # fastbp.sum accumulates in float64, as on the CPU
_F64_OP = re.compile(r"\b(?:add|sub|mul|fma|div|sqrt|max|min|neg|abs)(?:\.[a-z]+)*\.f64\b")
_PRODUCTS = ("mm_nn", "mm_nt", "mm_tn")


@pytest.mark.parametrize("target", PTX_TARGETS, ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_ptx_compiles(monkeypatch, tmp_path, target):
    """Every kernel compiles for a real GPU (this one's, else sm_80 and sm_90) in both dtypes.

    With ``ptxas`` present (CI's last stage installs it) every kernel is also
    assembled into machine code for that compute capability, and the
    matrix-product kernels must not spill registers.
    """
    import numba
    from numba import cuda as real_cuda
    cc = ptx_target(monkeypatch, AVAIL, target)

    ptxas = find_ptxas()
    for dtype in DTYPES:
        for name, (k, args) in _ptx_table(dtype).items():
            sig = tuple(numba.typeof(a) for a in args)
            ptx, _ = real_cuda.compile_ptx(k.py_func, sig, cc=cc)
            assert ".entry" in ptx, name
            if dtype == np.float32 and name not in _F64_BY_CONTRACT:
                bad = _F64_OP.findall(ptx)
                assert not bad, f"float32 {name} does float64 arithmetic: {bad[:5]}"
            if name in _PRODUCTS or name.endswith((".linear_fwd", ".linear_fwd_t")):
                assert ".local" not in ptx, f"{name} ({np.dtype(dtype).name}) uses local memory"
            if ptxas:
                report = assemble(ptxas, ptx, cc, tmp_path / f"{name}_{np.dtype(dtype).name}.ptx")
                if name in _PRODUCTS or name.endswith((".linear_fwd", ".linear_fwd_t")):
                    assert "0 bytes spill stores" in report, f"{name}: {report}"


def test_loss_and_norm_kernels_of_both_targets_compile_the_registry_bodies():
    """One body per op (issue 13): the CPU kernels and the CUDA kernels compile the loss
    registry's row functions (softmax cross-entropy: its three phases) and the normalisation
    registry's bodies (the statistics, LayerNorm's rows, BatchNorm's input-gradient element
    and running update too), not copies."""
    from fastbp.kernels import losses as cpu_l, norm as cpu_n
    from fastbp.kernels.cuda import losses as gpu_l, norm as gpu_n
    from fastbp.registry import losses as RL, norms as RN
    shared = [(RL, cpu_l, gpu_l, n) for n in ("mse_row", "bce_logits_row", "poisson_row", "svm_row",
                                              "xent_shift_row", "xent_prob", "xent_finish_row")]
    shared += [(RN, cpu_n, gpu_n, n) for n in ("norm_mean", "norm_rstd", "norm_affine", "norm_dx", "ln_fwd_row",
                                              "ln_dx_row", "bn_dx", "bn_factor", "bn_running")]
    for reg, cpu, gpu, name in shared:
        body = getattr(reg, name).__code__
        for mod in (cpu, gpu):
            assert getattr(mod, "_" + name).py_func.__code__ is body, f"{mod.__name__}._{name}"
    # the bodies that call bodies call that target's compilations of them
    calls = {"ln_fwd_row": ("norm_mean", "norm_rstd", "norm_affine"), "ln_dx_row": ("norm_mean", "norm_dx"),
             "bn_dx": ("norm_dx",)}
    for name, callees in calls.items():
        for mod in (cpu_n, gpu_n):
            seen = getattr(mod, "_" + name).py_func.__globals__
            for c in callees:
                assert seen["_" + c] is getattr(mod, "_" + c), f"{mod.__name__}._{name} -> _{c}"
