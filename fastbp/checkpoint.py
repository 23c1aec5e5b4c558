"""Checkpoints of a compiled training step: :func:`save`, :func:`load` and :func:`load_bundle`.

The public face of three parts: the file format is read and written by
:mod:`fastbp._ckpt_format` (which knows the file, not the step: it saves
any object with the step protocol's attributes); the step is rebuilt from
a file by :func:`fastbp.factories.load_bundle` (the one module that knows
the step kinds); this module documents the format and names them both.

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
``buffers`` (only for a model with ``BatchNorm1d`` layers)
    The running statistics region (:attr:`TrainStep.buffer_vector`: each
    layer's running mean, running variance and batches tracked), in the
    step's dtype; not trained, restored on load as saved: a running mean
    or variance that training overflowed to inf (or NaN) is kept, as in a
    PyTorch ``state_dict`` (only the counts must be finite and >= 0).
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

from . import _ckpt_format as _fmt
from ._ckpt_format import FORMAT_NAME, FORMAT_VERSION, MAX_META_CHARS, save
from .factories import load, load_bundle

__all__ = ["save", "load", "load_bundle", "FORMAT_NAME", "FORMAT_VERSION", "MAX_META_CHARS"]

#: private, not exported (a checkpoint's array digest: the tests write checkpoints by hand with it)
_digest = _fmt._digest


def __dir__():
    # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)
