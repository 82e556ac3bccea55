"""``tuneforge plan``: the memory and time a recipe's training needs, estimated before any work.

No weight is loaded: the model is built on the ``meta`` device from its config and the recipe's method
is applied to it (``plan.model``); the arithmetic (``plan.estimate``) turns shapes and parameter counts
into bytes per component and seconds per step; ``plan.fit`` finds the cheapest recipe changes that fit
a memory budget; ``plan.measure`` runs a few real steps to check the plan. docs/plan.md has the formulas
and the measured accuracy.

``warn_if_too_big(recipe)`` is the one-line check ``tuneforge run`` prints before it starts.
"""

from __future__ import annotations

from tuneforge.plan.core import GPUS, Plan, make_plan

__all__ = ["GPUS", "Plan", "make_plan", "warn_if_too_big"]


def warn_if_too_big(recipe, *, device: str | None = None) -> str | None:
    """A one-line warning when the plan's peak for ``recipe`` exceeds this machine's available memory
    (RAM on CPU, the GPU's memory on CUDA), else None. Never raises: a plan that cannot be made (an
    unusual model, a missing file) must not stop a run; that run then finds out for itself."""
    try:
        import os

        from tuneforge.plan.core import default_device, default_parallelism
        from tuneforge.plan.report import human_bytes

        processes, shard = default_parallelism()
        plan = make_plan(recipe, device=device or default_device(), processes=processes, shard=shard)
        budget = plan.device.memory_bytes
        if os.environ.get("TUNEFORGE_PLAN_MEMORY"):  # tests and odd machines: pretend this much is available
            from tuneforge.plan.fit import parse_bytes

            budget = parse_bytes(os.environ["TUNEFORGE_PLAN_MEMORY"])
        if budget is None or plan.estimate.peak <= budget:
            return None
        bound = "" if plan.data else ", an upper bound until the data is prepared"
        return (f"warning: the plan puts this run's peak memory at {human_bytes(plan.estimate.peak)} per process"
                f"{bound}, more than the {human_bytes(budget)} available on {plan.device.name}; "
                f"`tuneforge plan RECIPE --memory {human_bytes(budget).replace(' ', '')}` lists changes that fit")
    except Exception:  # noqa: BLE001 - a warning must never break the run it warns about
        return None
