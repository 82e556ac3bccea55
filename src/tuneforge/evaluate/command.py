"""``tuneforge evaluate MODEL_DIR DATA_FILE``: score any export of any task on a labelled file.

The figures are those a training run's final evaluation computes, by the same code:

1. **What the export is** (``tuneforge.models.load_export.read_export``): how it was exported (plain,
   merged, or base model + prefix / prompt / bottleneck adapters, from ``tuneforge_export.json``) and
   the resolved recipe of its run (the model card's ``yaml`` block): the task and its settings, the
   data columns, formats, cleaning and chat template, the method. A directory without a tuneforge
   card (a plain transformers model) gets a default recipe for the task its ``config.json``
   architecture names (``ForSequenceClassification``: classification, regression or multi-label by
   ``problem_type``), with the text and label columns guessed as before.
2. **The rows**: the data stage (``tuneforge.data.prepare.prepare_task_data``) with the recipe's
   data section pointed at ``DATA_FILE``: read in any format the task's data supports (CoNLL/IOB,
   source/target pairs or parallel files, chat/alpaca/messages, SQuAD), labels checked against the
   export's label names, cleaned with the recipe's rules; no deduplication, no split, no augmentation:
   the whole file is the evaluation set, exactly like a run's ``data.validation_file``. Rejected
   rows go to ``rejected.jsonl``; more than ``max_rejected_fraction`` of them is an error (exit 2).
3. **The score**: the export loaded as users load it, the rows encoded by the task's ``spec.encode``
   and scored by ``tuneforge.evaluate.stage.evaluate`` (``predict`` in fp32, ``spec.metrics``,
   ``spec.generate_metrics``), which writes eval.json, eval.md and the task's plots.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from tuneforge.data.readers import LABEL_COLUMN_GUESSES, TEXT_COLUMN_GUESSES
from tuneforge.data.sources import SourceFormat
from tuneforge.recipe import DataSection, Section

_DEFAULT_MAX_REJECTED = DataSection.model_fields["max_rejected_fraction"].default
#: max_length of a directory without a recipe (the model's own limit caps it too)
_PLAIN_MAX_LENGTH = 512


class EvaluateConfig(Section):
    model_dir: Path = Field(..., description="Exported model directory (tuneforge export), or a transformers "
                            "task-model directory.")
    data_file: Path = Field(..., description="Labelled data file, in any format the task's data supports.")
    text_column: str | None = Field(None, description="Text column (record files); default: the run's "
                                    "data.text_column, or without a recipe the first of "
                                    f"{', '.join(TEXT_COLUMN_GUESSES)}.")
    label_column: str | None = Field(None, description="Label column (record files); default: the run's "
                                     f"data.label_column, or without a recipe the first of "
                                     f"{', '.join(LABEL_COLUMN_GUESSES)}.")
    target_column: str | None = Field(None, description="Target-text column of source/target pair records "
                                      "(seq2seq, text-to-text causal LM); default: the run's.")
    tags_column: str | None = Field(None, description="Column of per-word tags in NER records (text_column then "
                                    "holds the word list); default: the run's.")
    target_file: Path | None = Field(None, description="Parallel text: the target-language file, line-aligned "
                                     "with data_file (format parallel).")
    format: SourceFormat | None = Field(None, description="File format; default: the run's chat/conll/squad format, "
                                        "else from the suffix.")
    batch_size: int | Literal["auto"] | None = Field(
        None, description="Examples per batch; default: the run's train.eval_batch_size (auto: from free memory).")
    max_length: int | None = Field(None, ge=8, description="Truncate inputs to this many tokens; default: the "
                                   f"run's model.max_length ({_PLAIN_MAX_LENGTH} without a recipe).")
    max_rejected_fraction: float = Field(
        _DEFAULT_MAX_REJECTED, ge=0.0, le=1.0, description="Fail (exit 2) when more than this share of the file's "
        "rows is rejected (unreadable, unknown label, removed by the run's cleaning rules); they are always "
        "listed in rejected.jsonl.")
    output_dir: Path | None = Field(None, description="Where reports go; default: <model_dir>-evaluations/<data stem> "
                                    "beside the model folder (never inside it: a re-export replaces that folder).")
    allow_pickle: bool = Field(False, description="Allow pickle (.bin) weights; they can run code.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")


@dataclass
class EvaluateResult:
    metrics: dict
    out_dir: Path
    task: str
    method: str | None  # the run's method; None without a recipe
    export: str  # how the export was written (plain, merged, peft_prompt, bottleneck_adapters)
    examples: int  # rows scored
    rows_read: int  # rows in the file (scored + rejected)
    rejected: int
    reasons: list[tuple[str, int]] = field(default_factory=list)  # most common rejection reasons first
    summary: str = ""  # the task's one-line summary of the metrics

    @property
    def report(self) -> Path:
        return self.out_dir / "eval.md"

    @property
    def rejected_file(self) -> Path:
        return self.out_dir / "rejected.jsonl"

    @property
    def rejected_fraction(self) -> float:
        return self.rejected / self.rows_read if self.rows_read else 0.0


def run_evaluate(cfg: EvaluateConfig, say=print) -> EvaluateResult:
    """Score ``cfg.model_dir`` on ``cfg.data_file``; write the report into the output folder."""
    from tuneforge.data.prepare import prepare_task_data
    from tuneforge.errors import DataError
    from tuneforge.evaluate.stage import Split, evaluate
    from tuneforge.models.load_export import check_export_weights, load_export_model, load_export_tokenizer
    from tuneforge.tasks import spec_for

    _quiet_transformers()
    info = _read_export(cfg)
    recipe, from_card = _export_recipe(info, cfg)
    spec = spec_for(recipe)
    names = _label_names(info, spec)
    out = cfg.output_dir or default_output_dir(info.path, cfg.data_file)
    out.mkdir(parents=True, exist_ok=True)

    # --- the rows: the run's data stage on this one file, before any model is loaded
    source = _eval_source(cfg, recipe, spec, guess_columns=not from_card)
    view = _recipe_view(cfg, recipe, source, names, from_card=from_card)
    data_dir = out / "data"
    try:
        # the share of rejected rows is judged below, with this command's option and message
        data = prepare_task_data(view.data.model_copy(update={"max_rejected_fraction": 1.0}), view.seed,
                                 data_dir, spec)
    except DataError as exc:
        rejected = _copy_rejected(data_dir, out)
        if rejected and "no usable" in str(exc):  # every row rejected or removed by cleaning
            _check_rejected(cfg, len(rejected), len(rejected), _reasons(rejected), out)
            raise DataError(f"{cfg.data_file}: no rows left to score: all {len(rejected)} rejected; most common: "
                            f"{_top(_reasons(rejected))}. Every row and reason: {out / 'rejected.jsonl'}") from None
        raise
    records = data.records["train"]  # no split: every kept row of the file
    rejected = _copy_rejected(data_dir, out)
    rows_read = sum(data.files.values()) or len(records) + len(rejected)  # as read: kept + rejected
    reasons = _reasons(rejected)
    _check_rejected(cfg, rows_read, len(rejected), reasons, out)

    # --- the model, as users load it
    resolved = check_export_weights(info, allow_pickle=cfg.allow_pickle)
    model = load_export_model(info, spec.auto_class, resolved)
    from tuneforge.models.load_export import device_of

    model.to(device_of(cfg.device)).eval()
    tokenizer = load_export_tokenizer(info.path)
    try:
        encoded = spec.encode(records, tokenizer, view, names)
    except KeyError as exc:
        raise DataError(f"task {spec.name}: the rows of {cfg.data_file} have no field {exc} (check text_column, "
                        f"label_column, target_column, tags_column and format; the rows as read: "
                        f"{data_dir / 'train.jsonl'})") from None

    # --- the score: a run's final evaluation, on this file
    split = Split(name=cfg.data_file.name, records=records, encoded=encoded, label_names=names,
                  source=str(cfg.data_file))
    extra = {"model_dir": str(cfg.model_dir), "data_file": str(cfg.data_file), "task": recipe.task,
             "method": recipe.method if from_card else None, "export": info.how,
             "recipe": str(info.recipe_source) if from_card else None, "examples": len(records),
             "rows_read": rows_read, "rejected_rows": len(rejected), "rejected_file": str(out / "rejected.jsonl")}
    if cfg.target_file is not None:
        extra["target_file"] = str(cfg.target_file)
    report = evaluate(model, split, spec, recipe=view, tokenizer=tokenizer, out_dir=out,
                      title=f"{cfg.model_dir.name} on {cfg.data_file.name}", batch_size=view.train.eval_batch_size,
                      precision="fp32", extra=extra, hooks=False, say=say)
    return EvaluateResult(metrics=report.metrics, out_dir=out, task=recipe.task,
                          method=recipe.method if from_card else None, export=info.how, examples=len(records),
                          rows_read=rows_read, rejected=len(rejected), reasons=reasons,
                          summary=spec.summary(report.metrics))


# ------------------------------------------------------------------------------------ the export


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _read_export(cfg: EvaluateConfig):
    from tuneforge.models.load_export import read_export
    from tuneforge.models.resolve import resolve_model

    model_dir = Path(cfg.model_dir)
    if not model_dir.exists():  # an alias or Hub id: resolve it (safetensors check included) to its directory
        model_dir = resolve_model(str(model_dir), allow_pickle=cfg.allow_pickle).path
    return read_export(model_dir, needed_by="tuneforge evaluate")


def _export_recipe(info, cfg: EvaluateConfig):
    """(the recipe the export was trained with, True), or (a default recipe for the task of its
    architecture, False) for a directory that records none."""
    import yaml
    from pydantic import ValidationError

    from tuneforge.config_io import format_validation_error
    from tuneforge.errors import RecipeError
    from tuneforge.recipe import Recipe

    if info.recipe_text is not None:
        try:
            data = yaml.safe_load(info.recipe_text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{info.recipe_source}: the run's recipe is not valid YAML ({exc}); restore it from "
                              "the run directory's recipe.yaml") from None
        if isinstance(data, dict) and "task" in data and "data" in data:
            try:
                return Recipe.model_validate(data), True
            except ValidationError as exc:
                raise RecipeError(format_validation_error(exc, Recipe, f"{info.recipe_source} (the run's recipe)")) \
                    from None
    task, multi_label = _task_of_architecture(info)
    base = {"name": "evaluate", "task": task, "method": "full", "model": {"name": str(info.path)},
            "data": {"train_file": str(cfg.data_file)}}
    if multi_label:
        base["classification"] = {"multi_label": True}
    return Recipe.model_validate(base), False


def _task_of_architecture(info) -> tuple[str, bool]:
    """(task, multi-label) of a transformers model directory without a tuneforge recipe."""
    from tuneforge.errors import TuneforgeError

    arch, config = info.architecture, info.config()
    if arch.endswith("ForSequenceClassification"):
        problem = config.get("problem_type")
        if problem == "regression" or (problem is None and len(config.get("id2label") or {}) == 1):
            return "regression", False
        return "classification", problem == "multi_label_classification"
    from tuneforge.tasks import all_specs

    # the registered task whose head class the architecture is (the first one, for a shared head class)
    for spec in all_specs():
        if arch.endswith(spec.auto_class.removeprefix("AutoModel")):
            return spec.name, False
    if config.get("is_encoder_decoder") and (arch.endswith("ForConditionalGeneration") or arch.endswith("MTModel")):
        seq2seq = [s.name for s in all_specs() if s.auto_class == "AutoModelForSeq2SeqLM"]
        if seq2seq:
            return seq2seq[0], False
    raise TuneforgeError(f"{info.path}: a {arch} with no tuneforge model card (README.md with the run's recipe): "
                         "tuneforge evaluate cannot tell which task it does; evaluate the export a run wrote")


def _label_names(info, spec) -> list[str] | None:
    """Class names or tags by output index, from the export's config.json (what the model predicts)."""
    from tuneforge.errors import TuneforgeError

    if spec.labels not in ("class", "multi", "tags"):
        return None
    id2label = info.config().get("id2label") or {}
    try:
        names = [str(id2label[key]) for key in sorted(id2label, key=int)]
    except ValueError:
        names = []
    if len(names) < 2:
        raise TuneforgeError(f"{info.config_dir / 'config.json'}: no label names (id2label) for a {spec.name} model")
    return names


# --------------------------------------------------------------------------------------- the rows

#: Source options that describe the run's files, not how an evaluation file is read.
_FILE_OPTIONS = {"path", "target_path", "name", "weight", "max_rows", "split", "group_column", "format", "label", "has_header",
                 "column_names"}
#: Formats that say what the rows are (kept for the evaluation file); the others only say how a file
#: is stored, which the evaluation file's suffix tells.
_CONTENT_FORMATS = ("alpaca", "sharegpt", "messages", "conll", "squad", "preference", "kto")
_COLUMN_OPTIONS = ("text_column", "label_column", "target_column", "tags_column")
_RECORD_FILES = ("csv", "tsv", "jsonl", "json", "parquet")


def _eval_source(cfg: EvaluateConfig, recipe, spec, *, guess_columns: bool):
    """How to read ``cfg.data_file``: as the run read its validation file (its columns and format
    options), with this command's options on top."""
    from tuneforge.config_io import load_config
    from tuneforge.data.sources import SourceConfig, inapplicable_fields, resolve_format

    data = recipe.data
    # A validation source of its own; a validation path read with the data section's columns; rows held out
    # of the (first) training source; else the data section's train_file and columns.
    given = data.validation_file if isinstance(data.validation_file, SourceConfig) else (
        data.sources[0] if data.sources and data.validation_file is None else None)
    if given is not None:
        options = given.model_dump(exclude_defaults=True, exclude=_FILE_OPTIONS)
        fmt = given.format
    else:
        options = {k: getattr(data, k) for k in _COLUMN_OPTIONS
                   if getattr(data, k) != DataSection.model_fields[k].default}
        fmt = data.format
    if cfg.format is not None:
        fmt = cfg.format
    elif cfg.target_file is not None:
        fmt = "parallel"
    elif fmt not in _CONTENT_FORMATS:
        fmt = "auto"
    mine = {k: getattr(cfg, k) for k in _COLUMN_OPTIONS if getattr(cfg, k) is not None}
    where = {"path": cfg.data_file, "format": fmt}
    if cfg.target_file is not None:
        where["target_path"] = cfg.target_file
    resolved = resolve_format(SourceConfig.model_construct(**where), Path(cfg.data_file).expanduser())
    # the run's options this file's format does not take (a jsonl run's text_column for a CoNLL file)
    options = {k: v for k, v in options.items()
               if inapplicable_fields(SourceConfig.model_construct(**{k: v}), resolved) is None}
    options.update(mine)
    if guess_columns and spec.labels in ("class", "multi", "value") and resolved in _RECORD_FILES:
        from tuneforge.data.readers import first_columns, pick_column

        columns = first_columns(cfg.data_file, resolved)
        options["text_column"] = pick_column(columns, cfg.text_column, TEXT_COLUMN_GUESSES, "text")
        options["label_column"] = pick_column(columns, cfg.label_column, LABEL_COLUMN_GUESSES, "label")
    if spec.labels in ("class", "multi", "value") and resolved in _RECORD_FILES:
        _require_columns(cfg.data_file, resolved, {"text_column": options.get("text_column", "text"),
                                                   "label_column": options.get("label_column", "label")})
    return load_config(SourceConfig, None, [], base={**where, **options})


def _require_columns(path: Path, fmt: str, columns: dict[str, str | None]) -> None:
    """A labelled task's text and label columns must exist in the file: else every row would be rejected."""
    from tuneforge.data.readers import first_columns
    from tuneforge.errors import DataError

    available = first_columns(path, fmt)
    missing = [f"'{c}'" if c is not None else f"{key} null" for key, c in columns.items() if c not in available]
    if missing:
        raise DataError(f"{path}: missing column {', '.join(dict.fromkeys(missing))} (available columns: "
                        f"{', '.join(available)}); set text_column/label_column to one of these")


def _recipe_view(cfg: EvaluateConfig, recipe, source, names, *, from_card: bool):
    """The export's recipe with its data section reading only ``source``, every row kept for evaluation (no
    deduplication, decontamination, split, augmentation or sampling), and this command's settings."""
    from tuneforge.data.augment import AugmentConfig
    from tuneforge.data.dedup import DecontaminateConfig, DedupConfig
    from tuneforge.data.split import SplitConfig

    data = recipe.data.model_copy(update={
        "train_file": None, "sources": [source], "validation_file": None, "test_file": None, "label_names": names,
        "dedup": DedupConfig(exact=False, near=False), "decontaminate": DecontaminateConfig(enabled=False),
        "augment": AugmentConfig(), "split": SplitConfig(validation_fraction=0.0, test_fraction=0.0),
        "max_train_samples": None, "max_rejected_fraction": cfg.max_rejected_fraction})
    max_length = cfg.max_length or (recipe.model.max_length if from_card else _PLAIN_MAX_LENGTH)
    model = recipe.model.model_copy(update={"max_length": max_length})
    train = recipe.train.model_copy(update={"eval_batch_size": cfg.batch_size or recipe.train.eval_batch_size})
    return recipe.model_copy(update={"data": data, "model": model, "train": train})


def _copy_rejected(data_dir: Path, out: Path) -> list[dict]:
    """The data stage's rejected rows (every stage), copied to ``out/rejected.jsonl``."""
    import json
    import shutil

    src = data_dir / "rejected.jsonl"
    if not src.exists():
        return []
    shutil.copyfile(src, out / "rejected.jsonl")
    with open(src, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _reasons(rejected: list[dict]) -> list[tuple[str, int]]:
    from tuneforge.data.report import reason_category

    return Counter(reason_category(r.get("reason", "")) for r in rejected).most_common()


def _top(reasons: list[tuple[str, int]]) -> str:
    return "; ".join(f"{n} x {reason}" for reason, n in reasons[:3])


def _check_rejected(cfg: EvaluateConfig, rows_read: int, rejected: int, reasons: list[tuple[str, int]],
                    out: Path) -> None:
    from tuneforge.errors import DataError

    if not rows_read or rejected / rows_read <= cfg.max_rejected_fraction:
        return
    raise DataError(
        f"{cfg.data_file}: {rejected} of {rows_read} rows rejected ({100 * rejected / rows_read:.1f}% > "
        f"max_rejected_fraction {100 * cfg.max_rejected_fraction:g}%); most common: {_top(reasons)}. Every row and "
        f"reason: {out / 'rejected.jsonl'}. Fix the file or its columns, or pass max_rejected_fraction=<share> to "
        "score the rows that remain."
    )


def describe_rejected(result: EvaluateResult) -> str | None:
    """One console line about the rejected rows, or None when every row was scored."""
    if not result.rejected:
        return None
    reason, n = result.reasons[0]
    return (f"rejected {result.rejected} of {result.rows_read} rows ({100 * result.rejected_fraction:.1f}%), most "
            f"common: {reason} ({n}); see {result.rejected_file}")


def default_output_dir(model_dir: Path, data_file: Path) -> Path:
    """``<model_dir>-evaluations/<data stem>``: beside the model folder, not inside it, so exporting the run
    again (which replaces the export folder whole) never takes a user's evaluations with it."""
    model_dir = Path(model_dir)
    return model_dir.parent / f"{model_dir.name}-evaluations" / Path(data_file).stem
