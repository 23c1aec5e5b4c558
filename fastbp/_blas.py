"""The BLAS behind fastbp's large matrix products, chosen once per process.

fastbp's compiled code calls one CBLAS ``sgemm``/``dgemm`` and one pair of
thread-count functions through fixed symbol names (``fastbp_cblas_sgemm``,
...).  This module finds a BLAS library, looks those functions up in it and
registers their addresses with LLVM under the fixed names, so the same
cached machine code links against whichever library this process chose.

Backends, in the order ``FASTBP_BLAS=auto`` (the default) tries them:

``mkl``
    Intel oneMKL's single dynamic library ``libmkl_rt`` (``pip install mkl``
    or ``pip install -e '.[mkl]'``, or a conda environment with MKL), through
    its ILP64 entry points ``cblas_sgemm_64``.  On the development machine
    (Intel Sapphire Rapids, 2 cores) it is 10-30 % faster than OpenBLAS on the
    products of every benchmark configuration.
``openblas``
    The ILP64 OpenBLAS that numpy's wheels bundle (``numpy.libs``), always
    present with numpy from PyPI.
``scipy``
    The LP64 OpenBLAS that scipy's wheels bundle, for a numpy without its own
    OpenBLAS.  Its 32-bit integer arguments are passed as 64-bit values,
    which the x86-64 and Linux AArch64 calling conventions make equivalent
    (products have fewer than 2**31 rows and columns); elsewhere it is not used.

Set ``FASTBP_BLAS`` to one of those names to insist on it (import fails
with a clear message if it cannot be loaded), to ``auto``, or to ``none``:
no BLAS at all, every product in fastbp's own loops (slow for large
products; for debugging and for machines whose BLAS misbehaves).  ``auto``
that finds no BLAS falls back to ``none`` with a ``RuntimeWarning``.

The thread functions let the fused step run a small product on one BLAS
thread and a large one on all of them (see :mod:`fastbp._executor`).

The backend's ``?axpy`` (``fastbp_cblas_saxpy``/``daxpy``) runs plain SGD's
update (``p += -lr g``) of a large model on the BLAS's threads, which its
products left awake and whose caches hold the weights (see
:data:`fastbp.config.SGD_AXPY_MIN_PARAMS`); only where :func:`axpy_exact`
finds that it gives the bits of fastbp's own SGD kernel.  Its ``?asum``
(``fastbp_cblas_sasum``/``dasum``) checks a large update's gradients for
NaN and infinities on those threads (see
:data:`fastbp.config.GRAD_ASUM_MIN_PARAMS`); only where
:func:`asum_propagates` finds that a NaN or an infinity anywhere makes the
sum non-finite.

With oneMKL, small products can also run through kernels that MKL generates
for one fixed shape (its "JIT GEMM": ``mkl_cblas_jit_create_sgemm``), which
skip the argument checks and dispatch of a ``cblas_sgemm`` call: 0.1-0.2 us
less per tiny product, up to a third of a 512x512x8 one (see
fastbp._executor.JIT_MAX_MACS for which products use them), ~1.3 us of a
5-product tiny training step.  :data:`GEMM_JIT` says whether they are
used; ``FASTBP_GEMM_JIT=0`` turns them off.  Other backends have no such
kernels (the symbols are stubs that report "no kernel").
"""
import ctypes
import ctypes.util
import functools
import glob
import os
import platform
import sys
import threading

import llvmlite.binding as llvm

from ._native import free_in_fork_child
from ._env import EnvImportError
from .config import env_flag

__all__ = ["BACKEND", "AVAILABLE", "THREAD_CONTROL", "GEMM_JIT", "backend_info", "gemm_jit_destroy", "axpy_exact",
           "asum_propagates", "ENV_VAR"]

#: the environment variable that picks the backend
ENV_VAR = "FASTBP_BLAS"
_CHOICES = ("auto", "mkl", "openblas", "scipy", "none")

#: symbol names the compiled code links against
SGEMM_SYM = "fastbp_cblas_sgemm"
DGEMM_SYM = "fastbp_cblas_dgemm"
SAXPY_SYM = "fastbp_cblas_saxpy"
DAXPY_SYM = "fastbp_cblas_daxpy"
SASUM_SYM = "fastbp_cblas_sasum"
DASUM_SYM = "fastbp_cblas_dasum"
#: the level-1 routines fastbp calls (CBLAS names without the prefix), each linked as "fastbp_cblas_" + name
LEVEL1 = ("saxpy", "daxpy", "sasum", "dasum")
SET_THREADS_SYM = "fastbp_blas_set_num_threads"
GET_THREADS_SYM = "fastbp_blas_get_num_threads"
JIT_CREATE_SYMS = ("fastbp_gemm_jit_create_s", "fastbp_gemm_jit_create_d")
JIT_GET_SYMS = ("fastbp_gemm_jit_get_s", "fastbp_gemm_jit_get_d")
#: the environment variable that turns oneMKL's JIT GEMM kernels off ("0")
JIT_ENV_VAR = "FASTBP_GEMM_JIT"

# CBLAS enum values
ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112


class _Backend:
    """A loaded BLAS: its CBLAS gemm addresses and thread functions."""

    def __init__(self, name, path, lib, sgemm, dgemm, set_threads, get_threads, version, level1=None):
        self.name = name
        self.path = path
        self.lib = lib            # keeps the library loaded
        self.sgemm = sgemm
        self.dgemm = dgemm
        self.set_threads = set_threads
        self.get_threads = get_threads
        self.version = version
        #: the CBLAS addresses of the routines of LEVEL1, by name (None: not found)
        self.level1 = {name: (level1 or {}).get(name) for name in LEVEL1}


def _load(path):
    try:
        return ctypes.CDLL(path)
    except OSError:
        return None


def _addr(lib, name):
    try:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _level1(lib, pattern):
    """The addresses of the routines of :data:`LEVEL1` in ``lib``, whose symbol
    for ``saxpy`` is ``pattern.format("saxpy")``."""
    return {name: _addr(lib, pattern.format(name)) for name in LEVEL1}


def _thread_funcs(lib, set_name, get_name):
    try:
        setf = getattr(lib, set_name)
        getf = getattr(lib, get_name)
    except AttributeError:
        return None, None
    setf.argtypes, setf.restype = [ctypes.c_int], None
    getf.argtypes, getf.restype = [], ctypes.c_int
    return setf, getf


def _mkl_candidates():
    names = ["libmkl_rt.so*", "libmkl_rt*.dylib", "mkl_rt*.dll"]
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sys.prefix, "Library", "bin")]
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(os.path.join(os.environ["CONDA_PREFIX"], "lib"))
    for d in dirs:
        for n in names:
            yield from sorted(glob.glob(os.path.join(d, n)))
    found = ctypes.util.find_library("mkl_rt")
    if found:
        yield found


def _find_mkl():
    for path in _mkl_candidates():
        lib = _load(path)
        if lib is None:
            continue
        s, d = _addr(lib, "cblas_sgemm_64"), _addr(lib, "cblas_dgemm_64")
        setf, getf = _thread_funcs(lib, "MKL_Set_Num_Threads", "MKL_Get_Max_Threads")
        if s and d and setf:
            version = "oneMKL"
            try:
                buf = ctypes.create_string_buffer(256)
                lib.MKL_Get_Version_String(buf, 256)
                version = buf.value.decode(errors="replace").strip()
            except AttributeError:
                pass
            return _Backend("mkl", path, lib, s, d, setf, getf, version,
                            _level1(lib, "cblas_{}_64"))
    return None


def _openblas_version(lib, name):
    try:
        f = getattr(lib, name)
    except AttributeError:
        return "OpenBLAS"
    f.restype = ctypes.c_char_p
    return (f() or b"OpenBLAS").decode(errors="replace").strip()


def _libs_dirs(module_name):
    """Where a wheel of ``module_name`` keeps its bundled shared libraries:
    ``<name>.libs`` beside the package (Linux, Windows) or ``<name>/.dylibs``
    inside it (macOS)."""
    try:
        mod = __import__(module_name)
    except ImportError:
        return []
    pkg = os.path.dirname(os.path.abspath(mod.__file__))
    return [os.path.join(os.path.dirname(pkg), module_name + ".libs"), os.path.join(pkg, ".dylibs")]


def _bundled(module_name, pattern):
    return [p for d in _libs_dirs(module_name) for p in sorted(glob.glob(os.path.join(d, pattern)))]


def _find_numpy_openblas():
    for path in _bundled("numpy", "*openblas64*"):
        lib = _load(path)
        if lib is None:
            continue
        s, dg = _addr(lib, "scipy_cblas_sgemm64_"), _addr(lib, "scipy_cblas_dgemm64_")
        setf, getf = _thread_funcs(lib, "scipy_openblas_set_num_threads64_",
                                   "scipy_openblas_get_num_threads64_")
        if s and dg and setf:
            return _Backend("openblas", path, lib, s, dg, setf, getf,
                            _openblas_version(lib, "scipy_openblas_get_config64_"),
                            _level1(lib, "scipy_cblas_{}64_"))
    return None


def _lp64_is_safe():
    """Whether 64-bit integer arguments may stand in for 32-bit ones."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return True
    return machine in ("aarch64", "arm64") and sys.platform.startswith("linux")


def _find_scipy_openblas():
    if not _lp64_is_safe():
        return None
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's BLAS)
    except ImportError:
        return None
    for path in _bundled("scipy", "*openblas*"):
        lib = _load(path)
        if lib is None:
            continue
        for prefix in ("scipy_", ""):
            s, dg = _addr(lib, prefix + "cblas_sgemm"), _addr(lib, prefix + "cblas_dgemm")
            setf, getf = _thread_funcs(lib, prefix + "openblas_set_num_threads",
                                       prefix + "openblas_get_num_threads")
            if s and dg and setf:
                return _Backend("scipy", path, lib, s, dg, setf, getf,
                                _openblas_version(lib, prefix + "openblas_get_config"),
                                _level1(lib, prefix + "cblas_{}"))
    return None


_FINDERS = {"mkl": _find_mkl, "openblas": _find_numpy_openblas, "scipy": _find_scipy_openblas}


def _choose():
    want = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if want not in _CHOICES:
        raise EnvImportError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a BLAS backend fastbp knows; "
                          f"use one of {', '.join(_CHOICES)}")
    if want == "none":
        return None
    if want != "auto":
        found = _FINDERS[want]()
        if found is None:
            hint = " (pip install mkl)" if want == "mkl" else ""
            raise EnvImportError(f"{ENV_VAR}={want}: that BLAS could not be loaded{hint}; "
                              f"unset {ENV_VAR} to let fastbp choose")
        return found
    for name in ("mkl", "openblas", "scipy"):
        found = _FINDERS[name]()
        if found is not None:
            return found
    import warnings
    warnings.warn("fastbp found no BLAS (oneMKL, numpy's or scipy's OpenBLAS): every matrix product "
                  "runs in fastbp's own loops, which is slow for large products", RuntimeWarning,
                  stacklevel=2)
    return None


_backend = _choose()

#: whether a BLAS was found (without one, every product runs in fastbp's own loops)
AVAILABLE = _backend is not None
#: the backend's name: "mkl", "openblas", "scipy", or None
BACKEND = _backend.name if AVAILABLE else None
#: whether the step can choose the number of BLAS threads per product
THREAD_CONTROL = AVAILABLE
#: whether a product cut into blocks of rows or columns, one BLAS call each, gives the
#: bits of one call over the whole product: OpenBLAS computes each element as one dot
#: product over ``k`` in a fixed order; oneMKL's results depend on its calls' shapes.
#: A step on numba's threads splits its products so (fastbp._executor.step_threads).
SPLIT_EXACT = BACKEND in ("openblas", "scipy")

#: Held by every call of a step that may set the BLAS's thread count (see
#: :class:`fastbp.step.TrainStep`): that count is one per process in OpenBLAS and
#: oneMKL (OpenBLAS's ``openblas_set_num_threads_local`` sets it for the whole
#: process too), so such calls run one at a time.  Re-entrant: a callback that
#: calls another step from inside a step's call does not deadlock.
THREADS_LOCK = threading.RLock()
free_in_fork_child(THREADS_LOCK)

if _backend is None:
    # never called (the executor sends every product to its own loops), but
    # the symbols must exist for compiled code to link
    _stubs = (ctypes.CFUNCTYPE(None)(lambda: None), ctypes.CFUNCTYPE(None, ctypes.c_int)(lambda n: None),
              ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1))
    _addrs = [ctypes.cast(_stubs[0], ctypes.c_void_p).value] * 2 + \
             [ctypes.cast(f, ctypes.c_void_p).value for f in _stubs[1:]]
else:
    _addrs = [_backend.sgemm, _backend.dgemm,
              ctypes.cast(_backend.set_threads, ctypes.c_void_p).value,
              ctypes.cast(_backend.get_threads, ctypes.c_void_p).value]
for _sym, _a in zip((SGEMM_SYM, DGEMM_SYM, SET_THREADS_SYM, GET_THREADS_SYM), _addrs):
    llvm.add_symbol(_sym, _a)
# the level-1 routines' ctypes signatures (ILP64):
# ?axpy(n, alpha, x, incx, y, incy): y += alpha x (plain SGD's update; see axpy_exact)
# ?asum(n, x, incx) -> sum |x_i| (the gradients' finiteness check; see asum_propagates)
_LEVEL1_TYPES = {}
for _p, _real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
    _LEVEL1_TYPES[_p + "axpy"] = ctypes.CFUNCTYPE(None, ctypes.c_int64, _real, ctypes.c_void_p, ctypes.c_int64,
                                                  ctypes.c_void_p, ctypes.c_int64)
    _LEVEL1_TYPES[_p + "asum"] = ctypes.CFUNCTYPE(_real, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)
# a routine the backend lacks links to a stub, never called (its probe is False)
_level1_stubs = {name: t((lambda *a: 0.0) if name.endswith("asum") else (lambda *a: None))
                 for name, t in _LEVEL1_TYPES.items()}
for _name in LEVEL1:
    _a = _backend.level1[_name] if _backend is not None else None
    llvm.add_symbol("fastbp_cblas_" + _name, _a or ctypes.cast(_level1_stubs[_name], ctypes.c_void_p).value)


def _level1_routine(name):
    """The backend's level-1 routine ``name`` as a ctypes function, or None."""
    addr = _backend.level1[name] if _backend is not None else None
    return _LEVEL1_TYPES[name](addr) if addr else None


# ------------------------------------------------- oneMKL's JIT GEMM kernels
# mkl_cblas_jit_create_?gemm_64(void **jitter, layout, transa, transb, m, n, k,
#   alpha, lda, ldb, beta, ldc) -> 0 (kernel made), 1 (no JIT: plain gemm
#   behind the same call), 2 (error); mkl_jit_get_?gemm_ptr_64(jitter) -> the
#   kernel, called as kernel(jitter, a, b, c); mkl_jit_destroy_64(jitter).
_I64, _INT, _VP = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_CREATE_TYPES = [ctypes.CFUNCTYPE(_INT, _VP, _INT, _INT, _INT, _I64, _I64, _I64, real, _I64, _I64, real, _I64)
                 for real in (ctypes.c_float, ctypes.c_double)]
_GET_TYPE = ctypes.CFUNCTYPE(_VP, _VP)
_jit_destroy = None
_jit_addrs = None
# checked with every backend: a typo must not pass unnoticed until oneMKL is installed
_jit_off = not env_flag(JIT_ENV_VAR, default=True)
if _backend is not None and _backend.name == "mkl" and not _jit_off:
    _names = ("mkl_cblas_jit_create_sgemm_64", "mkl_cblas_jit_create_dgemm_64",
              "mkl_jit_get_sgemm_ptr_64", "mkl_jit_get_dgemm_ptr_64")
    _found = [_addr(_backend.lib, n) for n in _names]
    _d = getattr(_backend.lib, "mkl_jit_destroy_64", None)
    if all(_found) and _d is not None:
        _jit_addrs = _found
        _d.argtypes, _d.restype = [_VP], _INT
        _jit_destroy = _d
#: whether small products use oneMKL's JIT GEMM kernels (see the module docstring)
GEMM_JIT = _jit_addrs is not None
if not GEMM_JIT:
    # never called while GEMM_JIT is False (the executor checks it at run time),
    # but cached code links against the symbols
    _jit_stubs = [t(lambda *a: 2) for t in _CREATE_TYPES] + [_GET_TYPE(lambda j: None)] * 2
    _jit_addrs = [ctypes.cast(f, ctypes.c_void_p).value for f in _jit_stubs]
for _sym, _a in zip(JIT_CREATE_SYMS + JIT_GET_SYMS, _jit_addrs):
    llvm.add_symbol(_sym, _a)


def gemm_jit_destroy(jitters):
    """Free the JIT GEMM kernels whose handles (``jitter`` pointers, as
    integers; 0 for none) are in ``jitters``."""
    if _jit_destroy is None:
        return
    for j in jitters:
        if j:
            _jit_destroy(int(j))


def backend_info():
    """Describe the BLAS fastbp's fused step calls.

    Returns
    -------
    dict
        ``backend`` (``"mkl"``, ``"openblas"``, ``"scipy"`` or ``None``),
        ``version`` (the library's own version string), ``path`` (the
        shared library), ``threads`` (its current number of threads) and
        ``gemm_jit`` (whether small products run through oneMKL's JIT GEMM
        kernels).
    """
    if _backend is None:
        return {"backend": None, "version": None, "path": None, "threads": 1, "gemm_jit": False}
    return {"backend": _backend.name, "version": _backend.version, "path": _backend.path,
            "threads": int(_backend.get_threads()), "gemm_jit": GEMM_JIT}


# ------------------------------------------------- the BLAS's axpy for plain SGD
_AXPY_EXACT = {}
_ASUM_PROPAGATES = {}


def _level1_probe(kind, cache):
    """Make ``check(routine, dtype) -> bool``, a check of the backend's level-1
    routine ``kind`` (``"axpy"``, ``"asum"``), the public ``probe(dtype)``: run
    once per process and dtype (results in ``cache``), with the ctypes routine
    of the dtype's precision; ``False`` without a BLAS or the routine, and for
    dtypes other than float32 and float64."""
    def wrap(check):
        @functools.wraps(check)
        def probe(dtype):
            import numpy as np
            dt = np.dtype(dtype)
            if dt not in cache:
                prefix = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(dt)
                routine = _level1_routine(prefix + kind) if prefix else None
                cache[dt] = routine is not None and bool(check(routine, dt))
            return cache[dt]
        del probe.__wrapped__           # its signature is (dtype)
        return probe
    return wrap


def _contracts():
    """Whether numba's target CPU fuses the SGD kernel's ``p - lr g`` into one
    fused multiply-add (its loops are compiled with fast-math ``contract``, so
    LLVM fuses wherever the target has the instruction)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    if machine not in ("x86_64", "amd64"):
        return False
    from numba.core import config as numba_config
    features = numba_config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return "+fma" in features.split(",")


def _axpy_probe(dtype):
    """``(y, x, alpha, fused)``: vectors on which ``y += alpha x`` rounded once
    (a fused multiply-add: ``fused``) and rounded twice differ in many elements.

    With ``h`` just over half the dtype's ``m`` significand bits (13 of 24,
    27 of 53), ``x`` and ``y`` are multiples of ``2**-h`` in ``[0.5, 1)`` and
    ``alpha = -(1 + 2**-h)``: ``y - x`` and ``x 2**-h`` are exact, so
    ``(y - x) - x 2**-h``, one rounding, is the correctly rounded
    ``y + alpha x``, while the product ``alpha x`` alone needs ``2h > m``
    bits (rounded, it changes about half of the sums)."""
    import numpy as np
    dt = np.dtype(dtype)
    h = (np.finfo(dt).nmant + 1) // 2 + 1
    rng = np.random.default_rng(20261201)
    n = 40_009                 # over OpenBLAS's one-thread limit for axpy (10,000), an odd tail
    x, y = (np.ldexp(rng.integers(2 ** (h - 1), 2 ** h, n + 1).astype(dt), -h) for _ in range(2))
    fused = (y - x) - np.ldexp(x, -h)
    return y, x, -(1.0 + 2.0 ** -h), fused


@_level1_probe("axpy", _AXPY_EXACT)
def axpy_exact(axpy, dtype):
    """Whether the BLAS's ``?axpy`` (``y += alpha x``) gives, at one thread and
    at several, the bits of fastbp's SGD kernel (``p -= lr g``, one fused
    multiply-add per element where the CPU has the instruction, else two
    roundings).

    Checked once per process and dtype, on vectors whose two roundings differ
    (an unaligned start and an odd tail included); ``False`` without a BLAS or
    its axpy, and for dtypes other than float32 and float64.  Only where this
    holds does a plain SGD step (:func:`fastbp._handlers_update._h_sgd`) run its
    update through the BLAS, on the threads that ran its products."""
    y, x, alpha, fused = _axpy_probe(dtype)
    want = fused if _contracts() else y + alpha * x
    ok = True
    for _ in _probe_threads():
        for lo in (0, 1):         # an aligned and an unaligned start
            got = y[lo:].copy()
            axpy(got.shape[0], alpha, x[lo:].ctypes.data, 1, got.ctypes.data, 1)
            ok = ok and got.tobytes() == want[lo:].tobytes()
    return ok


def _probe_threads():
    """Run the loop's body at one BLAS thread, then at max(2, the configured
    count), holding THREADS_LOCK; the configured count restored after."""
    with THREADS_LOCK:
        before = int(_backend.get_threads())
        try:
            for threads in (1, max(2, before)):
                _backend.set_threads(threads)
                yield threads
        finally:
            _backend.set_threads(before)


# --------------------------------------- the BLAS's asum: are the gradients finite?


@_level1_probe("asum", _ASUM_PROPAGATES)
def asum_propagates(asum, dtype):
    """Whether the BLAS's ``?asum`` (``sum |x_i|``) is NaN or infinite, at one
    thread and at several, whenever one element is NaN, ``+inf`` or ``-inf``,
    and finite on finite data.

    Where it holds, a finite ``asum(g)`` proves every gradient finite, and the
    update handlers (:func:`fastbp._handlers_update._gradients`) check a large
    update's gradients through it on the BLAS's threads; a non-finite sum
    (a non-finite element, or finite ones whose sum overflows) is settled by
    fastbp's own element-wise check, so the result never differs from it.

    Checked once per process and dtype on 100,003 elements (over OpenBLAS's
    one-thread limit for asum, 10,000, an odd tail), each special value in
    turn at the first, the last, and positions in each thread's share, from
    an aligned and an unaligned start; ``False`` without a BLAS or its asum,
    and for dtypes other than float32 and float64."""
    import numpy as np
    n = 100_003
    x = np.random.default_rng(20261201).uniform(-1.0, 1.0, n + 1).astype(dtype)
    ok = True
    for _ in _probe_threads():
        for lo in (0, 1):
            v = x[lo:]
            total = float(asum(n, v.ctypes.data, 1))
            ok = ok and np.isfinite(total) and abs(total - np.abs(v).sum(dtype=np.float64)) <= 1e-3 * n
            for i in (0, 1, 15, n // 4, n // 2 - 1, n // 2, 3 * n // 4, n - 2, n - 1):
                for bad in (np.nan, np.inf, -np.inf):
                    keep, v[i] = v[i], bad
                    ok = ok and not np.isfinite(asum(n, v.ctypes.data, 1))
                    v[i] = keep
    return ok
