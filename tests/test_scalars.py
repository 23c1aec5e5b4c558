"""fastbp._scalars.real: the one check of real-valued arguments, and its users' messages."""
import math
from fractions import Fraction

import numpy as np
import pytest

import fastbp
from fastbp import _scalars
from fastbp import builders
from fastbp import ops


@pytest.mark.parametrize("value, expected", [(0, 0.0), (1, 1.0), (0.25, 0.25), (np.float32(0.5), 0.5),
                                             (np.int64(1), 1.0), (np.float64(0.75), 0.75)])
def test_real_accepts_real_numbers_as_float(value, expected):
    v = _scalars.real("x", value, "f", low=0.0, high=1.0)
    assert type(v) is float and v == expected


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.5", None, 1j, [0.5], np.array([0.5])])
def test_real_refuses_what_is_not_a_real_number(value):
    with pytest.raises(TypeError, match=rf"f: x must be a real number, got {type(value).__name__}$"):
        _scalars.real("x", value, "f")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_real_refuses_nan_and_infinities(value):
    with pytest.raises(ValueError, match="f: x must be finite, got"):
        _scalars.real("x", value, "f")


@pytest.mark.parametrize("kw, value, message", [
    (dict(low=0.0), -1e-300, r"f: x must be >= 0.0, got -1e-300"),
    (dict(low=0.0, low_open=True), 0.0, r"f: x must be > 0.0, got 0.0"),
    (dict(high=1.0), 1.5, r"f: x must be <= 1.0, got 1.5"),
    (dict(high=1.0, high_open=True), 1, r"f: x must be < 1.0, got 1.0"),
])
def test_real_bounds_name_the_bound_and_the_value(kw, value, message):
    with pytest.raises(ValueError, match=message):
        _scalars.real("x", value, "f", **kw)


def test_real_bounds_themselves_pass_unless_open():
    assert _scalars.real("x", 0, "f", low=0.0) == 0.0
    assert _scalars.real("x", 1, "f", high=1.0) == 1.0
    assert _scalars.real("x", 1e-300, "f", low=0.0, low_open=True) == 1e-300


def test_real_or_none():
    assert _scalars.real("m", None, "f", or_none=True) is None
    with pytest.raises(TypeError, match="f: m must be a real number or None, got str"):
        _scalars.real("m", "0.1", "f", or_none=True)
    with pytest.raises(TypeError, match="f: m must be a real number, got NoneType"):
        _scalars.real("m", None, "f")


# the users: one wording everywhere, the owner and the argument named
@pytest.mark.parametrize("make, exc, message", [
    (lambda: fastbp.LayerNorm(4, eps=math.inf), ValueError, "LayerNorm: eps must be finite"),
    (lambda: fastbp.LayerNorm(4, eps=-1.0), ValueError, r"LayerNorm: eps must be >= 0.0, got -1.0"),
    (lambda: fastbp.BatchNorm1d(4, eps=True), TypeError, "BatchNorm1d: eps must be a real number, got bool"),
    (lambda: fastbp.BatchNorm1d(4, momentum=1.5), ValueError, r"BatchNorm1d: momentum must be <= 1.0, got 1.5"),
    (lambda: fastbp.BatchNorm1d(4, momentum=math.nan), ValueError, "BatchNorm1d: momentum must be finite"),
    (lambda: fastbp.BatchNorm1d(4, momentum="0.1"), TypeError,
     "BatchNorm1d: momentum must be a real number or None, got str"),
    (lambda: fastbp.EarlyStopping(min_delta=-0.1), ValueError, r"EarlyStopping: min_delta must be >= 0.0"),
    (lambda: fastbp.EarlyStopping(min_delta=np.bool_(True)), TypeError,
     "EarlyStopping: min_delta must be a real number, got bool"),
    (lambda: fastbp.SGD(lr=0.1, momentum=np.bool_(True)), TypeError, "SGD: momentum must be a real number"),
    (lambda: fastbp.schedules.StepLR(2, gamma=math.inf), ValueError, "StepLR: gamma must be finite"),
    (lambda: fastbp.LeakyReLU(negative_slope=math.nan), ValueError, "negative_slope must be finite"),
    (lambda: ops.layer_norm_forward(np.ones((2, 3)), eps=-1), ValueError, "layer_norm_forward: eps must be >= 0.0"),
    (lambda: ops.batch_norm_forward(np.ones((2, 3)), momentum=-0.5), ValueError,
     r"batch_norm_forward: momentum must be >= 0.0, got -0.5"),
    (lambda: ops.dropout_forward(np.ones((2, 3)), p=1.5), ValueError,
     "dropout: dropout probability p has to be between 0 and 1, but got 1.5"),
])
def test_users_share_the_wording(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


def test_batch_norm_momentum_none_is_cumulative():
    assert fastbp.BatchNorm1d(4, momentum=None).momentum is None
    assert fastbp.BatchNorm1d(4, momentum=np.float32(0.5)).momentum == 0.5


@pytest.mark.parametrize("make, message", [
    (lambda: fastbp.SGD(lr=10 ** 400), "SGD: lr must be finite, got an integer of 401 digits"),
    (lambda: fastbp.EarlyStopping(min_delta=10 ** 400), "EarlyStopping: min_delta must be finite"),
    (lambda: fastbp.BatchNorm1d(4, eps=-10 ** 400), "BatchNorm1d: eps must be finite"),
    (lambda: fastbp.schedules.StepLR(2, gamma=10 ** 400), "StepLR: gamma must be finite"),
    (lambda: fastbp.Dropout(10 ** 400), "Dropout: dropout probability p has to be between 0 and 1, but got an integer"),
    (lambda: fastbp.Dropout(-10 ** 400), "Dropout: dropout probability p has to be between 0 and 1, but got a negative integer of 401 digits"),
    (lambda: builders.mlp([3, 4, 2], dropout=10 ** 400), r"dropout must be in \[0, 1\), got an integer"),
    (lambda: fastbp.Graph().param("p", [1.0, 10 ** 400]), "param 'p': value holds an integer too large for a float"),
    # past 4300 digits, where Python's str() of an int raises: the count comes from its bits
    (lambda: fastbp.SGD(lr=-10 ** 5000), "SGD: lr must be finite, got an integer of 5001 digits, too large"),
    (lambda: fastbp.SGD(lr=10 ** 5000 - 1), "SGD: lr must be finite, got an integer of 5000 digits, too large"),
    (lambda: fastbp.Adam(eps=Fraction(10 ** 400, 3)), "Adam: eps must be finite, got a Fraction too large for a float"),
    (lambda: fastbp.Dropout(10 ** 5000), "Dropout: dropout probability p has to be between 0 and 1, but got an integer of 5001 digits"),
    (lambda: builders.mlp([3, 4, 2], dropout=-10 ** 5000), r"dropout must be in \[0, 1\), got a negative integer of 5001 digits"),
    (lambda: fastbp.Dropout(Fraction(10 ** 5000, 3)), "but got a Fraction too large for a float"),
])
def test_integers_beyond_float_are_value_errors_naming_the_argument(make, message):
    """An int too large for a float is a ValueError naming the argument, never a bare OverflowError."""
    with pytest.raises(ValueError, match=message):
        make()


def test_step_lr_beyond_float():
    import sys
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    import reference as R
    step = fastbp.compile(R.mlp([4, 3]), "softmax_cross_entropy", fastbp.SGD(lr=0.1), batch_size=2)
    with pytest.raises(ValueError, match="lr must be finite"):
        step.lr = 10 ** 400
    with pytest.raises(ValueError, match="clip_grad_norm must be finite"):
        step.clip_grad_norm = 10 ** 400
    assert step.lr == pytest.approx(0.1)


def test_momentum_of_one_or_more_as_pytorch():
    """torch.optim.SGD and RMSprop take any momentum >= 0 (1 keeps every past gradient)."""
    assert fastbp.SGD(0.1, momentum=1.0).momentum == 1.0
    assert fastbp.SGD(0.1, momentum=1.5, nesterov=True).momentum == 1.5
    assert fastbp.RMSprop(momentum=1.0).momentum == 1.0
    with pytest.raises(ValueError, match=r"SGD: momentum must be >= 0.0"):
        fastbp.SGD(0.1, momentum=-1e-9)


def test_from_torch_takes_momentum_one_and_trains_as_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    ref = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    ref.load_state_dict(m.state_dict())
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=1.0, nesterov=True)
    step = fastbp.from_torch(m, loss=torch.nn.CrossEntropyLoss(),
                             optimizer=torch.optim.SGD(m.parameters(), lr=0.1, momentum=1.0, nesterov=True),
                             batch_size=4)
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        step(x, y)
        opt_ref.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt_ref.step()
    step.sync_to_torch()
    for a, b in zip(m.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make, exc, message", [
    (lambda: fastbp.Linear(-10 ** 5000, 2), ValueError,
     "Linear: in_features must be a positive integer, got a negative integer of 5001 digits"),
    (lambda: fastbp.BatchNorm1d(10 ** 5000), ValueError,
     "BatchNorm1d: num_features must be a positive integer <= 9223372036854775807, got an integer of 5001 digits"),
    (lambda: fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), batch_size=10 ** 5000), ValueError,
     "batch_size must be a positive integer <= 9223372036854775807, got an integer of 5001 digits"),
    (lambda: fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 2)), batch_size=2, seed=-10 ** 5000), ValueError,
     "seed must be a non-negative integer or None, got a negative integer of 5001 digits"),
    (lambda: fastbp.MLPClassifier(max_iter=-10 ** 5000).fit(np.zeros((4, 2)), [0, 1, 0, 1]), ValueError,
     "max_iter must be an int >= 1, got a negative integer of 5001 digits"),
    (lambda: fastbp.MLPRegressor(hidden_layer_sizes=(3, -10 ** 5000)).fit(np.zeros((4, 2)), np.zeros(4)), ValueError,
     "hidden_layer_sizes must be > 0, got a tuple holding an integer of more than 4300 digits"),
    # a width past int64 names hidden_layer_sizes (was builders' "widths[1]"), as scikit-learn's own checks would
    (lambda: fastbp.MLPClassifier(hidden_layer_sizes=(2 ** 63,)).fit(np.zeros((4, 2)), [0, 1, 0, 1]), ValueError,
     r"hidden_layer_sizes must be <= 9223372036854775807, got \(9223372036854775808,\)"),
])
def test_integers_past_pythons_str_limit_are_named_in_messages(make, exc, message):
    """Python refuses ``str`` of an int past 4300 digits (a ValueError with Python's own message,
    naming nothing): such an argument's message counts its digits instead."""
    with pytest.raises(exc, match=message):
        make()
