"""How much memory a step needs, checked before anything is allocated.

A model too large for the machine must raise a :class:`MemoryError` that
says how much it would need, not get the process killed by the kernel's
out-of-memory killer halfway through building its initial weights (numpy
allocations are lazy: an array far larger than the memory is often
"allocated" fine and the process dies when it is written).  So
:func:`fastbp.TrainStep` calls :func:`check` with :func:`step_bytes` (of the
plan of the model's shapes: :func:`fastbp._init_weights.step_bytes`) before
it draws a single initial weight, and :func:`fastbp.compiler.new_arena`
checks the exact arena size before allocating it.
"""
from __future__ import annotations

import os

__all__ = ["available_bytes", "step_bytes", "check", "fmt_bytes"]


def fmt_bytes(n):
    """``123456789`` -> ``"117.7 MiB"``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024.0 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} EiB"  # pragma: no cover


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo():
    """``MemAvailable + SwapFree`` from /proc/meminfo, in bytes (None if unreadable)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    try:
        kib = int(fields["MemAvailable"].split()[0]) + int(fields.get("SwapFree", "0 kB").split()[0])
    except (KeyError, ValueError, IndexError):
        return None
    return kib * 1024


def _cgroup_room():
    """Bytes left under this process's cgroup memory limit (v2, then v1), or None."""
    limit = _read_int("/sys/fs/cgroup/memory.max")
    used = _read_int("/sys/fs/cgroup/memory.current")
    if limit is None:
        limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit is None or used is None or limit >= 1 << 60:      # "max" / no limit
        return None
    return max(limit - used, 0)


def available_bytes():
    """Memory this process can still get, in bytes, or None where it cannot be told.

    The smaller of the kernel's estimate (``MemAvailable`` plus free swap)
    and the room left under a cgroup memory limit (containers); where
    neither is readable, the free physical memory (``os.sysconf``).
    """
    room = [v for v in (_meminfo(), _cgroup_room()) if v is not None]
    if not room:
        try:
            room.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(room)


def step_bytes(arena_size, itemsize, batch_size, n_params, largest, init=True):
    """The bytes a training step allocates, from its plan's sizes.

    Parameters
    ----------
    arena_size : int
        Values in the step's arena (``plan.arena_size``).
    itemsize : int
        4 (float32) or 8 (float64).
    batch_size : int
    n_params : int
        Values of all the parameters.
    largest : int
        Values of the largest parameter.
    init : bool, default True
        The step draws its initial weights (float64, one layer at a time,
        held by the graph until they are written into the arena).

    Returns
    -------
    total : int
    buffers : int
        The step's own arrays: the arena and the float64/int64 staging of one
        minibatch.
    """
    buffers = itemsize * max(arena_size, 1) + 8 * 2 * batch_size
    # the graph keeps a float64 copy of every initial weight until the arena is
    # filled; the layer being drawn needs one more float64 array
    transient = 8 * (n_params + (largest if init else 0))
    return buffers + transient, buffers


def check(need, what, detail=""):
    """Raise :class:`MemoryError` if ``need`` bytes cannot be had.

    Parameters
    ----------
    need : int
        Bytes about to be allocated.
    what : str
        What needs them (starts the message).
    detail : str, optional
        How ``need`` is made up (in brackets after the size).

    Raises
    ------
    MemoryError
        ``need`` exceeds :func:`available_bytes` (or the address space:
        ``2**63`` bytes), saying how much was needed and how much is free.
    """
    avail = available_bytes()
    if need < (1 << 63) and (avail is None or need <= avail):
        return
    have = ("" if avail is None else
            f"; this machine has {fmt_bytes(avail)} ({avail} bytes) of memory available")
    raise MemoryError(f"{what} needs about {fmt_bytes(need)} ({need} bytes"
                      f"{': ' + detail if detail else ''}){have}; nothing was allocated")
