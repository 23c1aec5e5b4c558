"""The float targets of a step's loss, checked for the values that loss is defined on.

:func:`fastbp._validate.targets` checks their type and shape; a loss whose
targets have a domain (``poisson``: counts, finite and >= 0, as
scikit-learn's Poisson regression requires) is checked here too, so a
target outside it is a ValueError naming it before the step runs, not a
non-finite loss after.
"""
from __future__ import annotations

import numpy as np

from . import _validate as V
from .registry import losses as _losses

__all__ = ["float_targets"]


def float_targets(y, name, n, n_out, dtype, loss):
    """Validate float targets ``(n, n_out)`` of ``loss`` (see :func:`fastbp._validate.targets`).

    Parameters
    ----------
    y : numpy.ndarray
    name : str
        Its name in error messages.
    n, n_out : int
        The rows and the outputs.
    dtype : numpy.dtype
        The step's dtype.
    loss : str
        The step's loss (a registry name).

    Returns
    -------
    numpy.ndarray, shape (n, n_out), dtype ``dtype``, in the executor's form

    Raises
    ------
    TypeError
        Not a numpy array of reals.
    ValueError
        Wrong shape, or (``poisson``) a target that is negative or not finite.
    """
    yf = V.targets(y, name, n, n_out, dtype, loss)
    if _losses.get(loss).nonnegative_targets:
        bad = ~(np.isfinite(yf) & (yf >= 0))
        if bad.any():
            i, j = np.unravel_index(int(np.argmax(bad)), yf.shape)
            v = yf[i, j]
            what = "negative" if np.isfinite(v) else "not finite"
            raise ValueError(f"{name} holds a target that is {what} (row {i}, output {j}: {float(v)!r}); loss "
                             f"{loss!r} needs count targets that are finite and >= 0 ({int(bad.sum())} are not); "
                             f"nothing was changed")
    return yf
