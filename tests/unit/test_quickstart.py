"""Every recipe in docs/quickstart.md validates and its data stage runs on the shipped example files."""

import re

import pytest
import yaml

from tests.conftest import REPO

QUICKSTART = REPO / "docs" / "quickstart.md"
RECIPES = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", QUICKSTART.read_text(), re.S)]
EXPECTED = {"reviews-csv": 16, "reviews-noheader": 16, "reviews-per-class": 16, "reviews-folders": 16,
            "people-ner": 12, "chat-sft": 12}  # rows each example file holds (train + validation)


def test_the_quickstart_shows_every_shape():
    assert [r["name"] for r in RECIPES] == list(EXPECTED)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r["name"] for r in RECIPES])
def test_a_quickstart_recipe_works_as_written(recipe, tmp_path, monkeypatch):
    from tuneforge.config_io import load_config
    from tuneforge.data.check import check_sources
    from tuneforge.data.prepare import prepare_task_data
    from tuneforge.recipe import Recipe
    from tuneforge.tasks import spec_for

    monkeypatch.chdir(REPO)  # the recipes name the example files relative to a checkout, as a user runs them
    cfg = load_config(Recipe, None, base={**recipe, "output_dir": str(tmp_path)})
    spec = spec_for(cfg)
    check_sources(cfg.data, labels=spec.labels)
    data = prepare_task_data(cfg.data, cfg.seed, tmp_path / "data", spec)
    assert len(data.records["train"]) + len(data.records["validation"]) == EXPECTED[cfg.name]
    assert data.rejected_rows == 0
    if spec.labels == "class":
        assert sorted(data.label_names) == ["negative", "positive"]
        assert {r["label"] for r in data.records["train"]} == {"negative", "positive"}
