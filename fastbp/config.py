"""Every tuning threshold of fastbp, in one place.

Each constant is a measured crossover on the development machine (the
measurements are next to it); ``FASTBP_PARALLEL_THRESHOLD`` overrides the one
that users tune most.  Nothing here changes results, only which code path
computes them (and with how many threads), except where stated.  The CUDA
launch shapes live with the CUDA launch helpers
(:mod:`fastbp.kernels.cuda.launch`): they are part of the kernels' contract.

Plain module-level numbers: numba compiles them in as constants.
"""
import os

from ._env import EnvError


def _env_int(name, default):
    """The non-negative integer in environment variable ``name`` (unset or empty: ``default``);
    EnvError (a ValueError) naming the variable otherwise."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise EnvError(f"{name}={os.environ[name]!r}: expected a non-negative integer")
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_flag(name, default=False):
    """The boolean in environment variable ``name``: 1/true/yes/on or 0/false/no/off, any case
    (unset or empty: ``default``); EnvError (a ValueError) naming the variable for any other value."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in _TRUE + _FALSE:
        raise EnvError(f"{name}={os.environ[name]!r} is not one of: {', '.join(_TRUE + _FALSE)}")
    return raw in _TRUE


def _env_choice(name, default, choices):
    """The value of environment variable ``name``, lower-cased (unset or empty: ``default``);
    EnvError (a ValueError) naming the variable and ``choices`` for any other value."""
    raw = os.environ.get(name, "").strip().lower() or default
    if raw not in choices:
        raise EnvError(f"{name}={os.environ[name]!r} is not one of: {', '.join(choices)}")
    return raw


# ------------------------------------------------------ numba kernels (CPU)
#: Work (elements, or multiply-adds for products) below which a kernel's
#: serial variant is used.  Measured on the 2-core development machine: a
#: numba parallel region costs ~5-20 us to start, which only pays off above
#: roughly this much work.  Override with ``FASTBP_PARALLEL_THRESHOLD``.
PARALLEL_THRESHOLD = _env_int("FASTBP_PARALLEL_THRESHOLD", 1 << 17)

#: A float32/float64 CPU step whose widest minibatch activation (batch rows x
#: columns) has at least this many elements runs on numba's threads alone
#: (fastbp._executor.step_threads): the parallel twins of its elementwise
#: kernels, and its BLAS products split by rows over the same threads, one BLAS
#: thread each (OpenBLAS; the BLAS's own threads would spin against numba's).
#: Measured on the development machine (2 cores, OpenBLAS; asv StepThreads, the
#: same step built both ways): tabular (256x512 activations) 4.92 -> 4.22 ms per
#: step, medium (256x512) 4.78 -> 4.65 ms; small (64x128) stays serial (a
#: parallel region costs ~5-20 us to start, of a 0.25 ms step).
#: Override with ``FASTBP_STEP_THREADS_MIN``; read when a step is built.
STEP_THREADS_MIN_ELEMENTS = _env_int("FASTBP_STEP_THREADS_MIN", 1 << 17)

# ------------------------------------------------------ the fused step's products
#: Products with at least this many multiply-adds go to the BLAS; smaller ones
#: run in plain loops (``_mm_small``).  OpenBLAS's small-matrix kernels beat
#: loops from a few thousand multiply-adds up on the development machine (a
#: 32x64x32 product: 1.4 us BLAS, 2-4 us even with fastbp's register-tiled
#: loops, which ``fastbp.ops`` uses); the plain loops also keep the executor's
#: one-time compilation short.  Runtime setting: hyper[H_BLAS_MIN].
BLAS_MIN_MACS = 2048

#: BLAS products below this many multiply-adds run on ONE BLAS thread, larger
#: ones on the BLAS's configured number.  Measured on the development machine:
#: 32x64x256 (0.5 M) is ~1.7x slower on 2 threads than on 1; 64x784x128
#: (6.4 M) is 1.2x faster on 2.  Runtime setting: hyper[H_BT_MIN].
BLAS_THREADS_MIN_MACS = 1 << 21


def usable_cores():
    """The number of cores this process may run on (its affinity mask; :func:`os.cpu_count` off Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


#: The number of blocks a step on numba's threads cuts each large BLAS product
#: into (its rows, or its columns for a wide output; fewer where a block would
#: drop below BLAS_THREADS_MIN_MACS), each block one call on one BLAS thread
#: (fastbp.kernels.gemm._blas_mm_split): the machine's cores (os.cpu_count),
#: never numba's thread count.  So the blocks, and with them the bits of the
#: products, are the same at any numba thread count also where the BLAS does not
#: give a block the whole call's bits (fastbp._blas_split.split_exact: OpenBLAS's
#: Haswell kernels on an AVX2 CPU; its AVX-512 kernels in float64).  numba
#: compiles it in when it compiles the kernel, and its disk cache keeps that
#: value: so not the cores this process may run on (its affinity), which differ
#: between processes of one machine (taskset, mpiexec's binding) that share the
#: cache: a process on one core computed with the blocks of the two-core process
#: that had filled the cache, and one that compiled them itself with one block.
SPLIT_BLOCKS = max(1, os.cpu_count() or 1)

#: A plain SGD update (no momentum, no weight decay) of at least this many
#: parameters, in a step whose products run on the BLAS's threads, runs
#: through the BLAS's axpy on those threads (where fastbp._blas.axpy_exact:
#: the same bits as fastbp's kernel).  After a product on two BLAS threads,
#: the weights' cache lines are shared by both cores, and one core's stores
#: wait for the other's copies: measured on the development machine (numpy's
#: OpenBLAS, float32, update after a 64x784 @ 784xn product): 25,088
#: parameters 12.2 -> 9.4 us, 100,352: 43.9 -> 24.5, 200,704: 57.8 -> 26.7;
#: OpenBLAS runs axpy on one thread up to 10,000 elements.  Runtime setting:
#: hyper[H_AXPY_MIN].
SGD_AXPY_MIN_PARAMS = 1 << 14

#: A plain SGD update through the BLAS's axpy (SGD_AXPY_MIN_PARAMS) of at
#: least this many parameters checks its gradients for NaN and infinities
#: through the BLAS's asum on the same threads first (where
#: fastbp._blas.asum_propagates: a non-finite element makes the sum
#: non-finite), falling back to fastbp's element-wise check only when the sum
#: is not finite.  The gradients were just written by a product on both cores;
#: one core's scan waits for the other's cache lines, while asum's two threads
#: read the halves that the axpy's threads then update.  (An update by fastbp's
#: serial kernels, which reads every gradient on one core anyway, keeps the
#: serial check.)  Measured on the
#: development machine (numpy's OpenBLAS, float32, check + axpy update after
#: the dW product X^T dZ, median of 1,500): 3072x100 (cs231n's first layer)
#: 107 -> 64 us, 784x256 55 -> 29 us, 784x128 (100,352) 32 -> 34 us.  Whole
#: cs231n steps (the bench peer), the slot set and cleared in turn in one process:
#: 0-1% faster on the idle machine, 8-9% while other processes kept both cores busy.
#: Runtime setting: hyper[H_ASUM_MIN].
SGD_ASUM_MIN_PARAMS = 1 << 17

#: With oneMKL (fastbp._blas.GEMM_JIT), BLAS products of a full minibatch
#: that would run on one BLAS thread (below BLAS_THREADS_MIN_MACS) run through
#: a JIT GEMM kernel made for their shapes (one per product of the tape, on
#: first use; table from :func:`gemm_jit_table`).  Measured on the development
#: machine, float32, one thread, cblas_sgemm -> JIT kernel: 32x64x32 0.97 ->
#: 0.77 us, 32x32x10 0.36 -> 0.21, 64^3 3.6 -> 3.0, 200x100x10 5.2 -> 3.7,
#: 256x512x10 34.5 -> 28.7, 512x512x8 69 -> 45 (128^3: MKL declines to make
#: a kernel; such products stay with cblas).  Tiny step 8.1 -> 6.8 us.
JIT_MAX_MACS = BLAS_THREADS_MIN_MACS

#: precision="bf16" (oneDNN's bf16 gemm, fastbp.kernels.bf16): products below
#: this many multiply-adds run on ONE OpenMP thread (set around the call and
#: restored), larger ones on OpenMP's configured number.  Measured on the
#: development machine (AMD EPYC, AVX512-BF16, 2 cores, oneDNN 3.2): 32x100x64
#: 7.7 us on 1 thread and 8.2 on 2; 64x128x784 (6.4 M) 68 us on 1, 41 on 2; and
#: on a machine busy with another process a 2-thread product waits for its
#: second thread (256x512x512: 0.6 ms on 1 thread, 8 ms on 2).
BF16_THREADS_MIN_MACS = 1 << 21

#: precision="bf16": a linear layer whose forward product has fewer multiply-adds
#: than this at the step's full batch keeps its products in float32 (the rounding
#: and the library call cost more than bf16 saves there).  Measured on the
#: development machine (python -m fastbp.bench --precision fp32,bf16): the tiny
#: configuration (64-32-10, batch 32: 65 K and 10 K multiply-adds per layer) took
#: 10.4 us per step with every product in bf16 against 7.4 us in float32, while
#: small (784-128-10, batch 64: 6.4 M in its first layer) gained 1.36x.
BF16_MIN_MACS = 1 << 20

#: The CPU step folds a dropout's backward into the preceding activation's kept
#: derivative (fastbp._fold_plan: one pass and one mask fewer per dropout layer
#: per step; rounding differs from the unfolded backward in the last place).
#: Read when a step is built.
FOLD_DROPOUT = True

# ------------------------------------------------------ the step's Python drivers
#: ``predict`` runs its chunks (``batch_size`` rows each) in the native loop
#: ``run_predict`` from this many chunks up, and fewer through a Python loop of
#: the step's own compiled call (~1.5 us of overhead each).  run_predict's
#: one-time compilation takes ~5 s on the development machine (numba
#: re-optimises the whole interpreter inside it), which a small prediction,
#: like the per-epoch evaluation of ``fastbp train``, should not pay.
PREDICT_NATIVE_MIN_CHUNKS = 256

#: ``fit`` runs in the native loop ``run_fit`` (one call for all its steps)
#: from this many steps up, and fewer through a Python loop of the step's
#: own compiled call (~2 us of overhead per step).  run_fit's one-time
#: compilation takes ~3 s on the development machine; this keeps the first
#: run of ``fastbp train`` (45 steps per epoch on digits) from paying it.
FIT_NATIVE_MIN_STEPS = 64

# ------------------------------------------------------ fastbp.ops wrappers
#: Matrix products of at least this many multiply-adds (``m * k * n``) run
#: through the BLAS ``gemm`` (:func:`fastbp.kernels.gemm._blas_mm`); smaller
#: ones through the own register-tiled loop kernels, which skip BLAS's call
#: and packing overhead.  Measured on the 2-core development machine (timeit,
#: best of 15-25 repeats, serial loops vs one BLAS thread, OPENBLAS_CORETYPE
#: and OPENBLAS_L2_SIZE unset, float32 and float64, _mm_nn/_mm_nt/_mm_tn and
#: the fused _linear_fwd vs _blas_mm + _bias_act, shapes 4^3 .. 64^3 and odd
#: ones like 33x7x33, 10x20x30): up to ~2k multiply-adds the loops win
#: (8x8x8: 0.6-1.0 us vs 1.0-1.4 us; 4x32x16 linear+relu: 0.7-0.9 vs 1.1-1.7),
#: around 4k-8k the two tie on power-of-two shapes while BLAS already wins on
#: odd ones (16x16x16: 1.9-2.5 vs 0.9-2.5 us; 10x20x30: 2.5 vs 1.3 us;
#: 33x7x33: 4.4-5.0 vs 1.8-2.2 us), and from ~13k up BLAS wins by 1.5-8x
#: (24^3: 5.3 vs 2.2 us; 64x64x64: 12-37 vs 8-13 us).  The machine was
#: shared with other jobs while measuring, so the crossover is only good to
#: a factor of ~2.
OPS_BLAS_THRESHOLD = 4096

# ------------------------------------------------------ one-time compilation
#: When a step needs at least this many native kernels that are neither loaded
#: nor in numba's disk cache (the first run on a machine), a second process
#: compiles part of them into the disk cache while this one compiles the rest
#: (:mod:`fastbp._compile_pool`): numba compiles on one core, and the first
#: ``fastbp train`` on the 2-core development machine compiled ~13 s of native
#: code.  ``FASTBP_COMPILE_WORKERS``: ``auto`` (the default: when more than one
#: CPU is idle by the load average), ``1`` (whenever there are 2 CPUs) or ``0``
#: (off: the test suite, but for the tests of the pool itself).  Always off on a
#: single CPU, in frozen applications and when numba's disk cache is off.
#: Nothing here changes results: the code loaded from the cache is the code
#: compiled in process.
#: (the spellings of off and on: COMPILE_WORKERS_OFF, COMPILE_WORKERS_ON)
COMPILE_WORKERS_OFF = ("0", "off", "no", "false")
COMPILE_WORKERS_ON = ("1", "on", "yes", "true")
COMPILE_WORKERS = _env_choice("FASTBP_COMPILE_WORKERS", "auto",
                              ("auto",) + COMPILE_WORKERS_OFF + COMPILE_WORKERS_ON)
COMPILE_OFFLOAD_MIN = 4
#: How that second process starts: ``auto`` (the default) forks this process on
#: Linux when it runs no other Python thread and numba has not started its
#: threads (the child has fastbp and numba imported: a new interpreter spent
#: ~0.45 s of CPU importing them, on the first ``fastbp train`` of the 2-core
#: development machine, while both cores are busy), else starts ``python -m
#: fastbp._compile_helper``; ``spawn``: always the latter.
#: ``FASTBP_COMPILE_START``.
COMPILE_START = _env_choice("FASTBP_COMPILE_START", "auto", ("auto", "spawn"))
