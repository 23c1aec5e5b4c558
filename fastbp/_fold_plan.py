"""A CPU plan rewrite: dropout's backward folded into the preceding activation's.

For ``out = dropout(act(z))`` where the activation keeps its derivative
``D = act'(z)`` for the backward (registry ``uses="input"``: GELU, SiLU, ELU,
...), the compiled backward is two passes over the batch:
``dY = dout * m`` (``OP_DROPOUT_BWD``, which recomputes the mask ``m``) and
``dz = dY * D`` (``OP_ACT_BWD``).  Both are products by per-element factors, so
:func:`fold_dropout` has the forward scale ``D`` by the mask as it draws it
(``OP_DROPOUT`` with column c = D: :func:`fastbp.kernels.dropout._dropout_d`)
and drops ``OP_DROPOUT_BWD``: the activation's backward reads ``dout`` and
computes ``dz = dout * (m D)``.  One pass and one mask fewer per dropout
layer per step; the result differs from the two passes by rounding only
(``(dout m) D`` against ``dout (m D)``).

Only where it is safe, checked on the tape: the activation's output is read by
the dropout alone, its gradient is written by the dropout's backward alone (no
accumulation) and read by the activation's backward alone, right after it.
The CUDA step runs the plan as the compiler made it.
"""
import dataclasses

import numpy as np

from . import _isa, config

__all__ = ["fold_dropout"]

_BUF_COLS = (_isa.C_OUT, _isa.C_A, _isa.C_B, _isa.C_C, _isa.C_D, _isa.C_E, _isa.C_F, _isa.C_H, _isa.C_P)


def _uses(tape, bufs, buf):
    """``[(row, column)]`` of every reference to ``buf``'s memory (any buffer at its offset)."""
    off = bufs[buf][0]
    same = {i for i in range(len(bufs)) if bufs[i][0] == off}
    return [(r, c) for r, row in enumerate(tape) for c in _BUF_COLS
            if row[c] in same and not _is_region(row, c)]


def _is_region(row, col):
    """Whether column ``col`` of ``row`` holds an arena offset rather than a buffer id
    (the update instructions' regions, BatchNorm's running update)."""
    op = int(row[_isa.C_OP])
    if op in (_isa.OP_SGD, _isa.OP_ADAM, _isa.OP_RMSPROP):
        return True
    return op == _isa.OP_BATCHNORM and int(row[_isa.C_F1]) == 1 and col in (_isa.C_A, _isa.C_B)


def fold_dropout(plan):
    """``plan`` with every foldable dropout's backward folded (see the module docstring);
    the same plan object when nothing folds or ``config.FOLD_DROPOUT`` is off.

    Parameters
    ----------
    plan : fastbp.compiler.Plan

    Returns
    -------
    fastbp.compiler.Plan
        Same buffers and arena; a tape without the folded ``OP_DROPOUT_BWD`` rows
        and section ends moved accordingly.
    """
    if not config.FOLD_DROPOUT:
        return plan
    tape = [list(map(int, row)) for row in plan.tape]
    bufs = [tuple(int(v) for v in row) for row in plan.bufs]
    drop_rows = []
    for i, row in enumerate(tape):
        if row[_isa.C_OP] != _isa.OP_DROPOUT:
            continue
        y = row[_isa.C_A]
        acts = [j for j in range(i) if tape[j][_isa.C_OP] == _isa.OP_ACT and tape[j][_isa.C_OUT] == y]
        if len(acts) != 1 or tape[acts[0]][_isa.C_C] < 0 or y in (plan.out_buf, plan.x_buf):
            continue
        d_keep = tape[acts[0]][_isa.C_C]
        if sorted(_uses(tape, bufs, y)) != sorted([(acts[0], _isa.C_OUT), (i, _isa.C_A)]):
            continue
        back = [k for k, r in enumerate(tape) if r[_isa.C_OP] == _isa.OP_DROPOUT_BWD
                and r[_isa.C_F1] == row[_isa.C_F1] and r[_isa.C_F3] == row[_isa.C_F3]]
        if len(back) != 1 or back[0] + 1 >= len(tape):
            continue
        k = back[0]
        dy = tape[k][_isa.C_E]
        nxt = tape[k + 1]
        if (tape[k][_isa.C_F2] != 0 or nxt[_isa.C_OP] != _isa.OP_ACT_BWD or nxt[_isa.C_F1] != 1
                or nxt[_isa.C_C] != d_keep or nxt[_isa.C_D] != dy):
            continue
        if sorted(_uses(tape, bufs, dy)) != sorted([(k, _isa.C_E), (k + 1, _isa.C_D)]):
            continue
        if sorted(r for r, _ in _uses(tape, bufs, d_keep)) != sorted([acts[0], k + 1]):
            continue
        row[_isa.C_C] = d_keep
        nxt[_isa.C_D] = tape[k][_isa.C_D]
        drop_rows.append(k)
    if not drop_rows:
        return plan
    keep = [r for r in range(len(tape)) if r not in set(drop_rows)]
    sec = np.array([int(e) - sum(1 for k in drop_rows if k < int(e)) for e in plan.sec], dtype=np.int64)
    new_tape = np.array([tape[r] for r in keep], dtype=np.int64).reshape(-1, _isa.TAPE_WIDTH)
    return dataclasses.replace(plan, tape=new_tape, sec=sec)
