"""Data-parallel training over MPI (issue 7): ``fastbp.distributed``.

The MPI tests launch ``mpiexec -n 2`` on the scripts in ``tests/mpi_scripts``
as a subprocess with a timeout, so a deadlock fails the test instead of
hanging the run; they are skipped, with the reason, when mpi4py or an
``mpiexec`` that can start 2 ranks is not available
(``pip install -e '.[distributed]'``).  Set ``FASTBP_MPIEXEC`` to use
another launcher.
"""
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import _executor as ex
from fastbp import _isa
from fastbp import distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "mpi_scripts")
sys.path.insert(0, SCRIPTS)
from cases import CASES, make_data, make_step  # noqa: E402

#: A run of the MPI scripts takes a few seconds once numba's cache is warm;
#: this only bounds a deadlocked (or pathologically slow) job.
TIMEOUT = float(os.environ.get("FASTBP_MPI_TEST_TIMEOUT", 240))


# ------------------------------------------------------------------ no MPI needed
@pytest.mark.parametrize("n,size,batch", [(640, 2, 32), (650, 2, 32), (651, 2, 32), (1000, 3, 7),
                                          (5, 4, 3), (64, 2, 32), (10, 1, 4)])
def test_epoch_shards_are_disjoint_equal_and_the_single_process_batches(n, size, batch):
    perm = np.random.default_rng(n).permutation(n)
    shards = [dist._epoch_shard(perm, size, r, batch) for r in range(size)]
    n_use = (n // size) * size
    rows = [r for r, _ in shards]
    assert all(len(r) == n_use // size for r in rows)                      # equal shares
    allrows = np.concatenate(rows)
    assert len(np.unique(allrows)) == n_use                                # disjoint
    assert set(allrows) == set(perm[:n_use])                               # the epoch's first n_use rows
    starts = shards[0][1]
    assert all(np.array_equal(s, starts) for _, s in shards)               # same steps everywhere
    assert np.all(np.diff(starts) >= 1) and np.all(np.diff(starts) <= batch)
    # global minibatch k = the single-process minibatch k with batch size*batch
    g = size * batch
    for k in range(len(starts) - 1):
        together = np.concatenate([r[starts[k]:starts[k + 1]] for r in rows])
        assert np.array_equal(together, perm[k * g:min((k + 1) * g, n_use)])


def test_world_size_and_rank_from_launcher_environment():
    assert dist.mpi_world_size({}) == 1
    assert dist.mpi_world_size({"PMI_SIZE": "4", "PMI_RANK": "2"}) == 4
    assert dist.mpi_world_rank({"PMI_SIZE": "4", "PMI_RANK": "2"}) == 2
    assert dist.mpi_world_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert dist.mpi_world_rank({"OMPI_COMM_WORLD_RANK": "1"}) == 1
    assert dist.mpi_world_size({"PMI_SIZE": "1"}) == 1
    # SLURM_NTASKS alone (a batch script, not a task started by srun) is not a launch
    assert dist.mpi_world_size({"SLURM_NTASKS": "8"}) == 1
    assert dist.mpi_world_size({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) == 8
    assert dist.mpi_world_rank({}) == 0


def test_everything_else_works_without_mpi4py_and_comm_says_how_to_install(tmp_path):
    """mpi4py hidden (sys.modules entry None): fastbp trains; ``comm=`` is a clear ImportError."""
    code = r"""
import sys
sys.modules["mpi4py"] = None
import numpy as np, inspect, fastbp
from fastbp import distributed as dist
m = fastbp.Sequential(fastbp.Linear(4, 8), fastbp.ReLU(), fastbp.Linear(8, 3))
step = fastbp.compile(m, batch_size=4)
loss = step(np.ones((4, 4), np.float32), np.array([0, 1, 2, 0]))
assert np.isfinite(loss)
msgs = []
try:
    dist.compile(m, batch_size=4, comm=object())
except ImportError as e:
    msgs.append(str(e))
if "comm" in inspect.signature(fastbp.compile).parameters:
    try:
        fastbp.compile(m, batch_size=4, comm=object())
    except ImportError as e:
        msgs.append(str(e))
    else:
        msgs.append("no error")
assert dist.launched_comm() is None      # not started by mpiexec: no MPI needed
print("\n".join(msgs))
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert lines, "no ImportError raised for comm="
    for ln in lines:
        assert "mpi4py" in ln and "pip install -e '.[distributed]'" in ln, ln


# ------------------------------------------------------------------ MPI launcher
def _mpiexec():
    env = os.environ.get("FASTBP_MPIEXEC")
    if env:
        return env.split()
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(local):
        return [local]
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    return [found] if found else None


def _launch(cmd, timeout=TIMEOUT, cwd=None):
    """Run ``cmd`` in its own process group; on timeout kill the group and fail."""
    env = dict(os.environ)
    for k in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"):   # not nested in a job
        env.pop(k, None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout:.0f} s (deadlock?)\n"
                    f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def mpirun():
    """A function running ``mpiexec -n 2 <args>``; skips if MPI cannot start 2 ranks here."""
    try:
        import importlib.util
        if importlib.util.find_spec("mpi4py") is None:
            pytest.skip("mpi4py is not installed (pip install -e '.[distributed]')")
    except ValueError:  # pragma: no cover
        pytest.skip("mpi4py is not importable")
    launcher = _mpiexec()
    if launcher is None:
        pytest.skip("no mpiexec found (pip install mpich, or set FASTBP_MPIEXEC)")
    extra = []
    try:
        version = subprocess.run(launcher + ["--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"{launcher[0]} --version failed: {e}")
    if "Open MPI" in version or "OpenRTE" in version:
        extra = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])

    def run(*args, timeout=TIMEOUT):
        return _launch(launcher + extra + ["-n", "2"] + list(args), timeout=timeout)

    probe = run(sys.executable, "-c", "from mpi4py import MPI; c = MPI.COMM_WORLD; "
                "print(f'probe {c.Get_rank()} {c.Get_size()}')", timeout=60)
    if probe.returncode != 0 or probe.stdout.count("probe") != 2 or " 2\n" not in probe.stdout:
        pytest.skip(f"{launcher[0]} cannot start 2 MPI ranks here (exit {probe.returncode}): "
                    f"{(probe.stderr or probe.stdout)[-500:]}")
    # compile (or load) the native step once here, so the 2 ranks only load numba's cache
    for dtype in (np.float32, np.float64):
        s = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), batch_size=2, dtype=dtype)
        s.loss_and_grads(np.ones((2, 3), dtype), np.array([0, 1]))
        p = s.plan
        ex.run_update(s._ctx, p.sec, s._no_yf)
    return run


def _assert_clean_end(res, what):
    assert res.returncode == 0, f"{what} failed (exit {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert res.stdout.count(" done") == 2, res.stdout
    assert "BAD TERMINATION" not in res.stdout + res.stderr


@pytest.fixture(scope="module")
def equivalence_run(mpirun, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi_equivalence")
    res = mpirun(sys.executable, os.path.join(SCRIPTS, "equivalence.py"), str(out))
    _assert_clean_end(res, "equivalence.py")
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_train_like_one_process_with_the_global_batch(equivalence_run, name):
    """2 ranks x batch b == 1 process x batch 2b after 20+ steps; ranks bitwise identical."""
    case = CASES[name]
    X, Y = make_data(case)
    ref = make_step(case, case["global_batch"], seed=case["seed"])
    if case["mode"] == "fit":
        ref_losses = ref.fit(X, Y, epochs=case["epochs"], seed=case["shuffle_seed"])
    else:
        g = sum(case["rows"])
        ref_losses = np.array([ref(X[s * g:(s + 1) * g], Y[s * g:(s + 1) * g]) for s in range(case["steps"])])
    assert ref.n_steps >= 20
    r0 = np.load(equivalence_run / f"{name}_rank0.npz")
    r1 = np.load(equivalence_run / f"{name}_rank1.npz")
    tol = dict(rtol=1e-4, atol=1e-6) if case["dtype"] == np.float32 else dict(rtol=1e-10, atol=1e-12)
    assert int(r0["n_steps"]) == ref.n_steps == int(r1["n_steps"])
    np.testing.assert_allclose(r0["losses"], ref_losses, **tol)            # the global loss
    for k, v in ref.params.items():
        np.testing.assert_allclose(r0["p_" + k], v, **tol, err_msg=k)
        assert r0["p_" + k].tobytes() == r1["p_" + k].tobytes(), f"{k} differs between the ranks"
    assert r0["state"].tobytes() == r1["state"].tobytes()
    if ref.state_vectors:
        np.testing.assert_allclose(r0["state"], np.concatenate(ref.state_vectors), **tol)
    # the training state in hyper (not the process's own BLAS-threading slots)
    state_slots = [i for i in range(ex.HYPER_SIZE) if i not in ex.RUNTIME_SLOTS]
    assert r0["hyper"][state_slots].tobytes() == r1["hyper"][state_slots].tobytes()
    assert r0["losses"].tobytes() == r1["losses"].tobytes()                # same global loss everywhere
    assert bool(r0["in_sync"]) and bool(r1["in_sync"])
    # dropout's row offset is this rank's only while a data-parallel step runs: the step called on
    # its own afterwards keys its masks by its own rows (rank 1's offset used to stay behind)
    assert r0["hyper"][_isa.H_ROW0] == r1["hyper"][_isa.H_ROW0] == 0.0


@pytest.fixture(scope="module")
def failures_run(mpirun, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi_failures")
    res = mpirun(sys.executable, os.path.join(SCRIPTS, "failures.py"), str(out))
    _assert_clean_end(res, "failures.py")
    ranks = [json.loads((out / f"failures_rank{r}.json").read_text()) for r in range(2)]
    return out, ranks


@pytest.mark.parametrize("scenario,bad_rank,error", [
    ("call_bad_shape", 1, "ValueError"),
    ("call_bad_dtype", 0, "TypeError"),
    ("call_too_many_rows", 1, "ValueError"),
    ("call_bad_label", 0, "ValueError"),            # detected inside the native step
    ("call_nan_input", 1, "FloatingPointError"),    # non-finite loss inside the native step
    ("fit_bad_label_rank1", 1, "ValueError"),
    ("fit_nan_rank1", 1, "FloatingPointError"),
    ("compile_error_rank1", 1, "ValueError"),
])
def test_a_bad_minibatch_on_one_rank_raises_on_every_rank(failures_run, scenario, bad_rank, error):
    _, ranks = failures_run
    for r, res in enumerate(ranks):
        got = res[scenario]
        want = error if r == bad_rank else "RankError"
        assert got["type"] == want, (r, got)
        assert got["all_ranks"] is True, (r, got)
        if "unchanged" in got:
            assert got["unchanged"] is True, f"rank {r} changed its weights in {scenario}"
        if "in_sync" in got:
            assert got["in_sync"] is True
    if scenario == "fit_nan_rank1":
        assert "at step 0 of fit" in ranks[1][scenario]["msg"]


@pytest.mark.parametrize("scenario,error", [("compile_clip_rank1", "ValueError"),
                                            ("compile_device_rank1", "ValueError"),
                                            ("wrap_threads_rank1", "ValueError"),
                                            ("wrap_not_a_step_rank1", "TypeError"),
                                            ("fit_plateau_held_rank1", "ValueError"),
                                            ("bn_rejected_rank1", "ValueError")])
def test_arguments_refused_on_one_rank_raise_on_every_rank(failures_run, scenario, error):
    """Each of these was refused on rank 1 before the ranks agreed (rank 0 waited for ever), or,
    for BatchNorm, left rank 0's running statistics updated by a step no rank applied."""
    _, ranks = failures_run
    assert ranks[1][scenario]["type"] == error and ranks[0][scenario]["type"] == "RankError"
    assert "the ranks that did not fail raised fastbp.distributed.RankError" in ranks[1][scenario]["notes"][-1]
    for res in ranks:
        assert res[scenario].get("unchanged", True) and res[scenario].get("running_unchanged", True)


def test_a_gradient_not_finite_after_the_allreduce_changes_nothing_on_any_rank(failures_run):
    """Rank 1's gradient overflows (its loss does not): every rank raises after the Allreduce,
    and BatchNorm's running statistics stay as they were (they kept the failed step's batch)."""
    _, ranks = failures_run
    for res in ranks:
        r = res["grad_inf_after_allreduce_rank1"]
        assert r["type"] == "FloatingPointError" and "after the Allreduce" in r["msg"], r
        assert r["unchanged"] and r["running_unchanged"]


def test_means_finite_on_every_rank_stay_finite_in_the_reduction(failures_run):
    """The float32 reduction held loss * rows and gradient * rows: a loss of 3e37 came back inf
    (and was applied), BatchNorm's huge finite gradients raised; one process trains on both."""
    _, ranks = failures_run
    for res in ranks:
        r = res["finite_means_stay_finite"]
        assert r["type"] is None and r["dp"] == pytest.approx(r["one"], rel=1e-6) and r["params_apart"] < 1e-6, r
        assert np.isfinite(r["huge_loss_one"]) and r["huge_loss_one"] > 1e37
        assert r["huge_loss_dp"] == pytest.approx(r["huge_loss_one"], rel=1e-6)


def test_rank_local_settings_and_shared_failures(failures_run):
    _, ranks = failures_run
    for res in ranks:
        assert res["threads_differ"]["type"] is None                # each rank's own threads=
        assert res["compile_error_all"]["type"] == "ValueError"     # every rank refused batch_size=0
        assert "every rank raised its own error" in res["compile_error_all"]["notes"][-1]
        assert res["schedule_position_differs"]["type"] == "ValueError"
        assert "where it stands" in res["schedule_position_differs"]["msg"]
        assert res["schedule_position_differs"]["in_sync"]


def test_disagreements_between_ranks_raise_the_same_error_everywhere(failures_run):
    _, ranks = failures_run
    for scenario, words in (("fit_different_n", "different X rows"), ("mismatched_model", "different model")):
        for r, res in enumerate(ranks):
            assert res[scenario]["type"] == "ValueError", (r, res[scenario])
            assert words in res[scenario]["msg"]
            assert res[scenario]["all_ranks"] is True
        assert ranks[0][scenario]["msg"] == ranks[1][scenario]["msg"]
    assert ranks[0]["fit_different_n"]["unchanged"] and ranks[1]["fit_different_n"]["unchanged"]


def test_training_goes_on_after_errors_and_only_rank0_writes_checkpoints(failures_run):
    out, ranks = failures_run
    for res in ranks:
        a = res["after"]
        assert a["n_losses"] == a["steps"] == 4 and a["finite"] and a["in_sync"]
        assert res["save"]["type"] is None
        assert res["bad_comm"]["type"] == "TypeError" and "communicator" in res["bad_comm"]["msg"]
    assert ranks[0]["after"] == ranks[1]["after"]
    if "comm" in inspect.signature(fastbp.compile).parameters:
        for res in ranks:
            assert res["fastbp_compile_comm"] == {"type": "DistributedStep", "in_sync": True}
    assert (out / "save_called_rank0").exists()
    assert not (out / "save_called_rank1").exists()
    assert (out / "model.fbp").exists()
    from fastbp.checkpoint import load
    restored = load(str(out / "model.fbp"))
    assert restored.n_steps == ranks[0]["n_steps_at_save"]
    assert restored.param_vector.tobytes() == np.load(out / "params_at_save_rank0.npy").tobytes()
    # a failed write on rank 0 is raised on every rank
    assert ranks[0]["save_bad_dir"]["type"] in ("FileNotFoundError", "OSError", "ValueError")
    assert ranks[1]["save_bad_dir"]["type"] == "RankError"
    assert ranks[0]["save_bad_dir"]["all_ranks"] and ranks[1]["save_bad_dir"]["all_ranks"]


def test_each_rank_caps_numba_and_blas_threads_to_its_share(failures_run):
    _, ranks = failures_run
    import numba
    share = max(1, len(os.sched_getaffinity(0)) // 2)        # 2 unbound ranks share this process's cores
    for res in ranks:
        assert res["threads"]["numba"] == min(share, numba.config.NUMBA_NUM_THREADS)
        assert res["numba_threads"] == res["threads"]["numba"]
    pytest.importorskip("threadpoolctl", reason="the BLAS cap needs threadpoolctl")
    for res in ranks:
        assert res["threads"]["blas"] == share
        assert res["blas_threads"] == [share]


def _cli_supports_mpi():
    import fastbp.cli
    return "launched_comm" in inspect.getsource(fastbp.cli)


@pytest.mark.skipif(not _cli_supports_mpi(), reason="fastbp/cli.py does not have the MPI support "
                    "requested in issue 7 yet")
def test_fastbp_train_under_mpiexec_prints_and_saves_once(mpirun, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    save = tmp_path / "m.fbp"
    exe = os.path.join(os.path.dirname(sys.executable), "fastbp")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "fastbp.cli"]
    res = mpirun(*cmd, "train", "--data", str(tmp_path / "d.npz"), "--hidden", "16", "--epochs", "3",
                 "--batch-size", "16", "--quiet", "--save", str(save))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("test accuracy:") == 1, res.stdout
    assert "per rank x 2 ranks" in res.stdout
    assert res.stdout.count("checkpoint:") == 1
    assert save.exists()
    # an error on every rank: one message, exit status 1, no hang
    res = mpirun(*cmd, "train", "--data", str(tmp_path / "missing.npz"), "--quiet")
    assert res.returncode != 0
    assert res.stderr.count("missing.npz") >= 1


def test_ring_allreduce_volume():
    from fastbp.bench.mpi_bench import ring_allreduce_bytes
    assert ring_allreduce_bytes(1000, 1) == 0
    assert ring_allreduce_bytes(1000, 2) == 1000
    assert ring_allreduce_bytes(1000, 4) == 1500
    assert 1990 < ring_allreduce_bytes(1000, 1000) < 2000      # about 2x the buffer for many ranks


@pytest.mark.thorough      # ~5 s of mpiexec runs; the MPI step itself is tested above
def test_mpi_bench_runs_and_reports(mpirun, tmp_path):
    """``python -m fastbp.bench.mpi_bench`` end to end on the tiny config (smoke test, no timing check)."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "fastbp.bench.mpi_bench", "--configs", "tiny", "--rounds", "1", "--steps", "4",
           "--ranks", "2", "--threads", "2", "--json", str(out)]
    if os.environ.get("FASTBP_MPIEXEC"):
        cmd += ["--mpiexec", os.environ["FASTBP_MPIEXEC"]]
    res = _launch(cmd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Allreduce alone" in res.stdout and "2 ranks x 1 thread" in res.stdout
    r = json.loads(out.read_text())["results"][0]
    assert r["config"] == "tiny" and r["ranks"] == 2 and r["in_sync"]
    n_params = 64 * 32 + 32 + 32 * 10 + 10
    assert r["comm_bytes"] >= 4 * (n_params + 3)
    for k in ("single_fit_step_s", "one_thread_fit_step_s", "dist_fit_step_s", "dist_grad_s", "allreduce_s"):
        assert 0 < r[k] < 10, k


# ------------------------------------------------------------------ issue 17: one input path
@pytest.fixture(scope="module")
def layouts_run(mpirun, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi_layouts")
    res = mpirun(sys.executable, os.path.join(SCRIPTS, "layouts.py"), str(out))
    _assert_clean_end(res, "layouts.py")
    return [json.loads((out / f"layouts_rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("scenario", ["read_only_x_rank1", "read_only_x_and_y_rank0", "unaligned_x_rank1",
                                      "gaps_x_rank0", "fortran_x_rank1", "big_endian_x_rank0",
                                      "column_view_x_rank1"])
def test_an_odd_layout_on_one_rank_trains_like_c_contiguous_copies(layouts_run, scenario):
    """Defect 1: a read-only minibatch on one rank deadlocked the job (TypingError before the
    Allreduce).  Any layout is now converted before any collective, on every rank alike."""
    for r, res in enumerate(layouts_run):
        got = res[scenario]
        assert got["type"] is None, (r, got)
        assert got["same_loss"] and got["same_state"] and got["in_sync"], (r, got)


def test_an_odd_layout_in_fit_on_one_rank_trains_like_copies(layouts_run):
    for res in layouts_run:
        assert res["fit_read_only_fortran_rank1"] == {"same_losses": True, "same_state": True, "in_sync": True}


def test_an_unexpected_validation_error_on_one_rank_never_deadlocks(layouts_run):
    """Whatever a rank's validation raises, it joins the collective first: its own error there,
    RankError on the others, nothing changed anywhere."""
    for scenario, bad_rank, error, words in (("evil_rank1", 1, "RuntimeError", "evil array"),
                                             ("fit_bad_shuffle_rank0", 0, "TypeError", "shuffle must be a bool")):
        for r, res in enumerate(layouts_run):
            got = res[scenario]
            assert got["type"] == (error if r == bad_rank else "RankError"), (r, got)
            assert got["all_ranks"] is True and got["unchanged"] is True, (r, got)
            if r == bad_rank:
                assert words in got["msg"]
    for res in layouts_run:
        assert res["evil_rank1"]["in_sync"] is True


def _one_rank_comm():
    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed")
    return MPI.COMM_WORLD


@pytest.mark.parametrize("kind", ["read_only", "unaligned", "column_view", "fortran_big_endian"])
def test_one_process_distributed_step_accepts_what_trainstep_accepts(kind):
    """Defect 1 with one process: DistributedStep rejected read-only (TypingError) and unaligned
    (executor status 4) minibatches that TrainStep accepts.  Now both go through one path."""
    comm = _one_rank_comm()
    n_in = 1 if kind == "column_view" else 4
    model = fastbp.Sequential(fastbp.Linear(n_in, 6), fastbp.ReLU(), fastbp.Linear(6, 3))
    d, ref = (dist.compile(model, optimizer=fastbp.Adam(1e-2), batch_size=5, comm=comm, threads=None)
              for _ in range(2))
    plain = fastbp.compile(model, optimizer=fastbp.Adam(1e-2), batch_size=5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])

    def odd(a):
        if kind == "read_only":
            a = a.copy()
            a.flags.writeable = False
            return a
        if kind == "unaligned":
            u = np.zeros(a.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(a.shape)
            u[...] = a
            return u
        if kind == "column_view":
            return np.ascontiguousarray(a[:, 0])[:, None]
        return np.asfortranarray(a).astype(">f4")

    a, b = d(odd(x), y), ref(x, y)               # bitwise: the same path as C-contiguous copies
    assert a == b and d.param_vector.tobytes() == ref.param_vector.tobytes()
    np.testing.assert_allclose(a, plain(x, y), rtol=1e-6)      # and TrainStep's step (up to rounding)
    X, Y = np.repeat(x, 3, axis=0), np.repeat(y, 3)
    la = d.fit(odd(X), Y, epochs=2, shuffle=False)
    lb = ref.fit(X, Y, epochs=2, shuffle=False)
    assert la.tobytes() == lb.tobytes()
    assert d.param_vector.tobytes() == ref.param_vector.tobytes() and d.in_sync()


def test_one_process_distributed_fit_validates_like_trainstep():
    """Defect 13 for the data-parallel fit: shuffle must be a bool, seed an integer (TypeError);
    a rejected fit leaves the weights and the generator alone."""
    comm = _one_rank_comm()
    d = dist.compile(fastbp.Sequential(fastbp.Linear(4, 3)), batch_size=4, comm=comm, threads=None)
    X, Y = np.ones((8, 4), np.float32), np.arange(8) % 3
    rng_state, params = d.rng.bit_generator.state, d.param_vector.tobytes()
    for kw, exc, words in ((dict(shuffle="no"), TypeError, "shuffle must be a bool"),
                           (dict(seed="a"), TypeError, "seed must be a non-negative integer or None, got str"),
                           (dict(seed=-1), ValueError, "seed must be a non-negative integer"),
                           (dict(seed=2**64), ValueError, "seed must be at most"),
                           (dict(epochs=2**63), ValueError, "epochs must be a positive integer <="),
                           (dict(verbose="yes"), TypeError, "verbose must be a bool")):
        with pytest.raises(exc, match=words):
            d.fit(X, Y, **kw)
        assert d.rng.bit_generator.state == rng_state and d.param_vector.tobytes() == params
    with pytest.raises(TypeError, match="threads must be 'auto', a positive integer or None, got float"):
        dist.DistributedStep(d.step, comm, threads=2.0)
    with pytest.raises(ValueError, match="threads must be 'auto'"):
        dist.DistributedStep(d.step, comm, threads="all")


# ------------------------------------------------------------------ issue 15: one fit signature
@pytest.fixture(scope="module")
def fit_features_run(mpirun, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi_fit_features")
    res = mpirun(sys.executable, os.path.join(SCRIPTS, "fit_features.py"), str(out))
    _assert_clean_end(res, "fit_features.py")
    return [json.loads((out / f"fit_features_rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_fit_with_a_schedule_and_validation_like_one_process(fit_features_run):
    """2 ranks x batch 4 with a schedule == 1 process x batch 8 with the same schedule: the
    rates, global losses, validation metrics and weights; the ranks identical."""
    sched = fastbp.schedules.CosineAnnealingLR(T_max=3, warmup=1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6))
    Y = rng.integers(0, 3, 64)
    ref = fastbp.compile(fastbp.Sequential(fastbp.Linear(6, 8), fastbp.Tanh(), fastbp.Linear(8, 3)),
                         optimizer=fastbp.SGD(lr=0.2, momentum=0.9), batch_size=8, dtype=np.float64, seed=1,
                         schedule=sched)
    h = ref.fit(X, Y, epochs=4, seed=7, validation_data=(X[:16], Y[:16]))
    r0, r1 = fit_features_run
    np.testing.assert_allclose(r0["losses"], np.asarray(h), rtol=1e-10)
    np.testing.assert_allclose(r0["params"], ref.param_vector, rtol=1e-9, atol=1e-12)
    assert r0["history"]["lr"] == h.history["lr"]
    np.testing.assert_allclose(r0["history"]["val_loss"], h.history["val_loss"], rtol=1e-9)
    assert r0["history"] == r1["history"] and r0["losses"] == r1["losses"] and r0["in_sync"] and r1["in_sync"]


def test_a_callback_stopping_on_one_rank_stops_every_rank(fit_features_run):
    for res in fit_features_run:
        assert res["stopped"] == 1 and res["epochs_run"] == 2 and res["in_sync_after_stop"]


def test_batch_norm_statistics_start_as_rank0s_and_a_one_row_share_is_refused_up_front(fit_features_run):
    """Rank 0's BatchNorm1d running statistics are broadcast with its weights (as PyTorch's DDP
    broadcasts rank 0's buffers): the ranks predict alike; a fit whose last global minibatch
    gives each rank one row is refused on every rank before any step (it trained 4 steps,
    then failed, saying "nothing was changed")."""
    r0, r1 = fit_features_run
    assert r0["bn_buffers"] == r1["bn_buffers"] and r0["bn_predict"] == r1["bn_predict"]
    assert any(v not in (0.0, 1.0) for v in r0["bn_buffers"])      # rank 0's trained statistics
    for res in (r0, r1):
        assert "Expected more than 1 value per channel" in res["bn_one_row_share"]
        assert "this rank's share of a minibatch of fit" in res["bn_one_row_share"]
        assert res["bn_unchanged"]


def test_one_process_distributed_fit_refuses_a_one_row_batch_norm_minibatch_up_front():
    comm = _one_rank_comm()
    model = fastbp.Sequential(fastbp.Linear(4, 8), fastbp.BatchNorm1d(8), fastbp.ReLU(), fastbp.Linear(8, 3))
    d = dist.compile(model, optimizer=fastbp.SGD(lr=0.1), batch_size=8, dtype=np.float64, comm=comm,
                     threads=None)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((65, 4)), rng.integers(0, 3, 65)
    params, buffers, state = d.param_vector.tobytes(), d.step.buffer_vector.tobytes(), d.rng.bit_generator.state
    with pytest.raises(ValueError, match="Expected more than 1 value per channel.*nothing was changed"):
        d.fit(X, Y, epochs=1)
    assert d.n_steps == 0 and d.param_vector.tobytes() == params
    assert d.step.buffer_vector.tobytes() == buffers and d.rng.bit_generator.state == state
    assert len(d.fit(X[:64], Y[:64], epochs=1)) == 8        # 8 full minibatches train
