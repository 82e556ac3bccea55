"""Data sources: one entry of the recipe's ``data.sources`` list, read as a stream of rows.

``iter_source(cfg)`` is the single entry point from "a path in a recipe" to ``Row``s: it resolves
the path, works out the format, and yields ``Row`` or ``RejectedRow`` in file order, lazily, so a
source larger than memory can be read (``max_rows`` stops reading early). ``apply_weights`` then
mixes several sources by sampling rate.

Formats and the row kinds they produce:

=============================================  =========================================
csv, tsv, jsonl, json, parquet, datasets       ``text`` rows (text, raw label, group), or
                                               ``chat`` rows when the records are chats
alpaca, sharegpt, messages                     ``chat`` rows (records from any of the above)
preference, kto                                ``preference`` rows (records from any of the above)
text (one row per line, or per file)           ``text`` rows without label (or the source's ``label``)
text_files (a folder or glob; one row a file)  ``text`` rows without label (or the source's ``label``)
class_folders (a folder of class subfolders)   ``text`` rows, one a file, labelled with its subfolder
conll                                          ``tokens`` rows (one per sentence)
parallel (``path`` + ``target_path``)          ``pair`` rows
squad (SQuAD v1.1 JSON)                        ``qa`` rows (one per question)
=============================================  =========================================

``format: auto`` picks, in order: ``parallel`` when ``target_path`` is set; ``text_files`` for a
glob; for a directory ``datasets`` when it was written by ``save_to_disk``, else ``text_files``;
``conll`` for ``.conll``/``.iob``/``.iob2``/``.bio`` (also as in ``train.iob2.txt``); ``text`` for
``.txt``; ``squad`` for a ``.json`` file that opens like SQuAD (an object whose ``"data"`` list
holds articles with ``"paragraphs"``: a records ``.json`` is an array, so the two cannot be
confused); else the table format named by the suffix. Record formats are then told apart by the
*first record*: if it has ``text_column`` the rows are text; otherwise ``messages`` means OpenAI
messages, ``conversations`` ShareGPT, and ``instruction`` + ``output`` Alpaca; ``chosen`` +
``rejected`` (with ``prompt``, ``conversations`` or neither: TRL, LLaMA-Factory, HH-RLHF) is a
preference pair, and ``label`` with ``completion`` (TRL) or with ``messages``/``conversations`` and a
boolean value (KTO) an unpaired preference record; anything else is a ``DataError`` that lists the
columns found. Naming a chat or preference format explicitly skips the guess.

Tasks that generate their replies (``require_reply=False``, GRPO) read chats ending with a user turn as
prompts instead of rejecting them.

``class_folders`` is never guessed: a folder is ``datasets`` or ``text_files`` unless named so.

A CSV/TSV without a header row is read with ``has_header: false`` (columns ``column_names``, or "0",
"1", ... by position); when a column is missing and the header row reads like data (a label name, a
number over a column of numbers), the error says the file looks headerless.

Label values are kept raw (mapping them to indices needs every source, so it happens later).
This module must not import torch or transformers; ``datasets`` is imported only for that format.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from tuneforge.data import conversations, text_formats
from tuneforge.data.conversations import DEFAULT_ROLE_MAP, InvalidConversation, json_type
from tuneforge.data.qa import read_squad
from tuneforge.data.readers import (COLUMN_NAMES_NEED_NO_HEADER, DELIMITED_FORMATS, HEADERLESS_SAMPLE, Triple,
                                    headerless_hint, read_records)
from tuneforge.data.records import Row, content_key
from tuneforge.data.rejects import RejectedRow
from tuneforge.data.text_formats import SOURCE_NAME_KEY, Item, make_row
from tuneforge.errors import DataError
from tuneforge.sections import Section

SourceFormat = Literal[
    "auto", "csv", "tsv", "jsonl", "json", "parquet", "text", "text_files", "datasets",
    "conll", "parallel", "alpaca", "sharegpt", "messages", "squad", "class_folders", "preference", "kto",
]  # fmt: skip
FORMATS: tuple[str, ...] = get_args(SourceFormat)
RECORD_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "datasets")
CHAT_FORMATS = ("alpaca", "sharegpt", "messages")
#: Preference records: pairs (chosen/rejected) and unpaired KTO records (a completion and a boolean label).
PREFERENCE_FORMATS = ("preference", "kto")
#: Formats whose records a record file (or datasets folder) holds: chats and preference records.
CONTENT_FORMATS = CHAT_FORMATS + PREFERENCE_FORMATS
CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio")

# Which formats each optional field means something for. A field set explicitly for a format that
# ignores it is almost always a recipe mistake (e.g. target_path with format csv), so it is an error.
_APPLIES_TO: dict[str, tuple[str, ...]] = {
    "text_column": RECORD_FORMATS,
    "label_column": RECORD_FORMATS,
    "group_column": RECORD_FORMATS + CONTENT_FORMATS + ("squad",),
    "target_path": ("parallel",),
    "target_column": RECORD_FORMATS,
    "tags_column": RECORD_FORMATS,
    "conll_token_column": ("conll",),
    "conll_tag_column": ("conll",),
    "text_unit": ("text",),
    "role_map": RECORD_FORMATS + ("sharegpt", "messages") + PREFERENCE_FORMATS,
    "split": ("datasets",) + CONTENT_FORMATS,
    "instruction_column": ("alpaca",),
    "output_column": ("alpaca",),
    "has_header": DELIMITED_FORMATS,
    "column_names": DELIMITED_FORMATS,
    "label": ("text", "text_files") + RECORD_FORMATS,
}
_GLOB = re.compile(r"[*?\[]")
_INDEX = re.compile(r"[0-9]+")  # a class_folders subfolder named by a class index
_DATASET_MARKERS = ("state.json", "dataset_dict.json")
# How a SQuAD file opens: {"version": ..., "data": [{"title": ..., "paragraphs": [...
# Every SQuAD release puts "paragraphs" within the first article's first few keys.
_SQUAD_OPENING = re.compile(r'^\s*\{.*?"data"\s*:\s*\[\s*\{.*?"paragraphs"\s*:', re.DOTALL)
_SQUAD_SNIFF_BYTES = 8192
#: The one group_column a squad source takes: the paragraph, so that no context is both trained on
#: and asked about in validation (SQuAD rows have no other columns to group by).
SQUAD_GROUP = "context"

log = logging.getLogger(__name__)


class SourceConfig(Section):
    """One data source of a recipe. Relative paths are resolved against the folder the command runs
    in (like ``train_file``), unless the caller passes another ``base_dir`` to ``iter_source``."""

    path: Path = Field(
        ...,
        description="The data file. For text_files: a directory (every *.txt below it) or a glob such as "
        "docs/**/*.md. For datasets: a directory written by datasets' save_to_disk. For parallel: the "
        "source-language file.",
    )
    format: SourceFormat = Field(
        "auto",
        description="How to read path. auto: parallel when target_path is set, else from the path (see "
        "tuneforge.data.sources); chat and preference records in jsonl/json/parquet/datasets are recognised by "
        "their keys. preference: chosen/rejected pairs (TRL, HH-RLHF, LLaMA-Factory); kto: a completion with a "
        "boolean label.",
    )
    name: str | None = Field(
        None, min_length=1, description="Name used in reports and data.weights; default: the path as written."
    )
    text_column: str = Field("text", min_length=1, description="Record column holding the text.")
    label_column: str | None = Field(
        "label",
        description="Record column holding the label (kept raw here). null, or the default 'label' absent "
        "from the first record, gives unlabeled text rows.",
    )
    group_column: str | None = Field(
        None,
        description="Record column copied to the row's group: rows sharing a group stay in the same split. "
        "squad only takes 'context': every question on one paragraph stays in one split.",
    )
    target_path: Path | None = Field(
        None, description="parallel only: the target-language file, line-aligned with path."
    )
    target_column: str | None = Field(
        None, min_length=1,
        description="Record column holding the target text: the records become source/target pairs (seq2seq, "
        "causal-LM text-to-text) with text_column as the source. A list of sentences in text_column is joined "
        "with spaces; a list in target_column gives several references: the first is trained on, all are "
        "scored against (SciTLDR).",
    )
    tags_column: str | None = Field(
        None, min_length=1,
        description="Record column holding a list of word tags (IOB2 strings, or indices into data.label_names): "
        "the records become NER rows with text_column holding the list of words (Hugging Face's "
        "tokens/ner_tags layout). A record whose word and tag counts differ is rejected.",
    )
    conll_token_column: int = Field(0, description="conll only: whitespace-separated column of the token.")
    conll_tag_column: int = Field(-1, description="conll only: column of the tag (negative counts from the end).")
    text_unit: Literal["line", "paragraph", "file"] = Field(
        "line", description="text only: one row per non-blank line, per paragraph (lines up to a blank line, "
        "joined with newlines: speeches, documents), or the whole file as one row."
    )
    instruction_column: str = Field(
        "instruction", min_length=1, description="alpaca only: the column holding the prompt (e.g. question)."
    )
    output_column: str = Field(
        "output", min_length=1, description="alpaca only: the column holding the reply (e.g. answer)."
    )
    role_map: dict[str, Literal["system", "user", "assistant"]] = Field(
        default_factory=lambda: dict(DEFAULT_ROLE_MAP),
        description="ShareGPT 'from' / messages 'role' value -> system, user or assistant. Replaces the "
        "default (system; human, user -> user; gpt, assistant, model -> assistant) as a whole; tool and "
        "function turns are rejected unless mapped here.",
    )
    split: str | None = Field(
        None,
        description="datasets only: the split to read from a saved DatasetDict; default: its only split.",
    )
    weight: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="Sampling rate in the training split: 0.5 keeps about half of this source's rows, 3 "
        "repeats each row three times, 2.5 twice plus once more with probability 0.5.",
    )
    max_rows: int | None = Field(
        None, ge=1, description="Stop reading after this many good rows (rejects met on the way still count)."
    )
    has_header: bool = Field(
        True, description="csv/tsv only: the first line names the columns. false: every line is data; the "
        "columns are column_names, or without them \"0\", \"1\", ... by position (text_column: \"0\")."
    )
    column_names: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="csv/tsv with has_header: false: a name per column, in order, e.g. "
        "[sentence, label]; text_column and label_column then name two of them."
    )
    label: str | None = Field(
        None, min_length=1, description="Classification only: the class of every row of this source (one file "
        "per class: {path: reviews.pos, format: text, label: positive}). Not with a label column in the file."
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> "SourceConfig":
        if self.format == "class_folders" and self.label is not None:
            raise ValueError("format class_folders takes each row's label from its subfolder's name; remove label")
        if self.format == "parallel" and self.target_path is None:
            raise ValueError("format 'parallel' needs target_path (the target-language file; path is the source)")
        if self.format != "auto":
            problem = inapplicable_fields(self, self.format)
            if problem:
                raise ValueError(problem)
        if self.format == "squad" and _squad_group_problem(self.group_column):
            raise ValueError(_squad_group_problem(self.group_column))
        if self.conll_token_column == self.conll_tag_column:
            raise ValueError("conll_token_column and conll_tag_column must differ")
        if self.label_column is not None and self.label_column == self.text_column:
            raise ValueError(f"label_column and text_column are both '{self.text_column}'")
        if self.target_column is not None and self.tags_column is not None:
            raise ValueError("target_column (source/target pairs) and tags_column (NER rows) exclude each other")
        structured = self.target_column or self.tags_column
        if structured is not None and "label_column" in self.model_fields_set and self.label_column is not None:
            raise ValueError(f"label_column is set, but {'target' if self.target_column else 'tags'}_column "
                             f"'{structured}' makes rows without a label; remove label_column")
        if structured is not None and structured == self.text_column:
            raise ValueError(f"text_column and {'target' if self.target_column else 'tags'}_column are both "
                             f"'{structured}'")
        if "assistant" not in self.role_map.values():
            raise ValueError("role_map maps no role to 'assistant': every chat row would be rejected")
        if self.column_names is not None:
            if self.has_header:
                raise ValueError(COLUMN_NAMES_NEED_NO_HEADER)
            dupes = sorted({n for n in self.column_names if self.column_names.count(n) > 1})
            if dupes:
                raise ValueError(f"column_names has duplicates: {', '.join(dupes)}")
        if self.label is not None:
            if "label_column" in self.model_fields_set and self.label_column is not None:
                raise ValueError("label and label_column exclude each other: label gives every row of this source "
                                 "the same class, label_column reads each row's class from the file; remove one")
            if structured is not None:
                raise ValueError(f"label is set, but {'target' if self.target_column else 'tags'}_column "
                                 f"'{structured}' makes rows without a label; remove label")
        return self


def _squad_group_problem(group_column: str | None) -> str | None:
    if group_column is None or group_column == SQUAD_GROUP:
        return None
    return (f"format 'squad' groups only by paragraph: group_column must be '{SQUAD_GROUP}' or null, "
            f"got '{group_column}'")


def source_name(cfg: SourceConfig) -> str:
    """The name reports and ``data.weights`` use for ``cfg``."""
    return cfg.name if cfg.name is not None else str(cfg.path)


def row_source_name(row: Row) -> str:
    """The configured source a row came from (falls back to its file for rows built elsewhere)."""
    return row.extra.get(SOURCE_NAME_KEY, row.source)


def inapplicable_fields(cfg: SourceConfig, fmt: str) -> str | None:
    """A message naming the explicitly set fields that ``fmt`` ignores, or None."""
    wrong = [key for key, formats in _APPLIES_TO.items() if key in cfg.model_fields_set and fmt not in formats]
    if not wrong:
        return None
    where = ", ".join(f"{key} (applies to: {', '.join(_APPLIES_TO[key])})" for key in wrong)
    return f"format '{fmt}' does not use {where}; remove the key or change format"


# ------------------------------------------------------------------------------- resolution


def resolve_path(path: Path, base_dir: Path | None) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def resolve_format(cfg: SourceConfig, path: Path) -> str:
    """The concrete format of ``cfg`` (``path`` already resolved); see the module docstring."""
    if cfg.format != "auto":
        return cfg.format
    if cfg.target_path is not None:
        return "parallel"
    if path.is_dir():
        return "datasets" if _is_saved_dataset(path) else "text_files"
    if is_glob(path):
        return "text_files"
    suffix = path.suffix.lower()
    inner = Path(path.stem).suffix.lower()  # "train.iob2.txt" -> ".iob2"
    if suffix in CONLL_SUFFIXES or (suffix == ".txt" and inner in CONLL_SUFFIXES):
        return "conll"
    if suffix == ".txt":
        return "text"
    if suffix == ".json" and _opens_like_squad(path):
        return "squad"
    if suffix.lstrip(".") in RECORD_FORMATS:
        return suffix.lstrip(".")
    shown = f"suffix '{suffix}'" if suffix else "no suffix"
    raise DataError(
        f"cannot tell the format of {path}: {shown}; set format to one of: {', '.join(FORMATS[1:])}"
    )


def is_glob(path: Path) -> bool:
    # An existing file named like "data[1].csv" is a file, not a pattern.
    return not path.exists() and _GLOB.search(str(path)) is not None


def _opens_like_squad(path: Path) -> bool:
    """Whether the first bytes of ``path`` read like a SQuAD file (see ``_SQUAD_OPENING``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SQUAD_SNIFF_BYTES)
    except OSError:
        return False  # a missing or unreadable file fails later, with the reader's message
    # "replace": the sniffed bytes may end inside a multi-byte character.
    return _SQUAD_OPENING.match(head.decode("utf-8-sig", "replace")) is not None


def _is_saved_dataset(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _DATASET_MARKERS)


def _record_container(path: Path, fmt: str) -> str:
    """For chat and preference formats: which record format holds the records."""
    if path.is_dir():
        return "datasets"
    suffix = path.suffix.lower().lstrip(".")
    if suffix in RECORD_FORMATS:
        return suffix
    raise DataError(
        f"format '{fmt}' reads records from .jsonl, .json, .parquet, .csv or .tsv files or a datasets "
        f"directory; cannot tell how to read {path} (suffix '{path.suffix}')"
    )


# ------------------------------------------------------------------------------------ reading


def iter_source(cfg: SourceConfig, base_dir: Path | None = None,
                label_names: list[str] | None = None, *, require_reply: bool = True) -> Iterator[Item]:
    """Stream ``cfg``'s rows and rejects in file order.

    File-level problems (missing path, unknown format, empty/binary file, a field that does not
    apply) raise ``DataError`` here, at the call; rows are read lazily. A configured column missing
    from the first record raises ``DataError`` on the first ``next()``. ``label_names`` (the
    recipe's ``data.label_names``) pick the subfolders of ``class_folders`` and help tell a
    headerless CSV/TSV; labels themselves are checked later. ``require_reply=False`` (a task that
    generates the replies: GRPO) keeps chats that end with a user turn, as prompts without a reference.
    """
    path = resolve_path(cfg.path, base_dir)
    if not path.exists() and not is_glob(path):
        raise DataError(f"data file not found: {path}")
    fmt = resolve_format(cfg, path)
    problem = inapplicable_fields(cfg, fmt)
    if problem:
        raise DataError(f"source {source_name(cfg)}: {problem}")
    items = _open_source(cfg, fmt, path, base_dir, label_names, require_reply)
    if cfg.label is not None:
        items = _with_label(items, cfg.label)
    return _first_rows(items, cfg.max_rows) if cfg.max_rows is not None else items


def _with_label(items: Iterator[Item], label: str) -> Iterator[Item]:
    for item in items:
        if isinstance(item, Row) and item.kind == "text":
            item = replace(item, data={**item.data, "label": label})
        yield item


def _open_source(cfg: SourceConfig, fmt: str, path: Path, base_dir: Path | None,
                 label_names: list[str] | None = None, require_reply: bool = True) -> Iterator[Item]:
    name = source_name(cfg)
    if fmt == "class_folders":
        return read_class_folders(path, name, label_names)
    if fmt == "text":
        return text_formats.read_text(path, name, cfg.text_unit)
    if fmt == "text_files":
        return text_formats.read_text_files(path, name)
    if fmt == "conll":
        return text_formats.read_conll(path, name, cfg.conll_token_column, cfg.conll_tag_column)
    if fmt == "squad":
        return _squad_items(path, name, cfg.group_column)
    if fmt == "parallel":
        assert cfg.target_path is not None  # resolve_format only picks parallel with a target
        target = resolve_path(cfg.target_path, base_dir)
        return text_formats.read_parallel(path, target, name)
    if fmt in CONTENT_FORMATS:
        container = _record_container(path, fmt)
        return _record_items(cfg, path, _records(path, container, cfg.split), name, chat_format=fmt,
                             require_reply=require_reply)
    triples = _records(path, fmt, cfg.split, cfg.has_header, cfg.column_names)
    headerless = fmt in DELIMITED_FORMATS and cfg.has_header
    return _record_items(cfg, path, triples, name, chat_format=None,
                         label_names=label_names if headerless else None, sniff_header=headerless,
                         require_reply=require_reply)


# ------------------------------------------------------------------------------ class folders


def read_class_folders(path: Path, name: str, label_names: list[str] | None = None) -> Iterator[Item]:
    """One ``text`` row per file below each subfolder of ``path``, labelled with the subfolder's name
    (IMDB's ``train/pos/*.txt``, ``train/neg/*.txt``; 20 Newsgroups' files without a suffix).

    Files directly in ``path`` and hidden files are not read. With ``label_names``, only subfolders
    named after a class (or named by an integer, an index) are read: IMDB's ``train/unsup`` holds
    unlabelled reviews. A file that cannot be read as text is one rejected row.
    """
    if not path.is_dir():
        raise DataError(f"format class_folders reads a folder with one subfolder per class (e.g. train/ holding "
                        f"train/pos/*.txt and train/neg/*.txt); {path} is not a folder")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{path} has no subfolders: format class_folders reads one subfolder per class (e.g. "
                        f"{path / 'pos'}, {path / 'neg'}), each file in it one text labelled with the subfolder's "
                        "name")
    if label_names is not None:
        classes = set(label_names)
        chosen = [f for f in folders if f.name in classes or _INDEX.fullmatch(f.name)]
        if not chosen:
            raise DataError(f"{path}: no subfolder is named after a class of data.label_names "
                            f"({', '.join(label_names)}); subfolders: {', '.join(f.name for f in folders)}")
        skipped = [f.name for f in folders if f not in chosen]
        if skipped:
            log.warning("%s: not reading subfolder(s) %s: not among data.label_names (%s)", path,
                        ", ".join(skipped), ", ".join(label_names))
        folders = chosen
    files = [(folder.name, file) for folder in folders for file in _folder_files(folder)]
    if not files:
        raise DataError(f"{path}: the class subfolders {', '.join(f.name for f in folders)} hold no files")
    return (_labelled(text_formats._document(file, name), label) for label, file in files)


def _folder_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` (any suffix), hidden files and folders excepted, sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _labelled(item: Item, label: str) -> Item:
    return replace(item, data={**item.data, "label": label}) if isinstance(item, Row) else item


def _squad_items(path: Path, name: str, group_column: str | None) -> Iterator[Item]:
    """``read_squad``'s rows, with the paragraph as group when ``group_column`` asks for it.

    The group is a digest of the context, not the context itself: it is copied into every prepared
    row, and a paragraph is hundreds of characters repeated for each of its questions.
    """
    problem = _squad_group_problem(group_column)
    if problem:  # format auto resolved to squad, so the config validator could not see it
        raise DataError(f"{path}: {problem}")
    items = read_squad(path, name)  # checks the layout now, before the first next()
    if group_column is None:
        return items
    return (_with_paragraph_group(item) for item in items)


def _with_paragraph_group(item: Item) -> Item:
    if isinstance(item, RejectedRow):
        return item
    digest = hashlib.blake2b(item.data["context"].encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return replace(item, data={**item.data, "group": f"paragraph-{digest}"})


def _first_rows(items: Iterator[Item], limit: int) -> Iterator[Item]:
    kept = 0
    try:
        for item in items:
            yield item
            if isinstance(item, Row):
                kept += 1
                if kept >= limit:
                    return
    finally:
        # Close the reader now (and with it the file) rather than whenever it is garbage-collected.
        close = getattr(items, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------------------- record files


def _records(path: Path, container: str, split: str | None, has_header: bool = True,
             column_names: list[str] | None = None) -> Iterator[Triple]:
    if container == "datasets":
        return _dataset_records(path, split)
    if split is not None:
        raise DataError(f"split '{split}' is set, but {path} is a {container} file, not a datasets directory")
    if container != "parquet":
        text_formats.check_text_file(path)
    return read_records(path, container, has_header=has_header, column_names=column_names)


def _dataset_records(path: Path, split: str | None) -> Iterator[Triple]:
    """Rows of a ``save_to_disk`` directory. The Arrow files are memory-mapped, so iterating does not
    load the data set into memory; ``line`` is the 1-based row number."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - the library raises anything from OSError to IndexError
        # (an empty saved dataset) for a directory it cannot load: all of it is a bad input directory.
        raise DataError(
            f"cannot read {path} as a datasets directory (written by save_to_disk): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) != 1:
            raise DataError(f"{path} holds several splits ({', '.join(splits)}); set split to one of them")
        chosen = split if split is not None else splits[0]
        if chosen not in loaded:
            raise DataError(f"{path} has no split '{chosen}' (splits: {', '.join(splits)})")
        loaded = loaded[chosen]
    elif split is not None:
        raise DataError(f"split '{split}' is set, but {path} holds a single Dataset, not a DatasetDict")
    if len(loaded) == 0:
        raise DataError(f"data file has no rows: {path} is an empty dataset")
    return ((number, dict(record), None) for number, record in enumerate(loaded, start=1))


Convert = Callable[[int, dict[str, Any]], Item]


def _record_items(
    cfg: SourceConfig, path: Path, triples: Iterator[Triple], name: str, chat_format: str | None,
    label_names: list[str] | None = None, sniff_header: bool = False, require_reply: bool = True,
) -> Iterator[Item]:
    convert: Convert | None = None
    triples = iter(triples)
    for line, record, rejected in triples:
        if rejected is not None:
            yield rejected
            continue
        assert record is not None
        if convert is None:  # the first good record decides how every record is read
            hint = partial(_headerless_hint, cfg, record, triples, label_names) if sniff_header else None
            convert = _converter(cfg, path, line, record, name, chat_format, hint, require_reply)
        yield convert(line, record)


def _headerless_hint(cfg: SourceConfig, first: dict[str, Any], triples: Iterator[Triple],
                     label_names: list[str] | None) -> str | None:
    """Whether a CSV/TSV header row (the keys of ``first``) reads like data; reads a few more records
    to compare (only called on the way to an error, so what it consumes is not missed)."""
    records = [first]
    try:
        for _, record, _ in itertools.islice(triples, HEADERLESS_SAMPLE):
            if record is not None:
                records.append(record)
    except DataError:
        pass  # the sample is only a hint
    return headerless_hint(list(first), records, label_names=label_names, text_column=cfg.text_column,
                           label_column=cfg.label_column)


def _converter(
    cfg: SourceConfig, path: Path, line: int, first: dict[str, Any], name: str, chat_format: str | None,
    headerless: Callable[[], str | None] | None = None, require_reply: bool = True,
) -> Convert:
    columns = ", ".join(first) or "none"
    if cfg.group_column is not None and cfg.group_column not in first:
        raise DataError(f"{path}: line {line}: no group_column '{cfg.group_column}' (columns: {columns})")
    if chat_format is None and cfg.text_column not in first:
        chat_format = None if "text_column" in cfg.model_fields_set else detect_chat_format(first)
        if chat_format is None:
            advice = headerless() if headerless is not None else None
            raise DataError(
                f"{path}: line {line}: no column '{cfg.text_column}' (columns: {columns}); "
                + (f"{advice}. If it is a header, set text_column to one of its columns" if advice else
                   "set text_column, or format to alpaca, sharegpt or messages for chat data")
            )
        problem = inapplicable_fields(cfg, chat_format)
        if problem:
            what = "records" if chat_format in PREFERENCE_FORMATS else "chats"
            raise DataError(f"{path}: records look like {chat_format} {what}, but {problem}")
    if chat_format in PREFERENCE_FORMATS:
        return partial(_preference_item, cfg, path, name, chat_format)
    if chat_format is not None:
        return partial(_chat_item, cfg, path, name, chat_format, require_reply)
    for column in (cfg.target_column, cfg.tags_column):
        if column is not None and column not in first:
            which = "target_column" if column == cfg.target_column else "tags_column"
            raise DataError(f"{path}: line {line}: no {which} '{column}' (columns: {columns})")
    if cfg.target_column is not None:
        return partial(_pair_item, cfg, path, name)
    if cfg.tags_column is not None:
        return partial(_tokens_item, cfg, path, name)
    labelled = cfg.label_column is not None and cfg.label_column in first
    if cfg.label_column is not None and not labelled and "label_column" in cfg.model_fields_set:
        advice = headerless() if headerless is not None else None
        raise DataError(
            f"{path}: line {line}: no label_column '{cfg.label_column}' (columns: {columns}); "
            + (f"{advice}. If it is a header, set label_column to one of its columns" if advice else
               "set label_column to null for unlabeled text")
        )
    if labelled and cfg.label is not None:
        raise DataError(
            f"{path}: line {line}: label '{cfg.label}' is set for every row, but the records have a label column "
            f"'{cfg.label_column}'; remove label, or set label_column: null to ignore the column"
        )
    return partial(_text_item, cfg, path, name, labelled)


def detect_chat_format(record: Mapping[str, Any]) -> str | None:
    """The chat or preference format a record's keys identify, or None (see the module docstring)."""
    if "chosen" in record and "rejected" in record:
        return "preference"
    if "label" in record and ("completion" in record or (
            isinstance(record["label"], bool) and ("messages" in record or "conversations" in record))):
        return "kto"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _text_item(
    cfg: SourceConfig, path: Path, name: str, labelled: bool, line: int, record: dict[str, Any]
) -> Item:
    reason = _text_problem(record, cfg.text_column)
    if reason is None and labelled:
        reason = _value_problem(record, cfg.label_column, "label")
    if reason is None and cfg.group_column is not None:
        reason = _value_problem(record, cfg.group_column, "group", allow_empty=True)
    if reason is not None:
        return _record_reject(path, line, reason, record)
    data = {
        "text": record[cfg.text_column],
        "label": record[cfg.label_column] if labelled else None,
        "group": _group(record, cfg.group_column),
    }
    return make_row("text", data, path, line, name)


def _pair_item(cfg: SourceConfig, path: Path, name: str, line: int, record: dict[str, Any]) -> Item:
    source, reason = _joined_text(record, cfg.text_column)
    references: list[str] = []
    if reason is None:
        references, reason = _references(record, cfg.target_column)
    if reason is None and cfg.group_column is not None:
        reason = _value_problem(record, cfg.group_column, "group", allow_empty=True)
    if reason is not None:
        return _record_reject(path, line, reason, record)
    data: dict[str, Any] = {"source": source, "target": references[0], "group": _group(record, cfg.group_column)}
    if len(references) > 1:
        data["references"] = references
    return make_row("pair", data, path, line, name)


def _joined_text(record: dict[str, Any], column: str) -> tuple[str, str | None]:
    """A text column's string; a list of strings (sentences) is joined with spaces."""
    value = record.get(column)
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            return "", f"column '{column}' is a list holding something other than strings"
        value = " ".join(v.strip() for v in value if v.strip())
        record = {column: value}
    reason = _text_problem(record, column)
    return (value if reason is None else ""), reason


def _references(record: dict[str, Any], column: str | None) -> tuple[list[str], str | None]:
    assert column is not None
    if column not in record:
        return [], f"missing column '{column}'"
    value = record[column]
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        return [], f"target is not a string or a list of strings (got {json_type(value)})"
    kept = [v.strip() for v in values if v.strip()]
    if not kept:
        return [], "empty target"
    return kept, None


def _tokens_item(cfg: SourceConfig, path: Path, name: str, line: int, record: dict[str, Any]) -> Item:
    from tuneforge.data.token_labels import check_tokens_row

    assert cfg.tags_column is not None
    tokens, tags = record.get(cfg.text_column), record.get(cfg.tags_column)
    reason = next((f"missing column '{c}'" for c in (cfg.text_column, cfg.tags_column) if c not in record), None)
    if reason is None:
        for what, value in (("words", tokens), ("tags", tags)):
            if not isinstance(value, list):
                reason = f"{what} must be a list (got {json_type(value)})"
                break
    if reason is None and len(tokens) != len(tags):  # type: ignore[arg-type]
        reason = check_tokens_row(tokens, tags)  # type: ignore[arg-type]
    if reason is None and cfg.group_column is not None:
        reason = _value_problem(record, cfg.group_column, "group", allow_empty=True)
    if reason is not None:
        return _record_reject(path, line, reason, record)
    # Tag names (or indices) are checked against data.label_names by the task's label check.
    return make_row("tokens", {"tokens": tokens, "tags": tags, "group": _group(record, cfg.group_column)},
                    path, line, name)


def _chat_item(
    cfg: SourceConfig, path: Path, name: str, fmt: str, require_reply: bool, line: int, record: dict[str, Any]
) -> Item:
    try:
        if fmt == "alpaca":
            messages = conversations.from_alpaca(record, cfg.instruction_column, cfg.output_column,
                                                 require_reply=require_reply)
        elif fmt == "sharegpt":
            messages = conversations.from_sharegpt(record, cfg.role_map, require_reply=require_reply)
        else:
            messages = conversations.from_messages(record, cfg.role_map, require_reply=require_reply)
    except InvalidConversation as exc:
        return _record_reject(path, line, str(exc), record)
    return _grouped_row(cfg, path, name, line, record, "chat", {"messages": messages})


def _preference_item(cfg: SourceConfig, path: Path, name: str, fmt: str, line: int, record: dict[str, Any]) -> Item:
    """A ``preference`` row: a pair (format preference) or an unpaired KTO record (format kto)."""
    try:
        if fmt == "preference":
            data: dict[str, Any] = conversations.from_preference(record, cfg.role_map)
        else:
            data = conversations.from_unpaired(record, cfg.role_map)
    except InvalidConversation as exc:
        return _record_reject(path, line, str(exc), record)
    return _grouped_row(cfg, path, name, line, record, "preference", data)


def _grouped_row(cfg: SourceConfig, path: Path, name: str, line: int, record: dict[str, Any], kind: str,
                 data: dict[str, Any]) -> Item:
    """A row of ``kind`` with the record's ``group_column`` value (a record without one is rejected)."""
    if cfg.group_column is not None:
        reason = _value_problem(record, cfg.group_column, "group", allow_empty=True)
        if reason is not None:
            return _record_reject(path, line, reason, record)
    return make_row(kind, {**data, "group": _group(record, cfg.group_column)}, path, line, name)


def _text_problem(record: dict[str, Any], column: str) -> str | None:
    if column not in record:
        return f"missing column '{column}'"
    text = record[column]
    if text is not None and not isinstance(text, str):
        return f"text is not a string (got {json_type(text)})"
    if text is None or not text.strip():
        return "empty text"
    return None


def _value_problem(
    record: dict[str, Any], column: str | None, what: str, allow_empty: bool = False
) -> str | None:
    """Labels and groups must be scalars; an empty label is a bad row, an empty group is no group."""
    assert column is not None
    if column not in record:
        return f"missing column '{column}'"
    value = record[column]
    if what == "label" and isinstance(value, list):
        # multi-label: a list of names/indices (possibly empty: no label applies); the task's label
        # check decides whether a list is allowed at all
        if all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            return None
        return "label list holds something other than strings or integers"
    if _is_empty(value):
        return None if allow_empty else f"empty {what}"
    if not isinstance(value, (str, int, float)):
        return f"{what} is not a string or number (got {json_type(value)})"
    return None


def _is_empty(value: Any) -> bool:
    # NaN is how pandas-written parquet marks a missing number.
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def _group(record: dict[str, Any], column: str | None) -> Any:
    if column is None or _is_empty(record.get(column)):
        return None
    return record[column]


def _record_reject(path: Path, line: int, reason: str, record: dict[str, Any]) -> RejectedRow:
    # The parsed record stands in for the raw line; default=str covers parquet dates and decimals.
    raw = json.dumps(record, ensure_ascii=False, default=str)
    return RejectedRow(file=str(path), line=line, reason=reason, raw=raw)


# ------------------------------------------------------------------------------------ weights


def apply_weights(rows: Iterable[Row], weights: Mapping[str, float], seed: int) -> Iterator[Row]:
    """Resample training rows by their source's weight (sources not in ``weights`` keep 1.0).

    Weight ``w`` yields ``floor(w)`` copies of a row plus one more with probability ``frac(w)``, so
    ``w < 1`` keeps about a fraction ``w`` of the source and ``w > 1`` repeats it. The first copy is
    the row itself; the k-th repeat is a new row with ``extra["repeat"] = k``. The coin for a row is
    a hash of (seed, origin, content), not a shared random stream: the result is the same for a
    given seed whatever order the rows come in and whatever other sources are mixed in.
    """
    for key, weight in weights.items():
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"weight of source '{key}' must be a positive finite number, got {weight}")
    for row in rows:
        weight = weights.get(row_source_name(row), 1.0)
        if weight == 1.0:
            yield row
            continue
        copies = math.floor(weight)
        if _coin(seed, row) < weight - copies:
            copies += 1
        for repeat in range(copies):
            yield row if repeat == 0 else replace(row, extra={**row.extra, "repeat": repeat})


def _coin(seed: int, row: Row) -> float:
    """A uniform number in [0, 1) that depends only on ``seed`` and the row's identity."""
    key = f"{seed}\x1f{row.origin}\x1f{row.derived_from}\x1f{content_key(row)}"
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
