"""Multi-label classification (``task: classification`` with ``classification.multi_label: true``):
any number of labels per text, a sigmoid per label, binary cross-entropy; per-label decision
thresholds tuned on the validation set."""

from __future__ import annotations

from tuneforge.tasks.base import TaskSpec, label_maps, text_input_ids


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    from tuneforge.data.batching import Encoded

    index = {name: i for i, name in enumerate(names or [])}
    ids = text_input_ids(records, tokenizer, recipe)
    hot = []
    for r in records:
        row = [0.0] * len(index)
        for name in r["label"]:
            row[index[name]] = 1.0
        hot.append(row)
    return Encoded(input_ids=ids, labels=hot, label_kind="multi")


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    from tuneforge.tasks.metrics.task_metrics import multilabel_metrics, tune_thresholds

    probs = preds.logits.sigmoid().numpy()
    thresholds = tune_thresholds(probs, encoded.labels)
    out = multilabel_metrics(probs, encoded.labels, names, thresholds)
    # The untuned score too: tuned thresholds are fitted on this very validation set.
    out["micro_f1_at_0.5"] = multilabel_metrics(probs, encoded.labels, names, 0.5)["micro_f1"]
    out["thresholds"] = dict(zip(names, thresholds))
    return out


SPEC = TaskSpec(
    name="classification", labels="multi", label_kind="multi", auto_class="AutoModelForSequenceClassification",
    peft_task_type="SEQ_CLS",
    head_kwargs=lambda names: {**label_maps(names), "problem_type": "multi_label_classification"},
    encode=encode, metrics=metrics,
    summary=lambda m: f"micro F1 {m['micro_f1']:.4f} (at 0.5: {m['micro_f1_at_0.5']:.4f}), macro F1 {m['macro_f1']:.4f}",
    selectable={"macro_f1": "max", "micro_f1": "max", "micro_precision": "max", "micro_recall": "max",
                "subset_accuracy": "max", "loss": "min"},
    default_metric="micro_f1", section="classification", new_head=True, scratch_families=("gpt2", "llama", "bert"),
)  # a variant of classification (tasks/classification.py), not a task of its own: not registered
