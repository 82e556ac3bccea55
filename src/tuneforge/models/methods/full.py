"""``full`` and ``head_only``: no new parameters, only a choice of which existing weights train.

``full`` changes nothing (freezing layers is ``build.apply_freeze``'s job); ``head_only`` freezes every weight
except the task head (``head_modules``): a new-head task's head, or an LM's output embeddings (when they are
tied to the input embeddings, those train too, since they are the same tensor). Both export as a plain
transformers model.
"""

from __future__ import annotations

from tuneforge.models.methods.base import Method, freeze_all_but, head_modules, register


def _apply_full(model, cfg, ctx):
    return model


def _apply_head_only(model, cfg, ctx):
    freeze_all_but(model, head_modules(model, ctx.task))
    return model


FULL = register(Method("full", _apply_full, "plain", check_trainable=False))
HEAD_ONLY = register(Method("head_only", _apply_head_only, "plain"))
