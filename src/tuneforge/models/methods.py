"""Training methods: which weights a run trains (full, head only, PEFT, bottleneck adapters) and how it exports.

One entry point, ``apply_method(model, method, cfg, task_type=...)``, turns a freshly loaded task model
into the model the training loop optimises; ``merge_for_export`` and ``save_method_export`` /
``load_method_export`` turn the trained model into something that reloads and predicts identically.

Methods:

- ``full``: nothing changes (freezing layers is ``build.apply_freeze``'s job);
- ``head_only``: every weight frozen except the task head (see ``head_modules``);
- ``lora`` / ``dora`` / ``ia3`` / ``prefix`` / ``prompt``: PEFT. ``dora`` is ``lora`` with
  ``use_dora: true`` (both spellings give the same model);
- ``adapter``: our bottleneck adapters (``tuneforge.models.adapters``; the ``adapters`` library pins
  transformers 4.x).

The task head: classification, regression, token_classification and extractive_qa models get a newly
initialised head (``classifier``, ``score``, ``qa_outputs``, ``classification_head``, ...). It must train
under every method, else the model can only output noise; it is found generically as the top-level
modules outside the pretrained body (``model.base_model``) and, for PEFT, listed in ``modules_to_save``
(PEFT's own default list misses e.g. DistilBERT's ``pre_classifier`` and BART's ``classification_head``).
causal_lm and seq2seq models keep their pretrained LM head: it stays frozen under PEFT and adapters, and
``head_only`` trains the output embeddings (``model.get_output_embeddings()``; when they are tied to the
input embeddings, those train too, since they are the same tensor).

``apply_method`` modifies ``model`` in place and returns it (or the PEFT wrapper around it), as
``peft.get_peft_model`` does: copying a multi-GB model to keep the original intact would be the surprise.

The configs below import only pydantic, so the recipe can embed them and validate without torch;
torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.sections import Section

MethodName = Literal["full", "head_only", "lora", "dora", "ia3", "prefix", "prompt", "adapter"]
TaskType = Literal["classification", "regression", "token_classification", "causal_lm", "seq2seq", "extractive_qa",
                   "masked_lm"]
ExportKind = Literal["plain", "merged", "peft_prompt", "bottleneck_adapters"]

METHODS: tuple[str, ...] = get_args(MethodName)
TASK_TYPES: tuple[str, ...] = get_args(TaskType)

# Tasks whose head is created for the task (random at load time) and therefore must train.
NEW_HEAD_TASKS = frozenset({"classification", "regression", "token_classification", "extractive_qa"})

_PEFT_TASK = {
    "classification": "SEQ_CLS",
    "regression": "SEQ_CLS",
    "token_classification": "TOKEN_CLS",
    "causal_lm": "CAUSAL_LM",
    "seq2seq": "SEQ_2_SEQ_LM",
    "extractive_qa": "QUESTION_ANS",
}

# Combinations that run but would train the wrong thing.
_UNSUPPORTED = {
    ("prompt", "token_classification"): "prompt tuning prepends virtual tokens to the input, so the outputs no "
    "longer line up one-to-one with the per-token labels",
    ("prompt", "extractive_qa"): "prompt tuning prepends virtual tokens to the input, so the answer start/end "
    "positions would point num_virtual_tokens too early",
    ("prompt", "masked_lm"): "peft has no masked-LM prompt-learning model (no task type for it)",
    ("prefix", "masked_lm"): "peft has no masked-LM prompt-learning model (no task type for it)",
}

# ----------------------------------------------------------------------------------------- configs


class LoraConfig(Section):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA branch input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Names (or dotted name suffixes) of the linear layers to adapt, e.g. [query, value]; "
        "all-linear: every linear layer of the body (attention, feed-forward, pooler), never the output layer "
        "or the task head. null: the attention projections of the architecture (BERT-style: query, key, value, "
        "attention.output.dense; Llama-style: q/k/v/o_proj; T5: q, k, v, o; BART-style: q/k/v/out_proj; "
        "DistilBERT: q/k/v/out_lin; GPT-2: c_attn, attn.c_proj); other architectures: PEFT's default.",
    )
    include_mlp: bool = Field(
        False,
        description="With the default target_modules, also adapt the feed-forward layers (BERT-style: "
        "intermediate.dense, output.dense; Llama-style: gate/up/down_proj; T5: wi, wi_0, wi_1, wo; BART-style: "
        "fc1, fc2). More parameters, often a little better on harder tasks.",
    )
    use_dora: bool = Field(
        False,
        description="Weight-decomposed LoRA (DoRA): learns a per-output magnitude next to the LoRA direction. "
        "method: dora sets this.",
    )
    use_rslora: bool = Field(
        False,
        description="Rank-stabilised LoRA: scale the update by alpha/sqrt(r) instead of alpha/r, so higher ranks "
        "keep learning as fast as low ones (Kalajdzievski 2023). Worth it from r of about 32 up.",
    )
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default",
        description="How A and B start. default: A Kaiming-uniform, B zero (the update starts at 0); gaussian: A "
        "normal(0, 1/r); pissa: A and B from the top-r singular vectors of each weight (fast randomised SVD, 4 "
        "iterations), which are moved out of the frozen weight; olora: the same from a QR decomposition. pissa "
        "and olora change the frozen base weights (the export merges them back) and often converge faster.",
    )
    plus_ratio: float | None = Field(
        None,
        gt=0,
        description="LoRA+: the B matrices learn at plus_ratio x train.learning_rate, the A matrices at the "
        "learning rate (Hayou et al. 2024 suggest 16). null: one learning rate for both.",
    )

    @model_validator(mode="after")
    def _check(self) -> "LoraConfig":
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("lora.target_modules is empty; list module names, use all-linear, or null for the "
                             "default")
        if self.include_mlp and self.target_modules == "all-linear":
            raise ValueError("lora.include_mlp applies only to the default target list; all-linear already "
                             "includes the feed-forward layers: remove include_mlp")
        if self.include_mlp and self.target_modules is not None:
            raise ValueError(
                "lora.include_mlp applies only to the default target list; with lora.target_modules set, "
                "add the feed-forward layer names there and remove include_mlp"
            )
        return self


class IA3Config(Section):
    target_modules: list[str] | None = Field(
        None,
        description="Layers whose activations IA3 rescales, e.g. [key, value, output.dense]. null: PEFT's "
        "default for the architecture (keys, values and the feed-forward output).",
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="Which of target_modules are feed-forward layers (IA3 scales their input rather than "
        "their output). Must be a subset of target_modules; null with target_modules null: PEFT's default.",
    )

    @model_validator(mode="after")
    def _check(self) -> "IA3Config":
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("ia3.target_modules is empty; list module names or use null for the default")
        if self.feedforward_modules is not None:
            if self.target_modules is None:
                raise ValueError(
                    "ia3.feedforward_modules is set but ia3.target_modules is null; set both, or neither for "
                    "the architecture's default"
                )
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ValueError(
                    f"ia3.feedforward_modules {extra} are not in ia3.target_modules {self.target_modules}; "
                    "every feed-forward module must also be a target"
                )
        return self


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


class PromptTuningConfig(Section):
    num_virtual_tokens: int = Field(
        20, ge=1, le=1024, description="Learned embeddings prepended to the input (soft prompt)."
    )
    init: Literal["random", "text"] = Field(
        "random",
        description="random: random vectors; text: the embeddings of init_text's tokens (repeated or cut to "
        "num_virtual_tokens), usually faster to train.",
    )
    init_text: str | None = Field(
        None, description="Text whose token embeddings start the soft prompt; only with init: text."
    )

    @model_validator(mode="after")
    def _check(self) -> "PromptTuningConfig":
        if self.init == "text" and not (self.init_text or "").strip():
            raise ValueError("prompt.init is 'text' but prompt.init_text is empty; give the text, e.g. "
                             "'Classify the sentiment of this review:', or use init: random")
        if self.init == "random" and self.init_text is not None:
            raise ValueError("prompt.init_text is set but prompt.init is 'random'; set init: text or "
                             "remove init_text")
        return self


class AdapterConfig(Section):
    kind: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer",
        description="houlsby: an adapter after the attention and the feed-forward sub-layer of every block; "
        "pfeiffer: after the feed-forward sub-layer only (half the parameters, similar accuracy).",
    )
    reduction_factor: int = Field(
        16, ge=1, description="Bottleneck width = hidden size // reduction_factor."
    )
    non_linearity: Literal["relu", "gelu"] = Field("relu", description="Activation inside the bottleneck.")


MethodConfig = LoraConfig | IA3Config | PrefixTuningConfig | PromptTuningConfig | AdapterConfig

# The recipe section that configures each method, and its class; full and head_only take none.
METHOD_SECTIONS: dict[str, tuple[str, type[Section]]] = {
    "lora": ("lora", LoraConfig),
    "dora": ("lora", LoraConfig),
    "ia3": ("ia3", IA3Config),
    "prefix": ("prefix", PrefixTuningConfig),
    "prompt": ("prompt", PromptTuningConfig),
    "adapter": ("adapter", AdapterConfig),
}

# ------------------------------------------------------------------------------------- LoRA targets

# model_type -> family; family -> (attention projections, feed-forward projections). Names are matched
# by PEFT as dotted suffixes, so "attention.output.dense" picks BERT's attention output but not the pooler.
_LORA_FAMILY = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert"), "bert"),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"), "llama"),
    **dict.fromkeys(("t5", "mt5"), "t5"),
    **dict.fromkeys(("bart", "mbart", "marian", "pegasus", "m2m_100"), "bart"),
    "distilbert": "distilbert",
    "gpt2": "gpt2",
}
_LORA_TARGETS = {
    "bert": (["query", "key", "value", "attention.output.dense"], ["intermediate.dense", "output.dense"]),
    "llama": (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]),
    "t5": (["q", "k", "v", "o"], ["wi", "wi_0", "wi_1", "wo"]),
    "bart": (["q_proj", "k_proj", "v_proj", "out_proj"], ["fc1", "fc2"]),
    "distilbert": (["q_lin", "k_lin", "v_lin", "out_lin"], ["lin1", "lin2"]),
    "gpt2": (["c_attn", "attn.c_proj"], ["c_fc", "mlp.c_proj"]),
}


def default_lora_targets(model, include_mlp: bool = False) -> list[str] | None:
    """The LoRA target names for ``model``'s architecture; None: let PEFT pick (unknown architecture)."""
    model_type = getattr(model.config, "model_type", "")
    family = _LORA_FAMILY.get(model_type)
    if family is None:
        if include_mlp:
            raise TuneforgeError(
                f"lora.include_mlp: no default layer list for model type {model_type!r}; list the layers in "
                "lora.target_modules instead (print(model) shows their names)"
            )
        return None
    attention, mlp = _LORA_TARGETS[family]
    return attention + mlp if include_mlp else list(attention)


# ------------------------------------------------------------------------------------------ heads


def head_modules(model, task_type: str) -> dict[str, Any]:
    """The modules that must train under every method, by name.

    New-head tasks: the top-level children outside ``model.base_model`` that hold parameters (the
    transformers convention: body under ``base_model_prefix``, head beside it). LM tasks: the output
    embeddings, which are pretrained and so only trained by ``head_only``.
    """
    if task_type not in NEW_HEAD_TASKS:
        out = model.get_output_embeddings()
        if out is None:
            raise TuneforgeError(f"method head_only: {type(model).__name__} has no output embeddings to train")
        return {"output_embeddings": out}
    body = model.base_model
    heads = {name: child for name, child in model.named_children()
             if child is not body and next(child.parameters(), None) is not None}
    if body is model or not heads:
        raise TuneforgeError(
            f"task {task_type}: {type(model).__name__} has no task head next to its body; load the model with "
            "the task's AutoModelFor... class (e.g. AutoModelForSequenceClassification)"
        )
    return heads


def _freeze_all_but(model, keep: dict[str, Any]) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
    for module in keep.values():
        for param in module.parameters():
            param.requires_grad_(True)


# ------------------------------------------------------------------------------------------ apply


def apply_method(model, method: str, cfg: MethodConfig | None = None, *, task_type: str, tokenizer=None):
    """Prepare ``model`` (a transformers task model) for training with ``method``; returns the model to train.

    ``cfg`` is the method's config (``METHOD_SECTIONS``; None: its defaults); full and head_only take
    none. ``tokenizer`` is needed only for prompt tuning with ``init: text``. Raises TuneforgeError when
    the method cannot train this task or architecture, naming what to use instead.
    """
    if method not in METHODS:
        raise TuneforgeError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if task_type not in TASK_TYPES:
        raise TuneforgeError(f"task: {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    if (method, task_type) in _UNSUPPORTED:
        raise TuneforgeError(
            f"method {method} cannot train task {task_type}: {_UNSUPPORTED[method, task_type]}; "
            "use prefix, lora or adapter instead"
        )
    cfg = _method_config(method, cfg)
    if method == "full":
        return model
    if method == "head_only":
        _freeze_all_but(model, head_modules(model, task_type))
        return _checked(model, method)
    new_heads = head_modules(model, task_type) if task_type in NEW_HEAD_TASKS else {}
    if method == "adapter":
        from tuneforge.models.adapters import ADAPTER_ATTR, insert_adapters

        # Insert first: an unsupported architecture then fails before anything was frozen.
        sites = insert_adapters(model, cfg)
        adapters = {site: getattr(model.get_submodule(site), ADAPTER_ATTR) for site in sites}
        _freeze_all_but(model, {**new_heads, **adapters})
        result = model
    else:
        result = _apply_peft(model, method, cfg, task_type, list(new_heads), tokenizer)
    return _checked(result, method)


def _checked(model, method: str):
    from tuneforge.models.build import count_parameters

    count = count_parameters(model)
    if count.trainable == 0:
        raise TuneforgeError(f"method {method}: no parameter of {type(model).__name__} is left to train")
    logging.getLogger(__name__).info("method %s: %s", method, count)
    return model


def _method_config(method: str, cfg: MethodConfig | None) -> MethodConfig | None:
    if method not in METHOD_SECTIONS:
        if cfg is not None:
            raise TypeError(f"method {method} takes no config, got {type(cfg).__name__}")
        return None
    expected = METHOD_SECTIONS[method][1]
    if cfg is None:
        return expected()
    if not isinstance(cfg, expected):
        raise TypeError(f"method {method} needs a {expected.__name__}, got {type(cfg).__name__}")
    return cfg


#: lora.init -> PEFT's init_lora_weights. PiSSA with 4 iterations of randomised SVD instead of the full SVD:
#: the PiSSA paper's fast variant, close in quality, and seconds instead of minutes for 7B-size weights. Its
#: random projection is seeded (see _get_peft_model), so rebuilding the model (tuneforge export, a resumed
#: run) gives the same residual base weights.
LORA_INIT: dict[str, bool | str] = {"default": True, "gaussian": "gaussian", "pissa": "pissa_niter_4",
                                    "olora": "olora"}
#: Seed of the random projection of PiSSA's randomised SVD (any fixed value; it never touches the run's RNG).
_LORA_INIT_SEED = 0


def _apply_peft(model, method: str, cfg: MethodConfig, task_type: str, heads: list[str], tokenizer):
    import peft

    if method == "prompt" and cfg.init == "text" and tokenizer is None:
        raise TypeError("apply_method: prompt.init 'text' needs the tokenizer (tokenizer=...)")
    peft_cfg, key = _peft_config(model, method, cfg, task_type, heads)
    try:
        with warnings.catch_warnings():
            # peft 0.2x reads transformers' deprecated `is_gradient_checkpointing` on every wrap; the
            # FutureWarning is theirs to fix and says nothing to a tuneforge user.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            if method == "prefix":
                prefix_compatible(model)
            wrapped = _get_peft_model(model, peft_cfg, seeded=method in ("lora", "dora") and cfg.init == "pissa")
    except ValueError as exc:
        raise TuneforgeError(
            f"{key}: PEFT cannot apply {method} to {type(model).__name__} ({exc}); "
            + ("list the layer names to adapt (print(model) shows them)" if key.endswith("target_modules")
               else "use lora or adapter instead")
        ) from None
    if method == "prompt" and cfg.init == "text":
        _init_prompt_from_text(wrapped, cfg.init_text, tokenizer)
    return wrapped


def _get_peft_model(model, peft_cfg, *, seeded: bool):
    """``peft.get_peft_model``; ``seeded``: under a fixed seed of its own, leaving the run's RNG untouched."""
    import peft
    import torch

    if not seeded:
        return peft.get_peft_model(model, peft_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_LORA_INIT_SEED)
        return peft.get_peft_model(model, peft_cfg)


def _peft_config(model, method: str, cfg: MethodConfig, task_type: str, heads: list[str]):
    """The PEFT config for ``method``, and the recipe key to name when PEFT rejects it."""
    import peft

    # masked LM has no peft task type: the plain PeftModel wraps it (LoRA, DoRA, IA3 need nothing more)
    task = getattr(peft.TaskType, _PEFT_TASK[task_type]) if task_type in _PEFT_TASK else None
    # None, not []: PEFT adds its own default head names for SEQ_CLS/TOKEN_CLS/QA to whatever we pass.
    save = heads or None
    if method in ("lora", "dora"):
        # "all-linear" goes to PEFT as is: it adapts every Linear/Conv1D but the output embeddings, and never
        # one inside modules_to_save (our task heads, which train whole).
        targets = cfg.target_modules or default_lora_targets(model, cfg.include_mlp)
        return peft.LoraConfig(task_type=task, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                               target_modules=targets, use_dora=cfg.use_dora or method == "dora",
                               use_rslora=cfg.use_rslora, init_lora_weights=LORA_INIT[cfg.init],
                               modules_to_save=save), "lora.target_modules"
    if method == "ia3":
        return peft.IA3Config(task_type=task, target_modules=cfg.target_modules,
                              feedforward_modules=cfg.feedforward_modules, modules_to_save=save), "ia3.target_modules"
    if method == "prefix":
        _require_past_key_values(model, task_type)
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens,
                                       prefix_projection=cfg.projection,
                                       encoder_hidden_size=cfg.projection_hidden_size, modules_to_save=save), "prefix"
    # Always random here: PEFT's own text init reloads a tokenizer by name, which a local or offline
    # model may not have; _init_prompt_from_text does the same with the tokenizer we already hold.
    return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens,
                                   prompt_tuning_init="RANDOM", modules_to_save=save), "prompt"


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


def _init_prompt_from_text(peft_model, text: str, tokenizer) -> None:
    """Start the soft prompt at the embeddings of ``text`` (as PEFT's TEXT init, without special tokens:
    a [CLS]/<s> in the middle of the prompt would mean nothing)."""
    import torch

    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise TuneforgeError(f"prompt.init_text {text!r} has no tokens; give a non-empty text")
    table = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    total = table.weight.shape[0]  # num_virtual_tokens x transformer sub-modules (2 for seq2seq)
    ids = (ids * (total // len(ids) + 1))[:total]
    words = peft_model.get_base_model().get_input_embeddings()
    with torch.no_grad():
        vectors = words(torch.tensor(ids, device=words.weight.device))
        table.weight.copy_(vectors.to(table.weight.dtype))


# ---------------------------------------------------------------------------------------- NEFTune

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


# ----------------------------------------------------------------------------------------- export

EXPORT_MANIFEST = "tuneforge_export.json"

EXPORT_CONTENTS: dict[str, str] = {
    "plain": "a standalone transformers model (safetensors); loads with transformers alone",
    "merged": "a standalone transformers model with the PEFT weights merged into the base weights; "
    "loads with transformers alone, no peft needed",
    "peft_prompt": "base_model/: the transformers base model with the trained task head; peft_adapter/: the "
    "learned prefix or soft prompt (PEFT format). Load with peft: PeftModel.from_pretrained("
    "<ModelClass>.from_pretrained('base_model'), 'peft_adapter'), or tuneforge.models.methods.load_method_export",
    "bottleneck_adapters": "base_model/: the transformers base model with the trained task head; "
    "adapters.safetensors + adapter_config.json: the bottleneck adapters, which are no transformers or peft "
    "format; load with tuneforge.models.adapters.load_adapter_export",
}


def merge_for_export(model, method: str) -> tuple[Any, ExportKind]:
    """The model to export and how it is exported (a key of ``EXPORT_CONTENTS``).

    LoRA/DoRA/IA3 are linear in the weights, so they merge into plain weights (the PEFT wrapper is
    consumed: do not train it afterwards). A prefix, a soft prompt and bottleneck adapters add
    computation that no plain weight can express, so they are exported next to their base model.
    """
    if method in ("full", "head_only"):
        return model, "plain"
    if method in ("lora", "dora", "ia3"):
        return model.merge_and_unload(), "merged"
    if method in ("prefix", "prompt"):
        return model, "peft_prompt"
    if method == "adapter":
        return model, "bottleneck_adapters"
    raise TuneforgeError(f"method: {method!r} is not one of {', '.join(METHODS)}")


def save_method_export(model, how: ExportKind, out_dir: Path) -> Path:
    """Write ``model`` (from ``merge_for_export``) to ``out_dir`` with a manifest saying what it contains."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if how in ("plain", "merged"):
        model.save_pretrained(out_dir, safe_serialization=True)
        model_class = type(model).__name__
    elif how == "peft_prompt":
        base = model.get_base_model()
        base.save_pretrained(out_dir / "base_model", state_dict=_unwrapped_state_dict(base),
                             safe_serialization=True)
        model.save_pretrained(out_dir / "peft_adapter", safe_serialization=True)
        model_class = type(base).__name__
    elif how == "bottleneck_adapters":
        from tuneforge.models.adapters import save_adapter_export

        save_adapter_export(model, out_dir)
        model_class = type(model).__name__
    else:
        raise ValueError(f"unknown export kind {how!r}; expected one of {', '.join(EXPORT_CONTENTS)}")
    manifest = {"how": how, "model_class": model_class, "contents": EXPORT_CONTENTS[how]}
    (out_dir / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _unwrapped_state_dict(base) -> dict:
    """The base model's weights under plain transformers names: PEFT's ModulesToSaveWrapper keeps the
    pretrained head as ``X.original_module`` and the trained one as ``X.modules_to_save.<adapter>``;
    the export keeps the trained one, as ``X``."""
    out = {}
    for name, tensor in base.state_dict().items():
        if ".original_module." in name:
            continue
        if ".modules_to_save." in name:
            prefix, rest = name.split(".modules_to_save.", 1)
            name = f"{prefix}.{rest.split('.', 1)[1]}"
        out[name] = tensor
    return out


def load_method_export(export_dir: Path):
    """Reload what ``save_method_export`` wrote, in eval mode, ready to predict like the trained model."""
    export_dir = Path(export_dir)
    manifest_path = export_dir / EXPORT_MANIFEST
    if not manifest_path.exists():
        raise TuneforgeError(f"{export_dir}: no {EXPORT_MANIFEST}; is this a tuneforge export directory?")
    manifest = json.loads(manifest_path.read_text())
    how = manifest["how"]
    if how == "bottleneck_adapters":
        from tuneforge.models.adapters import load_adapter_export

        return load_adapter_export(export_dir)
    model_class = _transformers_class(manifest["model_class"])
    if how in ("plain", "merged"):
        return model_class.from_pretrained(export_dir).eval()
    if how == "peft_prompt":
        from peft import PeftModel

        base = prefix_compatible(model_class.from_pretrained(export_dir / "base_model"))
        return PeftModel.from_pretrained(base, export_dir / "peft_adapter").eval()
    raise TuneforgeError(f"{manifest_path}: unknown export kind {how!r}; expected one of {', '.join(EXPORT_CONTENTS)}")


def _transformers_class(name: str):
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        raise TuneforgeError(f"export: transformers has no model class {name!r}; install the transformers "
                             "version the model was trained with")
    return cls
