"""Shared by the benchmarks: put a generated section between markers in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS_MD = ROOT / "docs" / "benchmarks.md"


def write_section(name: str, section_lines: list[str], report: dict) -> None:
    """Replace (or append) the ``<!-- name:start -->``...``<!-- name:end -->`` block of
    docs/benchmarks.md with ``section_lines`` and write ``report`` to docs/bench/<name>.json."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = "\n".join([start, *section_lines, end])
    text = DOCS_MD.read_text() if DOCS_MD.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS_MD.parent.mkdir(parents=True, exist_ok=True)
    DOCS_MD.write_text(text)
    out = ROOT / "docs" / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {DOCS_MD} and {out}")
