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
over the 32-bit words of the keys.  The bodies are written with six word
operations (:data:`WORD_OPS`: xor, xor-shift, multiply modulo 2**32, the
low and high word of an index, the 24-bit test), so the same Python bodies
run bit-exactly as numba CPU code, as CUDA device code, under the CUDA
simulator and in numpy (the tests' reference).

The functions here are templates: :func:`stream_key` and
:func:`element_bits` call the mixing function through the global ``_mix``,
:func:`keep` calls ``_bits``, and all of them call the word operations;
:mod:`fastbp.kernels.dropout` (CPU) and :mod:`fastbp.kernels.cuda.dropout`
bind these names to their target's compilations
(:func:`fastbp.kernels.factory.specialise`): on the CPU the word operations
are numba intrinsics on 32-bit integers (:mod:`fastbp.kernels.words`), on a
GPU the device compilation of the plain ones.  As plain Python they run with
``_mix = mix32`` and the plain word operations (words held in ``uint64``).
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


# The word operations the templates below are written with.  As plain Python they
# compute on 32-bit words held in numpy uint64 (a 32x32-bit product never overflows);
# the CPU kernel binds them to numba intrinsics on LLVM i32 (fastbp.kernels.words:
# numba would widen every operation to 64 bits, four lanes per AVX2 vector instead of
# eight), the GPU to their device compilation.  Bit for bit the same everywhere.
def _word(v):
    """The low 32 bits of a non-negative integer ``v``, as a word."""
    return np.uint64(v) & M32


def _high_word(v):
    """Bits 32..63 of a non-negative int64 ``v``, as a word."""
    return (np.uint64(v) >> _S32) & M32


def _xorw(a, b):
    """``a ^ b`` of two words."""
    return np.uint64(a) ^ np.uint64(b)


def _xorshift(x, s):
    """``x ^ (x >> s)`` of a word."""
    return x ^ (x >> s)


def _mulw(a, b):
    """``a * b`` modulo 2**32 of two words."""
    return (np.uint64(a) * np.uint64(b)) & M32


def _top24_below(bits, threshold):
    """``bits >> 8 < threshold``: the 24 high bits of the word ``bits`` below ``threshold``
    (an integer in [0, 2**24], :func:`keep_threshold`)."""
    return (np.uint64(bits) >> _S8) < np.uint64(threshold)


#: the word operations by the names the templates call them (plain Python)
WORD_OPS = {"_word": _word, "_high_word": _high_word, "_xorw": _xorw, "_xorshift": _xorshift,
            "_mulw": _mulw, "_top24_below": _top24_below}


def mix32(x):
    """lowbias32: a bijective hash of a 32-bit word ``x``."""
    x = _xorshift(x, _S16)
    x = _mulw(x, _C1)
    x = _xorshift(x, _S15)
    x = _mulw(x, _C2)
    return _xorshift(x, _S16)


def stream_key(seed, layer, step):
    """The 32-bit key of dropout ``layer`` at update ``step`` under ``seed``
    (all three non-negative int64; ``seed`` below 2**32, ``layer`` below 2**32)."""
    h = _mix(_xorw(_word(seed), _K0))  # noqa: F821 - injected (plain Python: mix32)
    h = _mix(_xorw(_xorw(h, _word(layer)), _K1))  # noqa: F821
    h = _mix(_xorw(h, _word(step)))  # noqa: F821
    return _mix(_xorw(_xorw(h, _high_word(step)), _K2))  # noqa: F821


def element_bits(key, index):
    """32 random bits of element ``index`` (non-negative int64) of the stream ``key``."""
    h = _mix(_xorw(key, _word(index)))  # noqa: F821 - injected
    return _mix(_xorw(_xorw(h, _high_word(index)), _K1))  # noqa: F821


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
    return _top24_below(_bits(key, index), threshold)  # noqa: F821 - _bits injected (element_bits)


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
