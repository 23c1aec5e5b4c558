"""The training step of a ``fastbp train`` run: built from the parsed arguments,
and its native code compiled ahead, while the data is read."""
from __future__ import annotations

import numpy as np

from ._cli_args import optimizer_from_args
from ._cli_base import CliError, UsageError
from ._cli_schedule import schedule_from_args


def build_step(args, n_in, n_out, n_train):
    """The compiled step of ``fastbp train`` for ``n_in`` features, ``n_out``
    outputs and ``n_train`` training rows; returns ``(step, optimizer)``."""
    import fastbp

    from .builders import mlp

    model = mlp([n_in, *args.hidden, n_out], args.activation, batchnorm=args.batchnorm, dropout=args.dropout)
    opt = optimizer_from_args(args)
    bs = min(args.batch_size, n_train)
    if args.batchnorm and n_train % bs == 1:
        # said before anything is compiled or trained (the step would raise at that minibatch)
        raise CliError(f"--batchnorm: with --batch-size {args.batch_size} the {n_train} training rows leave a "
                       "minibatch of 1 row, which cannot be batch-normalised; pick another --batch-size")
    schedule = schedule_from_args(args, -(-n_train // bs), lambda m: UsageError(f"fastbp train: error: {m}"))
    try:
        step = fastbp.compile(model, loss=args.loss, optimizer=opt, batch_size=bs,
                              dtype=np.dtype(args.dtype).type, seed=args.seed, device=args.device,
                              schedule=schedule, clip_grad_norm=args.clip_grad_norm, precision=args.precision)
    except Exception as e:
        if args.device == "cuda":  # no device, no driver, ...: say which option failed
            raise CliError(f"--device cuda: {e}") from None
        if args.precision != "full" and isinstance(e, (ImportError, RuntimeError, ValueError)) \
                and "precision" in str(e):
            raise CliError(f"--precision {args.precision}: {e}") from None
        raise
    return step, opt


def compile_ahead(args):
    """On a cold numba cache, start compiling the step's native code on the other
    core while this process reads the data (:func:`fastbp._executor.compile_ahead`).
    Which kernels a step runs does not depend on the layer widths, so a model of
    width 2 with the same layers names them; the step built after the data
    compiles only what the helper does not."""
    from ._executor import compile_ahead, threads_for
    from ._step_base import StepBase
    from .builders import mlp

    n_out = 1 if args.task == "regression" else 2
    try:
        probe = StepBase(mlp([2] * (len(args.hidden) + 1) + [n_out], args.activation, batchnorm=args.batchnorm,
                             dropout=args.dropout), args.loss, optimizer_from_args(args), 2,
                         np.dtype(args.dtype).type, 0, precision=args.precision)
    except (TypeError, ValueError, ImportError, RuntimeError):
        return      # the step built after the data says what is wrong
    from ._fold_plan import fold_dropout
    # the tape the CPU step will run, and whether on numba's threads (its widths are the CLI's)
    threads = probe.precision != "bf16" and threads_for(max(list(args.hidden) + [n_out]), args.batch_size,
                                                        probe.dtype)
    compile_ahead(probe.dtype, fold_dropout(probe.plan).tape, threads)


def bf16_note(step):
    """What ``--precision bf16`` changed: the products in bf16, or none (every layer below
    fastbp.config.BF16_MIN_MACS keeps float32 products)."""
    if step.precision != "bf16":
        return ""
    from ._isa import C_OP, OP_LINEAR_BF16
    n = int((step.plan.tape[:, C_OP] == OP_LINEAR_BF16).sum())
    return " (bf16 products)" if n else " (bf16 precision, but every layer is too small for bf16 products)"
