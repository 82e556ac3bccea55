"""Single-label sequence classification: a class per text, cross-entropy, accuracy and macro F1."""

from __future__ import annotations

from tuneforge.tasks.base import TaskSpec, label_maps, register, text_input_ids


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    from tuneforge.data.batching import Encoded

    index = {name: i for i, name in enumerate(names or [])}
    ids = text_input_ids(records, tokenizer, recipe)
    return Encoded(input_ids=ids, labels=[index[r["label"]] for r in records], label_kind="class")


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    from tuneforge.tasks.metrics import classification_metrics

    return classification_metrics(encoded.labels, preds.labels, names)


def _variant(recipe):
    """``classification.multi_label: true`` selects the multi-label variant (tasks/multilabel.py)."""
    if recipe.classification.multi_label:
        from tuneforge.tasks.multilabel import SPEC as MULTI_LABEL

        return MULTI_LABEL
    return None


SPEC = register(TaskSpec(
    name="classification", labels="class", label_kind="class", auto_class="AutoModelForSequenceClassification",
    peft_task_type="SEQ_CLS", head_kwargs=label_maps, encode=encode, metrics=metrics,
    summary=lambda m: f"accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}",
    selectable={"accuracy": "max", "macro_f1": "max", "macro_precision": "max", "macro_recall": "max",
                "loss": "min"},
    section="classification", variant=_variant, new_head=True, scratch_families=("gpt2", "llama", "bert"),
))
