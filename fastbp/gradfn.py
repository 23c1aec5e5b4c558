"""The CPU value-and-gradient function of ``fastbp.grad``: :class:`GradFunction`.

``fastbp.grad`` itself (which chooses the CPU or the GPU class) is in
:mod:`fastbp.factories`.
"""
from __future__ import annotations

import numpy as np

from . import _executor as ex
from ._gradfn_base import GradFunctionBase
from .compiler import view

__all__ = ["GradFunction"]


class GradFunction(GradFunctionBase):
    """The compiled ``value, grads = f(**inputs)`` of :func:`fastbp.grad`.

    Calling it writes the inputs into the preallocated buffers, runs the
    forward pass and the backward pass in one native call and returns the
    output value and the gradients (copies) keyed by node name.

    Parameters
    ----------
    output, wrt, dtype, batch_size
        As :func:`fastbp.grad`'s, which checks them and makes the function.
    """

    def __init__(self, output, wrt, dtype, batch_size):
        super().__init__(output, wrt, dtype, batch_size)
        ex.runtime_hyper(self.hyper)
        self.ws64 = np.zeros(max(batch_size, 1))
        self.gjit = ex.gemm_jit_table(self.plan, batch_size, self)
        self._ctx = ex.context(self.arena, self.plan.bufs, self.plan.tape, self.hyper, self.ws64, self.gjit,
                               batch_size)
        self._x = np.zeros((0, 0), self.dtype)
        self._yi = np.zeros(0, np.int64)

    def __call__(self, /, **values):      # (an input may be named 'self')
        """Run forward and backward once.

        Parameters
        ----------
        **values : array_like
            Every input by name (shape as declared; a ``None`` dimension: 1 to
            ``batch_size`` rows, the same for all inputs), and optionally parameters
            (their graph values otherwise).  A numpy array (or scalar, or any
            array with a ``dtype``) must have the function's dtype, in either
            byte order: another one (float64 for a float32 function, float32 for
            a float64 one, integers) is a ``TypeError``, as for the step's ``x``
            (``step(X, y)``), never a silent (lossy) conversion.  Python numbers
            and nested lists of them are converted to the dtype.

        Returns
        -------
        value : float or numpy.ndarray
            The output (a float for a scalar output).
        grads : dict of str -> float or numpy.ndarray
            The gradient of the output's sum w.r.t. each ``wrt`` node, by name, with its shape.

        Raises
        ------
        TypeError
            An unknown or missing name, or an array whose dtype is not the function's.
        ValueError
            A wrong shape or number of rows.
        """
        p = self.plan
        nb, staged = self._stage(values)
        with self._lock:
            for n, v in self._with_defaults(staged):
                view(self.arena, p, p.value_buf[n.id], n.shape, nb)[...] = v
            status, _, _ = ex.run_step(self._ctx, p.sec, nb, self._x, self._yi, self._x, ex.MODE_GRAD)
            if status:      # every input was validated and written into the arena: a bug if seen
                raise RuntimeError(f"internal error: executor status {status} for a validated call of "
                                   f"a fastbp.grad function; its inputs are unchanged")
            return self._results(nb)
