"""Data report: exact counts in data_report.json, the Markdown tables and pairs, valid PNG plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneforge.data import report as report_module
from tuneforge.data.records import Row
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.report import SNIPPET_CHARS, DataReport, pair_record, reason_category, row_lengths
from tuneforge.data.report_plots import length_bins, plot_label_distribution, plot_length_distribution

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def text(line: int, text: str, label=None, augmented=False) -> Row:
    return Row("text", {"text": text, "label": label, "group": None}, "train.csv", line, augmented=augmented)


def assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > min_bytes  # an actual drawing, not an empty canvas


BEFORE = [
    text(2, "a good film", "pos"),  # 11 chars, 3 words
    text(3, "bad", "neg"),  # 3, 1
    text(4, "  <b>great</b>  fun ", "pos"),  # 20, 2
    text(5, "so so", "neg"),  # 5, 2
    text(6, "", "neg"),  # 0, 0
]
AFTER = [text(2, "a good film", "pos"), text(3, "bad", "neg"), text(4, "great fun", "pos")]


@pytest.fixture
def filled_report() -> DataReport:
    report = DataReport()
    for row in BEFORE:
        report.add_before(row)
    for row in AFTER:
        report.add_after(row)
    report.add_rejected(RejectedRow("train.csv", 7, "wrong column count: 3 (expected 2)", "x,y,z"), stage="read")
    report.add_rejected(RejectedRow("train.csv", 6, "empty text after cleaning", ""), stage="clean")
    report.add_rejected(RejectedRow("train.csv", 5, "min_chars: 5 < 6", "so so"), stage="clean")
    report.add_rejected(RejectedRow("train.csv", 9, "min_chars: 2 < 6", "ok"), stage="clean")
    report.set_sources({"train.csv": {"read": 6, "rejected": 1, "kept": 3}})
    report.set_cleaning({"strip_html": {"changed": 1, "removed": 0}, "min_chars": {"changed": 0, "removed": 2}})
    kept = text(40, "the original | with a pipe")
    report.set_duplicates(
        [pair_record(text(100 + i, f"duplicate number {i}"), kept, kind="exact", similarity=1.0) for i in range(24)]
        + [pair_record(text(200, "a near copy"), kept, kind="near", similarity=0.8125)]
    )
    report.set_decontamination([
        pair_record(text(300, "leaked"), Row("text", {"text": "leaked", "label": "pos"}, "dev.csv", 2),
                    kind="exact", similarity=1.0, eval_split="validation"),
        pair_record(text(301, "leaked too"), Row("text", {"text": "leaked too!"}, "test.csv", 9),
                    kind="near", similarity=0.9, eval_split="test"),
    ])
    report.set_augmentation({"eda_swap": 2, "back_translation": 1})
    report.set_splits({
        "train": [AFTER[0], AFTER[1], text(2, "good a film", "pos", augmented=True)],
        "validation": [AFTER[2]],
        "test": [],
    })
    report.set_timing("read", 0.25)
    return report


def test_json_has_exact_counts(filled_report, tmp_path):
    paths = filled_report.write(tmp_path / "report")
    data = json.loads(paths["json"].read_text(encoding="utf-8"))

    assert data["rows"] == {"before": 5, "after": 3}
    assert data["lengths"]["before"]["chars"] == {"count": 5, "min": 0, "mean": 7.8, "median": 5.0, "p95": 18.2,
                                                  "max": 20}
    assert data["lengths"]["after"]["words"] == {"count": 3, "min": 1, "mean": 2.0, "median": 2.0, "p95": 2.9,
                                                 "max": 3}
    assert data["labels"] == {"before": {"neg": 3, "pos": 2}, "after": {"neg": 1, "pos": 2}}
    assert data["sources"] == {"train.csv": {"read": 6, "rejected": 1, "kept": 3}}
    assert data["cleaning"] == {"strip_html": {"changed": 1, "removed": 0}, "min_chars": {"changed": 0, "removed": 2}}
    assert data["rejected"] == {
        "total": 4,
        "by_stage": {"read": 1, "clean": 3},
        "by_reason": {"min_chars": 2, "wrong column count": 1, "empty text after cleaning": 1},
        "file": "rejected.jsonl",
    }
    assert (data["duplicates"]["exact"], data["duplicates"]["near"]) == (24, 1)
    assert len(data["duplicates"]["pairs"]) == 25  # all of them, not only the ones in the Markdown
    assert data["duplicates"]["pairs"][-1] == {
        "row": "train.csv:200", "duplicate_of": "train.csv:40", "kind": "near", "similarity": 0.8125,
        "text": "a near copy", "duplicate_text": "the original | with a pipe",
    }
    assert data["decontamination"]["total"] == 2
    assert data["decontamination"]["by_eval_split"] == {"validation": 1, "test": 1}
    assert data["decontamination"]["hits"][0]["duplicate_of"] == "dev.csv:2"
    assert data["augmentation"] == {"total": 3, "by_operation": {"eda_swap": 2, "back_translation": 1}}
    assert data["splits"] == {
        "train": {"rows": 3, "augmented": 1, "labels": {"neg": 1, "pos": 2}},
        "validation": {"rows": 1, "augmented": 0, "labels": {"pos": 1}},
        "test": {"rows": 0, "augmented": 0, "labels": {}},
    }
    assert data["timings_s"] == {"read": 0.25}
    assert data["plots"] == {"length_plot": "length_distribution.png", "label_plot": "label_distribution.png"}
    assert data == json.loads(json.dumps(filled_report.to_dict() | {"plots": data["plots"]}))


def test_write_creates_exactly_the_report_files_and_valid_pngs(filled_report, tmp_path):
    out = tmp_path / "nested" / "report"  # parents are created
    paths = filled_report.write(out)
    assert paths == {
        "json": out / "data_report.json", "markdown": out / "data_report.md",
        "length_plot": out / "length_distribution.png", "label_plot": out / "label_distribution.png",
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no .tmp left
    assert_png(paths["length_plot"])
    assert_png(paths["label_plot"])


def test_markdown_has_the_tables_and_the_first_pairs(filled_report, tmp_path):
    md = filled_report.write(tmp_path)["markdown"].read_text(encoding="utf-8")

    assert md.startswith("# Data report\n")
    assert "| before cleaning | 5 |" in md and "| kept (after cleaning) | 3 |" in md
    assert "| exact duplicates removed | 24 |" in md and "| added by augmentation | 3 |" in md
    assert "| Source | Read | Rejected | Kept |\n| :--- | ---: | ---: | ---: |\n| train.csv | 6 | 1 | 3 |" in md
    assert "| Rule | Changed | Removed |\n| :--- | ---: | ---: |\n| strip_html | 1 | 0 |\n| min_chars | 0 | 2 |" in md
    assert "4 rows rejected; every one, with its file, line and reason, is in `rejected.jsonl`." in md
    assert "| min_chars | 2 |" in md
    # Duplicate pairs: the first 20 with both texts, a pointer to the JSON for the rest.
    assert "24 exact and 1 near duplicates removed." in md
    assert "| train.csv:100 | train.csv:40 | exact | 1.000 | duplicate number 0 | the original \\| with a pipe |" in md
    assert "duplicate number 19 |" in md and "duplicate number 20 |" not in md
    assert "First 20 of 25; all are listed in `data_report.json`." in md
    assert "| train.csv:300 | dev.csv:2 | validation | exact | 1.000 | leaked | leaked |" in md
    assert "2 rows removed from training for matching an evaluation row; 1 in validation; 1 in test." in md
    assert "| eda_swap | 2 |\n| back_translation | 1 |\n| total | 3 |" in md
    assert "| train | 3 | 1 |\n| validation | 1 | 0 |\n| test | 0 | 0 |" in md
    assert "| Label | before cleaning | after cleaning | train | validation | test |" in md
    assert "| neg | 3 (60.0%) | 1 (33.3%) | 1 (33.3%) | 0 (0.0%) | 0 |" in md
    assert "![Length distribution before and after cleaning](length_distribution.png)" in md
    assert "![Label distribution before and after cleaning](label_distribution.png)" in md
    assert "| read | 0.25 |" in md


def test_unlabeled_rows_skip_the_label_plot_with_a_note(tmp_path):
    report = DataReport()
    chat = Row("chat", {"messages": [{"role": "user", "content": "hi there"},
                                     {"role": "assistant", "content": "hello"}]}, "c.jsonl", 1)
    report.add_before(chat)
    report.add_after(chat)
    paths = report.write(tmp_path)
    assert "label_plot" not in paths and not (tmp_path / "label_distribution.png").exists()
    assert_png(paths["length_plot"])
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "No label plot: the rows have no labels." in md
    assert "| Label |" not in md
    assert json.loads(paths["json"].read_text())["labels"] == {"before": {}, "after": {}}


def test_empty_report_still_writes_json_and_markdown(tmp_path):
    paths = DataReport().write(tmp_path)
    assert set(paths) == {"json", "markdown"}
    data = json.loads(paths["json"].read_text())
    assert data["rows"] == {"before": 0, "after": 0} and data["lengths"]["before"]["chars"] == {"count": 0}
    md = paths["markdown"].read_text()
    assert "0 rows rejected" in md and "No length plot: no rows were recorded." in md


def test_row_lengths_cover_every_text_of_every_kind():
    assert row_lengths(text(1, "two words")) == (9, 2)
    chat = Row("chat", {"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "cd"}]},
               "c", 1)
    assert row_lengths(chat) == (5, 3)  # contents only, not roles
    assert row_lengths(Row("pair", {"source": "ein Haus", "target": "a house"}, "p", 1)) == (15, 4)
    assert row_lengths(Row("tokens", {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}, "t", 1)) == (10, 2)


def test_pair_record_shape_and_snippet_length():
    long_row = text(8, "x" * 1000)
    record = pair_record(long_row, text(3, "short"), kind="near", similarity=np.float32(0.5))
    assert record == {"row": "train.csv:8", "duplicate_of": "train.csv:3", "kind": "near", "similarity": 0.5,
                      "text": "x" * SNIPPET_CHARS, "duplicate_text": "short"}
    assert type(record["similarity"]) is float  # numpy scalars would not serialise
    hit = pair_record(long_row, text(3, "short"), kind="exact", similarity=1, eval_split="test")
    assert hit["eval_split"] == "test"


@pytest.mark.parametrize(
    "reason, category",
    [
        ("min_chars: 2 < 6", "min_chars"),
        ("unknown label 'x' (allowed: a, b)", "unknown label 'x'"),
        ("empty text after cleaning", "empty text after cleaning"),
        (": odd", ": odd"),
    ],
)
def test_reason_category(reason, category):
    assert reason_category(reason) == category


def test_split_counts_from_a_stream_match_counts_from_rows():
    rows = [text(1, "a", 1), text(2, "b", 10), text(3, "c", 2), text(4, "d", 10, augmented=True), text(5, "e")]
    from_rows, streamed = DataReport(), DataReport()
    from_rows.set_splits({"train": iter(rows)})  # any iterable, read once
    streamed.set_split_counts("train", rows=5, augmented=1, labels={"10": 2, "2": 1, "1": 1})
    expected = {"train": {"rows": 5, "augmented": 1, "labels": {"1": 1, "2": 1, "10": 2}}}  # numeric order
    assert from_rows.to_dict()["splits"] == streamed.to_dict()["splits"] == expected
    assert list(from_rows.to_dict()["splits"]["train"]["labels"]) == ["1", "2", "10"]


def test_setters_copy_their_inputs():
    report = DataReport()
    cleaning = {"rule": {"changed": 1, "removed": 0}}
    duplicates = [{"row": "a:1", "duplicate_of": "a:2", "kind": "exact", "similarity": 1.0}]
    report.set_cleaning(cleaning)
    report.set_duplicates(duplicates)
    cleaning["rule"]["changed"] = 99
    duplicates[0]["row"] = "changed"
    duplicates.append({})
    assert report.to_dict()["cleaning"] == {"rule": {"changed": 1, "removed": 0}}
    assert report.to_dict()["duplicates"]["pairs"] == [
        {"row": "a:1", "duplicate_of": "a:2", "kind": "exact", "similarity": 1.0}
    ]


def test_timed_adds_up_wall_time(monkeypatch):
    clock = iter([10.0, 10.5, 20.0, 21.25])
    monkeypatch.setattr(report_module.time, "perf_counter", lambda: next(clock))
    report = DataReport()
    with report.timed("clean"):
        pass
    with pytest.raises(RuntimeError), report.timed("clean"):  # a failing stage still records its time
        raise RuntimeError("boom")
    assert report.to_dict()["timings_s"] == {"clean": 1.75}


def test_length_bins_switch_to_log_scale_when_lengths_span_decades():
    edges, log_scale = length_bins(np.array([3, 5, 40]))
    assert not log_scale and edges == [x - 0.5 for x in range(3, 42)]  # one bar per integer length
    edges, log_scale = length_bins(np.array([0, 2, 50_000]))
    assert log_scale and edges[0] == 0.5 and edges[-1] == 50_000.5 and len(edges) <= 41
    assert all(edge % 1 == 0.5 for edge in edges)  # every bin holds whole lengths


def test_plots_handle_long_tails_and_many_labels(tmp_path):
    rng = np.random.default_rng(0)
    before = {"chars": rng.integers(0, 100_000, 500).tolist(), "words": rng.integers(0, 20_000, 500).tolist()}
    after = {"chars": [], "words": []}  # cleaning removed everything: still a plot of "before"
    assert_png(plot_length_distribution(before, after, tmp_path / "lengths.png"))
    labels = {f"class {i}": int(n) for i, n in enumerate(rng.integers(1, 50, 45))}
    assert_png(plot_label_distribution(labels, {}, tmp_path / "labels.png"))
    assert plot_label_distribution({}, {}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
