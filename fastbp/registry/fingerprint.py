"""A registry entry's scalar bodies as one hash: what its compiled kernels are named by.

numba's disk cache keys a kernel by the bytecode of the function it compiles.
An entry's kernels are specialised copies of a template, so fastbp names them
by a hash of the entry's bodies (``_<name>_<hash>``).  Bytecode alone misses
what a body reads from outside its code: the values in its closure cells and
the module globals it names (a constant edited between runs, a factory's
argument), its default arguments and the attributes it reads from a module it
names (``cfg.K``), and a kernel compiled for the old values would be loaded from
the cache for the new ones.  :func:`fingerprint` hashes those too, following the
functions a body calls; an object it cannot hash by value is hashed by its
``repr`` (an address in it makes the key new in every process: recompiled, never
stale), and so is what lies deeper than ``_MAX_DEPTH`` calls or attributes.  A
module or class is walked by the names its reader's code uses (``cfg.K`` puts
``cfg`` and ``K`` in the code's names: ``cfg``'s ``K`` is hashed, and so is
``cfg.sub.K``; an enum's ``Mode.A`` member, with its value), whether the body
names it as a global, a closure value or a default argument; the standard
library's, numpy's and numba's modules and classes are keyed by name alone
(their attributes change with their versions, not between runs).
"""
from __future__ import annotations

import builtins
import hashlib
import marshal
import sys
import types

#: calls and attributes followed this deep; deeper ones are keyed by identity (recompiled per process)
_MAX_DEPTH = 64
#: top-level packages whose modules are keyed by name, not walked
_BY_NAME = frozenset(sys.stdlib_module_names) | {"numpy", "numba", "llvmlite"}


def fingerprint(*functions):
    """A hex digest of ``functions``' code, closure values and the globals they name."""
    h = hashlib.sha1()
    seen = set()
    for fn in functions:
        _feed(h, fn, 0, seen)
    return h.hexdigest()


def _global_names(code):
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


def _feed(h, obj, depth, seen, names=frozenset()):
    """Feed ``obj`` to ``h``; ``names``: the code names of the function that reached a module."""
    fn = getattr(obj, "py_func", obj)           # a numba dispatcher: its Python function
    if depth > _MAX_DEPTH and isinstance(fn, (types.FunctionType, types.ModuleType, type)):
        # too deep to follow: keyed by identity (new in every process: recompiled, never stale)
        h.update(f"deep:{getattr(fn, '__qualname__', getattr(fn, '__name__', ''))}@{id(fn):#x}".encode())
        return
    if isinstance(fn, types.FunctionType):
        if id(fn) in seen:
            h.update(b"fn:" + fn.__qualname__.encode())
            return
        seen.add(id(fn))
        # marshal version 2: no back-references, whose flags (version 3+) follow the constants' reference
        # counts (a float constant numba took a reference to while compiling changed the name)
        h.update(marshal.dumps(fn.__code__, 2))
        used = frozenset(_global_names(fn.__code__))    # (a module or class reached is walked by these)
        _feed(h, fn.__defaults__, depth + 1, seen, used)         # def f(x, k=K): K's value at definition
        _feed(h, sorted((fn.__kwdefaults__ or {}).items()), depth + 1, seen, used)
        for cell in fn.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:                  # an empty cell
                value = None
            _feed(h, value, depth + 1, seen, used)
        g = fn.__globals__
        for name in sorted(used):
            if name in g:
                h.update(b"global:" + name.encode())
                _feed(h, g[name], depth + 1, seen, used)
    elif isinstance(obj, (types.ModuleType, type)):
        module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None) or ""
        h.update(b"module:" + obj.__name__.encode() if isinstance(obj, types.ModuleType)
                 else b"class:" + f"{module}.{obj.__qualname__}".encode())
        if module == "builtins" and not isinstance(obj, types.ModuleType):     # (exec without __name__ too)
            if getattr(builtins, obj.__qualname__, None) is obj:
                return
        elif module.partition(".")[0] in _BY_NAME:
            return
        if (id(obj), names) in seen:
            return
        seen.add((id(obj), names))
        for name in sorted(names):              # cfg.K, Mode.A: the attributes the reader's code names
            try:
                value = obj.__dict__[name] if isinstance(obj, types.ModuleType) else getattr(obj, name)
            except (KeyError, AttributeError):
                continue
            except Exception:  # noqa: BLE001 - a class attribute whose lookup fails: keyed by identity
                value = object()
            h.update(b"attr:" + name.encode())
            _feed(h, value, depth + 1, seen, names)
    elif obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        h.update(type(obj).__name__.encode() + b":" + repr(obj).encode())
    elif isinstance(obj, (tuple, list, frozenset)):
        h.update(b"seq:")
        for v in (sorted(obj, key=repr) if isinstance(obj, frozenset) else obj):
            _feed(h, v, depth + 1, seen)
    elif hasattr(obj, "tobytes") and hasattr(obj, "dtype") and not isinstance(obj, type):   # an array, a scalar
        h.update(b"array:" + str(obj.dtype).encode() + repr(getattr(obj, "shape", ())).encode() + obj.tobytes())
    else:
        try:
            text = repr(obj)
        except Exception:                       # a broken __repr__: keyed by identity (recompiled per process)
            text = f"<{type(obj).__qualname__} at {id(obj):#x}>"
        h.update(b"repr:" + text.encode("utf-8", "backslashreplace"))
