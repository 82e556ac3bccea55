"""The data report's two plots: row lengths and labels, before vs after cleaning.

Overlaying "before" and "after" on one axis shows at a glance what cleaning did: a length filter
cuts a tail, a broken rule empties a class. matplotlib is imported lazily through the figure
helpers of ``tuneforge.figures`` (Agg canvas, no pyplot state), like every tuneforge plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tuneforge.figures import new_figure, save_figure, short_label

#: Lengths spanning this ratio (max / min) or more get a log x axis; linear bins would crush the
#: bulk of short rows into one or two bars next to a long tail.
LOG_SCALE_SPAN = 100
#: More labels than this: only the most frequent are drawn (the JSON has them all).
MAX_LABELS = 30
_BEFORE_STYLE = {"color": "0.55", "alpha": 0.45}
_AFTER_COLOR = "tab:blue"


def plot_length_distribution(
    before: Mapping[str, Sequence[int]], after: Mapping[str, Sequence[int]], path: Path
) -> Path | None:
    """Histograms of characters and words per row (``{"chars": [...], "words": [...]}`` per side),
    before (filled grey) and after (blue outline) on shared bins. None when there are no rows.

    Bars show rows per length value (a bin's count divided by the lengths it covers): lengths are
    integers, so bins of a log axis (or of a wide linear one) cover 1, 2 or 3 of them unevenly, and
    raw counts would draw a false comb.
    """
    import numpy as np

    if not len(before["chars"]) and not len(after["chars"]):
        return None
    fig = new_figure(11.0, 4.2)
    axes = fig.subplots(1, 2)
    for ax, unit, title in zip(axes, ("chars", "words"), ("Characters per row", "Words per row")):
        b = np.asarray(before[unit], dtype=np.int64)
        a = np.asarray(after[unit], dtype=np.int64)
        edges, log_scale = length_bins(np.concatenate([b, a]))
        if log_scale:  # zero-length rows are drawn in the first bin rather than vanishing
            b, a = np.maximum(b, 1), np.maximum(a, 1)
            ax.set_xscale("log")
        edges = np.asarray(edges)
        widths = np.diff(edges)
        if b.size:
            ax.stairs(np.histogram(b, edges)[0] / widths, edges, fill=True,
                      label=f"before cleaning ({b.size} rows)", **_BEFORE_STYLE)
        if a.size:
            ax.stairs(np.histogram(a, edges)[0] / widths, edges, linewidth=1.8, color=_AFTER_COLOR,
                      label=f"after cleaning ({a.size} rows)")
            ax.axvline(float(np.median(a)), color=_AFTER_COLOR, linestyle="--", linewidth=1,
                       label=f"median after: {np.median(a):g}")
        ax.set_title(title + (" (log scale)" if log_scale else ""))
        ax.set_xlabel(title.split(" per ")[0])
        ax.set_ylabel("Rows per length value")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def length_bins(values) -> tuple[list[float], bool]:
    """Histogram edges for integer lengths (at half-integers, so every bin holds whole lengths, at
    most 50 bins) and whether the x axis should be logarithmic (max >= LOG_SCALE_SPAN * min)."""
    import numpy as np

    low, high = int(values.min()), int(values.max())
    if high >= LOG_SCALE_SPAN * max(low, 1):
        return (np.unique(np.round(np.geomspace(1, high + 1, 40))) - 0.5).tolist(), True
    return (np.unique(np.round(np.linspace(low, high + 1, min(high - low + 2, 51)))) - 0.5).tolist(), False


def plot_label_distribution(before: Mapping[str, int], after: Mapping[str, int], path: Path) -> Path | None:
    """Side-by-side bars of rows per label before and after cleaning, in the order of ``before``
    (then labels only ``after`` has). None, and no file, when no row has a label."""
    labels = [*before, *(label for label in after if label not in before)]
    if not labels:
        return None
    shown = labels
    if len(labels) > MAX_LABELS:
        top = set(sorted(labels, key=lambda x: -(before.get(x, 0) + after.get(x, 0)))[:MAX_LABELS])
        shown = [label for label in labels if label in top]
    n = len(shown)
    fig = new_figure(min(max(5.0, 0.55 * n + 2.5), 20.0), 4.5)
    ax = fig.add_subplot()
    positions = list(range(n))
    width = 0.4
    bars_before = ax.bar([x - width / 2 for x in positions], [before.get(x, 0) for x in shown], width,
                         label="before cleaning", **_BEFORE_STYLE)
    bars_after = ax.bar([x + width / 2 for x in positions], [after.get(x, 0) for x in shown], width,
                        label="after cleaning", color=_AFTER_COLOR)
    if n <= 12:  # counts on the bars while they still fit
        for bars in (bars_before, bars_after):
            ax.bar_label(bars, fontsize=8)
    ax.set_xticks(positions, labels=[short_label(x) for x in shown])
    ax.tick_params(axis="x", labelrotation=45 if n > 4 else 0)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right" if n > 4 else "center")
    title = "Rows per label"
    if len(shown) < len(labels):
        title += f" ({len(shown)} most frequent of {len(labels)})"
    ax.set_title(title)
    ax.set_ylabel("Rows")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return save_figure(fig, path)
