"""The static graph compiler: check, infer, fuse, plan buffers, emit a tape.

Given a graph, the node to differentiate (a loss, or any output) and the
nodes to differentiate with respect to, :func:`build_plan`

1. checks the graph (nodes of one graph, every ``wrt`` node reachable from
   the output) -- shapes were already inferred as nodes were built;
2. fuses every ``x @ W (+ b) (-> activation)`` chain of parameters into
   one linear instruction (forward with a fused epilogue, backward with
   ``dZ`` computed in place); an activation whose derivative reads its
   input (registry ``uses="input"``) keeps the pre-activation ``Z`` in a
   buffer of its own, the others only their output;
3. lays out one flat arena: parameters, then their gradients (one
   contiguous block, in the same order), then optimizer state, then
   activations and activation gradients -- allocated once;
4. emits the forward, loss, backward and update instructions that
   :mod:`fastbp._executor` runs.  An activation's parameters (a slope) go
   in a float buffer the tape points to (column ``C_P``), filled like a
   constant.  A value used by several nodes receives
   the sum of their gradients: the first contribution writes its gradient
   buffer, later ones accumulate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _isa as ex
from .graph import GraphError, Node, activation_of, upstream
from .registry import activations as _acts
from .registry import gates as _gates
from .registry import losses as _losses
from .registry import optimizers as _optimizers
from .registry import norms as _norms

_GATES = _gates.CODES     # name -> code, live: a gate registered later compiles too


@dataclass
class Plan:
    """Everything the executor needs, as plain arrays, plus the Python-side maps."""
    dtype: np.dtype
    batch_size: int
    arena_size: int
    bufs: np.ndarray            # (n_bufs, 3) int64: offset, rows (-1 = batch), cols
    tape: np.ndarray            # (n_instr, TAPE_WIDTH) int64
    sec: np.ndarray             # (4,) int64 section ends
    value_buf: dict             # node id -> buffer id
    grad_buf: dict              # node id -> buffer id
    params: list                # [(name, node, offset, shape)]
    param_region: tuple         # (offset, size)
    grad_region: tuple          # (offset, size)
    state_offsets: list         # offsets of optimizer state vectors
    x_buf: int = -1
    out_buf: int = -1
    yf_buf: int = -1
    consts: list = field(default_factory=list)   # [(buf id, float64 value)]
    n_fused: int = 0
    #: the normalisation layers' running statistics (not trained): one contiguous region of the
    #: arena (offset, size), saved in checkpoints, and node name -> (running buf, batches-tracked buf)
    buffer_region: tuple = (0, 0)
    running: dict = field(default_factory=dict)


def _canon(shape):
    """Canonical 2-D (rows, cols) of a node shape; rows -1 = batch."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (1, shape[0])
    return (-1 if shape[0] is None else shape[0], shape[1])


class _Builder:
    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.bufs = []
        self.size = 0
        self.tape = []

    def alloc(self, rows, cols):
        n = (self.batch_size if rows < 0 else rows) * cols
        off = self.size
        # keep every buffer 64-byte aligned for vector loads
        self.size += n + (-n) % 16
        self.bufs.append((off, rows, cols))
        return len(self.bufs) - 1

    def alias(self, buf, rows, cols):
        off = self.bufs[buf][0]
        self.bufs.append((off, rows, cols))
        return len(self.bufs) - 1

    def emit(self, op, **kw):
        row = [0] * ex.TAPE_WIDTH
        row[ex.C_OP] = op
        for k in ("out", "a", "b", "c", "d", "e", "f", "p"):
            row[getattr(ex, "C_" + k.upper())] = kw.get(k, -1)
        for k in ("g", "f1", "f2", "f3", "f4"):
            row[getattr(ex, "C_" + k.upper())] = int(kw.get(k, 0))
        self.tape.append(row)


def _consumers(nodes):
    users = {n.id: [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            if i.id in users:
                users[i.id].append(n)
    return users


def build_plan(graph, output, wrt, *, dtype, batch_size, loss=None, optimizer=None,
               train_input=None):
    """Compile ``graph`` into a :class:`Plan`.

    Parameters
    ----------
    graph : Graph
    output : Node
        A ``loss`` node (training) or any node (gradients of its sum).
    wrt : list of Node
        Inputs or parameters to differentiate with respect to.
    dtype : numpy float dtype
    batch_size : int
        Rows reserved for batch-sized (``None``) dimensions.
    loss : str, optional
        Loss name, when ``output`` is a loss node.
    optimizer : SGD or Adam, optional
        Emit the update of every parameter in ``wrt``.
    train_input : Node, optional
        The input fed from the step's ``x`` argument (a ``LOAD_X`` instruction).
    """
    if not isinstance(output, Node) or output.graph is not graph:
        raise GraphError(f"output {output!r} is not a node of this graph")
    for w in wrt:
        if not isinstance(w, Node):
            raise GraphError(f"wrt entries must be graph nodes, got {type(w).__name__}")
        if w.graph is not graph:
            raise GraphError(f"wrt node {w!r} belongs to another graph than the output {output!r}")
        if w.op not in ("input", "param"):
            raise GraphError(f"wrt node {w!r} is not an input or a parameter")
    if len({w.id for w in wrt}) != len(wrt):
        raise GraphError("wrt lists a node twice")

    # -- 1. what the output needs, and what needs a gradient
    needed = upstream(output)
    nodes = [n for n in graph.nodes if n.id in needed]
    nodes_by_id = {n.id: n for n in nodes}
    wrt_ids = {w.id for w in wrt}
    for w in wrt:
        if w.id not in needed:
            raise GraphError(f"the output {output!r} does not depend on wrt node {w!r}")
    rg = set()
    for n in nodes:
        if n.id in wrt_ids or any(i.id in rg for i in n.inputs):
            rg.add(n.id)
    users = _consumers(nodes)

    # -- 2. fusion of x @ W (+ b) (-> act) with parameters W, b
    fused = {}          # final node id -> dict(x, W, b, act, wt)
    hidden = set()      # intermediate node ids that get no buffer
    for m in nodes:
        if m.op != "matmul":
            continue
        a, W = m.inputs
        if W.op != "param" or W.id not in wrt_ids or len(W.shape) != 2 or len(a.shape) != 2:
            continue
        chain = [m]
        last = m
        bias = None
        u = users[last.id]
        if len(u) == 1 and u[0].op == "add" and last is not output:
            add = u[0]
            other = add.inputs[1] if add.inputs[0] is last else add.inputs[0]
            if (other.op == "param" and other.id in wrt_ids and other is not last
                    and other.shape in ((W.shape[0] if m.attrs["tb"] else W.shape[1],),)
                    and add.shape == last.shape):
                bias = other
                chain.append(add)
                last = add
        act, aparams = _acts.get("identity"), ()
        u = users[last.id]
        if len(u) == 1 and activation_of(u[0]) is not None and last is not output:
            act, aparams = activation_of(u[0])
            chain.append(u[0])
            last = u[0]
        for c in chain[:-1]:
            hidden.add(c.id)
        fused[last.id] = dict(x=a, W=W, b=bias, act=act, params=aparams, wt=m.attrs["tb"], chain=chain)

    # -- 3. buffers: params | grads | optimizer state | everything else
    b = _Builder(batch_size)
    params = [n for n in nodes if n.op == "param"]
    value_buf, grad_buf = {}, {}
    plist = []
    for p in params:
        r, c = _canon(p.shape)
        value_buf[p.id] = b.alloc(r, c)
        plist.append((p.name, p, b.bufs[value_buf[p.id]][0], p.shape))
    p_end = b.size
    p_start = plist[0][2] if plist else 0
    for p in params:
        if p.id in rg:
            grad_buf[p.id] = b.alloc(*_canon(p.shape))
    g_start = b.bufs[grad_buf[params[0].id]][0] if params and params[0].id in grad_buf else b.size
    g_end = b.size
    # spare slots right after the gradients (fastbp.distributed uses three: loss*rows,
    # rows, error count): data-parallel training reduces gradients, loss and errors of
    # all ranks in ONE Allreduce over arena[g_start : g_end + 3]
    b.size += 16
    n_param = p_end - p_start
    if optimizer is not None:
        if any(p.id not in rg for p in params):
            raise GraphError("every parameter must be trained")
        if g_end - g_start != n_param:
            raise GraphError("internal: gradient region does not mirror the parameter region")
    state_offsets = []
    if optimizer is not None:
        for _ in range(optimizer.n_state):
            state_offsets.append(b.size)
            b.size += n_param
    run_start, run_bufs, run_consts = _running_buffers(b, nodes)

    consts = list(run_consts)
    for n in nodes:
        if n.op == "param" or n.id in hidden:
            continue
        r, c = _canon(n.shape)
        value_buf[n.id] = b.alloc(r, c)
        if n.op == "const":
            consts.append((value_buf[n.id], n.value))
    for n in nodes:
        if n.op == "param" or n.id in hidden or n.id not in rg:
            continue
        grad_buf[n.id] = b.alloc(*_canon(n.shape))
    # activations: the pre-activation of fused ones that read their input, and
    # every activation's parameters (a row of floats, written like a constant)
    pre_buf, param_buf = {}, {}
    for n in nodes:
        f = fused.get(n.id)
        entry, aparams = (f["act"], f["params"]) if f is not None else (activation_of(n) or (None, ()))
        if entry is None:
            continue
        if f is not None and entry.uses == "input":
            pre_buf[n.id] = b.alloc(*_canon(n.shape))
        if aparams:
            param_buf[n.id] = b.alloc(1, len(aparams))
            consts.append((param_buf[n.id], np.array(aparams, dtype=np.float64)))
    stat_buf = _norm_buffers(b, nodes, param_buf, consts)

    # -- 4. the tape
    if train_input is not None:
        b.emit(ex.OP_LOAD_X, out=value_buf[train_input.id])

    def col_view(buf, node):
        """A 1-D value seen as a column (k, 1) for the right side of @."""
        return b.alias(buf, node.shape[0], 1)

    def mm_views(m, vbuf_a, vbuf_b, vbuf_out):
        a, bb = m.inputs
        va, vb, vo = vbuf_a, vbuf_b, vbuf_out
        if len(bb.shape) == 1:          # (.., k) @ (k,) -> out (..,) seen as (rows, 1)
            vb = col_view(vbuf_b, bb)
            rows = 1 if len(a.shape) == 1 else _canon(a.shape)[0]
            vo = b.alias(vbuf_out, rows, 1)
        return va, vb, vo

    # dropout: each node's layer id (the key of its masks) and p (as its float64 bits in f3)
    drop = {n.id: (i, _dropout_bits(n.attrs["p"])) for i, n in enumerate(x for x in nodes if x.op == "dropout")}

    loss_instr = None
    for n in nodes:
        if n.op in ("input", "param", "const") or n.id in hidden:
            continue
        if n.op == "dropout":
            b.emit(ex.OP_DROPOUT, out=value_buf[n.id], a=value_buf[n.inputs[0].id], f1=drop[n.id][0],
                   f3=drop[n.id][1])
        elif n.id in fused:
            f = fused[n.id]
            b.emit(ex.OP_LINEAR, out=value_buf[n.id], a=value_buf[f["x"].id], b=value_buf[f["W"].id],
                   c=value_buf[f["b"].id] if f["b"] is not None else -1, d=pre_buf.get(n.id, -1),
                   g=f["act"].code, f1=f["wt"], p=param_buf.get(n.id, -1))
        elif n.op == "matmul":
            va, vb, vo = mm_views(n, value_buf[n.inputs[0].id], value_buf[n.inputs[1].id], value_buf[n.id])
            b.emit(ex.OP_MATMUL, out=vo, a=va, b=vb, f1=n.attrs["tb"])
        elif n.op in _GATES:
            b.emit(ex.OP_GATE, out=value_buf[n.id], a=value_buf[n.inputs[0].id], b=value_buf[n.inputs[1].id],
                   g=_GATES[n.op])
        elif activation_of(n) is not None:
            b.emit(ex.OP_ACT, out=value_buf[n.id], a=value_buf[n.inputs[0].id], g=activation_of(n)[0].code,
                   p=param_buf.get(n.id, -1))
        elif n.op == "sum":
            b.emit(ex.OP_SUM, out=value_buf[n.id], a=value_buf[n.inputs[0].id])
        elif n.op in _norms.OPS:
            xin, w, bias = _norm_inputs(n)
            vb = value_buf.get
            opcode = ex.OP_LAYERNORM if n.op == _norms.LAYER_NORM else ex.OP_BATCHNORM
            b.emit(opcode, out=value_buf[n.id], a=value_buf[xin.id], b=vb(w.id, -1) if w is not None else -1,
                   c=vb(bias.id, -1) if bias is not None else -1, d=stat_buf[n.id],
                   e=run_bufs[n.id][0] if n.id in run_bufs else -1, p=param_buf[n.id])
        elif n.op == "loss":
            loss_instr = len(b.tape)
            s = n.inputs[0]
            if s.id not in grad_buf:
                raise GraphError("the loss does not depend on any trained parameter")
            b.emit(ex.OP_LOSS, out=value_buf[n.id], a=value_buf[s.id], b=grad_buf[s.id], g=_losses.get(n.attrs["kind"]).code)
        else:  # pragma: no cover - graph.py creates no other ops
            raise GraphError(f"unknown op {n.op!r} in {n!r}")
    fwd_end = len(b.tape) if loss_instr is None else loss_instr
    if output.op != "loss":
        b.emit(ex.OP_SEED, out=grad_buf[output.id])
    loss_end = len(b.tape)

    written = set()
    if output.op == "loss":
        written.add(grad_buf[output.inputs[0].id])
    else:
        written.add(grad_buf[output.id])

    def target(node):
        """(grad buffer, accumulate?) for a contribution to ``node``'s gradient."""
        if node.id not in rg:
            return -1, 0
        gb = grad_buf[node.id]
        acc = gb in written
        written.add(gb)
        return gb, int(acc)

    for n in reversed(nodes):
        if n.id not in rg or n.op in ("input", "param", "const", "loss") or n.id in hidden:
            continue
        dO = grad_buf[n.id]
        if n.op == "dropout":
            da, acc_a = target(n.inputs[0])
            b.emit(ex.OP_DROPOUT_BWD, d=dO, e=da, f1=drop[n.id][0], f2=acc_a, f3=drop[n.id][1])
        elif n.id in fused:
            f = fused[n.id]
            dx, acc_x = target(f["x"])
            dw, acc_w = target(f["W"])
            db, acc_b = target(f["b"]) if f["b"] is not None else (-1, 0)
            # c: what the derivative reads, the output or the kept pre-activation
            b.emit(ex.OP_LINEAR_BWD, out=db, a=value_buf[f["x"].id], b=value_buf[f["W"].id],
                   c=pre_buf.get(n.id, value_buf[n.id]), d=dO, e=dx, f=dw, g=f["act"].code, f1=f["wt"],
                   f2=acc_x, f3=acc_w, f4=acc_b, p=param_buf.get(n.id, -1))
        elif n.op == "matmul":
            A, B = n.inputs
            da, acc_a = target(A)
            dbb, acc_bb = target(B)
            va, vb, _ = mm_views(n, value_buf[A.id], value_buf[B.id], value_buf[n.id])
            vdo = dO
            if len(B.shape) == 1:
                rows = 1 if len(A.shape) == 1 else _canon(A.shape)[0]
                vdo = b.alias(dO, rows, 1)
                if dbb >= 0:
                    dbb = col_view(dbb, B)
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
            # c: what the derivative reads, the output or the input (kept: buffers are never reused)
            t = value_buf[n.inputs[0].id] if entry.uses == "input" else value_buf[n.id]
            b.emit(ex.OP_ACT_BWD, c=t, d=dO, e=da, g=entry.code, f2=acc_a, p=param_buf.get(n.id, -1))
        elif n.op == "sum":
            da, acc_a = target(n.inputs[0])
            b.emit(ex.OP_SUM_BWD, d=dO, e=da, f2=acc_a)
        elif n.op in _norms.OPS:
            xin, w, bias = _norm_inputs(n)
            dx, acc_x = target(xin)
            dw, acc_w = target(w) if w is not None else (-1, 0)
            dbias, acc_b = target(bias) if bias is not None else (-1, 0)
            opcode = ex.OP_LAYERNORM_BWD if n.op == _norms.LAYER_NORM else ex.OP_BATCHNORM_BWD
            b.emit(opcode, out=dbias, a=value_buf[xin.id], b=value_buf[w.id] if w is not None else -1,
                   c=stat_buf[n.id], d=dO, e=dx, f=dw, f1=int(n.id in run_bufs), f2=acc_x, f3=acc_w, f4=acc_b)
    # BatchNorm's running statistics: after the backward, so that a step whose loss is not
    # finite never reaches them (and the executor skips them when a gradient is not)
    for n in nodes:
        if n.id in run_bufs:
            b.emit(ex.OP_BATCHNORM, a=g_start, c=stat_buf[n.id], e=run_bufs[n.id][0], f=run_bufs[n.id][1],
                   f1=1, f4=g_end - g_start, p=param_buf[n.id])
    bwd_end = len(b.tape)

    if optimizer is not None and n_param:
        # the update instruction of the optimizer's registry entry; its state vectors
        # (none: SGD without momentum) in c, d
        opcode = _optimizers.get(optimizer.name).opcode
        st = state_offsets + [-1, -1]
        cols = dict(c=st[0], d=st[1])
        if hasattr(optimizer, "tape_state"):    # an optimizer with optional state vectors (RMSprop)
            cols = optimizer.tape_state(state_offsets)
        b.emit(opcode, a=p_start, b=g_start, f4=n_param, **cols)
    end = len(b.tape)

    yf_buf = -1
    if output.op == "loss":
        s = output.inputs[0]
        yf_buf = b.alloc(*_canon(s.shape))
    out_node = output.inputs[0] if output.op == "loss" else output
    b.size += 16    # slack: the tiled loops may read up to 15 elements past a buffer
    if train_input is not None:
        # LOAD_X flag f1: the executor may read ``x`` in place instead of copying
        # it into the arena, when no other buffer aliases the input's (a 1-D
        # input seen as a column) and so every read goes through that index
        xb = value_buf[train_input.id]
        x_off = b.bufs[xb][0]
        if not any(off == x_off for i, (off, _, _) in enumerate(b.bufs) if i != xb):
            b.tape[0][ex.C_F1] = 1
    tape = np.array(b.tape, dtype=np.int64).reshape(-1, ex.TAPE_WIDTH)
    return Plan(
        dtype=np.dtype(dtype), batch_size=batch_size, arena_size=b.size,
        bufs=np.array(b.bufs, dtype=np.int64).reshape(-1, 3), tape=tape,
        sec=np.array([fwd_end, loss_end, bwd_end, end], dtype=np.int64),
        value_buf=value_buf, grad_buf=grad_buf, params=plist,
        param_region=(p_start, n_param), grad_region=(g_start, g_end - g_start),
        state_offsets=state_offsets,
        x_buf=value_buf[train_input.id] if train_input is not None else -1,
        out_buf=value_buf[out_node.id], yf_buf=yf_buf, consts=consts, n_fused=len(fused),
        buffer_region=(run_start, _run_end(b, run_bufs, run_start)),
        running={nodes_by_id[i].name: bufs for i, bufs in run_bufs.items()} if run_bufs else {},
    )


def _run_end(b, run_bufs, start):
    """The size of the running-statistics region that starts at ``start``."""
    if not run_bufs:
        return 0
    last = max(max(pair) for pair in run_bufs.values())
    off, r, c = b.bufs[last]
    return off + r * c - start


def _norm_inputs(n):
    """``(x, weight or None, bias or None)`` of a normalisation node."""
    it = iter(n.inputs[1:])
    w = next(it) if n.attrs["has_w"] else None
    bias = next(it) if n.attrs["has_b"] else None
    return n.inputs[0], w, bias


def _running_buffers(b, nodes):
    """Allocate the running statistics of every BatchNorm that tracks them, one
    contiguous region: per node ``(running (2, N): mean, var; batches tracked (1, 1))``.
    Returns ``(region start, {node id: (running buf, tracked buf)}, consts)``: the
    initial values are written like constants."""
    start = b.size
    bufs, consts = {}, []
    for n in nodes:
        if n.op == _norms.BATCH_NORM and n.attrs["track"]:
            N = n.shape[-1]
            r = b.alloc(2, N)
            t = b.alloc(1, 1)
            bufs[n.id] = (r, t)
            consts.append((r, np.concatenate([np.asarray(n.attrs["running_mean"], dtype=np.float64).ravel(),
                                              np.asarray(n.attrs["running_var"], dtype=np.float64).ravel()])))
            consts.append((t, np.array([float(n.attrs["num_batches_tracked"])])))
    return start, bufs, consts


def _norm_buffers(b, nodes, param_buf, consts):
    """The statistics buffer of every normalisation node (LayerNorm: (batch, 2),
    BatchNorm: (5, N)) and its float row ``(eps, momentum, cumulative)`` in ``param_buf``."""
    stat = {}
    for n in nodes:
        if n.op == _norms.LAYER_NORM:
            stat[n.id] = b.alloc(_canon(n.shape)[0], _norms.LN_STAT_COLS)
            row = [n.attrs["eps"]]
        elif n.op == _norms.BATCH_NORM:
            stat[n.id] = b.alloc(_norms.BN_STAT_ROWS, n.shape[-1])
            mom = n.attrs["momentum"]
            row = [n.attrs["eps"], 0.0 if mom is None else mom, 1.0 if mom is None else 0.0]
        else:
            continue
        param_buf[n.id] = b.alloc(1, len(row))
        consts.append((param_buf[n.id], np.array(row, dtype=np.float64)))
    return stat
def _dropout_bits(p):
    """A dropout probability's float64 bits as an int64 (the tape column f3): exact whatever the step's dtype."""
    return int(np.array(float(p), dtype=np.float64).view(np.int64))


def new_arena(plan):
    """A zeroed arena with the plan's parameters and constants written in.

    Raises
    ------
    MemoryError
        The arena would not fit in the memory left (checked before allocating).
    """
    from ._memory import check
    check(max(plan.arena_size, 1) * np.dtype(plan.dtype).itemsize, "allocating the compiled graph's buffers",
          f"{plan.arena_size} values of {np.dtype(plan.dtype).name}")
    arena = np.zeros(max(plan.arena_size, 1), dtype=plan.dtype)
    for name, node, off, shape in plan.params:
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        arena[off:off + n] = np.asarray(node.value, dtype=np.float64).ravel()
    for buf, value in plan.consts:
        off, r, c = plan.bufs[buf]
        arena[off:off + r * c] = np.asarray(value, dtype=np.float64).ravel()
    return arena


def view(arena, plan, buf, shape, nb=None):
    """A live numpy view of buffer ``buf`` with the node's ``shape``."""
    off, r, c = (int(v) for v in plan.bufs[buf])
    if r < 0:
        r = plan.batch_size if nb is None else nb
    v = arena[off:off + r * c]
    if len(shape) == 2 and shape[0] is None:
        return v.reshape(r, c)
    return v.reshape(shape)

