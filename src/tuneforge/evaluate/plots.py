"""PNG plots: confusion matrix and training curves.

matplotlib is imported inside the functions (it costs ~0.5 s and the CLI must start fast), through the
figure helpers of ``tuneforge.figures``: an Agg canvas on ``matplotlib.figure.Figure`` instead of pyplot,
so no window can ever open and no figure is left registered in pyplot's global state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from tuneforge.figures import new_figure, save_figure, short_label


# --------------------------------------------------------------------------- confusion matrix


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]],
    label_names: Sequence[str],
    path: Path,
    *,
    title: str = "Confusion matrix",
) -> Path:
    """Heatmap of ``cm`` (rows = true, cols = predicted) with counts and row percentages."""
    import numpy as np

    counts = np.asarray(cm, dtype=np.int64)
    n = len(label_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {n} label names")
    row_share = _row_normalised(counts)

    # Grow the canvas with the number of classes so cell text stays readable.
    side = min(max(4.5, 0.75 * n + 2.5), 30.0)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    # Colour by row share, not raw count: with imbalanced classes raw counts would make every
    # small class look pale even when it is classified perfectly.
    image = ax.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of true class")

    ticks = list(range(n))
    ax.set_xticks(ticks, labels=[short_label(x) for x in label_names])
    ax.set_yticks(ticks, labels=[short_label(x) for x in label_names])
    ax.tick_params(axis="x", labelrotation=45 if n > 3 else 0)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right" if n > 3 else "center")
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    _annotate_cells(ax, counts, row_share)
    fig.tight_layout()
    return save_figure(fig, path)


def _row_normalised(counts):
    """Each row divided by its total; all-zero rows (class absent from the data) stay 0."""
    import numpy as np

    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def _annotate_cells(ax, counts, row_share) -> None:
    n = counts.shape[0]
    if n > 40:  # the text would be unreadable; the colours still tell the story
        return
    # Cells stay ~0.75 in wide until the canvas cap (~36 classes), so the text need not shrink
    # much; 8 pt still fits "100.0%" in the ~0.7 in cells of a 40-class matrix.
    fontsize = 10 if n <= 16 else 8
    row_totals = counts.sum(axis=1)
    for i in range(n):
        for j in range(n):
            text = str(int(counts[i, j]))
            if row_totals[i] > 0:
                text += f"\n{100.0 * row_share[i, j]:.1f}%"
            # White text on dark cells, black on light ones.
            colour = "white" if row_share[i, j] > 0.5 else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)


# --------------------------------------------------------------------------- loss curves


def plot_loss_curves(metrics_jsonl: Path, path: Path) -> Path | None:
    """Train/eval loss (and eval accuracy/macro-F1 if logged) against step.

    Returns None and writes nothing when there is nothing to plot: no train records, or no file
    at all (a run that ended before its first logging step should not fail on its plot).
    """
    records = _read_jsonl(Path(metrics_jsonl))
    train_loss = _series(records, "train", "loss")
    if not train_loss:
        return None
    eval_loss = _series(records, "eval", "loss")
    eval_scores = {
        name: series
        for name in ("accuracy", "macro_f1")
        if (series := _series(records, "eval", name))
    }

    rows = 2 if "accuracy" in eval_scores else 1
    fig = new_figure(8.0, 4.0 * rows)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    _draw_losses(axes[0], train_loss, eval_loss)
    if rows == 2:
        _draw_scores(axes[1], eval_scores)
    axes[-1].set_xlabel("Step")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_metric_curves(metrics_jsonl: Path, path: Path, *, selected: str | None = None,
                       skip: tuple[str, ...] = ("loss", "step", "examples_per_s", "tokens_per_s")) -> Path | None:
    """Every scalar metric of the evaluations during training against step, one panel each (the
    selection metric first, its best point marked): the curve of the metric that chose the checkpoint,
    not only the loss. None (nothing written) when fewer than one evaluation logged a metric."""
    records = [r for r in _read_jsonl(Path(metrics_jsonl)) if r.get("kind") == "eval"]
    names = sorted({k for r in records for k, v in r.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip and k != "kind"})
    if selected in names:
        names.remove(selected)
        names.insert(0, selected)
    series = {name: s for name in names if (s := _series(records, "eval", name))}
    names = [n for n in names if n in series][:6]  # the first six: a figure people read, not a dump
    if not names:
        return None
    fig = new_figure(8.0, 2.6 * len(names))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        steps, values = zip(*series[name])
        ax.plot(steps, values, marker="o", color="tab:blue" if name == selected else "tab:gray")
        if name == selected:
            ax.set_title(f"{name} (selects the checkpoint)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("Step")
    fig.tight_layout()
    return save_figure(fig, path)


def _read_jsonl(path: Path) -> list[dict]:
    """Parse JSON objects one per line, skipping anything malformed (a run killed mid-write
    leaves a truncated last line, and that must not cost us the whole plot)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _series(records: list[dict], kind: str, key: str) -> list[tuple[float, float]]:
    """(step, value) pairs sorted by step, keeping only finite numbers.

    If a step appears twice (a run resumed from a checkpoint re-logs it) the later record wins.
    NaN/inf losses are dropped: they would wreck the axis scale and divergence is reported
    elsewhere.
    """
    by_step: dict[float, float] = {}
    for record in records:
        if record.get("kind") != kind:
            continue
        step, value = record.get("step"), record.get(key)
        if _is_finite_number(step) and _is_finite_number(value):
            by_step[float(step)] = float(value)
    return sorted(by_step.items())


def _is_finite_number(value) -> bool:
    # bool is an int subclass; True is never a step or a loss.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ema(values: list[float], span: int) -> list[float]:
    """Exponential moving average, bias-corrected so the curve does not start near zero."""
    alpha = 2.0 / (span + 1.0)
    smoothed, running, weight = [], 0.0, 0.0
    for value in values:
        running = (1 - alpha) * running + alpha * value
        weight = (1 - alpha) * weight + alpha
        smoothed.append(running / weight)
    return smoothed


def _draw_losses(ax, train_loss, eval_loss) -> None:
    steps, losses = zip(*train_loss)
    if len(losses) > 20:
        # Raw per-step loss is noisy; show it faintly with a smoothed trend on top.
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="train loss")
        span = max(5, len(losses) // 20)
        ax.plot(steps, _ema(list(losses), span), color="tab:blue", linewidth=2,
                label=f"train loss (EMA, span {span})")
    else:
        ax.plot(steps, losses, color="tab:blue", marker=".", label="train loss")
    if eval_loss:
        eval_steps, eval_values = zip(*eval_loss)
        ax.plot(eval_steps, eval_values, color="tab:orange", marker="o", linestyle="--",
                label="eval loss")
    ax.set_ylabel("Loss")
    ax.set_title("Loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    ax.tick_params(axis="x", labelbottom=True)  # sharex hides these on the top subplot


def _draw_scores(ax, eval_scores: dict[str, list[tuple[float, float]]]) -> None:
    styles = {"accuracy": ("tab:green", "o"), "macro_f1": ("tab:purple", "s")}
    for name, series in eval_scores.items():
        steps, values = zip(*series)
        colour, marker = styles[name]
        ax.plot(steps, values, color=colour, marker=marker, label=f"eval {name}")
    ax.set_ylabel("Score")
    ax.set_title("Evaluation")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
