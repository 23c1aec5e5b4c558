"""The CUDA-simulator tests, run in ONE child pytest that starts as soon as collection ends.

The CUDA kernels and the GPU step are tested on the CPU under numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``), which must be set before numba is imported: they run
in a child process.  The simulator is single-threaded Python (a few minutes of one
core), so the child is started right after collection (``conftest.py``) and runs on
the second core while this session runs the rest of the suite; each file's runner
test (``test_simulator_subprocess``, ``test_gpu_step_simulator_subprocess``), moved to
the end of the run, then waits for the child and checks its own file's share of the
child's JUnit report.

A file takes part when its runner test is selected and its module says the tests
could not run in this process (``AVAIL`` false, for a reason other than numba-cuda
missing).  Its simulator tests are the ones selected in this session or, when only
the runner was selected (``pytest -k simulator``), all of them.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

#: file -> (its runner test, the predicate that picks its simulator tests by name)
FILES = {
    "test_cuda_kernels.py": ("test_simulator_subprocess", lambda n: n.startswith("test_cuda_")),
    "test_cuda_step.py": ("test_gpu_step_simulator_subprocess",
                          lambda n: n.startswith("test_gpu_") and n != "test_gpu_step_simulator_subprocess"),
}
TIMEOUT_S = 1500

_child = {}     # "proc", "report", "files": {file: [node ids]}, "out"


def _node_ids(session, fname, runner, pick, module):
    here = Path(module.__file__).resolve()
    ids = [it.nodeid for it in session.items
           if Path(str(it.path)).resolve() == here and pick(it.name)]
    if not ids:      # only the runner was selected: every simulator test (function) of the file
        ids = [f"{here}::{name}" for name in sorted(vars(module)) if pick(name)]
    return ids


def _whole_functions(ids):
    """True when ``ids`` name test functions (every case of each), not single test cases."""
    return all("[" not in i for i in ids)


def runners_last(items):
    """Move the runner tests to the end of the run (``pytest_collection_modifyitems``): each
    waits for the child, and everything before it runs meanwhile."""
    runners = {runner for runner, _ in FILES.values()}
    last = [it for it in items if Path(str(it.path)).name in FILES and it.name in runners]
    if last:
        keep = [it for it in items if it not in last]
        items[:] = keep + last


def start(session):
    """Start the child if any runner test is selected (``pytest_collection_finish``)."""
    if session.config.option.collectonly:
        return
    files = {}
    for it in session.items:
        fname = Path(str(it.path)).name
        if fname in FILES and it.name == FILES[fname][0] and fname not in files:
            avail = getattr(it.module, "AVAIL", None)
            if avail is None or avail or "numba-cuda" in getattr(avail, "reason", ""):
                continue          # runs in this process, or cannot run at all: the runner skips
            files[fname] = _node_ids(session, fname, *FILES[fname], it.module)
    if not files:
        return
    ids = [i for v in files.values() for i in v]
    proc, report, out = spawn(session, ids, "sim", NUMBA_ENABLE_CUDASIM="1")
    _child.update(proc=proc, report=report, files=files, out=out)


def spawn(session, ids, name, **env):
    """A child pytest that runs the tests ``ids`` (node ids) with ``env`` added to this
    session's environment: ``(process, its JUnit report's path, its output file)``.
    Also used by the lane (``_lanes.py``).  The report's folder is removed when this
    process exits (after the session has read the report)."""
    folder = tempfile.mkdtemp(prefix=f"fastbp-{name}-")
    atexit.register(shutil.rmtree, folder, True)
    report = Path(folder) / f"{name}.xml"
    out = tempfile.TemporaryFile(mode="w+")
    # -m "": the ids were selected here; the child must not deselect them again (addopts)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "",
                             f"--junitxml={report}", *ids],
                            cwd=str(session.config.rootpath), env=dict(os.environ, **env), stdout=out,
                            stderr=subprocess.STDOUT, text=True)
    return proc, report, out


def finish(proc, out, timeout=TIMEOUT_S):
    """Wait for a child of :func:`spawn` (killed after ``timeout`` s); the end of its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out.seek(0)
    return out.read()[-6000:]


def kill(proc):
    """Kill a child of :func:`spawn` that is still running."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def stop():
    """Kill a child still running when the session ends (``pytest_sessionfinish``)."""
    kill(_child.get("proc"))


def result(fname):
    """Wait for the child; ``(returncode, counts, ids, tail, reported)`` for file ``fname``.

    ``counts`` has ``tests``, ``failures``, ``errors`` and ``skipped`` of that file's
    tests in the child's JUnit report and ``ran``, what compares with ``ids``, the node ids it
    was asked to run (test cases, or test functions: every case of each),
    ``tail`` the end of its output and ``reported`` whether it wrote its report.
    The return code is the child's, for both files together.
    """
    if fname not in _child.get("files", {}):
        raise RuntimeError(f"the simulator child was not started for {fname} (see tests/_simulator.py)")
    proc = _child["proc"]
    tail = finish(proc, _child["out"])
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    functions = set()
    report = _child["report"]
    if report.exists():
        stem = fname[:-len(".py")]
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.get("classname", "").split(".")[-1] != stem:
                continue
            counts["tests"] += 1
            functions.add(case.get("name", "").split("[")[0])
            for kind, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
                if case.find(kind) is not None:
                    counts[key] += 1
    ids = _child["files"][fname]
    # what ran against what was asked: test cases, or test functions when the whole file was asked
    # (only its runner selected: ``pytest -k simulator``), whose parametrised cases all run
    counts["ran"] = len(functions) if _whole_functions(ids) else counts["tests"]
    return proc.returncode, counts, ids, tail, report.exists()


def thread_safe_shared_arrays():
    """Make the simulator's ``cuda.shared.array`` safe against its own threads (called by
    conftest.py when ``NUMBA_ENABLE_CUDASIM=1``).

    numba-cuda's simulator (0.30) runs every CUDA thread of a block as a Python thread and
    gives the threads of a block one shared array per source line (the caller's file and line)
    through an unlocked "look up, else create and store" (``FakeCUDAShared.array``).  Two
    threads that both look up before either stores each get their own ``np.empty`` array:
    what one writes the threads holding the other never see, and they read uninitialised
    memory.  CI met it once (a float64 gradient element of a GPU step held the bits of the
    int64 201, under load).  ``test_cuda_simulator_gives_a_block_one_shared_array``
    (test_cuda_kernels.py) makes every thread switch inside that window: unfixed, 7 launches
    of 10 went wrong.  This replacement keys the arrays the same way, and looks up and
    creates under a lock."""
    import threading

    from numba.cuda.simulator import kernelapi

    cls = kernelapi.FakeCUDAShared
    if getattr(cls.array, "fastbp_locked", False):
        return
    unlocked = cls.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:      # an error, or the one dynamic buffer
            return unlocked(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = kernelapi.np.empty(shape, dtype)
        return res

    array.fastbp_locked = True
    cls.array = array


def polling_yields_to_the_threads():
    """Let the simulator's block runner wait for its threads without taking the interpreter
    from them (called by conftest.py when ``NUMBA_ENABLE_CUDASIM=1``).

    numba-cuda's simulator (0.30) runs a block's threads while its launching thread polls them
    in a loop (``BlockManager.run``: every thread's ``is_alive``, over and over) until all have
    ended or wait at ``syncthreads``.  That loop holds the GIL for whole switch intervals, as
    long as the CUDA threads together: most of a simulated launch's time went to it (the GPU
    step's and the products' cases, with the simulator's small blocks: 20 s, 6 s with this;
    with the GPU's blocks: 101 s, 83 s).  Here each poll of a thread
    first yields the GIL (``time.sleep(0)``), so the runnable threads run while it waits; what
    the loop decides is unchanged (only how long it holds the GIL)."""
    import time

    from numba.cuda.simulator import kernel

    cls = kernel.BlockThread
    if getattr(cls.is_alive, "fastbp_yields", False):
        return
    polled = cls.is_alive

    def is_alive(self):
        time.sleep(0)
        return polled(self)

    is_alive.fastbp_yields = True
    cls.is_alive = is_alive
