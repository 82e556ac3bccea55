"""Token classification (NER): a tag per word, aligned to the first sub-token; entity-level F1 (seqeval)."""

from __future__ import annotations

from tuneforge.tasks.base import TaskSpec, label_maps, register


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    max_length = recipe.model.max_length
    from tuneforge.data.batching import Encoded
    from tuneforge.data.token_labels import encode_tagged

    label_to_id = {name: i for i, name in enumerate(names or [])}
    features = encode_tagged([r["tokens"] for r in records], [r["tags"] for r in records], tokenizer,
                             label_to_id, max_length)
    extra = {"token_type_ids": [f["token_type_ids"] for f in features]} if features and "token_type_ids" in features[0] else {}
    return Encoded(input_ids=[f["input_ids"] for f in features], labels=[f["labels"] for f in features],
                   label_kind="tokens", extra=extra, meta={"word_ids": [f["word_ids"] for f in features]})


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    from tuneforge.data.token_labels import decode_predictions
    from tuneforge.tasks.metrics.task_metrics import ner_metrics

    predicted = decode_predictions([out.argmax(-1).tolist() for out in preds.outputs], encoded.meta["word_ids"],
                                   names, [len(r["tokens"]) for r in records])
    return ner_metrics([r["tags"] for r in records], predicted)


SPEC = register(TaskSpec(
    name="token_classification", labels="tags", label_kind="tokens", auto_class="AutoModelForTokenClassification",
    peft_task_type="TOKEN_CLS", head_kwargs=label_maps, encode=encode, metrics=metrics,
    summary=lambda m: f"entity F1 {m['entity_f1']:.4f} (P {m['entity_precision']:.4f}, R {m['entity_recall']:.4f})",
    selectable={"entity_f1": "max", "entity_precision": "max", "entity_recall": "max", "token_accuracy": "max",
                "loss": "min"},
    new_head=True, scratch_families=("gpt2", "llama", "bert"),
    unsupported_methods={"prompt": "prompt tuning prepends virtual tokens to the input, so the outputs no "
                                   "longer line up one-to-one with the per-token labels"},
))
