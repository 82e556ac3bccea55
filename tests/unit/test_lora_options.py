"""LoRA options (lora.target_modules all-linear, use_rslora, init, plus_ratio) and NEFTune (train.neftune_alpha) on
tiny random models: what gets adapted, the scaling, that PiSSA/OLoRA exports still predict like the trained model
(also through a real run and `tuneforge export`), LoRA+'s parameter groups, and NEFTune's noise."""

from __future__ import annotations

from tuneforge.tasks import get_task

import copy
import math

import pytest

torch = pytest.importorskip("torch")

from pydantic import ValidationError  # noqa: E402

from tuneforge.models.methods import (LoraConfig, add_neftune, apply_method, load_method_export,  # noqa: E402
                                      merge_for_export, remove_neftune, save_method_export)
from tuneforge.train.optim import build_optimizer, parameter_groups  # noqa: E402

VOCAB = 96
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            initializer_range=0.2)
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)

pytestmark = pytest.mark.usefixtures("one_thread")


def build(task: str):
    import transformers as t

    torch.manual_seed(0)
    if task == "classification":
        return t.BertForSequenceClassification(t.BertConfig(**BERT, num_labels=3))
    if task == "token_classification":
        return t.BertForTokenClassification(t.BertConfig(**BERT, num_labels=3))
    return t.LlamaForCausalLM(t.LlamaConfig(**LLAMA))


def lora(task: str, **options):
    return apply_method(build(task), "lora", LoraConfig(r=4, dropout=0.0, **options), task=get_task(task))


def batch(task: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (6, 10), generator=g)
    labels = {"classification": torch.randint(0, 3, (6,), generator=g),
              "token_classification": torch.randint(0, 3, (6, 10), generator=g), "causal_lm": ids}[task]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def logits(model, task: str):
    b = batch(task)
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def adapted(model) -> set[str]:
    return {n.split(".lora_A")[0].removeprefix("base_model.model.") for n, _ in model.named_parameters()
            if ".lora_A." in n}


# ------------------------------------------------------------------------------------------- all-linear


def test_all_linear_adapts_every_linear_but_the_output_layer():
    plain = build("causal_lm")
    linears = {n for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "lm_head" in linears
    assert adapted(lora("causal_lm", target_modules="all-linear")) == linears - {"lm_head"}


@pytest.mark.parametrize("task", ["classification", "token_classification"])
def test_all_linear_leaves_the_task_head_whole(task):
    model = lora(task, target_modules="all-linear")
    assert not any(name.startswith("classifier") for name in adapted(model))
    assert "bert.encoder.layer.0.intermediate.dense" in adapted(model)  # the feed-forward layers too
    head = {n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n}
    assert head == {"base_model.model.classifier.modules_to_save.default.weight",
                    "base_model.model.classifier.modules_to_save.default.bias"}


@pytest.mark.parametrize(("values", "message"), [
    ({"target_modules": "all-linear", "include_mlp": True}, "all-linear already includes the feed-forward layers"),
    ({"target_modules": "query"}, "all-linear"),  # a single name is not a list
    ({"init": "svd"}, "'default', 'gaussian', 'pissa' or 'olora'"),
    ({"plus_ratio": 0}, "greater than 0"),
])
def test_option_validation(values, message):
    with pytest.raises(ValidationError, match=message):
        LoraConfig(**values)


# ------------------------------------------------------------------------------------------------ rsLoRA


@pytest.mark.parametrize(("rslora", "expected"), [(False, 16 / 4), (True, 16 / math.sqrt(4))])
def test_rslora_scaling(rslora, expected):
    model = lora("classification", alpha=16, use_rslora=rslora)
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert query.scaling["default"] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- init + export


def trained(task: str, init: str, steps: int = 15):
    model = lora(task, init=init)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch(task)).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def base_weight(model, name="bert.encoder.layer.0.attention.self.query"):
    return model.get_base_model().get_submodule(name).base_layer.weight.detach().clone()


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_move_the_principal_part_out_of_the_base_weights(init):
    original = build("classification").bert.encoder.layer[0].attention.self.query.weight.detach()
    model = lora("classification", init=init)
    assert not torch.allclose(base_weight(model), original)  # the frozen residual differs from the weight...
    b, a = [model.get_base_model().bert.encoder.layer[0].attention.self.query.get_submodule(f"lora_{x}").default.weight
            for x in ("B", "A")]
    assert b.abs().sum() > 0 and a.abs().sum() > 0  # ...because B and A start non-zero
    plain = build("classification")
    plain.classifier.load_state_dict(model.base_model.model.classifier.modules_to_save.default.state_dict())
    assert torch.allclose(logits(model.eval(), "classification"), logits(plain.eval(), "classification"), atol=1e-5)


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_pissa_and_olora_exports_predict_like_the_trained_model(init, task, tmp_path):
    model = trained(task, init)
    expected = logits(model, task)
    exported, how = merge_for_export(copy.deepcopy(model), "lora")
    save_method_export(exported, how, tmp_path)
    got = logits(load_method_export(tmp_path), task)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()


def test_pissa_rebuilds_the_same_residual_whatever_the_rng():
    # `tuneforge export` and --resume rebuild the model and load only the trained weights: the residual base
    # weights PiSSA's randomised SVD leaves must come out the same, and the run's RNG must not move.
    def pissa_after(seed):
        model = build("classification")
        torch.manual_seed(seed)
        model = apply_method(model, "lora", LoraConfig(r=4, init="pissa"), task=get_task("classification"))
        return base_weight(model), torch.random.get_rng_state()

    first, rng_after = pissa_after(1)
    second, _ = pissa_after(2)
    assert torch.equal(first, second)
    torch.manual_seed(1)
    assert torch.equal(torch.random.get_rng_state(), rng_after)  # PiSSA drew from a generator of its own


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_runs_export_verified(make_recipe, init):
    from tuneforge.export.command import ExportConfig, run_export
    from tuneforge.train.run import train

    result = train(make_recipe("method=lora", f"lora.init={init}", "lora.target_modules=all-linear",
                               "train.max_steps=4", "train.learning_rate=1e-2", "export.enabled=true", name=init))
    assert result.verification["passed"] and result.verification["prediction_agreement"] == 1.0
    # The rebuild path (`tuneforge export`): the model rebuilt from the recipe under another RNG state, the best
    # weights loaded. It verifies against itself, so compare it with the export of the run.
    import transformers as t

    torch.manual_seed(999)
    again = run_export(ExportConfig(run_dir=result.run_dir, output_dir=result.run_dir / "export-again"))
    ids = torch.randint(1000, 2000, (4, 12), generator=torch.Generator().manual_seed(0))
    first, second = [t.AutoModelForSequenceClassification.from_pretrained(d).eval()(input_ids=ids).logits.detach()
                     for d in (result.export_dir, again)]
    assert torch.allclose(first, second, atol=1e-5), (first - second).abs().max()


# -------------------------------------------------------------------------------------------------- LoRA+


class _Train:
    optimizer, learning_rate, weight_decay, adam_betas, momentum = "adamw", 1e-3, 0.1, (0.9, 0.999), 0.9


def test_lora_plus_gives_b_matrices_their_own_learning_rate():
    model = lora("classification", plus_ratio=16)
    opt = build_optimizer(model, _Train, lora_plus_ratio=16)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == len(trainable)  # every trainable parameter exactly once
    for name, p in trainable.items():
        assert lr_of[id(p)] == pytest.approx(16e-3 if ".lora_B." in name else 1e-3), name
        assert decay_of[id(p)] == (0.0 if name.endswith(".bias") else 0.1), name
    assert opt.param_groups[0]["lr"] == 1e-3  # what the loop logs as the learning rate
    # the schedule scales every group alike, so B stays at 16x
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert sorted({round(g["lr"], 9) for g in opt.param_groups}) == [0.0005, 0.008]
    del scheduler


def test_without_lora_plus_the_groups_are_unchanged():
    model = lora("classification")
    assert [len(g["params"]) for g in parameter_groups(model, 0.1)] == \
        [len(g["params"]) for g in parameter_groups(model, 0.1, lr=1e-3, lora_plus_ratio=None)]
    assert all("lr" not in g for g in parameter_groups(model, 0.1))


# ------------------------------------------------------------------------------------------------ NEFTune


def test_neftune_noise_in_training_mode_only_with_the_papers_scale():
    model = lora("causal_lm")
    ids = batch("causal_lm")["input_ids"]
    embedding = model.get_input_embeddings()
    clean = embedding(ids).detach()
    add_neftune(model, 5.0)
    model.train()
    noise = (embedding(ids) - clean).detach()
    bound = 5.0 / math.sqrt(ids.size(1) * clean.size(-1))  # alpha / sqrt(L * d)
    assert noise.abs().max() <= bound * (1 + 1e-6)
    assert noise.abs().max() > 0.95 * bound  # uniform over [-bound, bound]: 1,920 draws reach its edge
    assert noise.abs().mean() == pytest.approx(bound / 2, rel=0.1)
    model.eval()
    assert torch.equal(embedding(ids), clean)


def test_neftune_survives_deepcopy_and_comes_off():
    model = lora("causal_lm")
    ids = batch("causal_lm")["input_ids"]
    clean = model.get_input_embeddings()(ids).detach()
    add_neftune(model, 5.0)
    add_neftune(model, 5.0)  # a second call replaces, never doubles the noise
    assert len(model.get_input_embeddings()._forward_hooks) == 1
    twin = copy.deepcopy(model).train()
    assert not torch.equal(twin.get_input_embeddings()(ids), clean)
    remove_neftune(model)
    model.train()
    assert torch.equal(model.get_input_embeddings()(ids), clean)
    assert not model.get_input_embeddings()._forward_hooks
