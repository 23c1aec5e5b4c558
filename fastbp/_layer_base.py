"""The base class of fastbp's layers (:class:`fastbp.layers.Layer`), in a module of its own so
that the layer modules (:mod:`fastbp.layers`, :mod:`fastbp._act_layers`) share it without an
import cycle."""

__all__ = ["Layer"]


class Layer:
    """Base class of fastbp layers."""

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
