"""What a clone elsewhere needs: no absolute path of a development machine in the shipped tree."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO

# A path rooted in a machine's folders (the repository's checkout, a home, the temporary folder, a
# system prefix); URLs are not paths. Temporary files go through tmp_path/tempfile instead.
ABSOLUTE = re.compile(r"(?<![\w.~$:/-])/(?:work|root|home|tmp|Users|opt|usr|var|mnt|srv|private)/")
WINDOWS = re.compile(r"\b[A-Z]:\\\\?(?:Users|work|tmp)")


def tracked(*folders: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *folders], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_no_absolute_machine_path_in_src_tests_docs_recipes():
    found = []
    files = tracked("src", "tests", "docs", "recipes")
    assert len(files) > 100
    for name in files:
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary (a plot) or deleted in the work tree
        for number, line in enumerate(text.splitlines(), 1):
            if ABSOLUTE.search(line) or WINDOWS.search(line):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert found == []


def test_the_pattern_catches_what_it_should():
    work = "/" + "work"  # built, so that this file holds no machine path itself
    assert ABSOLUTE.search(f'CONLL = Path("{work}/shared/data/conll2003/train.iob2.txt")')
    assert ABSOLUTE.search("git clone . /" + "tmp/fresh") and ABSOLUTE.search("`/" + "usr/bin/time -v`")
    assert not ABSOLUTE.search(f"see https://example.org/home/x and runs/<name>/data/ and ~{work}/x")
