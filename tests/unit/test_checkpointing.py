"""train.gradient_checkpointing and train.activation_offload (tuneforge.models.build): checkpointed blocks give the
gradients of the plain model (tiny Llama and tiny BERT, full fine-tuning and LoRA), they really recompute, a
checkpointed run halts and resumes exactly, and the settings a model or machine cannot honour fail with the key."""

from __future__ import annotations

from tuneforge.tasks import get_task

import json

import pytest

torch = pytest.importorskip("torch")

from tuneforge.errors import TuneforgeError  # noqa: E402
from tuneforge.models.build import (enable_activation_offload, enable_checkpointing, end_training,  # noqa: E402
                                    prepare_for_training)
from tuneforge.models.methods import LoraConfig, apply_method  # noqa: E402

VOCAB = 96
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, initializer_range=0.2)
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)

pytestmark = pytest.mark.usefixtures("one_thread")


def build(family: str, method: str, dropout: float = 0.0):
    import transformers as t

    torch.manual_seed(0)
    if family == "bert":
        model = t.BertForSequenceClassification(t.BertConfig(**BERT, num_labels=3, hidden_dropout_prob=dropout,
                                                             attention_probs_dropout_prob=dropout))
        task = "classification"
    else:
        model = t.LlamaForCausalLM(t.LlamaConfig(**LLAMA, attention_dropout=dropout))
        task = "causal_lm"
    if method == "lora":
        model = apply_method(model, "lora", LoraConfig(r=4, dropout=0.0), task=get_task(task))
    return model


def batch(family: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding, so the attention mask takes part
    labels = torch.randint(0, 3, (4,), generator=g) if family == "bert" else ids
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def gradients(model, family: str) -> dict:
    model.train()
    torch.manual_seed(5)  # the same dropout masks for both models
    model(**batch(family)).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_checkpointed_gradients_equal_plain_ones(family, method):
    plain = gradients(build(family, method), family)
    checkpointed_model = build(family, method)
    enable_checkpointing(checkpointed_model)
    checkpointed = gradients(checkpointed_model, family)
    assert plain.keys() == checkpointed.keys()
    # every layer learns (LoRA's A has a zero gradient while B is still zero: it starts moving one step later)
    assert all(g.abs().sum() > 0 for n, g in checkpointed.items() if g.dim() > 1 and "lora_A" not in n)
    worst = max((plain[n] - checkpointed[n]).abs().max().item() for n in plain)
    assert worst <= 1e-6, worst


def test_recomputation_replays_dropout():
    # Non-reentrant checkpointing restores the forward's RNG state when it recomputes: same masks.
    plain = gradients(build("bert", "full", dropout=0.3), "bert")
    model = build("bert", "full", dropout=0.3)
    enable_checkpointing(model)
    checkpointed = gradients(model, "bert")
    assert max((plain[n] - checkpointed[n]).abs().max().item() for n in plain) <= 1e-6


def test_blocks_really_recompute_in_training_only():
    model = build("llama", "lora")
    enable_checkpointing(model)
    calls = []
    # The block's first module: the replay stops early once it has recomputed what the backward needs.
    model.get_base_model().model.layers[0].input_layernorm.register_forward_hook(lambda *a: calls.append(1))
    gradients(model, "llama")
    assert len(calls) == 2  # the forward, and its replay in the backward pass
    calls.clear()
    model.eval()
    with torch.no_grad():
        model(**batch("llama"))
    assert len(calls) == 1


def test_model_without_checkpointing_support_names_the_key(monkeypatch):
    import transformers as t

    model = build("bert", "full")
    monkeypatch.setattr(t.BertForSequenceClassification, "supports_gradient_checkpointing", False)
    with pytest.raises(TuneforgeError, match="train.gradient_checkpointing: BertForSequenceClassification does not "
                                             "support activation checkpointing; set train.gradient_checkpointing: "
                                             "false"):
        enable_checkpointing(model)


def test_unsupported_model_fails_before_the_weights_load(make_recipe, monkeypatch):
    import transformers as t

    monkeypatch.setattr(t.BertForSequenceClassification, "supports_gradient_checkpointing", False)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr("tuneforge.models.build.load_task_model", no_load)
    from tuneforge.train.run import train

    with pytest.raises(TuneforgeError, match="train.gradient_checkpointing: BertForSequenceClassification"):
        train(make_recipe("train.gradient_checkpointing=true"))


def test_prefix_with_checkpointing_fails_before_any_work(make_recipe):
    from tuneforge.train.run import train

    recipe = make_recipe("method=prefix", "train.gradient_checkpointing=true")
    with pytest.raises(TuneforgeError, match="train.gradient_checkpointing: true does not work with method prefix"):
        train(recipe)
    assert not recipe.run_dir.exists()


def test_activation_offload_needs_cuda(make_recipe):
    from tuneforge.train.run import train

    recipe = make_recipe("train.activation_offload=true")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: offload is allowed here")
    with pytest.raises(TuneforgeError, match="train.activation_offload: true needs a CUDA device"):
        train(recipe)
    assert not recipe.run_dir.exists()  # refused before the run directory (or anything else) was touched


def test_activation_offload_hooks_only_act_in_training_and_come_off(monkeypatch):
    entered = []

    class Recorder:
        def __init__(self, pin_memory, device_type):
            assert pin_memory and device_type == "cuda"

        def __enter__(self):
            entered.append("enter")

        def __exit__(self, *exc):
            entered.append("exit")

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Recorder)
    model = build("bert", "lora")
    enable_activation_offload(model)
    gradients(model, "bert")
    assert entered == ["enter", "exit"]
    model.eval()
    with torch.no_grad():
        model(**batch("bert"))
    assert entered == ["enter", "exit"]  # evaluation forwards keep their activations where they are
    end_training(model)
    model.train()
    gradients(model, "bert")
    assert entered == ["enter", "exit"]


def test_end_training_takes_every_training_setting_off():
    from tuneforge.recipe import TrainSection

    model = build("llama", "lora")
    reference = model.eval()(**batch("llama")).logits.detach()
    prepare_for_training(model, TrainSection(gradient_checkpointing=True, neftune_alpha=5.0))
    base = model.get_base_model()
    assert base.is_activation_checkpointing and base.get_input_embeddings()._forward_hooks
    end_training(model)
    assert not base.is_activation_checkpointing
    assert not base.get_input_embeddings()._forward_hooks  # NEFTune and the require-grads hook are gone
    model.train()
    torch.manual_seed(3)
    assert torch.equal(model(**batch("llama")).logits.detach(), reference)  # dropout 0: no noise left


def test_checkpointed_run_halts_and_resumes_exactly(make_recipe):
    from tuneforge.train.run import train

    def losses(result):
        lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if '"kind": "train"' in line]

    common = ("train.max_steps=8", "train.eval_every_steps=4", "train.gradient_checkpointing=true")
    whole = train(make_recipe(*common, name="whole"))
    halted = train(make_recipe(*common, "train.halt_after_steps=5", name="resumed"))
    assert halted.halted and halted.global_step == 5
    resumed = train(make_recipe(*common, name="resumed"), resume=True)
    assert resumed.global_step == 8
    assert losses(resumed) == losses(whole)
    assert resumed.metrics == whole.metrics
    # and checkpointing changed nothing but memory: the same losses as without it, to rounding
    plain = train(make_recipe("train.max_steps=8", "train.eval_every_steps=4", name="plain"))
    assert losses(plain) == pytest.approx(losses(whole), abs=1e-5)
