"""Build the task model a recipe asks for: pretrained body + new head, then frozen parts or a PEFT method."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tuneforge.errors import TuneforgeError
from tuneforge.models.resolve import ResolvedModel, model_load_kwargs

# Where the stack of transformer blocks lives in common architectures (BERT, RoBERTa, Llama, GPT-2,
# DistilBERT); freezing "the first N layers" needs that list.
_LAYER_PATHS = ("encoder.layer", "layers", "h", "transformer.layer", "block", "encoder.layers")


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
                    trust_remote_code: bool = False, pad_token_id: int | None = None):
    """Pretrained body with a freshly initialised head for task ``spec`` (``spec.auto_class``)."""
    import transformers
    from transformers.utils import logging as hf_logging

    # transformers warns at length that the new head "should be trained": that is the point here.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = getattr(transformers, spec.auto_class).from_pretrained(
            resolved.path, **spec.head_kwargs(label_names),
            **model_load_kwargs(resolved, trust_remote_code=trust_remote_code),
        )
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
                tokenizer=None):
    """The model a recipe trains, with its parameter count."""
    from tuneforge.models.methods import METHOD_SECTIONS, apply_method

    if recipe.model.architecture is not None:
        from tuneforge.models.scratch import scratch_model

        model = scratch_model(recipe.model.architecture, spec, tokenizer, recipe.model.max_length, label_names)
    else:
        model = load_task_model(resolved, spec, label_names, trust_remote_code=recipe.model.trust_remote_code,
                                pad_token_id=pad_token_id)
    if recipe.method == "full":
        apply_freeze(model, recipe.freeze)
    else:
        section = METHOD_SECTIONS.get(recipe.method, (None,))[0]
        cfg = getattr(recipe, section) if section else None
        model = apply_method(model, recipe.method, cfg, task_type=recipe.task, tokenizer=tokenizer)
    return model, count_parameters(model)


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
