"""The method registry: what a training method is (``Method``), the registry of them, and ``apply_method``.

A method is one ``Method`` record, registered by its module (``lora.py``: ``register(Method("lora", ...))``):
its name (the recipe's ``method:``), the recipe section and config class that configure it, ``apply`` (fresh
task model -> the model the training loop optimises) and how the trained model is exported (``export_kind``,
a key of ``tuneforge.models.methods.export.EXPORT_FORMATS``, and ``merge``). ``apply_method`` and
``merge_for_export`` look the method up here; nothing else names a method.

Like every module of this package, it imports torch, transformers and peft only inside the functions that need
them: the recipe embeds the method configs and validates without torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tuneforge.errors import TuneforgeError
from tuneforge.sections import Section

#: The recipe's ``method:`` values (every one has a registered ``Method``; the test suite checks both agree).
MethodName = Literal["full", "head_only", "lora", "dora", "ia3", "prefix", "prompt", "adapter"]
#: How a trained model is exported: a key of ``tuneforge.models.methods.export.EXPORT_FORMATS``.
ExportKind = Literal["plain", "merged", "peft_prompt", "bottleneck_adapters"]

METHODS: tuple[str, ...] = get_args(MethodName)
EXPORT_KINDS: tuple[str, ...] = get_args(ExportKind)

#: The methods' log (one line per applied method: the trainable parameter count).
log = logging.getLogger("tuneforge.models.methods")


@dataclass(frozen=True)
class ApplyContext:
    """What ``Method.apply`` gets besides the model and its config."""

    #: The method asked for (``lora`` and ``dora`` share one ``apply``).
    method: str
    #: The task (a ``tuneforge.tasks.TaskSpec``: ``name``, ``new_head``, ``peft_task_type``,
    #: ``unsupported_methods``); the models layer reads these fields and never names a task.
    task: Any
    #: The run's tokenizer; only prompt tuning with ``init: text`` needs it.
    tokenizer: Any = None


def _unchanged(model):
    return model


@dataclass(frozen=True)
class Method:
    """One training method."""

    #: The recipe's ``method:`` value.
    name: str
    #: ``apply(model, cfg, ctx) -> model``: the model to train, ``model`` changed in place or a wrapper around it
    #: (PEFT). ``cfg`` is an instance of ``config`` (None for a method without one).
    apply: Callable[[Any, Any, ApplyContext], Any]
    #: How the trained model is exported (a key of ``EXPORT_FORMATS``: which files, how they load back).
    export_kind: ExportKind
    #: The recipe section that configures the method (``lora:``) and its class; None for a method without settings.
    section: str | None = None
    config: type[Section] | None = None
    #: ``merge(model) -> model``: the trained model as the export writes it (LoRA/IA3 fold into the weights).
    merge: Callable[[Any], Any] = _unchanged
    #: After ``apply``: refuse a model with no parameter left to train, and log the count (not for full, whose
    #: freezing is ``build.apply_freeze``'s).
    check_trainable: bool = True


#: method name -> Method, in registration order (``tuneforge.models.methods`` imports the built-in ones).
REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Make ``method`` known to ``apply_method`` and ``merge_for_export``; returns it, so a module can end with
    ``LORA = register(Method(...))``. A recipe accepts only the names of ``MethodName``."""
    if method.name in REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is registered already (replace=True to replace it)")
    if (method.section is None) != (method.config is None):
        raise ValueError(f"method {method.name!r}: section and config go together (both or neither)")
    if method.export_kind not in EXPORT_KINDS:
        raise ValueError(f"method {method.name!r}: export_kind {method.export_kind!r} is not one of "
                         f"{', '.join(EXPORT_KINDS)}")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise TuneforgeError(f"method: {name!r} is not one of {', '.join(REGISTRY)}") from None


def method_sections() -> dict[str, tuple[str, type[Section]]]:
    """method -> (recipe section, config class), for the methods that take settings."""
    return {m.name: (m.section, m.config) for m in REGISTRY.values() if m.section is not None}


# ------------------------------------------------------------------------------------------ apply


def apply_method(model, method: str, cfg=None, *, task, tokenizer=None):
    """Prepare ``model`` (a transformers task model) for training with ``method``; returns the model to train.

    ``task`` is the task's ``TaskSpec`` (``tuneforge.tasks.get_task(name)``). ``cfg`` is the method's config
    (``METHOD_SECTIONS``; None: its defaults); full and head_only take none. ``tokenizer`` is needed only
    for prompt tuning with ``init: text``. Raises TuneforgeError when the method cannot train this task or
    architecture, naming what to use instead.
    """
    spec = get_method(method)
    why = task.unsupported_methods.get(method)
    if why:
        raise TuneforgeError(f"method {method} cannot train task {task.name}: {why}; use prefix, lora or adapter "
                             "instead")
    cfg = _method_config(spec, cfg)
    result = spec.apply(model, cfg, ApplyContext(method=method, task=task, tokenizer=tokenizer))
    return checked(result, method) if spec.check_trainable else result


def _method_config(spec: Method, cfg):
    if spec.config is None:
        if cfg is not None:
            raise TypeError(f"method {spec.name} takes no config, got {type(cfg).__name__}")
        return None
    if cfg is None:
        return spec.config()
    if not isinstance(cfg, spec.config):
        raise TypeError(f"method {spec.name} needs a {spec.config.__name__}, got {type(cfg).__name__}")
    return cfg


def checked(model, method: str):
    """``model``, after refusing it when no parameter is left to train; logs the parameter count."""
    from tuneforge.models.params import count_parameters

    count = count_parameters(model)
    if count.trainable == 0:
        raise TuneforgeError(f"method {method}: no parameter of {type(model).__name__} is left to train")
    log.info("method %s: %s", method, count)
    return model


# ------------------------------------------------------------------------------------------ heads


def head_modules(model, task) -> dict[str, Any]:
    """The modules that must train under every method, by name.

    New-head tasks: the top-level children outside ``model.base_model`` that hold parameters (the
    transformers convention: body under ``base_model_prefix``, head beside it). LM tasks: the output
    embeddings, which are pretrained and so only trained by ``head_only``.
    """
    if not task.new_head:
        out = model.get_output_embeddings()
        if out is None:
            raise TuneforgeError(f"method head_only: {type(model).__name__} has no output embeddings to train")
        return {"output_embeddings": out}
    body = model.base_model
    heads = {name: child for name, child in model.named_children()
             if child is not body and next(child.parameters(), None) is not None}
    if body is model or not heads:
        raise TuneforgeError(
            f"task {task.name}: {type(model).__name__} has no task head next to its body; load the model with "
            "the task's AutoModelFor... class (e.g. AutoModelForSequenceClassification)"
        )
    return heads


def new_heads(model, task) -> dict[str, Any]:
    """The newly initialised task head's modules (``head_modules``) for new-head tasks; {} for LM tasks, whose
    pretrained LM head stays frozen under PEFT and adapters."""
    return head_modules(model, task) if task.new_head else {}


def freeze_all_but(model, keep: dict[str, Any]) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
    for module in keep.values():
        for param in module.parameters():
            param.requires_grad_(True)


def transformers_class(name: str):
    """``transformers.<name>`` (an export's model class), or a TuneforgeError saying which version to install."""
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        raise TuneforgeError(f"export: transformers has no model class {name!r}; install the transformers "
                             "version the model was trained with")
    return cls
