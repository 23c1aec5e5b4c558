"""Checkpoints of a compiled training step: :func:`save`, :func:`load` and :func:`load_bundle`.

Format (version 1)
------------------
One uncompressed ``.npz`` archive written by :func:`numpy.savez` (every
member CRC-32 checked by :mod:`zipfile`), read back without unpickling and
without executing anything from the file.  It holds

``params``
    The parameter region of the step's arena (:attr:`TrainStep.param_vector`,
    every weight and bias with the compiler's alignment padding), in the
    step's dtype.
``state_0``, ``state_1``, ...
    The optimizer state vectors (:attr:`TrainStep.state_vectors`: the SGD
    momentum buffer, or Adam's first and second moments), same size and
    dtype as ``params``.
``hyper``
    The float64 hyper-parameter and counter array of the step (learning
    rate, momentum, betas, eps, weight decay, Adam's ``t``, the step count).
    Its BLAS-threshold slots are tuning constants of the running fastbp and
    are not restored.
``extra.<name>`` (optional)
    Arrays the caller attached with ``save(..., extra_arrays=...)`` (numeric
    or bool, C order, native byte order); a fastbp older than this reader
    rejects a file that has them ("unexpected array(s) extra...").
``meta``
    A 0-d unicode array holding one JSON object of at most
    :data:`MAX_META_CHARS` characters: ``format`` (``"fastbp-checkpoint"``),
    ``format_version`` (1), ``fastbp_version``, ``model``
    (:meth:`Sequential.spec`), ``loss``, ``optimizer`` (``optimizer.spec()``),
    ``batch_size``, ``dtype``, ``seed``, ``rng`` (the state of the step's
    :class:`numpy.random.Generator`, which drives the shuffling of
    :meth:`TrainStep.fit`), ``n_state``, ``arrays`` (the shape, dtype and
    SHA-256 digest of every array above) and, when given, ``extra`` (the
    caller's ``extra_meta``).

Guarantees
----------
* Round trip: ``load(path)`` rebuilds the step with :func:`fastbp.compile`
  and writes weights, optimizer state, counters and RNG state back into it,
  so training resumed from a checkpoint produces bitwise the same weights as
  training that was never interrupted (same machine, same library versions).
* Atomic write: the archive is written to a temporary file
  ``.fastbp-<target>-<host>-<pid>-<random>.tmp`` (at most 47 characters, so
  any legal file name can be saved to) in the target's directory, flushed
  and fsync'ed, renamed over the target with :func:`os.replace`, and the
  directory is fsync'ed.  A failure at any point leaves the previous file
  untouched and removes the temporary file.  A process killed outright
  (SIGKILL, power loss) cannot remove it: the next save to the same target
  deletes such leftovers when they are provably stale (written on this host
  and PID namespace by a process that no longer exists); any leftover may
  also be deleted by hand while no save is running.
* Symbolic links: saving to a link writes *through* it (like
  :func:`numpy.save` and most editors): the link's final target is replaced
  atomically, with the temporary file in the target's directory, and the
  link stays a link.  An existing file's permission bits are kept.
* Validation before allocation: the archive's structure, every member's
  ``.npy`` header (shape, dtype) and zip entry size are checked against the
  metadata, and the metadata's own size (:data:`MAX_META_CHARS`), nesting
  depth and numbers are bounded, before any array data is read, so a small
  file can never make :func:`load` allocate more than about its own size.
  For the same reason members must be stored uncompressed, as :func:`save`
  writes them: an archive re-compressed (``numpy.savez_compressed``) is
  rejected, since a compressed member's size is not bounded by the file's.
  A truncated or corrupted file, a directory or non-regular file, an
  unknown format or version, missing or extra arrays, arrays whose size,
  dtype or digest do not match the metadata or the architecture, and
  hyper-parameters inconsistent with the optimizer all raise
  :class:`ValueError` naming the file and the problem, before anything is
  compiled or returned.  ``expect_model=`` additionally rejects a
  checkpoint of another architecture.

Not guaranteed: loading checkpoints written by a *newer* format version,
bitwise continuation across different machines, BLAS libraries or numba
versions (the arithmetic may round differently), or protection against a
file deliberately crafted with consistent digests (the format is an
integrity check, not a signature; it is, however, never executed).
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

__all__ = ["save", "load", "load_bundle", "FORMAT_NAME", "FORMAT_VERSION", "MAX_META_CHARS"]

FORMAT_NAME = "fastbp-checkpoint"
FORMAT_VERSION = 1
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
    from . import __version__
    if not isinstance(getattr(step, "param_vector", None), np.ndarray) and callable(getattr(step, "to_cpu", None)):
        step = step.to_cpu()          # a CudaTrainStep: save a host copy, as CudaTrainStep.save does
    missing = [a for a in _STEP_ATTRS if not hasattr(step, a)]
    if missing:
        raise TypeError(f"step must be a fastbp.TrainStep (or an object with {', '.join(missing)}), "
                        f"got {type(step).__name__}")
    lock = getattr(step, "_lock", None)
    with lock if lock is not None else contextlib.nullcontext():   # never a half-done step
        params, states, hyper = step.param_vector, list(step.state_vectors), step.hyper
        for name, a in [("param_vector", params), *((f"state_vectors[{i}]", s) for i, s in enumerate(states))]:
            if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype not in (np.float32, np.float64) or \
                    a.dtype != params.dtype or a.size != params.size:
                raise TypeError(f"step.{name} must be a 1-D float32/float64 numpy array like step.param_vector")
        if not isinstance(hyper, np.ndarray) or hyper.ndim != 1 or hyper.dtype != np.float64:
            raise TypeError("step.hyper must be a 1-D float64 numpy array")
        if len(states) > 2:
            raise TypeError(f"step has {len(states)} optimizer state vectors; at most 2 are supported")
        arrays = {"params": params.copy()}
        for i, s in enumerate(states):
            arrays[f"state_{i}"] = s.copy()
        arrays["hyper"] = hyper.copy()
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
        too deep or too large.
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
    if isinstance(n_state, bool) or not isinstance(n_state, int) or not 0 <= n_state <= 2:
        raise _Bad(f"n_state must be 0, 1 or 2, got {n_state!r}")
    info = meta["arrays"]
    if not isinstance(info, dict):
        raise _Bad("metadata 'arrays' is not an object")
    base = _array_names(n_state)
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
        if isinstance(ls, dict) and ls.get("type") == "Linear":
            i, o = ls.get("in_features"), ls.get("out_features")
            if isinstance(i, int) and isinstance(o, int) and i > 0 and o > 0:
                total += i * o + (o if ls.get("bias") else 0)
    return total


def _check_args(path, expect_model):
    from .layers import Sequential
    if expect_model is not None and not isinstance(expect_model, Sequential):
        raise TypeError(f"expect_model must be a fastbp.Sequential or None, got {type(expect_model).__name__}")
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None


def load(path, expect_model=None):
    """Rebuild a :class:`TrainStep` from a checkpoint written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :meth:`TrainStep.save` / :func:`fastbp.checkpoint.save`.
    expect_model : Sequential, optional
        When given, the checkpoint's architecture must equal this model's
        (same layers, widths, bias flags, weight layout); otherwise a
        :class:`ValueError` is raised.

    Returns
    -------
    TrainStep
        Compiled with the checkpoint's model, loss, optimizer, batch size,
        dtype and seed, with its weights, optimizer state, learning rate,
        step counters and RNG state restored: continuing to train it gives
        bitwise the weights the saved step would have reached.  Extra
        arrays and metadata (see :func:`load_bundle`) are validated like
        everything else, then ignored.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is a directory or not a regular file; the file is
        truncated, corrupted, of an unknown format or version, lacks or adds
        arrays, has arrays of the wrong size or dtype, or is inconsistent
        (optimizer state vs. hyper-parameters), or does not match
        ``expect_model``.  The message names the file.
    TypeError
        ``path`` or ``expect_model`` has the wrong type.

    Notes
    -----
    Nothing in the file is unpickled or executed, and every size is checked
    against the metadata before the data is read (see the module docstring).
    """
    return load_bundle(path, expect_model)[0]


def load_bundle(path, expect_model=None):
    """Like :func:`load`, also returning what ``save(extra_arrays=, extra_meta=)`` stored.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.
    expect_model : Sequential, optional
        As in :func:`load`.

    Returns
    -------
    step : TrainStep
        As :func:`load` returns it.
    extra_arrays : dict of str to numpy.ndarray
        Each extra array by name (without the ``extra.`` prefix), with the
        saved shape and dtype, SHA-256 verified; new writeable arrays.
        Empty when the file has none.
    extra_meta : dict
        The saved ``extra_meta`` as parsed from JSON (tuples come back as
        lists); empty when none was saved.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        As :func:`load`.
    """
    path = _check_args(path, expect_model)
    try:
        return _load(path, expect_model)
    except (_Bad, BadArchive) as e:
        raise ValueError(f"checkpoint {path!r}: {e}") from None


def _read_all(path):
    """Metadata and every array (headers checked first, then data read and digest-checked)."""
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


def _load(path, expect_model):
    from . import _executor as ex
    from .layers import Sequential
    from .optimizers import optimizer_from_spec
    from .step import TrainStep

    meta, dtype, arrays = _read_all(path)
    spec = meta["model"]
    try:
        model = Sequential.from_spec(spec)
    except Exception as e:  # noqa: BLE001 - untrusted spec: any failure is a bad file
        raise _Bad(f"invalid model spec ({type(e).__name__}: {e})") from None
    if expect_model is not None and model.spec() != expect_model.spec():
        raise _Bad(f"architecture {model!r} differs from the expected {expect_model!r}")
    try:
        optimizer = optimizer_from_spec(meta["optimizer"])
    except Exception as e:  # noqa: BLE001 - untrusted spec: any failure is a bad file
        raise _Bad(f"invalid optimizer spec ({type(e).__name__}: {e})") from None
    try:
        step = TrainStep(model, meta["loss"], optimizer, meta["batch_size"], dtype, meta["seed"])
    except (TypeError, ValueError, OverflowError, MemoryError) as e:
        raise _Bad(f"cannot rebuild the step ({type(e).__name__}: {e})") from None

    params, hyper = arrays["params"], arrays["hyper"]
    if params.size != step.param_vector.size:
        raise _Bad(f"'params' has {params.size} values but the architecture {model!r} needs "
                   f"{step.param_vector.size} (wrong architecture)")
    if meta["n_state"] != len(step.state_vectors):
        raise _Bad(f"{meta['n_state']} optimizer state vector(s) stored, {optimizer!r} needs "
                   f"{len(step.state_vectors)}")
    if hyper.size != step.hyper.size:
        raise _Bad(f"'hyper' has {hyper.size} values, expected {step.hyper.size}")
    # hyper-parameters fixed by the optimizer must agree with its spec: the update kernels
    # trust them (e.g. a momentum without a momentum buffer would write out of bounds)
    free = {ex.H_LR, ex.H_T, ex.H_STEPS, *ex.RUNTIME_SLOTS}
    fixed = [i for i in range(step.hyper.size) if i not in free]
    if not np.array_equal(hyper[fixed], step.hyper[fixed]):
        raise _Bad("hyper-parameters do not match the optimizer spec "
                   f"{meta['optimizer']!r} (inconsistent checkpoint)")
    if not np.all(np.isfinite(hyper)):
        raise _Bad("'hyper' holds non-finite values")
    for slot, name in ((ex.H_T, "Adam step t"), (ex.H_STEPS, "step count")):
        v = hyper[slot]
        if v < 0 or v != np.floor(v):
            raise _Bad(f"{name} must be a non-negative integer, got {v}")
    rng_state = meta["rng"]
    if not isinstance(rng_state, dict) or rng_state.get("bit_generator") != type(step.rng.bit_generator).__name__:
        raise _Bad(f"RNG state is not a {type(step.rng.bit_generator).__name__} state")

    try:
        step.lr = float(hyper[ex.H_LR])            # validates (> 0, finite) and syncs step.optimizer
    except (TypeError, ValueError) as e:
        raise _Bad(f"learning rate: {e}") from None
    try:
        step.rng.bit_generator.state = rng_state
    except Exception as e:  # noqa: BLE001 - untrusted state: any failure is a bad file
        raise _Bad(f"invalid RNG state ({type(e).__name__}: {e})") from None
    step.param_vector[...] = params
    for dst, i in zip(step.state_vectors, range(meta["n_state"])):
        dst[...] = arrays[f"state_{i}"]
    runtime = step.hyper[list(ex.RUNTIME_SLOTS)].copy()   # this process's BLAS policy, not training state
    step.hyper[...] = hyper
    step.hyper[list(ex.RUNTIME_SLOTS)] = runtime
    extra_arrays = {k[6:]: a for k, a in arrays.items() if k.startswith("extra.")}
    return step, extra_arrays, meta.get("extra", {})
