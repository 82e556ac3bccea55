"""The real pretrained all-MiniLM-L6-v2 (from its PyPI package) on real SST-2 sentences: a few steps of
LoRA training must lower the loss, and the merged export must reload with identical predictions."""

import json

import pytest
import torch

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_minilm_lora_few_steps_loss_falls_and_export_matches(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.recipe import Recipe
    from tuneforge.train.run import train

    recipe = Recipe.model_validate({
        "name": "minilm-smoke", "seed": 1, "output_dir": str(tmp_path),
        "model": {"name": "minilm-l6", "max_length": 64},
        "data": {"train_file": str(REPO / "data/sst2/train.tsv"), "validation_file": str(REPO / "data/sst2/dev.tsv"),
                 "text_column": "sentence", "label_column": "label", "label_names": ["negative", "positive"],
                 "max_train_samples": 1920},
        "method": "lora", "lora": {"r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"]},
        "train": {"max_steps": 60, "batch_size": 32, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                  "scheduler": "constant", "log_every_steps": 1, "eval_every_steps": 60},
    })
    result = train(recipe)
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1
    assert result.metrics["accuracy"] > 0.7  # 60 steps already beat chance clearly on the real dev set

    # the whole dev set: a plain transformers load of the export predicts exactly like the trained model
    assert result.verification["examples"] == 872
    assert result.verification["prediction_agreement"] == 1.0
    model = AutoModelForSequenceClassification.from_pretrained(result.export_dir)
    tok = AutoTokenizer.from_pretrained(result.export_dir)
    rows = [line.split("\t") for line in (REPO / "data/sst2/dev.tsv").read_text().splitlines()[1:]]
    preds = []
    with torch.no_grad():
        for i in range(0, len(rows), 128):
            batch = tok([r[0] for r in rows[i:i + 128]], padding=True, truncation=True, max_length=64,
                        return_tensors="pt")
            preds += model(**batch).logits.argmax(-1).tolist()
    accuracy = sum(p == int(r[1]) for p, r in zip(preds, rows)) / len(rows)
    assert accuracy == pytest.approx(result.metrics["accuracy"])
