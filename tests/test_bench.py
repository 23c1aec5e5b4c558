"""Tests of the benchmark harness (fastbp.bench) and of the asv suite's plumbing.

Timings are never asserted: only that the harness computes the right
things (peer steps, loss comparison, environment, end-to-end output).
"""
import importlib
import json
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from fastbp.bench import configs, peers
from fastbp.bench.runner import SCRUBBED_ENV, compare_losses, format_time, peer_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_compile():
    import fastbp

    return hasattr(fastbp, "compile")


needs_compile = pytest.mark.skipif(not _has_compile(), reason="fastbp.compile is not available yet")


# ----------------------------------------------------------------- configs
def test_config_flops_follow_the_formula():
    for c in configs.CONFIGS.values():
        ws = c.widths
        expect = 6 * c.batch * sum(ws[k] * ws[k + 1] for k in range(len(ws) - 1))
        assert c.flops == expect
    # issue 4's table, in its own rounding
    assert round(configs.CONFIGS["small"].flops / 1e6) == 39
    assert round(configs.CONFIGS["large"].flops / 1e9, 1) == 51.5


def test_get_configs_parses_and_rejects_unknown_names():
    assert [c.name for c in configs.get_configs("tiny, small")] == ["tiny", "small"]
    with pytest.raises(ValueError, match="'huge'"):
        configs.get_configs("tiny,huge")
    for empty in ("", " , ", []):
        with pytest.raises(ValueError, match="names no configuration"):
            configs.get_configs(empty)


def test_shared_weights_and_data_are_deterministic():
    c = configs.CONFIGS["tiny"]
    w1, w2 = configs.make_weights(c, seed=3), configs.make_weights(c, seed=3)
    assert [W.shape for W, _ in w1] == [(64, 32), (32, 10)]
    for (a, b), (p, q) in zip(w1, w2):
        assert a.dtype == np.float32 and a.flags.c_contiguous
        np.testing.assert_array_equal(a, p)
        np.testing.assert_array_equal(b, q)
    assert not np.array_equal(w1[0][0], configs.make_weights(c, seed=4)[0][0])
    X, y = configs.make_data(c, n_batches=4)
    assert X.shape == (128, 64) and X.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))  # every class present


# ----------------------------------------------------------- numpy peer
def _reference_steps(widths, weights, X, y, batch, lr, n_steps):
    """Plain float64 MLP training, written independently of the peer (no buffers, no in-place)."""
    params = [(W.astype(np.float64), b.astype(np.float64)) for W, b in weights]
    losses = []
    for k in range(n_steps):
        x = X[k * batch:(k + 1) * batch].astype(np.float64)
        t = y[k * batch:(k + 1) * batch]
        hs = [x]
        for l, (W, b) in enumerate(params):
            z = hs[-1] @ W + b
            hs.append(np.maximum(z, 0.0) if l < len(params) - 1 else z)
        s = hs[-1]
        logp = s - s.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        n = x.shape[0]
        losses.append(-logp[np.arange(n), t].mean())
        onehot = np.zeros_like(s)
        onehot[np.arange(n), t] = 1.0
        d = (np.exp(logp) - onehot) / n
        new = []
        for l in range(len(params) - 1, -1, -1):
            W, b = params[l]
            gW, gb = hs[l].T @ d, d.sum(axis=0)
            d = (d @ W.T) * (hs[l] > 0)
            new.append((W - lr * gW, b - lr * gb))
        params = new[::-1]
    return losses, params


def test_numpy_peer_matches_float64_reference():
    c = configs.CONFIGS["tiny"]
    weights = configs.make_weights(c, seed=0)
    X, y = configs.make_data(c, n_batches=4, seed=1)
    p = peers.NumpyPeer(c, weights, lr=0.1)
    got = [p.step(xb, yb) for xb, yb in p.batches(X, y)[:4]]
    ref_losses, ref_params = _reference_steps(c.widths, weights, X, y, c.batch, 0.1, 4)
    np.testing.assert_allclose(got, ref_losses, rtol=1e-5)
    for (W, b), (rW, rb) in zip(p.weights(), ref_params):
        np.testing.assert_allclose(W, rW, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, rb, rtol=1e-4, atol=1e-5)
    # the initial weights handed in are not modified
    np.testing.assert_array_equal(weights[0][0], configs.make_weights(c, seed=0)[0][0])


def test_numpy_peer_gradients_match_finite_differences():
    c = configs.Config("t", (5, 4, 4, 3), 6)
    weights = configs.make_weights(c, seed=2, dtype=np.float64)
    X, y = configs.make_data(c, n_batches=1, seed=5, dtype=np.float64)
    p = peers.NumpyPeer(c, weights, lr=0.1, dtype=np.float64)
    p.forward_backward(X[:5], y[:5])  # a partial batch: 5 of 6 rows
    grads = [(gW.copy(), gb.copy()) for gW, gb in p.grads]

    def loss_at(ws):
        return _reference_steps(c.widths, ws, X[:5], y[:5], 5, 0.0, 1)[0][0]

    eps = 1e-6
    for l in range(len(weights)):
        for which in (0, 1):
            arr = weights[l][which]
            num = np.zeros_like(arr)
            for idx in np.ndindex(arr.shape):
                plus = [(W.copy(), b.copy()) for W, b in weights]
                minus = [(W.copy(), b.copy()) for W, b in weights]
                plus[l][which][idx] += eps
                minus[l][which][idx] -= eps
                num[idx] = (loss_at(plus) - loss_at(minus)) / (2 * eps)
            np.testing.assert_allclose(grads[l][which], num, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------- loss comparison
def test_compare_losses_accepts_agreement_and_ignores_sklearn():
    ref, mism = compare_losses({"fastbp": [2.3, 2.2], "numpy": [2.3001, 2.2], "sklearn": None})
    assert ref == "numpy" and mism == {}


def test_compare_losses_names_the_mismatching_peer_and_step():
    ref, mism = compare_losses({"numpy": [2.3, 2.2, 2.1], "torch": [2.3, 2.2, 2.1],
                                "fastbp": [2.3, 2.25, float("nan")]}, rtol=1e-3)
    assert ref == "numpy" and list(mism) == ["fastbp"]
    assert len(mism["fastbp"]) == 2
    assert "fastbp step 1" in mism["fastbp"][0] and "numpy" in mism["fastbp"][0]
    assert "fastbp step 2" in mism["fastbp"][1]
    ref, mism = compare_losses({"numpy": [1.0, 1.0], "jax": [1.0]})
    assert "jax" in mism


def test_peer_env_scrubs_a_copy_only():
    base = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1024", "PATH": "/bin"}
    env, removed = peer_env(base)
    assert removed == {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1024"}
    assert env == {"PATH": "/bin"}
    assert "OPENBLAS_CORETYPE" in base  # the given mapping is untouched
    env, removed = peer_env(base, scrub=False)
    assert env == base and removed == {}
    assert set(SCRUBBED_ENV) == {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}


def test_format_time_units():
    assert format_time(1.5e-6) == "1.5 us"
    assert format_time(0.0123) == "12.3 ms"
    assert format_time(2.0) == "2 s"
    assert format_time(250e-6) == "250 us"


def test_unknown_peer_is_rejected():
    with pytest.raises(ValueError, match="'tensorflow'"):
        peers.available("tensorflow")
    r = subprocess.run([sys.executable, "-m", "fastbp.bench", "--peers", "numpy,tensorflow"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "tensorflow" in r.stderr


@pytest.mark.parametrize("argv, words", [
    (["--round-time", "nan"], "--round-time must be a finite number > 0, got nan"),     # it never ended
    (["--round-time", "inf"], "--round-time must be a finite number > 0, got inf"),
    (["--gap", "-1"], "--gap must be a finite number >= 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--rtol", "-1"], "--rtol must be a finite number >= 0"),
    (["--bf16-rtol", "nan"], "--bf16-rtol must be a finite number >= 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--configs", ""], "names no configuration"),
    (["--peers", ","], "names no peer"),
    (["--json", "/nonexistent-dir/x.json"], "directory /nonexistent-dir does not exist"),
])
def test_bad_options_are_refused_before_any_work(capsys, argv, words):
    """A NaN --round-time hung the calibration; --seed -1, --gap -1 and an unwritable --json
    were tracebacks after the work (the last after the whole run); empty selections ran
    nothing and exited 0."""
    from fastbp.bench.runner import main
    assert main(["--configs", "tiny", "--peers", "numpy", "--check-only", *argv]) == 2
    cap = capsys.readouterr()
    assert words in cap.err and cap.out == ""


# ------------------------------------------------------------ the workers
def test_worker_reports_errors_over_its_channel(tmp_path):
    from fastbp.bench.runner import WorkerError, WorkerProc
    from fastbp.bench.worker import save_shared

    c = configs.CONFIGS["tiny"]
    data = str(tmp_path / "d.npz")
    save_shared(data, configs.make_weights(c), *configs.make_data(c, n_batches=2))
    w = WorkerProc("numpy", dict(os.environ), str(tmp_path))
    try:
        with pytest.raises(WorkerError, match="FileNotFoundError"):
            w.call("init", peer="numpy", config="tiny", data=str(tmp_path / "missing.npz"), lr=0.01, n_check=1)
        # the worker survives a failed request
        r = w.call("init", peer="numpy", config="tiny", data=data, lr=0.01, n_check=2)
        assert len(r["losses"]) == 2
        assert w.call("info")["version"] == np.__version__
    finally:
        w.close()


def test_worker_runs_a_numpy_peer(tmp_path):
    from fastbp.bench.runner import WorkerProc
    from fastbp.bench.worker import save_shared

    c = configs.CONFIGS["tiny"]
    weights = configs.make_weights(c)
    X, y = configs.make_data(c, n_batches=4)
    data = str(tmp_path / "d.npz")
    save_shared(data, weights, X, y)
    w = WorkerProc("numpy", dict(os.environ), str(tmp_path))
    try:
        r = w.call("init", peer="numpy", config="tiny", data=data, lr=0.01, n_check=3)
        local = peers.NumpyPeer(c, weights, 0.01)
        expect = [local.step(xb, yb) for xb, yb in local.batches(X, y)[:3]]
        np.testing.assert_allclose(r["losses"], expect, rtol=1e-6)
        assert w.call("calibrate", min_time=0.001) > 0
        assert w.call("time", number=5) > 0
        m = w.call("memory", steps=2)
        assert m["traced_peak_per_step"] >= 0 and "steps_rss_growth" in m
    finally:
        w.close()


# ------------------------------------------------------------- end to end
def _run_bench(args, tmp_path, timeout=300, env=None):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "fastbp.bench", *args, "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(out) as f:
        return r.stdout, json.load(f)


@needs_compile
@pytest.mark.thorough       # ~10 s of two cores (the launcher, two peers' workers, three rounds each)
def test_bench_quick_tiny_fastbp_numpy_end_to_end(tmp_path):
    # the launcher removes these from its workers' environment (only there): set them if CI has not
    env = dict(os.environ)
    env.setdefault("OPENBLAS_L2_SIZE", "1048576")
    if platform.machine() == "x86_64":
        env.setdefault("OPENBLAS_CORETYPE", "Haswell")
    stdout, res = _run_bench(["--quick", "--configs", "tiny", "--peers", "fastbp,numpy"], tmp_path, env=env)
    assert set(res["removed_env"]) >= {"OPENBLAS_L2_SIZE"}
    assert "removed from the peers' environment" in stdout
    rec = res["configs"]["tiny"]
    assert rec["errors"] == {} and rec["loss_mismatches"] == {}
    assert rec["loss_reference"] == "numpy"
    for p in ("fastbp", "numpy"):
        pr = rec["peers"][p]
        assert pr["median_s"] > 0 and len(pr["times"]) == 3
        assert math.isclose(pr["gflops"], configs.CONFIGS["tiny"].flops / pr["median_s"] / 1e9)
        assert len(pr["check_losses"]) == 3
    np.testing.assert_allclose(rec["peers"]["fastbp"]["check_losses"], rec["peers"]["numpy"]["check_losses"],
                               rtol=1e-3)
    assert min(rec["peers"][p]["vs_fastest"] for p in ("fastbp", "numpy")) == 1.0
    assert rec["fit_vs_loop"]["fit_median_s"] > 0
    assert res["peak"]["reference_gflops"] > 0
    assert "numba_layer" in res["threading"]
    for p in ("fastbp", "numpy"):
        assert rec["peers"][p]["info"]["env"] == {}  # the workers ran without them
    assert "fastbp" in stdout and "GFLOP/s" in stdout and "OPENBLAS_CORETYPE" in stdout


@pytest.mark.extras
def test_bench_check_only_torch_and_jax_agree_with_numpy(tmp_path):
    wanted = [p for p in ("torch", "jax") if peers.available(p)]
    if not wanted:
        pytest.skip("neither PyTorch nor JAX is installed")
    _, res = _run_bench(["--check-only", "--configs", "tiny", "--peers", ",".join(["numpy"] + wanted)], tmp_path)
    rec = res["configs"]["tiny"]
    assert rec["errors"] == {} and rec["loss_mismatches"] == {}
    for p in wanted:
        assert rec["peers"][p]["loss_check"] == "ok"


# --------------------------------------------------------------- asv suite
def _asv_module(name):
    path = os.path.join(ROOT, "asv_benchmarks")
    sys.path.insert(0, path)
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.path.remove(path)


def test_asv_config_is_valid_json_with_comments():
    with open(os.path.join(ROOT, "asv_benchmarks", "asv.conf.json")) as f:
        text = "".join(line for line in f if not line.lstrip().startswith("//"))
    conf = json.loads(text)
    assert conf["repo"] == ".." and conf["branches"] == ["main"]
    assert set(conf["matrix"]["req"]) >= {"numpy", "numba", "scipy"}


def test_asv_train_step_runs_outside_asv(tmp_path, monkeypatch):
    step = _asv_module("step")
    monkeypatch.chdir(tmp_path)
    b = step.TrainStep()
    cache = b.setup_cache()
    assert set(cache) == set(step.CONFIGS) and all(os.path.exists(p) for p in cache.values())
    b.setup(cache, "tiny", "numpy")
    k = b.k
    b.time_step(cache, "tiny", "numpy")
    assert b.k == k + 1
    with pytest.raises(NotImplementedError):
        b.peer("nosuchpeer", "tiny", b.load(cache, "tiny")[0])


def test_asv_configuration_variables_refuse_typos_and_skip_what_they_leave_out(tmp_path):
    """FASTBP_ASV_CONFIGS=Tiny ran every configuration (large included) and tiny,smal dropped smal
    silently; FASTBP_ASV_PROFILE=Fast meant regular; StepThreads (medium, tabular) failed with a
    KeyError, not a skip, when the configurations left them out."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from benchmarks import step\n"
            "b = step.StepThreads(); cache = b.setup_cache()\n"
            "try:\n    b.setup(cache, 'medium', 'numba')\nexcept NotImplementedError as e:\n    print('SKIP', e)\n"
            % os.path.join(ROOT, "asv_benchmarks"))
    for env, want in (({"FASTBP_ASV_CONFIGS": "Tiny"}, "unknown configuration(s) ['Tiny']"),
                      ({"FASTBP_ASV_CONFIGS": "tiny,smal"}, "unknown configuration(s) ['smal']"),
                      ({"FASTBP_ASV_PROFILE": "Fast"}, "FASTBP_ASV_PROFILE='Fast' is not"),
                      ({"FASTBP_ASV_CONFIGS": "tiny"}, "SKIP configuration 'medium' is not in FASTBP_ASV_CONFIGS")):
        full = {k: v for k, v in os.environ.items() if not k.startswith("FASTBP_ASV")}
        res = subprocess.run([sys.executable, "-c", code], env={**full, **env}, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert want in res.stdout + res.stderr, (env, res.stdout, res.stderr[-2000:])


def test_asv_kernel_benchmarks_run_outside_asv():
    kernels = _asv_module("kernels")
    for variant in ("loops", "blas"):
        b = kernels.LinearBackward()
        b.setup("32x64x32", variant)
        b.time_backward("32x64x32", variant)
        f = kernels.LinearForward()
        f.setup("32x64x32", variant)
        f.time_forward("32x64x32", variant)
        # both variants compute relu(X W + b)
        np.testing.assert_allclose(f.Y, np.maximum(f.X @ f.W + f.b, 0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(b.dW, b.X.T @ b.dZ, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(b.dX, b.dZ @ b.W.T, rtol=1e-4, atol=1e-4)


def test_asv_adam_threads_benchmark_runs_both_variants_alike_outside_asv():
    """The serial kernel the step runs and its prange twin update alike (bitwise: each
    element on its own), so the benchmark compares their speed only."""
    kernels = _asv_module("kernels")
    out = {}
    for variant in ("serial", "parallel"):
        b = kernels.AdamUpdateThreads()
        b.setup(101770, variant)            # setup runs one update
        b.time_update(101770, variant)
        out[variant] = (b.p, b.m, b.v)
    for a, c in zip(out["serial"], out["parallel"]):
        np.testing.assert_array_equal(a, c)


def test_asv_ops_benchmarks_run_outside_asv():
    kernels = _asv_module("kernels")
    b = kernels.Ops()
    try:
        b.setup("32x64x32")
    except NotImplementedError as e:
        pytest.skip(str(e))
    for name in ("time_linear_forward", "time_linear_backward", "time_relu_forward", "time_relu_backward",
                 "time_softmax_cross_entropy"):
        getattr(b, name)("32x64x32")
    np.testing.assert_allclose(b.Y, np.maximum(b.X @ b.W + b.b, 0), rtol=1e-4, atol=1e-4)


@needs_compile
def test_startup_script_times_import_compile_and_first_step(tmp_path):
    from fastbp.bench.worker import save_shared

    c = configs.CONFIGS["tiny"]
    weights = configs.make_weights(c)
    X, y = configs.make_data(c, n_batches=2)
    data = str(tmp_path / "d.npz")
    save_shared(data, weights, X, y)
    script = os.path.join(ROOT, "fastbp", "bench", "_startup.py")
    r = subprocess.run([sys.executable, script, "tiny", data], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["import_s"] > 0 and out["first_step_s"] > 0
    assert math.isclose(out["total_s"], out["import_s"] + out["compile_s"] + out["first_step_s"], rel_tol=1e-9)
    expect = peers.NumpyPeer(c, weights, 0.01).forward_backward(X[:32], y[:32])
    assert math.isclose(out["loss"], expect, rel_tol=1e-3)


# ----------------------------------------------------------------- tabular (issue 14)
def test_tabular_config_is_the_issue_14_network():
    c = configs.CONFIGS["tabular"]
    assert (c.widths, c.batch, c.activation, c.batchnorm, c.dropout, c.optim) == (
        (256, 512, 512, 10), 256, "gelu", True, 0.1, "adamw")
    assert c.describe() == "Linear -> BatchNorm1d -> GELU -> Dropout(0.1) blocks, AdamW (weight decay 0.01)"
    kinds = [type(ly).__name__ for ly in c.model().layers]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Dropout"] * 2 + ["Linear"]
    assert [ly.approximate for ly in c.model().layers if type(ly).__name__ == "GELU"] == ["none", "none"]
    opt = c.fastbp_optimizer(0.01)
    assert (type(opt).__name__, opt.decoupled, opt.weight_decay) == ("Adam", True, 0.01)
    assert c.without_dropout().dropout == 0.0 and c.without_dropout().batchnorm
    assert not c.plain and all(configs.CONFIGS[n].plain for n in ("tiny", "small", "medium", "large", "cs231n"))
    assert configs.workspace_bytes(c) > configs.workspace_bytes(configs.Config("x", c.widths, c.batch))
    with pytest.raises(ValueError, match="dropout"):
        configs.Config("x", (4, 3), 2, dropout=1.0)
    with pytest.raises(ValueError, match="optim"):
        configs.Config("x", (4, 3), 2, optim="rmsprop")
    # numpy and scikit-learn implement the ReLU/SGD step only: skipped, not failed
    assert "ReLU MLPs with plain SGD only" in peers.NumpyPeer.supports(c)
    assert peers.SklearnPeer.supports(c) is not None
    assert all(peers.PEERS[p].supports(c) is None for p in ("fastbp", "torch", "torch_compile", "jax"))
    assert all(peers.PEERS[p].supports(configs.CONFIGS["tiny"]) is None for p in peers.PEERS)


@needs_compile
@pytest.mark.skipif(not peers.available("torch"), reason="PyTorch is not installed")
def test_tabular_fastbp_and_torch_build_the_same_network():
    """Same weights, batches, BatchNorm (training mode), exact GELU and AdamW: with dropout 0 the
    losses agree step by step; with dropout 0.1 both train (their masks differ)."""
    c = configs.CONFIGS["tabular"]
    small = configs.Config("t", (16, 32, 24, 5), 32, activation="gelu", batchnorm=True, dropout=0.1, optim="adamw")
    for cfg in (small, small.without_dropout()):
        weights = configs.make_weights(cfg, seed=3)
        X, y = configs.make_data(cfg, n_batches=4, seed=4)
        fb, tp = peers.FastbpPeer(cfg, weights, 0.01), peers.TorchPeer(cfg, weights, 0.01)
        lf = [fb.loss_value(fb.step(*b)) for b in fb.batches(X, y)]
        lt = [tp.loss_value(tp.step(*b)) for b in tp.batches(X, y)]
        if cfg.dropout:
            assert all(np.isfinite(lf)) and not np.allclose(lf, lt, rtol=1e-4)
        else:
            np.testing.assert_allclose(lf, lt, rtol=1e-4)
            for (Wf, bf), (Wt, bt) in zip(fb.weights(), tp.weights()):
                np.testing.assert_allclose(Wf, Wt, rtol=1e-3, atol=1e-5)
            # the biases before a BatchNorm have a zero gradient up to rounding, which Adam
            # normalises into +-lr steps of either sign: only the last layer's bias is compared
            np.testing.assert_allclose(fb.weights()[-1][1], tp.weights()[-1][1], rtol=1e-3, atol=1e-5)
    assert [type(m).__name__ for m in peers.TorchPeer(c, configs.make_weights(c), 0.01).model] == [
        "Linear", "BatchNorm1d", "GELU", "Dropout"] * 2 + ["Linear"]


@needs_compile
@pytest.mark.thorough       # ~19 s on the loaded 2-core development machine (two peers, two builds each)
def test_bench_quick_tabular_end_to_end(tmp_path):
    """The tabular configuration through the runner: numpy is skipped (not an error), losses are
    compared on the dropout-free variant, the memory check runs and fastbp allocates no array per step."""
    wanted = ["fastbp", "numpy"] + (["torch"] if peers.available("torch") else [])
    stdout, res = _run_bench(["--quick", "--configs", "tabular", "--peers", ",".join(wanted), "--no-peak",
                              "--no-fit", "--repeat", "1", "--round-time", "0.01"], tmp_path)
    rec = res["configs"]["tabular"]
    assert rec["errors"] == {} and rec["loss_mismatches"] == {}
    assert set(rec["skipped"]) == {"numpy"} and "numpy" not in rec["peers"]
    assert "losses compared on the same network with dropout 0" in stdout
    fb = rec["peers"]["fastbp"]
    assert len(fb["check_losses"]) == 3 and len(fb["dropout_losses"]) == 3
    assert fb["check_losses"] != fb["dropout_losses"]
    if "torch" in wanted:
        assert rec["loss_reference"] == "torch" and fb["loss_check"] == "ok"
        np.testing.assert_allclose(fb["check_losses"], rec["peers"]["torch"]["check_losses"], rtol=1e-3)
    m = fb["memory"]
    # no per-step array: one 256x512 float32 activation would be 512 KiB
    assert m["traced_peak_per_step"] < 16384 and m["traced_growth"] < 1024, m
    assert "fastbp allocations per step" in stdout


def test_asv_tabular_comes_from_the_bench_configs():
    common = _asv_module("common")
    assert "tabular" in common.ALL_CONFIGS
    assert common.bench_config("tabular") is configs.CONFIGS["tabular"]
    assert common.bench_config("tiny") == configs.CONFIGS["tiny"]
    w = configs.make_weights(configs.CONFIGS["tabular"])
    with pytest.raises(NotImplementedError, match="ReLU MLPs with plain SGD only"):
        common.DataBenchmark.peer("numpy", "tabular", w)


# ------------------------------------------------------------ bf16 section (issue 18)
def test_precision_option_parses():
    from fastbp.bench import bf16
    from fastbp.bench.runner import build_parser, main

    assert build_parser().parse_args([]).precision == "fp32"     # default: the float32 comparison alone
    args = build_parser().parse_args(["--precision", "fp32,bf16", "--bf16-rtol", "0.05"])
    assert (args.precision, args.bf16_rtol) == ("fp32,bf16", 0.05)
    assert build_parser().parse_args([]).bf16_rtol == 0.03
    assert bf16.parse_precision("fp32") == ("fp32",)
    assert bf16.parse_precision(" BF16, fp32,bf16") == ("fp32", "bf16")
    assert bf16.parse_precision("bf16") == ("bf16",)
    for bad in ("fp16", "", "fp32,half"):
        with pytest.raises(ValueError, match="--precision"):
            bf16.parse_precision(bad)
    assert main(["--precision", "fp16", "--configs", "tiny"]) == 2       # before any work is started


def test_bf16_peers_follow_the_chosen_libraries():
    from fastbp.bench import bf16

    assert bf16.bf16_peers_for(["fastbp", "numpy"]) == ["fastbp_bf16"]
    assert bf16.bf16_peers_for(["numpy", "torch", "fastbp"]) == ["fastbp_bf16", "torch_autocast", "torch_bf16_matmul"]
    assert bf16.bf16_peers_for(["numpy", "jax"]) == []
    assert set(bf16.BF16_PEERS) == set(bf16.BASE) and not set(bf16.BF16_PEERS) & set(peers.PEERS)
    assert all(bf16.ALL_MODULES[p] == peers.MODULES[bf16.BASE[p]] for p in bf16.BF16_PEERS)
    assert [bf16.precision_of(p) for p in ("fastbp", "torch", "fastbp_bf16", "torch_autocast")] == [
        "fp32", "fp32", "bf16", "bf16"]
    assert bf16.FastbpBf16Peer.precision == "bf16" and peers.FastbpPeer.precision == "full"
    assert all(bf16.BF16_PEERS[p].supports(configs.CONFIGS[c]) is None
               for p in bf16.BF16_PEERS for c in ("tiny", "tabular"))


def _bf16_rec():
    return {"peers": {
        "fastbp": {"precision": "fp32", "check_losses": [2.30, 2.20, 2.10], "median_s": 4e-3},
        "numpy": {"precision": "fp32", "check_losses": [2.30, 2.20, 2.10], "median_s": 6e-3},
        "fastbp_bf16": {"precision": "bf16", "check_losses": [2.301, 2.199, 2.102], "median_s": 2e-3},
        "torch_autocast": {"precision": "bf16", "check_losses": [2.30, 2.30, 2.10], "median_s": 3e-3},
        "torch_bf16_matmul": {"precision": "bf16", "check_losses": [2.30, 2.20, 2.10], "median_s": 5e-3}},
        "loss_reference": "numpy"}


def test_bf16_losses_are_checked_against_fastbp_float32():
    from fastbp.bench import bf16

    rec = _bf16_rec()
    live = ["fastbp_bf16", "torch_autocast", "torch_bf16_matmul"]
    mism = bf16.check_losses(rec, live, rtol=0.03)
    assert rec["bf16"]["loss_reference"] == "fastbp" and rec["bf16"]["loss_rtol"] == 0.03
    assert list(mism) == ["torch_autocast"] and "torch_autocast step 1" in mism["torch_autocast"][0]
    p = rec["peers"]
    assert [p[q]["loss_check"] for q in live] == ["ok", "MISMATCH", "ok"]
    assert math.isclose(p["fastbp_bf16"]["loss_rel_diff"], 0.002 / 2.1, rel_tol=1e-9)
    assert p["torch_bf16_matmul"]["loss_rel_diff"] == 0.0
    assert rec["loss_reference"] == "numpy"          # the float32 check is left alone
    # without fastbp float32: the float32 reference; without any float32 peer: the first bf16 peer
    rec = _bf16_rec()
    del rec["peers"]["fastbp"]
    bf16.check_losses(rec, live, rtol=0.03)
    assert rec["bf16"]["loss_reference"] == "numpy"
    rec = _bf16_rec()
    for q in ("fastbp", "numpy"):
        del rec["peers"][q]
    rec["loss_reference"] = None
    bf16.check_losses(rec, live, rtol=0.03)
    assert rec["bf16"]["loss_reference"] == "fastbp_bf16" and rec["peers"]["fastbp_bf16"]["loss_check"] == "reference"


def test_bf16_summary_ratios():
    from fastbp.bench import bf16

    rec = _bf16_rec()
    bf16.summarize(rec, list(rec["peers"]))
    s = rec["bf16"]
    assert s["fastest"] == "fastbp_bf16"
    assert s["fastbp_bf16"]["vs_fp32"] == {"over": "fastbp", "x": 2.0}
    assert s["fastbp_bf16"]["vs_torch_bf16"] == {"over": "torch_autocast", "x": 1.5}
    assert rec["peers"]["torch_bf16_matmul"]["vs_fastest"] == 2.5
    assert "vs_fastest" not in rec["peers"]["fastbp"]        # the float32 rows keep their own
    rec = _bf16_rec()
    bf16.summarize(rec, ["fastbp", "torch_autocast"])          # fastbp bf16 failed: no ratio of it
    assert "fastbp_bf16" not in rec["bf16"] and rec["bf16"]["fastest"] == "torch_autocast"


def test_bf16_status_agrees_with_fastbp():
    from fastbp import _bf16
    from fastbp.bench import bf16

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ok, why, cpu = bf16.bf16_status(env)
    assert (ok, why) == tuple(_bf16.available()) and tuple(cpu) == _bf16.cpu_support()
    assert bf16.unavailable_line("no oneDNN") == "bf16 section skipped: no oneDNN"


def test_bench_says_why_bf16_is_skipped(tmp_path, monkeypatch, capsys):
    """--precision fp32,bf16 where bf16 is unavailable: one line with the reason, no bf16 rows, no failure."""
    from fastbp.bench import bf16
    from fastbp.bench.runner import main

    monkeypatch.setattr(bf16, "bf16_status", lambda env=None, timeout=120: (False, "no bf16 on this CPU (test)", []))
    out = tmp_path / "b.json"
    rc = main(["--check-only", "--configs", "tiny", "--peers", "numpy", "--precision", "fp32,bf16", "--no-peak",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in text.splitlines() if "bf16" in ln and not ln.startswith("wrote ")]
    assert lines == ["bf16 section skipped: no bf16 on this CPU (test)"]
    with open(out) as f:
        res = json.load(f)
    assert res["precisions"] == ["fp32", "bf16"]
    assert res["bf16"] == {"available": False, "why": "no bf16 on this CPU (test)", "cpu": [], "peers": []}
    assert list(res["configs"]["tiny"]["peers"]) == ["numpy"]
    assert res["configs"]["tiny"]["peers"]["numpy"]["precision"] == "fp32"


def test_worker_runs_a_bf16_peer(tmp_path):
    from fastbp import _bf16
    from fastbp.bench.runner import WorkerProc
    from fastbp.bench.worker import save_shared

    ok, why = _bf16.available()
    if not ok:
        pytest.skip(why)
    c = configs.CONFIGS["tiny"]
    weights = configs.make_weights(c)
    X, y = configs.make_data(c, n_batches=4)
    data = str(tmp_path / "d.npz")
    save_shared(data, weights, X, y)
    w = WorkerProc("fastbp_bf16", dict(os.environ), str(tmp_path))
    try:
        r = w.call("init", peer="fastbp_bf16", config="tiny", data=data, lr=0.01, n_check=2)
        ref = peers.NumpyPeer(c, weights, 0.01)
        expect = [ref.step(xb, yb) for xb, yb in ref.batches(X, y)[:2]]
        np.testing.assert_allclose(r["losses"], expect, rtol=0.03)
        info = w.call("info")
        assert info["precision"] == "bf16" and info["cpu_bf16"] and "threading" in info
    finally:
        w.close()


def test_asv_bf16_step_runs_or_is_skipped(tmp_path, monkeypatch):
    from fastbp import _bf16

    step = _asv_module("step")
    assert step.TrainStepBf16.params[1] == ["fastbp_bf16", "torch_autocast", "torch_bf16_matmul"]
    assert step.TrainStepBf16.param_names == step.TrainStep.param_names
    assert hasattr(step.TrainStepBf16, "time_step") and hasattr(step.TrainStepBf16, "peakmem_step")
    monkeypatch.chdir(tmp_path)
    b = step.TrainStepBf16()
    cache = b.setup_cache()
    with pytest.raises(NotImplementedError):
        b.bf16_peer("fastbp", "tiny", b.load(cache, "tiny")[0])      # a float32 peer is not a bf16 one
    ok, why = _bf16.available()
    if not ok:
        with pytest.raises(NotImplementedError, match=why[:20]):
            b.setup(cache, "tiny", "fastbp_bf16")
        return
    b.setup(cache, "tiny", "fastbp_bf16")
    k = b.k
    b.time_step(cache, "tiny", "fastbp_bf16")
    assert b.k == k + 1 and b.p.compiled.precision == "bf16"
    # unavailable: skipped, not failed
    monkeypatch.setattr(_bf16, "available", lambda: (False, "no bf16 here (test)"))
    with pytest.raises(NotImplementedError, match="no bf16 here"):
        b.setup(cache, "tiny", "fastbp_bf16")


@pytest.mark.parametrize("argv, words", [
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--steps", "-1"], "--steps must be at least 1, got -1"),
    (["--ranks", "0"], "--ranks must be at least 1, got 0"),       # was: the core count, silently
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--timeout", "-5"], "--timeout must be a positive number of seconds, got -5.0"),
    (["--configs", "nope"], "--configs: unknown configuration 'nope'"),
    (["--mpiexec", "/nonexistent/mpiexec"], "--mpiexec '/nonexistent/mpiexec': no such command"),
    (["--json", "/nonexistent-dir/x.json"], "--json /nonexistent-dir/x.json: directory /nonexistent-dir does not exist"),
    (["--ranks", "3", "--configs", "tiny"], "--ranks 3: the batch of tiny (32) is not divisible by 3 ranks"),
])
def test_mpi_bench_refuses_bad_options_before_any_run(argv, words, capsys):
    """``python -m fastbp.bench.mpi_bench``: one line naming the option and exit status 2 before
    a worker starts (each was a traceback, most after the benchmark had started)."""
    from fastbp.bench import mpi_bench
    with pytest.raises(SystemExit) as e:
        mpi_bench.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m fastbp.bench.mpi_bench: error: {words}" in err


@pytest.mark.parametrize("argv, words", [
    (["--configs", "nope"], "--configs: unknown configuration 'nope'"),
    (["--peers", "nope"], "--peers: unknown peer 'nope'"),
])
def test_bench_list_options_are_named_like_the_others(argv, words, capsys):
    from fastbp.bench.runner import main
    assert main(argv) == 2
    assert f"python -m fastbp.bench: error: {words}" in capsys.readouterr().err


def test_a_run_that_measures_nothing_fails_and_configurations_run_once(tmp_path, monkeypatch, capsys):
    """--peers naming only peers that are not installed measured nothing and exited 0 (its header
    said "bf16 section only"); --configs tiny,tiny ran tiny twice."""
    from fastbp.bench import runner
    monkeypatch.setattr(runner, "available", lambda p: p in peers.PEERS and p != "numpy")
    rc = runner.main(["--check-only", "--configs", "tiny", "--peers", "numpy", "--precision", "fp32", "--no-peak"])
    text = capsys.readouterr().out
    assert rc == 1 and "FAILED: no peer was measured" in text and "bf16 section only" not in text
    assert [c.name for c in configs.get_configs("tiny,small,tiny")] == ["tiny", "small"]


def test_the_threading_line_comes_from_a_configuration_that_started_numbas_threads():
    from fastbp.bench.runner import _threads_started
    assert not _threads_started({"numba_layer": "not started"}) and _threads_started({"numba_layer": "omp"})


@pytest.mark.parametrize("argv, words", [(["--configs", "bogus"], "--configs: unknown configuration 'bogus'"),
                                         (["--steps", "0"], "--steps must be at least 1, got 0")])
def test_gpu_bench_refuses_bad_options_before_any_run(argv, words, capsys):
    """They were ValueError tracebacks (exit 1) from inside the benchmark."""
    from fastbp.bench import gpu
    with pytest.raises(SystemExit) as e:
        gpu.main(argv)
    assert e.value.code == 2 and f"python -m fastbp.bench.gpu: error: {words}" in capsys.readouterr().err
