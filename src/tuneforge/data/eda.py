"""EDA: cheap word-level edits that make extra training sentences (Wei & Zou, 2019).

Random swap, random deletion, random insertion of a synonym and synonym replacement help small
classification sets (a few hundred to a few thousand rows) at no model cost. Each edit changes
about ``alpha`` of the words, so the label still holds.

Words are whitespace-separated tokens, punctuation included ("film," is one word): the text is
rebuilt by joining with single spaces, and nothing outside the edited words changes. Synonyms come
only from a user file: tuneforge ships no thesaurus (WordNet needs a separate download and is
English-only), so ``insert`` and ``synonym`` need ``synonyms_file``.

Every function takes its ``random.Random`` explicitly: the caller seeds one per row and copy,
which makes each output independent of the order and number of other rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tuneforge.errors import DataError

Synonyms = Mapping[str, Sequence[str]]
EDA_OPERATIONS: tuple[str, ...] = ("swap", "delete", "insert", "synonym")
NEEDS_SYNONYMS: tuple[str, ...] = ("insert", "synonym")


def n_changes(n_words: int, alpha: float) -> int:
    """How many words an edit touches: ``alpha`` of them, at least one."""
    return max(1, round(alpha * n_words))


def random_swap(words: Sequence[str], alpha: float, rng: random.Random) -> list[str]:
    """Swap two random positions, ``n_changes`` times (the multiset of words is unchanged)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n_changes(len(out), alpha)):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], alpha: float, rng: random.Random) -> list[str]:
    """Drop each word with probability ``alpha``; never return an empty sentence."""
    if len(words) < 2:
        return list(words)
    kept = [w for w in words if rng.random() >= alpha]
    return kept or [rng.choice(list(words))]


def random_insertion(
    words: Sequence[str], alpha: float, rng: random.Random, synonyms: Synonyms
) -> list[str]:
    """Insert a synonym of a random word at a random position, ``n_changes`` times."""
    out = list(words)
    for _ in range(n_changes(len(words), alpha)):
        candidates = [w for w in out if _synonyms_of(w, synonyms)]
        if not candidates:
            break
        synonym = rng.choice(_synonyms_of(rng.choice(candidates), synonyms))
        out.insert(rng.randint(0, len(out)), synonym)
    return out


def synonym_replacement(
    words: Sequence[str], alpha: float, rng: random.Random, synonyms: Synonyms
) -> list[str]:
    """Replace up to ``n_changes`` distinct words that have synonyms with a random synonym."""
    out = list(words)
    positions = [i for i, w in enumerate(out) if _synonyms_of(w, synonyms)]
    rng.shuffle(positions)
    for i in positions[:n_changes(len(words), alpha)]:
        out[i] = rng.choice(_synonyms_of(out[i], synonyms))
    return out


def eda_edit(
    text: str, operation: str, alpha: float, rng: random.Random, synonyms: Synonyms | None = None
) -> str:
    """Apply one EDA ``operation`` (swap, delete, insert, synonym) to ``text``."""
    words = text.split()
    if operation in NEEDS_SYNONYMS:
        edit: Callable[..., list[str]] = random_insertion if operation == "insert" else synonym_replacement
        return " ".join(edit(words, alpha, rng, synonyms or {}))
    if operation == "swap":
        return " ".join(random_swap(words, alpha, rng))
    if operation == "delete":
        return " ".join(random_deletion(words, alpha, rng))
    raise ValueError(f"unknown EDA operation {operation!r} (allowed: {', '.join(EDA_OPERATIONS)})")


def _synonyms_of(word: str, synonyms: Synonyms) -> list[str]:
    return [s for s in synonyms.get(word.lower(), ()) if s.lower() != word.lower()]


def load_synonyms(path: Path) -> dict[str, list[str]]:
    """Read a synonym file: JSON ``{"word": ["syn", ...]}`` or TSV lines ``word<TAB>syn1,syn2``.

    Keys are lower-cased (lookups are case-insensitive); blank lines and lines starting with ``#``
    in a TSV file are ignored. Problems raise ``DataError`` naming the file and line or key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"synonyms_file not found: {path} (expected a JSON {{word: [synonyms]}} or a TSV "
            "word<TAB>syn1,syn2 file)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"synonyms_file {path} is not valid UTF-8 (byte {exc.start}); re-save it as UTF-8"
        ) from None
    if path.suffix.lower() == ".json":
        return _synonyms_from_json(path, text)
    return _synonyms_from_tsv(path, text)


def _synonyms_from_json(path: Path, text: str) -> dict[str, list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"synonyms_file {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DataError(
            f"synonyms_file {path}: expected a JSON object {{word: [synonyms]}}, got {type(data).__name__}"
        )
    out: dict[str, list[str]] = {}
    for word, syns in data.items():
        if not isinstance(syns, list) or not all(isinstance(s, str) and s.strip() for s in syns):
            raise DataError(f"synonyms_file {path}: key '{word}' must map to a list of non-empty strings")
        out.setdefault(word.strip().lower(), []).extend(s.strip() for s in syns)
    return out


def _synonyms_from_tsv(path: Path, text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, tab, rest = line.partition("\t")
        syns = [s.strip() for s in rest.split(",") if s.strip()]
        if not tab or not word.strip() or not syns:
            raise DataError(f"synonyms_file {path}:{lineno}: expected 'word<TAB>syn1,syn2', got {line[:80]!r}")
        out.setdefault(word.strip().lower(), []).extend(syns)
    return out
