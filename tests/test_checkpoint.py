"""Checkpoints: bitwise resume, atomic writes, and rejection of broken files."""
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import _executor as ex
from fastbp import checkpoint
from reference import mlp, targets

OPTIMIZERS = {
    "sgd_momentum": lambda: fastbp.SGD(lr=0.05, momentum=0.9),
    "sgd_nesterov_wd": lambda: fastbp.SGD(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3),
    "sgd_plain": lambda: fastbp.SGD(lr=0.05),
    "adam": lambda: fastbp.Adam(lr=1e-2),
    "adamw": lambda: fastbp.Adam(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, decoupled=True),
}


def _data(loss, n=45, n_in=6, n_out=3, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(dtype)
    Y = targets(loss, rng, n, n_out)
    if Y.dtype.kind == "f":
        Y = Y.astype(dtype)
    return X, Y


def _state(step):
    """Everything a resumed run depends on, as bytes."""
    from fastbp import _executor as ex
    training_hyper = np.delete(step.hyper, list(ex.RUNTIME_SLOTS))     # not the process's BLAS policy
    return (step.param_vector.tobytes(), [s.tobytes() for s in step.state_vectors], training_hyper.tobytes(),
            json.dumps(step.rng.bit_generator.state, sort_keys=True))


def _phase1(step, X, Y):
    for i in range(10):
        lo = (i * 7) % 35
        step(X[lo:lo + 8], Y[lo:lo + 8])
    return step.fit(X, Y, epochs=2)                  # shuffles with the step's own generator


def _phase2(step, X, Y):
    losses = [step(X[lo:lo + 8], Y[lo:lo + 8]) for lo in (3, 11, 30)]
    losses += list(step.fit(X, Y, epochs=3))
    losses += list(step.fit(X, Y, epochs=1, shuffle=False))
    return np.array(losses)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_resumed_training_is_bitwise_identical_to_uninterrupted(tmp_path, loss, opt, dtype):
    X, Y = _data(loss, dtype=dtype)

    def new():
        return fastbp.compile(mlp([6, 10, 8, 3], "tanh"), loss=loss, optimizer=OPTIMIZERS[opt](),
                              batch_size=8, dtype=dtype, seed=7)

    never = new()
    _phase1(never, X, Y)
    never.lr = never.lr * 0.5                        # a schedule change must survive the checkpoint
    ref_losses = _phase2(never, X, Y)

    first = new()
    _phase1(first, X, Y)
    first.lr = first.lr * 0.5
    path = tmp_path / "ckpt.npz"
    first.save(path)
    before = _state(first)
    resumed = fastbp.load(path)
    assert _state(resumed) == before                 # the load itself is bitwise
    assert resumed.n_steps == first.n_steps == 10 + 2 * 6
    del first
    got_losses = _phase2(resumed, X, Y)
    assert got_losses.tobytes() == ref_losses.tobytes()
    assert _state(resumed) == _state(never)
    for k in never.params:
        assert resumed.params[k].tobytes() == never.params[k].tobytes(), k


def test_roundtrip_restores_every_attribute(tmp_path):
    model = fastbp.Sequential(fastbp.Linear(5, 7, bias=False), fastbp.Sigmoid(), fastbp.Linear(7, 4),
                              fastbp.ReLU(), fastbp.Linear(4, 2))
    step = fastbp.compile(model, loss="bce_with_logits",
                          optimizer=fastbp.Adam(lr=3e-3, betas=(0.5, 0.75), eps=1e-5, weight_decay=0.01),
                          batch_size=3, dtype=np.float64, seed=None)
    X, Y = _data("bce_with_logits", n=9, n_in=5, n_out=2, dtype=np.float64)
    step.fit(X, Y, epochs=2)
    step.save(str(tmp_path / "c"))                    # a plain str without suffix: written exactly there
    assert os.listdir(tmp_path) == ["c"]
    back = fastbp.load(tmp_path / "c")
    assert back.model.spec() == model.spec()
    assert back.loss == "bce_with_logits"
    assert back.optimizer.spec() == step.optimizer.spec()
    assert (back.batch_size, back.dtype, back.seed) == (3, np.dtype(np.float64), None)
    assert back.n_steps == step.n_steps == 6
    assert back.lr == step.lr
    assert set(back.params) == set(step.params) == {"0.W", "2.W", "2.b", "4.W", "4.b"}
    for k in step.params:
        assert back.params[k].dtype == step.params[k].dtype
        assert back.params[k].tobytes() == step.params[k].tobytes()
    assert back.rng.bit_generator.state == step.rng.bit_generator.state
    assert back.predict(X).tobytes() == step.predict(X).tobytes()
    # the two are independent objects: training one does not touch the other
    back(X[:3], Y[:3])
    assert back.n_steps == 7 and step.n_steps == 6


def test_save_overwrites_and_load_resumes_in_a_fresh_process(tmp_path):
    X, Y = _data("softmax_cross_entropy", dtype=np.float64)
    step = fastbp.compile(mlp([6, 9, 3]), optimizer=fastbp.Adam(lr=1e-2), batch_size=8, dtype=np.float64)
    path = tmp_path / "c.npz"
    step.save(path)
    _phase1(step, X, Y)
    step.save(path)                                   # replaces the old one
    assert fastbp.load(path).n_steps == step.n_steps
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Y.npy", Y)
    code = textwrap.dedent(f"""
        import numpy as np, fastbp
        s = fastbp.load({str(path)!r})
        X = np.load({str(tmp_path / 'X.npy')!r}); Y = np.load({str(tmp_path / 'Y.npy')!r})
        s.fit(X, Y, epochs=2)
        np.save({str(tmp_path / 'out.npy')!r}, s.param_vector)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    step.fit(X, Y, epochs=2)
    assert np.load(tmp_path / "out.npy").tobytes() == step.param_vector.tobytes()


# ------------------------------------------------------------------ atomicity
def _good_checkpoint(tmp_path):
    step = fastbp.compile(mlp([6, 5, 3]), optimizer=fastbp.SGD(lr=0.1, momentum=0.9), batch_size=8)
    X, Y = _data("softmax_cross_entropy")
    step(X[:8], Y[:8])
    path = tmp_path / "model.ckpt"
    step.save(path)
    step(X[8:16], Y[8:16])                            # the step moves on: a new save would differ
    return step, path, path.read_bytes()


def _half_written_savez(real):
    def savez(file, **arrays):
        real(file, **{k: arrays[k] for k in list(arrays)[:1]})      # some bytes hit the disk...
        raise OSError(28, "No space left on device")                # ...then the disk fills up
    return savez


@pytest.mark.parametrize("where", ["savez", "fsync", "replace", "interrupt"])
def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch, where):
    step, path, old = _good_checkpoint(tmp_path)
    if where == "savez":
        monkeypatch.setattr(np, "savez", _half_written_savez(np.savez))
        exc = OSError
    elif where == "fsync":
        def fsync(fd):
            raise OSError(5, "Input/output error")
        monkeypatch.setattr(os, "fsync", fsync)
        exc = OSError
    elif where == "replace":
        def replace(src, dst):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(os, "replace", replace)
        exc = PermissionError
    else:
        def savez(file, **arrays):
            raise KeyboardInterrupt
        monkeypatch.setattr(np, "savez", savez)
        exc = KeyboardInterrupt
    with pytest.raises(exc):
        step.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name]
    assert fastbp.load(path).n_steps == 1             # still the old, valid checkpoint


def test_failed_first_save_creates_nothing(tmp_path, monkeypatch):
    step = fastbp.compile(mlp([4, 3]), batch_size=2)
    monkeypatch.setattr(np, "savez", _half_written_savez(np.savez))
    with pytest.raises(OSError, match="No space"):
        step.save(tmp_path / "new.npz")
    assert os.listdir(tmp_path) == []


def test_save_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fastbp.compile(mlp([4, 3]), batch_size=2).save(tmp_path / "c.npz")
    assert len(synced) == 2
    if synced[0] is not None:
        assert synced == [False, True]                # the file, then its directory


def test_save_during_training_in_another_thread_is_consistent(tmp_path):
    """The step's lock makes every checkpoint a state between two whole steps.

    The training thread runs the native step without the GIL while the main
    thread saves as fast as it can; without the lock the snapshot tears (the
    weights of step k with the counter of step k+1, or half-updated weights).
    """
    X, Y = _data("softmax_cross_entropy", n=64, dtype=np.float64)
    n_iter = 2000

    def new():
        return fastbp.compile(mlp([6, 128, 3]), optimizer=fastbp.Adam(lr=1e-3), batch_size=8, dtype=np.float64)

    replay = new()
    history = [replay.param_vector.copy()]
    for i in range(n_iter):
        replay(X[(i % 8) * 8:(i % 8) * 8 + 8], Y[(i % 8) * 8:(i % 8) * 8 + 8])
        history.append(replay.param_vector.copy())

    live = new()
    go, done = threading.Event(), threading.Event()

    def train():
        go.wait()
        for i in range(n_iter):
            live(X[(i % 8) * 8:(i % 8) * 8 + 8], Y[(i % 8) * 8:(i % 8) * 8 + 8])
        done.set()

    t = threading.Thread(target=train)
    t.start()
    paths = []
    go.set()
    while not done.is_set() and len(paths) < 300:
        paths.append(tmp_path / f"c{len(paths)}.npz")
        last = live.n_steps
        live.save(paths[-1])
        while live.n_steps == last and not done.is_set():     # let the training move on
            time.sleep(0)
    t.join()
    assert live.param_vector.tobytes() == history[-1].tobytes()
    seen = []
    for p in paths:
        back = fastbp.load(p)
        seen.append(back.n_steps)
        assert back.param_vector.tobytes() == history[back.n_steps].tobytes(), back.n_steps
        assert back.hyper[ex.H_T] == back.n_steps
    assert seen == sorted(seen)
    assert len(set(seen)) >= min(3, len(seen)), seen     # the saves really overlapped the training


# --------------------------------------------------------------- bad files
class _Marker:
    """Unpickling this creates a file: proof that code from the file ran."""
    path = None

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_load_never_unpickles(tmp_path):
    marker = tmp_path / "PWNED"
    _Marker.path = str(marker)
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.array([_Marker()], dtype=object), params=np.zeros(3))
    with pytest.raises(ValueError, match=r"evil\.npz.*not a readable fastbp checkpoint"):
        fastbp.load(evil)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Marker()))
    with pytest.raises(ValueError, match=r"evil\.pkl"):
        fastbp.load(raw)
    assert not marker.exists()


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(str(arrays.pop("meta")))


def _write(path, arrays, meta, fix_digests=True):
    arrays = dict(arrays)
    if meta.pop("__drop__", False):
        np.savez(path, **arrays)
        return
    if fix_digests:
        meta["arrays"] = {k: {"shape": list(a.shape), "dtype": a.dtype.name, "sha256": checkpoint._digest(a)}
                          for k, a in arrays.items()}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def _flip_inside(raw, needle):
    i = raw.find(needle)
    assert i > 0
    raw = bytearray(raw)
    raw[i + len(needle) // 2] ^= 0x5A
    return bytes(raw)


def _other_arch_arrays(tmp_path):
    other = fastbp.compile(mlp([6, 40, 3]), optimizer=fastbp.SGD(lr=0.1, momentum=0.9), batch_size=8)
    other.save(tmp_path / "other.npz")
    return _arrays(tmp_path / "other.npz")


def _mut(fn, fix_digests=True):
    """A corruption that edits the arrays/metadata of a valid checkpoint."""
    def apply(tmp_path, src, dst):
        arrays, meta = _arrays(src)
        fn(arrays, meta, tmp_path)
        _write(dst, arrays, meta, fix_digests)
    return apply


def _raw(fn):
    def apply(tmp_path, src, dst):
        dst.write_bytes(fn(src.read_bytes()))
    return apply


def _set(d, key, value):
    d[key] = value


BAD_FILES = {
    # bytes on disk
    "empty_file": (_raw(lambda b: b""), r"not a readable fastbp checkpoint"),
    "truncated_half": (_raw(lambda b: b[:len(b) // 2]), r"truncated or corrupted"),
    "truncated_last_byte": (_raw(lambda b: b[:-1]), r"truncated or corrupted"),
    "truncated_to_header": (_raw(lambda b: b[:40]), r"truncated or corrupted"),
    "flipped_byte_in_weights": (None, r"truncated or corrupted.*CRC"),
    "flipped_byte_in_metadata": (_raw(lambda b: _flip_inside(b, "fastbp-checkpoint".encode("utf-32-le"))),
                                 r"CRC"),
    "text_file": (_raw(lambda b: b"hello, I am not a checkpoint\n" * 10), r"not a readable"),
    "npy_not_npz": (None, r"not an \.npz archive"),
    "member_not_npy": (None, r"member 'params' is not a \.npy array"),
    "npy_header_garbage": (None, r"not a readable fastbp checkpoint"),
    # metadata
    "wrong_format_name": (_mut(lambda a, m, t: _set(m, "format", "torch")), r"format is 'torch'"),
    "format_version_2": (_mut(lambda a, m, t: _set(m, "format_version", 2)),
                         r"format version 2 is not supported.*version 1"),
    "format_version_str": (_mut(lambda a, m, t: _set(m, "format_version", "1")), r"format version '1'"),
    "meta_not_json": (None, r"metadata is not valid JSON"),
    "meta_not_object": (None, r"metadata is not a JSON object"),
    "meta_nan_constant": (None, r"metadata contains NaN"),
    "meta_missing_rng": (_mut(lambda a, m, t: m.pop("rng")), r"metadata lacks rng"),
    "meta_missing": (_mut(lambda a, m, t: _set(m, "__drop__", True)), r"missing the 'meta' entry"),
    # arrays
    "missing_params": (_mut(lambda a, m, t: a.pop("params")), r"missing array\(s\) params"),
    "missing_state": (_mut(lambda a, m, t: a.pop("state_0")), r"missing array\(s\) state_0"),
    "missing_hyper": (_mut(lambda a, m, t: a.pop("hyper")), r"missing array\(s\) hyper"),
    "extra_array": (_mut(lambda a, m, t: _set(a, "state_1", a["state_0"].copy())),
                    r"unexpected array\(s\) state_1"),
    "params_wrong_dtype": (_mut(lambda a, m, t: _set(a, "params", a["params"].astype(np.float64))),
                           r"'params' has dtype float64, expected float32"),
    "params_2d": (_mut(lambda a, m, t: _set(a, "params", a["params"].reshape(-1, 1))), r"must be 1-D"),
    "params_too_short": (_mut(lambda a, m, t: [_set(a, k, a[k][:-16]) for k in ("params", "state_0")]),
                         r"'params' has \d+ values but the architecture .* needs \d+"),
    "state_wrong_size": (_mut(lambda a, m, t: _set(a, "state_0", a["state_0"][:-1])),
                         r"'state_0' has \d+ elements, the parameters \d+"),
    "digest_mismatch": (_mut(lambda a, m, t: _set(a, "params", a["params"] + 1), fix_digests=False),
                        r"'params' fails its SHA-256 check"),
    "arrays_of_another_architecture": (
        _mut(lambda a, m, t: a.update({k: v for k, v in _other_arch_arrays(t)[0].items()})),
        r"'params' has \d+ values but the architecture Sequential\(Linear\(6, 5"),
    "spec_of_a_bigger_model": (
        _mut(lambda a, m, t: _set(m, "model", mlp([6, 4000, 3000, 3]).spec())),
        r"declares \d+ weights but 'params' holds \d+ values"),
    "unknown_layer_type": (_mut(lambda a, m, t: m["model"]["layers"].append({"type": "Conv2d"})),
                           r"invalid model spec.*Conv2d"),
    "layer_spec_missing_key": (_mut(lambda a, m, t: m["model"]["layers"][0].pop("in_features")),
                               r"invalid model spec \(ValueError: layer 'Linear' in model spec has fields "
                               r"\['bias', 'layout', 'out_features'\]: it needs \['bias', 'in_features'"),
    "unknown_loss": (_mut(lambda a, m, t: _set(m, "loss", "hinge2")), r"cannot rebuild.*unknown loss 'hinge2'"),
    "bad_batch_size": (_mut(lambda a, m, t: _set(m, "batch_size", 0)), r"cannot rebuild.*batch_size"),
    "bad_dtype": (_mut(lambda a, m, t: _set(m, "dtype", "float16")), r"dtype: dtype must be float32 or float64"),
    "unknown_optimizer": (_mut(lambda a, m, t: _set(m, "optimizer", {"type": "RMSprop"})),
                          r"invalid optimizer spec"),
    "optimizer_negative_lr": (_mut(lambda a, m, t: m["optimizer"].update(lr=-1.0)),
                              r"invalid optimizer spec.*lr must be >= 0"),
    "state_count_vs_optimizer": (_mut(lambda a, m, t: (m.update(n_state=0), a.pop("state_0"))),
                                 r"0 optimizer state vector\(s\) stored, SGD\(.*\) needs 1"),
    "momentum_without_buffer": (
        # hyper still says momentum 0.9, the spec says none and there is no momentum buffer:
        # running it would make the update write out of bounds
        _mut(lambda a, m, t: (m["optimizer"].update(momentum=0.0), m.update(n_state=0), a.pop("state_0"))),
        r"hyper-parameters do not match the optimizer spec"),
    "hyper_nan_lr": (_mut(lambda a, m, t: a["hyper"].__setitem__(ex.H_LR, np.nan)), r"non-finite"),
    "hyper_negative_lr": (_mut(lambda a, m, t: a["hyper"].__setitem__(ex.H_LR, -0.1)),
                          r"learning rate: .*lr must be >= 0"),
    "hyper_fractional_steps": (_mut(lambda a, m, t: a["hyper"].__setitem__(ex.H_STEPS, 2.5)),
                               r"step count must be a non-negative integer"),
    "hyper_wrong_size": (_mut(lambda a, m, t: _set(a, "hyper", a["hyper"][:11])), r"'hyper' has 11 values"),
    "rng_wrong_generator": (_mut(lambda a, m, t: m["rng"].update(bit_generator="MT19937")),
                            r"RNG state is not a PCG64 state"),
    "rng_garbage_state": (_mut(lambda a, m, t: m["rng"].update(state="garbage")), r"invalid RNG state"),
    "n_state_out_of_range": (_mut(lambda a, m, t: _set(m, "n_state", 7)), r"n_state must be 0, 1 or 2"),
}


def _special(name, tmp_path, src, dst):
    if name == "flipped_byte_in_weights":
        a, _ = _arrays(src)
        dst.write_bytes(_flip_inside(src.read_bytes(), a["params"][:4].tobytes()))
    elif name in ("member_not_npy", "npy_header_garbage"):
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info.filename)
                if info.filename == "params.npy":
                    if name == "member_not_npy":
                        data = b"just some bytes, no .npy magic"
                    else:                          # a valid magic, then an unparsable header
                        i = data.index(b"{")
                        data = data[:i] + b"{'descr': '<f4', 'fortran_order': (((" + data[i + 34:]
                zout.writestr(info, data)
    elif name == "npy_not_npz":
        with open(dst, "wb") as f:
            np.save(f, np.zeros(4))
    elif name in ("meta_not_json", "meta_not_object", "meta_nan_constant"):
        arrays, meta = _arrays(src)
        text = {"meta_not_json": "{'format': 'fastbp-checkpoint'", "meta_not_object": "[1, 2]",
                "meta_nan_constant": json.dumps(meta).replace('"lr": 0.1', '"lr": NaN')}[name]
        assert "NaN" in text or name != "meta_nan_constant"
        np.savez(dst, meta=np.array(text), **arrays)


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_checkpoint_gives_clear_value_error(tmp_path, name):
    step, src, _ = _good_checkpoint(tmp_path)
    dst = tmp_path / f"broken_{name}.npz"
    make, pattern = BAD_FILES[name]
    if make is None:
        _special(name, tmp_path, src, dst)
    else:
        make(tmp_path, src, dst)
    with pytest.raises(ValueError, match=r"checkpoint '.*broken_" + name + r"\.npz': ") as info:
        fastbp.load(dst)
    assert info.match(pattern)
    assert fastbp.load(src).n_steps == 1             # the good file is still fine


def test_load_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastbp.load(tmp_path / "nope.npz")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        fastbp.load(3)
    with pytest.raises(TypeError, match="step must be a fastbp.TrainStep"):
        checkpoint.save("not a step", tmp_path / "x.npz")
    step = fastbp.compile(mlp([4, 3]), batch_size=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        step.save(tmp_path / "no" / "such" / "dir.npz")
    with pytest.raises(IsADirectoryError):
        step.save(tmp_path)
    assert os.listdir(tmp_path) == []


def test_expect_model_rejects_another_architecture(tmp_path):
    model = mlp([6, 5, 3])
    fastbp.compile(model, batch_size=4).save(tmp_path / "c.npz")
    assert fastbp.load(tmp_path / "c.npz", expect_model=mlp([6, 5, 3])).model.spec() == model.spec()
    for other, what in ((mlp([6, 6, 3]), "layer 0 (Linear): out_features 5 saved, 6 expected"),
                        (mlp([6, 5, 3], "tanh"), "layer 1 (ReLU): saved a ReLU, expected a Tanh"),
                        (mlp([6, 5, 3], bias=False), "layer 0 (Linear): bias True saved, False expected"),
                        (mlp([6, 5, 5, 3]), "the model (Sequential): 3 layers saved, 5 expected")):
        with pytest.raises(ValueError, match=r"c\.npz'.*architecture .* differs from the expected") as e:
            fastbp.load(tmp_path / "c.npz", expect_model=other)
        assert what in str(e.value)           # the message names the difference
    with pytest.raises(TypeError, match="expect_model must be a fastbp.Sequential"):
        fastbp.load(tmp_path / "c.npz", expect_model="mlp")


def test_checkpoint_is_a_plain_npz_with_json_metadata(tmp_path):
    step = fastbp.compile(mlp([4, 6, 3]), optimizer=fastbp.Adam(), batch_size=2, dtype=np.float64, seed=5)
    step.save(tmp_path / "c.npz")
    with zipfile.ZipFile(tmp_path / "c.npz") as z:
        assert sorted(z.namelist()) == ["hyper.npy", "meta.npy", "params.npy", "state_0.npy", "state_1.npy"]
    arrays, meta = _arrays(tmp_path / "c.npz")
    assert meta["format"] == "fastbp-checkpoint" and meta["format_version"] == 1
    assert meta["fastbp_version"] == fastbp.__version__
    assert meta["model"] == step.model.spec() and meta["optimizer"] == step.optimizer.spec()
    assert (meta["loss"], meta["batch_size"], meta["dtype"], meta["seed"]) == ("softmax_cross_entropy", 2,
                                                                              "float64", 5)
    assert meta["rng"] == step.rng.bit_generator.state
    assert arrays["params"].tobytes() == step.param_vector.tobytes()
    assert arrays["hyper"].tobytes() == step.hyper.tobytes()
    buf = io.BytesIO()
    np.save(buf, arrays["params"])                    # ordinary arrays, readable by anything


def test_random_byte_damage_is_always_detected(tmp_path):
    """Fuzz: flip, zero or cut bytes anywhere in a checkpoint.  Loading either raises a
    ValueError naming the file, or (damage to bytes zip ignores, such as timestamps)
    returns exactly the saved state: never a silently different step, never another error."""
    step, src, good = _good_checkpoint(tmp_path)
    want = _state(fastbp.load(src))
    rng = np.random.default_rng(2024)
    dst = tmp_path / "fuzz.npz"
    outcomes = {"rejected": 0, "harmless": 0}
    for trial in range(1500):
        raw = bytearray(good)
        kind = trial % 3
        pos = int(rng.integers(len(raw)))
        if kind == 0:
            raw[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            raw[pos:pos + 8] = bytes(len(raw[pos:pos + 8]))
        else:
            del raw[pos:]
        dst.write_bytes(bytes(raw))
        try:
            back = fastbp.load(dst)
        except ValueError as e:
            assert "fuzz.npz" in str(e)
            outcomes["rejected"] += 1
        else:
            assert _state(back) == want, (trial, kind, pos)
            outcomes["harmless"] += 1
    assert outcomes["rejected"] > 1000, outcomes


def test_running_statistics_that_overflowed_save_and_load_back(tmp_path):
    """BatchNorm running statistics that overflowed to inf (a torch state_dict's, or set by
    hand) are saved and read back as they are (as a torch state_dict round-trips them), with
    the weights and the optimizer state: save and load agree, nothing is lost.  (Training on
    finite inputs whose variance overflows float32 no longer writes them: the normalised
    values are NaN, as PyTorch's, and the step refuses the non-finite loss, changing nothing.)"""
    step = fastbp.compile(fastbp.Sequential(fastbp.Linear(3, 4), fastbp.BatchNorm1d(4), fastbp.Linear(4, 2)),
                          optimizer=fastbp.SGD(lr=0.1, momentum=0.9), batch_size=8)
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    step(x, np.arange(8) % 2)
    before = step.buffer_vector.copy()
    with pytest.raises(FloatingPointError, match="not finite"):
        step(x * np.float32(1e20), np.arange(8) % 2)
    np.testing.assert_array_equal(step.buffer_vector, before)
    step.buffers["1.running_var"][:2] = np.inf
    step.buffers["1.running_mean"][3] = -np.inf
    path = tmp_path / "bn.npz"
    step.save(path)
    back = fastbp.load(path)
    np.testing.assert_array_equal(back.buffer_vector, step.buffer_vector)
    np.testing.assert_array_equal(back.param_vector, step.param_vector)
    np.testing.assert_array_equal(back.state_vectors[0], step.state_vectors[0])
    assert back.n_steps == step.n_steps == 1
    # a count is still checked: it must be a finite count
    arrays, meta = _arrays(path)
    off = back.plan.buffer_region[0]
    t = next(int(back.plan.bufs[tb][0]) for _, tb in back.plan.running.values())
    arrays["buffers"][t - off] = np.inf
    _write(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(ValueError, match=r"num_batches_tracked must be a finite count"):
        fastbp.load(tmp_path / "bad.npz")
