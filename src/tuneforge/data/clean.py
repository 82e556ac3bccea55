"""Cleaning rules: repair row texts (Unicode, markup, whitespace, PII) and drop rows unfit for training.

Every rule is switched on or off in ``CleanConfig`` and counted on its own, so a report can say
"strip_html changed 1,204 rows, min_chars removed 37" instead of "the data shrank". Rules run in a
fixed order, the order of ``Cleaner.stats()``:

1. ``label`` (only when the caller passes allowed labels): text rows with an unknown or missing label;
2. rewrites: ``fix_unicode`` (ftfy) -> ``unicode_normalization`` -> ``strip_html`` ->
   ``remove_control_chars`` -> ``fold_whitespace`` -> ``pii``; each sees the previous one's output,
   so e.g. whitespace left behind by removed tags is folded and PII patterns see single spaces;
3. ``empty_text``: a row whose text is empty after the rewrites (always on);
4. filters on the rewritten text: ``min_chars``/``max_chars``/``min_tokens``/``max_tokens``,
   ``max_repeated_ngram_fraction``, ``max_symbol_word_ratio``, ``languages``.

A removed row becomes a ``RejectedRow`` whose reason starts with the config key that removed it, so
the user knows which knob to turn. The defaults only repair text (and drop rows left empty): a
filter that silently removed part of someone's corpus by default would be a surprise.

Row kinds: for ``chat`` and ``pair`` rows every text is rewritten; length limits count all texts
together. ``pair`` rows skip the language filter (a translation pair has two languages by design).
``tokens`` rows (CoNLL) must keep one token per tag, so rewrites run per token and a token that
would become empty or gain whitespace keeps its original form; ``strip_html`` and
``fold_whitespace`` do not apply to them (a token has no markup or whitespace to fold).

Speed: this runs on every row of corpora with millions of documents, so regexes are precompiled,
each rewrite first checks cheaply whether it has anything to do (ftfy, the slow one, only sees
non-ASCII text), and the language model and ftfy are imported only when enabled.
"""

from __future__ import annotations

import html
import math
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, model_validator

from tuneforge.data.pii import PII_KINDS, PiiKind, PiiMasker
from tuneforge.data.records import Row, content_key, replace_texts, row_texts
from tuneforge.data.rejects import RejectedRow
from tuneforge.sections import Section

# ----------------------------------------------------------------------------------------- config


class PiiConfig(Section):
    enabled: bool = Field(False, description="Replace emails, phone numbers, IP addresses and card numbers.")
    kinds: list[PiiKind] = Field(
        default_factory=lambda: list(PII_KINDS),
        description="Which kinds to mask: any of email, phone, ip, card. Card numbers are masked only when "
        "their Luhn checksum is valid; phones need a leading + or North-American separators (555-123-4567).",
    )
    placeholder: str = Field(
        "<{kind}>", description="Replacement text; {kind} becomes the kind, e.g. '<email>'. May omit {kind}."
    )

    @model_validator(mode="after")
    def _check(self) -> "PiiConfig":
        if not self.kinds:
            raise ValueError(f"pii.kinds is empty; list at least one of: {', '.join(PII_KINDS)}")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"pii.kinds has duplicates: {self.kinds}")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.placeholder) if f is not None}
        except ValueError as exc:
            raise ValueError(f"pii.placeholder {self.placeholder!r} is not a valid template ({exc}); "
                             "write braces as {{ and }}") from None
        if fields - {"kind"}:
            raise ValueError(f"pii.placeholder {self.placeholder!r} uses {sorted(fields - {'kind'})}; "
                             "only {kind} is allowed")
        return self


class CleanConfig(Section):
    fix_unicode: bool = Field(
        True, description="Repair mojibake and broken encodings with ftfy (e.g. 'cafÃ©' -> 'café'). Quotes, "
        "ligatures and full-width characters are left as they are."
    )
    unicode_normalization: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="Unicode normal form. NFC merges composed/decomposed accents; NFKC also folds "
        "compatibility characters (ligatures, full-width letters); none: leave as is."
    )
    strip_html: bool = Field(
        False,
        description="Remove HTML/XML tags, comments and script/style blocks; decode entities (&amp; -> &).",
    )
    remove_control_chars: bool = Field(
        True, description="Remove control characters (except tab and newline), zero-width spaces and BOMs."
    )
    fold_whitespace: bool = Field(
        True, description="Fold runs of spaces/tabs inside a line to one space, drop trailing spaces and extra "
        "blank lines, trim both ends. Line breaks and leading indentation (code in chat data) are kept."
    )
    min_chars: int | None = Field(
        None, ge=1, description="Drop rows with fewer characters (all texts of a row together)."
    )
    max_chars: int | None = Field(None, ge=1, description="Drop rows with more characters.")
    min_tokens: int | None = Field(
        None, ge=1, description="Drop rows with fewer tokens (whitespace words, or the model tokenizer's count)."
    )
    max_tokens: int | None = Field(None, ge=1, description="Drop rows with more tokens.")
    max_repeated_ngram_fraction: float | None = Field(
        None, ge=0.0, lt=1.0, description="Drop rows where more than this share of word n-grams repeat an "
        "earlier n-gram of the same row (boilerplate, spam, degenerate generations). 0.3 is a common choice."
    )
    repeated_ngram_size: int = Field(3, ge=1, le=10, description="n for max_repeated_ngram_fraction.")
    max_symbol_word_ratio: float | None = Field(
        None, ge=0.0, description="Drop rows with more punctuation/symbol characters per word than this "
        "(markup debris, ASCII art, tables of numbers). Ordinary prose is below 0.5."
    )
    languages: list[str] | None = Field(
        None, description="Keep only rows detected (py3langid, offline) as one of these language codes, "
        "e.g. [en]. null: no language filter."
    )
    min_language_confidence: float = Field(
        0.5, ge=0.0, le=1.0, description="Also drop rows whose detected language has a lower probability."
    )
    language_min_chars: int = Field(
        20, ge=0, description="Keep texts shorter than this without a language check: a few words are "
        "too little evidence and would be dropped at random."
    )
    pii: PiiConfig = Field(default_factory=PiiConfig, description="Masking of personal data.")

    @model_validator(mode="after")
    def _check(self) -> "CleanConfig":
        for low, high in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) is larger than {high} ({hi}); no row could pass both")
        if self.languages is not None:
            if not self.languages:
                raise ValueError("languages is an empty list; list language codes such as [en] or use null")
            from tuneforge.data.langid import known_languages

            known = known_languages()
            unknown = [code for code in self.languages if code not in known]
            if unknown:
                raise ValueError(f"languages: unknown code(s) {unknown}; use ISO 639-1 codes the language "
                                 f"identifier knows: {', '.join(sorted(known))}")
        return self


# ----------------------------------------------------------------------------------- text rewrites

_FTFY_ESCAPE = "\x1b"  # terminal escapes are the one thing ftfy fixes in pure-ASCII text

_CONTROL_TO_SPACE = re.compile("[\x0b\x0c\x1c-\x1f\x85]")  # separators: removing them would glue words
_CONTROL_DROP = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u200b\u2060\ufeff]")
_ANY_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")

_BLANK_LINES = re.compile(r"\n{3,}")

# The block body may not contain another opening tag: otherwise every unclosed <script> would scan
# to the end of the text looking for its end tag (quadratic on broken markup).
_HTML_DROP = re.compile(
    r"<(script|style)\b[^>]*>(?:(?!<(?:script|style)\b).)*?</\1\s*>|<!--(?:(?!<!--).)*?-->", re.S | re.I
)
# Block-level tags separate text; inline ones (<b>, <a>, <span>) sit inside words and sentences.
# A block tag takes the spaces around it along, so the line break it becomes does not leave
# indentation behind (fold_whitespace keeps leading indentation on purpose); the look-behind
# keeps that leading-space run from being rescanned at every position.
_HTML_BLOCK = re.compile(
    r"(?<![^\S\n])[^\S\n]*"
    r"</?(?:br|p|div|li|ul|ol|tr|td|th|table|h[1-6]|hr|blockquote|pre|section|article|header|footer)\b[^<>]*>"
    r"[^\S\n]*",
    re.I,
)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
# Entities need their semicolon: html.unescape alone would turn "?a=1&para=2" into "?a=1¶=2".
_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")

_WORD = re.compile(r"[^\W_]+")
_SYMBOL = re.compile(r"[^\w\s]|_")


@lru_cache(maxsize=1)
def _ftfy() -> tuple[Any, Any]:
    import ftfy

    # Only repairs: the cosmetic steps (uncurling quotes, ligatures, full width) change correct
    # text, and control characters / normalisation are separate rules with their own counts.
    config = ftfy.TextFixerConfig(
        unescape_html=False, uncurl_quotes=False, fix_latin_ligatures=False, fix_character_width=False,
        fix_line_breaks=False, remove_control_chars=False, normalization=None, explain=False,
    )
    return ftfy.fix_text, config


def fix_unicode(text: str) -> str:
    """Repair mojibake with ftfy; ASCII text cannot contain any, so it is returned at once."""
    if text.isascii() and _FTFY_ESCAPE not in text:
        return text
    fix_text, config = _ftfy()
    return fix_text(text, config)


def normalizer(form: str) -> Callable[[str], str]:
    """A function putting text into Unicode normal form ``form`` ("NFC" or "NFKC")."""

    def normalize(text: str) -> str:
        if text.isascii() or unicodedata.is_normalized(form, text):
            return text
        return unicodedata.normalize(form, text)

    return normalize


def strip_html(text: str) -> str:
    """Remove tags, comments and script/style blocks; decode entities. Block tags become line breaks."""
    if "<" not in text and "&" not in text:
        return text
    if "<" in text:
        text = _HTML_DROP.sub("", text)
        text = _HTML_BLOCK.sub("\n", text)
        text = _HTML_TAG.sub("", text)
    if "&" in text:
        text = _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
    return text


def remove_control_chars(text: str) -> str:
    """Delete control and invisible characters; vertical tab/form feed/separators become a space."""
    if _ANY_CONTROL.search(text) is None:
        return text
    return _CONTROL_DROP.sub("", _CONTROL_TO_SPACE.sub(" ", text))


def fold_whitespace(text: str) -> str:
    """Fold spaces/tabs inside lines, drop trailing spaces and extra blank lines, trim the ends."""
    # str.split/join rather than regexes: about 2 us for a 200-character line against 10-40 us for
    # the equivalent regex passes, and linear however long a run of spaces is.
    if "\n" not in text and "\r" not in text:
        return " ".join(text.split())
    lines = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        body = " ".join(line.split())
        indent = line[: len(line) - len(line.lstrip())] if body else ""
        lines.append(indent + body)
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


# ------------------------------------------------------------------------------------ row measures


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Share of the word n-grams of ``text`` (lower-cased) that already occurred earlier in it."""
    words = text.lower().split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for i in range(total):
        gram = tuple(words[i:i + n])
        if gram in seen:
            repeats += 1
        else:
            seen.add(gram)
    return repeats / total


def symbol_word_ratio(text: str) -> float:
    """Punctuation/symbol characters per word (a word: a run of letters or digits); inf without words."""
    symbols = len(_SYMBOL.findall(text))
    words = len(_WORD.findall(text))
    if words == 0:
        return math.inf if symbols else 0.0
    return symbols / words


def whitespace_tokens(text: str) -> int:
    return len(text.split())


# ------------------------------------------------------------------------------------------- rules

Rewrite = Callable[[str], str]
#: A filter gets the row's kind and its rewritten texts; it returns why the row must go, or None.
Check = Callable[[str, list[str]], "str | None"]


@dataclass(frozen=True)
class _Rewrite:
    name: str
    fn: Rewrite
    per_token: bool  # also safe on single CoNLL tokens


@dataclass(frozen=True)
class _Filter:
    name: str
    fn: Check


def _rewrites(cfg: CleanConfig) -> list[_Rewrite]:
    rules = []
    if cfg.fix_unicode:
        rules.append(_Rewrite("fix_unicode", fix_unicode, True))
    if cfg.unicode_normalization != "none":
        rules.append(_Rewrite("unicode_normalization", normalizer(cfg.unicode_normalization), True))
    if cfg.strip_html:
        rules.append(_Rewrite("strip_html", strip_html, False))
    if cfg.remove_control_chars:
        rules.append(_Rewrite("remove_control_chars", remove_control_chars, True))
    if cfg.fold_whitespace:
        rules.append(_Rewrite("fold_whitespace", fold_whitespace, False))
    if cfg.pii.enabled:
        rules.append(_Rewrite("pii", PiiMasker(cfg.pii.kinds, cfg.pii.placeholder), True))
    return rules


def _limit(name: str, limit: int, unit: str, measure: Callable[[list[str]], int], too_many: bool) -> _Filter:
    def check(kind: str, texts: list[str]) -> str | None:
        value = measure(texts)
        if too_many and value > limit:
            return f"{name}: {value} {unit}, more than {limit}"
        if not too_many and value < limit:
            return f"{name}: {value} {unit}, fewer than {limit}"
        return None

    return _Filter(name, check)


def _filters(cfg: CleanConfig, count_tokens: Callable[[str], int]) -> list[_Filter]:
    def chars(texts: list[str]) -> int:
        return sum(len(t) for t in texts)

    def tokens(texts: list[str]) -> int:
        return sum(count_tokens(t) for t in texts)

    rules = []
    for name, unit, measure, too_many in (
        ("min_chars", "characters", chars, False), ("max_chars", "characters", chars, True),
        ("min_tokens", "tokens", tokens, False), ("max_tokens", "tokens", tokens, True),
    ):
        limit = getattr(cfg, name)
        if limit is not None:
            rules.append(_limit(name, limit, unit, measure, too_many))

    if cfg.max_repeated_ngram_fraction is not None:
        max_fraction, n = cfg.max_repeated_ngram_fraction, cfg.repeated_ngram_size

        def repetition(kind: str, texts: list[str]) -> str | None:
            fraction = repeated_ngram_fraction("\n".join(texts), n)
            if fraction > max_fraction:
                return (f"max_repeated_ngram_fraction: {fraction:.2f} of word {n}-grams are repeats "
                        f"(max {max_fraction})")
            return None

        rules.append(_Filter("max_repeated_ngram_fraction", repetition))

    if cfg.max_symbol_word_ratio is not None:
        max_ratio = cfg.max_symbol_word_ratio

        def symbols(kind: str, texts: list[str]) -> str | None:
            ratio = symbol_word_ratio("\n".join(texts))
            if ratio > max_ratio:
                return f"max_symbol_word_ratio: {ratio:.2f} symbols per word (max {max_ratio})"
            return None

        rules.append(_Filter("max_symbol_word_ratio", symbols))

    if cfg.languages is not None:
        rules.append(_Filter("languages", _language_check(cfg)))
    return rules


def _language_check(cfg: CleanConfig) -> Check:
    from tuneforge.data.langid import detect_language

    allowed = set(cfg.languages or ())
    shown = ", ".join(cfg.languages or ())
    min_confidence, min_chars = cfg.min_language_confidence, cfg.language_min_chars

    def check(kind: str, texts: list[str]) -> str | None:
        text = "\n".join(texts)
        if kind == "pair" or len(text) < min_chars:
            return None
        code, p = detect_language(text)
        if code not in allowed:
            return f"languages: detected '{code}' (p={p:.2f}), allowed: {shown}"
        if p < min_confidence:
            return (f"languages: detected '{code}' with p={p:.2f}, "
                    f"below min_language_confidence {min_confidence}")
        return None

    return check


def _is_empty(kind: str, data: dict[str, Any], texts: list[str]) -> bool:
    if kind == "chat":
        # An empty system prompt is common and harmless; an empty user or assistant turn is not.
        return not texts or any(
            not t.strip() for m, t in zip(data["messages"], texts) if m.get("role") != "system"
        )
    return not texts or any(not t.strip() for t in texts)


# ----------------------------------------------------------------------------------------- cleaner


class Cleaner:
    """Apply ``CleanConfig`` to rows one at a time, counting what each rule did.

    ``allowed_labels`` (label names, compared with ``str(label)``) enables label validation of text
    rows; ``count_tokens`` measures ``min_tokens``/``max_tokens`` (default: whitespace words; pass
    e.g. ``lambda t: len(tokenizer(t, add_special_tokens=False).input_ids)`` for model tokens).
    Input rows are never modified: a changed row is a new ``Row``.
    """

    def __init__(
        self,
        cfg: CleanConfig,
        *,
        allowed_labels: Sequence[str] | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self._allowed = None if allowed_labels is None else {str(x) for x in allowed_labels}
        self._allowed_shown = "" if allowed_labels is None else ", ".join(str(x) for x in allowed_labels)
        self._rewrites = _rewrites(cfg)
        self._filters = _filters(cfg, count_tokens or whitespace_tokens)
        names = (["label"] if self._allowed is not None else []) + [r.name for r in self._rewrites]
        names += ["empty_text"] + [f.name for f in self._filters]
        self._counts = {name: {"changed": 0, "removed": 0} for name in names}
        self._rows_in = 0
        self._rows_out = 0

    def __call__(self, row: Row) -> Row | RejectedRow:
        self._rows_in += 1
        if self._allowed is not None and row.kind == "text":
            problem = self._label_problem(row.data.get("label"))
            if problem:
                return self._reject(row, "label", problem)

        texts = list(row.data["tokens"]) if row.kind == "tokens" else row_texts(row)
        for rule in self._rewrites:
            if row.kind == "tokens" and not rule.per_token:
                continue
            new = [rule.fn(t) for t in texts]
            if row.kind == "tokens":
                # One token per tag: a rewrite may not empty a token or split it in two.
                new = [n if n is t or (n and not _has_space(n)) else t for n, t in zip(new, texts)]
            if new != texts:
                self._counts[rule.name]["changed"] += 1
                texts = new
        if row.kind == "tokens":
            texts = [" ".join(texts)]

        if _is_empty(row.kind, row.data, texts):
            return self._reject(row, "empty_text", "empty text after cleaning")
        for rule in self._filters:
            problem = rule.fn(row.kind, texts)
            if problem:
                return self._reject(row, rule.name, problem)
        self._rows_out += 1
        return replace_texts(row, texts)

    def stats(self) -> dict[str, Any]:
        """``{"rows_in": n, "rows_out": n, <rule>: {"changed": n, "removed": n}, ...}`` in application order."""
        out: dict[str, Any] = {"rows_in": self._rows_in, "rows_out": self._rows_out}
        out.update({name: dict(c) for name, c in self._counts.items()})
        return out

    def _label_problem(self, label: Any) -> str | None:
        if label is None:
            return "missing label"
        if self._allowed is not None and str(label) not in self._allowed:
            return f"unknown label '{label}' (allowed: {self._allowed_shown})"
        return None

    def _reject(self, row: Row, rule: str, reason: str) -> RejectedRow:
        self._counts[rule]["removed"] += 1
        return RejectedRow(file=row.source, line=row.line, reason=reason, raw=content_key(row))


def _has_space(token: str) -> bool:
    return any(c.isspace() for c in token)
