"""A step's initial weights, as its graph asks for them.

- :class:`LazyInit` draws them one layer at a time (float64, bitwise
  :meth:`fastbp.Sequential.init_params`);
- :class:`ShapesOnly` gives read-only zero views of their shapes, which
  allocate nothing: the graph and plan built from them give the step's
  exact size before a single weight is drawn (:func:`step_bytes`).
"""
from __future__ import annotations

import math

import numpy as np

from . import _memory
from .compiler import build_plan
from .layers import init_order, linear_layers


class LazyInit:
    """``model.init_params(seed)``, drawn one layer at a time as the graph asks for it.

    The same generator, the same draws in the same order (layer by layer):
    bitwise the weights of :meth:`Sequential.init_params`.  Each layer's
    float64 arrays live only until the graph has copied them, so building
    a step never holds two float64 copies of all its weights.
    """

    def __init__(self, model, seed):
        layers = model.layers
        self._keys = set()
        for key, layer, _ in linear_layers(layers):     # inside Residual blocks too ("i.j")
            self._keys.add(f"{key}.W")
            if layer.bias:
                self._keys.add(f"{key}.b")
        self._ready = {}
        self._draws = self._draw(layers, seed)

    @staticmethod
    def _draw(layers, seed):
        rng = np.random.default_rng(seed)
        for key, layer, act in init_order(layers):
            W, b = layer.init(rng, act)
            yield f"{key}.W", W
            if b is not None:
                yield f"{key}.b", b

    def get(self, key, default=None):
        if key not in self._keys:
            return default
        while key not in self._ready:
            k, v = next(self._draws)
            self._ready[k] = v
        self._keys.discard(key)
        return self._ready.pop(key)


class ShapesOnly:
    """Zero views ``np.broadcast_to(0.0, shape)`` of every Linear's initial weights
    (nothing allocated), under :class:`LazyInit`'s keys."""

    def __init__(self, model):
        self._shapes = {}
        for key, layer, _ in linear_layers(model.layers):
            self._shapes[f"{key}.W"] = layer.weight_shape
            if layer.bias:
                self._shapes[f"{key}.b"] = (layer.out_features,)
        #: how many weights, counted in Python integers (no numpy size limit)
        self.n_values = sum(math.prod(shape) for shape in self._shapes.values())

    def get(self, key, default=None):
        shape = self._shapes.get(key)
        return default if shape is None else np.broadcast_to(np.float64(0.0), shape)


def step_bytes(model, loss, optimizer, batch_size, dtype, init=True):
    """What compiling ``model`` into a training step will allocate, in bytes.

    The model's graph is built on :class:`ShapesOnly` weights and planned as the
    step will be, so the arena's size is exact, every layer's buffers included
    (activations, dropout, normalisation statistics, BatchNorm's running
    statistics, pre-activations kept for the backward).

    Parameters
    ----------
    model : fastbp.Sequential
    loss : str
    optimizer : optimizer object
        Its state vectors are part of the arena.
    batch_size : int
    dtype : numpy.dtype
        float32 or float64.
    init : bool, default True
        The step draws its initial weights (float64, one layer at a time,
        held by the graph until they are written into the arena).

    Returns
    -------
    total : int
        The arena, the float64/int64 staging of one minibatch, and the
        float64 initial weights held while the step is built.
    buffers : int
        The step's own arrays: the arena and the minibatch staging.
    """
    shapes = ShapesOnly(model)
    lower = shapes.n_values * np.dtype(dtype).itemsize * 2      # the weights and their gradients, at least
    if lower >= 1 << 62:
        return lower, lower     # past numpy's array sizes: the caller's memory check raises MemoryError
    g, x, out = model.build_graph(shapes)
    plan = build_plan(g, g._loss(loss, out), g.params, dtype=dtype, batch_size=batch_size, loss=loss,
                      optimizer=optimizer, train_input=x)
    sizes = [int(np.prod(shape, dtype=np.int64)) if shape else 1 for _, _, _, shape in plan.params]
    return _memory.step_bytes(plan.arena_size, np.dtype(dtype).itemsize, batch_size, sum(sizes),
                              max(sizes, default=0), init)
