"""The argument parser of the ``fastbp`` command line (see :mod:`fastbp.cli`)."""
from __future__ import annotations

import argparse
import math

from ._cli_base import Parser as _Parser
from ._validate import INT64_MAX as _INT64_MAX, RANDOM_STATE_MAX as _RANDOM_STATE_MAX
from .registry import activations as _acts
from .registry import losses as _losses

#: ``--activation`` choices: the registry's activation names -> layer class names
ACTIVATIONS = {e.name: e.layer for e in _acts.entries(public=True)}
#: ... and the names of a layer's variants (``gelu_tanh``: ``GELU(approximate="tanh")``)
ACTIVATION_CHOICES = sorted(set(ACTIVATIONS) | {e.name for e in _acts.entries()
                                                if e.layer is None and _acts.variant_of(e)[1] is not None})
#: the CLI's --loss choices: not 'poisson' (count targets; the CLI standardises regression
#: targets, which a log-link loss cannot take: use MLPRegressor(loss='poisson'))
LOSSES = tuple(n for n in _losses.names() if n != "poisson")
DEFAULT_LR = {"sgd": 0.05, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001}
#: --weight-decay's default per optimizer (torch.optim's: AdamW 0.01, the others 0)
DEFAULT_WD = {"sgd": 0.0, "adam": 0.0, "adamw": 0.01, "rmsprop": 0.0}


def _int_at_least(low, what):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {s!r}")
        if v > _INT64_MAX:      # sizes and counts are int64 inside the executor (the API's limit too)
            raise argparse.ArgumentTypeError(f"expected a {what} integer <= {_INT64_MAX}, got {s!r}")
        return v
    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


def _seed(s):
    """A seed scikit-learn's split and ``RandomState`` take: 0 .. 2**32 - 1."""
    v = _nonneg_int(s)
    if v > _RANDOM_STATE_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {_RANDOM_STATE_MAX}], got {s!r}")
    return v


def _float_in(low, high, low_open, high_open):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and (
            high is None or (v < high if high_open else v <= high))
        if not ok:
            lo = f"{'(' if low_open else '['}{low}"
            hi = f"{high if high is not None else 'inf'}{')' if high_open or high is None else ']'}"
            raise argparse.ArgumentTypeError(f"expected a number in {lo}, {hi}, got {s!r}")
        return v
    return parse


def _delimiter_arg(s):
    from ._tables import DataError, _delimiter
    try:
        _delimiter(s, ".csv")
    except DataError:
        raise argparse.ArgumentTypeError(f"expected one character other than a letter, digit, sign, "
                                         f"point, quote or newline (or 'tab'), got {s!r}") from None
    return s


def _csv_options(p):
    p.add_argument("--delimiter", metavar="CHAR", default=None, type=_delimiter_arg,
                   help="CSV field delimiter, one character or 'tab' (default: ',', tab for .tsv)")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the CSV's first line is a header (default: decided from the file: "
                        "a header has a non-numeric cell above a column of numbers)")


def build_parser():
    """The ``fastbp`` argument parser (sub-commands ``train``, ``predict``, ``evaluate``)."""
    from . import __version__
    p = _Parser(prog="fastbp", description="fastbp: fused JIT training steps for MLPs.")
    p.add_argument("--version", action="version", version=f"fastbp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    t = sub.add_parser(
        "train", prog="fastbp train",
        help="train an MLP (digits by default) and report accuracy and timings",
        description="Train a multi-layer perceptron with one fused native call per epoch. "
                    "Without --data: the handwritten digits bundled with scikit-learn, "
                    "stratified seeded 80/20 split, pixels scaled to [0, 1]. With --data: features "
                    "standardised with the training split's mean and std (regression targets too).")
    t.add_argument("--data", metavar="PATH",
                   help="train on your own data: a .npz with arrays X and y, or a .csv (or .tsv) "
                        "with one column of labels (by default the last) and numeric features")
    t.add_argument("--label-column", metavar="COL", default=None,
                   help="the CSV's label column: a header name or a 0-based index, negative from "
                        "the end; a header name wins over an index it spells (default: the last column)")
    _csv_options(t)
    t.add_argument("--task", choices=("classification", "regression"), default="classification",
                   help="classification (default) or regression (mse loss, R^2 and RMSE reported, "
                        "targets standardised)")
    t.add_argument("--hidden", type=_positive_int, nargs="*", default=[256, 128], metavar="N",
                   help="hidden layer widths (default: 256 128; none for a linear model)")
    t.add_argument("--activation", choices=ACTIVATION_CHOICES, default=None,
                   help="hidden-layer activation (default: relu)")
    t.add_argument("--dropout", type=_float_in(0.0, 1.0, False, True), default=0.0, metavar="P",
                   help="Dropout(P) after each hidden activation, P in [0, 1) (default: 0, none); "
                        "off when evaluating and predicting")
    t.add_argument("--batchnorm", action="store_true",
                   help="BatchNorm1d after each hidden Linear, before the activation (batch "
                        "statistics in training, running statistics when evaluating and predicting)")
    t.add_argument("--loss", choices=LOSSES, default=None,
                   help="training loss (default: softmax_cross_entropy; mse for --task regression)")
    t.add_argument("--optimizer", choices=("sgd", "adam", "adamw", "rmsprop"), default="adam",
                   help="optimizer (default: adam; adamw: Adam with decoupled weight decay)")
    t.add_argument("--weight-decay", type=_float_in(0.0, None, False, False), default=None, metavar="WD",
                   help="weight decay >= 0: decoupled for adamw (default 0.01), an L2 term in the "
                        "gradient for sgd, adam and rmsprop (default 0), as in torch.optim")
    t.add_argument("--lr", type=_float_in(0.0, None, True, False), default=None,
                   help="learning rate (default: 0.001 for adam, adamw and rmsprop, 0.05 for sgd)")
    t.add_argument("--momentum", type=_float_in(0.0, 1.0, False, True), default=None,
                   help="momentum in [0, 1) (sgd: default 0.9; rmsprop: default 0)")
    t.add_argument("--clip-grad-norm", type=_float_in(0.0, None, True, False), default=None, metavar="MAX_NORM",
                   help="clip the gradients to this global 2-norm before each update "
                        "(torch.nn.utils.clip_grad_norm_; default: no clipping)")
    t.add_argument("--epochs", type=_positive_int, default=30, help="epochs (default: 30)")
    t.add_argument("--batch-size", type=_positive_int, default=32,
                   help="minibatch size (default: 32)")
    t.add_argument("--test-size", type=_float_in(0.0, 1.0, True, True), default=0.2,
                   help="fraction held out for testing (default: 0.2)")
    t.add_argument("--seed", type=_seed, default=0,
                   help="seed of the split, the initial weights and the shuffles (default: 0)")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="precision of the weights and the computation (default: float32)")
    t.add_argument("--precision", choices=("full", "bf16", "auto"), default="full",
                   help="bf16: the linear layers' matrix products on bfloat16 copies, accumulated in "
                        "float32 (CPUs with AVX512-BF16 or AMX; pip install -e '.[bf16]' in the fastbp "
                        "clone); weights stay "
                        "float32; auto: bf16 where available (default: full)")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the step runs (default: cpu)")
    t.add_argument("--save", metavar="PATH",
                   help="write the trained model: weights, preprocessing, class labels and "
                        "metadata in one .npz (see fastbp predict)")
    t.add_argument("--plot", metavar="PATH",
                   help="write the loss and accuracy curves as an image (matplotlib), in the format of "
                        "PATH's extension (.png, .pdf, .svg, ...; PNG without one)")
    t.add_argument("--compare", action="store_true",
                   help="also train scikit-learn's MLPClassifier (MLPRegressor) with the same "
                        "architecture, optimizer and epochs on the same split")
    t.add_argument("--quiet", action="store_true", help="no progress output")

    pr = sub.add_parser("predict", prog="fastbp predict",
                        help="predict with a saved model on raw features",
                        description="Predict with a model saved by fastbp train --save (or an "
                                    "estimator's save): raw features in (the model's preprocessing is "
                                    "applied), labels out in their original names, one CSV row per "
                                    "sample. A label column in the data is ignored.")
    pr.add_argument("--model", metavar="PATH", required=True, help="the saved model (.npz)")
    pr.add_argument("--data", metavar="PATH", required=True, help="features: .csv/.tsv or .npz (X)")
    _csv_options(pr)
    pr.add_argument("--proba", action="store_true", help="also write each class's probability")
    pr.add_argument("--out", metavar="PATH", help="write the predictions there (default: stdout)")

    ev = sub.add_parser("evaluate", prog="fastbp evaluate",
                        help="score a saved model on labelled data",
                        description="Accuracy and a per-class report (classification) or R^2, RMSE "
                                    "and MAE (regression) of a saved model on raw labelled data.")
    ev.add_argument("--model", metavar="PATH", required=True, help="the saved model (.npz)")
    ev.add_argument("--data", metavar="PATH", required=True,
                    help="features and labels: .csv/.tsv or .npz (X and y)")
    _csv_options(ev)
    return p


def optimizer_from_args(args):
    """The fastbp optimizer of ``fastbp train``'s ``--optimizer``, ``--lr``, ``--momentum``
    and ``--weight-decay`` (each default per optimizer: :data:`DEFAULT_LR`, :data:`DEFAULT_WD`;
    momentum 0.9 for sgd, 0 for rmsprop)."""
    import fastbp

    name = args.optimizer
    lr = args.lr if args.lr is not None else DEFAULT_LR[name]
    wd = args.weight_decay if args.weight_decay is not None else DEFAULT_WD[name]
    if name == "sgd":
        return fastbp.SGD(lr=lr, momentum=0.9 if args.momentum is None else args.momentum, weight_decay=wd)
    if name == "rmsprop":
        return fastbp.RMSprop(lr=lr, momentum=args.momentum or 0.0, weight_decay=wd)
    if name == "adamw":
        return fastbp.AdamW(lr=lr, weight_decay=wd)
    return fastbp.Adam(lr=lr, weight_decay=wd)
