"""checkpoint.save(extra_arrays=, extra_meta=) and checkpoint.load_bundle; version-1 files."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp import checkpoint
from reference import mlp

DATA = Path(__file__).parent / "data"


def _step(dtype=np.float32):
    step = fastbp.compile(mlp([3, 5, 2]), optimizer=fastbp.Adam(lr=1e-2), batch_size=4, dtype=dtype, seed=3)
    rng = np.random.default_rng(1)
    step.fit(rng.standard_normal((8, 3)).astype(dtype), np.arange(8) % 2, epochs=1)
    return step


def _same_state(a, b):
    assert a.param_vector.tobytes() == b.param_vector.tobytes()
    assert [s.tobytes() for s in a.state_vectors] == [s.tobytes() for s in b.state_vectors]
    assert a.n_steps == b.n_steps and a.rng.bit_generator.state == b.rng.bit_generator.state


def test_bundle_round_trip(tmp_path):
    step = _step()
    big_endian = np.arange(6, dtype=">f8").reshape(2, 3)
    extras = {"classes": np.array([3, 5], np.int64), "scale.mean": big_endian, "fortran": np.asfortranarray(
        np.arange(12, dtype=np.float32).reshape(3, 4)), "flag": np.array(True), "empty-0": np.zeros((0, 2)),
        "c": np.array([1 + 2j], np.complex64), "u8": np.arange(3, dtype=np.uint8)}
    meta = {"classes": ["a", "b"], "pair": (1, 2.5), "nested": {"x": [None, True, -3]}, "n": 2**64}
    path = tmp_path / "bundle.npz"
    checkpoint.save(step, path, extra_arrays=extras, extra_meta=meta)
    back, arrays, back_meta = checkpoint.load_bundle(path)
    _same_state(back, step)
    assert set(arrays) == set(extras)
    for k, a in extras.items():
        assert arrays[k].shape == a.shape and arrays[k].dtype == a.dtype.newbyteorder("=") and \
            np.array_equal(arrays[k], a), k
        assert arrays[k].dtype.isnative and arrays[k].flags.writeable and arrays[k].flags.c_contiguous
    assert back_meta == {"classes": ["a", "b"], "pair": [1, 2.5], "nested": {"x": [None, True, -3]}, "n": 2**64}
    _same_state(fastbp.load(path), step)              # load() validates the extras, returns only the step
    with zipfile.ZipFile(path) as z:
        assert "extra.scale.mean.npy" in z.namelist() and "extra.classes.npy" in z.namelist()
    # the caller's objects were snapshotted, not referenced
    extras["classes"][0] = 99
    meta["classes"].append("c")
    assert checkpoint.load_bundle(path)[1]["classes"][0] == 3


def test_bundle_without_extras_and_load_of_plain_checkpoint(tmp_path):
    step = _step(np.float64)
    step.save(tmp_path / "plain.npz")
    back, arrays, meta = checkpoint.load_bundle(tmp_path / "plain.npz", expect_model=mlp([3, 5, 2]))
    _same_state(back, step)
    assert arrays == {} and meta == {}
    checkpoint.save(step, tmp_path / "meta_only.npz", extra_meta={})
    assert checkpoint.load_bundle(tmp_path / "meta_only.npz")[2] == {}


def test_version_1_file_written_before_bundles_still_loads():
    """tests/data/checkpoint_v1.npz was written by fastbp before extras existed (Adam, float64)."""
    path = DATA / "checkpoint_v1.npz"
    with np.load(path, allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(str(stored["meta"]))
    assert meta["format_version"] == 1 and "extra" not in meta
    step, arrays, extra = checkpoint.load_bundle(path)
    assert arrays == {} and extra == {}
    assert step.param_vector.tobytes() == stored["params"].tobytes()
    assert [s.tobytes() for s in step.state_vectors] == [stored["state_0"].tobytes(), stored["state_1"].tobytes()]
    assert step.n_steps == 4 and step.dtype == np.float64
    assert step.rng.bit_generator.state == meta["rng"]
    assert fastbp.load(path).param_vector.tobytes() == stored["params"].tobytes()


@pytest.mark.parametrize("extra_arrays, exc, pattern", [
    ([np.zeros(2)], TypeError, r"extra_arrays must be a dict"),
    ({1: np.zeros(2)}, TypeError, r"extra_arrays keys must be str"),
    ({"a/b": np.zeros(2)}, ValueError, r"extra_arrays key 'a/b'"),
    ({"": np.zeros(2)}, ValueError, r"extra_arrays key ''"),
    ({"x" * 65: np.zeros(2)}, ValueError, r"extra_arrays key 'x+'"),
    ({"lst": [1, 2]}, TypeError, r"extra_arrays\['lst'\] must be a numpy.ndarray"),
    ({"obj": np.array([None])}, TypeError, r"extra_arrays\['obj'\] has dtype object"),
    ({"s": np.array(["a"])}, TypeError, r"extra_arrays\['s'\] has dtype <U1"),
    ({"v": np.zeros(2, "V4")}, TypeError, r"extra_arrays\['v'\] has dtype"),
    ({"rec": np.zeros(2, [("a", "f4")])}, TypeError, r"extra_arrays\['rec'\] has dtype"),
    ({"t": np.array(["2020-01-01"], "M8[D]")}, TypeError, r"extra_arrays\['t'\] has dtype"),
])
def test_bad_extra_arrays_are_rejected_and_nothing_is_written(tmp_path, extra_arrays, exc, pattern):
    step = _step()
    with pytest.raises(exc, match=pattern):
        checkpoint.save(step, tmp_path / "x.npz", extra_arrays=extra_arrays)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra_meta, exc, pattern", [
    ([1], TypeError, r"extra_meta must be a dict"),
    ({"a": float("nan")}, ValueError, r"extra_meta\['a'\]: nan is not a finite"),
    ({"a": [1, float("inf")]}, ValueError, r"extra_meta\['a'\]\[1\]: inf"),
    ({"a": np.int64(3)}, TypeError, r"extra_meta\['a'\] is a int64"),
    ({"a": {1: 2}}, TypeError, r"extra_meta\['a'\]: key 1 is a int"),
    ({"a": {"b"}}, TypeError, r"extra_meta\['a'\] is a set"),
    ({"a": 10 ** 200}, ValueError, r"integer with more than 100 digits"),
    ({"deep": json.loads("[" * 80 + "]" * 80)}, ValueError, r"nested more than 64 levels"),
    ({"big": "x" * (checkpoint.MAX_META_CHARS + 1)}, ValueError, r"MAX_META_CHARS"),
])
def test_bad_extra_meta_is_rejected_and_nothing_is_written(tmp_path, extra_meta, exc, pattern):
    step = _step()
    with pytest.raises(exc, match=pattern):
        checkpoint.save(step, tmp_path / "x.npz", extra_meta=extra_meta)
    assert list(tmp_path.iterdir()) == []


def _rewrite(src, dst, edit_arrays=None, edit_meta=None, fix_digests=True):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    if fix_digests:
        meta["arrays"] = {k: {"shape": list(a.shape), "dtype": a.dtype.name, "sha256": checkpoint._digest(a)}
                          for k, a in arrays.items()}
    np.savez(dst, meta=np.array(json.dumps(meta)), **arrays)


@pytest.mark.parametrize("name, edit_arrays, edit_meta, fix, pattern", [
    ("digest", lambda a: a["extra.w"].__setitem__(0, 7.0), None, False, r"'extra.w' fails its SHA-256 check"),
    ("dropped", lambda a: a.pop("extra.w"), lambda m: None, False, r"missing array\(s\) extra.w"),
    ("undeclared", lambda a: a.__setitem__("extra.z", np.zeros(2)), None, False, r"unexpected array\(s\) extra.z"),
    ("object", None, lambda m: m["arrays"].__setitem__("extra.q", {}), False,
     r"missing array\(s\) extra.q"),
    ("bad_name", lambda a: a.__setitem__("extra.a b", np.zeros(2)), None, True, r"unexpected array\(s\) extra.a b"),
    ("shape", None, lambda m: m["arrays"]["extra.w"].__setitem__("shape", [4]), False,
     r"'extra.w' \(shape \(3,\), dtype float64\) does not match the metadata"),
    ("big_endian", lambda a: a.__setitem__("extra.w", a["extra.w"].astype(">f8")), None, True,
     r"'extra.w' has dtype >f8"),
    ("extra_not_object", None, lambda m: m.__setitem__("extra", [1]), True, r"metadata 'extra' is not an object"),
])
def test_corrupted_extras_are_rejected_by_load_and_load_bundle(tmp_path, name, edit_arrays, edit_meta, fix,
                                                               pattern):
    step = _step()
    src = tmp_path / "src.npz"
    checkpoint.save(step, src, extra_arrays={"w": np.array([1.0, 2.0, 3.0])}, extra_meta={"k": 1})
    dst = tmp_path / f"bad_{name}.npz"
    _rewrite(src, dst, edit_arrays, edit_meta, fix)
    for fn in (fastbp.load, checkpoint.load_bundle):
        with pytest.raises(ValueError, match=rf"checkpoint '.*bad_{name}\.npz': .*{pattern}"):
            fn(dst)


def test_save_accepts_a_trainstep_like_object(tmp_path):
    step = _step()

    class Like:                                        # no _lock, not a TrainStep subclass
        pass

    like = Like()
    for a in ("param_vector", "state_vectors", "hyper", "rng", "model", "loss", "optimizer", "batch_size",
              "dtype", "seed"):
        setattr(like, a, getattr(step, a))
    checkpoint.save(like, tmp_path / "like.npz")
    _same_state(fastbp.load(tmp_path / "like.npz"), step)
    gpu_like = Like()                                  # a device step: saved from its host copy
    gpu_like.param_vector, gpu_like.to_cpu = object(), lambda: like
    checkpoint.save(gpu_like, tmp_path / "gpu.npz", extra_arrays={"a": np.zeros(1)})
    _same_state(checkpoint.load_bundle(tmp_path / "gpu.npz")[0], step)
    del like.rng
    with pytest.raises(TypeError, match=r"step must be a fastbp.TrainStep \(or an object with rng\), got Like"):
        checkpoint.save(like, tmp_path / "x.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.npz", "like.npz"]


def test_random_byte_damage_to_a_bundle_is_always_detected(tmp_path):
    """Fuzz: flip, zero or cut bytes anywhere in a file with extras.  load_bundle either raises a
    ValueError naming the file or returns exactly what was saved; never another error."""
    step = _step()
    src = tmp_path / "src.npz"
    extras = {"classes": np.array([2, 7, 9]), "m": np.linspace(0, 1, 12).reshape(3, 4)}
    checkpoint.save(step, src, extra_arrays=extras, extra_meta={"names": ["x", "y"], "v": 1.5})
    good = src.read_bytes()
    rng = np.random.default_rng(17)
    dst = tmp_path / "fuzz.npz"
    rejected = 0
    for trial in range(600):
        raw = bytearray(good)
        pos = int(rng.integers(len(raw)))
        if trial % 3 == 0:
            raw[pos] ^= 1 << int(rng.integers(8))
        elif trial % 3 == 1:
            raw[pos:pos + 8] = bytes(len(raw[pos:pos + 8]))
        else:
            del raw[pos:]
        dst.write_bytes(bytes(raw))
        try:
            back, arrays, meta = checkpoint.load_bundle(dst)
        except ValueError as e:
            assert "fuzz.npz" in str(e)
            rejected += 1
        else:
            _same_state(back, step)
            assert set(arrays) == set(extras) and all(np.array_equal(arrays[k], extras[k]) for k in extras)
            assert meta == {"names": ["x", "y"], "v": 1.5}
    assert rejected > 400
