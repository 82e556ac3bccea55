"""The Optuna side of a study: storage, sampler, pruner, and the bookkeeping workers share through storage.

Everything a worker must agree on with the others lives in the storage (SQLite file in the study
directory by default, any SQLAlchemy URL for several machines), never in memory: which trials exist,
which grid points are taken, how many steps have been trained. That is what makes a killed study
resumable and lets N processes share one study.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

from tuneforge.tune.space import SearchSection

STUDY_DB = "study.db"
#: Trials that count towards the budget; FAIL trials (killed or crashed) free their slot.
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")


def storage_url(study_dir: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(Path(study_dir) / STUDY_DB).resolve()}"


def open_storage(url: str):
    import optuna

    # Several local processes write to one SQLite file: wait for its lock instead of failing at once.
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def make_sampler(search: SearchSection, seed: int, worker: int = 0):
    import optuna

    if search.sampler == "grid":
        # One seed for every worker: the seed orders the grid, and a grid point is known by its position.
        return _GridSampler(search.grid(), seed=seed)
    # Each worker draws from its own stream: with one seed, parallel random/TPE workers would propose the
    # same points at the same time.
    seed = seed + 1000 * worker
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials)
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=search.startup_trials)


def _grid_sampler_class():
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler, minus its ``study.stop()`` after the last point: that only works inside
        ``study.optimize``, and our workers decide themselves when the grid is covered (``budget_spent``)."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return GridSampler


def _GridSampler(grid: dict, seed: int):
    return _grid_sampler_class()(grid, seed=seed)


def make_pruner(search: SearchSection):
    import optuna

    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=search.warmup_steps)
    if search.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.min_resource,
                                                      reduction_factor=search.reduction_factor)
    return optuna.pruners.HyperbandPruner(min_resource=1 if search.min_resource == "auto" else search.min_resource,
                                          reduction_factor=search.reduction_factor)


def load_study(name: str, url: str, search: SearchSection, seed: int, direction: str, *, worker: int = 0,
               create: bool = False):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=open_storage(url), direction=direction,
                               sampler=make_sampler(search, seed, worker), pruner=make_pruner(search),
                               load_if_exists=True) if create else \
        optuna.load_study(study_name=name, storage=open_storage(url), sampler=make_sampler(search, seed, worker),
                          pruner=make_pruner(search))


@contextlib.contextmanager
def study_lock(study_dir: Path):
    """One worker at a time on this machine between "is there budget left" and "this trial's parameters are
    recorded": without it two workers can take the same grid point or overshoot the trial budget."""
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(study_dir) / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def claim(trial, worker: int) -> None:
    """Record who runs ``trial``, so a later invocation can tell a live trial from one whose process died."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("worker", worker)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale(study) -> list[int]:
    """Fail RUNNING trials whose process on this machine is gone (SIGKILL, power loss...) and queue their
    parameters again, so a resumed study re-runs the interrupted point and keeps every finished one.
    Returns the numbers of the recovered trials."""
    from optuna.trial import TrialState

    host, recovered = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or pid == os.getpid() or _alive(pid):
            continue
        storage = study._storage
        storage.set_trial_user_attr(t._trial_id, "error", f"its process ({pid}) died before it finished")
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        recovered.append(t.number)
    return recovered


def counted_trials(study) -> list:
    from optuna.trial import TrialState

    states = tuple(getattr(TrialState, s) for s in COUNTED)
    return [t for t in study.get_trials(deepcopy=False, states=states) if "skipped" not in t.user_attrs]


def steps_used(study) -> int:
    """Optimizer steps trained so far by every trial (running ones up to their last evaluation)."""
    total = 0
    for t in study.get_trials(deepcopy=False):
        steps = t.user_attrs.get("steps")
        if steps is None and t.intermediate_values:
            steps = max(t.intermediate_values)
        total += int(steps or 0)
    return total


def grid_taken(study) -> set:
    """Grid points that a finished or running trial covers (as sorted param tuples)."""
    return {_point(t.params) for t in counted_trials(study) if t.params}


def _point(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def is_duplicate(study, trial, params: dict) -> bool:
    """A grid point another worker already covers. Only reachable with workers on several machines (local
    workers take points under ``study_lock``); the later trial gives way."""
    point = _point(params)
    for t in counted_trials(study):
        if t.number != trial.number and t.params and _point(t.params) == point and (
                t.state.is_finished() or t.number < trial.number):
            return True
    return False
