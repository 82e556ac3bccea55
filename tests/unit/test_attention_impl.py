"""model.attn_implementation (tuneforge.models.build): explicit values reach the built model (pretrained and from
scratch), auto's choice per machine, the manifest records it, and implementations this machine or model cannot
run fail before any work with the key, the value and what to do."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from tuneforge.errors import TuneforgeError  # noqa: E402
from tuneforge.models import build as build_module  # noqa: E402
from tuneforge.models.build import (CPU_EAGER_MAX_HIDDEN, AttentionChoice, build_model,  # noqa: E402
                                    check_training_options, choose_attention, resolve_attention,
                                    resolve_recipe_model)
from tuneforge.tasks import spec_for  # noqa: E402


def built(recipe):
    resolved = resolve_recipe_model(recipe.model)
    spec = spec_for(recipe)
    choice = choose_attention(recipe, resolved, spec, device_type="cpu", precision="fp32")
    model, _ = build_model(recipe, resolved, spec, ["negative", "positive"], 0,
                           attn_implementation=choice.implementation)
    return choice, model


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_explicit_implementation_is_what_the_model_runs(make_recipe, implementation):
    choice, model = built(make_recipe(f"model.attn_implementation={implementation}", "method=lora"))
    assert choice == AttentionChoice(implementation, "as set in model.attn_implementation")
    assert model.config._attn_implementation == implementation
    assert choice.built(model).implementation == implementation


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_scratch_models_get_it_too(implementation):
    import transformers as t

    from tuneforge.models.scratch import ArchitectureConfig, scratch_model

    class Tok:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return 64

    spec = type("Spec", (), {"auto_class": "AutoModelForCausalLM", "head_kwargs": staticmethod(lambda names: {})})
    model = scratch_model(ArchitectureConfig(family="llama", layers=1, heads=2, hidden=16), spec, Tok(), 32, None,
                          attn_implementation=implementation)
    assert isinstance(model, t.LlamaForCausalLM) and model.config._attn_implementation == implementation


def test_auto_on_cpu_picks_eager_for_small_models_and_sdpa_for_large(make_recipe):
    import transformers as t

    choice, model = built(make_recipe())  # the tiny BERT: hidden size 32
    assert choice.implementation == "eager" and "hidden size 32 <= 1024" in choice.reason
    assert model.config._attn_implementation == "eager"
    bert = t.BertForSequenceClassification
    assert resolve_attention("auto", device_type="cpu", precision="bf16", model_class=bert,
                             hidden_size=CPU_EAGER_MAX_HIDDEN).implementation == "eager"
    assert resolve_attention("auto", device_type="cpu", precision="bf16", model_class=bert,
                             hidden_size=CPU_EAGER_MAX_HIDDEN + 1).implementation == "sdpa"
    long = resolve_attention("auto", device_type="cpu", precision="bf16", model_class=bert, hidden_size=576,
                             max_length=384)  # SmolLM2's width at the GSM8K recipe's length
    assert long.implementation == "sdpa" and "length 384 > 256" in long.reason


def test_auto_on_cuda(monkeypatch):
    import transformers as t

    llama = t.LlamaForCausalLM

    class NoFlash(llama):
        _supports_flash_attn = False

    class NoSdpa(NoFlash):
        _supports_sdpa = False

    def pick(precision, model_class=llama):
        return resolve_attention("auto", device_type="cuda", precision=precision, model_class=model_class,
                                 hidden_size=4096)

    monkeypatch.setattr(build_module, "flash_attn_importable", lambda: False)
    assert pick("bf16") == AttentionChoice("sdpa", "auto: CUDA, no flash_attention_2 (flash-attn not installed)")
    monkeypatch.setattr(build_module, "flash_attn_importable", lambda: True)
    assert pick("bf16").implementation == "flash_attention_2"
    assert pick("fp16").implementation == "flash_attention_2"
    assert pick("fp32") == AttentionChoice("sdpa", "auto: CUDA, no flash_attention_2 (precision fp32)")
    assert pick("bf16", NoFlash).implementation == "sdpa"
    assert pick("bf16", NoSdpa).implementation == "eager"
    assert pick("bf16", None).implementation is None  # unknown class (remote code): transformers' default


def test_flash_attention_without_flash_attn_is_a_clear_error(make_recipe, monkeypatch):
    from tuneforge.train.run import train

    monkeypatch.setattr(build_module, "flash_attn_importable", lambda: False)
    recipe = make_recipe("model.attn_implementation=flash_attention_2")
    message = (r"model.attn_implementation: flash_attention_2 needs .*the flash-attn package \(pip install "
               r"flash-attn --no-build-isolation.*; or use sdpa, or auto")
    with pytest.raises(TuneforgeError, match=message):
        train(recipe)
    assert not recipe.run_dir.exists()  # before any work, the run directory included
    with pytest.raises(TuneforgeError, match="needs a CUDA GPU .* and the flash-attn package"):
        check_training_options(recipe, device_type="cpu", precision="bf16")
    with pytest.raises(TuneforgeError, match="flash_attention_2 needs the flash-attn package"):
        check_training_options(recipe, device_type="cuda", precision="bf16")


def test_flash_attention_needs_half_precision(make_recipe, monkeypatch):
    monkeypatch.setattr(build_module, "flash_attn_importable", lambda: True)
    recipe = make_recipe("model.attn_implementation=flash_attention_2")
    check_training_options(recipe, device_type="cuda", precision="bf16")
    with pytest.raises(TuneforgeError, match="computes in bf16 or fp16 only, and train.precision resolves to fp32"):
        check_training_options(recipe, device_type="cuda", precision="fp32")


def test_flex_attention_needs_cuda(make_recipe):
    with pytest.raises(TuneforgeError, match="model.attn_implementation: flex_attention needs a CUDA GPU"):
        check_training_options(make_recipe("model.attn_implementation=flex_attention"), device_type="cpu",
                               precision="fp32")


def test_an_implementation_the_model_lacks_names_the_class():
    import transformers as t

    class NoSdpa(t.BertForSequenceClassification):
        _supports_sdpa = False

    with pytest.raises(TuneforgeError, match="model.attn_implementation: NoSdpa does not support sdpa; use eager, "
                                             "or auto"):
        resolve_attention("sdpa", device_type="cpu", precision="fp32", model_class=NoSdpa)


def test_the_manifest_records_the_choice_and_export_verifies(make_recipe, capsys):
    from tuneforge.train.run import train

    result = train(make_recipe("method=lora", "train.max_steps=3", "train.learning_rate=1e-2",
                               "export.enabled=true"))
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["attn_implementation"] == "eager"
    assert manifest["attn_implementation_reason"].startswith("auto: CPU, hidden size 32")
    assert capsys.readouterr().err.count("attention: eager (auto: CPU") == 1
    # trained with eager, evaluated and exported with the default (sdpa): the export still predicts the same
    assert result.verification["passed"] and result.verification["prediction_agreement"] == 1.0


def test_encoder_decoder_gets_it_on_both_sides(tmp_path):
    import transformers as t

    from tuneforge.models.build import _model_class_and_width, load_task_model
    from tuneforge.models.resolve import ResolvedModel
    from tuneforge.recipe import ModelSection

    bert = dict(vocab_size=64, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    config = t.EncoderDecoderConfig.from_encoder_decoder_configs(
        t.BertConfig(**bert), t.BertConfig(**bert, is_decoder=True, add_cross_attention=True))
    torch.manual_seed(0)
    t.EncoderDecoderModel(config).save_pretrained(tmp_path)
    resolved = ResolvedModel("bert2bert", tmp_path, "local", "safetensors")
    spec = type("Spec", (), {"auto_class": "AutoModelForSeq2SeqLM", "head_kwargs": staticmethod(lambda names: {})})
    model_class, hidden = _model_class_and_width(ModelSection(name=str(tmp_path)), resolved, spec)
    assert model_class is t.EncoderDecoderModel and hidden == 24  # the width lives in the encoder's config
    model = load_task_model(resolved, spec, None, attn_implementation="eager")
    assert model.encoder.config._attn_implementation == model.decoder.config._attn_implementation == "eager"
