"""precision="bf16": the rounding, the products, the step, and the errors a user meets.

The rounding and the small-product loops run everywhere (no oneDNN needed);
what calls oneDNN's bf16 gemm needs the ``bf16`` extra and a CPU with
AVX512-BF16 or AMX (marker ``extras``: CI's second stage installs oneDNN).
"""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import _bf16
from fastbp.kernels import bf16 as kb

OK, WHY = _bf16.available()
#: tests that call oneDNN: CI's second stage (extras) installs it
bf16_only = pytest.mark.skipif(not OK, reason=WHY or "bf16 available")


@pytest.fixture(autouse=True)
def every_layer_in_bf16(monkeypatch):
    """The tests' small models in bf16 too: layers below config.BF16_MIN_MACS stay float32
    otherwise (tested by test_layers_below_the_size_threshold_stay_float32)."""
    monkeypatch.setattr(fastbp.config, "BF16_MIN_MACS", 0)


# ------------------------------------------------------------------ reference
def bf16_ref(x):
    """float32 -> nearest bfloat16 (ties to even) by float64 arithmetic: an independent
    reference of fastbp's bit manipulation (bf16 has 8 significand bits and float32's
    exponent range, subnormals included)."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    out = np.empty_like(x)
    for idx, v in np.ndenumerate(x):
        if not np.isfinite(v) or v == 0.0:
            out[idx] = v
            continue
        e = max(int(np.floor(np.log2(abs(v)))), -126)
        ulp = 2.0 ** (e - 7)
        out[idx] = np.round(v / ulp) * ulp          # np.round: half to even
    with np.errstate(over="ignore"):
        return out.astype(np.float32)


def unpack(packed, cols):
    """A bf16 matrix in fastbp's layout (uint32 pairs in a float32 buffer) as float32."""
    u = np.ascontiguousarray(packed).view(np.uint32)
    lo = (u & 0xFFFF).astype(np.uint32) << 16
    hi = (u >> 16).astype(np.uint32) << 16
    both = np.empty((u.shape[0], 2 * u.shape[1]), np.uint32)
    both[:, 0::2] = lo
    both[:, 1::2] = hi
    return both[:, :cols].view(np.float32)


def to_bf16(a):
    a = np.ascontiguousarray(a, dtype=np.float32)
    out = np.full((a.shape[0], (a.shape[1] + 1) // 2), np.nan, np.float32)
    kb._to_bf16(a, out)
    return out


# ------------------------------------------------------------------ rounding
@pytest.mark.parametrize("cols", [1, 2, 7, 64])
def test_rounding_to_bf16_matches_an_independent_reference(cols):
    rng = np.random.default_rng(cols)
    a = (rng.standard_normal((5, cols)) * 10.0 ** rng.integers(-40, 38, (5, cols))).astype(np.float32)
    got = unpack(to_bf16(a), cols)
    np.testing.assert_array_equal(got, bf16_ref(a))


def test_rounding_ties_go_to_even_and_specials_keep_their_meaning():
    f32 = np.finfo(np.float32)
    bits = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F807FFF, 0x3F808001], np.uint32)   # ties, near-ties
    vals = np.concatenate([bits.view(np.float32), np.array(
        [0.0, -0.0, np.inf, -np.inf, f32.max, -f32.max, f32.tiny, f32.smallest_subnormal, 1e-40, 3.0e38],
        np.float32)])
    got = unpack(to_bf16(vals[None, :]), vals.size)[0]
    np.testing.assert_array_equal(got, bf16_ref(vals))
    assert got[0] == 1.0 and got[1] == np.float32(1.015625) and got[2] == -1.0    # to even, both ways
    assert np.isinf(got[vals == f32.max]).all()       # past bf16's largest: infinity, as IEEE rounds
    assert np.signbit(got[6]) and got[6] == 0.0
    nan = np.array([[np.nan, -np.nan, np.float32(np.uint32(0x7F800001).view(np.float32))]], np.float32)
    out = unpack(to_bf16(nan), 3)[0]
    assert np.isnan(out).all()                          # a signalling NaN's payload would round to inf
    assert list(np.signbit(out)) == list(np.signbit(nan[0]))


def test_an_odd_column_count_writes_nothing_past_the_last_column():
    packed = np.full((3, 3), np.float32(np.uint32(0xABCD1234).view(np.float32)), np.float32)
    kb._to_bf16(np.ones((3, 5), np.float32), packed)
    assert (packed.view(np.uint32)[:, 2] >> 16 == 0xABCD).all()          # the padding half untouched
    np.testing.assert_array_equal(unpack(packed, 5), np.ones((3, 5), np.float32))


# ------------------------------------------------------------------ products
def _operands(rng, m, n, k, ta, tb):
    A = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    B = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    ref = ((bf16_ref(A).astype(np.float64).T if ta else bf16_ref(A).astype(np.float64))
           @ (bf16_ref(B).astype(np.float64).T if tb else bf16_ref(B).astype(np.float64)))
    return A, B, ref


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_small_bf16_products_in_loops(ta, tb):
    rng = np.random.default_rng(3)
    A, B, ref = _operands(rng, 5, 3, 7, ta, tb)
    C = np.full((5, 3), 0.5, np.float32)
    kb._mm_small_bf16(to_bf16(A), to_bf16(B), C, ta, tb, True, 7)
    np.testing.assert_allclose(C, ref + 0.5, rtol=1e-5, atol=1e-5)
    kb._mm_small_bf16(to_bf16(A), to_bf16(B), C, ta, tb, False, 7)
    np.testing.assert_allclose(C, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(9, 13, 31), (64, 100, 33), (300, 130, 257)])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("acc", [False, True])
@pytest.mark.extras
@bf16_only
def test_the_bf16_product_is_the_float32_accumulated_product_of_the_rounded_operands(shape, ta, tb, acc):
    _bf16.require()
    m, n, k = shape
    rng = np.random.default_rng(m)
    A, B, ref = _operands(rng, m, n, k, ta, tb)
    C0 = rng.standard_normal((m, n)).astype(np.float32)
    C = C0.copy()
    kb._mm_bf16(to_bf16(A), to_bf16(B), C, ta, tb, acc, k)
    want = ref + (C0 if acc else 0.0)
    np.testing.assert_allclose(C, want, rtol=2e-5, atol=2e-5 * np.sqrt(k))


# ------------------------------------------------------------------ the step
def _mlp(sizes, act=fastbp.ReLU):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(fastbp.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return fastbp.Sequential(*layers)


def _pair(model, bs, opt, **kw):
    full = fastbp.compile(model, optimizer=opt, batch_size=bs, seed=1, **kw)
    half = fastbp.compile(model, optimizer=opt, batch_size=bs, seed=1, precision="bf16", **kw)
    return full, half


@pytest.mark.parametrize("sizes,bs,opt", [((64, 32, 10), 32, fastbp.SGD(lr=0.1)),
                                          ((784, 128, 10), 64, fastbp.SGD(lr=0.05, momentum=0.9)),
                                          ((300, 257, 129, 10), 100, fastbp.AdamW(lr=1e-3))])
@pytest.mark.extras
@bf16_only
def test_bf16_training_follows_float32_within_two_percent_after_200_steps(sizes, bs, opt):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((sizes[-1], sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], 4 * bs)
    X = (centers[y] + rng.standard_normal((4 * bs, sizes[0]))).astype(np.float32)
    full, half = _pair(_mlp(sizes), bs, opt)
    assert (full.precision, half.precision) == ("full", "bf16")
    assert np.array_equal(full.param_vector, half.param_vector)       # the same float32 start
    for i in range(200):
        s = slice((i % 4) * bs, (i % 4 + 1) * bs)
        lf, lh = full(X[s], y[s]), half(X[s], y[s])
    assert abs(lh - lf) <= 0.02 * abs(lf) + 1e-4, (lf, lh)
    assert half.param_vector.dtype == np.float32
    # predict: eval mode, float32 output, close to the float32 step's
    pf, ph = full.predict(X), half.predict(X)
    assert ph.dtype == np.float32
    assert np.mean(pf.argmax(1) == ph.argmax(1)) > 0.97


@pytest.mark.extras
@bf16_only
def test_bf16_gradients_are_the_float32_gradients_to_bf16_accuracy():
    rng = np.random.default_rng(1)
    model = _mlp((40, 33, 17, 5), fastbp.Tanh)
    full, half = _pair(model, 24, fastbp.SGD(lr=0.1))
    X = rng.standard_normal((24, 40)).astype(np.float32)
    y = rng.integers(0, 5, 24)
    lf, lh = full.loss_and_grads(X, y), half.loss_and_grads(X, y)
    assert abs(lf - lh) < 1e-2 * abs(lf)
    for name in full.grads:
        g, h = full.grads[name], half.grads[name]
        err = np.linalg.norm(h - g) / np.linalg.norm(g)
        assert err < 2e-2, (name, err)        # a few bf16 roundings (2**-9 each) deep
        assert not np.array_equal(h, g)       # the products did run in bf16


@pytest.mark.extras
@bf16_only
def test_bf16_with_gelu_batchnorm_dropout_and_a_residual_block_trains():
    rng = np.random.default_rng(2)
    model = fastbp.Sequential(fastbp.Linear(20, 64), fastbp.BatchNorm1d(64), fastbp.GELU(), fastbp.Dropout(0.1),
                              fastbp.Residual(fastbp.Linear(64, 64), fastbp.SiLU()), fastbp.Linear(64, 3))
    X = rng.standard_normal((90, 20)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    full, half = _pair(model, 30, fastbp.Adam(lr=3e-3))
    for ep in range(60):
        for s in range(0, 90, 30):
            lf, lh = full(X[s:s + 30], y[s:s + 30]), half(X[s:s + 30], y[s:s + 30])
    assert lh < 0.25 and abs(lh - lf) < 0.1, (lf, lh)
    assert np.mean(half.predict(X).argmax(1) == y) > 0.95


@pytest.mark.extras
@bf16_only
def test_bf16_weights_stored_transposed_from_torch():
    torch = pytest.importorskip("torch")
    tm = torch.nn.Sequential(torch.nn.Linear(30, 21), torch.nn.ReLU(), torch.nn.Linear(21, 4))
    X = np.random.default_rng(0).standard_normal((16, 30)).astype(np.float32)
    y = np.arange(16) % 4
    full = fastbp.from_torch(tm, loss=torch.nn.CrossEntropyLoss(),
                             optimizer=torch.optim.SGD(tm.parameters(), lr=0.1), batch_size=16)
    tm2 = copy.deepcopy(tm)      # (a second from_torch of tm itself would take its tensors from the first step)
    half = fastbp.from_torch(tm2, loss=torch.nn.CrossEntropyLoss(),
                             optimizer=torch.optim.SGD(tm2.parameters(), lr=0.1), batch_size=16, precision="bf16")
    assert half.precision == "bf16" and int(full.plan.tape[1, 9]) == 1      # C_F1: W stored transposed
    for _ in range(20):
        lf, lh = full(X, y), half(X, y)
    assert abs(lf - lh) < 0.02 * lf + 1e-3


@pytest.mark.extras
@bf16_only
def test_a_bf16_step_checkpoints_float32_weights_and_reloads(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((32, 12)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    step = fastbp.compile(_mlp((12, 16, 3)), batch_size=32, precision="bf16", optimizer="adam")
    for _ in range(3):
        step(X, y)
    step.save(tmp_path / "m.npz")
    back = fastbp.load(tmp_path / "m.npz")
    assert back.precision == "full" and back.dtype == np.float32
    np.testing.assert_array_equal(back.param_vector, step.param_vector)
    again = fastbp.load(tmp_path / "m.npz", precision="bf16")
    assert again.precision == "bf16"
    assert again(X, y) == step(X, y)          # resumed bitwise: same weights, state and products


@pytest.mark.extras
@bf16_only
def test_bf16_results_are_the_same_on_one_and_two_openmp_threads():
    code = ("import numpy as np, fastbp\n"
            "rng = np.random.default_rng(0)\n"
            "m = fastbp.Sequential(fastbp.Linear(784, 512), fastbp.ReLU(), fastbp.Linear(512, 10))\n"
            "X = rng.standard_normal((256, 784)).astype(np.float32); y = rng.integers(0, 10, 256)\n"
            "s = fastbp.compile(m, batch_size=256, precision='bf16')\n"
            "for _ in range(3): s(X, y)\n"
            "import hashlib; print(hashlib.sha256(s.param_vector.tobytes()).hexdigest())\n")
    outs = []
    for t in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=t)
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   timeout=300, check=True).stdout)
    assert outs[0] == outs[1]


@pytest.mark.extras
@bf16_only
def test_layers_below_the_size_threshold_stay_float32(monkeypatch):
    from fastbp import _isa
    rng = np.random.default_rng(5)
    model = _mlp((300, 100, 10))                   # batch 40: 1.2 M and 40 K multiply-adds
    X = rng.standard_normal((40, 300)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    monkeypatch.setattr(fastbp.config, "BF16_MIN_MACS", 1 << 20)
    mixed = fastbp.compile(model, batch_size=40, precision="bf16")
    ops = list(mixed.plan.tape[:, _isa.C_OP])
    assert ops.count(_isa.OP_LINEAR_BF16) == 1 and ops.count(_isa.OP_LINEAR) == 1
    assert ops.count(_isa.OP_LINEAR_BWD_BF16) == 1 and ops.count(_isa.OP_LINEAR_BWD) == 1
    monkeypatch.setattr(fastbp.config, "BF16_MIN_MACS", 1 << 30)
    none = fastbp.compile(model, batch_size=40, precision="bf16")
    full = fastbp.compile(model, batch_size=40)
    assert none.precision == "bf16" and not set(none.plan.tape[:, _isa.C_OP]) & {_isa.OP_LINEAR_BF16,
                                                                                _isa.OP_LINEAR_BWD_BF16}
    for _ in range(3):
        assert none(X, y) == full(X, y)              # all float32: bitwise the full step
        mixed(X, y)
    np.testing.assert_array_equal(none.param_vector, full.param_vector)
    assert not np.array_equal(mixed.param_vector, full.param_vector)


# ------------------------------------------------------------------ what a user is told
def test_precision_is_checked_and_named():
    m = _mlp((4, 3))
    with pytest.raises(TypeError, match="precision"):
        fastbp.compile(m, precision=16)
    with pytest.raises(ValueError, match="precision must be one of"):
        fastbp.compile(m, precision="fp8")
    with pytest.raises(ValueError, match="dtype must be float32"):
        fastbp.compile(m, precision="bf16", dtype=np.float64)
    assert fastbp.compile(m, precision="auto", dtype=np.float64).precision == "full"
    assert fastbp.compile(m, precision="FULL").precision == "full"
    assert fastbp.compile(m, precision="auto").precision == ("bf16" if OK else "full")


def test_bf16_on_cuda_is_a_value_error_before_any_device_is_needed():
    with pytest.raises(ValueError, match="CPU only"):
        _bf16.resolve("bf16", np.float32, "cuda")
    assert _bf16.resolve("auto", np.float32, "cuda") == "full"
    # compile checks the argument before looking for a GPU (a RuntimeError without one)
    with pytest.raises(ValueError, match="CPU only"):
        fastbp.compile(_mlp((4, 3)), device="cuda", precision="bf16")


def test_loading_a_float64_checkpoint_in_bf16_names_the_argument_not_the_file(tmp_path):
    path = tmp_path / "f64.npz"
    fastbp.compile(_mlp((4, 3)), dtype=np.float64, batch_size=4).save(path)
    with pytest.raises(ValueError, match=r"^precision='bf16' keeps float32 master weights.*this checkpoint "
                                         r"holds a float64 step"):
        fastbp.load(path, precision="bf16")
    assert fastbp.load(path, precision="auto").precision == "full"


def test_a_cpu_without_bf16_instructions_is_named(monkeypatch):
    assert _bf16.cpu_support(set()) == ()
    assert _bf16.cpu_support({"avx512f", "amx_bf16"}) == ("amx_bf16",)
    monkeypatch.setattr(_bf16, "cpu_support", lambda flags=None: ())
    with pytest.raises(RuntimeError, match="AVX512-BF16 or AMX-BF16"):
        fastbp.compile(_mlp((4, 3)), precision="bf16")
    assert fastbp.compile(_mlp((4, 3)), precision="auto").precision == "full"


def test_a_missing_onednn_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(_bf16, "cpu_support", lambda flags=None: ("avx512_bf16",))
    monkeypatch.setattr(_bf16, "_state", {"lib": None, "error": None, "ready": False, "path": None})
    monkeypatch.setenv(_bf16.ENV_VAR, str(tmp_path / "libdnnl.so.3"))
    with pytest.raises(ImportError, match=_bf16.ENV_VAR):
        fastbp.compile(_mlp((4, 3)), precision="bf16")
    monkeypatch.delenv(_bf16.ENV_VAR)
    monkeypatch.setattr(_bf16, "_candidates", lambda: [])
    monkeypatch.setattr(_bf16, "_state", {"lib": None, "error": None, "ready": False, "path": None})
    with pytest.raises(ImportError, match=r"pip install -e '\.\[bf16\]' in the fastbp clone"):
        fastbp.compile(_mlp((4, 3)), precision="bf16")


def test_the_estimators_take_precision():
    pytest.importorskip("sklearn")
    from fastbp.estimator import MLPClassifier, MLPRegressor
    assert MLPClassifier().get_params()["precision"] == "full"
    assert MLPRegressor(precision="auto").get_params()["precision"] == "auto"
    X = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(ValueError, match="precision"):
        MLPClassifier(precision="half").fit(X, y)
    if OK:
        kw = dict(hidden_layer_sizes=(16,), max_iter=30, random_state=0, learning_rate_init=0.01)
        with pytest.warns(Warning):     # not converged in 30 iterations
            ref = MLPClassifier(**kw).fit(X, y)
            clf = MLPClassifier(precision="bf16", **kw).fit(X, y)
        assert clf._step.precision == "bf16" and ref._step.precision == "full"
        assert abs(clf.loss_ - ref.loss_) < 0.02 * ref.loss_
        assert np.mean(clf.predict(X) == ref.predict(X)) >= 0.95


# ------------------------------------------------------------------ the command line
def _train(capsys, *args):
    pytest.importorskip("sklearn")
    pytest.importorskip("pandas")
    from fastbp import cli
    capsys.readouterr()
    rc = cli.main(["train", "--epochs", "10", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_the_cli_names_what_bf16_lacks(capsys, monkeypatch):
    monkeypatch.setattr(_bf16, "cpu_support", lambda flags=None: ())
    rc, out, err = _train(capsys, "--precision", "bf16")
    assert rc != 0 and "Traceback" not in err
    assert "--precision bf16" in err and "AVX512-BF16" in err


@pytest.mark.extras
@bf16_only
def test_the_cli_trains_the_digits_in_bf16_as_accurately_as_in_float32(capsys):
    import re
    acc = {}
    for p in ("full", "bf16"):
        rc, out, err = _train(capsys, "--precision", p)
        assert rc == 0, err
        acc[p] = float(re.search(r"^test accuracy: ([0-9.]+)", out, re.M).group(1))
        assert ("(bf16 products)" in out) == (p == "bf16")
    assert abs(acc["bf16"] - acc["full"]) <= 0.005, acc


def test_bf16_info_says_whether_bf16_works_here():
    got = fastbp.bf16_info()
    assert got["available"] == OK and got["why"] == WHY
    assert got["cpu"] == list(_bf16.cpu_support())
    if OK:
        assert os.path.exists(got["library"])


@pytest.mark.parametrize("bad", ["text", "folder", "missing"])
def test_a_bad_fastbp_dnnl_is_named_by_bf16_info_the_api_and_the_cli(monkeypatch, tmp_path, capsys, bad):
    """FASTBP_DNNL pointing at a text file, a folder or nothing: bf16_info says bf16 is
    not available and why (without loading anything), compile raises ImportError naming
    the variable, the CLI says which option failed, in one line."""
    path = {"text": tmp_path / "notes.txt", "folder": tmp_path, "missing": tmp_path / "libdnnl.so.3"}[bad]
    if bad == "text":
        path.write_text("not a library\n")
    monkeypatch.setattr(_bf16, "cpu_support", lambda flags=None: ("avx512_bf16",))
    monkeypatch.setattr(_bf16, "_state", {"lib": None, "error": None, "ready": False, "path": None})
    monkeypatch.setenv(_bf16.ENV_VAR, str(path))
    got = fastbp.bf16_info()
    assert got["available"] is False and got["library"] is None
    assert _bf16.ENV_VAR in got["why"] and str(path) in got["why"] and "precision='bf16'" in got["why"]
    with pytest.raises(ImportError, match=_bf16.ENV_VAR):
        fastbp.compile(_mlp((4, 3)), precision="bf16")
    assert fastbp.compile(_mlp((4, 3)), precision="auto").precision == "full"
    rc, out, err = _train(capsys, "--precision", "bf16", "--epochs", "1")
    assert rc != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--precision bf16" in err and _bf16.ENV_VAR in err


def test_bf16_info_checks_the_library_defines_the_gemm(monkeypatch):
    """Review defect 9: a FASTBP_DNNL library without ``dnnl_gemm_bf16bf16f32`` (any ELF
    shared library) was reported available.  Now its dynamic symbols are read (nothing
    is loaded) and ``why`` names the missing routine."""
    real = fastbp.bf16_info()["library"] if OK else None
    other = getattr(np, "_core", getattr(np, "core", None))._multiarray_umath.__file__    # an ELF library
    gemm = "dnnl_gemm_bf16bf16f32"
    monkeypatch.setattr(_bf16, "cpu_support", lambda flags=None: ("avx512_bf16",))
    monkeypatch.setattr(_bf16, "_state", {"lib": None, "error": None, "ready": False, "path": None})
    monkeypatch.setenv(_bf16.ENV_VAR, other)
    got = fastbp.bf16_info()
    assert got["available"] is False and got["library"] == other
    assert gemm in got["why"] and _bf16.ENV_VAR in got["why"] and "precision='bf16'" in got["why"]
    assert _bf16._state["lib"] is None and _bf16._state["error"] is None      # read, not loaded
    with pytest.raises(ImportError, match=gemm):
        fastbp.compile(_mlp((4, 3)), precision="bf16")
    assert fastbp.compile(_mlp((4, 3)), precision="auto").precision == "full"
    # the symbol table reader: defined, imported (undefined) and absent symbols, a text file
    assert _bf16._elf_defines(other, "PyInit__multiarray_umath")
    assert not _bf16._elf_defines(other, gemm) and not _bf16._elf_defines(other, "PyInit__multiarray")
    assert not _bf16._elf_defines(other, "malloc")          # imported from libc, not defined
    assert not _bf16._elf_defines(__file__, gemm)
    if real is not None:        # the real library, named by the variable: available
        assert _bf16._elf_defines(real, gemm)
        monkeypatch.setattr(_bf16, "_state", {"lib": None, "error": None, "ready": False, "path": None})
        monkeypatch.setenv(_bf16.ENV_VAR, real)
        assert fastbp.bf16_info() == {"cpu": ["avx512_bf16"], "library": real, "available": True, "why": ""}


@pytest.mark.extras
@bf16_only
def test_a_data_parallel_step_takes_precision():
    MPI = pytest.importorskip("mpi4py.MPI")
    rng = np.random.default_rng(6)
    model = _mlp((30, 40, 5))
    X = rng.standard_normal((16, 30)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    ds = fastbp.compile(model, batch_size=16, comm=MPI.COMM_SELF, precision="bf16")
    one = fastbp.compile(model, batch_size=16, precision="bf16")
    assert ds.step.precision == "bf16"
    for _ in range(3):
        assert ds(X, y) == pytest.approx(one(X, y), rel=1e-6)
    np.testing.assert_array_equal(ds.step.param_vector, one.param_vector)


@pytest.mark.extras
def test_rounding_to_bf16_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((6, 33)) * 10.0 ** rng.integers(-38, 38, (6, 33))).astype(np.float32)
    a[0, :4] = [np.inf, -np.inf, 0.0, -0.0]
    a[1, :3] = np.uint32([0x3F808000, 0x3F818000, 0x3F807FFF]).view(np.float32)     # ties and a near-tie
    theirs = torch.from_numpy(a).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(unpack(to_bf16(a), 33), theirs)


def test_the_cli_model_line_says_what_the_precision_and_layers_are(capsys, monkeypatch):
    """A linear model (no --hidden widths) has no activation; --precision bf16 on a model
    whose layers are all below BF16_MIN_MACS says its products stay float32."""
    rc, out, err = _train(capsys, "--hidden", "--epochs", "1")
    assert rc == 0, err
    assert "model: 64-10 (linear)," in out
    if OK:
        monkeypatch.setattr(fastbp.config, "BF16_MIN_MACS", 1 << 20)       # the default (the fixture: 0)
        rc, out, err = _train(capsys, "--precision", "bf16", "--hidden", "4", "--epochs", "1")
        assert rc == 0, err
        assert "(bf16 precision, but every layer is too small for bf16 products)" in out


@pytest.mark.extras
def test_bf16_info_agrees_with_available_for_a_library_named_by_its_soname():
    """FASTBP_DNNL=libdnnl.so.3 (found by the dynamic loader, not a path): bf16_info() said
    available False with no reason while precision='bf16' worked."""
    path = _bf16.info()["library"]
    if not _bf16.available()[0] or path is None or os.sep not in path:
        pytest.skip("needs oneDNN installed as a file and a CPU with bf16 instructions")
    env = dict(os.environ, FASTBP_DNNL=os.path.basename(path),
               LD_LIBRARY_PATH=os.path.dirname(path) + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))
    code = "import fastbp, fastbp._bf16 as b; i = fastbp.bf16_info(); print(i['available'], b.available()[0], i['why'] == '')"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.stdout.split() == ["True", "True", "True"], res.stderr[-2000:]
