"""``--memory BUDGET``: does the plan fit, and the smallest set of recipe changes that makes it fit.

Changes are tried in order of what they cost the run, each added only while the plan is still over
the budget (``suggest``):

0. when the evaluation batch alone is over: a smaller ``train.eval_batch_size`` (costs nothing in training);
1. ``train.gradient_checkpointing=true``: activations of one block instead of all, ~1/3 more compute;
2. a 4-bit base (``model.quantize.bits=4``, methods lora/dora only): the frozen linear weights at about
   half a byte, some accuracy risk and dequantisation time;
3. a smaller micro-batch with more accumulation steps, the global batch (``train.batch_size x
   train.gradient_accumulation_steps``) unchanged: the largest micro-batch that fits, slower on small ones;
4. a shorter ``model.max_length`` (last: it changes what the model sees): the longest that fits.

The result is a list of ``key=value`` overrides for ``tuneforge run``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from tuneforge.errors import TuneforgeError
from tuneforge.plan.estimate import Setup, estimate

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
#: Shortest model.max_length the plan suggests.
MIN_MAX_LENGTH = 16


def parse_bytes(text: str) -> float:
    """``24GiB``, ``24GB``, ``1.5g``, ``800MiB`` or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise TuneforgeError(f"--memory {text!r}: expected a size such as 24GiB, 16GB or 800MiB")
    return float(match.group(1)) * _UNITS[unit]


@dataclass
class Suggestion:
    """Recipe overrides that make the plan fit (or the most that could be done), and the result."""

    overrides: list[str]
    reasons: list[str]
    peak: float
    step_seconds: float | None
    fits: bool
    notes: list[str] = field(default_factory=list)

    def command_line(self) -> str:
        return " ".join(self.overrides)


def _peak(plan, setup: Setup):
    est = estimate(plan.arch, plan.params, setup, plan.calibration, plan.config, plan.peak_flops, plan.estimate.steps)
    return est.peak, est.step_seconds


def _eval_peak(plan, setup: Setup) -> float:
    from tuneforge.plan.estimate import eval_components

    return sum(eval_components(plan.arch, plan.params, setup, plan.calibration).values())


def _divisors_below(n: int) -> list[int]:
    return [d for d in range(n - 1, 0, -1) if n % d == 0]


def suggest(plan, budget: float, recipe, *, has_key=None) -> Suggestion | None:
    """The changes that bring ``plan`` (from ``core.make_plan``) under ``budget`` bytes; None when it fits
    already. ``has_key(path)``: whether this tree's recipe has a key (e.g. ``train.gradient_checkpointing``);
    a change whose key it lacks is skipped with a note."""
    if plan.estimate.peak <= budget:
        return None
    has_key = has_key or (lambda path: True)
    setup, overrides, reasons, notes = plan.setup, [], [], []
    peak, seconds = plan.estimate.peak, plan.estimate.step_seconds

    def done() -> bool:
        return peak <= budget

    # 0. a smaller evaluation batch, when evaluation is what is over
    if not setup.eval_auto and plan.estimate.eval_peak > budget:
        size = setup.eval_batch
        while size > 1 and _eval_peak(plan, replace(setup, eval_batch=size)) > budget:
            size //= 2
        if size < setup.eval_batch:
            setup = replace(setup, eval_batch=size)
            peak, seconds = _peak(plan, setup)
            overrides.append(f"train.eval_batch_size={size * setup.processes}")
            reasons.append(f"evaluation batch {size * setup.processes}: evaluation needs no gradients, only smaller "
                           "batches")
    # 1. gradient checkpointing
    if not setup.checkpointing and recipe.method != "prefix":
        if has_key("train.gradient_checkpointing"):
            setup = replace(setup, checkpointing=True)
            peak, seconds = _peak(plan, setup)
            overrides.append("train.gradient_checkpointing=true")
            reasons.append("gradient checkpointing: keep each block's input only, recompute it in the backward pass")
        else:
            notes.append("gradient checkpointing would help, but this version has no train.gradient_checkpointing")
    # 2. a 4-bit base, for LoRA methods
    if not done() and recipe.method in ("lora", "dora") and setup.quantize_bits != 4 and plan.params.quantizable:
        if has_key("model.quantize"):
            setup = replace(setup, quantize_bits=4, double_quant=True)
            peak, seconds = _peak(plan, setup)
            overrides.append("model.quantize.bits=4")
            reasons.append("4-bit base (QLoRA): the frozen linear weights at ~0.5 byte each")
        else:
            notes.append("a 4-bit base would help, but this version has no model.quantize")
    # 3. smaller micro-batch, same global batch
    if not done():
        cfg = recipe.train
        global_batch = cfg.batch_size * cfg.gradient_accumulation_steps
        candidates = [b for b in _divisors_below(cfg.batch_size) if b >= setup.processes]
        chosen = None
        for b in candidates:
            trial = replace(setup, micro_batch=math.ceil(b / setup.processes),
                            accumulation=global_batch // b)
            chosen = (b, trial)
            if _peak(plan, trial)[0] <= budget:
                break
        if chosen is not None:
            b, setup = chosen
            peak, seconds = _peak(plan, setup)
            overrides += [f"train.batch_size={b}", f"train.gradient_accumulation_steps={global_batch // b}"]
            reasons.append(f"micro-batch {b} x {global_batch // b} accumulation steps: the same global batch "
                           f"of {global_batch}")
    # 4. shorter sequences
    if not done():
        length = recipe.model.max_length // 2
        chosen = None
        while length >= MIN_MAX_LENGTH:
            trial = replace(setup, seq_peak=min(setup.seq_peak, length), seq_mean=min(setup.seq_mean, length),
                            eval_seq=min(setup.eval_seq, length))
            chosen = (length, trial)
            if _peak(plan, trial)[0] <= budget:
                break
            length //= 2
        if chosen is not None:
            length, setup = chosen
            peak, seconds = _peak(plan, setup)
            overrides.append(f"model.max_length={length}")
            reasons.append(f"model.max_length {length}: longer examples are cut")
    if not done():
        notes.append("does not fit even with every change above: a device with more memory, more processes with "
                     "--shard zero3/fsdp, or a smaller model")
    return Suggestion(overrides, reasons, peak, seconds, done(), notes)
