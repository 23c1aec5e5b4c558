"""Reading delimited text and .npz data files for :mod:`fastbp.data` (private).

pandas' ``read_csv`` reads the cells (as strings: the numbers are parsed
afterwards so that every bad cell can be named); this module decides the
header, resolves the label column and words the one-line errors, which name
the file, the 1-based line and the column.
"""
from __future__ import annotations

import csv
import os
import re
import zipfile

import numpy as np

_EXTRA = "install it with: pip install -e '.[examples]' in the fastbp clone"
#: cells read as a missing value (case-insensitive), as pandas' default NA strings
_NA = frozenset({"", "na", "n/a", "nan", "-nan", "null", "none", "#n/a", "<na>"})


class DataError(ValueError):
    """A data file or array that cannot be used for training (one-line message)."""


def _import(module, what):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what}, which is not installed; {_EXTRA}") from None


def _py(v):
    """A numpy scalar as the Python value (for messages); anything else as is."""
    return v.item() if isinstance(v, np.generic) else v


def _one_line(e):
    return " ".join(str(e).split()) or type(e).__name__


def _where(i, lines):
    return f"on line {int(lines[i])}" if lines is not None else f"at row {int(i)}"


def _to_numbers(text):
    """float64 of each string (NaN where it is not a number); pandas' parser."""
    pd = _import("pandas", "reading data files needs pandas")
    return np.asarray(pd.to_numeric(pd.Series(text, dtype=object), errors="coerce"), dtype=np.float64)


_strip = np.frompyfunc(lambda c: c.strip() if isinstance(c, str) else ("" if c is None else str(c).strip()),
                      1, 1)


def strip_cells(a):
    """Strings stripped of surrounding whitespace, as an object array (no fixed-width copy:
    one long cell must not widen every cell)."""
    a = np.asarray(a, dtype=object)
    return _strip(a).astype(object) if a.size else a


# ------------------------------------------------------------------ files
def _blank_start(path):
    """What is wrong when the file starts with a blank line (or one of spaces) before its content
    (pandas reads no columns, or one), else ''."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            first = fh.readline()
            rest = fh.read(1 << 16)
    except OSError:
        return ""
    if first.strip() == "" and rest.strip() != "":
        return "its first line is blank: remove the blank lines before the header or the first data row"
    return ""


def _check_path(path):
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a .npz or .csv file")
    if not os.path.isfile(path):
        # a named pipe or a device: read twice (the data, then its lines), a pipe would hang
        raise DataError(f"{path}: not a regular file (a pipe or a device); write the data to a file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".csv", ".tsv", ".txt"):
        raise DataError(f"{path}: unknown file type {ext or '(no extension)'!r}, expected .npz or .csv")
    if ext == ".txt":
        raise DataError(f"{path}: unknown file type '.txt', expected .npz or .csv (rename a "
                        "delimited text file to .csv and pass --delimiter)")
    return path, ext


def _delimiter(delimiter, ext):
    if delimiter is None:
        return "\t" if ext == ".tsv" else ","
    if not isinstance(delimiter, str):
        raise TypeError(f"delimiter must be a str, got {type(delimiter).__name__}")
    d = {"tab": "\t", "\\t": "\t", "space": " "}.get(delimiter, delimiter)
    if len(d) != 1 or d in "\"\r\n" or d.isalnum() or d in ".-+":
        raise DataError(f"delimiter must be one character other than a letter, digit, sign, point, "
                        f"quote or newline (or 'tab'), got {delimiter!r}")
    return d


def _load_npz(path, need_y):
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
            if magic == b"\x93NUMPY":         # np.load would return the array, not an archive
                raise DataError(f"{path}: not an .npz archive (a single .npy array?): save X and y "
                                "with numpy.savez")
            if not magic.startswith(b"PK"):     # np.load would try it as a pickle and say so
                raise DataError(f"{path}: not an .npz archive (not a zip file; is it text or another "
                                "format?): save X and y with numpy.savez")
        with np.load(path, allow_pickle=False) as f:
            names = set(f.files)
            missing = [k for k in (("X", "y") if need_y else ("X",)) if k not in names]
            if missing:
                have = ", ".join(sorted(names)) or "none"
                raise DataError(f"{path}: .npz file must contain arrays {' and '.join(map(repr, missing))} "
                                f"(missing {', '.join(missing)}; found {have})")
            X = f["X"]
            y = f["y"] if "y" in names else None
            fn = f["feature_names"] if "feature_names" in names else None
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({_one_line(e)})") from None
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must hold numbers, got dtype {X.dtype}")
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim > 2:
        X = X.reshape(X.shape[0], -1)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{path}: X must be a non-empty 2-D array (n_samples, n_features), got shape {X.shape}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if not np.all(np.isfinite(X)):
        bad = np.argwhere(~np.isfinite(X))[0]
        raise DataError(f"{path}: X contains NaN or infinite values (first at row {bad[0]}, column {bad[1]})")
    if fn is not None:
        if fn.dtype.kind != "U" or fn.shape != (X.shape[1],):
            raise DataError(f"{path}: feature_names must be {X.shape[1]} strings, got dtype {fn.dtype} "
                            f"and shape {fn.shape}")
        fn = [str(s) for s in fn]
        twice = _first_repeat(fn)
        if twice is not None:
            raise DataError(f"{path}: feature_names names {twice!r} twice; feature names must differ")
    return X, y, fn


def _first_repeat(names):
    """The first name that occurs twice in ``names``, or None."""
    seen = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


class _Table:
    """The cells of a CSV file (strings, stripped), their numbers and its header."""

    def __init__(self, path, sep, header, label_column, names_hint):
        pd = _import("pandas", "reading CSV files needs pandas")
        self.path, self.sep = path, sep
        try:
            df = pd.read_csv(path, sep=sep, header=None, dtype=str, keep_default_na=False,
                             na_filter=False, skip_blank_lines=False, encoding="utf-8-sig",
                             engine="c", quotechar='"')
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a text CSV file (cannot decode it as UTF-8)") from None
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: {_blank_start(path) or 'the CSV file is empty'}") from None
        except pd.errors.ParserError as e:
            if _blank_start(path):
                raise DataError(f"{path}: {_blank_start(path)}") from None
            m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
            if m:
                raise DataError(f"{path}: line {m.group(2)} has {m.group(3)} columns, expected "
                                f"{m.group(1)} (as on the first line)") from None
            raise DataError(f"{path}: malformed CSV ({_one_line(e)})") from None
        cells = df.to_numpy(dtype=object)
        cells = strip_cells(cells)
        if cells.shape[1] == 1 and cells[0, 0] == "" and _blank_start(path):
            # a line of spaces first: pandas takes it for a one-column header row
            raise DataError(f"{path}: {_blank_start(path)}")
        self._lines = None
        empty = ~(cells != "").any(axis=1)
        if empty.any() and cells.shape[1] > 1:
            # blank lines (and lines of spaces) are skipped; a record of empty fields (',,') is a
            # row of missing values, kept so that reading it names its line (dropping it would
            # shift every later prediction against its input row)
            counts = self._records()[1]
            if counts.size == cells.shape[0]:          # csv and pandas agree on the records
                empty &= counts <= 1
        keep = np.flatnonzero(~empty)
        if keep.size == 0:
            raise DataError(f"{path}: the CSV file is empty")
        self.rec = keep
        cells = cells[keep]
        # rows ending in the delimiter ("1,2,3,0,"): pandas reads an extra, empty last column;
        # an entirely empty trailing column (no header name, no value) is no column at all
        while cells.shape[1] > 1 and not (cells[:, -1] != "").any():
            cells = cells[:, :-1]
        self.cells = cells
        self.width = self.cells.shape[1]
        self.num = np.empty(self.cells.shape, dtype=np.float64)
        for j in range(self.width):
            self.num[:, j] = _to_numbers(self.cells[:, j])
        self.header_note = None
        self._from_cells = False        # set by _decide_header: decided from the cells alone
        self._numbers_note = None       # set by _decide_header: a first row of numbers only, why
        self.has_header = self._decide_header(header, label_column, names_hint)
        row = self.sep.join(str(c) for c in self.cells[0])
        row = row if len(row) <= 60 else row[:57] + "..."
        if self.has_header and self._from_cells and np.isfinite(self.num[0]).any():
            # decided from the cells, on a first row that holds numbers: it may be a data row
            # with a typo ('?,0.7580,cat'), dropped as a header; say which line was taken
            self.header_note = (f"{path}: line {int(self.lines[0])} ({row!r}) was taken as the header "
                                "(a cell that is not a number above a column of numbers); if it is a "
                                "data row, pass --no-header")
        elif header is None and self._numbers_note is not None:
            self.header_note = (f"{path}: line {int(self.lines[0])} ({row!r}) was "
                                f"{'taken as the header' if self.has_header else 'read as data'}: "
                                f"{self._numbers_note}; if it is "
                                f"{'a data row, pass --no-header' if self.has_header else 'the header, pass --header'}")
        if self.has_header:
            self.names = [str(c) for c in self.cells[0]]
            self.cells, self.num, self.rec = self.cells[1:], self.num[1:], self.rec[1:]
            if self.cells.shape[0] == 0:
                raise DataError(f"{path}: the CSV file has a header but no data rows (if its one line "
                                "is a data row, pass --no-header)")
        else:
            self.names = None

    def _decide_header(self, forced, label_column, names_hint):
        if forced is not None:
            return bool(forced)
        row0 = [str(c) for c in self.cells[0]]
        if isinstance(label_column, str) and label_column in row0 and _as_int(label_column) is None:
            return True
        numbers = bool(np.isfinite(self.num[0]).all())
        if names_hint and set(names_hint) <= set(_column_names(row0)):
            if not numbers:
                return True
            # numbers that are the model's (numeric) feature names: a header when they list them
            # in the model's order (pandas' 0,1,2,...), a data row otherwise (counts '2,0,1')
            in_order = [c for c in _column_names(row0) if c in set(names_hint)] == list(names_hint)
            self._numbers_note = "numbers only, which are the model's feature names" + (
                "" if in_order else " in another order")
            return in_order
        if numbers and self.width > 1 and row0 == [str(j) for j in range(self.width)]:
            self._numbers_note = f"0 to {self.width - 1}, the header pandas writes by default"
        body = self.cells[1:]
        if body.shape[0] == 0:      # a lone line of words (no number) is a header without data
            return not np.isfinite(self.num[0]).any() and any(c.lower() not in _NA for c in row0)
        for j, c in enumerate(row0):
            if c.lower() in _NA or not np.isnan(self.num[0, j]):
                continue
            filled = body[:, j] != ""
            numbers = np.count_nonzero(filled & ~np.isnan(self.num[1:, j]))
            if numbers and 2 * numbers > np.count_nonzero(filled):
                self._from_cells = True
                return True   # a word above a column of numbers: a header
        return False

    # ------------------------------------------------------------ diagnostics
    def _records(self):
        """(first line, field count) of every CSV record (the error path only)."""
        if self._lines is None:
            starts, counts, end = [], [], 0
            with open(self.path, newline="", encoding="utf-8-sig") as fh:
                r = csv.reader(fh, delimiter=self.sep, quotechar='"')
                for row in r:
                    starts.append(end + 1)
                    counts.append(len(row))
                    end = r.line_num
            self._lines = (np.asarray(starts, dtype=np.int64), np.asarray(counts, dtype=np.int64))
        return self._lines

    @property
    def lines(self):
        starts = self._records()[0]
        if starts.size <= self.rec.max():        # csv and pandas disagree: record numbers
            return self.rec + 1
        return starts[self.rec]

    def column(self, j):
        if self.names is not None and self.names[j] != "":
            return f"column {self.names[j]!r}"
        return f"column {j}"

    def _short(self, i):
        """A message if data row ``i`` has fewer fields than the file's width, else None."""
        starts, counts = self._records()
        r = self.rec[i]
        if r < counts.size and counts[r] < self.width:
            return (f"{self.path}: line {starts[r]} has {counts[r]} columns, expected {self.width} "
                    "(as on the first line)")
        return None

    def features(self, cols):
        X = np.ascontiguousarray(self.num[:, cols])
        bad = ~np.isfinite(X)
        if bad.any():
            i, k = (int(v) for v in np.argwhere(bad)[0])
            j = cols[k]
            cell = str(self.cells[i, j])
            line = int(self.lines[i])
            if self._short(i):          # a short row: its cells moved left, say so
                raise DataError(self._short(i))
            where = f"{self.path}: line {line}, {self.column(j)}"
            if cell.lower() in _NA:
                raise DataError(f"{where}: missing value{'' if cell == '' else f' ({cell!r})'}")
            if np.isnan(X[i, k]):
                raise DataError(f"{where}: non-numeric feature value {cell!r}")
            raise DataError(f"{where}: feature value {cell!r} is not a finite float64 number")
        return X

    def labels(self, j):
        lab = self.cells[:, j].copy()
        empty = np.flatnonzero(lab == "")
        if empty.size:
            i = int(empty[0])
            if self._short(i):
                raise DataError(self._short(i))
            raise DataError(f"{self.path}: line {int(self.lines[i])}: empty label in {self.column(j)}")
        # a column of numbers with 'NA' (or 'nan', 'null', ...) cells: those are missing labels,
        # not a class named 'NA' (a column of words may have a class 'NA' or 'None')
        na = np.flatnonzero([str(c).lower() in _NA for c in lab])
        if na.size and na.size < lab.size and not np.isnan(np.delete(self.num[:, j], na)).any():
            i = int(na[0])
            raise DataError(f"{self.path}: line {int(self.lines[i])}: missing label ({str(lab[i])!r}) "
                            f"in {self.column(j)}")
        return lab

    def delimiter_hint(self):
        if self.width > 1:
            return ""
        for d in (";", "\t", "|", ","):
            if d != self.sep and any(d in str(c) for c in self.cells[:5, 0]):
                return f" (is the delimiter {d!r}? pass --delimiter {'tab' if d == chr(9) else repr(d)})"
        return ""


def _as_int(s):
    if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
        return int(s)
    if isinstance(s, str) and re.fullmatch(r"\s*[-+]?\d+\s*", s):
        return int(s)
    return None


def _resolve_label(label_column, names, width, path):
    if label_column is None:
        return width - 1
    if not isinstance(label_column, (str, int, np.integer)) or isinstance(label_column, bool):
        raise TypeError(f"label_column must be a column name or 0-based index, got {type(label_column).__name__}")
    if isinstance(label_column, str) and names is not None and label_column in names:
        if names.count(label_column) > 1:
            raise DataError(f"{path}: several columns are named {label_column!r}; give the label "
                            "column's 0-based index")
        return names.index(label_column)
    idx = _as_int(label_column)
    if idx is not None:
        if not -width <= idx < width:
            raise DataError(f"{path}: label column {idx} is out of range: the file has {width} "
                            f"columns (0..{width - 1})")
        return idx % width
    if names is None:
        raise DataError(f"{path}: no column named {label_column!r}: the file has no header row "
                        "(give the label column's 0-based index, or --header)")
    raise DataError(f"{path}: no column named {label_column!r} (columns: {', '.join(names)})")


def _column_names(names):
    """A header's column names, an empty one named ``column j`` (its 0-based index): the names a
    model is trained with and matched by, the same on both sides."""
    if names is None:
        return None
    return [n if n != "" else f"column {j}" for j, n in enumerate(names)]


def _feature_names(names, cols, path):
    if names is None:
        return None
    names = _column_names(names)
    fn = [names[j] for j in cols]
    twice = _first_repeat(fn)
    if twice is not None:
        raise DataError(f"{path}: two feature columns are named {twice!r}; column names must differ")
    return fn


