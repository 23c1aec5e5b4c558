"""The base class of fastbp's layers (:class:`fastbp.layers.Layer`), in a module of its own so
that the layer modules (:mod:`fastbp.layers`, :mod:`fastbp._act_layers`) share it without an
import cycle."""

__all__ = ["Layer"]


class Layer:
    """Base class of fastbp layers.

    A constructor argument set as an attribute after construction (``bn.affine = False``,
    ``linear.bias = False``, ``drop.p = 0.2``, as on PyTorch's modules) is checked and applied as
    the constructor does: the layer is built again with the new value (its TypeError or ValueError
    names the argument, and nothing changes), so that what it trains, its ``repr`` and the spec its
    checkpoint saves agree.  ``_FIELDS`` maps each such attribute to its constructor keyword.
    """

    _FIELDS = {}

    def __setattr__(self, name, value):
        fields = type(self)._FIELDS
        if name not in fields or not all(a in self.__dict__ for a in fields):   # (constructing)
            object.__setattr__(self, name, value)
            return
        args = {key: getattr(self, attr) for attr, key in fields.items() if attr != name}
        args[fields[name]] = value
        owner = next(c for c in type(self).__mro__ if "_FIELDS" in vars(c))    # (a subclass's own __init__ aside)
        fresh = object.__new__(type(self))
        owner.__init__(fresh, **args)
        self.__dict__.update(fresh.__dict__)

    def _out_width(self, in_features):
        """The width this layer outputs for ``in_features`` inputs (ValueError if it cannot take them)."""
        return in_features

    def spec(self):
        """A JSON-able description (used by checkpoints).

        Returns
        -------
        dict
            ``{"type": class name, ...}``: what rebuilds the layer.
        """
        return {"type": type(self).__name__}
