"""The exported model's ``README.md``: what it was trained on, how, and how well it does."""

from __future__ import annotations

from pathlib import Path


def _metrics_table(metrics: dict) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, float):
            rows.append(f"| {key} | {value:.4f} |")
    per_class = metrics.get("per_class") or {}
    if per_class:
        rows += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for name, m in per_class.items():
            rows.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    return "\n".join(rows)


def _onnx_section(onnx: dict | None) -> str:
    """What ``onnx/`` holds and how close it is to the PyTorch model (``tuneforge.export.onnx``)."""
    if onnx is None:
        return ""
    fp32, int8 = onnx["onnx_fp32"], onnx.get("onnx_int8")
    lines = [f"- `onnx/model.onnx`: {onnx['exporter']}, opset {onnx['opset']}; inputs {', '.join(onnx['inputs'])} "
             f"(dynamic batch and length), output `logits`; tokenizer and `config.json` in the same folder",
             f"- on {onnx['examples']} validation examples against the PyTorch model (fp32): max |logit difference| "
             f"{fp32['max_abs_logit_diff']:.2e}, {100 * fp32['agreement']:.2f}% agreement"]
    if int8 is not None:
        lines.append(f"- `onnx/model.int8.onnx` (onnxruntime dynamic quantization, int8 weights): "
                     f"{100 * int8['agreement']:.2f}% agreement, {onnx['metric']} {int8['metric_value']:.4f} "
                     f"({int8['metric_change_points']:+.2f} points vs PyTorch fp32)")
    verdict = "passed" if onnx["passed"] else "FAILED: " + "; ".join(onnx["failures"])
    lines.append(f"- parity check {verdict}; details and latencies: `onnx/parity.md`")
    return "\n## ONNX\n" + "\n".join(lines) + "\n"


def write_model_card(out_dir: Path, *, recipe_yaml: str, recipe, data_summary: dict, manifest: dict,
                     metrics: dict, verification: dict | None, params: str, export_how: str = "plain",
                     auto_class: str = "AutoModelForSequenceClassification", onnx: dict | None = None,
                     name: str | None = None) -> Path:
    """Write ``README.md`` into ``out_dir`` (a staged export folder: the caller swaps it in whole);
    ``name``: the folder's final name, for the loading snippet (default ``out_dir.name``)."""
    from tuneforge.models.methods import EXPORT_CONTENTS

    from tuneforge.models.resolve import weights_note

    name = name or out_dir.name
    note = weights_note(recipe.model.name or "")
    note = f"\n\n**Base weights:** `{recipe.model.name}` is {note}." if note else ""
    files = "\n".join(f"- `{path}`: sha256 `{info['sha256'][:16]}…`, {info['bytes']:,} bytes"
                      for path, info in manifest.get("data_files", {}).items())
    labels = ", ".join(f"`{i}` = {name}" for i, name in enumerate(data_summary["label_names"] or [])) or \
        "a single real-valued output (regression)"
    verified = ("not run" if verification is None else
                f"{100 * verification['prediction_agreement']:.2f}% prediction agreement with the trained model "
                f"on {verification['examples']} validation examples, max |logit difference| "
                f"{verification['max_abs_logit_diff']:.2e}")
    text = f"""---
library_name: transformers
tags: [tuneforge, {recipe.task}]
---

# {recipe.name}

Model fine-tuned with tuneforge from `{recipe.model.name}`
(task: {recipe.task}; method: {recipe.method}; {params}). Export: {EXPORT_CONTENTS[export_how]}.{note}

```python
from transformers import {auto_class}, AutoTokenizer
model = {auto_class}.from_pretrained("{name}")  # plain exports; see above
tokenizer = AutoTokenizer.from_pretrained("{name}")
```

## Labels
{labels}

## Data
- training rows: {data_summary['train_rows']:,}; validation rows: {data_summary['validation_rows']:,}
  (validation: {data_summary['validation_source']})
- rejected rows (see the run's `rejected.jsonl`): {data_summary['rejected_rows']}
{files}

## Validation metrics (best checkpoint, step {metrics.get('step', '?')}, fp32)
{_metrics_table(metrics)}

## Export verification
{verified}
{_onnx_section(onnx)}
## Reproduce
Seed {recipe.seed}; git commit `{manifest.get('git', {}).get('commit')}`; torch {manifest['packages'].get('torch')},
transformers {manifest['packages'].get('transformers')}, peft {manifest['packages'].get('peft')}.

```yaml
{recipe_yaml.rstrip()}
```
"""
    path = out_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
