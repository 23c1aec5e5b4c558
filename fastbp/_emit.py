"""The tape's instructions, emitted for a graph that :mod:`fastbp.compiler` has laid out.

:class:`Builder` allocates the arena's buffers and appends tape rows (columns
of :mod:`fastbp._isa`); :func:`emit_forward`, :func:`emit_backward` and
:func:`emit_update` are the compiler's emission phases: one instruction per
node for the forward and the loss, in graph order; the backward in reverse
order, a value read by several nodes receiving the sum of their gradients;
then the optimizer's one update over the parameter region.
"""
import numpy as np

from . import _isa as ex
from .graph import GraphError, activation_of
from .registry import gates as _gates
from .registry import losses as _losses
from .registry import norms as _norms
from .registry import optimizers as _optimizers

_GATES = _gates.CODES     # name -> code, live: a gate registered later compiles too


def canon(shape):
    """Canonical 2-D (rows, cols) of a node shape; rows -1 = batch."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, shape[0])
    return (-1 if shape[0] is None else shape[0], shape[1])


class Builder:
    """The arena's buffers ``(offset, rows, cols)`` (rows -1: the batch) and the tape's rows, as
    they are appended."""

    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.bufs = []
        self.size = 0
        self.tape = []

    def alloc(self, rows, cols):
        """A new buffer at the end of the arena; returns its id."""
        n = (self.batch_size if rows < 0 else rows) * cols
        off = self.size
        # keep every buffer 64-byte aligned for vector loads
        self.size += n + (-n) % 16
        self.bufs.append((off, rows, cols))
        return len(self.bufs) - 1

    def alias(self, buf, rows, cols):
        """Another shape over buffer ``buf``'s memory; returns its id."""
        off = self.bufs[buf][0]
        self.bufs.append((off, rows, cols))
        return len(self.bufs) - 1

    def emit(self, op, **kw):
        """Append one instruction: buffer columns default to -1, the integer ones to 0."""
        row = [0] * ex.TAPE_WIDTH
        row[ex.C_OP] = op
        for k in ("out", "a", "b", "c", "d", "e", "f", "p", "h"):
            row[getattr(ex, "C_" + k.upper())] = kw.get(k, -1)
        for k in ("g", "f1", "f2", "f3", "f4", "f5"):
            row[getattr(ex, "C_" + k.upper())] = int(kw.get(k, 0))
        self.tape.append(row)


def col_view(b, buf, node):
    """A 1-D value seen as a column (k, 1) for the right side of @."""
    return b.alias(buf, node.shape[0], 1)


def mm_views(b, m, va, vb, vo):
    """The buffers of a product's operands and result; a 1-D right operand ``(.., k) @ (k,)``
    and its result seen as columns."""
    a, bb = m.inputs
    if len(bb.shape) == 1:
        vb = col_view(b, vb, bb)
        rows = 1 if len(a.shape) == 1 else canon(a.shape)[0]
        vo = b.alias(vo, rows, 1)
    return va, vb, vo


def dropout_layers(nodes):
    """Each dropout node's layer id (the key of its masks: its position among the dropout nodes
    of its whole graph, whatever output is compiled) and p (as its float64 bits, column f3)."""
    drops = [x for x in nodes if x.op == "dropout"]
    if not drops:
        return {}
    pos = {x.id: i for i, x in enumerate(x for x in drops[0].graph.nodes if x.op == "dropout")}
    return {n.id: (pos[n.id], dropout_bits(n.attrs["p"])) for n in drops}


def norm_inputs(n):
    """``(x, weight or None, bias or None)`` of a normalisation node."""
    it = iter(n.inputs[1:])
    w = next(it) if n.attrs["has_w"] else None
    bias = next(it) if n.attrs["has_b"] else None
    return n.inputs[0], w, bias


def dropout_bits(p):
    """A dropout probability's float64 bits as an int64 (the tape column f3): exact whatever the step's dtype."""
    return int(np.array(float(p), dtype=np.float64).view(np.int64))


# -- the forward and loss sections ------------------------------------------------

def emit_forward(g, fusion, lay, output, train_input):
    """Emit ``LOAD_X``, one instruction per node, then the loss (or the seed of the output's
    gradient).  Returns the ends of the forward and loss sections."""
    b, value_buf, grad_buf, param_buf = lay.b, lay.value_buf, lay.grad_buf, lay.param_buf
    if train_input is not None:
        b.emit(ex.OP_LOAD_X, out=value_buf[train_input.id])
    drop = dropout_layers(g.nodes)
    loss_instr = None
    for n in g.nodes:
        if n.op in ("input", "param", "const") or n.id in fusion.hidden:
            continue
        if n.op == "dropout":
            b.emit(ex.OP_DROPOUT, out=value_buf[n.id], a=value_buf[n.inputs[0].id], f1=drop[n.id][0],
                   f3=drop[n.id][1])
        elif n.id in fusion.fused:
            f = fusion.fused[n.id]
            b.emit(ex.OP_LINEAR, out=value_buf[n.id], a=value_buf[f["x"].id], b=value_buf[f["W"].id],
                   c=value_buf[f["b"].id] if f["b"] is not None else -1, d=lay.pre_buf.get(n.id, -1),
                   g=f["act"].code, f1=f["wt"], f5=int(n.id in lay.pre_buf), p=param_buf.get(n.id, -1))
        elif n.op == "matmul":
            va, vb, vo = mm_views(b, n, value_buf[n.inputs[0].id], value_buf[n.inputs[1].id], value_buf[n.id])
            b.emit(ex.OP_MATMUL, out=vo, a=va, b=vb, f1=n.attrs["tb"])
        elif n.op in _GATES:
            b.emit(ex.OP_GATE, out=value_buf[n.id], a=value_buf[n.inputs[0].id], b=value_buf[n.inputs[1].id],
                   g=_GATES[n.op])
        elif activation_of(n) is not None:
            # c: the derivative the training forward keeps for the backward (-1: none)
            b.emit(ex.OP_ACT, out=value_buf[n.id], a=value_buf[n.inputs[0].id], c=lay.deriv_buf.get(n.id, -1),
                   g=activation_of(n)[0].code, p=param_buf.get(n.id, -1))
        elif n.op == "sum":
            b.emit(ex.OP_SUM, out=value_buf[n.id], a=value_buf[n.inputs[0].id])
        elif n.op in _norms.OPS:
            xin, w, bias = norm_inputs(n)
            vb = value_buf.get
            opcode = ex.OP_LAYERNORM if n.op == _norms.LAYER_NORM else ex.OP_BATCHNORM
            b.emit(opcode, out=value_buf[n.id], a=value_buf[xin.id], b=vb(w.id, -1) if w is not None else -1,
                   c=vb(bias.id, -1) if bias is not None else -1, d=lay.stat_buf[n.id],
                   e=lay.run_bufs[n.id][0] if n.id in lay.run_bufs else -1, p=param_buf[n.id])
        elif n.op == "loss":
            loss_instr = len(b.tape)
            s = n.inputs[0]
            if s.id not in grad_buf:
                raise GraphError("the loss does not depend on any trained parameter")
            b.emit(ex.OP_LOSS, out=value_buf[n.id], a=value_buf[s.id], b=grad_buf[s.id],
                   g=_losses.get(n.attrs["kind"]).code)
        else:  # pragma: no cover - graph.py creates no other ops
            raise GraphError(f"unknown op {n.op!r} in {n!r}")
    fwd_end = len(b.tape) if loss_instr is None else loss_instr
    if output.op != "loss":
        b.emit(ex.OP_SEED, out=grad_buf[output.id])
    return fwd_end, len(b.tape)


# -- the backward section ---------------------------------------------------------

def emit_backward(g, fusion, lay, output):
    """Emit the backward instructions in reverse graph order, then BatchNorm's running
    statistics.  A value read by several nodes receives the sum of their gradients: the
    first contribution writes its gradient buffer, later ones accumulate.  Returns the
    section's end."""
    b, value_buf, grad_buf, param_buf = lay.b, lay.value_buf, lay.grad_buf, lay.param_buf
    written = {grad_buf[output.inputs[0].id] if output.op == "loss" else grad_buf[output.id]}

    def target(node):
        """(grad buffer, accumulate?) for a contribution to ``node``'s gradient."""
        if node.id not in g.rg:
            return -1, 0
        gb = grad_buf[node.id]
        acc = gb in written
        written.add(gb)
        return gb, int(acc)

    drop = dropout_layers(g.nodes)
    for n in reversed(g.nodes):
        if n.id not in g.rg or n.op in ("input", "param", "const", "loss") or n.id in fusion.hidden:
            continue
        dO = grad_buf[n.id]
        if n.op == "dropout":
            da, acc_a = target(n.inputs[0])
            b.emit(ex.OP_DROPOUT_BWD, d=dO, e=da, f1=drop[n.id][0], f2=acc_a, f3=drop[n.id][1])
        elif n.id in fusion.fused:
            f = fusion.fused[n.id]
            # in the order every backend computes them (db, then dW, then dX), so that where
            # two are one value's gradient (x @ W with x = W: a Gram matrix W @ W.T) the
            # first written is the one that writes and the later one accumulates
            db, acc_b = target(f["b"]) if f["b"] is not None else (-1, 0)
            dw, acc_w = target(f["W"])
            dx, acc_x = target(f["x"])
            # c: what the derivative reads, the output, or (f5) the derivative the forward kept
            b.emit(ex.OP_LINEAR_BWD, out=db, a=value_buf[f["x"].id], b=value_buf[f["W"].id],
                   c=lay.pre_buf.get(n.id, value_buf[n.id]), d=dO, e=dx, f=dw, g=f["act"].code, f1=f["wt"],
                   f2=acc_x, f3=acc_w, f4=acc_b, f5=int(n.id in lay.pre_buf), p=param_buf.get(n.id, -1))
        elif n.op == "matmul":
            A, B = n.inputs
            da, acc_a = target(A)
            dbb, acc_bb = target(B)
            va, vb, _ = mm_views(b, n, value_buf[A.id], value_buf[B.id], value_buf[n.id])
            vdo = dO
            if len(B.shape) == 1:
                rows = 1 if len(A.shape) == 1 else canon(A.shape)[0]
                vdo = b.alias(dO, rows, 1)
                if dbb >= 0:
                    dbb = col_view(b, dbb, B)
            b.emit(ex.OP_MATMUL_BWD, a=va, b=vb, d=vdo, e=da, f=dbb, f1=n.attrs["tb"], f2=acc_a, f3=acc_bb)
        elif n.op in _GATES:
            A, B = n.inputs
            da, acc_a = target(A)
            dbb, acc_bb = target(B)
            b.emit(ex.OP_GATE_BWD, a=value_buf[A.id], b=value_buf[B.id], d=dO, e=da, f=dbb,
                   g=_GATES[n.op], f2=acc_a, f3=acc_bb)
        elif activation_of(n) is not None:
            entry = activation_of(n)[0]
            da, acc_a = target(n.inputs[0])
            # c: what the derivative reads, the output or the input (kept: buffers are never
            # reused), or (f1 = 1) the derivative the forward kept
            if n.id in lay.deriv_buf:
                t, kept = lay.deriv_buf[n.id], 1
            else:
                t, kept = (value_buf[n.inputs[0].id] if entry.uses == "input" else value_buf[n.id]), 0
            b.emit(ex.OP_ACT_BWD, c=t, d=dO, e=da, g=entry.code, f1=kept, f2=acc_a, p=param_buf.get(n.id, -1))
        elif n.op == "sum":
            da, acc_a = target(n.inputs[0])
            b.emit(ex.OP_SUM_BWD, d=dO, e=da, f2=acc_a)
        elif n.op in _norms.OPS:
            xin, w, bias = norm_inputs(n)
            # in the order every backend computes them (dweight, dbias, then dx), so that where
            # two are one value's gradient (layer_norm(w, bias=w)) the first written writes
            dw, acc_w = target(w) if w is not None else (-1, 0)
            dbias, acc_b = target(bias) if bias is not None else (-1, 0)
            dx, acc_x = target(xin)
            opcode = ex.OP_LAYERNORM_BWD if n.op == _norms.LAYER_NORM else ex.OP_BATCHNORM_BWD
            b.emit(opcode, out=dbias, a=value_buf[xin.id], b=value_buf[w.id] if w is not None else -1,
                   c=lay.stat_buf[n.id], d=dO, e=dx, f=dw, f1=int(n.id in lay.run_bufs), f2=acc_x, f3=acc_w,
                   f4=acc_b)
    # BatchNorm's running statistics: after the backward, so that a step whose loss is not
    # finite never reaches them (and the executor skips them when a gradient is not)
    # (d: the input, whose rows -- fixed, or the call's -- the unbiased variance divides by)
    for n in g.nodes:
        if n.id in lay.run_bufs:
            b.emit(ex.OP_BATCHNORM, a=lay.g_start, c=lay.stat_buf[n.id], d=value_buf[norm_inputs(n)[0].id],
                   e=lay.run_bufs[n.id][0], f=lay.run_bufs[n.id][1], f1=1, f4=lay.g_end - lay.g_start,
                   p=param_buf[n.id])
    return len(b.tape)


# -- the update section -----------------------------------------------------------

def emit_update(lay, optimizer):
    """The update instruction of the optimizer's registry entry, over the whole parameter
    region; its state vectors (none: SGD without momentum) in columns c, d.

    ``decay_1d=False`` (weight decay on the matrices only): f5=1, and the decayed
    parameters are the ``f3`` buffers from ``h`` on (aliases of their values, in the
    region's order); the rest of the region is updated without decay
    (:func:`fastbp.registry.optimizers.update_piece`)."""
    if optimizer is None or not lay.n_param:
        return
    opcode = _optimizers.get(optimizer.name).opcode
    st = lay.state_offsets + [-1, -1]
    cols = dict(c=st[0], d=st[1])
    if hasattr(optimizer, "tape_state"):    # optional state vectors (RMSprop); Adam's decay mode
        cols = optimizer.tape_state(lay.state_offsets)
    if not getattr(optimizer, "decay_1d", True):
        segs = [lay.b.alias(lay.value_buf[node.id], *canon(shape))
                for _, node, _, shape in lay.plist if len(shape) >= 2]
        cols.update(f5=1, f3=len(segs), h=segs[0] if segs else -1)
    lay.b.emit(opcode, a=lay.p_start, b=lay.g_start, f4=lay.n_param, **cols)
