"""Data-input layer: every reader, every rejection reason, every file-level error message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data.readers import (
    SUPPORTED_FORMATS,
    detect_format,
    infer_label_names,
    load_classification,
    read_records,
)
from tuneforge.data.rejects import MAX_RAW_CHARS, RejectedRow, write_rejected
from tuneforge.errors import DataError, TuneforgeError

from tests.conftest import DATA

SST2_DEV = DATA / "sst2" / "dev.tsv"
POS_NEG = ["negative", "positive"]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def load(path: Path, label_names=POS_NEG, text="text", label="label", **kw):
    return load_classification(
        path, text_column=text, label_column=label, label_names=label_names, **kw
    )


def only_reject(rows):
    assert len(rows.rejected) == 1, rows.rejected
    return rows.rejected[0]


# ------------------------------------------------------------------------------- detect_format


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_detect_format_from_suffix(fmt):
    assert detect_format(Path(f"data/train.{fmt}")) == fmt
    assert detect_format(Path(f"data/TRAIN.{fmt.upper()}")) == fmt


def test_detect_format_explicit_wins_over_suffix():
    assert detect_format(Path("train.txt"), "TSV") == "tsv"
    assert detect_format(Path("train.csv"), ".jsonl") == "jsonl"


def test_detect_format_unknown_suffix_names_it_and_the_supported_formats():
    with pytest.raises(DataError) as err:
        detect_format(Path("train.xlsx"))
    assert "'.xlsx'" in str(err.value)
    assert "csv, tsv, jsonl, json, parquet" in str(err.value)


def test_detect_format_unknown_explicit_format():
    with pytest.raises(DataError, match=r"unknown data format 'xml' \(supported: csv, tsv"):
        detect_format(Path("train.csv"), "xml")


# ------------------------------------------------------------------------ file-level DataErrors


def test_data_error_is_a_user_facing_error():
    assert issubclass(DataError, TuneforgeError)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError) as err:
        read_records(missing)  # raised at the call, not on first next()
    assert str(err.value) == f"data file not found: {missing}"


def test_directory_is_rejected(tmp_path):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="is a directory"):
        load(folder)


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_zero_byte_file_has_no_rows(tmp_path, fmt):
    path = write(tmp_path, f"empty.{fmt}", b"")
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == f"data file has no rows: {path} is empty (0 bytes)"


@pytest.mark.parametrize(
    "name, content",
    [
        ("header.csv", "text,label\n"),
        ("header.tsv", "text\tlabel\n\n"),
        ("blank.jsonl", "\n  \n"),
        ("empty.json", " [ ] \n"),
    ],
)
def test_file_without_records_has_no_rows(tmp_path, name, content):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match="data file has no rows: .* contains no records"):
        list(read_records(path))


def test_missing_column_in_header_names_it_and_available_columns(tmp_path):
    path = write(tmp_path, "train.csv", "sentence,label\nhello,positive\n")
    with pytest.raises(DataError) as err:
        load(path)
    message = str(err.value)
    assert "missing column 'text'" in message
    assert "(available columns: sentence, label)" in message


def test_missing_label_column_in_every_jsonl_record_is_a_data_error(tmp_path):
    path = write(tmp_path, "train.jsonl", '{"text": "a", "y": 1}\n{"text": "b", "y": 0}\n')
    with pytest.raises(DataError, match=r"missing column 'label' \(available columns: text, y\)"):
        load(path)


def test_all_rows_rejected_is_a_data_error_quoting_the_first_reason(tmp_path):
    path = write(tmp_path, "train.csv", "text,label\na,neutral\nb,meh\n")
    with pytest.raises(DataError) as err:
        load(path)
    assert "all 2 records were rejected" in str(err.value)
    assert "line 2: unknown label 'neutral'" in str(err.value)


# -------------------------------------------------------------------------------------- CSV/TSV


def test_csv_wrong_field_count_rejected_with_line_number(tmp_path):
    content = 'text,label\n"multi\nline, quoted",positive\ntoo,many,fields\nfine,negative\n'
    path = write(tmp_path, "train.csv", content)
    rows = load(path)
    reject = only_reject(rows)
    assert reject.reason == "wrong number of fields: expected 2, got 3"
    assert reject.line == 4  # the quoted record before it spans lines 2-3
    assert reject.raw == "too,many,fields"
    assert reject.file == str(path)
    assert rows.texts == ["multi\nline, quoted", "fine"]
    assert rows.lines == [2, 5]
    assert rows.labels == [1, 0]
    assert rows.total == 3


@pytest.mark.parametrize("name, sep", [("train.csv", ","), ("train.tsv", "\t")])
def test_one_non_utf8_byte_rejects_only_its_row(tmp_path, name, sep):
    content = (
        f"text{sep}label\n".encode()
        + f"good one{sep}positive\n".encode()
        + f"caf\xe9 latin-1{sep}negative\n".encode("latin-1")
        + f"good two{sep}negative\n".encode()
    )
    rows = load(write(tmp_path, name, content))
    reject = only_reject(rows)
    assert reject.reason == "undecodable bytes (not valid UTF-8)"
    assert reject.line == 3
    assert reject.raw == f"caf\ufffd latin-1{sep}negative"
    assert rows.texts == ["good one", "good two"]
    assert rows.lines == [2, 4]


def test_tsv_with_unquoted_quote_characters(tmp_path):
    content = (
        "sentence\tlabel\n"
        'the film \'s " twist " is no twist at all . \t0\n'
        '"starts with a quote\t1\n'
        "it 's a charming and often affecting journey . \t1\n"
    )
    rows = load(write(tmp_path, "dev.tsv", content), label_names=None, text="sentence")
    assert rows.rejected == []
    assert rows.texts[1] == '"starts with a quote'
    assert rows.texts[0] == 'the film \'s " twist " is no twist at all . '
    assert rows.labels == [0, 1, 1]
    assert rows.label_names == ["0", "1"]
    assert rows.lines == [2, 3, 4]


def test_csv_bom_crlf_blank_lines_and_spaced_header(tmp_path):
    content = "\ufefftext, label\r\n\r\nhello,positive\r\nbye,negative\r\n".encode()
    rows = load(write(tmp_path, "train.csv", content))
    assert rows.texts == ["hello", "bye"]
    assert rows.lines == [3, 4]


def test_csv_duplicate_header_column(tmp_path):
    path = write(tmp_path, "train.csv", "text,label,text\na,positive,b\n")
    with pytest.raises(DataError, match="duplicate column name"):
        load(path)


# ----------------------------------------------------------------------------------------- JSONL


def test_truncated_jsonl_line_rejected_as_malformed(tmp_path):
    content = (
        '{"text": "great", "label": "positive"}\n'
        "\n"
        '{"text": "awful", "label": "negative"}\n'
        '{"text": "cut off mid-wri\n'
    )
    rows = load(write(tmp_path, "train.jsonl", content))
    reject = only_reject(rows)
    assert reject.line == 4  # physical line; the blank line 2 still counts
    assert reject.reason.startswith("malformed JSON: ")
    assert reject.raw == '{"text": "cut off mid-wri'
    assert rows.lines == [1, 3]
    assert rows.total == 3


def test_jsonl_non_object_and_bad_utf8_and_missing_column(tmp_path):
    content = (
        b'[1, 2]\n'
        b'{"text": "caf\xe9", "label": "positive"}\n'
        b'{"text": "no label here"}\n'
        b'{"text": "ok", "label": "positive"}\n'
    )
    rows = load(write(tmp_path, "train.jsonl", content))
    reasons = [(r.line, r.reason) for r in rows.rejected]
    assert reasons == [
        (1, "not a JSON object (got array)"),
        (2, "undecodable bytes (not valid UTF-8)"),
        (3, "missing column 'label'"),
    ]
    assert rows.texts == ["ok"] and rows.lines == [4]


# ------------------------------------------------------------------------------------------ JSON


def test_json_array_records_carry_their_start_line(tmp_path):
    content = (
        "[\n"
        '  {"text": "one", "label": 1},\n'
        '  {"text": "two",\n'
        '   "label": 0},\n'
        '  "not an object"\n'
        "]\n"
    )
    triples = list(read_records(write(tmp_path, "train.json", content)))
    assert [(line, rec) for line, rec, _ in triples[:2]] == [
        (2, {"text": "one", "label": 1}),
        (3, {"text": "two", "label": 0}),
    ]
    line, record, reject = triples[2]
    assert (line, record, reject.reason) == (5, None, "not a JSON object (got string)")


def test_json_parse_failure_is_a_data_error_with_position(tmp_path):
    content = '[\n  {"text": "one", "label": 1},\n  {"text": "two" "label": 0}\n]\n'
    with pytest.raises(DataError, match=r"malformed JSON at line 3 column 18: Expecting ','"):
        list(read_records(write(tmp_path, "train.json", content)))


def test_json_object_per_line_hints_at_jsonl(tmp_path):
    path = write(tmp_path, "train.json", '{"text": "a", "label": 1}\n')
    with pytest.raises(DataError, match="top-level JSON array.*use format 'jsonl'"):
        list(read_records(path))


# --------------------------------------------------------------------------------------- Parquet


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {"text": ["good", "bad", None, "fine"], "label": ["positive", "negative", "positive", "x"]}
    )
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    rows = load(path)
    assert rows.texts == ["good", "bad"]
    assert rows.labels == [1, 0]
    assert rows.lines == [1, 2]
    assert [(r.line, r.reason) for r in rows.rejected] == [
        (3, "empty text"),
        (4, "unknown label 'x' (allowed: negative, positive)"),
    ]
    assert json.loads(rows.rejected[1].raw) == {"text": "fine", "label": "x"}


def test_not_a_parquet_file(tmp_path):
    path = write(tmp_path, "train.parquet", "text,label\n")
    with pytest.raises(DataError, match="cannot read parquet file"):
        load(path)


# ---------------------------------------------------------------------------------------- labels


def test_row_checks_with_exact_reasons(tmp_path):
    content = (
        "text,label\n"
        "kept,positive\n"
        "   ,positive\n"
        "no label,\n"
        "odd,neutral\n"
        "by index,0\n"
    )
    rows = load(write(tmp_path, "train.csv", content))
    assert [(r.line, r.reason) for r in rows.rejected] == [
        (3, "empty text"),
        (4, "empty label"),
        (5, "unknown label 'neutral' (allowed: negative, positive)"),
    ]
    assert rows.texts == ["kept", "by index"]
    assert rows.labels == [1, 0]
    assert rows.label_names == POS_NEG
    assert rows.total == 5


def test_integer_labels_map_to_word_names_by_index(tmp_path):
    content = (
        '{"text": "a", "label": 1}\n'
        '{"text": "b", "label": " 0 "}\n'
        '{"text": "c", "label": 2}\n'
    )
    rows = load(write(tmp_path, "train.jsonl", content))
    assert rows.labels == [1, 0]
    assert only_reject(rows).reason == "unknown label '2' (allowed: negative, positive)"


def test_integer_names_match_by_value_not_index(tmp_path):
    # Star ratings 1..5: label 0 must not silently become "1" (index 0).
    content = "text,label\na,5\nb,1\nc,0\nd,3.0\n"
    rows = load(write(tmp_path, "train.csv", content), label_names=["1", "2", "3", "4", "5"])
    assert rows.labels == [4, 0]
    assert [r.reason for r in rows.rejected] == [
        "unknown label '0' (allowed: 1, 2, 3, 4, 5)",
        "unknown label '3.0' (allowed: 1, 2, 3, 4, 5)",  # a CSV string is not a float
    ]


def test_inferred_label_names():
    assert infer_label_names([1, 0, "2", 1.0, None, ""]) == ["0", "1", "2"]
    assert infer_label_names(["5", 1, 3]) == ["1", "3", "5"]
    assert infer_label_names(["pos", " neg ", "pos", 0]) == ["0", "neg", "pos"]
    assert infer_label_names([]) == []


def test_inferred_string_labels_are_sorted(tmp_path):
    content = "text,label\na,spam\nb,ham\nc,spam\n"
    rows = load(write(tmp_path, "train.csv", content), label_names=None)
    assert rows.label_names == ["ham", "spam"]
    assert rows.labels == [1, 0, 1]


# ------------------------------------------------------------------------------------- rejects


def test_write_rejected_is_valid_jsonl(tmp_path):
    rows = [
        RejectedRow("a.csv", 3, "empty text", " ,positive"),
        RejectedRow("a.csv", 7, "undecodable bytes (not valid UTF-8)", "caf\ufffd"),
    ]
    out = tmp_path / "reports" / "rejected.jsonl"
    assert write_rejected(out, rows) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"file": "a.csv", "line": 3, "reason": "empty text", "raw": " ,positive"},
        {"file": "a.csv", "line": 7, "reason": rows[1].reason, "raw": "caf\ufffd"},
    ]


def test_write_rejected_always_creates_the_file(tmp_path):
    out = tmp_path / "rejected.jsonl"
    assert write_rejected(out, []) == 0
    assert out.read_bytes() == b""


def test_rejected_raw_is_truncated():
    row = RejectedRow("a.csv", 1, "wrong number of fields: expected 2, got 900", "x," * 1000)
    assert len(row.raw) == MAX_RAW_CHARS


# ---------------------------------------------------------------------------------- real SST-2


def test_real_sst2_dev_parses_every_row():
    rows = load(SST2_DEV, label_names=None, text="sentence")
    assert rows.total == 872
    assert rows.rejected == []
    assert len(rows.texts) == 872
    assert rows.label_names == ["0", "1"]
    assert rows.lines[0] == 2 and rows.lines[-1] == 873
