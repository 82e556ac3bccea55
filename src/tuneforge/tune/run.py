"""``tune(spec) -> TuneResult``: a hyperparameter study over a recipe, and retraining its best configuration.

The tuner only edits recipes and calls the same ``train(recipe)`` as ``tuneforge run``: a trial is the
base recipe with the trial's values set, run in ``runs/<study>/trials/trial-NNNN``. The study itself
lives in ``runs/<study>/``: ``study.db`` (Optuna's SQLite storage, unless ``--storage`` names a
database), ``data/`` (the splits, prepared once and shared by every trial so trials differ only in
what the search varies), ``study.md`` and its plots.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneforge.atomic import staged_dir
from tuneforge.config_io import format_validation_error, load_config
from tuneforge.errors import RecipeError, TuneforgeError
from tuneforge.recipe import Recipe, resolved_dict
from tuneforge.sections import Section
from tuneforge.tune.space import SearchSection, check_against_recipe, split_search, with_params

#: Parameters under these keys change the prepared data, so each trial then prepares its own.
_DATA_KEYS = ("data", "seed", "task")


class _SearchOnly(Section):
    search: SearchSection


@dataclass
class TuneSpec:
    """A validated study: the base recipe (as a mapping and validated) and its search section."""

    source: str
    base: dict
    recipe: Recipe
    search: SearchSection
    metric: str
    direction: str  # maximize | minimize

    @property
    def study_dir(self) -> Path:
        return self.recipe.run_dir

    def identity(self) -> str:
        """Changes when the study would search something else (not when only budgets change)."""
        data = {"recipe": resolved_dict(self.recipe), "search": self.search.identity()}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TuneResult:
    study_dir: Path
    report: Path
    best_number: int | None
    best_value: float | None
    best_params: dict
    counts: dict  # state -> trials
    total_steps: int
    stopped: list[str] = field(default_factory=list)  # why each worker stopped
    retrained: Any = None  # TrainResult of --retrain-best


def load_tune(path: str | Path, overrides: list[str] | None = None) -> TuneSpec:
    """Read and check a recipe with a search section; every problem is reported before any trial runs."""
    base, search_raw = split_search(path, overrides)
    try:
        search = _SearchOnly.model_validate({"search": search_raw}).search
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, _SearchOnly, str(path))) from None
    if search.metric is not None:
        # The trials' best checkpoints are chosen on the metric the study optimises.
        base = with_params(base, {"train.metric_for_best": search.metric})
    recipe = load_config(Recipe, None, base=base)
    check_against_recipe(search, base, Recipe, str(path))
    metric = recipe.train.metric_for_best
    from tuneforge.tasks import spec_for

    direction = "maximize" if spec_for(recipe).selectable[metric] == "max" else "minimize"
    return TuneSpec(str(path), base, recipe, search, metric, direction)


def tune(spec: TuneSpec, *, workers: int = 1, storage: str | None = None, overwrite: bool = False,
         retrain_best: bool = False, say=print) -> TuneResult:
    """Run (or resume) the study until its budget is spent, write study.md, optionally retrain the best."""
    import optuna

    from tuneforge.tune.study import load_study, storage_url
    from tuneforge.tune.worker import WorkerJob, run_worker

    if workers < 1:
        raise TuneforgeError(f"--workers must be at least 1, got {workers}")
    study_dir, name = spec.study_dir, spec.recipe.name
    url = storage_url(study_dir, storage)
    if overwrite:
        shutil.rmtree(study_dir, ignore_errors=True)  # the default SQLite storage lives in it
        if storage is not None:
            from tuneforge.tune.study import open_storage

            with contextlib.suppress(KeyError):  # no such study in that database yet
                optuna.delete_study(study_name=name, storage=open_storage(url))
    study_dir.mkdir(parents=True, exist_ok=True)
    study = load_study(name, url, spec.search, _seed(spec), spec.direction, create=True)
    _check_same_study(study, spec)
    prepared = _shared_data(spec)
    job = WorkerJob(study_name=name, study_dir=str(study_dir), storage=url, base=spec.base,
                    search=spec.search.model_dump(mode="json"), seed=_seed(spec), direction=spec.direction,
                    metric=spec.metric, prepared=str(prepared) if prepared else None)
    done = len([t for t in study.trials if t.state.is_finished()])
    say(f"study {name}: {spec.search.sampler} sampler, {spec.search.pruner} pruner, {spec.direction} "
        f"{spec.metric}; {done} trials already finished; storage {url}")
    stopped = [run_worker(job)] if workers == 1 else _run_workers(job, workers)
    result = write_report(spec, url)
    if retrain_best:
        result.retrained = retrain(spec, url, say=say)
        result.report = write_report(spec, url).report
    result.stopped = stopped
    return result


def _seed(spec: TuneSpec) -> int:
    return spec.search.seed if spec.search.seed is not None else spec.recipe.seed


def _check_same_study(study, spec: TuneSpec) -> None:
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", spec.identity())
        study.set_user_attr("recipe", spec.source)
    elif stored != spec.identity():
        raise TuneforgeError(f"study {spec.recipe.name} in {spec.study_dir} was started from a different recipe or "
                             "search section; resume it with the recipe it was started with, start over with "
                             "--overwrite, or give the study a new name (name=...)")


def _shared_data(spec: TuneSpec) -> Path | None:
    """Prepare the splits once for every trial (kept across resumes, so resumed trials see the same rows)."""
    if any(path.split(".")[0] in _DATA_KEYS for path in spec.search.parameters):
        return None
    from tuneforge.data.prepare import PREPARED_FILE, prepare_task_data
    from tuneforge.tasks import spec_for

    out = spec.study_dir / "data"
    if not (out / PREPARED_FILE).exists():
        prepare_task_data(spec.recipe.data, spec.recipe.seed, out, spec_for(spec.recipe))
    return out


def _run_workers(job, workers: int) -> list[str]:
    """N worker processes on this machine, sharing the storage; the cores are split between them."""
    from dataclasses import replace

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(replace(job, worker=i, threads=threads), queue))
             for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    reports = [queue.get() for _ in range(queue.qsize())] if not queue.empty() else []
    errors = [text for kind, text in reports if kind == "error"]
    if errors or any(p.exitcode for p in procs):
        raise TuneforgeError("a worker stopped with an error: " + ("; ".join(errors) or
                                                                    f"exit codes {[p.exitcode for p in procs]}"))
    return [text for kind, text in reports if kind == "stopped"]


def _worker_main(job, queue) -> None:
    from tuneforge.tune.worker import run_worker

    try:
        queue.put(("stopped", run_worker(job)))
    except TuneforgeError as exc:
        queue.put(("error", str(exc)))


def write_report(spec: TuneSpec, url: str) -> TuneResult:
    from optuna.trial import TrialState

    from tuneforge.tune.report import write_study_report
    from tuneforge.tune.study import load_study, steps_used

    study = load_study(spec.recipe.name, url, spec.search, _seed(spec), spec.direction)
    s = spec.search
    settings = {"recipe": spec.source, "sampler": s.sampler, "pruner": s.pruner, "metric": spec.metric,
                "direction": spec.direction, "trials (budget)": s.trial_budget(),
                "timeout_minutes": s.timeout_minutes, "max_total_steps": s.max_total_steps, "seed": _seed(spec)}
    if s.sampler == "grid":
        settings["grid points"] = s.grid_size()
    retrained = spec.study_dir / "best" / "result.json"
    if retrained.exists():
        test = json.loads(retrained.read_text())["metrics"]
        settings["retrained best, test " + spec.metric] = test.get(spec.metric)
    write_study_report(study, spec.study_dir, metric=spec.metric, direction=spec.direction,
                       title=f"Study {spec.recipe.name}", settings=settings)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state and "skipped" not in t.user_attrs for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return TuneResult(study_dir=spec.study_dir, report=spec.study_dir / "study.md",
                      best_number=best.number if best else None, best_value=best.value if best else None,
                      best_params=_decoded(spec, best.params) if best else {}, counts=counts,
                      total_steps=steps_used(study))


def _decoded(spec: TuneSpec, params: dict) -> dict:
    return {k: spec.search.parameters[k].decode(v) for k, v in params.items()}


def retrain(spec: TuneSpec, url: str, say=print):
    """Train the best trial's configuration on train + validation, and evaluate it once on the test split.

    Nothing is selected on the test split: the run evaluates only after its last step (the best trial's
    schedule, now over more rows), so the test figure is an honest estimate of the tuned recipe.
    """
    from tuneforge.data.prepare import load_prepared, write_prepared
    from tuneforge.train.fit import schedule_steps
    from tuneforge.train.run import train
    from tuneforge.tune.study import load_study

    study = load_study(spec.recipe.name, url, spec.search, _seed(spec), spec.direction)
    try:
        best = study.best_trial
    except ValueError:
        raise TuneforgeError(f"--retrain-best: study {spec.recipe.name} has no complete trial yet") from None
    params = _decoded(spec, best.params)
    source = _shared_data(spec) or Path(best.user_attrs["run_dir"]) / "data"
    data = load_prepared(source)
    if not data.records["test"]:
        raise TuneforgeError("--retrain-best evaluates on the test split, and this recipe has none: set "
                             "data.test_file or data.split.test_fraction")
    out = spec.study_dir / "retrain-data"
    splits = {"train": data.records["train"] + data.records["validation"], "validation": data.records["test"],
              "test": []}
    with staged_dir(out) as stage:  # swapped in whole: never a mix of two retrains' splits
        write_prepared(stage, splits, like=source,
                       validation_source="the test split (retraining on train + validation)")

    recipe = Recipe.model_validate(with_params(spec.base, params))
    _, total = schedule_steps(len(splits["train"]), recipe.train)
    # max_steps pins the schedule to `total` even where encoding makes more examples than rows (QA windows,
    # packing), so the one evaluation really is after the last step.
    recipe = Recipe.model_validate(with_params(spec.base, {
        **params, "name": "best", "output_dir": str(spec.study_dir), "train.max_steps": total,
        "train.eval_every_steps": total, "train.early_stopping_patience": None}))
    say(f"retraining trial {best.number}'s configuration on {len(splits['train']):,} train + validation rows, "
        f"{total} steps; evaluating on {len(splits['validation']):,} test rows")
    result = train(recipe, overwrite=True, prepared=out)
    say(f"retrained best: test {spec.metric} {result.metrics.get(spec.metric)} (validation {spec.metric} of trial "
        f"{best.number}: {best.value})")
    return result
