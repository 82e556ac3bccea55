"""A cheap look at every data source of a recipe before any work: ``tuneforge validate``'s data check.

``check_sources`` opens each source (``data.train_file`` or every entry of ``data.sources``, then
``data.validation_file`` and ``data.test_file``) with the data stage's own reader
(``sources.iter_source``) and reads its first few rows. So the mistakes the data stage would stop on
in its first second fail ``validate`` already, with the data stage's own message, prefixed with the
recipe key that names the source:

* a path whose format cannot be told (``train.dat``), an empty or binary file, a key the format
  ignores, a glob that matches nothing;
* a column the recipe names (``text_column``, ``label_column``, ``target_column``, ``tags_column``,
  ``group_column``) that the first record does not have;
* for tasks whose rows need a label (classification, regression): no label column at all, which the
  data stage would reject every row of the source for.

Only the first rows are read: row-level problems further down (a bad line, an unknown label) are the
data stage's to count against ``data.max_rejected_fraction``. A ``.json`` records or SQuAD file is
parsed whole by its reader, so checking it costs one parse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.data.records import Row
from tuneforge.data.sources import SourceConfig, iter_source, resolve_format, resolve_path
from tuneforge.errors import DataError

#: Good rows read from each source.
FIRST_ROWS = 5
#: Items (rows and rejects) read from each source at most, so a file full of bad lines stays cheap.
MOST_ITEMS = 50
#: Label modes (``TaskSpec.labels``) whose checker rejects a text row without a label.
LABELLED = ("class", "multi", "value")


def recipe_sources(data: Any) -> list[tuple[str, SourceConfig]]:
    """(recipe key, source) of every source a recipe's data section reads, in the data stage's order."""
    training = data.training_sources()
    keys = [f"data.sources.{i}" for i in range(len(training))] if data.sources else ["data.train_file"]
    out = list(zip(keys, training))
    out += [(f"data.{split}_file", source) for split, source in data.evaluation_sources().items()]
    return out


def check_sources(data: Any, *, labels: str | None = None, base_dir: Path | None = None,
                  rows: int = FIRST_ROWS) -> dict[str, int]:
    """Read the first ``rows`` rows of every source of ``data`` (a recipe's ``DataSection``); raise the data
    stage's ``DataError``, prefixed with the source's recipe key, for a source it would stop on. ``labels``:
    the task's label mode (``TaskSpec.labels``). Returns recipe key -> good rows read."""
    read: dict[str, int] = {}
    for key, source in recipe_sources(data):
        try:
            read[key] = _check_source(source, labels, base_dir, rows, data.label_names)
        except DataError as exc:
            raise DataError(f"{key}: {exc}") from None
    return read


def _check_source(source: SourceConfig, labels: str | None, base_dir: Path | None, rows: int,
                  label_names: list[str] | None) -> int:
    # label_names as the data stage passes them (they pick class_folders' subfolders, tell a headerless CSV)
    items = iter_source(source, base_dir, label_names=label_names) if label_names else iter_source(source, base_dir)
    good = 0
    try:
        for seen, item in enumerate(items, 1):
            if isinstance(item, Row):
                _check_label(source, item, labels, base_dir)
                good += 1
            if good >= rows or seen >= MOST_ITEMS:
                break
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the file, now rather than when the generator is collected
    return good


def _check_label(source: SourceConfig, row: Row, labels: str | None, base_dir: Path | None) -> None:
    """A text row without a label, for a task that needs one: the source has no label column (the reader
    decides that from the first record), so the data stage would reject every row as 'missing label'."""
    if labels not in LABELLED or row.kind != "text" or row.data.get("label") is not None:
        return
    fmt = resolve_format(source, resolve_path(source.path, base_dir))
    if fmt in ("text", "text_files"):
        raise DataError(f"{row.source}: format {fmt} gives rows without labels, so every row would be rejected as "
                        "'missing label'; this task needs a labelled file (csv, tsv, jsonl, json, parquet) with "
                        "a label column")
    if source.label_column is None:
        raise DataError(f"{row.source}: label_column is null, so every row would be rejected as 'missing label'; "
                        "set label_column to the column holding the labels")
    raise DataError(f"{row.source}: no column '{source.label_column}' in the first record, so every row would be "
                    "rejected as 'missing label'; set label_column to the column holding the labels")
