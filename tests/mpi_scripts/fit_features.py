"""Launched by tests/test_distributed.py as ``mpiexec -n 2 python fit_features.py OUTDIR``.

DistributedStep.fit with the signature of TrainStep.fit: a learning-rate schedule (the
global minibatches and rates of one process with the global batch), validation data,
early stopping, and a callback that asks to stop on ONE rank only (every rank stops).
Results: ``OUTDIR/fit_features_rank<r>.json``.
"""
import json
import os
import sys

import numpy as np
from mpi4py import MPI

import fastbp
from fastbp import distributed as dist
from fastbp import schedules as S


def model():
    return fastbp.Sequential(fastbp.Linear(6, 8), fastbp.Tanh(), fastbp.Linear(8, 3))


def main(out):
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6))
    Y = rng.integers(0, 3, 64)
    res = {"rank": rank}
    sched = S.CosineAnnealingLR(T_max=3, warmup=1)
    d = dist.compile(model(), optimizer=fastbp.SGD(lr=0.2, momentum=0.9), batch_size=4, dtype=np.float64,
                     seed=1, comm=comm, threads=None, schedule=sched)
    h = d.fit(X, Y, epochs=4, seed=7, validation_data=(X[:16], Y[:16]))
    res["losses"] = np.asarray(h).tolist()
    res["history"] = h.history
    res["params"] = d.step.param_vector.tolist()
    res["in_sync"] = d.in_sync()
    # a callback stopping on rank 1 only, at epoch 1: both ranks stop there
    h2 = d.fit(X, Y, epochs=5, callbacks=[lambda e, logs: rank == 1 and e == 1],
               early_stopping=fastbp.training.EarlyStopping(patience=10, monitor="loss"))
    res["stopped"] = h2.stopped_epoch
    res["epochs_run"] = len(h2.loss)
    res["in_sync_after_stop"] = d.in_sync()
    # BatchNorm1d: rank 0's running statistics are broadcast with its weights; a fit whose
    # last global minibatch gives each rank 1 row (66 rows, 2 x 8) is refused before any step
    bn = fastbp.Sequential(fastbp.Linear(6, 8), fastbp.BatchNorm1d(8), fastbp.ReLU(), fastbp.Linear(8, 3))
    st = fastbp.compile(bn, optimizer=fastbp.SGD(lr=0.1), batch_size=8, dtype=np.float64, seed=2)
    if rank == 0:
        st.fit(X * 3 + 1, Y, epochs=1, seed=3)      # only rank 0 has trained: its statistics moved
    d = dist.DistributedStep(st, comm, threads=None)
    res["bn_buffers"] = d.step.buffer_vector.tolist()
    res["bn_predict"] = d.predict(X[:8]).tolist()
    before = (d.step.param_vector.copy(), d.step.buffer_vector.copy(), d.step.n_steps)
    X66, Y66 = np.r_[X, X[:2]], np.r_[Y, Y[:2]]
    try:
        d.fit(X66, Y66, epochs=1, seed=4)
        res["bn_one_row_share"] = "trained"
    except ValueError as e:
        res["bn_one_row_share"] = str(e)
    res["bn_unchanged"] = bool(np.array_equal(before[0], d.step.param_vector)
                               and np.array_equal(before[1], d.step.buffer_vector) and before[2] == d.step.n_steps)
    with open(os.path.join(out, f"fit_features_rank{rank}.json"), "w") as f:
        json.dump(res, f)
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
