"""Dropout (issue 14): the counter-based mask against an independent numpy
implementation of the generator, its statistics, p=0 and eval mode, the fused
step against an unfused float64 reference (SGD and AdamW, 10 steps), finite
differences with a fixed mask, checkpoint resume, threads, and PyTorch.

The generator (``fastbp/_rng.py``): ``key = H(seed, layer, step)`` by chaining
lowbias32 over the 32-bit words of the seed, the dropout's layer id, and the
low and high words of the step count; element ``i`` (row-major in the
minibatch) gets ``bits = H(key, i)``; kept when ``(bits >> 8) / 2**24 < 1 - p``.
The reference below is written again from that description, vectorised.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import _isa

from reference import loss_and_grad, optimizer_update

L = fastbp.Linear

# ------------------------------------------------------ numpy reference generator
U = np.uint64
M32 = U(0xFFFFFFFF)


def ref_mix(x):
    x = np.asarray(x, dtype=np.uint64)
    x = x ^ (x >> U(16))
    x = (x * U(0x7FEB352D)) & M32
    x = x ^ (x >> U(15))
    x = (x * U(0x846CA68B)) & M32
    return x ^ (x >> U(16))


def ref_key(seed, layer, step):
    h = ref_mix((U(seed) & M32) ^ U(0x9E3779B9))
    h = ref_mix(h ^ (U(layer) & M32) ^ U(0x85EBCA6B))
    h = ref_mix(h ^ (U(step) & M32))
    return ref_mix(h ^ ((U(step) >> U(32)) & M32) ^ U(0xC2B2AE35))


def ref_keep(seed, layer, step, shape, p):
    """The boolean keep-mask of a (rows, cols) minibatch."""
    idx = np.arange(int(np.prod(shape)), dtype=np.uint64)
    key = ref_key(seed, layer, step)
    bits = ref_mix(key ^ (idx & M32))
    bits = ref_mix(bits ^ ((idx >> U(32)) & M32) ^ U(0x85EBCA6B))
    u = (bits >> U(8)).astype(np.float64) * 2.0 ** -24
    return (u < 1.0 - p).reshape(shape)


def ref_mask(seed, layer, step, shape, p):
    """The float64 multiplier ``keep / (1 - p)`` (PyTorch's ``noise``)."""
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0
    return np.where(ref_keep(seed, layer, step, shape, p), scale, 0.0)


def seed_key(seed):
    return int(np.random.SeedSequence([seed, 0x64726F70]).generate_state(1, dtype=np.uint32)[0])


# ---------------------------------------------------------------- the mask
def test_generator_matches_reference_scalar_and_key_words():
    """The scalar body (plain Python, the one compiled for CPU and CUDA) equals the
    vectorised reference, for large layer ids, step counts above 2**32 and indices
    above 2**32 (the high words are used)."""
    from fastbp import _rng
    for seed, layer, step in ((0, 0, 0), (2**32 - 1, 7, 2**33 + 5), (12345, 2**31, 1)):
        key = _rng.stream_key(seed, layer, step)
        assert int(key) == int(ref_key(seed, layer, step))
        for i in (0, 1, 2**32 - 1, 2**32, 2**40 + 3):
            bits = ref_mix(ref_mix(key ^ (U(i) & M32)) ^ ((U(i) >> U(32)) & M32) ^ U(0x85EBCA6B))
            assert int(_rng.element_bits(key, i)) == int(bits)
    assert _rng.stream_key(1, 0, 0) != _rng.stream_key(1, 0, 2**32)     # the step's high word counts
    assert _rng.seed_key(5) == seed_key(5) and 0 <= _rng.seed_key(None) < 2**32


def test_cpu_word_operations_match_the_reference():
    """The CPU compiles the generator with 32-bit integer intrinsics (fastbp.kernels.words):
    its lowbias32 equals the reference on edge words and 2**18 random ones, and its kernel's
    mask equals the reference where the element index crosses 2**32 inside a row (the high
    word changes mid-row) and with a step above 2**32, in both dtypes."""
    from numba import njit
    from fastbp.kernels import dropout as kd

    @njit
    def mix_all(words, out):
        for i in range(words.shape[0]):
            out[i] = kd._mix(words[i])

    words = np.concatenate([np.array([0, 1, 2**31 - 1, 2**31, 2**32 - 1], dtype=np.uint64),
                            np.random.default_rng(3).integers(0, 2**32, 2**18, dtype=np.uint64)])
    out = np.empty_like(words)
    mix_all(words, out)
    np.testing.assert_array_equal(out, ref_mix(words))
    rows, cols, p = 3, 1000, 0.4
    row0 = 2**32 // cols - 1                  # rows 4294966 .. 4294968: index 2**32 in the middle
    seed, layer, step = 2**32 - 1, 5, 2**33 + 7
    for dtype in (np.float32, np.float64):
        A = np.random.default_rng(4).standard_normal((rows, cols)).astype(dtype)
        out = np.full_like(A, np.nan)
        kd._dropout.serial(A, out, seed, layer, step, row0, p, False)
        idx = (row0 + np.arange(rows, dtype=np.uint64)[:, None]) * U(cols) + np.arange(cols, dtype=np.uint64)
        key = ref_key(seed, layer, step)
        bits = ref_mix(ref_mix(key ^ (idx & M32)) ^ ((idx >> U(32)) & M32) ^ U(0x85EBCA6B))
        keep = (bits >> U(8)).astype(np.float64) * 2.0 ** -24 < 1.0 - p
        scale = dtype(1) / dtype(1 - p)
        np.testing.assert_array_equal(out, np.where(keep, A * scale, dtype(0)))
        assert 0 < keep[:, :cols // 2].sum() and (idx >= 2**32).any() and (idx < 2**32).any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0])
def test_mask_exact_vs_reference_and_gradient(p):
    """fastbp.grad of sum(dropout(x)): the value is sum(x * mask) and d/dx is the mask
    itself (seed 0, layer 0, step 0), bitwise the reference's."""
    g = fastbp.Graph()
    x = g.input("x", (None, 37))
    f = fastbp.grad(fastbp.sum(fastbp.dropout(x, p)), wrt=[x], batch_size=29)
    X = np.random.default_rng(0).standard_normal((29, 37))
    value, grads = f(x=X)
    m = ref_mask(0, 0, 0, (29, 37), p)
    np.testing.assert_array_equal(grads["x"], m)
    assert value == pytest.approx(float(np.sum(X * m)), rel=1e-12, abs=1e-12)
    value2, grads2 = f(x=X)             # no update in between: the same mask
    np.testing.assert_array_equal(grads2["x"], m)


def test_mask_statistics():
    """1e5 elements: the fraction kept is 1 - p (4 sigma), the scaled mask averages 1,
    neighbours and the two layers' masks are uncorrelated."""
    p = 0.3
    n = 100_000
    keep = ref_keep(seed_key(0), 0, 0, (n,), p)
    g = fastbp.Graph()
    x = g.input("x", (None, 100))
    f = fastbp.grad(fastbp.sum(fastbp.dropout(x, p)), wrt=[x], batch_size=1000)
    _, grads = f(x=np.ones((1000, 100)))
    kept = grads["x"] != 0
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 4 * sigma
    assert abs(grads["x"].mean() - 1.0) < 4 * sigma / (1 - p)
    k = kept.ravel().astype(np.float64)
    assert abs(np.corrcoef(k[:-1], k[1:])[0, 1]) < 0.02
    assert abs(np.corrcoef(k, keep.astype(np.float64))[0, 1]) < 0.02      # another stream
    assert np.all(np.unique(grads["x"]) == np.array([0.0, np.float64(1.0) / 0.7]))


def _dropout_nodes(step):
    return [n for n in step.graph.nodes if n.op == "dropout"]


def _buf(step, node, nb):
    off, r, c = (int(v) for v in step.plan.bufs[step.plan.value_buf[node.id]])
    return step.arena[off:off + nb * c].reshape(nb, c).copy()


def test_step_mask_per_layer_and_step():
    """In a step: dropout k's output is its input times the reference mask of
    (the step's seed key, k, updates so far); a partial batch uses the first rows'."""
    model = fastbp.Sequential(L(5, 9), fastbp.Dropout(0.25), L(9, 7), fastbp.Dropout(0.6), L(7, 3))
    st = fastbp.compile(model, loss="softmax_cross_entropy", optimizer=fastbp.SGD(lr=0.1), batch_size=6,
                        dtype=np.float64, seed=11)
    assert st.hyper[_isa.H_RNG_SEED] == seed_key(11)
    rng = np.random.default_rng(1)
    nodes = _dropout_nodes(st)
    assert len(nodes) == 2
    for n_rows in (6, 6, 4):
        x, y = rng.standard_normal((n_rows, 5)), rng.integers(0, 3, n_rows)
        t = st.n_steps
        st.loss_and_grads(x, y)
        for k, (node, p) in enumerate(zip(nodes, (0.25, 0.6))):
            a = _buf(st, node.inputs[0], n_rows)
            out = _buf(st, node, n_rows)
            np.testing.assert_array_equal(out, a * ref_mask(seed_key(11), k, t, a.shape, p))
        st(x, y)
        assert st.n_steps == t + 1


# ----------------------------------------------------- p = 0, eval mode, errors
def test_p0_is_bitwise_no_dropout():
    def run(layers):
        st = fastbp.compile(fastbp.Sequential(*layers), loss="mse", optimizer=fastbp.Adam(lr=0.01),
                            batch_size=4, dtype=np.float32, seed=2)
        rng = np.random.default_rng(3)
        for _ in range(3):
            st(rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32))
        return st
    a = run([L(4, 5), fastbp.ReLU(), fastbp.Dropout(0.0), L(5, 2)])
    b = run([L(4, 5), fastbp.ReLU(), L(5, 2)])
    np.testing.assert_array_equal(a.plan.tape, b.plan.tape)
    assert a.param_vector.tobytes() == b.param_vector.tobytes()
    g = fastbp.Graph()
    x = g.input("x", (3,))
    assert fastbp.dropout(x, 0) is x and fastbp.dropout(x, 0.0) is x


def test_predict_has_no_dropout_and_does_not_disturb_training():
    model = fastbp.Sequential(L(4, 6), fastbp.Tanh(), fastbp.Dropout(0.5), L(6, 3))
    rng = np.random.default_rng(4)
    X = rng.standard_normal((10, 4))
    Y = rng.integers(0, 3, 10)

    def make():
        return fastbp.compile(model, loss="softmax_cross_entropy", optimizer=fastbp.SGD(lr=0.2), batch_size=5,
                              dtype=np.float64, seed=5)
    a, b = make(), make()
    P = a.params
    ref = np.tanh(X @ P["0.W"] + P["0.b"]) @ P["3.W"] + P["3.b"]
    np.testing.assert_allclose(a.predict(X), ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(a.predict(X), a.predict(X))
    for s in range(3):
        a(X[:5], Y[:5])
        a.predict(X)                     # eval mode for that call only
        b(X[:5], Y[:5])
    assert a.param_vector.tobytes() == b.param_vector.tobytes()
    assert a.hyper[_isa.H_TRAINING] == 1.0
    # fit's validation is evaluated in eval mode: its loss is the loss of predict's outputs
    hist = a.fit(X, Y, epochs=1, shuffle=False, validation_data=(X, Y))
    assert hist.history["val_loss"][0] == pytest.approx(loss_and_grad("softmax_cross_entropy", a.predict(X), Y)[0],
                                                        rel=1e-12)
    assert a.hyper[_isa.H_TRAINING] == 1.0


@pytest.mark.parametrize("bad,exc", [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                                     ("0.5", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_p(bad, exc):
    with pytest.raises(exc, match=r"\bp\b"):
        fastbp.Dropout(bad)
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    n = len(g.nodes)
    with pytest.raises(exc, match=r"\bp\b"):
        fastbp.dropout(x, bad)
    assert len(g.nodes) == n            # a rejected call changes nothing


def test_spec_round_trip_and_repr():
    m = fastbp.Sequential(L(3, 4), fastbp.ReLU(), fastbp.Dropout(0.2), L(4, 2))
    assert fastbp.Sequential.from_spec(m.spec()).spec() == m.spec()
    assert repr(m.layers[2]) == "Dropout(p=0.2)" and fastbp.Dropout().p == 0.5
    assert fastbp.Dropout(0.1, inplace=True).p == 0.1             # PyTorch's signature; no effect
    with pytest.raises(TypeError, match="inplace"):
        fastbp.Dropout(0.1, inplace="yes")


# ------------------------------------------- fused step vs unfused reference
P1, P2 = 0.3, 0.5


def _ref_step_grads(params, x, y, m1, m2):
    """Linear -> ReLU -> Dropout -> Linear -> Tanh -> Dropout -> Linear, softmax cross-entropy."""
    h1 = np.maximum(x @ params["0.W"] + params["0.b"], 0)
    d1 = h1 * m1
    h2 = np.tanh(d1 @ params["3.W"] + params["3.b"])
    d2 = h2 * m2
    S = d2 @ params["6.W"] + params["6.b"]
    loss, dS = loss_and_grad("softmax_cross_entropy", S, y)
    g = {"6.W": d2.T @ dS, "6.b": dS.sum(0)}
    dz2 = (dS @ params["6.W"].T) * m2 * (1 - h2 * h2)
    g["3.W"], g["3.b"] = d1.T @ dz2, dz2.sum(0)
    dz1 = (dz2 @ params["3.W"].T) * m1 * (h1 > 0)
    g["0.W"], g["0.b"] = x.T @ dz1, dz1.sum(0)
    return loss, g


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_fused_step_matches_reference(opt):
    model = fastbp.Sequential(L(6, 8), fastbp.ReLU(), fastbp.Dropout(P1), L(8, 8), fastbp.Tanh(),
                              fastbp.Dropout(P2), L(8, 3))
    make = {"sgd": lambda: fastbp.SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
            "adamw": lambda: fastbp.Adam(lr=0.01, weight_decay=0.1, decoupled=True)}[opt]
    st = fastbp.compile(model, loss="softmax_cross_entropy", optimizer=make(), batch_size=8, dtype=np.float64,
                        seed=21)
    params = {k: v.copy() for k, v in st.params.items()}
    state = {}
    key = seed_key(21)
    rng = np.random.default_rng(8)
    for t in range(10):
        n = 8 if t % 3 else 5
        x, y = rng.standard_normal((n, 6)), rng.integers(0, 3, n)
        m1 = ref_mask(key, 0, t, (n, 8), P1)
        m2 = ref_mask(key, 1, t, (n, 8), P2)
        lref, g = _ref_step_grads(params, x, y, m1, m2)
        assert st(x, y) == pytest.approx(lref, rel=1e-10, abs=1e-12)
        optimizer_update(make(), params, g, state)
    for k, v in params.items():
        np.testing.assert_allclose(st.params[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


def test_finite_differences_with_fixed_mask():
    """loss_and_grads keeps the mask (no update in between): central differences
    of the loss in float64 match the analytic gradients."""
    model = fastbp.Sequential(L(4, 6), fastbp.Tanh(), fastbp.Dropout(0.4), L(6, 3))
    st = fastbp.compile(model, loss="softmax_cross_entropy", optimizer=fastbp.SGD(lr=0.1), batch_size=5,
                        dtype=np.float64, seed=3)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    st.loss_and_grads(x, y)
    grads = {k: v.copy() for k, v in st.grads.items()}
    eps = 1e-6
    for k, w in st.params.items():
        for idx in list(np.ndindex(w.shape))[:: max(1, w.size // 6)]:
            old = w[idx]
            w[idx] = old + eps
            lp = st.loss_and_grads(x, y)
            w[idx] = old - eps
            lm = st.loss_and_grads(x, y)
            w[idx] = old
            assert (lp - lm) / (2 * eps) == pytest.approx(grads[k][idx], rel=1e-6, abs=1e-8), (k, idx)


# ------------------------------------------------------ checkpoints, threads
@pytest.mark.parametrize("seed", [7, None])
def test_checkpoint_resume_bitwise(tmp_path, seed):
    model = fastbp.Sequential(L(5, 8), fastbp.ReLU(), fastbp.Dropout(0.5), L(8, 3))
    st = fastbp.compile(model, loss="softmax_cross_entropy", optimizer=fastbp.Adam(lr=0.01), batch_size=4,
                        dtype=np.float32, seed=seed)
    rng = np.random.default_rng(6)
    data = [(rng.standard_normal((4, 5)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(6)]
    for x, y in data[:3]:
        st(x, y)
    st.save(tmp_path / "c.fbp")
    for x, y in data[3:]:
        st(x, y)
    back = fastbp.load(tmp_path / "c.fbp")
    assert back.hyper[_isa.H_RNG_SEED] == st.hyper[_isa.H_RNG_SEED]
    for x, y in data[3:]:
        back(x, y)
    assert back.param_vector.tobytes() == st.param_vector.tobytes()


_THREADS_CHILD = r"""
import hashlib, numpy as np, fastbp
model = fastbp.Sequential(fastbp.Linear(20, 64), fastbp.ReLU(), fastbp.Dropout(0.3), fastbp.Linear(64, 4))
st = fastbp.compile(model, loss="softmax_cross_entropy", optimizer=fastbp.SGD(lr=0.05, momentum=0.9),
                    batch_size=128, dtype=np.float64, seed=1)
rng = np.random.default_rng(0)
X = rng.standard_normal((512, 20)); Y = rng.integers(0, 4, 512)
st.fit(X, Y, epochs=2, seed=3)
print(hashlib.sha256(st.param_vector.tobytes()).hexdigest())
"""


@pytest.mark.thorough       # two cold child processes
def test_one_and_two_threads_identical(tmp_path):
    outs = []
    for n in (1, 2):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(n))
        r = subprocess.run([sys.executable, "-c", _THREADS_CHILD], env=env, capture_output=True, text=True,
                           timeout=600, cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(r.stdout.strip().splitlines()[-1])
    assert outs[0] == outs[1]


# ------------------------------------------------------------------- PyTorch
def test_from_torch_eval_and_training_math():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Dropout(0.4, inplace=True),
                              torch.nn.Linear(7, 3)).double()
    ref = copy.deepcopy(net)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.05)
    st = fastbp.from_torch(net, loss=torch.nn.CrossEntropyLoss(),
                           optimizer=torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.05),
                           batch_size=6, seed=9)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((6, 5))
    ref.eval()
    with torch.no_grad():
        np.testing.assert_allclose(st.predict(X), ref(torch.from_numpy(X)).numpy(), rtol=1e-13, atol=1e-14)
    ref.train()
    key = seed_key(9)
    for t in range(4):
        x, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
        mask = torch.from_numpy(ref_mask(key, 0, t, (6, 7), 0.4))
        h = torch.relu(ref[0](torch.from_numpy(x))) * mask        # the dropout with fastbp's mask
        loss = torch.nn.functional.cross_entropy(ref[3](h), torch.from_numpy(y))
        opt_ref.zero_grad()
        loss.backward()
        opt_ref.step()
        assert st(x, y) == pytest.approx(loss.item(), rel=1e-12)
    for a, b in zip(net.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)
