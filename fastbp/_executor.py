"""The native executor: runs a compiled graph's instruction tape in one call.

The compiler (:mod:`fastbp.compiler`) turns a graph into data: one flat
``arena`` holding every parameter, gradient, optimizer state and activation,
a buffer table ``bufs`` (offset, rows, cols; rows = -1 means "the minibatch
size") and an instruction ``tape``.  This module is the only code that runs
them, and it is compiled once per dtype and cached on disk: compiling a new
architecture compiles nothing.  A step passes its arrays (those three, the
hyper-parameters, a float64 workspace, its JIT GEMM table and the table of
kernel addresses) by address, in one int64 vector (:func:`context`), and the
minibatch as arrays.

The interpreter is a dispatch loop: each instruction runs in its opcode's
handler (:mod:`fastbp._handlers`), and the handlers call the loop kernels,
all by address (:mod:`fastbp.kernels.table`, :func:`fastbp._native.kcall`):
each is compiled on its own, once per dtype, when the first step whose tape
uses it is built; nothing is compiled (or re-optimised) for an opcode or a
kernel that no step of the process uses.

Threading: everything here runs serially in the calling thread; the large
matrix products go to the BLAS (``_blas_mm``), whose own threads are then
the only ones running.  Small products use fastbp's own loops, so a tiny
step never pays a thread wake-up (README, "Threading design").

Status codes returned by :func:`run_step`: see ``STATUS_*``.
"""
import weakref

import numba
import numpy as np

from . import _blas
from ._jit import unmanaged_c
from ._arena_views import _c_rows, _empty, _view
from ._native import LOCK as _NATIVE_LOCK, native_address, native_kernel, twin
from . import config as _config
from .config import BLAS_MIN_MACS, BLAS_THREADS_MIN_MACS, JIT_MAX_MACS  # noqa: F401 - re-exported
from .kernels.gemm import BLAS_AVAILABLE, BLAS_THREAD_CONTROL, JIT_SLOT, blas_set_threads
from .kernels.table import HANDLED_OPS, K_HANDLER, N_KERNELS, I1, I64, a2, kcall_at, kernels_for
from .kernels.table import (K_ACT, K_ADAM, K_BCE_LOGITS, K_BLAS_MM, K_COLSUM,  # noqa: F401 - re-exported
                            K_GATE_BWD, K_GATE_FWD, K_JIT_MM, K_MM_SMALL, K_MSE, K_PROTO_BIAS_ACT, K_PROTO_BWD,
                            K_PROTO_FWD, K_SGD, K_SOFTMAX_XENT, K_SUM_BWD, K_SUM_FWD, K_SVM, N_ROLES, K_MM,
                            K_CLIP_GRAD_NORM, K_WEIGH_ROWS, K_SUM_SQ, K_CLIP_LOSS, K_ADAM_DECOUPLED, K_ADAM_L2, K_POISSON, K_RMSPROP, K_DROPOUT, GATE_ROLES, K_GATE, K_BN_BWD,
                            K_BN_FWD, K_BN_RUNNING, K_LN_BWD, K_LN_FWD)
from ._handlers import arrays, jit_slot  # noqa: F401 - jit_slot re-exported
from . import _handlers_update  # noqa: F401 - registers the update instructions' handlers
from . import _compile_pool
from ._jit import jit

from ._isa import (  # noqa: F401 - re-exported: the executor reads and writes this format
    OP_LOAD_X, OP_LINEAR, OP_MATMUL, OP_GATE, OP_ACT, OP_SUM, OP_LOSS, OP_SEED, OP_LINEAR_BWD, OP_MATMUL_BWD,
    OP_GATE_BWD, OP_ACT_BWD, OP_SUM_BWD, OP_SGD, OP_ADAM, C_OP, C_OUT, C_A, C_B, C_C, C_D, C_E, C_F, C_G,
    C_F1, C_F2, C_F3, C_F4, C_F5, C_P, TAPE_WIDTH, X_ARENA, X_ARENA_N, X_BUFS, X_BUFS_N, X_TAPE, X_TAPE_N, X_HYPER,
    X_WS64, X_WS64_N, X_GJIT, X_GJIT_N, X_BATCH, X_KTAB, X_RUN, CONTEXT_SIZE, S_FWD, S_LOSS, S_BWD, S_END, H_LR,
    H_MOM, H_NESTEROV, H_WD, H_B1, H_B2, H_EPS, H_DECOUPLED, H_T, H_BLAS_MIN, H_STEPS, H_BT_ON, H_BT_MAX,
    H_BT_CUR, H_BT_MIN, H_JIT_ON, RUNTIME_SLOTS, HYPER_SIZE, MODE_FORWARD, MODE_GRAD, MODE_TRAIN, STATUS_OK,
    STATUS_LOSS_NONFINITE, STATUS_GRAD_NONFINITE, STATUS_BAD_LABEL, STATUS_BAD_INPUT, STATUS_BAD_OP, OP_CAPACITY)
from ._isa import OP_RMSPROP, H_CLIP, H_ALPHA, H_WEIGHTED, HYPER_SIZE_V1  # noqa: F401 - re-exported
from ._isa import OP_DROPOUT, OP_DROPOUT_BWD, H_RNG_SEED, H_TRAINING, H_AXPY_MIN, H_ASUM_MIN  # noqa: F401 - re-exported
from ._isa import OP_BATCHNORM, OP_BATCHNORM_BWD, OP_LAYERNORM, OP_LAYERNORM_BWD  # noqa: F401 - re-exported

#: the handlers' prototype: kcall_at types every handler call by its signature
K_PROTO_HANDLER = K_HANDLER + OP_LINEAR
#: per opcode, whether it has a handler (a global: numba compiles it in as a constant)
_HANDLED = np.zeros(OP_CAPACITY, dtype=np.bool_)
_HANDLED[list(HANDLED_OPS)] = True


def context(arena, bufs, tape, hyper, ws64, gjit, batch_size, threads=False):
    """The executor context of a step: one int64 vector of the addresses and
    sizes of its arrays, which the compiled entry points take instead of
    the arrays themselves (each array argument costs ~55 ns to unbox: 0.23 us
    of a tiny step), and the most rows a minibatch may have.

    ``threads``: the step runs on numba's threads (the parallel twins of its
    kernels, its products split over them on one BLAS thread each; see
    :func:`step_threads`), else its kernels are serial and its large products
    run on the BLAS's threads.

    The caller keeps every one of these arrays alive, unmoved, for as long as
    it uses the context; only C-contiguous arrays of the executor's dtypes.
    """
    want = ((arena, "arena", None, 1), (bufs, "bufs", np.int64, 2), (tape, "tape", np.int64, 2),
            (hyper, "hyper", np.float64, 1), (ws64, "ws64", np.float64, 1), (gjit, "gjit", np.int64, 1))
    for a, name, dt, nd in want:
        if (not isinstance(a, np.ndarray) or a.ndim != nd or not a.flags.c_contiguous
                or not a.flags.writeable or (dt is not None and a.dtype != dt)):
            raise ValueError(f"executor context: {name} must be a writeable C-contiguous {nd}-D "
                             f"{'float' if dt is None else np.dtype(dt).name} array")
    if bufs.shape[1] != 3 or tape.shape[1] != TAPE_WIDTH or hyper.shape[0] != HYPER_SIZE:
        raise ValueError("executor context: bufs, tape or hyper has the wrong width")
    ktab = kernel_table(arena.dtype, tape, threads)
    run = _ensure_run_tape(arena.dtype)
    return np.array([arena.ctypes.data, arena.shape[0], bufs.ctypes.data, bufs.shape[0], tape.ctypes.data,
                     tape.shape[0], hyper.ctypes.data, ws64.ctypes.data, ws64.shape[0], gjit.ctypes.data,
                     gjit.shape[0], batch_size, ktab.ctypes.data, run], dtype=np.int64)


#: per (dtype, threads): the addresses of the native kernels loaded so far (0: not loaded)
_KTABS = {}


def step_threads(plan, batch_size, dtype):
    """Whether a step runs on numba's threads (``context(threads=True)``): its
    elementwise kernels' parallel twins and its products split over the same
    threads, one BLAS thread each -- one threading runtime for the whole step,
    where the BLAS's own threads and numba's would spin against each other.

    Only with a BLAS whose products split by rows give the same bits as one
    call (OpenBLAS: each element is one dot product over ``k``), and for a step
    whose largest minibatch activation has at least
    :data:`fastbp.config.STEP_THREADS_MIN_ELEMENTS` elements (smaller steps lose
    more to starting parallel regions than they gain).  Not a function of the
    number of threads: a parallel twin may round differently from its serial
    kernel (fast-math contraction is decided per compilation), so a step runs
    the same compiled code at any thread count (one thread runs each parallel
    loop, and each product in one block)."""
    batch_sized = plan.bufs[:, 1] < 0
    if 0 <= plan.x_buf < batch_sized.shape[0]:
        batch_sized[plan.x_buf] = False     # the input: read by the first product, no elementwise pass
    widest = int(plan.bufs[batch_sized, 2].max()) if batch_sized.any() else 0
    return threads_for(widest, batch_size, dtype)


def threads_for(widest, batch_size, dtype):
    """:func:`step_threads` of a step whose widest minibatch activation (not
    its input) has ``widest`` columns."""
    if (not BLAS_AVAILABLE or not _blas.SPLIT_EXACT or not BLAS_THREAD_CONTROL
            or np.dtype(dtype) not in (np.float32, np.float64)):
        return False
    return batch_size * widest >= _config.STEP_THREADS_MIN_ELEMENTS      # (read per step)

def _ensure_run_tape(dtype):
    """Compile (or load from the cache) :func:`run_tape` for the arguments a
    step passes (C-contiguous arrays of ``dtype``), so that the one-time
    compilation happens in :func:`fastbp.compile`, not inside the first step;
    returns the address of its native code (context slot ``X_RUN``)."""
    return native_address(K_RUN_TAPE, np.dtype(dtype))


def kernel_table(dtype, tape, threads=False):
    """The table of native kernel addresses for ``dtype`` (int64, ``N_KERNELS``;
    kept alive for the process), with every kernel ``tape`` uses loaded;
    ``threads``: each kernel's parallel twin where it has one (see :func:`context`)."""
    return load_kernels(dtype, kernels_for(tape), threads)


def load_kernels(dtype, kids, threads=False):
    """Load the native kernels ``kids`` (``K_*``) for ``dtype`` into the process's
    table of kernel addresses (compiling them, or loading them from numba's disk
    cache, where not loaded yet) and return the table (see :func:`kernel_table`).

    A step loads the kernels of its tape when it is built, and the optional ones
    when it first needs them: gradient clipping (``K_CLIP_GRAD_NORM``, when
    ``clip_grad_norm`` is set) and sample weights (``K_WEIGH_ROWS``, on the first
    weighted call).  A kernel called before it is loaded raises RuntimeError in
    the step, never a call to address 0 (:func:`fastbp._native.kcall`).
    """
    dtype, kids = np.dtype(dtype), tuple(kids)
    tab = _KTABS.get((dtype, bool(threads)))
    if tab is not None and all(tab[k] != 0 for k in kids):
        return tab          # loaded: no lock
    with _NATIVE_LOCK:      # one thread loads; another building a step at once waits, then finds them
        tab = _KTABS.setdefault((dtype, bool(threads)), np.zeros(N_KERNELS, dtype=np.int64))
        missing = [k for k in sorted(kids) if tab[k] == 0]
        if missing:
            load = [twin(k) for k in missing] if threads else missing
            # with the interpreter: the first step of a process loads (or compiles) all at once,
            # on two cores when much must be compiled (fastbp._compile_pool)
            got = _compile_pool.load(dtype, load + [K_RUN_TAPE], keep_here=_COMPILE_HERE)
            for k, lk in zip(missing, load):
                tab[k] = got[lk]
    return tab


@jit(python=True)
def run_tape(ctx, lo, hi, nb, x, yi, yf):
    """Run instructions ``lo .. hi-1`` of the step whose executor context
    (:func:`context`) is ``ctx``.  Returns ``(status, loss, info)``.

    A dispatch loop: each instruction runs in the handler of its opcode
    (:mod:`fastbp._handlers`), called by address; the interpreter itself
    loads the minibatch and seeds the gradient.  An unknown opcode (a
    corrupt tape) stops the run with ``STATUS_BAD_OP``.

    The BLAS's thread count is read by the first BLAS product and restored
    last: inside, each product chooses one thread or that many.
    """
    if nb < 1 or nb > ctx[X_BATCH]:
        return STATUS_BAD_INPUT, 0.0, 0
    # Views of these arrays skip numba's atomic reference counting (~20% of a
    # tiny step): all of them stay alive for the call, no view escapes.
    arena, bufs, tape, hyper, _, gjit, kt = arrays(ctx, x)
    # Typed C-contiguous (one type for every handler, whatever the caller
    # passed): their rows, widths and layout are checked (LOAD_X here, the
    # loss handler) before anything reads them.
    x = unmanaged_c(x)
    yi = unmanaged_c(yi)
    yf = unmanaged_c(yf)
    # JIT GEMM kernels are made for full minibatches (gjit[0] rows) only
    jbase = -1
    if hyper[H_JIT_ON] != 0.0 and gjit.shape[0] >= 1 + JIT_SLOT * 2 * tape.shape[0] and gjit[0] == nb:
        jbase = 1
    # the BLAS's thread count: read by the first BLAS product (a step of JIT
    # kernels makes none), restored at the end
    hyper[H_BT_CUR] = -1.0
    status = STATUS_OK
    info = 0
    loss = 0.0
    xb = -1         # the buffer read from x in place, once LOAD_X has run
    carry = np.int64(-1)    # kept between handlers (BatchNorm's running update: the gradients' finiteness)
    for pc in range(lo, hi):
        op = tape[pc, C_OP]
        if op == OP_LOAD_X:
            out_buf = tape[pc, C_OUT]
            if x.shape[0] != nb or x.shape[1] != bufs[out_buf, 2] or not _c_rows(x):
                status = STATUS_BAD_INPUT
                break
            if tape[pc, C_F1] != 0:
                # every later read of this buffer gets x itself: no copy (2.4 MB
                # per step on cs231n); nothing ever writes the input's buffer
                xb = out_buf
            else:
                out = _view(arena, bufs, out_buf, nb).ravel()
                src = x.ravel()
                for i in range(out.shape[0]):
                    out[i] = src[i]
        elif op == OP_SEED:
            out = _view(arena, bufs, tape[pc, C_OUT], nb)
            out[:, :] = 1.0
        elif op < 0 or op >= OP_CAPACITY or not _HANDLED[op]:
            status = STATUS_BAD_OP      # a corrupt tape: the compiler emits known opcodes only
            break
        else:
            # (a handler that was not loaded for this step raises RuntimeError)
            status, got, carry = kcall_at(kt, K_HANDLER + op, K_PROTO_HANDLER,
                                          (ctx, np.int64(pc), nb, x, yi, yf, np.int64(xb), jbase, carry))
            if op == OP_LOSS:
                loss = got
            if status != STATUS_OK:
                info = carry
                break
    if hyper[H_BT_ON] != 0.0 and hyper[H_BT_CUR] >= 0.0 and hyper[H_BT_CUR] != hyper[H_BT_MAX]:
        blas_set_threads(int(hyper[H_BT_MAX]))
    return status, (0.0 if status == STATUS_BAD_LABEL else loss), info


#: the interpreter as a native kernel: the native loops (:func:`run_fit`,
#: :func:`run_predict`, :func:`run_update`) call it by address (context slot
#: ``X_RUN``), so each of them compiles in well under a second instead of
#: re-optimising a copy of the interpreter (seconds each, per dtype), and runs
#: exactly the code a single step runs.  (Not an index of the kernel table.)
K_RUN_TAPE = 1 << 20
native_kernel(K_RUN_TAPE, run_tape, numba.types.Tuple((I64, numba.types.float64, I64)),
              lambda d: (I1, I64, I64, I64, a2(d), I1, a2(d)))     # (the step's checked path calls it)
#: what this process compiles when a helper process compiles the rest (fastbp._compile_pool):
#: the interpreter, its handlers and its product dispatcher
_COMPILE_HERE = frozenset([K_RUN_TAPE, K_MM, *range(K_HANDLER, K_HANDLER + OP_CAPACITY)])

#: what this process keeps when the helper starts ahead of the step (compile_ahead): nothing,
#: as this process has other work first; it takes units from the end of the helper's list
#: when that work is done (fastbp._compile_pool)
_COMPILE_HERE_AHEAD = frozenset()


def compile_ahead(dtype, tape, threads=False):
    """Start compiling the native kernels that running ``tape`` needs for ``dtype``,
    and that numba's disk cache lacks, in a helper process, before any step is
    built (:func:`fastbp._compile_pool.start_ahead`); the first step built for
    ``dtype`` then compiles only the rest.  ``threads``: the step will run on
    numba's threads (:func:`step_threads`).  Returns whether a helper started.

    Raises
    ------
    ValueError
        ``tape`` holds an opcode or a code this executor does not know.
    """
    # (the pool orders the helper's list: fastbp._compile_pool._compile_order)
    kids = sorted(kernels_for(tape))
    if threads:         # a step on numba's threads (see step_threads) loads the parallel twins
        kids = [twin(k) for k in kids]
    kids.append(K_RUN_TAPE)
    return _compile_pool.start_ahead(dtype, kids, keep_here=_COMPILE_HERE_AHEAD)


def run_step(ctx, sec, nb, x, yi, yf, mode):
    """One call: forward (+ loss + backward (+ update)) for a minibatch of ``nb`` rows.

    ``mode``: MODE_FORWARD, MODE_GRAD (no update) or MODE_TRAIN.  The update
    runs only after the loss and every gradient are known to be finite, so a
    failed step leaves parameters and optimizer state untouched.  A plain
    Python function (the section bounds are picked here): only
    :func:`run_tape` is compiled.
    """
    hi = sec[S_FWD]
    if mode != MODE_FORWARD:
        hi = sec[S_BWD] if mode == MODE_GRAD else sec[S_END]
    return run_tape(ctx, 0, hi, nb, x, yi, yf)


@jit
def _copy_row(src, i, dst, j):
    """``dst[j, :] = src[i, :]`` as a loop (equal widths: the caller's buffers).

    numba's slice assignment would compile its shape-mismatch error message,
    which formats tuples into strings: seconds of compilation per caller."""
    for c in range(dst.shape[1]):
        dst[j, c] = src[i, c]


@jit(python=True)
def run_fit(ctx, sec, X, Yi, Yf, perm, starts, in_order, xbuf, yfbuf, yi_stage, losses, lrs):
    """Whole epochs in one call: each minibatch is the rows ``perm[starts[s]:starts[s+1]]``.

    ``lrs``: float64, the learning rate of each step (a schedule), written into
    ``hyper[H_LR]`` before the step; empty: the step's rate is kept.

    Shuffled (``in_order`` False), the rows are gathered into the input
    buffers first; in order (each minibatch's rows consecutive in ``X``), the
    minibatch is read where it lies, exactly as a call of the step on the
    slice.  Returns ``(status, step, info)``: on failure ``step`` is the index
    of the step that failed (earlier steps are applied).
    """
    arena, bufs, _, hyper, _, _, _ = arrays(ctx, X)
    n_steps = starts.shape[0] - 1
    classif = Yi.shape[0] > 0
    for s in range(n_steps):
        if lrs.shape[0] > 0:
            hyper[H_LR] = lrs[s]
        lo = starts[s]
        nb = starts[s + 1] - lo
        if in_order:
            r0 = perm[lo]
            xin = X[r0:r0 + nb]
            yi_v = Yi[r0:r0 + nb] if classif else yi_stage[:0]
            yf_v = _empty(arena) if classif else Yf[r0:r0 + nb]
            first = 0
        else:
            xin = _view(arena, bufs, xbuf, nb)
            for r in range(nb):
                _copy_row(X, perm[lo + r], xin, r)
            yi_v = yi_stage[:nb]
            if classif:
                for r in range(nb):
                    yi_stage[r] = Yi[perm[lo + r]]
                yf_v = _empty(arena)
            else:
                yf_v = _view(arena, bufs, yfbuf, nb)
                for r in range(nb):
                    _copy_row(Yf, perm[lo + r], yf_v, r)
            first = 1   # the LOAD_X instruction (tape[0]) is skipped: the rows are in place
        status, loss, info = kcall_at(ctx, X_RUN, K_RUN_TAPE, (ctx, first, sec[S_END], nb, xin, yi_v, yf_v))
        if status != STATUS_OK:
            return status, s, info
        losses[s] = loss
    return STATUS_OK, n_steps, 0


@jit(python=True)
def run_predict(ctx, sec, X, out, batch_size, outbuf):
    """Forward pass over ``X`` in chunks of ``batch_size``; network outputs into ``out``.

    Returns ``(status, row)``: ``STATUS_OK`` and ``n``, or the status of the first
    chunk the tape rejected and its first row (``out`` filled only before it).
    """
    arena, bufs, _, _, _, _, _ = arrays(ctx, X)
    n = X.shape[0]
    yi = bufs[0, :0]        # an empty int64 vector that allocates nothing
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        nb = hi - lo
        status, _, _ = kcall_at(ctx, X_RUN, K_RUN_TAPE, (ctx, np.int64(0), sec[S_FWD], nb, X[lo:hi], yi, _empty(arena)))
        if status != STATUS_OK:
            return status, lo
        got = _view(arena, bufs, outbuf, nb)
        for r in range(nb):
            _copy_row(got, r, out, lo + r)
    return STATUS_OK, n


@jit(python=True)
def run_update(ctx, sec, x):
    """Only the optimizer update (after the gradients were reduced across ranks).
    ``x``: any 2-D array of the step's dtype (empty: it is not read)."""
    yi = sec[:0]            # an empty int64 vector that allocates nothing
    return kcall_at(ctx, X_RUN, K_RUN_TAPE, (ctx, sec[S_BWD], sec[S_END], np.int64(1), x, yi, x))


def sgd_axpy_candidate(tape, min_params=None):
    """Whether a step's tape has an SGD update of at least ``min_params``
    (default :data:`fastbp.config.SGD_AXPY_MIN_PARAMS`) parameters, one that may
    run through the BLAS's axpy (and, from :data:`fastbp.config.SGD_ASUM_MIN_PARAMS`,
    check its gradients through the BLAS's asum; see :func:`runtime_hyper`); a
    step without one never asks :func:`fastbp._blas.axpy_exact` (or
    :func:`fastbp._blas.asum_propagates`): the check sets the BLAS's thread count, and
    OpenBLAS's woken threads might spin on a core that a cold start's compilation
    could use (not measurable here: interleaved cold runs with and without the
    check agreed within this machine's noise)."""
    sgd = tape[:, C_OP] == OP_SGD
    if min_params is None:
        min_params = _config.SGD_AXPY_MIN_PARAMS
    return bool(sgd.any()) and int(tape[sgd, C_F4].max()) >= min_params


def runtime_hyper(hyper, threads=False, axpy_dtype=None, asum_dtype=None):
    """Fill the process-specific slots of a hyper-parameter array (BLAS policy);
    ``threads``: a step on numba's threads (:func:`step_threads`), whose every
    product runs on one BLAS thread (the split products run one per numba thread).

    ``axpy_dtype``: the dtype of a step whose plain SGD update may run through
    the BLAS's axpy on the threads of its products (``hyper[H_AXPY_MIN]``, from
    :data:`fastbp.config.SGD_AXPY_MIN_PARAMS`); only on the BLAS's threads
    (not ``threads``) and where :func:`fastbp._blas.axpy_exact` holds (the bits
    of fastbp's own kernel).  ``None``: never (a step without an update, or
    whose products run elsewhere).

    ``asum_dtype``: likewise, the dtype of a step whose large plain SGD updates
    through the axpy may check their gradients for NaN and infinities through
    the BLAS's asum on the same threads (``hyper[H_ASUM_MIN]``, from
    :data:`fastbp.config.SGD_ASUM_MIN_PARAMS`), where the axpy is used and
    :func:`fastbp._blas.asum_propagates` holds (0 otherwise)."""
    # without a BLAS every product runs in the plain loops
    hyper[H_BLAS_MIN] = BLAS_MIN_MACS if BLAS_AVAILABLE else float(2 ** 62)
    hyper[H_BT_ON] = 1.0 if BLAS_THREAD_CONTROL else 0.0
    hyper[H_BT_MIN] = float(2 ** 62) if threads else BLAS_THREADS_MIN_MACS
    hyper[H_JIT_ON] = 1.0 if _blas.GEMM_JIT else 0.0
    axpy = (axpy_dtype is not None and not threads and BLAS_THREAD_CONTROL
            and _blas.axpy_exact(axpy_dtype))
    hyper[H_AXPY_MIN] = float(_config.SGD_AXPY_MIN_PARAMS) if axpy else 0.0
    # the asum checks only an update that runs through the axpy (see _handlers_update._opening)
    asum = axpy and asum_dtype is not None and _blas.asum_propagates(asum_dtype)
    hyper[H_ASUM_MIN] = float(_config.SGD_ASUM_MIN_PARAMS) if asum else 0.0
    return hyper


def gemm_jit_table(plan, batch_size, owner):
    """A step's table of JIT GEMM kernels (int64, ``gjit`` of :func:`context`):
    ``[batch_size, (kernel, jitter, m, n, k) per product slot...]``, all 0
    until each product makes its kernel on first use.  The kernels are freed
    when ``owner`` (the step) is garbage-collected."""
    table = np.zeros(1 + JIT_SLOT * 2 * plan.tape.shape[0], dtype=np.int64)
    table[0] = batch_size
    weakref.finalize(owner, _blas.gemm_jit_destroy, table[2::JIT_SLOT])
    return table
