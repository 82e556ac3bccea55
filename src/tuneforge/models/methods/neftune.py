"""NEFTune: noisy input embeddings during training (``train.neftune_alpha``), under every method."""

from __future__ import annotations

#: Where the noise scale lives: on the embedding module itself, so the hook below is one module-level function
#: and ``copy.deepcopy(model)`` gives a copy whose hook reads the copy's setting (as the adapters' hooks do).
_NEFTUNE_ATTR = "tuneforge_neftune_alpha"


def add_neftune(model, alpha: float):
    """NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"): while the input
    embedding module is in training mode, add uniform noise in [-1, 1] x alpha / sqrt(L x d) to its output (L:
    the batch's padded sequence length, d: the embedding width; TRL's and transformers' scaling). Eval mode is
    untouched. A forward hook, so it works under every method (the embedding is the base model's) and adds no
    parameter; ``remove_neftune`` takes it off before export. Returns ``model``."""
    if alpha <= 0:
        raise ValueError(f"train.neftune_alpha must be positive, got {alpha}")
    embedding = model.get_input_embeddings()
    remove_neftune(model)  # a second call replaces the setting instead of stacking noise
    setattr(embedding, _NEFTUNE_ATTR, float(alpha))
    embedding.register_forward_hook(_neftune_noise)
    return model


def remove_neftune(model) -> None:
    """Take NEFTune's hook off ``model``'s input embeddings (no-op when there is none)."""
    embedding = model.get_input_embeddings()
    for key in [k for k, hook in embedding._forward_hooks.items() if hook is _neftune_noise]:
        del embedding._forward_hooks[key]
    if hasattr(embedding, _NEFTUNE_ATTR):
        delattr(embedding, _NEFTUNE_ATTR)


def _neftune_noise(module, args, output):
    if not module.training:
        return None
    import math

    import torch

    bound = getattr(module, _NEFTUNE_ATTR) / math.sqrt(output.size(-2) * output.size(-1))
    return output + torch.zeros_like(output).uniform_(-bound, bound)
