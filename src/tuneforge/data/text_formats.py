"""Readers for the formats that are not tables of records: plain text, folders of text files,
CoNLL token/tag columns, and line-aligned parallel files.

Each reader yields ``Row`` or ``RejectedRow`` in file order and reads line by line from a binary
handle, so memory stays constant however large the file is. Lines are decoded one at a time as
strict UTF-8: one bad byte costs the record that holds it (a ``RejectedRow`` with the reason
``UNDECODABLE``), not the file.

File-level problems (missing, empty, UTF-16 or binary) raise ``DataError`` when the reader is
created, not on the first ``next()``, so a wrong path fails where the source is opened; a file
that turns out to hold only blank lines raises once it has been read to the end.
Blank lines are layout everywhere (sentence separators in CoNLL, paragraph breaks in text), never
records.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tuneforge.data.readers import UNDECODABLE
from tuneforge.data.records import Row, RowKind
from tuneforge.data.rejects import RejectedRow
from tuneforge.errors import DataError

#: Key of ``Row.extra`` naming the configured source a row came from (``SourceConfig.name``):
#: weights and reports group by it, while ``Row.source`` stays the real file for "file:line".
SOURCE_NAME_KEY = "source_name"

CONTAINS_NUL = "contains NUL bytes (binary data, or UTF-16 text)"
DOCSTART = "-DOCSTART-"

_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 4096

Item = Row | RejectedRow


class Line(NamedTuple):
    """One physical line: ``text`` is None when it could not be decoded, and ``reason`` says why;
    ``raw`` is always printable (bad bytes as U+FFFD) for ``RejectedRow.raw``."""

    number: int
    text: str | None
    reason: str | None
    raw: str


def make_row(kind: RowKind, data: dict[str, Any], path: Path, line: int, name: str) -> Row:
    # A fresh extra dict per row: rows are shared between steps and must not alias mutable state.
    return Row(kind=kind, data=data, source=str(path), line=line, extra={SOURCE_NAME_KEY: name})


# ------------------------------------------------------------------------------ file checks


def check_text_file(path: Path) -> None:
    """Raise ``DataError`` unless ``path`` is a readable, non-empty file that may be UTF-8 text.

    UTF-8 text never contains NUL bytes, while UTF-16 text (Windows "Unicode" exports) and binary
    files are full of them; decoding those line by line would reject every line with a confusing
    reason, so they are caught here with a message that says what the file looks like.
    """
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"data path is a directory, not a file: {path}")
    head = _read_head(path)
    if not head:
        raise DataError(f"data file has no rows: {path} is empty (0 bytes)")
    problem = _binary_problem(head)
    if problem:
        raise DataError(f"{path} is not UTF-8 text: {problem}")


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from exc


def _binary_problem(head: bytes) -> str | None:
    """Why ``head`` (a file's first bytes) cannot be UTF-8 text, with the fix; None if it may be."""
    convert = "; convert it to UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 in.txt > out.txt`"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "it starts with a UTF-16 byte-order mark" + convert
    if b"\x00" not in head:
        return None
    # UTF-16 stores ASCII as one NUL and one ASCII byte, so NULs cluster on one byte parity.
    even, odd = (_nul_share(head[start::2]) for start in (0, 1))
    if max(even, odd) > 0.4 and min(even, odd) < 0.05:
        return "it looks like UTF-16 (every other byte is NUL)" + convert
    return f"it contains NUL bytes in its first {len(head)} bytes, so it is a binary file; check the path"


def _nul_share(data: bytes) -> float:
    return data.count(0) / len(data) if data else 0.0


def no_records(path: Path) -> DataError:
    return DataError(f"data file has no rows: {path} contains only blank lines")


def decoded_lines(path: Path) -> Iterator[Line]:
    """Every physical line of ``path`` (newline stripped), decoded on its own."""
    with open(path, "rb") as fh:
        for number, data in enumerate(fh, start=1):
            if number == 1:
                data = data.removeprefix(_BOM)
            data = data.rstrip(b"\r\n")
            text, reason = _decode(data)
            yield Line(number, text, reason, text if text is not None else _printable(data))


def _decode(data: bytes) -> tuple[str | None, str | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, UNDECODABLE
    if "\x00" in text:
        return None, CONTAINS_NUL
    return text, None


def _printable(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\x00", "")


def reject(path: Path, line: int, reason: str, raw: str) -> RejectedRow:
    return RejectedRow(file=str(path), line=line, reason=reason, raw=raw)


# --------------------------------------------------------------------------------- plain text


def read_text(path: Path, name: str, unit: str = "line") -> Iterator[Item]:
    """One unlabeled ``text`` row per non-blank line, per paragraph (``unit="paragraph"``: lines
    up to a blank line, joined with newlines), or (``unit="file"``) one for the file."""
    check_text_file(path)
    if unit == "file":
        return iter([_whole_file_row(path, name)])
    if unit == "paragraph":
        return _text_paragraphs(path, name)
    return _text_lines(path, name)


def _text_paragraphs(path: Path, name: str) -> Iterator[Item]:
    found = False
    lines: list[Line] = []

    def paragraph() -> Item:
        bad = next((line for line in lines if line.text is None), None)
        if bad is not None:
            return reject(path, bad.number, bad.reason or UNDECODABLE, bad.raw)
        text = "\n".join(line.text for line in lines)  # type: ignore[misc]
        return make_row("text", {"text": text, "label": None, "group": None}, path, lines[0].number, name)

    for line in decoded_lines(path):
        if _blank(line):
            if lines:
                found = True
                yield paragraph()
                lines = []
            continue
        lines.append(line)
    if lines:
        found = True
        yield paragraph()
    if not found:
        raise no_records(path)


def _text_lines(path: Path, name: str) -> Iterator[Item]:
    found = False
    for line in decoded_lines(path):
        if _blank(line):
            continue
        found = True
        if line.text is None:
            yield reject(path, line.number, line.reason or UNDECODABLE, line.raw)
        else:
            yield make_row("text", {"text": line.text, "label": None, "group": None}, path, line.number, name)
    if not found:
        raise no_records(path)


def _blank(line: Line) -> bool:
    return line.text is not None and not line.text.strip()


def _whole_file_row(path: Path, name: str) -> Item:
    data = path.read_bytes().removeprefix(_BOM)
    text, reason = _decode(data)
    if text is None:
        return reject(path, 1, reason or UNDECODABLE, _printable(data))
    if not text.strip():
        raise no_records(path)
    return make_row("text", {"text": text, "label": None, "group": None}, path, 1, name)


# --------------------------------------------------------------------------------- text files


def list_text_files(pattern: Path) -> list[Path]:
    """Files of a ``text_files`` source: a directory means every ``*.txt`` below it (recursive);
    anything else is a glob (``docs/**/*.md``). Sorted, so row order is reproducible."""
    if pattern.is_dir():
        files = sorted(p for p in pattern.rglob("*.txt") if p.is_file())
        what = f"no *.txt files in directory {pattern}"
    else:
        files = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
        what = f"no files match {pattern}"
    if not files:
        raise DataError(f"{what} (use a glob such as 'docs/**/*.md' for other extensions)")
    return files


def read_text_files(pattern: Path, name: str) -> Iterator[Item]:
    """One ``text`` row per file (line 1, ``source`` = the file). A bad file (empty, binary,
    undecodable) is one ``RejectedRow``: one broken document must not stop a whole folder."""
    files = list_text_files(pattern)
    return (_document(path, name) for path in files)


def _document(path: Path, name: str) -> Item:
    try:
        data = path.read_bytes().removeprefix(_BOM)
    except OSError as exc:
        return reject(path, 1, f"cannot read file: {exc.strerror or exc}", "")
    if not data.strip():
        return reject(path, 1, "empty file", "")
    problem = _binary_problem(data[:_SNIFF_BYTES])
    text, reason = _decode(data)
    if problem or text is None:
        shown = _printable(data[:_SNIFF_BYTES])
        return reject(path, 1, f"not UTF-8 text: {problem}" if problem else reason or UNDECODABLE, shown)
    return make_row("text", {"text": text, "label": None, "group": None}, path, 1, name)


# -------------------------------------------------------------------------------------- CoNLL


def read_conll(path: Path, name: str, token_column: int = 0, tag_column: int = -1) -> Iterator[Item]:
    """One ``tokens`` row per sentence; blank lines separate sentences, ``-DOCSTART-`` lines are
    document markers, not tokens. A sentence with a bad line is rejected as a whole (its tags
    would no longer line up with its tokens); its ``line`` is where the sentence starts."""
    check_text_file(path)
    return _conll_sentences(path, name, token_column, tag_column)


def _conll_sentences(path: Path, name: str, token_column: int, tag_column: int) -> Iterator[Item]:
    found = False
    sentence: list[Line] = []
    for line in decoded_lines(path):
        if _blank(line) or (line.text is not None and line.text.split()[0] == DOCSTART):
            if sentence:
                found = True
                yield _conll_sentence(path, name, sentence, token_column, tag_column)
                sentence = []
            continue
        sentence.append(line)
    if sentence:
        found = True
        yield _conll_sentence(path, name, sentence, token_column, tag_column)
    if not found:
        raise DataError(f"data file has no rows: {path} contains no CoNLL sentences")


def _conll_sentence(
    path: Path, name: str, lines: list[Line], token_column: int, tag_column: int
) -> Item:
    start = lines[0].number
    raw = "\n".join(line.raw for line in lines)
    tokens: list[str] = []
    tags: list[str] = []
    for line in lines:
        if line.text is None:
            return reject(path, start, f"line {line.number}: {line.reason}", raw)
        columns = line.text.split()
        problem = _column_problem(len(columns), token_column, tag_column)
        if problem:
            return reject(path, start, f"line {line.number}: {problem}", raw)
        tokens.append(columns[token_column])
        tags.append(columns[tag_column])
    return make_row("tokens", {"tokens": tokens, "tags": tags, "group": None}, path, start, name)


def _column_problem(count: int, token_column: int, tag_column: int) -> str | None:
    def resolve(index: int) -> int | None:
        position = index if index >= 0 else count + index
        return position if 0 <= position < count else None

    token, tag = resolve(token_column), resolve(tag_column)
    if token is None or tag is None or token == tag:
        return (
            f"too few columns: got {count}, need separate token column {token_column} "
            f"and tag column {tag_column}"
        )
    return None


# ----------------------------------------------------------------------------------- parallel


def read_parallel(source_path: Path, target_path: Path, name: str) -> Iterator[Item]:
    """One ``pair`` row per line number, read from both files in lock step.

    Line n of the source file is the translation of line n of the target file, so a line with an
    empty side is rejected (never re-aligned), a line blank on both sides is layout, and when the
    files have different lengths every extra line of the longer one is rejected with both counts.
    """
    check_text_file(source_path)
    check_text_file(target_path)
    return _pairs(source_path, target_path, name)


def _pairs(source_path: Path, target_path: Path, name: str) -> Iterator[Item]:
    found = False
    sources, targets = decoded_lines(source_path), decoded_lines(target_path)
    count = 0
    while True:
        # Not zip(): it drops the line it already pulled from the longer file.
        src, tgt = next(sources, None), next(targets, None)
        if src is None or tgt is None:
            break
        count += 1
        item = _pair(source_path, target_path, name, src, tgt)
        if item is not None:
            found = True
            yield item
    if src is not None or tgt is not None:
        longer, rest = (source_path, sources) if src is not None else (target_path, targets)
        total = count + 1 + sum(1 for _ in rest)
        for item in _extra_lines(longer, count, total, source_path, target_path):
            found = True
            yield item
    if not found:
        raise DataError(f"data file has no rows: {source_path} and {target_path} contain only blank lines")


def _pair(source_path: Path, target_path: Path, name: str, src: Line, tgt: Line) -> Item | None:
    if _blank(src) and _blank(tgt):
        return None
    raw = f"{src.raw}\t{tgt.raw}"
    for path, side in ((source_path, src), (target_path, tgt)):
        if side.text is None:
            return reject(path, side.number, f"{side.reason} in {path.name}", raw)
        if not side.text.strip():
            return reject(path, side.number, f"empty line in {path.name} (its translation is not empty)", raw)
    data = {"source": src.text, "target": tgt.text, "group": None}
    return make_row("pair", data, source_path, src.number, name)


def _extra_lines(
    longer: Path, shorter_count: int, longer_count: int, source_path: Path, target_path: Path
) -> Iterator[RejectedRow]:
    """Reject the non-blank tail of the longer file. The reason names both lengths, which are only
    known at the end, so the caller counts the tail first and it is read again here (two passes,
    constant memory)."""
    counts = {source_path: shorter_count, target_path: shorter_count, longer: longer_count}
    reason = (
        f"no matching line: {source_path.name} has {counts[source_path]} lines, "
        f"{target_path.name} has {counts[target_path]} lines"
    )
    for line in decoded_lines(longer):
        if line.number > shorter_count and not _blank(line):
            yield reject(longer, line.number, reason, line.raw)
