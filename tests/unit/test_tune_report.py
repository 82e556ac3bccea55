"""The study report of ``tuneforge tune``: studies built directly with optuna (no training)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import CategoricalDistribution, FloatDistribution  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402

from tuneforge.tune.report import write_study_report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LR, R, MODULES = "train.learning_rate", "lora.r", "lora.target_modules"
DISTRIBUTIONS = {
    LR: FloatDistribution(1e-5, 1e-3, log=True),
    R: CategoricalDistribution((4, 8, 16)),
    MODULES: CategoricalDistribution(('["query", "value"]', '["query", "key", "value"]')),
}
SETTINGS = {"sampler": "tpe", "pruner": "median", "n_trials": 7, "timeout": 3600.0}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


def _add(study, state, value=None, *, lr=3e-4, r=8, modules='["query", "value"]', curve=None, **attrs):
    study.add_trial(create_trial(
        state=state, value=value, params={LR: lr, R: r, MODULES: modules}, distributions=DISTRIBUTIONS,
        user_attrs=attrs, intermediate_values=curve or {},
    ))


def _full_study(direction="maximize", storage=None):
    """Trials 0, 1, 4 complete (1 best), 2 pruned at step 50, 3 failed, 5 skipped, 6 a retry."""
    study = optuna.create_study(direction=direction, storage=storage)
    _add(study, TrialState.COMPLETE, 0.81, lr=3e-4, r=8, curve={50: 0.70, 100: 0.81},
         steps=100, seconds=30.5, run_dir="runs/trial-0")
    _add(study, TrialState.COMPLETE, 0.8642, lr=1e-4, r=16, modules='["query", "key", "value"]',
         curve={50: 0.75, 100: 0.8642}, steps=100, seconds=31.0, run_dir="runs/trial-1", worker=1)
    _add(study, TrialState.PRUNED, lr=1e-5, r=4, curve={25: 0.49, 50: 0.5213}, steps=50, seconds=15.0,
         run_dir="runs/trial-2")
    _add(study, TrialState.FAIL, lr=5e-4, r=8, steps=10, seconds=3.0,
         error="Traceback (most recent call last):\n  File \"train.py\", line 3\nRuntimeError: CUDA out of memory")
    _add(study, TrialState.COMPLETE, 0.83, lr=2.5e-5, r=4, curve={50: 0.60, 100: 0.83},
         steps=100, seconds=29.0, run_dir="runs/trial-4")
    # A duplicate grid point of trial 1 with a better recorded value: it must not become the best.
    _add(study, TrialState.COMPLETE, 0.99, lr=1e-4, r=16, modules='["query", "key", "value"]',
         steps=0, seconds=0.0, skipped="duplicate of trial 1")
    _add(study, TrialState.COMPLETE, 0.82, lr=5e-4, r=8, curve={50: 0.72, 100: 0.82},
         steps=100, seconds=28.0, run_dir="runs/trial-6", retry_of=3)
    return study


def _write(study, tmp_path, direction="maximize"):
    report = write_study_report(study, tmp_path, metric="eval_accuracy", direction=direction,
                                title="Tune: sst2 LoRA", settings=SETTINGS)
    md = (tmp_path / "study.md").read_text(encoding="utf-8")
    return report, md, json.loads((tmp_path / "study.json").read_text(encoding="utf-8"))


def _table_rows(md: str, section: str) -> dict[str, list[str]]:
    """The rows of the first table under ``## section``, keyed by their first cell."""
    body = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return {r[0]: r for r in cells[2:]} | {"header": cells[0]}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return (out, *_write(_full_study(), out))


def test_best_trial_in_markdown_and_json(full_report):
    out, report, md, on_disk = full_report
    assert report == on_disk  # the returned dict is what study.json holds
    best = on_disk["best_trial"]
    assert best["number"] == 1 and best["value"] == pytest.approx(0.8642)
    assert best["params"] == {LR: 1e-4, R: 16, MODULES: '["query", "key", "value"]'}
    assert best["steps"] == 100 and best["run_dir"] == "runs/trial-1"
    section = md.split("## Best trial", 1)[1].split("## Trials", 1)[0]
    assert "Trial **#1**: eval_accuracy = **0.8642**" in section
    params = _table_rows(md, "Best trial")
    assert params[LR][1] == "1e-04" and params[R][1] == "16" and params[MODULES][1] == '["query", "key", "value"]'
    assert "`runs/trial-1`" in section and "Steps: 100" in section


def test_settings_table_and_title(full_report):
    _, _, md, _ = full_report
    assert md.startswith("# Tune: sst2 LoRA\n")
    assert re.search(r"\| sampler\s+\| tpe\s+\|", md) and re.search(r"\| timeout\s+\| 3600\s+\|", md)


def test_trial_rows_pruned_failed_and_skipped(full_report):
    _, _, md, on_disk = full_report
    rows = _table_rows(md, "Trials")
    header = rows.pop("header")
    assert header[:3] == ["#", "State", "Value"] and {LR, R, MODULES} <= set(header)
    assert list(rows) == ["0", "1", "2", "3", "4", "6"]  # sorted by number, skipped #5 left out
    col = {name: i for i, name in enumerate(header)}
    assert rows["1"][col["Value"]] == "0.8642" and rows["1"][col[LR]] == "1e-04"
    assert rows["4"][col[LR]] == "2.5e-05"
    assert rows["2"][col["State"]] == "pruned"
    assert rows["2"][col["Value"]] == "0.5213 (pruned at step 50)"  # the last intermediate value
    assert rows["3"][col["State"]] == "failed" and rows["3"][col["Note"]] == "RuntimeError: CUDA out of memory"
    assert rows["6"][col["Note"]] == "retry of #3"
    assert rows["0"][col["Steps"]] == "100" and rows["0"][col["Time"]] == "30.5s"
    # study.json keeps every trial, the skipped one included, with its facts.
    by_number = {t["number"]: t for t in on_disk["trials"]}
    assert len(by_number) == 7 and by_number[5]["user_attrs"]["skipped"] == "duplicate of trial 1"
    assert by_number[2]["state"] == "PRUNED" and by_number[2]["value"] is None
    assert by_number[2]["intermediate_values"] == {"25": 0.49, "50": 0.5213}
    assert by_number[3]["state"] == "FAIL" and "CUDA out of memory" in by_number[3]["user_attrs"]["error"]


def test_counts_and_totals(full_report):
    _, _, md, on_disk = full_report
    # Trial 6 (a retry) is a complete trial like any other; skipped trial 5 is only counted as skipped.
    assert on_disk["counts"] == {"complete": 4, "pruned": 1, "failed": 1, "running": 0, "waiting": 0, "skipped": 1}
    assert on_disk["skipped_trials"] == [5]
    assert on_disk["totals"]["steps"] == 100 + 100 + 50 + 10 + 100 + 100
    assert on_disk["totals"]["seconds"] == pytest.approx(30.5 + 31.0 + 15.0 + 3.0 + 29.0 + 28.0)
    assert "4 complete / 1 pruned / 1 failed (+ 1 skipped" in md
    assert "**Training steps**: 460" in md and "**Trial time**: 2m 16s" in md


def test_importances_sum_to_one_over_varying_params(full_report):
    _, _, md, on_disk = full_report
    importances = on_disk["importances"]
    assert set(importances) == {LR, R, MODULES}
    assert sum(importances.values()) == pytest.approx(1.0, abs=1e-6)
    assert list(importances.values()) == sorted(importances.values(), reverse=True)
    rows = _table_rows(md, "Parameter importances")
    assert [r for r in rows if r != "header"] == list(importances)


def test_plots_are_png_files_linked_from_markdown(full_report):
    out, _, md, on_disk = full_report
    for name in ("optimization_history.png", "parallel_coordinate.png", "intermediate_values.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
        assert f"]({name})" in md
        assert on_disk["plots"][name] == name
    assert on_disk["plot_notes"] == {}


def test_optuna_plot_style_does_not_leak(full_report):
    import matplotlib

    # optuna's plots call plt.style.use("ggplot"), which would grey every later tuneforge plot.
    assert matplotlib.rcParams["axes.facecolor"].lower() not in ("#e5e5e5", "e5e5e5")


def test_single_complete_trial_says_why_importances_are_not_shown(tmp_path):
    study = optuna.create_study(direction="maximize")
    _add(study, TrialState.COMPLETE, 0.8, curve={10: 0.8}, steps=10, seconds=1.0, run_dir="runs/t0")
    report, md, on_disk = _write(study, tmp_path)
    assert report["importances"] is None and "2 complete trials" in report["importance_note"]
    assert "## Parameter importances\n\nNot shown: needs at least 2 complete trials (this study has 1)." in md
    assert on_disk["best_trial"]["number"] == 0
    assert (tmp_path / "optimization_history.png").read_bytes().startswith(PNG_MAGIC)


def test_no_complete_trial_skips_plots_with_reasons(tmp_path):
    study = optuna.create_study(direction="minimize")
    _add(study, TrialState.PRUNED, curve={5: 2.5}, steps=5, seconds=1.0)
    _add(study, TrialState.FAIL, steps=0, seconds=0.5, error="ValueError: bad recipe")
    study.enqueue_trial({LR: 1e-4})  # a WAITING trial: the report may be written mid-study
    report, md, _ = _write(study, tmp_path, direction="minimize")
    assert report["best_trial"] is None and "No complete trial yet." in md
    assert report["counts"]["waiting"] == 1
    assert report["plots"]["optimization_history.png"] is None
    assert "Optimization history: not drawn (no complete trial)" in md
    assert "Parallel coordinates: not drawn (no complete trial)" in md
    assert (tmp_path / "intermediate_values.png").exists()  # the pruned curve is still drawn
    assert not (tmp_path / "optimization_history.png").exists()


def test_constant_param_and_minimize(tmp_path):
    """Parameters that never varied get no importance (fANOVA would give them noise)."""
    study = optuna.create_study(direction="minimize")
    for i, (lr, loss) in enumerate([(1e-4, 2.1), (3e-4, 1.7), (1e-3, 1.9)]):
        _add(study, TrialState.COMPLETE, loss, lr=lr, r=8, steps=10, seconds=1.0, run_dir=f"runs/t{i}")
    report, md, _ = _write(study, tmp_path, direction="minimize")
    assert report["best_trial"]["number"] == 1 and "eval_accuracy = **1.7**" in md
    assert report["importances"] == {LR: pytest.approx(1.0)}


def test_conditional_param_importances_say_why(tmp_path):
    """A parameter only some trials have (e.g. lora.r only for method=lora): no crash, a reason."""
    study = optuna.create_study(direction="maximize")
    method = CategoricalDistribution(("lora", "full"))
    for i, (params, value) in enumerate([({"method": "lora", R: 8}, 0.8), ({"method": "full"}, 0.85),
                                         ({"method": "lora", R: 16}, 0.82)]):
        dists = {"method": method, R: DISTRIBUTIONS[R]}
        study.add_trial(create_trial(value=value, params=params, distributions={k: dists[k] for k in params},
                                     user_attrs={"steps": 10, "seconds": 1.0}))
    report, md, _ = _write(study, tmp_path)
    if report["importances"] is None:
        assert "## Parameter importances\n\nNot shown: " in md and report["importance_note"]
    else:  # a later optuna may handle conditional parameters
        assert sum(report["importances"].values()) == pytest.approx(1.0)
    assert _table_rows(md, "Trials")["1"][3] == "full" and _table_rows(md, "Trials")["1"][4] == "-"


def test_rdb_study_with_skipped_trial_in_the_middle(tmp_path):
    """The tune command stores studies in an RDB: the view without skipped trials must work there,
    and a gap in the trial numbers must not break optuna's optimization history."""
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'study.db'}")
    _add(study, TrialState.COMPLETE, 0.7, lr=1e-4, r=4, curve={10: 0.7}, steps=10, seconds=1.0)
    _add(study, TrialState.COMPLETE, 0.9, lr=1e-4, r=4, steps=0, seconds=0.0, skipped="duplicate of trial 0")
    _add(study, TrialState.COMPLETE, 0.8, lr=3e-4, r=16, curve={10: 0.8}, steps=10, seconds=1.0)
    report, md, _ = _write(study, tmp_path)
    assert report["best_trial"]["number"] == 2 and report["skipped_trials"] == [1]
    assert all(report["plots"].values()), report["plot_notes"]
    assert report["importances"] and "(+ 1 skipped" in md


def test_rejects_unknown_direction(tmp_path):
    with pytest.raises(ValueError, match="direction"):
        write_study_report(optuna.create_study(), Path(tmp_path), metric="m", direction="up", title="t", settings={})
