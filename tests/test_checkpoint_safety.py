"""Checkpoints against hostile files and hostile conditions (issue 17: defects 9, 11, 12 and
the "Also" items): sizes are checked before anything is allocated, metadata is bounded,
long names, directories, FIFOs, symbolic links and saves killed by SIGKILL."""
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import _atomic, checkpoint
from reference import mlp

N_CLAIMED = 10**8                          # the "member claims 1e8 floats"


def _good(tmp_path, name="good.npz"):
    step = fastbp.compile(mlp([6, 5, 3]), optimizer=fastbp.SGD(lr=0.1, momentum=0.9), batch_size=8)
    path = tmp_path / name
    step.save(path)
    return step, path


def _members(path):
    """Raw member bytes (the .npy files) and the parsed metadata."""
    with zipfile.ZipFile(path) as z:
        raw = {i.filename: z.read(i) for i in z.infolist()}
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    return raw, meta


def _npy_claiming(shape, dtype, data_bytes):
    """A .npy file whose header declares ``shape`` but which carries ``data_bytes`` of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                              "fortran_order": False, "shape": shape})
    return buf.getvalue() + data_bytes


def _zip(path, members, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress, allowZip64=True) as z:
        for name, data in members.items():
            if callable(data):                               # streamed (large, compressible) member
                info = zipfile.ZipInfo(name)
                info.compress_type = compress
                with z.open(info, "w", force_zip64=True) as f:
                    data(f)
            else:
                z.writestr(name, data)


def _meta_npy(meta):
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)))
    return buf.getvalue()


def _claim_huge_meta(meta):
    for k in ("params", "state_0"):
        meta["arrays"][k]["shape"] = [N_CLAIMED]
    return meta


def _peak_of_failed_load(path):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=re.escape(repr(str(path)))) as info:
            fastbp.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, str(info.value)


# ------------------------------------------------------------------ defect 9
def test_deflated_member_claiming_1e8_floats_is_rejected_without_allocating(tmp_path):
    """The issue's file: ~390 KB, a deflate-compressed member of 1e8 float32 zeros with a
    consistent header (and metadata) made np.load allocate 381 MB before the check."""
    _, src = _good(tmp_path)
    raw, meta = _members(src)

    def zeros(f):
        f.write(_npy_claiming((N_CLAIMED,), np.float32, b""))
        block = bytes(1 << 22)
        for _ in range(N_CLAIMED * 4 // len(block)):
            f.write(block)
        f.write(bytes(N_CLAIMED * 4 % len(block)))

    dst = tmp_path / "bomb.npz"
    _zip(dst, {"params.npy": zeros, "state_0.npy": raw["state_0.npy"], "hyper.npy": raw["hyper.npy"],
               "meta.npy": _meta_npy(_claim_huge_meta(meta))}, compress=zipfile.ZIP_DEFLATED)
    assert dst.stat().st_size < 2_000_000
    peak, msg = _peak_of_failed_load(dst)
    assert peak < 20e6, peak
    assert "compressed" in msg


def test_stored_member_whose_header_claims_1e8_floats_is_rejected_without_allocating(tmp_path):
    _, src = _good(tmp_path)
    raw, meta = _members(src)
    dst = tmp_path / "liar.npz"
    _zip(dst, {"params.npy": _npy_claiming((N_CLAIMED,), np.float32, bytes(300_000)),
               "state_0.npy": raw["state_0.npy"], "hyper.npy": raw["hyper.npy"],
               "meta.npy": _meta_npy(_claim_huge_meta(meta))})
    peak, msg = _peak_of_failed_load(dst)
    assert peak < 20e6, peak
    assert "header declares 400000000 bytes of data but the zip entry holds 300000" in msg


def _patch_sizes(path, member, size):
    """Make the zip's local and central headers of ``member`` claim ``size`` bytes."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for sig, off_sizes, off_name in ((b"PK\x03\x04", 18, 30), (b"PK\x01\x02", 20, 46)):
        i = data.find(sig)
        while i >= 0:
            n_len = struct.unpack_from("<H", data, i + off_name - (2 if sig == b"PK\x03\x04" else 18))[0]
            if data[i + off_name:i + off_name + n_len] == name:
                struct.pack_into("<II", data, i + off_sizes, size, size)
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))


def test_zip_entry_claiming_more_bytes_than_the_file_holds_is_rejected_without_allocating(tmp_path):
    _, src = _good(tmp_path)
    raw, meta = _members(src)
    dst = tmp_path / "short.npz"
    npy = _npy_claiming((N_CLAIMED,), np.float32, bytes(300_000))
    _zip(dst, {"params.npy": npy, "state_0.npy": raw["state_0.npy"], "hyper.npy": raw["hyper.npy"],
               "meta.npy": _meta_npy(_claim_huge_meta(meta))})
    _patch_sizes(dst, "params.npy", len(npy) - 300_000 + N_CLAIMED * 4)
    with zipfile.ZipFile(dst) as z:                  # the patch worked: zip now believes the claim
        assert z.getinfo("params.npy").file_size == len(npy) - 300_000 + N_CLAIMED * 4
    peak, msg = _peak_of_failed_load(dst)
    assert peak < 20e6, peak
    assert "more than the" in msg and "truncated or corrupted" in msg


def test_oversized_metadata_member_is_rejected_before_it_is_read(tmp_path):
    _, src = _good(tmp_path)
    raw, meta = _members(src)
    meta["padding"] = "x" * checkpoint.MAX_META_CHARS        # 16 MiB as UTF-32
    dst = tmp_path / "fat_meta.npz"
    _zip(dst, {k: v for k, v in raw.items() if k != "meta.npy"} | {"meta.npy": _meta_npy(meta)})
    del meta
    peak, msg = _peak_of_failed_load(dst)
    assert peak < 4e6, peak
    assert "the 'meta' entry has" in msg


def test_every_header_is_checked_before_any_data_is_read(tmp_path, monkeypatch):
    """A bad header in the *last* member is found before the first member's data is read."""
    _, src = _good(tmp_path)
    raw, meta = _members(src)
    dst = tmp_path / "late.npz"
    _zip(dst, {"params.npy": raw["params.npy"], "state_0.npy": raw["state_0.npy"],
               "hyper.npy": _npy_claiming((N_CLAIMED,), np.float64, bytes(96)), "meta.npy": raw["meta.npy"]})
    from fastbp import _npzread
    reads = []
    real = _npzread.Archive.read
    monkeypatch.setattr(_npzread.Archive, "read", lambda self, k, h: reads.append(k) or real(self, k, h))
    with pytest.raises(ValueError, match=r"late\.npz'.*'hyper'"):
        fastbp.load(dst)
    assert reads == ["meta"]


@pytest.mark.parametrize("kind", ["compressed_copy", "duplicate_member", "stray_file", "fortran_extra",
                                  "overlapping", "many_strays"])
def test_archive_structure_problems(tmp_path, kind):
    step, src = _good(tmp_path)
    raw, meta = _members(src)
    dst = tmp_path / f"{kind}.npz"
    if kind == "compressed_copy":                    # savez_compressed of a valid checkpoint's arrays
        with np.load(src) as z:
            np.savez_compressed(dst, **{k: z[k] for k in z.files})
        pattern = r"member 'params' is compressed"
    elif kind == "duplicate_member":
        with zipfile.ZipFile(dst, "w") as z:
            for k, v in raw.items():
                z.writestr(k, v)
            with pytest.warns(UserWarning, match="Duplicate name"):
                z.writestr("params.npy", raw["params.npy"])
        pattern = r"member 'params.npy' appears twice"
    elif kind == "stray_file":
        _zip(dst, raw | {"README.txt": b"hi"})
        pattern = r"unexpected array\(s\) README.txt"
    elif kind == "overlapping":                      # extra.a's entry swallows extra.b's: zip-bomb layout
        a, b = np.zeros(20_000), np.ones(20_000)
        checkpoint.save(step, dst, extra_arrays={"a": a, "b": b})
        with zipfile.ZipFile(dst) as z:
            ia, ib = z.getinfo("extra.a.npy"), z.getinfo("extra.b.npy")
            assert ib.header_offset > ia.header_offset
            _patch_sizes(dst, "extra.a.npy", ib.header_offset + ib.compress_size - ia.header_offset - 30 - 11)
        pattern = r"the members declare \d+ bytes in all, more than the \d+-byte file holds"
    elif kind == "many_strays":
        _zip(dst, raw | {f"junk{i:05d}-{'x' * 200}": b"" for i in range(3000)})
        pattern = r"unexpected array\(s\) junk00000-x+\.\.\., .* and 2992 more$"
    else:
        w = np.asfortranarray(np.arange(6.0).reshape(2, 3))
        buf = io.BytesIO()
        np.save(buf, w)
        meta["arrays"]["extra.w"] = {"shape": [2, 3], "dtype": "float64", "sha256": checkpoint._digest(w)}
        _zip(dst, {k: v for k, v in raw.items() if k != "meta.npy"} |
             {"extra.w.npy": buf.getvalue(), "meta.npy": _meta_npy(meta)})
        pattern = r"member 'extra.w' is stored in Fortran order"
    with pytest.raises(ValueError, match=rf"{kind}\.npz': .*{pattern}"):
        fastbp.load(dst)


# ----------------------------------------------------------------- defect 11
def _with_meta_text(tmp_path, name, text):
    _, src = _good(tmp_path)
    raw, _ = _members(src)
    buf = io.BytesIO()
    np.save(buf, np.array(text))
    dst = tmp_path / name
    _zip(dst, {k: v for k, v in raw.items() if k != "meta.npy"} | {"meta.npy": buf.getvalue()})
    return dst


@pytest.mark.parametrize("name, make, pattern", [
    ("deep_list", lambda m: "[" * 100_000 + "]" * 100_000, r"nested too deeply"),
    ("deep_dict", lambda m: '{"a":' * 100_000 + "1" + "}" * 100_000, r"nested too deeply"),
    ("deep_unclosed", lambda m: "[" * 100_000, r"nested too deeply|not valid JSON"),
    ("deep_model_spec",
     lambda m: json.dumps(m).replace('"model": {', '"model": {"x": ' + "[" * 70 + "]" * 70 + ", ", 1),
     r"nested more than 64 levels"),
    ("int_5000_digits", lambda m: json.dumps(m).replace('"batch_size": 8', '"batch_size": ' + "9" * 5000),
     r"integer with 5000 digits"),
    ("negative_int_5000_digits", lambda m: json.dumps(m).replace('"seed": 0', '"seed": -' + "9" * 5000),
     r"integer with 5000 digits"),
    ("float_5000_digits", lambda m: json.dumps(m).replace('"lr": 0.1', '"lr": 0.' + "1" * 5000),
     r"a number written with 5002 characters"),
    ("float_overflow", lambda m: json.dumps(m).replace('"lr": 0.1', '"lr": 1e999'), r"1e999, out of range"),
    ("int_in_rng_state",
     lambda m: json.dumps(m).replace('"state": {"inc": ', '"state": {"inc": 1' + "0" * 200 + ', "x": ', 1),
     r"integer with 201 digits"),
])
def test_hostile_metadata_gives_value_error_naming_the_file(tmp_path, name, make, pattern):
    _, src = _good(tmp_path)
    _, meta = _members(src)
    text = make(meta)
    assert text != json.dumps(meta)
    dst = _with_meta_text(tmp_path, f"{name}.npz", text)
    with pytest.raises(ValueError, match=rf"checkpoint '.*{name}\.npz': .*{pattern}"):
        fastbp.load(dst)


# ----------------------------------------------------------------- defect 12
@pytest.mark.parametrize("length", [240, 255])
def test_save_to_a_long_legal_file_name(tmp_path, length):
    try:
        name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    if length > name_max:
        pytest.skip(f"NAME_MAX is {name_max}")
    step, _ = _good(tmp_path)
    path = tmp_path / ("c" * (length - 4) + ".npz")
    step.save(path)
    step.save(path)                                       # and over an existing one
    assert fastbp.load(path).n_steps == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["good.npz", path.name])
    assert len(_atomic.temp_name(str(path))) <= 47


# ------------------------------------------------------ directories and FIFOs
def test_load_of_a_directory_or_fifo_is_a_value_error_naming_it(tmp_path):
    d = tmp_path / "ckpt_dir.npz"
    d.mkdir()
    with pytest.raises(ValueError, match=r"checkpoint '.*ckpt_dir\.npz': is a directory"):
        fastbp.load(d)
    with pytest.raises(ValueError, match=r"ckpt_dir\.npz': is a directory"):
        checkpoint.load_bundle(d)
    with pytest.raises(FileNotFoundError):
        fastbp.load(tmp_path / "missing.npz")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.npz"
        os.mkfifo(fifo)
        with pytest.raises(ValueError, match=r"pipe\.npz': is not a regular file"):
            fastbp.load(fifo)                                 # and it does not block


# ------------------------------------------------------------ symbolic links
@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_save_writes_through_a_symbolic_link(tmp_path):
    step, _ = _good(tmp_path)
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    target = real_dir / "model.npz"
    step.save(target)
    os.chmod(target, 0o600)
    link = link_dir / "latest.npz"
    os.symlink(os.path.relpath(target, link_dir), link)      # a relative link into another directory
    chain = link_dir / "chain.npz"
    os.symlink(link, chain)                                  # a link to a link
    step.fit(np.zeros((8, 6), np.float32), np.zeros(8, np.int64), epochs=1)
    step.save(chain)
    assert os.path.islink(link) and os.path.islink(chain)    # both links survive
    assert os.readlink(link) == os.path.relpath(target, link_dir)
    assert fastbp.load(target).n_steps == 1                  # the target got the new content
    assert fastbp.load(chain).n_steps == 1
    assert sorted(os.listdir(real_dir)) == ["model.npz"]      # no temp file left anywhere
    assert sorted(os.listdir(link_dir)) == ["chain.npz", "latest.npz"]
    assert (os.stat(target).st_mode & 0o777) == 0o600         # permissions of the replaced file kept
    dangling = link_dir / "new.npz"
    os.symlink(real_dir / "created.npz", dangling)           # a link to a file that does not exist yet
    step.save(dangling)
    assert os.path.islink(dangling) and fastbp.load(real_dir / "created.npz").n_steps == 1


# ------------------------------------------------------------- killed saves
_CHILD = """
import os, sys, time
import numpy as np, fastbp
from reference import mlp
step = fastbp.compile(mlp([6, 5, 3]), optimizer=fastbp.SGD(lr=0.1, momentum=0.9), batch_size=8)
step.fit(np.zeros((8, 6), np.float32), np.zeros(8, np.int64), epochs=3)
real = np.savez
def slow_savez(f, **arrays):
    real(f, **{k: arrays[k] for k in list(arrays)[:1]})   # part of the archive is on disk...
    f.flush()
    print("writing", flush=True)
    time.sleep(60)                                        # ...when the process is killed
np.savez = slow_savez
step.save(sys.argv[1])
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")
def test_save_killed_by_sigkill_leaves_a_recognisable_temp_file_that_a_later_save_removes(tmp_path, monkeypatch):
    step, path = _good(tmp_path, "model.npz")
    old = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_CHILD), str(path)], stdout=subprocess.PIPE,
                             env=env, cwd=tmp_path)
    try:
        assert child.stdout.readline() == b"writing\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert path.read_bytes() == old                           # the target is untouched
    left = [p for p in os.listdir(tmp_path) if p != "model.npz"]
    assert len(left) == 1 and _atomic.TEMP_NAME.fullmatch(left[0]), left
    assert left[0].startswith(".fastbp-") and str(child.pid) in left[0]
    leftover = tmp_path / left[0]
    assert leftover.stat().st_size > 0

    # files a later save must keep: one of a live process, another target's, one from another
    # host (or PID namespace), and anything not following the pattern exactly
    other_host = re.sub(r"^(\.fastbp-[0-9a-f]{8}-)[0-9a-f]{6}", r"\g<1>000000", left[0])
    if other_host == left[0]:
        other_host = re.sub(r"^(\.fastbp-[0-9a-f]{8}-)[0-9a-f]{6}", r"\g<1>111111", left[0])
    keep = {
        "live": re.sub(r"-\d+-([0-9a-f]{8})\.tmp$", rf"-{os.getppid()}-\g<1>.tmp", left[0]),
        "other_target": _atomic.temp_name(str(tmp_path / "other.npz")).replace(f"-{os.getpid()}-",
                                                                               f"-{child.pid}-"),
        "other_host": other_host,
        "not_ours": left[0] + ".bak",
        "huge_pid": re.sub(r"-\d+-([0-9a-f]{8})\.tmp$", r"-9999999999-\g<1>.tmp", left[0]),
        "pid_0": re.sub(r"-\d+-([0-9a-f]{8})\.tmp$", r"-0-\g<1>.tmp", left[0]),
    }
    for name in keep.values():
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path / "model.npz", tmp_path / re.sub(r"-([0-9a-f]{8})\.tmp$", "-00000000.tmp", left[0]))
    keep["link"] = re.sub(r"-([0-9a-f]{8})\.tmp$", "-00000000.tmp", left[0])   # a link, not a leftover file

    step.save(tmp_path / "unrelated.npz")                     # another target: cleans nothing
    assert leftover.exists()
    step.save(path)                                           # provably stale: removed
    assert not leftover.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["model.npz", "unrelated.npz", *keep.values()])
    assert fastbp.load(path).n_steps == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_save_refuses_a_pipe_or_device_instead_of_replacing_it(tmp_path, capsys):
    """The atomic rename replaced whatever was at the path: as root, step.save('/dev/null')
    removed the system's /dev/null.  Anything that exists and is not a regular file (or a
    link to one) is refused, and left as it was."""
    import stat as st
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.npz"
    os.symlink(fifo, link)
    step = fastbp.compile(mlp([3, 4, 2]), batch_size=2, dtype=np.float64)
    for target in (fifo, link):
        with pytest.raises(ValueError, match="is not a regular file"):
            step.save(target)
        assert st.S_ISFIFO(os.stat(fifo).st_mode)
    from fastbp import cli
    assert cli.main(["train", "--epochs", "1", "--quiet", "--save", str(fifo)]) != 0
    assert "--save" in capsys.readouterr().err and st.S_ISFIFO(os.stat(fifo).st_mode)
    regular = tmp_path / "ok.npz"
    step.save(regular)
    link2 = tmp_path / "link2.npz"
    os.symlink(regular, link2)
    step.save(link2)                 # a link to a regular file: written through, as before
    assert os.path.islink(link2) and fastbp.load(link2).n_steps == 0


def _with_meta(tmp_path, name, edit, hyper_edit=None):
    """A copy of a good checkpoint with its metadata (and its 'hyper' array, digest updated) edited."""
    _, src = _good(tmp_path)
    raw, meta = _members(src)
    edit(meta)
    members = {k: v for k, v in raw.items() if k != "meta.npy"}
    if hyper_edit is not None:
        with np.load(src, allow_pickle=False) as z:
            hyper = np.array(z["hyper"])
        hyper_edit(hyper)
        buf = io.BytesIO()
        np.save(buf, hyper)
        members["hyper.npy"] = buf.getvalue()
        meta["arrays"]["hyper"]["sha256"] = checkpoint._digest(hyper)
    dst = tmp_path / name
    _zip(dst, members | {"meta.npy": _meta_npy(meta)})
    return dst


def test_a_schedule_origin_beyond_the_progress_is_refused_by_load(tmp_path):
    """It loaded, then every fit failed with 't must be >= 0, got -98', naming neither."""
    dst = _with_meta(tmp_path, "origin.npz", lambda m: m["training"].update(origin=[100, 1000]))
    with pytest.raises(ValueError, match=r"origin\.npz': .*schedule origin \[100, 1000\] .* lies beyond"):
        fastbp.load(dst)


@pytest.mark.parametrize("value", [2.0 ** 63, 1e300])
def test_a_step_count_beyond_2_53_is_refused_by_load(tmp_path, value):
    from fastbp import _isa

    def edit(h):
        h[_isa.H_STEPS] = value
    dst = _with_meta(tmp_path, "steps.npz", lambda m: None, edit)
    with pytest.raises(ValueError, match=r"steps\.npz': .*step count must be a non-negative integer of at most 2\*\*53"):
        fastbp.load(dst)


@pytest.mark.parametrize("what", ["seed", "schedule", "nesting"])
def test_a_step_whose_checkpoint_load_would_refuse_is_not_saved(tmp_path, what):
    """A seed or a schedule parameter of more than 100 digits, or Residual blocks nested more than 64
    levels deep in the spec, were written, and fastbp.load then refused the file save had written."""
    from fastbp import schedules as S
    model, kw = fastbp.Sequential(fastbp.Linear(3, 2)), {}
    if what == "seed":
        kw["seed"] = 10 ** 100
    elif what == "schedule":
        kw["schedule"] = S.StepLR(step_size=10 ** 150)
    else:
        block = fastbp.Linear(3, 3)
        for _ in range(40):
            block = fastbp.Residual(fastbp.Sequential(block))
        model = fastbp.Sequential(block, fastbp.Linear(3, 2))
    step = fastbp.compile(model, batch_size=4, **kw)
    path = tmp_path / "c.npz"
    with pytest.raises(ValueError, match="cannot be saved in a checkpoint that fastbp.load reads: metadata"):
        step.save(path)
    assert not path.exists() and os.listdir(tmp_path) == []
    if what == "seed":                      # at the limit: written and read back
        fastbp.compile(model, batch_size=4, seed=10 ** 100 - 1).save(path)
        assert fastbp.load(path).seed == 10 ** 100 - 1
