"""A second lane: some test files run in ONE child pytest on the second core.

On the 2-core machine the suite is mostly numba compiling, one process at a time, plus the
CUDA-simulator child (``_simulator.py``), which left the second core idle once it ended.  The
files named in ``LANE_FILES`` therefore run in a child pytest that starts right after
collection; this process runs everything else, then reports each delegated test from the
child's JUnit report under the test's own node id, with its own outcome (passed, failed with
the child's traceback, skipped, xfailed), as if it had run here.  Both processes share numba's
disk cache, so whichever compiles a kernel first saves the other the work.

The lane is used only where it helps and cannot change what runs: more than one CPU, at least
one delegated test and one test of another file selected, not ``--collect-only``, not with
``-x``/``--pdb`` style runs (``-x``, ``--maxfail``, ``--pdb``, ``--lf``/``--ff``), not inside a
lane child (``FASTBP_TEST_LANE``), and not with ``FASTBP_TEST_LANES=0``.  A delegated test the
child did not report (it crashed or timed out) fails here with the end of the child's output.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _pytest.reports import TestReport

import _simulator

#: the files the lane runs (see the module docstring), picked from a ``--junitxml`` report of the
#: README's test command so that the lane (with the simulator child) ends about when this
#: process does; never a file with a simulator runner test (``_simulator.FILES``).  The lane
#: runs them in collection order (running the kernel tests first measured 40 s slower: the
#: simulator child compiles the same CPU kernels at the start)
LANE_FILES = {
    "test_adversarial_cli.py", "test_bench.py", "test_blas_backend.py", "test_builders.py", "test_checkpoint.py",
    "test_checkpoint_safety.py",
    "test_cli.py", "test_compile_pool.py", "test_concurrency.py", "test_distributed.py",
    "test_estimator.py", "test_estimator_parity.py", "test_estimator_weights.py", "test_fold_plan.py",
    "test_gate_registry.py", "test_handlers.py", "test_kernels.py", "test_lanes.py", "test_layers_api.py",
    "test_properties.py", "test_registry.py", "test_structure.py",
}
assert not set(LANE_FILES) & set(_simulator.FILES)
ENV_CHILD = "FASTBP_TEST_LANE"
ENV_SWITCH = "FASTBP_TEST_LANES"

_lane = {}      # "proc", "report", "out", "ids": set of node ids, "results": {key: element}


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _wanted(config):
    opt = config.option
    if os.environ.get(ENV_CHILD) or os.environ.get(ENV_SWITCH, "") == "0":
        return False
    if opt.collectonly or _cpus() < 2:
        return False
    if getattr(opt, "maxfail", 0) or getattr(opt, "usepdb", False):
        return False
    if getattr(opt, "lf", False) or getattr(opt, "failedfirst", False):
        return False
    return True


def _key(nodeid):
    """``classname::name`` as JUnit writes it for the test with this node id."""
    parts = nodeid.split("::")
    path = parts[0][:-len(".py")] if parts[0].endswith(".py") else parts[0]
    classname = ".".join([path.replace("/", ".")] + parts[1:-1])
    return f"{classname}::{parts[-1]}"


def delegate(session, items):
    """Pick the delegated items and move them to the end of ``items`` (before the simulator
    runners, which ``_simulator.runners_last`` moves after them); returns their node ids."""
    if not _wanted(session.config):
        return set()
    mine = [it for it in items if Path(str(it.path)).name in LANE_FILES]
    if not mine or len(mine) == len(items):
        return set()
    ids = {it.nodeid for it in mine}
    items[:] = [it for it in items if it.nodeid not in ids] + mine
    _lane["ids"] = ids
    return ids


def start(session):
    """Start the child for the delegated items (``pytest_collection_finish``)."""
    ids = _lane.get("ids")
    if not ids:
        return
    ordered = [it.nodeid for it in session.items if it.nodeid in ids]
    proc, report, out = _simulator.spawn(session, ordered, "lane", **{ENV_CHILD: "1"})
    _lane.update(proc=proc, report=report, out=out)


def stop():
    """Kill a child still running when the session ends (``pytest_sessionfinish``)."""
    _simulator.kill(_lane.get("proc"))


def _results():
    if "results" in _lane:
        return _lane["results"]
    _lane["tail"] = _simulator.finish(_lane["proc"], _lane["out"])
    results = {}
    if _lane["report"].exists():
        for case in ET.parse(_lane["report"]).getroot().iter("testcase"):
            results[f"{case.get('classname', '')}::{case.get('name', '')}"] = case
    _lane["results"] = results
    return results


def _reports(item, case):
    """The setup, call and teardown reports of ``item`` from its JUnit ``case``."""
    def rep(when, outcome, longrepr=None, duration=0.0):
        return TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, outcome,
                          longrepr, when, duration=duration)

    ok_setup, ok_teardown = rep("setup", "passed"), rep("teardown", "passed")
    if case is None:
        code = _lane["proc"].returncode
        text = (f"the lane child (tests/_lanes.py) did not report this test (exit status {code}); "
                f"the end of its output:\n{_lane.get('tail', '')}")
        return [ok_setup, rep("call", "failed", text), ok_teardown]
    duration = float(case.get("time", 0) or 0)
    for kind in ("failure", "error"):
        el = case.find(kind)
        if el is not None:
            msg, body = el.get("message", "") or "", el.text or ""
            text = f"{msg}\n{body}" if msg and msg not in body[:len(msg) + 200] else body or msg
            text = f"{text}\n(run in the lane child, tests/_lanes.py)"
            if kind == "error" and case.find("failure") is None:
                # an error in setup: no call; in teardown: after a passed call
                if "teardown" in msg:
                    return [ok_setup, rep("call", "passed", duration=duration),
                            rep("teardown", "failed", text)]
                return [rep("setup", "failed", text), ok_teardown]
            return [ok_setup, rep("call", "failed", text, duration), ok_teardown]
    sk = case.find("skipped")
    if sk is not None:
        reason = sk.get("message", "") or ""
        if sk.get("type") is None:      # a strict xfail that passed: a failure
            return [ok_setup, rep("call", "failed", f"[XPASS(strict)] {reason}", duration), ok_teardown]
        if sk.get("type") == "pytest.xfail":
            r = rep("call", "skipped", duration=duration)
            r.wasxfail = reason
            return [ok_setup, r, ok_teardown]
        path, line = item.location[0], (item.location[1] or 0) + 1
        return [rep("setup", "skipped", (path, line, f"Skipped: {reason}")), ok_teardown]
    return [ok_setup, rep("call", "passed", duration=duration), ok_teardown]


def delegated(item):
    """Whether ``item`` runs in the lane child."""
    return item.nodeid in _lane.get("ids", ())


def run_delegated(item):
    """``pytest_runtest_protocol`` for a delegated item: report its outcome in the child."""
    if not delegated(item) or "proc" not in _lane:
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for r in _reports(item, _results().get(_key(item.nodeid))):
        ihook.pytest_runtest_logreport(report=r)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


class Plugin:
    """The lane's hooks (registered by ``conftest.py``)."""

    @pytest.hookimpl(trylast=True)          # after -m and -k deselect
    def pytest_collection_modifyitems(self, session, config, items):
        # the delegated tests go last here; the simulator's runner tests stay after them
        if delegate(session, items):
            _simulator.runners_last(items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        return run_delegated(item)
