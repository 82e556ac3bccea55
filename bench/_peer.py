"""Shared by the tuneforge-vs-TRL benchmarks (``sft_vs_trl.py``, ``preference_vs_trl.py``): each side runs
in a fresh process of the same script (``--worker SIDE``) that prints one ``RESULT {json}`` line, its
peak RSS from ``ru_maxrss``, the machine line, and the real (non-pad) tokens a TRL trainer's batches hold."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = "RESULT "


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def cpu_line() -> str:
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, native bf16: {', '.join(native) or 'no'}"


def report(result: dict) -> None:
    """The worker's answer to ``run_side`` (the last thing it prints)."""
    print(RESULT + json.dumps(result), flush=True)


def run_side(script: str | Path, side: str, args: list[str]) -> dict:
    """Run ``script --worker side *args`` in a fresh interpreter (one side at a time, so each is timed
    alone and its peak RSS is its own) and return the dict its worker reported. On failure: the tails
    of its output, then ``SystemExit``."""
    cmd = [sys.executable, str(script), "--worker", side, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(RESULT)), None)
    if proc.returncode != 0 or line is None:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"{side} failed (exit {proc.returncode})")
    return json.loads(line[len(RESULT):])


def count_batch_tokens(trainer) -> dict:
    """Wrap ``trainer``'s data collator to add up the real (attention-mask) tokens of every batch it
    builds from now on, as tuneforge's loop counts them; returns the counter (``counter["n"]``)."""
    counter = {"n": 0}
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        mask = batch.get("attention_mask")
        counter["n"] += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    return counter
