"""Parameter bookkeeping shared by model building, the methods, quantisation and checkpoints: how many
parameters train, and the state dict of only the trainable ones (what the best checkpoint holds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return f"trainable parameters: {self.trainable:,} / {self.total:,} ({share:.2f}%)"


def count_parameters(model) -> ParamCount:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParamCount(trainable, total)


def trainable_state_dict(model) -> dict:
    """Only the parameters training changes: enough to restore the best checkpoint, and for LoRA a few MB
    instead of the whole model. Frozen weights are by definition identical to the loaded ones."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model, state: dict) -> None:
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in state]
    if missing:
        raise RuntimeError(f"checkpoint lacks trainable parameters: {missing[:5]}")
    import torch

    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
