"""Sequence packing: placement per strategy, boundaries, position ids, labels, splitting, efficiency."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tuneforge.data.formatting import IGNORE_INDEX, FormattedExample
from tuneforge.data.packing import (
    PackedSequence,
    pack_examples,
    pack_with_stats,
    packed_to_columns,
)


def doc(k: int, n: int) -> FormattedExample:
    """Document k: n tokens with ids k*1000 + i, so every token says which document it came from."""
    ids = [k * 1000 + i for i in range(n)]
    return FormattedExample(ids, list(ids), origin=f"d:{k}")


def documents_of(seq: PackedSequence) -> list[int]:
    return [seq.input_ids[start] // 1000 for start in seq.cu_seqlens[:-1]]


LENGTHS = [6, 5, 4, 3, 2]


def test_ffd_places_longest_first_into_the_first_sequence_with_room():
    packed, stats = pack_with_stats([doc(k, n) for k, n in enumerate(LENGTHS)], 8)
    # 6 -> seq0, 5 -> seq1, 4 -> seq2, 3 -> seq1 (fills it), 2 -> seq0 (fills it)
    assert [documents_of(p) for p in packed] == [[0, 4], [1, 3], [2]]
    assert [p.seq_lens for p in packed] == [[6, 2], [5, 3], [4]]
    assert (stats.sequences, stats.tokens, stats.documents, stats.split_documents) == (3, 20, 5, 0)
    assert stats.efficiency == pytest.approx(20 / 24)


def test_greedy_keeps_input_order():
    packed, stats = pack_with_stats([doc(k, n) for k, n in enumerate(LENGTHS)], 8, strategy="greedy")
    assert [documents_of(p) for p in packed] == [[0], [1], [2, 3], [4]]
    assert stats.efficiency == pytest.approx(20 / 32)


def test_position_ids_restart_and_boundaries_are_recorded():
    (seq,) = pack_examples([doc(1, 3), doc(2, 4)], 8, strategy="greedy")
    assert seq.input_ids == [1000, 1001, 1002, 2000, 2001, 2002, 2003]
    assert seq.position_ids == [0, 1, 2, 0, 1, 2, 3]
    assert seq.seq_lens == [3, 4]
    assert seq.cu_seqlens == [0, 3, 7]


def test_first_label_of_each_document_is_masked_and_inner_masks_are_kept():
    prompt_then_reply = FormattedExample([7, 8, 9, 10], [IGNORE_INDEX, IGNORE_INDEX, 9, 10])
    (seq,) = pack_examples([doc(1, 3), prompt_then_reply], 8, strategy="greedy")
    assert seq.labels == [IGNORE_INDEX, 1001, 1002, IGNORE_INDEX, IGNORE_INDEX, 9, 10]


def test_no_document_is_split_when_it_fits_and_every_token_is_kept():
    rng = random.Random(0)
    docs = [doc(k, rng.randint(1, 64)) for k in range(300)]
    for strategy in ("ffd", "greedy"):
        packed = pack_examples(docs, 64, strategy=strategy)
        assert all(len(p) <= 64 for p in packed)
        # each document's ids appear in exactly one sequence, contiguously and in order
        seen = Counter()
        for p in packed:
            for start, n in zip(p.cu_seqlens, p.seq_lens):
                piece = p.input_ids[start : start + n]
                k = piece[0] // 1000
                assert piece == docs[k].input_ids
                seen[k] += 1
        assert seen == Counter(range(300))
    ffd, greedy = pack_with_stats(docs, 64)[1], pack_with_stats(docs, 64, strategy="greedy")[1]
    assert ffd.tokens == greedy.tokens == sum(len(d) for d in docs)
    assert ffd.sequences < greedy.sequences
    assert ffd.efficiency > 0.97


def test_over_long_document_is_cut_into_max_length_pieces():
    packed, stats = pack_with_stats([doc(1, 20), doc(2, 3)], 8)
    assert [p.seq_lens for p in packed] == [[8], [8], [4, 3]]
    assert stats.split_documents == 1 and stats.documents == 4
    assert [t for p in packed for t in p.input_ids] == doc(1, 20).input_ids + doc(2, 3).input_ids
    # each piece starts at position 0 and its first label is masked: it attends to nothing before it
    assert packed[1].position_ids[0] == 0 and packed[1].labels[0] == IGNORE_INDEX


def test_dict_examples_and_empty_ones():
    packed = pack_examples([{"input_ids": [1, 2]}, {"input_ids": []}, {"input_ids": [3], "labels": [IGNORE_INDEX]}], 4)
    assert len(packed) == 1
    assert packed[0].input_ids == [1, 2, 3]
    assert packed[0].labels == [IGNORE_INDEX, 2, IGNORE_INDEX]
    assert packed[0].seq_lens == [2, 1]


def test_nothing_to_pack():
    packed, stats = pack_with_stats([], 16)
    assert packed == [] and stats.efficiency == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown packing strategy 'best' \\(allowed: ffd, greedy\\)"):
        pack_examples([doc(1, 2)], 8, strategy="best")
    with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
        pack_examples([doc(1, 2)], 0)
    with pytest.raises(ValueError, match="2 input_ids but 1 labels"):
        pack_examples([{"input_ids": [1, 2], "labels": [1]}], 8)


def test_columns_for_the_cache():
    packed = pack_examples([doc(1, 2), doc(2, 2)], 4)
    cols = packed_to_columns(packed)
    assert cols == {
        "input_ids": [[1000, 1001, 2000, 2001]],
        "labels": [[IGNORE_INDEX, 1001, IGNORE_INDEX, 2001]],
        "position_ids": [[0, 1, 0, 1]],
        "seq_lens": [[2, 2]],
    }
