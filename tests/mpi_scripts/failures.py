"""Launched by tests/test_distributed.py as ``mpiexec -n 2 python failures.py OUTDIR``.

Every scenario makes ONE rank fail (bad shape, dtype, label, NaN, data set
size, compile arguments ...) and records, per rank, what was raised, whether
the weights changed and whether the ranks are still in sync; the job must
then go on (a good step, a checkpoint from rank 0 only) and end cleanly.
Results: ``OUTDIR/failures_rank<r>.json``.
"""
import json
import os
import sys

import numpy as np
from mpi4py import MPI

import fastbp
from fastbp import _executor as ex
from fastbp import distributed as dist


def model(hidden=16):
    return fastbp.Sequential(fastbp.Linear(10, hidden), fastbp.ReLU(), fastbp.Linear(hidden, 3))


def outcome(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - recorded for the test
        return {"type": type(e).__name__, "msg": str(e), "all_ranks": getattr(e, "fastbp_all_ranks", False),
                "notes": list(getattr(e, "__notes__", []))}
    return {"type": None}


def main(out):
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    res = {"rank": rank}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 10)).astype(np.float32)
    Y = rng.integers(0, 3, 128)

    step = dist.compile(model(), optimizer=fastbp.Adam(lr=1e-2), batch_size=32, comm=comm, seed=rank)
    res["threads"] = step.threads
    import numba
    res["numba_threads"] = numba.get_num_threads()
    try:
        from threadpoolctl import threadpool_info
        res["blas_threads"] = sorted({d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"})
    except ImportError:
        res["blas_threads"] = None
    x, y = X[32 * rank:32 * rank + 32], Y[32 * rank:32 * rank + 32]
    step(x, y)                                   # one good step first (Adam state non-zero)

    def snapshot():
        # the training state in hyper, not this process's BLAS-threading slots (ex.RUNTIME_SLOTS),
        # which a step may refresh even when it is rejected
        training_hyper = np.delete(step.hyper, list(ex.RUNTIME_SLOTS))
        return step.param_vector.copy(), [v.copy() for v in step.state_vectors], training_hyper

    def unchanged(snap):
        p, s, h = snapshot()
        return bool(p.tobytes() == snap[0].tobytes() and all(a.tobytes() == b.tobytes()
                                                              for a, b in zip(s, snap[1]))
                    and h.tobytes() == snap[2].tobytes())

    bad_x_nan = x.copy()
    bad_x_nan[3, 4] = np.nan
    bad_y = y.copy()
    bad_y[5] = 7
    scenarios = {
        # (failing rank, this rank's x, y)
        "call_bad_shape": (1, x[:, :7].copy(), y),
        "call_bad_dtype": (0, x.astype(np.float64), y),
        "call_too_many_rows": (1, np.concatenate([x, x]), np.concatenate([y, y])),
        "call_bad_label": (0, x, bad_y),         # found inside the native step
        "call_nan_input": (1, bad_x_nan, y),     # non-finite loss inside the native step
    }
    for name, (bad_rank, bx, by) in scenarios.items():
        snap = snapshot()
        args = (bx, by) if rank == bad_rank else (x, y)
        r = outcome(lambda: step(*args))
        r["unchanged"] = unchanged(snap)
        r["in_sync"] = step.in_sync()
        res[name] = r

    # fit: the ranks pass data sets of different sizes
    snap = snapshot()
    r = outcome(lambda: step.fit(X if rank == 0 else X[:100], Y if rank == 0 else Y[:100], seed=1))
    r["unchanged"] = unchanged(snap)
    res["fit_different_n"] = r
    # fit: labels out of range on rank 1 only (checked before any step)
    Yb = Y.copy()
    if rank == 1:
        Yb[17] = -1
    snap = snapshot()
    r = outcome(lambda: step.fit(X, Yb, seed=1))
    r["unchanged"] = unchanged(snap)
    res["fit_bad_label_rank1"] = r
    # fit: rank 1's copy of the data is all NaN -> its first step fails in the native code
    Xn = X.copy()
    if rank == 1:
        Xn[:] = np.nan
    snap = snapshot()
    r = outcome(lambda: step.fit(Xn, Y, seed=1))
    r["unchanged"] = unchanged(snap)
    r["in_sync"] = step.in_sync()
    res["fit_nan_rank1"] = r

    # a different model on rank 1: rejected on every rank at construction
    res["mismatched_model"] = outcome(lambda: dist.compile(model(16 if rank == 0 else 17), batch_size=32,
                                                           comm=comm))
    # compile arguments rejected on rank 1 only
    res["compile_error_rank1"] = outcome(lambda: dist.compile(model(), batch_size=32 if rank == 0 else 0,
                                                              comm=comm))

    # fastbp.compile's own arguments, and DistributedStep's, rejected on rank 1 only (they were
    # checked before the ranks agreed: rank 0 waited for ever); every rank rejecting them
    res["compile_clip_rank1"] = outcome(lambda: fastbp.compile(
        model(), batch_size=32, comm=comm, clip_grad_norm=-1.0 if rank == 1 else None))
    res["compile_device_rank1"] = outcome(lambda: fastbp.compile(
        model(), batch_size=32, comm=comm, device="cuda" if rank == 1 else "cpu"))
    res["wrap_threads_rank1"] = outcome(lambda: dist.DistributedStep(step.step, comm, threads=0 if rank else "auto"))
    res["wrap_not_a_step_rank1"] = outcome(lambda: dist.DistributedStep(step.step if rank == 0 else None, comm))
    res["compile_error_all"] = outcome(lambda: dist.compile(model(), batch_size=0, comm=comm))
    # threads= is each process's own: "auto" on one rank, None on the other (a collective only
    # "auto" made: a hang)
    res["threads_differ"] = outcome(lambda: dist.DistributedStep(step.step, comm, threads="auto" if rank == 0 else None))

    # a ReduceLROnPlateau another step holds on rank 1 only (attached after the ranks agreed: a hang)
    from fastbp import schedules as S
    plateau = S.ReduceLROnPlateau()
    holder = fastbp.compile(model(), batch_size=32, schedule=plateau) if rank == 1 else None
    snap = snapshot()
    r = outcome(lambda: step.fit(X, Y, schedule=plateau, seed=1))
    r["unchanged"] = unchanged(snap)
    res["fit_plateau_held_rank1"] = r
    del holder

    # BatchNorm: a step another rank rejects leaves the running statistics as they were (the local
    # backward had updated them); a schedule given again on one rank, new on the other, differs
    bn = dist.compile(fastbp.Sequential(fastbp.Linear(10, 8), fastbp.BatchNorm1d(8), fastbp.ReLU(),
                                        fastbp.Linear(8, 3)), batch_size=32, comm=comm, seed=0,
                      schedule=S.StepLR(1, 0.5))
    bn(x, y)
    running = bn.buffer_vector.copy()
    r = outcome(lambda: bn(x, bad_y if rank == 1 else y))
    r["running_unchanged"] = bool(bn.buffer_vector.tobytes() == running.tobytes())
    res["bn_rejected_rank1"] = r
    # a gradient that is not finite on rank 1 only (its loss is): the update fails after the
    # Allreduce, on every rank, and BatchNorm's running statistics stay as they were there too
    def huge():
        return fastbp.Sequential(fastbp.Linear(2, 4), fastbp.BatchNorm1d(4), fastbp.Linear(4, 1))
    hx = np.ones((8, 2), np.float32)
    hx[:, 1] = np.arange(8)
    hx[:, 0] = np.where(np.arange(8) % 2, 3e38, -3e38)      # feature 0 ignored: W[0, :] = 0
    hb = dist.compile(huge(), loss="mse", optimizer=fastbp.SGD(lr=1e-45), batch_size=8, comm=comm, seed=0)
    hb.params["0.W"][0, :] = 0.0
    running, params = hb.buffer_vector.copy(), hb.param_vector.copy()
    r = outcome(lambda: hb(hx, np.full((8, 1), 1e12 if rank == 1 else 1e7, np.float32)))
    r["running_unchanged"] = bool(hb.buffer_vector.tobytes() == running.tobytes())
    r["unchanged"] = bool(hb.param_vector.tobytes() == params.tobytes())
    res["grad_inf_after_allreduce_rank1"] = r
    # ... while means that are finite on every rank stay finite in the float32 reduction (it held
    # loss * rows and gradient * rows: inf, where one process with all the rows trains)
    one = fastbp.compile(huge(), loss="mse", optimizer=fastbp.SGD(lr=1e-45), batch_size=16, seed=0)
    one.params["0.W"][0, :] = 0.0
    big_y = np.full((8, 1), 1e7, np.float32)
    r = {"one": float(one(np.vstack([hx, hx]), np.vstack([big_y, big_y])))}
    r.update(outcome(lambda: r.__setitem__("dp", float(hb(hx, big_y)))))
    r["params_apart"] = float(np.max(np.abs(hb.param_vector - one.param_vector)) / np.max(np.abs(one.param_vector)))
    tx = np.random.default_rng(5).standard_normal((16, 2)).astype(np.float32)
    ty = np.full((16, 1), 5.5e18, np.float32)
    big = [fastbp.compile(fastbp.Sequential(fastbp.Linear(2, 3), fastbp.ReLU(), fastbp.Linear(3, 1)),
                          loss="mse", optimizer=fastbp.SGD(lr=1e-45), batch_size=16, seed=0)]
    big.append(dist.compile(fastbp.Sequential(fastbp.Linear(2, 3), fastbp.ReLU(), fastbp.Linear(3, 1)),
                            loss="mse", optimizer=fastbp.SGD(lr=1e-45), batch_size=8, comm=comm, seed=0))
    r["huge_loss_one"] = float(big[0](tx, ty))
    r["huge_loss_dp"] = float(big[1](tx[8 * rank:8 * rank + 8], ty[8 * rank:8 * rank + 8]))
    res["finite_means_stay_finite"] = r

    bn.fit(X, Y, seed=1)
    r = outcome(lambda: bn.fit(X, Y, seed=1, schedule=bn.schedule if rank == 0 else S.StepLR(1, 0.5)))
    r["in_sync"] = bn.in_sync()
    res["schedule_position_differs"] = r

    # fastbp.compile(..., comm=) once step.py delegates to fastbp.distributed
    import inspect
    if "comm" in inspect.signature(fastbp.compile).parameters:
        s2 = fastbp.compile(model(), batch_size=32, comm=comm, seed=rank)
        s2(x, y)
        res["fastbp_compile_comm"] = {"type": type(s2).__name__, "in_sync": s2.in_sync()}
    else:
        res["fastbp_compile_comm"] = None

    # not a communicator
    res["bad_comm"] = outcome(lambda: dist.DistributedStep(step.step, "world"))

    # training goes on after all of that
    before = step.n_steps
    losses = step.fit(X, Y, epochs=2, seed=4)
    res["after"] = {"n_losses": len(losses), "steps": step.n_steps - before, "in_sync": step.in_sync(),
                    "finite": bool(np.all(np.isfinite(losses))), "loss_first": float(losses[0]),
                    "loss_last": float(losses[-1])}

    # checkpoints: only rank 0 calls TrainStep.save
    real_save = step.step.save

    def recording_save(path):
        open(os.path.join(out, f"save_called_rank{rank}"), "w").close()
        real_save(path)

    step.step.save = recording_save
    res["n_steps_at_save"] = step.n_steps
    np.save(os.path.join(out, f"params_at_save_rank{rank}.npy"), step.param_vector)
    res["save"] = outcome(lambda: step.save(os.path.join(out, "model.fbp")))
    res["save_bad_dir"] = outcome(lambda: step.save(os.path.join(out, "no", "such", "dir", "m.fbp")))

    with open(os.path.join(out, f"failures_rank{rank}.json"), "w") as f:
        json.dump(res, f, indent=1)
    comm.Barrier()
    print(f"rank {rank} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
