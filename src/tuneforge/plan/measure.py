"""``tuneforge plan --measure N``: run N real training steps of a recipe and record what the plan predicts.

The steps run through ``tuneforge.train.run.train`` in a child process (``python -m
tuneforge.plan.measure``), so the peak memory is that run's alone: on CPU the child's peak resident
set (``ru_maxrss`` of the child itself; the parent's ``RUSAGE_CHILDREN`` would be the maximum over
every child it ever waited for), on CUDA ``torch.cuda.max_memory_allocated``. The recipe runs with
``train.max_steps=N``, no export, into a temporary output directory, with evaluation off: the child
replaces the loop's evaluate-and-checkpoint call and the final evaluation with no-ops (evaluation is a
different phase of the plan, not a training step). It also wraps the loop's ``collate`` and progress
update to time every step and keep the shape of every micro-batch, so the plan can be evaluated at
exactly the batches that ran.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Steps whose time is the warm-up (kernel selection, the optimizer's state allocated): not timed.
WARMUP_STEPS = 1


def measure(recipe, steps: int, *, workdir: Path | None = None, timeout: float | None = None,
            threads: int | None = None, prelude: str | None = None) -> dict:
    """Run ``steps`` training steps of ``recipe`` in a child process; returns the child's record:
    ``peak_bytes``, ``device``, ``steps`` (each ``seconds``, ``cpu_seconds`` and ``shapes``: ``[batch,
    length]`` per micro-batch), ``baseline_bytes`` (peak before the model was built: imports and data),
    ``run_dir``. ``threads``: torch threads of the child (default: torch's default). ``prelude``: Python
    source the child runs before training (benchmarks use it to measure a "before" state, e.g. the loss
    on full logits: ``bench/causal_levers.py``)."""
    from tuneforge.errors import TuneforgeError

    if steps < WARMUP_STEPS + 1:
        raise TuneforgeError(f"--measure: needs at least {WARMUP_STEPS + 1} steps (the first is the warm-up)")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="tuneforge-measure-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = recipe.model_copy(update={
        "output_dir": workdir / "runs",
        "train": recipe.train.model_copy(update={"max_steps": steps, "log_every_steps": steps}),
        "export": recipe.export.model_copy(update={"enabled": False})})
    # pickled, not YAML: the recipe object as validated (a dump can carry keys that exclude each other)
    recipe_file, out_file = workdir / "recipe.pickle", workdir / "measured.json"
    recipe_file.write_bytes(pickle.dumps(run))
    out_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tuneforge.plan.measure", str(recipe_file), str(out_file), str(threads or 0),
           prelude or ""]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0 or not out_file.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise TuneforgeError(f"--measure: the training run failed (exit {done.returncode}):\n{tail}")
    record = json.loads(out_file.read_text())
    record["run_dir"] = str(workdir / "runs" / recipe.name)
    return record


def timed_steps(record: dict) -> list[dict]:
    """The measured steps after the warm-up."""
    return record["steps"][WARMUP_STEPS:]


# ------------------------------------------------------------------------------------------ the child

def _vm(field: str) -> int:
    """A VmRSS/VmHWM figure of this process in bytes (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(recipe_file: str, out_file: str, threads: int, prelude: str = "") -> None:
    import resource

    import torch

    if prelude:
        exec(compile(prelude, "<measure prelude>", "exec"), {})  # noqa: S102 - the caller's own benchmark code

    if threads:
        torch.set_num_threads(threads)
    import tuneforge.models.build as build
    import tuneforge.train.loop as loop
    import tuneforge.train.run as run
    recipe = pickle.loads(Path(recipe_file).read_bytes())  # written by measure() just before
    cuda = torch.cuda.is_available()
    steps: list[dict] = []
    current = {"start": None, "cpu": None, "shapes": []}
    record = {"device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(), "notes": []}

    collate = loop.collate

    def timed_collate(*args, **kwargs):
        if current["start"] is None:
            current["start"], current["cpu"] = time.perf_counter(), time.process_time()
        batch = collate(*args, **kwargs)
        current["shapes"].append(list(batch["input_ids"].shape))
        return batch

    update = loop.TrainProgress.update

    def timed_update(self, step, *args, **kwargs):
        if cuda:
            torch.cuda.synchronize()
        now, cpu = time.perf_counter(), time.process_time()
        # CPU seconds of the whole process: with one thread, what the step costs whatever else runs
        steps.append({"seconds": now - current["start"], "cpu_seconds": cpu - current["cpu"],
                      "shapes": current["shapes"], "hwm_bytes": _vm("VmHWM")})
        current["start"], current["shapes"] = None, []
        return update(self, step, *args, **kwargs)

    build_model = build.build_model

    def recorded_build(*args, **kwargs):
        record["baseline_bytes"] = _vm("VmHWM")
        return build_model(*args, **kwargs)

    loop.collate, loop.TrainProgress.update, build.build_model = timed_collate, timed_update, recorded_build
    # evaluation off: not a training step, and a phase the plan reports separately
    if hasattr(loop, "_evaluate_and_checkpoint"):
        loop._evaluate_and_checkpoint = lambda *a, **k: None
    else:
        record["notes"].append("loop._evaluate_and_checkpoint not found: evaluation ran")
    if hasattr(run, "_finish"):
        run._finish = lambda *args, **kwargs: args[-1]  # (..., result) -> result
    else:
        record["notes"].append("run._finish not found: the final evaluation ran")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run.train(recipe, overwrite=True)
    record["steps"] = steps
    record["peak_bytes"] = (torch.cuda.max_memory_allocated() if cuda
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out_file).write_text(json.dumps(record))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0,
           sys.argv[4] if len(sys.argv) > 4 else "")


# ----------------------------------------------------------------------------------- planned vs measured

def compare(plan, record: dict, *, cpu_time: bool = False) -> dict:
    """The plan evaluated at the batches that ran, against the measurement: the peak at the largest
    micro-batch seen, and the time of each step after the warm-up at its own micro-batch shapes.
    ``*_ratio`` is planned / measured. ``cpu_time``: a step's measured time is the process's CPU seconds
    (for one-thread runs on a shared machine, where wall time stretches with the others' load). Each
    timed step also gets the plan's features (FLOPs over the peak, kept activation bytes, micro-batches)
    for ``fit_time_constants``."""
    from dataclasses import replace

    from tuneforge.plan.estimate import (activation_bytes, dropout_elements, logit_elements, micro_batch_seconds,
                                         optimizer_traffic_bytes, step_flops, train_components)

    setup, cal = plan.setup, plan.calibration
    shapes = [tuple(s) for step in record["steps"] for s in step["shapes"]]
    batch, length = max(shapes, key=lambda s: s[0] * s[1])
    at_peak = replace(setup, micro_batch=batch, seq_peak=length, seq_mean=float(length), accumulation=1)
    parts = train_components(plan.arch, plan.params, at_peak, cal)
    if record["device"] == "cuda":  # max_memory_allocated: tensors only, not the CUDA context
        parts.pop("framework", None)
    planned_peak = sum(parts.values())
    steps, planned_total, measured_total = [], 0.0, 0.0
    update = optimizer_traffic_bytes(plan.params, setup)
    for step in timed_steps(record):
        seconds = step["cpu_seconds"] if cpu_time else step["seconds"]
        features = {"seconds": seconds, "wall_seconds": step["seconds"], "flops_over_peak": 0.0,
                    "activation_bytes": 0.0, "per_element_seconds": 0.0,
                    "optimizer_bytes": update, "micro_batches": len(step["shapes"])}
        planned = cal.step_overhead_s + (update / cal.bandwidth if cal.bandwidth else 0.0)
        for b, n in step["shapes"]:
            one = replace(setup, micro_batch=b, seq_mean=float(n), seq_peak=n, accumulation=1)
            flops = step_flops(plan.arch, plan.params, one, plan.config)
            kept, _ = activation_bytes(plan.arch, plan.params, one, b * n, n)
            drops = dropout_elements(plan.arch, plan.params, one, b * n, n)
            logits = logit_elements(plan.arch, one, b * n)
            if plan.peak_flops:
                planned += micro_batch_seconds(flops, kept, plan.peak_flops, cal, drops, logits, setup.threads,
                                               setup.precision)
                features["flops_over_peak"] += flops / plan.peak_flops
            features["activation_bytes"] += kept
            features["per_element_seconds"] += micro_batch_seconds(0.0, 0.0, 1.0, replace(cal, bandwidth=None),
                                                                   drops, logits, setup.threads)
        features["precision"] = setup.precision
        features["planned_seconds"] = planned if plan.peak_flops else None
        steps.append(features)
        planned_total += planned
        measured_total += seconds
    n = max(len(steps), 1)
    measured_step = measured_total / n
    planned_step = planned_total / n if plan.peak_flops else None
    return {
        "device": record["device"], "planned_peak_bytes": planned_peak, "measured_peak_bytes": record["peak_bytes"],
        "memory_ratio": planned_peak / record["peak_bytes"], "measured_baseline_bytes": record.get("baseline_bytes"),
        "largest_micro_batch": [batch, length], "planned_step_seconds": planned_step,
        "measured_step_seconds": measured_step,
        "time_ratio": (planned_step / measured_step) if planned_step else None,
        "timed_steps": len(steps), "steps": steps, "notes": record.get("notes", []),
        "planned_components": parts,  # at the largest micro-batch measured
    }


def fit_time_constants(rows: list[dict]) -> dict:
    """Least-squares fit (non-negative, relative error) of the CPU step-time constants on measured steps:
    ``seconds - per_element_seconds = flops_over_peak / mfu[precision] + (activation_bytes + optimizer_bytes)
    / bandwidth + step_overhead_s``; the per-element costs (dropout, vocabulary logits) are measured apart."""
    import numpy as np

    x, y = [], []
    for row in rows:
        for step in row["steps"]:
            fp32 = step.get("precision") == "fp32"
            x.append([step["flops_over_peak"] * (not fp32), step["flops_over_peak"] * fp32,
                      step["activation_bytes"] + step.get("optimizer_bytes", 0.0), 1.0])
            y.append(step["seconds"] - step.get("per_element_seconds", 0.0))
    from scipy.optimize import nnls

    x, y = np.asarray(x), np.asarray(y)
    w = 1.0 / np.maximum(y, 1e-3)  # relative error: every step counts alike, fast or slow
    coef, _ = nnls(x * w[:, None], y * w)
    coef = np.maximum(coef, 1e-12)
    fitted = x @ coef
    return {"mfu": float(1.0 / coef[0]), "mfu_fp32": float(1.0 / coef[1]), "bandwidth": float(1.0 / coef[2]),
            "step_overhead_s": float(coef[3]),
            "worst_relative_error": float(np.max(np.abs(fitted / y - 1.0))), "steps": int(len(y))}
