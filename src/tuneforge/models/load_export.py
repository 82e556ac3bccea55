"""Read and load an exported model directory: what it is, how it was exported, what it was trained with.

Shared by ``tuneforge serve`` and ``tuneforge evaluate``. An export written by tuneforge
(``tuneforge.export.merge.write_export``) holds:

- ``tuneforge_export.json`` (``methods.EXPORT_MANIFEST``): how it was exported (``plain``, ``merged``:
  a standalone transformers model; ``peft_prompt``, ``bottleneck_adapters``: ``base_model/`` plus the
  method's files) and the model class;
- ``README.md``, the model card (``tuneforge.export.card``), whose last ``yaml`` block is the resolved
  recipe of the run: the task, its settings, the data columns and formats, the method;
- ``config.json`` (plain exports; ``base_model/config.json`` otherwise) and the tokenizer.

A plain transformers directory (no manifest, no card) is a ``plain`` export whose model class is
``config.json``'s first architecture. Only inference libraries are imported here (transformers, and
peft for a prefix/prompt export). Weights load from safetensors unless the caller allows pickle
(``tuneforge.models.resolve`` refuses pickle-only directories otherwise).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods import EXPORT_MANIFEST

#: The model card ``tuneforge.export.card`` writes; the resolved recipe is its last ``yaml`` block.
CARD_FILE = "README.md"
#: A resolved recipe saved next to the card (read first when present; the card's copy otherwise).
RECIPE_FILE = "recipe.yaml"
_YAML_BLOCK = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
#: Export kinds that are a standalone transformers model (``from_pretrained(dir)``).
PLAIN_KINDS = ("plain", "merged")


@dataclass
class ExportInfo:
    """What an export directory says about itself, read without loading any weights."""

    path: Path
    how: str  # a key of methods.EXPORT_CONTENTS; "plain" for a directory without a manifest
    architecture: str  # the transformers model class, e.g. BertForTokenClassification
    manifest: dict = field(default_factory=dict)
    recipe_text: str | None = None  # the resolved recipe YAML the model was trained with, if recorded
    recipe_source: Path | None = None  # the file recipe_text was read from

    @property
    def plain(self) -> bool:
        """A standalone transformers model (loads with ``from_pretrained`` alone)."""
        return self.how in PLAIN_KINDS

    @property
    def config_dir(self) -> Path:
        """The folder holding the model's config.json (``base_model/`` for prefix/prompt/adapter exports)."""
        return self.path if self.plain else self.path / "base_model"

    def config(self) -> dict:
        path = self.config_dir / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}


def export_manifest(model_dir: Path) -> dict:
    """What ``tuneforge export`` wrote about the folder (how it was exported, the model class); {} if nothing."""
    path = Path(model_dir) / EXPORT_MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise TuneforgeError(f"{path}: not valid JSON ({exc}); export the model again") from None
    return manifest if isinstance(manifest, dict) else {}


def export_architecture(model_dir: Path, manifest: dict, *, needed_by: str = "tuneforge") -> str:
    """The model class named by the export manifest or config.json."""
    if "model_class" in manifest:
        return manifest["model_class"]
    config = Path(model_dir) / "config.json"
    if not config.exists():
        raise TuneforgeError(f"{model_dir}: no config.json; {needed_by} needs an exported task model (tuneforge "
                             "export writes one) or a transformers model directory")
    archs = json.loads(config.read_text()).get("architectures") or []
    if not archs:
        raise TuneforgeError(f"{model_dir}: config.json names no architecture; {needed_by} needs an exported task "
                             "model (tuneforge export writes one)")
    return archs[0]


def export_recipe_text(model_dir: Path) -> tuple[str, Path] | None:
    """The resolved recipe the export was trained with, as YAML text, and the file it came from: a
    ``recipe.yaml`` next to the card, else the last ``yaml`` block of the model card; None when neither
    records one (a directory not written by tuneforge)."""
    model_dir = Path(model_dir)
    path = model_dir / RECIPE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8"), path
    card = model_dir / CARD_FILE
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if "tuneforge" not in text:
        return None
    blocks = _YAML_BLOCK.findall(text)
    return (blocks[-1], card) if blocks else None


def read_export(model_dir: Path | str, *, needed_by: str = "tuneforge") -> ExportInfo:
    """Describe ``model_dir`` (an existing directory) from its manifest, config.json and model card."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TuneforgeError(f"model directory not found: {model_dir}")
    manifest = export_manifest(model_dir)
    how = manifest.get("how", "plain")
    architecture = export_architecture(model_dir, manifest, needed_by=needed_by)
    recipe = export_recipe_text(model_dir)
    return ExportInfo(path=model_dir, how=how, architecture=architecture, manifest=manifest,
                      recipe_text=recipe[0] if recipe else None, recipe_source=recipe[1] if recipe else None)


def check_export_weights(info: ExportInfo, *, allow_pickle: bool = False):
    """A plain export's weights may be loaded (safetensors, or pickle with ``allow_pickle``): its
    ``ResolvedModel``. tuneforge's own method exports are safetensors: None (nothing to check)."""
    if not info.plain:
        return None
    from tuneforge.models.resolve import resolve_model

    return resolve_model(str(info.path), allow_pickle=allow_pickle)


def load_export_model(info: ExportInfo, auto_class: str, resolved=None):
    """The export's model in eval mode: ``transformers.<auto_class>`` for a plain export (``resolved``
    from ``check_export_weights``), the base model plus the method's files otherwise."""
    if not info.plain:
        # a prefix/prompt or bottleneck-adapter export: the base model plus the method's files
        from tuneforge.models.methods import load_method_export

        return load_method_export(info.path)
    import transformers

    from tuneforge.models.resolve import model_load_kwargs

    if resolved is None:
        resolved = check_export_weights(info)
    cls = getattr(transformers, auto_class, None)
    if cls is None:
        raise TuneforgeError(f"transformers has no class {auto_class!r}; install the transformers version the "
                             "model was trained with")
    return cls.from_pretrained(resolved.path, **model_load_kwargs(resolved)).eval()


def load_export_tokenizer(model_dir: Path):
    """The export's tokenizer, with the padding token a training run gives it (decoder-only models ship
    without one: the end-of-sequence token, as ``tuneforge.models.build.load_tokenizer`` does)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def device_of(name: str):
    """A ``--device``/``device=`` value as a torch device: ``auto`` is CUDA when there is one, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TuneforgeError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)
