"""``prefix``: prefix tuning (Li & Liang 2021), learned key/value vectors in every attention layer, through PEFT.

A prefix adds computation no plain weight can express: the export is the base model plus PEFT's adapter
folder (export kind ``peft_prompt``). ``prefix_compatible`` lets PEFT's prefix tuning work with
transformers 5.25's ``cache`` argument, for training and for loading an export.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods.base import Method, register
from tuneforge.models.methods.peft_common import peft_apply
from tuneforge.sections import Section


class PrefixTuningConfig(Section):
    num_virtual_tokens: int = Field(
        20, ge=1, le=1024, description="Learned key/value vectors prepended in every attention layer."
    )
    projection: bool = Field(
        False,
        description="Produce the prefix through a two-layer MLP (Li & Liang, 2021): steadier training, "
        "more trainable parameters.",
    )
    projection_hidden_size: int = Field(
        512, ge=1, description="Hidden width of the projection MLP; only with projection: true."
    )

    @model_validator(mode="after")
    def _check(self) -> "PrefixTuningConfig":
        # Compared with the default, not "was it set": a resolved recipe (every default written out)
        # must validate again.
        if self.projection_hidden_size != 512 and not self.projection:
            raise ValueError("prefix.projection_hidden_size is set but prefix.projection is false; "
                             "set projection: true or remove projection_hidden_size")
        return self


def _peft_config(model, cfg: PrefixTuningConfig, ctx, task, save):
    import peft

    _require_past_key_values(model, ctx.task.name)
    return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens,
                                   prefix_projection=cfg.projection,
                                   encoder_hidden_size=cfg.projection_hidden_size, modules_to_save=save), "prefix"


def _require_past_key_values(model, task_type: str) -> None:
    """Prefix tuning feeds the learned prefix as past key/values; PEFT calls the task model or, failing
    that, its body. A model accepting neither would fail only at the first training step.

    transformers 5.25 renamed the argument to ``cache`` (``past_key_values`` is still accepted, with a
    warning, until 5.40), so either name counts."""
    import inspect

    for module in (model, model.base_model):
        if {"past_key_values", "cache"} & set(inspect.signature(module.forward).parameters):
            return
    raise TuneforgeError(
        f"method prefix cannot train task {task_type} with {type(model).__name__}: the model does not accept "
        "past key/values, which prefix tuning needs; use prompt (classification, causal_lm, seq2seq), lora "
        "or adapter instead"
    )


def prefix_compatible(model):
    """Let PEFT's prefix tuning find ``past_key_values`` on a model whose forward takes ``cache``.

    transformers 5.25 renamed the argument; peft 0.21's prefix tuning for classification, token
    classification and QA models still looks for the old name in the task model's signature and
    refuses the model ("Model does not support past key values"), although the model accepts the old
    name until 5.40. This gives the instance a forward that takes ``past_key_values`` and hands it on
    as ``cache``, and the same to its body (``model.base_model``, which PEFT calls for classification
    heads); modules that still take ``past_key_values`` are left unchanged. Returns ``model``.
    """
    for module in {id(m): m for m in (model, getattr(model, "base_model", model))}.values():
        _forward_taking_past_key_values(module)
    _generation_inputs_as_past_key_values(model)
    return model


def _generation_inputs_as_past_key_values(model) -> None:
    """``generate`` under transformers 5.25 keeps the KV cache as ``cache``; peft 0.21's prefix tuning reads
    ``past_key_values`` from the base model's generation inputs to decide when to inject the prefix,
    finds none, and the prefix is silently ignored (a prefix-tuned model then generates like its base).
    Renaming the key back lets PEFT see the cache; the forward above turns it into ``cache`` again."""
    import functools

    prepare = getattr(model, "prepare_inputs_for_generation", None)
    if prepare is None or getattr(prepare, "_tuneforge_renames_cache", False):
        return

    @functools.wraps(prepare)
    def prepare_with_past_key_values(*args, **kwargs):
        inputs = prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    prepare_with_past_key_values._tuneforge_renames_cache = True
    model.prepare_inputs_for_generation = prepare_with_past_key_values


def _forward_taking_past_key_values(model) -> None:
    import functools
    import inspect

    forward = model.forward
    signature = inspect.signature(forward)
    if "past_key_values" in signature.parameters or "cache" not in signature.parameters:
        return

    @functools.wraps(forward)
    def forward_taking_past_key_values(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return forward(*args, **kwargs)

    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params.append(inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None))
    params += [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    forward_taking_past_key_values.__signature__ = signature.replace(parameters=params)
    model.forward = forward_taking_past_key_values  # the instance's, so nn.Module.__call__ uses it


PREFIX = register(Method("prefix", peft_apply(_peft_config, prepare=prefix_compatible), "peft_prompt",
                         section="prefix", config=PrefixTuningConfig))
