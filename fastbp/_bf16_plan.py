"""The plan of a ``precision="bf16"`` step: a compiled plan whose linear layers
multiply bfloat16 copies (see :mod:`fastbp._handlers_bf16`).

:func:`bf16_plan` rewrites a float32 :class:`fastbp.compiler.Plan`: each
``OP_LINEAR`` becomes ``OP_LINEAR_BF16`` and each ``OP_LINEAR_BWD``
``OP_LINEAR_BWD_BF16``, with three kinds of new buffers appended to the arena
(after everything else, so every other offset, the parameters' included, is
unchanged): the bf16 copy of each linear layer's input and weight (written by
the forward, read again by the backward) and of each layer's ``dZ``.  A layer
whose product has fewer than :data:`fastbp.config.BF16_MIN_MACS`
multiply-adds at the full batch stays float32 (read when the plan is made).  A bf16
matrix of ``c`` columns takes ``ceil(c / 2)`` float32 columns
(:mod:`fastbp.kernels.bf16`).  Products outside linear layers (a graph's
``matmul`` of two activations) stay in float32.
"""
import dataclasses

import numpy as np

from . import _isa, config

__all__ = ["bf16_plan"]


def bf16_plan(plan):
    """A copy of ``plan`` (float32) whose linear layers' products are on bf16 copies.

    Parameters
    ----------
    plan : fastbp.compiler.Plan
        A float32 plan.

    Returns
    -------
    fastbp.compiler.Plan
        The same buffers and offsets plus the bf16 copies (a larger
        ``arena_size``), and a tape with the bf16 opcodes.
    """
    if np.dtype(plan.dtype) != np.float32:
        raise ValueError(f"a bf16 plan needs a float32 plan, got {np.dtype(plan.dtype).name}")
    bufs = [tuple(int(v) for v in row) for row in plan.bufs]
    size = int(plan.arena_size)

    def alloc_half(buf):
        nonlocal size
        _, rows, cols = bufs[buf]
        half = (cols + 1) // 2
        off = size + (-size) % 16          # 64-byte aligned, as the compiler's buffers
        size = off + (plan.batch_size if rows < 0 else rows) * half
        bufs.append((off, rows, half))
        return len(bufs) - 1

    def macs(row):          # the forward product's multiply-adds at the full batch
        _, xr, xc = bufs[int(row[_isa.C_A])]
        _, wr, wc = bufs[int(row[_isa.C_B])]
        return (plan.batch_size if xr < 0 else xr) * xc * (wr if row[_isa.C_F1] else wc)

    tape = plan.tape.copy()
    xh, wh, converted = {}, {}, set()
    for row in tape:
        if row[_isa.C_OP] == _isa.OP_LINEAR and macs(row) >= config.BF16_MIN_MACS:
            a, b = int(row[_isa.C_A]), int(row[_isa.C_B])
            if a not in xh:
                xh[a] = alloc_half(a)
            if b not in wh:
                wh[b] = alloc_half(b)
            converted.add((a, b))
            row[_isa.C_OP] = _isa.OP_LINEAR_BF16
            row[_isa.C_E] = xh[a]
            row[_isa.C_F] = wh[b]
    for row in tape:
        if row[_isa.C_OP] == _isa.OP_LINEAR_BWD and (int(row[_isa.C_A]), int(row[_isa.C_B])) in converted:
            a, b = int(row[_isa.C_A]), int(row[_isa.C_B])
            row[_isa.C_OP] = _isa.OP_LINEAR_BWD_BF16
            row[_isa.C_A] = xh[a]
            row[_isa.C_B] = wh[b]
            row[_isa.C_H] = alloc_half(int(row[_isa.C_D]))
    size += 16      # slack, as the compiler leaves: the tiled loops may read past a buffer
    return dataclasses.replace(plan, arena_size=size, bufs=np.array(bufs, dtype=np.int64).reshape(-1, 3),
                               tape=tape)
