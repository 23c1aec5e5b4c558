"""Session hooks: the CUDA-simulator child (see ``_simulator.py``) starts right after
collection, so that it runs on the second core while the rest of the suite runs."""
import _simulator


def pytest_collection_finish(session):
    _simulator.start(session)


def pytest_sessionfinish(session, exitstatus):
    _simulator.stop()
