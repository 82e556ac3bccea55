"""Derive the GSM8K solution-steps regression data from GSM8K's training file.

Target: the number of arithmetic operations in the reference solution, counted as its calculator
annotations (``<<48/2=24>>``), which GSM8K's authors wrote for every computation step. It measures
how much work a question needs: a problem-difficulty score that a tutor or a data-selection step
can use, predicted from the question alone.

    python data/gsm8k_steps/derive.py ../shared/data/gsm8k/train.jsonl data/gsm8k_steps

Writes train.jsonl (3,000 rows) and validation.jsonl (500 rows), ``{"question", "steps"}``, from a
seeded shuffle; the same input gives byte-identical files.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED, N_TRAIN, N_VALIDATION = 2026, 3000, 500


def steps(answer: str) -> int:
    """Calculator annotations in a GSM8K reference solution: one per arithmetic step."""
    return answer.count("<<")


def main(source: str, out_dir: str) -> None:
    rows = [json.loads(line) for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(SEED).shuffle(rows)
    out = Path(out_dir)
    for name, part in (("train", rows[:N_TRAIN]), ("validation", rows[N_TRAIN:N_TRAIN + N_VALIDATION])):
        lines = [json.dumps({"question": r["question"], "steps": steps(r["answer"])}, ensure_ascii=False)
                 for r in part]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
