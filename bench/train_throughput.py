"""Training throughput and accuracy on CPU: tuneforge's ``train()`` against ``transformers.Trainer``,
over several seeds, each run in a fresh process.

What is compared
----------------
The same model (all-MiniLM-L6-v2, tuneforge's ``minilm-l6`` alias, loaded from the same local
directory by every side) is fine-tuned for binary sentiment by each *side*:

``tuneforge``
    A Recipe built in code (``method: full``, ``precision: auto``) run through
    ``tuneforge.train.run.train``, with the data stage's row filters (cleaning, deduplication,
    decontamination) off so that it trains on exactly the rows the Trainer gets.
``tuneforge-fp32``
    The same with ``precision: fp32``: isolates what bf16 autocast costs or gains.
``tuneforge-defaults``
    tuneforge with its data stage at the defaults: exact and near deduplication and decontamination
    drop rows, so it trains on *fewer* rows (the count is in the results; samples/s counts the rows it
    really trained on). This is what a user gets; it is not a like-for-like row set.
``trainer``
    ``transformers.Trainer`` as its documentation sets it up: ``AutoTokenizer`` /
    ``AutoModelForSequenceClassification``, a ``datasets.Dataset`` tokenised with
    ``truncation=True, max_length=128`` and no padding, ``DataCollatorWithPadding``, and
    ``TrainingArguments`` at their defaults apart from the hyper-parameters below (fp32, random batches).
``trainer-grouped``
    The one switch a Trainer user would try for speed: ``train_sampling_strategy="group_by_length"``.
``trainer-grouped-bf16``
    And what a competent user adds on a CPU with native bf16 (AVX512-BF16 or AMX): ``bf16=True``.

Why the comparison is fair
--------------------------
* Same data: the first ``--n`` rows of ``data/sst2/train.tsv``, evaluated on the full 872-row
  ``data/sst2/dev.tsv``. Every side tokenises with the same tokenizer, ``truncation=True,
  max_length=128``, and pads each batch to its own longest row.
* Same model and head: the same checkpoint directory, a fresh 2-way classification head.
* Same optimisation: batch size, peak learning rate, epochs, seed, linear decay, no warmup, no weight
  decay, gradient clipping at 1.0 (both defaults), fused AdamW (the Trainer's default with torch >= 2.8).
* Same timing rule: every timer covers the training loop *including* one evaluation of the dev set at
  the end of every epoch (tuneforge always evaluates at epoch end; the Trainer gets
  ``eval_strategy="epoch"``). Samples/s = rows trained * epochs / loop seconds. Model loading and
  tokenisation are outside the timer and reported as end-to-end time.
* Same threads: ``torch.set_num_threads(os.cpu_count())``; the count after training is recorded.
* One fresh process per (seed, side), sides interleaved within each seed, so no side inherits another's
  allocator or Accelerate state and slow drift of the machine spreads over all sides.

tuneforge's loop *pays* for something the Trainer sides do not: it writes a "best" and a "last"
checkpoint after each evaluation (the Trainer runs with ``save_strategy="no"``).

Accuracy: tuneforge reports the dev accuracy of its best checkpoint, re-evaluated in fp32; the
Trainer's comes from ``trainer.evaluate()`` on the final model (bf16 autocast on the bf16 side). With one
epoch these are the same checkpoint. Accuracy differences are paired by seed: the report gives their
mean, standard deviation and range over the seeds.

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
import statistics
import subprocess
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
TUNEFORGE_SIDES = ("tuneforge", "tuneforge-fp32", "tuneforge-defaults")
TRAINER_SIDES = ("trainer", "trainer-grouped", "trainer-grouped-bf16")
SIDES = TUNEFORGE_SIDES + TRAINER_SIDES
DEFAULT_SIDES = ("tuneforge", "tuneforge-fp32", "tuneforge-defaults", "trainer", "trainer-grouped",
                 "trainer-grouped-bf16")


def run_tuneforge(args, side: str, seed: int, workdir: Path, train_slice: Path, model_path: Path) -> dict:
    from tuneforge.recipe import Recipe
    from tuneforge.train.run import train

    threads = set_threads()
    data = {"train_file": str(train_slice), "validation_file": str(DEV_TSV), "text_column": "sentence",
            "label_column": "label", "label_names": ["negative", "positive"]}
    if side != "tuneforge-defaults":
        # the same rows as the Trainer: no row filters (cleaning rules that drop rows, dedup, decontamination)
        data.update({"dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False},
                     "clean": {"min_chars": None}})
    recipe = Recipe.model_validate({
        "name": f"bench-{side}", "seed": seed, "output_dir": str(workdir),
        "model": {"name": "minilm-l6", "max_length": MAX_LENGTH},
        "data": data,
        "method": "full",
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                  "eval_batch_size": EVAL_BATCH_SIZE, "precision": "fp32" if side == "tuneforge-fp32" else "auto",
                  "warmup_ratio": 0.0, "weight_decay": 0.0, "scheduler": "linear", "log_every_steps": 10},
        "export": {"enabled": False},
    })
    t0 = time.perf_counter()
    result = train(recipe, overwrite=True)
    total = time.perf_counter() - t0
    import torch

    manifest_file = recipe.run_dir / "manifest.json"
    precision = json.loads(manifest_file.read_text()).get("precision") if manifest_file.exists() else None
    summary_file = recipe.run_dir / "data_summary.json"
    data_summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    rows = int(data_summary.get("train_rows", args.n))
    loop_s = float(result.train_seconds)
    return {
        "side": side, "seed": seed, "precision": precision, "threads": threads,
        "threads_after": torch.get_num_threads(), "train_rows": rows,
        "train_seconds": loop_s, "samples_per_s": rows * args.epochs / loop_s,
        "end_to_end_seconds": total, "accuracy": float(result.metrics["accuracy"]),
        "steps": result.global_step, "best_step": result.best_step,
        # tuneforge's own meter: training steps only, evaluation and checkpointing excluded.
        "logged_train_only_examples_per_s": result.examples_per_s,
    }


# ------------------------------------------------------------------------------------------ Trainer
def run_trainer(args, side: str, seed: int, workdir: Path, model_path: Path) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

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

    extra = {}
    if side in ("trainer-grouped", "trainer-grouped-bf16"):
        extra["train_sampling_strategy"] = "group_by_length"
    if side == "trainer-grouped-bf16":
        extra["bf16"] = True
    targs = TrainingArguments(
        output_dir=str(workdir / f"bench-{side}"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=EVAL_BATCH_SIZE, learning_rate=args.lr, num_train_epochs=args.epochs,
        weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear", eval_strategy="epoch", save_strategy="no",
        report_to=[], seed=seed, logging_steps=50, use_cpu=True, dataloader_num_workers=0, **extra,
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
        "side": side, "seed": seed, "precision": "bf16" if targs.bf16 else ("fp16" if targs.fp16 else "fp32"),
        "accelerate_mixed_precision": str(trainer.accelerator.mixed_precision), "optim": str(targs.optim),
        "train_sampling_strategy": getattr(targs, "train_sampling_strategy", None),
        "threads": threads, "threads_after": threads_after, "train_rows": len(rows),
        "train_seconds": loop_s, "samples_per_s": len(rows) * args.epochs / loop_s, "end_to_end_seconds": total,
        "accuracy": float(metrics["eval_accuracy"]), "steps": int(out.global_step),
        "trainer_train_runtime": out.metrics.get("train_runtime"),
    }


def run_one(args) -> dict:
    """One (side, seed) in this process; the parent runs each in a fresh process."""
    from tuneforge.models.resolve import resolve_model

    model_path = Path(resolve_model("minilm-l6").path)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one in TUNEFORGE_SIDES:
        train_slice = write_train_slice(args.n, workdir / f"sst2_train_first{args.n}.tsv")
        return run_tuneforge(args, args.one, args.seed, workdir, train_slice, model_path)
    return run_trainer(args, args.one, args.seed, workdir, model_path)


# ------------------------------------------------------------------------------------------- report
def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: list[dict], sides: list[str]) -> dict:
    """Per side: mean and sd of samples/s and accuracy. Per pair (tuneforge side, Trainer side): the
    samples/s ratio and the accuracy difference, paired by seed."""
    by = {side: {r["seed"]: r for r in results if r["side"] == side} for side in sides}
    per_side = {}
    for side, runs in by.items():
        if not runs:
            continue
        sps, acc = _mean_sd([r["samples_per_s"] for r in runs.values()]), _mean_sd([r["accuracy"] for r in runs.values()])
        per_side[side] = {"runs": len(runs), "precision": next(iter(runs.values()))["precision"],
                          "train_rows": sorted({r["train_rows"] for r in runs.values()}),
                          "samples_per_s_mean": sps[0], "samples_per_s_sd": sps[1],
                          "accuracy_mean": acc[0], "accuracy_sd": acc[1]}
    pairs = []
    for a in (s for s in sides if s in TUNEFORGE_SIDES and by.get(s)):
        for b in (s for s in sides if s in TRAINER_SIDES and by.get(s)):
            seeds = sorted(set(by[a]) & set(by[b]))
            if not seeds:
                continue
            diffs = [by[a][s]["accuracy"] - by[b][s]["accuracy"] for s in seeds]
            ratios = [by[a][s]["samples_per_s"] / by[b][s]["samples_per_s"] for s in seeds]
            d_mean, d_sd = _mean_sd(diffs)
            pairs.append({"a": a, "b": b, "seeds": seeds, "accuracy_diff_mean": d_mean, "accuracy_diff_sd": d_sd,
                          "accuracy_diff_min": min(diffs), "accuracy_diff_max": max(diffs),
                          "speed_ratio_median": statistics.median(ratios), "speed_ratio_min": min(ratios),
                          "speed_ratio_max": max(ratios)})
    return {"per_side": per_side, "pairs": pairs}


def table(summary: dict) -> str:
    lines = ["| side | precision | rows trained | train samples/s (mean ± sd) | dev accuracy (mean ± sd) | runs |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for side, s in summary["per_side"].items():
        rows = "/".join(str(r) for r in s["train_rows"])
        lines.append(f"| {side} | {s['precision']} | {rows} | {s['samples_per_s_mean']:.1f} ± "
                     f"{s['samples_per_s_sd']:.1f} | {s['accuracy_mean']:.4f} ± {s['accuracy_sd']:.4f} | "
                     f"{s['runs']} |")
    return "\n".join(lines)


def pair_table(summary: dict) -> str:
    lines = ["| tuneforge side | vs | samples/s ratio (median, range) | accuracy difference, points (mean ± sd, range) |",
             "| --- | --- | ---: | ---: |"]
    for p in summary["pairs"]:
        lines.append(f"| {p['a']} | {p['b']} | {p['speed_ratio_median']:.2f}x ({p['speed_ratio_min']:.2f}-"
                     f"{p['speed_ratio_max']:.2f}) | {100 * p['accuracy_diff_mean']:+.2f} ± "
                     f"{100 * p['accuracy_diff_sd']:.2f} ({100 * p['accuracy_diff_min']:+.2f} to "
                     f"{100 * p['accuracy_diff_max']:+.2f}) |")
    return "\n".join(lines)


def per_seed_table(results: list[dict], sides: list[str]) -> str:
    seeds = sorted({r["seed"] for r in results})
    lines = ["| seed | " + " | ".join(sides) + " |", "| ---: |" + " ---: |" * len(sides)]
    for seed in seeds:
        cells = []
        for side in sides:
            r = next((r for r in results if r["side"] == side and r["seed"] == seed), None)
            cells.append("" if r is None else f"{r['accuracy']:.4f} ({r['samples_per_s']:.0f}/s)")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(report: dict) -> list[str]:
    m, cfg = report["machine"], report["config"]
    return [f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, transformers {m['transformers']}, "
            f"CPU native bf16: {m['cpu_native_bf16']}",
            f"config: n={cfg['n']} train rows, {cfg['dev_rows']} dev rows, epochs={cfg['epochs']}, "
            f"batch size={cfg['batch_size']}, lr={cfg['lr']}, seeds={cfg['seeds']}, max_length={MAX_LENGTH}, "
            f"threads={cfg['threads']}"]


def render(report: dict) -> str:
    return "\n".join([table(report["summary"]), "", pair_table(report["summary"]), "",
                      per_seed_table(report["results"], report["config"]["sides"]), "", *notes(report)])


def write_docs(report: dict) -> None:
    from _docs import write_section

    m = report["machine"]
    write_section("train_throughput", [
        "## Training throughput and accuracy: tuneforge vs transformers.Trainer (CPU, several seeds)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU native bf16: {m['cpu_native_bf16']}, torch {m['torch']}, "
        f"transformers {m['transformers']}",
        "",
        "Same model (minilm-l6), same SST-2 rows, batch size, learning rate, epochs and dev set on every side; "
        "each (seed, side) runs in a fresh process; every timer includes one dev evaluation per epoch. "
        "The docstring of `bench/train_throughput.py` says what each side is. "
        "Raw numbers: `docs/bench/train_throughput.json`.",
        "",
        table(report["summary"]),
        "",
        "Paired by seed (tuneforge side minus Trainer side):",
        "",
        pair_table(report["summary"]),
        "",
        "Per seed: dev accuracy (train samples/s):",
        "",
        per_seed_table(report["results"], report["config"]["sides"]),
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
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(DEFAULT_SIDES))
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temp dir, removed after)")
    p.add_argument("--write-docs", action="store_true",
                   help="write the results into docs/benchmarks.md and docs/bench/train_throughput.json")
    p.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)  # child mode: one side, --seed
    p.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.n < 1 or args.epochs < 1 or args.batch_size < 1:
        p.error("--n, --epochs and --batch-size must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        args.result.write_text(json.dumps(run_one(args)))
        return 0
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tf-bench-")) if own_tmp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python bench/train_throughput.py" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:]))
    results = []
    try:
        for seed in args.seeds:
            for side in args.sides:
                out = workdir / f"result-{side}-{seed}.json"
                child = [sys.executable, str(Path(__file__).resolve()), "--one", side, "--seed", str(seed),
                         "--n", str(args.n), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                         "--lr", str(args.lr), "--workdir", str(workdir / f"{side}-{seed}"), "--result", str(out)]
                subprocess.run(child, check=True, stdout=subprocess.DEVNULL)
                r = json.loads(out.read_text())
                results.append(r)
                print(f"seed {seed} {side:>22}: {r['samples_per_s']:7.1f} samples/s, accuracy {r['accuracy']:.4f}, "
                      f"{r['train_rows']} rows, {r['precision']}", flush=True)
                if r["threads_after"] != r["threads"]:
                    print(f"warning: {side}: torch threads changed from {r['threads']} to {r['threads_after']}")
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": {"n": args.n, "dev_rows": len(load_rows(DEV_TSV)[0]), "epochs": args.epochs,
                   "batch_size": args.batch_size, "lr": args.lr, "seeds": args.seeds, "sides": args.sides,
                   "max_length": MAX_LENGTH, "eval_batch_size": EVAL_BATCH_SIZE, "threads": os.cpu_count()},
        "summary": summarise(results, args.sides),
        "results": results,
    }
    print()
    print(render(report))
    if args.write_docs:
        write_docs(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
