"""Peak memory and step time of ``recipes/gsm8k-smollm2-lora.yaml`` before and after each memory lever.

    python data/fetch.py gsm8k                     # or: python data/fetch.py --from DIR gsm8k
    .venv/bin/python bench/causal_levers.py [--steps 4] [--write-docs]

Each row is a fresh child process (``tuneforge.plan.measure.measure``) that prepares the recipe's data and
runs ``--steps`` real training steps of it (evaluation off, no export), recording its peak RSS and every
step's time; the step time reported is the median of the steps after the first (the warm-up). The rows
add one lever at a time to the recipe as written, whose own defaults are the last-but-two row:

* ``before``: what the loop did before issue 15: logits at every position (prompt and padding included)
  over the whole 49,152-token vocabulary, upcast to fp32 in one piece (the child's prelude turns the
  chunked path off), packing off, no checkpointing;
* ``+ chunked loss``: hidden states gathered at answer positions, projected and upcast in chunks;
* ``+ checkpointing``: ``train.gradient_checkpointing: true``;
* ``+ packing`` (no checkpointing): ``formatting.packing`` on, the causal-LM default: rows of up to
  max_length tokens with several examples each, padding-free; more tokens per step, so compare tokens/s;
* ``+ packing + checkpointing``;
* ``8-bit base`` / ``4-bit base``: ``model.quantize`` (bitsandbytes), on top of the defaults with
  checkpointing, where a backend runs on this machine.

The masked-LM rows time the adapt stage of ``recipes/sst2-minilm-dapt.yaml`` (minilm-l6, 64-token packed
blocks, batch 32) on the shipped SST-2 slice, with logits at every position (before) and at the masked
positions only (now).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

#: the child's prelude for "before": the model returns its full logits and the loss upcasts them at once
FULL_LOGITS = ("import tuneforge.tasks.losses as L\n"
               "L._verified_split = lambda core, inputs: None\n"
               "L.LOSS_CHUNK_LOGITS = 2 ** 62\n")

#: name -> (overrides, prelude)
GSM8K_ROWS = {
    "before (full logits, no packing, no checkpointing)": (["data.formatting.packing=false"], FULL_LOGITS),
    "+ chunked loss at answer positions": (["data.formatting.packing=false"], None),
    "+ chunked loss + checkpointing": (["data.formatting.packing=false", "train.gradient_checkpointing=true"], None),
    "+ chunked loss + packing (the recipe's defaults)": ([], None),
    "+ chunked loss + packing + checkpointing": (["train.gradient_checkpointing=true"], None),
    "defaults + checkpointing + 8-bit base": (["train.gradient_checkpointing=true", "model.quantize.bits=8"], None),
    "defaults + checkpointing + 4-bit NF4 base": (["train.gradient_checkpointing=true", "model.quantize.bits=4"],
                                                  None),
}
MLM_ROWS = {"masked LM, logits at every position (before)": FULL_LOGITS,
            "masked LM, logits at masked positions only": None}


def _row(recipe, steps: int, prelude: str | None) -> dict:
    from tuneforge.plan.measure import measure, timed_steps

    with tempfile.TemporaryDirectory(prefix="levers-") as tmp:
        t0 = time.perf_counter()
        record = measure(recipe, steps, workdir=Path(tmp), prelude=prelude)
        wall = time.perf_counter() - t0
    timed = timed_steps(record)
    tokens = [sum(b * n for b, n in s["shapes"]) for s in timed]  # padded tokens the model ran on
    step = statistics.median(s["seconds"] for s in timed)
    return {"peak_gb": record["peak_rss_bytes"] / 1e9, "s_per_step": step,
            "tokens_per_s": sum(tokens) / sum(s["seconds"] for s in timed),
            "shapes": timed[0]["shapes"], "wall_s": wall}


def _gsm8k(overrides: list[str]):
    from tuneforge.recipe import load_recipe

    return load_recipe(ROOT / "recipes/gsm8k-smollm2-lora.yaml", overrides)


def _mlm():
    from plan_accuracy import _dict_recipe, _masked_lm

    return _dict_recipe(_masked_lm())


def _backend_runs(bits: int) -> str | None:
    """None when a quantisation backend runs here, else why not."""
    try:
        from tuneforge.models.quantize import check_quantize_machine

        check_quantize_machine(_gsm8k([f"model.quantize.bits={bits}"]), device_type="cpu")
        return None
    except Exception as exc:  # noqa: BLE001 - reported in the table instead of a figure
        return str(exc).splitlines()[0]


def main(argv=None) -> int:
    from sft_vs_trl import cpu_line

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--mlm-steps", type=int, default=8)
    p.add_argument("--only", choices=["gsm8k", "mlm"])
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    gsm8k = ROOT / "data/external/gsm8k/train.jsonl"
    lines = []
    if args.only != "mlm":
        if not gsm8k.exists():
            sys.exit(f"{gsm8k} not found: python data/fetch.py gsm8k")
        lines += [f"`recipes/gsm8k-smollm2-lora.yaml` (micro-batch 8, max length 384, LoRA r16 on every linear "
                  f"layer, precision auto), {args.steps} steps per row, each in a fresh process; step time is the "
                  f"median after the first step; tokens/s counts padded tokens.", "",
                  "| configuration | peak RSS | vs before | s/step | tokens/s | first micro-batch |",
                  "|---|---|---|---|---|---|"]
        before = None
        for name, (overrides, prelude) in GSM8K_ROWS.items():
            bits = next((int(o.rsplit("=", 1)[1]) for o in overrides if o.startswith("model.quantize.bits")), None)
            problem = _backend_runs(bits) if bits else None
            if problem:
                lines.append(f"| {name} | not run: {problem} | | | | |")
                print(lines[-1], flush=True)
                continue
            r = _row(_gsm8k(overrides), args.steps, prelude)
            before = before or r
            lines.append(f"| {name} | {r['peak_gb']:.2f} GB | {r['peak_gb'] / before['peak_gb']:.2f}x | "
                         f"{r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | "
                         f"{' + '.join(f'{b}x{n}' for b, n in r['shapes'])} |")
            print(lines[-1], flush=True)
    if args.only != "gsm8k":
        lines += ["", f"Masked-LM adapt stage of `recipes/sst2-minilm-dapt.yaml` (minilm-l6, 64-token blocks, "
                      f"batch 32, precision auto) on the shipped SST-2 slice, {args.mlm_steps} steps per row:", "",
                  "| configuration | peak RSS | s/step | vs before |", "|---|---|---|---|"]
        before = None
        for name, prelude in MLM_ROWS.items():
            r = _row(_mlm(), args.mlm_steps, prelude)
            before = before or r
            lines.append(f"| {name} | {r['peak_gb']:.2f} GB | {r['s_per_step']:.3f} | "
                         f"{r['s_per_step'] / before['s_per_step']:.2f}x |")
            print(lines[-1], flush=True)
    if args.write_docs:
        from _docs import write_section

        head = [f"Command: `python bench/causal_levers.py --steps {args.steps} --write-docs` "
                f"({time.strftime('%Y-%m-%d')}, {cpu_line()}; no GPU; nothing else running).", ""]
        write_section("causal_levers", head + lines, {"steps": args.steps, "cpu": cpu_line()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
