"""How close ``tuneforge plan`` comes to real training runs: planned vs measured peak memory and step time.

For each configuration this script

1. runs ``tuneforge.plan.measure.measure(recipe, --steps)``: that many real training steps through
   ``tuneforge.train.run.train`` in a child process (evaluation off, no export), recording the child's
   peak RSS (CPU; ``torch.cuda.max_memory_allocated`` on a GPU), every step's time and the shape of every
   micro-batch; the run also prepares the data, into a temporary run directory;
2. plans the same recipe with ``tuneforge.plan.make_plan`` from that prepared data (lengths, steps);
3. evaluates the plan at exactly the batches that ran (``tuneforge.plan.measure.compare``): the planned
   peak at the largest micro-batch seen (the loop puts the batch with the longest example first) and the
   planned time of each step after the first (the warm-up) at its own micro-batch shapes; the ratios are
   planned / measured.

Two sets of configurations. ``accuracy`` (the issue's list): SST-2 classification with minilm-l6 + LoRA
(``recipes/sst2-minilm-lora.yaml``); NER with minilm-l6 (full fine-tuning, a synthetic CoNLL file of 400
sentences written here from the words of ``data/conll2003/train.head.iob2.txt``); SmolLM2-135M + LoRA on
the Alpaca demo rows, max_length 256, batch 4, without and with gradient checkpointing; masked LM with
minilm-l6 on the SST-2 sentences (64-token packed blocks, as ``recipes/sst2-minilm-dapt.yaml``); the
from-scratch character GPT ``recipes/shakespeare-char-gpt.yaml``. ``calibration``: other recipes, used to
fit the plan's CPU constants (``tuneforge.plan.core.CALIBRATION``; ``--fit`` prints the fit), so the
accuracy set is not what the constants were fitted to.

Step times: by default (``--threads 1``) the runs and the plan use one torch thread and a step's
measured time is the process's CPU time, which other jobs sharing the machine do not stretch (the
plan then uses the one-thread matmul peak, ``tuneforge bench peak`` under ``OMP_NUM_THREADS=1``). With
``--threads 0`` (torch's default) it is wall time, and the script waits (up to ``--quiet-wait``
seconds) for the 1-minute load average to fall below ``--max-load`` before each run, and measures again
when the load rose during it.

    .venv/bin/python bench/plan_accuracy.py                      # accuracy set, 5 steps each (~6 min on 2 cores)
    .venv/bin/python bench/plan_accuracy.py --set calibration --fit
    .venv/bin/python bench/plan_accuracy.py --only sst2-lora --steps 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------------------- recipes

def _conll_file(path: Path, sentences: int = 400, seed: int = 0) -> Path:
    """A CoNLL-2003-like IOB2 file: sentences of 5-40 words drawn from the shipped slice's words, with
    entity spans of its four types."""
    words = []
    for line in (ROOT / "data/conll2003/train.head.iob2.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] != "-DOCSTART-":
            words.append(parts[0])
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- O O", ""]
    for _ in range(sentences):
        n, i = rng.randint(5, 40), 0
        while i < n:
            if rng.random() < 0.15:
                kind, span = rng.choice(["PER", "LOC", "ORG", "MISC"]), rng.randint(1, 3)
                for j in range(span):
                    lines.append(f"{rng.choice(words)} NNP I-NP {'B' if j == 0 else 'I'}-{kind}")
                i += span
            else:
                lines.append(f"{rng.choice(words)} NN I-NP O")
                i += 1
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def _smollm2(workdir: Path, checkpointing: bool, *, attention_only: bool = False, max_length: int = 256,
             batch: int = 4) -> dict:
    train = {"max_steps": 50, "batch_size": batch, "learning_rate": 2.0e-4, "precision": "auto",
             "metric_for_best": "loss"}
    if checkpointing:
        train["gradient_checkpointing"] = True
    name = "smollm2-lora" + ("-attn" if attention_only else "") + ("-ckpt" if checkpointing else "")
    return {"name": name, "seed": 42, "task": "causal_lm",
            "model": {"name": "smollm2-135m", "max_length": max_length},
            "data": {"sources": [{"path": str(ROOT / "data/alpaca_demo/alpaca_en_demo.head.json"),
                                  "format": "alpaca"}],
                     "split": {"validation_fraction": 0.1}, "dedup": {"near": False},
                     "decontaminate": {"near": False}},
            "method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "include_mlp": not attention_only},
            "causal_lm": {"compare_with_base": False}, "train": train}


def _scratch_lm(name: str, family: str, layers: int, heads: int, hidden: int, length: int, batch: int,
                precision: str) -> dict:
    text = str(ROOT / "data/tinyshakespeare/input.txt")
    return {"name": name, "seed": 1337, "task": "causal_lm",
            "model": {"architecture": {"family": family, "layers": layers, "heads": heads, "hidden": hidden},
                      "tokenizer": {"type": "char"}, "max_length": length},
            "data": {"sources": [{"path": text, "format": "text", "text_unit": "paragraph"}],
                     "split": {"validation_fraction": 0.1, "order": "sequential"},
                     "clean": {"fix_unicode": False, "unicode_normalization": "none", "remove_control_chars": False,
                               "fold_whitespace": False},
                     "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False},
                     "formatting": {"packing": True, "packing_strategy": "stream", "max_length": length,
                                    "add_eos": False, "document_separator": "\n\n"}},
            "method": "full",
            "train": {"max_steps": 100, "batch_size": batch, "learning_rate": 1e-3, "group_by_length": False,
                      "metric_for_best": "loss", "precision": precision}}


def _masked_lm() -> dict:
    return {"name": "sst2-minilm-mlm", "seed": 42, "task": "masked_lm",
            "model": {"name": "minilm-l6", "max_length": 64},
            "data": {"train_file": str(ROOT / "data/sst2/train.tsv"), "text_column": "sentence",
                     "label_column": None, "split": {"validation_fraction": 0.02}, "dedup": {"near": False},
                     "decontaminate": {"enabled": False},
                     "formatting": {"packing": True, "packing_strategy": "stream", "max_length": 64}},
            "method": "full",
            "train": {"max_steps": 100, "batch_size": 32, "learning_rate": 1e-4, "precision": "auto"}}


def _ner(workdir: Path) -> dict:
    return {"name": "ner-minilm", "seed": 42, "task": "token_classification",
            "model": {"name": "minilm-l6", "max_length": 128},
            "data": {"train_file": str(_conll_file(workdir / "conll_like.iob2.txt")),
                     "split": {"validation_fraction": 0.1}, "dedup": {"exact": True, "near": False}},
            "method": "full",
            "train": {"max_steps": 100, "batch_size": 32, "learning_rate": 1e-4, "precision": "auto"}}


def _from_file(path: str, overrides: list[str]) -> "object":
    from tuneforge.recipe import load_recipe

    return load_recipe(ROOT / path, overrides)


#: name -> (set, builder(workdir) -> Recipe)
CONFIGS = {
    "sst2-lora": ("accuracy", lambda w: _from_file("recipes/sst2-minilm-lora.yaml", [])),
    "ner-full": ("accuracy", lambda w: _dict_recipe(_ner(w))),
    "smollm2-lora": ("accuracy", lambda w: _dict_recipe(_smollm2(w, False))),
    "smollm2-lora-ckpt": ("accuracy", lambda w: _dict_recipe(_smollm2(w, True))),
    "mlm-full": ("accuracy", lambda w: _dict_recipe(_masked_lm())),
    "char-gpt": ("accuracy", lambda w: _from_file("recipes/shakespeare-char-gpt.yaml", [])),
    # calibration: recipes outside the accuracy set
    "sst2-full": ("calibration", lambda w: _from_file("recipes/sst2-minilm-full.yaml",
                                                       [f"data.train_file={ROOT / 'data/sst2/train.tsv'}"])),
    "char-gpt-10m": ("calibration", lambda w: _from_file("recipes/shakespeare-char-10m.yaml",
                                                          ["train.max_minutes=null"])),
    "char-llama": ("calibration", lambda w: _dict_recipe(
        _scratch_lm("char-llama", "llama", 4, 4, 256, 129, 16, "auto"))),
    "char-gpt-10m-fp32": ("calibration", lambda w: _from_file("recipes/shakespeare-char-10m.yaml", [
        "train.max_minutes=null", "train.precision=fp32", "name=char-gpt-10m-fp32"])),
    "char-llama-fp32": ("calibration", lambda w: _dict_recipe(
        _scratch_lm("char-llama-fp32", "llama", 4, 4, 256, 129, 16, "fp32"))),
    "char-llama-512": ("calibration", lambda w: _dict_recipe(
        _scratch_lm("char-llama-512", "llama", 8, 8, 512, 256, 4, "auto"))),
    "sst2-lora-qv": ("calibration", lambda w: _from_file("recipes/sst2-minilm-lora.yaml", [
        "train.batch_size=16", "lora.r=8", "lora.target_modules=[query,value]", "name=sst2-lora-qv"])),
    "smollm2-lora-attn": ("calibration", lambda w: _dict_recipe(
        _smollm2(w, False, attention_only=True, max_length=128, batch=8))),
    "sst2-lora-fp32": ("calibration", lambda w: _from_file("recipes/sst2-minilm-lora.yaml",
                                                            ["train.precision=fp32", "train.batch_size=16",
                                                             "name=sst2-lora-fp32"])),
}


def _dict_recipe(data: dict):
    from tuneforge.recipe import Recipe

    if "gradient_checkpointing" in data["train"] and "gradient_checkpointing" not in \
            Recipe.model_fields["train"].annotation.model_fields:
        raise SystemExit("this tree has no train.gradient_checkpointing yet")
    return Recipe.model_validate(data)


# ------------------------------------------------------------------------------------------- running

def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(max_load: float, timeout: float) -> float:
    """Wait until the 1-minute load average is below ``max_load`` (at most ``timeout`` s); returns it."""
    deadline = time.monotonic() + timeout
    load = load_average()
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(5)
        load = load_average()
    return load


def run_config(name: str, steps: int, workdir: Path, args) -> dict:
    from tuneforge.plan import make_plan
    from tuneforge.plan.measure import compare, measure

    recipe = CONFIGS[name][1](workdir)
    cpu_time = args.threads == 1  # CPU seconds of a one-thread run: no need to wait for a quiet machine
    for attempt in range(args.retries + 1):
        load = load_average() if cpu_time else wait_for_quiet(args.max_load, args.quiet_wait)
        t0 = time.monotonic()
        record = measure(recipe, steps, workdir=workdir / name, threads=args.threads)
        seconds = time.monotonic() - t0
        load_after = load_average()
        # another job started during the run (its own two threads explain a load of about 2): times are off
        if cpu_time or load_after < args.max_load + 2.0:
            break
        print(f"{name}: load rose to {load_after:.2f} during the run; measuring again", file=sys.stderr)
    plan = make_plan(recipe, data_dir=Path(record["run_dir"]) / "data")
    row = compare(plan, record, cpu_time=cpu_time)
    row.update(name=name, set=CONFIGS[name][0], load_before=load, load_after=load_after,
               measure_seconds=round(seconds, 1), plan_peak_bytes=plan.estimate.peak,
               plan_step_seconds=plan.estimate.step_seconds, attention=plan.attention, precision=plan.precision)
    return row


def print_table(rows: list[dict]) -> None:
    mib = 2 ** 20
    head = ("config", "planned peak", "measured peak", "ratio", "planned s/step", "measured s/step", "ratio",
            "load")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for r in rows:
        print(f"| {r['name']} | {r['planned_peak_bytes'] / mib:,.0f} MiB | {r['measured_peak_bytes'] / mib:,.0f} MiB "
              f"| {r['memory_ratio']:.2f} | {r['planned_step_seconds']:.3f} | {r['measured_step_seconds']:.3f} "
              f"| {r['time_ratio']:.2f} | {r['load_before']:.2f}/{r['load_after']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=("accuracy", "calibration", "all"), default="accuracy")
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument("--steps", type=int, default=5, help="training steps per run (the first is not timed)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--quiet-wait", type=float, default=120.0)
    parser.add_argument("--retries", type=int, default=1, help="measure again when the load rose during a run")
    parser.add_argument("--fit", action="store_true", help="fit the CPU time constants on the rows")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the runs and the plan (1: step time = the process's CPU time, "
                             "which other jobs on the machine do not stretch; 0: torch's default, wall time)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the plan reads the matmul peak cached for this thread count
    names = args.only or [n for n, (s, _) in CONFIGS.items() if args.set in (s, "all")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="plan-accuracy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        try:
            row = run_config(name, args.steps, workdir, args)
        except SystemExit as exc:  # a configuration this tree cannot run yet
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            continue
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "steps"}), file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.fit:
        from tuneforge.plan.measure import fit_time_constants

        print(json.dumps(fit_time_constants(rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
