"""Download the public data sets that the full-size recipes read, into data/external/ (git-ignored).

    python data/fetch.py conll2003                 # from the data set's public source
    python data/fetch.py --all
    python data/fetch.py --from ~/datasets sst2    # copy from a local folder laid out as NAME/FILE
    python data/fetch.py --list

The repository ships only small slices (data/README.md): the licences of several of these data sets
allow research use only, so a user fetches them. Each file is written atomically (a killed download
leaves no half file) and its sha256 is compared with the copy the figures in docs/ were measured on:
a difference is reported, not refused, since a public source may re-release its files.
Standard library only, so it runs before `make install`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

EXTERNAL = Path(__file__).resolve().parent / "external"


@dataclass(frozen=True)
class File:
    name: str  # written as data/external/<data set>/<name>
    url: str
    member: str | None = None  # the file inside a .zip, or "gunzip" for a .gz
    sha256: str | None = None  # the development copy's checksum


@dataclass(frozen=True)
class Dataset:
    licence: str
    files: tuple[File, ...]


DATASETS: dict[str, Dataset] = {
    "sst2": Dataset("GLUE SST-2 (Socher et al. 2013); research use", (
        File("train.tsv", "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip", "SST-2/train.tsv",
             "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1"),
        File("dev.tsv", "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip", "SST-2/dev.tsv",
             "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
    )),
    "conll2003": Dataset("CoNLL-2003 English (Reuters); research use only", (
        File("train.iob2.txt", "https://data.deepai.org/conll2003.zip", "train.txt",
             "518a3f065fc98c6fb382a1c76c6a923aea0b77856122d79704e5fa2bfe8dfd3a"),
        File("valid.iob2.txt", "https://data.deepai.org/conll2003.zip", "valid.txt",
             "52ed19ce93a8c1bf3ecedfe7d3834dc7df057c2d24f5c6b99a8d2e4d1bd32311"),
    )),
    "multi30k": Dataset("Multi30k task 1 (Elliott et al. 2016); non-commercial research", tuple(
        File(f"{split}.{lang}", f"https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
             f"{split}.{lang}.gz", "gunzip", sha)
        for split, lang, sha in [
            ("train", "en", "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6"),
            ("train", "de", "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"),
            ("val", "en", "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"),
            ("val", "de", "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"),
        ])),
    "scitldr": Dataset("SciTLDR-A (Cachola et al. 2020); Apache-2.0", tuple(
        File(f"{split}.jsonl", f"https://raw.githubusercontent.com/allenai/scitldr/master/SciTLDR-Data/SciTLDR-A/"
             f"{split}.jsonl", None, sha)
        for split, sha in [("train", "b222771d387be585cfdf5ae957b36757138415a352e0a3e3b23f73f87c3b1119"),
                           ("dev", "3191fa98ccc09521332b7a1cd63b1930be4e8df125a235ccd31e40329709525e")])),
    "squad_v1.1": Dataset("SQuAD v1.1 (Rajpurkar et al. 2016); CC BY-SA 4.0", (
        File("dev-v1.1.json", "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json", None,
             "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9"),
    )),
    "gsm8k": Dataset("GSM8K (Cobbe et al. 2021); MIT", (
        File("train.jsonl", "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/"
             "data/train.jsonl", None, "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
    )),
}


def _download(url: str, cache: dict[str, bytes]) -> bytes:
    # One archive serves several files (SST-2's zip has train and dev): download it once.
    if url not in cache:
        print(f"  downloading {url}", flush=True)
        with urllib.request.urlopen(url, timeout=120) as response:
            cache[url] = response.read()
    return cache[url]


def _extract(blob: bytes, member: str | None) -> bytes:
    if member is None:
        return blob
    if member == "gunzip":
        return gzip.decompress(blob)
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return archive.read(member)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(name: str, out: Path = EXTERNAL, source_dir: Path | None = None) -> list[Path]:
    """Write every file of data set ``name`` under ``out/name``; return their paths."""
    if name not in DATASETS:
        raise SystemExit(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    cache: dict[str, bytes] = {}
    written = []
    for f in DATASETS[name].files:
        if source_dir is not None:
            local = source_dir / name / f.name
            if not local.is_file():
                raise SystemExit(f"{local} not found (--from expects {source_dir}/{name}/{f.name})")
            data = local.read_bytes()
        else:
            data = _extract(_download(f.url, cache), f.member)
        target = out / name / f.name
        _write_atomic(target, data)
        digest = hashlib.sha256(data).hexdigest()
        same = ("" if f.sha256 is None else
                " same as the development copy" if digest == f.sha256 else " DIFFERS from the development copy")
        print(f"  {target} ({len(data):,} bytes; sha256 {digest[:12]}...{same})")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="data sets to fetch (see --list)")
    parser.add_argument("--all", action="store_true", help="fetch every data set")
    parser.add_argument("--list", action="store_true", help="list the data sets and their licences")
    parser.add_argument("--from", dest="source_dir", type=Path, help="copy from a local folder (NAME/FILE)")
    parser.add_argument("--out", type=Path, default=EXTERNAL, help="where to write (default data/external)")
    args = parser.parse_args(argv)
    if args.list or not (args.names or args.all):
        for name, ds in DATASETS.items():
            print(f"{name:12s} {ds.licence}: {', '.join(f.name for f in ds.files)}")
        return 0
    for name in DATASETS if args.all else args.names:
        print(f"{name}: {DATASETS[name].licence if name in DATASETS else '?'}")
        fetch(name, args.out, args.source_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
