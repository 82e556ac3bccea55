"""The `data:` stage: sources -> clean -> deduplicate -> split -> decontaminate -> weight -> augment.

Order matters, and each choice is deliberate:

* **Clean before dedup**: two rows that differ only in mojibake or spacing are duplicates.
* **Dedup before split**: otherwise copies of one row land in train and validation and the
  validation score measures memory, not generalisation.
* **Decontaminate after split**, against the evaluation rows (given files or held-out splits):
  near-copies that survived dedup (threshold) or came with a separate validation file are caught
  here, and the report names the evaluation row each one copies.
* **Weights and augmentation last, on the training split only**: repeated or paraphrased rows
  must never be counted as duplicates, nor reach validation or test next to their original.

Memory: the first pass (read, clean, dedup) streams and spills kept rows to disk, holding only
labels and group keys; the split is computed from those and a second streaming pass routes rows to
their split files. Only the evaluation rows (and the training rows when augmentation is on) are
held in memory, so preparing a JSONL larger than RAM works.

Outputs in ``out_dir``: ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` (one example per line,
with ``_origin`` "file:line"), ``rejected.jsonl`` (every row not used, with its reason, including
duplicates with the row they copy), ``data_report.{json,md}`` and the distribution plots.

Crash consistency: everything is written into a temporary folder (``tuneforge.atomic.staged_dir``)
that replaces ``out_dir`` whole when preparation ends, so a kill mid-prepare leaves the previous
complete folder (or none) and the next run prepares again; nothing reads a half-written split. A
``DataError`` swaps its folder in too: its ``rejected.jsonl`` and report say why.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.atomic import staged_dir
from tuneforge.data.clean import Cleaner
from tuneforge.data.dedup import Duplicate, decontaminate, deduplicate
from tuneforge.data.labels import LabelChecker, label_checker
from tuneforge.data.records import Row, content_key, dump_row, load_row, row_group, row_label, row_to_json
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.report import DataReport, reason_category
from tuneforge.data.sources import SourceConfig, apply_weights, iter_source, source_name
from tuneforge.data.split import split_indices
from tuneforge.errors import DataError

SPLITS = ("train", "validation", "test")
#: ``TaskSpec.labels`` of the tasks that train on preference rows (DPO-style, reward models, KTO).
PREFERENCE = "preference"


@dataclass
class PreparedDataset:
    """Where the prepared splits are, plus what training needs to know about them."""

    out_dir: Path
    label_names: list[str] | None
    counts: dict[str, int]
    report: dict[str, Any] = field(default_factory=dict)

    def path(self, split: str) -> Path:
        return self.out_dir / f"{split}.jsonl"

    def rows(self, split: str) -> list[dict[str, Any]]:
        """The prepared examples of ``split`` as written (``row_to_json`` records)."""
        path = self.path(split)
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]


class _RejectWriter:
    """Streams rejected rows to ``rejected.jsonl`` as they happen (never accumulated in memory)."""

    def __init__(self, path: Path, report: DataReport):
        self.fh = open(path, "w", encoding="utf-8", errors="replace", newline="\n")
        self.report = report
        self.by_source: dict[str, Counter] = {}

    def reasons(self, source: str) -> str:
        top = self.by_source.get(source, Counter()).most_common(3)
        return "; ".join(f"{n} x {reason}" for reason, n in top)

    def write(self, rejected: RejectedRow, stage: str, source: str) -> None:
        record = {"file": rejected.file, "line": rejected.line, "stage": stage, "reason": rejected.reason,
                  "raw": rejected.raw}
        self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.report.add_rejected(rejected, stage=stage)
        if stage == "read":  # what max_rejected_fraction counts; the error names the top reasons
            self.by_source.setdefault(source, Counter())[reason_category(rejected.reason)] += 1

    def close(self) -> None:
        self.fh.close()


def prepare_dataset(data_cfg, *, seed: int, out_dir: Path, base_dir: Path | None = None,
                    labels: str | None = "class", progress=None, require_reply: bool = True) -> PreparedDataset:
    """Run the whole data stage for ``data_cfg`` (a recipe's ``DataSection``) into ``out_dir`` (replaced whole).

    ``labels`` is the task's label mode (``TaskSpec.labels``); ``"preference"``: the rows must be preference
    rows (pairs or KTO records), and no other task takes them. ``require_reply=False`` (a task that
    generates its replies: GRPO) keeps chats that end with a user turn, as prompts."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir, keep_on=(DataError,)) as work:
        prepared = _prepare_into(work, out_dir, data_cfg, seed=seed, base_dir=base_dir, labels=labels,
                                 progress=progress, require_reply=require_reply)
    return prepared


def _prepare_into(work: Path, out_dir: Path, data_cfg, *, seed: int, base_dir: Path | None, labels: str | None,
                  progress, require_reply: bool = True) -> PreparedDataset:
    """``prepare_dataset``'s body: files go to ``work`` (the staged folder), messages name ``out_dir``."""
    report = DataReport()
    rejects = _RejectWriter(work / "rejected.jsonl", report)
    # Preference rows are checked by their sources (a boolean KTO label, chosen != rejected).
    checker = label_checker(None if labels == PREFERENCE else labels, data_cfg.label_names, data_cfg.label_separator,
                            getattr(data_cfg, "label_offset", 0))
    stream_options = {"preference": labels == PREFERENCE, "require_reply": require_reply}
    cleaner = Cleaner(data_cfg.clean)
    read_counts: dict[str, Counter] = {}
    try:
        _check_class_sources(data_cfg, labels)
        # ---- pass 1: read, validate labels, clean, dedup; spill kept training rows to disk
        spill = work / ".kept.jsonl"
        split_labels: list[Any] = []  # per kept row, for stratification
        groups: list[Any] = []
        duplicates: list[dict] = []
        with report.timed("read+clean+dedup"), open(spill, "w", encoding="utf-8") as fh:
            stream = _clean_stream(data_cfg.training_sources(), base_dir, cleaner, checker, rejects, report,
                                   read_counts, progress, data_cfg.label_names, **stream_options)
            for item in deduplicate(stream, data_cfg.dedup, workdir=work):
                if isinstance(item, Duplicate):
                    rejects.write(item.rejected(), "dedup", "")
                    duplicates.append(_pair(item))
                    continue
                fh.write(dump_row(item) + "\n")
                # A KTO row's boolean label stratifies like a class (a pair has none).
                split_labels.append(row_label(item) if labels in ("class", PREFERENCE) else None)
                groups.append(row_group(item))  # a preference row without group_column: its prompt
        # Label names are settled by the training rows alone: an evaluation label never seen in
        # training is rejected, not silently turned into a class the model cannot learn. Settled
        # before the reject count: 1-based class indices are refused here with their own message,
        # not as the rows they would reject.
        names = checker.finish() if checker is not None else None
        _check_rejected(read_counts, data_cfg.max_rejected_fraction, rejects)
        if not split_labels:
            raise DataError("no usable training rows: every row was rejected or removed "
                            f"(see {out_dir / 'rejected.jsonl'})")

        # ---- evaluation files (cleaned like training rows, never deduplicated against them)
        given = {}
        for split, source in data_cfg.evaluation_sources().items():
            rows = list(_clean_stream([source], base_dir, cleaner, checker, rejects, report, read_counts, None,
                                      data_cfg.label_names, **stream_options))
            if not rows:
                raise DataError(f"no usable rows in the {split} file {source.path}")
            given[split] = rows
        _check_rejected(read_counts, data_cfg.max_rejected_fraction, rejects)

        # ---- split what was not given as a file
        split_cfg = data_cfg.split
        parts = split_indices(
            len(split_labels),
            labels=split_labels if split_cfg.stratify and any(k is not None for k in split_labels) else None,
            groups=groups if split_cfg.grouped and any(g is not None for g in groups) else None,
            validation_fraction=0.0 if "validation" in given else split_cfg.validation_fraction,
            test_fraction=0.0 if "test" in given else split_cfg.test_fraction,
            seed=seed, sequential=split_cfg.order == "sequential",
        )
        where = {i: "validation" for i in parts.validation}
        where.update({i: "test" for i in parts.test})
        del split_labels, groups
        held, kept_texts = _held_out_rows(spill, where, given, {d["duplicate_of"] for d in duplicates})
        _fill_duplicate_texts(duplicates, kept_texts)
        report.set_duplicates(duplicates)

        # ---- pass 2: training rows, decontaminated against the evaluation rows, then weighted
        contaminated: list[dict] = []
        weights = {source_name(s): s.weight for s in data_cfg.training_sources() if s.weight != 1.0}
        train_rows = _train_stream(spill, where)
        with report.timed("decontaminate"):
            decon = decontaminate(train_rows, {k: v for k, v in held.items() if v}, data_cfg.decontaminate,
                                  data_cfg.dedup, workdir=work)
            kept_train = _drop_contaminated(decon, data_cfg.decontaminate.action, rejects, contaminated)
            sampling: dict[str, Counter] = {}
            counted = _count_by_source(kept_train, sampling, "in")
            weighted = apply_weights(counted, weights, seed) if weights else counted
            capped = _first(weighted, data_cfg.max_train_samples)
            n_train = _write_split(work / "train.jsonl", _count_by_source(capped, sampling, "out"), report)
        if weights or data_cfg.max_train_samples is not None:
            report.set_sampling({name: {"in": c["in"], "out": c["out"]} for name, c in sampling.items()})
        _fill_duplicate_texts(contaminated, _texts_of(held, {h["duplicate_of"] for h in contaminated}))
        report.set_decontamination(contaminated, data_cfg.decontaminate.action)
        spill.unlink()

        # ---- augmentation: training split only, after everything that compares rows
        aug = data_cfg.augment
        if aug.eda.enabled or aug.back_translation.enabled or aug.paraphrase.enabled:
            with report.timed("augment"):
                n_train = _augment_train(work / "train.jsonl", data_cfg, seed, report, n_train)
        counts = {"train": n_train}
        for split in ("validation", "test"):
            counts[split] = _write_split(work / f"{split}.jsonl", iter(held[split]), report)
        if counts["train"] == 0 or (counts["validation"] == 0 and split_cfg.validation_fraction > 0):
            raise DataError(f"no usable rows after preparation: {counts} (see {out_dir / 'data_report.md'})")
        report.set_sources({name: {"read": c["read"], "rejected": c["rejected"], "kept": c["read"] - c["rejected"]}
                            for name, c in read_counts.items()})
        report.set_cleaning({k: v for k, v in cleaner.stats().items() if isinstance(v, dict)})
        for name in SPLITS:
            report.set_split_counts(name, **_split_stats(work / f"{name}.jsonl"))
    finally:
        rejects.close()
    report.write(work)
    return PreparedDataset(out_dir, names, counts, report.to_dict())


def _source_of(row: Row) -> str:
    from tuneforge.data.sources import row_source_name

    return row_source_name(row)


def _pair(dup: Duplicate) -> dict:
    """The report's record of a dropped row: itself, the row it copies, how similar, a snippet."""
    record = {"row": dup.row.origin, "duplicate_of": dup.of, "kind": dup.kind,
              "similarity": round(dup.similarity, 4), "text": _snippet(dup.row)}
    if dup.against != "train":
        record["eval_split"] = dup.against
    return record


def _texts_of(held: dict[str, list[Row]], origins: set[str]) -> dict[str, str]:
    return {row.origin: _snippet(row) for rows in held.values() for row in rows if row.origin in origins}


def _fill_duplicate_texts(records: list[dict], texts: dict[str, str]) -> None:
    """Add the text of the row each dropped row copies. A row that copies a row which was itself
    dropped (a chain of exact copies) has no kept text to show; the origin still names it."""
    for record in records:
        if record["duplicate_of"] in texts:
            record["duplicate_text"] = texts[record["duplicate_of"]]


def _snippet(row: Row) -> str:
    from tuneforge.data.records import content_key

    text = content_key(row)
    return text if len(text) <= 200 else text[:197] + "..."


def _check_class_sources(data_cfg, labels: str | None) -> None:
    """A source's ``label``, ``format: class_folders`` and ``data.label_offset`` give or read class labels:
    a task without classes (regression, NER, language modelling) would drop or misread them."""
    if labels in ("class", "multi"):
        return
    kind = labels or "none"
    if getattr(data_cfg, "label_offset", 0):
        raise DataError(f"data.label_offset only applies to classification labels (this task's labels: {kind}); "
                        "remove it")
    sources = list(data_cfg.training_sources()) + list(data_cfg.evaluation_sources().values())
    for source in sources:
        if source.label is not None:
            raise DataError(f"source {source_name(source)}: label '{source.label}' only applies to classification "
                            f"data (this task's labels: {kind}); remove label")
        if source.format == "class_folders":
            raise DataError(f"source {source_name(source)}: format class_folders labels each file with its "
                            f"subfolder's name, which only classification uses (this task's labels: {kind}); "
                            "use format text_files for unlabelled text")


def _clean_stream(sources: Sequence[SourceConfig], base_dir: Path | None, cleaner: Cleaner, labels: LabelChecker | None,
                  rejects: _RejectWriter, report: DataReport, read_counts: dict[str, Counter],
                  progress, label_names: list[str] | None = None, *, preference: bool = False,
                  require_reply: bool = True) -> Iterator[Row]:
    for source in sources:
        name = source_name(source)
        counts = read_counts.setdefault(name, Counter())
        for item in iter_source(source, base_dir, label_names, require_reply=require_reply):
            counts["read"] += 1
            if progress is not None:
                progress()
            if isinstance(item, RejectedRow):
                counts["rejected"] += 1
                rejects.write(item, "read", name)
                continue
            if (item.kind == PREFERENCE) != preference:
                raise DataError(_kind_mismatch(name, item, preference))
            if labels is not None and item.kind == labels.kind:
                checked = labels.check(item)
                if isinstance(checked, str):
                    counts["rejected"] += 1
                    rejects.write(RejectedRow(item.source, item.line, checked, content_key(item)), "read", name)
                    continue
                item = checked
            report.add_before(item)
            cleaned = cleaner(item)
            if isinstance(cleaned, RejectedRow):
                rejects.write(cleaned, "clean", name)
                continue
            yield cleaned


def _kind_mismatch(name: str, row: Row, preference: bool) -> str:
    """Why a source's rows do not fit the task: preference rows for another task, or the reverse."""
    if preference:
        return (f"source {name}: {row.origin} is a {row.kind} row, but this task trains on preference data: pairs "
                "(prompt + chosen + rejected as in TRL; HH-RLHF's chosen/rejected transcripts; LLaMA-Factory's "
                "conversations + chosen + rejected) or KTO records (messages, or prompt + completion, with a "
                "boolean label); set the source's format to preference or kto if its records hold them under "
                "these keys")
    return (f"source {name}: {row.origin} is a preference record (chosen/rejected, or a completion with a boolean "
            "label), which only the preference tasks (preference, reward_model) train on; use one of them, or "
            "give this task its own kind of data")


def _check_rejected(read_counts: dict[str, Counter], limit: float, rejects: _RejectWriter) -> None:
    for name, c in read_counts.items():
        if c["read"] and c["rejected"] / c["read"] > limit:
            raise DataError(
                f"{name}: {c['rejected']} of {c['read']} rows rejected ({100 * c['rejected'] / c['read']:.1f}% > "
                f"data.max_rejected_fraction {100 * limit:g}%); most common: {rejects.reasons(name)}. "
                "See rejected.jsonl for every row and reason."
            )


def _held_out_rows(spill: Path, where: dict[int, str], given: dict[str, list[Row]],
                   origins: set[str]) -> tuple[dict[str, list[Row]], dict[str, str]]:
    """Validation and test rows (the given files' rows, plus the spilled rows the split sent there),
    and, from the same pass over the spill file, snippets of the kept rows named by ``origins``
    (the rows that dropped duplicates copy)."""
    held: dict[str, list[Row]] = {"validation": list(given.get("validation", [])), "test": list(given.get("test", []))}
    texts: dict[str, str] = {}
    with open(spill, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i not in where and not origins:
                continue
            row = load_row(line)
            if i in where:
                held[where[i]].append(row)
            if row.origin in origins:
                texts[row.origin] = _snippet(row)
    return held, texts


def _train_stream(spill: Path, where: dict[int, str]) -> Iterator[Row]:
    with open(spill, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i not in where:
                yield load_row(line)


def _drop_contaminated(items: Iterable[Row | Duplicate], action: str, rejects: _RejectWriter,
                       hits: list[dict]) -> Iterator[Row]:
    for item in items:
        if isinstance(item, Duplicate):
            hits.append(_pair(item))
            if action == "drop":
                rejects.write(item.rejected(), "decontaminate", "")
                continue
            item = item.row
        yield item


def _count_by_source(rows: Iterable[Row], counts: dict[str, Counter], key: str) -> Iterator[Row]:
    for row in rows:
        counts.setdefault(_source_of(row), Counter())[key] += 1
        yield row


def _first(rows: Iterable[Row], limit: int | None) -> Iterator[Row]:
    """The first ``limit`` rows; the rest are still consumed so the "in" counts stay complete."""
    for n, row in enumerate(rows):
        if limit is None or n < limit:
            yield row


def _write_split(path: Path, rows: Iterator[Row], report: DataReport) -> int:
    n = 0
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            if not row.augmented and "repeat" not in row.extra:  # weight repeats are not new data
                report.add_after(row)
            fh.write(json.dumps(row_to_json(row), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _split_stats(path: Path) -> dict[str, Any]:
    rows = augmented = 0
    labels: Counter = Counter()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            rows += 1
            augmented += bool(record.get("_augmented"))
            if record.get("label") is not None:
                labels[str(record["label"])] += 1
    return {"rows": rows, "augmented": augmented, "labels": dict(sorted(labels.items()))}


def _augment_train(path: Path, data_cfg, seed: int, report: DataReport, n_train: int) -> int:
    from tuneforge.data.augment import augment_rows

    with open(path, encoding="utf-8") as fh:
        rows = [row_from_output(json.loads(line)) for line in fh]
    result = augment_rows(rows, data_cfg.augment, seed)
    report.set_augmentation({op: c["generated"] for op, c in result.stats.items()})
    with open(path, "a", encoding="utf-8") as fh:
        for row in result.rows:
            fh.write(json.dumps(row_to_json(row), ensure_ascii=False) + "\n")
    return n_train + len(result.rows)


def row_from_output(record: dict[str, Any]) -> Row:
    """Rebuild a ``Row`` from a prepared-split record (``row_to_json``)."""
    source, _, line = record.pop("_origin").rpartition(":")
    if "prompt" in record and ("chosen" in record or "completion" in record):
        kind = PREFERENCE
    elif "messages" in record:
        kind = "chat"
    elif "tokens" in record:
        kind = "tokens"
    elif "target" in record and "text" not in record:
        kind = "pair"
    else:
        kind = "text"
    record.pop("_augmented", None)
    record.pop("_derived_from", None)
    return Row(kind, record, source, int(line))
