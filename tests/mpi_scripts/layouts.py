"""Launched by tests/test_distributed.py as ``mpiexec -n 2 python layouts.py OUTDIR``.

Issue 17 defect 1: a read-only minibatch on ONE rank raised a numba TypingError on
that rank before it joined the Allreduce, and the other rank waited forever.  Now
every rank's inputs go through the step's one input path (any layout is
converted) before any collective call.  Each scenario gives one rank an odd
layout of the same values and checks that the step trains exactly like a twin
given C-contiguous copies on both ranks.  A rank whose input makes validation
itself fail (an ndarray subclass that raises) still joins the Allreduce: it
raises its own error, the other rank ``RankError``, and nobody hangs.
Results: ``OUTDIR/layouts_rank<r>.json``.
"""
import json
import sys

import numpy as np
from mpi4py import MPI

import fastbp
from fastbp import _executor as ex
from fastbp import distributed as dist


def model(n_in):
    return fastbp.Sequential(fastbp.Linear(n_in, 8), fastbp.Tanh(), fastbp.Linear(8, 3))


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = buf[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    return u


def gaps(a):
    big = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
    big[:, ::2] = a
    return big[:, ::2]


class Evil(np.ndarray):
    """An array whose validation fails with an error fastbp does not expect."""
    @property
    def dtype(self):
        raise RuntimeError("evil array: dtype unavailable")


def state(step):
    hyper = np.delete(step.hyper, list(ex.RUNTIME_SLOTS))
    return step.param_vector.tobytes() + b"".join(v.tobytes() for v in step.state_vectors) + hyper.tobytes()


def main(out):
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    res = {"rank": rank}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 5)).astype(np.float32)
    Y = rng.integers(0, 3, 64)
    X1 = rng.standard_normal((64, 1)).astype(np.float32)
    x, y = X[16 * rank:16 * rank + 16], Y[16 * rank:16 * rank + 16]
    x1 = X1[16 * rank:16 * rank + 16]

    scenarios = {
        # name: (odd rank, n_in, this rank's odd x, odd y)
        "read_only_x_rank1": (1, 5, read_only(x), y),
        "read_only_x_and_y_rank0": (0, 5, read_only(x), read_only(y)),
        "unaligned_x_rank1": (1, 5, unaligned(x), y),
        "gaps_x_rank0": (0, 5, gaps(x), y),
        "fortran_x_rank1": (1, 5, np.asfortranarray(x), y.astype(np.int32)),
        "big_endian_x_rank0": (0, 5, x.astype(">f4"), y.astype(">i8")),
        "column_view_x_rank1": (1, 1, np.ascontiguousarray(x1[:, 0])[:, None], y),
    }
    for name, (odd_rank, n_in, bx, by) in scenarios.items():
        odd = dist.compile(model(n_in), optimizer=fastbp.Adam(1e-2), batch_size=16, comm=comm, threads=None)
        ref = dist.compile(model(n_in), optimizer=fastbp.Adam(1e-2), batch_size=16, comm=comm, threads=None)
        cx = x if n_in == 5 else x1
        r = {}
        try:
            got = odd(bx, by) if rank == odd_rank else odd(cx, y)
            want = ref(cx, y)
            r["same_loss"] = bool(got == want)
            r["same_state"] = state(odd) == state(ref)
            r["in_sync"] = odd.in_sync()
            r["type"] = None
        except Exception as e:  # noqa: BLE001 - recorded for the test
            r["type"] = type(e).__name__
            r["msg"] = str(e)
        res[name] = r

    # fit: every rank passes the whole data set; one rank in an odd layout
    odd = dist.compile(model(5), optimizer=fastbp.SGD(0.1, momentum=0.9), batch_size=8, comm=comm, threads=None)
    ref = dist.compile(model(5), optimizer=fastbp.SGD(0.1, momentum=0.9), batch_size=8, comm=comm, threads=None)
    bX = read_only(np.asfortranarray(X)) if rank == 1 else X
    a = odd.fit(bX, Y, epochs=2, seed=3)
    b = ref.fit(X, Y, epochs=2, seed=3)
    res["fit_read_only_fortran_rank1"] = {"same_losses": a.tobytes() == b.tobytes(),
                                          "same_state": state(odd) == state(ref), "in_sync": odd.in_sync()}

    # validation itself fails on rank 1 with an unexpected error: it must still join the Allreduce
    step = dist.compile(model(5), optimizer=fastbp.Adam(1e-2), batch_size=16, comm=comm, threads=None)
    before = state(step)
    try:
        step(x.view(Evil) if rank == 1 else x, y)
        res["evil_rank1"] = {"type": None}
    except Exception as e:  # noqa: BLE001
        res["evil_rank1"] = {"type": type(e).__name__, "msg": str(e),
                             "all_ranks": getattr(e, "fastbp_all_ranks", False)}
    res["evil_rank1"]["unchanged"] = state(step) == before
    res["evil_rank1"]["in_sync"] = step.in_sync()
    # fit with a bad shuffle flag on rank 0 only: TypeError there, RankError on rank 1, no hang
    try:
        step.fit(X, Y, shuffle="no" if rank == 0 else True)
        res["fit_bad_shuffle_rank0"] = {"type": None}
    except Exception as e:  # noqa: BLE001
        res["fit_bad_shuffle_rank0"] = {"type": type(e).__name__, "msg": str(e),
                                        "all_ranks": getattr(e, "fastbp_all_ranks", False)}
    res["fit_bad_shuffle_rank0"]["unchanged"] = state(step) == before

    with open(f"{out}/layouts_rank{rank}.json", "w") as f:
        json.dump(res, f, indent=1)
    comm.Barrier()
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
