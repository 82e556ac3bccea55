"""Extractive question answering metrics: SQuAD v1.1 exact match and token F1.

This re-implements the official SQuAD v1.1 evaluation script (``evaluate-v1.1.py``) exactly,
including its quirks, so scores compare with published ones: answers are normalised (lower-case,
punctuation removed, the articles a/an/the removed, whitespace collapsed, in that order), exact
match and bag-of-tokens F1 are taken against every gold answer and the best one counts. As in
the script, an answer that normalises to nothing (e.g. "The.") gets F1 0 even against an equally
empty gold answer, while its exact match is 1. Scores are on the 0-100 scale, as SQuAD reports.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from tuneforge.tasks.metrics.inputs import check_lengths, check_strings, reference_lists

SQUAD_METRICS: tuple[str, ...] = ("exact_match", "f1")
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_metrics(predictions: Sequence[str], answers: Sequence[str | Sequence[str]]) -> dict:
    """Exact match and F1 (0-100), each the best over an example's gold answers, averaged.

    ``answers`` holds one list of gold answer strings per prediction (a bare string counts as a
    single answer). Unanswerable questions (SQuAD v2) are not supported: every example needs at
    least one gold answer.
    """
    check_lengths("predictions", predictions, "answers", answers)
    check_strings("predictions", predictions)
    gold = reference_lists("answers", answers)
    exact = f1 = 0.0
    for prediction, golds in zip(predictions, gold):
        exact += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
        f1 += max(_token_f1(prediction, g) for g in golds)
    return {"exact_match": 100.0 * exact / len(gold), "f1": 100.0 * f1 / len(gold)}


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, drop punctuation, drop articles, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)
