"""``precision="bf16"``: what the CPU and the installation offer, and loading it.

A bf16 step keeps float32 master weights, optimizer state, activations and
loss; only the matrix products of its linear layers read bfloat16 copies of
their operands and accumulate in float32 (``dnnl_gemm_bf16bf16f32`` of oneDNN,
which runs on the CPU's AVX512-BF16 dot-product instructions or its AMX tiles).

This module decides whether that is possible and makes it so:

* the CPU: Linux x86-64 with ``avx512_bf16`` or ``amx_bf16`` among the
  kernel's CPU flags (``/proc/cpuinfo``);
* the library: oneDNN's ``libdnnl.so.3`` (``pip install -e '.[bf16]'`` in the fastbp clone,
  which brings the ``onednn-cpu-gomp`` wheel: GNU OpenMP, the runtime numba's
  ``omp`` layer uses too), or the file named by ``FASTBP_DNNL``.  Its gemm's
  address is registered with LLVM under
  :data:`fastbp.kernels.bf16.GEMM_SYM`, so cached machine
  code links against whichever copy this process loaded.  oneDNN asks Linux
  for the AMX tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)``)
  itself before its first AMX kernel.

:func:`resolve` turns a ``precision`` argument into ``"full"`` or ``"bf16"``
with the errors a user should see; :func:`require` loads the library and the
bf16 kernels (once per process).
"""
import ctypes
import ctypes.util
import glob
import os
import platform
import struct
import sys

import numpy as np

__all__ = ["PRECISIONS", "ENV_VAR", "cpu_support", "available", "info", "known", "precision_name", "resolve",
           "require"]

#: the values ``precision`` takes
PRECISIONS = ("full", "bf16", "auto")
#: the environment variable naming a ``libdnnl`` to load instead of searching
ENV_VAR = "FASTBP_DNNL"
#: oneDNN's bf16 gemm, the one routine of the library fastbp calls
GEMM = "dnnl_gemm_bf16bf16f32"
_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

_state = {"lib": None, "error": None, "ready": False, "path": None}


def _cpu_flags(path="/proc/cpuinfo"):
    """The kernel's CPU flags of the first processor (empty when unknown)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_support(flags=None):
    """The CPU's bf16 matrix instructions fastbp can use: a tuple of the flags
    found among ``avx512_bf16`` and ``amx_bf16`` (empty: none, or not Linux x86-64).

    Parameters
    ----------
    flags : set of str, optional
        The CPU flags to look at (default: this machine's, from ``/proc/cpuinfo``).
    """
    if flags is None:
        if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
            return ()
        flags = _cpu_flags()
    return tuple(f for f in _CPU_FLAGS if f in flags)


def _candidates():
    env = os.environ.get(ENV_VAR)
    if env:
        return [env]
    out = []
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, getattr(sys, "exec_prefix", sys.prefix)]):
        out += sorted(glob.glob(os.path.join(prefix, "lib", "libdnnl.so.3*")))
    found = ctypes.util.find_library("dnnl")
    if found:
        out.append(found)
    return out


def _load_library():
    """oneDNN's library with the bf16 gemm, or an error message."""
    tried = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            getattr(lib, GEMM)
            _state["path"] = path
            return lib, None
        except (OSError, AttributeError) as e:
            tried.append(str(e))
    if os.environ.get(ENV_VAR):
        return None, (f"precision='bf16': {ENV_VAR}={os.environ[ENV_VAR]!r} is not a oneDNN library with "
                      f"{GEMM} ({tried[0]})")
    return None, ("precision='bf16' needs oneDNN, which is not installed: pip install -e '.[bf16]' "
                  "in the fastbp clone "
                  f"(or set {ENV_VAR} to a libdnnl.so.3)")


def _library():
    if _state["lib"] is None and _state["error"] is None:
        _state["lib"], _state["error"] = _load_library()
    return _state["lib"], _state["error"]


def _openmp():
    """The OpenMP runtime oneDNN runs on (loaded with it: ``libgomp.so.1`` for the
    ``onednn-cpu-gomp`` wheel, ``libiomp5.so`` for an Intel-OpenMP build)."""
    for name in ("libgomp.so.1", "libiomp5.so", "libomp.so"):
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
        except OSError:
            continue
        return lib
    raise ImportError("precision='bf16': oneDNN is loaded but its OpenMP runtime was not found")


def available():
    """Whether ``precision="bf16"`` works in this process: ``(True, "")`` or
    ``(False, why)``, ``why`` naming what is missing (the CPU's instructions or
    the library)."""
    if not cpu_support():
        return False, ("precision='bf16' needs a CPU with AVX512-BF16 or AMX-BF16 instructions "
                       "(Linux x86-64 CPU flag avx512_bf16 or amx_bf16); this CPU has neither")
    lib, err = _library()
    if lib is None:
        return False, err
    return True, ""


def _is_elf(path):
    """Whether ``path`` is a readable ELF file (a shared library can be; a text file,
    a folder or a missing path cannot), read without loading it."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _elf_defines(path, symbol):
    """Whether the ELF file ``path`` defines ``symbol`` in its dynamic symbol table, read
    without loading it (False for anything else: not a 64-bit little-endian ELF file,
    unreadable, or the symbol only imported or absent)."""
    want = symbol.encode() + b"\0"
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return False
            shoff = struct.unpack_from("<Q", head, 0x28)[0]
            shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            # (type, offset, size, link, entsize) of every section
            sections = [struct.unpack_from("<4xI16xQQI12xQ", table, i * shentsize) for i in range(shnum)]
            for kind, off, size, link, entsize in sections:
                if kind != 11 or not entsize:           # SHT_DYNSYM
                    continue
                f.seek(sections[link][1])
                names = f.read(sections[link][2])
                at, i = set(), names.find(want)         # the name's offsets (a longer name's tail too)
                while i >= 0:
                    at.add(i)
                    i = names.find(want, i + 1)
                if not at:
                    continue
                f.seek(off)
                syms = f.read(size)
                for i in range(0, len(syms) - 23, entsize):
                    name, shndx = struct.unpack_from("<I2xH", syms, i)
                    if shndx != 0 and name in at:       # SHN_UNDEF (0): imported, not defined
                        return True
    except (OSError, struct.error, IndexError):
        pass
    return False


def _library_file():
    """``(path, why)`` of the library :func:`info` reports, without loading it: the first
    candidate that defines the gemm, else the first ELF file found (with why it is not
    usable), else ``(None, None)``."""
    found = [p for p in _candidates() if _is_elf(p)]
    for p in found:
        if _elf_defines(p, GEMM):
            return p, None
    if not found:
        return None, None
    lib = f"{ENV_VAR}={found[0]!r}" if os.environ.get(ENV_VAR) else repr(found[0])
    return found[0], f"precision='bf16': {lib} is not a oneDNN library with {GEMM} (it does not define it)"


def info():
    """What ``precision="bf16"`` would use here (public as ``fastbp.bf16_info()``),
    without loading oneDNN into the process if it is not loaded yet (unless it is named
    by a library name that only the dynamic loader resolves, not a file path).

    Returns
    -------
    dict
        ``cpu`` (the bf16 CPU flags found), ``library`` (the oneDNN file
        loaded, else the first shared-library file found that defines
        ``dnnl_gemm_bf16bf16f32``, else the first one found, else None),
        ``available`` (the CPU's instructions and a library with that
        routine) and ``why`` (what is missing, "" when nothing is).
    """
    cpu = list(cpu_support())
    path, lacking = (_state["path"], None) if _state["path"] else _library_file()
    if not cpu:
        why = available()[1] if sys.platform == "linux" else "precision='bf16' needs Linux x86-64"
    elif path is None:
        # no file found: a name only the dynamic loader resolves (FASTBP_DNNL=libdnnl.so.3, what
        # find_library returns) is loaded to know, as available() does
        why = _library()[1] or ""
        path = _state["path"]
    else:
        why = lacking or ""
    return {"cpu": cpu, "library": path, "available": bool(cpu) and path is not None and lacking is None,
            "why": why}


def known(precision):
    """Whether ``precision`` names one of :data:`PRECISIONS` (any case)."""
    return isinstance(precision, str) and precision.lower() in PRECISIONS


def precision_name(precision):
    """``precision`` lower-cased, checked: ``TypeError`` for a non-string, ``ValueError``
    for an unknown name (both naming the argument and the choices)."""
    if not isinstance(precision, str):
        raise TypeError(f"precision must be one of {PRECISIONS}, got {type(precision).__name__} {precision!r}")
    if not known(precision):
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision.lower()


def resolve(precision, dtype, device="cpu"):
    """``"full"`` or ``"bf16"``: the precision a step of ``dtype`` on ``device`` uses.

    Parameters
    ----------
    precision : {"full", "bf16", "auto"}
        ``"full"``: every product in ``dtype``.  ``"bf16"``: the linear layers'
        products on bfloat16 copies of their operands, accumulated in float32.
        ``"auto"``: ``"bf16"`` where this machine allows it (float32 step on the
        CPU, bf16 instructions, oneDNN installed), ``"full"`` otherwise.
    dtype : numpy dtype
        The step's dtype (its master weights').
    device : str
        ``"cpu"`` or ``"cuda"``.

    Raises
    ------
    TypeError
        ``precision`` is not a string.
    ValueError
        An unknown name, or ``"bf16"`` with ``dtype`` float64 or a device
        other than the CPU.
    RuntimeError
        ``"bf16"`` on a CPU without AVX512-BF16 or AMX-BF16.
    ImportError
        ``"bf16"`` without oneDNN installed.
    """
    p = precision_name(precision)
    if p == "full":
        return "full"
    ok_dtype = np.dtype(dtype) == np.float32
    if p == "auto":
        return "bf16" if ok_dtype and device == "cpu" and available()[0] else "full"
    if not ok_dtype:
        raise ValueError(f"precision='bf16' keeps float32 master weights: dtype must be float32, "
                         f"got {np.dtype(dtype).name}")
    if device != "cpu":
        raise ValueError(f"precision='bf16' runs on the CPU only; got device={device!r}")
    ok, why = available()
    if not ok:
        raise (RuntimeError if not cpu_support() else ImportError)(why)
    return "bf16"


def require():
    """Load oneDNN, register its gemm for the bf16 product kernel, and the bf16 kernels
    and handlers (once per process).  Raises like :func:`resolve` with ``"bf16"``."""
    if _state["ready"]:
        return
    resolve("bf16", np.float32)
    import llvmlite.binding as llvm
    lib, _ = _library()
    from .kernels import bf16 as _kernels   # registers the conversion and product kernels
    llvm.add_symbol(_kernels.GEMM_SYM, ctypes.cast(lib.dnnl_gemm_bf16bf16f32, ctypes.c_void_p).value)
    omp = _openmp()
    llvm.add_symbol(_kernels.OMP_SET_SYM, ctypes.cast(omp.omp_set_num_threads, ctypes.c_void_p).value)
    llvm.add_symbol(_kernels.OMP_GET_SYM, ctypes.cast(omp.omp_get_max_threads, ctypes.c_void_p).value)
    from . import _handlers_bf16            # registers the bf16 linear handlers
    _state["modules"] = (_kernels, _handlers_bf16)
    _state["ready"] = True
