"""The activation layers (``ReLU``, ``LeakyReLU``, ``GELU``, ...): one class per entry of
:mod:`fastbp.registry.activations`, made by :func:`_layer_class` and published by
:mod:`fastbp.layers` under the entry's ``layer`` name.

A layer's parameters and string choice are read and set by name, as on PyTorch's layers
(``layer.negative_slope = 0.2``): a value set is checked and bound as the constructor's.
"""
from __future__ import annotations

import inspect as _inspect

from . import _validate as _v
from ._layer_base import Layer
from .registry import activations as _acts

__all__ = ["_Activation", "_layer_class"]


class _Activation(Layer):
    """Base of the activation layers; each subclass is one registry entry (``entry``)."""
    entry = None

    def __init__(self, *args, **kwargs):
        owner, entry = type(self).__name__, type(self).entry
        if entry is not None and entry.code == _acts.IDENTITY:
            args, kwargs = (), {}       # torch.nn.Identity(*args, **kwargs): "any argument (unused)"
        if entry is not None:
            # the count of the whole signature (the parameters, PyTorch's inplace, a string choice)
            names = [p.name for p in entry.params] + ["inplace"] * bool(entry.inplace)
            names += [entry.choice.name] if entry.choice is not None else []
            if len(args) > len(names):
                raise TypeError(f"{owner} takes at most {len(names)} positional argument(s) "
                                f"({', '.join(names) or 'none'}), got {len(args)}")
        inplace = False
        if entry is not None and entry.inplace:     # PyTorch's flag, after the parameters
            inplace, args, kwargs = _acts.take_trailing(owner, "inplace", False, len(entry.params), args, kwargs)
            inplace = _v.boolean(f"{owner}: inplace", inplace)
        #: PyTorch's flag, kept for its signature: it changes nothing (every layer's output has a
        #: buffer of its own in the fused step)
        self.inplace = inplace
        # a layer with a string choice (GELU's approximate) stands for the entry it selects
        self.entry, self.params = _acts.select(entry, owner, args, kwargs)

    @property
    def op(self):
        """The entry's name (the graph op)."""
        return self.entry.name

    def __getattr__(self, name):
        # the parameters by name (layer.negative_slope)
        entry = type(self).entry
        for p, v in zip(entry.params if entry is not None else (), self.__dict__.get("params", ())):
            if p.name == name:
                return v
        if entry is not None and entry.choice is not None and entry.choice.name == name and "entry" in self.__dict__:
            return _acts.variant_of(self.__dict__["entry"])[1] or entry.choice.default
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        # a parameter or the choice set by name (layer.negative_slope = 0.2, as on PyTorch's
        # layers): checked and bound again as by the constructor, where it was an unused
        # attribute the layer went on ignoring; `inplace` checked as a bool
        entry = type(self).entry
        names = [p.name for p in entry.params] if entry is not None and "params" in self.__dict__ else []
        choice = entry.choice.name if entry is not None and entry.choice is not None else None
        if name in names or (name == choice and "entry" in self.__dict__):
            kwargs = dict(zip(names, self.params))
            kwargs.update(self._choice())
            kwargs[name] = value
            self.__dict__["entry"], self.__dict__["params"] = _acts.select(entry, type(self).__name__, (), kwargs)
        else:
            if name == "inplace":
                value = _v.boolean(f"{type(self).__name__}: inplace", value)
            object.__setattr__(self, name, value)

    def build(self, g, x, prefix, W=None, b=None):
        """Add the layer to graph ``g`` after node ``x`` (the compiler's layer interface).

        Parameters
        ----------
        g : Graph
        x : Node, shape (batch, features)
        prefix : str
            The layer's name in the model (unused: an activation has no parameters).
        W, b : None
            Unused (the interface of :meth:`fastbp.Linear.build`).

        Returns
        -------
        Node
            The activation's node, of ``x``'s shape (``x`` itself for Identity).
        """
        if self.entry.code == _acts.IDENTITY:     # fastbp.Identity: no node at all
            return x
        return g._unary(self.op, x, {"params": self.params} if self.params else None)

    def _choice(self):
        """``{name: value}`` of the layer's string choice (GELU's approximate), or ``{}``."""
        c = type(self).entry.choice
        return {c.name: getattr(self, c.name)} if c is not None else {}

    def spec(self):
        d = {"type": type(self).__name__}
        d.update((p.name, v) for p, v in zip(self.entry.params, self.params))
        c = type(self).entry.choice         # a string choice: only where it is not its default
        d.update((k, v) for k, v in self._choice().items() if v != c.default)
        return d

    def __repr__(self):
        args = [f"{p.name}={v!r}" for p, v in zip(self.entry.params, self.params)]
        args += [f"{k}={v!r}" for k, v in self._choice().items()]
        args += ["inplace=True"] if self.inplace else []
        return f"{type(self).__name__}({', '.join(args)})"


def _layer_class(entry):
    """The layer class of a registry activation."""
    pdoc = _acts.param_doc(entry)
    variants = _acts.variant_doc(entry)
    doc = (f"Activation layer ``{entry.formula}`` elementwise (local gradient ``{entry.dformula}``).\n{variants}\n"
           + (f"    Parameters\n    ----------\n{pdoc}" if pdoc or entry.inplace or entry.code == _acts.IDENTITY
              else "")
           + ("    inplace : bool, default False\n        Accepted for PyTorch's signature; it changes nothing "
              "(the fused step\n        writes every layer's output into a buffer of its own).\n"
              if entry.inplace else "")
           + ("    *args, **kwargs\n        Accepted and unused, as PyTorch's.\n" if entry.code == _acts.IDENTITY else "")
           + f"\n    See Also\n    --------\n    torch.nn.{entry.torch} : PyTorch's layer"
           + (f" (scikit-learn: ``activation='{entry.sklearn}'``)" if entry.sklearn else "") + ".\n")
    cls = type(entry.layer, (_Activation,), {"entry": entry, "__doc__": doc, "__module__": "fastbp.layers",
                                             "__qualname__": entry.layer})
    cls.__signature__ = _inspect.Signature(
        [_inspect.Parameter(p.name, _inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default)
         for p in entry.params]
        + ([_inspect.Parameter(entry.choice.name, _inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=entry.choice.default)] if entry.choice is not None else [])
        + ([_inspect.Parameter("inplace", _inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False)]
           if entry.inplace else []))
    if entry.code == _acts.IDENTITY:    # PyTorch's signature: any arguments, unused
        cls.__signature__ = _inspect.Signature([_inspect.Parameter("args", _inspect.Parameter.VAR_POSITIONAL),
                                                _inspect.Parameter("kwargs", _inspect.Parameter.VAR_KEYWORD)])
    return cls
