"""The hyper-parameter checks of :class:`fastbp.estimator.MLPClassifier` and
:class:`~fastbp.estimator.MLPRegressor`: scikit-learn's ``_parameter_constraints`` of its
MLP (the same accepted values; scikit-learn's InvalidParameterError, a ValueError and a
TypeError, naming the parameter otherwise), plus
fastbp's own parameters (``dtype``, ``precision``, its activation names).

Imported by :mod:`fastbp._estimator_base` only; reads no estimator state but the
parameters (and the fitted architecture, :func:`check_same_model`), changes none.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _scalars
from ._validate import INT64_MAX as _INT64_MAX
from ._bf16 import PRECISIONS, known as known_precision
from .builders import activation_layer, activation_names

try:    # scikit-learn's class (since 1.2): code that catches it catches fastbp's checks too
    from sklearn.utils._param_validation import InvalidParameterError
except ImportError:                                 # pragma: no cover
    class InvalidParameterError(ValueError, TypeError):
        """A hyper-parameter of the wrong type or value (scikit-learn's name)."""

__all__ = ["check_params", "check_same_model", "resolve_dtype", "is_int", "is_real", "peek_seed", "SOLVERS",
           "LEARNING_RATES", "InvalidParameterError"]

SOLVERS = ("sgd", "adam", "lbfgs")
LEARNING_RATES = ("constant", "invscaling", "adaptive")

#: the largest seed of numpy's RandomState (scikit-learn's ``random_state`` constraint)
_MAX_SEED = 2**32 - 1


def is_int(v):
    """An integer that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v):
    """A finite real number that is not a bool (a Fraction too; an int past float's range is not):
    what :func:`fastbp._scalars.real` accepts."""
    try:
        _scalars.real("v", v, "is_real")
    except (TypeError, ValueError):
        return False
    return True


def _is_bool(v):
    """A bool (numpy's included), as scikit-learn's "boolean" constraint: 0, 1 and 1.0 are not."""
    return isinstance(v, (bool, np.bool_))


def resolve_dtype(dtype, X_dtype):
    """The compute dtype for the ``dtype`` parameter and X's dtype.

    Raises
    ------
    InvalidParameterError
        (a TypeError and a ValueError) ``dtype`` is not None, float32 or
        float64 (in any spelling numpy understands); the message names ``dtype``.
    """
    if dtype is None:
        return np.dtype(np.float32) if X_dtype == np.float32 else np.dtype(np.float64)
    try:
        dt = np.dtype(dtype)
    except Exception:           # numpy raises TypeError, ValueError, ... for what it cannot read
        dt = None
    if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InvalidParameterError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
    return dt


def hidden_sizes(est):
    """``hidden_layer_sizes`` as a list of ints (ValueError naming it otherwise)."""
    h = est.hidden_layer_sizes
    if is_int(h):
        h = [h]
    try:    # array-like, as scikit-learn's constraint: a generator would be used up by the first fit
        h = list(h) if hasattr(h, "__len__") and not isinstance(h, (str, bytes)) else None
    except TypeError:
        h = None
    if h is None or not all(is_int(v) for v in h):
        raise InvalidParameterError(f"hidden_layer_sizes must be an int or a sequence of ints, "
                                    f"got {_shown(est.hidden_layer_sizes)}")
    if not all(v > 0 for v in h):
        raise InvalidParameterError(f"hidden_layer_sizes must be > 0, got {_shown(est.hidden_layer_sizes)}")
    if not all(v <= _INT64_MAX for v in h):     # a layer's width is an int64 of the executor
        raise InvalidParameterError(f"hidden_layer_sizes must be <= {_INT64_MAX}, "
                                    f"got {_shown(est.hidden_layer_sizes)}")
    return [int(v) for v in h]


def check_same_model(est, hidden=None, incremental=True, call="partial_fit"):
    """A call that continues a fitted estimator's compiled model (``partial_fit``, a warm-start
    ``fit``, ``predict``): ValueError naming each parameter that ``set_params`` changed since
    the fit among ``activation`` (another name of the same function is the same),
    ``precision`` and, for a warm start, ``hidden_layer_sizes``.  They are compiled into the
    model's step, which would go on with the old ones silently (scikit-learn reads
    ``activation`` at every call; a ``partial_fit`` keeps the old ``hidden_layer_sizes`` in
    both)."""
    arch = est._arch
    changed = []
    if est.activation != arch["activation"] and type(activation_layer(est.activation)) is not type(
            activation_layer(arch["activation"])):
        changed.append(f"activation={est.activation!r} (fitted: {arch['activation']!r})")
    if str(est.precision).lower() != str(arch.get("precision", "full")).lower():     # names in any case
        changed.append(f"precision={est.precision!r} (fitted: {arch.get('precision', 'full')!r})")
    if not incremental and list(arch["hidden"]) != hidden:
        changed.append(f"hidden_layer_sizes={est.hidden_layer_sizes!r} (fitted: {tuple(arch['hidden'])})")
    if changed:
        raise ValueError(f"{call} continues the fitted model, whose {', '.join(changed)} set_params changed "
                         f"after the fit; set it back, or fit anew (warm_start=False)")


def _shown(value):
    """``repr(value)`` for a message; an int past the 4300 digits ``repr`` refuses by its length."""
    try:
        return repr(value)
    except ValueError:
        if isinstance(value, numbers.Integral):
            return _scalars.int_text(value)
        return f"a {type(value).__name__} holding an integer of more than 4300 digits"


def check_params(est):
    """Check every hyper-parameter of ``est``; return the hidden layer sizes (a list).

    The accepted values are scikit-learn's (``BaseMultilayerPerceptron._parameter_constraints``)
    but for the activations (fastbp's names too) and the numbers: a bool is not taken for one
    (scikit-learn's intervals accept ``max_iter=True`` as 1; here it is an error naming the
    parameter).  The booleans (``shuffle`` ...) take a bool only, as scikit-learn's.

    Raises
    ------
    InvalidParameterError
        scikit-learn's (a ValueError and a TypeError, as scikit-learn raises for
        a bad type or value): a bad value, the message naming the parameter.
    """
    def need(ok, name, what):
        """InvalidParameterError naming ``name`` unless ``ok``."""
        if not ok:
            raise InvalidParameterError(f"{name} must be {what}, got {_shown(getattr(est, name))}")

    names = activation_names()           # scikit-learn's names and fastbp's (fastbp.builders)
    need(isinstance(est.activation, str) and est.activation in names, "activation",
         f"one of {tuple(names)}")
    need(isinstance(est.solver, str) and est.solver in SOLVERS, "solver", f"one of {SOLVERS}")
    need(isinstance(est.learning_rate, str) and est.learning_rate in LEARNING_RATES, "learning_rate",
         f"one of {LEARNING_RATES}")
    need(is_real(est.power_t) and est.power_t >= 0, "power_t", "a finite number >= 0")
    need(is_int(est.max_fun) and est.max_fun >= 1, "max_fun", "an int >= 1")
    need(is_real(est.alpha) and est.alpha >= 0, "alpha", "a finite number >= 0")
    need(est.batch_size == "auto" or (is_int(est.batch_size) and est.batch_size >= 1),
         "batch_size", "'auto' or an int >= 1")
    need(is_real(est.learning_rate_init) and est.learning_rate_init > 0,
         "learning_rate_init", "a finite number > 0")
    need(is_int(est.max_iter) and est.max_iter >= 1, "max_iter", "an int >= 1")
    need(is_real(est.tol) and est.tol >= 0, "tol", "a finite number >= 0")
    need(is_real(est.momentum) and 0 <= est.momentum <= 1, "momentum", "in [0, 1]")
    # [0, 1) as scikit-learn: 0 holds nothing out, refused only where early_stopping needs a
    # validation set (fastbp._estimator_fit.plan_validation_split)
    need(is_real(est.validation_fraction) and 0 <= est.validation_fraction < 1,
         "validation_fraction", "in [0, 1)")
    need(is_real(est.beta_1) and 0 <= est.beta_1 < 1, "beta_1", "in [0, 1)")
    need(is_real(est.beta_2) and 0 <= est.beta_2 < 1, "beta_2", "in [0, 1)")
    need(is_real(est.epsilon) and est.epsilon > 0, "epsilon", "a finite number > 0")
    nic = est.n_iter_no_change
    need((is_int(nic) and nic >= 1) or (isinstance(nic, numbers.Real) and nic == np.inf),
         "n_iter_no_change", "an int >= 1 or np.inf")
    need(_is_bool(est.verbose) or (is_int(est.verbose) and est.verbose >= 0), "verbose",
         "a bool or an int >= 0")
    for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
        need(_is_bool(getattr(est, name)), name, "a bool")
    rs = est.random_state
    need(rs is None or isinstance(rs, np.random.RandomState)
         or (isinstance(rs, numbers.Integral) and 0 <= rs <= _MAX_SEED),
         "random_state", f"an int in [0, {_MAX_SEED}], a numpy.random.RandomState instance or None")
    resolve_dtype(est.dtype, np.dtype(np.float64))
    need(known_precision(est.precision), "precision", f"one of {PRECISIONS}")
    return hidden_sizes(est)


def peek_seed(rs):
    """The step's seed: the next ``randint`` of the generator ``rs`` (a ``RandomState``),
    drawn from a copy, so that ``rs`` itself gives the draws scikit-learn takes from it
    next (the initialisation, the validation split, the shuffles)."""
    twin = np.random.RandomState()
    twin.set_state(rs.get_state())
    return int(twin.randint(np.iinfo(np.int32).max))
