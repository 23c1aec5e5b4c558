"""``Linear(init=...)``: the weight-initialisation rule a user chooses (issue 15)."""
import numpy as np
import pytest

import fastbp


def first_layer(model, seed=0):
    params = model.init_params(seed)
    return params["0.W"], params.get("0.b")


def test_default_follows_the_next_activation():
    relu = fastbp.Sequential(fastbp.Linear(400, 300), fastbp.ReLU(), fastbp.Linear(300, 2))
    tanh = fastbp.Sequential(fastbp.Linear(400, 300), fastbp.Tanh(), fastbp.Linear(300, 2))
    w_relu, b = first_layer(relu)
    w_tanh, _ = first_layer(tanh)
    assert np.std(w_relu) == pytest.approx(np.sqrt(2 / 400), rel=0.02)      # He normal
    assert np.abs(w_tanh).max() <= np.sqrt(6 / 700)                         # Glorot uniform
    assert np.std(w_tanh) == pytest.approx(np.sqrt(6 / 700) / np.sqrt(3), rel=0.02)
    assert not b.any()


@pytest.mark.parametrize("rule", ["he", "glorot"])
def test_named_rules_override_the_activation(rule):
    model = fastbp.Sequential(fastbp.Linear(400, 300, init=rule), fastbp.Tanh(), fastbp.Linear(300, 2))
    w, b = first_layer(model)
    if rule == "he":
        assert np.std(w) == pytest.approx(np.sqrt(2 / 400), rel=0.02)
        assert np.abs(w).max() > np.sqrt(6 / 700)           # normal, not bounded like Glorot's
    else:
        assert np.abs(w).max() <= np.sqrt(6 / 700)
        assert np.std(w) == pytest.approx(np.sqrt(6 / 700) / np.sqrt(3), rel=0.02)
    assert not b.any()


@pytest.mark.parametrize("act,factor", [(fastbp.ReLU, 6.0), (fastbp.Sigmoid, 2.0)])
def test_sklearn_rule_draws_weights_and_biases(act, factor):
    """scikit-learn's MLP: W and b uniform in +-sqrt(factor / (fan_in + fan_out)),
    factor 2 for the logistic activation, 6 otherwise."""
    model = fastbp.Sequential(fastbp.Linear(300, 200, init="sklearn"), act(), fastbp.Linear(200, 2))
    w, b = first_layer(model)
    bound = np.sqrt(factor / 500)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound and np.abs(b).max() > 0.5 * bound
    assert np.std(w) == pytest.approx(bound / np.sqrt(3), rel=0.02)


def test_callable_rule_and_its_checks():
    calls = []

    def ones(rng, fan_in, fan_out):
        calls.append((fan_in, fan_out, isinstance(rng, np.random.Generator)))
        return np.full((fan_in, fan_out), 0.5)

    model = fastbp.Sequential(fastbp.Linear(3, 4, init=ones), fastbp.ReLU(), fastbp.Linear(4, 2))
    w, b = first_layer(model)
    assert calls == [(3, 4, True)]
    np.testing.assert_array_equal(w, 0.5)
    assert not b.any()
    step = fastbp.compile(model, batch_size=2, seed=0)
    np.testing.assert_array_equal(step.params["0.W"], 0.5)
    for bad in (lambda r, i, o: np.zeros((o, i)), lambda r, i, o: np.full((i, o), np.nan)):
        m = fastbp.Sequential(fastbp.Linear(3, 4, init=bad), fastbp.ReLU(), fastbp.Linear(4, 2))
        with pytest.raises(ValueError, match=r"init returned an array of shape"):
            m.init_params(0)


def test_bad_init_names_the_argument():
    with pytest.raises(ValueError, match=r"Linear: init must be None, one of \['he', 'glorot', 'sklearn'\]"):
        fastbp.Linear(2, 3, init="xavier")
    with pytest.raises(TypeError, match="Linear: init must be"):
        fastbp.Linear(2, 3, init=1.5)


def test_named_rule_is_kept_in_checkpoints(tmp_path):
    model = fastbp.Sequential(fastbp.Linear(3, 4, init="sklearn"), fastbp.ReLU(), fastbp.Linear(4, 2))
    step = fastbp.compile(model, batch_size=2, seed=1)
    step.save(tmp_path / "m.npz")
    back = fastbp.load(tmp_path / "m.npz")
    assert back.model.layers[0].init_rule == "sklearn"
    np.testing.assert_array_equal(back.param_vector, step.param_vector)
