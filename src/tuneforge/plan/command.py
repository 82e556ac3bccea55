"""The ``tuneforge plan`` command body: plan, fit the budget, optionally measure, print."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import RecipeError, TuneforgeError


def _has_key(path: str) -> bool:
    """Whether this version's recipe schema has the dotted key (another change may be adding it)."""
    from tuneforge.recipe import Recipe

    model = Recipe
    for part in path.split("."):
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        model = field.annotation
    return True


def _validated(suggestion, recipe_path: Path | None, overrides: list[str]):
    """Drop suggested overrides the recipe does not accept (with a note), when the recipe file is known."""
    if recipe_path is None or suggestion is None:
        return suggestion
    from tuneforge.recipe import load_recipe

    try:
        load_recipe(recipe_path, list(overrides) + suggestion.overrides)
    except RecipeError as exc:
        suggestion.notes.append(f"the recipe does not accept these overrides as they are: {exc}")
    return suggestion


def run_plan(recipe, *, recipe_path: Path | None = None, overrides: list[str] | None = None, device: str | None,
             memory: str | None, measure_steps: int, processes: int | None, shard: str | None,
             as_json: bool) -> dict:
    """Plan ``recipe``; print a table (or JSON); returns the JSON form."""
    from rich.console import Console

    from tuneforge.plan.core import default_device, default_parallelism, make_plan
    from tuneforge.plan.fit import parse_bytes, suggest
    from tuneforge.plan.report import print_plan, to_json

    launch_processes, launch_shard = default_parallelism()
    processes = processes or launch_processes
    shard = shard or launch_shard
    device = device or default_device()
    budget = parse_bytes(memory) if memory else None
    measured, data_dir, record = None, None, None
    if measure_steps:
        if device not in ("cpu", "cuda"):
            raise TuneforgeError(f"--measure runs the steps on this machine; use --device cpu or cuda, not {device}")
        if processes != 1:
            raise TuneforgeError("--measure runs one process; plan several with --processes, measure with 1")
        from tuneforge.plan.measure import measure

        record = measure(recipe, measure_steps)
        data_dir = Path(record["run_dir"]) / "data"  # the lengths of the data the steps ran on
    plan = make_plan(recipe, device=device, processes=processes, shard=shard, memory=budget, data_dir=data_dir)
    if plan.budget is not None and not plan.fits:
        suggestion = suggest(plan, plan.budget, recipe, has_key=_has_key)
        plan.suggestions = [_validated(suggestion, recipe_path, overrides or [])]
    if record is not None:
        from tuneforge.plan.measure import compare

        measured = compare(plan, record)
    out = to_json(plan, measured)
    if as_json:
        print(json.dumps(out, indent=2, default=float))
    else:
        print_plan(plan, Console(highlight=False, soft_wrap=True), measured)
    return out
