"""Chained stages in one recipe: pretrain -> adapt (domain) -> finetune, or any subset, in order.

A stages recipe names the stages to run and gives each its own recipe section (everything a single
recipe has but ``name``, ``seed`` and ``output_dir``, which the stages share)::

    name: sst2-dapt
    stages: [adapt, finetune]
    compare_without: [adapt]       # also fine-tune without the adaptation stage, in the same report
    adapt:    {task: masked_lm, model: {name: minilm-l6}, data: ..., train: ...}
    finetune: {task: classification, data: ..., train: ...}

Each stage after the first starts from the model the stage before it exported (weights and
tokenizer): its own ``model.name`` is not used then (so the same file runs any subset), and the
report says where each stage's model came from. ``compare_without: [X]`` runs the stages after X a
second time from the model X started from, so the report shows what X added. Every stage is an
ordinary run (``runs/<name>/<stage>/``) through the same ``train(recipe)``; a stage whose run
directory already holds a finished run of the same recipe is reused, so a pipeline interrupted in
its last stage does not redo the first ones.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from tuneforge.errors import RecipeError, TuneforgeError
from tuneforge.sections import Section

StageName = Literal["pretrain", "adapt", "finetune"]
ORDER: tuple[str, ...] = ("pretrain", "adapt", "finetune")


class StagesRecipe(Section):
    """A recipe of chained stages (see the module docstring)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Pipeline name: runs/<name>/.")
    seed: int = Field(42, description="Seed shared by every stage.")
    output_dir: Path = Field(Path("runs"), description="Parent folder: stages run in <output_dir>/<name>/<stage>.")
    stages: list[StageName] = Field(..., min_length=1, description="Stages to run, in the order pretrain, adapt, "
                                                                   "finetune (any subset).")
    compare_without: list[StageName] = Field(
        default_factory=list, description="Stages to leave out in a second pass of the stages after them, for a "
        "with/without comparison in the report (e.g. [adapt]).")
    pretrain: dict[str, Any] | None = Field(None, description="Recipe of the pretrain stage (usually "
                                                               "model.architecture: a model from scratch).")
    adapt: dict[str, Any] | None = Field(None, description="Recipe of the adapt stage (continued pretraining on "
                                                            "a domain corpus).")
    finetune: dict[str, Any] | None = Field(None, description="Recipe of the finetune stage (a task head).")

    @model_validator(mode="after")
    def _check(self) -> "StagesRecipe":
        if len(set(self.stages)) != len(self.stages) or self.stages != sorted(self.stages, key=ORDER.index):
            raise ValueError(f"stages {self.stages}: each at most once, in the order {', '.join(ORDER)}")
        for stage in self.stages:
            if getattr(self, stage) is None:
                raise ValueError(f"stages lists {stage}, but there is no '{stage}:' section")
        for stage in self.compare_without:
            if stage not in self.stages or stage == self.stages[-1]:
                raise ValueError(f"compare_without: {stage} must be one of the stages before the last "
                                 f"({', '.join(self.stages[:-1]) or 'none'})")
        return self


@dataclass
class StageRun:
    stage: str
    label: str  # "finetune" or "finetune without adapt"
    recipe: Any
    model_from: str
    result: Any = None
    seconds: float = 0.0
    reused: bool = False


@dataclass
class StagesResult:
    run_dir: Path
    runs: list[StageRun] = field(default_factory=list)
    report: Path | None = None


def load_stages(path: str | Path, overrides: list[str] | None = None, *, parsed: dict | None = None) -> StagesRecipe:
    from tuneforge.config_io import load_config

    return load_config(StagesRecipe, path, overrides, parsed=parsed)


def plan(cfg: StagesRecipe) -> list[StageRun]:
    """Every stage run, validated, in execution order (the comparison runs last). Raises RecipeError."""
    runs: list[StageRun] = []
    runs += _chain(cfg, list(cfg.stages), suffix="")
    for left_out in cfg.compare_without:
        after = cfg.stages[cfg.stages.index(left_out) + 1:]
        before = cfg.stages[:cfg.stages.index(left_out)]
        # the stages after the left-out one start where it started: the stage before it, or its own model
        start = None if before else _stage_dict(cfg, left_out).get("model", {}).get("name")
        runs += _chain(cfg, after, suffix=f"-without-{left_out}", previous=before[-1] if before else None,
                       first_model=start, label=f" without {left_out}")
    return runs


def run_stages(cfg: StagesRecipe, *, overwrite: bool = False, say=print) -> StagesResult:
    """Run every planned stage through ``train``, then write <output_dir>/<name>/report.md and .json."""
    from tuneforge.recipe import recipe_to_yaml
    from tuneforge.train.run import train

    runs = plan(cfg)
    out = cfg.output_dir / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        say(f"== stage {run.label}: task {run.recipe.task}, model from {run.model_from} -> {run.recipe.run_dir}")
        reused = _finished(run.recipe, recipe_to_yaml(run.recipe)) if not overwrite else None
        start = time.perf_counter()
        if reused is not None:
            run.result, run.reused = reused, True
            say(f"   reusing the finished run in {run.recipe.run_dir}")
        else:
            run.result = train(run.recipe, overwrite=True)
        run.seconds = time.perf_counter() - start
        if run.result.halted:
            raise TuneforgeError(f"stage {run.label} halted (train.halt_after_steps); the stages after it need its "
                                 "model. Remove halt_after_steps and run again (finished stages are reused)")
    result = StagesResult(out, runs)
    result.report = write_report(cfg, runs, out)
    return result


def write_report(cfg: StagesRecipe, runs: list[StageRun], out: Path) -> Path:
    """report.md (one table of every stage, then each with/without comparison) and report.json."""
    from tuneforge.tasks import spec_for

    lines = [f"# {cfg.name}: stages {' -> '.join(cfg.stages)}", "",
             "| stage | task | model from | best metric | value | loss | steps | wall time | run |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    records = []
    for run in runs:
        m, metric = run.result.metrics, run.recipe.train.metric_for_best
        lines.append(f"| {run.label} | {run.recipe.task} | {run.model_from} | {metric} | {_fmt(m.get(metric))} | "
                     f"{_fmt(m.get('loss'))} | {run.result.global_step} | {_duration(run.seconds)}"
                     f"{' (reused)' if run.reused else ''} | `{run.recipe.run_dir}` |")
        records.append({"stage": run.stage, "label": run.label, "task": run.recipe.task, "model_from": run.model_from,
                        "run_dir": str(run.recipe.run_dir), "seconds": round(run.seconds, 1), "reused": run.reused,
                        "metrics": {k: v for k, v in m.items() if isinstance(v, (int, float))}})
    for left_out in cfg.compare_without:
        pairs = [(a, b) for a in runs for b in runs if b.label == f"{a.stage} without {left_out}" and a.label == a.stage]
        for with_, without in pairs:
            keys = [k for k in spec_for(with_.recipe).selectable if k in with_.result.metrics]
            lines += ["", f"## {with_.stage}: with and without {left_out}", "",
                      f"| metric | with {left_out} | without {left_out} |", "|---|---:|---:|"]
            lines += [f"| {k} | {_fmt(with_.result.metrics.get(k))} | {_fmt(without.result.metrics.get(k))} |"
                      for k in keys]
    (out / "report.json").write_text(json.dumps({"name": cfg.name, "stages": cfg.stages, "runs": records},
                                                indent=2) + "\n")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------ internals


def _stage_dict(cfg: StagesRecipe, stage: str) -> dict:
    return dict(getattr(cfg, stage) or {})


def _chain(cfg: StagesRecipe, stages: list[str], *, suffix: str, previous: str | None = None,
           first_model: str | None = None, label: str = "") -> list[StageRun]:
    from tuneforge.config_io import format_validation_error
    from tuneforge.recipe import Recipe

    runs = []
    for stage in stages:
        data = _stage_dict(cfg, stage)
        clash = sorted({"name", "seed", "output_dir"} & set(data))
        if clash:
            raise RecipeError(f"{stage}.{clash[0]}: set at the top of a stages recipe (shared by every stage)")
        data.update(name=stage + suffix, seed=cfg.seed, output_dir=str(cfg.output_dir / cfg.name))
        model = dict(data.get("model") or {})
        if previous is not None:
            if "architecture" in model:
                raise RecipeError(f"{stage}.model.architecture: stage {stage} starts from the model of stage "
                                  f"{previous}; only the first stage can build a model from scratch")
            model.pop("tokenizer", None)
            model["name"] = str(cfg.output_dir / cfg.name / (previous + (suffix if previous in stages else ""))
                                / "export")
            model_from = f"{previous}{suffix if previous in stages else ''} (export)"
        elif first_model is not None:
            model["name"] = first_model
            model_from = first_model
        else:
            model_from = model.get("name") or ("scratch" if "architecture" in model else "minilm-l6")
        data["model"] = model
        data.setdefault("export", {})
        if stage != stages[-1] and data["export"].get("enabled") is False:
            raise RecipeError(f"{stage}.export.enabled: false, but the next stage starts from this stage's export")
        try:
            recipe = Recipe.model_validate(data)
        except ValidationError as exc:
            # the same messages as a single recipe (unknown keys with the allowed ones), under the stage's key
            raise RecipeError(format_validation_error(exc, Recipe, f"stage '{stage}' (keys under {stage}:)")) from None
        runs.append(StageRun(stage, stage + label, recipe, model_from))
        previous = stage
    return runs


def _finished(recipe, recipe_yaml: str):
    """The TrainResult of a finished run of exactly this recipe in its run directory, else None."""
    from tuneforge.train.run import TrainResult

    run_dir = recipe.run_dir
    try:
        same = (run_dir / "recipe.yaml").read_text() == recipe_yaml
        saved = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if not same or saved.get("halted") or (recipe.export.enabled and not (run_dir / "export").is_dir()):
        return None
    saved["run_dir"] = Path(saved["run_dir"])
    saved["export_dir"] = Path(saved["export_dir"]) if saved.get("export_dir") else None
    return TrainResult(**saved)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
