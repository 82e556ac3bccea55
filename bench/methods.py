"""Every training method on SST-2 with minilm-l6 under one step budget: parameters, speed, memory, accuracy.

What is measured
----------------
For each method (full, head_only, lora, dora, ia3, prefix, prompt, adapter) a Recipe is built in code
and run through ``tuneforge.train.run.train`` in a **fresh child process**, so that one method's memory,
allocator caches, threads or Accelerate state never leak into the next:

* data: ``data/sst2/train.tsv`` with the data stage's defaults (cleaning, exact + near dedup,
  decontamination against the dev set) and the full 872-sentence ``data/sst2/dev.tsv``;
* model: ``minilm-l6`` (all-MiniLM-L6-v2), ``max_length`` 128, a fresh 2-way classification head;
* the same schedule for every method: ``--steps`` optimizer steps (default 300) of batch 32, seed 42,
  AdamW with the recipe defaults (linear decay, 6% warmup, weight decay 0.01, clipping at 1.0),
  ``precision: auto`` (bf16 autocast on CPUs with native bf16 and on GPUs);
* each method's own settings at tuneforge's defaults (``lora`` r=8 on the attention projections,
  20 virtual tokens for ``prefix`` / ``prompt``, Pfeiffer adapters with reduction 16, ...);
* only the learning rate differs, per method (``LEARNING_RATES``): a method that trains a few
  thousand parameters needs much larger steps than one that trains 22 million;
* one evaluation, at the last step; export disabled.

Reported per method:

* trainable / total parameters, as counted by ``build_model`` (PEFT totals include the frozen copy of
  the head that PEFT keeps next to the trained one);
* seconds per optimizer step: ``batch size / examples per second`` of tuneforge's own throughput
  meter, which times training steps only (no evaluation, no checkpoint writing; the first step, which
  pays for lazy initialisation, is excluded). The loop's wall time including the final evaluation and
  checkpoint is reported next to it;
* peak memory: the child's peak RSS (``ru_maxrss``; model, data and optimizer state together) and, on
  CUDA, ``torch.cuda.max_memory_allocated``;
* dev accuracy of the final model, re-evaluated in fp32 on the 872 dev sentences.

What it does not say: which method is best for SST-2 in general. Each method gets one run with one
learning rate and a short budget; PEFT methods with few parameters (prompt, prefix, ia3) typically
need more steps than full fine-tuning to catch up. Run it on a quiet machine: the child uses
``torch.set_num_threads(os.cpu_count())``.

Run from the repository root (see bench/README.md):
``python bench/methods.py [--steps 300] [--methods lora full] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneforge.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]
TRAIN_TSV = REPO / "data" / "sst2" / "train.tsv"
DEV_TSV = REPO / "data" / "sst2" / "dev.tsv"
METHODS_MD = REPO / "docs" / "methods.md"
METHODS_JSON = REPO / "docs" / "bench" / "methods.json"
SECTION = "methods"
MAX_LENGTH = 128

# Same order as tuneforge.models.methods.METHODS (not imported here: the parent process stays light).
ALL_METHODS = ("full", "head_only", "lora", "dora", "ia3", "prefix", "prompt", "adapter")

# Peak learning rates. Full fine-tuning: the top of the usual BERT range, for a short budget (the repo's
# full recipe uses 8e-5). A linear probe, LoRA/DoRA and adapters train a few hundred thousand
# parameters from zero: 1e-3 (the shipped LoRA recipe; the range swept by Houlsby et al.). IA3 rescales
# activations around 1: 3e-3 (T-Few, Liu et al. 2022). Prefix and prompt tuning move a handful of
# vectors and need the largest steps: 1e-2 (P-tuning v2's range for BERT-size models) and 3e-2 (PEFT's
# prompt-tuning examples).
LEARNING_RATES: dict[str, float] = {
    "full": 1e-4, "head_only": 1e-3, "lora": 1e-3, "dora": 1e-3, "ia3": 3e-3, "prefix": 1e-2,
    "prompt": 3e-2, "adapter": 1e-3,
}


# ------------------------------------------------------------------------------------------- recipe
def build_recipe(method: str, lr: float, steps: int, batch_size: int, seed: int, run_root: Path) -> Recipe:
    """The benchmark recipe for one method: everything but ``method`` and ``lr`` is the same for all."""
    from tuneforge.recipe import Recipe

    return Recipe.model_validate({
        "name": f"bench-method-{method}", "seed": seed, "output_dir": str(run_root),
        "model": {"name": "minilm-l6", "max_length": MAX_LENGTH},
        "data": {"train_file": str(TRAIN_TSV), "validation_file": str(DEV_TSV), "text_column": "sentence",
                 "label_column": "label", "label_names": ["negative", "positive"]},
        "method": method,
        "train": {"max_steps": steps, "batch_size": batch_size, "learning_rate": lr,
                  # One evaluation, at the last step (the loop always evaluates there).
                  "eval_every_steps": steps,
                  # The throughput meter keeps a 20-step window; logging every 20 steps makes the logged
                  # rates cover the run without overlapping.
                  "log_every_steps": min(20, steps)},
        "export": {"enabled": False},
    })


def method_settings(recipe: Recipe) -> str:
    """The method's own settings, in a few words, for the table."""
    method = recipe.method
    if method in ("full", "head_only"):
        return "all weights" if method == "full" else "classifier head only"
    if method in ("lora", "dora"):
        c = recipe.lora
        targets = ", ".join(c.target_modules) if c.target_modules else "attention projections"
        return f"r={c.r}, alpha={c.alpha:g}, {targets}" + (" + MLP" if c.include_mlp else "")
    if method == "ia3":
        c = recipe.ia3
        return f"targets {', '.join(c.target_modules)}" if c.target_modules else "PEFT default targets"
    if method == "prefix":
        c = recipe.prefix
        return f"{c.num_virtual_tokens} virtual tokens" + (" + projection MLP" if c.projection else "")
    if method == "prompt":
        c = recipe.prompt
        return f"{c.num_virtual_tokens} virtual tokens, {c.init} init"
    c = recipe.adapter
    return f"{c.kind}, reduction {c.reduction_factor}, {c.non_linearity}"


# ------------------------------------------------------------------------------------------- worker
def worker(job: dict) -> dict:
    """Train one method (runs in a fresh process) and return its measurements."""
    import torch

    from tuneforge.train.run import train

    torch.set_num_threads(os.cpu_count() or 1)
    threads = torch.get_num_threads()
    recipe = build_recipe(job["method"], job["lr"], job["steps"], job["batch_size"], job["seed"],
                          Path(job["run_root"]))
    t0 = time.perf_counter()
    result = train(recipe, overwrite=True)
    end_to_end = time.perf_counter() - t0
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())
    summary = json.loads((recipe.run_dir / "data_summary.json").read_text())
    ex_s = float(result.examples_per_s)
    steps = int(result.global_step)
    return {
        "method": job["method"], "lr": job["lr"], "settings": method_settings(recipe),
        "trainable_params": result.params["trainable"], "total_params": result.params["total"],
        "steps": steps, "batch_size": job["batch_size"],
        # None when no rate was logged (a run of one step has no interval to time).
        "seconds_per_step": round(job["batch_size"] / ex_s, 4) if ex_s > 0 else None,
        "loop_seconds": float(result.train_seconds),
        "loop_seconds_per_step": round(result.train_seconds / max(steps, 1), 4),
        "end_to_end_seconds": round(end_to_end, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mib": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                          if torch.cuda.is_available() else None),
        "accuracy": float(result.metrics["accuracy"]),
        "device": manifest["hardware"]["device"], "precision": manifest["precision"], "threads": threads,
        "train_rows": summary["train_rows"], "validation_rows": summary["validation_rows"],
    }


def run_worker(job_json: str) -> int:
    job = json.loads(job_json)
    real_stdout = sys.stdout
    # train() logs progress lines to stdout when it is not a terminal; the parent reads one JSON line.
    with redirect_stdout(sys.stderr):
        out = worker(job)
    print(json.dumps(out), file=real_stdout)
    return 0


# ------------------------------------------------------------------------------------------- parent
def run_method(method: str, lr: float, args: argparse.Namespace, workdir: Path) -> dict:
    """Run one method in a child process; a failure becomes a row with ``error`` instead of a crash."""
    job = {"method": method, "lr": lr, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
           "run_root": str(workdir / "runs")}
    log = workdir / f"{method}.log"
    print(f"[{method}] lr {lr:g}, {args.steps} steps ... ", end="", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=err, text=True)
    took = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = log.read_text().strip().splitlines()[-15:]
        print(f"FAILED (exit {proc.returncode}, {took:.0f} s); log tail:\n  " + "\n  ".join(tail))
        return {"method": method, "lr": lr, "error": tail[-1] if tail else f"exit code {proc.returncode}"}
    row = json.loads(lines[-1])
    print(f"accuracy {row['accuracy']:.4f}, {fmt_seconds(row['seconds_per_step'])} s/step, "
          f"peak RSS {row['peak_rss_mib']:,.0f} MiB ({took:.0f} s)")
    return row


def fmt_seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def machine_info() -> dict:
    import torch
    import transformers

    from tuneforge.train.manifest import cpu_model

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


# ------------------------------------------------------------------------------------------- report
def table(results: list[dict]) -> list[str]:
    cuda = any(r.get("peak_cuda_mib") is not None for r in results)
    head = ["method", "settings", "learning rate", "trainable params", "total params", "s/step",
            "loop s (incl. eval)", "peak RSS", *(["peak CUDA"] if cuda else []), "dev accuracy"]
    align = ["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", *(["---:"] if cuda else []), "---:"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for r in results:
        if "error" in r:
            cells = [f"`{r['method']}`", "failed: " + r["error"].replace("|", "\\|")[:120], f"{r['lr']:g}",
                     *["-"] * (len(head) - 3)]
        else:
            share = 100 * r["trainable_params"] / r["total_params"]
            cells = [f"`{r['method']}`", r["settings"], f"{r['lr']:g}",
                     f"{r['trainable_params']:,} ({share:.2f}%)", f"{r['total_params']:,}",
                     fmt_seconds(r["seconds_per_step"]), f"{r['loop_seconds']:.1f}",
                     f"{r['peak_rss_mib']:,.0f} MiB",
                     *([f"{r['peak_cuda_mib']:,.0f} MiB" if r["peak_cuda_mib"] is not None else "-"] if cuda else []),
                     f"**{r['accuracy']:.4f}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def notes(report: dict) -> list[str]:
    cfg, m = report["config"], report["machine"]
    ok = [r for r in report["results"] if "error" not in r]
    precisions = sorted({str(r["precision"]) for r in ok})
    rows = sorted({r["train_rows"] for r in ok})
    dev = sorted({r["validation_rows"] for r in ok})
    device = f"GPU {m['gpu']}" if m["gpu"] else f"CPU only ({m['cpu']}, {m['cores']} cores)"
    out = [f"budget: {cfg['steps']} optimizer steps of batch {cfg['batch_size']} for every method "
           f"({cfg['steps'] * cfg['batch_size']:,} examples), seed {cfg['seed']}, max_length {MAX_LENGTH}, "
           f"one evaluation at the last step; precision {', '.join(precisions) or '-'}",
           "data: data/sst2/train.tsv after default cleaning and dedup"
           + (f" ({', '.join(f'{n:,}' for n in rows)} training rows)" if rows else "")
           + f"; dev accuracy on data/sst2/dev.tsv ({', '.join(f'{n:,}' for n in dev)} sentences), fp32",
           "s/step: training steps only (tuneforge's throughput meter); loop s: the training loop's wall time "
           "including the final evaluation and checkpoint; peak RSS: the whole child process",
           f"machine: {device}, torch {m['torch']}, transformers {m['transformers']}"]
    return out


def render(report: dict) -> str:
    return "\n".join([*table(report["results"]), "", *(f"- {line}" for line in notes(report))])


def write_docs(report: dict, md_path: Path = METHODS_MD, json_path: Path = METHODS_JSON) -> None:
    """Put the table in docs/methods.md (between the methods markers) and the raw numbers in JSON."""
    from _docs import portable, replace_section

    m = report["machine"]
    replace_section(md_path, SECTION, [
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['gpu'] or m['cpu']}, {m['cores']} CPU cores, torch {m['torch']}, "
        f"transformers {m['transformers']}",
        "",
        *table(report["results"]),
        "",
        *(f"- {line}" for line in notes(report)),
        f"- raw numbers: `{json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}`",
    ], title="# Training methods")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(portable(json.dumps(report, indent=2)) + "\n")
    print(f"wrote {md_path} and {json_path}")


# --------------------------------------------------------------------------------------------- main
def parse_lr(items: list[str]) -> dict[str, float]:
    """``--lr lora=5e-4 full=5e-5`` -> overrides of LEARNING_RATES."""
    out = {}
    for item in items:
        method, sep, value = item.partition("=")
        if not sep or method not in ALL_METHODS:
            raise argparse.ArgumentTypeError(f"--lr {item!r}: expected METHOD=VALUE with METHOD one of "
                                             f"{', '.join(ALL_METHODS)}")
        try:
            out[method] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--lr {item!r}: {value!r} is not a number") from None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps for every method (default 300)")
    p.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(ALL_METHODS), metavar="METHOD",
                   help=f"methods to run, in this order (default: all: {' '.join(ALL_METHODS)})")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lr", nargs="+", default=[], metavar="METHOD=VALUE",
                   help="override a method's learning rate, e.g. --lr lora=5e-4 full=5e-5")
    p.add_argument("--workdir", type=Path, default=None,
                   help="run directories and per-method logs (default: a temp dir, removed after)")
    p.add_argument("--write-docs", action="store_true",
                   help="write the table into docs/methods.md and the raw numbers to docs/bench/methods.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1")
    try:
        args.lr = {**LEARNING_RATES, **parse_lr(args.lr)}
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return run_worker(sys.argv[2])
    args = parse_args(argv)
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tf-methods-")) if own_tmp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = [run_method(method, args.lr[method], args, workdir) for method in args.methods]
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "command": "python bench/methods.py" + ("" if len(sys.argv) < 2 else " " + shlex.join(sys.argv[1:])),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "config": {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "max_length": MAX_LENGTH,
                   "learning_rates": {m: args.lr[m] for m in args.methods}},
        "results": results,
    }
    print()
    print(render(report))
    if args.write_docs:
        write_docs(report)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
