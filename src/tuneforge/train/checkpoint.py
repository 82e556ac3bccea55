"""Checkpoints: ``last`` (everything needed to resume exactly) and ``best`` (weights picked by a metric).

``last`` is Accelerate's full state (model, optimizer, scheduler, per-process RNG) plus our loop
counters in ``train_state.json``. It is written to a temporary folder and renamed into place, so a
run killed while saving still has the previous checkpoint. ``best`` keeps only trainable weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneforge.errors import TuneforgeError

STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """Loop counters; together with Accelerate's state they determine the rest of the run."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # global micro-batches of the current epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    recipe_hash: str = ""
    finished: bool = False
    history: list[dict] = field(default_factory=list)  # evaluation records, for the final report


def save_last(accelerator, state: TrainState, ckpt_dir: Path) -> Path:
    target = ckpt_dir / "last"
    tmp = ckpt_dir / "last.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        old = ckpt_dir / "last.old"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


def load_last(accelerator, ckpt_dir: Path, recipe_hash: str) -> TrainState:
    target = ckpt_dir / "last"
    if not (target / STATE_FILE).exists():
        raise TuneforgeError(f"--resume: no checkpoint to resume from in {target}")
    state = TrainState(**json.loads((target / STATE_FILE).read_text()))
    if state.recipe_hash and state.recipe_hash != recipe_hash:
        raise TuneforgeError(
            f"--resume: the recipe differs from the one that wrote {target} (only train.halt_after_steps may "
            "change); use the same recipe and overrides, or start a new run name"
        )
    accelerator.load_state(str(target))
    return state


def save_best(model, ckpt_dir: Path, step: int, metrics: dict) -> None:
    from safetensors.torch import save_file

    from tuneforge.models.build import trainable_state_dict

    best = ckpt_dir / "best"
    best.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state_dict(model), str(best / "trainable.safetensors"))
    (best / "best.json").write_text(json.dumps({"step": step, "metrics": metrics}, indent=2))


def load_best(model, ckpt_dir: Path) -> dict | None:
    from safetensors.torch import load_file

    from tuneforge.models.build import load_trainable_state_dict

    best = ckpt_dir / "best"
    if not (best / "trainable.safetensors").exists():
        return None
    load_trainable_state_dict(model, load_file(str(best / "trainable.safetensors")))
    return json.loads((best / "best.json").read_text())
