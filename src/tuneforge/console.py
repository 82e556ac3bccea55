"""Progress for long commands: a rich spinner or bar on a terminal, one plain line otherwise (CI logs
and files would get one giant redraw at the end from a bar). Training has its own, richer display
(``tuneforge.train.progress``)."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def status(text: str):
    """A spinner with ``text`` while the block runs."""
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        with console.status(text):
            yield
    else:
        print(text, file=sys.stderr, flush=True)
        yield


@contextlib.contextmanager
def progress_bar(text: str, total: int, *, unit: str = "items", transient: bool = False):
    """A bar over ``total`` ``unit``; yields ``advance(n)`` (``None`` off a terminal, where only the
    line ``<text> over <total> <unit>`` is printed)."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        print(f"{text} over {total} {unit}", file=sys.stderr, flush=True)
        yield None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn(text), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=transient) as progress:
        task = progress.add_task(text, total=total)
        yield lambda n: progress.advance(task, n)
