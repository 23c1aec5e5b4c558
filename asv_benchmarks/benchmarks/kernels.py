"""Each kernel's forward and backward at several sizes, float32.

Two views: the private kernels of :mod:`fastbp.kernels` on caller-allocated
outputs (what the fused step runs; ``variant`` compares fastbp's own loops
with the BLAS path), and the validating, allocating public API of
:mod:`fastbp.ops`.  Sizes follow the layers of the step configurations:
``B x in x out``.
"""
import numpy as np

from .common import Benchmark, parse_shape, require, require_attr

LINEAR_SHAPES = ["32x64x32", "64x784x128", "256x784x512", "256x512x512", "1024x1024x2048"]
ELEMENTWISE_SHAPES = ["32x32", "256x512", "1024x2048"]
LOSS_SHAPES = ["32x10", "256x10", "1024x1024"]


def _rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


class _Linear(Benchmark):
    param_names = ["shape", "variant"]
    params = [LINEAR_SHAPES, ["loops", "blas"]]

    def setup(self, shape, variant):
        self.variant = variant
        lin = require("fastbp.kernels.linear")
        gemm = require("fastbp.kernels.gemm")
        act = require("fastbp.kernels.activations")
        codes = require("fastbp.kernels.codes")
        B, K, N = parse_shape(shape)
        rng = np.random.default_rng(0)
        self.X, self.W, self.b = _rand(rng, B, K), _rand(rng, K, N), _rand(rng, N)
        self.Y = np.maximum(_rand(rng, B, N), 0)
        self.dY, self.dZ = _rand(rng, B, N), np.empty((B, N), np.float32)
        self.dW, self.db, self.dX = np.empty((K, N), np.float32), np.empty(N, np.float32), np.empty((B, K), np.float32)
        self.relu = codes.ACT_RELU
        work = B * K * N
        self.fwd_loops = lin._linear_fwd.pick(work)
        self.bias_act = lin._bias_act.pick(B * N)
        self.act_bwd = act._act_bwd.pick(B * N)
        self.colsum = lin._colsum.pick(B * N)
        self.mm_tn = gemm._mm_tn.pick(work)
        self.mm_nt = gemm._mm_nt.pick(work)
        self.blas_mm = gemm._blas_mm
        self.forward()  # compile / load from the on-disk cache
        self.backward()

    def forward(self):
        if self.variant == "loops":
            self.fwd_loops(self.X, self.W, self.b, self.relu, self.Y)
        else:
            self.blas_mm(self.X, self.W, self.Y, False, False, False)
            self.bias_act(self.Y, self.b, self.relu)

    def backward(self):
        self.act_bwd(self.Y, self.dY, self.relu, self.dZ, False)
        if self.variant == "loops":
            self.mm_tn(self.X, self.dZ, self.dW, False)
            self.mm_nt(self.dZ, self.W, self.dX, False)
        else:
            self.blas_mm(self.X, self.dZ, self.dW, True, False, False)
            self.blas_mm(self.dZ, self.W, self.dX, False, True, False)
        self.colsum(self.dZ, self.db, False)


class LinearForward(_Linear):
    """``Y = relu(X W + b)``: fused loop kernel vs BLAS product + bias/activation epilogue."""

    def time_forward(self, shape, variant):
        self.forward()


class LinearBackward(_Linear):
    """``dZ = dY relu'(Y)``, ``dW = X^T dZ``, ``dX = dZ W^T``, ``db = 1^T dZ``."""

    def time_backward(self, shape, variant):
        self.backward()


class Activation(Benchmark):
    """Elementwise activation forward and backward (from the cached output)."""

    param_names = ["shape", "activation"]
    params = [ELEMENTWISE_SHAPES, ["relu", "sigmoid", "tanh"]]

    def setup(self, shape, activation):
        act = require("fastbp.kernels.activations")
        codes = require("fastbp.kernels.codes")
        B, N = parse_shape(shape)
        rng = np.random.default_rng(0)
        self.X, self.dY = _rand(rng, B, N), _rand(rng, B, N)
        self.Y, self.dX = np.empty_like(self.X), np.empty_like(self.X)
        self.code = codes.ACTIVATIONS[activation]
        self.fwd = act._act_fwd.pick(B * N)
        self.bwd = act._act_bwd.pick(B * N)
        self.time_forward(shape, activation)
        self.time_backward(shape, activation)

    def time_forward(self, shape, activation):
        self.fwd(self.X, self.code, self.Y)

    def time_backward(self, shape, activation):
        self.bwd(self.Y, self.dY, self.code, self.dX, False)


class SoftmaxCrossEntropy(Benchmark):
    """Mean softmax cross-entropy and its gradient w.r.t. the scores, one pass."""

    param_names = ["shape"]
    params = [LOSS_SHAPES]

    def setup(self, shape):
        losses = require("fastbp.kernels.losses")
        B, C = parse_shape(shape)
        rng = np.random.default_rng(0)
        self.S = _rand(rng, B, C)
        self.y = rng.integers(0, C, size=B, dtype=np.int64)
        self.dS = np.empty_like(self.S)
        self.row = np.empty(B, np.float64)
        self.k = losses._softmax_xent.pick(B * C)
        self.time_loss(shape)

    def time_loss(self, shape):
        self.k(self.S, self.y, self.dS, self.row)


class SGDUpdate(Benchmark):
    """Plain SGD update of a flat parameter vector (sizes of tiny, small and large)."""

    param_names = ["n_params"]
    params = [[2410, 101770, 8393728]]

    def setup(self, n):
        optim = require("fastbp.kernels.optim")
        rng = np.random.default_rng(0)
        self.p, self.g = _rand(rng, n), _rand(rng, n)
        self.v = np.empty(0, np.float32)
        self.k = optim._sgd_update.pick(n)
        self.time_update(n)

    def time_update(self, n):
        self.k(self.p, self.g, self.v, 1e-6, 0.0, False, 0.0)


class AdamUpdateThreads(Benchmark):
    """Adam's update of a flat parameter vector (small's and large's sizes) by the serial
    kernel the fused step runs and by its ``prange`` twin on numba's threads: the
    measurement behind the step's elementwise work staying on one thread (issue 18,
    item 3: where the update is memory-bound, a second core adds no bandwidth)."""

    param_names = ["n_params", "variant"]
    params = [[101770, 8393728], ["serial", "parallel"]]

    def setup(self, n, variant):
        optim = require("fastbp.kernels.optim")
        rng = np.random.default_rng(0)
        self.p, self.g = _rand(rng, n), _rand(rng, n)
        self.m, self.v = np.zeros(n, np.float32), np.zeros(n, np.float32)
        self.k = getattr(optim._adam_update, variant)
        self.time_update(n, variant)

    def time_update(self, n, variant):
        self.k(self.p, self.g, self.m, self.v, 1, 1e-6, 0.9, 0.999, 1e-8, 0.0, False)


class Ops(Benchmark):
    """The public, validating :mod:`fastbp.ops` functions (they allocate their outputs)."""

    param_names = ["shape"]
    params = [["32x64x32", "64x784x128", "256x512x512"]]

    def setup(self, shape):
        self.ops = require("fastbp.ops")
        for name in ("linear_forward", "linear_backward", "relu_forward", "relu_backward", "softmax_cross_entropy"):
            require_attr("fastbp.ops", name)
        B, K, N = parse_shape(shape)
        rng = np.random.default_rng(0)
        self.X, self.W, self.b = _rand(rng, B, K), _rand(rng, K, N), _rand(rng, N)
        self.Y = self.ops.linear_forward(self.X, self.W, self.b, "relu")
        self.dY = _rand(rng, B, N)
        self.labels = rng.integers(0, N, size=B, dtype=np.int64)
        self.ops.linear_backward(self.X, self.W, self.Y, self.dY, "relu")
        self.ops.relu_forward(self.X)
        self.ops.relu_backward(self.Y, self.dY)
        self.ops.softmax_cross_entropy(self.Y, self.labels)

    def time_linear_forward(self, shape):
        self.ops.linear_forward(self.X, self.W, self.b, "relu")

    def time_linear_backward(self, shape):
        self.ops.linear_backward(self.X, self.W, self.Y, self.dY, "relu")

    def time_relu_forward(self, shape):
        self.ops.relu_forward(self.X)

    def time_relu_backward(self, shape):
        self.ops.relu_backward(self.Y, self.dY)

    def time_softmax_cross_entropy(self, shape):
        self.ops.softmax_cross_entropy(self.Y, self.labels)
