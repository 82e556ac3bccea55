"""Classification metrics and the "is this checkpoint better?" rule.

scikit-learn does the arithmetic; this module only fixes the conventions (label order, zero
division, JSON-friendly types) so that every caller (trainer, ``evaluate`` command, reports) reports
the same numbers. scikit-learn is imported inside ``classification_metrics`` because the trainer
imports this module just for ``metric_is_better`` and should not pay ~1 s of import for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Which way is "better" for each metric we may select checkpoints or stop early on.
METRIC_DIRECTIONS: dict[str, str] = {
    "accuracy": "max",
    "macro_f1": "max",
    "macro_precision": "max",
    "macro_recall": "max",
    "loss": "min",
    # regression (tuneforge.tasks.metrics.regression)
    "mse": "min",
    "rmse": "min",
    "mae": "min",
    "pearson": "max",
    "spearman": "max",
    "r2": "max",
    # multi-label classification (tuneforge.tasks.metrics.multilabel)
    "micro_f1": "max",
    "micro_precision": "max",
    "micro_recall": "max",
    "subset_accuracy": "max",
    # token classification (tuneforge.tasks.metrics.ner)
    "entity_f1": "max",
    "entity_precision": "max",
    "entity_recall": "max",
    "token_accuracy": "max",
    # text generation (tuneforge.tasks.metrics.text)
    "bleu": "max",
    "chrf": "max",
    "rouge1": "max",
    "rouge2": "max",
    "rougeL": "max",
    # extractive QA (tuneforge.tasks.metrics.qa)
    "exact_match": "max",
    "f1": "max",
    # final-number answers, GSM8K style (tuneforge.tasks.metrics.final_number)
    "final_number_accuracy": "max",
    "answered": "max",
    "perplexity": "min",
    # preference alignment (tuneforge.tasks.preference, reward_model, grpo)
    "reward_accuracy": "max",
    "reward_margin": "max",
    "preference_accuracy": "max",
    "chosen_logps": "max",
    "kl": "min",
    "pairwise_accuracy": "max",
    "score_margin": "max",
    "reward": "max",
    "masked_accuracy": "max",
}


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]
) -> dict:
    """Accuracy, macro P/R/F1, per-class scores and the confusion matrix, as plain JSON types.

    Labels are the integers ``0..len(label_names)-1``. Per-class entries cover every label, in
    label order, even those absent from the data, so reports always have the same rows.
    """
    y_true_list, y_pred_list = _validated_labels(y_true, y_pred, len(label_names))
    from sklearn.metrics import (  # deferred: see module docstring
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    all_labels = list(range(len(label_names)))
    # Per class: force every label so absent classes get a row (0 scores via zero_division=0)
    # instead of silently disappearing from the report.
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true_list, y_pred_list, labels=all_labels, average=None, zero_division=0
    )
    # Macro: scikit-learn's default label set (classes seen in y_true or y_pred), so the numbers
    # equal ``f1_score(y_true, y_pred, average="macro")``. A class missing from a small eval set
    # would otherwise add a hard 0 to the average that says nothing about the model.
    macro_p, macro_r, macro_f1, _ = precision_recall_fscore_support(
        y_true_list, y_pred_list, average="macro", zero_division=0
    )
    cm = confusion_matrix(y_true_list, y_pred_list, labels=all_labels)

    per_class = {
        str(name): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": float(accuracy_score(y_true_list, y_pred_list)),
        "macro_precision": float(macro_p),
        "macro_recall": float(macro_r),
        "macro_f1": float(macro_f1),
        "per_class": per_class,
        "confusion_matrix": [[int(v) for v in row] for row in cm],
        "label_names": [str(n) for n in label_names],
        "num_examples": len(y_true_list),
    }


def _validated_labels(
    y_true: Sequence[int], y_pred: Sequence[int], num_labels: int
) -> tuple[list[int], list[int]]:
    """Reject inputs that would give silently wrong metrics rather than an error."""
    y_true_list = [int(v) for v in y_true]
    y_pred_list = [int(v) for v in y_pred]
    if len(y_true_list) != len(y_pred_list):
        raise ValueError(
            f"y_true and y_pred differ in length: {len(y_true_list)} vs {len(y_pred_list)}"
        )
    if not y_true_list:
        raise ValueError("cannot compute metrics on zero examples")
    if num_labels == 0:
        raise ValueError("label_names is empty")
    # An out-of-range id would count in accuracy but vanish from the confusion matrix and the
    # per-class table, so the report would not add up; it is always an upstream bug.
    for which, values in (("y_true", y_true_list), ("y_pred", y_pred_list)):
        bad = sorted({v for v in values if not 0 <= v < num_labels})
        if bad:
            raise ValueError(
                f"{which} has label ids outside 0..{num_labels - 1} "
                f"(there are {num_labels} label names): {bad[:10]}"
            )
    return y_true_list, y_pred_list


def metric_is_better(name: str, new: float, best: float | None, *, direction: str | None = None) -> bool:
    """True if ``new`` strictly improves on ``best`` for metric ``name``.

    Ties are not improvements, so early-stopping patience runs out on a plateau. A NaN ``new``
    is never better; a NaN ``best`` (e.g. from a diverged first eval) is beaten by any real value.
    ``direction`` ("max"/"min"; the task's ``TaskSpec.selectable``) wins over the table here.
    """
    direction = direction or METRIC_DIRECTIONS.get(name)
    if direction is None:
        known = ", ".join(sorted(METRIC_DIRECTIONS))
        raise ValueError(f"unknown metric {name!r}; known metrics: {known}")
    if math.isnan(new):
        return False
    if best is None or math.isnan(best):
        return True
    return new > best if direction == "max" else new < best
