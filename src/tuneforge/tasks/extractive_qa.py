"""Extractive question answering (SQuAD style): the answer is a span of the context.

Rows are ``qa`` rows (``data.format: squad``). ``encode`` cuts each question's context into
overlapping windows of ``model.max_length`` tokens (``tuneforge.data.qa.prepare_qa_features``):
one encoded example per window, labelled with the answer's (start, end) token pair, or both at the
``[CLS]`` token when the window does not hold the whole answer. ``metrics`` picks each question's
best span over all of its windows and scores the text with SQuAD v1.1 exact match and F1 (0-100)
against every gold answer.

Why the question length is checked here and not in the data stage: whether a question leaves room
for its context in a window is a count of *model* tokens, and the data stage runs before the
tokenizer exists. An over-long question is left out of the windows: in training it is not trained
on; in validation it counts as unanswered (the score stays over the whole validation set rather
than quietly dropping the hard cases). More than ``data.max_rejected_fraction`` of such questions
is a ``DataError`` naming the first one and how to fix it.
"""

from __future__ import annotations

import logging

from tuneforge.errors import DataError
from tuneforge.tasks.base import TaskSpec, register

QA_FIELDS = ("question", "context", "answers")


def head_kwargs(names: list[str] | None) -> dict:
    # Two outputs per token (start, end), whatever num_labels the checkpoint was saved with.
    return {"num_labels": 2}


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    from tuneforge.data.batching import Encoded
    from tuneforge.data.qa import prepare_qa_features

    _require_qa_records(records)
    settings, max_length = recipe.extractive_qa, recipe.model.max_length
    kept = _fitting_questions(records, tokenizer, max_length, settings.doc_stride,
                              recipe.data.max_rejected_fraction)
    features = prepare_qa_features([records[i] for i in kept], tokenizer, max_length, settings.doc_stride)
    has_types = bool(features) and "token_type_ids" in features[0]
    extra = {"token_type_ids": [f["token_type_ids"] for f in features]} if has_types else {}
    n = len(features)
    meta = {
        # Index into ``records`` (not into the kept questions), so metrics can line windows up with rows.
        "example_index": [kept[f["example_index"]] for f in features],
        # Lists, not tuples: the same values the token cache gives back, cached or not.
        "offset_mapping": [[None if o is None else list(o) for o in f["offset_mapping"]] for f in features],
        # TaskSpec.metrics does not receive the recipe, so the answer-picking settings travel with the
        # windows they apply to (constant columns; the token cache key already covers them).
        "n_best": [settings.n_best] * n,
        "max_answer_length": [settings.max_answer_length] * n,
    }
    return Encoded(input_ids=[f["input_ids"] for f in features],
                   labels=[[f["start_positions"], f["end_positions"]] for f in features],
                   label_kind="span", extra=extra, meta=meta)


def _require_qa_records(records: list[dict]) -> None:
    for record in records:
        missing = [key for key in QA_FIELDS if key not in record]
        if missing:
            found = ", ".join(sorted(key for key in record if not key.startswith("_"))) or "none"
            raise DataError(
                f"task extractive_qa needs question/context/answers rows, but row {record.get('_origin', '?')} "
                f"has no {', '.join(missing)} (fields: {found}); read a SQuAD v1.1 JSON file with data.format: squad"
            )


def _fitting_questions(records: list[dict], tokenizer, max_length: int, stride: int,
                       max_fraction: float) -> list[int]:
    """Indices of the questions that leave a window room for more than ``stride`` context tokens."""
    from tuneforge.data.qa import qa_length_problem

    problems = [qa_length_problem(r["question"], tokenizer, max_length, stride) for r in records]
    too_long = [i for i, problem in enumerate(problems) if problem is not None]
    if too_long and (len(too_long) > max_fraction * len(records) or len(too_long) == len(records)):
        first = too_long[0]
        raise DataError(
            f"{len(too_long)} of {len(records)} questions do not fit model.max_length {max_length} with "
            f"extractive_qa.doc_stride {stride} (more than data.max_rejected_fraction {max_fraction:g}); first, "
            f"{records[first].get('_origin', first)}: {problems[first]}"
        )
    if too_long:
        origins = ", ".join(str(records[i].get("_origin", i)) for i in too_long[:5])
        logging.getLogger(__name__).warning(
            "%d question(s) too long for model.max_length %d and doc_stride %d are left out (unanswered "
            "in validation): %s", len(too_long), max_length, stride, origins)
    return [i for i, problem in enumerate(problems) if problem is None]


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    from tuneforge.data.qa import QAConfig, postprocess_qa
    from tuneforge.tasks.metrics.task_metrics import squad_metrics

    meta = encoded.meta
    windows = [{"example_index": e, "offset_mapping": o}
               for e, o in zip(meta["example_index"], meta["offset_mapping"])]
    defaults = QAConfig()  # only when there is no window to carry the settings (nothing to pick then)
    n_best = meta["n_best"][0] if windows else defaults.n_best
    max_answer_length = meta["max_answer_length"][0] if windows else defaults.max_answer_length
    starts, ends = [out[:, 0] for out in preds.outputs], [out[:, 1] for out in preds.outputs]
    predicted = postprocess_qa(windows, starts, ends, [r["context"] for r in records], n_best=n_best,
                               max_answer_length=max_answer_length)
    return squad_metrics(predicted, [[a["text"] for a in r["answers"]] for r in records])


def check_recipe(recipe) -> None:
    if 2 * recipe.extractive_qa.doc_stride > recipe.model.max_length:
        # Each window holds the whole question and more than doc_stride context tokens; half the
        # window for the overlap leaves the other half for the question and new context.
        raise ValueError(
            f"extractive_qa.doc_stride: {recipe.extractive_qa.doc_stride} is more than half of model.max_length "
            f"({recipe.model.max_length}); lower doc_stride or raise max_length (e.g. 128 with max_length 384)"
        )


SPEC = register(TaskSpec(
    name="extractive_qa", labels="qa", label_kind="span", auto_class="AutoModelForQuestionAnswering",
    peft_task_type="QUESTION_ANS", head_kwargs=head_kwargs, encode=encode, metrics=metrics,
    summary=lambda m: f"F1 {m['f1']:.2f}, exact match {m['exact_match']:.2f} (SQuAD, 0-100)",
    selectable={"f1": "max", "exact_match": "max", "loss": "min"},
    section="extractive_qa", check_recipe=check_recipe, new_head=True, scratch_families=("bert",),
    unsupported_methods={"prompt": "prompt tuning prepends virtual tokens to the input, so the answer start/end "
                                   "positions would point num_virtual_tokens too early"},
))
