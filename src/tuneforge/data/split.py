"""Seeded, stratified train/validation split.

Stratifying keeps each class's share the same in both halves, so a validation score on a small or
imbalanced data set is not skewed by an unlucky draw. The split is a pure function of (labels,
fraction, seed): rerunning a recipe gives the same rows, which is what makes runs comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def stratified_split(
    labels: Sequence[int], validation_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Return ``(train_indices, validation_indices)``, both sorted.

    Each class sends ``round(n * validation_fraction)`` of its ``n`` rows to validation (so it is
    within half a row of the target), capped so at least one row stays in train: a class the model
    never trains on cannot be learned, while a class missing from validation only costs a metric.
    A class with a single row therefore always stays in train.
    """
    if not 0.0 < validation_fraction < 1.0:  # also rejects NaN
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    train: list[int] = []
    validation: list[int] = []
    # Sorted class order: the rng is consumed in the same order on every run.
    for label in sorted(set(label_array.tolist())):
        members = rng.permutation(np.flatnonzero(label_array == label))
        n_val = min(_round_half_up(len(members) * validation_fraction), len(members) - 1)
        validation.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return sorted(train), sorted(validation)


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even (round(2.5) == 2); half-up is easier to predict.
    return math.floor(x + 0.5)
