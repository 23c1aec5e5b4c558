"""Launched by tests/test_distributed_settings.py as ``mpiexec -n 2 python step_settings.py OUTDIR``.

The settings of a data-parallel step and its global gradients:

* ``clip_grad_norm`` set on the DistributedStep reaches the wrapped step and
  clips (the weights after a step are recorded for the test to compare with
  one process);
* ranks compiling with a different ``clip_grad_norm``, ``schedule`` or
  ``precision`` (where bf16 is available) are refused on every rank, as a
  different model is;
* a setting changed on one rank only (``validation_data`` or
  ``early_stopping`` given on one rank only included) is refused by ``fit`` on
  every rank before any step; a callback raising on one rank raises on every
  rank after that epoch;
* ``loss_and_grads`` returns the global loss and leaves the global mean
  gradients in ``grads`` (ranks passing 3 and 4 rows), without an update;
  a bad label on one rank raises on every rank.

Results: ``OUTDIR/settings_rank<r>.json``.
"""
import json
import os
import sys

import numpy as np

import fastbp
from fastbp import distributed as dist
from fastbp import schedules as S


def model():
    return fastbp.Sequential(fastbp.Linear(8, 6), fastbp.Tanh(), fastbp.Linear(6, 3))


def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((8, 8)) * 10).astype(np.float32), rng.integers(0, 3, 8)


def outcome(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - recorded for the test
        return {"type": type(e).__name__, "msg": str(e), "all_ranks": getattr(e, "fastbp_all_ranks", False)}
    return {"type": None}


def main(out):
    from mpi4py import MPI       # here: the tests import model() and data() without MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    X, y = data()
    mine = slice(4 * rank, 4 * rank + 4)
    res = {"rank": rank}

    # clip_grad_norm set on the data-parallel step after compile
    d = fastbp.compile(model(), optimizer="sgd", batch_size=4, seed=1, comm=comm)
    d.clip_grad_norm = 0.01
    res["clip_set"] = {"inner": d.step.clip_grad_norm, "outer": d.clip_grad_norm,
                       "on_wrapper": "clip_grad_norm" in vars(d)}
    d(X[mine], y[mine])
    res["clip_params"] = d.step.param_vector.tolist()
    res["clip_negative"] = outcome(lambda: setattr(d, "clip_grad_norm", -1))
    res["clip_str"] = outcome(lambda: setattr(d, "clip_grad_norm", "0.1"))
    sched = S.StepLR(step_size=1, gamma=0.1)
    d.schedule = sched
    d.epochs_done = 0
    res["schedule_set"] = {"inner": d.step.schedule is sched, "on_wrapper": "schedule" in vars(d),
                           "epochs_on_wrapper": "epochs_done" in vars(d)}
    res["schedule_bad"] = outcome(lambda: setattr(d, "schedule", 0.5))

    # compile arguments that differ between the ranks
    res["compile_clip"] = outcome(lambda: fastbp.compile(model(), optimizer="sgd", batch_size=4, comm=comm,
                                                         clip_grad_norm=0.01 if rank == 1 else None))
    res["compile_schedule"] = outcome(lambda: dist.compile(
        model(), optimizer="sgd", batch_size=4, comm=comm,
        schedule=S.StepLR(step_size=1, gamma=0.1) if rank == 1 else None))
    if fastbp._bf16.available()[0]:     # the bf16 extra on a CPU with bf16 products
        res["compile_precision"] = outcome(lambda: fastbp.compile(model(), optimizer="sgd", batch_size=4, comm=comm,
                                                                  precision="bf16" if rank == 1 else "full"))
    res["compile_same"] = outcome(lambda: fastbp.compile(model(), optimizer="sgd", batch_size=4, comm=comm,
                                                         clip_grad_norm=0.5, schedule=S.StepLR(1, 0.5)))

    # a setting changed on one rank only: fit refuses before any step
    f = fastbp.compile(model(), optimizer="sgd", batch_size=4, seed=1, comm=comm)
    if rank == 0:
        f.clip_grad_norm = 0.01
    before = f.step.param_vector.tobytes()
    res["fit_clip_one_rank"] = outcome(lambda: f.fit(X, y, epochs=1, seed=0))
    res["fit_clip_one_rank"]["unchanged"] = f.step.param_vector.tobytes() == before

    # validation_data or early_stopping on one rank only: refused on every rank before any step
    # (rank 1's missing validation hung in the collective evaluation; an early stopping on
    # rank 0 only restored its best weights there alone)
    v = fastbp.compile(model(), optimizer="sgd", batch_size=4, seed=1, comm=comm)
    before = v.step.param_vector.tobytes()
    res["fit_val_one_rank"] = outcome(lambda: v.fit(X, y, epochs=2, seed=0,
                                                    validation_data=(X, y) if rank == 0 else None))
    res["fit_es_one_rank"] = outcome(lambda: v.fit(
        X, y, epochs=2, seed=0, validation_data=(X, y),
        early_stopping=fastbp.EarlyStopping(patience=0) if rank == 0 else None))
    res["fit_one_rank_unchanged"] = v.step.param_vector.tobytes() == before and v.n_steps == 0

    # a callback that raises on one rank: raised on every rank after that epoch, no hang
    def failing(e, logs):
        if rank == 1 and e == 1:
            raise RuntimeError("callback failed here")
    res["fit_callback_raises"] = outcome(lambda: v.fit(X, y, epochs=3, seed=0, callbacks=[failing]))
    res["fit_callback_steps"] = v.n_steps
    res["fit_callback_in_sync"] = v.in_sync()

    # loss_and_grads: the global result over 3 + 4 rows, no update
    g = fastbp.compile(model(), optimizer="sgd", batch_size=4, seed=1, comm=comm)
    rows = slice(0, 3) if rank == 0 else slice(3, 7)
    before, n_steps = g.step.param_vector.tobytes(), g.n_steps
    res["lag_loss"] = g.loss_and_grads(X[rows], y[rows])
    res["lag_grads"] = {k: v.tolist() for k, v in g.grads.items()}
    res["lag_unchanged"] = g.step.param_vector.tobytes() == before and g.n_steps == n_steps
    bad = y[rows].copy()
    if rank == 1:
        bad[0] = 7
    res["lag_bad_label"] = outcome(lambda: g.loss_and_grads(X[rows], bad))
    res["lag_in_sync"] = g.in_sync()

    with open(os.path.join(out, f"settings_rank{rank}.json"), "w") as fh:
        json.dump(res, fh)
    comm.Barrier()
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
