"""The numba machinery in fastbp._jit: the intrinsics the executor builds its views with."""
import os
import re
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from fastbp import _jit
from fastbp._jit import block2d, call_fnptr4, int64_bits_as_float64, unmanaged


@numba.njit
def _write_through_unmanaged(a, v):
    u = unmanaged(a)
    w = u[1:3]          # a view of the unmanaged array
    w[:] = v
    return u.shape[0], u[0]


@numba.njit
def _block(flat, off, r, c):
    b = block2d(flat, off, r, c)
    b[0, c - 1] += 1.0  # writes land in flat
    return b.copy()     # a managed copy may leave the function


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unmanaged_is_the_same_memory(dtype):
    a = np.arange(5, dtype=dtype)
    n, first = _write_through_unmanaged(a, dtype(7))
    assert n == 5 and first == 0
    np.testing.assert_array_equal(a, np.array([0, 7, 7, 3, 4], dtype))


def test_unmanaged_takes_no_reference():
    a = np.arange(5.0)
    before = sys.getrefcount(a)
    for _ in range(100):
        _write_through_unmanaged(a, 1.0)
    assert sys.getrefcount(a) == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("off,r,c", [(0, 1, 1), (3, 2, 5), (7, 4, 3), (0, 5, 4)])
def test_block2d_is_the_reshaped_slice(dtype, off, r, c):
    flat = np.arange(20, dtype=dtype)
    want = flat[off:off + r * c].reshape(r, c).copy()
    want[0, c - 1] += 1
    got = _block(flat, off, r, c)
    assert got.dtype == dtype and got.shape == (r, c)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(flat[off:off + r * c].reshape(r, c), want)


def test_block2d_rejects_what_it_cannot_view():
    with pytest.raises(numba.TypingError):
        _block(np.zeros((4, 5)), 0, 2, 2)           # not 1-D


def test_int64_bits_as_float64():
    @numba.njit
    def f(i):
        return int64_bits_as_float64(i)
    for v in (1.0, -2.5, 0.0, np.inf, 1e-300):
        assert f(np.array(v).view(np.int64).item()) == v


def test_call_fnptr4_calls_the_address_with_four_pointers():
    import ctypes
    seen = []
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    cb = proto(lambda a, b, c, d: seen.append((a, b, c, d)))
    addr = ctypes.cast(cb, ctypes.c_void_p).value

    @numba.njit
    def f(fn, a, b, c, d):
        call_fnptr4(fn, a, b, c, d)

    f(addr, 1, 2, 3, 2 ** 40)
    assert seen == [(1, 2, 3, 2 ** 40)]


#: what marks a module whose functions numba compiles (and caches on disk)
_COMPILED = re.compile(r"@jit\b|@numba\.njit|numba\.njit\(|cuda\.jit\(|@intrinsic|@kernel\b|\bKernel\(")


def test_the_cache_stamp_covers_every_module_with_compiled_code():
    """numba invalidates a cached function only when its own file changes, so the
    stamp of fastbp's sources must include every module with compiled code: the
    executor inlines the handlers and the arena views; a stale copy would run."""
    pkg = Path(_jit.__file__).parent
    stamped = {Path(p).resolve() for p in _jit._stamped_files()}
    compiled = {p.resolve() for p in pkg.rglob("*.py")
                if p.parent.name != "bench" and _COMPILED.search(p.read_text())}
    assert {"_handlers.py", "_arena_views.py", "_executor.py", "activations.py"} <= {p.name for p in compiled}
    assert not compiled - stamped, sorted(str(p.relative_to(pkg)) for p in compiled - stamped)
    for name in _jit.STAMPED_MODULES:
        assert (pkg / name).is_file(), name


def test_the_cache_stamp_changes_with_a_handler(tmp_path, monkeypatch):
    """Editing a stamped file changes the stamp (and so drops the cache)."""
    before = _jit._source_stamp()
    files = _jit._stamped_files()
    handlers = next(p for p in files if p.endswith("_handlers.py"))
    copy = tmp_path / "_handlers.py"
    copy.write_text(Path(handlers).read_text() + "\n# edited\n")
    monkeypatch.setattr(_jit, "_stamped_files", lambda: [str(copy) if p == handlers else p for p in files])
    assert _jit._source_stamp() != before


_PROBE_SCRIPT = r"""
import sys, importlib.util
import fastbp, numba, numpy as np
from fastbp import _jit
from numba.np import arraymath, linalg
have_scipy = importlib.util.find_spec("scipy") is not None
assert _jit._NUMPY_SUPPORT_EARLY == have_scipy, _jit._NUMPY_SUPPORT_EARLY
assert arraymath._HAVE_BLAS == have_scipy            # numba's own probe's answer
assert arraymath.ensure_blas is linalg.ensure_blas   # the real probe is back in both places
assert linalg.ensure_blas.__module__ == "numba.np.linalg"

@numba.njit(cache=False)
def plain(a):
    return a.sum() * 2.0

assert plain(np.ones(3)) == 6.0                       # numba's CPU target loaded
assert "scipy.linalg" not in sys.modules, "numba imported scipy.linalg"
if have_scipy:
    @numba.njit(cache=False)
    def dot(a, b):
        return np.dot(a, b)
    assert dot(np.ones(3), np.arange(3.0)) == 3.0       # np.dot still finds scipy's BLAS
print("ok")
"""


def test_numba_numpy_support_loads_without_importing_scipy_linalg():
    """A process's first compilation or cache load no longer pays numba's import of
    scipy.linalg (0.22-0.38 s of a warm first step); numba's answer and probe stay its own."""
    import subprocess
    out = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


# ------------------------------------------------ functions that compiled code calls
def _twice_plus(a, k):
    """A helper for the tests below (compiled with fastbp's jit)."""
    s = 0.0
    for i in range(a.shape[0]):
        s += 2.0 * a[i] + k
    return s


def test_a_helper_compiles_without_wrappers_and_python_calls_run_a_wrapped_twin():
    """jit() makes a CompiledOnly dispatcher: compiled code links it as usual, its own
    compilation has neither numba's Python wrapper nor its C wrapper, and a call from
    Python runs a twin compiled with them (same result, no call into missing code)."""
    helper = _jit.jit(_twice_plus)
    assert isinstance(helper, _jit.CompiledOnly)
    assert helper.targetoptions["no_cpython_wrapper"] and helper.targetoptions["no_cfunc_wrapper"]

    @numba.njit
    def caller(a):
        return helper(a, 1.5)

    a = np.arange(5.0)
    want = _twice_plus(a, 1.5)
    assert caller(a) == want                            # linked into a compiled caller
    (sig,) = helper.overloads                          # compiled for the caller, without wrappers
    lib = helper.overloads[sig].library
    fndesc = helper.overloads[sig].fndesc
    assert lib.get_pointer_to_function(fndesc.llvm_cpython_wrapper_name) == 0
    assert lib.get_pointer_to_function(fndesc.llvm_func_name) != 0
    assert helper(a, 1.5) == want                       # from Python: the wrapped twin
    twin = helper.for_python()
    assert twin is helper.for_python() and not isinstance(twin, _jit.CompiledOnly)
    assert twin.py_func.__qualname__ == _twice_plus.__qualname__ + "__py"     # its own cache entries
    assert _jit.entry_point(helper, (a, 1.5))(a, 1.5) == want


def test_python_entry_points_and_inlined_helpers_are_plain_dispatchers():
    assert not isinstance(_jit.jit(_twice_plus, python=True), _jit.CompiledOnly)
    assert not isinstance(_jit.jit(_twice_plus, inline=True), _jit.CompiledOnly)
    from fastbp import _executor as ex
    for fn in (ex.run_tape, ex.run_fit, ex.run_predict, ex.run_update):
        assert not isinstance(fn, _jit.CompiledOnly), fn
    with pytest.raises(TypeError, match="not a plain Python function"):
        _jit.jit(_jit.jit(_twice_plus))


def test_native_kernels_are_compiled_once_for_python_and_the_tape():
    """What only compiled code calls by address (the handlers and helpers: fastbp._jit.jit)
    is compiled without numba's wrappers; a kernel that Python calls too (a Kernel's
    variants: fastbp.ops, the tests; the interpreter, which the step's checked path calls) is
    registered as its Python dispatcher itself, so one compilation serves both (a
    wrapper-less twin compiled the same body a second time)."""
    from fastbp import _executor as ex
    from fastbp._native import _NATIVE, PARALLEL_TWIN, native_address
    from fastbp.kernels import losses
    wrapped = set()
    for kid, (disp, _, _) in _NATIVE.items():
        opts = disp.targetoptions
        if isinstance(disp, _jit.CompiledOnly):
            assert opts.get("no_cpython_wrapper") and opts.get("no_cfunc_wrapper"), disp.py_func.__qualname__
        else:
            assert not opts.get("no_cpython_wrapper"), disp.py_func.__qualname__
            wrapped.add(kid)
        if disp.py_func.__module__.startswith("fastbp._handlers"):
            assert isinstance(disp, _jit.CompiledOnly), disp.py_func.__qualname__   # a handler
    assert {ex.K_RUN_TAPE, ex.K_SOFTMAX_XENT, ex.K_SOFTMAX_XENT + PARALLEL_TWIN} <= wrapped
    assert _NATIVE[ex.K_RUN_TAPE][0] is ex.run_tape
    serial = losses._softmax_xent.serial
    assert _NATIVE[ex.K_SOFTMAX_XENT][0] is serial
    assert _NATIVE[ex.K_SOFTMAX_XENT + PARALLEL_TWIN][0] is losses._softmax_xent.parallel
    # a call from Python and the tape's address are one compilation
    S = np.array([[1.0, 2.0], [0.5, -1.0]], dtype=np.float32)
    y = np.array([1, 0], dtype=np.int64)
    G = np.empty_like(S)
    serial(S, y, G, np.ones(2))
    before = dict(serial.overloads)
    addr = native_address(ex.K_SOFTMAX_XENT, np.float32)
    assert dict(serial.overloads) == before and addr != 0


def test_fastbp_imports_with_numbas_jit_disabled():
    """NUMBA_DISABLE_JIT=1 (numba's debugging switch) leaves plain functions: the import
    that registers the native kernels must not assume dispatchers."""
    import os
    import subprocess
    p = subprocess.run([sys.executable, "-c", "import fastbp._executor, fastbp.ops; print('ok')"],
                       capture_output=True, text=True, env=dict(os.environ, NUMBA_DISABLE_JIT="1"), timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


def test_chosen_kernels_share_one_dispatch_rule(monkeypatch):
    """The kernels chosen per call by code or mode (activations, gates, Adam) are
    ChosenKernels: each variant runs that variant of the chosen Kernel, ``pick``
    follows the Kernels' rule, and a bare ChosenKernel cannot choose."""
    from fastbp.kernels import activations, gates, optim
    from fastbp.registry import activations as acts, gates as gate_reg
    relu = acts.get("relu").code
    X = np.array([[-1.0, 2.0], [3.0, -4.0]])
    for pick in ("serial", "parallel"):
        Y = np.zeros_like(X)
        getattr(activations._act_fwd, pick)(X, relu, Y)
        assert np.array_equal(Y, np.maximum(X, 0))
    add = gate_reg.get("add").code
    out = np.zeros_like(X)
    gates._gate_fwd.parallel(add, X, X, out)
    assert np.array_equal(out, 2 * X)
    p = np.ones(4)
    optim._adam_update(p, np.ones(4), np.zeros(4), np.zeros(4), 1.0, 0.1, 0.9, 0.999, 1e-8, 0.0, True)
    assert np.allclose(p, 0.9)
    for k in (activations._act_fwd, activations._relu_fwd, gates._gate_bwd, optim._adam_update):
        assert isinstance(k, _jit.ChosenKernel)
        for threads in (2, 1):      # by the size alone (the thread count must not choose the bits)
            monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", threads)
            assert k.pick(_jit.PARALLEL_THRESHOLD) is k.parallel and k.pick(_jit.PARALLEL_THRESHOLD - 1) is k.serial
        assert k.__name__ in repr(k) and "(by " in repr(k)
    assert "weight-decay mode" in repr(optim._adam_update)
    assert gates._gate_fwd.__doc__.startswith("``out = A (gate) B``")
    with pytest.raises(NotImplementedError):
        _jit.ChosenKernel("bare").serial(1)


def test_a_stamp_change_drops_the_cache_of_every_stamped_folder(tmp_path, monkeypatch):
    """The registry's element bodies are compiled and cached too: a stamp change drops their
    cache files with the package's and the kernels' (the registry's once outlived a change,
    and a body compiled with fast-math was loaded by a kernel compiled without it)."""
    if not _jit._CACHE:
        pytest.skip("FASTBP_NO_CACHE")
    pkg = tmp_path / "fastbp"
    files = []
    for sub in ("", "kernels", "kernels/cuda", "registry"):
        (pkg / sub / "__pycache__").mkdir(parents=True, exist_ok=True)
        src = pkg / sub / "mod.py"
        src.write_text(f"# {sub}\n")
        files.append(str(src))
        for ext in ("nbi", "nbc"):
            (pkg / sub / "__pycache__" / f"mod.f-1.py311.{ext}").write_bytes(b"stale")
    (pkg / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"kept")
    (pkg / "__pycache__" / "fastbp-numba-cache.stamp").write_text("an older stamp")
    monkeypatch.setattr(_jit, "__file__", str(pkg / "_jit.py"))
    monkeypatch.setattr(_jit, "_stamped_files", lambda: files)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    _jit._drop_stale_cache()
    assert not list(pkg.rglob("*.nbi")) and not list(pkg.rglob("*.nbc"))
    assert (pkg / "__pycache__" / "mod.cpython-311.pyc").read_bytes() == b"kept"
    assert (pkg / "__pycache__" / "fastbp-numba-cache.stamp").read_text() == _jit._source_stamp()


@pytest.mark.parametrize("value, cache", [("0", True), ("false", True), ("No", True), ("", True),
                                          ("1", False), ("yes", False), ("bogus", None)])
def test_boolean_environment_variables_read_their_words(value, cache):
    """FASTBP_NO_CACHE=0 (or false, no) turned numba's disk cache off (any non-empty value did),
    and FASTBP_DEBUG=false turned tracebacks on; a value that is no boolean is an error naming it."""
    import subprocess
    import sys
    env = dict(os.environ, FASTBP_NO_CACHE=value)
    res = subprocess.run([sys.executable, "-c", "from fastbp import _jit; print(_jit._CACHE)"], env=env,
                         capture_output=True, text=True)
    if cache is None:
        assert res.returncode != 0 and "FASTBP_NO_CACHE='bogus' is not one of: 1, true" in res.stderr
    else:
        assert res.returncode == 0 and res.stdout.strip() == str(cache), res.stderr
    from fastbp import config
    os.environ["FASTBP_TEST_FLAG"] = value
    try:
        if cache is None:
            with pytest.raises(ValueError, match="FASTBP_TEST_FLAG='bogus'"):
                config.env_flag("FASTBP_TEST_FLAG")
        else:
            assert config.env_flag("FASTBP_TEST_FLAG") is (not cache)
    finally:
        del os.environ["FASTBP_TEST_FLAG"]
