"""Cleaning rules: what each rule rewrites or removes, its exact counts, PII masking, language filter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tuneforge.data import clean as clean_module
from tuneforge.data.clean import (
    Cleaner,
    CleanConfig,
    fix_unicode,
    fold_whitespace,
    remove_control_chars,
    repeated_ngram_fraction,
    strip_html,
    symbol_word_ratio,
)
from tuneforge.data.pii import PiiMasker, luhn_valid
from tuneforge.data.records import Row
from tuneforge.data.rejects import RejectedRow

from tests.conftest import DATA

SST2_DEV = DATA / "sst2" / "dev.tsv"


def text_row(text: str, label: object = "pos", line: int = 2, source: str = "train.tsv") -> Row:
    return Row("text", {"text": text, "label": label, "group": None}, source, line)


def run(cleaner: Cleaner, texts: list[str]) -> list[Row | RejectedRow]:
    return [cleaner(text_row(t, line=i + 2)) for i, t in enumerate(texts)]


def kept_texts(results: list[Row | RejectedRow]) -> list[str]:
    return [r.data["text"] for r in results if isinstance(r, Row)]


def reasons(results: list[Row | RejectedRow]) -> list[str]:
    return [r.reason for r in results if isinstance(r, RejectedRow)]


def cfg(**kw) -> CleanConfig:
    return CleanConfig.model_validate(kw)


# ------------------------------------------------------------------------------------- defaults


def test_default_stats_list_enabled_rules_in_application_order():
    cleaner = Cleaner(CleanConfig())
    assert list(cleaner.stats()) == [
        "rows_in", "rows_out", "fix_unicode", "unicode_normalization", "remove_control_chars",
        "fold_whitespace", "empty_text",
    ]
    everything = Cleaner(
        cfg(strip_html=True, min_chars=1, max_chars=9, min_tokens=1, max_tokens=9, max_repeated_ngram_fraction=0.5,
            max_symbol_word_ratio=1.0, languages=["en"], pii={"enabled": True}),
        allowed_labels=["a", "b"],
    )
    assert list(everything.stats()) == [
        "rows_in", "rows_out", "label", "fix_unicode", "unicode_normalization", "strip_html", "remove_control_chars",
        "fold_whitespace", "pii", "empty_text", "min_chars", "max_chars", "min_tokens", "max_tokens",
        "max_repeated_ngram_fraction", "max_symbol_word_ratio", "languages",
    ]


def test_defaults_only_trim_sst2_sentences():
    lines = SST2_DEV.read_text(encoding="utf-8").splitlines()[1:301]
    rows = [text_row(line.split("\t")[0], label=line.split("\t")[1], line=i + 2) for i, line in enumerate(lines)]
    cleaner = Cleaner(CleanConfig(), allowed_labels=["0", "1"])
    out = [cleaner(r) for r in rows]
    assert [o.data["text"] for o in out] == [r.data["text"].strip() for r in rows]
    assert [o.data["label"] for o in out] == [r.data["label"] for r in rows]
    # Every SST-2 sentence ends with a space before the tab; that is all the defaults touch.
    assert cleaner.stats()["fold_whitespace"] == {"changed": 300, "removed": 0}
    assert cleaner.stats()["rows_out"] == 300
    assert all(cleaner.stats()[k] == {"changed": 0, "removed": 0}
               for k in ("label", "fix_unicode", "unicode_normalization", "remove_control_chars", "empty_text"))
    # Without whitespace folding the very same row objects come back.
    untouched = Cleaner(cfg(fold_whitespace=False))
    assert all(untouched(r) is r for r in rows)


def test_cleaning_never_mutates_the_input_row():
    row = text_row("  cafÃ©\x00  bar ")
    before = dict(row.data)
    out = Cleaner(CleanConfig())(row)
    assert out.data["text"] == "café bar"
    assert row.data == before and row.data["text"] == "  cafÃ©\x00  bar "


def test_ascii_text_never_reaches_ftfy(monkeypatch):
    # ftfy costs ~50 us per call; the benchmark budget relies on ASCII text skipping it.
    def boom():
        raise AssertionError("ftfy called for ASCII text")

    monkeypatch.setattr(clean_module, "_ftfy", boom)
    assert fix_unicode("plain ascii text, nothing to repair") == "plain ascii text, nothing to repair"


# -------------------------------------------------------------------------------- rewrite rules


def test_fix_unicode_repairs_mojibake_and_counts_changed_rows():
    cleaner = Cleaner(cfg(fix_unicode=True))
    out = run(cleaner, ["cafÃ©", "The Mona Lisa doesnâ€™t smile", "already fine", "naïve “quotes” ﬁne"])
    assert kept_texts(out) == ["café", "The Mona Lisa doesn’t smile", "already fine", "naïve “quotes” ﬁne"]
    assert cleaner.stats()["fix_unicode"] == {"changed": 2, "removed": 0}


@pytest.mark.parametrize(
    "form, expected",
    [("NFC", ["café", "ﬁne", "x"]), ("NFKC", ["café", "fine", "x"]), ("none", ["cafe\u0301", "ﬁne", "x"])],
)
def test_unicode_normalization(form, expected):
    cleaner = Cleaner(cfg(unicode_normalization=form, fix_unicode=False))
    assert kept_texts(run(cleaner, ["cafe\u0301", "ﬁne", "x"])) == expected
    if form != "none":
        assert cleaner.stats()["unicode_normalization"]["changed"] == {"NFC": 1, "NFKC": 2}[form]
    else:
        assert "unicode_normalization" not in cleaner.stats()


def test_strip_html_removes_tags_scripts_comments_and_decodes_entities():
    assert strip_html("<p>Hello <b>world</b></p><script>x()</script> &amp; more") == "\nHello world\n& more"
    assert strip_html("a<br/>b<!-- note -->c") == "a\nbc"
    # Entities need their semicolon; comparisons are not tags.
    assert strip_html("AT&T, ?a=1&para=2, &lt;3 &#233;") == "AT&T, ?a=1&para=2, <3 é"
    assert strip_html("x < y and y > z") == "x < y and y > z"
    cleaner = Cleaner(cfg(strip_html=True))
    out = run(cleaner, ["<div class='a'>one</div>\n<div>two</div>", "no markup", "<i></i>"])
    assert kept_texts(out) == ["one\n\ntwo", "no markup"]
    assert reasons(out) == ["empty text after cleaning"]
    assert cleaner.stats()["strip_html"] == {"changed": 2, "removed": 0}
    assert cleaner.stats()["empty_text"] == {"changed": 0, "removed": 1}


def test_strip_html_is_linear_on_broken_markup():
    import time

    start = time.perf_counter()
    assert strip_html("<script>" * 5000) == ""
    assert fold_whitespace(" " * 50000 + "x") == "x"
    assert time.perf_counter() - start < 1.0


def test_remove_control_chars():
    assert remove_control_chars("a\x00b\u200bc\ufeffd\x7f") == "abcd"
    assert remove_control_chars("tab\tand\nnewline stay") == "tab\tand\nnewline stay"
    assert remove_control_chars("form\x0cfeed") == "form feed"
    cleaner = Cleaner(cfg(remove_control_chars=True))
    out = run(cleaner, ["ok", "bad\x07bell", "\x00\x01"])
    assert kept_texts(out) == ["ok", "badbell"]
    assert reasons(out) == ["empty text after cleaning"]
    assert cleaner.stats()["remove_control_chars"] == {"changed": 2, "removed": 0}


def test_fold_whitespace_keeps_line_breaks_and_indentation():
    assert fold_whitespace("  a \t b  \r\n\n\n\nc  ") == "a b\n\nc"
    code = "def f():\n    return 1"
    assert fold_whitespace(code) == code
    assert fold_whitespace("a\u00a0b") == "a b"
    cleaner = Cleaner(cfg(fold_whitespace=True))
    out = run(cleaner, ["clean", " padded ", "   "])
    assert kept_texts(out) == ["clean", "padded"]
    assert reasons(out) == ["empty text after cleaning"]
    assert cleaner.stats()["fold_whitespace"] == {"changed": 2, "removed": 0}
    assert cleaner.stats()["empty_text"] == {"changed": 0, "removed": 1}


def test_whitespace_only_text_is_empty_even_without_folding():
    cleaner = Cleaner(cfg(fold_whitespace=False))
    assert reasons(run(cleaner, [" \t "])) == ["empty text after cleaning"]


# ---------------------------------------------------------------------------------------- filters


def test_length_filters_in_characters_and_tokens():
    cleaner = Cleaner(cfg(min_chars=5, max_chars=20, min_tokens=2, max_tokens=3))
    out = run(cleaner, ["tiny", "two words", "one two three four", "abcdefghijklmnopqrstuvwxyz", "single"])
    assert kept_texts(out) == ["two words"]
    assert reasons(out) == [
        "min_chars: 4 characters, fewer than 5",
        "max_tokens: 4 tokens, more than 3",
        "max_chars: 26 characters, more than 20",
        "min_tokens: 1 tokens, fewer than 2",
    ]
    stats = cleaner.stats()
    assert [stats[k]["removed"] for k in ("min_chars", "max_chars", "min_tokens", "max_tokens")] == [1, 1, 1, 1]
    assert (stats["rows_in"], stats["rows_out"]) == (5, 1)


def test_token_limits_use_the_callers_token_counter():
    cleaner = Cleaner(cfg(max_tokens=4), count_tokens=len)  # "tokens" = characters here
    out = run(cleaner, ["abcd", "abcde"])
    assert kept_texts(out) == ["abcd"]
    assert reasons(out) == ["max_tokens: 5 tokens, more than 4"]


def test_repeated_ngram_fraction_filter():
    assert repeated_ngram_fraction("buy now buy now buy now buy now", 2) == pytest.approx(5 / 7)
    assert repeated_ngram_fraction("a b c d", 3) == 0.0
    assert repeated_ngram_fraction("too short", 3) == 0.0
    assert repeated_ngram_fraction("Spam spam SPAM spam", 1) == pytest.approx(3 / 4)
    cleaner = Cleaner(cfg(max_repeated_ngram_fraction=0.3, repeated_ngram_size=2))
    out = run(cleaner, ["buy now buy now buy now buy now", "a normal sentence with no repeats"])
    assert kept_texts(out) == ["a normal sentence with no repeats"]
    assert reasons(out) == ["max_repeated_ngram_fraction: 0.71 of word 2-grams are repeats (max 0.3)"]


def test_symbol_word_ratio_filter():
    assert symbol_word_ratio("hello, world.") == 1.0
    assert symbol_word_ratio("!!! ### ok") == 6.0
    assert symbol_word_ratio("-- | --") == float("inf")
    cleaner = Cleaner(cfg(max_symbol_word_ratio=1.0))
    out = run(cleaner, ["hello, world.", "!!! ### ok", "==== ||||"])
    assert kept_texts(out) == ["hello, world."]
    assert reasons(out) == [
        "max_symbol_word_ratio: 6.00 symbols per word (max 1.0)",
        "max_symbol_word_ratio: inf symbols per word (max 1.0)",
    ]


def test_language_filter_keeps_english_and_drops_german_and_french():
    cleaner = Cleaner(cfg(languages=["en"]))
    out = run(cleaner, [
        "This film is a charming and often affecting journey.",
        "Das ist ein schöner deutscher Satz über Filme.",
        "C'est une belle phrase française sur les films.",
        "ja sehr gut",  # shorter than language_min_chars: too little evidence, kept
    ])
    assert kept_texts(out) == ["This film is a charming and often affecting journey.", "ja sehr gut"]
    assert [r.split(" (")[0] for r in reasons(out)] == ["languages: detected 'de'", "languages: detected 'fr'"]
    assert reasons(out)[0].endswith("allowed: en")
    assert cleaner.stats()["languages"] == {"changed": 0, "removed": 2}


def test_language_filter_confidence_threshold_and_pair_rows():
    strict = Cleaner(cfg(languages=["en"], min_language_confidence=0.99, language_min_chars=0))
    out = strict(text_row("a great film"))
    assert isinstance(out, RejectedRow)
    assert "below min_language_confidence 0.99" in out.reason
    pair = Row("pair", {"source": "A man is walking.", "target": "Ein Mann geht spazieren.", "group": None}, "p", 1)
    assert isinstance(Cleaner(cfg(languages=["en"]))(pair), Row)


def test_unknown_language_code_is_a_config_error():
    with pytest.raises(ValidationError) as err:
        cfg(languages=["english"])
    assert "unknown code(s) ['english']" in str(err.value)
    assert " en," in str(err.value)


# ------------------------------------------------------------------------------------------ labels


def test_label_validation():
    cleaner = Cleaner(CleanConfig(), allowed_labels=["neg", "pos"])
    rows = [text_row("good", "pos"), text_row("what", "maybe", line=3), text_row("none", None, line=4)]
    out = [cleaner(r) for r in rows]
    assert isinstance(out[0], Row)
    assert out[1] == RejectedRow("train.tsv", 3, "unknown label 'maybe' (allowed: neg, pos)", "what")
    assert out[2] == RejectedRow("train.tsv", 4, "missing label", "none")
    assert cleaner.stats()["label"] == {"changed": 0, "removed": 2}


def test_labels_are_compared_as_strings_and_not_checked_without_allowed_labels():
    assert isinstance(Cleaner(CleanConfig(), allowed_labels=["0", "1"])(text_row("x", 1)), Row)
    assert isinstance(Cleaner(CleanConfig())(text_row("x", "anything")), Row)
    assert "label" not in Cleaner(CleanConfig()).stats()


# ---------------------------------------------------------------------------------------------- PII

PII_POSITIVE = [
    ("write to john.doe+tag@example.co.uk now", "write to <email> now"),
    ("call +44 20 7946 0958.", "call <phone>."),
    ("call +1-202-555-0143", "call <phone>"),
    ("or (555) 123-4567 today", "or <phone> today"),
    ("555.123.4567", "<phone>"),
    ("1-800-555-0199", "<phone>"),
    ("+49 (0)30 1234567", "<phone>"),
    ("+4915112345678", "<phone>"),
    ("host 192.168.0.1.", "host <ip>."),
    ("v6 2001:db8::1 here", "v6 <ip> here"),
    ("fe80::1ff:fe23:4567:890a", "<ip>"),
    ("card 4111 1111 1111 1111 ok", "card <card> ok"),
    ("4111-1111-1111-1111", "<card>"),
    ("4111111111111111", "<card>"),
    ("amex 3782 822463 10005", "amex <card>"),
]
PII_NEGATIVE = [
    "in 1999 and 2005", "call 911", "pi is 3.14159", "on 2024-01-15", "version 1.2.3.4.5", "at 12:30:45",
    "ISBN 978-3-16-148410-0", "order 4111 1111 1111 1112", "id 1234567890123", "$1,000,000", "score 10-12",
    "a@b", "user@localhost", "ratio 1:2:3", "C++ rocks", "+5 points", "999.999.999.999", "zip 12345",
    "std::vector<int>",
]


@pytest.mark.parametrize("text, expected", PII_POSITIVE)
def test_pii_masks(text, expected):
    assert PiiMasker(["email", "phone", "ip", "card"], "<{kind}>")(text) == expected


@pytest.mark.parametrize("text", PII_NEGATIVE)
def test_pii_leaves_ordinary_numbers_alone(text):
    assert PiiMasker(["email", "phone", "ip", "card"], "<{kind}>")(text) == text


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


def test_pii_rule_respects_kinds_and_placeholder():
    cleaner = Cleaner(cfg(pii={"enabled": True, "kinds": ["email"], "placeholder": "[REDACTED {kind}]"}))
    out = run(cleaner, ["mail a.b@example.com or call +1-202-555-0143", "nothing here"])
    assert kept_texts(out) == ["mail [REDACTED email] or call +1-202-555-0143", "nothing here"]
    assert cleaner.stats()["pii"] == {"changed": 1, "removed": 0}


@pytest.mark.parametrize(
    "pii, message",
    [
        ({"kinds": []}, "pii.kinds is empty"),
        ({"kinds": ["email", "ssn"]}, "kinds"),
        ({"placeholder": "<{name}>"}, "only {kind} is allowed"),
        ({"placeholder": "<{kind>"}, "not a valid template"),
    ],
)
def test_pii_config_errors(pii, message):
    with pytest.raises(ValidationError) as err:
        cfg(pii=pii)
    assert message in str(err.value)


def test_min_above_max_is_a_config_error():
    with pytest.raises(ValidationError) as err:
        cfg(min_chars=10, max_chars=5)
    assert "min_chars (10) is larger than max_chars (5)" in str(err.value)
    with pytest.raises(ValidationError):
        cfg(languages=[])


# -------------------------------------------------------------------------------------- row kinds


def test_tokens_rows_keep_one_token_per_tag():
    row = Row("tokens", {"tokens": ["Cafe\u0301", "<b>", "\u200b", "a\u00a0b", "Paris"],
                         "tags": ["O", "O", "O", "O", "B-LOC"], "group": None}, "conll.txt", 7)
    cleaner = Cleaner(cfg(strip_html=True, unicode_normalization="NFKC"))
    out = cleaner(row)
    # NFKC composes the accent; the html tag, a token that would vanish and one that would split stay.
    assert out.data["tokens"] == ["Café", "<b>", "\u200b", "a\u00a0b", "Paris"]
    assert out.data["tags"] == row.data["tags"]
    assert cleaner.stats()["strip_html"]["changed"] == 0
    empty = Row("tokens", {"tokens": [], "tags": [], "group": None}, "conll.txt", 9)
    assert cleaner(empty).reason == "empty text after cleaning"


def test_chat_rows_clean_every_turn_and_drop_empty_turns():
    cleaner = Cleaner(CleanConfig())
    chat = Row("chat", {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": " hi  there "},
                                     {"role": "assistant", "content": "hello"}], "group": None}, "a.json", 3)
    out = cleaner(chat)
    assert [m["content"] for m in out.data["messages"]] == ["", "hi there", "hello"]
    assert chat.data["messages"][1]["content"] == " hi  there "
    broken = Row("chat", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\x00"}],
                          "group": None}, "a.json", 9)
    rejected = cleaner(broken)
    assert rejected == RejectedRow("a.json", 9, "empty text after cleaning", "user: hi\nassistant: \x00")


def test_pair_rows_use_both_sides_for_length():
    cleaner = Cleaner(cfg(min_chars=10))
    pair = Row("pair", {"source": "Hello", "target": "Hallo", "group": None}, "m.en", 4)
    short = Row("pair", {"source": "Hi", "target": "Hi", "group": None}, "m.en", 5)
    assert isinstance(cleaner(pair), Row)
    assert cleaner(short).reason == "min_chars: 4 characters, fewer than 10"


def test_data_modules_import_without_torch():
    code = ("import sys, tuneforge.data.clean, tuneforge.data.augment, tuneforge.data.eda, tuneforge.data.pii, "
            "tuneforge.data.langid; bad = {'torch', 'transformers', 'ftfy', 'py3langid'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
