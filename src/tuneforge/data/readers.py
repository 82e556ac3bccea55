"""Read text-classification data from CSV, TSV, JSONL, JSON or Parquet.

Two layers:

* ``read_records`` turns a file into ``(line, record, reject)`` triples. It only knows about
  *syntax*: a row that cannot be parsed at all becomes a ``RejectedRow`` and reading goes on, so one
  bad byte or one truncated line costs one row, not the whole run.
* ``load_classification`` applies the *task* checks (columns present, text non-empty, label known)
  and maps labels to indices.

Problems with the file as a whole (missing, empty, not the format it claims, a configured column
that no row has) raise ``DataError``: those are user mistakes that no amount of row-skipping fixes.
This module must not import torch or transformers; it runs before any model is loaded.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tuneforge.data.rejects import RejectedRow
from tuneforge.errors import DataError

SUPPORTED_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
#: Formats with a header row (``has_header``/``column_names`` apply to them).
DELIMITED_FORMATS = ("csv", "tsv")
COLUMN_NAMES_NEED_NO_HEADER = (
    "column_names names the columns of a file without a header row: set has_header: false as well "
    "(a file with a header row takes its column names from it)"
)

UNDECODABLE = "undecodable bytes (not valid UTF-8)"

Record = dict[str, Any]
Triple = tuple[int, "Record | None", "RejectedRow | None"]

# surrogateescape maps each undecodable byte to a lone surrogate U+DC80..U+DCFF; finding one in a
# record means the source bytes were not valid UTF-8.
_SURROGATE = re.compile("[\udc80-\udcff]")
_JSON_WS = re.compile(r"[ \t\n\r]*")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------- format + file checks


def detect_format(path: Path, fmt: str | None = None) -> str:
    """Return the data format: ``fmt`` if given (e.g. "csv", ".CSV"), else from the file suffix."""
    supported = ", ".join(SUPPORTED_FORMATS)
    if fmt is not None:
        name = fmt.strip().lower().lstrip(".")
        if name not in SUPPORTED_FORMATS:
            raise DataError(f"unknown data format '{fmt}' (supported: {supported})")
        return name
    suffix = Path(path).suffix.lower()
    if suffix.lstrip(".") in SUPPORTED_FORMATS:
        return suffix.lstrip(".")
    shown = f"suffix '{suffix}'" if suffix else "no suffix"
    raise DataError(
        f"cannot tell the format of {path}: {shown}; supported formats: {supported} "
        "(rename the file or set the format explicitly)"
    )


def _check_file(path: Path) -> None:
    """Fail early, with a plain message, for the file-level problems users actually hit."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"data path is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"data file has no rows: {path} is empty (0 bytes)")


def _no_rows(path: Path) -> DataError:
    return DataError(f"data file has no rows: {path} contains no records (at most a header)")


def _open(path: Path, mode: str, **kwargs: Any):
    """``open`` that reports permission/IO problems as DataError instead of a traceback."""
    try:
        return open(path, mode, **kwargs)
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from exc


def read_records(path: Path, fmt: str | None = None, *, has_header: bool = True,
                 column_names: list[str] | None = None) -> Iterator[Triple]:
    """Yield ``(line, record, None)`` per good record and ``(line, None, reject)`` per bad one.

    The format and the file are checked *now*, so a wrong path fails at the call site; the records
    themselves are read lazily. A file with no records raises ``DataError`` once exhausted.
    ``has_header=False`` (CSV/TSV only): the first line is data; the columns are ``column_names``,
    or without them "0", "1", ... by position.
    """
    path = Path(path)
    name = detect_format(path, fmt)
    if (not has_header or column_names is not None) and name not in DELIMITED_FORMATS:
        raise DataError(f"has_header/column_names apply to csv and tsv files, not to {name} ({path})")
    if column_names is not None and has_header:
        raise DataError(COLUMN_NAMES_NEED_NO_HEADER)
    _check_file(path)
    if name in DELIMITED_FORMATS:
        return _read_delimited(path, "," if name == "csv" else "\t", has_header, column_names)
    return _readers[name](path)


#: Column names tried, in order, when a command is not told which column holds the text or label.
TEXT_COLUMN_GUESSES = ("text", "sentence", "content", "review", "document", "input", "prompt")
LABEL_COLUMN_GUESSES = ("label", "labels", "class", "target")


def first_columns(path: Path, fmt: str | None = None, *, has_header: bool = True,
                  column_names: list[str] | None = None) -> list[str]:
    """The columns of the first readable record (the header of a CSV/TSV)."""
    for _, record, _ in read_records(path, fmt, has_header=has_header, column_names=column_names):
        if record is not None:
            return list(record)
    return []


def pick_column(columns: list[str], given: str | None, guesses: tuple[str, ...], what: str) -> str:
    """``given`` if set, else the first of ``guesses`` present in ``columns``; a DataError naming them otherwise."""
    if given:
        return given
    for name in guesses:
        if name in columns:
            return name
    raise DataError(f"cannot tell which column holds the {what} (columns: {', '.join(columns)}); "
                    f"pass {what}_column=<name>")


# --------------------------------------------------------------------------------- CSV / TSV


def _read_delimited(path: Path, delimiter: str, has_header: bool = True,
                    column_names: list[str] | None = None) -> Iterator[Triple]:
    """CSV/TSV via the csv module; the first non-blank row is the header (``has_header``), else
    the columns are ``column_names`` or, without them, "0", "1", ... (as many as the first row has).

    surrogateescape keeps bad bytes in the text as lone surrogates instead of raising mid-file, so
    only the row that contains them is rejected. TSV is read with QUOTE_NONE because SST-2-style TSV
    has unquoted text containing ``"``; treating it as a quote would swallow following lines.
    """
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # utf-8-sig: drop a BOM (Excel writes one) so it does not end up in the first column name.
    with _open(path, "r", encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        consumed: list[str] = []  # physical lines making up the current record, for `raw`

        def lines() -> Iterator[str]:
            for text in fh:
                consumed.append(text)
                yield text

        # The C reader pulls exactly the lines one record needs, so `consumed` is that record.
        reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting, strict=False)
        header: list[str] | None = None if has_header or column_names is None else list(column_names)
        found = False
        start = 1  # line where the next record starts
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                raw = "".join(consumed)
                consumed.clear()
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                before_data = header is None if has_header else not found
                if before_data and not any(field.strip() for field in row):
                    continue  # whitespace and separators before the header (or first row) are layout
                if header is None and has_header:
                    header = _parse_header(path, line, row)
                    continue
                if not found and not has_header:
                    if header is None:
                        header = [str(index) for index in range(len(row))]
                    elif len(row) != len(header):
                        raise DataError(
                            f"{path}: line {line}: column_names has {len(header)} names, but the line has "
                            f"{len(row)} fields; give one name per column"
                        )
                assert header is not None
                found = True
                yield _delimited_row(path, line, raw, header, row)
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit(); not recoverable
            raise DataError(f"{path}: line {start}: cannot parse as {delimiter!r}-separated: {exc}")
    if not found:
        raise _no_rows(path)


def _parse_header(path: Path, line: int, row: list[str]) -> list[str]:
    header = [name.strip() for name in row]
    if any(_SURROGATE.search(name) for name in header):
        raise DataError(f"{path}: line {line}: header row is not valid UTF-8")
    dupes = sorted({name for name in header if header.count(name) > 1})
    if dupes:
        # dict(zip(...)) would silently keep only the last duplicate column.
        names = ", ".join(dupes)
        raise DataError(f"{path}: line {line}: duplicate column name(s) in header: {names}")
    return header


def _delimited_row(path: Path, line: int, raw: str, header: list[str], row: list[str]) -> Triple:
    if _SURROGATE.search(raw):
        return line, None, _reject(path, line, UNDECODABLE, raw)
    if len(row) != len(header):
        reason = f"wrong number of fields: expected {len(header)}, got {len(row)}"
        return line, None, _reject(path, line, reason, raw)
    return line, dict(zip(header, row)), None


def _reject(path: Path, line: int, reason: str, raw: str) -> RejectedRow:
    # Round-trip through bytes so surrogate-escaped bytes show up as U+FFFD in the report.
    text = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace").rstrip("\r\n")
    return RejectedRow(file=str(path), line=line, reason=reason, raw=text)


# ------------------------------------------------------------------------------------ JSON(L)


def json_type(value: Any) -> str:
    """JSON's own name for a value's type, for messages users can map back to their file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _read_jsonl(path: Path) -> Iterator[Triple]:
    """One JSON object per line; each line is decoded on its own so a bad line costs one row."""
    found = False
    with _open(path, "rb") as fh:
        for line, data in enumerate(fh, start=1):
            if line == 1:
                data = data.removeprefix(_BOM)
            raw = data.decode("utf-8", "replace")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                found = True
                yield line, None, _reject(path, line, UNDECODABLE, raw)
                continue
            if not text.strip():
                continue  # blank lines are layout, not records
            found = True
            yield _jsonl_row(path, line, text)
    if not found:
        raise _no_rows(path)


def _jsonl_row(path: Path, line: int, text: str) -> Triple:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"malformed JSON: {exc.msg} (column {exc.colno})"
        return line, None, _reject(path, line, reason, text)
    except RecursionError:
        return line, None, _reject(path, line, "malformed JSON: nested too deeply", text)
    if not isinstance(value, dict):
        return line, None, _reject(path, line, f"not a JSON object (got {json_type(value)})", text)
    return line, value, None


def _read_json(path: Path) -> Iterator[Triple]:
    """A top-level array of objects. The whole file is parsed before anything is yielded: a syntax
    error anywhere makes the array's extent unknown, so it is a file-level DataError."""
    with _open(path, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte offset {exc.start})") from exc
    elements = _parse_json_array(path, text)
    if not elements:
        raise _no_rows(path)
    for line, value in elements:
        if isinstance(value, dict):
            yield line, value, None
        else:
            reason = f"not a JSON object (got {json_type(value)})"
            yield line, None, _reject(path, line, reason, json.dumps(value, ensure_ascii=False))


def _parse_json_array(path: Path, text: str) -> list[tuple[int, Any]]:
    """Parse ``[v, v, ...]`` element by element, recording the line each element starts on.

    ``json.loads`` would give the values but not their positions; ``raw_decode`` per element gives
    both, so rejects in a .json file point at a real line like they do for every other format.
    """
    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text).end()
    if not text.startswith("[", pos):
        hint = " (one object per line? use format 'jsonl')" if text.startswith("{", pos) else ""
        raise DataError(f"{path}: expected a top-level JSON array of objects{hint}")
    elements: list[tuple[int, Any]] = []
    line, counted = 1, 0  # newlines counted incrementally: positions only move forward

    def fail(message: str, at: int) -> DataError:
        row = text.count("\n", 0, at) + 1
        col = at - text.rfind("\n", 0, at)
        return DataError(f"{path}: malformed JSON at line {row} column {col}: {message}")

    pos = _JSON_WS.match(text, pos + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise fail(exc.msg, exc.pos) from exc
            except RecursionError as exc:
                raise fail("nested too deeply", pos) from exc
            line, counted = line + text.count("\n", counted, pos), pos
            elements.append((line, value))
            pos = _JSON_WS.match(text, end).end()
            if text.startswith(",", pos):
                pos = _JSON_WS.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise fail("expected ',' or ']' after an array element", pos)
    if _JSON_WS.match(text, pos).end() != len(text):
        raise fail("extra data after the top-level array", _JSON_WS.match(text, pos).end())
    return elements


# ------------------------------------------------------------------------------------- Parquet


def _read_parquet(path: Path) -> Iterator[Triple]:
    """Parquet via pyarrow (imported lazily: it is heavy and only needed for this format)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        # iter_batches keeps memory bounded for large files.
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            for record in batch.to_pylist():
                row += 1
                yield row, record, None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}") from exc
    if row == 0:
        raise _no_rows(path)


_readers = {
    "csv": lambda p: _read_delimited(p, ","),
    "tsv": lambda p: _read_delimited(p, "\t"),
    "jsonl": _read_jsonl,
    "json": _read_json,
    "parquet": _read_parquet,
}


# ------------------------------------------------------------------------------------- labels


def _label_key(value: Any) -> str | None:
    """Normalise a raw label to the string it is matched by; ``""`` means empty, ``None`` means
    not a scalar at all. Integral floats become ints because pandas turns an int column with a
    gap into float64 (1 -> 1.0) and that must still mean label 1."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (str, int)):
        return str(value).strip()
    return None


def _as_int(key: str) -> int | None:
    return int(key) if _INTEGER.fullmatch(key) else None


def infer_label_names(values: Iterable[Any]) -> list[str]:
    """Label names from raw label values (empty and non-scalar values are ignored).

    All-integer labels are sorted numerically and named by their value, so 0..K-1 gives
    ["0", ..., "K-1"] and index == label value; anything else gives the sorted distinct strings.
    """
    keys = {key for key in map(_label_key, values) if key}
    ints = {_as_int(key) for key in keys}
    if keys and None not in ints:
        return [str(number) for number in sorted(ints)]
    return sorted(keys)


def _label_matcher(names: list[str], offset: int = 0):
    """Return ``match(key) -> index | None`` for the given label names.

    Exact name match wins. Otherwise an integer label maps by *value* when the names themselves
    are integers (names ["1".."5"]: label 1 is "1", and 0 is unknown rather than silently "1"), and
    by *index* when they are words (names ["negative", "positive"]: 0/1 are indices).
    With ``offset`` (``data.label_offset``) every integer label is an index less ``offset``, names
    or not: with offset 1, label 1 is the first name.
    """
    by_name: dict[str, int] = {}
    for index, name in enumerate(names):
        by_name.setdefault(name, index)
    numeric = [_as_int(name) for name in names]
    by_value: dict[int, int] | None = None
    if names and None not in numeric:
        by_value = {}
        for index, number in enumerate(numeric):
            by_value.setdefault(number, index)

    def match(key: str) -> int | None:
        if offset:
            number = _as_int(key)
            if number is not None:
                return number - offset if 0 <= number - offset < len(names) else None
        if key in by_name:
            return by_name[key]
        number = _as_int(key)
        if number is None:
            return None
        if by_value is not None:
            return by_value.get(number)
        return number if 0 <= number < len(names) else None

    return match


def unknown_label(key: str, names: list[str], offset: int = 0) -> str:
    """The reject reason of a label that is neither one of ``names`` nor a valid index."""
    if offset:
        return (f"unknown label '{key}' (allowed: {', '.join(names)}, or {offset}-{offset + len(names) - 1} "
                f"with data.label_offset {offset})")
    return f"unknown label '{key}' (allowed: {', '.join(names)})"


class IndexLabels:
    """The smallest and largest integer label used as an index into word label names (for
    ``one_based_problem``). Labels that are names, and numeric names (matched by value), do not count."""

    def __init__(self, names: list[str] | None):
        self.names = set(names or ())
        self.active = bool(names) and any(_as_int(name) is None for name in names)
        self.low: int | None = None
        self.high: int | None = None

    def add(self, key: str) -> None:
        number = _as_int(key) if self.active and key not in self.names else None
        if number is not None:
            self.low = number if self.low is None else min(self.low, number)
            self.high = number if self.high is None else max(self.high, number)


def one_based_problem(names: list[str], seen: IndexLabels, offset: int = 0) -> str | None:
    """Why integer class labels that never include 0 and go up to ``len(names)`` must not be read as
    0-based indices (a 1-based class column: every class shifts by one, the last is rejected)."""
    if offset or seen.low is None or seen.low < 1 or seen.high != len(names):
        return None
    return (
        f"the integer labels of the training data run from {seen.low} to {seen.high} and never include 0, but an "
        f"integer label is a 0-based index into data.label_names (0 = '{names[0]}', {len(names) - 1} = "
        f"'{names[-1]}'): every class would shift by one and label {seen.high} would be rejected. If 1 means "
        f"'{names[0]}', set data.label_offset: 1; or write the class names in the file instead of numbers"
    )


# ------------------------------------------------------------------------------ headerless files

#: Records past the header that ``headerless_hint`` compares the header with.
HEADERLESS_SAMPLE = 50
_NUMBER = re.compile(r"[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?")


def headerless_hint(header: list[str], records: list[Record], *, label_names: Iterable[str] | None = None,
                    text_column: str | None = "text", label_column: str | None = "label") -> str | None:
    """Advice for a CSV/TSV whose header row reads like data, or None.

    The header looks like data when one of its values is one of ``label_names``, is a number while
    the values below it are numbers (or label names) too, or recurs as a value of its own column.
    The advice suggests ``column_names`` built from ``text_column`` and ``label_column``.
    """
    names = {str(name) for name in label_names or ()}
    for index, value in enumerate(header):
        below = [str(record[value]).strip() for record in records if record.get(value) is not None]
        if value in names:
            reason = "one of data.label_names"
        elif _NUMBER.fullmatch(value) and below and all(_NUMBER.fullmatch(v) or v in names for v in below):
            reason = "a number like the rest of its column"
        elif value and value in below:
            reason = "a value that recurs in its column"
        else:
            continue
        suggested = _suggested_names(header, records, index, text_column, label_column)
        shown = value if len(value) <= 40 else value[:37] + "..."
        return (
            f"the file looks headerless: its first line holds '{shown}', {reason}, not a column name. "
            f"If the first line is data, set has_header: false and column_names: [{', '.join(suggested)}] "
            "(one name per column, in order) for this file (under data: for train_file, or in its "
            "data.sources entry)"
        )
    return None


def _suggested_names(header: list[str], records: list[Record], label_index: int, text_column: str | None,
                     label_column: str | None) -> list[str]:
    """A name per column: the label-like column gets ``label_column``, the column with the longest
    values ``text_column``, the others ``column<N>``."""
    def length(index: int) -> float:
        values = [header[index]] + [str(r.get(header[index], "")) for r in records]
        return sum(map(len, values)) / len(values)

    others = [i for i in range(len(header)) if i != label_index]
    text_index = max(others, key=length) if others else None
    return [label_column or "label" if i == label_index else text_column or "text" if i == text_index
            else f"column{i + 1}" for i in range(len(header))]


# ------------------------------------------------------------------------ classification loading


@dataclass
class ClassificationRows:
    """Kept rows (parallel lists), everything rejected, and the label vocabulary used."""

    texts: list[str]
    labels: list[int]  # indices into label_names
    lines: list[int]  # source line of each kept row
    rejected: list[RejectedRow]
    label_names: list[str]
    total: int  # kept + rejected


def load_classification(
    path: Path,
    *,
    text_column: str,
    label_column: str,
    label_names: list[str] | None,
    fmt: str | None = None,
    has_header: bool = True,
    column_names: list[str] | None = None,
    label_offset: int = 0,
) -> ClassificationRows:
    """Read ``path`` and return texts with label indices; bad rows go to ``rejected``.

    ``label_names=None`` infers the names from this file (see ``infer_label_names``). Raises
    ``DataError`` when a configured column exists in no record (a recipe mistake), when integer
    labels look 1-based (``one_based_problem``) or when no row at all is usable.
    """
    path = Path(path)
    records: list[tuple[int, Record]] = []
    rejected: list[RejectedRow] = []
    for line, record, reject in read_records(path, fmt, has_header=has_header, column_names=column_names):
        if reject is not None:
            rejected.append(reject)
        else:
            records.append((line, record))
    if records:
        hint = None
        if has_header and detect_format(path, fmt) in DELIMITED_FORMATS:
            hint = partial(headerless_hint, list(records[0][1]), [r for _, r in records[:HEADERLESS_SAMPLE]],
                           label_names=label_names, text_column=text_column, label_column=label_column)
        _require_columns(path, [record for _, record in records], (text_column, label_column), hint)

    # Text checks first, so label inference only sees rows that could actually be kept.
    candidates: list[tuple[int, str, str, Record]] = []
    for line, record in records:
        reason, text, key = _check_row(record, text_column, label_column)
        if reason is None:
            candidates.append((line, text, key, record))
        else:
            rejected.append(_record_reject(path, line, reason, record))

    names = list(label_names) if label_names is not None else infer_label_names(
        key for _, _, key, _ in candidates
    )
    match = _label_matcher(names, label_offset if label_names is not None else 0)
    if label_names is not None:
        seen = IndexLabels(names)
        for _, _, key, _ in candidates:
            seen.add(key)
        problem = one_based_problem(names, seen, label_offset)
        if problem:
            raise DataError(f"{path}: {problem}")
    rows = ClassificationRows([], [], [], [], names, 0)
    for line, text, key, record in candidates:
        index = match(key)
        if index is None:
            reason = unknown_label(key, names, label_offset if label_names is not None else 0)
            rejected.append(_record_reject(path, line, reason, record))
            continue
        rows.texts.append(text)
        rows.labels.append(index)
        rows.lines.append(line)

    rows.rejected = sorted(rejected, key=lambda r: r.line)  # file order, whatever stage rejected
    rows.total = len(rows.texts) + len(rows.rejected)
    if not rows.texts:
        first = rows.rejected[0]
        raise DataError(
            f"no usable rows in {path}: all {rows.total} records were rejected "
            f"(first: line {first.line}: {first.reason})"
        )
    return rows


def _require_columns(path: Path, records: list[Record], columns: Iterable[str], hint=None) -> None:
    """A column that no record has is a configuration mistake, not a bad row: say which columns
    do exist so the user can fix text_column/label_column (or, when ``hint()`` finds the header row
    reads like data, that the file looks headerless)."""
    available = list(dict.fromkeys(key for record in records for key in record))
    missing = [column for column in dict.fromkeys(columns) if column not in available]
    if missing:
        names = ", ".join(f"'{column}'" for column in missing)
        advice = hint() if hint is not None else None
        raise DataError(
            f"{path}: missing column {names} (available columns: {', '.join(available)}); "
            + (f"{advice}. If it is a header, set text_column/label_column to its columns" if advice else
               "set text_column/label_column to one of these")
        )


def _check_row(record: Record, text_column: str, label_column: str) -> tuple[str | None, str, str]:
    """Return ``(reason, text, label_key)``; reason is None when the row passes."""
    for column in (text_column, label_column):
        if column not in record:
            return f"missing column '{column}'", "", ""
    text = record[text_column]
    if text is not None and not isinstance(text, str):
        return f"text is not a string (got {json_type(text)})", "", ""
    if text is None or not text.strip():
        return "empty text", "", ""
    key = _label_key(record[label_column])
    if key is None:
        return f"label is not a string or number (got {json_type(record[label_column])})", "", ""
    if not key:
        return "empty label", "", ""
    return None, text, key


def _record_reject(path: Path, line: int, reason: str, record: Record) -> RejectedRow:
    # The parsed record stands in for the raw line; default=str covers parquet dates/decimals.
    raw = json.dumps(record, ensure_ascii=False, default=str)
    return RejectedRow(file=str(path), line=line, reason=reason, raw=raw)
