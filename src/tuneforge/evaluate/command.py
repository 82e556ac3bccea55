"""``tuneforge evaluate MODEL_DIR DATA_FILE``: score any exported classifier on a labelled file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tuneforge.data.readers import LABEL_COLUMN_GUESSES, TEXT_COLUMN_GUESSES
from tuneforge.recipe import Section


class EvaluateConfig(Section):
    model_dir: Path = Field(..., description="Exported model directory (config.json, safetensors, tokenizer).")
    data_file: Path = Field(..., description="Labelled data file.")
    text_column: str | None = Field(None, description="Text column; default: first of "
                                    f"{', '.join(TEXT_COLUMN_GUESSES)}.")
    label_column: str | None = Field(None, description="Label column; default: first of "
                                     f"{', '.join(LABEL_COLUMN_GUESSES)}.")
    format: str | None = Field(None, description="File format; default: from the suffix.")
    batch_size: int = Field(64, ge=1, description="Examples per batch.")
    max_length: int = Field(512, ge=8, description="Truncate inputs to this many tokens.")
    output_dir: Path | None = Field(None, description="Where reports go; default: <model_dir>/evaluations/<data stem>.")
    allow_pickle: bool = Field(False, description="Allow pickle (.bin) weights; they can run code.")


def run_evaluate(cfg: EvaluateConfig) -> tuple[dict, Path]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.data.batching import Encoded
    from tuneforge.data.readers import first_columns, load_classification, pick_column
    from tuneforge.data.rejects import write_rejected
    from tuneforge.evaluate.metrics import classification_metrics
    from tuneforge.evaluate.predict import predict
    from tuneforge.evaluate.report import write_eval_report
    from tuneforge.models.resolve import model_load_kwargs, resolve_model

    resolved = resolve_model(str(cfg.model_dir), allow_pickle=cfg.allow_pickle)
    model = AutoModelForSequenceClassification.from_pretrained(resolved.path, **model_load_kwargs(resolved))
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    columns = first_columns(cfg.data_file, cfg.format)
    rows = load_classification(cfg.data_file, text_column=pick_column(columns, cfg.text_column, TEXT_COLUMN_GUESSES, "text"),
                               label_column=pick_column(columns, cfg.label_column, LABEL_COLUMN_GUESSES, "label"),
                               label_names=names, fmt=cfg.format)
    out = cfg.output_dir or (cfg.model_dir / "evaluations" / cfg.data_file.stem)
    out.mkdir(parents=True, exist_ok=True)
    write_rejected(out / "rejected.jsonl", rows.rejected)
    ids = tokenizer(rows.texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    preds = predict(model, Encoded(ids, rows.labels), batch_size=cfg.batch_size, pad_id=pad_id)
    metrics = classification_metrics(rows.labels, preds.labels, names)
    metrics["loss"] = preds.loss
    write_eval_report(metrics, out, title=f"{cfg.model_dir.name} on {cfg.data_file.name}",
                      extra={"model_dir": str(cfg.model_dir), "data_file": str(cfg.data_file),
                             "rejected_rows": len(rows.rejected)})
    return metrics, out
