"""Argument validation shared by :mod:`fastbp.ops` and the step/compile API.

The kernels are compiled for C-contiguous float32/float64 arrays and trust
their inputs; everything a caller can get wrong is checked here, before a
kernel runs, and reported as a ``TypeError`` (wrong kind of object or dtype)
or ``ValueError`` (wrong shape, layout, writeability or value) whose message
names the argument, what was expected and what was given.

The helpers sit on hot paths (one call per op, per step): they read and compare (:func:`labels` converts).

The second half of the module is the ONE input path of the compiled steps
(:class:`fastbp.TrainStep`, its ``fit``/``predict``/``loss_and_grads``,
:class:`fastbp.distributed.DistributedStep` and the host inputs of
:class:`fastbp.cuda_step.CudaTrainStep`): :func:`features`,
:func:`class_labels` and :func:`targets` accept any numpy array whose
values are valid -- read-only, unaligned, offset, strided, reversed,
transposed, broadcast, ``x[:, None]``, memory-mapped, byte-swapped, other
integer label widths -- and hand back the array the executor reads
(:func:`executor_form`), copying only when it is not already in that form;
their shape checks also check CUDA device arrays (:mod:`fastbp._cuda_device`).
The scalar validators (:func:`positive_int`, :func:`seed`, :func:`boolean`,
:func:`resolve_dtype`, :func:`resolve_device`) complete one error policy: a wrong
type is a ``TypeError``, a wrong value a ``ValueError``, the message names the argument.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._scalars import int_text
from .kernels.losses import _check_labels

__all__ = [
    "FLOAT_DTYPES", "array", "float_array", "ndim", "shape", "contiguous",
    "same_dtype", "writeable", "out_array", "no_overlap", "labels", "fmt_shape",
    "INT64_MAX", "RANDOM_STATE_MAX", "positive_int", "seed", "same_precision", "boolean", "resolve_dtype",
    "resolve_device", "executor_form", "features", "class_labels", "targets", "feature_rows", "label_shape", "target_shape"]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
#: the dtypes every kernel is compiled for
FLOAT_DTYPES = (_F32, _F64)


def fmt_shape(shape):
    """``(3, None)`` -> ``"(3, *)"``: a shape for an error message (``None`` = any)."""
    parts = ["*" if d is None else str(d) for d in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def array(a, name, dtype_hint="np.float32 or np.float64"):
    """Check that ``a`` is a numpy ndarray (``dtype_hint``: the dtype the message suggests).

    Raises
    ------
    TypeError
        If ``a`` is anything else (a list, a scalar, a tensor...).
    """
    if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}; " + (
            f"fastbp would ignore its mask: pass {name}.filled(value) or np.asarray({name})"
            if isinstance(a, np.ma.MaskedArray) else f"convert it with np.asarray({name}, dtype={dtype_hint})"))
    return a


def float_array(a, name, nd=None):
    """Check that ``a`` is a C-contiguous float32/float64 ndarray (of ``nd`` dims).

    Parameters
    ----------
    a : object
        The argument to check.
    name : str
        Its name, used in error messages.
    nd : int or tuple of int, optional
        Allowed number(s) of dimensions.

    Returns
    -------
    numpy.ndarray
        ``a`` itself.

    Raises
    ------
    TypeError
        Not an ndarray, or a dtype other than float32/float64.
    ValueError
        Wrong number of dimensions, or not C-contiguous.
    """
    if type(a) is not np.ndarray:       # (a subclass passes, a masked array does not)
        array(a, name)
    dt = a.dtype
    if dt is not _F64 and dt is not _F32 and dt != _F64 and dt != _F32:
        raise TypeError(f"{name} has dtype {dt}; expected float32 or float64" + (  # byte-swapped: say so
            f" in native byte order (convert with {name}.astype({name}.dtype.newbyteorder('=')))"
            if dt.kind == "f" and not dt.isnative and dt.newbyteorder("=") in (_F32, _F64) else ""))
    if nd is not None:
        ndim(a, name, nd)
    if not a.flags.c_contiguous:
        contiguous(a, name)
    return a


def ndim(a, name, nd):
    """Check ``a.ndim`` is ``nd`` (an int or a tuple of allowed values); ValueError otherwise."""
    if isinstance(nd, int):
        if a.ndim != nd:
            raise ValueError(f"{name} must be {nd}-D, got a {a.ndim}-D array of shape {a.shape}")
    elif a.ndim not in nd:
        allowed = " or ".join(str(d) for d in nd)
        raise ValueError(f"{name} must be {allowed}-D, got a {a.ndim}-D array of shape {a.shape}")
    return a


def shape(a, name, expected, hint=""):
    """Check ``a.shape`` against ``expected`` (a tuple; ``None`` entries match any size).

    Raises
    ------
    ValueError
        ``"<name>: expected shape (..), got (..)"`` plus ``hint`` if given.
    """
    s = a.shape
    if len(s) == len(expected):
        for d, e in zip(s, expected):
            if e is not None and d != e:
                break
        else:
            return a
    msg = f"{name}: expected shape {fmt_shape(expected)}, got {fmt_shape(s)}"
    raise ValueError(msg + (f" ({hint})" if hint else ""))


def contiguous(a, name):
    """Check ``a`` is C-contiguous (row-major, no gaps); ValueError naming ``name`` otherwise."""
    if a.flags.c_contiguous:
        return a
    kind = "Fortran-ordered" if (a.ndim > 1 and a.flags.f_contiguous) else "non-contiguous (a strided view)"
    raise ValueError(f"{name} is {kind}; fastbp needs C-contiguous arrays: pass np.ascontiguousarray({name})")


def same_dtype(ref, ref_name, *pairs):
    """Check that every array in ``pairs`` (``a1, name1, a2, name2, ...``) has ``ref``'s dtype.

    Raises
    ------
    TypeError
        Naming the first mismatching argument, its dtype and ``ref``'s.
    """
    dt = ref.dtype
    for k in range(0, len(pairs), 2):
        a = pairs[k]
        if a.dtype != dt:
            raise TypeError(
                f"{pairs[k + 1]} has dtype {a.dtype} but {ref_name} has dtype {dt}; "
                f"all arrays of one call must share one dtype (float32 or float64)")
    return dt


def writeable(a, name, hint=""):
    """Check ``a`` can be written into (ValueError for read-only arrays; ``hint`` ends the message)."""
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; pass a writeable array{hint}")
    return a


def out_array(out, name, shape_, dtype):
    """Validate a caller-supplied output array, or allocate one when ``out is None``.

    Parameters
    ----------
    out : numpy.ndarray or None
        The caller's output buffer.
    name : str
        Its name in messages (normally ``"out"``).
    shape_ : tuple of int
        Required shape.
    dtype : numpy.dtype
        Required dtype (the inputs').

    Returns
    -------
    numpy.ndarray
        ``out``, or a new uninitialised C-contiguous array.

    Raises
    ------
    TypeError
        ``out`` is not an ndarray or has the wrong dtype.
    ValueError
        Wrong shape, not C-contiguous, or read-only.
    """
    if out is None:
        return np.empty(shape_, dtype)
    if type(out) is not np.ndarray:
        array(out, name)
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}; expected {np.dtype(dtype)} (the inputs' dtype)")
    if out.shape != tuple(shape_):
        raise ValueError(f"{name}: expected shape {fmt_shape(shape_)}, got {fmt_shape(out.shape)}")
    if not out.flags.c_contiguous:
        contiguous(out, name)
    if not out.flags.writeable:
        writeable(out, name, " (or out=None to allocate one)")
    return out


def _start(a):
    return a.__array_interface__["data"][0]


def no_overlap(out, out_name, a, a_name, allow_identical=False):
    """Check that ``out`` does not overlap input ``a`` in memory.

    With ``allow_identical`` an ``out`` that *is* ``a`` (same start address,
    same shape) is accepted: elementwise kernels may work in place.

    Raises
    ------
    ValueError
        If the two share memory in any other way.
    """
    if np.may_share_memory(out, a):
        if allow_identical and out.shape == a.shape and _start(out) == _start(a):
            return
        raise ValueError(f"{out_name} overlaps {a_name} in memory; pass a separate output array")


def labels(y, name, n, n_classes):
    """Validate integer class labels and return them as contiguous int64.

    Parameters
    ----------
    y : numpy.ndarray
        Integer labels, shape ``(n,)``, any integer dtype (not bool).
    name : str
        The argument's name for messages.
    n : int
        Required length (the batch size).
    n_classes : int
        Labels must lie in ``[0, n_classes)``.

    Returns
    -------
    numpy.ndarray
        ``y`` as a C-contiguous int64 array (``y`` itself when it already is one).

    Raises
    ------
    TypeError
        Not an ndarray, or not an integer dtype.
    ValueError
        Wrong shape, or a label out of range (the first offending index and value).
    """
    if not isinstance(y, np.ndarray):
        array(y, name, "np.int64")     # integer labels: a float hint would fail the next check
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {y.dtype}; expected integer class labels (e.g. int64)")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) (one label per row), got {fmt_shape(y.shape)}")
    if y.dtype != np.int64 or not y.flags.c_contiguous:
        if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max:
            bad = int(np.argmax(y > np.iinfo(np.int64).max))
            raise ValueError(f"{name}[{bad}] = {y[bad]} is out of range [0, {n_classes})")
        y = np.ascontiguousarray(y, dtype=np.int64)
    bad = _check_labels(y, n_classes)
    if bad >= 0:
        raise ValueError(f"{name}[{bad}] = {y[bad]} is out of range [0, {n_classes})")
    return y


# ====================================================== scalar arguments
#: the largest value an integer argument may have (sizes are int64 inside the executor)
INT64_MAX = 2**63 - 1
#: the largest seed scikit-learn's ``random_state`` (numpy's ``RandomState``) takes
RANDOM_STATE_MAX = 2**32 - 1


def positive_int(name, v, max_value=INT64_MAX):
    """An integer argument ``>= 1`` (``batch_size``, ``epochs``, ``threads`` ...) as a Python int.

    Raises
    ------
    TypeError
        Not an integer (``bool``, ``float``, ``str``, ``None`` ...).
    ValueError
        Below 1, or above ``max_value`` (by default the int64 range the
        executor's sizes live in).
    """
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(v).__name__}")
    v = int(v)
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {int_text(v)}")
    if v > max_value:
        raise ValueError(f"{name} must be a positive integer <= {max_value}, got {int_text(v)}")
    return v


def seed(v, name="seed", max_value=None, none=True):
    """A seed argument: None (where ``none``), or a non-negative integer (returned as a
    Python int), at most ``max_value`` if given (e.g. :data:`RANDOM_STATE_MAX`).

    Raises
    ------
    TypeError
        Not an integer (``"a"``, ``0.5``, ``True`` ..., None unless ``none``).
    ValueError
        A negative integer, or one above ``max_value``."""
    if v is None and none:
        return None
    what = f"{name} must be a non-negative integer" + (" or None" if none else "")
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{what}, got {type(v).__name__}")
    v = int(v)
    if v < 0:
        raise ValueError(f"{what}, got {int_text(v)}")
    if max_value is not None and v > max_value:
        raise ValueError(f"{name} must be {'None or ' * none}an integer in [0, {max_value}], got {int_text(v)}")
    return v


def same_precision(dt, dtype):
    """Whether an array of dtype ``dt`` is taken as ``dtype`` without conversion: the same
    dtype in either byte order (a float of another size, or an integer, is not)."""
    return dt == dtype or (dt.kind == "f" and dt.itemsize == dtype.itemsize)


def boolean(name, v):
    """A flag argument: ``True`` or ``False`` (``numpy.bool_`` too), as a Python bool.

    Raises
    ------
    TypeError
        Anything else (``"no"``, ``0``, ``None`` ...): a truthy string must
        not silently mean True.
    """
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{name} must be a bool (True or False), got {type(v).__name__}")


def resolve_dtype(dtype, name="dtype"):
    """``float32`` or ``float64`` as a numpy dtype; TypeError naming ``name`` otherwise."""
    if dtype is None:
        raise TypeError(f"{name} must be float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def resolve_device(device):
    """``"cpu"`` or ``"cuda"`` (any case).

    Raises
    ------
    TypeError
        Not a string.
    ValueError
        Another string.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be 'cpu' or 'cuda', got {type(device).__name__}")
    if device.lower() not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device.lower()


# ============================================ the inputs of a compiled step
_I64 = np.dtype(np.int64)


def _canonical_strides(a):
    """Whether ``a``'s strides are exactly those of a fresh C-ordered array of its shape.

    numpy calls an array C-contiguous whatever the strides of its length-1
    axes (``x[:, None]`` has strides ``(itemsize, 0)``); the executor reads
    rows by their strides and checks them (``STATUS_BAD_INPUT``), so the
    form it gets must have the canonical ones.
    """
    step = a.itemsize
    for n, st in zip(reversed(a.shape), reversed(a.strides)):
        if st != step:
            return False
        step *= n
    return True


#: copies above this size check the memory left first (a broadcast view can stand for
#: far more data than the machine holds)
_CHECKED_COPY_BYTES = 1 << 26


def executor_form(a, dtype, name="the input"):
    """``a`` as the compiled step reads it, copied only when needed.

    The executor's form: a plain ``numpy.ndarray`` of exactly ``dtype``
    (native byte order), C-contiguous with canonical strides, aligned and
    writeable (numba compiles a separate specialisation for read-only
    arrays).  An array already in that form is returned as it is; anything
    else (read-only, unaligned, offset or strided views, reversed or
    transposed, broadcast, ``x[:, None]``, memory-mapped, byte-swapped,
    another integer width) is copied once into a fresh array with the same
    values (a writeable, canonical memory-mapped array is read in place,
    through a plain ``ndarray`` view).  The input is never written.

    Parameters
    ----------
    a : numpy.ndarray
        Already validated (kind, shape).
    dtype : numpy.dtype
        The executor's dtype for this argument.
    name : str, optional
        The argument's name, for a :class:`MemoryError`.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    MemoryError
        The copy would not fit in the memory left (checked before copying
        anything larger than 64 MiB).
    """
    if type(a) is not np.ndarray:
        a = np.asarray(a)       # a memmap, matrix or masked array: a plain view of its data, no copy
    if (a.dtype == dtype and a.dtype.isnative and a.flags.aligned and a.flags.writeable
            and a.flags.c_contiguous and _canonical_strides(a)):
        return a
    nbytes = a.size * np.dtype(dtype).itemsize
    if nbytes > _CHECKED_COPY_BYTES:
        from ._memory import check
        check(nbytes, f"copying {name} into the layout the compiled step reads",
              f"{a.size} values of {np.dtype(dtype).name}")
    return np.array(a, dtype=dtype, order="C", copy=True)


def features(x, name, dtype, n_features, max_rows=None):
    """Validate a feature matrix (``x`` of a step, ``X`` of ``fit``/``predict``).

    Parameters
    ----------
    x : object
        The caller's argument.
    name : str
        Its name in messages.
    dtype : numpy.dtype
        The step's dtype.  Another float width (or any other kind) is a
        ``TypeError``: fastbp does not silently change precision.  The same
        dtype in the other byte order is accepted (converted).
    n_features : int
        Required number of columns.
    max_rows : int, optional
        Most rows allowed (the step's ``batch_size``).

    Returns
    -------
    x : numpy.ndarray, shape (n, n_features), dtype ``dtype``
        In the executor's form (:func:`executor_form`).
    n : int
        Its number of rows (>= 1).

    Raises
    ------
    TypeError
        Not a numpy array, or the wrong dtype.
    ValueError
        Wrong shape, no rows, or more than ``max_rows`` rows.
    """
    if type(x) is not np.ndarray:
        array(x, name, f"np.{dtype.name}")
    dt = x.dtype
    if not same_precision(dt, dtype):
        if dt.kind in "fiubcOUS":
            raise TypeError(f"{name} has dtype {dt}; this step was compiled for {dtype} "
                            f"(convert with {name}.astype(np.{dtype.name}))")
        raise TypeError(f"{name} has dtype {dt}, expected {dtype}")
    return executor_form(x, dtype, name), feature_rows(x.shape, name, n_features, max_rows)


def feature_rows(shape, name, n_features, max_rows=None):
    """Rows ``n`` of features shaped ``(n, n_features)``, ``1 <= n <= max_rows``, else ValueError."""
    if len(shape) != 2 or shape[1] != n_features:
        raise ValueError(f"{name} must have shape (n, {n_features}), got {tuple(shape)}")
    n = int(shape[0])
    if n < 1:
        raise ValueError(f"{name} is empty: it must have at least one row")
    if max_rows is not None and n > max_rows:
        raise ValueError(f"{name} has {n} rows, more than batch_size={max_rows}")
    return n


def label_shape(shape, name, n):
    """ValueError naming ``name`` (and its features' argument) unless labels are shaped ``(n,)``."""
    if tuple(shape) != (n,):
        rows = {"y": "x", "Y": "X", "validation_data[1]": "validation_data[0]"}.get(name, "the features")
        raise ValueError(f"{name} must have shape ({n},) to match the {n} rows of {rows}, got {tuple(shape)}")


def target_shape(shape, name, n, n_out):
    """``(n, n_out)`` for targets shaped so (or ``(n,)`` with ``n_out == 1``), else ValueError."""
    if tuple(shape) == (n,) and n_out == 1:
        return n, 1
    if tuple(shape) != (n, n_out):
        raise ValueError(f"{name} must have shape ({n}, {n_out}), got {tuple(shape)}")
    return n, n_out


def class_labels(y, name, n, n_classes, loss, check_range=True):
    """Validate integer class labels for ``n`` rows; int64 in the executor's form.

    Any integer dtype and layout is accepted; the values are what counts.
    ``check_range=False`` leaves the range check to the compiled step
    (which reports the first bad label without changing anything); labels
    that int64 cannot hold (unsigned values above 2**63 - 1) are rejected
    here either way, with their true value.

    Raises
    ------
    TypeError
        Not a numpy array, or not an integer dtype (bool included).
    ValueError
        Wrong shape, or (``check_range``) a label outside ``[0, n_classes)``;
        the message gives the first bad index and its value.
    """
    if type(y) is not np.ndarray:
        array(y, name, "np.int64")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels for loss {loss!r}, got dtype {y.dtype}")
    label_shape(y.shape, name, n)
    if y.dtype.kind == "u" and y.dtype.itemsize >= 8 and n:
        too_big = y > np.uint64(INT64_MAX)
        if too_big.any():
            bad = int(np.argmax(too_big))
            raise ValueError(f"{name}[{bad}] = {int(y[bad])} is not a class label in [0, {n_classes}); "
                             f"weights unchanged")
    y = executor_form(y, _I64, name)
    if check_range and n and (y.min() < 0 or y.max() >= n_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= n_classes))[0])
        raise ValueError(f"{name}[{bad}] = {int(y[bad])} is not a class label in [0, {n_classes})")
    return y


def targets(y, name, n, n_out, dtype, loss):
    """Validate float targets ``(n, n_out)`` (``(n,)`` too when ``n_out == 1``).

    Integer and other float dtypes are converted to ``dtype`` (the values
    are targets, not features: no precision is lost that the loss keeps).

    Returns
    -------
    numpy.ndarray, shape (n, n_out), dtype ``dtype``, in the executor's form

    Raises
    ------
    TypeError
        Not a numpy array, or not a real (float or integer) dtype.
    ValueError
        Wrong shape.
    """
    if type(y) is not np.ndarray:
        array(y, name, f"np.{np.dtype(dtype).name}")
    if y.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a float array of targets for loss {loss!r}, got dtype {y.dtype}")
    return executor_form(y.reshape(target_shape(y.shape, name, n, n_out)), dtype, name)


def sample_weight(w, name, n):
    """Per-row sample weights: a 1-D array-like of ``n`` finite real numbers >= 0, as float64.

    Raises
    ------
    TypeError
        Not numeric (bools, strings, objects), or not array-like.
    ValueError
        Not 1-D of length ``n``, a negative or non-finite weight.
    """
    try:
        a = np.asarray(w)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of real numbers, got {type(w).__name__}") from None
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.ndim == 0:
        a = np.full(n, a, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one weight per row), got {fmt_shape(a.shape)}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    for bad, what in ((~np.isfinite(a), "finite"), (a < 0, ">= 0")):
        if (rows := np.flatnonzero(bad)).size:
            more = f", and {rows.size - 1} more" if rows.size > 1 else ""
            raise ValueError(f"{name} must be {what} ({name}[{rows[0]}] is {float(a[rows[0]])!r}{more})")
    return a
