"""The training steps that fastbp is compared with, one class per peer.

Every peer implements the same step as :func:`fastbp.compile` with
``loss="softmax_cross_entropy"`` and the configuration's optimizer: an MLP
whose hidden blocks are ``Linear -> [BatchNorm1d] -> ReLU|GELU -> [Dropout]``
(:class:`fastbp.bench.configs.Config`; the issue-4 configurations: ReLU
only), mean softmax cross-entropy over the batch, and a plain SGD (or
AdamW) update of every parameter.  BatchNorm runs in training mode (batch
statistics, running statistics updated), GELU is the exact (erf) form.
Dropout masks come from each library's own generator, so they differ
between peers: the runner compares losses on the dropout-free variant
(:meth:`Config.without_dropout`).  A peer that cannot build a configuration
says why in ``Peer.supports(config)`` (None: it can) and is skipped for it.
Each peer is built from the same initial weights
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


def _plain_only(cls, config):
    """``supports`` of the peers that implement only the issue-4 network (ReLU, SGD)."""
    if config.plain:
        return None
    return f"{cls.name} implements ReLU MLPs with plain SGD only, not {config.describe()}"


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
    supports = classmethod(_plain_only)

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
    #: ``fastbp.compile``'s ``precision`` (:class:`fastbp.bench.bf16.FastbpBf16Peer`: ``"bf16"``)
    precision = "full"

    @classmethod
    def supports(cls, config):
        return None

    def __init__(self, config, weights, lr, dtype=np.float32):
        import fastbp

        _check_weights(config, weights)
        if not hasattr(fastbp, "compile"):
            raise RuntimeError("fastbp.compile is not available in this fastbp")
        self.config = config
        self.dtype = np.dtype(dtype)
        self.model = config.model()
        extra = {} if self.precision == "full" else {"precision": self.precision}
        self.compiled = fastbp.compile(self.model, loss="softmax_cross_entropy",
                                       optimizer=config.fastbp_optimizer(lr), batch_size=config.batch,
                                       dtype=self.dtype.type, seed=0, **extra)
        if getattr(self.compiled, "precision", "full") != self.precision:
            raise RuntimeError(f"fastbp.compile(precision={self.precision!r}) built a step of precision "
                               f"{getattr(self.compiled, 'precision', 'full')!r}")
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
    """PyTorch eager: ``nn.Sequential`` of ``nn.Linear`` (``nn.BatchNorm1d``) ``nn.ReLU``/``nn.GELU()``
    (``nn.Dropout``), ``nn.CrossEntropyLoss``, ``optim.SGD`` or ``optim.AdamW``; training mode."""

    name = "torch"

    @classmethod
    def supports(cls, config):
        return None

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
                if config.batchnorm:
                    mods.append(torch.nn.BatchNorm1d(o, dtype=self.tdtype))
                mods.append(torch.nn.GELU() if config.activation == "gelu" else torch.nn.ReLU())
                if config.dropout:
                    mods.append(torch.nn.Dropout(config.dropout))
        torch.manual_seed(0)    # the dropout masks
        self.model = torch.nn.Sequential(*mods).train()
        if config.optim == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        else:
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=config.weight_decay)
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
    """JAX: ``jax.jit`` of ``value_and_grad`` of the loss plus the SGD or AdamW update (state donated).

    BatchNorm in training mode (batch mean and biased variance; the running
    statistics updated with the unbiased variance, momentum 0.1, as
    PyTorch), exact GELU (``jax.nn.gelu(approximate=False)``), inverted
    dropout from ``jax.random`` keyed by the step count, AdamW as
    ``torch.optim.AdamW`` (decay first, bias-corrected moments).
    """

    name = "jax"

    @classmethod
    def supports(cls, config):
        return None

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
        bn, p_drop, eps_bn, mom = config.batchnorm, float(config.dropout), 1e-5, 0.1
        gelu = config.activation == "gelu"
        wd, b1, b2, eps = float(config.weight_decay), 0.9, 0.999, 1e-8

        def forward(params, stats, x, key):
            h = x
            new_stats = []
            for l in range(n_layers):
                W, b = params[l]["W"], params[l]["b"]
                h = h @ W + b
                if l == n_layers - 1:
                    break
                if bn:
                    mu = jnp.mean(h, axis=0)
                    var = jnp.mean(jnp.square(h - mu), axis=0)
                    n = h.shape[0]
                    rm, rv = stats[l]
                    new_stats.append(((1 - mom) * rm + mom * mu, (1 - mom) * rv + mom * var * (n / (n - 1))))
                    h = (h - mu) * jax.lax.rsqrt(var + eps_bn) * params[l]["gamma"] + params[l]["beta"]
                h = jax.nn.gelu(h, approximate=False) if gelu else jax.nn.relu(h)
                if p_drop:
                    keep = jax.random.bernoulli(jax.random.fold_in(key, l), 1.0 - p_drop, h.shape)
                    h = jnp.where(keep, h / (1.0 - p_drop), 0.0)
            return h, new_stats

        def loss_fn(params, stats, x, y, key):
            h, new_stats = forward(params, stats, x, key)
            logp = jax.nn.log_softmax(h, axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), new_stats

        def train_step(state, x, y):
            params, stats, m, v, t = state
            key = jax.random.fold_in(jax.random.PRNGKey(0), t)
            (loss, new_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y, key)
            t1 = t + 1
            if config.optim == "sgd":
                params = jax.tree_util.tree_map(lambda p, dp: p - lr * dp, params, g)
            else:
                m = jax.tree_util.tree_map(lambda a, dp: b1 * a + (1 - b1) * dp, m, g)
                v = jax.tree_util.tree_map(lambda a, dp: b2 * a + (1 - b2) * dp * dp, v, g)
                c1 = 1 - b1 ** t1.astype(jnp.float32)
                c2 = 1 - b2 ** t1.astype(jnp.float32)
                params = jax.tree_util.tree_map(
                    lambda p, a, s: p * (1 - lr * wd) - lr * (a / c1) / (jnp.sqrt(s / c2) + eps), params, m, v)
            return (params, new_stats if bn else stats, m, v, t1), loss

        self._step = jax.jit(train_step, donate_argnums=0)
        params = []
        for l, (W, b) in enumerate(weights):
            p = {"W": jnp.asarray(np.asarray(W, np.float32)), "b": jnp.asarray(np.asarray(b, np.float32))}
            if bn and l < n_layers - 1:
                o = W.shape[1]
                p["gamma"], p["beta"] = jnp.ones(o, jnp.float32), jnp.zeros(o, jnp.float32)
            params.append(p)
        stats = [(jnp.zeros(o, jnp.float32), jnp.ones(o, jnp.float32)) for o in config.widths[1:-1]] if bn else []
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        self.state = (params, stats, zeros, jax.tree_util.tree_map(jnp.zeros_like, params), jnp.int32(0))

    @property
    def params(self):
        return self.state[0]

    def batches(self, X, y):
        pairs = _cut(np.ascontiguousarray(X, dtype=np.float32), np.asarray(y), self.config.batch)
        return [(self.jax.device_put(x), self.jax.device_put(t.astype(np.int32))) for x, t in pairs]

    def step(self, x, y):
        self.state, loss = self._step(self.state, x, y)
        return loss

    def loss_value(self, handle):
        return float(handle)

    def sync(self, handle):
        handle.block_until_ready()

    def weights(self):
        return [(np.array(p["W"]), np.array(p["b"])) for p in self.state[0]]


class SklearnPeer:
    """scikit-learn's ``MLPClassifier`` (solver ``"sgd"``, no momentum, no L2), one epoch per ``epoch()``.

    It initialises its own weights (it takes none from outside), so its
    losses are not compared.  An epoch is one ``partial_fit`` over the
    data set in order; per-step time is epoch time over steps per epoch.
    """

    name = "sklearn"
    supports = classmethod(_plain_only)

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
        raise ValueError(f"--peers: unknown peer {name!r}; expected some of {', '.join(PEERS)}")
    return importlib.util.find_spec(MODULES[name]) is not None
