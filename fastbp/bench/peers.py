"""The training steps that fastbp is compared with, one class per peer.

Every peer implements the same step as :func:`fastbp.compile` with
``loss="softmax_cross_entropy"`` and ``optimizer=fastbp.SGD(lr)``: an MLP
with ReLU between its linear layers (none after the last), mean softmax
cross-entropy over the batch, and a plain SGD update of every weight and
bias.  Each peer is built from the same initial weights
(:func:`fastbp.bench.configs.make_weights`: ``W`` of shape ``(in, out)``)
and runs on the same batches, so their losses can be compared step by step.

A peer's interface:

``Peer(config, weights, lr, dtype)``
    Build the model and the optimizer (imports the peer's library).
``peer.batches(X, y)``
    The data cut into ``config.batch``-row batches, converted once into
    whatever the peer's step takes (tensors, device arrays).
``peer.step(xb, yb)``
    One training step; returns a handle on the loss (possibly lazy).
``peer.loss_value(handle)``
    The loss as a Python float (waits for the step if it is asynchronous).
``peer.sync(handle)``
    Wait until the step that returned ``handle`` has finished.
``peer.weights()``
    The current weights as ``[(W (in, out), b (out,)), ...]`` numpy arrays.

scikit-learn's :class:`~sklearn.neural_network.MLPClassifier` cannot take
outside weights nor run a single step; :class:`SklearnPeer` runs whole
epochs (``epoch()``), with its own initialisation and no loss check.
"""
from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["PEERS", "DISPLAY", "MODULES", "available", "NumpyPeer", "FastbpPeer", "TorchPeer",
           "TorchCompilePeer", "JaxPeer", "SklearnPeer"]


def _check_weights(config, weights):
    if len(weights) != len(config.layers):
        raise ValueError(f"weights: expected {len(config.layers)} (W, b) pairs for {config.arch}, got {len(weights)}")
    for l, ((W, b), (i, o)) in enumerate(zip(weights, config.layers)):
        if W.shape != (i, o) or b.shape != (o,):
            raise ValueError(f"weights: layer {l} expected W {(i, o)} and b {(o,)}, got {W.shape} and {b.shape}")


def _cut(X, y, batch):
    n = X.shape[0] // batch
    if n < 1:
        raise ValueError(f"X: expected at least one batch of {batch} rows, got {X.shape[0]} rows")
    return [(X[k * batch:(k + 1) * batch], y[k * batch:(k + 1) * batch]) for k in range(n)]


class NumpyPeer:
    """Hand-written forward and backward pass in numpy (OpenBLAS matmul).

    All activations, gradients and deltas live in buffers allocated once;
    the only per-step temporaries are numpy's small reductions and masks.

    Parameters
    ----------
    config : Config
    weights : list of (W (in, out), b (out,))
        Copied.
    lr : float
        SGD learning rate.
    dtype : numpy dtype, default float32
    """

    name = "numpy"

    def __init__(self, config, weights, lr, dtype=np.float32):
        _check_weights(config, weights)
        self.config = config
        self.dtype = np.dtype(dtype)
        self.lr = self.dtype.type(lr)
        B = config.batch
        self.params = [(np.array(W, dtype=dtype), np.array(b, dtype=dtype)) for W, b in weights]
        self.grads = [(np.empty_like(W), np.empty_like(b)) for W, b in self.params]
        self.acts = [np.empty((B, o), dtype) for _, o in config.layers]     # layer outputs
        self.deltas = [np.empty((B, w), dtype) for w in config.widths[1:-1]]  # dL/d(hidden outputs)
        self.dscores = np.empty((B, config.n_classes), dtype)
        self.rows = np.arange(B)

    def batches(self, X, y):
        return _cut(np.ascontiguousarray(X, dtype=self.dtype), np.asarray(y, dtype=np.int64), self.config.batch)

    def forward_backward(self, x, y):
        """Loss and gradients (into ``self.grads``) for one batch of ``n <= batch`` rows.

        Returns
        -------
        float
            Mean softmax cross-entropy of the batch.
        """
        n = x.shape[0]
        L = len(self.params)
        h = x
        for l, (W, b) in enumerate(self.params):
            z = self.acts[l][:n]
            np.matmul(h, W, out=z)
            z += b
            if l < L - 1:
                np.maximum(z, 0, out=z)
            h = z
        s = h
        rows = self.rows[:n]
        m = s.max(axis=1, keepdims=True)
        d = self.dscores[:n]
        np.subtract(s, m, out=d)
        np.exp(d, out=d)
        tot = d.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(tot[:, 0]) + m[:, 0] - s[rows, y], dtype=np.float64))
        d /= tot
        d[rows, y] -= 1
        d *= self.dtype.type(1.0 / n)
        for l in range(L - 1, -1, -1):
            W = self.params[l][0]
            gW, gb = self.grads[l]
            inp = x if l == 0 else self.acts[l - 1][:n]
            np.matmul(inp.T, d, out=gW)
            np.sum(d, axis=0, out=gb)
            if l > 0:
                dn = self.deltas[l - 1][:n]
                np.matmul(d, W.T, out=dn)
                np.multiply(dn, inp > 0, out=dn)  # ReLU' from the cached output
                d = dn
        return loss

    def step(self, x, y):
        loss = self.forward_backward(x, y)
        for (W, b), (gW, gb) in zip(self.params, self.grads):
            gW *= self.lr
            W -= gW
            gb *= self.lr
            b -= gb
        return loss

    def loss_value(self, handle):
        return float(handle)

    def sync(self, handle):
        pass

    def weights(self):
        return [(W.copy(), b.copy()) for W, b in self.params]


def _fastbp_param_keys(params):
    """``[("0.W", "0.b"), ("2.W", "2.b"), ...]``: the linear layers' keys in layer order."""
    wkeys = sorted((k for k in params if k.endswith(".W")), key=lambda k: int(k.split(".")[0]))
    return [(k, k[:-2] + ".b") for k in wkeys]


class FastbpPeer:
    """The fused training step of :func:`fastbp.compile`.

    The step is compiled for ``config.batch`` and the shared weights are
    written into ``step.params`` (``"0.W"`` has shape ``(in, out)``).
    """

    name = "fastbp"

    def __init__(self, config, weights, lr, dtype=np.float32):
        import fastbp

        _check_weights(config, weights)
        if not hasattr(fastbp, "compile"):
            raise RuntimeError("fastbp.compile is not available in this fastbp")
        self.config = config
        self.dtype = np.dtype(dtype)
        from fastbp.builders import mlp
        self.model = mlp(config.widths, "relu")
        self.compiled = fastbp.compile(self.model, loss="softmax_cross_entropy",
                                       optimizer=fastbp.SGD(lr=lr), batch_size=config.batch,
                                       dtype=self.dtype.type, seed=0)
        self.keys = _fastbp_param_keys(self.compiled.params)
        if len(self.keys) != len(weights):
            raise RuntimeError(f"fastbp step has weights {sorted(self.compiled.params)}, "
                               f"expected {len(weights)} linear layers")
        for (kW, kb), (W, b) in zip(self.keys, weights):
            self.compiled.params[kW][...] = W
            self.compiled.params[kb][...] = b

    def batches(self, X, y):
        return _cut(np.ascontiguousarray(X, dtype=self.dtype), np.asarray(y, dtype=np.int64), self.config.batch)

    def step(self, x, y):
        return self.compiled(x, y)

    def fit(self, X, y, epochs=1):
        """``step.fit`` over ``X`` in order (no shuffling); per-step losses."""
        return self.compiled.fit(X, y, epochs=epochs, shuffle=False)

    def loss_value(self, handle):
        return float(handle)

    def sync(self, handle):
        pass

    def weights(self):
        p = self.compiled.params
        return [(np.array(p[kW]), np.array(p[kb])) for kW, kb in self.keys]


class TorchPeer:
    """PyTorch eager: ``nn.Sequential`` of ``nn.Linear``/``nn.ReLU``, ``nn.CrossEntropyLoss``, ``optim.SGD``."""

    name = "torch"

    def __init__(self, config, weights, lr, dtype=np.float32):
        import torch

        _check_weights(config, weights)
        self.torch = torch
        self.config = config
        self.tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
        self.dtype = np.dtype(dtype)
        mods = []
        self.linears = []
        for l, ((W, b), (i, o)) in enumerate(zip(weights, config.layers)):
            lin = torch.nn.Linear(i, o, dtype=self.tdtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(W, dtype=dtype).T)))
                lin.bias.copy_(torch.from_numpy(np.asarray(b, dtype=dtype)))
            mods.append(lin)
            self.linears.append(lin)
            if l < len(config.layers) - 1:
                mods.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*mods)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def batches(self, X, y):
        pairs = _cut(np.ascontiguousarray(X, dtype=self.dtype), np.asarray(y, dtype=np.int64), self.config.batch)
        return [(self.torch.from_numpy(np.ascontiguousarray(x)), self.torch.from_numpy(np.ascontiguousarray(t)))
                for x, t in pairs]

    def _train_step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def step(self, x, y):
        return self._train_step(x, y)

    def loss_value(self, handle):
        return float(handle.detach().item())

    def sync(self, handle):
        pass  # CPU tensors: the step has run when it returns

    def weights(self):
        return [(lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()) for lin in self.linears]


class TorchCompilePeer(TorchPeer):
    """The same PyTorch step, the whole function passed through ``torch.compile``.

    Dynamo compiles the forward and (through AOTAutograd) its backward, and
    the optimizer update; ``loss.backward()`` is a graph break.
    """

    name = "torch_compile"

    def __init__(self, config, weights, lr, dtype=np.float32):
        super().__init__(config, weights, lr, dtype)
        self._compiled = self.torch.compile(self._train_step)

    def step(self, x, y):
        return self._compiled(x, y)


class JaxPeer:
    """JAX: ``jax.jit`` of ``value_and_grad`` of the loss plus the SGD update (params donated)."""

    name = "jax"

    def __init__(self, config, weights, lr, dtype=np.float32):
        import jax
        import jax.numpy as jnp

        _check_weights(config, weights)
        if np.dtype(dtype) != np.float32:
            raise TypeError("dtype: the JAX peer runs in float32 only (jax_enable_x64 is not set)")
        self.jax = jax
        self.config = config
        self.dtype = np.dtype(dtype)
        n_layers = len(config.layers)
        lr = float(lr)

        def loss_fn(params, x, y):
            h = x
            for l, (W, b) in enumerate(params):
                h = h @ W + b
                if l < n_layers - 1:
                    h = jax.nn.relu(h)
            logp = jax.nn.log_softmax(h, axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def train_step(params, x, y):
            loss, g = jax.value_and_grad(loss_fn)(params, x, y)
            params = jax.tree_util.tree_map(lambda p, dp: p - lr * dp, params, g)
            return params, loss

        self._step = jax.jit(train_step, donate_argnums=0)
        self.params = [(jnp.asarray(np.asarray(W, np.float32)), jnp.asarray(np.asarray(b, np.float32)))
                       for W, b in weights]

    def batches(self, X, y):
        pairs = _cut(np.ascontiguousarray(X, dtype=np.float32), np.asarray(y), self.config.batch)
        return [(self.jax.device_put(x), self.jax.device_put(t.astype(np.int32))) for x, t in pairs]

    def step(self, x, y):
        self.params, loss = self._step(self.params, x, y)
        return loss

    def loss_value(self, handle):
        return float(handle)

    def sync(self, handle):
        handle.block_until_ready()

    def weights(self):
        return [(np.array(W), np.array(b)) for W, b in self.params]


class SklearnPeer:
    """scikit-learn's ``MLPClassifier`` (solver ``"sgd"``, no momentum, no L2), one epoch per ``epoch()``.

    It initialises its own weights (it takes none from outside), so its
    losses are not compared.  An epoch is one ``partial_fit`` over the
    data set in order; per-step time is epoch time over steps per epoch.
    """

    name = "sklearn"

    def __init__(self, config, weights, lr, dtype=np.float32):
        from sklearn.neural_network import MLPClassifier

        self.config = config
        self.dtype = np.dtype(dtype)
        self.clf = MLPClassifier(hidden_layer_sizes=tuple(config.widths[1:-1]), activation="relu",
                                 solver="sgd", alpha=0.0, batch_size=config.batch, learning_rate_init=lr,
                                 momentum=0.0, nesterovs_momentum=False, shuffle=False, random_state=0)
        self.classes = np.arange(config.n_classes)
        self.X = self.y = None

    def set_data(self, X, y):
        n = (X.shape[0] // self.config.batch) * self.config.batch
        self.X = np.ascontiguousarray(X[:n], dtype=self.dtype)
        self.y = np.asarray(y[:n])

    @property
    def steps_per_epoch(self):
        return self.X.shape[0] // self.config.batch

    def epoch(self):
        """One epoch of ``partial_fit``; returns scikit-learn's mean loss of the epoch."""
        self.clf.partial_fit(self.X, self.y, classes=self.classes)
        return self.clf.loss_curve_[-1]


#: name -> peer class, in the order peers are reported
PEERS = {c.name: c for c in (FastbpPeer, NumpyPeer, TorchPeer, TorchCompilePeer, JaxPeer, SklearnPeer)}

#: name -> how the peer is printed
DISPLAY = {"fastbp": "fastbp", "numpy": "numpy", "torch": "PyTorch eager", "torch_compile": "torch.compile",
           "jax": "JAX jit", "sklearn": "sklearn MLP (epoch)"}

#: name -> module that must be importable for the peer to run
MODULES = {"fastbp": "fastbp", "numpy": "numpy", "torch": "torch", "torch_compile": "torch", "jax": "jax",
           "sklearn": "sklearn"}


def available(name):
    """Whether the peer's library can be imported (checked without importing it)."""
    if name not in PEERS:
        raise ValueError(f"peers: unknown peer {name!r}; expected some of {', '.join(PEERS)}")
    return importlib.util.find_spec(MODULES[name]) is not None
