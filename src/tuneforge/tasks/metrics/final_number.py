"""GSM8K-style scoring: is the final number of the generated answer the right one?

Math word problems are scored on the final answer only, because the reasoning before it can be
worded in countless correct ways that no text-overlap metric (BLEU, ROUGE) can judge. GSM8K's
official evaluation extracts the number after the ``####`` marker that ends every reference
solution and compares it with the model's final number; ``final_number_accuracy`` does the same.
Fine-tuned models learn to write the marker; a model that does not is judged on the last number
it wrote, the usual "flexible" extraction, so a correct answer is not lost to formatting.

Numbers are compared as normalised decimal strings, which is exact (floats would round large
integers and long decimals): thousands separators, "$" and a sentence-ending "." are dropped and
zeros that do not change the value are removed ("3.0" -> "3", "007" -> "7", "-0" -> "0").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tuneforge.tasks.metrics.inputs import check_lengths, check_strings

FINAL_NUMBER_METRICS: tuple[str, ...] = ("final_number_accuracy", "answered")
ANSWER_MARKER = "####"
# An optional minus and "$", then digits with correctly placed thousands commas or plain digits,
# then optional decimals (or a bare ".5"). The look-behind keeps "3-4" from yielding -4 and
# "CO2" from yielding 2; the look-ahead makes "1,2345" read as 1 and 2345, not 1,234 and 5.
_NUMBER = re.compile(r"(?<![\w.])-?\$?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?!\d)")


def extract_final_number(text: str) -> str | None:
    """The first number after the last ``####``, else the last number in ``text``; normalised.

    None when the text contains no number at all.
    """
    _, marker, tail = text.rpartition(ANSWER_MARKER)
    if marker:
        after = _NUMBER.search(tail)
        if after:
            return _normalise(after.group())
    numbers = _NUMBER.findall(text)  # the marker holds no digit, so it changes nothing here
    return _normalise(numbers[-1]) if numbers else None


def final_number_accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Share (0-100) of predictions whose final number equals the reference's final number.

    ``references`` are GSM8K answer texts (ending in ``#### <number>``) or bare numbers.
    ``answered`` is the share (0-100) of predictions that contain a number at all: a low value
    points at generation problems (truncation, missing stop) rather than at wrong arithmetic.
    """
    check_lengths("predictions", predictions, "references", references)
    check_strings("predictions", predictions)
    check_strings("references", references)
    correct = answered = 0
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        gold = extract_final_number(reference)
        if gold is None:
            raise ValueError(f"references[{i}] contains no number: {reference[:200]!r}")
        predicted = extract_final_number(prediction)
        answered += predicted is not None
        correct += predicted == gold
    return {
        "final_number_accuracy": 100.0 * correct / len(predictions),
        "answered": 100.0 * answered / len(predictions),
    }


def _normalise(raw: str) -> str:
    digits = raw.replace(",", "").replace("$", "")
    negative = digits.startswith("-")
    whole, _, fraction = digits.lstrip("-").partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    number = f"{whole}.{fraction}" if fraction else whole
    return f"-{number}" if negative and number != "0" else number
