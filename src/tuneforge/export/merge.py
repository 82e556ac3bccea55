"""Write the trained model for users (merged into plain weights where the method allows) and verify it.

The export must load with the task's plain ``AutoModelFor...from_pretrained(dir)``, with no
tuneforge and no peft installed, and predict exactly like the trained model (a model trained on a quantised
base: within ``QUANTIZED_MIN_AGREEMENT`` / ``QUANTIZED_MAX_LOGIT_DIFF``); ``verify_export`` checks the second
part on the validation set and the result goes into the model card.

Callers write the whole folder (weights, tokenizer, ``verification.json``, model card, ONNX) into a
temporary folder from ``tuneforge.atomic.staged_dir`` and swap it in at the end, so a kill never
leaves a half-written export where a previous good one was.
"""

from __future__ import annotations

from dataclasses import replace

import json
from pathlib import Path

from tuneforge.errors import TuneforgeError


def write_export(model, method: str, tokenizer, out_dir: Path) -> str:
    """Write the trained ``model`` for users into ``out_dir`` (an empty, staged folder); returns how it
    was exported.

    LoRA/DoRA/IA3 merge into the weights and full/head_only are plain: the folder is a standalone
    ``transformers`` model. A prefix, a soft prompt and bottleneck adapters cannot be folded into
    weights: the folder holds the base model plus the method's files and a manifest, reloaded by
    ``tuneforge.models.methods.load_method_export`` (see ``EXPORT_CONTENTS``).
    """
    from tuneforge.models.methods import EXPORT_MANIFEST, merge_for_export, save_method_export
    from tuneforge.models.quantize import dequantize_for_export, quantization_of

    quantized = quantization_of(model)
    if quantized is not None:  # QLoRA: merge into the dequantised base, in fp32 (see dequantize_for_export)
        model = dequantize_for_export(model)
    exportable, how = merge_for_export(model, method)
    save_method_export(exportable, how, out_dir)
    if quantized is not None:  # verify_export reads it: the export is compared with a quantised model
        manifest = json.loads((out_dir / EXPORT_MANIFEST).read_text())
        (out_dir / EXPORT_MANIFEST).write_text(json.dumps({**manifest, "quantized_base": quantized}, indent=2) + "\n")
    tokenizer.save_pretrained(out_dir)
    return how


def reload_export(export_dir: Path, how: str, auto_class: str):
    """Reload an export the way a user would: plain transformers when it is a plain model."""
    if how in ("plain", "merged"):
        import transformers

        return getattr(transformers, auto_class).from_pretrained(export_dir, use_safetensors=True), \
            f"transformers.{auto_class}"
    from tuneforge.models.methods import load_method_export

    return load_method_export(export_dir), "tuneforge.models.methods.load_method_export"


#: Both sides run in fp32; anything above this is a broken export, not rounding (a regression head
#: has no argmax to disagree on, so the logits themselves must match).
MAX_LOGIT_DIFF = 1e-3
#: A model trained on a quantised base (model.quantize) is exported merged into its dequantised weights, in fp32,
#: and evaluated (eval mode) with those same dequantised weights (``tuneforge.models.quantize``), so the two match
#: to rounding; but the order of operations differs (W x + B (A x) against (W + B A) x) and torchao multiplies
#: with its own int8 kernel. Measured on smollm2-135m (4,766 tokens, random LoRA B): max |top logit difference|
#: 1.3e-3 (bitsandbytes 4-bit), 3.1e-4 (8-bit), 3.4e-3 (torchao int8), every top token the same. A quantised
#: export must agree on at least this share of predictions (per example, or per token)...
QUANTIZED_MIN_AGREEMENT = 0.99
#: ...and its logits may differ by at most this much (a wrong weight is off by whole units). See docs/memory.md.
QUANTIZED_MAX_LOGIT_DIFF = 0.05


def verify_export(export_dir: Path, reference_outputs: list, encoded, *, pad_id: int, batch_size: int = 64,
                  min_agreement: float = 1.0, auto_class: str = "AutoModelForSequenceClassification",
                  how: str = "plain", final_dir: Path | None = None) -> dict:
    """Reload the export the way a user would (``transformers.<auto_class>`` for plain exports) and
    compare its predictions with the trained model's: per example, or per token for token-level tasks.
    ``final_dir``: where the staged ``export_dir`` will be swapped in (the error message names it)."""
    import torch

    from tuneforge.evaluate.predict import predict

    quantized, max_allowed = _quantized_base(export_dir), MAX_LOGIT_DIFF
    if quantized is not None:
        min_agreement, max_allowed = min(min_agreement, QUANTIZED_MIN_AGREEMENT), QUANTIZED_MAX_LOGIT_DIFF
    reloaded, reloaded_with = reload_export(export_dir, how, auto_class)
    values = getattr(encoded.objective, "verification_values", None)
    if values is not None:
        # Objective-based tasks (preference, reward models): compare what the model itself computes (reply
        # log-probs per token, scores); the reloaded export has no reference model (no adapters to switch off).
        encoded = replace(encoded, objective=encoded.objective.without_reference())
    got = predict(reloaded, encoded, batch_size=batch_size, pad_id=pad_id, precision="fp32").outputs
    if got and values is not None:
        new, ref = values(torch.stack(got)), values(torch.stack(reference_outputs))
        agree = (new.argmax(-1) == ref.argmax(-1)).float().mean().item() if new.size(-1) > 1 else 1.0
        max_diff = (new - ref).abs().max().item()
    elif got:
        new = torch.cat([g.reshape(-1, g.size(-1)) for g in got])
        ref = torch.cat([r.reshape(-1, r.size(-1)) for r in reference_outputs])
        if encoded.label_kind in ("causal", "target"):  # outputs are (top logit, top token id) per token
            agree = (new[:, 1] == ref[:, 1]).float().mean().item()
            max_diff = (new[:, 0] - ref[:, 0]).abs().max().item()
        elif encoded.label_kind == "span":  # [len, 2] start/end logits: the same best start and end per window
            agree = sum(bool((g.argmax(0) == r.argmax(0)).all()) for g, r in zip(got, reference_outputs)) / len(got)
            max_diff = (new - ref).abs().max().item()
        else:
            agree = (new.argmax(-1) == ref.argmax(-1)).float().mean().item()
            max_diff = (new - ref).abs().max().item()
    else:
        agree, max_diff = 1.0, 0.0
    report = {"examples": len(encoded), "reloaded_with": reloaded_with, "export": how,
              "prediction_agreement": agree, "max_abs_logit_diff": max_diff,
              "min_agreement": min_agreement, "max_abs_logit_diff_allowed": max_allowed,
              "passed": agree >= min_agreement and max_diff <= max_allowed}
    if quantized is not None:
        report["quantized_base"] = quantized  # compared with the quantised trained model
    (export_dir / "verification.json").write_text(json.dumps(report, indent=2))
    if not report["passed"]:
        raise TuneforgeError(
            f"export verification failed: the reloaded export agrees with the trained model on "
            f"{100 * agree:.2f}% of {len(encoded)} validation examples (need {100 * min_agreement:.2f}%); "
            f"max |logit difference| {max_diff:.3g} (allowed {max_allowed:.3g}). See "
            f"{(final_dir or export_dir) / 'verification.json'}"
        )
    return report


def _quantized_base(export_dir: Path) -> dict | None:
    """How the trained model's base was quantised (``write_export`` notes it in the export manifest), or None."""
    from tuneforge.models.methods import EXPORT_MANIFEST

    try:
        return json.loads((export_dir / EXPORT_MANIFEST).read_text()).get("quantized_base")
    except (OSError, ValueError):
        return None
