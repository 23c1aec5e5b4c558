"""The static graph compiler: check, infer, fuse, plan buffers, emit a tape.

Given a graph, the node to differentiate (a loss, or any output) and the
nodes to differentiate with respect to, :func:`build_plan` runs these phases,
one function each:

1. checks the graph (nodes of one graph, every ``wrt`` node reachable from
   the output) -- shapes were already inferred as nodes were built;
2. fuses every ``x @ W (+ b) (-> activation)`` chain of parameters into
   one linear instruction (forward with a fused epilogue, backward with
   ``dZ`` computed in place); an activation whose derivative reads its
   input (registry ``uses="input"``) keeps, in a buffer of its own, its
   derivative at the pre-activation ``Z`` (the others only their output),
   as does such an activation standing alone (after a normalisation layer,
   a gate): the training forward computes ``f`` and ``f'`` in one pass
   (their costly part, GELU's ``erf``, is shared), and the backward is a
   product (eval mode: the forward alone, the buffer holds ``Z``);
3. lays out one flat arena: parameters, then their gradients (one
   contiguous block, in the same order), then optimizer state, then
   activations and activation gradients -- allocated once;
4. emits the forward, loss, backward and update instructions that
   :mod:`fastbp._executor` runs (:mod:`fastbp._emit`).  An activation's parameters (a slope) go
   in a float buffer the tape points to (column ``C_P``), filled like a
   constant.  A value used by several nodes receives
   the sum of their gradients: the first contribution writes its gradient
   buffer, later ones accumulate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _isa as ex
from ._emit import Builder, canon, emit_backward, emit_forward, emit_update
from .graph import GraphError, GraphTypeError, Node, activation_of, upstream
from .registry import activations as _acts
from .registry import norms as _norms


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

    Notes
    -----
    Six phases, each a function of this module: :func:`_check_arguments`,
    :func:`_select` (the nodes the output needs, and those that need a
    gradient), :func:`_fuse` (linear chains), :func:`_lay_out` (the arena's
    buffers), then :mod:`fastbp._emit`'s ``emit_forward``, ``emit_backward``
    and ``emit_update`` (the tape's sections), and :func:`_finish` (the
    :class:`Plan`).
    """
    _check_arguments(graph, output, wrt)
    g = _select(graph, output, wrt)
    _check_parameters_fit(g, dtype)
    fusion = _fuse(g, output)
    lay = _lay_out(g, fusion, batch_size, optimizer)
    fwd_end, loss_end = emit_forward(g, fusion, lay, output, train_input)
    bwd_end = emit_backward(g, fusion, lay, output)
    emit_update(lay, optimizer)
    return _finish(g, fusion, lay, output, train_input, dtype, batch_size,
                   sec=(fwd_end, loss_end, bwd_end, len(lay.b.tape)))


# -- phase 1: the arguments ---------------------------------------------------------------

def _check_arguments(graph, output, wrt):
    """``GraphError`` unless ``output`` and every ``wrt`` entry are nodes of ``graph``, each
    ``wrt`` node an input or a parameter, listed once."""
    if not isinstance(output, Node) or output.graph is not graph:
        raise GraphError(f"output {output!r} is not a node of this graph")
    for w in wrt:
        if not isinstance(w, Node):
            raise GraphTypeError(f"wrt entries must be graph nodes, got {type(w).__name__}")
        if w.graph is not graph:
            raise GraphError(f"wrt node {w!r} belongs to another graph than the output {output!r}")
        if w.op not in ("input", "param"):
            raise GraphError(f"wrt node {w!r} is not an input or a parameter")
    if len({w.id for w in wrt}) != len(wrt):
        raise GraphError("wrt lists a node twice")


# -- phase 2: what the output needs, and what needs a gradient -----------------------------

@dataclass
class _Selection:
    nodes: list         # the nodes the output depends on, in graph (topological) order
    by_id: dict         # node id -> node
    wrt_ids: set
    rg: set             # ids of the nodes whose gradient is needed
    users: dict         # node id -> the selected nodes that read it


def _check_parameters_fit(g, dtype):
    """ValueError naming the node and the parameter where an activation's parameters or a
    normalisation's ``eps`` lie beyond ``dtype``'s range: written into the arena, they would
    become infinities (``layer_norm(x, eps=1e39)`` in float32 gave NaN without an error)."""
    if np.dtype(dtype) == np.float64:
        return
    from ._ops_activations import scalar_array
    for n in g.nodes:
        act = activation_of(n)
        if act is not None and len(act[1]):
            scalar_array(n.op, [p.name for p in act[0].params], act[1], dtype, "dtype=float64")
        elif n.op in _norms.OPS:
            scalar_array(n.op, ["eps"], [n.attrs["eps"]], dtype, "dtype=float64")


def _select(graph, output, wrt):
    """The nodes ``output`` depends on; ``GraphError`` when it does not depend on a ``wrt`` node."""
    needed = upstream(output)
    nodes = [n for n in graph.nodes if n.id in needed]
    wrt_ids = {w.id for w in wrt}
    for w in wrt:
        if w.id not in needed:
            raise GraphError(f"the output {output!r} does not depend on wrt node {w!r}")
    rg = set()
    for n in nodes:
        if n.id in wrt_ids or any(i.id in rg for i in n.inputs):
            rg.add(n.id)
    return _Selection(nodes, {n.id: n for n in nodes}, wrt_ids, rg, _consumers(nodes))


# -- phase 3: fusion of x @ W (+ b) (-> act) with parameters W, b ---------------------------

@dataclass
class _Fusion:
    fused: dict         # last node id of a chain -> dict(x, W, b, act, params, wt, chain)
    hidden: set         # ids of the chains' intermediate nodes (no buffer of their own)


def _fuse(g, output):
    """Every ``x @ W (+ b) (-> activation)`` chain whose ``W`` (and ``b``) are trained
    parameters, read by nothing else on the way, becomes one linear instruction."""
    fused, hidden = {}, set()
    for m in g.nodes:
        if m.op != "matmul":
            continue
        a, W = m.inputs
        if W.op != "param" or W.id not in g.wrt_ids or len(W.shape) != 2 or len(a.shape) != 2:
            continue
        chain = [m]
        last = m
        bias = None
        u = g.users[last.id]
        if len(u) == 1 and u[0].op == "add" and last is not output:
            add = u[0]
            other = add.inputs[1] if add.inputs[0] is last else add.inputs[0]
            if (other.op == "param" and other.id in g.wrt_ids and other is not last
                    and other.shape in ((W.shape[0] if m.attrs["tb"] else W.shape[1],),)
                    and add.shape == last.shape):
                bias = other
                chain.append(add)
                last = add
        act, aparams = _acts.get("identity"), ()
        u = g.users[last.id]
        if len(u) == 1 and activation_of(u[0]) is not None and last is not output:
            act, aparams = activation_of(u[0])
            chain.append(u[0])
            last = u[0]
        for c in chain[:-1]:
            hidden.add(c.id)
        fused[last.id] = dict(x=a, W=W, b=bias, act=act, params=aparams, wt=m.attrs["tb"], chain=chain)
    return _Fusion(fused, hidden)


# -- phase 4: the arena's buffers: params | grads | optimizer state | everything else -------

@dataclass
class _Layout:
    b: Builder
    value_buf: dict     # node id -> buffer of its value
    grad_buf: dict      # node id -> buffer of its gradient
    plist: list         # [(name, node, offset, shape)] of the parameters
    p_start: int        # the parameter region: offset, values
    n_param: int
    g_start: int        # the gradient region [g_start, g_end)
    g_end: int
    state_offsets: list # the optimizer's state vectors
    run_start: int      # the running statistics: region start, node id -> (running, tracked) buffers
    run_bufs: dict
    consts: list        # [(buffer, float64 values)] written into a new arena
    pre_buf: dict       # fused node id -> kept pre-activation or derivative (entries with uses="input")
    param_buf: dict     # node id -> its float row (activation parameters, norm eps/momentum)
    stat_buf: dict      # normalisation node id -> its statistics buffer
    deriv_buf: dict     # standalone activation node id -> its kept derivative (uses="input")


def _lay_out(g, fusion, batch_size, optimizer):
    """Allocate every buffer of the arena, in the order the regions need."""
    b = Builder(batch_size)
    params = [n for n in g.nodes if n.op == "param"]
    value_buf, grad_buf = {}, {}
    plist = []
    for p in params:
        r, c = canon(p.shape)
        value_buf[p.id] = b.alloc(r, c)
        plist.append((p.name, p, b.bufs[value_buf[p.id]][0], p.shape))
    p_end = b.size
    p_start = plist[0][2] if plist else 0
    for p in params:
        if p.id in g.rg:
            grad_buf[p.id] = b.alloc(*canon(p.shape))
    g_start = b.bufs[grad_buf[params[0].id]][0] if params and params[0].id in grad_buf else b.size
    g_end = b.size
    # spare slots right after the gradients (fastbp.distributed uses three: loss*rows,
    # rows, error count): data-parallel training reduces gradients, loss and errors of
    # all ranks in ONE Allreduce over arena[g_start : g_end + 3]
    b.size += 16
    n_param = p_end - p_start
    state_offsets = []
    if optimizer is not None:
        if any(p.id not in g.rg for p in params):
            raise GraphError("every parameter must be trained")
        if g_end - g_start != n_param:
            raise GraphError("internal: gradient region does not mirror the parameter region")
        for _ in range(optimizer.n_state):
            state_offsets.append(b.size)
            b.size += n_param
    run_start, run_bufs, run_consts = _running_buffers(b, g.nodes)

    consts = list(run_consts)
    for n in g.nodes:
        if n.op == "param" or n.id in fusion.hidden:
            continue
        r, c = canon(n.shape)
        value_buf[n.id] = b.alloc(r, c)
        if n.op == "const":
            consts.append((value_buf[n.id], n.value))
    for n in g.nodes:
        if n.op == "param" or n.id in fusion.hidden or n.id not in g.rg:
            continue
        grad_buf[n.id] = b.alloc(*canon(n.shape))
    # activations: the pre-activation of fused ones that read their input, and
    # every activation's parameters (a row of floats, written like a constant)
    pre_buf, param_buf, deriv_buf = {}, {}, {}
    for n in g.nodes:
        f = fusion.fused.get(n.id)
        entry, aparams = (f["act"], f["params"]) if f is not None else (activation_of(n) or (None, ()))
        if entry is None:
            continue
        if f is not None and entry.uses == "input":
            pre_buf[n.id] = b.alloc(*canon(n.shape))
        elif f is None and entry.uses == "input" and n.id in g.rg and n.id not in fusion.hidden:
            # a standalone activation whose derivative reads its input: the training forward
            # keeps the derivative itself (one pass of f and f' together, which share their
            # costly part), the backward multiplies by it
            deriv_buf[n.id] = b.alloc(*canon(n.shape))
        if aparams:
            param_buf[n.id] = b.alloc(1, len(aparams))
            consts.append((param_buf[n.id], np.array(aparams, dtype=np.float64)))
    stat_buf = _norm_buffers(b, g.nodes, param_buf, consts)
    return _Layout(b, value_buf, grad_buf, plist, p_start, n_param, g_start, g_end, state_offsets,
                   run_start, run_bufs, consts, pre_buf, param_buf, stat_buf, deriv_buf)


# -- the plan ------------------------------------------------------------------------------

def _finish(g, fusion, lay, output, train_input, dtype, batch_size, sec):
    """The loss's target buffer, the arena's slack, the in-place input flag, and the Plan."""
    b, value_buf = lay.b, lay.value_buf
    if b.size * np.dtype(dtype).itemsize >= 2**62:     # offsets past int64 (an absurd batch size)
        from ._memory import check
        check(b.size * np.dtype(dtype).itemsize, "laying out the compiled graph's buffers",
              f"{b.size} values of {np.dtype(dtype).name}")
    yf_buf = -1
    if output.op == "loss":
        yf_buf = b.alloc(*canon(output.inputs[0].shape))
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
        sec=np.array(sec, dtype=np.int64),
        value_buf=value_buf, grad_buf=lay.grad_buf, params=lay.plist,
        param_region=(lay.p_start, lay.n_param), grad_region=(lay.g_start, lay.g_end - lay.g_start),
        state_offsets=lay.state_offsets,
        x_buf=value_buf[train_input.id] if train_input is not None else -1,
        out_buf=value_buf[out_node.id], yf_buf=yf_buf, consts=lay.consts, n_fused=len(fusion.fused),
        buffer_region=(lay.run_start, _run_end(b, lay.run_bufs, lay.run_start)),
        running={g.by_id[i].name: bufs for i, bufs in lay.run_bufs.items()} if lay.run_bufs else {},
    )


def _run_end(b, run_bufs, start):
    """The size of the running-statistics region that starts at ``start``."""
    if not run_bufs:
        return 0
    last = max(max(pair) for pair in run_bufs.values())
    off, r, c = b.bufs[last]
    return off + r * c - start


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
            stat[n.id] = b.alloc(canon(n.shape)[0], _norms.LN_STAT_COLS)
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

