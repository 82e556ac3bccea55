"""Regression: one real value per text from a single-output head, MSE loss; MSE, MAE, Pearson, Spearman."""

from __future__ import annotations

from tuneforge.tasks.base import TaskSpec, register, text_input_ids


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    from tuneforge.data.batching import Encoded

    ids = text_input_ids(records, tokenizer, recipe)
    return Encoded(input_ids=ids, labels=[float(r["label"]) for r in records], label_kind="value")


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    from tuneforge.tasks.metrics.task_metrics import regression_metrics

    values = preds.logits.squeeze(-1).tolist()
    return regression_metrics(values, encoded.labels)


SPEC = register(TaskSpec(
    name="regression", labels="value", label_kind="value", auto_class="AutoModelForSequenceClassification",
    peft_task_type="SEQ_CLS",
    # problem_type makes the exported config say what the single output is; users' pipelines read it.
    head_kwargs=lambda names: {"num_labels": 1, "problem_type": "regression"},
    encode=encode, metrics=metrics,
    summary=lambda m: f"mse {m['mse']:.4f}, mae {m['mae']:.4f}, spearman {m['spearman']:.4f}",
    selectable={"mse": "min", "rmse": "min", "mae": "min", "pearson": "max", "spearman": "max", "r2": "max",
                "loss": "min"},
    new_head=True, scratch_families=("gpt2", "llama", "bert"),
))
