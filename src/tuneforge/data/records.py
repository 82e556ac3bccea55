"""The one record type every data-preparation step passes along: ``Row``.

Sources turn files into ``Row``s, cleaning rewrites their texts, deduplication compares them,
splitting groups them, formatting tokenises them. Each step sees the same small surface:

* ``row.kind`` says what the example is:

  ============  =====================================================================
  ``text``      ``data = {"text": str, "label": Any | None, "group": str | None}``
  ``chat``      ``data = {"messages": [{"role": str, "content": str}, ...], "group": ...}``
                (Alpaca, ShareGPT and OpenAI ``messages`` records are all normalised to this)
  ``tokens``    ``data = {"tokens": [str, ...], "tags": [str, ...], "group": ...}`` (CoNLL)
  ``pair``      ``data = {"source": str, "target": str, "group": ...}`` (translation)
  ``qa``        ``data = {"question": str, "context": str, "answers": [{"text": str,
                "answer_start": int}, ...], "id": str}`` (extractive QA, SQuAD style)
  ============  =====================================================================

* ``row_texts(row)`` lists the strings a text rule may rewrite; ``replace_texts`` builds a *new* row
  with them replaced (rows are never mutated in place: a rule that changes one row must not change
  the copy another step is still holding).
* ``content_key(row)`` is the single string deduplication and decontamination compare.
* ``row.origin`` ("file:line") is how reports and ``rejected.jsonl`` name a row.

This module is import-light (stdlib only): it runs on every row of a large corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

RowKind = Literal["text", "chat", "tokens", "pair", "qa"]
ROW_KINDS: tuple[str, ...] = ("text", "chat", "tokens", "pair", "qa")


@dataclass(frozen=True)
class Row:
    """One example, its provenance, and whether augmentation created it."""

    kind: RowKind
    data: dict[str, Any]
    source: str
    line: int
    augmented: bool = False
    #: Set by augmentation: the origin ("file:line") of the row this one was derived from.
    derived_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"{self.source}:{self.line}"


def row_texts(row: Row) -> list[str]:
    """The free-text strings of ``row``, in a fixed order (the order ``replace_texts`` expects)."""
    d = row.data
    if row.kind == "text":
        return [d["text"]]
    if row.kind == "chat":
        return [m["content"] for m in d["messages"]]
    if row.kind == "pair":
        return [d["source"], d["target"]]
    if row.kind == "qa":
        # Only the question: answers point into the context by character offset, so no text rule
        # may rewrite the context (it still counts for deduplication, see ``content_key``).
        return [d["question"]]
    if row.kind == "tokens":
        # Tokens are aligned one-to-one with tags; a rule that split or merged words would break the
        # alignment, so token rows expose their text for reading (dedup, reports) but see
        # ``replace_texts`` for what writing back means.
        return [" ".join(d["tokens"])]
    raise ValueError(f"unknown row kind {row.kind!r}")


def replace_texts(row: Row, texts: list[str]) -> Row:
    """Return a copy of ``row`` with its texts (as listed by ``row_texts``) replaced by ``texts``."""
    current = row_texts(row)
    if len(texts) != len(current):
        raise ValueError(f"{row.origin}: expected {len(current)} texts, got {len(texts)}")
    if texts == current:
        return row
    d = dict(row.data)
    if row.kind == "text":
        d["text"] = texts[0]
    elif row.kind == "chat":
        d["messages"] = [{**m, "content": t} for m, t in zip(d["messages"], texts)]
    elif row.kind == "pair":
        d["source"], d["target"] = texts
    elif row.kind == "qa":
        d["question"] = texts[0]
    elif row.kind == "tokens":
        tokens = texts[0].split(" ")
        if len(tokens) != len(d["tags"]):
            raise ValueError(f"{row.origin}: a text rule changed the token count of a tagged row")
        d["tokens"] = tokens
    return replace(row, data=d)


def content_key(row: Row) -> str:
    """The text deduplication compares: every field that makes the example what it is.

    Chat turns are prefixed with their role so that the same sentence asked by the user and said
    by the assistant are different examples.
    """
    if row.kind == "chat":
        return "\n".join(f"{m['role']}: {m['content']}" for m in row.data["messages"])
    if row.kind == "qa":
        return f"{row.data['question']}\n{row.data['context']}"
    return "\n".join(row_texts(row))


def row_label(row: Row) -> Any | None:
    """The class label used for stratification (text rows only; ``None`` otherwise)."""
    return row.data.get("label") if row.kind == "text" else None


def row_group(row: Row) -> Any | None:
    """The grouping key (``data.group``), if the source configured a group column."""
    return row.data.get("group")


def row_to_json(row: Row) -> dict[str, Any]:
    """A JSON-serialisable view of ``row`` for prepared-data files and reports."""
    out: dict[str, Any] = {k: v for k, v in row.data.items() if v is not None}
    out["_origin"] = row.origin
    if row.augmented:
        out["_augmented"] = True
        out["_derived_from"] = row.derived_from
    return out


def dump_row(row: Row) -> str:
    """One JSON line holding the whole row (kind, data, provenance), for spill files."""
    import json

    return json.dumps({"k": row.kind, "d": row.data, "s": row.source, "l": row.line, "a": row.augmented,
                       "f": row.derived_from, "x": row.extra}, ensure_ascii=False)


def load_row(line: str) -> Row:
    """The inverse of ``dump_row``."""
    import json

    r = json.loads(line)
    return Row(r["k"], r["d"], r["s"], r["l"], r["a"], r["f"], r["x"])
