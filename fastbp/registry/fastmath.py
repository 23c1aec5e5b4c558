"""Scalar ``exp``, ``erf``, ``tanh`` and ``log1p`` that vectorise: the activations' transcendental functions.

numba turns ``math.exp(x)`` of a float32 in a loop into a call of libm's
``expf`` per element (no SVML in fastbp's builds: checked with
``inspect_asm``, the loop stays scalar with one ``call expf`` per element).
The functions below are the same math as branch-free arithmetic on one
number -- range reduction, a polynomial, a power of two made from its bits
-- which LLVM inlines and vectorises like any other loop body, and which
numba-cuda compiles unchanged as device functions (a CPU dispatcher called
from a CUDA kernel is compiled for the GPU).  They also run as plain Python
on numpy scalars.

float32 arguments take the polynomial; float64 arguments call libm
(``math.exp``/``math.erf``/``math.tanh``/``math.log1p``: a float64 polynomial within 2
ulp would need more terms than it saves).  The choice is made at compile
time (``_is_f32`` folds to a constant per type).

Measured accuracy of the float32 paths, compiled, against float64 numpy/scipy
references (``tests/test_fastmath.py`` checks bounds on a sample of them):

* :func:`exp`:   max 1.22 ulp over every float32 in [-87.3, 88.7] (2.2e9
  values: the range with a normal result) and over 1e7 uniform samples;
  ``exp(+inf) = inf``, ``exp(-inf) = 0``, ``exp(x > 88.73) = inf``, NaN stays NaN.
* :func:`erf`:   max 2.65 ulp (at 0.97874) over every float32 in
  [2^-10, 4.5] (1.0e8 values), 1e7 uniform samples in [-5, 5] and 1e7
  samples of magnitude down to 1e-13; exactly +-1 beyond 3.92; NaN stays NaN.
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
``erf(a) = a P(a^2)`` for ``|a| <= 1`` and ``1 - exp(Q(|a|))`` above, ``P``
(degree 6 in ``a^2``) and ``Q`` (degree 9, ``Q ~ log erfc``) fitted by
iteratively reweighted least squares toward the minimax polynomial
(relative error of P 1.2e-9, absolute error of Q 9e-9 on [0.9, 4]).
``log1p(v) = 2 atanh(s)``, ``s = v / (2 + v)``, by its series to ``s^17``.
``tanh(x) = x + x^3 P(x^2)`` (its Taylor series to ``x^17``) for ``|x| < 0.55``
(``x`` itself below ``2^-12``), ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` above.

These functions are compiled without fast-math flags: reassociation would
fold the two-part ``ln2`` back into one constant and lose the reduction's
precision.  LLVM still inlines them into the (fast-math) kernels.  :func:`div`
is the division the activations use: IEEE, without the zero-divisor test
that numba's default (Python) error model puts before every ``/`` and that
keeps a loop from vectorising.
"""
import math

import numpy as np

import numba

from .._jit import _CACHE

__all__ = ["exp", "expm1", "erf", "tanh", "log1p", "div"]

#: the functions' compilation flags: no fast-math (see the module docstring) and numpy's
#: error model: ``a / b`` is IEEE division (``b == 0`` gives inf or NaN) without the
#: ZeroDivisionError test of Python's model, a branch that keeps loops from vectorising
_scalar = numba.njit(cache=_CACHE, fastmath=False, nogil=True, error_model="numpy")

# ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits: k * LN2_HI is exact for |k| <= 2^15
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_LOG2E = 1.44269504088896341

# erf(a) / a = P(a^2) on [0, 1]
_ERF_P = (1.1283791657436995, -0.37612625873091865, 0.11283585540772467, -0.026853825338855802,
          0.005188349908830769, -0.000801037037051977, 7.854401950553591e-05)
# log(erfc(a)) = Q(a - 2.5) on [0.9, 4]
_ERFC_Q = (-7.8068152784633496, -5.352680703775408, -0.9438936163688671, -0.010858394015726247,
           0.0021651002319106327, -0.0004203257819354045, 7.744114984875594e-05, -1.320976376750771e-05,
           1.6029686942253818e-06, -1.8397753542842565e-08)


@_scalar
def _pow2(k):
    """``2.0 ** k`` as float32 for an int32 ``k`` in [-126, 127], from its bits."""
    return np.int32((k + np.int32(127)) << np.int32(23)).view(np.float32)


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
    k = np.int32(tk + f(256.5)) - np.int32(256)
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
    k1 = k >> np.int32(1)
    return (p * _pow2(k1)) * _pow2(k - k1)


@_scalar
def _erff(x):
    """erf of a float32 (see the module docstring)."""
    f = type(x)
    a = abs(x)
    a2 = a * a
    # |x| <= 1: x P(x^2)
    p = f(_ERF_P[6])
    p = p * a2 + f(_ERF_P[5])
    p = p * a2 + f(_ERF_P[4])
    p = p * a2 + f(_ERF_P[3])
    p = p * a2 + f(_ERF_P[2])
    p = p * a2 + f(_ERF_P[1])
    p = p * a2 + f(_ERF_P[0])
    small = x * p
    # |x| > 1: 1 - exp(Q(|x|)), |x| clamped to 4 (erf = 1 in float32 beyond 3.92)
    u = (f(4.0) if a > f(4.0) else a) - f(2.5)
    q = f(_ERFC_Q[9])
    q = q * u + f(_ERFC_Q[8])
    q = q * u + f(_ERFC_Q[7])
    q = q * u + f(_ERFC_Q[6])
    q = q * u + f(_ERFC_Q[5])
    q = q * u + f(_ERFC_Q[4])
    q = q * u + f(_ERFC_Q[3])
    q = q * u + f(_ERFC_Q[2])
    q = q * u + f(_ERFC_Q[1])
    q = q * u + f(_ERFC_Q[0])
    big = f(1.0) - _expf(q)
    big = -big if x < 0 else big
    # NaN: a > 1 is False -> small = NaN * p = NaN
    return big if a > f(1.0) else small


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
def expm1(x):
    """``exp(x) - 1`` in ``x``'s type: the float32 polynomial minus 1 (vectorisable), libm's
    ``expm1`` for float64 (exact near 0, as PyTorch's ELU: ``exp(x) - 1`` cancels there)."""
    if type(x)(16777217.0) == type(x)(16777216.0):
        return _expf(x) - type(x)(1.0)
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
