"""Scalar ``exp``, ``erf``, ``tanh`` and ``log1p`` that vectorise: the activations' transcendental functions.

numba turns ``math.exp(x)`` of a float32 in a loop into a call of libm's
``expf`` per element (no SVML in fastbp's builds: checked with
``inspect_asm``, the loop stays scalar with one ``call expf`` per element).
The functions below are the same math as branch-free arithmetic on one
number -- range reduction, a polynomial, a power of two made from its bits
-- which LLVM inlines and vectorises like any other loop body, and which
numba-cuda compiles unchanged as device functions (a CPU dispatcher called
from a CUDA kernel is compiled for the GPU) -- except float32 ``erf``, whose
float64 evaluation is the CPU's only: on a GPU it is libdevice's ``erff``
(an overload per target), so that float32 kernels do no float64 arithmetic.
They also run as plain Python on numpy scalars.

float32 arguments take the polynomial; float64 arguments call libm
(``math.exp``/``math.erf``/``math.tanh``/``math.log1p``: a float64 polynomial within 2
ulp would need more terms than it saves).  The choice is made at compile
time (``_is_f32`` folds to a constant per type).

Measured accuracy of the float32 paths, compiled, against float64 numpy/scipy
references (``tests/test_fastmath.py`` checks bounds on a sample of them):

* :func:`exp`:   max 1.22 ulp over every float32 in [-87.3, 88.7] (2.2e9
  values: the range with a normal result) and over 1e7 uniform samples;
  ``exp(+inf) = inf``, ``exp(-inf) = 0``, ``exp(x > 88.73) = inf``, NaN stays NaN.
* :func:`erf`:   max 0.531 ulp (at 2.87902) over every float32 from the
  smallest subnormal to 4.5 (1.08e9 values; odd by construction, checked on
  all of them); exactly +-1 from 3.92 on; NaN stays NaN.
* :func:`log1p`: max 1.97 ulp over every float32 in [2^-10, 1] (8.4e7
  values; the activations use it on ``exp(-|z|)`` in (0, 1]).
* :func:`tanh`:  max 1.57 ulp (at 0.85641) over every float32 in [2^-30, 12]
  (2.8e8 values; odd by construction); ``tanh(+-inf) = +-1``, ``-0.0`` kept,
  NaN stays NaN.  The sigmoid activation, ``1 / (1 + e)`` or ``e / (1 + e)``
  with ``e = exp(-|x|)`` through :func:`exp`: max 2.4 ulp over every float32
  of magnitude in [2^-30, 110].

LLVM output (``inspect_asm`` of a float32 loop, AVX2 machine): with
``math.exp`` the loop calls ``expf`` once per element through a register and
uses no vector arithmetic; with :func:`exp` it is vectorised (ymm registers)
with no call at all; the same holds for :func:`erf`.

Rounding: Cody-Waite reduction ``x = k ln2 + r``, ``|r| <= ln2 / 2`` with
``ln2`` split in two float32 parts; ``exp(r)`` by its Taylor polynomial of
degree 7 (truncation < 0.1 ulp); ``2^k`` as two factors ``2^(k//2) 2^(k - k//2)``
built from their bits (so ``k`` from -150 to 128 needs no special case).
``erf(x) = x P(x^2) / Q(x^2)`` on ``|x| <= 3.92`` (``x`` clamped there), one
rational function of degrees 6 and 5 in ``x^2`` fitted by iteratively reweighted
linearised least squares toward the minimax (relative error 1.8e-9), evaluated in
float64 from the float32 argument and rounded once: in float32 arithmetic the
rounding of its terms reached 7 ulp; in float64 the loop is still vectorised (4
lanes, one division per element) and about 2.3 times as fast as
the former float32 ``a P(a^2)`` / ``1 - exp(Q(a))`` pair, which computed both
branches and an ``exp`` for every element (measured on 256 x 512 values: 236 us
against 542 us).
``log1p(v) = 2 atanh(s)``, ``s = v / (2 + v)``, by its series to ``s^17``.
``tanh(x) = x + x^3 P(x^2)`` (its Taylor series to ``x^17``) for ``|x| < 0.55``
(``x`` itself below ``2^-12``), ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` above.

These functions are compiled without fast-math flags: reassociation would
fold the two-part ``ln2`` back into one constant and lose the reduction's
precision.  LLVM still inlines them into the (fast-math) kernels.  :func:`div`
is the division the activations use: IEEE, without the zero-divisor test
that numba's default (Python) error model puts before every ``/`` and that
keeps a loop from vectorising; :func:`log` is libm's, with the same IEEE results on every
target (the pow gate's).
"""
import math

import numpy as np

import numba
from numba.core.extending import overload as _overload

from .._jit import _CACHE

__all__ = ["exp", "expm1", "erf", "tanh", "log1p", "div", "log"]

#: the functions' compilation flags: no fast-math (see the module docstring) and numpy's
#: error model: ``a / b`` is IEEE division (``b == 0`` gives inf or NaN) without the
#: ZeroDivisionError test of Python's model, a branch that keeps loops from vectorising
_scalar = numba.njit(cache=_CACHE, fastmath=False, nogil=True, error_model="numpy")

# ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits: k * LN2_HI is exact for |k| <= 2^15
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_LOG2E = 1.44269504088896341

# erf(x) = x P(x^2) / Q(x^2) on [0, 3.92], evaluated in float64: a rational fit (degrees 6 and 5
# in x^2) by iteratively reweighted linearised least squares toward the minimax (Lawson);
# relative error 1.8e-9 in exact arithmetic
_ERF_P = (1.1283791691441296, 0.18513530656624289, 0.054243983711838646, 0.003838622907327291,
          0.0003767588529660624, 4.609230534513237e-06, -1.2799780001045753e-08)
_ERF_Q = (1.0, 0.4974052997984808, 0.11387376570658478, 0.015430048264205562, 0.0013015248038695617,
          6.239914447442847e-05)
# beyond 3.92 (erfc < 2^-25) erf rounds to +-1 in float32
_ERF_CLAMP = 3.92


@_scalar
def _pow2(k):
    """``2.0 ** k`` as float32 for an int32 ``k`` in [-126, 127], from its bits."""
    return np.int32(np.int32(k + np.int32(127)) << np.int32(23)).view(np.float32)


@_scalar
def _expf(x):
    """exp of a float32 (see the module docstring)."""
    f = type(x)
    # clamp (NaN-preserving: NaN > c is False); exp(89) overflows, exp(-104) rounds to 0
    xc = f(89.0) if x > f(89.0) else x
    xc = f(-104.0) if xc < f(-104.0) else xc
    t = xc * f(_LOG2E)
    # k = round(t), an int32 in [-150, 128]; NaN goes to -200 here (and stays NaN in r)
    tk = t if t > f(-200.0) else f(-200.0)
    # every integer step cast back to int32: numba widens int32 arithmetic to int64, and
    # int64 -> float32 has no AVX2 instruction (the loop converted one element at a time)
    k = np.int32(np.int32(tk + f(256.5)) - np.int32(256))
    kf = f(k)
    r = (xc - kf * f(_LN2_HI)) - kf * f(_LN2_LO)
    p = f(1.0 / 5040.0)
    p = p * r + f(1.0 / 720.0)
    p = p * r + f(1.0 / 120.0)
    p = p * r + f(1.0 / 24.0)
    p = p * r + f(1.0 / 6.0)
    p = p * r + f(0.5)
    p = p * r + f(1.0)
    p = p * r + f(1.0)
    k1 = np.int32(k >> np.int32(1))
    return (p * _pow2(k1)) * _pow2(np.int32(k - k1))


def _erff(x):
    """erf of a float32 (see the module docstring): one rational function, in float64.

    Plain Python (numpy scalars; the CUDA simulator runs it so) and, through the
    overloads below, the CPU's compilation.  On a GPU the compiled float32 ``erf``
    is libdevice's ``erff`` instead: float64 arithmetic runs at a fraction of the
    float32 rate there, and a float32 kernel does none (tests/test_cuda_kernels.py
    checks the PTX)."""
    xd = np.float64(x)
    # clamp to [-3.92, 3.92] (NaN-preserving: NaN > c is False), where the fit ends
    xc = _ERF_CLAMP if xd > _ERF_CLAMP else xd
    xc = -_ERF_CLAMP if xc < -_ERF_CLAMP else xc
    t = xc * xc
    p = _ERF_P[6]
    p = p * t + _ERF_P[5]
    p = p * t + _ERF_P[4]
    p = p * t + _ERF_P[3]
    p = p * t + _ERF_P[2]
    p = p * t + _ERF_P[1]
    p = p * t + _ERF_P[0]
    q = _ERF_Q[5]
    q = q * t + _ERF_Q[4]
    q = q * t + _ERF_Q[3]
    q = q * t + _ERF_Q[2]
    q = q * t + _ERF_Q[1]
    q = q * t + _ERF_Q[0]
    # odd by construction; -0.0 stays -0.0 (xc * p keeps the sign of zero)
    return type(x)((xc * p) / q)


@_overload(_erff, target="cpu", jit_options={"error_model": "numpy"})
def _erff_cpu(x):
    return _erff


try:        # numba-cuda present (and not the simulator, which runs the Python body above)
    @_overload(_erff, target="cuda")
    def _erff_cuda(x):
        def impl(x):
            return math.erf(x)      # libdevice erff: float32 arithmetic, 2 ulp
        return impl
except Exception:  # noqa: BLE001 - no CUDA target registered: nothing to overload
    pass


@_scalar
def _log1pf(v):
    """log(1 + v) of a float32 ``v > -1`` (accurate to 2 ulp on [0, 1], see the module docstring)."""
    f = type(v)
    s = v / (f(2.0) + v)
    s2 = s * s
    p = f(2.0 / 17.0)
    p = p * s2 + f(2.0 / 15.0)
    p = p * s2 + f(2.0 / 13.0)
    p = p * s2 + f(2.0 / 11.0)
    p = p * s2 + f(2.0 / 9.0)
    p = p * s2 + f(2.0 / 7.0)
    p = p * s2 + f(2.0 / 5.0)
    p = p * s2 + f(2.0 / 3.0)
    return s * f(2.0) + s * (s2 * p)


# tanh(x) = x + x^3 P(x^2) on |x| < 0.55: its Taylor series to x^17 (the next term is below
# 2^-27 of x there)
_TANH_P = (-1.0 / 3.0, 2.0 / 15.0, -17.0 / 315.0, 62.0 / 2835.0, -1382.0 / 155925.0, 21844.0 / 6081075.0,
           -929569.0 / 638512875.0, 6404582.0 / 10854718875.0)


@_scalar
def _tanhf(x):
    """tanh of a float32 (see the module docstring)."""
    f = type(x)
    a = abs(x)
    x2 = x * x
    p = f(_TANH_P[7])
    p = p * x2 + f(_TANH_P[6])
    p = p * x2 + f(_TANH_P[5])
    p = p * x2 + f(_TANH_P[4])
    p = p * x2 + f(_TANH_P[3])
    p = p * x2 + f(_TANH_P[2])
    p = p * x2 + f(_TANH_P[1])
    p = p * x2 + f(_TANH_P[0])
    small = x + x * (x2 * p)
    # below 2^-12, tanh(x) rounds to x; so does -0.0 (which the sum would make +0.0)
    small = x if a < f(0.000244140625) else small
    # |x| >= 0.55: (1 - e) / (1 + e), e = exp(-2|x|) <= 0.333 (no cancellation); e = 0 beyond
    # |x| = 52 gives exactly 1
    e = _expf(f(-2.0) * a)
    big = (f(1.0) - e) / (f(1.0) + e)
    big = -big if x < f(0.0) else big
    # NaN: a < 0.55 is False -> big, NaN through exp
    return small if a < f(0.55) else big


@_scalar
def exp(x):
    """``exp(x)`` in ``x``'s type: vectorisable polynomial for float32, libm for float64."""
    if type(x)(16777217.0) == type(x)(16777216.0):     # float32 (folds at compile time)
        return _expf(x)
    return math.exp(x)


@_scalar
def _expm1f(x):
    """expm1 of a float32 (see :func:`expm1`)."""
    f = type(x)
    # |x| < 0.7: the Taylor series to x^11/11! (the next term < 1e-9 relative), no cancellation
    p = f(1.0 / 39916800.0)
    p = p * x + f(1.0 / 3628800.0)
    p = p * x + f(1.0 / 362880.0)
    p = p * x + f(1.0 / 40320.0)
    p = p * x + f(1.0 / 5040.0)
    p = p * x + f(1.0 / 720.0)
    p = p * x + f(1.0 / 120.0)
    p = p * x + f(1.0 / 24.0)
    p = p * x + f(1.0 / 6.0)
    p = p * x + f(0.5)
    small = x + x * (x * p)
    # below 2^-25, expm1(x) rounds to x; so does -0.0 (which the sum would make +0.0)
    small = x if abs(x) < f(2.9802322387695312e-08) else small
    # beyond: exp(x) - 1 loses at most a bit (exp(-0.7) = 0.497); NaN: the comparison is False
    return small if abs(x) < f(0.7) else _expf(x) - f(1.0)


@_scalar
def expm1(x):
    """``exp(x) - 1`` in ``x``'s type without cancellation near 0 (as PyTorch's ELU): for
    float32 a vectorisable Taylor polynomial below ``|x| = 0.7`` and the float32 ``exp``
    minus 1 beyond: max 1.36 ulp for ``x <= 0`` (ELU's branch), 2.15 ulp above, over
    random float32s of every binade and a dense sweep of [-2, 2] (tests/test_fastmath.py);
    libm's ``expm1`` for float64."""
    if type(x)(16777217.0) == type(x)(16777216.0):
        return _expm1f(x)
    return math.expm1(x)


@_scalar
def erf(x):
    """``erf(x)`` in ``x``'s type: vectorisable for float32, libm for float64."""
    if type(x)(16777217.0) == type(x)(16777216.0):
        return _erff(x)
    return math.erf(x)


@_scalar
def tanh(x):
    """``tanh(x)`` in ``x``'s type: vectorisable for float32, libm for float64."""
    if type(x)(16777217.0) == type(x)(16777216.0):
        return _tanhf(x)
    return math.tanh(x)


@_scalar
def log1p(x):
    """``log(1 + x)`` in ``x``'s type for ``x`` in [0, 1]: vectorisable for float32, libm for float64."""
    if type(x)(16777217.0) == type(x)(16777216.0):
        return _log1pf(x)
    return math.log1p(x)


@_scalar
def div(a, b):
    """``a / b`` with IEEE semantics (``b == 0``: +-inf or NaN, never ZeroDivisionError).

    numba compiles ``/`` in the kernels with Python's error model: a test for a zero
    divisor and an exception path per division, which keeps the loop scalar.  The
    activations divide through this function, inlined as a plain division."""
    return a / b


@_scalar
def log(x):
    """``log(x)`` with IEEE semantics (-inf at 0, NaN below 0, never Python's ValueError: the
    CUDA simulator runs the registry's bodies as Python, calling this compiled function)."""
    return math.log(x)
