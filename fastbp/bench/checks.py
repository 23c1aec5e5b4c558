"""The loss check of ``python -m fastbp.bench``: the peers' losses over the first steps,
compared with one reference peer's (float32 section: :func:`compare_losses` with
``--rtol``; bf16 section: :func:`fastbp.bench.bf16.check_losses` with ``--bf16-rtol``).
"""
from __future__ import annotations

__all__ = ["compare_losses"]


def compare_losses(losses, rtol=1e-3, atol=1e-6, order=("numpy", "torch", "jax", "fastbp", "torch_compile")):
    """Compare the peers' losses over the first steps.

    Parameters
    ----------
    losses : dict
        Peer name -> list of losses (None for peers that are not compared).
    rtol, atol : float
        Loss ``a`` matches reference ``r`` when ``|a - r| <= atol + rtol |r|``.
    order : sequence of str
        Preference order for the reference peer.

    Returns
    -------
    ref : str or None
        The reference peer (None if fewer than one peer has losses).
    mismatches : dict
        Peer name -> human-readable lines, one per mismatching step; only
        peers that mismatch appear (empty: all agree).
    """
    have = {k: v for k, v in losses.items() if v is not None}
    if not have:
        return None, {}
    ref = next((k for k in order if k in have), next(iter(have)))
    r = have[ref]
    out = {}
    for name, ls in have.items():
        if name == ref:
            continue
        lines = []
        if len(ls) != len(r):
            lines.append(f"{name}: {len(ls)} check losses vs {len(r)} for {ref}")
        else:
            for k, (a, b) in enumerate(zip(ls, r)):
                if not (abs(a - b) <= atol + rtol * abs(b)):  # NaN never matches
                    rel = abs(a - b) / abs(b) if b else float("inf")
                    lines.append(f"{name} step {k}: loss {a:.7g} vs {ref} {b:.7g} "
                                 f"(relative difference {rel:.2e} > {rtol:g})")
        if lines:
            out[name] = lines
    return ref, out
