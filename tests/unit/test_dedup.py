"""MinHash signatures match datasketch; dedup keeps the first row, names the original, streams."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash

from tuneforge.data.dedup import DecontaminateConfig, DedupConfig, Duplicate, decontaminate, deduplicate
from tuneforge.data.minhash import normalize_for_dedup, shingle_hash, shingles, signatures
from tuneforge.data.records import Row

SENTENCES = [
    "the film is a charming , funny and moving portrait of friendship",
    "an ambitious , messy and ultimately rewarding piece of cinema",
    "Ünïcode text — with dashes, accents and a café",
    "a",
    "",
    "?!",
]


def _rows(texts, source="train.jsonl"):
    return [Row("text", {"text": t, "label": None}, source, i + 1) for i, t in enumerate(texts)]


@pytest.mark.parametrize("unit,size", [("char", 5), ("char", 3), ("word", 2)])
def test_signatures_equal_datasketch_minhash(unit, size):
    texts = [normalize_for_dedup(t) for t in SENTENCES]
    ours = signatures(texts, 64, 7, size=size, unit=unit)
    for text, sig in zip(texts, ours):
        ref = MinHash(num_perm=64, seed=7, hashfunc=shingle_hash)
        ref.update_batch(shingles(text, size, unit))
        np.testing.assert_array_equal(ref.hashvalues, sig)


def test_normalisation_ignores_case_punctuation_and_spacing():
    assert normalize_for_dedup("  Great   movie!! ") == normalize_for_dedup("great movie .") == "great movie"


def test_exact_duplicates_keep_the_first_and_name_it():
    rows = _rows(["Good film.", "bad film", "good   FILM", "bad film"])
    out = list(deduplicate(rows, DedupConfig(near=False)))
    assert [isinstance(r, Row) for r in out] == [True, True, False, False]
    assert (out[2].of, out[2].kind, out[3].of) == ("train.jsonl:1", "exact", "train.jsonl:2")
    assert out[2].rejected().reason == "exact duplicate of train.jsonl:1"


def test_near_duplicate_found_and_reported_with_similarity():
    base = "the film is a charming , funny and moving portrait of an unlikely friendship between two men"
    edited = base.replace("charming", "delightful")
    other = "a dull , lifeless thriller that never finds its footing or its audience at any point"
    out = list(deduplicate(_rows([base, other, edited]), DedupConfig()))
    assert isinstance(out[0], Row) and isinstance(out[1], Row)
    dup = out[2]
    assert isinstance(dup, Duplicate) and dup.kind == "near" and dup.of == "train.jsonl:1"
    assert 0.6 <= dup.similarity < 1.0
    assert dup.rejected().reason.startswith("near-duplicate of train.jsonl:1 (similarity 0.")


def test_result_does_not_depend_on_chunking():
    rng = random.Random(0)
    words = "good bad film movie plot actor scene story funny dull long short great".split()
    base = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    texts = base + [t.replace(t.split()[3], "zzz", 1) for t in base[:100]] + base[:50]
    rng.shuffle(texts)
    rows = _rows(texts)

    def summary(chunk):
        out = deduplicate(rows, DedupConfig(chunk_size=chunk))
        return [(r.row.line, r.of, r.kind) if isinstance(r, Duplicate) else r.line for r in out]

    one_chunk = summary(10_000)
    assert summary(64) == one_chunk  # 7 chunks, with several segment merges
    assert sum(isinstance(x, tuple) for x in one_chunk) >= 150  # the 50 exact + most of the 100 near


def test_decontamination_drop_names_the_eval_row_and_split():
    train = _rows(["a brand new sentence about a film", "Copied from the dev set, verbatim!", "another one"])
    dev = _rows(["copied from the dev set verbatim"], source="dev.tsv")
    out = list(decontaminate(train, {"validation": dev}, DecontaminateConfig()))
    hit = out[1]
    assert isinstance(hit, Duplicate) and (hit.of, hit.against, hit.kind) == ("dev.tsv:1", "validation", "exact")
    assert hit.rejected().reason == "exact duplicate of dev.tsv:1 (validation set)"
    assert [isinstance(r, Row) for r in out] == [True, False, True]
    # training rows are only compared with evaluation rows, never with each other
    twice = _rows(["same row", "same row"])
    assert all(isinstance(r, Row) for r in decontaminate(twice, {"test": dev}, DecontaminateConfig()))


def test_bands_must_divide_num_perm():
    with pytest.raises(ValueError, match=r"dedup.bands \(10\) must divide dedup.num_perm \(128\)"):
        DedupConfig(bands=10)


def test_rows_with_different_labels_are_not_duplicates():
    rows = [Row("text", {"text": t, "label": lab}, "t.tsv", i + 1)
            for i, (t, lab) in enumerate([("not a good film", "neg"), ("not a good film", "pos"),
                                          ("Not a good film!", "neg")])]
    out = list(deduplicate(rows, DedupConfig()))
    assert [isinstance(r, Row) for r in out] == [True, True, False]
    assert out[2].of == "t.tsv:1"
    # opting out compares texts only
    out = list(deduplicate(rows, DedupConfig(same_label_only=False)))
    assert [isinstance(r, Row) for r in out] == [True, False, False]
