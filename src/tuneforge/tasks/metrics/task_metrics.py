"""One import point for the metrics of every task type beyond single-label classification.

Each metric family lives in its own module (its docstring explains the conventions and the
scale); this module only gathers them, and lists which flat metric names each function returns
so that callers (checkpoint selection, report tables) can validate a ``metric_for_best`` against
the task without running an evaluation. Every function is pure (lists or numpy arrays in, a dict
of floats plus optional nested per-class details out) and never imports torch.

Scales: BLEU, chrF, ROUGE, SQuAD and final-number scores are 0-100 (their communities'
convention); every other score is 0-1, like ``classification_metrics``.
"""

from __future__ import annotations

from tuneforge.tasks.metrics.final_number import (
    FINAL_NUMBER_METRICS,
    extract_final_number,
    final_number_accuracy,
)
from tuneforge.tasks.metrics.multilabel import MULTILABEL_METRICS, multilabel_metrics, tune_thresholds
from tuneforge.tasks.metrics.ner import NER_METRICS, ner_metrics
from tuneforge.tasks.metrics.qa import SQUAD_METRICS, normalize_answer, squad_metrics
from tuneforge.tasks.metrics.regression import REGRESSION_METRICS, regression_metrics
from tuneforge.tasks.metrics.text import GENERATION_METRICS, generation_metrics

# Function name -> the flat (float) metric names it returns, in its output order.
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "regression_metrics": REGRESSION_METRICS,
    "multilabel_metrics": MULTILABEL_METRICS,
    "ner_metrics": NER_METRICS,
    "generation_metrics": GENERATION_METRICS,
    "squad_metrics": SQUAD_METRICS,
    "final_number_accuracy": FINAL_NUMBER_METRICS,
}

__all__ = [
    "METRIC_NAMES",
    "extract_final_number",
    "final_number_accuracy",
    "generation_metrics",
    "multilabel_metrics",
    "ner_metrics",
    "normalize_answer",
    "regression_metrics",
    "squad_metrics",
    "tune_thresholds",
]
