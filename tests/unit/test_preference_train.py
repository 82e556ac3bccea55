"""Preference tasks through ``train()`` on a tiny random Llama: DPO (LoRA and full fine-tuning), KTO,
and a reward model whose export reloads with identical scores."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

#: a few pairs to memorise: the chosen reply is always "yes ..." and the rejected one "no ..."
PAIRS = [("is the sky blue", "yes it is blue", "no it is green"),
         ("is water wet", "yes water is wet", "no water is dry"),
         ("can birds fly", "yes most birds fly", "no birds swim"),
         ("is ice cold", "yes ice is cold", "no ice is hot"),
         ("do cats purr", "yes cats purr", "no cats bark"),
         ("is snow white", "yes snow is white", "no snow is black")]


def _write_pairs(path, pairs) -> None:
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in pairs))


def _recipe(tmp_path, tiny_llama_dir, *, task="preference", method="lora", steps=12, lr=5e-3, extra=None):
    from tuneforge.recipe import Recipe

    _write_pairs(tmp_path / "train.jsonl", PAIRS)
    _write_pairs(tmp_path / "dev.jsonl", PAIRS)  # memorising: the same pairs are evaluated
    d = {"name": f"{task}-{method}", "seed": 3, "output_dir": str(tmp_path / "runs"), "task": task,
         "model": {"name": str(tiny_llama_dir), "max_length": 48}, "method": method,
         "data": {"train_file": str(tmp_path / "train.jsonl"), "validation_file": str(tmp_path / "dev.jsonl"),
                  "formatting": {"template": "chatml"},
                  "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}},
         "train": {"max_steps": steps, "batch_size": 3, "learning_rate": lr, "eval_every_steps": steps,
                   "log_every_steps": 1, "precision": "fp32", "warmup_ratio": 0.0, "scheduler": "constant"},
         "export": {"enabled": False}}
    if method == "lora":
        d["lora"] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "o_proj"]}
    for key, value in (extra or {}).items():
        d[key] = value
    return Recipe.model_validate(d)


def _train_losses(result) -> list[float]:
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r.get("kind") == "train"]


def test_dpo_lora_starts_at_ln2_and_memorises_pairs(tmp_path, tiny_llama_dir, one_thread):
    from tuneforge.train.run import train

    result = train(_recipe(tmp_path, tiny_llama_dir))
    losses = _train_losses(result)
    # LoRA starts as the identity and the reference is the same model with adapters off: policy == reference
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert losses[-1] < losses[0] - 0.05
    m = result.metrics
    assert m["reward_accuracy"] == 1.0 and m["reward_margin"] > 0
    base = json.loads((result.run_dir / "eval" / "base_vs_tuned.json").read_text())
    # the base model prefers the rejected replies about as often as not; the tuned one prefers the chosen
    assert base["tuned"]["preference_accuracy"] >= base["base"]["preference_accuracy"]


def test_dpo_full_finetuning_uses_precomputed_reference(tmp_path, tiny_llama_dir, one_thread):
    from tuneforge.train.run import train

    result = train(_recipe(tmp_path, tiny_llama_dir, method="full", steps=6, lr=1e-3))
    losses = _train_losses(result)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    cache = json.loads((result.run_dir / "data" / "before_training-train.json").read_text())
    assert len(cache["reference"]["ref_chosen"]) == len(PAIRS)
    assert result.metrics["reward_accuracy"] > 0.5


@pytest.mark.parametrize("loss", ["ipo", "robust", "simpo", "orpo"])
def test_other_pair_losses_train(tmp_path, tiny_llama_dir, one_thread, loss):
    from tuneforge.train.run import train

    extra = {"preference": {"loss": loss, **({"label_smoothing": 0.1} if loss == "robust" else {})}}
    result = train(_recipe(tmp_path, tiny_llama_dir, steps=6, extra=extra))
    losses = _train_losses(result)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def test_kto_trains_on_unpaired_replies(tmp_path, tiny_llama_dir, one_thread):
    from tuneforge.train.run import train

    rows = []
    for p, c, r in PAIRS:
        rows.append({"prompt": p, "completion": c, "label": True})
        rows.append({"prompt": p, "completion": r, "label": False})
    recipe = _recipe(tmp_path, tiny_llama_dir, steps=8, extra={"preference": {"loss": "kto"}})
    for name in ("train.jsonl", "dev.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(x) + "\n" for x in rows))
    result = train(recipe)
    losses = _train_losses(result)
    assert losses[0] == pytest.approx(0.5, abs=1e-5)  # 1 - sigmoid(0) for every reply at the start
    assert losses[-1] < losses[0]
    assert result.metrics["reward_accuracy"] > 0.5


def test_pairs_for_kto_are_refused_with_the_reason(tmp_path, tiny_llama_dir):
    from tuneforge.errors import DataError
    from tuneforge.train.run import train

    with pytest.raises(DataError, match="kto trains on unpaired replies"):
        train(_recipe(tmp_path, tiny_llama_dir, steps=1, extra={"preference": {"loss": "kto"}}))


def test_reward_model_learns_pairs_and_export_reloads_with_identical_scores(tmp_path, tiny_llama_dir, one_thread):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.train.run import train

    recipe = _recipe(tmp_path, tiny_llama_dir, task="reward_model", steps=12, lr=5e-3)
    recipe = recipe.model_copy(update={"export": recipe.export.model_copy(update={"enabled": True})})
    result = train(recipe)
    assert result.metrics["pairwise_accuracy"] == 1.0
    # the export, reloaded as a plain AutoModelForSequenceClassification, gives the trained model's scores
    assert result.verification["passed"] and result.verification["max_abs_logit_diff"] < 1e-4
    assert result.verification["prediction_agreement"] == 1.0
    export = result.export_dir
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    assert model.config.num_labels == 1 and model.config.id2label[0] == "reward"
    # the exported model ranks a memorised pair the same way
    prompt, chosen, rejected = PAIRS[0]

    def score(reply: str) -> float:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                                       tokenize=False)
        with torch.no_grad():
            return float(model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0])

    assert score(chosen) > score(rejected)
