"""Native code linked by address, private copies of linked callees, and a
watch on numba's compilation.

* :func:`native_kernel` / :func:`kcall`: a compiled function calls a kernel
  through its address in a table, instead of numba linking (and optimising
  again) a copy of the kernel into the caller.  Each kernel is compiled once,
  on its own, and only when a step needs it.
* The linkage fix (installed on import): the copies numba still links into a
  caller are private to it, so compiled code runs the same instructions
  whether it was compiled in this process or loaded from the disk cache.
* :func:`compile_watch`: how long numba compiled (not loaded from the cache).
"""
import os
import threading
import types

import numba
import llvmlite.binding as _ll
from numba import types as _types
from numba.core import caching as _caching
from numba.core.registry import CPUDispatcher
from numba.core import cgutils as _cgutils
from numba.extending import intrinsic as _intrinsic


def _internalize_linked_copies(library):
    """Give the copies of other libraries' functions linked into ``library``
    (a numba ``CPUCodeLibrary`` that holds fastbp code) internal linkage.

    numba compiles each function into its own LLVM module and *links a copy*
    of every callee into each caller's module, marked ``linkonce_odr`` (or
    ``weak_odr``: parallel-loop bodies): one definition, to be picked at load
    time, for all.  The copies are not the same code: each module is
    optimised again after linking, and with fast-math (reassociation, FMA
    contraction) the re-optimised copies round differently.  The JIT linker
    resolves a call to such a symbol to the first definition loaded in the
    process: the callee's own library in a process that compiled it, the
    first cached caller in one that loaded its objects from numba's disk
    cache.  Results depended on whether the cache was warm (1 ulp in ~7% of
    the weights after a few epochs), and on which entry point a process called
    first.  Worse, parallel-loop bodies are named after the address of a
    Python object, which the process may reuse: two cached objects could
    define the same name for different loops.

    Internal copies are called only from their own module: a compiled object
    runs exactly the code it was compiled with, wherever and whenever it is
    loaded.  (LLVM may also inline them, or drop the unused ones -- Python
    wrappers of callees, for one -- which shortens compilation.)  The
    library's own functions keep their linkage.
    """
    module = library._final_module
    linked = set()
    for lib in library._linking_libraries:
        for fn in lib._get_module_for_linking().functions:
            if not fn.is_declaration:
                linked.add(fn.name)
    if not any("fastbp" in name for name in linked) and not any(
            "fastbp" in fn.name for fn in module.functions if not fn.is_declaration):
        return
    for fn in module.functions:
        if (not fn.is_declaration and fn.name in linked
                and fn.linkage in (_ll.Linkage.linkonce_odr, _ll.Linkage.weak_odr)):
            fn.linkage = "internal"


def _install_linkage_fix():
    """Run :func:`_internalize_linked_copies` on every library numba optimises
    after linking (``CPUCodeLibrary._optimize_final_module``); a no-op where
    numba's internals differ from those this was written for."""
    from numba.core import codegen as _cg
    lib = getattr(_cg, "CPUCodeLibrary", None)
    orig = getattr(lib, "_optimize_final_module", None)
    if orig is None or getattr(orig, "_fastbp_linkage_fix", False):
        return
    if not all(hasattr(lib, a) for a in ("_get_module_for_linking", "finalize")):
        return

    def _optimize_final_module(self):
        if hasattr(self, "_linking_libraries") and hasattr(self, "_final_module"):
            _internalize_linked_copies(self)
        return orig(self)
    _optimize_final_module._fastbp_linkage_fix = True
    lib._optimize_final_module = _optimize_final_module


_install_linkage_fix()


# ----------------------------------------------------------- kernels called by address
#: Kernels that compiled code calls by address (:func:`kcall`), not as linked
#: callees: id -> (dispatcher, return type, function of the dtype's numba type
#: giving the argument types).  Filled by :func:`native_kernel`.
_NATIVE = {}

#: Serialises registering and loading native kernels: steps built (estimators fitted,
#: models unpickled) on several threads at once register each kernel once.  Re-entrant.
LOCK = threading.RLock()


def free_in_fork_child(lock):
    """Make the re-entrant ``lock`` free in a child made by ``os.fork`` while another thread held it
    (no thread of the child would ever release it); held by the forking thread, the child keeps it
    held (the thread goes on in the child and releases it)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: None if lock._is_owned() else lock._at_fork_reinit())


free_in_fork_child(LOCK)


#: Added to a kernel's id: the id of its parallel twin (see :func:`native_kernel`),
#: the variant a step that runs its own threads loads (:func:`twin`).
PARALLEL_TWIN = 1 << 22


def native_kernel(kid, dispatcher, restype, argtypes, parallel=None):
    """Register ``dispatcher`` as native kernel ``kid``: compiled on its own,
    for the signature ``argtypes(dtype) -> restype`` (``argtypes``: a function
    of a numba float type returning a tuple of numba types), and called from
    compiled code by address through :func:`kcall`.

    ``dispatcher`` may be a :class:`fastbp._jit.Kernel` (anything with
    ``serial`` and ``parallel`` dispatchers): its serial variant is kernel
    ``kid`` and its parallel one (``prange`` over independent outputs: the
    same results at any thread count) kernel ``kid + PARALLEL_TWIN``; or give
    the parallel twin as ``parallel``.

    Why: numba links a copy of every callee into its caller's module and
    optimises the whole again -- the interpreter re-optimised all ~20 kernels,
    those a model never uses included, on its first compilation (~60% of the
    ~20 s).  Called by address, each kernel is compiled once, only when a step
    needs it, and the interpreter compiles without them.

    The registered dispatcher itself compiles the kernel: a :class:`CompiledOnly` one
    (:func:`fastbp._jit.jit`: the handlers, helpers only compiled code calls) without numba's
    wrappers, a plain numba dispatcher (a Kernel's variants, which ``fastbp.ops``, compiled
    callers and the tests call from Python too) with them, so that one compilation per
    signature serves both Python and the tape (a wrapper-less twin compiled the same body
    again: the README's test command ran 11 % longer with it).
    """
    with LOCK:
        if kid in _NATIVE or not 0 <= kid < PARALLEL_TWIN:
            raise ValueError(f"native kernel id {kid} registered twice or out of range")
        if hasattr(dispatcher, "serial") and hasattr(dispatcher, "parallel"):
            dispatcher, parallel = dispatcher.serial, dispatcher.parallel
        _NATIVE[kid] = (dispatcher, restype, argtypes)
        if parallel is not None:
            _NATIVE[kid + PARALLEL_TWIN] = (parallel, restype, argtypes)


def renamed(fn, suffix, name=True, globals_=None):
    """A copy of ``fn`` whose qualified name (and, with ``name``, name) ends in ``suffix``;
    ``globals_``: names it sees besides (or instead of) its module's
    (:func:`fastbp.kernels.factory.specialise`).

    numba's disk cache names its index files after the qualified name and keys
    their entries by signature and bytecode, not by compilation flags: two
    compilations of one function with different flags (serial and parallel,
    with and without wrappers) must not share a name.
    """
    g = fn.__globals__ if globals_ is None else {**fn.__globals__, **globals_}
    new = types.FunctionType(fn.__code__, g, fn.__name__ + suffix if name else fn.__name__,
                             fn.__defaults__, fn.__closure__)
    new.__qualname__ = fn.__qualname__ + suffix
    new.__doc__ = fn.__doc__
    new.__module__ = fn.__module__
    return new


#: the flags of numba's two wrappers, off in a CompiledOnly dispatcher
_NO_WRAPPERS = {"no_cpython_wrapper": True, "no_cfunc_wrapper": True}


class CompiledOnly(CPUDispatcher):
    """A numba dispatcher for a function that compiled code calls: compiled
    without the two wrappers numba adds to every function it compiles (one that
    unboxes Python arguments and boxes the result, one with the C calling
    convention), which compiled callers never use -- the callees linked into
    compiled code (:func:`fastbp._jit.jit`), among them the handlers and helpers
    called by address (:func:`native_kernel`).  Lowering and optimising those
    wrappers was a quarter of a cold ``fastbp train``'s compilation.

    Called from Python, it runs a twin compiled with the wrappers
    (:meth:`for_python`, compiled on the first such call): the same results,
    never a call into missing code.
    """
    _python_twin = None

    @classmethod
    def of(cls, fn, options, cache):
        """``fn`` (a plain function) compiled with numba ``options`` but the wrappers;
        cached on disk with ``cache``."""
        disp = cls(py_func=fn, locals={}, targetoptions=dict(options, nopython=True, **_NO_WRAPPERS))
        if cache:
            disp.enable_caching()
        return disp

    def for_python(self):
        """The twin of this dispatcher that Python can call (same options, with the wrappers)."""
        twin_ = self._python_twin
        if twin_ is None:
            opts = {k: v for k, v in self.targetoptions.items() if k != "nopython" and k not in _NO_WRAPPERS}
            cached = not isinstance(self._cache, _caching.NullCache)
            twin_ = numba.njit(cache=cached, **opts)(renamed(self.py_func, "__py", name=False))
            self._python_twin = twin_
        return twin_

    def __call__(self, *args, **kwargs):
        return self.for_python()(*args, **kwargs)


def twin(kid):
    """The id of native kernel ``kid``'s parallel twin, or ``kid`` where it has none."""
    return kid + PARALLEL_TWIN if kid + PARALLEL_TWIN in _NATIVE else kid


def native_signature(kid, dtype):
    """``(restype, argtypes)`` of native kernel ``kid`` for ``dtype`` (a numpy dtype or numba type)."""
    disp, ret, argf = _NATIVE[kid]
    nt = dtype if isinstance(dtype, _types.Type) else numba.from_dtype(dtype)
    return ret, tuple(argf(nt))


def native_address(kid, dtype):
    """The address of native kernel ``kid`` compiled for ``dtype`` (compiling
    it, or loading it from numba's disk cache, on first use).

    The code stays loaded for the life of the process (its dispatcher keeps it).
    """
    disp, _, _ = _NATIVE[kid]
    ret, args = native_signature(kid, dtype)
    cres = disp.overloads.get(args)
    if cres is None:
        # with the registered return type: a function whose every return is
        # one constant (a handler that cannot fail) would type it as a literal
        disp.compile(ret(*args))
        cres = disp.overloads[args]
    if cres.signature.return_type != ret:
        raise TypeError(f"native kernel {kid}: compiled to return {cres.signature.return_type}, "
                        f"registered as returning {ret}")
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)


def native_cached(kid, dtype):
    """Whether native kernel ``kid`` for ``dtype`` is loaded, loading it from
    numba's disk cache if it is there (never compiling): True; False when it
    would have to be compiled; None when numba has no disk cache for it
    (caching off), or where numba's internals differ from those this was
    written for (numba 0.68: what ``Dispatcher.compile`` does before compiling)."""
    disp, _, _ = _NATIVE[kid]
    ret, args = native_signature(kid, dtype)
    if disp.overloads.get(args) is not None:
        return True
    from numba.core import caching
    cache = getattr(disp, "_cache", None)
    if cache is None or isinstance(cache, caching.NullCache) or not hasattr(disp, "targetctx"):
        return None
    from numba.core.compiler_lock import global_compiler_lock
    try:
        with global_compiler_lock:
            cres = cache.load_overload(ret(*args), disp.targetctx)
            if cres is None:
                return False
            disp.targetctx.insert_user_function(cres.entry_point, cres.fndesc, [cres.library])
            disp.add_overload(cres)
    except Exception:  # noqa: BLE001 - unknown internals: no answer, the caller compiles as usual
        return None
    return True


@_intrinsic
def kcall(typingctx, table, kid, args):
    """``kcall(table, KID, (arg, ...))``: call native kernel ``KID`` (a
    constant; see :func:`native_kernel`) at the address ``table[KID]``.

    The argument types are checked against the kernel's registered signature
    when the caller is compiled; a zero address raises RuntimeError.  The
    kernel's exceptions propagate.
    """
    if not (isinstance(table, _types.Array) and table.ndim == 1 and table.dtype == _types.int64
            and isinstance(kid, _types.IntegerLiteral) and isinstance(args, _types.BaseTuple)):
        return None
    k = kid.literal_value
    if k not in _NATIVE:
        raise numba.core.errors.TypingError(f"kcall: no native kernel {k}")
    arrays = [t for t in args.types if isinstance(t, _types.Array) and isinstance(t.dtype, _types.Float)]
    if not arrays:
        raise numba.core.errors.TypingError(f"kcall: native kernel {k} needs a float array argument")
    ret, want = native_signature(k, arrays[0].dtype)
    if tuple(args.types) != want:
        raise numba.core.errors.TypingError(
            f"kcall: native kernel {k} ({_NATIVE[k][0].py_func.__name__}) takes {want}, got {tuple(args.types)}")

    def impl(context, builder, signature, llargs):
        ary = context.make_array(signature.args[0])(context, builder, value=llargs[0])
        addr = builder.load(builder.gep(ary.data, [context.get_constant(_types.intp, k)]))
        zero = context.get_constant(_types.int64, 0)
        with _cgutils.if_unlikely(builder, builder.icmp_signed("==", addr, zero)):
            context.call_conv.return_user_exc(
                builder, RuntimeError, (f"fastbp: native kernel {k} was not loaded for this step",))
        fnty = context.call_conv.get_function_type(ret, want)
        fn = builder.inttoptr(addr, fnty.as_pointer())
        vals = [builder.extract_value(llargs[2], i) for i in range(len(want))]
        status, res = context.call_conv.call_function(builder, fn, ret, want, vals)
        with _cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return res
    return ret(table, kid, args), impl


# ----------------------------------------------------------- compilation watch
class CompileWatch:
    """Measures the native compilation numba does while it is active
    (:func:`compile_watch`): loading compiled code from the disk cache does
    not count.

    Attributes
    ----------
    seconds : float
        Wall time spent compiling (outermost compilations only: a kernel
        compiled for a caller is counted once, inside the caller's).
    functions : int
        Number of outermost compilations.
    """

    def __init__(self, on_first=None):
        self.seconds = 0.0
        self.functions = 0
        self._on_first = on_first
        self._depth = 0
        self._t0 = 0.0
        self._listener = None

    @property
    def compiled(self):
        """Whether anything was compiled (the cache was cold for some code)."""
        return self.functions > 0

    def _start(self, event):
        import time
        if self._depth == 0:
            self._t0 = time.perf_counter()
            if self.functions == 0 and self._on_first is not None:
                cb, self._on_first = self._on_first, None
                try:
                    cb()
                except Exception:  # noqa: BLE001 - a message must never break a compilation
                    pass
        self._depth += 1

    def _end(self, event):
        import time
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0
            self.functions += 1

    def __enter__(self):
        from numba.core import event as _ev

        watch = self

        class _Listener(_ev.Listener):
            def on_start(self, event):
                watch._start(event)

            def on_end(self, event):
                watch._end(event)

        self._listener = _Listener()
        _ev.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event as _ev
        if self._listener is not None:
            _ev.unregister("numba:compile", self._listener)
            self._listener = None
        return False

    def start(self):
        """Start watching (as ``with``); returns ``self``."""
        return self.__enter__()

    def stop(self):
        """Stop watching; ``seconds`` and ``functions`` keep their values."""
        self.__exit__(None, None, None)
        return self


def compile_watch(on_first=None):
    """A context manager (:class:`CompileWatch`) measuring numba compilation.

    Parameters
    ----------
    on_first : callable, optional
        Called with no arguments when the first compilation starts (not on a
        warm cache): e.g. to tell the user that a one-time compilation is
        under way.

    Examples
    --------
    >>> with compile_watch() as w:                      # doctest: +SKIP
    ...     step = fastbp.compile(model); step(x, y)
    >>> if w.compiled:                                  # doctest: +SKIP
    ...     print(f"compiling native code, one time: {w.seconds:.1f} s")
    """
    return CompileWatch(on_first)
