"""scikit-learn estimators backed by a fused fastbp training step.

:class:`MLPClassifier` and :class:`MLPRegressor` follow the conventions of
:mod:`sklearn.neural_network` (same parameter names where the meaning is the
same, ``fit``/``partial_fit``/``predict``/``score``, fitted attributes ending
in ``_``), but every epoch runs as **one** native call of a
:func:`fastbp.compile` step instead of a Python loop over minibatches.

scikit-learn is an optional dependency of fastbp (the ``examples`` extra); it
is imported by this module only.

Differences from scikit-learn's MLP, all deliberate:

* ``solver`` is ``'sgd'`` or ``'adam'`` (no ``'lbfgs'``); the learning rate is
  constant (no ``learning_rate``/``power_t`` schedules).
* Weights are initialised the fastbp way (He for ReLU, Glorot for
  sigmoid/tanh/identity, zero biases).
* The classifier uses a softmax output for every single-label problem
  (two units for a binary problem), a sigmoid output per label for
  multilabel problems.
* ``alpha`` becomes the optimizer's ``weight_decay = alpha / batch_size``,
  the same penalty gradient as scikit-learn's ``alpha * W / batch_size``; it
  is applied to every parameter, biases included.
* Computation runs in float32 when ``X`` is float32 and float64 otherwise,
  unless ``dtype`` says which.
"""
from __future__ import annotations

import numbers
import os
import tempfile
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, column_or_1d
except ImportError as _e:  # pragma: no cover - exercised only without sklearn
    raise ImportError(
        "fastbp.MLPClassifier and fastbp.MLPRegressor need scikit-learn, which is not "
        "installed: pip install 'fastbp[examples]'"
    ) from _e

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    _sk_validate_data = None

__all__ = ["MLPClassifier", "MLPRegressor"]

def _activation_entry(name):
    """The activation registry entry of an ``activation=`` name: scikit-learn's
    name where it has one ('logistic'), else fastbp's ('leaky_relu'); None if unknown."""
    from .registry import activations as _acts
    e = _acts.lookup(name, "sklearn")
    if e is None:
        e = _acts.lookup(name)
        if e is not None and (e.sklearn is not None or e.layer is None):
            e = None        # scikit-learn spells it differently ('sigmoid' is 'logistic' here)
    return e


def _activation_names():
    from .registry import activations as _acts
    return tuple([e.sklearn for e in _acts.entries() if e.sklearn]
                 + [e.name for e in _acts.entries(public=True) if e.sklearn is None])


_ACTIVATIONS = _activation_names()
_SOLVERS = ("sgd", "adam")


def _validate_data(est, X, y="no_validation", *, reset=True, **kw):
    if _sk_validate_data is not None:
        return _sk_validate_data(est, X, y, reset=reset, **kw)
    return est._validate_data(X, y, reset=reset, **kw)  # pragma: no cover


def _resolve_dtype(dtype, X_dtype):
    if dtype is None:
        return np.dtype(np.float32) if X_dtype == np.float32 else np.dtype(np.float64)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
    return dt


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)


def _batch_sizes(n, bs):
    full, rem = divmod(n, bs)
    sizes = np.full(full + (1 if rem else 0), bs, dtype=np.float64)
    if rem:
        sizes[-1] = rem
    return sizes


class _BaseMLP(BaseEstimator):
    """Shared machinery of :class:`MLPClassifier` and :class:`MLPRegressor`."""

    def _loss_scales(self, n_out):
        """``(report, grad)``: scikit-learn's loss is ``report`` times fastbp's
        mean loss, and its gradient ``grad`` times fastbp's gradient."""
        return 1.0, 1.0

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate_init=0.001,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        dtype=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype

    # ------------------------------------------------------------------ params
    def _hidden(self):
        h = self.hidden_layer_sizes
        if _is_int(h):
            h = [h]
        try:
            h = list(h)
        except TypeError:
            raise ValueError(
                f"hidden_layer_sizes must be an int or a sequence of ints, got {self.hidden_layer_sizes!r}"
            ) from None
        if not all(_is_int(v) and v > 0 for v in h):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {self.hidden_layer_sizes!r}")
        return [int(v) for v in h]

    def _check_params(self):
        def need(ok, name, what):
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

        need(isinstance(self.activation, str) and _activation_entry(self.activation) is not None, "activation",
             f"one of {_activation_names()}")
        need(self.solver in _SOLVERS, "solver",
             f"one of {_SOLVERS} (fastbp has no 'lbfgs' solver)")
        need(_is_real(self.alpha) and self.alpha >= 0, "alpha", "a finite number >= 0")
        need(self.batch_size == "auto" or (_is_int(self.batch_size) and self.batch_size >= 1),
             "batch_size", "'auto' or an int >= 1")
        need(_is_real(self.learning_rate_init) and self.learning_rate_init > 0,
             "learning_rate_init", "a finite number > 0")
        need(_is_int(self.max_iter) and self.max_iter >= 1, "max_iter", "an int >= 1")
        need(_is_real(self.tol) and self.tol >= 0, "tol", "a finite number >= 0")
        need(_is_real(self.momentum) and 0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(_is_real(self.validation_fraction) and 0 < self.validation_fraction < 1,
             "validation_fraction", "in (0, 1)")
        need(_is_real(self.beta_1) and 0 <= self.beta_1 < 1, "beta_1", "in [0, 1)")
        need(_is_real(self.beta_2) and 0 <= self.beta_2 < 1, "beta_2", "in [0, 1)")
        need(_is_real(self.epsilon) and self.epsilon > 0, "epsilon", "a finite number > 0")
        need(_is_int(self.n_iter_no_change) and self.n_iter_no_change >= 1,
             "n_iter_no_change", "an int >= 1")
        for name in ("shuffle", "verbose", "warm_start", "nesterovs_momentum", "early_stopping"):
            need(isinstance(getattr(self, name), (bool, np.bool_)) or getattr(self, name) in (0, 1),
                 name, "a bool")
        _resolve_dtype(self.dtype, np.dtype(np.float64))
        return self._hidden()

    # ------------------------------------------------------------------ steps
    def _optimizer(self, batch_size, n_out):
        import fastbp

        # alpha * W / batch_size is scikit-learn's L2 gradient; fastbp's
        # weight_decay adds weight_decay * p to the gradient.
        wd = float(self.alpha) / batch_size
        lr = float(self.learning_rate_init)
        eps = float(self.epsilon)
        # scikit-learn's gradient is s times fastbp's (see _loss_scales):
        # rescale so that the same hyper-parameters take the same steps.
        # SGD: lr * s * (g + wd / s * p); Adam is invariant to the gradient's
        # scale except for epsilon.
        s = self._loss_scales(n_out)[1]
        wd /= s
        if self.solver == "sgd":
            lr *= s
            m = float(self.momentum)
            return fastbp.SGD(lr=lr, momentum=m, nesterov=bool(self.nesterovs_momentum) and m > 0,
                              weight_decay=wd)
        return fastbp.Adam(lr=lr, betas=(float(self.beta_1), float(self.beta_2)), eps=eps / s,
                           weight_decay=wd)

    def _make_step(self, hidden, n_in, n_out, batch_size, seed):
        """Compile a fresh step; remember how, for pickling."""
        arch = {
            "hidden": list(hidden), "activation": self.activation, "n_in": int(n_in),
            "n_out": int(n_out), "loss": self._fastbp_loss, "batch_size": int(batch_size),
            "dtype": self._dtype.name, "seed": int(seed),
            "optimizer": self._optimizer_params(batch_size, n_out),
        }
        self._step = self._compile(arch)
        self._arch = arch

    def _optimizer_params(self, batch_size, n_out):
        opt = self._optimizer(batch_size, n_out)
        if opt.name == "sgd":
            return {"type": "sgd", "lr": opt.lr, "momentum": opt.momentum,
                    "nesterov": opt.nesterov, "weight_decay": opt.weight_decay}
        return {"type": "adam", "lr": opt.lr, "betas": tuple(opt.betas), "eps": opt.eps,
                "weight_decay": opt.weight_decay}

    @staticmethod
    def _compile(arch):
        import fastbp

        from .layers import activation_layer
        entry = _activation_entry(arch["activation"])
        act = None if entry.layer is None else activation_layer(entry)
        layers = []
        prev = arch["n_in"]
        for h in arch["hidden"]:
            layers.append(fastbp.Linear(prev, h))
            if act is not None:
                layers.append(act())
            prev = h
        layers.append(fastbp.Linear(prev, arch["n_out"]))
        o = dict(arch["optimizer"])
        kind = o.pop("type")
        opt = fastbp.SGD(**o) if kind == "sgd" else fastbp.Adam(**o)
        return fastbp.compile(fastbp.Sequential(*layers), loss=arch["loss"], optimizer=opt,
                              batch_size=arch["batch_size"], dtype=np.dtype(arch["dtype"]).type,
                              seed=arch["seed"])

    def _weight_names(self):
        names = [k for k in self._step.params if k.endswith(".W")]
        return sorted(names, key=lambda k: int(k.split(".")[0]))

    @property
    def coefs_(self):
        """Weight matrices, one ``(fan_in, fan_out)`` array per layer (the live buffers)."""
        check_is_fitted(self)
        return [self._step.params[k] for k in self._weight_names()]

    @property
    def intercepts_(self):
        """Bias vectors, one ``(fan_out,)`` array per layer (the live buffers)."""
        check_is_fitted(self)
        return [self._step.params[k[:-1] + "b"] for k in self._weight_names()]

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never touch self.__dict__
        step = state.pop("_step", None)
        if step is not None:
            # the step itself holds native code; pickle its checkpoint instead
            # (weights, optimizer state, counters: training resumes exactly)
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "step.npz")
                step.save(path)
                with open(path, "rb") as f:
                    state["_step_checkpoint"] = f.read()
        return state

    def __setstate__(self, state):
        blob = state.pop("_step_checkpoint", None)
        super().__setstate__(state)
        if blob is not None:
            import fastbp

            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "step.npz")
                with open(path, "wb") as f:
                    f.write(blob)
                self._step = fastbp.load(path)

    # ------------------------------------------------------------------ data
    def _as_array(self, X):
        if hasattr(X, "toarray"):  # scipy sparse: fastbp works on dense arrays
            X = X.toarray()
        return np.ascontiguousarray(X, dtype=self._dtype)

    def _forward(self, X):
        """Network outputs (logits) for already-validated X."""
        X = self._as_array(X)
        return np.asarray(self._step.predict(X))

    # ------------------------------------------------------------------ training
    def _fit(self, X, y, incremental):
        hidden = self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "_step") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        n_samples, n_features = X.shape
        if first_pass:
            self._dtype = _resolve_dtype(self.dtype, X.dtype)
        X = self._as_array(X)
        self._random_state = rs = check_random_state(self.random_state)

        if self.batch_size == "auto":
            requested = 200
        else:
            requested = int(self.batch_size)

        if first_pass:
            # partial_fit keeps the requested batch size for the later calls
            # (a call with fewer samples makes one smaller minibatch);
            # fit works on one known dataset and needs no bigger workspace.
            bs = requested if incremental else min(requested, n_samples)
            seed = int(rs.randint(np.iinfo(np.int32).max))
            self._make_step(hidden, n_features, self._n_outputs(), max(bs, 1), seed)
            self.n_outputs_ = self._n_outputs()
            self.n_layers_ = len(hidden) + 2
            self.out_activation_ = self._out_activation()
            self.t_ = 0
            self.n_iter_ = 0
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.validation_scores_ = None
                self.best_validation_score_ = None
                self.best_loss_ = np.inf
        elif not incremental:
            # warm start: same weights, fresh optimizer state (as scikit-learn)
            if list(self._arch["hidden"]) != hidden or self._arch["activation"] != self.activation:
                raise ValueError(
                    "warm_start=True needs the same hidden_layer_sizes and activation as the "
                    f"previous fit (was {tuple(self._arch['hidden'])}, {self._arch['activation']!r})"
                )
            old = {k: np.array(v) for k, v in self._step.params.items()}
            seed = int(rs.randint(np.iinfo(np.int32).max))
            self._make_step(hidden, n_features, self.n_outputs_,
                            min(requested, n_samples), seed)
            for k, v in old.items():
                self._step.params[k][...] = v
            self._no_improvement_count = 0
            self.n_iter_ = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf

        if self.batch_size != "auto" and self.batch_size > n_samples and not incremental:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                          "It is going to be clipped")

        if self.early_stopping:
            stratify = Y if (self._is_classifier_single_label()) else None
            X_tr, X_val, Y_tr, Y_val = train_test_split(
                X, Y, random_state=rs, test_size=self.validation_fraction, stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            X_tr, Y_tr = np.ascontiguousarray(X_tr), np.ascontiguousarray(Y_tr)
            X_val = np.ascontiguousarray(X_val)
        else:
            X_tr, Y_tr, X_val, Y_val = X, Y, None, None

        self._run_epochs(X_tr, Y_tr, X_val, Y_val, rs, incremental)
        return self

    def _run_epochs(self, X, Y, X_val, Y_val, rs, incremental):
        step = self._step
        n = X.shape[0]
        bs = min(self._arch["batch_size"], n)
        sizes = _batch_sizes(n, bs)
        best_params = None
        max_iter = 1 if incremental else self.max_iter
        stopped = False
        self.n_iter_ = 0  # epochs of this call, as scikit-learn counts them
        try:
            for _ in range(max_iter):
                seed = int(rs.randint(np.iinfo(np.int32).max))
                try:
                    losses = np.asarray(step.fit(X, Y, epochs=1, shuffle=bool(self.shuffle),
                                                 seed=seed), dtype=np.float64)
                except FloatingPointError as e:
                    raise ValueError(
                        f"training diverged at iteration {self.n_iter_ + 1}: {e}. Lower "
                        "learning_rate_init or scale the input features."
                    ) from None
                if losses.shape == sizes.shape:
                    loss = float(losses @ sizes) / n
                else:  # pragma: no cover - defensive: other minibatch schedules
                    loss = float(losses.mean())
                loss *= self._loss_scales(self._arch["n_out"])[0]
                if self.alpha:
                    sq = sum(float(np.vdot(w, w)) for w in self.coefs_)
                    loss += 0.5 * float(self.alpha) * sq / bs
                self.n_iter_ += 1
                self.t_ += n
                self.loss_ = loss
                self.loss_curve_.append(loss)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")

                if self.early_stopping:
                    score = self._val_score(X_val, Y_val)
                    self.validation_scores_.append(score)
                    if self.verbose:
                        print(f"Validation score: {score:f}")
                    if score < self.best_validation_score_ + self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if score > self.best_validation_score_:
                        self.best_validation_score_ = score
                        best_params = {k: np.array(v) for k, v in step.params.items()}
                else:
                    if loss > self.best_loss_ - self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if loss < self.best_loss_:
                        self.best_loss_ = loss

                if self._no_improvement_count > self.n_iter_no_change:
                    if self.verbose:
                        what = "Validation score" if self.early_stopping else "Training loss"
                        print(f"{what} did not improve more than tol={self.tol:f} for "
                              f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                    stopped = True
                    break
            if not incremental and not stopped:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                    "the optimization hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if self.early_stopping and best_params is not None:
            for k, v in best_params.items():
                step.params[k][...] = v

    def fit(self, X, y):
        """Fit the model to ``X`` and ``y``, one fused native call per epoch.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data (sparse input is densified).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classifier) or targets (regressor).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, incremental=False)

    def _validate_X_predict(self, X):
        check_is_fitted(self)
        return _validate_data(self, X, accept_sparse=["csr", "csc"],
                              dtype=(np.float64, np.float32), reset=False)

    def save(self, path):
        """Write the fitted model as a self-contained, pickle-free bundle.

        The file (see :mod:`fastbp.bundle`) holds the weights and
        architecture (a :func:`fastbp.load` checkpoint), ``classes_``, the
        feature names (when fitted on a DataFrame), the estimator's class
        and parameters and training metadata.  Load it with
        :func:`fastbp.load_model`, whose ``predict``/``predict_proba``/
        ``score`` give this estimator's results; ``fastbp predict --model
        path`` uses it from the command line.

        Parameters
        ----------
        path : str or os.PathLike
            Destination (written atomically; no suffix is added).
        """
        check_is_fitted(self)
        from .bundle import save_estimator
        save_estimator(self, path)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by a fused fastbp step.

    Softmax cross-entropy for single-label problems (binary and multiclass),
    per-label sigmoid with binary cross-entropy for multilabel indicator
    targets.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default (100,)
        Widths of the hidden layers.
    activation : {'relu', 'logistic', 'tanh', 'identity', ...}, default 'relu'
        Hidden-layer activation: scikit-learn's names (fastbp ``ReLU``,
        ``Sigmoid``, ``Tanh``, none), or the name of any other activation of
        fastbp's registry (e.g. ``'leaky_relu'``, with its default parameters).
    solver : {'adam', 'sgd'}, default 'adam'
    alpha : float, default 1e-4
        L2 penalty; becomes ``weight_decay = alpha / batch_size``.
    batch_size : int or 'auto', default 'auto'
        Minibatch size; ``'auto'`` is ``min(200, n_samples)``.
    learning_rate_init : float, default 1e-3
        Constant learning rate.
    max_iter : int, default 200
        Maximum number of epochs.
    shuffle : bool, default True
        Shuffle the samples every epoch.
    random_state : int, RandomState instance or None, default None
        Seeds the initial weights, the shuffles and the validation split.
    tol : float, default 1e-4
        Improvement below which an epoch counts as no improvement.
    verbose : bool, default False
        Print the loss after every epoch.
    warm_start : bool, default False
        Start ``fit`` from the weights of the previous fit.
    momentum : float, default 0.9
        SGD momentum, in [0, 1).
    nesterovs_momentum : bool, default True
        Nesterov momentum for SGD.
    early_stopping : bool, default False
        Stop when the validation accuracy stops improving; the best weights
        are restored.
    validation_fraction : float, default 0.1
        Share of the training data held out for early stopping.
    beta_1, beta_2 : float, default 0.9, 0.999
        Adam's decay rates, in [0, 1).
    epsilon : float, default 1e-8
        Adam's epsilon.
    n_iter_no_change : int, default 10
        Epochs without improvement before stopping.
    dtype : {None, 'float32', 'float64'}, default None
        Precision of the computation; None: float32 if X is float32, else float64.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    n_iter_ : int
        Epochs run by the last call to ``fit`` (1 after ``partial_fit``).
    t_ : int
        Training samples seen.
    loss_ : float
        Loss of the last epoch (mean over samples, plus the L2 term).
    loss_curve_ : list of float
        Loss per epoch.
    best_loss_ : float or None
        Lowest loss seen (None with early stopping).
    validation_scores_ : list of float or None
        Validation accuracy per epoch (early stopping only).
    best_validation_score_ : float or None
    coefs_, intercepts_ : list of ndarray
        The weights (live buffers of the step).
    n_layers_, n_outputs_, out_activation_ :
        Network size and output function (``'softmax'`` or ``'logistic'``).
    """

    _fastbp_loss = "softmax_cross_entropy"

    def _loss_scales(self, n_out):
        # multilabel: scikit-learn sums the binary log-losses over the labels,
        # fastbp's bce_with_logits averages them
        return (float(n_out), float(n_out)) if self._multilabel else (1.0, 1.0)

    def _n_outputs(self):
        # one unit per class (two for a binary problem, softmax over both)
        return len(self.classes_)

    def _out_activation(self):
        return "logistic" if self._multilabel else "softmax"

    def _is_classifier_single_label(self):
        return not self._multilabel

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start and not incremental:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the "
                        f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. "
                                 f"`self.classes_` has {self.classes_}. 'y' has {classes}.")
        self._multilabel = self._label_binarizer.y_type_.startswith("multilabel")
        if not self._multilabel and len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes to train; y has only "
                             f"1 class: {self.classes_[0]!r}")
        if self._multilabel:
            self._fastbp_loss = "bce_with_logits"
            dt = _resolve_dtype(self.dtype, X.dtype) if reset else self._dtype
            Y = np.ascontiguousarray(self._label_binarizer.transform(y), dtype=dt)
        else:
            self._fastbp_loss = "softmax_cross_entropy"
            if y.ndim != 1:
                raise ValueError(f"y must be 1-D class labels or a multilabel indicator matrix, "
                                 f"got shape {y.shape}")
            Y = np.searchsorted(self.classes_, y).astype(np.int64)
        return X, Y

    def _val_score(self, X_val, Y_val):
        proba = self._proba_from_logits(self._forward(X_val))
        if self._multilabel:
            return accuracy_score(Y_val.astype(bool), proba > 0.5)
        return accuracy_score(Y_val, np.argmax(proba, axis=1))

    def partial_fit(self, X, y, classes=None):
        """Update the model with one epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        classes : array-like of shape (n_classes,), default None
            All classes of all calls; required on the first call (not for
            multilabel targets), may be omitted later.

        Returns
        -------
        self : object
        """
        first = not hasattr(self, "classes_")
        if first and classes is None and not type_of_target(y).startswith("multilabel"):
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if not first and classes is not None:
            if not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call "
                                 f"to partial_fit, was: {self.classes_!r}")
        if first:
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
            self.classes_ = self._label_binarizer.classes_
        try:
            return self._fit(X, y, incremental=True)
        except BaseException:
            if first:  # leave the estimator unfitted, not half-initialised
                for attr in ("classes_", "_label_binarizer"):
                    self.__dict__.pop(attr, None)
            raise

    def _proba_from_logits(self, S):
        S = np.asarray(S, dtype=np.float64)
        if self._multilabel:
            from scipy.special import expit
            return expit(S)
        S = S - S.max(axis=1, keepdims=True)
        np.exp(S, out=S)
        S /= S.sum(axis=1, keepdims=True)
        return S

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Softmax of the network outputs (per-label sigmoid for multilabel
            targets), columns in the order of ``classes_``.
        """
        X = self._validate_X_predict(X)
        return self._proba_from_logits(self._forward(X)).astype(self._dtype, copy=False)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`, shape (n_samples, n_classes)."""
        p = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(p, out=p)

    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_labels)
            Labels from ``classes_`` (an indicator matrix for multilabel).
        """
        proba = self.predict_proba(X)
        if self._multilabel:
            return self._label_binarizer.inverse_transform(proba)
        return self.classes_[np.argmax(proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by a fused fastbp step.

    Minimises the squared error (``loss_curve_`` reports half the mean
    squared error, as scikit-learn does; the learning rate is rescaled so
    that the same hyper-parameters take the same steps).  Parameters and
    attributes as :class:`MLPClassifier`, except that the output is linear
    (``out_activation_ = 'identity'``), ``validation_scores_`` hold R^2,
    and there is no ``classes_``.
    """

    _fastbp_loss = "mse"

    def _loss_scales(self, n_out):
        # scikit-learn: loss = mean((y - p)^2) / 2 over all elements, but its
        # gradient is (p - y) / n_samples, i.e. n_out / 2 times fastbp's
        # 2 (p - y) / (n_samples n_out)
        return 0.5, n_out / 2.0

    def _n_outputs(self):
        return self._n_targets

    def _out_activation(self):
        return "identity"

    def _is_classifier_single_label(self):
        return False

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        k = 1 if y.ndim == 1 else y.shape[1]
        if reset:
            self._n_targets = k
        elif k != self.n_outputs_:
            raise ValueError(f"y has {k} targets, but {type(self).__name__} was fitted with "
                             f"{self.n_outputs_}")
        dt = _resolve_dtype(self.dtype, X.dtype) if reset else self._dtype
        Y = np.ascontiguousarray(y.reshape(y.shape[0], -1), dtype=dt)
        return X, Y

    def _val_score(self, X_val, Y_val):
        return r2_score(Y_val, self._forward(X_val))

    def partial_fit(self, X, y):
        """Update the model with one epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)

        Returns
        -------
        self : object
        """
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predicted targets.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_targets)
            In the estimator's dtype; 1-D when it was fitted on a 1-D ``y``.
        """
        X = self._validate_X_predict(X)
        out = self._forward(X)
        if out.shape[1] == 1:
            return out.ravel()
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
