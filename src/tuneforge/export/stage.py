"""The export stage's one entry: ``export_model(...) -> ExportResult``.

Used by a run (``recipe.export.enabled``) and by ``tuneforge export RUN_DIR``: the trained model is
written for users (merged or plain weights, or the method's own files), reloaded the way a user would
and checked against the trained model's predictions, then described by a model card. Everything is
written into a staged folder that replaces ``out`` whole at the end (also when a check fails, with its
report): a kill mid-export leaves the previous export, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class ExportResult:
    export_dir: Path
    how: str  # how the weights were written: plain, merged, or the method's own files
    verification: dict | None  # the reload check (None when verification is off)
    onnx: dict | None = None  # the ONNX parity report (``tuneforge export --format onnx``)


def export_model(model, tokenizer, recipe, spec, *, out: Path, reference_outputs: list, encoded, data_summary: dict,
                 manifest: dict, metrics: dict, params, verify: bool = True,
                 onnx: Callable[[Path, str], dict] | None = None) -> ExportResult:
    """Export ``model`` (trained per ``recipe``, task ``spec``) into ``out``.

    ``reference_outputs``: the trained model's predictions on ``encoded`` (the validation split), which
    the reloaded export must reproduce; ``metrics``, ``data_summary``, ``manifest`` and ``params`` go into
    the model card. ``onnx(stage_dir, how) -> report``: also write an ONNX graph (its parity report goes
    into the card, and a failed parity check fails the export after the card is written)."""
    from tuneforge.atomic import staged_dir
    from tuneforge.errors import TuneforgeError
    from tuneforge.export.card import write_model_card
    from tuneforge.export.merge import verify_export, write_export
    from tuneforge.recipe import recipe_to_yaml

    refuse_foreign_files(out)
    tokenizer = with_training_template(tokenizer, recipe)
    with staged_dir(out, keep_on=(TuneforgeError,)) as stage:
        how = write_export(model, recipe.method, tokenizer, stage)
        verification = None
        if verify:
            verification = verify_export(stage, reference_outputs, encoded, pad_id=tokenizer.pad_token_id,
                                         auto_class=spec.auto_class, how=how,
                                         batch_size=recipe.train.eval_batch_size, final_dir=out)
        onnx_report = onnx(stage, how) if onnx is not None else None
        # The resolved recipe beside the weights: `tuneforge evaluate` reads the task and its settings from it.
        (stage / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
        write_model_card(stage, recipe_yaml=recipe_to_yaml(recipe), recipe=recipe, data_summary=data_summary,
                         manifest=manifest, metrics=metrics, verification=verification, params=str(params),
                         export_how=how, auto_class=spec.auto_class, onnx=onnx_report, name=out.name)
        _record_files(stage)
        if onnx_report is not None:
            from tuneforge.export.onnx import raise_if_failed

            raise_if_failed(onnx_report, out / "onnx")  # after the card: a failed check leaves a complete folder
    return ExportResult(export_dir=out, how=how, verification=verification, onnx=onnx_report)


def with_training_template(tokenizer, recipe):
    """The tokenizer carrying the chat template training rendered chats with (``data.formatting.template``
    naming one, e.g. chatml on a base model without its own), so that serving, GRPO's reward models and
    users' ``apply_chat_template`` format prompts as the model saw them; a copy, the caller's is untouched."""
    import copy

    from tuneforge.data.templates import AUTO_NAMES, resolve_template

    name = recipe.data.formatting.template
    if name in AUTO_NAMES:
        return tokenizer
    template = resolve_template(tokenizer, name)
    if getattr(tokenizer, "chat_template", None) == template:
        return tokenizer
    out = copy.copy(tokenizer)
    out.chat_template = template
    return out


#: what an export lists as its own files (written last into the folder): a later export may replace those
FILES_RECORD = "export_files.json"


def _record_files(stage: Path) -> None:
    import json

    files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    (stage / FILES_RECORD).write_text(json.dumps(files + [FILES_RECORD], indent=1) + "\n", encoding="utf-8")


def refuse_foreign_files(out: Path) -> None:
    """An export replaces its folder whole: refuse, naming them, when that folder holds files no export
    wrote (evaluation results, notes a user put there), instead of deleting them. A folder from before
    exports listed their files counts as the export's own."""
    import json

    from tuneforge.errors import TuneforgeError

    record = Path(out) / FILES_RECORD
    if not record.is_file():
        return
    own = set(json.loads(record.read_text()))
    foreign = sorted(p.relative_to(out).as_posix() for p in Path(out).rglob("*") if p.is_file()
                     and p.relative_to(out).as_posix() not in own)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise TuneforgeError(f"{out} holds {len(foreign)} file(s) the export did not write ({shown}); exporting "
                             "again replaces the folder whole, so move them elsewhere (tuneforge evaluate writes "
                             "beside the export by default) or delete them, then export again")


def describe(result: ExportResult) -> str:
    """The console line after an export."""
    v = result.verification
    return f"exported model: {result.export_dir}" + (
        f" (verified: {100 * v['prediction_agreement']:.1f}% agreement, max |Δlogit| "
        f"{v['max_abs_logit_diff']:.1e})" if v else "")
