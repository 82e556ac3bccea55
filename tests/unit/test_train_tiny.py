"""train(recipe) on a tiny random BERT: learning, artifacts, determinism, resume, export, guards."""

import json

import pytest

from tuneforge.errors import DataError, TrainingDiverged, TuneforgeError
from tuneforge.train.run import train


def train_losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"kind": "train"' in line]


def test_loss_falls_and_run_dir_is_complete(make_recipe):
    result = train(make_recipe())
    losses = train_losses(result.run_dir)
    assert len(losses) == 36
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert result.metrics["accuracy"] >= 0.9
    run = result.run_dir
    for name in ("recipe.yaml", "manifest.json", "metrics.jsonl", "loss.png", "data/rejected.jsonl",
                 "data/data_report.md", "data/data_report.json", "data/train.jsonl", "result.json",
                 "eval/eval.json", "eval/eval.md", "eval/confusion_matrix.png", "checkpoints/last/train_state.json",
                 "checkpoints/best/trainable.safetensors"):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"packages", "data_files", "git", "seed", "hardware", "precision"} <= set(manifest)
    assert manifest["seed"] == 7 and manifest["packages"]["torch"]
    assert all(len(v["sha256"]) == 64 for v in manifest["data_files"].values())
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [12, 24, 36]


def test_same_recipe_and_seed_give_same_metrics(make_recipe):
    a = train(make_recipe("train.epochs=2", name="a"))
    b = train(make_recipe("train.epochs=2", name="b"))
    assert train_losses(a.run_dir) == train_losses(b.run_dir)
    assert a.metrics == b.metrics


def test_resume_continues_exactly(make_recipe):
    from safetensors.torch import load_file

    full = train(make_recipe(name="full"))
    # 17 steps: mid-epoch (6 batches per epoch) and between evaluations, so data order, RNG, optimizer and
    # scheduler state all have to come back for the rest to match.
    halted = train(make_recipe("train.halt_after_steps=17", name="resumed"))
    assert halted.halted and halted.global_step == 17
    resumed = train(make_recipe(name="resumed"), resume=True)
    assert resumed.global_step == 36
    assert train_losses(resumed.run_dir) == train_losses(full.run_dir)
    assert resumed.metrics == full.metrics
    a = load_file(str(full.run_dir / "checkpoints/best/trainable.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints/best/trainable.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_may_switch_on_activation_checkpointing(make_recipe):
    """A run halted (or killed for memory) resumes with checkpointing on, and ends as if never stopped."""
    full = train(make_recipe("train.max_steps=8", name="plain"))
    train(make_recipe("train.max_steps=8", "train.halt_after_steps=4", name="switched"))
    resumed = train(make_recipe("train.max_steps=8", "train.gradient_checkpointing=true", name="switched"),
                    resume=True)
    assert resumed.global_step == 8
    assert train_losses(resumed.run_dir) == pytest.approx(train_losses(full.run_dir), rel=1e-5)
    assert resumed.metrics["loss"] == pytest.approx(full.metrics["loss"], rel=1e-5)
    assert resumed.metrics["confusion_matrix"] == full.metrics["confusion_matrix"]


def test_resume_refuses_a_changed_recipe(make_recipe):
    train(make_recipe("train.halt_after_steps=3", name="r"))
    with pytest.raises(TuneforgeError, match="--resume: the recipe differs"):
        train(make_recipe("train.learning_rate=1e-2", name="r"), resume=True)


def test_existing_run_dir_needs_resume_or_overwrite(make_recipe):
    train(make_recipe("train.max_steps=1", name="x"))
    with pytest.raises(TuneforgeError, match=r"run directory .*x already exists; use --resume"):
        train(make_recipe("train.max_steps=1", name="x"))
    assert train(make_recipe("train.max_steps=1", name="x"), overwrite=True).global_step == 1


def test_lora_export_reloads_with_identical_predictions(make_recipe, toy_data):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = train(make_recipe("method=lora", "train.learning_rate=1e-2", "export.enabled=true"))
    assert result.params["trainable"] < result.params["total"]
    assert result.verification["prediction_agreement"] == 1.0
    export = result.export_dir
    assert (export / "model.safetensors").exists() and (export / "README.md").exists()
    assert not list(export.glob("adapter_*")), "LoRA must be merged, not saved as an adapter"
    model = AutoModelForSequenceClassification.from_pretrained(export)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    tok = AutoTokenizer.from_pretrained(export)
    rows = [line.split("\t") for line in toy_data[1].read_text().splitlines()[1:]]
    with torch.no_grad():
        pred = model(**tok([r[0] for r in rows], padding=True, return_tensors="pt")).logits.argmax(-1)
    accuracy = (pred == torch.tensor([int(r[1]) for r in rows])).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["accuracy"])
    card = (export / "README.md").read_text()
    assert "method: lora" in card and "100.00% prediction agreement" in card


def test_nan_guard_stops_with_a_clear_message(make_recipe):
    recipe = make_recipe("train.optimizer=sgd", "train.learning_rate=1e12", "train.max_grad_norm=null")
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at step \d+ \(learning rate 1e\+12\)"):
        train(recipe)


def test_early_stopping_on_no_improvement(make_recipe):
    # a learning rate too small to change any prediction: accuracy never improves after the first eval
    result = train(make_recipe("train.learning_rate=1e-12", "train.eval_every_steps=1",
                               "train.early_stopping_patience=2"))
    assert result.global_step == 3
    assert result.best_step == 1


def test_gradient_accumulation_runs_and_counts_steps(make_recipe):
    result = train(make_recipe("train.batch_size=8", "train.gradient_accumulation_steps=2", "train.epochs=1"))
    assert result.total_steps == 6 and result.global_step == 6


def test_malformed_rows_are_quarantined(make_recipe, toy_data):
    train_file = toy_data[0]
    with train_file.open("a") as fh:
        fh.write("\t1\n")  # empty text
        fh.write("fine words\tneutral\n")  # unknown label
    result = train(make_recipe("data.max_rejected_fraction=0.05", "train.max_steps=1"))
    rejected = [json.loads(line) for line in (result.run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (98, "empty text"), (99, "unknown label 'neutral' (allowed: negative, positive)")]
    with pytest.raises(DataError, match=r"2 of 98 rows rejected \(2.0% > data.max_rejected_fraction 1%\)"):
        train(make_recipe("train.max_steps=1", name="strict"))
    # the rejected rows are written even when the run stops because of them
    assert (result.run_dir.parent / "strict" / "data" / "rejected.jsonl").read_text().count("\n") == 2


def test_stratified_split_when_no_validation_file(make_recipe):
    result = train(make_recipe("data.validation_file=null", "train.max_steps=2"))
    summary = json.loads((result.run_dir / "data_summary.json").read_text())
    assert summary["validation_rows"] == 10 and summary["train_rows"] == 86
    assert summary["validation_label_counts"] == {"negative": 5, "positive": 5}
