"""``tuneforge export RUN_DIR``: rebuild a run's best checkpoint and write a verified, merged export
(``--format onnx``: also an ONNX graph of it, optionally int8, checked on the validation set)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tuneforge.recipe import Section


class ExportConfig(Section):
    run_dir: Path = Field(..., description="Run directory holding recipe.yaml and checkpoints/best.")
    output_dir: Path | None = Field(None, description="Export folder; default: <run_dir>/export.")
    verify: bool = Field(True, description="Reload the export and check its predictions on the validation set.")
    format: Literal["safetensors", "onnx"] = Field(
        "safetensors", description="safetensors: the merged transformers model. onnx: that, plus <export>/onnx/"
        "model.onnx (tokenizer and config.json beside it) and a parity report against PyTorch (parity.json/.md).")
    quantize: Literal["int8"] | None = Field(
        None, description="int8: also <export>/onnx/model.int8.onnx (onnxruntime dynamic quantization, int8 "
        "weights), in the parity report too. Needs format onnx.")
    max_logit_diff: float = Field(
        1e-3, ge=0, description="ONNX fp32 vs PyTorch fp32: largest allowed |logit difference| on the validation set.")
    min_agreement: float = Field(
        1.0, ge=0, le=1, description="ONNX fp32 vs PyTorch fp32: least allowed fraction of agreeing predictions.")
    int8_min_agreement: float = Field(
        0.95, ge=0, le=1, description="ONNX int8 vs PyTorch fp32: least allowed fraction of agreeing predictions.")

    @model_validator(mode="after")
    def _quantize_needs_onnx(self):
        if self.quantize is not None and self.format != "onnx":
            raise ValueError(f"quantize: {self.quantize} quantizes the ONNX graph: add format onnx (--format onnx)")
        return self


def run_export(cfg: ExportConfig) -> Path:
    from tuneforge.data.prepare import encode_split, load_prepared
    from tuneforge.errors import TuneforgeError
    from tuneforge.evaluate.predict import predict
    from tuneforge.export.stage import export_model
    from tuneforge.models.build import build_model, load_tokenizer, resolve_recipe_model
    from tuneforge.recipe import load_recipe
    from tuneforge.tasks import spec_for
    from tuneforge.models.best import load_best

    if not (cfg.run_dir / "recipe.yaml").exists():
        raise TuneforgeError(f"{cfg.run_dir} is not a run directory (no recipe.yaml)")
    recipe = load_recipe(cfg.run_dir / "recipe.yaml")
    spec = spec_for(recipe)
    if cfg.format == "onnx":
        from tuneforge.export.onnx import check_onnx_supported

        check_onnx_supported(spec, recipe.method)  # before any work: no half-written export to clean up
    if not (cfg.run_dir / "data" / "prepared.json").exists():
        raise TuneforgeError(f"{cfg.run_dir}: no prepared data (data/prepared.json); train the run first")
    data = load_prepared(cfg.run_dir / "data")  # exactly the rows the run trained and validated on
    resolved = resolve_recipe_model(recipe.model, run_dir=cfg.run_dir)
    tokenizer = load_tokenizer(resolved, recipe.model.trust_remote_code)
    model, params = build_model(recipe, resolved, spec, data.label_names, tokenizer.pad_token_id, tokenizer)
    best = load_best(model, cfg.run_dir / "checkpoints")
    if best is None:
        raise TuneforgeError(f"{cfg.run_dir}: no best checkpoint (checkpoints/best); train the run first")
    val_enc = encode_split(spec, tokenizer, data, "validation", recipe)
    reference = predict(model, val_enc, batch_size=recipe.train.eval_batch_size, pad_id=tokenizer.pad_token_id)
    out = cfg.output_dir or cfg.run_dir / "export"
    metrics_path = cfg.run_dir / "eval" / "eval.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else best.get("metrics", {})
    manifest_path = cfg.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"packages": {}}
    onnx = None
    if cfg.format == "onnx":
        def onnx(stage: Path, how: str) -> dict:
            return _export_onnx(cfg, stage, how, recipe, spec, tokenizer, data, val_enc)
    export_model(model, tokenizer, recipe, spec, out=out, reference_outputs=reference.outputs, encoded=val_enc,
                 data_summary=data.summary(), manifest=manifest, metrics=metrics, params=params, verify=cfg.verify,
                 onnx=onnx)
    return out


def _export_onnx(cfg: ExportConfig, out: Path, how: str, recipe, spec, tokenizer, data, val_enc) -> dict:
    """The export folder's model, reloaded with plain transformers (what users get), as ONNX + parity report."""
    from tuneforge.export.merge import reload_export
    from tuneforge.evaluate.predict import resolve_eval_batch_size
    from tuneforge.export.onnx import export_with_parity, task_score

    model, _ = reload_export(out, how, spec.auto_class)
    metric = recipe.train.metric_for_best
    score = task_score(spec, data.records["validation"], val_enc, data.label_names, metric)
    batch_size = resolve_eval_batch_size(recipe.train.eval_batch_size, model, val_enc)
    return export_with_parity(out, cfg, model=model.eval(), tokenizer=tokenizer, encoded=val_enc, score=score,
                              metric=metric, batch_size=batch_size)
