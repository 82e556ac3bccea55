"""Checkpoints: ``last`` (everything needed to resume exactly) and ``best`` (weights picked by a metric).

``last`` is Accelerate's full state (model, optimizer, scheduler, per-process RNG) plus our loop
counters in ``train_state.json``. A kill can land anywhere in a save, so (see ``tuneforge.atomic``):

1. every process writes its part into ``last.tmp``; the main process fsyncs it all and writes
   ``COMPLETE`` (the step) last: only a folder with that marker is a state to resume from;
2. ``last.tmp`` is swapped in as ``last`` (an atomic exchange on Linux; elsewhere ``last`` ->
   ``last.old``, ``last.tmp`` -> ``last``), and the previous state is deleted.

So at any instant at least one complete state exists among ``last``, ``last.tmp`` and ``last.old``
once the first save has finished. ``settle`` (run by the main process before each save and before a
resume) puts the newest complete one at ``last`` and deletes the rest: the killed save is finished
if its marker was written, else discarded. ``best`` keeps only trainable weights and ``best.json``,
written as one folder swap so that they can never come from different steps (``tuneforge.models.best``,
which ``tuneforge export`` reads too).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneforge.atomic import atomic_write_json, fsync_tree, replace_dir
from tuneforge.errors import TuneforgeError

STATE_FILE = "train_state.json"
MARKER = "COMPLETE"  # written last, after everything else of a state is on disk
LAST, TMP, OLD = "last", "last.tmp", "last.old"


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


def _is_complete(folder: Path) -> bool:
    # `last` written before markers existed counts too: it was only ever renamed into place whole.
    return (folder / STATE_FILE).is_file() and ((folder / MARKER).is_file() or folder.name == LAST)


def _step(folder: Path) -> int:
    return json.loads((folder / STATE_FILE).read_text())["global_step"]


def newest_complete(ckpt_dir: Path) -> Path | None:
    """The complete state with the highest step among last, last.tmp, last.old (``last`` on a tie)."""
    found = [ckpt_dir / name for name in (LAST, TMP, OLD) if _is_complete(ckpt_dir / name)]
    return max(found, key=_step, default=None)


def has_checkpoint(ckpt_dir: Path) -> bool:
    return newest_complete(Path(ckpt_dir)) is not None


def settle(ckpt_dir: Path) -> None:
    """Finish or discard a save that was killed (main process only): afterwards ``last`` is the newest
    complete state, if there is one, and no last.tmp / last.old is left."""
    newest = newest_complete(ckpt_dir)
    last = ckpt_dir / LAST
    if newest is not None and newest != last:
        if newest.name == OLD:  # killed between the fallback's two renames, last.tmp not yet complete
            shutil.rmtree(last, ignore_errors=True)
            newest.rename(last)
        else:  # last.tmp has its marker: the swap itself was killed; do it now
            replace_dir(newest, last)
    for name in (TMP, OLD):  # the marker goes first: a deletion killed midway leaves no "complete" state
        (ckpt_dir / name / MARKER).unlink(missing_ok=True)
        shutil.rmtree(ckpt_dir / name, ignore_errors=True)


def save_last(accelerator, state: TrainState, ckpt_dir: Path) -> Path:
    target, tmp = ckpt_dir / LAST, ckpt_dir / TMP
    # The folder name is shared by every process (each writes its own RNG file into it), so unlike
    # tuneforge.atomic's per-pid temporaries it is cleaned by the main process before everyone writes.
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        settle(ckpt_dir)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's files are written before the marker says so
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, asdict(state))
        fsync_tree(tmp)
        atomic_write_json(tmp / MARKER, {"step": state.global_step})
        replace_dir(tmp, target)  # last.tmp -> last; the previous state is deleted
    accelerator.wait_for_everyone()
    return target


def load_last(accelerator, ckpt_dir: Path, recipe_hash: str) -> TrainState:
    if accelerator.is_main_process and ckpt_dir.is_dir():
        settle(ckpt_dir)
    accelerator.wait_for_everyone()  # nobody reads `last` while the main process may still move it
    target = ckpt_dir / LAST
    if not _is_complete(target):
        raise TuneforgeError(f"--resume: no complete checkpoint to resume from in {ckpt_dir}")
    state = TrainState(**json.loads((target / STATE_FILE).read_text()))
    if state.recipe_hash and state.recipe_hash != recipe_hash:
        raise TuneforgeError(
            f"--resume: the recipe differs from the one that wrote {target} (only train.halt_after_steps, "
            "train.gradient_checkpointing and train.activation_offload may change); use the same recipe and overrides, or start a new run name"
        )
    accelerator.load_state(str(target))
    return state
