"""Training throughput on CPU: tuneforge's ``train()`` against a default ``transformers.Trainer``.

What is compared
----------------
In one process, the same model (all-MiniLM-L6-v2, tuneforge's ``minilm-l6`` alias, loaded from the same
local directory by both sides) is fine-tuned for binary sentiment twice:

1. **tuneforge**: a Recipe built in code (``method: full``, ``precision: auto``, everything else at
   tuneforge's defaults except the hyper-parameters below) run through ``tuneforge.train.run.train``.
2. **transformers.Trainer** set up the way its documentation and a user would by default:
   ``AutoTokenizer`` / ``AutoModelForSequenceClassification``, a ``datasets.Dataset`` tokenised with
   ``truncation=True, max_length=128`` and no padding, ``DataCollatorWithPadding``, and
   ``TrainingArguments`` left at their defaults apart from the hyper-parameters below (so fp32 and
   random, not length-grouped, batches).

Why the comparison is fair
--------------------------
* Same data: the first ``--n`` rows of ``data/sst2/train.tsv`` (written once to a temporary TSV that
  tuneforge reads, and read with the same TSV rules for the Trainer), evaluated on the full 872-row
  ``data/sst2/dev.tsv``. Both tokenise with the same tokenizer, ``truncation=True, max_length=128``,
  and pad each batch to its own longest row.
* Same model and head: the same checkpoint directory, a fresh 2-way classification head.
* Same optimisation: batch size, peak learning rate, epochs, seed, linear decay, no warmup, no weight
  decay, gradient clipping at 1.0 (both defaults), AdamW. The Trainer's default optimizer with
  torch >= 2.8 is ``adamw_torch_fused``, so *both* sides use fused AdamW: that is not a difference.
* Same timing rule: both timers cover the training loop *including* one evaluation of the dev set at
  the end of every epoch (tuneforge always evaluates at epoch end; the Trainer gets
  ``eval_strategy="epoch"``). Samples/s = ``n * epochs / loop seconds`` on both sides. Model loading
  and tokenisation are outside that timer on both sides and reported separately as end-to-end time.
* Same threads: ``torch.set_num_threads(os.cpu_count())`` before each side; the count in force after
  each side is recorded to catch a library changing it.
* Accelerate's process-wide state (which remembers the mixed-precision mode tuneforge chose) is reset
  between the two runs, so the Trainer really runs in fp32 as it would in a fresh process; the
  Trainer's accelerator mode is recorded in the results.

What differs is exactly tuneforge's defaults: bf16 autocast where the CPU has native bf16
(AVX512-BF16/AMX; otherwise it stays fp32, see "tuneforge precision" in the output), length-grouped
shuffled batches (less padding), and length-sorted evaluation batches. tuneforge's loop also *pays*
for something the Trainer here does not: it writes a "best" and a "last" checkpoint after each
evaluation (the Trainer runs with ``save_strategy="no"``), so the comparison, if anything, slightly
favours the Trainer.

Accuracy: tuneforge reports the dev accuracy of its best checkpoint, re-evaluated in fp32; the Trainer's
comes from ``trainer.evaluate()`` on the final model. With one epoch these are the same checkpoint.

Run from the repository root (see bench/README.md); keep ``--n`` small for a smoke test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_TSV = REPO / "data" / "sst2" / "train.tsv"
DEV_TSV = REPO / "data" / "sst2" / "dev.tsv"
MAX_LENGTH = 128
EVAL_BATCH_SIZE = 64


# --------------------------------------------------------------------------------------------- data
def read_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Header + rows of a ``sentence\\tlabel`` file; QUOTE_NONE like tuneforge's TSV reader."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        rows = []
        for row in reader:
            if limit is not None and len(rows) >= limit:
                break
            rows.append(row)
    return header, rows


def write_train_slice(n: int, dest: Path) -> Path:
    header, rows = read_tsv(TRAIN_TSV, limit=n)
    if len(rows) < n:
        raise SystemExit(f"--n {n}: {TRAIN_TSV} has only {len(rows)} rows")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return dest


def load_rows(path: Path) -> tuple[list[str], list[int]]:
    header, rows = read_tsv(path)
    ti, li = header.index("sentence"), header.index("label")
    return [r[ti] for r in rows], [int(r[li]) for r in rows]


# ------------------------------------------------------------------------------------------ helpers
def set_threads() -> int:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()


def reset_accelerate_state() -> None:
    """tuneforge's Accelerator(mixed_precision=...) lives in a process-wide singleton; forget it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def cpu_model() -> str:
    from tuneforge.train.manifest import cpu_model as _cpu_model

    return _cpu_model()


def machine_info() -> dict:
    import torch
    import transformers

    try:
        from tuneforge.models.precision import cpu_has_native_bf16

        native_bf16 = cpu_has_native_bf16()
    except Exception:  # noqa: BLE001 - informational only
        native_bf16 = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "cpu_native_bf16": native_bf16}


# ---------------------------------------------------------------------------------------- tuneforge
def run_tuneforge(args, workdir: Path, train_slice: Path, model_path: Path) -> dict:
    from tuneforge.recipe import Recipe
    from tuneforge.train.run import train

    reset_accelerate_state()
    threads = set_threads()
    recipe = Recipe.model_validate({
        "name": "bench-tuneforge", "seed": args.seed, "output_dir": str(workdir),
        "model": {"name": "minilm-l6", "max_length": MAX_LENGTH},
        "data": {"train_file": str(train_slice), "validation_file": str(DEV_TSV), "text_column": "sentence",
                 "label_column": "label", "label_names": ["negative", "positive"]},
        "method": "full",
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                  "eval_batch_size": EVAL_BATCH_SIZE, "precision": "auto", "warmup_ratio": 0.0,
                  "weight_decay": 0.0, "scheduler": "linear", "log_every_steps": 10},
        "export": {"enabled": False},
    })
    t0 = time.perf_counter()
    result = train(recipe, overwrite=True)
    total = time.perf_counter() - t0
    import torch

    threads_after = torch.get_num_threads()
    manifest_file = recipe.run_dir / "manifest.json"
    precision = json.loads(manifest_file.read_text()).get("precision") if manifest_file.exists() else None
    summary_file = recipe.run_dir / "data_summary.json"
    data_summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    loop_s = float(result.train_seconds)
    return {
        "side": "tuneforge", "precision": precision, "threads": threads, "threads_after": threads_after,
        "train_seconds": loop_s, "samples_per_s": args.n * args.epochs / loop_s,
        "end_to_end_seconds": total, "accuracy": float(result.metrics["accuracy"]),
        "steps": result.global_step, "best_step": result.best_step,
        # tuneforge's own meter: training steps only, evaluation and checkpointing excluded.
        "logged_train_only_examples_per_s": result.examples_per_s,
        "data_summary": data_summary, "model_path": str(model_path),
    }


# ------------------------------------------------------------------------------------------ Trainer
def run_trainer(args, workdir: Path, model_path: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    reset_accelerate_state()
    threads = set_threads()
    t0 = time.perf_counter()
    header, rows = read_tsv(TRAIN_TSV, limit=args.n)
    ti, li = header.index("sentence"), header.index("label")
    train_ds = Dataset.from_dict({"sentence": [r[ti] for r in rows], "label": [int(r[li]) for r in rows]})
    dev_texts, dev_labels = load_rows(DEV_TSV)
    dev_ds = Dataset.from_dict({"sentence": dev_texts, "label": dev_labels})

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)

    def tok(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=MAX_LENGTH)

    train_ds = train_ds.map(tok, batched=True, remove_columns=["sentence"])
    dev_ds = dev_ds.map(tok, batched=True, remove_columns=["sentence"])

    def compute_metrics(pred):
        logits, labels = pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    targs = TrainingArguments(
        output_dir=str(workdir / "bench-trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=EVAL_BATCH_SIZE, learning_rate=args.lr, num_train_epochs=args.epochs,
        weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear", eval_strategy="epoch", save_strategy="no",
        report_to=[], seed=args.seed, logging_steps=50, use_cpu=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=dev_ds,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics)
    t1 = time.perf_counter()
    out = trainer.train()
    loop_s = time.perf_counter() - t1
    threads_after = torch.get_num_threads()
    metrics = trainer.evaluate()
    total = time.perf_counter() - t0
    return {
        "side": "trainer", "precision": "bf16" if targs.bf16 else ("fp16" if targs.fp16 else "fp32"),
        "accelerate_mixed_precision": str(trainer.accelerator.mixed_precision), "optim": str(targs.optim),
        "train_sampling_strategy": getattr(targs, "train_sampling_strategy", None),
        "threads": threads, "threads_after": threads_after,
        "train_seconds": loop_s, "samples_per_s": args.n * args.epochs / loop_s, "end_to_end_seconds": total,
        "accuracy": float(metrics["eval_accuracy"]), "steps": int(out.global_step),
        "trainer_train_runtime": out.metrics.get("train_runtime"), "model_path": str(model_path),
    }


# ------------------------------------------------------------------------------------------- report
def table(results: list[dict]) -> str:
    lines = ["| side | precision | train samples/s | train s | end-to-end s | dev accuracy |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['side']} | {r['precision']} | {r['samples_per_s']:.1f} | {r['train_seconds']:.1f} | "
                     f"{r['end_to_end_seconds']:.1f} | {r['accuracy']:.4f} |")
    return "\n".join(lines)


def comparison(results: list[dict]) -> dict | None:
    by = {r["side"]: r for r in results}
    if "tuneforge" not in by or "trainer" not in by:
        return None
    tf, tr = by["tuneforge"], by["trainer"]
    return {"speedup": tf["samples_per_s"] / tr["samples_per_s"], "accuracy_diff": tf["accuracy"] - tr["accuracy"]}


def notes(report: dict) -> list[str]:
    m, cfg = report["machine"], report["config"]
    out = []
    cmp = report["comparison"]
    if cmp:
        out.append(f"tuneforge / Trainer samples/s: {cmp['speedup']:.2f}x; "
                   f"accuracy difference (tuneforge - Trainer): {100 * cmp['accuracy_diff']:+.2f} points")
    out.append(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, transformers {m['transformers']}, "
               f"CPU native bf16: {m['cpu_native_bf16']}; tuneforge precision: {report.get('tuneforge_precision')}")
    out.append(f"config: n={cfg['n']} train rows, {cfg['dev_rows']} dev rows, epochs={cfg['epochs']}, "
               f"batch size={cfg['batch_size']}, lr={cfg['lr']}, seed={cfg['seed']}, max_length={MAX_LENGTH}, "
               f"threads={cfg['threads']}")
    return out


def render(report: dict) -> str:
    return "\n".join([table(report["results"]), "", *notes(report)])


def write_docs(report: dict) -> None:
    from _docs import write_section

    write_section("train_throughput", [
        "## Training throughput: tuneforge vs transformers.Trainer (CPU)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch {report['machine']['torch']}, "
        f"transformers {report['machine']['transformers']}",
        "",
        "Same model (minilm-l6), same SST-2 rows, batch size, learning rate, epochs, seed and dev set on both "
        "sides; both timers include one dev evaluation per epoch. See the docstring of "
        "`bench/train_throughput.py` for what differs. Raw numbers: `docs/bench/train_throughput.json`.",
        "",
        table(report["results"]),
        "",
        *(f"- {line}" for line in notes(report)),
    ], report)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000, help="training rows: the first N of data/sst2/train.tsv")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temp dir, removed after)")
    p.add_argument("--only", choices=["both", "tuneforge", "trainer"], default="both")
    p.add_argument("--write-docs", action="store_true",
                   help="write the results into docs/benchmarks.md and docs/bench/train_throughput.json")
    args = p.parse_args(argv)
    if args.n < 1 or args.epochs < 1 or args.batch_size < 1:
        p.error("--n, --epochs and --batch-size must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from tuneforge.models.resolve import resolve_model

    model_path = Path(resolve_model("minilm-l6").path)
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tf-bench-")) if own_tmp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python bench/train_throughput.py" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:]))
    results = []
    try:
        train_slice = write_train_slice(args.n, workdir / f"sst2_train_first{args.n}.tsv")
        if args.only in ("both", "tuneforge"):
            results.append(run_tuneforge(args, workdir, train_slice, model_path))
        if args.only in ("both", "trainer"):
            results.append(run_trainer(args, workdir, model_path))
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    tf = next((r for r in results if r["side"] == "tuneforge"), None)
    report = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": {"n": args.n, "dev_rows": len(load_rows(DEV_TSV)[0]), "epochs": args.epochs,
                   "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "max_length": MAX_LENGTH,
                   "eval_batch_size": EVAL_BATCH_SIZE, "threads": os.cpu_count()},
        "tuneforge_precision": tf["precision"] if tf else None,
        "results": results,
        "comparison": comparison(results),
    }
    print()
    print(render(report))
    for r in results:
        if r["threads_after"] != r["threads"]:
            print(f"warning: {r['side']}: torch threads changed from {r['threads']} to {r['threads_after']} "
                  "during training")
    if args.write_docs:
        write_docs(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
