"""Seeded train/validation/test splits: stratified by label, optionally grouped by a key.

Why each property matters:

* **Seeded and exact.** A split is a pure function of (labels, groups, fractions, seed): rerunning a
  recipe gives the same rows, which is what makes runs comparable. Split sizes depend only on the
  row count and the fractions (largest-remainder rounding), never on the labels.
* **Stratified.** Each class's share is the same in every split (within one row per class and split,
  the best integer rounding can do), so a score on a small or imbalanced data set is not skewed by
  an unlucky draw.
* **Grouped.** Rows sharing a group key (several sentences from one document, turns of one user)
  all go to one split; otherwise near-copies leak from train into evaluation and inflate scores.

``stratified_split`` is the original two-way classification split, kept with its exact behaviour.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from fractions import Fraction
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import Field, model_validator

from tuneforge.data.records import Row, row_group, row_label
from tuneforge.errors import DataError
from tuneforge.sections import Section

SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")
_TRAIN, _VALIDATION, _TEST = range(3)


class SplitConfig(Section):
    """How the kept rows are divided into train, validation and test.

    The group *key* is not configured here: each source names its ``group_column`` and copies it
    into ``row.data["group"]`` (sources differ in where the key lives). ``grouped`` only says
    whether those keys constrain the split.
    """

    validation_fraction: float = Field(
        0.1, ge=0.0, lt=1.0,
        description="Share of rows held out for validation; 0 when a separate validation set is given.",
    )
    test_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of rows held out for a final test; 0: no test split."
    )
    stratify: bool = Field(
        True,
        description="Keep each label's share equal across splits (rows without labels are split at random).",
    )
    grouped: bool = Field(
        True,
        description="Never put two rows with the same group key (a source's group_column) in different "
        "splits. No effect when no source sets group_column.",
    )
    order: Literal["random", "sequential"] = Field(
        "random",
        description="random: a seeded (stratified, grouped) draw. sequential: in data order, the first rows train, "
        "the next validate, the last test, like nanoGPT's 90/10 cut of a corpus: held-out text then follows "
        "the training text instead of sitting between its neighbours (no stratification, no grouping).",
    )

    @model_validator(mode="after")
    def _leave_rows_for_training(self) -> "SplitConfig":
        total = self.validation_fraction + self.test_fraction
        if total >= 1.0:
            raise ValueError(
                f"validation_fraction + test_fraction must be below 1 so rows remain for training; got "
                f"{self.validation_fraction} + {self.test_fraction} = {total:g}"
            )
        return self


class SplitIndices(NamedTuple):
    """Row indices of each split, each list sorted ascending."""

    train: list[int]
    validation: list[int]
    test: list[int]


def split_rows(
    rows: Sequence[Row], cfg: SplitConfig, seed: int
) -> tuple[list[Row], list[Row], list[Row]]:
    """``(train, validation, test)`` rows, each in input order; labels via ``row_label``, groups
    via ``row_group``.

    Augmented rows are refused: augmentation runs on the training split *after* splitting, so a
    paraphrase can never land in validation next to its original.
    """
    augmented = next((row for row in rows if row.augmented), None)
    if augmented is not None:
        raise ValueError(f"{augmented.origin}: augmented rows must be added after splitting, not before")
    labels = [row_label(row) for row in rows] if cfg.stratify else None
    if labels is not None and all(label is None for label in labels):
        labels = None  # chat/pair/token rows, or an unlabeled source: a plain seeded shuffle
    groups = [row_group(row) for row in rows] if cfg.grouped else None
    parts = split_indices(
        len(rows), labels=labels, groups=groups, seed=seed,
        validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction,
        sequential=cfg.order == "sequential",
    )
    return tuple([rows[i] for i in part] for part in parts)  # type: ignore[return-value]


def split_indices(
    n: int,
    *,
    labels: Sequence[Any] | None,
    groups: Sequence[Any] | None,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    sequential: bool = False,
) -> SplitIndices:
    """Split ``range(n)`` into train/validation/test.

    Sizes: ``n * fraction`` rounded by largest remainder so they add up to ``n`` exactly (halves go
    to the held-out splits, as ``stratified_split`` rounds them up); a split with a fraction above 0
    gets at least one row, train always does. Too few rows for that is a ``DataError``.

    ``labels`` (``None`` entries form a class of their own): every class sends ``count * size / n``
    rows to each split, rounded down or up so that every split still has its exact size. Classes
    too small to appear in every split are not an error: the rounding prefers giving each class a
    training row (a class never trained on cannot be learned; one missing from validation only
    costs a metric). Ties are broken at random by ``seed``.

    ``groups`` (``None`` entries are singleton groups): whole groups go to one split. Groups are
    visited in a seeded random order and each goes to the split where it best closes the gap to
    the target size (and, with labels, to the per-label targets): sizes land within about one
    group of the target, label shares are best effort. Too few groups to give every split one is
    a ``DataError``.
    """
    fractions = (1.0 - validation_fraction - test_fraction, validation_fraction, test_fraction)
    if not (0.0 <= validation_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and fractions[0] > 0.0):
        raise ValueError(
            "need 0 <= validation_fraction, test_fraction < 1 and validation_fraction + test_fraction < 1, "
            f"got {validation_fraction} and {test_fraction}"
        )
    for name, values in (("labels", labels), ("groups", groups)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} rows")
    if n == 0 and validation_fraction == 0.0 and test_fraction == 0.0:
        return SplitIndices([], [], [])
    wanted = [i for i, f in enumerate(fractions) if f > 0.0]

    group_ids = _group_ids(groups, n) if groups is not None else None
    n_groups = max(group_ids, default=-1) + 1 if group_ids is not None else n
    if n_groups < len(wanted):
        raise DataError(_too_few_message(n, n_groups, groups is not None and n_groups < n, wanted,
                                         validation_fraction, test_fraction))

    sizes = _split_sizes(n, fractions)
    if sequential:
        cut1, cut2 = sizes[0], sizes[0] + sizes[1]
        return SplitIndices(list(range(cut1)), list(range(cut1, cut2)), list(range(cut2, n)))
    rng = np.random.default_rng(seed)
    if group_ids is None or n_groups == n:  # no group has two rows: the exact row-level split
        assignment = _assign_rows(labels, sizes, rng)
    else:
        assignment = _assign_groups(group_ids, n_groups, labels, sizes, rng)
    parts: list[list[int]] = [[], [], []]
    for index, part in enumerate(assignment):
        parts[part].append(index)
    return SplitIndices(*parts)


def _too_few_message(n: int, n_groups: int, grouped: bool, wanted: list[int],
                     validation_fraction: float, test_fraction: float) -> str:
    names = ", ".join(SPLIT_NAMES[i] for i in wanted)
    what = f"{_count(n_groups, 'group')} ({_count(n, 'row')})" if grouped else _count(n, "row")
    why = " (a group never spans two splits)" if grouped else ""
    if test_fraction > 0.0:
        fix = f"set test_fraction: 0 (now {test_fraction}) to drop the test split"
    else:
        fix = f"set validation_fraction: 0 (now {validation_fraction}) and give a separate validation set"
    return (
        f"cannot split {what} into {names}: each needs at least one {'group' if grouped else 'row'}{why}. "
        f"Add data, or {fix}"
    )


# ------------------------------------------------------------------------------------- sizes


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder apportionment of ``n`` rows, then at least one row per wanted split."""
    # round(): 0.7 * 10 is 7.000000000000001 in floats; the user meant a decimal fraction.
    quotas = [round(n * f, 9) for f in fractions]
    sizes = [math.floor(q) for q in quotas]
    # Ties go to validation, then test, then train: a held-out 2.5 rows becomes 3, as in
    # stratified_split's round-half-up.
    by_remainder = sorted(range(3), key=lambda i: (-(quotas[i] - sizes[i]), (i + 2) % 3))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    for i, f in enumerate(fractions):
        if f > 0.0 and sizes[i] == 0:
            donor = max(range(3), key=lambda j: sizes[j])
            sizes[donor] -= 1
            sizes[i] += 1
    return sizes


# ------------------------------------------------------------------- row-level (exact) split


def _assign_rows(labels: Sequence[Any] | None, sizes: list[int], rng: np.random.Generator) -> list[int]:
    """Split index per row; without labels every row is one class and the table is exact."""
    n = sum(sizes)
    class_of = [_key(label) for label in labels] if labels is not None else [0] * n
    classes = sorted(set(class_of), key=_sort_key)
    members: dict[Hashable, list[int]] = {c: [] for c in classes}
    for index, c in enumerate(class_of):
        members[c].append(index)
    table = _round_table([len(members[c]) for c in classes], sizes, rng)
    assignment = [0] * n
    # Sorted class order: the rng is consumed in the same order on every run.
    for c, counts in zip(classes, table):
        order = rng.permutation(members[c]).tolist()
        cut_val, cut_test = counts[_VALIDATION], counts[_VALIDATION] + counts[_TEST]
        for position, index in enumerate(order):
            assignment[index] = _VALIDATION if position < cut_val else _TEST if position < cut_test else _TRAIN
    return assignment


def _round_table(class_counts: list[int], sizes: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Integer rows per (class, split): each cell is its quota ``count * size / n`` rounded down or
    up, every class keeps its count and every split gets exactly its size.

    Such a rounding always exists (the quota table is a fractional solution of a transportation
    problem with integer margins, whose vertices are integral). We round up greedily by largest
    remainder and repair the rare dead end with an augmenting path, as in bipartite matching.
    """
    n = sum(class_counts)
    quotas = [[Fraction(count * size, n) for size in sizes] for count in class_counts]
    table = [[math.floor(q) for q in row] for row in quotas]
    row_need = [count - sum(row) for count, row in zip(class_counts, table)]
    col_need = [size - sum(row[j] for row in table) for j, size in enumerate(sizes)]
    can_round_up = {(i, j) for i, row in enumerate(quotas) for j, q in enumerate(row) if q != table[i][j]}
    tie_break = rng.random(len(class_counts) * 3)

    def priority(cell: tuple[int, int]) -> tuple:
        i, j = cell
        first_train_row = j == _TRAIN and table[i][_TRAIN] == 0
        return (not first_train_row, -(quotas[i][j] - table[i][j]), tie_break[i * 3 + j])

    rounded_up: set[tuple[int, int]] = set()
    for i, j in sorted(can_round_up, key=priority):
        if row_need[i] and col_need[j]:
            rounded_up.add((i, j))
            row_need[i] -= 1
            col_need[j] -= 1
    for i, need in enumerate(row_need):
        for _ in range(need):
            _augment(i, rounded_up, can_round_up, col_need)
    for i, j in rounded_up:
        table[i][j] += 1
    return table


def _augment(start: int, rounded_up: set, can_round_up: set, col_need: list[int]) -> None:
    """Give class ``start`` one more round-up, shifting other classes' round-ups between splits.

    Breadth-first over the three splits: split ``j`` reaches ``j2`` when some class rounded up in
    ``j`` may round up in ``j2`` instead, freeing a unit of ``j``.
    """
    parent: dict[int, tuple[int, int] | None] = {
        j: None for j in range(3) if (start, j) in can_round_up and (start, j) not in rounded_up
    }
    frontier = list(parent)
    while frontier:
        done = next((j for j in frontier if col_need[j] > 0), None)
        if done is not None:
            break
        next_frontier = []
        for j in frontier:
            for j2 in range(3):
                if j2 in parent:
                    continue
                mover = next((i for i, jj in rounded_up if jj == j and (i, j2) in can_round_up
                              and (i, j2) not in rounded_up), None)
                if mover is not None:
                    parent[j2] = (j, mover)
                    next_frontier.append(j2)
        frontier = next_frontier
    else:  # unreachable when the quotas are consistent (see _round_table)
        raise AssertionError("stratified rounding found no augmenting path")
    col_need[done] -= 1
    j = done
    while parent[j] is not None:
        previous, mover = parent[j]
        rounded_up.discard((mover, previous))
        rounded_up.add((mover, j))
        j = previous
    rounded_up.add((start, j))


# ----------------------------------------------------------------------------- grouped split


def _assign_groups(group_ids: list[int], n_groups: int, labels: Sequence[Any] | None,
                   sizes: list[int], rng: np.random.Generator) -> list[int]:
    """Split index per row, whole groups at a time (greedy in a seeded random group order)."""
    n = len(group_ids)
    group_size = Counter(group_ids)
    group_labels: dict[int, Counter] = {}
    label_targets: dict[Hashable, list[float]] = {}
    if labels is not None:
        keys = [_key(label) for label in labels]
        for g, k in zip(group_ids, keys):
            group_labels.setdefault(g, Counter())[k] += 1
        label_targets = {k: [count * size / n for size in sizes] for k, count in Counter(keys).items()}
    active = [j for j, size in enumerate(sizes) if size > 0]
    filled = [0, 0, 0]
    label_filled: dict[Hashable, list[int]] = {k: [0, 0, 0] for k in label_targets}
    split_of_group = [0] * n_groups

    def cost(g: int, j: int) -> float:
        # Increase of the squared distance to the targets when group g joins split j.
        s = group_size[g]
        delta = s * (s + 2 * (filled[j] - sizes[j]))
        for k, c in group_labels.get(g, {}).items():
            delta += c * (c + 2 * (label_filled[k][j] - label_targets[k][j]))
        return delta

    # Random order, not largest-first: largest-first would put the same big groups in train for
    # every seed, so held-out sets would systematically under-represent big groups.
    for g in rng.permutation(n_groups).tolist():
        j = min(active, key=lambda split: cost(g, split))
        split_of_group[g] = j
        filled[j] += group_size[g]
        for k, c in group_labels.get(g, {}).items():
            label_filled[k][j] += c
    _fill_empty_splits(split_of_group, group_size, active)
    return [split_of_group[g] for g in group_ids]


def _fill_empty_splits(split_of_group: list[int], group_size: Counter, active: list[int]) -> None:
    """Move the smallest group of the split with the most groups into any wanted split left empty
    (possible when every group is much larger than that split's target)."""
    for j in active:
        members = Counter(split_of_group)
        if members[j]:
            continue
        donor = max(active, key=lambda split: members[split])
        smallest = min((g for g, s in enumerate(split_of_group) if s == donor), key=lambda g: group_size[g])
        split_of_group[smallest] = j


# ---------------------------------------------------------------------------------- helpers


def _group_ids(groups: Sequence[Any], n: int) -> list[int]:
    """Dense group id per row; every ``None`` is a group of its own."""
    ids: dict[Hashable, int] = {}
    out = []
    for group in groups:
        if group is None:
            out.append(len(ids))
            ids[object()] = len(ids)  # a fresh key: never equal to another row's
        else:
            out.append(ids.setdefault(_key(group), len(ids)))
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _key(value: Any) -> Hashable:
    # A JSON label or group may be a list or dict; its repr is a stable stand-in.
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _sort_key(value: Hashable) -> tuple:
    # Labels of mixed types (1 and "1", or None) must still sort, the same way on every run.
    return (value is None, type(value).__name__, value if isinstance(value, (int, float, str)) else repr(value))


# ------------------------------------------------------------------- two-way (classification)


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
