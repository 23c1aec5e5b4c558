"""Bytecode for the test session when writing it is off (``PYTHONDONTWRITEBYTECODE``, ``-B``).

With bytecode writing off, every Python process of a test session compiles the sources it
imports again: each pytest process rewrites and compiles every test module (collecting the
suite: 12 s of one core, 5 s with bytecode; three pytest processes collect it), and each of the
~90 child processes the tests start (``fastbp train``, probes, MPI ranks) compiles fastbp's own
modules (an editable install has no bytecode; pip byte-compiled the dependencies), 0.1-0.2 s
each.

:func:`keep_for_the_session` keeps the session's bytecode in a private temporary directory
(``sys.pycache_prefix``, and ``PYTHONPYCACHEPREFIX`` for the children), removed when the
session ends: still nothing is written beside the sources, which is what turning bytecode
writing off asks for.  It changes nothing where bytecode writing is on, or where the user
chose a prefix of their own.
"""
import os
import shutil
import sys
import tempfile

#: what this process changed, to undo at the end: (prefix made, environ, sys, the old values)
_MADE = []


def keep_for_the_session(environ=None, sysmod=None, mkdtemp=tempfile.mkdtemp):
    """If bytecode writing is off and no prefix is set, keep bytecode in a new temporary
    directory for this process and its children; returns that directory, else None.
    ``environ``, ``sysmod``: ``os.environ`` and ``sys`` (replaceable for the tests)."""
    environ = os.environ if environ is None else environ
    sysmod = sys if sysmod is None else sysmod
    if not sysmod.dont_write_bytecode or environ.get("PYTHONPYCACHEPREFIX") or sysmod.pycache_prefix:
        return None
    prefix = mkdtemp(prefix="fastbp-tests-bytecode-")
    _MADE.append((prefix, environ, sysmod, environ.get("PYTHONDONTWRITEBYTECODE")))
    sysmod.pycache_prefix = prefix
    sysmod.dont_write_bytecode = False
    environ["PYTHONPYCACHEPREFIX"] = prefix
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return prefix


def remove():
    """Undo :func:`keep_for_the_session` in this process (if it did anything): bytecode
    writing off again, the directory removed."""
    while _MADE:
        prefix, environ, sysmod, old = _MADE.pop()
        sysmod.dont_write_bytecode, sysmod.pycache_prefix = True, None
        environ.pop("PYTHONPYCACHEPREFIX", None)
        if old is not None:
            environ["PYTHONDONTWRITEBYTECODE"] = old
        shutil.rmtree(prefix, ignore_errors=True)
