"""Hyperparameter search (``tuneforge tune``): Optuna studies whose trials are ordinary ``train(recipe)`` runs."""

from __future__ import annotations

from pathlib import Path


def has_search(path: str | Path) -> bool:
    """Whether a recipe file has a top-level ``search:`` section (cheap: no validation)."""
    from tuneforge.config_io import read_yaml

    try:
        return "search" in read_yaml(path)
    except Exception:  # an unreadable file is reported by the loader that follows
        return False
