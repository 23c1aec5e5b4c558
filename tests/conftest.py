"""Session hooks: the CUDA-simulator child (see ``_simulator.py``) starts right after
collection, so that it runs on the second core while the rest of the suite runs; the runner
tests that wait for it run last, so that this process never idles while the child works.
Likewise the children of a test module that need nothing this session compiles
(``start_early``: test_coldstart.py's cold compilation in an empty cache of its own) start
right after collection, in a background thread.  (Not children that compile into the
session's disk cache, such as test_threads.py's: started early, they compiled the kernels
at the same time as this process, twice the work.)

The tests of the files in ``_lanes.LANE_FILES`` run in a second child pytest (the lane) that
also starts right after collection; this process reports their outcomes there under their
own ids (``_lanes.py``; ``FASTBP_TEST_LANES=0`` runs everything here).

The one-time compilation's helper process (fastbp._compile_pool) is off in the test
processes (its own tests, test_compile_pool.py, turn it on): the suite already keeps both
cores busy."""
import os

os.environ.setdefault("FASTBP_COMPILE_WORKERS", "0")

import pytest  # noqa: E402

import _lanes
import _simulator

if os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1":
    try:
        _simulator.thread_safe_shared_arrays()      # a race of numba-cuda's simulator (see there)
        _simulator.polling_yields_to_the_threads()  # and its busy wait (most of its time)
    except ImportError:                             # no numba-cuda: the CUDA tests skip
        pass


@pytest.hookimpl(tryfirst=True)        # before -m deselects by marker
def pytest_collection_modifyitems(session, config, items):
    # a test module may name some of its parametrised cases thorough (CI's last stage runs
    # them; the README's test command does not): ``thorough_case(params) -> bool``
    for item in items:
        pick = getattr(getattr(item, "module", None), "thorough_case", None)
        params = getattr(getattr(item, "callspec", None), "params", None)
        if pick is not None and params is not None and pick(params):
            item.add_marker(pytest.mark.thorough)
    _simulator.runners_last(items)


def _byte_compile_fastbp():
    """Where bytecode writing is off (``PYTHONDONTWRITEBYTECODE``), every one of the session's
    ~90 Python processes compiled fastbp's sources again on import (0.9 s of an import of
    fastbp, 0.6 s with its bytecode): write fastbp's own bytecode once, beside the sources, in the
    ``__pycache__`` directories where numba's disk cache already lives (py_compile writes it
    whatever that setting says; an up-to-date file is left alone).  No other package's."""
    import sys
    if not sys.dont_write_bytecode:
        return                  # Python writes it on the first import
    import compileall
    import importlib.util
    spec = importlib.util.find_spec("fastbp")
    if spec is None or not spec.submodule_search_locations:
        return
    for path in spec.submodule_search_locations:
        try:
            compileall.compile_dir(path, quiet=2)
        except OSError:         # a read-only install: imports compile in memory as before
            pass


def pytest_configure(config):
    # the lane (``_lanes.py``): its files' tests run in a child on the second core
    config.pluginmanager.register(_lanes.Plugin(), "fastbp-lane")
    if not os.environ.get(_lanes.ENV_CHILD) and not os.environ.get("NUMBA_ENABLE_CUDASIM"):
        _byte_compile_fastbp()  # the children start after this process has done it


def pytest_collection_finish(session):
    _simulator.start(session)
    _lanes.start(session)
    # a test module may start the child processes of its selected tests that need nothing
    # this session compiles now, in the background, so that they run while the rest of the
    # suite does instead of this process waiting for them: ``start_early(its selected items)``
    if session.config.option.collectonly:
        return
    selected = {}
    for item in session.items:
        if _lanes.delegated(item):
            continue              # its module's start_early runs in the lane child
        mod = getattr(item, "module", None)
        if callable(getattr(mod, "start_early", None)):
            selected.setdefault(mod, []).append(item)
    for mod, items in selected.items():
        mod.start_early(items)


def pytest_sessionfinish(session, exitstatus):
    _simulator.stop()
    _lanes.stop()
