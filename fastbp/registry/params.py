"""The parameters of a registry activation: :class:`Param` (a real number, bounded) and
:class:`Choice` (a string selecting one of several entries that share a layer).

Each is checked when it is made, so an entry registered with one cannot fail later, when a
layer, a builder or an estimator first uses it.
"""
from __future__ import annotations

import keyword
import math
import numbers
from dataclasses import dataclass

from .. import _scalars

__all__ = ["Param", "Choice"]


@dataclass(frozen=True)
class Param:
    """A real parameter of an activation (e.g. LeakyReLU's ``negative_slope``).

    ``low``/``high`` bound it (``None``: unbounded), ``open_low``/``open_high``
    exclude the bound itself.  Values must be finite real numbers.
    """
    name: str
    default: float
    doc: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.isidentifier() and not keyword.iskeyword(self.name)):
            raise ValueError(f"Param: name must be an identifier, got {self.name!r}")
        for bound in ("low", "high"):
            v = getattr(self, bound)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v)):
                raise ValueError(f"Param {self.name!r}: {bound} must be a real number or None, got {v!r}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Param {self.name!r}: low {self.low!r} is above high {self.high!r}")
        self.check(self.default, "Param default")       # within its own bounds, finite, real

    def check(self, value, owner):
        """``value`` as a float, or TypeError/ValueError naming ``owner: name``."""
        return _scalars.real(self.name, value, owner, low=self.low, high=self.high,
                             low_open=self.open_low, high_open=self.open_high)


@dataclass(frozen=True)
class Choice:
    """A string parameter that selects one of several entries sharing one layer
    (GELU's ``approximate``: ``"none"`` -> ``gelu``, ``"tanh"`` -> ``gelu_tanh``).

    Held by the entry that owns the layer; ``options`` is a tuple of
    ``(value, entry name)`` pairs, ``default`` one of the values.
    """
    name: str
    default: str
    options: tuple
    doc: str

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.isidentifier() and not keyword.iskeyword(self.name)):
            raise ValueError(f"Choice: name must be an identifier, got {self.name!r}")
        if self.default not in [v for v, _ in self.options]:
            raise ValueError(f"Choice {self.name!r}: default {self.default!r} is not one of its options")

    def check(self, value, owner):
        """The entry name ``value`` selects, or TypeError/ValueError naming ``owner: name``."""
        what = f"{owner}: {self.name}"
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a str, one of {[v for v, _ in self.options]}, "
                            f"got {type(value).__name__}")
        for v, entry_name in self.options:
            if v == value:
                return entry_name
        raise ValueError(f"{what} must be one of {[v for v, _ in self.options]}, got {value!r}")
