"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), as a small module of our own.

Why our own: the ``adapters`` library pins transformers 4.x and we run 5.x; the idea itself is a few
lines. An adapter is ``h + up(act(down(h)))`` with ``down: hidden -> hidden // reduction_factor``; it is
applied to a sub-layer's output projection, before the block adds its residual and normalises, where
both papers put it. ``up`` starts at exactly zero, so a freshly inserted adapter is the identity and
the model predicts as before (``down`` gets gradients from the first update on, as LoRA's B = 0 init).

Where (``AdapterConfig.kind``): Houlsby after the attention output and the feed-forward output of every
block, Pfeiffer after the feed-forward output only. Supported architectures, recognised by structure:

- BERT-style encoders (BERT, RoBERTa, XLM-R, ELECTRA, ...): ``encoder.layer[i].attention.output.dense``
  (in BertSelfOutput) and ``encoder.layer[i].output.dense`` (in BertOutput);
- Llama-style decoders (Llama, Mistral, Qwen2, Gemma, ...): ``layers[i].self_attn.o_proj`` and
  ``layers[i].mlp.down_proj``.

Anything else raises TuneforgeError naming these and suggesting lora.

How: each adapted Linear gets the adapter as a child module (``bottleneck_adapter``) and a forward
hook that adds its output. Why not replace the Linear with a wrapper: the base parameter names stay
those of the transformers checkpoint, so the base saves and loads as a plain transformers model, and
the adapter weights are exactly the keys containing ``.bottleneck_adapter.``. The hook is a
module-level function that finds the adapter through the hooked module, so ``copy.deepcopy(model)``
gives a copy whose hooks use the copy's adapters.

This module imports torch; ``tuneforge.models.methods`` imports it only when the adapter method runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods import AdapterConfig

ADAPTER_ATTR = "bottleneck_adapter"
ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# (layer stack, attention output projection, feed-forward output projection), relative to base_model.
_ARCHITECTURES = {
    "BERT-style encoder": ("encoder.layer", "attention.output.dense", "output.dense"),
    "Llama-style decoder": ("layers", "self_attn.o_proj", "mlp.down_proj"),
}


class BottleneckAdapter(nn.Module):
    """down-project, non-linearity, up-project; the caller adds the residual."""

    def __init__(self, hidden_size: int, cfg: AdapterConfig) -> None:
        super().__init__()
        # Kept so an export can write the config back out; the weights alone do not say the kind.
        self.config = cfg
        bottleneck = hidden_size // cfg.reduction_factor
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = nn.ReLU() if cfg.non_linearity == "relu" else nn.GELU()
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(hidden)))


def _add_adapter_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    adapter = getattr(module, ADAPTER_ATTR)
    return output + adapter(output.to(adapter.up.weight.dtype)).to(output.dtype)


def adapter_sites(model, kind: str) -> list[str]:
    """Names (as in ``model.named_modules()``) of the Linear layers an adapter of ``kind`` goes after."""
    body = model.base_model
    prefix = next((name + "." for name, module in model.named_modules() if module is body and name), "")
    for stack_path, attention, feed_forward in _ARCHITECTURES.values():
        try:
            stack = body.get_submodule(stack_path)
            paths = [feed_forward] if kind == "pfeiffer" else [attention, feed_forward]
            sites = [f"{stack_path}.{i}.{path}" for i in range(len(stack)) for path in paths]
            if sites and all(isinstance(body.get_submodule(site), nn.Linear) for site in sites):
                return [prefix + site for site in sites]
        except (AttributeError, TypeError):
            continue
    supported = "; ".join(f"{arch} ({stack}[i].{att} / {stack}[i].{ff})"
                          for arch, (stack, att, ff) in _ARCHITECTURES.items())
    raise TuneforgeError(
        f"method adapter: {type(model).__name__} is not a supported architecture; bottleneck adapters support "
        f"{supported}. Use lora instead"
    )


def insert_adapters(model, cfg: AdapterConfig) -> list[str]:
    """Add a fresh (identity) adapter after each site of ``cfg.kind``; returns the adapted layer names.

    Freezing the base is the caller's decision (``apply_method`` freezes everything but the task head
    and the adapters); a new adapter's parameters require gradients like any new module's.
    """
    sites = adapter_sites(model, cfg.kind)
    for name in sites:
        linear = model.get_submodule(name)
        if hasattr(linear, ADAPTER_ATTR):
            raise TuneforgeError(f"method adapter: {name} already has an adapter; insert adapters once")
        if linear.out_features // cfg.reduction_factor < 1:
            raise TuneforgeError(
                f"adapter.reduction_factor: {cfg.reduction_factor} leaves no bottleneck units for hidden size "
                f"{linear.out_features}; use at most {linear.out_features}"
            )
        # As PEFT does (autocast_adapter_dtype): trainable weights stay float32 on a half-precision base,
        # where optimizer updates to bf16/fp16 weights would lose most of their bits.
        half = linear.weight.dtype in (torch.float16, torch.bfloat16)
        adapter = BottleneckAdapter(linear.out_features, cfg)
        adapter.to(device=linear.weight.device, dtype=torch.float32 if half else linear.weight.dtype)
        linear.add_module(ADAPTER_ATTR, adapter)
        linear.register_forward_hook(_add_adapter_output)
    return sites


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapter weights only, under their names in ``model``."""
    marker = f".{ADAPTER_ATTR}."
    return {name: t.detach().cpu().clone() for name, t in model.state_dict().items() if marker in name}


def save_adapter_export(model, out_dir: Path) -> Path:
    """``base_model/`` (plain transformers, trained head included), adapter weights and their config."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    marker = f".{ADAPTER_ATTR}."
    base_state = {name: t for name, t in model.state_dict().items() if marker not in name}
    model.save_pretrained(out_dir / "base_model", state_dict=base_state, safe_serialization=True)
    adapters = adapter_state_dict(model)
    save_file(adapters, str(out_dir / ADAPTER_WEIGHTS))
    cfg = _config_of(model)
    meta = {"config": cfg.model_dump(), "sites": adapter_sites(model, cfg.kind), "model_class": type(model).__name__}
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def _config_of(model) -> AdapterConfig:
    adapter = next((m for m in model.modules() if isinstance(m, BottleneckAdapter)), None)
    if adapter is None:
        raise TuneforgeError(f"export: {type(model).__name__} has no bottleneck adapters to save")
    return adapter.config


def load_adapter_export(export_dir: Path):
    """Rebuild the exported model: base model, fresh adapters at the recorded sites, trained adapter weights."""
    from safetensors.torch import load_file

    from tuneforge.models.methods import _transformers_class

    export_dir = Path(export_dir)
    meta_path = export_dir / ADAPTER_CONFIG
    if not meta_path.exists():
        raise TuneforgeError(f"{export_dir}: no {ADAPTER_CONFIG}; not a bottleneck-adapter export")
    meta = json.loads(meta_path.read_text())
    model = _transformers_class(meta["model_class"]).from_pretrained(export_dir / "base_model")
    sites = insert_adapters(model, AdapterConfig(**meta["config"]))
    if sites != meta["sites"]:
        raise TuneforgeError(f"{meta_path}: the adapters were saved at {len(meta['sites'])} layers but the base "
                             f"model offers {len(sites)}; base_model/ and the adapters do not belong together")
    weights = load_file(str(export_dir / ADAPTER_WEIGHTS))
    expected = set(adapter_state_dict(model))
    if set(weights) != expected:
        raise TuneforgeError(f"{export_dir / ADAPTER_WEIGHTS}: adapter weights do not match the adapter layout "
                             f"(missing {sorted(expected - set(weights))[:3]}, "
                             f"unexpected {sorted(set(weights) - expected)[:3]})")
    model.load_state_dict(weights, strict=False)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()
