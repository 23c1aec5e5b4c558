"""CUDA variants of the private kernels (numba-cuda ``@cuda.jit``).

Layout mirrors the CPU side, one job per file: :mod:`.gemm` (tiled
``nn``/``nt``/``tn`` products), :mod:`.linear` (fused bias + activation
forward launchers, column-sum bias gradient), :mod:`.activations` (one set of
kernels per entry of :mod:`fastbp.registry.activations`, compiled from the
entry's scalar bodies as device functions), :mod:`.fused` (the tiled linear
kernel templates with an activation epilogue), :mod:`.gates`,
:mod:`.losses`, :mod:`.optim`, and :mod:`.launch` (decorators, block shapes
and grids).

Each CPU kernel name (``_mm_nn``, ``_linear_fwd``, ``_softmax_xent``, ...)
exists here as a *host launcher* with the same arguments, all arrays being
caller-allocated device arrays, plus an optional ``stream``: it picks the
launch shape and starts the ``@cuda.jit`` kernel(s), named ``_k_<name>``,
asynchronously.  Differences from the CPU contracts: the losses cannot
return their mean, they write it to a float64 device array ``loss[0]``;
``_check_labels`` writes its answer to ``out[0]``.  Launchers do not
validate; the API layer does.

Importing this package never fails: when numba-cuda is missing or broken,
:func:`cuda_available` says so and the submodules are simply not usable.
Kernels compile lazily, at their first launch, so the submodules import on
machines without a GPU too (they run there under numba's CUDA simulator,
``NUMBA_ENABLE_CUDASIM=1``, which is how the test-suite checks them).
"""
from __future__ import annotations

try:
    from numba import cuda as _cuda
except Exception as exc:  # noqa: BLE001 - any failure means "no CUDA"
    _cuda = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = None


class Availability:
    """Answer of :func:`cuda_available`: truthy when kernels can run.

    Attributes
    ----------
    ok : bool
        True when the CUDA kernels can be launched.
    simulator : bool
        True when they would run in numba's CUDA simulator.
    reason : str
        Human-readable explanation (why not, or on what).
    """

    __slots__ = ("ok", "simulator", "reason")

    def __init__(self, ok, reason, simulator=False):
        self.ok = bool(ok)
        self.simulator = bool(simulator)
        self.reason = " ".join(str(reason).split())   # one line, for skip messages

    def __bool__(self):
        return self.ok

    def __repr__(self):
        return f"Availability(ok={self.ok}, simulator={self.simulator}, reason={self.reason!r})"


def cuda_available():
    """Whether the CUDA kernels can run here, and why (not).

    Never raises.  True under numba's CUDA simulator
    (``NUMBA_ENABLE_CUDASIM=1``) and on a machine with a working driver,
    a GPU and NVVM.

    Returns
    -------
    Availability
        Truthy iff kernels can be launched; ``.reason`` explains.
    """
    if _cuda is None:
        return Availability(False, "numba-cuda is not installed or failed to import "
                            f"({_IMPORT_ERROR}); pip install -e '.[cuda]' in the fastbp clone")
    try:
        from .launch import SIMULATOR
    except Exception as exc:  # noqa: BLE001
        return Availability(False, f"fastbp's CUDA kernels failed to load: {exc}")
    if SIMULATOR:
        return Availability(True, "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)", simulator=True)
    try:
        from numba.cuda.cudadrv import driver as _driver
        from numba.cuda.cudadrv import nvvm as _nvvm
        if not _driver.driver.is_available:
            return Availability(False, f"no usable CUDA driver: {_driver.driver.initialization_error}")
        if len(_cuda.gpus) == 0:
            return Availability(False, "the CUDA driver reports no GPU")
        if not _nvvm.is_available():
            return Availability(False, "NVVM (libnvvm, the CUDA compiler library) was not found; "
                                "install the CUDA toolkit or the nvidia-nvvm wheel")
    except Exception as exc:  # noqa: BLE001
        return Availability(False, f"CUDA is not usable: {type(exc).__name__}: {exc}")
    return Availability(True, f"CUDA device: {_cuda.get_current_device().name!r}")
