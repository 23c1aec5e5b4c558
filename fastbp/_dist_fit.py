"""The data-parallel ``fit`` of :class:`fastbp.distributed.DistributedStep` (a mixin).

Whole epochs over the ranks: every rank holds the whole data set, one
permutation from rank 0's seed is cut into global minibatches and each of
those into one equal share per rank; one collective agrees on the arguments
before any step, and each step is the data-parallel step of
:class:`fastbp.distributed.DistributedStep` (local gradients, one Allreduce,
the update).  Split from :mod:`fastbp.distributed` to keep modules small; it
uses the step's ``_at_row``, ``_local_gradients`` and ``_reduce_and_update``.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from . import _validate as V
from . import training as _training
from ._isa import H_LR
from ._mpi import RankError, _epoch_shard, _note, _on_all_ranks, agree
from .schedules import ReduceLROnPlateau, _claim_plateau, schedule_arg

__all__ = ["DataParallelFit"]


def settings_key(step, schedule, validation=False, early_stopping=None):
    """A 56-bit digest of what makes the ranks' updates differ beyond the arguments of
    ``fit``: the schedule in effect (``schedule``, else the step's) and its position, the gradient
    clipping, the learning rates (base and next), whether validation data is given
    (its evaluation is collective) and the early stopping (it decides the stop and the
    weights kept).  Callbacks may differ (a rank's logging): their stop and their
    errors are agreed each epoch.  Equal on ranks that agree."""
    sched = step.schedule if schedule is None else schedule
    # where the schedule stands: a new one counts from 0, the step's own one goes on
    at = [0, 0] if schedule is not None else [step.epochs_done - step._sched_origin[0],
                                              step.n_steps - step._sched_origin[1]]
    es = None if early_stopping is None else [early_stopping.patience, early_stopping.min_delta,
                                              early_stopping.restore_best_weights, early_stopping.monitor,
                                              early_stopping.mode]
    text = json.dumps([None if sched is None else sched.spec(), at, step.clip_grad_norm, float(step.optimizer.lr),
                       step.lr, bool(validation), es], sort_keys=True, default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=7).digest(), "little")


class DataParallelFit:
    """``fit`` for :class:`fastbp.distributed.DistributedStep`: whole epochs trained
    data-parallel (see :meth:`fit`)."""

    def fit(self, X, Y, epochs=1, shuffle=True, seed=None, validation_data=None, early_stopping=None,
            callbacks=(), verbose=False, schedule=None):
        """Train whole epochs data-parallel; a collective call.

        The signature and the result of :meth:`fastbp.TrainStep.fit`.  Every
        rank passes the *whole* data set (the same ``X`` and ``Y``).
        Each epoch, one permutation -- the same on every rank, from rank 0's
        seed -- is cut into global minibatches of ``size * batch_size`` rows
        and each of those into ``size`` equal parts, one per rank: each rank
        trains on a disjoint, equally sized share of the epoch.  With the
        same seed, the global minibatches are exactly those of
        ``TrainStep.fit`` with batch ``size * batch_size`` on one process.
        The last ``n % size`` rows of each epoch's permutation are left out
        (different ones each epoch when shuffling).

        Per step: this rank's rows are gathered into staging buffers, then
        forward, loss and backward run in one native call, the gradients are
        summed over ranks (one Allreduce) and the update runs in a second
        native call.

        Parameters
        ----------
        X : ndarray, shape (n, in_features), dtype ``dtype`` (any memory layout)
            ``n >= size``; the same on every rank.
        Y : ndarray
            Targets for all ``n`` rows.
        epochs : int, default 1
        shuffle : bool, default True
        seed : int, optional
            Seed of the shuffling; rank 0's value is used on every rank.
            Default: drawn from rank 0's step generator.
        validation_data : tuple (X_val, y_val), optional
            Evaluated by rank 0 after every epoch (the metrics are broadcast).
        early_stopping : fastbp.training.EarlyStopping or int, optional
        callbacks : sequence, default ()
            Called on every rank; the fit stops when any rank's callback asks.
        verbose : bool, default False
            Rank 0 shows the progress of the epochs.
        schedule : fastbp.schedules schedule, optional
            As for :meth:`fastbp.TrainStep.fit` (kept by the wrapped step).

        Returns
        -------
        fastbp.training.History
            The global loss of every step (the same on every rank) with the
            per-epoch metrics.

        Raises
        ------
        TypeError, ValueError
            Bad arguments on any rank, or ranks passing data sets of
            different sizes, different ``epochs``/``shuffle``, or holding
            different settings (schedule, ``clip_grad_norm``, ``lr``): raised
            on every rank before any step.
        FloatingPointError, ValueError, RankError
            A step failed on some rank; the steps before it were applied on
            every rank, that step and the rest were not.
        """
        st = self.step
        MPI = self._MPI
        error = None
        n, ep, shuf, sd, key = 0, 0, 0, 0, 0
        rng_state = st.rng.bit_generator.state
        try:
            # the same validation and conversion as TrainStep.fit; raised after the collective
            X, n = st.check_features(X, "X")
            ep = V.positive_int("epochs", epochs)
            shuf = 1 if V.boolean("shuffle", shuffle) else 0
            verbose = V.boolean("verbose", verbose)
            yi, yf = st.check_targets(Y, n, name="Y")
            seed = V.seed(seed)
            if seed is not None and seed > V.INT64_MAX:
                raise ValueError(f"seed must be at most {V.INT64_MAX} for data-parallel fit, got {seed}")
            val = st._validation_arg(validation_data)
            es = _training.early_stopping_arg(early_stopping, val is not None)
            cbs = _training.callbacks_arg(callbacks)
            schedule = schedule_arg(schedule)
            if schedule is st.schedule:
                schedule = None         # the step's own schedule object again: it continues
            elif isinstance(schedule, ReduceLROnPlateau):
                _claim_plateau(schedule, st, check_only=True)      # (attached once agreed on)
            starts = _epoch_shard(np.arange(n, dtype=np.int64), self.size, self.rank, st.batch_size)[1]
            per_epoch = len(starts) - 1
            if per_epoch > 0:       # this rank's share of the smallest global minibatch (BatchNorm: 2 rows)
                st.check_train_rows(int(np.diff(starts).min()), " (this rank's share of a minibatch of fit)")
            e0, s0 = (st.epochs_done, st.n_steps) if schedule is not None else st._sched_origin
            _training.check_schedule_span(st.schedule if schedule is None else schedule, float(st.optimizer.lr),
                                          st.epochs_done - e0, st.n_steps - s0, ep, per_epoch, val is not None)
            _training.check_accuracy_monitors(st.loss, es, st.schedule if schedule is None else schedule)
            key = settings_key(st, schedule, val is not None, es)
            sd = int(st.rng.integers(2**62)) if seed is None else seed
        except Exception as e:  # noqa: BLE001 - re-raised on every rank after the collective
            error = e
        # one collective agrees on errors, sizes, epochs, shuffle, settings and rank 0's seed (MAX)
        failed = 0 if error is None else 1
        info = np.array([failed, n, -n, ep, -ep, shuf, -shuf, sd if self.is_root else -1, -failed, key, -key],
                        dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, info, op=MPI.MAX)
        if (info[0] or info[1] != -info[2] or info[3] != -info[4] or info[5] != -info[6] or n < self.size
                or info[9] != -info[10]):
            st.rng.bit_generator.state = rng_state      # a rejected fit draws nothing
        if info[0]:
            n_failed = self.size if info[8] == -1 else None      # every rank / some ranks
            if error is not None:
                _note(error, self.comm, n_failed)
                raise _on_all_ranks(error, n_failed)
            raise _on_all_ranks(RankError("fit: another rank rejected its arguments (see its "
                                          "message); nothing was trained", 1, self.size), n_failed)
        for name, a, b in (("X rows", info[1], -info[2]), ("epochs", info[3], -info[4]),
                           ("shuffle", info[5], -info[6])):
            if a != b:
                raise _on_all_ranks(ValueError(
                    f"fit: the ranks passed different {name} ({b} .. {a}): every rank must pass the "
                    f"whole data set and the same epochs and shuffle"), self.size)
        if info[9] != -info[10]:
            raise _on_all_ranks(ValueError(
                "fit: the ranks' training settings differ (schedule or where it stands, clip_grad_norm, lr, validation_data "
                "given or not, or early_stopping): set them alike on every rank; nothing was trained"), self.size)
        if n < self.size:
            raise _on_all_ranks(ValueError(f"fit: X has {n} rows, fewer than the {self.size} ranks"),
                                self.size)
        seed = int(info[7])
        if schedule is not None:
            st._attach_schedule(schedule)
        try:
            return self._fit_epochs(X, yi, yf, n, ep, bool(shuf), seed, verbose, val, es, cbs)
        except BaseException:
            st.rng.bit_generator.state = rng_state      # as TrainStep.fit: a failed fit consumes no seed
            raise

    def _fit_epochs(self, X, yi, yf, n, ep, shuffle, seed, verbose, val, es, cbs):
        """The steps of :meth:`fit` once every rank agreed on its arguments."""
        st = self.step
        MPI = self._MPI
        rng = np.random.default_rng(seed)
        def orders():
            for _ in range(ep):
                yield rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)

        def train_epoch(e, perm, lrs, out):
            rows, starts = _epoch_shard(perm, self.size, self.rank, st.batch_size)
            per_epoch = len(starts) - 1
            for s in range(per_epoch):
                r = rows[starts[s]:starts[s + 1]]
                where = f" at step {e * per_epoch + s} of fit"
                nb = len(r)
                with self._at_row(self.rank * nb):     # equal parts: this rank's first row
                    if len(lrs):
                        st.hyper[H_LR] = lrs[s]
                    xs, ysi, ysf = st.gather(r, X, yi, yf, self._xs, self._yi, self._yf)
                    raise_local = self._local_gradients(xs, ysi, ysf, nb, where)
                    out[s] = self._reduce_and_update(raise_local, where)

        def validate():
            m = np.full(2, np.nan)
            if self.is_root:
                vl, va = st._evaluate(*val)
                m[:] = (vl, np.nan if va is None else va)
            self.comm.Bcast(m, root=0)
            return float(m[0]), (None if np.isnan(m[1]) else float(m[1]))

        def agree_stop(stop, error):
            # a callback that raised on some rank raises on every rank (the others would wait
            # in the next collective), after this epoch's steps, applied on every rank alike
            agree(self.comm, error, "fit: a callback raised on another rank after this epoch's steps "
                                    "(applied on every rank)")
            flag = np.array([1 if stop else 0], dtype=np.int64)
            self.comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MAX)
            return bool(flag[0])

        _, starts0 = _epoch_shard(np.arange(n, dtype=np.int64), self.size, self.rank, st.batch_size)
        return _training.drive(epochs=ep, per_epoch=len(starts0) - 1, rows_per_step=np.diff(starts0),
                               orders=orders(), train_epoch=train_epoch, step=st,
                               validate=None if val is None else validate,
                               early_stopping=es, callbacks=cbs, verbose=verbose and self.is_root,
                               get_weights=st._weights_copy, set_weights=st._set_weights, agree=agree_stop,
                               loss_name=st.loss)
