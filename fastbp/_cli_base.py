"""Shared pieces of the ``fastbp`` command line (errors, output, MPI rank, paths)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

EXTRA = "pip install 'fastbp[examples]'"


class CliError(Exception):
    """An error reported to the user as one line (exit status 1)."""


class UsageError(Exception):
    """An argument error reported as one line (exit status 2)."""


class State:
    #: This process's MPI rank under ``mpiexec -n N fastbp train`` (0 otherwise):
    #: only rank 0 prints results and progress and writes files.
    rank = 0


def one_line(msg):
    return " ".join(str(msg).split())


def out(msg=""):
    """The single place where results are printed (stdout); rank 0 only."""
    if State.rank == 0:
        print(msg, flush=True)


def err(msg):
    if State.rank != 0:
        msg = f"[rank {State.rank}] {msg}"
    print(one_line(msg), file=sys.stderr, flush=True)


def warn(msg):
    """A one-line warning on stderr (rank 0 only)."""
    if State.rank == 0:
        err(f"fastbp: warning: {msg}")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def require(module, what):
    try:
        importlib.import_module(module)
    except ImportError:
        raise CliError(f"{what}, which is not installed: {EXTRA}") from None


def check_output_path(path, what, replaced=False):
    """CliError naming ``what`` unless ``path`` can be written; ``replaced``: the file is
    written by an atomic rename over it, so an existing device, pipe or socket is refused."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CliError(f"{what} {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise CliError(f"{what} {path}: is a directory")
    if replaced:
        from ._atomic import resolve        # the writer's own rule: a device, pipe or socket is refused
        try:
            resolve(path)
        except ValueError as e:
            raise CliError(f"{what}: {e}") from None
    if not os.access(parent, os.W_OK):
        raise CliError(f"{what} {path}: directory {parent} is not writable")


def ms(s):
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"
