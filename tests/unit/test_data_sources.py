"""Data sources: every format round-trips, auto-detection, chat normalisation, weights, streaming."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneforge.data import conversations as conv
from tuneforge.data.records import Row
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.sources import (
    SourceConfig,
    apply_weights,
    iter_source,
    resolve_format,
    row_source_name,
    source_name,
)
from tuneforge.errors import DataError

from tests.conftest import DATA

CONLL = DATA / "conll2003" / "train.head.iob2.txt"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read(path: Path, **kw) -> tuple[list[Row], list[RejectedRow]]:
    items = list(iter_source(SourceConfig(path=path, **kw)))
    rows = [item for item in items if isinstance(item, Row)]
    rejects = [item for item in items if isinstance(item, RejectedRow)]
    assert len(rows) + len(rejects) == len(items)
    return rows, rejects


def texts(rows: list[Row]) -> list[tuple[int, str, object]]:
    return [(r.line, r.data["text"], r.data["label"]) for r in rows]


# ------------------------------------------------------------------------------ record formats


def test_csv_round_trip_with_quoted_multiline_field(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\ngood film,pos\n"two\nlines",neg\nbad,neg\n')
    rows, rejects = read(path)
    assert texts(rows) == [(2, "good film", "pos"), (3, "two\nlines", "neg"), (5, "bad", "neg")]
    assert rejects == []
    assert {r.kind for r in rows} == {"text"}
    assert rows[0].source == str(path) and rows[0].origin == f"{path}:2"
    assert rows[0].extra == {"source_name": str(path)}


def test_tsv_with_custom_columns_and_group(tmp_path):
    path = write(tmp_path, "d.tsv", "sentence\tlabel\tdoc\nit 's fine\t1\td1\nmeh\t0\t\n")
    rows, _ = read(path, text_column="sentence", group_column="doc")
    assert texts(rows) == [(2, "it 's fine", "1"), (3, "meh", "0")]
    assert [r.data["group"] for r in rows] == ["d1", None]  # an empty group is "no group"


def test_jsonl_keeps_raw_labels_and_skips_blank_lines(tmp_path):
    lines = ['{"text": "a", "label": 1}', "", '{"text": "b", "label": "neg", "id": 7}', "  "]
    rows, rejects = read(write(tmp_path, "d.jsonl", "\n".join(lines) + "\n"))
    assert texts(rows) == [(1, "a", 1), (3, "b", "neg")]
    assert rejects == []


def test_json_array_rows_carry_element_start_lines(tmp_path):
    data = '[\n  {"text": "a",\n   "label": 0},\n  {"text": "b", "label": 1}\n]\n'
    rows, _ = read(write(tmp_path, "d.json", data))
    assert texts(rows) == [(2, "a", 0), (4, "b", 1)]


def test_parquet_rows_are_row_numbers_and_nan_label_is_rejected(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [1.0, float("nan"), 0.0]}), path)
    rows, rejects = read(path)
    assert texts(rows) == [(1, "a", 1.0), (3, "c", 0.0)]
    assert [(r.line, r.reason) for r in rejects] == [(2, "empty label")]


def test_saved_dataset_directory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]}).save_to_disk(tmp_path / "ds")
    rows, _ = read(tmp_path / "ds")
    assert texts(rows) == [(1, "x", 0), (2, "y", 1)]


def test_saved_dataset_dict_needs_a_split_when_it_has_several(tmp_path):
    import datasets

    part = datasets.Dataset.from_dict({"text": ["t1", "t2"]})
    held = datasets.Dataset.from_dict({"text": ["v1"]})
    datasets.DatasetDict({"train": part, "validation": held}).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError, match=r"holds several splits \(train, validation\); set split"):
        read(tmp_path / "dd")
    rows, _ = read(tmp_path / "dd", split="validation")
    assert texts(rows) == [(1, "v1", None)]
    with pytest.raises(DataError, match="has no split 'test' \\(splits: train, validation\\)"):
        read(tmp_path / "dd", split="test")


def test_label_column_null_or_absent_gives_unlabeled_rows(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n')
    assert texts(read(path, label_column=None)[0]) == [(1, "a", None)]
    plain = write(tmp_path, "p.jsonl", '{"text": "a"}\n')
    assert texts(read(plain)[0]) == [(1, "a", None)]
    with pytest.raises(DataError, match="line 1: no label_column 'y' \\(columns: text\\)"):
        read(plain, label_column="y")


def test_labelled_file_rejects_rows_without_a_usable_label(tmp_path):
    lines = ['{"text": "a", "label": 1}', '{"text": "b"}', '{"text": "c", "label": ""}',
             '{"text": "d", "label": [{"x": 1}]}', '{"text": 5, "label": 1}', '{"text": " ", "label": 1}',
             '{"text": "g", "label": ["a", 2]}']
    rows, rejects = read(write(tmp_path, "d.jsonl", "\n".join(lines)))
    # a list of names/indices is a multi-label label; whether a task accepts it is the label check's call
    assert texts(rows) == [(1, "a", 1), (7, "g", ["a", 2])]
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "missing column 'label'"),
        (3, "empty label"),
        (4, "label list holds something other than strings or integers"),
        (5, "text is not a string (got number)"),
        (6, "empty text"),
    ]


def test_missing_text_column_is_a_data_error_listing_columns(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"sentence": "a", "label": 1}\n')
    with pytest.raises(DataError) as err:
        read(path)
    assert str(err.value) == (
        f"{path}: line 1: no column 'text' (columns: sentence, label); set text_column, "
        "or format to alpaca, sharegpt or messages for chat data"
    )


def test_relative_paths_resolve_against_base_dir(tmp_path):
    write(tmp_path, "data/d.txt", "hello\n")
    items = list(iter_source(SourceConfig(path="data/d.txt"), base_dir=tmp_path))
    assert [(i.source, i.data["text"]) for i in items] == [(str(tmp_path / "data/d.txt"), "hello")]


def test_max_rows_counts_good_rows_and_keeps_rejects_met_on_the_way(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a"}\n{bad\n{"text": "b"}\n{"text": "c"}\n')
    items = list(iter_source(SourceConfig(path=path, max_rows=2)))
    assert [(type(i).__name__, i.line) for i in items] == [("Row", 1), ("RejectedRow", 2), ("Row", 3)]


# ------------------------------------------------------------------------------ text formats


def test_text_one_row_per_nonblank_line(tmp_path):
    path = write(tmp_path, "d.txt", b"\xef\xbb\xbffirst line\r\n\r\n  second  \nlast")
    rows, _ = read(path)
    assert texts(rows) == [(1, "first line", None), (3, "  second  ", None), (4, "last", None)]


def test_text_unit_file_gives_one_row(tmp_path):
    rows, _ = read(write(tmp_path, "d.txt", "a\n\nb\n"), text_unit="file")
    assert texts(rows) == [(1, "a\n\nb\n", None)]


def test_text_files_directory_and_glob(tmp_path):
    write(tmp_path, "docs/b.txt", "second doc")
    write(tmp_path, "docs/a.txt", "first doc\nline two")
    write(tmp_path, "docs/sub/c.txt", "nested")
    write(tmp_path, "docs/notes.md", "# md")
    rows, _ = read(tmp_path / "docs", name="docs")
    assert [(r.source, r.line, r.data["text"]) for r in rows] == [
        (str(tmp_path / "docs/a.txt"), 1, "first doc\nline two"),
        (str(tmp_path / "docs/b.txt"), 1, "second doc"),
        (str(tmp_path / "docs/sub/c.txt"), 1, "nested"),
    ]
    assert {row_source_name(r) for r in rows} == {"docs"}
    rows, _ = read(tmp_path / "docs" / "*.md")
    assert [r.data["text"] for r in rows] == ["# md"]


def conll_head(tmp_path: Path, lines: int = 16) -> Path:
    with open(CONLL, encoding="utf-8") as fh:
        return write(tmp_path, "head.iob2.txt", "".join(itertools.islice(fh, lines)))


def test_conll_first_sentences_of_conll2003(tmp_path):
    rows, rejects = read(conll_head(tmp_path))
    assert rejects == []
    assert [(r.kind, r.line) for r in rows] == [("tokens", 3), ("tokens", 13), ("tokens", 16)]
    assert rows[0].data == {
        "tokens": ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
        "tags": ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"],
        "group": None,
    }
    assert rows[1].data["tokens"] == ["Peter", "Blackburn"]
    assert rows[1].data["tags"] == ["B-PER", "I-PER"]
    assert rows[2].data["tokens"] == ["BRUSSELS"]  # last sentence, cut mid-way by the slice


def test_conll_other_columns(tmp_path):
    rows, _ = read(conll_head(tmp_path), conll_tag_column=1)  # POS tags
    assert rows[1].data["tags"] == ["NNP", "NNP"]


def test_parallel_files_are_line_aligned(tmp_path):
    src = write(tmp_path, "t.en", "Two dogs.\nA cat.\n\nA bird.\n")
    tgt = write(tmp_path, "t.de", "Zwei Hunde.\nEine Katze.\n\nEin Vogel.\n")
    rows, rejects = read(src, target_path=tgt)
    assert [(r.kind, r.line, r.data["source"], r.data["target"]) for r in rows] == [
        ("pair", 1, "Two dogs.", "Zwei Hunde."),
        ("pair", 2, "A cat.", "Eine Katze."),
        ("pair", 4, "A bird.", "Ein Vogel."),
    ]
    assert rejects == []


def test_parallel_real_multi30k_slice(tmp_path):
    en = DATA / "multi30k" / "train.head.en"
    rows = list(itertools.islice(iter_source(SourceConfig(path=en, target_path=en.with_suffix(".de"))), 2))
    assert rows[0].data["target"] == "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."
    assert [r.line for r in rows] == [1, 2]


# ---------------------------------------------------------------------------- auto-detection


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.csv", "csv"), ("a.TSV", "tsv"), ("a.jsonl", "jsonl"), ("a.json", "json"), ("a.parquet", "parquet"),
     ("a.txt", "text"), ("a.conll", "conll"), ("train.iob2.txt", "conll"), ("a.bio", "conll"),
     ("ner.conll.csv", "csv"), ("v1.2.txt", "text")],
)
def test_format_from_suffix(name, expected):
    assert resolve_format(SourceConfig(path=name), Path(name)) == expected


def test_format_auto_for_directories_globs_and_targets(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(tmp_path / "ds")
    (tmp_path / "docs").mkdir()
    assert resolve_format(SourceConfig(path=tmp_path / "ds"), tmp_path / "ds") == "datasets"
    assert resolve_format(SourceConfig(path=tmp_path / "docs"), tmp_path / "docs") == "text_files"
    assert resolve_format(SourceConfig(path="d/*.md"), Path("d/*.md")) == "text_files"
    assert resolve_format(SourceConfig(path="a.en", target_path="a.de"), Path("a.en")) == "parallel"
    assert resolve_format(SourceConfig(path="a.txt", format="csv"), Path("a.txt")) == "csv"


def test_unknown_suffix_lists_every_format(tmp_path):
    path = write(tmp_path, "train.en", "hello\n")
    with pytest.raises(DataError) as err:
        read(path)
    assert str(err.value) == (
        f"cannot tell the format of {path}: suffix '.en'; set format to one of: csv, tsv, jsonl, json, "
        "parquet, text, text_files, datasets, conll, parallel, alpaca, sharegpt, messages, squad, class_folders, "
        "preference, kto"
    )


def test_chat_records_detected_by_their_keys(tmp_path):
    alpaca = write(tmp_path, "a.json", json.dumps([{"instruction": "Hi", "input": "", "output": "Hello"}]))
    sharegpt = write(tmp_path, "s.jsonl", json.dumps(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}))
    messages = write(tmp_path, "m.jsonl", json.dumps(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}))
    expected = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    for path, line in ((alpaca, 1), (sharegpt, 1), (messages, 1)):
        rows, _ = read(path)
        assert [(r.kind, r.line, r.data["messages"]) for r in rows] == [("chat", line, expected)]


def test_text_column_wins_over_chat_keys(tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"text": "plain", "messages": []}))
    assert texts(read(path)[0]) == [(1, "plain", None)]


# ---------------------------------------------------------------------------- chat formats


def test_alpaca_normalisation_with_input_and_system():
    record = {"instruction": "Translate.", "input": "bonjour", "output": "hello", "system": "Be brief."}
    assert conv.from_alpaca(record) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Translate.\n\nbonjour"},
        {"role": "assistant", "content": "hello"},
    ]
    assert conv.from_alpaca({"instruction": "Q", "input": None, "output": "A"}) == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]


def test_sharegpt_normalisation_with_system_field(tmp_path):
    record = {"system": "S", "conversations": [
        {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
        {"from": "user", "value": "q2"}, {"from": "model", "value": "a2"}]}
    path = write(tmp_path, "s.json", json.dumps([record]))
    rows, _ = read(path, format="sharegpt", group_column="system")
    assert rows[0].data == {
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                     {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                     {"role": "assistant", "content": "a2"}],
        "group": "S",
    }


def test_messages_normalisation_and_custom_role_map(tmp_path):
    record = {"messages": [{"role": "system", "content": "S"}, {"role": "customer", "content": "q"},
                           {"role": "agent", "content": "a"}]}
    path = write(tmp_path, "m.jsonl", json.dumps(record) + "\n")
    rows, _ = read(path, format="messages",
                   role_map={"system": "system", "customer": "user", "agent": "assistant"})
    assert rows[0].data["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                                        {"role": "assistant", "content": "a"}]


def test_real_alpaca_demo_every_record_normalises():
    rows = list(iter_source(SourceConfig(path=DATA / "alpaca_demo" / "alpaca_en_demo.head.json")))
    assert len(rows) == 50 and all(isinstance(r, Row) and r.kind == "chat" for r in rows)
    assert rows[0].data["messages"][0] == {"role": "user", "content": "Describe a process of making crepes."}


def turns(*pairs: tuple[str, object]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (turns(("user", "q")), "no assistant turn (nothing to train on)"),
        (turns(("assistant", "a")), "turn 1: expected a user turn, got assistant (turns must alternate "
                                    "user/assistant, starting with user)"),
        (turns(("user", "q"), ("user", "q2"), ("assistant", "a")), "turn 2: expected a assistant turn, got user "
                                                                   "(turns must alternate user/assistant, starting with user)"),
        (turns(("user", "q"), ("assistant", "a"), ("user", "q2")),
         "turn 3: conversation ends with a user turn (no answer)"),
        (turns(("user", "q"), ("system", "s"), ("assistant", "a")), "turn 2: system message after the first turn"),
        (turns(("user", "q"), ("assistant", "")), "turn 2: empty 'content'"),
        (turns(("user", "q"), ("assistant", ["a"])), "turn 2: 'content' is not a string (got array)"),
        (turns(("user", "q"), ("tool", "{}")), "turn 2: unknown role 'tool' (allowed: system, human, user, gpt, "
                                               "assistant, model; add it to role_map to map it to system, user or assistant)"),
        ({"messages": "hi"}, "field 'messages' is not an array (got string)"),
        ({"messages": []}, "field 'messages' is an empty array"),
        ({"messages": [["user", "q"]]}, "turn 1: not an object (got array)"),
        ({"messages": [{"content": "q"}]}, "turn 1: missing field 'role'"),
        ({"chat": []}, "missing field 'messages'"),
    ],
)
def test_messages_rejection_reasons(record, reason):
    with pytest.raises(conv.InvalidConversation) as err:
        conv.from_messages(record)
    assert str(err.value) == reason


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"input": "x", "output": "y"}, "missing field 'instruction'"),
        ({"instruction": "x", "output": 3}, "field 'output' is not a string (got number)"),
        ({"instruction": " ", "output": "y"}, "field 'instruction' is empty"),
        ({"instruction": "x", "input": ["i"], "output": "y"}, "field 'input' is not a string (got array)"),
    ],
)
def test_alpaca_rejection_reasons(record, reason):
    with pytest.raises(conv.InvalidConversation) as err:
        conv.from_alpaca(record)
    assert str(err.value) == reason


def test_sharegpt_system_field_and_system_turn_conflict():
    record = {"system": "A", "conversations": [{"from": "system", "value": "B"}, {"from": "human", "value": "q"},
                                                {"from": "gpt", "value": "a"}]}
    with pytest.raises(conv.InvalidConversation, match="^turn 2: system message after the first turn$"):
        conv.from_sharegpt(record)


# ------------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "parallel"}, "format 'parallel' needs target_path"),
        ({"format": "csv", "target_path": "b"}, "format 'csv' does not use target_path (applies to: parallel)"),
        ({"format": "text", "text_column": "t"}, "format 'text' does not use text_column (applies to: csv, tsv"),
        ({"format": "alpaca", "label_column": None}, "format 'alpaca' does not use label_column"),
        ({"format": "jsonl", "text_unit": "file"}, "does not use text_unit (applies to: text)"),
        ({"conll_tag_column": 0}, "conll_token_column and conll_tag_column must differ"),
        ({"text_column": "x", "label_column": "x"}, "label_column and text_column are both 'x'"),
        ({"role_map": {"human": "user"}}, "role_map maps no role to 'assistant'"),
        ({"weight": 0}, "greater than 0"),
        ({"weight": float("inf")}, "finite number"),
        ({"max_rows": 0}, "greater than or equal to 1"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_config_rejects_bad_combinations(fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SourceConfig(path="a", **fields)


def test_fields_that_auto_resolves_away_are_a_data_error(tmp_path):
    path = write(tmp_path, "d.csv", "text\nx\n")
    with pytest.raises(DataError, match=f"source {path}: format 'csv' does not use text_unit"):
        iter_source(SourceConfig(path=path, text_unit="file"))


def test_source_name_defaults_to_the_path():
    assert source_name(SourceConfig(path="data/a.csv")) == "data/a.csv"
    assert source_name(SourceConfig(path="data/a.csv", name="reviews")) == "reviews"


# ------------------------------------------------------------------------------------ weights


def make_rows(name: str, n: int) -> list[Row]:
    return [Row("text", {"text": f"{name} {i}", "label": None, "group": None}, f"{name}.txt", i + 1,
                extra={"source_name": name}) for i in range(n)]


def test_integer_weight_repeats_every_row_exactly():
    rows = make_rows("a", 50) + make_rows("b", 30)
    out = list(apply_weights(rows, {"a": 3.0}, seed=1))
    counts = Counter(row_source_name(r) for r in out)
    assert counts == {"a": 150, "b": 30}
    assert [r.extra.get("repeat") for r in out[:3]] == [None, 1, 2]
    assert out[0] is rows[0] and out[1].data == rows[0].data and rows[0].extra == {"source_name": "a"}
    assert out[-30:] == rows[-30:]


def test_fractional_weights_sample_about_the_right_share():
    rows = make_rows("a", 4000)
    kept = list(apply_weights(rows, {"a": 0.25}, seed=3))
    assert 900 <= len(kept) <= 1100  # binomial(4000, 0.25): sd 27
    assert all("repeat" not in r.extra for r in kept)
    grown = list(apply_weights(rows, {"a": 1.5}, seed=3))
    assert 5800 <= len(grown) <= 6200
    assert Counter(r.extra.get("repeat", 0) for r in grown)[0] == 4000


def test_weights_are_deterministic_and_order_independent():
    rows = make_rows("a", 500)
    first = [r.origin for r in apply_weights(rows, {"a": 0.5}, seed=7)]
    assert first == [r.origin for r in apply_weights(rows, {"a": 0.5}, seed=7)]
    assert sorted(first) == sorted(r.origin for r in apply_weights(rows[::-1], {"a": 0.5}, seed=7))
    assert first != [r.origin for r in apply_weights(rows, {"a": 0.5}, seed=8)]


def test_invalid_weight_is_a_value_error():
    with pytest.raises(ValueError, match="weight of source 'a' must be a positive finite number, got -1"):
        list(apply_weights(make_rows("a", 1), {"a": -1}, seed=0))


def test_weights_key_on_the_configured_source_name(tmp_path):
    path = write(tmp_path, "d.txt", "a\nb\n")
    rows = [r for r in iter_source(SourceConfig(path=path, name="shakespeare"))]
    assert len(list(apply_weights(rows, {"shakespeare": 2}, seed=0))) == 4


# ----------------------------------------------------------------------------------- streaming

BIG_LINES = 200_000


def big_file(tmp_path: Path, fmt: str) -> dict:
    """A ~10 MB file of BIG_LINES lines; returns the SourceConfig fields that read it."""
    filler = "x" * 40
    if fmt == "jsonl":
        body = "".join(f'{{"text": "row {i} {filler}", "label": {i % 2}}}\n' for i in range(BIG_LINES))
        return {"path": write(tmp_path, "big.jsonl", body)}
    if fmt == "csv":
        return {"path": write(tmp_path, "big.csv", "text,label\n" + "".join(
            f"row {i} {filler},{i % 2}\n" for i in range(BIG_LINES)))}
    if fmt == "text":
        return {"path": write(tmp_path, "big.txt", "".join(f"row {i} {filler}\n" for i in range(BIG_LINES)))}
    if fmt == "conll":
        return {"path": write(tmp_path, "big.conll", "".join(
            f"row{i}{filler} NN O\n{filler} NN O\n\n" for i in range(BIG_LINES // 2)))}
    body = "".join(f"row {i} {filler}\n" for i in range(BIG_LINES))
    return {"path": write(tmp_path, "big.en", body), "target_path": write(tmp_path, "big.de", body)}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text", "conll", "parallel"])
def test_first_rows_of_a_large_file_are_read_without_loading_it(tmp_path, fmt):
    fields = big_file(tmp_path, fmt)
    size = fields["path"].stat().st_size
    assert size > 8_000_000
    tracemalloc.start()
    try:
        head = list(itertools.islice(iter_source(SourceConfig(**fields)), 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [item.line for item in head][:2] in ([1, 2], [2, 3], [1, 4])
    assert len(head) == 10 and all(isinstance(item, Row) for item in head)
    assert peak < 1_000_000, f"reading 10 rows allocated {peak} bytes of a {size}-byte file"


def test_parquet_is_read_in_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(BIG_LINES)], "label": [i % 2 for i in range(BIG_LINES)]}),
                   path)
    tracemalloc.start()
    try:
        head = list(itertools.islice(iter_source(SourceConfig(path=path)), 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert texts(head)[:2] == [(1, "row 0", 0), (2, "row 1", 1)]
    assert peak < 8_000_000  # one 8192-row batch as Python objects; all 200k rows would be ~40 MB


def test_existing_file_with_glob_characters_is_a_file(tmp_path):
    path = write(tmp_path, "data[1].txt", "x\n")
    assert resolve_format(SourceConfig(path=path), path) == "text"
    assert texts(read(path)[0]) == [(1, "x", None)]


def test_group_column_missing_from_the_first_record_is_a_data_error(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "doc": 1}\n')
    with pytest.raises(DataError, match=r"line 1: no group_column 'document' \(columns: text, doc\)"):
        read(path, group_column="document")


def test_importing_sources_does_not_import_torch_or_datasets():
    code = ("import sys, tuneforge.data.sources; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_alpaca_with_other_column_names(tmp_path):
    path = write(tmp_path, "gsm.jsonl", '{"question": "What is 2 + 3?", "answer": "2 + 3 = 5\\n#### 5"}\n')
    cfg = SourceConfig(path=path, format="alpaca", instruction_column="question", output_column="answer")
    [row] = list(iter_source(cfg))
    assert row.data["messages"] == [{"role": "user", "content": "What is 2 + 3?"},
                                    {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}]


# ------------------------------------------------------------------ pairs and NER rows from records


def test_target_column_makes_pairs_joining_sentence_lists_and_keeping_every_reference(tmp_path):
    # SciTLDR's layout: the source is a list of sentences, the target a list of reference TLDRs
    path = write(tmp_path, "s.jsonl", "\n".join(json.dumps(r) for r in [
        {"source": ["First sentence.", " Second one. "], "target": ["tldr a", "tldr b"]},
        {"source": "Plain text.", "target": "single"},
        {"source": ["x"], "target": []},
        {"source": ["x", 3], "target": "t"},
        {"source": "y", "target": {"a": 1}},
    ]) + "\n")
    rows, rejects = read(path, text_column="source", target_column="target")
    assert [(r.kind, r.data) for r in rows] == [
        ("pair", {"source": "First sentence. Second one.", "target": "tldr a", "group": None,
                  "references": ["tldr a", "tldr b"]}),
        ("pair", {"source": "Plain text.", "target": "single", "group": None}),
    ]
    assert [(r.line, r.reason) for r in rejects] == [
        (3, "empty target"),
        (4, "column 'source' is a list holding something other than strings"),
        (5, "target is not a string or a list of strings (got object)"),
    ]


def test_real_scitldr_dev_reads_as_pairs_with_references():
    rows, rejects = read(DATA / "scitldr" / "dev.head.jsonl", text_column="source",
                         target_column="target", max_rows=50)
    assert len(rows) == 50 and not rejects
    assert all(r.kind == "pair" and r.data["target"] == r.data.get("references", [r.data["target"]])[0]
               for r in rows)
    assert sum("references" in r.data for r in rows) > 25  # most dev papers have several TLDRs


def test_tags_column_makes_ner_rows_and_rejects_count_mismatch(tmp_path):
    path = write(tmp_path, "n.jsonl", "\n".join(json.dumps(r) for r in [
        {"tokens": ["EU", "rejects", "German"], "ner_tags": ["B-ORG", "O", "B-MISC"]},
        {"tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER"]},
        {"tokens": "not a list", "ner_tags": ["O"]},
    ]) + "\n")
    rows, rejects = read(path, text_column="tokens", tags_column="ner_tags")
    assert [(r.kind, r.data["tokens"], r.data["tags"]) for r in rows] == [
        ("tokens", ["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"])]
    assert [(r.line, r.reason) for r in rejects] == [(2, "2 tokens but 1 tags"),
                                                     (3, "words must be a list (got string)")]


def test_integer_tags_are_indices_into_label_names(tmp_path):
    from tuneforge.data.labels import TagLabels

    path = write(tmp_path, "n.jsonl", json.dumps({"tokens": ["EU", "rejects"], "ner_tags": [1, 0]}) + "\n"
                 + json.dumps({"tokens": ["x"], "ner_tags": [7]}) + "\n")
    rows, _ = read(path, text_column="tokens", tags_column="ner_tags")
    check = TagLabels(["O", "B-ORG"]).check
    assert check(rows[0]).data["tags"] == ["B-ORG", "O"]
    assert rows[0].data["tags"] == [1, 0]  # the source row is not changed in place
    assert check(rows[1]) == "tag 7 is not an index into data.label_names (0-1)"


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"target_column": "t", "tags_column": "g"}, "target_column (source/target pairs) and tags_column"),
        ({"target_column": "t", "label_column": "y"}, "label_column is set, but target_column 't' makes rows"),
        ({"tags_column": "text"}, "text_column and tags_column are both 'text'"),
        ({"format": "parallel", "target_path": "b", "target_column": "t"}, "does not use target_column"),
    ],
)
def test_structured_columns_reject_bad_combinations(fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SourceConfig(path="a", **fields)


def test_missing_target_column_is_a_data_error(tmp_path):
    path = write(tmp_path, "s.jsonl", json.dumps({"source": "x", "summary": "y"}) + "\n")
    with pytest.raises(DataError, match="line 1: no target_column 'target' \\(columns: source, summary\\)"):
        read(path, text_column="source", target_column="target")
