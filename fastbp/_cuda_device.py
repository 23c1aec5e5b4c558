"""Device arrays at the GPU step's boundary: availability, recognition, checks.

- :func:`require_cuda`: the one error raised where CUDA cannot run;
- :func:`device_array`: a numba device array for data already on the GPU
  (numba, CuPy, PyTorch CUDA: anything with ``__cuda_array_interface__``),
  read in place, without a copy;
- :func:`device_features`, :func:`device_targets`: the checks of device
  inputs: the shape checks of :mod:`fastbp._validate` (through which host
  inputs go, as on the CPU), then the device's own rules (no dtype
  conversion on the device, C order);
- :func:`stage_params`: the checked ``(destination, source)`` pairs of a
  mapping of weights.

Importing this module never requires numba-cuda or a GPU.
"""
from __future__ import annotations

import numpy as np

from . import _validate as V
from .kernels.cuda import cuda_available

try:  # numba-cuda is optional: without it nothing is a device array
    from numba import cuda
except Exception:  # noqa: BLE001 - any failure: cuda_available() explains it
    cuda = None

__all__ = ["require_cuda", "device_array", "device_features", "device_targets", "kind_error",
           "stage_params"]


def require_cuda(what="device='cuda'"):
    """Raise unless the CUDA kernels can run here.

    Parameters
    ----------
    what : str
        The call that needs CUDA (starts the message).

    Returns
    -------
    Availability
        The truthy answer of :func:`fastbp.kernels.cuda.cuda_available`.

    Raises
    ------
    RuntimeError
        No CUDA device or driver was found (or numba-cuda / NVVM is
        missing); the message gives the reason.
    """
    avail = cuda_available()
    if not avail:
        raise RuntimeError(f"{what}: no CUDA device or driver was found ({avail.reason}). "
                           f"Use device='cpu' (the default) on this machine.")
    return avail


def device_array(a):
    """A numba device array for data already on the GPU (no copy), else None."""
    if cuda is None:
        return None
    if getattr(a, "__cuda_ndarray__", False):            # numba (also the simulator's)
        return a
    if hasattr(a, "__cuda_array_interface__"):           # CuPy, PyTorch CUDA, ...
        return cuda.as_cuda_array(a)
    return None


def is_c_contiguous(d):
    """Whether the device array ``d`` is C-contiguous (row-major)."""
    return d.is_c_contiguous() if hasattr(d, "is_c_contiguous") else d.flags["C_CONTIGUOUS"]


def kind_error(name, a):
    """The TypeError for an argument ``name`` that is neither a numpy nor a device array."""
    return TypeError(f"{name} must be a numpy.ndarray or a CUDA device array (numba device array, "
                     f"CuPy array, PyTorch CUDA tensor: anything with __cuda_array_interface__), "
                     f"got {type(a).__name__}")


def device_features(d, name, dtype, n_in, max_rows=None):
    """Check the device array ``d`` as the features of a call; returns its rows.

    Parameters
    ----------
    d : device array, shape (n, n_in), dtype ``dtype``, C-contiguous
    name : str
    dtype : numpy.dtype
    n_in : int
    max_rows : int, optional

    Returns
    -------
    int
        ``n``.

    Raises
    ------
    TypeError
        Another dtype (it is not converted on the device).
    ValueError
        Another shape, no rows, more than ``max_rows`` rows, not C-contiguous.
    """
    if np.dtype(d.dtype) != dtype:
        raise TypeError(f"{name} has dtype {np.dtype(d.dtype)}; this step was compiled for {dtype} "
                        f"(convert it on the device first)")
    n = V.feature_rows(d.shape, name, n_in, max_rows)
    if not is_c_contiguous(d):
        raise ValueError(f"{name} must be C-contiguous (row-major)")
    return n


def device_targets(d, name, n, n_out, dtype, loss, classification):
    """Check the device array ``d`` as the targets of ``n`` rows; returns it (``(n, 1)`` for ``(n,)``
    regression targets of one output).

    Labels must be int64 ``(n,)``; regression targets ``(n, n_out)`` of ``dtype``.

    Raises
    ------
    TypeError
        Another dtype.
    ValueError
        Another shape, or not C-contiguous.
    """
    dt = np.dtype(d.dtype)
    shape = tuple(d.shape)
    if classification:
        if dt != np.int64:
            raise TypeError(f"{name} on the device must hold int64 class labels for loss {loss!r}, "
                            f"got dtype {dt}")
        V.label_shape(shape, name, n)
    else:
        if dt != dtype:
            raise TypeError(f"{name} on the device must have dtype {dtype} for loss {loss!r}, "
                            f"got {dt}")
        if V.target_shape(shape, name, n, n_out) != shape:
            d = d.reshape(n, 1)
    if not is_c_contiguous(d):
        raise ValueError(f"{name} must be C-contiguous")
    return d


def stage_params(params, source, dtype):
    """The ``(device view, value)`` pairs of a mapping ``source`` of weights, all checked first.

    Parameters
    ----------
    params : dict of str -> device array
        The step's weights.
    source : mapping of str -> numpy or device array
        Some of ``params``' names, same shapes (device values also ``dtype``).
    dtype : numpy.dtype

    Raises
    ------
    KeyError, ValueError, TypeError
        An unknown name, a wrong shape, a value that is not real numbers (nothing is
        copied then).
    """
    staged = []
    for name, v in source.items():
        if name not in params:
            raise KeyError(f"load_params_from: unknown parameter {name!r}; expected some of "
                           f"{sorted(params)}")
        dst = params[name]
        d = device_array(v)
        if d is None:
            a = np.asarray(v)
            if a.dtype.kind not in "fiu":       # as torch's copy_: real numbers cast; never a silent .real
                raise TypeError(f"load_params_from: {name!r} must be a real numeric array, got "
                                f"{type(v).__name__} of dtype {a.dtype}")
            v = np.ascontiguousarray(a, dtype=dtype)
            if v.shape != tuple(dst.shape):
                raise ValueError(f"load_params_from: {name!r} must have shape {tuple(dst.shape)}, "
                                 f"got {v.shape}")
            staged.append((dst, v))
        else:
            if tuple(d.shape) != tuple(dst.shape) or np.dtype(d.dtype) != dtype:
                raise ValueError(f"load_params_from: {name!r} must be a {dtype} device array of "
                                 f"shape {tuple(dst.shape)}, got {np.dtype(d.dtype)} {tuple(d.shape)}")
            staged.append((dst, d))
    return staged
