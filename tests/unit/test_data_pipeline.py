"""The whole data stage end to end: ``prepare_dataset`` on small corpora with known defects.

Each test builds its input in ``tmp_path`` with a known number of good rows, bad rows, copies and
near copies, runs the pipeline, and checks the files it writes: every row read ends up in exactly
one split file or in ``rejected.jsonl`` with the expected reason, the report names each dropped
row and the row it copies, and weights and augmentation touch the training split only.

Sentences are random draws from a fixed vocabulary (seeded), so two different rows are never
near-duplicates by accident and every count below is exact.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from tuneforge.data.pipeline import prepare_dataset
from tuneforge.data.readers import UNDECODABLE
from tuneforge.errors import DataError
from tuneforge.recipe import DataSection

from tests.conftest import DATA

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALPACA_DEMO = DATA / "alpaca_demo" / "alpaca_en_demo.head.json"

VOCABULARY = (
    "apple river stone cloud market window garden silver engine forest candle harbor pencil thunder "
    "meadow rocket violin desert crystal lantern bridge copper falcon glacier hammer island jacket kettle "
    "ladder magnet needle orchid pepper quartz saddle tunnel umbrella velvet walnut yogurt zebra anchor "
    "basket cactus dolphin feather ginger helmet igloo jungle koala lemon marble nickel oyster parrot "
    "quiver rabbit spider tomato unicorn volcano wizard yacht blanket cherry donkey emerald fountain "
    "guitar honey iceberg jigsaw kitten lobster mirror noodle ostrich pillow raven sandal tiger vessel"
).split()


def sentences(n: int, seed: int = 0, words: int = 9) -> list[str]:
    """``n`` distinct sentences of random vocabulary words (never near-duplicates of each other)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        text = " ".join(rng.sample(VOCABULARY, words))
        if text not in out:
            out.append(text)
    return out


def write_jsonl(path: Path, records: list) -> Path:
    """One line per item: dicts are dumped as JSON, strings are written as they are (broken lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def one_word_changed(text: str, replacement: str = "zeppelin") -> str:
    """A near copy: the last word replaced (about 0.7-0.9 estimated Jaccard for 9-word sentences)."""
    words = text.split()
    return " ".join(words[:-1] + [replacement])


def section(**data) -> DataSection:
    return DataSection.model_validate(data)


# ------------------------------------------------------------------------------- the known corpus
#
# train.jsonl                                         dev.jsonl
#   1-16  good rows (8 positive, 8 negative)            1-4  good rows
#   17    line 3 upper-cased with "!": exact duplicate  (2 is copied into train line 21,
#   18    line 5 with its last word changed: near        3 is near-copied into train line 22)
#   19    empty text                 (read)
#   20    truncated JSON             (read)
#   21    copy of dev line 2         (decontaminate, exact)
#   22    dev line 3, one word changed (decontaminate, near)
#   23    only a zero-width space    (clean: empty after cleaning)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    texts = sentences(20, seed=1)
    good = [{"text": t, "label": "positive" if i % 2 else "negative"} for i, t in enumerate(texts[:16])]
    dev = [{"text": t, "label": "positive" if i % 2 else "negative"} for i, t in enumerate(texts[16:])]
    train_records = good + [
        {"text": good[2]["text"].upper() + "!", "label": good[2]["label"]},
        {"text": one_word_changed(good[4]["text"]), "label": good[4]["label"]},
        {"text": "   ", "label": "positive"},
        '{"text": "cut off in the mid',
        dict(dev[1]),
        {"text": one_word_changed(dev[2]["text"]), "label": "negative"},
        {"text": "\u200b", "label": "negative"},
    ]
    train = write_jsonl(root / "train.jsonl", train_records)
    dev_path = write_jsonl(root / "dev.jsonl", dev)
    cfg = section(train_file=str(train), validation_file=str(dev_path), max_rejected_fraction=0.5)
    out = root / "out"
    prepared = prepare_dataset(cfg, seed=3, out_dir=out)
    return {"train": str(train), "dev": str(dev_path), "out": out, "prepared": prepared, "records": train_records}


def test_every_row_read_is_in_exactly_one_split_or_rejected(corpus):
    train, dev, out = corpus["train"], corpus["dev"], corpus["out"]
    placed: Counter = Counter()
    for split in ("train", "validation", "test"):
        for record in read_jsonl(out / f"{split}.jsonl"):
            placed[record["_origin"]] += 1
    rejected = read_jsonl(out / "rejected.jsonl")
    for r in rejected:
        placed[f"{r['file']}:{r['line']}"] += 1
    expected = {f"{train}:{i}" for i in range(1, 24)} | {f"{dev}:{i}" for i in range(1, 5)}
    assert set(placed) == expected
    assert all(n == 1 for n in placed.values()), {k: n for k, n in placed.items() if n != 1}
    assert corpus["prepared"].counts == {"train": 16, "validation": 4, "test": 0}
    assert {r["_origin"] for r in read_jsonl(out / "validation.jsonl")} == {f"{dev}:{i}" for i in range(1, 5)}


def test_rejected_rows_carry_stage_and_reason(corpus):
    train, dev = corpus["train"], corpus["dev"]
    rejected = {r["line"]: r for r in read_jsonl(corpus["out"] / "rejected.jsonl")}
    assert sorted(rejected) == [17, 18, 19, 20, 21, 22, 23]
    assert all(r["file"] == train for r in rejected.values())
    stages = {line: r["stage"] for line, r in rejected.items()}
    assert stages == {17: "dedup", 18: "dedup", 19: "read", 20: "read", 21: "decontaminate", 22: "decontaminate",
                      23: "clean"}
    assert rejected[17]["reason"] == f"exact duplicate of {train}:3"
    assert rejected[18]["reason"].startswith(f"near-duplicate of {train}:5 (similarity 0.")
    assert rejected[19]["reason"] == "empty text"
    assert rejected[20]["reason"].startswith("malformed JSON: ")
    assert rejected[20]["raw"] == '{"text": "cut off in the mid'
    assert rejected[21]["reason"] == f"exact duplicate of {dev}:2 (validation set)"
    assert rejected[22]["reason"].startswith(f"near-duplicate of {dev}:3 (validation set) (similarity 0.")
    assert rejected[23]["reason"] == "empty text after cleaning"
    similarity = float(rejected[18]["reason"].rsplit(" ", 1)[1].rstrip(")"))
    assert 0.6 <= similarity < 1.0


def test_report_names_each_duplicate_and_the_row_it_copies(corpus):
    train, dev = corpus["train"], corpus["dev"]
    report = json.loads((corpus["out"] / "data_report.json").read_text(encoding="utf-8"))
    pairs = report["duplicates"]["pairs"]
    assert (report["duplicates"]["exact"], report["duplicates"]["near"]) == (1, 1)
    assert [(p["row"], p["duplicate_of"], p["kind"]) for p in pairs] == [
        (f"{train}:17", f"{train}:3", "exact"), (f"{train}:18", f"{train}:5", "near"),
    ]
    assert pairs[0]["similarity"] == 1.0 and 0.6 <= pairs[1]["similarity"] < 1.0
    assert pairs[0]["text"] == corpus["records"][16]["text"]
    hits = report["decontamination"]["hits"]
    assert report["decontamination"]["total"] == 2
    assert report["decontamination"]["by_eval_split"] == {"validation": 2}
    assert [(h["row"], h["duplicate_of"], h["kind"], h["eval_split"]) for h in hits] == [
        (f"{train}:21", f"{dev}:2", "exact", "validation"), (f"{train}:22", f"{dev}:3", "near", "validation"),
    ]
    assert report["rejected"]["total"] == 7
    assert report["rejected"]["by_stage"] == {"read": 2, "clean": 1, "dedup": 2, "decontaminate": 2}
    assert report["sources"][train] == {"read": 23, "rejected": 2, "kept": 21}
    assert report["sources"][dev] == {"read": 4, "rejected": 0, "kept": 4}
    assert report["splits"]["train"] == {"rows": 16, "augmented": 0, "labels": {"negative": 8, "positive": 8}}
    assert report["splits"]["validation"]["labels"] == {"negative": 2, "positive": 2}


def test_split_files_keep_text_label_and_origin(corpus):
    train = corpus["train"]
    rows = {r["_origin"]: r for r in read_jsonl(corpus["out"] / "train.jsonl")}
    assert rows[f"{train}:1"] == {"text": corpus["records"][0]["text"], "label": "negative", "_origin": f"{train}:1"}
    assert corpus["prepared"].label_names == ["negative", "positive"]
    assert corpus["prepared"].rows("train") == read_jsonl(corpus["out"] / "train.jsonl")


# -------------------------------------------------------------------------------------- report files


def test_markdown_report_has_the_stage_table_and_the_first_pairs(corpus):
    train = corpus["train"]
    md = (corpus["out"] / "data_report.md").read_text(encoding="utf-8")
    assert md.startswith("# Data report\n")
    table = md.split("## Rows per stage\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[:2] == ["| Stage | Rows |", "| :--- | ---: |"]
    assert table[2:] == [
        "| read | 27 |",
        "| rejected while reading | 2 |",
        "| before cleaning | 25 |",
        "| removed by cleaning | 1 |",
        "| exact duplicates removed | 1 |",
        "| near duplicates removed | 1 |",
        "| removed by decontamination | 2 |",
        "| kept (after cleaning) | 20 |",
        "| added by augmentation | 0 |",
        "| train split | 16 |",
        "| validation split | 4 |",
        "| test split | 0 |",
    ]
    duplicates = md.split("## Duplicates\n\n", 1)[1].split("\n## ", 1)[0]
    assert duplicates.startswith("1 exact and 1 near duplicates removed.")
    assert f"| {train}:17 | {train}:3 | exact | 1.000 |" in duplicates
    assert f"| {train}:18 | {train}:5 | near | 0." in duplicates
    decontamination = md.split("## Decontamination\n\n", 1)[1].split("\n## ", 1)[0]
    assert f"| {train}:21 | {corpus['dev']}:2 | validation | exact | 1.000 |" in decontamination
    assert "rejected.jsonl" in md


def test_markdown_pairs_show_the_text_of_the_row_that_was_kept(corpus):
    md = (corpus["out"] / "data_report.md").read_text(encoding="utf-8")
    kept_text = corpus["records"][2]["text"]
    row = next(line for line in md.splitlines() if line.startswith(f"| {corpus['train']}:17 |"))
    assert kept_text[:40] in row


def test_plots_exist_and_are_png(corpus):
    report = json.loads((corpus["out"] / "data_report.json").read_text(encoding="utf-8"))
    assert report["plots"] == {"length_plot": "length_distribution.png", "label_plot": "label_distribution.png"}
    for name in ("length_distribution.png", "label_distribution.png"):
        data = (corpus["out"] / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
        assert f"]({name})" in (corpus["out"] / "data_report.md").read_text(encoding="utf-8")
    assert not list(corpus["out"].glob("*.tmp")) and not (corpus["out"] / ".kept.jsonl").exists()


# ----------------------------------------------------------------------------------------- splits


def labelled(texts: list[str], labels=("neg", "pos")) -> list[dict]:
    return [{"text": t, "label": labels[i % len(labels)]} for i, t in enumerate(texts)]


def test_fractions_give_exact_stratified_sizes(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", labelled(sentences(40, seed=2)))
    cfg = section(train_file=str(train), split={"validation_fraction": 0.2, "test_fraction": 0.1})
    prepared = prepare_dataset(cfg, seed=5, out_dir=tmp_path / "out")
    assert prepared.counts == {"train": 28, "validation": 8, "test": 4}
    labels = {s: Counter(r["label"] for r in prepared.rows(s)) for s in ("train", "validation", "test")}
    assert labels == {"train": {"neg": 14, "pos": 14}, "validation": {"neg": 4, "pos": 4}, "test": {"neg": 2, "pos": 2}}
    origins = [r["_origin"] for s in ("train", "validation", "test") for r in prepared.rows(s)]
    assert sorted(origins) == sorted(f"{train}:{i}" for i in range(1, 41))
    assert prepared.report["splits"]["test"]["labels"] == {"neg": 2, "pos": 2}


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", labelled(sentences(30, seed=3)))
    cfg = section(train_file=str(train), split={"validation_fraction": 0.2})
    first, again, other = (prepare_dataset(cfg, seed=s, out_dir=tmp_path / f"o{i}") for i, s in enumerate((1, 1, 2)))
    assert first.path("train").read_bytes() == again.path("train").read_bytes()
    assert first.rows("validation") != other.rows("validation")


def test_groups_never_span_two_splits(tmp_path):
    texts = sentences(36, seed=4)
    records = [{"text": t, "label": ("a", "b")[i % 2], "doc": f"doc{i // 3}"} for i, t in enumerate(texts)]
    path = write_jsonl(tmp_path / "grouped.jsonl", records)
    cfg = section(sources=[{"path": str(path), "group_column": "doc"}],
                  split={"validation_fraction": 0.25, "test_fraction": 0.25})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    split_of: dict[str, set[str]] = {}
    for split in ("train", "validation", "test"):
        for r in prepared.rows(split):
            split_of.setdefault(r["group"], set()).add(split)
    assert len(split_of) == 12
    assert all(len(splits) == 1 for splits in split_of.values()), split_of
    # whole groups of 3: every split size is a multiple of 3 and all 36 rows are placed
    assert all(n % 3 == 0 and n > 0 for n in prepared.counts.values()), prepared.counts
    assert sum(prepared.counts.values()) == 36


# ---------------------------------------------------------------------------------------- weights


def test_source_weights_apply_to_training_rows_only(tmp_path):
    texts = sentences(24, seed=5)
    a = write_jsonl(tmp_path / "a.jsonl", labelled(texts[:12]))
    b = write_jsonl(tmp_path / "b.jsonl", labelled(texts[12:]))
    cfg = section(sources=[{"path": str(a), "name": "A", "weight": 2}, {"path": str(b), "name": "B", "weight": 0.5}],
                  split={"validation_fraction": 0.25})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    validation = Counter(r["_origin"] for r in prepared.rows("validation"))
    train = Counter(r["_origin"] for r in prepared.rows("train"))
    assert len(validation) == 6 and set(validation.values()) == {1}  # 25% of 24, not weighted
    held = set(validation)
    a_train = {f"{a}:{i}" for i in range(1, 13)} - held
    b_train = {f"{b}:{i}" for i in range(1, 13)} - held
    # weight 2: every training row of A exactly twice; weight 0.5: a strict subset of B, each once
    assert {o: n for o, n in train.items() if o.startswith(str(a))} == {o: 2 for o in a_train}
    b_kept = {o: n for o, n in train.items() if o.startswith(str(b))}
    assert set(b_kept.values()) <= {1} and set(b_kept) < b_train and b_kept
    assert prepared.counts["train"] == 2 * len(a_train) + len(b_kept)
    # repeats are not duplicates: nothing rejected, nothing reported
    assert (tmp_path / "out" / "rejected.jsonl").read_text() == ""
    assert prepared.report["duplicates"] == {"exact": 0, "near": 0, "pairs": []}
    assert prepared.report["sources"] == {"A": {"read": 12, "rejected": 0, "kept": 12},
                                          "B": {"read": 12, "rejected": 0, "kept": 12}}
    again = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "again")
    assert again.path("train").read_bytes() == prepared.path("train").read_bytes()


# ----------------------------------------------------------------------------------- augmentation


def test_eda_rows_go_to_train_only_and_point_at_their_original(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", labelled(sentences(20, seed=6)))
    # Two copies per row, operations rotating: one swap and one delete copy of each training row.
    # A swap of two different words always changes the text; a deletion (each word with probability
    # alpha) may delete nothing, and such an identical copy is dropped.
    cfg = section(train_file=str(train), split={"validation_fraction": 0.2, "test_fraction": 0.1},
                  augment={"eda": {"enabled": True, "operations": ["swap", "delete"], "copies_per_row": 2}})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    rows = prepared.rows("train")
    originals = {r["_origin"]: r for r in rows if not r.get("_augmented")}
    augmented = [r for r in rows if r.get("_augmented")]
    assert len(originals) == 14
    swaps, deletions = [], []
    for r in augmented:
        assert r["_augmented"] is True and r["_derived_from"] in originals and r["_origin"] == r["_derived_from"]
        source = originals[r["_derived_from"]]
        assert r["label"] == source["label"] and r["text"] != source["text"]
        same_words = sorted(r["text"].split()) == sorted(source["text"].split())
        assert same_words or set(r["text"].split()) < set(source["text"].split())
        (swaps if same_words else deletions).append(r["_derived_from"])
    assert sorted(swaps) == sorted(originals)  # exactly one swap copy per training row
    assert len(set(deletions)) == len(deletions) and 0 < len(deletions) <= 14
    assert prepared.counts["train"] == 14 + len(augmented)
    for split in ("validation", "test"):
        assert not any("_augmented" in r or "_derived_from" in r for r in prepared.rows(split))
    assert [len(prepared.rows(s)) for s in ("validation", "test")] == [4, 2]
    report = prepared.report
    assert report["augmentation"] == {"total": len(augmented),
                                      "by_operation": {"eda_swap": 14, "eda_delete": len(deletions)}}
    assert report["splits"]["train"]["augmented"] == len(augmented)
    assert report["splits"]["train"]["rows"] == 14 + len(augmented)
    assert report["splits"]["validation"]["augmented"] == report["splits"]["test"]["augmented"] == 0
    md = (tmp_path / "out" / "data_report.md").read_text(encoding="utf-8")
    assert f"| added by augmentation | {len(augmented)} |" in md and f"| total | {len(augmented)} |" in md


# --------------------------------------------------------------------------------- decontamination


def contaminated_corpus(tmp_path: Path) -> tuple[Path, Path]:
    texts = sentences(14, seed=7)
    dev = write_jsonl(tmp_path / "dev.jsonl", labelled(texts[10:]))
    train = write_jsonl(tmp_path / "train.jsonl", labelled(texts[:10]) + [{"text": texts[11], "label": "pos"}])
    return train, dev


def test_decontaminate_report_keeps_the_row_and_lists_it(tmp_path):
    train, dev = contaminated_corpus(tmp_path)
    cfg = section(train_file=str(train), validation_file=str(dev), decontaminate={"action": "report"})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    assert f"{train}:11" in {r["_origin"] for r in prepared.rows("train")}
    assert prepared.counts["train"] == 11
    assert (tmp_path / "out" / "rejected.jsonl").read_text() == ""
    hits = prepared.report["decontamination"]["hits"]
    assert [(h["row"], h["duplicate_of"], h["kind"], h["eval_split"]) for h in hits] == [
        (f"{train}:11", f"{dev}:2", "exact", "validation"),
    ]


def test_decontaminate_report_does_not_claim_rows_were_removed(tmp_path):
    train, dev = contaminated_corpus(tmp_path)
    cfg = section(train_file=str(train), validation_file=str(dev), decontaminate={"action": "report"})
    prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    md = (tmp_path / "out" / "data_report.md").read_text(encoding="utf-8")
    assert "| removed by decontamination | 0 |" in md
    assert "removed from training" not in md


def test_decontaminate_disabled_does_nothing(tmp_path):
    train, dev = contaminated_corpus(tmp_path)
    cfg = section(train_file=str(train), validation_file=str(dev), decontaminate={"enabled": False})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    assert prepared.counts == {"train": 11, "validation": 4, "test": 0}
    assert prepared.report["decontamination"] == {"total": 0, "action": "drop", "by_eval_split": {}, "hits": []}
    assert (tmp_path / "out" / "rejected.jsonl").read_text() == ""


def test_decontaminate_drop_is_the_default(tmp_path):
    train, dev = contaminated_corpus(tmp_path)
    prepared = prepare_dataset(section(train_file=str(train), validation_file=str(dev)), seed=0,
                               out_dir=tmp_path / "out")
    assert prepared.counts["train"] == 10
    [rejected] = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert (rejected["line"], rejected["stage"], rejected["reason"]) == (
        11, "decontaminate", f"exact duplicate of {dev}:2 (validation set)")


def test_decontaminate_names_the_evaluation_split_it_matched(tmp_path):
    texts = sentences(16, seed=11)
    dev = write_jsonl(tmp_path / "dev.jsonl", labelled(texts[10:13]))
    test = write_jsonl(tmp_path / "test.jsonl", labelled(texts[13:16]))
    train = write_jsonl(tmp_path / "train.jsonl", labelled(texts[:10]) + [{"text": texts[14], "label": "neg"},
                                                                            {"text": texts[11], "label": "neg"}])
    prepared = prepare_dataset(section(train_file=str(train), validation_file=str(dev), test_file=str(test)),
                               seed=0, out_dir=tmp_path / "out")
    assert prepared.counts == {"train": 10, "validation": 3, "test": 3}
    reasons = [(r["line"], r["reason"]) for r in read_jsonl(tmp_path / "out" / "rejected.jsonl")]
    assert reasons == [(11, f"exact duplicate of {test}:2 (test set)"),
                       (12, f"exact duplicate of {dev}:2 (validation set)")]
    assert prepared.report["decontamination"]["by_eval_split"] == {"test": 1, "validation": 1}


# ------------------------------------------------------------------------------------------- chat


def alpaca_slice(tmp_path: Path, n: int = 6) -> tuple[Path, list[dict]]:
    """The first ``n`` demo records as a JSON array, one record per line (record i on line i + 2)."""
    records = json.loads(ALPACA_DEMO.read_text(encoding="utf-8"))[:n]
    path = tmp_path / "alpaca.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n",
                    encoding="utf-8")
    return path, records


SHAREGPT = [
    {"conversations": [{"from": "human", "value": "what colour is the sky on a clear day"},
                       {"from": "gpt", "value": "the sky is blue on a clear day"}]},
    {"conversations": [{"from": "human", "value": "name a large animal that lives in africa"},
                       {"from": "gpt", "value": "the elephant lives in africa"}]},
    {"conversations": [{"from": "human", "value": "which planet is closest to the sun"},
                       {"from": "robot", "value": "mercury is the closest planet"}]},
    {"system": "answer briefly", "conversations": [{"from": "human", "value": "how many legs does a spider have"},
                                                   {"from": "gpt", "value": "eight legs"}]},
]


def test_alpaca_and_sharegpt_become_messages(tmp_path):
    alpaca, records = alpaca_slice(tmp_path)
    sharegpt = write_jsonl(tmp_path / "chat.jsonl", SHAREGPT)
    cfg = section(sources=[{"path": str(alpaca)}, {"path": str(sharegpt)}], max_rejected_fraction=0.5,
                  split={"validation_fraction": 0.2})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out", labels=None)
    rows = [r for s in ("train", "validation", "test") for r in prepared.rows(s)]
    assert prepared.counts == {"train": 7, "validation": 2, "test": 0}
    assert prepared.label_names is None
    assert all(set(r) == {"messages", "_origin"} for r in rows)
    by_origin = {r["_origin"]: r["messages"] for r in rows}
    assert set(by_origin) == {f"{alpaca}:{i + 2}" for i in range(6)} | {f"{sharegpt}:{i}" for i in (1, 2, 4)}
    for i, record in enumerate(records):
        messages = by_origin[f"{alpaca}:{i + 2}"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"].startswith(record["instruction"].strip())
        if record["input"].strip():
            assert record["input"].strip()[:30] in messages[0]["content"]
        assert messages[1]["content"][:40] == record["output"].strip()[:40]
    assert by_origin[f"{sharegpt}:4"] == [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "how many legs does a spider have"},
        {"role": "assistant", "content": "eight legs"},
    ]
    [rejected] = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert (rejected["file"], rejected["line"], rejected["stage"]) == (str(sharegpt), 3, "read")
    assert rejected["reason"].startswith("turn 2: unknown role 'robot' (allowed: system, human, user, gpt, "
                                         "assistant, model; add it to role_map")
    assert '"robot"' in rejected["raw"]
    assert "label_plot" not in prepared.report.get("plots", {})
    assert not (tmp_path / "out" / "label_distribution.png").exists()


def test_chat_duplicates_compare_roles_and_texts(tmp_path):
    same = SHAREGPT[0]
    swapped = {"conversations": [{"from": "human", "value": "the sky is blue on a clear day"},
                                 {"from": "gpt", "value": "what colour is the sky on a clear day"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [same, SHAREGPT[1], same, swapped, SHAREGPT[3]])
    # Exact matching only: with the same words in both turns, the swapped chat shares most of its
    # character shingles with the original (MinHash estimates ~0.8), so near matching would drop it.
    cfg = section(train_file=str(path), split={"validation_fraction": 0.2}, dedup={"near": False},
                  decontaminate={"near": False})
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out", labels=None)
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert [(r["line"], r["reason"]) for r in rejected] == [(3, f"exact duplicate of {path}:1")]
    assert rejected[0]["raw"] == ("user: what colour is the sky on a clear day\n"
                                  "assistant: the sky is blue on a clear day")
    assert sum(prepared.counts.values()) == 4


# ----------------------------------------------------------------------------------------- errors


def test_too_many_rejected_rows_is_a_data_error(tmp_path):
    records = labelled(sentences(18, seed=8)) + ['{"text": broken', {"label": "pos"}]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    cfg = section(train_file=str(path), max_rejected_fraction=0.05)
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    assert str(err.value) == (
        f"{path}: 2 of 20 rows rejected (10.0% > data.max_rejected_fraction 5%); most common: "
        "1 x malformed JSON; 1 x missing column 'text'. See rejected.jsonl for every row and reason."
    )
    # the evidence is on disk even though the run failed
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejected] == [(19, "malformed JSON"),
                                                                          (20, "missing column 'text'")]


def test_unknown_label_is_rejected_naming_the_allowed_ones(tmp_path):
    texts = sentences(12, seed=9)
    records = [{"text": t, "label": ("negative", "positive", 0, 1)[i % 4]} for i, t in enumerate(texts[:10])]
    records += [{"text": texts[10], "label": "x"}, {"text": texts[11], "label": 2}]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    cfg = section(train_file=str(path), label_names=["negative", "positive"], max_rejected_fraction=0.2)
    prepared = prepare_dataset(cfg, seed=0, out_dir=tmp_path / "out")
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert [(r["line"], r["stage"], r["reason"]) for r in rejected] == [
        (11, "read", "unknown label 'x' (allowed: negative, positive)"),
        (12, "read", "unknown label '2' (allowed: negative, positive)"),
    ]
    # indices are rewritten to the names
    labels = Counter(r["label"] for s in ("train", "validation") for r in prepared.rows(s))
    assert labels == {"negative": 5, "positive": 5}
    assert prepared.label_names == ["negative", "positive"]


def test_no_usable_rows_is_a_data_error(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "\u200b", "label": "a"}, {"text": "\u200b", "label": "b"}])
    with pytest.raises(DataError) as err:
        prepare_dataset(section(train_file=str(path)), seed=0, out_dir=tmp_path / "out")
    assert str(err.value) == ("no usable training rows: every row was rejected or removed "
                              f"(see {tmp_path / 'out' / 'rejected.jsonl'})")


def test_undecodable_row_is_rejected_and_the_rest_prepared(tmp_path):
    good = "".join(json.dumps(r) + "\n" for r in labelled(sentences(10, seed=10))).encode()
    path = tmp_path / "train.jsonl"
    path.write_bytes(good + b'{"text": "caf\xe9 au lait", "label": "pos"}\n')
    prepared = prepare_dataset(section(train_file=str(path), max_rejected_fraction=0.2), seed=0,
                               out_dir=tmp_path / "out")
    [rejected] = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert (rejected["line"], rejected["reason"]) == (11, UNDECODABLE)
    assert sum(prepared.counts.values()) == 10
