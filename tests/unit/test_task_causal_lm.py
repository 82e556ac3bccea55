"""causal_lm instruction tuning end to end on a tiny random Llama: the loss (on replies only) falls,
generation-based evaluation runs, and the export reloads to the same predictions."""

from __future__ import annotations

import json
import random

import pytest

from tuneforge.train.run import train


def _alpaca(path, n, rng):
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"instruction": f"add {a} and {b}", "input": "", "output": f"the answer is {a + b}"})
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _recipe(make_recipe, model_dir, train_file, dev_file, *overrides):
    from tuneforge.config_io import apply_overrides
    from tuneforge.recipe import Recipe, resolved_dict

    d = resolved_dict(make_recipe())
    d.pop("classification")  # the base recipe's task section; these tests set their own task
    d.update(task="causal_lm", model={"name": str(model_dir), "max_length": 64})
    d["train"].update(metric_for_best=None, epochs=8, learning_rate=3e-3)
    d["export"]["enabled"] = True
    d["data"] = {"train_file": str(train_file), "validation_file": str(dev_file), "format": "alpaca",
                 "formatting": {"template": "chatml"}, "dedup": {"exact": False, "near": False},
                 "decontaminate": {"enabled": False}}
    d["causal_lm"] = {"eval_metric": "final_number", "eval_examples": 8, "generation": {"max_new_tokens": 6}}
    return Recipe.model_validate(apply_overrides(d, list(overrides)))


@pytest.mark.parametrize("method,lr", [("full", "3e-3"), ("lora", "3e-2")])
def test_instruction_tuning_loss_falls_and_export_verifies(method, lr, tmp_path, make_recipe, tiny_llama_dir):
    rng = random.Random(0)
    tr, dev = _alpaca(tmp_path / "tr.json", 96, rng), _alpaca(tmp_path / "dev.json", 16, rng)
    result = train(_recipe(make_recipe, tiny_llama_dir, tr, dev, f"method={method}", f"train.learning_rate={lr}"))
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    assert {"loss", "perplexity", "final_number_accuracy", "answered"} <= set(result.metrics)
    assert result.verification["passed"]
    # base and tuned side by side, same prompts: the base model is the untrained one (adapters off for lora)
    table = (result.run_dir / "eval" / "base_vs_tuned.md").read_text()
    assert "| metric | better | base | tuned |" in table and "| final_number_accuracy | higher |" in table
    comparison = json.loads((result.run_dir / "eval" / "base_vs_tuned.json").read_text())
    assert comparison["tuned"]["final_number_accuracy"] == result.metrics["final_number_accuracy"]
    # validation loss of the same split before and after tuning, in the same table
    assert "| loss | lower |" in table and "| perplexity | lower |" in table
    assert comparison["base"]["loss"] > 1.5 * comparison["tuned"]["loss"], comparison
    # evaluations during training report loss only: generation runs at the final evaluation
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals and all("final_number_accuracy" not in e for e in evals)
    assert result.verification["reloaded_with"] == "transformers.AutoModelForCausalLM"


def test_chat_record_without_assistant_turn_is_rejected(tmp_path, make_recipe, tiny_llama_dir):
    rng = random.Random(1)
    tr, dev = _alpaca(tmp_path / "tr.json", 96, rng), _alpaca(tmp_path / "dev.json", 16, rng)
    rows = json.loads(tr.read_text())
    rows.append({"instruction": "add 1 and 1", "input": "", "output": ""})
    tr.write_text(json.dumps(rows))
    result = train(_recipe(make_recipe, tiny_llama_dir, tr, dev, "train.max_steps=1", "export.enabled=false",
                           "data.max_rejected_fraction=0.05"))
    [row] = [json.loads(line) for line in (result.run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert (row["stage"], row["reason"]) == ("read", "field 'output' is empty")


def test_selecting_on_a_generation_metric_needs_generation_during_training(make_recipe, tiny_llama_dir, tmp_path):
    from pydantic import ValidationError

    rng = random.Random(2)
    tr, dev = _alpaca(tmp_path / "tr.json", 8, rng), _alpaca(tmp_path / "dev.json", 4, rng)
    with pytest.raises(ValidationError, match="final_number_accuracy is only measured during training with "
                                              "causal_lm.generate_during_training: true"):
        _recipe(make_recipe, tiny_llama_dir, tr, dev, "train.metric_for_best=final_number_accuracy")
    recipe = _recipe(make_recipe, tiny_llama_dir, tr, dev, "train.metric_for_best=final_number_accuracy",
                     "causal_lm.generate_during_training=true")
    assert recipe.train.metric_for_best == "final_number_accuracy"



def test_text_to_text_pairs_train_on_the_reply_and_score_against_every_reference(tmp_path, make_recipe,
                                                                                 tiny_llama_dir):
    from tuneforge.data.prepare import encode_split, load_prepared, prepare_task_data
    from tuneforge.models.build import load_tokenizer
    from tuneforge.models.resolve import resolve_model
    from tuneforge.tasks import spec_for

    rng = random.Random(3)

    def pairs(path, n):
        rows = []
        for _ in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            rows.append({"source": [f"first {a}.", f"then {b}."], "target": [f"sum {a + b}", f"total {a + b}"]})
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return path

    tr, dev = pairs(tmp_path / "tr.jsonl", 64), pairs(tmp_path / "dev.jsonl", 8)
    recipe = _recipe(make_recipe, tiny_llama_dir, tr, dev, "train.max_steps=2", "export.enabled=false",
                     "causal_lm.eval_metric=text", "causal_lm.pair_prompt='Summarise: '",
                     "data.format=jsonl", "data.text_column=source", "data.target_column=target")
    spec = spec_for(recipe)
    prepare_task_data(recipe.data, recipe.seed, tmp_path / "data", spec)
    data = load_prepared(tmp_path / "data")
    assert data.records["validation"][0]["references"][1].startswith("total ")
    tokenizer = load_tokenizer(resolve_model(str(tiny_llama_dir)), False)
    enc = encode_split(spec, tokenizer, data, "validation", recipe)
    first = data.records["validation"][0]
    prompt = tokenizer.decode([t for t, y in zip(enc.input_ids[0], enc.labels[0]) if y == -100])
    reply = tokenizer.decode([y for y in enc.labels[0] if y != -100])
    assert "summarise : " + first["source"].lower() in prompt and first["target"].lower() in reply
    assert first["target"].lower() not in prompt

    result = train(recipe)
    assert {"bleu", "chrf", "rougeL"} <= set(result.metrics) and {"bleu", "rougeL"} <= set(result.metrics["base"])
