"""Length-grouped batches: a permutation, deterministic per (seed, epoch), less padding; sharding; padding."""

import random

import pytest

from tuneforge.data.batching import Encoded, collate, length_grouped_batches, shard, sorted_batches

_RNG = random.Random(1)
LENGTHS = [_RNG.randint(3, 60) for _ in range(1000)]


def padded_tokens(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_every_example_exactly_once():
    batches = length_grouped_batches(LENGTHS, 32, seed=0, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(LENGTHS)))
    assert all(len(b) == 32 for b in batches if b is not batches[-1] and len(b) != 1000 % 32)


def test_deterministic_per_seed_and_epoch():
    a = length_grouped_batches(LENGTHS, 32, seed=3, epoch=1)
    assert a == length_grouped_batches(LENGTHS, 32, seed=3, epoch=1)
    assert a != length_grouped_batches(LENGTHS, 32, seed=3, epoch=2)
    assert a != length_grouped_batches(LENGTHS, 32, seed=4, epoch=1)


def test_grouping_cuts_padding_and_longest_goes_first():
    grouped = length_grouped_batches(LENGTHS, 32, seed=0, epoch=0)
    plain = length_grouped_batches(LENGTHS, 32, seed=0, epoch=0, group_by_length=False)
    real = sum(LENGTHS)
    assert padded_tokens(grouped, LENGTHS) < 1.2 * real  # under 20% padding
    assert padded_tokens(plain, LENGTHS) > 1.5 * real  # random batches pad far more
    assert max(LENGTHS[i] for i in grouped[0]) == max(LENGTHS)


def test_shard_partitions_a_global_batch():
    batch = list(range(10))
    parts = [shard(batch, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == batch
    assert [len(p) for p in parts] == [4, 3, 3]


def test_sorted_batches_cover_all_longest_first():
    batches = sorted_batches(LENGTHS, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert LENGTHS[batches[0][0]] == max(LENGTHS)


def test_collate_pads_to_longest_in_batch():
    enc = Encoded(input_ids=[[5, 6, 7], [8], [9, 10]], labels=[1, 0, 1])
    out = collate(enc, [1, 2], pad_id=0)
    assert out["input_ids"].tolist() == [[8, 0], [9, 10]]
    assert out["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["labels"].tolist() == [0, 1]
    assert collate(enc, [0], pad_id=0, pad_to_multiple_of=8)["input_ids"].shape == (1, 8)


def test_bad_batch_size():
    with pytest.raises(ValueError):
        length_grouped_batches(LENGTHS, 0, seed=0, epoch=0)
