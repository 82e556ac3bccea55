"""Bottleneck adapters (tuneforge.models.adapters): where they go, that a fresh one changes nothing, that
they train and export, and the errors for architectures and sizes they cannot handle."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")

from tuneforge.errors import TuneforgeError  # noqa: E402
from tuneforge.models.adapters import (  # noqa: E402
    ADAPTER_ATTR,
    ADAPTER_CONFIG,
    BottleneckAdapter,
    adapter_sites,
    adapter_state_dict,
    insert_adapters,
)
from tuneforge.models.methods import AdapterConfig, apply_method, load_adapter_export, save_adapter_export  # noqa: E402
from tuneforge.tasks import get_task  # noqa: E402

HOULSBY = AdapterConfig(kind="houlsby")
PFEIFFER = AdapterConfig(kind="pfeiffer")


pytestmark = pytest.mark.usefixtures("one_thread")


def bert():
    import transformers as t

    torch.manual_seed(0)
    return t.BertForSequenceClassification(t.BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


def llama():
    import transformers as t

    torch.manual_seed(0)
    return t.LlamaForCausalLM(t.LlamaConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64)).eval()


IDS = torch.randint(5, 128, (4, 10), generator=torch.Generator().manual_seed(1))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


def randomise_adapters(model, seed: int = 2) -> None:
    """Stand-in for training: non-zero adapter weights, so the adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{ADAPTER_ATTR}." in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)


def test_sites_follow_the_kind_and_architecture():
    assert adapter_sites(bert(), "pfeiffer") == ["bert.encoder.layer.0.output.dense",
                                                 "bert.encoder.layer.1.output.dense"]
    assert adapter_sites(bert(), "houlsby") == [
        "bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.attention.output.dense", "bert.encoder.layer.1.output.dense"]
    assert adapter_sites(llama(), "houlsby") == [
        "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"]


@pytest.mark.parametrize("build", [bert, llama])
def test_fresh_adapters_do_not_change_the_outputs(build):
    model = build()
    before = logits(model)
    insert_adapters(model, HOULSBY)
    assert (logits(model) - before).abs().max().item() < 1e-5
    randomise_adapters(model)  # the hooks are live: non-zero adapters do change the outputs
    assert (logits(model) - before).abs().max().item() > 1e-2


def test_adapter_shape_and_activation():
    model = bert()
    insert_adapters(model, AdapterConfig(kind="pfeiffer", reduction_factor=8, non_linearity="gelu"))
    adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    assert len(adapters) == 2
    assert (adapters[0].down.in_features, adapters[0].down.out_features, adapters[0].up.out_features) == (32, 4, 32)
    assert isinstance(adapters[0].act, torch.nn.GELU)
    assert torch.count_nonzero(adapters[0].up.weight) == 0


def test_adapters_on_a_bfloat16_base_train_in_float32():
    model = bert().to(torch.bfloat16)
    before = logits(model)
    insert_adapters(model, PFEIFFER)
    adapter = model.bert.encoder.layer[0].output.dense.bottleneck_adapter
    assert adapter.down.weight.dtype == torch.float32
    after = logits(model)
    assert after.dtype == torch.bfloat16 and torch.equal(after, before)


def test_adapter_method_trains_adapters_and_head_only():
    model = apply_method(bert(), "adapter", HOULSBY, task=get_task("classification"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if ADAPTER_ATTR not in n} == {"classifier.weight", "classifier.bias"}
    assert len([n for n in trainable if ADAPTER_ATTR in n]) == 4 * 4  # 4 sites x (down, up) x (weight, bias)
    lm = apply_method(llama(), "adapter", PFEIFFER, task=get_task("causal_lm"))
    assert all(ADAPTER_ATTR in n for n, p in lm.named_parameters() if p.requires_grad)


def test_down_projection_learns_once_up_is_non_zero():
    model = apply_method(bert(), "adapter", PFEIFFER, task=get_task("classification")).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    adapter = model.bert.encoder.layer[0].output.dense.bottleneck_adapter
    down_before = adapter.down.weight.detach().clone()
    labels = torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        model(input_ids=IDS, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.count_nonzero(adapter.up.weight) > 0
    assert not torch.equal(adapter.down.weight, down_before)


def test_deepcopy_gives_independent_working_adapters():
    model = bert()
    insert_adapters(model, PFEIFFER)
    original = logits(model)
    clone = copy.deepcopy(model)
    randomise_adapters(clone)
    assert torch.equal(logits(model), original)
    assert not torch.allclose(logits(clone), original)


@pytest.mark.parametrize(("build", "cfg"), [(bert, HOULSBY), (llama, PFEIFFER)])
def test_export_roundtrip_is_exact(build, cfg, tmp_path):
    model = build()
    insert_adapters(model, cfg)
    randomise_adapters(model)
    expected = logits(model)
    save_adapter_export(model, tmp_path)
    reloaded = load_adapter_export(tmp_path)
    assert torch.equal(logits(reloaded), expected)
    assert json.loads((tmp_path / ADAPTER_CONFIG).read_text())["config"]["kind"] == cfg.kind
    assert adapter_state_dict(reloaded).keys() == adapter_state_dict(model).keys()


def test_exported_base_is_a_plain_transformers_checkpoint(tmp_path):
    import transformers as t
    from safetensors import safe_open

    model = apply_method(bert(), "adapter", PFEIFFER, task=get_task("classification"))
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # a "trained" head must be exported with the base
    save_adapter_export(model, tmp_path)
    with safe_open(str(tmp_path / "base_model" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(ADAPTER_ATTR in k for k in keys)
    base = t.BertForSequenceClassification.from_pretrained(tmp_path / "base_model")
    assert torch.equal(base.classifier.weight, model.classifier.weight)


def test_export_with_a_mismatched_layout_is_refused(tmp_path):
    model = bert()
    insert_adapters(model, PFEIFFER)
    save_adapter_export(model, tmp_path)
    meta = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    meta["config"]["kind"] = "houlsby"
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(TuneforgeError, match="saved at 2 layers but the base model offers 4"):
        load_adapter_export(tmp_path)


def test_unsupported_architecture_names_what_is_supported():
    import transformers as t

    bart = t.BartForConditionalGeneration(t.BartConfig(
        vocab_size=128, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64))
    with pytest.raises(TuneforgeError, match=r"BartForConditionalGeneration is not a supported architecture; "
                                             r".*BERT-style encoder .*Llama-style decoder .*Use lora instead"):
        apply_method(bart, "adapter", task=get_task("seq2seq"))
    assert all(p.requires_grad for p in bart.parameters())  # refused before anything was frozen


def test_reduction_factor_larger_than_hidden_size():
    with pytest.raises(TuneforgeError, match="adapter.reduction_factor: 64 leaves no bottleneck units for hidden "
                                             "size 32; use at most 32"):
        insert_adapters(bert(), AdapterConfig(reduction_factor=64))


def test_inserting_twice_is_refused():
    model = bert()
    insert_adapters(model, PFEIFFER)
    with pytest.raises(TuneforgeError, match="already has an adapter"):
        insert_adapters(model, PFEIFFER)
