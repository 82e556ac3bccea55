"""Splits: the two-way stratified split, and train/validation/test with stratification and groups
(exact sizes, per-class proportions, no group in two splits, determinism, clear errors)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from tuneforge.data.records import Row
from tuneforge.data.split import SplitConfig, SplitIndices, split_indices, split_rows, stratified_split
from tuneforge.errors import DataError

# Imbalanced, with a class count (37) whose target (37 * 0.2 = 7.4) is not a whole row.
LABELS = [0] * 500 + [1] * 37 + [2] * 120
LABELS = [LABELS[(i * 7919) % len(LABELS)] for i in range(len(LABELS))]  # interleave classes


def test_per_class_proportions_within_one_row():
    train, val = stratified_split(LABELS, 0.2, seed=13)
    per_class_val = Counter(LABELS[i] for i in val)
    for label, n in Counter(LABELS).items():
        assert abs(per_class_val[label] - n * 0.2) <= 1, (label, per_class_val[label], n)


def test_indices_sorted_disjoint_and_complete():
    train, val = stratified_split(LABELS, 0.25, seed=0)
    assert train == sorted(train) and val == sorted(val)
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(len(LABELS)))


def test_same_seed_same_split_different_seed_different_split():
    assert stratified_split(LABELS, 0.2, seed=1) == stratified_split(LABELS, 0.2, seed=1)
    assert stratified_split(LABELS, 0.2, seed=1) != stratified_split(LABELS, 0.2, seed=2)


def test_tiny_classes_keep_a_training_row():
    labels = [0] * 10 + [1] + [2, 2]
    train, val = stratified_split(labels, 0.9, seed=0)
    train_classes = Counter(labels[i] for i in train)
    assert train_classes[1] == 1  # a single-row class stays in train
    assert train_classes[2] >= 1  # a class with >= 2 rows keeps at least one in train
    assert train_classes[0] >= 1


def test_empty_labels():
    assert stratified_split([], 0.1, seed=0) == ([], [])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_fraction_must_be_strictly_between_zero_and_one(fraction):
    with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\)"):
        stratified_split([0, 1, 0, 1], fraction, seed=0)


# ================================================================ train/validation/test splits


def three_way(n, labels=None, groups=None, val=0.1, test=0.2, seed=0) -> SplitIndices:
    return split_indices(n, labels=labels, groups=groups, validation_fraction=val, test_fraction=test, seed=seed)


def sizes(parts) -> list[int]:
    return [len(p) for p in parts]


def varied_groups(n_groups=250, seed=0) -> list[str]:
    """Group keys for rows: groups of 1 to 25 rows, interleaved like rows of a real file."""
    rng = random.Random(seed)
    groups = [f"doc{g}" for g in range(n_groups) for _ in range(rng.randint(1, 25))]
    rng.shuffle(groups)
    return groups


def assert_partition(parts, n):
    for part in parts:
        assert part == sorted(part)
    assert sorted(parts.train + parts.validation + parts.test) == list(range(n))


@pytest.mark.parametrize(
    "n, val, test, expected",
    [
        (1000, 0.1, 0.2, [700, 100, 200]),
        (10, 0.25, 0.0, [7, 3, 0]),  # 2.5 validation rows: the half goes to the held-out split
        (10, 0.25, 0.25, [5, 3, 2]),  # one spare row, tie: validation first, then test
        (7, 0.1, 0.1, [5, 1, 1]),  # 0.7 rows each round up; train keeps the rest
        (4, 0.1, 0.1, [2, 1, 1]),  # 0.4 rows would round to 0: a wanted split gets at least one
        (3, 0.0, 0.0, [3, 0, 0]),
    ],
)
def test_split_sizes_are_exact(n, val, test, expected):
    parts = three_way(n, val=val, test=test)
    assert sizes(parts) == expected
    assert_partition(parts, n)


def test_sizes_do_not_depend_on_labels():
    stratified = three_way(len(LABELS), labels=LABELS, val=0.15, test=0.15, seed=4)
    plain = three_way(len(LABELS), val=0.15, test=0.15, seed=4)
    assert sizes(stratified) == sizes(plain) == [460, 99, 98]  # 459.9, 98.55, 98.55: largest remainders win
    assert stratified != plain


def test_zero_test_fraction_gives_empty_test():
    parts = three_way(len(LABELS), labels=LABELS, val=0.2, test=0.0)
    assert parts.test == []
    assert sizes(parts) == [526, 131, 0]


def test_same_seed_same_three_way_split_different_seed_differs():
    cases = [(None, None), (LABELS, None), (None, varied_groups()), (LABELS[:300], varied_groups()[:300])]
    for labels, groups in cases:
        n = len(groups) if groups else len(LABELS)
        assert three_way(n, labels, groups, seed=5) == three_way(n, labels, groups, seed=5)
        assert three_way(n, labels, groups, seed=5) != three_way(n, labels, groups, seed=6)


def test_stratified_each_class_within_one_row_of_its_share_in_every_split():
    parts = three_way(len(LABELS), labels=LABELS, val=0.1, test=0.2, seed=13)
    totals = Counter(LABELS)
    for part, fraction in zip(parts, (0.7, 0.1, 0.2)):
        counts = Counter(LABELS[i] for i in part)
        for label, n in totals.items():
            assert abs(counts[label] - n * fraction) < 1, (label, counts[label], n * fraction)


def test_stratified_rounding_holds_for_many_random_tables():
    rng = random.Random(0)
    for trial in range(60):
        labels = [rng.choice("abcdefghij"[: rng.randint(1, 10)]) for _ in range(rng.randint(3, 120))]
        val, test = rng.choice([0.1, 0.25, 1 / 3]), rng.choice([0.0, 0.1, 0.2])
        parts = three_way(len(labels), labels=labels, val=val, test=test, seed=trial)
        assert sizes(parts) == sizes(three_way(len(labels), val=val, test=test))
        for part in parts:
            counts = Counter(labels[i] for i in part)
            for label, n in Counter(labels).items():
                assert abs(counts[label] - n * len(part) / len(labels)) < 1, trial


def test_small_classes_stay_in_train():
    labels = ["big"] * 20 + ["once"] + ["twice"] * 2
    for seed in range(10):
        parts = three_way(len(labels), labels=labels, val=0.2, test=0.2, seed=seed)
        train_classes = Counter(labels[i] for i in parts.train)
        assert train_classes["once"] == 1 and train_classes["twice"] >= 1


def test_labels_of_mixed_types_and_none_are_classes():
    labels = [1, "1", None] * 10
    parts = three_way(30, labels=labels, val=0.2, test=0.1, seed=0)
    for part, expected in zip(parts, (7, 2, 1)):
        assert Counter(labels[i] for i in part) == {1: expected, "1": expected, None: expected}


def test_grouped_no_group_in_two_splits_and_sizes_near_target():
    groups = varied_groups()
    n = len(groups)
    for seed in range(5):
        parts = three_way(n, groups=groups, val=0.1, test=0.2, seed=seed)
        assert_partition(parts, n)
        keys = [{groups[i] for i in part} for part in parts]
        assert keys[0].isdisjoint(keys[1]) and keys[0].isdisjoint(keys[2]) and keys[1].isdisjoint(keys[2])
        for part, fraction in zip(parts, (0.7, 0.1, 0.2)):
            assert abs(len(part) - n * fraction) <= 25, (seed, len(part), n * fraction)  # one group at most


def test_grouped_with_labels_keeps_shares_roughly_balanced():
    rng = random.Random(3)
    groups, labels = [], []
    for g in range(300):  # each document has one label; 25% are "rare"
        size, label = rng.randint(1, 12), "rare" if rng.random() < 0.25 else "common"
        groups += [g] * size
        labels += [label] * size
    overall = labels.count("rare") / len(labels)
    parts = three_way(len(labels), labels=labels, groups=groups, val=0.15, test=0.15, seed=1)
    for part in parts:
        share = sum(labels[i] == "rare" for i in part) / len(part)
        assert abs(share - overall) < 0.03, (share, overall)


def test_none_groups_are_singletons():
    groups = [None] * 100
    assert three_way(100, groups=groups, seed=2) == three_way(100, seed=2)  # the exact row-level split
    groups = ["a"] * 50 + [None] * 50
    parts = three_way(100, groups=groups, val=0.2, test=0.2, seed=2)
    assert sum(1 for part in parts if any(i < 50 for i in part)) == 1  # group "a" in one split only
    assert sum(1 for part in parts if any(i >= 50 for i in part)) == 3  # None rows spread over all three


def test_grouped_every_wanted_split_gets_a_group_even_when_groups_are_big():
    groups = [g for g in range(4) for _ in range(50)]  # 4 groups of 50; targets 20/20 rows
    parts = three_way(200, groups=groups, val=0.1, test=0.1, seed=0)
    assert all(parts) and sorted(sizes(parts)) == [50, 50, 100]


def test_too_few_rows_for_the_wanted_splits():
    with pytest.raises(DataError) as err:
        three_way(2, val=0.1, test=0.1)
    assert str(err.value).startswith(
        "cannot split 2 rows into train, validation, test: each needs at least one row. Add data"
    )
    assert str(err.value).endswith("Add data, or set test_fraction: 0 (now 0.1) to drop the test split")
    with pytest.raises(DataError) as err:
        three_way(1, val=0.1, test=0.0)
    assert str(err.value) == (
        "cannot split 1 row into train, validation: each needs at least one row. "
        "Add data, or set validation_fraction: 0 (now 0.1) and give a separate validation set"
    )
    with pytest.raises(DataError, match=r"cannot split 0 rows into train, validation"):
        three_way(0, val=0.1, test=0.0)
    assert three_way(0, val=0.0, test=0.0) == ([], [], [])


def test_too_few_groups_for_the_wanted_splits():
    with pytest.raises(DataError) as err:
        three_way(40, groups=["x"] * 20 + ["y"] * 20, val=0.1, test=0.1)
    assert "cannot split 2 groups (40 rows) into train, validation, test: each needs at least one group " \
           "(a group never spans two splits)" in str(err.value)


@pytest.mark.parametrize("val, test", [(-0.1, 0.0), (0.5, 0.5), (1.0, 0.0), (math.nan, 0.0)])
def test_invalid_fractions_are_programming_errors(val, test):
    with pytest.raises(ValueError, match="validation_fraction"):
        three_way(10, val=val, test=test)


def test_labels_and_groups_must_match_the_row_count():
    with pytest.raises(ValueError, match="labels has 2 entries for 3 rows"):
        three_way(3, labels=[0, 1])
    with pytest.raises(ValueError, match="groups has 4 entries for 3 rows"):
        three_way(3, groups=[0, 1, 2, 3])


# --------------------------------------------------------------------------------- SplitConfig


def test_split_config_defaults():
    cfg = SplitConfig()
    assert (cfg.validation_fraction, cfg.test_fraction, cfg.stratify, cfg.grouped) == (0.1, 0.0, True, True)


def test_split_config_fractions_must_leave_training_rows():
    with pytest.raises(ValidationError) as err:
        SplitConfig(validation_fraction=0.6, test_fraction=0.4)
    assert "validation_fraction + test_fraction must be below 1 so rows remain for training; got 0.6 + 0.4 = 1" \
           in str(err.value)


@pytest.mark.parametrize("bad", [{"test_fraction": -0.1}, {"validation_fraction": 1.0}, {"group_column": "id"}])
def test_split_config_rejects_bad_values_and_unknown_keys(bad):
    with pytest.raises(ValidationError):
        SplitConfig(**bad)


# ---------------------------------------------------------------------------------- split_rows


def text_row(i: int, label=None, group=None, augmented=False) -> Row:
    return Row("text", {"text": f"row {i}", "label": label, "group": group}, "train.csv", i + 2,
               augmented=augmented)


def test_split_rows_uses_labels_and_groups_of_rows():
    rows = [text_row(i, label=LABELS[i], group=f"g{i // 3}") for i in range(len(LABELS))]
    train, val, test = split_rows(rows, SplitConfig(validation_fraction=0.2, test_fraction=0.1), seed=3)
    expected = three_way(len(rows), labels=LABELS, groups=[r.data["group"] for r in rows], val=0.2, test=0.1,
                         seed=3)
    assert [[r.line - 2 for r in part] for part in (train, val, test)] == list(expected)


def test_split_rows_without_stratify_or_grouping_ignores_labels_and_groups():
    rows = [text_row(i, label=LABELS[i], group="same") for i in range(len(LABELS))]
    cfg = SplitConfig(validation_fraction=0.2, stratify=False, grouped=False)
    train, val, test = split_rows(rows, cfg, seed=3)
    assert [[r.line - 2 for r in part] for part in (train, val, test)] == list(three_way(len(rows), val=0.2,
                                                                                         test=0.0, seed=3))


def test_split_rows_of_chat_rows_is_a_seeded_shuffle():
    rows = [Row("chat", {"messages": [{"role": "user", "content": str(i)}], "group": None}, "c.jsonl", i + 1)
            for i in range(20)]
    train, val, test = split_rows(rows, SplitConfig(validation_fraction=0.25), seed=0)
    assert (len(train), len(val), len(test)) == (15, 5, 0)


def test_split_rows_refuses_augmented_rows():
    rows = [text_row(0, "a"), text_row(1, "a", augmented=True)]
    with pytest.raises(ValueError, match=r"train.csv:3: augmented rows must be added after splitting"):
        split_rows(rows, SplitConfig(), seed=0)
