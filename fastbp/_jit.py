"""All of fastbp's numba machinery in one place.

Kernels elsewhere in :mod:`fastbp.kernels` are plain Python functions made of
loops (``prange`` where a loop may run in parallel).  This module turns each of
them into compiled callables:

* ``jit`` compiles a helper or kernel serially (``prange`` acts as ``range``),
  without the wrappers that only Python calls need (:class:`CompiledOnly`),
  or with them for an entry point that Python calls (``python=True``);
* ``kernel`` compiles a function twice, as a serial and as a
  ``parallel=True`` variant, and returns a :class:`Kernel` whose ``.serial``
  and ``.parallel`` attributes are ordinary numba dispatchers and whose
  ``pick(work)`` chooses between them by the amount of work.

The threading design (see README, "Threading design"): the fused training
step is *one* serial native call; the only threads it uses are the BLAS
library's, for the large matrix products.  numba's own thread pool is used
only by the standalone ``fastbp.ops`` wrappers on large arrays, never inside
a step, so two threading runtimes never compete for the cores.
"""
from __future__ import annotations

import os
import types

import numba
import numba.extending

from .config import PARALLEL_THRESHOLD, env_flag  # noqa: F401 - re-exported

#: LLVM fast-math flags for every kernel.  ``nnan``/``ninf`` are left out on
#: purpose: they would let LLVM delete NaN checks (the non-finite-loss guard).
FASTMATH = {"reassoc", "contract", "arcp"}


_CACHE = not env_flag("FASTBP_NO_CACHE")


#: the top-level modules whose code numba compiles and caches, or inlines into cached code
#: (bodies, constants); with every file of ``kernels``, ``kernels/cuda`` and ``registry``
#: (tests/test_jit.py checks that every module with compiled code is listed)
STAMPED_MODULES = ("_jit.py", "_native.py", "_executor.py", "_handlers.py", "_handlers_update.py",
                   "_arena_views.py", "_blas.py", "_isa.py", "_rng.py", "_cuda_status.py", "config.py")


def _stamped_files():
    """The source files whose hash keys fastbp's numba cache (:func:`_source_stamp`)."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(here, n) for n in STAMPED_MODULES]
    for sub in ("kernels", os.path.join("kernels", "cuda"), "registry"):
        kdir = os.path.join(here, sub)
        if os.path.isdir(kdir):
            files += [os.path.join(kdir, n) for n in sorted(os.listdir(kdir)) if n.endswith(".py")]
    return files


def _source_stamp():
    """A hash of the source files of fastbp's compiled code (kernels, CUDA kernels, executor,
    handlers, and the modules whose functions or constants they inline)."""
    import hashlib
    h = hashlib.sha256(numba.__version__.encode())
    for path in _stamped_files():
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read())
    return h.hexdigest()


def _drop_stale_cache():
    """Delete fastbp's numba cache files if any fastbp source changed since they were written.

    numba invalidates a cached function only when *its own* file changes, not
    when a kernel it calls (in another file) does; the executor would keep
    running stale kernels.  A stamp of all sources next to the cache guards
    against that.
    """
    if not _CACHE:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.environ.get("NUMBA_CACHE_DIR")
    # the cache of every folder with stamped sources (the package's first): the registry's
    # element bodies are compiled and cached too, and numba keys an entry by signature and
    # bytecode, not by flags (a body once compiled with fast-math was loaded by a later
    # kernel compiled without it, when the registry's cache outlived a stamp change)
    folders = sorted({os.path.dirname(p) for p in _stamped_files()} - {here})
    dirs = ([os.path.join(d, "__pycache__") for d in [here] + folders] if not root else [root])
    stamp = _source_stamp()
    stamp_file = os.path.join(dirs[0], "fastbp-numba-cache.stamp")
    try:
        with open(stamp_file) as f:
            if f.read() == stamp:
                return
    except OSError:
        pass
    for d in dirs:
        for dirpath, _, files in os.walk(d):
            if root and "fastbp" not in dirpath:
                continue
            for name in files:
                if name.endswith((".nbi", ".nbc")):
                    try:
                        os.remove(os.path.join(dirpath, name))
                    except OSError:
                        pass
    try:
        os.makedirs(dirs[0], exist_ok=True)
        tmp = stamp_file + f".{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(stamp)
        os.replace(tmp, stamp_file)
    except OSError:
        pass   # read-only install: numba falls back to its own cache locations


_drop_stale_cache()


def _numba_numpy_support_without_scipy_import():
    """Load numba's numpy support (``numba.np.arraymath``) without its import of ``scipy.linalg``.

    When numba's CPU target first loads (the first compilation, or the first function loaded
    from the disk cache, in a process), ``numba.np.arraymath`` probes whether scipy's BLAS can
    be used by importing ``scipy.linalg`` (``numba.np.linalg.ensure_blas``): 0.22-0.38 s, most
    of a warm process's first step, for an answer that only picks ``np.correlate``'s and
    ``np.convolve``'s inner product (and ``np.dot`` checks again, with the real probe, when a
    function using it compiles).  Where scipy is installed, fastbp answers that probe from the
    installation (as numba would) and imports ``arraymath`` now (0.04 s); numba's probe is
    restored right after.  Without scipy, or if numba's support is already loaded, or on any
    surprise, nothing changes.  Returns whether the probe was answered here.
    """
    import importlib.util
    import sys
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return False
    try:
        if importlib.util.find_spec("scipy") is None:
            return False
        from numba.np import linalg as _la
    except Exception:  # noqa: BLE001 - an optimisation: never a reason to fail an import
        return False
    probe = getattr(_la, "ensure_blas", None)
    if probe is None:
        return False
    _la.ensure_blas = lambda: None      # what the probe returns where scipy imports
    try:
        from numba.np import arraymath as _am
    except Exception:  # noqa: BLE001
        return False
    finally:
        _la.ensure_blas = probe
    if getattr(_am, "ensure_blas", None) is not None:
        _am.ensure_blas = probe         # arraymath bound the name when it imported
    return True


_NUMPY_SUPPORT_EARLY = _numba_numpy_support_without_scipy_import()

# numba links callees into callers as shared copies; make them private (see fastbp._native)
from . import _native  # noqa: E402,F401


#: compiled without numba's wrappers (see fastbp._native.CompiledOnly)
CompiledOnly = _native.CompiledOnly


def jit(fn=None, *, inline=False, fastmath=True, python=False):
    """Compile ``fn`` serially with fastbp's flags (cached on disk);
    ``fastmath=False``: without fast-math (operations in the written order).

    A function that compiled code calls is a :class:`CompiledOnly` dispatcher
    (no wrappers; Python calls go to a wrapped twin).  ``python=True``: an
    entry point that Python calls (a plain numba dispatcher: its compiled
    Python entry, :func:`entry_point`, is the one that runs); ``inline=True``:
    inlined into its callers, never compiled on its own.
    """
    def wrap(f):
        opts = dict(fastmath=FASTMATH if fastmath else False, nogil=True)
        if inline:
            opts["inline"] = "always"
        if inline or python or numba.config.DISABLE_JIT:
            return numba.njit(cache=_CACHE, **opts)(f)
        if numba.extending.is_jitted(f) or not isinstance(f, types.FunctionType):
            raise TypeError(f"jit: {f!r} is not a plain Python function")
        return CompiledOnly.of(f, opts, _CACHE)
    return wrap(fn) if fn is not None else wrap


def parallel_jit(fn):
    """Compile ``fn`` with ``parallel=True`` (``prange``) only, with fastbp's flags (cached on disk)."""
    return numba.njit(cache=_CACHE, fastmath=FASTMATH, nogil=True, parallel=True)(fn)


class Kernel:
    """A kernel compiled twice: ``serial`` and ``parallel`` (``prange``).

    Parameters
    ----------
    fn : function
        Plain Python function made of loops; it writes its results into
        caller-allocated output arrays.
    fastmath : bool, default True
        False: both compilations without fast-math (operations in the
        written order).

    Attributes
    ----------
    serial, parallel : numba dispatchers
        The two compilations.  Every kernel parallelises over independent
        output rows (or columns), never over a reduction, so the parallel
        variant's results do not depend on the number of threads; and but for
        the normalisation kernels (whose fast-math contractions LLVM decides
        differently in the two compilations) the two variants give the same
        bits (tests/test_threads.py).
    """

    def __init__(self, fn, fastmath=True):
        self.py_func = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        fm = FASTMATH if fastmath else False
        self.serial = numba.njit(cache=_CACHE, fastmath=fm, nogil=True)(
            _native.renamed(fn, "__serial"))
        self.parallel = numba.njit(cache=_CACHE, fastmath=fm, nogil=True,
                                   parallel=True)(_native.renamed(fn, "__parallel"))

    def pick(self, work):
        """The variant to use for ``work`` units of work (see PARALLEL_THRESHOLD)."""
        return pick_variant(self, work)

    def __call__(self, *args, work=None):
        """Run the variant chosen for ``work`` (serial if not given)."""
        fn = self.serial if work is None else self.pick(work)
        return fn(*args)

    def __repr__(self):
        return f"<fastbp kernel {self.__name__}>"


def pick_variant(pair, work):
    """``pair.parallel`` for ``work`` units of work at or over PARALLEL_THRESHOLD, else
    ``pair.serial`` (the rule of every :class:`Kernel` and :class:`ChosenKernel`): by the size
    alone, never by numba's thread count, since the normalisation kernels' two compilations
    round differently and a result must not depend on the thread count (at one thread the
    parallel variant runs on that one)."""
    return pair.parallel if work >= PARALLEL_THRESHOLD else pair.serial


class ChosenKernel:
    """A kernel chosen at each call from its arguments (an op's code, a mode)
    among :class:`Kernel` pairs, with a Kernel's interface: ``serial`` and
    ``parallel`` (each chooses, then runs that variant of the chosen kernel),
    ``pick(work)``, and a call (serial, or the variant for ``work=``).  For
    callers from Python; the executor calls the chosen kernels itself.

    Subclasses define :meth:`choose`.

    Parameters
    ----------
    name : str
    doc : str, optional
        The docstring (default: the class's).
    """

    #: how the kernel is chosen, for the repr
    by = "code"

    def __init__(self, name, doc=None):
        self.__name__ = name
        if doc is not None:
            self.__doc__ = doc
        self.serial = _ChosenVariant(self, "serial")
        self.parallel = _ChosenVariant(self, "parallel")

    def choose(self, args):
        """``(kernel, call_args)``: the :class:`Kernel` (or pair with ``serial``
        and ``parallel``) for the call's arguments ``args``, and the arguments
        to pass it."""
        raise NotImplementedError

    def pick(self, work):
        """The variant to use for ``work`` units of work (see PARALLEL_THRESHOLD)."""
        return pick_variant(self, work)

    def __call__(self, *args, work=None):
        """Run the variant chosen for ``work`` (serial if not given)."""
        return (self.serial if work is None else self.pick(work))(*args)

    def __repr__(self):
        return f"<fastbp kernel {self.__name__} (by {self.by})>"


class _ChosenVariant:
    """One variant (``"serial"``/``"parallel"``) of a :class:`ChosenKernel`."""

    def __init__(self, owner, variant):
        self.owner, self.variant = owner, variant
        self.__name__ = f"{owner.__name__}.{variant}"

    def __call__(self, *args):
        k, call_args = self.owner.choose(args)
        return getattr(k, self.variant)(*call_args)


def kernel(fn):
    """Decorator: compile ``fn`` as a serial/parallel :class:`Kernel` pair."""
    return Kernel(fn)


def threading_info():
    """Describe the threads fastbp uses.

    Returns
    -------
    dict
        ``numba_threads`` (``NUMBA_NUM_THREADS``), ``numba_layer`` (the
        threading layer numba chose, or ``"not started"`` if no parallel
        kernel has run yet in this process), ``blas_backend`` (the BLAS the
        fused step calls: :func:`fastbp._blas.backend_info`),
        ``step_threads_min_elements`` (steps whose widest minibatch activation
        has at least this many elements run on numba's threads alone, see
        :func:`fastbp._executor.step_threads`; None: no step does, with this
        BLAS) and ``blas``
        (what threadpoolctl reports about the BLAS libraries loaded, if
        importable).
    """
    from . import _blas
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started"
    from . import config
    info = {"numba_threads": numba.config.NUMBA_NUM_THREADS, "numba_layer": layer,
            "blas_backend": _blas.backend_info(),
            "step_threads_min_elements": (config.STEP_THREADS_MIN_ELEMENTS
                                          if _blas.SPLIT_EXACT else None)}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [
            {k: d.get(k) for k in ("internal_api", "num_threads", "version", "architecture", "filepath")}
            for d in threadpool_info() if d.get("user_api") == "blas"
        ]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    return info


# ----------------------------------------------------------- stack tiles
from numba import types as _types  # noqa: E402
from numba.core import cgutils as _cgutils  # noqa: E402
from numba.extending import intrinsic as _intrinsic  # noqa: E402

#: elements in one register tile (4 rows x 16 columns)
TILE = 64


@_intrinsic
def _stack_alloca(typingctx, dtype):
    """``alloca`` of TILE elements of ``dtype`` in the entry block of the caller.

    Memory on the stack cannot alias any argument array, which lets LLVM keep
    a register tile in registers and vectorise without runtime alias checks.
    """
    def impl(context, builder, signature, args):
        ty = context.get_value_type(dtype.dtype)
        return _cgutils.alloca_once(builder, ty, size=context.get_constant(_types.intp, TILE))
    return _types.CPointer(dtype.dtype)(dtype), impl


@numba.njit(inline="always")
def stack_tile(dtype):
    """A TILE-element scratch array on the stack (inside a ``prange`` body:
    one per thread).  Its contents start undefined."""
    return numba.carray(_stack_alloca(dtype), (TILE,))


@_intrinsic
def int64_bits_as_float64(typingctx, i):
    """Reinterpret the bits of an int64 as a float64: a ``bitcast``, which,
    unlike a call, LLVM vectorises."""
    if i != _types.int64:
        return None

    def impl(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(_types.float64))
    return _types.float64(_types.int64), impl


@_intrinsic
def unmanaged(typingctx, arr):
    """The same array without its reference-counted owner (``meminfo``).

    numba counts references to an array's memory with atomic increments and
    decrements: every view or slice taken, every array passed to a compiled
    callee.  In the step's interpreter (a few hundred of them per tiny step)
    these cost ~20% of the step.  Views of an unmanaged array count nothing.

    Only for arrays that the caller keeps alive for as long as the result and
    its views are used, and that never escape to Python (never returned).
    """
    if not isinstance(arr, _types.Array):
        return None
    return arr(arr), _without_owner


def _without_owner(context, builder, signature, args):
    """Codegen of :func:`unmanaged`/:func:`unmanaged_c`: the array struct of
    ``args[0]`` with a null ``meminfo`` and ``parent``, typed as the signature's
    return type (same data, shape and strides)."""
    src = context.make_array(signature.args[0])(context, builder, value=args[0])
    out = context.make_array(signature.return_type)(context, builder)
    _cgutils.copy_struct(out, src)
    out.meminfo = _cgutils.get_null_value(out.meminfo.type)
    out.parent = _cgutils.get_null_value(out.parent.type)
    return out._getvalue()


@_intrinsic
def unmanaged_c(typingctx, arr):
    """:func:`unmanaged`, typed as a writeable, aligned, C-contiguous array of
    the same dtype and dimensions whatever ``arr``'s numba type (same data,
    shape and strides).

    For arguments whose layout the compiled code checks at run time before
    reading them (the executor's minibatch): the kernels then see one array
    type whatever the caller passed (one compilation of each), and never run
    on an array that is not what that type says.  Nothing may write to it
    unless it was writeable.
    """
    if not isinstance(arr, _types.Array):
        return None
    return _types.Array(arr.dtype, arr.ndim, "C")(arr), _without_owner


@_intrinsic
def block2d(typingctx, flat, off, rows, cols):
    """Elements ``off .. off + rows*cols - 1`` of the 1-D C-contiguous array
    ``flat`` as an unmanaged (see :func:`unmanaged`) C-contiguous
    ``(rows, cols)`` array: no reshape call, no reference counting.  The
    caller checks the bounds."""
    if not (isinstance(flat, _types.Array) and flat.ndim == 1 and flat.layout == "C"):
        return None
    ret = _types.Array(flat.dtype, 2, "C")

    def impl(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, value=args[0])
        out = context.make_array(ret)(context, builder)
        intp = context.get_value_type(_types.intp)
        o, r, c = (context.cast(builder, v, t, _types.intp)
                   for v, t in zip(args[1:], signature.args[1:]))
        itemsize = context.get_constant(_types.intp, context.get_abi_sizeof(context.get_data_type(flat.dtype)))
        data = builder.gep(src.data, [o])
        context.populate_array(out, data=data,
                               shape=_cgutils.pack_array(builder, [r, c], ty=intp),
                               strides=_cgutils.pack_array(builder, [builder.mul(c, itemsize), itemsize], ty=intp),
                               itemsize=itemsize, meminfo=None)
        return out._getvalue()
    return ret(flat, off, rows, cols), impl


def entry_point(dispatcher, args):
    """The compiled Python entry of ``dispatcher`` for the types of ``args``.

    Calling it skips numba's type dispatch (the type of every argument looked
    up on every call: ~0.2 us of a tiny training step).  It does not check
    its arguments' types: only for callers that guarantee them (for arrays:
    dtype, ndim, C-contiguous, aligned and writeable, as ``args``).  Falls
    back to ``dispatcher`` itself where no such entry is available.
    """
    if isinstance(dispatcher, CompiledOnly):
        dispatcher = dispatcher.for_python()
    try:
        sig = tuple(numba.typeof(a) for a in args)
        return dispatcher.overloads[sig].entry_point
    except (AttributeError, KeyError, ValueError, TypeError):
        return dispatcher


@_intrinsic
def call_fnptr4(typingctx, fn, a0, a1, a2, a3):
    """Call the C function at address ``fn`` (an integer) with four pointer
    arguments given as integers: ``void fn(void*, void*, void*, void*)``.
    For kernels whose address is only known at run time (oneMKL's JIT GEMM)."""
    ints = (fn, a0, a1, a2, a3)
    if not all(isinstance(t, _types.Integer) for t in ints):
        return None
    sig = _types.void(*ints)

    def impl(context, builder, signature, args):
        from llvmlite import ir
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 4)
        target = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(target, [builder.inttoptr(v, i8p) for v in args[1:]])
        return context.get_dummy_value()
    return sig, impl


@_intrinsic
def array_at(typingctx, addr, n, dtype):
    """The ``n`` elements of ``dtype`` at address ``addr`` as an unmanaged
    (see :func:`unmanaged`) 1-D C-contiguous array.

    For arrays the caller keeps alive and passes by address, several in one
    int64 vector (the step's executor context): each array argument of a
    compiled call costs ~55 ns to unbox.
    """
    if not (isinstance(addr, _types.Integer) and isinstance(n, _types.Integer)
            and isinstance(dtype, (_types.NumberClass, _types.DType))):
        return None
    ret = _types.Array(dtype.dtype, 1, "C")

    def impl(context, builder, signature, args):
        out = context.make_array(ret)(context, builder)
        intp = context.get_value_type(_types.intp)
        data_t = context.get_data_type(dtype.dtype)
        itemsize = context.get_constant(_types.intp, context.get_abi_sizeof(data_t))
        data = builder.inttoptr(context.cast(builder, args[0], signature.args[0], _types.intp),
                                data_t.as_pointer())
        count = context.cast(builder, args[1], signature.args[1], _types.intp)
        context.populate_array(out, data=data, shape=_cgutils.pack_array(builder, [count], ty=intp),
                               strides=_cgutils.pack_array(builder, [itemsize], ty=intp),
                               itemsize=itemsize, meminfo=None)
        return out._getvalue()
    return ret(addr, n, dtype), impl
