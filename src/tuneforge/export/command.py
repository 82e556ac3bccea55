"""``tuneforge export RUN_DIR``: rebuild a run's best checkpoint and write a verified, merged export."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from tuneforge.recipe import Section


class ExportConfig(Section):
    run_dir: Path = Field(..., description="Run directory holding recipe.yaml and checkpoints/best.")
    output_dir: Path | None = Field(None, description="Export folder; default: <run_dir>/export.")
    verify: bool = Field(True, description="Reload the export and check its predictions on the validation set.")


def run_export(cfg: ExportConfig) -> Path:
    from tuneforge.data.prepare import encode_split, load_prepared
    from tuneforge.errors import TuneforgeError
    from tuneforge.evaluate.predict import predict
    from tuneforge.export.card import write_model_card
    from tuneforge.export.merge import export_model, verify_export
    from tuneforge.models.build import build_model, load_tokenizer, resolve_recipe_model
    from tuneforge.recipe import load_recipe, recipe_to_yaml
    from tuneforge.tasks import spec_for
    from tuneforge.train.checkpoint import load_best

    if not (cfg.run_dir / "recipe.yaml").exists():
        raise TuneforgeError(f"{cfg.run_dir} is not a run directory (no recipe.yaml)")
    recipe = load_recipe(cfg.run_dir / "recipe.yaml")
    if not (cfg.run_dir / "data" / "prepared.json").exists():
        raise TuneforgeError(f"{cfg.run_dir}: no prepared data (data/prepared.json); train the run first")
    data = load_prepared(cfg.run_dir / "data")  # exactly the rows the run trained and validated on
    resolved = resolve_recipe_model(recipe.model, run_dir=cfg.run_dir)
    tokenizer = load_tokenizer(resolved, recipe.model.trust_remote_code)
    spec = spec_for(recipe)
    model, params = build_model(recipe, resolved, spec, data.label_names, tokenizer.pad_token_id, tokenizer)
    best = load_best(model, cfg.run_dir / "checkpoints")
    if best is None:
        raise TuneforgeError(f"{cfg.run_dir}: no best checkpoint (checkpoints/best); train the run first")
    val_enc = encode_split(spec, tokenizer, data, "validation", recipe)
    reference = predict(model, val_enc, batch_size=recipe.train.eval_batch_size, pad_id=tokenizer.pad_token_id)
    out, how = export_model(model, recipe.method, tokenizer, cfg.output_dir or cfg.run_dir / "export")
    verification = None
    if cfg.verify:
        verification = verify_export(out, reference.outputs, val_enc, pad_id=tokenizer.pad_token_id,
                                     auto_class=spec.auto_class, how=how)
    metrics_path = cfg.run_dir / "eval" / "eval.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else best.get("metrics", {})
    manifest_path = cfg.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"packages": {}}
    write_model_card(out, recipe_yaml=recipe_to_yaml(recipe), recipe=recipe, data_summary=data.summary(),
                     manifest=manifest, metrics=metrics, verification=verification, params=str(params),
                     export_how=how, auto_class=spec.auto_class)
    return out
