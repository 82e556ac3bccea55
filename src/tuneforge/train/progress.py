"""Live progress: a rich bar with loss, learning rate, tokens/s and ETA on a terminal; plain log lines
otherwise (CI logs and files would get one giant redraw at the end from a bar)."""

from __future__ import annotations

import sys
import time


class TrainProgress:
    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True, log_every: int = 10,
                 console=None):
        self.total = total_steps
        self.enabled = enabled
        self.log_every = log_every
        self._start = time.perf_counter()
        self._start_step = start_step
        self._progress = None
        self._task = None
        if not enabled:
            return
        from rich.console import Console

        self.console = console or Console(stderr=True)
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s  "
                           "{task.fields[eff]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step,
                                                 loss="-", lr="-", tps="-", eff="")

    def __enter__(self):
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, mfu: float | None = None,
               tflops: float | None = None) -> None:
        if not self.enabled:
            return
        # "MFU 23%" against the cached matmul peak; the achieved model TFLOP/s when no peak is cached
        eff = "" if not tokens_per_s else (f"MFU {100 * mfu:.3g}%" if mfu is not None
                                           else f"{tflops:.3g} TFLOP/s" if tflops is not None else "")
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                  tps=f"{tokens_per_s:,.0f}", eff=eff)
        elif step % self.log_every == 0 or step == self.total:
            done = step - self._start_step
            elapsed = time.perf_counter() - self._start
            eta = elapsed / done * (self.total - step) if done else 0.0
            eff = f"{eff}  " if eff else ""
            print(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  {eff}"
                  f"elapsed {elapsed:.0f}s  eta {eta:.0f}s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)
