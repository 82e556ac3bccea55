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


def open_storage(url: str, heartbeat_seconds: int | None = None):
    """Optuna's RDB storage. With ``heartbeat_seconds``, running trials record a heartbeat that often, and a
    trial silent for 3 heartbeats counts as dead (its machine died): how workers on other machines notice."""
    import optuna

    # Several local processes write to one SQLite file: wait for its lock instead of failing at once.
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    beat = {} if heartbeat_seconds is None else {
        "heartbeat_interval": heartbeat_seconds, "grace_period": 3 * heartbeat_seconds,
        "heartbeat_stale_trial_callback": _run_again}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **beat)


def make_sampler(search: SearchSection, seed: int, worker: int = 0):
    import optuna

    if search.sampler == "grid":
        # One seed for every worker: the seed orders the grid, and a grid point is known by its position.
        return _grid_sampler(search.grid(), seed=seed)
    # Each worker draws from its own stream: with one seed, parallel random/TPE workers would propose the
    # same points at the same time.
    seed = seed + 1000 * worker
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials)
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=search.startup_trials)


def _grid_sampler(grid: dict, seed: int):
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler, minus its ``study.stop()`` after the last point: that only works inside
        ``study.optimize``, and our workers decide themselves when the grid is covered (``budget_spent``)."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return GridSampler(grid, seed=seed)


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
    import warnings

    # Heartbeats are an "experimental" Optuna feature documented for Study.optimize; our ask/tell loop
    # records them itself (``heartbeat``), which is what optimize does too.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*heartbeat_interval.*", category=optuna.exceptions.ExperimentalWarning)
    storage = open_storage(url, search.heartbeat_seconds)
    return optuna.create_study(study_name=name, storage=storage, direction=direction,
                               sampler=make_sampler(search, seed, worker), pruner=make_pruner(search),
                               load_if_exists=True) if create else \
        optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(search, seed, worker),
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
    """Fail RUNNING trials that will never finish and queue their parameters again, so a resumed study re-runs
    the interrupted point and keeps every finished one: at once for a trial whose process on this machine is
    gone (SIGKILL, out of memory, reboot), after 3 missed heartbeats for a trial of another machine.
    Returns the numbers of the recovered trials."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    host, recovered = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or pid == os.getpid() or _alive(pid):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "error", f"its process ({pid}) died before it finished")
        if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
            _run_again(study, t, why=f"process {pid} died")
            recovered.append(t.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeats (calls _run_again for each)
    recovered += sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before
                        - set(recovered))
    return recovered


def _run_again(study, trial, why: str = "no heartbeat for 3 intervals (its machine or process died)") -> None:
    """Queue a dead trial's parameters as a new trial (which takes them before the sampler proposes any).
    Also Optuna's callback for trials failed by missing heartbeats (a failed trial takes no more attributes,
    so the reason goes on the retry)."""
    if trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retry_reason": why},
                            skip_if_exists=False)


@contextlib.contextmanager
def heartbeat(study, trial, seconds: int):
    """Record ``trial``'s heartbeat every ``seconds`` while the block runs (a daemon thread)."""
    import threading

    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            study._storage.record_heartbeat(trial._trial_id)
            stop.wait(seconds)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=seconds + 5)


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


def same_as_complete(study, trial):
    """The complete trial with exactly ``trial``'s parameters, or None."""
    from optuna.trial import TrialState

    point = _point(trial.params)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and _point(t.params) == point and "same_as" not in t.user_attrs:
            return t
    return None


def is_duplicate(study, trial) -> bool:
    """A grid point another worker already covers. Only reachable with workers on several machines (local
    workers take points under ``study_lock``); the later trial gives way."""
    point = _point(trial.params)
    for t in counted_trials(study):
        if t.number != trial.number and t.params and _point(t.params) == point and (
                t.state.is_finished() or t.number < trial.number):
            return True
    return False
