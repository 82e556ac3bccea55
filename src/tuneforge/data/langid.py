"""Offline language identification for the cleaning language filter, via py3langid.

py3langid (a maintained fork of langid.py) ships its model inside the wheel, needs no network
and classifies a sentence in tens of microseconds, which is what a filter over a whole corpus
needs. Its model takes about half a second to load, so it is loaded once, on first use, and only
when a recipe actually asks for a language filter.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

#: Characters classified per text. The classifier walks every byte in Python (about 1.5 us per
#: byte); a few hundred characters already identify the language, and the cap keeps a long
#: document from costing milliseconds.
MAX_CHARS = 500


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    # norm_probs: confidences become probabilities in [0, 1], so one threshold means the same
    # thing for every text length.
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> list[str]:
    """The language codes the model can return (mostly ISO 639-1, e.g. "en", "de")."""
    return list(_identifier().labels)


def detect_language(text: str) -> tuple[str, float]:
    """Return ``(code, probability)`` of the most likely language of ``text`` (its first ``MAX_CHARS``)."""
    code, confidence = _identifier().classify(text[:MAX_CHARS])
    return str(code), float(confidence)
