"""The error of a ``FASTBP_*`` environment variable with a bad value, and what the ``fastbp``
command does with it at import (imports nothing of fastbp: it must load when the rest cannot)."""
import os
import sys


class EnvError(ValueError):
    """A ``FASTBP_*`` environment variable holds a value fastbp cannot use (the message names
    the variable and its value)."""


class EnvImportError(EnvError, ImportError):
    """An :class:`EnvError` that stops the import of a module (``FASTBP_BLAS``)."""


def exit_if_command(error):
    """At ``import fastbp`` from the ``fastbp`` command or ``python -m fastbp...``: the bad
    variable as one line on stderr and exit status 2, as for a bad argument, not a traceback
    (the CLI's own error handling starts only once fastbp is imported).  A program that imports
    fastbp gets the exception."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    if os.path.basename(sys.argv[0] if sys.argv else "") == "fastbp" or module.split(".")[0] == "fastbp":
        sys.stderr.write(f"fastbp: error: {error}\n")
        raise SystemExit(2)
