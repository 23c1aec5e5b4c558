"""Every activation of the registry through every path, parametrised over the registry.

A new registry entry is covered here with no edit to this file: its kernels
against the independent numpy reference (tests/reference.py, which must
define it), the fused training step against the unfused reference, the
standalone graph op, a float64 finite-difference gradient check, the ops
wrappers, layers and their specs, the CLI and estimator names.  (1 vs 2
threads: tests/test_threads.py; CUDA simulator vs CPU:
tests/test_cuda_kernels.py; PyTorch: tests/test_torch_interop.py.)

``TEST_ENTRY`` is registered only by the tests that use it: an activation
whose derivative reads its input (so the compiler keeps the pre-activation)
and that has a parameter.
"""
import numpy as np
import pytest

import fastbp
import reference as ref
from fastbp import _executor as ex
from fastbp import ops
from fastbp.gradcheck import numerical_gradient, relative_error
from fastbp.kernels import activations as A
from fastbp.layers import layer_class
from fastbp.registry import activations as R


def _softsign(x, scale):
    return scale * x / (type(x)(1.0) + abs(x))


def _d_softsign(x, scale):
    a = type(x)(1.0) + abs(x)
    return scale / (a * a)


TEST_ENTRY = R.Activation(
    code=R.CAPACITY - 1, name="softsign_test", layer="SoftsignTest", torch=None, sklearn=None,
    forward=_softsign, derivative=_d_softsign, uses="input",
    params=(R.Param("scale", 1.0, "Output scale.", low=0.0, open_low=True),),
    formula="y = scale x / (1 + |x|)", dformula="dy/dx = scale / (1 + |x|)^2")
ref.ACTIVATIONS.setdefault("softsign_test", (lambda z, s: s * z / (1 + np.abs(z)),
                                             lambda z, s: s / (1 + np.abs(z)) ** 2))

ALL = [e.name for e in R.entries()] + [TEST_ENTRY.name]
PUBLIC = [e.name for e in R.entries(public=True)] + [TEST_ENTRY.name]
VARIANTS = ["serial", "parallel"]

#: the entries whose expensive cases (parallel variants, float64, the ops wrappers, the float64
#: gradient check and checkpoint) run in the README's test command; every other entry runs them
#: in CI's thorough stage (tests/conftest.py) and its float32 serial checks (kernels vs the
#: reference, fused linear kernels, fused step) everywhere.  gelu (erf and exp polynomials, a
#: string choice) stands for the activations added with it (elu, gelu_tanh, silu, softplus).
DEFAULT_RUN = {"identity", "relu", "sigmoid", "tanh", "leaky_relu", "gelu", TEST_ENTRY.name}

#: the entries whose parallel kernel variants run in the README's test command: one per kind of
#: loop body, the entries tests/test_threads.py runs by default (its "some"), whose parallel
#: kernels that run compiles anyway: the identity, an output-reading entry (relu), an
#: input-reading one with a parameter (leaky_relu).  The parallel cases of sigmoid, tanh
#: (output-reading, as relu), gelu (input-reading, as leaky_relu: its float32 polynomial is a
#: scalar body, which its serial case checks; ~4 s of cold compilation) and TEST_ENTRY
#: (input-reading with a parameter, as leaky_relu) run in CI's thorough stage: every entry's
#: kernels are copies of the same loop templates with its scalar bodies inlined
#: (kernels/factory.py), whose parallel loops those three entries' parallel cases run, and whose
#: scalar bodies their serial cases (test_kernels_match_reference[<name>-serial]) check
#: (test_kernels.thorough_case argues the same).
PARALLEL_DEFAULT_RUN = {"identity", "relu", "leaky_relu"}


def thorough_case(params):
    """Expensive cases of the entries outside :data:`DEFAULT_RUN`, and parallel cases of
    the entries outside :data:`PARALLEL_DEFAULT_RUN` (see there)."""
    name = params.get("name")
    if name is None:
        return False
    if params.get("variant") == "parallel" and name not in PARALLEL_DEFAULT_RUN:
        return True
    if name in DEFAULT_RUN:
        return False
    if "variant" in params:
        return params["variant"] == "parallel"
    if "dt" in params:
        return params["dt"] is np.float64
    return True         # name only: the ops wrappers (both dtypes), the float64 gradcheck and checkpoint


@pytest.fixture
def use_entry():
    """A function ``name -> entry`` that registers TEST_ENTRY for the test when asked."""
    registered = []

    def get(name):
        if name == TEST_ENTRY.name and R.lookup(name) is None:
            R.register(TEST_ENTRY)
            registered.append(name)
        return R.get(name)
    yield get
    for name in registered:
        R.unregister(name)


def _other_params(entry):
    """Parameter values other than the defaults (in range), or None without parameters."""
    if not entry.params:
        return None
    vals = []
    for p in entry.params:
        v = 3.0 * p.default + 0.5
        try:
            vals.append(p.check(v, "test"))
        except ValueError:
            vals.append(p.default)
    return tuple(vals)


def _close(got, want, dt, scale=1.0, what=""):
    want = np.asarray(want, np.float64)
    s = max(1.0, float(np.max(np.abs(want), initial=0.0)), scale)
    if dt == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14 * s, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * s, err_msg=what)


def _away_from_zero(x, margin=1e-2):
    x = x.copy()
    small = np.abs(x) < margin
    x[small] = np.where(x[small] >= 0, 1, -1) * (margin + np.abs(x[small]))
    return x


def test_every_entry_has_an_independent_reference():
    missing = [e.name for e in R.entries() if e.name not in ref.ACTIVATIONS]
    assert not missing, f"tests/reference.py has no numpy reference for {missing}"


def test_registry_rejects_bad_entries_and_unknown_names():
    with pytest.raises(ValueError, match="already"):
        R.register(R.get("relu"))
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        R.get("nope")
    with pytest.raises(ValueError, match="unknown activation code 29"):
        R.by_code(29)
    with pytest.raises(ValueError, match="uses"):
        R.Activation(code=30, name="x", layer=None, torch=None, sklearn=None, forward=abs, derivative=abs,
                     uses="both", formula="", dformula="")
    with pytest.raises(ValueError):
        A.kernels(29)


def _kernel_case(entry, dt, variant, params):
    rng = np.random.default_rng(entry.code)
    P = np.array(params, dt)
    for shape in [(1, 1), (3, 7), (33, 5), (4, 70)]:
        x = _away_from_zero(rng.standard_normal(shape) * 3).astype(dt)
        dy = rng.standard_normal(shape).astype(dt)
        x64 = x.astype(np.float64)
        want_y = ref.act_fwd(entry.name, x64, params)
        want_dx = dy.astype(np.float64) * ref.act_grad(entry.name, x64, params)
        ks = A.kernels(entry.code)
        what = f"{entry.name} {shape} {params}"
        y = np.full(shape, np.nan, dt)
        getattr(ks.fwd, variant)(x, y, P)
        _close(y, want_y, dt, what=what + " fwd")
        t = y if entry.uses == "output" else x
        dx = np.full(shape, np.nan, dt)
        getattr(ks.bwd, variant)(t, dy, dx, False, P)
        _close(dx, want_dx, dt, scale=np.abs(dy).max(), what=what + " bwd")
        inplace = dy.copy()
        getattr(ks.bwd, variant)(t, inplace, inplace, False, P)
        np.testing.assert_array_equal(inplace, dx, err_msg=what + " bwd in place")
        acc = rng.standard_normal(shape).astype(dt)
        start = acc.astype(np.float64)
        getattr(ks.bwd, variant)(t, dy, acc, True, P)
        _close(acc, start + want_dx, dt, scale=np.abs(dy).max() + np.abs(start).max(), what=what + " bwd acc")
        b = rng.standard_normal(shape[1]).astype(dt)
        for bias in (b, np.empty(0, dt)):
            z0 = (x64 + bias) if bias.size else x64
            # in place (Z is Y) and with the pre-activation kept (Z != Y)
            yz = x.copy()
            getattr(ks.bias_act, variant)(yz, bias, yz, P)
            _close(yz, ref.act_fwd(entry.name, z0, params), dt, scale=3, what=what + " bias_act in place")
            z = x.copy()
            y2 = np.full(shape, np.nan, dt)
            getattr(ks.bias_act, variant)(z, bias, y2, P)
            _close(z, z0, dt, what=what + " bias_act z")
            np.testing.assert_array_equal(y2, yz, err_msg=what + " bias_act z != y")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ALL)
def test_kernels_match_reference(use_entry, name, variant):
    entry = use_entry(name)
    _kernel_case(entry, np.float32, variant, entry.defaults)
    other = _other_params(entry)
    if other is not None:
        _kernel_case(entry, np.float32, variant, other)


@pytest.mark.thorough
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ALL)
def test_kernels_match_reference_float64(use_entry, name, variant):
    entry = use_entry(name)
    _kernel_case(entry, np.float64, variant, entry.defaults)
    if _other_params(entry) is not None:
        _kernel_case(entry, np.float64, variant, _other_params(entry))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("name", ALL)
def test_fused_linear_kernels_match_reference(use_entry, name, dt):
    entry = use_entry(name)
    rng = np.random.default_rng(7)
    params = _other_params(entry) or ()
    P = np.array(params, dt)
    ks = A.kernels(entry.code)
    for m, k, n in [(1, 1, 1), (5, 7, 33), (9, 17, 18)]:
        X = rng.standard_normal((m, k)).astype(dt)
        W = rng.standard_normal((k, n)).astype(dt)
        b = rng.standard_normal(n).astype(dt)
        for bias in (b, np.empty(0, dt)):
            z = X.astype(np.float64) @ W.astype(np.float64) + (bias if bias.size else 0)
            want = ref.act_fwd(entry.name, z, params)
            Y = np.full((m, n), np.nan, dt)
            ks.linear_fwd.serial(X, W, bias, Y, P)
            _close(Y, want, dt, scale=k * 3, what=f"{name} linear_fwd {m, k, n}")
            Yt = np.full((m, n), np.nan, dt)
            ks.linear_fwd_t.serial(X, np.ascontiguousarray(W.T), bias, Yt, P)
            _close(Yt, want, dt, scale=k * 3, what=f"{name} linear_fwd_t {m, k, n}")


def _model(entry, params):
    layer = layer_class(entry)
    kw = dict(zip((p.name for p in entry.params), params)) if params else {}
    return fastbp.Sequential(fastbp.Linear(5, 7), layer(**kw), fastbp.Linear(7, 6), layer(**kw),
                             fastbp.Linear(6, 3))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("which", ["default", "other"])
@pytest.mark.parametrize("name", PUBLIC)
def test_fused_step_matches_unfused_reference(use_entry, name, which, dt):
    entry = use_entry(name)
    params = entry.defaults if which == "default" else _other_params(entry)
    if params is None:
        pytest.skip(f"{name} has no parameters")
    model = _model(entry, params)
    assert [tuple(l.params) for l in model.layers[1::2]] == [tuple(params)] * 2
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 5)).astype(dt)
    y = rng.integers(0, 3, 8)
    step = fastbp.compile(model, loss="softmax_cross_entropy", optimizer=fastbp.SGD(lr=0.1), batch_size=8,
                          dtype=dt, seed=1)
    lin = step.plan.tape[step.plan.tape[:, ex.C_OP] == ex.OP_LINEAR]
    lin_bwd = step.plan.tape[step.plan.tape[:, ex.C_OP] == ex.OP_LINEAR_BWD]
    if entry.uses == "input":   # each fused layer keeps the derivative at its pre-activation (f5)
        assert np.sum(lin[:, ex.C_D] >= 0) == 2 and np.sum(lin[:, ex.C_F5]) == 2
        assert np.sum(lin_bwd[:, ex.C_F5]) == 2
    else:
        assert np.all(lin[:, ex.C_D] < 0) and not lin[:, ex.C_F5].any() and not lin_bwd[:, ex.C_F5].any()
    assert step.plan.n_fused == 3
    p64 = {k: v.astype(np.float64) for k, v in step.params.items()}
    want_loss, want = ref.forward_backward(model, p64, x, y, "softmax_cross_entropy")
    loss = step.loss_and_grads(x, y)
    tol = dict(rtol=1e-10, atol=1e-12) if dt == np.float64 else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(loss, want_loss, **tol)
    for k in want:
        np.testing.assert_allclose(step.grads[k], want[k], err_msg=k, **tol)
    # a training step applies exactly those gradients; predict runs the same forward
    step(x, y)
    for k in want:
        np.testing.assert_allclose(step.params[k], p64[k] - 0.1 * want[k], err_msg=k, **tol)


@pytest.mark.parametrize("name", PUBLIC)
def test_standalone_graph_op_and_float64_gradcheck(use_entry, name):
    """The activation as its own instruction (OP_ACT/OP_ACT_BWD), used twice, with
    a finite-difference check of fastbp.grad in float64."""
    entry = use_entry(name)
    params = _other_params(entry) or ()
    fn = getattr(fastbp.graph, name, None) or fastbp.graph._graph_function(entry)
    g = fastbp.Graph()
    x = g.input("x", (None, 6))
    h = fn(x, *params)
    out = fastbp.sum(h * h + h)        # h used twice: its gradient accumulates
    f = fastbp.grad(out, wrt=[x], dtype=np.float64, batch_size=4)
    rng = np.random.default_rng(11)
    xv = _away_from_zero(rng.standard_normal((4, 6)) * 2, 1e-3)
    val, grads = f(x=xv)
    y = ref.act_fwd(name, xv, params)
    np.testing.assert_allclose(val, np.sum(y * y + y), rtol=1e-12)
    np.testing.assert_allclose(grads["x"], (2 * y + 1) * ref.act_grad(name, xv, params), rtol=1e-10, atol=1e-12)
    num = numerical_gradient(lambda v: f(x=v)[0], xv.copy())
    assert relative_error(grads["x"], num) < 1e-6


@pytest.mark.parametrize("name", PUBLIC)
def test_ops_wrappers(use_entry, name):
    entry = use_entry(name)
    fwd = getattr(ops, f"{name}_forward", None)
    bwd = getattr(ops, f"{name}_backward", None)
    if fwd is None:         # registered after import (the test entry): made the same way
        from fastbp import _ops_activations
        fwd, bwd = _ops_activations._make(entry)
    else:
        assert f"{name}_forward" in ops.__all__ and f"{name}_backward" in ops.__all__
    params = _other_params(entry) or ()
    rng = np.random.default_rng(5)
    for dt in (np.float32, np.float64):
        x = _away_from_zero(rng.standard_normal((3, 4, 5)) * 2).astype(dt)
        dy = rng.standard_normal(x.shape).astype(dt)
        y = fwd(x, *params)
        _close(y, ref.act_fwd(name, x.astype(np.float64), params), dt)
        t = y if entry.uses == "output" else x
        dx = bwd(t, dy, *params)
        _close(dx, dy * ref.act_grad(name, x.astype(np.float64), params), dt, scale=np.abs(dy).max())
        # linear_forward / linear_backward with the activation fused
        X = rng.standard_normal((6, 4)).astype(dt)
        W = rng.standard_normal((4, 3)).astype(dt)
        b = rng.standard_normal(3).astype(dt)
        kw = {"activation_params": dict(zip((p.name for p in entry.params), params))} if params else {}
        yl = ops.linear_forward(X, W, b, name, **kw)
        z = ops.linear_forward(X, W, b)
        _close(yl, ref.act_fwd(name, z.astype(np.float64), params), dt, scale=4)
        dyl = rng.standard_normal(yl.shape).astype(dt)
        _, dW, db = ops.linear_backward(X, W, yl, dyl, name, z=z, **kw)
        dz = dyl * ref.act_grad(name, z.astype(np.float64), params)
        _close(db, dz.sum(0), dt, scale=10)
        _close(dW, X.astype(np.float64).T @ dz, dt, scale=10)
    if entry.uses == "input":
        with pytest.raises(ValueError, match="z"):
            ops.linear_backward(X, W, yl, dyl, name, **kw)
    if entry.params:
        with pytest.raises(TypeError, match=entry.params[0].name):
            fwd(x, "a")
        with pytest.raises(TypeError, match="unexpected keyword"):
            fwd(x, nope=1.0)


@pytest.mark.parametrize("name", PUBLIC)
def test_layer_spec_roundtrip_and_checkpoint(use_entry, name, tmp_path):
    entry = use_entry(name)
    params = _other_params(entry) or entry.defaults
    model = _model(entry, params)
    spec = model.spec()
    assert spec["layers"][1] == {"type": entry.layer, **dict(zip((p.name for p in entry.params), params))}
    assert fastbp.Sequential.from_spec(spec).spec() == spec
    step = fastbp.compile(model, optimizer=fastbp.Adam(lr=1e-2), batch_size=4, dtype=np.float64, seed=2)
    x = np.random.default_rng(0).standard_normal((4, 5))
    step(x, np.array([0, 1, 2, 0]))
    step.save(tmp_path / "c.npz")
    back = fastbp.load(tmp_path / "c.npz")
    assert back.model.spec() == spec
    np.testing.assert_array_equal(back.predict(x), step.predict(x))
    for p in entry.params:       # wrong type / value: TypeError / ValueError naming the parameter
        with pytest.raises(TypeError, match=p.name):
            layer_class(entry)(**{p.name: "1"})
        with pytest.raises(ValueError, match=p.name):
            layer_class(entry)(**{p.name: float("nan")})


@pytest.mark.parametrize("public_name", [e.name for e in R.entries(public=True)])
def test_every_public_entry_is_exported_and_named_everywhere(public_name):
    name = public_name      # (not "name": cheap, in the default run for every entry, see thorough_case)
    from fastbp import _cli_args
    entry = R.get(name)
    assert getattr(fastbp, entry.layer).entry is entry and entry.layer in fastbp.__all__
    assert getattr(fastbp, name) is getattr(fastbp.graph, name) and name in fastbp.__all__
    assert _cli_args.ACTIVATIONS[name] == entry.layer
    from fastbp import builders
    assert builders.activation_layer(name).entry is entry
    assert builders.activation_layer(entry.sklearn or name).entry is entry
    assert {name, entry.sklearn or name} <= set(builders.activation_names())    # the estimator's names


def test_unknown_activation_code_is_an_error_never_the_identity():
    model = fastbp.Sequential(fastbp.Linear(3, 4), fastbp.ReLU(), fastbp.Linear(4, 2))
    step = fastbp.compile(model, loss="mse", optimizer=fastbp.SGD(lr=0.1), batch_size=2, dtype=np.float64)
    tape = step.plan.tape.copy()
    rows = np.flatnonzero(np.isin(tape[:, ex.C_OP], [ex.OP_LINEAR, ex.OP_LINEAR_BWD]))
    bad = tape.copy()
    bad[rows[0], ex.C_G] = 29          # no entry has it
    with pytest.raises(ValueError, match="unknown activation code 29"):
        ex.kernels_for(bad)
    # a corrupt tape reaching the interpreter: an error status, nothing applied
    before = step.param_vector.copy()
    step.plan.tape[rows[0], ex.C_G] = R.CAPACITY + 3
    x, y = np.ones((2, 3)), np.zeros((2, 2))
    try:
        status, _, _ = ex.run_tape(step._ctx, 0, step.plan.sec[ex.S_END], 2, x, np.zeros(0, np.int64), y)
    finally:
        step.plan.tape[...] = tape
    assert status == ex.STATUS_BAD_OP
    np.testing.assert_array_equal(step.param_vector, before)


def test_gelu_choice_selects_the_entry_everywhere(tmp_path):
    """GELU(approximate=...) is one layer over two entries (gelu, gelu_tanh): the layer, the
    graph function, the ops wrappers, the builders' names, the spec and checkpoints."""
    exact, tanh_ = R.get("gelu"), R.get("gelu_tanh")
    assert fastbp.GELU().entry is exact and fastbp.GELU("tanh").entry is tanh_
    assert fastbp.GELU(approximate="tanh").approximate == "tanh" and fastbp.GELU().approximate == "none"
    assert repr(fastbp.GELU(approximate="tanh")) == "GELU(approximate='tanh')"
    assert R.variant_of(tanh_) == (exact, "tanh") and R.variant_of(exact) == (exact, "none")
    assert R.variant_of(R.get("relu")) == (R.get("relu"), None)
    assert tanh_ not in R.entries(public=True) and not hasattr(ops, "gelu_tanh_forward")
    from fastbp import builders
    assert builders.activation_layer("gelu_tanh").entry is tanh_
    x = np.linspace(-6, 6, 25).reshape(5, 5)
    np.testing.assert_allclose(ops.gelu_forward(x, approximate="tanh"), ref.act_fwd("gelu_tanh", x), rtol=1e-13,
                               atol=1e-15)     # (the reference cancels in 1 + tanh(u) for x << 0)
    np.testing.assert_allclose(ops.gelu_backward(x, np.ones_like(x), "tanh"), ref.act_grad("gelu_tanh", x), atol=1e-15,
                               rtol=1e-13)
    g = fastbp.Graph()
    xi = g.input("x", (None, 3))
    assert fastbp.gelu(xi, approximate="tanh").op == "gelu_tanh" and fastbp.gelu(xi).op == "gelu"
    for bad, err in (("sigmoid", ValueError), (0, TypeError)):
        with pytest.raises(err, match="approximate"):
            fastbp.GELU(approximate=bad)
    with pytest.raises(TypeError, match="multiple values"):
        fastbp.GELU("tanh", approximate="tanh")
    with pytest.raises(TypeError, match="unexpected keyword"):
        fastbp.GELU(alpha=1.0)
    model = fastbp.Sequential(fastbp.Linear(3, 4), fastbp.GELU(approximate="tanh"), fastbp.Linear(4, 4),
                              fastbp.GELU(), fastbp.Identity(), fastbp.Linear(4, 2))
    spec = model.spec()
    assert spec["layers"][1] == {"type": "GELU", "approximate": "tanh"} and spec["layers"][3] == {"type": "GELU"}
    assert spec["layers"][4] == {"type": "Identity"}
    assert fastbp.Sequential.from_spec(spec).spec() == spec
    step = fastbp.compile(model, optimizer=fastbp.SGD(lr=0.1), batch_size=4, dtype=np.float32, seed=2)
    assert step.plan.n_fused == 3        # Identity adds no instruction
    xv = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    step(xv, np.array([0, 1, 1, 0]))
    step.save(tmp_path / "g.npz")
    back = fastbp.load(tmp_path / "g.npz")
    assert back.model.spec() == spec and back.model.layers[1].entry is tanh_
    np.testing.assert_array_equal(back.predict(xv), step.predict(xv))


def test_identity_is_the_no_activation_entry():
    """fastbp.Identity is the layer of code 0 ("no activation"): no graph function, ops wrapper
    or CLI/estimator name of its own besides "identity"/"none", and no node in a graph."""
    e = R.by_code(R.IDENTITY)
    assert e.layer == "Identity" and fastbp.Identity.entry is e and "Identity" in fastbp.__all__
    assert e not in R.entries(public=True) and e in R.layer_entries()
    assert not hasattr(fastbp, "identity") and not hasattr(ops, "identity_forward")
    from fastbp import builders
    assert builders.activation_layer("identity") is None and builders.activation_layer("none") is None
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    assert fastbp.Identity().build(g, x, "p") is x
    # torch.nn.Identity(*args, **kwargs): any arguments, unused
    assert fastbp.Identity(1.0, foo=2).spec() == fastbp.Identity().spec() == {"type": "Identity"}


def test_pytorchs_inplace_flag_is_accepted_and_changes_nothing():
    x = np.random.default_rng(0).standard_normal((4, 5))
    y = np.array([0, 1, 2, 0])
    for layer in ("ReLU", "LeakyReLU", "ELU", "SiLU"):
        cls = getattr(fastbp, layer)
        steps = [fastbp.compile(fastbp.Sequential(fastbp.Linear(5, 6), act, fastbp.Linear(6, 3)),
                                optimizer=fastbp.SGD(lr=0.1), batch_size=4, dtype=np.float64, seed=3)
                 for act in (cls(), cls(inplace=True))]
        losses = [s(x, y) for s in steps]
        assert losses[0] == losses[1]
        np.testing.assert_array_equal(steps[0].predict(x), steps[1].predict(x))
        assert repr(cls(inplace=True)).endswith("inplace=True)") and "inplace" not in repr(cls())
        with pytest.raises(TypeError, match="inplace"):
            cls(inplace="yes")


# ------------------------------------------------------------ names and cache keys
def _entry(code=30, name="custom_act", **kw):
    base = dict(layer=None, torch=None, sklearn=None, forward=abs, derivative=abs, uses="input", formula="",
                dformula="")
    base.update(kw)
    return R.Activation(code=code, name=name, **base)


@pytest.mark.parametrize("kw, match", [
    (dict(name="myrelu", layer="ReLU"), "layer='ReLU' is taken by activation 'relu'"),
    (dict(name="myrelu", torch="ReLU"), "torch='ReLU' is taken by activation 'relu'"),
    (dict(name="myrelu", sklearn="relu"), "sklearn='relu' is taken by activation 'relu'"),
    (dict(name="sum"), "'sum' is the name of a graph operation"),
    (dict(name="dropout"), "'dropout' is the name of a graph operation"),
    (dict(name="add"), "the name 'add' is taken by gate 'add'"),
    (dict(forward=None), "forward and derivative must be functions"),
    # fastbp's own layer types (a saved model's Dropout(p) came back as a real Dropout; LayerNorm's or
    # Residual's checkpoint did not load; "Linear" broke layer_class), and "none" (the identity everywhere)
    (dict(name="myact", layer="Dropout"), "layer='Dropout' is one of fastbp's own layer types"),
    (dict(name="myact", layer="LayerNorm"), "layer='LayerNorm' is one of fastbp's own layer types"),
    (dict(name="myact", layer="Residual"), "layer='Residual' is one of fastbp's own layer types"),
    (dict(name="myact", layer="Linear"), "layer='Linear' is one of fastbp's own layer types"),
    (dict(name="myact", torch="BatchNorm1d"), "torch='BatchNorm1d' is one of fastbp's own layer types"),
    (dict(name="none"), "'none' means no activation"),
])
def test_an_entry_may_not_take_another_ops_name(kw, match):
    """Only code and name were checked: a layer/torch/sklearn name could take over nn.ReLU in
    from_torch, a graph op's name failed late with KeyErrors, a gate's broke its functions."""
    with pytest.raises((ValueError, TypeError), match=match):
        R.register(_entry(**kw))
    assert not {"custom_act", "myrelu"} & {e.name for e in R.entries()}


@pytest.mark.parametrize("make, match", [
    (lambda: R.Param("a", -1.0, "a", low=0.0), "Param default: a must be >= 0.0"),
    (lambda: R.Param("a", float("nan"), "a"), "Param default: a"),
    (lambda: R.Param("a", "x", "a"), "Param default: a"),
    (lambda: R.Param("neg slope", 1.0, "a"), "name must be an identifier"),
    (lambda: R.Param("a", 1.0, "a", low=2.0, high=0.0), "low 2.0 is above high 0.0"),
    (lambda: R.Choice("approximate", "x", (("none", "gelu"),), "a"), "default 'x' is not one of its options"),
    (lambda: _entry(params=(R.Param("a", 1.0, "a"), R.Param("a", 2.0, "b"))), r"parameter names \['a', 'a'\]"),
    (lambda: _entry(params=(R.Param("inplace", 1.0, "a"),), inplace=True), "from 'inplace' too"),
])
def test_an_entrys_parameters_are_checked_when_made(make, match):
    """Each was registered, and failed only when a layer, a builder or an estimator first used it."""
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_an_entry_without_a_layer_class_is_refused_by_the_builders_never_the_identity():
    """``activation_layer`` returned None (no activation) for it: mlp(..., "cube") and an estimator
    with activation="cube" built linear models, silently."""
    from fastbp import builders
    R.register(_entry(name="cube", forward=lambda x: x * x * x, derivative=lambda x: 3 * x * x))
    try:
        assert "cube" not in builders.activation_names()
        for build in (lambda: builders.activation_layer("cube"), lambda: builders.mlp([2, 3, 1], "cube")):
            with pytest.raises(ValueError, match="'cube' was registered without a layer class"):
                build()
    finally:
        R.unregister("cube")
    assert builders.activation_layer("none") is None and builders.activation_layer("identity") is None
    assert type(builders.activation_layer("gelu_tanh")).__name__ == "GELU"


def test_a_gate_may_not_take_an_activations_or_a_graph_ops_name():
    from fastbp.registry import gates as G
    for name, match in (("relu", "taken by activation 'relu'"), ("sum", "name of a graph operation")):
        with pytest.raises(ValueError, match=match):
            G.register(G.Gate(code=12, name=name, forward=lambda a, b: a, grads=lambda a, b, d: (d, d),
                              formula="a", gradient="(1, 1)"))
    x = fastbp.Graph().input("x", (2,))
    assert fastbp.relu(x).op == "relu" and fastbp.sum(x).op == "sum"      # the built-ins still work


def test_the_kernel_names_follow_what_a_body_reads_from_outside_its_code():
    """numba's cache keys a kernel by bytecode: a closure value or a module constant
    edited between runs gave the old kernel.  The entry's hash covers them."""
    from fastbp.registry.fingerprint import fingerprint

    def make(k):
        def f(x):
            return x * k
        return f
    assert fingerprint(make(2.0)) == fingerprint(make(2.0)) != fingerprint(make(3.0))
    ns = {}
    exec("K = 2\ndef f(x):\n    return x * K\n", ns)
    a = fingerprint(ns["f"])
    ns["K"] = 5
    assert fingerprint(ns["f"]) != a
    ns["K"] = 2
    assert fingerprint(ns["f"]) == a
    # a called helper's constant too
    exec("C = 1.0\ndef h(x):\n    return x + C\ndef g(x):\n    return h(x) * 2\n", ns)
    b = fingerprint(ns["g"])
    ns["C"] = 4.0
    assert fingerprint(ns["g"]) != b
    # a default argument's value was left out (a user's constant edited between runs gave the old kernel)

    def with_default(k):
        def f(x, kk=k):
            return x * kk
        return f
    assert fingerprint(with_default(2.0)) == fingerprint(with_default(2.0)) != fingerprint(with_default(3.0))
    # the same code gives the same name whoever else holds its constants (marshal's default format
    # flags a constant by its reference count: gelu's name changed once numba had compiled it, so a
    # process named it unlike the one that filled the disk cache and compiled it again)
    exec("def q(x):\n    return x * 0.7731\n", ns)
    d = fingerprint(ns["q"])
    held = [k for k in ns["q"].__code__.co_consts if isinstance(k, float)]
    assert held and fingerprint(ns["q"]) == d


def test_the_kernel_names_follow_the_attributes_a_body_reads_from_a_module():
    """``cfg.K`` was keyed by the module's name: a K edited in the user's file between runs
    loaded the kernel compiled for the old value from numba's disk cache."""
    import types
    from fastbp.registry.fingerprint import fingerprint
    cfg, sub = types.ModuleType("user_cfg"), types.ModuleType("user_cfg.sub")
    cfg.K, cfg.sub, sub.C, cfg.UNUSED = 2.0, sub, 1.0, 0
    ns = {"cfg": cfg}
    exec("def f(x):\n    return x * cfg.K\ndef g(x):\n    return x + cfg.sub.C\n", ns)
    a, b = fingerprint(ns["f"]), fingerprint(ns["g"])
    cfg.K = 3.0
    assert fingerprint(ns["f"]) != a and fingerprint(ns["g"]) == b
    sub.C = 5.0
    assert fingerprint(ns["g"]) != b
    cfg.K, sub.C = 2.0, 1.0
    assert (fingerprint(ns["f"]), fingerprint(ns["g"])) == (a, b)
    cfg.UNUSED = 7                      # an attribute no body names is not part of the key
    assert fingerprint(ns["f"]) == a
    cfg.cfg = cfg                       # a module that names itself: walked once

    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")
    cfg.K = Broken()                    # an object without a repr: keyed by identity, no error
    exec("def s(x):\n    return x * cfg.cfg.K\n", ns)
    assert fingerprint(ns["s"]) == fingerprint(ns["s"]) != fingerprint(ns["f"])


def test_the_kernel_names_follow_a_module_in_a_closure_an_enums_value_and_deep_helpers():
    """A module held in a closure cell (``make(cfg)`` reading ``cfg.K``), an enum member's value
    and a constant read 7 helper calls deep were left out of the key: edited between runs, the
    kernel compiled for the old value was loaded from numba's disk cache."""
    import enum
    import types
    from fastbp.registry.fingerprint import fingerprint
    cfg = types.ModuleType("user_cfg")
    cfg.K = 2.0

    def make(c, d=cfg):
        def f(x):
            return x * c.K + d.K
        return f
    f = make(cfg)
    a = fingerprint(f)
    cfg.K = 3.0
    assert fingerprint(f) != a
    ns = {"enum": enum, "__name__": "user_mod"}
    exec("class Mode(enum.IntEnum):\n    A = 2\ndef g(x):\n    return x * Mode.A.value\n", ns)
    b = fingerprint(ns["g"])
    exec("class Mode(enum.IntEnum):\n    A = 3\n", ns)
    assert fingerprint(ns["g"]) != b
    deep = {}
    exec("K = 2.0\ndef h0(x):\n    return x * K\n" +
         "".join(f"def h{i}(x):\n    return h{i - 1}(x)\n" for i in range(1, 25)), deep)
    for top in ("h7", "h24"):
        c = fingerprint(deep[top])
        deep["K"] = 3.0
        assert fingerprint(deep[top]) != c
        deep["K"] = 2.0
        assert fingerprint(deep[top]) == c
    exec("".join(f"def h{i}(x):\n    return h{i - 1}(x)\n" for i in range(25, 200)), deep)
    assert fingerprint(deep["h199"]) == fingerprint(deep["h199"])      # (deeper: keyed by identity)
    assert fingerprint(int, np.float32) == fingerprint(int, np.float32)      # built-in classes: by name


_NAMES_CHILD = r"""
import numpy as np
from fastbp import ops
from fastbp.kernels.factory import entry_suffix
from fastbp.registry import activations as R, gates as G
def names():
    return [e.name + " " + entry_suffix(e) for e in R.entries()] + [g.name + " " + g.suffix for g in G.entries()]
before = names()
x = np.linspace(-2.0, 2.0, 7)
ops.gelu_forward(x), ops.tanh_forward(x), ops.elu_forward(x)     # compiled (and cached) here
assert names() == before, "a kernel's name changed once it had been compiled"
print("\n".join(before))
"""


def test_kernel_names_are_the_same_in_every_process(tmp_path):
    """A process that named a kernel unlike the one that filled numba's disk cache compiled it
    again (marshal's default format flagged gelu's constant by its reference count): a fresh
    process with an empty cache names every entry as this one does, before and after compiling."""
    import os
    import subprocess
    import sys
    from fastbp.kernels.factory import entry_suffix
    from fastbp.registry import gates as G
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FASTBP_COMPILE_WORKERS="0")
    script = tmp_path / "child.py"
    script.write_text(_NAMES_CHILD)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = dict(line.split() for line in r.stdout.splitlines())
    assert {"gelu", "relu", "add", "mul"} <= set(theirs)
    mine = {e.name: entry_suffix(e) for e in R.entries()} | {g.name: g.suffix for g in G.entries()}
    assert {n: mine.get(n) for n in theirs} == theirs


_CLOSURE_CHILD = r"""
import sys, numpy as np, fastbp
from fastbp.registry import activations as R
from fastbp.layers import layer_class
k = float(sys.argv[1])
def make(k):
    def f(x):
        return x * type(x)(k)
    def d(x):
        return type(x)(k)
    return f, d
f, d = make(k)
e = R.register(R.Activation(code=30, name="scaled", layer="Scaled", torch=None, sklearn=None, forward=f,
                            derivative=d, uses="output", formula="y = k x", dformula="k"))
m = fastbp.Sequential(fastbp.Linear(2, 2, bias=False), layer_class(e)())
step = fastbp.compile(m, loss="mse", batch_size=2, dtype=np.float64, seed=0)
W = step.params["0.W"]
print(float(np.abs(step.predict(np.eye(2)) - k * W).max()))
"""


@pytest.mark.thorough      # two processes compiling an activation's kernels
def test_a_closure_value_changed_between_processes_compiles_new_kernels(tmp_path):
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FASTBP_COMPILE_WORKERS="0")
    root = os.path.dirname(os.path.dirname(fastbp.__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH", "")] if p)
    script = tmp_path / "child.py"         # a file: numba caches no function defined in a -c string
    script.write_text(_CLOSURE_CHILD)
    for k in ("2", "3"):
        r = subprocess.run([sys.executable, str(script), k], capture_output=True, text=True, env=env,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert float(r.stdout.split()[-1]) < 1e-12, (k, r.stdout)
