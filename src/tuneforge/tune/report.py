"""The study report of ``tuneforge tune``: what the search tried, what won, and what mattered.

``write_study_report`` turns an Optuna study into:

* ``study.md``: settings, counts and totals, the best trial, one table row per trial (pruned trials
  with the last value they reached, failed ones with their error), parameter importances and links
  to the plots;
* ``study.json``: the same facts, machine-readable (every trial with its intermediate values and
  user attributes);
* ``optimization_history.png``, ``parallel_coordinate.png`` and ``intermediate_values.png``, drawn
  by ``optuna.visualization.matplotlib``.

Trials marked ``skipped`` (they never trained, e.g. a duplicate grid point) are left out of the
tables, counts, importances and plots, but the report says how many there were. The report can be
written while the study is still running: RUNNING and WAITING trials are listed as such.

optuna and matplotlib are imported inside the functions: the CLI imports this module lazily and
must stay fast for commands that never tune.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneforge.atomic import atomic_path, atomic_write_text

REPORT_VERSION = 1
JSON_FILE, MARKDOWN_FILE = "study.json", "study.md"
HISTORY_PLOT, PARALLEL_PLOT = "optimization_history.png", "parallel_coordinate.png"
CURVES_PLOT = "intermediate_values.png"
_DPI = 110
#: Beyond this many learning curves a legend hides the plot; the trial table names them anyway.
_MAX_LEGEND_TRIALS = 20
_ERROR_CHARS = 100
#: How the report names optuna's trial states (count keys of study.json, the table's State column).
_STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
                "WAITING": "waiting"}


def write_study_report(
    study, out_dir: Path, *, metric: str, direction: str, title: str, settings: dict
) -> dict:
    """Write ``study.md``, ``study.json`` and the plots of ``study`` into ``out_dir``; return the
    ``study.json`` dict. ``direction`` ("maximize" or "minimize") decides the best trial."""
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', not {direction!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    trials = [t for t in all_trials if "skipped" not in t.user_attrs]
    skipped = [t.number for t in all_trials if "skipped" in t.user_attrs]
    view = _without_trials(study, set(skipped))

    best = _best_trial(trials, direction)
    importances, importance_note, importance_caveats = _importances(view, trials)
    plots, plot_notes = _draw_plots(view, trials, out_dir, metric=metric, title=title)
    report = {
        "version": REPORT_VERSION,
        "title": title,
        "metric": metric,
        "direction": direction,
        "settings": dict(settings),
        "counts": _counts(trials, skipped),
        "totals": _totals(trials),
        "skipped_trials": skipped,
        "best_trial": _best_record(best),
        "trials": [_trial_record(t) for t in all_trials],
        "importances": importances,
        "importance_note": importance_note,
        "importance_caveats": importance_caveats,
        "plots": plots,
        "plot_notes": plot_notes,
    }
    # Each file is replaced atomically: a study killed while reporting keeps the previous report.
    atomic_write_text(out_dir / JSON_FILE, json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / MARKDOWN_FILE, _markdown(report, trials))
    return report


# --------------------------------------------------------------------------------------------- facts


def _without_trials(study, numbers: set[int]):
    """``study`` as optuna's plot and importance functions should see it: ``numbers`` never trained.

    Those trials are shown as FAIL with no value and no curve rather than dropped: optuna's
    optimization history indexes trials by number and breaks on a gap, and copying the kept trials
    into a fresh study would renumber them (the plots label trials by number)."""
    if not numbers:
        return study
    import copy

    import optuna

    def untrained(trial):
        trial = copy.copy(trial)  # the storage's cached trial must stay as it is
        trial.state, trial.value, trial.intermediate_values = optuna.trial.TrialState.FAIL, None, {}
        return trial

    class _StudyView(optuna.Study):
        def _get_trials(self, deepcopy=True, states=None, use_cache=False):
            trials = super()._get_trials(deepcopy, None, use_cache)
            trials = [untrained(t) if t.number in numbers else t for t in trials]
            return trials if states is None else [t for t in trials if t.state in states]

    return _StudyView(study.study_name, study._storage)


def _best_trial(trials: Sequence, direction: str):
    complete = [t for t in trials if t.state.name == "COMPLETE" and _finite(t.value)]
    if not complete:
        return None
    pick = max if direction == "maximize" else min
    return pick(complete, key=lambda t: t.value)


def _counts(trials: Sequence, skipped: Sequence[int]) -> dict[str, int]:
    by_state = Counter(t.state.name for t in trials)
    counts = {key: by_state.get(state, 0) for state, key in _STATE_NAMES.items()}
    counts["skipped"] = len(skipped)
    return counts


def _totals(trials: Sequence) -> dict[str, Any]:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    # Workers run trials side by side, so the study's wall clock can be far below the trial time.
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return {
        "trials": len(trials),
        "steps": sum(int(t.user_attrs.get("steps") or 0) for t in trials),
        "seconds": round(sum(_seconds(t) or 0.0 for t in trials), 3),
        "wall_seconds": round(wall, 3) if wall is not None else None,
    }


def _seconds(trial) -> float | None:
    # Trials killed before recording ``seconds`` still have their timestamps.
    if "seconds" in trial.user_attrs:
        return float(trial.user_attrs["seconds"])
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def _best_record(trial) -> dict | None:
    if trial is None:
        return None
    return {
        "number": trial.number, "value": trial.value, "params": dict(trial.params),
        "steps": trial.user_attrs.get("steps"), "run_dir": trial.user_attrs.get("run_dir"),
    }


def _trial_record(trial) -> dict:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": _json_number(trial.value),
        "params": dict(trial.params),
        # JSON keys are strings; converting here makes the returned dict equal the file's content.
        "intermediate_values": {str(s): _json_number(v) for s, v in sorted(trial.intermediate_values.items())},
        "user_attrs": dict(trial.user_attrs),
        "seconds": _seconds(trial),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }


def _importances(study, trials: Sequence) -> tuple[dict[str, float] | None, str | None, list[str]]:
    """``(importances sorted descending, None, caveats)`` or ``(None, why they are not shown, [])``.

    Caveats are optuna's warnings (e.g. too few trials per value of a parameter): they belong next
    to the numbers they qualify, not in the log."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return None, f"needs at least 2 complete trials (this study has {len(complete)})", []
    names = dict.fromkeys(name for t in complete for name in t.params)
    varying = [n for n in names if len({json.dumps(t.params.get(n), default=str) for t in complete}) > 1]
    if not varying:
        return None, "no parameter varies across the complete trials", []
    import optuna

    try:
        with _quiet_optuna(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            # Only what varied: the evaluator gives a constant parameter a little noise, not zero.
            raw = optuna.importance.get_param_importances(study, params=varying)
    except Exception as exc:  # optuna raises on odd search spaces (conditional or single-value params)
        return None, f"optuna could not compute them: {_one_line(exc)}", []
    if not raw:
        return None, "no parameter is shared by every complete trial (conditional parameters)", []
    messages = (str(w.message).strip() for w in caught
                if not issubclass(w.category, optuna.exceptions.ExperimentalWarning))
    caveats = list(dict.fromkeys(m.splitlines()[0] for m in messages if m))
    return dict(sorted(((k, float(v)) for k, v in raw.items()), key=lambda kv: -kv[1])), None, caveats


# --------------------------------------------------------------------------------------------- plots


def _draw_plots(view, trials: Sequence, out_dir: Path, *, metric: str, title: str):
    """``({plot: file name or None}, {plot: why it is missing})``."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    no_complete = "no complete trial" if not complete else None
    missing = {
        HISTORY_PLOT: no_complete,
        PARALLEL_PLOT: no_complete or (None if any(t.params for t in complete) else "no parameter"),
        CURVES_PLOT: None if any(t.intermediate_values for t in trials) else "no trial reported intermediate values",
    }
    drawers = {HISTORY_PLOT: _history_plot, PARALLEL_PLOT: _parallel_plot, CURVES_PLOT: _curves_plot}
    plots: dict[str, str | None] = dict.fromkeys(drawers)
    notes: dict[str, str] = {}
    for name, draw in drawers.items():
        if missing[name]:
            notes[name] = missing[name]
            continue
        try:
            _save_axes(draw(view, trials, metric=metric, title=title), out_dir / name)
            plots[name] = name
        except Exception as exc:  # a plot is a bonus: the report must be written anyway
            notes[name] = f"could not be drawn: {_one_line(exc)}"
    return plots, notes


@contextmanager
def _quiet_optuna():
    import optuna

    with warnings.catch_warnings():
        # The matplotlib backend of optuna.visualization is "experimental" since 2.2; nothing to act on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@contextmanager
def _pyplot():
    """pyplot on the Agg backend, with optuna's global ``plt.style.use("ggplot")`` undone on exit."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # switching later would close the caller's figures
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(), _quiet_optuna():
        # A parameter with one value gives a flat axis in the parallel coordinates: fine as drawn.
        warnings.filterwarnings("ignore", message="Attempting to set identical low and high", category=UserWarning)
        yield plt


def _history_plot(view, trials, *, metric, title):
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization.matplotlib import plot_optimization_history

    with _pyplot():
        ax = plot_optimization_history(view, target_name=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, not 0.5 steps
    ax.figure.set_size_inches(8, 4.5)
    ax.set_title(f"{title}: {metric} per trial")
    return ax


def _parallel_plot(view, trials, *, metric, title):
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with _pyplot():
        ax = plot_parallel_coordinate(view, target_name=metric)
    _darken_white_end(ax)
    n_params = len({name for t in trials if t.state.name == "COMPLETE" for name in t.params})
    # Categorical ticks (JSON lists of module names) are long: give every axis room for them.
    ax.figure.set_size_inches(max(8.0, 2.8 * (n_params + 1)), 5)
    ax.set_title(f"{title}: parameters of the complete trials (colour: {metric})", y=1.03)
    return ax


def _darken_white_end(ax) -> None:
    """Optuna colours the lines with "Blues", whose worst end is white: the worst trial would be
    invisible on the white background. Cut the palest fifth off (the colour bar follows)."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    for lines in ax.collections:
        if lines.get_array() is None:
            continue
        cmap = lines.get_cmap()
        pale_at_low = sum(cmap(0.0)[:3]) > sum(cmap(1.0)[:3])  # "Blues" or, for minimize, "Blues_r"
        kept = np.linspace(0.2, 1.0, 256) if pale_at_low else np.linspace(0.0, 0.8, 256)
        lines.set_cmap(ListedColormap(cmap(kept)))


def _curves_plot(view, trials, *, metric, title):
    """Learning curves of every trial; pruned ones dashed and ending in a cross, to show at a glance
    where the pruner stopped them and how they compared with the survivors at that step."""
    from optuna.visualization.matplotlib import plot_intermediate_values

    with _pyplot():
        ax = plot_intermediate_values(view)
    pruned = {f"Trial{t.number}" for t in trials if t.state.name == "PRUNED"}
    for line in ax.get_lines():
        if line.get_label() in pruned:
            line.set_linestyle("--")
            xs, ys = line.get_data()
            ax.plot(xs[-1:], ys[-1:], marker="x", markersize=8, color=line.get_color(), linestyle="none")
            line.set_label(f"{line.get_label()} (pruned)")
        line.set_label(line.get_label().replace("Trial", "trial "))
    curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    if ax.get_legend():
        ax.get_legend().remove()
    if 2 <= len(curves) <= _MAX_LEGEND_TRIALS:
        ax.legend(handles=curves, bbox_to_anchor=(1.02, 1), loc="upper left", borderaxespad=0.0, fontsize=8)
    ax.figure.set_size_inches(9, 4.8)
    ax.set_title(f"{title}: {metric} during training" + (" (dashed: pruned)" if pruned else ""))
    ax.set_ylabel(metric)
    ax.set_xlabel("Training step")
    return ax


def _save_axes(ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            ax.figure.savefig(tmp, dpi=_DPI, bbox_inches="tight", format="png")
    finally:
        plt.close(ax.figure)


# ------------------------------------------------------------------------------------------ markdown


def _markdown(report: dict, trials: Sequence) -> str:
    lines = [f"# {report['title']}", "", f"Objective: {report['direction']} `{report['metric']}`.", ""]
    if report["settings"]:
        lines += [_table(["Setting", "Value"], [[k, _fmt_param(v)] for k, v in report["settings"].items()]), ""]
    lines += [_summary_line(report), ""]
    lines += _best_section(report["best_trial"], report["metric"])
    lines += _trials_section(trials)
    lines += _importance_section(report)
    lines += _plots_section(report["plots"], report["plot_notes"])
    return "\n".join(lines).rstrip() + "\n"


def _summary_line(report: dict) -> str:
    c, t = report["counts"], report["totals"]
    parts = [f"{c['complete']} complete", f"{c['pruned']} pruned", f"{c['failed']} failed"]
    parts += [f"{c[s]} {s}" for s in ("running", "waiting") if c[s]]
    text = f"**Trials**: {' / '.join(parts)}"
    if c["skipped"]:
        text += (f" (+ {c['skipped']} skipped, never trained and left out below: "
                 + ", ".join(f"#{n}" for n in report["skipped_trials"]) + ")")
    text += f". **Training steps**: {t['steps']:,}. **Trial time**: {_duration(t['seconds'])}"
    if t["wall_seconds"] is not None:
        text += f" (wall clock {_duration(t['wall_seconds'])})"
    return text + "."


def _best_section(best: dict | None, metric: str) -> list[str]:
    lines = ["## Best trial", ""]
    if best is None:
        return lines + ["No complete trial yet.", ""]
    lines += [f"Trial **#{best['number']}**: {metric} = **{_fmt_value(best['value'])}**", ""]
    if best["params"]:
        lines += [_table(["Parameter", "Value"], [[k, _fmt_param(v)] for k, v in best["params"].items()]), ""]
    if best["steps"] is not None:
        lines.append(f"- Steps: {best['steps']:,}")
    if best["run_dir"]:
        lines.append(f"- Run directory: `{best['run_dir']}`")
    return lines + [""]


def _trials_section(trials: Sequence) -> list[str]:
    lines = ["## Trials", ""]
    if not trials:
        return lines + ["No trial yet.", ""]
    # Columns in first-appearance order: that is the recipe's search-space order.
    params = list(dict.fromkeys(name for t in trials for name in t.params))
    notes = [_trial_note(t) for t in trials]
    header = ["#", "State", "Value", *params, "Steps", "Time"] + (["Note"] if any(notes) else [])
    rows = []
    for t, note in zip(trials, notes):
        row = [str(t.number), _STATE_NAMES[t.state.name], _trial_value(t)]
        row += [_fmt_param(t.params[p]) if p in t.params else "-" for p in params]
        steps, seconds = t.user_attrs.get("steps"), _seconds(t)
        row += [f"{steps:,}" if isinstance(steps, int) else "-", _duration(seconds) if seconds is not None else "-"]
        rows.append(row + ([note] if any(notes) else []))
    return lines + [_table(header, rows), ""]


def _trial_value(trial) -> str:
    if trial.state.name == "COMPLETE":
        return _fmt_value(trial.value)
    if trial.intermediate_values:
        step = max(trial.intermediate_values)
        value = _fmt_value(trial.intermediate_values[step])
        return f"{value} (pruned at step {step})" if trial.state.name == "PRUNED" else f"{value} (step {step})"
    return "-"


def _trial_note(trial) -> str:
    notes = []
    if trial.state.name == "FAIL":
        notes.append(_short_error(trial.user_attrs.get("error", "no error recorded")))
    if "retry_of" in trial.user_attrs:
        notes.append(f"retry of #{trial.user_attrs['retry_of']}")
    if "same_as" in trial.user_attrs:
        notes.append(f"same parameters as #{trial.user_attrs['same_as']}: its result, not trained again")
    return "; ".join(notes)


def _importance_section(report: dict) -> list[str]:
    lines = ["## Parameter importances", ""]
    if report["importances"] is None:
        return lines + [f"Not shown: {report['importance_note']}.", ""]
    rows = [[name, f"{value:.3f}"] for name, value in report["importances"].items()]
    n_complete = report["counts"]["complete"]
    lines += [_table(["Parameter", "Importance"], rows), "",
              f"Optuna's default importance evaluator over the {n_complete} complete trials, for the "
              "parameters that varied; they sum to 1.", ""]
    return lines + [f"> Caveat: {caveat}\n" for caveat in report["importance_caveats"]]


def _plots_section(plots: dict, notes: dict) -> list[str]:
    captions = {HISTORY_PLOT: "Optimization history", PARALLEL_PLOT: "Parallel coordinates",
                CURVES_PLOT: "Learning curves (intermediate values)"}
    lines = ["## Plots", ""]
    missing = [f"- {caption}: not drawn ({notes.get(name, 'unknown reason')})."
               for name, caption in captions.items() if not plots.get(name)]
    lines += missing + ([""] if missing else [])
    for name, caption in captions.items():
        if plots.get(name):
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return lines


# ------------------------------------------------------------------------------------------ formatting


def _table(header: list[str], rows: list[list[str]]) -> str:
    # Cells padded to their column width, so the table also reads well in a terminal.
    cells = [[_cell(c) for c in r] for r in [header, *rows]]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([fmt(cells[0]), rule, *(fmt(r) for r in cells[1:])])


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt_value(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _fmt_param(value) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != 0 and math.isfinite(value) and (abs(value) < 1e-2 or abs(value) >= 1e5):
        # Learning rates and weight decays: "3e-04", "2.5e-05", never "0.0003" or "2.5000e-05".
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _short_error(error: str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return "error"
    # A traceback's last line names the exception; any other message starts with its gist.
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 1] + "…"


def _one_line(exc: BaseException) -> str:
    return _short_error(f"{type(exc).__name__}: {exc}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _json_number(value):
    # json.dumps would write NaN/Infinity, which strict JSON readers reject.
    return value if value is None or _finite(value) else None
