"""``TaskSpec``: the handful of things that differ between tasks, as plain fields and functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class TaskSpec:
    name: str
    #: What the data stage checks and canonicalises: class names, real values, word tags, QA answer
    #: spans ("qa"); "none" for tasks whose targets are text (chat replies, translations), checked by
    #: their sources.
    labels: Literal["class", "value", "tags", "qa", "none"]
    #: ``Encoded.label_kind`` of the encoded examples (decides padding and the loss).
    label_kind: str
    #: The transformers Auto class that loads the head (training) and the export (users).
    auto_class: str
    #: peft's TaskType name for adapter methods.
    peft_task_type: str
    #: ``head_kwargs(label_names) -> from_pretrained kwargs`` (num_labels, id2label, ...).
    head_kwargs: Callable[[list[str] | None], dict]
    #: ``encode(records, tokenizer, recipe, label_names) -> Encoded`` (prepared-split records; the recipe
    #: gives ``model.max_length``, ``data.formatting`` and the task's own settings).
    encode: Callable[[list[dict], Any, Any, list[str] | None], Any]
    #: ``metrics(predictions, records, encoded, label_names) -> dict`` (without "loss").
    metrics: Callable[[Any, list[dict], Any, list[str] | None], dict]
    #: One line for the console after evaluation.
    summary: Callable[[dict], str]
    #: Optional ``generate_metrics(model, tokenizer, records, recipe) -> dict``: metrics that need the model
    #: to generate text (BLEU, final-answer accuracy). Called by run.py after ``metrics``.
    generate_metrics: Callable[[Any, Any, list[dict], Any], dict] | None = None


def label_maps(names: list[str]) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)}}


def text_input_ids(records: list[dict], tokenizer, recipe) -> list[list[int]]:
    """Token ids of the records' ``text``, unpadded, cut at ``model.max_length`` (sequence-level tasks)."""
    return tokenizer([r["text"] for r in records], truncation=True, max_length=recipe.model.max_length)["input_ids"]
