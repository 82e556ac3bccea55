"""``train(recipe) -> TrainResult``: the one entry point the CLI, the tuner and the tests share.

Order matters and is chosen so that cheap checks fail first: recipe (already validated), run
directory, data (read, quarantined, split), model resolution, and only then the expensive model load
and training.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tuneforge.atomic import atomic_write_json, atomic_write_text
from tuneforge.errors import TuneforgeError
from tuneforge.recipe import Recipe, recipe_to_yaml


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

    def to_json(self) -> dict:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        out["export_dir"] = str(self.export_dir) if self.export_dir else None
        return out


def recipe_hash(recipe: Recipe) -> str:
    """Identity of a run for --resume: everything but what may change without changing the result: the halt
    point, and the memory levers (activation checkpointing and offload recompute or move the same
    values), so a run that ran out of memory resumes with them switched on."""
    data = recipe.model_dump(mode="json")
    for key in ("halt_after_steps", "gradient_checkpointing", "activation_offload"):
        data["train"].pop(key, None)
    data["export"] = None  # exporting or not does not change training
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def schedule_steps(examples: int, cfg) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``examples`` training examples under ``cfg`` (TrainSection)."""
    steps_per_epoch = math.ceil(math.ceil(examples / cfg.batch_size) / cfg.gradient_accumulation_steps)
    return steps_per_epoch, cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _quiet_libraries() -> None:
    """transformers' per-file progress bars and 'newly initialized' warnings drown our own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, is_main: bool) -> bool:
    """Check and create the run directory; returns whether training resumes from a checkpoint."""
    from tuneforge.atomic import remove_dir, remove_stale
    from tuneforge.train.checkpoint import has_checkpoint

    if is_main:
        remove_stale(run_dir)  # what a killed --overwrite left (see below)
    if resume:
        if has_checkpoint(run_dir / "checkpoints"):
            return True
        # Killed before its first checkpoint was complete (or never started): there is nothing to
        # continue, and starting over is what the user wants; drop what the killed attempt logged.
        if is_main:
            _console().print(f"--resume: {run_dir} has no complete checkpoint yet; starting the run from scratch")
            remove_dir(run_dir / "checkpoints")
            for name in ("metrics.jsonl", "samples.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
        return False
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TuneforgeError(
                f"run directory {run_dir} already exists; use --resume to continue it, --overwrite to "
                "replace it, or name=<new name> for a new run"
            )
        if is_main:
            remove_dir(run_dir)  # never half-deleted under its name: its checkpoint could look complete
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return False


def _fresh_accelerator_state() -> None:
    """train() may run many times in one process (tests, the tuner) with different precisions, and
    Accelerate keeps a process-wide singleton that refuses a change; start each single-process run from a
    clean one. Under a distributed launch the state (and its process group) must survive."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _make_accelerator(requested_precision: str):
    import torch

    from tuneforge.train.distributed import make_accelerator
    from tuneforge.train.precision import resolve_precision

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(requested_precision, device_type)
    _fresh_accelerator_state()
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # cpu=True on CPU-only machines is what lets Accelerate form a gloo process group under
    # `accelerate launch --multi_gpu --num_processes N` / torchrun (MULTI_CPU); on one process it is a no-op.
    # An FSDP launch (configs/accelerate/fsdp2.yaml) gets FSDP2, on CPUs too (train/distributed.py).
    return make_accelerator(mixed, cpu=device_type == "cpu"), precision


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False, prepared: Path | None = None,
          on_evaluate: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Fine-tune per ``recipe``; evaluate the best checkpoint; export if ``recipe.export.enabled``.

    ``prepared``: a directory of already prepared splits (``prepare_task_data``) to train on instead of
    running the data stage (the tuner prepares once for all its trials, and retrains on train+validation).
    ``on_evaluate(step, metrics)`` is called after every evaluation during training; an exception it
    raises stops the run there (the tuner's pruning).
    """
    from accelerate.utils import gather_object, set_seed

    from tuneforge.data.prepare import encode_cached, load_prepared, prepare_task_data
    from tuneforge.models.build import (build_model, check_training_options, choose_attention, end_training,
                                        load_tokenizer, prepare_for_training, resolve_recipe_model,
                                        train_run_tokenizer)
    from tuneforge.train.checkpoint import TrainState, load_last
    from tuneforge.train.distributed import (check_distributed_options, configure_sharding, describe,
                                             eval_batch_size, full_weights, load_full_weights, params_sharded)
    from tuneforge.train.loop import LoopInputs, train_loop
    from tuneforge.train.manifest import build_manifest
    from tuneforge.tasks import spec_for
    from tuneforge.train.optim import build_optimizer, build_scheduler

    _quiet_libraries()
    run_dir = recipe.run_dir
    accelerator, precision = _make_accelerator(recipe.train.precision)
    # attention kernel, checkpointing and offload vs this machine: before the run directory is touched
    check_training_options(recipe, device_type=accelerator.device.type, precision=precision)
    check_distributed_options(recipe, accelerator)  # what the loop cannot do under FSDP / DeepSpeed
    is_main = accelerator.is_main_process
    say = _console().print if is_main else (lambda *a, **k: None)
    resume = _prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, is_main=is_main)
    accelerator.wait_for_everyone()
    r_hash = recipe_hash(recipe)
    if is_main:
        atomic_write_text(run_dir / "recipe.yaml", recipe_to_yaml(recipe))

    # --- data: fails fast, before any model is loaded
    # Only the main process prepares (it writes files); the others read the same prepared splits.
    spec = spec_for(recipe)
    data_dir = Path(prepared) if prepared is not None else run_dir / "data"
    if is_main and prepared is None:
        prepare_task_data(recipe.data, recipe.seed, data_dir, spec)
    accelerator.wait_for_everyone()
    data = load_prepared(data_dir)
    labels = f", labels {data.label_names}" if data.label_names else ""
    say(f"data: {len(data.records['train']):,} train / {len(data.records['validation']):,} validation rows{labels}; "
        f"{data.rejected_rows} rejected or removed (see {data_dir / 'data_report.md'})")

    if recipe.model.architecture is not None and not isinstance(recipe.model.tokenizer, str):
        if is_main:
            train_run_tokenizer(recipe.model, data.records["train"], run_dir, recipe.data.formatting.document_separator)
        accelerator.wait_for_everyone()
    resolved = resolve_recipe_model(recipe.model, run_dir=run_dir)
    attention = choose_attention(recipe, resolved, spec, device_type=accelerator.device.type, precision=precision)
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(resolved, recipe.model.trust_remote_code)
    train_enc = encode_cached(tokenizer, data, "train", recipe, spec)
    val_enc = encode_cached(tokenizer, data, "validation", recipe, spec)
    model, params = build_model(recipe, resolved, spec, data.label_names, tokenizer.pad_token_id, tokenizer,
                                attn_implementation=attention.implementation)
    attention = attention.built(model)
    prepare_for_training(model, recipe.train)  # checkpointing, activation offload, NEFTune
    say(f"model: {resolved.name} ({resolved.source}: {resolved.path}); method {recipe.method}; {params}")
    say(str(attention))

    cfg = recipe.train
    steps_per_epoch, total_steps = schedule_steps(len(train_enc), cfg)
    optimizer = build_optimizer(model, cfg, lora_plus_ratio=recipe.lora.plus_ratio
                                if recipe.method in ("lora", "dora") else None)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    # Together: FSDP2 shards the model in place and then points the optimizer at the shards.
    configure_sharding(accelerator, model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    sharded = params_sharded(accelerator)
    if accelerator.num_processes > 1:
        say(describe(accelerator))
    accelerator.register_for_checkpointing(scheduler)

    manifest = build_manifest(recipe, [Path(p) for p in data.files], device_type=accelerator.device.type,
                              world_size=accelerator.num_processes, precision=precision, recipe_hash=r_hash,
                              attention=attention)
    ckpt_dir = run_dir / "checkpoints"
    metrics_file = run_dir / "metrics.jsonl"
    if resume:
        state = load_last(accelerator, ckpt_dir, r_hash)
        if is_main:
            _truncate_metrics(metrics_file, state.global_step)
        say(f"resumed from step {state.global_step} (epoch {state.epoch})")
    else:
        state = TrainState(recipe_hash=r_hash)
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "data_summary.json", data.summary())
        atomic_write_json(run_dir / "manifest.json", manifest)
    say(f"training: {total_steps} steps ({steps_per_epoch}/epoch), global batch {cfg.batch_size} x "
        f"{cfg.gradient_accumulation_steps} accumulation, {accelerator.num_processes} process(es) on "
        f"{accelerator.device.type}, precision {precision}")

    # Evaluations during training may use the first rows only (train.eval_rows_during_training).
    loop_rows = data.records["validation"][:cfg.eval_rows_during_training]
    loop_enc = val_enc if len(loop_rows) == len(data.records["validation"]) else \
        spec.encode(loop_rows, tokenizer, recipe, data.label_names)

    # Sharded parameters (FSDP): every forward is collective, so every process evaluates every row, in
    # batches of one size for all; otherwise each process takes a share of every batch.
    eval_rank, eval_world = (0, 1) if sharded else (accelerator.process_index, accelerator.num_processes)
    loop_batch_size = eval_batch_size(accelerator, cfg.eval_batch_size, model, loop_enc)

    def evaluate(m, step: int) -> dict:
        from tuneforge.evaluate.predict import predict

        # The unwrapped module (still autocast when mixed precision is on) avoids DDP collectives in eval
        # (a sharded one still gathers its weights: every process runs every batch).
        preds = predict(accelerator.unwrap_model(m), loop_enc, batch_size=loop_batch_size,
                        pad_id=tokenizer.pad_token_id, device=accelerator.device,
                        rank=eval_rank, world_size=eval_world, gather=gather_object)
        out = spec.metrics(preds, loop_rows, loop_enc, data.label_names)
        out["loss"] = preds.loss
        if spec.generate_metrics is not None and (recipe.task != "causal_lm"
                                                  or recipe.causal_lm.generate_during_training):
            out.update(_generate_metrics(spec, accelerator.unwrap_model(m), tokenizer, data, recipe, accelerator))
        if recipe.task == "causal_lm" and recipe.causal_lm.sample_prompts and is_main:
            _log_samples(accelerator.unwrap_model(m), tokenizer, recipe, step)
        return out

    start = time.perf_counter()
    inputs = LoopInputs(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                        train=train_enc, pad_id=tokenizer.pad_token_id, cfg=cfg, seed=recipe.seed,
                        precision=precision, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                        evaluate=evaluate, ckpt_dir=ckpt_dir, metrics_file=metrics_file, on_evaluate=on_evaluate)
    state = train_loop(inputs, state)
    seconds = time.perf_counter() - start
    examples_per_s = _examples_per_s(metrics_file)
    halted = not state.finished

    result = TrainResult(run_dir=run_dir, metrics={}, best_step=state.best_step, global_step=state.global_step,
                         total_steps=total_steps, halted=halted, train_seconds=round(seconds, 2),
                         examples_per_s=examples_per_s, params=asdict(params), history=state.history,
                         is_main=is_main)
    if halted:
        accelerator.wait_for_everyone()
        return result

    # --- final evaluation of the best checkpoint, in fp32, on one process
    if sharded:
        # Each process holds a shard of every weight: gather them all (every process joins) and evaluate
        # and export a plain copy rebuilt on the main process, the model a DDP run would have there.
        weights = full_weights(accelerator, model)
        # The sharded model and its optimizer state are done with: free them before the copy takes the device.
        inputs = scheduler = None
        model, optimizer = accelerator.free_memory(model, optimizer)
        base = None
        if is_main:
            base, _ = build_model(recipe, resolved, spec, data.label_names, tokenizer.pad_token_id, tokenizer)
            load_full_weights(base, weights)
            del weights
            base.to(accelerator.device)
    else:
        base = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if base is not None:
        end_training(base)  # NEFTune, offload, checkpointing off; default attention, as the export reloads with
    if is_main:
        result = _finish(recipe, spec, base, tokenizer, val_enc, data, ckpt_dir, metrics_file, manifest, params,
                         result, say)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _finish(recipe, spec, base, tokenizer, val_enc, data, ckpt_dir, metrics_file, manifest, params, result, say):
    from tuneforge.evaluate.plots import plot_loss_curves
    from tuneforge.evaluate.predict import predict
    from tuneforge.evaluate.report import write_eval_report
    from tuneforge.train.checkpoint import load_best

    run_dir = recipe.run_dir
    best = load_best(base, ckpt_dir)
    preds = predict(base, val_enc, batch_size=recipe.train.eval_batch_size, pad_id=tokenizer.pad_token_id,
                    precision="fp32")
    metrics = spec.metrics(preds, data.records["validation"], val_enc, data.label_names)
    metrics["loss"] = preds.loss
    if spec.generate_metrics is not None:
        metrics.update(spec.generate_metrics(base, tokenizer, data.records["validation"], recipe))
    if recipe.task == "causal_lm":
        from tuneforge.tasks.causal_lm import sample_texts

        _compare_with_base(recipe, spec, base, tokenizer, data, val_enc, metrics, say)
        if recipe.causal_lm.sample_prompts:
            metrics["samples"] = sample_texts(base, tokenizer, recipe)
    metrics["step"] = best["step"] if best else result.global_step
    write_eval_report(metrics, run_dir / "eval", title=f"{recipe.name}: validation",
                      extra={"validation": data.validation_source, "checkpoint_step": metrics["step"],
                             "model": recipe.model.name, "method": recipe.method})
    plot_loss_curves(metrics_file, run_dir / "loss.png")
    result.metrics = metrics
    say(f"validation {spec.summary(metrics)} (best step {metrics['step']}); report: {run_dir / 'eval' / 'eval.md'}")
    if recipe.export.enabled:
        from tuneforge.atomic import staged_dir
        from tuneforge.export.card import write_model_card
        from tuneforge.export.merge import verify_export, write_export

        # Written and verified in a temporary folder, then swapped in whole (a failed verification
        # too, with its report): a kill leaves the previous export or the new one, never a mix.
        export_dir = run_dir / "export"
        with staged_dir(export_dir, keep_on=(TuneforgeError,)) as stage:
            how = write_export(base, recipe.method, tokenizer, stage)
            verification = None
            if recipe.export.verify:
                verification = verify_export(stage, preds.outputs, val_enc, pad_id=tokenizer.pad_token_id,
                                             auto_class=spec.auto_class, how=how,
                                             batch_size=recipe.train.eval_batch_size, final_dir=export_dir)
            write_model_card(stage, recipe_yaml=recipe_to_yaml(recipe), recipe=recipe,
                             data_summary=data.summary(), manifest=manifest, metrics=metrics,
                             verification=verification, params=str(params), export_how=how,
                             auto_class=spec.auto_class, name=export_dir.name)
        result.export_dir, result.verification = export_dir, verification
        say(f"exported model: {export_dir}" + (
            f" (verified: {100 * verification['prediction_agreement']:.1f}% agreement, max |Δlogit| "
            f"{verification['max_abs_logit_diff']:.1e})" if verification else ""))
    atomic_write_json(run_dir / "result.json", result.to_json())
    return result


def _compare_with_base(recipe, spec, model, tokenizer, data, val_enc, metrics, say) -> None:
    """Validation loss, perplexity and generation metrics of the untuned model next to the tuned one
    (eval/base_vs_tuned.md): the evidence that tuning helped, in one table."""
    from tuneforge.evaluate.predict import predict
    from tuneforge.models.build import load_task_model
    from tuneforge.models.resolve import resolve_model
    from tuneforge.tasks.causal_lm import compare_with_base, write_comparison

    def load_base():
        resolved = resolve_model(recipe.model.name, allow_pickle=recipe.model.allow_pickle)
        return load_task_model(resolved, spec, data.label_names, trust_remote_code=recipe.model.trust_remote_code,
                               pad_token_id=tokenizer.pad_token_id)

    def score(m) -> dict:
        preds = predict(m, val_enc, batch_size=recipe.train.eval_batch_size, pad_id=tokenizer.pad_token_id,
                        precision="fp32")
        out = {**spec.metrics(preds, data.records["validation"], val_enc, data.label_names), "loss": preds.loss}
        return {**out, **spec.generate_metrics(m, tokenizer, data.records["validation"], recipe)}

    base = compare_with_base(model, recipe, load_base, score)
    if base:
        write_comparison(base, metrics, recipe.run_dir / "eval", recipe)
        metrics["base"] = base
        say("base vs tuned: " + ", ".join(f"{k} {base[k]:.4g} -> {metrics[k]:.4g}" for k in base
                                          if k in metrics and isinstance(base[k], (int, float))))


def _log_samples(model, tokenizer, recipe, step: int) -> None:
    """Sample continuations at this evaluation, appended to samples.jsonl (one record per evaluation)."""
    from tuneforge.tasks.causal_lm import sample_texts

    with (recipe.run_dir / "samples.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": step, "samples": sample_texts(model, tokenizer, recipe)}) + "\n")


def _generate_metrics(spec, model, tokenizer, data, recipe, accelerator) -> dict:
    """Generation metrics during training: computed on the main process, shared with the others so
    every process takes the same checkpoint / early-stopping decision."""
    from accelerate.utils import broadcast_object_list

    result = [spec.generate_metrics(model, tokenizer, data.records["validation"], recipe)
              if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(result)
    return result[0]


def _truncate_metrics(metrics_file: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from; the resumed run logs them again. A line
    torn by a kill mid-append is dropped too; the file is replaced atomically (a kill here keeps it)."""
    if not metrics_file.exists():
        return
    keep = [line for line in metrics_file.read_text().splitlines()
            if (record := _record(line)) is not None and record.get("step", 0) <= step]
    atomic_write_text(metrics_file, "".join(line + "\n" for line in keep))


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _examples_per_s(metrics_file: Path) -> float:
    if not metrics_file.exists():
        return 0.0
    rates = [(_record(line) or {}).get("examples_per_s") for line in metrics_file.read_text().splitlines()]
    rates = [r for r in rates if r]
    return round(sum(rates) / len(rates), 2) if rates else 0.0
