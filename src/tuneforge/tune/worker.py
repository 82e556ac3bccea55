"""One worker of a study: ask for a trial, turn its parameters into a recipe, ``train()`` it, tell the result.

``--workers N`` runs N of these loops in separate processes (and any number on other machines, given
a shared ``--storage``); they coordinate only through the study's storage. Each trial is an ordinary
run directory, ``<study>/trials/trial-0007``, made by the same ``train(recipe)`` as ``tuneforge run``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import TuneforgeError
from tuneforge.tune.space import SearchSection, active, with_params
from tuneforge.tune.study import (claim, counted_trials, grid_taken, heartbeat, is_duplicate, load_study,
                                  recover_stale, same_as_complete, steps_used, study_lock)

#: A study whose trials fail this many times in a row stops: the recipe, not the parameters, is broken.
MAX_FAILURES_IN_A_ROW = 3


@dataclass
class WorkerJob:
    """Everything a worker process needs (picklable: workers start with the spawn method)."""

    study_name: str
    study_dir: str
    storage: str
    base: dict  # the recipe mapping without search:
    search: dict  # the search section, as given
    seed: int
    direction: str
    metric: str
    prepared: str | None  # prepared data shared by all trials, or None when a parameter changes the data
    worker: int = 0
    threads: int | None = None
    started: float = field(default_factory=time.time)  # budgets count from the start of the invocation
    quiet: bool = False

    @cached_property
    def section(self) -> SearchSection:
        """The validated search section (validated once per worker, not per trial)."""
        return SearchSection.model_validate(self.search)


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def suggest(trial, search: SearchSection) -> dict[str, Any]:
    """Draw the trial's parameters in the order written; returns recipe key -> recipe value (decoded).
    A conditional parameter whose condition fails is not drawn (the base recipe's value stays)."""
    chosen: dict[str, Any] = {}
    for name, spec in search.parameters.items():
        if not active(spec, chosen):
            continue
        if spec.kind == "categorical":
            raw = trial.suggest_categorical(name, spec.encoded_choices())
        elif spec.kind == "int":
            raw = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            raw = trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)
        chosen[name] = spec.decode(raw)
    return chosen


def trial_recipe(job: WorkerJob, number: int, params: dict[str, Any]):
    """The base recipe with the trial's values, running in <study>/trials/trial-NNNN."""
    from tuneforge.recipe import Recipe

    data = with_params(job.base, params)
    data["name"] = trial_name(number)
    data["output_dir"] = str(Path(job.study_dir) / "trials")
    if not job.section.export_trials:
        data.setdefault("export", {})["enabled"] = False
    return Recipe.model_validate(data)


class _Pruned(Exception):
    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def run_trial(job: WorkerJob, trial, params: dict[str, Any], say) -> dict:
    """Train one trial; returns {state, value, steps, error} (state: COMPLETE, PRUNED or FAIL)."""
    from tuneforge.train.run import train

    last = {"step": 0}

    def on_evaluate(step: int, metrics: dict) -> None:
        value = float(metrics[job.metric])
        last["step"] = step
        if math.isfinite(value):
            trial.report(value, step)
        trial.set_user_attr("steps", step)  # running total for the steps budget of the other workers
        if trial.should_prune():
            raise _Pruned(step)

    recipe = None
    try:
        recipe = trial_recipe(job, trial.number, params)
        trial.set_user_attr("run_dir", str(recipe.run_dir))
        result = train(recipe, overwrite=True, prepared=Path(job.prepared) if job.prepared else None,
                       on_evaluate=on_evaluate)
        value = float(result.metrics[job.metric])
        if not math.isfinite(value):
            return {"state": "FAIL", "steps": result.global_step, "error": f"{job.metric} is {value}"}
        return {"state": "COMPLETE", "value": value, "steps": result.global_step}
    except _Pruned as pruned:
        say(f"trial {trial.number}: pruned at step {pruned.step}")
        return {"state": "PRUNED", "steps": pruned.step}
    except TuneforgeError as exc:
        return {"state": "FAIL", "steps": last["step"], "error": str(exc)}
    except Exception as exc:  # a bug or a crash in one trial must not end the study; its traceback is kept
        if recipe is not None:
            recipe.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(recipe.run_dir / "error.txt", traceback.format_exc())
        return {"state": "FAIL", "steps": last["step"], "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if recipe is not None and not job.section.keep_checkpoints:
            shutil.rmtree(recipe.run_dir / "checkpoints", ignore_errors=True)


def budget_spent(study, search: SearchSection, job: WorkerJob) -> str | None:
    """Why no new trial should start, or None."""
    if len(counted_trials(study)) >= search.trial_budget():
        return f"{search.trial_budget()} trials done or running (search.trials)"
    if search.sampler == "grid" and len(grid_taken(study)) >= search.grid_size():
        return f"all {search.grid_size()} grid points done or running"
    if search.timeout_minutes is not None and time.time() - job.started >= 60 * search.timeout_minutes:
        return f"time budget of {search.timeout_minutes:g} min used (search.timeout_minutes)"
    if search.max_total_steps is not None:
        used = steps_used(study)
        if used >= search.max_total_steps:
            return f"{used:,} training steps used of {search.max_total_steps:,} (search.max_total_steps)"
    return None


def run_worker(job: WorkerJob) -> str:
    """The worker loop; returns why it stopped."""
    from optuna.trial import TrialState

    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    say = (lambda *a: None) if job.quiet else _say(job.worker)
    search = job.section
    study = load_study(job.study_name, job.storage, search, job.seed, job.direction, worker=job.worker)
    failures = 0
    while True:
        with study_lock(Path(job.study_dir)):
            for number in recover_stale(study):
                say(f"trial {number} was interrupted (its process died); it runs again")
            why = budget_spent(study, search, job)
            if why:
                say(f"stopping: {why}")
                return why
            trial = study.ask()
            claim(trial, job.worker)
            params = suggest(trial, search)
            if search.sampler == "grid" and is_duplicate(study, trial):
                trial.set_user_attr("skipped", "duplicate grid point (another worker has it)")
                study.tell(trial, state=TrialState.FAIL)
                continue
            earlier = same_as_complete(study, trial) if search.reuse_results else None
            if earlier is not None:
                # The sampler re-proposed a finished point: the same recipe and seed would train the same
                # model, so the study records that result again (it tells the sampler the point is known).
                for key, value in (("same_as", earlier.number), ("steps", 0), ("seconds", 0.0)):
                    trial.set_user_attr(key, value)
                study.tell(trial, earlier.value)
                say(f"trial {trial.number}: same parameters as trial {earlier.number}: {job.metric} "
                    f"{earlier.value:.4f} reused, not trained again")
                continue
        say(f"trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
        start = time.perf_counter()
        with heartbeat(study, trial, search.heartbeat_seconds):
            outcome = run_trial(job, trial, params, say)
        trial.set_user_attr("steps", int(outcome["steps"]))
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        if outcome.get("error"):
            trial.set_user_attr("error", outcome["error"][:2000])
        state = getattr(TrialState, outcome["state"])
        study.tell(trial, outcome.get("value"), state=state) if state == TrialState.COMPLETE else \
            study.tell(trial, state=state)
        if state == TrialState.COMPLETE:
            say(f"trial {trial.number}: {job.metric} {outcome['value']:.4f} after {outcome['steps']} steps")
        failures = failures + 1 if state == TrialState.FAIL else 0
        if state == TrialState.FAIL:
            say(f"trial {trial.number} failed: {outcome['error'].splitlines()[0]}")
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise TuneforgeError(f"study {job.study_name}: {failures} trials in a row failed; the last: "
                                     f"{outcome['error']}")


def _say(worker: int):
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    return lambda text: console.print(f"[tune{f' w{worker}' if worker else ''}] {text}", markup=False)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value) if not isinstance(value, str) else value
