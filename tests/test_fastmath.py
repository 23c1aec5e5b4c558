"""The vectorisable float32 exp/erf/log1p of fastbp.registry.fastmath: ulp error, compiled,
against float64 references, special values, and the vectorised loop (no libm call).

The module docstring states the bounds measured over every float32 of a range (2e9
values for exp); this test checks them on a dense sample (a few seconds)."""
import math
import re

import numba
import numpy as np
import pytest

from fastbp.registry import activations as _acts
from fastbp.registry import fastmath as FM

special = pytest.importorskip("scipy.special")


@numba.njit
def _run_exp(x, y):
    for i in range(x.shape[0]):
        y[i] = FM.exp(x[i])


@numba.njit
def _run_erf(x, y):
    for i in range(x.shape[0]):
        y[i] = FM.erf(x[i])


@numba.njit
def _run_log1p(x, y):
    for i in range(x.shape[0]):
        y[i] = FM.log1p(x[i])


@numba.njit
def _run_tanh(x, y):
    for i in range(x.shape[0]):
        y[i] = FM.tanh(x[i])


@numba.njit
def _run_expm1(x, y):
    for i in range(x.shape[0]):
        y[i] = FM.expm1(x[i])


_sigmoid = numba.njit(_acts.sigmoid)


@numba.njit
def _run_sigmoid(x, y):
    for i in range(x.shape[0]):
        y[i] = _sigmoid(x[i])


def _sigmoid_ref(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


RUN = {"exp": (_run_exp, np.exp), "erf": (_run_erf, special.erf), "log1p": (_run_log1p, np.log1p),
       "tanh": (_run_tanh, np.tanh), "sigmoid": (_run_sigmoid, _sigmoid_ref), "expm1": (_run_expm1, np.expm1),
       "expm1+": (_run_expm1, np.expm1)}
#: (sample range, max ulp) -- the docstrings' measured maxima, rounded up (expm1: x <= 0, ELU's
#: branch, and x > 0)
BOUND = {"exp": ((-87.3, 88.7), 1.25), "erf": ((-4.5, 4.5), 0.54), "log1p": ((0.0, 1.0), 2.0),
         "tanh": ((-12.0, 12.0), 1.6), "sigmoid": ((-30.0, 30.0), 2.45), "expm1": ((-104.0, 0.0), 1.4),
         "expm1+": ((0.0, 88.7), 2.2)}


def _ulps(got, want):
    w32 = want.astype(np.float32)
    sp = np.maximum(np.spacing(np.abs(w32)).astype(np.float64), np.spacing(np.float32(0)))
    return np.abs(got.astype(np.float64) - want) / sp


def _every_float32(lo, hi, step=1):
    a, b = np.array([lo, hi], np.float32).view(np.int32)
    return np.arange(a, b + 1, step, dtype=np.int32).view(np.float32)


@pytest.mark.parametrize("name", list(RUN))
def test_float32_ulp_error_within_the_documented_bound(name):
    run, ref = RUN[name]
    (lo, hi), bound = BOUND[name]
    rng = np.random.default_rng(0)
    parts = [rng.uniform(lo, hi, 2 * 10 ** 5).astype(np.float32),
             _every_float32(max(lo, 0.5), min(hi, 1.5), 31),         # around the branch points
             _every_float32(max(lo, 2.0 ** -12), min(hi, 2.0 ** -11))]
    if lo < 0:
        parts.append(-_every_float32(2.0 ** -3, min(-lo, 4.0), 401))
    x = np.concatenate(parts)
    y = np.empty_like(x)
    run(x, y)
    u = _ulps(y, ref(x.astype(np.float64)))
    assert u.max() <= bound, f"{name}: {u.max():.2f} ulp at {x[np.argmax(u)]!r}"
    assert u.max() > 0.3          # the sweep does measure the polynomial (not exact libm results)


def test_float32_expm1_keeps_its_relative_accuracy_near_zero():
    """ELU's ``alpha * expm1(x)``: ``exp(x) - 1`` in float32 cancelled near 0 (19% off at
    -1e-7, 0 at -4.5e-13); the polynomial keeps every binade down to the subnormals within
    the bound, and -0.0 its sign (as PyTorch's float32 ELU)."""
    rng = np.random.default_rng(2)
    x = np.concatenate([s * np.exp2(rng.uniform(-149, -0.6, 4 * 10 ** 5)) for s in (1.0, -1.0)]).astype(np.float32)
    x = x[x != 0]
    y = np.empty_like(x)
    _run_expm1(x, y)
    u = _ulps(y, np.expm1(x.astype(np.float64)))
    assert u.max() <= 1.4, f"{u.max():.2f} ulp at {x[np.argmax(u)]!r}"
    v = np.array([-0.0, 0.0, np.nan, np.inf, -np.inf, -4.5e-13, -1e-7], np.float32)
    w = np.empty_like(v)
    _run_expm1(v, w)
    assert np.signbit(w[0]) and w[1] == 0.0 and not np.signbit(w[1]) and np.isnan(w[2])
    assert w[3] == np.inf and w[4] == -1.0
    np.testing.assert_allclose(w[5:], np.expm1(v[5:].astype(np.float64)), rtol=1e-7)


def test_special_values_and_float64_is_libm():
    x = np.array([np.nan, np.inf, -np.inf, 88.73, 89.0, 1e4, -104.0, -1e4, 0.0, -0.0, 1.0, -1.0], np.float32)
    y = np.empty_like(x)
    _run_exp(x, y)
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == 0.0 and y[3] == np.inf and y[4] == np.inf
    assert y[5] == np.inf and y[6] == 0.0 and y[7] == 0.0 and y[8] == 1.0 and y[9] == 1.0
    assert abs(y[10] - np.float32(math.e)) <= np.spacing(np.float32(math.e))
    e32 = y[10]
    _run_erf(x, y)
    assert np.isnan(y[0]) and y[1] == 1.0 and y[2] == -1.0 and y[3] == 1.0 and y[7] == -1.0
    assert y[8] == 0.0 and np.signbit(y[9]) and y[10] == -y[11]
    v = np.array([np.nan, 0.0, 1.0, 1e-30], np.float32)
    w = np.empty_like(v)
    _run_log1p(v, w)
    assert np.isnan(w[0]) and w[1] == 0.0 and w[3] == np.float32(1e-30)
    _run_tanh(x, y)
    assert np.isnan(y[0]) and y[1] == 1.0 and y[2] == -1.0 and y[5] == 1.0 and y[7] == -1.0
    assert y[8] == 0.0 and np.signbit(y[9]) and y[10] == -y[11]
    # float64: libm, bitwise
    x64 = np.random.default_rng(1).standard_normal(1000) * 10
    y64 = np.empty_like(x64)
    _run_exp(x64, y64)
    assert y64.tolist() == [math.exp(t) for t in x64]
    _run_erf(x64, y64)
    assert y64.tolist() == [math.erf(t) for t in x64]
    _run_tanh(x64, y64)
    assert y64.tolist() == [math.tanh(t) for t in x64]
    # called from Python on a numpy float32: the same float32 computation
    assert FM.exp(np.float32(1.0)) == e32


@numba.njit(fastmath={"reassoc", "contract", "arcp"})
def _loop_exp(x, y):
    for i in range(x.shape[0]):
        y[i] = FM.exp(x[i])


def test_float32_loop_has_no_libm_call():
    """The float32 loop calls no expf/erff (the polynomial is inlined; on x86 it is vectorised)."""
    x = np.ones(16, np.float32)
    _loop_exp(x, np.empty_like(x))
    asm = next(iter(_loop_exp.inspect_asm().values()))
    assert not re.search(r"\b(expf|erff|log1pf|exp|erf)\b", asm)


def test_div_is_ieee_division():
    assert FM.div(np.float32(1.0), np.float32(0.0)) == np.inf
    assert FM.div(-1.0, 0.0) == -np.inf and math.isnan(FM.div(0.0, 0.0))


_FL = {"reassoc", "contract", "arcp"}       # fastbp's kernel flags (fastbp._jit.FASTMATH)
_gelu = numba.njit(inline="always", fastmath=_FL)(_acts.gelu)
_d_silu = numba.njit(inline="always", fastmath=_FL)(_acts.d_silu)


@numba.njit(fastmath=_FL)
def _loop_gelu(x, y):
    for i in range(x.shape[0]):
        y[i] = _gelu(x[i])


@numba.njit(fastmath=_FL)
def _loop_d_silu(x, y):
    for i in range(x.shape[0]):
        y[i] *= _d_silu(x[i])


_tanh = numba.njit(inline="always", fastmath=_FL)(_acts.tanh)
_sigmoid_i = numba.njit(inline="always", fastmath=_FL)(_acts.sigmoid)


@numba.njit(fastmath=_FL)
def _loop_tanh(x, y):
    for i in range(x.shape[0]):
        y[i] = _tanh(x[i])


@numba.njit(fastmath=_FL)
def _loop_sigmoid(x, y):
    for i in range(x.shape[0]):
        y[i] = _sigmoid_i(x[i])


def test_float32_activation_loop_is_vectorised_without_libm():
    """A float32 loop over GELU's forward (erf and exp through the polynomials) and over SiLU's
    derivative (exp and divisions), inlined as in the kernels (whose cached compilations have
    no assembly to inspect), calls no libm function; on x86 it uses packed instructions."""
    import platform
    x = np.linspace(-3, 3, 256, dtype=np.float32)
    for loop in (_loop_gelu, _loop_d_silu, _loop_tanh, _loop_sigmoid):
        loop(x, x.copy())
        asm = next(iter(loop.inspect_asm().values()))
        assert not re.search(r"\b(expf|erff|log1pf|tanhf|exp|erf|log1p|tanh)\b", asm), loop
        if platform.machine() in ("x86_64", "AMD64"):
            assert re.search(r"\bv?(mul|add|fmadd\d*)ps\b", asm), f"{loop}: no packed float32 arithmetic"
