"""What every PEFT method shares: wrapping the model with ``peft.get_peft_model`` and the errors around it.

A PEFT method module supplies ``build(model, cfg, ctx, task, save) -> (peft config, recipe key)`` (``task``:
peft's TaskType for the recipe's task, None for masked LM; ``save``: the new task head's module names for
``modules_to_save``, or None) and optional hooks; ``peft_apply`` turns them into a ``Method.apply``.

The task head: classification, regression, token_classification and extractive_qa models get a newly
initialised head. It must train under every method, else the model can only output noise; it is found
generically (``base.head_modules``) and listed in ``modules_to_save`` (PEFT's own default list misses e.g.
DistilBERT's ``pre_classifier`` and BART's ``classification_head``). causal_lm and seq2seq models keep their
pretrained LM head, frozen.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods.base import ApplyContext, new_heads

#: ``build(model, cfg, ctx, task, save) -> (peft config, the recipe key to name when PEFT rejects it)``.
PeftConfigBuilder = Callable[[Any, Any, ApplyContext, Any, list[str] | None], tuple[Any, str]]


def peft_apply(build: PeftConfigBuilder, *, check: Callable[[Any, ApplyContext], None] | None = None,
               prepare: Callable[[Any], Any] | None = None, seed: Callable[[Any], int | None] | None = None,
               finish: Callable[[Any, Any, ApplyContext], None] | None = None):
    """A ``Method.apply`` for a PEFT method: ``check(cfg, ctx)`` first (arguments the method needs),
    ``prepare(model)`` just before wrapping, ``get_peft_model`` under ``seed(cfg)`` when that is not None (a
    fixed seed of its own, leaving the run's RNG untouched), then ``finish(wrapped, cfg, ctx)``."""

    def apply(model, cfg, ctx: ApplyContext):
        return apply_peft(model, cfg, ctx, build, check=check, prepare=prepare, seed=seed, finish=finish)

    return apply


def apply_peft(model, cfg, ctx: ApplyContext, build: PeftConfigBuilder, *, check=None, prepare=None, seed=None,
               finish=None):
    heads = list(new_heads(model, ctx.task))
    import peft

    if check is not None:
        check(cfg, ctx)
    # masked LM has no peft task type: the plain PeftModel wraps it (LoRA, DoRA, IA3 need nothing more)
    task = getattr(peft.TaskType, ctx.task.peft_task_type) if ctx.task.peft_task_type else None
    # None, not []: PEFT adds its own default head names for SEQ_CLS/TOKEN_CLS/QA to whatever we pass.
    peft_cfg, key = build(model, cfg, ctx, task, heads or None)
    try:
        with warnings.catch_warnings():
            # peft 0.2x reads transformers' deprecated `is_gradient_checkpointing` on every wrap; the
            # FutureWarning is theirs to fix and says nothing to a tuneforge user.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            if prepare is not None:
                prepare(model)
            wrapped = get_peft_model(model, peft_cfg, seed=None if seed is None else seed(cfg))
    except ValueError as exc:
        raise TuneforgeError(
            f"{key}: PEFT cannot apply {ctx.method} to {type(model).__name__} ({exc}); "
            + ("list the layer names to adapt (print(model) shows them)" if key.endswith("target_modules")
               else "use lora or adapter instead")
        ) from None
    if finish is not None:
        finish(wrapped, cfg, ctx)
    return wrapped


def get_peft_model(model, peft_cfg, *, seed: int | None = None):
    """``peft.get_peft_model``; with ``seed``: under that seed, in a forked RNG (the run's RNG is untouched)."""
    import peft
    import torch

    if seed is None:
        return peft.get_peft_model(model, peft_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, peft_cfg)


def merge_and_unload(model):
    """``Method.merge`` of the methods that are linear in the weights (LoRA, DoRA, IA3): fold the update into
    plain weights (the PEFT wrapper is consumed: do not train it afterwards)."""
    return model.merge_and_unload()
