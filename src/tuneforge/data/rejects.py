"""Rejected rows: records that could not be used, with where they came from and why.

Bad rows are never dropped silently. Every reader and row check produces a ``RejectedRow`` and the
pipeline writes them all to a JSONL file, so a user can open it, see the exact line and reason, and
fix the source data instead of guessing why their row count shrank.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

#: Raw text kept per rejected row. Enough to recognise the row; a multi-megabyte garbage line
#: (e.g. a binary file read as text) must not blow up the rejects file.
MAX_RAW_CHARS = 500


@dataclass(frozen=True)
class RejectedRow:
    """One record that was not used.

    ``line`` is the 1-based physical line where the record starts (for parquet: the 1-based row
    number); ``raw`` is the record text, truncated to ``MAX_RAW_CHARS`` on construction so the limit
    holds no matter which reader built the row.
    """

    file: str
    line: int
    reason: str
    raw: str

    def __post_init__(self) -> None:
        if len(self.raw) > MAX_RAW_CHARS:
            # Frozen dataclass: bypass __setattr__ once, here, to enforce the invariant.
            object.__setattr__(self, "raw", self.raw[:MAX_RAW_CHARS])


def write_rejected(path: Path, rows: Iterable[RejectedRow]) -> int:
    """Write ``rows`` as JSONL (keys: file, line, reason, raw) and return how many were written.

    The file is always created, even when empty, so "no rejects" is visible on disk rather than
    indistinguishable from "the step never ran".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    # errors="replace": a path or reason may carry lone surrogates from undecodable input; the
    # report must still be written as valid UTF-8.
    with open(path, "w", encoding="utf-8", errors="replace", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
            count += 1
    return count
