"""fastbp.data: CSV/.npz reading on pandas, header decision, errors naming line and column,
scikit-learn splits, labels and overflow-free scaling (issue 16 part 4, issue 17 defects 6 and 8)."""
import os
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from fastbp import data  # noqa: E402
from fastbp.data import DataError  # noqa: E402


def write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(p)


BODY = "1,2,0\n3,4,1\n5,6,0\n7,8,1\n"


# ------------------------------------------------------------------ issue 17, defect 6
def test_empty_label_is_an_error_naming_the_line(tmp_path):
    p = write(tmp_path, "d.csv", "1,2,0\n3,4,\n5,6,1\n7,8,0\n")
    with pytest.raises(DataError, match=r"line 2: empty label in column 2"):
        data.read_dataset(p)
    p = write(tmp_path, "h.csv", "a,b,label\n1,2,0\n3,4,1\n5,6, \n")
    with pytest.raises(DataError, match=r"line 4: empty label in column 'label'"):
        data.read_dataset(p)
    # and never a class named ''
    with pytest.raises(DataError, match="empty label"):
        data.encode_labels(np.array(["a", "", "b"]))


def test_byte_order_mark_is_not_a_header(tmp_path):
    p = write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + BODY.encode())
    ds = data.read_dataset(p)
    assert not ds.has_header and ds.X.shape == (4, 2)
    np.testing.assert_array_equal(ds.X[0], [1, 2])
    # a BOM before a real header: the header's first name has no BOM
    p = write(tmp_path, "bomh.csv", b"\xef\xbb\xbfa,b,label\n" + BODY.encode())
    ds = data.read_dataset(p)
    assert ds.has_header and ds.feature_names == ["a", "b"] and ds.X.shape == (4, 2)


@pytest.mark.parametrize("line", [1, 2])
def test_empty_cell_is_the_same_error_on_the_first_line_as_on_the_second(tmp_path, line):
    rows = BODY.splitlines()
    rows[line - 1] = "1,,0" if line == 1 else "3,,1"
    p = write(tmp_path, "e.csv", "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"line {line}, column 1: missing value"):
        data.read_dataset(p)


def test_numeric_header_is_a_header(tmp_path):
    p = write(tmp_path, "n.csv", "0,1,2,label\n1,2,3,0\n4,5,6,1\n7,8,9,0\n1,1,1,1\n")
    ds = data.read_dataset(p)
    assert ds.has_header
    assert ds.feature_names == ["0", "1", "2"] and ds.label_name == "label"
    assert ds.X.shape == (4, 3)
    X, y, classes = data.load_file(p)
    np.testing.assert_array_equal(classes, [0, 1])          # no class named 'label'


def test_numeric_header_above_string_labels(tmp_path):
    p = write(tmp_path, "s.csv", "0,1,2,label\n1,2,3,cat\n4,5,6,dog\n7,8,9,cat\n1,1,1,dog\n")
    # undecidable from the cells (every column of features is numbers, the label column words):
    # the first line is data, and its one-off class is an error that suggests --header
    ds = data.read_dataset(p)
    y, classes = data.encode_labels(ds.labels, ds.path, ds.lines)
    with pytest.raises(DataError, match=r"single sample \(on line 1\).*--header"):
        data.stratified_split(y, 0.5, lines=ds.lines, classes=classes)
    for kw in ({"header": True}, {"label_column": "label"}):
        ds = data.read_dataset(p, **kw)
        assert ds.has_header and ds.label_name == "label" and ds.X.shape == (4, 3)


def test_header_decision(tmp_path):
    # a word above a column of numbers: a header
    assert data.read_dataset(write(tmp_path, "a.csv", "x,y,label\n" + BODY)).has_header
    # all numbers: data
    assert not data.read_dataset(write(tmp_path, "b.csv", BODY)).has_header
    # forced either way
    with pytest.raises(DataError, match=r"line 1, column 0: non-numeric feature value 'x'"):
        data.read_dataset(write(tmp_path, "c.csv", "x,y,label\n" + BODY), header=False)
    ds = data.read_dataset(write(tmp_path, "d.csv", BODY), header=True)
    assert ds.feature_names == ["1", "2"] and ds.X.shape == (3, 2)
    # a header and a typo further down: the typo is reported, not the header
    with pytest.raises(DataError, match=r"line 4, column 'y': non-numeric feature value 'oops'"):
        data.read_dataset(write(tmp_path, "e.csv", "x,y,label\n1,2,0\n3,4,1\n5,oops,0\n7,8,1\n"))
    # a lone line of words is a header without data
    with pytest.raises(DataError, match="no data rows"):
        data.read_dataset(write(tmp_path, "f.csv", "x,y,label\n"))


# ------------------------------------------------------------------ errors name line and column
def test_missing_and_bad_values_name_line_and_column(tmp_path):
    p = write(tmp_path, "m.csv", "a,b,label\n1,2,0\n\n3,NA,1\n")
    with pytest.raises(DataError, match=r"m.csv: line 4, column 'b': missing value \('NA'\)"):
        data.read_dataset(p)
    p = write(tmp_path, "i.csv", "1,2,0\n3,inf,1\n")
    with pytest.raises(DataError, match=r"line 2, column 1: feature value 'inf' is not a finite"):
        data.read_dataset(p)
    p = write(tmp_path, "o.csv", "1,2,0\n3,1e999,1\n")
    with pytest.raises(DataError, match=r"line 2, column 1: .*not a finite"):
        data.read_dataset(p)


def test_line_numbers_count_blank_lines_and_quoted_newlines(tmp_path):
    p = write(tmp_path, "q.csv", 'a,b,label\n"1\n",2,0\n\n3,4,1\n5,x,0\n')
    with pytest.raises(DataError, match=r"line 6, column 'b'"):
        data.read_dataset(p)


def test_short_and_long_rows(tmp_path):
    with pytest.raises(DataError, match=r"line 2 has 2 columns, expected 3"):
        data.read_dataset(write(tmp_path, "s.csv", "1,2,0\n3,4\n5,6,1\n"))
    with pytest.raises(DataError, match=r"line 2 has 4 columns, expected 3"):
        data.read_dataset(write(tmp_path, "l.csv", "1,2,0\n3,4,5,1\n5,6,1\n"))


def test_delimiters(tmp_path):
    semi = "a;b;label\n1;2;0\n3;4;1\n"
    with pytest.raises(DataError, match=r"is the delimiter ';'\? pass --delimiter ';'"):
        data.read_dataset(write(tmp_path, "s.csv", semi))
    ds = data.read_dataset(write(tmp_path, "s2.csv", semi), delimiter=";")
    assert ds.feature_names == ["a", "b"] and ds.X.shape == (2, 2)
    ds = data.read_dataset(write(tmp_path, "t.tsv", semi.replace(";", "\t")))
    assert ds.feature_names == ["a", "b"]
    ds = data.read_dataset(write(tmp_path, "t.csv", semi.replace(";", "\t")), delimiter="tab")
    assert ds.feature_names == ["a", "b"]
    with pytest.raises(DataError, match="delimiter"):
        data.read_dataset(write(tmp_path, "u.csv", semi), delimiter="ab")


def test_label_column(tmp_path):
    p = write(tmp_path, "l.csv", "label,a,b\n0,1,2\n1,3,4\n0,5,6\n1,7,8\n")
    for col in ("label", 0, "0", -3):
        ds = data.read_dataset(p, label_column=col)
        assert ds.label_name == "label" and ds.label_index == 0 and ds.feature_names == ["a", "b"]
        np.testing.assert_array_equal(ds.X[:, 0], [1, 3, 5, 7])
    with pytest.raises(DataError, match=r"no column named 'price' \(columns: label, a, b\)"):
        data.read_dataset(p, label_column="price")
    with pytest.raises(DataError, match=r"label column 3 is out of range: the file has 3 columns"):
        data.read_dataset(p, label_column=3)
    with pytest.raises(DataError, match="no header row"):
        data.read_dataset(write(tmp_path, "n.csv", BODY), label_column="label")


def test_npz_rejects_csv_options(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, X=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="apply to CSV"):
        data.read_dataset(p, label_column=0)
    ds = data.read_dataset(p)
    assert ds.X.shape == (4, 2) and ds.feature_names is None


def test_without_pandas_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pandas.*pip install -e '\.\[examples\]' in the fastbp clone"):
        data.read_dataset(write(tmp_path, "d.csv", BODY))


# ------------------------------------------------------------------ labels, targets, splits
def test_encode_labels_numbers_and_strings():
    y, classes = data.encode_labels(np.array(["2", "10", "2"]))        # numbers in a CSV column
    np.testing.assert_array_equal(classes, [2, 10])
    assert classes.dtype == np.int64 and list(y) == [0, 1, 0]
    y, classes = data.encode_labels(np.array(["b", "a", " b "]))
    np.testing.assert_array_equal(classes, ["a", "b"])
    np.testing.assert_array_equal(y, [1, 0, 1])
    _, classes = data.encode_labels(np.array([1e20, 3.0]))            # integral, beyond int64 exactness
    assert classes.dtype == np.float64 and classes[1] == 1e20
    with pytest.raises(DataError, match=r"non-integer.*line 3"):
        data.encode_labels(np.array(["1", "2", "2.5"]), "f.csv", lines=np.array([1, 2, 3]))


def test_regression_targets():
    np.testing.assert_array_equal(data.regression_targets(np.array(["1.5", " -2", "3e2"])), [1.5, -2, 300])
    with pytest.raises(DataError, match=r"missing target on line 3"):
        data.regression_targets(np.array(["1", "2", "NA"]), "f.csv", np.array([1, 2, 3]))
    with pytest.raises(DataError, match=r"target 'cat' on line 2 is not a finite number"):
        data.regression_targets(np.array(["1", "cat"]), "f.csv", np.array([1, 2]))


def test_split_is_scikit_learns_stratified_split():
    from sklearn.model_selection import train_test_split
    y = np.repeat(np.arange(3), [20, 12, 8])
    tr, te = data.stratified_split(y, 0.25, seed=7)
    a, b = train_test_split(np.arange(40), test_size=0.25, random_state=7, stratify=y)
    np.testing.assert_array_equal(tr, np.sort(a))
    np.testing.assert_array_equal(te, np.sort(b))
    with pytest.raises(DataError, match="too small to split"):
        data.stratified_split(np.repeat(np.arange(5), 2), 0.2)


# ------------------------------------------------------------------ issue 17, defect 8: scaling
def test_scaling_features_near_1e300_neither_overflows_nor_zeroes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)) * np.array([1e300, 1.0, 1e-300])
    X[:, 0] += 1e300
    X[:5, 1] = 1.7e308          # near the float64 limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no RuntimeWarning
        s = data.Standardizer().fit(X)
        Z = s.transform(X, np.float32)
    assert np.all(np.isfinite(Z))
    assert np.all(Z.std(axis=0) > 0.9)           # no all-zero feature
    np.testing.assert_allclose(Z.astype(np.float64).mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.mean_[0], X[:, 0].mean(), rtol=1e-12)
    assert np.all(np.isfinite(s.scale_)) and np.all(s.scale_ > 0)


def test_non_finite_after_scaling_names_the_feature():
    s = data.Standardizer().fit(np.array([[0.0, 1.0], [1e-300, 2.0], [2e-300, 3.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"feature 'tiny' is not finite after scaling"):
            s.transform(np.array([[1e300, 1.0]]), np.float64, names=["tiny", "b"])
        with pytest.raises(DataError, match=r"feature 'tiny' is not finite after scaling"):
            s.transform(np.array([[1e-250, 1.0]]), np.float32, names=["tiny", "b"])


def test_scaling_matches_standard_scaler_on_ordinary_data():
    from sklearn.preprocessing import StandardScaler
    X = np.random.default_rng(1).normal(3.0, 2.0, size=(100, 4))
    s, sk = data.Standardizer().fit(X), StandardScaler().fit(X)
    np.testing.assert_allclose(s.mean_, sk.mean_, rtol=1e-14)
    np.testing.assert_allclose(s.scale_, sk.scale_, rtol=1e-14)
    np.testing.assert_allclose(s.transform(X), sk.transform(X), rtol=1e-12, atol=1e-14)


def test_a_near_constant_feature_is_constant_as_for_standard_scaler():
    """Values one ulp apart: StandardScaler's rule calls the feature constant (scale_ 1); fastbp
    fits on X / 2**k and gave 2**k (512 here)."""
    from sklearn.preprocessing import StandardScaler
    x = 1000.0
    X = np.array([[x, 1.0, 5e-300], [np.nextafter(x, 2e3), 2.0, 5e-300], [x, 3.0, np.nextafter(5e-300, 1)]])
    s, sk = data.Standardizer().fit(X), StandardScaler().fit(X)
    np.testing.assert_array_equal(s.scale_[[0, 2]], [1.0, 1.0])
    np.testing.assert_allclose(s.scale_, sk.scale_, rtol=1e-14)
    np.testing.assert_allclose(s.transform(X), sk.transform(X), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ data for a trained model
def test_read_features_matches_columns_by_name_or_count(tmp_path):
    names = ["a", "b", "c"]
    # by name: any order, the label column ignored
    p = write(tmp_path, "n.csv", "c,label,a,b\n3,x,1,2\n6,y,4,5\n")
    ds = data.read_features(p, 3, names, "label", 3)
    np.testing.assert_array_equal(ds.X, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(ds.labels, ["x", "y"])
    with pytest.raises(DataError, match=r"missing feature column\(s\) 'c'"):
        data.read_features(write(tmp_path, "m.csv", "a,b,label\n1,2,0\n"), 3, names, "label", 3)
    with pytest.raises(DataError, match=r"column\(s\) 'id' are not features"):
        data.read_features(write(tmp_path, "x.csv", "id,a,b,c\n1,1,2,3\n"), 3, names, "label", 3)
    # by count: no header
    ds = data.read_features(write(tmp_path, "c.csv", "1,2,3\n4,5,6\n"), 3, names, "label", 3)
    assert ds.labels is None and ds.X.shape == (2, 3)
    ds = data.read_features(write(tmp_path, "l.csv", "9,1,2,3\n8,4,5,6\n"), 3, None, None, 0)
    np.testing.assert_array_equal(ds.labels, ["9", "8"])
    np.testing.assert_array_equal(ds.X[:, 0], [1, 4])
    with pytest.raises(DataError, match=r"5 columns, the model expects 3 features"):
        data.read_features(write(tmp_path, "w.csv", "1,2,3,4,5\n"), 3)


# ------------------------------------------------------------------ review defects 5 and 6
def test_a_single_npy_array_named_npz_is_a_one_line_data_error(tmp_path, capsys):
    """np.load returns the array, which the reader used as an archive: a bare TypeError
    ("does not support the context manager protocol"), printed as such by the CLI."""
    p = tmp_path / "d.npz"
    with open(p, "wb") as f:
        np.save(f, np.zeros((4, 2)))
    for read in (data.load_file, lambda q: data.read_features(q, 2)):
        with pytest.raises(DataError, match=r"not an \.npz archive \(a single \.npy array\?\)"):
            read(p)
    from fastbp import cli
    capsys.readouterr()
    assert cli.main(["train", "--quiet", "--data", str(p)]) != 0
    err = capsys.readouterr().err
    assert "not an .npz archive (a single .npy array?)" in err and len(err.strip().splitlines()) == 1
    assert "context manager" not in err and "Traceback" not in err


def test_integer_labels_beyond_2_53_stay_distinct_classes(tmp_path):
    """They were parsed as float64: 9007199254740993 and 9007199254740992 became one class."""
    p = write(tmp_path, "big.csv", "x1,x2,label\n1,2,9007199254740993\n3,4,9007199254740992\n5,6,1\n"
                                   "7,8,-9223372036854775808\n")
    X, y, classes = data.load_file(p)
    assert classes.dtype == np.int64
    assert classes.tolist() == [-2**63, 1, 2**53, 2**53 + 1] and y.tolist() == [3, 2, 1, 0]
    y, classes = data.encode_labels(np.array(["+7", "-0", "0", "007", "7"]))       # integers as written
    assert classes.dtype == np.int64 and classes.tolist() == [0, 7] and y.tolist() == [1, 0, 0, 1, 1]
    y, classes = data.encode_labels(np.array(["1", "1.0", "2"]))                    # a float among them: as before
    assert classes.tolist() == [1, 2] and y.tolist() == [0, 0, 1]
    _, classes = data.encode_labels(np.array(["100000000000000000000", "3"]))      # beyond int64, exact in float64
    assert classes.dtype == np.float64 and classes.tolist() == [3.0, 1e20]
    with pytest.raises(DataError, match=r"f.csv: class label 100000000000000000001 on line 2 .*beyond int64"):
        data.encode_labels(np.array(["100000000000000000000", "100000000000000000001"]), "f.csv",
                           lines=np.array([1, 2]))


@pytest.mark.parametrize("cells, classes", [
    (["9007199254740993", "9007199254740992", "1.0"], [1, 2**53, 2**53 + 1]),
    (["9007199254740993.0", "9007199254740992", "1e3"], [1000, 2**53, 2**53 + 1]),
    (["-9223372036854775807", "-9223372036854775808", "2.0"], [-2**63, -2**63 + 1, 2]),
])
def test_integer_labels_beyond_2_53_stay_apart_beside_a_decimal(cells, classes):
    """One label written as a decimal ('1.0') sent the column through float64, where integers
    beyond 2**53 merged silently (two classes trained as one)."""
    y, got = data.encode_labels(np.array(cells * 2))
    assert got.dtype == np.int64 and got.tolist() == classes
    assert [got[k] for k in y[:3]] == [int(float(c)) if "e" in c else int(c.split(".")[0]) for c in cells]
    with pytest.raises(DataError, match="non-integer values"):
        data.encode_labels(np.array(cells + ["9007199254740993.5"]))
    with pytest.raises(DataError, match="beyond int64 that float64 cannot hold exactly"):
        data.encode_labels(np.array(["100000000000000000001.0", "100000000000000000000"]))


def test_a_first_row_of_numbers_that_are_the_models_feature_names(tmp_path):
    """A header-less file whose first row held the model's numeric feature names in another
    order ('2,0,1' of counts) was taken as the header: the row was dropped and the others read
    by name, permuted.  In the names' order (pandas' header '0,1,2') it is the header; either
    way a note says which and how to override."""
    names = ["0", "1", "2"]
    p = write(tmp_path, "counts.csv", "2,0,1\n4,0,0\n0,4,0\n")
    ds = data.read_features(p, 3, names)
    np.testing.assert_array_equal(ds.X, [[2, 0, 1], [4, 0, 0], [0, 4, 0]])
    assert "line 1 ('2,0,1') was read as data" in ds.header_note and "pass --header" in ds.header_note
    p = write(tmp_path, "pandas.csv", "0,1,2\n2,0,1\n4,0,0\n")
    ds = data.read_features(p, 3, names)
    np.testing.assert_array_equal(ds.X, [[2, 0, 1], [4, 0, 0]])
    assert "was taken as the header" in ds.header_note and "pass --no-header" in ds.header_note
    ds = data.read_features(p, 3, names, header=False)        # said: data
    assert ds.X.shape == (3, 3) and ds.header_note is None
    # a model without feature names: pandas' default header is read as data, with a note
    ds = data.read_features(p, 3)
    assert ds.X.shape == (3, 3) and "0 to 2, the header pandas writes by default" in ds.header_note


def test_a_model_without_a_label_name_takes_the_one_other_column_as_the_label(tmp_path):
    """An estimator's save knows its features' names but not its label's: the file's label
    column was 'not a feature of the model', in predict and evaluate alike."""
    p = write(tmp_path, "d.csv", "b,y,a\n1,cat,2\n3,dog,4\n")
    ds = data.read_features(p, 2, ["a", "b"])
    np.testing.assert_array_equal(ds.X, [[2, 1], [4, 3]])
    assert list(ds.labels) == ["cat", "dog"]
    p = write(tmp_path, "e.csv", "b,y,z,a\n1,cat,0,2\n")
    with pytest.raises(DataError, match=r"column\(s\) 'y', 'z' are not features of the model"):
        data.read_features(p, 2, ["a", "b"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_is_refused_not_read_until_it_hangs(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        data.read_dataset(str(fifo))
    with pytest.raises(DataError, match="not a regular file"):
        data.read_features(str(fifo), 3)


@pytest.mark.parametrize("first", ["\n", "   \n", "\r\n"])
def test_a_blank_first_line_is_named(tmp_path, first):
    """A blank first line made the file 'empty'; one of spaces gave 'line 2 has 3 columns,
    expected 1'."""
    p = write(tmp_path, "b.csv", first + "x1,x2,label\n" + BODY)
    with pytest.raises(DataError, match="its first line is blank: remove the blank lines"):
        data.read_dataset(p)
    with pytest.raises(DataError, match="the CSV file is empty"):
        data.read_dataset(write(tmp_path, "e.csv", "\n\n"))


def test_a_lone_line_with_numbers_is_a_data_row_and_a_lone_header_says_so(tmp_path):
    ds = data.read_features(write(tmp_path, "one.csv", "0.1,0.2,0.3,dog\n"), 3)
    np.testing.assert_array_equal(ds.X, [[0.1, 0.2, 0.3]])
    assert list(ds.labels) == ["dog"]
    with pytest.raises(DataError, match=r"a header but no data rows \(if its one line is a data row, "
                                        r"pass --no-header\)"):
        data.read_features(write(tmp_path, "h.csv", "a,b,c,label\n"), 3)


def test_a_label_named_as_a_feature_is_refused_at_training(tmp_path):
    """The model trained, then could not read its own training file (the header names a
    column twice), and read a feature named like the label as the labels in evaluate."""
    p = write(tmp_path, "d.csv", "a,label,label\n1,2,x\n3,4,y\n5,6,x\n")
    with pytest.raises(DataError, match="label column and a feature column are both named 'label'"):
        data.read_dataset(p, label_column=2)
