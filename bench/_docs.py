"""Shared by the benchmarks: put a generated section between markers in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS_MD = ROOT / "docs" / "benchmarks.md"


def replace_section(path: Path, name: str, section_lines: list[str], title: str = "# Benchmarks") -> None:
    """Replace (or append) the ``<!-- name:start -->``...``<!-- name:end -->`` block of ``path``; the
    hand-written text around the markers is kept."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = "\n".join([start, *section_lines, end])
    text = path.read_text() if path.exists() else title + "\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_section(name: str, section_lines: list[str], report: dict) -> None:
    """Replace the ``name`` block of docs/benchmarks.md and write ``report`` to docs/bench/<name>.json."""
    replace_section(DOCS_MD, name, section_lines)
    out = ROOT / "docs" / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable(json.dumps(report, indent=2)) + "\n")
    print(f"wrote {DOCS_MD} and {out}")


def portable(text: str) -> str:
    """Drop this machine's absolute paths from a report: the repository, the venv's site-packages, the
    shared data folder beside the checkout and the temporary folder become ``<repo>``, ``<site-packages>``,
    ``<shared>`` and ``<tmp>``."""
    import sysconfig
    import tempfile

    for prefix, name in ((sysconfig.get_paths()["purelib"], "<site-packages>"), (str(ROOT), "<repo>"),
                         (str(ROOT.parent / "shared"), "<shared>"), (tempfile.gettempdir(), "<tmp>")):
        text = text.replace(prefix + "/", name + "/")
    return text
