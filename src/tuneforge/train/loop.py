"""The training loop: one explicit function, no Trainer subclass.

Accelerate does the plumbing (device placement, DDP wrapping and gradient sync, mixed precision and
the fp16 loss scaler, checkpoint state); everything a reader needs to understand *what* is trained
on *which* examples in *what* order is in this file.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tuneforge.data.batching import Encoded, collate, length_grouped_batches, shard
from tuneforge.models.best import save_best
from tuneforge.tasks.losses import forward_loss_sum
from tuneforge.tasks.metrics import metric_is_better
from tuneforge.train.checkpoint import TrainState, save_last
from tuneforge.train.distributed import trainable_weights
from tuneforge.train.flops import efficiency_for_run, tokens_per_example
from tuneforge.train.progress import TrainProgress
from tuneforge.train.steps import Throughput, accumulation_windows, check_finite, step_loss_scale


@dataclass
class LoopInputs:
    accelerator: object
    model: object  # prepared by the accelerator
    optimizer: object  # prepared by the accelerator
    scheduler: object
    train: Encoded
    pad_id: int
    cfg: object  # TrainSection
    seed: int
    precision: str
    total_steps: int
    steps_per_epoch: int
    evaluate: Callable[[object, int], dict]  # (model, step) -> metrics (incl. "loss"), same on every process
    ckpt_dir: Path
    metrics_file: Path
    on_evaluate: Callable[[int, dict], None] | None = None  # (step, metrics) after each evaluation; may raise
    metric_direction: str | None = None  # "max"/"min" for cfg.metric_for_best (the task's; None: the metric table's)


def _epoch_batches(inp: LoopInputs, epoch: int, world: int) -> list[list[int]]:
    batches = length_grouped_batches(inp.train.lengths, inp.cfg.batch_size, seed=inp.seed, epoch=epoch,
                                     group_by_length=inp.cfg.group_by_length)
    # Every process must run forward/backward in every micro-step (DDP collectives), so a final global
    # batch smaller than the number of processes is dropped.
    return [b for b in batches if len(b) >= world]


def _log(inp: LoopInputs, record: dict) -> None:
    if inp.accelerator.is_main_process:
        with inp.metrics_file.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def train_loop(inp: LoopInputs, state: TrainState) -> TrainState:
    """Run optimizer steps until ``total_steps``, early stopping, or ``halt_after_steps``; return the state."""
    acc, model, cfg = inp.accelerator, inp.model, inp.cfg
    rank, world = acc.process_index, acc.num_processes
    lengths = tokens_per_example(inp.train)  # real tokens the model processes (no padding)
    weights = inp.train.weights  # loss denominator per example: 1, or its number of trained tokens
    kind = inp.train.label_kind
    eval_every = cfg.eval_every_steps or inp.steps_per_epoch
    meter = Throughput()
    running = []  # step losses since the last log record
    running_tokens = 0  # real (non-pad) tokens trained on since the last log record
    model.train()
    progress = TrainProgress(inp.total_steps, state.global_step, enabled=acc.is_main_process,
                             log_every=cfg.log_every_steps)
    # Model FLOPs per token (train/flops.py) once; the matmul peak from the cache, never measured here.
    efficiency, note = efficiency_for_run(acc.unwrap_model(model), inp.train, acc.device.type, inp.precision, world)
    if note:
        progress.message(note)
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes is not None else None
    with progress:
        while state.global_step < inp.total_steps and not state.finished:
            batches = _epoch_batches(inp, state.epoch, world)
            # Resuming mid-epoch: the epoch's order is a pure function of (seed, epoch), so skipping the
            # consumed batches continues exactly where the interrupted run was.
            todo = batches[state.batches_done_in_epoch:]
            for window in accumulation_windows(todo, cfg.gradient_accumulation_steps):
                scale = step_loss_scale(sum(weights[j] for b in window for j in b), world)
                local_loss = 0.0
                for i, global_batch in enumerate(window):
                    batch = collate(inp.train, shard(global_batch, rank, world), inp.pad_id, epoch=state.epoch)
                    batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
                    # Only the last micro-batch of a step all-reduces gradients; the others accumulate locally.
                    sync = contextlib.nullcontext() if i == len(window) - 1 else acc.no_sync(model)
                    with sync:
                        loss_sum, _ = forward_loss_sum(model, batch, kind, objective=inp.train.objective)
                        loss = loss_sum * scale
                        acc.backward(loss)
                    local_loss += loss.detach()
                step_loss = acc.reduce(local_loss, "mean").item() if world > 1 else float(local_loss)
                lr = inp.scheduler.get_last_lr()[0]
                check_finite(step_loss, state.global_step + 1, lr, inp.precision)
                if cfg.max_grad_norm is not None:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                inp.optimizer.step()
                inp.scheduler.step()
                inp.optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                state.batches_done_in_epoch += len(window)
                tokens = sum(lengths[j] for b in window for j in b)
                meter.update(tokens, sum(len(b) for b in window))
                running.append(step_loss)
                running_tokens += tokens
                tok_s, ex_s = meter.rates()
                tflops, mfu = efficiency.rates(tok_s)
                progress.update(state.global_step, step_loss, lr, tok_s, mfu=mfu, tflops=tflops)
                if state.global_step % cfg.log_every_steps == 0:
                    _log(inp, {"kind": "train", "step": state.global_step,
                               "epoch": round(state.epoch + state.batches_done_in_epoch / max(len(batches), 1), 4),
                               "loss": sum(running) / len(running), "lr": lr,
                               "tokens": running_tokens, "tokens_per_s": round(tok_s, 1),
                               "examples_per_s": round(ex_s, 2),
                               "tflops": float(f"{tflops:.4g}"),
                               **({"mfu": round(mfu, 4)} if mfu is not None else {}),
                               # what the objective measured in these steps (GRPO: rewards, KL, lengths)
                               **_objective_stats(inp.train.objective)})
                    running.clear()
                    running_tokens = 0
                out_of_time = deadline is not None and _past(deadline, acc)
                if out_of_time:
                    progress.message(f"time budget of {cfg.max_minutes:g} min (train.max_minutes) used up at step "
                                     f"{state.global_step} of {inp.total_steps}")
                last_step = state.global_step >= inp.total_steps or out_of_time
                if state.global_step % eval_every == 0 or last_step:
                    _evaluate_and_checkpoint(inp, state, progress)
                    meter.reset()
                    meter.update(0, 0)
                if last_step or state.finished:
                    break
                if cfg.halt_after_steps is not None and state.global_step >= cfg.halt_after_steps:
                    save_last(acc, state, inp.ckpt_dir)
                    progress.message(f"halted after step {state.global_step} (train.halt_after_steps); "
                                     "continue with --resume")
                    return state
            else:
                # epoch exhausted: the next one starts from its first batch
                state.epoch += 1
                state.batches_done_in_epoch = 0
                continue
            break
    state.finished = True
    return state


def _objective_stats(objective) -> dict:
    pop = getattr(objective, "pop_stats", None)
    return pop() if pop is not None else {}


def _past(deadline: float, acc) -> bool:
    """Whether the time budget is spent; with several processes, once any says so, all stop together
    (a process that stopped alone would leave the others waiting in a collective)."""
    late = time.monotonic() > deadline
    if acc.num_processes == 1:
        return late
    import torch

    return bool(acc.reduce(torch.tensor(float(late), device=acc.device), "max").item())


def _evaluate_and_checkpoint(inp: LoopInputs, state: TrainState, progress: TrainProgress) -> None:
    acc, cfg = inp.accelerator, inp.cfg
    metrics = inp.evaluate(inp.model, state.global_step)
    record = {"kind": "eval", "step": state.global_step, **{k: v for k, v in metrics.items()
                                                            if isinstance(v, (int, float))}}
    _log(inp, record)
    state.history.append(record)
    if inp.on_evaluate is not None:
        inp.on_evaluate(state.global_step, metrics)
    value = metrics[cfg.metric_for_best]
    if metric_is_better(cfg.metric_for_best, value, state.best_metric, direction=inp.metric_direction):
        state.best_metric, state.best_step = value, state.global_step
        state.evals_without_improvement = 0
        # every process joins: with sharded parameters (FSDP) gathering them is a collective
        weights = trainable_weights(acc, inp.model)
        if acc.is_main_process:
            save_best(weights, inp.ckpt_dir, state.global_step, record)
        note = " (best)"
    else:
        state.evals_without_improvement += 1
        note = ""
    progress.message(f"step {state.global_step}: eval loss {metrics['loss']:.4f}, "
                     f"{cfg.metric_for_best} {value:.4f}{note}")
    if cfg.early_stopping_patience and state.evals_without_improvement >= cfg.early_stopping_patience:
        progress.message(f"early stopping: no {cfg.metric_for_best} improvement in "
                         f"{cfg.early_stopping_patience} evaluations")
        state.finished = True
    save_last(acc, state, inp.ckpt_dir)
