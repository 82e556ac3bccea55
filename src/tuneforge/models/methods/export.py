"""The export format: which files ``tuneforge export`` writes for a trained model, and how they load back.

``merge_for_export(model, method)`` asks the method (``Method.merge``, ``Method.export_kind``) what to write;
``save_method_export`` writes it with the kind's ``ExportFormat`` and a manifest (``tuneforge_export.json``)
saying what the folder contains; ``load_method_export`` reads the manifest and loads the folder with the
same format, in eval mode, ready to predict like the trained model.

Kept in ``models`` (not ``tuneforge.export``): reading an export is needed below the export package, by
``tuneforge.models.load_export`` (``tuneforge serve`` and ``tuneforge evaluate`` load exports with it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods.adapter import load_adapter_export, save_adapter_export
from tuneforge.models.methods.base import ExportKind, get_method, transformers_class
from tuneforge.models.methods.prefix import prefix_compatible

EXPORT_MANIFEST = "tuneforge_export.json"

@dataclass(frozen=True)
class ExportFormat:
    """One way of writing a trained model to a folder (an export kind) and reading it back."""

    kind: str
    #: What the folder holds and how to load it (the manifest's ``contents``; the model card quotes it).
    contents: str
    #: ``save(model, out_dir) -> model class name`` (recorded in the manifest).
    save: Callable[[Any, Path], str]
    #: ``load(export_dir, manifest) -> model`` in eval mode.
    load: Callable[[Path, dict], Any]


def _save_plain(model, out_dir: Path) -> str:
    model.save_pretrained(out_dir, safe_serialization=True)
    return type(model).__name__


def _load_plain(export_dir: Path, manifest: dict):
    return transformers_class(manifest["model_class"]).from_pretrained(export_dir).eval()


def _save_peft_prompt(model, out_dir: Path) -> str:
    base = model.get_base_model()
    base.save_pretrained(out_dir / "base_model", state_dict=_unwrapped_state_dict(base), safe_serialization=True)
    model.save_pretrained(out_dir / "peft_adapter", safe_serialization=True)
    return type(base).__name__


def _load_peft_prompt(export_dir: Path, manifest: dict):
    model_class = transformers_class(manifest["model_class"])
    from peft import PeftModel

    base = prefix_compatible(model_class.from_pretrained(export_dir / "base_model"))
    return PeftModel.from_pretrained(base, export_dir / "peft_adapter").eval()


def _save_bottleneck_adapters(model, out_dir: Path) -> str:
    save_adapter_export(model, out_dir)
    return type(model).__name__


def _load_bottleneck_adapters(export_dir: Path, manifest: dict):
    return load_adapter_export(export_dir)


#: export kind -> its format (``Method.export_kind`` names one).
EXPORT_FORMATS: dict[str, ExportFormat] = {fmt.kind: fmt for fmt in (
    ExportFormat(
        "plain",
        "a standalone transformers model (safetensors); loads with transformers alone",
        _save_plain, _load_plain),
    ExportFormat(
        "merged",
        "a standalone transformers model with the PEFT weights merged into the base weights; "
        "loads with transformers alone, no peft needed",
        _save_plain, _load_plain),
    ExportFormat(
        "peft_prompt",
        "base_model/: the transformers base model with the trained task head; peft_adapter/: the "
        "learned prefix or soft prompt (PEFT format). Load with peft: PeftModel.from_pretrained("
        "<ModelClass>.from_pretrained('base_model'), 'peft_adapter'), or tuneforge.models.methods.load_method_export",
        _save_peft_prompt, _load_peft_prompt),
    ExportFormat(
        "bottleneck_adapters",
        "base_model/: the transformers base model with the trained task head; "
        "adapters.safetensors + adapter_config.json: the bottleneck adapters, which are no transformers or peft "
        "format; load with tuneforge.models.methods.load_adapter_export",
        _save_bottleneck_adapters, _load_bottleneck_adapters),
)}
#: export kind -> what its folder holds and how to load it.
EXPORT_CONTENTS: dict[str, str] = {kind: fmt.contents for kind, fmt in EXPORT_FORMATS.items()}


def merge_for_export(model, method: str) -> tuple[Any, ExportKind]:
    """The model to export and how it is exported (a key of ``EXPORT_CONTENTS``).

    LoRA/DoRA/IA3 are linear in the weights, so they merge into plain weights (the PEFT wrapper is
    consumed: do not train it afterwards). A prefix, a soft prompt and bottleneck adapters add
    computation that no plain weight can express, so they are exported next to their base model.
    """
    spec = get_method(method)
    return spec.merge(model), spec.export_kind


def save_method_export(model, how: ExportKind, out_dir: Path) -> Path:
    """Write ``model`` (from ``merge_for_export``) to ``out_dir`` with a manifest saying what it contains."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = EXPORT_FORMATS.get(how)
    if fmt is None:
        raise ValueError(f"unknown export kind {how!r}; expected one of {', '.join(EXPORT_CONTENTS)}")
    model_class = fmt.save(model, out_dir)
    manifest = {"how": how, "model_class": model_class, "contents": fmt.contents}
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
    fmt = EXPORT_FORMATS.get(how)
    if fmt is None:
        raise TuneforgeError(f"{manifest_path}: unknown export kind {how!r}; expected one of "
                             f"{', '.join(EXPORT_CONTENTS)}")
    return fmt.load(export_dir, manifest)
