"""Stratified split: per-class proportions, determinism, and the small-class guarantees."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from tuneforge.data.split import stratified_split

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
