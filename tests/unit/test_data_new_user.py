"""Friction a new user meets when reading labelled files (issue items 1-3).

1. A CSV/TSV without a header row: ``has_header: false`` with ``column_names`` (or index columns
   "0", "1", ...) reads every line as data; without it, the error says the file looks headerless.
2. One file per class (``label:`` on a text source) and one folder per class (``format:
   class_folders``, the IMDB layout ``train/pos/*.txt``, ``train/neg/*.txt``).
3. 1-based integer class labels are refused with a message naming ``label_offset: 1``, and read
   right with it.

Every test runs the whole data stage (``prepare_dataset``) and checks the prepared rows.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneforge.data.pipeline import prepare_dataset
from tuneforge.errors import DataError
from tuneforge.recipe import DataSection

WORDS = (
    "apple river stone cloud market window garden silver engine forest candle harbor pencil thunder "
    "meadow rocket violin desert crystal lantern bridge copper falcon glacier hammer island jacket kettle "
    "ladder magnet needle orchid pepper quartz saddle tunnel umbrella velvet walnut yogurt zebra anchor"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of random words (never near-duplicates of each other)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        text = " ".join(rng.sample(WORDS, 9))
        if text not in out:
            out.append(text)
    return out


def section(**data) -> DataSection:
    return DataSection.model_validate(data)


def prepared_rows(prepared) -> list[dict]:
    return [row for split in ("train", "validation", "test") for row in prepared.rows(split)]


# ------------------------------------------------------------------------------ 1. headerless


def headerless_tsv(tmp_path: Path, n: int = 20) -> tuple[Path, list[tuple[str, str]]]:
    """SST-2 style: sentence <TAB> 0/1, no header line; the first line is a real example."""
    rows = [(text, str(i % 2)) for i, text in enumerate(sentences(n, seed=1))]
    path = tmp_path / "train.tsv"
    path.write_text("".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    return path, rows


def test_headerless_tsv_with_column_names_keeps_every_row(tmp_path):
    path, rows = headerless_tsv(tmp_path)
    cfg = section(train_file=str(path), has_header=False, column_names=["sentence", "label"],
                  text_column="sentence", label_names=["negative", "positive"])
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    got = {row["text"]: row["label"] for row in prepared_rows(prepared)}
    # every line is a row, the first included: none was taken for a header
    assert got == {text: ("negative", "positive")[int(label)] for text, label in rows}
    assert sum(prepared.counts.values()) == 20


def test_headerless_tsv_without_names_is_addressed_by_index(tmp_path):
    path, rows = headerless_tsv(tmp_path)
    cfg = section(train_file=str(path), has_header=False, text_column="0", label_column="1")
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    assert {row["text"]: row["label"] for row in prepared_rows(prepared)} == dict(rows)
    assert prepared.label_names == ["0", "1"]


def test_headerless_tsv_read_with_a_header_says_it_looks_headerless(tmp_path):
    path, rows = headerless_tsv(tmp_path)
    cfg = section(train_file=str(path), text_column="sentence", label_names=["negative", "positive"])
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    first_text = rows[0][0]
    assert str(err.value) == (
        f"{path}: line 2: no column 'sentence' (columns: {first_text}, 0); the file looks headerless: its "
        "first line holds '0', a number like the rest of its column, not a column name. If the first line "
        "is data, set has_header: false and column_names: [sentence, label] (one name per column, in order) "
        "for this file (under data: for train_file, or in its data.sources entry). If it is a header, set "
        "text_column to one of its columns"
    )


def test_a_label_name_in_the_header_row_says_it_looks_headerless(tmp_path):
    texts = sentences(10, seed=2)
    path = tmp_path / "train.csv"
    path.write_text("".join(f"{t},{('bad', 'good')[i % 2]}\n" for i, t in enumerate(texts)), encoding="utf-8")
    cfg = section(sources=[{"path": str(path), "text_column": "review"}], label_names=["bad", "good"])
    with pytest.raises(DataError, match=r"its first line holds 'bad', one of data.label_names, not a column "
                                        r"name\. If the first line is data, set has_header: false and "
                                        r"column_names: \[review, label\]"):
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")


def test_header_keys_validate():
    with pytest.raises(ValidationError, match="set data.has_header: false as well"):
        section(train_file="t.tsv", column_names=["sentence", "label"])
    with pytest.raises(ValidationError, match="duplicate"):
        section(train_file="t.tsv", has_header=False, column_names=["a", "a"])
    with pytest.raises(ValidationError, match="set has_header: false as well"):
        section(sources=[{"path": "t.tsv", "column_names": ["sentence", "label"]}])
    with pytest.raises(ValidationError, match="does not use has_header"):
        section(sources=[{"path": "t.jsonl", "format": "jsonl", "has_header": False}])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        section(train_file="t.tsv", has_headers=False)
    with pytest.raises(ValidationError, match="with data.sources set it in each entry instead"):
        section(sources=[{"path": "t.tsv"}], has_header=False)


def test_column_names_of_the_wrong_length_are_a_clear_error(tmp_path):
    path, _ = headerless_tsv(tmp_path)
    cfg = section(train_file=str(path), has_header=False, column_names=["sentence", "label", "extra"],
                  text_column="sentence")
    with pytest.raises(DataError, match=r"line 1: column_names has 3 names, but the line has 2 fields"):
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")


# -------------------------------------------------------------------------- 2. a file per class


def test_one_text_file_per_class_labels_every_line(tmp_path):
    pos, neg = sentences(12, seed=3), sentences(9, seed=4)
    (tmp_path / "reviews.pos").write_text("\n".join(pos) + "\n", encoding="utf-8")
    (tmp_path / "reviews.neg").write_text("\n".join(neg) + "\n", encoding="utf-8")
    cfg = section(sources=[
        {"path": str(tmp_path / "reviews.pos"), "format": "text", "label": "positive"},
        {"path": str(tmp_path / "reviews.neg"), "format": "text", "label": "negative"},
    ])
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    rows = [r for s in ("train", "validation") for r in prepared.rows(s)]
    assert Counter(r["label"] for r in rows) == {"positive": 12, "negative": 9}
    for row in rows:
        assert row["label"] == ("positive" if row["_origin"].split(":")[0].endswith(".pos") else "negative")
    assert {r["text"] for r in rows} == set(pos) | set(neg)
    assert prepared.label_names == ["negative", "positive"]


def test_a_source_label_excludes_a_label_column(tmp_path):
    with pytest.raises(ValidationError, match="label and label_column exclude each other"):
        section(sources=[{"path": "a.csv", "label": "positive", "label_column": "stars"}])
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in sentences(5, seed=5)))
    cfg = section(sources=[{"path": str(path), "label": "positive"}])
    with pytest.raises(DataError, match=r"label 'positive' is set for every row, but the records have a label "
                                        r"column 'label'; remove label, or set label_column: null"):
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")


def test_a_source_label_is_only_for_classification(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n".join(sentences(10, seed=6)) + "\n")
    cfg = section(sources=[{"path": str(path), "label": "positive"}])
    with pytest.raises(DataError, match=r"label 'positive' only applies to classification data"):
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out", labels="none")


def imdb_like(root: Path) -> dict[str, list[str]]:
    """aclImdb/train: pos/ and neg/ hold one review a file; unsup/ unlabelled ones; files at the top."""
    texts = {"pos": sentences(11, seed=7), "neg": sentences(9, seed=8), "unsup": sentences(4, seed=9)}
    for label, items in texts.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(items):
            (root / label / f"{i}_{7 + i % 3}.txt").write_text(text + "\n", encoding="utf-8")
    (root / "urls_pos.txt").write_text("http://example.com/a\n")
    (root / "pos" / ".DS_Store").write_bytes(b"\x00\x01")
    return texts


def test_class_folders_take_the_label_from_the_subfolder(tmp_path):
    texts = imdb_like(tmp_path / "train")
    cfg = section(sources=[{"path": str(tmp_path / "train"), "format": "class_folders"}],
                  label_names=["neg", "pos"])
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    rows = [r for s in ("train", "validation") for r in prepared.rows(s)]
    # unsup/ is not one of label_names: not read; the top-level file and .DS_Store are not reviews
    assert Counter(r["label"] for r in rows) == {"pos": 11, "neg": 9}
    for row in rows:
        assert Path(row["_origin"].rsplit(":", 1)[0]).parent.name == row["label"]
        assert row["text"].strip() in texts[row["label"]]
    assert prepared.counts["validation"] > 0


def test_class_folders_without_label_names_make_every_subfolder_a_class(tmp_path):
    imdb_like(tmp_path / "train")
    cfg = section(sources=[{"path": str(tmp_path / "train"), "format": "class_folders"}])
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    assert prepared.label_names == ["neg", "pos", "unsup"]
    assert Counter(r["label"] for r in prepared_rows(prepared)) == {"pos": 11, "neg": 9, "unsup": 4}


def test_class_folders_errors_say_what_the_layout_is(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.txt").write_text("one review\n")
    cfg = section(sources=[{"path": str(tmp_path / "flat"), "format": "class_folders"}])
    with pytest.raises(DataError, match=r"has no subfolders: format class_folders reads one subfolder per class"):
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    with pytest.raises(ValidationError, match="class_folders takes each row's label from its subfolder"):
        section(sources=[{"path": "train", "format": "class_folders", "label": "pos"}])


# ------------------------------------------------------------------------------ 3. 1-based labels

AG_NEWS = ["World", "Sports", "Business", "Sci/Tech"]


def one_based_csv(tmp_path: Path) -> Path:
    """AG News style: class index 1..4, the text names its class so the mapping can be checked."""
    path = tmp_path / "train.csv"
    lines = ["label,text"]
    for i, text in enumerate(sentences(24, seed=10)):
        cls = i % 4
        lines.append(f"{cls + 1},{AG_NEWS[cls].lower()} {text}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_based_integer_labels_are_refused_naming_label_offset(tmp_path):
    cfg = section(train_file=str(one_based_csv(tmp_path)), label_names=AG_NEWS)
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    assert str(err.value) == (
        "the integer labels of the training data run from 1 to 4 and never include 0, but an integer label is "
        "a 0-based index into data.label_names (0 = 'World', 3 = 'Sci/Tech'): every class would shift by one "
        "and label 4 would be rejected. If 1 means 'World', set data.label_offset: 1; or write the class names "
        "in the file instead of numbers"
    )


def test_label_offset_maps_one_based_labels_to_the_right_names(tmp_path):
    cfg = section(train_file=str(one_based_csv(tmp_path)), label_names=AG_NEWS, label_offset=1)
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    rows = prepared_rows(prepared)
    assert len(rows) == 24
    for row in rows:
        assert row["text"].split()[0] == row["label"].lower()
    assert Counter(r["label"] for r in rows) == {name: 6 for name in AG_NEWS}


def test_label_offset_needs_label_names():
    with pytest.raises(ValidationError, match="data.label_offset needs data.label_names"):
        section(train_file="t.csv", label_offset=1)


def test_with_label_offset_a_label_out_of_range_names_the_range(tmp_path):
    path = one_based_csv(tmp_path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("0,world one more sentence that is new\n")
    cfg = section(train_file=str(path), label_names=AG_NEWS, label_offset=1, max_rejected_fraction=0.1)
    prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected] == [
        "unknown label '0' (allowed: World, Sports, Business, Sci/Tech, or 1-4 with data.label_offset 1)"]


def test_zero_based_labels_and_label_names_are_not_refused(tmp_path):
    path = tmp_path / "train.jsonl"
    texts = sentences(20, seed=11)
    path.write_text("".join(json.dumps({"text": t, "label": i % 4}) + "\n" for i, t in enumerate(texts)))
    prepared = prepare_dataset(section(train_file=str(path), label_names=AG_NEWS), seed=0, out_dir=tmp_path / "o")
    assert Counter(r["label"] for r in prepared_rows(prepared)) == {name: 5 for name in AG_NEWS}


def test_the_single_file_reader_reads_headerless_files_and_refuses_one_based_labels(tmp_path):
    from tuneforge.data.readers import load_classification

    path, rows = headerless_tsv(tmp_path)
    got = load_classification(path, text_column="sentence", label_column="label", label_names=None,
                              has_header=False, column_names=["sentence", "label"])
    assert got.texts == [text for text, _ in rows] and got.total == 20
    with pytest.raises(DataError, match="the file looks headerless"):
        load_classification(path, text_column="sentence", label_column="label", label_names=None)
    with pytest.raises(DataError, match="set data.label_offset: 1"):
        load_classification(one_based_csv(tmp_path), text_column="text", label_column="label",
                            label_names=AG_NEWS)


def test_class_folders_warn_about_the_subfolders_they_skip(tmp_path, caplog):
    imdb_like(tmp_path / "train")
    cfg = section(sources=[{"path": str(tmp_path / "train"), "format": "class_folders"}],
                  label_names=["neg", "pos"])
    with caplog.at_level("WARNING", logger="tuneforge.data.sources"):
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    assert "not reading subfolder(s) unsup: not among data.label_names (neg, pos)" in caplog.text
