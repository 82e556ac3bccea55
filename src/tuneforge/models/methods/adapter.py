"""``adapter``: bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), our own implementation
(``tuneforge.models.adapters``; the ``adapters`` library pins transformers 4.x).

The adapters add computation no plain weight can express: the export is the base model plus the adapter
weights and their config (export kind ``bottleneck_adapters``), written and read back here. The module with
the adapters themselves imports torch; this one imports it only when the method runs or an export is
written or loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods.base import Method, freeze_all_but, new_heads, register, transformers_class
from tuneforge.sections import Section


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


def _apply(model, cfg: AdapterConfig, ctx):
    from tuneforge.models.adapters import ADAPTER_ATTR, insert_adapters

    heads = new_heads(model, ctx.task)
    # Insert first: an unsupported architecture then fails before anything was frozen.
    sites = insert_adapters(model, cfg)
    adapters = {site: getattr(model.get_submodule(site), ADAPTER_ATTR) for site in sites}
    freeze_all_but(model, {**heads, **adapters})
    return model


ADAPTER = register(Method("adapter", _apply, "bottleneck_adapters", section="adapter", config=AdapterConfig))


# ----------------------------------------------------------------------------------------- export


def save_adapter_export(model, out_dir: Path) -> Path:
    """``base_model/`` (plain transformers, trained head included), adapter weights and their config."""
    from safetensors.torch import save_file

    from tuneforge.models.adapters import (ADAPTER_ATTR, ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_sites,
                                           adapter_state_dict)

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
    from tuneforge.models.adapters import BottleneckAdapter

    adapter = next((m for m in model.modules() if isinstance(m, BottleneckAdapter)), None)
    if adapter is None:
        raise TuneforgeError(f"export: {type(model).__name__} has no bottleneck adapters to save")
    return adapter.config


def load_adapter_export(export_dir: Path):
    """Rebuild the exported model: base model, fresh adapters at the recorded sites, trained adapter weights."""
    from safetensors.torch import load_file

    from tuneforge.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_state_dict, insert_adapters

    export_dir = Path(export_dir)
    meta_path = export_dir / ADAPTER_CONFIG
    if not meta_path.exists():
        raise TuneforgeError(f"{export_dir}: no {ADAPTER_CONFIG}; not a bottleneck-adapter export")
    meta = json.loads(meta_path.read_text())
    model = transformers_class(meta["model_class"]).from_pretrained(export_dir / "base_model")
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
