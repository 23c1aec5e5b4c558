"""The layers as a PyTorch user meets them (regressions of reviewed defects): the step's own
copy of its model, ``out_features`` as an int, nested Sequentials, specs that are not a
model's, and the estimators' boolean parameters."""
import numpy as np
import pytest

import fastbp
from fastbp import Sequential, Linear, ReLU, Residual, LayerNorm


def _model():
    return Sequential(Linear(4, 8), LayerNorm(8), ReLU(), Linear(8, 2))


def test_a_layer_changed_after_compile_changes_neither_the_step_nor_what_it_saves(tmp_path):
    """m[1].eps = 10 after compile: the step kept eps 1e-5 but saved eps 10 (a loaded model
    predicted up to 1.26 away from the trained one)."""
    m = _model()
    step = fastbp.compile(m, loss="mse", batch_size=8, dtype=np.float64, seed=0)
    X = np.random.default_rng(0).standard_normal((8, 4))
    p0 = step.predict(X)
    m[1].eps = 10.0
    m[0].bias = False
    assert step.model is not m and step.model[1].eps == 1e-5 and step.model[0].bias is True
    np.testing.assert_array_equal(step.predict(X), p0)
    step.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(fastbp.load(tmp_path / "m.npz").predict(X), p0)


def test_out_features_is_an_int_as_torch_nn_linear():
    lin = Linear(2, 3)
    assert lin.in_features == 2 and lin.out_features == 3 and isinstance(lin.out_features, int)
    m = _model()
    assert m.in_features == 4 and m.out_features == 2 and m[-1].out_features == 2


def test_a_nested_sequential_stands_for_its_layers():
    """torch nests Sequentials; fastbp refused them, so Sequential(m[:2], m[2:]) failed."""
    m = _model()
    again = Sequential(m[:2], m[2:])
    assert again.layers == m.layers
    nested = Sequential(Sequential(Linear(4, 8), ReLU()), Linear(8, 3))
    assert [type(ly).__name__ for ly in nested] == ["Linear", "ReLU", "Linear"] and nested.out_features == 3
    block = Residual(Sequential(Linear(8, 8), ReLU()))
    assert [type(ly).__name__ for ly in block.layers] == ["Linear", "ReLU"]
    with pytest.raises(ValueError, match=r"model\[1:2\] holds no Linear layer \(1 layers\)"):
        Sequential(Linear(4, 8), ReLU(), Linear(8, 2))[1:2]
    with pytest.raises(TypeError, match=r"layer 1 must be a fastbp layer \(.*\) or a Sequential, got str"):
        Sequential(Linear(2, 2), "relu")


@pytest.mark.parametrize("spec, match", [
    ({"type": "Sequential"}, "'layers' is not a list"),
    ({"type": "Sequential", "layers": [{"type": [1]}]}, "has no 'type' string"),
    ({"type": "Sequential", "layers": [{"type": "Linear", "in_features": 2, "out_features": 2}]},
     r"'Linear' in model spec has fields \['in_features', 'out_features'\]: it needs"),
    ({"type": "Sequential", "layers": [{"type": "Linear", "in_features": 2, "out_features": 2, "bias": True,
                                        "foo": 1}]}, r"'Linear' in model spec has fields .*'foo'"),
    ({"type": "Sequential", "layers": [{"type": "Linear", "in_features": 2, "out_features": 2, "bias": True},
                                       {"type": "LayerNorm"}]}, r"'LayerNorm' in model spec has no field 'normalized_shape'"),
])
def test_a_spec_that_is_not_a_model_is_a_value_error(spec, match):
    """KeyError, TypeError (unhashable type) or a constructor's missing-argument TypeError
    before; an unknown field of a Linear was accepted."""
    with pytest.raises(ValueError, match=match):
        Sequential.from_spec(spec)


@pytest.mark.parametrize("name", ["shuffle", "warm_start", "early_stopping", "nesterovs_momentum"])
@pytest.mark.parametrize("value", [1, 0, 1.0])
def test_the_estimators_boolean_parameters_take_bools_only_as_scikit_learn(name, value):
    pytest.importorskip("sklearn")
    from fastbp.estimator import MLPClassifier
    X, y = np.random.default_rng(0).standard_normal((20, 3)), np.arange(20) % 2
    est = MLPClassifier(max_iter=2, **{name: value})
    with pytest.raises(ValueError, match=rf"{name} must be a bool, got {value!r}"):
        est.fit(X, y)
    assert not hasattr(est, "classes_")
    MLPClassifier(max_iter=2, **{name: np.True_ if value else np.False_})


def test_activation_layer_positional_count_names_the_whole_signature():
    # LeakyReLU(negative_slope, inplace): three positionals are one too many (the count was 2,
    # after the inplace flag had been taken out)
    with pytest.raises(TypeError, match=r"LeakyReLU takes at most 2 positional argument\(s\) "
                                        r"\(negative_slope, inplace\), got 3"):
        fastbp.LeakyReLU(0.1, False, 3)
    with pytest.raises(TypeError, match=r"GELU takes at most 1 positional argument\(s\) \(approximate\), got 2"):
        fastbp.GELU("tanh", 1)
    with pytest.raises(TypeError, match=r"ReLU takes at most 1 positional argument\(s\) \(inplace\), got 2"):
        fastbp.ReLU(False, 1)
    assert fastbp.LeakyReLU(0.1, True).negative_slope == 0.1


def test_a_norm_before_the_first_linear_names_the_models_input_not_a_previous_layer():
    for norm in (LayerNorm(5), fastbp.BatchNorm1d(5)):
        with pytest.raises(ValueError, match=r"Sequential layer 0: .* receives 4 features from the model's "
                                             r"input \(the in_features of its first Linear\)"):
            Sequential(norm, Linear(4, 2))
    with pytest.raises(ValueError, match=r"Sequential layer 2: LayerNorm.* receives 4 features from the "
                                         r"previous layer"):
        Sequential(LayerNorm(3), Linear(3, 4), LayerNorm(5), Linear(4, 2))


def test_identity_takes_any_arguments_as_pytorch():
    # torch.nn.Identity(*args, **kwargs): "any argument (unused)"
    assert repr(fastbp.Identity(54, unused_argument1=0.1)) == repr(fastbp.Identity()) == "Identity()"
    import inspect
    assert str(inspect.signature(fastbp.Identity)) == "(*args, **kwargs)"


def test_sklearn_init_of_the_output_layer_follows_the_models_activation():
    """scikit-learn's factor is one per model (2 for every layer of a logistic MLP, the output
    layer included); the output Linear, which no activation follows, took 6."""
    def bounds(act):
        m = Sequential(Linear(64, 32, init="sklearn"), act, Linear(32, 10, init="sklearn"))
        p = m.init_params(0)
        step = fastbp.compile(m, loss="mse", optimizer=fastbp.SGD(lr=0.1), batch_size=4, seed=0,
                              dtype=np.float64)
        np.testing.assert_array_equal(step.params["2.W"], p["2.W"])        # the compiled step draws alike
        return np.abs(p["0.W"]).max(), np.abs(p["2.W"]).max(), np.abs(p["2.b"]).max()
    h, o, ob = bounds(fastbp.Sigmoid())
    assert h <= np.sqrt(2 / 96) and o <= np.sqrt(2 / 42) and ob <= np.sqrt(2 / 42)
    assert o > 0.8 * np.sqrt(2 / 42)
    h, o, _ = bounds(ReLU())
    assert h > np.sqrt(2 / 96) and o > np.sqrt(2 / 42) and o <= np.sqrt(6 / 42)


def test_an_activations_parameter_set_by_name_is_checked_and_used_as_torch():
    """``act.negative_slope = 0.3`` (as on torch.nn.LeakyReLU) became an unused attribute: the
    layer kept training with its old slope, and a string was taken silently."""
    X = np.random.default_rng(0).standard_normal((16, 3))

    def forward(act):
        step = fastbp.compile(Sequential(Linear(3, 5), act, Linear(5, 2)), loss="mse", batch_size=16,
                              dtype=np.float64, seed=0)
        return step.predict(X)

    act = fastbp.LeakyReLU(0.01)
    act.negative_slope = 0.3
    assert act.negative_slope == 0.3 and act.spec()["negative_slope"] == 0.3 and "0.3" in repr(act)
    np.testing.assert_array_equal(forward(act), forward(fastbp.LeakyReLU(0.3)))
    assert not np.array_equal(forward(act), forward(fastbp.LeakyReLU(0.01)))
    with pytest.raises(TypeError, match="LeakyReLU: negative_slope must be a real number, got str"):
        act.negative_slope = "abc"
    assert act.negative_slope == 0.3                # a refused value changes nothing
    gelu = fastbp.GELU()
    gelu.approximate = "tanh"                       # the choice selects its registry entry
    assert gelu.op == "gelu_tanh" and gelu.approximate == "tanh"
    np.testing.assert_array_equal(forward(gelu), forward(fastbp.GELU(approximate="tanh")))
    with pytest.raises(ValueError, match="approximate must be one of"):
        gelu.approximate = "exact"
    relu = ReLU()
    with pytest.raises(TypeError, match="ReLU: inplace must be a bool"):
        relu.inplace = "yes"
    relu.inplace = True
    assert relu.inplace is True and repr(relu) == "ReLU(inplace=True)"


@pytest.mark.parametrize("make, name, value, trained", [
    (lambda: fastbp.BatchNorm1d(3), "affine", False, ["0.W", "0.b", "2.W", "2.b"]),
    (lambda: fastbp.BatchNorm1d(3), "track_running_stats", False, None),
    (lambda: LayerNorm(3), "elementwise_affine", False, ["0.W", "0.b", "2.W", "2.b"]),
    (lambda: LayerNorm(3, bias=True), "bias_", False, ["0.W", "0.b", "1.weight", "2.W", "2.b"]),
    (lambda: Linear(4, 3), "bias", False, ["0.W", "2.W", "2.b"]),
    (lambda: fastbp.Dropout(0.5), "p", 0.25, None),
])
def test_a_constructor_argument_set_after_construction_is_applied(tmp_path, make, name, value, trained):
    """bn.affine = False after construction: the step still trained the affine parameters while the
    spec said affine=False, and fastbp.load refused the checkpoint (wrong architecture)."""
    layer = make()
    setattr(layer, name, value)
    assert getattr(layer, name) == value
    first = layer if isinstance(layer, Linear) else Linear(4, 3)
    model = Sequential(first, layer if not isinstance(layer, Linear) else ReLU(), Linear(3, 2))
    step = fastbp.compile(model, loss="mse", batch_size=4, dtype=np.float64)
    if trained is not None:
        assert sorted(step.params) == sorted(trained)
    X, Y = np.random.default_rng(0).normal(size=(4, 4)), np.random.default_rng(1).normal(size=(4, 2))
    step(X, Y)
    step.save(tmp_path / "m.npz")
    back = fastbp.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.predict(X), step.predict(X))


@pytest.mark.parametrize("make, name, value, exc, match", [
    (lambda: Linear(4, 3), "bias", "yes", TypeError, "Linear: bias must be a bool"),
    (lambda: Linear(4, 3), "out_features", 0, ValueError, "Linear: out_features"),
    (lambda: fastbp.BatchNorm1d(3), "momentum", 2.0, ValueError, "momentum"),
    (lambda: LayerNorm(3), "eps", -1.0, ValueError, "eps"),
    (lambda: fastbp.Dropout(0.5), "p", 1.5, ValueError, "p"),
])
def test_a_bad_value_set_after_construction_is_refused_and_changes_nothing(make, name, value, exc, match):
    layer = make()
    before = (repr(layer), dict(vars(layer)))
    with pytest.raises(exc, match=match):
        setattr(layer, name, value)
    assert (repr(layer), dict(vars(layer))) == before
