"""``manifest.json``: what it takes to know where a run's numbers came from and to reproduce them."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("tuneforge", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers",
            "numpy", "scikit-learn", "pydantic")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(cwd: Path | None = None) -> dict:
    """Commit and dirty flag of the repository the run was started from (None outside git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device_type: str, world_size: int) -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device_type,
        "world_size": world_size,
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def build_manifest(recipe, data_files: list[Path], *, device_type: str, world_size: int, precision: str,
                   recipe_hash: str, attention=None) -> dict:
    """``attention``: the run's ``tuneforge.models.build.AttentionChoice`` (model.attn_implementation as
    resolved on this machine: auto's outcome depends on the hardware, so the recipe alone does not say it)."""
    return {
        "run": recipe.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": recipe.seed,
        "recipe_sha256": recipe_hash,
        "command": sys.argv,
        "precision": precision,
        "attn_implementation": attention.implementation if attention is not None else None,
        "attn_implementation_reason": attention.reason if attention is not None else None,
        "packages": package_versions(),
        "git": git_revision(),
        "data_files": {str(p): {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in data_files},
        "hardware": hardware(device_type, world_size),
    }
