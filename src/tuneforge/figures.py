"""Figure helpers shared by every tuneforge plot (evaluation reports, the data report).

matplotlib is imported inside ``new_figure`` (it costs ~0.5 s and the CLI must start fast). We draw
on ``matplotlib.figure.Figure`` with an Agg canvas instead of pyplot: no window can ever open, and
no figure is left registered in pyplot's global state (which leaks memory in long runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

DPI = 120
# Long label names are shortened on the axes so they cannot squeeze the plot itself.
MAX_TICK_LABEL_CHARS = 24


def new_figure(width: float, height: float):
    """A Figure bound to the Agg canvas, independent of pyplot."""
    import matplotlib

    # Select Agg as asked for headless use, but only while pyplot is not loaded: switching the
    # backend under an already-imported pyplot (a notebook, say) would close the user's figures.
    # Our figures do not depend on the backend either way, since they get their own Agg canvas.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" on top of tight_layout: a safety net so long rotated labels never clip.
    fig.savefig(path, dpi=DPI, bbox_inches="tight", format="png")
    return path


def short_label(label: str) -> str:
    """``label`` as a string, cut to ``MAX_TICK_LABEL_CHARS`` with an ellipsis."""
    label = str(label)
    if len(label) <= MAX_TICK_LABEL_CHARS:
        return label
    return label[: MAX_TICK_LABEL_CHARS - 1] + "…"
