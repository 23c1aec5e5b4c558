"""``fastbp train --schedule ...``: the learning-rate schedule options of the CLI.

The options (:func:`add_arguments`) are added to the ``train`` sub-command
of :func:`fastbp._cli_args.build_parser` by :func:`extend_parser`;
:func:`schedule_from_args` turns them into a :mod:`fastbp.schedules`
schedule, which the step follows epoch after epoch.  An option that does
not apply to the chosen schedule is a usage error, not silently ignored.
"""
from __future__ import annotations

import argparse

from ._cli_args import _float_in, _nonneg_int, _positive_int

__all__ = ["add_arguments", "check_schedule_args", "extend_parser", "schedule_from_args"]

SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "onecycle", "plateau")


def add_arguments(t):
    """The schedule options of ``fastbp train`` (parser ``t``)."""
    g = t.add_argument_group("learning-rate schedule (PyTorch's formulas, per epoch; onecycle per step)")
    g.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="constant (default); step: x gamma every --step-size epochs; multistep: x gamma at "
                        "each of --milestones; exponential: x gamma every epoch; cosine: cosine annealing to "
                        "--min-lr over the epochs after --warmup; onecycle: 1cycle with --lr as max_lr; "
                        "plateau: x gamma (default 0.1) when the training loss stalls for --patience epochs")
    g.add_argument("--warmup", type=_nonneg_int, default=None, metavar="EPOCHS",
                   help="cosine: linear warmup epochs before the cosine (default 0)")
    g.add_argument("--gamma", type=_float_in(0.0, 1.0, True, False), default=None,
                   help="decay factor of step, multistep, exponential (default 0.1; exponential 0.95) and plateau "
                        "(default 0.1)")
    g.add_argument("--step-size", type=_positive_int, default=None, metavar="EPOCHS",
                   help="step: epochs between decays (default: a third of --epochs)")
    g.add_argument("--milestones", type=_positive_int, nargs="+", default=None, metavar="EPOCH",
                   help="multistep: the epochs at which the rate decays")
    g.add_argument("--min-lr", type=_float_in(0.0, None, False, False), default=None,
                   help="cosine: the final rate (eta_min); plateau: the lowest rate (default 0); below --lr")
    g.add_argument("--patience", type=_nonneg_int, default=None, metavar="EPOCHS",
                   help="plateau: epochs without improvement before a decay (default 10)")


def extend_parser(parser):
    """Add :func:`add_arguments` to the ``train`` sub-command of ``parser``; returns ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and "train" in action.choices:
            add_arguments(action.choices["train"])
    return parser


#: the schedules each option applies to (any other is refused: the option would do nothing)
APPLIES = {"--warmup": ("cosine",), "--step-size": ("step",), "--milestones": ("multistep",),
           "--gamma": ("step", "multistep", "exponential", "plateau"), "--min-lr": ("cosine", "plateau"),
           "--patience": ("plateau",)}


def _given(args):
    """The schedule options given on the command line (None: not given), by option name."""
    return {"--warmup": args.warmup, "--step-size": args.step_size, "--milestones": args.milestones,
            "--gamma": args.gamma, "--min-lr": args.min_lr, "--patience": args.patience}


def _choices(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_schedule_args(args, usage_error):
    """Raise ``usage_error(msg)`` for schedule options that do not apply to ``--schedule`` (they
    would be ignored), a ``--warmup`` not shorter than ``--epochs``, a ``--min-lr`` not below the
    learning rate, or ``--schedule multistep`` without ``--milestones``."""
    name = getattr(args, "schedule", "constant")
    for opt, v in _given(args).items():
        if v is None or name in APPLIES[opt]:
            continue
        where = _choices(APPLIES[opt])
        if name == "constant":
            raise usage_error(f"{opt} needs --schedule {where} (it has no effect on a constant rate)")
        raise usage_error(f"{opt} applies to --schedule {where}, not {name}")
    if name == "multistep" and not args.milestones:
        raise usage_error("--schedule multistep needs --milestones")
    if name == "cosine" and args.warmup is not None and args.warmup >= args.epochs:
        raise usage_error(f"--warmup {args.warmup} must be shorter than --epochs {args.epochs} "
                          "(the cosine annealing follows the warmup)")
    if name == "plateau" and args.gamma is not None and args.gamma >= 1.0:
        raise usage_error("--gamma must be < 1 for --schedule plateau")
    if args.min_lr is not None:
        from ._cli_args import DEFAULT_LR
        lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
        if args.min_lr >= lr:
            what = f"--lr {lr:g}" if args.lr is not None else f"{lr:g}, the default --lr of {args.optimizer}"
            raise usage_error(f"--min-lr {args.min_lr:g} must be below the learning rate ({what}): the "
                              f"schedule lowers the rate towards it")


def schedule_from_args(args, steps_per_epoch, usage_error):
    """The schedule the options ask for (None for constant); ``usage_error(msg)`` makes the error
    (:func:`check_schedule_args`)."""
    check_schedule_args(args, usage_error)
    name = getattr(args, "schedule", "constant")
    from . import schedules as S
    if name == "constant":
        return None
    gamma = args.gamma
    warmup = args.warmup or 0
    min_lr = 0.0 if args.min_lr is None else args.min_lr
    if name == "step":
        return S.StepLR(args.step_size or max(1, args.epochs // 3), gamma=0.1 if gamma is None else gamma)
    if name == "multistep":
        return S.MultiStepLR(args.milestones, gamma=0.1 if gamma is None else gamma)
    if name == "exponential":
        return S.ExponentialLR(0.95 if gamma is None else gamma)
    if name == "cosine":
        return S.CosineAnnealingLR(T_max=max(1, args.epochs - warmup), eta_min=min_lr, warmup=warmup)
    if name == "onecycle":
        from ._cli_args import DEFAULT_LR
        lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
        return S.OneCycleLR(lr, total_steps=args.epochs * steps_per_epoch)
    return S.ReduceLROnPlateau(factor=0.1 if gamma is None else gamma,
                               patience=10 if args.patience is None else args.patience, min_lr=min_lr)
