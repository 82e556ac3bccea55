"""`tuneforge plan`: the arithmetic on hand-computed small configs, the activation formula against what
torch really keeps for the backward pass, the --memory suggestions and their order, fit/no-fit, JSON."""

import contextlib
import json
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.plan.estimate import (BYTES_4BIT, Calibration, Setup, autocast_copy_bytes, gradient_bytes,
                                     kv_cache_bytes, layer_activation_bytes, loss_bytes, optimizer_bytes, sharded,
                                     weight_bytes)
from tuneforge.plan.model import arch_from_config, build_meta_model, param_stats
from tuneforge.recipe import Recipe
from tuneforge.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
NO_OVERHEAD = Calibration(framework_bytes=0.0, workspace_factor=0.0, mfu=0.5)


@pytest.fixture(autouse=True)
def no_peak_cache(tmp_path, monkeypatch):
    """No cached matmul peak (no step time) and no prepared data: every figure comes from the arithmetic."""
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def recipe(**changes) -> Recipe:
    base = {"name": "t", "task": "causal_lm", "data": {"train_file": "corpus.txt"}, "method": "full"}
    base.update(changes)
    return Recipe.model_validate(base)


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def llama_stats(r: Recipe):
    config = llama_config()
    arch = arch_from_config(config, "sdpa")
    return arch, param_stats(build_meta_model(r, config, get_task("causal_lm"), None, "sdpa"), arch)


# 2-layer Llama (hidden 32, MLP 64, 4 heads of 8, 2 KV heads, vocabulary 100, untied), by hand:
#   embeddings 100*32 = 3,200; per layer q 32*32 + k 32*16 + v 32*16 + o 32*32 + gate/up/down 3*32*64
#   + 2 RMSNorms 2*32 = 9,280; 2 layers 18,560; final norm 32; lm_head 100*32 = 3,200 -> 24,992.
LLAMA_TOTAL = 3200 + 2 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64) + 32 + 3200
# LoRA r=4 on q_proj (32 -> 32) and v_proj (32 -> 16): A 4*32 + B 32*4 and A 4*32 + B 16*4, per layer 448.
LORA_TRAINABLE = 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4)
# Frozen body linear weights a 4-bit base quantises (the lm_head stays full precision): 2 x 9,216.
LLAMA_LINEAR = 2 * (1024 + 512 + 512 + 1024 + 3 * 2048)


def test_full_fine_tuning_bytes_by_hand():
    arch, stats = llama_stats(recipe())
    assert LLAMA_TOTAL == 24_992
    assert (stats.total, stats.trainable) == (LLAMA_TOTAL, LLAMA_TOTAL)
    assert weight_bytes(stats, Setup()) == 4 * 24_992
    assert gradient_bytes(stats) == 4 * 24_992
    assert optimizer_bytes(stats, Setup(optimizer="adamw")) == 8 * 24_992  # two fp32 moments
    assert optimizer_bytes(stats, Setup(optimizer="sgd", momentum=0.9)) == 4 * 24_992
    assert optimizer_bytes(stats, Setup(optimizer="sgd", momentum=0.0)) == 0
    assert optimizer_bytes(stats, Setup(optimizer="adamw_8bit")) == 2 * 24_992
    # Adafactor: rows + columns of each matrix, 1-D tensors whole. Embedding and lm_head (100, 32): 132 each;
    # per layer q 64 + k 48 + v 48 + o 64 + gate/up/down 3 * 96 + norms 64 = 576; final norm 32.
    assert optimizer_bytes(stats, Setup(optimizer="adafactor")) == 4 * (132 + 132 + 2 * 576 + 32)
    assert (arch.layers, arch.kv_heads, arch.head_dim, arch.family) == (2, 2, 8, "llama")


def test_lora_and_4bit_base_by_hand():
    arch, stats = llama_stats(recipe(method="lora", lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}))
    assert stats.trainable == LORA_TRAINABLE == 896
    assert stats.total == LLAMA_TOTAL + 896
    assert optimizer_bytes(stats, Setup()) == 8 * 896
    assert stats.quantizable == LLAMA_LINEAR
    setup = Setup(quantize_bits=4)
    assert weight_bytes(stats, setup) == pytest.approx(4 * (stats.total - LLAMA_LINEAR) + BYTES_4BIT * LLAMA_LINEAR)
    assert weight_bytes(stats, Setup(quantize_bits=8)) == 4 * (stats.total - LLAMA_LINEAR) + LLAMA_LINEAR
    # bf16 copies of every matmul weight a gradient passes through: all but the embedding lookup and layer 0's
    # q_proj, which runs before the first adapter; none in fp32, none of the quantised ones.
    assert autocast_copy_bytes(stats, Setup(precision="bf16")) == 2 * (stats.total - 3200 - 1024)
    assert autocast_copy_bytes(stats, Setup(precision="fp32")) == 0
    groups = stats.layers[0].groups
    assert groups["qkv"].lora_dropout == 2 and groups["qkv"].frozen == 1 and groups["down"].frozen == 1


def test_sharding_divides_the_right_components():
    parts = {"weights": 8.0, "gradients": 4.0, "optimizer": 16.0, "activations": 10.0}
    assert sharded(parts, Setup(processes=4, shard="none")) == parts
    assert sharded(parts, Setup(processes=4, shard="zero2")) == {"weights": 8.0, "gradients": 1.0,
                                                                  "optimizer": 4.0, "activations": 10.0}
    assert sharded(parts, Setup(processes=4, shard="fsdp")) == {"weights": 2.0, "gradients": 1.0,
                                                                 "optimizer": 4.0, "activations": 10.0}


def test_kv_cache_and_loss_bytes():
    arch, _ = llama_stats(recipe())
    # 2 (K and V) x 2 layers x 2 KV heads x 8 dims x (6 + 4) positions x batch 3 x 2 bytes
    assert kv_cache_bytes(arch, 3, 6 + 4, 2) == 2 * 2 * 2 * 8 * 10 * 3 * 2
    setup = Setup(precision="bf16", label_kind="causal", labelled_fraction=0.5)
    assert loss_bytes(arch, setup, 1000) == 1000 * 100 * (2 + 4 + 4)  # the whole batch's logits
    chunked = replace(setup, loss_chunk_rows=64)
    assert loss_bytes(arch, chunked, 1000) == 64 * 100 * 4 * 3  # one chunk of labelled rows
    assert loss_bytes(arch, chunked, 100) == 50 * 100 * 4 * 3  # fewer labelled rows than a chunk


# ------------------------------------------------------------------- activations vs. what torch keeps

def _saved_per_token(model, seq: int, precision: str) -> float:
    """Bytes the forward keeps for the backward, per token (unique storages, parameters excluded), from two
    batch sizes so that per-layer constants (autocast's weight copies) cancel."""
    import torch

    def kept(batch: int) -> int:
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(0))
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
            model(input_ids=ids)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(n for ptr, n in seen.items() if ptr not in params)

    return (kept(4) - kept(2)) / (2 * seq)


def _tiny(family: str, layers: int, attention: str, dropout: float):
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    if family == "bert":
        config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=192, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, num_labels=2)
        return config, BertForSequenceClassification(config), "classification"
    if family == "gpt2":
        config = GPT2Config(vocab_size=100, n_embd=64, n_inner=192, n_layer=layers, n_head=4, n_positions=64,
                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, activation_function="gelu",
                            bos_token_id=0, eos_token_id=0)
        return config, GPT2LMHeadModel(config), "causal_lm"
    config = llama_config()
    config.num_hidden_layers = layers
    from transformers import LlamaForCausalLM

    return config, LlamaForCausalLM(config), "causal_lm"


@pytest.mark.parametrize("family,precision,attention,dropout,method", [
    ("llama", "bf16", "sdpa", 0.0, "full"),
    ("llama", "fp32", "eager", 0.0, "lora"),
    ("bert", "bf16", "eager", 0.1, "lora"),
    ("bert", "fp32", "sdpa", 0.1, "full"),
    ("gpt2", "bf16", "sdpa", 0.0, "full"),
    ("gpt2", "fp32", "eager", 0.1, "lora"),
])
def test_layer_activation_formula_matches_saved_tensors(family, precision, attention, dropout, method):
    from tuneforge.models.methods import apply_method

    r = recipe(task="causal_lm" if family != "bert" else "classification", method=method,
               **({"lora": {"r": 4, "dropout": 0.1}} if method == "lora" else {}))
    measured = []
    for layers in (2, 3):
        config, model, task = _tiny(family, layers, attention, dropout)
        model.set_attn_implementation(attention)
        if method == "lora":
            model = apply_method(model, "lora", r.lora, task=get_task(task))
        model.train()
        measured.append(_saved_per_token(model, 32, precision))
    arch = arch_from_config(config, attention)
    planned = layer_activation_bytes(arch, param_stats(model, arch).layers[-1], Setup(precision=precision), 32)
    assert planned == pytest.approx(measured[1] - measured[0], rel=0.10)


# --------------------------------------------------------------------------- plans of a scratch recipe

def scratch_dict(**train) -> dict:
    """A 4-layer Llama from scratch (nothing to download, nothing to convert), 256 tokens of context."""
    return {"name": "t", "task": "causal_lm", "data": {"train_file": "corpus.txt"}, "method": "full",
            "model": {"architecture": {"family": "llama", "layers": 4, "heads": 4, "hidden": 64, "kv_heads": 2},
                      "tokenizer": {"type": "char"}, "max_length": 256},
            "train": {"batch_size": 16, "eval_batch_size": 1, "precision": "fp32", **train}}


def scratch(**train) -> Recipe:
    return Recipe.model_validate(scratch_dict(**train))


def test_make_plan_without_data_assumes_max_length_and_fits_by_budget():
    from tuneforge.plan import make_plan

    plan = make_plan(scratch(), device="cpu", calibration=NO_OVERHEAD)
    assert (plan.setup.micro_batch, plan.setup.seq_peak) == (16, 256)
    assert any("model.max_length" in n for n in plan.notes)
    assert plan.estimate.step_seconds is None  # no cached matmul peak
    peak = plan.estimate.peak
    assert make_plan(scratch(), memory=peak * 1.01, calibration=NO_OVERHEAD).fits is True
    assert make_plan(scratch(), memory=peak * 0.99, calibration=NO_OVERHEAD).fits is False
    assert make_plan(scratch(), device="h100", calibration=NO_OVERHEAD).precision == "fp32"
    two = make_plan(scratch(), processes=2, calibration=NO_OVERHEAD)
    assert two.setup.micro_batch == 8 and two.estimate.components["activations"] == pytest.approx(
        plan.estimate.components["activations"] / 2)


def _peak_with(plan, **changes):
    from tuneforge.plan.fit import _peak

    return _peak(plan, replace(plan.setup, **changes))[0]


def test_suggestions_come_in_order_of_cost():
    from tuneforge.plan import make_plan
    from tuneforge.plan.fit import suggest

    r = scratch()
    plan = make_plan(r, calibration=NO_OVERHEAD)
    checkpointed = _peak_with(plan, checkpointing=True)
    assert checkpointed < plan.estimate.peak
    only_ckpt = suggest(plan, (checkpointed + plan.estimate.peak) / 2, r)
    assert only_ckpt.overrides == ["train.gradient_checkpointing=true"] and only_ckpt.fits
    # below what checkpointing alone reaches: the micro-batch halves (global batch 16 kept), full fine-tuning
    # has no 4-bit base to offer
    half = _peak_with(plan, checkpointing=True, micro_batch=8, accumulation=2)
    more = suggest(plan, (half + checkpointed) / 2, r)
    assert more.overrides == ["train.gradient_checkpointing=true", "train.batch_size=8",
                              "train.gradient_accumulation_steps=2"] and more.fits
    # nothing fits in almost nothing: every change, the shortest max_length, and a note
    none = suggest(plan, 1.0, r)
    assert none.overrides[-1] == "model.max_length=16" and not none.fits and none.notes
    assert suggest(plan, plan.estimate.peak * 2, r) is None


def test_lora_suggestions_put_a_4bit_base_before_smaller_batches():
    from tuneforge.plan import make_plan
    from tuneforge.plan.fit import suggest

    r = scratch().model_copy(update={"method": "lora"})  # scratch + lora is refused by validation; the
    plan = make_plan(r, calibration=NO_OVERHEAD)         # arithmetic does not care
    out = suggest(plan, 1.0, r)
    assert out.overrides[:2] == ["train.gradient_checkpointing=true", "model.quantize.bits=4"]
    assert out.overrides.index("model.quantize.bits=4") < out.overrides.index("train.batch_size=1")
    skipped = suggest(plan, 1.0, r, has_key=lambda key: key != "model.quantize")
    assert "model.quantize.bits=4" not in skipped.overrides and any("model.quantize" in n for n in skipped.notes)


def test_parse_bytes():
    from tuneforge.errors import TuneforgeError
    from tuneforge.plan.fit import parse_bytes

    assert parse_bytes("24GiB") == 24 * 2 ** 30
    assert parse_bytes("1.5 GB") == 1.5e9
    assert parse_bytes("800MiB") == 800 * 2 ** 20
    assert parse_bytes("1000") == 1000
    with pytest.raises(TuneforgeError, match="24GiB"):
        parse_bytes("lots")


# ------------------------------------------------------------------------------------------------- CLI

def _recipe_file(tmp_path) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(scratch_dict()))
    return str(path)


def test_cli_json_output_on_a_named_gpu(tmp_path):
    result = runner.invoke(app, ["plan", _recipe_file(tmp_path), "--json", "--device", "h100", "--memory", "1MiB"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["device"]["name"] == "h100" and out["device"]["peak_flops"] == pytest.approx(989e12 / 2)
    assert out["precision"] == "fp32" and out["fits"] is False
    assert set(out["memory"]["training"]) >= {"weights", "gradients", "optimizer", "activations", "loss"}
    assert out["memory"]["peak_bytes"] == pytest.approx(max(sum(out["memory"][p].values())
                                                            for p in ("training", "evaluation")))
    assert out["time"]["step_seconds"] > 0
    assert out["suggestion"]["overrides"][0] == "train.gradient_checkpointing=true"


def test_cli_bad_device_and_memory_are_user_errors(tmp_path):
    path = _recipe_file(tmp_path)
    result = runner.invoke(app, ["plan", path, "--device", "tpu"])
    assert result.exit_code == 2 and "allowed are cpu, cuda, h100, a100-80gb, l4, rtx4090" in result.output
    result = runner.invoke(app, ["plan", path, "--memory", "a lot"])
    assert result.exit_code == 2 and "--memory" in result.output
    (tmp_path / "corpus.txt").write_text("some text\n")
    with contextlib.chdir(tmp_path):
        result = runner.invoke(app, ["plan", path, "--measure", "3", "--device", "h100"])
    assert result.exit_code == 2 and "--device cpu or cuda" in result.output


def test_warn_if_too_big(monkeypatch):
    from tuneforge.plan import warn_if_too_big

    monkeypatch.setenv("TUNEFORGE_PLAN_MEMORY", "1MB")
    message = warn_if_too_big(scratch())
    assert message.startswith("warning: the plan puts this run's peak memory at") and "\n" not in message
    monkeypatch.setenv("TUNEFORGE_PLAN_MEMORY", "1TB")
    assert warn_if_too_big(scratch()) is None
    broken = scratch().model_copy(update={"model": scratch().model.model_copy(update={"architecture": None,
                                                                                       "name": "no/such-model"})})
    assert warn_if_too_big(broken) is None  # a plan that cannot be made never stops a run
