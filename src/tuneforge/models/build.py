"""Build the task model a recipe asks for: pretrained body + new head, then frozen parts or a PEFT method."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tuneforge.errors import TuneforgeError
# ParamCount, count_parameters and the trainable state dicts live in params (the methods, quantisation and
# the best checkpoint use them too); build keeps them under their old names.
from tuneforge.models.params import (  # noqa: F401
    ParamCount,
    count_parameters,
    load_trainable_state_dict,
    trainable_state_dict,
)
from tuneforge.models.resolve import ResolvedModel, model_load_kwargs

# Where the stack of transformer blocks lives in common architectures (BERT, RoBERTa, Llama, GPT-2,
# DistilBERT); freezing "the first N layers" needs that list.
_LAYER_PATHS = ("encoder.layer", "layers", "h", "transformer.layer", "block", "encoder.layers")


def resolve_recipe_model(model_section, *, require_weights: bool = True, run_dir=None) -> ResolvedModel:
    """Where a recipe's model (and tokenizer) comes from. With ``model.architecture`` there are no weights:
    the path is the tokenizer's directory and ``build_model`` initialises the model at random; a tokenizer
    the run trains itself lives in ``<run_dir>/tokenizer`` (``train_run_tokenizer``)."""
    from pathlib import Path

    from tuneforge.models.resolve import resolve_model

    if model_section.architecture is None:
        return resolve_model(model_section.name, allow_pickle=model_section.allow_pickle,
                             require_weights=require_weights)
    if not isinstance(model_section.tokenizer, str):
        trained = Path(run_dir or ".") / "tokenizer"
        if run_dir is None or not (trained / "tokenizer.json").is_file():
            raise TuneforgeError("model.tokenizer is trained by the run on its training split; it does not exist "
                                 f"yet{f' in {trained}' if run_dir else ''}: run the recipe first, or give a "
                                 "tokenizer directory")
        return ResolvedModel(f"{model_section.architecture.family} from scratch", trained.resolve(), "scratch",
                             "none", has_weights=False)
    given = Path(model_section.tokenizer).expanduser()
    if given.is_dir() and any((given / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        path = given.resolve()
    else:
        path = resolve_model(model_section.tokenizer, allow_pickle=model_section.allow_pickle,
                             require_weights=False).path
    return ResolvedModel(f"{model_section.architecture.family} from scratch", path, "scratch", "none",
                         has_weights=False)


def train_run_tokenizer(model_section, records: list[dict], run_dir, separator: str = "") -> None:
    """Train ``model.tokenizer`` (settings, not a path) on the training rows' text into <run_dir>/tokenizer,
    unless a finished one with the same settings is there (a resumed run keeps its vocabulary).
    ``separator`` (data.formatting.document_separator) follows every text, as in training, so its
    characters are in the vocabulary."""
    import json
    from pathlib import Path

    from tuneforge.models.tokenizer_train import INFO_FILE, resolved_config, train_tokenizer

    cfg = model_section.tokenizer
    out = Path(run_dir) / "tokenizer"
    try:
        if json.loads((out / INFO_FILE).read_text())["config"] == resolved_config(cfg):
            return
    except (OSError, ValueError, KeyError):
        pass
    texts = (t for r in records for t in ((r["text"] + separator) if r.get("text") else None,
                                          r.get("source"), r.get("target")) if t)
    train_tokenizer(texts, cfg, out)


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # decoder-only models (Llama, GPT-2) ship without a pad token; padding is masked out anyway.
        tok.pad_token = tok.eos_token
    return tok


def load_task_model(resolved: ResolvedModel, spec, label_names: list[str] | None, *,
                    trust_remote_code: bool = False, pad_token_id: int | None = None,
                    attn_implementation: str | None = None, extra_load_kwargs: dict | None = None):
    """Pretrained body with a freshly initialised head for task ``spec`` (``spec.auto_class``).
    ``attn_implementation``: transformers' attention kernel (see ``choose_attention``); None: its default.
    ``extra_load_kwargs``: more ``from_pretrained`` arguments (a quantised base: ``quantize.quantized_load_kwargs``)."""
    import transformers
    from transformers.utils import logging as hf_logging

    # transformers warns at length that the new head "should be trained": that is the point here.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = getattr(transformers, spec.auto_class).from_pretrained(
            resolved.path, **spec.head_kwargs(label_names), attn_implementation=attn_implementation,
            **model_load_kwargs(resolved, trust_remote_code=trust_remote_code), **(extra_load_kwargs or {}),
        )
    except (ImportError, ValueError) as exc:
        if attn_implementation is None or attn_implementation not in str(exc):
            raise
        # transformers' own refusal of a kernel (a model class choose_attention could not inspect)
        raise TuneforgeError(f"model.attn_implementation: {attn_implementation} cannot load {resolved.name} "
                             f"({exc}); use sdpa or eager") from None
    finally:
        hf_logging.set_verbosity(previous)
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    logging.getLogger(__name__).debug("loaded %s", type(model).__name__)
    return model


def _find_layers(body):
    for path in _LAYER_PATHS:
        node = body
        try:
            for part in path.split("."):
                node = getattr(node, part)
        except AttributeError:
            continue
        if hasattr(node, "__len__") and len(node) > 0:
            return node
    raise TuneforgeError(
        f"freeze: cannot find the transformer layers of {type(body).__name__} (looked for {', '.join(_LAYER_PATHS)})"
    )


def _embeddings(body):
    emb = getattr(body, "embeddings", None) or getattr(body, "embed_tokens", None) or getattr(body, "wte", None)
    if emb is None:
        emb = body.get_input_embeddings()
    return emb


def apply_freeze(model, policy) -> None:
    """Freeze per the recipe: 'none', 'embeddings', 'all_but_head' or an object with ``first_n_layers``.

    The head is whatever does not belong to the base model (e.g. ``classifier``, ``score``), so this
    works across architectures without a per-model list.
    """
    if policy == "none":
        return
    body = model.base_model
    if policy == "all_but_head":
        for param in body.parameters():
            param.requires_grad_(False)
        return
    for param in _embeddings(body).parameters():
        param.requires_grad_(False)
    if policy == "embeddings":
        return
    n = policy.first_n_layers
    layers = _find_layers(body)
    if n > len(layers):
        raise TuneforgeError(f"freeze.first_n_layers: got {n}, but the model has only {len(layers)} layers")
    for layer in layers[:n]:
        for param in layer.parameters():
            param.requires_grad_(False)


def build_model(recipe, resolved: ResolvedModel, spec, label_names: list[str] | None, pad_token_id: int | None,
                tokenizer=None, *, attn_implementation: str | None = None):
    """The model a recipe trains, with its parameter count. ``attn_implementation``: from ``choose_attention``
    (training); None: transformers' default (rebuilding a trained model for export or inference)."""
    from tuneforge.models.methods import METHOD_SECTIONS, apply_method

    if recipe.model.architecture is not None:
        from tuneforge.models.scratch import scratch_model

        model = scratch_model(recipe.model.architecture, spec, tokenizer, recipe.model.max_length, label_names,
                              attn_implementation=attn_implementation)
    else:
        from tuneforge.models.quantize import prepare_quantized, quantized_load_kwargs

        quantized = quantized_load_kwargs(recipe, resolved, spec, label_names)  # {} without model.quantize
        model = load_task_model(resolved, spec, label_names, trust_remote_code=recipe.model.trust_remote_code,
                                pad_token_id=pad_token_id, attn_implementation=attn_implementation,
                                extra_load_kwargs=quantized)
        if quantized:
            prepare_quantized(model)  # frozen, full-precision parts in fp32 (peft's kbit preparation)
    if recipe.method == "full":
        apply_freeze(model, recipe.freeze)
    else:
        section = METHOD_SECTIONS.get(recipe.method, (None,))[0]
        cfg = getattr(recipe, section) if section else None
        model = apply_method(model, recipe.method, cfg, task=spec, tokenizer=tokenizer)
    return model, count_parameters(model)


# ------------------------------------------------------------- attention kernel and training-memory options

#: model.attn_implementation auto on CPU: eager up to this hidden size, sdpa above. docs/benchmarks.md (pretraining
#: MFU profile, bf16 on the development CPU): a width-384 GPT-2 trains at 73.0% MFU with eager attention against
#: 56.3% with sdpa, whose CPU kernel is slow in bf16, and width 768 still prefers eager (75.5% against 69.3%). The
#: gap narrows as the matmuls grow with the width; 1024 is where auto stops assuming it (not measured above 768).
CPU_EAGER_MAX_HIDDEN = 1024
#: ...and only for short sequences: eager materialises every head's [length x length] scores (and keeps them
#: for the backward pass), so its memory grows with the square of the length. Measured at 129 tokens.
CPU_EAGER_MAX_LENGTH = 256
#: transformers' class attribute saying a model class can run each implementation (eager: all can).
_SUPPORT_FLAGS = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn",
                  "flex_attention": "_supports_flex_attn"}
_HALF = ("bf16", "fp16")


@dataclass(frozen=True)
class AttentionChoice:
    """The attention implementation a run trains with, and why (printed once, written to the manifest)."""

    implementation: str | None  # None: transformers' default for the model (replaced by ``built``)
    reason: str

    def built(self, model) -> "AttentionChoice":
        """This choice with the implementation the built ``model`` actually runs."""
        return AttentionChoice(attention_of(model), self.reason)

    def __str__(self) -> str:
        return f"attention: {self.implementation} ({self.reason})"


def attention_of(model) -> str | None:
    """The attention implementation ``model`` (a transformers or PEFT model) runs."""
    return getattr(_transformers_model(model).config, "_attn_implementation", None)


def flash_attn_importable() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken build (CUDA/ABI mismatch) is as unusable as a missing one
        return False
    return True


def check_training_options(recipe, *, device_type: str, precision: str) -> None:
    """What the recipe's attention and memory settings need from this machine (``device_type`` cuda or cpu,
    ``precision`` as resolved), checked before any work; what they need from the model class is checked by
    ``choose_attention`` once the model is resolved. Raises TuneforgeError naming the key."""
    train = recipe.train
    if train.activation_offload and device_type != "cuda":
        raise TuneforgeError(
            "train.activation_offload: true needs a CUDA device: it moves the activations saved for the backward "
            f"pass from GPU memory to CPU memory, and this machine trains on {device_type}, where they already are "
            "in CPU memory; remove it"
        )
    if train.gradient_checkpointing and recipe.method == "prefix":
        raise TuneforgeError(
            "train.gradient_checkpointing: true does not work with method prefix (PEFT feeds the prefix to every "
            "layer as a key/value cache, which checkpointed layers cannot take); use method lora or prompt, or "
            "set gradient_checkpointing: false"
        )
    _check_attention_machine(recipe.model.attn_implementation, device_type, precision)
    from tuneforge.models.quantize import check_quantize_machine

    check_quantize_machine(recipe, device_type=device_type)  # model.quantize, 8-bit optimizers


def _check_attention_machine(requested: str, device_type: str, precision: str) -> None:
    key = f"model.attn_implementation: {requested}"
    if requested == "flex_attention" and device_type != "cuda":
        raise TuneforgeError(f"{key} needs a CUDA GPU (torch has no flex-attention backward pass on "
                             f"{device_type}); use sdpa, eager or auto")
    if requested != "flash_attention_2":
        return
    missing = []
    if device_type != "cuda":
        missing.append(f"a CUDA GPU (this machine trains on {device_type})")
    if not flash_attn_importable():
        missing.append("the flash-attn package (pip install flash-attn --no-build-isolation, built for this "
                       "torch and CUDA)")
    if missing:
        raise TuneforgeError(f"{key} needs {' and '.join(missing)}; or use sdpa, or auto (flash_attention_2 "
                             "where it can run, else sdpa)")
    if precision not in _HALF:
        raise TuneforgeError(f"{key} computes in bf16 or fp16 only, and train.precision resolves to {precision}; "
                             "set train.precision: bf16 (or fp16), or use sdpa")


def choose_attention(recipe, resolved: ResolvedModel, spec, *, device_type: str, precision: str) -> AttentionChoice:
    """The attention implementation to build ``recipe``'s model with, from its config alone (before any weight
    loads), after checking that the model class supports it and train.gradient_checkpointing."""
    model_class, hidden = _model_class_and_width(recipe.model, resolved, spec)
    if recipe.train.gradient_checkpointing and model_class is not None:
        _check_checkpointing(model_class)
    return resolve_attention(recipe.model.attn_implementation, device_type=device_type, precision=precision,
                             model_class=model_class, hidden_size=hidden, max_length=recipe.model.max_length)


def resolve_attention(requested: str, *, device_type: str, precision: str, model_class=None,
                      hidden_size: int | None = None, max_length: int | None = None) -> AttentionChoice:
    """model.attn_implementation -> the implementation to use. ``model_class``: the transformers class to be
    built (None: unknown, e.g. remote code; transformers then checks support itself). Raises TuneforgeError
    for an implementation this machine or model cannot run."""
    if requested != "auto":
        _check_attention_machine(requested, device_type, precision)
        if _supports(model_class, requested) is False:
            usable = [i for i in ("sdpa", "eager") if _supports(model_class, i) is not False]
            raise TuneforgeError(f"model.attn_implementation: {model_class.__name__} does not support {requested}; "
                                 f"use {' or '.join(usable)}, or auto")
        return AttentionChoice(requested, "as set in model.attn_implementation")
    if device_type != "cuda":
        short = max_length is None or max_length <= CPU_EAGER_MAX_LENGTH
        if hidden_size is not None and hidden_size <= CPU_EAGER_MAX_HIDDEN and short:
            return AttentionChoice("eager", f"auto: CPU, hidden size {hidden_size} <= {CPU_EAGER_MAX_HIDDEN} and "
                                            f"length <= {CPU_EAGER_MAX_LENGTH}, where eager is faster than sdpa")
        why = (f"length {max_length} > {CPU_EAGER_MAX_LENGTH} (eager's memory grows with its square)" if not short
               else f"hidden size {hidden_size} > {CPU_EAGER_MAX_HIDDEN}" if hidden_size else "")
        return _default_attention(model_class, f"auto: {device_type}" + (f", {why}" if why else ""))
    if precision not in _HALF:
        why = f"precision {precision}"
    elif not flash_attn_importable():
        why = "flash-attn not installed"
    elif not _supports(model_class, "flash_attention_2"):
        why = "model without flash-attention support"
    else:
        return AttentionChoice("flash_attention_2", f"auto: CUDA, {precision}, flash-attn installed")
    return _default_attention(model_class, f"auto: CUDA, no flash_attention_2 ({why})")


def _default_attention(model_class, reason: str) -> AttentionChoice:
    if model_class is None:
        return AttentionChoice(None, f"{reason}; transformers' default for the model")
    return AttentionChoice("sdpa" if _supports(model_class, "sdpa") else "eager", reason)


def _supports(model_class, implementation: str) -> bool | None:
    """Whether ``model_class`` can run ``implementation``; None when the class is unknown."""
    if implementation == "eager":
        return True
    if model_class is None:
        return None
    return bool(getattr(model_class, _SUPPORT_FLAGS[implementation], False))


def _model_class_and_width(model_section, resolved: ResolvedModel, spec):
    """(the transformers class ``build_model`` will build or None when it cannot tell, hidden size or None)."""
    import transformers

    auto = getattr(transformers, spec.auto_class)
    if model_section.architecture is not None:
        from tuneforge.models.scratch import config_class

        config_type, hidden = config_class(model_section.architecture.family), model_section.architecture.hidden
    else:
        config = transformers.AutoConfig.from_pretrained(resolved.path,
                                                         trust_remote_code=model_section.trust_remote_code)
        config_type = type(config)
        hidden = getattr(config, "hidden_size", None) or getattr(getattr(config, "encoder", None), "hidden_size",
                                                                 None)
    try:
        return auto._model_mapping[config_type], hidden
    except KeyError:  # remote code or a config the Auto class does not map: checked on the loaded model
        return None, hidden


def _check_checkpointing(model_or_class) -> None:
    if not getattr(model_or_class, "supports_gradient_checkpointing", False):
        name = model_or_class.__name__ if isinstance(model_or_class, type) else type(model_or_class).__name__
        raise TuneforgeError(
            f"train.gradient_checkpointing: {name} does not support activation checkpointing; set "
            "train.gradient_checkpointing: false and save memory another way (a smaller train.batch_size with "
            "more gradient_accumulation_steps, a shorter model.max_length, a PEFT method)"
        )


def _transformers_model(model):
    """The transformers model inside a PEFT wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prepare_for_training(model, train_cfg) -> None:
    """Apply the training-only settings of ``train_cfg`` (TrainSection) to a built model: activation
    checkpointing, activation offload, NEFTune. ``end_training`` takes them off again."""
    if train_cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if train_cfg.activation_offload:
        enable_activation_offload(model)
    if train_cfg.neftune_alpha is not None:
        from tuneforge.models.methods import add_neftune

        add_neftune(model, train_cfg.neftune_alpha)


def enable_checkpointing(model) -> None:
    """Activation checkpointing on every transformer block of ``model`` (a transformers or PEFT model).

    Non-reentrant (``use_reentrant=False``): it computes correct gradients for parameters inside a block
    even when none of the block's inputs requires grad (PEFT freezes the embeddings), recomputes with the
    forward's RNG state (same dropout masks), and under DDP every parameter's gradient is ready once, as
    without checkpointing. transformers additionally makes the input embeddings' output require grad (its
    ``enable_input_require_grads``, which PEFT's own preparation also uses), so frozen embeddings never cut
    the graph."""
    base = _transformers_model(model)
    _check_checkpointing(base)
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if not getattr(base, "_require_grads_hooks", None):
        base.enable_input_require_grads()


#: Where enable_activation_offload keeps the save_on_cpu contexts of forwards in flight, on the model itself
#: (module-level hooks, so a deepcopy of the model carries working hooks of its own).
_OFFLOAD_ATTR = "tuneforge_offload_contexts"


def enable_activation_offload(model) -> None:
    """Every forward of ``model`` in training mode with gradients on runs under
    ``torch.autograd.graph.save_on_cpu(pin_memory=True)``: each tensor autograd saves for the backward pass is
    copied to pinned CPU memory and copied back when the backward needs it. Evaluation forwards are untouched.
    Hooks rather than a wrapped forward: they survive Accelerate's and DDP's wrappers unchanged."""
    if hasattr(model, _OFFLOAD_ATTR):
        return
    setattr(model, _OFFLOAD_ATTR, [])
    model.register_forward_pre_hook(_offload_enter)
    model.register_forward_hook(_offload_exit, always_call=True)  # also when the forward raises


def _offload_enter(module, args) -> None:
    import torch

    context = None
    if module.training and torch.is_grad_enabled():
        context = torch.autograd.graph.save_on_cpu(pin_memory=True, device_type="cuda")
        context.__enter__()
    getattr(module, _OFFLOAD_ATTR).append(context)


def _offload_exit(module, args, output) -> None:
    contexts = getattr(module, _OFFLOAD_ATTR)
    context = contexts.pop() if contexts else None
    if context is not None:
        context.__exit__(None, None, None)


def end_training(model) -> None:
    """Take the training-only settings off ``model`` before the final evaluation and the export: NEFTune's
    noise, the offload hooks, checkpointing; and return attention to the model's default implementation
    (sdpa where supported), which is what the export reloads with: the fp32 final evaluation then runs
    the same kernel as the export verification, and a flash-attention model (bf16/fp16 only) can run in fp32."""
    from tuneforge.models.methods import remove_neftune

    remove_neftune(model)
    if hasattr(model, _OFFLOAD_ATTR):
        _remove_hooks(model, (_offload_enter, _offload_exit))
        delattr(model, _OFFLOAD_ATTR)
    base = _transformers_model(model)
    if getattr(base, "is_activation_checkpointing", False):
        base.activation_checkpointing_disable()
        base.disable_input_require_grads()
    default = "sdpa" if getattr(type(base), "_supports_sdpa", False) else "eager"
    if attention_of(base) not in (None, default):
        base.set_attn_implementation(default)


def _remove_hooks(module, functions) -> None:
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key in [k for k, fn in hooks.items() if fn in functions]:
            del hooks[key]
            module._forward_hooks_always_called.pop(key, None)


@dataclass
class Built:
    """What the models stage hands to training: the tokenizer, the model (method applied, memory levers
    on), its parameter counts, where it came from and the attention kernel it runs."""

    resolved: ResolvedModel
    tokenizer: object
    model: object
    params: ParamCount
    attention: AttentionChoice


def build(recipe, spec, label_names: list[str] | None, *, run_dir, device_type: str, precision: str) -> Built:
    """The models stage's one entry: resolve the recipe's model, pick the attention kernel, load the
    tokenizer, build the task model with the recipe's method and switch on its training levers
    (checkpointing, activation offload, NEFTune). A tokenizer the run trains itself must exist in
    ``run_dir`` already (``train_run_tokenizer``)."""
    resolved = resolve_recipe_model(recipe.model, run_dir=run_dir)
    attention = choose_attention(recipe, resolved, spec, device_type=device_type, precision=precision)
    tokenizer = load_tokenizer(resolved, recipe.model.trust_remote_code)
    model, params = build_model(recipe, resolved, spec, label_names, tokenizer.pad_token_id, tokenizer,
                                attn_implementation=attention.implementation)
    attention = attention.built(model)
    prepare_for_training(model, recipe.train)
    return Built(resolved=resolved, tokenizer=tokenizer, model=model, params=params, attention=attention)
