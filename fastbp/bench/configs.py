"""The benchmark configurations of issue 4 (and ``tabular``, issue 14) and the shared weights and data.

Every peer starts from the same weights and sees the same batches: both are
generated here, with numpy, from a seed, and handed to each peer (the peer
command writes them to one ``.npz`` file that every worker process loads).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

#: Variables removed from the environment of the processes the bench starts
#: (only there): both slow numpy's OpenBLAS down on this machine.
SCRUBBED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

__all__ = ["Config", "CONFIGS", "SCRUBBED_ENV", "get_configs", "make_weights", "make_data", "workspace_bytes"]


@dataclass(frozen=True)
class Config:
    """One benchmark configuration: an MLP, its minibatch size and its optimizer.

    Attributes
    ----------
    name : str
        Short name (``tiny``, ``small``, ...).
    widths : tuple of int
        Layer widths ``(in, hidden..., out)``; every hidden block is
        ``Linear -> [BatchNorm1d] -> activation -> [Dropout(dropout)]``
        (:func:`fastbp.builders.mlp`), the last layer a plain ``Linear``.
    batch : int
        Minibatch size.
    activation : str, default "relu"
        ``"relu"`` or ``"gelu"`` (exact, erf form: PyTorch's ``nn.GELU()``).
    batchnorm : bool, default False
        BatchNorm1d after each hidden Linear (PyTorch's defaults, training mode).
    dropout : float, default 0.0
        Dropout probability after each hidden activation (0: no Dropout layer).
    optim : str, default "sgd"
        ``"sgd"`` (plain SGD) or ``"adamw"`` (``torch.optim.AdamW``'s defaults:
        betas (0.9, 0.999), eps 1e-8, with ``weight_decay``).
    weight_decay : float, default 0.01
        AdamW's decoupled weight decay (PyTorch's default).
    """

    name: str
    widths: tuple
    batch: int
    activation: str = "relu"
    batchnorm: bool = False
    dropout: float = 0.0
    optim: str = "sgd"
    weight_decay: float = 0.01

    def __post_init__(self):
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"Config {self.name}: activation must be 'relu' or 'gelu', got {self.activation!r}")
        if self.optim not in ("sgd", "adamw"):
            raise ValueError(f"Config {self.name}: optim must be 'sgd' or 'adamw', got {self.optim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Config {self.name}: dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def plain(self):
        """Whether this is the issue-4 network: ReLU blocks only, plain SGD."""
        return self.activation == "relu" and not self.batchnorm and not self.dropout and self.optim == "sgd"

    def without_dropout(self):
        """The same configuration with ``dropout=0`` (the peers' masks differ: losses are compared on it)."""
        return dataclasses.replace(self, dropout=0.0)

    def describe(self):
        """``"Linear -> BatchNorm1d -> GELU -> Dropout(0.1) blocks, AdamW"``-style description."""
        parts = ["Linear"] + (["BatchNorm1d"] if self.batchnorm else []) + [
            {"relu": "ReLU", "gelu": "GELU"}[self.activation]] + ([f"Dropout({self.dropout:g})"] if self.dropout else [])
        opt = "SGD" if self.optim == "sgd" else f"AdamW (weight decay {self.weight_decay:g})"
        return f"{' -> '.join(parts)} blocks, {opt}"

    def model(self):
        """The fastbp model (:func:`fastbp.builders.mlp`, the one builder)."""
        from ..builders import mlp

        return mlp(self.widths, self.activation, batchnorm=self.batchnorm, dropout=self.dropout)

    def fastbp_optimizer(self, lr):
        """The fastbp optimizer: ``SGD(lr)`` or ``Adam(lr, weight_decay, decoupled=True)`` (AdamW)."""
        import fastbp

        if self.optim == "sgd":
            return fastbp.SGD(lr=lr)
        return fastbp.Adam(lr=lr, weight_decay=self.weight_decay, decoupled=True)

    @property
    def layers(self):
        """``[(in, out), ...]`` for each linear layer."""
        return list(zip(self.widths[:-1], self.widths[1:]))

    @property
    def n_classes(self):
        """Number of classes (the last width)."""
        return self.widths[-1]

    @property
    def flops(self):
        """Flops of one training step, ``6 * batch * sum(in * out)``.

        2 for the forward product, 4 for the two backward products (the
        input gradient of the first layer is counted although no peer needs
        it); bias, normalisation, activation, dropout, loss and update are
        not counted.
        """
        return 6 * self.batch * sum(i * o for i, o in self.layers)

    @property
    def arch(self):
        """``"64-32-10"``-style description of the widths."""
        return "-".join(str(w) for w in self.widths)


#: The configurations of issue 4, in the order they are reported.
CONFIGS = {
    c.name: c
    for c in (
        Config("tiny", (64, 32, 10), 32),
        Config("small", (784, 128, 10), 64),
        Config("medium", (784, 512, 512, 10), 256),
        Config("large", (1024, 2048, 2048, 1024), 1024),
        Config("cs231n", (3072, 100, 10), 200),
        # issue 14: the layers of CS231n's second assignment on a tabular-sized MLP
        Config("tabular", (256, 512, 512, 10), 256, activation="gelu", batchnorm=True, dropout=0.1,
               optim="adamw"),
    )
}


def get_configs(names):
    """Look configurations up by name.

    Parameters
    ----------
    names : str or iterable of str
        Comma-separated string or list of names from :data:`CONFIGS`.

    Returns
    -------
    list of Config

    Raises
    ------
    ValueError
        If a name is unknown, or `names` names no configuration (an empty string or list,
        or only commas); the message lists the known names.
    """
    text = names
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(names))      # each once (a second run would replace the first's record)
    out = []
    for n in names:
        if n not in CONFIGS:
            raise ValueError(f"--configs: unknown configuration {n!r}; expected some of {', '.join(CONFIGS)}")
        out.append(CONFIGS[n])
    if not out:
        raise ValueError(f"--configs: {text!r} names no configuration; expected some of {', '.join(CONFIGS)}")
    return out


def make_weights(config, seed=0, dtype=np.float32):
    """Initial weights shared by all peers (He-normal, small random biases).

    Parameters
    ----------
    config : Config
    seed : int
    dtype : numpy dtype, default float32

    Returns
    -------
    list of (W, b)
        ``W`` of shape ``(in, out)`` and ``b`` of shape ``(out,)``, C-contiguous,
        of ``dtype``, one pair per linear layer.
    """
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in config.layers:
        W = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        b = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01)
        out.append((np.ascontiguousarray(W, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)))
    return out


def n_batches_for(config, samples=4096, lo=4, hi=128):
    """Number of distinct batches in the benchmark data set (about ``samples`` rows)."""
    return int(min(hi, max(lo, samples // config.batch)))


def make_data(config, n_batches=None, seed=1, dtype=np.float32):
    """Inputs and labels shared by all peers.

    Parameters
    ----------
    config : Config
    n_batches : int, optional
        Number of batches (default :func:`n_batches_for`).
    seed : int
    dtype : numpy dtype, default float32

    Returns
    -------
    X : ndarray, shape (n_batches * batch, in), dtype
        Standard-normal inputs, C-contiguous.
    y : ndarray, shape (n_batches * batch,), int64
        Labels in ``[0, n_classes)``; every class occurs at least once when
        there are at least as many samples as classes.
    """
    if n_batches is None:
        n_batches = n_batches_for(config)
    rng = np.random.default_rng(seed)
    n = n_batches * config.batch
    X = rng.standard_normal((n, config.widths[0]), dtype=np.float32).astype(dtype, copy=False)
    y = rng.integers(0, config.n_classes, size=n, dtype=np.int64)
    if n >= config.n_classes:
        # scikit-learn's partial_fit and a fair softmax want every class present
        y[rng.permutation(n)[: config.n_classes]] = np.arange(config.n_classes)
    return np.ascontiguousarray(X), y


def workspace_bytes(config, itemsize=4):
    """Bytes that a training step cannot do without.

    Parameters, their gradients, and one activation per layer output plus
    the input batch (plain SGD has no optimizer state; AdamW keeps two
    moments per parameter; BatchNorm adds its weight, bias and running
    statistics and one more activation per hidden layer).  A lower bound for
    the memory a step keeps, used as a reference next to measured peaks.
    """
    hidden = sum(config.widths[1:-1])
    params = sum(i * o + o for i, o in config.layers) + (2 * hidden if config.batchnorm else 0)
    state = 2 * params if config.optim == "adamw" else 0
    buffers = 2 * hidden if config.batchnorm else 0
    acts = config.batch * (sum(config.widths) + (hidden if config.batchnorm else 0))
    return int((2 * params + state + buffers + acts) * itemsize)
