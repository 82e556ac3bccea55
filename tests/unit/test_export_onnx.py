"""``tuneforge export --format onnx [--quantize int8]`` on tiny random BERTs: the graph matches PyTorch,
takes any batch size and length, the int8 model is measured, a missed threshold fails with exit code 2
after writing the report, and unsupported tasks or formats are refused before any work."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.export.command import ExportConfig, run_export
from tuneforge.train.run import train

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def lora_run(make_recipe):
    """A trained LoRA classifier run (no export yet): ONNX comes from its merged export."""
    return train(make_recipe("method=lora", "train.learning_rate=1e-2", "train.max_steps=12")).run_dir


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_logits(session, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return session.run(["logits"], {i.name: enc[i.name] for i in session.get_inputs()})[0]


def test_onnx_export_matches_pytorch_and_quantizes(lora_run, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = run_export(ExportConfig(run_dir=lora_run, output_dir=tmp_path / "export", format="onnx", quantize="int8"))
    onnx_dir = out / "onnx"
    report = json.loads((onnx_dir / "parity.json").read_text())
    torch_fp32, fp32, int8 = report["torch_fp32"], report["onnx_fp32"], report["onnx_int8"]
    assert report["passed"] and report["examples"] == 24 and report["metric"] == "accuracy"
    assert fp32["max_abs_logit_diff"] <= 1e-3 and fp32["agreement"] == 1.0
    assert fp32["metric_value"] == torch_fp32["metric_value"]
    assert {"max_abs_logit_diff", "agreement", "metric_value", "metric_change_points", "seconds"} <= int8.keys()
    assert int8["metric_change_points"] == pytest.approx(100 * (int8["metric_value"] - torch_fp32["metric_value"]))
    assert report["files_bytes"]["model.int8.onnx"] < report["files_bytes"]["model.onnx"]
    assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and report["opset"] >= 17
    assert "| agreement with PyTorch | - | 100.00% (≥ 100.00%) |" in (onnx_dir / "parity.md").read_text()
    assert "## ONNX" in (out / "README.md").read_text()

    # the onnx folder is self-contained: tokenizer and config beside the graph
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    session = _session(onnx_dir / "model.onnx")
    sentence = ["a fresh sentence the model has never seen"]
    with torch.no_grad():
        expected = model(**tokenizer(sentence, return_tensors="pt")).logits.numpy()
    assert abs(_onnx_logits(session, tokenizer, sentence) - expected).max() <= 1e-4

    # dynamic axes: batch 1 and 3, two different lengths, padded rows
    for texts in (["short"], ["short", "a somewhat longer sentence with more words", "mid length one"]):
        logits = _onnx_logits(session, tokenizer, texts)
        assert logits.shape == (len(texts), 2)
        with torch.no_grad():
            expected = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
        assert abs(logits - expected).max() <= 1e-4
    assert _onnx_logits(_session(onnx_dir / "model.int8.onnx"), tokenizer, sentence).shape == (1, 2)


def test_missed_threshold_exits_2_and_still_writes_the_report(lora_run, tmp_path, monkeypatch):
    """ONNX outputs shifted by 0.5: the argmax agrees, the logit difference is 0.5 > max_logit_diff."""
    from tuneforge.export import onnx

    real = onnx._ort_forward
    monkeypatch.setattr(onnx, "_ort_forward", lambda path, threads: (
        lambda forward: (lambda inputs: forward(inputs) + 0.5))(real(path, threads)))
    out = tmp_path / "export"
    result = invoke("export", lora_run, "--format", "onnx", f"output_dir={out}")
    assert result.exit_code == 2, result.output
    report_path = out / "onnx" / "parity.json"
    assert (f"error: ONNX parity check failed on 24 validation examples: onnx fp32 max |logit difference| 0.5 "
            f"exceeds max_logit_diff 0.001. Report: {report_path}") in result.output
    report = json.loads(report_path.read_text())
    assert report["passed"] is False and report["onnx_fp32"]["agreement"] == 1.0
    assert "onnx_int8" not in report and (out / "README.md").exists()


def test_token_classification_exports(make_recipe, tmp_path):
    from tests.unit.test_tasks_tiny import _conll, _recipe

    rng = random.Random(0)
    tr, dev = _conll(tmp_path / "tr.iob2", 48, rng), _conll(tmp_path / "dev.iob2", 12, rng)
    run_dir = train(_recipe(make_recipe, "token_classification", tr, dev, "train.max_steps=6",
                            "export.enabled=false")).run_dir
    result = invoke("export", run_dir, "format=onnx")  # the key=value form of --format onnx
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "export" / "onnx" / "parity.json").read_text())
    assert report["passed"] and report["label_kind"] == "tokens" and report["metric"] == "entity_f1"
    assert report["onnx_fp32"]["max_abs_logit_diff"] <= 1e-3 and report["onnx_fp32"]["agreement"] == 1.0
    assert report["agreement_rule"] == "same argmax tag per real (unpadded) token"


def test_unsupported_task_is_refused_before_any_work(make_recipe, tmp_path):
    from tuneforge.recipe import recipe_to_yaml
    from tests.unit.test_task_causal_lm import _alpaca, _recipe

    rng = random.Random(0)
    tr, dev = _alpaca(tmp_path / "tr.json", 4, rng), _alpaca(tmp_path / "dev.json", 4, rng)
    recipe = _recipe(make_recipe, tmp_path, tr, dev)  # the model directory is never read: refused before
    run_dir = tmp_path / "runs" / "causal"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    result = invoke("export", run_dir, "--format", "onnx")
    assert result.exit_code == 2
    assert ("error: format onnx: task causal_lm is not supported; ONNX export supports the tasks whose model "
            "outputs logits: classification, classification (multi_label), regression, token_classification"
            ) in result.output
    assert [p.name for p in run_dir.iterdir()] == ["recipe.yaml"]


def test_unknown_format_and_quantize_without_onnx(tmp_path):
    result = invoke("export", tmp_path, "--format", "foo")
    assert result.exit_code == 2
    assert "format: got 'foo': Input should be 'safetensors' or 'onnx'" in result.output
    result = invoke("export", tmp_path, "--quantize", "int8")
    assert result.exit_code == 2
    assert "quantize: int8 quantizes the ONNX graph: add format onnx (--format onnx)" in result.output


def test_agreement_rules_per_label_kind():
    """Regression agrees within 1% of the labels' range; multi-label on the whole label set at 0.5."""
    import torch

    from tuneforge.data.batching import Encoded
    from tuneforge.export.onnx import compare

    values = Encoded(input_ids=[[1]] * 3, labels=[0.0, 5.0, 2.0], label_kind="value")  # range 5: tolerance 0.05
    ref = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])]
    got = [torch.tensor([1.04]), torch.tensor([2.06]), torch.tensor([3.0])]
    assert compare(ref, got, values) == pytest.approx({"max_abs_logit_diff": 0.06, "agreement": 2 / 3})
    multi = Encoded(input_ids=[[1]] * 2, labels=[[1.0, 0.0], [0.0, 1.0]], label_kind="multi")
    ref = [torch.tensor([2.0, -1.0]), torch.tensor([-3.0, 0.5])]
    got = [torch.tensor([2.0, -1.0]), torch.tensor([-3.0, -0.5])]  # second example loses a label
    assert compare(ref, got, multi)["agreement"] == 0.5
