"""Chained stages: adapt (masked LM) -> finetune (classification), each from the previous export, with
a without-adapt comparison in one report; the recipe rules; finished stages are reused."""

from __future__ import annotations

import json

import pytest
import yaml

from tuneforge.errors import RecipeError
from tuneforge.stages import load_stages, plan, run_stages


def _write(tmp_path, tiny_model_dir, toy_data, **changes):
    train_tsv, dev_tsv = toy_data
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{line.split(chr(9))[0]}\n" for line in train_tsv.read_text().splitlines()[1:]))
    fast = {"batch_size": 16, "learning_rate": 3e-3, "scheduler": "constant", "warmup_ratio": 0.0,
            "precision": "fp32", "log_every_steps": 1}
    doc = {
        "name": "chain", "seed": 5, "output_dir": str(tmp_path / "runs"),
        "stages": ["adapt", "finetune"], "compare_without": ["adapt"],
        "adapt": {"task": "masked_lm", "method": "full", "model": {"name": str(tiny_model_dir), "max_length": 32},
                  "data": {"train_file": str(corpus), "format": "text", "split": {"validation_fraction": 0.2},
                           "dedup": {"exact": False, "near": False}},
                  "train": {**fast, "epochs": 2}},
        "finetune": {"task": "classification", "method": "full",
                     "model": {"name": "ignored-when-chained", "max_length": 32},
                     "data": {"train_file": str(train_tsv), "validation_file": str(dev_tsv),
                              "text_column": "sentence", "label_column": "label"},
                     "train": {**fast, "epochs": 3}},
    }
    doc.update(changes)
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_adapt_then_finetune_with_and_without_adaptation_in_one_report(tmp_path, tiny_model_dir, toy_data,
                                                                       one_thread):
    path = _write(tmp_path, tiny_model_dir, toy_data)
    runs = plan(load_stages(path))
    assert [(r.label, r.model_from) for r in runs] == [
        ("adapt", str(tiny_model_dir)), ("finetune", "adapt (export)"), ("finetune without adapt", str(tiny_model_dir))]
    assert runs[1].recipe.model.name == str(tmp_path / "runs" / "chain" / "adapt" / "export")
    result = run_stages(load_stages(path), say=lambda *a: None)
    adapt, finetune, without = result.runs
    assert adapt.recipe.run_dir == tmp_path / "runs" / "chain" / "adapt"
    assert adapt.result.verification["reloaded_with"] == "transformers.AutoModelForMaskedLM"
    assert yaml.safe_load((finetune.recipe.run_dir / "recipe.yaml").read_text())["model"]["name"] == str(
        adapt.recipe.run_dir / "export")
    assert finetune.result.metrics["accuracy"] >= 0.5 and without.result.metrics["accuracy"] >= 0.5
    report = result.report.read_text()
    assert "| adapt | masked_lm |" in report and "| finetune without adapt | classification |" in report
    assert "## finetune: with and without adapt" in report and "| accuracy |" in report
    saved = json.loads((result.run_dir / "report.json").read_text())
    assert [r["label"] for r in saved["runs"]] == ["adapt", "finetune", "finetune without adapt"]

    # a second run reuses every finished stage
    again = run_stages(load_stages(path), say=lambda *a: None)
    assert all(r.reused for r in again.runs)
    assert again.runs[1].result.metrics["accuracy"] == finetune.result.metrics["accuracy"]


@pytest.mark.parametrize("changes,message", [
    ({"stages": ["finetune", "adapt"]}, "each at most once, in the order pretrain, adapt, finetune"),
    ({"stages": ["pretrain", "finetune"]}, "stages lists pretrain, but there is no 'pretrain:' section"),
    ({"compare_without": ["finetune"]}, "compare_without: finetune must be one of the stages before the last"),
])
def test_stage_list_rules(tmp_path, tiny_model_dir, toy_data, changes, message):
    with pytest.raises(RecipeError, match=message):
        load_stages(_write(tmp_path, tiny_model_dir, toy_data, **changes))


def test_stage_sections_are_validated_before_any_work(tmp_path, tiny_model_dir, toy_data):
    path = _write(tmp_path, tiny_model_dir, toy_data)
    doc = yaml.safe_load(path.read_text())
    doc["finetune"]["train"]["lerning_rate"] = 1
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(RecipeError, match="train.lerning_rate: unknown key \\(did you mean 'learning_rate'\\?\\)"):
        plan(load_stages(path))
    doc["finetune"]["train"].pop("lerning_rate")
    doc["finetune"]["model"]["architecture"] = {"family": "bert", "layers": 1, "heads": 2, "hidden": 16}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(RecipeError, match="finetune.model.architecture: stage finetune starts from the model of "
                                          "stage adapt"):
        plan(load_stages(path))
    assert not (tmp_path / "runs").exists()
