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

The method itself (``AdapterConfig``, applying it, the export files ``save_adapter_export`` /
``load_adapter_export``) is ``tuneforge.models.methods.adapter``, which imports this module (and with it
torch) only when the adapter method runs; this module imports nothing of the methods.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from tuneforge.errors import TuneforgeError

ADAPTER_ATTR = "bottleneck_adapter"
ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class AdapterSettings(Protocol):
    """What the adapters read of their config (``tuneforge.models.methods.AdapterConfig``)."""

    kind: str
    reduction_factor: int
    non_linearity: str

# (layer stack, attention output projection, feed-forward output projection), relative to base_model.
_ARCHITECTURES = {
    "BERT-style encoder": ("encoder.layer", "attention.output.dense", "output.dense"),
    "Llama-style decoder": ("layers", "self_attn.o_proj", "mlp.down_proj"),
}


class BottleneckAdapter(nn.Module):
    """down-project, non-linearity, up-project; the caller adds the residual."""

    def __init__(self, hidden_size: int, cfg: AdapterSettings) -> None:
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


def insert_adapters(model, cfg: AdapterSettings) -> list[str]:
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
