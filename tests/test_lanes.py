"""The test suite's second lane (``tests/_lanes.py``): a delegated test is reported here with
the outcome it had in the lane child -- passed, failed with its traceback, skipped with its
reason, xfailed, a strict xpass and a setup error as failures -- so that a run with the lane
says exactly what a run without it says."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import _lanes
_lanes.LANE_FILES = {{"test_b.py"}}

def pytest_configure(config):
    config.pluginmanager.register(_lanes.Plugin(), "fastbp-lane")

def pytest_collection_finish(session):
    _lanes.start(session)

def pytest_sessionfinish(session, exitstatus):
    _lanes.stop()
"""

TEST_A = """
import os
def test_here():
    assert os.environ.get("FASTBP_TEST_LANE") is None
"""

TEST_B = """
import os
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_in_the_child():
    assert os.environ.get("FASTBP_TEST_LANE") == "1"

@pytest.mark.parametrize("v", [1, 2])
def test_fails(v):
    assert v == 1, "two is not one"

def test_skips():
    pytest.skip("no reason to run")

@pytest.mark.xfail(reason="known")
def test_xfails():
    assert False

@pytest.mark.xfail(reason="strict one", strict=True)
def test_xpasses_strictly():
    pass

def test_setup_error(broken):
    pass

class TestGroup:
    def test_method(self):
        assert os.environ.get("FASTBP_TEST_LANE") == "1"
"""


def _run(tmp_path, lanes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTBP_TEST_LANE")}
    if not lanes:
        env["FASTBP_TEST_LANES"] = "0"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-o", "addopts=",
                        str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return r


@pytest.mark.thorough       # ~5 s: a pytest session with its own lane child (the suite's own machinery)
def test_delegated_tests_report_their_outcomes_from_the_child(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_a.py").write_text(TEST_A)
    (tmp_path / "test_b.py").write_text(TEST_B)
    r = _run(tmp_path, lanes=True)
    out = r.stdout
    assert r.returncode == 1, out
    summary = out.strip().splitlines()[-1]
    for part in ("2 failed", "4 passed", "1 skipped", "1 xfailed", "1 error"):
        assert part in summary, out
    assert "two is not one" in out                     # the child's assertion message
    assert re.search(r"FAILED test_b.py::test_fails\[2\] - AssertionError: two is not one", out), out
    assert re.search(r"PASSED test_b.py::TestGroup::test_method", out), out
    assert re.search(r"SKIPPED \[1\] test_b.py:\d+: no reason to run", out), out
    assert re.search(r"XFAIL test_b.py::test_xfails", out), out
    assert re.search(r"FAILED test_b.py::test_xpasses_strictly", out), out
    assert re.search(r"ERROR test_b.py::test_setup_error", out) and "fixture broke" in out, out
    # without the lane: the same counts (test_in_the_child and test_method fail here, not there)
    r0 = _run(tmp_path, lanes=False)
    summary0 = r0.stdout.strip().splitlines()[-1]
    for part in ("4 failed", "2 passed", "1 skipped", "1 xfailed", "1 error"):
        assert part in summary0, r0.stdout
