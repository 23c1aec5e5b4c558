"""Data-parallel training over MPI (mpi4py): :class:`DistributedStep`.

Every rank (process) builds the same compiled step; rank 0's initial weights
and optimizer state are broadcast once; then every step

1. runs forward, loss and backward on the rank's own minibatch in one native
   call (the fused step up to, not including, the optimizer update), scales
   the gradients from a mean over the local rows to a sum (``* local_rows``)
   and writes three numbers after them: ``loss * local_rows``, ``local_rows``
   and an error count (1 if this rank's minibatch failed, else 0);
2. sums that ONE contiguous buffer over all ranks with a single
   ``comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)`` (buffer-based, no
   pickling): gradients, global loss, global row count and the number of
   failed ranks travel together;
3. if any rank failed, raises on *every* rank (nothing is updated anywhere);
   otherwise divides the gradients by the global row count and runs only the
   optimizer update, in a second native call.

So the step is split only where the Allreduce must sit.  Because every rank
applies the same update to the same reduced gradients, the weights stay
bitwise identical on all ranks; and because the gradients are weighted by
row counts, ``N`` ranks with batch ``b`` each train exactly like one process
with batch ``N * b`` (up to float rounding; for ``mse``/``bce_with_logits``,
whose mean is over rows x outputs, too: the outputs factor is the same on
every rank).  Ranks may even pass minibatches of different sizes.

Errors are agreed on before anyone raises: a rank whose minibatch is
rejected (bad shape, dtype or label, non-finite loss) still joins the
Allreduce with its error flag set, then every rank raises -- the failing rank
its own exception, the others :class:`RankError`.  No rank is left waiting.

Threads: N ranks on one machine each running a BLAS/numba pool sized for the
whole machine oversubscribe the cores (measured up to 26x slower).  By
default each rank caps its numba and BLAS threads to its share of the cores
(:func:`thread_share`, :func:`limit_threads`).

mpi4py is optional (``pip install -e '.[distributed]'``); this module
imports it only when a communicator is used.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from . import _validate as V
from . import training as _training
from ._dist_fit import DataParallelFit
from ._isa import C_OP, H_ROW0, OP_DROPOUT, RUNTIME_SLOTS, STATUS_OK
from ._mpi import (  # noqa: F401 - re-exported: the public names of data-parallel training
    _N_SLOTS, MPI_MISSING, RankError, _epoch_shard, _mpi, _note, _on_all_ranks, _pack, _reraise, _unpack,
    abort_unless_agreed, agree, launched_comm, limit_threads, mpi_world_rank, mpi_world_size, thread_share)

__all__ = ["DistributedStep", "RankError", "compile", "agree", "thread_share", "limit_threads",
           "mpi_world_size", "mpi_world_rank", "launched_comm", "abort_unless_agreed", "MPI_MISSING"]


class DistributedStep(DataParallelFit):
    """A :class:`fastbp.TrainStep` trained data-parallel over an MPI communicator.

    Every rank of ``comm`` must create it (a collective call) from the same
    model, loss, optimizer, batch size, dtype, gradient clipping
    (``clip_grad_norm``) and learning-rate schedule; this is checked.  Rank
    0's weights, optimizer state, BatchNorm1d running statistics, step counter
    and epoch count are then broadcast, so the ranks start identical (seeding
    differently on each rank is harmless; as PyTorch's
    ``DistributedDataParallel``, which broadcasts rank 0's buffers).

    Parameters
    ----------
    step : TrainStep
        This rank's compiled step (``batch_size`` is the per-rank batch; the
        global batch is ``comm.size * batch_size``).
    comm : mpi4py.MPI.Intracomm
        Any intra-communicator, e.g. ``MPI.COMM_WORLD``.
    threads : "auto", int or None, default "auto"
        ``"auto"``: cap numba and BLAS threads to this rank's share of the
        cores (:func:`thread_share`); an int: cap to that many; None: leave
        the thread pools alone.  Each process's own setting: it may differ
        between ranks.

    Attributes
    ----------
    step : TrainStep
        The wrapped step; ``params``, ``grads``, ``predict``, ``n_steps``,
        ``dtype`` ... are forwarded to it, and so are the settings assigned
        on this object (``lr``, ``clip_grad_norm``, ``schedule`` ...: set them
        on every rank).  After a step (or :meth:`loss_and_grads`), ``grads``
        hold the global mean gradients.
    comm : mpi4py.MPI.Intracomm
    rank, size : int
    is_root : bool
        ``rank == 0``: the rank that writes checkpoints and prints.
    threads : dict or None
        What :func:`limit_threads` set.
    comm_vector : ndarray, shape (n_grad + 3,), dtype ``step.dtype``
        The one buffer reduced per step: every gradient and then the
        loss, each times ``rows / (size * batch_size)``, then ``rows`` and
        the error count (a view into the step's arena).

    Raises
    ------
    ImportError
        mpi4py is not installed.
    TypeError
        ``comm`` is not an mpi4py intra-communicator (raised on that rank
        only: there is no communicator to agree over); ``step`` is not a
        TrainStep or ``threads`` not one of the above.
    ValueError
        The ranks compiled different steps, or a bad ``threads``.  Every
        error but ``comm``'s is agreed on: the rank that raised it raises it,
        the others :class:`RankError`.

    Examples
    --------
    Run with ``mpiexec -n 2 python -m mpi4py train.py`` (``-m mpi4py``: an uncaught
    exception on one rank aborts them all, see the README)::

        from mpi4py import MPI
        import fastbp
        step = fastbp.compile(model, optimizer=fastbp.SGD(lr=0.1), batch_size=32,
                              comm=MPI.COMM_WORLD)
        losses = step.fit(X, y, epochs=5)     # each rank trains on its share
        step.save("model.fbp")                 # written by rank 0 only
    """

    def __init__(self, step, comm, threads="auto"):
        MPI = _mpi()
        from .step import TrainStep
        if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
            raise TypeError(f"comm must be an mpi4py communicator such as MPI.COMM_WORLD, "
                            f"got {type(comm).__name__}")
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm must be an intra-communicator (all ranks in one group), "
                            f"got {type(comm).__name__}")
        error = None
        try:            # agreed on: one rank's refusal must not leave the others waiting
            if not isinstance(step, TrainStep):
                raise TypeError(f"step must be a fastbp.TrainStep, got {type(step).__name__}")
            threads = _threads_arg(threads)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank by agree()
            error = e
        agree(comm, error, "DistributedStep")
        self.step = step
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.is_root = self.rank == 0
        self._MPI = MPI

        p = step.plan
        g0, gn = p.grad_region
        self._g0, self._gn = int(g0), int(gn)
        self._check_reserved_slots()
        self.comm_vector = step.arena[self._g0:self._g0 + self._gn + _N_SLOTS]

        # every rank must have compiled the same step (pickled once, at setup only): clipping
        # and the schedule too, which would otherwise make the ranks' updates differ
        sched = None if step.schedule is None else step.schedule.spec()
        sig = (step.model.spec(), step.loss, step.optimizer.spec(), step.batch_size, step.dtype.str,
               step.precision, step.clip_grad_norm, sched, int(step.param_vector.size), int(self._gn))
        sigs = comm.allgather(sig)
        for r, s in enumerate(sigs):
            if s != sigs[0]:
                names = ("model", "loss", "optimizer", "batch_size", "dtype", "precision", "clip_grad_norm",
                         "schedule", "parameters", "gradients")
                diff = [nm for nm, a, b in zip(names, sigs[0], s) if a != b]
                raise _on_all_ranks(ValueError(
                    f"rank {r} compiled a different step than rank 0 (different {', '.join(diff)}): "
                    f"every rank must compile the same model, loss, optimizer, batch_size, dtype, "
                    f"precision (as resolved), clip_grad_norm and schedule"), self.size)

        # rank 0's weights, optimizer state and counters everywhere (the epoch count and where
        # the schedule started counting too: they go with the step counter in hyper)
        comm.Bcast(step.param_vector, root=0)
        for v in step.state_vectors:
            comm.Bcast(v, root=0)
        comm.Bcast(step.hyper, root=0)
        if step.buffer_vector.size:     # BatchNorm1d's running statistics (a live view of the arena)
            comm.Bcast(step.buffer_vector, root=0)
        step.epochs_done, step._sched_origin = comm.bcast((step.epochs_done, step._sched_origin), root=0)

        # dropout's masks are keyed by the row in the global minibatch (hyper[H_ROW0]:
        # this rank's first row), so that ranks draw the masks of one process
        self._dropout = bool(np.any(p.tape[:, C_OP] == OP_DROPOUT))

        # a copy of BatchNorm's running statistics, which the local backward updates: put
        # back when another rank rejected the step (_reduce_and_update)
        self._running = np.empty_like(step.buffer_vector)
        self._running_kept = False
        # staging buffers for the rows fit gathers each step
        bs = step.batch_size
        self._xs = np.empty((bs, step.n_in), dtype=step.dtype)
        self._yi = np.empty(bs, dtype=np.int64)
        self._yf = np.empty((bs, step.n_out), dtype=step.dtype)

        share = thread_share(comm)      # (collective: on every rank, whatever its threads=)
        self.threads = None if threads is None else limit_threads(share if threads == "auto" else threads)

    def _check_reserved_slots(self):
        """The 3 slots after the gradients must be free arena space (the compiler reserves them)."""
        p = self.step.plan
        lo, hi = self._g0 + self._gn, self._g0 + self._gn + _N_SLOTS
        spans = []
        for off, r, c in p.bufs:
            n = (p.batch_size if r < 0 else int(r)) * int(c)
            spans.append((int(off), int(off) + n))
        spans += [(int(o), int(o) + int(p.param_region[1])) for o in p.state_offsets]
        for a, b in spans:
            if a < hi and b > lo and b > a:
                raise RuntimeError("internal: the compiled step does not reserve the slots after its "
                                   "gradients that data-parallel training needs")
        if hi > self.step.arena.size:
            raise RuntimeError("internal: the arena ends right after the gradients")

    # --------------------------------------------------------- forwarding
    #: this object's own attributes (the rest are the wrapped step's: read and set there)
    _OWN = frozenset({"step", "comm", "rank", "size", "is_root", "threads", "comm_vector"})

    def __getattr__(self, name):
        if name == "step":          # not yet set (during __init__ errors)
            raise AttributeError(name)
        return getattr(self.step, name)

    def __setattr__(self, name, value):
        # a setting of the wrapped step (lr, clip_grad_norm, epochs_done ...) is set on it, as
        # reads come from it (__getattr__): kept here, it would be read back but never used
        if (name.startswith("_") or name in self._OWN or hasattr(type(self), name)
                or "step" not in vars(self) or not hasattr(self.step, name)):
            object.__setattr__(self, name, value)
        else:
            setattr(self.step, name, value)

    @property
    def schedule(self):
        """The wrapped step's learning-rate schedule, or None (settable, as on the step: a
        :mod:`fastbp.schedules` schedule or None; set it on every rank)."""
        return self.step.schedule

    @schedule.setter
    def schedule(self, value):
        self.step.schedule = value

    @property
    def global_batch_size(self):
        """``size * batch_size``: rows per step over all ranks."""
        return self.size * self.step.batch_size

    # ---------------------------------------------------------------- core
    def _fail_local(self):
        """This rank's step failed: contribute zeros and an error count of 1."""
        v = self.comm_vector
        v[:self._gn] = 0
        v[self._gn] = 0
        v[self._gn + 1] = 0
        v[self._gn + 2] = 1

    def _reduce_and_update(self, error, what, update=True):
        """Allreduce the comm vector; raise everywhere on error; else the global mean
        gradients and (``update``) the update.

        ``error`` is a zero-argument callable raising this rank's exception,
        or None.  Returns the global mean loss.
        """
        MPI = self._MPI
        v = self.comm_vector
        self.comm.Allreduce(MPI.IN_PLACE, v, op=MPI.SUM)
        n_failed = int(round(float(v[self._gn + 2])))
        kept, self._running_kept = self._running_kept, False
        if n_failed and kept:       # BatchNorm's running statistics as they were: no rank trained
            np.copyto(self.step.buffer_vector, self._running)
        if n_failed:
            if error is not None:
                try:
                    error()
                except Exception as e:
                    _note(e, self.comm, n_failed)
                    raise _on_all_ranks(e, n_failed) from None
            raise _on_all_ranks(RankError(
                f"{n_failed} of {self.size} ranks rejected their minibatch{what} (see their "
                f"messages); no rank updated its weights", n_failed, self.size), n_failed)
        loss = _unpack(v, self._gn, self.global_batch_size)
        st = self.step
        if not update:
            return loss
        status, info = st.apply_update()
        if status:
            # identical reduced gradients: every rank gets here together
            if kept:                # no rank trained: BatchNorm's running statistics as they were
                np.copyto(st.buffer_vector, self._running)
            try:
                st.raise_status(status, info, where=f" after the Allreduce{what}")
            except Exception as e:
                raise _on_all_ranks(e, self.size) from None
        return loss

    def __call__(self, x, y):
        """One data-parallel training step; a collective call.

        Each rank passes its own minibatch; the update uses the mean gradient
        over all ranks' rows (weighted by each rank's row count, so ranks may
        pass different numbers of rows).  Dropout draws, on each rank, the
        masks one process draws for the ranks' minibatches concatenated in
        rank order (one more small collective per call, only for a model
        with dropout).

        Parameters
        ----------
        x : ndarray, shape (b, in_features), dtype ``dtype`` (any memory layout)
            This rank's rows, ``1 <= b <= batch_size``.
        y : ndarray
            Labels ``(b,)`` int or targets ``(b, out_features)`` float, as
            for :meth:`TrainStep.__call__`.

        Returns
        -------
        float
            The global mean loss (over every rank's rows) before the update;
            the same on every rank.

        Raises
        ------
        TypeError, ValueError, FloatingPointError
            On the rank whose minibatch was rejected.
        RankError
            On the other ranks.  Either way no rank changed its weights.
        """
        st = self.step
        if st.schedule is None:
            return self._collective(x, y, update=True)
        # a step-interval schedule's rates of this update and the next: the same on every rank
        with _training.scheduled_call(st):
            return self._collective(x, y, update=True)

    def loss_and_grads(self, x, y):
        """Forward, loss and backward over every rank's minibatch, without an update; a
        collective call.

        What one process's :meth:`fastbp.TrainStep.loss_and_grads` gives for the
        ranks' minibatches concatenated in rank order: the gradients are
        summed over the ranks (one Allreduce) and divided by the global row
        count, the loss likewise (each rank's mean weighted by its rows).

        Parameters
        ----------
        x, y : ndarray
            This rank's minibatch, as for :meth:`__call__`.

        Returns
        -------
        float
            The global mean loss; the same on every rank.  :attr:`grads` then
            hold the global mean gradients on every rank.

        Raises
        ------
        TypeError, ValueError, FloatingPointError
            On the rank whose minibatch was rejected.
        RankError
            On the other ranks.  Weights and optimizer state are never changed.
        """
        return self._collective(x, y, update=False)

    def _collective(self, x, y, update):
        """:meth:`__call__` (``update``) or :meth:`loss_and_grads`."""
        st = self.step
        error = None
        try:
            # the step's one input path: any layout is converted here, and whatever
            # is wrong is raised only after this rank has joined the Allreduce below
            x, n = st.check_features(x, "x", st.batch_size)
            yi, yf = st.check_targets(y, n, check_range=False)
        except Exception as e:  # noqa: BLE001 - re-raised on this rank after the collective
            error = e
        # this rank's first row in the global minibatch (ranks before it, in rank order)
        row0 = (self.comm.exscan(n if error is None else 0) or 0) if self._dropout else 0
        with self._at_row(row0):
            if error is None:
                raise_local = self._local_gradients(x, yi, yf, n, "")
            else:
                self._fail_local()
                raise_local = functools.partial(_reraise, error)
            return self._reduce_and_update(raise_local, "", update)

    @contextlib.contextmanager
    def _at_row(self, row0):
        """The step's lock, with dropout's row offset (``hyper[H_ROW0]``) at ``row0``, this
        rank's first row in the global minibatch, for this data-parallel step only: reset
        after it, so that the step called on its own keys its masks by its own rows."""
        st = self.step
        with st.lock:
            st.hyper[H_ROW0] = float(row0)
            try:
                yield
            finally:
                st.hyper[H_ROW0] = 0.0

    def _local_gradients(self, x, yi, yf, n, where):
        """This rank's gradients and loss of a checked minibatch, packed for the reduction;
        returns None, or (having marked this rank failed) the call that raises its status
        (with a copy of the labels: fit's staging buffer is reused)."""
        st = self.step
        if self._running.size:      # kept until the ranks agree that the step succeeded
            np.copyto(self._running, st.buffer_vector)
            self._running_kept = True
        status, loss, info = st.gradients_of(x, yi, yf, n)
        if status == STATUS_OK:
            _pack(self.comm_vector, self._gn, n, loss, self.global_batch_size)
            return None
        self._fail_local()
        return functools.partial(st.raise_status, status, info, yi.copy(), where=where)

    def predict_proba(self, X):
        """Class probabilities on this rank (local; the weights are the same everywhere):
        :meth:`fastbp.TrainStep.predict_proba` of the rank's step.

        Parameters
        ----------
        X : array-like, shape (n, in_features)

        Returns
        -------
        ndarray, shape (n, out_features)
        """
        return self.step.predict_proba(X)

    def __reduce_ex__(self, protocol):
        raise TypeError("a DistributedStep cannot be pickled (it holds a communicator and native code); "
                        "save it with step.save(path) (a collective call) and rebuild it with fastbp.load(path)")

    # ----------------------------------------------------------- utilities
    def predict(self, X):
        """Network outputs for ``X`` on this rank (local; the weights are the same everywhere).

        Parameters
        ----------
        X : array-like, shape (n, in_features)

        Returns
        -------
        ndarray, shape (n, out_features), the step's dtype
            As :meth:`fastbp.TrainStep.predict`.
        """
        return self.step.predict(X)

    def save(self, path):
        """Write a checkpoint from rank 0 only; a collective call.

        Every rank calls it; rank 0 writes ``path`` (see
        :meth:`TrainStep.save`), the others write nothing.  A failure on
        rank 0 (e.g. an unwritable directory) is raised on every rank.

        Parameters
        ----------
        path : str or os.PathLike
            The checkpoint file, written by rank 0.
        """
        error = None
        if self.is_root:
            try:
                self.step.save(path)
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                error = e
        flag = np.array([0 if error is None else 1], dtype=np.int64)
        self.comm.Bcast(flag, root=0)
        if flag[0]:
            if error is not None:
                raise _on_all_ranks(error, 1)
            raise _on_all_ranks(RankError(f"rank 0 failed to write the checkpoint {path!r} (see its "
                                          f"message)", 1, self.size), 1)

    def print(self, *args, **kwargs):
        """:func:`print` on rank 0 only.

        Parameters
        ----------
        *args, **kwargs
            :func:`print`'s (``flush=True`` by default).
        """
        if self.is_root:
            kwargs.setdefault("flush", True)
            print(*args, **kwargs)

    def in_sync(self):
        """Whether every rank holds bitwise the same weights and optimizer state as rank 0.

        BatchNorm1d's running statistics are not compared: each rank updates
        its own from its rows (they start as rank 0's).

        A collective call (a broadcast of rank 0's parameters: use it in
        tests and debugging, not every step).

        Returns
        -------
        bool
            The same answer on every rank.
        """
        MPI = self._MPI
        st = self.step
        ok = 1
        hyper = st.hyper.copy()
        hyper[list(RUNTIME_SLOTS)] = 0.0      # this process's BLAS threading, not training state
        for v in [st.param_vector, *st.state_vectors, hyper]:
            ref = v.copy()
            self.comm.Bcast(ref, root=0)
            if ref.view(np.uint8).tobytes() != v.view(np.uint8).tobytes():
                ok = 0
        flag = np.array([ok], dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MIN)
        return bool(flag[0])

    def __repr__(self):
        return f"<fastbp.DistributedStep rank {self.rank} of {self.size}: {self.step!r}>"


def _threads_arg(threads):
    """``threads=`` checked: ``"auto"``, a positive int or None."""
    if isinstance(threads, str):
        if threads != "auto":
            raise ValueError(f"threads must be 'auto', a positive integer or None, got {threads!r}")
        return threads
    if threads is None:
        return None
    try:
        return V.positive_int("threads", threads)
    except TypeError:
        raise TypeError(f"threads must be 'auto', a positive integer or None, got {type(threads).__name__}") from None


def compile(model, loss="softmax_cross_entropy", optimizer=None, batch_size=64, dtype=np.float32, seed=0,
            *, comm, threads="auto", schedule=None, precision="full", clip_grad_norm=None, _device="cpu"):
    """:func:`fastbp.compile` for data-parallel training over ``comm``; a collective call.

    Same parameters as :func:`fastbp.compile` (``schedule`` and ``clip_grad_norm`` included,
    the same on every rank: checked), plus ``comm`` (an mpi4py
    intra-communicator) and ``threads`` (see :class:`DistributedStep`).
    ``batch_size`` is the per-rank batch.

    Returns
    -------
    DistributedStep
    """
    from .optimizers import clip_grad_norm_arg, optimizer_arg
    from .step import TrainStep
    MPI = _mpi()
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator such as MPI.COMM_WORLD, "
                        f"got {type(comm).__name__}")
    error, step = None, None
    try:
        if V.resolve_device(_device) != "cpu":         # (fastbp.compile's device=)
            raise ValueError("comm= (data-parallel training) runs on the CPU; device must be 'cpu'")
        clip = clip_grad_norm_arg(clip_grad_norm)
        step = TrainStep(model, loss, optimizer_arg(optimizer), batch_size, dtype, seed, schedule=schedule,
                         precision=precision)
        step.clip_grad_norm = clip or None      # before the ranks compare their steps
    except Exception as e:  # noqa: BLE001 - re-raised on every rank by agree()
        error = e
    if isinstance(comm, MPI.Intracomm) and comm != MPI.COMM_NULL:
        agree(comm, error, "compile")
    elif error is not None:
        raise error
    return DistributedStep(step, comm, threads=threads)     # (its own checks agreed on too)

