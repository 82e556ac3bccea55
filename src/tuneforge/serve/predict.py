"""``tuneforge predict MODEL_DIR INPUT_FILE``: batch prediction to JSONL or CSV, with a progress bar.

It runs the server's inference code (``tuneforge.serve.inference``) without the server: the same
tokenization, labels, scores and entity spans as ``/v1/classify`` and ``/v1/tokens``; causal LMs
generate with ``tuneforge.models.generation``. Every input row comes out, in order: a row that cannot
be read or has no text goes to ``<output>.rejected.jsonl`` with its reason instead.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from tuneforge.console import progress_bar
from tuneforge.data.readers import TEXT_COLUMN_GUESSES
from tuneforge.sections import Section


#: prefix of the columns the model adds (predicted_label, predicted_score, predicted_entities, ...)
PREFIX = "predicted_"


class PredictConfig(Section):
    model_dir: Path = Field(..., description="Exported model directory (or a built-in alias).")
    input_file: Path = Field(..., description="CSV, TSV, JSONL, JSON or Parquet file with a text column.")
    output: Path | None = Field(None, description="Output file; .csv writes CSV, anything else JSONL. Default: "
                                "<input stem>.predictions.jsonl next to the input.")
    text_column: str | None = Field(None, description="Column holding the text (the prompt for causal LMs); "
                                    f"default: first of {', '.join(TEXT_COLUMN_GUESSES)}.")
    format: str | None = Field(None, description="Input format; default: from the suffix.")
    batch_size: int = Field(64, ge=1, description="Texts per model call.")
    truncate: bool = Field(True, description="Cut texts longer than the model's context (the row records it); "
                           "false: such rows are rejected.")
    max_new_tokens: int = Field(128, ge=1, description="Causal LMs: most tokens generated per prompt.")
    chat: Literal["auto", "yes", "no"] = Field("auto", description="Causal LMs: render prompts as a user message "
                                               "with the chat template (auto: when the tokenizer has one).")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda or cuda:N.")
    allow_pickle: bool = Field(False, description="Allow pickle (.bin) weights; they can run code when loaded.")
    max_rejected_fraction: float = Field(
        0.01, ge=0, le=1, description="Exit with an error (code 2) when more than this share of the rows is rejected "
        "(no text, over the context with truncate=false); the predictions and rejected.jsonl are written first.")


def _read_rows(cfg: PredictConfig):
    """``(records, texts, rejected)``: every readable record with its text, and what was not usable."""
    from tuneforge.data.readers import first_columns, pick_column, read_records
    from tuneforge.data.rejects import RejectedRow
    from tuneforge.errors import DataError

    columns = first_columns(cfg.input_file, cfg.format)
    column = pick_column(columns, cfg.text_column, TEXT_COLUMN_GUESSES, "text")
    taken = [c for c in columns if c.startswith(PREFIX) or c == "truncated"]
    if taken:
        raise DataError(f"{cfg.input_file}: column {taken[0]!r} would be overwritten by the predictions; rename "
                        f"it (predict writes {PREFIX}* and truncated columns)")
    records, rejected = [], []
    for line, record, reject in read_records(cfg.input_file, cfg.format):
        if record is None:
            rejected.append(reject)
        elif not isinstance(record.get(column), str) or not record[column].strip():
            rejected.append(RejectedRow(str(cfg.input_file), line, f"no text in column {column!r}",
                                        json.dumps(record, ensure_ascii=False, default=str)))
        else:
            records.append((line, record))
    return column, records, rejected


def _encoder_predictions(served, texts: list[str], encoded: list, cfg: PredictConfig, on_batch) -> list[dict]:
    """One result dict per text; batches are taken in length order (less padding), answers in input order."""
    from tuneforge.serve.inference import classification_result, entities, run_batch

    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    out: list[dict] = [{} for _ in texts]
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        for i, scores in zip(idx, run_batch(served, [encoded[i].ids for i in idx])):
            out[i] = (classification_result(served, scores) if served.task == "classification"
                      else {"entities": entities(served, texts[i], encoded[i], scores)})
        on_batch(len(idx))
    return out


def _generations(served, texts: list[str], encoded: None, cfg: PredictConfig, on_batch) -> list[dict]:
    from tuneforge.models.generation import GenerationConfig, generate

    chat = cfg.chat == "yes" or (cfg.chat == "auto" and bool(getattr(served.tokenizer, "chat_template", None)))
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    out = []
    for start in range(0, len(texts), cfg.batch_size):
        chunk = texts[start:start + cfg.batch_size]
        out += [{"completion": c} for c in generate(served.model, served.tokenizer, chunk, gen, chat=chat)]
        on_batch(len(chunk))
    return out


def _measure(served, texts: list[str]) -> tuple[list | None, set[int]]:
    """Encoder inputs (cut to the context) and which texts are longer than the context; for a causal LM
    no inputs (generation tokenizes its prompts itself), only the long prompts."""
    if served.task == "causal_lm":
        lengths = served.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return None, {i for i, ids in enumerate(lengths) if len(ids) > served.max_input_tokens}
    from tuneforge.serve.inference import encode

    encoded = encode(served, texts, truncate=True)
    return encoded, {i for i, e in enumerate(encoded) if e.truncated}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".csv":
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for row in rows:  # nested values (scores, entities) as JSON in their cell
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                             for k, v in row.items()})


def run_predict(cfg: PredictConfig) -> dict:
    """Predict every row of ``cfg.input_file``; returns counts and the paths written."""
    from tuneforge.data.rejects import RejectedRow, write_rejected
    from tuneforge.serve.loader import load_served_model

    column, records, rejected = _read_rows(cfg)
    served = load_served_model(cfg.model_dir, allow_pickle=cfg.allow_pickle, device=cfg.device)
    if served.task == "reward_model":
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError(f"{cfg.model_dir} is a reward model, which scores conversations (prompt and reply), "
                             "not texts; tuneforge predict does not run reward models: serve it with tuneforge "
                             "serve and POST the conversations to /v1/score")
    texts = [record[column] for _, record in records]
    encoded, long = _measure(served, texts) if texts else (None, set())
    if long and (not cfg.truncate or served.task == "causal_lm"):
        why = "the prompt is longer than the model's context" if served.task == "causal_lm" else \
            "longer than the model's context (truncate=false)"
        rejected += [RejectedRow(str(cfg.input_file), records[i][0], f"{why}: over {served.max_input_tokens} tokens",
                                 texts[i]) for i in sorted(long)]
        keep = [i for i in range(len(records)) if i not in long]
        records, texts = [records[i] for i in keep], [texts[i] for i in keep]
        encoded, long = None if encoded is None else [encoded[i] for i in keep], set()
    run = _generations if served.task == "causal_lm" else _encoder_predictions
    with progress_bar("predict", len(texts), unit="rows") as advance:
        results = run(served, texts, encoded, cfg, advance or (lambda n: None))
    # Prediction columns carry a prefix so that a gold `label` column of the input is kept beside them.
    rows = [{**record, **{f"{PREFIX}{k}": v for k, v in result.items()}, **({"truncated": True} if i in long else {})}
            for i, ((_, record), result) in enumerate(zip(records, results))]
    out = cfg.output or cfg.input_file.with_name(f"{cfg.input_file.stem}.predictions.jsonl")
    _write(out, rows)
    rejects_path = out.with_name(out.stem + ".rejected.jsonl")
    write_rejected(rejects_path, rejected)
    summary = {"output": str(out), "rows": len(rows), "rejected": len(rejected), "truncated": len(long),
               "rejected_file": str(rejects_path), "task": served.task, **_rejections(rejected, len(rows))}
    if summary["rejected_fraction"] > cfg.max_rejected_fraction:
        from tuneforge.errors import DataError

        raise DataError(
            f"{len(rejected)} of {len(rows) + len(rejected)} rows rejected ({100 * summary['rejected_fraction']:.1f}% > "
            f"max_rejected_fraction {cfg.max_rejected_fraction:.0%}); most common: {summary['top_reason']}. The other "
            f"rows' predictions are in {out}, every rejected row and its reason in {rejects_path}; accept more with "
            f"max_rejected_fraction=<share>")
    return summary


def _rejections(rejected: list, kept: int) -> dict:
    """The share of rows rejected and the most common reason (``N x reason``), for the console."""
    from collections import Counter

    from tuneforge.data.report import reason_category

    total = kept + len(rejected)
    top = Counter(reason_category(r.reason) for r in rejected).most_common(1)
    return {"rejected_fraction": len(rejected) / total if total else 0.0,
            "top_reason": f"{top[0][1]} x {top[0][0]}" if top else None}
