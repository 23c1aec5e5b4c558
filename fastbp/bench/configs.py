"""The benchmark configurations of issue 4 and the shared weights and data.

Every peer starts from the same weights and sees the same batches: both are
generated here, with numpy, from a seed, and handed to each peer (the peer
command writes them to one ``.npz`` file that every worker process loads).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Variables removed from the environment of the processes the bench starts
#: (only there): both slow numpy's OpenBLAS down on this machine.
SCRUBBED_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

__all__ = ["Config", "CONFIGS", "SCRUBBED_ENV", "get_configs", "make_weights", "make_data", "workspace_bytes"]


@dataclass(frozen=True)
class Config:
    """One benchmark configuration: an MLP and its minibatch size.

    Attributes
    ----------
    name : str
        Short name (``tiny``, ``small``, ...).
    widths : tuple of int
        Layer widths ``(in, hidden..., out)``; ReLU between consecutive
        linear layers, none after the last one.
    batch : int
        Minibatch size.
    """

    name: str
    widths: tuple
    batch: int

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
        it); bias, activation, loss and update are not counted.
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
        If a name is unknown (the message lists the known names).
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        if n not in CONFIGS:
            raise ValueError(f"configs: unknown configuration {n!r}; expected some of {', '.join(CONFIGS)}")
        out.append(CONFIGS[n])
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
    the input batch (plain SGD has no optimizer state).  A lower bound for
    the memory a step keeps, used as a reference next to measured peaks.
    """
    params = sum(i * o + o for i, o in config.layers)
    acts = config.batch * sum(config.widths)
    return int((2 * params + acts) * itemsize)
