"""Where two model specs differ, in words: what ``load(path, expect_model=...)`` reports.

Two models can print alike and still differ (a ``from_torch`` Linear keeps
its weight as PyTorch's ``(out_features, in_features)``: ``layout`` is in
the spec, not in the repr), so the message names each differing field.
"""
from __future__ import annotations

__all__ = ["spec_differences"]

#: what a field of a layer spec means, where its name alone does not say it
_FIELD_NOTES = {
    "layout": "layout is the weight layout: 'out_in' keeps W as PyTorch's (out_features, in_features), "
              "as a from_torch step saves it; 'in_out' is fastbp's (in_features, out_features)",
}


def _layer_name(where, spec):
    kind = spec.get("type", "?") if isinstance(spec, dict) else type(spec).__name__
    return f"layer {where} ({kind})" if where else f"the model ({kind})"


def _walk(saved, expected, where, out, notes):
    if not (isinstance(saved, dict) and isinstance(expected, dict)):
        if saved != expected:
            out.append(f"{_layer_name(where, saved)}: saved {saved!r}, expected {expected!r}")
        return
    if saved.get("type") != expected.get("type"):
        out.append(f"{_layer_name(where, saved)}: saved a {saved.get('type')}, expected a {expected.get('type')}")
        return
    keys = list(saved) + [k for k in expected if k not in saved]
    for k in keys:
        if k == "type":
            continue
        if k == "layers" and isinstance(saved.get(k), list) and isinstance(expected.get(k), list):
            a, b = saved[k], expected[k]
            if len(a) != len(b):
                out.append(f"{_layer_name(where, saved)}: {len(a)} layers saved, {len(b)} expected")
            for i, (x, y) in enumerate(zip(a, b)):
                _walk(x, y, f"{where}.{i}" if where else str(i), out, notes)
            continue
        missing = object()
        a, b = saved.get(k, missing), expected.get(k, missing)
        if a is missing or b is missing or a != b:
            sa = "none" if a is missing else repr(a)
            sb = "none" if b is missing else repr(b)
            out.append(f"{_layer_name(where, saved)}: {k} {sa} saved, {sb} expected")
            if k in _FIELD_NOTES and k not in notes:
                notes.append(k)


def spec_differences(saved, expected, limit=5):
    """The differences between two model specs (:meth:`fastbp.Sequential.spec`), in words.

    Parameters
    ----------
    saved, expected : dict
        The spec of the checkpoint's model and of the expected one.
    limit : int, default 5
        At most this many are named; a last item counts the rest.

    Returns
    -------
    list of str
        One item per differing field (``"layer 0 (Linear): layout 'out_in' saved,
        'in_out' expected"``), then what such a field means where its name
        does not say it; empty when the specs are equal.
    """
    out, notes = [], []
    _walk(saved, expected, "", out, notes)
    if len(out) > limit:
        out = out[:limit] + [f"and {len(out) - limit} more"]
    return out + [_FIELD_NOTES[k] for k in notes]
