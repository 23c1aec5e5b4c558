"""``fastbp train --schedule ...``: the learning-rate schedule options of the CLI.

The options (:func:`add_arguments`) are added to the ``train`` sub-command
of :func:`fastbp._cli_args.build_parser` by :func:`extend_parser`;
:func:`schedule_from_args` turns them into a :mod:`fastbp.schedules`
schedule, which the step follows epoch after epoch.
"""
from __future__ import annotations

import argparse

from ._cli_args import _float_in, _nonneg_int, _positive_int

__all__ = ["add_arguments", "extend_parser", "schedule_from_args"]

SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "onecycle", "plateau")


def add_arguments(t):
    """The schedule options of ``fastbp train`` (parser ``t``)."""
    g = t.add_argument_group("learning-rate schedule (PyTorch's formulas, per epoch; onecycle per step)")
    g.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="constant (default); step: x gamma every --step-size epochs; multistep: x gamma at "
                        "each of --milestones; exponential: x gamma every epoch; cosine: cosine annealing to "
                        "--min-lr over the epochs after --warmup; onecycle: 1cycle with --lr as max_lr; "
                        "plateau: x gamma (default 0.1) when the training loss stalls for --patience epochs")
    g.add_argument("--warmup", type=_nonneg_int, default=0, metavar="EPOCHS",
                   help="cosine: linear warmup epochs before the cosine (default 0)")
    g.add_argument("--gamma", type=_float_in(0.0, 1.0, True, False), default=None,
                   help="decay factor of step, multistep, exponential (default 0.1; exponential 0.95) and plateau "
                        "(default 0.1)")
    g.add_argument("--step-size", type=_positive_int, default=None, metavar="EPOCHS",
                   help="step: epochs between decays (default: a third of --epochs)")
    g.add_argument("--milestones", type=_positive_int, nargs="+", default=None, metavar="EPOCH",
                   help="multistep: the epochs at which the rate decays")
    g.add_argument("--min-lr", type=_float_in(0.0, None, False, False), default=0.0,
                   help="cosine: the final rate (eta_min); plateau: the lowest rate (default 0)")
    g.add_argument("--patience", type=_nonneg_int, default=10, metavar="EPOCHS",
                   help="plateau: epochs without improvement before a decay (default 10)")


def extend_parser(parser):
    """Add :func:`add_arguments` to the ``train`` sub-command of ``parser``; returns ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and "train" in action.choices:
            add_arguments(action.choices["train"])
    return parser


def schedule_from_args(args, steps_per_epoch, usage_error):
    """The schedule the options ask for (None for constant); ``usage_error(msg)`` makes the error."""
    name = getattr(args, "schedule", "constant")
    from . import schedules as S
    if name == "constant":
        for opt, v, default in (("--warmup", args.warmup, 0), ("--step-size", args.step_size, None),
                                ("--milestones", args.milestones, None), ("--gamma", args.gamma, None)):
            if v != default:
                raise usage_error(f"{opt} needs --schedule (it has no effect on a constant rate)")
        return None
    if args.warmup and name != "cosine":
        raise usage_error("--warmup applies to --schedule cosine")
    if args.milestones is not None and name != "multistep":
        raise usage_error("--milestones applies to --schedule multistep")
    gamma = args.gamma
    if name == "step":
        return S.StepLR(args.step_size or max(1, args.epochs // 3), gamma=0.1 if gamma is None else gamma)
    if name == "multistep":
        if not args.milestones:
            raise usage_error("--schedule multistep needs --milestones")
        return S.MultiStepLR(args.milestones, gamma=0.1 if gamma is None else gamma)
    if name == "exponential":
        return S.ExponentialLR(0.95 if gamma is None else gamma)
    if name == "cosine":
        return S.CosineAnnealingLR(T_max=max(1, args.epochs - args.warmup), eta_min=args.min_lr,
                                   warmup=args.warmup)
    if name == "onecycle":
        from ._cli_args import DEFAULT_LR
        lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
        return S.OneCycleLR(lr, total_steps=args.epochs * steps_per_epoch)
    if gamma is not None and gamma >= 1.0:
        raise usage_error("--gamma must be < 1 for --schedule plateau")
    return S.ReduceLROnPlateau(factor=0.1 if gamma is None else gamma, patience=args.patience,
                               min_lr=args.min_lr)
