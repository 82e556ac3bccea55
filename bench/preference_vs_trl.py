"""tuneforge against TRL's DPOTrainer: DPO with LoRA on Anthropic HH-RLHF (harmless) pairs, SmolLM2-135M-Instruct.

    .venv/bin/pip install -c requirements.lock trl      # the peer (not a tuneforge dependency)
    .venv/bin/python bench/preference_vs_trl.py [--steps 40] [--write-docs]

The data: ``/work/shared/data/preference/hh_rlhf_harmless_base_test.jsonl`` (the 2,312 pairs of HH-RLHF
harmless-base test) when it exists, else the repository's 600-pair slice
``data/preference/hh_rlhf_harmless_sample.jsonl`` (``--data`` picks another). Each row is two whole
``\\n\\nHuman: ... \\n\\nAssistant: ...`` transcripts; the prompt is their shared prefix up to the last
assistant turn. The script parses every row once and keeps the pairs that BOTH sides can train on
unchanged: a prompt of well-formed, non-empty turns, two different non-empty replies, and prompt + reply
within ``--max-length`` tokens in SmolLM2's own chat template for chosen and for rejected. No pair needs
truncating, so the two sides train on the same tokens: TRL 1.16 has no prompt-side truncation any more
(``max_prompt_length`` is gone; ``truncation_mode`` only keeps the start of prompt + reply, and its
deprecated ``keep_end`` cuts chosen and rejected at different prompt positions), so truncated rows could
not be made equal. Of those pairs the first ``--pairs`` (default: steps x batch, each pair seen once)
train, the last ``--heldout`` (300) are the held-out set; neither overlaps.

* tuneforge reads the kept rows, unchanged, through its own data stage (``task: preference``; cleaning,
  dedup and decontamination off, so it keeps every pair), from ``data.train_file`` and
  ``data.validation_file``; the held-out reward accuracy is the run's final validation ``reward_accuracy``.
* TRL gets the same pairs in its conversational preference format (``prompt``: the turns,
  ``chosen``/``rejected``: one assistant message each) and the same tokenizer; its held-out reward
  accuracy is ``trainer.evaluate()``'s ``eval_rewards/accuracies`` on the held-out pairs, with an eval
  batch that divides their number (TRL averages per-batch means).

Both: LoRA r 16 / alpha 32 / dropout 0.05 on q/k/v/o/gate/up/down_proj of every block, sigmoid DPO with
beta 0.1 and the reference = the model with its adapters off, batch 4 pairs (8 sequences), no
accumulation, AdamW (fused) lr 5e-4 constant, no warmup, no weight decay, gradient clipping at 1.0, seed
42, fp32 weights. TRL's ``disable_dropout`` (on by default) would silently set the LoRA dropout to 0; it is
turned off so both sides train with the same dropout. The sides, each in a fresh process, one at a time:

* ``tuneforge``: its defaults (precision auto = bf16 autocast on a CPU with native bf16, attention auto =
  eager on a CPU for this model, length-grouped batches, reference: adapters off, no checkpointing);
* ``tuneforge-gc`` (only with ``--sides``): the same with ``train.gradient_checkpointing: true``, the
  memory lever TRL's defaults turn on;
* ``trl-defaults``: ``DPOConfig`` as its documentation sets it up, with the hyper-parameters above (bf16 on
  and gradient checkpointing on: TRL's defaults; sdpa attention; random batches);
* ``trl-tuned``: what a TRL user switches for speed on this machine (see ``trl_switches``).

Measured per side: the loss of the first step (ln 2 = 0.6931 on both: policy == reference there), the
loss of the last step, the held-out reward accuracy after the last step, samples/s = pairs x steps / loop
seconds, and the peak RSS of the process up to the end of training. Loop seconds: TRL's
``train_runtime`` (plus, for ``trl-tuned``, the pass that precomputes the reference log-probs of the
training pairs before ``train()``: training work moved out of the loop); tuneforge's loop time minus its
evaluation and checkpoint at the last step. Neither includes model loading or the held-out evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer import REPO, count_batch_tokens, cpu_line, peak_rss_gb, report, run_side  # noqa: E402

FULL = Path("/work/shared/data/preference/hh_rlhf_harmless_base_test.jsonl")
SLICE = REPO / "data" / "preference" / "hh_rlhf_harmless_sample.jsonl"
SIDES = ["tuneforge", "tuneforge-gc", "trl-defaults", "trl-tuned"]
DEFAULT_SIDES = ["tuneforge", "trl-defaults", "trl-tuned"]
LABELS = {"tuneforge": "tuneforge (defaults)",
          "tuneforge-gc": "tuneforge, `train.gradient_checkpointing: true`",
          "trl-defaults": "TRL DPOTrainer (documented defaults)",
          "trl-tuned": "TRL DPOTrainer, tuned (checkpointing off, precomputed reference)"}
#: every linear layer of the blocks, named explicitly on both sides (the tied output layer is never adapted)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 16, "alpha": 32}
LN2 = math.log(2)
ASSISTANT = "\n\nAssistant:"
TURN = re.compile(r"\n\n(Human|Assistant): ?")


# ------------------------------------------------------------------------------------------------ data


def parse_pair(row: dict) -> dict | None:
    """An HH-RLHF row as TRL's conversational preference example, or None when it is not a clean pair:
    the prompt is the shared prefix up to the last ``Assistant:`` turn, split into user/assistant turns
    (alternating, from a user turn to a user turn, none empty), each turn stripped, as tuneforge's data
    stage reads it (``data/conversations.py``)."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return None
    i, k = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
    if i < 0 or chosen[:i] != rejected[:k]:
        return None
    parts = TURN.split(chosen[:i])
    if parts[0].strip():
        return None  # text before the first turn
    prompt = [{"role": "user" if role == "Human" else "assistant", "content": text.strip()}
              for role, text in zip(parts[1::2], parts[2::2])]
    good, bad = chosen[i + len(ASSISTANT):].strip(), rejected[k + len(ASSISTANT):].strip()
    alternating = all(t["role"] == ("user" if n % 2 == 0 else "assistant") for n, t in enumerate(prompt))
    if not prompt or not alternating or prompt[-1]["role"] != "user" or any(not t["content"] for t in prompt) \
            or not good or not bad or good == bad:
        return None
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}]}


def prepare_data(args, out: Path) -> dict:
    """Write the kept pairs: ``train.jsonl``/``heldout.jsonl`` (the original rows, for tuneforge) and
    ``train_trl.jsonl``/``heldout_trl.jsonl`` (TRL's format); return what was kept and why not."""
    from transformers import AutoTokenizer

    from tuneforge.models.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path)

    def length(messages) -> int:
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    source = Path(args.data) if args.data else (FULL if FULL.exists() else SLICE)
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept, malformed, too_long = [], 0, 0
    for row in rows:
        pair = parse_pair(row)
        if pair is None:
            malformed += 1
        elif max(length(pair["prompt"] + pair["chosen"]), length(pair["prompt"] + pair["rejected"])) > args.max_length:
            too_long += 1
        else:
            kept.append((row, pair))
    pairs = args.pairs or args.steps * args.batch_size
    if pairs + args.heldout > len(kept):
        sys.exit(f"{source}: {len(kept)} pairs fit in {args.max_length} tokens, fewer than --pairs {pairs} + "
                 f"--heldout {args.heldout}; lower them or raise --max-length")
    split = {"train": kept[:pairs], "heldout": kept[len(kept) - args.heldout:]}
    for name, items in split.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r, _ in items),
                                           encoding="utf-8")
        (out / f"{name}_trl.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for _, p in items),
                                               encoding="utf-8")
    return {"source": str(source), "rows": len(rows), "malformed": malformed, "too_long": too_long,
            "usable": len(kept), "train_pairs": pairs, "heldout_pairs": args.heldout}


def eval_batch(heldout: int, at_most: int = 16) -> int:
    """The largest batch up to ``at_most`` that divides the held-out pairs (TRL's accuracy is a mean of
    per-batch means; with equal batches it is the share of pairs)."""
    return max(b for b in range(1, at_most + 1) if heldout % b == 0)


# ------------------------------------------------------------------------------------------ tuneforge


def tuneforge_recipe(args, data: Path, workdir: Path, checkpointing: bool) -> dict:
    return {
        "name": "dpo-bench", "output_dir": str(workdir / "runs"), "seed": args.seed, "task": "preference",
        "model": {"name": "smollm2-135m", "max_length": args.max_length},
        "data": {"train_file": str(data / "train.jsonl"), "validation_file": str(data / "heldout.jsonl"),
                 # every pair as given: no text rewriting, no duplicate or contamination removal
                 "clean": {"fix_unicode": False, "unicode_normalization": "none", "remove_control_chars": False,
                           "fold_whitespace": False},
                 "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}},
        "method": "lora", "lora": {**LORA, "dropout": args.lora_dropout, "target_modules": TARGETS},
        "preference": {"loss": "dpo", "beta": args.beta, "max_prompt_length": args.max_length // 2,
                       "compare_with_base": False},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "gradient_accumulation_steps": 1,
                  "learning_rate": args.lr, "scheduler": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0,
                  "max_grad_norm": 1.0, "log_every_steps": 1,
                  # one evaluation, at the last step, on one pair (it and its checkpoint are timed and taken
                  # off the loop time); the final evaluation scores all held-out pairs, in fp32
                  "eval_every_steps": args.steps, "eval_rows_during_training": 1,
                  "eval_batch_size": eval_batch(args.heldout), "gradient_checkpointing": checkpointing},
        "export": {"enabled": False},
    }


def run_tuneforge(args, data: Path, workdir: Path, checkpointing: bool) -> dict:
    import tuneforge.train.loop as loop
    from tuneforge.recipe import Recipe
    from tuneforge.train.run import train

    recipe = Recipe.model_validate(tuneforge_recipe(args, data, workdir, checkpointing))
    paused = {"seconds": 0.0}
    evaluate_and_checkpoint = loop._evaluate_and_checkpoint

    def timed(*a, **kw):  # the loop's evaluation + checkpoint: not training time
        t0 = time.perf_counter()
        try:
            return evaluate_and_checkpoint(*a, **kw)
        finally:
            paused["seconds"] += time.perf_counter() - t0

    loop._evaluate_and_checkpoint = timed
    at_end = {}
    result = train(recipe, on_evaluate=lambda step, metrics: at_end.setdefault("rss", peak_rss_gb()))
    logs = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if r.get("kind") == "train"]
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())
    summary = json.loads((recipe.run_dir / "data_summary.json").read_text())
    return {"loop_seconds": result.train_seconds - paused["seconds"], "paused_seconds": paused["seconds"],
            "steps": result.global_step, "losses": [r["loss"] for r in steps],
            "tokens": int(sum(r["tokens"] for r in steps)), "epochs": steps[-1]["epoch"] if steps else None,
            "reward_accuracy": result.metrics.get("reward_accuracy"),
            "train_pairs_kept": summary["train_rows"], "heldout_kept": summary["validation_rows"],
            "rows_rejected": summary["rejected_rows"],
            "precision": manifest.get("precision"), "attention": manifest.get("attn_implementation"),
            "eval_precision": "fp32", "gradient_checkpointing": checkpointing,
            "peak_rss_train_gb": at_end.get("rss")}


# ---------------------------------------------------------------------------------------------- TRL


def trl_switches(tuned: bool) -> dict:
    """The DPOConfig settings beyond the shared hyper-parameters. ``trl-defaults`` keeps TRL 1.16's own
    defaults for everything else: ``bf16=True`` (DPOConfig's default when fp16 is not set; bf16 autocast on
    this CPU), ``gradient_checkpointing=True`` (TRL's default, unlike transformers'), a reference forward
    with the adapters off in every step, sdpa attention, random batches.

    ``trl-tuned`` (what a TRL user who wants speed on a CPU switches, from TRL's docs and source):

    * ``gradient_checkpointing=False``: the docs give checkpointing ~20% more compute per step for less
      activation memory; a 135M model at 8 x 256 tokens fits in memory without it;
    * ``precompute_ref_log_probs=True`` (+ ``precompute_ref_batch_size=16``): the reference log-probs of
      every pair once before training, in no-grad batches of 16, instead of a forward with the adapters
      off in every step: TRL's documented lever for speed and memory. That pass is timed and counted as
      training time (it is the same work, moved out of the loop), so it only gains what bigger no-grad
      batches gain (an 8-step smoke run on a busy machine: 62 s with it against 63 s without).

    Not switched, and why: ``attn_implementation="eager"`` (the kernel tuneforge picks on this CPU: in
    TRL, in the same kind of 8-step smoke run with checkpointing off, it was slower than the default sdpa,
    70 s against 63 s, and took more memory), ``padding_free`` (TRL 1.16 warns that it is temporarily unavailable and falls
    back to padding), ``use_logits_to_keep`` (gone in 1.16: the trainer's fused LM head already computes
    the log-probs in chunks without the full logits), ``use_liger_kernel`` / ``activation_offloading``
    (GPU), ``torch_compile`` (minutes of compilation on 2 cores for a 40-step run),
    ``train_sampling_strategy="group_by_length"`` (cannot infer lengths for DPO data, which has no
    ``input_ids`` column), ``bf16`` (already on), ``optim`` (already fused AdamW)."""
    if not tuned:
        return {}
    return {"gradient_checkpointing": False, "precompute_ref_log_probs": True, "precompute_ref_batch_size": 16}


def run_trl(args, data: Path, workdir: Path, tuned: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tuneforge.models.resolve import resolve_model

    precompute = {}

    class TimedDPOTrainer(DPOTrainer):
        """DPOTrainer whose reference precompute (run in ``__init__``) is timed: it is training work."""

        def _precompute_ref_logps(self, dataset, name, batch_size):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            precompute[name] = precompute.get(name, 0.0) + time.perf_counter() - t0
            return out

    def load(name: str) -> Dataset:
        return Dataset.from_list([json.loads(line) for line in (data / name).read_text(encoding="utf-8").splitlines()])

    path = resolve_model("smollm2-135m").path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    train_set, heldout = load("train_trl.jsonl"), load("heldout_trl.jsonl")
    cfg = DPOConfig(output_dir=str(workdir / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                    per_device_eval_batch_size=eval_batch(args.heldout), gradient_accumulation_steps=1,
                    learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                    max_grad_norm=1.0, beta=args.beta, loss_type=["sigmoid"], max_length=args.max_length,
                    disable_dropout=False,  # else TRL zeroes the LoRA dropout the other side trains with
                    logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], seed=args.seed,
                    dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), **trl_switches(tuned))
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=args.lora_dropout, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    trainer = TimedDPOTrainer(model=model, args=cfg, train_dataset=train_set, processing_class=tok, peft_config=lora)
    tokens = count_batch_tokens(trainer)  # training batches only: wrapped after the precompute
    out = trainer.train()
    rss, trained_tokens = peak_rss_gb(), tokens["n"]
    logs = trainer.state.log_history
    losses = [r["loss"] for r in logs if "loss" in r and "train_runtime" not in r]
    metrics = trainer.evaluate(eval_dataset=heldout)
    prepare = precompute.get("train", 0.0)
    return {"loop_seconds": out.metrics["train_runtime"] + prepare, "precompute_seconds": prepare,
            "steps": trainer.state.global_step, "losses": losses, "tokens": trained_tokens,
            "epochs": trainer.state.epoch, "reward_accuracy": metrics.get("eval_rewards/accuracies"),
            "eval_loss": metrics.get("eval_loss"), "train_pairs_kept": len(trainer.train_dataset),
            "heldout_kept": len(heldout),  # TRL drops only prompts of max_length or more: none here
            "precision": "bf16" if cfg.bf16 else ("fp16" if cfg.fp16 else "fp32"),
            "mixed_precision": str(trainer.accelerator.mixed_precision),
            "attention": model.config._attn_implementation, "eval_precision": "bf16" if cfg.bf16 else "fp32",
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "precompute_ref_log_probs": cfg.precompute_ref_log_probs, "peak_rss_train_gb": rss}


# ------------------------------------------------------------------------------------------- driver


def worker(side: str, args) -> dict:
    data = Path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        t0 = time.perf_counter()
        if side.startswith("tuneforge"):
            result = run_tuneforge(args, data, Path(tmp), checkpointing=side == "tuneforge-gc")
        else:
            result = run_trl(args, data, Path(tmp), tuned=side == "trl-tuned")
        result.update(side=side, wall_seconds=time.perf_counter() - t0, peak_rss_gb=peak_rss_gb())
    return result


def summarise(r: dict, pairs_per_step: int) -> dict:
    losses = r["losses"]
    return {**r, "samples_per_s": pairs_per_step * r["steps"] / r["loop_seconds"],
            "s_per_step": r["loop_seconds"] / max(r["steps"], 1),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "memory_gb": r.get("peak_rss_train_gb") or r["peak_rss_gb"]}


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def table(results: list[dict]) -> list[str]:
    by = {r["side"]: r for r in results}
    bases = [b for b in ("trl-defaults", "trl-tuned") if b in by]
    head = ["run", "precision", "attention", "checkpointing", "step-1 loss", "last loss", "held-out reward acc.", "samples/s",
            *[f"speed vs {b}" for b in bases], "peak RSS (training)", *[f"memory vs {b}" for b in bases]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        acc = r["reward_accuracy"]
        row = [LABELS[r["side"]], r["precision"], r.get("attention") or "-", "on" if r["gradient_checkpointing"] else "off",
               _fmt(r["first_loss"], ".4f"), _fmt(r["last_loss"], ".4f"), "-" if acc is None else f"{100 * acc:.1f}%",
               f"{r['samples_per_s']:.2f}",
               *[f"{r['samples_per_s'] / by[b]['samples_per_s']:.2f}x" for b in bases],
               f"{r['memory_gb']:.2f} GB", *[f"{r['memory_gb'] / by[b]['memory_gb']:.2f}x" for b in bases]]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def checks(results: list[dict], data: dict, pairs_per_step: int) -> list[str]:
    """The issue's 'must show' items, each a line: step-1 loss = ln 2, the same pairs and tokens on every
    side, and per tuneforge/TRL pair speed >= 1.3x, memory <= 0.7x, reward accuracy within 3 points."""
    out = []
    for r in results:
        first = r["first_loss"]
        ok = first is not None and abs(first - LN2) < 5e-4
        out.append(f"- {r['side']}: step-1 loss {_fmt(first, '.4f')} {'=' if ok else '!='} ln 2 (0.6931)")
    # TRL's replies end with the newline SmolLM2's template writes after <|im_end|>; tuneforge leaves that
    # layout whitespace out (data/preference.py): one token per sequence, two per pair, that only TRL trains on
    newline = {r["side"]: 2 * pairs_per_step * r["steps"] if r["side"].startswith("trl") else 0 for r in results}
    once = all(data["train_pairs"] == pairs_per_step * r["steps"] for r in results)  # every pair trained once
    kept = {r["side"]: (r.get("train_pairs_kept"), r.get("heldout_kept"),
                        r["tokens"] - newline[r["side"]] if once else None) for r in results}
    same = len(set(kept.values())) == 1
    out.append(f"- pairs: {data['train_pairs']} training and {data['heldout_pairs']} held-out pairs given to every side; "
               "training and held-out pairs kept, tokens trained on (TRL: less the newline after each reply's "
               "<|im_end|>, which only TRL trains on): "
               + "; ".join(f"{s} {t} / {h} / {_fmt(n, ',')}" for s, (t, h, n) in kept.items())
               + (": the same on every side" if same else ": NOT THE SAME on every side"))
    by = {r["side"]: r for r in results}
    for mine in [s for s in ("tuneforge", "tuneforge-gc") if s in by]:
        for peer in [s for s in ("trl-defaults", "trl-tuned") if s in by]:
            a, b = by[mine], by[peer]
            speed, memory = a["samples_per_s"] / b["samples_per_s"], a["memory_gb"] / b["memory_gb"]
            gap = None if None in (a["reward_accuracy"], b["reward_accuracy"]) else \
                100 * (a["reward_accuracy"] - b["reward_accuracy"])
            out.append(f"- {mine} / {peer}: {speed:.2f}x samples/s (goal >= 1.3x: {'met' if speed >= 1.3 else 'not met'}), "
                       f"{memory:.2f}x peak RSS (goal <= 0.7x: {'met' if memory <= 0.7 else 'not met'}), reward "
                       f"accuracy {_fmt(gap, '+.1f')} points (goal: within 3 or better: "
                       f"{'met' if gap is not None and gap >= -3 else 'not met'})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--pairs", type=int, default=None, help="training pairs (default: steps x batch size)")
    p.add_argument("--heldout", type=int, default=300, help="held-out pairs for the reward accuracy")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--max-length", type=int, default=256, help="tokens of prompt + reply; longer pairs are left out")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data", help=f"HH-RLHF jsonl (default: {FULL} if present, else {SLICE.relative_to(REPO)})")
    p.add_argument("--sides", nargs="+", default=DEFAULT_SIDES, choices=SIDES)
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        report(worker(args.worker, args))
        return 0
    shared = ["--steps", str(args.steps), "--heldout", str(args.heldout), "--batch-size", str(args.batch_size),
              "--max-length", str(args.max_length), "--lr", repr(args.lr), "--beta", repr(args.beta),
              "--lora-dropout", repr(args.lora_dropout), "--seed", str(args.seed)]
    results = []
    with tempfile.TemporaryDirectory(prefix="dpo-bench-data-") as tmp:
        data = prepare_data(args, Path(tmp))
        print(f"data: {data['source']}: {data['rows']} rows, {data['malformed']} not a clean pair, {data['too_long']} "
              f"longer than {args.max_length} tokens, {data['usable']} usable; {data['train_pairs']} train, "
              f"{data['heldout_pairs']} held out", flush=True)
        for side in args.sides:  # one at a time: each is timed on a quiet machine
            r = summarise(run_side(__file__, side, [*shared, "--pairs", str(data["train_pairs"]), "--data-dir", tmp]),
                          args.batch_size)
            results.append(r)
            print(f"{side}: {r['s_per_step']:.2f} s/step, {r['samples_per_s']:.2f} samples/s, peak "
                  f"{r['memory_gb']:.2f} GB, loss {r['first_loss']} -> {r['last_loss']}, reward accuracy "
                  f"{r['reward_accuracy']} ({r['wall_seconds']:.0f} s in all)", flush=True)
    lines, verdicts = table(results), checks(results, data, args.batch_size)
    print("\n".join(lines + [""] + verdicts))
    if args.write_docs:
        from _docs import write_section

        command = " ".join(["python bench/preference_vs_trl.py", *(sys.argv[1:] if argv is None else argv)])
        head = [f"Command: `{command}` "
                f"({time.strftime('%Y-%m-%d')}, {cpu_line()}; no GPU). DPO (sigmoid, beta {args.beta:g}) with LoRA "
                f"r16 / alpha 32 / dropout {args.lora_dropout:g} on every linear layer of SmolLM2-135M-Instruct's blocks, "
                f"{data['train_pairs']} HH-RLHF harmless pairs ({Path(data['source']).name}; every pair within "
                f"{args.max_length} tokens), batch {args.batch_size} pairs, lr {args.lr:g} constant, {args.steps} steps; "
                f"reward accuracy on {data['heldout_pairs']} held-out pairs; each run a fresh process, one at a time.",
                ""]
        write_section("preference_vs_trl", head + lines + [""] + verdicts,
                      {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "data_dir", "write_docs")},
                       "cpu": cpu_line(), "data": data, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
