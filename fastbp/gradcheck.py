"""Finite-difference checks of analytic gradients.

The lecture notes' advice: numerical gradients are slow and approximate
but easy to get right, so they are *the* check for analytic gradients.
:func:`numerical_gradient` estimates ``df/dx`` by centered differences,
:func:`relative_error` compares two gradients on a scale-free footing, and
:func:`gradcheck` does both for every input of a function, in the spirit of
:func:`torch.autograd.gradcheck`.

Use float64.  Centered differences have truncation error ``O(eps^2)`` and
rounding error ``O(u max|f| / eps)`` (``u`` the unit roundoff): in float64 the
default step gives relative errors around 1e-8 or better, but in float32
(``u`` ~ 6e-8) far less, so float32 checks need a looser ``rtol`` (the
defaults here are dtype-aware).  :func:`gradcheck` judges every element on
its own scale, allowing for that rounding noise (:data:`NOISE_ULPS`), as
:func:`torch.autograd.gradcheck` judges every element: in float64, a wrong
sign on a gradient element a million times smaller than the largest one
fails (in float32 the noise of ``f``'s largest values hides far less).
Functions with kinks (ReLU, max, hinge) must be checked away from the kinks.
"""
from __future__ import annotations

import numpy as _np

from . import _validate as _V
from ._scalars import real as _real

__all__ = ["numerical_gradient", "relative_error", "gradcheck", "GradcheckError",
           "default_eps", "default_rtol", "NOISE_ULPS"]


def __dir__():
    # dir(module) and tab completion list the public API, not the imports and helpers
    return sorted(__all__)

#: Default centered-difference steps per dtype, near the optimum ``u^(1/3)``.
_EPS = {_np.dtype(_np.float64): 1e-6, _np.dtype(_np.float32): 1e-2}
#: Default elementwise relative tolerances of :func:`gradcheck` per dtype.
_RTOL = {_np.dtype(_np.float64): 1e-6, _np.dtype(_np.float32): 1e-3}


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its finite-difference estimate."""


def default_eps(dtype):
    """Default finite-difference step for ``dtype`` (1e-6 for float64, 1e-2 for float32).

    Parameters
    ----------
    dtype : float32 or float64

    Returns
    -------
    float
    """
    return _EPS[_float_dtype(dtype)]


def _float_dtype(dtype):
    """``dtype`` as float32 or float64 (native byte order); TypeError naming ``dtype`` otherwise."""
    try:
        dt = _np.dtype(dtype).newbyteorder("=")
    except (TypeError, ValueError):
        dt = None
    if dt not in _EPS:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def default_rtol(dtype):
    """Default :func:`gradcheck` tolerance for ``dtype`` (1e-6 for float64, 1e-3 for float32).

    Parameters
    ----------
    dtype : float32 or float64

    Returns
    -------
    float
    """
    return _RTOL[_float_dtype(dtype)]


def _scalar(v):
    a = _np.asarray(v)
    if a.dtype.kind not in "fiu":        # None, a string, a complex: never silently read as a number
        raise TypeError(f"f must return a real scalar, got {type(v).__name__} of dtype {a.dtype}")
    if a.size != 1:
        raise TypeError(f"f must return a scalar, got an array of shape {a.shape}")
    return float(a.reshape(()))


def _step(eps, dtype, owner="numerical_gradient"):
    """The finite-difference step: ``dtype``'s default, or a finite real number > 0
    (TypeError / ValueError naming ``eps``, as every real-valued argument of the package)."""
    if eps is None:
        return default_eps(dtype)
    return _real("eps", eps, owner, low=0.0, low_open=True)


def numerical_gradient(f, x, eps=None):
    """Centered-difference estimate of the gradient of a scalar function.

    ``grad[i] = (f(x + h e_i) - f(x - h e_i)) / (2 h)`` for every element
    ``i`` of ``x``, perturbing ``x`` in place and restoring it exactly
    (bitwise) afterwards, also when ``f`` raises.

    Parameters
    ----------
    f : callable
        ``f(x)`` returning a scalar (a Python/numpy number or a size-1
        array).  It may also ignore its argument and read ``x`` through a
        closure: ``x`` is modified in place between calls.
    x : numpy.ndarray
        The point, float32 or float64, writeable, any shape and layout.
    eps : float, optional
        Step ``h``; default 1e-6 for float64, 1e-2 for float32.  The
        difference quotient divides by the step actually represented in
        ``x``'s dtype, ``(x_i + h) - (x_i - h)``.

    Returns
    -------
    numpy.ndarray
        Same shape as ``x``, float64.

    Raises
    ------
    TypeError
        ``x`` is not a float32/float64 ndarray, ``f`` does not return a real
        scalar, or ``eps`` is not a real number.
    ValueError
        ``x`` is read-only, ``eps`` is not finite and positive, ``x_i +- eps``
        round to one value (or overflow) in ``x``'s dtype, or the step between
        them overflows float64.
    """
    return _differences(f, x, eps)[0]


def _differences(f, x, eps, name="x", owner="numerical_gradient"):
    """:func:`numerical_gradient`'s estimate, the step ``h`` and the largest ``|f|`` it saw;
    errors name the point ``name`` (gradcheck: ``inputs['W']``)."""
    _V.array(x, name)
    if x.dtype not in _V.FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; expected float32 or float64")
    _V.writeable(x, name, " (it is perturbed in place, then restored)")
    h = _step(eps, x.dtype, owner)
    dt = x.dtype.type
    grad = _np.empty(x.shape, _np.float64)
    fmax = 0.0
    for idx in _np.ndindex(*x.shape):
        old = x[idx].copy()              # a numpy scalar: restoring it is bitwise exact (-0.0, NaN payloads)
        with _np.errstate(over="ignore"):     # an overflow is reported below, by name
            xp, xm = dt(old + h), dt(old - h)
        if _np.isfinite(old) and not (_np.isfinite(xp) and _np.isfinite(xm) and xp > xm):
            # the step vanished in x's precision, or overflowed (it divided by zero)
            raise ValueError(f"eps={h!r} is lost at {name}{list(idx)} = {float(old)!r} in {x.dtype}: "
                             f"x + eps and x - eps are not two finite distinct values; pass a larger eps")
        if _np.isfinite(old) and not _np.isfinite(float(xp) - float(xm)):
            # both finite, but the step between them is not (eps near float64's largest)
            raise ValueError(f"eps={h!r} overflows at {name}{list(idx)} = {float(old)!r}: (x + eps) - (x - eps) "
                             f"is not a finite float64; pass a smaller eps")
        try:
            x[idx] = xp
            fp = _scalar(f(x))
            x[idx] = xm
            fm = _scalar(f(x))
        finally:                         # also when f raises (or is interrupted)
            x[idx] = old
        grad[idx] = (fp - fm) / (float(xp) - float(xm))
        fmax = max(fmax, abs(fp), abs(fm))
    return grad, h, fmax


def relative_error(a, b):
    """Scale-free distance between two gradients.

    ``max |a - b| / max(max(|a| + |b|), tiny)``: 0 for identical arrays, up
    to 1 for unrelated ones, never divided by zero (two all-zero arrays give
    0); NaN anywhere gives NaN.  Equal infinities are equal elements that
    carry no scale (they leave the other elements' error as it is); an
    infinity against any other value gives NaN.  Computed without overflow
    (values near float64's largest are scaled by a power of two first).

    Parameters
    ----------
    a, b : array_like
        Same shape, real numbers; computed in float64.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        A complex or non-numeric input.
    ValueError
        The shapes differ.
    """
    a, b = _np.asarray(a), _np.asarray(b)
    for v, name in ((a, "a"), (b, "b")):
        if v.dtype.kind not in "biuf":      # a complex gradient would lose its imaginary part
            raise TypeError(f"relative_error: {name} must hold real numbers, got dtype {v.dtype}")
    a, b = a.astype(_np.float64), b.astype(_np.float64)
    if a.shape != b.shape:
        raise ValueError(f"relative_error: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    if _np.isnan(a).any() or _np.isnan(b).any():
        return float("nan")
    differ = a != b                         # equal infinities are equal (not inf - inf = NaN)
    if not differ.any():
        return 0.0
    finite = _np.isfinite(a) & _np.isfinite(b)
    if (differ & ~finite).any():
        return float("nan")                 # an infinity against another value, as for a NaN input
    a, b = a[finite], b[finite]             # equal infinities carry no scale
    # scaled by a power of two (exact) near the largest magnitude: |a - b| and |a| + |b| cannot overflow
    top = max(float(_np.max(_np.abs(a))), float(_np.max(_np.abs(b))))      # > 0: some elements differ
    scale = _np.ldexp(1.0, int(_np.frexp(top)[1]) - 1)                    # top / scale in [1, 2)
    a, b = a / scale, b / scale
    num = float(_np.max(_np.abs(a - b)))
    den = max(float(_np.max(_np.abs(a) + _np.abs(b))), _np.finfo(_np.float64).tiny)
    return num / den


#: the rounding noise allowed for in a centered difference, in units of ``eps(dtype) * max|f| / h``
#: (``f``'s own rounding error, a few ulps of its largest value, divided by the step)
NOISE_ULPS = 8.0


def _noise(dtype, h, fmax):
    """The absolute rounding noise of a centered difference of step ``h`` of a function whose
    values reach ``fmax``, its inputs of ``dtype``: ``NOISE_ULPS * eps(dtype) * fmax / h``."""
    return NOISE_ULPS * float(_np.finfo(dtype).eps) * fmax / h


def _items(inputs, what):
    if isinstance(inputs, dict):
        return list(inputs.items())
    if isinstance(inputs, (list, tuple)):
        return [(i, v) for i, v in enumerate(inputs)]
    raise TypeError(f"{what} must be a dict or a list, got {type(inputs).__name__}")


def gradcheck(f, inputs, analytic_grads, eps=None, rtol=None, atol=0.0, raise_exception=True):
    """Check analytic gradients of ``f`` against centered finite differences.

    Parameters
    ----------
    f : callable
        Scalar function of the inputs: called as ``f(**inputs)`` when
        ``inputs`` is a dict, ``f(*inputs)`` when it is a list.
    inputs : dict or list of numpy.ndarray
        The point.  Every input that has an analytic gradient must be a
        writeable float32/float64 array: it is perturbed in place (and
        restored).  Other entries (integer labels, flags...) are passed
        through unchanged.
    analytic_grads : dict, list or callable
        ``df/d input`` for the inputs to check: a dict with a subset of the
        input keys, or a list aligned with ``inputs`` (``None`` entries are
        skipped), or a callable taking the inputs like ``f`` and returning
        one of those.  Each gradient has its input's shape.
    eps : float, optional
        Finite-difference step (default per dtype, see :func:`numerical_gradient`).
    rtol : float, optional
        Relative tolerance of each element, finite and >= 0: the analytic
        ``a`` and numerical ``n`` values of every element must satisfy
        ``|a - n| <= atol + rtol * (|a| + |n|) + noise``, ``noise`` the
        rounding noise of the centered difference,
        ``NOISE_ULPS * eps(dtype) * max|f| / h`` (``h`` the step, ``max|f|``
        the largest value of ``f`` the differences saw).  Default 1e-6 for
        float64 inputs, 1e-3 for float32.
    atol : float, default 0.0
        Absolute tolerance added to each element's (for gradients that are
        ~0); finite and >= 0 (None: 0.0).
    raise_exception : bool
        Raise :class:`GradcheckError` on failure (default) instead of
        returning False.

    Returns
    -------
    bool
        True when every gradient passes.

    Raises
    ------
    GradcheckError
        With a report naming each failing input: how many elements fail,
        its :func:`relative_error`, the worst element's index, analytic and
        numerical values.
    TypeError
        ``rtol``, ``atol`` or ``eps`` is not a real number,
        ``raise_exception`` not a bool, or an input or gradient of the wrong kind.
    ValueError
        ``rtol`` or ``atol`` negative or not finite, a read-only input, a
        gradient of the wrong shape, or an ``eps`` :func:`numerical_gradient` refuses.
    """
    raise_exception = _V.boolean("raise_exception", raise_exception)
    rtol = _real("rtol", rtol, "gradcheck", low=0.0, or_none=True)
    atol = _real("atol", 0.0 if atol is None else atol, "gradcheck", low=0.0)
    eps = None if eps is None else _step(eps, None, "gradcheck")     # before f is called
    items = _items(inputs, "inputs")
    is_dict = isinstance(inputs, dict)

    def call():
        return f(**inputs) if is_dict else f(*inputs)

    if callable(analytic_grads):
        analytic_grads = analytic_grads(**inputs) if is_dict else analytic_grads(*inputs)
    grads = dict(_items(analytic_grads, "analytic_grads"))
    keys = [k for k, _ in items]
    for k in grads:
        if k not in keys:
            raise ValueError(f"analytic_grads has an entry {k!r} that is not among the inputs {keys}")
    lines = []
    ok = True
    for k, x in items:
        g = grads.get(k)
        if g is None:
            continue
        _V.array(x, f"inputs[{k!r}]")
        _V.writeable(x, f"inputs[{k!r}]", " (gradcheck perturbs it in place, then restores it)")
        g = _np.asarray(g)
        if g.dtype.kind not in "biuf":      # a complex gradient would lose its imaginary part
            raise TypeError(f"gradcheck: analytic_grads[{k!r}] must hold real numbers, got dtype {g.dtype}")
        if g.shape != x.shape:
            raise ValueError(f"analytic_grads[{k!r}] has shape {g.shape}; input {k!r} has {x.shape}")
        num, h, fmax = _differences(lambda _x: call(), x, eps, f"inputs[{k!r}]", "gradcheck")
        err = relative_error(g, num)
        a = g.astype(_np.float64)
        tol = default_rtol(x.dtype) if rtol is None else rtol
        with _np.errstate(invalid="ignore", over="ignore"):
            diff = _np.abs(a - num)
            # each element on its own scale, plus the rounding noise of the differences
            excess = diff - (atol + tol * (_np.abs(a) + _np.abs(num)) + _noise(x.dtype, h, fmax))
        bad = ~(excess <= 0) & (a != num)        # NaN fails; equal values (infinities too) pass
        passed = not bad.any()
        if not passed:
            ok = False
            if _np.isnan(diff).any():
                worst = _np.unravel_index(int(_np.argmax(_np.isnan(diff))), diff.shape) if diff.ndim else ()
            else:
                worst = _np.unravel_index(int(_np.argmax(_np.where(bad, excess, -_np.inf))), diff.shape) \
                    if diff.ndim else ()
            lines.append(
                f"  {k!r} {x.dtype} {x.shape}: {int(bad.sum())} of {bad.size} elements beyond rtol {tol:.3g}"
                f"{f' + atol {atol:.3g}' if atol else ''} (relative error {err:.3g}); "
                f"worst at index {tuple(int(i) for i in worst)}: analytic {float(g[worst]):.9g}, "
                f"numerical {float(num[worst]):.9g}")
        else:
            lines.append(f"  {k!r} {x.dtype} {x.shape}: ok (relative error {err:.3g})")
    if not ok and raise_exception:
        raise GradcheckError("gradcheck failed:\n" + "\n".join(lines))
    return ok
