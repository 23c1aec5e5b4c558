"""``fastbp train --compare``: scikit-learn's MLP trained as fastbp's was, for the side-by-side table."""
from __future__ import annotations

import time

import numpy as np

from ._cli_args import DEFAULT_LR
from ._cli_base import EXTRA, CliError

__all__ = ["compare", "compare_refusal"]


def compare_refusal(args):
    """Why ``--compare`` cannot train scikit-learn's MLP as ``args`` train fastbp's
    (a message), or None; checked before any training."""
    from .registry import activations as _acts
    if args.dropout or args.batchnorm:
        return "--compare: scikit-learn's MLP has no " + ("--dropout" if args.dropout else "--batchnorm") + \
            " (train without it to compare)"
    if args.optimizer in ("rmsprop", "adamw"):
        return f"--compare: scikit-learn's MLP has no {args.optimizer!r} solver"
    if args.clip_grad_norm is not None:
        return "--compare: scikit-learn's MLP has no gradient clipping (--clip-grad-norm)"
    if args.weight_decay:
        return ("--compare: scikit-learn's MLP has no weight decay of the optimizer (--weight-decay; "
                "its alpha is an L2 penalty on the loss)")
    if getattr(args, "schedule", "constant") != "constant":
        return (f"--compare: scikit-learn's MLP has no --schedule {args.schedule} (its learning_rate "
                "schedules are sgd's 'invscaling' and 'adaptive'; compare with a constant rate)")
    if _acts.get(args.activation).sklearn is None:
        return f"--compare: scikit-learn has no {args.activation!r} activation"
    return None


def compare(args, d):
    """scikit-learn's MLPClassifier (MLPRegressor), same split, architecture, optimizer and epochs.

    Trained one ``partial_fit`` epoch at a time (its optimizer state and
    random stream carry over, as in ``fit``) so that each epoch is timed.
    Returns ``(test accuracy or R^2, per-epoch seconds)``.
    """
    try:
        from sklearn.neural_network import MLPClassifier, MLPRegressor
    except ImportError:
        raise CliError(f"--compare needs scikit-learn, which is not installed: {EXTRA}") from None
    regression = args.task == "regression"
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    from .registry import activations as _acts
    sk_act = _acts.get(args.activation).sklearn
    kw = dict(hidden_layer_sizes=tuple(args.hidden),
              activation=sk_act,
              solver=args.optimizer, alpha=0.0, batch_size=min(args.batch_size, len(d.ytr)),
              learning_rate="constant", learning_rate_init=lr, shuffle=True,
              random_state=np.random.RandomState(args.seed))
    if args.optimizer == "sgd":
        kw.update(momentum=0.9 if args.momentum is None else args.momentum,
                  nesterovs_momentum=False)
    est = MLPRegressor(**kw) if regression else MLPClassifier(**kw)
    extra = {} if regression else {"classes": np.unique(d.ytr)}
    ytr = d.ytr.ravel() if regression else d.ytr
    times = []
    for _ in range(args.epochs):
        t = time.perf_counter()
        est.partial_fit(d.Xtr, ytr, **extra)
        times.append(time.perf_counter() - t)
    if regression:
        from .training import r2_score
        return r2_score(np.reshape(d.yte, -1), np.reshape(est.predict(d.Xte), -1)), np.array(times)
    return float(np.mean(est.predict(d.Xte) == d.yte)), np.array(times)
