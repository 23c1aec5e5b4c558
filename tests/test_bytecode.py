"""The test session's bytecode where writing it is off (``_bytecode.py``)."""
import subprocess
import sys
import types

import pytest

import _bytecode


def _sys(dont_write, prefix=None):
    return types.SimpleNamespace(dont_write_bytecode=dont_write, pycache_prefix=prefix)


def test_off_keeps_it_in_a_private_directory_for_the_children_and_undoes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(_bytecode, "_MADE", [])         # (not the session's own)
    env = {"PYTHONDONTWRITEBYTECODE": "1", "OTHER": "x"}
    s = _sys(True)
    made = tmp_path / "prefix"
    got = _bytecode.keep_for_the_session(env, s, mkdtemp=lambda prefix: (made.mkdir(), str(made))[1])
    assert got == str(made) and s.pycache_prefix == str(made) and s.dont_write_bytecode is False
    assert env == {"PYTHONPYCACHEPREFIX": str(made), "OTHER": "x"}       # what the children inherit
    (made / "m.cpython-311.pyc").write_bytes(b"")
    _bytecode.remove()
    assert env == {"PYTHONDONTWRITEBYTECODE": "1", "OTHER": "x"}
    assert s.dont_write_bytecode is True and s.pycache_prefix is None and not made.exists()
    _bytecode.remove()                                                   # once only


def test_on_or_a_prefix_of_the_users_changes_nothing(monkeypatch):
    monkeypatch.setattr(_bytecode, "_MADE", [])
    def boom(prefix):
        raise AssertionError("no directory")
    for env, s in (({}, _sys(False)),                                               # writing on
                   ({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": "/p"}, _sys(True)),
                   ({"PYTHONDONTWRITEBYTECODE": "1"}, _sys(True, "/q"))):      # python -X pycache_prefix
        before = (dict(env), vars(s).copy())
        assert _bytecode.keep_for_the_session(env, s, mkdtemp=boom) is None
        assert (env, vars(s)) == before


def test_the_children_of_this_session_keep_their_bytecode_in_its_directory():
    """Where this session turned bytecode writing on (it was off), a child process it starts
    writes its bytecode to the session's directory, never beside the sources."""
    if not _bytecode._MADE:
        pytest.skip("bytecode writing was on in this session (or this is a child of it): nothing was changed")
    prefix = _bytecode._MADE[-1][0]
    assert sys.pycache_prefix == prefix and not sys.dont_write_bytecode
    out = subprocess.run([sys.executable, "-c", "import sys; print(sys.pycache_prefix, sys.dont_write_bytecode)"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == [prefix, "False"]
