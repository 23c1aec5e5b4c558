"""Every public function, class and method carries a numpydoc docstring.

The public API is what ``fastbp`` exports (``fastbp.__all__`` and its lazily loaded
classes) and the public modules ``fastbp.ops``, ``schedules``, ``training``,
``checkpoint``, ``gradcheck`` and ``data`` (the CLI's data files); of a class, its methods that do not start with an
underscore, and ``__call__``.  For each, checked without numpydoc itself (it needs Sphinx):

- a docstring (inherited from the method it overrides, as ``help()`` and Sphinx show it);
- every argument of the signature named in its ``Parameters`` section (a class: its
  constructor's, in the class docstring), except ``self``/``cls`` and arguments whose name
  starts with an underscore (private);
- a ``Returns`` (or ``Yields``) section when the function's body returns a value;
- section headers underlined with dashes of the header's length, and no entry of the
  ``Parameters`` section that is not an argument (prose written as ``word: text`` reads as one).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap

import pytest

import fastbp

_MODULES = ("fastbp.ops", "fastbp.schedules", "fastbp.training", "fastbp.checkpoint", "fastbp.gradcheck",
            "fastbp.data")
_SECTIONS = ("Parameters", "Returns", "Yields", "Raises", "Warns", "Attributes", "Methods", "See Also", "Notes",
             "Examples", "References", "Other Parameters")


def _public_objects():
    names = {f"fastbp.{n}": getattr(fastbp, n) for n in (*fastbp.__all__, *fastbp._LAZY)}
    for mn in _MODULES:
        m = importlib.import_module(mn)
        public = getattr(m, "__all__", None) or [n for n in vars(m) if not n.startswith("_")]
        for n in public:
            if not n.startswith("_"):
                names[f"{mn}.{n}"] = getattr(m, n)
    out, seen = {}, set()
    for qual, obj in sorted(names.items()):
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or id(obj) in seen:
            continue
        if not getattr(obj, "__module__", "").startswith("fastbp"):
            continue
        seen.add(id(obj))
        out[qual] = obj
        if inspect.isclass(obj):
            for klass in obj.__mro__:
                if not klass.__module__.startswith("fastbp"):
                    continue
                for an, av in vars(klass).items():
                    if (an.startswith("_") and an != "__call__") or not inspect.isfunction(av):
                        continue
                    out.setdefault(f"{qual}.{an}", getattr(obj, an))
    return out


PUBLIC = _public_objects()


def _sections(doc):
    """``{header: [lines]}`` of a numpydoc docstring (dedented)."""
    lines = doc.splitlines()
    found, cur = {}, None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() in _SECTIONS and re.fullmatch(r"-{3,}", nxt.strip() or "x"):
            cur = line.strip()
            found[cur] = []
            continue
        if cur is not None and not re.fullmatch(r"-{3,}", line.strip() or "x"):
            found[cur].append(line)
    return found


def _documented_parameters(lines):
    """Names of the entries of a Parameters section: ``name : type``, ``a, b : type``, ``name``."""
    names = set()
    for line in lines:
        if not line or line[0].isspace():
            continue
        head = line.split(" : ")[0].strip()
        for part in head.split(","):
            names.add(part.strip().lstrip("*"))
    return names


def _returns_a_value(fn):
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return False
    tree = ast.parse(src).body[0]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, ast.Return) and child.value is not None and not (
                    isinstance(child.value, ast.Constant) and child.value.value is None):
                return True
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                return True
            if walk(child):
                return True
        return False
    return walk(tree)


def _signature_parameters(obj):
    if inspect.isclass(obj) and not any(k.__module__.startswith("fastbp") for k in obj.__mro__
                                        if "__init__" in vars(k) or "__signature__" in vars(k)):
        return []       # the constructor of a base outside fastbp (an exception's)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.name not in ("self", "cls") and not p.name.startswith("_")]


def _check(qual, obj):
    doc = inspect.getdoc(obj)
    if not doc:
        return [f"{qual}: no docstring"]
    # a method without a docstring of its own shows the one it overrides (help(), Sphinx):
    # that describes the interface, not this signature
    params = _signature_parameters(obj) if inspect.isclass(obj) or obj.__doc__ else []
    problems = []
    sec = _sections(doc)
    for header in _SECTIONS:
        for m in re.finditer(rf"^{re.escape(header)}\n(-+)$", doc, re.M):
            if len(m.group(1)) != len(header):
                problems.append(f"{qual}: the {header!r} underline is {len(m.group(1))} dashes")
    if params:
        documented = _documented_parameters(sec.get("Parameters", []) + sec.get("Other Parameters", []))
        missing = [p for p in params if p not in documented]
        if missing:
            problems.append(f"{qual}: parameters not documented: {missing}")
        extra = sorted(d for d in documented if not d.isidentifier())
        if extra:
            problems.append(f"{qual}: Parameters entries that are not argument names: {extra}")
    if not inspect.isclass(obj) and _returns_a_value(obj) and not ({"Returns", "Yields"} & set(sec)):
        problems.append(f"{qual}: returns a value but has no Returns section")
    return problems


def test_the_public_api_is_found():
    # the check below must see the API, not an empty list
    for name in ("fastbp.compile", "fastbp.TrainStep.fit", "fastbp.SavedModel.predict", "fastbp.ops.relu_forward",
                 "fastbp.schedules.StepLR.lr_at", "fastbp.MLPClassifier.fit", "fastbp.TrainStep.__call__"):
        assert name in PUBLIC
    assert len(PUBLIC) > 150


@pytest.mark.parametrize("mn", ("fastbp",) + _MODULES)
def test_public_modules_export_no_private_names(mn):
    """``__all__`` (``from m import *``, ``dir(m)``) is the public API: no ``_name`` in it,
    and every name in it exists."""
    m = importlib.import_module(mn)
    names = list(getattr(m, "__all__", ()))
    assert [n for n in names if n.startswith("_")] == []
    assert [n for n in names if not hasattr(m, n)] == []


@pytest.mark.parametrize("qual", sorted(PUBLIC))
def test_public_callables_have_numpydoc_docstrings(qual):
    assert _check(qual, PUBLIC[qual]) == []


def test_the_checker_finds_what_it_should():
    def undocumented(a, b=1):
        """Add.

        Parameters
        ----------
        a : int
        PyTorch: the same.
        """
        return a + b

    def fine(a, *, _private=None):
        """Add.

        Parameters
        ----------
        a : int
            Number.

        Returns
        -------
        int
        """
        return a

    def short_line(a):
        """Add.

        Parameters
        ---------
        a : int
        """

    assert _check("u", undocumented) == ["u: parameters not documented: ['b']",
                                         "u: Parameters entries that are not argument names: ['PyTorch: the same.']",
                                         "u: returns a value but has no Returns section"]
    assert _check("f", fine) == []
    assert _check("s", short_line) == ["s: the 'Parameters' underline is 9 dashes"]
