"""``train(recipe) -> TrainResult``: the one entry point the CLI, the tuner, stages and the tests share.

A short chain of the stages' own entries, in an order chosen so that cheap checks fail first:
the session (recipe checks against this machine, run directory), the data stage (read, quarantine,
split), the models stage (resolve, build, method), the training stage (``train.fit``), then the final
evaluation of the best checkpoint (``evaluate.stage``: validation, and the test split when there is
one), and the export (``export.stage``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tuneforge.atomic import atomic_write_json
from tuneforge.recipe import Recipe


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict  # validation metrics of the best checkpoint, fp32
    best_step: int | None
    global_step: int
    total_steps: int
    halted: bool  # stopped by train.halt_after_steps; --resume continues
    train_seconds: float
    examples_per_s: float
    params: dict
    export_dir: Path | None = None
    verification: dict | None = None
    history: list[dict] = field(default_factory=list)
    is_main: bool = True  # False on the other processes of a distributed run (they report nothing)
    test_metrics: dict | None = None  # the test split's, when the data has one (never used for selection)

    def to_json(self) -> dict:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        out["export_dir"] = str(self.export_dir) if self.export_dir else None
        return out


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False, prepared: Path | None = None,
          on_evaluate: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Fine-tune per ``recipe``; evaluate the best checkpoint; export if ``recipe.export.enabled``.

    ``prepared``: a directory of already prepared splits (``prepare_task_data``) to train on instead of
    running the data stage (the tuner prepares once for all its trials, and retrains on train+validation).
    ``on_evaluate(step, metrics)`` is called after every evaluation during training; an exception it
    raises stops the run there (the tuner's pruning).
    """
    from tuneforge.tasks import spec_for
    from tuneforge.train.session import library_log, quiet_libraries, start

    quiet_libraries()
    session = start(recipe, resume=resume, overwrite=overwrite)
    with library_log(session.run_dir if session.is_main else None):
        return _run(session, spec_for(recipe), prepared, on_evaluate)


def _run(session, spec, prepared: Path | None, on_evaluate) -> TrainResult:
    """``train``'s stages after the session: data, model, fit, final evaluation and export."""
    from accelerate.utils import set_seed

    from tuneforge.data.prepare import encode_cached
    from tuneforge.models.build import build
    from tuneforge.train.fit import examples_per_s, fit

    recipe = session.recipe
    data = _prepare_data(session, spec, prepared)
    set_seed(recipe.seed)
    built = build(recipe, spec, data.label_names, run_dir=session.run_dir, device_type=session.device_type,
                  precision=session.precision)
    session.say(f"model: {built.resolved.name} ({built.resolved.source}: {built.resolved.path}); "
                f"method {recipe.method}; {built.params}")
    session.say(str(built.attention))
    train_enc = encode_cached(built.tokenizer, data, "train", recipe, spec)
    val_enc = encode_cached(built.tokenizer, data, "validation", recipe, spec)
    if spec.before_training is not None:
        train_enc, val_enc = (_before_training(session, spec, built, enc, split)
                              for enc, split in ((train_enc, "train"), (val_enc, "validation")))
    fitted = fit(session, spec, data, built, train_enc, val_enc, on_evaluate=on_evaluate)
    state = fitted.state
    result = TrainResult(run_dir=session.run_dir, metrics={}, best_step=state.best_step,
                         global_step=state.global_step, total_steps=fitted.total_steps, halted=not state.finished,
                         train_seconds=round(fitted.seconds, 2), examples_per_s=examples_per_s(fitted.metrics_file),
                         params=asdict(built.params), history=state.history, is_main=session.is_main)
    if result.halted:
        session.accelerator.wait_for_everyone()
        return result
    model = _final_model(session, spec, data, built, fitted)
    if session.is_main:
        result = _finish(session, spec, data, built, model, val_enc, fitted, result)
    session.accelerator.wait_for_everyone()
    session.accelerator.end_training()
    return result


def _before_training(session, spec, built, encoded, split: str):
    """The task's pass over a split with the untrained model (preference: reference log-probs), kept in
    the run's data folder so that ``--resume`` (whose model is no longer untrained) reads it back."""
    device = session.accelerator.device
    built.model.to(device)
    return spec.before_training(built.model, encoded, session.recipe, device=device, precision=session.precision,
                                cache=session.run_dir / "data" / f"before_training-{split}.json")


def _prepare_data(session, spec, prepared: Path | None):
    """The data stage, on the main process (it writes files); the others read the same prepared splits.
    A tokenizer the run trains itself is trained here, on the training split."""
    from tuneforge.data.prepare import load_prepared, prepare_task_data
    from tuneforge.models.build import train_run_tokenizer

    recipe, accelerator = session.recipe, session.accelerator
    data_dir = Path(prepared) if prepared is not None else session.run_dir / "data"
    if session.is_main and prepared is None:
        prepare_task_data(recipe.data, recipe.seed, data_dir, spec)
    accelerator.wait_for_everyone()
    data = load_prepared(data_dir)
    labels = f", labels {data.label_names}" if data.label_names else ""
    test = f" / {len(data.records['test']):,} test" if data.records["test"] else ""
    session.say(f"data: {len(data.records['train']):,} train / {len(data.records['validation']):,} validation{test} "
                f"rows{labels}; {data.rejected_rows} rejected or removed (see {data_dir / 'data_report.md'})")
    if recipe.model.architecture is not None and not isinstance(recipe.model.tokenizer, str):
        if session.is_main:
            train_run_tokenizer(recipe.model, data.records["train"], session.run_dir,
                                recipe.data.formatting.document_separator)
        accelerator.wait_for_everyone()
    return data


def _final_model(session, spec, data, built, fitted):
    """The trained model as one plain module on the main process (None on the others), training levers off."""
    from tuneforge.models.build import build_model, end_training
    from tuneforge.train.distributed import full_weights, load_full_weights

    accelerator = session.accelerator
    if fitted.sharded:
        # Each process holds a shard of every weight: gather them all (every process joins) and evaluate
        # and export a plain copy rebuilt on the main process, the model a DDP run would have there.
        weights = full_weights(accelerator, fitted.model)
        # The sharded model and its optimizer state are done with: free them before the copy takes the device.
        fitted.model, fitted.optimizer = accelerator.free_memory(fitted.model, fitted.optimizer)
        base = None
        if session.is_main:
            base, _ = build_model(session.recipe, built.resolved, spec, data.label_names,
                                  built.tokenizer.pad_token_id, built.tokenizer)
            load_full_weights(base, weights)
            del weights
            base.to(accelerator.device)
    else:
        base = accelerator.unwrap_model(fitted.model, keep_fp32_wrapper=False)
    if base is not None:
        end_training(base)  # NEFTune, offload, checkpointing off; default attention, as the export reloads with
    return base


def _finish(session, spec, data, built, model, val_enc, fitted, result: TrainResult) -> TrainResult:
    """Main process: the best checkpoint scored on validation (and test), the loss plot, the export,
    result.json."""
    from tuneforge.evaluate.plots import plot_loss_curves, plot_metric_curves
    from tuneforge.evaluate.stage import Split, evaluate
    from tuneforge.models.best import load_best

    recipe, run_dir, say = session.recipe, session.run_dir, session.say
    best = load_best(model, fitted.ckpt_dir)
    step = best["step"] if best else result.global_step
    common = dict(recipe=recipe, tokenizer=built.tokenizer, batch_size=recipe.train.eval_batch_size, say=say)
    extra = {"checkpoint_step": step, "model": recipe.model.name, "method": recipe.method}
    validation = Split("validation", data.records["validation"], val_enc, data.label_names, data.validation_source)
    report = evaluate(model, validation, spec, out_dir=run_dir / "eval", title=f"{recipe.name}: validation",
                      extra={"validation": data.validation_source, **extra}, fields={"step": step},
                      load_base=lambda: _load_base(recipe, spec, data, built), **common)
    result.metrics = report.metrics
    say(f"validation {spec.summary(report.metrics)} (best step {step}, {len(validation.records):,} rows of "
        f"{data.validation_source}); report: {report.markdown}")
    if data.records["test"]:
        result.test_metrics = _score_test(model, spec, data, built, recipe, extra, step, common)
    plot_loss_curves(fitted.metrics_file, run_dir / "loss.png")
    plot_metric_curves(fitted.metrics_file, run_dir / "metrics.png", selected=recipe.train.metric_for_best)
    if recipe.export.enabled:
        from tuneforge.export.stage import describe, export_model

        exported = export_model(model, built.tokenizer, recipe, spec, out=run_dir / "export",
                                reference_outputs=report.predictions.outputs, encoded=val_enc,
                                data_summary=data.summary(), manifest=fitted.manifest, metrics=report.metrics,
                                params=built.params, verify=recipe.export.verify)
        result.export_dir, result.verification = exported.export_dir, exported.verification
        say(describe(exported))
    atomic_write_json(run_dir / "result.json", result.to_json())
    return result


def _score_test(model, spec, data, built, recipe, extra: dict, step: int, common: dict) -> dict:
    """The held-out test split, scored once with the checkpoint validation selected (eval/test/)."""
    from tuneforge.data.prepare import encode_cached
    from tuneforge.evaluate.stage import Split, evaluate

    source = _test_source(recipe)
    test = Split("test", data.records["test"], encode_cached(built.tokenizer, data, "test", recipe, spec),
                 data.label_names, source)
    report = evaluate(model, test, spec, out_dir=recipe.run_dir / "eval" / "test", title=f"{recipe.name}: test",
                      extra={"test": source, **extra}, fields={"step": step}, hooks=False, **common)
    common["say"](f"test {spec.summary(report.metrics)} ({len(test.records):,} held-out rows of {source}; not "
                  f"used for selection); report: {report.markdown}")
    return report.metrics


def _test_source(recipe) -> str:
    given = recipe.data.test_file
    if given is not None:
        return str(getattr(given, "path", given))
    return f"{recipe.data.split.test_fraction:g} of the training rows (seed {recipe.seed})"


def _load_base(recipe, spec, data, built):
    """The pretrained model again, untuned (a causal LM's base-vs-tuned comparison, for methods that
    changed its weights)."""
    from tuneforge.models.build import load_task_model
    from tuneforge.models.resolve import resolve_model

    resolved = resolve_model(recipe.model.name, allow_pickle=recipe.model.allow_pickle)
    return load_task_model(resolved, spec, data.label_names, trust_remote_code=recipe.model.trust_remote_code,
                           pad_token_id=built.tokenizer.pad_token_id)
