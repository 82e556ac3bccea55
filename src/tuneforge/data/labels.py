"""Label checks of the data stage, one per kind of label a task has.

Each checker's ``check(row)`` returns the row with its label in canonical form, or a reject reason;
``finish()`` settles the label names once the training rows have been seen. Rows of other kinds
(``kind`` differs) are not checked.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

from tuneforge.data.readers import (IndexLabels, _label_key, _label_matcher, infer_label_names, one_based_problem,
                                    unknown_label)
from tuneforge.data.records import Row
from tuneforge.errors import DataError


class ClassLabels:
    """Label validation and canonicalisation for classification rows.

    With ``label_names`` configured, a label may be a name or its 0-based index (``0``/``1`` for
    [negative, positive]; with ``offset`` (``data.label_offset``) the index plus ``offset``) and is
    rewritten to the name; otherwise names are inferred from the training rows after the first pass,
    exactly like the single-file reader does. ``finish()`` refuses integer labels that look 1-based
    (see ``one_based_problem``).
    """

    kind = "text"

    def __init__(self, names: list[str] | None, offset: int = 0):
        self.names = list(names) if names is not None else None
        self.offset = offset
        self._match = _label_matcher(self.names, offset) if self.names is not None else None
        self.seen: Counter = Counter()
        self.indices = IndexLabels(self.names)

    def check(self, row: Row) -> Row | str:
        raw = row.data.get("label")
        if raw is None:
            return "missing label"
        key = _label_key(raw)
        if key is None:
            return f"label is not a string or number (got {type(raw).__name__})"
        if not key:
            return "empty label"
        if self._match is None:
            self.seen[key] += 1
            return replace(row, data={**row.data, "label": key})
        self.indices.add(key)
        index = self._match(key)
        if index is None:
            return unknown_label(key, self.names, self.offset)
        return replace(row, data={**row.data, "label": self.names[index]})

    def finish(self) -> list[str]:
        """The label names, once the training rows have been checked; a ``DataError`` when their
        integer labels look 1-based."""
        if self.names is None:
            self.names = infer_label_names(self.seen)
            self._match = _label_matcher(self.names)
        problem = one_based_problem(self.names, self.indices, self.offset)
        if problem:
            raise DataError(problem)
        return self.names


class ValueLabels:
    """Regression targets: a finite real number per text row."""

    kind = "text"

    def check(self, row: Row) -> Row | str:
        raw = row.data.get("label")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return "missing label"
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return f"label is not a number: {raw!r}"
        if not math.isfinite(value):
            return f"label is not a finite number: {raw!r}"
        return replace(row, data={**row.data, "label": value})

    def finish(self) -> None:
        return None


class TagLabels:
    """Word tags of token rows (IOB2): counts must match and every tag must be known."""

    kind = "tokens"

    def __init__(self, names: list[str] | None):
        self.names = list(names) if names is not None else None
        self.seen: set[str] = set()

    def check(self, row: Row) -> Row | str:
        from tuneforge.data.token_labels import check_tokens_row

        tokens, tags = row.data.get("tokens", []), row.data.get("tags", [])
        if self.names is not None and any(isinstance(t, int) and not isinstance(t, bool) for t in tags):
            # indices into data.label_names, as in Hugging Face's ner_tags columns
            bad = next((t for t in tags if not isinstance(t, int) or isinstance(t, bool)
                        or not 0 <= t < len(self.names)), None)
            if bad is not None:
                return f"tag {bad!r} is not an index into data.label_names (0-{len(self.names) - 1})"
            tags = [self.names[t] for t in tags]
            row = replace(row, data={**row.data, "tags": tags})
        problem = check_tokens_row(tokens, tags)
        if problem:
            return problem
        if self.names is not None:
            unknown = sorted(set(tags) - set(self.names))
            if unknown:
                return f"unknown tag '{unknown[0]}' (allowed: {', '.join(self.names)})"
        else:
            self.seen.update(tags)
        return row

    def finish(self) -> list[str]:
        if self.names is None:
            from tuneforge.data.token_labels import tag_vocabulary

            self.names = tag_vocabulary([sorted(self.seen)])
        return self.names


class QALabels:
    """Extractive-QA answers: every answer text must lie at its ``answer_start`` in the context.

    ``read_squad`` already checks the rows it reads; this checks ``qa`` rows whatever source built
    them (and validation files too). The question's length in model tokens cannot be checked here
    (there is no tokenizer before the model is resolved); the extractive_qa task's ``encode`` does it.
    """

    kind = "qa"

    def check(self, row: Row) -> Row | str:
        from tuneforge.data.qa import check_qa_row

        problem = check_qa_row(row.data)
        return row if problem is None else problem

    def finish(self) -> None:
        return None


class MultiLabels:
    """Multi-label rows: a list of class names/indices, or one string of them joined by ``separator``.
    Canonical form: the sorted list of names (an empty list is a valid "no label applies")."""

    kind = "text"

    def __init__(self, names: list[str] | None, separator: str = ",", offset: int = 0):
        self.names = list(names) if names is not None else None
        self.offset = offset
        self._match = _label_matcher(self.names, offset) if self.names is not None else None
        self.separator = separator
        self.seen: Counter = Counter()
        self.indices = IndexLabels(self.names)

    def check(self, row: Row) -> Row | str:
        raw = row.data.get("label")
        if raw is None:
            return "missing label"
        items = raw if isinstance(raw, list) else [p for p in str(raw).split(self.separator) if p.strip()]
        keys = []
        for item in items:
            key = _label_key(item.strip() if isinstance(item, str) else item)
            if not key:
                return f"label {item!r} is not a class name or index"
            keys.append(key)
        if self._match is None:
            self.seen.update(keys)
            return replace(row, data={**row.data, "label": sorted(set(keys))})
        names = set()
        for key in keys:
            self.indices.add(key)
            index = self._match(key)
            if index is None:
                return unknown_label(key, self.names, self.offset)
            names.add(self.names[index])
        return replace(row, data={**row.data, "label": sorted(names, key=self.names.index)})

    def finish(self) -> list[str]:
        if self.names is None:
            self.names = infer_label_names(self.seen)
            self._match = _label_matcher(self.names)
        problem = one_based_problem(self.names, self.indices, self.offset)
        if problem:
            raise DataError(problem)
        return self.names


LabelChecker = ClassLabels | ValueLabels | TagLabels | MultiLabels | QALabels


def label_checker(mode: str | None, names: list[str] | None, separator: str = ",",
                  offset: int = 0) -> LabelChecker | None:
    """The checker for a task's label mode ("class", "multi", "value", "tags", "qa"), or None for unlabelled
    data. ``offset`` (``data.label_offset``) applies to class labels only."""
    if mode is None or mode == "none":
        return None
    if mode == "class":
        return ClassLabels(names, offset)
    if mode == "multi":
        return MultiLabels(names, separator, offset)
    if mode == "value":
        return ValueLabels()
    if mode == "tags":
        return TagLabels(names)
    if mode == "qa":
        return QALabels()
    raise ValueError(f"unknown label mode {mode!r}")
