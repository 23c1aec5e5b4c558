"""``fastbp.grad(..., device="cuda")`` on an NVIDIA GPU: :class:`CudaGradFunction`.

Importing this module never requires numba-cuda or a GPU; constructing a
function does (:func:`fastbp._cuda_device.require_cuda`).
"""
from __future__ import annotations

import numpy as np

from . import _isa as ex
from ._cuda_device import device_array, is_c_contiguous, require_cuda
from ._gradfn_base import GradFunctionBase
from .graph import GraphError

__all__ = ["CudaGradFunction"]


class CudaGradFunction(GradFunctionBase):
    """``value, grads = f(**inputs)`` of ``fastbp.grad(..., device="cuda")``.

    Same contract as :class:`fastbp.gradfn.GradFunction`: inputs and
    parameters (numpy or CUDA device arrays) are written into the device
    arena, forward and backward run on the GPU, and the output value and
    the gradients come back as host copies (one device-to-host transfer).

    Parameters
    ----------
    output, wrt, dtype, batch_size
        As :func:`fastbp.grad`'s, which checks them and makes the function.

    Raises
    ------
    RuntimeError
        No CUDA device or driver was found.
    """

    def __init__(self, output, wrt, dtype, batch_size):
        require_cuda("fastbp.grad(..., device='cuda')")
        from numba import cuda

        from ._cuda_tape import DeviceTape    # needs numba-cuda, there since require_cuda passed
        super().__init__(output, wrt, dtype, batch_size)
        if np.any(self.plan.tape[:, ex.C_OP] == ex.OP_LOSS):
            raise GraphError("fastbp.grad(device='cuda') does not take loss nodes; use fastbp.compile")
        self._tape = DeviceTape(self.plan, self.arena, self.hyper)
        self.device_arena = self._tape.arena
        self._stream = cuda.stream()

    def _asarray(self, v):
        d = device_array(v)
        return np.asarray(v) if d is None else d

    def __call__(self, /, **values):      # (an input may be named 'self')
        """Run forward and backward once on the GPU.

        Parameters
        ----------
        **values : array_like or CUDA device array
            Every input by name, and optionally parameters, as for
            :meth:`fastbp.gradfn.GradFunction.__call__` (device arrays are copied on the device).

        Returns
        -------
        value : float or numpy.ndarray
            The output (a float for a scalar output), a host copy.
        grads : dict of str -> float or numpy.ndarray
            The gradient of the output's sum w.r.t. each ``wrt`` node, by name (host copies).
        """
        from ._cuda_tape import TapeCall
        p = self.plan
        nb, staged = self._stage(values)
        t = self._tape
        with self._lock:
            s = self._stream
            copies = []         # every argument checked before anything is copied
            for n, v in self._with_defaults(staged):
                dst = t.view(p.value_buf[n.id], nb)
                if device_array(v) is None:
                    v = np.ascontiguousarray(v, dtype=self.dtype).reshape(dst.shape)
                else:
                    if np.dtype(v.dtype) != self.dtype:
                        raise TypeError(f"{n.name} on the device must have dtype {self.dtype}, got "
                                        f"{np.dtype(v.dtype)}")
                    if not is_c_contiguous(v):     # a device array is not copied into another layout
                        raise ValueError(f"{n.name} on the device must be C-contiguous (row-major); "
                                         f"make a contiguous copy on the device first")
                    v = v.reshape(*dst.shape)
                copies.append((dst, v))
            for dst, v in copies:
                dst.copy_to_device(v, stream=s)
            t.run(TapeCall(s), 0, int(p.sec[ex.S_BWD]), nb)
            t.arena.copy_to_host(self.arena, stream=s)   # the host arena mirrors the device one
            s.synchronize()
            return self._results(nb)
