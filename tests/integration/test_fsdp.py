"""FSDP2 under `accelerate launch --config_file configs/accelerate/fsdp2.yaml` with 2 CPU processes (gloo):
full fine-tuning of the tiny BERT trains like one process, resumes exactly from its sharded checkpoint, and
exports a full model that reloads with plain transformers and verifies.

Accelerate 1.16 keeps CPU processes on MULTI_CPU (DDP) even under an FSDP config; tuneforge switches its
state to FSDP itself (train/distributed.py), so this runs the real FSDP2 paths: fully_shard per BertLayer,
sharded DCP checkpoints, state-dict gathering for the best weights and the export.

Tolerances. One process vs FSDP over 2: the same global batches in the same order from the same initial
weights, no dropout (the model is copied with dropout 0: each process would draw its own masks), so only
the floating-point summation order differs (FSDP reduce-scatters gradient shards; each process sums its
half of the batch): every logged train loss and eval loss within rtol 1e-4, accuracies equal. Halted and
resumed FSDP vs uninterrupted FSDP: the same arithmetic in the same order, so rtol 1e-6 (measured: equal).
Measured on the 2-core development machine: about 85 s, most of it starting the 3 launches' processes.

The fast tests below check train/distributed.py's decisions without launching anything.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "accelerate" / "fsdp2.yaml"


@pytest.fixture
def no_dropout_model(tiny_model_dir, tmp_path) -> Path:
    import shutil

    out = tmp_path / "tiny-bert-no-dropout"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


def _launch_fsdp(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    # The config's distributed_type FSDP selects the torchrun launcher; --num_processes overrides its 8.
    cmd = [str(bindir / "accelerate"), "launch", "--config_file", str(CONFIG), "--num_processes", "2",
           "--main_process_port", "0", "-m", "tuneforge.cli", "run", str(recipe), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


@pytest.mark.slow
def test_fsdp_matches_one_process_resumes_and_exports(tmp_path, make_recipe, no_dropout_model, one_thread):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.recipe import resolved_dict
    from tuneforge.train.run import train

    # 4 epochs of 6 steps (global batch 16), evaluated every 6: the tiny model starts separating the toy
    # data after ~18 steps (eval loss 0.69 -> 0.55, accuracy 0.5 -> 1.0). The halt at step 15 is mid-epoch,
    # after an evaluation (a best checkpoint exists) and before the next.
    overrides = (f"model.name={no_dropout_model}", "train.epochs=4", "train.eval_every_steps=6")
    recipe = make_recipe(*overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(resolved_dict(recipe)))
    runs = recipe.output_dir

    one = train(make_recipe(*overrides, name="one"))
    fsdp = _launch_fsdp(path, "name=fsdp")
    assert "distributed: FSDP2 over 2 processes" in fsdp.stderr and "blocks BertLayer" in fsdp.stderr
    # the resume state is sharded: one DCP file per process, for the model and for the optimizer
    last = runs / "fsdp" / "checkpoints" / "last"
    assert len(list((last / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2
    assert len(list((last / "optimizer_0").glob("*.distcp"))) == 2

    m1 = one.to_json()
    m2 = json.loads((runs / "fsdp" / "result.json").read_text())
    assert m1["global_step"] == m2["global_step"] == 24
    assert _train_losses(runs / "fsdp") == pytest.approx(_train_losses(runs / "one"), rel=1e-4)
    for a, b in zip(m1["history"], m2["history"], strict=True):
        assert (a["step"], a["accuracy"]) == (b["step"], b["accuracy"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert m2["metrics"]["loss"] == pytest.approx(m1["metrics"]["loss"], rel=1e-4)
    assert m2["metrics"]["accuracy"] == m1["metrics"]["accuracy"] and m1["metrics"]["loss"] < 0.65  # it learned

    # halt after step 15, resume from the sharded checkpoint (with export on: not part of the run's identity)
    halted = _launch_fsdp(path, "name=resumed", "train.halt_after_steps=15")
    assert "halted after step 15" in halted.stderr
    _launch_fsdp(path, "name=resumed", "export.enabled=true", "--resume")
    m3 = json.loads((runs / "resumed" / "result.json").read_text())
    assert m3["global_step"] == 24 and m3["best_step"] == m2["best_step"]
    assert _train_losses(runs / "resumed") == pytest.approx(_train_losses(runs / "fsdp"), rel=1e-6)
    assert m3["metrics"]["loss"] == pytest.approx(m2["metrics"]["loss"], rel=1e-6)
    assert m3["metrics"]["accuracy"] == m2["metrics"]["accuracy"]

    # the export, gathered from the shards: verified by the run, and reloadable with plain transformers
    export = runs / "resumed" / "export"
    assert json.loads((export / "verification.json").read_text())["passed"] is True
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    rows = [line.split("\t") for line in Path(recipe.data.validation_file).read_text().splitlines()[1:]]
    import torch

    with torch.no_grad():
        batch = tokenizer([text for text, _ in rows], padding=True, truncation=True, max_length=32,
                          return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1).tolist()
    accuracy = sum(p == int(label) for p, (_, label) in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(m3["metrics"]["accuracy"])


# ------------------------------------------------------------------ fast: train/distributed.py's decisions


def _fake_fsdp_accelerator(plugin=None):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True,
                           state=SimpleNamespace(fsdp_plugin=plugin))


def test_fsdp_version_1_is_refused(monkeypatch):
    from tuneforge.errors import TuneforgeError
    from tuneforge.train.distributed import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(TuneforgeError, match="FSDP version 2 only"):
        make_accelerator("no", cpu=True)


@pytest.mark.parametrize("task, causal, refused", [
    ("seq2seq", {}, "task seq2seq"),
    ("causal_lm", {"generate_during_training": True, "sample_prompts": []}, "generate_during_training"),
    ("causal_lm", {"generate_during_training": False, "sample_prompts": ["ROMEO:"]}, "sample_prompts"),
    ("causal_lm", {"generate_during_training": False, "sample_prompts": []}, None),
])
def test_generation_during_training_is_refused_when_sharded(task, causal, refused):
    from types import SimpleNamespace

    from tuneforge.errors import TuneforgeError
    from tuneforge.train.distributed import check_distributed_options

    recipe = SimpleNamespace(task=task, train=SimpleNamespace(gradient_accumulation_steps=1),
                             causal_lm=SimpleNamespace(**causal), model=SimpleNamespace(quantize=None))
    if refused is None:
        check_distributed_options(recipe, _fake_fsdp_accelerator())
        return
    with pytest.raises(TuneforgeError, match=refused):
        check_distributed_options(recipe, _fake_fsdp_accelerator())


@pytest.mark.parametrize("family, expected", [("bert", ["BertLayer"]), ("llama", ["LlamaDecoderLayer"])])
def test_fsdp_wraps_the_blocks_not_the_embeddings(family, expected):
    from types import SimpleNamespace

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from tuneforge.train.distributed import set_fsdp_wrap_classes

    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    model = BertModel(BertConfig(**small)) if family == "bert" else LlamaForCausalLM(LlamaConfig(**small))
    assert family == "llama" or "BertEmbeddings" in model._no_split_modules  # what Accelerate would shard twice
    plugin = SimpleNamespace(transformer_cls_names_to_wrap=None, auto_wrap_policy=transformer_auto_wrap_policy)
    set_fsdp_wrap_classes(_fake_fsdp_accelerator(plugin), model)
    assert plugin.transformer_cls_names_to_wrap == expected
    plugin.transformer_cls_names_to_wrap = ["MyBlock"]  # named in the config: kept
    set_fsdp_wrap_classes(_fake_fsdp_accelerator(plugin), model)
    assert plugin.transformer_cls_names_to_wrap == ["MyBlock"]


def test_gathered_weights_load_into_a_rebuilt_model_with_tied_embeddings():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.train.distributed import load_full_weights

    config = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=50, tie_word_embeddings=True)
    trained, fresh = LlamaForCausalLM(config), LlamaForCausalLM(config)
    state = {k: v for k, v in trained.state_dict().items() if k != "lm_head.weight"}  # one name of the tied pair
    load_full_weights(fresh, state)
    assert torch.equal(fresh.lm_head.weight, trained.model.embed_tokens.weight)
    with pytest.raises(RuntimeError, match="missing"):
        load_full_weights(fresh, {k: v for k, v in state.items() if "layers.0.mlp" not in k})
