"""data/fetch.py (the full data sets the big recipes read) and the missing-data message of validate/run.

No network: the public URLs are replaced by file:// URLs of archives built here, in the same layout.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "data"))
import fetch  # noqa: E402 - data/fetch.py, a script


def _fake(monkeypatch, tmp_path, name, files):
    monkeypatch.setitem(fetch.DATASETS, name, fetch.Dataset("test licence", tuple(files)))


def test_zip_and_gzip_members_are_extracted_and_checksummed(tmp_path, monkeypatch, capsys):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("SST-2/train.tsv", "sentence\tlabel\ngood\t1\n")
        z.writestr("SST-2/dev.tsv", "sentence\tlabel\nbad\t0\n")
    (tmp_path / "SST-2.zip").write_bytes(buf.getvalue())
    (tmp_path / "val.en.gz").write_bytes(gzip.compress(b"A dog.\n"))
    url = (tmp_path / "SST-2.zip").as_uri()
    dev_sha = hashlib.sha256(b"sentence\tlabel\nbad\t0\n").hexdigest()
    _fake(monkeypatch, tmp_path, "demo", [fetch.File("train.tsv", url, "SST-2/train.tsv", "0" * 64),
                                          fetch.File("dev.tsv", url, "SST-2/dev.tsv", dev_sha),
                                          fetch.File("val.en", (tmp_path / "val.en.gz").as_uri(), "gunzip")])
    out = tmp_path / "external"
    written = fetch.fetch("demo", out)
    assert [p.relative_to(out).as_posix() for p in written] == ["demo/train.tsv", "demo/dev.tsv", "demo/val.en"]
    assert (out / "demo/dev.tsv").read_text() == "sentence\tlabel\nbad\t0\n"
    assert (out / "demo/val.en").read_bytes() == b"A dog.\n"
    printed = capsys.readouterr().out
    assert printed.count("downloading") == 2  # the zip once for both of its files
    assert "train.tsv (22 bytes; sha256" in printed and "DIFFERS from the development copy" in printed
    assert "dev.tsv (21 bytes" in printed and "same as the development copy" in printed
    assert printed.rstrip().endswith("...)")  # val.en: no development checksum to compare with
    assert not list(out.rglob("*.part"))


def test_from_a_local_folder_and_a_missing_file(tmp_path, monkeypatch):
    (tmp_path / "src/demo").mkdir(parents=True)
    (tmp_path / "src/demo/a.txt").write_text("x\n")
    _fake(monkeypatch, tmp_path, "demo", [fetch.File("a.txt", "https://unused.invalid/a.txt")])
    fetch.fetch("demo", tmp_path / "out", source_dir=tmp_path / "src")
    assert (tmp_path / "out/demo/a.txt").read_text() == "x\n"
    _fake(monkeypatch, tmp_path, "demo", [fetch.File("b.txt", "https://unused.invalid/b.txt")])
    with pytest.raises(SystemExit, match="b.txt not found"):
        fetch.fetch("demo", tmp_path / "out", source_dir=tmp_path / "src")
    with pytest.raises(SystemExit, match="unknown data set 'nope'; known: sst2, conll2003"):
        fetch.fetch("nope", tmp_path / "out")


def test_validate_names_the_missing_file_and_the_recipes_hint(tmp_path):
    recipe = REPO / "recipes" / "conll2003-minilm-ner.yaml"
    if (REPO / "data/external/conll2003/train.iob2.txt").exists():
        recipe_text = recipe.read_text().replace("data/external/conll2003/", f"{tmp_path}/nowhere/")
        recipe = tmp_path / "conll2003-minilm-ner.yaml"
        recipe.write_text(recipe_text)
        missing = f"{tmp_path}/nowhere/train.iob2.txt"
    else:
        missing = "data/external/conll2003/train.iob2.txt"
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "validate", str(recipe)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert f"error: data.train_file: data file not found: {missing}" in err
    assert ("says: Data (not shipped; CoNLL-2003 English (Reuters); research use only): get it with "
            "`python data/fetch.py conll2003` (from https://data.deepai.org/conll2003.zip)") in err
