"""Bad input never produces a traceback and never loses a row silently.

Every case ends in exactly one of two ways: a ``DataError`` whose message names the file (and the
line or key, and how to fix it), or a ``RejectedRow`` with the exact reason, while the good rows
around it are still read. Where rows are rejected, good + rejected == records in the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data.readers import UNDECODABLE
from tuneforge.data.records import Row
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.sources import SourceConfig, iter_source
from tuneforge.errors import DataError

LATIN1_CAFE = "caf\xe9".encode("latin-1")  # b"caf\xe9": valid latin-1, invalid UTF-8


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read(path: Path, **kw) -> tuple[list[Row], list[RejectedRow]]:
    items = list(iter_source(SourceConfig(path=path, **kw)))
    rows = [i for i in items if isinstance(i, Row)]
    rejects = [i for i in items if isinstance(i, RejectedRow)]
    assert len(rows) + len(rejects) == len(items)
    return rows, rejects


def data_error(path: Path, **kw) -> str:
    with pytest.raises(DataError) as err:
        list(iter_source(SourceConfig(path=path, **kw)))
    return str(err.value)


# ------------------------------------------------------------------------------- broken records


def test_jsonl_truncated_last_line(tmp_path):
    lines = [json.dumps({"text": f"row {i}", "label": i % 2}) for i in range(3)] + ['{"text": "row 3", "lab']
    path = write(tmp_path, "d.jsonl", "\n".join(lines))  # no final newline: the write was cut off
    rows, rejects = read(path)
    assert [r.data["text"] for r in rows] == ["row 0", "row 1", "row 2"]
    assert [(r.file, r.line, r.reason, r.raw) for r in rejects] == [
        (str(path), 4, "malformed JSON: Unterminated string starting at (column 19)", '{"text": "row 3", "lab'),
    ]
    assert len(rows) + len(rejects) == len(lines)


def test_csv_row_with_wrong_column_count(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\ngood,1\nan extra,comma,0\nfine,0\n")
    rows, rejects = read(path)
    assert [(r.line, r.data["text"]) for r in rows] == [(2, "good"), (4, "fine")]
    assert [(r.line, r.reason, r.raw) for r in rejects] == [
        (3, "wrong number of fields: expected 2, got 3", "an extra,comma,0"),
    ]
    assert len(rows) + len(rejects) == 3


def test_json_syntax_error_is_a_data_error_with_its_position(tmp_path):
    path = write(tmp_path, "d.json", '[{"text": "a"},\n {"text": "b"\n]')
    assert data_error(path) == f"{path}: malformed JSON at line 3 column 1: Expecting ',' delimiter"


def test_conll_line_with_too_few_columns_rejects_its_sentence(tmp_path):
    path = write(tmp_path, "d.conll", "EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn\n\nok O\n")
    rows, rejects = read(path)
    assert [(r.line, r.data["tokens"]) for r in rows] == [(1, ["EU", "rejects"]), (7, ["ok"])]
    assert [(r.line, r.reason, r.raw) for r in rejects] == [
        (4, "line 5: too few columns: got 1, need separate token column 0 and tag column -1",
         "Peter B-PER\nBlackburn"),
    ]
    assert len(rows) + len(rejects) == 3  # sentences


def test_parallel_files_of_different_lengths(tmp_path):
    src = write(tmp_path, "d.en", "one\ntwo\nthree\nfour\n")
    tgt = write(tmp_path, "d.de", "eins\nzwei\n")
    rows, rejects = read(src, target_path=tgt)
    assert [r.data["target"] for r in rows] == ["eins", "zwei"]
    assert [(r.file, r.line, r.reason, r.raw) for r in rejects] == [
        (str(src), 3, "no matching line: d.en has 4 lines, d.de has 2 lines", "three"),
        (str(src), 4, "no matching line: d.en has 4 lines, d.de has 2 lines", "four"),
    ]
    assert len(rows) + len(rejects) == 4
    rows, rejects = read(tgt, target_path=src)  # the longer file on the other side
    assert [(r.file, r.line, r.reason) for r in rejects] == [
        (str(src), 3, "no matching line: d.de has 2 lines, d.en has 4 lines"),
        (str(src), 4, "no matching line: d.de has 2 lines, d.en has 4 lines"),
    ]


def test_parallel_line_empty_on_one_side(tmp_path):
    src = write(tmp_path, "d.en", "one\n\nthree\n")
    tgt = write(tmp_path, "d.de", "eins\nzwei\ndrei\n")
    rows, rejects = read(src, target_path=tgt)
    assert [r.line for r in rows] == [1, 3]
    assert [(r.file, r.line, r.reason) for r in rejects] == [
        (str(src), 2, "empty line in d.en (its translation is not empty)"),
    ]


# ---------------------------------------------------------------------------------- not UTF-8


def latin1_case(tmp_path: Path, fmt: str) -> tuple[dict, int, str]:
    """A file whose second record holds latin-1 bytes: (fields, its line, the expected raw)."""
    bad = LATIN1_CAFE
    if fmt == "csv":
        return {"path": write(tmp_path, "d.csv", b"text,label\nok,1\n" + bad + b",0\nfine,1\n")}, 3, "caf\ufffd,0"
    if fmt == "tsv":
        return {"path": write(tmp_path, "d.tsv", b"text\tlabel\nok\t1\n" + bad + b"\t0\nfine\t1\n")}, 3, "caf\ufffd\t0"
    if fmt == "jsonl":
        body = b'{"text": "ok"}\n{"text": "' + bad + b'"}\n{"text": "fine"}\n'
        return {"path": write(tmp_path, "d.jsonl", body)}, 2, '{"text": "caf\ufffd"}'
    if fmt == "text":
        return {"path": write(tmp_path, "d.txt", b"ok\n" + bad + b"\nfine\n")}, 2, "caf\ufffd"
    src = write(tmp_path, "d.en", b"ok\n" + bad + b"\nfine\n")
    return {"path": src, "target_path": write(tmp_path, "d.fr", "bien\ncafe\nbon\n")}, 2, "caf\ufffd\tcafe"


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "text", "parallel"])
def test_latin1_bytes_reject_only_their_row(tmp_path, fmt):
    fields, line, raw = latin1_case(tmp_path, fmt)
    rows, rejects = read(**fields)
    expected = UNDECODABLE + (" in d.en" if fmt == "parallel" else "")
    assert [(r.file, r.line, r.reason, r.raw) for r in rejects] == [(str(fields["path"]), line, expected, raw)]
    assert len(rows) == 2 and len(rows) + len(rejects) == 3


def test_latin1_bytes_in_conll_reject_their_sentence(tmp_path):
    path = write(tmp_path, "d.conll", b"ok O\n\n" + LATIN1_CAFE + b" O\nau O\n\nfine O\n")
    rows, rejects = read(path)
    assert [(r.line, r.reason, r.raw) for r in rejects] == [(3, f"line 3: {UNDECODABLE}", "caf\ufffd O\nau O")]
    assert len(rows) == 2


def test_latin1_bytes_in_a_json_array_is_a_data_error(tmp_path):
    path = write(tmp_path, "d.json", b'[\n{"text": "ok"},\n{"text": "' + LATIN1_CAFE + b'"}\n]')
    assert data_error(path) == f"{path}: line 3: not valid UTF-8 (byte offset 31)"


UTF16 = "text,label\nhello,1\n".encode("utf-16")  # with a byte-order mark
UTF16_NO_BOM = '{"text": "hello"}\n'.encode("utf-16-le")
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256))


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.json", "d.txt", "d.conll"])
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (UTF16, "it starts with a UTF-16 byte-order mark; convert it to UTF-8, e.g. `iconv -f UTF-16"),
        (UTF16_NO_BOM, "it looks like UTF-16 (every other byte is NUL); convert it to UTF-8"),
        (BINARY, "it contains NUL bytes in its first 276 bytes, so it is a binary file; check the path"),
    ],
)
def test_utf16_and_binary_files_are_a_data_error(tmp_path, name, content, problem):
    path = write(tmp_path, name, content)
    assert data_error(path).startswith(f"{path} is not UTF-8 text: {problem}")


def test_utf16_target_of_a_parallel_source(tmp_path):
    src = write(tmp_path, "d.en", "hello\n")
    tgt = write(tmp_path, "d.de", "hallo\n".encode("utf-16"))
    assert data_error(src, target_path=tgt).startswith(f"{tgt} is not UTF-8 text: it starts with a UTF-16")


def test_nul_bytes_after_the_sniffed_head_reject_their_line(tmp_path):
    head = "".join(f"line {i}\n" for i in range(1000))  # > 4 KiB of clean text first
    path = write(tmp_path, "d.txt", head.encode() + b"bad\x00line\nlast\n")
    rows, rejects = read(path)
    assert [(r.line, r.reason, r.raw) for r in rejects] == [
        (1001, "contains NUL bytes (binary data, or UTF-16 text)", "badline"),
    ]
    assert len(rows) == 1001


def test_binary_file_named_parquet(tmp_path):
    path = write(tmp_path, "d.parquet", BINARY)
    assert data_error(path).startswith(f"cannot read parquet file {path}: ")


def test_bad_documents_in_a_text_folder_are_rejected_one_by_one(tmp_path):
    (tmp_path / "docs").mkdir()
    write(tmp_path, "docs/a.txt", "a good document")
    write(tmp_path, "docs/b.txt", "hello".encode("utf-16"))
    write(tmp_path, "docs/c.txt", b"caf\xe9 au lait")
    write(tmp_path, "docs/d.txt", " \n")
    rows, rejects = read(tmp_path / "docs")
    assert [r.data["text"] for r in rows] == ["a good document"]
    assert [(Path(r.file).name, r.line, r.reason) for r in rejects] == [
        ("b.txt", 1, "not UTF-8 text: it starts with a UTF-16 byte-order mark; convert it to UTF-8, e.g. "
                     "`iconv -f UTF-16 -t UTF-8 in.txt > out.txt`"),
        ("c.txt", 1, UNDECODABLE),
        ("d.txt", 1, "empty file"),
    ]


# ---------------------------------------------------------------------------------- empty files


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.json", "d.parquet", "d.txt", "d.conll"])
def test_zero_byte_file(tmp_path, name):
    path = write(tmp_path, name, b"")
    with pytest.raises(DataError) as err:
        iter_source(SourceConfig(path=path))  # raised at the call, before any row is requested
    assert str(err.value) == f"data file has no rows: {path} is empty (0 bytes)"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("d.csv", "data file has no rows: {path} contains no records (at most a header)"),
        ("d.tsv", "data file has no rows: {path} contains no records (at most a header)"),
        ("d.jsonl", "data file has no rows: {path} contains no records (at most a header)"),
        ("d.json", "{path}: expected a top-level JSON array of objects"),
        ("d.txt", "data file has no rows: {path} contains only blank lines"),
        ("d.conll", "data file has no rows: {path} contains no CoNLL sentences"),
    ],
)
def test_whitespace_only_file(tmp_path, name, message):
    path = write(tmp_path, name, " \n\n\t\r\n  ")
    assert data_error(path) == message.format(path=path)


def test_header_only_csv_and_docstart_only_conll(tmp_path):
    csv_path = write(tmp_path, "d.csv", "text,label\n")
    assert data_error(csv_path) == f"data file has no rows: {csv_path} contains no records (at most a header)"
    conll = write(tmp_path, "d.conll", "-DOCSTART- -X- O O\n\n")
    assert data_error(conll) == f"data file has no rows: {conll} contains no CoNLL sentences"


def test_empty_parallel_pair_and_empty_folder_and_empty_dataset(tmp_path):
    import datasets

    src, tgt = write(tmp_path, "d.en", "\n\n"), write(tmp_path, "d.de", "\n\n")
    assert data_error(src, target_path=tgt) == f"data file has no rows: {src} and {tgt} contain only blank lines"
    (tmp_path / "docs").mkdir()
    assert data_error(tmp_path / "docs", format="text_files").startswith(
        f"no *.txt files in directory {tmp_path / 'docs'} (use a glob")
    datasets.Dataset.from_dict({"text": []}).save_to_disk(tmp_path / "ds")
    # datasets cannot load an empty saved dataset (IndexError inside the library): still a DataError
    assert data_error(tmp_path / "ds").startswith(f"cannot read {tmp_path / 'ds'} as a datasets directory")


def test_missing_file_and_directory_given_as_a_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert data_error(missing) == f"data file not found: {missing}"
    (tmp_path / "dir.csv").mkdir()
    assert data_error(tmp_path / "dir.csv", format="csv") == f"data path is a directory, not a file: {tmp_path / 'dir.csv'}"
    assert data_error(tmp_path / "x.en", target_path=tmp_path / "x.de") == f"data file not found: {tmp_path / 'x.en'}"


def test_directory_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    assert data_error(tmp_path / "ds", format="datasets").startswith(
        f"cannot read {tmp_path / 'ds'} as a datasets directory (written by save_to_disk): ")


# ---------------------------------------------------------------------------------- chat records


def test_sharegpt_unknown_role_is_rejected_naming_it(tmp_path):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]}
    path = write(tmp_path, "s.jsonl", "\n".join(json.dumps(r) for r in (good, bad, good)) + "\n")
    rows, rejects = read(path, format="sharegpt")
    assert [r.line for r in rows] == [1, 3]
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "turn 2: unknown role 'bot' (allowed: system, human, user, gpt, assistant, model; add it to "
            "role_map to map it to system, user or assistant)"),
    ]
    assert json.loads(rejects[0].raw) == bad
    assert len(rows) + len(rejects) == 3


def test_messages_unknown_role_is_rejected_naming_it(tmp_path):
    good = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    tool = {"messages": [{"role": "user", "content": "weather?"}, {"role": "function", "content": "{}"},
                         {"role": "assistant", "content": "sunny"}]}
    path = write(tmp_path, "m.json", json.dumps([tool, good]))
    rows, rejects = read(path)  # detected as messages from the keys
    assert [(r.line, r.kind) for r in rows] == [(1, "chat")]
    assert [(r.line, r.reason) for r in rejects] == [
        (1, "turn 2: unknown role 'function' (allowed: system, human, user, gpt, assistant, model; add it to "
            "role_map to map it to system, user or assistant)"),
    ]
    assert len(rows) + len(rejects) == 2


def test_every_kind_of_broken_chat_record_is_counted(tmp_path):
    records = [
        '{"instruction": "q", "output": "a"}',
        '{"instruction": "q"}',
        '{"instruction": "q", "output": ""}',
        '{"instruction": ["q"], "output": "a"}',
        "not json",
        '["an", "array"]',
    ]
    path = write(tmp_path, "a.jsonl", "\n".join(records) + "\n")
    rows, rejects = read(path, format="alpaca")
    assert [r.line for r in rows] == [1]
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "missing field 'output'"),
        (3, "field 'output' is empty"),
        (4, "field 'instruction' is not a string (got array)"),
        (5, "malformed JSON: Expecting value (column 1)"),
        (6, "not a JSON object (got array)"),
    ]
    assert len(rows) + len(rejects) == len(records)


def test_chat_format_on_a_file_that_cannot_hold_records(tmp_path):
    path = write(tmp_path, "chat.txt", "hello\n")
    assert data_error(path, format="sharegpt") == (
        f"format 'sharegpt' reads records from .jsonl, .json, .parquet, .csv or .tsv files or a datasets "
        f"directory; cannot tell how to read {path} (suffix '.txt')"
    )
