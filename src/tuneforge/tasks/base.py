"""``TaskSpec``: everything that differs between tasks, as plain fields and functions.

A task is one module in this package ending with ``SPEC = register(TaskSpec(...))``; the rest of
tuneforge asks the spec (``tuneforge.tasks.spec_for(recipe)``) and never names a task. Fields come in
three groups: the data and the model (labels, encoding, head, PEFT task type), the evaluation
(metrics, which of them a run may select on, the console summary, generation), and hooks that add to
a run (during evaluations, after the final evaluation, extra recipe checks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


def _never(recipe) -> list[str]:
    return []


def _always(recipe) -> bool:
    return True


def _no_generation(recipe) -> None:
    return None


@dataclass
class FinalEvaluation:
    """What a task's ``after_evaluation`` hook gets: a run's final evaluation, to add to.

    ``metrics`` are the tuned model's validation metrics (the hook may add keys: they reach eval.json,
    the report and result.json); ``score(model)`` computes the same metrics for another model on the
    same split with the same settings; ``load_base()`` loads the pretrained model again (for methods
    that changed its weights); ``say`` prints to the console."""

    recipe: Any
    model: Any
    tokenizer: Any
    metrics: dict
    out_dir: Path
    score: Callable[[Any], dict]
    load_base: Callable[[], Any]
    say: Callable[[str], None]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    #: What the data stage checks and canonicalises: class names, real values, word tags, QA answer
    #: spans ("qa"); "none" for tasks whose targets are text (chat replies, translations), checked by
    #: their sources.
    labels: Literal["class", "value", "tags", "qa", "none", "preference"]
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
    #: to generate text (BLEU, final-answer accuracy), added to ``metrics``'.
    generate_metrics: Callable[[Any, Any, list[dict], Any], dict] | None = None
    #: Optional ``objective(tokenizer, recipe) -> object``: for tasks whose loss is not a function of one
    #: forward pass and fixed labels (preference pairs, GRPO), the object whose ``loss_sum(model, batch)
    #: -> (summed loss, outputs with .per_example)`` the loop and evaluation call (``Encoded.objective``).
    objective: Callable[[Any, Any], Any] | None = None
    #: Optional ``before_training(model, encoded, recipe, *, device, precision, cache) -> Encoded``: run on
    #: every split's examples with the model before its first step (preference: precomputed reference
    #: log-probs); ``cache`` is a file in the run for what it computed (a resumed run reads it back).
    before_training: Callable[..., Any] | None = None

    # --- selection and recipes
    #: Metrics a run can select its best checkpoint on / stop early on, each "max" or "min" (bigger or
    #: smaller is better); the first is the default ``train.metric_for_best`` unless ``default_metric``.
    selectable: Mapping[str, str] = field(default_factory=lambda: {"loss": "min"})
    default_metric: str | None = None
    #: The recipe section holding the task's own settings (``causal_lm:``), if it has one.
    section: str | None = None
    #: ``variant(recipe) -> TaskSpec | None``: a variant the recipe selects (multi-label classification).
    variant: Callable[[Any], "TaskSpec | None"] | None = None
    #: ``check_recipe(recipe)``: raise ValueError for settings of this task that do not fit together.
    check_recipe: Callable[[Any], None] | None = None
    #: ``missing_files(recipe) -> [(key, path)]``: files of the task's own settings that do not exist (GRPO's
    #: reward models), checked with the data files before any work.
    missing_files: Callable[[Any], list] = _never
    #: ``model.architecture`` families (from scratch) that can carry this task.
    scratch_families: tuple[str, ...] = ()

    # --- the model
    #: The head is new (randomly initialised): PEFT methods train it too, head_only trains only it.
    new_head: bool = False
    #: method -> why that method cannot train this task.
    unsupported_methods: Mapping[str, str] = field(default_factory=dict)

    # --- evaluation during training and after it
    #: ``generate_in_loop(recipe)``: whether evaluations during training run ``generate_metrics`` too.
    generate_in_loop: Callable[[Any], bool] = _always
    #: ``loop_generation(recipe)``: the recipe keys that make evaluations during training generate text
    #: (for the check that refuses them where the model is sharded).
    loop_generation: Callable[[Any], list[str]] = _never
    #: ``during_evaluation(model, tokenizer, recipe, step)``: run on the main process at every evaluation
    #: during training (causal LM: logs samples).
    during_evaluation: Callable[[Any, Any, Any, int], None] | None = None
    #: ``after_evaluation(FinalEvaluation)``: run after the final evaluation (causal LM: the untuned
    #: base model scored next to the tuned one, samples).
    after_evaluation: Callable[[FinalEvaluation], None] | None = None
    #: ``final_generation(recipe) -> (sequences per batch, new tokens) | None``: the generation batches of
    #: the final evaluation, for ``tuneforge plan``.
    final_generation: Callable[[Any], tuple[int, int] | None] = _no_generation

    @property
    def best_metric(self) -> str:
        return self.default_metric or next(iter(self.selectable))


#: Methods that train PEFT adapters on a frozen base: switching them off (``disable_adapter``) gives the
#: base model back, which serves as the reference (preference, GRPO) and the base of base-vs-tuned reports.
ADAPTER_METHODS = ("lora", "dora", "ia3", "prefix", "prompt")


def label_maps(names: list[str]) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)}}


def text_input_ids(records: list[dict], tokenizer, recipe) -> list[list[int]]:
    """Token ids of the records' ``text``, unpadded, cut at ``model.max_length`` (sequence-level tasks)."""
    return tokenizer([r["text"] for r in records], truncation=True, max_length=recipe.model.max_length)["input_ids"]


# ------------------------------------------------------------------------------------------ registry

#: task name -> spec, in registration order (the built-in tasks first: tuneforge.tasks imports them)
REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Make ``spec`` a task recipes can name (``task: <spec.name>``); returns it, for
    ``SPEC = register(TaskSpec(...))``. A second spec of the same name is refused unless ``replace``."""
    if spec.name in REGISTRY and REGISTRY[spec.name] is not spec and not replace:
        raise ValueError(f"task {spec.name!r} is registered already")
    if spec.default_metric is not None and spec.default_metric not in spec.selectable:
        raise ValueError(f"task {spec.name}: default_metric {spec.default_metric!r} is not in selectable")
    REGISTRY[spec.name] = spec
    return spec
