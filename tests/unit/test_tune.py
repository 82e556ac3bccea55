"""`tuneforge tune`: every sampler and pruner on a tiny model, resumption after SIGKILL, parallel workers
sharing one storage, retraining the best configuration, and the messages for a bad search section."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tuneforge.errors import RecipeError, TuneforgeError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tune_recipe(tmp_path, tiny_model_dir, toy_data):
    """Write a tiny-model recipe with the given search section; returns its path."""
    train_file, dev_file = toy_data

    def build(search: dict, name: str = "study", **train) -> Path:
        recipe = {
            "name": name, "seed": 7, "output_dir": str(tmp_path / "runs"),
            "model": {"name": str(tiny_model_dir), "max_length": 32},
            "data": {"train_file": str(train_file), "validation_file": str(dev_file), "test_file": str(dev_file),
                     "text_column": "sentence", "label_column": "label", "label_names": ["negative", "positive"],
                     "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}},
            "method": "full",
            # 6 steps per epoch; at 3e-3 the tiny model separates the toy data within a few epochs,
            # at 1e-7 it does not move: the contrast the pruners must see.
            "train": {"epochs": 4, "batch_size": 16, "learning_rate": 3e-3, "eval_every_steps": 3,
                      "log_every_steps": 6, "precision": "fp32", "warmup_ratio": 0.0, "scheduler": "constant",
                      **train},
            "search": search,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return build


def _run(path: Path, **kwargs):
    from tuneforge.tune.run import load_tune, tune

    spec = load_tune(path)
    return spec, tune(spec, say=lambda *a: None, **kwargs)


def _trials(study_dir: Path) -> list[dict]:
    return json.loads((study_dir / "study.json").read_text())["trials"]


# --- samplers ------------------------------------------------------------------------------------------------

def test_grid_runs_every_point_once_and_reports(tune_recipe, one_thread):
    path = tune_recipe({"sampler": "grid", "parameters": {
        "train.learning_rate": {"choices": [3e-3, 1e-7]}, "train.epochs": {"choices": [1, 2]}}})
    spec, result = _run(path)
    trials = _trials(result.study_dir)
    points = sorted((t["params"]["train.learning_rate"], t["params"]["train.epochs"]) for t in trials)
    assert points == [(1e-7, 1), (1e-7, 2), (3e-3, 1), (3e-3, 2)]
    assert all(t["state"] == "COMPLETE" for t in trials)
    # steps per trial follow the epochs each one was given: 6 steps per epoch
    assert sorted(t["user_attrs"]["steps"] for t in trials) == [6, 6, 12, 12]
    assert result.total_steps == 36
    # the best trial is the one with the highest validation accuracy, as every trial's result.json says
    values = {t["number"]: json.loads((Path(t["user_attrs"]["run_dir"]) / "result.json").read_text())
              ["metrics"]["accuracy"] for t in trials}
    assert result.best_value == max(values.values())
    assert values[result.best_number] == result.best_value
    # each trial is an ordinary run directory with its own recipe holding the trial's values
    run_dir = Path(trials[0]["user_attrs"]["run_dir"])
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert recipe["train"]["learning_rate"] == trials[0]["params"]["train.learning_rate"]
    assert run_dir.parent == result.study_dir / "trials" and not (run_dir / "checkpoints").exists()
    md = (result.study_dir / "study.md").read_text()
    assert f"Trial **#{result.best_number}**" in md
    for png in ("optimization_history.png", "parallel_coordinate.png", "intermediate_values.png"):
        assert (result.study_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("sampler", ["random", "tpe", "cmaes"])
def test_samplers_stay_in_range_and_respect_the_budget(sampler, tune_recipe, one_thread):
    params = {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
              "train.batch_size": {"low": 8, "high": 32, "step": 8}}
    path = tune_recipe({"sampler": sampler, "trials": 3, "startup_trials": 1, "parameters": params},
                       epochs=1)
    _, result = _run(path)
    trials = _trials(result.study_dir)
    assert len(trials) == 3 and all(t["state"] == "COMPLETE" for t in trials)
    for t in trials:
        assert 1e-4 <= t["params"]["train.learning_rate"] <= 1e-2
        assert t["params"]["train.batch_size"] in (8, 16, 24, 32)
        recipe = yaml.safe_load((Path(t["user_attrs"]["run_dir"]) / "recipe.yaml").read_text())
        assert recipe["train"]["batch_size"] == t["params"]["train.batch_size"]
    assert len({t["params"]["train.learning_rate"] for t in trials}) == 3


def test_conditional_parameter_only_when_its_condition_holds(tune_recipe, one_thread):
    path = tune_recipe({"sampler": "random", "trials": 6, "parameters": {
        "method": {"choices": ["full", "lora"]},
        "lora.r": {"choices": [2, 4], "when": {"method": "lora"}},
        "lora.target_modules": {"choices": [["query"], ["query", "value"]], "when": {"method": "lora"}}}},
        epochs=1)
    _, result = _run(path)
    trials = _trials(result.study_dir)
    assert {t["params"]["method"] for t in trials} == {"full", "lora"}
    for t in trials:
        if "same_as" in t["user_attrs"]:  # a re-proposed point: not trained again
            continue
        recipe = yaml.safe_load((Path(t["user_attrs"]["run_dir"]) / "recipe.yaml").read_text())
        if t["params"]["method"] == "lora":
            assert recipe["lora"]["r"] == t["params"]["lora.r"]
            assert recipe["lora"]["target_modules"] == json.loads(t["params"]["lora.target_modules"])
        else:
            assert "lora.r" not in t["params"] and "lora" not in recipe


def test_a_re_proposed_point_reuses_the_complete_result(tune_recipe, one_thread):
    # 5 draws from 2 values: the sampler must propose a finished point again.
    path = tune_recipe({"sampler": "random", "trials": 5, "parameters": {
        "train.learning_rate": {"choices": [3e-3, 1e-2]}}}, epochs=1)
    _, result = _run(path)
    trials = _trials(result.study_dir)
    trained = [t for t in trials if "same_as" not in t["user_attrs"]]
    reused = [t for t in trials if "same_as" in t["user_attrs"]]
    assert len(trials) == 5 and len(trained) == 2 and len(reused) == 3
    by_number = {t["number"]: t for t in trials}
    for t in reused:
        first = by_number[t["user_attrs"]["same_as"]]
        assert t["params"] == first["params"] and t["value"] == first["value"] and t["user_attrs"]["steps"] == 0
    assert result.total_steps == 2 * 6
    assert "its result, not trained again" in (result.study_dir / "study.md").read_text()


def test_step_budget_stops_new_trials(tune_recipe, one_thread):
    path = tune_recipe({"sampler": "random", "trials": 10, "max_total_steps": 20,
                        "parameters": {"train.learning_rate": {"low": 1e-3, "high": 1e-2}}}, epochs=2)
    _, result = _run(path)
    # 12 steps per trial: the second trial crosses 20 steps, so no third one starts
    assert result.counts["COMPLETE"] == 2 and result.total_steps == 24
    assert "search.max_total_steps" in result.stopped[0]


# --- pruners -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pruner", ["median", "asha", "hyperband"])
def test_pruners_stop_trials_that_do_not_learn(pruner, tune_recipe, one_thread):
    # One learning rate that learns and three so high that the loss jumps about; on validation loss
    # (continuous, unlike the toy accuracy) the difference shows from the first evaluations.
    # Hyperband splits trials into brackets that never compete with each other: 2 brackets here, so each
    # holds a couple of the 4 trials.
    rung = {"min_resource": 6, "reduction_factor": 4} if pruner == "hyperband" else \
        {"min_resource": 3, "reduction_factor": 2}
    search = {"sampler": "grid", "pruner": pruner, "metric": "loss", "startup_trials": 1, **rung,
              "parameters": {"train.learning_rate": {"choices": [3e-3, 0.5, 1.0, 2.0]}}}
    path = tune_recipe(search, epochs=4)
    _, result = _run(path)
    trials = _trials(result.study_dir)
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    assert pruned, f"{pruner} pruned nothing: {[(t['params'], t['intermediate_values']) for t in trials]}"
    for t in pruned:
        assert t["params"]["train.learning_rate"] >= 0.5
        assert t["user_attrs"]["steps"] < 24  # stopped before its last step
        assert max(map(int, t["intermediate_values"])) == t["user_attrs"]["steps"]
    good = [t for t in trials if t["params"]["train.learning_rate"] == 3e-3]
    assert good[0]["state"] == "COMPLETE" and result.best_params["train.learning_rate"] == 3e-3
    assert result.total_steps < 4 * 24


# --- parallel workers and resumption -------------------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_share_storage_without_running_a_grid_point_twice(tune_recipe):
    path = tune_recipe({"sampler": "grid", "parameters": {
        "train.learning_rate": {"choices": [1e-3, 3e-3, 1e-2]}, "train.epochs": {"choices": [1, 2]}}})
    _, result = _run(path, workers=2)
    trials = _trials(result.study_dir)
    assert not [t for t in trials if "skipped" in t["user_attrs"]]  # no worker was even offered a taken point
    points = [(t["params"]["train.learning_rate"], t["params"]["train.epochs"]) for t in trials]
    assert len(points) == 6 and len(set(points)) == 6
    assert all(t["state"] == "COMPLETE" for t in trials)
    assert {t["user_attrs"]["worker"] for t in trials} == {0, 1}  # both workers took trials
    assert len(result.stopped) == 2


def _db_trials(db: Path) -> list[tuple]:
    import sqlite3

    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return con.execute("select t.number, t.state, (select count(*) from trial_intermediate_values v "
                               "where v.trial_id = t.trial_id) from trials t order by t.number").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume_keeps_finished_trials(tune_recipe, tmp_path):
    path = tune_recipe({"sampler": "grid", "parameters": {
        "train.learning_rate": {"choices": [1e-3, 3e-3]}, "train.epochs": {"choices": [5, 6]}}})
    study_dir = tmp_path / "runs" / "study"
    cmd = [sys.executable, "-m", "tuneforge.cli", "tune", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    try:
        # Wait for one finished trial and the next one part-way (it has reported an evaluation).
        while time.time() < deadline:
            rows = _db_trials(study_dir / "study.db")
            if any(s == "COMPLETE" for _, s, _ in rows) and any(s == "RUNNING" and n > 0 for _, s, n in rows):
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("the study never reached a trial in progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _db_trials(study_dir / "study.db")
    finished = {n for n, s, _ in before if s == "COMPLETE"}
    killed = [n for n, s, _ in before if s == "RUNNING"]
    assert finished and len(killed) == 1

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"trial {killed[0]} was interrupted" in done.stderr
    trials = {t["number"]: t for t in _trials(study_dir)}
    assert finished <= {n for n, t in trials.items() if t["state"] == "COMPLETE"}  # kept, not re-run
    assert trials[killed[0]]["state"] == "FAIL" and "died" in trials[killed[0]]["user_attrs"]["error"]
    retry = [t for t in trials.values() if t["user_attrs"].get("retry_of") == killed[0]]
    assert len(retry) == 1 and retry[0]["state"] == "COMPLETE"
    assert retry[0]["params"] == trials[killed[0]]["params"]
    complete = [tuple(sorted(t["params"].items())) for t in trials.values() if t["state"] == "COMPLETE"]
    assert len(complete) == 4 and len(set(complete)) == 4  # the whole grid, each point once


def test_a_trial_whose_machine_went_silent_runs_again(tmp_path):
    """Workers on other machines notice a dead one by its missing heartbeats (3 intervals)."""
    from optuna.trial import TrialState

    from tuneforge.tune.space import SearchSection
    from tuneforge.tune.study import heartbeat, load_study, recover_stale, storage_url

    search = SearchSection.model_validate({"sampler": "random", "heartbeat_seconds": 1, "parameters": {
        "train.learning_rate": {"low": 1e-4, "high": 1e-2}}})
    study = load_study("s", storage_url(tmp_path, None), search, 0, "maximize", create=True)
    trial = study.ask()
    value = trial.suggest_float("train.learning_rate", 1e-4, 1e-2)
    trial.set_user_attr("host", "another-machine")  # not this machine: no process to look at
    with heartbeat(study, trial, 1):
        time.sleep(1.5)
        assert recover_stale(study) == []  # alive: heard from within the last 3 s
    time.sleep(3.5)
    assert recover_stale(study) == [trial.number]
    dead = study.get_trials()[0]
    assert dead.state == TrialState.FAIL
    again = study.ask()  # the queued retry comes before anything the sampler proposes
    assert again.user_attrs["retry_of"] == trial.number and "no heartbeat" in again.user_attrs["retry_reason"]
    assert again.suggest_float("train.learning_rate", 1e-4, 1e-2) == value


def test_resume_refuses_a_changed_search_space(tune_recipe, one_thread):
    search = {"sampler": "random", "trials": 1, "parameters": {"train.learning_rate": {"low": 1e-3, "high": 1e-2}}}
    path = tune_recipe(search, epochs=1)
    _run(path)
    _, again = _run(path)  # same study: nothing left to do, the finished trial is kept
    assert again.counts["COMPLETE"] == 1
    search["parameters"]["train.learning_rate"]["high"] = 5e-2
    path = tune_recipe(search, epochs=1)
    with pytest.raises(TuneforgeError, match="started from a different recipe or search section"):
        _run(path)
    _, fresh = _run(path, overwrite=True)
    assert fresh.counts["COMPLETE"] == 1


def test_retrain_best_on_train_plus_validation_evaluates_on_test(tune_recipe, one_thread):
    path = tune_recipe({"sampler": "grid", "parameters": {"train.learning_rate": {"choices": [3e-3, 1e-7]}}})
    spec, result = _run(path, retrain_best=True)
    assert result.best_params == {"train.learning_rate": 3e-3}
    best = result.retrained
    assert best.run_dir == result.study_dir / "best"
    data = json.loads((best.run_dir / "data_summary.json").read_text())
    assert data["train_rows"] == 96 + 24 and data["validation_rows"] == 24  # train+validation; test scored
    # evaluated once, after the last step: no checkpoint was chosen on the test split
    evals = [json.loads(line) for line in (best.run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert [e["step"] for e in evals] == [best.global_step]
    assert best.metrics["step"] == best.global_step
    assert "retrained best, test accuracy" in (result.study_dir / "study.md").read_text()


def test_retrain_best_needs_a_test_split(tune_recipe, one_thread, tmp_path):
    path = tune_recipe({"sampler": "grid", "parameters": {"train.learning_rate": {"choices": [3e-3]}}})
    recipe = yaml.safe_load(path.read_text())
    del recipe["data"]["test_file"]
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(TuneforgeError, match="evaluates on the test split, and this recipe has none"):
        _run(path, retrain_best=True, overwrite=True)


# --- bad input: a clear message before any trial starts -------------------------------------------------------

BAD = [
    ({"sampeler": "tpe"}, "search.sampeler: unknown key (did you mean 'sampler'?)"),
    ({"parameters": {"train.lerning_rate": {"low": 1e-5, "high": 1e-3}}},
     "search.parameters: 'train.lerning_rate' is not a recipe key (did you mean 'train.learning_rate'?)"),
    ({"parameters": {"train.learning_rate": {"low": 1e-3, "high": 1e-5}}},
     "empty range: low (0.001) must be less than high (1e-05)"),
    ({"parameters": {"train.learning_rate": {"low": 0, "high": 1e-3, "log": True}}},
     "log range needs bounds > 0, got low 0"),
    ({"parameters": {"lora.r": {"choices": []}}}, "choices is empty"),
    ({"parameters": {"train.learning_rate": {"low": 1e-5, "high": 1e-3, "lowe": 1}}},
     "search.parameters.train.learning_rate.lowe: unknown key"),
    ({"sampler": "grid", "parameters": {"train.learning_rate": {"low": 1e-5, "high": 1e-3}}},
     "sampler grid needs choices or a step for a float range"),
    ({"sampler": "cmaes", "parameters": {"method": {"choices": ["lora", "ia3"]}}},
     "sampler cmaes searches numeric ranges only"),
    ({"parameters": {"lora.r": {"choices": [4], "when": {"method": "lora"}}, "method": {"choices": ["lora"]}}},
     "'method' is not a parameter defined before lora.r"),
    ({"parameters": {"train.batch_size": {"choices": [16, 0]}}}, "search.parameters.train.batch_size: the value 0 "
                                                                  "makes the recipe invalid"),
    ({"parameters": {"name": {"choices": ["a", "b"]}}}, "name cannot be searched"),
    ({"pruner": "asha", "parameters": {"train.learning_rate": {"choices": [1e-3]}}, "metric": "bleu"},
     "train.metric_for_best: unknown metric 'bleu' for task classification"),
]


@pytest.mark.parametrize("search,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_search_section_fails_before_any_trial(search, message, tune_recipe, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    path = tune_recipe({"parameters": {"train.learning_rate": {"low": 1e-4, "high": 1e-2}}, **search})
    result = CliRunner().invoke(app, ["tune", str(path)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "runs").exists()  # nothing was prepared or trained


def test_run_points_a_search_recipe_to_tune(tune_recipe):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    path = tune_recipe({"parameters": {"train.learning_rate": {"low": 1e-4, "high": 1e-2}}})
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "run the study with `tuneforge tune" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and "valid study: 1 parameters (train.learning_rate)" in result.output


def test_shipped_study_recipes_validate():
    from tuneforge.tune.run import load_tune

    for path in sorted((REPO / "recipes").glob("*.yaml")):
        if "search:" in path.read_text():
            spec = load_tune(path)
            assert spec.search.parameters
    grid = load_tune(REPO / "recipes" / "sst2-minilm-lora-grid.yaml")
    assert grid.search.grid_size() == 24


def test_any_recipe_key_can_be_searched_and_lands_in_the_trial_recipe(tune_recipe, tmp_path):
    """Optimiser, freezing policy (a mapping among strings), dropout-like floats, warmup: values as a trial
    draws them become the trial's recipe."""
    import optuna

    from tuneforge.tune.run import load_tune
    from tuneforge.tune.worker import WorkerJob, suggest, trial_recipe

    path = tune_recipe({"sampler": "tpe", "parameters": {
        "train.optimizer": {"choices": ["adamw", "sgd"]},
        "freeze": {"choices": ["none", "embeddings", {"first_n_layers": 1}]},
        "train.weight_decay": {"low": 0.0, "high": 0.1},
        "train.warmup_ratio": {"low": 0.0, "high": 0.2, "step": 0.1},
        "train.batch_size": {"low": 8, "high": 32, "log": True}}})
    spec = load_tune(path)
    job = WorkerJob(study_name="s", study_dir=str(tmp_path / "s"), storage="", base=spec.base,
                    search=spec.search.model_dump(mode="json"), seed=0, direction="maximize", metric="accuracy",
                    prepared=None)
    trial = optuna.trial.FixedTrial({"train.optimizer": "sgd", "freeze": '{"first_n_layers": 1}',
                                     "train.weight_decay": 0.05, "train.warmup_ratio": 0.1, "train.batch_size": 16})
    params = suggest(trial, spec.search)
    assert params["freeze"] == {"first_n_layers": 1}
    recipe = trial_recipe(job, 3, params)
    assert recipe.name == "trial-0003" and recipe.output_dir == tmp_path / "s" / "trials"
    assert recipe.train.optimizer == "sgd" and recipe.freeze.first_n_layers == 1
    assert (recipe.train.weight_decay, recipe.train.warmup_ratio, recipe.train.batch_size) == (0.05, 0.1, 16)
    assert recipe.export.enabled is False  # trials do not export unless search.export_trials


def test_with_params_does_not_touch_the_base():
    from tuneforge.tune.space import with_params

    base = {"train": {"learning_rate": 1e-3}, "freeze": "none"}
    out = with_params(base, {"train.learning_rate": 5e-4, "freeze.first_n_layers": 2})
    assert out == {"train": {"learning_rate": 5e-4}, "freeze": {"first_n_layers": 2}}
    assert base == {"train": {"learning_rate": 1e-3}, "freeze": "none"}


def test_load_tune_rejects_a_recipe_without_search(tmp_path):
    from tuneforge.tune.run import load_tune

    path = tmp_path / "r.yaml"
    path.write_text("name: x\ndata: {train_file: t.tsv}\n")
    with pytest.raises(RecipeError, match="no search: section"):
        load_tune(path)
