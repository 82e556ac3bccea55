"""Build the positive-review demo's prompt files from the shipped SST-2 slice (data/sst2).

Each prompt asks the model to continue the opening words (the first 4) of a real SST-2 review phrase.
Training and validation prompts come from data/sst2/train.tsv; the 200 test prompts come from the first
half of data/sst2/dev.tsv, never trained on; the other half of dev.tsv is held out as whole sentences for
the perplexity check (reviews.txt). Deterministic: run it again and the files are identical.

    python data/reviews/make_prompts.py
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SST2 = HERE.parent / "sst2"
INSTRUCTION = "Continue this movie review in one or two sentences: \"{opening}\""
OPENING_WORDS = 4


def sentences(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["sentence"].strip() for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]


def opening(sentence: str) -> str | None:
    words = sentence.split()
    if len(words) < 10 or not words[0].isalpha():
        return None
    return " ".join(words[:OPENING_WORDS])


def prompts(openings: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": INSTRUCTION.format(opening=o)}]} for o in openings]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(2026)
    train = list(dict.fromkeys(o for o in map(opening, sentences(SST2 / "train.tsv")) if o))
    rng.shuffle(train)
    dev = sentences(SST2 / "dev.tsv")
    half = len(dev) // 2
    test = list(dict.fromkeys(o for o in map(opening, dev[:half]) if o))[:200]
    held_out = [s for s in dev[half:] if len(s.split()) >= 5][:200]
    write_jsonl(HERE / "prompts_train.jsonl", prompts(train[:256]))
    write_jsonl(HERE / "prompts_validation.jsonl", prompts(train[256:288]))
    write_jsonl(HERE / "prompts_test.jsonl", prompts(test))
    (HERE / "reviews.txt").write_text("\n".join(held_out) + "\n", encoding="utf-8")
    print(f"prompts: 256 train, 32 validation, {len(test)} test; {len(held_out)} held-out review sentences")


if __name__ == "__main__":
    main()
