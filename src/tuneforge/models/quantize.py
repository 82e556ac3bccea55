"""Quantised bases (QLoRA): the frozen base loads in 4 or 8 bits, LoRA/DoRA trains on top in full precision,
and the export merges the adapter into dequantised fp32 weights.

- ``QuantizeConfig``: the recipe's ``model.quantize`` section (imports only pydantic, like the method configs);
- ``check_quantize_machine``: what ``model.quantize`` and the 8-bit optimizers need from this machine, checked
  before any work (``build.check_training_options``);
- ``quantized_load_kwargs`` / ``prepare_quantized``: the ``from_pretrained`` arguments that quantise the base
  through transformers' own quantisation configs, and peft's ``prepare_model_for_kbit_training`` equivalent;
- ``dequantize_for_export``: the trained quantised PEFT model as the same PEFT model on fp32 weights, which
  merges like any LoRA model (``tuneforge.export.merge.write_export``).

Backends (see docs/memory.md, "Quantised bases"): bitsandbytes (4-bit NF4/FP4 and 8-bit LLM.int8; 0.50 runs both
on CPU as well as CUDA) and torchao (8-bit weight-only only: torchao 0.18's int4 weight-only layout needs CUDA
kernels from the mslk package, and its CPU int4 layout keeps one value per byte, no saving over 8 bits).
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.sections import Section

#: Methods that can train on a quantised base: an adapter beside frozen quantised weights. Full fine-tuning would
#: have to update the quantised weights themselves, which neither backend supports; IA3, prefix, prompt and
#: bottleneck adapters are not wired to quantised layers here.
QUANTIZABLE_METHODS = ("lora", "dora")
#: train.optimizer values that need bitsandbytes.
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")
_INSTALL_BNB = "pip install bitsandbytes; recent releases run on CPU as well as CUDA"


class QuantizeConfig(Section):
    bits: Literal[4, 8] = Field(
        ..., description="Weight bits of the frozen base: 4 (QLoRA: NF4/FP4, bitsandbytes) or 8 (bitsandbytes "
        "LLM.int8, or torchao int8 weight-only). Linear layers of the body only: embeddings, norms, the task head "
        "and the output layer stay in full precision."
    )
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit only: the 4-bit data type. nf4 (NormalFloat, QLoRA's) fits normally distributed "
        "weights better than fp4."
    )
    double_quant: bool = Field(
        True, description="4-bit only: quantise the per-block scales too (QLoRA's double quantisation), about "
        "0.4 bits per weight less."
    )
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="4-bit only: the dtype the dequantised weights multiply in during training. auto: the "
        "run's precision (train.precision as resolved on this machine). Evaluation multiplies with the dequantised "
        "weights in fp32 (or train.precision's autocast), like the export."
    )
    backend: Literal["auto", "bitsandbytes", "torchao"] = Field(
        "auto", description="Which library quantises. auto: bitsandbytes when it is installed and runs on this "
        "device, else torchao for bits 8. torchao does bits 8 only (int8 weight-only)."
    )

    @model_validator(mode="after")
    def _check(self) -> "QuantizeConfig":
        # Compared with the defaults, not "was it set": a resolved recipe (every default written out) must
        # validate again.
        if self.bits == 8:
            given = [f"{key}: {getattr(self, key)}" for key, default in
                     (("quant_type", "nf4"), ("double_quant", True), ("compute_dtype", "auto"))
                     if getattr(self, key) != default]
            if given:
                raise ValueError(f"model.quantize.{given[0]} applies to bits: 4 only; remove it with bits: 8")
        if self.bits == 4 and self.backend == "torchao":
            raise ValueError("model.quantize.backend: torchao does bits: 8 only here (its int4 weight-only layout "
                             "needs CUDA kernels from the mslk package); use backend bitsandbytes (or auto) for "
                             "bits: 4")
        return self


def recipe_problem(recipe) -> str | None:
    """What is wrong with ``model.quantize`` given the rest of the recipe (None: nothing); recipe.py's rule."""
    if recipe.model.quantize is None:
        return None
    if recipe.method not in QUANTIZABLE_METHODS:
        return (f"model.quantize: method {recipe.method} cannot train on a quantised base: a quantised base only "
                "makes sense with an adapter (use method lora or dora); full fine-tuning of quantised weights is "
                "not supported. Remove model.quantize to train without it")
    if recipe.lora.init in ("pissa", "olora"):
        # they move the principal part out of the frozen weight; quantising that residual changes it, and the
        # export could no longer give the trained model back
        return (f"model.quantize: lora.init {recipe.lora.init} rewrites the frozen base weights, which a "
                "quantised base cannot hold exactly; use lora.init default or gaussian")
    return None


# ------------------------------------------------------------------------------------ machine checks


def _device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: Loggers that warn at import about optional kernels bitsandbytes and torchao cannot load here: on CPUs with
#: AVX512-BF16 bitsandbytes 0.50 tries to fetch a 4-bit kernel from the Hub (the `kernels` package), torchao 0.18
#: its CUDA extensions, and torchao registers types through a deprecated torch API. Each falls back to its own
#: code, and since peft imports both whenever they are installed, every run would print the warnings.
_KERNEL_LOADER_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub", "torchao",
                          "torch.utils._pytree")


def quiet_kernel_loaders() -> None:
    for name in _KERNEL_LOADER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def import_bitsandbytes():
    """bitsandbytes, or None when it is missing or fails to load (a broken CUDA build is as unusable)."""
    quiet_kernel_loaders()
    try:
        import bitsandbytes
    except Exception:  # noqa: BLE001
        return None
    return bitsandbytes


def _bitsandbytes_problem(device_type: str) -> str | None:
    """Why bitsandbytes cannot run on ``device_type`` here (None: it can)."""
    bnb = import_bitsandbytes()
    if bnb is None:
        return f"the bitsandbytes package ({_INSTALL_BNB})"
    # Older releases have no supported_torch_devices and run on CUDA only.
    devices = getattr(bnb, "supported_torch_devices", {"cuda"})
    if device_type not in devices:
        return (f"bitsandbytes on {device_type}, which bitsandbytes {bnb.__version__} does not support (it runs on "
                f"{', '.join(sorted(devices))}); pip install -U bitsandbytes, or train on a CUDA GPU")
    return None


def _torchao_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def choose_backend(cfg: QuantizeConfig, device_type: str) -> str:
    """The backend that quantises under ``cfg`` on ``device_type``; raises TuneforgeError naming model.quantize
    and what to install when none can."""
    key = f"model.quantize (bits: {cfg.bits}, backend: {cfg.backend})"
    if cfg.backend in ("auto", "bitsandbytes"):
        problem = _bitsandbytes_problem(device_type)
        if problem is None:
            return "bitsandbytes"
        if cfg.backend == "bitsandbytes" or cfg.bits == 4:
            raise TuneforgeError(f"{key} needs {problem}" + ("" if cfg.backend == "bitsandbytes" else
                                                              "; torchao does bits: 8 only"))
    if _torchao_available():
        return "torchao"
    raise TuneforgeError(f"{key} needs torchao (pip install torchao)" if cfg.backend == "torchao" else
                         f"{key} needs {_bitsandbytes_problem(device_type)}, or torchao for bits: 8 (pip install "
                         "torchao)")


def check_quantize_machine(recipe, *, device_type: str) -> None:
    """What model.quantize and the 8-bit optimizers need from this machine, before any work."""
    if recipe.model.quantize is not None:
        choose_backend(recipe.model.quantize, device_type)
    optimizer = recipe.train.optimizer
    if optimizer in EIGHT_BIT_OPTIMIZERS:
        problem = _bitsandbytes_problem(device_type)
        if problem is not None:
            raise TuneforgeError(f"train.optimizer: {optimizer} needs {problem}; or use adamw")
        if optimizer == "paged_adamw_8bit" and device_type != "cuda":
            raise TuneforgeError(
                f"train.optimizer: paged_adamw_8bit pages the optimizer state between GPU and CPU memory, and this "
                f"machine trains on {device_type}, where it already is in CPU memory; use adamw_8bit"
            )


# ---------------------------------------------------------------------------------------- loading


def quantized_load_kwargs(recipe, resolved, spec, label_names) -> dict:
    """The ``from_pretrained`` keyword arguments that load ``recipe``'s base quantised ({} without
    model.quantize): transformers' BitsAndBytesConfig or TorchAoConfig, and the device to load onto (the
    quantisation happens as the weights load, on that device)."""
    quiet_kernel_loaders()  # for every model build: peft imports bitsandbytes and torchao whenever installed
    cfg = recipe.model.quantize
    if cfg is None:
        return {}
    import torch

    device_type = _device_type()
    backend = choose_backend(cfg, device_type)
    keep = _full_precision_modules(resolved, spec, label_names, recipe.model.trust_remote_code)
    if backend == "bitsandbytes":
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(
            load_in_4bit=cfg.bits == 4, load_in_8bit=cfg.bits == 8, bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=_compute_dtype(cfg, recipe),
            llm_int8_skip_modules=keep)
    else:
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        config = TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=keep)
    # Under `accelerate launch` each process's current CUDA device is its own GPU.
    device = torch.cuda.current_device() if device_type == "cuda" else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def _compute_dtype(cfg: QuantizeConfig, recipe):
    import torch

    from tuneforge.models.precision import resolve_precision

    name = cfg.compute_dtype
    if name == "auto":
        name = resolve_precision(recipe.train.precision, _device_type())
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _full_precision_modules(resolved, spec, label_names, trust_remote_code: bool) -> list[str]:
    """Modules the quantiser must leave alone: the task head (new, trained whole) and the output layer. Passing
    the list replaces transformers' default (the output layer and "the last module"), which would quantise
    e.g. BERT's classifier, whose last parameter is its bias. Found on a weightless (meta) copy of the model."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code,
                                                     **spec.head_kwargs(label_names))
    with torch.device("meta"):
        skeleton = getattr(transformers, spec.auto_class).from_config(config, trust_remote_code=trust_remote_code)
    body = skeleton.base_model
    names = [] if body is skeleton else [name for name, child in skeleton.named_children()
                                         if child is not body and next(child.parameters(), None) is not None]
    output = skeleton.get_output_embeddings()
    names += [name for name, module in skeleton.named_modules() if output is not None and module is output]
    return sorted(set(names))


def prepare_quantized(model) -> None:
    """peft's ``prepare_model_for_kbit_training`` without its checkpointing (``build.enable_checkpointing`` makes
    the input embeddings' output require grad when checkpointing is on): every weight frozen (the method adds the
    trainable ones), and the weights kept in full precision (norms, embeddings, task head) in fp32, so layer norms
    and the head's updates do not lose bits to half precision. Quantised weights (bitsandbytes' int8/uint8 storage,
    torchao tensor subclasses) are left as they are. Then bitsandbytes' layers evaluate like the export (see
    ``_evaluate_dequantized``) and the full checkpoint leaves their frozen weights out (see below)."""
    import torch

    for param in model.parameters():
        param.requires_grad_(False)
        if param.dtype in (torch.float16, torch.bfloat16) and type(param.data) is torch.Tensor:
            param.data = param.data.float()
    for module in model.modules():
        if type(dict(module.named_parameters(recurse=False)).get("weight")).__name__ in _BNB_WEIGHTS:
            _evaluate_dequantized(module)
    model.register_state_dict_post_hook(_drop_quantized_weights)
    model.register_load_state_dict_post_hook(_quantized_weights_not_missing)


_BNB_WEIGHTS = ("Params4bit", "Int8Params")


def _evaluate_dequantized(module) -> None:
    """In eval mode, the bitsandbytes layer ``module`` multiplies its input with its dequantised weight, in the
    input's dtype (fp32, or train.precision's autocast in evaluations during training); in training it runs
    bitsandbytes' own forward (4-bit: in model.quantize.compute_dtype; 8-bit: LLM.int8).

    This is the arithmetic of the export, which merges the adapter into the dequantised weights, so the final
    evaluation reports the exported model's metrics and the export verification compares like with like.
    bitsandbytes' own evaluation differs from it by more than rounding, measured on smollm2-135m against the
    dequantised model in fp32: 4-bit with a bf16 compute dtype agrees on 98.7% of top tokens (top logits up to 6.6
    apart); LLM.int8, which also rounds the activations to int8, on 88% (up to 25 apart), with the same perplexity.
    It also keeps CPU evaluation off bitsandbytes 0.50's fused 4-bit CPU kernel (CPUs with AVX512-BF16): the
    first evaluation would repack the weights for it for good, after which training forwards run that kernel, which
    passes no gradient back (measured: the first layer's LoRA weights got none) and fails for layers narrower
    than 64."""
    import functools

    if hasattr(module, "support_avx512bf16_for_cpu"):
        module.support_avx512bf16_for_cpu = False  # no repacking, whatever calls the layer
    module.forward = functools.partial(_forward_dequantized_in_eval, module, module.forward)


def _forward_dequantized_in_eval(module, train_forward, x, *args, **kwargs):
    import torch.nn.functional as F

    if module.training:
        return train_forward(x, *args, **kwargs)
    weight = _dequantized_weight(module).to(x.dtype)
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return F.linear(x, weight, bias)


# The run's full checkpoint (checkpoints/last, Accelerate's save_state) holds the model's state_dict. The frozen
# quantised weights need no saving: --resume rebuilds them from the model files, quantising the same way. Left
# in, a 4-bit layer cannot load its own saved state back (bitsandbytes' quantisation state comes back as
# unexpected keys) and torchao's tensor subclasses cannot be written as safetensors at all. So the model's
# state_dict leaves them out and loading does not miss them. Only while they are quantised: once
# ``dequantize_model`` has made them plain weights, state_dict is complete again (save_pretrained of the export).


def _quantized_modules(model) -> list[str]:
    # The module's own parameter: PEFT's LoRA layer forwards ``.weight`` to its quantised base layer
    return [name for name, module in model.named_modules()
            if _is_quantized(dict(module.named_parameters(recurse=False)).get("weight"))]


def _is_quantized(weight) -> bool:
    return weight is not None and (type(weight).__name__ in _BNB_WEIGHTS
                                   or type(weight.data).__module__.startswith("torchao"))


def _drop_quantized_weights(model, state_dict, prefix, local_metadata) -> None:
    for name in _quantized_modules(model):
        start = f"{prefix}{name}."
        for key in [k for k in state_dict if k.startswith(start) and k != start + "bias"]:
            del state_dict[key]  # the weight and its quantisation state (scales, code book, format)


def _quantized_weights_not_missing(model, incompatible_keys) -> None:
    weights = {f"{name}.weight" for name in _quantized_modules(model)}
    incompatible_keys.missing_keys[:] = [
        key for key in incompatible_keys.missing_keys
        if not any(key == w or key.endswith("." + w) for w in weights)]


# ----------------------------------------------------------------------------------------- export


def quantization_of(model) -> dict | None:
    """How ``model``'s (a transformers or PEFT model) base is quantised, for reports; None when it is not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base.config, "quantization_config", None)
    if config is None:
        return None
    if getattr(config, "load_in_4bit", False):
        return {"backend": "bitsandbytes", "bits": 4, "quant_type": config.bnb_4bit_quant_type,
                "double_quant": config.bnb_4bit_use_double_quant,
                "compute_dtype": str(config.bnb_4bit_compute_dtype).removeprefix("torch.")}
    if getattr(config, "load_in_8bit", False):
        return {"backend": "bitsandbytes", "bits": 8, "scheme": "LLM.int8"}
    return {"backend": str(getattr(config, "quant_method", "unknown")).split(".")[-1].lower(), "bits": 8,
            "scheme": type(getattr(config, "quant_type", None)).__name__}


def dequantize_for_export(model):
    """The trained PEFT ``model`` on a quantised base -> the same PEFT model on fp32 weights, ready for
    ``merge_and_unload``. ``model`` is consumed.

    The base weights become the dequantised quantised weights, not the original checkpoint's: those are the
    weights the adapter was trained and evaluated with (``_evaluate_dequantized``), so the export predicts like
    the evaluated model. Merging the same adapter into the original weights instead gives a different model: on
    smollm2-135m (4-bit, random LoRA B) it agreed with the trained model on 65% of top tokens, against 100% this
    way. The adapter is re-created by PEFT on plain ``nn.Linear`` layers and given the trained weights: PEFT's own
    merge into a quantised layer would quantise the merged weight again."""
    import copy

    import peft
    import torch

    from tuneforge.models.params import load_trainable_state_dict, trainable_state_dict

    adapter = model.active_adapter
    peft_config = copy.deepcopy(model.peft_config[adapter])
    trained = trainable_state_dict(model)  # LoRA A/B (and DoRA magnitudes), the task head
    base = model.unload()  # LoRA layers give their quantised base layer back; task heads stay the trained copies
    dequantize_model(base)
    with torch.random.fork_rng(devices=[]):  # PEFT initialises A at random before we overwrite it
        rebuilt = peft.get_peft_model(base, peft_config, adapter_name=adapter)
    load_trainable_state_dict(rebuilt, trained)
    return rebuilt.eval()


def dequantize_model(model) -> None:
    """Replace every quantised linear layer of the transformers ``model`` by a plain fp32 one holding its
    dequantised weight (GPT-2's Conv1D layers come back as Conv1D), cast the rest to fp32, and drop the
    quantisation config, so ``save_pretrained`` writes a plain model."""
    for name, module in list(model.named_modules()):
        weight = _dequantized_weight(module)
        if weight is not None:
            model.set_submodule(name, _plain_linear(module, weight.float()))
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if hasattr(model, flag):
            delattr(model, flag)
    model.float()  # transformers refuses this while the model counts as quantised


def _dequantized_weight(module):
    """The [out, in] weight of a quantised linear ``module`` in floating point; None for any other module."""
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    if not _is_quantized(weight):
        return None
    if type(weight).__name__ in _BNB_WEIGHTS:
        from transformers.integrations.bitsandbytes import dequantize_bnb_weight

        return dequantize_bnb_weight(weight, getattr(module, "state", None))
    return weight.data.dequantize()  # torchao: a tensor subclass inside nn.Linear


def _plain_linear(module, weight):
    import torch
    from transformers.pytorch_utils import Conv1D

    bias = None if module.bias is None else module.bias.detach().float()
    if issubclass(getattr(module, "source_cls", torch.nn.Linear), Conv1D):  # bitsandbytes transposed it on load
        layer = Conv1D(weight.shape[0], weight.shape[1]).to(weight.device)
        weight = weight.t()
    else:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer
