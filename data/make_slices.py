"""Rebuild the small data slices shipped in this folder from full copies of the public data sets.

    python data/make_slices.py ../shared/data     # a folder holding the full data sets (layout below)

The slices are what the test suite and the demo read, so the repository works without the full data.
Each slice is the head of the public file (or named records of it), unchanged: see data/README.md for
every slice's origin and licence. Running this again on the same sources gives byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import sys
from itertools import islice
from pathlib import Path

HERE = Path(__file__).resolve().parent


def head_lines(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8", newline="") as fh:
        dst.write_text("".join(islice(fh, n)), encoding="utf-8", newline="")


def main(full: Path) -> None:
    head_lines(full / "conll2003/train.iob2.txt", HERE / "conll2003/train.head.iob2.txt", 115)
    for lang in ("en", "de"):
        head_lines(full / f"multi30k/train.{lang}", HERE / f"multi30k/train.head.{lang}", 100)
    head_lines(full / "scitldr/dev.jsonl", HERE / "scitldr/dev.head.jsonl", 60)

    # Alpaca demo: the first 50 records, one per line (record i on line i + 2), as the file's own layout.
    records = json.loads((full / "alpaca_demo/alpaca_en_demo.json").read_text(encoding="utf-8"))[:50]
    out = HERE / "alpaca_demo/alpaca_en_demo.head.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n",
                   encoding="utf-8")

    # SQuAD v1.1 dev: two paragraphs in SQuAD layout (the first, and a long one that overflows 128 tokens).
    dev = json.loads((full / "squad_v1.1/dev-v1.1.json").read_text(encoding="utf-8"))
    picked = [(0, 0), (15, 39)]
    doc = {"version": dev["version"], "data": [
        {"title": dev["data"][a]["title"], "paragraphs": [dev["data"][a]["paragraphs"][p]]} for a, p in picked]}
    out = HERE / "squad_v1.1/dev.slice.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    # Tiny Shakespeare is public domain and 1.1 MB: shipped whole.
    (HERE / "tinyshakespeare").mkdir(exist_ok=True)
    shutil.copyfile(full / "tinyshakespeare/input.txt", HERE / "tinyshakespeare/input.txt")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
