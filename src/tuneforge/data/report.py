"""The data report: what data preparation did to the data, for people and for machines.

Preparation changes data silently unless someone writes it down: a cleaning rule that empties a
quarter of the rows, a dedup that removes every validation example, a split with no rare class.
``DataReport`` collects those facts while the pipeline streams rows, then ``write`` produces:

* ``data_report.json``: everything, machine-readable (every duplicate pair, not only the first ones),
  so a later run or a notebook can compare preparations;
* ``data_report.md``: the summary a person reads (tables per stage, rule, rejection reason and
  split, the first duplicate pairs with their texts);
* ``length_distribution.png`` and ``label_distribution.png`` (see ``report_plots``).

Rejected rows themselves go to ``rejected.jsonl`` (``rejects.write_rejected``); the report counts
them and points there. Memory: per row only two integers are kept per side (before/after), in
``array("I")``, so a million rows cost 16 MB; label counts are counters.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneforge.data.records import Row, content_key, row_label, row_texts
from tuneforge.data.rejects import RejectedRow

REPORT_VERSION = 1
JSON_FILE, MARKDOWN_FILE = "data_report.json", "data_report.md"
LENGTH_PLOT, LABEL_PLOT = "length_distribution.png", "label_distribution.png"
REJECTED_FILE = "rejected.jsonl"
#: Duplicate/decontamination pairs and rejection reasons listed in the Markdown (all are in the JSON).
MARKDOWN_PAIRS, MARKDOWN_REASONS = 20, 10
#: Text kept per duplicate pair: enough to recognise the row without bloating the JSON.
SNIPPET_CHARS = 200
_MD_SNIPPET_CHARS = 60
_UINT32_MAX = 2**32 - 1


def row_lengths(row: Row) -> tuple[int, int]:
    """``(characters, whitespace words)`` over all texts of ``row`` (every message of a chat, source
    plus target of a pair). Words, not model tokens: the report must not need a tokenizer."""
    texts = row_texts(row)
    return sum(len(t) for t in texts), sum(len(t.split()) for t in texts)


def pair_record(
    row: Row, duplicate_of: Row, *, kind: str, similarity: float, eval_split: str | None = None
) -> dict[str, Any]:
    """A duplicate (or, with ``eval_split``, a decontamination hit) in the shape the report stores:
    the dropped row, the row it duplicates, and short snippets of both texts."""
    record: dict[str, Any] = {
        "row": row.origin, "duplicate_of": duplicate_of.origin, "kind": kind, "similarity": float(similarity),
        "text": content_key(row)[:SNIPPET_CHARS], "duplicate_text": content_key(duplicate_of)[:SNIPPET_CHARS],
    }
    if eval_split is not None:
        record["eval_split"] = eval_split
    return record


class DataReport:
    """Accumulates statistics while data is prepared; ``write`` turns them into report files.

    Call ``add_before`` on every row read (before cleaning) and ``add_after`` on every row kept
    once cleaning, deduplication and decontamination are done (not on augmented rows: those are
    counted by ``set_augmentation`` and ``set_splits``). The ``set_*`` methods take copies, so the
    caller may keep changing its own dicts and lists.
    """

    def __init__(self) -> None:
        self._lengths = {side: {"chars": array("I"), "words": array("I")} for side in ("before", "after")}
        self._labels: dict[str, Counter] = {"before": Counter(), "after": Counter()}
        self._rejected_by_reason: Counter = Counter()
        self._rejected_by_stage: Counter = Counter()
        self.sources: dict[str, dict[str, int]] = {}
        self.cleaning: dict[str, dict[str, int]] = {}
        self.duplicates: list[dict[str, Any]] = []
        self.decontamination: list[dict[str, Any]] = []
        self.decontamination_action = "drop"
        self.augmentation: dict[str, int] = {}
        self.sampling: dict[str, dict[str, int]] = {}
        self.splits: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ streaming accumulation

    def add_before(self, row: Row) -> None:
        self._add("before", row)

    def add_after(self, row: Row) -> None:
        self._add("after", row)

    def _add(self, side: str, row: Row) -> None:
        chars, words = row_lengths(row)
        self._lengths[side]["chars"].append(min(chars, _UINT32_MAX))
        self._lengths[side]["words"].append(min(words, _UINT32_MAX))
        label = row_label(row)
        if label is not None:
            self._labels[side][str(label)] += 1

    def add_rejected(self, rejected: RejectedRow, *, stage: str) -> None:
        """Count one rejected row under ``stage`` ("read", "clean", "dedup", ...) and its reason."""
        self._rejected_by_stage[stage] += 1
        self._rejected_by_reason[reason_category(rejected.reason)] += 1

    # ------------------------------------------------------------------------------- setters

    def set_sources(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Per source name: ``{"read": n, "rejected": n, "kept": n}``."""
        self.sources = {name: dict(c) for name, c in counts.items()}

    def set_cleaning(self, stats: Mapping[str, Mapping[str, int]]) -> None:
        """Per cleaning rule, in application order: ``{"changed": n, "removed": n}``."""
        self.cleaning = {rule: dict(c) for rule, c in stats.items()}

    def set_duplicates(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Every dropped duplicate: ``{"row", "duplicate_of", "kind": "exact"|"near", "similarity"}``
        plus optional ``text``/``duplicate_text`` snippets (``pair_record`` builds these)."""
        self.duplicates = [dict(r) for r in records]

    def set_decontamination(self, records: Sequence[Mapping[str, Any]], action: str = "drop") -> None:
        """Every training row dropped for matching an evaluation row: the duplicate shape plus
        ``eval_split`` (which evaluation split it matched)."""
        self.decontamination = [dict(r) for r in records]
        self.decontamination_action = action  # "report": the rows were kept, only listed

    def set_augmentation(self, counts: Mapping[str, int]) -> None:
        """Rows added per augmentation operation (e.g. ``{"eda_swap": 120, "back_translation": 40}``)."""
        self.augmentation = dict(counts)

    def set_splits(self, splits: Mapping[str, Iterable[Row]]) -> None:
        """Final rows per split name (one pass each): sizes, augmented rows and label counts."""
        self.splits = {}
        for name, rows in splits.items():
            total = augmented = 0
            labels: Counter = Counter()
            for row in rows:
                total += 1
                augmented += row.augmented
                if (label := row_label(row)) is not None:
                    labels[str(label)] += 1
            self.set_split_counts(name, rows=total, augmented=augmented, labels=labels)

    def set_sampling(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Training rows per source before and after ``weight`` resampling and ``max_train_samples``:
        ``{source: {"in": n, "out": m}}``; rows sampled away are reported here, not silently lost."""
        self.sampling = {name: dict(c) for name, c in counts.items()}

    def set_split_counts(self, name: str, *, rows: int, augmented: int, labels: Mapping[str, int]) -> None:
        """One split's counts, for a pipeline that streams the split to disk instead of holding it."""
        self.splits[name] = {"rows": rows, "augmented": augmented, "labels": _ordered(labels)}

    def set_timing(self, stage: str, seconds: float) -> None:
        self.timings[stage] = float(seconds)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """``with report.timed("clean"): ...`` adds the block's wall time to ``stage``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    # -------------------------------------------------------------------------------- output

    def to_dict(self) -> dict[str, Any]:
        """Everything, as plain JSON-ready data (the content of ``data_report.json``)."""
        by_eval_split = Counter(r.get("eval_split") for r in self.decontamination)
        return {
            "version": REPORT_VERSION,
            "sources": self.sources,
            "rows": {side: len(lengths["chars"]) for side, lengths in self._lengths.items()},
            "lengths": {
                side: {unit: length_stats(values) for unit, values in lengths.items()}
                for side, lengths in self._lengths.items()
            },
            "labels": {side: _ordered(counts) for side, counts in self._labels.items()},
            "cleaning": self.cleaning,
            "rejected": {
                "total": sum(self._rejected_by_stage.values()),
                "by_stage": dict(self._rejected_by_stage),
                "by_reason": dict(self._rejected_by_reason.most_common()),
                "file": REJECTED_FILE,
            },
            "duplicates": {
                "exact": sum(1 for r in self.duplicates if r.get("kind") == "exact"),
                "near": sum(1 for r in self.duplicates if r.get("kind") == "near"),
                "pairs": self.duplicates,
            },
            "decontamination": {
                "total": len(self.decontamination),
                "action": self.decontamination_action,
                "by_eval_split": {str(k): v for k, v in by_eval_split.items()},
                "hits": self.decontamination,
            },
            "augmentation": {"total": sum(self.augmentation.values()), "by_operation": self.augmentation},
            "sampling": self.sampling,
            "splits": self.splits,
            "timings_s": {stage: round(s, 4) for stage, s in self.timings.items()},
        }

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write the JSON, the Markdown and the plots into ``out_dir``; returns their paths by kind
        (``json``, ``markdown``, ``length_plot`` and, when rows have labels, ``label_plot``)."""
        from tuneforge.data.report_plots import plot_label_distribution, plot_length_distribution

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        if plot_length_distribution(self._lengths["before"], self._lengths["after"], out_dir / LENGTH_PLOT):
            paths["length_plot"] = out_dir / LENGTH_PLOT
        labels = {side: _ordered(counts) for side, counts in self._labels.items()}
        if plot_label_distribution(labels["before"], labels["after"], out_dir / LABEL_PLOT):
            paths["label_plot"] = out_dir / LABEL_PLOT
        data = self.to_dict()
        data["plots"] = {kind: path.name for kind, path in paths.items()}
        paths["json"] = _write_atomic(out_dir / JSON_FILE, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        paths["markdown"] = _write_atomic(out_dir / MARKDOWN_FILE, render_markdown(data))
        return paths


def reason_category(reason: str) -> str:
    """The part of a rejection reason that names the problem, not the row's value:
    ``"max_chars: 5012 > 4000"`` -> ``"max_chars"``; ``"unknown label 'x' (allowed: a, b)"`` ->
    ``"unknown label 'x'"``. The same rule ``prepare.py`` uses for its error summary."""
    return reason.split(":")[0].split(" (")[0].strip() or reason


def length_stats(values: Sequence[int]) -> dict[str, float | int]:
    """count, min, mean, median, 95th percentile and max (only count when there are no values)."""
    import numpy as np

    if not len(values):
        return {"count": 0}
    data = np.frombuffer(values, dtype=np.uint32) if isinstance(values, array) else np.asarray(values)
    return {
        "count": int(data.size), "min": int(data.min()), "mean": round(float(data.mean()), 2),
        "median": float(np.median(data)), "p95": float(np.percentile(data, 95)), "max": int(data.max()),
    }


def _label_order(label: str) -> tuple:
    # Integer labels in numeric order ("2" before "10"), then names alphabetically.
    try:
        return (0, int(label), label)
    except ValueError:
        return (1, 0, label)


def _ordered(counts: Mapping[str, int]) -> dict[str, int]:
    return {label: counts[label] for label in sorted(counts, key=_label_order)}


def _write_atomic(path: Path, text: str) -> Path:
    # Write-then-rename: a crash mid-write never leaves a truncated report that looks complete.
    tmp = path.with_name(path.name + ".tmp")
    # errors="replace": snippets of undecodable input may hold lone surrogates.
    tmp.write_text(text, encoding="utf-8", errors="replace")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ markdown


def render_markdown(data: Mapping[str, Any]) -> str:
    """The human summary, rendered from the ``to_dict`` data (plus its ``plots`` entry)."""
    sections = [
        "# Data report",
        "## Rows per stage\n\n" + _stage_table(data),
        _sources_section(data["sources"]),
        _cleaning_section(data["cleaning"]),
        _rejected_section(data["rejected"]),
        _pairs_section("Duplicates", data["duplicates"]["pairs"], summary=(
            f"{data['duplicates']['exact']} exact and {data['duplicates']['near']} near duplicates removed."
        )),
        _pairs_section("Decontamination", data["decontamination"]["hits"], summary=(
            f"{_rows(data['decontamination']['total'])} "
            + ("kept in training (decontaminate.action: report) although matching" if
               data["decontamination"].get("action") == "report" else "removed from training for matching")
            + " an evaluation row"
            + "".join(f"; {n} in {split}" for split, n in data["decontamination"]["by_eval_split"].items())
            + "."
        )),
        _augmentation_section(data["augmentation"]),
        _sampling_section(data.get("sampling", {})),
        _splits_section(data),
        _lengths_section(data["lengths"]),
        _plots_section(data.get("plots", {})),
        _timings_section(data["timings_s"]),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _sampling_section(sampling: Mapping[str, Mapping[str, int]]) -> str:
    if not sampling:
        return ""
    lines = ["## Training-set sampling", "",
             "Rows per source before and after source weights and data.max_train_samples.", "",
             "| source | in | out |", "|---|---:|---:|"]
    lines += [f"| {name} | {c.get('in', 0):,} | {c.get('out', 0):,} |" for name, c in sampling.items()]
    return "\n".join(lines)


def _stage_table(data: Mapping[str, Any]) -> str:
    rows: list[list[Any]] = []
    if data["sources"]:
        rows.append(["read", sum(c.get("read", 0) for c in data["sources"].values())])
        rows.append(["rejected while reading", sum(c.get("rejected", 0) for c in data["sources"].values())])
    rows.append(["before cleaning", data["rows"]["before"]])
    if data["cleaning"]:
        rows.append(["removed by cleaning", sum(c.get("removed", 0) for c in data["cleaning"].values())])
    rows.append(["exact duplicates removed", data["duplicates"]["exact"]])
    rows.append(["near duplicates removed", data["duplicates"]["near"]])
    kept = data["decontamination"].get("action") == "report"
    rows.append(["removed by decontamination", 0 if kept else data["decontamination"]["total"]])
    if kept:
        rows.append(["matching an evaluation row, kept (action: report)", data["decontamination"]["total"]])
    rows.append(["kept (after cleaning)", data["rows"]["after"]])
    rows.append(["added by augmentation", data["augmentation"]["total"]])
    for name, split in data["splits"].items():
        rows.append([f"{name} split", split["rows"]])
    return _table(["Stage", "Rows"], rows)


def _sources_section(sources: Mapping[str, Mapping[str, int]]) -> str:
    if not sources:
        return ""
    rows = [[name, c.get("read", 0), c.get("rejected", 0), c.get("kept", 0)] for name, c in sources.items()]
    return "## Sources\n\n" + _table(["Source", "Read", "Rejected", "Kept"], rows)


def _cleaning_section(cleaning: Mapping[str, Mapping[str, int]]) -> str:
    if not cleaning:
        return ""
    rows = [[rule, c.get("changed", 0), c.get("removed", 0)] for rule, c in cleaning.items()]
    return "## Cleaning rules\n\nIn the order they were applied.\n\n" + _table(["Rule", "Changed", "Removed"], rows)


def _rejected_section(rejected: Mapping[str, Any]) -> str:
    text = f"## Rejected rows\n\n{_rows(rejected['total'])} rejected; every one, with its file, line and " \
           f"reason, is in `{rejected['file']}`."
    if rejected["by_stage"]:
        text += "\n\n" + _table(["Stage", "Rejected"], list(rejected["by_stage"].items()))
    reasons = list(rejected["by_reason"].items())
    if reasons:
        shown = reasons[:MARKDOWN_REASONS]
        title = "Top reasons" if len(reasons) > len(shown) else "Reasons"
        text += f"\n\n{title}:\n\n" + _table(["Reason", "Rows"], shown)
    return text


def _pairs_section(title: str, pairs: Sequence[Mapping[str, Any]], *, summary: str) -> str:
    text = f"## {title}\n\n{summary}"
    if not pairs:
        return text
    with_split = any("eval_split" in p for p in pairs)
    header = ["Removed row", "Duplicate of", *(["Eval split"] if with_split else []), "Kind", "Similarity",
              "Removed text", "Duplicate text"]
    rows = [
        [p.get("row", ""), p.get("duplicate_of", ""), *([p.get("eval_split", "")] if with_split else []),
         p.get("kind", ""), _similarity(p.get("similarity")),
         _snippet(p.get("text", "")), _snippet(p.get("duplicate_text", ""))]
        for p in pairs[:MARKDOWN_PAIRS]
    ]
    text += "\n\n" + _table(header, rows, numeric=set())
    if len(pairs) > MARKDOWN_PAIRS:
        text += f"\n\nFirst {MARKDOWN_PAIRS} of {len(pairs)}; all are listed in `{JSON_FILE}`."
    return text


def _augmentation_section(augmentation: Mapping[str, Any]) -> str:
    if not augmentation["by_operation"]:
        return ""
    rows = [*augmentation["by_operation"].items(), ["total", augmentation["total"]]]
    return "## Augmentation\n\nAugmented rows are added to the training split only.\n\n" + _table(
        ["Operation", "Rows added"], rows
    )


def _splits_section(data: Mapping[str, Any]) -> str:
    splits = data["splits"]
    if not splits:
        return ""
    text = "## Splits\n\n" + _table(
        ["Split", "Rows", "Augmented"], [[name, s["rows"], s["augmented"]] for name, s in splits.items()]
    )
    labels = sorted(
        {*data["labels"]["before"], *data["labels"]["after"], *(lab for s in splits.values() for lab in s["labels"])},
        key=_label_order,
    )
    if labels:
        columns = [("before cleaning", data["labels"]["before"]), ("after cleaning", data["labels"]["after"]),
                   *((name, s["labels"]) for name, s in splits.items())]
        rows = [[label, *(_count_share(counts, label) for _, counts in columns)] for label in labels]
        text += "\n\nRows per label (share of the column):\n\n" + _table(["Label", *(c for c, _ in columns)], rows)
    return text


def _count_share(counts: Mapping[str, int], label: str) -> str:
    total = sum(counts.values())
    n = counts.get(label, 0)
    return f"{n} ({100.0 * n / total:.1f}%)" if total else "0"


def _lengths_section(lengths: Mapping[str, Any]) -> str:
    rows = []
    for side in ("before", "after"):
        for unit in ("chars", "words"):
            s = lengths[side][unit]
            if s["count"]:
                rows.append([f"{side}, {'characters' if unit == 'chars' else 'words'}",
                             s["count"], s["min"], s["median"], s["mean"], s["p95"], s["max"]])
    if not rows:
        return ""
    return "## Lengths\n\n" + _table(["Rows", "Count", "Min", "Median", "Mean", "p95", "Max"], rows)


def _plots_section(plots: Mapping[str, str]) -> str:
    lines = []
    if "length_plot" in plots:
        lines.append(f"![Length distribution before and after cleaning]({plots['length_plot']})")
    else:
        lines.append("No length plot: no rows were recorded.")
    if "label_plot" in plots:
        lines.append(f"![Label distribution before and after cleaning]({plots['label_plot']})")
    else:
        lines.append("No label plot: the rows have no labels.")
    return "## Plots\n\n" + "\n\n".join(lines)


def _timings_section(timings: Mapping[str, float]) -> str:
    if not timings:
        return ""
    return "## Timings\n\n" + _table(["Stage", "Seconds"], [[k, f"{v:.2f}"] for k, v in timings.items()])


def _table(header: list[str], rows: Sequence[Sequence[Any]], *, numeric: set[int] | None = None) -> str:
    """A Markdown table; columns in ``numeric`` (default: all but the first) are right-aligned."""
    numeric = set(range(1, len(header))) if numeric is None else numeric
    align = ["---:" if i in numeric else ":---" for i in range(len(header))]
    lines = [_md_row(header), "| " + " | ".join(align) + " |"]
    lines += [_md_row([str(c) for c in row]) for row in rows]
    return "\n".join(lines)


def _md_row(cells: Sequence[str]) -> str:
    # Cells come from user data (labels, texts, file names): "|" and newlines would break the table.
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n} rows"


def _similarity(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def _snippet(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MD_SNIPPET_CHARS else text[: _MD_SNIPPET_CHARS - 1] + "…"
