"""The machinery :class:`fastbp.estimator.MLPClassifier` and :class:`~fastbp.estimator.MLPRegressor`
share: the step (built by :func:`fastbp.builders.mlp` and :func:`fastbp.compile`), the
epochs, pickling and saving (:class:`_BaseMLP`).  The parameter checks are
:mod:`fastbp._estimator_params`, the all-or-nothing guard of ``fit``/``partial_fit``
:mod:`fastbp._estimator_state`, the weighted and L-BFGS training paths
:mod:`fastbp._estimator_fit`.

Imported by :mod:`fastbp.estimator` only; needs scikit-learn.
"""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state, shuffle as sk_shuffle
    from sklearn.utils.validation import check_is_fitted
except ImportError as _e:  # pragma: no cover - exercised only without sklearn
    raise ImportError(
        "fastbp.MLPClassifier and fastbp.MLPRegressor need scikit-learn, which is not "
        "installed: pip install -e '.[examples]' in the fastbp clone"
    ) from _e

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    _sk_validate_data = None

from .builders import mlp
from .bundle import saved_precision
from .factories import compile as compile_step, load
from .optimizers import SGD, Adam
from . import _executor as ex, _isa
from ._estimator_fit import (batch_sizes, check_split_weights, fit_batch_size, fit_lbfgs, fit_weights, ordered_epoch,
                             set_sgd_rate as _set_sgd_rate, sklearn_log_loss, validation_stratify, weighted_epoch)
from ._estimator_attrs import _LiveList, optimizer_view
from ._estimator_rows import as_array, as_rows, predict_rows, unwrap
from ._estimator_params import (check_params, check_same_model, is_int as _is_int, peek_seed,
                                resolve_dtype as _resolve_dtype)
from ._estimator_state import (deferring_warnings, issue_deferred, restore, reuse_for_warm_start, snapshot,
                               warn_after_fit)

__all__ = ["_BaseMLP"]


def _validate_data(est, X, y="no_validation", *, reset=True, **kw):
    if _sk_validate_data is not None:
        return _sk_validate_data(est, X, y, reset=reset, **kw)
    return est._validate_data(X, y, reset=reset, **kw)  # pragma: no cover


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
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
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
        max_fun=15000,
        dtype="float32",
        precision="full",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
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
        self.max_fun = max_fun
        self.dtype = dtype
        self.precision = precision

    # ------------------------------------------------------------------ params
    def _check_params(self):
        """Check every hyper-parameter (:func:`fastbp._estimator_params.check_params`);
        return the hidden layer sizes."""
        return check_params(self)

    # ------------------------------------------------------------------ steps
    _optimizer = property(optimizer_view)   # scikit-learn's private optimizer, as far as it is read
    def _new_optimizer(self, batch_size, n_out):
        # alpha * W / batch_size is scikit-learn's L2 gradient; weight_decay adds weight_decay * p
        wd = self._weight_decay(batch_size, n_out)
        lr = float(self.learning_rate_init)
        eps = float(self.epsilon)
        # scikit-learn's gradient is s times fastbp's (see _loss_scales):
        # rescale so that the same hyper-parameters take the same steps.
        # SGD: lr * s * (g + wd / s * p); Adam is invariant to the gradient's
        # scale except for epsilon.
        s = self._loss_scales(n_out)[1]
        if self.solver == "sgd":
            lr *= s
            m = float(self.momentum)
            return SGD(lr=lr, momentum=m, nesterov=bool(self.nesterovs_momentum) and m > 0, weight_decay=wd)
        return Adam(lr=lr, betas=(float(self.beta_1), float(self.beta_2)), eps=eps / s, weight_decay=wd)

    def _weight_decay(self, batch_size, n_out):
        """The optimizer's ``weight_decay`` of minibatches of ``batch_size`` rows: scikit-learn's
        L2 gradient ``alpha * W / batch_size`` on the step's scale (see :meth:`_loss_scales`)."""
        return float(self.alpha) / batch_size / self._loss_scales(n_out)[1]

    def _make_step(self, hidden, n_in, n_out, batch_size, seed, warm=False):
        """Compile a fresh step with a fresh optimizer; remember how, for pickling, and the
        settings the optimizer follows (:meth:`_opt_settings`).  ``warm``: a warm start, which
        keeps the step when nothing compiled into it changed (:func:`reuse_for_warm_start`)."""
        arch = {"hidden": list(hidden), "activation": self.activation, "n_in": int(n_in), "n_out": int(n_out),
                "loss": self._fastbp_loss, "batch_size": int(batch_size), "dtype": self._dtype.name,
                "seed": int(seed), "precision": self.precision, "optimizer": self._optimizer_params(batch_size, n_out)}
        if not (warm and reuse_for_warm_start(self._step, self._arch, arch)):
            old = {k: np.array(v) for k, v in self._step.params.items()} if warm else {}
            self._step = self._compile(arch)
            arch["step_precision"] = self._step.precision       # what "auto" resolved to: pickling rebuilds it
            self._arch = arch
            for k, v in old.items():
                self._step.params[k][...] = v
        # scikit-learn's _optimizer is made by fit and by the first partial_fit only: later calls
        # keep it and the settings it was made with (set_params(solver=...) in between is not read)
        self._optimizer_settings = self._current_opt_settings(self.solver)

    def _current_opt_settings(self, solver):
        return {"solver": solver, "learning_rate": self.learning_rate, "epsilon": float(self.epsilon),
                "learning_rate_init": float(self.learning_rate_init), "power_t": float(self.power_t)}

    def _opt_settings(self):
        """The settings of the step's optimizer (``solver``, and for 'sgd' ``learning_rate``,
        ``learning_rate_init``, ``power_t``) as they were when it was made (a step pickled by
        a fastbp that did not record them: its optimizer's type and the parameters)."""
        return (self.__dict__.get("_optimizer_settings")
                or self._current_opt_settings(self._arch["optimizer"]["type"]))

    def _optimizer_params(self, batch_size, n_out):
        opt = self._new_optimizer(batch_size, n_out)
        if opt.name == "sgd":
            return {"type": "sgd", "lr": opt.lr, "momentum": opt.momentum,
                    "nesterov": opt.nesterov, "weight_decay": opt.weight_decay}
        return {"type": "adam", "lr": opt.lr, "betas": tuple(opt.betas), "eps": opt.eps,
                "weight_decay": opt.weight_decay}

    @staticmethod
    def _compile(arch):
        o = dict(arch["optimizer"])
        kind = o.pop("type")
        # scikit-learn's alpha decays coefs_ only; its Adam adds epsilon before the bias correction
        opt = SGD(**o, decay_1d=False) if kind == "sgd" else Adam(**o, decay_1d=False, eps_hat=True)
        return compile_step(mlp([arch["n_in"], *arch["hidden"], arch["n_out"]], arch["activation"]),
                            loss=arch["loss"], optimizer=opt, batch_size=arch["batch_size"],
                            dtype=np.dtype(arch["dtype"]).type, seed=arch["seed"],
                            precision=arch.get("precision", "full"))

    def _init_weights(self, rs):
        """scikit-learn's initialisation rule (``BaseMultilayerPerceptron._init_coef``): weights
        and biases of each layer uniform in ``+-sqrt(factor / (fan_in + fan_out))``, factor 2
        for the logistic activation, 6 otherwise; drawn from ``rs`` layer by layer, weights
        then biases."""
        factor = 2.0 if self.activation in ("logistic", "sigmoid") else 6.0
        self._sgd_lr = float(self.learning_rate_init)
        for W, b in zip(self.coefs_, self.intercepts_):
            fan_in, fan_out = W.shape
            bound = np.sqrt(factor / (fan_in + fan_out))
            W[...] = rs.uniform(-bound, bound, (fan_in, fan_out))
            b[...] = rs.uniform(-bound, bound, fan_out)

    def _fit_lbfgs(self, X, Y, W=None):
        fit_lbfgs(self, X, Y, W)

    def _row_class_weights(self, Y, incremental):
        """Per-row class weights (the classifier's ``class_weight``); None: none."""
        return None

    def _sklearn_n_outputs(self):
        """The output units scikit-learn's MLP has for this problem (the classifier overrides it)."""
        return self._n_outputs()

    def _check_solver(self):
        """``partial_fit`` exists for the stochastic solvers only (scikit-learn's ``available_if``)."""
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} "
                                 f"is not stochastic.")
        return True

    def _weight_names(self):
        names = [k for k in self._step.params if k.endswith(".W")]
        return sorted(names, key=lambda k: int(k.split(".")[0]))

    @property
    def coefs_(self):
        """Weight matrices, one ``(fan_in, fan_out)`` array per layer: the live buffers, in
        a list that writes through (``est.coefs_[i] = A`` and ``est.coefs_ = [...]`` copy
        the values in, as assigning scikit-learn's list changes its model)."""
        check_is_fitted(self)
        return _LiveList("coefs_", [self._step.params[k] for k in self._weight_names()])

    @coefs_.setter
    def coefs_(self, values):
        check_is_fitted(self)
        self.coefs_[:] = values

    @property
    def intercepts_(self):
        """Bias vectors, one ``(fan_out,)`` array per layer: the live buffers, in a list
        that writes through (as :attr:`coefs_`)."""
        check_is_fitted(self)
        return _LiveList("intercepts_", [self._step.params[k[:-1] + "b"] for k in self._weight_names()])

    @intercepts_.setter
    def intercepts_(self, values):
        check_is_fitted(self)
        self.intercepts_[:] = values

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
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "step.npz")
                with open(path, "wb") as f:
                    f.write(blob)
                # the precision it trained at (bf16 products where this machine has them)
                trained = self._arch.get("step_precision", self._arch.get("precision"))  # (earlier pickles)
                self._step = load(path, precision=saved_precision(trained))

    # ------------------------------------------------------------------ data
    def _as_array(self, X):
        """Validated X as the step reads it (sparse X densified in chunks: fastbp._estimator_rows)."""
        return as_array(X, self._dtype)

    def _forward(self, X):
        """Network outputs (logits) for already-validated X."""
        return predict_rows(self._step, self._as_array(X))

    # ------------------------------------------------------------------ training
    def _fit(self, X, y, incremental, sample_weight=None, prepare=None):
        """``fit`` (``incremental=False``) or ``partial_fit``, all or nothing: a call that
        raises leaves the estimator exactly as it was, fitted or not
        (:mod:`fastbp._estimator_state`).  ``prepare``: called first, inside that guard."""
        saved = snapshot(self, in_place=(incremental or self.warm_start) and hasattr(self, "_step"))
        token, ok = deferring_warnings(), False     # its warnings: once it has succeeded
        try:
            if prepare is not None:
                prepare()
            result, ok = self._fit_guarded(X, y, incremental, sample_weight), True
        except BaseException:
            restore(self, saved)
            raise
        finally:
            issue_deferred(token, ok)
        return result

    def _record_fresh(self):
        """The records of a first stochastic fit (scikit-learn's ``_initialize``)."""
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self.__dict__.pop("_best_params", None)
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _fit_guarded(self, X, y, incremental, sample_weight):
        """The body of :meth:`_fit`: every check (parameters, input, sample weights, room for
        a validation set) before the step is built or trained."""
        hidden = self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "_step") or (not self.warm_start and not incremental)
        if not first_pass:
            check_same_model(self, hidden, incremental, "partial_fit" if incremental else "warm_start=True")
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        W = fit_weights(self, X, Y, sample_weight, incremental)
        early = self.early_stopping and self.solver != "lbfgs"
        stratify = validation_stratify(self, Y) if early else None
        n_samples, n_features = X.shape
        if first_pass or not incremental:       # a new fit, or a warm start (rebuilt below)
            self._dtype = _resolve_dtype(self.dtype, X.dtype)
        elif self.dtype is not None and _resolve_dtype(self.dtype, X.dtype) != self._dtype:
            raise ValueError(f"dtype={self.dtype!r}: partial_fit continues the fitted model in "
                             f"{self._dtype.name}; call fit (warm_start=True keeps the weights) to change it")
        X = self._as_array(X)
        self._random_state = rs = check_random_state(self.random_state)
        # an int random_state: early stopping's split as scikit-learn's (from its generator, fresh per fit)
        split_rs = np.random.RandomState(self.random_state) if _is_int(self.random_state) else rs

        if self.batch_size == "auto":
            requested = 200
        else:
            requested = int(self.batch_size)

        if first_pass:
            # scikit-learn's min(batch_size, n_samples), partial_fit's too: a later call
            # with more rows compiles the step again for its minibatch (fit_batch_size)
            bs = min(requested, n_samples)
            if self.solver == "lbfgs":
                bs = min(n_samples, 1024)      # lbfgs: full-batch, evaluated in chunks of this size
            self._make_step(hidden, n_features, self._n_outputs(), max(bs, 1), seed := peek_seed(rs))
            # scikit-learn's architecture: scikit-learn's own draws, the initialisation first, from a
            # fresh RandomState(random_state) for an int, else from the generator itself, then the
            # validation split and the shuffles; otherwise (a binary problem, where fastbp has two
            # softmax units and scikit-learn one logistic unit) from the step's seed
            same = self._n_outputs() == self._sklearn_n_outputs()
            init_rs = (np.random.RandomState(self.random_state) if _is_int(self.random_state) else rs) if same \
                else np.random.RandomState(seed)
            self._init_weights(init_rs)
            split_rs = init_rs if same else split_rs    # scikit-learn's split: after its initialisation
            self.n_outputs_ = self._n_outputs()
            self.n_layers_ = len(hidden) + 2
            self.out_activation_ = self._out_activation()
            self.t_ = 0
            self.n_iter_ = 0
            self._record_fresh()
        elif not incremental:
            # warm start: same weights, fresh optimizer state (as scikit-learn)
            self._make_step(hidden, n_features, self.n_outputs_, min(requested, n_samples), peek_seed(rs), warm=True)
            # a fresh optimizer, as scikit-learn (whose _no_improvement_count carries over)
            self._sgd_lr = float(self.learning_rate_init)
            self.n_iter_ = 0
            if self.early_stopping and not isinstance(getattr(self, "validation_scores_", None), list):
                # the previous fit had no early stopping: the validation record starts here
                # (otherwise it goes on, as scikit-learn's: scores appended, the best score
                # and its weights kept)
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.__dict__.pop("_best_params", None)

        if self.solver == "lbfgs":      # (full batch: batch_size unused, no warning, as scikit-learn)
            self._fit_lbfgs(X, Y, W)
            return self
        if not hasattr(self, "loss_curve_"):    # the previous fit was solver='lbfgs' (partial_fit, warm start)
            self._record_fresh()
        W_tr = W_val = None
        if early:
            if W is None:
                X_tr, X_val, Y_tr, Y_val = train_test_split(
                    unwrap(X), Y, random_state=split_rs, test_size=self.validation_fraction, stratify=stratify)
            else:
                X_tr, X_val, Y_tr, Y_val, W_tr, W_val = train_test_split(
                    unwrap(X), Y, W, random_state=split_rs, test_size=self.validation_fraction, stratify=stratify)
            X_tr, Y_tr, X_val = as_rows(X_tr), np.ascontiguousarray(Y_tr), as_rows(X_val)
            if W is not None:
                check_split_weights(W_tr, W_val)
        else:
            X_tr, Y_tr, X_val, Y_val, W_tr = X, Y, None, None, W

        # scikit-learn's minibatch size, on every call: min(batch_size, the rows trained on)
        n_train = X_tr.shape[0]
        if self.batch_size != "auto" and self.batch_size > n_train:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                          "It is going to be clipped")
        bs = min(requested, n_train)
        fit_batch_size(self, bs, n_train)
        self._run_epochs(X_tr, Y_tr, X_val, Y_val, split_rs, incremental, bs, W_tr, W_val)   # shuffles: sklearn's
        return self

    def _run_epochs(self, X, Y, X_val, Y_val, rs, incremental, bs, W=None, W_val=None):
        """The epochs of a stochastic fit (one for ``partial_fit``) in minibatches of ``bs``
        rows, with scikit-learn's weight decay ``alpha / n_b`` of this call's ``alpha``, ``n_b``
        the rows of each minibatch (``hyper[H_WD_ROWS]``)."""
        step = self._step
        hyper = step.hyper
        wd0 = float(hyper[_isa.H_WD])
        # the update sums the weights' squares for the reported L2 term: its kernel (once per process)
        ex.load_kernels(step.dtype, (ex.K_SUM_SQ,), step.threads)
        # alpha is read on every call, as scikit-learn reads it; the step's own values (what
        # its checkpoint records) are put back after the call
        hyper[_isa.H_WD], hyper[_isa.H_WD_ROWS] = self._weight_decay(1, self._arch["n_out"]), 1.0
        try:
            with sklearn_log_loss(self):        # the loss value: probabilities clipped, as scikit-learn's
                self._epochs(step, X, Y, X_val, Y_val, rs, incremental, bs, W, W_val)
        finally:
            hyper[_isa.H_WD], hyper[_isa.H_WD_ROWS] = wd0, 0.0

    def _epochs(self, step, X, Y, X_val, Y_val, rs, incremental, bs, W, W_val):
        n = X.shape[0]
        sizes, order = batch_sizes(n, bs), np.arange(n)
        opt = self._opt_settings()
        sgd = opt["solver"] == "sgd"
        # the best weights so far: a warm start's previous fit's, as scikit-learn's _best_coefs
        best_params = self.__dict__.get("_best_params") if self.early_stopping else None
        max_iter = 1 if incremental else self.max_iter
        stopped = False
        self.n_iter_ = 0  # epochs of this call, as scikit-learn counts them
        try:
            for _ in range(max_iter):
                if sgd:
                    # scikit-learn's SGD learning rate (learning_rate, power_t), on the step's scale
                    lr = getattr(self, "_sgd_lr", opt["learning_rate_init"])
                    _set_sgd_rate(step, lr * self._loss_scales(self._arch["n_out"])[1])
                # scikit-learn's order: its shuffle of the last epoch's order, drawn from its generator
                order = sk_shuffle(order, random_state=rs) if self.shuffle else order
                step.hyper[_isa.H_WD_SQ] = 0.0      # each update adds its ||W||^2 (with alpha)
                try:
                    if W is not None:
                        losses, sizes, l2 = weighted_epoch(step, X, Y, W, bs, order, self.alpha,
                                                           self._loss_scales(self._arch["n_out"])[1],
                                                           lambda: sum(float(np.vdot(w, w)) for w in self.coefs_))
                    else:
                        losses = ordered_epoch(step, X, Y, order if self.shuffle else None, bs)
                except FloatingPointError as e:
                    raise ValueError(
                        f"training diverged at iteration {self.n_iter_ + 1}: {e}. The estimator is "
                        "left as it was before this call. Lower learning_rate_init or scale the input features."
                    ) from None
                # scikit-learn's epoch loss: each minibatch's loss weighed by its rows; the
                # minibatches skipped for their zero weights (scikit-learn's would divide by
                # 0) count for nothing, their rows neither
                rows = float(sizes.sum()) or 1.0
                if losses.shape == sizes.shape:
                    loss = float(losses @ sizes) / rows
                else:  # pragma: no cover - defensive: other minibatch schedules
                    loss = float(losses.mean())
                loss *= self._loss_scales(self._arch["n_out"])[0]
                if self.alpha:
                    # scikit-learn adds alpha ||W||^2 / (2 n_b) to each minibatch's loss, with the
                    # minibatch's weights before its update, and weighs it by n_b / n: the sum of
                    # ||W||^2 over the epoch's updates (hyper[H_WD_SQ]) / n
                    sq = l2 if W is not None else float(step.hyper[_isa.H_WD_SQ])
                    loss += 0.5 * float(self.alpha) * sq / rows
                self.n_iter_ += 1
                self.t_ += n
                self.loss_ = loss
                self.loss_curve_.append(loss)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")

                if self.early_stopping:
                    score = self._val_score(X_val, Y_val, W_val)
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
                    if self.best_loss_ is None:
                        # fitted with early_stopping=True, now trained on without it (scikit-learn
                        # raises TypeError here): the training loss starts its own record
                        self.best_loss_ = np.inf
                    if loss > self.best_loss_ - self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if loss < self.best_loss_:
                        self.best_loss_ = loss

                if sgd and opt["learning_rate"] == "invscaling":
                    # SGDOptimizer.iteration_ends: eta = eta0 / (t + 1) ** power_t, t = samples seen
                    self._sgd_lr = opt["learning_rate_init"] / (self.t_ + 1) ** opt["power_t"]
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                    # SGDOptimizer.trigger_stopping: 'adaptive' divides the rate by 5 instead of
                    # stopping, until it is 1e-6 or less
                    adaptive = sgd and opt["learning_rate"] == "adaptive"
                    if adaptive and self._sgd_lr > 1e-6:
                        self._sgd_lr /= 5.0
                        self._no_improvement_count = 0
                        if self.verbose:
                            print(f"{msg} Setting learning rate to {self._sgd_lr:f}")
                        continue
                    if self.verbose:
                        print(msg + (" Learning rate too small. Stopping." if adaptive else " Stopping."))
                    stopped = True
                    break
            if not incremental and not stopped:
                warn_after_fit(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                    "the optimization hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:
            warn_after_fit("Training interrupted by user.")
        if self.early_stopping and best_params is not None:
            self._best_params = best_params
            for k, v in best_params.items():
                step.params[k][...] = v

    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X`` and ``y``, one fused native call per epoch.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data (sparse input is densified a chunk of rows at a time).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classifier) or targets (regressor).
        sample_weight : array-like of shape (n_samples,), default None
            Weights of the samples, as scikit-learn's MLP: each minibatch's loss
            is ``sum_i w_i l_i / sum_i w_i`` (plus ``alpha ||W||^2 / (2 sum_i w_i)``),
            computed inside the fused step (one call per minibatch).  Finite and
            >= 0 (checked before any training), with a positive sum.

        Returns
        -------
        self : object
            The fitted estimator.

        Raises
        ------
        ValueError
            A bad parameter or input, naming it; the estimator is then left as it
            was before the call (fitted or not), as after any failed ``fit`` or
            ``partial_fit``.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def _validate_X_predict(self, X):
        check_is_fitted(self)
        check_same_model(self, call="predict")
        if getattr(getattr(X, "dtype", None), "kind", "") in ("U", "S"):     # scikit-learn's dtype="numeric"
            raise ValueError("dtype='numeric' is not compatible with arrays of bytes/strings.Convert your data to numeric values explicitly instead.")
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
