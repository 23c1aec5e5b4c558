"""LayerNorm and BatchNorm1d: fused instructions vs PyTorch (float64) and vs an
independent numpy reference, finite differences, whole training runs, running
statistics, eval mode, checkpoints, errors."""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------- numpy reference
def ref_norm(kind, x, w, b, eps, dy, running=None):
    """Forward ``y`` and ``(dx, dw, db)`` of LayerNorm (rows) / BatchNorm (columns, batch
    statistics; ``running=(mean, var)``: eval mode with those) for upstream ``dy``."""
    axis = 1 if kind == "ln" else 0
    if running is None:
        mean = x.mean(axis=axis, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axis, keepdims=True)
    else:
        mean, var = running[0][None, :], running[1][None, :]
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    y = xhat * w + b
    g = dy * w
    if running is None:
        dx = rstd * (g - g.mean(axis=axis, keepdims=True) - xhat * (g * xhat).mean(axis=axis, keepdims=True))
    else:
        dx = g * rstd
    return y, dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def _graph(kind, B, n, affine=True, eps=1e-5):
    g = fastbp.Graph()
    x = g.input("x", (B, n))
    w = g.param("w", RNG.uniform(0.5, 1.5, n)) if affine else None
    b = g.param("b", RNG.uniform(-0.5, 0.5, n)) if affine else None
    C = RNG.standard_normal((B, n))
    y = fastbp.layer_norm(x, w, b, eps=eps) if kind == "ln" else fastbp.batch_norm(x, w, b, eps=eps)
    out = fastbp.sum(y * C)       # upstream gradient dy = C
    wrt = [x] + ([w, b] if affine else [])
    return fastbp.grad(out, wrt, batch_size=B), C, (w.value.copy() if affine else np.ones(n)), \
        (b.value.copy() if affine else np.zeros(n))


@pytest.mark.parametrize("kind", ["ln", "bn"])
@pytest.mark.parametrize("affine", [True, False])
def test_forward_backward_vs_numpy(kind, affine):
    B, n = 7, 6
    f, C, w, b = _graph(kind, B, n, affine)
    x = RNG.standard_normal((B, n)) * 3 + 1
    value, grads = f(x=x)
    y, dx, dw, db = ref_norm(kind, x, w, b, 1e-5, C)
    np.testing.assert_allclose(value, (y * C).sum(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["x"], dx, rtol=1e-10, atol=1e-12)
    if affine:
        np.testing.assert_allclose(grads["w"], dw, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grads["b"], db, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["ln", "bn"])
def test_finite_differences(kind):
    B, n = 5, 4
    f, C, _, _ = _graph(kind, B, n)
    x = RNG.standard_normal((B, n))
    _, grads = f(x=x)
    fastbp.gradcheck.gradcheck(lambda x: f(x=x)[0], {"x": x}, {"x": grads["x"]}, rtol=1e-6)


@pytest.mark.extras
@pytest.mark.parametrize("kind", ["ln", "bn"])
def test_forward_backward_vs_torch(kind):
    torch = pytest.importorskip("torch")
    B, n = 9, 5
    f, C, w, b = _graph(kind, B, n)
    x = RNG.standard_normal((B, n)) * 2 - 1
    value, grads = f(x=x)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    if kind == "ln":
        y = torch.nn.functional.layer_norm(xt, (n,), wt, bt, eps=1e-5)
    else:
        y = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    (y * torch.tensor(C)).sum().backward()
    assert abs(value - float((y * torch.tensor(C)).sum().detach())) <= 1e-12 * max(1.0, abs(value))
    for got, want in ((grads["x"], xt.grad), (grads["w"], wt.grad), (grads["b"], bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ training
def _model(kind, n_in=6, hidden=8, n_out=3, **kw):
    norm = fastbp.LayerNorm(hidden, **kw) if kind == "ln" else fastbp.BatchNorm1d(hidden, **kw)
    return fastbp.Sequential(fastbp.Linear(n_in, hidden), norm, fastbp.ReLU(), fastbp.Linear(hidden, n_out))


def _data(n=40, n_in=6, n_out=3, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, n_in)), r.integers(0, n_out, n)


def test_numpy_reference_training_bn():
    """The default run's check without torch: 3 SGD steps of Linear -> BatchNorm1d ->
    Linear against a numpy reference (forward, backward, update, running statistics)."""
    model = fastbp.Sequential(fastbp.Linear(4, 5), fastbp.BatchNorm1d(5, momentum=0.2), fastbp.Linear(5, 3))
    step = fastbp.compile(model, loss="mse", optimizer=fastbp.SGD(lr=0.1), batch_size=8, dtype=np.float64, seed=3)
    P = {k: v.copy() for k, v in step.params.items()}
    rm, rv = np.zeros(5), np.ones(5)
    r = np.random.default_rng(5)
    for _ in range(3):
        x, t = r.standard_normal((8, 4)), r.standard_normal((8, 3))
        h = x @ P["0.W"] + P["0.b"]
        mean, var = h.mean(0), h.var(0)
        hn, _, _, _ = ref_norm("bn", h, P["1.weight"], P["1.bias"], 1e-5, np.zeros_like(h))
        s = hn @ P["2.W"] + P["2.b"]
        loss = ((s - t) ** 2).mean()
        ds = 2 * (s - t) / s.size
        dW2, db2 = hn.T @ ds, ds.sum(0)
        _, dh, dw1, db1 = ref_norm("bn", h, P["1.weight"], P["1.bias"], 1e-5, ds @ P["2.W"].T)
        dW0, db0 = x.T @ dh, dh.sum(0)
        got = step(x, t)
        assert abs(got - loss) <= 1e-12 * loss
        for k, d in (("0.W", dW0), ("0.b", db0), ("1.weight", dw1), ("1.bias", db1), ("2.W", dW2), ("2.b", db2)):
            P[k] = P[k] - 0.1 * d
        rm = 0.8 * rm + 0.2 * mean
        rv = 0.8 * rv + 0.2 * var * 8 / 7
    for k in P:
        np.testing.assert_allclose(step.params[k], P[k], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(step.buffers["1.running_mean"], rm, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(step.buffers["1.running_var"], rv, rtol=1e-12)
    assert step.buffers["1.num_batches_tracked"][0] == 3
    # predict: eval mode, the running statistics
    xe = r.standard_normal((5, 4))
    h = xe @ P["0.W"] + P["0.b"]
    hn = (h - rm) / np.sqrt(rv + 1e-5) * P["1.weight"] + P["1.bias"]
    np.testing.assert_allclose(step.predict(xe), hn @ P["2.W"] + P["2.b"], rtol=1e-11, atol=1e-13)


def test_cumulative_momentum_none():
    model = fastbp.Sequential(fastbp.Linear(3, 4), fastbp.BatchNorm1d(4, momentum=None), fastbp.Linear(4, 2))
    step = fastbp.compile(model, loss="mse", optimizer=fastbp.SGD(lr=1e-300), batch_size=6,
                          dtype=np.float64, seed=1)
    r = np.random.default_rng(2)
    hs = []
    for _ in range(4):
        x = r.standard_normal((6, 3))
        hs.append(x @ step.params["0.W"] + step.params["0.b"])
        step(x, r.standard_normal((6, 2)))
    np.testing.assert_allclose(step.buffers["1.running_mean"], np.mean([h.mean(0) for h in hs], axis=0),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(step.buffers["1.running_var"], np.mean([h.var(0, ddof=1) for h in hs], axis=0),
                               rtol=1e-12)


def _ten_steps_like_torch(torch, step, ref, topt):
    """Ten minibatches of ``_data()`` through the fastbp step and the PyTorch copy ``ref``
    (optimizer ``topt``): each loss equal to 1e-10 relative.  Returns the features."""
    X, y = _data()
    for s in range(10):
        xb, yb = X[4 * s:4 * s + 8], y[4 * s:4 * s + 8]
        loss = step(xb, yb)
        topt.zero_grad()
        lt = torch.nn.functional.cross_entropy(ref(torch.tensor(xb)), torch.tensor(yb))
        lt.backward()
        topt.step()
        assert abs(loss - lt.item()) <= 1e-10 * abs(lt.item())
    return X


@pytest.mark.extras
@pytest.mark.parametrize("kind", ["ln", "bn"])
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_training_vs_torch(kind, opt):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(8) if kind == "ln" else torch.nn.BatchNorm1d(8, momentum=0.3)
    # no bias before BatchNorm: its gradient is 0 up to rounding, which Adam would amplify
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=kind == "ln"), norm, torch.nn.ReLU(),
                             torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(tm)

    def make(params):
        if opt == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    step = fastbp.from_torch(tm, optimizer=make(tm.parameters()), batch_size=8)
    topt = make(ref.parameters())
    X = _ten_steps_like_torch(torch, step, ref, topt)
    theirs = dict(ref.named_parameters())
    for name, live in step.params.items():
        i, key = name.split(".")
        tkey = {"W": "weight", "b": "bias"}.get(key, key)
        want = theirs[f"{i}.{tkey}"].detach().numpy()
        np.testing.assert_allclose(live, want.T if key == "W" and live.shape != want.shape else want,
                                   rtol=1e-10, atol=1e-13)
    if kind == "bn":
        np.testing.assert_allclose(step.buffers["1.running_mean"], ref[1].running_mean.numpy(), rtol=1e-10,
                                   atol=1e-14)
        np.testing.assert_allclose(step.buffers["1.running_var"], ref[1].running_var.numpy(), rtol=1e-10)
        assert step.buffers["1.num_batches_tracked"][0] == int(ref[1].num_batches_tracked) == 10
        # from_torch shares the running statistics with the torch module
        np.testing.assert_array_equal(tm[1].running_mean.numpy(), step.buffers["1.running_mean"])
    ref.eval()
    np.testing.assert_allclose(step.predict(X), ref(torch.tensor(X)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_kept_derivative_after_a_norm_layer():
    """BatchNorm1d -> GELU: the GELU is an instruction of its own whose derivative reads its
    input, so the training forward keeps that derivative (OP_ACT's column c) and the backward
    multiplies by it (OP_ACT_BWD's f1); ReLU, whose derivative reads its output, keeps none.
    predict (eval mode: the forward alone, no derivative) between the steps changes nothing:
    the steps are bitwise those without it."""
    from fastbp import _isa

    def make(act):
        m = fastbp.Sequential(fastbp.Linear(6, 8), fastbp.BatchNorm1d(8), act, fastbp.Linear(8, 3))
        return fastbp.compile(m, loss="softmax_cross_entropy", optimizer=fastbp.AdamW(lr=0.05), batch_size=8,
                              dtype=np.float64, seed=1)

    def act_rows(step, op):
        return [row for row in step.plan.tape if row[_isa.C_OP] == op]
    gelu, relu = make(fastbp.GELU()), make(fastbp.ReLU())
    (fwd,), (bwd,) = act_rows(gelu, _isa.OP_ACT), act_rows(gelu, _isa.OP_ACT_BWD)
    assert fwd[_isa.C_C] >= 0 and bwd[_isa.C_F1] == 1 and bwd[_isa.C_C] == fwd[_isa.C_C]
    (fwd,), (bwd,) = act_rows(relu, _isa.OP_ACT), act_rows(relu, _isa.OP_ACT_BWD)
    assert fwd[_isa.C_C] == -1 and bwd[_isa.C_F1] == 0
    other = make(fastbp.GELU())
    X, y = _data()
    for s in range(4):
        xb, yb = X[4 * s:4 * s + 8], y[4 * s:4 * s + 8]
        assert gelu(xb, yb) == other(xb, yb)
        gelu.predict(X[::-1])
    for name in gelu.params:
        np.testing.assert_array_equal(gelu.params[name], other.params[name])


@pytest.mark.extras
@pytest.mark.parametrize("kind", ["ln", "bn"])
def test_kept_derivative_training_vs_torch(kind):
    """LayerNorm -> SiLU and BatchNorm1d -> GELU (derivatives kept by the forward), AdamW,
    10 steps against PyTorch in float64, to 1e-10."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    norm, act = (torch.nn.LayerNorm(8), torch.nn.SiLU()) if kind == "ln" else (torch.nn.BatchNorm1d(8), torch.nn.GELU())
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=kind == "ln"), norm, act, torch.nn.Linear(8, 3)).double()
    ref = copy.deepcopy(tm)
    step = fastbp.from_torch(tm, optimizer=torch.optim.AdamW(tm.parameters(), lr=1e-2), batch_size=8)
    topt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    X = _ten_steps_like_torch(torch, step, ref, topt)
    ref.eval()
    np.testing.assert_allclose(step.predict(X), ref(torch.tensor(X)).detach().numpy(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------- state, modes, errors
@pytest.mark.parametrize("kind", ["ln", "bn"])
def test_checkpoint_resume_bitwise(kind, tmp_path):
    X, y = _data(n=48)
    a = fastbp.compile(_model(kind), optimizer=fastbp.Adam(1e-2), batch_size=8, dtype=np.float32, seed=7)
    a.fit(X.astype(np.float32), y, epochs=1, shuffle=True, seed=1)
    a.save(tmp_path / "c.npz")
    a.fit(X.astype(np.float32), y, epochs=1, shuffle=True, seed=2)
    b = fastbp.load(tmp_path / "c.npz")
    if kind == "bn":
        assert b.buffer_vector.size > 0
        assert b.buffers["1.num_batches_tracked"][0] == 6
    b.fit(X.astype(np.float32), y, epochs=1, shuffle=True, seed=2)
    assert a.param_vector.tobytes() == b.param_vector.tobytes()
    assert a.buffer_vector.tobytes() == b.buffer_vector.tobytes()
    np.testing.assert_array_equal(a.predict(X.astype(np.float32)), b.predict(X.astype(np.float32)))


def test_predict_eval_mode_and_one_row():
    step = fastbp.compile(_model("bn"), batch_size=4, dtype=np.float64, seed=0)
    X, y = _data(n=9)
    before = (step.param_vector.copy(), step.buffer_vector.copy())
    # eval mode: a single row is fine, and rows do not influence each other
    one = step.predict(X[:1])
    np.testing.assert_array_equal(step.predict(X)[:1], one)
    np.testing.assert_array_equal(step.buffer_vector, before[1])      # predict updates nothing
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        step(X[:1], y[:1])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        step.loss_and_grads(X[:1], y[:1])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        step.fit(X, y, epochs=1, shuffle=False)        # 9 rows, batches of 4: the last has 1
    assert step.param_vector.tobytes() == before[0].tobytes()
    assert step.buffer_vector.tobytes() == before[1].tobytes()
    step(X[:2], y[:2])      # two rows train
    assert step.buffers["1.num_batches_tracked"][0] == 1


def test_nonfinite_step_changes_no_running_stats():
    step = fastbp.compile(_model("bn"), batch_size=4, dtype=np.float64, seed=0)
    X, y = _data(n=4)
    X[0, 0] = np.nan
    before = step.buffer_vector.copy()
    with pytest.raises(FloatingPointError):
        step(X, y)
    assert step.buffer_vector.tobytes() == before.tobytes()


def test_track_running_stats_false_and_layers():
    m = fastbp.Sequential(fastbp.Linear(3, 4), fastbp.BatchNorm1d(4, track_running_stats=False, affine=False),
                          fastbp.Linear(4, 2), fastbp.LayerNorm((2,), elementwise_affine=False))
    step = fastbp.compile(m, loss="mse", batch_size=5, dtype=np.float64, seed=0)
    assert step.buffers == {} and step.buffer_vector.size == 0
    assert set(step.params) == {"0.W", "0.b", "2.W", "2.b"}
    x = np.random.default_rng(0).standard_normal((5, 3))
    out = step.predict(x)         # batch statistics in eval too, then LayerNorm rows: mean 0
    np.testing.assert_allclose(out.mean(1), 0, atol=1e-12)
    h = x @ step.params["0.W"] + step.params["0.b"]
    hn = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
    z = hn @ step.params["2.W"] + step.params["2.b"]
    np.testing.assert_allclose(out, (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5),
                               rtol=1e-10, atol=1e-12)
    assert fastbp.Sequential.from_spec(m.spec()).spec() == m.spec()


def test_batch_statistics_in_eval_take_at_most_one_minibatch():
    """track_running_stats=False normalises an eval call with the statistics of its rows:
    predict (and fit's validation data) of more than batch_size rows, which would be cut
    into minibatches normalised separately, is refused, before any training."""
    m = fastbp.Sequential(fastbp.Linear(4, 4), fastbp.BatchNorm1d(4, track_running_stats=False),
                          fastbp.Linear(4, 2))
    step = fastbp.compile(m, loss="mse", batch_size=8, dtype=np.float64, seed=0)
    X = np.random.default_rng(0).standard_normal((16, 4))
    assert step.predict(X[:8]).shape == (8, 2)
    with pytest.raises(ValueError, match=r"predict takes at most batch_size=8 rows at once \(got 9\)"):
        step.predict(X[:9])
    w = step.param_vector.copy()
    with pytest.raises(ValueError, match=r"validation_data takes at most batch_size=8 rows at once \(got 16\)"):
        step.fit(X, X[:, :2], epochs=1, validation_data=(X, X[:, :2]))
    assert step.n_steps == 0 and step.param_vector.tobytes() == w.tobytes()
    step.fit(X, X[:, :2], epochs=1, validation_data=(X[:8], X[:8, :2]))       # one minibatch: fine
    # with running statistics, any number of rows (each row normalised alike)
    tracked = fastbp.compile(_model("bn"), batch_size=4, dtype=np.float64, seed=0)
    Xt = _data(n=9)[0]
    np.testing.assert_array_equal(tracked.predict(Xt)[:4], tracked.predict(Xt[:4]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="normalized_shape"):
        fastbp.LayerNorm((2, 3))
    with pytest.raises(TypeError, match="normalized_shape"):
        fastbp.LayerNorm("4")
    with pytest.raises(ValueError, match="eps"):
        fastbp.LayerNorm(4, eps=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        fastbp.BatchNorm1d(4, momentum=1.5)
    with pytest.raises(TypeError, match="affine"):
        fastbp.BatchNorm1d(4, affine="yes")
    with pytest.raises(TypeError, match="num_features"):
        fastbp.BatchNorm1d(4.5)
    with pytest.raises(ValueError, match="receives 3 features"):
        fastbp.Sequential(fastbp.Linear(2, 3), fastbp.LayerNorm(4))
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    with pytest.raises(fastbp.GraphError, match="weight"):
        fastbp.layer_norm(x, g.param("w", np.ones(4)))


@pytest.mark.extras
def test_from_torch_rejects_unsupported():
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm((2, 3)))
    with pytest.raises(ValueError, match="last"):
        fastbp.from_torch(m)


_THREADS_SCRIPT = """
import hashlib, numpy as np, fastbp
for kind in (fastbp.LayerNorm, fastbp.BatchNorm1d):
    m = fastbp.Sequential(fastbp.Linear(64, 256), kind(256), fastbp.ReLU(), fastbp.Linear(256, 10))
    s = fastbp.compile(m, optimizer=fastbp.Adam(1e-3), batch_size=128, dtype=np.float32, seed=0)
    r = np.random.default_rng(0)
    X, y = r.standard_normal((1024, 64)).astype(np.float32), r.integers(0, 10, 1024)
    s.fit(X, y, epochs=2, seed=0)
    print(hashlib.sha256(s.param_vector.tobytes() + s.buffer_vector.tobytes()).hexdigest())
"""


@pytest.mark.thorough
def test_one_vs_two_threads():
    """numba's thread count changes nothing (the norm kernels reduce in a fixed order); the
    BLAS keeps one thread in both runs (its own results depend on its thread count)."""
    out = []
    for n in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=n, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        out.append(subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, check=True,
                                  capture_output=True, text=True).stdout)
    assert out[0] == out[1] and out[0].count("\n") == 2


_MPI_SCRIPT = """
import numpy as np
from mpi4py import MPI
import fastbp
from fastbp import distributed as dist
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
m = fastbp.Sequential(fastbp.Linear(4, 5), fastbp.BatchNorm1d(5, momentum=0.25), fastbp.Linear(5, 3))
d = dist.compile(m, optimizer=fastbp.SGD(lr=0.1), batch_size=6, dtype=np.float64, seed=1, comm=comm, threads=None)
r = np.random.default_rng(10 + rank)         # each rank its own rows
rm, rv = np.zeros(5), np.ones(5)
for _ in range(3):
    x, y = r.standard_normal((6, 4)) + rank, r.integers(0, 3, 6)
    h = x @ d.step.params["0.W"] + d.step.params["0.b"]
    rm = 0.75 * rm + 0.25 * h.mean(0)
    rv = 0.75 * rv + 0.25 * h.var(0, ddof=1)
    d(x, y)
b = d.step.buffers
ok = (np.allclose(b["1.running_mean"], rm, rtol=1e-12, atol=1e-15) and np.allclose(b["1.running_var"], rv, rtol=1e-12)
      and b["1.num_batches_tracked"][0] == 3 and d.in_sync())
others = comm.allgather(b["1.running_mean"].copy())
verdict = "ok" if ok and not np.array_equal(others[0], others[1]) else "BAD"
print(f"rank {rank} {verdict}", flush=True)   # one string: mpiexec may interleave the ranks' separate writes
"""


@pytest.mark.thorough
def test_batchnorm_statistics_are_per_rank_under_mpi():
    """Like PyTorch DDP without SyncBatchNorm: each rank's own statistics, the weights in sync."""
    pytest.importorskip("mpi4py")
    launcher = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(launcher):
        pytest.skip("no mpiexec next to the interpreter")
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "PMI_RANK")}
    res = subprocess.run([launcher, "-n", "2", sys.executable, "-c", _MPI_SCRIPT], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.count(" ok") == 2, res.stdout + res.stderr[-2000:]


def test_norms_with_residual_and_dropout(tmp_path):
    """Norm layers inside a Residual block and next to Dropout: parameters named by their
    place, training resumes bitwise from a checkpoint, predict (eval) is deterministic."""
    def model():
        return fastbp.Sequential(fastbp.Linear(5, 8), fastbp.BatchNorm1d(8), fastbp.ReLU(), fastbp.Dropout(0.2),
                                 fastbp.Residual(fastbp.Linear(8, 8), fastbp.LayerNorm(8), fastbp.Tanh()),
                                 fastbp.Linear(8, 3))
    m = model()
    assert fastbp.Sequential.from_spec(m.spec()).spec() == m.spec()
    X, y = _data(n=32, n_in=5)
    a = fastbp.compile(m, optimizer=fastbp.Adam(1e-2), batch_size=8, dtype=np.float64, seed=2)
    assert {"1.weight", "1.bias", "4.1.weight", "4.1.bias"} <= set(a.params)
    np.testing.assert_array_equal(a.params["4.1.weight"], np.ones(8))
    a.fit(X, y, epochs=1, seed=0)
    a.save(tmp_path / "c.npz")
    a.fit(X, y, epochs=1, seed=1)
    b = fastbp.load(tmp_path / "c.npz")
    b.fit(X, y, epochs=1, seed=1)
    assert a.param_vector.tobytes() == b.param_vector.tobytes()
    assert a.buffer_vector.tobytes() == b.buffer_vector.tobytes()
    np.testing.assert_array_equal(a.predict(X), a.predict(X))
