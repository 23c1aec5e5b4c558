"""Checks of scalar arguments: a real number within bounds, one wording for the whole package.

The optimizers, schedules, activations' parameters, normalisation layers and
``fastbp.ops`` check their real-valued arguments here, so that a wrong one is
refused the same way everywhere: ``TypeError`` for what is not a real number
(``bool`` included), ``ValueError`` for NaN, an infinity, or a value out of
bounds, each naming ``owner: name`` and the value given.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["real"]


def real_or_nonfinite(name, value, owner):
    """``value`` as a float: a real number (a numpy scalar, a 0-d array or tensor), NaN and
    infinities included (a monitored metric); TypeError naming it otherwise (None, str, bool,
    complex, an array of more than one element)."""
    kind = getattr(getattr(value, "dtype", None), "kind", "f")
    if (value is not None and not isinstance(value, (str, bytes, bool, np.bool_)) and kind in "iuf"
            and not (isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real))):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__}")


def int_digits(value):
    """The number of decimal digits of the integer ``value`` (its sign not counted), from its
    bits: ``str`` refuses ints past 4300 digits."""
    n = int(abs(value))
    digits = max(1, int((n.bit_length() - 1) * math.log10(2)))    # at most the count
    while n >= 10 ** digits:
        digits += 1
    return digits


def _int_words(v, digits):
    return f"{'a negative' if v < 0 else 'an'} integer of {digits} digits"


def int_text(v):
    """``str(v)`` of an int for a message, or its length in digits where ``str`` refuses it
    (past 4300 digits)."""
    try:
        return str(v)
    except ValueError:
        return _int_words(v, int_digits(v))


def short_repr(v):
    """``v`` for a message: a float as is, an int of more than 20 digits by its length (any
    length: ``str`` refuses ints past 4300 digits), another long number as a float (by its
    type if too large for one)."""
    if isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)):
        digits = int_digits(v)
        return str(v) if digits <= 20 else _int_words(v, digits)
    try:
        s = str(v)
    except ValueError:          # a Fraction of a huge int
        s = ""
    if 0 < len(s) <= 20:
        return s
    try:
        return f"{float(v):.17g}"
    except (OverflowError, TypeError, ValueError):
        return f"a {type(v).__name__} too large for a float"


def _too_large(value):
    """Words for a number ``float()`` refused as too large: an int's size in digits, or its type."""
    if isinstance(value, numbers.Integral):
        return f"an integer of {int_digits(value)} digits, too large for a float"
    return f"a {type(value).__name__} too large for a float"


def real(name, value, owner, *, low=None, high=None, low_open=False, high_open=False, or_none=False):
    """``value`` as a float, checked.

    Parameters
    ----------
    name : str
        The argument's name, as the caller's signature spells it.
    value : object
        What the user passed.
    owner : str
        The function or class that takes it (the message's prefix).
    low, high : float, optional
        Bounds (``None``: unbounded on that side).
    low_open, high_open : bool, default False
        Whether the bound itself is excluded.
    or_none : bool, default False
        Whether ``None`` is accepted (and returned as is).

    Returns
    -------
    float or None

    Raises
    ------
    TypeError
        ``value`` is not a real number (a ``bool`` is not one here).
    ValueError
        ``value`` is NaN, infinite (an int too large for a float included), or
        out of bounds.
    """
    if or_none and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        kind = "a real number or None" if or_none else "a real number"
        raise TypeError(f"{owner}: {name} must be {kind}, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:               # an int (or a Fraction) beyond float's range
        raise ValueError(f"{owner}: {name} must be finite, got {_too_large(value)}") from None
    if not math.isfinite(v):
        raise ValueError(f"{owner}: {name} must be finite, got {v!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got {v!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{owner}: {name} must be {'<' if high_open else '<='} {high}, got {v!r}")
    return v
