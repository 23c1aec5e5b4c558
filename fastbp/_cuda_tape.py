"""The GPU interpreter of a plan's instruction tape: :class:`DeviceTape`.

It walks the tape in order and launches, for each instruction, the CUDA
kernels of :mod:`fastbp.kernels.cuda` with the semantics of the CPU
interpreter (:func:`fastbp._executor.run_tape`), all on one CUDA stream,
asynchronously.  Its device memory is the plan's flat arena as ONE device
array, every buffer being a view of it, plus the status word of
:mod:`fastbp._cuda_status`.

The launches of each opcode are in :meth:`DeviceTape._compile` (activations:
``OP_ACT``, ``OP_ACT_BWD`` and the fused one of ``OP_LINEAR_BWD``), the loss
launches in :meth:`DeviceTape._loss_op`, the updates in
:meth:`DeviceTape._update_op`.

Importing this module needs numba-cuda (:mod:`fastbp.cuda_step` imports it
only when numba-cuda is there).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from . import _isa as ex
from ._cuda_status import (R_INFO, R_LOSS, R_STATUS, R_STEP, RES_SIZE, _k_adam_gated, _k_grad_status,
                           _k_loss_status, _k_reset_status, _k_sgd_gated)
from ._cuda_status import _k_grad_scale_gated, _k_rmsprop_gated
from .kernels.cuda import optim as _go
from .registry.activations import IDENTITY as ACT_IDENTITY
from .registry import losses as _loss_registry
from .registry import optimizers as _opt_registry
from .kernels.cuda import activations as _ga
from .kernels.cuda import dropout as _gdrop
from .kernels.cuda import gates as _gg
from .kernels.cuda import gemm as _gm
from .kernels.cuda import linear as _gl
from .kernels.cuda import losses as _glo
from .kernels.cuda import norm as _gn
from .kernels.cuda.launch import grid_1d, grid_reduce

__all__ = ["DeviceTape", "TapeCall"]

#: cap on the blocks of the grid-stride gradient check
_MAX_BLOCKS = 4096


def _adam_scalars(hyper, t, wd, eps_hat=False):
    """The scalars of Adam step ``t`` with weight decay ``wd`` (as
    :func:`fastbp.kernels.cuda.optim._adam_update`): ``(step, sbc2, c1, c2, decay, eps)``
    (:func:`fastbp.registry.optimizers.adam_scalars`), ``eps`` the one the kernel adds
    (:func:`fastbp.registry.optimizers.adam_eps`)."""
    lr, b1, b2 = float(hyper[ex.H_LR]), float(hyper[ex.H_B1]), float(hyper[ex.H_B2])
    return (*_opt_registry.adam_scalars(lr, b1, b2, t, float(wd)),
            _opt_registry.adam_eps(float(hyper[ex.H_EPS]), b2, t, eps_hat))


class TapeCall:
    """Per-call values the tape programs read: stream, input, targets, loss slot, step."""
    __slots__ = ("stream", "x", "target", "loss", "step", "t")

    def __init__(self, stream):
        self.stream = stream
        self.x = None
        self.target = None
        self.loss = None
        self.step = 0
        self.t = 1.0


#: the instructions that name an activation code, and those that name a gate code (in C_G)
_ACT_OPS = (ex.OP_LINEAR, ex.OP_ACT, ex.OP_LINEAR_BWD, ex.OP_ACT_BWD)
_GATE_OPS = (ex.OP_GATE, ex.OP_GATE_BWD)


class DeviceTape:
    """The GPU interpreter of a plan's tape over one device arena.

    ``program(nb)`` turns the tape into, per instruction, a list of
    closures ``run(ctx)`` that launch the CUDA kernels with the arena views
    of a minibatch of ``nb`` rows (views and launch arguments are made once
    per ``nb`` and cached).  Reads of the step's input buffer (``plan.x_buf``)
    go to ``ctx.x``, so a device input is read in place.
    """

    def __init__(self, plan, host_arena, hyper):
        self.plan = plan
        self.hyper = hyper          # the owner's float64 host array (read at launch time)
        self.dtype = plan.dtype
        self.arena = cuda.to_device(host_arena)
        self.ws64 = cuda.device_array(max(plan.batch_size, 1), dtype=np.float64)
        self.res = cuda.to_device(np.zeros(RES_SIZE, dtype=np.float64))
        self.res_loss = self.res[R_LOSS:R_LOSS + 1]
        self.res_host = cuda.pinned_array(RES_SIZE, dtype=np.float64)
        self.e1 = cuda.device_array(0, dtype=self.dtype)
        self.e2 = cuda.device_array((0, 0), dtype=self.dtype)
        self.no_labels = cuda.device_array(0, dtype=np.int64)
        self.one = cuda.to_device(np.ones((1, 1), dtype=self.dtype))
        self.clip_coef = cuda.device_array(1, dtype=np.float64)   # gradient clipping's coefficient
        self._programs = {}
        self._views = {}
        # the kernels of every activation and gate the tape names, taken now (ValueError for an
        # unknown code): the step keeps them whatever the registry holds later, as the CPU's
        self._entry_kernels = {}
        for ins in plan.tape:
            op, g = int(ins[ex.C_OP]), int(ins[ex.C_G])
            if op in _ACT_OPS:
                self._entry_kernels[op, g] = _ga.kernels(g)
            elif op in _GATE_OPS:
                self._entry_kernels[op, g] = _gg.kernels(g)

    # ------------------------------------------------------------ views
    def view(self, buf, nb):
        """The 2-D device view of buffer ``buf`` for a minibatch of ``nb`` rows (cached)."""
        key = (buf, nb)
        v = self._views.get(key)
        if v is None:
            off, r, c = (int(x) for x in self.plan.bufs[buf])
            if r < 0:
                r = nb
            v = self._views[key] = self.arena[off:off + r * c].reshape(r, c)
        return v

    def vec(self, buf):
        if buf < 0:
            return self.e1
        off, r, c = (int(v) for v in self.plan.bufs[buf])
        return self.arena[off:off + r * c]

    def region(self, off, n):
        return self.arena[off:off + n]

    # ---------------------------------------------------------- programs
    def program(self, nb):
        prog = self._programs.get(nb)
        if prog is None:
            prog = self._programs[nb] = [self._compile(ins, nb) for ins in self.plan.tape]
        return prog

    def run(self, ctx, lo, hi, nb):
        """Launch instructions ``lo .. hi-1`` (OP_LOAD_X is the caller's job)."""
        prog = self.program(nb)
        for pc in range(lo, hi):
            for op in prog[pc]:
                op(ctx)

    def _compile(self, ins, nb):
        X_SLOT = self.plan.x_buf

        def V(i):
            if i < 0:
                return self.e2
            if i == X_SLOT:
                return _XSLOT
            return self.view(i, nb)

        def launch(fn, *args):
            """A closure launching ``fn(*args, stream=...)``; ``_XSLOT`` arguments read ``ctx.x``."""
            if any(a is _XSLOT for a in args):
                def run(ctx):
                    fn(*[ctx.x if a is _XSLOT else a for a in args], stream=ctx.stream)
            else:
                def run(ctx):
                    fn(*args, stream=ctx.stream)
            return run

        op = int(ins[ex.C_OP])
        out, a, b, c, d, e, f = (int(ins[k]) for k in (ex.C_OUT, ex.C_A, ex.C_B, ex.C_C, ex.C_D,
                                                         ex.C_E, ex.C_F))
        g, f1, f2, f3 = (int(ins[k]) for k in (ex.C_G, ex.C_F1, ex.C_F2, ex.C_F3))
        # an activation's parameters (its float buffer, -1: none) and, for OP_LINEAR,
        # the pre-activation it keeps (d >= 0: the activation's derivative reads it)
        P = self.vec(int(ins[ex.C_P]))
        g_k = self._entry_kernels.get((op, g))      # its activation's or gate's kernels (__init__)
        if op == ex.OP_LOAD_X:
            return []
        if op == ex.OP_LINEAR:
            fwd = _gl._linear_fwd_t if f1 else _gl._linear_fwd
            ops = [launch(functools.partial(fwd, P=P, Z=V(d) if d >= 0 else None), V(a), V(b), self.vec(c), g_k,
                          V(out))]
            if d >= 0 and int(ins[ex.C_F5]):
                # the derivative the backward reads (f5): act'(Z) over Z in training mode, as the
                # CPU's (a second pass here; it rewrites Y with the same values)
                ops.append(self._act_fwd_d_op(V(d), g_k, V(out), V(d), P, eval_forward=False))
            return ops
        if op == ex.OP_MATMUL:
            mm = _gm._mm_nt if f1 else _gm._mm_nn
            return [launch(mm, V(a), V(b), V(out), False)]
        if op == ex.OP_GATE:
            return [launch(_gg._gate_fwd, g_k, V(a), V(b), V(out))]
        if op == ex.OP_ACT:
            if c >= 0:      # keeps act'(a) in c in training mode (read at launch time), as the CPU's
                return [self._act_fwd_d_op(V(a), g_k, V(out), V(c), P)]
            return [launch(functools.partial(_ga._act_fwd, P=P), V(a), g_k, V(out))]
        if op == ex.OP_SUM:
            return [launch(_gg._sum_fwd, V(a), V(out))]
        if op == ex.OP_LOSS:
            return [self._loss_op(V(a), V(b), V(out) if out >= 0 else self.e2, g, nb)]
        if op == ex.OP_SEED:
            return [launch(_gg._sum_bwd, self.one, V(out), False)]
        if op == ex.OP_LINEAR_BWD:
            # a=X, b=W, c=what act' reads (Y or the pre-activation), d=dY (overwritten
            # by dZ), e=dX, f=dW, out=db; the bias gradient accumulates by its own flag
            # (f4: the bias may have other consumers), as on the CPU
            X, W, Y, dZ = V(a), V(b), V(c), V(d)
            ops = []
            if int(ins[ex.C_F5]):       # c: the derivative the forward kept
                ops.append(launch(_ga._mul_d, Y, dZ, dZ, False))
            elif g != ACT_IDENTITY:
                ops.append(launch(functools.partial(_ga._act_bwd, P=P), Y, dZ, g_k, dZ, False))
            if out >= 0:
                ops.append(launch(_gl._colsum, dZ, self.vec(out), bool(ins[ex.C_F4])))
            dW = V(f)
            if f1:      # dWt (out, in) = dZ^T X
                ops.append(launch(_gm._mm_tn, dZ, X, dW, bool(f3)))
            else:       # dW (in, out) = X^T dZ
                ops.append(launch(_gm._mm_tn, X, dZ, dW, bool(f3)))
            if e >= 0:  # dX = dZ W^T  (or dZ Wt)
                mm = _gm._mm_nn if f1 else _gm._mm_nt
                ops.append(launch(mm, dZ, W, V(e), bool(f2)))
            return ops
        if op == ex.OP_MATMUL_BWD:
            A, B, dO = V(a), V(b), V(d)
            ops = []
            if e >= 0:
                mm = _gm._mm_nn if f1 else _gm._mm_nt
                ops.append(launch(mm, dO, B, V(e), bool(f2)))
            if f >= 0:
                if f1:  # B stored transposed: dB = dO^T A
                    ops.append(launch(_gm._mm_tn, dO, A, V(f), bool(f3)))
                else:
                    ops.append(launch(_gm._mm_tn, A, dO, V(f), bool(f3)))
            return ops
        if op == ex.OP_GATE_BWD:
            return [launch(_gg._gate_bwd, g_k, V(a), V(b), V(d), V(e), V(f), bool(f2), bool(f3))]
        if op == ex.OP_ACT_BWD:
            if f1:          # c: the derivative the forward kept
                return [launch(_ga._mul_d, V(c), V(d), V(e), bool(f2))]
            return [launch(functools.partial(_ga._act_bwd, P=P), V(c), V(d), g_k, V(e), bool(f2))]
        if op == ex.OP_SUM_BWD:
            return [launch(_gg._sum_bwd, V(d), V(e), bool(f2))]
        if op in (ex.OP_SGD, ex.OP_ADAM, ex.OP_RMSPROP):
            return [self._clip_op(b, int(ins[ex.C_F4])), self._update_op(op, ins, nb)]
        if op in (ex.OP_LAYERNORM, ex.OP_LAYERNORM_BWD, ex.OP_BATCHNORM, ex.OP_BATCHNORM_BWD):
            return [self._norm_op(ins, V, nb)]
        if op in (ex.OP_DROPOUT, ex.OP_DROPOUT_BWD):
            if op == ex.OP_DROPOUT:
                return [self._dropout_op(V(a), V(out), f1, int(ins[ex.C_F3]), False)]
            return [self._dropout_op(V(d), V(e), f1, int(ins[ex.C_F3]), bool(f2))]
        raise RuntimeError(f"internal: opcode {op} has no CUDA implementation")

    def _dropout_op(self, src, dst, layer, pbits, acc):
        """Dropout forward (``src`` = input, ``dst`` = output) or backward (``dY``, ``dX``):
        the mask of (the step's seed, ``layer``, the updates applied before this
        launch, element), as the CPU's.  Read at launch time: the seed, the
        training flag (eval mode: a copy) and the step count -- ``hyper[H_STEPS]``
        plus ``ctx.step``, the index of this step among those launched before the
        counter is advanced (a fit's epoch; 0 for a single call)."""
        p = float(np.array(pbits, dtype=np.int64).view(np.float64))
        hyper = self.hyper

        def run(ctx):
            a = ctx.x if src is _XSLOT else src
            pd = p if hyper[ex.H_TRAINING] != 0.0 else 0.0
            _gdrop._dropout(a, dst, int(hyper[ex.H_RNG_SEED]), layer, int(hyper[ex.H_STEPS]) + int(ctx.step),
                            int(hyper[ex.H_ROW0]), pd, acc, stream=ctx.stream)
        return run

    def _act_fwd_d_op(self, X, code, Y, D, P, eval_forward=True):
        """``Y = act(X)``, and in training mode (``hyper[H_TRAINING]``, read at launch
        time) ``D = act'(X)`` in the same pass (``D`` may be ``X``: one thread reads and then
        writes each element); eval mode: the forward alone (``eval_forward``), or nothing."""
        code = _ga.kernels(code)        # (pinned: ValueError now for an unknown code)
        hyper = self.hyper

        def run(ctx):
            x = ctx.x if X is _XSLOT else X
            if hyper[ex.H_TRAINING] != 0.0:
                _ga._act_fwd_d(x, code, Y, D, stream=ctx.stream, P=P)
            elif eval_forward:
                _ga._act_fwd(x, code, Y, stream=ctx.stream, P=P)
        return run

    def _loss_op(self, S, dS, out, kind, nb):
        entry = _loss_registry.by_code(kind)
        fn = getattr(_glo, entry.cuda)
        rowloss = self.ws64[:nb]
        classification = entry.targets == "labels"
        n_classes = S.shape[1]
        rgrid, rblock = grid_reduce()
        res = self.res
        no_labels = self.no_labels

        def run(ctx):
            fn(S, ctx.target, dS, rowloss, ctx.loss, stream=ctx.stream)
            labels = ctx.target if classification else no_labels
            _k_loss_status[rgrid, rblock, ctx.stream](labels, n_classes, ctx.loss, out, res, ctx.step)
        return run

    def _norm_op(self, ins, V, nb):
        """The launches of a normalisation instruction (operands as on the CPU, see
        :func:`fastbp._executor.run_tape`); BatchNorm reads the mode (``hyper[H_TRAINING]``)
        when it is launched."""
        op = int(ins[ex.C_OP])
        a, b, c, d, e, f, out = (int(ins[k]) for k in (ex.C_A, ex.C_B, ex.C_C, ex.C_D, ex.C_E, ex.C_F, ex.C_OUT))
        f1, f2, f3, f4 = (bool(ins[k]) for k in (ex.C_F1, ex.C_F2, ex.C_F3, ex.C_F4))
        P = self.vec(int(ins[ex.C_P]))
        hyper = self.hyper

        def X(ctx):
            return ctx.x if a == self.plan.x_buf else V(a)
        if op == ex.OP_LAYERNORM:
            w, bias, Y, S = self.vec(b), self.vec(c), V(out), V(d)
            return lambda ctx: _gn.layernorm_fwd(X(ctx), w, bias, Y, S, P, stream=ctx.stream)
        if op == ex.OP_LAYERNORM_BWD:
            w, S, dY, dX, dw, db = self.vec(b), V(c), V(d), V(e), self.vec(f), self.vec(out)
            return lambda ctx: _gn.layernorm_bwd(X(ctx), w, S, dY, dX, dw, db, f2, f3, f4, stream=ctx.stream)
        if op == ex.OP_BATCHNORM_BWD:
            w, S, dY, dX, dw, db = self.vec(b), V(c), V(d), V(e), self.vec(f), self.vec(out)
            return lambda ctx: _gn.batchnorm_bwd(X(ctx), w, S, dY, dX, dw, db, f2, f3, f4,
                                                 bool(hyper[ex.H_TRAINING] != 0.0) or not f1, stream=ctx.stream)
        if not f1:
            w, bias, Y, S, R = self.vec(b), self.vec(c), V(out), V(d), V(e)
            return lambda ctx: _gn.batchnorm_fwd(X(ctx), w, bias, Y, S, R, P,
                                                 bool(hyper[ex.H_TRAINING] != 0.0) or e < 0, stream=ctx.stream)
        # the running statistics, gated on finite gradients (the region a, f4) and the status word
        S, R, T = V(c), V(e), self.vec(f)
        grads = self.region(a, int(ins[ex.C_F4]))
        if getattr(self, "_bn_flag", None) is None:
            self._bn_flag = cuda.device_array(1, dtype=np.float64)
        flag, res = self._bn_flag, self.res

        def run(ctx):
            if hyper[ex.H_TRAINING] != 0.0:
                _gn.batchnorm_running(S, R, T, P, nb, grads, flag, res, stream=ctx.stream)
        return run

    def _clip_op(self, g0, n):
        """Gradient clipping by global norm (``hyper[H_CLIP] > 0``, read at launch time),
        after the non-finite check; the scaling is gated by the status word."""
        gvec = self.region(g0, n)
        res = self.res
        blocks, threads = grid_1d(n)
        blocks = min(blocks, _MAX_BLOCKS)
        rgrid, rblock = grid_reduce()
        hyper = self.hyper
        coef = self.clip_coef

        def run(ctx):
            max_norm = float(hyper[ex.H_CLIP])
            if max_norm > 0.0:
                s = ctx.stream
                _k_grad_status[blocks, threads, s](gvec, res, ctx.step)
                _go._k_clip_coef[rgrid, rblock, s](gvec, max_norm, coef)
                _k_grad_scale_gated[blocks, threads, s](gvec, coef, res)
        return run

    def _update_op(self, op, ins, nb):
        """The update instruction ``ins`` after a minibatch of ``nb`` rows: the gradient check
        over the whole region, then the optimizer's kernel on each piece of it (one piece, or
        the decayed and undecayed stretches of ``decay_1d=False``:
        :func:`fastbp.registry.optimizers.update_piece`); the weight decay read at launch
        time (:func:`fastbp.registry.optimizers.weight_decay`)."""
        p0, g0, s0, s1, s2, n = (int(ins[c]) for c in (ex.C_A, ex.C_B, ex.C_C, ex.C_D, ex.C_E, ex.C_F4))
        eps_hat = op == ex.OP_ADAM and int(ins[ex.C_F1]) == 1
        gvec = self.region(g0, n)
        res = self.res
        hyper = self.hyper
        blocks, threads = grid_1d(n)
        blocks = min(blocks, _MAX_BLOCKS)
        pieces = []     # per piece: its views of the parameters, gradients and state vectors, decayed, grid
        for i in range(_opt_registry.n_pieces(ins)):
            lo, hi, decayed = (int(v) for v in _opt_registry.update_piece(self.plan.bufs, ins, i))
            if hi > lo:
                pb, pt = grid_1d(hi - lo)
                views = [self.region(o + lo, hi - lo) if o >= 0 else self.e1 for o in (p0, g0, s0, s1, s2)]
                pieces.append((*views, bool(decayed), min(pb, _MAX_BLOCKS), pt))

        if op == ex.OP_RMSPROP:
            def run(ctx):
                s = ctx.stream
                wd = _opt_registry.weight_decay(float(hyper[ex.H_WD]), float(hyper[ex.H_WD_ROWS]), nb)
                _k_grad_status[blocks, threads, s](gvec, res, ctx.step)
                for p, g, sq, mbuf, gavg, dec, pb, pt in pieces:
                    _k_rmsprop_gated[pb, pt, s](p, g, sq, mbuf, gavg, float(hyper[ex.H_LR]), float(hyper[ex.H_ALPHA]),
                                                _opt_registry.rmsprop_scalars(float(hyper[ex.H_ALPHA])),
                                                float(hyper[ex.H_EPS]),
                                                wd if dec else 0.0, float(hyper[ex.H_MOM]),
                                                res)
            return run
        if op == ex.OP_SGD:
            def run(ctx):
                s = ctx.stream
                wd = _opt_registry.weight_decay(float(hyper[ex.H_WD]), float(hyper[ex.H_WD_ROWS]), nb)
                _k_grad_status[blocks, threads, s](gvec, res, ctx.step)
                for p, g, v, _, _, dec, pb, pt in pieces:
                    _k_sgd_gated[pb, pt, s](p, g, v, float(hyper[ex.H_LR]), float(hyper[ex.H_MOM]),
                                            bool(hyper[ex.H_NESTEROV] != 0.0), wd if dec else 0.0, res)
            return run

        def run(ctx):
            s = ctx.stream
            wd = _opt_registry.weight_decay(float(hyper[ex.H_WD]), float(hyper[ex.H_WD_ROWS]), nb)
            step, sbc2, c1, c2, decay, eps = _adam_scalars(hyper, ctx.t, wd, eps_hat)
            _k_grad_status[blocks, threads, s](gvec, res, ctx.step)
            for p, g, m, v, _, dec, pb, pt in pieces:
                _k_adam_gated[pb, pt, s](p, g, m, v, step, sbc2, float(hyper[ex.H_B1]), float(hyper[ex.H_B2]),
                                         c1, c2, float(eps), wd if dec else 0.0, decay if dec else 1.0,
                                         bool(hyper[ex.H_DECOUPLED] != 0.0), res)
        return run

    # ----------------------------------------------------------- status
    def reset_status(self, stream):
        _k_reset_status[1, 1, stream](self.res)

    def read_status(self, stream):
        """One device-to-host copy of the status word; waits for the stream."""
        self.res.copy_to_host(self.res_host, stream=stream)
        stream.synchronize()
        r = self.res_host
        return int(r[R_STATUS]), int(r[R_INFO]), int(r[R_STEP]), float(r[R_LOSS])


class _XSlotType:
    def __repr__(self):
        return "<the step's input>"


_XSLOT = _XSlotType()
