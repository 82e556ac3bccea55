"""Multi-label classification metrics and per-label decision thresholds.

In multi-label classification each label is an independent yes/no decision on a sigmoid
probability. A single 0.5 cut-off is rarely right for every label: rare labels get low
probabilities and would almost never be predicted. ``tune_thresholds`` picks each label's
threshold on the validation set; ``multilabel_metrics`` then scores any split with them.

Conventions (scores are on the 0-1 scale, like ``classification_metrics``):

* a label is predicted when ``prob >= threshold``;
* a ratio with a zero denominator (no predicted or no true positives) is 0.0, as scikit-learn's
  ``zero_division=0``;
* ``macro_f1`` averages the labels that occur in the targets or the predictions, as
  ``classification_metrics`` does: a label absent from a small evaluation set and never predicted
  says nothing about the model and would only add a hard 0. Every label still gets a
  ``per_label`` row, so reports always have the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tuneforge.tasks.metrics.inputs import finite_array

MULTILABEL_METRICS: tuple[str, ...] = (
    "micro_f1", "macro_f1", "micro_precision", "micro_recall", "subset_accuracy",
)
DEFAULT_THRESHOLD = 0.5
DEFAULT_GRID: np.ndarray = np.linspace(0.05, 0.95, 19)


def multilabel_metrics(
    probs: Sequence[Sequence[float]] | np.ndarray,
    targets: Sequence[Sequence[int]] | np.ndarray,
    label_names: Sequence[str],
    thresholds: Sequence[float] | float = DEFAULT_THRESHOLD,
) -> dict:
    """Micro/macro F1, micro precision/recall, subset accuracy and a ``per_label`` table.

    ``probs`` and ``targets`` have shape ``[n, num_labels]``; ``thresholds`` is one value for all
    labels or one per label (e.g. from ``tune_thresholds``). ``subset_accuracy`` is the share of
    examples whose whole label set is exactly right.
    """
    p, y = _validated(probs, targets)
    names = [str(n) for n in label_names]
    if len(names) != y.shape[1]:
        raise ValueError(f"label_names has {len(names)} names but probs has {y.shape[1]} label columns")
    if len(set(names)) != len(names):
        raise ValueError(f"label_names has duplicates: {names}")
    cutoffs = _validated_thresholds(thresholds, y.shape[1])

    predicted = p >= cutoffs[None, :]
    tp = (predicted & y).sum(axis=0)
    fp = (predicted & ~y).sum(axis=0)
    fn = (~predicted & y).sum(axis=0)
    f1 = _f1(tp, fp, fn)
    seen = (tp + fp + fn) > 0
    per_label = {
        name: {
            "precision": _ratio(tp[j], tp[j] + fp[j]),
            "recall": _ratio(tp[j], tp[j] + fn[j]),
            "f1": float(f1[j]),
            "threshold": float(cutoffs[j]),
            "support": int(y[:, j].sum()),
        }
        for j, name in enumerate(names)
    }
    micro_tp, micro_fp, micro_fn = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return {
        "micro_f1": float(_f1(np.array(micro_tp), np.array(micro_fp), np.array(micro_fn))),
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "micro_precision": _ratio(micro_tp, micro_tp + micro_fp),
        "micro_recall": _ratio(micro_tp, micro_tp + micro_fn),
        "subset_accuracy": float((predicted == y).all(axis=1).mean()),
        "per_label": per_label,
    }


def tune_thresholds(
    probs: Sequence[Sequence[float]] | np.ndarray,
    targets: Sequence[Sequence[int]] | np.ndarray,
    grid: Sequence[float] | np.ndarray = DEFAULT_GRID,
) -> list[float]:
    """Per label, the grid threshold that maximises that label's F1 on these (validation) data.

    Ties go to the threshold closest to 0.5, then to the lower one: on a small validation set
    many thresholds reach the same F1, and the one nearest the untuned default is the least
    over-fitted choice. A label without positives here keeps 0.5, since its F1 is 0 at every
    threshold and there is nothing to tune it on.
    """
    p, y = _validated(probs, targets)
    # Rounded first so that the thresholds compared here are exactly the ones returned (and
    # saved): linspace's 0.15000000000000002 would leave a probability of 0.15 unpredicted.
    cutoffs = np.round(finite_array("grid", grid, ndim=1), 9)
    if cutoffs.size == 0 or ((cutoffs < 0) | (cutoffs > 1)).any():
        raise ValueError(f"grid must be a non-empty list of thresholds in [0, 1], got {cutoffs.tolist()}")
    chosen = []
    for j in range(y.shape[1]):
        positives = y[:, j]
        if not positives.any():
            chosen.append(DEFAULT_THRESHOLD)
            continue
        predicted = p[:, j][:, None] >= cutoffs[None, :]  # [n, len(grid)]
        tp = (predicted & positives[:, None]).sum(axis=0)
        fp = (predicted & ~positives[:, None]).sum(axis=0)
        fn = (~predicted & positives[:, None]).sum(axis=0)
        f1 = _f1(tp, fp, fn)
        # F1 values are ratios of small integers, so equal scores compare equal exactly; the
        # distance is rounded because 0.45 and 0.55 lie at unequal float distances from 0.5.
        best = min(
            np.flatnonzero(f1 == f1.max()),
            key=lambda g: (round(abs(cutoffs[g] - DEFAULT_THRESHOLD), 9), cutoffs[g]),
        )
        chosen.append(float(cutoffs[best]))
    return chosen


def _validated(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities as float [n, L] in [0, 1] and targets as bool [n, L]."""
    p = finite_array("probs", probs, ndim=2)
    t = finite_array("targets", targets, ndim=2)
    if p.shape != t.shape:
        raise ValueError(f"probs and targets differ in shape: {list(p.shape)} vs {list(t.shape)}")
    if p.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if p.shape[1] == 0:
        raise ValueError("probs has zero label columns")
    outside = np.argwhere((p < 0) | (p > 1))
    if outside.size:
        i, j = outside[0]
        raise ValueError(
            f"probs[{i}, {j}] = {p[i, j]} is outside [0, 1]; pass sigmoid probabilities, not logits"
        )
    not_binary = np.argwhere((t != 0) & (t != 1))
    if not_binary.size:
        i, j = not_binary[0]
        raise ValueError(f"targets[{i}, {j}] = {t[i, j]}; multi-label targets must be 0 or 1")
    return p, t.astype(bool)


def _validated_thresholds(thresholds: Sequence[float] | float, num_labels: int) -> np.ndarray:
    if np.ndim(thresholds) == 0:  # one value for every label
        thresholds = [thresholds] * num_labels
    cutoffs = finite_array("thresholds", thresholds, ndim=1)
    if cutoffs.size != num_labels:
        raise ValueError(f"thresholds has {cutoffs.size} values but there are {num_labels} labels")
    if ((cutoffs < 0) | (cutoffs > 1)).any():
        raise ValueError(f"thresholds must lie in [0, 1], got {list(cutoffs)}")
    return cutoffs


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2TP / (2TP + FP + FN), 0 where nothing was predicted or expected."""
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else 0.0
