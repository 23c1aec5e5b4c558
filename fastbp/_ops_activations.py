"""The ``fastbp.ops`` activation wrappers, generated from the registry.

For every public entry of :mod:`fastbp.registry.activations`,
``<name>_forward(x, *params, out=None)`` and
``<name>_backward(y, dy, *params, out=None)`` (``y``: the forward output;
``<name>_backward(x, dy, ...)``, the forward input, for entries whose
derivative reads the input), with numpydoc docstrings built from the entry.  Each validates its
arguments (:mod:`fastbp._validate`), allocates or checks ``out`` and runs the
entry's compiled kernel (:mod:`fastbp.kernels.activations`), serial or
parallel by size.
"""
from __future__ import annotations

import inspect

import numpy as np

from . import _validate as V
from .kernels import activations as _A
from .registry import activations as _acts

#: columns of the 2-D view a long 1-D array is cut into for the parallel variants
EW_COLS = 1024


def view2d_shape(shape, size):
    """The 2-D shape an elementwise kernel sees for an array of ``shape``."""
    if len(shape) == 2:
        return shape
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, size)
    last = shape[-1]
    return (size // last if last else int(np.prod(shape[:-1])), last)


def ew(kern, arrays, tail=()):
    """Run an elementwise kernel over same-shaped ``arrays`` of any ndim (2-D
    views), with the extra arguments ``tail`` after them."""
    a0 = arrays[0]
    n = a0.size
    f = kern.pick(n)
    if a0.ndim == 2:
        f(*arrays, *tail)
        return
    if a0.ndim == 1 and n >= 2 * EW_COLS and f is not kern.serial:
        # a (1, n) view would give prange one row: cut into (rows, EW_COLS) + tail
        h = n - n % EW_COLS
        f(*[a[:h].reshape(h // EW_COLS, EW_COLS) for a in arrays], *tail)
        if h < n:
            kern.serial(*[a[h:].reshape(1, n - h) for a in arrays], *tail)
        return
    s = view2d_shape(a0.shape, n)
    f(*[a.reshape(s) for a in arrays], *tail)


def check_out(out, name, shape, dtype, inputs, allow_identical=False):
    """Validate/allocate ``out`` and reject overlap with the ``(array, name)`` inputs."""
    o = V.out_array(out, name, shape, dtype)
    if out is not None:
        for a, an in inputs:
            V.no_overlap(o, name, a, an, allow_identical)
    return o


def resolve(activation, activation_params, where):
    """``(entry, params)`` of a linear layer's ``activation`` argument: a
    registry name (``"none"``/None: the identity) and a mapping of its
    parameters (None: the defaults)."""
    if activation is None or activation == "none":
        entry = _acts.get("identity")
    else:
        if not isinstance(activation, str):
            raise TypeError(f"activation must be a string, got {type(activation).__name__}")
        try:
            entry = _acts.get(activation)
        except ValueError:
            names = ["none"] + [e.name for e in _acts.entries(public=True)]
            raise ValueError(f"activation must be one of {names}, got {activation!r}") from None
    if activation_params is not None and not isinstance(activation_params, dict):
        raise TypeError(f"activation_params must be a dict or None, got {type(activation_params).__name__}")
    return _acts.select(entry, f"{where}: activation {entry.name!r}", (), activation_params or {})


def scalar_array(owner, names, values, dtype, instead="float64 arrays"):
    """The (already checked, finite) scalar arguments ``values`` as an array of ``dtype``
    (the kernels' parameter row); ``instead``: the other precision the message suggests.

    Raises
    ------
    ValueError
        A value that ``dtype`` cannot represent (it would become +-inf: e.g.
        ``negative_slope=1e39`` for float32 arrays); the message names it.
    """
    dt = np.dtype(dtype)
    with np.errstate(over="ignore"):
        P = np.array(values, dt)
    for name, v, c in zip(names, values, P):
        if not np.isfinite(c):
            raise ValueError(f"{owner}: {name}={v!r} cannot be represented in {dt.name} (largest finite "
                             f"value {np.finfo(dt).max:.6g}); use a smaller {name} or {instead}")
    return P


def param_array(entry, params, dtype, owner):
    """``entry``'s bound ``params`` as the kernels' row of ``dtype`` (:func:`scalar_array`)."""
    return scalar_array(owner, [p.name for p in entry.params], params, dtype)


def _forward(entry, x, params, out, owner):
    V.float_array(x, "x")
    P = param_array(entry, params, x.dtype, owner)
    y = check_out(out, "out", x.shape, x.dtype, ((x, "x"),), allow_identical=True)
    ew(_A.kernels(entry.code).fwd, (x, y), (P,))
    return y


def _backward(entry, t, dy, params, out, owner):
    tn = "x" if entry.uses == "input" else "y"
    V.float_array(t, tn)
    V.float_array(dy, "dy")
    V.same_dtype(t, tn, dy, "dy")
    V.shape(dy, "dy", t.shape, f"the gradient of y has {tn}'s shape")
    P = param_array(entry, params, t.dtype, owner)
    dx = check_out(out, "out", t.shape, t.dtype, ((t, tn), (dy, "dy")), allow_identical=True)
    ew(_A.kernels(entry.code).bwd, (t, dy, dx), (False, P))
    return dx


def _param_doc(entry):
    return _acts.param_doc(entry)


def _make(entry):
    """``(<name>_forward, <name>_backward)`` of a registry entry."""
    P = inspect.Parameter
    pos = [P(p.name, P.POSITIONAL_OR_KEYWORD, default=p.default) for p in entry.params]
    if entry.choice is not None:        # GELU's approximate: selects the entry that runs
        pos.append(P(entry.choice.name, P.POSITIONAL_OR_KEYWORD, default=entry.choice.default))
    tn = "x" if entry.uses == "input" else "y"

    # without parameters, ``out`` may also be given by position, as before the registry
    legacy_out = not entry.params and entry.choice is None
    kind = P.POSITIONAL_OR_KEYWORD if legacy_out else P.KEYWORD_ONLY

    def forward(x, *args, out=None, **kwargs):
        if legacy_out and len(args) == 1 and out is None:
            args, out = (), args[0]
        owner = f"{entry.name}_forward"
        chosen, params = _acts.select(entry, owner, args, kwargs)
        return _forward(chosen, x, params, out, owner)

    def _run_backward(t, dy, args, out, kwargs):
        if legacy_out and len(args) == 1 and out is None:
            args, out = (), args[0]
        owner = f"{entry.name}_backward"
        chosen, params = _acts.select(entry, owner, args, kwargs)
        return _backward(chosen, t, dy, params, out, owner)

    # the first parameter has the documented name (``y``, or ``x`` for an entry whose
    # derivative reads the input), so that it can be passed by keyword
    if tn == "x":
        def backward(x, dy, *args, out=None, **kwargs):
            return _run_backward(x, dy, args, out, kwargs)
    else:
        def backward(y, dy, *args, out=None, **kwargs):
            return _run_backward(y, dy, args, out, kwargs)

    forward.__name__ = forward.__qualname__ = f"{entry.name}_forward"
    backward.__name__ = backward.__qualname__ = f"{entry.name}_backward"
    forward.__module__ = backward.__module__ = "fastbp.ops"
    forward.__signature__ = inspect.Signature(
        [P("x", P.POSITIONAL_OR_KEYWORD)] + pos + [P("out", kind, default=None)])
    backward.__signature__ = inspect.Signature(
        [P(tn, P.POSITIONAL_OR_KEYWORD), P("dy", P.POSITIONAL_OR_KEYWORD)] + pos
        + [P("out", kind, default=None)])
    pdoc = _param_doc(entry)
    forward.__doc__ = f"""{entry.layer} ``{entry.formula}`` elementwise (``torch.nn.{entry.torch}``).
{_acts.variant_doc(entry)}
    Finite and warning-free for every finite input; NaN stays NaN.

    Parameters
    ----------
    x : numpy.ndarray, any shape
        float32 or float64, C-contiguous.
{pdoc}    out : numpy.ndarray, optional
        Output of ``x``'s shape and dtype; may be ``x`` itself (in place).

    Returns
    -------
    y : numpy.ndarray
        Same shape and dtype as ``x``.
    """
    what = "output ``y``" if entry.uses == "output" else "input ``x``"
    backward.__doc__ = f"""Gradient of {entry.layer} from the forward {what}: ``dx = dy * f'``, ``{entry.dformula}``.
{_acts.variant_doc(entry)}
    Parameters
    ----------
    {tn} : numpy.ndarray, any shape
        The forward {what} (float32 or float64).
    dy : numpy.ndarray, shape of ``{tn}``
        Upstream gradient, same dtype.
{pdoc}    out : numpy.ndarray, optional
        Output array (``{tn}``'s shape and dtype; may be ``dy`` itself).

    Returns
    -------
    dx : numpy.ndarray
        Same shape and dtype as ``{tn}``.
    """
    return forward, backward


def wrappers():
    """``{name: function}`` of every generated wrapper, public entries in code order."""
    out = {}
    for e in _acts.entries(public=True):
        f, b = _make(e)
        out[f.__name__] = f
        out[b.__name__] = b
    return out
