"""The ``fastbp`` command line: ``fastbp train``, ``fastbp predict``, ``fastbp evaluate``.

``fastbp train`` trains a multi-layer perceptron with one fused native call
per epoch and reports the test accuracy (or R^2 with ``--task regression``),
the time per epoch and the total time.  With no arguments it trains on the
handwritten digits bundled with scikit-learn (stratified, seeded 80/20
split, pixels scaled to [0, 1]).  ``--save m.npz`` writes a self-contained
model (:mod:`fastbp.bundle`) that ``fastbp predict --model m.npz --data
new.csv`` and ``fastbp evaluate`` use on raw features.

Every error in the arguments or the data is reported as one line on stderr
with a non-zero exit status (2 for usage errors, 1 for everything else);
set ``FASTBP_DEBUG=1`` to get the full traceback instead.  A training run
that diverges (a non-finite loss, a loss a thousand times the untrained
model's, or a final loss above the untrained model's at chance accuracy)
is an error too.

pandas, scikit-learn, tqdm and matplotlib (the ``examples`` extra) are
imported only where they are needed.
"""
from __future__ import annotations

import gc
import os
import sys
import time

import numpy as np

from .config import env_flag
from ._cli_base import (EXTRA as _EXTRA, CliError, State, UsageError as _UsageError,
                        check_csv_options as _check_csv_options, check_output_path as _check_output_path,
                        check_paths as _check_paths, err as _err, ms as _ms, out as _out,
                        require as _require, write_output as _write_output)
from ._cli_args import DEFAULT_LR as _DEFAULT_LR, build_parser
from ._cli_schedule import check_schedule_args as _check_schedule_args, extend_parser
from ._cli_compare import compare as _compare, compare_refusal as _compare_refusal
from ._cli_step import bf16_note, build_step as _build_step, compile_ahead as _compile_ahead

__all__ = ["main", "build_parser", "CliError"]

#: a loss this many times the untrained model's (and at least this large) is divergence
_GROWTH, _GROWTH_FLOOR = 1e3, 1e-2


def _report(msg, status, exc):
    """Print an error and return the exit status.

    Under MPI, ranks other than 0 stay silent about usage errors (every rank
    has the same arguments), about errors every rank hit itself, and about
    ``RankError`` (the rank that failed prints its own message); an error
    raised on this rank only ends the whole job (``MPI_Abort``), since the
    other ranks could otherwise wait for it forever.
    """
    try:
        from .distributed import RankError, abort_unless_agreed, mpi_world_rank, mpi_world_size
    except ImportError:  # pragma: no cover - fastbp itself broken
        _err(msg)
        return status
    State.rank = mpi_world_rank()
    everywhere = getattr(exc, "fastbp_failed_ranks", None) == mpi_world_size()   # same error on all
    if State.rank == 0 or not (isinstance(exc, (_UsageError, RankError)) or everywhere):
        _err(msg)
    abort_unless_agreed(exc, status)
    return status


def _all_ranks_like(err, cause):
    """``err`` marked as raised on every rank if ``cause`` was."""
    if getattr(cause, "fastbp_all_ranks", False):
        err.fastbp_all_ranks = True
        err.fastbp_failed_ranks = getattr(cause, "fastbp_failed_ranks", None)
    return err


# --------------------------------------------------------------------- pieces
class _Prepared:
    """The split and scaled data of a run, and what the saved model needs to repeat it."""

    def __init__(self, **kw):
        self.feature_names = self.label_name = self.label_index = None
        self.y_mean = self.y_scale = None
        self.__dict__.update(kw)


def _load(args):
    from . import data

    dt = np.dtype(args.dtype)
    regression = args.task == "regression"
    if args.data is None:
        for opt in ("label_column", "delimiter", "header"):
            if getattr(args, opt) is not None:
                raise _UsageError(f"fastbp train: error: --{opt.replace('_', '-')} applies to --data files")
        if regression:
            raise _UsageError("fastbp train: error: the digits are a classification dataset; "
                              "--task regression needs --data")
        X, y, classes = data.load_digits()
        tr, te = data.stratified_split(y, args.test_size, args.seed)
        # pixel intensities 0..16 -> [0, 1]: per-pixel standardisation would blow
        # up the nearly constant border pixels (measured: less accurate, less stable)
        scaler = data.Standardizer(np.zeros(X.shape[1]), np.full(X.shape[1], 16.0))
        return _Prepared(name="digits (scikit-learn)", file="digits (scikit-learn)", classes=classes,
                         Xtr=scaler.transform(X[tr], dt), ytr=y[tr], Xte=scaler.transform(X[te], dt),
                         yte=y[te], scaler=scaler)
    ds = data.read_dataset(args.data, args.label_column, args.delimiter, args.header)
    from ._cli_model import note_header
    note_header(ds)
    what = ds.path if ds.lines is not None else f"{ds.path}: y"
    kw = dict(name=ds.path, file=os.path.basename(ds.path), feature_names=ds.feature_names,
              label_name=ds.label_name, label_index=ds.label_index)
    if regression:
        y = data.regression_targets(ds.labels, what, ds.lines)
        tr, te = data.stratified_split(y, args.test_size, args.seed, stratify=False)
        ys = data.Standardizer().fit(y[tr, None])
        ytr, yte = ys.transform(y[tr, None], dt), ys.transform(y[te, None], dt)
        kw.update(classes=None, y_mean=ys.mean_, y_scale=ys.scale_, y_raw_te=y[te])
    else:
        y, classes = data.encode_labels(ds.labels, what, ds.lines)
        if classes.shape[0] < 2:
            raise CliError(f"{ds.path}: y has a single class ({data._py(classes[0])!r}); need at least 2 to "
                           "train a classifier")
        tr, te = data.stratified_split(y, args.test_size, args.seed, lines=ds.lines, classes=classes)
        ytr, yte = y[tr], y[te]
        kw.update(classes=classes)
    scaler = data.Standardizer().fit(ds.X[tr])
    return _Prepared(Xtr=scaler.transform(ds.X[tr], dt, ds.feature_names), ytr=ytr,
                     Xte=scaler.transform(ds.X[te], dt, ds.feature_names), yte=yte, scaler=scaler, **kw)


def _targets(loss, y, n_classes, dtype):
    if loss in ("softmax_cross_entropy", "svm") or y.ndim == 2:
        return y
    T = np.zeros((y.shape[0], n_classes), dtype=dtype)
    T[np.arange(y.shape[0]), y] = 1
    return T


def _score(step, X, y):
    """Accuracy of class indices ``y`` (1-D), or R^2 of standardised targets ``y`` (n, 1)."""
    out = np.asarray(step.predict(X))
    if y.ndim == 1:
        return float(np.mean(np.argmax(out, axis=1) == y))
    return _r2(y, out)


def _r2(y, pred):
    from .training import r2_score
    return r2_score(np.reshape(y, -1), np.reshape(pred, -1))


class _Progress:
    """One line per epoch (plain text when stderr is not a terminal or tqdm is missing),
    or a tqdm bar on a terminal; nothing with --quiet."""

    def __init__(self, total, quiet, regression):
        self.bar = None
        self.plain = False
        self.total = total
        self.names = ("r2", "test_r2") if regression else ("acc", "test_acc")
        if quiet:
            return
        stream = sys.stderr
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        try:
            if not tty:
                raise ImportError
            from tqdm import tqdm
        except ImportError:
            self.plain = True
            return
        self.bar = tqdm(total=total, desc="training", unit="epoch", file=stream,
                        mininterval=0, dynamic_ncols=True)

    def update(self, epoch, loss, train_score, test_score, seconds):
        a, b = self.names
        if self.bar is not None:
            self.bar.set_postfix({"loss": f"{loss:.4f}", a: f"{train_score:.4f}", b: f"{test_score:.4f}"},
                                 refresh=False)
            self.bar.update(1)
        elif self.plain:
            print(f"epoch {epoch}/{self.total} loss={loss:.4f} {a}={train_score:.4f} "
                  f"{b}={test_score:.4f} time={_ms(seconds)}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _plot_format(path):
    """The image format of ``--plot PATH``: its extension's, as matplotlib's ``savefig`` takes
    it (PNG without one); an extension matplotlib cannot write is a CliError."""
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if not ext:
        return "png"
    from matplotlib.backend_bases import FigureCanvasBase
    known = FigureCanvasBase.get_supported_filetypes()
    if ext not in known:
        raise CliError(f"--plot {path}: matplotlib cannot write .{ext} images; name the file with one "
                       f"of {', '.join('.' + k for k in sorted(known))} (or none: PNG)")
    if ext == "pgf":            # matplotlib's PGF backend runs a TeX program (rcParams["pgf.texsystem"])
        import shutil
        import matplotlib
        tex = matplotlib.rcParams["pgf.texsystem"]
        if shutil.which(tex) is None:
            raise CliError(f"--plot {path}: matplotlib writes .pgf with {tex}, which is not installed "
                           f"(not on PATH); install TeX or name the file .png, .pdf or .svg")
    return ext


def _plot(path, hist, regression):
    try:
        import matplotlib
    except ImportError:
        raise CliError(f"--plot needs matplotlib, which is not installed: {_EXTRA}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = np.arange(1, len(hist["loss"]) + 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, hist["loss"], marker="o", ms=3)
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss")
    a1.set_yscale("log")
    a1.set_title("loss")
    a1.grid(True, alpha=0.3)
    what = "R^2" if regression else "accuracy"
    a2.plot(ep, hist["train_acc"], marker="o", ms=3, label="train")
    a2.plot(ep, hist["test_acc"], marker="o", ms=3, label="test")
    a2.set_xlabel("epoch")
    a2.set_ylabel(what)
    a2.set_title(what)
    a2.grid(True, alpha=0.3)
    a2.legend()
    fig.tight_layout()
    try:        # atomically: a failed write (a full disk) leaves an existing file as it was
        _write_output(path, "--plot", lambda f: fig.savefig(f, format=_plot_format(path), dpi=100))
    finally:
        plt.close(fig)


def _chance(d):
    """Training score a model without information reaches (majority class, or R^2 0)."""
    if d.ytr.ndim == 2:
        return 0.0
    return float(np.bincount(d.ytr).max()) / d.ytr.shape[0]


def _model_loss(step, X, T):
    """Mean loss of the model on up to 1024 training rows, in eval mode (no update, no dropout,
    BatchNorm's running statistics untouched): before and after training, the same rows."""
    from .training import eval_loss
    inner = getattr(step, "step", step)      # a DistributedStep's own (local) step
    n = min(X.shape[0], 1024)
    scores = np.asarray(inner.predict(X[:n]))
    if not np.all(np.isfinite(scores)):      # weights overflowed (the last update diverged)
        return float("nan")
    with np.errstate(all="ignore"):
        return eval_loss(inner.loss, scores, T[:n])


def _diverged(args, hist, initial, final, chance):
    """A message if the losses so far show divergence, else None.

    Divergence: a loss more than a thousand times the untrained model's
    (``initial``), or not finite, or, once training is over, the trained
    model's loss on the same rows (``final``; not the epoch's mean of
    minibatch losses) not finite (the last update made the weights overflow)
    or above the untrained model's with a training score at chance.
    """
    lr = args.lr if args.lr is not None else _DEFAULT_LR[args.optimizer]
    loss, epoch = hist["loss"][-1], len(hist["loss"])
    advice = (f"the learning rate is probably too large (--lr {lr:g}"
              f"{'' if args.lr is not None else ', the default'} for {args.optimizer}); "
              f"try --lr {lr / 10:g}")
    if not np.isfinite(loss) or loss > _GROWTH * max(initial, _GROWTH_FLOOR):
        return (f"training diverged: the loss grew from {initial:.4g} (before training) to {loss:.4g} "
                f"(epoch {epoch}); {advice}")
    if final is not None and not np.isfinite(final):
        return (f"training diverged: the trained model's outputs are not finite after epoch {epoch} "
                f"(the weights overflowed); {advice}")
    if final is not None and final > initial and hist["train_acc"][-1] <= chance + 0.01:
        what = "R^2" if args.task == "regression" else "accuracy"
        return (f"training diverged: the final loss {final:.4g} is above the untrained model's "
                f"{initial:.4g} and the training {what} {hist['train_acc'][-1]:.4f} is at chance; {advice}")
    return None


def _save_model(args, step, comm, d, hist, ep):
    """Write the bundle (rank 0; a collective call under MPI)."""
    from . import bundle

    error = None
    if State.rank == 0:
        regression = args.task == "regression"
        info = {"command": "fastbp train", "data": d.file, "epochs": args.epochs, "seed": args.seed,
                "n_train": int(d.Xtr.shape[0]), "n_test": int(d.Xte.shape[0]),
                "final_loss": hist["loss"][-1], "train_seconds": float(ep.sum()),
                ("test_r2" if regression else "test_accuracy"): hist["test_acc"][-1]}
        if regression:
            info["test_rmse"] = d.rmse
        try:
            bundle.save_model(step, args.save, task=args.task, classes=d.classes,
                              feature_names=d.feature_names, label_name=d.label_name,
                              label_index=d.label_index, x_mean=d.scaler.mean_, x_scale=d.scaler.scale_,
                              y_mean=d.y_mean, y_scale=d.y_scale, info=info)
        except OSError as e:
            error = CliError(f"--save {args.save}: {e.strerror or e}")
        except Exception as e:  # noqa: BLE001 - reported on every rank below
            error = e
    if comm is not None:
        from .distributed import agree
        agree(comm, error, "--save: rank 0 failed to write the model")
    elif error is not None:
        raise error


# --------------------------------------------------------------------- train
def _setup(args, mpi):
    """Check the arguments, load the data and compile the step (this rank only)."""
    _check_paths("fastbp train", [("--save", args.save), ("--plot", args.plot)], [("--data", args.data)])
    _check_csv_options("fastbp train", args)
    _check_schedule_args(args, lambda m: _UsageError(f"fastbp train: error: {m}"))
    if mpi and args.device == "cuda":
        raise _UsageError("fastbp train: error: --device cuda cannot run under mpiexec yet "
                          "(use --device cpu)")
    if args.momentum is not None and args.optimizer not in ("sgd", "rmsprop"):
        raise _UsageError("fastbp train: error: --momentum applies only to --optimizer sgd or rmsprop")
    if args.batchnorm and args.batch_size == 1:
        raise _UsageError("fastbp train: error: --batchnorm needs minibatches of at least 2 rows "
                          "(PyTorch's 'more than 1 value per channel'): --batch-size 1 gives 1")
    wide = np.dtype(args.dtype) != np.float32
    if args.precision == "bf16" and (wide or args.device != "cpu"):
        raise _UsageError("fastbp train: error: --precision bf16 " + (
            "keeps float32 master weights: use --dtype float32" if wide else "runs on the CPU only: use --device cpu"))
    if not args.hidden and (args.dropout or args.batchnorm or args.activation is not None):
        opt = "--dropout" if args.dropout else "--batchnorm" if args.batchnorm else "--activation"
        raise _UsageError(f"fastbp train: error: {opt} applies to hidden layers, and --hidden gives none")
    if args.activation is None:
        args.activation = "relu"
    if args.compare and _compare_refusal(args):
        raise _UsageError("fastbp train: error: " + _compare_refusal(args))
    if args.task == "regression":
        if args.loss not in (None, "mse"):
            raise _UsageError(f"fastbp train: error: --task regression trains with --loss mse, "
                              f"not {args.loss}")
        args.loss = "mse"
    elif args.loss is None:
        args.loss = "softmax_cross_entropy"
    if args.save is not None and State.rank == 0:
        _check_output_path(args.save, "--save", replaced=True)
    # optional dependencies: fail before training, not after (rank 0 uses them)
    if args.plot is not None and State.rank == 0:
        _check_output_path(args.plot, "--plot")
        _require("matplotlib", "--plot needs matplotlib")
        _plot_format(args.plot)
    if args.compare and State.rank == 0:
        _require("sklearn", "--compare needs scikit-learn")

    if not mpi and args.device == "cpu":
        _compile_ahead(args)
    d = _load(args)
    n_out = 1 if args.task == "regression" else len(d.classes)
    t_loaded = time.perf_counter()
    step, opt = _build_step(args, d.Xtr.shape[1], n_out, d.Xtr.shape[0])
    return d, t_loaded, step, opt


def train(args, t_start, t_main):
    """Run ``fastbp train`` with parsed ``args``; returns the exit status.

    Under ``mpiexec -n N`` (detected from the launcher's environment) it
    trains data-parallel (:class:`fastbp.distributed.DistributedStep`):
    ``--batch-size`` is the batch of each rank, each rank trains on its
    share of every epoch, and only rank 0 prints, evaluates and writes
    ``--save``/``--plot`` files.
    """
    from ._native import compile_watch
    from .distributed import RankError, launched_comm
    # a cold numba cache (the very first run) compiles the native code: say so at once
    watch = compile_watch(on_first=lambda: _out("compiling native code, one time (later runs load it "
                                                "from the cache) ...")).start()
    comm = launched_comm("fastbp train")          # None unless started by mpiexec -n N>1
    if comm is None:
        d, t_loaded, step, opt = _setup(args, False)
    else:
        from .distributed import DistributedStep, agree
        State.rank = comm.Get_rank()
        setup_error = None
        try:
            d, t_loaded, step, opt = _setup(args, True)
        except Exception as e:  # noqa: BLE001 - raised on every rank by agree()
            setup_error = e
        agree(comm, setup_error, "fastbp train: checking the arguments, loading the data or compiling")
        step = DistributedStep(step, comm)    # rank 0's weights; threads capped per rank
    regression = args.task == "regression"
    n_out = 1 if regression else len(d.classes)
    Ttr = _targets(args.loss, d.ytr, n_out, step.dtype)
    t_compiled = time.perf_counter()

    widths = "-".join(str(w) for w in [d.Xtr.shape[1], *args.hidden, n_out])
    n_all = d.Xtr.shape[0] + d.Xte.shape[0]
    target = (f"target {d.label_name!r}" if d.label_name else "1 target") if regression else \
        f"{n_out} classes"
    _out(f"data: {d.name}: {n_all} samples, {d.Xtr.shape[1]} features, {target} "
         f"({d.Xtr.shape[0]} train / {d.Xte.shape[0]} test)")
    batch = (f"batch {step.batch_size}" if comm is None else
             f"batch {step.batch_size} per rank x {comm.Get_size()} ranks")
    blocks = "".join([" + batchnorm" if args.batchnorm else "",
                      f" + dropout {args.dropout:g}" if args.dropout else ""]) if args.hidden else ""
    act = f" {args.activation}" if args.hidden else " (linear)"
    _out(f"model: {widths}{act}{blocks}, loss {args.loss}, {opt!r}, {batch}, "
         f"{args.epochs} epochs, {args.dtype}{bf16_note(step)}, {args.device}")

    hist = {"loss": [], "train_acc": [], "test_acc": [], "epoch_s": []}
    bar = _Progress(args.epochs, args.quiet or State.rank != 0, regression)
    chance = _chance(d)
    initial = _model_loss(step, d.Xtr, Ttr)
    epoch = 0
    try:
        for epoch in range(1, args.epochs + 1):
            t = time.perf_counter()
            losses = np.asarray(step.fit(d.Xtr, Ttr, epochs=1, shuffle=True,
                                         seed=args.seed * 100003 + epoch))
            hist["epoch_s"].append(time.perf_counter() - t)
            hist["loss"].append(float(losses.mean()))       # the global loss under MPI
            if State.rank == 0:
                hist["train_acc"].append(_score(step, d.Xtr, d.ytr))
                hist["test_acc"].append(_score(step, d.Xte, d.yte))
                bar.update(epoch, hist["loss"][-1], hist["train_acc"][-1], hist["test_acc"][-1],
                           hist["epoch_s"][-1])
            # every rank sees the same (global) losses: all stop together
            msg = _diverged(args, hist, initial, None, chance)
            if msg:
                raise _all_ranks_like(CliError(msg), _every_rank(comm))
    except (FloatingPointError, RankError) as e:
        raise _all_ranks_like(CliError(f"training diverged at epoch {epoch}: {e} (the learning rate is "
                                       "probably too large: try a smaller --lr)"), e) from None
    finally:
        bar.close()
    if State.rank == 0:
        msg = _diverged(args, hist, initial, _model_loss(step, d.Xtr, Ttr), chance)
    else:
        msg = None
    if comm is not None:
        from .distributed import agree
        agree(comm, CliError(msg) if msg else None, "training diverged (see rank 0)")
    elif msg:
        raise CliError(msg)
    t_trained = time.perf_counter()
    watch.stop()
    ep = np.array(hist["epoch_s"])
    if State.rank != 0:
        if args.save is not None:
            _save_model(args, step, comm, d, hist, ep)
        return 0

    score = hist["test_acc"][-1]
    n_te = d.Xte.shape[0]
    if regression:
        pred = np.asarray(step.predict(d.Xte), dtype=np.float64) * d.y_scale + d.y_mean
        d.rmse = float(np.sqrt(np.mean((pred[:, 0] - d.y_raw_te) ** 2)))
        result = f"test R^2: {score:.4f} (RMSE {d.rmse:.4g} in target units, {n_te} samples)"
    else:
        result = f"test accuracy: {score:.4f} ({int(round(score * n_te))}/{n_te})"
    if args.save is not None:   # the files before any output: a closed stdout (`| head`) lost the model
        _save_model(args, step, comm, d, hist, ep)
    if args.plot is not None:
        _plot(args.plot, hist, regression)
    _out(result)
    _out(f"time per epoch: {_ms(float(ep.mean()))} (mean of {len(ep)} epochs; median "
         f"{_ms(float(np.median(ep)))}; the first {_ms(ep[0])})")
    if watch.compiled:
        _out(f"compiling native code, one time: {watch.seconds:.1f} s (included in the times above)")
    if args.save is not None:
        _out(f"checkpoint: {args.save} (the model with its preprocessing; use it with: "
             f"fastbp predict --model {args.save} --data FILE)")
    if args.plot is not None:
        _out(f"plot: {args.plot}")
    t_end = time.perf_counter()
    _out(f"total time: {t_end - t_start:.2f} s (start-up and imports {t_main - t_start:.2f} s, data "
         f"{t_loaded - t_main:.2f} s, compile {t_compiled - t_loaded:.2f} s, training with "
         f"per-epoch evaluation {t_trained - t_compiled:.2f} s)")

    if args.compare:
        sk_score, sk_ep = _compare(args, d)
        # scikit-learn's classifier trains log-loss, its regressor squared error
        same_loss = args.loss == ("mse" if regression else "softmax_cross_entropy")
        note = "" if same_loss else " (scikit-learn always trains with log-loss)"
        fb_med, sk_med = float(np.median(ep)), float(np.median(sk_ep))
        col = "test R^2" if regression else "test acc"
        _out("")
        _out(f"side by side, same split, architecture, optimizer and epochs{note}:")
        _out(f"  {'':14s}{col:>10s}{'per epoch':>12s}{'training':>12s}")
        _out(f"  {'fastbp':14s}{score:>10.4f}{_ms(fb_med):>12s}{_ms(float(ep.sum())):>12s}")
        _out(f"  {'scikit-learn':14s}{sk_score:>10.4f}{_ms(sk_med):>12s}{_ms(float(sk_ep.sum())):>12s}")
        if fb_med <= sk_med:
            _out(f"  fastbp is {sk_med / max(fb_med, 1e-12):.1f}x faster per epoch (medians)")
        else:
            _out(f"  scikit-learn is {fb_med / max(sk_med, 1e-12):.1f}x faster per epoch (medians)")
    return 0


class _EveryRank(Exception):
    pass


def _every_rank(comm):
    """A marker cause: an error every rank raises by itself (same global losses)."""
    e = _EveryRank()
    e.fastbp_all_ranks = True
    e.fastbp_failed_ranks = comm.Get_size() if comm is not None else 1
    return e


def _process_age():
    """Seconds since this process started (Linux), else 0: the total time then
    includes the interpreter's start and the imports, as ``time fastbp train`` does."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
    return age if 0.0 <= age < 3600.0 else 0.0


def main(argv=None):
    """Entry point of the ``fastbp`` console script; returns the exit status.

    ``argv``: the arguments (default: ``sys.argv[1:]``).  Without ``argv`` (the
    console script, which exits with the status) the objects left at the end
    are frozen out of Python's garbage collector (:func:`gc.freeze`): the
    interpreter's collections at exit walked every object that numba,
    scikit-learn and pandas had made, 0.3-0.4 s of a 1.7 s ``fastbp train``
    on the 2-core machine; the memory goes back to the system at exit anyway.
    """
    status = _run(argv)
    if argv is None:
        gc.freeze()
    return status


def _run(argv):
    t_main = time.perf_counter()
    t_start = t_main - (_process_age() if argv is None else 0.0)
    try:
        debug = env_flag("FASTBP_DEBUG")
    except ValueError as e:
        return _report(f"fastbp: error: {e}", 2, e)
    try:
        try:
            args = extend_parser(build_parser()).parse_args(argv)
        except SystemExit as e:  # --help, --version
            return e.code if isinstance(e.code, int) else 0
        if args.command == "train":
            return train(args, t_start, t_main)
        from . import _cli_model
        return _cli_model.run(args)
    except _UsageError as e:
        if debug:
            raise
        return _report(str(e), 2, e)
    except KeyboardInterrupt as e:
        return _report("fastbp: interrupted", 130, e)
    except BrokenPipeError:      # stdout closed early (| head): no message, nothing more to flush
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except CliError as e:
        if debug:
            raise
        return _report(f"fastbp: error: {e}", 1, e)
    except ImportError as e:
        if debug:
            raise
        return _report(f"fastbp: error: {e}", 1, e)
    except (ValueError, TypeError, OSError, FloatingPointError, MemoryError) as e:
        if debug:
            raise
        return _report(f"fastbp: error: {e}", 1, e)
    except Exception as e:  # never a traceback for the user; FASTBP_DEBUG=1 shows it
        if debug:
            raise
        from .distributed import RankError
        if isinstance(e, RankError):
            return _report(f"fastbp: error: {e}", 1, e)
        return _report(f"fastbp: internal error: {type(e).__name__}: {e} (rerun with FASTBP_DEBUG=1 "
                       "for the traceback)", 1, e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
