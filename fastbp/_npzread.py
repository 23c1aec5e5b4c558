"""Bounded reading of untrusted ``.npz`` archives (private to :mod:`fastbp.checkpoint`).

:func:`numpy.load` trusts a member's ``.npy`` header: a small file whose
header claims a huge shape makes it allocate (or decompress) that much
before anything can be checked.  This reader opens the archive with
:mod:`zipfile`, accepts only uncompressed, unencrypted members whose
declared sizes fit inside the file, parses each ``.npy`` header with
:mod:`numpy.lib.format` from a bounded number of bytes, and lets the caller
check every header against its metadata before a single data byte is read.
Data is then read in chunks into a preallocated array (never more than the
member's declared, already checked, size) and hashed on the fly; zipfile
checks each member's CRC-32 when its last byte is read.  Every problem is
raised as :class:`BadArchive`; only :class:`MemoryError` (a genuine lack of
memory for a size that passed the checks) and :class:`FileNotFoundError` /
:class:`PermissionError` from opening the file pass through.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zipfile

import numpy as np
from numpy.lib import format as npformat

#: Largest ``.npy`` header accepted (numpy's own default limit).
MAX_NPY_HEADER = 10000
_CHUNK = 1 << 24           # bytes read (and copied) at a time


class BadArchive(Exception):
    """The file is not a well-formed, uncompressed ``.npz`` archive."""


def _read_exact(f, n, what):
    data = f.read(n)
    if len(data) != n:
        raise BadArchive(f"{what} is truncated (truncated or corrupted?)")
    return data


class Header:
    """A member's ``.npy`` header: ``shape``, ``dtype``, ``fortran_order``, ``offset`` (bytes before the
    data) and ``nbytes`` (declared data size, a Python int: never overflows)."""

    def __init__(self, shape, dtype, fortran_order, offset):
        self.shape, self.dtype, self.fortran_order, self.offset = shape, dtype, fortran_order, offset
        n = 1
        for d in shape:
            n *= d
        self.size = n
        self.nbytes = n * dtype.itemsize


class Archive:
    """An open ``.npz`` file: ``members`` maps each array name (member name less ``.npy``) to its
    :class:`zipfile.ZipInfo`; ``others`` lists member names that are not ``*.npy``."""

    def __init__(self, path):
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # never block on a FIFO
        try:
            fd = os.open(path, flags)
        except (IsADirectoryError, PermissionError):
            if os.path.isdir(path):          # Windows cannot open directories
                raise BadArchive("is a directory, not a checkpoint file") from None
            raise
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise BadArchive("is a directory, not a checkpoint file")
            if not stat.S_ISREG(st.st_mode):
                raise BadArchive("is not a regular file (a pipe, device or socket?)")
        except BaseException:
            os.close(fd)
            raise
        self._file = os.fdopen(fd, "rb")
        self._zip = None
        try:
            self.size = st.st_size
            self._open_zip()
        except BaseException:
            self.close()
            raise

    def _open_zip(self):
        head = self._file.read(6)
        self._file.seek(0)
        try:
            self._zip = zipfile.ZipFile(self._file)
        except zipfile.BadZipFile as e:
            if head == b"\x93NUMPY":
                raise BadArchive("not an .npz archive (a single .npy array?)") from None
            raise BadArchive(f"not a readable fastbp checkpoint (truncated or corrupted?): BadZipFile: {e}") \
                from None
        self.members, self.others = {}, []
        seen = set()
        for info in self._zip.infolist():
            name = info.filename
            if name in seen:
                raise BadArchive(f"member {name[:80]!r} appears twice (corrupted or crafted archive)")
            seen.add(name)
            if not name.endswith(".npy"):
                self.others.append(name)
                continue
            key = name[:-4]
            if info.flag_bits & 0x1:
                raise BadArchive(f"member {key!r} is encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                raise BadArchive(f"member {key!r} is compressed (method {info.compress_type}); fastbp "
                                 f"checkpoints are written uncompressed")
            if info.compress_size != info.file_size or info.header_offset < 0 or \
                    info.header_offset + info.compress_size > self.size:
                raise BadArchive(f"member {key!r} declares {info.file_size} bytes, more than the "
                                 f"{self.size}-byte file holds (truncated or corrupted?)")
            self.members[key] = info
        declared = sum(i.compress_size for i in self.members.values())
        if declared > self.size:            # overlapping entries would multiply what a small file costs
            raise BadArchive(f"the members declare {declared} bytes in all, more than the {self.size}-byte "
                             "file holds (overlapping or corrupted entries)")

    def close(self):
        if self._zip is not None:
            self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def header(self, key):
        """Parse member ``key``'s ``.npy`` header (reads at most ``MAX_NPY_HEADER + 12`` bytes)."""
        info = self.members[key]
        with self._zip.open(info) as f:
            h = _parse_header(f, key)
        if h.fortran_order and len(h.shape) > 1:
            raise BadArchive(f"member {key!r} is stored in Fortran order; fastbp writes C order")
        if info.file_size != h.offset + h.nbytes:
            raise BadArchive(f"member {key!r}: its .npy header declares {h.nbytes} bytes of data but the "
                             f"zip entry holds {info.file_size - h.offset} (truncated or corrupted?)")
        return h

    def read(self, key, h):
        """Read member ``key`` (whose checked header is ``h``) into a new array; return it and the
        SHA-256 hex digest of its bytes (C order)."""
        out = np.empty(h.shape, h.dtype)
        flat = out.reshape(-1).view(np.uint8)
        digest = hashlib.sha256()
        with self._zip.open(self.members[key]) as f:
            _read_exact(f, h.offset, f"member {key!r}")
            pos = 0
            while pos < h.nbytes:
                chunk = f.read(min(_CHUNK, h.nbytes - pos))
                if not chunk:
                    raise BadArchive(f"member {key!r} is truncated (truncated or corrupted?)")
                flat[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
                digest.update(chunk)
                pos += len(chunk)
            if f.read(1):                      # at the end zipfile has checked the CRC-32
                raise BadArchive(f"member {key!r} has trailing bytes")
        return out, digest.hexdigest()


def _parse_header(f, key):
    try:
        major, minor = npformat.read_magic(f)
    except ValueError:
        raise BadArchive(f"member {key!r} is not a .npy array (truncated or corrupted?)") from None
    if (major, minor) not in ((1, 0), (2, 0)):
        raise BadArchive(f"member {key!r}: unsupported .npy format version {major}.{minor}")
    fmt = "<H" if major == 1 else "<I"
    raw = _read_exact(f, struct.calcsize(fmt), f"member {key!r}")
    (hlen,) = struct.unpack(fmt, raw)
    if hlen > MAX_NPY_HEADER:
        raise BadArchive(f"member {key!r}: its .npy header claims {hlen} bytes (at most {MAX_NPY_HEADER})")
    text = _read_exact(f, hlen, f"member {key!r}")
    reader = npformat.read_array_header_1_0 if major == 1 else npformat.read_array_header_2_0
    try:
        shape, fortran_order, dtype = reader(io.BytesIO(raw + text), max_header_size=MAX_NPY_HEADER)
    except Exception as e:  # noqa: BLE001 - numpy's literal-only header parser: nothing was executed
        raise BadArchive(f"not a readable fastbp checkpoint (truncated or corrupted?): member {key!r} has an "
                         f"unreadable .npy header ({type(e).__name__}: {e})") from None
    if not isinstance(shape, tuple) or len(shape) > 64 or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadArchive(f"member {key!r}: invalid shape {shape!r} in its .npy header")
    if dtype.hasobject:
        raise BadArchive(f"not a readable fastbp checkpoint: member {key!r} holds pickled Python objects "
                         "(never loaded)")
    return Header(shape, dtype, bool(fortran_order), 8 + len(raw) + hlen)
