"""The data stage of a training run: prepared splits -> records and label names, then encoded examples.

``tuneforge.data.pipeline`` does the work (read, clean, dedup, split, decontaminate, augment,
report) and writes the splits as JSONL into ``<run>/data``. In a multi-process run only the main
process prepares; the others wait at a barrier and then call ``load_prepared`` on the same files, so
every process trains on exactly the same rows. Encoding is task-specific (``TaskSpec.encode``) and
goes through the token cache.

``prepared.json`` is the completion marker: the pipeline swaps the finished folder in whole, and only
then is ``prepared.json`` written (atomically) into it. A folder without it is not prepared data
(the tuner prepares again; a run always prepares).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.atomic import atomic_write_json
from tuneforge.errors import DataError

PREPARED_FILE = "prepared.json"
SPLITS = ("train", "validation", "test")


@dataclass
class PreparedData:
    records: dict[str, list[dict]]  # split -> prepared records (row_to_json form)
    label_names: list[str] | None  # class names or tags; None for regression
    rejected_rows: int = 0
    files: dict[str, int] = field(default_factory=dict)  # source -> rows read (kept + rejected)
    validation_source: str = ""
    out_dir: Path | None = None
    report: dict = field(default_factory=dict)  # the pipeline's data report (empty when loaded from disk)

    def __len__(self) -> int:
        return len(self.records["train"])

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(self.records[split]) for split in SPLITS}

    def rows(self, split: str) -> list[dict]:
        return self.records[split]

    def summary(self) -> dict:
        out = {"label_names": self.label_names, "train_rows": len(self.records["train"]),
               "validation_rows": len(self.records["validation"]), "test_rows": len(self.records["test"]),
               "validation_source": self.validation_source, "rejected_rows": self.rejected_rows, "files": self.files}
        if self.label_names and all("label" in r for r in self.records["train"][:1]):
            for split in ("train", "validation"):
                counts = Counter(name for r in self.records[split]
                                 for name in (r["label"] if isinstance(r["label"], list) else [r["label"]]))
                out[f"{split}_label_counts"] = {name: counts.get(name, 0) for name in self.label_names}
        return out


def prepare_task_data(data_cfg, seed: int, out_dir: Path, spec, *, progress=None) -> PreparedData:
    """The data stage's one entry (``tuneforge run``, ``tuneforge prepare``, the tuner): run the data
    pipeline for task ``spec`` into ``out_dir`` and load the result (main process). ``progress(n)``:
    called as rows are read."""
    from tuneforge.data.pipeline import prepare_dataset

    # A task whose examples are prompts (``label_kind`` "prompt": GRPO generates the replies) keeps chats
    # that end with a user turn; every other task rejects them (no reply to learn from).
    prepared = prepare_dataset(data_cfg, seed=seed, out_dir=out_dir, labels=spec.labels, progress=progress,
                               require_reply=getattr(spec, "label_kind", None) != "prompt")
    report = prepared.report
    files = {name: c["read"] for name, c in report["sources"].items()}
    given = data_cfg.validation_file
    validation = (str(getattr(given, "path", given)) if given is not None else
                  f"{data_cfg.split.validation_fraction:g} of the training rows (seed {seed})")
    meta = {"task": spec.name, "label_names": prepared.label_names, "rejected_rows": report["rejected"]["total"],
            "files": files, "validation_source": validation}
    atomic_write_json(Path(out_dir) / PREPARED_FILE, meta)
    loaded = load_prepared(out_dir)
    loaded.report = report
    return loaded


def write_prepared(out_dir: Path, splits: dict[str, list[dict]], like: Path, validation_source: str) -> None:
    """Prepared splits made from other prepared splits (the tuner's retraining on train + validation):
    written like the pipeline writes them, with ``like``'s metadata, ``prepared.json`` last."""
    meta = json.loads((Path(like) / PREPARED_FILE).read_text())
    meta["validation_source"] = validation_source
    out_dir = Path(out_dir)
    for split in SPLITS:
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in splits.get(split, [])),
                                                encoding="utf-8")
    atomic_write_json(out_dir / PREPARED_FILE, meta)


def load_prepared(out_dir: Path) -> PreparedData:
    """Read the splits written by ``prepare_task_data`` (any process)."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / PREPARED_FILE).read_text())
    records = {}
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        with open(path, encoding="utf-8") as fh:
            records[split] = [json.loads(line) for line in fh]
    return PreparedData(records, meta["label_names"], meta["rejected_rows"], meta["files"],
                        meta["validation_source"], out_dir)


def encode_split(spec, tokenizer, data: PreparedData, split: str, recipe):
    """``spec.encode`` with a clear error when the prepared rows do not fit the task."""
    try:
        return spec.encode(data.records[split], tokenizer, recipe, data.label_names)
    except KeyError as exc:
        raise DataError(f"task {spec.name}: the {split} rows have no field {exc} (check data.text_column / "
                        f"data.label_column and the data format; see {data.out_dir}/{split}.jsonl)") from None


def encode_cached(tokenizer, data: PreparedData, split: str, recipe, spec, cache_root: Path | None = None):
    """``encode_split`` through the token cache.

    The key hashes the prepared split file (so any change upstream: source bytes, cleaning,
    dedup, split, changes it), the recipe's data section, the tokenizer (vocabulary, normaliser,
    special tokens, template), the task and the model section (``max_length``); a changed tokenizer
    therefore never reuses a stale entry.
    """
    from tuneforge.data.batching import Encoded
    from tuneforge.data.token_cache import TokenCache, cache_key

    path = Path(data.out_dir) / f"{split}.jsonl"
    extra = {"task": spec.name, "model": recipe.model.model_dump(mode="json"), "label_names": data.label_names,
             "task_settings": _task_settings(recipe)}
    key = cache_key(data_files=[path], data_section=recipe.data.model_dump(mode="json"), tokenizer=tokenizer,
                    template=None, extra=extra)

    def build() -> dict[str, list]:
        enc = encode_split(spec, tokenizer, data, split, recipe)
        columns = {"input_ids": enc.input_ids, "labels": enc.labels}
        columns.update({f"extra.{k}": v for k, v in enc.extra.items()})
        columns.update({f"meta.{k}": v for k, v in enc.meta.items()})
        return columns

    ds = TokenCache(cache_root).get_or_build(key, build, meta={"split": split, "file": str(path)})
    cols = {name: ds[name] for name in ds.column_names}
    masking = None
    if spec.label_kind == "mlm":  # masking happens per batch; only its settings travel with the tokens
        from tuneforge.data.masking import masking_spec

        masking = masking_spec(tokenizer, recipe)
    meta = {k[5:]: _plain(v) for k, v in cols.items() if k.startswith("meta.")}
    objective = spec.objective(tokenizer, recipe) if spec.objective is not None else None
    if hasattr(objective, "for_examples"):  # per-example data the objective reads (GRPO: references)
        objective = objective.for_examples(meta)
    return Encoded(input_ids=[list(x) for x in cols.pop("input_ids")], labels=_plain(cols.pop("labels")),
                   label_kind=spec.label_kind,
                   extra={k[6:]: _plain(v) for k, v in cols.items() if k.startswith("extra.")},
                   meta=meta, masking=masking, objective=objective)


def _task_settings(recipe) -> dict:
    """The recipe section named like the task, if any (e.g. ``extractive_qa``): it may change encoding."""
    section = getattr(recipe, recipe.task, None)
    return section.model_dump(mode="json") if hasattr(section, "model_dump") else {}


def _plain(column) -> list:
    return [list(x) if isinstance(x, (list, tuple)) else x for x in column]
