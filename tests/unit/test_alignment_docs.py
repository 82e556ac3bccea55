"""Every recipe in docs/alignment.md validates, and where its data ships with the repository, its data
stage runs on it (the GSM8K one needs `python data/fetch.py gsm8k`: validated only)."""

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOC = REPO / "docs" / "alignment.md"
RECIPES = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)]


def test_the_page_has_a_recipe_per_task():
    assert [r["task"] for r in RECIPES] == ["preference", "preference", "reward_model", "grpo"]
    assert RECIPES[1]["preference"]["loss"] == "kto"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r["name"] for r in RECIPES])
def test_an_alignment_recipe_works_as_written(recipe, tmp_path, monkeypatch):
    from tuneforge.config_io import load_config
    from tuneforge.data.prepare import prepare_task_data
    from tuneforge.recipe import Recipe
    from tuneforge.tasks import spec_for

    monkeypatch.chdir(REPO)
    cfg = load_config(Recipe, None, base={**recipe, "output_dir": str(tmp_path)})
    files = [s.path for s in cfg.data.training_sources()]
    if any(Path(f).parts[:2] == ("data", "external") for f in files):
        return  # fetched data (data/fetch.py); the recipe validated
    data = prepare_task_data(cfg.data, cfg.seed, tmp_path / "data", spec_for(cfg))
    assert len(data.records["train"]) > 0 and len(data.records["validation"]) > 0
    key = "completion" if cfg.task == "preference" and cfg.preference.loss == "kto" else "chosen"
    assert all(key in r and r["prompt"] for r in data.records["train"])
