"""Tasks: what each ``task:`` value means for data, head, loss, predictions, metrics and hooks.

Each task is one module here ending with ``SPEC = register(TaskSpec(...))`` (``tasks.base``); importing
this package registers the built-in ones. The recipe's ``task`` accepts every registered name, and
the training run, evaluation, export, planning and serving use only the spec, so adding a task is
adding one module (and its name to ``BUILTIN`` below, or a ``register`` call in a plugin or test).
"""

from __future__ import annotations

import importlib

from tuneforge.tasks.base import REGISTRY, FinalEvaluation, TaskSpec, register

#: modules of the built-in tasks, in the order recipes' docs list them
BUILTIN = ("classification", "regression", "token_classification", "causal_lm", "extractive_qa", "seq2seq",
           "masked_lm", "preference", "reward_model", "grpo")

for _name in BUILTIN:
    importlib.import_module(f"tuneforge.tasks.{_name}")

__all__ = ["BUILTIN", "FinalEvaluation", "TaskSpec", "get_task", "register", "spec_for", "task_names", "all_specs"]


def task_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def all_specs() -> list[TaskSpec]:
    return list(REGISTRY.values())


def get_task(name: str) -> TaskSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(REGISTRY)}") from None


def spec_for(recipe) -> TaskSpec:
    """The spec a recipe trains with: its task's, or the variant its settings select (multi-label
    classification)."""
    spec = get_task(recipe.task)
    if spec.variant is not None:
        return spec.variant(recipe) or spec
    return spec
