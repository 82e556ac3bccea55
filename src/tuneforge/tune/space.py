"""The ``search:`` section of a recipe: which recipe keys a study varies, over what values, and how.

A parameter is named by its recipe key path (``train.learning_rate``, ``lora.r``, ``method``) and is a
float or int range (linear or log, optionally stepped) or a list of choices; ``when`` makes it
conditional on earlier parameters (``lora.r`` only when ``method`` is ``lora``)::

    search:
      sampler: tpe
      pruner: asha
      trials: 20
      parameters:
        train.learning_rate: {low: 1e-5, high: 1e-3, log: true}
        method: {choices: [lora, ia3]}
        lora.r: {choices: [4, 8, 16], when: {method: lora}}

Everything here is checked before any trial starts: the section's own keys (``extra="forbid"``), that
every parameter names a real recipe key, that ranges are non-empty and log ranges positive, and that
the base recipe with every extreme value of every parameter still validates, so a study cannot fail
at trial 17 on a value the recipe rejects. This module needs pydantic only (``tuneforge validate``).
"""

from __future__ import annotations

import difflib
import json
import math
import typing
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from tuneforge.config_io import apply_overrides, format_validation_error, read_yaml, section_type, set_key
from tuneforge.errors import RecipeError
from tuneforge.sections import Section

Sampler = Literal["grid", "random", "tpe", "cmaes"]
Pruner = Literal["none", "median", "asha", "hyperband"]
_PRIMITIVE = (str, int, float, bool, type(None))


class ParamSpec(Section):
    """One searched recipe key: a range (low/high) or a list of choices."""

    type: Literal["float", "int", "categorical"] | None = Field(
        None, description="float, int or categorical; default: categorical with choices, int when low and high "
        "are both integers, else float.")
    low: int | float | None = Field(None, description="Lower bound of a range (inclusive).")
    high: int | float | None = Field(None, description="Upper bound of a range (inclusive).")
    log: bool = Field(False, description="Sample the range on a log scale (learning rates; bounds must be > 0).")
    step: int | float | None = Field(None, gt=0, description="Spacing of the range's values (needed by sampler "
                                                             "grid for float ranges).")
    choices: list[Any] | None = Field(None, description="The values to choose from (any YAML values: numbers, "
                                                        "strings, lists such as LoRA target modules, mappings).")
    when: dict[str, Any] | None = Field(
        None, description="Only vary this key when each named earlier parameter has this value (or one of a list "
        "of values), e.g. {method: lora}; otherwise the base recipe's value stays.")

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low, high, log, step), not both")
            if not self.choices:
                raise ValueError("choices is empty: list at least one value")
            if self.type not in (None, "categorical"):
                raise ValueError(f"type {self.type} needs low and high; choices make a categorical parameter")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (a range) or choices (a list)")
        if self.type == "categorical":
            raise ValueError("type categorical needs choices")
        if self.kind == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"type int needs integer bounds, got low {self.low}, high {self.high}")
        if self.low >= self.high:
            raise ValueError(f"empty range: low ({self.low:g}) must be less than high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log range needs bounds > 0, got low {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("a log range cannot have a step")
        if self.kind == "int" and self.step is not None and not float(self.step).is_integer():
            raise ValueError(f"type int needs an integer step, got {self.step}")
        return self

    @property
    def kind(self) -> str:
        """float, int or categorical: the given type, or the one the values imply."""
        if self.type is not None:
            return self.type
        if self.choices is not None:
            return "categorical"
        return "int" if isinstance(self.low, int) and isinstance(self.high, int) else "float"

    def encoded_choices(self) -> list:
        """Choices as Optuna stores them: as they are when all are plain scalars, else JSON text."""
        if all(isinstance(c, _PRIMITIVE) for c in self.choices):
            return list(self.choices)
        return [json.dumps(c, sort_keys=True) for c in self.choices]

    def decode(self, value: Any) -> Any:
        """An Optuna parameter value back to the recipe value."""
        if self.kind == "categorical" and not all(isinstance(c, _PRIMITIVE) for c in self.choices):
            return json.loads(value)
        if self.kind == "int":
            return int(value)
        return value

    def grid_values(self) -> list | None:
        """Every value a grid visits, in Optuna's stored form; None when the range is continuous."""
        if self.kind == "categorical":
            return self.encoded_choices()
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def extremes(self) -> list:
        """The values that bound what a trial can get: both ends of a range, every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.decode(self.low), self.decode(self.high)]


class SearchSection(Section):
    """How a study searches (``tuneforge tune``); see docs/tuning.md."""

    parameters: dict[str, ParamSpec] = Field(
        ..., min_length=1, description="Recipe key path -> range or choices, e.g. train.learning_rate: "
        "{low: 1e-5, high: 1e-3, log: true}. Sampled in the order written (conditions refer to earlier keys).")
    sampler: Sampler = Field("tpe", description="grid: every combination; random; tpe: Bayesian (Tree-structured "
                                                "Parzen Estimator); cmaes: CMA-ES, numeric parameters only.")
    pruner: Pruner = Field("none", description="Stop unpromising trials at an evaluation: median (below the median "
                                               "of earlier trials at that step), asha (successive halving), hyperband.")
    metric: str | None = Field(None, description="Validation metric to optimise; default: train.metric_for_best. "
                                                 "Its direction (maximise/minimise) follows the metric.")
    trials: int | None = Field(None, ge=1, description="Budget: trials to finish (complete or pruned). Default: "
                                                       "the grid's size for sampler grid, else 20.")
    timeout_minutes: float | None = Field(None, gt=0, description="Budget: start no new trial after this many "
                                                                  "minutes of this invocation.")
    max_total_steps: int | None = Field(None, ge=1, description="Budget: start no new trial once the trials have "
                                                                "trained this many optimizer steps in total.")
    seed: int | None = Field(None, description="Sampler seed; default: the recipe's seed.")
    startup_trials: int = Field(5, ge=0, description="tpe/cmaes: random trials before the model of the search "
                                                     "takes over; median: trials finished before pruning starts.")
    warmup_steps: int = Field(0, ge=0, description="median: never prune a trial before this training step.")
    min_resource: int | Literal["auto"] = Field(
        "auto", description="asha/hyperband: training steps every trial gets before its first pruning decision; "
        "auto: estimated from the first trials. Evaluate often enough (train.eval_every_steps) to give the "
        "pruner decision points.")
    reduction_factor: int = Field(3, ge=2, description="asha/hyperband: keep about 1 in this many trials at each "
                                                       "rung.")
    heartbeat_seconds: int = Field(60, ge=1, description="A running trial records a heartbeat this often; one "
                                   "silent for 3 heartbeats (its machine died) is run again by another worker.")
    reuse_results: bool = Field(True, description="A trial drawn with the same parameters as a complete trial takes "
                                "that trial's result instead of training again (a recipe and seed train the same "
                                "model); samplers over few choices, such as TPE, re-propose points often.")
    keep_checkpoints: bool = Field(False, description="Keep every trial's checkpoints (disk: a full training state "
                                                      "each); by default only their metrics and reports stay.")
    export_trials: bool = Field(False, description="Export every trial's model (export: settings of the recipe); "
                                                   "default: no, retrain the best with --retrain-best instead.")

    @model_validator(mode="after")
    def _check(self) -> "SearchSection":
        names = list(self.parameters)
        for i, (name, spec) in enumerate(self.parameters.items()):
            for key, wanted in (spec.when or {}).items():
                if key not in names[:i]:
                    raise ValueError(f"search.parameters.{name}.when: {key!r} is not a parameter defined before "
                                     f"{name} (conditions refer to earlier parameters: {', '.join(names[:i]) or 'none'})")
                other = self.parameters[key]
                allowed = other.choices if other.kind == "categorical" else None
                for value in _as_list(wanted):
                    if allowed is not None and value not in allowed:
                        raise ValueError(f"search.parameters.{name}.when: {key} is never {value!r} (its choices: "
                                         f"{allowed})")
        if self.sampler == "grid":
            for name, spec in self.parameters.items():
                if spec.when:
                    raise ValueError(f"search.parameters.{name}.when: sampler grid needs every parameter in every "
                                     "trial; use random or tpe for conditional parameters")
                if spec.grid_values() is None:
                    raise ValueError(f"search.parameters.{name}: sampler grid needs choices or a step for a float "
                                     "range")
        if self.sampler == "cmaes":
            for name, spec in self.parameters.items():
                if spec.kind == "categorical":
                    raise ValueError(f"search.parameters.{name}: sampler cmaes searches numeric ranges only; use tpe "
                                     "for choices")
        return self

    def grid(self) -> dict[str, list]:
        return {name: spec.grid_values() for name, spec in self.parameters.items()}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def trial_budget(self) -> int:
        return self.trials or (self.grid_size() if self.sampler == "grid" else 20)

    def identity(self) -> dict:
        """What makes two studies the same study (budgets may change between invocations)."""
        budgets = {"trials", "timeout_minutes", "max_total_steps", "keep_checkpoints", "export_trials",
                   "heartbeat_seconds", "reuse_results"}
        return self.model_dump(mode="json", exclude=budgets)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def active(spec: ParamSpec, chosen: dict[str, Any]) -> bool:
    """Whether a conditional parameter applies, given the values chosen so far in this trial."""
    return all(key in chosen and chosen[key] in _as_list(wanted) for key, wanted in (spec.when or {}).items())


def with_params(base: dict, params: dict[str, Any]) -> dict:
    """The recipe mapping ``base`` with each key path set to its value (a new dict; base is not touched)."""
    import copy

    out = copy.deepcopy(base)
    for path, value in params.items():
        set_key(out, path.split("."), copy.deepcopy(value))
    return out


# --- validation against the recipe -------------------------------------------------------------------------

def check_key(path: str, recipe_model: type[BaseModel]) -> None:
    """Raise RecipeError unless ``path`` names a key of the recipe (``train.learning_rate``)."""
    current: Any = recipe_model
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if part.isdigit():  # an item of a list of sections, e.g. data.sources.0.weight
            continue
        fields = current.model_fields if isinstance(current, type) and issubclass(current, BaseModel) else None
        if fields is None:
            raise RecipeError(f"search.parameters: {path!r} is not a recipe key: {'.'.join(parts[:depth])} has "
                              "no keys below it")
        if part not in fields:
            hint = difflib.get_close_matches(part, list(fields), n=1)
            where = ".".join(parts[:depth]) or "the top level"
            raise RecipeError(f"search.parameters: {path!r} is not a recipe key"
                              + (f" (did you mean '{'.'.join(parts[:depth] + [hint[0]])}'?)" if hint else "")
                              + f"; keys at {where}: {', '.join(fields)}")
        current = _list_item(section_type(fields[part].annotation))


def _list_item(annotation: Any) -> Any:
    if typing.get_origin(annotation) is list:
        return section_type(typing.get_args(annotation)[0])
    return annotation


def check_against_recipe(search: SearchSection, base: dict, recipe_model: type[BaseModel], where: str) -> None:
    """Every key exists, and the base recipe stays valid at every extreme value of every parameter."""
    for path in search.parameters:
        if path.split(".")[0] in ("name", "output_dir"):
            raise RecipeError(f"search.parameters: {path} cannot be searched (the study names its trials' runs)")
        check_key(path, recipe_model)
    for path, spec in search.parameters.items():
        # The conditions hold, so the value is used together with the values that enable it.
        enabling = {key: _as_list(wanted)[0] for key, wanted in (spec.when or {}).items()}
        for value in spec.extremes():
            try:
                recipe_model.model_validate(with_params(base, {**enabling, path: value}))
            except ValidationError as exc:
                detail = format_validation_error(exc, recipe_model, "the recipe").split(":\n", 1)[-1].strip()
                raise RecipeError(f"{where}: search.parameters.{path}: the value {value!r} makes the recipe invalid:\n"
                                  f"{detail}") from None


def split_search(path, overrides: list[str] | None = None) -> tuple[dict, dict]:
    """Read a recipe file with a search section, apply overrides (which may target search.* too), and
    return (recipe mapping without search, search mapping)."""
    data = apply_overrides(read_yaml(path), list(overrides or []))
    search = data.pop("search", None)
    if search is None:
        raise RecipeError(f"{path}: no search: section; `tuneforge tune` needs one (see docs/tuning.md), "
                          "`tuneforge run` trains a recipe once")
    if not isinstance(search, dict):
        raise RecipeError(f"{path}: search must be a section (a mapping of keys), got {search!r}")
    return data, search
