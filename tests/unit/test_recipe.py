"""Recipe validation: every shipped recipe validates; bad keys and types fail with exact messages."""

import sys
from pathlib import Path

import pytest

from tuneforge.config_io import apply_overrides, data_hint, parse_override
from tuneforge.errors import RecipeError
from tuneforge.recipe import Recipe, describe_fields, load_recipe

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "data"))
from fetch import DATASETS  # noqa: E402 - data/fetch.py, a script

RECIPES = sorted((REPO / "recipes").rglob("*.yaml")) + sorted((REPO / "recipes").rglob("*.yml"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"sst2-minilm-lora.yaml", "sst2-minilm-full.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_validates(path):
    from tuneforge.config_io import read_yaml
    from tuneforge.stages import load_stages, plan
    from tuneforge.tune import has_search
    from tuneforge.tune.run import load_tune

    if has_search(path):  # a study: the base recipe and the whole search space (every extreme value) validate
        recipes = [load_tune(path).recipe]
    else:
        recipes = [r.recipe for r in plan(load_stages(path))] if "stages" in read_yaml(path) else [load_recipe(path)]
    for recipe in recipes:
        _check_shipped_files(path, recipe)


def _check_shipped_files(path, recipe):
    assert recipe.name
    # data paths are relative to the repository root; files inside the repository must ship with it
    sources = recipe.data.training_sources() + list(recipe.data.evaluation_sources().values())
    for f in [s.path for s in sources] + [s.target_path for s in sources if s.target_path is not None]:
        assert not Path(f).is_absolute() and ".." not in Path(f).parts, f"{path.name}: {f} is outside the repository"
        if Path(f).parts[:2] == ("data", "external"):
            # not shipped: data/fetch.py knows the file, and the recipe's first comment says how to get it
            name = Path(f).parts[2]
            assert Path(f).name in {x.name for x in DATASETS[name].files}, f"{path.name}: fetch.py lacks {f}"
            assert f"python data/fetch.py {name}" in (data_hint(path) or ""), f"{path.name}: no hint for {f}"
        elif Path(f).parts[0] == "runs":
            # made by an earlier command of a demo (tuneforge pairs): the recipe's first comment says which
            assert Path(f).parts[1] in (data_hint(path) or ""), f"{path.name}: no hint for {f}"
        else:
            assert (REPO / f).exists(), f"{path.name}: {f} is not in the repository"


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = "name: t\ndata:\n  train_file: x.tsv\n"


def test_unknown_key_names_key_and_allowed(tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, BASE + "train:\n  lerning_rate: 0.1\n"))
    msg = str(exc.value)
    assert "train.lerning_rate: unknown key (did you mean 'learning_rate'?)" in msg
    assert "allowed keys here: activation_offload, adam_betas, batch_size," in msg


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(RecipeError, match=r"epochs: unknown key; allowed keys here: adapter, causal_lm, classification, data, export"):
        load_recipe(write(tmp_path, BASE + "epochs: 3\n"))


def test_wrong_type_names_key_value_and_expectation(tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, BASE + "train:\n  batch_size: lots\n"))
    assert ("train.batch_size: got 'lots': Input should be a valid integer, unable to parse string as an integer"
            in str(exc.value))


def test_bad_choice_lists_allowed(tmp_path):
    with pytest.raises(RecipeError, match=r"train.optimizer: got 'adam': Input should be 'adamw', 'sgd', 'adafactor', "
                                         r"'adamw_8bit' or 'paged_adamw_8bit'"):
        load_recipe(write(tmp_path, BASE + "train:\n  optimizer: adam\n"))


def test_freeze_union_message(tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, BASE + "method: full\nfreeze: some\n"))
    assert ("freeze: got 'some': Input should be 'none', 'embeddings' or 'all_but_head'; "
            "or a mapping of {first_n_layers: ...}") in str(exc.value)


def test_freeze_first_n_layers_parses(tmp_path):
    r = load_recipe(write(tmp_path, BASE + "method: full\nfreeze:\n  first_n_layers: 2\n"))
    assert r.freeze.first_n_layers == 2


def test_missing_required_key(tmp_path):
    with pytest.raises(RecipeError, match=r"data: required key is missing"):
        load_recipe(write(tmp_path, "name: t\n"))


def test_cross_field_lora_with_freeze(tmp_path):
    with pytest.raises(RecipeError, match=r"freeze: must be 'none' with method 'lora'"):
        load_recipe(write(tmp_path, BASE + "method: lora\nfreeze: embeddings\n"))


def test_cross_field_lora_section_with_full(tmp_path):
    with pytest.raises(RecipeError, match=r"lora: settings given but method is 'full'"):
        load_recipe(write(tmp_path, BASE + "method: full\nlora:\n  r: 4\n"))


def test_unknown_metric_for_best(tmp_path):
    with pytest.raises(RecipeError, match=r"train.metric_for_best: unknown metric 'f1' for task classification; allowed: accuracy, macro_f1"):
        load_recipe(write(tmp_path, BASE + "train:\n  metric_for_best: f1\n"))


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, BASE)
    r = load_recipe(path, ["train.learning_rate=1e-4", "lora.target_modules=[query,value]", "method=lora"])
    assert r.train.learning_rate == pytest.approx(1e-4)
    assert r.lora.target_modules == ["query", "value"]
    with pytest.raises(RecipeError, match=r"train.nope: unknown key"):
        load_recipe(path, ["train.nope=1"])
    with pytest.raises(RecipeError, match=r"is not of the form key.path=value"):
        load_recipe(path, ["train.epochs"])


def test_override_turns_scalar_into_section():
    data = apply_overrides({"freeze": "none"}, ["freeze.first_n_layers=3"])
    assert data == {"freeze": {"first_n_layers": 3}}
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_field_is_documented():
    rows = describe_fields(Recipe)
    undocumented = [key for key, _, desc in rows if not desc]
    assert undocumented == []
    keys = [k for k, _, _ in rows]
    assert "train.learning_rate" in keys and "lora.r" in keys


@pytest.mark.parametrize("extra", ["", "method: full\n", "method: lora\nlora:\n  r: 4\n",
                                   "train:\n  warmup_steps: 5\n"])
def test_resolved_recipe_round_trips(tmp_path, extra):
    """runs/<name>/recipe.yaml must load again (tuneforge export and --resume read it)."""
    from tuneforge.recipe import recipe_to_yaml

    first = load_recipe(write(tmp_path, BASE + extra))
    again = tmp_path / "again.yaml"
    again.write_text(recipe_to_yaml(first))
    second = load_recipe(again)
    assert recipe_to_yaml(second) == recipe_to_yaml(first)


def test_unknown_key_inside_a_list_of_sources(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  sources:\n    - path: a.csv\n      formt: csv\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "data.sources.0.formt: unknown key (did you mean 'format'?); allowed keys here: column_names, conll_tag_column" in str(err.value)


@pytest.mark.parametrize("data,message", [
    ("{}", "data: set exactly one of train_file (one file) or sources (a list); got neither"),
    ("{train_file: a.csv, sources: [{path: b.csv}]}", "set exactly one of train_file (one file) or sources (a list); got both"),
    ("{train_file: a.csv, validation_file: b.csv, split: {validation_fraction: 0.2}}",
     "data.split.validation_fraction is only used without data.validation_file; remove one"),
    ("{train_file: a.csv, split: {validation_fraction: 0}}",
     "data: no validation data: set data.validation_file or data.split.validation_fraction > 0"),
])
def test_data_section_cross_field_rules(tmp_path, data, message):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\ndata: {data}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert message in str(err.value)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "prefix", "prompt", "adapter", "head_only", "full"])
def test_resolved_recipe_validates_again_for_every_method(tmp_path, method):
    from tuneforge.recipe import recipe_to_yaml

    recipe = load_recipe(write(tmp_path, BASE + f"method: {method}\n"))
    again = tmp_path / "again.yaml"
    again.write_text(recipe_to_yaml(recipe))
    assert load_recipe(again) == recipe
