"""The counter-based generator of dropout masks: one scalar body for CPU and CUDA.

A dropout mask element is a pure function of ``(seed, layer, step, index)``
-- no generator state -- so a step is reproducible, resumable from a
checkpoint bitwise, the same at any thread count and the same on the CPU and
the GPU:

* ``key = stream_key(seed, layer, step)``: the 32-bit seed of the step's
  ``layer``-th dropout (``step``: updates applied so far, ``hyper[H_STEPS]``);
* ``bits = element_bits(key, index)``: 32 random bits of element ``index``
  (the row-major flat index ``row * cols + col`` in the minibatch, ``row``
  counted in the global minibatch: a data-parallel rank adds its offset);
* the element is kept when ``(bits >> 8) * 2**-24 < 1 - p`` (a 24-bit uniform
  in [0, 1), exact in float32 and float64), tested in integers as
  ``bits >> 8 < ceil((1 - p) 2**24)`` (:func:`keep_threshold`).

The mixing function is Chris Wellons' ``lowbias32`` (a bijective 32-bit
integer hash: xor-shift, multiply, xor-shift, multiply, xor-shift), chained
over the 32-bit words of the keys.  Every value is a 32-bit word held in a
``uint64`` and masked after each multiplication, so the same Python body
runs bit-exactly as numba CPU code, as CUDA device code, under the CUDA
simulator (numpy ``uint64`` scalars: a 32x32-bit product never overflows)
and vectorised in numpy (the tests' reference).

The functions here are templates: :func:`stream_key` and
:func:`element_bits` call the mixing function through the global ``_mix``,
which :func:`fastbp.kernels.dropout` (CPU) and
:mod:`fastbp.kernels.cuda.dropout` bind to their target's compilation of
:func:`mix32` (:func:`fastbp.kernels.factory.specialise`).  As plain Python
they run with ``_mix = mix32``.
"""
import math

import numpy as np

M32 = np.uint64(0xFFFFFFFF)
_S8 = np.uint64(8)
_S15 = np.uint64(15)
_S16 = np.uint64(16)
_S32 = np.uint64(32)
_C1 = np.uint64(0x7FEB352D)
_C2 = np.uint64(0x846CA68B)
#: salts of the chained words (the golden ratio's and two odd 32-bit constants)
_K0 = np.uint64(0x9E3779B9)
_K1 = np.uint64(0x85EBCA6B)
_K2 = np.uint64(0xC2B2AE35)
#: 2**-24: the 24 high bits of a word as a uniform in [0, 1)
INV_2_24 = 1.0 / 16777216.0


def mix32(x):
    """lowbias32: a bijective hash of a 32-bit word ``x`` (a ``uint64`` below 2**32)."""
    x = x ^ (x >> _S16)
    x = (x * _C1) & M32
    x = x ^ (x >> _S15)
    x = (x * _C2) & M32
    x = x ^ (x >> _S16)
    return x


def stream_key(seed, layer, step):
    """The 32-bit key of dropout ``layer`` at update ``step`` under ``seed``
    (all three non-negative int64; ``seed`` below 2**32, ``layer`` below 2**32)."""
    h = _mix((np.uint64(seed) & M32) ^ _K0)  # noqa: F821 - injected (plain Python: mix32)
    h = _mix(h ^ (np.uint64(layer) & M32) ^ _K1)  # noqa: F821
    s = np.uint64(step)
    h = _mix(h ^ (s & M32))  # noqa: F821
    h = _mix(h ^ ((s >> _S32) & M32) ^ _K2)  # noqa: F821
    return h


def element_bits(key, index):
    """32 random bits of element ``index`` (non-negative int64) of the stream ``key``."""
    i = np.uint64(index)
    h = _mix(key ^ (i & M32))  # noqa: F821 - injected
    h = _mix(h ^ ((i >> _S32) & M32) ^ _K1)  # noqa: F821
    return h


def keep_threshold(q):
    """The integer form of the test ``u < q`` (``q = 1 - p``, float64): an element is kept
    when its 24 high bits, as an integer ``n``, are below ``ceil(q 2**24)`` (a ``uint64``
    in [0, 2**24]).

    Exact: ``u = n 2**-24`` and scaling by a power of two does not round, so
    ``u < q`` if and only if ``n < q 2**24``, and for an integer ``n`` if and only
    if ``n < ceil(q 2**24)``.  The kernels compare integers (no integer -> float
    conversion per element: AVX2 has none for 64-bit integers, so the loop would
    convert one lane at a time)."""
    if q <= 0.0:
        return np.uint64(0)
    if q >= 1.0:
        return np.uint64(16777216)
    return np.uint64(math.ceil(q * 16777216.0))


def keep(key, index, threshold):
    """Whether element ``index`` of the stream ``key`` is kept: its uniform is below
    ``q = 1 - p``, tested as ``bits >> 8 < threshold``, ``threshold = keep_threshold(q)``."""
    return (_bits(key, index) >> _S8) < threshold  # noqa: F821 - injected (element_bits)


_mix = mix32
_bits = element_bits


def seed_key(seed):
    """The 32-bit dropout seed of a step seeded with ``seed`` (int; None: fresh entropy).

    Derived through :class:`numpy.random.SeedSequence` (salted), so any
    non-negative integer seed maps to a well-mixed key, independent of the
    streams that seed the initial weights and the shuffles.
    """
    ss = np.random.SeedSequence(None if seed is None else [int(seed), 0x64726F70])
    return int(ss.generate_state(1, dtype=np.uint32)[0])
