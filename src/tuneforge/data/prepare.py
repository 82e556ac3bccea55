"""The `data:` stage for classification: read files, quarantine bad rows, split, summarise.

Nothing a user gave is dropped silently: every rejected row is written to ``rejected.jsonl`` with its
file, line and reason, the count is printed, and a run whose rejected share exceeds
``data.max_rejected_fraction`` stops here, before any model is loaded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.data.readers import ClassificationRows, load_classification
from tuneforge.data.rejects import RejectedRow, write_rejected
from tuneforge.data.split import stratified_split
from tuneforge.errors import DataError


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def label_counts(self, names: list[str]) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(names)}


@dataclass
class PreparedData:
    train: Split
    validation: Split
    label_names: list[str]
    rejected: list[RejectedRow] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)  # path -> rows read (kept + rejected)
    validation_source: str = ""

    def summary(self) -> dict:
        return {
            "label_names": self.label_names,
            "train_rows": len(self.train),
            "validation_rows": len(self.validation),
            "validation_source": self.validation_source,
            "rejected_rows": len(self.rejected),
            "train_label_counts": self.train.label_counts(self.label_names),
            "validation_label_counts": self.validation.label_counts(self.label_names),
            "files": self.files,
        }


def _check_rejections(rows: ClassificationRows, path: Path, limit: float) -> None:
    if rows.total and len(rows.rejected) / rows.total > limit:
        reasons = Counter(r.reason.split(":")[0].split(" (")[0] for r in rows.rejected).most_common(3)
        top = "; ".join(f"{n} x {reason}" for reason, n in reasons)
        raise DataError(
            f"{path}: {len(rows.rejected)} of {rows.total} rows rejected "
            f"({100 * len(rows.rejected) / rows.total:.1f}% > data.max_rejected_fraction "
            f"{100 * limit:g}%); most common: {top}. See rejected.jsonl for every row and reason."
        )


def prepare_classification(data_cfg, seed: int, rejected_path: Path | None = None) -> PreparedData:
    """Load train/validation rows per the recipe's ``data`` section; write rejected rows if a path is given."""
    train_rows = load_classification(Path(data_cfg.train_file), text_column=data_cfg.text_column,
                                     label_column=data_cfg.label_column, label_names=data_cfg.label_names,
                                     fmt=data_cfg.format)
    names = train_rows.label_names
    rejected = list(train_rows.rejected)
    files = {str(data_cfg.train_file): train_rows.total}
    if data_cfg.validation_file is not None:
        val_rows = load_classification(Path(data_cfg.validation_file), text_column=data_cfg.text_column,
                                       label_column=data_cfg.label_column, label_names=names,
                                       fmt=data_cfg.format)
        rejected += val_rows.rejected
        files[str(data_cfg.validation_file)] = val_rows.total
        train = Split(train_rows.texts, train_rows.labels)
        validation = Split(val_rows.texts, val_rows.labels)
        source = str(data_cfg.validation_file)
    else:
        val_rows = None
        tr_idx, va_idx = stratified_split(train_rows.labels, data_cfg.validation_fraction, seed)
        train = Split([train_rows.texts[i] for i in tr_idx], [train_rows.labels[i] for i in tr_idx])
        validation = Split([train_rows.texts[i] for i in va_idx], [train_rows.labels[i] for i in va_idx])
        source = f"stratified {data_cfg.validation_fraction:g} of {data_cfg.train_file} (seed {seed})"
    # The rejected file is written before the threshold check so the user can see why the run stopped.
    if rejected_path is not None:
        write_rejected(rejected_path, rejected)
    _check_rejections(train_rows, Path(data_cfg.train_file), data_cfg.max_rejected_fraction)
    if val_rows is not None:
        _check_rejections(val_rows, Path(data_cfg.validation_file), data_cfg.max_rejected_fraction)
    if data_cfg.max_train_samples is not None:
        train = Split(train.texts[: data_cfg.max_train_samples], train.labels[: data_cfg.max_train_samples])
    if len(train) == 0 or len(validation) == 0:
        raise DataError("no usable rows: train has %d, validation has %d" % (len(train), len(validation)))
    return PreparedData(train, validation, names, rejected, files, source)


def encode(tokenizer, split: Split, max_length: int):
    """Tokenise once, without padding (batches are padded to their own longest row)."""
    from tuneforge.data.batching import Encoded

    ids = tokenizer(split.texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(input_ids=ids, labels=list(split.labels))
