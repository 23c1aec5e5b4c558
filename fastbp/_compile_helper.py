"""The helper process of :mod:`fastbp._compile_pool`: ``python -m fastbp._compile_helper``
compiles a share of a step's native kernels into numba's disk cache and exits
(where the helper is not a fork of the parent: :func:`fastbp._compile_pool._fork_safe`).

A module of its own (not run as ``python -m fastbp._compile_pool``): it imports
the executor, which registers the interpreter and its handlers, and the
executor imports the pool.
"""
import json
import sys

import numpy as np

from . import _executor  # noqa: F401 - registers the product dispatcher, the handlers and the interpreter
from ._compile_pool import compile_share


def _main(argv):
    """The helper: compile ``share`` (JSON list of ``[kid, qualname]``) for the
    dtype named ``argv[0]`` into numba's disk cache, in that order.  With
    ``--share`` (``argv[2]``): before each unit, write its id on a line of the
    standard output, and skip the units whose ids the parent wrote on the
    standard input (it compiles them): :func:`fastbp._compile_pool.compile_share`."""
    sharing = argv[2:3] == ["--share"]
    compile_share(np.dtype(argv[0]), json.loads(argv[1]), sys.stdout if sharing else None,
                  sys.stdin if sharing else None)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
