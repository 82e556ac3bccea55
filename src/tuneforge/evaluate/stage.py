"""The evaluation stage's one entry: ``evaluate(model, split, spec, ...) -> Report``.

Used by a run's final evaluation (validation, and the test split when there is one) and by
``tuneforge evaluate MODEL_DIR FILE``: predictions in one pass (``predict``), the task's metrics
(``spec.metrics``, then ``spec.generate_metrics`` for metrics that need generated text), the task's
hook after the final evaluation (``spec.after_evaluation``: a causal LM's base-vs-tuned table), and
the report (eval.json, eval.md, plots) in ``out_dir``. Nothing here knows a task.

Beside the report it writes the per-example predictions (``predictions.jsonl``: an id stable across runs
on the same data, the gold label or target and the prediction), from which ``evaluate.intervals`` computes
the 95% bootstrap interval of every metric it supports (eval.json ``ci95``) and ``tuneforge compare``
compares two runs example by example. Which rows a split's predictions have is decided by the encoding's
``label_kind`` (class, multi, value, tokens) or by the generated texts a task returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Split:
    """Rows to score: the prepared records, their encoding, the label names, and where they came from."""

    name: str  # "validation", "test", or a file's name
    records: list[dict]
    encoded: Any  # data.batching.Encoded
    label_names: list[str] | None
    source: str = ""  # said in the report and on the console: which rows the figures are on


@dataclass
class Report:
    metrics: dict
    predictions: Any  # evaluate.predict.Predictions (``outputs`` verify an export against this model)
    out_dir: Path
    #: ``{"ci95": {metric: [low, high]}, "ci95_method": {...}}`` (eval.json); empty where no interval applies
    intervals: dict = field(default_factory=dict)

    @property
    def markdown(self) -> Path:
        return self.out_dir / "eval.md"


def evaluate(model, split: Split, spec, *, recipe, tokenizer, out_dir: Path, title: str, batch_size: int | str,
             precision: str = "fp32", extra: dict | None = None, fields: dict | None = None,
             load_base: Callable[[], Any] | None = None, hooks: bool = True,
             say: Callable[[str], None] = print) -> Report:
    """Score ``model`` on ``split`` with task ``spec``'s metrics and write the report into ``out_dir``.

    ``fields``: values added to the metrics before the report (e.g. the checkpoint's ``step``).
    ``hooks``: run ``spec.after_evaluation`` (the final validation evaluation; not a test split, which
    must not add comparisons the selection could see). ``load_base``: the pretrained model again, for
    the hook's base-model comparison."""
    from tuneforge.evaluate.predict import predict
    from tuneforge.evaluate.report import write_eval_report
    from tuneforge.tasks.base import FinalEvaluation

    def score(m) -> tuple[dict, Any]:
        preds = predict(m, split.encoded, batch_size=batch_size, pad_id=tokenizer.pad_token_id, precision=precision)
        out = {**spec.metrics(preds, split.records, split.encoded, split.label_names), "loss": preds.loss}
        if spec.generate_metrics is not None:
            out.update(spec.generate_metrics(m, tokenizer, split.records, recipe))
        return out, preds

    metrics, preds = score(model)
    generations = metrics.pop(GENERATIONS_KEY, None)
    if hooks and spec.after_evaluation is not None:
        spec.after_evaluation(FinalEvaluation(
            recipe=recipe, model=model, tokenizer=tokenizer, metrics=metrics, out_dir=Path(out_dir),
            score=lambda m: {k: v for k, v in score(m)[0].items() if k != GENERATIONS_KEY},
            load_base=load_base or _no_base, say=say))
    metrics.update(fields or {})
    evidence = _evidence(preds, split, metrics, generations, Path(out_dir), say)
    write_eval_report(metrics, out_dir, title=title, extra=extra, evidence=evidence)
    if generations is not None:
        write_generations(Path(out_dir) / "generations.jsonl", generations)
    intervals = {k: v for k, v in evidence.items() if k.startswith("ci")}
    return Report(metrics=metrics, predictions=preds, out_dir=Path(out_dir), intervals=intervals)


#: the per-example records a task's ``generate_metrics`` may return (``tasks.metrics.examples``): written to
#: ``<out_dir>/generations.jsonl``, kept out of eval.json
GENERATIONS_KEY = "generations"


def write_generations(path: Path, records: list[dict]) -> None:
    import json

    from tuneforge.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


#: per-example predictions of an evaluation, beside eval.json (``tuneforge compare`` reads them)
PREDICTIONS_FILE = "predictions.jsonl"


def _evidence(preds, split: Split, metrics: dict, generations, out_dir: Path, say) -> dict:
    """Write ``predictions.jsonl``; return what eval.json gets beside the metrics: ``predictions`` (the
    file, its kind, the label names) and the intervals (``ci95``, ``ci95_method``)."""
    from tuneforge.evaluate.intervals import eval_intervals

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PREDICTIONS_FILE).unlink(missing_ok=True)  # never a stale file beside new figures
    try:
        found = prediction_rows(preds, split, metrics, generations)
    except Exception as exc:  # noqa: BLE001 - the figures stand without the per-example file
        say(f"per-example predictions not written ({type(exc).__name__}: {exc})")
        return {}
    if found is None:
        return {}
    kind, rows, meta = found
    write_generations(out_dir / PREDICTIONS_FILE, rows)
    evidence = {"predictions": {"file": PREDICTIONS_FILE, "kind": kind, "examples": len(rows), **meta}}
    try:
        evidence.update(eval_intervals(kind, rows, meta, metrics))
    except Exception as exc:  # noqa: BLE001 - an interval must never cost a run its report
        say(f"confidence intervals not computed ({type(exc).__name__}: {exc})")
    return evidence


def example_ids(records: list[dict]) -> list[str]:
    """An id per record, stable across runs on the same data: its origin ("file:line", the file's name
    only, so that the same file reached by another path still joins), with ``#<index>`` where a record has
    no origin or shares it with another."""
    from collections import Counter

    origins = []
    for record in records:
        origin = str(record.get("_origin") or "")
        path, sep, line = origin.rpartition(":")
        origins.append(f"{Path(path).name}{sep}{line}" if sep else origin)
    repeated = Counter(origins)
    return [o if o and repeated[o] == 1 else f"{o}#{i}" for i, o in enumerate(origins)]


def prediction_rows(preds, split: Split, metrics: dict, generations) -> tuple[str, list[dict], dict] | None:
    """``(kind, rows, meta)`` of the per-example predictions, or None where the split's outputs are not
    per-example predictions this module can state (loss-only and preference kinds)."""
    records, encoded, names = split.records, split.encoded, split.label_names
    ids = example_ids(records)
    kind = getattr(encoded, "label_kind", None)

    def head(i: int) -> dict:
        return {"id": ids[i], "index": i}

    if kind == "class" and preds.outputs:
        predicted = preds.labels
        rows = [{**head(i), "label": int(g), "prediction": int(p),
                 **({"label_name": names[int(g)], "prediction_name": names[int(p)]} if names else {}),
                 "correct": int(g) == int(p)} for i, (g, p) in enumerate(zip(encoded.labels, predicted))]
        return "classification", rows, {"label_names": list(names or [])}
    if kind == "multi" and preds.outputs:
        import torch

        thresholds = metrics.get("thresholds") or {}
        cut = torch.tensor([float(thresholds.get(n, 0.5)) for n in names])
        chosen = (preds.logits.sigmoid() >= cut).tolist()
        rows = []
        for i, (gold, got) in enumerate(zip(encoded.labels, chosen)):
            gold_set = [n for n, g in zip(names, gold) if g]
            got_set = [n for n, g in zip(names, got) if g]
            rows.append({**head(i), "labels": gold_set, "prediction": got_set, "correct": gold_set == got_set})
        return "multilabel", rows, {"label_names": list(names), "thresholds": {n: float(cut[j])
                                                                               for j, n in enumerate(names)}}
    if kind == "value" and preds.outputs:
        values = preds.logits.reshape(len(preds.outputs), -1)[:, 0].tolist()
        rows = [{**head(i), "label": float(t), "prediction": float(p), "error": float(p) - float(t)}
                for i, (t, p) in enumerate(zip(encoded.labels, values))]
        return "regression", rows, {}
    if kind == "tokens" and preds.outputs and records and "tags" in records[0]:
        from tuneforge.data.token_labels import decode_predictions

        predicted = decode_predictions([out.argmax(-1).tolist() for out in preds.outputs], encoded.meta["word_ids"],
                                       names, [len(r["tokens"]) for r in records])
        rows = [{**head(i), "tags": list(r["tags"]), "prediction": p, "correct": list(r["tags"]) == p}
                for i, (r, p) in enumerate(zip(records, predicted))]
        return "ner", rows, {"label_names": list(names or [])}
    if generations and all(isinstance(g, dict) and "prediction" in g and "reference" in g for g in generations):
        where = _generation_origins(records, generations)
        rows = []
        for j, g in enumerate(generations):
            i = where[j]
            row = {"id": ids[i] if i is not None else f"generated#{j}", "index": i if i is not None else j,
                   "reference": g["reference"], "prediction": g["prediction"]}
            if "correct" in g:
                row.update(reference_number=g.get("reference_number"), predicted_number=g.get("predicted_number"),
                           answered=g.get("predicted_number") is not None, correct=bool(g["correct"]))
            elif "chrf" in g:
                row["chrf"] = g["chrf"]
            rows.append(row)
        return ("final_number" if rows and "correct" in rows[0] else "text"), rows, {}
    return None


def _generation_origins(records: list[dict], generations: list[dict]) -> list[int | None]:
    """The record index of each generated example: tasks generate for records in order (skipping those
    without a target), so walk both and match each generation's reference to a record's target."""
    def targets(record: dict) -> list:
        out = [record.get("references"), record.get("target")]
        messages = record.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            out.append(messages[-1].get("content"))
        return [t for t in out if t is not None]

    found: list[int | None] = []
    i = 0
    for g in generations:
        reference = g.get("reference")
        while i < len(records) and not any(t == reference or (isinstance(reference, list) and t == reference[0])
                                           for t in targets(records[i])):
            i += 1
        if i >= len(records):
            return [None] * len(generations)  # no one-to-one mapping: ids by position among the generated
        found.append(i)
        i += 1
    return found


def _no_base():
    raise RuntimeError("this evaluation has no base model to compare with")
