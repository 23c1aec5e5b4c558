"""The normalisation layers, :class:`LayerNorm` and :class:`BatchNorm1d` (PyTorch's semantics).

Each adds its affine parameters to the graph and one normalisation node
(:func:`fastbp.graph.layer_norm`, :func:`fastbp.graph.batch_norm`), which the
compiler turns into one fused instruction forward and one backward.
:mod:`fastbp.layers` puts them in :class:`~fastbp.layers.Sequential` and
:class:`~fastbp.layers.Residual`.
"""
from __future__ import annotations

import numpy as np

from . import _scalars
from . import _validate as _v
from ._graph_base import _norm_eps
from ._layer_base import Layer
from . import graph as _g

__all__ = ["LayerNorm", "BatchNorm1d"]


class _Norm(Layer):
    """Base of the normalisation layers (a fastbp layer: ``_out_width``, ``spec``,
    ``build``): affine parameters ``{prefix}.weight`` (initialised to 1) and
    ``{prefix}.bias`` (0), trained like every parameter (weight decay included,
    as PyTorch's optimizers apply it to them)."""

    def _out_width(self, in_features):
        if in_features != self.num_features:
            raise ValueError(f"{self!r} receives {in_features} features from the previous layer")
        return in_features

    def init(self):
        """Initial affine parameters.

        Returns
        -------
        weight : ndarray of float64, shape (num_features,), or None
            Ones; None where the layer has no weight.
        bias : ndarray of float64, shape (num_features,), or None
            Zeros; None where the layer has no bias.
        """
        n = self.num_features
        return (np.ones(n) if self._has_w else None), (np.zeros(n) if self._has_b else None)

    def _params(self, g, prefix, weight, bias):
        w0, b0 = self.init()
        w = g.param(f"{prefix}.weight", w0 if weight is None else weight) if self._has_w else None
        b = g.param(f"{prefix}.bias", b0 if bias is None else bias) if self._has_b else None
        return w, b


class LayerNorm(_Norm):
    """Layer normalisation over the features of each row (``torch.nn.LayerNorm``).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and the
    biased variance of each row of ``x (batch, n)``.  Forward and backward are
    each one fused instruction of the compiled step (statistics pass, then
    normalise + affine).

    Parameters
    ----------
    normalized_shape : int or tuple of one int
        The feature width ``n`` (only the last dimension is normalised).
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learnable ``weight`` (init 1) and ``bias`` (init 0), shape ``(n,)``:
        the step's parameters ``"<i>.weight"`` and ``"<i>.bias"``.
    bias : bool, default True
        With ``elementwise_affine``: whether there is a bias (PyTorch >= 2.1).
    """

    _FIELDS = {"num_features": "normalized_shape", "normalized_shape": "normalized_shape", "eps": "eps",
               "elementwise_affine": "elementwise_affine", "bias_": "bias"}

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        shape = normalized_shape
        if isinstance(shape, (tuple, list)):
            if len(shape) != 1:
                raise ValueError(f"LayerNorm: normalized_shape must be an int or a 1-tuple (the feature "
                                 f"width; fastbp normalises the last dimension only), got {tuple(shape)!r}")
            shape = shape[0]
        self.num_features = _v.positive_int("LayerNorm: normalized_shape", shape)
        self.normalized_shape = (self.num_features,)
        self.eps = _norm_eps("LayerNorm", eps)
        self.elementwise_affine = _v.boolean("LayerNorm: elementwise_affine", elementwise_affine)
        self.bias_ = _v.boolean("LayerNorm: bias", bias)
        self._has_w = self.elementwise_affine
        self._has_b = self.elementwise_affine and self.bias_

    def build(self, g, x, prefix, weight=None, bias=None):
        """Add the normalisation of ``x`` to graph ``g`` (the compiler's layer interface).

        Parameters
        ----------
        g : Graph
        x : Node, shape (batch, num_features)
        prefix : str
            The layer's name: its parameters are ``f"{prefix}.weight"`` and ``f"{prefix}.bias"``.
        weight, bias : ndarray of shape (num_features,), optional
            Initial values (default :meth:`init`'s).

        Returns
        -------
        Node
            Of ``x``'s shape.
        """
        w, b = self._params(g, prefix, weight, bias)
        return _g.layer_norm(x, w, b, eps=self.eps)

    def spec(self):
        """A JSON-able description (used by checkpoints).

        Returns
        -------
        dict
            ``{"type": "LayerNorm", ...}``: the constructor's arguments.
        """
        return {"type": "LayerNorm", "normalized_shape": self.num_features, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias_}

    def __repr__(self):
        return (f"LayerNorm(({self.num_features},), eps={self.eps}, elementwise_affine={self.elementwise_affine}"
                + ("" if self.bias_ else ", bias=False") + ")")


class BatchNorm1d(_Norm):
    """Batch normalisation of each feature over the minibatch (``torch.nn.BatchNorm1d``).

    In training calls (``step(x, y)``, ``loss_and_grads``, ``fit``) each feature
    is normalised with the minibatch's mean and biased variance, and the
    running statistics are updated with the unbiased variance,
    ``running = (1 - momentum) * running + momentum * batch``; ``predict``
    and the validation of ``fit`` (eval mode) normalise with the running
    statistics.  They live in the step's arena (``step.buffers["<i>.running_mean"]``,
    ``"<i>.running_var"``, ``"<i>.num_batches_tracked"``), are not trained, and
    are saved in checkpoints.  A running update happens only in a call whose
    loss and gradients are finite (a failed step changes nothing).

    Parameters
    ----------
    num_features : int
    eps : float, default 1e-5
        Added to the variance; > 0 (PyTorch's ``batch_norm`` refuses ``eps <= 0`` in training).
    momentum : float in [0, 1] or None, default 0.1
        ``None``: the cumulative average (``1 / num_batches_tracked``).
    affine : bool, default True
        Learnable ``weight`` (init 1) and ``bias`` (init 0).
    track_running_stats : bool, default True
        False: batch statistics in eval mode too, no running statistics; an
        eval call (``predict``) then normalises with the statistics of the rows
        it is given, so it takes at most ``batch_size`` rows (a ``ValueError``
        beyond: cutting them into minibatches would normalise each separately).

    Notes
    -----
    Input ``(batch, num_features)`` only.  A training call with one row raises
    ValueError, like PyTorch.  Under MPI each rank normalises with its own
    rows' statistics and keeps its own running statistics (PyTorch DDP's
    default, without SyncBatchNorm); ranks' running statistics may differ.
    """

    _FIELDS = {"num_features": "num_features", "eps": "eps", "momentum": "momentum", "affine": "affine",
               "track_running_stats": "track_running_stats"}

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        self.num_features = _v.positive_int("BatchNorm1d: num_features", num_features)
        self.eps = _norm_eps("BatchNorm1d", eps, training=True)
        self.momentum = _scalars.real("momentum", momentum, "BatchNorm1d", low=0.0, high=1.0, or_none=True)
        self.affine = _v.boolean("BatchNorm1d: affine", affine)
        self.track_running_stats = _v.boolean("BatchNorm1d: track_running_stats", track_running_stats)
        self._has_w = self._has_b = self.affine

    def build(self, g, x, prefix, weight=None, bias=None, running=None):
        """Add the batch normalisation of ``x`` to graph ``g`` (the compiler's layer interface).

        Parameters
        ----------
        g, x, prefix, weight, bias
            As :meth:`LayerNorm.build`'s.
        running : tuple, optional
            ``(running_mean, running_var, num_batches_tracked)`` to start from (default
            zeros, ones and 0).

        Returns
        -------
        Node
            Of ``x``'s shape.
        """
        w, b = self._params(g, prefix, weight, bias)
        rm, rv, nbt = running if running is not None else (None, None, 0)
        return _g.batch_norm(x, w, b, rm, rv, eps=self.eps, momentum=self.momentum,
                             track_running_stats=self.track_running_stats, num_batches_tracked=nbt, name=prefix)

    def spec(self):
        """A JSON-able description (used by checkpoints).

        Returns
        -------
        dict
            ``{"type": "BatchNorm1d", ...}``: the constructor's arguments.
        """
        return {"type": "BatchNorm1d", "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine, "track_running_stats": self.track_running_stats}

    def __repr__(self):
        return (f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats})")


_NORM_TYPES = {"LayerNorm": LayerNorm, "BatchNorm1d": BatchNorm1d}


def _norm_from_spec(t, ls):
    """A LayerNorm / BatchNorm1d from its :meth:`spec`."""
    cls = _NORM_TYPES[t]
    keys = {"LayerNorm": ("normalized_shape", "eps", "elementwise_affine", "bias"),
            "BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats")}[t]
    extra = set(ls) - {"type"} - set(keys)
    if extra:
        raise ValueError(f"layer {t!r} in model spec has unknown fields {sorted(extra)}")
    if keys[0] not in ls:
        raise ValueError(f"layer {t!r} in model spec has no field {keys[0]!r}")
    return cls(**{k: ls[k] for k in keys if k in ls})
