"""model.quantize (QLoRA) and the 8-bit optimizers: the recipe rules, the machine checks (with the packages made
missing), and, where bitsandbytes runs (recent releases run on CPU too), a 4-bit LoRA run on a tiny random BERT
that learns, resumes exactly and exports merged fp32 weights that predict like the trained model; the export of
4-bit, 8-bit, torchao int8 and GPT-2 (Conv1D) bases; and bitsandbytes' AdamW8bit."""

from __future__ import annotations

from tuneforge.tasks import get_task

import json
import types

import pytest

torch = pytest.importorskip("torch")

from tuneforge.config_io import load_config  # noqa: E402
from tuneforge.errors import RecipeError, TuneforgeError  # noqa: E402
from tuneforge.models import quantize  # noqa: E402
from tuneforge.recipe import Recipe, recipe_to_yaml  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BASE = {"name": "q", "data": {"train_file": "train.tsv", "validation_file": "dev.tsv"}, "method": "lora",
        "model": {"quantize": {"bits": 4}}}


def problems(*overrides: str) -> str:
    with pytest.raises(RecipeError) as info:
        load_config(Recipe, None, list(overrides), base=BASE)
    return str(info.value)


def needs_bitsandbytes():
    problem = quantize._bitsandbytes_problem(DEVICE)
    if problem is not None:
        pytest.skip(f"needs {problem}")


def needs_torchao():
    if not quantize._torchao_available():
        pytest.skip("needs torchao (pip install torchao)")


def train_losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"kind": "train"' in line]


# ------------------------------------------------------------------------------------------- the recipe


def test_defaults_and_a_resolved_recipe_validates_again():
    recipe = load_config(Recipe, None, [], base=BASE)
    cfg = recipe.model.quantize
    assert (cfg.bits, cfg.quant_type, cfg.double_quant, cfg.compute_dtype, cfg.backend) == (4, "nf4", True, "auto",
                                                                                           "auto")
    assert load_config(Recipe, None, [], base=BASE | {"model": {}}).model.quantize is None
    for bits in (4, 8):  # every default written out, 4-bit-only ones included
        import yaml

        resolved = yaml.safe_load(recipe_to_yaml(load_config(Recipe, None, [f"model.quantize.bits={bits}"],
                                                             base=BASE)))
        assert load_config(Recipe, None, [], base=resolved).model.quantize.bits == bits


@pytest.mark.parametrize("method", ["full", "head_only", "ia3", "prefix", "prompt", "adapter"])
def test_a_quantised_base_needs_lora_or_dora(method):
    assert (f"model.quantize: method {method} cannot train on a quantised base: a quantised base only makes sense "
            "with an adapter (use method lora or dora); full fine-tuning of quantised weights is not supported"
            in problems(f"method={method}"))
    load_config(Recipe, None, ["method=dora"], base=BASE)


@pytest.mark.parametrize("override, message", [
    ("model.quantize.quant_type=fp4", "model.quantize.quant_type: fp4 applies to bits: 4 only; remove it with bits: 8"),
    ("model.quantize.double_quant=false", "model.quantize.double_quant: False applies to bits: 4 only"),
    ("model.quantize.compute_dtype=bf16", "model.quantize.compute_dtype: bf16 applies to bits: 4 only"),
])
def test_four_bit_settings_with_eight_bits(override, message):
    assert message in problems("model.quantize.bits=8", override)


def test_bad_values_and_combinations():
    assert "model.quantize.bits: got 3: Input should be 4 or 8" in problems("model.quantize.bits=3")
    assert "model.quantize.bits: required key is missing" in problems("model.quantize={}")
    assert ("model.quantize.backend: torchao does bits: 8 only here (its int4 weight-only layout needs CUDA kernels "
            "from the mslk package); use backend bitsandbytes (or auto) for bits: 4"
            in problems("model.quantize.backend=torchao"))
    assert ("model.quantize: lora.init pissa rewrites the frozen base weights, which a quantised base cannot hold "
            "exactly; use lora.init default or gaussian" in problems("lora.init=pissa"))
    assert "model.quantize.quant_type: got 'int4': Input should be 'nf4' or 'fp4'" in problems(
        "model.quantize.quant_type=int4")


# ---------------------------------------------------------------------------------- the machine checks


@pytest.fixture
def no_packages(monkeypatch):
    """As on a machine without bitsandbytes and torchao."""
    monkeypatch.setattr(quantize, "import_bitsandbytes", lambda: None)
    monkeypatch.setattr(quantize, "_torchao_available", lambda: False)


def test_missing_packages_fail_before_any_work(make_recipe, no_packages):
    from tuneforge.models.build import check_training_options
    from tuneforge.train.run import train

    recipe = make_recipe("method=lora", "model.quantize={bits: 4}")
    with pytest.raises(TuneforgeError, match=r"^model.quantize \(bits: 4, backend: auto\) needs the bitsandbytes "
                       r"package \(pip install bitsandbytes; .*\); torchao does bits: 8 only$"):
        check_training_options(recipe, device_type=DEVICE, precision="fp32")
    with pytest.raises(TuneforgeError, match=r"needs the bitsandbytes package"):
        train(recipe)
    assert not recipe.run_dir.exists()  # stopped before the run directory was made
    eight = make_recipe("method=lora", "model.quantize={bits: 8}").model.quantize
    with pytest.raises(TuneforgeError, match=r"needs the bitsandbytes package .*, or torchao for bits: 8 "
                       r"\(pip install torchao\)"):
        quantize.choose_backend(eight, DEVICE)
    with pytest.raises(TuneforgeError, match=r"backend: torchao\) needs torchao \(pip install torchao\)"):
        quantize.choose_backend(eight.model_copy(update={"backend": "torchao"}), DEVICE)
    with pytest.raises(TuneforgeError, match=r"^train.optimizer: adamw_8bit needs the bitsandbytes package"):
        check_training_options(make_recipe("train.optimizer=adamw_8bit"), device_type=DEVICE, precision="fp32")


def test_backend_choice(monkeypatch):
    from tuneforge.models.quantize import QuantizeConfig, choose_backend

    monkeypatch.setattr(quantize, "_torchao_available", lambda: True)
    monkeypatch.setattr(quantize, "import_bitsandbytes", lambda: None)
    assert choose_backend(QuantizeConfig(bits=8), "cpu") == "torchao"  # auto falls back for 8 bits
    old = types.SimpleNamespace(__version__="0.43.0", supported_torch_devices={"cuda"})
    monkeypatch.setattr(quantize, "import_bitsandbytes", lambda: old)
    with pytest.raises(TuneforgeError, match=r"needs bitsandbytes on cpu, which bitsandbytes 0.43.0 does not support "
                       r"\(it runs on cuda\); pip install -U bitsandbytes, or train on a CUDA GPU"):
        choose_backend(QuantizeConfig(bits=8, backend="bitsandbytes"), "cpu")
    assert choose_backend(QuantizeConfig(bits=4), "cuda") == "bitsandbytes"


def test_paged_optimizer_needs_cuda(make_recipe):
    needs_bitsandbytes()
    from tuneforge.models.build import check_training_options

    with pytest.raises(TuneforgeError, match=r"train.optimizer: paged_adamw_8bit pages the optimizer state between "
                       r"GPU and CPU memory, and this machine trains on cpu.*; use adamw_8bit"):
        check_training_options(make_recipe("train.optimizer=paged_adamw_8bit"), device_type="cpu", precision="fp32")


# ------------------------------------------------------------------------------ quantised models (bitsandbytes)


def built(make_recipe, *overrides):
    """The model ``train`` would build for the tiny BERT (classification, LoRA) under ``overrides``."""
    from tuneforge.models.build import build_model, load_tokenizer, resolve_recipe_model
    from tuneforge.tasks import spec_for

    recipe = make_recipe("method=lora", "lora.dropout=0.0", *overrides)
    resolved = resolve_recipe_model(recipe.model)
    tokenizer = load_tokenizer(resolved)
    model, _ = build_model(recipe, resolved, spec_for(recipe), ["negative", "positive"], tokenizer.pad_token_id,
                           tokenizer)
    torch.manual_seed(3)
    with torch.no_grad():  # as after training: the adapter and the head change the output
        for name, param in model.named_parameters():
            if "lora_B" in name or "classifier.modules_to_save" in name:
                param.normal_(0, 0.5)
    return model


def batch():
    ids = torch.randint(1000, 2000, (4, 12), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_the_task_head_stays_full_precision_and_trains(make_recipe):
    needs_bitsandbytes()
    import bitsandbytes as bnb

    model = built(make_recipe, "model.quantize={bits: 4}")
    bert = model.get_base_model()
    assert isinstance(bert.bert.pooler.dense, bnb.nn.Linear4bit)  # the body is quantised...
    assert isinstance(bert.bert.encoder.layer[0].attention.self.query.base_layer, bnb.nn.Linear4bit)
    head = bert.classifier.modules_to_save.default  # ...the new head is not, and trains whole
    assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32 and head.weight.requires_grad
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier.modules_to_save" in n for n in trainable)


def test_gradients_reach_every_adapter_after_an_evaluation(make_recipe):
    """bitsandbytes 0.50 would repack 4-bit weights for its CPU kernel at the first evaluation, after which no
    gradient reached the first layers' LoRA weights (prepare_quantized keeps it off that path)."""
    needs_bitsandbytes()
    model = built(make_recipe, "model.quantize={bits: 4}")
    model.eval()
    with torch.no_grad():
        model(**batch())
    model.train()
    model(**batch(), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    lora_a = {n: p.grad for n, p in model.named_parameters() if "lora_A" in n}
    assert lora_a and all(g is not None and g.abs().sum() > 0 for g in lora_a.values())


@pytest.mark.parametrize("quantize_setting", ["{bits: 4}", "{bits: 4, quant_type: fp4, double_quant: false}",
                                              "{bits: 8}", "{bits: 8, backend: torchao}"])
def test_export_merges_into_the_dequantised_weights(make_recipe, tmp_path, quantize_setting):
    """The merged fp32 export computes what the quantised model computes in evaluation, and reloads with plain
    transformers; the full checkpoint's state_dict leaves the frozen quantised weights out and loads back."""
    needs_torchao() if "torchao" in quantize_setting else needs_bitsandbytes()
    from transformers import AutoModelForSequenceClassification

    from tuneforge.export.merge import write_export

    model = built(make_recipe, f"model.quantize={quantize_setting}").eval()
    state = model.state_dict()
    assert not any(k.endswith(("query.base_layer.weight", "weight.absmax", ".SCB")) for k in state)
    assert any(k.endswith("query.base_layer.bias") for k in state)
    assert not model.load_state_dict(state, strict=True).missing_keys
    with torch.no_grad():
        quantised = model(**batch()).logits
        with model.disable_adapter():
            without_adapter = model(**batch()).logits
    assert (quantised - without_adapter).abs().max() > 0.05  # the adapter matters
    how = write_export(model, "lora", _tokenizer(make_recipe), tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "tuneforge_export.json").read_text())
    assert how == "merged" and manifest["quantized_base"]["bits"] == int(quantize_setting[7])
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert "quantization_config" not in config
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())
    with torch.no_grad():
        exported = reloaded(**batch()).logits
    torch.testing.assert_close(exported, quantised, atol=1e-4, rtol=1e-4)


def _tokenizer(make_recipe):
    from tuneforge.models.build import load_tokenizer, resolve_recipe_model

    return load_tokenizer(resolve_recipe_model(make_recipe().model))


def test_gpt2_conv1d_layers_export_as_conv1d(tmp_path):
    """bitsandbytes quantises GPT-2's Conv1D layers as transposed linear layers; the export turns them back."""
    needs_bitsandbytes()
    import transformers as t

    from tuneforge.models.methods import LoraConfig, apply_method
    from tuneforge.models.quantize import dequantize_for_export, prepare_quantized

    torch.manual_seed(0)
    t.GPT2LMHeadModel(t.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=32)).save_pretrained(
        tmp_path / "gpt2")
    quantized = t.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2", device_map={"": "cpu"},
                                                  quantization_config=t.BitsAndBytesConfig(
                                                      load_in_4bit=True, llm_int8_skip_modules=["lm_head"]))
    prepare_quantized(quantized)
    model = apply_method(quantized, "lora", LoraConfig(r=4, dropout=0.0), task=get_task("causal_lm")).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
        reference = model(input_ids=ids).logits
        merged = dequantize_for_export(model).merge_and_unload()
        merged.save_pretrained(tmp_path / "export")
        reloaded = t.GPT2LMHeadModel.from_pretrained(tmp_path / "export")
        assert type(reloaded.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
        torch.testing.assert_close(reloaded(input_ids=ids).logits, reference, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------- a real run


def test_a_4bit_lora_run_learns_resumes_and_exports_within_the_tolerance(make_recipe):
    needs_bitsandbytes()
    from transformers import AutoModelForSequenceClassification

    from tuneforge.export.command import ExportConfig, run_export
    from tuneforge.export.merge import QUANTIZED_MAX_LOGIT_DIFF, QUANTIZED_MIN_AGREEMENT
    from tuneforge.train.run import train

    settings = ("method=lora", "train.learning_rate=1e-2", "model.quantize={bits: 4}", "export.enabled=true")
    result = train(make_recipe(*settings, name="qlora"))
    losses = train_losses(result.run_dir)
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6
    report = json.loads((result.export_dir / "verification.json").read_text())
    assert report == result.verification and report["passed"]
    assert report["quantized_base"] == {"backend": "bitsandbytes", "bits": 4, "quant_type": "nf4",
                                        "double_quant": True, "compute_dtype": "float32"}
    assert report["min_agreement"] == QUANTIZED_MIN_AGREEMENT
    assert report["max_abs_logit_diff_allowed"] == QUANTIZED_MAX_LOGIT_DIFF
    assert report["prediction_agreement"] == 1.0 and report["max_abs_logit_diff"] < 1e-4
    AutoModelForSequenceClassification.from_pretrained(result.export_dir)  # plain transformers, no bitsandbytes
    again = run_export(ExportConfig(run_dir=result.run_dir, output_dir=result.run_dir / "re-export"))
    assert json.loads((again / "verification.json").read_text())["passed"]  # `tuneforge export` rebuilds it quantised
    from safetensors import safe_open

    with safe_open(result.run_dir / "checkpoints" / "last" / "model.safetensors", "pt") as saved:
        keys = list(saved.keys())
    assert any(k.endswith("lora_A.default.weight") for k in keys)
    assert not any(k.endswith(("base_layer.weight", "intermediate.dense.weight", ".absmax")) for k in keys)

    # the full checkpoint (frozen quantised weights left out) resumes exactly, with the 8-bit optimizer too
    short = ("method=lora", "train.learning_rate=1e-2", "model.quantize={bits: 4}", "train.max_steps=6",
             "train.eval_every_steps=3", "train.optimizer=adamw_8bit")
    whole = train(make_recipe(*short, name="whole"))
    train(make_recipe(*short, "train.halt_after_steps=4", name="halted"))
    resumed = train(make_recipe(*short, name="halted"), resume=True)
    assert train_losses(resumed.run_dir) == train_losses(whole.run_dir)


# ---------------------------------------------------------------------------------------- 8-bit optimizer


def test_adamw_8bit_keeps_8bit_state_and_learns(make_recipe):
    needs_bitsandbytes()
    from tuneforge.train.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 1))
    cfg = make_recipe("train.optimizer=adamw_8bit", "train.learning_rate=1e-2").train
    optimizer = build_optimizer(model, cfg)
    assert type(optimizer).__name__ == "AdamW8bit"
    x, y = torch.randn(32, 64), torch.randn(32, 1)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    big = optimizer.state[model[0].weight]  # 8,192 elements: 8-bit moments (under 4,096: 32-bit, bitsandbytes' rule)
    assert big["state1"].dtype == torch.uint8 and big["state2"].dtype == torch.uint8
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg.weight_decay, 0.0]  # no decay on biases
