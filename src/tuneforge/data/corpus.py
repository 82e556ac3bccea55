"""The texts of corpus files, streamed: what ``tuneforge tokenizer train`` fits a tokenizer on.

``corpus_texts`` reads any format ``tuneforge.data.sources`` reads (plain text, record files, chats,
datasets, folders and globs) and yields one string at a time, so a corpus larger than memory works;
the tokenizer trainer (``tuneforge.models.tokenizer_train``) only ever sees the strings.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError, TuneforgeError


class CorpusTexts(Iterator[str]):
    """The texts of corpus files, streamed; ``rows``/``rejected`` count what was read so far."""

    def __init__(self, items: Iterator[Any], progress: Callable[[], None] | None = None) -> None:
        self._items = items
        self._progress = progress
        self._pending: list[str] = []
        self.rows = 0
        self.rejected = 0
        #: The first few rejected rows, as "file:line: reason".
        self.rejected_examples: list[str] = []

    def __iter__(self) -> "CorpusTexts":
        return self

    def __next__(self) -> str:
        from tuneforge.data.rejects import RejectedRow

        while not self._pending:
            item = next(self._items)
            if isinstance(item, RejectedRow):
                self.rejected += 1
                if len(self.rejected_examples) < 3:
                    self.rejected_examples.append(f"{item.file}:{item.line}: {item.reason}")
                continue
            self.rows += 1
            if self._progress is not None:
                self._progress()
            self._pending = [text for text in reversed(_texts_of(item)) if text]
        return self._pending.pop()


def _texts_of(row) -> list[str]:
    from tuneforge.data.records import row_texts

    texts = row_texts(row)
    if row.kind == "qa":  # row_texts leaves the context out (text rules must not move answers in it)
        texts = [*texts, row.data["context"]]
    return texts


def corpus_texts(paths: list[Path], text_column: str | None = None, whole_files: bool = False,
                 progress: Callable[[], None] | None = None) -> CorpusTexts:
    """Stream the texts of ``paths``, in any format ``tuneforge.data.sources`` reads.

    Plain text is one text per non-blank line (newlines removed), or with ``whole_files`` one text per
    file (``text_unit: file``: newlines kept, which a char tokenizer must see). Record files use
    ``text_column`` (default ``text``; chat records are recognised by their keys and give one text per
    message); labels are ignored. Rejected rows (undecodable lines, empty texts) are skipped and counted.
    Every path is opened now: a missing, empty or binary file raises ``DataError`` before any text is read.
    """
    from tuneforge.data.sources import SourceConfig, iter_source, resolve_format

    if not paths:
        raise DataError("no corpus files given")
    sources = []
    for path in map(Path, paths):
        if not path.exists() and not re.search(r"[*?\[]", str(path)):  # a glob is checked by its reader
            raise DataError(f"data file not found: {path}")
        fmt = resolve_format(SourceConfig(path=path), path)
        sources.append(iter_source(_source_config(path, fmt, text_column, whole_files)))
    return CorpusTexts(itertools.chain.from_iterable(sources), progress)


def _source_config(path: Path, fmt: str, text_column: str | None, whole_files: bool):
    """The source for one corpus file; only the keys its format takes (others are errors there)."""
    from tuneforge.data.sources import RECORD_FORMATS, SourceConfig

    kwargs: dict[str, Any] = {"path": path}
    if fmt in RECORD_FORMATS:
        if text_column is not None:
            kwargs["text_column"] = text_column
        if text_column is not None or _has_column(path, fmt, "text"):
            kwargs["label_column"] = None  # text records: labels are not read (an empty one is no reason to skip)
    if fmt == "text" and whole_files:
        kwargs["text_unit"] = "file"
    return SourceConfig(**kwargs)


def _has_column(path: Path, fmt: str, column: str) -> bool:
    """Whether the first good record of a record file has ``column`` (else it may hold chats)."""
    from tuneforge.data.readers import read_records

    if fmt == "datasets":
        return False  # the default label handling applies; not worth loading the dataset twice
    records = None
    try:
        records = read_records(path, fmt)
        for _, record, _ in records:
            if record is not None:
                return column in record
    except TuneforgeError:
        pass  # iter_source reports it, with its own message
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()
    return False
