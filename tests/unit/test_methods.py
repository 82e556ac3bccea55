"""Training methods (tuneforge.models.methods) on tiny random models: what trains, that it learns, and that
checkpoints and exports reload to identical predictions, for every method on classification and causal_lm
(plus a few other tasks), and the clear errors for combinations that cannot work.

The models are seeded so that building one twice gives the same base weights; each (method, task) is
trained once (30 AdamW steps on one fixed batch) and shared by the tests through ``trained``.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings

import pytest

from tuneforge.tasks import get_task

torch = pytest.importorskip("torch")

from tuneforge.errors import TuneforgeError  # noqa: E402
from tuneforge.models.params import count_parameters, load_trainable_state_dict, trainable_state_dict  # noqa: E402
from tuneforge.models.methods import (  # noqa: E402
    EXPORT_MANIFEST,
    METHODS,
    AdapterConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    apply_method,
    default_lora_targets,
    load_method_export,
    merge_for_export,
    save_method_export,
)

HIDDEN, LAYERS, VOCAB, LABELS = 32, 2, 128, 3
# initializer_range 0.2 (not 0.02): a random model with tiny weights has near-uniform outputs that the
# small PEFT parameter sets can barely move in 30 steps; larger weights behave more like a trained model.
BERT = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, initializer_range=0.2)
LLAMA = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
BART = dict(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, init_std=0.2)

CONFIGS = {"lora": LoraConfig(r=4, dropout=0.0), "dora": LoraConfig(r=4, dropout=0.0),
           "prefix": PrefixTuningConfig(num_virtual_tokens=4), "prompt": PromptTuningConfig(num_virtual_tokens=4),
           "ia3": IA3Config(), "adapter": AdapterConfig()}
LEARNING_RATES = {"full": 3e-3, "head_only": 5e-2, "lora": 1e-2, "dora": 1e-2, "ia3": 1e-1, "prefix": 1e-1,
                  "prompt": 1e-1, "adapter": 5e-2}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(task: str):
    import transformers as t

    torch.manual_seed(0)
    if task in ("classification", "regression"):
        labels = 1 if task == "regression" else LABELS
        return t.BertForSequenceClassification(t.BertConfig(**BERT, num_labels=labels))
    if task == "token_classification":
        return t.BertForTokenClassification(t.BertConfig(**BERT, num_labels=LABELS))
    if task == "extractive_qa":
        return t.BertForQuestionAnswering(t.BertConfig(**BERT))
    if task == "causal_lm":
        return t.LlamaForCausalLM(t.LlamaConfig(**LLAMA))
    return t.BartForConditionalGeneration(t.BartConfig(**BART))


@functools.cache
def batch(task: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (8, 12), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    targets = {
        "classification": {"labels": torch.randint(0, LABELS, (8,), generator=g)},
        "regression": {"labels": torch.randn(8, generator=g)},
        "token_classification": {"labels": torch.randint(0, LABELS, (8, 12), generator=g)},
        "extractive_qa": {"start_positions": torch.randint(0, 6, (8,), generator=g),
                          "end_positions": torch.randint(6, 12, (8,), generator=g)},
        "causal_lm": {"labels": ids},
        "seq2seq": {"labels": torch.randint(5, VOCAB, (8, 6), generator=g)},
    }
    return {**inputs, **targets[task]}


def prepared(method: str, task: str):
    return apply_method(build(task), method, copy.deepcopy(CONFIGS.get(method)), task=get_task(task))


@functools.cache
def trained(method: str, task: str):
    """(trained model in eval mode, losses of the 30 steps)."""
    model = prepared(method, task)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATES[method], weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(30):
        loss = model(**batch(task)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses


def outputs(model, task: str) -> torch.Tensor:
    b = batch(task)
    extra = {"labels": b["labels"]} if task == "seq2seq" else {}  # the decoder needs its inputs
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **extra)
    if task == "extractive_qa":
        return torch.cat([out.start_logits, out.end_logits], dim=-1)
    return out.logits


EVERY_METHOD = [(m, t) for t in ("classification", "causal_lm") for m in METHODS]
OTHER_TASKS = [("lora", "regression"), ("lora", "token_classification"), ("lora", "seq2seq"),
               ("lora", "extractive_qa"), ("prefix", "seq2seq"), ("prefix", "extractive_qa"),
               ("ia3", "token_classification"), ("adapter", "token_classification"),
               ("head_only", "extractive_qa")]
ALL_CASES = EVERY_METHOD + OTHER_TASKS

# ------------------------------------------------------------------------- what trains, and learning

CLS_HEAD = HIDDEN * LABELS + LABELS
ATTN_IN_OUT = (HIDDEN + HIDDEN) * 4 * LAYERS  # BERT query/key/value/attention-output: 32 -> 32 each
LLAMA_KV = 16  # 2 key/value heads x head dim 8
LLAMA_IN_OUT = ((HIDDEN + HIDDEN) * 2 + (HIDDEN + LLAMA_KV) * 2) * LAYERS  # q, o: 32->32; k, v: 32->16
ADAPTER = (HIDDEN * 2 + 2 + 2 * HIDDEN + HIDDEN) * LAYERS  # pfeiffer, bottleneck 32 // 16 = 2, one per layer
EXPECTED_TRAINABLE = {
    ("head_only", "classification"): CLS_HEAD,
    ("lora", "classification"): 4 * ATTN_IN_OUT + CLS_HEAD,
    ("dora", "classification"): 4 * ATTN_IN_OUT + 4 * HIDDEN * LAYERS + CLS_HEAD,  # + one magnitude per output
    # PEFT's BERT default: key, value (output scale) and output.dense (input scale, matches both dense layers)
    ("ia3", "classification"): (HIDDEN + HIDDEN + HIDDEN + 64) * LAYERS + CLS_HEAD,
    ("prefix", "classification"): 4 * LAYERS * 2 * HIDDEN + CLS_HEAD,  # 4 tokens x layers x (key, value)
    ("prompt", "classification"): 4 * HIDDEN + CLS_HEAD,
    ("adapter", "classification"): ADAPTER + CLS_HEAD,
    ("head_only", "causal_lm"): HIDDEN * VOCAB,  # lm_head (untied in this config)
    ("lora", "causal_lm"): 4 * LLAMA_IN_OUT,
    ("dora", "causal_lm"): 4 * LLAMA_IN_OUT + (HIDDEN + LLAMA_KV) * 2 * LAYERS,
    ("ia3", "causal_lm"): (LLAMA_KV + LLAMA_KV + 64) * LAYERS,  # k_proj, v_proj, down_proj input
    ("prefix", "causal_lm"): 4 * LAYERS * 2 * LLAMA_KV,
    ("prompt", "causal_lm"): 4 * HIDDEN,
    ("adapter", "causal_lm"): ADAPTER,
}


@pytest.mark.parametrize(("method", "task"), EVERY_METHOD)
def test_trainable_parameter_count(method, task):
    count = count_parameters(prepared(method, task))
    if method == "full":
        assert count.trainable == count.total == count_parameters(build(task)).total
    else:
        assert count.trainable == EXPECTED_TRAINABLE[method, task]
        assert 0 < count.trainable < count.total


@pytest.mark.parametrize(("method", "task"), ALL_CASES)
def test_loss_falls_when_memorising_one_batch(method, task):
    _, losses = trained(method, task)
    assert losses[-1] < 0.9 * losses[0], losses


def test_new_head_trains_under_peft_and_lm_head_does_not():
    cls = {n for n, p in prepared("lora", "classification").named_parameters() if p.requires_grad}
    assert {"base_model.model.classifier.modules_to_save.default.weight",
            "base_model.model.classifier.modules_to_save.default.bias"} <= cls
    lm = {n for n, p in prepared("lora", "causal_lm").named_parameters() if p.requires_grad}
    assert lm and all("lora_" in n for n in lm)


def test_head_found_generically_beyond_peft_default_names():
    # PEFT's own head list is classifier/score; BART's head is classification_head, DistilBERT's is
    # pre_classifier + classifier.
    import transformers as t

    torch.manual_seed(0)
    bart = t.BartForSequenceClassification(t.BartConfig(**BART, num_labels=LABELS))
    lora = apply_method(bart, "lora", task=get_task("classification"))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert {"base_model.model.classification_head.modules_to_save.default.dense.weight",
            "base_model.model.classification_head.modules_to_save.default.out_proj.weight"} <= trainable
    distilbert = t.DistilBertForSequenceClassification(t.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=1, n_heads=2, hidden_dim=64, num_labels=2))
    head_only = {n for n, p in apply_method(distilbert, "head_only", task=get_task("classification"))
                 .named_parameters() if p.requires_grad}
    assert head_only == {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"}


def test_full_changes_nothing():
    model = build("classification")
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    assert apply_method(model, "full", task=get_task("classification")) is model
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert model.classifier.weight.requires_grad


def test_default_lora_targets_are_attention_projections():
    model = prepared("lora", "classification")
    adapted = sorted({n.split(".lora_A")[0].removeprefix("base_model.model.bert.encoder.layer.0.")
                      for n, _ in model.named_parameters() if ".lora_A" in n and ".layer.0." in n})
    assert adapted == ["attention.output.dense", "attention.self.key", "attention.self.query",
                       "attention.self.value"]
    assert default_lora_targets(build("causal_lm"), include_mlp=True) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_include_mlp_adds_feed_forward_layers():
    model = apply_method(build("classification"), "lora", LoraConfig(r=2, include_mlp=True),
                         task=get_task("classification"))
    adapted = {n.split(".lora_A")[0].split(".layer.0.")[1] for n, _ in model.named_parameters()
               if ".lora_A" in n and ".layer.0." in n}
    assert {"intermediate.dense", "output.dense"} <= adapted
    assert not any("pooler" in n and "lora_" in n for n, _ in model.named_parameters())


def test_dora_is_lora_with_use_dora():
    def names(model):
        return sorted(n for n, p in model.named_parameters() if p.requires_grad)

    dora = names(prepared("dora", "classification"))
    assert any("lora_magnitude_vector" in n for n in dora)
    assert not any("lora_magnitude_vector" in n for n in names(prepared("lora", "classification")))
    as_flag = apply_method(build("classification"), "lora", LoraConfig(r=4, use_dora=True),
                           task=get_task("classification"))
    assert names(as_flag) == dora


def test_prompt_init_from_text_uses_the_token_embeddings():
    class StubTokenizer:
        def __call__(self, text, add_special_tokens=True):
            assert not add_special_tokens
            return {"input_ids": [7, 9, 11]}

    cfg = PromptTuningConfig(num_virtual_tokens=5, init="text", init_text="classify this")
    model = apply_method(build("classification"), "prompt", cfg, task=get_task("classification"),
                         tokenizer=StubTokenizer())
    prompt = model.prompt_encoder["default"].embedding.weight
    words = model.get_base_model().get_input_embeddings().weight
    assert torch.equal(prompt, words[[7, 9, 11, 7, 9]])
    with pytest.raises(TypeError, match="needs the tokenizer"):
        apply_method(build("classification"), "prompt", cfg, task=get_task("classification"))


# ----------------------------------------------------------------------------- save and reload


@pytest.mark.parametrize(("method", "task"), ALL_CASES)
def test_checkpoint_roundtrip_gives_identical_outputs(method, task):
    model, _ = trained(method, task)
    expected = outputs(model, task)
    fresh = prepared(method, task).eval()
    assert not torch.allclose(outputs(fresh, task), expected)  # training changed something
    load_trainable_state_dict(fresh, trainable_state_dict(model))
    assert torch.equal(outputs(fresh, task), expected)


EXPORT_KIND = {"full": "plain", "head_only": "plain", "lora": "merged", "dora": "merged", "ia3": "merged",
               "prefix": "peft_prompt", "prompt": "peft_prompt", "adapter": "bottleneck_adapters"}


@pytest.mark.parametrize(("method", "task"), ALL_CASES)
def test_export_reloads_to_the_same_predictions(method, task, tmp_path):
    from peft import PeftModel

    model = copy.deepcopy(trained(method, task)[0])
    expected = outputs(model, task)
    exported, how = merge_for_export(model, method)
    assert how == EXPORT_KIND[method]
    assert isinstance(exported, PeftModel) == (how == "peft_prompt")
    save_method_export(exported, how, tmp_path)
    assert json.loads((tmp_path / EXPORT_MANIFEST).read_text())["how"] == how
    if how == "peft_prompt":  # the base is a clean transformers checkpoint, trained head included
        base_class = type(exported.get_base_model())
        _, info = base_class.from_pretrained(tmp_path / "base_model", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = load_method_export(tmp_path)
    got = outputs(reloaded, task)
    if how == "merged":  # W + BA folded into one matrix rounds differently, by float32 rounding only
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    else:
        assert (got - expected).abs().max().item() < 1e-6
    assert torch.equal(got, outputs(exported, task))


def test_merged_export_loads_with_plain_transformers(tmp_path):
    import transformers as t

    model = copy.deepcopy(trained("lora", "classification")[0])
    save_method_export(*merge_for_export(model, "lora"), tmp_path)
    plain = t.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    assert torch.equal(outputs(plain, "classification"), outputs(model, "classification"))


def test_load_export_without_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(TuneforgeError, match="no tuneforge_export.json"):
        load_method_export(tmp_path)


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("task", ["token_classification", "extractive_qa"])
def test_prompt_tuning_refuses_position_sensitive_tasks(task):
    with pytest.raises(TuneforgeError, match=rf"method prompt cannot train task {task}: .*use prefix, lora or "
                                             "adapter instead"):
        apply_method(build(task), "prompt", task=get_task(task))


def test_prefix_tuning_needs_past_key_values():
    import transformers as t

    model = t.DistilBertForSequenceClassification(t.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=1,
                                                                     n_heads=2, hidden_dim=64))
    with pytest.raises(TuneforgeError, match="method prefix cannot train task classification with "
                                             "DistilBertForSequenceClassification: .*past key/values"):
        apply_method(model, "prefix", task=get_task("classification"))


def test_lora_targets_that_match_nothing_name_the_key():
    with pytest.raises(TuneforgeError, match=r"lora.target_modules: PEFT cannot apply lora .*print\(model\)"):
        apply_method(build("classification"), "lora", LoraConfig(target_modules=["no_such_layer"]),
                     task=get_task("classification"))


def test_a_bare_body_has_no_head_to_train():
    import transformers as t

    with pytest.raises(TuneforgeError, match="BertModel has no task head .*AutoModelFor"):
        apply_method(t.BertModel(t.BertConfig(**BERT)), "head_only", task=get_task("classification"))


def test_unknown_method_or_task():
    with pytest.raises(TuneforgeError, match="method: 'qlora' is not one of full, head_only, lora"):
        apply_method(build("classification"), "qlora", task=get_task("classification"))
    # a task is a registered TaskSpec: an unknown name fails where it is looked up
    with pytest.raises(ValueError, match="unknown task 'ranking'; registered: classification, regression"):
        get_task("ranking")


def test_config_of_the_wrong_method_is_a_bug_not_a_user_error():
    with pytest.raises(TypeError, match="method lora needs a LoraConfig, got IA3Config"):
        apply_method(build("classification"), "lora", IA3Config(), task=get_task("classification"))


@pytest.mark.parametrize(("cls", "values", "message"), [
    (LoraConfig, {"target_modules": []}, "lora.target_modules is empty"),
    (LoraConfig, {"target_modules": ["query"], "include_mlp": True}, "lora.include_mlp applies only"),
    (IA3Config, {"feedforward_modules": ["fc2"]}, "ia3.target_modules is null"),
    (IA3Config, {"target_modules": ["k", "v"], "feedforward_modules": ["wo"]}, r"\['wo'\] are not in"),
    (PrefixTuningConfig, {"projection_hidden_size": 64}, "prefix.projection is false"),
    (PromptTuningConfig, {"init": "text"}, "prompt.init_text is empty"),
    (PromptTuningConfig, {"init_text": "hello"}, "prompt.init is 'random'"),
    (AdapterConfig, {"kind": "lora"}, "houlsby"),
    (LoraConfig, {"rank": 4}, "Extra inputs are not permitted"),
])
def test_config_validation_messages(cls, values, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        cls(**values)


def test_prefix_tuned_generate_uses_the_prefix_like_forward_does():
    """transformers 5.25 passes generate's KV cache as `cache`; peft 0.21 looks for `past_key_values`, and
    without prefix_compatible its prefix is silently dropped from generation (output = the base model's)."""
    import warnings

    import torch

    torch.manual_seed(0)
    base = build("causal_lm").eval()
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        plain = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              min_new_tokens=12)[0, 3:].tolist()
    torch.manual_seed(1)
    tuned = apply_method(base, "prefix", PrefixTuningConfig(num_virtual_tokens=4), task=get_task("causal_lm")).eval()
    with torch.no_grad():
        for p in tuned.prompt_encoder.parameters():
            p.mul_(50)  # a prefix strong enough to change the greedy continuation
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(past_key_values|cache).*", category=FutureWarning)
        with torch.inference_mode():
            generated = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                       do_sample=False, min_new_tokens=12)[0, 3:].tolist()
            greedy = ids  # the same decoding by plain forwards, no cache: the prefix always applies
            for _ in range(12):
                logits = tuned(input_ids=greedy, attention_mask=torch.ones_like(greedy)).logits
                greedy = torch.cat([greedy, logits[:, -1:].argmax(-1)], 1)
    assert generated == greedy[0, 3:].tolist()
    assert generated != plain


# ------------------------------------------------------------------------------------- registry


def test_every_recipe_method_is_registered_with_an_export_format():
    from typing import get_args

    from tuneforge.models.methods import EXPORT_FORMATS, METHOD_SECTIONS, REGISTRY, MethodName

    assert tuple(REGISTRY) == METHODS == get_args(MethodName)
    assert {m.export_kind for m in REGISTRY.values()} == set(EXPORT_FORMATS)
    assert {name: m.export_kind for name, m in REGISTRY.items()} == EXPORT_KIND
    assert METHOD_SECTIONS == {m.name: (m.section, m.config) for m in REGISTRY.values() if m.config is not None}


def test_a_registered_method_is_applied_and_exported_through_the_registry(tmp_path):
    from tuneforge.models.methods import REGISTRY, Method, register

    calls = []

    def apply(model, cfg, ctx):
        calls.append((cfg, ctx.method, ctx.task.name))
        return model

    register(Method("test_noop", apply, "plain"))
    try:
        model = build("classification")
        assert apply_method(model, "test_noop", task=get_task("classification")) is model
        assert calls == [(None, "test_noop", "classification")]
        assert merge_for_export(model, "test_noop") == (model, "plain")
        with pytest.raises(ValueError, match="registered already"):
            register(Method("test_noop", apply, "plain"))
    finally:
        del REGISTRY["test_noop"]
    with pytest.raises(TuneforgeError, match="method: 'test_noop' is not one of full, head_only, lora"):
        apply_method(build("classification"), "test_noop", task=get_task("classification"))
