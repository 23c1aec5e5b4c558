"""bfloat16 kernels of ``precision="bf16"``: rounding float32 to bf16, and the bf16 product.

A bf16 matrix lives in a float32 buffer of the arena, two values per float32
element (little-endian: column ``2j`` in the low half of element ``j``): an
``(r, c)`` bf16 matrix takes an ``(r, ceil(c / 2))`` float32 buffer and has a
leading dimension of ``2 * ceil(c / 2)``.  No other module reads those bits.

Imported by :func:`fastbp._bf16.require` only (it registers the native kernels
after loading oneDNN, whose gemm the product calls under :data:`GEMM_SYM`).
"""
import numpy as np
from numba import types

from .._jit import jit
from .._native import native_kernel
from ..config import BF16_THREADS_MIN_MACS, BLAS_MIN_MACS
from .gemm import empty_product
from .table import K_MM_BF16, K_TO_BF16, NONE, B, I64, a2

#: the symbol name the product calls oneDNN's ``dnnl_gemm_bf16bf16f32`` by
#: (registered by :func:`fastbp._bf16.require`)
GEMM_SYM = "fastbp_dnnl_gemm_bf16bf16f32"

# dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, N, K, float alpha,
#     const bfloat16 *A, dnnl_dim_t lda, const bfloat16 *B, dnnl_dim_t ldb, float beta,
#     float *C, dnnl_dim_t ldc): row-major
_i = types.int64
_gemm = types.ExternalFunction(
    GEMM_SYM, types.int32(types.int8, types.int8, _i, _i, _i, types.float32, types.uintp, _i,
                          types.uintp, _i, types.float32, types.uintp, _i))
#: OpenMP's thread count (libgomp: the runtime oneDNN's wheel uses), registered likewise
OMP_SET_SYM = "fastbp_omp_set_num_threads"
OMP_GET_SYM = "fastbp_omp_get_max_threads"
_omp_set = types.ExternalFunction(OMP_SET_SYM, types.void(types.intc))
_omp_get = types.ExternalFunction(OMP_GET_SYM, types.intc())
_N = np.int8(ord("N"))
_T = np.int8(ord("T"))


@jit(inline=True)
def bf16_bits(v):
    """The bfloat16 nearest to the float32 ``v`` (ties to even), as its 16 bits in a
    uint32; a NaN stays a (quiet) NaN of the same sign, infinities stay infinite,
    finite values past bf16's largest round to infinity as IEEE rounding does."""
    u = np.uint32(np.float32(v).view(np.uint32))
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return (u >> np.uint32(16)) | np.uint32(0x40)
    return (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@jit
def _to_bf16(src, dst):
    """Round the float32 matrix ``src`` (r, c) to bf16 into ``dst`` (r, ceil(c / 2)),
    two values per element, column ``2j`` in the low half of ``dst[i, j]``
    (:func:`bf16_bits`).  An odd ``c`` leaves the last element's high half as it was
    (no product reads it).

    Not differentiated: the products that read ``dst`` stand for products of
    ``src`` (their derivatives are taken as the float32 products')."""
    d = dst.view(np.uint16)       # (r, 2 ceil(c / 2)): bf16 j of row i is d[i, j]
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            d[i, j] = np.uint16(bf16_bits(src[i, j]))


@jit(inline=True)
def bf16_at(M, i, j):
    """Element ``(i, j)`` of a bf16 matrix seen as uint32 pairs (:func:`_to_bf16`), as float32."""
    w = M[i, j >> 1]
    bits = (w >> np.uint32(16)) if (j & 1) else (w & np.uint32(0xFFFF))
    return np.uint32(bits << np.uint32(16)).view(np.float32)


@jit
def _mm_small_bf16(A, B_, C, ta, tb, acc, k):
    """:func:`_mm_bf16` in plain loops (float32 accumulation), for products of a
    few thousand multiply-adds at most, where a library call costs more."""
    a = A.view(np.uint32)
    b = B_.view(np.uint32)
    for i in range(C.shape[0]):
        for j in range(C.shape[1]):
            s = np.float32(0.0)
            for p in range(k):
                s += (bf16_at(a, p, i) if ta else bf16_at(a, i, p)) * (bf16_at(b, j, p) if tb else bf16_at(b, p, j))
            C[i, j] = C[i, j] + s if acc else s


@jit
def _mm_bf16(A, B_, C, ta, tb, acc, k):
    """``C (+)= op(A) @ op(B)`` with ``A`` and ``B`` bf16 matrices (:func:`_to_bf16`'s
    layout: each a float32 buffer of half the columns) and ``C`` float32, with
    float32 accumulation; ``k`` the inner dimension; ``op`` transposes when
    ``ta``/``tb``.  The derivative it stands for is the float32 product's
    (``d(AB) = dA B + A dB``); the rounding of the operands is not differentiated.

    Through oneDNN's ``dnnl_gemm_bf16bf16f32``, on one OpenMP thread below
    ``config.BF16_THREADS_MIN_MACS`` multiply-adds (the count restored after),
    in plain loops below ``config.BLAS_MIN_MACS``.  A oneDNN error (none for
    valid shapes) leaves ``C`` as it was."""
    m = C.shape[0]
    n = C.shape[1]
    if empty_product(C, k, acc):
        return
    macs = m * n * k
    if macs < BLAS_MIN_MACS:
        _mm_small_bf16(A, B_, C, ta, tb, acc, k)
        return
    beta = np.float32(1.0) if acc else np.float32(0.0)
    prev = 0
    if macs < BF16_THREADS_MIN_MACS:
        prev = _omp_get()
        if prev > 1:
            _omp_set(1)
    _gemm(_T if ta else _N, _T if tb else _N, m, n, k, np.float32(1.0), A.ctypes.data, 2 * A.shape[1],
          B_.ctypes.data, 2 * B_.shape[1], beta, C.ctypes.data, n)
    if prev > 1:
        _omp_set(prev)


native_kernel(K_TO_BF16, _to_bf16, NONE, lambda d: (a2(d), a2(d)))
native_kernel(K_MM_BF16, _mm_bf16, NONE, lambda d: (a2(d), a2(d), a2(d), B, B, B, I64))
