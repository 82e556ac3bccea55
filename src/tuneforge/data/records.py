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

  and ``preference`` rows: paired ``data = {"prompt": [messages], "chosen": [messages],
  "rejected": [messages], "group": ...}``, unpaired (KTO) ``data = {"prompt": [messages],
  "completion": [messages], "label": bool, "group": ...}``. The prompt ends with a user turn (a
  system turn and earlier turns may come before it); chosen, rejected and completion are the
  assistant's reply. TRL, HH-RLHF, ShareGPT/LLaMA-Factory and KTO records are all normalised to
  this (``conversations.from_preference`` / ``from_unpaired``).

* ``row_texts(row)`` lists the strings a text rule may rewrite; ``replace_texts`` builds a *new* row
  with them replaced (rows are never mutated in place: a rule that changes one row must not change
  the copy another step is still holding).
* ``content_key(row)`` is the single string deduplication compares; ``prompt_key(row)`` what
  decontamination compares (the prompt of a preference row: a training pair whose prompt is in the
  held-out data is contamination whatever its replies; ``content_key`` for every other kind).
* ``row.origin`` ("file:line") is how reports and ``rejected.jsonl`` name a row.

This module is import-light (stdlib only): it runs on every row of a large corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

RowKind = Literal["text", "chat", "tokens", "pair", "qa", "preference"]
ROW_KINDS: tuple[str, ...] = ("text", "chat", "tokens", "pair", "qa", "preference")

#: The reply fields of a preference row, in ``row_texts`` order: paired rows have chosen and rejected,
#: unpaired (KTO) rows a completion.
PREFERENCE_REPLIES: tuple[str, ...] = ("chosen", "rejected", "completion")


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
    if row.kind == "preference":
        # Prompt turns, then the chosen reply's messages, then the rejected (or the completion's).
        return [m["content"] for key in ("prompt", *PREFERENCE_REPLIES) for m in d.get(key) or ()]
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
    elif row.kind == "preference":
        rest = iter(texts)
        for key in ("prompt", *PREFERENCE_REPLIES):
            if d.get(key):
                d[key] = [{**m, "content": next(rest)} for m in d[key]]
    return replace(row, data=d)


def content_key(row: Row) -> str:
    """The text deduplication compares: every field that makes the example what it is.

    Chat turns are prefixed with their role so that the same sentence asked by the user and said
    by the assistant are different examples.
    """
    if row.kind == "chat":
        return _turns(row.data["messages"])
    if row.kind == "qa":
        return f"{row.data['question']}\n{row.data['context']}"
    if row.kind == "preference":
        # The whole pair: copies of one pair are duplicates, two pairs for one prompt are not. The
        # reply fields are named, so a pair with chosen and rejected swapped is a different example.
        return "\n".join([prompt_key(row), response_key(row)])
    return "\n".join(row_texts(row))


def _turns(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def prompt_key(row: Row) -> str:
    """The text decontamination compares with held-out rows: a preference row's prompt (turns prefixed
    with their role, like ``content_key``); every other kind's ``content_key``."""
    if row.kind == "preference":
        return _turns(row.data["prompt"])
    return content_key(row)


def response_key(row: Row) -> str:
    """A preference row's replies, each prefixed with its field ("chosen: ...", "rejected: ...",
    "completion: ..."); "" for other kinds. Near-duplicate detection compares these between rows
    with the same prompt (see ``dedup``)."""
    if row.kind != "preference":
        return ""
    return "\n".join(f"{key}: {m['content']}" for key in PREFERENCE_REPLIES for m in row.data.get(key) or ())


def row_label(row: Row) -> Any | None:
    """The label used for stratification and label counts: a text row's class, an unpaired preference
    row's boolean (desirable or not); ``None`` otherwise."""
    if row.kind == "text" or (row.kind == "preference" and "completion" in row.data):
        return row.data.get("label")
    return None


def row_group(row: Row) -> Any | None:
    """The grouping key: ``data.group`` when the source configured a group column. A preference row
    without one is grouped by its prompt (``"prompt:" + a digest``), so that pairs sharing a prompt
    land in one split: otherwise decontamination would remove the training pairs whose prompt a
    validation pair shares."""
    group = row.data.get("group")
    if group is None and row.kind == "preference":
        import hashlib

        digest = hashlib.blake2b(prompt_key(row).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        return f"prompt:{digest}"
    return group


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
