"""What a step has for its normalisation layers: :class:`NormState`.

BatchNorm1d keeps running statistics in one region of the step's arena
(``plan.buffer_region``; the compiler lays it out): not parameters, not
optimizer state, saved in checkpoints as ``buffers``.  LayerNorm keeps
nothing between calls.  :class:`fastbp._step_base.StepBase` inherits this.
"""
from __future__ import annotations

__all__ = ["NormState"]


def _norm_buffer_views(plan, arena):
    """``{name: view}`` of the running statistics of ``plan`` in ``arena``."""
    out = {}
    for name, (r, t) in plan.running.items():
        off, _, c = (int(v) for v in plan.bufs[r])
        out[f"{name}.running_mean"] = arena[off:off + c]
        out[f"{name}.running_var"] = arena[off + c:off + 2 * c]
        t0 = int(plan.bufs[t][0])
        out[f"{name}.num_batches_tracked"] = arena[t0:t0 + 1]
    return out


class NormState:
    """The running statistics of a step's BatchNorm1d layers (``self.plan``,
    ``self.graph`` and the host arena are the step's)."""

    @property
    def buffers(self):
        """The running statistics of the BatchNorm1d layers (not trained; saved in
        checkpoints): ``"<i>.running_mean"``, ``"<i>.running_var"`` (float arrays of
        shape ``(num_features,)``) and ``"<i>.num_batches_tracked"`` (shape ``(1,)``,
        a count held as a float), live views of the step's memory (host copies on
        a GPU step).  Empty without BatchNorm1d."""
        return _norm_buffer_views(self.plan, self._buffer_host())

    @property
    def buffer_vector(self):
        """The region of the running statistics (every BatchNorm1d's, in layer order;
        size 0 without), a live 1-D view on a CPU step: what checkpoints save as ``buffers``."""
        off, n = self.plan.buffer_region
        return self._buffer_host()[off:off + n]

    def _buffer_host(self):
        """The host array that holds the plan's arena (a GPU step: a host copy)."""
        return self.arena

    def check_train_rows(self, n, where=""):
        """Check that a training call of ``n`` rows can run: BatchNorm needs more than one
        value per channel (PyTorch's rule).

        Parameters
        ----------
        n : int
            Rows of the call.
        where : str, default ""
            Added to the error after "when training" (e.g. " in fit").

        Raises
        ------
        ValueError
            ``n < 2`` and the model has a BatchNorm1d.
        """
        if n < 2 and any(nd.op == "batch_norm" for nd in self.graph.nodes):
            raise ValueError(f"Expected more than 1 value per channel when training{where}: BatchNorm1d "
                             f"gets a minibatch of {n} row (x needs at least 2 rows); nothing was changed")

    def check_eval_rows(self, n, where="predict"):
        """Check that an eval call of ``n`` rows gives every row the statistics of all ``n``.

        A call of more than ``batch_size`` rows runs in minibatches, which a BatchNorm1d
        without running statistics (``track_running_stats=False``: batch statistics in eval
        too, as in PyTorch) would normalise separately.

        Parameters
        ----------
        n : int
            Rows of the call.
        where : str, default "predict"
            The caller's name in the error.

        Raises
        ------
        ValueError
            ``n > batch_size`` or ``n < 2`` and the model has such a BatchNorm1d
            (one row has no batch statistics: PyTorch's "Expected more than 1
            value per channel").
        """
        if 2 <= n <= self.batch_size:
            return
        if not any(nd.op == "batch_norm" and not nd.attrs["track"] for nd in self.graph.nodes):
            return
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel in {where}: a BatchNorm1d with "
                             f"track_running_stats=False normalises with the statistics of the rows it is "
                             f"given, so {where} needs at least 2 rows (got {n}); nothing was changed")
        raise ValueError(f"{where}: a BatchNorm1d with track_running_stats=False normalises with the "
                         f"statistics of the rows it is given, so {where} takes at most batch_size="
                         f"{self.batch_size} rows at once (got {n}): pass fewer rows per call, or use "
                         f"track_running_stats=True")
