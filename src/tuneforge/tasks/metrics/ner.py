"""Entity-level NER metrics (seqeval) plus token accuracy.

Token accuracy alone is misleading for NER: most tokens are ``O``, so a model that never finds an
entity still scores ~85%. The CoNLL shared-task measure counts an entity as correct only when its
type and both boundaries match, which is what seqeval computes. We use seqeval's default mode,
which reproduces the ``conlleval`` script: an ``I-`` tag that does not continue an entity of the
same type starts a new one, so IOB1 and IOB2 data are both read correctly (``E-``/``S-`` tags
of IOBES are understood too). Scores are on the 0-1 scale; a ratio with a zero denominator is 0.0.

seqeval is imported inside the function: the trainer imports the metric modules at start-up.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

from tuneforge.tasks.metrics.inputs import check_lengths

NER_METRICS: tuple[str, ...] = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")
# "O", or a chunk prefix and the entity type: anything else (a bare "PER", a "B_PER") would be
# split by seqeval at an arbitrary character into a nonsense prefix and type.
_TAG = re.compile(r"O|[BIES]-.+")


def ner_metrics(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """Micro entity F1/precision/recall, token accuracy and a ``per_type`` table.

    One list of tags per sentence, aligned word by word (sub-word predictions must already be
    mapped back to words). ``per_type`` covers every entity type in the true or the predicted
    tags; its ``support`` is the number of true entities of that type.
    """
    check_lengths("true_tags", true_tags, "pred_tags", pred_tags)
    true_lists = [list(sentence) for sentence in true_tags]
    pred_lists = [list(sentence) for sentence in pred_tags]
    for i, (true, pred) in enumerate(zip(true_lists, pred_lists)):
        if len(true) != len(pred):
            raise ValueError(
                f"sentence {i}: {len(true)} true tags but {len(pred)} predicted tags; "
                "predictions must be aligned to the words of the sentence"
            )
        _check_tags(i, "true", true)
        _check_tags(i, "predicted", pred)
    if not any(true_lists):
        raise ValueError("cannot compute NER metrics on zero tokens (every sentence is empty)")

    from seqeval.metrics import accuracy_score, classification_report  # deferred: see docstring

    with warnings.catch_warnings():
        # Without any entity, seqeval's macro-average row (unused here) is numpy's mean of an
        # empty list, which warns; our scores are still well defined (0.0, see module docstring).
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(true_lists, pred_lists, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    per_type = {
        entity_type: {
            "precision": float(scores["precision"]),
            "recall": float(scores["recall"]),
            "f1": float(scores["f1-score"]),
            "support": int(scores["support"]),
        }
        for entity_type, scores in sorted(report.items())
        if not entity_type.endswith(" avg")
    }
    return {
        "entity_f1": float(micro["f1-score"]),
        "entity_precision": float(micro["precision"]),
        "entity_recall": float(micro["recall"]),
        "token_accuracy": float(accuracy_score(true_lists, pred_lists)),
        "per_type": per_type,
    }


def _check_tags(sentence: int, which: str, tags: list) -> None:
    for j, tag in enumerate(tags):
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise ValueError(
                f"sentence {sentence}, token {j}: {which} tag {tag!r} is not a chunk tag; "
                "expected 'O' or 'B-<type>' / 'I-<type>' (IOB2; 'E-'/'S-' are also accepted)"
            )
