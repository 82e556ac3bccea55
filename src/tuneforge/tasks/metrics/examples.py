"""Per-example records of a generation-based evaluation (``eval/generations.jsonl``): what was asked, the
reference, what the model generated, and that example's score, so a figure can be checked by reading."""

from __future__ import annotations

from collections.abc import Sequence


def generation_records(prompts: Sequence, references: Sequence, predictions: Sequence[str], kind: str) -> list[dict]:
    """One record per example. ``kind``: ``final_number`` (the numbers compared, and whether they match) or
    ``text`` (sentence-level chrF against the reference or references, 0-100)."""
    from tuneforge.tasks.metrics.final_number import extract_final_number

    records = []
    for prompt, reference, prediction in zip(prompts, references, predictions):
        record = {"prompt": prompt, "reference": reference, "prediction": prediction}
        if kind == "final_number":
            gold = extract_final_number(reference if isinstance(reference, str) else reference[0])
            got = extract_final_number(prediction)
            record.update(reference_number=gold, predicted_number=got, correct=got is not None and got == gold)
        else:
            import sacrebleu

            refs = [reference] if isinstance(reference, str) else list(reference)
            record["chrf"] = round(sacrebleu.sentence_chrf(prediction, refs).score, 2)
        records.append(record)
    return records
