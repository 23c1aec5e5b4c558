"""scikit-learn estimators backed by a fused fastbp training step.

:class:`MLPClassifier` and :class:`MLPRegressor` follow the conventions of
:mod:`sklearn.neural_network` (same parameter names where the meaning is the
same, ``fit``/``partial_fit``/``predict``/``score``, fitted attributes ending
in ``_``), but every epoch runs as **one** native call of a
:func:`fastbp.compile` step instead of a Python loop over minibatches.

scikit-learn is an optional dependency of fastbp (the ``examples`` extra); it
is imported by this module only.

Differences from scikit-learn's MLP, all deliberate:

* Computation runs in float32 by default (``dtype='float32'``; scikit-learn
  computes in X's dtype): ``dtype='float64'`` or ``dtype=None`` (X's dtype)
  choose otherwise.  ``predict_proba`` returns the compute dtype (the
  regressor's ``predict`` returns X's dtype, as scikit-learn's).
* ``y`` with a single class is a ValueError (scikit-learn's classifier fits it
  and always predicts that class).
* Negative ``sample_weight`` values are refused, before any training, naming
  the first negative row (scikit-learn accepts them).
* ``fit`` and ``partial_fit`` are all or nothing: a call that raises (bad
  input, a bad parameter, training that diverges) leaves the estimator exactly
  as it was before the call, fitted or not, its predictions unchanged.
* ``early_stopping=True``: the validation split of a classifier is stratified
  by class for every single-label problem where it can be (scikit-learn
  stratifies binary problems only), a plain random split otherwise (a class
  with one sample, or fewer validation or training samples than classes).  A
  validation set of fewer than 2 samples (``validation_fraction=0`` included)
  is a ValueError naming ``validation_fraction``, as in scikit-learn.  With an
  int or ``RandomState`` ``random_state`` the split's draws are scikit-learn's
  (its generator after the initialisation): a regressor or a multilabel
  classifier holds out the rows scikit-learn's does.
* The classifier uses a softmax output for every single-label problem
  (two units for a binary problem), a sigmoid output per label for
  multilabel problems.
* ``alpha`` is scikit-learn's penalty gradient ``alpha * W / n_b`` on each
  minibatch of ``n_b`` rows (the step's ``hyper[H_WD_ROWS]``; read on every
  call, ``partial_fit`` included), on the weights only (``coefs_``, not
  ``intercepts_``: the optimizer's ``decay_1d=False``), as scikit-learn.
  The reported loss adds scikit-learn's penalty, ``alpha ||W||^2 / (2 n)``
  summed over the epoch's minibatches with each one's weights before its
  update (the fused update adds them up: the step's ``hyper[H_WD_SQ]``).
* ``shuffle=True`` visits the rows in scikit-learn's order: each epoch's
  order is its shuffle of the last one, drawn from the same generator (after
  the initialisation and the validation split).  Where the initialisation and
  the split are scikit-learn's too (an int or ``RandomState`` ``random_state``,
  no early stopping or a regressor's or multilabel classifier's), the fits agree to rounding (float64, every default: on
  digits the probabilities after 200 epochs equal scikit-learn's to 2e-15,
  on diabetes with early stopping the regressor's predictions to 1e-15).
* With ``solver='sgd'`` and momentum, the step keeps PyTorch's velocity
  (``u = m u + g``, step ``lr * u``), which takes scikit-learn's steps
  (``v = m v - lr g``) while ``u = -v / lr``; when ``invscaling`` or ``adaptive``
  changes the rate, ``u`` is rescaled to keep that so
  (:func:`fastbp._estimator_fit.set_sgd_rate`).  On digits (float64, momentum 0.9,
  30 epochs) the loss curves of both schedules equal scikit-learn's to 2e-16.
* With ``solver='adam'``, ``epsilon`` is added where scikit-learn adds it, to
  ``sqrt(v)`` before the bias correction (the optimizer's ``eps_hat=True``;
  PyTorch adds it after).  On iris with every default (``alpha=1e-4``),
  float64, the probabilities after 200 epochs equal scikit-learn's to 4e-16.
* ``warm_start=True``, ``early_stopping=True``: a ``fit`` never beating the best
  score ends with the previous best weights (scikit-learn's: its last epoch's,
  its ``coefs_`` and ``_best_coefs`` then one list moved by the warm fit).
* A warm-start ``fit`` after ``set_params`` changed ``hidden_layer_sizes``,
  ``activation`` or ``precision`` (``partial_fit``: the last two) is a
  ValueError naming it; scikit-learn goes on with the fitted architecture.

As in scikit-learn: the weights and biases are initialised uniform in
``+-sqrt(6 / (fan_in + fan_out))`` (``sqrt(2 / ...)`` for the logistic activation)
from ``random_state``; ``learning_rate`` ('constant', 'invscaling':
``learning_rate_init / (t_ + 1) ** power_t`` after every epoch, ``t_`` the samples
seen; 'adaptive': the rate is divided by 5 instead of stopping each time
``n_iter_no_change`` epochs fail to improve by ``tol``, until it is at most 1e-6)
applies to ``solver='sgd'``; the optimizer is made by ``fit`` and by the first
``partial_fit``, and later ``partial_fit`` calls continue it with the ``solver``,
``learning_rate``, ``learning_rate_init`` ... it was made with (a ``set_params`` in
between changes them for the next ``fit``); ``warm_start=True`` with
``early_stopping=True`` continues the validation record (``validation_scores_``
appended to, ``best_validation_score_`` kept; for the weights see above); ``solver='lbfgs'`` runs
``scipy.optimize.minimize(method='L-BFGS-B')`` on the full-batch loss and gradient
computed by the compiled step (``max_iter``, ``max_fun``, ``tol`` as in scikit-learn;
no ``partial_fit``).
"""
from __future__ import annotations

import numpy as np

# first: it raises the ImportError that says how to install scikit-learn
from ._estimator_base import _BaseMLP, _resolve_dtype, _validate_data
from ._estimator_params import InvalidParameterError
from .bundle import regression_predictions

from sklearn.base import ClassifierMixin, RegressorMixin  # noqa: E402
from sklearn.metrics import accuracy_score, r2_score  # noqa: E402
from sklearn.preprocessing import LabelBinarizer  # noqa: E402
from sklearn.utils.metaestimators import available_if  # noqa: E402
from sklearn.utils.class_weight import compute_class_weight  # noqa: E402
from sklearn.utils.multiclass import type_of_target, unique_labels  # noqa: E402
from sklearn.utils.validation import column_or_1d  # noqa: E402

__all__ = ["MLPClassifier", "MLPRegressor"]

#: MLPRegressor's ``loss`` -> the fastbp loss the step trains
_REG_LOSS = {"squared_error": "mse", "poisson": "poisson"}


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by a fused fastbp step.

    Softmax cross-entropy for single-label problems (binary and multiclass),
    per-label sigmoid with binary cross-entropy for multilabel indicator
    targets.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default (100,)
        Widths of the hidden layers.
    activation : {'relu', 'logistic', 'tanh', 'identity'} or a fastbp activation name, default 'relu'
        Hidden-layer activation (fastbp ``ReLU``, ``Sigmoid``, ``Tanh``, none); any
        name :func:`fastbp.builders.activation_layer` knows (``'sigmoid'``, ``'none'`` ...).
    solver : {'adam', 'sgd', 'lbfgs'}, default 'adam'
        'lbfgs': scipy's L-BFGS-B on the full-batch loss (``max_iter`` iterations,
        ``max_fun`` loss evaluations, ``tol`` on the projected gradient).
    alpha : float, default 1e-4
        L2 penalty; becomes ``weight_decay = alpha / batch_size`` (read on every call).
    batch_size : int or 'auto', default 'auto'
        Minibatch size; ``'auto'`` is ``min(200, n_samples)``; at most the rows
        trained on in each call (``fit``, ``partial_fit``), as in scikit-learn.
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default 'constant'
        scikit-learn's SGD learning-rate schedule (``solver='sgd'`` only; see
        the module docstring).
    learning_rate_init : float, default 1e-3
        The (initial) learning rate.
    power_t : float, default 0.5
        Exponent of 'invscaling'.
    max_iter : int, default 200
        Maximum number of epochs.
    shuffle : bool, default True
        Shuffle the samples every epoch.
    random_state : int, RandomState instance or None, default None
        Seeds the initial weights, the shuffles and the validation split (an int
        in [0, 2**32 - 1], as numpy's RandomState takes).
    tol : float, default 1e-4
        Improvement below which an epoch counts as no improvement.
    verbose : bool or int >= 0, default False
        Print the loss after every epoch (any true value).
    warm_start : bool, default False
        Start ``fit`` from the weights of the previous fit.
    momentum : float, default 0.9
        SGD momentum, in [0, 1] as scikit-learn's.
    nesterovs_momentum : bool, default True
        Nesterov momentum for SGD.
    early_stopping : bool, default False
        Stop when the validation accuracy stops improving; the best weights
        are restored (with ``warm_start``: the best of all the fits since the
        validation record started, as scikit-learn).
    validation_fraction : float in [0, 1), default 0.1
        Share of the training data held out for early stopping
        (``ceil(validation_fraction * n_samples)`` rows; fewer than 2 is a
        ValueError; unused without early stopping).
    beta_1, beta_2 : float, default 0.9, 0.999
        Adam's decay rates, in [0, 1).
    epsilon : float, default 1e-8
        Adam's epsilon.
    n_iter_no_change : int or np.inf, default 10
        Epochs without improvement before stopping (or, 'adaptive', before
        dividing the learning rate by 5); ``np.inf``: never.
    max_fun : int, default 15000
        'lbfgs' only: the most loss evaluations.
    class_weight : dict, 'balanced' or None, default None
        Weights of the classes, multiplying the samples' weights (scikit-learn's
        ``compute_class_weight``: ``'balanced'`` is ``n_samples / (n_classes *
        bincount(y))``; a dict maps a class to its weight, 1 for the others).
        Single-label targets only.  With ``early_stopping``, the validation
        rows are weighted alike: ``validation_scores_`` are class-weighted
        accuracies (balanced accuracy for ``'balanced'``), while :meth:`score`
        without ``sample_weight`` is the plain accuracy.
    dtype : {'float32', 'float64', None}, default 'float32'
        Precision of the computation; None: float32 if X is float32, else float64.
    precision : {'full', 'bf16', 'auto'}, default 'full'
        ``'bf16'``: the linear layers' matrix products on bfloat16 copies of
        their operands, accumulated in float32 (CPUs with AVX512-BF16 or AMX;
        ``pip install -e '.[bf16]'``); weights and everything else stay
        float32 (needs dtype float32).  ``'auto'``: bf16 where available.
        See :func:`fastbp.compile`.

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
    n_layers_, n_outputs_, out_activation_ : int, int, str
        Network size and output function (``'softmax'`` or ``'logistic'``).
    """

    _fastbp_loss = "softmax_cross_entropy"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 class_weight=None, dtype="float32", precision="full"):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
                         verbose=verbose, warm_start=warm_start, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, dtype=dtype,
                         precision=precision)
        self.class_weight = class_weight

    def _loss_scales(self, n_out):
        # multilabel: scikit-learn sums the binary log-losses over the labels,
        # fastbp's bce_with_logits averages them
        return (float(n_out), float(n_out)) if self._multilabel else (1.0, 1.0)

    def _n_outputs(self):
        # one unit per class (two for a binary problem, softmax over both), per label of a
        # multilabel problem (the label binarizer's: classes_ may be partial_fit's classes)
        return len(self._label_binarizer.classes_)

    def _out_activation(self):
        return "logistic" if self._multilabel else "softmax"

    def _sklearn_n_outputs(self):
        # scikit-learn: one logistic unit for a binary problem
        return 1 if (not self._multilabel and len(self.classes_) == 2) else self._n_outputs()

    def _is_classifier_single_label(self):
        return not self._multilabel

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        # checks first, then the new state (a failure after this is undone by _BaseMLP._fit)
        new = (not hasattr(self, "classes_")) or (not self.warm_start and not incremental)
        if new:
            lb = LabelBinarizer().fit(y)
        else:
            lb = self._label_binarizer
            classes = unique_labels(y)
            if self.warm_start and not incremental:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the "
                        f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. "
                                 f"`self.classes_` has {self.classes_}. 'y' has {classes}.")
        multilabel = lb.y_type_.startswith("multilabel")
        if not multilabel and len(lb.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes to train; y has only "
                             f"1 class: {lb.classes_[:1].tolist()[0]!r}")
        if not multilabel and y.ndim != 1:
            raise ValueError(f"y must be 1-D class labels or a multilabel indicator matrix, "
                             f"got shape {y.shape}")
        if multilabel:
            dt = _resolve_dtype(self.dtype, X.dtype) if reset else self._dtype
            Y = np.ascontiguousarray(lb.transform(y), dtype=dt)
        else:
            Y = np.searchsorted(lb.classes_, y).astype(np.int64)
        if new:     # otherwise classes_ stays (partial_fit's classes, as scikit-learn's)
            self.classes_ = lb.classes_
        self._label_binarizer, self._multilabel = lb, multilabel
        self._fastbp_loss = "bce_with_logits" if multilabel else "softmax_cross_entropy"
        return X, Y

    def _val_score(self, X_val, Y_val, sample_weight=None):
        proba = self._proba_from_logits(self._forward(X_val))
        if self._multilabel:
            return accuracy_score(Y_val.astype(bool), proba > 0.5, sample_weight=sample_weight)
        return accuracy_score(Y_val, np.argmax(proba, axis=1), sample_weight=sample_weight)

    def _row_class_weights(self, Y, incremental):
        """``class_weight`` as per-row weights (scikit-learn's ``compute_class_weight``)."""
        cw = self.class_weight
        if cw is None:
            return None
        if self._multilabel:
            raise ValueError("class_weight is not supported for multilabel targets")
        if isinstance(cw, str) and cw == "balanced" and incremental:
            raise ValueError("class_weight 'balanced' is not supported for partial_fit: it needs "
                             "the class frequencies of all the data; pass them as a dict instead")
        if not (isinstance(cw, dict) or (isinstance(cw, str) and cw == "balanced")):
            raise ValueError(f"class_weight must be 'balanced', a dict or None, got {cw!r}")
        if isinstance(cw, dict):
            classes = self.classes_.tolist()
            unknown = [k for k in cw if k not in classes]
            if unknown:
                raise ValueError(f"class_weight has classes {unknown!r} that are not in y's classes {classes!r}")
            per_class = np.array([cw.get(c, 1.0) for c in classes])
            if per_class.dtype.kind not in "iuf" or not np.all(np.isfinite(per_class)) or np.any(per_class < 0):
                raise ValueError(f"class_weight values must be finite numbers >= 0, got {cw!r}")
            per_class = per_class.astype(np.float64)
        else:       # 'balanced': n_samples / (n_classes * bincount(y)) over the classes present
            present = np.unique(Y)
            per_class = np.ones(len(self.classes_))
            per_class[present] = compute_class_weight("balanced", classes=self.classes_[present],
                                                      y=self.classes_[Y])
        return per_class[Y]

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with one epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        sample_weight : array-like of shape (n_samples,), default None
            As in :meth:`fit` (``class_weight='balanced'`` is refused here, as
            scikit-learn's ``SGDClassifier.partial_fit`` does: it needs all the data).
        classes : array-like of shape (n_classes,) or (n_classes, 1), default None
            All classes of all calls; required on the first call (not for
            multilabel targets), may be omitted later; a column is read as its labels,
            as scikit-learn does, any other 2-D shape is a ValueError.  They become
            ``classes_`` (sorted), as in scikit-learn; ``y``'s classes must be
            among them (a multilabel ``y``'s classes are its column indices
            ``0 .. n_labels - 1``; it has one output per column whatever
            ``classes`` holds).

        Returns
        -------
        self : object
        """
        return self._fit(X, y, incremental=True, sample_weight=sample_weight,
                         prepare=lambda: self._partial_fit_classes(y, classes))

    def _partial_fit_classes(self, y, classes):
        """``classes_`` on the first call to :meth:`partial_fit`, their check on the later ones
        (inside the call's guard: a first call that fails leaves the estimator unfitted)."""
        first = not hasattr(self, "classes_")
        if classes is not None and np.ndim(classes) == 2 and np.shape(classes)[1] == 1:
            classes = np.ravel(classes)         # a column of labels, as scikit-learn takes it
        if classes is not None and np.ndim(classes) != 1:
            raise ValueError(f"classes must be a 1-D array-like of the class labels, got one of shape "
                             f"{np.shape(classes)}")
        if first and classes is None and not type_of_target(y).startswith("multilabel"):
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if not first and classes is not None:
            if not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call "
                                 f"to partial_fit, was: {self.classes_!r}")
        if first:
            # scikit-learn's _check_partial_fit_first_call: classes_ are the classes given
            # (checked against y's by _validate_input); the binarizer is y's for a multilabel y
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
            self.classes_ = self._label_binarizer.classes_ if classes is None else unique_labels(classes)

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
        """Logarithm of :meth:`predict_proba`: ``log(predict_proba(X))``, as scikit-learn's.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes), the estimator's dtype
            The log of the probabilities :meth:`predict_proba` returns: ``-inf`` where a
            probability underflowed to 0 in the estimator's dtype (as scikit-learn's
            ``log(predict_proba(X))``; fit with ``dtype='float64'`` to keep such
            probabilities above 0).
        """
        P = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(P, out=P)

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
        # on the outputs, as load_model(...).predict: float32 probabilities of distinct outputs
        # may tie; the largest output, or an output above 0 (probability above 0.5) per label
        S = self._forward(self._validate_X_predict(X))
        if self._multilabel:
            return self._label_binarizer.inverse_transform((S > 0).astype(np.float64))
        return self.classes_[np.argmax(S, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by a fused fastbp step.

    Minimises the squared error (``loss_curve_`` reports half the mean
    squared error, as scikit-learn does; the learning rate is rescaled so
    that the same hyper-parameters take the same steps), or with
    ``loss='poisson'`` scikit-learn's half Poisson deviance of ``exp`` of the
    output (``out_activation_ = 'exp'``; ``predict`` returns the means, the
    targets must be >= 0).  Parameters and attributes as
    :class:`MLPClassifier`, except ``loss`` ({'squared_error', 'poisson'},
    default 'squared_error', the first parameter as in scikit-learn), the
    output (``out_activation_ = 'identity'`` for the squared error),
    ``validation_scores_`` hold R^2, and there is no ``classes_`` nor
    ``class_weight``.
    """

    _fastbp_loss = "mse"

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, dtype="float32", precision="full"):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
                         verbose=verbose, warm_start=warm_start, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, dtype=dtype,
                         precision=precision)
        self.loss = loss

    def _loss_scales(self, n_out):
        if self._fastbp_loss == "poisson":
            # scikit-learn: the half Poisson deviance summed over the outputs (averaged over
            # the samples), fastbp's averaged over both: n_out times, value and gradient
            return float(n_out), float(n_out)
        # scikit-learn: loss = mean((y - p)^2) / 2 over all elements, but its
        # gradient is (p - y) / n_samples, i.e. n_out / 2 times fastbp's
        # 2 (p - y) / (n_samples n_out)
        return 0.5, n_out / 2.0

    def _predict_from_outputs(self, out):
        """float64 predictions from the network's outputs: exp of the log-means for
        ``loss='poisson'``, applied in float64 (:func:`fastbp.bundle.regression_predictions`,
        the saved bundle's own code)."""
        return regression_predictions(self._fastbp_loss, out)

    def _n_outputs(self):
        return self._n_targets

    def _out_activation(self):
        return "exp" if self._fastbp_loss == "poisson" else "identity"

    def _is_classifier_single_label(self):
        return False

    def _check_params(self):
        # loss first, with the others: before X and y are validated, as scikit-learn checks it
        if not (isinstance(self.loss, str) and self.loss in ("squared_error", "poisson")):
            raise InvalidParameterError(f"The 'loss' parameter of {type(self).__name__} must be a str among "
                                        f"{{'squared_error', 'poisson'}}. Got {self.loss!r} instead.")
        return super()._check_params()

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        k = 1 if y.ndim == 1 else y.shape[1]
        # checks first, then the new state (a failure after this is undone by _BaseMLP._fit)
        if not reset and k != self.n_outputs_:
            raise ValueError(f"y has {k} targets, but {type(self).__name__} was fitted with "
                             f"{self.n_outputs_}")
        if not reset and hasattr(self, "_arch") and self._arch["loss"] != _REG_LOSS[self.loss]:
            raise ValueError(f"loss={self.loss!r} differs from the loss {self._fastbp_loss!r} this "
                             f"estimator was fitted with; fit it again")
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError("Some value(s) of y are negative which is not allowed for Poisson regression.")
        dt = _resolve_dtype(self.dtype, X.dtype) if reset else self._dtype
        with np.errstate(over="ignore"):
            Y = np.ascontiguousarray(y.reshape(y.shape[0], -1), dtype=dt)
        if not np.isfinite(Y).all():
            if not np.isfinite(np.asarray(y, dtype=np.float64)).all():  # a None in an object y
                raise ValueError("Input y contains NaN or infinity (a missing target: None in an object y?).")
            raise ValueError(f"y has a value too large for {dt} ({float(np.abs(y).max())!r}), the "
                             "estimator's dtype: pass dtype='float64' or scale the targets")
        if reset:
            self._n_targets = k
        self._fastbp_loss = _REG_LOSS[self.loss]
        return X, Y

    def _val_score(self, X_val, Y_val, sample_weight=None):
        pred = self._predict_from_outputs(self._forward(X_val))
        if not np.isfinite(pred).all():
            # scikit-learn's validation score (_score_with_function) of non-finite predictions
            return np.nan
        return r2_score(Y_val, pred, sample_weight=sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with one epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default None
            As in :meth:`fit`.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def predict(self, X):
        """Predicted targets.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_targets)
            X's dtype, as scikit-learn's: float32 for float32 X, float64 otherwise
            (computed in the estimator's dtype, the targets' scaling undone in
            float64); 1-D when it was fitted on a 1-D ``y``.
        """
        X = self._validate_X_predict(X)
        out = self._predict_from_outputs(self._forward(X)).astype(X.dtype, copy=False)
        if out.shape[1] == 1:
            return out.ravel()
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


def _regressor_parameters(doc):
    """MLPRegressor's Parameters section: MLPClassifier's (``doc``) with ``loss`` first, without
    ``class_weight``, and R^2 where the classifier's early stopping follows the accuracy."""
    params = doc.split("    Parameters\n    ----------\n", 1)[1].split("\n    Attributes\n", 1)[0]
    params = params[:params.index("    class_weight :")] + params[params.index("    dtype :"):]
    return ("\n    Parameters\n    ----------\n    loss : {'squared_error', 'poisson'}, default 'squared_error'\n"
            "        The loss minimised (see above).\n" + params.replace("validation accuracy", "validation R^2"))


if MLPClassifier.__doc__ and MLPRegressor.__doc__:     # (python -OO strips docstrings)
    MLPRegressor.__doc__ += _regressor_parameters(MLPClassifier.__doc__)
