"""The activation registry: every elementwise activation, defined once.

An :class:`Activation` entry holds everything fastbp knows about one
activation: its code (in the instruction tape), its names (fastbp's, the
``torch.nn`` class, scikit-learn's ``activation=`` string, the layer class),
the scalar forward ``y = f(x, *params)`` and, next to it, the derivative
``dy/dx``, expressed through the output ``y`` or through the input ``x``
(``uses``), the parameters with their defaults, and the weight-init rule of
the :class:`~fastbp.Linear` layer before it.

The scalar functions are plain Python on one number: numba compiles each of
them for the CPU (inlined into the loops of :mod:`fastbp.kernels.activations`,
one set of kernels per entry) and as a CUDA device function
(:mod:`fastbp.kernels.cuda.activations`).  Written with ``type(x)(c)`` for
constants, they compute in the array's dtype (float32 kernels do float32
arithmetic) and run unchanged as plain Python on numpy scalars.  They must
propagate NaN (a NaN input gives a NaN output or derivative-times-NaN), and
be finite and warning-free for every finite input.

Everything else is generated from, or looks up, this table: the layers
(``fastbp.ReLU``), the graph functions (``fastbp.relu``), the
``fastbp.ops.<name>_forward``/``_backward`` wrappers, ``from_torch``, the
CLI's ``--activation`` choices and the estimator's ``activation=`` names.
Adding an activation is adding one entry below.

An unknown name is a ValueError listing the known ones; an unknown code is a
ValueError when a step is compiled, and an error status if one ever reaches
an interpreter: there is no fall-through to the identity anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import fastmath as _fm
from . import names as _names
from .params import Choice, Param

__all__ = ["Param", "Choice", "Activation", "register", "unregister", "get", "by_code", "entries",
           "layer_entries", "lookup", "select", "variant_of", "param_doc", "variant_doc", "IDENTITY", "CAPACITY"]

#: the most entries (codes 0 .. CAPACITY-1): the size of the kernel tables
CAPACITY = 32
#: the code of the identity (a linear layer without activation)
IDENTITY = 0
#: the most parameters an entry may have (the kernels read them as scalars)
MAX_PARAMS = 2


def times(dy, d):       # the backward's dx = dy * d (Activation.combine)
    return dy * d


def gated(dy, d):       # a gate entry's: dy where d is not 0, else exactly 0
    return dy if d != 0 else type(dy)(0.0)


@dataclass(frozen=True)
class Activation:
    """One activation.

    Attributes
    ----------
    code : int
        Its code in the tape, ``0 <= code < CAPACITY``.
    name : str
        fastbp's name: graph function ``fastbp.<name>``, ``fastbp.ops.<name>_forward``,
        CLI ``--activation <name>``, estimator ``activation="<name>"``.
    layer : str or None
        The layer class ``fastbp.<layer>`` (None: no layer, graph function or ops wrapper).
    torch : str or None
        The ``torch.nn`` module class it corresponds to (``from_torch``).
    sklearn : str or None
        scikit-learn's ``activation=`` name, where scikit-learn has it.
    forward : function
        ``forward(x, *params)``: the activation of one scalar.
    derivative : function
        ``derivative(t, *params)``: ``dy/dx`` at the same point, where ``t``
        is the output ``y`` (``uses="output"``) or the input ``x`` (``uses="input"``).
    uses : {"output", "input"}
        What the backward pass reads.  ``"input"``: the compiler keeps the
        pre-activation ``z = x W + b`` beside ``y = f(z)`` (one more buffer).
    params : tuple of Param
        At most MAX_PARAMS; passed to both functions, in this order.
    init : {"he", "glorot"}
        Initialisation of the weights of a Linear layer followed by this
        activation: He normal (``std = sqrt(2 / fan_in)``) or Glorot uniform.
    formula, dformula : str
        The forward and derivative as text, for the generated docstrings.
    choice : Choice or None
        A string parameter of the layer that selects another entry (GELU's
        ``approximate``); the selected entries have ``layer=None``.
    inplace : bool
        The layer takes PyTorch's ``inplace=`` flag after its parameters, as the
        ``torch.nn`` module does (accepted and kept; it changes nothing: the fused
        step writes every layer's output into a buffer of its own).
    gate : bool
        The derivative is 0 or 1 and the backward selects (:attr:`combine`): exactly 0
        where it is 0, also for an infinite or NaN ``dy`` (PyTorch's ``threshold_backward``).
    """
    code: int
    name: str
    layer: str | None
    torch: str | None
    sklearn: str | None
    forward: object
    derivative: object
    uses: str
    formula: str
    dformula: str
    params: tuple = ()
    init: str = "glorot"
    choice: Choice | None = None
    inplace: bool = False
    gate: bool = False

    @property
    def combine(self):
        """``combine(dy, d)``: the backward's ``dx``, ``dy * d`` or a :attr:`gate` entry's select."""
        return gated if self.gate else times

    def __copy__(self):
        return self             # a registry entry is one immutable object: layers compare it by identity

    def __deepcopy__(self, memo):
        return self

    def __post_init__(self):
        if not (isinstance(self.code, int) and 0 <= self.code < CAPACITY):
            raise ValueError(f"activation {self.name!r}: code must be an int in [0, {CAPACITY}), got {self.code!r}")
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise ValueError(f"activation name must be an identifier, got {self.name!r}")
        if self.uses not in ("output", "input"):
            raise ValueError(f"activation {self.name!r}: uses must be 'output' or 'input', got {self.uses!r}")
        if self.init not in ("he", "glorot"):
            raise ValueError(f"activation {self.name!r}: init must be 'he' or 'glorot', got {self.init!r}")
        if len(self.params) > MAX_PARAMS or not all(isinstance(p, Param) for p in self.params):
            raise ValueError(f"activation {self.name!r}: params must be at most {MAX_PARAMS} Param objects")
        names = [p.name for p in self.params] + ([self.choice.name] if self.choice is not None else [])
        if len(set(names)) != len(names) or (self.inplace and "inplace" in names):
            raise ValueError(f"activation {self.name!r}: parameter names {names} must differ (from 'inplace' too)")
        if self.choice is not None and not isinstance(self.choice, Choice):
            raise ValueError(f"activation {self.name!r}: choice must be a Choice or None")
        if self.gate not in (False, True) or self.inplace not in (False, True) or (self.inplace and self.choice):
            raise ValueError(f"activation {self.name!r}: gate and inplace must be bools, inplace False with a choice")

    @property
    def defaults(self):
        """The parameters' default values, a tuple of floats."""
        return tuple(float(p.default) for p in self.params)

    def bind(self, owner, args=(), kwargs=None):
        """The parameter values of a call ``owner(*args, **kwargs)`` as a tuple of
        floats in :attr:`params` order (defaults filled in), checked.

        Raises
        ------
        TypeError
            Too many arguments, an unknown keyword, or a value that is not a
            real number.
        ValueError
            A value out of its range or not finite.
        """
        kwargs = dict(kwargs or {})
        if len(args) > len(self.params):
            raise TypeError(f"{owner} takes at most {len(self.params)} parameter(s) "
                            f"({', '.join(p.name for p in self.params) or 'none'}), got {len(args)}")
        values = []
        for i, p in enumerate(self.params):
            if i < len(args):
                if p.name in kwargs:
                    raise TypeError(f"{owner} got multiple values for {p.name!r}")
                v = args[i]
            else:
                v = kwargs.pop(p.name, p.default)
            values.append(p.check(v, owner))
        if kwargs:
            raise TypeError(f"{owner} got an unexpected keyword argument {next(iter(kwargs))!r}")
        return tuple(values)


def select(entry, owner, args=(), kwargs=None):
    """``(entry, params)`` of a call ``owner(*args, **kwargs)`` of ``entry``'s
    layer, graph function or ops wrapper: the entry its :class:`Choice` selects
    (``GELU(approximate="tanh")`` -> ``gelu_tanh``; ``entry`` itself without a
    choice) and its parameters bound by :meth:`Activation.bind`.  The choice
    comes after the real parameters, by position or keyword.

    Raises
    ------
    TypeError, ValueError
        As :meth:`Activation.bind`, and for a choice that is not a str /
        not one of its values (the message names the choice).
    """
    c = entry.choice
    if c is None:
        return entry, entry.bind(owner, args, kwargs)
    n = len(entry.params)
    value, args, kwargs = take_trailing(owner, c.name, c.default, n, args, kwargs)
    if len(args) > n:
        raise TypeError(f"{owner} takes at most {n + 1} argument(s), got {len(args) + 1}")
    chosen = get(c.check(value, owner))
    return chosen, chosen.bind(owner, args, kwargs)


def take_trailing(owner, name, default, n, args=(), kwargs=None):
    """The argument ``name`` that follows ``n`` parameters in a call ``owner(*args, **kwargs)``,
    by position (``args[n]``) or keyword (else ``default``): ``(value, the other args, the other
    kwargs)``.  TypeError when it is given both ways."""
    kwargs = dict(kwargs or {})
    args = tuple(args)
    if len(args) > n:
        if name in kwargs:
            raise TypeError(f"{owner} got multiple values for {name!r}")
        return args[n], args[:n] + args[n + 1:], kwargs
    return kwargs.pop(name, default), args, kwargs


def param_doc(entry):
    """The numpydoc lines (indented 4) of ``entry``'s parameters and choice, for generated docstrings."""
    out = "".join(f"    {p.name} : float, default {p.default!r}\n        {p.doc}\n" for p in entry.params)
    c = entry.choice
    if c is not None:
        values = ", ".join(repr(v) for v, _ in c.options)
        out += f"    {c.name} : {{{values}}}, default {c.default!r}\n        {c.doc}\n"
    return out


def variant_doc(entry):
    """Docstring lines (indented 4) on the entries ``entry``'s choice selects besides itself."""
    c = entry.choice
    return "".join(f"\n    ``{c.name}={v!r}``: ``{get(n).formula}`` (local gradient ``{get(n).dformula}``).\n"
                   for v, n in (c.options if c is not None else ()) if n != entry.name)


def variant_of(entry):
    """``(head, value)`` when ``entry`` is selected through a :class:`Choice`
    (``gelu_tanh`` -> ``(gelu, "tanh")``, ``gelu`` -> ``(gelu, "none")``),
    ``(entry, None)`` otherwise: the entry whose layer class stands for
    ``entry``, and the choice value that selects it."""
    for e in entries():
        if e.choice is not None:
            for v, name in e.choice.options:
                if name == entry.name:
                    return e, v
    return entry, None


_BY_NAME = {}
_BY_CODE = {}


def register(entry):
    """Add ``entry`` to the registry (its code and every name must be new).

    Entries are registered when this module is imported; tests may register
    more (:func:`unregister` removes them).  Kernels are compiled for an entry
    only when a step or an ops call first uses it.
    """
    if not isinstance(entry, Activation):
        raise TypeError(f"entry must be an Activation, got {type(entry).__name__}")
    if entry.code in _BY_CODE:
        raise ValueError(f"activation code {entry.code} is already {_BY_CODE[entry.code].name!r}")
    if entry.name in _BY_NAME:
        raise ValueError(f"activation {entry.name!r} is already registered")
    if not (callable(entry.forward) and callable(entry.derivative)):
        raise TypeError(f"activation {entry.name!r}: forward and derivative must be functions")
    owner = f"activation {entry.name!r}"
    _names.claim_activation(entry.name, owner, layer=entry.layer, torch=entry.torch)
    for field in ("layer", "torch", "sklearn"):     # each maps one outside name to one entry
        value = getattr(entry, field)
        other = next((e for e in _BY_NAME.values() if value is not None and getattr(e, field) == value), None)
        if other is not None:
            raise ValueError(f"{owner}: {field}={value!r} is taken by activation {other.name!r}")
    _names.take(entry.name, owner)
    _BY_NAME[entry.name] = entry
    _BY_CODE[entry.code] = entry
    return entry


def unregister(name):
    """Remove the entry ``name`` (tests only: compiled steps keep their kernels)."""
    entry = get(name)
    if entry.code == IDENTITY:
        raise ValueError("the identity cannot be unregistered")
    del _BY_NAME[entry.name]
    del _BY_CODE[entry.code]
    _names.release(entry.name)


def entries(public=False):
    """Every entry, by code; ``public=True``: those with their own name everywhere
    (a layer class, a graph function, ops wrappers, a CLI/estimator name): every
    entry with a layer class but the identity, which is a layer
    (``fastbp.Identity``) and the code for "no activation" (``"none"``)."""
    return [e for _, e in sorted(_BY_CODE.items())
            if not public or (e.layer is not None and e.code != IDENTITY)]


def layer_entries():
    """Every entry with a layer class (the public ones and the identity), by code."""
    return [e for _, e in sorted(_BY_CODE.items()) if e.layer is not None]


def get(name):
    """The entry named ``name`` (fastbp's name).

    Raises
    ------
    ValueError
        No activation has that name; the message lists the known names.
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_BY_NAME)}") from None


def by_code(code):
    """The entry with tape code ``code``; ValueError for an unknown code."""
    try:
        return _BY_CODE[int(code)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"unknown activation code {code!r}; known codes are {sorted(_BY_CODE)}") from None


def lookup(name, field="name"):
    """The entry whose ``field`` (``"name"``, ``"layer"``, ``"torch"`` or
    ``"sklearn"``) is ``name``, or None."""
    for e in entries():
        if getattr(e, field) == name:
            return e
    return None


# ====================================================================== entries
# Each forward is followed by its derivative.  Constants are written type(x)(c):
# float32 kernels compute in float32.

def identity(x):
    return x


def d_identity(y):
    return type(y)(1.0)


register(Activation(
    code=IDENTITY, name="identity", layer="Identity", torch="Identity", sklearn="identity",
    forward=identity, derivative=d_identity, uses="output",
    formula="y = x", dformula="dy/dx = 1"))


def relu(x):
    # NaN < 0 is False: NaN stays NaN
    return type(x)(0.0) if x < 0 else x


def d_relu(y):
    # 0 or 1, a select (gate=True); 1 for NaN, as PyTorch's threshold_backward (only y <= 0 blocks)
    return type(y)(not y <= 0)


register(Activation(
    code=1, name="relu", layer="ReLU", torch="ReLU", sklearn="relu",
    forward=relu, derivative=d_relu, uses="output", init="he",
    inplace=True, gate=True,
    formula="y = max(x, 0)", dformula="dy/dx = 0 if y <= 0 else 1 (1 for NaN, as PyTorch)"))


def sigmoid(x):
    # exp of a non-positive number only: no overflow for any finite x; one exp
    # (e = exp(-|x|)), vectorised in float32 (fastmath), divisions without numba's zero test
    one = type(x)(1.0)
    e = _fm.exp(-abs(x))
    d = one + e
    return _fm.div(one, d) if x >= 0 else _fm.div(e, d)


def d_sigmoid(y):
    return y * (type(y)(1.0) - y)


register(Activation(
    code=2, name="sigmoid", layer="Sigmoid", torch="Sigmoid", sklearn="logistic",
    forward=sigmoid, derivative=d_sigmoid, uses="output",
    formula="y = 1 / (1 + exp(-x))", dformula="dy/dx = y (1 - y)"))


def tanh(x):
    # vectorised in float32 (fastmath.tanh: within 1.6 ulp), libm in float64
    return _fm.tanh(x)


def d_tanh(y):
    return type(y)(1.0) - y * y


register(Activation(
    code=3, name="tanh", layer="Tanh", torch="Tanh", sklearn="tanh",
    forward=tanh, derivative=d_tanh, uses="output",
    formula="y = tanh(x)", dformula="dy/dx = 1 - y^2"))


def leaky_relu(x, negative_slope):
    return x if x > 0 else x * negative_slope


def d_leaky_relu(x, negative_slope):
    # of the input, as PyTorch's: the slope at 0 and for NaN, any sign of the slope
    return type(x)(1.0) if x > 0 else negative_slope


register(Activation(
    code=4, name="leaky_relu", layer="LeakyReLU", torch="LeakyReLU", sklearn=None,
    forward=leaky_relu, derivative=d_leaky_relu, uses="input", init="he",
    params=(Param("negative_slope", 0.01, "Slope for negative inputs (any finite value, as in PyTorch)."),),
    inplace=True,
    formula="y = x if x > 0 else negative_slope * x", dformula="dy/dx = 1 if x > 0 else negative_slope"))


def elu(x, alpha):
    # PyTorch's: x if x > 0 else alpha * expm1(x), except that +-0 come out as they went in
    # (as PyTorch's, also for a negative alpha, where alpha * expm1(+-0) flips the sign);
    # NaN >= 0 is False: NaN stays NaN
    return x if x >= 0 else alpha * _fm.expm1(x)


def d_elu(x, alpha):
    # of the input, as PyTorch's nn.ELU backward (elu_backward with is_result=False):
    # alpha * exp(x) for x <= 0 (alpha at 0), 1 for x > 0 (and for NaN)
    return alpha * _fm.exp(x) if x <= 0 else type(x)(1.0)


register(Activation(
    code=5, name="elu", layer="ELU", torch="ELU", sklearn=None,
    forward=elu, derivative=d_elu, uses="input", init="he",
    params=(Param("alpha", 1.0, "Value the output tends to for large negative inputs, "
                                "``-alpha`` (any finite value, as in PyTorch)."),),
    inplace=True,
    formula="y = x if x > 0 else alpha (exp(x) - 1)", dformula="dy/dx = 1 if x > 0 else alpha exp(x)"))


# GELU's constants: 1/sqrt(2), 1/sqrt(2 pi), sqrt(2/pi)
_SQRT1_2 = 0.70710678118654752440
_INV_SQRT_2PI = 0.39894228040143267794
_SQRT_2_PI = 0.79788456080286535588


def gelu(x):
    # PyTorch's approximate="none": x Phi(x), Phi the standard normal CDF through erf
    h = type(x)(0.5)
    return x * (h + h * _fm.erf(x * type(x)(_SQRT1_2)))


def d_gelu(x):
    # Phi(x) + x phi(x); phi(x) = exp(-x^2/2) / sqrt(2 pi); NaN stays NaN
    h = type(x)(0.5)
    cdf = h + h * _fm.erf(x * type(x)(_SQRT1_2))
    return cdf + x * (type(x)(_INV_SQRT_2PI) * _fm.exp(-h * x * x))


def gelu_tanh(x):
    # PyTorch's approximate="tanh": x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3),
    # written x s with s = (1 + tanh(u)) / 2 = sigmoid(2 u) = 1 / (1 + exp(-2 u)):
    # one exp, no cancellation in 1 + tanh(u) for negative u, exp of a non-positive number only
    # (every branch below selects between computed values: the loops stay vectorised)
    one = type(x)(1.0)
    u2 = type(x)(2.0 * _SQRT_2_PI) * (x + type(x)(0.044715) * (x * x * x))
    e = _fm.exp(-abs(u2))
    num = one if u2 >= 0 else e
    return x * _fm.div(num, one + e)


def d_gelu_tanh(x):
    # s + x (1 - tanh(u)^2) u' / 2 with 1 - tanh(u)^2 = 4 s (1 - s), u' = sqrt(2/pi) (1 + 3 0.044715 x^2)
    one = type(x)(1.0)
    # beyond |x| = 1000 the derivative is exactly 1 or 0: clamp (NaN stays NaN), so x^2 cannot
    # overflow into 0 * inf
    c = type(x)(1000.0)
    x = c if x > c else x
    x = -c if x < -c else x
    xx = x * x
    u2 = type(x)(2.0 * _SQRT_2_PI) * (x + type(x)(0.044715) * (xx * x))
    e = _fm.exp(-abs(u2))
    d = one + e
    s = _fm.div(one if u2 >= 0 else e, d)
    sc = _fm.div(e if u2 >= 0 else one, d)            # 1 - s, without cancellation
    du = type(x)(_SQRT_2_PI) * (one + type(x)(3.0 * 0.044715) * xx)
    return s + type(x)(2.0) * x * s * sc * du


register(Activation(
    code=6, name="gelu", layer="GELU", torch="GELU", sklearn=None,
    forward=gelu, derivative=d_gelu, uses="input", init="he",
    choice=Choice("approximate", "none", (("none", "gelu"), ("tanh", "gelu_tanh")),
                  "``'none'``: the exact ``x Phi(x)`` through ``erf``; ``'tanh'``: PyTorch's tanh "
                  "approximation ``x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``."),
    formula="y = x Phi(x) = x (1 + erf(x / sqrt(2))) / 2",
    dformula="dy/dx = Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi)"))

register(Activation(
    code=7, name="gelu_tanh", layer=None, torch=None, sklearn=None,
    forward=gelu_tanh, derivative=d_gelu_tanh, uses="input", init="he",
    formula="y = x (1 + tanh(u)) / 2, u = sqrt(2/pi) (x + 0.044715 x^3)",
    dformula="dy/dx = (1 + tanh(u)) / 2 + x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 0.044715 x^2) / 2"))


def silu(x):
    # x sigmoid(x), one exp of a non-positive number (no overflow); NaN stays NaN
    one = type(x)(1.0)
    e = _fm.exp(-abs(x))
    num = x if x >= 0 else x * e
    return _fm.div(num, one + e)


def d_silu(x):
    # s (1 + x (1 - s)), s = sigmoid(x), 1 - s without cancellation
    one = type(x)(1.0)
    e = _fm.exp(-abs(x))
    d = one + e
    s = _fm.div(one if x >= 0 else e, d)
    sc = _fm.div(e if x >= 0 else one, d)
    return s * (one + x * sc)


register(Activation(
    code=8, name="silu", layer="SiLU", torch="SiLU", sklearn=None,
    forward=silu, derivative=d_silu, uses="input", init="he",
    inplace=True,
    formula="y = x sigmoid(x) = x / (1 + exp(-x))", dformula="dy/dx = s (1 + x (1 - s)), s = sigmoid(x)"))


def softplus(x, beta, threshold):
    # PyTorch's: x where beta x > threshold, else log(1 + exp(beta x)) / beta, here as
    # (max(z, 0) + log1p(exp(-|z|))) / beta, z = beta x: finite for every finite x
    z = x * beta
    zp = z if z > 0 else type(x)(0.0)
    sp = _fm.div(zp + _fm.log1p(_fm.exp(-abs(z))), beta)
    return x if z > threshold else sp


def d_softplus(x, beta, threshold):
    # PyTorch's threshold rule: 1 where beta x > threshold, else sigmoid(beta x)
    one = type(x)(1.0)
    z = x * beta
    e = _fm.exp(-abs(z))
    s = _fm.div(one if z >= 0 else e, one + e)
    return one if z > threshold else s


register(Activation(
    code=9, name="softplus", layer="Softplus", torch="Softplus", sklearn=None,
    forward=softplus, derivative=d_softplus, uses="input",
    params=(Param("beta", 1.0, "Sharpness: ``log(1 + exp(beta x)) / beta`` (> 0).", low=0.0, open_low=True),
            Param("threshold", 20.0, "Above ``beta x > threshold`` the layer is the identity (as in PyTorch).")),
    formula="y = x if beta x > threshold else log(1 + exp(beta x)) / beta",
    dformula="dy/dx = 1 if beta x > threshold else sigmoid(beta x)"))
