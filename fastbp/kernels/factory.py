"""Kernels made per registry entry from one template: :func:`specialise`.

A template is an ordinary module-level function whose body calls a few
globals it does not define (``_F``, the entry's scalar forward, ``_D``, its
derivative); :func:`specialise` makes a copy of it that sees the entry's
functions under those names and carries its own qualified name.  numba then
compiles (and inlines the scalar bodies into) one set of loops per entry.

Why copies and not closures or ``exec``: numba caches a function on disk
under its qualified name, keyed by its bytecode and the pickled contents of
its closure cells.  A copy with its own name gets its own cache entry, and a
copy's globals are not part of the key (a closure over a numba dispatcher
would be, with a random id: never a cache hit), while an ``exec``-made
function has no source file and cannot be cached at all.  A change to an
entry's scalar body does not change the template's bytecode; fastbp's cache
stamp (:func:`fastbp._jit._source_stamp`) covers the registry for that.
"""
from .._native import renamed


def specialise(fn, suffix, **names):
    """A copy of ``fn`` named ``fn.__name__ + suffix`` whose globals are
    ``fn``'s plus ``names``.

    Parameters
    ----------
    fn : function
        The template (a module-level function).
    suffix : str
        Appended to its name and qualified name: one per entry and template,
        a valid identifier part (numba names cache files after it).
    **names
        Globals the copy sees instead of (or besides) the module's.
    """
    return renamed(fn, suffix, globals_=names)


# adapters: the kernels call _F(v, p0, p1) whatever the entry's number of parameters;
# specialised with _S, the entry's scalar function, for the CPU and the CUDA target
def _call0(v, p0, p1):
    return _S(v)  # noqa: F821 - injected by specialise


def _call1(v, p0, p1):
    return _S(v, p0)  # noqa: F821


def _call2(v, p0, p1):
    return _S(v, p0, p1)  # noqa: F821


#: the adapter for an entry with 0, 1 or 2 parameters
ADAPTERS = (_call0, _call1, _call2)


def entry_suffix(entry):
    """The name suffix of an entry's kernels: its name and a hash of its scalar
    bodies, their closure values and the globals they read
    (:mod:`fastbp.registry.fingerprint`: numba's disk cache keys a kernel by the
    template's bytecode, which an edited entry -- or one registered from outside
    fastbp, not covered by fastbp's cache stamp -- does not change)."""
    from ..registry.fingerprint import fingerprint     # code, closure values, the globals it reads
    bodies = (entry.forward, entry.derivative, entry.combine)   # combine: dy * d, or a gate's select
    return "__" + entry.name + "_" + fingerprint(*bodies)[:10]


class PerEntry:
    """``PerEntry(by_code, make)(code)``: ``make(entry)`` for the registry entry
    ``by_code(code)``, made on first use and kept; made again if the code now
    names another entry (a test registered and removed one).  ``by_code``
    raises ValueError for an unknown code.  ``make(entry)`` must return an
    object with an ``entry`` attribute (a set of kernels of one entry).
    """

    def __init__(self, by_code, make):
        self.by_code, self.make = by_code, make
        self._made = {}

    def __call__(self, code):
        entry = self.by_code(code)
        k = self._made.get(entry.code)
        if k is None or k.entry is not entry:
            k = self._made[entry.code] = self.make(entry)
        return k
