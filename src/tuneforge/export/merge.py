"""Write a standalone model: LoRA merged into the base weights, safetensors, tokenizer, label names.

The export must load with the task's plain ``AutoModelFor...from_pretrained(dir)``, with no
tuneforge and no peft installed, and predict exactly like the trained model; ``verify_export``
checks the second part on the validation set and the result goes into the model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuneforge.errors import TuneforgeError


def merged_model(model):
    """A plain transformers model: PEFT adapters folded into the weights (W + scale * B @ A)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return model
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def save_export(model, tokenizer, out_dir: Path) -> Path:
    """Save ``model`` (already merged) and ``tokenizer`` to ``out_dir`` as safetensors."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


#: Both sides run in fp32; anything above this is a broken export, not rounding (a regression head
#: has no argmax to disagree on, so the logits themselves must match).
MAX_LOGIT_DIFF = 1e-3


def verify_export(export_dir: Path, reference_outputs: list, encoded, *, pad_id: int, batch_size: int = 64,
                  min_agreement: float = 1.0, auto_class: str = "AutoModelForSequenceClassification") -> dict:
    """Reload the export the way a user would (``transformers.<auto_class>``) and compare its
    predictions with the trained model's: per example, or per token for token-level tasks."""
    import torch
    import transformers

    from tuneforge.evaluate.predict import predict

    reloaded = getattr(transformers, auto_class).from_pretrained(export_dir, use_safetensors=True)
    got = predict(reloaded, encoded, batch_size=batch_size, pad_id=pad_id, precision="fp32").outputs
    if got:
        new = torch.cat([g.reshape(-1, g.size(-1)) for g in got])
        ref = torch.cat([r.reshape(-1, r.size(-1)) for r in reference_outputs])
        agree = (new.argmax(-1) == ref.argmax(-1)).float().mean().item()
        max_diff = (new - ref).abs().max().item()
    else:
        agree, max_diff = 1.0, 0.0
    report = {"examples": len(encoded), "reloaded_with": f"transformers.{auto_class}",
              "prediction_agreement": agree, "max_abs_logit_diff": max_diff,
              "min_agreement": min_agreement, "max_abs_logit_diff_allowed": MAX_LOGIT_DIFF,
              "passed": agree >= min_agreement and max_diff <= MAX_LOGIT_DIFF}
    (export_dir / "verification.json").write_text(json.dumps(report, indent=2))
    if not report["passed"]:
        raise TuneforgeError(
            f"export verification failed: the reloaded export agrees with the trained model on "
            f"{100 * agree:.2f}% of {len(encoded)} validation examples (need {100 * min_agreement:.2f}%); "
            f"max |logit difference| {max_diff:.3g}. See {export_dir / 'verification.json'}"
        )
    return report
