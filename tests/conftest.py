"""Session hooks: the CUDA-simulator child (see ``_simulator.py``) starts right after
collection, so that it runs on the second core while the rest of the suite runs; the runner
tests that wait for it run last, so that this process never idles while the child works."""
import _simulator


def pytest_collection_modifyitems(session, config, items):
    _simulator.runners_last(items)


def pytest_collection_finish(session):
    _simulator.start(session)


def pytest_sessionfinish(session, exitstatus):
    _simulator.stop()
