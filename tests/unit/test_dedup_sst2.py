"""Deduplication and decontamination on real data: SST-2 train with injected copies.

The corpus is the repository's 20,000-row sample of the SST-2 training set plus
* 5% exact duplicates of random rows,
* 5% near-duplicates of random sentences with at least 10 words: one word replaced, the case
  changed, or punctuation changed (a one-word edit of a 3-word phrase is a different phrase, not a
  near-duplicate, hence the length floor for the near-duplicate sources),
* 200 rows copied from the dev set, which decontamination must flag.
Everything is shuffled with a fixed seed. SST-2 itself contains natural duplicates (it holds
overlapping sub-phrases of the same sentences); a detection counts as correct when the cited row
is the injected partner or has the same normalised text as it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tuneforge.data.dedup import DecontaminateConfig, DedupConfig, Duplicate, decontaminate, deduplicate
from tuneforge.data.minhash import normalize_for_dedup, shingles
from tuneforge.data.records import Row

# The repository's SST-2 slice (20,000 rows sampled from the 67k training set, and the full dev set):
# present on every clone, so this test never silently skips.
SST2 = Path(__file__).resolve().parents[2] / "data" / "sst2"


def _sentences(path: Path) -> list[str]:
    return [line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()[1:]]


def _near_copy(text: str, rng: random.Random, vocab: list[str], kind: int) -> str:
    words = text.split()
    if kind == 0:  # one word replaced
        i = rng.randrange(len(words))
        words[i] = rng.choice([w for w in vocab if w != words[i]])
        return " ".join(words)
    if kind == 1:  # case changed
        return text.upper() if rng.random() < 0.5 else text.capitalize()
    # punctuation changed: drop or add a mark
    marks = [i for i, w in enumerate(words) if w in {",", ".", "!", "?", ";", "--"}]
    if marks:
        del words[rng.choice(marks)]
    else:
        words.insert(rng.randrange(1, len(words)), ",")
    return " ".join(words) + " !"


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(2026)
    train = _sentences(SST2 / "train.tsv")
    dev = _sentences(SST2 / "dev.tsv")
    vocab = sorted({w for s in train[:5000] for w in s.split() if w.isalpha() and len(w) > 3})
    n = len(train)
    items = [(t, "orig", i) for i, t in enumerate(train)]
    exact_src = rng.sample(range(n), n // 20)
    items += [(train[i], "exact", i) for i in exact_src]
    long_rows = [i for i, t in enumerate(train) if len(t.split()) >= 10]
    near_src = rng.sample(long_rows, n // 20)
    items += [(_near_copy(train[i], rng, vocab, k % 3), "near", i) for k, i in enumerate(near_src)]
    dev_src = rng.sample(range(len(dev)), 200)
    items += [(dev[i], "dev", i) for i in dev_src]
    rng.shuffle(items)
    rows = [Row("text", {"text": t, "label": None}, "corpus", line + 1) for line, (t, _, _) in enumerate(items)]
    return {"rows": rows, "items": items, "train": train, "dev": dev}


def test_dedup_and_decontamination_on_sst2(corpus):
    rows, items = corpus["rows"], corpus["items"]
    norm = {}

    def key(line: int) -> str:  # normalised text of corpus line (1-based)
        if line not in norm:
            norm[line] = normalize_for_dedup(items[line - 1][0])
        return norm[line]

    # line of the original (unmodified) training row i in the shuffled corpus
    orig_line = {src: line + 1 for line, (_, kind, src) in enumerate(items) if kind == "orig"}

    cfg = DedupConfig()
    out = list(deduplicate(rows, cfg))
    assert len(out) == len(rows)  # every row comes back: kept, or as a Duplicate naming its original
    dups = {d.row.line: d for d in out if isinstance(d, Duplicate)}

    # Duplicate clusters: a row and the row it cites are in one cluster. "First one wins" means
    # an injected copy may cite a third row (e.g. the original was itself dropped as a copy of an
    # earlier near-copy), so a pair counts as caught when both of its rows are in one cluster.
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for line, d in dups.items():
        parent[find(line)] = find(int(d.of.rsplit(":", 1)[1]))

    def detected(line: int, partner: int) -> bool:
        return (line in dups or partner in dups) and find(line) == find(partner)

    exact = [(line + 1, orig_line[src]) for line, (_, kind, src) in enumerate(items) if kind == "exact"]
    missed_exact = [p for p in exact if not detected(*p)]
    assert not missed_exact, f"{len(missed_exact)} exact copies not found, e.g. {missed_exact[:3]}"

    near = [(line + 1, orig_line[src]) for line, (_, kind, src) in enumerate(items) if kind == "near"]
    found = [p for p in near if detected(*p)]
    recall = len(found) / len(near)
    # Precision on the injected pairs: of the injected near-copies (or their originals) that were
    # dropped, how many were grouped with their true partner rather than with some other row.
    flagged = [p for p in near if p[0] in dups or p[1] in dups]
    precision = len(found) / len(flagged)
    assert recall >= 0.95, f"near-duplicate recall {recall:.3f}"
    assert precision >= 0.95, f"near-duplicate precision {precision:.3f}"

    # And every near-duplicate flag in the whole corpus (injected or natural) is a real one: its
    # exact shingle Jaccard with the cited row is close to the threshold or above.
    def jaccard(a: int, b: int) -> float:
        sa = set(shingles(key(a), cfg.shingle_size))
        sb = set(shingles(key(b), cfg.shingle_size))
        return len(sa & sb) / len(sa | sb)

    near_flags = [d for d in dups.values() if d.kind == "near"]
    real = sum(jaccard(d.row.line, int(d.of.rsplit(":", 1)[1])) >= cfg.threshold - 0.1 for d in near_flags)
    assert real / len(near_flags) >= 0.95

    # Decontamination: the dev copies must be flagged against the dev set.
    kept = [r for r in out if isinstance(r, Row)]
    dev_rows = [Row("text", {"text": t, "label": None}, "dev.tsv", i + 2) for i, t in enumerate(corpus["dev"])]
    hits = [d for d in decontaminate(kept, {"validation": dev_rows}, DecontaminateConfig(), cfg)
            if isinstance(d, Duplicate)]
    dev_lines = {line + 1 for line, (_, kind, _) in enumerate(items) if kind == "dev"}
    flagged_dev = {d.row.line for d in hits} & dev_lines
    # A dev copy may already have been dropped by dedup as a copy of a natural SST-2 twin; count
    # those as caught only if dedup removed them (they cannot leak then).
    removed_by_dedup = dev_lines & set(dups)
    assert len(flagged_dev | removed_by_dedup) >= 195, (len(flagged_dev), len(removed_by_dedup))
    assert all(d.against == "validation" and d.of.startswith("dev.tsv:") for d in hits)
