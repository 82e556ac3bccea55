"""Every task end to end on the tiny random BERT: the loss falls, and export -> plain transformers
reload -> predict gives the trained model's outputs (the run's own verification, asserted here)."""

from __future__ import annotations

import json
import random

import pytest

from tuneforge.train.run import train

PEOPLE = ["alice", "bob", "carol", "dave", "erin"]
PLACES = ["paris", "rome", "oslo", "lima", "cairo"]
FILLER = ["met", "visited", "saw", "in", "near", "the", "a", "with", "today", "later"]


def _conll(path, n, rng):
    lines = []
    for _ in range(n):
        words = [rng.choice(FILLER + PEOPLE + PLACES) for _ in range(rng.randint(4, 9))]
        for w in words:
            tag = "B-PER" if w in PEOPLE else "B-LOC" if w in PLACES else "O"
            lines.append(f"{w} {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _regression(path, n, rng):
    rows = []
    for _ in range(n):
        words = [rng.choice(["good", "bad", "plain", "film", "story"]) for _ in range(rng.randint(3, 8))]
        rows.append({"text": " ".join(words), "label": words.count("good") - words.count("bad")})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _recipe(make_recipe, task, train_file, dev_file, *extra, data=None):
    """The tiny-model recipe with this task's data section (no inherited column keys: CoNLL has none)."""
    from tuneforge.config_io import apply_overrides
    from tuneforge.recipe import Recipe, resolved_dict

    d = resolved_dict(make_recipe())
    d.pop("classification")  # the base recipe's task section; these tests set their own task
    d["task"] = task
    d["train"]["metric_for_best"] = None  # the task's default
    d["export"]["enabled"] = True
    d["data"] = {"train_file": str(train_file), "validation_file": str(dev_file),
                 "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}, **(data or {})}
    return Recipe.model_validate(apply_overrides(d, list(extra)))


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


@pytest.mark.parametrize("task", ["token_classification", "regression"])
def test_task_trains_and_exports_verified(task, tmp_path, make_recipe):
    rng = random.Random(0)
    if task == "token_classification":
        tr, dev = _conll(tmp_path / "tr.iob2", 96, rng), _conll(tmp_path / "dev.iob2", 24, rng)
        recipe = _recipe(make_recipe, task, tr, dev)
    else:
        tr, dev = _regression(tmp_path / "tr.jsonl", 96, rng), _regression(tmp_path / "dev.jsonl", 24, rng)
        recipe = _recipe(make_recipe, task, tr, dev)
    result = train(recipe)
    losses = _losses(result.run_dir)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert result.verification["passed"] and result.verification["max_abs_logit_diff"] < 1e-4
    eval_json = json.loads((result.run_dir / "eval" / "eval.json").read_text())
    if task == "token_classification":
        assert result.metrics["entity_f1"] >= 0.8, result.metrics
        assert eval_json["per_type"].keys() == {"LOC", "PER"}
        assert result.verification["reloaded_with"] == "transformers.AutoModelForTokenClassification"
        config = json.loads((result.export_dir / "config.json").read_text())
        assert config["id2label"] == {"0": "O", "1": "B-LOC", "2": "I-LOC", "3": "B-PER", "4": "I-PER"}
    else:
        assert result.metrics["spearman"] >= 0.8, result.metrics
        assert json.loads((result.export_dir / "config.json").read_text())["problem_type"] == "regression"


def test_ner_row_with_mismatched_counts_is_rejected(tmp_path, make_recipe):
    rng = random.Random(1)
    tr = _conll(tmp_path / "tr.iob2", 96, rng)
    tr.write_text(tr.read_text() + "alice B-PER extra\nbob\n\n", encoding="utf-8")
    dev = _conll(tmp_path / "dev.iob2", 24, rng)
    recipe = _recipe(make_recipe, "token_classification", tr, dev, "train.max_steps=1",
                     "data.max_rejected_fraction=0.05", "export.enabled=false")
    result = train(recipe)
    rejected = [json.loads(line) for line in (result.run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and rejected[0]["stage"] == "read"
    assert "too few columns: got 1, need separate token column 0 and tag column -1" in rejected[0]["reason"]


def test_regression_label_that_is_not_a_number_is_rejected(tmp_path, make_recipe):
    rng = random.Random(2)
    tr, dev = _regression(tmp_path / "tr.jsonl", 96, rng), _regression(tmp_path / "dev.jsonl", 24, rng)
    tr.write_text(tr.read_text() + json.dumps({"text": "good film", "label": "very good"}) + "\n")
    recipe = _recipe(make_recipe, "regression", tr, dev, "train.max_steps=1",
                     "data.max_rejected_fraction=0.05", "export.enabled=false")
    result = train(recipe)
    [row] = [json.loads(line) for line in (result.run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert (row["line"], row["reason"]) == (97, "label is not a number: 'very good'")


@pytest.mark.parametrize("method", ["head_only", "dora", "ia3", "prefix", "prompt", "adapter"])
def test_every_method_trains_and_its_export_reloads_identically(method, make_recipe):
    """Through train(): the method is applied, trains, and the export (merged, or base + method files)
    reloads to the same predictions (the run's verification fails the run otherwise)."""
    result = train(make_recipe(f"method={method}", "train.max_steps=12", "export.enabled=true",
                               "train.learning_rate=1e-2"))
    assert 0 < result.params["trainable"] < result.params["total"]
    assert result.verification["passed"] and result.verification["max_abs_logit_diff"] < 1e-4
    expected = {"head_only": "plain", "dora": "merged", "ia3": "merged", "prefix": "peft_prompt",
                "prompt": "peft_prompt", "adapter": "bottleneck_adapters"}[method]
    assert result.verification["export"] == expected


TOPICS = {"sport": ["goal", "match", "team"], "music": ["song", "band", "album"], "food": ["pasta", "bread", "soup"]}


def _multilabel(path, n, rng):
    rows = []
    for i in range(n):
        labels = sorted(rng.sample(sorted(TOPICS), rng.randint(0, 2)))
        words = [rng.choice(TOPICS[t]) for t in labels for _ in range(2)] + ["the", "news", "today"]
        rng.shuffle(words)
        label = labels if i % 2 or not labels else ";".join(labels)  # JSON lists and separated strings
        rows.append({"text": " ".join(words), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_multi_label_classification(tmp_path, make_recipe):
    rng = random.Random(3)
    tr, dev = _multilabel(tmp_path / "tr.jsonl", 96, rng), _multilabel(tmp_path / "dev.jsonl", 24, rng)
    recipe = _recipe(make_recipe, "classification", tr, dev, "classification.multi_label=true",
                     "train.epochs=15", data={"label_separator": ";"})
    assert recipe.train.metric_for_best == "micro_f1"
    result = train(recipe)
    losses = _losses(result.run_dir)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert result.metrics["micro_f1"] >= 0.75, result.metrics  # predicting every label scores about 0.5
    assert set(result.metrics["thresholds"]) == {"food", "music", "sport"}
    config = json.loads((result.export_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert result.verification["passed"]


def test_multi_label_unknown_label_is_rejected(tmp_path, make_recipe):
    rng = random.Random(4)
    tr, dev = _multilabel(tmp_path / "tr.jsonl", 96, rng), _multilabel(tmp_path / "dev.jsonl", 24, rng)
    tr.write_text(tr.read_text() + json.dumps({"text": "a goal", "label": ["sport", "weather"]}) + "\n")
    recipe = _recipe(make_recipe, "classification", tr, dev, "classification.multi_label=true",
                     "train.max_steps=1", "data.max_rejected_fraction=0.05", "export.enabled=false",
                     data={"label_separator": ";", "label_names": ["food", "music", "sport"]})
    result = train(recipe)
    [row] = [json.loads(line) for line in (result.run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert (row["line"], row["reason"]) == (97, "unknown label 'weather' (allowed: food, music, sport)")
