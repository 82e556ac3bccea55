"""Evaluation report: eval.json for machines, eval.md for people, confusion_matrix.png for eyes.

Only the standard library at import time; the plot imports matplotlib lazily.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuneforge.evaluate.plots import plot_confusion_matrix


def write_eval_report(
    metrics: dict,
    out_dir: Path,
    *,
    title: str = "Evaluation",
    extra: dict | None = None,
    evidence: dict | None = None,
) -> dict[str, Path]:
    """Write eval.json, eval.md and confusion_matrix.png into ``out_dir`` (created if needed).

    ``metrics`` is the dict from ``classification_metrics``. ``extra`` (model dir, data file, ...)
    goes into eval.json under the key ``"extra"`` and into eval.md as a key-value list. ``evidence``
    (``evaluate.stage``: ``predictions``, ``ci95``, ``ci95_method``) goes into eval.json beside the
    metrics (never over one), and eval.md shows each interval after its metric: ``0.8624 [0.839, 0.885]``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "eval.json",
        "markdown": out_dir / "eval.md",
        "confusion_matrix": out_dir / "confusion_matrix.png",
    }
    _write_text_atomic(paths["json"], _render_json(metrics, extra, evidence))
    if "confusion_matrix" not in metrics:  # regression, NER, generation: a table of the scalar metrics
        del paths["confusion_matrix"]
        _write_text_atomic(paths["markdown"], render_scalar_markdown(metrics, title=title, extra=extra,
                                                                     evidence=evidence))
        return paths
    _write_text_atomic(paths["markdown"], render_markdown(metrics, title=title, extra=extra, evidence=evidence))
    plot_confusion_matrix(
        metrics["confusion_matrix"], metrics["label_names"], paths["confusion_matrix"],
        title=f"{title}: confusion matrix",
    )
    return paths


def _render_json(metrics: dict, extra: dict | None, evidence: dict | None = None) -> str:
    # Extra lives under its own key rather than merged in, so it can never overwrite a metric
    # (e.g. a caller's "num_examples") and ``eval.json`` minus "extra" and the evidence keys is
    # exactly ``metrics``.
    payload = dict(metrics)
    for key, value in (evidence or {}).items():
        payload.setdefault(key, value)
    if extra:
        payload["extra"] = extra
    return json.dumps(payload, indent=2, default=_json_default) + "\n"


def _json_default(value):
    """Paths, numpy scalars/arrays and anything else odd in ``extra`` become plain JSON."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return str(value)


def _write_text_atomic(path: Path, text: str) -> None:
    # Write-then-rename: a crash mid-write never leaves a truncated eval.json that a later
    # comparison step would read as a valid (but wrong) result.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- markdown


def render_markdown(metrics: dict, *, title: str = "Evaluation", extra: dict | None = None,
                    evidence: dict | None = None) -> str:
    """The human-readable report as a Markdown string."""
    sections = [
        f"# {title}",
        _headline(metrics, _ci(evidence)),
        _interval_note(evidence),
        _extra_list(extra),
        "## Per-class metrics\n\n" + _per_class_table(metrics),
        "## Confusion matrix\n\nRows are true labels, columns are predicted labels.\n\n"
        + _confusion_table(metrics),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def render_scalar_markdown(metrics: dict, *, title: str = "Evaluation", extra: dict | None = None,
                           evidence: dict | None = None) -> str:
    """Every scalar metric in a table, and nested per-type/per-label tables when present."""
    ci = _ci(evidence)
    rows = ["| metric | value |", "|---|---|"]
    rows += [f"| {k} | {_fmt(v)}{_interval(ci.get(k))} |" for k, v in metrics.items() if isinstance(v, (int, float))]
    sections = [f"# {title}", _extra_list(extra), "\n".join(rows), _interval_note(evidence)]
    for key, table in metrics.items():
        if isinstance(table, dict) and table and all(isinstance(v, dict) for v in table.values()):
            cols = list(next(iter(table.values())))
            lines = [f"## {key}", "", "| name | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
            lines += [f"| {name} | " + " | ".join(_fmt(v.get(c)) for c in cols) + " |" for name, v in table.items()]
            sections.append("\n".join(lines))
    samples = metrics.get("samples")
    if isinstance(samples, list) and samples and all(isinstance(x, dict) for x in samples):
        lines = ["## Samples"]
        for i, sample in enumerate(samples, 1):
            for key, value in sample.items():
                lines += ["", f"**{key}** ({i}):", "", "```text", str(value), "```"]
        sections.append("\n".join(lines))
    return "\n\n".join(s for s in sections if s) + "\n"


def _headline(metrics: dict, ci: dict | None = None) -> str:
    ci = ci or {}
    lines = [
        f"- **Accuracy**: {_fmt(metrics['accuracy'])}{_interval(ci.get('accuracy'))}",
        f"- **Macro F1**: {_fmt(metrics['macro_f1'])}{_interval(ci.get('macro_f1'))}",
        f"- Macro precision: {_fmt(metrics['macro_precision'])}{_interval(ci.get('macro_precision'))}",
        f"- Macro recall: {_fmt(metrics['macro_recall'])}{_interval(ci.get('macro_recall'))}",
        f"- Examples: {metrics['num_examples']}",
    ]
    return "\n".join(lines)


def _ci(evidence: dict | None) -> dict:
    return dict((evidence or {}).get("ci95") or {})


def _interval(bounds) -> str:
    """`` [low, high]`` after a metric's value, or nothing where it has no interval."""
    if not bounds:
        return ""
    low, high = bounds
    digits = 2 if max(abs(low), abs(high)) >= 10 else 3
    return f" [{low:.{digits}f}, {high:.{digits}f}]"


def _interval_note(evidence: dict | None) -> str:
    method = (evidence or {}).get("ci95_method")
    if not method:
        return ""
    return (f"In brackets: the 95% confidence interval ({method['method']} over the {method['examples']:,} "
            f"{method['resampled']}, {method['resamples']:,} resamples, seed {method['seed']}). Two runs on the "
            "same examples: `tuneforge compare RUN_A RUN_B` (paired test).")


def _extra_list(extra: dict | None) -> str:
    if not extra:
        return ""
    lines = [f"- **{_one_line(key)}**: {_one_line(_plain(value))}" for key, value in extra.items()]
    return "## Details\n\n" + "\n".join(lines)


def _plain(value) -> str:
    # Nested structures read better as compact JSON than as Python reprs.
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=_json_default)
    if isinstance(value, float):
        return _fmt(value)
    return str(value)


def _per_class_table(metrics: dict) -> str:
    rows = [
        [name, _fmt(s["precision"]), _fmt(s["recall"]), _fmt(s["f1"]), str(s["support"])]
        for name, s in metrics["per_class"].items()
    ]
    return _table(["Class", "Precision", "Recall", "F1", "Support"], rows)


def _confusion_table(metrics: dict) -> str:
    names = metrics["label_names"]
    header = ["True \\ Predicted", *names]
    rows = [[name, *(str(v) for v in row)] for name, row in zip(names, metrics["confusion_matrix"])]
    return _table(header, rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    # First column left-aligned (names), the rest right-aligned (numbers).
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = [_row(header), _row(align, escape=False)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def _row(cells: list[str], *, escape: bool = True) -> str:
    cells = [_cell(c) for c in cells] if escape else cells
    return "| " + " | ".join(cells) + " |"


def _cell(text: str) -> str:
    """Make arbitrary text (label names come from user data) safe inside a table cell."""
    # Only "|" needs escaping: a backslash before a space or letter is literal in Markdown.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _one_line(text) -> str:
    # A newline inside a list item would break the list.
    return " ".join(str(text).splitlines())


def _fmt(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)
