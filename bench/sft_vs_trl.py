"""tuneforge against TRL's SFTTrainer: LoRA instruction tuning of SmolLM2-135M-Instruct on GSM8K.

    .venv/bin/pip install -c requirements.lock trl      # the peer (not a tuneforge dependency)
    python data/fetch.py gsm8k                          # or: python data/fetch.py --from DIR gsm8k
    .venv/bin/python bench/sft_vs_trl.py [--steps 30] [--write-docs]

The same setup on both sides: 420 GSM8K questions as one user turn and one assistant turn in
SmolLM2's own chat template, loss on the answer only (TRL: its prompt-completion format, whose
`completion_only_loss` is on by default), LoRA r 16 / alpha 32 / dropout 0.05 on every linear layer
of the blocks, micro-batch 8, max length 384, AdamW lr 2e-4 with a constant schedule, seed 42.
Precision: each side's default (TRL: `bf16=True`; tuneforge: `precision: auto`, bf16 autocast on a
CPU with native bf16, else fp32). The rows:

* `tuneforge` (defaults: padding-free packing, loss only at answer positions, chunked)
* `tuneforge, gradient checkpointing on` (the lever TRL turns on by default)
* `tuneforge, packing off` (8 examples a step, like TRL: the same examples per step)
* `tuneforge, packing off, checkpointing on` (TRL's default setup, on our loop)
* `TRL SFTTrainer` (its documented defaults: gradient checkpointing on)
* `TRL SFTTrainer, checkpointing off` (what a user who wants speed switches)
* `TRL SFTTrainer, padding-free packing` (`packing=True`, TRL's bfd strategy, checkpointing off)

Each side runs in a fresh process that reports its own peak RSS (`ru_maxrss`), training seconds
(model steps only: TRL's `train_runtime`, tuneforge's loop time) and the real (non-pad) tokens it
trained on; tokens/s = tokens / seconds. The loss compared is the mean training loss of the last 5
steps (per answer token on both sides).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer import REPO, count_batch_tokens, cpu_line, peak_rss_gb, report, run_side  # noqa: E402

GSM8K = REPO / "data" / "external" / "gsm8k" / "train.jsonl"
SIDES = ["tuneforge", "tuneforge-gc", "tuneforge-nopack", "tuneforge-nopack-gc", "trl-default", "trl-nogc",
         "trl-packed"]
LABELS = {"tuneforge": "tuneforge (defaults: packing, answer-only chunked loss)",
          "tuneforge-gc": "tuneforge, `train.gradient_checkpointing: true`",
          "tuneforge-nopack": "tuneforge, packing off",
          "tuneforge-nopack-gc": "tuneforge, packing off, checkpointing on",
          "trl-default": "TRL SFTTrainer (documented defaults: checkpointing on)",
          "trl-nogc": "TRL SFTTrainer, checkpointing off",
          "trl-packed": "TRL SFTTrainer, packing on, checkpointing off"}


def rows(n: int, seed: int = 42) -> list[dict]:
    lines = GSM8K.read_text(encoding="utf-8").splitlines()
    random.Random(seed).shuffle(lines)
    return [json.loads(line) for line in lines[:n]]


# ------------------------------------------------------------------------------------------ tuneforge


def run_tuneforge(args, workdir: Path, packing: bool, checkpointing: bool) -> dict:
    from tuneforge.recipe import load_recipe
    from tuneforge.train.run import train

    data = workdir / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(args.n + 8)), encoding="utf-8")
    recipe = {
        "name": f"sft-{'packed' if packing else 'nopack'}", "output_dir": str(workdir / "runs"), "seed": 42,
        "task": "causal_lm", "model": {"name": "smollm2-135m", "max_length": 384},
        "data": {"sources": [{"path": str(data), "format": "alpaca", "instruction_column": "question",
                              "output_column": "answer"}],
                 "validation_file": None, "split": {"validation_fraction": 8 / (args.n + 8)},
                 "dedup": {"near": False}, "decontaminate": {"near": False},
                 "formatting": {"template": None, "train_on": "assistant", "packing": packing}},
        "method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "include_mlp": True},
        "causal_lm": {"eval_metric": "none", "compare_with_base": False},
        "train": {"max_steps": args.steps, "batch_size": 8, "learning_rate": 2e-4, "scheduler": "constant",
                  "warmup_ratio": 0.0, "eval_every_steps": 10_000, "log_every_steps": 1, "eval_batch_size": 8,
                  "gradient_checkpointing": checkpointing},
        "export": {"enabled": False},
    }
    path = workdir / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    cfg = load_recipe(path)
    result = train(cfg)
    logs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if r.get("kind") == "train"]
    tokens = _trained_tokens(cfg)
    return {"train_seconds": result.train_seconds, "steps": result.global_step,
            "losses": [r["loss"] for r in train_logs], "tokens": tokens,
            "precision": json.loads((cfg.run_dir / "manifest.json").read_text()).get("precision")}


def _trained_tokens(cfg) -> int:
    """Real (non-pad) tokens of every training step, as the loop logs them (``tokens`` per record)."""
    logs = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    return int(sum(r["tokens"] for r in logs if r.get("kind") == "train"))


# ---------------------------------------------------------------------------------------------- TRL


def run_trl(args, workdir: Path, gradient_checkpointing: bool, packing: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuneforge.models.resolve import resolve_model

    path = resolve_model("smollm2-135m").path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}],
                               "completion": [{"role": "assistant", "content": r["answer"]}]}
                              for r in rows(args.n)])
    cfg = SFTConfig(output_dir=str(workdir / "trl"), max_steps=args.steps, per_device_train_batch_size=8,
                    max_length=384, learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=0,
                    logging_steps=1, save_strategy="no", report_to=[], seed=42, dataloader_num_workers=0,
                    use_cpu=not torch.cuda.is_available(),
                    **({} if gradient_checkpointing else {"gradient_checkpointing": False}),
                    **({"packing": True} if packing else {}))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora)
    tokens = count_batch_tokens(trainer)  # real tokens of every training batch, as tuneforge counts them
    out = trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"train_seconds": out.metrics["train_runtime"], "steps": trainer.state.global_step, "losses": losses,
            "tokens": tokens["n"], "precision": "bf16" if cfg.bf16 else "fp32",
            "gradient_checkpointing": cfg.gradient_checkpointing, "packing": cfg.packing}


# ------------------------------------------------------------------------------------------- driver


def worker(side: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as tmp:
        t0 = time.perf_counter()
        if side.startswith("tuneforge"):
            result = run_tuneforge(args, Path(tmp), packing="nopack" not in side,
                                   checkpointing=side.endswith("-gc"))
        else:
            result = run_trl(args, Path(tmp), gradient_checkpointing=side == "trl-default",
                             packing=side == "trl-packed")
        result.update(side=side, wall_seconds=time.perf_counter() - t0, peak_rss_gb=peak_rss_gb())
    return result


def summarise(r: dict) -> dict:
    tail = r["losses"][-5:]
    return {**r, "s_per_step": r["train_seconds"] / max(r["steps"], 1),
            "tokens_per_s": r["tokens"] / r["train_seconds"] if r["tokens"] > 0 else None,
            "loss_last5": sum(tail) / len(tail) if tail else None}


def table(results: list[dict], base: dict) -> list[str]:
    lines = ["| run | precision | s/step | tokens/s | vs TRL default | peak RSS | vs TRL default | "
             "loss, last 5 steps |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        tps = r["tokens_per_s"]
        speed = f"{tps / base['tokens_per_s']:.2f}x" if tps and base.get("tokens_per_s") else "-"
        lines.append(f"| {LABELS[r['side']]} | {r['precision']} | {r['s_per_step']:.2f} | "
                     f"{tps:.0f} | {speed} | {r['peak_rss_gb']:.2f} GB | "
                     f"{r['peak_rss_gb'] / base['peak_rss_gb']:.2f}x | {r['loss_last5']:.3f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--n", type=int, default=420, help="training questions")
    p.add_argument("--sides", nargs="+", default=SIDES, choices=SIDES)
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    if not GSM8K.exists():
        sys.exit(f"{GSM8K} not found: python data/fetch.py gsm8k")
    if args.worker:
        report(worker(args.worker, args))
        return 0
    results = []
    for side in args.sides:  # one at a time: each is timed on a quiet machine
        results.append(summarise(run_side(__file__, side, ["--steps", str(args.steps), "--n", str(args.n)])))
        r = results[-1]
        print(f"{side}: {r['s_per_step']:.2f} s/step, {r['tokens_per_s']} tokens/s, peak {r['peak_rss_gb']:.2f} GB, "
              f"loss {r['loss_last5']}", flush=True)
    base = next((r for r in results if r["side"] == "trl-default"), results[0])
    lines = table(results, base)
    print("\n".join(lines))
    if args.write_docs:
        from _docs import write_section

        head = [f"Command: `python bench/sft_vs_trl.py --steps {args.steps} --write-docs` "
                f"({time.strftime('%Y-%m-%d')}, {cpu_line()}; no GPU). SmolLM2-135M-Instruct, LoRA r16 on every "
                f"linear layer, {args.n} GSM8K questions, micro-batch 8, max length 384, lr 2e-4, "
                f"{args.steps} steps; each run a fresh process, one at a time.", ""]
        write_section("sft_vs_trl", head + lines, {"steps": args.steps, "n": args.n, "cpu": cpu_line(),
                                                   "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
