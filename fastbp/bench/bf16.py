"""The bf16 section of ``python -m fastbp.bench`` (``--precision fp32,bf16``).

Next to the float32 peers, each configuration gets the same training step
(same weights, batches, loss and optimizer) with its matrix products in
bfloat16, by these peers, each in a process of its own:

``fastbp_bf16``
    :func:`fastbp.compile` with ``precision="bf16"``: the linear layers'
    products read bfloat16 copies of their operands and accumulate in
    float32 (oneDNN); weights, optimizer state, activations and loss stay
    float32.
``torch_autocast``
    PyTorch eager with ``torch.autocast("cpu", dtype=torch.bfloat16)``
    around forward and loss (float32 parameters and optimizer).
``torch_bf16_matmul``
    PyTorch eager on float32 tensors with float32 products allowed to run
    in bfloat16: ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``
    (``torch.set_float32_matmul_precision("medium")`` on a PyTorch without
    it).  oneDNN may still compute them in float32 (it does on CPUs whose
    kernels do not use the permission): the peer measures its first layer's
    product against float64 and the section says when it stayed float32.

The section holds the bf16 variants of the libraries given by ``--peers``
(``fastbp`` -> ``fastbp_bf16``, ``torch`` -> both PyTorch peers).  Their
losses over the first steps are checked against fastbp's float32 losses of
the same configuration (else the float32 reference peer's) with
``--bf16-rtol`` (default 0.03: bf16 products move a loss by about 1e-3
relative).  The timing rounds interleave them with the float32 peers, and
the section reports fastbp bf16 against the fastest float32 peer and the
fastest bf16 PyTorch peer.  Where ``fastbp._bf16.available()`` is false
(no AVX512-BF16/AMX-BF16, or oneDNN not installed) the section is skipped
with its reason on one line.

Importing this module imports numpy only (as :mod:`fastbp.bench.peers`).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from .checks import compare_losses
from .peers import DISPLAY, MODULES, PEERS, FastbpPeer, TorchPeer

__all__ = ["PRECISIONS", "BF16_PEERS", "BASE", "ALL_PEERS", "ALL_DISPLAY", "ALL_MODULES", "parse_precision",
           "precision_of", "bf16_peers_for", "bf16_status", "unavailable_line", "check_losses", "summarize",
           "FastbpBf16Peer", "TorchAutocastPeer", "TorchBf16MatmulPeer"]

#: the sections ``--precision`` chooses from, in the order they are printed
PRECISIONS = ("fp32", "bf16")

#: a product whose relative error (Frobenius norm, against float64) stays below
#: this was computed in float32: bfloat16 operands give about 3e-3
BF16_PRODUCT_RTOL = 1e-4


class FastbpBf16Peer(FastbpPeer):
    """:class:`fastbp.bench.peers.FastbpPeer` compiled with ``precision="bf16"``."""

    name = "fastbp_bf16"
    precision = "bf16"

    def info(self):
        """``{"precision": step.precision, "cpu_bf16": [...flags]}`` for the worker's ``info``."""
        from fastbp import _bf16

        return {"precision": self.compiled.precision, "cpu_bf16": list(_bf16.cpu_support())}


class TorchAutocastPeer(TorchPeer):
    """:class:`fastbp.bench.peers.TorchPeer` with forward and loss under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``; float32 parameters and optimizer."""

    name = "torch_autocast"

    def _train_step(self, x, y):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def info(self):
        """``{"mode": ...}`` for the worker's ``info``."""
        return {"mode": 'torch.autocast("cpu", dtype=torch.bfloat16)'}


class TorchBf16MatmulPeer(TorchPeer):
    """:class:`fastbp.bench.peers.TorchPeer` on float32 tensors with float32 products
    allowed in bfloat16 (process-wide: this peer's worker process only).

    Sets ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` where
    that exists, else ``torch.set_float32_matmul_precision("medium")``, then
    measures one product of the first layer's shape against float64
    (``product_rel_err``): about 3e-3 if it ran in bfloat16, 1e-7 if oneDNN
    kept it float32.
    """

    name = "torch_bf16_matmul"

    def __init__(self, config, weights, lr, dtype=np.float32):
        super().__init__(config, weights, lr, dtype)
        torch = self.torch
        matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
        if matmul is not None and hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = "bf16"
            self.mode = 'torch.backends.mkldnn.matmul.fp32_precision = "bf16"'
        else:
            torch.set_float32_matmul_precision("medium")
            self.mode = 'torch.set_float32_matmul_precision("medium")'
        g = torch.Generator().manual_seed(0)
        i, o = config.layers[0]
        a = torch.randn(config.batch, i, generator=g)
        w = torch.randn(o, i, generator=g)
        b = torch.randn(o, generator=g)
        ref = a.double() @ w.double().T + b.double()
        got = torch.nn.functional.linear(a, w, b).double()
        self.product_rel_err = float((got - ref).norm() / ref.norm())

    def info(self):
        """``{"mode", "product_rel_err", "products_in_bf16"}`` for the worker's ``info``."""
        return {"mode": self.mode, "product_rel_err": self.product_rel_err,
                "products_in_bf16": self.product_rel_err > BF16_PRODUCT_RTOL}


#: name -> peer class of the bf16 section, in the order they are reported
BF16_PEERS = {c.name: c for c in (FastbpBf16Peer, TorchAutocastPeer, TorchBf16MatmulPeer)}
#: bf16 peer -> the float32 peer (``--peers`` name) whose library it runs
BASE = {"fastbp_bf16": "fastbp", "torch_autocast": "torch", "torch_bf16_matmul": "torch"}
#: every peer, float32 and bf16: name -> class, printed name, module
ALL_PEERS = {**PEERS, **BF16_PEERS}
ALL_DISPLAY = {**DISPLAY, "fastbp_bf16": "fastbp bf16", "torch_autocast": "PyTorch autocast bf16",
               "torch_bf16_matmul": "PyTorch bf16 matmuls"}
ALL_MODULES = {**MODULES, **{k: MODULES[v] for k, v in BASE.items()}}


def parse_precision(text):
    """The sections ``--precision`` asks for.

    Parameters
    ----------
    text : str
        Comma-separated names among ``fp32`` and ``bf16`` (``"fp32,bf16"``:
        both sections).

    Returns
    -------
    tuple of str
        The names, in :data:`PRECISIONS` order, without repeats.

    Raises
    ------
    ValueError
        An unknown name, or none.
    """
    asked = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    bad = [t for t in asked if t not in PRECISIONS]
    if bad or not asked:
        raise ValueError(f"--precision: expected a comma-separated list of {', '.join(PRECISIONS)}, got {text!r}")
    return tuple(p for p in PRECISIONS if p in asked)


def precision_of(name):
    """``"bf16"`` for a peer of the bf16 section, else ``"fp32"``."""
    return "bf16" if name in BF16_PEERS else "fp32"


def bf16_peers_for(peers):
    """The bf16 peers whose library is among the float32 peer names ``peers``, in report order."""
    return [b for b in BF16_PEERS if BASE[b] in peers]


_STATUS = ("import json; from fastbp import _bf16; ok, why = _bf16.available(); "
           "print(json.dumps({'ok': bool(ok), 'why': why, 'cpu': list(_bf16.cpu_support())}))")


def bf16_status(env=None, timeout=120):
    """Whether ``precision="bf16"`` works here, asked of a fresh process (so that
    the launcher loads neither fastbp nor oneDNN's OpenMP).

    Parameters
    ----------
    env : dict, optional
        The environment of the process (the peers' one).
    timeout : float
        Seconds before the check counts as failed.

    Returns
    -------
    ok : bool
    why : str
        ``fastbp._bf16.available()``'s reason when not ``ok`` (or why the check failed).
    cpu : list of str
        The CPU's bf16 flags (``fastbp._bf16.cpu_support()``).
    """
    try:
        p = subprocess.run([sys.executable, "-c", _STATUS], env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"checking fastbp._bf16.available() took over {timeout:.0f} s", []
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"fastbp._bf16.available() failed: {tail}", []
    out = json.loads(lines[-1])
    return out["ok"], out["why"], out["cpu"]


def unavailable_line(why):
    """The one line printed instead of the bf16 section."""
    return f"bf16 section skipped: {why}"


def _rel_diffs(ls, ref):
    if ls is None or ref is None or len(ls) != len(ref):
        return None
    return max((abs(a - b) / abs(b) if b else abs(a - b)) for a, b in zip(ls, ref))


def check_losses(rec, live, rtol):
    """Check the bf16 peers' first losses against the float32 ones of the same configuration.

    The reference is fastbp's float32 peer when it ran, else the float32
    section's reference peer, else (no float32 peer) the first bf16 peer
    with losses.  Writes ``rec["bf16"]`` (``loss_reference``, ``loss_rtol``,
    ``loss_mismatches``) and each bf16 row's ``loss_check`` and
    ``loss_rel_diff`` (the largest relative difference over the steps).

    Parameters
    ----------
    rec : dict
        The configuration's record (:func:`fastbp.bench.runner.run_config`),
        its float32 check done.
    live : list of str
        The bf16 peers that built and stepped.
    rtol : float
        Relative tolerance.

    Returns
    -------
    dict
        Peer name -> mismatch lines (empty: all agree).
    """
    sec = rec.setdefault("bf16", {})
    peers = rec["peers"]
    ref = None
    for cand in ("fastbp", rec.get("loss_reference")):
        if cand and cand in peers and precision_of(cand) == "fp32" and peers[cand].get("check_losses") is not None:
            ref = cand
            break
    losses = {p: peers[p]["check_losses"] for p in live}
    if ref is not None:
        losses = {ref: peers[ref]["check_losses"], **losses}
    ref, mism = compare_losses(losses, rtol=rtol, order=(ref,) if ref else tuple(live))
    sec.update(loss_reference=ref, loss_rtol=rtol, loss_mismatches=mism)
    for p in live:
        r = peers[p]
        r["loss_rel_diff"] = None if p == ref else _rel_diffs(r["check_losses"], losses.get(ref))
        if r["check_losses"] is None:
            r["loss_check"] = "not compared (own init)"
        else:
            r["loss_check"] = "reference" if p == ref else ("MISMATCH" if p in mism else "ok")
    return mism


def summarize(rec, live):
    """Ratios of the bf16 section: each timed bf16 row's ``vs_fastest`` (within the section)
    and ``rec["bf16"]["fastbp_bf16"]``, fastbp bf16's speed-up over the fastest float32
    peer (``vs_fp32``) and over the fastest bf16 PyTorch peer (``vs_torch_bf16``):
    ``{"over": peer, "x": other's median / fastbp bf16's median}``.

    Parameters
    ----------
    rec : dict
        The configuration's record with medians (``median_s``) of the timed peers.
    live : list of str
        The peers, float32 and bf16, timed to the end.
    """
    peers = rec["peers"]
    timed = [p for p in live if "median_s" in peers.get(p, {})]
    b = [p for p in timed if precision_of(p) == "bf16"]
    if not b:
        return
    sec = rec.setdefault("bf16", {})
    fastest = min(b, key=lambda p: peers[p]["median_s"])
    sec["fastest"] = fastest
    for p in b:
        peers[p]["vs_fastest"] = peers[p]["median_s"] / peers[fastest]["median_s"]
    if "fastbp_bf16" not in b:
        return
    mine = peers["fastbp_bf16"]["median_s"]
    out = {}
    for key, group in (("vs_fp32", [p for p in timed if precision_of(p) == "fp32"]),
                       ("vs_torch_bf16", [p for p in b if BASE[p] == "torch"])):
        if group:
            best = min(group, key=lambda p: peers[p]["median_s"])
            out[key] = {"over": best, "x": peers[best]["median_s"] / mine}
    sec["fastbp_bf16"] = out
