"""The data stage for a classification run: prepared splits -> texts and label indices.

``tuneforge.data.pipeline`` does the work (read, clean, dedup, split, decontaminate, augment,
report) and writes the splits as JSONL into ``<run>/data``. This module turns those files into the
parallel lists training needs. In a multi-process run only the main process prepares; the others
wait at a barrier and then call ``load_prepared`` on the same files, so every process trains on
exactly the same rows.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import DataError

PREPARED_FILE = "prepared.json"


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
    test: Split = field(default_factory=lambda: Split([], []))
    rejected_rows: int = 0
    files: dict[str, int] = field(default_factory=dict)  # source -> rows read (kept + rejected)
    validation_source: str = ""
    out_dir: Path | None = None

    def summary(self) -> dict:
        return {
            "label_names": self.label_names,
            "train_rows": len(self.train),
            "validation_rows": len(self.validation),
            "test_rows": len(self.test),
            "validation_source": self.validation_source,
            "rejected_rows": self.rejected_rows,
            "train_label_counts": self.train.label_counts(self.label_names),
            "validation_label_counts": self.validation.label_counts(self.label_names),
            "files": self.files,
        }


def prepare_classification(data_cfg, seed: int, out_dir: Path) -> PreparedData:
    """Run the data pipeline into ``out_dir`` and load the result (main process)."""
    from tuneforge.data.pipeline import prepare_dataset

    prepared = prepare_dataset(data_cfg, seed=seed, out_dir=out_dir, labels="class")
    report = prepared.report
    files = {name: c["read"] for name, c in report["sources"].items()}
    validation = (str(data_cfg.validation_file) if data_cfg.validation_file is not None else
                  f"{data_cfg.split.validation_fraction:g} of the training rows, stratified (seed {seed})")
    meta = {"label_names": prepared.label_names, "rejected_rows": report["rejected"]["total"], "files": files,
            "validation_source": validation}
    (Path(out_dir) / PREPARED_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return load_prepared(out_dir)


def load_prepared(out_dir: Path) -> PreparedData:
    """Read the splits written by ``prepare_classification`` (any process)."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / PREPARED_FILE).read_text())
    names = meta["label_names"]
    index = {name: i for i, name in enumerate(names)}

    def split(name: str) -> Split:
        path = out_dir / f"{name}.jsonl"
        texts: list[str] = []
        labels: list[int] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                if "text" not in record or "label" not in record:
                    raise DataError(f"{record.get('_origin', path)}: a classification row needs text and a "
                                    "label; check data.text_column / data.label_column and the data format")
                texts.append(record["text"])
                labels.append(index[record["label"]])
        return Split(texts, labels)

    return PreparedData(split("train"), split("validation"), names, split("test"), meta["rejected_rows"], meta["files"],
                        meta["validation_source"], out_dir)


def encode(tokenizer, split: Split, max_length: int):
    """Tokenise once, without padding (batches are padded to their own longest row)."""
    from tuneforge.data.batching import Encoded

    ids = tokenizer(split.texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(input_ids=ids, labels=list(split.labels))


def encode_cached(tokenizer, data: PreparedData, split_name: str, max_length: int, data_section: dict,
                  cache_root: Path | None = None):
    """``encode`` through the token cache.

    The key hashes the prepared split file (so any change upstream: source bytes, cleaning,
    dedup, split, changes it), the recipe's data section, the tokenizer (vocabulary, normaliser,
    special tokens, template) and ``max_length``; a changed tokenizer therefore never reuses a
    stale entry.
    """
    from tuneforge.data.batching import Encoded
    from tuneforge.data.token_cache import TokenCache, cache_key

    split = getattr(data, split_name)
    path = Path(data.out_dir) / f"{split_name}.jsonl"
    extra = {"task": "classification", "max_length": max_length, "label_names": data.label_names}
    key = cache_key(data_files=[path], data_section=data_section, tokenizer=tokenizer, template=None, extra=extra)

    def build() -> dict[str, list]:
        enc = encode(tokenizer, split, max_length)
        return {"input_ids": enc.input_ids, "labels": enc.labels}

    ds = TokenCache(cache_root).get_or_build(key, build, meta={"split": split_name, "file": str(path)})
    return Encoded(input_ids=[list(x) for x in ds["input_ids"]], labels=list(ds["labels"]))
