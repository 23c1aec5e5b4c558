"""The CPU plan's folded dropout backward (fastbp._fold_plan): where it folds, where it must
not, and that the folded step computes what the unfolded one does."""
import numpy as np
import pytest

import fastbp
from fastbp import _isa
from fastbp._fold_plan import fold_dropout


def _ops(step):
    return [int(op) for op in step.plan.tape[:, _isa.C_OP]]


def _block_model(act=fastbp.GELU, p=0.2, width=24):
    """issue 14's tabular blocks: Linear -> BatchNorm1d -> act -> Dropout (the activation
    its own instruction: after a Linear it would be fused into the product's epilogue)"""
    return fastbp.Sequential(fastbp.Linear(10, width), fastbp.BatchNorm1d(width), act(), fastbp.Dropout(p),
                             fastbp.Linear(width, width), fastbp.LayerNorm(width), act(), fastbp.Dropout(p),
                             fastbp.Linear(width, 4))


def _pair(model, dtype, monkeypatch, opt=lambda: fastbp.AdamW(lr=1e-2)):
    folded = fastbp.compile(model, optimizer=opt(), batch_size=16, dtype=dtype, seed=3)
    monkeypatch.setattr(fastbp.config, "FOLD_DROPOUT", False)
    plain = fastbp.compile(model, optimizer=opt(), batch_size=16, dtype=dtype, seed=3)
    monkeypatch.setattr(fastbp.config, "FOLD_DROPOUT", True)
    return folded, plain


def test_a_dropout_after_an_activation_that_keeps_its_derivative_folds(monkeypatch):
    folded, plain = _pair(_block_model(), np.float64, monkeypatch)
    assert _ops(plain).count(_isa.OP_DROPOUT_BWD) == 2
    assert _ops(folded).count(_isa.OP_DROPOUT_BWD) == 0
    assert len(_ops(folded)) == len(_ops(plain)) - 2
    for row in folded.plan.tape:
        if row[_isa.C_OP] == _isa.OP_DROPOUT:
            acts = [r for r in folded.plan.tape if r[_isa.C_OP] == _isa.OP_ACT and r[_isa.C_OUT] == row[_isa.C_A]]
            assert row[_isa.C_C] == acts[0][_isa.C_C] >= 0          # scales the kept derivative
    assert list(folded.plan.sec) == [s - (2 if i >= 2 else 0) for i, s in enumerate(plain.plan.sec)]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("act", [fastbp.GELU, fastbp.SiLU, fastbp.ELU])
def test_the_folded_step_computes_what_the_unfolded_one_does(dtype, rtol, act, monkeypatch):
    # SGD: Adam would turn rounding-level differences of near-zero gradients into lr-sized steps
    folded, plain = _pair(_block_model(act), dtype, monkeypatch, opt=lambda: fastbp.SGD(lr=0.05, momentum=0.9))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 10)).astype(dtype)
    y = rng.integers(0, 4, 40)
    for i in range(6):
        s = slice((i % 3) * 16, (i % 3) * 16 + (16 if i % 3 < 2 else 8))    # a partial minibatch too
        lf, lp = folded.loss_and_grads(X[s], y[s]), plain.loss_and_grads(X[s], y[s])
        assert lf == pytest.approx(lp, rel=rtol)
        for name in plain.grads:
            np.testing.assert_allclose(folded.grads[name], plain.grads[name], rtol=rtol * 50, atol=rtol)
        assert folded(X[s], y[s]) == pytest.approx(plain(X[s], y[s]), rel=rtol)
    np.testing.assert_allclose(folded.param_vector, plain.param_vector, rtol=rtol * 50, atol=rtol)
    np.testing.assert_allclose(folded.predict(X), plain.predict(X), rtol=rtol * 50, atol=rtol)


def test_what_must_not_fold_does_not(monkeypatch):
    # ReLU keeps no derivative (its backward reads its output); a dropout right after a
    # linear layer has no activation instruction before it
    for model in (fastbp.Sequential(fastbp.Linear(5, 6), fastbp.ReLU(), fastbp.Dropout(0.3), fastbp.Linear(6, 2)),
                  fastbp.Sequential(fastbp.Linear(5, 6), fastbp.Dropout(0.3), fastbp.Linear(6, 2))):
        step = fastbp.compile(model, batch_size=4)
        assert _ops(step).count(_isa.OP_DROPOUT_BWD) == 1
        assert fold_dropout(step.plan) is step.plan
    # the activation's output read by another node too (the residual's add): not folded
    res = fastbp.Sequential(fastbp.Linear(5, 6), fastbp.GELU(),
                            fastbp.Residual(fastbp.Dropout(0.3), fastbp.Linear(6, 6)), fastbp.Linear(6, 2))
    step = fastbp.compile(res, batch_size=4)
    assert _ops(step).count(_isa.OP_DROPOUT_BWD) == 1


def test_dropout_zero_stays_bitwise_no_dropout():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((16, 10))
    y = rng.integers(0, 4, 16)
    with_zero = fastbp.compile(_block_model(p=0.0), batch_size=16, dtype=np.float64, seed=3)
    without = fastbp.compile(fastbp.Sequential(*[layer for layer in _block_model(p=0.0).layers
                                                 if not isinstance(layer, fastbp.Dropout)]),
                             batch_size=16, dtype=np.float64, seed=3)
    for _ in range(3):
        assert with_zero(X, y) == without(X, y)
    np.testing.assert_array_equal(with_zero.param_vector, without.param_vector)
