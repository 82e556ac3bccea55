"""Task specs: what each ``task:`` value means for data, head, loss, predictions and metrics.

``get_task(name)`` returns a ``TaskSpec``; the training run, evaluation and export use only its
fields, so adding a task is adding one small module here.
"""

from __future__ import annotations

from tuneforge.tasks.base import TaskSpec


def get_task(name: str) -> TaskSpec:
    if name == "classification":
        from tuneforge.tasks.classification import SPEC
    elif name == "regression":
        from tuneforge.tasks.regression import SPEC
    elif name == "token_classification":
        from tuneforge.tasks.token_classification import SPEC
    elif name == "causal_lm":
        from tuneforge.tasks.causal_lm import SPEC
    elif name == "seq2seq":
        from tuneforge.tasks.seq2seq import SPEC
    elif name == "extractive_qa":
        from tuneforge.tasks.extractive_qa import SPEC
    elif name == "masked_lm":
        from tuneforge.tasks.masked_lm import SPEC
    else:
        raise ValueError(f"unknown task {name!r}")
    return SPEC


def spec_for(recipe) -> TaskSpec:
    """The spec a recipe trains with: its task, with the multi-label variant of classification."""
    if recipe.task == "classification" and recipe.classification.multi_label:
        from tuneforge.tasks.multilabel import SPEC

        return SPEC
    return get_task(recipe.task)
