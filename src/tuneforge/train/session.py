"""What every stage of a training run shares: the Accelerate state, the run directory, the console.

``start(recipe, resume=..., overwrite=...)`` checks what can be checked before any work (the attention
kernel, checkpointing and offload against this machine, what the loop cannot do under FSDP or
DeepSpeed), prepares the run directory (a fresh one, or the one ``--resume`` continues) and writes
the resolved recipe into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tuneforge.atomic import atomic_write_text
from tuneforge.errors import TuneforgeError


@dataclass
class Session:
    recipe: Any
    accelerator: Any
    precision: str  # resolved: fp32, bf16 or fp16
    resume: bool  # a checkpoint exists and training continues from it
    recipe_hash: str
    say: Callable[..., None]  # the console on the main process; a no-op on the others

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    @property
    def device_type(self) -> str:
        return self.accelerator.device.type


def start(recipe, *, resume: bool, overwrite: bool) -> Session:
    from tuneforge.models.build import check_training_options
    from tuneforge.recipe import recipe_to_yaml
    from tuneforge.train.distributed import check_distributed_options

    accelerator, precision = _make_accelerator(recipe.train.precision)
    # attention kernel, checkpointing and offload vs this machine: before the run directory is touched
    check_training_options(recipe, device_type=accelerator.device.type, precision=precision)
    check_distributed_options(recipe, accelerator)  # what the loop cannot do under FSDP / DeepSpeed
    is_main = accelerator.is_main_process
    say = console().print if is_main else (lambda *a, **k: None)
    resume = _prepare_run_dir(recipe.run_dir, resume=resume, overwrite=overwrite, is_main=is_main)
    accelerator.wait_for_everyone()
    if is_main:
        atomic_write_text(recipe.run_dir / "recipe.yaml", recipe_to_yaml(recipe))
    return Session(recipe=recipe, accelerator=accelerator, precision=precision, resume=resume,
                   recipe_hash=recipe_hash(recipe), say=say)


def recipe_hash(recipe) -> str:
    """Identity of a run for --resume: everything but what may change without changing the result: the halt
    point, and the memory levers (activation checkpointing and offload recompute or move the same
    values), so a run that ran out of memory resumes with them switched on."""
    data = recipe.model_dump(mode="json")
    for key in ("halt_after_steps", "gradient_checkpointing", "activation_offload"):
        data["train"].pop(key, None)
    data["export"] = None  # exporting or not does not change training
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def quiet_libraries() -> None:
    """transformers' per-file progress bars and 'newly initialized' warnings drown our own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


#: libraries whose log lines (load reports, "Removed shared tensor ... while saving", kernel-loader notes) go
#: to the run's library.log instead of the console
LIBRARY_LOGGERS = ("transformers", "accelerate", "peft", "datasets", "bitsandbytes", "torchao", "kernels",
                   "safetensors", "py.warnings")


@contextlib.contextmanager
def library_log(run_dir: Path | None):
    """For the duration of a run: library loggers and Python warnings (deprecations, "should be OK" notes) go
    to ``<run_dir>/library.log``, not the console, where tuneforge's own lines stay readable. None (the
    other processes of a distributed run): unchanged. Everything is restored afterwards."""
    import logging

    if run_dir is None:
        yield
        return
    handler = logging.FileHandler(Path(run_dir) / "library.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = {}
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate, logger.level)
        logger.handlers, logger.propagate = [handler], False
        if logger.level == logging.NOTSET or logger.level > logging.WARNING:
            logger.setLevel(logging.WARNING)
    capturing = logging.captureWarnings
    capturing(True)
    try:
        yield
    finally:
        capturing(False)
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        handler.close()


def _prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, is_main: bool) -> bool:
    """Check and create the run directory; returns whether training resumes from a checkpoint."""
    from tuneforge.atomic import remove_dir, remove_stale
    from tuneforge.train.checkpoint import has_checkpoint

    if is_main:
        remove_stale(run_dir)  # what a killed --overwrite left (see below)
    if resume:
        if has_checkpoint(run_dir / "checkpoints"):
            return True
        # Killed before its first checkpoint was complete (or never started): there is nothing to
        # continue, and starting over is what the user wants; drop what the killed attempt logged.
        if is_main:
            console().print(f"--resume: {run_dir} has no complete checkpoint yet; starting the run from scratch")
            remove_dir(run_dir / "checkpoints")
            for name in ("metrics.jsonl", "samples.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
        return False
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TuneforgeError(
                f"run directory {run_dir} already exists; use --resume to continue it, --overwrite to "
                "replace it, or name=<new name> for a new run"
            )
        if is_main:
            remove_dir(run_dir)  # never half-deleted under its name: its checkpoint could look complete
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return False


def _fresh_accelerator_state() -> None:
    """train() may run many times in one process (tests, the tuner) with different precisions, and
    Accelerate keeps a process-wide singleton that refuses a change; start each single-process run from a
    clean one. Under a distributed launch the state (and its process group) must survive."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _make_accelerator(requested_precision: str):
    import torch

    from tuneforge.train.distributed import make_accelerator
    from tuneforge.models.precision import resolve_precision

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(requested_precision, device_type)
    _fresh_accelerator_state()
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # cpu=True on CPU-only machines is what lets Accelerate form a gloo process group under
    # `accelerate launch --multi_gpu --num_processes N` / torchrun (MULTI_CPU); on one process it is a no-op.
    # An FSDP launch (configs/accelerate/fsdp2.yaml) gets FSDP2, on CPUs too (train/distributed.py).
    return make_accelerator(mixed, cpu=device_type == "cpu"), precision
