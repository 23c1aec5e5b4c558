"""fastbp.ops under adversarial arguments: outputs aliasing inputs the overlap
check used to miss, the activation backward wrappers called by keyword, empty
arrays in the normalisations, label conversion hints and activation/norm
parameters a float32 array cannot represent."""
import inspect
import warnings

import numpy as np
import pytest

from fastbp import ops
from fastbp.kernels import losses as _Ls
from fastbp.registry import activations as _acts

DTYPES = (np.float32, np.float64)
CLASS_LOSSES = {"softmax_cross_entropy": "_softmax_xent", "svm_loss": "_svm"}


# ------------------------------------------------------------------ out vs labels
class _MustNotRun:
    """A stand-in kernel that fails the test if a wrapper runs it (an out that
    overlaps the labels would make the real kernel read overwritten labels: out
    of range indices, a segfault)."""

    def pick(self, work):
        raise AssertionError("the kernel ran although out overlaps labels")


def _aliased(n, c, label_dtype=np.int64):
    """``(out, labels)`` sharing one buffer: the labels are the first bytes of ``out``."""
    buf = np.zeros(n * c)
    out = buf.reshape(n, c)
    labels = buf.view(label_dtype)[:n]
    labels[:] = np.arange(n) % c
    return out, labels


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("name", list(CLASS_LOSSES))
def test_out_overlapping_labels_is_rejected_before_the_kernel_runs(monkeypatch, name, label_dtype):
    monkeypatch.setattr(_Ls, CLASS_LOSSES[name], _MustNotRun())
    out, labels = _aliased(4, 2, label_dtype)
    before = labels.copy()
    S = np.random.default_rng(0).standard_normal((4, 2)) * 50
    with pytest.raises(ValueError, match="^out overlaps labels in memory"):
        getattr(ops, name)(S, labels, out=out)
    assert np.array_equal(labels, before)


def test_svm_loss_with_out_aliasing_labels_no_longer_corrupts_them():
    """The reproducer on the real kernel: before the fix the labels became [0 0 0 0]."""
    out, labels = _aliased(4, 2)
    S = np.random.default_rng(0).standard_normal((4, 2)) * 50
    with pytest.raises(ValueError, match="out overlaps labels"):
        ops.svm_loss(S, labels, out=out)
    assert labels.tolist() == [0, 1, 0, 1]
    # a separate out still works and gives the loss of the intact labels
    loss, d = ops.svm_loss(S, labels, out=np.empty((4, 2)))
    assert loss == ops.svm_loss(S, labels.copy())[0]


def test_batch_norm_running_statistics_must_not_overlap_each_other():
    x = np.random.default_rng(1).standard_normal((5, 3))
    both = np.zeros(3)
    with pytest.raises(ValueError, match="^running_var overlaps running_mean in memory"):
        ops.batch_norm_forward(x, both, both, training=True)
    buf = np.zeros(4)
    with pytest.raises(ValueError, match="running_var overlaps running_mean"):
        ops.batch_norm_forward(x, buf[:3], buf[1:], training=True)
    assert not buf.any()       # nothing written
    rm, rv = buf[:3].copy(), np.ones(3)
    ops.batch_norm_forward(x, rm, rv, training=True)       # separate arrays: fine
    assert np.allclose(rm, 0.1 * x.mean(0))


# ------------------------------------------------------------------ backward by keyword
def _activation_names():
    return [e.name for e in _acts.entries(public=True)]


@pytest.mark.parametrize("name", _activation_names())
def test_activation_backward_takes_its_documented_argument_names_by_keyword(name):
    bwd = getattr(ops, f"{name}_backward")
    first, second = list(inspect.signature(bwd).parameters)[:2]
    assert second == "dy" and first in ("x", "y")
    assert f"\n    {first} : numpy.ndarray" in bwd.__doc__
    rng = np.random.default_rng(2)
    t = rng.uniform(0.1, 0.9, (3, 4))       # a valid output of every activation (and an input)
    dy = rng.standard_normal((3, 4))
    ref = bwd(t, dy)
    np.testing.assert_array_equal(bwd(**{first: t, "dy": dy}), ref)
    np.testing.assert_array_equal(bwd(t, dy=dy), ref)
    out = np.empty_like(t)
    assert bwd(**{first: t, "dy": dy, "out": out}) is out
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(TypeError, match=f"missing 1 required positional argument: '{first}'"):
        bwd(dy=dy)
    with pytest.raises(TypeError, match=f"multiple values for argument '{first}'"):
        bwd(t, **{first: t, "dy": dy})


def test_activation_backward_keywords_with_parameters():
    x = np.linspace(-2, 2, 9)
    dy = np.ones(9)
    np.testing.assert_array_equal(ops.gelu_backward(x=x, dy=dy, approximate="tanh"),
                                  ops.gelu_backward(x, dy, "tanh"))
    np.testing.assert_array_equal(ops.leaky_relu_backward(x=x, dy=dy, negative_slope=0.2),
                                  ops.leaky_relu_backward(x, dy, 0.2))
    y = ops.sigmoid_forward(x)
    np.testing.assert_array_equal(ops.sigmoid_backward(y=y, dy=dy), ops.sigmoid_backward(y, dy))
    with pytest.raises(TypeError, match="unexpected keyword argument 't'"):
        ops.relu_backward(np.ones(3), np.ones(3), t=np.ones(3))


# ------------------------------------------------------------------ empty arrays
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 0), (0,), (2, 3, 0)])
def test_layer_norm_over_zero_features_gives_empty_outputs_as_pytorch(dtype, shape):
    x = np.zeros(shape, dtype)
    w, b = np.ones(0, dtype), np.zeros(0, dtype)
    y, stats = ops.layer_norm_forward(x, w, b)
    assert y.shape == shape and y.dtype == dtype
    assert stats.shape == shape[:-1] + (2,) and stats.dtype == dtype
    assert np.all(stats[..., 0] == 0) and np.all(np.isnan(stats[..., 1]))
    out = np.empty(shape, dtype)
    assert ops.layer_norm_forward(x, out=out)[0] is out
    dx, dw, db = ops.layer_norm_backward(x, x.copy(), stats, w, b)
    assert dx.shape == shape and dw.shape == (0,) and db.shape == (0,)
    dx, dw, db = ops.layer_norm_backward(x, x.copy(), stats)
    assert dx.shape == shape and dw is None and db is None


def test_layer_norm_empty_stats_match_torch_native_layer_norm():
    torch = pytest.importorskip("torch")
    for shape in [(3, 0), (0,), (2, 3, 0)]:
        _, stats = ops.layer_norm_forward(np.zeros(shape))
        y, mean, rstd = torch.ops.aten.native_layer_norm(torch.zeros(shape, dtype=torch.float64), [0],
                                                         None, None, 1e-5)
        assert tuple(y.shape) == shape
        np.testing.assert_array_equal(stats[..., :1], mean.numpy())
        np.testing.assert_array_equal(stats[..., 1:], rstd.numpy())       # NaN == NaN here


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_over_zero_rows(dtype):
    x = np.zeros((0, 3), dtype)
    y, stats = ops.layer_norm_forward(x, np.ones(3, dtype), np.zeros(3, dtype))
    assert y.shape == (0, 3) and stats.shape == (0, 2)
    dx, dw, db = ops.layer_norm_backward(x, x, stats, np.ones(3, dtype), np.zeros(3, dtype))
    assert dx.shape == (0, 3) and np.array_equal(dw, np.zeros(3)) and np.array_equal(db, np.zeros(3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("running", [True, False])
def test_batch_norm_of_an_empty_batch_as_pytorch(dtype, training, running):
    x = np.zeros((0, 3), dtype)
    rm, rv = np.full(3, 0.5, dtype), np.full(3, 2.0, dtype)
    args = (rm, rv) if running else (None, None)
    y, stats = ops.batch_norm_forward(x, *args, np.ones(3, dtype), np.zeros(3, dtype), training=training)
    assert y.shape == (0, 3) and y.dtype == dtype and stats.shape == (2, 3) and stats.dtype == dtype
    assert np.all(rm == 0.5) and np.all(rv == 2.0)          # not updated from no rows, as PyTorch
    if running and not training:     # the running statistics normalise (none of) the rows
        np.testing.assert_allclose(stats, [[0.5] * 3, [1 / np.sqrt(2.0 + 1e-5)] * 3], rtol=1e-6)
    else:                            # the statistics of no rows
        assert np.all(stats[0] == 0) and np.all(np.isnan(stats[1]))
    dx, dw, db = ops.batch_norm_backward(x, x, stats, np.ones(3, dtype), np.zeros(3, dtype),
                                         batch_stats=training or not running)
    assert dx.shape == (0, 3) and np.array_equal(dw, np.zeros(3)) and np.array_equal(db, np.zeros(3))


def test_batch_norm_empty_batch_against_torch_and_one_row_still_rejected():
    torch = pytest.importorskip("torch")
    rm, rv = np.zeros(3), np.ones(3)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ty = torch.nn.functional.batch_norm(torch.zeros(0, 3, dtype=torch.float64), trm, trv, training=True)
    y, _ = ops.batch_norm_forward(np.zeros((0, 3)), rm, rv, training=True)
    assert y.shape == tuple(ty.shape)
    np.testing.assert_array_equal(rm, trm.numpy())
    np.testing.assert_array_equal(rv, trv.numpy())
    with pytest.raises(ValueError, match="more than 1 row"):           # PyTorch raises here too
        ops.batch_norm_forward(np.ones((1, 3)), training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        torch.nn.functional.batch_norm(torch.ones(1, 3), None, None, training=True)


def test_batch_norm_over_zero_features_and_dropout_of_empty_arrays():
    for training in (True, False):
        y, stats = ops.batch_norm_forward(np.zeros((4, 0)), np.zeros(0), np.ones(0), training=training)
        assert y.shape == (4, 0) and stats.shape == (2, 0)
    for shape in [(0,), (0, 3), (2, 0, 3)]:
        assert ops.dropout_forward(np.zeros(shape), 0.5, seed=1).shape == shape
        assert ops.dropout_backward(np.zeros(shape), 0.5, seed=1).shape == shape


# ------------------------------------------------------------------ label hints
@pytest.mark.parametrize("fn", [ops.softmax_cross_entropy, ops.svm_loss])
def test_list_labels_hint_an_integer_dtype_that_works(fn):
    S = np.zeros((3, 4))
    with pytest.raises(TypeError, match=r"^labels must be a numpy.ndarray, got list; "
                                        r"convert it with np.asarray\(labels, dtype=np.int64\)$"):
        fn(S, [0, 1, 2])
    loss, _ = fn(S, np.asarray([0, 1, 2], dtype=np.int64))     # following the hint works
    assert np.isfinite(loss)
    with pytest.raises(TypeError, match=r"dtype=np.float32 or np.float64"):       # float arrays keep theirs
        fn([[0.0] * 4] * 3, np.zeros(3, np.int64))


# ------------------------------------------------------------------ unrepresentable parameters
def _f32(*shape):
    return np.ones(shape, np.float32)


_HUGE = 1e39     # finite as a Python float, beyond float32's 3.4e38


@pytest.mark.parametrize("call, owner, param", [
    (lambda: ops.leaky_relu_forward(_f32(3), _HUGE), "leaky_relu_forward", "negative_slope"),
    (lambda: ops.leaky_relu_backward(_f32(3), _f32(3), negative_slope=-_HUGE), "leaky_relu_backward",
     "negative_slope"),
    (lambda: ops.elu_forward(_f32(3), alpha=_HUGE), "elu_forward", "alpha"),
    (lambda: ops.softplus_forward(_f32(3), 1.0, _HUGE), "softplus_forward", "threshold"),
    (lambda: ops.linear_forward(_f32(2, 3), _f32(3, 2), activation="leaky_relu",
                                activation_params={"negative_slope": _HUGE}), "linear_forward", "negative_slope"),
    (lambda: ops.linear_backward(_f32(2, 3), _f32(3, 2), _f32(2, 2), _f32(2, 2), activation="leaky_relu",
                                 activation_params={"negative_slope": _HUGE}, z=_f32(2, 2)),
     "linear_backward", "negative_slope"),
    (lambda: ops.layer_norm_forward(_f32(2, 3), eps=_HUGE), "layer_norm_forward", "eps"),
    (lambda: ops.batch_norm_forward(_f32(2, 3), eps=_HUGE), "batch_norm_forward", "eps"),
])
def test_float32_parameter_beyond_its_range_is_a_valueerror(call, owner, param):
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # numpy's "overflow encountered in cast" must not leak
        with pytest.raises(ValueError, match=rf"^{owner}.*{param}=-?1e\+39 cannot be represented in float32"):
            call()


def test_float64_takes_the_same_parameters():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ops.leaky_relu_forward(np.array([-1.0, 1.0]), _HUGE)
        assert y.tolist() == [-_HUGE, 1.0]
        ops.layer_norm_forward(np.ones((2, 3)), eps=_HUGE)
        ops.linear_forward(np.ones((2, 3)), np.ones((3, 2)), activation="leaky_relu",
                           activation_params={"negative_slope": _HUGE})


# ------------------------------------------------------------------ docs
def test_poisson_loss_docstring_states_the_factor_to_sklearn():
    doc = " ".join(ops.poisson_loss.__doc__.split())
    assert "*sums* over the outputs" in doc and "``n * L``" in doc
    assert "the loss of ``MLPRegressor(loss='poisson')``)." not in doc     # the old claim of equality


def test_byte_swapped_float_arrays_are_refused_naming_the_byte_order():
    x = np.ones((2, 3), ">f8")
    with pytest.raises(TypeError, match=r"x has dtype >f8; expected float32 or float64 in native byte order "
                                        r"\(convert with x.astype\(x.dtype.newbyteorder\('='\)\)\)"):
        ops.relu_forward(x)
    with pytest.raises(TypeError, match=r"has dtype float16; expected float32 or float64$"):
        ops.relu_forward(np.ones((2, 3), np.float16))
    y = ops.relu_forward(x.astype(x.dtype.newbyteorder("=")))      # the advice works
    assert y.dtype == np.float64


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_bce_with_logits_at_an_infinite_logit_is_the_losss_limit(dt):
    """``max(s, 0) - s t`` at ``s = inf`` was ``inf - inf t``: NaN for t = 0.5 and t = 1 where
    the loss is inf and 0 (PyTorch: inf and NaN).  The limit: ``(1 - t) inf`` at ``+inf``,
    ``t inf`` at ``-inf``; the gradient ``sigmoid(s) - t`` stays."""
    S = np.array([[np.inf, np.inf, np.inf, -np.inf, -np.inf, -np.inf]], dt)
    T = np.array([[0.0, 0.5, 1.0, 0.0, 0.5, 1.0]], dt)
    want = [np.inf, np.inf, 0.0, 0.0, np.inf, np.inf]
    for j in range(S.shape[1]):
        loss, dS = ops.bce_with_logits(S[:, j:j + 1], T[:, j:j + 1])
        assert loss == want[j], (j, loss)
        assert dS[0, 0] == dt((1.0 if S[0, j] > 0 else 0.0) - T[0, j])
    loss, _ = ops.bce_with_logits(S[:, [2, 3]], T[:, [2, 3]])
    assert loss == 0.0
