"""Running the command line inside the test process (shared by the CLI test modules)."""
from __future__ import annotations

from fastbp import cli


def run_here(capsys, *args):
    """``fastbp ARGS`` in this process (``cli.main``); returns (rc, stdout, stderr).

    For the runs whose subject is what training writes or prints, not the process: a
    fresh interpreter costs seconds of imports (scikit-learn, pandas) per run.  The
    process itself (``python -m fastbp.cli``, its exit status, stdout/stderr, a
    reproducible result in a new interpreter, a saved model predicted by another
    process) is checked by the tests that call ``run_cli`` (tests/test_cli.py)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err
