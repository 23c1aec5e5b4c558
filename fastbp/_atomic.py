"""Atomic, durable file replacement (private to :mod:`fastbp.checkpoint`).

:func:`write` fills a temporary file in the target's directory, fsyncs it,
renames it over the target with :func:`os.replace` and fsyncs the
directory; on any failure the target is untouched and the temporary file is
removed.  Temporary names are ``.fastbp-<target>-<host>-<pid>-<random>.tmp``
(8, 6 and 8 hex digits and the writer's process id: at most 47 characters,
so any file name that is legal for the target is legal for the save).
``<target>`` hashes the target's base name, ``<host>`` the host name and,
on Linux, the PID namespace.  A process killed outright (SIGKILL, power
loss) cannot remove its temporary file; the next successful write to the
same target deletes such leftovers when they are provably stale: same
target, same host and PID namespace, and no process with that id exists.
Nothing else is ever deleted (a leftover whose process id was reused stays
until that process is gone).  Symbolic links are written through: the
link's final target is replaced, the link stays.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import stat

TEMP_NAME = re.compile(r"\.fastbp-([0-9a-f]{8})-([0-9a-f]{6})-([0-9]{1,10})-[0-9a-f]{8}\.tmp")


def _short_hash(text, n):
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def _host():
    """This host and PID namespace: where a process id names the same process."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{ns}"


def _tags(target):
    return _short_hash(os.path.basename(target), 8), _short_hash(_host(), 6)


def temp_name(target):
    """A fresh temporary name for ``target`` (a base name, no directory)."""
    tag, host = _tags(target)
    return f".fastbp-{tag}-{host}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def ends_with_separator(path):
    """Whether ``path`` (str, bytes or path-like) ends with a path separator: it names a directory,
    and ``open(path, "w")`` refuses it (``realpath`` would drop the separator)."""
    return os.fsdecode(path).endswith(tuple(s for s in (os.sep, os.altsep) if s))


def resolve(path):
    """The file a write to ``path`` replaces (symbolic links followed); checks its directory.

    An empty path is a FileNotFoundError and one ending in a separator an IsADirectoryError,
    as ``open(path, "w")`` says (``realpath`` would drop the separator and write a file)."""
    if os.fsdecode(path) == "":
        raise FileNotFoundError("path '' is empty: expected a file path")
    if ends_with_separator(path):
        raise IsADirectoryError(f"path {path!r} ends with a path separator: it names a directory, not a file")
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise FileNotFoundError(f"path {path!r}: directory {directory!r} {what}")
    if os.path.isdir(target):
        raise IsADirectoryError(f"path {path!r} is a directory")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(st.st_mode):
        # a device (/dev/null), a FIFO or a socket: the atomic rename would unlink it
        raise ValueError(f"path {path!r} is not a regular file (a device, a pipe or a socket); "
                         f"fastbp writes a file there by replacing it, which would remove it")
    return target


def _fsync_dir(directory):
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:          # Windows, or no permission to open the directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write(target, fill):
    """Replace ``target`` (from :func:`resolve`) atomically with what ``fill(file)`` writes."""
    directory = os.path.dirname(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode) & 0o777     # never copy setuid/setgid/sticky bits
    except OSError:
        mode = None
    tmp = os.path.join(directory, temp_name(target))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)     # keep the permissions of the file being replaced
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    remove_stale_temps(target)


def _pid_alive(pid):
    if not 0 < pid < 2**31:           # not a process id this system can have: never treated as gone
        return True
    try:
        os.kill(pid, 0)               # signal 0 only checks (POSIX; never called on Windows)
    except ProcessLookupError:
        return False
    except OSError:                   # EPERM: alive, another user's; anything else: assume alive
        return True
    return True


def remove_stale_temps(target):
    """Delete temporary files of killed writes to ``target`` (same host and PID namespace, writer
    gone); best effort, POSIX only."""
    if os.name != "posix":            # no safe liveness check (os.kill terminates on Windows)
        return
    tag, host = _tags(target)
    try:
        with os.scandir(os.path.dirname(target)) as it:
            for entry in it:
                m = TEMP_NAME.fullmatch(entry.name)
                if m is None or m.group(1) != tag or m.group(2) != host:
                    continue
                pid = int(m.group(3))
                try:
                    if pid == os.getpid() or _pid_alive(pid) or not entry.is_file(follow_symlinks=False):
                        continue
                    os.unlink(entry.path)
                except OSError:
                    pass
    except Exception:  # noqa: BLE001 - best effort: never fail a save that has already succeeded
        pass
