"""Word-level tags (CoNLL, IOB2) to sub-token labels for token classification, and back.

A NER data set tags *words*; a transformer sees *sub-tokens* ("Blackburn" -> "black", "##burn").
Training needs one label per sub-token and evaluation needs one tag per word again, so this module
does both directions with the fast tokenizer's ``word_ids()`` (which sub-token came from which word):

* ``encode_tagged`` gives the first sub-token of each word the word's tag and the rest ``-100``
  (ignored by the loss), the usual choice: each word is then counted once in the loss, as it is
  in entity-level evaluation. ``label_all_subtokens`` trains the continuations too, as ``I-X``
  (a continuation never starts an entity, so ``B-X`` would teach the model a wrong boundary).
* ``decode_predictions`` reads the prediction of each word's first sub-token back into word tags.

Tags follow IOB2 (``O``, ``B-TYPE``, ``I-TYPE``); ``check_tokens_row`` turns a row whose tags do
not (or whose token and tag counts differ) into a reject reason, so a broken sentence is listed
in ``rejected.jsonl`` instead of failing the run or training on misaligned labels.

transformers is never imported here: the tokenizer is passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tuneforge.errors import TuneforgeError

#: Label value the loss ignores (PyTorch's ``CrossEntropyLoss`` default ``ignore_index``).
IGNORE_INDEX = -100
OUTSIDE = "O"
TAG_FORMAT = "O, B-TYPE or I-TYPE (IOB2)"


def split_tag(tag: str) -> tuple[str, str] | None:
    """``("B", "PER")`` for ``"B-PER"``, ``("O", "")`` for ``"O"``; None for anything not IOB2."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, dash, entity = tag.partition("-")
    if prefix not in ("B", "I") or not dash or not entity or any(ch.isspace() for ch in entity):
        return None
    return prefix, entity


def check_tokens_row(tokens: Sequence[Any], tags: Sequence[Any]) -> str | None:
    """Why a ``tokens`` row cannot be trained on (a reject reason), or None when it can.

    Positions in the reasons are 1-based, like the lines of the file the user will open.
    """
    if len(tokens) != len(tags):
        return f"{len(tokens)} tokens but {len(tags)} tags"
    problem = _tokens_problem(tokens)
    if problem:
        return problem
    for position, tag in enumerate(tags, start=1):
        if not isinstance(tag, str) or split_tag(tag) is None:
            return f"tag {position} {tag!r} is not {TAG_FORMAT}"
    return None


def _tokens_problem(tokens: Sequence[Any]) -> str | None:
    if not tokens:
        return "no tokens"
    for position, token in enumerate(tokens, start=1):
        if not isinstance(token, str):
            return f"token {position} is not a string (got {type(token).__name__})"
        if not token.strip():
            # An empty word has no sub-tokens, so its tag could never be trained or predicted.
            return f"token {position} is empty"
    return None


def tag_vocabulary(tag_sequences: Iterable[Sequence[str]]) -> list[str]:
    """Every label of the tag set: ``"O"`` first, then ``B-``/``I-`` pairs sorted by entity type.

    Both tags of a type are listed even if the data only has one of them, so the label ids do not
    depend on which sentences a split happened to keep, and ``label_all_subtokens`` always finds
    the ``I-`` label of a ``B-`` word. Raises ``ValueError`` on a tag that is not IOB2.
    """
    types: set[str] = set()
    for tags in tag_sequences:
        for tag in tags:
            parts = split_tag(tag)
            if parts is None:
                raise ValueError(f"tag {tag!r} is not {TAG_FORMAT}")
            if parts[1]:
                types.add(parts[1])
    return [OUTSIDE] + [f"{prefix}-{entity}" for entity in sorted(types) for prefix in ("B", "I")]


def encode_tagged(
    tokens_batch: list[list[str]],
    tags_batch: list[list[str]] | None,
    tokenizer: Any,
    label_to_id: Mapping[str, int],
    max_length: int,
    label_all_subtokens: bool = False,
) -> list[dict[str, Any]]:
    """Tokenise pre-split sentences and align their word tags to sub-tokens.

    Each result holds the tokenizer's model inputs (``input_ids``, ``attention_mask`` and, when it
    makes them, ``token_type_ids``), unpadded; ``labels`` (only when ``tags_batch`` is given):
    per sub-token the word's tag id on its first sub-token, ``-100`` on special tokens and on
    continuations (``I-TYPE`` ids there with ``label_all_subtokens``); ``word_ids``: per sub-token
    the word index or None, for ``decode_predictions``; ``n_words_truncated``: words cut off the
    end by ``max_length``. ``word_ids`` and ``n_words_truncated`` are not model inputs: drop them
    before collating.

    A word the tokenizer turns into no sub-token at all (e.g. a lone zero-width space) gets no
    label; ``decode_predictions`` tags it ``O``.

    Raises ``ValueError`` naming the example for a row ``check_tokens_row`` would have rejected
    and for a tag missing from ``label_to_id`` (with the allowed tags): build the vocabulary from
    every split, or reject such rows, before encoding.
    """
    _require_fast(tokenizer)
    if tags_batch is not None and len(tags_batch) != len(tokens_batch):
        raise ValueError(f"{len(tokens_batch)} token sequences but {len(tags_batch)} tag sequences")
    for index, tokens in enumerate(tokens_batch):
        problem = _tokens_problem(tokens)
        if problem is None and tags_batch is not None:
            problem = _tags_problem(tokens, tags_batch[index], label_to_id)
        if problem:
            raise ValueError(f"example {index}: {problem}")
    encoded = tokenizer(tokens_batch, is_split_into_words=True, truncation=True, max_length=max_length)
    features = []
    for index, tokens in enumerate(tokens_batch):
        word_ids = list(encoded.word_ids(index))
        feature = {key: list(values[index]) for key, values in encoded.items()}
        last_word = max((w for w in word_ids if w is not None), default=-1)
        feature["word_ids"] = word_ids
        feature["n_words_truncated"] = len(tokens) - 1 - last_word
        if tags_batch is not None:
            feature["labels"] = _align_labels(tags_batch[index], word_ids, label_to_id, label_all_subtokens)
        features.append(feature)
    return features


def _tags_problem(tokens: Sequence[str], tags: Sequence[str], label_to_id: Mapping[str, int]) -> str | None:
    if len(tags) != len(tokens):
        return f"{len(tokens)} tokens but {len(tags)} tags"
    unknown = next((tag for tag in tags if tag not in label_to_id), None)
    return None if unknown is None else _unknown_tag(unknown, label_to_id)


def _unknown_tag(tag: str, label_to_id: Mapping[str, int]) -> str:
    return f"unknown tag {tag!r} (allowed tags: {', '.join(label_to_id)})"


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TuneforgeError(
            f"token classification needs a fast tokenizer (one with word_ids()), but "
            f"{type(tokenizer).__name__} is a slow one; use a model that ships a tokenizer.json"
        )


def _align_labels(
    tags: Sequence[str], word_ids: Sequence[int | None], label_to_id: Mapping[str, int], all_subtokens: bool
) -> list[int]:
    labels = []
    previous: int | None = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(_label_id(tags[word], label_to_id))
        elif all_subtokens:
            labels.append(_label_id(_continuation(tags[word]), label_to_id))
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels


def _continuation(tag: str) -> str:
    """The tag of a word's second and later sub-tokens: inside the entity the word began."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def _label_id(tag: str, label_to_id: Mapping[str, int]) -> int:
    if tag not in label_to_id:
        # Only reachable for the I- label of a continuation: the word tags were checked up front.
        hint = "label_all_subtokens needs the I- tag of every B- tag"
        raise ValueError(f"{_unknown_tag(tag, label_to_id)}; {hint}")
    return label_to_id[tag]


def decode_predictions(
    pred_ids_per_token: Sequence[Sequence[int]],
    word_ids: Sequence[Sequence[int | None]],
    id_to_label: Mapping[int, str] | Sequence[str],
    n_words: Sequence[int],
) -> list[list[str]]:
    """Word tags from per-sub-token predicted ids: each word takes its first sub-token's label.

    ``pred_ids_per_token[i]`` may be longer than ``word_ids[i]`` (right padding of a batch); the
    extra positions are ignored. Words with no sub-token in the encoding, above all those cut off
    by truncation, are tagged ``O``: evaluation then counts their entities as missed, which is the
    honest score for text the model never saw.
    """
    if not len(pred_ids_per_token) == len(word_ids) == len(n_words):
        raise ValueError(
            f"{len(pred_ids_per_token)} prediction rows, {len(word_ids)} word_ids rows and "
            f"{len(n_words)} word counts: they must be the same examples"
        )
    sentences = []
    for predictions, words, count in zip(pred_ids_per_token, word_ids, n_words):
        if len(predictions) < len(words):
            raise ValueError(f"{len(predictions)} predictions for {len(words)} sub-tokens")
        tags = [OUTSIDE] * count
        previous: int | None = None
        for word, predicted in zip(words, predictions):
            if word is not None and word != previous:
                tags[word] = id_to_label[int(predicted)]
            previous = word
        sentences.append(tags)
    return sentences
