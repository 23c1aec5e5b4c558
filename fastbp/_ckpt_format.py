"""The checkpoint file format, version 1: arrays and metadata in, arrays and metadata out.

This module knows the file, not the step: :func:`save` takes any object
that exposes the attributes of the step protocol (``param_vector``,
``state_vectors``, ``hyper``, ``rng``, ``model``, ``loss``, ``optimizer``,
``batch_size``, ``dtype``, ``seed``: what every fastbp step has) and writes
them; :func:`read` checks a file and returns its metadata and arrays.
Rebuilding a step from them is :mod:`fastbp.checkpoint`'s job; the format
itself is described there.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re

import numpy as np

from . import _atomic
from ._npzread import Archive, BadArchive

__all__ = ["save", "read", "FORMAT_NAME", "FORMAT_VERSION", "MAX_META_CHARS"]

FORMAT_NAME = "fastbp-checkpoint"
FORMAT_VERSION = 1
#: the most optimizer state vectors a step keeps (RMSprop: square_avg, momentum buffer, grad_avg)
MAX_STATE = 3
#: Longest metadata JSON text written or read (characters; stored as UTF-32, 4 bytes each).
MAX_META_CHARS = 4 * 2**20

_MAX_JSON_DEPTH = 64          # nesting of the metadata; deeper would only risk recursion downstream
_MAX_INT_DIGITS = 100         # largest integer in the metadata (an RNG state needs 39 digits)
_EXTRA_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EXTRA_KINDS = "biufc"        # bool, integers, floats, complex
_STEP_ATTRS = ("param_vector", "state_vectors", "hyper", "rng", "model", "loss", "optimizer", "batch_size",
               "dtype", "seed")
_META_KEYS = ("format", "format_version", "fastbp_version", "model", "loss", "optimizer", "batch_size",
              "dtype", "seed", "rng", "n_state", "arrays")


class _Bad(Exception):
    """Internal: a validation failure, turned into ValueError naming the file."""


def _digest(a):
    """SHA-256 of an array's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def _array_names(n_state):
    return ["params"] + [f"state_{i}" for i in range(n_state)] + ["hyper"]


def _check_json(obj, where):
    """Raise TypeError/ValueError naming the spot unless ``obj`` is plain, bounded JSON
    (dicts with str keys, lists, str, bool, None, finite floats, ints of at most
    ``_MAX_INT_DIGITS`` digits, nested at most ``_MAX_JSON_DEPTH`` deep).  Iterative."""
    todo = [(obj, where, 0)]
    while todo:
        o, w, depth = todo.pop()
        if depth > _MAX_JSON_DEPTH:
            raise ValueError(f"{w}: nested more than {_MAX_JSON_DEPTH} levels deep")
        if o is None or isinstance(o, (bool, str)):
            continue
        if isinstance(o, int):
            if abs(o) >= 10 ** _MAX_INT_DIGITS:
                raise ValueError(f"{w}: integer with more than {_MAX_INT_DIGITS} digits")
        elif isinstance(o, float):
            if not math.isfinite(o):
                raise ValueError(f"{w}: {o} is not a finite number (JSON has no NaN or infinity)")
        elif isinstance(o, dict):
            for k, v in o.items():
                if not isinstance(k, str):
                    raise TypeError(f"{w}: key {k!r} is a {type(k).__name__}; JSON keys must be str")
                todo.append((v, f"{w}[{k!r}]", depth + 1))
        elif isinstance(o, (list, tuple)):
            todo.extend((v, f"{w}[{i}]", depth + 1) for i, v in enumerate(o))
        else:
            raise TypeError(f"{w} is a {type(o).__name__}, which is not JSON-serialisable "
                            "(use dict, list, str, int, float, bool or None)")


# ------------------------------------------------------------------------ save
def _check_extras(extra_arrays, extra_meta):
    """Validated, snapshotted copies: ``{"extra.<name>": C-ordered native array}`` and the meta dict."""
    arrays = {}
    if extra_arrays is not None:
        if not isinstance(extra_arrays, dict):
            raise TypeError(f"extra_arrays must be a dict of str -> numpy.ndarray or None, "
                            f"got {type(extra_arrays).__name__}")
        for k, a in extra_arrays.items():
            if not isinstance(k, str):
                raise TypeError(f"extra_arrays keys must be str, got {type(k).__name__} {k!r}")
            if not _EXTRA_NAME.fullmatch(k):
                raise ValueError(f"extra_arrays key {k!r}: names must be 1 to 64 characters from "
                                 "A-Z a-z 0-9 _ . -")
            if not isinstance(a, np.ndarray):
                raise TypeError(f"extra_arrays[{k!r}] must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype.kind not in _EXTRA_KINDS:
                raise TypeError(f"extra_arrays[{k!r}] has dtype {a.dtype}; expected a numeric or bool dtype "
                                "(no object, string, void or datetime arrays)")
            arrays["extra." + k] = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
    if extra_meta is not None:
        if not isinstance(extra_meta, dict):
            raise TypeError(f"extra_meta must be a dict or None, got {type(extra_meta).__name__}")
        _check_json(extra_meta, "extra_meta")
        extra_meta = json.loads(json.dumps(extra_meta, allow_nan=False))   # a snapshot, as load returns it
    return arrays, extra_meta


def _snapshot(step):
    """Arrays and metadata of a TrainStep (or any object exposing the same attributes)."""
    from ._version import __version__
    if not isinstance(getattr(step, "param_vector", None), np.ndarray) and callable(getattr(step, "to_cpu", None)):
        step = step.to_cpu()          # a CudaTrainStep: save a host copy, as CudaTrainStep.save does
    missing = [a for a in _STEP_ATTRS if not hasattr(step, a)]
    if missing:
        raise TypeError(f"step must be a fastbp.TrainStep (or an object with {', '.join(missing)}), "
                        f"got {type(step).__name__}")
    if callable(getattr(step, "_before_save", None)):
        step._before_save()         # (a from_torch step: what PyTorch trained since the last sync)
    lock = getattr(step, "_lock", None)
    with lock if lock is not None else contextlib.nullcontext():   # never a half-done step
        params, states, hyper = step.param_vector, list(step.state_vectors), step.hyper
        for name, a in [("param_vector", params), *((f"state_vectors[{i}]", s) for i, s in enumerate(states))]:
            if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype not in (np.float32, np.float64) or \
                    a.dtype != params.dtype or a.size != params.size:
                raise TypeError(f"step.{name} must be a 1-D float32/float64 numpy array like step.param_vector")
        if not isinstance(hyper, np.ndarray) or hyper.ndim != 1 or hyper.dtype != np.float64:
            raise TypeError("step.hyper must be a 1-D float64 numpy array")
        if len(states) > MAX_STATE:
            raise TypeError(f"step has {len(states)} optimizer state vectors; at most {MAX_STATE} are supported")
        arrays = {"params": params.copy()}
        for i, s in enumerate(states):
            arrays[f"state_{i}"] = s.copy()
        arrays["hyper"] = hyper.copy()
        buffers = getattr(step, "buffer_vector", None)      # BatchNorm's running statistics
        if isinstance(buffers, np.ndarray) and buffers.size:
            if buffers.ndim != 1 or buffers.dtype != params.dtype:
                raise TypeError("step.buffer_vector must be a 1-D numpy array of the parameters' dtype")
            arrays["buffers"] = buffers.copy()
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fastbp_version": __version__,
            "model": step.model.spec(),
            "loss": step.loss,
            "optimizer": step.optimizer.spec(),
            "batch_size": step.batch_size,
            "dtype": np.dtype(step.dtype).name,
            "seed": step.seed,
            "rng": step.rng.bit_generator.state,
            "n_state": len(states),
        }
        if callable(getattr(step, "schedule_state", None)):
            meta["training"] = step.schedule_state()       # epochs done, learning-rate schedule
    return arrays, meta


def save(step, path, extra_arrays=None, extra_meta=None):
    """Write a checkpoint of ``step`` to ``path``, atomically.

    Parameters
    ----------
    step : TrainStep
        The compiled step (or any object exposing ``param_vector``,
        ``state_vectors``, ``hyper``, ``rng``, ``model``, ``loss``,
        ``optimizer``, ``batch_size``, ``dtype`` and ``seed`` like it, such
        as a :class:`DistributedStep`, which forwards them: call it on one
        rank only); its ``_lock``, when it has one, is held while its state
        is copied, so a step running in another thread is never saved
        half-updated.  An object whose ``param_vector`` is not a numpy array
        but which has ``to_cpu()`` (a :class:`CudaTrainStep`) is saved from
        that host copy.
    path : str or os.PathLike
        Destination file; written exactly there (no ``.npz`` suffix is
        added).  Its directory must exist.  A symbolic link is written
        through: its final target is replaced and the link is kept.
    extra_arrays : dict of str to numpy.ndarray, optional
        Arrays stored alongside (member ``extra.<name>``; read back by
        :func:`load_bundle`).  Names: 1 to 64 characters from
        ``A-Z a-z 0-9 _ . -``; any shape; a numeric or bool dtype (stored C
        ordered, native byte order, with shape, dtype and SHA-256 in the
        metadata).
    extra_meta : dict, optional
        JSON data stored under the metadata key ``extra``: dicts with str
        keys, lists/tuples (read back as lists), str, bool, None, finite
        floats and ints of at most 100 digits, nested at most 64 deep; the
        whole metadata must stay within :data:`MAX_META_CHARS` characters.

    Raises
    ------
    TypeError
        ``step`` is not a TrainStep, ``path`` not a path, or ``extra_arrays``
        / ``extra_meta`` hold a wrong type (the message names the key).
    ValueError
        An invalid ``extra_arrays`` name, or ``extra_meta`` not finite,
        too deep or too large; or a step whose own description is beyond
        what :func:`load` reads (a seed or schedule parameter of more than
        100 digits, layers nested more than 64 deep): nothing is written.
    FileNotFoundError, IsADirectoryError, OSError
        The directory does not exist, ``path`` is a directory, or writing
        fails; ``path`` keeps its previous content in every case.

    Notes
    -----
    The archive is written to a temporary file next to the (link-resolved)
    target, flushed, fsync'ed and renamed over it; the directory is then
    fsync'ed.  If anything fails, the target keeps its previous content (or
    stays absent) and the temporary file is removed.  After a successful
    save, provably stale temporary files of killed saves to the same target
    are deleted.  See the module docstring for the format.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    extras, extra_meta = _check_extras(extra_arrays, extra_meta)
    arrays, meta = _snapshot(step)
    try:
        _check_json(meta, "metadata")           # what load would refuse is never written
    except (TypeError, ValueError) as e:
        raise ValueError(f"this step cannot be saved in a checkpoint that fastbp.load reads: {e}") from None
    target = _atomic.resolve(path)             # symbolic links are written through

    arrays.update(extras)
    meta["arrays"] = {k: {"shape": list(a.shape), "dtype": a.dtype.name, "sha256": _digest(a)}
                      for k, a in arrays.items()}
    if extra_meta is not None:
        meta["extra"] = extra_meta
    text = json.dumps(meta, allow_nan=False, sort_keys=True)
    if len(text) > MAX_META_CHARS:
        raise ValueError(f"the checkpoint metadata would have {len(text)} characters, more than "
                         f"MAX_META_CHARS = {MAX_META_CHARS} (extra_meta too large, or too many extra_arrays)")
    arrays["meta"] = np.array(text)

    _atomic.write(target, lambda f: np.savez(f, **arrays))


# ------------------------------------------------------------------------ load
def _parse_int(s):
    if len(s.lstrip("-")) > _MAX_INT_DIGITS:
        raise _Bad(f"metadata contains an integer with {len(s.lstrip('-'))} digits (at most {_MAX_INT_DIGITS})")
    return int(s)


def _parse_float(s):
    if len(s) > 1000:
        raise _Bad(f"metadata contains a number written with {len(s)} characters (at most 1000)")
    v = float(s)
    if not math.isfinite(v):
        raise _Bad(f"metadata contains the number {s[:40]}{'...' if len(s) > 40 else ''}, out of range")
    return v


def _reject_constant(c):
    raise _Bad(f"metadata contains {c}")


def _read_meta(arc):
    """The metadata dict, bounded and validated (no array data read)."""
    if "meta" not in arc.members:
        raise _Bad("missing the 'meta' entry (not a fastbp checkpoint)")
    if arc.members["meta"].file_size > 4 * MAX_META_CHARS + 4096:
        raise _Bad(f"the 'meta' entry has {arc.members['meta'].file_size} bytes, more than a checkpoint's "
                   f"metadata may ({MAX_META_CHARS} characters)")
    h = arc.header("meta")
    if h.dtype.kind != "U" or h.size != 1:
        raise _Bad(f"'meta' must be a JSON string, got an array of dtype {h.dtype} and shape {h.shape}")
    if h.nbytes > 4 * MAX_META_CHARS:
        raise _Bad(f"the metadata has {h.nbytes // 4} characters, more than MAX_META_CHARS = {MAX_META_CHARS}")
    m, _ = arc.read("meta", h)
    try:
        meta = json.loads(str(m.reshape(())[()]), parse_constant=_reject_constant, parse_int=_parse_int,
                          parse_float=_parse_float)
    except _Bad:
        raise
    except json.JSONDecodeError as e:
        raise _Bad(f"metadata is not valid JSON: {e}") from None
    except RecursionError:
        raise _Bad("metadata is nested too deeply (not a fastbp checkpoint)") from None
    except Exception as e:  # noqa: BLE001 - anything else the parser raises on hostile text
        raise _Bad(f"metadata is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise _Bad("metadata is not a JSON object")
    try:
        _check_json(meta, "metadata")
    except (TypeError, ValueError) as e:
        raise _Bad(str(e)) from None
    if meta.get("format") != FORMAT_NAME:
        raise _Bad(f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise _Bad(f"format version {version!r} is not supported (this fastbp reads version {FORMAT_VERSION})")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise _Bad(f"metadata lacks {', '.join(missing)}")
    if not isinstance(meta.get("extra", {}), dict):
        raise _Bad("metadata 'extra' is not an object")
    return meta


def _listing(names, n=8):
    """``a, b, c`` for an error message; long lists and names shortened (hostile files)."""
    shown = [k if len(k) <= 80 else k[:77] + "..." for k in names[:n]]
    return ", ".join(shown) + (f" and {len(names) - n} more" if len(names) > n else "")


def _check_layout(arc, meta, dtype):
    """Check every member's zip entry and .npy header against the metadata; read no data.
    Returns ``{name: header}`` for every array to read."""
    n_state = meta["n_state"]
    if isinstance(n_state, bool) or not isinstance(n_state, int) or not 0 <= n_state <= MAX_STATE:
        raise _Bad(f"n_state must be 0, 1 or 2 (or 3: a centered RMSprop with momentum), got {n_state!r}")
    info = meta["arrays"]
    if not isinstance(info, dict):
        raise _Bad("metadata 'arrays' is not an object")
    base = _array_names(n_state)
    if "buffers" in info:       # the running statistics of BatchNorm layers (when the model has them)
        base.append("buffers")
    extras = sorted(k for k in info if k.startswith("extra.") and _EXTRA_NAME.fullmatch(k[6:]))
    names = base + extras
    stored = set(arc.members) - {"meta"}
    missing = [k for k in names if k not in stored]
    if missing:
        raise _Bad(f"missing array(s) {_listing(missing)}")
    unexpected = sorted(stored - set(names)) + arc.others
    if unexpected:
        raise _Bad(f"unexpected array(s) {_listing(unexpected)}")
    unknown = sorted(set(info) - set(names))
    if unknown:
        raise _Bad(f"metadata lists unknown array(s) {_listing(unknown)}")
    headers = {}
    for k in names:
        h = arc.header(k)
        rec = info[k]
        if k in base:
            want = np.dtype(np.float64) if k == "hyper" else dtype
            if h.dtype != want:
                raise _Bad(f"array {k!r} has dtype {h.dtype}, expected {want}")
            if len(h.shape) != 1:
                raise _Bad(f"array {k!r} must be 1-D, got shape {h.shape}")
            if k == "buffers" and h.size == 0:
                raise _Bad("array 'buffers' is empty")
            if k.startswith("state_") and h.size != headers["params"].size:
                raise _Bad(f"array {k!r} has {h.size} elements, the parameters {headers['params'].size}")
        elif h.dtype.kind not in _EXTRA_KINDS or not h.dtype.isnative:
            raise _Bad(f"array {k!r} has dtype {h.dtype}; extra arrays are numeric or bool, native byte order")
        if not isinstance(rec, dict) or rec.get("shape") != list(h.shape) or rec.get("dtype") != h.dtype.name:
            raise _Bad(f"array {k!r} (shape {h.shape}, dtype {h.dtype}) does not match the metadata {rec!r}")
        headers[k] = h
    return headers


def _raw_param_count(spec):
    """Weights + biases a model spec declares (no padding): bounds the compile's allocation."""
    total = 0
    layers = spec.get("layers")
    for ls in layers if isinstance(layers, list) else ():
        if isinstance(ls, dict) and ls.get("type") == "Residual":      # its f's Linear layers
            total += _raw_param_count(ls)
        if isinstance(ls, dict) and ls.get("type") == "Linear":
            i, o = ls.get("in_features"), ls.get("out_features")
            if isinstance(i, int) and isinstance(o, int) and i > 0 and o > 0:
                total += i * o + (o if ls.get("bias") else 0)
    return total


def read(path):
    """Read and check a checkpoint file: ``(meta, dtype, arrays)``.

    Every member's header is checked against the metadata before any data
    is read; then the data is read and its SHA-256 checked.

    Parameters
    ----------
    path : str

    Returns
    -------
    meta : dict
        The parsed, bounded metadata.
    dtype : numpy.dtype
        float32 or float64.
    arrays : dict of str -> ndarray
        ``params``, ``state_<i>``, ``hyper`` and ``extra.<name>``.

    Raises
    ------
    _Bad, BadArchive
        The file is not a valid checkpoint (turned into ValueError naming
        the file by :func:`fastbp.checkpoint.load_bundle`).
    FileNotFoundError, PermissionError, MemoryError
    """
    try:
        with Archive(path) as arc:
            meta = _read_meta(arc)
            if meta["dtype"] not in ("float32", "float64"):
                raise _Bad(f"dtype: dtype must be float32 or float64, got {meta['dtype']!r}")
            dtype = np.dtype(meta["dtype"])
            headers = _check_layout(arc, meta, dtype)
            spec = meta["model"]
            if not isinstance(spec, dict):
                raise _Bad("model spec is not an object")
            n = headers["params"].size
            if _raw_param_count(spec) > n:
                raise _Bad(f"the model spec declares {_raw_param_count(spec)} weights but 'params' holds "
                           f"{n} values (wrong architecture)")
            arrays = {}
            for k, h in headers.items():
                arrays[k], sha = arc.read(k, h)
                if meta["arrays"][k].get("sha256") != sha:
                    raise _Bad(f"array {k!r} fails its SHA-256 check (corrupted, or not from this checkpoint)")
    except (_Bad, BadArchive, MemoryError, FileNotFoundError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - whatever zipfile raises on a damaged archive; nothing was executed
        raise _Bad(f"not a readable fastbp checkpoint (truncated or corrupted?): {type(e).__name__}: {e}") \
            from None
    return meta, dtype, arrays
