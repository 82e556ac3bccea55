"""Generated-text metrics: corpus BLEU and chrF (sacrebleu) and ROUGE-1/2/L (rouge-score).

BLEU and chrF are the translation measures (chrF is more robust for morphologically rich target
languages and short outputs); ROUGE is the summarisation measure. The libraries are the reference
implementations, used with their defaults so numbers compare with published ones:

* BLEU: sacrebleu ``corpus_bleu`` (13a tokenisation, exp smoothing), chrF: ``corpus_chrf``
  (chrF2: character 6-grams, beta 2). Both are corpus-level, not means of sentence scores.
* ROUGE: rouge-score F-measure with ``use_stemmer=True``, averaged over examples. Its default
  tokenizer lower-cases and keeps only ``[a-z0-9]`` runs and the stemmer is English (Porter), so
  ROUGE is meaningful for English output only; use BLEU/chrF for other languages.
* Several references per example: sacrebleu scores against all of them at once (its multi-
  reference definition); ROUGE takes the best-matching reference per example.

All five scores are on the 0-100 scale (sacrebleu's convention; ROUGE F-measures are multiplied
by 100 so one report does not mix scales). The libraries are imported inside the function: the
trainer imports the metric modules at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuneforge.tasks.metrics.inputs import check_lengths, check_strings, reference_lists

GENERATION_METRICS: tuple[str, ...] = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")
_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def generation_metrics(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict:
    """BLEU, chrF, ROUGE-1, ROUGE-2 and ROUGE-L (0-100) of generated texts against references.

    ``references`` holds one string per prediction, or one list of acceptable strings per
    prediction (lists may differ in length). An empty prediction is valid and scores 0.
    """
    check_lengths("predictions", predictions, "references", references)
    check_strings("predictions", predictions)
    refs = reference_lists("references", references)

    import sacrebleu  # deferred: see module docstring
    from rouge_score import rouge_scorer

    # sacrebleu wants reference *streams* (the k-th reference of every example); an example with
    # fewer references fills the remaining streams with None, which sacrebleu skips.
    num_streams = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(num_streams)]
    hypotheses = list(predictions)

    scorer = rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(_ROUGE_TYPES, 0.0)
    for prediction, example_refs in zip(hypotheses, refs):
        scores = scorer.score_multi(example_refs, prediction)
        for rouge_type in _ROUGE_TYPES:
            totals[rouge_type] += scores[rouge_type].fmeasure
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, streams).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, streams).score),
        **{name: 100.0 * total / len(hypotheses) for name, total in totals.items()},
    }
