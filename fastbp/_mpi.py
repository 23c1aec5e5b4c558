"""MPI plumbing of data-parallel training: the communicator, agreement on errors, thread shares.

Everything :class:`fastbp.distributed.DistributedStep` needs from MPI that is
not the step: importing mpi4py only when asked (:func:`_mpi`), the world
size and rank from the launcher's environment, one collective that makes
every rank raise the same error (:func:`agree`, :class:`RankError`), each
rank's share of the cores (:func:`thread_share`, :func:`limit_threads`),
and the layout of an epoch over the ranks (:func:`_epoch_shard`).
mpi4py is imported only when a communicator is used.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from . import _validate as V

__all__ = ["RankError", "agree", "thread_share", "limit_threads", "mpi_world_size", "mpi_world_rank",
           "launched_comm", "abort_unless_agreed", "MPI_MISSING"]

#: The message of the ImportError raised when ``comm=`` is used without mpi4py.
MPI_MISSING = ("data-parallel training (comm=...) needs mpi4py and an MPI library: "
               "pip install -e '.[distributed]' in the fastbp clone (mpi4py with the mpich wheel), or build "
               "mpi4py against your cluster's MPI (env MPICC=mpicc pip install --no-binary "
               "mpi4py mpi4py)")

# slots after the gradients in the reduced buffer
_N_SLOTS = 3          # loss * rows / (size * batch_size), rows, number of failed ranks (_pack)


def _mpi():
    """``mpi4py.MPI``, or an ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{MPI_MISSING} ({e})") from None
    return MPI


def mpi_world_size(environ=None):
    """The number of processes the MPI launcher started, from its environment.

    Reads the variables set by MPICH/Intel MPI's launchers (``PMI_SIZE``),
    Open MPI's (``OMPI_COMM_WORLD_SIZE``) and Slurm's ``srun``
    (``SLURM_NTASKS`` together with ``SLURM_PROCID``), without importing
    mpi4py.

    Parameters
    ----------
    environ : mapping, optional
        Default :data:`os.environ`.

    Returns
    -------
    int
        The world size, or 1 if the process was not started by an MPI
        launcher.
    """
    env = os.environ if environ is None else environ
    keys = ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE"]
    if "SLURM_PROCID" in env:
        keys.append("SLURM_NTASKS")
    for k in keys:
        v = env.get(k, "")
        if v.strip().isdigit() and int(v) > 1:
            return int(v)
    return 1


def mpi_world_rank(environ=None):
    """This process's rank as set by the MPI launcher's environment (0 if none).

    Same variables as :func:`mpi_world_size` (``PMI_RANK``,
    ``OMPI_COMM_WORLD_RANK``, ``PMIX_RANK``, ``SLURM_PROCID``); lets a
    program decide who prints before MPI is initialised.
    """
    env = os.environ if environ is None else environ
    for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        v = env.get(k, "")
        if v.strip().isdigit():
            return int(v)
    return 0


def launched_comm(program="this program"):
    """``MPI.COMM_WORLD`` if the process was started by an MPI launcher with
    more than one process (:func:`mpi_world_size`), else None.

    Initialises MPI in the first case.

    Raises
    ------
    ImportError
        Started by a launcher but mpi4py is not installed.
    """
    n = mpi_world_size()
    if n <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(f"{program} was started by an MPI launcher with {n} processes, but "
                          f"{MPI_MISSING}") from None
    return MPI.COMM_WORLD


def abort_unless_agreed(exc, status=1):
    """End the whole MPI job if ``exc`` was raised on this rank only.

    Errors raised by :class:`DistributedStep` and :func:`agree` are raised on
    every rank (they carry ``fastbp_all_ranks = True``): every rank can exit
    normally.  Any other error may have left other ranks waiting inside a
    collective call forever (MPI launchers do not stop them when one rank
    exits), so this calls ``MPI.COMM_WORLD.Abort(status)``.  Does nothing if
    MPI is not initialised or the job has one process.
    """
    if getattr(exc, "fastbp_all_ranks", False):
        return
    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return
    if MPI.COMM_WORLD.Get_size() > 1:
        MPI.COMM_WORLD.Abort(status)


class RankError(RuntimeError):
    """Raised on the ranks that did *not* fail when another rank's step failed.

    The rank that failed raises its own exception (``ValueError``,
    ``TypeError``, ``FloatingPointError`` ...).  Either way no rank updated
    its weights.

    Parameters
    ----------
    message : str
    n_failed : int, default 1
    size : int, default 1

    Attributes
    ----------
    n_failed : int
        Number of ranks that reported an error.
    size : int
        Number of ranks.
    """

    def __init__(self, message, n_failed=1, size=1):
        super().__init__(message)
        self.n_failed = n_failed
        self.size = size


def _on_all_ranks(exc, n_failed=None):
    """Mark ``exc`` as raised on every rank (no rank is left inside a collective).

    ``fastbp_failed_ranks``: how many ranks failed on their own (the others
    raised :class:`RankError`), None if not known; equal to the number of
    ranks when every rank hit the error itself (a program may then print it
    once).
    """
    try:
        exc.fastbp_all_ranks = True
        exc.fastbp_failed_ranks = n_failed
    except AttributeError:  # pragma: no cover - exceptions without __dict__
        pass
    return exc


def agree(comm, error=None, what="a rank failed"):
    """Agree across ranks on whether any rank failed; raise on all ranks if so.

    A collective call: every rank of ``comm`` must call it.  Use it around
    per-rank work that may fail (loading data, building a model) before the
    next collective, so one failing rank cannot leave the others waiting.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
    error : BaseException or None
        This rank's exception, or None if it succeeded.
    what : str
        Description used in the :class:`RankError` of the other ranks.

    Raises
    ------
    BaseException
        ``error`` itself on a rank that failed.
    RankError
        On the ranks that succeeded when another one failed.
    """
    MPI = _mpi()
    flag = np.array([0 if error is None else 1], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.SUM)
    n = int(flag[0])
    if n == 0:
        return
    if error is not None:
        _note(error, comm, n)
        raise _on_all_ranks(error, n)
    raise _on_all_ranks(RankError(f"{what}: {n} of {comm.Get_size()} ranks reported an error "
                                  f"(see their messages)", n, comm.Get_size()), n)


def _reraise(exc):
    raise exc


def _note(exc, comm, n_failed=None):
    """Note on ``exc`` the rank that raised it and what the others raised (``n_failed``: how
    many ranks failed, when known)."""
    if hasattr(exc, "add_note") and comm.Get_size() > 1:
        others = ("every rank raised its own error" if n_failed == comm.Get_size() else
                  "the ranks that did not fail raised fastbp.distributed.RankError")
        exc.add_note(f"(raised on MPI rank {comm.Get_rank()} of {comm.Get_size()}; {others})")


# ------------------------------------------------------------------ threads
def _cpus():
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


def thread_share(comm):
    """The number of threads this rank should use: its share of the cores.

    A collective call.  The ranks on one node (``COMM_TYPE_SHARED``) that
    may run on the same cores as this rank (overlapping CPU affinity) split
    those cores evenly; a rank the launcher already bound to its own cores
    (``mpiexec --bind-to core``, ``srun --cpu-bind``) keeps all of them.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm

    Returns
    -------
    int
        At least 1.
    """
    MPI = _mpi()
    mine = _cpus()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        sets = node.allgather(sorted(mine))
    finally:
        node.Free()
    sharing = sum(1 for s in sets if mine.intersection(s))
    return max(1, len(mine) // max(sharing, 1))


def limit_threads(n):
    """Cap numba's and the BLAS libraries' threads of this process to ``n``.

    numba: :func:`numba.set_num_threads` (at most ``NUMBA_NUM_THREADS``);
    BLAS: ``threadpoolctl.threadpool_limits(n, user_api="blas")`` for every
    BLAS loaded (the one the fused step calls, see :mod:`fastbp._blas`, and
    numpy's and scipy's).  The limits stay in effect for the life of the
    process.

    Parameters
    ----------
    n : int
        Threads, >= 1.

    Returns
    -------
    dict
        ``{"numba": threads set, "blas": threads set or a reason it was not}``.
    """
    n = V.positive_int("threads", n)
    import numba
    nb = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(nb)
    out = {"numba": nb}
    try:
        import fastbp._blas  # noqa: F401  (loads the BLAS the fused step calls)
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        out["blas"] = f"not limited: {e}"
        return out
    threadpool_limits(limits=n, user_api="blas")
    out["blas"] = n
    return out


# ------------------------------------------------------------ the split step
def _pack(vec, gn, nb, loss, nominal):
    """Mean-over-rows gradients and loss -> their shares of the global mean, weighted by rows
    ``nb / nominal`` (``nominal``: the global batch, ``size * batch_size``, at least the sum of
    the ranks' rows); write the three slots.  The sum over ranks stays within the largest rank's
    values: weighting by ``nb`` itself overflowed float32 where one process's mean did not
    (a loss of 3e37 on 16 rows).  :func:`_unpack` makes the sum the mean over all rows."""
    w = nb / nominal
    g = vec[:gn]
    np.multiply(g, w, out=g)
    vec[gn] = loss * w
    vec[gn + 1] = nb
    vec[gn + 2] = 0


def _unpack(vec, gn, nominal):
    """The reduced :func:`_pack` vectors: the gradients (in place) and the loss (returned) as
    means over every rank's rows."""
    f = nominal / float(vec[gn + 1])
    g = vec[:gn]
    if f != 1.0:
        np.multiply(g, f, out=g)
    return float(vec[gn]) * f


def _epoch_shard(perm, size, rank, batch):
    """This rank's rows of one epoch and the step boundaries in them.

    The epoch's permutation ``perm`` (identical on every rank) is cut into
    global minibatches of ``size * batch`` rows -- exactly the minibatches
    a single process with batch ``size * batch`` would visit -- and each
    global minibatch into ``size`` equal consecutive parts, part ``rank``
    for this rank.  The last ``len(perm) % size`` rows are left out of the
    epoch so that every rank gets the same number of rows in every step
    (a different few each epoch when shuffling).

    Returns
    -------
    rows : ndarray of int64, shape (len(perm) // size,)
    starts : ndarray of int64, shape (n_steps + 1,)
        Step ``s`` uses ``rows[starts[s]:starts[s+1]]``.
    """
    n_use = (len(perm) // size) * size
    g = size * batch
    k = n_use // g
    full = perm[:k * g].reshape(k, size, batch)[:, rank, :].ravel()
    tail = n_use - k * g
    per = tail // size
    rows = np.concatenate([full, perm[k * g + rank * per:k * g + (rank + 1) * per]]).astype(np.int64)
    starts = np.arange(k + 1, dtype=np.int64) * batch
    if per:
        starts = np.append(starts, k * batch + per)
    return rows, starts


# ------------------------------------------------------------------- step
