"""The helper process of :mod:`fastbp._compile_pool`: ``python -m fastbp._compile_helper``
compiles a share of a step's native kernels into numba's disk cache and exits.

A module of its own (not run as ``python -m fastbp._compile_pool``): it imports
the executor, which registers the interpreter and its handlers, and the
executor imports the pool.
"""
import json
import sys
import threading

import numpy as np

from . import _executor  # noqa: F401 - registers the product dispatcher, the handlers and the interpreter
from ._native import _NATIVE, PARALLEL_TWIN, native_address
from .kernels import table


def _main(argv):
    """The helper: compile ``share`` (JSON list of ``[kid, qualname]``) for the
    dtype named ``argv[0]`` into numba's disk cache, in that order.  With
    ``--share`` (``argv[2]``): before each unit, write its id on a line of the
    standard output, and skip the units whose ids the parent wrote on the
    standard input (it compiles them)."""
    dtype = np.dtype(argv[0])
    share = json.loads(argv[1])
    taken = set()
    sharing = argv[2:3] == ["--share"]
    if sharing:
        def read_taken():
            for line in sys.stdin:
                try:
                    taken.add(int(line))
                except ValueError:
                    pass
        threading.Thread(target=read_taken, daemon=True).start()
    bf16_tried = False
    for kid, qualname in share:
        if kid in taken:
            continue
        base = kid % PARALLEL_TWIN        # a parallel twin registers with its kernel
        if table.K_ACT <= base < table.K_ACT + table.N_ROLES * table._R.CAPACITY and kid not in _NATIVE:
            try:
                table.ensure_act_kernels((base - table.K_ACT) // table.N_ROLES)
            except (ValueError, RuntimeError):
                continue
        if table.K_GATE <= base < table.K_GATE + table.GATE_ROLES * table._gates.R.CAPACITY and kid not in _NATIVE:
            try:
                table.ensure_gate_kernels((base - table.K_GATE) // table.GATE_ROLES)
            except (ValueError, RuntimeError):
                continue
        entry = _NATIVE.get(kid)
        if entry is None and not bf16_tried:     # the bf16 kernels and handlers register on demand
            bf16_tried = True
            try:
                from . import _bf16
                _bf16.require()
            except (ImportError, OSError, RuntimeError, ValueError):
                pass
            entry = _NATIVE.get(kid)
        if entry is None or entry[0].py_func.__qualname__ != qualname:
            continue        # not the parent's kernel: the parent compiles it
        if kid in taken:
            continue
        if sharing:
            print(kid, flush=True)
        native_address(kid, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
