"""The ``best`` checkpoint of a run: the trainable weights at the best evaluation, and ``best.json``.

``<run>/checkpoints/best/`` holds ``trainable.safetensors`` (only the parameters training changes:
``params.trainable_state_dict``; for LoRA a few MB) and ``best.json`` (``{"step": ..., "metrics": ...}``).
The training loop writes it (``save_best``); the run's final evaluation and ``tuneforge export`` read it
back into a rebuilt model (``load_best``). Both sides live here, below training and export, so that the
export reads a run directory without importing the training package. Written as one folder swap
(``tuneforge.atomic``), so the weights and ``best.json`` can never come from different steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.atomic import recover_dir, staged_dir


def save_best(weights: dict, ckpt_dir: Path, step: int, metrics: dict) -> None:
    """Weights and best.json as one folder swap: a kill leaves the previous best whole, or the new one.
    ``weights``: the trainable parameters, whole (``tuneforge.train.distributed.trainable_weights``, which
    gathers them from every process when the model is sharded)."""
    from safetensors.torch import save_file

    with staged_dir(ckpt_dir / "best") as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        (tmp / "best.json").write_text(json.dumps({"step": step, "metrics": metrics}, indent=2))


def load_best(model, ckpt_dir: Path) -> dict | None:
    """Load the best checkpoint's trainable weights (``save_best``) into ``model`` (built like the trained
    one: same method, same trainable parameters); returns its ``best.json`` (step, metrics), or None when
    ``ckpt_dir`` has no best checkpoint."""
    from safetensors.torch import load_file

    from tuneforge.models.params import load_trainable_state_dict

    best = ckpt_dir / "best"
    recover_dir(best)  # a swap killed halfway (platforms without an atomic exchange)
    if not (best / "trainable.safetensors").exists():
        return None
    load_trainable_state_dict(model, load_file(str(best / "trainable.safetensors")))
    return json.loads((best / "best.json").read_text())
