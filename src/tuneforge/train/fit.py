"""The training stage's one entry: ``fit(session, spec, data, built, ...) -> Fitted``.

Optimizer and schedule, Accelerate's wrapping (DDP, FSDP2, DeepSpeed), resume from the last
checkpoint, the evaluations during training (the task's metrics and hooks), and the loop itself
(``train.loop``), which saves the best checkpoint as it goes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tuneforge.atomic import atomic_write_json, atomic_write_text


@dataclass
class Fitted:
    model: Any  # as Accelerate prepared it (wrapped, possibly sharded)
    optimizer: Any
    state: Any  # train.checkpoint.TrainState
    total_steps: int
    seconds: float
    manifest: dict
    sharded: bool  # parameters sharded across processes (FSDP, ZeRO-3)
    ckpt_dir: Path
    metrics_file: Path


def schedule_steps(examples: int, cfg) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``examples`` training examples under ``cfg`` (TrainSection)."""
    steps_per_epoch = math.ceil(math.ceil(examples / cfg.batch_size) / cfg.gradient_accumulation_steps)
    return steps_per_epoch, cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def fit(session, spec, data, built, train_enc, val_enc, *,
        on_evaluate: Callable[[int, dict], None] | None = None) -> Fitted:
    """Train ``built.model`` on ``train_enc``, evaluating on (the first rows of) the validation split."""
    from tuneforge.train.checkpoint import TrainState, load_last
    from tuneforge.train.distributed import configure_sharding, describe, params_sharded
    from tuneforge.train.loop import LoopInputs, train_loop
    from tuneforge.train.manifest import build_manifest
    from tuneforge.train.optim import build_optimizer, build_scheduler

    recipe, accelerator, say = session.recipe, session.accelerator, session.say
    run_dir, cfg = session.run_dir, recipe.train
    steps_per_epoch, total_steps = schedule_steps(len(train_enc), cfg)
    optimizer = build_optimizer(built.model, cfg, lora_plus_ratio=recipe.lora.plus_ratio
                                if recipe.method in ("lora", "dora") else None)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    # Together: FSDP2 shards the model in place and then points the optimizer at the shards.
    configure_sharding(accelerator, built.model, cfg)
    model, optimizer = accelerator.prepare(built.model, optimizer)
    sharded = params_sharded(accelerator)
    if accelerator.num_processes > 1:
        say(describe(accelerator))
    accelerator.register_for_checkpointing(scheduler)

    manifest = build_manifest(recipe, [Path(p) for p in data.files], device_type=session.device_type,
                              world_size=accelerator.num_processes, precision=session.precision,
                              recipe_hash=session.recipe_hash, attention=built.attention)
    ckpt_dir, metrics_file = run_dir / "checkpoints", run_dir / "metrics.jsonl"
    if session.resume:
        state = load_last(accelerator, ckpt_dir, session.recipe_hash)
        if session.is_main:
            _truncate_metrics(metrics_file, state.global_step)
        say(f"resumed from step {state.global_step} (epoch {state.epoch})")
    else:
        state = TrainState(recipe_hash=session.recipe_hash)
    if session.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "data_summary.json", data.summary())
        atomic_write_json(run_dir / "manifest.json", manifest)
    say(f"training: {total_steps} steps ({steps_per_epoch}/epoch), global batch {cfg.batch_size} x "
        f"{cfg.gradient_accumulation_steps} accumulation, {accelerator.num_processes} process(es) on "
        f"{session.device_type}, precision {session.precision}")

    evaluate = _loop_evaluation(session, spec, data, built, val_enc, model, sharded)
    start = time.perf_counter()
    inputs = LoopInputs(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                        train=train_enc, pad_id=built.tokenizer.pad_token_id, cfg=cfg, seed=recipe.seed,
                        precision=session.precision, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                        evaluate=evaluate, ckpt_dir=ckpt_dir, metrics_file=metrics_file, on_evaluate=on_evaluate,
                        metric_direction=spec.selectable.get(cfg.metric_for_best))
    state = train_loop(inputs, state)
    return Fitted(model=model, optimizer=optimizer, state=state, total_steps=total_steps,
                  seconds=time.perf_counter() - start, manifest=manifest, sharded=sharded, ckpt_dir=ckpt_dir,
                  metrics_file=metrics_file)


def _loop_evaluation(session, spec, data, built, val_enc, model, sharded: bool):
    """The evaluation the loop runs every ``train.eval_every_steps``: the task's metrics on (the first
    ``train.eval_rows_during_training`` rows of) validation, generation metrics where the task generates
    during training, and the task's hook (causal LM: samples)."""
    from accelerate.utils import gather_object

    from tuneforge.train.distributed import eval_batch_size

    recipe, accelerator, cfg, tokenizer = session.recipe, session.accelerator, session.recipe.train, built.tokenizer
    rows = data.records["validation"][:cfg.eval_rows_during_training]
    encoded = val_enc if len(rows) == len(data.records["validation"]) else \
        spec.encode(rows, tokenizer, recipe, data.label_names)
    if encoded is not val_enc and spec.before_training is not None:  # still the untrained model here
        encoded = spec.before_training(accelerator.unwrap_model(model), encoded, recipe, device=accelerator.device,
                                       precision=session.precision,
                                       cache=session.run_dir / "data" / "before_training-validation-head.json")
    # Sharded parameters (FSDP): every forward is collective, so every process evaluates every row, in
    # batches of one size for all; otherwise each process takes a share of every batch.
    rank, world = (0, 1) if sharded else (accelerator.process_index, accelerator.num_processes)
    batch_size = eval_batch_size(accelerator, cfg.eval_batch_size, model, encoded)
    generate = spec.generate_metrics is not None and spec.generate_in_loop(recipe)

    def evaluate(m, step: int) -> dict:
        from tuneforge.evaluate.predict import predict

        # The unwrapped module (still autocast when mixed precision is on) avoids DDP collectives in eval
        # (a sharded one still gathers its weights: every process runs every batch).
        plain = accelerator.unwrap_model(m)
        preds = predict(plain, encoded, batch_size=batch_size, pad_id=tokenizer.pad_token_id,
                        device=accelerator.device, rank=rank, world_size=world, gather=gather_object)
        out = spec.metrics(preds, rows, encoded, data.label_names)
        out["loss"] = preds.loss
        if generate:
            out.update(_generate_metrics(spec, plain, tokenizer, data, recipe, accelerator))
        if spec.during_evaluation is not None and session.is_main:
            spec.during_evaluation(plain, tokenizer, recipe, step)
        return out

    return evaluate


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


def examples_per_s(metrics_file: Path) -> float:
    if not metrics_file.exists():
        return 0.0
    rates = [(_record(line) or {}).get("examples_per_s") for line in metrics_file.read_text().splitlines()]
    rates = [r for r in rates if r]
    return round(sum(rates) / len(rates), 2) if rates else 0.0

