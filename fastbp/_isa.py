"""fastbp's instruction set: what the compiler writes and both interpreters read.

The compiler (:mod:`fastbp.compiler`) emits a tape of int64 instructions over
one arena; the CPU interpreter (:mod:`fastbp._executor`) and the CUDA one
(:mod:`fastbp.cuda_step`) run it.  This module is the only definition of the
format they share: opcodes, tape columns, the executor context, tape sections,
hyper-parameter slots, run modes and status codes.  It imports nothing, so the
GPU path does not load the CPU interpreter or the BLAS binding.

Plain module-level integers: numba treats them as compile-time constants.
"""
# opcodes
OP_LOAD_X = 1      # out <- x argument (f1: read x in place instead, no copy)
OP_LINEAR = 2      # out = act(a @ op(b) + c); g=act, f1=wt, d=pre-activation (-1: none), p=act params,
#                    f5=1: d keeps act'(pre-activation) instead, in training mode (LINEAR_BWD's f5)
OP_MATMUL = 3      # out = a @ op(b); f1=tb
OP_GATE = 4        # out = a (+|*|max) b; g=gate
OP_ACT = 5         # out = act(a); g=act, p=act params, c=act'(a) kept in training mode (-1: none)
OP_SUM = 6         # out = sum(a)
OP_LOSS = 7        # out = loss(a, targets); b = d scores; g=kind
OP_SEED = 8        # out = 1
OP_LINEAR_BWD = 9  # see fastbp._handlers; f5=1: c is the derivative OP_LINEAR kept (dZ = dY * c)
OP_MATMUL_BWD = 10
OP_GATE_BWD = 11
OP_ACT_BWD = 12    # e (+)= d * act'(c); f1=1: e (+)= d * c (c: OP_ACT's kept derivative), f2=accumulate
OP_SUM_BWD = 13
OP_DROPOUT = 14      # out = a * mask / (1 - p); f1=the dropout's layer id (its mask's key), f3=p's float64 bits
OP_DROPOUT_BWD = 15  # e (+)= d * the same mask (recomputed); f1, f3 as OP_DROPOUT, f2=accumulate
# normalisation layers (fastbp.kernels.norm): BATCHNORM with f1=0 is the forward
# (batch statistics in training, running ones in eval), with f1=1 the update of
# the running statistics (placed after the backward, run only when every gradient
# is finite); *_BWD their backward
OP_BATCHNORM = 16
OP_BATCHNORM_BWD = 17
OP_LAYERNORM = 18
OP_LAYERNORM_BWD = 19
OP_SGD = 20
OP_ADAM = 21
OP_RMSPROP = 22  # torch.optim.RMSprop; c=square_avg, d=momentum buffer (-1: none), e=grad_avg (-1: none)
# precision="bf16" (fastbp._handlers_bf16): OP_LINEAR / OP_LINEAR_BWD with the products on bf16
# copies.  LINEAR_BF16: OP_LINEAR's columns, plus e=X's bf16 copy, f=W's (both written here);
# LINEAR_BWD_BF16: OP_LINEAR_BWD's columns, a=X's bf16 copy, b=W's (the forward's), h=dZ's
OP_LINEAR_BF16 = 24
OP_LINEAR_BWD_BF16 = 25
#: opcodes are 0 .. OP_CAPACITY - 1 (the interpreter's table of handlers has that many slots)
OP_CAPACITY = 32
# 23 (OP_CLIP in the shared plan) stays free: gradient clipping is part of the update
# instruction, switched by the hyper slot H_CLIP, not an instruction of its own

# tape columns; C_P: the buffer of an activation's parameters (a float row the
# compiler fills, -1: none) -- parameters are floats, never in the int64 tape; C_F5 a
# fifth flag (OP_LINEAR / OP_LINEAR_BWD: the derivative kept); C_H an eighth buffer
C_OP, C_OUT, C_A, C_B, C_C, C_D, C_E, C_F, C_G, C_F1, C_F2, C_F3, C_F4, C_P, C_F5, C_H = range(16)
TAPE_WIDTH = 16

# the executor context: addresses and sizes of a step's arrays, one int64 vector
# (X_RUN: the address of the interpreter itself, which the native loops call)
(X_ARENA, X_ARENA_N, X_BUFS, X_BUFS_N, X_TAPE, X_TAPE_N, X_HYPER, X_WS64, X_WS64_N, X_GJIT,
 X_GJIT_N, X_BATCH, X_KTAB, X_RUN) = range(14)
CONTEXT_SIZE = 14

# sections of the tape: [0, FWD) forward, [FWD, LOSS) loss, [LOSS, BWD) backward, [BWD, END) update
S_FWD, S_LOSS, S_BWD, S_END = range(4)

# hyper-parameter / counter slots (float64 array)
(H_LR, H_MOM, H_NESTEROV, H_WD, H_B1, H_B2, H_EPS, H_DECOUPLED, H_T, H_BLAS_MIN, H_STEPS,
 H_BT_ON, H_BT_MAX, H_BT_CUR, H_BT_MIN, H_JIT_ON) = range(16)
#: hyper slots that describe this process (BLAS threading, JIT GEMM), not the training state
RUNTIME_SLOTS = (H_BLAS_MIN, H_BT_ON, H_BT_MAX, H_BT_CUR, H_BT_MIN, H_JIT_ON)
#: the dropout masks' 32-bit seed (fastbp._rng.seed_key of the step's seed; training state)
H_RNG_SEED = 16
#: 1.0 in training calls (step, fit, loss_and_grads, fastbp.grad), 0.0 in predict/evaluation:
#: Dropout is off and BatchNorm uses its running statistics in eval mode
H_TRAINING = 17
#: the slots of a step's training progress (counters, the rate of the next update, the dropout
#: seed): what a step taking over another's training takes, besides its own optimizer constants
PROGRESS_SLOTS = (H_T, H_STEPS, H_LR, H_RNG_SEED)
RUNTIME_SLOTS = RUNTIME_SLOTS + (H_TRAINING,)
#: max_norm of the gradient clipping by global norm before the update (0: no clipping);
#: RMSprop's smoothing constant alpha; H_WEIGHTED: 1.0 while a call's loss weighs its rows
#: by the sample weights in ``ws64[batch_size : batch_size + rows]`` (set and reset around
#: that one call, never saved as 1.0).  RMSprop's centered flag is not a slot: the update
#: instruction's grad_avg column (-1: not centered) says it
H_CLIP = 18
H_ALPHA = 19
H_WEIGHTED = 20
#: the index of the minibatch's first row in the global minibatch (data-parallel
#: ranks: dropout's mask of element (i, j) is keyed by row ``H_ROW0 + i``, so that
#: ranks draw the masks one process would draw for the global minibatch); set per
#: call by the data-parallel step, 0 otherwise
H_ROW0 = 21
RUNTIME_SLOTS = RUNTIME_SLOTS + (H_ROW0,)
#: plain SGD's updates of at least this many parameters run through the BLAS's axpy
#: (0: never; this process's BLAS policy, see fastbp._executor.runtime_hyper)
H_AXPY_MIN = 22
RUNTIME_SLOTS = RUNTIME_SLOTS + (H_AXPY_MIN,)
#: plain SGD's updates through the axpy of at least this many parameters check their
#: gradients for NaN and infinities through the BLAS's asum (0: never; see
#: fastbp._executor.runtime_hyper)
H_ASUM_MIN = 23
RUNTIME_SLOTS = RUNTIME_SLOTS + (H_ASUM_MIN,)
#: 1.0 while the weight decay of an update is ``hyper[H_WD]`` divided by the rows of its
#: minibatch (scikit-learn's ``alpha / n_b``: the estimators set and reset it around their
#: calls, never saved as 1.0); 0.0: ``hyper[H_WD]`` itself
H_WD_ROWS = 24
#: while ``H_WD_ROWS`` is set and the weight decay is not 0, each update adds the sum of
#: squares of its decayed parameters, as they were before it, to this slot (the estimators
#: zero it before an epoch: scikit-learn's loss adds ``alpha ||W||^2 / 2`` with each
#: minibatch's weights); a runtime slot, never saved
H_WD_SQ = 25
RUNTIME_SLOTS = RUNTIME_SLOTS + (H_WD_SQ,)
#: ``eps`` > 0 while a call's loss value is scikit-learn's log-loss, probabilities clipped to
#: ``[eps, 1 - eps]`` before the log (softmax cross-entropy and BCE on logits; the gradient
#: is not clipped): the estimators set it to their dtype's machine epsilon and reset it
#: around their calls, never saved but as 0.0
H_LOSS_CLIP = 26
#: the hyper vector's length before slots 16-23 existed, before slot 24, 25 and 26
#: (checkpoints of those lengths load: padded)
HYPER_SIZE_V1 = 16
HYPER_SIZE_V2 = 24
HYPER_SIZE_V3 = 25
HYPER_SIZE_V4 = 26
HYPER_SIZE = 27

# run modes
MODE_FORWARD = 0
MODE_GRAD = 1
MODE_TRAIN = 2

STATUS_OK = 0
STATUS_LOSS_NONFINITE = 1
STATUS_GRAD_NONFINITE = 2
STATUS_BAD_LABEL = 3
#: the minibatch is not what the buffers were laid out for (rows, width,
#: layout): nothing was changed.  Callers that validate never see it.
STATUS_BAD_INPUT = 4
#: the info of STATUS_BAD_INPUT from BatchNorm: a training call of one row
INFO_ONE_ROW = -2
#: an instruction names an op code no kernel implements (a corrupt tape: the
#: compiler rejects unknown codes); nothing was changed
STATUS_BAD_OP = 5
