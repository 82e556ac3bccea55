"""The evaluation stage's one entry: ``evaluate(model, split, spec, ...) -> Report``.

Used by a run's final evaluation (validation, and the test split when there is one) and by
``tuneforge evaluate MODEL_DIR FILE``: predictions in one pass (``predict``), the task's metrics
(``spec.metrics``, then ``spec.generate_metrics`` for metrics that need generated text), the task's
hook after the final evaluation (``spec.after_evaluation``: a causal LM's base-vs-tuned table), and
the report (eval.json, eval.md, plots) in ``out_dir``. Nothing here knows a task.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    write_eval_report(metrics, out_dir, title=title, extra=extra)
    if generations is not None:
        write_generations(Path(out_dir) / "generations.jsonl", generations)
    return Report(metrics=metrics, predictions=preds, out_dir=Path(out_dir))


#: the per-example records a task's ``generate_metrics`` may return (``tasks.metrics.examples``): written to
#: ``<out_dir>/generations.jsonl``, kept out of eval.json
GENERATIONS_KEY = "generations"


def write_generations(path: Path, records: list[dict]) -> None:
    import json

    from tuneforge.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def _no_base():
    raise RuntimeError("this evaluation has no base model to compare with")
