"""fastbp.ops' LayerNorm, BatchNorm1d and dropout wrappers (fastbp._ops_norm):
against an independent numpy reference, finite differences (float64) and
PyTorch's torch.nn.functional where it is installed; and their argument errors."""
import numpy as np
import pytest

from fastbp import ops

DTYPES = (np.float32, np.float64)
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _rng(seed=0):
    return np.random.default_rng(seed)


def _ln_ref(x, w, b, eps):
    x = x.astype(np.float64)
    mean = x.mean(1, keepdims=True)
    var = x.var(1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    return y * (1.0 if w is None else w) + (0.0 if b is None else b)


def _bn_ref(x, w, b, eps, mean=None, var=None):
    x = x.astype(np.float64)
    if mean is None:
        mean, var = x.mean(0), x.var(0)
    y = (x - mean) / np.sqrt(var + eps)
    return y * (1.0 if w is None else w) + (0.0 if b is None else b)


def _fd(f, a, h=1e-6):
    """Central differences of the scalar ``f()`` w.r.t. every element of ``a`` (in place)."""
    g = np.zeros_like(a)
    flat, gf = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g


# ------------------------------------------------------------------ LayerNorm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)])
def test_layer_norm_forward_against_numpy(dtype, affine):
    r = _rng(1)
    x = (r.standard_normal((7, 13)) * 3 + 1).astype(dtype)
    w = r.standard_normal(13).astype(dtype) if affine[0] else None
    b = r.standard_normal(13).astype(dtype) if affine[1] else None
    y, stats = ops.layer_norm_forward(x, w, b, eps=1e-3)
    assert y.dtype == dtype and y.shape == x.shape and stats.shape == (7, 2)
    np.testing.assert_allclose(y, _ln_ref(x, w, b, 1e-3), rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)
    np.testing.assert_allclose(stats[:, 0], x.astype(np.float64).mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[:, 1], 1 / np.sqrt(x.astype(np.float64).var(1) + 1e-3), rtol=1e-5)


def test_layer_norm_backward_finite_differences():
    r = _rng(2)
    x = r.standard_normal((5, 6))
    w, b = r.standard_normal(6), r.standard_normal(6)
    c = r.standard_normal((5, 6))           # loss = sum(c * y)
    y, stats = ops.layer_norm_forward(x, w, b)
    dx, dw, db = ops.layer_norm_backward(x, c, stats, w, b)

    def loss():
        return float(np.sum(c * _ln_ref(x, w, b, 1e-5)))
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _fd(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _fd(loss, b), rtol=1e-6, atol=1e-7)
    dx2, dw2, db2 = ops.layer_norm_backward(x, c, stats)
    assert dw2 is None and db2 is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_against_torch(dtype):
    torch = pytest.importorskip("torch")
    r = _rng(3)
    x, w, b = r.standard_normal((9, 11)).astype(dtype), r.standard_normal(11).astype(dtype), \
        r.standard_normal(11).astype(dtype)
    dy = r.standard_normal((9, 11)).astype(dtype)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.layer_norm(tx, (11,), tw, tb, 1e-5)
    ty.backward(torch.tensor(dy))
    y, stats = ops.layer_norm_forward(x, w, b)
    dx, dw, db = ops.layer_norm_backward(x, dy, stats, w, b)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for mine, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), **tol)


@pytest.mark.parametrize("shape", [(13,), (3, 4, 13), (2, 3, 2, 13)])
def test_layer_norm_over_the_last_axis_of_nd_arrays(shape):
    """As torch.nn.functional.layer_norm(x, (N,)): rows are the vectors along the last axis."""
    r = _rng(10)
    x = r.standard_normal(shape)
    w, b = r.standard_normal(13), r.standard_normal(13)
    dy = r.standard_normal(shape)
    y, stats = ops.layer_norm_forward(x, w, b)
    assert y.shape == shape and stats.shape == shape[:-1] + (2,)
    y2, s2 = ops.layer_norm_forward(x.reshape(-1, 13), w, b)
    assert np.array_equal(y.reshape(-1, 13), y2) and np.array_equal(stats.reshape(-1, 2), s2)
    dx, dw, db = ops.layer_norm_backward(x, dy, stats, w, b)
    dx2, dw2, db2 = ops.layer_norm_backward(x.reshape(-1, 13), dy.reshape(-1, 13), s2, w, b)
    assert dx.shape == shape and np.array_equal(dx.reshape(-1, 13), dx2)
    assert np.array_equal(dw, dw2) and np.array_equal(db, db2)
    np.testing.assert_allclose(y.reshape(-1, 13), _ln_ref(x.reshape(-1, 13), w, b, 1e-5), rtol=1e-12, atol=1e-12)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.layer_norm(tx, (13,), torch.tensor(w), torch.tensor(b))
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="stats"):
        ops.layer_norm_backward(x, dy, s2 if len(shape) > 2 else np.ones((2, 2)), w, b)


# ------------------------------------------------------------------ BatchNorm1d
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_forward_training_and_eval_against_numpy(dtype):
    r = _rng(4)
    x = (r.standard_normal((10, 6)) * 2 + 3).astype(dtype)
    w, b = r.standard_normal(6).astype(dtype), r.standard_normal(6).astype(dtype)
    rm, rv = np.zeros(6, dtype), np.ones(6, dtype)
    y, stats = ops.batch_norm_forward(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-4)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, _bn_ref(x, w, b, 1e-4), rtol=TOL[dtype] * 20, atol=TOL[dtype] * 20)
    np.testing.assert_allclose(rm, 0.2 * x64.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rv, 0.8 + 0.2 * x64.var(0, ddof=1), rtol=1e-5)    # unbiased, as PyTorch
    assert stats.shape == (2, 6)
    rm0, rv0 = rm.copy(), rv.copy()
    y2, stats2 = ops.batch_norm_forward(x, rm, rv, w, b, training=False, eps=1e-4)
    np.testing.assert_allclose(y2, _bn_ref(x, w, b, 1e-4, rm0, rv0), rtol=TOL[dtype] * 20, atol=TOL[dtype] * 20)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)        # eval leaves them
    # no running statistics: the minibatch's, in eval mode too (as PyTorch)
    y3, _ = ops.batch_norm_forward(x, training=False)
    np.testing.assert_allclose(y3, _bn_ref(x, None, None, 1e-5), rtol=TOL[dtype] * 20, atol=TOL[dtype] * 20)


@pytest.mark.parametrize("batch_stats", [True, False])
def test_batch_norm_backward_finite_differences(batch_stats):
    r = _rng(5)
    x = r.standard_normal((6, 4))
    w, b = r.standard_normal(4), r.standard_normal(4)
    rm, rv = r.standard_normal(4), r.random(4) + 0.5
    c = r.standard_normal((6, 4))
    y, stats = ops.batch_norm_forward(x, rm.copy(), rv.copy(), w, b, training=batch_stats)
    dx, dw, db = ops.batch_norm_backward(x, c, stats, w, b, batch_stats=batch_stats)

    def loss():
        ref = _bn_ref(x, w, b, 1e-5) if batch_stats else _bn_ref(x, w, b, 1e-5, rm, rv)
        return float(np.sum(c * ref))
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _fd(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _fd(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_against_torch(dtype, training):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    r = _rng(6)
    x, w, b = r.standard_normal((12, 5)).astype(dtype), r.standard_normal(5).astype(dtype), \
        r.standard_normal(5).astype(dtype)
    rm, rv = r.standard_normal(5).astype(dtype), (r.random(5) + 0.5).astype(dtype)
    dy = r.standard_normal((12, 5)).astype(dtype)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = F.batch_norm(tx, trm, trv, tw, tb, training=training, momentum=0.3, eps=1e-5)
    ty.backward(torch.tensor(dy))
    y, stats = ops.batch_norm_forward(x, rm, rv, w, b, training=training, momentum=0.3)
    dx, dw, db = ops.batch_norm_backward(x, dy, stats, w, b, batch_stats=training)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for mine, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad), (rm, trm), (rv, trv)):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), **tol)


# ------------------------------------------------------------------ dropout
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_scale_and_backward(dtype):
    x = _rng(7).standard_normal((64, 100)).astype(dtype)
    y = ops.dropout_forward(x, p=0.3, seed=11)
    kept = y != 0
    assert 0.65 < kept.mean() < 0.75
    np.testing.assert_array_equal(y[kept], x[kept] * dtype(1 / dtype(0.7)))
    dy = _rng(8).standard_normal(x.shape).astype(dtype)
    dx = ops.dropout_backward(dy, p=0.3, seed=11)
    np.testing.assert_array_equal(dx != 0, kept)          # the forward's mask
    np.testing.assert_array_equal(dx[kept], dy[kept] * dtype(1 / dtype(0.7)))
    assert np.array_equal(ops.dropout_forward(x, 0.3, seed=11), y)        # a pure function of the seed
    assert not np.array_equal(ops.dropout_forward(x, 0.3, seed=12), y)


def test_dropout_edge_cases_and_shapes():
    x = _rng(9).standard_normal((4, 5, 6))
    y = ops.dropout_forward(x, 0.5, seed=3)
    assert y.shape == x.shape
    flat = ops.dropout_forward(x.reshape(20, 6), 0.5, seed=3)
    assert np.array_equal(y.reshape(20, 6), flat)        # the mask follows the flat index
    assert np.array_equal(ops.dropout_forward(x, 0.0, seed=3), x)
    assert np.array_equal(ops.dropout_forward(x, 0.9, seed=3, training=False), x)
    assert not np.any(ops.dropout_forward(x, 1.0, seed=3))
    out = np.empty_like(x)
    assert ops.dropout_forward(x, 0.5, seed=3, out=out) is out and np.array_equal(out, y)


def test_dropout_against_torch_statistics():
    torch = pytest.importorskip("torch")
    x = np.ones((200, 50), np.float32)
    mine = ops.dropout_forward(x, 0.25, seed=0)
    theirs = torch.nn.functional.dropout(torch.tensor(x), 0.25, training=True).numpy()
    assert set(np.unique(mine)) == set(np.unique(theirs)) == {np.float32(0), np.float32(1 / np.float32(0.75))}
    assert abs((mine == 0).mean() - 0.25) < 0.02


# ------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match="x has dtype int64"):
        ops.layer_norm_forward(np.ones((4, 3), np.int64))
    with pytest.raises(ValueError, match="weight"):
        ops.layer_norm_forward(x, np.ones(4))
    with pytest.raises(TypeError, match="weight"):
        ops.layer_norm_forward(x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="eps"):
        ops.layer_norm_forward(x, eps=-1.0)
    with pytest.raises(ValueError, match="stats"):
        ops.layer_norm_backward(x, x, np.ones((3, 2)))
    with pytest.raises(ValueError, match="dy"):
        ops.layer_norm_backward(x, np.ones((4, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        ops.batch_norm_forward(x, np.zeros(3))
    with pytest.raises(ValueError, match="more than 1 row"):
        ops.batch_norm_forward(np.ones((1, 3)), np.zeros(3), np.ones(3), training=True)
    with pytest.raises(ValueError, match="momentum"):
        ops.batch_norm_forward(x, np.zeros(3), np.ones(3), training=True, momentum=1.5)
    with pytest.raises(TypeError, match="training"):
        ops.batch_norm_forward(x, training="yes")
    ro = np.zeros(3)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="running_mean"):
        ops.batch_norm_forward(x, ro, np.ones(3), training=True)
    with pytest.raises(ValueError, match="stats"):
        ops.batch_norm_backward(x, x, np.ones((4, 3)))
    with pytest.raises(ValueError, match="dropout probability p has to be between 0 and 1"):
        ops.dropout_forward(x, 1.5)
    # the seed is required (the backward redraws the forward's mask from it): the messages
    # offer no None
    with pytest.raises(TypeError, match=r"^seed must be a non-negative integer, got NoneType$"):
        ops.dropout_forward(x, 0.5, seed=None)
    with pytest.raises(ValueError, match=r"^seed must be a non-negative integer, got -1$"):
        ops.dropout_forward(x, 0.5, seed=-1)
    with pytest.raises(TypeError, match=r"^seed must be a non-negative integer, got float$"):
        ops.dropout_backward(x, 0.5, seed=1.0)
    with pytest.raises(ValueError, match="out"):
        ops.dropout_forward(x, 0.5, out=x)


def test_batch_norm_of_one_row_without_running_statistics_is_refused_in_eval_too():
    """It returned the bias (rstd 316): one row has no variance, in eval mode without running
    statistics as in training (PyTorch's BatchNorm1d(track_running_stats=False).eval()
    raises 'Expected more than 1 value per channel')."""
    x = np.array([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"expected more than 1 row per feature without running statistics"):
        ops.batch_norm_forward(x, bias=np.full(3, 0.5), training=False)
    rm, rv = np.zeros(3), np.ones(3)
    y, _ = ops.batch_norm_forward(x, running_mean=rm, running_var=rv, training=False)    # the running ones
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5))


def test_read_only_running_statistics_are_read_in_eval():
    """Refused as 'read-only' although eval mode never writes them (a memory-mapped file)."""
    x = np.random.default_rng(0).standard_normal((4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    rm.flags.writeable = rv.flags.writeable = False
    y, _ = ops.batch_norm_forward(x, running_mean=rm, running_var=rv, training=False)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5))
    with pytest.raises(ValueError, match="running_mean is read-only"):
        ops.batch_norm_forward(x, running_mean=rm, running_var=rv, training=True)


def test_a_variance_that_overflows_float32_is_nan_not_a_silent_zero():
    """float32 values ~1e29 apart: the variance overflows to inf and 1 / sqrt(inf) made every
    normalised value (and gradient) 0, silently; now NaN, as PyTorch's (float64 is right).
    A fused step then reports the non-finite loss instead of training on zeros."""
    x = np.array([[3e29, 8e29, -1.3e30, 9e29, 3.3e29]], np.float32)
    y, stats = ops.layer_norm_forward(x)
    assert np.isnan(y).all() and np.isnan(stats[0, 1])
    dx = ops.layer_norm_backward(x, np.ones_like(x), stats)[0]
    assert np.isnan(dx).all()
    y64 = ops.layer_norm_forward(x.astype(np.float64))[0]
    assert np.isfinite(y64).all() and abs(y64.mean()) < 1e-12
    yb = ops.batch_norm_forward(x.T.copy(), training=True)[0]        # the same values down a column
    assert np.isnan(yb).all()
    # ordinary values: unchanged
    y, stats = ops.layer_norm_forward(np.array([[1.0, 2.0, 4.0]], np.float32))
    assert np.isfinite(y).all() and np.isfinite(stats).all()
