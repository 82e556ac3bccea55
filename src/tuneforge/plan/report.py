"""The plan as a rich table (``tuneforge plan``) or JSON (``--json``)."""

from __future__ import annotations

from tuneforge.plan.core import Plan
from tuneforge.plan.estimate import achievable_mfu

#: What each component holds, for the table.
COMPONENT_NOTES = {
    "framework": "Python, libraries, data stage",
    "weights": "fp32 master weights (or a 4/8-bit base)",
    "autocast copies": "bf16/fp16 copies of matmul weights",
    "gradients": "fp32, trainable parameters",
    "optimizer": "optimizer state",
    "activations": "kept for the backward pass",
    "backward workspace": "gradients of activations in flight",
    "loss": "logits and their fp32 loss",
    "allocator": "freed memory malloc keeps once steps repeat (CPU)",
    "kv cache": "keys and values of the generation batch",
}


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.3g} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def to_json(plan: Plan, measured: dict | None = None) -> dict:
    est, setup = plan.estimate, plan.setup
    out = {
        "recipe": plan.recipe_name,
        "device": {"name": plan.device.name, "kind": plan.device.kind, "description": plan.device.description,
                   "memory_bytes": plan.device.memory_bytes, "peak_flops": plan.peak_flops},
        "precision": plan.precision, "attention": plan.attention, "config": plan.config_source,
        "model": {"family": plan.arch.family, "model_type": plan.arch.model_type, "layers": plan.arch.layers,
                  "hidden": plan.arch.hidden, "intermediate": plan.arch.intermediate, "heads": plan.arch.heads,
                  "kv_heads": plan.arch.kv_heads, "vocab": plan.arch.vocab,
                  "parameters": plan.params.total, "trainable": plan.params.trainable},
        "setup": {"processes": setup.processes, "shard": setup.shard, "micro_batch": setup.micro_batch,
                  "accumulation": setup.accumulation, "peak_length": setup.seq_peak, "mean_length": setup.seq_mean,
                  "checkpointing": setup.checkpointing, "optimizer": setup.optimizer,
                  "quantize_bits": setup.quantize_bits, "loss_chunk_rows": setup.loss_chunk_rows},
        "data": None if plan.data is None else {"source": plan.data.source, "examples": plan.data.examples,
                                                "peak_length": plan.data.peak_length,
                                                "mean_length": plan.data.mean_length},
        "memory": {"peak_bytes": est.peak, "peak_phase": est.peak_phase,
                   "training": est.components, "evaluation": est.eval_components,
                   "generation": est.generation_components},
        "time": {"flops_per_step": est.flops_per_step, "step_seconds": est.step_seconds, "steps": est.steps,
                 "total_seconds": est.total_seconds},
        "calibration": {"mfu": achievable_mfu(plan.calibration, plan.precision),
                        "bandwidth": plan.calibration.bandwidth,
                        "step_overhead_s": plan.calibration.step_overhead_s, "source": plan.calibration.source},
        "budget_bytes": plan.budget, "fits": plan.fits,
        "suggestion": None, "notes": plan.notes,
    }
    if plan.suggestions:
        s = plan.suggestions[0]
        out["suggestion"] = {"overrides": s.overrides, "reasons": s.reasons, "peak_bytes": s.peak,
                             "step_seconds": s.step_seconds, "fits": s.fits, "notes": s.notes}
    if measured is not None:
        out["measured"] = {k: v for k, v in measured.items() if k != "steps"}
    return out


def print_plan(plan: Plan, console, measured: dict | None = None) -> None:
    from rich.table import Table

    est, setup = plan.estimate, plan.setup
    console.print(f"[bold]{plan.recipe_name}[/]: {plan.arch.model_type or plan.arch.family}, "
                  f"{plan.params.total:,} parameters ({plan.params.trainable:,} trainable), "
                  f"on {plan.device.name} ({plan.device.description}), {plan.precision}, attention {plan.attention}")
    lengths = (f"longest micro-batch {setup.micro_batch} x {setup.seq_peak} tokens, mean length "
               f"{setup.seq_mean:.1f}" + (" (prepared data)" if plan.data else " (model.max_length)"))
    console.print(f"per process: {lengths}; {setup.accumulation} accumulation step(s); "
                  f"{setup.processes} process(es), sharding {setup.shard}"
                  + ("; gradient checkpointing" if setup.checkpointing else ""))
    table = Table(title=f"peak memory per process: {human_bytes(est.peak)} ({est.peak_phase})")
    table.add_column("component")
    table.add_column("bytes", justify="right")
    table.add_column("share", justify="right")
    table.add_column("what")
    for name, value in est.components.items():
        table.add_row(name, human_bytes(value), f"{100 * value / est.train_peak:.1f}%", COMPONENT_NOTES.get(name, ""))
    table.add_row("[bold]training step[/]", f"[bold]{human_bytes(est.train_peak)}[/]", "100%", "")
    table.add_row("evaluation", human_bytes(est.eval_peak), "", f"batch {setup.eval_batch}, no gradients")
    if est.generation_components:
        gen = setup.generation
        table.add_row("generation", human_bytes(est.generation_peak), "",
                      f"batch {gen[0]}, KV cache {human_bytes(est.generation_components['kv cache'])}")
    console.print(table)
    if est.step_seconds is not None:
        total = f"; {est.steps:,} steps: {human_seconds(est.total_seconds)}" if est.steps else \
            "; total unknown (run `tuneforge prepare` for the number of steps)"
        console.print(f"time: {est.flops_per_step / 1e12:.3g} TFLOP per step, {human_seconds(est.step_seconds)} "
                      f"per step at {100 * achievable_mfu(plan.calibration, plan.precision):.0f}% of the "
                      f"{plan.precision} matmul peak "
                      f"({plan.peak_flops / 1e12:.3g} TFLOP/s){total}")
    if plan.budget is not None:
        verdict = "[green]fits[/]" if plan.fits else "[red]does not fit[/]"
        console.print(f"memory budget {human_bytes(plan.budget)}: {verdict}")
    for s in plan.suggestions:
        console.print(("to fit: " if s.fits else "closest: ") + s.command_line()
                      + f"  (peak {human_bytes(s.peak)}, {human_seconds(s.step_seconds)} per step)")
        for reason in s.reasons:
            console.print(f"  - {reason}")
        for note in s.notes:
            console.print(f"  note: {note}")
    for note in plan.notes:
        console.print(f"note: {note}")
    if measured is not None:
        console.print(f"measured ({measured['timed_steps']} timed steps, largest micro-batch "
                      f"{measured['largest_micro_batch'][0]} x {measured['largest_micro_batch'][1]}): peak "
                      f"{human_bytes(measured['measured_peak_bytes'])} vs planned "
                      f"{human_bytes(measured['planned_peak_bytes'])} (ratio {measured['memory_ratio']:.2f}); step "
                      f"{human_seconds(measured['measured_step_seconds'])} vs planned "
                      f"{human_seconds(measured['planned_step_seconds'])}"
                      + (f" (ratio {measured['time_ratio']:.2f})" if measured.get("time_ratio") else ""))
