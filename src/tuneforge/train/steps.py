"""The small, shared, separately tested pieces of a training step: loss, accumulation, throughput.

Loss normalisation is the subtle part. With gradient accumulation and several processes, the
gradient of one optimizer step must equal the gradient of the mean loss over *all* examples in the
step, whatever the micro-batch sizes. So each micro-batch contributes ``sum of its losses`` divided by
the global example count of the whole step, times the world size because DDP averages gradients
over processes. Dividing each micro-batch by its own size (the common shortcut) over-weights a short
last batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TypeVar

from tuneforge.errors import TrainingDiverged

T = TypeVar("T")


def step_loss_scale(global_examples_in_step: int, world_size: int) -> float:
    """Factor turning a process's summed micro-batch loss into its share of the step's mean loss."""
    if global_examples_in_step <= 0:
        raise ValueError("an optimizer step needs at least one example")
    return world_size / global_examples_in_step


def accumulation_windows(batches: Iterable[T], steps: int) -> Iterator[list[T]]:
    """Group micro-batches into optimizer steps; the last window may be shorter."""
    window: list[T] = []
    for batch in batches:
        window.append(batch)
        if len(window) == steps:
            yield window
            window = []
    if window:
        yield window


def check_finite(loss_value: float, step: int, lr: float, precision: str) -> None:
    """Stop with advice instead of silently training a NaN model for hours."""
    if math.isfinite(loss_value):
        return
    hints = ["lower train.learning_rate", "keep train.max_grad_norm set (gradient clipping)"]
    if precision == "fp16":
        hints.insert(0, "use train.precision: bf16 or fp32 (fp16 overflows easily)")
    raise TrainingDiverged(
        f"loss became {loss_value} at step {step} (learning rate {lr:.3g}); training stopped. "
        f"Try: {'; '.join(hints)}. The last good checkpoint (if any) is kept for --resume."
    )


@dataclass
class Throughput:
    """Tokens/s and examples/s over a sliding window of recent steps (robust to a slow first step)."""

    window: int = 20
    _marks: list[tuple[float, int, int]] = field(default_factory=list)

    def update(self, tokens: int, examples: int, now: float | None = None) -> None:
        self._marks.append((time.perf_counter() if now is None else now, tokens, examples))
        del self._marks[: -self.window - 1]

    def reset(self) -> None:
        """Forget the window, e.g. after an evaluation pause that is not training time."""
        self._marks.clear()

    def rates(self) -> tuple[float, float]:
        """(tokens/s, examples/s) since the oldest mark in the window; zeros until two marks exist."""
        if len(self._marks) < 2:
            return 0.0, 0.0
        elapsed = self._marks[-1][0] - self._marks[0][0]
        if elapsed <= 0:
            return 0.0, 0.0
        tokens = sum(m[1] for m in self._marks[1:])
        examples = sum(m[2] for m in self._marks[1:])
        return tokens / elapsed, examples / elapsed
