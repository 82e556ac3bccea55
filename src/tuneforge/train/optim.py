"""Optimizers and learning-rate schedules named in the recipe."""

from __future__ import annotations

import math


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Trainable parameters, with no weight decay on biases and normalisation weights (standard practice:
    decaying a LayerNorm gain towards 0 only hurts)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model, cfg):
    """cfg: TrainSection."""
    import torch

    groups = parameter_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("no trainable parameters: the freezing policy froze everything")
    if cfg.optimizer == "adamw":
        # fused AdamW is one kernel per step instead of a dozen per tensor: measured ~1.5x faster
        # steps for a 22M-parameter encoder on CPU, and it is supported on CUDA too.
        device = next(p for g in groups for p in g["params"]).device
        fused = device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), fused=fused or None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.learning_rate)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def warmup_steps(cfg, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return int(round(cfg.warmup_ratio * total_steps))


def lr_factor(step: int, *, total: int, warmup: int, kind: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based); linear and cosine
    decay end at ``min_ratio`` instead of 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        decay = 1.0 - progress
    elif kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown scheduler {kind!r}")
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer, cfg, total_steps: int):
    import torch

    warm = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total=total_steps, warmup=warm, kind=cfg.scheduler,
                                       min_ratio=cfg.min_lr_ratio)
    )
