"""Shared pieces of the ``fastbp`` command line (errors, output, MPI rank, paths)."""
from __future__ import annotations

import argparse
import importlib
import io
import os
import stat
import sys

from ._atomic import ends_with_separator, resolve

EXTRA = "pip install -e '.[examples]' in the fastbp clone"


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
    if ends_with_separator(path):
        raise CliError(f"{what} {path}: ends with a path separator, so it names a directory, not a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CliError(f"{what} {path}: directory {parent} "
                       f"{'is not a directory' if os.path.exists(parent) else 'does not exist'}")
    if os.path.isdir(path):
        raise CliError(f"{what} {path}: is a directory")
    if replaced:        # the writer's own rule: a device, pipe or socket is refused
        try:
            resolve(path)
        except ValueError as e:
            raise CliError(f"{what}: {e}") from None
    if not os.access(parent, os.W_OK):
        raise CliError(f"{what} {path}: directory {parent} is not writable")


def check_paths(prog, outputs, inputs):
    """Check the paths of a command before any work: ``outputs`` and ``inputs`` are
    ``(option, path or None)`` pairs.  An empty output path is a UsageError naming the
    option; an output that is the same file as an input, or as an earlier output, is a
    CliError naming both options (writing it would destroy the other)."""
    for opt, path in outputs:
        if path is not None and path == "":
            raise UsageError(f"{prog}: error: {opt}: expected a file path, got an empty string")
    named = [(opt, path) for opt, path in outputs if path is not None]
    for i, (opt, path) in enumerate(named):
        for other, q in [*inputs, *named[:i]]:
            if q is not None and q != "" and same_file(path, q):
                raise CliError(f"{opt} {path}: is the same file as {other} {q} (it would be overwritten)")


def check_csv_options(prog, args):
    """A UsageError if CSV-only options (``--delimiter``, ``--header``, ``--label-column``) are
    given with an ``.npz`` data file, which holds arrays, not text."""
    data = getattr(args, "data", None)
    if data is None or os.path.splitext(data)[1].lower() != ".npz":
        return
    for opt in ("label_column", "delimiter", "header"):
        if getattr(args, opt, None) is not None:
            flag = f"--{opt.replace('_', '-')}" if opt != "header" or args.header else "--no-header"
            raise UsageError(f"{prog}: error: {flag} applies to CSV files, not to the .npz file {data} "
                             "(it holds arrays, not delimited text)")


def same_file(a, b):
    """Whether paths ``a`` and ``b`` name one file: the same path once symbolic links are
    resolved, or (both existing) the same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def write_output(path, what, fill):
    """Write an output file (``--out``, ``--plot``) with what ``fill(binary_file)`` writes.

    A regular file (or a new one) is replaced atomically (:mod:`fastbp._atomic`: a
    temporary file renamed over it), so a failure (a full disk) leaves the old file as
    it was; a device or a pipe (``/dev/stdout``) is written in place.  An OSError is a
    CliError naming ``what``.
    """
    from . import _atomic
    try:
        try:
            special = not stat.S_ISREG(os.stat(path).st_mode)
        except FileNotFoundError:
            special = False
        if special:
            with open(path, "wb") as f:
                fill(f)
            return
        _atomic.write(_atomic.resolve(path), fill)
    except OSError as e:
        raise CliError(f"{what} {path}: {e.strerror or e}") from None


def text_writer(fill_text):
    """A ``fill`` for :func:`write_output` from a function that writes text (UTF-8, newlines as given)."""
    def fill(f):
        w = io.TextIOWrapper(f, encoding="utf-8", newline="")
        try:
            fill_text(w)
            w.flush()
        finally:
            w.detach()
    return fill


def ms(s):
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"
